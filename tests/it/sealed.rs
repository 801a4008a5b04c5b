//! Sealed origins end to end: a home node with `seal = true` follows a real Kinto server (with
//! the kinto-tandem plugin, on PostgreSQL) and pushes to a community node, which verifies,
//! snapshot-checks and serves the feed without being able to read a path or a value of it.
//! Then home is lost whole; with the passphrase, the node id and the community's URL,
//! `tandem recover` brings the key back, the feed comes back from the community, and a restore
//! gives a server whose tables equal the source's, permissions and accounts included.
//!
//! A laptop of the same person (`read = true` in home's `[[peer]]` for it) pulls home's feed
//! from the community and reads it: export, restore, a restore at an earlier seq, an archive
//! with the keys that opens on any node. Removed as a reader, it reads nothing written after.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tandem::keybackup::TEST_KDF_ENV;

use crate::common;
use crate::common::kinto::{Kinto, Options};
use crate::common::node::{NEVER, TestNode, wait_for};
use crate::common::restored::{assert_same_rows, users_data};

/// Strings that occur only in the source's paths and values: none may reach the community.
const SECRETS: &[&str] = &[
    "zebradiary",
    "quokkanotes",
    "marmoset whispers",
    "wallaby journal",
    "okapi-title",
    "account:bob",
];

const PASSPHRASE: &str = "lantern thistle copper meadow walrus";

async fn server() -> Kinto {
    Kinto::start(Options {
        plugin: true,
        postgres: true,
        accounts: Some(&["tandem"]),
        ..Options::default()
    })
    .await
}

/// `tandem --config CONFIG ARGS` with the key backup's test cost.
fn tandem(config: &Path, args: &[&str], code: i32) -> (String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("TANDEM_CONFIG")
        .env(TEST_KDF_ENV, "1");
    let out = common::run(cmd, code);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `tandem restore` on `node` of `origin` into `target` as its `tandem` account, with `extra`
/// arguments; its output.
fn restore_from(
    node: &TestNode,
    origin: &str,
    target: &Kinto,
    extra: &[&str],
    code: i32,
) -> String {
    let mut args = vec!["--origin", origin];
    args.extend_from_slice(extra);
    common::restore(
        &node.config_path(),
        node.dir.path(),
        target,
        "tandem",
        &args,
        code,
    )
}

/// Every file under `dir`, recursively, with its bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap_or_default()));
        }
    }
    out
}

fn found_in(bytes: &[u8], secret: &str) -> bool {
    bytes.windows(secret.len()).any(|w| w == secret.as_bytes())
}

/// Alice writes note `id` with `text` in her diary collection.
async fn note(a: &Kinto, id: &str, text: &str) {
    a.ok(
        "alice",
        "PUT",
        &format!("buckets/zebradiary/collections/quokkanotes/records/{id}"),
        Some(json!({"data": {"text": text}})),
    )
    .await;
}

/// A source where alice and bob keep what [`SECRETS`] names, in their own bucket, shared
/// with each other, and in bob's default bucket.
async fn seeded() -> Kinto {
    let a = server().await;
    for user in ["alice", "bob"] {
        a.create_account(user).await;
    }
    a.ok(
        "alice",
        "PUT",
        "buckets/zebradiary",
        Some(json!({"data": {"title": "okapi-title"}, "permissions": {"read": ["account:bob"]}})),
    )
    .await;
    a.ok(
        "alice",
        "PUT",
        "buckets/zebradiary/collections/quokkanotes",
        Some(json!({"data": {}})),
    )
    .await;
    for (id, text) in [
        ("n1", "marmoset whispers"),
        ("n2", "gone soon"),
        ("n3", "stays"),
    ] {
        note(&a, id, text).await;
    }
    a.ok(
        "alice",
        "DELETE",
        "buckets/zebradiary/collections/quokkanotes/records/n2",
        None,
    )
    .await;
    a.ok(
        "bob",
        "PUT",
        "buckets/default/collections/diary/records/d1",
        Some(json!({"data": {"text": "wallaby journal"}})),
    )
    .await;
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_home_is_held_unread_and_comes_back_whole() {
    let a = seeded().await;

    let (mut home, mut community) = (TestNode::new("home"), TestNode::new("community"));
    home.configure(
        "seal = true\n",
        &format!(
            "{}{}",
            home.source(&a, "1h"),
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
    let home_id = home.id;
    assert!(home.head(home_id) > 0);
    tandem(&home.config_path(), &["snapshot", "create"], 0);
    let answer = home.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    wait_for(Duration::from_secs(30), "the community copy", || {
        community.head(home_id) == home.head(home_id)
            && !community.store().snapshots(home_id).unwrap().is_empty()
    })
    .await;

    // Home reads its own feed in source paths.
    let (exported, _) = tandem(&home.config_path(), &["export", "--origin", "self"], 0);
    assert!(exported.contains("marmoset whispers"), "{exported}");
    let status = home.status();
    let own = common::node::origin_status(&status, &home_id.to_string());
    assert_eq!(own["sealed_from"], 1, "{own}");

    // The community verifies and snapshot-checks what it cannot read, and nothing of it is
    // readable in any of its files (database and WAL), or in what it serves.
    community.stop().await;
    let (out, _) = tandem(&community.config_path(), &["verify"], 0);
    assert!(out.contains(&format!("{home_id}: ok")), "{out}");
    let (out, _) = tandem(&community.config_path(), &["snapshot", "verify"], 0);
    assert!(out.contains("1 snapshot(s) checked, 0 failed"), "{out}");
    let held = files(community.dir.path());
    assert!(held.iter().map(|(_, b)| b.len()).sum::<usize>() > 10_000);
    for (path, bytes) in &held {
        for secret in SECRETS {
            assert!(!found_in(bytes, secret), "{secret} in {}", path.display());
        }
    }
    let archive = community.dir.path().join("home.tandem");
    tandem(
        &community.config_path(),
        &[
            "export",
            "--origin",
            &home_id.to_string(),
            "--archive",
            archive.to_str().unwrap(),
        ],
        0,
    );
    let archive = std::fs::read(&archive).unwrap();
    for secret in SECRETS {
        assert!(
            !found_in(&archive, secret),
            "{secret} in the archive it serves"
        );
    }
    // A restore from there is refused, and says why; its drills leave the feed to the
    // origin and its readers, rather than fail at every round.
    let target = server().await;
    let out = restore_from(&community, &home_id.to_string(), &target, &[], 1);
    assert!(out.contains("is sealed"), "{out}");
    let community_config = std::fs::read_to_string(community.config_path()).unwrap();
    std::fs::write(
        community.config_path(),
        format!(
            "{community_config}\n[drill]\n{NEVER}\nto = \"{}\"\nuser = \"tandem\"\npassword_file = \"pw\"\n",
            target.url
        ),
    )
    .unwrap();
    let (out, _) = tandem(&community.config_path(), &["drill"], 0);
    assert!(out.contains("nothing to drill"), "{out}");
    std::fs::write(community.config_path(), community_config).unwrap();
    community.start().await;

    // Home's key goes to the community under a passphrase; then home is lost whole.
    let pass = home.dir.path().join("passphrase");
    common::write_secret(&pass, format!("{PASSPHRASE}\n"));
    tandem(
        &home.config_path(),
        &["key", "backup", "--passphrase-file", pass.to_str().unwrap()],
        0,
    );
    home.stop().await;
    // Unsealing is refused as a configuration error, which systemd does not restart on.
    let sealed_config = std::fs::read_to_string(home.config_path()).unwrap();
    std::fs::write(
        home.config_path(),
        sealed_config.replacen("seal = true", "seal = false", 1),
    )
    .unwrap();
    for command in ["run", "sync"] {
        let (_, err) = tandem(&home.config_path(), &[command], 78);
        assert!(err.contains("cannot be unsealed"), "{err}");
    }
    std::fs::write(home.config_path(), sealed_config).unwrap();
    let a_tables = users_data(a.database());
    let kept = tempfile::tempdir().unwrap();
    let kept_pass = kept.path().join("passphrase");
    common::write_secret(&kept_pass, format!("{PASSPHRASE}\n"));
    drop(home);

    // A blank machine: the passphrase, the id and the community's URL bring it all back.
    let blank = tempfile::tempdir().unwrap();
    let (config, data) = (blank.path().join("tandem.toml"), blank.path().join("data"));
    let (out, _) = tandem(
        &config,
        &[
            "recover",
            "--peer",
            &community.url(),
            "--id",
            &home_id.to_string(),
            "--data-dir",
            data.to_str().unwrap(),
            "--passphrase-file",
            kept_pass.to_str().unwrap(),
        ],
        0,
    );
    assert!(out.contains("recovered the key of node"), "{out}");
    let (out, _) = tandem(&config, &["sync"], 0);
    assert!(
        out.contains("recovery: ")
            && out.contains("entries of this node's feed from peer community"),
        "{out}"
    );
    let (again, _) = tandem(&config, &["export", "--origin", "self"], 0);
    assert_eq!(again, exported);
    let (status, _) = tandem(&config, &["status", "--json"], 0);
    let status: Value = serde_json::from_str(&status).unwrap();
    let own = common::node::origin_status(&status, &home_id.to_string());
    assert_eq!(own["sealed_from"], 1, "as before the loss: {own}");
    let b = server().await;
    common::restore(
        &config,
        blank.path(),
        &b,
        "tandem",
        &["--origin", "self"],
        0,
    );
    let b_tables = users_data(b.database());
    assert_same_rows(&a_tables, &b_tables, ("A", "B"));
    assert_eq!(
        b.request("bob", "GET", "", None).await.1["user"]["id"],
        "account:bob",
        "bob logs in with the old password"
    );
    community.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_laptop_that_may_read_restores_what_the_community_holds_unread_until_removed() {
    let a = seeded().await;
    // Home pushes to the community, which serves home's feed to the laptop, which pulls it.
    let (mut home, mut community, mut laptop) = common::node::relay_trio("seal = true\n", "");
    let home_id = home.id.to_string();
    // Home also follows the source, and names the laptop: its `read` on or off.
    let home_config = format!(
        "{}{}{}",
        home.source(&a, "1h"),
        TestNode::peer_entry(&community, &format!("push = [\"self\"]\n{NEVER}")),
        TestNode::peer_entry(&laptop, &format!("read = true\n{NEVER}")),
    );
    let home_config =
        |laptop_reads: bool| home_config.replace("read = true", &format!("read = {laptop_reads}"));
    home.configure("seal = true\n", &home_config(true));
    community.start().await;
    home.start().await;
    laptop.start().await;
    let sync = async |node: &mut TestNode| {
        let answer = node.sync().await;
        for peer in answer["peers"].as_array().unwrap() {
            assert_eq!(peer["error"], Value::Null, "{answer}");
        }
    };
    sync(&mut home).await;
    sync(&mut laptop).await;
    let first = home.head(home.id);
    assert_eq!(laptop.head(home.id), first);
    let a_first = users_data(a.database());

    // Status says who may read, and who holds without reading.
    let of = |node: &TestNode| common::node::origin_status(&node.status(), &home_id).clone();
    let (at_home, at_community, at_laptop) = (of(&home), of(&community), of(&laptop));
    assert_eq!(at_home["readers"], json!({"epoch": 0, "ids": [laptop.id]}));
    assert_eq!(at_community["readers"], at_home["readers"]);
    assert_eq!(at_community["unread"], true, "{at_community}");
    assert_eq!(at_laptop["unread"], Value::Null, "{at_laptop}");
    assert_eq!(at_home["unread"], Value::Null, "{at_home}");

    // The laptop reads what the community only holds.
    let home_export = home.export_origin("self");
    let laptop_export = laptop.export_origin(&home_id);
    assert_eq!(laptop_export, home_export);
    assert!(laptop_export.contains("marmoset whispers"));
    let out = restore_from(&community, &home_id, &server().await, &[], 1);
    assert!(out.contains("is sealed"), "{out}");
    for (path, bytes) in files(community.dir.path()) {
        for secret in SECRETS {
            assert!(!found_in(&bytes, secret), "{secret} in {}", path.display());
        }
    }
    // An archive with the keys: any node that imports it reads it.
    let archive = laptop.dir.path().join("home.tandem");
    let (out, err) = tandem(
        &laptop.config_path(),
        &[
            "export",
            "--origin",
            &home_id,
            "--archive",
            archive.to_str().unwrap(),
            "--decrypt",
        ],
        0,
    );
    assert!(out.contains("with the content keys"), "{out}");
    assert!(
        err.contains("also open what") && err.contains("tandem key rotate"),
        "{err}"
    );
    assert_eq!(common::mode(&archive), 0o600, "whoever holds it reads it");
    let (_, err) = tandem(
        &community.config_path(),
        &[
            "export",
            "--origin",
            &home_id,
            "--archive",
            archive.with_extension("no").to_str().unwrap(),
            "--decrypt",
        ],
        1,
    );
    assert!(err.contains("is sealed"), "{err}");
    let elsewhere = TestNode::new("elsewhere");
    elsewhere.configure("", "");
    elsewhere.init();
    let (out, _) = tandem(
        &elsewhere.config_path(),
        &["import", archive.to_str().unwrap()],
        0,
    );
    assert!(out.contains("opened with the content keys"), "{out}");
    let (elsewhere_export, _) = tandem(
        &elsewhere.config_path(),
        &["export", "--origin", &home_id],
        0,
    );
    assert_eq!(elsewhere_export, home_export);
    // The origin's own archive with the keys: a new epoch starts first (through the running
    // daemon), so that the file opens what it carries and nothing sealed after; the laptop is
    // granted the new key and reads on.
    let own = home.dir.path().join("own.tandem");
    let (out, err) = tandem(
        &home.config_path(),
        &["export", "--archive", own.to_str().unwrap(), "--decrypt"],
        0,
    );
    assert!(out.contains("with the content keys"), "{out}");
    assert!(err.contains("started key epoch 1"), "{err}");
    assert_eq!(common::mode(&own), 0o600);
    assert_eq!(
        of(&home)["readers"],
        json!({"epoch": 1, "ids": [laptop.id]})
    );
    let again = TestNode::new("again");
    again.configure("", "");
    again.init();
    tandem(&again.config_path(), &["import", own.to_str().unwrap()], 0);
    let (again_export, _) = tandem(&again.config_path(), &["export", "--origin", &home_id], 0);
    assert_eq!(again_export, home.export_origin("self"));

    // Later changes; then the laptop restores the latest state, and the state at `first`.
    note(&a, "n4", "gibbon later").await;
    sync(&mut home).await;
    sync(&mut laptop).await;
    let latest = server().await;
    restore_from(&laptop, &home_id, &latest, &[], 0);
    assert_same_rows(
        &users_data(a.database()),
        &users_data(latest.database()),
        ("the source", "the restore"),
    );
    let earlier = server().await;
    restore_from(
        &laptop,
        &home_id,
        &earlier,
        &["--seq", &first.to_string()],
        0,
    );
    assert_same_rows(
        &a_first,
        &users_data(earlier.database()),
        ("the source then", "the restore at that seq"),
    );

    // The laptop is removed: home starts a new epoch, and what follows is shut to it.
    home.stop().await;
    home.configure("seal = true\n", &home_config(false));
    home.start().await;
    note(&a, "n5", "capybara after").await;
    sync(&mut home).await;
    sync(&mut laptop).await;
    assert_eq!(laptop.head(home.id), home.head(home.id));
    let (_, err) = tandem(&laptop.config_path(), &["export", "--origin", &home_id], 1);
    assert!(err.contains("is sealed"), "{err}");
    let at_laptop = of(&laptop);
    assert_eq!(at_laptop["readers"], json!({"epoch": 2, "ids": []}));
    assert_eq!(at_laptop["unread"], true, "{at_laptop}");
    laptop.stop().await;
    // What the laptop was granted before opens nothing written after: it finds the old grant
    // in the feed it holds, and every later sealed entry names an epoch it has no key for.
    let held = laptop.store();
    let (mut grants, mut after_rotation, mut refused) = (Vec::new(), None, 0);
    let laptop_key = tandem::identity::NodeKey::load(&laptop.data().join("node.key")).unwrap();
    for e in held
        .entries_after(home.id, tandem::feed::Seq(0), usize::MAX)
        .unwrap()
    {
        let entry = tandem::feed::decode_entry(&e.bytes).unwrap();
        if entry.path == tandem::seal::READERS_PATH {
            let readers = tandem::seal::Readers::parse(entry.body).unwrap();
            match tandem::seal::Ring::from_grant(home.id, &readers, &laptop_key).unwrap() {
                Some(ring) => grants.push(ring),
                None => after_rotation = Some(e.seq),
            }
        } else if after_rotation.is_some()
            && tandem::seal::is_sealed(entry.path)
            && !entry.body.is_empty()
        {
            let ring = grants.last().expect("granted before");
            match ring.open_entry(&entry) {
                Err(tandem::seal::SealError::UnknownEpoch { epoch: 2 }) => refused += 1,
                other => panic!("seq {}: {other:?}", e.seq),
            }
        }
    }
    assert!(refused > 0, "sealed entries after the rotation: none found");
    for (path, bytes) in files(laptop.dir.path()) {
        assert!(!found_in(&bytes, "capybara after"), "in {}", path.display());
    }
    assert!(home.export_origin("self").contains("capybara after"));
    home.stop().await;
    // With the daemon stopped, `key rotate` writes the new epoch itself.
    let (out, _) = tandem(&home.config_path(), &["key", "rotate"], 0);
    assert!(out.contains("sealing under key epoch 3"), "{out}");
    assert_eq!(of(&home)["readers"], json!({"epoch": 3, "ids": []}));
    community.stop().await;
}
