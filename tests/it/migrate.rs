//! Moving a bucket to another server: `tandem migrate start` restores alice's bucket from a
//! node that follows the source into a new Kinto, then the running daemon mirrors every later
//! change of it (creates, updates, deletes, permissions, a collection deleted whole) there.
//! The target must read exactly as alice's bucket on the source, with nothing of bob's; a
//! restart must write nothing again; a write made on the target itself must stop the mirror,
//! untouched and named in `status`, `migrate status` and `/metrics`.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::chaos;
use common::follower::Follower;
use common::kinto::{Kinto, PASSWORD};
use common::node::{NEVER, TestNode, wait_for};
use common::restored::{assert_same, put, source, target, views};
use serde_json::{Value, json};

use crate::select::{alice_and_bob, delete, in_bucket, more, only};

/// More of alice's changes: an update, permissions of her bucket, a collection deleted whole,
/// a new collection with records; and bob's.
async fn later(kinto: &Kinto) {
    more(kinto).await;
    put(
        kinto,
        "alice",
        "/buckets/alice/collections/c1/records/r12",
        json!({"data": {"n": 12, "updated": true}}),
    )
    .await;
    kinto
        .ok(
            "alice",
            "PATCH",
            "/buckets/alice",
            Some(json!({"permissions": {"read": ["account:tandem", "system.Authenticated"]}})),
        )
        .await;
    delete(kinto, "alice", "/buckets/alice/collections/c2").await;
    put(
        kinto,
        "alice",
        "/buckets/alice/collections/c4",
        json!({"data": {"fresh": 1}, "permissions": {"read": ["account:bob"]}}),
    )
    .await;
    for i in 0..3 {
        put(
            kinto,
            "alice",
            &format!("/buckets/alice/collections/c4/records/y{i}"),
            json!({"data": {"y": i}}),
        )
        .await;
    }
    delete(kinto, "alice", "/buckets/alice/collections/c4/records/y1").await;
    put(
        kinto,
        "bob",
        "/buckets/bob/collections/notes/records/n10",
        json!({"data": {"text": 10}}),
    )
    .await;
}

/// `tandem migrate status --json` of `node`.
fn migrations(node: &TestNode) -> Vec<Value> {
    migrations_of(&node.config_path())
}

/// `tandem migrate status --json` with the configuration `config`.
fn migrations_of(config: &Path) -> Vec<Value> {
    let out = common::tandem(config, &["migrate", "status", "--json"], 0);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `tandem migrate start` of `selection` (`--bucket B`, `--collection B/C`…) from the node with
/// the configuration `config` into `to` as `admin` (password in `pw`), which must exit with
/// `code`; stdout and stderr.
fn start_migration(config: &Path, to: &Kinto, pw: &Path, selection: &[&str], code: i32) -> String {
    let mut args = vec!["migrate", "start"];
    args.extend_from_slice(selection);
    args.extend_from_slice(&["--to", &to.url, "--user", "admin"]);
    args.extend_from_slice(&["--password-file", pw.to_str().unwrap()]);
    let out = common::tandem(config, &args, code);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Waits until the mirror applied everything the node holds.
async fn caught_up(node: &TestNode) {
    caught_up_with(&node.config_path()).await;
}

/// Waits until the mirror of the node with the configuration `config` applied everything it
/// holds.
async fn caught_up_with(config: &Path) {
    wait_for(Duration::from_secs(60), "the mirror to catch up", || {
        let m = &migrations_of(config)[0];
        m["state"] == "stopped" || m["applied_seq"] == m["origin_head"]
    })
    .await;
}

/// Alice and bob go on writing on `source`; `home` follows it and the mirror follows `home`:
/// `target` then holds alice's bucket as the source does, and nothing else.
async fn follows_later_writes(source: &Kinto, home: &mut TestNode, target: &Kinto) {
    later(source).await;
    home.sync().await;
    caught_up(home).await;
    let m = &migrations(home)[0];
    assert_eq!(m["state"], "mirroring", "{m}");
    assert_same(&views(target), &only(&views(source), in_bucket("alice")));
    assert!(
        outside_alice(target).is_empty(),
        "{:?}",
        outside_alice(target)
    );
}

/// Everything on `kinto` readable by `admin`, paths outside alice's bucket only.
fn outside_alice(kinto: &Kinto) -> Vec<String> {
    kinto
        .state("admin")
        .iter()
        .map(|row| row["path"].as_str().unwrap().to_owned())
        .filter(|p| !in_bucket("alice")(p))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_bucket_follows_its_source_until_someone_writes_on_the_target() {
    let a = source().await;
    alice_and_bob(&a).await;
    let mut home = TestNode::new("home");
    home.configure("", &home.source(&a, "1h"));
    home.init();
    home.start().await;
    home.sync().await;

    let b = target().await;
    let pw = home.dir.path().join("admin-pw");
    common::write_secret(&pw, PASSWORD);
    let start = |selection: &[&str], code: i32| {
        start_migration(&home.config_path(), &b, &pw, selection, code)
    };
    // Nothing chosen is a usage error.
    start(&[], 2);
    let out = start(&["--bucket", "alice"], 0);
    assert!(
        out.contains("restored bucket(s) alice of")
            && out.contains("migration 1 started")
            && out.contains("the running daemon mirrors"),
        "{out}"
    );
    assert_same(&views(&b), &only(&views(&a), in_bucket("alice")));
    let m = &migrations(&home)[0];
    assert_eq!(m["state"], "mirroring", "{m}");
    assert_eq!(m["selection"]["buckets"], json!(["alice"]), "{m}");
    assert_eq!(m["applied_seq"], m["origin_head"], "{m}");
    assert!(m["error"].is_null(), "{m}");

    follows_later_writes(&a, &mut home, &b).await;

    // A restart writes nothing again: timestamps, tombstones and list ETags stay.
    let before = b.state("admin");
    home.stop().await;
    home.start().await;
    put(
        &a,
        "bob",
        "/buckets/bob/collections/notes/records/n11",
        json!({"data": {"text": 11}}),
    )
    .await;
    home.sync().await;
    caught_up(&home).await;
    assert_eq!(b.state("admin"), before);
    let status = home.status();
    assert_eq!(status["migrations"][0]["state"], "mirroring", "{status}");

    // Someone writes on the target: the next change there stops the mirror, which leaves the
    // object as it is there and names it.
    let path = "/buckets/alice/collections/c1/records/r13";
    put(&b, "admin", path, json!({"data": {"n": "theirs"}})).await;
    put(&a, "alice", path, json!({"data": {"n": 13, "again": 3}})).await;
    put(
        &a,
        "alice",
        "/buckets/alice/collections/c1/records/after",
        json!({"data": {}}),
    )
    .await;
    home.sync().await;
    wait_for(Duration::from_secs(60), "the mirror to stop", || {
        migrations(&home)[0]["state"] == "stopped"
    })
    .await;
    let m = &migrations(&home)[0];
    let error = m["error"].as_str().unwrap();
    assert!(
        error.contains(path) && error.contains("changed on the target"),
        "{m}"
    );
    assert!(m["applied_seq"].as_u64() < m["origin_head"].as_u64(), "{m}");
    let (_, theirs) = b.request("admin", "GET", path, None).await;
    assert_eq!(theirs["data"]["n"], "theirs", "{theirs}");
    let status = home.status();
    assert_eq!(status["migrations"][0]["state"], "stopped", "{status}");
    let text = common::tandem(&home.config_path(), &["status"], 0);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("migration 1: bucket(s) alice of") && text.contains("STOPPED"),
        "{text}"
    );
    let metrics = home.metrics().await;
    assert!(
        metrics.contains("tandem_migration_stopped{id=\"1\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tandem_migration_lag_entries{id=\"1\"}"),
        "{metrics}"
    );
    home.stop().await;
}

/// `n` records `r{i}` of alice's collection `c` put (with `tag` in their data) or, with
/// `tag` None, deleted, in one batch.
async fn records(kinto: &Kinto, ids: impl Iterator<Item = usize>, tag: Option<&str>) {
    let requests: Vec<Value> = ids
        .map(|i| {
            let path = format!("/buckets/alice/collections/c/records/r{i:03}");
            match tag {
                Some(tag) => {
                    json!({"method": "PUT", "path": path, "body": {"data": {"i": i, "tag": tag}}})
                }
                None => json!({"method": "DELETE", "path": path}),
            }
        })
        .collect();
    let answer = kinto.batch("alice", requests).await;
    for r in answer["responses"].as_array().unwrap() {
        assert!(r["status"].as_u64().unwrap() < 300, "{r}");
    }
}

/// The daemon (a real `tandem run`) is killed at random points while it mirrors, round after
/// round, with new changes between; a last run that is not killed brings the target exactly to
/// alice's bucket on the source: nothing lost, nothing written twice over (a write repeated at
/// a wrong point would re-time an object or stop the mirror).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_mirroring_loses_nothing_and_repeats_nothing() {
    let a = source().await;
    put(
        &a,
        "alice",
        "/buckets/alice",
        json!({"data": {}, "permissions": {"read": ["account:bob"]}}),
    )
    .await;
    put(
        &a,
        "alice",
        "/buckets/alice/collections/c",
        json!({"data": {}}),
    )
    .await;
    put(
        &a,
        "bob",
        "/buckets/bob",
        json!({"data": {}, "permissions": {"read": ["account:tandem"]}}),
    )
    .await;
    records(&a, 0..40, Some("a")).await;
    let home = Follower::new(&a, "tandem");
    home.sync();
    let b = target().await;
    let pw = home.dir.path().join("admin-pw");
    common::write_secret(&pw, PASSWORD);
    // No daemon runs: the command records the migration itself.
    let out = home.run(
        &[
            "migrate",
            "start",
            "--bucket",
            "alice",
            "--to",
            &b.url,
            "--user",
            "admin",
            "--password-file",
            pw.to_str().unwrap(),
        ],
        0,
    );
    assert!(out.contains("`tandem run` mirrors"), "{out}");

    let mut rng = chaos::Rng::from_env("sigkill_while_mirroring");
    let (mut kills, mut behind) = (0, 0);
    for round in 0..6usize {
        records(&a, 0..40 + 30 * round, Some(&format!("t{round}"))).await;
        records(&a, (round * 5..round * 5 + 4).filter(|i| i % 2 == 0), None).await;
        put(
            &a,
            "bob",
            &format!("/buckets/bob/collections/n{round}"),
            json!({"data": {}}),
        )
        .await;
        home.sync();
        let delay = rng.between(Duration::from_millis(100), Duration::from_millis(900));
        if chaos::kill_after(chaos::spawn(&home.config(), &["run"]), delay).is_none() {
            kills += 1;
        }
        chaos::verify(&home.config(), &format!("round {round}"));
        let m = &migrations_of(&home.config())[0];
        assert_eq!(m["state"], "mirroring", "round {round}: {m}");
        if m["applied_seq"] != m["origin_head"] {
            behind += 1;
        }
    }
    println!("sigkill_while_mirroring: {kills} kills, {behind} left the mirror behind");
    assert!(kills >= 3, "only {kills} kills landed");
    let daemon = common::process::Daemon::spawn(&home.config());
    caught_up_with(&home.config()).await;
    drop(daemon);
    let m = &migrations_of(&home.config())[0];
    assert_eq!(m["state"], "mirroring", "{m}");
    // Data, timestamps and tombstones, as alice reads them on the source and the restoring
    // account on the target (the node follows this bucket without its permissions: its
    // account is not in them).
    let data = |rows: Vec<Value>| -> Vec<Value> {
        only(&rows, in_bucket("alice"))
            .into_iter()
            .map(|mut row| {
                row.as_object_mut().unwrap().remove("permissions");
                row
            })
            .collect()
    };
    assert_same(&data(b.state("admin")), &data(a.state("alice")));
    assert!(outside_alice(&b).is_empty(), "{:?}", outside_alice(&b));
}

/// A collection moves into a server that already holds its bucket: the bucket stays the
/// target's (not even mirrored when it changes on the source), the collection follows its
/// records, and nothing else of the bucket comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_collection_follows_its_records_only() {
    let a = source().await;
    alice_and_bob(&a).await;
    let mut home = TestNode::new("home");
    home.configure("", &home.source(&a, "1h"));
    home.init();
    home.start().await;
    home.sync().await;
    let b = target().await;
    put(&b, "admin", "/buckets/bob", json!({"data": {"here": true}})).await;
    let pw = home.dir.path().join("admin-pw");
    common::write_secret(&pw, PASSWORD);
    let out = start_migration(
        &home.config_path(),
        &b,
        &pw,
        &["--collection", "bob/notes"],
        0,
    );
    assert!(
        out.contains("1 buckets already existed on the target and were kept"),
        "{out}"
    );

    let notes = "/buckets/bob/collections/notes";
    put(
        &a,
        "bob",
        &format!("{notes}/records/n20"),
        json!({"data": {"text": 20}}),
    )
    .await;
    put(
        &a,
        "bob",
        &format!("{notes}/records/n0"),
        json!({"data": {"text": "zero"}}),
    )
    .await;
    delete(&a, "bob", &format!("{notes}/records/n2")).await;
    put(
        &a,
        "bob",
        "/buckets/bob",
        json!({"data": {"title": "changed"}, "permissions": {"read": ["account:tandem"]}}),
    )
    .await;
    put(
        &a,
        "bob",
        "/buckets/bob/collections/other",
        json!({"data": {}}),
    )
    .await;
    later(&a).await;
    home.sync().await;
    caught_up(&home).await;
    assert_eq!(migrations(&home)[0]["state"], "mirroring");

    // Data, timestamps and tombstones of the collection, as bob reads them on the source and
    // the restoring account on the target.
    let in_notes = in_bucket("bob/collections/notes");
    let data = |rows: Vec<Value>| -> Vec<Value> {
        only(&rows, &in_notes)
            .into_iter()
            .map(|mut row| {
                row.as_object_mut().unwrap().remove("permissions");
                row
            })
            .collect()
    };
    assert_same(&data(b.state("admin")), &data(a.state("bob")));
    let paths: Vec<String> = b
        .state("admin")
        .iter()
        .map(|row| row["path"].as_str().unwrap().to_owned())
        .filter(|p| !in_notes(p))
        .collect();
    assert_eq!(paths, ["/buckets/bob"]);
    let (_, bucket) = b.request("admin", "GET", "/buckets/bob", None).await;
    assert_eq!(bucket["data"]["here"], true, "{bucket}");
    home.stop().await;
}

/// The state a SIGKILL between the target's answer and the commit leaves, made on purpose: the
/// mirror writes a chunk and commits it, then the store is put back as it was before the commit
/// (the target keeps the writes). The next pass must take every object on the target for its
/// own write, change nothing there, and move on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_the_store_forgot_are_recognized_and_not_repeated() {
    let a = source().await;
    alice_and_bob(&a).await;
    let mut home = TestNode::new("home");
    home.configure("", &home.source(&a, "1h"));
    home.init();
    home.start().await;
    home.sync().await;
    let b = target().await;
    let pw = home.dir.path().join("admin-pw");
    common::write_secret(&pw, PASSWORD);
    start_migration(&home.config_path(), &b, &pw, &["--bucket", "alice"], 0);
    home.stop().await;
    later(&a).await;
    common::tandem(&home.config_path(), &["sync"], 0);

    let pass = |data: std::path::PathBuf, id| async move {
        let store = tandem::store::Store::open_writer(&data, id).unwrap();
        let handle = tandem::store::StoreHandle::new(store, 1).unwrap();
        let report = tandem::replicate::mirror::Mirror::new(handle.clone())
            .pass()
            .await
            .unwrap();
        assert!(handle.close(Duration::from_secs(10)).await);
        report
    };
    let db = home.data().join(tandem::store::DB_FILE);
    let saved = home.dir.path().join("before-the-commit.db");
    std::fs::copy(&db, &saved).unwrap();
    let first = pass(home.data(), home.id).await;
    assert!(first.entries > 0 && first.written > 0, "{first:?}");
    let written = b.state("admin");

    // The store forgets the commit; the target keeps what was written.
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(
            home.data()
                .join(format!("{}{suffix}", tandem::store::DB_FILE)),
        );
    }
    std::fs::copy(&saved, &db).unwrap();
    assert!(
        migrations(&home)[0]["applied_seq"].as_u64() < migrations(&home)[0]["origin_head"].as_u64()
    );
    let again = pass(home.data(), home.id).await;
    assert_eq!(
        (again.entries, again.stopped, again.mirroring),
        (first.entries, 0, 1),
        "{again:?}"
    );
    assert_eq!(b.state("admin"), written);
    let m = &migrations(&home)[0];
    assert_eq!(m["state"], "mirroring", "{m}");
    assert_eq!(m["applied_seq"], m["origin_head"], "{m}");

    // Again, and this time later versions arrive before the next pass: the forgotten chunk
    // grows, and the objects the target holds at one of its earlier versions are written again
    // over the mirror's own writes.
    let r12 = "/buckets/alice/collections/c1/records/r12";
    put(&a, "alice", r12, json!({"data": {"n": 12, "version": 2}})).await;
    delete(&a, "alice", "/buckets/alice/collections/c1/records/r14").await;
    common::tandem(&home.config_path(), &["sync"], 0);
    std::fs::copy(&db, &saved).unwrap();
    pass(home.data(), home.id).await;
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(
            home.data()
                .join(format!("{}{suffix}", tandem::store::DB_FILE)),
        );
    }
    std::fs::copy(&saved, &db).unwrap();
    put(&a, "alice", r12, json!({"data": {"n": 12, "version": 3}})).await;
    put(
        &a,
        "alice",
        "/buckets/alice/collections/c1/records/r14",
        json!({"data": {"back": true}}),
    )
    .await;
    common::tandem(&home.config_path(), &["sync"], 0);
    let last = pass(home.data(), home.id).await;
    assert_eq!((last.stopped, last.mirroring), (0, 1), "{last:?}");
    let m = &migrations(&home)[0];
    assert_eq!(m["applied_seq"], m["origin_head"], "{m}");
    assert_same(&views(&b), &only(&views(&a), in_bucket("alice")));
}

/// A sealed node with a reader moves a bucket as a plain one does: its readers statement (the
/// content keys wrapped to the reader) is about the feed, neither written to the target nor
/// exported, and the node drills its own sealed feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_node_moves_a_bucket_exports_and_drills_it() {
    let a = source().await;
    alice_and_bob(&a).await;
    let (mut home, laptop) = (TestNode::new("home"), TestNode::new("laptop"));
    laptop.configure("", "");
    laptop.init();
    let scratch = target().await;
    let pw = home.dir.path().join("admin-pw");
    common::write_secret(&pw, PASSWORD);
    home.configure(
        "seal = true\n",
        &format!(
            "{}[drill]\n{NEVER}\nto = \"{}\"\nuser = \"admin\"\npassword_file = \"admin-pw\"\n{}",
            home.source(&a, "1h"),
            scratch.url,
            TestNode::peer_entry(&laptop, &format!("read = true\n{NEVER}"))
        ),
    );
    home.init();
    home.start().await;
    home.sync().await;

    // The JSON Lines export holds the source's objects only, each with its data.
    let out = common::tandem(&home.config_path(), &["export"], 0);
    let lines = String::from_utf8(out.stdout).unwrap();
    assert!(lines.lines().count() > 10, "{lines}");
    for line in lines.lines() {
        let object: Value = serde_json::from_str(line).unwrap();
        assert!(object["data"].is_object(), "{line}");
        assert_ne!(object["path"], "/tandem/readers", "{line}");
    }
    // Everything is in buckets; the export for kinto-wizard leaves nothing out either: the
    // readers statement is no object of the source there.
    assert!(
        lines
            .lines()
            .all(|l| l.starts_with(r#"{"path":"/buckets/"#)),
        "{lines}"
    );
    let out = common::tandem(
        &home.config_path(),
        &["export", "--format", "kinto-wizard"],
        0,
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("left out"), "{said}");

    let b = target().await;
    let out = start_migration(&home.config_path(), &b, &pw, &["--bucket", "alice"], 0);
    assert!(out.contains("migration 1 started"), "{out}");
    assert_same(&views(&b), &only(&views(&a), in_bucket("alice")));
    follows_later_writes(&a, &mut home, &b).await;

    // Its own sealed feed restores into the scratch server and reads back.
    common::tandem(&home.config_path(), &["snapshot", "create"], 0);
    let out = common::tandem(&home.config_path(), &["drill"], 0);
    let out =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.contains(" ok") && !out.contains("FAILED"), "{out}");
    home.stop().await;
}
