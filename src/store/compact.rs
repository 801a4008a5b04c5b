//! Compaction: an origin's entries at or below one of its snapshots are dropped, except those
//! that hold the state at that snapshot (live objects and tombstones), and the space goes back
//! to the file system.
//!
//! The snapshot's seq becomes the origin's *base*. Below it the feed is no longer a chain: the
//! kept entries are checked by folding them into the state and comparing its root with the
//! snapshot the origin signed, and the chain is whole again from the base on (the entry after
//! it links to the snapshot's head hash). Replays, restores and state roots at or above the
//! base work as before; anything below it is [`StoreError::Compacted`]. A base is also how a
//! node starts from a snapshot without the history before it (see [`Store::install_base`]).

use std::collections::HashSet;

use rusqlite::OptionalExtension;

use super::{Context, SEQ_BITS, Store, StoreError, apply_to_objects, entry_key, hash_from};
use crate::feed::{self, EntryHash, FeedError, Head, Seq, Snapshot, StateFold};
use crate::identity::NodeId;

/// One page of a base as served: the snapshot, whether more entries follow, the entries.
pub type BasePage = (Snapshot, bool, Vec<Vec<u8>>);

/// A staging token that was not begun (or was discarded).
fn no_such_staging() -> StoreError {
    StoreError::Sqlite {
        context: "staging a base: no such staging",
        source: super::SqlError::internal("no such staging"),
    }
}

/// The base staging file in the data directory.
pub(super) const STAGING_FILE: &str = "base-staging.db";

/// Where the entries of a base come from: calls its second argument on each, in seq order.
type BaseEntries<'a> = dyn Fn(
        &rusqlite::Connection,
        &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>
    + 'a;

/// What a compaction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Compacted {
    /// The origin's base afterwards.
    pub base: u64,
    /// Entries dropped.
    pub entries: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Store {
    /// The compacted base of `origin`: its seq and the hash of the entry at that seq.
    pub fn base(&self, origin: NodeId) -> Result<Option<Head>, StoreError> {
        let found: Option<(i64, Option<Vec<u8>>)> = self
            .conn
            .prepare_cached("SELECT base_seq, base_hash FROM origins WHERE node_id = ?1")
            .and_then(|mut s| {
                s.query_row([origin.as_bytes().as_slice()], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
            })
            .ctx("reading a base")?;
        match found {
            Some((seq, Some(hash))) if seq > 0 => Ok(Some(Head {
                seq: Seq(seq as u64),
                hash: hash_from(hash)?,
            })),
            _ => Ok(None),
        }
    }

    /// Fails with [`StoreError::Compacted`] when `seq` is below the base of `origin`.
    pub(super) fn check_not_below_base(&self, origin: NodeId, seq: u64) -> Result<(), StoreError> {
        match self.base(origin)? {
            Some(base) if seq < base.seq.0 => Err(StoreError::Compacted {
                origin,
                base: base.seq,
                asked: Seq(seq),
            }),
            _ => Ok(()),
        }
    }

    /// Compacts `origin` at its snapshot at `at`, which must be held: the state there is
    /// replayed and checked against the snapshot first, then every entry at or below `at`
    /// that holds none of it is dropped, with the checkpoints and snapshots below `at`. One
    /// transaction; a base already at or above `at` makes it a no-op. Call
    /// [`Store::reclaim_space`] afterwards to give the space back.
    pub fn compact(&mut self, origin: NodeId, at: Seq) -> Result<Compacted, StoreError> {
        let tx = self
            .conn
            .unchecked_transaction()
            .ctx("starting a compaction")?;
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(Compacted::default());
        };
        let current = self.base(origin)?.map_or(0, |b| b.seq.0);
        if at.0 <= current {
            return Ok(Compacted {
                base: current,
                ..Compacted::default()
            });
        }
        let snapshot = self
            .snapshots(origin)?
            .into_iter()
            .find(|s| s.seq == at)
            .ok_or(StoreError::Feed(FeedError::Malformed(
                "compaction needs a snapshot held at its seq",
            )))?;
        snapshot.verify()?;
        // Verify, then delete: the state kept must be the one the origin signed (one replay
        // gives both the check and what to keep).
        let replay = self.replay(origin, at)?;
        if let Some(e) =
            super::snapshots::compare(&snapshot, replay.hash, || Ok(replay.state.summary()?))?
        {
            return Err(e);
        }
        // The entry at the base stays too: appends read the head's time from it, and it is
        // what the snapshot names.
        let mut keep: HashSet<u64> = replay.state.items().map(|(_, i)| i.seq).collect();
        keep.insert(at.0);
        let mut dropped = Vec::new();
        let mut bytes = 0u64;
        {
            let mut stmt = self
                .conn
                .prepare("SELECT key, length(bytes) FROM entries WHERE key > ?1 AND key <= ?2")
                .ctx("reading entries")?;
            let mut rows = stmt
                .query((entry_key(row, 0), entry_key(row, at.0)))
                .ctx("reading entries")?;
            while let Some(r) = rows.next().ctx("reading entries")? {
                let key: i64 = r.get(0).ctx("reading entries")?;
                if !keep.contains(&((key & ((1 << SEQ_BITS) - 1)) as u64)) {
                    dropped.push(key);
                    bytes += r.get::<_, i64>(1).ctx("reading entries")? as u64;
                }
            }
        }
        {
            let mut delete = self
                .conn
                .prepare("DELETE FROM entries WHERE key = ?1")
                .ctx("compacting entries")?;
            for key in &dropped {
                delete.execute([key]).ctx("compacting entries")?;
            }
        }
        for (table, what) in [
            ("checkpoints", "dropping checkpoints"),
            ("snapshots", "dropping snapshots"),
            ("snapshot_holders", "dropping snapshot holders"),
        ] {
            self.conn
                .execute(
                    &format!("DELETE FROM {table} WHERE origin = ?1 AND seq < ?2"),
                    (row, at.0 as i64),
                )
                .ctx(what)?;
        }
        self.conn
            .execute(
                "UPDATE origins SET base_seq = ?2, base_hash = ?3, bytes = max(bytes - ?4, 0) WHERE id = ?1",
                (row, at.0 as i64, &snapshot.head_hash.0[..], bytes as i64),
            )
            .ctx("moving the base")?;
        // The source paths of a sealed feed that the state no longer holds go too, once
        // every entry is opened (one still to open may need the path of its sealed path).
        if !super::sealed::unread(&self.conn, row, origin)? {
            super::sealed::forget_dropped_paths(&self.conn, row)?;
        }
        tx.commit().ctx("committing a compaction")?;
        Ok(Compacted {
            base: at.0,
            entries: dropped.len() as u64,
            bytes,
        })
    }

    /// Applies a retention policy to `origin`: compacts it at the oldest snapshot the policy
    /// keeps (which drops the snapshots below), then removes the other snapshots it does not
    /// keep, and gives the space back when entries were dropped. Returns the snapshots removed
    /// and what the compaction did.
    pub fn apply_retention(
        &mut self,
        origin: NodeId,
        policy: crate::retention::Policy,
        holders: &crate::retention::Holders,
    ) -> Result<(usize, Compacted), StoreError> {
        let snapshots = self.snapshots(origin)?;
        let before = snapshots.len();
        let times: Vec<u64> = snapshots.iter().map(|s| s.ts).collect();
        let keep = crate::retention::keep(&times, policy);
        // Never past what every holder of the feed is known to hold: a holder that lacks
        // entries must still be able to get them.
        let floor = self.held_by_all(origin, holders)?;
        let compacted = match (0..snapshots.len()).find(|i| keep.contains(i)) {
            Some(oldest) if floor.is_none_or(|(f, _)| snapshots[oldest].seq.0 <= f) => {
                match self.compact(origin, snapshots[oldest].seq) {
                    Ok(done) => done,
                    // Nothing was dropped; the snapshots are still pruned, and `verify` names
                    // what is wrong with the one that did not check.
                    Err(e @ (StoreError::SnapshotMismatch { .. } | StoreError::Feed(_))) => {
                        tracing::warn!(error = %e, "not compacting: the oldest kept snapshot does not check");
                        Compacted::default()
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(oldest) => {
                let (held, holder) = floor.expect("a floor below the snapshot");
                if held == 0 {
                    tracing::warn!(
                        oldest_kept = %snapshots[oldest].seq,
                        %holder,
                        "not compacting: a peer that keeps this feed has not acknowledged or pulled any of it yet (see `tandem status`)"
                    );
                } else {
                    tracing::info!(
                        oldest_kept = %snapshots[oldest].seq,
                        held_by_all = held,
                        %holder,
                        "not compacting yet: a holder has not acknowledged or pulled the entries up to the oldest kept snapshot"
                    );
                }
                Compacted::default()
            }
            None => Compacted::default(),
        };
        self.prune_snapshots(origin, policy)?;
        if compacted.entries > 0 {
            // The compaction stands either way; the space comes back at the next one.
            match self.reclaim_space() {
                Ok((from, to)) => tracing::info!(
                    base = compacted.base,
                    entries = compacted.entries,
                    bytes = compacted.bytes,
                    file_before = from,
                    file_after = to,
                    "compacted the entries below the oldest kept snapshot"
                ),
                Err(e) => tracing::warn!(
                    base = compacted.base,
                    entries = compacted.entries,
                    error = %e,
                    "compacted, but the free space could not be given back (a store created before compaction is rewritten once with VACUUM, which needs about its size free)"
                ),
            }
        }
        Ok((before - self.snapshots(origin)?.len(), compacted))
    }

    /// The highest seq of `origin` that every one of `holders` is known to hold, and the
    /// holder that holds the least: for a push holder, what its receipts acknowledge
    /// (counting, for one found behind, what it last served); for a reader, what it said it
    /// held when it last pulled, and 0 until it has pulled (it may hold part of the feed from
    /// before this node recorded pulls); for a peer that is both, the higher of the two,
    /// unless it was found behind. `None` without holders.
    pub fn held_by_all(
        &self,
        origin: NodeId,
        holders: &crate::retention::Holders,
    ) -> Result<Option<(u64, NodeId)>, StoreError> {
        let known = self.holders(origin)?;
        let mut floor: Option<(u64, NodeId)> = None;
        for id in holders.push.iter().chain(&holders.readers) {
            let info = known.iter().find(|h| h.holder == *id);
            let pushed = holders
                .push
                .contains(id)
                .then(|| info.map_or(0, super::HolderInfo::holds));
            let pulled = holders.readers.contains(id).then(|| match info {
                // What a holder found behind says of itself does not count: what it serves does.
                Some(h) if h.behind() => h.holds(),
                Some(h) => h.pulled_seq.unwrap_or(0),
                None => 0,
            });
            let Some(held) = pushed.max(pulled) else {
                continue;
            };
            if floor.is_none_or(|(f, _)| held < f) {
                floor = Some((held, *id));
            }
        }
        Ok(floor)
    }

    /// Gives the free pages of the database back to the file system. The first call on a
    /// store created without incremental vacuum converts it (a full `VACUUM`, which rewrites
    /// the file once); later calls only truncate. Returns the file size before and after.
    pub fn reclaim_space(&mut self) -> Result<(u64, u64), StoreError> {
        let size = |s: &Store| -> Result<u64, StoreError> {
            let pages: i64 = s
                .conn
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .ctx("reading the page count")?;
            let page: i64 = s
                .conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .ctx("reading the page size")?;
            Ok((pages * page) as u64)
        };
        let before = size(self)?;
        let mode: i64 = self
            .conn
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .ctx("reading auto_vacuum")?;
        if mode != 2 {
            self.conn
                .execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")
                .ctx("converting to incremental vacuum")?;
        } else {
            // Each step of the pragma frees one page: step it to the end.
            let mut stmt = self
                .conn
                .prepare("PRAGMA incremental_vacuum")
                .ctx("reclaiming free pages")?;
            let mut rows = stmt.query([]).ctx("reclaiming free pages")?;
            while rows.next().ctx("reclaiming free pages")?.is_some() {}
        }
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .ctx("checkpointing the log")?;
        Ok((before, size(self)?))
    }

    /// Starts (or moves) `origin` at a base: the snapshot and the entries that hold its state,
    /// checked against it here (the snapshot's signature, then the state root of the entries).
    /// An origin held up to the snapshot's seq or beyond must have the same entry there, and
    /// is left as it is; one held below it is refused ([`StoreError::Gap`]: the entries in
    /// between are in neither). Returns whether the base was installed.
    pub fn install_base(
        &mut self,
        snapshot: &Snapshot,
        entries: &[Vec<u8>],
    ) -> Result<bool, StoreError> {
        self.install_base_from(snapshot, &|_, each| {
            entries.iter().try_for_each(|bytes| each(bytes))
        })
    }

    /// A token for a new base staging, unique in this process (see
    /// [`Store::begin_base_staging`]). Taken before the store is reached, so that whoever
    /// holds it can always discard what it may have staged.
    pub fn staging_token() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts staging a base being fetched, under `token` ([`Store::staging_token`]): its
    /// entries go to a file in the data directory (`base-staging.db`, attached to this
    /// connection while any base is staged), on disk rather than in memory. The file goes
    /// (its space with it) once no base is staged any more; one left by a crash is removed
    /// when the writer opens.
    pub fn begin_base_staging(&mut self, token: u64) -> Result<(), StoreError> {
        if self.staging_dropped.remove(&token) {
            return Err(no_such_staging());
        }
        if self.staging.is_empty() {
            let path = self.path.with_file_name(STAGING_FILE);
            // A leftover, if any: staging starts empty.
            let _ = std::fs::remove_file(&path);
            self.conn
                .execute("ATTACH DATABASE ?1 AS staging", [path.to_string_lossy()])
                .ctx("creating the base staging file")?;
            // A staging file is thrown away after a crash: no journal, no syncs.
            let created = self
                .conn
                .execute_batch(
                    "PRAGMA staging.journal_mode = OFF; PRAGMA staging.synchronous = OFF;
                     CREATE TABLE staging.base (
                         token INTEGER NOT NULL, seq INTEGER NOT NULL, bytes BLOB NOT NULL,
                         PRIMARY KEY (token, seq)
                     ) WITHOUT ROWID;",
                )
                .ctx("creating the base staging file");
            if let Err(e) = created {
                let _ = self.close_staging();
                return Err(e);
            }
        }
        self.staging.insert(token);
        Ok(())
    }

    /// Adds entries (a seq staged twice keeps the last bytes) to the base staged under
    /// `token`.
    pub fn stage_base(&mut self, token: u64, entries: &[Vec<u8>]) -> Result<(), StoreError> {
        if !self.staging.contains(&token) {
            return Err(no_such_staging());
        }
        let tx = self.conn.transaction().ctx("starting to stage a base")?;
        {
            let mut insert = tx
                .prepare(
                    "INSERT OR REPLACE INTO staging.base (token, seq, bytes) VALUES (?1, ?2, ?3)",
                )
                .ctx("staging base entries")?;
            for bytes in entries {
                // Only the layout: everything is validated when the base is installed.
                let seq = feed::decode_stored_entry(bytes)?.seq.0 as i64;
                insert
                    .execute((token as i64, seq, bytes))
                    .ctx("staging base entries")?;
            }
        }
        tx.commit().ctx("committing staged base entries")
    }

    /// [`Store::install_base`] with the entries staged under `token`, which are then
    /// discarded whatever the outcome.
    pub fn install_staged_base(
        &mut self,
        token: u64,
        snapshot: &Snapshot,
    ) -> Result<bool, StoreError> {
        let installed = if self.staging.contains(&token) {
            self.install_base_from(snapshot, &|conn, each| {
                let mut stmt = conn
                    .prepare("SELECT bytes FROM staging.base WHERE token = ?1 ORDER BY seq")
                    .ctx("reading staged base entries")?;
                let mut rows = stmt
                    .query([token as i64])
                    .ctx("reading staged base entries")?;
                while let Some(row) = rows.next().ctx("reading staged base entries")? {
                    let bytes = row
                        .get_ref(0)
                        .and_then(|v| v.as_blob().map_err(Into::into))
                        .ctx("reading staged base entries")?;
                    each(bytes)?;
                }
                Ok(())
            })
        } else {
            Err(no_such_staging())
        };
        if let Err(e) = self.discard_staged_base(token) {
            // The outcome stands; the file goes when the writer next opens.
            tracing::warn!(error = %e, "could not remove a staged base");
        }
        installed
    }

    /// Drops the base staged under `token`, if any; the last one closes the staging file.
    pub fn discard_staged_base(&mut self, token: u64) -> Result<(), StoreError> {
        if !self.staging.remove(&token) {
            self.staging_dropped.insert(token);
            return Ok(());
        }
        if self.staging.is_empty() {
            return self.close_staging();
        }
        self.conn
            .execute("DELETE FROM staging.base WHERE token = ?1", [token as i64])
            .ctx("clearing a staged base")
            .map(drop)
    }

    /// Detaches the staging file and removes it.
    fn close_staging(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("DETACH DATABASE staging")
            .ctx("detaching the base staging file")?;
        let path = self.path.with_file_name(STAGING_FILE);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::NotWritable {
                dir: self.path.with_file_name(""),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// [`Store::install_base`] with the entries from `entries`, which calls its second argument
    /// on each in seq order, and is called twice: to check them, then to store them.
    fn install_base_from(
        &mut self,
        snapshot: &Snapshot,
        entries: &BaseEntries<'_>,
    ) -> Result<bool, StoreError> {
        self.reconsider(snapshot.origin);
        snapshot.verify()?;
        let origin = snapshot.origin;
        let mut fold = StateFold::new();
        // The last entry's bytes, copied into one buffer: only its hash is checked.
        let (mut last, mut count, mut last_bytes) = (0u64, 0usize, Vec::new());
        entries(&self.conn, &mut |bytes| {
            let entry = feed::decode_entry(bytes)?;
            if entry.seq.0 <= last || entry.seq > snapshot.seq {
                return Err(StoreError::Feed(FeedError::Malformed(
                    "base entries are not in increasing seq order at or below the snapshot",
                )));
            }
            last = entry.seq.0;
            count += 1;
            fold.apply(entry.seq.0, &entry);
            last_bytes.clear();
            last_bytes.extend_from_slice(bytes);
            Ok(())
        })?;
        let last_entry = (count > 0).then(|| (last, EntryHash::of(&last_bytes)));
        feed::check_base(snapshot, &fold, count, last_entry).map_err(|what| {
            StoreError::SnapshotMismatch {
                origin,
                source: super::SnapshotMismatch::Base {
                    seq: snapshot.seq.0,
                    what,
                },
            }
        })?;

        let tx = self
            .conn
            .unchecked_transaction()
            .ctx("starting a base install")?;
        if let Some(head) = self.head(origin)?
            && head.seq >= snapshot.seq
        {
            // Below our own base, what we keep is no evidence either way; we need nothing.
            if self.base(origin)?.is_some_and(|b| snapshot.seq < b.seq) {
                return Ok(false);
            }
            let ours = match self.base(origin)? {
                Some(b) if b.seq == snapshot.seq => Some(b.hash),
                _ => self.entry_hash(origin, snapshot.seq)?,
            };
            return match ours {
                Some(h) if h == snapshot.head_hash => Ok(false),
                Some(_) => Err(StoreError::SnapshotMismatch {
                    origin,
                    source: super::SnapshotMismatch::OtherChain {
                        seq: snapshot.seq.0,
                    },
                }),
                // Held beyond, compacted past it: the base adds nothing.
                None => Ok(false),
            };
        }
        // Below it: the entries between are in neither; keep what is held rather than drop it.
        if let Some(head) = self.head(origin)? {
            return Err(StoreError::Gap {
                origin,
                head: head.seq,
                first: Seq(snapshot.seq.0 + 1),
            });
        }
        let frozen: bool = self
            .conn
            .query_row(
                "SELECT frozen_at IS NOT NULL FROM origins WHERE node_id = ?1",
                [origin.as_bytes().as_slice()],
                |r| r.get(0),
            )
            .optional()
            .ctx("reading an origin")?
            .unwrap_or(false);
        if frozen {
            return Err(StoreError::Frozen { origin });
        }
        self.conn
            .execute(
                "INSERT OR IGNORE INTO origins (node_id) VALUES (?1)",
                [origin.as_bytes().as_slice()],
            )
            .ctx("registering an origin")?;
        let row = self.origin_row_id(origin)?.expect("just registered");
        for table in [
            "objects",
            "tombstones",
            "checkpoints",
            "snapshots",
            "snapshot_holders",
        ] {
            self.conn
                .execute(&format!("DELETE FROM {table} WHERE origin = ?1"), [row])
                .ctx("clearing an origin below the base")?;
        }
        self.conn
            .execute(
                "DELETE FROM entries WHERE key > ?1 AND key <= ?2",
                (entry_key(row, 0), entry_key(row, feed::MAX_SEQ)),
            )
            .ctx("clearing an origin below the base")?;
        let mut total = 0u64;
        {
            let mut insert = self
                .conn
                .prepare("INSERT INTO entries (key, hash, bytes) VALUES (?1, ?2, ?3)")
                .ctx("inserting base entries")?;
            entries(&self.conn, &mut |bytes| {
                // Validated by the pass above.
                let entry = feed::decode_stored_entry(bytes)?;
                insert
                    .execute((
                        entry_key(row, entry.seq.0),
                        &EntryHash::of(bytes).0[..],
                        bytes,
                    ))
                    .ctx("inserting base entries")?;
                apply_to_objects(
                    &tx,
                    row,
                    entry.seq,
                    entry.op,
                    entry.path,
                    !entry.body.is_empty(),
                )
                .ctx("updating the object state")?;
                total += bytes.len() as u64;
                Ok(())
            })?;
        }
        self.conn
            .execute(
                "UPDATE origins SET head_seq = ?2, head_hash = ?3, base_seq = ?2, base_hash = ?3, bytes = ?4 WHERE id = ?1",
                (
                    row,
                    snapshot.seq.0 as i64,
                    &snapshot.head_hash.0[..],
                    total as i64,
                ),
            )
            .ctx("setting the base")?;
        super::snapshots::insert(&tx, snapshot)?;
        tx.commit().ctx("committing a base install")?;
        Ok(true)
    }

    /// One page of a base for a peer: the snapshot at `at` (by default the compacted base, or
    /// the latest snapshot held when there is none), and
    /// the entries of its state with seq above `after`, in seq order, as many as fit `budget`
    /// bytes (at least one). Returns `(snapshot, more, entries)`; `None` when no snapshot is
    /// held (or none at `at`).
    pub fn base_page(
        &self,
        origin: NodeId,
        at: Option<Seq>,
        after: u64,
        budget: usize,
    ) -> Result<Option<BasePage>, StoreError> {
        let _view = self
            .conn
            .unchecked_transaction()
            .ctx("starting a base read")?;
        let snapshots = self.snapshots(origin)?;
        // By default the compacted base (its entries are read as they are), else the latest.
        let at = match at {
            Some(seq) => Some(seq),
            None => self.base(origin)?.map(|b| b.seq),
        };
        let snapshot = match at {
            Some(seq) => snapshots.into_iter().find(|s| s.seq == seq),
            None => snapshots.into_iter().last(),
        };
        let Some(snapshot) = snapshot else {
            return Ok(None);
        };
        let row = self.origin_row_id(origin)?.expect("the origin is held");
        let mut seqs: Vec<u64> = if self.base(origin)?.map(|b| b.seq) == Some(snapshot.seq) {
            // At the compacted base, the entries held up to it are exactly its state.
            let mut stmt = self
                .conn
                .prepare_cached("SELECT key FROM entries WHERE key > ?1 AND key <= ?2")
                .ctx("reading base entries")?;
            let rows = stmt
                .query_map(
                    (entry_key(row, after), entry_key(row, snapshot.seq.0)),
                    |r| r.get::<_, i64>(0),
                )
                .ctx("reading base entries")?;
            rows.map(|k| k.map(|k| (k & ((1 << SEQ_BITS) - 1)) as u64))
                .collect::<Result<_, _>>()
                .ctx("reading base entries")?
        } else {
            let replay = self.replay(origin, snapshot.seq)?;
            let mut seqs: Vec<u64> = replay.state.items().map(|(_, i)| i.seq).collect();
            seqs.push(snapshot.seq.0);
            seqs.retain(|s| *s > after);
            seqs
        };
        seqs.sort_unstable();
        seqs.dedup();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT bytes FROM entries WHERE key = ?1")
            .ctx("reading base entries")?;
        let mut out = Vec::new();
        let mut size = 0;
        for seq in &seqs {
            let bytes: Vec<u8> = stmt
                .query_row([entry_key(row, *seq)], |r| r.get(0))
                .ctx("reading base entries")?;
            if !out.is_empty() && size + bytes.len() > budget {
                break;
            }
            size += bytes.len();
            out.push(bytes);
        }
        let more = out.len() < seqs.len();
        Ok(Some((snapshot, more, out)))
    }
}
