//! Transactions that change feeds: appending our own entries, accepting verified foreign
//! batches, and recording fork evidence. Each public call is exactly one SQLite transaction.

use rusqlite::{OptionalExtension, TransactionBehavior};

use super::{
    Context, Store, StoreError, apply_to_objects, entry_key, hash_from, head_from, now_ms,
};
use crate::feed::{
    self, Checkpoint, EntryHash, FeedError, ForkEvidence, Head, Op, Seq, VerifiedBatch,
};
use crate::identity::{NodeId, NodeKey};
use crate::seal::SealKey;

/// Our own feed gets a signed checkpoint at every multiple of this seq, besides the one at the
/// end of each append, so that a peer can fetch a large append in pages that each end at a
/// checkpoint. Signing costs about 20 µs, one per thousand entries.
pub const CHECKPOINT_EVERY: u64 = 1024;
/// ... and after every this many bytes of entries since the last checkpoint, so that pages of
/// large entries stay small too.
pub const CHECKPOINT_BYTES: u64 = 4 << 20;

/// One change to record in our own feed.
#[derive(Debug, Clone)]
pub struct Change {
    /// Put or delete.
    pub op: Op,
    /// Source object path.
    pub path: String,
    /// For a put, the object as a JSON object; empty for a delete.
    pub body: Vec<u8>,
}

/// A cursor position to commit together with the entries it produced.
#[derive(Debug, Clone)]
pub struct CursorUpdate {
    /// Cursor name, e.g. `kinto:/buckets/b/collections/c/records`.
    pub name: String,
    /// Opaque position; an empty value removes the cursor.
    pub value: String,
}

impl CursorUpdate {
    /// Sets `name` to `value`.
    pub fn set(name: impl Into<String>, value: impl ToString) -> CursorUpdate {
        CursorUpdate {
            name: name.into(),
            value: value.to_string(),
        }
    }

    /// Removes `name`.
    pub fn clear(name: impl Into<String>) -> CursorUpdate {
        CursorUpdate {
            name: name.into(),
            value: String::new(),
        }
    }
}

/// Result of accepting a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Entries that were new (0 on re-delivery).
    pub added: u64,
    /// The origin's head afterwards.
    pub head: Head,
    /// Entries found damaged here that the batch replaced (see `store::damage`).
    pub repaired: u64,
}

/// What a lone checkpoint says about the stored chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointCheck {
    /// It names a seq we hold, with the same hash.
    Consistent,
    /// It is ahead of what we hold: nothing to compare yet.
    Ahead,
}

/// What an append does with its changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Records every change.
    All,
    /// Drops the changes that would not change the state.
    SkipNoOps,
    /// Switches sealing on: the changes are the plain state, re-recorded sealed.
    SealSwitch,
}

fn seal_failed(path: &str, e: crate::seal::SealError) -> StoreError {
    StoreError::InvalidChange {
        path: path.to_owned(),
        source: FeedError::Malformed(match e {
            crate::seal::SealError::TooLarge { .. } => "its sealed form is larger than 64 MiB",
            _ => "it could not be sealed",
        }),
    }
}

/// At most this many puts wait in an append before the state is written (see [`Appender`]).
const STATE_BUFFER: usize = 65_536;

/// Puts waiting to be written into the state, in path order (see [`Appender`]): the path and
/// the seq of its latest put.
#[derive(Default)]
struct StateBuffer {
    puts: std::collections::HashMap<String, Seq>,
}

impl StateBuffer {
    /// Records a put of `path` at `seq`.
    fn insert(&mut self, path: &str, seq: Seq) {
        self.puts.insert(path.to_owned(), seq);
    }

    /// Whether [`STATE_BUFFER`] puts wait: time to write them.
    fn full(&self) -> bool {
        self.puts.len() >= STATE_BUFFER
    }

    /// The seq of a put to `path` that waits, if any.
    fn get(&self, path: &str) -> Option<Seq> {
        self.puts.get(path).copied()
    }

    /// Writes the waiting puts into the state of `origin`, in path order.
    fn flush(&mut self, tx: &rusqlite::Transaction<'_>, origin: i64) -> Result<(), StoreError> {
        let mut puts: Vec<(String, Seq)> = self.puts.drain().collect();
        puts.sort_unstable();
        for (path, seq) in puts {
            apply_to_objects(tx, origin, seq, Op::Put, &path, true)
                .ctx("updating the object state")?;
        }
        Ok(())
    }
}

/// Writes entries of our own feed inside an append's transaction: each entry, its place in
/// the state, the source path of a sealed one, and the intermediate checkpoints.
///
/// Puts reach the state in path order: they wait in `puts` (path → the seq of the latest put)
/// and are written sorted when [`STATE_BUFFER`] of them wait, before any delete, and at the end.
/// The state B-tree is keyed by path, and paths come in no order (Kinto's record ids are
/// random, a sealed feed's paths are hashes): written as they come, every put would land on a
/// different page, and a large append would rewrite the same pages over and over once the
/// tree outgrows the page cache. The no-op check asks [`Appender::pending`] before the
/// state; every other read of the state (tombstones, container deletes) follows a delete, and
/// so a flush. A sealed feed's source paths wait beside the puts in `paths` and are written
/// with them, sorted too; only a container delete reads them (`tombstones_below`), after its
/// flush.
struct Appender<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    origin: i64,
    key: &'a NodeKey,
    head: Head,
    ts: u64,
    bytes_added: u64,
    since_checkpoint: u64,
    puts: StateBuffer,
    /// The (source path, sealed path) of each sealed entry since the last flush, written
    /// with the puts and for the same reason: source paths come in no order either.
    paths: Vec<(String, String)>,
}

impl Appender<'_> {
    /// Appends one entry. `plain` is the source path and body of a sealed entry.
    fn push(
        &mut self,
        op: Op,
        path: &str,
        body: &[u8],
        plain: Option<(&str, &[u8])>,
    ) -> Result<(), StoreError> {
        let seq = self.head.seq.next();
        let invalid = |source| StoreError::InvalidChange {
            path: plain.map_or(path, |p| p.0).to_owned(),
            source,
        };
        let encode = if plain.is_some() {
            feed::encode_sealed_entry
        } else {
            feed::encode_entry
        };
        let bytes = encode(seq, self.head.hash, self.ts, op, path, body).map_err(invalid)?;
        let hash = EntryHash::of(&bytes);
        let key = entry_key(self.origin, seq.0);
        self.tx
            .prepare_cached("INSERT INTO entries (key, hash, bytes) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute((key, &hash.0[..], &bytes)))
            .ctx("inserting an entry")?;
        if let Some((plain_path, plain_body)) = plain {
            // Kept only for a delete without a body, which no key opens (`store::sealed`).
            if body.is_empty() {
                let opened =
                    feed::encode_entry(seq, self.head.hash, self.ts, op, plain_path, plain_body)
                        .map_err(invalid)?;
                super::sealed::record_plaintext(self.tx, key, &opened)?;
            }
            self.paths.push((plain_path.to_owned(), path.to_owned()));
        }
        match op {
            Op::Put => {
                self.puts.insert(path, seq);
                if self.puts.full() {
                    self.write_puts()?;
                }
            }
            Op::Delete => {
                self.write_puts()?;
                apply_to_objects(self.tx, self.origin, seq, op, path, !body.is_empty())
                    .ctx("updating the object state")?;
            }
        }
        self.bytes_added += bytes.len() as u64;
        self.head = Head { seq, hash };
        // Intermediate checkpoints bound the pages peers fetch (see `entries_page`).
        self.since_checkpoint += bytes.len() as u64;
        if seq.0.is_multiple_of(CHECKPOINT_EVERY) || self.since_checkpoint >= CHECKPOINT_BYTES {
            insert_checkpoint(
                self.tx,
                self.origin,
                &Checkpoint::sign(self.key, self.head, self.ts),
            )?;
            self.since_checkpoint = 0;
        }
        Ok(())
    }

    /// The seq of a put to `path` that waits for the state, if any.
    fn pending(&self, path: &str) -> Option<Seq> {
        self.puts.get(path)
    }

    /// Writes the waiting puts into the state and the waiting source paths beside it, each in
    /// path order.
    fn write_puts(&mut self) -> Result<(), StoreError> {
        self.puts.flush(self.tx, self.origin)?;
        self.paths.sort_unstable();
        self.paths.dedup();
        for (plain, sealed) in self.paths.drain(..) {
            super::sealed::record_path(self.tx, self.origin, &plain, &sealed)?;
        }
        Ok(())
    }
}

/// The state of an origin row read at the start of a write.
struct OriginRow {
    id: i64,
    head: Option<Head>,
    frozen: bool,
    /// The compacted base: its seq (0 for none) and the hash of the entry there.
    base: (u64, Option<EntryHash>),
}

impl Store {
    /// Appends `changes` to our own feed as one batch, signs a checkpoint for the new head, and
    /// commits entries, checkpoint, materialized state and `cursors` in one transaction.
    /// Returns the checkpoint, or `None` when `changes` is empty (cursors are still committed).
    pub fn append(
        &mut self,
        key: &NodeKey,
        changes: &[Change],
        cursors: &[CursorUpdate],
    ) -> Result<Option<Checkpoint>, StoreError> {
        let done = self.append_in_one(key, changes, cursors, Mode::All);
        Ok(done.map_err(|e| self.name_full(e))?.0)
    }

    /// Like [`Store::append`], but drops changes that would not change the state: a put whose
    /// body equals the live object's, a delete of an absent object. Used by ingest, so that
    /// re-reading a source after a crash or an overlap appends nothing twice. Returns the
    /// checkpoint (if anything was appended) and how many changes were appended.
    pub fn append_changes(
        &mut self,
        key: &NodeKey,
        changes: Vec<Change>,
        cursors: &[CursorUpdate],
    ) -> Result<(Option<Checkpoint>, usize), StoreError> {
        let done = self.append_in_one(key, &changes, cursors, Mode::SkipNoOps);
        done.map_err(|e| self.name_full(e))
    }

    /// Switches sealing on (see [`Store::seal_own`]): seals the own feed from the next seq and,
    /// in the same append, re-records `state` (the plain live objects and tombstones, deepest
    /// first): each plain path deleted, then sealed.
    pub(super) fn append_sealing_switch(
        &mut self,
        key: &NodeKey,
        state: Vec<Change>,
    ) -> Result<Seq, StoreError> {
        let done = self.append_in_one(key, &state, &[], Mode::SealSwitch);
        done.map_err(|e| self.name_full(e))?;
        super::sealed::sealed_from(&self.conn)?.ok_or(StoreError::Feed(FeedError::Malformed(
            "sealing did not switch on",
        )))
    }

    /// Both appends, in one transaction. The no-op check reads the state inside the
    /// transaction, so it sees the batch's own earlier changes.
    fn append_in_one(
        &mut self,
        key: &NodeKey,
        changes: &[Change],
        cursors: &[CursorUpdate],
        mode: Mode,
    ) -> Result<(Option<Checkpoint>, usize), StoreError> {
        let skip_no_ops = mode == Mode::SkipNoOps;
        let origin = key.id();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx("starting an append")?;
        let row = origin_row(&tx, origin, false)?;
        // Entry times never go back, even when the clock does: `restore --at` relies on it.
        let head_ts = match row.head {
            Some(h) => {
                let bytes: Vec<u8> = tx
                    .query_row(
                        "SELECT bytes FROM entries WHERE key = ?1",
                        [entry_key(row.id, h.seq.0)],
                        |r| r.get(0),
                    )
                    .ctx("reading the head entry")?;
                feed::decode_stored_entry(&bytes)?.ts
            }
            None => 0,
        };
        let ts = now_ms().max(head_ts);
        if row.frozen {
            return Err(StoreError::Frozen { origin });
        }
        // Checked inside the transaction, so a flag set by another writer call is never missed.
        let recovering: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'recovering'", [], |r| {
                r.get(0)
            })
            .optional()
            .ctx("reading the recovery flag")?;
        if recovering.is_some() {
            return Err(StoreError::Recovering);
        }
        let head = row.head.unwrap_or(Head {
            seq: Seq(0),
            hash: EntryHash::genesis(&origin),
        });
        // A sealed feed: its entries carry sealed paths and bodies (see `crate::seal`), and
        // this node opens them with its keys when it reads them (`store::sealed`).
        if mode == Mode::SealSwitch {
            super::sealed::switch_on(&tx, head.seq)?;
        }
        let seal = match super::sealed::sealed_from(&tx)? {
            Some(_) => Some(super::sealed::own_seal_key(&tx, row.id, key)?),
            None => None,
        };
        if let Some(seal) = &seal {
            super::sealed::open_own(&tx, row.id, seal.ring(), head.seq)?;
            self.keys.insert(seal.ring());
        }
        let ring = seal.as_ref().map(SealKey::ring);
        let mut out = Appender {
            tx: &tx,
            origin: row.id,
            key,
            head,
            ts,
            bytes_added: 0,
            since_checkpoint: 0,
            puts: StateBuffer::default(),
            paths: Vec::new(),
        };
        {
            let mut live = tx
                .prepare_cached(
                    "SELECT COALESCE(p.bytes, e.bytes) FROM objects o
                     JOIN entries e ON e.key = (o.origin << 40) | o.seq
                     LEFT JOIN opened p ON p.key = e.key
                     WHERE o.origin = ?1 AND o.path = ?2",
                )
                .ctx("preparing a state lookup")?;
            let mut tombstone = tx
                .prepare_cached(
                    "SELECT COALESCE(p.bytes, e.bytes) FROM tombstones t
                     JOIN entries e ON e.key = (t.origin << 40) | t.seq
                     LEFT JOIN opened p ON p.key = e.key
                     WHERE t.origin = ?1 AND t.path = ?2",
                )
                .ctx("preparing a tombstone lookup")?;
            let mut entry_at = tx
                .prepare_cached(
                    "SELECT COALESCE(p.bytes, e.bytes) FROM entries e
                     LEFT JOIN opened p ON p.key = e.key WHERE e.key = ?1",
                )
                .ctx("preparing an entry lookup")?;
            for change in changes {
                // What follows a delete (container deletes, tombstone lookups) reads the state
                // as it is after every earlier change.
                if change.op == Op::Delete {
                    out.write_puts()?;
                }
                // Where the state keeps this path: its sealed path in a sealed feed.
                // (The readers statement stays plain: readers look for it before they can open
                // anything.)
                let seal = seal
                    .as_ref()
                    .filter(|_| !crate::seal::stays_plain(&change.path));
                if seal.is_some() {
                    // What is sealed follows the rules of a plain entry: a reader opens it
                    // into one. (A plain change is checked as it is encoded.)
                    feed::check_change(change.op, &change.path, &change.body).map_err(
                        |source| StoreError::InvalidChange {
                            path: change.path.clone(),
                            source,
                        },
                    )?;
                }
                let state_path = match seal {
                    Some(seal) => std::borrow::Cow::Owned(seal.sealed_path(&change.path)),
                    None => std::borrow::Cow::Borrowed(change.path.as_str()),
                };
                if skip_no_ops {
                    let current: Option<Vec<u8>> = match out.pending(&state_path) {
                        Some(seq) => Some(
                            entry_at
                                .query_row([entry_key(row.id, seq.0)], |r| r.get(0))
                                .ctx("reading the state")?,
                        ),
                        None => live
                            .query_row((row.id, &*state_path), |r| r.get(0))
                            .optional()
                            .ctx("reading the state")?,
                    };
                    let current = current
                        .map(|bytes| super::sealed::reveal(ring, origin, bytes))
                        .transpose()?;
                    let current = current
                        .as_deref()
                        .map(feed::decode_entry)
                        .transpose()?
                        .map(|e| e.body);
                    let no_op = match change.op {
                        Op::Put => current == Some(change.body.as_slice()),
                        // A delete of an absent object records nothing new, unless it carries a
                        // tombstone not recorded yet (an object created and deleted between
                        // two reads leaves only its tombstone, which clients may have seen).
                        Op::Delete if current.is_some() => false,
                        Op::Delete if change.body.is_empty() => true,
                        Op::Delete => {
                            let recorded: Option<Vec<u8>> = tombstone
                                .query_row((row.id, &*state_path), |r| r.get(0))
                                .optional()
                                .ctx("reading a tombstone")?;
                            // The same tombstone, however it was written (history or list).
                            let recorded = recorded
                                .map(|bytes| super::sealed::reveal(ring, origin, bytes))
                                .transpose()?;
                            let recorded = recorded
                                .as_deref()
                                .map(feed::decode_stored_entry)
                                .transpose()?
                                .and_then(|e| tombstone_stamp(e.body));
                            recorded.is_some() && recorded == tombstone_stamp(&change.body)
                        }
                    };
                    if no_op {
                        continue;
                    }
                }
                match seal {
                    None => out.push(change.op, &change.path, &change.body, None)?,
                    Some(seal) if mode == Mode::SealSwitch => {
                        let body = seal
                            .seal_body(change.op, &change.path, &state_path, &change.body)
                            .map_err(|e| seal_failed(&change.path, e))?;
                        // Deleted plain first: read in order, the plaintext then says
                        // "deleted, then the same again" and never loses the object.
                        out.push(Op::Delete, &change.path, &[], None)?;
                        out.push(
                            change.op,
                            &state_path,
                            &body,
                            Some((&change.path, &change.body)),
                        )?;
                    }
                    Some(seal) => {
                        if change.op == Op::Delete {
                            // The tombstones below a deleted container, which the plain state
                            // drops by their paths, are deleted one by one in a sealed feed.
                            for (path, sealed) in
                                super::sealed::tombstones_below(&tx, row.id, &change.path)?
                            {
                                out.push(Op::Delete, &sealed, &[], Some((&path, &[])))?;
                            }
                        }
                        let body = seal
                            .seal_body(change.op, &change.path, &state_path, &change.body)
                            .map_err(|e| seal_failed(&change.path, e))?;
                        out.push(
                            change.op,
                            &state_path,
                            &body,
                            Some((&change.path, &change.body)),
                        )?;
                    }
                }
            }
        }
        out.write_puts()?;
        let Appender {
            head, bytes_added, ..
        } = out;
        if seal.is_some() {
            super::sealed::set_opened_seq(&tx, head.seq)?;
        }
        let appended = (head.seq.0 - row.head.map_or(0, |h| h.seq.0)) as usize;
        let checkpoint = if appended == 0 {
            None
        } else {
            let cp = Checkpoint::sign(key, head, ts);
            insert_checkpoint(&tx, row.id, &cp)?;
            set_head(&tx, row.id, head, bytes_added)?;
            Some(cp)
        };
        write_cursors(&tx, cursors)?;
        tx.commit().ctx("committing an append")?;
        Ok((checkpoint, appended))
    }

    /// Accepts a verified batch of a foreign (or, during recovery, our own) origin: it must
    /// link to the stored head. Entries already held must match exactly (re-delivery is a
    /// no-op); a mismatch is a fork, whose evidence is stored and the origin frozen. Entries
    /// found damaged here are not compared but replaced by the batch's, when the chain held
    /// confirms them (see `store::damage`). New entries, repairs, the checkpoint, state and
    /// `cursors` commit in one transaction.
    pub fn accept(
        &mut self,
        batch: &VerifiedBatch,
        cursors: &[CursorUpdate],
    ) -> Result<Accepted, StoreError> {
        let done = self.accept_in_one(batch, cursors);
        // Entries repaired without moving the head may open now.
        self.reconsider(batch.origin());
        done.map_err(|e| self.name_full(e))
    }

    /// Accepts consecutive verified batches of one origin, in order, as [`Store::accept`]
    /// would one after the other, but in one transaction when each simply adds to the chain:
    /// what a pull stores while it catches up. Written page by page, a feed whose paths come
    /// in no order (Kinto's UUID4 record ids, a sealed feed's hashed paths) dirties pages all
    /// over the state's B-tree on every commit, and writes each of them again at the next
    /// one; a group writes each once. When a batch of the group does not simply add (a fork,
    /// a gap, a frozen origin, any error), nothing of the group is kept from that try, and the
    /// batches are accepted one by one instead, so that what comes before is kept and the
    /// fork recorded exactly as single accepts do. Returns what was stored (the entries
    /// added and repaired in all, and the head after the last batch stored) and the error
    /// that stopped the rest, if one did: both can be there.
    pub fn accept_all(&mut self, batches: &[VerifiedBatch]) -> AcceptedAll {
        let stopped = |error| AcceptedAll {
            accepted: None,
            error: Some(error),
        };
        let Some(first) = batches.first() else {
            return stopped(StoreError::Feed(FeedError::Malformed("no batch to accept")));
        };
        let origin = first.origin();
        if batches.iter().any(|b| b.origin() != origin) {
            return stopped(StoreError::Feed(FeedError::Malformed(
                "batches of different origins accepted together",
            )));
        }
        let grouped = self.accept_group(batches);
        self.reconsider(origin);
        if let Ok(Some(accepted)) = grouped {
            return AcceptedAll {
                accepted: Some(accepted),
                error: None,
            };
        }
        // Something other than plain additions: one by one, as single accepts (which meet
        // the same error, if it was not the batches', and report it).
        let mut out = AcceptedAll {
            accepted: None,
            error: None,
        };
        for batch in batches {
            match self.accept(batch, &[]) {
                Ok(accepted) => out.accepted = Some(add_up(out.accepted, accepted)),
                Err(e) => {
                    out.error = Some(e);
                    break;
                }
            }
        }
        out
    }

    /// [`Store::accept_all`] in one transaction: `None` (nothing written) when a batch
    /// diverges from the chain held.
    fn accept_group(&mut self, batches: &[VerifiedBatch]) -> Result<Option<Accepted>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx("starting an accept")?;
        let (mut total, mut origin_row) = (None, None);
        let mut state = StateBuffer::default();
        for batch in batches {
            match accept_within(&tx, batch, &mut state)? {
                Step::Added { accepted, row } => {
                    total = Some(add_up(total, accepted));
                    origin_row = Some(row);
                }
                Step::Diverged { .. } => return Ok(None),
            }
        }
        if let Some(row) = origin_row {
            state.flush(&tx, row)?;
        }
        tx.commit().ctx("committing an accept")?;
        Ok(total)
    }

    /// [`Store::accept`], in one transaction.
    fn accept_in_one(
        &mut self,
        batch: &VerifiedBatch,
        cursors: &[CursorUpdate],
    ) -> Result<Accepted, StoreError> {
        let origin = batch.origin();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx("starting an accept")?;
        let mut state = StateBuffer::default();
        match accept_within(&tx, batch, &mut state)? {
            Step::Added { accepted, row } => {
                state.flush(&tx, row)?;
                write_cursors(&tx, cursors)?;
                tx.commit().ctx("committing an accept")?;
                Ok(accepted)
            }
            Step::Diverged { row, at } => {
                // Their entries from the diverging one (or, when only the link showed it, all).
                let from = at.0.saturating_sub(batch.first_seq().0) as usize;
                let evidence = record_fork(
                    &tx,
                    row,
                    origin,
                    at,
                    batch.checkpoint(),
                    &batch.entries()[from..],
                )?;
                tx.commit().ctx("committing fork evidence")?;
                Err(StoreError::Fork(Box::new(evidence)))
            }
        }
    }

    /// Checks a lone checkpoint (its signature first) against the stored chain. A checkpoint
    /// naming a different hash for a seq we hold is a fork: the evidence is stored, the origin
    /// frozen, and [`StoreError::Fork`] returned. A frozen origin gets [`StoreError::Frozen`].
    pub fn observe_checkpoint(&mut self, cp: &Checkpoint) -> Result<CheckpointCheck, StoreError> {
        cp.verify()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx("starting a checkpoint check")?;
        let row = origin_row(&tx, cp.origin, true)?;
        if row.frozen {
            return Err(StoreError::Frozen { origin: cp.origin });
        }
        let head_seq = row.head.map_or(0, |h| h.seq.0);
        if cp.seq.0 > head_seq {
            return Ok(CheckpointCheck::Ahead);
        }
        match held_hash_or_base(&tx, &row, cp.seq.0)? {
            Some(ours) if ours != cp.hash => {
                let evidence =
                    record_fork(&tx, row.id, cp.origin, (cp.seq.0, ours, cp.hash), cp, &[])?;
                tx.commit().ctx("committing fork evidence")?;
                Err(StoreError::Fork(Box::new(evidence)))
            }
            _ => Ok(CheckpointCheck::Consistent),
        }
    }

    /// Commits cursor positions on their own (when a pass produced no entries).
    pub fn set_cursors(&mut self, cursors: &[CursorUpdate]) -> Result<(), StoreError> {
        let tx = self.conn.transaction().ctx("starting a cursor update")?;
        write_cursors(&tx, cursors)?;
        tx.commit().ctx("committing cursors")
    }
}

/// What [`Store::accept_all`] stored, and what stopped it.
#[derive(Debug)]
pub struct AcceptedAll {
    /// The batches stored, summed (see [`Accepted`]); `None` when none was.
    pub accepted: Option<Accepted>,
    /// The error that stopped the batches after those, if one did.
    pub error: Option<StoreError>,
}

/// What one batch does to the chain held, inside a transaction.
enum Step {
    /// Its entries are stored (or were held already), its puts waiting in the state buffer
    /// of the origin's row `row`.
    Added { accepted: Accepted, row: i64 },
    /// It diverges from what is held at `at`: (seq, our hash, their hash). Nothing of it is
    /// written.
    Diverged {
        row: i64,
        at: (u64, EntryHash, EntryHash),
    },
}

/// The sum of two accepts of one origin, in order: the head is the later one's.
fn add_up(total: Option<Accepted>, next: Accepted) -> Accepted {
    match total {
        None => next,
        Some(t) => Accepted {
            added: t.added + next.added,
            head: next.head,
            repaired: t.repaired + next.repaired,
        },
    }
}

/// Accepts `batch` inside `tx` (see [`Store::accept`]): entries, repairs, the checkpoint and
/// the state, or [`Step::Diverged`] with nothing written.
fn accept_within(
    tx: &rusqlite::Transaction<'_>,
    batch: &VerifiedBatch,
    state: &mut StateBuffer,
) -> Result<Step, StoreError> {
    let origin = batch.origin();
    let row = origin_row(tx, origin, true)?;
    if row.frozen {
        return Err(StoreError::Frozen { origin });
    }
    let head_seq = row.head.map_or(0, |h| h.seq.0);
    let first = batch.first_seq().0;
    let last = batch.checkpoint().seq.0;
    if first > head_seq + 1 {
        return Err(StoreError::Gap {
            origin,
            head: Seq(head_seq),
            first: Seq(first),
        });
    }

    // Entries found damaged here are not compared: the batch may replace them.
    let damaged = super::damage::damaged_between(tx, row.id, first.saturating_sub(1), last)?;
    // Compare every entry we already hold (and the link before the batch) with ours.
    let mut divergence = None;
    if first >= 2
        && !damaged.contains(&(first - 1))
        && let Some(ours) = held_hash_or_base(tx, &row, first - 1)?
        && ours != batch.first_prev()
    {
        divergence = Some((first - 1, ours, batch.first_prev()));
    }
    if divergence.is_none() {
        for (i, theirs) in batch.hashes().iter().enumerate() {
            let seq = first + i as u64;
            if seq > head_seq {
                break;
            }
            if damaged.contains(&seq) {
                continue;
            }
            let Some(ours) = held_hash_or_base(tx, &row, seq)? else {
                continue;
            };
            if ours != *theirs {
                divergence = Some((seq, ours, *theirs));
                break;
            }
        }
    }
    if let Some(at) = divergence {
        return Ok(Step::Diverged { row: row.id, at });
    }

    let repaired = if damaged.is_empty() {
        0
    } else {
        super::damage::repair(tx, row.id, row.head, batch, &damaged)?
    };
    let mut added = 0u64;
    let mut bytes_added = 0u64;
    if last > head_seq {
        let skip = (head_seq + 1 - first) as usize;
        let mut insert = tx
            .prepare_cached("INSERT INTO entries (key, hash, bytes) VALUES (?1, ?2, ?3)")
            .ctx("preparing an entry insert")?;
        for (bytes, hash) in batch.entries().iter().zip(batch.hashes()).skip(skip) {
            let entry = feed::decode_entry(bytes)?;
            insert
                .execute((entry_key(row.id, entry.seq.0), &hash.0[..], bytes))
                .ctx("inserting an entry")?;
            // Puts wait to be written in path order, as an append's do (see [`Appender`]);
            // a delete writes them first.
            match entry.op {
                Op::Put => {
                    state.insert(entry.path, entry.seq);
                    if state.full() {
                        state.flush(tx, row.id)?;
                    }
                }
                Op::Delete => {
                    state.flush(tx, row.id)?;
                    apply_to_objects(
                        tx,
                        row.id,
                        entry.seq,
                        entry.op,
                        entry.path,
                        !entry.body.is_empty(),
                    )
                    .ctx("updating the object state")?;
                }
            }
            added += 1;
            bytes_added += bytes.len() as u64;
        }
        drop(insert);
        set_head(tx, row.id, batch.checkpoint().head(), bytes_added)?;
    }
    if batch.checkpoint().seq.0 >= row.base.0 {
        insert_checkpoint(tx, row.id, batch.checkpoint())?;
    }
    let head = if last > head_seq {
        batch.checkpoint().head()
    } else {
        row.head
            .expect("a batch within the stored head implies a head")
    };
    Ok(Step::Added {
        row: row.id,
        accepted: Accepted {
            added,
            head,
            repaired,
        },
    })
}

/// The `last_modified` of a delete's tombstone body (`{"data":{…,"last_modified":N,…}}`).
fn tombstone_stamp(body: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Body {
        data: Stamp,
    }
    #[derive(serde::Deserialize)]
    struct Stamp {
        last_modified: i64,
    }
    serde_json::from_slice::<Body>(body)
        .ok()
        .map(|b| b.data.last_modified)
}

fn origin_row(
    tx: &rusqlite::Transaction<'_>,
    origin: NodeId,
    create: bool,
) -> Result<OriginRow, StoreError> {
    let select = |tx: &rusqlite::Transaction<'_>| {
        tx.query_row(
                        "SELECT id, head_seq, head_hash, frozen_at IS NOT NULL, base_seq, base_hash FROM origins WHERE node_id = ?1",
            [origin.as_bytes().as_slice()],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<Vec<u8>>>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<Vec<u8>>>(5)?,
                ))
            },
        )
        .optional()
        .ctx("reading an origin")
    };
    let found = match select(tx)? {
        Some(found) => found,
        None if create => {
            tx.execute(
                "INSERT INTO origins (node_id) VALUES (?1)",
                [origin.as_bytes().as_slice()],
            )
            .ctx("registering an origin")?;
            select(tx)?.expect("row just inserted")
        }
        None => {
            return Err(StoreError::Sqlite {
                context: "reading an origin",
                source: super::SqlError::internal("the origin row is missing"),
            });
        }
    };
    let (id, seq, hash, frozen, base_seq, base_hash) = found;
    Ok(OriginRow {
        id,
        head: head_from(seq, hash)?,
        frozen,
        base: (base_seq as u64, base_hash.map(hash_from).transpose()?),
    })
}

/// [`held_hash`], knowing the compacted base: at the base seq, the hash its snapshot names;
/// below it, `None`: the entries kept there are checked only as the state (path and body), so
/// their hashes are no evidence of the chain to compare with.
fn held_hash_or_base(
    tx: &rusqlite::Transaction<'_>,
    row: &OriginRow,
    seq: u64,
) -> Result<Option<EntryHash>, StoreError> {
    match row.base {
        (base, Some(hash)) if seq == base => Ok(Some(hash)),
        (base, _) if seq < base => Ok(None),
        _ => held_hash(tx, row.id, seq).map(Some),
    }
}

/// The hash of an entry the store holds (at or below the head); its absence is damage.
fn held_hash(
    tx: &rusqlite::Transaction<'_>,
    origin: i64,
    seq: u64,
) -> Result<EntryHash, StoreError> {
    tx.prepare_cached("SELECT hash FROM entries WHERE key = ?1")
        .and_then(|mut s| {
            s.query_row([entry_key(origin, seq)], |r| r.get::<_, Vec<u8>>(0))
                .optional()
        })
        .ctx("reading an entry hash")?
        .map(hash_from)
        .unwrap_or(Err(StoreError::Feed(FeedError::Malformed(
            "an entry below the head is missing",
        ))))
}

fn set_head(
    tx: &rusqlite::Transaction<'_>,
    origin: i64,
    head: Head,
    bytes_added: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE origins SET head_seq = ?2, head_hash = ?3, bytes = bytes + ?4 WHERE id = ?1",
        (
            origin,
            head.seq.0 as i64,
            &head.hash.0[..],
            bytes_added as i64,
        ),
    )
    .ctx("moving the head")
    .map(drop)
}

fn insert_checkpoint(
    tx: &rusqlite::Transaction<'_>,
    origin: i64,
    cp: &Checkpoint,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO checkpoints (origin, seq, hash, ts, signature) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| s.execute((origin, cp.seq.0 as i64, &cp.hash.0[..], cp.ts as i64, &cp.signature[..])))
    .ctx("storing a checkpoint")
    .map(drop)
}

fn write_cursors(
    tx: &rusqlite::Transaction<'_>,
    cursors: &[CursorUpdate],
) -> Result<(), StoreError> {
    let now = now_ms() as i64;
    for c in cursors {
        if c.value.is_empty() {
            tx.prepare_cached("DELETE FROM cursors WHERE name = ?1")
                .and_then(|mut s| s.execute([&c.name]))
                .ctx("removing a cursor")?;
            continue;
        }
        tx.prepare_cached(
            "INSERT INTO cursors (name, value, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .and_then(|mut s| s.execute((&c.name, &c.value, now)))
        .ctx("storing a cursor")?;
    }
    Ok(())
}

/// Stores fork evidence and freezes the origin. `at` is (seq, our hash, their hash) at the
/// divergence; `theirs` the conflicting checkpoint and `their_entries` the entries linking
/// their hash to it. Our side is the lowest stored checkpoint at or after the seq, with our
/// entries up to it.
fn record_fork(
    tx: &rusqlite::Transaction<'_>,
    origin_row: i64,
    origin: NodeId,
    at: (u64, EntryHash, EntryHash),
    theirs: &Checkpoint,
    their_entries: &[Vec<u8>],
) -> Result<ForkEvidence, StoreError> {
    let (seq, our_hash, their_hash) = at;
    let ours = tx
        .query_row(
            "SELECT seq, hash, ts, signature FROM checkpoints WHERE origin = ?1 AND seq >= ?2 ORDER BY seq LIMIT 1",
            (origin_row, seq as i64),
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, i64>(2)?, r.get::<_, Vec<u8>>(3)?)),
        )
        .optional()
        .ctx("reading our covering checkpoint")?
        // Only a feed started from a snapshot, not yet extended, has none: the snapshot is
        // what the origin signed about that seq, and it is no checkpoint.
        .ok_or(StoreError::Feed(FeedError::Malformed(
            "a peer shows another history at the seq of the snapshot this feed starts from; no checkpoint of ours covers it to keep as fork evidence",
        )))?;
    let ours = Checkpoint {
        origin,
        seq: Seq(ours.0 as u64),
        hash: hash_from(ours.1)?,
        ts: ours.2 as u64,
        signature: ours
            .3
            .try_into()
            .map_err(|_| FeedError::Malformed("stored signature is not 64 bytes"))?,
    };
    let our_entries: Vec<Vec<u8>> = if ours.seq.0 == seq {
        Vec::new()
    } else {
        let mut stmt = tx
            .prepare("SELECT bytes FROM entries WHERE key >= ?1 AND key <= ?2 ORDER BY key")
            .ctx("reading our side of a fork")?;
        let rows = stmt
            .query_map(
                (
                    entry_key(origin_row, seq),
                    entry_key(origin_row, ours.seq.0),
                ),
                |r| r.get(0),
            )
            .ctx("reading our side of a fork")?;
        rows.collect::<rusqlite::Result<_>>()
            .ctx("reading our side of a fork")?
    };
    let their_entries = if theirs.seq.0 == seq {
        Vec::new()
    } else {
        their_entries.to_vec()
    };
    let evidence = ForkEvidence {
        origin,
        seq: Seq(seq),
        our_hash,
        their_hash,
        ours,
        theirs: *theirs,
        our_entries,
        their_entries,
    };
    let now = now_ms() as i64;
    tx.execute(
        "INSERT INTO forks (origin, seq, our_hash, their_hash, ours, theirs, our_entries, their_entries, detected_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        (
            origin_row,
            seq as i64,
            &our_hash.0[..],
            &their_hash.0[..],
            evidence.ours.to_bytes(),
            theirs.to_bytes(),
            ForkEvidence::pack(&evidence.our_entries),
            ForkEvidence::pack(&evidence.their_entries),
            now,
        ),
    )
    .ctx("storing fork evidence")?;
    tx.execute(
        "UPDATE origins SET frozen_at = ?2 WHERE id = ?1 AND frozen_at IS NULL",
        (origin_row, now),
    )
    .ctx("freezing an origin")?;
    Ok(evidence)
}
