//! Key backups at a holder: a node stores its passphrase-sealed key here, and whoever knows
//! the passphrase fetches it back (see [`crate::keybackup`] for the format).
//!
//! - `PUT /v1/origins/{id}/key-backup`: `{"version", "fetch_key", "blob"}`, behind the same
//!   signature check as every peer request, and accepted only from the origin itself (the
//!   caller's key is `{id}`), for an origin this node holds or takes (its `[[peer]]` entry
//!   accepts or pulls its feed). The body is at most [`MAX_UPLOAD_BODY`] bytes, refused
//!   (`413`) on its `Content-Length` or as soon as it passes that, before more is read.
//!   `200 {"stored": true}`; one backup per origin, the last one wins.
//! - `POST /v1/key-backup/{id}`: `{"created", "nonce", "proof"}`, not signed by a node key
//!   (the node asking has lost its key): the proof is a signature by the fetch key the
//!   passphrase gives, over the origin, `created` and the nonce. `200` with the stored backup
//!   and this node's id when the proof verifies under the stored fetch key, `created` is
//!   within [`PROOF_WINDOW_SECS`] of this node's clock and the nonce was not used before.
//!
//! What a stranger learns from the fetch endpoint is kept to nothing: an unknown or malformed
//! id, an origin without a backup, a proof that does not verify and a replayed proof all get
//! the same `404 {"error": …}` (and a proof is checked against a decoy key when there is no
//! backup, so the time taken is about the same). Only what the request alone shows gets
//! another answer: a body that does not parse (`400`), a `created` outside the window
//! (`400`, naming the clocks), a body too large (`413`). Failed attempts are counted per
//! origin id, whether or not a backup exists: after [`FAILURE_BURST`] of them, one more every
//! [`FAILURE_INTERVAL`]; beyond that `429` with `Retry-After`. The blob, the fetch key and
//! the proofs are never logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::json;

use super::guard::Caller;
use super::{PeerState, error, grants};
use crate::identity::NodeId;
use crate::keybackup::{
    self, BackupDoc, FetchDoc, MAX_BLOB, MAX_FETCH_BODY, NONCE_LEN, PROOF_NONCE_LEN,
    PROOF_WINDOW_SECS, UploadDoc,
};
use crate::protocol::replay::{NonceCache, ReplayError};
use crate::store::StoredKeyBackup;

pub use crate::keybackup::MAX_UPLOAD_BODY;

/// Failed fetches of one origin id allowed in a row.
pub const FAILURE_BURST: u32 = 5;
/// After [`FAILURE_BURST`] failures, one more attempt per this interval.
pub const FAILURE_INTERVAL: Duration = Duration::from_secs(60);
/// Origin ids whose failures are remembered at once (about 50 bytes each). When that many
/// are being limited, a fetch of another id is refused (`503`) until some are forgiven:
/// refusing costs an honest recovery a retry, admitting would let whoever fills the table
/// guess without a limit.
pub const FAILURES_TRACKED: usize = 65_536;
/// Fetch nonces remembered per origin (a proof is accepted once).
const NONCES_PER_ORIGIN: usize = 64;
/// Fetch nonces remembered in all.
const MAX_NONCES: usize = 4_096;

/// The uniform answer to a fetch that gets nothing.
fn nothing() -> Response {
    error(StatusCode::NOT_FOUND, keybackup::NO_BACKUP)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `PUT /v1/origins/{id}/key-backup` (see the module docs).
pub(super) async fn upload(
    State(state): State<Arc<PeerState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(origin) = id.parse::<NodeId>() else {
        return error(StatusCode::BAD_REQUEST, format!("{id:?} is not a node id"));
    };
    let peer = caller.peer;
    if origin != peer.id {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "peer {} may store only its own key backup here, not origin {origin}'s",
                peer.name
            ),
        );
    }
    let configured = grants(&state, &peer.accept, origin) || grants(&state, &peer.pull, origin);
    let held = configured
        || match state
            .store
            .read(move |s| Ok(matches!(s.head_if_held(origin)?, Some(Some(_)))))
            .await
        {
            Ok(held) => held,
            Err(e) => return super::unavailable(e),
        };
    if !held {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "this node does not hold the feed of peer {} and its [[peer]] entry neither accepts nor pulls it; a key backup is kept only where the feed is",
                peer.name
            ),
        );
    }
    let backup = match parse_upload(&body) {
        Ok(backup) => backup,
        Err(why) => return error(StatusCode::BAD_REQUEST, format!("rejected: {why}")),
    };
    match state
        .store
        .write(move |s| s.put_key_backup(origin, &backup))
        .await
    {
        Ok(()) => {
            tracing::info!(peer = %peer.name, "key backup stored");
            axum::Json(json!({ "stored": true })).into_response()
        }
        Err(e) => super::unavailable(e),
    }
}

fn parse_upload(body: &[u8]) -> Result<StoredKeyBackup, String> {
    let doc: UploadDoc =
        serde_json::from_slice(body).map_err(|e| format!("not a key backup document: {e}"))?;
    if doc.version == 0 {
        return Err("version 0 does not exist".into());
    }
    let fetch_key: [u8; 32] =
        keybackup::decode_fixed(&doc.fetch_key, "fetch_key").map_err(|e| e.to_string())?;
    if !keybackup::valid_fetch_key(&fetch_key) {
        return Err("fetch_key is not a usable ed25519 public key".into());
    }
    let blob = keybackup::decode_bounded(&doc.blob, MAX_BLOB, "blob").map_err(|e| e.to_string())?;
    if blob.len() < NONCE_LEN + 16 {
        return Err("the blob is shorter than a nonce and a tag".into());
    }
    Ok(StoredKeyBackup {
        version: doc.version,
        fetch_key,
        blob,
        stored_at: crate::store::now_ms(),
    })
}

/// What the fetch endpoint keeps between requests.
pub(super) struct Fetcher {
    state: Arc<PeerState>,
    failures: Mutex<Failures>,
    nonces: Mutex<NonceCache>,
    /// A public key no proof verifies under, checked when an origin has no backup.
    decoy: [u8; 32],
}

impl Fetcher {
    pub(super) fn new(state: Arc<PeerState>) -> Fetcher {
        Fetcher {
            state,
            failures: Mutex::new(Failures::default()),
            nonces: Mutex::new(NonceCache::new(NONCES_PER_ORIGIN, MAX_NONCES, unix_now())),
            decoy: crate::identity::NodeKey::generate()
                .id()
                .as_bytes()
                .to_owned(),
        }
    }
}

/// Failed fetches per origin id, as a GCRA: `free_at` is when the id has its full burst
/// again; each failure moves it one [`FAILURE_INTERVAL`] later.
#[derive(Default)]
struct Failures {
    free_at: HashMap<NodeId, Instant>,
    last_sweep: Option<Instant>,
}

impl Failures {
    /// `Ok` when `origin` may try now; else the seconds to wait, or `None` when the table is
    /// full of ids being limited.
    fn check(&mut self, origin: NodeId, now: Instant) -> Result<(), Option<u64>> {
        let slack = FAILURE_INTERVAL * (FAILURE_BURST - 1);
        match self.free_at.get(&origin) {
            Some(free_at) if *free_at > now + slack => {
                Err(Some((*free_at - now - slack).as_secs().max(1)))
            }
            Some(_) => Ok(()),
            None if self.free_at.len() < FAILURES_TRACKED => Ok(()),
            None => {
                // Forget the ids whose burst is whole again, at most once a second (a scan of
                // the whole table per request would be the attack).
                if self
                    .last_sweep
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                {
                    self.last_sweep = Some(now);
                    self.free_at.retain(|_, free_at| *free_at > now);
                }
                if self.free_at.len() < FAILURES_TRACKED {
                    Ok(())
                } else {
                    Err(None)
                }
            }
        }
    }

    /// Counts a failed attempt on `origin` (which [`Failures::check`] admitted).
    fn fail(&mut self, origin: NodeId, now: Instant) {
        let free_at = self.free_at.entry(origin).or_insert(now);
        *free_at = (*free_at).max(now) + FAILURE_INTERVAL;
    }
}

/// Reads a body of at most `limit` bytes: refused on its `Content-Length` before anything is
/// read, and as soon as what arrives passes the bound.
async fn read_small(request: Request, limit: usize) -> Result<Bytes, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body: Body = request.into_body();
    let mut out = Vec::with_capacity(limit.min(declared.unwrap_or(0) as usize));
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        if out.len() + chunk.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.into())
}

/// `POST /v1/key-backup/{id}` (see the module docs).
pub(super) async fn fetch(
    State(fetcher): State<Arc<Fetcher>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let Ok(origin) = id.parse::<NodeId>() else {
        return nothing();
    };
    let checked = fetcher
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .check(origin, Instant::now());
    match checked {
        Ok(()) => {}
        Err(Some(wait)) => {
            super::guard::refused("key_backup_limited");
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many failed attempts to fetch this key backup; retry in {wait} s (each passphrase tried costs the same wait)"
                ),
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(wait));
            return response;
        }
        Err(None) => {
            super::guard::refused("key_backup_limited");
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many failed key backup fetches on this node; retry later",
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(FAILURE_INTERVAL.as_secs()));
            return response;
        }
    }
    let body = match read_small(request, MAX_FETCH_BODY).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let parsed = serde_json::from_slice::<FetchDoc>(&body)
        .map_err(|e| format!("not a key backup fetch: {e}"))
        .and_then(|doc| {
            let nonce: [u8; PROOF_NONCE_LEN] =
                keybackup::decode_fixed(&doc.nonce, "nonce").map_err(|e| e.to_string())?;
            let proof: [u8; 64] =
                keybackup::decode_fixed(&doc.proof, "proof").map_err(|e| e.to_string())?;
            Ok((doc.created, nonce, proof))
        });
    let (created, nonce, proof) = match parsed {
        Ok(parsed) => parsed,
        Err(why) => return error(StatusCode::BAD_REQUEST, format!("rejected: {why}")),
    };
    let now = unix_now();
    if (created - now).abs() > PROOF_WINDOW_SECS {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "the proof was made {} s away from this node's clock (at most {PROOF_WINDOW_SECS} s allowed); check both clocks",
                created - now
            ),
        );
    }
    let stored = match fetcher
        .state
        .store
        .read(move |s| s.key_backup(origin))
        .await
    {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!(error = %e, "peer api: store read failed");
            return error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable");
        }
    };
    let valid = match &stored {
        Some(b) => {
            keybackup::verify_proof(&b.fetch_key, b.version, origin, created, &nonce, &proof)
        }
        None => {
            // The same work as for a stored backup, so that the time does not tell.
            let _ = keybackup::verify_proof(
                &fetcher.decoy,
                keybackup::V1.version,
                origin,
                created,
                &nonce,
                &proof,
            );
            false
        }
    };
    let admitted = if valid {
        // Accepted once: the nonce is recorded only for proofs that verified, so strangers
        // cannot fill the cache.
        fetcher
            .nonces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(origin, &keybackup::encode(&nonce), created, now)
    } else {
        Err(ReplayError::Replayed)
    };
    match (admitted, stored) {
        (Ok(()), Some(backup)) => {
            tracing::info!(%origin, "key backup fetched");
            axum::Json(BackupDoc {
                version: backup.version,
                origin,
                holder: fetcher.state.node,
                fetch_key: keybackup::encode(&backup.fetch_key),
                blob: keybackup::encode(&backup.blob),
            })
            .into_response()
        }
        (Err(e @ ReplayError::BeforeStart { retry_after }), _) => {
            super::guard::refused("before_start");
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after));
            response
        }
        (Err(ReplayError::SignerFull { retry_after } | ReplayError::Full { retry_after }), _) => {
            super::guard::refused("nonces");
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("too many key backup fetches at once; retry in {retry_after} s"),
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after));
            response
        }
        _ => {
            fetcher
                .failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .fail(origin, Instant::now());
            super::guard::refused("key_backup_proof");
            tracing::debug!(%origin, "key backup fetch refused");
            nothing()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_limited_per_origin_after_a_burst() {
        let a = crate::identity::NodeKey::from_seed([1; 32]).id();
        let b = crate::identity::NodeKey::from_seed([2; 32]).id();
        let mut failures = Failures::default();
        let t0 = Instant::now();
        for _ in 0..FAILURE_BURST {
            assert_eq!(failures.check(a, t0), Ok(()));
            failures.fail(a, t0);
        }
        let wait = failures.check(a, t0).unwrap_err().unwrap();
        assert!(wait > 0 && wait <= FAILURE_INTERVAL.as_secs(), "{wait}");
        // Another origin is not affected.
        assert_eq!(failures.check(b, t0), Ok(()));
        // One interval later, one more attempt; a failure closes it again.
        let t1 = t0 + FAILURE_INTERVAL;
        assert_eq!(failures.check(a, t1), Ok(()));
        failures.fail(a, t1);
        assert!(failures.check(a, t1).is_err());
        // After the whole burst's time, the burst is back.
        let t2 = t1 + FAILURE_INTERVAL * FAILURE_BURST;
        for _ in 0..FAILURE_BURST {
            assert_eq!(failures.check(a, t2), Ok(()));
            failures.fail(a, t2);
        }
        assert!(failures.check(a, t2).is_err());
    }

    #[test]
    fn a_full_table_refuses_new_ids_until_some_are_forgiven() {
        let mut failures = Failures::default();
        let t0 = Instant::now();
        for i in 0..FAILURES_TRACKED as u32 {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_be_bytes());
            let id = crate::identity::NodeKey::from_seed(seed).id();
            failures.free_at.insert(id, t0 + FAILURE_INTERVAL);
        }
        let new = crate::identity::NodeKey::from_seed([0xff; 32]).id();
        assert_eq!(failures.check(new, t0), Err(None));
        // Once their burst is whole again, they are forgotten and the new id may try.
        let later = t0 + FAILURE_INTERVAL + Duration::from_secs(2);
        assert_eq!(failures.check(new, later), Ok(()));
        assert!(failures.free_at.is_empty());
    }
}
