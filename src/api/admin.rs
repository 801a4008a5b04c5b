//! The local admin endpoint: HTTP on a Unix socket in the data directory (`tandem.sock`, mode
//! 0600), so only the daemon's own user can reach it. Commands that must act on a running
//! daemon's store (`tandem sync`) ask it here instead of fighting over the store.
//!
//! - `POST /sync`: run an ingest pass now (after the one in progress, if any), then push to and
//!   pull from every peer once, and answer `200 {"ingest": {"appended", "lists_changed",
//!   "lists_unchanged"} | null, "peers": [{"peer", "push", "pull", "error"}]}`; `502 {"error"}`
//!   if the ingest failed, `409` while the node is still recovering its own feed.
//! - `POST /snapshot`: sign a snapshot of the own state at its head; `200 {"snapshot",
//!   "created"}` (`created` is false when the latest snapshot already is at the head).
//! - `POST /pull?peer=NAME&origin=ID`: pull one origin from one peer now; `200` with the pull
//!   report, `502 {"error"}` if it failed.
//! - `POST /import?path=FILE`: verify the archive at `FILE` completely, then load it; `200
//!   {"origin", "entries", "snapshots"}` or `422 {"error"}` (nothing loaded).
//! - `GET /workers`: the health of the daemon's loops, as in `/healthz`.
//! - `POST /drill`: run a restore drill now (after the one in progress, if any); `200
//!   {"drills": [{"origin", "at", "seq", "ok", "error", "duration_ms", "objects"}]}`, `502
//!   {"error"}` if it could not run (the scratch server is unreachable or holds what no drill
//!   wrote), `409` without a `[drill]` section.
//! - `POST /migrations` with a `NewMigration` JSON body (`tandem migrate start`, once it
//!   restored the selection): record the migration and start mirroring it; `200 {"id"}`, `422
//!   {"error"}` if it cannot be recorded.
//! - `POST /migrations/{id}/finish` with `{"user", "credentials"}` (the account that changes
//!   the old server's permissions): switch the migration over (`tandem migrate finish`, see
//!   [`crate::replicate::moves`]); `200` with what it did, `409 {"error"}` if it cannot.
//! - `POST /migrations/{id}/abort` with such an account or `null` (the one that locked): give
//!   the old server's permissions back and end the migration; `200` with what it did, `409
//!   {"error"}` if it cannot.

use std::path::Path;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use std::sync::Arc;

use crate::replicate::federate::Federation;
use crate::replicate::ingest::IngestSlot;
use crate::replicate::{Changes, SyncReport, sync_peers};
use crate::scheduler::WorkerStatus;

/// File name of the admin socket inside the data directory.
pub const SOCKET_FILE: &str = "tandem.sock";

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The daemon's ingest, shared with its source loop (None without a source).
    pub ingest: Option<IngestSlot>,
    /// Federation with each peer.
    pub feds: Vec<Federation>,
    /// True once the own feed is recovered (or nothing needed recovering).
    pub recovered: tokio::sync::watch::Receiver<bool>,
    /// Raised when the ingest appended something or a snapshot was signed.
    pub changes: Changes,
    /// The node's key and writer, to sign snapshots.
    pub snapshots: crate::replicate::snapshot::SnapshotMaker,
    /// Health of the daemon's loops.
    pub workers: Vec<Arc<WorkerStatus>>,
    /// Restore drills, with `[drill]`.
    pub drill: Option<crate::replicate::drill::Drill>,
}

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::UnixListener,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Why a request that appends or changes the own feed waits (`409`).
const RECOVERING: &str = "the node is still recovering its own feed from its peers";

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/sync", post(sync))
        .route("/workers", get(workers))
        .route("/snapshot", post(snapshot))
        .route("/rotate", post(rotate))
        .route("/import", post(import))
        .route("/pull", post(pull))
        .route("/drill", post(drill))
        .route("/migrations", post(migrations))
        .route("/migrations/{id}/finish", post(finish))
        .route("/migrations/{id}/abort", post(abort))
        .with_state(state)
}

async fn workers(State(state): State<AdminState>) -> Response {
    let reports: Vec<_> = state.workers.iter().map(|w| w.report()).collect();
    axum::Json(json!({ "workers": reports })).into_response()
}

async fn sync(State(state): State<AdminState>) -> Response {
    // Loops stopped on a failure that cannot heal try again too (see `scheduler`).
    for worker in &state.workers {
        worker.rearm();
    }
    if !*state.recovered.borrow() {
        return (
            StatusCode::CONFLICT,
            axum::Json(json!({"error": "the node is still recovering its own feed from its peers; nothing is appended until it is back (see `tandem status`)"})),
        )
            .into_response();
    }
    let ingest = match &state.ingest {
        None => None,
        Some(ingest) => match ingest.run_pass().await {
            Ok(report) => {
                if report.appended > 0 {
                    state.changes.notify();
                }
                Some(report)
            }
            Err(e) => {
                return (
                    StatusCode::BAD_GATEWAY,
                    axum::Json(json!({"error": e.to_string()})),
                )
                    .into_response();
            }
        },
    };
    let peers = sync_peers(&state.feds).await;
    if let Err(e) = open_granted(&state).await {
        return e;
    }
    (StatusCode::OK, axum::Json(SyncReport { ingest, peers })).into_response()
}

async fn snapshot(State(state): State<AdminState>) -> Response {
    if !*state.recovered.borrow() {
        return conflict(RECOVERING);
    }
    match state.snapshots.make().await {
        Ok((s, created)) => axum::Json(json!({
            "snapshot": crate::protocol::wire::SnapshotDoc::from(&s),
            "created": created,
        }))
        .into_response(),
        Err(e) => conflict(e),
    }
}

/// `tandem key rotate` (and `export --archive --decrypt` of the own feed) beside the daemon:
/// a new epoch of the own sealed feed (see `Store::rotate_key`).
async fn rotate(State(state): State<AdminState>) -> Response {
    if !*state.recovered.borrow() {
        return conflict(RECOVERING);
    }
    let key = state.snapshots.key.clone();
    match state
        .snapshots
        .store
        .write(move |s| s.rotate_key(&key))
        .await
    {
        Ok((statement, seq)) => {
            state.changes.notify();
            axum::Json(json!({"epoch": statement.epoch, "seq": seq.0})).into_response()
        }
        Err(e) => conflict(e),
    }
}

async fn drill(State(state): State<AdminState>) -> Response {
    let Some(drill) = &state.drill else {
        return (
            StatusCode::CONFLICT,
            axum::Json(json!({"error": "no [drill] section in the daemon's configuration (restart it after adding one)"})),
        )
            .into_response();
    };
    match drill.run().await {
        Ok(drills) => axum::Json(json!({ "drills": drills })).into_response(),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn migrations(
    State(state): State<AdminState>,
    axum::Json(new): axum::Json<crate::replicate::mirror::NewMigration>,
) -> Response {
    match crate::replicate::mirror::record(&state.snapshots.store, new).await {
        Ok(id) => {
            // The mirror wakes on changes: it starts on the new migration at once.
            state.changes.notify();
            axum::Json(json!({ "id": id })).into_response()
        }
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

impl AdminState {
    fn switcher(&self) -> crate::replicate::moves::Switcher {
        crate::replicate::moves::Switcher::new(
            self.snapshots.store.clone(),
            self.snapshots.key.clone(),
            self.ingest.clone(),
            self.changes.clone(),
        )
    }
}

/// `409 {"error"}` for a switch that could not go on.
fn conflict(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::CONFLICT,
        axum::Json(json!({"error": e.to_string()})),
    )
        .into_response()
}

async fn finish(
    State(state): State<AdminState>,
    axum::extract::Path(id): axum::extract::Path<u64>,
    axum::Json(account): axum::Json<crate::replicate::moves::Account>,
) -> Response {
    if !*state.recovered.borrow() {
        return conflict(RECOVERING);
    }
    match state.switcher().finish(id, account).await {
        Ok(done) => axum::Json(done).into_response(),
        Err(e) => conflict(e),
    }
}

async fn abort(
    State(state): State<AdminState>,
    axum::extract::Path(id): axum::extract::Path<u64>,
    axum::Json(account): axum::Json<Option<crate::replicate::moves::Account>>,
) -> Response {
    if !*state.recovered.borrow() {
        return conflict(RECOVERING);
    }
    match state.switcher().abort(id, account).await {
        Ok(done) => axum::Json(done).into_response(),
        Err(e) => conflict(e),
    }
}

#[derive(serde::Deserialize)]
struct PullQuery {
    peer: String,
    origin: crate::identity::NodeId,
}

async fn pull(
    State(state): State<AdminState>,
    axum::extract::Query(query): axum::extract::Query<PullQuery>,
) -> Response {
    let Some(fed) = state.feds.iter().find(|f| f.peer().name == query.peer) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": format!("no [[peer]] named {:?}", query.peer)})),
        )
            .into_response();
    };
    match fed
        .pull_origin(query.origin, std::time::Duration::ZERO)
        .await
    {
        Ok(report) => {
            state.changes.notify();
            if let Err(e) = open_granted(&state).await {
                return e;
            }
            axum::Json(json!(report)).into_response()
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

/// Opens what this node may read of what it just pulled (see `Store::open_granted`), so that
/// a `restore` or `export` that follows finds it readable.
async fn open_granted(state: &AdminState) -> Result<(), Response> {
    let key = state.snapshots.key.clone();
    match state
        .snapshots
        .store
        .write(move |s| s.open_granted(&key))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response()),
    }
}

#[derive(serde::Deserialize)]
struct ImportQuery {
    path: std::path::PathBuf,
}

async fn import(
    State(state): State<AdminState>,
    axum::extract::Query(query): axum::extract::Query<ImportQuery>,
) -> Response {
    let changes = state.changes.clone();
    let result = state
        .snapshots
        .store
        .write(move |store| {
            Ok(crate::replicate::archive::import_archive(
                &query.path,
                store,
            ))
        })
        .await;
    match result {
        Ok(Ok(summary)) => {
            changes.notify();
            axum::Json(json!(summary)).into_response()
        }
        Ok(Err(e @ crate::replicate::archive::ImportError::Stopped { .. })) => (
            StatusCode::CONFLICT,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"error": format!("{e}; nothing was imported")})),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

/// Binds the socket in `data_dir` (replacing a stale one: the caller holds the store lock, so
/// no other daemon can be using it) with mode 0600.
pub fn bind(data_dir: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = data_dir.join(SOCKET_FILE);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}
