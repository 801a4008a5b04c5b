//! The kinto-tandem plugin, end to end, on both of Kinto's backends: members create their own
//! buckets (plain API calls, the default bucket, a batch of many objects) with ACLs that
//! tandem's account is not in; accounts are created and change their passwords. A node
//! follows the server through the plugin's journal, then fresh servers are restored from the
//! node's copy: with the plugin, every member logs in with the old password and sees exactly
//! what they had; without it, `restore` names what cannot come back; a target with other
//! secrets is refused.

use crate::common;

use common::follower::Follower as Node;
use common::kinto::{Kinto, Options, PASSWORD};
use serde_json::{Value, json};

/// Member accounts are created by the test; the server starts with these only.
const STAFF: &[&str] = &["admin", "tandem", "poller"];

/// A source: the plugin, and `tandem` in none of the `*_read_principals` settings (`poller`
/// reads everything through them, as the polling path needs).
async fn source(postgres: bool) -> Kinto {
    Kinto::start_with_settings(
        Options {
            plugin: true,
            postgres,
            accounts: Some(STAFF),
            ..Options::default()
        },
        "kinto.bucket_read_principals = account:poller
kinto.collection_read_principals = account:poller
kinto.group_read_principals = account:poller
kinto.record_read_principals = account:poller",
    )
    .await
}

/// `GET /v1/` as `user` with `password`: the authenticated user id, if any.
async fn whoami(kinto: &Kinto, user: &str, password: &str) -> Option<String> {
    let r = reqwest::Client::new()
        .get(&kinto.url)
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    v["user"]["id"].as_str().map(str::to_owned)
}

async fn put(kinto: &Kinto, user: &str, path: &str, body: Value) {
    kinto.ok(user, "PUT", path, Some(body)).await;
}

/// What members do on their own: buckets private to them, the default bucket, a batch of many
/// records with their own ACLs, a group, deletes of a record and of a collection, a new account
/// whose password changes.
async fn members_content(kinto: &Kinto) {
    for user in ["alice", "bob", "carol"] {
        kinto.create_account(user).await;
    }

    put(
        kinto,
        "alice",
        "/buckets/alice-home",
        json!({"data": {"title": "À la maison"}, "permissions": {"read": ["account:bob"]}}),
    )
    .await;
    put(
        kinto,
        "alice",
        "/buckets/alice-home/groups/family",
        json!({"data": {"members": ["account:bob"]}}),
    )
    .await;
    put(
        kinto,
        "alice",
        "/buckets/alice-home/collections/recipes",
        json!({"data": {"big": 12345678901234567890u64, "ratio": 0.1}, "permissions": {"record:create": ["/buckets/alice-home/groups/family"]}}),
    )
    .await;
    // One batch: Kinto merges its changes into one event per kind.
    let requests: Vec<Value> = (0..60)
        .map(|i| {
            let permissions = if i % 3 == 0 {
                json!({"read": ["account:carol"]})
            } else {
                json!({})
            };
            json!({"method": "PUT",
                   "path": format!("/buckets/alice-home/collections/recipes/records/r{i:02}"),
                   "body": {"data": {"n": i, "name": format!("plat {i} ✓")}, "permissions": permissions}})
        })
        .collect();
    kinto.batch("alice", requests).await;
    kinto
        .ok(
            "alice",
            "DELETE",
            "/buckets/alice-home/collections/recipes/records/r07",
            None,
        )
        .await;
    put(
        kinto,
        "alice",
        "/buckets/alice-home/collections/scratch",
        json!({"data": {}}),
    )
    .await;
    put(
        kinto,
        "alice",
        "/buckets/alice-home/collections/scratch/records/s",
        json!({"data": {"s": 1}}),
    )
    .await;
    kinto
        .ok(
            "alice",
            "DELETE",
            "/buckets/alice-home/collections/scratch",
            None,
        )
        .await;
    // Bob's default bucket, created implicitly as kinto.js does.
    put(
        kinto,
        "bob",
        "/buckets/default/collections/notes/records/n1",
        json!({"data": {"text": "premier"}}),
    )
    .await;
    // Carol changes her password.
    kinto
        .ok(
            "carol",
            "PATCH",
            "/accounts/carol",
            Some(json!({"data": {"password": "carol-second"}})),
        )
        .await;
}

/// Later changes: an update with new permissions, a delete, a bucket deleted whole.
async fn more_changes(kinto: &Kinto) {
    put(
        kinto,
        "alice",
        "/buckets/alice-home/collections/recipes/records/r01",
        json!({"data": {"n": 1, "edited": true}, "permissions": {"read": ["account:bob", "system.Authenticated"]}}),
    )
    .await;
    put(
        kinto,
        "bob",
        "/buckets/bob-tmp",
        json!({"data": {}, "permissions": {}}),
    )
    .await;
    put(
        kinto,
        "bob",
        "/buckets/bob-tmp/collections/c",
        json!({"data": {}}),
    )
    .await;
    put(
        kinto,
        "bob",
        "/buckets/bob-tmp/collections/c/records/x",
        json!({"data": {"x": 1}}),
    )
    .await;
}

/// Every object `user` can read on `kinto`, with permissions and tombstones, without the
/// records lists' ETags (a restore stamps a list with the time it was written).
fn view(kinto: &Kinto, user: &str) -> Vec<Value> {
    kinto
        .state(user)
        .into_iter()
        .map(|mut row| {
            if let Some(o) = row.as_object_mut() {
                o.remove("etag");
                o.remove("restore_marker");
            }
            row
        })
        .collect()
}

async fn journal_end_to_end(postgres: bool) {
    let a = source(postgres).await;
    members_content(&a).await;

    let home = Node::new(&a, "tandem");
    let appended = home.sync();
    assert!(appended > 60, "first sync appended only {appended}");
    // Nothing changed: nothing appended.
    assert_eq!(home.sync(), 0, "a second pass appended entries");

    let export = home.export();
    let by_path = |path: &str| {
        export
            .iter()
            .find(|o| o["path"] == path)
            .unwrap_or_else(|| panic!("{path} not exported"))
            .clone()
    };
    // Alice's private bucket, with its permissions, though tandem is not in its ACL.
    let bucket = by_path("/buckets/alice-home");
    let (_, alices) = a.request("alice", "GET", "/buckets/alice-home", None).await;
    assert_eq!(bucket["data"], alices["data"]);
    assert_eq!(bucket["permissions"], alices["permissions"]);
    // Every record of the batch, each with its own permissions.
    let records: Vec<&Value> = export
        .iter()
        .filter(|o| {
            o["path"]
                .as_str()
                .unwrap()
                .starts_with("/buckets/alice-home/collections/recipes/records/")
        })
        .collect();
    assert_eq!(records.len(), 59, "60 batched records, one deleted");
    let r03 = by_path("/buckets/alice-home/collections/recipes/records/r03");
    assert_eq!(r03["permissions"]["read"], json!(["account:carol"]));
    // The deleted collection, and what was in it, are gone.
    assert!(
        !export
            .iter()
            .any(|o| o["path"].as_str().unwrap().contains("/scratch"))
    );
    // Bob's default bucket (an HMAC of his id) is there.
    let (_, root) = a.request("bob", "GET", "/", None).await;
    let bob_bucket = root["user"]["bucket"].as_str().unwrap().to_owned();
    by_path(&format!(
        "/buckets/{bob_bucket}/collections/notes/records/n1"
    ));
    // Accounts, with their password hashes.
    let carol = by_path("/accounts/carol");
    assert!(
        carol["data"]["password"]
            .as_str()
            .is_some_and(|h| h.starts_with("$2")),
        "{carol}"
    );

    // The same objects, byte for byte, as the polling path records them.
    let poller = Node::new(&a, "poller");
    poller.sync();
    let polled: std::collections::HashMap<String, String> = poller.raw_data().into_iter().collect();
    let mut compared = 0;
    for (path, data) in home.raw_data() {
        if let Some(theirs) = polled.get(&path) {
            assert_eq!(&data, theirs, "{path}: journal and polling data differ");
            compared += 1;
        }
    }
    assert!(compared > 60, "only {compared} objects compared");

    // Changes after the first sync are followed.
    more_changes(&a).await;
    assert!(home.sync() > 0);
    let r01 = home
        .export()
        .into_iter()
        .find(|o| o["path"] == "/buckets/alice-home/collections/recipes/records/r01")
        .unwrap();
    assert_eq!(r01["data"]["edited"], true);
    kinto_ok_delete(&a, "bob", "/buckets/bob-tmp").await;
    home.sync();
    assert!(
        !home
            .export()
            .iter()
            .any(|o| o["path"].as_str().unwrap().starts_with("/buckets/bob-tmp")),
        "the deleted bucket and everything below it are gone"
    );

    // A fresh server with the plugin, with only the restoring account: everything comes back.
    let b = Kinto::start(Options {
        plugin: true,
        postgres,
        accounts: Some(&["tandem"]),
        ..Options::default()
    })
    .await;
    let out = home.restore_as(&b, "tandem", &[], 0);
    assert!(out.contains("kinto-tandem plugin"), "{out}");
    assert!(
        out.contains("already existed on the target and were kept as they are there: tandem"),
        "{out}"
    );
    // Members log in with their old passwords (carol with the one she changed to).
    assert_eq!(
        whoami(&b, "alice", PASSWORD).await.as_deref(),
        Some("account:alice")
    );
    assert_eq!(
        whoami(&b, "carol", "carol-second").await.as_deref(),
        Some("account:carol")
    );
    assert_eq!(whoami(&b, "carol", PASSWORD).await, None);
    // Each member sees exactly what they had: data, timestamps, permissions, tombstones.
    for user in ["alice", "bob"] {
        let before = view(&a, user);
        assert!(!before.is_empty());
        assert_eq!(before, view(&b, user), "{user} sees another state");
    }
    // Running it again writes nothing.
    let again = home.restore_as(&b, "tandem", &[], 0);
    assert!(again.contains("(0 written"), "{again}");

    // Without the plugin, accounts cannot come back: restore names them.
    let c = Kinto::start_with_settings(
        Options {
            postgres,
            accounts: Some(&["tandem"]),
            ..Options::default()
        },
        &common::kinto::restore_target_settings("tandem"),
    )
    .await;
    let out = home.restore_as(&c, "tandem", &[], 0);
    assert!(out.contains("accounts were not restored"), "{out}");
    for user in ["alice", "bob", "carol"] {
        assert!(out.contains(user), "{user} not named: {out}");
    }

    // A target whose secrets differ is refused before anything is written, unless accepted.
    let d = Kinto::start_with_settings(
        Options {
            plugin: true,
            postgres,
            accounts: Some(&["tandem"]),
            ..Options::default()
        },
        "kinto.userid_hmac_secret = ffeeddccbbaa99887766554433221100",
    )
    .await;
    let out = home.restore_as(&d, "tandem", &[], 1);
    assert!(out.contains("kinto.userid_hmac_secret"), "{out}");
    let (_, buckets) = d.request("tandem", "GET", "/buckets", None).await;
    assert_eq!(buckets["data"], json!([]), "a refused restore wrote");
    home.restore_as(&d, "tandem", &["--ignore-secrets-mismatch"], 0);
    assert_eq!(
        whoami(&d, "alice", PASSWORD).await.as_deref(),
        Some("account:alice")
    );
}

async fn kinto_ok_delete(kinto: &Kinto, user: &str, path: &str) {
    kinto.ok(user, "DELETE", path, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_captures_members_data_and_a_restore_brings_it_back_memory() {
    journal_end_to_end(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_captures_members_data_and_a_restore_brings_it_back_postgresql() {
    journal_end_to_end(true).await;
}

/// A Kinto server with the plugin and `settings`, holding alice's bucket `t` and its
/// collection `c`.
async fn plugin_kinto_with_collection(settings: &str) -> Kinto {
    let a = Kinto::start_with_settings(
        Options {
            plugin: true,
            ..Options::default()
        },
        settings,
    )
    .await;
    put(&a, "alice", "/buckets/t", json!({"data": {}})).await;
    put(&a, "alice", "/buckets/t/collections/c", json!({"data": {}})).await;
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_trimmed_journal_reads_the_whole_state_again() {
    let a = plugin_kinto_with_collection("kinto.tandem.journal_max_entries = 5").await;
    let home = Node::new(&a, "tandem");
    home.sync();
    // Far more changes than the journal keeps, a delete among them.
    for i in 0..30 {
        put(
            &a,
            "alice",
            &format!("/buckets/t/collections/c/records/r{i}"),
            json!({"data": {"i": i}}),
        )
        .await;
    }
    kinto_ok_delete(&a, "alice", "/buckets/t/collections/c/records/r3").await;
    let out = home.run(&["sync"], 0);
    assert!(out.contains("reading the whole state again"), "{out}");
    let records: Vec<String> = home
        .export()
        .iter()
        .map(|o| o["path"].as_str().unwrap().to_owned())
        .filter(|p| p.contains("/records/"))
        .collect();
    assert_eq!(records.len(), 29, "{records:?}");
    assert!(!records.iter().any(|p| p.ends_with("/r3")));
    // And it follows the journal again from there.
    put(
        &a,
        "alice",
        "/buckets/t/collections/c/records/late",
        json!({"data": {}}),
    )
    .await;
    assert_eq!(home.sync(), 1);
}

/// A plugin Kinto whose dump comes in pages of 10 (its `storage_max_fetch_size`), holding
/// `records` records in `/buckets/t/collections/c`, and a node that reads it through a proxy.
async fn paged_dump_behind_a_proxy(records: usize) -> (Kinto, common::proxy::Proxy, Node) {
    let a = plugin_kinto_with_collection("kinto.storage_max_fetch_size = 10").await;
    for i in 0..records {
        put(
            &a,
            "alice",
            &format!("/buckets/t/collections/c/records/r{i:02}"),
            json!({"data": {"i": i}}),
        )
        .await;
    }
    let upstream = a
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/v1/")
        .to_owned();
    let proxy = common::proxy::Proxy::start(upstream, "/v1/").await;
    let home = Node::new(&a, "tandem");
    home.set_source_url(&proxy.url);
    (a, proxy, home)
}

/// A dump page is stored as soon as it has arrived, while Kinto serves the next one: only the
/// last page's work is left once Kinto has answered. Here the second page is held back for
/// seconds, and the first page's records must be in the store meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_page_is_stored_while_the_next_one_is_served() {
    let (_a, proxy, home) = paged_dump_behind_a_proxy(25).await;
    // The root and the dump's first page pass; the second page waits 4 s.
    let held = std::time::Duration::from_secs(4);
    proxy.set_times(common::proxy::Fault::Delay(held.as_millis() as u64), 2, 1);
    let started = std::time::Instant::now();
    let mut sync = common::chaos::spawn(&home.config(), &["sync"]);
    let data = home.dir.path().join("data");
    let stored = || {
        let Ok(store) = tandem::store::Store::open_read_only(&data) else {
            return 0;
        };
        let Ok(node) = store.node_id() else { return 0 };
        store.head(node).ok().flatten().map_or(0, |h| h.seq.0)
    };
    common::node::wait_for(held * 2, "the first page in the store", || stored() >= 10).await;
    let waited = started.elapsed();
    assert!(
        waited < held,
        "the first page was stored {waited:?} after the sync started: not before the second \
         page ({held:?} late) arrived"
    );
    assert!(sync.wait().unwrap().success());
    let records = home
        .export()
        .iter()
        .filter(|o| o["path"].as_str().unwrap().contains("/records/"))
        .count();
    assert_eq!(records, 25);
}

/// A dump read in many pages (the plugin's page size is Kinto's `storage_max_fetch_size`),
/// cut off in the middle: the pass fails with Kinto's error and moves no cursor; the next one
/// reads the dump again, keeps what is still there, deletes what went in between, and follows
/// the journal from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_of_many_pages_cut_off_midway_is_read_again_whole() {
    let (a, proxy, home) = paged_dump_behind_a_proxy(45).await;
    // The root, two pages of the dump, then an error.
    proxy.set(common::proxy::Fault::Status(500), 3);
    let out = home.run(&["sync"], 1);
    assert!(out.contains("HTTP 500"), "{out}");
    let records = |export: &[Value]| -> Vec<String> {
        export
            .iter()
            .map(|o| o["path"].as_str().unwrap().to_owned())
            .filter(|p| p.contains("/records/"))
            .collect()
    };
    let kept = records(&home.export()).len();
    assert!(
        (1..45).contains(&kept),
        "{kept} records kept from two pages"
    );

    // In between, a record goes and one comes.
    kinto_ok_delete(&a, "alice", "/buckets/t/collections/c/records/r00").await;
    put(
        &a,
        "alice",
        "/buckets/t/collections/c/records/new",
        json!({"data": {}}),
    )
    .await;
    proxy.set(common::proxy::Fault::None, 0);
    home.sync();
    let mut got = records(&home.export());
    got.sort();
    let mut want: Vec<String> = (1..45)
        .map(|i| format!("/buckets/t/collections/c/records/r{i:02}"))
        .collect();
    want.push("/buckets/t/collections/c/records/new".into());
    want.sort();
    assert_eq!(got, want);
    assert!(
        proxy.requests() > 8,
        "the dump was read in {} requests",
        proxy.requests()
    );
    // From the journal on, one request per pass.
    let before = proxy.requests();
    put(
        &a,
        "alice",
        "/buckets/t/collections/c/records/late",
        json!({"data": {}}),
    )
    .await;
    assert_eq!(home.sync(), 1);
    assert_eq!(home.sync(), 0);
    assert!(
        proxy.requests() - before <= 4,
        "{}",
        proxy.requests() - before
    );
}
