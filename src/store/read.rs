//! Read-only queries: heads, entries, checkpoints, state, cursors and fork evidence.

use rusqlite::OptionalExtension;

use super::{Context, SEQ_BITS, Store, StoreError, entry_key, hash_from, head_from};
use crate::feed::{Checkpoint, EntryHash, FeedError, ForkEvidence, Head, Seq};
use crate::identity::NodeId;

/// One origin as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginInfo {
    /// The origin.
    pub id: NodeId,
    /// Whether it is this node's own feed.
    pub is_self: bool,
    /// Its head, if any entry is held.
    pub head: Option<Head>,
    /// Total size of the stored entries, in bytes.
    pub bytes: u64,
    /// Whether fork evidence froze it.
    pub frozen: bool,
}

/// An entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// Its seq.
    pub seq: Seq,
    /// BLAKE3 of `bytes`, as recorded when stored.
    pub hash: EntryHash,
    /// The entry, verbatim.
    pub bytes: Vec<u8>,
}

impl Store {
    /// Every origin held, own first, then by node id.
    pub fn origins(&self) -> Result<Vec<OriginInfo>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT node_id, is_self, head_seq, head_hash, bytes, frozen_at IS NOT NULL
                 FROM origins ORDER BY is_self DESC, node_id",
            )
            .ctx("listing origins")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<Vec<u8>>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, bool>(5)?,
                ))
            })
            .ctx("listing origins")?;
        let mut out = Vec::new();
        for row in rows {
            let (id, is_self, seq, hash, bytes, frozen) = row.ctx("listing origins")?;
            out.push(OriginInfo {
                id: node_id_from(id)?,
                is_self,
                head: head_from(seq, hash)?,
                bytes: bytes as u64,
                frozen,
            });
        }
        Ok(out)
    }

    /// The head of `origin`'s feed, or `None` if nothing is held.
    pub fn head(&self, origin: NodeId) -> Result<Option<Head>, StoreError> {
        Ok(self.head_if_held(origin)?.flatten())
    }

    /// The hash of `origin`'s entry at `seq`, if held.
    pub fn entry_hash(&self, origin: NodeId, seq: Seq) -> Result<Option<EntryHash>, StoreError> {
        if seq.0 == 0 {
            return Ok(None);
        }
        Ok(self
            .entries_after(origin, Seq(seq.0 - 1), 1)?
            .pop()
            .filter(|e| e.seq == seq)
            .map(|e| e.hash))
    }

    /// Like [`Store::head`], but `None` when the store does not know the origin at all and
    /// `Some(None)` when it does but holds no entry of it.
    pub fn head_if_held(&self, origin: NodeId) -> Result<Option<Option<Head>>, StoreError> {
        self.conn
            .query_row(
                "SELECT head_seq, head_hash FROM origins WHERE node_id = ?1",
                [origin.as_bytes().as_slice()],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<Vec<u8>>>(1)?)),
            )
            .optional()
            .ctx("reading a head")?
            .map(|(seq, hash)| head_from(seq, hash))
            .transpose()
    }

    /// Up to `limit` entries of `origin` with seq greater than `after`, in order.
    pub fn entries_after(
        &self,
        origin: NodeId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        self.entries_after_as(origin, after, limit, false)
    }

    /// [`Store::entries_after`] in source paths: a sealed entry's bytes are its plaintext (see
    /// `store::sealed`), or [`StoreError::Sealed`] where this node cannot read it. Hashes
    /// stay those of the entries as stored.
    pub fn plain_entries_after(
        &self,
        origin: NodeId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let mut entries = self.entries_after_as(origin, after, limit, true)?;
        let ring = self.keys.get(origin);
        for e in &mut entries {
            e.bytes = super::sealed::reveal(ring.as_deref(), origin, std::mem::take(&mut e.bytes))?;
        }
        Ok(entries)
    }

    fn entries_after_as(
        &self,
        origin: NodeId,
        after: Seq,
        limit: usize,
        plain: bool,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(Vec::new());
        };
        if after.0 >= crate::feed::MAX_SEQ {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached(if plain {
                "SELECT e.key, e.hash, COALESCE(p.bytes, e.bytes) FROM entries e
                 LEFT JOIN opened p ON p.key = e.key
                 WHERE e.key > ?1 AND e.key <= ?2 ORDER BY e.key LIMIT ?3"
            } else {
                "SELECT key, hash, bytes FROM entries WHERE key > ?1 AND key <= ?2 ORDER BY key LIMIT ?3"
            })
            .ctx("reading entries")?;
        let rows = stmt
            .query_map(
                (
                    entry_key(row, after.0),
                    entry_key(row, crate::feed::MAX_SEQ),
                    limit.min(i64::MAX as usize) as i64,
                ),
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                },
            )
            .ctx("reading entries")?;
        let mut out = Vec::new();
        for row in rows {
            let (key, hash, bytes) = row.ctx("reading entries")?;
            out.push(StoredEntry {
                seq: Seq((key & ((1 << SEQ_BITS) - 1)) as u64),
                hash: hash_from(hash)?,
                bytes,
            });
        }
        Ok(out)
    }

    /// The latest checkpoint held for `origin`.
    pub fn latest_checkpoint(&self, origin: NodeId) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self
            .checkpoints_where(origin, "ORDER BY seq DESC LIMIT 1", 0, 0)?
            .pop())
    }

    /// Every checkpoint held for `origin`, by seq.
    pub fn checkpoints(&self, origin: NodeId) -> Result<Vec<Checkpoint>, StoreError> {
        self.checkpoints_where(origin, "ORDER BY seq", 0, 0)
    }

    /// One page of `origin`'s feed for a peer: the entries after `after`, ending exactly at a
    /// checkpoint so that the receiver can verify the page on its own. The page ends at the
    /// highest checkpoint within both `limit` entries and `budget` bytes of entries, or, when
    /// there is none, at the first one beyond (our own feed has one every
    /// [`super::CHECKPOINT_EVERY`] entries and [`super::CHECKPOINT_BYTES`] bytes, and a relay
    /// keeps the checkpoints of the pages it received, so pages stay bounded). `None` when
    /// nothing after `after` is covered by a checkpoint. Reads in one transaction, so the
    /// entries and the checkpoint agree even beside a writer. Every entry is hashed again and
    /// chained back from the checkpoint: a damaged one is [`StoreError::EntryDamaged`], never
    /// served.
    pub fn entries_page(
        &self,
        origin: NodeId,
        after: Seq,
        limit: usize,
        budget: usize,
    ) -> Result<Option<(Vec<StoredEntry>, Checkpoint)>, StoreError> {
        if after.0 >= crate::feed::MAX_SEQ {
            return Ok(None);
        }
        let tx = self
            .conn
            .unchecked_transaction()
            .ctx("starting a page read")?;
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(None);
        };
        self.check_not_below_base(origin, after.0)?;
        let limit = limit.max(1) as u64;
        let mut last = after.0.saturating_add(limit).min(crate::feed::MAX_SEQ);
        {
            // The last seq within the byte budget (length() reads the record header only).
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT key, length(bytes) FROM entries WHERE key > ?1 AND key <= ?2 ORDER BY key",
                )
                .ctx("sizing a page")?;
            let mut rows = stmt
                .query((entry_key(row, after.0), entry_key(row, last)))
                .ctx("sizing a page")?;
            let mut total = 0usize;
            while let Some(r) = rows.next().ctx("sizing a page")? {
                let key: i64 = r.get(0).ctx("sizing a page")?;
                total += r.get::<_, i64>(1).ctx("sizing a page")? as usize;
                if total > budget {
                    last = ((key & ((1 << SEQ_BITS) - 1)) as u64).saturating_sub(1);
                    break;
                }
            }
        }
        let within = if last > after.0 {
            self.checkpoints_where(
                origin,
                "AND seq > ?2 AND seq <= ?3 ORDER BY seq DESC LIMIT 1",
                after.0,
                last,
            )?
        } else {
            Vec::new()
        };
        let checkpoint = match within.into_iter().next() {
            Some(cp) => cp,
            None => match self
                .checkpoints_where(origin, "AND seq > ?2 ORDER BY seq LIMIT 1", after.0, 0)?
                .pop()
            {
                Some(cp) => cp,
                None => return Ok(None),
            },
        };
        let entries = self.entries_after(origin, after, (checkpoint.seq.0 - after.0) as usize)?;
        tx.finish().ctx("ending a page read")?;
        // Never serve bytes the disk damaged: every entry is hashed again and chained back
        // from the checkpoint (see `damage`).
        if let Some((seq, detail)) = super::damage::check_page(&entries, &checkpoint)?
            .into_iter()
            .next()
        {
            return Err(StoreError::EntryDamaged {
                origin,
                seq,
                detail,
            });
        }
        match entries.last() {
            Some(last) if last.seq == checkpoint.seq && last.hash == checkpoint.hash => {
                Ok(Some((entries, checkpoint)))
            }
            _ => Err(StoreError::Feed(FeedError::Malformed(
                "a stored checkpoint does not match the stored entries",
            ))),
        }
    }

    /// Checkpoints of `origin` selected by `clause` (SQL after `WHERE origin = ?1`, which may
    /// use `?2` = `a` and `?3` = `b`).
    fn checkpoints_where(
        &self,
        origin: NodeId,
        clause: &str,
        a: u64,
        b: u64,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(Vec::new());
        };
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT seq, hash, ts, signature FROM checkpoints WHERE origin = ?1 {clause}"
            ))
            .ctx("reading checkpoints")?;
        let uses = |n: &str| clause.contains(n);
        let params: Vec<i64> = [
            Some(row),
            uses("?2").then_some(a as i64),
            uses("?3").then_some(b as i64),
        ]
        .into_iter()
        .flatten()
        .collect();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(params), |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .ctx("reading checkpoints")?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, hash, ts, sig) = row.ctx("reading checkpoints")?;
            out.push(Checkpoint {
                origin,
                seq: Seq(seq as u64),
                hash: hash_from(hash)?,
                ts: ts as u64,
                signature: sig
                    .try_into()
                    .map_err(|_| FeedError::Malformed("stored signature is not 64 bytes"))?,
            });
        }
        Ok(out)
    }

    /// The body of the live object at `path` in `origin`'s state.
    pub fn object(&self, origin: NodeId, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(None);
        };
        // In a sealed feed the state keeps the sealed path, and the entry opens when read.
        let bytes: Option<Vec<u8>> = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(p.bytes, e.bytes) FROM objects o
                 JOIN entries e ON e.key = (o.origin << 40) | o.seq
                 LEFT JOIN opened p ON p.key = e.key
                 WHERE o.origin = ?1 AND o.path = COALESCE(
                     (SELECT sealed FROM opened_paths WHERE origin = ?1 AND path = ?2), ?2)",
            )
            .and_then(|mut s| s.query_row((row, path), |r| r.get(0)).optional())
            .ctx("reading an object")?;
        match bytes {
            None => self.refuse_unread(row, origin).map(|()| None),
            Some(bytes) => {
                let bytes = super::sealed::reveal(self.keys.get(origin).as_deref(), origin, bytes)?;
                Ok(Some(crate::feed::decode_entry(&bytes)?.body.to_vec()))
            }
        }
    }

    /// Calls `f` with (path, body) of every live object of `origin`, sorted by path (bytewise).
    /// Stops at the first error `f` returns.
    pub fn for_each_object<E: From<StoreError>>(
        &self,
        origin: NodeId,
        mut f: impl FnMut(&str, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(());
        };
        let mut stmt = self
            .conn
            .prepare(
                "SELECT COALESCE(p.bytes, e.bytes) FROM objects o
                 JOIN entries e ON e.key = (o.origin << 40) | o.seq
                 LEFT JOIN opened p ON p.key = e.key
                 WHERE o.origin = ?1 ORDER BY o.path",
            )
            .ctx("reading objects")?;
        let mut rows = stmt.query([row]).ctx("reading objects")?;
        // A sealed feed's objects, opened and sorted by source path once all are read.
        let ring = self.keys.get(origin);
        let sealed = ring.is_some() || self.has_opened(row)?;
        let mut opened: Vec<(Box<str>, Vec<u8>)> = Vec::new();
        while let Some(r) = rows.next().ctx("reading objects")? {
            let bytes = r.get_ref(0).ctx("reading objects")?.as_blob().ctx_blob()?;
            let entry = crate::feed::decode_stored_entry(bytes).map_err(StoreError::from)?;
            if crate::seal::is_sealed(entry.path) {
                let bytes = super::sealed::reveal(ring.as_deref(), origin, bytes.to_vec())?;
                let entry = crate::feed::decode_stored_entry(&bytes).map_err(StoreError::from)?;
                opened.push((entry.path.into(), entry.body.to_vec()));
            } else if !sealed {
                f(entry.path, entry.body)?;
            } else {
                opened.push((entry.path.into(), entry.body.to_vec()));
            }
        }
        opened.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (path, body) in &opened {
            f(path, body)?;
        }
        Ok(())
    }

    /// Paths of the live objects of `origin` that start with `prefix`, sorted.
    pub fn paths_under(&self, origin: NodeId, prefix: &str) -> Result<Vec<String>, StoreError> {
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(Vec::new());
        };
        self.refuse_unread(row, origin)?;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT path FROM objects WHERE origin = ?1 AND path >= ?2 AND path < ?3 ORDER BY path")
            .ctx("listing paths")?;
        let rows = stmt
            .query_map((row, prefix, prefix_end(prefix)), |r| r.get::<_, String>(0))
            .ctx("listing paths")?;
        let mut paths = rows
            .collect::<rusqlite::Result<Vec<_>>>()
            .ctx("listing paths")?;
        if self.has_opened(row)? {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT p.path FROM opened_paths p
                     JOIN objects o ON o.origin = p.origin AND o.path = p.sealed
                     WHERE p.origin = ?1 AND p.path >= ?2 AND p.path < ?3",
                )
                .ctx("listing paths")?;
            let rows = stmt
                .query_map((row, prefix, prefix_end(prefix)), |r| r.get::<_, String>(0))
                .ctx("listing paths")?;
            for path in rows {
                paths.push(path.ctx("listing paths")?);
            }
            paths.retain(|p| !crate::seal::is_sealed(p));
            paths.sort_unstable();
            paths.dedup();
        }
        Ok(paths)
    }

    /// [`StoreError::Sealed`] when `origin` (row `row`) is sealed and this node has not opened
    /// it up to its head: an answer in source paths would leave out what it cannot read.
    fn refuse_unread(&self, row: i64, origin: NodeId) -> Result<(), StoreError> {
        match super::sealed::unread(&self.conn, row, origin)? {
            true => Err(StoreError::Sealed { origin }),
            false => Ok(()),
        }
    }

    /// Whether this node keeps plaintext of `origin`'s sealed entries (see `store::sealed`).
    fn has_opened(&self, row: i64) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT 1 FROM opened_paths WHERE origin = ?1 LIMIT 1")
            .ctx("looking up sealed paths")?
            .query_row([row], |_| Ok(()))
            .optional()
            .map(|found| found.is_some())
            .ctx("looking up sealed paths")
    }

    /// Whether `origin` holds a live object at `path` or below it (`path/…`).
    pub fn holds_at_or_under(&self, origin: NodeId, path: &str) -> Result<bool, StoreError> {
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(false);
        };
        self.refuse_unread(row, origin)?;
        let below = format!("{path}/");
        let plain = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM objects WHERE origin = ?1
                 AND (path = ?2 OR (path >= ?3 AND path < ?4)) LIMIT 1",
            )
            .ctx("looking up paths")?
            .query_row((row, path, &below, prefix_end(&below)), |_| Ok(()))
            .optional()
            .ctx("looking up paths")?;
        if plain.is_some() {
            return Ok(true);
        }
        self.conn
            .prepare_cached(
                "SELECT 1 FROM opened_paths p
                 JOIN objects o ON o.origin = p.origin AND o.path = p.sealed
                 WHERE p.origin = ?1 AND (p.path = ?2 OR (p.path >= ?3 AND p.path < ?4)) LIMIT 1",
            )
            .ctx("looking up paths")?
            .query_row((row, path, &below, prefix_end(&below)), |_| Ok(()))
            .optional()
            .map(|found| found.is_some())
            .ctx("looking up paths")
    }

    /// Paths of the live objects of `origin` directly below `list` (e.g. the buckets below
    /// `/buckets`), sorted. A skip-scan: at most two indexed seeks per child, jumping over each
    /// child's own subtree, so it costs O(children · log n) however much lies below them.
    pub fn children(&self, origin: NodeId, list: &str) -> Result<Vec<String>, StoreError> {
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(Vec::new());
        };
        self.refuse_unread(row, origin)?;
        let mut out = self.children_in(row, list, CHILD_PLAIN)?;
        if self.has_opened(row)? {
            out.extend(self.children_in(row, list, CHILD_SEALED)?);
            out.retain(|p| !crate::seal::is_sealed(p));
            out.sort_unstable();
            out.dedup();
        }
        Ok(out)
    }

    /// [`Store::children`] over one kind of path: `query` finds the first live path after ?2
    /// and before ?3.
    fn children_in(&self, row: i64, list: &str, query: &str) -> Result<Vec<String>, StoreError> {
        let prefix = format!("{list}/");
        let end = prefix_end(&prefix);
        let mut stmt = self.conn.prepare_cached(query).ctx("listing children")?;
        let mut out = Vec::new();
        let mut after = prefix.clone();
        loop {
            let next: Option<String> = stmt
                .query_row((row, &after, &end), |r| r.get(0))
                .optional()
                .ctx("listing children")?;
            let Some(path) = next else { break };
            let rest = &path[prefix.len()..];
            after = match rest.find('/') {
                // Inside a child's subtree: jump over the rest of it. (Siblings such as
                // `a-b` sort between `a` and `a/…`, so the jump is taken only from inside.)
                Some(i) => prefix_end(&format!("{prefix}{}/", &rest[..i])),
                None => {
                    out.push(path.clone());
                    path
                }
            };
        }
        Ok(out)
    }

    /// Number of live objects of `origin`.
    pub fn object_count(&self, origin: NodeId) -> Result<u64, StoreError> {
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(0);
        };
        self.conn
            .query_row(
                "SELECT count(*) FROM objects WHERE origin = ?1",
                [row],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .ctx("counting objects")
    }

    /// The value of cursor `name`.
    pub fn cursor(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .prepare_cached("SELECT value FROM cursors WHERE name = ?1")
            .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
            .ctx("reading a cursor")
    }

    /// The names of the cursors that start with `prefix`, sorted.
    pub fn cursor_names(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name FROM cursors WHERE name >= ?1 AND name < ?2 ORDER BY name")
            .ctx("listing cursors")?;
        let rows = stmt
            .query_map((prefix, prefix_end(prefix)), |r| r.get::<_, String>(0))
            .ctx("listing cursors")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("listing cursors")
    }

    /// Fork evidence held for `origin`, oldest first.
    pub fn forks(&self, origin: NodeId) -> Result<Vec<ForkEvidence>, StoreError> {
        let Some(row) = self.origin_row_id(origin)? else {
            return Ok(Vec::new());
        };
        let mut stmt = self
            .conn
            .prepare("SELECT seq, our_hash, their_hash, ours, theirs, our_entries, their_entries FROM forks WHERE origin = ?1 ORDER BY id")
            .ctx("reading fork evidence")?;
        let rows = stmt
            .query_map([row], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, Vec<u8>>(5)?,
                    r.get::<_, Vec<u8>>(6)?,
                ))
            })
            .ctx("reading fork evidence")?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, ours_hash, theirs_hash, ours, theirs, our_entries, their_entries) =
                row.ctx("reading fork evidence")?;
            out.push(ForkEvidence {
                origin,
                seq: Seq(seq as u64),
                our_hash: hash_from(ours_hash)?,
                their_hash: hash_from(theirs_hash)?,
                ours: Checkpoint::from_bytes(&ours)?,
                theirs: Checkpoint::from_bytes(&theirs)?,
                our_entries: ForkEvidence::unpack(&our_entries)?,
                their_entries: ForkEvidence::unpack(&their_entries)?,
            });
        }
        Ok(out)
    }

    pub(super) fn origin_row_id(&self, origin: NodeId) -> Result<Option<i64>, StoreError> {
        self.conn
            .prepare_cached("SELECT id FROM origins WHERE node_id = ?1")
            .and_then(|mut s| {
                s.query_row([origin.as_bytes().as_slice()], |r| r.get(0))
                    .optional()
            })
            .ctx("reading an origin")
    }
}

/// An upper bound for a range scan of the strings starting with `prefix`: the prefix followed
/// by the largest code point (bytewise, every other continuation sorts below it).
fn prefix_end(prefix: &str) -> String {
    format!("{prefix}\u{10ffff}")
}

/// Reads a blob column that must be a blob.
pub(super) trait BlobContext<'a> {
    fn ctx_blob(self) -> Result<&'a [u8], StoreError>;
}

impl<'a> BlobContext<'a> for rusqlite::types::FromSqlResult<&'a [u8]> {
    fn ctx_blob(self) -> Result<&'a [u8], StoreError> {
        self.map_err(|e| StoreError::Sqlite {
            context: "reading a blob",
            source: rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Blob,
                Box::new(e),
            )
            .into(),
        })
    }
}

pub(super) fn node_id_from(bytes: Vec<u8>) -> Result<NodeId, StoreError> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| FeedError::Malformed("stored node id is not 32 bytes"))?;
    NodeId::from_bytes(bytes)
        .map_err(|_| StoreError::Feed(FeedError::Malformed("stored node id is not a valid key")))
}

/// The first plain live path in a range (see [`Store::children_in`]).
const CHILD_PLAIN: &str =
    "SELECT path FROM objects WHERE origin = ?1 AND path > ?2 AND path < ?3 ORDER BY path LIMIT 1";
/// The first source path in a range whose sealed path is live.
const CHILD_SEALED: &str = "SELECT p.path FROM opened_paths p WHERE p.origin = ?1 AND p.path > ?2
 AND p.path < ?3 AND EXISTS (SELECT 1 FROM objects o WHERE o.origin = ?1 AND o.path = p.sealed)
 ORDER BY p.path LIMIT 1";
