//! Tests against real Kinto servers (from the virtualenv `scripts/test` installs).

use crate::common;

use std::path::Path;

use common::kinto::{Kinto, Options, PASSWORD};
use serde_json::json;
use tandem::config::{Config, SourceConfig};
use tandem::source::kinto::{KintoClient, KintoError, ListResult, ListTarget};

fn source(dir: &Path, url: &str, user: &str, password: &str) -> SourceConfig {
    common::write_secret(dir.join("pw"), format!("{password}\n"));
    let text = format!(
        "[node]\nname = \"t\"\n[source]\nkind = \"kinto\"\nurl = \"{url}\"\nuser = \"{user}\"\npassword_file = \"pw\"\n"
    );
    Config::parse(&dir.join("t.toml"), &text)
        .unwrap()
        .source
        .unwrap()
}

#[tokio::test]
async fn the_client_checks_credentials_and_reads_capabilities() {
    let kinto = Kinto::start(Options {
        history: true,
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();

    let client = KintoClient::new(&source(dir.path(), &kinto.url, "tandem", PASSWORD)).unwrap();
    let info = client.server_info().await.unwrap();
    assert_eq!(info.user_id, "account:tandem");
    assert_eq!(info.version, "26.5.0");
    assert_eq!(info.batch_max_requests, Some(200));
    assert!(info.history);

    // Kinto answers a wrong password as if anonymous; the client must notice.
    let wrong = KintoClient::new(&source(dir.path(), &kinto.url, "tandem", "nope")).unwrap();
    let err = wrong.server_info().await.unwrap_err();
    assert!(matches!(err, KintoError::Unauthorized { .. }), "{err}");
    assert!(!err.to_string().contains("nope"));

    let plain = Kinto::start(Options {
        history: false,
        ..Options::default()
    })
    .await;
    let client = KintoClient::new(&source(dir.path(), &plain.url, "tandem", PASSWORD)).unwrap();
    assert!(!client.server_info().await.unwrap().history);
}

#[tokio::test]
async fn lists_page_keep_bytes_and_answer_304() {
    let kinto = Kinto::start(Options {
        history: false,
        ..Options::default()
    })
    .await;
    bucket_and_collection(&kinto, "alice", "b", "c").await;
    for i in 0..5 {
        kinto
            .ok(
                "alice",
                "PUT",
                &format!("buckets/b/collections/c/records/r{i}"),
                Some(json!({"data": {"i": i}})),
            )
            .await;
    }
    // A body whose numbers and escapes Kinto writes its own way: we must keep Kinto's bytes.
    let raw = r#"{"data":{"f":1.50,"big":12345678901234567890,"u":"é","e":1e3}}"#;
    let r = tandem::net::client_builder()
        .build()
        .unwrap()
        .put(format!("{}buckets/b/collections/c/records/odd", kinto.url))
        .basic_auth("alice", Some(PASSWORD))
        .header("Content-Type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    let dir = tempfile::tempdir().unwrap();
    let client = KintoClient::new(&source(dir.path(), &kinto.url, "tandem", PASSWORD)).unwrap();
    let path = "buckets/b/collections/c/records";
    let mut pages = 0;
    let mut items = Vec::new();
    let mut first_etag = None;
    let mut next = None;
    loop {
        let target = match &next {
            None => ListTarget::Path {
                path,
                since: Some(0),
                limit: Some(2),
            },
            Some(url) => ListTarget::Next(url),
        };
        let ListResult::Page(page) = client.list(target, None).await.unwrap() else {
            panic!("304 without a condition")
        };
        pages += 1;
        first_etag = first_etag.or(page.etag);
        items.extend(page.items);
        match page.next {
            Some(url) => next = Some(url),
            None => break,
        }
    }
    assert_eq!((pages, items.len()), (3, 6));
    let stamps: Vec<i64> = items
        .iter()
        .map(|i| {
            serde_json::from_str::<serde_json::Value>(i.get()).unwrap()["last_modified"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "ascending: {stamps:?}"
    );
    let etag = first_etag.unwrap();
    assert_eq!(etag, *stamps.last().unwrap());

    // Exactly the bytes Kinto serves for the object.
    let odd = client
        .object("buckets/b/collections/c/records/odd")
        .await
        .unwrap()
        .unwrap();
    let served = tandem::net::client_builder()
        .build()
        .unwrap()
        .get(format!("{}buckets/b/collections/c/records/odd", kinto.url))
        .basic_auth("tandem", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(odd.get(), served);
    let listed = items.last().unwrap().get();
    assert!(
        listed.contains("12345678901234567890") && listed.contains(r#""f":1.5"#),
        "{listed}"
    );

    assert!(matches!(
        client
            .list(
                ListTarget::Path {
                    path,
                    since: Some(etag),
                    limit: None
                },
                Some(etag)
            )
            .await
            .unwrap(),
        ListResult::NotModified
    ));
    assert!(
        client
            .object("buckets/b/collections/c/records/missing")
            .await
            .unwrap()
            .is_none()
    );
    assert!(client.object("buckets/nope").await.unwrap().is_none());
}

/// Permissions in our export against the independent client's view: equal where it sees them;
/// where Kinto hides them from it (`{}`), the export must not claim any; records in a dump
/// without permissions (`null`) are not compared.
fn assert_permissions(ours: &serde_json::Value, theirs: &serde_json::Value) {
    match &theirs["permissions"] {
        serde_json::Value::Null => {}
        serde_json::Value::Object(p) if p.is_empty() => {
            assert!(
                ours["permissions"].is_null(),
                "hidden permissions recorded for {}: {}",
                ours["path"],
                ours["permissions"]
            );
        }
        p => assert_eq!(&ours["permissions"], p, "permissions of {}", ours["path"]),
    }
}

/// A tandem node whose source is `kinto`, read as the `tandem` account.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new(kinto: &Kinto) -> Node {
        Node::with_url(&kinto.url)
    }

    /// A node reading the Kinto root at `url` (e.g. through a proxy).
    fn with_url(url: &str) -> Node {
        Node::as_user(url, "tandem")
    }

    /// A node reading the Kinto root at `url` as `user`.
    fn as_user(url: &str, user: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        common::write_secret(dir.path().join("pw"), PASSWORD);
        std::fs::write(
            dir.path().join("tandem.toml"),
            format!(
                "[node]\nname = \"home\"\ndata_dir = \"data\"\nlisten = \"127.0.0.1:0\"\n\
                 [source]\nkind = \"kinto\"\nurl = \"{url}\"\nuser = \"{user}\"\npassword_file = \"pw\"\npoll = \"1s\"\n"
            ),
        )
        .unwrap();
        let node = Node { dir };
        node.run(&["init"]);
        node
    }

    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("tandem.toml")
    }

    fn run(&self, args: &[&str]) -> String {
        String::from_utf8(common::tandem(&self.config(), args, 0).stdout).unwrap()
    }

    /// Runs a command that must fail; returns its stderr.
    fn fail(&self, args: &[&str]) -> String {
        String::from_utf8(common::tandem(&self.config(), args, 1).stderr).unwrap()
    }

    /// `tandem sync`; returns the number of entries appended.
    fn sync(&self) -> u64 {
        let out = self.run(&["sync"]);
        out.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{out}"))
    }

    /// (path, the exact bytes of `data`) for every exported object.
    fn export_raw_data(&self) -> Vec<(String, String)> {
        #[derive(serde::Deserialize)]
        struct Line<'a> {
            path: String,
            #[serde(borrow)]
            data: &'a serde_json::value::RawValue,
        }
        self.run(&["export"])
            .lines()
            .map(|l| {
                let line: Line<'_> = serde_json::from_str(l).unwrap();
                (line.path, line.data.get().to_owned())
            })
            .collect()
    }

    /// The tombstones in this node's state at its head: (path, body bytes).
    fn tombstones(&self) -> Vec<(String, String)> {
        let store = tandem::store::Store::open_read_only(&self.dir.path().join("data")).unwrap();
        let own = store.node_id().unwrap();
        let head = store.head(own).unwrap().map_or(0, |h| h.seq.0);
        store
            .state_for_restore(own, tandem::feed::Seq(head))
            .unwrap()
            .into_iter()
            .filter(|item| item.deleted)
            .map(|item| (item.path, String::from_utf8(item.body).unwrap()))
            .collect()
    }

    fn export(&self) -> Vec<serde_json::Value> {
        self.run(&["export", "--origin", "self", "--format", "jsonl"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

/// The export must hold exactly what the independent client reads: the same paths in the same
/// order, the same data, and for buckets, groups and collections the same permissions.
fn assert_export_matches(node: &Node, kinto: &Kinto) {
    assert_same_under(&node.export(), &kinto.dump("tandem"), "/");
}

#[tokio::test]
async fn ingest_follows_every_kind_of_change() {
    let kinto = Kinto::start(Options {
        history: false,
        ..Options::default()
    })
    .await;
    let node = Node::new(&kinto);

    // Stage 1: varied content from two accounts.
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/b1",
            Some(json!({"data": {"title": "Alice's"}, "permissions": {"read": ["account:bob"]}})),
        )
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/b1/groups/friends",
            Some(json!({"data": {"members": ["account:bob"]}})),
        )
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/b1/collections/tasks",
            Some(json!({"data": {"schema": {"type": "object"}}})),
        )
        .await;
    let long_id = "x".repeat(300);
    let big = "é".repeat(600_000); // ~1.2 MB of UTF-8
    let records = [
        (
            "unicode",
            json!({"título": "ñandú 🎵", "nested": {"a": [1, {"b": null}], "c": {"d": {"e": true}}}}),
        ),
        ("tricky", json!({"deleted": true})),
        (
            "numbers",
            json!({"f": 1.25, "big": 12345678901234567890u64, "neg": -0.5}),
        ),
        (long_id.as_str(), json!({"long": true})),
        ("big", json!({"blob": big})),
    ];
    for (id, data) in &records {
        kinto
            .ok(
                "alice",
                "PUT",
                &format!("buckets/b1/collections/tasks/records/{id}"),
                Some(json!({"data": data})),
            )
            .await;
    }
    kinto
        .ok("bob", "PUT", "buckets/b2", Some(json!({"data": {}})))
        .await;
    kinto
        .ok(
            "bob",
            "PUT",
            "buckets/b2/collections/many",
            Some(json!({"data": {}})),
        )
        .await;
    for i in 0..130 {
        kinto
            .ok(
                "bob",
                "PUT",
                &format!("buckets/b2/collections/many/records/r{i:03}"),
                Some(json!({"data": {"i": i}})),
            )
            .await;
    }
    // Many buckets and collections, and a deeply nested record, from another account.
    let mut deep = json!({"leaf": "🎵 fin"});
    for level in 0..40 {
        deep = json!({ format!("niveau-{level}"): deep, "list": [level, null, {"x": [true]}] });
    }
    let mut requests = Vec::new();
    for b in 0..12 {
        requests.push(json!({"method": "PUT", "path": format!("/buckets/many{b:02}"), "body": {"data": {"b": b}}}));
        for c in 0..4 {
            let collection = format!("/buckets/many{b:02}/collections/c{c}");
            requests
                .push(json!({"method": "PUT", "path": collection.clone(), "body": {"data": {}}}));
            requests.push(json!({"method": "PUT", "path": format!("{collection}/records/deep"), "body": {"data": deep.clone()}}));
        }
    }
    let answer = kinto.batch("admin", requests).await;
    assert!(
        answer["responses"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"].as_u64().unwrap() < 300),
        "{answer}"
    );
    let appended = node.sync();
    assert_eq!(
        appended,
        2 + 1 + 1 + 5 + 1 + 130 + 12 * (1 + 4 * 2),
        "buckets, group, collections, records"
    );
    assert_export_matches(&node, &kinto);
    assert_eq!(node.sync(), 0, "an unchanged server appends nothing");

    // Stage 2: updates, deletes, a permission-only change.
    kinto
        .ok(
            "alice",
            "PATCH",
            "buckets/b1/collections/tasks/records/unicode",
            Some(json!({"data": {"título": "cambiado"}})),
        )
        .await;
    kinto
        .ok(
            "alice",
            "DELETE",
            "buckets/b1/collections/tasks/records/tricky",
            None,
        )
        .await;
    kinto
        .ok(
            "alice",
            "PATCH",
            "buckets/b1/collections/tasks",
            Some(json!({"permissions": {"read": ["system.Authenticated"]}})),
        )
        .await;
    for i in 0..50 {
        kinto
            .ok(
                "bob",
                "DELETE",
                &format!("buckets/b2/collections/many/records/r{i:03}"),
                None,
            )
            .await;
    }
    assert!(node.sync() >= 53);
    assert_export_matches(&node, &kinto);

    // Stage 3: a collection deleted and recreated under the same id, then a bucket deleted.
    kinto
        .ok("bob", "DELETE", "buckets/b2/collections/many", None)
        .await;
    kinto
        .ok(
            "bob",
            "PUT",
            "buckets/b2/collections/many",
            Some(json!({"data": {"again": true}})),
        )
        .await;
    kinto
        .ok(
            "bob",
            "PUT",
            "buckets/b2/collections/many/records/fresh",
            Some(json!({"data": {"new": 1}})),
        )
        .await;
    kinto.ok("alice", "DELETE", "buckets/b1", None).await;
    node.sync();
    assert_export_matches(&node, &kinto);
    let paths: Vec<String> = node
        .export()
        .iter()
        .map(|o| o["path"].as_str().unwrap().to_owned())
        .collect();
    let kept: Vec<&String> = paths
        .iter()
        .filter(|p| !p.starts_with("/buckets/many"))
        .collect();
    assert_eq!(
        kept,
        [
            "/buckets/b2",
            "/buckets/b2/collections/many",
            "/buckets/b2/collections/many/records/fresh"
        ]
    );

    // The feed that recorded all this verifies end to end.
    let status: serde_json::Value = serde_json::from_str(&node.run(&["status", "--json"])).unwrap();
    assert!(status["origins"][0]["head"]["seq"].as_u64().unwrap() > 200);
}

/// Creates bucket `bucket` with collection `collection` as `user`.
async fn bucket_and_collection(kinto: &Kinto, user: &str, bucket: &str, collection: &str) {
    kinto
        .ok(
            user,
            "PUT",
            &format!("buckets/{bucket}"),
            Some(json!({"data": {}})),
        )
        .await;
    kinto
        .ok(
            user,
            "PUT",
            &format!("buckets/{bucket}/collections/{collection}"),
            Some(json!({"data": {}})),
        )
        .await;
}

/// A fault-injecting proxy in front of `kinto`; its `url` is a Kinto root.
async fn proxy_for(kinto: &Kinto) -> common::proxy::Proxy {
    let upstream = kinto
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/v1/")
        .to_owned();
    common::proxy::Proxy::start(upstream, "/v1/").await
}

/// Creates `n` records in one collection through the batch endpoint; `pad` bytes each.
async fn fill(kinto: &Kinto, user: &str, collection: &str, n: usize, pad: usize, prefix: &str) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(150) {
        let requests: Vec<_> = chunk
            .iter()
            .map(|i| json!({"method": "PUT", "path": format!("{collection}/records/{prefix}{i:04}"), "body": {"data": {"i": i, "pad": "p".repeat(pad)}}}))
            .collect();
        let answer = kinto.batch(user, requests).await;
        for r in answer["responses"].as_array().unwrap() {
            assert!(r["status"].as_u64().unwrap() < 300, "{r}");
        }
    }
}

fn record_count(export: &[serde_json::Value]) -> usize {
    export
        .iter()
        .filter(|o| o["path"].as_str().unwrap().contains("/records/"))
        .count()
}

// Multi-threaded: the proxy must keep running while the test waits for a tandem process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_never_commit_part_of_a_page_and_heal() {
    let kinto = Kinto::start(Options {
        history: false,
        ..Options::default()
    })
    .await;
    bucket_and_collection(&kinto, "alice", "b", "c").await;
    // Pages hold 40 records: the first page is small, the later ones large.
    fill(&kinto, "alice", "/buckets/b/collections/c", 40, 10, "a").await;
    fill(&kinto, "alice", "/buckets/b/collections/c", 80, 2000, "b").await;
    let proxy = proxy_for(&kinto).await;
    let node = Node::with_url(&proxy.url);

    // Answers larger than 20 kB are cut mid-body: the second page of records never arrives whole.
    proxy.set(common::proxy::Fault::CutAfter(20_000), 0);
    let err = node.fail(&["sync"]);
    assert!(
        err.contains("cut short") || err.contains("cannot reach"),
        "{err}"
    );
    assert_eq!(
        record_count(&node.export()),
        40,
        "exactly the complete first page is kept"
    );

    proxy.set(common::proxy::Fault::Status(503), 0);
    let before = proxy.requests();
    let err = node.fail(&["sync"]);
    assert!(err.contains("HTTP 503"), "{err}");
    assert_eq!(
        proxy.requests() - before,
        1,
        "a 503 with Retry-After is not asked again"
    );

    // A server error without Retry-After is asked again twice, then reported.
    proxy.set(common::proxy::Fault::Failure(500), 0);
    let before = proxy.requests();
    let err = node.fail(&["sync"]);
    assert!(err.contains("HTTP 500"), "{err}");
    assert_eq!(proxy.requests() - before, 3, "{err}");
    assert_eq!(err.matches("asking again").count(), 2, "{err}");
    // Two in a row, in the middle of a sync: it goes through.
    proxy.set_times(common::proxy::Fault::Failure(502), 3, 2);
    let before = proxy.requests();
    node.sync();
    assert!(proxy.requests() - before > 5, "the faults fell on the sync");
    assert_export_matches(&node, &kinto);

    proxy.set(common::proxy::Fault::None, 0);
    node.sync();
    assert_export_matches(&node, &kinto);
    assert_eq!(record_count(&node.export()), 120);

    // A password changed on the server: a clear error, then recovery once the file is fixed.
    kinto
        .ok(
            "tandem",
            "PATCH",
            "accounts/tandem",
            Some(json!({"data": {"password": "changed-pw"}})),
        )
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/b/collections/c/records/late",
            Some(json!({"data": {}})),
        )
        .await;
    let err = node.fail(&["sync"]);
    assert!(err.contains("did not accept the credentials"), "{err}");
    assert!(!err.contains("changed-pw") && !err.contains(PASSWORD));
    common::write_secret(node.dir.path().join("pw"), "changed-pw\n");
    assert_eq!(node.sync(), 1);
    let export = node.export();
    assert_eq!(record_count(&export), 121);
    assert!(
        export
            .iter()
            .any(|o| o["path"] == "/buckets/b/collections/c/records/late")
    );
}

#[tokio::test]
async fn sigkill_during_ingest_loses_and_duplicates_nothing() {
    let kinto = Kinto::start(Options {
        history: false,
        ..Options::default()
    })
    .await;
    kinto
        .ok("bob", "PUT", "buckets/big", Some(json!({"data": {}})))
        .await;
    let collections = 5;
    let per_collection = 240;
    for c in 0..collections {
        kinto
            .ok(
                "bob",
                "PUT",
                &format!("buckets/big/collections/c{c}"),
                Some(json!({"data": {}})),
            )
            .await;
        fill(
            &kinto,
            "bob",
            &format!("/buckets/big/collections/c{c}"),
            per_collection,
            300,
            "r",
        )
        .await;
    }
    // How long one full pass takes here, measured on a separate node.
    let started = std::time::Instant::now();
    Node::new(&kinto).sync();
    let pass = started.elapsed();

    // Kill in short slices of a pass, round after round, until a pass finishes by itself:
    // every round commits a little and is killed in the middle of more.
    let node = Node::new(&kinto);
    let mut killed_mid_pass = 0;
    for _ in 0..60 {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("--config")
            .arg(node.config())
            .arg("sync")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30) + pass / 16);
        if child.try_wait().unwrap().is_some() {
            break;
        }
        killed_mid_pass += 1;
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
    }
    assert!(
        killed_mid_pass >= 6,
        "only {killed_mid_pass} kills landed during a pass of {pass:?}"
    );
    node.sync();
    assert_export_matches(&node, &kinto);
    // Every object was put exactly once: nothing lost, nothing duplicated.
    let objects = 1 + collections + collections * per_collection;
    let status: serde_json::Value = serde_json::from_str(&node.run(&["status", "--json"])).unwrap();
    assert_eq!(
        status["origins"][0]["head"]["seq"].as_u64().unwrap(),
        objects as u64
    );
    assert_eq!(node.sync(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_asks_the_running_daemon() {
    use std::io::BufRead;
    let kinto = Kinto::start(Options {
        history: false,
        ..Options::default()
    })
    .await;
    kinto
        .ok("alice", "PUT", "buckets/b", Some(json!({"data": {}})))
        .await;
    let node = Node::new(&kinto);
    // A long poll: after its first pass, the daemon only syncs when asked.
    let config = std::fs::read_to_string(node.config())
        .unwrap()
        .replace("poll = \"1s\"", "poll = \"1h\"");
    std::fs::write(node.config(), config).unwrap();
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--config")
        .arg(node.config())
        .arg("run")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(daemon.stderr.take().unwrap()).lines();
    let first_pass = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("reachable") && l.contains("source"));
    assert!(
        first_pass
            .as_deref()
            .is_some_and(|l| l.contains("1 entries appended")),
        "{first_pass:?}"
    );
    let socket = node.dir.path().join("data/tandem.sock");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );

    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/b/collections/c",
            Some(json!({"data": {}})),
        )
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/b/collections/c/records/r",
            Some(json!({"data": {"x": 1}})),
        )
        .await;
    assert_eq!(node.sync(), 2, "the daemon ran the pass");
    assert_export_matches(&node, &kinto);

    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
    assert!(!socket.exists(), "the socket is removed on shutdown");
    assert_eq!(
        node.sync(),
        0,
        "without a daemon, sync runs the pass itself"
    );
}

/// Objects of `export` and `dump` under `prefix` must match: paths, data, and permissions
/// wherever the dump has them (records included when it was made with their permissions).
fn assert_same_under(export: &[serde_json::Value], dump: &[serde_json::Value], prefix: &str) {
    let under = |v: &[serde_json::Value]| -> Vec<serde_json::Value> {
        v.iter()
            .filter(|o| o["path"].as_str().unwrap().starts_with(prefix))
            .cloned()
            .collect()
    };
    let (ours, theirs) = (under(export), under(dump));
    let paths = |v: &[serde_json::Value]| {
        v.iter()
            .map(|o| o["path"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(paths(&ours), paths(&theirs));
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a["data"], b["data"], "data of {}", a["path"]);
        assert_permissions(a, b);
    }
}

#[tokio::test]
async fn history_gives_every_permission_and_follows_changes() {
    let kinto = Kinto::start(Options {
        history: true,
        ..Options::default()
    })
    .await;
    // Alice lets tandem read her bucket (what the history path needs); bob does not.
    kinto.ok("alice", "PUT", "buckets/ha", Some(json!({"data": {"x": 1}, "permissions": {"read": ["account:tandem", "account:bob"]}}))).await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/ha/groups/team",
            Some(json!({"data": {"members": ["account:bob"]}})),
        )
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/ha/collections/c",
            Some(json!({"data": {}, "permissions": {"read": ["system.Authenticated"]}})),
        )
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/ha/collections/c/records/open",
            Some(json!({"data": {"n": 1}, "permissions": {"read": ["system.Everyone"]}})),
        )
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/ha/collections/c/records/plain",
            Some(json!({"data": {"n": 2}})),
        )
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/ha/collections/c/records/shared",
            Some(json!({"data": {"n": 3}, "permissions": {"write": ["account:bob"]}})),
        )
        .await;
    fill(&kinto, "alice", "/buckets/ha/collections/c", 90, 20, "bulk").await;
    kinto
        .ok("bob", "PUT", "buckets/hidden", Some(json!({"data": {}})))
        .await;
    kinto
        .ok(
            "bob",
            "PUT",
            "buckets/hidden/collections/d",
            Some(json!({"data": {}})),
        )
        .await;
    kinto
        .ok(
            "bob",
            "PUT",
            "buckets/hidden/collections/d/records/r",
            Some(json!({"data": {"secret": false}})),
        )
        .await;

    let node = Node::new(&kinto);
    let check = |node: &Node| {
        let export = node.export();
        assert_same_under(
            &export,
            &kinto.dump_with("alice", &["--record-permissions"]),
            "/buckets/ha",
        );
        // Bob's bucket is polled: its data, as tandem can read it.
        assert_same_under(&export, &kinto.dump("tandem"), "/buckets/hidden");
        export
    };
    node.sync();
    let export = check(&node);
    let shared = export
        .iter()
        .find(|o| o["path"] == "/buckets/ha/collections/c/records/shared")
        .unwrap();
    assert_eq!(
        shared["permissions"]["write"].as_array().unwrap().len(),
        2,
        "{shared}"
    );

    // Changes, including one to permissions only, and a collection deleted and recreated.
    kinto
        .ok(
            "alice",
            "PATCH",
            "buckets/ha/collections/c/records/plain",
            Some(json!({"permissions": {"read": ["account:bob"]}})),
        )
        .await;
    kinto
        .ok(
            "alice",
            "DELETE",
            "buckets/ha/collections/c/records/open",
            None,
        )
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/ha/collections/c/records/new",
            Some(json!({"data": {"n": 4}, "permissions": {"read": ["account:tandem"]}})),
        )
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/ha/collections/e",
            Some(json!({"data": {}})),
        )
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/ha/collections/e/records/x",
            Some(json!({"data": {}})),
        )
        .await;
    kinto
        .ok("alice", "DELETE", "buckets/ha/collections/e", None)
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/ha/collections/e",
            Some(json!({"data": {"second": true}})),
        )
        .await;
    kinto
        .ok(
            "bob",
            "PUT",
            "buckets/hidden/collections/d/records/r",
            Some(json!({"data": {"secret": true}})),
        )
        .await;
    node.sync();
    let export = check(&node);
    let plain = export
        .iter()
        .find(|o| o["path"] == "/buckets/ha/collections/c/records/plain")
        .unwrap();
    assert_eq!(plain["permissions"]["read"], json!(["account:bob"]));
    assert!(
        !export
            .iter()
            .any(|o| o["path"] == "/buckets/ha/collections/e/records/x")
    );

    // Nothing changed: nothing appended.
    assert_eq!(node.sync(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_is_sent_and_a_refusal_is_clear() {
    let kinto = Kinto::start(Options {
        history: false,
        ..Options::default()
    })
    .await;
    let proxy = proxy_for(&kinto).await;
    let dir = tempfile::tempdir().unwrap();
    common::write_secret(dir.path().join("token"), "tok-123\n");
    let text = format!(
        "[node]\nname = \"t\"\n[source]\nkind = \"kinto\"\nurl = \"{}\"\ntoken_file = \"token\"\n",
        proxy.url
    );
    let source = Config::parse(&dir.path().join("t.toml"), &text)
        .unwrap()
        .source
        .unwrap();
    let client = KintoClient::new(&source).unwrap();
    // This Kinto knows no bearer tokens: it treats the request as anonymous.
    let err = client.server_info().await.unwrap_err();
    assert!(matches!(err, KintoError::Unauthorized { .. }), "{err}");
    assert!(
        err.to_string().contains("bearer token") && !err.to_string().contains("tok-123"),
        "{err}"
    );
    let head = proxy.last_head().to_ascii_lowercase();
    assert!(head.contains("authorization: bearer tok-123"), "{head}");
}

#[tokio::test]
async fn history_and_polling_record_the_same_objects_and_data() {
    let kinto = Kinto::start(Options {
        history: true,
        ..Options::default()
    })
    .await;
    // `tandem` may read the bucket through its ACL (history path); `poller` only through the
    // settings, which Kinto's history ignores (polling path).
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/b",
            Some(json!({"data": {"n": 1}, "permissions": {"read": ["account:tandem"]}})),
        )
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/b/groups/g",
            Some(json!({"data": {"members": ["account:bob"]}})),
        )
        .await;
    for c in ["c1", "c2"] {
        kinto
            .ok(
                "alice",
                "PUT",
                &format!("buckets/b/collections/{c}"),
                Some(json!({"data": {}})),
            )
            .await;
        fill(
            &kinto,
            "alice",
            &format!("/buckets/b/collections/{c}"),
            70,
            30,
            "r",
        )
        .await;
    }
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/b/collections/c1/records/odd",
            Some(json!({"data": {"f": 1.5, "u": "ñ", "deleted": true}})),
        )
        .await;
    let history = Node::as_user(&kinto.url, "tandem");
    let polling = Node::as_user(&kinto.url, "poller");
    let compare = || {
        let (a, b) = (history.export(), polling.export());
        let paths = |v: &[serde_json::Value]| {
            v.iter()
                .map(|o| o["path"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(paths(&a), paths(&b));
        // The same bytes for the data, not just the same JSON value.
        assert_eq!(history.export_raw_data(), polling.export_raw_data());
        // Only the history path sees the records' permissions.
        let record = |v: &[serde_json::Value]| {
            v.iter()
                .find(|o| o["path"] == "/buckets/b/collections/c1/records/odd")
                .unwrap()
                .clone()
        };
        assert!(record(&a)["permissions"]["write"].is_array());
        assert!(record(&b)["permissions"].is_null());
    };
    history.sync();
    polling.sync();
    compare();
    kinto
        .ok(
            "alice",
            "DELETE",
            "buckets/b/collections/c2/records/r0003",
            None,
        )
        .await;
    kinto
        .ok(
            "alice",
            "PATCH",
            "buckets/b/collections/c1/records/r0001",
            Some(json!({"data": {"changed": true}})),
        )
        .await;
    history.sync();
    polling.sync();
    compare();
    // The tombstone of the deleted record, byte for byte the same on both paths.
    let tombstones = history.tombstones();
    assert_eq!(tombstones.len(), 1, "{tombstones:?}");
    assert_eq!(tombstones, polling.tombstones());
    kinto
        .ok("alice", "DELETE", "buckets/b/collections/c2", None)
        .await;
    history.sync();
    polling.sync();
    compare();
}

#[tokio::test]
async fn kintos_backoff_header_is_remembered() {
    let (options, backoff) = Options {
        history: false,
        ..Options::default()
    }
    .with_backoff(30);
    let kinto = Kinto::start_with(options, backoff).await;
    let dir = tempfile::tempdir().unwrap();
    let client = KintoClient::new(&source(dir.path(), &kinto.url, "tandem", PASSWORD)).unwrap();
    assert_eq!(client.backoff_remaining(), std::time::Duration::ZERO);
    client.server_info().await.unwrap();
    let left = client.backoff_remaining();
    assert!(
        left > std::time::Duration::from_secs(25) && left <= std::time::Duration::from_secs(30),
        "{left:?}"
    );
}

/// A write to Kinto as `user`, for proxy hooks (which cannot borrow the test's `Kinto`).
fn hooked_write(
    url: &str,
    user: &'static str,
    method: &'static str,
    path: String,
    body: Option<serde_json::Value>,
) -> common::proxy::Hook {
    let url = format!("{url}{path}");
    Box::new(move || {
        Box::pin(async move {
            let http = tandem::net::client_builder().build().unwrap();
            let mut req = http
                .request(method.parse().unwrap(), url)
                .basic_auth(user, Some(PASSWORD));
            if let Some(body) = body {
                req = req.json(&body);
            }
            let status = req.send().await.unwrap().status();
            assert!(status.is_success(), "{status}");
        })
    })
}

// Multi-threaded: the proxy must keep running while the test waits for a tandem process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_during_a_full_read_is_not_lost() {
    let kinto = Kinto::start(Options {
        history: false,
        ..Options::default()
    })
    .await;
    bucket_and_collection(&kinto, "alice", "b", "c").await;
    fill(&kinto, "alice", "/buckets/b/collections/c", 100, 10, "r").await;
    let proxy = proxy_for(&kinto).await;
    // While tandem reads the second page: delete a record it has already read, and write a
    // newer one that lands on a later page.
    let records = format!("{}buckets/b/collections/c/records/", kinto.url);
    proxy.when(
        "_token=",
        Box::new(move || {
            Box::pin(async move {
                hooked_write(&records, "alice", "DELETE", "r0005".into(), None)().await;
                hooked_write(
                    &records,
                    "alice",
                    "PUT",
                    "late".into(),
                    Some(json!({"data": {}})),
                )()
                .await;
            })
        }),
    );
    let node = Node::with_url(&proxy.url);
    node.sync();
    node.sync();
    assert_export_matches(&node, &kinto);
    assert!(
        !node
            .export()
            .iter()
            .any(|o| o["path"] == "/buckets/b/collections/c/records/r0005")
    );
}

#[tokio::test]
async fn the_history_path_survives_merged_batches_and_a_cleared_history() {
    let kinto = Kinto::start(Options {
        history: true,
        ..Options::default()
    })
    .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/h",
            Some(json!({"data": {}, "permissions": {"read": ["account:tandem"]}})),
        )
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/h/collections/c",
            Some(json!({"data": {}})),
        )
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/h/collections/c/records/x",
            Some(json!({"data": {"v": 0}})),
        )
        .await;
    kinto
        .ok("bob", "PUT", "buckets/other", Some(json!({"data": {}})))
        .await;
    let node = Node::new(&kinto);
    node.sync();
    let with_permissions = kinto.dump_with("alice", &["--record-permissions"]);
    assert_same_under(&node.export(), &with_permissions, "/buckets/h");

    // One request that writes, deletes and writes x again: Kinto logs it out of order.
    let x = "/buckets/h/collections/c/records/x";
    let requests = json!([
        {"method": "PUT", "path": x, "body": {"data": {"v": 1}}},
        {"method": "DELETE", "path": x},
        {"method": "PUT", "path": x, "body": {"data": {"v": 2}}},
    ]);
    kinto.batch("alice", requests).await;
    node.sync();
    assert_same_under(
        &node.export(),
        &kinto.dump_with("alice", &["--record-permissions"]),
        "/buckets/h",
    );

    // The bucket's history is cleared (what trimming also does): not a reason to stop, for
    // this bucket or any other.
    kinto.ok("alice", "DELETE", "buckets/h/history", None).await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/h/collections/c/records/after",
            Some(json!({"data": {}})),
        )
        .await;
    kinto
        .ok(
            "bob",
            "PUT",
            "buckets/other/collections/d",
            Some(json!({"data": {}})),
        )
        .await;
    node.sync();
    let export = node.export();
    assert_same_under(&export, &kinto.dump("tandem"), "/buckets/other");
    assert!(
        export
            .iter()
            .any(|o| o["path"] == "/buckets/h/collections/c/records/after")
    );
    assert_eq!(node.sync(), 0);
}

/// The history plugin files every bucket of a batch under the first one's history: the others'
/// histories lack their creation and later changes. Nothing fails; every bucket's data is
/// recorded as Kinto has it; the first one's permissions too, and the others are named in
/// `status` as recorded without permissions (their histories cannot give them).
#[tokio::test]
async fn buckets_written_in_one_batch_are_all_followed() {
    let kinto = Kinto::start(Options {
        history: true,
        ..Options::default()
    })
    .await;
    let bucket = |id: &str, n: u32| {
        json!({"method": "PUT", "path": format!("/buckets/{id}"),
               "body": {"data": {"n": n}, "permissions": {"read": ["account:tandem"]}}})
    };
    let batch = json!([bucket("b0", 1), bucket("b1", 1), bucket("b2", 1)]);
    kinto.batch("alice", batch).await;
    let node = Node::new(&kinto);
    node.sync();
    let assert_buckets = |n: u32| {
        let export = node.export();
        for id in ["b0", "b1", "b2"] {
            let b = export
                .iter()
                .find(|o| o["path"] == format!("/buckets/{id}"))
                .unwrap_or_else(|| panic!("/buckets/{id} not recorded"));
            assert_eq!(b["data"]["n"], n, "{id}");
        }
        let b0 = export.iter().find(|o| o["path"] == "/buckets/b0").unwrap();
        assert_eq!(b0["permissions"]["read"], json!(["account:tandem"]));
    };
    assert_buckets(1);
    assert_eq!(
        permissions_incomplete(&node),
        ["/buckets/b1", "/buckets/b2"]
    );

    // One batch changes all three: only b0's history has the entries.
    let batch = json!([bucket("b0", 2), bucket("b1", 2), bucket("b2", 2)]);
    kinto.batch("alice", batch).await;
    node.sync();
    assert_buckets(2);
    assert_eq!(node.sync(), 0);
}

#[tokio::test]
async fn a_followed_bucket_changed_or_recreated_is_followed_exactly() {
    let kinto = Kinto::start(Options {
        history: true,
        ..Options::default()
    })
    .await;
    let readable = json!({"read": ["account:tandem"]});
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/f",
            Some(json!({"data": {"v": 1}, "permissions": readable})),
        )
        .await;
    bucket_and_collection(&kinto, "alice", "f", "c").await;
    fill(&kinto, "alice", "/buckets/f/collections/c", 60, 10, "r").await;
    let node = Node::new(&kinto);
    node.sync();
    let owner_view = || kinto.dump_with("alice", &["--record-permissions"]);

    // A permission change on the bucket: one entry, the bucket with its new permissions, and
    // no re-read of the bucket's contents.
    kinto
        .ok(
            "alice",
            "PATCH",
            "buckets/f",
            Some(json!({"permissions": {"read": ["account:tandem", "account:bob"]}})),
        )
        .await;
    assert_eq!(node.sync(), 1);
    assert_same_under(&node.export(), &owner_view(), "/buckets/f");

    // Deleted and recreated with other contents: exactly the new contents.
    kinto.ok("alice", "DELETE", "buckets/f", None).await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/f",
            Some(json!({"data": {"v": 2}, "permissions": readable})),
        )
        .await;
    bucket_and_collection(&kinto, "alice", "f", "d").await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/f/collections/d/records/only",
            Some(json!({"data": {}})),
        )
        .await;
    node.sync();
    let export = node.export();
    assert_same_under(&export, &owner_view(), "/buckets/f");
    assert!(!export.iter().any(|o| {
        o["path"]
            .as_str()
            .unwrap()
            .starts_with("/buckets/f/collections/c")
    }));
    assert_eq!(node.sync(), 0);
}

/// The `source.permissions_incomplete` buckets of `node`'s `status --json`.
fn permissions_incomplete(node: &Node) -> Vec<String> {
    let status: serde_json::Value = serde_json::from_str(&node.run(&["status", "--json"])).unwrap();
    status["source"]["permissions_incomplete"]
        .as_array()
        .unwrap_or_else(|| panic!("no source.permissions_incomplete: {status}"))
        .iter()
        .map(|b| b.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_running_during_the_first_history_read_loses_no_permissions() {
    let kinto = std::sync::Arc::new(
        Kinto::start(Options {
            history: true,
            ..Options::default()
        })
        .await,
    );
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/busy",
            Some(json!({"data": {}, "permissions": {"read": ["account:tandem"]}})),
        )
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/busy/collections/c",
            Some(json!({"data": {}})),
        )
        .await;
    // Batches of 20 records with their own permissions, one after another, while first syncs
    // run: each batch's history entries are written when its request ends.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (kinto, stop) = (kinto.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while n < 60 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let requests: Vec<serde_json::Value> = (0..20)
                    .map(|i| {
                        json!({"method": "PUT",
                               "path": format!("/buckets/busy/collections/c/records/w{n}-{i}"),
                               "body": {"data": {"i": i}, "permissions": {"read": ["account:bob"]}}})
                    })
                    .collect();
                kinto.batch("alice", requests).await;
                n += 1;
            }
            n
        })
    };
    let mut nodes = Vec::new();
    for _ in 0..5 {
        let node = Node::new(&kinto);
        node.sync();
        assert_eq!(
            permissions_incomplete(&node),
            Vec::<String>::new(),
            "a first sync beside a writer marked the bucket"
        );
        nodes.push(node);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let batches = writer.await.unwrap();
    assert!(batches >= 3, "the writer ran only {batches} batches");
    // Every node ends with every record, each with its permissions.
    for node in &nodes {
        node.sync();
        let export = node.export();
        let records: Vec<_> = export
            .iter()
            .filter(|o| o["path"].as_str().unwrap().contains("/records/"))
            .collect();
        assert_eq!(records.len(), batches * 20);
        assert!(
            records
                .iter()
                .all(|r| r["permissions"]["read"] == json!(["account:bob"])),
            "a record without its permissions"
        );
    }
}

#[tokio::test]
async fn a_history_that_does_not_cover_a_bucket_is_a_warning_in_status() {
    // The history keeps only the newest few entries per kind: older records are not in it.
    let kinto = Kinto::start_with_settings(
        Options {
            history: true,
            ..Options::default()
        },
        "history.auto_trim_max_count = 3\nhistory.auto_trim_threshold = 1",
    )
    .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/trimmed",
            Some(json!({"data": {}, "permissions": {"read": ["account:tandem"]}})),
        )
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/trimmed/collections/c",
            Some(json!({"data": {}})),
        )
        .await;
    for i in 0..12 {
        kinto
            .ok(
                "alice",
                "PUT",
                &format!("buckets/trimmed/collections/c/records/r{i}"),
                Some(json!({"data": {"i": i}})),
            )
            .await;
    }
    let node = Node::new(&kinto);
    node.sync();
    assert_eq!(permissions_incomplete(&node), vec!["/buckets/trimmed"]);
    let text = node.run(&["status"]);
    assert!(
        text.contains("WARNING: /buckets/trimmed is followed without record permissions"),
        "{text}"
    );
    // Every record is still there, from the lists.
    let records = node
        .export()
        .iter()
        .filter(|o| o["path"].as_str().unwrap().contains("/records/"))
        .count();
    assert_eq!(records, 12);
}

/// `GET` of `path` as `user`: the exact bytes of `data`.
async fn raw_data_of(kinto: &Kinto, user: &str, path: &str) -> String {
    let r = reqwest::Client::new()
        .get(format!("{}{}", kinto.url, path.trim_start_matches('/')))
        .basic_auth(user, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        data: &'a serde_json::value::RawValue,
    }
    serde_json::from_str::<Body<'_>>(&text)
        .unwrap()
        .data
        .get()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_wider_than_any_machine_type_are_recorded_and_restored_as_served() {
    // PostgreSQL keeps numbers as `numeric`: 1.7976931348623157e308 is served as a 309-digit
    // integer, and integers may have any number of digits.
    let kinto = Kinto::start(Options {
        history: true,
        postgres: true,
        ..Options::default()
    })
    .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/n",
            Some(json!({"data": {}, "permissions": {"read": ["account:tandem"]}})),
        )
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/n/collections/c",
            Some(json!({"data": {}})),
        )
        .await;
    // (Kinto refuses integer literals of hundreds of digits in a request; PostgreSQL serves
    // such integers for large floats.)
    let bodies = [
        r#"{"data": {"max": 1.7976931348623157e308}}"#.to_owned(),
        r#"{"data": {"wide": 1.2345678901234566e+29, "neg": -1e300}}"#.to_owned(),
        r#"{"data": {"tiny": 5e-324, "third": 0.333333333333333333333333333333}}"#.to_owned(),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let r = reqwest::Client::new()
            .put(format!("{}buckets/n/collections/c/records/r{i}", kinto.url))
            .basic_auth("alice", Some(PASSWORD))
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{body}: {}", r.status());
    }
    let history = Node::as_user(&kinto.url, "tandem");
    let polling = Node::as_user(&kinto.url, "poller");
    history.sync();
    polling.sync();
    for node in [&history, &polling] {
        let recorded: std::collections::HashMap<String, String> =
            node.export_raw_data().into_iter().collect();
        for i in 0..bodies.len() {
            let path = format!("/buckets/n/collections/c/records/r{i}");
            let served = raw_data_of(&kinto, "alice", &path).await;
            assert_eq!(recorded.get(&path), Some(&served), "{path}");
        }
    }
    assert!(
        raw_data_of(&kinto, "alice", "/buckets/n/collections/c/records/r0")
            .await
            .contains(&"0".repeat(290))
    );

    // Restored into another PostgreSQL-backed Kinto, each is served with the same bytes.
    let target = Kinto::start_with_settings(
        Options {
            postgres: true,
            ..Options::default()
        },
        &common::kinto::restore_target_settings("tandem"),
    )
    .await;
    let pw = history.dir.path().join("pw");
    history.run(&[
        "restore",
        "--to",
        &target.url,
        "--user",
        "tandem",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    for i in 0..bodies.len() {
        let path = format!("/buckets/n/collections/c/records/r{i}");
        assert_eq!(
            raw_data_of(&target, "alice", &path).await,
            raw_data_of(&kinto, "alice", &path).await,
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_a_postgresql_target_cannot_hold_are_named_before_writing() {
    // The source keeps its data in memory, which stores U+0000.
    let source = Kinto::start(Options {
        memory: true,
        ..Options::default()
    })
    .await;
    source
        .ok("alice", "PUT", "buckets/z", Some(json!({"data": {}})))
        .await;
    source
        .ok(
            "alice",
            "PUT",
            "buckets/z/collections/c",
            Some(json!({"data": {}})),
        )
        .await;
    for (id, text) in [("ok1", "fine"), ("nul", "a\u{0}b"), ("ok2", "also fine")] {
        source
            .ok(
                "alice",
                "PUT",
                &format!("buckets/z/collections/c/records/{id}"),
                Some(json!({"data": {"text": text}})),
            )
            .await;
    }
    let node = Node::as_user(&source.url, "poller");
    node.sync();
    let target = Kinto::start_with_settings(
        Options {
            postgres: true,
            ..Options::default()
        },
        "kinto.bucket_create_principals = account:poller
kinto.bucket_write_principals = account:poller",
    )
    .await;
    let pw = node.dir.path().join("pw");
    let restore = |extra: &[&str], code: i32| {
        let mut args = vec![
            "restore",
            "--to",
            &target.url,
            "--user",
            "poller",
            "--password-file",
            pw.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = common::tandem(&node.config(), &args, code);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let refused = restore(&[], 1);
    // The poller could not see the bucket's permissions: restore says so before writing.
    assert!(
        refused.contains("recorded without their permissions") && refused.contains("/buckets/z"),
        "{refused}"
    );
    assert!(
        refused.contains("/buckets/z/collections/c/records/nul") && refused.contains("U+0000"),
        "{refused}"
    );
    let (_, buckets) = target.request("poller", "GET", "buckets", None).await;
    assert_eq!(buckets["data"], json!([]), "a refused restore wrote");
    let skipped = restore(&["--nul", "skip"], 0);
    assert!(
        skipped.contains(
            "1 objects holding U+0000 were not restored: /buckets/z/collections/c/records/nul"
        ),
        "{skipped}"
    );
    let (_, records) = target
        .request("poller", "GET", "buckets/z/collections/c/records", None)
        .await;
    let mut ids: Vec<&str> = records["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["ok1", "ok2"]);
}
