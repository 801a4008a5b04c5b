//! Schema and migrations. The database's `user_version` is the number of migrations applied;
//! each migration runs in the transaction that bumps it, so a crash leaves either the old or
//! the new schema. `application_id` marks the file as a tandem store.

use rusqlite::Connection;

/// `PRAGMA application_id` of a tandem store: ASCII "tndm".
pub const APPLICATION_ID: i32 = 0x746e_646d;

/// Migrations in order; `user_version` = how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: the feed store.
    r#"
    -- Key/value facts about this store: node_id (text form), created_at (ms).
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );

    -- Every origin this node holds a feed of, including its own (is_self = 1).
    -- The integer id is local to this store and packs into entry keys, so it stays below 2^23.
    CREATE TABLE origins (
        id         INTEGER PRIMARY KEY CHECK (id > 0 AND id < 8388608),
        node_id    BLOB NOT NULL UNIQUE CHECK (length(node_id) = 32),
        is_self    INTEGER NOT NULL DEFAULT 0,
        head_seq   INTEGER NOT NULL DEFAULT 0,
        head_hash  BLOB,
        bytes      INTEGER NOT NULL DEFAULT 0,  -- total size of stored entry bytes
        frozen_at  INTEGER                      -- ms; set when fork evidence was found
    );

    -- Entries, verbatim. key = origin id * 2^40 + seq: one integer key keeps a feed's entries
    -- contiguous and makes appends sequential B-tree inserts.
    CREATE TABLE entries (
        key    INTEGER PRIMARY KEY,
        hash   BLOB NOT NULL,
        bytes  BLOB NOT NULL
    );

    -- Checkpoints signed by origins (ours for our feed, theirs as received).
    CREATE TABLE checkpoints (
        origin     INTEGER NOT NULL REFERENCES origins(id),
        seq        INTEGER NOT NULL,
        hash       BLOB NOT NULL,
        ts         INTEGER NOT NULL,
        signature  BLOB NOT NULL,
        PRIMARY KEY (origin, seq)
    ) WITHOUT ROWID;

    -- Materialized current state: for each live object, the seq of the put that holds its body.
    CREATE TABLE objects (
        origin  INTEGER NOT NULL,
        path    TEXT NOT NULL,
        seq     INTEGER NOT NULL,
        PRIMARY KEY (origin, path)
    ) WITHOUT ROWID;

    -- Positions in external streams (source lists, peer feeds), committed with what they produced.
    CREATE TABLE cursors (
        name        TEXT PRIMARY KEY,
        value       TEXT NOT NULL,
        updated_at  INTEGER NOT NULL
    );

    -- Proof that an origin signed two histories.
    CREATE TABLE forks (
        id           INTEGER PRIMARY KEY,
        origin       INTEGER NOT NULL REFERENCES origins(id),
        seq          INTEGER NOT NULL,
        our_hash     BLOB NOT NULL,
        their_hash   BLOB NOT NULL,
        ours         BLOB NOT NULL,   -- stored checkpoint form, 144 bytes
        theirs       BLOB NOT NULL,
        our_entries  BLOB NOT NULL,   -- ForkEvidence::pack of the linking entries
        their_entries BLOB NOT NULL,
        detected_at  INTEGER NOT NULL
    );
    "#,
    // 2: what holders of a feed acknowledged and served.
    r#"
    -- Per origin and holder: the latest (highest) receipt the holder signed for the origin, and
    -- the heads it served us. A holder that later serves less than it acknowledged or served
    -- before is behind: rolled back, or withholding.
    CREATE TABLE holders (
        origin        INTEGER NOT NULL REFERENCES origins(id),
        holder        BLOB NOT NULL CHECK (length(holder) = 32),
        acked_seq     INTEGER NOT NULL DEFAULT 0,
        acked_hash    BLOB,
        acked_ts      INTEGER,           -- ms, the receipt's own time
        receipt_sig   BLOB,
        served_seq    INTEGER,           -- the head it served when last asked
        served_max    INTEGER NOT NULL DEFAULT 0,  -- the highest head it ever served
        served_at     INTEGER,           -- ms, when we last asked
        incident_at   INTEGER,           -- ms, the last time it served less than before
        incident_served   INTEGER,       -- what it served then
        incident_expected INTEGER,       -- what it had acknowledged or served before
        PRIMARY KEY (origin, holder)
    ) WITHOUT ROWID;
    "#,
    // 3: signed snapshots, and which holders have them.
    r#"
    -- Snapshots signed by origins (ours, or received with their feeds), at most one per seq.
    CREATE TABLE snapshots (
        origin      INTEGER NOT NULL REFERENCES origins(id),
        seq         INTEGER NOT NULL,
        statement   BLOB NOT NULL CHECK (length(statement) = 192),  -- Snapshot::to_bytes
        received_at INTEGER NOT NULL,
        PRIMARY KEY (origin, seq)
    ) WITHOUT ROWID;

            -- Holders known to have accepted a snapshot.
    CREATE TABLE snapshot_holders (
        origin  INTEGER NOT NULL,
        seq     INTEGER NOT NULL,
        holder  BLOB NOT NULL CHECK (length(holder) = 32),
        at      INTEGER NOT NULL,
        PRIMARY KEY (origin, seq, holder)
    ) WITHOUT ROWID;
    "#,
    // 4: the tombstones of the state. Stores from before have recorded no delete with a
    // tombstone, so an empty table is right for them.
    r#"
    -- The tombstones the source keeps: per path, the last delete that carried one, unless a
    -- put came after it (or its container was deleted since). Lets a re-read delete be
    -- recognized as already recorded.
    CREATE TABLE tombstones (
        origin  INTEGER NOT NULL,
        path    TEXT NOT NULL,
        seq     INTEGER NOT NULL,
        PRIMARY KEY (origin, path)
    ) WITHOUT ROWID;
    "#,
    // 5: compaction. Entries at or below an origin's base seq are only those that hold its
    // state there (live objects and tombstones), checked against the snapshot signed at that
    // seq; the chain is whole from base_seq + 1, whose prev is base_hash.
    r#"
    ALTER TABLE origins ADD COLUMN base_seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE origins ADD COLUMN base_hash BLOB;
    "#,
    // 6: what a peer that pulls a feed from this node says it holds: the `after` of its last
    // signed request for entries. Compaction of the own feed waits for it too.
    r#"
    ALTER TABLE holders ADD COLUMN pulled_seq INTEGER;  -- NULL: it never pulled
    ALTER TABLE holders ADD COLUMN pulled_at  INTEGER;  -- ms, when
    "#,
    // 7: entries found damaged on disk (their bytes no longer hash to the recorded hash, or no
    // longer chain), not served until a good copy from a peer replaces them.
    r#"
    CREATE TABLE damaged (
        origin         INTEGER NOT NULL,
        seq            INTEGER NOT NULL,
        found_at       INTEGER NOT NULL,  -- ms
        detail         TEXT NOT NULL,
        unrepaired_at  INTEGER,           -- ms; set when every peer answered without a good copy
        PRIMARY KEY (origin, seq)
    ) WITHOUT ROWID;
    "#,
    // 8: restore drills: the last outcome per origin, and the buckets drills wrote into each
    // scratch server (the only ones a drill may delete there).
    r#"
    CREATE TABLE drills (
        origin       BLOB PRIMARY KEY CHECK (length(origin) = 32),
        at           INTEGER NOT NULL,  -- ms, when it started
        seq          INTEGER NOT NULL,  -- the snapshot restored (0: none)
        ok           INTEGER NOT NULL,
        error        TEXT,
        duration_ms  INTEGER NOT NULL,
        objects      INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE drill_buckets (
        target       TEXT NOT NULL,     -- the scratch server's root URL
        bucket       TEXT NOT NULL,
        fingerprint  TEXT,              -- its lists' ETags once read back; NULL while written
        PRIMARY KEY (target, bucket)
    ) WITHOUT ROWID;
    "#,
    // 9: migrations: buckets of an origin mirrored into another Kinto server, and per object
    // the timestamp the mirror last wrote there (what it expects to find when it writes next).
    r#"
    CREATE TABLE migrations (
        id           INTEGER PRIMARY KEY,
        origin       BLOB NOT NULL CHECK (length(origin) = 32),
        buckets      TEXT NOT NULL,     -- JSON array of bucket ids
        collections  TEXT NOT NULL,     -- JSON array of "bucket/collection"
        target       TEXT NOT NULL,     -- the target's root URL
        user         TEXT NOT NULL,
        credentials  TEXT NOT NULL,     -- "file:PATH" or "env:VAR": where the password is, never it
        applied_seq  INTEGER NOT NULL,  -- every entry up to here is on the target
        state        TEXT NOT NULL CHECK (state IN ('mirroring', 'stopped')),
        reason       TEXT,              -- why it stopped
        created_at   INTEGER NOT NULL   -- ms
    );

    CREATE TABLE migration_objects (
        migration      INTEGER NOT NULL,
        path           TEXT NOT NULL,
        last_modified  INTEGER NOT NULL,
        PRIMARY KEY (migration, path)
    ) WITHOUT ROWID;
    "#,
    // 10: the switch at the end of a migration: its phase, and the permissions it took from
    // the old server's objects (to give them back on abort, and to keep them on the target).
    r#"
    CREATE TABLE migration_switch (
        migration    INTEGER PRIMARY KEY,
        phase        TEXT NOT NULL CHECK (phase IN ('finishing', 'finished', 'aborted')),
        user         TEXT NOT NULL,     -- the account that changes the old server's permissions
        credentials  TEXT NOT NULL,     -- "file:PATH" or "env:VAR"
        moved_seq    INTEGER,           -- the seq of the moved statements, once finished
        at           INTEGER NOT NULL   -- ms, when the phase was entered
    );

    CREATE TABLE migration_locks (
        migration     INTEGER NOT NULL,
        path          TEXT NOT NULL,
        permissions   TEXT NOT NULL,    -- the object's permissions before, as recorded (JSON)
        locked_stamp  INTEGER,          -- last_modified the old server gave the locked object
        PRIMARY KEY (migration, path)
    ) WITHOUT ROWID;
    "#,
    // 11: key backups: per origin this node holds, at most one node key sealed under the
    // origin's passphrase (see `crate::keybackup`), and the public key that proves it.
    r#"
    CREATE TABLE key_backups (
        origin     BLOB PRIMARY KEY CHECK (length(origin) = 32),
        version    INTEGER NOT NULL,
        fetch_key  BLOB NOT NULL CHECK (length(fetch_key) = 32),
        blob       BLOB NOT NULL CHECK (length(blob) <= 256),
        stored_at  INTEGER NOT NULL   -- ms
    ) WITHOUT ROWID;
    "#,
    // 12: sealed feeds (see `store::sealed`): on a node that may read one, each sealed entry's
    // plaintext, and the sealed path of each source path. A store from before holds no sealed
    // feed, so empty tables are right for it.
    r#"
    CREATE TABLE opened (
        key    INTEGER PRIMARY KEY,  -- the sealed entry's key in `entries`
        bytes  BLOB NOT NULL         -- its plaintext, in the entry encoding
    );

    CREATE TABLE opened_paths (
        origin  INTEGER NOT NULL,
        path    TEXT NOT NULL,       -- a source path
        sealed  TEXT NOT NULL,       -- its sealed path
        PRIMARY KEY (origin, path)
    ) WITHOUT ROWID;

    -- An entry's plaintext goes with it (compaction, a removed origin).
    CREATE TRIGGER opened_follows_entries AFTER DELETE ON entries
    BEGIN
        DELETE FROM opened WHERE key = old.key;
    END;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// What the header of an opened file says.
pub enum Found {
    /// A fresh, empty database.
    Empty,
    /// A tandem store at this schema version.
    Tandem(i64),
    /// Something else.
    Foreign,
}

/// Reads the header pragmas. Fails on files SQLite cannot read as a database.
pub fn inspect(conn: &Connection) -> rusqlite::Result<Found> {
    let app: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    Ok(match (app, version, tables) {
        (0, 0, 0) => Found::Empty,
        (APPLICATION_ID, v, _) => Found::Tandem(v),
        _ => Found::Foreign,
    })
}

/// Applies the migrations after `from`, each in its own transaction.
pub fn migrate(conn: &mut Connection, from: i64) -> rusqlite::Result<()> {
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {};",
            i + 1
        ))?;
        tx.commit()?;
    }
    Ok(())
}
