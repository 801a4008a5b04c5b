//! The switch at the end of a migration: `tandem migrate finish` makes the old server's copy
//! read-only while the member keeps writing, lets the mirror bring the last changes, and
//! records a moved statement that holders show and restores obey; `tandem migrate abort`
//! gives the old copy back. Both directions (community → personal, personal → community),
//! with the finishing process killed at random points in the second.
//!
//! What the target must hold at the end is the old copy as it was at the switch: every object
//! read before it started, plus every write the old server accepted while it ran, with their
//! data, timestamps and permissions; the switch's own permission changes must not reach it.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::chaos;
use common::kinto::{Kinto, PASSWORD};
use common::node::{NEVER, TestNode, backup_pair, origin_status};
use common::restored::{put, switchable_source, target};
use serde_json::{Value, json};

use crate::select::{alice_and_bob, in_bucket, more};

/// The objects of alice's bucket on `kinto` as alice reads them, by path: data (with its
/// timestamp) and permissions. Lists' ETags and tombstones are left aside.
fn alices(kinto: &Kinto) -> BTreeMap<String, Value> {
    kinto
        .state("alice")
        .into_iter()
        .filter(|row| row.get("data").is_some())
        .filter(|row| in_bucket("alice")(row["path"].as_str().unwrap()))
        .map(|row| {
            let path = row["path"].as_str().unwrap().to_owned();
            (
                path,
                json!({"data": row["data"], "permissions": row["permissions"]}),
            )
        })
        .collect()
}

/// The row `alices` shows for an object alice wrote and Kinto answered with `answer`.
fn row_of(answer: &Value) -> Value {
    let mut permissions = answer["permissions"].clone();
    if let Some(aces) = permissions.as_object_mut() {
        for principals in aces.values_mut() {
            let mut sorted: Vec<String> = serde_json::from_value(principals.clone()).unwrap();
            sorted.sort();
            *principals = json!(sorted);
        }
    }
    json!({"data": answer["data"], "permissions": permissions})
}

/// `tandem migrate status --json`.
fn migrations(config: &Path) -> Vec<Value> {
    let out = common::tandem(config, &["migrate", "status", "--json"], 0);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Starts migrating alice's bucket from the node with `config` into `to`; the password of
/// `admin` is in `pw`.
fn start(config: &Path, to: &Kinto, pw: &Path) {
    let out = common::tandem(
        config,
        &[
            "migrate",
            "start",
            "--bucket",
            "alice",
            "--to",
            &to.url,
            "--user",
            "admin",
            "--password-file",
            pw.to_str().unwrap(),
        ],
        0,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("migration 1 started"), "{text}");
}

/// Starts migrating alice's bucket from `home`, which follows `source`, into a new target
/// as `admin`; then the source changes and `home` takes the changes in. Returns the target
/// and the file holding `admin`'s password.
async fn moving_alice(home: &mut TestNode, source: &Kinto) -> (Kinto, std::path::PathBuf) {
    let target = target().await;
    let pw = home.dir.path().join("admin-pw");
    common::write_secret(&pw, PASSWORD);
    start(&home.config_path(), &target, &pw);
    more(source).await;
    home.sync().await;
    (target, pw)
}

/// The arguments of `migrate finish 1` (or `abort`) as `admin`.
fn switch_args<'a>(what: &'a str, pw: &'a Path) -> Vec<&'a str> {
    vec![
        "migrate",
        what,
        "1",
        "--user",
        "admin",
        "--password-file",
        pw.to_str().unwrap(),
    ]
}

/// `migrate abort 1` on the node with the configuration `config` (its one moved statement
/// retracted), then alice writes her bucket on `old` again.
async fn abort_and_write_again(config: &Path, pw: &Path, old: &Kinto) {
    let out = common::tandem(config, &switch_args("abort", pw), 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("migration 1 aborted") && text.contains("1 moved statement(s) retracted"),
        "{text}"
    );
    put(
        old,
        "alice",
        "/buckets/alice/collections/c1/records/after-abort",
        json!({"data": {}}),
    )
    .await;
}

/// Alice writes new records into her collection `c1` on `kinto` every few milliseconds until
/// `stop` is set; returns the rows of the writes the server accepted, and how many it refused.
async fn alice_writes(
    kinto: &Kinto,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tag: &str,
) -> (BTreeMap<String, Value>, usize) {
    let (mut accepted, mut refused) = (BTreeMap::new(), 0);
    let mut i = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let path = format!("/buckets/alice/collections/c1/records/{tag}{i:04}");
        let (status, answer) = kinto
            .request(
                "alice",
                "PUT",
                &path,
                Some(json!({"data": {"i": i, "during": tag}})),
            )
            .await;
        match status {
            200 | 201 => {
                accepted.insert(path, row_of(&answer));
            }
            403 => refused += 1,
            other => panic!("PUT {path}: {other} {answer}"),
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    (accepted, refused)
}

/// Checks that the old copy refuses alice's writes (a new record, an update, a collection)
/// and still lets her read.
async fn refuses_alice(old: &Kinto) {
    for (method, path, body) in [
        (
            "PUT",
            "/buckets/alice/collections/c1/records/after-switch",
            json!({"data": {}}),
        ),
        (
            "PATCH",
            "/buckets/alice/collections/c1/records/r01",
            json!({"data": {"n": -1}}),
        ),
        ("PUT", "/buckets/alice/collections/new", json!({"data": {}})),
        ("PATCH", "/buckets/alice", json!({"data": {"title": "x"}})),
    ] {
        let (status, answer) = old.request("alice", method, path, Some(body)).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
    }
    let (status, _) = old
        .request(
            "alice",
            "GET",
            "/buckets/alice/collections/c1/records/r01",
            None,
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_moves_a_bucket_while_its_member_writes_and_abort_gives_it_back() {
    let a = switchable_source().await;
    alice_and_bob(&a).await;
    let (mut home, mut community) = backup_pair(Some((&a, "1h")));
    home.start().await;
    community.start().await;
    home.sync().await;

    let (b, pw) = moving_alice(&mut home, &a).await;

    // Finish while alice keeps writing on the old server: what it accepted must all arrive.
    let before = alices(&a);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = alice_writes(&a, stop.clone(), "w");
    let finish = {
        let (config, pw) = (home.config_path(), pw.clone());
        tokio::task::spawn_blocking(move || {
            let out = common::tandem(&config, &switch_args("finish", &pw), 0);
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let finished = async {
        let out = finish.await.unwrap();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        out
    };
    let ((accepted, refused), out) = tokio::join!(writer, finished);
    assert!(
        out.contains("migration 1 finished")
            && out.contains("bucket alice now lives at")
            && out.contains(&b.url),
        "{out}"
    );
    assert!(
        !accepted.is_empty(),
        "no write landed before the switch: the race was not exercised"
    );
    println!(
        "switch: {} writes accepted by the old server during finish, {refused} refused",
        accepted.len()
    );

    // The target holds the old copy as it was at the switch, nothing bumped by the locks.
    let mut expected = before.clone();
    expected.extend(accepted.clone());
    let got = alices(&b);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (path, row) in &expected {
        assert_eq!(&got[path], row, "{path} on the target");
    }
    // Nobody else's data reached it.
    let outside: Vec<String> = b
        .state("admin")
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .filter(|p| !in_bucket("alice")(p))
        .collect();
    assert!(outside.is_empty(), "{outside:?}");

    // The old copy: same data, read-only for alice.
    refuses_alice(&a).await;
    let old: BTreeMap<String, Value> = alices(&a);
    for (path, row) in &expected {
        let mut ours = old[path]["data"].clone();
        let mut theirs = row["data"].clone();
        ours.as_object_mut().unwrap().remove("last_modified");
        theirs.as_object_mut().unwrap().remove("last_modified");
        assert_eq!(ours, theirs, "{path} on the old server");
    }
    // Alice writes on the new server; bob goes on on the old one.
    put(
        &b,
        "alice",
        "/buckets/alice/collections/c1/records/on-new",
        json!({"data": {"new": true}}),
    )
    .await;
    put(
        &a,
        "bob",
        "/buckets/bob/collections/notes/records/after",
        json!({"data": {"text": "after"}}),
    )
    .await;

    // Status and the holder show the move.
    let m = &migrations(&home.config_path())[0];
    assert_eq!(m["state"], "finished", "{m}");
    let moved_seq = m["moved_seq"].as_u64().unwrap();
    assert!(moved_seq > 0, "{m}");
    home.sync().await;
    let home_id = home.key().id().to_string();
    for node in [&home, &community] {
        let status = node.status();
        let moved = &origin_status(&status, &home_id)["moved"];
        assert_eq!(moved.as_array().map(Vec::len), Some(1), "{status}");
        assert_eq!(moved[0]["path"], "/buckets/alice", "{moved}");
        assert_eq!(moved[0]["to"], b.url, "{moved}");
        assert_eq!(moved[0]["migration"], 1, "{moved}");
    }
    // Running finish again answers what was done.
    let again = common::tandem(&home.config_path(), &switch_args("finish", &pw), 0);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("was already finished"),
        "{again:?}"
    );

    // A restore of the origin from the community's copy names the move, leaves alice's
    // bucket out, and refuses it by name.
    let c = target().await;
    let restore = |extra: &[&str], code: i32| {
        let mut args = vec![
            "restore",
            "--origin",
            &home_id,
            "--to",
            &c.url,
            "--user",
            "admin",
            "--password-file",
            pw.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = common::tandem(&community.config_path(), &args, code);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let out = restore(&["--bucket", "alice"], 1);
    assert!(
        out.contains("bucket alice moved to")
            && out.contains(&b.url)
            && out.contains("--include-moved"),
        "{out}"
    );
    assert!(c.state("admin").is_empty(), "a refused restore wrote");
    let out = restore(&[], 0);
    assert!(
        out.contains("bucket alice moved to") && out.contains("not restored"),
        "{out}"
    );
    let paths: Vec<String> = c
        .state("admin")
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        paths.iter().any(|p| p.starts_with("/buckets/bob")),
        "{paths:?}"
    );
    assert!(!paths.iter().any(|p| in_bucket("alice")(p)), "{paths:?}");

    // Abort: alice may write the old copy again, the statement is retracted.
    abort_and_write_again(&home.config_path(), &pw, &a).await;
    a.ok(
        "alice",
        "PATCH",
        "/buckets/alice",
        Some(json!({"data": {"title": "mine again"}})),
    )
    .await;
    // Her permissions are back; with Kinto's explicit_permissions on, the account that made
    // the change is in `write` too (Kinto adds every writer).
    let back = alices(&a);
    let mut expected = before["/buckets/alice"]["permissions"].clone();
    let mut write: Vec<String> = serde_json::from_value(expected["write"].clone()).unwrap();
    write.push("account:admin".to_owned());
    write.sort();
    expected["write"] = json!(write);
    assert_eq!(back["/buckets/alice"]["permissions"], expected);
    assert_eq!(migrations(&home.config_path())[0]["state"], "aborted");
    home.sync().await;
    let status = community.status();
    assert_eq!(
        origin_status(&status, &home_id)["moved"],
        json!([]),
        "{status}"
    );
    home.stop().await;
    community.stop().await;
}

/// Personal → community: alice's own node follows her server and moves her bucket to the
/// community's. The finishing process is killed at random points; running finish again
/// completes it, with nothing lost and nothing bumped on the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_killed_at_random_points_completes_when_run_again() {
    let personal = switchable_source().await;
    alice_and_bob(&personal).await;
    let mut home = TestNode::new("alice-home");
    home.configure("", &home.source(&personal, "1h"));
    home.init();
    home.start().await;
    home.sync().await;
    let (community, pw) = moving_alice(&mut home, &personal).await;
    home.stop().await;

    let before = alices(&personal);
    let mut rng = chaos::Rng::from_env("finish_killed");
    let mut kills = 0;
    for round in 0..16 {
        // The first kill comes early, so that one lands however fast the finish runs.
        let latest = if round == 0 { 40 } else { 300 };
        let delay = rng.between(Duration::from_millis(10), Duration::from_millis(latest));
        let child = chaos::spawn(&home.config_path(), &switch_args("finish", &pw));
        match chaos::kill_after(child, delay) {
            None => kills += 1,
            Some(status) => {
                assert!(status.success(), "round {round}: finish failed: {status}");
                break;
            }
        }
        chaos::verify(&home.config_path(), &format!("round {round}"));
    }
    println!("finish_killed: {kills} kills");
    assert!(
        kills >= 1,
        "no kill landed: the finish ended before every delay"
    );
    let out = common::tandem(&home.config_path(), &switch_args("finish", &pw), 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("migration 1"), "{text}");
    assert_eq!(migrations(&home.config_path())[0]["state"], "finished");

    assert_eq!(alices(&community), before);
    refuses_alice(&personal).await;
    // Bob's bucket stays where it was, writable.
    put(
        &personal,
        "bob",
        "/buckets/bob/collections/notes/records/still",
        json!({"data": {}}),
    )
    .await;
    let paths: Vec<String> = community
        .state("admin")
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !paths.iter().any(|p| p.starts_with("/buckets/bob")),
        "{paths:?}"
    );
}

/// A sealed node (with a reader, so its feed holds a readers statement) finishes a move and
/// aborts it as a plain one does; its moved statement is sealed like the rest, so the
/// community, which holds the feed without reading it, shows no move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_node_finishes_a_move() {
    let a = switchable_source().await;
    alice_and_bob(&a).await;
    let (mut home, mut community, laptop) = (
        TestNode::new("home"),
        TestNode::new("community"),
        TestNode::new("laptop"),
    );
    laptop.configure("", "");
    laptop.init();
    home.configure(
        "seal = true\n",
        &format!(
            "{}{}{}",
            home.source(&a, "1h"),
            TestNode::peer_entry(&community, &format!("push = [\"self\"]\n{NEVER}")),
            TestNode::peer_entry(&laptop, &format!("read = true\n{NEVER}"))
        ),
    );
    community.configure("", &TestNode::peer_entry(&home, NEVER));
    home.init();
    community.init();
    home.start().await;
    community.start().await;
    home.sync().await;

    let (b, pw) = moving_alice(&mut home, &a).await;
    let before = alices(&a);
    let out = common::tandem(&home.config_path(), &switch_args("finish", &pw), 0);
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("migration 1 finished") && out.contains("bucket alice now lives at"),
        "{out}"
    );
    assert_eq!(alices(&b), before);
    refuses_alice(&a).await;

    home.sync().await;
    let home_id = home.key().id().to_string();
    let status = home.status();
    let moved = &origin_status(&status, &home_id)["moved"];
    assert_eq!(moved.as_array().map(Vec::len), Some(1), "{moved}");
    assert_eq!(moved[0]["path"], "/buckets/alice", "{moved}");
    assert_eq!(community.head(home.key().id()), home.head(home.key().id()));
    let status = community.status();
    let held = &origin_status(&status, &home_id)["moved"];
    assert!(held.as_array().is_none_or(Vec::is_empty), "{status}");

    // Abort: alice writes the old copy again, and the sealed statement is retracted.
    abort_and_write_again(&home.config_path(), &pw, &a).await;
    home.sync().await;
    let status = home.status();
    assert_eq!(
        origin_status(&status, &home_id)["moved"],
        json!([]),
        "{status}"
    );
    assert_eq!(community.head(home.key().id()), home.head(home.key().id()));
    home.stop().await;
    community.stop().await;
}
