//! Federation with one peer: pushing the origins its `push` list names, pulling the ones its
//! `pull` list names, and recovering this node's own feed from it. One call is one pass; the
//! scheduler decides when (a cron time, or continuously: on every change, and by long poll).
//!
//! What a pass guarantees:
//! - **Verify, then write.** A pulled page is verified against its origin's key
//!   ([`crate::feed::verify_batch`]) before the store sees it; the store then checks it links to
//!   the held head in the same transaction that writes it. A corrupt or forged page stores
//!   nothing and fails the pass (the verified pages before it are stored first); the next
//!   pass starts again from the held head. While it catches up, a pull stores the pages it
//!   verified together, up to `PULL_GROUP` (32 MiB) of entries in one transaction
//!   ([`Store::accept_all`]): a feed whose paths come in no order (Kinto's UUID4 record ids,
//!   a sealed feed's hashed paths) then writes each page of its state once per group rather
//!   than once per page.
//! - **Receipts.** Every way an entry reaches a holder ends in a receipt the origin sees. A
//!   pushed page is answered by a receipt signed by the peer, checked and kept (the highest per
//!   origin and holder). After each pull pass, this node signs a receipt for its head and
//!   posts it to the peer it pulled from, with the receipts of other holders it keeps for that
//!   origin, unless the peer was handed exactly these already; a push pass takes the receipts the peer relays in its answer
//!   about the origin. So receipts climb from holder to relay to origin, whichever direction
//!   the entries flowed, and each is checked against the chain held where it lands
//!   ([`Store::record_foreign_receipt`]). A peer too old for receipts by pull is told once and
//!   then left alone.
//! - **Rollback and withholding.** Before pushing, the peer's head for the origin is compared
//!   with what it acknowledged or served before; less is reported (warning, `status`,
//!   `tandem_holder_rollbacks_total`) and the missing entries are pushed again. When pulling, a peer that
//!   serves a lower head than it served before is reported the same way.
//! - **Damage.** An entry of this node's store that no longer hashes or chains (the disk) is
//!   found when a page is read to be pushed or served, recorded once ([`record_damage`]: an
//!   error in the log, `tandem_entries_damaged_total`, `status`), and never sent.
//!   [`Federation::repair`] fetches a good copy from the peer through the ordinary accept
//!   path, which replaces the damaged bytes in the transaction that accepts the page.
//! - **Forks.** Every checkpoint a peer shows is checked against the held chain; a disagreement
//!   is stored as evidence and freezes the origin ([`crate::store::Store::observe_checkpoint`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{error, info, warn};

use super::Changes;
use crate::config::{OriginRef, PeerConfig};
use crate::feed::{FeedError, Receipt, Seq, verify_batch};
use crate::identity::{NodeId, NodeKey};
use crate::peer::{PAGE_ENTRIES, PeerClient, PeerError};
use crate::protocol::wire::{self, OriginDoc};
use crate::store::{Store, StoreError, StoreHandle};
use crate::telemetry;

/// Why a pass with a peer failed. Everything verified and stored before the failure stays.
#[derive(Debug, thiserror::Error)]
pub enum FederateError {
    /// Talking to the peer failed.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The store refused or failed (a fork shows here).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The peer sent entries or a checkpoint that do not verify.
    #[error("peer {peer} sent an invalid page of {origin}: {source}")]
    Invalid {
        /// The peer's name.
        peer: String,
        /// The origin.
        origin: NodeId,
        /// What failed.
        source: FeedError,
    },
    /// The peer claims a head it then does not serve.
    #[error(
        "peer {peer} claims seq {claimed} of {origin} but served only up to seq {served}: withholding"
    )]
    Withholding {
        /// The peer's name.
        peer: String,
        /// The origin.
        origin: NodeId,
        /// The head it claimed.
        claimed: u64,
        /// How far its pages went.
        served: u64,
    },
    /// The peer refuses our pushes for lack of quota.
    #[error("peer {peer} refuses pushes of {origin}: {message}")]
    QuotaExceeded {
        /// The peer's name.
        peer: String,
        /// The origin pushed.
        origin: NodeId,
        /// The peer's message.
        message: String,
    },
}

impl crate::backoff::RetryHint for FederateError {
    fn heals(&self) -> bool {
        match self {
            FederateError::Peer(e) => e.heals(),
            FederateError::Store(e) => e.heals(),
            // A page that does not verify was forged or corrupted; the peer must be looked at.
            FederateError::Invalid { .. } | FederateError::QuotaExceeded { .. } => false,
            // A peer may claim a head it is still writing; it is asked again.
            FederateError::Withholding { .. } => true,
        }
    }

    fn unreachable(&self) -> bool {
        matches!(self, FederateError::Peer(e) if e.unreachable())
    }
}

/// What a push pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PushReport {
    /// Entries sent.
    pub sent: u64,
    /// Pages sent.
    pub pages: u64,
    /// Bytes sent on the wire (compressed page bodies).
    pub wire_bytes: u64,
    /// Snapshots handed over.
    #[serde(default)]
    pub snapshots: u64,
}

/// Bytes of entries a pull verifies before it stores them together (see
/// [`Store::accept_all`]): a store's page cache (64 MiB) holds the state pages such a group
/// dirties. Verified pages only, so nothing unauthenticated waits in memory.
const PULL_GROUP: usize = 32 << 20;

/// Bytes of entries all the pulls of this process may hold verified and not stored at once:
/// a node catching up with many peers and origins stores its groups sooner rather than
/// holding a group for each.
const PULL_GROUPS: usize = 64 << 20;

/// Bytes held in groups by all pulls of this process (see [`PULL_GROUPS`]).
static GROUPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Pages a pull verified and has not stored yet, each linking to the one before.
#[derive(Default)]
struct Group {
    batches: Vec<crate::feed::VerifiedBatch>,
    bytes: usize,
}

impl Group {
    fn push(&mut self, batch: crate::feed::VerifiedBatch) {
        let bytes = batch.entries().iter().map(Vec::len).sum::<usize>();
        GROUPED.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        self.bytes += bytes;
        self.batches.push(batch);
    }

    /// Whether it is time to store the group: it holds [`PULL_GROUP`] bytes, or all pulls
    /// together hold [`PULL_GROUPS`].
    fn full(&self) -> bool {
        self.bytes >= PULL_GROUP
            || GROUPED.load(std::sync::atomic::Ordering::Relaxed) >= PULL_GROUPS
    }

    /// Whether `batch` follows the group's last page: it starts right after it, from its
    /// hash (or overlaps it, as a page that repeats entries does). One that does not goes
    /// to the store alone, where it is a gap or a fork.
    fn links(&self, batch: &crate::feed::VerifiedBatch) -> bool {
        let Some(last) = self.batches.last() else {
            return true;
        };
        let head = last.checkpoint().head();
        match batch.first_seq().0.cmp(&(head.seq.0 + 1)) {
            std::cmp::Ordering::Equal => batch.first_prev() == head.hash,
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
        }
    }

    /// The seq the group ends at, if it holds a page.
    fn head(&self) -> Option<u64> {
        self.batches.last().map(|b| b.checkpoint().seq.0)
    }

    /// Its pages, leaving it empty.
    fn take(&mut self) -> Vec<crate::feed::VerifiedBatch> {
        GROUPED.fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
        self.bytes = 0;
        std::mem::take(&mut self.batches)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        GROUPED.fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What a pull pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PullReport {
    /// Entries stored that were new here.
    pub accepted: u64,
    /// Pages fetched.
    pub pages: u64,
    /// Bytes received on the wire.
    pub wire_bytes: u64,
    /// Snapshots received and kept.
    #[serde(default)]
    pub snapshots: u64,
    /// When the peer had compacted away the entries this node lacked: the seq of the
    /// snapshot this node started the origin from instead (0 when it did not).
    #[serde(default)]
    pub base: u64,
}

/// Records that `origin`'s entry at `seq` was found damaged (see `store::damage`): the first
/// time, an error in the log, `tandem_entries_damaged_total`, and a change signal that wakes
/// the repair loop. Runs on the writer, on a blocking thread.
pub fn record_damage(
    store: &mut Store,
    changes: &Changes,
    origin: NodeId,
    seq: Seq,
    detail: &str,
) -> Result<(), StoreError> {
    if store.mark_damaged(origin, seq, detail)? {
        error!(%origin, seq = seq.0, detail, "stored entry damaged: not served until a good copy is fetched from a peer");
        metrics::counter!(telemetry::ENTRIES_DAMAGED, "origin" => origin.to_string()).increment(1);
        changes.notify();
    }
    Ok(())
}

/// What one peer was handed in receipts of one origin: (holder, seq) of each, this node's own
/// first.
type SentReceipts = Vec<(NodeId, u64)>;

/// This node's side of the relationship with one peer.
#[derive(Clone)]
pub struct Federation {
    peer: Arc<PeerConfig>,
    client: PeerClient,
    store: StoreHandle,
    node: NodeId,
    changes: Changes,
    /// Held for a whole push pass.
    push_lock: Arc<tokio::sync::Mutex<()>>,
    /// Signs the receipts for what this node pulled.
    key: Arc<NodeKey>,
    /// Every configured peer: relayed receipts of other holders are bounded (see
    /// [`crate::store::MAX_UNLISTED_HOLDERS`]).
    listed: Arc<Vec<NodeId>>,
    /// Per origin, what the peer was last handed in receipts (this node's head, then each
    /// relayed holder and seq): the same is not sent again.
    receipts_sent: Arc<Mutex<HashMap<NodeId, SentReceipts>>>,
    /// The origins for which the peer answered 404 to receipts (a version before receipts by
    /// pull answers so for every origin; a peer that does not hold an origin, for that one).
    receipts_unsupported: Arc<Mutex<std::collections::HashSet<NodeId>>>,
}

impl Federation {
    /// Verifies a page this peer sent of `origin`, on a blocking thread (signature and chain:
    /// CPU work that must not hold up the runtime).
    async fn verify_page(
        &self,
        origin: NodeId,
        page: crate::peer::Page,
    ) -> Result<crate::feed::VerifiedBatch, FederateError> {
        let peer = self.peer.name.clone();
        tokio::task::spawn_blocking(move || verify_batch(origin, page.entries, page.checkpoint))
            .await
            .expect("verification task panicked")
            .map_err(|source| FederateError::Invalid {
                peer,
                origin,
                source,
            })
    }

    /// Builds the federation with `peer`, signing as `key`, using the node's writer `store`.
    pub fn new(
        peer: PeerConfig,
        key: Arc<NodeKey>,
        store: StoreHandle,
        changes: Changes,
    ) -> Result<Federation, PeerError> {
        let node = key.id();
        let client = PeerClient::new(&peer.name, peer.id, &peer.url, key.clone())?;
        Ok(Federation {
            listed: Arc::new(vec![peer.id]),
            peer: Arc::new(peer),
            client,
            store,
            node,
            changes,
            push_lock: Arc::default(),
            key,
            receipts_sent: Arc::default(),
            receipts_unsupported: Arc::default(),
        })
    }

    /// Names every configured peer (only this one by default): receipts the peer relays of
    /// other holders are kept without bound for these, and for at most
    /// [`crate::store::MAX_UNLISTED_HOLDERS`] others.
    pub fn listing(mut self, peers: Vec<NodeId>) -> Federation {
        self.listed = Arc::new(peers);
        self
    }

    /// The peer's configuration.
    pub fn peer(&self) -> &PeerConfig {
        &self.peer
    }

    /// The origins of one of the peer's lists, resolved (`"self"` is this node), each once.
    pub fn resolve(&self, list: &[OriginRef]) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::new();
        for o in list {
            let id = match o {
                OriginRef::SelfNode => self.node,
                OriginRef::Node(id) => *id,
            };
            if !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }

    /// Checks what the peer shows of `origin`: its checkpoint against the held chain (a fork is
    /// stored and returned as an error), and its head against what it acknowledged or served
    /// before. Returns the peer's head.
    async fn observe(&self, doc: Option<&OriginDoc>, origin: NodeId) -> Result<u64, FederateError> {
        let served = doc.map_or(0, |d| d.head.seq);
        if let Some(cp) = doc.and_then(|d| d.checkpoint.as_ref()) {
            let cp = cp.to_checkpoint().map_err(|e| PeerError::Invalid {
                peer: self.peer.name.clone(),
                source: e,
            })?;
            if cp.origin != origin {
                return Err(FederateError::Invalid {
                    peer: self.peer.name.clone(),
                    origin,
                    source: FeedError::WrongOrigin {
                        expected: origin,
                        found: cp.origin,
                    },
                });
            }
            self.store.write(move |s| s.observe_checkpoint(&cp)).await?;
        }
        let holder = self.peer.id;
        let info = self
            .store
            .write(move |s| s.record_served(origin, holder, Seq(served)))
            .await?;
        if info.behind() {
            warn!(
                peer = %self.peer.name,
                %origin,
                served,
                acked = info.acked_seq,
                served_before = info.served_max,
                "holder serves less than it acknowledged or served before: rolled back or withholding"
            );
            metrics::counter!(telemetry::HOLDER_ROLLBACKS, "origin" => origin.to_string(), "holder" => self.peer.name.clone())
                .increment(1);
        }
        Ok(served)
    }

    /// Pushes every origin of the peer's `push` list that it lacks, page by page, keeping each
    /// receipt. One failing origin does not stop the others; the first failure is returned
    /// after all were tried. Passes with one peer never overlap (a pass beside `tandem sync`
    /// waits), so a holder's head is never compared with a receipt newer than the look.
    pub async fn push(&self) -> Result<PushReport, FederateError> {
        let _one_at_a_time = self.push_lock.lock().await;
        let mut report = PushReport::default();
        let mut first_error = None;
        for origin in self.resolve(&self.peer.push) {
            if let Err(e) = self.push_origin(origin, &mut report).await {
                warn!(peer = %self.peer.name, %origin, error = %e, "push failed");
                first_error.get_or_insert(e);
            }
        }
        if report.sent > 0 {
            info!(peer = %self.peer.name, sent = report.sent, pages = report.pages, "push done");
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    #[tracing::instrument(name = "push", skip_all, fields(peer = %self.peer.name, %origin))]
    async fn push_origin(
        &self,
        origin: NodeId,
        report: &mut PushReport,
    ) -> Result<(), FederateError> {
        let doc = self.client.origin(origin).await?;
        let theirs = doc.as_ref().map_or(0, |d| d.head.seq);
        if let Some(d) = &doc {
            self.keep_relayed(origin, &d.receipts).await?;
        }
        if origin == self.node {
            let ours = self
                .store
                .write(move |s| s.head(origin))
                .await?
                .map_or(0, |h| h.seq.0);
            if theirs > ours {
                // The peer holds more of our own feed than we do (the store was restored from
                // an old backup): fetch it back before anything else is appended.
                self.recover_ahead(theirs).await?;
            }
        }
        let mut after = theirs;
        // A fork shown by the holder's checkpoint is stored here; the push still runs, so
        // that the holder gets the conflicting chain and stores the evidence too.
        let mut fork = None;
        match self.observe(doc.as_ref(), origin).await {
            Ok(_) => {}
            Err(e @ FederateError::Store(StoreError::Fork(_) | StoreError::Frozen { .. })) => {
                warn!(peer = %self.peer.name, %origin, error = %e, "the holder shows a fork of this origin");
                fork = Some(e);
            }
            Err(e) => return Err(e),
        }
        let mut relinks = 0;
        loop {
            let page = match self
                .store
                .write(move |s| s.entries_page(origin, Seq(after), PAGE_ENTRIES, wire::PAGE_BYTES))
                .await
            {
                Err(StoreError::EntryDamaged {
                    origin,
                    seq,
                    detail,
                }) => {
                    let (changes, text) = (self.changes.clone(), detail.clone());
                    self.store
                        .write(move |s| record_damage(s, &changes, origin, seq, &text))
                        .await?;
                    return Err(StoreError::EntryDamaged {
                        origin,
                        seq,
                        detail,
                    }
                    .into());
                }
                page => page?,
            };
            let Some((entries, checkpoint)) = page else {
                break;
            };
            let (raw, count) = tokio::task::spawn_blocking(move || {
                let raw =
                    wire::encode_page(&checkpoint, entries.iter().map(|e| e.bytes.as_slice()));
                (raw, entries.len())
            })
            .await
            .expect("encoding task panicked");
            let (receipt, sent) = match self.client.push(self.peer.id, &checkpoint, &raw).await {
                Ok(answer) => answer,
                // The peer's head moved (another node relayed to it, or it lost entries):
                // start again after the head it names.
                Err(PeerError::Refused {
                    status: 409,
                    head: Some(head),
                    ..
                }) if relinks < 3 && head != after => {
                    relinks += 1;
                    after = head;
                    continue;
                }
                Err(PeerError::Refused {
                    status: 507,
                    message,
                    ..
                }) => {
                    metrics::gauge!(telemetry::PEER_QUOTA_EXCEEDED, "peer" => self.peer.name.clone()).set(1.0);
                    return Err(FederateError::QuotaExceeded {
                        peer: self.peer.name.clone(),
                        origin,
                        message,
                    });
                }
                Err(e) => return Err(fork.unwrap_or(e.into())),
            };
            if receipt.seq > checkpoint.seq {
                // The holder acknowledges more than this page: only what we hold can be checked.
                let (seq, hash) = (receipt.seq, receipt.hash);
                let held = self.store.write(move |s| s.entry_hash(origin, seq)).await?;
                if held != Some(hash) {
                    // Not a glitch: the holder signed a hash this chain does not have at that
                    // seq, which is evidence of a fork; retrying cannot change it.
                    warn!(peer = %self.peer.name, %origin, seq = seq.0, "a receipt acknowledges an entry this node does not hold");
                    return Err(FederateError::Invalid {
                        peer: self.peer.name.clone(),
                        origin,
                        source: FeedError::Malformed(
                            "the peer's receipt acknowledges, at a seq this node holds, an entry other than the one held here",
                        ),
                    });
                }
            }
            metrics::gauge!(telemetry::PEER_QUOTA_EXCEEDED, "peer" => self.peer.name.clone())
                .set(0.0);
            metrics::gauge!(telemetry::HOLDER_ACKED_SEQ, "origin" => origin.to_string(), "holder" => self.peer.name.clone())
                .set(receipt.seq.0 as f64);
            self.store
                .write(move |s| s.record_receipt(&receipt))
                .await?;
            report.sent += count as u64;
            report.pages += 1;
            report.wire_bytes += sent as u64;
            after = checkpoint.seq.0;
        }
        if let Some(e) = fork {
            return Err(e);
        }
        report.snapshots += self
            .push_snapshots(origin, doc.as_ref().map_or(0, |d| d.snapshot_seq))
            .await?;
        Ok(())
    }

    /// Keeps the receipts of other holders the peer relayed about `origin` (in its answer to
    /// `GET /v1/origins/{id}`). Each is checked where it lands; one refused is logged and
    /// skipped, it does not fail the pass.
    async fn keep_relayed(
        &self,
        origin: NodeId,
        docs: &[wire::ReceiptDoc],
    ) -> Result<(), FederateError> {
        let receipts: Vec<Receipt> = docs
            .iter()
            .take(wire::MAX_RECEIPTS)
            .filter_map(|d| d.to_receipt().ok())
            .filter(|r| r.origin == origin && r.holder != self.peer.id)
            .collect();
        if receipts.is_empty() {
            return Ok(());
        }
        let listed = self.listed.clone();
        let refused = self
            .store
            .write(move |s| {
                let mut refused = Vec::new();
                for r in &receipts {
                    if let crate::store::ReceiptCheck::Refused(why) =
                        s.record_foreign_receipt(r, &listed)?
                    {
                        refused.push((r.holder, r.seq, why));
                    }
                }
                Ok(refused)
            })
            .await?;
        for (holder, seq, why) in refused {
            tracing::debug!(peer = %self.peer.name, %origin, %holder, %seq, reason = %why, "relayed receipt refused");
        }
        Ok(())
    }

    /// Hands the peer a receipt for what this node now holds of `origin`, with the receipts
    /// of other holders kept here (at most [`wire::MAX_RECEIPTS`] in all, the newest), unless
    /// the same was handed over already. Failures are logged, not returned: the entries are
    /// stored, and the next pull tries again.
    async fn send_receipts(&self, origin: NodeId) {
        if self
            .receipts_unsupported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&origin)
        {
            return;
        }
        let (peer, me) = (self.peer.id, self.node);
        let held = self
            .store
            .write(move |s| {
                let others = s.latest_receipts(origin, wire::MAX_RECEIPTS - 1, &[peer, me])?;
                Ok((s.head(origin)?, others))
            })
            .await;
        let (head, others) = match held {
            Ok((Some(head), others)) => (head, others),
            Ok((None, _)) => return,
            Err(e) => {
                warn!(peer = %self.peer.name, %origin, error = %e, "cannot read receipts to send");
                return;
            }
        };
        let mut sent: Vec<(NodeId, u64)> = vec![(me, head.seq.0)];
        sent.extend(others.iter().map(|r| (r.holder, r.seq.0)));
        if self
            .receipts_sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&origin)
            == Some(&sent)
        {
            return;
        }
        let mut receipts = vec![Receipt::sign(
            &self.key,
            origin,
            head,
            crate::store::now_ms(),
        )];
        receipts.extend(others);
        match self.client.post_receipts(origin, &receipts).await {
            Ok(Some(answer)) => {
                for r in &answer.refused {
                    warn!(peer = %self.peer.name, %origin, holder = %r.holder, seq = r.seq, reason = %r.error, "peer refused a receipt");
                }
                self.receipts_sent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(origin, sent);
            }
            Ok(None) => {
                info!(peer = %self.peer.name, %origin, "peer does not take receipts by pull for this origin (an older version, or it does not hold the origin); not sending them again");
                self.receipts_unsupported
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(origin);
            }
            Err(e) => {
                warn!(peer = %self.peer.name, %origin, error = %e, "sending receipts failed; the next pull tries again");
            }
        }
    }

    /// Asks the peer for good copies of the damaged entries of `origin`: the page starting at
    /// each one not yet covered, verified and accepted like any pulled page, which replaces the
    /// damaged entries the chain held here confirms (see `store::damage`). Returns how many
    /// were replaced; `Ok(0)` when the peer does not hold them, may not let this node read
    /// them, or has them damaged too.
    #[tracing::instrument(name = "repair", skip_all, fields(peer = %self.peer.name, %origin))]
    pub async fn repair(&self, origin: NodeId) -> Result<u64, FederateError> {
        let mut repaired = 0;
        let mut covered = 0u64;
        loop {
            let damaged = self.store.write(move |s| s.damaged(origin)).await?;
            let Some(d) = damaged.iter().map(|d| d.seq.0).find(|s| *s > covered) else {
                break;
            };
            let page = match self.client.page(origin, Seq(d - 1), Duration::ZERO).await {
                Ok(Some(page)) => page,
                Ok(None) => break,
                // It does not know this node, may not let it read the origin, does not hold
                // the entry (or compacted it), or has it damaged too: it answered, no copy.
                Err(PeerError::Refused {
                    status: 401 | 403 | 404 | 410 | 503,
                    ..
                }) => break,
                Err(e) => return Err(e.into()),
            };
            covered = page.checkpoint.seq.0;
            if covered < d {
                break;
            }
            let batch = self.verify_page(origin, page).await?;
            let accepted = self.store.write(move |s| s.accept(&batch, &[])).await?;
            if accepted.added > 0 {
                metrics::counter!(telemetry::ENTRIES_ACCEPTED).increment(accepted.added);
            }
            if accepted.repaired > 0 || accepted.added > 0 {
                self.changes.notify();
            }
            if accepted.repaired > 0 {
                metrics::counter!(telemetry::ENTRIES_REPAIRED, "origin" => origin.to_string())
                    .increment(accepted.repaired);
                info!(peer = %self.peer.name, %origin, repaired = accepted.repaired, "damaged entries replaced by a good copy");
            }
            repaired += accepted.repaired;
        }
        Ok(repaired)
    }

    /// Fetches this node's own feed back from the peer up to `theirs`, with appends paused
    /// (the store's recovery flag) until it is back.
    async fn recover_ahead(&self, theirs: u64) -> Result<(), FederateError> {
        warn!(peer = %self.peer.name, held_there = theirs, "a peer holds more of this node's own feed than this node: fetching it back before appending");
        self.store.write(|s| s.set_recovering(true)).await?;
        self.pull_origin(self.node, Duration::ZERO).await?;
        let node = self.node;
        let ours = self
            .store
            .write(move |s| s.head(node))
            .await?
            .map_or(0, |h| h.seq.0);
        if ours >= theirs {
            self.store.write(|s| s.set_recovering(false)).await?;
            info!(head = ours, "own feed fetched back; appending resumes");
        }
        Ok(())
    }

    /// Hands the peer the snapshots of `origin` after `after` (the latest it has), up to what
    /// it now holds, and records that it has them.
    async fn push_snapshots(&self, origin: NodeId, after: u64) -> Result<u64, FederateError> {
        let list = self.store.write(move |s| s.snapshots(origin)).await?;
        let mut sent = 0;
        for snapshot in list.into_iter().filter(|s| s.seq.0 > after) {
            match self.client.push_snapshot(&snapshot).await {
                Ok(()) => {}
                // It does not hold the entries yet (a quota, a failed page): next time.
                Err(PeerError::Refused { status: 409, .. }) => break,
                Err(e) => return Err(e.into()),
            }
            let holder = self.peer.id;
            self.store
                .write(move |s| s.record_snapshot_holder(origin, snapshot.seq, holder))
                .await?;
            sent += 1;
        }
        Ok(sent)
    }

    /// Fetches the snapshots of `origin` the peer has after the latest held here, and keeps the
    /// ones that check against the entries held (see [`Store::accept_snapshot`]).
    async fn pull_snapshots(&self, origin: NodeId, theirs: u64) -> Result<u64, FederateError> {
        let after = self
            .store
            .write(move |s| s.snapshots(origin))
            .await?
            .last()
            .map_or(0, |s| s.seq.0);
        if theirs <= after {
            return Ok(0);
        }
        let list = self.client.snapshots(origin, Seq(after)).await?;
        let mut kept = 0;
        for snapshot in list {
            if snapshot.origin != origin {
                continue;
            }
            match self
                .store
                .write(move |s| s.accept_snapshot(&snapshot))
                .await
            {
                Ok(()) => kept += 1,
                // Beyond what is held: the next pull brings the entries, then the snapshot.
                Err(StoreError::SnapshotMismatch {
                    source: crate::store::SnapshotMismatch::Ahead { .. },
                    ..
                }) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(kept)
    }

    /// One round with the peer: a push if its `push` list names anything, then a pull if its
    /// `pull` list does; the pull runs even when the push failed. `None` for a direction with
    /// nothing to move.
    pub async fn round(
        &self,
    ) -> (
        Option<Result<PushReport, FederateError>>,
        Option<Result<PullReport, FederateError>>,
    ) {
        let pushed = if self.peer.push.is_empty() {
            None
        } else {
            Some(self.push().await)
        };
        let pulled = if self.peer.pull.is_empty() {
            None
        } else {
            Some(self.pull().await)
        };
        (pushed, pulled)
    }

    /// Pulls every origin of the peer's `pull` list once, without waiting for new entries.
    pub async fn pull(&self) -> Result<PullReport, FederateError> {
        let mut total = PullReport::default();
        let mut first_error = None;
        for origin in self.resolve(&self.peer.pull) {
            match self.pull_origin(origin, Duration::ZERO).await {
                Ok(r) => {
                    total.accepted += r.accepted;
                    total.pages += r.pages;
                    total.wire_bytes += r.wire_bytes;
                    total.snapshots += r.snapshots;
                    total.base = total.base.max(r.base);
                }
                Err(e) => {
                    warn!(peer = %self.peer.name, %origin, error = %e, "pull failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Pulls `origin` until caught up with the peer. With a `wait`, the last request is a long
    /// poll: it returns as soon as the peer has more, or after `wait`.
    #[tracing::instrument(name = "pull", skip_all, fields(peer = %self.peer.name, %origin))]
    pub async fn pull_origin(
        &self,
        origin: NodeId,
        wait: Duration,
    ) -> Result<PullReport, FederateError> {
        let mut report = PullReport::default();
        let doc = self.client.origin(origin).await?;
        let claimed = self.observe(doc.as_ref(), origin).await?;
        // The page after the one being stored, asked for while it was verified and stored
        // (with the seq it follows): the peer reads and sends it meanwhile.
        let mut ahead: Option<(u64, Result<Option<crate::peer::Page>, PeerError>)> = None;
        // Pages verified and not stored yet: stored together once they reach `PULL_GROUP`
        // bytes, once caught up with what the peer claimed, or before any error returns.
        let mut group = Group::default();
        loop {
            let head = match group.head() {
                Some(head) => head,
                None => self
                    .store
                    .write(move |s| s.head(origin))
                    .await?
                    .map_or(0, |h| h.seq.0),
            };
            // Only long-poll once caught up with what the peer said it holds.
            let wait = if head < claimed { Duration::ZERO } else { wait };
            let page = match ahead.take() {
                Some((after, page)) if after == head => page,
                _ => self.client.page(origin, Seq(head), wait).await,
            };
            let page = match page {
                // What we lack is compacted away there. Holding none of it, start from its
                // base instead; holding some, keep it and say so (the 410 names the base).
                Err(PeerError::Refused { status: 410, .. }) if report.base == 0 && head == 0 => {
                    report.base = self.bootstrap(origin).await?;
                    continue;
                }
                Err(e) => {
                    self.store_group(origin, &mut group, &mut report).await?;
                    return Err(e.into());
                }
                Ok(page) => page,
            };
            let Some(page) = page else {
                self.store_group(origin, &mut group, &mut report).await?;
                if head < claimed {
                    warn!(peer = %self.peer.name, %origin, claimed, served = head, "peer withholds entries it claims to hold");
                    return Err(FederateError::Withholding {
                        peer: self.peer.name.clone(),
                        origin,
                        claimed,
                        served: head,
                    });
                }
                break;
            };
            report.wire_bytes += page.wire_bytes as u64;
            if page.checkpoint.seq.0 <= head {
                self.store_group(origin, &mut group, &mut report).await?;
                return Err(FederateError::Peer(PeerError::Invalid {
                    peer: self.peer.name.clone(),
                    source: wire::WireError::Malformed {
                        what: "page",
                        detail: format!(
                            "asked for entries after seq {head}, got a page ending at seq {}",
                            page.checkpoint.seq
                        ),
                    },
                }));
            }
            let after = page.checkpoint.seq.0;
            let store = async {
                let batch = self.verify_page(origin, page).await;
                let batch = match batch {
                    Ok(batch) => batch,
                    Err(e) => {
                        // What was verified before it is kept.
                        self.store_group(origin, &mut group, &mut report).await?;
                        return Err(e);
                    }
                };
                let links = group.links(&batch);
                if !links {
                    self.store_group(origin, &mut group, &mut report).await?;
                }
                group.push(batch);
                if !links || group.full() || after >= claimed {
                    self.store_group(origin, &mut group, &mut report).await?;
                }
                Ok::<_, FederateError>(())
            };
            let next = async {
                match after < claimed {
                    true => Some(self.client.page(origin, Seq(after), Duration::ZERO).await),
                    false => None,
                }
            };
            let (stored, next) = tokio::join!(store, next);
            stored?;
            ahead = next.map(|page| (after, page));
            report.pages += 1;
        }
        let theirs = doc.as_ref().map_or(0, |d| d.snapshot_seq);
        report.snapshots += self.pull_snapshots(origin, theirs).await?;
        if origin != self.node {
            self.send_receipts(origin).await;
        }
        if report.accepted > 0 {
            info!(peer = %self.peer.name, %origin, accepted = report.accepted, "pull done");
        }
        Ok(report)
    }

    /// Stores the pages of `group` (see [`Store::accept_all`]), tells the peer's record
    /// what it now serves, and announces what was stored, also when a page stopped the
    /// rest; nothing when the group is empty.
    async fn store_group(
        &self,
        origin: NodeId,
        group: &mut Group,
        report: &mut PullReport,
    ) -> Result<(), FederateError> {
        let batches = group.take();
        if batches.is_empty() {
            return Ok(());
        }
        let done = self
            .store
            .write(move |s| Ok(s.accept_all(&batches)))
            .await?;
        if let Some(accepted) = done.accepted {
            report.accepted += accepted.added;
            if accepted.added > 0 {
                metrics::counter!(telemetry::ENTRIES_ACCEPTED).increment(accepted.added);
                self.changes.notify();
            }
            let holder = self.peer.id;
            let served = accepted.head.seq;
            self.store
                .write(move |s| s.record_served(origin, holder, served).map(drop))
                .await?;
        }
        match done.error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Fetches the peer's latest snapshot of `origin` with the entries of its state, checks
    /// them against its root, and starts (or moves) the origin there. Returns the snapshot's
    /// seq. The entries are staged in the store as they arrive (on disk, not in memory) and
    /// checked as a whole before anything of them is part of the replica.
    async fn bootstrap(&self, origin: NodeId) -> Result<u64, FederateError> {
        let invalid = |source| FederateError::Invalid {
            peer: self.peer.name.clone(),
            origin,
            source,
        };
        // Dropped (an error, or the pass cancelled), the guard removes what was staged.
        // The guard exists before the store is asked, so that a pass dropped while waiting
        // for it still discards what the staging began.
        let token = Store::staging_token();
        let mut staging = StagingGuard {
            token: Some(token),
            store: self.store.clone(),
        };
        self.store
            .write(move |s| s.begin_base_staging(token))
            .await?;
        let (snapshot, mut more, first) = self.client.base_page(origin, None, 0).await?;
        if snapshot.origin != origin {
            return Err(invalid(FeedError::Malformed("a base of another origin")));
        }
        snapshot.verify().map_err(invalid)?;
        // An honest base is the state's bodies plus, per entry, a header, a path and maybe a
        // tombstone (which the snapshot's size does not count): refuse to stage more than four
        // times the signed size and 4 GiB.
        let cap = snapshot.bytes.saturating_mul(4).saturating_add(4 << 30);
        let (mut count, mut last, mut total) = (0usize, 0u64, 0u64);
        let mut page = first;
        loop {
            for e in &page {
                // The layout only, for the order: the whole base is validated when installed.
                let seq = crate::feed::decode_stored_entry(e).map_err(invalid)?.seq.0;
                if seq <= last || seq > snapshot.seq.0 {
                    return Err(invalid(FeedError::Malformed(
                        "base entries out of order or beyond their snapshot",
                    )));
                }
                last = seq;
                total += e.len() as u64;
            }
            if total > cap {
                return Err(invalid(FeedError::Malformed(
                    "a base far larger than its snapshot states",
                )));
            }
            let empty = page.is_empty();
            count += page.len();
            self.store
                .write(move |s| s.stage_base(token, &page))
                .await?;
            if !more {
                break;
            }
            if empty {
                return Err(invalid(FeedError::Malformed(
                    "a base page that says more follow and holds nothing",
                )));
            }
            let (again, m, next) = self
                .client
                .base_page(origin, Some(snapshot.seq), last)
                .await?;
            if again != snapshot {
                return Err(invalid(FeedError::Malformed(
                    "the base changed while it was read",
                )));
            }
            (more, page) = (m, next);
        }
        info!(peer = %self.peer.name, %origin, seq = %snapshot.seq, entries = count, bytes = total, "starting the origin from the peer's snapshot (it compacted the entries before it)");
        let seq = snapshot.seq.0;
        // Installing removes the staging file, whatever the outcome.
        staging.token = None;
        self.store
            .write(move |s| s.install_staged_base(token, &snapshot))
            .await?;
        self.changes.notify();
        Ok(seq)
    }

    /// Asks the peer for this node's own feed and pulls whatever it holds beyond the local
    /// head. `Ok(None)` when the peer does not hold it or does not let us read it.
    pub async fn recover_own(&self) -> Result<Option<PullReport>, FederateError> {
        match self.client.origin(self.node).await {
            Ok(None) => return Ok(None),
            Ok(Some(doc)) if doc.head.seq == 0 => return Ok(None),
            Ok(Some(_)) => {}
            // A peer that does not know this node (401) or will not say (403) has not
            // accepted its feed from it.
            Err(PeerError::Refused {
                status: 401 | 403, ..
            }) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        // It holds some of the feed: failing to fetch it (even a 403) leaves the peer pending.
        self.pull_origin(self.node, Duration::ZERO).await.map(Some)
    }
}

/// Removes a staged base when a bootstrap ends without installing it (an error, or the task
/// cancelled between two pages).
struct StagingGuard {
    /// `None` once the staged base is handed to the store to install.
    token: Option<u64>,
    store: StoreHandle,
}

impl Drop for StagingGuard {
    fn drop(&mut self) {
        let Some(token) = self.token else {
            return;
        };
        let sent = self.store.write_later(move |store| {
            if let Err(e) = store.discard_staged_base(token) {
                tracing::warn!(error = %e, "could not remove a base staging file");
            }
        });
        if !sent {
            tracing::warn!(
                "the store closed before a base staging file was removed; the next start removes it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{Checkpoint, EntryHash, Head, Op, encode_entry};

    /// `n` entries of one origin and a checkpoint at each seq, and pages of it verified.
    fn chain(key: &NodeKey, n: u64, salt: &str) -> Vec<(Vec<u8>, Checkpoint)> {
        let mut prev = EntryHash::genesis(&key.id());
        (1..=n)
            .map(|seq| {
                let body = format!(r#"{{"data":{{"v":"{salt}{seq}"}}}}"#);
                let bytes = encode_entry(Seq(seq), prev, 1, Op::Put, "/buckets/b", body.as_bytes())
                    .unwrap();
                prev = EntryHash::of(&bytes);
                let cp = Checkpoint::sign(
                    key,
                    Head {
                        seq: Seq(seq),
                        hash: prev,
                    },
                    1,
                );
                (bytes, cp)
            })
            .collect()
    }

    fn page(
        key: &NodeKey,
        chain: &[(Vec<u8>, Checkpoint)],
        from: usize,
        to: usize,
    ) -> crate::feed::VerifiedBatch {
        let entries = chain[from..to].iter().map(|(b, _)| b.clone()).collect();
        verify_batch(key.id(), entries, chain[to - 1].1).unwrap()
    }

    #[test]
    fn a_group_takes_only_pages_that_follow_its_last() {
        let key = NodeKey::from_seed([9; 32]);
        let (honest, other) = (chain(&key, 9, "a"), chain(&key, 9, "b"));
        let mut group = Group::default();
        assert!(
            group.links(&page(&key, &honest, 3, 6)),
            "an empty group takes any page"
        );
        group.push(page(&key, &honest, 0, 3));
        assert_eq!(group.head(), Some(3));
        assert!(group.bytes > 0);
        assert!(group.links(&page(&key, &honest, 3, 6)), "the next page");
        assert!(
            group.links(&page(&key, &honest, 1, 6)),
            "a page that overlaps"
        );
        assert!(!group.links(&page(&key, &honest, 4, 6)), "a gap");
        assert!(!group.links(&page(&key, &other, 3, 6)), "another history");
        let pages = group.take();
        assert_eq!(pages.len(), 1);
        assert_eq!((group.bytes, group.head()), (0, None));
    }
}
