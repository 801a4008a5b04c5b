//! Sealed feeds (see [`crate::seal`]): how a node that may read one reads it, and the switch
//! that seals the own feed.
//!
//! Every node stores a sealed origin the same way: its entries verbatim, its state (`objects`,
//! `tombstones`) under the sealed paths, so that verification, compaction, snapshots and
//! serving never need a key. A node that may read one (the origin itself, a reader it grants,
//! a node recovered with its key) opens its entries when it reads them, with the content keys
//! in the store's [`Keyring`]: the own keys derive from the node key, a reader's from its grant
//! in the feed's readers statement, so nothing secret is stored beside the entries, and no
//! second copy of every record sits in the file. What no key re-derives is kept in `opened`,
//! in the entry encoding (the sealed entry's seq, prev, ts and op with the source path and
//! body): the plaintext of a delete without a body (its source path is that of the put before
//! it, which compaction may drop), and every entry opened with keys an archive carried.
//! `opened_paths` keeps which sealed path each source path has: the queries that answer in
//! source paths by prefix or in order (`Store::paths_under`, `Store::children`, a container's
//! tombstones...) read through it. A node without the keys gets [`StoreError::Sealed`].
//! Compaction drops an entry's plaintext with the entry (a trigger), and the source paths the
//! state no longer holds, so nothing outlives what it opens.
//!
//! Two facts live in `meta`: `sealed_from`, the first sealed seq of the own feed, and
//! `opened_seq`, how far the own feed's entries have been opened. Entries recovered from peers
//! arrive sealed; [`Store::seal_own`] (run before the first append) and every append open
//! whatever lies beyond `opened_seq` first. A store opened without a writer (a command beside
//! the daemon) finds its keys with [`Store::unlock`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rusqlite::OptionalExtension;

use super::{Context, SEQ_BITS, Store, StoreError, entry_key};
use crate::feed::{self, Op, Seq};
use crate::identity::{NodeId, NodeKey};
use crate::seal::{self, READERS_PATH, Readers, Ring, SealKey};

/// What [`Store::seal_own`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealing {
    /// The own feed is plain.
    Off,
    /// The own feed is sealed from this seq on.
    On {
        /// The first sealed seq.
        from: Seq,
        /// Whether this call switched it on.
        now: bool,
    },
}

/// The content keys of the sealed feeds this node reads, by origin: what opens their entries
/// when they are read. Filled as feeds are opened (the own feed when it is sealed or appended
/// to, a granted feed when [`Store::open_granted`] opens it) or by [`Store::unlock`]; shared
/// by a writer and the readers opened beside it ([`super::StoreHandle`]), so that what the
/// writer opened, every reader reads. Never written to disk. An archive's keys are not kept
/// here: what they open is kept opened instead.
#[derive(Clone, Default)]
pub(super) struct Keyring(Arc<RwLock<HashMap<NodeId, Arc<Ring>>>>);

impl Keyring {
    /// Keeps `ring` for its origin, unless it holds as many epochs already (the same keys:
    /// every append hands the own ring again); a rotation adds one.
    pub(super) fn insert(&self, ring: &Ring) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if map
            .get(&ring.origin())
            .is_none_or(|held| held.epochs() < ring.epochs())
        {
            map.insert(ring.origin(), Arc::new(ring.up_to(ring.epochs())));
        }
    }

    /// The keys held for `origin`.
    pub(super) fn get(&self, origin: NodeId) -> Option<Arc<Ring>> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(&origin).cloned()
    }
}

/// `bytes` (an entry as stored, or its plaintext from `opened`) with a sealed entry opened:
/// the entry encoding of its seq, prev, ts and op with the source path and body, as `opened`
/// keeps it. Plain entries come back as they are. [`StoreError::Sealed`] when `ring` is `None`
/// (no keys for its origin); a body that does not open is [`StoreError::Unsealable`].
pub(super) fn reveal(
    ring: Option<&Ring>,
    origin: NodeId,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, StoreError> {
    let entry = feed::decode_stored_entry(&bytes)?;
    if !seal::is_sealed(entry.path) {
        return Ok(bytes);
    }
    let Some(ring) = ring else {
        return Err(StoreError::Sealed { origin });
    };
    let unsealable = |source| StoreError::Unsealable {
        origin,
        seq: entry.seq,
        source,
    };
    let plain = match ring.open_entry(&entry) {
        // An epoch this node was never granted (a reader removed before it began).
        Err(seal::SealError::UnknownEpoch { epoch }) => {
            return Err(StoreError::NotGranted {
                origin,
                seq: entry.seq,
                epoch,
            });
        }
        opened => opened.map_err(unsealable)?,
    }
    // A delete without a body keeps its plaintext in `opened`; not found there, this
    // node never opened it.
    .ok_or(StoreError::Sealed { origin })?;
    opened_entry(&entry, &plain)
}

/// The entry encoding of a sealed `entry` opened to `plain`: its seq, prev, ts and op with the
/// source path and body, as `opened` keeps it.
fn opened_entry(entry: &feed::EntryRef<'_>, plain: &seal::Plain) -> Result<Vec<u8>, StoreError> {
    Ok(feed::encode_entry(
        entry.seq,
        entry.prev,
        entry.ts,
        entry.op,
        &plain.path,
        &plain.body,
    )?)
}

/// The first sealed seq of the own feed, if it is sealed.
pub(super) fn sealed_from(tx: &rusqlite::Connection) -> Result<Option<Seq>, StoreError> {
    meta_seq(tx, "sealed_from")
}

fn meta_seq(conn: &rusqlite::Connection, key: &str) -> Result<Option<Seq>, StoreError> {
    let value: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")
        .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
        .ctx("reading the sealing state")?;
    value
        .map(|v| {
            v.parse().map(Seq).map_err(|_| {
                StoreError::Feed(crate::feed::FeedError::Malformed(
                    "a meta seq is not a number",
                ))
            })
        })
        .transpose()
}

fn set_meta_seq(conn: &rusqlite::Connection, key: &str, seq: Seq) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute((key, seq.0.to_string())))
        .ctx("writing the sealing state")
        .map(drop)
}

/// Seals the own feed from the seq after `head`: nothing before it needs opening.
pub(super) fn switch_on(conn: &rusqlite::Connection, head: Seq) -> Result<(), StoreError> {
    set_meta_seq(conn, "sealed_from", head.next())?;
    set_opened_seq(conn, head)
}

/// Records that the own feed's entries are opened up to `seq`.
pub(super) fn set_opened_seq(conn: &rusqlite::Connection, seq: Seq) -> Result<(), StoreError> {
    set_meta_seq(conn, "opened_seq", seq)
}

/// Records the sealed path of `plain_path` and, when given, the plaintext (`opened`, an entry
/// encoding) of the entry at `key`: only what no key re-derives (see the module docs).
pub(super) fn record_opened(
    conn: &rusqlite::Connection,
    origin: i64,
    key: i64,
    opened: Option<&[u8]>,
    plain_path: &str,
    sealed_path: &str,
) -> Result<(), StoreError> {
    if let Some(opened) = opened {
        record_plaintext(conn, key, opened)?;
    }
    record_path(conn, origin, plain_path, sealed_path)
}

/// Keeps the plaintext (an entry encoding) of the sealed entry at `key`.
pub(super) fn record_plaintext(
    conn: &rusqlite::Connection,
    key: i64,
    opened: &[u8],
) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT OR REPLACE INTO opened (key, bytes) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute((key, opened)))
        .ctx("keeping a sealed entry's plaintext")
        .map(drop)
}

/// Records that the source path `plain_path` of `origin` has the sealed path `sealed_path`.
pub(super) fn record_path(
    conn: &rusqlite::Connection,
    origin: i64,
    plain_path: &str,
    sealed_path: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO opened_paths (origin, path, sealed) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut s| s.execute((origin, plain_path, sealed_path)))
    .ctx("keeping a sealed path")
    .map(drop)
}

/// The tombstones of a sealed feed below `path` (source paths starting with `path/`), as
/// (source path, sealed path), in the order of their sealed paths: the order of their deletes
/// tells holders nothing of how the source paths sort.
pub(super) fn tombstones_below(
    conn: &rusqlite::Connection,
    origin: i64,
    path: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT p.path, p.sealed FROM opened_paths p
             JOIN tombstones t ON t.origin = p.origin AND t.path = p.sealed
             WHERE p.origin = ?1 AND p.path >= ?2 AND p.path < ?3 ORDER BY p.sealed",
        )
        .ctx("reading the tombstones below a container")?;
    let rows = stmt
        .query_map((origin, format!("{path}/"), format!("{path}0")), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .ctx("reading the tombstones below a container")?;
    rows.collect::<rusqlite::Result<_>>()
        .ctx("reading the tombstones below a container")
}

/// Opens the own feed's sealed entries after `opened_seq` up to `head` (entries recovered from
/// peers, or written before a crash of an older build), and learns `sealed_from` from them.
pub(super) fn open_own(
    conn: &rusqlite::Connection,
    origin: i64,
    ring: &Ring,
    head: Seq,
) -> Result<u64, StoreError> {
    let pass = open_feed(conn, origin, ring, head, "opened_seq", Keep::Underivable)?;
    if let Some((first, source)) = &pass.first_sealed
        && sealed_from(conn)?.is_none_or(|s| s > *first)
    {
        let from = sealing_start(conn, origin, *first, source.as_deref())?;
        set_meta_seq(conn, "sealed_from", from)?;
    }
    Ok(pass.opened)
}

/// The seq the own feed was sealed from, learnt from its entries (after a recovery): `first`,
/// the first sealed entry (whose source path is `source`, when it names one), unless the
/// plain entries right before it were written sealing already: the plain delete of that same
/// source path that a switch writes before re-recording the object sealed, and readers
/// statements, which stay plain and are written only once a feed is sealed. So the node
/// states the same `sealed_from` as before it was lost.
fn sealing_start(
    conn: &rusqlite::Connection,
    origin: i64,
    first: Seq,
    source: Option<&str>,
) -> Result<Seq, StoreError> {
    let plain_at = |seq: u64| -> Result<Option<(Op, String, bool)>, StoreError> {
        if seq == 0 {
            return Ok(None);
        }
        let bytes: Option<Vec<u8>> = conn
            .prepare_cached("SELECT bytes FROM entries WHERE key = ?1")
            .and_then(|mut s| {
                s.query_row([entry_key(origin, seq)], |r| r.get(0))
                    .optional()
            })
            .ctx("reading an entry")?;
        let Some(bytes) = bytes else { return Ok(None) };
        let entry = feed::decode_stored_entry(&bytes)?;
        Ok((!seal::is_sealed(entry.path))
            .then(|| (entry.op, entry.path.to_owned(), entry.body.is_empty())))
    };
    let mut from = first.0;
    if let Some(source) = source
        && plain_at(from - 1)?
            .is_some_and(|(op, path, empty)| op == Op::Delete && empty && path == source)
    {
        from -= 1;
    }
    while plain_at(from - 1)?.is_some_and(|(_, path, _)| seal::stays_plain(&path)) {
        from -= 1;
    }
    Ok(Seq(from))
}

/// What one pass of [`open_feed`] did.
struct OpenPass {
    opened: u64,
    /// The first sealed entry opened, and its source path when it names one.
    first_sealed: Option<(Seq, Option<String>)>,
}

/// Where the plaintext of the entries a pass opens is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Only what no key re-derives (deletes without a body): the keys come from the node key.
    Underivable,
    /// Every entry: the keys came from outside (an archive) and are not kept.
    All,
}

/// Opens `origin`'s sealed entries after the seq kept in `meta` under `progress` up to `head`
/// with `ring` (each must open: a wrong key or an altered entry stops the pass), records their
/// source paths and what `keep` says of their plaintext, and moves `progress` to `head`.
fn open_feed(
    conn: &rusqlite::Connection,
    origin: i64,
    ring: &Ring,
    head: Seq,
    progress: &str,
    keep: Keep,
) -> Result<OpenPass, StoreError> {
    let done = meta_seq(conn, progress)?.unwrap_or(Seq(0));
    let mut pass = OpenPass {
        opened: 0,
        first_sealed: None,
    };
    if done >= head {
        return Ok(pass);
    }
    {
        let mut stmt = conn
            .prepare(
                "SELECT e.key, e.bytes FROM entries e LEFT JOIN opened p ON p.key = e.key
                 WHERE e.key > ?1 AND e.key <= ?2 AND p.key IS NULL ORDER BY e.key",
            )
            .ctx("reading sealed entries")?;
        let mut rows = stmt
            .query((entry_key(origin, done.0), entry_key(origin, head.0)))
            .ctx("reading sealed entries")?;
        // Sealed path -> source path, for deletes without a body. Read once per pass (passes
        // are rare: after a recovery), rather than kept as an index every append would pay.
        let mut reverse: Option<std::collections::HashMap<String, String>> = None;
        while let Some(r) = rows.next().ctx("reading sealed entries")? {
            let key: i64 = r.get(0).ctx("reading sealed entries")?;
            let bytes: Vec<u8> = r.get(1).ctx("reading sealed entries")?;
            let entry = feed::decode_stored_entry(&bytes)?;
            if !seal::is_sealed(entry.path) {
                continue;
            }
            let seq = Seq((key & ((1 << SEQ_BITS) - 1)) as u64);
            let first = pass.first_sealed.is_none();
            if first {
                pass.first_sealed = Some((seq, None));
            }
            let plain = match ring.open_entry(&entry) {
                Ok(Some(plain)) => plain,
                Ok(None) => {
                    // A delete without a body: its path is that of the put before it.
                    let reverse = match &mut reverse {
                        Some(map) => map,
                        None => reverse.insert(sealed_paths(conn, origin)?),
                    };
                    let Some(path) = reverse.get(entry.path).cloned() else {
                        continue;
                    };
                    seal::Plain {
                        path,
                        body: Vec::new(),
                    }
                }
                Err(source) => {
                    return Err(StoreError::Unsealable {
                        origin: ring.origin(),
                        seq,
                        source,
                    });
                }
            };
            if first {
                pass.first_sealed = Some((seq, Some(plain.path.clone())));
            }
            let plain_entry = if keep == Keep::All || entry.body.is_empty() {
                Some(opened_entry(&entry, &plain)?)
            } else {
                None
            };
            record_opened(
                conn,
                origin,
                key,
                plain_entry.as_deref(),
                &plain.path,
                entry.path,
            )?;
            if let Some(map) = &mut reverse {
                map.insert(entry.path.to_owned(), plain.path);
            }
            pass.opened += 1;
        }
    }
    set_meta_seq(conn, progress, head)?;
    Ok(pass)
}

/// The readers statement in `origin`'s state, if it holds one (see [`crate::seal`]).
pub(super) fn readers_of(
    conn: &rusqlite::Connection,
    origin: i64,
    id: NodeId,
) -> Result<Option<Readers>, StoreError> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached(
            "SELECT e.bytes FROM objects o JOIN entries e ON e.key = (o.origin << 40) | o.seq
             WHERE o.origin = ?1 AND o.path = ?2",
        )
        .and_then(|mut s| s.query_row((origin, READERS_PATH), |r| r.get(0)).optional())
        .ctx("reading the readers statement")?;
    bytes
        .map(|bytes| {
            let entry = feed::decode_stored_entry(&bytes)?;
            Readers::parse(entry.body).map_err(|source| StoreError::Readers { origin: id, source })
        })
        .transpose()
}

/// The keys the own feed is sealed with now: every epoch up to its readers statement's.
pub(super) fn own_seal_key(
    conn: &rusqlite::Connection,
    origin: i64,
    key: &NodeKey,
) -> Result<SealKey, StoreError> {
    let epoch = readers_of(conn, origin, key.id())?.map_or(0, |r| r.epoch);
    Ok(SealKey::of_node_at(key, epoch))
}

/// Whether `origin` (row `row`) holds sealed paths (objects or tombstones) and this node has
/// not opened its feed up to its head (a holder, or a reader removed since): an answer in
/// source paths would then leave out what it cannot read, and must be [`StoreError::Sealed`].
pub(super) fn unread(
    conn: &rusqlite::Connection,
    row: i64,
    origin: NodeId,
) -> Result<bool, StoreError> {
    if !holds_sealed(conn, row)? {
        return Ok(false);
    }
    conn.prepare_cached(
        "SELECT (SELECT head_seq FROM origins WHERE id = ?1) > COALESCE((SELECT CAST(value AS
            INTEGER) FROM meta WHERE key = CASE WHEN (SELECT value FROM meta WHERE key =
            'node_id') = ?2 THEN 'opened_seq' ELSE ?3 END), 0)",
    )
    .and_then(|mut s| {
        s.query_row((row, origin.to_string(), progress_key(origin)), |r| {
            r.get(0)
        })
    })
    .ctx("checking what this node reads of a sealed feed")
}

/// Whether the state of `origin` (row `row`) holds sealed paths: a live object or a tombstone.
fn holds_sealed(conn: &rusqlite::Connection, row: i64) -> Result<bool, StoreError> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM objects WHERE origin = ?1 AND path >= '/sealed/'
            AND path < '/sealed0') OR EXISTS (SELECT 1 FROM tombstones WHERE origin = ?1
            AND path >= '/sealed/' AND path < '/sealed0')",
    )
    .and_then(|mut s| s.query_row([row], |r| r.get(0)))
    .ctx("checking whether a feed is sealed")
}

/// Where `meta` keeps how far another origin's feed is opened here.
fn progress_key(origin: NodeId) -> String {
    format!("opened_seq {origin}")
}

/// Where `meta` keeps the last readers statement of another origin that granted this node
/// keys: once the origin removes this node, what it opened before still opens with it. Its
/// grant opens only with this node's key, and is in the feed anyway.
fn grant_key(origin: NodeId) -> String {
    format!("granted {origin}")
}

/// Keeps `readers` as the last statement of `origin` that granted this node keys.
fn keep_grant(
    conn: &rusqlite::Connection,
    origin: NodeId,
    readers: &Readers,
) -> Result<(), StoreError> {
    let body = String::from_utf8(readers.to_body()).map_err(|_| StoreError::Readers {
        origin,
        source: seal::SealError::Statement("the statement is not UTF-8"),
    })?;
    conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute((grant_key(origin), body)))
        .ctx("keeping a readers grant")
        .map(drop)
}

/// The keys the last statement of `origin` that granted this node gives it (see
/// [`grant_key`]), if one was kept and still opens.
fn kept_grant(
    conn: &rusqlite::Connection,
    origin: NodeId,
    key: &NodeKey,
) -> Result<Option<Ring>, StoreError> {
    let body: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")
        .and_then(|mut s| s.query_row([grant_key(origin)], |r| r.get(0)).optional())
        .ctx("reading a kept readers grant")?;
    Ok(body
        .and_then(|body| Readers::parse(body.as_bytes()).ok())
        .and_then(|readers| Ring::from_grant(origin, &readers, key).ok().flatten()))
}

/// What [`Store::open_granted`] did.
#[derive(Debug, Default)]
pub struct Granted {
    /// The origins opened further, with how many entries each.
    pub opened: Vec<(NodeId, u64)>,
    /// Sealed origins held whose readers statement does not name this node.
    pub refused: Vec<NodeId>,
    /// Origins that could not be opened, and why (a statement or grant that does not parse or
    /// open, an entry that does not open): the others were opened all the same.
    pub failed: Vec<(NodeId, StoreError)>,
}

/// Forgets the source paths of `origin` (row) whose sealed paths are neither live nor a
/// tombstone: a compaction drops them as a plain state drops such paths. Every later entry of
/// a path not held names it again (a put carries it; a delete without a body only follows a
/// live object or a tombstone).
pub(super) fn forget_dropped_paths(
    conn: &rusqlite::Connection,
    origin: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "DELETE FROM opened_paths WHERE origin = ?1
         AND NOT EXISTS (SELECT 1 FROM objects o WHERE o.origin = ?1 AND o.path = opened_paths.sealed)
         AND NOT EXISTS (SELECT 1 FROM tombstones t WHERE t.origin = ?1 AND t.path = opened_paths.sealed)",
    )
    .and_then(|mut s| s.execute([origin]))
    .ctx("forgetting dropped source paths")
    .map(drop)
}

/// An entry's bytes as a column gives them: a blob, or the store is damaged.
fn entry_bytes(value: rusqlite::types::ValueRef<'_>) -> Result<&[u8], StoreError> {
    value
        .as_blob()
        .map_err(|_| StoreError::Feed(crate::feed::FeedError::Malformed("entry bytes not a blob")))
}

/// Every (sealed path, source path) of `origin` this node knows.
fn sealed_paths(
    conn: &rusqlite::Connection,
    origin: i64,
) -> Result<std::collections::HashMap<String, String>, StoreError> {
    let mut stmt = conn
        .prepare("SELECT sealed, path FROM opened_paths WHERE origin = ?1")
        .ctx("reading sealed paths")?;
    let rows = stmt
        .query_map([origin], |r| Ok((r.get(0)?, r.get(1)?)))
        .ctx("reading sealed paths")?;
    rows.collect::<rusqlite::Result<_>>()
        .ctx("reading sealed paths")
}

impl Store {
    /// Whether the own feed is sealed, and from which seq.
    pub fn sealed_from(&self) -> Result<Option<Seq>, StoreError> {
        sealed_from(&self.conn)
    }

    /// Brings the own feed's sealing in line with `[node] seal` (`want`; `None` when unset):
    /// opens what was recovered sealed, refuses to turn sealing off, and switches it on when
    /// asked. Switching on re-records the whole live state sealed in one append (each object
    /// and tombstone sealed, its plain path deleted), so that once the snapshots from before
    /// expire, holders keep nothing plain. An unset `seal` keeps a sealed feed sealed.
    pub fn seal_own(&mut self, key: &NodeKey, want: Option<bool>) -> Result<Sealing, StoreError> {
        let origin = key.id();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .ctx("starting to seal")?;
        let Some(row) = tx
            .query_row(
                "SELECT id, head_seq FROM origins WHERE node_id = ?1",
                [&origin.as_bytes()[..]],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()
            .ctx("reading the own origin")?
        else {
            // Nothing recorded yet: a first append seals from seq 1.
            return match want {
                Some(true) => {
                    set_meta_seq(&tx, "sealed_from", Seq(1))?;
                    tx.commit().ctx("committing the sealing")?;
                    Ok(Sealing::On {
                        from: Seq(1),
                        now: true,
                    })
                }
                _ => Ok(Sealing::Off),
            };
        };
        let (id, head) = row;
        let seal = own_seal_key(&tx, id, key)?;
        open_own(&tx, id, seal.ring(), Seq(head))?;
        let found = sealed_from(&tx)?;
        tx.commit().ctx("committing opened entries")?;
        if found.is_some() {
            self.keys.insert(seal.ring());
        }
        match (found, want) {
            (Some(from), Some(false)) => Err(StoreError::SealOff { from }),
            (Some(from), _) => Ok(Sealing::On { from, now: false }),
            (None, Some(true)) => {
                let mirroring: Option<i64> = self
                    .conn
                    .query_row(
                        "SELECT id FROM migrations WHERE state = 'mirroring' AND origin = ?1 LIMIT 1",
                        [&origin.as_bytes()[..]],
                        |r| r.get(0),
                    )
                    .optional()
                    .ctx("reading migrations")?;
                if let Some(migration) = mirroring {
                    return Err(StoreError::SealBusy { migration });
                }
                let from = self.switch_sealing_on(key, id)?;
                Ok(Sealing::On { from, now: true })
            }
            (None, _) => Ok(Sealing::Off),
        }
    }

    /// The readers statement in `origin`'s state, if it holds one.
    pub fn readers(&self, origin: NodeId) -> Result<Option<Readers>, StoreError> {
        match self.origin_row_id(origin)? {
            Some(row) => readers_of(&self.conn, row, origin),
            None => Ok(None),
        }
    }

    /// Whether `origin` is sealed and this node has not opened it up to its head: it holds
    /// it without reading it (see [`StoreError::Sealed`]).
    pub fn holds_unread(&self, origin: NodeId) -> Result<bool, StoreError> {
        match self.origin_row_id(origin)? {
            Some(row) => unread(&self.conn, row, origin),
            None => Ok(false),
        }
    }

    /// Brings the readers statement of the own sealed feed in line with `wanted` (the peers
    /// with `read = true`): grants the keys to each new reader and, when one is gone, starts a
    /// new epoch granted to those who remain (see [`crate::seal`]). Writes nothing when the
    /// statement already says so; returns the statement written. A plain feed has no keys to
    /// grant: [`StoreError::Readers`] when `wanted` is not empty.
    pub fn set_readers(
        &mut self,
        key: &NodeKey,
        wanted: &[NodeId],
    ) -> Result<Option<Readers>, StoreError> {
        self.write_readers(key, wanted, false)
    }

    /// Starts a new epoch of the own sealed feed, granted to the same readers: what is sealed
    /// from now on opens only with a key nobody held before (not an archive written with
    /// `export --archive --decrypt`, not a reader removed earlier, not a copy of a reader's
    /// grants). Returns the statement written and the seq it was written at.
    /// [`StoreError::NotSealed`] on a plain feed.
    pub fn rotate_key(&mut self, key: &NodeKey) -> Result<(Readers, Seq), StoreError> {
        let me = key.id();
        if sealed_from(&self.conn)?.is_none() {
            return Err(StoreError::NotSealed {
                origin: me,
                detail: "it has no content key to rotate (set seal = true under [node] to seal it)",
            });
        }
        let readers: Vec<NodeId> = self
            .readers(me)?
            .map(|r| r.readers.keys().filter_map(|id| id.parse().ok()).collect())
            .unwrap_or_default();
        let statement = self
            .write_readers(key, &readers, true)?
            .expect("a rotation always writes a statement");
        let seq = self.head(me)?.map_or(Seq(0), |h| h.seq);
        Ok((statement, seq))
    }

    /// [`Store::set_readers`]; with `rotate`, a new epoch even when no reader is removed.
    fn write_readers(
        &mut self,
        key: &NodeKey,
        wanted: &[NodeId],
        rotate: bool,
    ) -> Result<Option<Readers>, StoreError> {
        let me = key.id();
        if sealed_from(&self.conn)?.is_none() {
            if wanted.is_empty() {
                return Ok(None);
            }
            return Err(StoreError::Readers {
                origin: me,
                source: seal::SealError::Statement(
                    "read = true needs a sealed feed ([node] seal = true): every holder already reads a plain one",
                ),
            });
        }
        let current = match self.origin_row_id(me)? {
            Some(row) => readers_of(&self.conn, row, me)?,
            None => None,
        }
        .unwrap_or_default();
        let wanted: std::collections::BTreeSet<String> = wanted
            .iter()
            .filter(|id| **id != me)
            .map(ToString::to_string)
            .collect();
        if !rotate && current.readers.keys().eq(wanted.iter()) {
            return Ok(None);
        }
        let bump = rotate || current.readers.keys().any(|id| !wanted.contains(id));
        let epoch = current.epoch + u32::from(bump);
        if epoch >= seal::MAX_EPOCHS {
            return Err(StoreError::Readers {
                origin: me,
                source: seal::SealError::Statement("too many epochs"),
            });
        }
        let keys = SealKey::of_node_at(key, epoch);
        let mut next = Readers {
            epoch,
            readers: Default::default(),
        };
        for id in wanted {
            let grant = match current.readers.get(&id) {
                Some(grant) if !bump => grant.clone(),
                _ => {
                    let reader: NodeId = id.parse().map_err(|_| StoreError::Readers {
                        origin: me,
                        source: seal::SealError::Statement("a reader id does not parse"),
                    })?;
                    keys.grant(&reader)
                        .map_err(|source| StoreError::Readers { origin: me, source })?
                }
            };
            next.readers.insert(id, grant);
        }
        let change = super::Change {
            op: Op::Put,
            path: READERS_PATH.to_owned(),
            body: next.to_body(),
        };
        self.append(key, &[change], &[])?;
        Ok(Some(next))
    }

    /// Opens what this node may read of the other origins it holds: each sealed origin whose
    /// readers statement grants this node keys, up to its head. Returns, per origin opened,
    /// how many entries were opened, the sealed origins held that do not grant this node (or
    /// no longer do), and those that failed: one origin's bad statement stops only that
    /// origin. Errors of the store itself end the pass.
    pub fn open_granted(&mut self, key: &NodeKey) -> Result<Granted, StoreError> {
        let me = key.id();
        let mut out = Granted::default();
        // Only origins with a readers statement: one indexed probe each, inside SQLite, so
        // that a node holding thousands of plain origins pays next to nothing per change.
        let origins: Vec<(i64, Vec<u8>, i64)> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT o.id, o.node_id, o.head_seq FROM origins o WHERE o.node_id != ?1
                     AND EXISTS (SELECT 1 FROM objects s WHERE s.origin = o.id AND s.path = ?2)",
                )
                .ctx("listing origins")?;
            let rows = stmt
                .query_map((&me.as_bytes()[..], READERS_PATH), |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .ctx("listing origins")?;
            rows.collect::<rusqlite::Result<_>>()
                .ctx("listing origins")?
        };
        for (row, node, head) in origins {
            let Some(id) = <[u8; 32]>::try_from(node.as_slice())
                .ok()
                .and_then(|b| NodeId::from_bytes(b).ok())
            else {
                continue;
            };
            // Opened up to its head already: nothing to unwrap or read.
            if meta_seq(&self.conn, &progress_key(id))?.is_some_and(|done| done.0 >= head as u64) {
                continue;
            }
            // Found closed, and nothing of it stored since: not read again (a statement of any
            // size is parsed once per change of its origin, not on every change of the store),
            // only reported again when it did not grant this node.
            if let Some(&refused) = self.unopenable.get(&row) {
                if refused {
                    out.refused.push(id);
                }
                continue;
            }
            // What one origin signed (a statement that does not parse, a grant that does not
            // open, an entry that does not) stops that origin only, never the others.
            match self.open_one(key, id, row, Seq(head as u64)) {
                Ok(Some(0)) => {}
                Ok(Some(n)) => out.opened.push((id, n)),
                Ok(None) => {
                    self.unopenable.insert(row, true);
                    out.refused.push(id);
                }
                Err(
                    e @ (StoreError::Readers { .. }
                    | StoreError::Unsealable { .. }
                    | StoreError::Feed(_)),
                ) => {
                    self.unopenable.insert(row, false);
                    out.failed.push((id, e));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The epoch of the newest sealed entry of `origin` at or below `at` (read back from
    /// `at`, past plain entries and deletes without a body): the last content key an archive
    /// of it up to `at` needs. `None` when it has no sealed entry there.
    pub fn newest_sealed_epoch(&self, origin: NodeId, at: Seq) -> Result<Option<u32>, StoreError> {
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(None);
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT bytes FROM entries WHERE key > ?1 AND key <= ?2 ORDER BY key DESC",
            )
            .ctx("reading sealed entries")?;
        let mut rows = stmt
            .query((entry_key(row, 0), entry_key(row, at.0)))
            .ctx("reading sealed entries")?;
        while let Some(r) = rows.next().ctx("reading sealed entries")? {
            let entry = feed::decode_stored_entry(entry_bytes(
                r.get_ref(0).ctx("reading sealed entries")?,
            )?)?;
            if seal::is_sealed(entry.path)
                && let Some(epoch) = seal::epoch_of(entry.body)
            {
                return Ok(Some(epoch));
            }
        }
        Ok(None)
    }

    /// Forgets that [`Store::open_granted`] found `origin` closed: something it holds of it
    /// changed (an accept, a repair, a base), so the next pass reads it again.
    pub(super) fn reconsider(&mut self, origin: NodeId) {
        if let Ok(Some(row)) = self.origin_row_id(origin) {
            self.unopenable.remove(&row);
        }
    }

    /// The content keys this node holds for `origin`, to carry in an archive
    /// (`export --archive --decrypt`): every epoch of its own feed, or what `origin` grants
    /// it. [`StoreError::Sealed`] when it may not read `origin`; [`StoreError::NotSealed`] when
    /// `origin` is not sealed (an archive of it is readable as it is).
    pub fn content_keys(&self, key: &NodeKey, origin: NodeId) -> Result<Ring, StoreError> {
        let not_sealed = || StoreError::NotSealed {
            origin,
            detail: "its archive is readable without keys (leave out --decrypt)",
        };
        let Some(row) = self.origin_row_id(origin)? else {
            return Err(not_sealed());
        };
        if origin == key.id() {
            if sealed_from(&self.conn)?.is_none() {
                return Err(not_sealed());
            }
            return Ok(own_seal_key(&self.conn, row, key)?.into_ring());
        }
        let Some(readers) = readers_of(&self.conn, row, origin)? else {
            return Err(if holds_sealed(&self.conn, row)? {
                StoreError::Sealed { origin }
            } else {
                not_sealed()
            });
        };
        Ring::from_grant(origin, &readers, key)
            .map_err(|source| StoreError::Readers { origin, source })?
            .ok_or(StoreError::Sealed { origin })
    }

    /// Opens `origin` (row `row`) up to `head` with what its readers statement grants this
    /// node: how many entries were opened, `None` when it grants nothing (or holds no
    /// statement and is not opened here).
    fn open_one(
        &mut self,
        key: &NodeKey,
        origin: NodeId,
        row: i64,
        head: Seq,
    ) -> Result<Option<u64>, StoreError> {
        let Some(readers) = readers_of(&self.conn, row, origin)? else {
            return Ok(Some(0));
        };
        let Some(ring) = Ring::from_grant(origin, &readers, key)
            .map_err(|source| StoreError::Readers { origin, source })?
        else {
            // Removed: what it opened before still opens with the grant it had.
            if let Some(ring) = kept_grant(&self.conn, origin, key)? {
                self.keys.insert(&ring);
            }
            return Ok(None);
        };
        keep_grant(&self.conn, origin, &readers)?;
        let opened = self.open_in_one(row, &ring, head, Keep::Underivable)?;
        self.keys.insert(&ring);
        Ok(Some(opened))
    }

    /// [`open_feed`] of another origin (row `row`) up to `head`, in one transaction.
    fn open_in_one(
        &mut self,
        row: i64,
        ring: &Ring,
        head: Seq,
        keep: Keep,
    ) -> Result<u64, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .ctx("starting to open a feed")?;
        let pass = open_feed(&tx, row, ring, head, &progress_key(ring.origin()), keep)?;
        tx.commit().ctx("committing opened entries")?;
        Ok(pass.opened)
    }

    /// Finds the content keys of the feeds this node reads (the own feed when it is sealed,
    /// each feed whose readers statement grants this node keys, and, for a feed that removed
    /// this node, the grant it had) and keeps them in the store's keyring, so that a store
    /// opened beside the writer ([`Store::open_read_only`]) reads them as the writer does.
    /// Opens nothing and writes nothing: the queries that answer by source path prefix
    /// (`paths_under`, `children`) stay [`StoreError::Sealed`] for a feed until the writer
    /// has opened it up to its head. A statement that does not parse or grant leaves its
    /// origin sealed here.
    pub fn unlock(&self, key: &NodeKey) -> Result<(), StoreError> {
        let me = key.id();
        if let Some(row) = self.origin_row_id(me)?
            && sealed_from(&self.conn)?.is_some()
        {
            self.keys.insert(own_seal_key(&self.conn, row, key)?.ring());
        }
        let origins: Vec<(i64, Vec<u8>)> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT o.id, o.node_id FROM origins o WHERE o.node_id != ?1
                     AND EXISTS (SELECT 1 FROM objects s WHERE s.origin = o.id AND s.path = ?2)",
                )
                .ctx("listing origins")?;
            let rows = stmt
                .query_map((&me.as_bytes()[..], READERS_PATH), |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .ctx("listing origins")?;
            rows.collect::<rusqlite::Result<_>>()
                .ctx("listing origins")?
        };
        for (row, node) in origins {
            let Some(id) = <[u8; 32]>::try_from(node.as_slice())
                .ok()
                .and_then(|b| NodeId::from_bytes(b).ok())
            else {
                continue;
            };
            let granted = match readers_of(&self.conn, row, id) {
                Ok(Some(readers)) => Ring::from_grant(id, &readers, key).ok().flatten(),
                _ => None,
            };
            // Removed since: what it opened before still opens with the grant it had.
            if let Some(ring) = granted.or(kept_grant(&self.conn, id, key)?) {
                self.keys.insert(&ring);
            }
        }
        Ok(())
    }

    /// Opens every sealed entry of `ring`'s origin held here up to `up_to` with `ring` (the
    /// keys an archive carries, up to its last entry): all must open, or nothing is kept.
    /// Returns how many were opened.
    pub fn open_with(&mut self, ring: &Ring, up_to: Seq) -> Result<u64, StoreError> {
        let origin = ring.origin();
        self.reconsider(origin);
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(0);
        };
        let head = self.head(origin)?.map_or(Seq(0), |h| h.seq).min(up_to);
        // The archive's keys are not kept: what they open is.
        self.open_in_one(row, ring, head, Keep::All)
    }

    /// Seals the own feed from the next seq, re-recording the live state sealed.
    fn switch_sealing_on(&mut self, key: &NodeKey, origin: i64) -> Result<Seq, StoreError> {
        // The plain state: tombstones first, deepest first (a plain delete drops the plain
        // tombstones below it, which must be sealed before), then the objects.
        let mut changes = Vec::new();
        for (table, op) in [("tombstones", Op::Delete), ("objects", Op::Put)] {
            let mut stmt = self
                .conn
                .prepare(&format!(
                    "SELECT e.bytes FROM {table} s JOIN entries e ON e.key = (s.origin << 40) | s.seq
                     WHERE s.origin = ?1 ORDER BY s.path DESC"
                ))
                .ctx("reading the state to seal")?;
            let mut rows = stmt.query([origin]).ctx("reading the state to seal")?;
            while let Some(r) = rows.next().ctx("reading the state to seal")? {
                let entry = feed::decode_stored_entry(entry_bytes(
                    r.get_ref(0).ctx("reading the state to seal")?,
                )?)?;
                if seal::is_sealed(entry.path) || seal::stays_plain(entry.path) {
                    continue;
                }
                changes.push(super::Change {
                    op,
                    path: entry.path.to_owned(),
                    body: entry.body.to_vec(),
                });
            }
        }
        self.append_sealing_switch(key, changes)
    }
}

/// Counts the plaintext kept for `origin` (tests, status).
#[cfg(test)]
pub(super) fn opened_count(conn: &rusqlite::Connection, origin: i64) -> i64 {
    conn.query_row(
        "SELECT count(*) FROM opened WHERE key > ?1 AND key <= ?2",
        (
            entry_key(origin, 0),
            entry_key(origin, crate::feed::MAX_SEQ),
        ),
        |r| r.get(0),
    )
    .unwrap()
}
