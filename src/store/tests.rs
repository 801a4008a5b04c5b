//! Store tests on real database files in temporary directories.

use proptest::prelude::*;

use super::*;
use crate::feed::{Checkpoint, Snapshot, VerifiedBatch, encode_entry, verify_batch};
use crate::identity::NodeKey;
use crate::retention::Holders;

/// A chain of `n` entries for `key`, starting after `from`, with a checkpoint at every seq.
struct Chain {
    entries: Vec<Vec<u8>>,
    checkpoints: Vec<Checkpoint>,
}

impl Chain {
    /// `salt` makes bodies differ, so two chains of one key are two histories (a fork).
    fn new(key: &NodeKey, n: usize, salt: &str) -> Chain {
        let mut prev = EntryHash::genesis(&key.id());
        let mut entries = Vec::new();
        let mut checkpoints = Vec::new();
        for i in 0..n {
            let seq = Seq(i as u64 + 1);
            let (op, body) = if i % 4 == 3 {
                (Op::Delete, String::new())
            } else {
                (
                    Op::Put,
                    format!(
                        r#"{{"data":{{"id":"r{}","v":"{salt}{i}"}},"permissions":{{}}}}"#,
                        i % 3
                    ),
                )
            };
            let path = format!("/buckets/b/collections/c/records/r{}", i % 3);
            let bytes = encode_entry(
                seq,
                prev,
                1_800_000_000_000 + i as u64,
                op,
                &path,
                body.as_bytes(),
            )
            .unwrap();
            prev = EntryHash::of(&bytes);
            checkpoints.push(Checkpoint::sign(key, Head { seq, hash: prev }, 7));
            entries.push(bytes);
        }
        Chain {
            entries,
            checkpoints,
        }
    }

    /// Entries `from..to` (0-based, exclusive end) with the checkpoint covering `to - 1`.
    fn batch(&self, from: usize, to: usize) -> (Vec<Vec<u8>>, Checkpoint) {
        (self.entries[from..to].to_vec(), self.checkpoints[to - 1])
    }

    fn verified(&self, key: &NodeKey, from: usize, to: usize) -> VerifiedBatch {
        let (entries, cp) = self.batch(from, to);
        verify_batch(key.id(), entries, cp).unwrap()
    }
}

fn writer(dir: &Path) -> Store {
    Store::open_writer(dir, NodeKey::from_seed([0; 32]).id()).unwrap()
}

fn assert_sound(store: &Store, origin: NodeId) {
    let report = store.verify_origin(origin).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn append_signs_checkpoints_and_materializes_state() {
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::from_seed([0; 32]);
    let mut store = writer(dir.path());
    let put = |path: &str, v: u32| Change {
        op: Op::Put,
        path: path.into(),
        body: format!(r#"{{"data":{{"v":{v}}}}}"#).into_bytes(),
    };
    let cp = store
        .append(
            &key,
            &[put("/buckets/a", 1), put("/buckets/b", 2)],
            &[CursorUpdate {
                name: "source:x".into(),
                value: "10".into(),
            }],
        )
        .unwrap()
        .unwrap();
    assert_eq!(cp.seq, Seq(2));
    cp.verify().unwrap();
    store
        .append(
            &key,
            &[
                Change {
                    op: Op::Delete,
                    path: "/buckets/a".into(),
                    body: vec![],
                },
                put("/buckets/b", 3),
            ],
            &[],
        )
        .unwrap();
    assert_eq!(store.head(key.id()).unwrap().unwrap().seq, Seq(4));
    assert_eq!(store.object(key.id(), "/buckets/a").unwrap(), None);
    assert_eq!(
        store.object(key.id(), "/buckets/b").unwrap().unwrap(),
        br#"{"data":{"v":3}}"#
    );
    assert_eq!(store.object_count(key.id()).unwrap(), 1);
    assert_eq!(store.cursor("source:x").unwrap().as_deref(), Some("10"));
    assert_eq!(store.entries_after(key.id(), Seq(1), 2).unwrap().len(), 2);
    assert_sound(&store, key.id());

    // A bad change is refused and nothing of its batch is stored.
    let bad = Change {
        op: Op::Put,
        path: "/buckets/c".into(),
        body: b"not json".to_vec(),
    };
    assert!(
        store
            .append(&key, &[put("/buckets/d", 1), bad], &[])
            .is_err()
    );
    assert_eq!(store.head(key.id()).unwrap().unwrap().seq, Seq(4));
    assert_eq!(store.object(key.id(), "/buckets/d").unwrap(), None);
}

#[test]
fn accepts_in_pieces_and_redelivery_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = writer(dir.path());
    let key = NodeKey::from_seed([5; 32]);
    let chain = Chain::new(&key, 10, "a");
    let a = store.accept(&chain.verified(&key, 0, 4), &[]).unwrap();
    assert_eq!((a.added, a.head.seq), (4, Seq(4)));
    // Overlapping batch: only the new part is added.
    let a = store
        .accept(
            &chain.verified(&key, 2, 10),
            &[CursorUpdate {
                name: "peer:p".into(),
                value: "10".into(),
            }],
        )
        .unwrap();
    assert_eq!((a.added, a.head.seq), (6, Seq(10)));
    for (from, to) in [(0, 10), (3, 5), (9, 10)] {
        let a = store.accept(&chain.verified(&key, from, to), &[]).unwrap();
        assert_eq!((a.added, a.head.seq), (0, Seq(10)));
    }
    let stored: Vec<_> = store
        .entries_after(key.id(), Seq(0), 100)
        .unwrap()
        .into_iter()
        .map(|e| e.bytes)
        .collect();
    assert_eq!(stored, chain.entries);
    assert_eq!(store.cursor("peer:p").unwrap().as_deref(), Some("10"));
    assert_sound(&store, key.id());
}

#[test]
fn accepting_pages_together_stores_what_accepting_them_one_by_one_does() {
    let key = NodeKey::from_seed([5; 32]);
    let chain = Chain::new(&key, 12, "a");
    let pages = |bounds: &[(usize, usize)]| -> Vec<VerifiedBatch> {
        bounds
            .iter()
            .map(|&(from, to)| chain.verified(&key, from, to))
            .collect()
    };
    let (one_dir, all_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut one, mut all) = (writer(one_dir.path()), writer(all_dir.path()));
    // Pages that overlap what is held and each other, as re-delivered pages do.
    let bounds = [(0, 3), (3, 5), (2, 8), (8, 12)];
    for batch in pages(&bounds) {
        one.accept(&batch, &[]).unwrap();
    }
    let a = all.accept_all(&pages(&bounds)).accepted.unwrap();
    assert_eq!((a.added, a.head.seq, a.repaired), (12, Seq(12), 0));
    let again = [(4, 6), (6, 12)];
    for batch in pages(&again) {
        one.accept(&batch, &[]).unwrap();
    }
    let a = all.accept_all(&pages(&again)).accepted.unwrap();
    assert_eq!((a.added, a.head.seq), (0, Seq(12)));
    let o = key.id();
    assert_eq!(
        all.entries_after(o, Seq(0), 100).unwrap(),
        one.entries_after(o, Seq(0), 100).unwrap()
    );
    assert_eq!(all.checkpoints(o).unwrap(), one.checkpoints(o).unwrap());
    assert_eq!(
        all.paths_under(o, "/").unwrap(),
        one.paths_under(o, "/").unwrap()
    );
    let replayed = all.state_for_restore(o, Seq(12)).unwrap();
    assert_eq!(replayed, one.state_for_restore(o, Seq(12)).unwrap());
    // The state written (puts wait and are written in path order) is the one a replay of
    // the entries gives.
    let live: Vec<String> = replayed
        .iter()
        .filter(|i| !i.deleted)
        .map(|i| i.path.clone())
        .collect();
    assert!(!live.is_empty());
    assert_eq!(all.paths_under(o, "/").unwrap(), live);
    assert_sound(&all, o);
    let none = all.accept_all(&[]);
    assert!(none.accepted.is_none());
    assert!(matches!(
        none.error,
        Some(StoreError::Feed(FeedError::Malformed(_)))
    ));
}

#[test]
fn pages_accepted_together_keep_what_comes_before_a_gap_or_a_fork() {
    let key = NodeKey::from_seed([5; 32]);
    let honest = Chain::new(&key, 10, "a");
    let fork = Chain::new(&key, 10, "b");
    // A gap after two good pages: those two are stored, the gap reported.
    let dir = tempfile::tempdir().unwrap();
    let mut store = writer(dir.path());
    let done = store.accept_all(&[
        honest.verified(&key, 0, 2),
        honest.verified(&key, 2, 4),
        honest.verified(&key, 6, 8),
    ]);
    assert!(
        matches!(done.error, Some(StoreError::Gap { .. })),
        "{done:?}"
    );
    let stored = done.accepted.expect("the two pages before the gap");
    assert_eq!((stored.added, stored.head.seq), (4, Seq(4)));
    assert_eq!(store.head(key.id()).unwrap().unwrap().seq, Seq(4));
    // A page that forks from what the group's own pages stored: the evidence is kept and
    // the origin frozen, as when the pages come one by one.
    let done = store.accept_all(&[honest.verified(&key, 4, 6), fork.verified(&key, 0, 8)]);
    assert_eq!(done.accepted.map(|a| a.head.seq), Some(Seq(6)));
    let Some(StoreError::Fork(evidence)) = done.error else {
        panic!("expected a fork, got {:?}", done.error)
    };
    evidence.verify().unwrap();
    assert_eq!(evidence.seq, Seq(1));
    assert_eq!(store.head(key.id()).unwrap().unwrap().seq, Seq(6));
    assert_eq!(store.forks(key.id()).unwrap(), vec![*evidence]);
    let done = store.accept_all(&[honest.verified(&key, 6, 10)]);
    assert!(done.accepted.is_none());
    assert!(matches!(done.error, Some(StoreError::Frozen { .. })));
    assert_sound(&store, key.id());
}

#[test]
fn a_gap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = writer(dir.path());
    let key = NodeKey::from_seed([5; 32]);
    let chain = Chain::new(&key, 6, "a");
    store.accept(&chain.verified(&key, 0, 2), &[]).unwrap();
    let err = store.accept(&chain.verified(&key, 3, 6), &[]).unwrap_err();
    assert!(matches!(err, StoreError::Gap { .. }), "{err}");
    assert_eq!(store.head(key.id()).unwrap().unwrap().seq, Seq(2));
}

#[test]
fn a_fork_is_stored_as_evidence_and_freezes_the_origin() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = writer(dir.path());
    let key = NodeKey::from_seed([5; 32]);
    let honest = Chain::new(&key, 6, "a");
    let fork = Chain::new(&key, 8, "b");
    store.accept(&honest.verified(&key, 0, 6), &[]).unwrap();
    let err = store.accept(&fork.verified(&key, 0, 8), &[]).unwrap_err();
    let StoreError::Fork(evidence) = err else {
        panic!("expected a fork, got {err}")
    };
    assert_eq!(evidence.seq, Seq(1));
    evidence.verify().unwrap();
    assert_ne!(evidence.our_hash, evidence.their_hash);
    assert_eq!(store.forks(key.id()).unwrap(), vec![*evidence]);
    let info = store
        .origins()
        .unwrap()
        .into_iter()
        .find(|o| o.id == key.id())
        .unwrap();
    assert!(info.frozen);
    // Frozen: even the honest continuation is refused now, and nothing changed.
    assert!(matches!(
        store.accept(&honest.verified(&key, 0, 6), &[]),
        Err(StoreError::Frozen { .. })
    ));
    assert_eq!(store.head(key.id()).unwrap().unwrap().seq, Seq(6));
    assert_sound(&store, key.id());
}

#[test]
fn a_fork_that_links_past_our_head_is_caught_at_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = writer(dir.path());
    let key = NodeKey::from_seed([5; 32]);
    let honest = Chain::new(&key, 4, "a");
    let fork = Chain::new(&key, 8, "b");
    store.accept(&honest.verified(&key, 0, 4), &[]).unwrap();
    // Starts right after our head, but its prev is the fork's entry 4, not ours.
    let err = store.accept(&fork.verified(&key, 4, 8), &[]).unwrap_err();
    let StoreError::Fork(evidence) = err else {
        panic!("expected a fork, got {err}")
    };
    assert_eq!(evidence.seq, Seq(4));
}

#[test]
fn a_conflicting_lone_checkpoint_is_a_fork() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = writer(dir.path());
    let key = NodeKey::from_seed([5; 32]);
    let honest = Chain::new(&key, 4, "a");
    let fork = Chain::new(&key, 4, "b");
    store.accept(&honest.verified(&key, 0, 4), &[]).unwrap();
    assert_eq!(
        store.observe_checkpoint(&honest.checkpoints[2]).unwrap(),
        CheckpointCheck::Consistent
    );
    let ahead = Chain::new(&key, 6, "a");
    assert_eq!(
        store.observe_checkpoint(&ahead.checkpoints[5]).unwrap(),
        CheckpointCheck::Ahead
    );
    assert!(matches!(
        store.observe_checkpoint(&fork.checkpoints[1]),
        Err(StoreError::Fork(_))
    ));
    assert!(
        store
            .origins()
            .unwrap()
            .iter()
            .any(|o| o.id == key.id() && o.frozen)
    );
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit { entry: usize, byte: usize, bit: u8 },
    Swap(usize, usize),
    Drop(usize),
    Duplicate(usize),
    SpliceOtherOrigin(usize),
    SpliceFork(usize),
}

fn mutation(len: usize) -> impl Strategy<Value = Mutation> {
    let i = 0..len;
    prop_oneof![
        (i.clone(), any::<usize>(), 0u8..8).prop_map(|(entry, byte, bit)| Mutation::FlipBit {
            entry,
            byte,
            bit
        }),
        (i.clone(), i.clone())
            .prop_filter("distinct", |(a, b)| a != b)
            .prop_map(|(a, b)| Mutation::Swap(a, b)),
        i.clone().prop_map(Mutation::Drop),
        i.clone().prop_map(Mutation::Duplicate),
        i.clone().prop_map(Mutation::SpliceOtherOrigin),
        i.prop_map(Mutation::SpliceFork),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Whatever is done to a valid delivery, it is rejected and the store keeps exactly the
    /// honest prefix it had: sound, not frozen, nothing partial.
    #[test]
    fn tampered_batches_are_always_rejected(prefix in 0usize..4, len in 2usize..7, m in mutation(6)) {
        let key = NodeKey::from_seed([5; 32]);
        let other = NodeKey::from_seed([6; 32]);
        let honest = Chain::new(&key, 12, "a");
        let fork = Chain::new(&key, 12, "b");
        let foreign = Chain::new(&other, 12, "a");
        let dir = tempfile::tempdir().unwrap();
        let mut store = writer(dir.path());
        if prefix > 0 {
            store.accept(&honest.verified(&key, 0, prefix), &[]).unwrap();
        }
        let (mut entries, cp) = honest.batch(prefix, prefix + len);
        let pick = |i: usize| i % len;
        match m.clone() {
            Mutation::FlipBit { entry, byte, bit } => {
                let e = &mut entries[pick(entry)];
                let at = byte % e.len();
                e[at] ^= 1 << bit;
            }
            Mutation::Swap(a, b) => {
                prop_assume!(pick(a) != pick(b));
                entries.swap(pick(a), pick(b));
            }
            Mutation::Drop(i) => { entries.remove(pick(i)); }
            Mutation::Duplicate(i) => { let e = entries[pick(i)].clone(); entries.insert(pick(i), e); }
            Mutation::SpliceOtherOrigin(i) => entries[pick(i)] = foreign.entries[prefix + pick(i)].clone(),
            Mutation::SpliceFork(i) => entries[pick(i)] = fork.entries[prefix + pick(i)].clone(),
        }
        let result = verify_batch(key.id(), entries, cp)
            .map_err(StoreError::from)
            .and_then(|batch| store.accept(&batch, &[]));
        prop_assert!(result.is_err(), "accepted after {:?}", m);
        let held: Vec<_> = store.entries_after(key.id(), Seq(0), 100).unwrap().into_iter().map(|e| e.bytes).collect();
        prop_assert_eq!(&held[..], &honest.entries[..prefix]);
        prop_assert!(!store.origins().unwrap().iter().any(|o| o.frozen));
        let report = store.verify_origin(key.id()).unwrap();
        prop_assert!(report.problems.is_empty());
    }

    /// Any split of a chain into batches, delivered in order with any batch repeated, yields
    /// exactly the chain.
    #[test]
    fn any_split_and_redelivery_yields_the_chain(cuts in proptest::collection::btree_set(1usize..15, 0..6), repeat in 0usize..8) {
        let key = NodeKey::from_seed([5; 32]);
        let chain = Chain::new(&key, 16, "a");
        let dir = tempfile::tempdir().unwrap();
        let mut store = writer(dir.path());
        let mut bounds: Vec<usize> = vec![0];
        bounds.extend(cuts);
        bounds.push(16);
        let pieces: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
        for (n, (from, to)) in pieces.iter().enumerate() {
            store.accept(&chain.verified(&key, *from, *to), &[]).unwrap();
            if n == repeat % pieces.len() {
                let again = store.accept(&chain.verified(&key, *from, *to), &[]).unwrap();
                prop_assert_eq!(again.added, 0);
            }
        }
        let held: Vec<_> = store.entries_after(key.id(), Seq(0), 100).unwrap().into_iter().map(|e| e.bytes).collect();
        prop_assert_eq!(held, chain.entries.clone());
        prop_assert!(store.verify_origin(key.id()).unwrap().problems.is_empty());
    }
}

#[test]
fn a_second_writer_is_locked_out_but_readers_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::from_seed([0; 32]);
    let mut first = writer(dir.path());
    first
        .append(
            &key,
            &[Change {
                op: Op::Put,
                path: "/buckets/x".into(),
                body: b"{}".to_vec(),
            }],
            &[],
        )
        .unwrap();
    let asked = std::time::Instant::now();
    let err = Store::open_writer(dir.path(), key.id()).unwrap_err();
    assert!(
        matches!(err, StoreError::Locked { pid: Some(_), .. }),
        "{err}"
    );
    // A lock held by a writer that names itself is refused at once, not waited for.
    assert!(
        asked.elapsed() < LOCK_LET_GO_WAIT / 2,
        "{:?}",
        asked.elapsed()
    );
    let reader = Store::open_read_only(dir.path()).unwrap();
    assert_eq!(reader.head(key.id()).unwrap().unwrap().seq, Seq(1));
    drop(first);
    writer(dir.path());
}

/// A child spawned just as its parent closes the store holds a copy of the lock's descriptor
/// until its `exec`: the next writer waits for that copy to go instead of failing; a copy
/// that outlives the wait is refused, naming no pid.
#[test]
fn a_lock_let_go_while_a_copy_of_its_descriptor_lives_on_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let first = writer(dir.path());
    // A duplicate of the descriptor shares its open file, and so its lock, as the child's does.
    let copy = first._lock.as_ref().unwrap().0.try_clone().unwrap();
    drop(first);
    let holder = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(copy);
        std::time::Instant::now()
    });
    let second = writer(dir.path());
    let taken = std::time::Instant::now();
    let let_go = holder.join().unwrap();
    assert!(
        taken >= let_go,
        "the lock was taken while a copy still held it"
    );

    let copy = second._lock.as_ref().unwrap().0.try_clone().unwrap();
    drop(second);
    let wait = std::time::Duration::from_millis(200);
    let asked = std::time::Instant::now();
    let err = take_lock(dir.path(), wait).err().unwrap();
    assert!(matches!(err, StoreError::Locked { pid: None, .. }), "{err}");
    assert!(asked.elapsed() >= wait, "{:?}", asked.elapsed());
    drop(copy);
    writer(dir.path());
}

#[test]
fn a_store_of_another_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(writer(dir.path()));
    let err = Store::open_writer(dir.path(), NodeKey::from_seed([1; 32]).id()).unwrap_err();
    assert!(matches!(err, StoreError::WrongNode { .. }), "{err}");
}

#[test]
fn a_damaged_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(DB_FILE);
    let garbage = b"this is not a database, but it might be someone's data".repeat(100);
    std::fs::write(&db, &garbage).unwrap();
    let err = Store::open_writer(dir.path(), NodeKey::from_seed([0; 32]).id()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("will not overwrite"), "{err}");
    assert!(matches!(
        Store::open_read_only(dir.path()),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(std::fs::read(&db).unwrap(), garbage);
}

#[test]
fn a_foreign_sqlite_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(DB_FILE);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    let err = Store::open_writer(dir.path(), NodeKey::from_seed([0; 32]).id()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

#[test]
fn tampering_with_stored_bytes_is_found_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::from_seed([0; 32]);
    let mut store = writer(dir.path());
    let changes: Vec<Change> = (0..5)
        .map(|i| Change {
            op: Op::Put,
            path: format!("/buckets/b{i}"),
            body: format!(r#"{{"data":{{"n":{i}}}}}"#).into_bytes(),
        })
        .collect();
    store.append(&key, &changes, &[]).unwrap();
    assert_sound(&store, key.id());
    store
        .conn
        .execute("UPDATE entries SET bytes = CAST(replace(CAST(bytes AS TEXT), '\"n\":3', '\"n\":9') AS BLOB) WHERE key = ?1", [entry_key(1, 4)])
        .unwrap();
    let report = store.verify_origin(key.id()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.seq == Some(Seq(4)) && p.what.contains("hash")),
        "{:?}",
        report.problems
    );
}

#[test]
fn append_changes_skips_no_ops_and_paths_under_scans_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::from_seed([0; 32]);
    let mut store = writer(dir.path());
    let put = |path: &str, v: u32| Change {
        op: Op::Put,
        path: path.into(),
        body: format!(r#"{{"v":{v}}}"#).into_bytes(),
    };
    let del = |path: &str| Change {
        op: Op::Delete,
        path: path.into(),
        body: vec![],
    };
    let (_, n) = store
        .append_changes(
            &key,
            vec![
                put("/buckets/a", 1),
                put("/buckets/a/x", 1),
                put("/buckets/ab", 1),
            ],
            &[],
        )
        .unwrap();
    assert_eq!(n, 3);
    // Same bodies again, a delete of something absent, a put then delete within the batch.
    let (cp, n) = store
        .append_changes(
            &key,
            vec![
                put("/buckets/a", 1),
                del("/buckets/zz"),
                put("/buckets/a/y", 2),
                del("/buckets/a/y"),
                put("/buckets/a", 1),
            ],
            &[],
        )
        .unwrap();
    assert_eq!(
        n, 2,
        "only the put and delete of /buckets/a/y change anything"
    );
    assert_eq!(cp.unwrap().seq, Seq(5));
    let (cp, n) = store
        .append_changes(
            &key,
            vec![put("/buckets/a", 1)],
            &[CursorUpdate {
                name: "c".into(),
                value: "1".into(),
            }],
        )
        .unwrap();
    assert_eq!((cp, n), (None, 0));
    assert_eq!(store.cursor("c").unwrap().as_deref(), Some("1"));
    assert_eq!(
        store.paths_under(key.id(), "/buckets/a/").unwrap(),
        vec!["/buckets/a/x".to_owned()]
    );
    assert_eq!(store.paths_under(key.id(), "/buckets/a").unwrap().len(), 3);
    assert_sound(&store, key.id());
}

/// One change for [`appends_keep_the_state_of_their_changes`]: a put of one of two bodies, a
/// delete, or a delete with a tombstone, at one of a few nested paths.
fn small_change() -> impl Strategy<Value = Change> {
    const PATHS: &[&str] = &[
        "/buckets/a",
        "/buckets/a/collections/c",
        "/buckets/a/collections/c/records/r1",
        "/buckets/a/collections/c/records/r2",
        "/buckets/a/collections/d/records/r1",
        "/buckets/b/collections/c/records/r1",
    ];
    (0..PATHS.len(), 0u8..4).prop_map(|(i, kind)| Change {
        op: if kind < 2 { Op::Put } else { Op::Delete },
        path: PATHS[i].into(),
        body: match kind {
            0 | 1 => format!(r#"{{"data":{{"v":{kind}}}}}"#).into_bytes(),
            2 => Vec::new(),
            _ => br#"{"data":{"deleted":true,"last_modified":7}}"#.to_vec(),
        },
    })
}

/// The state changes make, folded in memory: live bodies and tombstones by path, and whether
/// each change changed anything (what `append_changes` keeps).
#[derive(Default)]
struct Model {
    live: std::collections::BTreeMap<String, Vec<u8>>,
    tombstones: std::collections::BTreeMap<String, Vec<u8>>,
}

impl Model {
    /// Applies `c`, unless `skip` and it changes nothing; says whether it changes anything.
    fn apply(&mut self, c: &Change, skip: bool) -> bool {
        let changes = match c.op {
            Op::Put => self.live.get(&c.path) != Some(&c.body),
            Op::Delete => {
                self.live.contains_key(&c.path)
                    || !(c.body.is_empty() || self.tombstones.get(&c.path) == Some(&c.body))
            }
        };
        if skip && !changes {
            return false;
        }
        match c.op {
            Op::Put => {
                self.live.insert(c.path.clone(), c.body.clone());
                self.tombstones.remove(&c.path);
            }
            Op::Delete => {
                self.live.remove(&c.path);
                let below = format!("{}/", c.path);
                self.tombstones.retain(|p, _| !p.starts_with(&below));
                if c.body.is_empty() {
                    self.tombstones.remove(&c.path);
                } else {
                    self.tombstones.insert(c.path.clone(), c.body.clone());
                }
            }
        }
        changes
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the changes and however they are split into appends, plain or sealed, with or
    /// without dropping no-ops: the stored state is the fold of the changes, the replay agrees
    /// with it, and `append_changes` keeps exactly the changes that change something. (Puts
    /// within an append reach the state in path order, after the entries; this holds it to the
    /// order the changes came in.)
    #[test]
    fn appends_keep_the_state_of_their_changes(
        batches in proptest::collection::vec(proptest::collection::vec(small_change(), 0..12), 1..5),
        sealed in any::<bool>(),
        skip in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::from_seed([0; 32]);
        let mut store = writer(dir.path());
        if sealed {
            store.seal_own(&key, Some(true)).unwrap();
        }
        let mut model = Model::default();
        for batch in batches {
            let changed = batch.iter().filter(|c| model.apply(c, skip)).count();
            if skip {
                let (_, n) = store.append_changes(&key, batch, &[]).unwrap();
                // A sealed feed adds deletes of the tombstones below a deleted container.
                if !sealed {
                    prop_assert_eq!(n, changed);
                }
            } else {
                store.append(&key, &batch, &[]).unwrap();
            }
            for path in ["/buckets/a", "/buckets/a/collections/c/records/r1", "/buckets/b/collections/c/records/r1"] {
                prop_assert_eq!(store.object(key.id(), path).unwrap(), model.live.get(path).cloned());
            }
        }
        let report = store.verify_origin(key.id()).unwrap();
        prop_assert!(report.problems.is_empty(), "{:?}", report.problems);
        let Some(head) = store.head(key.id()).unwrap() else {
            prop_assert!(model.live.is_empty() && model.tombstones.is_empty());
            return Ok(());
        };
        let stored: Vec<(String, Vec<u8>, bool)> = store
            .state_for_restore(key.id(), head.seq)
            .unwrap()
            .into_iter()
            .map(|i| (i.path, i.body, i.deleted))
            .filter(|(p, _, _)| p.starts_with("/buckets/"))
            .collect();
        let mut expected: Vec<(String, Vec<u8>, bool)> = model
            .live
            .into_iter()
            .map(|(p, b)| (p, b, false))
            .chain(model.tombstones.into_iter().map(|(p, b)| (p, b, true)))
            .collect();
        expected.sort();
        prop_assert_eq!(stored, expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A second history validly signed by the origin's own key, delivered after any honest
    /// prefix and cut at any point, is never merged: it becomes verifiable evidence and the
    /// origin freezes with its honest entries intact.
    #[test]
    fn a_signed_alternative_history_is_always_a_fork(honest_len in 1usize..10, diverge in 0usize..9, from in 0usize..10, to in 1usize..12) {
        prop_assume!(diverge < honest_len);
        let key = NodeKey::from_seed([5; 32]);
        let honest = Chain::new(&key, 12, "a");
        // The alternative shares the first `diverge` entries, then differs.
        let mut alt = Chain::new(&key, 12, "b");
        if diverge > 0 {
            let shared = Chain::new(&key, diverge, "a");
            let mut prev = EntryHash::of(&shared.entries[diverge - 1]);
            let mut entries = shared.entries.clone();
            let mut checkpoints = shared.checkpoints.clone();
            for i in diverge..12 {
                let bytes = encode_entry(Seq(i as u64 + 1), prev, 1, Op::Delete, &format!("/alt/{i}"), b"").unwrap();
                prev = EntryHash::of(&bytes);
                checkpoints.push(Checkpoint::sign(&key, Head { seq: Seq(i as u64 + 1), hash: prev }, 9));
                entries.push(bytes);
            }
            alt = Chain { entries, checkpoints };
        }
        let (from, to) = (from.min(honest_len), to.max(from.min(honest_len) + 1).min(12));
        prop_assume!(to > diverge); // the piece must reach past the shared part
        let dir = tempfile::tempdir().unwrap();
        let mut store = writer(dir.path());
        store.accept(&honest.verified(&key, 0, honest_len), &[]).unwrap();
        match store.accept(&alt.verified(&key, from, to), &[]) {
            Err(StoreError::Fork(evidence)) => {
                prop_assert!(evidence.verify().is_ok());
                prop_assert!(store.origins().unwrap().iter().any(|o| o.id == key.id() && o.frozen));
            }
            Err(StoreError::Gap { .. }) => prop_assert!(from > honest_len),
            other => prop_assert!(false, "alternative history accepted: {:?}", other.map(|a| a.head)),
        }
        let held: Vec<_> = store.entries_after(key.id(), Seq(0), 100).unwrap().into_iter().map(|e| e.bytes).collect();
        prop_assert_eq!(&held[..], &honest.entries[..honest_len]);
    }
}

#[test]
fn entries_after_never_reads_past_its_origin() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = writer(dir.path());
    let own = NodeKey::from_seed([0; 32]);
    store
        .append(
            &own,
            &[Change {
                op: Op::Put,
                path: "/buckets/mine".into(),
                body: b"{}".to_vec(),
            }],
            &[],
        )
        .unwrap();
    let key = NodeKey::from_seed([5; 32]);
    store
        .accept(&Chain::new(&key, 3, "a").verified(&key, 0, 3), &[])
        .unwrap();
    for after in [crate::feed::MAX_SEQ, crate::feed::MAX_SEQ + 1, u64::MAX] {
        assert!(
            store
                .entries_after(key.id(), Seq(after), 10)
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .entries_after(own.id(), Seq(after), 10)
                .unwrap()
                .is_empty()
        );
    }
    assert_eq!(store.entries_after(own.id(), Seq(0), 10).unwrap().len(), 1);
}

#[test]
fn a_file_left_by_a_crash_during_the_first_open_is_used() {
    let dir = tempfile::tempdir().unwrap();
    // What the first open leaves if killed after switching to WAL, before the first migration.
    rusqlite::Connection::open(dir.path().join(DB_FILE))
        .unwrap()
        .execute_batch("PRAGMA journal_mode = WAL;")
        .unwrap();
    let store = writer(dir.path());
    assert_eq!(store.origins().unwrap().len(), 1);
}

#[test]
fn a_damaged_page_inside_the_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::from_seed([0; 32]);
    {
        let mut store = writer(dir.path());
        let changes: Vec<Change> = (0..3000)
            .map(|i| Change {
                op: Op::Put,
                path: format!("/buckets/b/collections/c/records/r{i}"),
                body: format!(r#"{{"data":{{"n":{i}}}}}"#).into_bytes(),
            })
            .collect();
        store.append(&key, &changes, &[]).unwrap();
        store
            .conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
    }
    let db = dir.path().join(DB_FILE);
    let mut bytes = std::fs::read(&db).unwrap();
    let middle = (bytes.len() / 4096 / 2) * 4096;
    bytes[middle..middle + 4096].fill(0x5a);
    std::fs::write(&db, &bytes).unwrap();
    let err = Store::open_writer(dir.path(), key.id()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), bytes, "left untouched");
}

#[test]
fn children_skip_over_subtrees() {
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::from_seed([0; 32]);
    let mut store = writer(dir.path());
    let put = |path: &str| Change {
        op: Op::Put,
        path: path.into(),
        body: b"{}".to_vec(),
    };
    let mut changes = vec![
        put("/buckets/a"),
        put("/buckets/a-b"),
        put("/buckets/b"),
        put("/other/x"),
    ];
    for i in 0..50 {
        changes.push(put(&format!("/buckets/a/collections/c{i}")));
        changes.push(put(&format!("/buckets/a/collections/c{i}/records/r")));
    }
    // A record whose bucket object is not held: its bucket is not a live child.
    changes.push(put("/buckets/orphan/collections/c"));
    store.append(&key, &changes, &[]).unwrap();
    assert_eq!(
        store.children(key.id(), "/buckets").unwrap(),
        ["/buckets/a", "/buckets/a-b", "/buckets/b"]
    );
    assert_eq!(
        store
            .children(key.id(), "/buckets/a/collections")
            .unwrap()
            .len(),
        50
    );
    assert_eq!(
        store
            .children(key.id(), "/buckets/a/collections/c7/records")
            .unwrap(),
        ["/buckets/a/collections/c7/records/r"]
    );
    assert!(store.children(key.id(), "/nothing").unwrap().is_empty());
}

#[test]
fn snapshots_state_the_replayed_state_and_holders_check_them() {
    let origin = NodeKey::from_seed([31; 32]);
    let chain = Chain::new(&origin, 12, "s");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut full = writer(dir_a.path());
    full.accept(&chain.verified(&origin, 0, 12), &[]).unwrap();
    // The root at seq 9 by replay equals the root at the head of a store holding only 9.
    let mut part = writer(dir_b.path());
    part.accept(&chain.verified(&origin, 0, 9), &[]).unwrap();
    let (head, replayed) = full.state_root_at(origin.id(), Seq(9)).unwrap();
    let (head9, at_head) = part.state_root_at(origin.id(), Seq(9)).unwrap();
    assert_eq!((head, replayed), (head9, at_head));
    assert_ne!(
        replayed,
        full.state_root_at(origin.id(), Seq(12)).unwrap().1
    );

    let snapshot = Snapshot::sign(&origin, head, 5, replayed);
    full.accept_snapshot(&snapshot).unwrap();
    full.accept_snapshot(&snapshot).unwrap();
    assert_eq!(full.snapshots(origin.id()).unwrap(), vec![snapshot]);
    // A snapshot whose state the entries do not give is refused, even when validly signed.
    let lie = Snapshot::sign(
        &origin,
        head,
        6,
        crate::feed::StateSummary {
            root: [7; 32],
            ..replayed
        },
    );
    let e = part.accept_snapshot(&lie).unwrap_err();
    assert!(matches!(e, StoreError::SnapshotMismatch { .. }), "{e}");
    let ahead = Snapshot::sign(
        &origin,
        full.head(origin.id()).unwrap().unwrap(),
        6,
        replayed,
    );
    assert!(part.accept_snapshot(&ahead).is_err());
    assert!(part.snapshots(origin.id()).unwrap().is_empty());
}

#[test]
fn create_snapshot_signs_the_own_state_once_per_head() {
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::from_seed([32; 32]);
    let mut store = Store::open_writer(dir.path(), key.id()).unwrap();
    assert!(store.create_snapshot(&key).is_err(), "empty feed");
    let put = |p: &str| Change {
        op: Op::Put,
        path: p.into(),
        body: b"{\"data\":{}}".to_vec(),
    };
    store
        .append(&key, &[put("/buckets/a"), put("/buckets/b")], &[])
        .unwrap();
    let (s, created) = store.create_snapshot(&key).unwrap();
    assert!(created);
    s.verify().unwrap();
    assert_eq!((s.seq, s.objects, s.bytes), (Seq(2), 2, 22));
    let (again, created) = store.create_snapshot(&key).unwrap();
    assert!(!created);
    assert_eq!(again, s);
    store.check_snapshot(&s).unwrap();
}

#[test]
fn retention_prunes_snapshots_it_does_not_keep() {
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::from_seed([33; 32]);
    let mut store = Store::open_writer(dir.path(), key.id()).unwrap();
    let day = 86_400_000u64;
    for i in 0..5u64 {
        let change = Change {
            op: Op::Put,
            path: format!("/buckets/b{i}"),
            body: b"{\"data\":{}}".to_vec(),
        };
        store.append(&key, &[change], &[]).unwrap();
        let (head, state) = store.state_root_at(key.id(), Seq(i + 1)).unwrap();
        // Five snapshots, one a day.
        let s = Snapshot::sign(&key, head, 1_800_000_000_000 + i * day, state);
        store.accept_snapshot(&s).unwrap();
        store
            .record_snapshot_holder(key.id(), s.seq, NodeKey::from_seed([34; 32]).id())
            .unwrap();
    }
    let policy = crate::retention::Policy {
        daily: 2,
        ..Default::default()
    };
    assert_eq!(store.prune_snapshots(key.id(), policy).unwrap(), 3);
    let kept: Vec<u64> = store
        .snapshots(key.id())
        .unwrap()
        .iter()
        .map(|s| s.seq.0)
        .collect();
    assert_eq!(kept, vec![4, 5]);
    assert!(store.snapshot_holders(key.id(), Seq(1)).unwrap().is_empty());
    assert_eq!(store.snapshot_holders(key.id(), Seq(5)).unwrap().len(), 1);
    assert_eq!(store.prune_snapshots(key.id(), policy).unwrap(), 0);
}

#[test]
fn tombstones_are_in_the_state_root_the_same_way_at_the_head_and_by_replay() {
    let key = NodeKey::from_seed([33; 32]);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut full = Store::open_writer(dir_a.path(), key.id()).unwrap();
    let mut stepwise = Store::open_writer(dir_b.path(), key.id()).unwrap();
    let c = "/buckets/b/collections/c";
    let put = |p: &str, v: u32| Change {
        op: Op::Put,
        path: p.into(),
        body: format!("{{\"data\":{{\"v\":{v}}}}}").into_bytes(),
    };
    let tomb = |p: &str, lm: u32| Change {
        op: Op::Delete,
        path: p.into(),
        body: format!("{{\"data\":{{\"id\":\"x\",\"last_modified\":{lm},\"deleted\":true}}}}")
            .into_bytes(),
    };
    let gone = |p: &str| Change {
        op: Op::Delete,
        path: p.into(),
        body: Vec::new(),
    };
    let changes = vec![
        put("/buckets/b", 1),
        put(c, 2),
        put(&format!("{c}/records/r1"), 3),
        put(&format!("{c}/records/r2"), 4),
        tomb(&format!("{c}/records/r1"), 5),
        gone(&format!("{c}/records/r2")),
        put(&format!("{c}/records/r3"), 6),
        tomb(&format!("{c}/records/r3"), 7),
        put(&format!("{c}/records/r1"), 8),
        tomb(&format!("{c}/records/r1"), 9),
        tomb(c, 10),
        put(c, 11),
        put(&format!("{c}/records/r4"), 12),
    ];
    full.append(&key, &changes, &[]).unwrap();
    let mut roots = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        stepwise
            .append(&key, std::slice::from_ref(change), &[])
            .unwrap();
        let (_, at_head) = stepwise.state_root_at(key.id(), Seq(i as u64 + 1)).unwrap();
        let (_, replayed) = full.state_root_at(key.id(), Seq(i as u64 + 1)).unwrap();
        assert_eq!(at_head, replayed, "after change {}", i + 1);
        roots.push(at_head);
    }
    // A delete with a tombstone and one without leave the same live objects, not the same root.
    assert_eq!((roots[4].objects, roots[5].objects), (3, 2));
    let with_tombstone = full.state_for_restore(key.id(), Seq(5)).unwrap();
    assert!(
        with_tombstone
            .iter()
            .any(|i| i.deleted && i.path.ends_with("/r1"))
    );
    // The collection's tombstone dropped those below it: r1 and r3's tombstones are gone.
    let after = full.state_for_restore(key.id(), Seq(11)).unwrap();
    let tombstones: Vec<&str> = after
        .iter()
        .filter(|i| i.deleted)
        .map(|i| i.path.as_str())
        .collect();
    assert_eq!(tombstones, vec![c]);
    // Putting r1 back after its tombstone gives the same live state as never deleting it,
    // but a different root than while the tombstone stood.
    assert_ne!(roots[7].root, roots[8].root);
    assert_eq!(roots[7].objects + 1, roots[8].objects);
}

/// An own feed of `rounds` × 100 changes over 40 records: puts, deletes with and without
/// tombstones, a collection deleted and recreated.
fn churn(store: &mut Store, key: &NodeKey, rounds: u32) {
    for round in 0..rounds {
        let c = "/buckets/b/collections/c";
        let mut changes = vec![Change {
            op: Op::Put,
            path: c.into(),
            body: format!("{{\"data\":{{\"round\":{round}}}}}").into_bytes(),
        }];
        for i in 0..99u32 {
            let path = format!("{c}/records/r{}", (i * 7 + round) % 40);
            changes.push(match i % 9 {
                4 => Change {
                    op: Op::Delete,
                    path,
                    body: format!(
                        "{{\"data\":{{\"id\":\"x\",\"last_modified\":{i},\"deleted\":true}}}}"
                    )
                    .into_bytes(),
                },
                7 => Change {
                    op: Op::Delete,
                    path,
                    body: Vec::new(),
                },
                _ => Change {
                    op: Op::Put,
                    path,
                    body: format!("{{\"data\":{{\"v\":\"{round}-{i}-{}\"}}}}", "x".repeat(200))
                        .into_bytes(),
                },
            });
        }
        store.append(key, &changes, &[]).unwrap();
    }
}

#[test]
fn compaction_keeps_the_state_at_the_base_and_everything_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::from_seed([34; 32]);
    let origin = key.id();
    let mut store = Store::open_writer(dir.path(), origin).unwrap();
    let vacuum: i64 = store
        .conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(vacuum, 2, "a new store is created with incremental vacuum");
    churn(&mut store, &key, 30);
    let (first, _) = store.create_snapshot(&key).unwrap();
    churn(&mut store, &key, 10);
    let (second, _) = store.create_snapshot(&key).unwrap();
    let at_first = store.state_for_restore(origin, first.seq).unwrap();
    let at_head = store.state_root_at(origin, second.seq).unwrap();
    let sizes = store.reclaim_space().unwrap();

    // A compaction at a seq without a snapshot is refused, and changes nothing.
    assert!(store.compact(origin, Seq(first.seq.0 - 1)).is_err());
    let done = store.compact(origin, first.seq).unwrap();
    assert_eq!(done.base, first.seq.0);
    let kept = at_first.len() as u64;
    assert_eq!(
        done.entries,
        first.seq.0 - kept,
        "all but the state's entries go"
    );
    assert_eq!(store.compact(origin, first.seq).unwrap().entries, 0);
    assert_sound(&store, origin);
    let (before, after) = store.reclaim_space().unwrap();
    assert_eq!(before, sizes.1);
    assert!(after < before * 4 / 5, "{before} -> {after}");

    // The state at the base and at the head are unchanged; below the base is gone.
    assert_eq!(
        store.state_for_restore(origin, first.seq).unwrap(),
        at_first
    );
    assert_eq!(store.state_root_at(origin, second.seq).unwrap(), at_head);
    store.check_snapshot(&first).unwrap();
    assert!(matches!(
        store.state_for_restore(origin, Seq(first.seq.0 - 1)),
        Err(StoreError::Compacted { .. })
    ));
    assert!(matches!(
        store.entries_page(origin, Seq(3), 100, 1 << 20),
        Err(StoreError::Compacted { .. })
    ));
    assert!(
        store
            .entries_page(origin, first.seq, 100, 1 << 20)
            .unwrap()
            .is_some()
    );
    assert!(matches!(
        store.seq_at_time(origin, 0),
        Err(StoreError::Compacted { .. })
    ));

    // Appends go on, and the feed still verifies.
    churn(&mut store, &key, 1);
    assert_sound(&store, origin);

    // A new node starts from the base and tails the feed, without the history before it.
    let (snapshot, _, parts) = store
        .base_page(origin, None, 0, usize::MAX)
        .unwrap()
        .unwrap();
    assert_eq!((snapshot, parts.len() as u64), (first, kept));
    let other = tempfile::tempdir().unwrap();
    let mut holder = writer(other.path());
    // A base missing an entry is refused, given whole or staged page by page as a puller
    // gathers it.
    let mut bad = parts.clone();
    bad.pop();
    assert!(holder.install_base(&snapshot, &bad).is_err());
    let staging_file = other.path().join("base-staging.db");
    let begin = |holder: &mut Store| {
        let token = Store::staging_token();
        holder.begin_base_staging(token).unwrap();
        token
    };
    let token = begin(&mut holder);
    holder.stage_base(token, &bad).unwrap();
    assert!(staging_file.exists());
    assert!(holder.install_staged_base(token, &snapshot).is_err());
    assert_eq!(holder.head(origin).unwrap(), None);
    assert!(!staging_file.exists(), "a refused base leaves no file");
    // Two stagings at once are apart; one dropped leaves the other whole, and the file goes
    // with the last one.
    let (front, back) = parts.split_at(parts.len() / 2);
    let (dropped, kept) = (begin(&mut holder), begin(&mut holder));
    let (beyond, _) = store
        .entries_page(origin, snapshot.seq, 1, 1 << 20)
        .unwrap()
        .unwrap();
    holder
        .stage_base(dropped, &[beyond[0].bytes.clone()])
        .unwrap();
    holder.stage_base(kept, back).unwrap();
    holder.stage_base(kept, front).unwrap();
    holder.discard_staged_base(dropped).unwrap();
    assert!(holder.stage_base(dropped, &bad).is_err());
    assert!(staging_file.exists());
    assert!(holder.install_staged_base(kept, &snapshot).unwrap());
    assert!(!staging_file.exists());
    // A staging discarded before it began never begins.
    let late = Store::staging_token();
    holder.discard_staged_base(late).unwrap();
    assert!(holder.begin_base_staging(late).is_err());
    assert!(!staging_file.exists());
    let mut after = snapshot.seq;
    while let Some((entries, cp)) = store.entries_page(origin, after, 500, 1 << 20).unwrap() {
        let bytes = entries.into_iter().map(|e| e.bytes).collect();
        holder
            .accept(&verify_batch(origin, bytes, cp).unwrap(), &[])
            .unwrap();
        after = cp.seq;
    }
    assert_eq!(
        holder.state_root_at(origin, after).unwrap(),
        store.state_root_at(origin, after).unwrap()
    );
    assert_sound(&holder, origin);

    // A flipped byte in a kept base entry is found.
    let row = store.origin_row_id(origin).unwrap().unwrap();
    let seq = at_first
        .iter()
        .map(|i| i.seq.0)
        .find(|s| *s < first.seq.0)
        .unwrap();
    let bytes: Vec<u8> = store
        .conn
        .query_row(
            "SELECT bytes FROM entries WHERE key = ?1",
            [entry_key(row, seq)],
            |r| r.get(0),
        )
        .unwrap();
    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 1;
    store
        .conn
        .execute(
            "UPDATE entries SET bytes = ?2 WHERE key = ?1",
            (entry_key(row, seq), flipped),
        )
        .unwrap();
    let report = store.verify_origin(origin).unwrap();
    assert!(
        report.problems.iter().any(|p| p.seq == Some(Seq(seq))),
        "{:?}",
        report.problems
    );
}

#[test]
fn a_feed_compacted_at_its_head_appends_on() {
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::from_seed([35; 32]);
    let origin = key.id();
    let mut store = Store::open_writer(dir.path(), origin).unwrap();
    churn(&mut store, &key, 3);
    // The last entry is a delete without a body: it holds none of the state.
    let gone = Change {
        op: Op::Delete,
        path: "/buckets/b/collections/c/records/r1".into(),
        body: Vec::new(),
    };
    store.append(&key, &[gone], &[]).unwrap();
    let (snapshot, _) = store.create_snapshot(&key).unwrap();
    let policy = crate::retention::Policy {
        last: 1,
        ..Default::default()
    };
    // A push holder that acknowledged nothing holds compaction back.
    let holder = NodeKey::from_seed([36; 32]).id();
    let pushed_to = Holders {
        push: vec![holder],
        readers: vec![],
    };
    let (_, held_back) = store.apply_retention(origin, policy, &pushed_to).unwrap();
    assert_eq!(held_back.entries, 0);
    // So does a reader that never pulled (it may hold part of the feed from before pulls
    // were recorded), and one whose last pull came from below the snapshot.
    let (reader, both) = (
        NodeKey::from_seed([37; 32]).id(),
        NodeKey::from_seed([38; 32]).id(),
    );
    let read_by = Holders {
        push: vec![],
        readers: vec![reader],
    };
    let (_, held_back) = store.apply_retention(origin, policy, &read_by).unwrap();
    assert_eq!(held_back.entries, 0);
    store.record_pulled(origin, reader, Seq(1)).unwrap();
    let (_, held_back) = store.apply_retention(origin, policy, &read_by).unwrap();
    assert_eq!(held_back.entries, 0);
    store.record_pulled(origin, reader, snapshot.seq).unwrap();
    // A holder both pushed to and reading, found serving less than before, counts with what
    // it serves, whatever it said when it pulled.
    store.record_served(origin, both, snapshot.seq).unwrap();
    store.record_served(origin, both, Seq(1)).unwrap();
    store.record_pulled(origin, both, snapshot.seq).unwrap();
    let rolled_back = Holders {
        push: vec![both],
        readers: vec![both, reader],
    };
    let (_, held_back) = store.apply_retention(origin, policy, &rolled_back).unwrap();
    assert_eq!(held_back.entries, 0);
    assert_eq!(
        store.held_by_all(origin, &rolled_back).unwrap(),
        Some((0, both))
    );
    let only_reading = Holders {
        push: vec![],
        readers: vec![both],
    };
    assert_eq!(
        store.held_by_all(origin, &only_reading).unwrap(),
        Some((0, both))
    );
    let (_, done) = store.apply_retention(origin, policy, &read_by).unwrap();
    assert_eq!(done.base, snapshot.seq.0);
    assert!(done.entries > 0);
    assert_eq!(store.head(origin).unwrap(), Some(snapshot.head()));
    churn(&mut store, &key, 1);
    assert_sound(&store, origin);
    // Held back by a holder, retention still never prunes the snapshot at the base.
    let (newer, _) = store.create_snapshot(&key).unwrap();
    let (removed, held_back) = store.apply_retention(origin, policy, &pushed_to).unwrap();
    assert_eq!((removed, held_back.entries), (0, 0));
    let kept: Vec<Seq> = store
        .snapshots(origin)
        .unwrap()
        .iter()
        .map(|s| s.seq)
        .collect();
    assert_eq!(kept, vec![snapshot.seq, newer.seq]);
    assert_sound(&store, origin);
    // Once nothing holds it back, the base moves on and the old snapshot goes.
    let (removed, moved) = store
        .apply_retention(origin, policy, &Holders::default())
        .unwrap();
    assert_eq!((removed, moved.base), (1, newer.seq.0));
    assert_sound(&store, origin);
}

#[test]
fn the_writer_removes_the_base_staging_file_a_crash_left() {
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::from_seed([91; 32]);
    drop(Store::open_writer(dir.path(), key.id()).unwrap());
    let leftover = dir.path().join("base-staging.db");
    std::fs::write(&leftover, b"half a base").unwrap();
    let mut store = Store::open_writer(dir.path(), key.id()).unwrap();
    assert!(!leftover.exists());
    // And staging works after it.
    let token = Store::staging_token();
    store.begin_base_staging(token).unwrap();
    assert!(leftover.exists());
    store.discard_staged_base(token).unwrap();
    assert!(!leftover.exists());
}
