//! Key backups: a node's key stored under a passphrase at the peer that holds its feed, and
//! the node brought back on a blank machine from the passphrase, its id and the peer's URL
//! alone (`tandem key backup`, `tandem recover`). Daemons run in-process on real sockets; the
//! commands run as processes of the real binary.
//!
//! The commands derive their keys with the test parameters ([`TEST_KDF_ENV`], honoured by a
//! debug build only), so that each derivation takes milliseconds instead of a second.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tandem::identity::{NodeId, NodeKey};
use tandem::keybackup::{self, BackupKeys, Kdf, TEST_KDF_ENV};
use tandem::protocol::signature::{self, Outgoing};

use crate::common;
use crate::common::node::{NEVER, TestNode, wait_for};

const PASSPHRASE: &str = "plinth acorn gravel mustard orbit fennel";

/// The parameters the commands use under [`TEST_KDF_ENV`]: the test ones in a debug build;
/// a release build ignores the variable and derives with the real ones.
fn kdf() -> Kdf {
    #[cfg(debug_assertions)]
    {
        keybackup::TEST
    }
    #[cfg(not(debug_assertions))]
    {
        keybackup::V1
    }
}

/// `tandem --config CONFIG ARGS` with the test parameters; panics unless it exits with `code`.
fn tandem(config: &Path, args: &[&str], code: i32) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("TANDEM_CONFIG")
        .env(TEST_KDF_ENV, "1");
    common::run(cmd, code)
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A passphrase file (mode 0600) in `dir`.
fn passphrase_file(dir: &Path, name: &str, passphrase: &str) -> PathBuf {
    let path = dir.join(name);
    common::write_secret(&path, format!("{passphrase}\n"));
    path
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(files_under(&path));
                found.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A home node that pushes its feed to a community node, both configured and initialized,
/// the community started. Home's key backup is stored at the community under [`PASSPHRASE`].
async fn backed_up() -> (TestNode, TestNode, PathBuf) {
    let (home, mut community) = common::node::backup_pair(None);
    community.start().await;
    let pass = passphrase_file(home.dir.path(), "passphrase", PASSPHRASE);
    let out = tandem(
        &home.config_path(),
        &["key", "backup", "--passphrase-file", pass.to_str().unwrap()],
        0,
    );
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains(
            "peer community: key backup stored, fetched back with the passphrase and opened"
        ),
        "{stdout}"
    );
    let stored = community
        .store()
        .key_backup(home.id)
        .unwrap()
        .expect("stored");
    assert_eq!(stored.version, kdf().version);
    assert_eq!(stored.blob.len(), keybackup::BLOB_LEN);
    (home, community, pass)
}

/// A blank machine: a directory with nothing in it, and where `recover` would put things.
struct Blank {
    dir: tempfile::TempDir,
}

impl Blank {
    fn new() -> Blank {
        Blank {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn config(&self) -> PathBuf {
        self.dir.path().join("etc").join("tandem.toml")
    }
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    /// `tandem recover`, reading the passphrase from `pass`.
    fn recover(&self, peer: &TestNode, id: NodeId, pass: &Path, code: i32) -> (String, String) {
        let (url, id) = (peer.url(), id.to_string());
        text(&tandem(
            &self.config(),
            &[
                "recover",
                "--peer",
                &url,
                "--id",
                &id,
                "--data-dir",
                self.data().to_str().unwrap(),
                "--passphrase-file",
                pass.to_str().unwrap(),
            ],
            code,
        ))
    }
    /// Whether nothing was written: no configuration, no data directory.
    fn untouched(&self) -> bool {
        files_under(self.dir.path()).is_empty()
    }
}

/// The whole story: a backup, the loss of everything, `tandem recover` on a blank machine with
/// the passphrase, the id and the peer's URL, and the feed back whole from the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_loss_comes_back_from_one_passphrase() {
    let (mut home, mut community) = common::node::backup_pair(None);
    home.append(500, "r");
    community.start().await;
    home.start().await;
    home.sync().await;
    let head = home.store().head(home.id).unwrap().expect("a feed");
    assert_eq!(head.seq.0, 500);
    wait_for(
        Duration::from_secs(30),
        "home's feed at the community",
        || community.head(home.id) == 500,
    )
    .await;
    let exported = home.export_origin("self");

    let pass = passphrase_file(home.dir.path(), "passphrase", PASSPHRASE);
    tandem(
        &home.config_path(),
        &["key", "backup", "--passphrase-file", pass.to_str().unwrap()],
        0,
    );
    home.stop().await;

    // Everything of home is lost: its data directory (key and store) and its configuration.
    // What its operator kept: the passphrase, the node id and the community's URL.
    let id = home.id;
    let kept = tempfile::tempdir().unwrap();
    let pass = passphrase_file(kept.path(), "passphrase", PASSPHRASE);
    std::fs::remove_dir_all(home.data()).unwrap();
    std::fs::remove_file(home.config_path()).unwrap();

    let blank = Blank::new();
    let (stdout, _) = blank.recover(&community, id, &pass, 0);
    assert_eq!(
        stdout.lines().last(),
        Some(id.to_string().as_str()),
        "{stdout}"
    );
    assert!(stdout.contains("recovered the key of node"), "{stdout}");
    // The key file is the node's, private; the configuration names the community.
    let key_path = blank.data().join("node.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_path).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(NodeKey::load(&key_path).unwrap().id(), id);
    let config = tandem::config::Config::load(&blank.config()).unwrap();
    assert_eq!(config.node.data_dir, blank.data());
    assert_eq!(config.peers.len(), 1);
    assert_eq!(config.peers[0].id, community.id);
    assert_eq!(config.peers[0].name, "community");
    let status = common::tandem(&blank.config(), &["status", "--json"], 0);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["node"]["recovering"], true, "{status}");

    // One round brings the whole feed back: the same head, the same state.
    let out = tandem(&blank.config(), &["sync"], 0);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("peer community"), "{stdout}");
    let store = tandem::store::Store::open_read_only(&blank.data()).unwrap();
    assert_eq!(store.head(id).unwrap(), Some(head));
    assert!(!store.recovering().unwrap());
    drop(store);
    let out = common::tandem(&blank.config(), &["export", "--origin", "self"], 0);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), exported);
    community.stop().await;
}

/// A wrong passphrase, an id without a backup, a data directory that is not blank: each a
/// clear error, and nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_passphrase_gets_nothing_and_writes_nothing() {
    let (home, mut community, pass) = backed_up().await;
    let blank = Blank::new();
    let wrong = passphrase_file(
        home.dir.path(),
        "wrong",
        "plinth acorn gravel mustard orbit fennel!",
    );
    let (_, stderr) = blank.recover(&community, home.id, &wrong, 1);
    assert!(
        stderr.contains("tandem recover wrote nothing")
            && stderr.contains("the passphrase is wrong"),
        "{stderr}"
    );
    assert!(blank.untouched(), "{:?}", files_under(blank.dir.path()));

    // The right passphrase for an id the community keeps no backup of: the same answer
    // (the community does not tell a stranger which ids it keeps backups of).
    let other = NodeKey::from_seed([42; 32]).id();
    let (_, stderr) = blank.recover(&community, other, &pass, 1);
    assert!(stderr.contains("holds no key backup of node"), "{stderr}");
    assert!(blank.untouched());

    // A machine that already has a key is not blank: refused before the passphrase is used.
    let used = Blank::new();
    std::fs::create_dir_all(used.data()).unwrap();
    NodeKey::from_seed([7; 32])
        .write_new(&used.data().join("node.key"))
        .unwrap();
    let (_, stderr) = used.recover(&community, home.id, &pass, 1);
    assert!(stderr.contains("a node key already exists"), "{stderr}");
    assert!(!used.config().exists());

    // And the right passphrase still works after all that.
    let (stdout, _) = blank.recover(&community, home.id, &pass, 0);
    assert_eq!(stdout.lines().last(), Some(home.id.to_string().as_str()));
    community.stop().await;
}

/// A stored backup altered at the holder (one byte of its row): the proof still holds, the
/// decryption does not; a clear error, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_backup_is_a_clear_error() {
    let (home, mut community, pass) = backed_up().await;
    community.stop().await;
    {
        let conn = rusqlite::Connection::open(community.data().join("tandem.db")).unwrap();
        let mut blob: Vec<u8> = conn
            .query_row("SELECT blob FROM key_backups", [], |r| r.get(0))
            .unwrap();
        blob[40] ^= 0x01;
        assert_eq!(
            conn.execute("UPDATE key_backups SET blob = ?1", [blob])
                .unwrap(),
            1
        );
    }
    community.start().await;
    let blank = Blank::new();
    let (_, stderr) = blank.recover(&community, home.id, &pass, 1);
    assert!(
        stderr.contains("does not decrypt") && stderr.contains("altered or damaged"),
        "{stderr}"
    );
    assert!(blank.untouched(), "{:?}", files_under(blank.dir.path()));
    community.stop().await;
}

/// A weak passphrase is refused with the reason, and nothing is stored; so is a node without
/// a peer that holds its feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weak_passphrase_is_refused() {
    let (home, mut community) = common::node::backup_pair(None);
    community.start().await;
    for weak in ["password123", "home-community", "Tandem2026!"] {
        let pass = passphrase_file(home.dir.path(), "weak", weak);
        let out = tandem(
            &home.config_path(),
            &["key", "backup", "--passphrase-file", pass.to_str().unwrap()],
            1,
        );
        let (_, stderr) = text(&out);
        assert!(
            stderr.contains("too weak") && stderr.contains("nothing was stored"),
            "{weak}: {stderr}"
        );
    }
    assert_eq!(community.store().key_backup(home.id).unwrap(), None);

    let lonely = TestNode::new("lonely");
    lonely.configure("", "");
    lonely.init();
    let pass = passphrase_file(lonely.dir.path(), "passphrase", PASSPHRASE);
    let out = tandem(
        &lonely.config_path(),
        &["key", "backup", "--passphrase-file", pass.to_str().unwrap()],
        1,
    );
    assert!(
        text(&out).1.contains("holds this node's feed"),
        "{:?}",
        text(&out)
    );
    community.stop().await;
}

/// POSTs `body` to the fetch route of `node` for `id`; returns status, body and headers.
async fn fetch_raw(
    node: &TestNode,
    id: &str,
    body: Vec<u8>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let http = tandem::net::client_builder().build().unwrap();
    let response = http
        .post(format!("{}v1/key-backup/{id}", node.url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, headers)
}

fn proof_body(keys: &BackupKeys, created: i64) -> Vec<u8> {
    serde_json::to_vec(&keys.fetch_request(created)).unwrap()
}

/// Whoever knows only the id and the URL gets nothing: no proof, a made-up proof, a proof for
/// another passphrase, a replayed proof and an unknown id all get the same answer; a stale
/// proof and an oversized body are refused on their face; failures are limited per id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_fetch_a_backup() {
    let (home, mut community, _pass) = backed_up().await;
    let id = home.id.to_string();
    let unknown = NodeKey::from_seed([43; 32]).id().to_string();
    let right = BackupKeys::derive(kdf(), PASSPHRASE.as_bytes(), home.id);
    let wrong = BackupKeys::derive(kdf(), b"guess", home.id);

    // Nothing that parses as a fetch: refused on its face, not counted.
    let (status, _, _) = fetch_raw(&community, &id, Vec::new()).await;
    assert_eq!(status, 400);
    let (status, _, _) = fetch_raw(&community, &id, vec![b' '; 10_000]).await;
    assert_eq!(status, 413);
    // A proof made long ago (or by a machine with a wrong clock): refused, naming the clocks.
    let (status, body, _) = fetch_raw(&community, &id, proof_body(&right, now() - 3_600)).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("clock"), "{body}");

    // A proof by another passphrase and any proof for an unknown id: one and the same answer.
    let (status, refused, _) = fetch_raw(&community, &id, proof_body(&wrong, now())).await;
    assert_eq!(status, 404);
    assert_eq!(refused["error"], keybackup::NO_BACKUP);
    let stranger = BackupKeys::derive(kdf(), PASSPHRASE.as_bytes(), unknown.parse().unwrap());
    let (status, body, _) = fetch_raw(&community, &unknown, proof_body(&stranger, now())).await;
    assert_eq!((status, &body), (404, &refused));
    let (status, body, _) =
        fetch_raw(&community, "ed25519:nonsense", proof_body(&right, now())).await;
    assert_eq!((status, &body), (404, &refused));

    // The right proof gets the backup once; the same request again gets nothing.
    let valid = proof_body(&right, now());
    let (status, body, _) = fetch_raw(&community, &id, valid.clone()).await;
    assert_eq!(status, 200, "{body}");
    let doc: keybackup::BackupDoc = serde_json::from_value(body).unwrap();
    assert_eq!((doc.origin, doc.holder), (home.id, community.id));
    let blob = keybackup::decode_bounded(&doc.blob, keybackup::MAX_BLOB, "blob").unwrap();
    assert_eq!(right.open(doc.version, &blob).unwrap().id(), home.id);
    let (status, body, _) = fetch_raw(&community, &id, valid).await;
    assert_eq!((status, &body), (404, &refused));

    // Two failures so far for home's id (the wrong passphrase, the replay); three more, and
    // then even the right proof must wait.
    for _ in 0..3 {
        let (status, _, _) = fetch_raw(&community, &id, proof_body(&wrong, now())).await;
        assert_eq!(status, 404);
    }
    let (status, body, headers) = fetch_raw(&community, &id, proof_body(&right, now())).await;
    assert_eq!(status, 429, "{body}");
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Another id is not held back by home's failures.
    let (status, _, _) = fetch_raw(&community, &unknown, proof_body(&stranger, now())).await;
    assert_eq!(status, 404);
    // The blob and the proofs never reach the logs of the holder: nothing to check here but
    // that the counters say what happened.
    let metrics = community.metrics().await;
    assert!(
        metrics.contains("reason=\"key_backup_proof\"")
            && metrics.contains("reason=\"key_backup_limited\""),
        "{metrics}"
    );
    community.stop().await;
}

/// PUT a key backup document for `origin` at `node`, signed by `key` (or not signed).
async fn upload_raw(
    node: &TestNode,
    origin: NodeId,
    key: Option<&NodeKey>,
    body: Vec<u8>,
) -> (u16, Value) {
    let http = tandem::net::client_builder().build().unwrap();
    let path = format!("/v1/origins/{origin}/key-backup");
    let mut request = http.put(format!("http://{}{path}", node.addr));
    if let Some(key) = key {
        let outgoing = Outgoing {
            target: node.id,
            method: "PUT",
            path: &path,
            query: None,
        };
        for (name, value) in signature::sign(key, &outgoing, &body, now()).pairs() {
            request = request.header(name, value);
        }
    }
    let response = request.body(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Only an origin stores its own backup, only where its feed is kept, and only a small one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_origin_stores_its_backup_where_its_feed_is() {
    let (home, mut community) = common::node::backup_pair(None);
    let laptop = TestNode::new("laptop");
    // The community knows the laptop, and keeps nothing of it.
    community.configure(
        "",
        &format!(
            "{}{}",
            TestNode::peer_entry(&home, NEVER),
            TestNode::peer_entry(&laptop, &format!("accept = []\n{NEVER}"))
        ),
    );
    community.start().await;
    let keys = BackupKeys::derive(kdf(), PASSPHRASE.as_bytes(), home.id);
    let doc = |key: &NodeKey| {
        serde_json::to_vec(&keybackup::UploadDoc {
            version: keys.version(),
            fetch_key: keybackup::encode(&keys.fetch_public()),
            blob: keybackup::encode(&keys.seal(key)),
        })
        .unwrap()
    };
    let body = doc(&home.key());
    // Unsigned: 401. Signed by another known peer for home's origin: 403.
    let (status, _) = upload_raw(&community, home.id, None, body.clone()).await;
    assert_eq!(status, 401);
    let (status, answer) = upload_raw(&community, home.id, Some(&laptop.key()), body.clone()).await;
    assert_eq!(status, 403, "{answer}");
    // The laptop's own backup, at a node that keeps nothing of the laptop: 403.
    let (status, answer) =
        upload_raw(&community, laptop.id, Some(&laptop.key()), body.clone()).await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("does not hold"),
        "{answer}"
    );
    // Larger than the bound: 413, whoever signs it.
    let (status, _) = upload_raw(&community, home.id, Some(&home.key()), vec![b' '; 2_000]).await;
    assert_eq!(status, 413);
    // A fetch key that is no key: 400.
    let mut bad: Value = serde_json::from_slice(&body).unwrap();
    bad["fetch_key"] = Value::from(keybackup::encode(&[0; 32]));
    let (status, _) = upload_raw(
        &community,
        home.id,
        Some(&home.key()),
        serde_json::to_vec(&bad).unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(community.store().key_backup(home.id).unwrap(), None);
    assert_eq!(community.store().key_backup(laptop.id).unwrap(), None);
    // Home's own, signed by home: stored.
    let (status, answer) = upload_raw(&community, home.id, Some(&home.key()), body).await;
    assert_eq!(status, 200, "{answer}");
    let stored = community.store().key_backup(home.id).unwrap().unwrap();
    assert_eq!(stored.fetch_key, keys.fetch_public());
    community.stop().await;
}

/// With a configuration already in place (say, from the operator's own notes), `recover`
/// uses it as it is: it must name the peer, and it is not rewritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_uses_an_existing_configuration() {
    let (home, mut community, pass) = backed_up().await;
    let blank = Blank::new();
    std::fs::create_dir_all(blank.config().parent().unwrap()).unwrap();
    let without = format!(
        "[node]\nname = \"home\"\ndata_dir = {:?}\n",
        blank.data().to_str().unwrap()
    );
    std::fs::write(blank.config(), &without).unwrap();
    let (_, stderr) = blank.recover(&community, home.id, &pass, 1);
    assert!(
        stderr.contains("has no [[peer]] with id") && stderr.contains("wrote nothing"),
        "{stderr}"
    );
    assert!(!blank.data().exists());
    assert_eq!(std::fs::read_to_string(blank.config()).unwrap(), without);

    let with = format!(
        "{without}{}",
        TestNode::peer_entry(&community, "push = [\"self\"]")
    );
    std::fs::write(blank.config(), &with).unwrap();
    let (stdout, _) = blank.recover(&community, home.id, &pass, 0);
    assert!(!stdout.contains("wrote the configuration"), "{stdout}");
    assert_eq!(std::fs::read_to_string(blank.config()).unwrap(), with);
    assert_eq!(
        NodeKey::load(&blank.data().join("node.key")).unwrap().id(),
        home.id
    );
    assert!(
        tandem::store::Store::open_read_only(&blank.data())
            .unwrap()
            .recovering()
            .unwrap()
    );
    community.stop().await;
}
