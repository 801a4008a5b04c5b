//! Accepting a page that a peer pushes: decode it, verify it against its origin's key, check the
//! peer's quota, store it, and sign a receipt for what is now held.
//!
//! The HTTP layer ([`crate::api::peer`]) authenticates the peer and decides whether it may push
//! this origin at all; everything after that is here, so that the rules for what enters the
//! store do not depend on how the page arrived. Each refusal says what the peer should do, and
//! the head it names lets the peer start again at the right place.

use std::sync::Arc;

use crate::feed::{Receipt, verify_batch};
use crate::identity::{NodeId, NodeKey};
use crate::protocol::wire;
use crate::store::{StoreError, StoreHandle};

/// A page as it arrived, once the peer may push its origin.
pub struct Push {
    /// The origin the page claims to extend.
    pub origin: NodeId,
    /// The pushing peer's name, for the log.
    pub peer: String,
    /// `Content-Encoding`: `zstd` or `identity`.
    pub encoding: String,
    /// The page as sent.
    pub body: bytes::Bytes,
    /// What the peer may store here in all, if limited.
    pub quota: Option<u64>,
    /// The origins the quota counts.
    pub counted: Vec<NodeId>,
}

/// What a push added, and the receipt that says so.
pub struct Pushed {
    /// Signed by this node for the head it now holds.
    pub receipt: Receipt,
    /// New entries stored.
    pub added: u64,
}

/// Why a push was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// An encoding other than zstd or none.
    #[error("content-encoding {0} is not supported (zstd or none)")]
    Encoding(String),
    /// The page does not decode or does not verify.
    #[error("rejected: {0}")]
    Invalid(String),
    /// The page would take the peer over its quota.
    #[error(
        "quota exceeded: peer {peer} may store {} here, holds {} and this push adds {}",
        bytesize::ByteSize(*quota).display().iec(),
        bytesize::ByteSize(*held).display().iec(),
        bytesize::ByteSize(*adds).display().iec()
    )]
    Quota {
        /// The peer.
        peer: String,
        /// Its quota.
        quota: u64,
        /// What it holds here now.
        held: u64,
        /// What the page adds.
        adds: u64,
        /// The head held here.
        head: u64,
    },
    /// The page starts after the held head: entries in between are missing.
    #[error(
        "page starts at seq {first} but seq {head} is the last held: send the entries after {head}"
    )]
    Gap {
        /// Its first seq.
        first: u64,
        /// The head held here.
        head: u64,
    },
    /// The page forks the held chain (evidence stored) or the origin is frozen.
    #[error("{message}")]
    Fork {
        /// What the store said.
        message: String,
        /// The head held here.
        head: u64,
    },
    /// The store failed; the peer may try again later.
    #[error(transparent)]
    Store(StoreError),
}

impl Refused {
    /// The held head to name in the answer, when the refusal has one.
    pub fn head(&self) -> Option<u64> {
        match self {
            Refused::Quota { head, .. }
            | Refused::Gap { head, .. }
            | Refused::Fork { head, .. } => Some(*head),
            _ => None,
        }
    }
}

/// Decodes and verifies `push` off the async workers, then stores it on the writer (the quota
/// is counted in the same job, so two pushes cannot both pass it), and signs the receipt.
pub async fn accept_push(
    store: &StoreHandle,
    key: &Arc<NodeKey>,
    push: Push,
) -> Result<Pushed, Refused> {
    let Push {
        origin,
        peer,
        encoding,
        body,
        quota,
        counted,
    } = push;
    let batch = tokio::task::spawn_blocking(move || {
        let raw = match encoding.as_str() {
            "zstd" => wire::decompress(&body).map_err(|e| Refused::Invalid(e.to_string()))?,
            "identity" => body.to_vec(),
            _ => return Err(Refused::Encoding(encoding)),
        };
        let (checkpoint, entries) =
            wire::decode_page(&raw).map_err(|e| Refused::Invalid(e.to_string()))?;
        verify_batch(origin, entries, checkpoint)
            .map_err(|e| Refused::Invalid(format!("page does not verify: {e}")))
    })
    .await
    .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))?;
    let key = key.clone();
    let stored = store
        .write(move |store| {
            if let Some(quota) = quota {
                let held = store.bytes_of(&counted)?;
                let head = store.head(origin)?.map_or(0, |h| h.seq.0);
                let first = batch.first_seq().0;
                let adds: u64 = batch
                    .entries()
                    .iter()
                    .skip(head.saturating_sub(first - 1) as usize)
                    .map(|e| e.len() as u64)
                    .sum();
                if adds > 0 && held + adds > quota {
                    return Ok(Err(Refused::Quota {
                        peer,
                        quota,
                        held,
                        adds,
                        head,
                    }));
                }
            }
            Ok(match store.accept(&batch, &[]) {
                Ok(accepted) => {
                    let receipt =
                        Receipt::sign(&key, origin, accepted.head, crate::store::now_ms());
                    Ok(Pushed {
                        receipt,
                        added: accepted.added,
                    })
                }
                Err(StoreError::Gap { head, first, .. }) => Err(Refused::Gap {
                    first: first.0,
                    head: head.0,
                }),
                Err(e @ (StoreError::Fork(_) | StoreError::Frozen { .. })) => {
                    let head = store.head(origin).ok().flatten().map_or(0, |h| h.seq.0);
                    tracing::warn!(%peer, %origin, error = %e, "push refused: fork");
                    Err(Refused::Fork {
                        message: e.to_string(),
                        head,
                    })
                }
                Err(StoreError::Feed(e)) => Err(Refused::Invalid(e.to_string())),
                Err(e) => Err(Refused::Store(e)),
            })
        })
        .await;
    stored.map_err(Refused::Store)?
}
