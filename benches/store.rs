//! Store throughput on 1,000,000 entries of ~300 bytes (run with `cargo bench --bench store`):
//!
//! - `accept_foreign`: verify a foreign origin's batch (decode, chain, checkpoint signature)
//!   and store it (entries, checkpoint, materialized state) in one transaction;
//! - `append_own`: encode, hash, sign and store the same changes as the origin;
//! - `append_own_sealed`: the same in a sealed feed (`[node] seal = true`): each change also
//!   sealed (keyed path hash, XChaCha20-Poly1305, a version 2 entry) and its source path kept;
//! - `accept_foreign_sealed`: `accept_foreign` of that sealed feed, as a holder stores it;
//! - `verify_only`: the verification part of `accept_foreign` alone;
//! - `encode_only`, `seal_only`: the work of `append_own` and `append_own_sealed` that is not
//!   the database's, per change: check, encode and hash the entry; for the sealed one also the
//!   keyed path hash and the AEAD. What the second takes over the first, no store design saves;
//! - `bare_insert`: the same entry rows inserted into a plain SQLite table with the same
//!   pragmas, in one transaction: the floor the store is compared against;
//! - `snapshot_state_root`: a snapshot of 1,000,000 live objects (state root and signature);
//! - `verify_full`: `tandem verify` of that feed;
//! - `compact`: compaction of a feed of 1,000,000 puts over 500,000 paths at a snapshot of its
//!   head (state checked, 500,000 entries dropped, pages given back); prints the file sizes.
//!
//! `BENCH_RECORD_IDS=random` gives the records ids in no order, as Kinto's UUID4 ids are,
//! instead of ids that grow within each collection.
//!
//! Each sample uses a fresh database in a temporary directory on the same disk, or in
//! `BENCH_TMPDIR` when set (`BENCH_TMPDIR=/dev/shm` times the store without the disk). `max alloc`
//! in divan's allocation columns counts Rust heap allocations of one iteration, inputs
//! excluded; SQLite's own memory (its page cache) is not in it. The peak RSS printed at the end
//! is the whole process, inputs included: run one benchmark at a time to read it per benchmark.

use divan::{AllocProfiler, Bencher, counter::ItemsCount};
use tandem::feed::{
    Checkpoint, EntryHash, Head, Seq, check_change, encode_entry, encode_sealed_entry, verify_batch,
};
use tandem::identity::{NodeId, NodeKey};
use tandem::seal::SealKey;
use tandem::store::{Change, Store};

mod common;
use common::change;

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

const N: usize = 1_000_000;

fn main() {
    divan::main();
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    eprintln!("peak RSS of this run: {} MiB", usage.ru_maxrss / 1024);
}

fn foreign_batch(key: &NodeKey) -> (Vec<Vec<u8>>, Checkpoint) {
    let mut entries = Vec::with_capacity(N);
    let prev = encode_chain(key.id(), (0..N).map(change), |bytes| entries.push(bytes));
    let cp = Checkpoint::sign(
        key,
        Head {
            seq: Seq(N as u64),
            hash: prev,
        },
        1,
    );
    (entries, cp)
}

/// Encodes `changes` as `origin`'s plain feed from seq 1, each entry's bytes handed to
/// `keep`; returns the head's hash.
fn encode_chain<C: std::borrow::Borrow<Change>>(
    origin: NodeId,
    changes: impl IntoIterator<Item = C>,
    mut keep: impl FnMut(Vec<u8>),
) -> EntryHash {
    let mut prev = EntryHash::genesis(&origin);
    for (i, c) in changes.into_iter().enumerate() {
        let c = c.borrow();
        let bytes = encode_entry(
            Seq(i as u64 + 1),
            prev,
            1_795_000_000_000,
            c.op,
            &c.path,
            &c.body,
        )
        .unwrap();
        prev = EntryHash::of(&bytes);
        keep(bytes);
    }
    prev
}

/// A fresh temporary directory for one sample's database (see the module docs).
fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("BENCH_TMPDIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")),
    }
    .unwrap()
}

fn own_key() -> NodeKey {
    NodeKey::from_seed([1; 32])
}

#[divan::bench(sample_count = 3, sample_size = 1)]
fn accept_foreign(bencher: Bencher) {
    let origin = NodeKey::from_seed([2; 32]);
    let (entries, cp) = foreign_batch(&origin);
    let bytes: usize = entries.iter().map(Vec::len).sum();
    eprintln!(
        "accept_foreign: {N} entries, {:.0} bytes each on average",
        bytes as f64 / N as f64
    );
    bencher
        .counter(ItemsCount::new(N))
        .with_inputs(|| {
            let dir = bench_dir();
            let store = Store::open_writer(dir.path(), own_key().id()).unwrap();
            (dir, store, entries.clone())
        })
        .bench_local_values(|(dir, mut store, entries)| {
            let batch = verify_batch(origin.id(), entries, cp).unwrap();
            let accepted = store.accept(&batch, &[]).unwrap();
            assert_eq!(accepted.added, N as u64);
            (dir, store)
        });
}

#[divan::bench(sample_count = 3, sample_size = 1)]
fn append_own(bencher: Bencher) {
    let changes: Vec<Change> = (0..N).map(change).collect();
    bencher
        .counter(ItemsCount::new(N))
        .with_inputs(|| {
            let dir = bench_dir();
            let store = Store::open_writer(dir.path(), own_key().id()).unwrap();
            (dir, store)
        })
        .bench_local_values(|(dir, mut store)| {
            store.append(&own_key(), &changes, &[]).unwrap();
            (dir, store)
        });
}

#[divan::bench(sample_count = 3, sample_size = 1)]
fn append_own_sealed(bencher: Bencher) {
    let changes: Vec<Change> = (0..N).map(change).collect();
    bencher
        .counter(ItemsCount::new(N))
        .with_inputs(|| {
            let dir = bench_dir();
            let mut store = Store::open_writer(dir.path(), own_key().id()).unwrap();
            store.seal_own(&own_key(), Some(true)).unwrap();
            (dir, store)
        })
        .bench_local_values(|(dir, mut store)| {
            store.append(&own_key(), &changes, &[]).unwrap();
            (dir, store)
        });
}

/// The sealed feed of [`append_own_sealed`] as a holder receives it: its entries and the
/// checkpoint at its head.
fn sealed_batch(key: &NodeKey) -> (Vec<Vec<u8>>, Checkpoint) {
    let dir = bench_dir();
    let mut store = Store::open_writer(dir.path(), key.id()).unwrap();
    store.seal_own(key, Some(true)).unwrap();
    let changes: Vec<Change> = (0..N).map(change).collect();
    let cp = store.append(key, &changes, &[]).unwrap().unwrap();
    let entries = store
        .entries_after(key.id(), Seq(0), N)
        .unwrap()
        .into_iter()
        .map(|e| e.bytes)
        .collect();
    (entries, cp)
}

#[divan::bench(sample_count = 3, sample_size = 1)]
fn accept_foreign_sealed(bencher: Bencher) {
    let origin = NodeKey::from_seed([2; 32]);
    let (entries, cp) = sealed_batch(&origin);
    let bytes: usize = entries.iter().map(Vec::len).sum();
    eprintln!(
        "accept_foreign_sealed: {N} entries, {:.0} bytes each on average",
        bytes as f64 / N as f64
    );
    bencher
        .counter(ItemsCount::new(N))
        .with_inputs(|| {
            let dir = bench_dir();
            let store = Store::open_writer(dir.path(), own_key().id()).unwrap();
            (dir, store, entries.clone())
        })
        .bench_local_values(|(dir, mut store, entries)| {
            let batch = verify_batch(origin.id(), entries, cp).unwrap();
            let accepted = store.accept(&batch, &[]).unwrap();
            assert_eq!(accepted.added, N as u64);
            (dir, store)
        });
}

#[divan::bench(sample_count = 3, sample_size = 1)]
fn encode_only(bencher: Bencher) {
    let changes: Vec<Change> = (0..N).map(change).collect();
    let origin = own_key().id();
    bencher
        .counter(ItemsCount::new(N))
        .bench_local(|| encode_chain(origin, &changes, drop));
}

#[divan::bench(sample_count = 3, sample_size = 1)]
fn seal_only(bencher: Bencher) {
    let changes: Vec<Change> = (0..N).map(change).collect();
    let key = own_key();
    let seal = SealKey::of_node(&key);
    bencher.counter(ItemsCount::new(N)).bench_local(|| {
        let mut prev = EntryHash::genesis(&key.id());
        for (i, c) in changes.iter().enumerate() {
            check_change(c.op, &c.path, &c.body).unwrap();
            let (path, body) = seal.seal(c.op, &c.path, &c.body).unwrap();
            let bytes = encode_sealed_entry(
                Seq(i as u64 + 1),
                prev,
                1_795_000_000_000,
                c.op,
                &path,
                &body,
            )
            .unwrap();
            prev = EntryHash::of(&bytes);
        }
        prev
    });
}

#[divan::bench(sample_count = 3, sample_size = 1)]
fn bare_insert(bencher: Bencher) {
    let origin = NodeKey::from_seed([2; 32]);
    let (entries, _) = foreign_batch(&origin);
    let hashes: Vec<EntryHash> = entries.iter().map(|e| EntryHash::of(e)).collect();
    bencher
        .counter(ItemsCount::new(N))
        .with_inputs(|| {
            let dir = bench_dir();
            let conn = rusqlite::Connection::open(dir.path().join("bare.db")).unwrap();
            conn.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -65536;
                 CREATE TABLE entries (key INTEGER PRIMARY KEY, hash BLOB NOT NULL, bytes BLOB NOT NULL);",
            )
            .unwrap();
            (dir, conn)
        })
        .bench_local_values(|(dir, mut conn)| {
            let tx = conn.transaction().unwrap();
            {
                let mut insert = tx.prepare("INSERT INTO entries (key, hash, bytes) VALUES (?1, ?2, ?3)").unwrap();
                for (i, (bytes, hash)) in entries.iter().zip(&hashes).enumerate() {
                    insert.execute(((1i64 << 40) | (i as i64 + 1), &hash.0[..], bytes)).unwrap();
                }
            }
            tx.commit().unwrap();
            (dir, conn)
        });
}

#[divan::bench(sample_count = 3, sample_size = 1)]
fn verify_only(bencher: Bencher) {
    let origin = NodeKey::from_seed([2; 32]);
    let (entries, cp) = foreign_batch(&origin);
    bencher
        .counter(ItemsCount::new(N))
        .with_inputs(|| entries.clone())
        .bench_local_values(|entries| verify_batch(origin.id(), entries, cp).unwrap());
}

/// A store holding our own feed of 1,000,000 puts (one object each), built once.
fn filled_store() -> &'static (tempfile::TempDir, NodeKey) {
    static STORE: std::sync::OnceLock<(tempfile::TempDir, NodeKey)> = std::sync::OnceLock::new();
    STORE.get_or_init(|| {
        let dir = bench_dir();
        let key = own_key();
        let mut store = Store::open_writer(dir.path(), key.id()).unwrap();
        let changes: Vec<Change> = (0..N).map(change).collect();
        for chunk in changes.chunks(100_000) {
            store.append(&key, chunk, &[]).unwrap();
        }
        (dir, key)
    })
}

/// The state root of 1,000,000 objects (read in path order, hashed, folded) and its signature,
/// as `tandem snapshot create` computes it; the snapshot row is removed after each sample.
#[divan::bench(sample_count = 3, sample_size = 1)]
fn snapshot_state_root(bencher: Bencher) {
    let (dir, key) = filled_store();
    let store = std::cell::RefCell::new(Store::open_writer(dir.path(), key.id()).unwrap());
    let cleanup = rusqlite::Connection::open(dir.path().join("tandem.db")).unwrap();
    bencher
        .counter(ItemsCount::new(N))
        .with_inputs(|| {
            cleanup.execute("DELETE FROM snapshots", []).unwrap();
        })
        .bench_local_values(|()| {
            let (snapshot, created) = store.borrow_mut().create_snapshot(key).unwrap();
            assert!(created && snapshot.objects == N as u64);
        });
}

/// Compaction at a snapshot of the head of a feed whose first 500,000 puts were all
/// overwritten since: the state at the snapshot is replayed and checked, 500,000 entries are
/// dropped, and the free pages go back to the file system (`reclaim_space`, timed too).
#[divan::bench(sample_count = 3, sample_size = 1)]
fn compact(bencher: Bencher) {
    bencher
        .counter(ItemsCount::new(N))
        .with_inputs(|| {
            let dir = bench_dir();
            let key = own_key();
            let mut store = Store::open_writer(dir.path(), key.id()).unwrap();
            let changes: Vec<Change> = (0..N)
                .map(|i| Change {
                    path: change(i % (N / 2)).path,
                    ..change(i)
                })
                .collect();
            for chunk in changes.chunks(100_000) {
                store.append(&key, chunk, &[]).unwrap();
            }
            let (snapshot, _) = store.create_snapshot(&key).unwrap();
            (dir, key, store, snapshot.seq)
        })
        .bench_local_values(|(dir, key, mut store, at)| {
            let done = store.compact(key.id(), at).unwrap();
            assert_eq!(done.entries, N as u64 / 2);
            let (before, after) = store.reclaim_space().unwrap();
            eprintln!(
                "compact: {} entries ({} MB) dropped; file {} MB -> {} MB",
                done.entries,
                done.bytes / 1_000_000,
                before / 1_000_000,
                after / 1_000_000
            );
            (dir, store)
        });
}

/// `tandem verify` of the same feed: every entry re-hashed and decoded, every link, every
/// checkpoint, and the materialized state against a replay.
#[divan::bench(sample_count = 3, sample_size = 1)]
fn verify_full(bencher: Bencher) {
    let (dir, _) = filled_store();
    let store = Store::open_read_only(dir.path()).unwrap();
    let origin = store.node_id().unwrap();
    bencher.counter(ItemsCount::new(N)).bench_local(|| {
        let report = store.verify_origin(origin).unwrap();
        assert!(report.problems.is_empty());
    });
}
