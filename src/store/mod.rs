//! The replica store: one SQLite database (WAL) in the data directory, and the only module that
//! touches SQL.
//!
//! What it guarantees:
//! - **One writer.** [`Store::open_writer`] takes an exclusive lock on `tandem.lock` for the life
//!   of the store; a second writer gets [`StoreError::Locked`] (after waiting a moment when the
//!   holder has just let go: see `take_lock`). Readers
//!   ([`Store::open_read_only`]) need no lock: WAL lets them read beside the writer.
//! - **Verify, then write.** Foreign entries arrive only as a [`crate::feed::VerifiedBatch`]; linking to
//!   the stored head and fork checks happen inside the write transaction. Every write (entries,
//!   checkpoint, materialized state, the cursors that produced them) is one transaction, with
//!   `synchronous = FULL`: once a call returns, its data survives a crash or power loss.
//! - **Never re-created.** A file that is not a tandem store, or is damaged, is an error; the
//!   store only creates a database where no file exists.
//!
//! Layout: [`schema`] holds the tables and migrations, `write` the transactions that change
//! feeds, `read` the queries, `verify` the full re-check of everything stored, `mirror` the
//! migrations (buckets mirrored into another server), `keybackup` the node keys other origins
//! keep here under their passphrase.

mod compact;
mod damage;
mod drills;
mod handle;
mod holders;
mod keybackup;
mod mirror;
mod read;
pub mod schema;
mod sealed;
mod snapshots;
mod verify;
mod write;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::feed::{EntryHash, FeedError, ForkEvidence, Head, Op, Seq};
use crate::identity::NodeId;

pub use compact::{BasePage, Compacted};
pub use damage::DamagedEntry;
pub use drills::DrillRecord;
pub use handle::{READERS, StoreHandle};
pub use holders::{HolderInfo, MAX_UNLISTED_HOLDERS, ReceiptCheck, Rollback};
pub use keybackup::StoredKeyBackup;
pub use mirror::{Lock, Migration, Phase, Switch};
pub use read::{OriginInfo, StoredEntry};
pub use sealed::{Granted, Sealing};
pub use snapshots::{SnapshotMismatch, StateItem};
pub use verify::{VerifyProblem, VerifyReport};
pub use write::{
    Accepted, AcceptedAll, CHECKPOINT_BYTES, CHECKPOINT_EVERY, Change, CheckpointCheck,
    CursorUpdate,
};

/// Database file name inside the data directory.
pub const DB_FILE: &str = "tandem.db";
/// Lock file name inside the data directory.
pub const LOCK_FILE: &str = "tandem.lock";

/// Errors from the store. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the writer lock.
    #[error(
        "another tandem process{} is using the store in {dir}; stop it first, or give this one its own data_dir",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The pid written in the lock file, if readable.
        pid: Option<u32>,
    },
    /// No database where one was expected.
    #[error("no tandem store at {path}; run `tandem init` first")]
    Missing {
        /// Expected database path.
        path: PathBuf,
    },
    /// The file is damaged or not a tandem store. Never silently re-created.
    #[error(
        "{path} is damaged or is not a tandem store ({detail}); tandem will not overwrite it: restore the data directory from a backup"
    )]
    Corrupt {
        /// The database path.
        path: PathBuf,
        /// What SQLite or the header check said.
        detail: String,
    },
    /// The store was written by a newer tandem.
    #[error(
        "{path} has schema version {found}, newer than this tandem understands ({supported}); upgrade tandem"
    )]
    TooNew {
        /// The database path.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        supported: i64,
    },
    /// The store belongs to another node key.
    #[error(
        "the store in {dir} belongs to node {store}, but the key is {key}; use the matching key or another data_dir"
    )]
    WrongNode {
        /// The data directory.
        dir: PathBuf,
        /// Node id recorded in the store.
        store: NodeId,
        /// Node id of the key in use.
        key: NodeId,
    },
    /// The store cannot be read (permissions).
    #[error(
        "cannot read the store {path}: {detail}; check that this user may read it (owner and mode)"
    )]
    NotReadable {
        /// The database path.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// SQLite found damage while reading or writing.
    #[error(
        "the store is damaged ({context}: {detail}); tandem will not overwrite it: restore the data directory from a backup"
    )]
    Damaged {
        /// What was being done.
        context: &'static str,
        /// What SQLite said.
        detail: String,
    },
    /// The data directory cannot be written.
    #[error("cannot write in {dir}: {source}; check that it exists and that this user owns it")]
    NotWritable {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The origin is frozen by fork evidence; nothing more is accepted for it.
    #[error("origin {origin} is frozen: fork evidence is stored (see `tandem status`)")]
    Frozen {
        /// The frozen origin.
        origin: NodeId,
    },
    /// A batch starts after the stored head: entries in between are missing.
    #[error("origin {origin}: batch starts at seq {first} but the store holds up to seq {head}")]
    Gap {
        /// The origin.
        origin: NodeId,
        /// Stored head seq.
        head: Seq,
        /// First seq of the batch.
        first: Seq,
    },
    /// Two valid histories of one origin; the evidence was stored and the origin frozen.
    #[error("origin {} forked at seq {}: evidence stored, origin frozen", .0.origin, .0.seq)]
    Fork(Box<ForkEvidence>),
    /// An append while the store is recovering the own feed from peers.
    #[error(
        "this node's feed is being recovered from its peers; nothing is appended until that is done (see `tandem status`)"
    )]
    Recovering,
    /// Something below an origin's compacted base was asked for.
    #[error(
        "origin {origin}: the entries up to seq {base} were compacted into the snapshot at that seq; seq {asked} is no longer held here"
    )]
    Compacted {
        /// The origin.
        origin: NodeId,
        /// Its compacted base.
        base: Seq,
        /// The seq asked for.
        asked: Seq,
    },
    /// A snapshot that the entries held do not give.
    #[error("snapshot of origin {origin} refused: {source}")]
    SnapshotMismatch {
        /// The origin.
        origin: NodeId,
        /// What differs.
        source: SnapshotMismatch,
    },
    /// A change handed to [`Store::append`] that the feed cannot encode.
    #[error("cannot record the change to {path}: {source}")]
    InvalidChange {
        /// The object path.
        path: String,
        /// What is wrong.
        source: FeedError,
    },
    /// A stored entry no longer matches its recorded hash or the chain (a flipped bit on the
    /// disk, an edited database file). It is not served; a good copy from a peer replaces it.
    #[error(
        "origin {origin}: the stored entry at seq {seq} is damaged ({detail}); it is not served until a good copy is fetched from a peer (see `tandem status`)"
    )]
    EntryDamaged {
        /// The origin.
        origin: NodeId,
        /// The damaged entry.
        seq: Seq,
        /// What does not match.
        detail: String,
    },
    /// Stored bytes that fail feed rules.
    #[error("invalid stored data: {0}")]
    Feed(#[from] FeedError),
    /// The file system holding the store ran out of space (or the quota or the file size limit
    /// was reached): the write was rolled back whole. Heals once there is room again.
    #[error(
        "no space left for the store in {dir} ({context}: {detail}); nothing of this write was kept: free space on that file system (or raise its quota or the file size limit), then run again"
    )]
    Full {
        /// The data directory.
        dir: PathBuf,
        /// What was being done.
        context: &'static str,
        /// What SQLite and the system said.
        detail: String,
    },
    /// An SQLite error, with what was being done.
    #[error("store: {context}: {source}")]
    Sqlite {
        /// What was being done.
        context: &'static str,
        /// What SQLite said.
        source: SqlError,
    },
    /// The plaintext of a sealed origin was asked for on a node that cannot open it.
    #[error(
        "origin {origin} is sealed: this node holds and verifies its entries but cannot read them; restore or export it on the origin itself, on a node it grants reading (`read = true` in the origin's [[peer]] for it), or on a node recovered with its key (`tandem recover`)"
    )]
    Sealed {
        /// The sealed origin.
        origin: NodeId,
    },
    /// A sealed entry under a key epoch this node was never given (a reader removed before
    /// it began, or not granted yet).
    #[error(
        "origin {origin} is sealed, and its entry at seq {seq} is sealed under key epoch {epoch}, which this node was not granted (a reader removed since, or not granted yet, reads only what was sealed before): restore or export an earlier state (`--seq`, `--at`, a snapshot), or have the origin grant this node reading again"
    )]
    NotGranted {
        /// The sealed origin.
        origin: NodeId,
        /// The entry.
        seq: Seq,
        /// The epoch it names.
        epoch: u32,
    },
    /// A sealed entry that does not open with the keys this node has.
    #[error("origin {origin}, seq {seq}: {source}")]
    Unsealable {
        /// The origin.
        origin: NodeId,
        /// The entry.
        seq: Seq,
        /// Why it does not open.
        source: crate::seal::SealError,
    },
    /// The readers statement of a sealed origin is unusable, or a reader cannot be granted.
    #[error("origin {origin}: {source}")]
    Readers {
        /// The origin.
        origin: NodeId,
        /// What is wrong.
        source: crate::seal::SealError,
    },
    /// Content keys asked for of a feed that is not sealed (a rotation, an archive with its
    /// keys).
    #[error("origin {origin} is not sealed: {detail}")]
    NotSealed {
        /// The origin.
        origin: NodeId,
        /// What was asked, and what to do instead.
        detail: &'static str,
    },
    /// `[node] seal = false` for a feed that is sealed.
    #[error(
        "this node's feed is sealed from seq {from}: it cannot be unsealed, since holders would then read every later change; remove `seal = false` from [node] (or set `seal = true`)"
    )]
    SealOff {
        /// The first sealed seq.
        from: Seq,
    },
    /// Sealing asked for while a migration mirrors the own feed.
    #[error(
        "sealing cannot be switched on while migration {migration} mirrors this node's feed (switching re-records every object); finish or stop it first (`tandem migrate finish|abort {migration}`)"
    )]
    SealBusy {
        /// The migration.
        migration: i64,
    },
    /// The store handle was closed (the daemon is stopping): nothing more runs on it.
    #[error("the store is closed: tandem is stopping")]
    Closed,
}

impl crate::backoff::RetryHint for StoreError {
    /// A fork or a frozen origin, a damaged or foreign store, or one this user cannot use:
    /// nothing changes them but an operator. A full disk, a busy or closed store, a gap or a
    /// damaged entry (repaired from peers) can pass.
    fn heals(&self) -> bool {
        !matches!(
            self,
            StoreError::Fork(_)
                | StoreError::Frozen { .. }
                | StoreError::Corrupt { .. }
                | StoreError::Damaged { .. }
                | StoreError::TooNew { .. }
                | StoreError::WrongNode { .. }
                | StoreError::NotReadable { .. }
                | StoreError::NotWritable { .. }
                | StoreError::Locked { .. }
                | StoreError::Missing { .. }
                | StoreError::InvalidChange { .. }
                | StoreError::Sealed { .. }
                | StoreError::NotGranted { .. }
                | StoreError::Unsealable { .. }
                | StoreError::Readers { .. }
                | StoreError::NotSealed { .. }
                | StoreError::SealOff { .. }
                | StoreError::SealBusy { .. }
        )
    }
}

/// What SQLite said about a failed statement: its message and result code, without the SQLite
/// binding's types, so that callers depend on the store alone.
#[derive(Debug)]
pub struct SqlError {
    message: String,
    /// SQLite's primary result code (`SQLITE_FULL`, `SQLITE_IOERR`...), when SQLite gave one.
    code: Option<std::ffi::c_int>,
}

impl SqlError {
    /// An error the store itself found (a row that should exist and does not).
    fn internal(message: &str) -> SqlError {
        SqlError {
            message: message.to_owned(),
            code: None,
        }
    }
}

impl From<rusqlite::Error> for SqlError {
    fn from(e: rusqlite::Error) -> SqlError {
        SqlError {
            code: e.sqlite_error().map(|f| f.extended_code & 0xff),
            message: e.to_string(),
        }
    }
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqlError {}

/// Adds a context line to an SQLite result.
trait Context<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        use rusqlite::ffi::ErrorCode;
        self.map_err(|source| match source.sqlite_error_code() {
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Damaged {
                context,
                detail: source.to_string(),
            },
            _ => StoreError::Sqlite {
                context,
                source: source.into(),
            },
        })
    }
}

impl Store {
    /// Names a write that failed for want of space as [`StoreError::Full`]: SQLite's
    /// `SQLITE_FULL` (ENOSPC while writing), or an I/O error whose system error is ENOSPC,
    /// EDQUOT or EFBIG (a write at the file size limit, which SQLite reports as a plain
    /// "disk I/O error"). Other errors pass unchanged.
    pub(super) fn name_full(&self, e: StoreError) -> StoreError {
        let StoreError::Sqlite { context, source } = e else {
            return e;
        };
        let full = match source.code {
            Some(rusqlite::ffi::SQLITE_FULL) => Some(String::new()),
            Some(rusqlite::ffi::SQLITE_IOERR) => {
                // SAFETY: the handle is this store's open connection, used on this thread.
                let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(self.conn.handle()) };
                [libc::ENOSPC, libc::EDQUOT, libc::EFBIG]
                    .contains(&errno)
                    .then(|| format!(": {}", std::io::Error::from_raw_os_error(errno)))
            }
            _ => None,
        };
        match full {
            Some(system) => StoreError::Full {
                dir: self.path.parent().unwrap_or(&self.path).to_owned(),
                context,
                detail: format!("{source}{system}"),
            },
            None => StoreError::Sqlite { context, source },
        }
    }
}

/// Removes the base staging file a crashed writer left (see [`Store::begin_base_staging`]);
/// only the writer, which holds the lock, creates it.
fn remove_staging_leftovers(data_dir: &Path) {
    let path = data_dir.join(compact::STAGING_FILE);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(file = %path.display(), error = %e, "could not remove a leftover base staging file");
        }
        _ => {}
    }
}

/// Number of bits of an entry key that hold the seq.
const SEQ_BITS: u32 = 40;

/// The entries-table key of (origin row id, seq). `seq` must be at most [`crate::feed::MAX_SEQ`]
/// (callers clamp), or it would spill into the origin's bits.
fn entry_key(origin: i64, seq: u64) -> i64 {
    debug_assert!(seq <= crate::feed::MAX_SEQ, "seq {seq} out of range");
    (origin << SEQ_BITS) | seq.min(crate::feed::MAX_SEQ) as i64
}

/// The replica store. See the module docs.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Held for the store's lifetime by a writer; dropping it releases the lock. Declared
    /// after `conn`, so the database is closed before the lock is let go.
    _lock: Option<WriterLock>,
    /// The bases being staged on this connection (tokens; see [`Store::begin_base_staging`]):
    /// the staging file stays attached while there is one.
    staging: std::collections::BTreeSet<u64>,
    /// Tokens discarded before their staging began (the caller gave up while waiting for the
    /// store): their staging never begins.
    staging_dropped: std::collections::BTreeSet<u64>,
    /// The other origins (rows) in which [`Store::open_granted`] found nothing it could open,
    /// and whether their statement did not grant this node: not read again until something
    /// of them is stored (see `Store::reconsider`, called wherever their head, statement or
    /// entries change).
    unopenable: std::collections::HashMap<i64, bool>,
    /// The content keys of the sealed feeds this node reads (see `store::sealed`).
    keys: sealed::Keyring,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if absent) the store in `data_dir` for writing, as node `node`.
    /// Takes the writer lock first; refuses damaged files and stores of another node.
    pub fn open_writer(data_dir: &Path, node: NodeId) -> Result<Store, StoreError> {
        Store::open_writer_with(data_dir, node, false)
    }

    /// [`Store::open_writer`], for a key that existed before: when the store is new (or was
    /// left unclaimed by a crash during its creation), the recovery flag (see
    /// [`Store::recovering`]) is set in the same transaction that claims it for `node`, so
    /// no crash can leave a store that appends before the feed is fetched back.
    pub fn open_writer_with(
        data_dir: &Path,
        node: NodeId,
        recover_if_new: bool,
    ) -> Result<Store, StoreError> {
        let lock = take_lock(data_dir, LOCK_LET_GO_WAIT)?;
        let path = data_dir.join(DB_FILE);
        let mut conn = Connection::open(&path).map_err(|e| open_error(&path, data_dir, e))?;
        let found = schema::inspect(&conn).map_err(|e| open_error(&path, data_dir, e))?;
        let version = match found {
            // No tables and no marks: a new file, or one left by a crash during the very first
            // open (before the first migration committed). Nothing in it can be lost.
            schema::Found::Empty => 0,
            schema::Found::Foreign => {
                return Err(StoreError::Corrupt {
                    path,
                    detail: "not a tandem database".into(),
                });
            }
            schema::Found::Tandem(v) => v,
        };
        if version > schema::SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path,
                found: version,
                supported: schema::SCHEMA_VERSION,
            });
        }
        if version == 0 {
            // Only a database without pages can choose (before WAL writes the header):
            // compaction then gives pages back without rewriting the file.
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
                .map_err(|e| open_error(&path, data_dir, e))?;
        }
        // WAL: readers never block the writer; FULL: a returned commit survives power loss.
        // The WAL is copied back into the database at 64 MiB rather than SQLite's 4 MiB: pages
        // a run of commits dirties again and again (the state's B-tree under paths that
        // arrive in no order, as a sealed feed's hashed paths do) are then written back once,
        // not once per commit. In one run of each, a sealed cold pull of 1,000,000 entries took
        // 46.5 s with 4 MiB and 40.7 s with this (docs/performance.md). The WAL is truncated
        // when the store closes. `secure_delete = FAST` zeroes what is deleted from a page and
        // the unused part of every page written, at no extra I/O: once compaction drops the
        // plain entries from before a feed was sealed, none of their bytes stay in the file
        // (pages given back are cut off by `reclaim_space`, which empties the log too).
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000; PRAGMA cache_size = -65536;
             PRAGMA wal_autocheckpoint = 16384; PRAGMA secure_delete = FAST;",
        )
        .map_err(|e| open_error(&path, data_dir, e))?;
        // Damage anywhere in the file is found now, not halfway through serving a peer.
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| open_error(&path, data_dir, e))?;
        if check != "ok" {
            return Err(StoreError::Corrupt {
                path,
                detail: check,
            });
        }
        schema::migrate(&mut conn, version).map_err(|e| open_error(&path, data_dir, e))?;
        remove_staging_leftovers(data_dir);
        let mut store = Store {
            conn,
            path,
            _lock: Some(lock),
            staging: Default::default(),
            staging_dropped: Default::default(),
            unopenable: Default::default(),
            keys: Default::default(),
        };
        store.claim(node, data_dir, recover_if_new)?;
        Ok(store)
    }

    /// Opens an existing store for reading only; works beside a running writer.
    pub fn open_read_only(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join(DB_FILE);
        if !path.exists() {
            return Err(StoreError::Missing { path });
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| read_error(&path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .ctx("setting the busy timeout")?;
        match schema::inspect(&conn).map_err(|e| read_error(&path, e))? {
            schema::Found::Tandem(v) if v > schema::SCHEMA_VERSION => Err(StoreError::TooNew {
                path,
                found: v,
                supported: schema::SCHEMA_VERSION,
            }),
            schema::Found::Tandem(v) if v >= 1 => Ok(Store {
                conn,
                path,
                _lock: None,
                staging: Default::default(),
                staging_dropped: Default::default(),
                unopenable: Default::default(),
                keys: Default::default(),
            }),
            _ => Err(StoreError::Corrupt {
                path,
                detail: "not a tandem database".into(),
            }),
        }
    }

    /// Copies every commit from the write-ahead log into the database file and empties the
    /// log, so that the database file alone holds the whole store (what a clean shutdown
    /// leaves, whatever read-only connections are still open).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .ctx("checkpointing the log")
    }

    /// Copies back into the database file what the write-ahead log holds that no reader still
    /// needs, without waiting for readers; the log is reused from its start once all of it is
    /// copied. What a close would otherwise copy at once (see [`Store::checkpoint`]).
    pub fn checkpoint_passive(&self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(PASSIVE);")
            .ctx("copying the log back")
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node this store belongs to.
    pub fn node_id(&self) -> Result<NodeId, StoreError> {
        let text: String = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'node_id'", [], |r| {
                r.get(0)
            })
            .ctx("reading the node id")?;
        text.parse().map_err(|_| StoreError::Corrupt {
            path: self.path.clone(),
            detail: "stored node id is invalid".into(),
        })
    }

    /// Whether this store is recovering its own feed from peers: it was created for a key that
    /// already had a feed, and nothing may be appended before the feed is fetched back.
    pub fn recovering(&self) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'recovering'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .ctx("reading the recovery flag")?
            .is_some())
    }

    /// Sets or clears the recovery flag (see [`Store::recovering`]).
    pub fn set_recovering(&mut self, on: bool) -> Result<(), StoreError> {
        if on {
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('recovering', ?1)",
                [now_ms().to_string()],
            )
        } else {
            self.conn
                .execute("DELETE FROM meta WHERE key = 'recovering'", [])
        }
        .ctx("writing the recovery flag")
        .map(drop)
    }

    /// Records `node` as this store's owner on first open, or checks it matches.
    fn claim(&mut self, node: NodeId, data_dir: &Path, recovering: bool) -> Result<(), StoreError> {
        let stored: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'node_id'", [], |r| {
                r.get(0)
            })
            .optional()
            .ctx("reading the node id")?;
        match stored {
            Some(_) => {
                let store = self.node_id()?;
                if store != node {
                    return Err(StoreError::WrongNode {
                        dir: data_dir.to_owned(),
                        store,
                        key: node,
                    });
                }
                Ok(())
            }
            None => {
                let tx = self.conn.transaction().ctx("starting a transaction")?;
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('node_id', ?1), ('created_at', ?2)",
                    (node.to_string(), now_ms().to_string()),
                )
                .ctx("recording the node id")?;
                tx.execute(
                    "INSERT INTO origins (node_id, is_self) VALUES (?1, 1)",
                    [node.as_bytes().as_slice()],
                )
                .ctx("registering the own origin")?;
                if recovering {
                    tx.execute(
                        "INSERT INTO meta (key, value) VALUES ('recovering', ?1)",
                        [now_ms().to_string()],
                    )
                    .ctx("setting the recovery flag")?;
                }
                tx.commit().ctx("committing the node id")
            }
        }
    }
}

/// Milliseconds since the Unix epoch, by the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long a writer waits for a lock whose holder has let go of it (its lock file holds no
/// pid) but whose descriptor still lives on for a moment: see [`take_lock`].
const LOCK_LET_GO_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The writer lock: an exclusive `flock` on `tandem.lock`, whose content is the holder's pid
/// while it holds it. The pid is cleared before the lock is let go (see [`take_lock`]); one
/// left by a holder that crashed names no holder, and the free lock is taken over it.
struct WriterLock(File);

impl Drop for WriterLock {
    fn drop(&mut self) {
        let _ = self.0.set_len(0);
    }
}

/// Takes the writer lock of `data_dir`.
///
/// A `flock` belongs to the open file, not to the process: a process that spawns a child
/// just as it closes its store (any program embedding the store, the test harness among
/// them) leaves the lock held by the child's copy of the descriptor until the child's `exec`
/// closes it, an instant later. So a lock held while the file names no pid is taken to be
/// in passing and waited for, up to `wait`; a lock whose file names a pid is held, and
/// refused at once. (The file also names no pid in the instant between a holder taking the
/// lock and writing it; waiting then ends with the pid, and the refusal.) A holder that
/// cannot write its pid lets go and fails: others would take its lock for one in passing.
fn take_lock(data_dir: &Path, wait: std::time::Duration) -> Result<WriterLock, StoreError> {
    let path = data_dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| StoreError::NotWritable {
            dir: data_dir.to_owned(),
            source,
        })?;
    let deadline = std::time::Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
                let pid = text.trim().parse().ok();
                if pid.is_some() || std::time::Instant::now() >= deadline {
                    return Err(StoreError::Locked {
                        dir: data_dir.to_owned(),
                        pid,
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StoreError::NotWritable {
                    dir: data_dir.to_owned(),
                    source,
                });
            }
        }
    }
    // The pid names the holder in the error above, and tells a held lock from one let go.
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(|source| StoreError::NotWritable {
            dir: data_dir.to_owned(),
            source,
        })?;
    Ok(WriterLock(file))
}

/// Classifies an error while opening for writing: permissions, damage, or anything else.
fn open_error(path: &Path, data_dir: &Path, e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => {
            StoreError::NotWritable {
                dir: data_dir.to_owned(),
                source: std::io::Error::other(e.to_string()),
            }
        }
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt {
            path: path.to_owned(),
            detail: e.to_string(),
        },
        _ => StoreError::Sqlite {
            context: "opening the store",
            source: e.into(),
        },
    }
}

/// Classifies an error while opening for reading.
fn read_error(path: &Path, e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt {
            path: path.to_owned(),
            detail: e.to_string(),
        },
        Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => {
            StoreError::NotReadable {
                path: path.to_owned(),
                detail: e.to_string(),
            }
        }
        _ => StoreError::Sqlite {
            context: "opening the store",
            source: e.into(),
        },
    }
}

/// Reads a 32-byte hash column.
pub(super) fn hash_from(bytes: Vec<u8>) -> Result<EntryHash, StoreError> {
    bytes
        .try_into()
        .map(EntryHash)
        .map_err(|_| StoreError::Feed(FeedError::Malformed("stored hash is not 32 bytes")))
}

fn head_from(seq: i64, hash: Option<Vec<u8>>) -> Result<Option<Head>, StoreError> {
    match (seq, hash) {
        (0, _) | (_, None) => Ok(None),
        (seq, Some(hash)) => Ok(Some(Head {
            seq: Seq(seq as u64),
            hash: hash_from(hash)?,
        })),
    }
}

/// Applies one entry to the materialized state inside a write transaction.
pub(super) fn apply_to_objects(
    tx: &rusqlite::Transaction<'_>,
    origin: i64,
    seq: Seq,
    op: Op,
    path: &str,
    has_body: bool,
) -> rusqlite::Result<()> {
    match op {
        Op::Put => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO objects (origin, path, seq) VALUES (?1, ?2, ?3)",
            )?
            .execute((origin, path, seq.0 as i64))?;
            tx.prepare_cached("DELETE FROM tombstones WHERE origin = ?1 AND path = ?2")?
                .execute((origin, path))
                .map(drop)
        }
        Op::Delete => {
            tx.prepare_cached("DELETE FROM objects WHERE origin = ?1 AND path = ?2")?
                .execute((origin, path))?;
            // Deleting a container drops the source's tombstones below it: every path that
            // starts with "{path}/", which are exactly those from "{path}/" up to, not
            // including, "{path}0" ('0' follows '/'), as the state fold has it.
            tx.prepare_cached(
                "DELETE FROM tombstones WHERE origin = ?1 AND path >= ?2 AND path < ?3",
            )?
            .execute((origin, format!("{path}/"), format!("{path}0")))?;
            if has_body {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO tombstones (origin, path, seq) VALUES (?1, ?2, ?3)",
                )?
                .execute((origin, path, seq.0 as i64))
                .map(drop)
            } else {
                tx.prepare_cached("DELETE FROM tombstones WHERE origin = ?1 AND path = ?2")?
                    .execute((origin, path))
                    .map(drop)
            }
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_sealed;
