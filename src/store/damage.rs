//! Entries damaged on disk: found when they are read to be served, kept out of every page, and
//! replaced by a good copy from a peer.
//!
//! A bit flipped on the disk, or a database file edited by hand, leaves an entry whose bytes no
//! longer hash to the recorded hash, or no longer chain to the next entry or to the checkpoint
//! the page ends at. Served, such a page fails every reader's verification, and every reader
//! stays stuck behind it. So every page is checked as it is read (one BLAKE3 per entry, about
//! 2 GB/s, and the checkpoint's signature): the check walks back from the signed checkpoint,
//! so a damaged entry is told apart from the intact ones around it. The first damaged entry
//! found is an error ([`StoreError::EntryDamaged`]); whoever handles it records it here
//! ([`Store::mark_damaged`]) and the entry stays out of pages until it is repaired.
//!
//! Repair is the ordinary accept path: a verified page from any peer that covers a damaged
//! entry replaces it in the transaction that accepts the page, when the chain held here
//! confirms it is the same entry (an intact entry after it that the page matches, or the
//! checkpoint or head held at its seq). A page that disagrees elsewhere is a fork, as ever.

use std::collections::BTreeSet;

use rusqlite::OptionalExtension;

use super::{Context, Store, StoreError, entry_key, now_ms};
use crate::feed::{Checkpoint, EntryHash, Head, Seq, VerifiedBatch};
use crate::identity::NodeId;

/// The schema version that has the `damaged` table (older stores, read-only, have none).
const SINCE_VERSION: i64 = 7;

/// Where an entry's `prev` (the hash of the entry before) lies in its bytes.
const PREV: std::ops::Range<usize> = 9..41;

/// One entry found damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedEntry {
    /// Its seq.
    pub seq: Seq,
    /// When it was found (ms since the epoch).
    pub found_at: u64,
    /// What did not match.
    pub detail: String,
    /// When every peer had been asked and none had a good copy (ms); `None` while one may.
    /// An operator must then restore the entry (from a backup or an archive).
    pub unrepaired_at: Option<u64>,
}

/// Checks the entries of a page about to be served: walking back from `checkpoint` (its
/// signature checked), each entry must hash to what the next one (or the checkpoint) names
/// and to its recorded hash. Returns the damaged entries, lowest first, each with what failed.
/// An entry after a damaged one vouches for nothing, so the one before it is checked against
/// its recorded hash alone.
pub(super) fn check_page(
    entries: &[super::StoredEntry],
    checkpoint: &Checkpoint,
) -> Result<Vec<(Seq, String)>, StoreError> {
    checkpoint.verify()?;
    let mut expected = Some(checkpoint.hash);
    let mut found = Vec::new();
    for e in entries.iter().rev() {
        let hash = EntryHash::of(&e.bytes);
        let what = if hash != e.hash {
            Some("its bytes do not hash to the recorded hash")
        } else if expected.is_some_and(|x| x != hash) {
            Some("it does not chain to the next entry or the checkpoint")
        } else {
            None
        };
        match what {
            Some(what) => {
                found.push((e.seq, what.to_owned()));
                expected = None;
            }
            None => {
                expected = e
                    .bytes
                    .get(PREV)
                    .and_then(|p| <[u8; 32]>::try_from(p).ok())
                    .map(EntryHash);
            }
        }
    }
    found.reverse();
    Ok(found)
}

/// The seqs of `origin` (row id) between `from` and `to` (inclusive) recorded as damaged.
pub(super) fn damaged_between(
    tx: &rusqlite::Transaction<'_>,
    origin: i64,
    from: u64,
    to: u64,
) -> Result<BTreeSet<u64>, StoreError> {
    let mut stmt = tx
        .prepare_cached("SELECT seq FROM damaged WHERE origin = ?1 AND seq >= ?2 AND seq <= ?3")
        .ctx("reading damaged entries")?;
    let rows = stmt
        .query_map((origin, from as i64, to as i64), |r| r.get::<_, i64>(0))
        .ctx("reading damaged entries")?;
    rows.map(|r| r.map(|s| s as u64))
        .collect::<rusqlite::Result<_>>()
        .ctx("reading damaged entries")
}

/// Replaces the damaged entries of `origin` (row id) that `batch` covers and the chain held
/// confirms, inside the accept's transaction. The caller compared every intact entry the batch
/// covers with the one held (they match, or it would be a fork). An entry at `d` is confirmed
/// by an intact entry held after it within the batch (its bytes, which match the batch's,
/// name the hash of `d` through the chain), or by the checkpoint or head held at `d`.
/// Returns how many were replaced.
pub(super) fn repair(
    tx: &rusqlite::Transaction<'_>,
    origin: i64,
    held_head: Option<Head>,
    batch: &VerifiedBatch,
    damaged: &BTreeSet<u64>,
) -> Result<u64, StoreError> {
    let first = batch.first_seq().0;
    let last = batch.checkpoint().seq.0;
    let head_seq = held_head.map_or(0, |h| h.seq.0);
    let mut repaired = 0;
    for &d in damaged.range(first..=last.min(head_seq)) {
        let i = (d - first) as usize;
        let (bytes, hash) = (&batch.entries()[i], batch.hashes()[i]);
        let later_intact = (d + 1..=last.min(head_seq)).any(|s| !damaged.contains(&s));
        let at_head = held_head.is_some_and(|h| h.seq.0 == d && h.hash == hash);
        let checkpoint: Option<Vec<u8>> = tx
            .prepare_cached("SELECT hash FROM checkpoints WHERE origin = ?1 AND seq = ?2")
            .and_then(|mut s| s.query_row((origin, d as i64), |r| r.get(0)).optional())
            .ctx("reading a checkpoint")?;
        let at_checkpoint = checkpoint.is_some_and(|h| h == hash.0);
        if !(later_intact || at_head || at_checkpoint) {
            continue;
        }
        let old_len: Option<i64> = tx
            .prepare_cached("SELECT length(bytes) FROM entries WHERE key = ?1")
            .and_then(|mut s| s.query_row([entry_key(origin, d)], |r| r.get(0)).optional())
            .ctx("reading a damaged entry")?;
        tx.execute(
            "UPDATE entries SET hash = ?2, bytes = ?3 WHERE key = ?1",
            (entry_key(origin, d), &hash.0[..], bytes.as_slice()),
        )
        .ctx("replacing a damaged entry")?;
        tx.execute(
            "UPDATE origins SET bytes = bytes + ?2 WHERE id = ?1",
            (origin, bytes.len() as i64 - old_len.unwrap_or(0)),
        )
        .ctx("replacing a damaged entry")?;
        tx.execute(
            "DELETE FROM damaged WHERE origin = ?1 AND seq = ?2",
            (origin, d as i64),
        )
        .ctx("replacing a damaged entry")?;
        repaired += 1;
    }
    Ok(repaired)
}

impl Store {
    /// Records that `origin`'s entry at `seq` is damaged (see the module docs). Returns whether
    /// it was new: the caller reports a damaged entry once.
    pub fn mark_damaged(
        &mut self,
        origin: NodeId,
        seq: Seq,
        detail: &str,
    ) -> Result<bool, StoreError> {
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(false);
        };
        let added = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO damaged (origin, seq, found_at, detail) VALUES (?1, ?2, ?3, ?4)",
                (row, seq.0 as i64, now_ms() as i64, detail),
            )
            .ctx("recording a damaged entry")?;
        Ok(added > 0)
    }

    /// Records that no peer had a good copy of these damaged entries when asked. Returns the
    /// seqs for which that is new.
    pub fn mark_unrepaired(
        &mut self,
        origin: NodeId,
        seqs: &[Seq],
    ) -> Result<Vec<Seq>, StoreError> {
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(Vec::new());
        };
        let tx = self.conn.transaction().ctx("starting a damage update")?;
        let mut new = Vec::new();
        for seq in seqs {
            let n = tx
                .execute(
                    "UPDATE damaged SET unrepaired_at = ?3
                     WHERE origin = ?1 AND seq = ?2 AND unrepaired_at IS NULL",
                    (row, seq.0 as i64, now_ms() as i64),
                )
                .ctx("recording an unrepaired entry")?;
            if n > 0 {
                new.push(*seq);
            }
        }
        tx.commit().ctx("committing a damage update")?;
        Ok(new)
    }

    /// The damaged entries of `origin` awaiting a good copy, by seq.
    pub fn damaged(&self, origin: NodeId) -> Result<Vec<DamagedEntry>, StoreError> {
        if self.schema_version()? < SINCE_VERSION {
            return Ok(Vec::new());
        }
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(Vec::new());
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, found_at, detail, unrepaired_at FROM damaged WHERE origin = ?1 ORDER BY seq",
            )
            .ctx("reading damaged entries")?;
        let rows = stmt
            .query_map([row], |r| {
                Ok(DamagedEntry {
                    seq: Seq(r.get::<_, i64>(0)? as u64),
                    found_at: r.get::<_, i64>(1)? as u64,
                    detail: r.get(2)?,
                    unrepaired_at: r.get::<_, Option<i64>>(3)?.map(|t| t as u64),
                })
            })
            .ctx("reading damaged entries")?;
        rows.collect::<rusqlite::Result<_>>()
            .ctx("reading damaged entries")
    }

    /// Every origin with damaged entries awaiting a good copy.
    pub fn damaged_origins(&self) -> Result<Vec<NodeId>, StoreError> {
        if self.schema_version()? < SINCE_VERSION {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT o.node_id FROM damaged d JOIN origins o ON o.id = d.origin",
            )
            .ctx("reading damaged entries")?;
        let rows = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .ctx("reading damaged entries")?;
        let mut out = Vec::new();
        for row in rows {
            out.push(super::read::node_id_from(
                row.ctx("reading damaged entries")?,
            )?);
        }
        Ok(out)
    }

    fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .ctx("reading the schema version")
    }
}
