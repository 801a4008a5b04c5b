//! Signing snapshots of this node's own state, on the schedule (`[snapshots]`) or on demand
//! (`tandem snapshot`), and applying the retention policy after each new one.

use std::sync::Arc;

use super::Changes;
use crate::feed::Snapshot;
use crate::identity::NodeKey;
use crate::store::{StoreError, StoreHandle};

/// Signs snapshots of the own state (shared by the schedule and `POST /snapshot`).
#[derive(Clone)]
pub struct SnapshotMaker {
    /// The node's key.
    pub key: Arc<NodeKey>,
    /// The writer.
    pub store: StoreHandle,
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
        let made = store
            .write(move |store| {
                let made = store.create_snapshot(&key)?;
                if let (true, Some(policy)) = (made.1, retention) {
                    let (removed, _) = store.apply_retention(key.id(), policy, &holders)?;
                    if removed > 0 {
                        tracing::info!(removed, "snapshots pruned by retention");
                    }
                }
                Ok(made)
            })
            .await?;
        if made.1 {
            tracing::info!(seq = %made.0.seq, objects = made.0.objects, id = %made.0.id(), "snapshot signed");
            self.changes.notify();
        }
        Ok(made)
    }
}
