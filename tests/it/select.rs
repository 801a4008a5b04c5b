//! Restoring part of an origin: `restore --bucket` and `--collection`. A source holds alice's
//! and bob's buckets (groups, collections, records with their own permissions, deletes); a node
//! follows it; then single buckets and collections are restored, at the head, at earlier
//! points and as a snapshot states them, into fresh servers and into servers that hold other buckets, with and without the
//! kinto-tandem plugin. What is restored must read exactly as on the source (data, timestamps,
//! permissions, tombstones), nothing else may appear on the target, and nothing the target
//! held may change.

use crate::common;

use std::time::Duration;

use common::follower::Follower;
use common::kinto::{Kinto, Options};
use common::restored::{assert_same, put, source, target, views};
use serde_json::{Value, json};

/// Alice's bucket (a group, a collection of records with and without their own permissions and
/// a delete, another collection, a collection deleted whole) and bob's (a group, a collection
/// with a delete).
pub(crate) async fn alice_and_bob(kinto: &Kinto) {
    put(kinto, "alice", "/buckets/alice", json!({"data": {"title": "Alice ✓"}, "permissions": {"read": ["account:tandem", "account:bob"]}})).await;
    put(
        kinto,
        "alice",
        "/buckets/alice/groups/friends",
        json!({"data": {"members": ["account:bob"]}}),
    )
    .await;
    put(kinto, "alice", "/buckets/alice/collections/c1", json!({"data": {"ratio": 1.50}, "permissions": {"record:create": ["/buckets/alice/groups/friends"]}})).await;
    for i in 0..30 {
        let permissions = if i % 5 == 0 {
            json!({"read": ["system.Everyone"]})
        } else {
            json!({})
        };
        put(
            kinto,
            "alice",
            &format!("/buckets/alice/collections/c1/records/r{i:02}"),
            json!({"data": {"n": i, "name": "naïve"}, "permissions": permissions}),
        )
        .await;
    }
    delete(kinto, "alice", "/buckets/alice/collections/c1/records/r04").await;
    put(
        kinto,
        "alice",
        "/buckets/alice/collections/c2",
        json!({"data": {}}),
    )
    .await;
    for i in 0..3 {
        put(
            kinto,
            "alice",
            &format!("/buckets/alice/collections/c2/records/x{i}"),
            json!({"data": {"x": i}}),
        )
        .await;
    }
    put(
        kinto,
        "alice",
        "/buckets/alice/collections/gone",
        json!({"data": {}}),
    )
    .await;
    put(
        kinto,
        "alice",
        "/buckets/alice/collections/gone/records/g",
        json!({"data": {}}),
    )
    .await;
    delete(kinto, "alice", "/buckets/alice/collections/gone").await;
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
        "/buckets/bob/groups/g",
        json!({"data": {"members": ["account:alice"]}}),
    )
    .await;
    put(
        kinto,
        "bob",
        "/buckets/bob/collections/notes",
        json!({"data": {}}),
    )
    .await;
    for i in 0..3 {
        put(
            kinto,
            "bob",
            &format!("/buckets/bob/collections/notes/records/n{i}"),
            json!({"data": {"text": i}, "permissions": {"write": ["account:alice"]}}),
        )
        .await;
    }
    delete(kinto, "bob", "/buckets/bob/collections/notes/records/n1").await;
}

/// Later changes: alice adds a collection and a record, deletes one, changes permissions; bob
/// adds a note.
pub(crate) async fn more(kinto: &Kinto) {
    put(
        kinto,
        "alice",
        "/buckets/alice/collections/c1/records/late",
        json!({"data": {"late": true}}),
    )
    .await;
    delete(kinto, "alice", "/buckets/alice/collections/c1/records/r10").await;
    put(
        kinto,
        "alice",
        "/buckets/alice/collections/c1/records/r11",
        json!({"data": {"n": 11, "again": 2}, "permissions": {"read": ["account:bob"]}}),
    )
    .await;
    put(
        kinto,
        "alice",
        "/buckets/alice/collections/c3",
        json!({"data": {"new": true}}),
    )
    .await;
    put(
        kinto,
        "bob",
        "/buckets/bob/collections/notes/records/n9",
        json!({"data": {"text": 9}}),
    )
    .await;
}

pub(crate) async fn delete(kinto: &Kinto, user: &str, path: &str) {
    kinto.ok(user, "DELETE", path, None).await;
}

/// Whether `path` is `/buckets/{bucket}` or below it.
pub(crate) fn in_bucket(bucket: &str) -> impl Fn(&str) -> bool + use<> {
    let root = format!("/buckets/{bucket}");
    move |path| path == root || path.starts_with(&format!("{root}/"))
}

/// Whether `path` is what `--collection {bucket}/{collection}` brings: the bucket object, the
/// collection and what is below it.
fn in_collection(bucket: &str, collection: &str) -> impl Fn(&str) -> bool + use<> {
    let root = format!("/buckets/{bucket}");
    let under = in_bucket(&format!("{bucket}/collections/{collection}"));
    move |path| path == root || under(path)
}

/// The rows of `rows` whose path `keep` accepts.
pub(crate) fn only(rows: &[Value], keep: impl Fn(&str) -> bool) -> Vec<Value> {
    rows.iter()
        .filter(|row| keep(row["path"].as_str().unwrap()))
        .cloned()
        .collect()
}

/// The paths of `rows`.
fn paths(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|row| row["path"].as_str().unwrap().to_owned())
        .collect()
}

/// Every records list in `rows` that holds records ends with the restore marker.
fn assert_marked(rows: &[Value]) {
    let lists: Vec<&Value> = rows
        .iter()
        .filter(|row| row.get("tombstones").is_some())
        .filter(|row| {
            let list = row["path"].as_str().unwrap();
            rows.iter()
                .any(|r| r["path"].as_str().unwrap().starts_with(&format!("{list}/")))
        })
        .collect();
    assert!(!lists.is_empty(), "no records list restored");
    for list in lists {
        assert!(
            list["restore_marker"].is_array(),
            "no restore marker: {list}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_or_a_collection_comes_back_alone_at_any_point() {
    let a = source().await;
    alice_and_bob(&a).await;
    let home = Follower::new(&a, "tandem");
    assert!(home.sync() > 0);
    let first_seq = home.head().to_string();
    let first = views(&a);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    more(&a).await;
    assert!(home.sync() > 0);
    let last = views(&a);
    assert_ne!(
        only(&first, in_bucket("alice")),
        only(&last, in_bucket("alice"))
    );

    // What the origin did not hold at the chosen point is named, with the buckets it held,
    // and nothing is written.
    let fresh = target().await;
    let out = home.restore_as(&fresh, "admin", &["--bucket", "carol"], 1);
    assert!(
        out.contains("held no bucket carol") && out.contains("its buckets: alice, bob"),
        "{out}"
    );
    let out = home.restore_as(&fresh, "admin", &["--collection", "alice/gone"], 1);
    assert!(
        out.contains("collection alice/gone (deleted before)"),
        "{out}"
    );
    let out = home.restore_as(
        &fresh,
        "admin",
        &["--collection", "alice/c3", "--seq", &first_seq],
        1,
    );
    assert!(
        out.contains("held no collection alice/c3") && out.contains(&format!("seq {first_seq}")),
        "{out}"
    );
    let out = home.restore_as(&fresh, "admin", &["--collection", "alice"], 2);
    assert!(out.contains("BUCKET/COLLECTION"), "{out}");
    assert!(fresh.state("admin").is_empty(), "a refused restore wrote");

    // A bucket into a fresh server: exactly alice's bucket, nothing of bob's.
    let out = home.restore_as(&fresh, "admin", &["--bucket", "alice"], 0);
    assert!(
        out.contains("restored bucket(s) alice of") && out.contains("accounts are not part"),
        "{out}"
    );
    assert!(!out.contains("accounts were not restored"), "{out}");
    let restored = views(&fresh);
    assert_same(&restored, &only(&last, in_bucket("alice")));
    assert_marked(&restored);
    let everything = fresh.state("admin");
    assert!(
        paths(&everything).iter().all(|p| in_bucket("alice")(p)),
        "{:?}",
        paths(&everything)
    );
    // Again: nothing to write.
    let out = home.restore_as(&fresh, "admin", &["--bucket", "alice"], 0);
    assert!(out.contains("(0 written"), "{out}");
    assert_same(&views(&fresh), &only(&last, in_bucket("alice")));

    // Into a server that holds other buckets: they stay exactly as they were.
    let busy = target().await;
    put(
        &busy,
        "admin",
        "/buckets/other",
        json!({"data": {"mine": true}, "permissions": {"read": ["account:alice"]}}),
    )
    .await;
    put(
        &busy,
        "admin",
        "/buckets/other/collections/c1",
        json!({"data": {}}),
    )
    .await;
    for id in ["k1", "k2"] {
        put(
            &busy,
            "admin",
            &format!("/buckets/other/collections/c1/records/{id}"),
            json!({"data": {"id": id}}),
        )
        .await;
    }
    delete(&busy, "admin", "/buckets/other/collections/c1/records/k2").await;
    let before = busy.state("admin");
    home.restore_as(&busy, "admin", &["--bucket", "alice"], 0);
    assert_same(
        &only(&views(&busy), in_bucket("alice")),
        &only(&last, in_bucket("alice")),
    );
    assert_eq!(
        only(&busy.state("admin"), |p| !in_bucket("alice")(p)),
        before
    );

    // A collection into a server that holds its bucket: the bucket is the target's and stays
    // as it is, the collection comes with its records, nothing else changes.
    let shared = target().await;
    put(
        &shared,
        "admin",
        "/buckets/alice",
        json!({"data": {"title": "Alice, here"}, "permissions": {"write": ["account:alice"]}}),
    )
    .await;
    put(
        &shared,
        "admin",
        "/buckets/alice/collections/mine",
        json!({"data": {}}),
    )
    .await;
    put(
        &shared,
        "admin",
        "/buckets/alice/collections/mine/records/m",
        json!({"data": {"m": 1}}),
    )
    .await;
    let before = shared.state("admin");
    let out = home.restore_as(&shared, "admin", &["--collection", "alice/c1"], 0);
    assert!(
        out.contains("restored collection(s) alice/c1 of")
            && out.contains("1 buckets already existed on the target and were kept")
            && out.contains("restored into them: alice"),
        "{out}"
    );
    let c1 = in_bucket("alice/collections/c1");
    assert_eq!(only(&shared.state("admin"), |p| !c1(p)), before);
    let restored = only(&shared.state("alice"), &c1);
    assert_same(&restored, &only(&a.state("alice"), &c1));
    assert_marked(&restored);
    let out = home.restore_as(&shared, "admin", &["--collection", "alice/c1"], 0);
    assert!(
        out.contains("(0 written") && out.contains("kept as they are there"),
        "{out}"
    );

    // A collection into a fresh server, as it was at a past time: its bucket comes too, and
    // nothing else of it.
    let solo = target().await;
    home.restore_as(
        &solo,
        "admin",
        &["--collection", "alice/c1", "--at", &between],
        0,
    );
    let restored = views(&solo);
    assert_same(&restored, &only(&first, in_collection("alice", "c1")));
    assert_marked(&restored);
    assert!(
        paths(&solo.state("admin"))
            .iter()
            .all(|p| in_collection("alice", "c1")(p)),
        "{:?}",
        paths(&solo.state("admin"))
    );

    // A bucket at an earlier seq.
    let past = target().await;
    home.restore_as(
        &past,
        "admin",
        &["--bucket", "alice", "--seq", &first_seq],
        0,
    );
    assert_same(&views(&past), &only(&first, in_bucket("alice")));

    // Then, beside it, bob's bucket as a snapshot states it: alice's stays as it was.
    let out = home.run(&["snapshot", "create"], 0);
    let snapshot = out.split_whitespace().nth(1).unwrap().to_owned();
    home.restore_as(
        &past,
        "admin",
        &["--bucket", "bob", "--snapshot", &snapshot],
        0,
    );
    let both = views(&past);
    assert_same(
        &only(&both, in_bucket("bob")),
        &only(&last, in_bucket("bob")),
    );
    assert_same(
        &only(&both, in_bucket("alice")),
        &only(&first, in_bucket("alice")),
    );
}

/// The authenticated user id of `user` (password [`common::kinto::PASSWORD`]) on `kinto`, if
/// the account exists there.
async fn whoami(kinto: &Kinto, user: &str) -> Option<String> {
    let (_, root) = kinto.request(user, "GET", "/", None).await;
    root["user"]["id"].as_str().map(str::to_owned)
}

/// A source and targets with the kinto-tandem plugin: accounts and the secrets fingerprint are
/// in the feed. A selection brings no account, and the fingerprint is still checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_plugin_a_selection_brings_no_account_and_checks_the_secrets() {
    let plugin = Options {
        plugin: true,
        ..Options::default()
    };
    let a = Kinto::start(plugin).await;
    a.create_account("carol").await;
    alice_and_bob(&a).await;
    let home = Follower::new(&a, "tandem");
    assert!(home.sync() > 0);
    assert!(
        home.export().iter().any(|o| o["path"] == "/accounts/carol"),
        "accounts are in the feed"
    );
    let last = views(&a);

    // A target with the plugin that holds other buckets.
    let t = Kinto::start(plugin).await;
    put(&t, "bob", "/buckets/elsewhere", json!({"data": {"e": 1}})).await;
    put(
        &t,
        "bob",
        "/buckets/elsewhere/collections/c1",
        json!({"data": {}}),
    )
    .await;
    put(
        &t,
        "bob",
        "/buckets/elsewhere/collections/c1/records/r",
        json!({"data": {}}),
    )
    .await;
    let before = t.state("bob");
    let out = home.restore_as(&t, "tandem", &["--bucket", "alice"], 0);
    assert!(
        out.contains("kinto-tandem plugin") && out.contains("accounts are not part"),
        "{out}"
    );
    assert!(!out.contains("accounts already existed"), "{out}");
    let restored = only(&views(&t), in_bucket("alice"));
    assert_same(&restored, &only(&last, in_bucket("alice")));
    assert_marked(&restored);
    assert_eq!(only(&t.state("bob"), |p| !in_bucket("alice")(p)), before);
    assert_eq!(whoami(&t, "carol").await, None, "an account was restored");
    let again = home.restore_as(&t, "tandem", &["--bucket", "alice"], 0);
    assert!(again.contains("(0 written"), "{again}");

    // A collection into a target with the plugin that holds its bucket: the bucket is kept.
    let u = Kinto::start(plugin).await;
    put(
        &u,
        "alice",
        "/buckets/alice",
        json!({"data": {"title": "mine"}}),
    )
    .await;
    let (_, bucket_before) = u.request("alice", "GET", "/buckets/alice", None).await;
    let out = home.restore_as(&u, "tandem", &["--collection", "alice/c1"], 0);
    assert!(out.contains("kept as they are there"), "{out}");
    let (_, bucket_after) = u.request("alice", "GET", "/buckets/alice", None).await;
    assert_eq!(bucket_before, bucket_after);
    let c1 = in_bucket("alice/collections/c1");
    assert_same(&only(&u.state("alice"), &c1), &only(&a.state("alice"), &c1));

    // A target without the plugin: no account is named as lost, since none was chosen.
    let plain = target().await;
    let out = home.restore_as(&plain, "admin", &["--bucket", "bob"], 0);
    assert!(!out.contains("accounts were not restored"), "{out}");
    // (alice can read nothing there: what bob sees is compared.)
    assert_same(
        &plain.state("bob"),
        &only(&a.state("bob"), in_bucket("bob")),
    );

    // A target whose secrets differ is refused before anything is written.
    let d = Kinto::start_with_settings(
        plugin,
        "kinto.userid_hmac_secret = ffeeddccbbaa99887766554433221100",
    )
    .await;
    let out = home.restore_as(&d, "tandem", &["--bucket", "alice"], 1);
    assert!(out.contains("kinto.userid_hmac_secret"), "{out}");
    let (_, buckets) = d.request("tandem", "GET", "/buckets", None).await;
    assert_eq!(buckets["data"], json!([]), "a refused restore wrote");
}
