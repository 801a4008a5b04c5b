//! The peer API under `/v1/`, read side: who this node is, and the origins a peer may read.
//!
//! Every request must be signed by a node key (RFC 9421, see
//! [`crate::protocol::signature`]) that a `[[peer]]` entry of the configuration names:
//! unsigned or badly signed requests and unknown keys get `401`, a known peer asking for an
//! origin its `serve` list does not grant gets `403`; errors are JSON `{"error": …}`. Nothing
//! is read for a request before it is authenticated.
//!
//! Endpoints (all `GET`):
//! - `/v1/node`: `{"id", "name", "version"}`.
//! - `/v1/origins`: `{"origins": [origin…]}`, the origins held that the caller may read.
//! - `/v1/origins/{id}`: one origin; `403` if not granted, `404` if not held.
//!
//! An origin is `{"id", "head": {"seq", "hash"}, "checkpoint": {"seq", "hash", "ts",
//! "signature"}}` where `hash` is hex, `signature` is the base64 (standard, padded) of the
//! origin's 64-byte ed25519 signature over the checkpoint signing input (see [`crate::feed`]),
//! and `checkpoint` is null for an empty feed. A reader verifies the checkpoint with the
//! origin's key; this node cannot forge it.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use serde_json::json;

use crate::config::{OriginRef, PeerConfig};
use crate::identity::NodeId;
use crate::protocol::signature::{self, RequestParts};
use crate::store::Store;

/// Largest request body the peer API reads (pushes will need more; reads carry none).
pub const MAX_BODY: usize = 1 << 20;

/// What the peer handlers share.
pub struct PeerState {
    /// This node.
    pub node: NodeId,
    /// Its name.
    pub name: String,
    /// The configured peers.
    pub peers: Vec<PeerConfig>,
    /// A read-only store connection, used inside `spawn_blocking`.
    pub reader: Arc<Mutex<Store>>,
}

/// The authenticated caller, put in the request's extensions by [`authenticate`].
#[derive(Clone)]
struct Caller(Arc<PeerConfig>);

/// The `/v1/` router, behind signature authentication.
pub fn router(state: Arc<PeerState>) -> Router {
    Router::new()
        .route("/v1/node", get(node))
        .route("/v1/origins", get(origins))
        .route("/v1/origins/{id}", get(origin))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// Verifies the request's signature and finds the peer it comes from.
async fn authenticate(
    State(state): State<Arc<PeerState>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {MAX_BODY} bytes"),
        );
    };
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let request_parts = RequestParts {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        content_digest: header("content-digest"),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let signer = match signature::verify(
        &request_parts,
        header("signature-input"),
        header("signature"),
        &body,
        now,
    ) {
        Ok(signer) => signer,
        Err(e) => {
            return error(
                StatusCode::UNAUTHORIZED,
                format!("request not authenticated: {e}"),
            );
        }
    };
    let Some(peer) = state.peers.iter().find(|p| p.id == signer) else {
        return error(
            StatusCode::UNAUTHORIZED,
            format!("unknown key {signer}: no [[peer]] has this id"),
        );
    };
    let mut request = Request::from_parts(parts, Body::from(body));
    request
        .extensions_mut()
        .insert(Caller(Arc::new(peer.clone())));
    next.run(request).await
}

async fn node(State(state): State<Arc<PeerState>>) -> Response {
    axum::Json(
        json!({ "id": state.node, "name": state.name, "version": env!("CARGO_PKG_VERSION") }),
    )
    .into_response()
}

/// Whether `caller` may read `origin` from this node.
fn may_read(state: &PeerState, caller: &PeerConfig, origin: NodeId) -> bool {
    caller.serve.iter().any(|o| match o {
        OriginRef::SelfNode => origin == state.node,
        OriginRef::Node(id) => *id == origin,
    })
}

/// The wire form of one origin held (see the module docs).
fn describe(
    store: &Store,
    origin: NodeId,
) -> Result<Option<serde_json::Value>, crate::store::StoreError> {
    let Some(info) = store.origins()?.into_iter().find(|o| o.id == origin) else {
        return Ok(None);
    };
    let checkpoint = store.latest_checkpoint(origin)?.map(|cp| {
        json!({
            "seq": cp.seq,
            "hash": cp.hash,
            "ts": cp.ts,
            "signature": base64::engine::general_purpose::STANDARD.encode(cp.signature),
        })
    });
    Ok(Some(json!({
        "id": info.id,
        "head": { "seq": info.head.map_or(0, |h| h.seq.0), "hash": info.head.map(|h| h.hash) },
        "checkpoint": checkpoint,
    })))
}

async fn read_store<T: Send + 'static>(
    state: &Arc<PeerState>,
    f: impl FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, Response> {
    let reader = state.reader.clone();
    tokio::task::spawn_blocking(move || f(&reader.lock().unwrap_or_else(|e| e.into_inner())))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            tracing::error!(error = %e, "peer api: store read failed");
            error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
        })
}

async fn origins(
    State(state): State<Arc<PeerState>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    let allowed: Vec<NodeId> = {
        let held = match read_store(&state, |s| s.origins()).await {
            Ok(held) => held,
            Err(response) => return response,
        };
        held.into_iter()
            .map(|o| o.id)
            .filter(|id| may_read(&state, &caller.0, *id))
            .collect()
    };
    match read_store(&state, move |s| {
        allowed
            .into_iter()
            .map(|id| describe(s, id))
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
    if !may_read(&state, &caller.0, origin) {
        return error(
            StatusCode::FORBIDDEN,
            format!("peer {} may not read origin {origin}", caller.0.name),
        );
    }
    match read_store(&state, move |s| describe(s, origin)).await {
        Ok(Some(doc)) => axum::Json(doc).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("origin {origin} is not held here"),
        ),
        Err(response) => response,
    }
}
