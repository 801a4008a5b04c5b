//! What other nodes hold of a feed: the receipts they signed and the heads they served. This is
//! how a node notices a holder that rolled back or withholds what it acknowledged.
//!
//! Receipts arrive three ways: in answer to a push, from a node that pulled (its own, for what
//! it just stored), and relayed by the nodes between a holder and the origin (receipts of
//! holders this node may never talk to). Whoever hands one over, it is kept only if its holder
//! signed it and it names the entry held here at its seq ([`Store::record_foreign_receipt`]).
//! A relayed receipt proves that its holder's key signed it, not that the holder is a separate
//! machine: anyone can mint keys. So only holders the configuration names count toward
//! durability ([`Store::durable_seq`]); the others are shown, and at most
//! [`MAX_UNLISTED_HOLDERS`] of them are kept per origin.

use rusqlite::OptionalExtension;

use super::{Context, Store, StoreError, hash_from, now_ms};
use crate::feed::{EntryHash, Receipt, Seq};
use crate::identity::NodeId;

/// What one holder is known to hold of one origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderInfo {
    /// The holder.
    pub holder: NodeId,
    /// The highest seq it signed a receipt for (0: none).
    pub acked_seq: u64,
    /// The hash that receipt names.
    pub acked_hash: Option<EntryHash>,
    /// When it signed that receipt (ms since the epoch).
    pub acked_at: Option<u64>,
    /// The head it served when last asked.
    pub served_seq: Option<u64>,
    /// The highest head it ever served.
    pub served_max: u64,
    /// When it was last asked (ms).
    pub served_at: Option<u64>,
    /// The last time it served less than it had acknowledged or served before.
    pub last_rollback: Option<Rollback>,
    /// What it said it held when it last pulled the feed from this node (the `after` of its
    /// signed request for entries), if it ever did.
    pub pulled_seq: Option<u64>,
    /// When that was (ms).
    pub pulled_at: Option<u64>,
}

/// A holder seen serving less than before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollback {
    /// When (ms since the epoch).
    pub at: u64,
    /// The head it served.
    pub served_seq: u64,
    /// What it had acknowledged or served before.
    pub expected_seq: u64,
}

impl HolderInfo {
    /// Whether it still serves less than it acknowledged or served before (rolled back or
    /// withholding, and not healed by a later push).
    pub fn behind(&self) -> bool {
        self.served_seq
            .is_some_and(|s| s < self.acked_seq.max(self.served_max))
    }

    /// What it can be counted on to hold: what it acknowledged, or what it last served when
    /// that is less and it was found behind.
    pub fn holds(&self) -> u64 {
        match self.served_seq {
            Some(served) if self.behind() => served.min(self.acked_seq),
            _ => self.acked_seq,
        }
    }
}

/// Most holders per origin that the configuration does not name whose receipts are kept: a
/// relay could mint keys and hand over receipts of as many made-up holders as it likes.
pub const MAX_UNLISTED_HOLDERS: usize = 64;

/// What became of a receipt another node handed over ([`Store::record_foreign_receipt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptCheck {
    /// Kept: it acknowledges more than what was held from its holder.
    Recorded,
    /// Valid, but no newer than what was held from its holder (a receipt sent again).
    Unchanged,
    /// Not kept, with why.
    Refused(String),
}

impl Store {
    /// Records a receipt another node handed over (not one this node asked for by pushing):
    /// kept only if its holder's signature checks, its holder is not this node, and it names
    /// the entry held here at its seq. A seq not held here is taken on the signature alone,
    /// except on this node's own feed, where a receipt beyond the head is refused. A holder
    /// not in `listed` (the configured peers) is kept only while fewer than
    /// [`MAX_UNLISTED_HOLDERS`] such holders are. Idempotent.
    pub fn record_foreign_receipt(
        &mut self,
        receipt: &Receipt,
        listed: &[NodeId],
    ) -> Result<ReceiptCheck, StoreError> {
        let refused = |why: &str| Ok(ReceiptCheck::Refused(why.to_owned()));
        if receipt.verify().is_err() {
            return refused("its signature does not check");
        }
        if receipt.seq.0 == 0 || receipt.seq.0 > crate::feed::MAX_SEQ {
            return refused("its seq is out of range");
        }
        if receipt.holder == self.node_id()? {
            return refused("it is signed by this node");
        }
        let origin = receipt.origin;
        match self.entry_hash(origin, receipt.seq)? {
            Some(held) if held != receipt.hash => {
                return refused("it names another entry than the one held at its seq");
            }
            Some(_) => {}
            None => {
                let head = self.head(origin)?.map_or(0, |h| h.seq.0);
                let base = self.base(origin)?;
                if base.is_some_and(|b| b.seq == receipt.seq && b.hash != receipt.hash) {
                    return refused("it names another entry than the one held at its seq");
                }
                if receipt.seq.0 > head && self.is_own(origin)? {
                    return refused("it acknowledges more than this origin wrote");
                }
            }
        }
        if !listed.contains(&receipt.holder) {
            let holders = self.holders(origin)?;
            let unlisted = holders
                .iter()
                .filter(|h| h.acked_at.is_some() && !listed.contains(&h.holder))
                .count();
            if unlisted >= MAX_UNLISTED_HOLDERS
                && !holders.iter().any(|h| h.holder == receipt.holder)
            {
                return refused("too many holders not configured here are known already");
            }
        }
        Ok(if self.record_receipt(receipt)? {
            ReceiptCheck::Recorded
        } else {
            ReceiptCheck::Unchanged
        })
    }

    /// Whether `origin` is this node's own feed.
    fn is_own(&self, origin: NodeId) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT is_self FROM origins WHERE node_id = ?1")
            .and_then(|mut s| {
                s.query_row([origin.as_bytes().as_slice()], |r| r.get::<_, bool>(0))
                    .optional()
            })
            .ctx("reading an origin")?
            .unwrap_or(false))
    }

    /// Records a receipt (its signature checked first) if it acknowledges more than the one held
    /// from the same holder. Returns whether it was newer.
    pub fn record_receipt(&mut self, receipt: &Receipt) -> Result<bool, StoreError> {
        receipt.verify()?;
        let tx = self.conn.transaction().ctx("starting a receipt write")?;
        let origin = origin_id(&tx, receipt.origin)?;
        let changed = tx
            .execute(
                "INSERT INTO holders (origin, holder, acked_seq, acked_hash, acked_ts, receipt_sig)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (origin, holder) DO UPDATE SET
                   acked_seq = excluded.acked_seq, acked_hash = excluded.acked_hash,
                   acked_ts = excluded.acked_ts, receipt_sig = excluded.receipt_sig,
                   served_seq = max(coalesce(holders.served_seq, 0), excluded.acked_seq),
                   served_max = max(holders.served_max, excluded.acked_seq)
                 WHERE excluded.acked_seq > holders.acked_seq
                    OR (excluded.acked_seq = holders.acked_seq AND excluded.acked_ts > holders.acked_ts)",
                (
                    origin,
                    receipt.holder.as_bytes().as_slice(),
                    receipt.seq.0 as i64,
                    &receipt.hash.0[..],
                    receipt.ts as i64,
                    &receipt.signature[..],
                ),
            )
            .ctx("storing a receipt")?;
        tx.commit().ctx("committing a receipt")?;
        Ok(changed > 0)
    }

    /// Records that `holder` asked for `origin`'s entries after `seq` just now, in a request it
    /// signed: it says it holds the feed up to there. The latest request counts, even if it is
    /// lower than an earlier one (a holder that lost its copy pulls again from the start).
    pub fn record_pulled(
        &mut self,
        origin: NodeId,
        holder: NodeId,
        seq: Seq,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction().ctx("starting a holder write")?;
        let row = origin_id(&tx, origin)?;
        tx.execute(
            "INSERT INTO holders (origin, holder, pulled_seq, pulled_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (origin, holder) DO UPDATE SET
               pulled_seq = excluded.pulled_seq, pulled_at = excluded.pulled_at",
            (
                row,
                holder.as_bytes().as_slice(),
                seq.0 as i64,
                now_ms() as i64,
            ),
        )
        .ctx("storing a pulled position")?;
        tx.commit().ctx("committing a pulled position")?;
        Ok(())
    }

    /// Records the head `holder` served for `origin` just now. Less than it acknowledged or
    /// served before is recorded as a rollback. Returns the holder's record afterwards, whose
    /// [`HolderInfo::behind`] says whether this is less than before.
    pub fn record_served(
        &mut self,
        origin: NodeId,
        holder: NodeId,
        seq: Seq,
    ) -> Result<HolderInfo, StoreError> {
        let tx = self.conn.transaction().ctx("starting a holder write")?;
        let row = origin_id(&tx, origin)?;
        tx.execute(
            "INSERT INTO holders (origin, holder, served_seq, served_max, served_at)
             VALUES (?1, ?2, ?3, ?3, ?4)
             ON CONFLICT (origin, holder) DO UPDATE SET
               incident_at = CASE WHEN excluded.served_seq < max(holders.acked_seq, holders.served_max)
                             THEN excluded.served_at ELSE holders.incident_at END,
               incident_served = CASE WHEN excluded.served_seq < max(holders.acked_seq, holders.served_max)
                             THEN excluded.served_seq ELSE holders.incident_served END,
               incident_expected = CASE WHEN excluded.served_seq < max(holders.acked_seq, holders.served_max)
                             THEN max(holders.acked_seq, holders.served_max) ELSE holders.incident_expected END,
               served_seq = excluded.served_seq,
               served_max = max(holders.served_max, excluded.served_seq),
               served_at = excluded.served_at",
            (
                row,
                holder.as_bytes().as_slice(),
                seq.0 as i64,
                now_ms() as i64,
            ),
        )
        .ctx("storing a served head")?;
        tx.commit().ctx("committing a served head")?;
        self.holders(origin)?
            .into_iter()
            .find(|h| h.holder == holder)
            .ok_or(StoreError::Sqlite {
                context: "reading a holder",
                source: super::SqlError::internal("the holder row is missing"),
            })
    }

    /// Every holder known for `origin`, by node id.
    pub fn holders(&self, origin: NodeId) -> Result<Vec<HolderInfo>, StoreError> {
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(Vec::new());
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT holder, acked_seq, acked_hash, acked_ts, served_seq, served_max, served_at,
                        incident_at, incident_served, incident_expected, pulled_seq, pulled_at
                 FROM holders WHERE origin = ?1 ORDER BY holder",
            )
            .ctx("reading holders")?;
        let rows = stmt
            .query_map([row], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<Vec<u8>>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    (
                        r.get::<_, Option<i64>>(7)?,
                        r.get::<_, Option<i64>>(8)?,
                        r.get::<_, Option<i64>>(9)?,
                    ),
                    (r.get::<_, Option<i64>>(10)?, r.get::<_, Option<i64>>(11)?),
                ))
            })
            .ctx("reading holders")?;
        let mut out = Vec::new();
        for row in rows {
            let (holder, acked, hash, ts, served, max, at, incident, (pulled, pulled_at)) =
                row.ctx("reading holders")?;
            out.push(HolderInfo {
                holder: super::read::node_id_from(holder)?,
                acked_seq: acked as u64,
                acked_hash: hash.map(hash_from).transpose()?,
                acked_at: ts.map(|t| t as u64),
                served_seq: served.map(|s| s as u64),
                served_max: max as u64,
                served_at: at.map(|t| t as u64),
                last_rollback: match incident {
                    (Some(at), Some(served), Some(expected)) => Some(Rollback {
                        at: at as u64,
                        served_seq: served as u64,
                        expected_seq: expected as u64,
                    }),
                    _ => None,
                },
                pulled_seq: pulled.map(|s| s as u64),
                pulled_at: pulled_at.map(|t| t as u64),
            });
        }
        Ok(out)
    }

    /// The newest `limit` receipts held for `origin`, newest first, leaving out the holders in
    /// `except`: what this node relays of other holders.
    pub fn latest_receipts(
        &self,
        origin: NodeId,
        limit: usize,
        except: &[NodeId],
    ) -> Result<Vec<Receipt>, StoreError> {
        let mut receipts = self.receipts(origin)?;
        receipts.retain(|r| !except.contains(&r.holder));
        receipts.sort_by_key(|r| std::cmp::Reverse(r.ts));
        receipts.truncate(limit);
        Ok(receipts)
    }

    /// The receipts held for `origin` (the latest of each holder), as signed.
    pub fn receipts(&self, origin: NodeId) -> Result<Vec<Receipt>, StoreError> {
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(Vec::new());
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT holder, acked_seq, acked_hash, acked_ts, receipt_sig FROM holders
                 WHERE origin = ?1 AND receipt_sig IS NOT NULL ORDER BY holder",
            )
            .ctx("reading receipts")?;
        let rows = stmt
            .query_map([row], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            })
            .ctx("reading receipts")?;
        let mut out = Vec::new();
        for r in rows {
            let (holder, seq, hash, ts, sig) = r.ctx("reading receipts")?;
            out.push(Receipt {
                holder: super::read::node_id_from(holder)?,
                origin,
                seq: Seq(seq as u64),
                hash: hash_from(hash)?,
                ts: ts as u64,
                signature: sig.try_into().map_err(|_| {
                    StoreError::Feed(crate::feed::FeedError::Malformed(
                        "stored signature is not 64 bytes",
                    ))
                })?,
            });
        }
        Ok(out)
    }

    /// The highest seq of `origin` that at least `k` of the holders in `counted` (the
    /// configured peers) acknowledged (0 if fewer hold it). Holders known only from relayed
    /// receipts do not count: their keys prove no separate copy (see the module docs).
    pub fn durable_seq(
        &self,
        origin: NodeId,
        k: u32,
        counted: &[NodeId],
    ) -> Result<u64, StoreError> {
        // A holder seen serving less than it acknowledged counts for what it served.
        let mut acked: Vec<u64> = self
            .holders(origin)?
            .iter()
            .filter(|h| counted.contains(&h.holder))
            .map(HolderInfo::holds)
            .collect();
        acked.sort_unstable_by(|a, b| b.cmp(a));
        Ok(acked.get(k.max(1) as usize - 1).copied().unwrap_or(0))
    }

    /// Total bytes of entries stored for these origins.
    pub fn bytes_of(&self, origins: &[NodeId]) -> Result<u64, StoreError> {
        let mut total = 0;
        for origin in origins {
            let bytes: Option<i64> = self
                .conn
                .prepare_cached("SELECT bytes FROM origins WHERE node_id = ?1")
                .and_then(|mut s| {
                    s.query_row([origin.as_bytes().as_slice()], |r| r.get(0))
                        .optional()
                })
                .ctx("reading feed sizes")?;
            total += bytes.unwrap_or(0) as u64;
        }
        Ok(total)
    }
}

/// The row id of `origin`, registering it if needed.
fn origin_id(tx: &rusqlite::Transaction<'_>, origin: NodeId) -> Result<i64, StoreError> {
    tx.execute(
        "INSERT OR IGNORE INTO origins (node_id) VALUES (?1)",
        [origin.as_bytes().as_slice()],
    )
    .ctx("registering an origin")?;
    tx.query_row(
        "SELECT id FROM origins WHERE node_id = ?1",
        [origin.as_bytes().as_slice()],
        |r| r.get(0),
    )
    .ctx("reading an origin")
}
