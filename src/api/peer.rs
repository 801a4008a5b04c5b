//! The peer API under `/v1/`: who this node is, the origins it holds, pages of their feeds,
//! and pushes answered with signed receipts.
//!
//! Every request must be signed by a node key (RFC 9421, see
//! [`crate::protocol::signature`]) that a `[[peer]]` entry of the configuration names, for this
//! node (its id in the covered `tandem-target` header) and with a nonce not used before:
//! unsigned, badly signed, replayed or misdirected requests and unknown keys get `401` before
//! any of their body is read; a known peer asking for an origin its lists do not grant gets
//! `403`. Errors are JSON `{"error": …}`. Nothing is stored for a request before it is
//! authenticated and authorized. A peer may always read its own feed back. How much one peer
//! and all of them together may hold (bodies in flight, long polls, remembered nonces) is
//! bounded, and what happens beyond the bounds is said in [`guard`].
//!
//! Endpoints (bodies in [`crate::protocol::wire`]):
//! - `GET /v1/node`: `{"id", "name", "version"}`.
//! - `GET /v1/origins`: `{"origins": [origin…]}`, the origins held that the caller may read
//!   (its `serve` list).
//! - `GET /v1/origins/{id}`: one origin, if the caller may read it or push it (`accept`);
//!   `404` if not held. To a caller that is the origin or may push it, the answer also carries
//!   `"receipts"`: the receipts other holders signed for the origin that this node holds, so
//!   that they travel towards the origin with every push pass.
//! - `GET /v1/origins/{id}/entries?after=SEQ&limit=N&wait=S`: the next page after `SEQ` (at
//!   most `N` entries, default 4096, and [`wire::PAGE_BYTES`] of entries, ending at a
//!   checkpoint; a run up to the first checkpoint comes whole), `200` with a page body
//!   (zstd when the request's `Accept-Encoding` lists it), or `204` when there is nothing after
//!   `SEQ` even after waiting up to `S` seconds (at most 30; the long poll of continuous
//!   replication; a peer already holding [`guard::long_polls_for`] polls is answered at once).
//!   Every answer carries `Tandem-Head: <seq>`, the head held.
//! - `POST /v1/origins/{id}/entries`: a page (optionally `Content-Encoding: zstd`) of an origin
//!   the caller's `accept` list grants. It is fully verified against the origin's key, then
//!   stored in one transaction, and answered `200` with a receipt signed by this node. `400`: the
//!   page does not verify; `409` with `"head"`: it does not link to what is held (start after
//!   `head`), or it shows a fork (the origin is then frozen here); `413`: larger than
//!   [`MAX_BODY`]; `507`: past the caller's `quota`. Like every body, it is first checked
//!   against its `Content-Digest` (`400`), and refused with `429`/`503` while the caller or
//!   this node already reads as many bodies as [`guard`] allows.
//! - `GET /v1/origins/{id}/snapshots?after=SEQ`: `{"snapshots": [snapshot…]}`, the origin's
//!   snapshots after `SEQ` (for readers granted by `serve`).
//! - `POST /v1/origins/{id}/snapshots`: one snapshot (JSON) of an origin the caller may push;
//!   checked against the entries held here (signature, entry at its seq, state root) before it
//!   is stored; `200 {"stored": true}`, `400` when it does not check, `409` when its seq is
//!   beyond what is held.
//!
//! - `POST /v1/origins/{id}/receipts`: `{"receipts": [receipt…]}` (at most
//!   [`wire::MAX_RECEIPTS`], [`wire::MAX_RECEIPTS_BODY`] bytes) from a caller that may read or
//!   push the origin, sent after it pulled: its own receipt for what it now holds, and the
//!   receipts of other holders it relays. Each is kept if its holder signed it and it names
//!   the entry held here at its seq (see [`crate::store::Store::record_foreign_receipt`]);
//!   `200 {"recorded": n, "refused": [{"holder", "seq", "error"}]}`. Sending the same again
//!   changes nothing. `404` when the origin is not held here.
//!
//! - `PUT /v1/origins/{id}/key-backup`: the caller's own node key sealed under its
//!   passphrase, kept for it here; it is fetched back through
//!   `POST /v1/key-backup/{id}`, the one route not signed by a node key (whoever fetches has
//!   lost it) but by a key the passphrase gives. See [`keybackup`].
//!
//! A page is hashed again and chained back from its checkpoint as it is read: an entry damaged
//! on this node's disk is never served; the request gets `503` with `{"error", "origin",
//! "seq"}` naming it while this node fetches a good copy from a peer.
//!
//! A reader verifies everything it gets with the origin's key; this node cannot forge it.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::json;

pub mod guard;
pub mod keybackup;

use guard::Caller;

use crate::config::{OriginRef, PeerConfig};
use crate::feed::Seq;
use crate::identity::{NodeId, NodeKey};
use crate::protocol::wire::{self, CheckpointDoc, ErrorDoc, HeadDoc, OriginDoc};
use crate::replicate::Changes;
use crate::replicate::accept;
use crate::store::{Store, StoreError, StoreHandle};
use crate::telemetry;

/// Largest request body the peer API reads, as sent: a page, compressed or not.
pub const MAX_BODY: usize = wire::MAX_PAGE;
/// Most entries a page request may ask for.
pub const MAX_PAGE_ENTRIES: usize = 16_384;
/// Longest long poll.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the peer handlers share.
pub struct PeerState {
    /// This node.
    pub node: NodeId,
    /// Its name.
    pub name: String,
    /// The configured peers.
    pub peers: Vec<PeerConfig>,
    /// The store: reads on its readers, pushes and receipts on its writer.
    pub store: StoreHandle,
    /// This node's key, to sign receipts.
    pub key: Arc<NodeKey>,
    /// Wakes long polls when a feed grows.
    pub changes: Changes,
    /// Told of every authenticated request: it ends the backoff of the loops that talk to
    /// its sender.
    pub contacts: crate::scheduler::Contacts,
    /// Cancelled when the node stops: long polls answer at once instead of holding shutdown.
    pub stopping: tokio_util::sync::CancellationToken,
}

/// The `/v1/` router, behind signature authentication, and the key backup fetch, which
/// proves the passphrase instead (see [`keybackup`]).
pub fn router(state: Arc<PeerState>) -> Router {
    let guard = Arc::new(guard::Guard::new(&state.peers));
    // Uploads of key backups: the same authentication and nonces, a body bound of their own.
    let key_backups = Router::new()
        .route("/v1/origins/{id}/key-backup", put(keybackup::upload))
        .route_layer(middleware::from_fn_with_state(
            (state.clone(), guard.clone(), keybackup::MAX_UPLOAD_BODY),
            guard::authenticate,
        ))
        .with_state(state.clone());
    let fetch = Router::new()
        .route("/v1/key-backup/{id}", post(keybackup::fetch))
        .with_state(Arc::new(keybackup::Fetcher::new(state.clone())));
    Router::new()
        .route("/v1/node", get(node))
        .route("/v1/origins", get(origins))
        .route("/v1/origins/{id}", get(origin))
        .route("/v1/origins/{id}/entries", get(entries).post(push))
        .route("/v1/origins/{id}/base", get(base))
        .route("/v1/origins/{id}/receipts", post(receipts))
        .route(
            "/v1/origins/{id}/snapshots",
            get(snapshots).post(push_snapshot),
        )
        .route_layer(middleware::from_fn_with_state(
            (state.clone(), guard, MAX_BODY),
            guard::authenticate,
        ))
        // The middleware reads bodies (after authentication) up to MAX_BODY; axum's own 2 MiB
        // default for body extractors would otherwise refuse pages the protocol allows.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
        .merge(key_backups)
        .merge(fetch)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn error_with_head(status: StatusCode, message: String, head: u64) -> Response {
    let doc = ErrorDoc {
        error: message,
        head: Some(head),
    };
    (status, axum::Json(doc)).into_response()
}

async fn node(State(state): State<Arc<PeerState>>) -> Response {
    axum::Json(
        json!({ "id": state.node, "name": state.name, "version": env!("CARGO_PKG_VERSION") }),
    )
    .into_response()
}

/// Whether `list` names `origin` (`"self"` is this node).
fn grants(state: &PeerState, list: &[OriginRef], origin: NodeId) -> bool {
    list.iter().any(|o| match o {
        OriginRef::SelfNode => origin == state.node,
        OriginRef::Node(id) => *id == origin,
    })
}

/// Whether `caller` may read `origin` from this node: what its `serve` list grants, and
/// always its own feed back (what a node needs to recover after losing its store).
fn may_read(state: &PeerState, caller: &PeerConfig, origin: NodeId) -> bool {
    origin == caller.id || grants(state, &caller.serve, origin)
}

/// The wire form of one origin held.
/// `is_self`: whether `origin` is this node (whose feed is held even while empty).
/// `relay`: whether to add the receipts of its holders (for a caller that is the origin or may
/// push it; see the module docs).
fn describe(
    store: &Store,
    origin: NodeId,
    is_self: bool,
    relay: bool,
) -> Result<Option<OriginDoc>, StoreError> {
    let head = match store.head_if_held(origin)? {
        None => return Ok(None),
        // Registered only by bookkeeping: nothing of it is held.
        Some(None) if !is_self => return Ok(None),
        Some(head) => head,
    };
    let checkpoint = store.latest_checkpoint(origin)?;
    let snapshot_seq = store.snapshots(origin)?.last().map_or(0, |s| s.seq.0);
    Ok(Some(OriginDoc {
        snapshot_seq,
        id: origin,
        head: HeadDoc {
            seq: head.map_or(0, |h| h.seq.0),
            hash: head.map(|h| h.hash.to_string()),
        },
        checkpoint: checkpoint.as_ref().map(CheckpointDoc::from),
        receipts: if relay {
            relayed_receipts(store, origin)?
        } else {
            Vec::new()
        },
    }))
}

/// The latest receipts held for `origin`, newest first, at most [`wire::MAX_RECEIPTS`].
fn relayed_receipts(store: &Store, origin: NodeId) -> Result<Vec<wire::ReceiptDoc>, StoreError> {
    Ok(store
        .latest_receipts(origin, wire::MAX_RECEIPTS, &[])?
        .iter()
        .map(wire::ReceiptDoc::from)
        .collect())
}

async fn read_store<T: Send + 'static>(
    state: &Arc<PeerState>,
    f: impl FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, Response> {
    let read = state.store.read(f).await;
    if let Err(crate::store::StoreError::EntryDamaged {
        origin,
        seq,
        detail,
    }) = read
    {
        return Err(damaged(state, origin, seq, detail).await);
    }
    read.map_err(|e| match e {
        // The puller can start from the base instead (GET …/base).
        e @ crate::store::StoreError::Compacted { .. } => error(StatusCode::GONE, e.to_string()),
        e => {
            tracing::error!(error = %e, "peer api: store read failed");
            error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
        }
    })
}

/// The answer when an entry to serve is damaged on disk (see `store::damage`): `503` naming
/// the origin and seq, never the bytes. The entry is recorded (an error logged once) on the
/// writer before the answer, which wakes the repair; the reader may ask another holder or try
/// again later.
async fn damaged(state: &Arc<PeerState>, origin: NodeId, seq: Seq, detail: String) -> Response {
    let changes = state.changes.clone();
    let recorded = state
        .store
        .write(move |store| {
            crate::replicate::federate::record_damage(store, &changes, origin, seq, &detail)
        })
        .await;
    if let Err(e) = recorded {
        tracing::error!(error = %e, "peer api: cannot record a damaged entry");
    }
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({
            "error": format!("origin {origin}: the entry at seq {seq} is damaged in this node's store; it is not served until a good copy is fetched from a peer: try another holder, or again later"),
            "origin": origin,
            "seq": seq.0,
        })),
    )
        .into_response();
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("5"),
    );
    response
}

/// The checks every read of an origin starts with: the id parses, the query parses, and the
/// caller may read the origin. The error is the finished response, built once per request.
#[allow(clippy::result_large_err)]
fn readable<Q>(
    state: &PeerState,
    caller: &Caller,
    id: &str,
    query: Result<axum::extract::Query<Q>, axum::extract::rejection::QueryRejection>,
) -> Result<(NodeId, Q), Response> {
    let Ok(origin) = id.parse::<NodeId>() else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a node id"),
        ));
    };
    let query = query.map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))?;
    if !may_read(state, &caller.peer, origin) {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!("peer {} may not read origin {origin}", caller.peer.name),
        ));
    }
    Ok((origin, query.0))
}

#[derive(serde::Deserialize)]
struct BaseQuery {
    #[serde(default)]
    after: u64,
    seq: Option<u64>,
}

/// `GET /v1/origins/{id}/base?after=&seq=`: a page of the base at the snapshot at `seq` (by
/// default the compacted base, else the latest snapshot held): see [`wire::encode_base_page`].
async fn base(
    State(state): State<Arc<PeerState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<BaseQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (origin, query) = match readable(&state, &caller, &id, query) {
        Ok(found) => found,
        Err(response) => return response,
    };
    if query.after > crate::feed::MAX_SEQ || query.seq.is_some_and(|s| s > crate::feed::MAX_SEQ) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("after and seq must be at most {}", crate::feed::MAX_SEQ),
        );
    }
    let page = read_store(&state, move |s| {
        s.base_page(origin, query.seq.map(Seq), query.after, wire::PAGE_BYTES)
    })
    .await;
    match page {
        Err(response) => response,
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no such snapshot of origin {origin} is held here"),
        ),
        Ok(Some((snapshot, more, entries))) => {
            let body = tokio::task::spawn_blocking(move || {
                wire::compress(&wire::encode_base_page(
                    &snapshot,
                    more,
                    entries.iter().map(Vec::as_slice),
                ))
            })
            .await;
            let Ok(body) = body else {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "encoding a page failed");
            };
            let mut response = Response::new(Body::from(body));
            let h = response.headers_mut();
            h.insert(
                axum::http::header::CONTENT_ENCODING,
                axum::http::HeaderValue::from_static("zstd"),
            );
            h.insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static(wire::BASE_TYPE),
            );
            response
        }
    }
}

async fn origins(
    State(state): State<Arc<PeerState>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    let shared = state.clone();
    match read_store(&state, move |s| {
        s.origins()?
            .into_iter()
            .filter(|o| may_read(&shared, &caller.peer, o.id))
            .map(|o| describe(s, o.id, o.is_self, false))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    {
        Ok(list) => {
            axum::Json(json!({ "origins": list.into_iter().flatten().collect::<Vec<_>>() }))
                .into_response()
        }
        Err(response) => response,
    }
}

async fn origin(
    State(state): State<Arc<PeerState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let Ok(origin) = id.parse::<NodeId>() else {
        return error(StatusCode::BAD_REQUEST, format!("{id:?} is not a node id"));
    };
    if !may_read(&state, &caller.peer, origin) && !grants(&state, &caller.peer.accept, origin) {
        return error(
            StatusCode::FORBIDDEN,
            format!("peer {} may not read origin {origin}", caller.peer.name),
        );
    }
    let is_self = origin == state.node;
    let relay = origin == caller.peer.id || grants(&state, &caller.peer.accept, origin);
    match read_store(&state, move |s| describe(s, origin, is_self, relay)).await {
        Ok(Some(doc)) => axum::Json(doc).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("origin {origin} is not held here"),
        ),
        Err(response) => response,
    }
}

/// Query of a page request.
#[derive(serde::Deserialize)]
struct PageQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    #[serde(default)]
    wait: u64,
}

async fn entries(
    State(state): State<Arc<PeerState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<PageQuery>, axum::extract::rejection::QueryRejection>,
    headers: axum::http::HeaderMap,
) -> Response {
    let (origin, query) = match readable(&state, &caller, &id, query) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let limit = query
        .limit
        .unwrap_or(crate::peer::PAGE_ENTRIES)
        .clamp(1, MAX_PAGE_ENTRIES);
    if query.after > crate::feed::MAX_SEQ {
        return error(
            StatusCode::BAD_REQUEST,
            format!("after must be at most {}", crate::feed::MAX_SEQ),
        );
    }
    // A long poll holds one of the caller's slots while it waits; without a free slot it is
    // answered at once, as if it asked no wait (see `guard`).
    let mut wait = std::time::Duration::from_secs(query.wait).min(MAX_WAIT);
    let _slot = if wait.is_zero() {
        None
    } else {
        match caller.polls.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                tracing::debug!(peer = %caller.peer.name, "peer api: long poll answered at once, the peer holds its share");
                guard::refused("long_polls");
                wait = std::time::Duration::ZERO;
                None
            }
        }
    };
    let deadline = tokio::time::Instant::now() + wait;
    let after = Seq(query.after);
    let mut changed = state.changes.subscribe();
    let mut pull_recorded = false;
    loop {
        // Subscribed before reading, so a change between the read and the wait is not missed.
        changed.borrow_and_update();
        let page = read_store(&state, move |s| {
            Ok((
                s.head_if_held(origin)?,
                s.entries_page(origin, after, limit, wire::PAGE_BYTES)?,
            ))
        })
        .await;
        let (head, page) = match page {
            // An origin registered only by bookkeeping (nothing held) is not held.
            Ok((None, _)) | Ok((Some(None), _)) if origin != state.node => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("origin {origin} is not held here"),
                );
            }
            Ok((None, _)) => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("origin {origin} is not held here"),
                );
            }
            Ok((Some(head), page)) => (head.map_or(0, |h| h.seq.0), page),
            Err(response) => return response,
        };
        if origin == state.node && !pull_recorded {
            // The caller says, in a request it signed, that it holds this node's feed up to
            // `after` (a request below the base got 410 above and says nothing): compaction
            // waits for it (see `retention::Holders`). Unrecorded, it must ask again.
            if let Err(response) = record_pull(&state, caller.peer.id, after).await {
                return response;
            }
            pull_recorded = true;
        }
        if let Some((entries, checkpoint)) = page {
            let zstd = headers
                .get(axum::http::header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|c| c.trim().starts_with("zstd")));
            let count = entries.len();
            // Encoding and compressing copy megabytes: off the async workers.
            let body = tokio::task::spawn_blocking(move || {
                let raw =
                    wire::encode_page(&checkpoint, entries.iter().map(|e| e.bytes.as_slice()));
                if zstd { wire::compress(&raw) } else { raw }
            })
            .await;
            let Ok(body) = body else {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "encoding a page failed");
            };
            let mut response = Response::new(Body::from(body));
            if zstd {
                response.headers_mut().insert(
                    axum::http::header::CONTENT_ENCODING,
                    axum::http::HeaderValue::from_static("zstd"),
                );
            }
            let h = response.headers_mut();
            h.insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static(wire::PAGE_TYPE),
            );
            h.insert("tandem-head", head.into());
            metrics::counter!(telemetry::ENTRIES_SERVED, "peer" => caller.peer.name.clone())
                .increment(count as u64);
            return response;
        }
        // A change reads again; the deadline, or the node stopping, answers that nothing came.
        let grew = tokio::select! {
            waited = tokio::time::timeout_at(deadline, changed.changed()) => matches!(waited, Ok(Ok(()))),
            _ = state.stopping.cancelled() => false,
        };
        if !grew {
            let mut response = StatusCode::NO_CONTENT.into_response();
            response.headers_mut().insert("tandem-head", head.into());
            return response;
        }
    }
}

/// Records that `peer` pulled this node's own feed after `after`, unless the same was
/// recorded within the hour (a continuous puller asks every few seconds; each write syncs).
async fn record_pull(state: &Arc<PeerState>, peer: NodeId, after: Seq) -> Result<(), Response> {
    const REFRESH_MS: u64 = 3_600_000;
    let node = state.node;
    let known = read_store(state, move |s| {
        Ok(s.holders(node)?
            .into_iter()
            .find(|h| h.holder == peer)
            .and_then(|h| Some((h.pulled_seq?, h.pulled_at?))))
    })
    .await?;
    let now = crate::store::now_ms();
    if known.is_some_and(|(seq, at)| seq == after.0 && now.saturating_sub(at) < REFRESH_MS) {
        return Ok(());
    }
    state
        .store
        .write(move |s| s.record_pulled(node, peer, after))
        .await
        .map_err(unavailable)
}

async fn push(
    State(state): State<Arc<PeerState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Ok(origin) = id.parse::<NodeId>() else {
        return error(StatusCode::BAD_REQUEST, format!("{id:?} is not a node id"));
    };
    let peer = caller.peer;
    if origin == state.node {
        return error(
            StatusCode::FORBIDDEN,
            "only this node extends its own feed; it recovers it by pulling",
        );
    }
    if !grants(&state, &peer.accept, origin) {
        return error(
            StatusCode::FORBIDDEN,
            format!("peer {} may not push origin {origin} here", peer.name),
        );
    }
    let encoding = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .to_owned();
    let push = accept::Push {
        origin,
        peer: peer.name.clone(),
        encoding,
        body,
        quota: peer.quota,
        counted: accepted_origins(&state, &peer),
    };
    match accept::accept_push(&state.store, &state.key, push).await {
        Ok(pushed) => {
            if pushed.added > 0 {
                state.changes.notify();
            }
            metrics::counter!(telemetry::ENTRIES_ACCEPTED).increment(pushed.added);
            axum::Json(wire::ReceiptDoc::from(&pushed.receipt)).into_response()
        }
        Err(accept::Refused::Store(e)) => unavailable(e),
        Err(refused) => {
            let status = match refused {
                accept::Refused::Encoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                accept::Refused::Invalid(_) => StatusCode::BAD_REQUEST,
                accept::Refused::Quota { .. } => StatusCode::INSUFFICIENT_STORAGE,
                _ => StatusCode::CONFLICT,
            };
            match refused.head() {
                Some(head) => error_with_head(status, refused.to_string(), head),
                None => error(status, refused.to_string()),
            }
        }
    }
}

fn bad(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, format!("rejected: {message}"))
}

fn unavailable(e: StoreError) -> Response {
    tracing::error!(error = %e, "peer api: store write failed");
    error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
}

/// The origins `peer` may push here, resolved to ids (what its quota counts).
fn accepted_origins(state: &PeerState, peer: &PeerConfig) -> Vec<NodeId> {
    peer.accept
        .iter()
        .map(|o| match o {
            OriginRef::SelfNode => state.node,
            OriginRef::Node(id) => *id,
        })
        .filter(|id| *id != state.node)
        .collect()
}

#[derive(serde::Deserialize)]
struct AfterQuery {
    #[serde(default)]
    after: u64,
}

async fn snapshots(
    State(state): State<Arc<PeerState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<AfterQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (origin, after) = match readable(&state, &caller, &id, query) {
        Ok((origin, q)) => (origin, q.after),
        Err(response) => return response,
    };
    match read_store(&state, move |s| s.snapshots(origin)).await {
        Ok(list) => {
            let docs: Vec<wire::SnapshotDoc> = list
                .iter()
                .filter(|s| s.seq.0 > after)
                .map(wire::SnapshotDoc::from)
                .collect();
            axum::Json(json!({ "snapshots": docs })).into_response()
        }
        Err(response) => response,
    }
}

async fn push_snapshot(
    State(state): State<Arc<PeerState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(origin) = id.parse::<NodeId>() else {
        return error(StatusCode::BAD_REQUEST, format!("{id:?} is not a node id"));
    };
    let peer = caller.peer;
    if origin == state.node || !grants(&state, &peer.accept, origin) {
        return error(
            StatusCode::FORBIDDEN,
            format!("peer {} may not push origin {origin} here", peer.name),
        );
    }
    let snapshot = match serde_json::from_slice::<wire::SnapshotDoc>(&body)
        .map_err(|e| e.to_string())
        .and_then(|d| d.to_snapshot().map_err(|e| e.to_string()))
    {
        Ok(s) if s.origin == origin => s,
        Ok(_) => return bad("the snapshot is of another origin".into()),
        Err(e) => return bad(e),
    };
    match state
        .store
        .write(move |s| s.accept_snapshot(&snapshot))
        .await
    {
        Ok(()) => axum::Json(json!({ "stored": true })).into_response(),
        Err(
            e @ StoreError::SnapshotMismatch {
                source: crate::store::SnapshotMismatch::Ahead { .. },
                ..
            },
        ) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ (StoreError::SnapshotMismatch { .. } | StoreError::Feed(_))) => bad(e.to_string()),
        Err(e) => unavailable(e),
    }
}

/// `POST /v1/origins/{id}/receipts`: receipts sent after a pull, the caller's own and those it
/// relays (see the module docs).
async fn receipts(
    State(state): State<Arc<PeerState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(origin) = id.parse::<NodeId>() else {
        return error(StatusCode::BAD_REQUEST, format!("{id:?} is not a node id"));
    };
    let peer = caller.peer;
    if !may_read(&state, &peer, origin) && !grants(&state, &peer.accept, origin) {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "peer {} may not read or push origin {origin} here",
                peer.name
            ),
        );
    }
    if body.len() > wire::MAX_RECEIPTS_BODY {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a list of receipts is at most {} bytes",
                wire::MAX_RECEIPTS_BODY
            ),
        );
    }
    let doc: wire::ReceiptsDoc = match serde_json::from_slice(&body) {
        Ok(doc) => doc,
        Err(e) => return bad(format!("not a list of receipts: {e}")),
    };
    if doc.receipts.len() > wire::MAX_RECEIPTS {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {} receipts per request", wire::MAX_RECEIPTS),
        );
    }
    let mut parsed = Vec::with_capacity(doc.receipts.len());
    for d in &doc.receipts {
        match d.to_receipt() {
            Ok(r) if r.origin == origin => parsed.push(r),
            Ok(_) => return bad("a receipt of another origin".into()),
            Err(e) => return bad(e.to_string()),
        }
    }
    let listed: Vec<NodeId> = state.peers.iter().map(|p| p.id).collect();
    let names: Vec<(NodeId, String)> = state.peers.iter().map(|p| (p.id, p.name.clone())).collect();
    let (peer_name, peer_id) = (peer.name.clone(), peer.id);
    let outcome = state.store.write(move |s| {
        if s.head_if_held(origin)?.is_none() {
            return Ok(None);
        }
        let mut answer = wire::ReceiptsAnswer::default();
        for receipt in &parsed {
            let check = s.record_foreign_receipt(receipt, &listed)?;
            match check {
                crate::store::ReceiptCheck::Recorded => {
                    answer.recorded += 1;
                    if let Some((_, name)) = names.iter().find(|(id, _)| *id == receipt.holder) {
                        metrics::gauge!(telemetry::HOLDER_ACKED_SEQ, "origin" => origin.to_string(), "holder" => name.clone())
                            .set(receipt.seq.0 as f64);
                    }
                }
                crate::store::ReceiptCheck::Unchanged => {}
                crate::store::ReceiptCheck::Refused(why) => {
                    tracing::warn!(peer = %peer_name, %origin, holder = %receipt.holder, seq = receipt.seq.0, reason = %why, own = receipt.holder == peer_id, "receipt refused");
                    answer.refused.push(wire::RefusedReceipt {
                        holder: receipt.holder,
                        seq: receipt.seq.0,
                        error: why,
                    });
                }
            }
        }
        Ok(Some(answer))
    })
    .await;
    match outcome {
        Ok(Some(answer)) => axum::Json(answer).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("origin {origin} is not held here"),
        ),
        Err(e) => unavailable(e),
    }
}
