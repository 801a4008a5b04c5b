//! `tandem export --format kinto-wizard` against the real kinto-wizard (pinned in
//! tests/requirements.txt): a Kinto server with several buckets, groups, collections, records
//! with awkward values and permissions is followed by a node; its export is loaded by
//! `kinto-wizard load` into a fresh Kinto, and an independent client (kinto-http) must read
//! back the same data and permissions as on the source, but for what cannot travel through
//! Kinto's API (timestamps, tombstones, accounts).

use crate::common;

use std::path::Path;
use std::process::Command;

use common::kinto::{Kinto, Options, PASSWORD, restore_target_settings};
use common::node::TestNode;
use serde_json::{Value, json};

/// A record body with values a YAML writer can get wrong, as raw JSON: serde_json without
/// `arbitrary_precision` cannot hold the widest numbers.
fn tricky_record() -> String {
    let long_key = "k".repeat(1500);
    format!(
        r#"{{"data": {{
            "yes": "yes", "no": "no", "null": "null", "tilde": "~", "exp": "1e3",
            "date": "2018-06-22", "hex": "0x1F", "octal": "0o17", "inf": ".inf", "empty": "",
            "bools": [true, false, null, "true", "False", "NULL", "on", "off", "y", "n"],
            "numbers": [0, -0, 1e3, 1.5, -2.25e-7, 0.1, 1e300, 18446744073709551615,
                        -9223372036854775808, 123456789012345678901234567890,
                        -98765432109876543210987654321.5],
            "text": "line one\nline two\ttabbed \"quoted\" 'single' \\back\\slash: # not a comment - dash",
            "unicode": "Bücher 📚 ✓ 日本語 \u0000 nul, \u007f del, \u0085 nel, \u2028 ls, \u2029 ps, \ufeff bom",
            "leading space": " x", "trailing space": "x ", "colon: key": "- item",
            "nested": {{"a": {{"b": [1, {{"c": null}}, [], {{}}, [[["deep"]]]]}}}},
            "{long_key}": "long key"
        }}, "permissions": {{"read": ["system.Everyone"], "write": ["account:bob"]}}}}"#
    )
}

/// PUT of a raw JSON body as `user` (2xx expected).
async fn put_raw(kinto: &Kinto, user: &str, path: &str, body: String) {
    let r = reqwest::Client::new()
        .put(format!("{}{}", kinto.url, path.trim_start_matches('/')))
        .basic_auth(user, Some(PASSWORD))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert!(
        status.is_success(),
        "PUT {path}: {status} {}",
        r.text().await.unwrap()
    );
}

async fn put(kinto: &Kinto, user: &str, path: &str, body: Value) {
    kinto.ok(user, "PUT", path, Some(body)).await;
}

/// Three buckets of two accounts (one empty), groups, collections, records with and without
/// permissions, ids that look like other YAML types, and a deleted record and collection.
async fn content(kinto: &Kinto) {
    put(kinto, "alice", "/buckets/blog", json!({"data": {"title": "yes", "n": 1e3}, "permissions": {"read": ["account:bob", "system.Authenticated"]}})).await;
    put(
        kinto,
        "alice",
        "/buckets/blog/groups/editors",
        json!({"data": {"members": ["account:bob", "account:carol"], "note": "null"}, "permissions": {"read": ["system.Everyone"]}}),
    )
    .await;
    put(
        kinto,
        "alice",
        "/buckets/blog/groups/no",
        json!({"data": {"members": []}}),
    )
    .await;
    put(kinto, "alice", "/buckets/blog/collections/posts", json!({"data": {"sort": "-last_modified", "flag": "on"}, "permissions": {"record:create": ["/buckets/blog/groups/editors"]}})).await;
    for id in ["yes", "123", "null", "1e3", "true"] {
        put(
            kinto,
            "alice",
            &format!("/buckets/blog/collections/posts/records/{id}"),
            json!({"data": {"id_was": id}}),
        )
        .await;
    }
    put_raw(
        kinto,
        "alice",
        "/buckets/blog/collections/posts/records/tricky",
        tricky_record(),
    )
    .await;
    put(
        kinto,
        "alice",
        "/buckets/blog/collections/drafts",
        json!({"data": {}}),
    )
    .await;
    put(
        kinto,
        "alice",
        "/buckets/blog/collections/drafts/records/gone",
        json!({"data": {"x": 1}}),
    )
    .await;
    kinto
        .ok(
            "alice",
            "DELETE",
            "/buckets/blog/collections/drafts/records/gone",
            None,
        )
        .await;
    put(
        kinto,
        "alice",
        "/buckets/blog/collections/old",
        json!({"data": {}}),
    )
    .await;
    kinto
        .ok("alice", "DELETE", "/buckets/blog/collections/old", None)
        .await;
    put(
        kinto,
        "bob",
        "/buckets/2018-06-22",
        json!({"data": {"owner": "bob"}}),
    )
    .await;
    put(
        kinto,
        "bob",
        "/buckets/2018-06-22/collections/notes",
        json!({"data": {}, "permissions": {"read": ["account:alice"]}}),
    )
    .await;
    for i in 0..60 {
        put(
            kinto,
            "bob",
            &format!("/buckets/2018-06-22/collections/notes/records/n{i:02}"),
            json!({"data": {"i": i, "text": format!("note {i} ✓")}}),
        )
        .await;
    }
    put(kinto, "bob", "/buckets/empty", json!({"data": {}})).await;
}

/// The source: the kinto-tandem plugin records every permission.
async fn source() -> Kinto {
    Kinto::start(Options {
        plugin: true,
        ..Options::default()
    })
    .await
}

/// A Kinto that stores permissions as sent (`kinto.explicit_permissions = false`), so that the
/// loading account is not added to them, and where `admin` may create and write everything.
async fn target() -> Kinto {
    Kinto::start_with_settings(Options::default(), &restore_target_settings("admin")).await
}

/// Every object of the test's two members on `kinto`, as an independent client (kinto-http)
/// reads it: Kinto shows an object's permissions only to its writers, so each object is taken
/// from a member who sees them, when one does. `last_modified` is left out of the data.
fn objects(kinto: &Kinto) -> Vec<Value> {
    let mut by_path = std::collections::BTreeMap::new();
    for user in ["alice", "bob"] {
        for mut o in kinto.dump_with(user, &["--record-permissions"]) {
            o["data"].as_object_mut().unwrap().remove("last_modified");
            // Kinto lists principals in no particular order.
            if let Some(permissions) = o["permissions"].as_object_mut() {
                for principals in permissions.values_mut() {
                    principals
                        .as_array_mut()
                        .unwrap()
                        .sort_by_key(|p| p.to_string());
                }
            }
            let path = o["path"].as_str().unwrap().to_owned();
            let seen: &mut Value = by_path.entry(path).or_insert(Value::Null);
            if seen.is_null() || seen["permissions"].is_null() {
                *seen = o;
            }
        }
    }
    by_path.into_values().collect()
}

/// One record's data as Python's json writes it from `kinto` (kinto-http, as `user`): numbers
/// exact, keys sorted.
fn record_text(kinto: &Kinto, user: &str, path: &str) -> String {
    let mut cmd = Command::new(common::kinto::venv().join("bin/python"));
    cmd.args([
        "-c",
        "import json, sys; from kinto_http import Client; \
         _, b, _, c, _, r = sys.argv[4].strip('/').split('/'); \
         d = Client(server_url=sys.argv[1], auth=(sys.argv[2], sys.argv[3])).get_record(id=r, bucket=b, collection=c)['data']; \
         print(json.dumps(d, sort_keys=True))",
        &kinto.url,
        user,
        PASSWORD,
        path,
    ]);
    String::from_utf8(common::run(cmd, 0).stdout).unwrap()
}

/// The same, from the YAML file as ruamel.yaml (kinto-wizard's reader) reads it.
fn yaml_record_text(file: &Path, path: &str) -> String {
    let mut cmd = Command::new(common::kinto::venv().join("bin/python"));
    cmd.args([
        "-c",
        "import json, sys; from ruamel.yaml import YAML; \
         _, b, _, c, _, r = sys.argv[2].strip('/').split('/'); \
         y = YAML(typ='safe').load(open(sys.argv[1], encoding='ascii')); \
         print(json.dumps(y['buckets'][b]['collections'][c]['records'][r]['data'], sort_keys=True))",
        file.to_str().unwrap(),
        path,
    ]);
    String::from_utf8(common::run(cmd, 0).stdout).unwrap()
}

/// Runs `kinto-wizard ARGS` from the test virtualenv.
fn kinto_wizard(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(common::kinto::venv().join("bin/kinto-wizard"));
    cmd.args(args);
    common::run(cmd, 0)
}

/// `kinto-wizard load FILE` into `target` as `admin`.
fn load(target: &Kinto, file: &Path) {
    let auth = format!("admin:{PASSWORD}");
    kinto_wizard(&[
        "load",
        "-s",
        &target.url,
        "-a",
        &auth,
        file.to_str().unwrap(),
    ]);
}

/// The YAML file as ruamel.yaml (kinto-wizard's reader) reads it, as JSON.
fn read_yaml(file: &Path) -> Value {
    let mut cmd = Command::new(common::kinto::venv().join("bin/python"));
    cmd.args([
        "-c",
        "import json, sys; from ruamel.yaml import YAML; \
         print(json.dumps(YAML(typ='safe').load(open(sys.argv[1], encoding='utf-8'))))",
        file.to_str().unwrap(),
    ]);
    let out = common::run(cmd, 0);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A node following `kinto`, synced once.
fn follow(kinto: &Kinto) -> TestNode {
    let node = TestNode::new("home");
    node.configure("", &node.source(kinto, "1h"));
    node.init();
    common::tandem(&node.config_path(), &["sync"], 0);
    node
}

fn paths(objects: &[Value]) -> Vec<&str> {
    objects
        .iter()
        .map(|o| o["path"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kinto_wizard_loads_the_export_into_a_kinto_that_matches_the_source() {
    let kinto = source().await;
    content(&kinto).await;
    let node = follow(&kinto);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.yaml");
    let out = common::tandem(
        &node.config_path(),
        &[
            "export",
            "--format",
            "kinto-wizard",
            "--out",
            file.to_str().unwrap(),
        ],
        0,
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("exported 3 buckets, 2 groups, 3 collections and 66 records"),
        "{said}"
    );
    assert!(
        said.contains("left out what kinto-wizard cannot carry: ") && said.contains(" accounts"),
        "accounts: {said}"
    );
    assert!(std::fs::read(&file).unwrap().is_ascii());

    // Read by kinto-wizard's YAML reader, every value is the source's, to the last digit.
    let yaml = read_yaml(&file);
    let tricky_path = "/buckets/blog/collections/posts/records/tricky";
    let source_tricky = record_text(&kinto, "alice", tricky_path);
    assert_eq!(yaml_record_text(&file, tricky_path), source_tricky);
    // Kinto itself keeps integers up to 64 bits (wider ones become floats there).
    assert!(
        source_tricky.contains("18446744073709551615, -9223372036854775808"),
        "{source_tricky}"
    );
    assert_eq!(
        yaml["buckets"]["blog"]["collections"]["posts"]["records"]["tricky"]["permissions"],
        json!({"read": ["system.Everyone"], "write": ["account:alice", "account:bob"]})
    );
    // Nothing deleted travels: no tombstone, no deleted collection.
    let drafts = &yaml["buckets"]["blog"]["collections"]["drafts"];
    assert_eq!(drafts["records"], json!({}), "{drafts}");
    assert!(yaml["buckets"]["blog"]["collections"].get("old").is_none());
    assert_eq!(yaml["buckets"]["empty"]["collections"], json!({}));

    // Loaded by kinto-wizard into a fresh Kinto: the same objects, data and permissions.
    let target = target().await;
    load(&target, &file);
    let expected = objects(&kinto);
    let got = objects(&target);
    assert_eq!(paths(&got), paths(&expected));
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e, "{}", e["path"]);
    }
    // Values to the last digit; the timestamp kinto-wizard sent is the one the target kept.
    assert_eq!(record_text(&target, "alice", tricky_path), source_tricky);
}

#[tokio::test(flavor = "multi_thread")]
async fn bucket_and_collection_choose_what_is_exported() {
    let kinto = source().await;
    content(&kinto).await;
    let node = follow(&kinto);
    let dir = tempfile::tempdir().unwrap();
    let config = node.config_path();
    let file = dir.path().join("blog.yaml");
    common::tandem(
        &config,
        &[
            "export",
            "--format",
            "kinto-wizard",
            "--bucket",
            "blog",
            "--out",
            file.to_str().unwrap(),
        ],
        0,
    );
    let yaml = read_yaml(&file);
    let buckets: Vec<&String> = yaml["buckets"].as_object().unwrap().keys().collect();
    assert_eq!(buckets, ["blog"]);
    let target = target().await;
    load(&target, &file);
    let expected: Vec<Value> = objects(&kinto)
        .into_iter()
        .filter(|o| o["path"].as_str().unwrap().starts_with("/buckets/blog"))
        .collect();
    assert_eq!(objects(&target), expected);

    // One collection: it, its records and its bucket, none of the bucket's other children.
    let out = common::tandem(
        &config,
        &[
            "export",
            "--format",
            "kinto-wizard",
            "--collection",
            "2018-06-22/notes",
        ],
        0,
    );
    let file = dir.path().join("notes.yaml");
    std::fs::write(&file, &out.stdout).unwrap();
    let yaml = read_yaml(&file);
    let bucket = &yaml["buckets"]["2018-06-22"];
    assert_eq!(bucket["data"]["owner"], "bob");
    assert_eq!(
        bucket["collections"]["notes"]["records"]
            .as_object()
            .unwrap()
            .len(),
        60
    );

    // The same selection in JSON Lines; without one, every object, accounts included.
    let jsonl = |extra: &[&str]| -> Vec<Value> {
        let mut args = vec!["export", "--format", "jsonl"];
        args.extend_from_slice(extra);
        let out = common::tandem(&config, &args, 0);
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let blog = jsonl(&["--bucket", "blog"]);
    assert!(blog.iter().all(
        |o| o["path"].as_str().unwrap().starts_with("/buckets/blog/")
            || o["path"] == "/buckets/blog"
    ));
    assert_eq!(blog.len(), 1 + 2 + 2 + 6);
    let all = jsonl(&[]);
    assert!(all.len() > blog.len() + 62);
    assert!(all.iter().any(|o| o["path"] == "/accounts/alice"));

    // What the origin does not hold, and what is no id, are refused.
    let out = common::tandem(&config, &["export", "--bucket", "nope"], 1);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("holds no bucket \"nope\""), "{said}");
    let out = common::tandem(&config, &["export", "--collection", "blog/old"], 1);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("holds no collection blog/old"), "{said}");
    common::tandem(&config, &["export", "--collection", "blog"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_export_agrees_with_kinto_wizards_own_dump() {
    let kinto = source().await;
    content(&kinto).await;
    let node = follow(&kinto);
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.yaml");
    common::tandem(
        &node.config_path(),
        &[
            "export",
            "--format",
            "kinto-wizard",
            "--out",
            ours.to_str().unwrap(),
        ],
        0,
    );
    // kinto-wizard's dump of each bucket, as its owner (who sees its permissions).
    let mut theirs = json!({"buckets": {}});
    for (user, bucket) in [("alice", "blog"), ("bob", "2018-06-22"), ("bob", "empty")] {
        let auth = format!("{user}:{PASSWORD}");
        let dumped = kinto_wizard(&[
            "dump",
            "-s",
            &kinto.url,
            "-a",
            &auth,
            "-b",
            bucket,
            "--buckets",
            "--collections",
            "--groups",
            "--records",
            "--data",
            "--permissions",
        ]);
        let file = dir.path().join(format!("{bucket}.yaml"));
        std::fs::write(&file, &dumped.stdout).unwrap();
        theirs["buckets"][bucket] = read_yaml(&file)["buckets"][bucket].take();
    }
    let mut ours = read_yaml(&ours);
    // kinto-wizard's dump leaves records' permissions empty (it reads records in lists, which
    // do not carry them); tandem's export has them.
    for yaml in [&mut ours, &mut theirs] {
        for bucket in yaml["buckets"].as_object_mut().unwrap().values_mut() {
            for collection in bucket["collections"].as_object_mut().unwrap().values_mut() {
                for record in collection["records"].as_object_mut().unwrap().values_mut() {
                    record["permissions"] = json!({});
                }
            }
        }
    }
    assert_eq!(ours, theirs);
}
