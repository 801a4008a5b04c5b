//! The HTTP listener's router (the only axum user).
//!
//! - `GET /healthz`: 200 with the node's id and name and each worker's health while the store
//!   answers; 503 when it does not. A remote being down does not make the node unhealthy.
//! - `GET /metrics`: Prometheus text format (feed heads, entries appended and accepted,
//!   reachability of the source and peers, the last restore drill of each origin and the
//!   recovery point of the own feed, process metrics).
//!
//! - `/v1/…`: the peer API ([`peer`]), every request signed by a configured peer, except the
//!   fetch of a key backup, proven by its passphrase instead ([`peer::keybackup`]).
//!
//! [`listen`] runs the listener itself, with time limits and a connection cap; [`admin`]
//! serves local commands on a Unix socket.

pub mod admin;
pub mod listen;
pub mod peer;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::identity::NodeId;
use crate::scheduler::WorkerStatus;
use crate::store::{OriginInfo, StoreHandle};
use crate::telemetry;

/// What the handlers share.
pub struct ApiState {
    /// This node's id.
    pub node: NodeId,
    /// This node's name.
    pub name: String,
    /// The store; these handlers only read (readers never wait for the writer under WAL).
    pub store: StoreHandle,
    /// Health of the background loops.
    pub workers: Vec<Arc<WorkerStatus>>,
    /// `[node] durability`: holders needed for an entry to count as durable.
    pub durability: u32,
    /// The configured peers: only their receipts count toward durability.
    pub peers: Vec<NodeId>,
}

/// Builds the router: `/healthz`, `/metrics`, and the peer API under `/v1/`.
pub fn router(state: Arc<ApiState>, peer: Arc<peer::PeerState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(peer::router(peer))
        .fallback(not_found)
}

/// The origins held and the durable seq of the own feed.
async fn origins(state: &Arc<ApiState>) -> Result<(Vec<OriginInfo>, u64), String> {
    let (node, k, peers) = (state.node, state.durability, state.peers.clone());
    state
        .store
        .read(move |store| Ok((store.origins()?, store.durable_seq(node, k, &peers)?)))
        .await
        .map_err(|e| e.to_string())
}

async fn healthz(State(state): State<Arc<ApiState>>) -> Response {
    let workers: Vec<_> = state.workers.iter().map(|w| w.report()).collect();
    let node = json!({ "id": state.node, "name": state.name });
    match origins(&state).await {
        Ok(_) => (
            StatusCode::OK,
            axum::Json(json!({ "status": "ok", "node": node, "workers": workers })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "store unavailable", "error": e, "node": node, "workers": workers })),
        )
            .into_response(),
    }
}

/// The last drill of each origin, and when the newest durable change of the own feed was
/// made (ms).
async fn drills(
    state: &Arc<ApiState>,
) -> Result<(Vec<crate::store::DrillRecord>, Option<u64>), String> {
    let (node, k, peers) = (state.node, state.durability, state.peers.clone());
    state
        .store
        .read(move |store| Ok((store.drills()?, store.durable_at(node, k, &peers)?)))
        .await
        .map_err(|e| e.to_string())
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    match drills(&state).await {
        Ok((drills, durable_at)) => {
            for d in drills {
                let origin = d.origin.to_string();
                metrics::gauge!(telemetry::DRILL_LAST_OK, "origin" => origin.clone())
                    .set(if d.ok { 1.0 } else { 0.0 });
                metrics::gauge!(telemetry::DRILL_DURATION, "origin" => origin.clone())
                    .set(d.duration_ms as f64 / 1000.0);
                metrics::gauge!(telemetry::DRILL_LAST_TIMESTAMP, "origin" => origin)
                    .set(d.at as f64 / 1000.0);
            }
            if let Some(at) = durable_at {
                metrics::gauge!(telemetry::RPO, "origin" => state.node.to_string())
                    .set(crate::store::now_ms().saturating_sub(at) as f64 / 1000.0);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read drills for metrics"),
    }
    let migrations = state
        .store
        .read(|store| {
            store
                .migrations()?
                .into_iter()
                .map(|m| {
                    let head = store.head(m.origin)?.map_or(0, |h| h.seq.0);
                    Ok((
                        m.id,
                        head.saturating_sub(m.applied_seq),
                        m.stopped.is_some(),
                    ))
                })
                .collect::<Result<Vec<_>, crate::store::StoreError>>()
        })
        .await;
    match migrations {
        Ok(migrations) => {
            for (id, lag, stopped) in migrations {
                metrics::gauge!(telemetry::MIGRATION_LAG, "id" => id.to_string()).set(lag as f64);
                metrics::gauge!(telemetry::MIGRATION_STOPPED, "id" => id.to_string())
                    .set(if stopped { 1.0 } else { 0.0 });
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read migrations for metrics"),
    }
    match origins(&state).await {
        Ok((origins, durable)) => {
            metrics::gauge!(telemetry::DURABLE_SEQ, "origin" => state.node.to_string())
                .set(durable as f64);
            for o in origins {
                let labels = [
                    ("origin", o.id.to_string()),
                    ("self", o.is_self.to_string()),
                ];
                metrics::gauge!(telemetry::FEED_HEAD_SEQ, &labels)
                    .set(o.head.map_or(0, |h| h.seq.0) as f64);
                metrics::gauge!(telemetry::FEED_BYTES, &labels).set(o.bytes as f64);
                metrics::gauge!(telemetry::FEED_FROZEN, "origin" => o.id.to_string())
                    .set(if o.frozen { 1.0 } else { 0.0 });
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read feed heads for metrics"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        telemetry::metrics().render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({ "error": "not found" })),
    )
        .into_response()
}
