//! The peer API of a running daemon (a real process on a real socket): authentication by RFC
//! 9421 signatures, authorization by the configuration's `serve` lists.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use tandem::feed::{Checkpoint, EntryHash, Op, Seq};
use tandem::identity::NodeKey;
use tandem::protocol::signature;
use tandem::store::{Change, Store};

struct Daemon {
    child: Child,
    addr: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A community node that serves its own feed to `home` and nothing to `neighbour`.
fn start(dir: &std::path::Path, home: &NodeKey, neighbour: &NodeKey) -> (Daemon, NodeKey) {
    let config = dir.join("tandem.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"community\"\ndata_dir = \"data\"\nlisten = \"127.0.0.1:0\"\n\
             [[peer]]\nname = \"home\"\nurl = \"http://127.0.0.1:9/\"\nid = \"{}\"\nserve = [\"self\"]\nschedule = \"0 0 1 1 *\"\n\
             [[peer]]\nname = \"neighbour\"\nurl = \"http://127.0.0.1:9/\"\nid = \"{}\"\nschedule = \"0 0 1 1 *\"\n",
            home.id(),
            neighbour.id()
        ),
    )
    .unwrap();
    common::tandem(&config, &["init"], 0);
    let key = NodeKey::load(&dir.join("data/node.key")).unwrap();
    {
        let mut store = Store::open_writer(&dir.join("data"), key.id()).unwrap();
        let changes: Vec<Change> = (0..5)
            .map(|i| Change {
                op: Op::Put,
                path: format!("/buckets/b{i}"),
                body: b"{\"data\":{}}".to_vec(),
            })
            .collect();
        store.append(&key, &changes, &[]).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("listen="))
            {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the daemon started");
    (Daemon { child, addr }, key)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// GET `path` signed by `key` (if any) with `created`; returns status and JSON body.
async fn get(addr: &str, path: &str, key: Option<&NodeKey>, created: i64) -> (u16, Value) {
    let http = tandem::net::client_builder().build().unwrap();
    let (p, q) = path
        .split_once('?')
        .map_or((path, None), |(p, q)| (p, Some(q)));
    let mut request = http.get(format!("http://{addr}{path}"));
    if let Some(key) = key {
        let h = signature::sign(key, "GET", p, q, b"", created);
        request = request
            .header("content-digest", h.content_digest)
            .header("signature-input", h.signature_input)
            .header("signature", h.signature);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn peers_are_authenticated_and_read_only_what_they_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (home, neighbour, stranger) = (
        NodeKey::from_seed([11; 32]),
        NodeKey::from_seed([12; 32]),
        NodeKey::from_seed([13; 32]),
    );
    let (daemon, community) = start(dir.path(), &home, &neighbour);
    let addr = daemon.addr.as_str();
    let own = format!("/v1/origins/{}", community.id());

    // Who may talk at all.
    let (status, body) = get(addr, "/v1/node", None, now()).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("missing"),
        "{body}"
    );
    let (status, body) = get(addr, "/v1/node", Some(&stranger), now()).await;
    assert_eq!(status, 401);
    assert!(
        body["error"].as_str().unwrap().contains("unknown key"),
        "{body}"
    );
    let (status, body) = get(addr, "/v1/node", Some(&home), now()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["id"].as_str().unwrap(), body["name"].as_str().unwrap()),
        (community.id().to_string().as_str(), "community")
    );
    let (status, _) = get(addr, "/v1/node", Some(&home), now() - 400).await;
    assert_eq!(status, 401, "a stale signature");

    // What each may read. The checkpoint served verifies with the origin's key alone.
    let (status, body) = get(addr, "/v1/origins", Some(&home), now()).await;
    assert_eq!(status, 200);
    let origins = body["origins"].as_array().unwrap();
    assert_eq!(origins.len(), 1);
    let cp = &origins[0]["checkpoint"];
    let checkpoint = Checkpoint {
        origin: community.id(),
        seq: Seq(cp["seq"].as_u64().unwrap()),
        hash: cp["hash"].as_str().unwrap().parse::<EntryHash>().unwrap(),
        ts: cp["ts"].as_u64().unwrap(),
        signature: base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            cp["signature"].as_str().unwrap(),
        )
        .unwrap()
        .try_into()
        .unwrap(),
    };
    checkpoint.verify().unwrap();
    assert_eq!(checkpoint.seq, Seq(5));
    assert_eq!(get(addr, &own, Some(&home), now()).await.0, 200);
    let (status, body) = get(addr, "/v1/origins", Some(&neighbour), now()).await;
    assert_eq!(
        (status, body["origins"].as_array().unwrap().len()),
        (200, 0)
    );
    let (status, body) = get(addr, &own, Some(&neighbour), now()).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        get(
            addr,
            &format!("/v1/origins/{}", stranger.id()),
            Some(&home),
            now()
        )
        .await
        .0,
        403
    );
    assert_eq!(
        get(addr, "/v1/origins/nonsense", Some(&home), now())
            .await
            .0,
        400
    );

    // Headers signed for one request do not authenticate another.
    let h = signature::sign(&home, "GET", "/v1/node", None, b"", now());
    let replay = tandem::net::client_builder()
        .build()
        .unwrap()
        .get(format!("http://{addr}/v1/origins"))
        .header("content-digest", h.content_digest)
        .header("signature-input", h.signature_input)
        .header("signature", h.signature)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status().as_u16(), 401);
}

#[tokio::test]
async fn a_request_signed_by_another_implementation_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let home = NodeKey::from_seed([11; 32]);
    let (daemon, community) = start(dir.path(), &home, &NodeKey::from_seed([12; 32]));
    let key_file = dir.path().join("home.key");
    home.write_new(&key_file).unwrap();
    std::fs::write(dir.path().join("empty"), b"").unwrap();
    let url = format!("http://{}/v1/origins/{}", daemon.addr, community.id());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/httpsig_interop.py");
    let out = Command::new(common::kinto::venv().join("bin/python"))
        .arg(script)
        .args([
            "sign",
            key_file.to_str().unwrap(),
            &home.id().to_string(),
            "GET",
            &url,
        ])
        .arg(dir.path().join("empty"))
        .arg(now().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h: Value = serde_json::from_slice(&out.stdout).unwrap();
    let response = tandem::net::client_builder()
        .build()
        .unwrap()
        .get(&url)
        .header("content-digest", h["content-digest"].as_str().unwrap())
        .header("signature-input", h["signature-input"].as_str().unwrap())
        .header("signature", h["signature"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["head"]["seq"], 5);
}
