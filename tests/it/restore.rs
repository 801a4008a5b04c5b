//! The disaster test: a Kinto server with varied content is followed by a home node, which
//! pushes to a community node. Then the server and the home node's store are destroyed, and
//! fresh Kinto servers are restored from the community node's copy: an independent client
//! (kinto-http) must see exactly what the original had, data, permissions, timestamps, records
//! ETags and tombstones, now and at a past time. A tampered copy is refused and writes nothing.

use crate::common;

use std::time::Duration;

use common::kinto::{Kinto, PASSWORD};
use common::node::{NEVER, TestNode, wait_for};
use common::restored::{assert_same, put, source, target, views};
use serde_json::{Value, json};

/// Buckets of two accounts, groups, collections, records with and without permissions, unicode,
/// exact numbers, updates, deletes (tombstones), and a deleted collection.
async fn first_content(kinto: &Kinto) {
    // Each bucket lets tandem read it, so that its history (with every permission) is followed.
    put(kinto, "alice", "/buckets/b", json!({"data": {"title": "Bücher 📚"}, "permissions": {"read": ["account:tandem", "account:bob"]}})).await;
    put(
        kinto,
        "alice",
        "/buckets/b/groups/team",
        json!({"data": {"members": ["account:bob"]}}),
    )
    .await;
    put(kinto, "alice", "/buckets/b/collections/c", json!({"data": {"ratio": 1.50, "big": 12345678901234567890u64}, "permissions": {"record:create": ["group:team"]}})).await;
    for i in 0..70 {
        let permissions = if i % 7 == 0 {
            json!({"read": ["system.Everyone"]})
        } else {
            json!({})
        };
        put(
            kinto,
            "alice",
            &format!("/buckets/b/collections/c/records/r{i:02}"),
            json!({"data": {"n": i, "título": "naïve ✓", "nested": {"list": [1, 2.0, "3"]}}, "permissions": permissions}),
        )
        .await;
    }
    put(
        kinto,
        "alice",
        "/buckets/b/collections/c/records/r03",
        json!({"data": {"n": 3, "updated": true}}),
    )
    .await;
    kinto
        .ok(
            "alice",
            "DELETE",
            "/buckets/b/collections/c/records/r05",
            None,
        )
        .await;
    put(
        kinto,
        "alice",
        "/buckets/b/collections/gone",
        json!({"data": {}}),
    )
    .await;
    put(
        kinto,
        "alice",
        "/buckets/b/collections/gone/records/x",
        json!({"data": {"x": 1}}),
    )
    .await;
    kinto
        .ok(
            "alice",
            "DELETE",
            "/buckets/b/collections/gone/records/x",
            None,
        )
        .await;
    kinto
        .ok("alice", "DELETE", "/buckets/b/collections/gone", None)
        .await;
    put(
        kinto,
        "bob",
        "/buckets/bob",
        json!({"data": {}, "permissions": {"read": ["account:tandem"]}}),
    )
    .await;
    put(
        kinto,
        "bob",
        "/buckets/bob/collections/notes",
        json!({"data": {}}),
    )
    .await;
    put(
        kinto,
        "bob",
        "/buckets/bob/collections/notes/records/n1",
        json!({"data": {"text": "first"}, "permissions": {"write": ["account:alice"]}}),
    )
    .await;
    put(
        kinto,
        "bob",
        "/buckets/bob/collections/notes/records/n2",
        json!({"data": {"text": "second"}}),
    )
    .await;
    // The last change of this collection is a delete: its ETag is the tombstone's timestamp.
    kinto
        .ok(
            "bob",
            "DELETE",
            "/buckets/bob/collections/notes/records/n2",
            None,
        )
        .await;
}

async fn more_content(kinto: &Kinto) {
    put(
        kinto,
        "alice",
        "/buckets/b/collections/c/records/late",
        json!({"data": {"late": true}}),
    )
    .await;
    kinto
        .ok(
            "alice",
            "DELETE",
            "/buckets/b/collections/c/records/r10",
            None,
        )
        .await;
    put(
        kinto,
        "alice",
        "/buckets/b/collections/c/records/r11",
        json!({"data": {"n": 11, "again": 2}, "permissions": {"read": ["account:bob"]}}),
    )
    .await;
    put(
        kinto,
        "bob",
        "/buckets/bob/collections/more",
        json!({"data": {"k": "v"}}),
    )
    .await;
}

async fn kinto_delete(kinto: &Kinto, path: &str) {
    kinto.ok("admin", "DELETE", path, None).await;
}

/// `tandem restore --origin ORIGIN --to TARGET --user admin` with `extra` arguments, run on
/// `node`'s configuration; returns stdout and stderr together.
fn restore(node: &TestNode, origin: &str, target: &Kinto, extra: &[&str], code: i32) -> String {
    let args = [&["--origin", origin][..], extra].concat();
    common::restore(
        &node.config_path(),
        node.dir.path(),
        target,
        "admin",
        &args,
        code,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disaster_recovery_from_the_community_copy() {
    let mut a = source().await;
    first_content(&a).await;
    let mut home = TestNode::new("home");
    let mut community = TestNode::new("community");
    home.configure(
        "",
        &format!(
            "{}{}",
            home.source(&a, "1h"),
            TestNode::peer_entry(&community, &format!("push = [\"self\"]\n{NEVER}"))
        ),
    );
    // A member's new machine, which will fetch the copy from the community and restore it.
    let rescue = TestNode::new("rescue");
    let home_id = home.id.to_string();
    let home_node = home.id;
    community.configure(
        "",
        &format!(
            "{}{}",
            TestNode::peer_entry(&home, NEVER),
            TestNode::peer_entry(&rescue, &format!("serve = [\"{home_id}\"]\n{NEVER}"))
        ),
    );
    rescue.configure("", &TestNode::peer_entry(&community, NEVER));
    rescue.init();
    home.init();
    community.init();
    community.start().await;
    home.start().await;
    let answer = home.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    let first = views(&a);
    wait_for(Duration::from_secs(30), "the community copy", || {
        community.head(home.id) == home.head(home.id)
    })
    .await;
    // A point in time between the two rounds of changes.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let first_seq = home.head(home.id).to_string();
    more_content(&a).await;
    let answer = home.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    // A snapshot of the final state, handed to the community by the next push.
    let out = common::tandem(&home.config_path(), &["snapshot", "create"], 0);
    let snapshot_id = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    let answer = home.sync().await;
    assert_eq!(answer["peers"][0]["push"]["snapshots"], 1, "{answer}");
    let last = views(&a);
    assert_ne!(first, last);
    assert!(
        last.iter()
            .any(|row| row["tombstones"].as_array().is_some_and(|t| !t.is_empty())),
        "the scenario has tombstones"
    );

    // The disaster: the server and the home node's store are gone.
    a.kill();
    home.stop().await;
    drop(home);

    // Restore the latest state into a fresh server, from the community's copy, while the
    // community node runs.
    let b = target().await;
    let out = restore(&community, &home_id, &b, &[], 0);
    assert!(out.contains("restored"), "{out}");
    assert_same(&views(&b), &last);

    // Again: nothing to write.
    let out = restore(&community, &home_id, &b, &[], 0);
    assert!(out.contains("(0 written,"), "{out}");
    assert_same(&views(&b), &last);

    // A target that holds other data: a record re-created where the state has a tombstone,
    // and a record changed. The restore stops and names it; neither is overwritten or deleted.
    put(
        &b,
        "alice",
        "/buckets/b/collections/c/records/r05",
        json!({"data": {"back": true}}),
    )
    .await;
    let out = restore(&community, &home_id, &b, &[], 1);
    assert!(
        out.contains("records/r05") && out.contains("holds newer data"),
        "{out}"
    );
    let (_, r05) = b
        .request("alice", "GET", "/buckets/b/collections/c/records/r05", None)
        .await;
    assert_eq!(r05["data"]["back"], true, "{r05}");
    kinto_delete(&b, "/buckets/b/collections/c/records/r05").await;
    put(
        &b,
        "bob",
        "/buckets/bob/collections/notes/records/n1",
        json!({"data": {"text": "mine"}}),
    )
    .await;
    let out = restore(&community, &home_id, &b, &[], 1);
    assert!(
        out.contains("records/n1") && out.contains("holds newer data"),
        "{out}"
    );
    let (_, n1) = b
        .request(
            "bob",
            "GET",
            "/buckets/bob/collections/notes/records/n1",
            None,
        )
        .await;
    assert_eq!(n1["data"]["text"], "mine", "{n1}");

    // A seq and a snapshot: the state after the first round, and the snapshot's.
    let g = target().await;
    restore(&community, &home_id, &g, &["--seq", &first_seq], 0);
    assert_same(&views(&g), &first);
    let h = target().await;
    restore(&community, &home_id, &h, &["--snapshot", &snapshot_id], 0);
    assert_same(&views(&h), &last);

    // The past: the state at the time between the two rounds.
    let c = target().await;
    restore(&community, &home_id, &c, &["--at", &between], 0);
    assert_same(&views(&c), &first);

    // From another machine that holds nothing yet: fetch from the community, then restore.
    let e = target().await;
    let out = restore(&rescue, &home_id, &e, &["--from-peer", "community"], 0);
    assert!(out.contains("fetched") && out.contains("restored"), "{out}");
    assert_same(&views(&e), &last);

    // Through the portable archive: exported from the community's copy, imported on a third
    // node, restored from there.
    let archive = community.dir.path().join("home.tandem");
    let out = common::tandem(
        &community.config_path(),
        &[
            "export",
            "--origin",
            &home_id,
            "--archive",
            archive.to_str().unwrap(),
        ],
        0,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("archived"));
    let third = TestNode::new("third");
    third.configure("", "");
    third.init();
    // A damaged archive first: one byte changed inside, recompressed. Nothing is imported.
    let damaged = community.dir.path().join("damaged.tandem");
    {
        let mut plain = zstd::decode_all(std::fs::File::open(&archive).unwrap()).unwrap();
        let at = plain.len() / 2;
        plain[at] ^= 0x01;
        std::fs::write(&damaged, zstd::encode_all(plain.as_slice(), 3).unwrap()).unwrap();
    }
    let out = common::tandem(
        &third.config_path(),
        &["import", damaged.to_str().unwrap()],
        1,
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("nothing was imported"), "{text}");
    assert_eq!(third.head(home_node), 0);
    let out = common::tandem(
        &third.config_path(),
        &["import", archive.to_str().unwrap()],
        0,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported"));
    let f = target().await;
    restore(&third, &home_id, &f, &[], 0);
    assert_same(&views(&f), &last);

    // A tampered copy: one byte of one stored entry. The restore refuses, names it, and
    // writes nothing.
    community.stop().await;
    {
        let conn = rusqlite::Connection::open(community.data().join("tandem.db")).unwrap();
        let (key, mut bytes): (i64, Vec<u8>) = conn
            .query_row(
                "SELECT key, bytes FROM entries ORDER BY key LIMIT 1 OFFSET 40",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let at = bytes.len() - 5;
        bytes[at] ^= 0x20;
        conn.execute("UPDATE entries SET bytes = ?2 WHERE key = ?1", (key, bytes))
            .unwrap();
    }
    let d = target().await;
    let out = restore(&community, &home_id, &d, &[], 1);
    assert!(
        out.contains("does not verify") && out.contains("seq 41"),
        "{out}"
    );
    assert!(d.state("admin").is_empty(), "nothing was written");
}

/// A restore killed with SIGKILL halfway resumes when run again: it completes, writes no
/// object twice, and the target ends exactly as a restore that was never interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_restore_resumes_without_duplicates() {
    // Enough that the restore is still running when it is killed, on a fast machine too.
    const RECORDS: usize = 10_000;
    let node = TestNode::new("home");
    node.configure("", "");
    node.init();
    {
        let key = node.key();
        let mut store = tandem::store::Store::open_writer(&node.data(), key.id()).unwrap();
        let put = |path: String, body: String| tandem::store::Change {
            op: tandem::feed::Op::Put,
            path,
            body: body.into_bytes(),
        };
        let mut changes = vec![
            put(
                "/buckets/b".into(),
                r#"{"data":{"id":"b","last_modified":1000}}"#.into(),
            ),
            put(
                "/buckets/b/collections/c".into(),
                r#"{"data":{"id":"c","last_modified":1001}}"#.into(),
            ),
        ];
        for i in 0..RECORDS {
            changes.push(put(
                format!("/buckets/b/collections/c/records/r{i:04}"),
                format!(
                    r#"{{"data":{{"id":"r{i:04}","last_modified":{},"n":{i}}}}}"#,
                    2000 + i
                ),
            ));
        }
        store.append(&key, &changes, &[]).unwrap();
    }
    let target = target().await;
    let pw = node.dir.path().join("pw");
    common::write_secret(&pw, PASSWORD);
    let args = |config: &std::path::Path| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"));
        cmd.arg("--config").arg(config).args([
            "restore",
            "--to",
            &target.url,
            "--user",
            "admin",
            "--password-file",
            pw.to_str().unwrap(),
        ]);
        cmd
    };
    let log = node.dir.path().join("restore.log");
    let mut child = args(&node.config_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Records go in ascending last_modified: the newest one says how many are there.
    let count = || async {
        let (status, body) = target
            .request(
                "admin",
                "GET",
                "/buckets/b/collections/c/records?_sort=-last_modified&_limit=1",
                None,
            )
            .await;
        match (status, body["data"][0]["last_modified"].as_i64()) {
            (200, Some(lm)) => (lm - 1999) as usize,
            _ => 0,
        }
    };
    let started = std::time::Instant::now();
    loop {
        let n = count().await;
        if n >= 300 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the restore made no progress"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the restore ended before it was killed: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = count().await;
    assert!(
        partial < RECORDS,
        "killed too late to test anything: {partial}"
    );

    let out = args(&node.config_path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Everything the first run wrote was found there; the rest was written once.
    let written: u64 = text
        .split("objects (")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(written <= RECORDS as u64 + 2 - partial as u64, "{text}");
    assert!(text.contains(&format!("{} objects", RECORDS + 2)), "{text}");
    let dump = target.dump("admin");
    let records: Vec<&Value> = dump
        .iter()
        .filter(|row| row["path"].as_str().unwrap().contains("/records/"))
        .collect();
    assert_eq!(records.len(), RECORDS);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["data"]["last_modified"], 2000 + i as i64, "{r}");
        assert_eq!(r["data"]["n"], i as i64);
    }
}

/// The months after a restore: the home node follows the restored server, which members go on
/// changing, and a second disaster restores everything, the changes made since included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restored_server_is_followed_and_a_second_disaster_loses_nothing() {
    let a = source().await;
    first_content(&a).await;
    let home = common::follower::Follower::new(&a, "tandem");
    assert!(home.sync() > 0);
    let b = target().await;
    home.restore_as(&b, "admin", &[], 0);
    drop(a);

    // Following the restored server records nothing again: same objects, same bytes, and the
    // permissions the history gave are kept where the lists cannot show them.
    home.set_source(&b);
    let before = home.export();
    assert_eq!(
        home.sync(),
        0,
        "following the restored server appended entries"
    );
    assert_eq!(home.export(), before);
    let with_permissions = |export: &[Value]| {
        export
            .iter()
            .filter(|o| o["permissions"].is_object())
            .count()
    };
    assert!(with_permissions(&before) > 70);

    // Members go on: data, permissions, collections.
    more_content(&b).await;
    b.ok(
        "alice",
        "PUT",
        "/buckets/b/collections/c/records/r14",
        Some(json!({"data": {"n": 14, "moved": "on"}})),
    )
    .await;
    assert!(home.sync() > 0);
    let after = home.export();
    for object in &before {
        if let Some(now) = after.iter().find(|o| o["path"] == object["path"])
            && object["permissions"].is_object()
        {
            assert!(
                now["permissions"].is_object(),
                "the permissions of {} were replaced by none",
                object["path"]
            );
        }
    }
    let late = after
        .iter()
        .find(|o| o["path"] == "/buckets/b/collections/c/records/late")
        .expect("a record written on the restored server");
    assert_eq!(late["data"]["late"], true);

    // The second disaster: the restored server goes too; everything comes back. One thing
    // cannot: r11's new permissions, set on B, where explicit_permissions is off (as the
    // restore needed) and so no history can be followed and the lists show no permissions:
    // the node kept r11's earlier ones (see docs/operating.md: turn explicit_permissions
    // back on, or use the kinto-tandem plugin, before following a restored server).
    let c = target().await;
    home.restore_as(&c, "admin", &[], 0);
    let without_r11_permissions = |rows: Vec<Value>| -> Vec<Value> {
        rows.into_iter()
            .map(|mut row| {
                if row["path"] == "/buckets/b/collections/c/records/r11" {
                    row["permissions"] = Value::Null;
                }
                row
            })
            .collect()
    };
    assert_same(
        &without_r11_permissions(views(&c)),
        &without_r11_permissions(views(&b)),
    );
}
