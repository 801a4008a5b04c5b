//! Devices follow a moved bucket: alice's kinto.js devices (in Node, over fake-indexeddb) sync
//! her bucket with the old server while `tandem migrate start` moves it to a new one and the
//! daemon mirrors every later change there; `tandem migrate finish` switches over; then the
//! devices are pointed at the new server's URL, with the same local databases, and sync on.
//!
//! - The new server holds alice's bucket exactly as the old one did: the same objects, the
//!   same `last_modified`, the same tombstones, and nothing of bob's.
//! - Every device syncs on there without an error (no `ServerWasFlushedError`) and without a
//!   conflict, including for changes the old server received while the restore ran, and for a
//!   collection created after the migration started.
//! - Nothing a device had synced is sent again: its sync publishes exactly its offline
//!   creates, updates and deletes, and the records nobody changed keep the old server's
//!   timestamps.
//! - A device that last synced before the migration started, and syncs only after the others
//!   wrote on the new server, receives exactly what changed meanwhile.
//! - A device that syncs with the old server after the switch gets the switch's versions of
//!   the records, at timestamps the new server does not hold: there, its edit of such a record
//!   is a conflict (the limit docs/operating.md states).

use crate::common;

use std::time::Duration;

use common::devices::Devices;
use common::kinto::{Kinto, PASSWORD};
use common::node::{TestNode, wait_for};
use common::restored::{assert_same, put, switchable_source, target};
use serde_json::{Value, json};

use crate::select::{in_bucket, only};

const NOTES: (&str, &str) = ("family", "notes");
const TODO: (&str, &str) = ("family", "todo");

/// kinto.js's sync answer, asserted: a success without errors or conflicts (none left, none
/// resolved by the devices' SERVER_WINS strategy), which published
/// exactly `published` local changes and received `created`, `updated` and `deleted` records
/// from the server.
fn synced(answer: &Value, published: u64, (created, updated, deleted): (u64, u64, u64)) {
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["errors"], json!([]), "{answer}");
    assert_eq!(answer["conflicts"], 0, "{answer}");
    assert_eq!(answer["resolved"], 0, "{answer}");
    assert_eq!(answer["published"], published, "{answer}");
    assert_eq!(
        (&answer["created"], &answer["updated"], &answer["deleted"]),
        (&json!(created), &json!(updated), &json!(deleted)),
        "{answer}"
    );
}

/// A local create on `device`; the new record's id.
fn create(devices: &mut Devices, device: &str, bc: (&str, &str), text: &str) -> String {
    devices.local(device, bc, json!({"cmd": "create", "data": {"text": text}}))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The records of `bucket/collection` on `kinto` as alice (with their timestamps), by id.
async fn server_records(kinto: &Kinto, bc: (&str, &str)) -> Vec<Value> {
    let (status, body) = kinto
        .request(
            "alice",
            "GET",
            &format!("buckets/{}/collections/{}/records", bc.0, bc.1),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut records = body["data"].as_array().unwrap().clone();
    records.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    records
}

/// Records without their timestamps.
fn contents(records: &[Value]) -> Vec<Value> {
    records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("last_modified");
            r
        })
        .collect()
}

/// The record `id` among `records`.
fn record<'a>(records: &'a [Value], id: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no record {id} in {records:?}"))
}

/// `tandem migrate status --json` of `node`.
fn migrations(node: &TestNode) -> Vec<Value> {
    let out = common::tandem(&node.config_path(), &["migrate", "status", "--json"], 0);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Asks the daemon for a round (the node reads the source), then waits until the mirror
/// applied everything the node holds.
async fn mirrored(node: &mut TestNode) {
    node.sync().await;
    wait_for(Duration::from_secs(120), "the mirror to catch up", || {
        let m = &migrations(node)[0];
        m["state"] == "stopped" || m["applied_seq"] == m["origin_head"]
    })
    .await;
    let m = &migrations(node)[0];
    assert_eq!(m["state"], "mirroring", "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_follow_their_bucket_to_its_new_server() {
    let a = switchable_source().await;
    // Each bucket lets tandem read it (its history, so every permission is recorded).
    for (user, bucket) in [("alice", "family"), ("bob", "bob")] {
        put(
            &a,
            user,
            &format!("/buckets/{bucket}"),
            json!({"data": {}, "permissions": {"read": ["account:tandem"]}}),
        )
        .await;
        put(
            &a,
            user,
            &format!("/buckets/{bucket}/collections/notes"),
            json!({"data": {}}),
        )
        .await;
    }
    put(
        &a,
        "bob",
        "/buckets/bob/collections/notes/records/b0",
        json!({"data": {"text": "bob's"}}),
    )
    .await;

    // The phone writes three notes; the tablet, the laptop and the desktop sync them.
    let mut devices = Devices::start();
    let n: Vec<String> = ["one", "two", "three"]
        .iter()
        .map(|text| create(&mut devices, "phone", NOTES, text))
        .collect();
    synced(&devices.sync("phone", &a, "alice", NOTES), 3, (0, 0, 0));
    synced(&devices.sync("tablet", &a, "alice", NOTES), 0, (3, 0, 0));
    synced(&devices.sync("laptop", &a, "alice", NOTES), 0, (3, 0, 0));
    synced(&devices.sync("desktop", &a, "alice", NOTES), 0, (3, 0, 0));

    // The home node follows the old server; it reads it when asked (hourly otherwise).
    let mut home = TestNode::new("home");
    home.configure("", &home.source(&a, "1h"));
    home.init();
    home.start().await;
    home.sync().await;

    // The laptop goes away. The phone writes again, after the node's last read: the restore
    // will not have these, the mirror brings them later with the old server's timestamps,
    // older than anything the restore wrote.
    devices.local(
        "phone",
        NOTES,
        json!({"cmd": "update", "data": {"id": n[0], "text": "one, edited"}}),
    );
    let four = create(&mut devices, "phone", NOTES, "four");
    synced(&devices.sync("phone", &a, "alice", NOTES), 2, (0, 0, 0));

    // The move starts while alice goes on writing from the phone and bob writes his bucket.
    let b = target().await;
    let pw = home.dir.path().join("admin-pw");
    common::write_secret(&pw, PASSWORD);
    let config = home.config_path();
    let (url, password_file) = (b.url.clone(), pw.to_str().unwrap().to_owned());
    let command = tokio::task::spawn_blocking(move || {
        common::tandem(
            &config,
            &[
                "migrate",
                "start",
                "--bucket",
                "family",
                "--to",
                &url,
                "--user",
                "admin",
                "--password-file",
                &password_file,
            ],
            0,
        )
    });
    let five = create(&mut devices, "phone", NOTES, "five");
    synced(&devices.sync("phone", &a, "alice", NOTES), 1, (0, 0, 0));
    put(
        &a,
        "bob",
        "/buckets/bob/collections/notes/records/b1",
        json!({"data": {"text": "bob's, later"}}),
    )
    .await;
    let out = command.await.unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("migration 1 started"), "{out}");

    // After the start, alice makes a to-do list; the phone fills it, the tablet syncs both
    // collections.
    put(
        &a,
        "alice",
        "/buckets/family/collections/todo",
        json!({"data": {}}),
    )
    .await;
    let t: Vec<String> = ["milk", "bread", "eggs"]
        .iter()
        .map(|text| create(&mut devices, "phone", TODO, text))
        .collect();
    synced(&devices.sync("phone", &a, "alice", TODO), 3, (0, 0, 0));
    devices.local("phone", TODO, json!({"cmd": "delete", "id": t[1]}));
    synced(&devices.sync("phone", &a, "alice", TODO), 1, (0, 0, 0));
    synced(&devices.sync("tablet", &a, "alice", NOTES), 0, (2, 1, 0));
    synced(&devices.sync("tablet", &a, "alice", TODO), 0, (2, 0, 0));
    mirrored(&mut home).await;

    // The new server holds alice's bucket as the old one does (timestamps and tombstones
    // included), and nothing of bob's.
    let family = in_bucket("family");
    let (old, new) = (a.state("alice"), b.state("alice"));
    assert_same(&only(&new, &family), &only(&old, &family));
    // The mirror first wrote into the to-do list on the new server after its records were
    // written on the old one: Kinto gave the list that moment as its ETag, newer than every
    // record in it (what kinto.js takes for a flushed server unless `_since` lists something).
    let todo_etag = |rows: &[Value]| -> i64 {
        let list = rows
            .iter()
            .find(|row| row["path"] == "/buckets/family/collections/todo/records")
            .unwrap();
        list["etag"].as_str().unwrap().parse().unwrap()
    };
    assert!(todo_etag(&new) > todo_etag(&old), "{new:?}");
    let elsewhere: Vec<Value> = b
        .state("admin")
        .into_iter()
        .filter(|row| !family(row["path"].as_str().unwrap()))
        .collect();
    assert!(elsewhere.is_empty(), "{elsewhere:?}");
    let old_notes = server_records(&a, NOTES).await;
    let old_todo = server_records(&a, TODO).await;
    assert_eq!(server_records(&b, NOTES).await, old_notes);
    assert_eq!(server_records(&b, TODO).await, old_todo);

    // Before the switch, offline: the phone creates, updates and deletes notes; the tablet
    // adds to the to-do list.
    let offline = create(&mut devices, "phone", NOTES, "written offline");
    devices.local(
        "phone",
        NOTES,
        json!({"cmd": "update", "data": {"id": n[1], "text": "two, edited offline"}}),
    );
    devices.local("phone", NOTES, json!({"cmd": "delete", "id": n[2]}));
    let butter = create(&mut devices, "tablet", TODO, "butter");

    // The switch: the old copy becomes read-only, the last changes reach the new server.
    let out = common::tandem(
        &home.config_path(),
        &[
            "migrate",
            "finish",
            "1",
            "--user",
            "admin",
            "--password-file",
            pw.to_str().unwrap(),
        ],
        0,
    );
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("migration 1 finished"), "{out}");
    assert_eq!(server_records(&b, NOTES).await, old_notes);
    assert_eq!(server_records(&b, TODO).await, old_todo);
    // The desktop syncs with the old server once more after the switch: it gets the versions
    // the switch wrote there (the same data, read-only, at new timestamps), which the new server
    // does not hold: it kept the versions before them.
    synced(&devices.sync("desktop", &a, "alice", NOTES), 0, (2, 1, 0));
    let desktop = devices.records("desktop", NOTES);
    assert_eq!(contents(&desktop), contents(&old_notes));
    for r in &desktop {
        let id = r["id"].as_str().unwrap();
        assert!(
            r["last_modified"].as_i64() > record(&old_notes, id)["last_modified"].as_i64(),
            "{desktop:?} {old_notes:?}"
        );
    }

    // Every device is pointed at the new server. The tablet, up to date, gets nothing and
    // sends nothing; the phone sends its three offline changes and nothing else;
    // the tablet then sends its to-do and gets the phone's notes.
    synced(&devices.sync("tablet", &b, "alice", NOTES), 0, (0, 0, 0));
    synced(&devices.sync("phone", &b, "alice", NOTES), 3, (0, 0, 0));
    synced(&devices.sync("phone", &b, "alice", TODO), 0, (0, 0, 0));
    synced(&devices.sync("tablet", &b, "alice", TODO), 1, (0, 0, 0));
    synced(&devices.sync("tablet", &b, "alice", NOTES), 0, (1, 1, 1));
    synced(&devices.sync("phone", &b, "alice", TODO), 0, (1, 0, 0));
    // The laptop last synced before the move started: it gets everything since (the edit of
    // "one", "four", "five", the offline create, update and delete), and its first to-do sync.
    synced(&devices.sync("laptop", &b, "alice", NOTES), 0, (3, 2, 1));
    synced(&devices.sync("laptop", &b, "alice", TODO), 0, (3, 0, 0));

    // The offline changes are on the new server; the records nobody touched since keep the
    // old server's timestamps (nothing was written again).
    let notes = server_records(&b, NOTES).await;
    let ids = |records: &[Value]| -> Vec<String> {
        records
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut expected = vec![
        n[0].clone(),
        n[1].clone(),
        four.clone(),
        five,
        offline.clone(),
    ];
    expected.sort();
    assert_eq!(ids(&notes), expected);
    assert_eq!(record(&notes, &n[1])["text"], "two, edited offline");
    assert_eq!(record(&notes, &offline)["text"], "written offline");
    for id in [&n[0], &four] {
        assert_eq!(record(&notes, id), record(&old_notes, id));
    }
    let newest_old = old_notes
        .iter()
        .map(|r| r["last_modified"].as_i64().unwrap())
        .max()
        .unwrap();
    for id in [&n[1], &offline] {
        assert!(
            record(&notes, id)["last_modified"].as_i64().unwrap() > newest_old,
            "{id}: {notes:?}"
        );
    }
    let todo = server_records(&b, TODO).await;
    let mut expected = vec![t[0].clone(), t[2].clone(), butter];
    expected.sort();
    assert_eq!(ids(&todo), expected);
    for id in [&t[0], &t[2]] {
        assert_eq!(record(&todo, id), record(&old_todo, id));
    }

    // Every device holds what the new server holds, timestamps included, and syncs on quietly.
    for device in ["phone", "tablet", "laptop"] {
        for (bc, server) in [(NOTES, &notes), (TODO, &todo)] {
            assert_eq!(&devices.records(device, bc), server, "{device} {bc:?}");
            synced(&devices.sync(device, &b, "alice", bc), 0, (0, 0, 0));
        }
    }

    // The desktop, pointed at the new server, gets the phone's offline changes. But the notes
    // it got from the old server after the switch carry the switch's timestamps: its edit of
    // one of them conflicts there, and the devices' SERVER_WINS keeps the server's version.
    synced(&devices.sync("desktop", &b, "alice", NOTES), 0, (1, 1, 1));
    devices.local(
        "desktop",
        NOTES,
        json!({"cmd": "update", "data": {"id": four, "text": "four, on the desktop"}}),
    );
    let answer = devices.sync("desktop", &b, "alice", NOTES);
    assert_eq!(
        (&answer["ok"], &answer["published"], &answer["resolved"]),
        (&json!(true), &json!(0), &json!(1)),
        "{answer}"
    );
    assert_eq!(server_records(&b, NOTES).await, notes);
    home.stop().await;
}
