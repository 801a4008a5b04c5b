//! Two disasters in a row, on Kinto's production backend (PostgreSQL) with the kinto-tandem
//! plugin, with members syncing through real kinto.js devices.
//!
//! A server A is followed by a home node, which pushes to a community node. A and the home
//! node's disk are lost. B is restored from the community's copy; the devices sync on with B
//! and publish what they changed offline; the home node comes back with its key, recovers its
//! feed from the community and follows B, recording nothing again; members change data,
//! permissions and collections on B. Then B is lost, and C is restored from the community: C's
//! tables hold what B's held (objects, timestamps, tombstones and every access control entry,
//! read from PostgreSQL directly), and every device ends equal to C.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::devices::Devices;
use common::kinto::{Kinto, Options};
use common::node::{NEVER, TestNode, backup_pair, wait_for};
use common::restored::{assert_same_rows, users_data};
use serde_json::{Value, json};

const NOTES: (&str, &str) = ("family", "notes");

/// A server with the plugin, on PostgreSQL, with only the accounts tandem needs.
async fn server() -> Kinto {
    Kinto::start(Options {
        plugin: true,
        postgres: true,
        accounts: Some(&["tandem"]),
        ..Options::default()
    })
    .await
}

/// `tandem restore --origin ORIGIN --to TARGET --user tandem` on `node`'s configuration.
fn restore(node: &TestNode, origin: &str, target: &Kinto) -> String {
    common::restore(
        &node.config_path(),
        node.dir.path(),
        target,
        "tandem",
        &["--origin", origin],
        0,
    )
}

/// The notes as alice reads them on `kinto`, sorted by id.
async fn notes(kinto: &Kinto) -> Vec<Value> {
    let (status, body) = kinto
        .request(
            "alice",
            "GET",
            "buckets/family/collections/notes/records",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut records = body["data"].as_array().unwrap().clone();
    records.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    records
}

fn ok(answer: &Value) {
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["errors"], json!([]), "{answer}");
    assert_eq!(answer["conflicts"], 0, "{answer}");
}

/// (path, line) of every object of `origin` that `node` exports.
fn exported(node: &TestNode, origin: &str) -> BTreeSet<(String, String)> {
    let out = common::tandem(
        &node.config_path(),
        &["export", "--origin", origin, "--format", "jsonl"],
        0,
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            // Only the path is decoded: data may hold numbers wider than a float.
            #[derive(serde::Deserialize)]
            struct Line {
                path: String,
            }
            let line: Line = serde_json::from_str(l).unwrap();
            (line.path, l.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_disasters_lose_nothing() {
    let a = server().await;
    for user in ["alice", "bob"] {
        a.create_account(user).await;
    }
    // Alice's bucket (tandem is not in its ACL), shared with bob; bob's default bucket.
    a.ok(
        "alice",
        "PUT",
        "buckets/family",
        Some(json!({"data": {"title": "Famille"}, "permissions": {"read": ["account:bob"]}})),
    )
    .await;
    a.ok(
        "alice",
        "PUT",
        "buckets/family/collections/notes",
        Some(json!({"data": {}, "permissions": {"record:create": ["account:bob"]}})),
    )
    .await;
    a.ok(
        "bob",
        "PUT",
        "buckets/default/collections/diary/records/d1",
        Some(json!({"data": {"text": "cher journal", "weight": 1.7976931348623157e308}})),
    )
    .await;
    let mut devices = Devices::start();
    for text in ["one", "two", "three"] {
        devices.local(
            "phone",
            NOTES,
            json!({"cmd": "create", "data": {"text": text}}),
        );
    }
    ok(&devices.sync("phone", &a, "alice", NOTES));
    ok(&devices.sync("tablet", &a, "alice", NOTES));

    let (mut home, mut community) = backup_pair(Some((&a, "1h")));
    community.start().await;
    home.start().await;
    let answer = home.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    let home_id = home.id;
    wait_for(Duration::from_secs(30), "the community copy", || {
        community.head(home_id) == home.head(home_id)
    })
    .await;

    // Offline edits on both devices.
    let phone_notes = devices.records("phone", NOTES);
    devices.local(
        "phone",
        NOTES,
        json!({"cmd": "update", "data": {"id": phone_notes[0]["id"], "text": "edited offline"}}),
    );
    devices.local(
        "tablet",
        NOTES,
        json!({"cmd": "create", "data": {"text": "tablet, offline"}}),
    );

    // The first disaster: A and the home node's disk. The key was kept apart.
    let key = std::fs::read(home.data().join("node.key")).unwrap();
    drop(a);
    home.stop().await;
    drop(home);

    let b = server().await;
    let out = restore(&community, &home_id.to_string(), &b);
    assert!(out.contains("kinto-tandem plugin"), "{out}");
    for user in ["alice", "bob"] {
        assert_eq!(
            b.request(user, "GET", "", None).await.1["user"]["id"],
            format!("account:{user}"),
            "{user} logs in on B with the old password"
        );
    }

    // What the community holds of the home node: A's state.
    let recovered = exported(&community, &home_id.to_string());

    // The home node comes back with its key on a new disk: it recovers its feed from the
    // community before appending anything, then follows B and records nothing again (only
    // B's own restoring account differs from A's).
    let mut home = TestNode::new("home");
    std::fs::write(home.data().join("node.key"), &key).unwrap();
    home.id = home_id;
    home.configure(
        "",
        &format!(
            "{}{}",
            home.source(&b, "1h"),
            TestNode::peer_entry(&community, &format!("push = [\"self\"]\n{NEVER}"))
        ),
    );
    let out = common::tandem(&home.config_path(), &["init", "--existing-key"], 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("fetch this node's feed back"),
        "{out:?}"
    );
    home.start().await;
    wait_for(
        Duration::from_secs(30),
        "the recovery of the home feed",
        || {
            home.status()["node"]["recovering"] == false
                && home.head(home_id) >= community.head(home_id)
        },
    )
    .await;
    let answer = home.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    let following = exported(&home, "self");
    let changed: Vec<&String> = following
        .symmetric_difference(&recovered)
        .map(|(path, _)| path)
        .collect();
    assert!(
        changed.iter().all(|p| *p == "/accounts/tandem"),
        "following B recorded again: {changed:?}"
    );

    // The devices sync on with B and publish their offline edits.
    ok(&devices.sync("phone", &b, "alice", NOTES));
    ok(&devices.sync("tablet", &b, "alice", NOTES));
    ok(&devices.sync("phone", &b, "alice", NOTES));
    let texts: Vec<String> = notes(&b)
        .await
        .iter()
        .map(|r| r["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(texts.contains(&"edited offline".to_owned()), "{texts:?}");
    assert!(texts.contains(&"tablet, offline".to_owned()), "{texts:?}");

    // Members go on with B: data, permissions, a new collection, a delete.
    let b_notes = notes(&b).await;
    let first = b_notes[0]["id"].as_str().unwrap().to_owned();
    let second = b_notes[1]["id"].as_str().unwrap().to_owned();
    b.ok(
        "alice",
        "PATCH",
        &format!("buckets/family/collections/notes/records/{first}"),
        Some(json!({"permissions": {"read": ["account:bob"]}})),
    )
    .await;
    b.ok(
        "alice",
        "DELETE",
        &format!("buckets/family/collections/notes/records/{second}"),
        None,
    )
    .await;
    b.ok(
        "alice",
        "PUT",
        "buckets/family/collections/recipes",
        Some(json!({"data": {"kind": "food"}, "permissions": {"write": ["account:bob"]}})),
    )
    .await;
    b.ok(
        "bob",
        "PUT",
        "buckets/family/collections/recipes/records/soup",
        Some(json!({"data": {"salt": "a pinch"}})),
    )
    .await;
    b.ok(
        "bob",
        "PATCH",
        "buckets/default/collections/diary/records/d1",
        Some(json!({"data": {"text": "cher journal, encore"}})),
    )
    .await;
    ok(&devices.sync("phone", &b, "alice", NOTES));
    ok(&devices.sync("tablet", &b, "alice", NOTES));
    let answer = home.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    wait_for(Duration::from_secs(30), "the community copy of B", || {
        community.head(home_id) == home.head(home_id)
    })
    .await;

    // The second disaster: B. C is restored from the community.
    let b_tables = users_data(b.database());
    let b_notes = notes(&b).await;
    drop(b);
    home.stop().await;
    let c = server().await;
    restore(&community, &home_id.to_string(), &c);
    let c_tables = users_data(c.database());
    assert_same_rows(&b_tables, &c_tables, ("B", "C"));
    // What the comparison covers: B's changes are there, tombstone and permissions included.
    let has = |pred: &dyn Fn(&Value) -> bool| b_tables.iter().any(pred);
    assert!(has(
        &|r| r["object"][2] == second.as_str() && r["deleted"] == true
    ));
    assert!(has(&|r| r["object"][2] == "soup"));
    assert!(has(&|r| r["ace"]
        == json!([
            format!("/buckets/family/collections/notes/records/{first}"),
            "read",
            "account:bob"
        ])));
    assert!(has(
        &|r| r["object"][1] == "account" && r["object"][2] == "alice"
    ));
    assert_eq!(notes(&c).await, b_notes);

    // Every device ends equal to C.
    for device in ["phone", "tablet"] {
        ok(&devices.sync(device, &c, "alice", NOTES));
        assert_eq!(devices.records(device, NOTES), notes(&c).await, "{device}");
    }
    community.stop().await;
}
