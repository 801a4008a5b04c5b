//! Snapshots: computing an origin's state root at a seq, signing our own, and keeping the
//! ones origins signed, each checked against the entries held before it is stored.

use rusqlite::OptionalExtension;

use super::read::BlobContext;
use super::{Context, SEQ_BITS, Store, StoreError, entry_key, now_ms};
use crate::feed::{self, FeedError, Head, Seq, Snapshot, StateFold, StateRoot, StateSummary};
use crate::identity::{NodeId, NodeKey};

/// One object of a restorable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateItem {
    /// Its path.
    pub path: String,
    /// For a live object, its body; for a tombstone, the delete's body (the source's tombstone).
    pub body: Vec<u8>,
    /// Whether it is a tombstone.
    pub deleted: bool,
    /// The seq of the entry it comes from.
    pub seq: Seq,
}

pub(super) struct Replay {
    pub(super) state: StateFold,
    pub(super) hash: crate::feed::EntryHash,
}

/// A snapshot that does not match what the store holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotMismatch {
    /// The snapshot's seq is beyond the entries held.
    #[error("snapshot at seq {seq} is beyond the held head {head}")]
    Ahead {
        /// Its seq.
        seq: u64,
        /// The head held.
        head: u64,
    },
    /// It names another entry at its seq: a fork.
    #[error("snapshot at seq {seq} names another entry than the one held")]
    OtherChain {
        /// Its seq.
        seq: u64,
    },
    /// The state root, object count or size differ from the state replayed from the entries.
    #[error("snapshot at seq {seq} states {what} that the held entries do not give")]
    State {
        /// Its seq.
        seq: u64,
        /// "a state root", "an object count"…
        what: &'static str,
    },
    /// Entries offered as the base of the snapshot do not give its state.
    #[error("the base offered for the snapshot at seq {seq} is refused: {what}")]
    Base {
        /// Its seq.
        seq: u64,
        /// What is wrong.
        what: &'static str,
    },
}

impl Store {
    /// The state root, object count and bytes of `origin` at `seq` (at or below its head),
    /// with the head at that seq. At the head it reads the materialized state; below it, it
    /// replays the entries up to `seq`. Call inside a read transaction for a consistent view.
    pub fn state_root_at(
        &self,
        origin: NodeId,
        seq: Seq,
    ) -> Result<(Head, StateSummary), StoreError> {
        let head = self
            .head(origin)?
            .ok_or(StoreError::Feed(FeedError::Malformed(
                "no entries held for this origin",
            )))?;
        if seq > head.seq || seq.0 == 0 {
            return Err(StoreError::Feed(FeedError::Malformed(
                "seq is beyond the held head",
            )));
        }
        if seq == head.seq {
            return Ok((head, self.state_root_at_head(origin)?));
        }
        let replay = self.replay(origin, seq)?;
        Ok((
            Head {
                seq,
                hash: replay.hash,
            },
            replay.state.summary()?,
        ))
    }

    /// The state root of the materialized state. The entries are read in their stored order (a
    /// sequential scan: far fewer page reads than fetching each live object's entry by path),
    /// the live ones hashed, then sorted by path and folded.
    fn state_root_at_head(&self, origin: NodeId) -> Result<StateSummary, StoreError> {
        let row = self
            .origin_row_id(origin)?
            .ok_or(StoreError::Feed(FeedError::Malformed("origin not held")))?;
        let head = self.head(origin)?.map_or(0, |h| h.seq.0);
        // Which seqs hold a live object (false) or a tombstone (true). Sized by the state, not
        // by the head seq, which a base can put anywhere.
        // Sorted by seq, then matched against the entries as they are scanned in seq order.
        let mut held: Vec<(u64, bool)> = Vec::new();
        for (table, deleted) in [("objects", false), ("tombstones", true)] {
            let mut stmt = self
                .conn
                .prepare(&format!("SELECT seq FROM {table} WHERE origin = ?1"))
                .ctx("reading objects")?;
            let mut rows = stmt.query([row]).ctx("reading objects")?;
            while let Some(r) = rows.next().ctx("reading objects")? {
                held.push((r.get::<_, i64>(0).ctx("reading objects")? as u64, deleted));
            }
        }
        held.sort_unstable();
        let mut next = held.iter().peekable();
        // (path, body hash, length, tombstone)
        let mut objects: Vec<(Box<str>, [u8; 32], u64, bool)> = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare("SELECT key, bytes FROM entries WHERE key > ?1 AND key <= ?2 ORDER BY key")
                .ctx("reading entries")?;
            let first = held.first().map_or(head, |(s, _)| s.saturating_sub(1));
            let mut rows = stmt
                .query((entry_key(row, first), entry_key(row, head)))
                .ctx("reading entries")?;
            while let Some(r) = rows.next().ctx("reading entries")? {
                let seq =
                    (r.get::<_, i64>(0).ctx("reading entries")? & ((1 << SEQ_BITS) - 1)) as u64;
                while next.next_if(|(s, _)| *s < seq).is_some() {}
                let Some(&(_, deleted)) = next.next_if(|(s, _)| *s == seq) else {
                    continue;
                };
                let bytes = r.get_ref(1).ctx("reading entries")?.as_blob().ctx_blob()?;
                let entry = feed::decode_stored_entry(bytes)?;
                objects.push((
                    entry.path.into(),
                    *blake3::hash(entry.body).as_bytes(),
                    entry.body.len() as u64,
                    deleted,
                ));
            }
        }
        objects.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut root = StateRoot::new();
        for (path, hash, len, deleted) in &objects {
            if *deleted {
                root.push_tombstone_hashed(path, hash)?;
            } else {
                root.push_hashed(path, hash, *len)?;
            }
        }
        Ok(root.finish())
    }

    /// Replays `origin`'s entries up to `seq`: the live objects, and the tombstones the source
    /// still keeps (deletes that carried one, not since re-created, and not below a container
    /// deleted later: deleting a container drops the tombstones below it).
    pub(super) fn replay(&self, origin: NodeId, seq: Seq) -> Result<Replay, StoreError> {
        let row = self
            .origin_row_id(origin)?
            .ok_or(StoreError::Feed(FeedError::Malformed("origin not held")))?;
        self.check_not_below_base(origin, seq.0)?;
        let mut state = StateFold::new();
        let mut at = self.base(origin)?.filter(|b| b.seq == seq).map(|b| b.hash);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT key, hash, bytes FROM entries WHERE key > ?1 AND key <= ?2 ORDER BY key",
            )
            .ctx("replaying entries")?;
        let mut rows = stmt
            .query((entry_key(row, 0), entry_key(row, seq.0)))
            .ctx("replaying entries")?;
        while let Some(r) = rows.next().ctx("replaying entries")? {
            let key: i64 = r.get(0).ctx("replaying entries")?;
            let bytes = r
                .get_ref(2)
                .ctx("replaying entries")?
                .as_blob()
                .ctx_blob()?;
            let entry = feed::decode_entry(bytes)?;
            let s = (key & ((1 << SEQ_BITS) - 1)) as u64;
            state.apply(s, &entry);
            if s == seq.0 {
                at = Some(super::hash_from(r.get(1).ctx("replaying entries")?)?);
            }
        }
        let hash = at.ok_or(StoreError::Feed(FeedError::Malformed(
            "an entry below the head is missing",
        )))?;
        Ok(Replay { state, hash })
    }

    /// What a restore writes for `origin` at `seq`: every live object and every tombstone the
    /// source kept, in path order, each with the body its entry carries. Checks that `seq` is
    /// held.
    pub fn state_for_restore(
        &self,
        origin: NodeId,
        seq: Seq,
    ) -> Result<Vec<StateItem>, StoreError> {
        // One read transaction for the whole state.
        let _view = self
            .conn
            .unchecked_transaction()
            .ctx("starting a state read")?;
        let head = self.head(origin)?.map_or(0, |h| h.seq.0);
        if seq.0 == 0 || seq.0 > head {
            return Err(StoreError::Feed(FeedError::Malformed(
                "seq is beyond the held head",
            )));
        }
        let replay = self.replay(origin, seq)?;
        let row = self.origin_row_id(origin)?.expect("the origin is held");
        // A sealed entry opens with this node's keys; a delete without a body is kept opened
        // (see `store::sealed`).
        let ring = self.keys.get(origin);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(p.bytes, e.bytes) FROM entries e
                 LEFT JOIN opened p ON p.key = e.key WHERE e.key = ?1",
            )
            .ctx("reading a body")?;
        let mut items: Vec<StateItem> = Vec::new();
        let mut resort = false;
        for (_, item) in replay.state.items() {
            let bytes: Vec<u8> = stmt
                .query_row([entry_key(row, item.seq)], |r| r.get(0))
                .ctx("reading a body")?;
            let bytes = super::sealed::reveal(ring.as_deref(), origin, bytes)?;
            let entry = feed::decode_entry(&bytes)?;
            resort |= items
                .last()
                .is_some_and(|l| l.path.as_bytes() >= entry.path.as_bytes());
            items.push(StateItem {
                path: entry.path.to_owned(),
                body: entry.body.to_vec(),
                deleted: item.deleted,
                seq: Seq(item.seq),
            });
        }
        if resort {
            // Source paths sort otherwise than their sealed paths. Within the one append
            // that switched sealing on, a path may be both sealed and not yet deleted plain:
            // the later entry is the state.
            items.sort_by(|a, b| {
                a.path
                    .as_bytes()
                    .cmp(b.path.as_bytes())
                    .then(b.seq.cmp(&a.seq))
            });
            items.dedup_by(|later, kept| later.path == kept.path);
        }
        Ok(items)
    }

    /// The last seq of `origin` whose entry was recorded at or before `at_ms`, if any.
    pub fn seq_at_time(&self, origin: NodeId, at_ms: u64) -> Result<Option<Seq>, StoreError> {
        let head = self.head(origin)?.map_or(0, |h| h.seq.0);
        let ts = |seq: u64| -> Result<u64, StoreError> {
            let e = self
                .entries_after(origin, Seq(seq - 1), 1)?
                .pop()
                .ok_or(StoreError::Feed(FeedError::Malformed(
                    "an entry below the head is missing",
                )))?;
            Ok(feed::decode_entry(&e.bytes)?.ts)
        };
        // Entry times never decrease along a feed in practice; a binary search finds the last
        // one not after `at_ms`. Below a compacted base, only the base's state is known: from
        // its snapshot's time at the latest.
        let base = self.base(origin)?;
        let base_seq = base.map_or(0, |b| b.seq.0);
        let (mut lo, mut hi) = (base_seq, head);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if ts(mid)? <= at_ms {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        if lo > 0 && lo == base_seq {
            let taken = self
                .snapshots(origin)?
                .into_iter()
                .find(|s| s.seq.0 == base_seq)
                .map_or(u64::MAX, |s| s.ts);
            if taken > at_ms {
                return Err(StoreError::Compacted {
                    origin,
                    base: Seq(base_seq),
                    asked: Seq(base_seq - 1),
                });
            }
        }
        Ok((lo > 0).then_some(Seq(lo)))
    }

    /// Signs a snapshot of our own state at its head and stores it. Returns `(snapshot,
    /// created)`: when the latest snapshot already is at the head, it is returned as is.
    pub fn create_snapshot(&mut self, key: &NodeKey) -> Result<(Snapshot, bool), StoreError> {
        let origin = key.id();
        let tx = self
            .conn
            .unchecked_transaction()
            .ctx("starting a snapshot")?;
        let head = self
            .head(origin)?
            .ok_or(StoreError::Feed(FeedError::Malformed(
                "the feed is empty: nothing to snapshot yet",
            )))?;
        if let Some(last) = self.snapshots(origin)?.pop()
            && last.seq == head.seq
        {
            return Ok((last, false));
        }
        let (head, root) = self.state_root_at(origin, head.seq)?;
        let snapshot = Snapshot::sign(key, head, now_ms(), root);
        insert(&tx, &snapshot)?;
        tx.commit().ctx("committing a snapshot")?;
        Ok((snapshot, true))
    }

    /// Checks a snapshot an origin signed against the entries held (signature, the entry at
    /// its seq, state root, object count and bytes) and stores it. Storing one already held
    /// is a no-op.
    pub fn accept_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        snapshot.verify()?;
        let tx = self
            .conn
            .unchecked_transaction()
            .ctx("starting a snapshot check")?;
        self.check_snapshot_here(snapshot)?;
        insert(&tx, snapshot)?;
        tx.commit().ctx("committing a snapshot")
    }

    /// Checks a snapshot (not its signature) against the entries held, in one read
    /// transaction (a writer appending meanwhile cannot make it fail).
    pub fn check_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let _view = self
            .conn
            .unchecked_transaction()
            .ctx("starting a snapshot check")?;
        self.check_snapshot_here(snapshot)
    }

    /// Checks every snapshot of `origin` (not their signatures) in one replay of its entries:
    /// the state is kept in memory (path, body hash) and compared at each snapshot's seq.
    /// Returns the problems found, by snapshot. Runs inside the caller's transaction.
    pub(super) fn check_snapshots_in_one_pass(
        &self,
        origin: NodeId,
        snapshots: &[Snapshot],
    ) -> Result<Vec<(Snapshot, StoreError)>, StoreError> {
        let mut problems = Vec::new();
        let mut pending: Vec<&Snapshot> = snapshots.iter().collect();
        pending.sort_by_key(|s| std::cmp::Reverse(s.seq));
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(problems);
        };
        let mismatch = |s: &Snapshot, m| StoreError::SnapshotMismatch {
            origin: s.origin,
            source: m,
        };
        let mut state = StateFold::new();
        // The state of a snapshot at the compacted base is complete once the entries beyond it
        // begin (or at the end); those below it were dropped with their entries.
        let base = self.base(origin)?;
        let mut base_settled = base.is_none();
        let settle_base = |pending: &mut Vec<&Snapshot>,
                           problems: &mut Vec<(Snapshot, StoreError)>,
                           state: &StateFold|
         -> Result<(), StoreError> {
            let Some(base) = base else { return Ok(()) };
            while let Some(s) = pending.last().filter(|s| s.seq <= base.seq).copied() {
                pending.pop();
                let problem = if s.seq < base.seq {
                    Some(StoreError::Compacted {
                        origin,
                        base: base.seq,
                        asked: s.seq,
                    })
                } else {
                    compare(s, base.hash, || Ok(state.summary()?))?
                };
                problems.extend(problem.map(|p| (*s, p)));
            }
            Ok(())
        };
        let mut stmt = self
            .conn
            .prepare(
                "SELECT key, hash, bytes FROM entries WHERE key > ?1 AND key <= ?2 ORDER BY key",
            )
            .ctx("replaying entries")?;
        let mut rows = stmt
            .query((entry_key(row, 0), entry_key(row, crate::feed::MAX_SEQ)))
            .ctx("replaying entries")?;
        while let Some(r) = rows.next().ctx("replaying entries")? {
            if pending.is_empty() {
                break;
            }
            let seq = (r.get::<_, i64>(0).ctx("replaying entries")? & ((1 << SEQ_BITS) - 1)) as u64;
            if !base_settled && base.is_some_and(|b| seq > b.seq.0) {
                settle_base(&mut pending, &mut problems, &state)?;
                base_settled = true;
            }
            let bytes = r
                .get_ref(2)
                .ctx("replaying entries")?
                .as_blob()
                .ctx_blob()?;
            let entry = feed::decode_stored_entry(bytes)?;
            state.apply(seq, &entry);
            while let Some(s) = pending.last().filter(|s| s.seq.0 == seq).copied() {
                pending.pop();
                let hash = super::hash_from(r.get(1).ctx("replaying entries")?)?;
                if let Some(e) = compare(s, hash, || Ok(state.summary()?))? {
                    problems.push((*s, e));
                }
            }
        }
        if !base_settled {
            settle_base(&mut pending, &mut problems, &state)?;
        }
        for s in pending {
            let head = self.head(origin)?.map_or(0, |h| h.seq.0);
            problems.push((
                *s,
                mismatch(s, SnapshotMismatch::Ahead { seq: s.seq.0, head }),
            ));
        }
        Ok(problems)
    }

    /// [`Store::check_snapshot`] inside the caller's transaction.
    pub(super) fn check_snapshot_here(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let head = self.head(snapshot.origin)?.map_or(0, |h| h.seq.0);
        let mismatch = |m| StoreError::SnapshotMismatch {
            origin: snapshot.origin,
            source: m,
        };
        if snapshot.seq.0 > head {
            return Err(mismatch(SnapshotMismatch::Ahead {
                seq: snapshot.seq.0,
                head,
            }));
        }
        let (at, state) = self.state_root_at(snapshot.origin, snapshot.seq)?;
        match compare(snapshot, at.hash, || Ok(state))? {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every snapshot held for `origin`, by seq.
    pub fn snapshots(&self, origin: NodeId) -> Result<Vec<Snapshot>, StoreError> {
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(Vec::new());
        };
        let mut stmt = self
            .conn
            .prepare_cached("SELECT statement FROM snapshots WHERE origin = ?1 ORDER BY seq")
            .ctx("reading snapshots")?;
        let rows = stmt
            .query_map([row], |r| r.get::<_, Vec<u8>>(0))
            .ctx("reading snapshots")?;
        let mut out = Vec::new();
        for bytes in rows {
            out.push(Snapshot::from_bytes(&bytes.ctx("reading snapshots")?)?);
        }
        Ok(out)
    }

    /// Applies a retention policy to `origin`'s snapshots: removes every one it does not keep
    /// (see [`crate::retention`]), in one transaction. Returns how many were removed.
    pub fn prune_snapshots(
        &mut self,
        origin: NodeId,
        policy: crate::retention::Policy,
    ) -> Result<usize, StoreError> {
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(0);
        };
        let snapshots = self.snapshots(origin)?;
        let times: Vec<u64> = snapshots.iter().map(|s| s.ts).collect();
        let mut keep = crate::retention::keep(&times, policy);
        // The snapshot at the compacted base stays whatever the policy says: the entries below
        // it are checked against it, and new holders start from it. A later compaction moves
        // the base, and it goes then.
        if let Some(base) = self.base(origin)? {
            keep.extend(snapshots.iter().position(|s| s.seq == base.seq));
        }
        let tx = self.conn.transaction().ctx("starting a prune")?;
        let mut removed = 0;
        for (i, s) in snapshots.iter().enumerate() {
            if keep.contains(&i) {
                continue;
            }
            for table in ["snapshots", "snapshot_holders"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE origin = ?1 AND seq = ?2"),
                    (row, s.seq.0 as i64),
                )
                .ctx("pruning snapshots")?;
            }
            removed += 1;
        }
        tx.commit().ctx("committing a prune")?;
        Ok(removed)
    }

    /// Records that `holder` accepted the snapshot of `origin` at `seq`.
    pub fn record_snapshot_holder(
        &mut self,
        origin: NodeId,
        seq: Seq,
        holder: NodeId,
    ) -> Result<(), StoreError> {
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(());
        };
        self.conn
            .execute(
                "INSERT OR IGNORE INTO snapshot_holders (origin, seq, holder, at) VALUES (?1, ?2, ?3, ?4)",
                (row, seq.0 as i64, holder.as_bytes().as_slice(), now_ms() as i64),
            )
            .ctx("recording a snapshot holder")
            .map(drop)
    }

    /// Holders known to have the snapshot of `origin` at `seq`.
    pub fn snapshot_holders(&self, origin: NodeId, seq: Seq) -> Result<Vec<NodeId>, StoreError> {
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(Vec::new());
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT holder FROM snapshot_holders WHERE origin = ?1 AND seq = ?2 ORDER BY holder",
            )
            .ctx("reading snapshot holders")?;
        let rows = stmt
            .query_map((row, seq.0 as i64), |r| r.get::<_, Vec<u8>>(0))
            .ctx("reading snapshot holders")?;
        let mut out = Vec::new();
        for id in rows {
            out.push(super::read::node_id_from(
                id.ctx("reading snapshot holders")?,
            )?);
        }
        Ok(out)
    }
}

pub(super) fn insert(
    tx: &rusqlite::Transaction<'_>,
    snapshot: &Snapshot,
) -> Result<(), StoreError> {
    let origin: i64 = tx
        .query_row(
            "SELECT id FROM origins WHERE node_id = ?1",
            [snapshot.origin.as_bytes().as_slice()],
            |r| r.get(0),
        )
        .optional()
        .ctx("reading an origin")?
        .ok_or(StoreError::Feed(FeedError::Malformed(
            "a snapshot of an origin not held",
        )))?;
    tx.execute(
        "INSERT OR IGNORE INTO snapshots (origin, seq, statement, received_at) VALUES (?1, ?2, ?3, ?4)",
        (origin, snapshot.seq.0 as i64, snapshot.to_bytes(), now_ms() as i64),
    )
    .ctx("storing a snapshot")
    .map(drop)
}

/// What is wrong with `s` against the state at its seq, whose entry has hash `hash` and whose
/// summary `summary` computes (only when the hash agrees), as a [`StoreError::SnapshotMismatch`].
pub(super) fn compare(
    s: &Snapshot,
    hash: crate::feed::EntryHash,
    summary: impl FnOnce() -> Result<StateSummary, StoreError>,
) -> Result<Option<StoreError>, StoreError> {
    let seq = s.seq.0;
    let source = if hash != s.head_hash {
        SnapshotMismatch::OtherChain { seq }
    } else {
        let got = summary()?;
        let what = if got.root != s.state_root {
            "a state root"
        } else if got.objects != s.objects {
            "an object count"
        } else if got.bytes != s.bytes {
            "a size"
        } else {
            return Ok(None);
        };
        SnapshotMismatch::State { seq, what }
    };
    Ok(Some(StoreError::SnapshotMismatch {
        origin: s.origin,
        source,
    }))
}
