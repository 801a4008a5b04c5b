//! One pass of each kind of replication work, with no spawning and no timing decisions (the
//! scheduler decides when): [`ingest`] follows the source into this node's own feed,
//! [`federate`] moves feeds between this node and one peer, [`accept`] takes in what a peer
//! pushes, [`drill`] restores every origin held into a scratch server and checks it,
//! [`mirror`] keeps the target of a migration up to date with its origin's later entries.

pub mod accept;
pub mod archive;
pub mod drill;
pub mod federate;
pub mod ingest;
pub mod mirror;
pub mod moves;
pub mod restore;
pub mod select;
pub mod snapshot;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use federate::{Federation, PullReport, PushReport};

/// A signal that some feed in the store grew: ingest and accepted pushes or pulls raise it;
/// long polls and continuous pushes wait on it. Cloning shares the signal.
#[derive(Clone)]
pub struct Changes(watch::Sender<u64>);

impl Default for Changes {
    fn default() -> Self {
        Changes(watch::Sender::new(0))
    }
}

impl Changes {
    /// Says that a feed grew.
    pub fn notify(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver whose `changed()` resolves after the next [`Changes::notify`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// What `tandem sync` did: the ingest pass (if the node has a source), then each peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncReport {
    /// The ingest pass.
    pub ingest: Option<ingest::IngestReport>,
    /// One round with each peer.
    pub peers: Vec<PeerSync>,
}

/// What one round with one peer did (`tandem sync`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerSync {
    /// The peer's name.
    pub peer: String,
    /// The push, if the peer has a `push` list and it succeeded.
    pub push: Option<PushReport>,
    /// The pull, if the peer has a `pull` list and it succeeded.
    pub pull: Option<PullReport>,
    /// The first failure, if any.
    pub error: Option<String>,
}

/// Pushes to and pulls from every peer once, one after the other; a failing peer does not stop
/// the others.
pub async fn sync_peers(feds: &[Federation]) -> Vec<PeerSync> {
    let mut out = Vec::new();
    for fed in feds {
        let (pushed, pulled) = fed.round().await;
        let error = [
            pushed
                .as_ref()
                .and_then(|r| r.as_ref().err())
                .map(|e| e.to_string()),
            pulled
                .as_ref()
                .and_then(|r| r.as_ref().err())
                .map(|e| e.to_string()),
        ]
        .into_iter()
        .flatten()
        .next();
        out.push(PeerSync {
            peer: fed.peer().name.clone(),
            push: pushed.and_then(Result::ok),
            pull: pulled.and_then(Result::ok),
            error,
        });
    }
    out
}
