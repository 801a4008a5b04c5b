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

use std::path::{Path, PathBuf};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde_json::json;

use std::sync::Arc;

use crate::feed::Snapshot;
use crate::identity::NodeKey;
use crate::replicate::federate::Federation;
use crate::replicate::ingest::IngestSlot;
use crate::replicate::{Changes, SyncReport, sync_peers};
use crate::scheduler::WorkerStatus;
use crate::store::{Store, StoreError};

/// File name of the admin socket inside the data directory.
pub const SOCKET_FILE: &str = "tandem.sock";

/// Errors talking to a running daemon.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No daemon answers on the socket.
    #[error("cannot reach the running daemon at {path}: {reason}")]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The daemon answered with an error.
    #[error("the daemon answered {status}: {message}")]
    Failed {
        /// HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
}

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
    pub snapshots: SnapshotMaker,
    /// Health of the daemon's loops.
    pub workers: Vec<Arc<WorkerStatus>>,
    /// Restore drills, with `[drill]`.
    pub drill: Option<crate::replicate::drill::Drill>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/sync", post(sync))
        .route("/workers", get(workers))
        .route("/snapshot", post(snapshot))
        .route("/import", post(import))
        .route("/pull", post(pull))
        .route("/drill", post(drill))
        .with_state(state)
}

async fn workers(State(state): State<AdminState>) -> Response {
    let reports: Vec<_> = state.workers.iter().map(|w| w.report()).collect();
    axum::Json(json!({ "workers": reports })).into_response()
}

async fn sync(State(state): State<AdminState>) -> Response {
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
    (StatusCode::OK, axum::Json(SyncReport { ingest, peers })).into_response()
}

/// Signs snapshots of the own state (shared by the schedule and `POST /snapshot`).
#[derive(Clone)]
pub struct SnapshotMaker {
    /// The node's key.
    pub key: Arc<NodeKey>,
    /// The writer.
    pub store: Arc<std::sync::Mutex<Store>>,
    /// Raised when a snapshot was signed, so that pushes hand it over.
    pub changes: Changes,
    /// The retention applied after each new snapshot (`[snapshots]`); none keeps every one.
    pub retention: Option<crate::retention::Policy>,
    /// The peers that keep the own feed: compaction never passes what they hold.
    pub holders: crate::retention::Holders,
}

impl SnapshotMaker {
    /// Signs a snapshot at the head unless the latest one is already there.
    pub async fn make(&self) -> Result<(Snapshot, bool), StoreError> {
        let (store, key, retention) = (self.store.clone(), self.key.clone(), self.retention);
        let holders = self.holders.clone();
        let made = tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
            let made = store.create_snapshot(&key)?;
            if let (true, Some(policy)) = (made.1, retention) {
                let (removed, _) = store.apply_retention(key.id(), policy, &holders)?;
                if removed > 0 {
                    tracing::info!(removed, "snapshots pruned by retention");
                }
            }
            Ok::<_, StoreError>(made)
        })
        .await
        .expect("snapshot task panicked")?;
        if made.1 {
            tracing::info!(seq = %made.0.seq, objects = made.0.objects, id = %made.0.id(), "snapshot signed");
            self.changes.notify();
        }
        Ok(made)
    }
}

async fn snapshot(State(state): State<AdminState>) -> Response {
    if !*state.recovered.borrow() {
        return (
            StatusCode::CONFLICT,
            axum::Json(
                json!({"error": "the node is still recovering its own feed from its peers"}),
            ),
        )
            .into_response();
    }
    match state.snapshots.make().await {
        Ok((s, created)) => axum::Json(json!({
            "snapshot": crate::protocol::wire::SnapshotDoc::from(&s),
            "created": created,
        }))
        .into_response(),
        Err(e) => (
            StatusCode::CONFLICT,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
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
            axum::Json(json!(report)).into_response()
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
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
    let store = state.snapshots.store.clone();
    let changes = state.changes.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
        crate::replicate::archive::import_archive(&query.path, &mut store)
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
            StatusCode::INTERNAL_SERVER_ERROR,
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

/// Sends `method path` to the daemon whose data directory is `data_dir`; returns the JSON
/// answer.
pub async fn call(
    data_dir: &Path,
    method: &str,
    path: &str,
) -> Result<serde_json::Value, AdminError> {
    let socket = data_dir.join(SOCKET_FILE);
    let unreachable = |reason: String| AdminError::Unreachable {
        path: socket.clone(),
        reason,
    };
    let stream = tokio::net::UnixStream::connect(&socket)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "tandem")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("a static request is valid");
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if status == 200 {
        Ok(value)
    } else {
        Err(AdminError::Failed {
            status,
            message: value["error"].as_str().unwrap_or("no details").to_owned(),
        })
    }
}
