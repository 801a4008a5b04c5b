//! Full re-verification of what the store holds: every entry's bytes against its recorded hash,
//! every chain link, every checkpoint signature against the chain, the head, and the
//! materialized state against a replay of the feed. Runs in one read transaction, so it sees a
//! consistent store even beside a running writer.

use std::collections::HashMap;

use super::{Context, SEQ_BITS, Store, StoreError, entry_key};
use crate::feed::{self, EntryHash, Op, Seq};
use crate::identity::NodeId;

thread_local! {
    /// The key that picks a sample: random per process.
    static SAMPLE_KEY: [u8; 32] = {
        let mut key = [0u8; 32];
        let _ = getrandom::fill(&mut key);
        key
    };
}

/// One thing that failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyProblem {
    /// The origin concerned.
    pub origin: NodeId,
    /// The seq concerned, when there is one.
    pub seq: Option<Seq>,
    /// What failed.
    pub what: String,
}

impl std::fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "origin {} seq {}: {}", self.origin, seq, self.what),
            None => write!(f, "origin {}: {}", self.origin, self.what),
        }
    }
}

/// What a verification pass checked and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries re-hashed and re-linked.
    pub entries: u64,
    /// Checkpoint signatures checked.
    pub checkpoints: u64,
    /// Entries whose bytes were re-hashed (all of them, unless sampling).
    pub rehashed: u64,
    /// Snapshots checked (signature, and state root recomputed from the entries).
    pub snapshots: u64,
    /// Receipts whose signatures were checked.
    pub receipts: u64,
    /// Everything that failed; empty means the store is sound.
    pub problems: Vec<VerifyProblem>,
}

impl Store {
    /// SQLite's own check of the database file: every page, b-tree and index (`PRAGMA
    /// integrity_check`), or the cheaper `quick_check` (no index contents) when not `full`.
    /// The problems it names, none when the file is sound. A read-only open checks nothing, so
    /// this is what finds a damaged page before the entries on it are needed.
    pub fn check_file(&self, full: bool) -> Result<Vec<String>, StoreError> {
        let pragma = if full {
            "PRAGMA integrity_check"
        } else {
            "PRAGMA quick_check"
        };
        let mut stmt = self
            .conn
            .prepare(pragma)
            .ctx("checking the database file")?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .ctx("checking the database file")?;
        let mut problems = Vec::new();
        for row in rows {
            let row = row.ctx("checking the database file")?;
            if row != "ok" {
                problems.push(row);
            }
        }
        Ok(problems)
    }

    /// Verifies everything held for `origin`. Problems are reported, not returned as errors;
    /// an error means the store could not be read at all.
    pub fn verify_origin(&self, origin: NodeId) -> Result<VerifyReport, StoreError> {
        self.verify_origin_sampled(origin, None)
    }

    /// [`Store::verify_origin`], re-hashing only about `sample` percent of the entries (picked
    /// at random) when given. Every chain link is still checked, through the recorded hashes,
    /// and every checkpoint, receipt and snapshot; the materialized state is only compared with
    /// a full replay when every entry is decoded (no sampling).
    pub fn verify_origin_sampled(
        &self,
        origin: NodeId,
        sample: Option<f64>,
    ) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let sampled = |seq: u64| match sample {
            None => true,
            Some(p) => {
                // A keyed hash of the seq: a different sample at every run.
                let x = blake3::keyed_hash(&SAMPLE_KEY.with(|k| *k), &seq.to_be_bytes());
                (u64::from_be_bytes(x.as_bytes()[..8].try_into().unwrap()) as f64)
                    < p / 100.0 * u64::MAX as f64
            }
        };
        // One snapshot of the database for every query below (rolled back on drop).
        let _snapshot = self
            .conn
            .unchecked_transaction()
            .ctx("starting a read transaction")?;
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(report);
        };
        let mut problem = |seq: Option<u64>, what: String| {
            report.problems.push(VerifyProblem {
                origin,
                seq: seq.map(Seq),
                what,
            })
        };

        // Entries: hash, encoding, seq continuity, chain. At or below a compacted base, the
        // kept entries are checked one by one here and as a whole against the base's snapshot
        // (with the snapshots below); the chain starts after the base, from its hash.
        let base = self.base(origin)?;
        let base_seq = base.map_or(0, |b| b.seq.0);
        let snapshots = self.snapshots(origin)?;
        if let Some(b) = base
            && !snapshots.iter().any(|s| s.seq == b.seq)
        {
            problem(
                Some(b.seq.0),
                "the compacted base has no snapshot to check it against".into(),
            );
        }
        // Hashes of the entries after the base, by seq - base - 1.
        let mut hashes: Vec<EntryHash> = Vec::new();
        let mut latest: HashMap<String, (u64, Op)> = HashMap::new();
        {
            let mut stmt = self
                .conn
                .prepare("SELECT key, hash, bytes FROM entries WHERE key > ?1 AND key <= ?2 ORDER BY key")
                .ctx("reading entries")?;
            let mut rows = stmt
                .query((entry_key(row, 0), entry_key(row, feed::MAX_SEQ)))
                .ctx("reading entries")?;
            let mut prev = base.map_or(EntryHash::genesis(&origin), |b| b.hash);
            while let Some(r) = rows.next().ctx("reading entries")? {
                let seq =
                    (r.get::<_, i64>(0).ctx("reading entries")? & ((1 << SEQ_BITS) - 1)) as u64;
                let recorded: Vec<u8> = r.get(1).ctx("reading entries")?;
                let bytes = r
                    .get_ref(2)
                    .ctx("reading entries")?
                    .as_blob()
                    .unwrap_or_default();
                // At or below the base, no chain: no continuity, no links, nothing to record.
                let chained = seq > base_seq;
                if chained {
                    let expected = base_seq + hashes.len() as u64 + 1;
                    if seq != expected {
                        problem(
                            Some(expected),
                            format!("entry missing (next stored is seq {seq})"),
                        );
                        break;
                    }
                }
                let Ok(recorded) = <[u8; 32]>::try_from(recorded.as_slice()).map(EntryHash) else {
                    problem(Some(seq), "recorded hash is not 32 bytes".into());
                    break;
                };
                report.entries += 1;
                let hash = if sampled(seq) {
                    report.rehashed += 1;
                    let hash = EntryHash::of(bytes);
                    if recorded != hash {
                        problem(
                            Some(seq),
                            "entry bytes do not match their recorded hash".into(),
                        );
                    }
                    match feed::decode_entry(bytes) {
                        Ok(entry) => {
                            if entry.seq.0 != seq {
                                problem(Some(seq), format!("entry says seq {}", entry.seq));
                            }
                            if chained && entry.prev != prev {
                                problem(
                                    Some(seq),
                                    "prev does not match the previous entry's hash".into(),
                                );
                            }
                            latest.insert(entry.path.to_owned(), (seq, entry.op));
                        }
                        Err(e) => problem(Some(seq), format!("entry does not decode: {e}")),
                    }
                    hash
                } else {
                    // Not re-hashed: the link to the previous entry, through recorded hashes.
                    if chained && bytes.get(9..41) != Some(&prev.0[..]) {
                        problem(
                            Some(seq),
                            "prev does not match the previous entry's hash".into(),
                        );
                    }
                    recorded
                };
                if chained {
                    prev = hash;
                    hashes.push(hash);
                }
            }
        }

        // Checkpoints: signature, and agreement with the chain.
        let checkpoints = self.checkpoints(origin)?;
        for cp in &checkpoints {
            report.checkpoints += 1;
            if let Err(e) = cp.verify() {
                problem(Some(cp.seq.0), e.to_string());
            }
            let at = if cp.seq.0 == base_seq {
                base.map(|b| b.hash)
            } else {
                cp.seq
                    .0
                    .checked_sub(base_seq + 1)
                    .and_then(|i| hashes.get(i as usize).copied())
            };
            match at.as_ref() {
                Some(h) if *h == cp.hash => {}
                Some(_) => problem(
                    Some(cp.seq.0),
                    "checkpoint hash differs from the chain".into(),
                ),
                None => problem(
                    Some(cp.seq.0),
                    "checkpoint beyond the stored entries".into(),
                ),
            }
        }

        // Head: the last entry, and covered by a checkpoint.
        let head = self.head(origin)?;
        let last = match hashes.last() {
            Some(h) => Some((base_seq + hashes.len() as u64, *h)),
            None => base.map(|b| (b.seq.0, b.hash)),
        };
        if head.map(|h| (h.seq.0, h.hash)) != last {
            problem(
                None,
                format!("recorded head {head:?} is not the last stored entry"),
            );
        }
        // A head at the base is covered by the base's snapshot instead.
        if let Some((seq, _)) = last
            && seq > base_seq
            && checkpoints.last().map(|c| c.seq.0) != Some(seq)
        {
            problem(Some(seq), "head is not covered by a checkpoint".into());
        }

        // Entries the daemon found damaged and still awaits a good copy of (a sampled run may
        // not re-hash them).
        for d in self.damaged(origin)? {
            problem(
                Some(d.seq.0),
                format!(
                    "found damaged ({}) and not yet replaced by a good copy from a peer",
                    d.detail
                ),
            );
        }

        // Receipts holders signed for this origin.
        for receipt in self.receipts(origin)? {
            report.receipts += 1;
            if let Err(e) = receipt.verify() {
                problem(
                    Some(receipt.seq.0),
                    format!("receipt of {}: {e}", receipt.holder),
                );
            }
        }

        // Snapshots: signature, and the state their entries give (one replay for all).
        for snapshot in &snapshots {
            report.snapshots += 1;
            if let Err(e) = snapshot.verify() {
                problem(
                    Some(snapshot.seq.0),
                    format!("snapshot {}: {e}", snapshot.id()),
                );
            }
        }
        for (snapshot, e) in self.check_snapshots_in_one_pass(origin, &snapshots)? {
            problem(
                Some(snapshot.seq.0),
                format!("snapshot {}: {e}", snapshot.id()),
            );
        }

        if sample.is_some() {
            return Ok(report);
        }
        // Materialized state: exactly the puts that no later entry replaced or deleted.
        let mut stmt = self
            .conn
            .prepare("SELECT path, seq FROM objects WHERE origin = ?1")
            .ctx("reading objects")?;
        let rows = stmt
            .query_map([row], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .ctx("reading objects")?;
        let mut live = 0usize;
        for r in rows {
            let (path, seq) = r.ctx("reading objects")?;
            live += 1;
            if latest.get(&path) != Some(&(seq as u64, Op::Put)) {
                problem(
                    Some(seq as u64),
                    format!("state for {path} does not match the feed"),
                );
            }
        }
        let expected_live = latest.values().filter(|(_, op)| *op == Op::Put).count();
        if live != expected_live {
            problem(
                None,
                format!("state holds {live} objects, the feed gives {expected_live}"),
            );
        }
        Ok(report)
    }
}
