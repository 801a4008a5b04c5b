//! What stands before every peer API handler: authentication, then the limits that keep one
//! node's memory and tasks bounded whatever its peers (or anyone on the network) send.
//!
//! The order is the point. A request costs this node next to nothing until its signer is
//! proven: the headers are checked first (a known `keyid`, a signature over method, path,
//! query, `Content-Digest`, the target node and a nonce, see
//! [`crate::protocol::signature`]), and only then is a single byte of the body read. An
//! attacker who knows a peer's id (ids are public) but not its key gets `401` at once and
//! the connection is closed; the body it streams is never buffered.
//!
//! Once a signer is proven:
//! - **Replays** are refused: its nonce must be new ([`NonceCache`], bounded per peer and in
//!   total; full means refused with `429`/`503` and `Retry-After`, never forgotten), and a
//!   signature made before the second this process began serving (whose use before a
//!   restart is not known) gets `503` with `Retry-After`: the peer signs its next attempt
//!   anew.
//! - **Bodies** are read by at most [`MAX_BODIES_PER_PEER`] requests of one peer and
//!   [`MAX_BODIES`] in all at a time; beyond that, `429` (that peer) or `503` (this node), with
//!   `Retry-After`. A body is read in chunks up to [`MAX_BODY`](super::MAX_BODY) (`413`; a route that takes a
//!   small document has a lower bound, checked the same way: against `Content-Length` before
//!   a byte is read, then chunk by chunk), at the
//!   listener's rate floor ([`crate::api::listen::BODY_MIN_RATE`]), each chunk fed to the covered `Content-Digest`; a body that does
//!   not match is `400` and no handler sees it.
//! - **Long polls** (`GET …/entries?wait=S`) hold at most [`long_polls_for`] per peer: one per
//!   origin it may read, plus slack for polls a restarted peer left behind. A poll beyond that
//!   is answered at once, as if it asked `wait=0` (a page, or `204`): the peer's pull loop
//!   then paces itself (a tandem puller waits a second after an empty answer) instead of
//!   stopping on an error, and nothing is held for it.
//!
//! Every refusal is a JSON `{"error"}` like the rest of the API and counts in
//! `tandem_peer_requests_refused_total{reason}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{PeerState, error};
use crate::config::PeerConfig;
use crate::identity::NodeId;
use crate::protocol::replay::{NonceCache, ReplayError};
use crate::protocol::signature::{self, RequestParts, TARGET_HEADER};
use crate::telemetry;

/// Request bodies one peer may have in flight at once. A tandem peer pushes one page at a time.
pub const MAX_BODIES_PER_PEER: usize = 2;
/// Request bodies this node reads at once, all peers together: with [`MAX_BODY`](super::MAX_BODY) each, the
/// bound on what authenticated uploads can hold in memory.
pub const MAX_BODIES: usize = 8;
/// Long polls a peer may hold beyond one per origin it may read.
pub const POLL_SLACK: usize = 8;
/// Nonces remembered per peer: at most this many requests per peer within a signature's
/// window (about 33 a second over ten minutes, far above what replication needs).
pub const NONCES_PER_PEER: usize = 20_000;
/// Nonces remembered in all (each takes about 150 bytes).
pub const MAX_NONCES: usize = 200_000;
/// `Retry-After` for a request refused because too many bodies are in flight, in seconds.
const BODY_RETRY_SECS: u64 = 5;

/// How many long polls `peer` may hold at once.
pub fn long_polls_for(peer: &PeerConfig) -> usize {
    // Its own feed, plus what its `serve` list grants.
    1 + peer.serve.len() + POLL_SLACK
}

/// The authenticated caller, put in the request's extensions by [`authenticate`].
#[derive(Clone)]
pub(super) struct Caller {
    /// Its `[[peer]]` entry.
    pub peer: Arc<PeerConfig>,
    /// Its long-poll slots.
    pub polls: Arc<Semaphore>,
}

/// The per-peer and node-wide state of the limits.
pub(super) struct Guard {
    nonces: Mutex<NonceCache>,
    bodies: Arc<Semaphore>,
    peers: HashMap<NodeId, Slots>,
}

/// One peer's share.
struct Slots {
    peer: Arc<PeerConfig>,
    bodies: Arc<Semaphore>,
    polls: Arc<Semaphore>,
}

impl Guard {
    /// The limits for the configured `peers` (the first entry of an id counts, as everywhere).
    pub(super) fn new(peers: &[PeerConfig]) -> Guard {
        let mut slots = HashMap::new();
        for peer in peers {
            slots.entry(peer.id).or_insert_with(|| Slots {
                bodies: Arc::new(Semaphore::new(MAX_BODIES_PER_PEER)),
                polls: Arc::new(Semaphore::new(long_polls_for(peer))),
                peer: Arc::new(peer.clone()),
            });
        }
        Guard {
            nonces: Mutex::new(NonceCache::new(NONCES_PER_PEER, MAX_NONCES, unix_now())),
            bodies: Arc::new(Semaphore::new(MAX_BODIES)),
            peers: slots,
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Counts a refusal by its reason (see [`telemetry::PEER_REQUESTS_REFUSED`]).
pub(super) fn refused(reason: &'static str) {
    metrics::counter!(telemetry::PEER_REQUESTS_REFUSED, "reason" => reason).increment(1);
}

fn unauthenticated(message: impl Into<String>) -> Response {
    refused("unauthenticated");
    error(StatusCode::UNAUTHORIZED, message)
}

fn retry_later(status: StatusCode, retry_after: u64, message: String) -> Response {
    let mut response = error(status, message);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

fn too_large(limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body larger than {limit} bytes"),
    )
}

/// Authenticates a request from its headers alone, applies the limits, reads and checks its
/// body (at most `limit` bytes: [`MAX_BODY`](super::MAX_BODY) for the routes that take pages, less for those
/// that take small documents), and only then runs the handler with the [`Caller`] in the
/// request's extensions.
pub(super) async fn authenticate(
    State((state, guard, limit)): State<(Arc<PeerState>, Arc<Guard>, usize)>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    // Who claims to call: unknown keys are refused before anything else.
    let slots = match signature::claimed_signer(header("signature-input")) {
        Ok(id) => match guard.peers.get(&id) {
            Some(slots) => slots,
            None => {
                return unauthenticated(format!("unknown key {id}: no [[peer]] has this id"));
            }
        },
        Err(e) => return unauthenticated(format!("request not authenticated: {e}")),
    };
    let now = unix_now();
    let request_parts = RequestParts {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        content_digest: header("content-digest"),
        target: header(TARGET_HEADER),
    };
    let verified = match signature::verify(
        &request_parts,
        header("signature-input"),
        header("signature"),
        state.node,
        now,
    ) {
        Ok(v) if v.signer == slots.peer.id => v,
        Ok(v) => {
            return unauthenticated(format!("signed by {}, not by the key it names", v.signer));
        }
        Err(e) => return unauthenticated(format!("request not authenticated: {e}")),
    };
    let peer = &slots.peer;
    let admitted = guard
        .nonces
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admit(peer.id, &verified.nonce, verified.created, now);
    match admitted {
        Ok(()) => {}
        Err(e @ ReplayError::Replayed) => {
            tracing::warn!(peer = %peer.name, "peer api: replayed signature refused");
            refused("replayed");
            return error(
                StatusCode::UNAUTHORIZED,
                format!("request not authenticated: {e}"),
            );
        }
        Err(e @ ReplayError::SignerFull { retry_after }) => {
            refused("nonces");
            return retry_later(StatusCode::TOO_MANY_REQUESTS, retry_after, e.to_string());
        }
        Err(e @ ReplayError::Full { retry_after }) => {
            refused("nonces");
            return retry_later(StatusCode::SERVICE_UNAVAILABLE, retry_after, e.to_string());
        }
        Err(e @ ReplayError::BeforeStart { retry_after }) => {
            refused("before_start");
            return retry_later(StatusCode::SERVICE_UNAVAILABLE, retry_after, e.to_string());
        }
    }

    // Authenticated: now, and only now, the body.
    let mut digest = verified.digest;
    let mut permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> = None;
    let body = if axum::body::HttpBody::is_end_stream(&body) {
        if digest.check(b"").is_err() {
            return error(
                StatusCode::BAD_REQUEST,
                "rejected: the body does not match its content-digest",
            );
        }
        Body::empty()
    } else {
        let declared = header("content-length").and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return too_large(limit);
        }
        let Ok(own) = slots.bodies.clone().try_acquire_owned() else {
            refused("peer_bodies");
            return retry_later(
                StatusCode::TOO_MANY_REQUESTS,
                BODY_RETRY_SECS,
                format!(
                    "peer {} already sends {MAX_BODIES_PER_PEER} request bodies at once; retry when one is done",
                    peer.name
                ),
            );
        };
        let Ok(node) = guard.bodies.clone().try_acquire_owned() else {
            refused("bodies");
            return retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                BODY_RETRY_SECS,
                format!("this node already reads {MAX_BODIES} request bodies at once; retry later"),
            );
        };
        permits = Some((own, node));
        let read = read_body(body, declared.unwrap_or(0), limit, &mut digest);
        // How long it may take is the listener's business: a body slower than its rate floor
        // fails the read (`api::listen`), however large the page.
        match read.await {
            Ok(bytes) => {
                if digest.finish().is_err() {
                    tracing::warn!(peer = %peer.name, "peer api: body does not match its content-digest");
                    return error(
                        StatusCode::BAD_REQUEST,
                        "rejected: the body does not match its content-digest",
                    );
                }
                Body::from(bytes)
            }
            Err(response) => return response,
        }
    };
    // The peer is up: loops failing to reach it try again now (see `scheduler::Contacts`).
    state.contacts.heard(peer.id);
    let span = tracing::info_span!("peer_request", peer = %peer.name, method = %parts.method, path = %parts.uri.path());
    let mut request = Request::from_parts(parts, body);
    request.extensions_mut().insert(Caller {
        peer: peer.clone(),
        polls: slots.polls.clone(),
    });
    let response = tracing::Instrument::instrument(next.run(request), span).await;
    // The body slots are held until the handler is done with the body.
    drop(permits);
    response
}

/// Reads `body` to the end, at most `limit` bytes, feeding each chunk to `digest`.
async fn read_body(
    mut body: Body,
    declared: usize,
    limit: usize,
    digest: &mut signature::DigestCheck,
) -> Result<bytes::Bytes, Response> {
    let mut out = bytes::BytesMut::with_capacity(declared.min(limit));
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?;
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers: not covered, not used
        };
        if out.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        digest.update(&chunk);
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}
