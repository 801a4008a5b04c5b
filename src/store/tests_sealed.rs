//! Sealed feeds on real database files: the origin reads in source paths what holders keep
//! sealed, holders verify, snapshot and compact what they cannot read, and the key brings it
//! all back.

use super::*;
use crate::feed::{self, verify_batch};
use crate::identity::NodeKey;

/// Words that occur only inside paths and bodies: none may reach a holder.
const SECRETS: &[&str] = &[
    "zebradiary",
    "okapirecipes",
    "quokka-secret",
    "account:wombat",
];

fn put(path: &str, body: &str) -> Change {
    Change {
        op: Op::Put,
        path: path.into(),
        body: body.as_bytes().to_vec(),
    }
}

fn delete(path: &str, tombstone: Option<u64>) -> Change {
    Change {
        op: Op::Delete,
        path: path.into(),
        body: tombstone
            .map(|t| format!(r#"{{"data":{{"deleted":true,"id":"x","last_modified":{t}}}}}"#))
            .unwrap_or_default()
            .into_bytes(),
    }
}

/// Rounds of changes with every kind of entry: puts, deletes with and without a tombstone, a
/// collection deleted with tombstones below it, a bucket re-created.
fn rounds() -> Vec<Vec<Change>> {
    let b = "/buckets/zebradiary";
    let c = format!("{b}/collections/okapirecipes");
    let perms = r#""permissions":{"read":["account:wombat"]}"#;
    vec![
        vec![
            put(b, &format!(r#"{{"data":{{"id":"zebradiary"}},{perms}}}"#)),
            put(&c, r#"{"data":{"id":"okapirecipes"}}"#),
            put(
                &format!("{c}/records/r1"),
                r#"{"data":{"text":"quokka-secret 1"}}"#,
            ),
            put(
                &format!("{c}/records/r2"),
                r#"{"data":{"text":"quokka-secret 2"}}"#,
            ),
            put("/buckets/other", r#"{"data":{"id":"other"}}"#),
        ],
        vec![
            delete(&format!("{c}/records/r1"), Some(10)),
            put(
                &format!("{c}/records/r2"),
                r#"{"data":{"text":"quokka-secret 2b"}}"#,
            ),
            put(
                &format!("{c}/records/r3"),
                r#"{"data":{"text":"quokka-secret 3"}}"#,
            ),
        ],
        // The collection goes: its records without tombstones, itself with one. The tombstone
        // of r1 below it goes too.
        vec![
            delete(&format!("{c}/records/r2"), None),
            delete(&format!("{c}/records/r3"), None),
            delete(&c, Some(20)),
        ],
        vec![
            put(&c, r#"{"data":{"id":"okapirecipes","again":true}}"#),
            put(
                &format!("{c}/records/r4"),
                r#"{"data":{"text":"quokka-secret 4"}}"#,
            ),
            delete("/buckets/other", Some(30)),
        ],
    ]
}

fn store_for(dir: &Path, key: &NodeKey) -> Store {
    Store::open_writer(dir, key.id()).unwrap()
}

/// (path, body, tombstone) of a state, for comparing two feeds' states.
fn plain_state(store: &Store, origin: NodeId) -> Vec<(String, String, bool)> {
    let head = store.head(origin).unwrap().unwrap().seq;
    store
        .state_for_restore(origin, head)
        .unwrap()
        .into_iter()
        .map(|i| (i.path, String::from_utf8(i.body).unwrap(), i.deleted))
        .collect()
}

/// Every file of a data directory (the database, its WAL), as bytes.
fn dir_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for f in std::fs::read_dir(dir).unwrap() {
        out.extend(std::fs::read(f.unwrap().path()).unwrap_or_default());
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Copies `from`'s feed of `origin` to `to` page by page, as a pull does.
fn copy_feed(from: &Store, to: &mut Store, origin: NodeId) {
    let mut after = to.head(origin).unwrap().map_or(Seq(0), |h| h.seq);
    while let Some((entries, cp)) = from.entries_page(origin, after, 7, 1 << 20).unwrap() {
        let bytes: Vec<Vec<u8>> = entries.into_iter().map(|e| e.bytes).collect();
        let batch = verify_batch(origin, bytes, cp).unwrap();
        to.accept(&batch, &[]).unwrap();
        after = cp.seq;
    }
}

/// What `ring` does with each sealed entry (with a body) of `origin` that `store` holds: the
/// seqs it opens, and (seq, epoch) of those sealed under an epoch it has no key for. Any other
/// failure panics.
fn try_open(
    store: &Store,
    origin: NodeId,
    ring: &crate::seal::Ring,
) -> (Vec<Seq>, Vec<(Seq, u32)>) {
    let (mut opened, mut refused) = (Vec::new(), Vec::new());
    for e in store.entries_after(origin, Seq(0), 10_000).unwrap() {
        let entry = feed::decode_entry(&e.bytes).unwrap();
        if !crate::seal::is_sealed(entry.path) || entry.body.is_empty() {
            continue;
        }
        match ring.open_entry(&entry) {
            Ok(_) => opened.push(e.seq),
            Err(crate::seal::SealError::UnknownEpoch { epoch }) => refused.push((e.seq, epoch)),
            Err(other) => panic!("seq {}: {other}", e.seq),
        }
    }
    (opened, refused)
}

/// A sealed origin (seed `home`) that grants reading to a second node (seed `reader`), and has
/// appended the first round: (their directories, keys and stores).
fn home_and_reader(
    home: u8,
    reader: u8,
) -> (Vec<tempfile::TempDir>, NodeKey, NodeKey, Store, Store) {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (home_key, reader_key) = (
        NodeKey::from_seed([home; 32]),
        NodeKey::from_seed([reader; 32]),
    );
    let mut home = store_for(dirs[0].path(), &home_key);
    let reader = store_for(dirs[1].path(), &reader_key);
    home.seal_own(&home_key, Some(true)).unwrap();
    home.set_readers(&home_key, &[reader_key.id()]).unwrap();
    home.append_changes(&home_key, rounds()[0].clone(), &[])
        .unwrap();
    (dirs, home_key, reader_key, home, reader)
}

#[test]
fn a_sealed_feed_reads_like_a_plain_one_at_its_origin() {
    let (plain_dir, sealed_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (plain_key, key) = (NodeKey::from_seed([60; 32]), NodeKey::from_seed([61; 32]));
    let mut plain = store_for(plain_dir.path(), &plain_key);
    let mut sealed = store_for(sealed_dir.path(), &key);
    assert_eq!(
        sealed.seal_own(&key, Some(true)).unwrap(),
        Sealing::On {
            from: Seq(1),
            now: true
        }
    );
    for round in rounds() {
        plain
            .append_changes(&plain_key, round.clone(), &[])
            .unwrap();
        sealed.append_changes(&key, round.clone(), &[]).unwrap();
        // The same round again records nothing: the no-op check reads the plaintext.
        let (_, again) = sealed.append_changes(&key, round, &[]).unwrap();
        assert_eq!(again, 0);
        assert_eq!(
            plain_state(&sealed, key.id()),
            plain_state(&plain, plain_key.id())
        );
    }
    let (o, p) = (key.id(), plain_key.id());
    let c = "/buckets/zebradiary/collections/okapirecipes";
    for path in [
        c,
        &format!("{c}/records/r4"),
        "/buckets/other",
        "/buckets/nope",
    ] {
        assert_eq!(
            sealed.object(o, path).unwrap(),
            plain.object(p, path).unwrap()
        );
    }
    assert_eq!(
        sealed.paths_under(o, "/buckets/zebradiary/").unwrap(),
        plain.paths_under(p, "/buckets/zebradiary/").unwrap()
    );
    assert_eq!(
        sealed.children(o, "/buckets").unwrap(),
        vec!["/buckets/zebradiary".to_owned()]
    );
    assert!(sealed.holds_at_or_under(o, c).unwrap());
    assert!(!sealed.holds_at_or_under(o, "/buckets/other").unwrap());
    let mut objects = Vec::new();
    sealed
        .for_each_object(o, |path, _| -> Result<(), StoreError> {
            objects.push(path.to_owned());
            Ok(())
        })
        .unwrap();
    assert_eq!(objects, plain.paths_under(p, "/").unwrap());
    // In the plaintext read in order, the mirror sees what happened.
    let entries = sealed.plain_entries_after(o, Seq(0), 1000).unwrap();
    let first = feed::decode_entry(&entries[0].bytes).unwrap();
    assert_eq!(first.path, "/buckets/zebradiary");
    // The entries themselves carry nothing readable.
    for e in sealed.entries_after(o, Seq(0), 1000).unwrap() {
        let entry = feed::decode_entry(&e.bytes).unwrap();
        assert!(crate::seal::is_sealed(entry.path), "{}", entry.path);
        for secret in SECRETS {
            assert!(!contains(&e.bytes, secret), "{secret} in seq {}", e.seq);
        }
    }
    // What would not make a plain entry is refused before it is sealed, and nothing of the
    // batch is recorded.
    let head = sealed.head(o).unwrap();
    for bad in [
        put("/buckets/zebradiary/collections/x", "not json"),
        put("/buckets/zebradiary/collections/x", "[1]"),
        put("no-slash", r#"{"data":{}}"#),
    ] {
        let batch = vec![put("/buckets/fine", r#"{"data":{}}"#), bad];
        assert!(matches!(
            sealed.append_changes(&key, batch, &[]),
            Err(StoreError::InvalidChange { .. })
        ));
        assert_eq!(sealed.head(o).unwrap(), head);
    }
    assert!(matches!(
        sealed.seal_own(&key, Some(false)),
        Err(StoreError::SealOff { from: Seq(1) })
    ));
    assert!(matches!(
        sealed.seal_own(&key, None).unwrap(),
        Sealing::On { now: false, .. }
    ));
}

#[test]
fn nodes_that_read_a_sealed_feed_open_it_when_reading_and_keep_no_copy_of_its_bodies() {
    let (dirs, home_key, reader_key, mut home, mut reader) = home_and_reader(90, 91);
    let h = home_key.id();
    for round in &rounds()[1..] {
        home.append_changes(&home_key, round.clone(), &[]).unwrap();
    }
    copy_feed(&home, &mut reader, h);
    assert_eq!(reader.open_granted(&reader_key).unwrap().opened.len(), 1);
    let state = plain_state(&home, h);
    assert_eq!(plain_state(&reader, h), state);
    let r4 = "/buckets/zebradiary/collections/okapirecipes/records/r4";
    let body = home.object(h, r4).unwrap().expect("r4 is live");
    assert!(contains(&body, "quokka-secret 4"));
    // Neither keeps a record's body in its files: each opens entries when it reads them.
    for store in [&home, &reader] {
        store.checkpoint().unwrap();
    }
    for dir in &dirs {
        assert!(!contains(&dir_bytes(dir.path()), "quokka-secret"));
    }
    // A store opened beside the writer reads once it has the keys, and only then.
    for (dir, key) in [(&dirs[0], &home_key), (&dirs[1], &reader_key)] {
        let beside = Store::open_read_only(dir.path()).unwrap();
        assert!(matches!(
            beside.state_for_restore(h, home.head(h).unwrap().unwrap().seq),
            Err(StoreError::Sealed { .. })
        ));
        assert!(matches!(
            beside.object(h, r4),
            Err(StoreError::Sealed { .. })
        ));
        // Another node's key opens nothing.
        beside.unlock(&NodeKey::from_seed([92; 32])).unwrap();
        assert!(matches!(
            beside.object(h, r4),
            Err(StoreError::Sealed { .. })
        ));
        beside.unlock(key).unwrap();
        assert_eq!(plain_state(&beside, h), state);
        assert_eq!(beside.object(h, r4).unwrap(), Some(body.clone()));
        let entries = beside.plain_entries_after(h, Seq(0), 1000).unwrap();
        assert_eq!(
            entries.len(),
            home.entries_after(h, Seq(0), 1000).unwrap().len()
        );
        for e in entries {
            let entry = feed::decode_entry(&e.bytes).unwrap();
            assert!(!crate::seal::is_sealed(entry.path), "seq {}", e.seq);
        }
    }
}

#[test]
fn a_holder_verifies_snapshots_and_compacts_what_it_cannot_read() {
    let (home_dir, holder_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = NodeKey::from_seed([62; 32]);
    let holder_key = NodeKey::from_seed([63; 32]);
    let origin = key.id();
    let mut home = store_for(home_dir.path(), &key);
    home.seal_own(&key, Some(true)).unwrap();
    let mut holder = store_for(holder_dir.path(), &holder_key);
    let all = rounds();
    for round in &all[..2] {
        home.append_changes(&key, round.clone(), &[]).unwrap();
    }
    let (first, _) = home.create_snapshot(&key).unwrap();
    for round in &all[2..] {
        home.append_changes(&key, round.clone(), &[]).unwrap();
    }
    let (second, _) = home.create_snapshot(&key).unwrap();
    copy_feed(&home, &mut holder, origin);
    holder.accept_snapshot(&first).unwrap();
    holder.accept_snapshot(&second).unwrap();
    assert_eq!(
        holder.state_root_at(origin, second.seq).unwrap(),
        home.state_root_at(origin, second.seq).unwrap()
    );
    assert!(holder.verify_origin(origin).unwrap().problems.is_empty());
    assert!(matches!(
        holder.state_for_restore(origin, second.seq),
        Err(StoreError::Sealed { .. })
    ));
    assert!(matches!(
        holder.plain_entries_after(origin, Seq(0), 10),
        Err(StoreError::Sealed { .. })
    ));
    // The tombstone of r1 went with its collection, on the holder too, by hash alone.
    let tombstones = |s: &Store| {
        s.state_for_restore(origin, second.seq)
            .map(|items| items.iter().filter(|i| i.deleted).count())
    };
    assert_eq!(
        tombstones(&home).unwrap(),
        1,
        "other's: the collection came back"
    );
    // The node key alone brings the plaintext back: a store recovered from the holder.
    let again = tempfile::tempdir().unwrap();
    let mut recovered = Store::open_writer_with(again.path(), origin, true).unwrap();
    copy_feed(&holder, &mut recovered, origin);
    recovered.set_recovering(false).unwrap();
    assert!(matches!(
        recovered.seal_own(&key, None).unwrap(),
        Sealing::On { now: false, .. }
    ));
    assert_eq!(plain_state(&recovered, origin), plain_state(&home, origin));
    // ... and appends go on sealed, with the same no-op checks.
    let last = all.last().unwrap().clone();
    assert_eq!(recovered.append_changes(&key, last, &[]).unwrap().1, 0);

    let done = holder.compact(origin, first.seq).unwrap();
    assert!(done.entries > 0);
    assert!(holder.verify_origin(origin).unwrap().problems.is_empty());
    holder.check_snapshot(&second).unwrap();
    let bytes = dir_bytes(holder_dir.path());
    assert!(bytes.len() > 10_000);
    for secret in SECRETS {
        assert!(!contains(&bytes, secret), "{secret} in the holder's files");
    }
    // Of its own entries the origin keeps in plaintext only the deletes without a body,
    // which no key opens; it compacts too, and that plaintext goes with its entries.
    let bodiless = |s: &Store| -> i64 {
        s.entries_after(origin, Seq(0), usize::MAX)
            .unwrap()
            .iter()
            .filter(|e| {
                let entry = feed::decode_stored_entry(&e.bytes).unwrap();
                crate::seal::is_sealed(entry.path) && entry.body.is_empty()
            })
            .count() as i64
    };
    let before = bodiless(&home);
    assert!(before > 0);
    assert_eq!(sealed::opened_count(&home.conn, 1), before);
    let source_paths = |s: &Store, record: &str| -> i64 {
        s.conn
            .query_row(
                "SELECT count(*) FROM opened_paths WHERE path LIKE '%/records/' || ?1",
                [record],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(source_paths(&home, "r2"), 1);
    let entries_before = home
        .entries_after(origin, Seq(0), usize::MAX)
        .unwrap()
        .len();
    home.compact(origin, first.seq).unwrap();
    assert!(
        home.entries_after(origin, Seq(0), usize::MAX)
            .unwrap()
            .len()
            < entries_before
    );
    assert_eq!(sealed::opened_count(&home.conn, 1), bodiless(&home));
    // Records gone with their collection leave no source path behind; r4 stays.
    for gone in ["r1", "r2", "r3"] {
        assert_eq!(source_paths(&home, gone), 0, "{gone}");
    }
    assert_eq!(source_paths(&home, "r4"), 1);
    let state = plain_state(&home, origin);
    assert_eq!(plain_state(&recovered, origin), state);
    assert!(
        state
            .iter()
            .any(|(p, b, _)| p.ends_with("/records/r4") && b.contains("quokka"))
    );
}

#[test]
fn switching_sealing_on_re_records_the_state_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::from_seed([64; 32]);
    let origin = key.id();
    let mut store = store_for(dir.path(), &key);
    let all = rounds();
    for round in &all[..2] {
        store.append_changes(&key, round.clone(), &[]).unwrap();
    }
    assert_eq!(store.seal_own(&key, None).unwrap(), Sealing::Off);
    let before = plain_state(&store, origin);
    let head = store.head(origin).unwrap().unwrap().seq;
    assert_eq!(
        store.seal_own(&key, Some(true)).unwrap(),
        Sealing::On {
            from: head.next(),
            now: true
        }
    );
    assert_eq!(plain_state(&store, origin), before);
    // Every live object and tombstone is now under a sealed path.
    let mut live = 0;
    store
        .for_each_object(origin, |_, _| -> Result<(), StoreError> {
            live += 1;
            Ok(())
        })
        .unwrap();
    let sealed_rows: i64 = store
        .conn
        .query_row(
            "SELECT count(*) FROM objects WHERE path >= '/sealed/' AND path < '/sealed0'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let rows: i64 = store
        .conn
        .query_row("SELECT count(*) FROM objects", [], |r| r.get(0))
        .unwrap();
    assert_eq!((sealed_rows, rows), (live, live));
    for round in &all[2..] {
        store.append_changes(&key, round.clone(), &[]).unwrap();
    }
    let (snapshot, _) = store.create_snapshot(&key).unwrap();
    store.check_snapshot(&snapshot).unwrap();
    assert!(store.verify_origin(origin).unwrap().problems.is_empty());
}

#[test]
fn a_recovered_node_states_the_seq_it_was_sealed_from_as_before() {
    // Sealed from the start with a reader (the plain readers statement comes first), from the
    // start without one, and switched on over plain data (a plain delete comes first).
    let reader = NodeKey::from_seed([69; 32]).id();
    for (seed, readers, switched) in [(66, true, false), (67, false, false), (68, false, true)] {
        let (dir, again) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let key = NodeKey::from_seed([seed; 32]);
        let origin = key.id();
        let mut home = store_for(dir.path(), &key);
        let all = rounds();
        if switched {
            home.append_changes(&key, all[0].clone(), &[]).unwrap();
        }
        home.seal_own(&key, Some(true)).unwrap();
        if readers {
            home.set_readers(&key, &[reader]).unwrap();
        }
        for round in &all[1..] {
            home.append_changes(&key, round.clone(), &[]).unwrap();
        }
        let from = home.sealed_from().unwrap().unwrap();
        assert_eq!(from.0 > 1, switched, "{from:?}");

        let mut recovered = Store::open_writer_with(again.path(), origin, true).unwrap();
        copy_feed(&home, &mut recovered, origin);
        recovered.set_recovering(false).unwrap();
        assert_eq!(
            recovered.seal_own(&key, None).unwrap(),
            Sealing::On { from, now: false },
            "seed {seed}"
        );
        assert_eq!(plain_state(&recovered, origin), plain_state(&home, origin));
    }
}

#[test]
fn once_compaction_drops_what_came_before_sealing_no_value_of_it_stays_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::from_seed([65; 32]);
    let origin = key.id();
    let mut store = store_for(dir.path(), &key);
    let c = "/buckets/zebradiary/collections/okapirecipes";
    let padding = "p".repeat(150);
    let records = |from: usize, word: &str| -> Vec<Change> {
        (from..from + 200)
            .map(|i| {
                put(
                    &format!("{c}/records/r{i}"),
                    &format!(r#"{{"data":{{"text":"{word} {i}","pad":"{padding}"}}}}"#),
                )
            })
            .collect()
    };
    store
        .append_changes(&key, records(0, "quokka-secret"), &[])
        .unwrap();
    store.seal_own(&key, Some(true)).unwrap();
    store
        .append_changes(&key, records(200, "sealed-later"), &[])
        .unwrap();
    let (snapshot, _) = store.create_snapshot(&key).unwrap();
    assert!(contains(&dir_bytes(dir.path()), "quokka-secret"));

    // The plain entries hold no state now (each object was re-recorded sealed): compaction
    // drops them, and no value of theirs stays behind, not even in the free space of pages
    // that hold sealed entries now.
    let done = store.compact(origin, snapshot.seq).unwrap();
    assert!(done.entries >= 200, "{done:?}");
    store.reclaim_space().unwrap();
    assert!(store.verify_origin(origin).unwrap().problems.is_empty());
    assert_eq!(
        store
            .object(origin, &format!("{c}/records/r7"))
            .unwrap()
            .map(String::from_utf8),
        Some(Ok(format!(
            r#"{{"data":{{"text":"quokka-secret 7","pad":"{padding}"}}}}"#
        )))
    );
    drop(store);
    let files = dir_bytes(dir.path());
    assert!(!contains(&files, "quokka-secret"));
    assert!(!contains(&files, "sealed-later"));
}

#[test]
fn a_granted_reader_reads_what_a_holder_cannot_until_it_is_removed() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let home_key = NodeKey::from_seed([70; 32]);
    let laptop_key = NodeKey::from_seed([71; 32]);
    let spare_key = NodeKey::from_seed([72; 32]);
    let mut home = store_for(dirs[0].path(), &home_key);
    let mut laptop = store_for(dirs[1].path(), &laptop_key);
    let mut spare = store_for(dirs[2].path(), &spare_key);
    let h = home_key.id();
    home.seal_own(&home_key, Some(true)).unwrap();
    let granted = home
        .set_readers(&home_key, &[laptop_key.id(), h])
        .unwrap()
        .expect("a statement");
    assert_eq!(granted.epoch, 0);
    assert_eq!(granted.ids(), vec![laptop_key.id()], "never itself");
    assert_eq!(
        home.set_readers(&home_key, &[laptop_key.id()]).unwrap(),
        None,
        "nothing new: nothing written"
    );
    let rounds = rounds();
    for round in &rounds[..2] {
        home.append_changes(&home_key, round.clone(), &[]).unwrap();
    }
    for to in [&mut laptop, &mut spare] {
        copy_feed(&home, to, h);
    }
    // Another origin the laptop holds signs a grant to it that opens nothing: that origin
    // fails, home opens all the same.
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue_key = NodeKey::from_seed([75; 32]);
    let mut rogue = store_for(rogue_dir.path(), &rogue_key);
    let bogus = format!(
        r#"{{"epoch":0,"readers":{{"{}":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}}}"#,
        laptop_key.id()
    );
    rogue
        .append(&rogue_key, &[put(crate::seal::READERS_PATH, &bogus)], &[])
        .unwrap();
    copy_feed(&rogue, &mut laptop, rogue_key.id());
    let opened = laptop.open_granted(&laptop_key).unwrap();
    assert_eq!(opened.opened.len(), 1);
    assert_eq!(opened.opened[0].0, h);
    assert!(opened.refused.is_empty());
    assert_eq!(opened.failed.len(), 1);
    assert_eq!(opened.failed[0].0, rogue_key.id());
    assert!(matches!(opened.failed[0].1, StoreError::Readers { .. }));
    assert_eq!(plain_state(&laptop, h), plain_state(&home, h));
    let r2 = "/buckets/zebradiary/collections/okapirecipes/records/r2";
    assert_eq!(laptop.object(h, r2).unwrap(), home.object(h, r2).unwrap());
    // The spare holds the feed but is not named: it reads nothing.
    assert_eq!(spare.open_granted(&spare_key).unwrap().refused, vec![h]);
    assert!(matches!(
        spare.object(h, r2),
        Err(StoreError::Sealed { .. })
    ));
    // A second pass has nothing to open, and does not read the rogue statement again until
    // it changes; a refusal is still reported.
    let again = laptop.open_granted(&laptop_key).unwrap();
    assert!(again.opened.is_empty());
    assert!(again.failed.is_empty(), "{:?}", again.failed);
    assert_eq!(spare.open_granted(&spare_key).unwrap().refused, vec![h]);

    let opened_to = home.head(h).unwrap().unwrap().seq;
    let state_then = home.state_for_restore(h, opened_to).unwrap();
    // The laptop is removed, the spare added: a new epoch, given to the spare only.
    let old_grant = granted;
    let rotated = home
        .set_readers(&home_key, &[spare_key.id()])
        .unwrap()
        .unwrap();
    assert_eq!(rotated.epoch, 1);
    assert_eq!(rotated.ids(), vec![spare_key.id()]);
    for round in &rounds[2..] {
        home.append_changes(&home_key, round.clone(), &[]).unwrap();
    }
    for to in [&mut laptop, &mut spare] {
        copy_feed(&home, to, h);
    }
    assert_eq!(laptop.open_granted(&laptop_key).unwrap().refused, vec![h]);
    spare.open_granted(&spare_key).unwrap();
    assert_eq!(plain_state(&spare, h), plain_state(&home, h));
    // What the laptop was given opens nothing written after the rotation.
    let ring = crate::seal::Ring::from_grant(h, &old_grant, &laptop_key)
        .unwrap()
        .unwrap();
    let after = home.head(h).unwrap().unwrap().seq;
    let (opened, refused) = try_open(&laptop, h, &ring);
    assert!(opened.iter().all(|seq| *seq < after), "{opened:?}");
    assert!(refused.len() >= 3, "{refused:?} after the rotation");
    assert!(refused.iter().all(|(_, epoch)| *epoch == 1), "{refused:?}");
    let r4 = "/buckets/zebradiary/collections/okapirecipes/records/r4";
    assert!(matches!(
        laptop.object(h, r4),
        Err(StoreError::Sealed { .. })
    ));
    // What it opened before its removal it still reads, also in a store opened again; a
    // state past it names the first entry it was not granted.
    assert_eq!(laptop.state_for_restore(h, opened_to).unwrap(), state_then);
    match laptop.state_for_restore(h, after) {
        Err(StoreError::NotGranted { origin, seq, epoch }) => {
            assert_eq!((origin, epoch), (h, 1));
            assert!(seq > opened_to && seq <= after, "{seq:?}");
        }
        other => panic!("{other:?}"),
    }
    let beside = Store::open_read_only(dirs[1].path()).unwrap();
    beside.unlock(&laptop_key).unwrap();
    assert_eq!(beside.state_for_restore(h, opened_to).unwrap(), state_then);
    assert!(matches!(
        beside.object(h, r4),
        Err(StoreError::Sealed { .. })
    ));
    // The origin itself still reads every epoch, also from a store rebuilt from its peers.
    assert_eq!(home.object(h, r4).unwrap(), spare.object(h, r4).unwrap());
    let rebuilt_dir = tempfile::tempdir().unwrap();
    let mut rebuilt = store_for(rebuilt_dir.path(), &home_key);
    copy_feed(&spare, &mut rebuilt, h);
    rebuilt.seal_own(&home_key, None).unwrap();
    assert_eq!(plain_state(&rebuilt, h), plain_state(&home, h));
    rebuilt
        .append_changes(&home_key, vec![put(r4, r#"{"data":{"v":5}}"#)], &[])
        .unwrap();
    let last = rebuilt.entries_after(h, after, 10).unwrap();
    let body = feed::decode_entry(&last.last().unwrap().bytes)
        .unwrap()
        .body
        .to_vec();
    assert_eq!(
        crate::seal::epoch_of(&body),
        Some(1),
        "a recovered origin seals under its latest epoch"
    );
}

#[test]
fn a_feed_sealed_in_version_1_envelopes_reads_on_and_goes_on_in_version_2() {
    let (key, holder_key) = (NodeKey::from_seed([95; 32]), NodeKey::from_seed([96; 32]));
    let o = key.id();
    let c = "/buckets/zebradiary/collections/okapirecipes";
    let (r1, r2) = (format!("{c}/records/r1"), format!("{c}/records/r2"));
    let before = vec![
        put("/buckets/zebradiary", r#"{"data":{"id":"zebradiary"}}"#),
        put(c, r#"{"data":{"id":"okapirecipes"}}"#),
        put(&r1, r#"{"data":{"text":"quokka-secret 1"}}"#),
        put(&r2, r#"{"data":{"text":"quokka-secret 2"}}"#),
        delete(&r1, Some(10)),
        delete(&r2, None),
    ];
    // The entries an earlier build wrote: version 1, JSON envelopes.
    let seal = crate::seal::SealKey::of_node(&key);
    let mut prev = feed::EntryHash::genesis(&o);
    let mut entries = Vec::new();
    for (i, change) in before.iter().enumerate() {
        let (path, body) = seal.seal_v1(change.op, &change.path, &change.body);
        let bytes =
            feed::encode_entry(Seq(i as u64 + 1), prev, 1, change.op, &path, &body).unwrap();
        assert_eq!(bytes[0], feed::ENTRY_VERSION);
        prev = feed::EntryHash::of(&bytes);
        entries.push(bytes);
    }
    let head = feed::Head {
        seq: Seq(before.len() as u64),
        hash: prev,
    };
    let cp = feed::Checkpoint::sign(&key, head, 1);
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let mut holder = store_for(dirs[0].path(), &holder_key);
    holder
        .accept(&verify_batch(o, entries, cp).unwrap(), &[])
        .unwrap();
    // What a plain feed of the same changes holds.
    let plain_key = NodeKey::from_seed([97; 32]);
    let mut plain = store_for(dirs[1].path(), &plain_key);
    plain.append_changes(&plain_key, before, &[]).unwrap();
    // The origin, recovered from its holder, reads those entries and seals on in version 2.
    let mut origin = store_for(dirs[2].path(), &key);
    copy_feed(&holder, &mut origin, o);
    assert!(matches!(
        origin.seal_own(&key, None).unwrap(),
        Sealing::On {
            from: Seq(1),
            now: false
        }
    ));
    assert_eq!(plain_state(&origin, o), plain_state(&plain, plain_key.id()));
    let after = vec![
        put(&r1, r#"{"data":{"text":"quokka-secret 3"}}"#),
        delete(c, Some(20)),
    ];
    origin.append_changes(&key, after.clone(), &[]).unwrap();
    plain.append_changes(&plain_key, after, &[]).unwrap();
    assert_eq!(plain_state(&origin, o), plain_state(&plain, plain_key.id()));
    let new = origin.entries_after(o, head.seq, 100).unwrap();
    assert!(new.len() >= 2);
    for e in &new {
        assert_eq!(e.bytes[0], feed::SEALED_ENTRY_VERSION, "seq {}", e.seq);
        for secret in SECRETS {
            assert!(!contains(&e.bytes, secret), "{secret} in seq {}", e.seq);
        }
    }
    // The holder verifies both forms and reads neither.
    copy_feed(&origin, &mut holder, o);
    assert!(holder.verify_origin(o).unwrap().problems.is_empty());
    assert!(matches!(
        holder.object(o, c),
        Err(StoreError::Sealed { .. })
    ));
    assert_eq!(
        holder.head(o).unwrap(),
        origin.head(o).unwrap(),
        "the holder stores the whole feed"
    );
}

#[test]
fn a_plain_feed_has_no_readers_to_name() {
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::from_seed([73; 32]);
    let mut store = store_for(dir.path(), &key);
    assert_eq!(store.set_readers(&key, &[]).unwrap(), None);
    assert!(matches!(
        store.set_readers(&key, &[NodeKey::from_seed([74; 32]).id()]),
        Err(StoreError::Readers { .. })
    ));
    let e = store.rotate_key(&key).unwrap_err();
    assert!(matches!(e, StoreError::NotSealed { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("is not sealed: it has no content key to rotate")
    );
}

#[test]
fn a_rotation_keeps_the_readers_and_seals_what_follows_under_a_key_nobody_had() {
    let (_dirs, home_key, laptop_key, mut home, mut laptop) = home_and_reader(76, 77);
    let h = home_key.id();
    let rounds = rounds();
    // What an archive written now carries: the keys of epoch 0.
    let before = home.content_keys(&home_key, h).unwrap();
    assert_eq!(before.epochs(), 1);
    let (statement, at) = home.rotate_key(&home_key).unwrap();
    assert_eq!(statement.epoch, 1);
    assert_eq!(statement.ids(), vec![laptop_key.id()], "the reader stays");
    assert_eq!(at, home.head(h).unwrap().unwrap().seq);
    for round in &rounds[1..] {
        home.append_changes(&home_key, round.clone(), &[]).unwrap();
    }
    // The reader opens every epoch, and reads what its origin reads.
    copy_feed(&home, &mut laptop, h);
    laptop.open_granted(&laptop_key).unwrap();
    assert_eq!(plain_state(&laptop, h), plain_state(&home, h));
    // The keys from before open what was sealed up to the rotation, nothing after it.
    let (opened, refused) = try_open(&home, h, &before);
    assert!(
        !opened.is_empty() && opened.iter().all(|seq| *seq < at),
        "{opened:?}"
    );
    assert!(refused.len() >= 3, "{refused:?}");
    assert!(
        refused.iter().all(|(seq, epoch)| *seq > at && *epoch == 1),
        "{refused:?}"
    );
    // The origin itself still reads it all.
    assert_eq!(home.content_keys(&home_key, h).unwrap().epochs(), 2);
}

#[test]
fn an_origin_that_failed_to_open_is_read_again_once_a_peer_repairs_it() {
    let (_dirs, home_key, laptop_key, home, mut laptop) = home_and_reader(78, 79);
    let h = home_key.id();
    copy_feed(&home, &mut laptop, h);
    // One sealed entry rots on the laptop's disk (its ciphertext changes, its hash does not),
    // and is found damaged.
    let (seq, bytes) = laptop
        .entries_after(h, Seq(0), 100)
        .unwrap()
        .into_iter()
        .find_map(|e| {
            let entry = feed::decode_entry(&e.bytes).unwrap();
            let sealed = crate::seal::is_sealed(entry.path) && !entry.body.is_empty();
            sealed.then(|| {
                // A base64url character of the ciphertext, near its end.
                let at = e.bytes.len() - 10;
                let mut bytes = e.bytes.clone();
                bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
                (e.seq, bytes)
            })
        })
        .unwrap();
    laptop
        .conn
        .execute(
            "UPDATE entries SET bytes = ?2 WHERE key = (SELECT id FROM origins WHERE node_id = ?1) << 40 | ?3",
            (&h.as_bytes()[..], &bytes, seq.0 as i64),
        )
        .unwrap();
    let first = laptop.open_granted(&laptop_key).unwrap();
    assert_eq!(first.failed.len(), 1, "{:?}", first.failed);
    assert!(matches!(first.failed[0].1, StoreError::Unsealable { .. }));
    // Nothing of it changed: not read again.
    assert!(laptop.open_granted(&laptop_key).unwrap().failed.is_empty());
    // A peer sends the same entries again: the damaged one is replaced, the head stays, and
    // the next pass opens it all.
    laptop.mark_damaged(h, seq, "test").unwrap();
    let head = laptop.head(h).unwrap().unwrap();
    let mut after = Seq(0);
    while let Some((entries, cp)) = home.entries_page(h, after, 7, 1 << 20).unwrap() {
        let bytes: Vec<Vec<u8>> = entries.into_iter().map(|e| e.bytes).collect();
        laptop
            .accept(&verify_batch(h, bytes, cp).unwrap(), &[])
            .unwrap();
        after = cp.seq;
    }
    assert_eq!(laptop.head(h).unwrap().unwrap(), head);
    let again = laptop.open_granted(&laptop_key).unwrap();
    assert!(again.failed.is_empty(), "{:?}", again.failed);
    assert_eq!(again.opened.len(), 1);
    assert_eq!(plain_state(&laptop, h), plain_state(&home, h));
}
