//! Restore drills against real Kinto servers: a source followed by a home node, and a scratch
//! server the drills restore into. A drill after a sync restores the latest snapshot, reads it
//! back and is shown by `status` and `/metrics`, with the recovery point of the own feed; a
//! second drill empties what the first wrote; a scratch holding data no drill wrote is
//! refused and left as it was; a scratch that stops mid-restore and a store whose entries no
//! longer give the signed state fail the drill, recorded with why.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::kinto::{Kinto, Options, PASSWORD};
use crate::common::node::{TestNode, origin_status, wait_for};
use crate::common::proxy::Proxy;
use serde_json::{Value, json};

const NEVER: &str = "schedule = \"0 0 0 1 1 *\"";

/// The source: the history plugin (every permission is recorded), readable by `admin` too.
async fn source() -> Kinto {
    Kinto::start_with_settings(
        Options {
            history: true,
            ..Options::default()
        },
        "kinto.bucket_read_principals = account:tandem account:poller account:admin",
    )
    .await
}

/// A scratch server: permissions stored as sent, `admin` reads and writes everything (a drill
/// must see every bucket there to know the server holds nothing else).
async fn scratch() -> Kinto {
    let mut settings = crate::common::kinto::restore_target_settings("admin");
    for kind in ["bucket", "group", "collection", "record"] {
        settings.push_str(&format!(
            "kinto.{kind}_read_principals = account:tandem account:poller account:admin\n"
        ));
    }
    Kinto::start_with_settings(Options::default(), &settings).await
}

async fn put(kinto: &Kinto, user: &str, path: &str, body: Value) {
    kinto.ok(user, "PUT", path, Some(body)).await;
}

/// Two accounts' buckets, records with and without permissions, and a tombstone.
async fn content(kinto: &Kinto) {
    put(kinto, "alice", "/buckets/b", json!({"data": {"title": "Bücher"}, "permissions": {"read": ["account:tandem", "account:bob"]}})).await;
    put(
        kinto,
        "alice",
        "/buckets/b/collections/c",
        json!({"data": {"ratio": 1.5}}),
    )
    .await;
    for i in 0..12 {
        // Kinto shows permissions to the accounts an object's ACL lets write it: those that
        // name the drill's account are read back and compared.
        let permissions = if i % 4 == 0 {
            json!({"read": ["system.Everyone"], "write": ["account:admin"]})
        } else {
            json!({})
        };
        put(
            kinto,
            "alice",
            &format!("/buckets/b/collections/c/records/r{i:02}"),
            json!({"data": {"n": i, "text": "naïve ✓"}, "permissions": permissions}),
        )
        .await;
    }
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
        json!({"data": {"text": "first"}}),
    )
    .await;
}

/// The `[source]` and `[drill]` sections (and a `[snapshots]` one that never fires by
/// itself) of a node following `source` and drilling into `scratch_url`; the password file
/// `pw` is written into `node`'s directory.
fn sections(node: &TestNode, source: &Kinto, scratch_url: &str) -> String {
    crate::common::write_secret(node.dir.path().join("pw"), PASSWORD);
    format!(
        "[source]\nkind = \"kinto\"\nurl = \"{}\"\nuser = \"tandem\"\npassword_file = \"pw\"\npoll = \"1h\"\n\
         [snapshots]\n{NEVER}\nkeep_last = 5\n\
         [drill]\n{NEVER}\nto = \"{scratch_url}\"\nuser = \"admin\"\npassword_file = \"pw\"\n",
        source.url
    )
}

/// `tandem drill` on `node`'s configuration, which must exit with `code`; stdout and stderr.
fn drill(node: &TestNode, code: i32) -> String {
    let out = crate::common::tandem(&node.config_path(), &["drill"], code);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The objects of the latest snapshot of `node`'s own feed, and its seq.
fn latest_snapshot(node: &TestNode) -> (u64, u64) {
    let out = crate::common::tandem(&node.config_path(), &["snapshot", "list", "--json"], 0);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = list.as_array().unwrap().last().expect("a snapshot").clone();
    (
        last["objects"].as_u64().unwrap(),
        last["seq"].as_u64().unwrap(),
    )
}

/// `tandem sync` then `tandem snapshot create`, without a daemon.
fn sync_and_snapshot(node: &TestNode) {
    crate::common::tandem(&node.config_path(), &["sync"], 0);
    crate::common::tandem(&node.config_path(), &["snapshot", "create"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_restore_the_latest_snapshot_and_status_shows_them() {
    let a = source().await;
    content(&a).await;
    let s = scratch().await;
    let mut home = TestNode::new("home");
    let mut community = TestNode::new("community");
    home.configure(
        "",
        &format!(
            "{}{}",
            sections(&home, &a, &s.url),
            TestNode::peer_entry(&community, &format!("push = [\"self\"]\n{NEVER}"))
        ),
    );
    community.configure("", &TestNode::peer_entry(&home, NEVER));
    home.init();
    community.init();
    community.start().await;
    home.start().await;
    let answer = home.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    crate::common::tandem(&home.config_path(), &["snapshot", "create"], 0);
    // The push hands the snapshot over; the receipt makes the head durable.
    let answer = home.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    let home_id = home.id.to_string();
    let (objects, seq) = latest_snapshot(&home);
    assert_eq!(seq, home.head(home.id));

    // Asked of the running daemon.
    let out = drill(&home, 0);
    assert!(
        out.contains(&format!(
            "origin {home_id}: snapshot seq {seq}, {objects} objects"
        )) && out.contains(", ok"),
        "{out}"
    );
    assert_eq!(
        s.dump("tandem"),
        a.dump("tandem"),
        "the scratch holds the source's state"
    );
    let status = home.status();
    let own = origin_status(&status, &home_id);
    let d = &own["drill"];
    assert_eq!(d["ok"], true, "{own:#}");
    assert_eq!(d["seq"], seq, "{own:#}");
    assert_eq!(d["objects"], objects, "{own:#}");
    assert_eq!(d["error"], Value::Null, "{own:#}");
    assert!(d["duration_ms"].as_u64().unwrap() > 0, "{own:#}");
    let at = chrono::DateTime::parse_from_rfc3339(d["at"].as_str().unwrap()).unwrap();
    assert!(
        (chrono::Utc::now() - at.to_utc()).num_seconds() < 120,
        "{own:#}"
    );
    let rpo = own["rpo_seconds"].as_u64().expect("a recovery point");
    assert!(rpo < 300, "{own:#}");
    let metrics = home.metrics().await;
    for line in [
        format!("tandem_drill_last_ok{{origin=\"{home_id}\"}} 1"),
        format!("tandem_rpo_seconds{{origin=\"{home_id}\"}} "),
        format!("tandem_drill_duration_seconds{{origin=\"{home_id}\"}} "),
        format!("tandem_drill_last_timestamp_seconds{{origin=\"{home_id}\"}} "),
    ] {
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    let text = crate::common::tandem(&home.config_path(), &["status"], 0);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("last drill") && text.contains("recovery point"),
        "{text}"
    );

    // Bob's bucket goes, alice writes more: the second drill deletes what the first wrote
    // (bob's bucket included) before restoring the new snapshot.
    a.ok("bob", "DELETE", "/buckets/bob", None).await;
    put(
        &a,
        "alice",
        "/buckets/b/collections/c/records/late",
        json!({"data": {"late": true}}),
    )
    .await;
    home.sync().await;
    crate::common::tandem(&home.config_path(), &["snapshot", "create"], 0);
    // Handed to the community, which drills its copy below.
    let answer = home.sync().await;
    assert_eq!(answer["peers"][0]["push"]["snapshots"], 1, "{answer}");
    let (objects, seq) = latest_snapshot(&home);
    let out = drill(&home, 0);
    assert!(
        out.contains(&format!("snapshot seq {seq}, {objects} objects")) && out.contains(", ok"),
        "{out}"
    );
    let held = s.dump("tandem");
    assert_eq!(held, a.dump("tandem"));
    assert!(
        !held.iter().any(|o| o["path"] == "/buckets/bob"),
        "{held:#?}"
    );
    let status = home.status();
    assert_eq!(origin_status(&status, &home_id)["drill"]["seq"], seq);

    // The holder's copy is drilled too, on the holder.
    community.stop().await;
    let t = scratch().await;
    crate::common::write_secret(community.dir.path().join("pw"), PASSWORD);
    community.configure(
        "",
        &format!(
            "[drill]\n{NEVER}\nto = \"{}\"\nuser = \"admin\"\npassword_file = \"pw\"\n{}",
            t.url,
            TestNode::peer_entry(&home, NEVER)
        ),
    );
    wait_for(Duration::from_secs(30), "the community's copy", || {
        community.head(home.id) == home.head(home.id)
    })
    .await;
    let out = drill(&community, 0);
    assert!(
        out.contains(&format!("origin {home_id}: snapshot seq {seq}")) && out.contains(", ok"),
        "{out}"
    );
    assert_eq!(t.dump("tandem"), a.dump("tandem"));
    home.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scratch_holding_other_data_is_refused_and_left_untouched() {
    let a = source().await;
    content(&a).await;
    let s = scratch().await;
    put(
        &s,
        "admin",
        "/buckets/precious",
        json!({"data": {"keep": "me"}}),
    )
    .await;
    put(
        &s,
        "admin",
        "/buckets/precious/collections/c",
        json!({"data": {}}),
    )
    .await;
    put(
        &s,
        "admin",
        "/buckets/precious/collections/c/records/r",
        json!({"data": {"irreplaceable": true}}),
    )
    .await;
    let home = TestNode::new("home");
    home.configure("", &sections(&home, &a, &s.url));
    home.init();
    sync_and_snapshot(&home);
    let home_id = home.id.to_string();

    let before = s.state("admin");
    let out = drill(&home, 1);
    assert!(
        out.contains("precious")
            && out.contains("no drill wrote")
            && out.contains("nothing was changed"),
        "{out}"
    );
    assert_eq!(s.state("admin"), before, "the scratch is untouched");
    let status = home.status();
    let d = &origin_status(&status, &home_id)["drill"];
    assert_eq!(d["ok"], false, "{d:#}");
    assert!(d["error"].as_str().unwrap().contains("precious"), "{d:#}");

    // Once the operator cleared it, the drill runs.
    s.ok("admin", "DELETE", "/buckets/precious", None).await;
    let out = drill(&home, 0);
    assert!(out.contains(", ok"), "{out}");
    assert_eq!(s.dump("tandem"), a.dump("tandem"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scratch_that_stops_mid_restore_fails_the_drill() {
    let a = source().await;
    content(&a).await;
    let s = scratch().await;
    let upstream = s.url.trim_start_matches("http://").trim_end_matches("/v1/");
    let proxy = Proxy::start(upstream.to_owned(), "/v1/").await;
    let home = TestNode::new("home");
    home.configure("", &sections(&home, &a, &proxy.url));
    home.init();
    sync_and_snapshot(&home);
    // The scratch server stops as the restore sends its first batch.
    let server = Arc::new(Mutex::new(Some(s)));
    let stopping = server.clone();
    proxy.when(
        "POST /v1/batch",
        Box::new(move || {
            Box::pin(async move {
                if let Some(mut s) = stopping.lock().unwrap().take() {
                    s.kill();
                }
            })
        }),
    );
    let out = drill(&home, 1);
    assert!(
        out.contains("FAILED: the restore into the scratch server failed"),
        "{out}"
    );
    assert!(server.lock().unwrap().is_none(), "the scratch was stopped");
    let status = home.status();
    let d = &origin_status(&status, &home.id.to_string())["drill"];
    assert_eq!(d["ok"], false, "{d:#}");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .starts_with("the restore into the scratch server failed"),
        "{d:#}"
    );
    assert_eq!(d["seq"], latest_snapshot(&home).1, "{d:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_no_longer_gives_the_signed_state_fails_the_drill() {
    let a = source().await;
    content(&a).await;
    let s = scratch().await;
    let home = TestNode::new("home");
    home.configure("", &sections(&home, &a, &s.url));
    home.init();
    sync_and_snapshot(&home);
    let db = home.data().join("tandem.db");
    // One byte of the last entry, as a disk or an edit would change it.
    let (key, good): (i64, Vec<u8>) = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT key, bytes FROM entries ORDER BY key DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let mut bad = good.clone();
    let at = bad.len() - 5;
    bad[at] ^= 0x20;
    let set_entry = |bytes: &[u8]| {
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute("UPDATE entries SET bytes = ?2 WHERE key = ?1", (key, bytes))
            .unwrap();
    };
    set_entry(&bad);
    let (_, seq) = latest_snapshot(&home);
    let out = drill(&home, 1);
    assert!(
        out.contains(&format!("snapshot seq {seq}, 0 objects"))
            && out.contains("FAILED: the stored copy of the origin does not verify")
            && out.contains("entry bytes do not match their recorded hash"),
        "{out}"
    );
    let status = home.status();
    let d = &origin_status(&status, &home.id.to_string())["drill"];
    assert_eq!(d["ok"], false, "{d:#}");
    assert!(
        d["error"].as_str().unwrap().contains("does not verify"),
        "{d:#}"
    );
    assert!(s.state("admin").is_empty(), "nothing was restored");

    // The entries are whole again, but the snapshot's statement was changed (the object count
    // it states): its signature no longer holds.
    set_entry(&good);
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let (seq, mut statement): (i64, Vec<u8>) = conn
            .query_row(
                "SELECT seq, statement FROM snapshots ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        // Stored form: origin (32), seq (8), head hash (32), ts (8), objects (8)…
        statement[32 + 8 + 32 + 8 + 7] ^= 0x01;
        conn.execute(
            "UPDATE snapshots SET statement = ?2 WHERE seq = ?1",
            (seq, statement),
        )
        .unwrap();
    }
    let out = drill(&home, 1);
    assert!(
        out.contains("FAILED: the stored copy of the origin does not verify")
            && out.contains("bad snapshot signature"),
        "{out}"
    );
    assert!(s.state("admin").is_empty(), "nothing was restored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_drills_on_its_schedule() {
    let a = source().await;
    content(&a).await;
    let s = scratch().await;
    let mut home = TestNode::new("home");
    home.configure(
        "",
        &sections(&home, &a, &s.url).replace(
            &format!("[drill]\n{NEVER}"),
            "[drill]\nschedule = \"*/2 * * * * *\"",
        ),
    );
    home.init();
    sync_and_snapshot(&home);
    let (objects, seq) = latest_snapshot(&home);
    home.start().await;
    wait_for(Duration::from_secs(60), "a scheduled drill", || {
        home.store().drill(home.id).unwrap().is_some()
    })
    .await;
    let d = home.store().drill(home.id).unwrap().unwrap();
    assert!(d.ok, "{d:?}");
    assert_eq!((d.seq, d.objects), (seq, objects), "{d:?}");
    // It runs again at the next times, each emptying what the one before wrote.
    wait_for(Duration::from_secs(60), "another scheduled drill", || {
        home.store().drill(home.id).unwrap().unwrap().at > d.at
    })
    .await;
    let again = home.store().drill(home.id).unwrap().unwrap();
    assert!(again.ok, "{again:?}");
    let status = home.status();
    let worker = status["daemon"]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["kind"] == "drill")
        .cloned()
        .unwrap_or_else(|| panic!("no drill loop in {status:#}"));
    assert_eq!(worker["ok"], true, "{worker}");
    home.stop().await;
    assert_eq!(s.dump("tandem"), a.dump("tandem"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scratch_that_changes_what_was_restored_fails_the_drill() {
    let a = source().await;
    content(&a).await;
    let s = Arc::new(scratch().await);
    let upstream = s.url.trim_start_matches("http://").trim_end_matches("/v1/");
    let proxy = Proxy::start(upstream.to_owned(), "/v1/").await;
    let home = TestNode::new("home");
    home.configure("", &sections(&home, &a, &proxy.url));
    home.init();
    sync_and_snapshot(&home);
    // Between the restore and the reading back (its first list asks `_since=0`), someone
    // edits a restored record on the scratch server.
    let editor = s.clone();
    proxy.when(
        "_since=0",
        Box::new(move || {
            Box::pin(async move {
                editor
                    .ok(
                        "admin",
                        "PATCH",
                        "/buckets/b/collections/c/records/r03",
                        Some(json!({"data": {"n": 333}})),
                    )
                    .await;
            })
        }),
    );
    let out = drill(&home, 1);
    assert!(
        out.contains(
            "FAILED: the scratch server does not hold what was restored: /buckets/b/collections/c/records/r03 reads back with other data than recorded"
        ),
        "{out}"
    );
    let status = home.status();
    let d = &origin_status(&status, &home.id.to_string())["drill"];
    assert_eq!(d["ok"], false, "{d:#}");
    assert!(d["error"].as_str().unwrap().contains("r03"), "{d:#}");
}

/// A scratch server that someone started to use after a drill (a restore aimed at it by
/// mistake, users pointed at it) holds only buckets drills wrote, but not as they left them:
/// the next drill deletes nothing, and says which bucket changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drilled_bucket_written_since_is_not_deleted() {
    let a = source().await;
    content(&a).await;
    let s = scratch().await;
    let home = TestNode::new("home");
    home.configure("", &sections(&home, &a, &s.url));
    home.init();
    sync_and_snapshot(&home);
    let out = drill(&home, 0);
    assert!(out.contains(", ok"), "{out}");
    // The drill's own buckets are deleted and written again, drill after drill.
    let out = drill(&home, 0);
    assert!(out.contains(", ok"), "{out}");

    put(
        &s,
        "admin",
        "/buckets/b/collections/c/records/new",
        json!({"data": {"written": "after the drill"}}),
    )
    .await;
    let before = s.state("admin");
    let out = drill(&home, 1);
    assert!(
        out.contains("bucket b on the scratch server")
            && out.contains("changed since a drill wrote and checked it"),
        "{out}"
    );
    assert_eq!(s.state("admin"), before, "the scratch is untouched");

    // Once the operator deleted that bucket, drills run again.
    s.ok("admin", "DELETE", "/buckets/b", None).await;
    let out = drill(&home, 0);
    assert!(out.contains(", ok"), "{out}");
}

/// `tandem drill` on a node never initialized (a key, no store) says so and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_of_a_node_not_initialized_creates_nothing() {
    let a = source().await;
    let home = TestNode::new("home");
    home.configure("", &sections(&home, &a, "http://127.0.0.1:9/v1/"));
    let out = drill(&home, 78);
    assert!(out.contains("run `tandem init` first"), "{out}");
    assert!(!home.data().join("tandem.db").exists());
}
