//! The peer API of a running daemon (a real process on a real socket): authentication by RFC
//! 9421 signatures, authorization by the configuration's `serve` lists.

use crate::common;

use std::process::Command;

use common::process::{self, Daemon};
use serde_json::Value;
use tandem::feed::{Checkpoint, EntryHash, Seq};
use tandem::identity::{NodeId, NodeKey};
use tandem::protocol::signature::{self, Outgoing};

/// A community node that serves its own feed to `home` and nothing to `neighbour`.
fn start(dir: &std::path::Path, home: &NodeKey, neighbour: &NodeKey) -> (Daemon, NodeKey) {
    let (config, key) = process::node_with_entries(
        dir,
        "community",
        &[
            ("home", home, "serve = [\"self\"]"),
            ("neighbour", neighbour, ""),
        ],
    );
    (Daemon::spawn(&config), key)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// GET `path` at the node `target` listening on `addr`, signed by `key` (if any) with
/// `created`; returns status and JSON body.
async fn get_at(
    addr: &str,
    target: NodeId,
    path: &str,
    key: Option<&NodeKey>,
    created: i64,
) -> (u16, Value) {
    let http = tandem::net::client_builder().build().unwrap();
    let (p, q) = path
        .split_once('?')
        .map_or((path, None), |(p, q)| (p, Some(q)));
    let mut request = http.get(format!("http://{addr}{path}"));
    if let Some(key) = key {
        let outgoing = Outgoing {
            target,
            method: "GET",
            path: p,
            query: q,
        };
        for (name, value) in signature::sign(key, &outgoing, b"", created).pairs() {
            request = request.header(name, value);
        }
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
    let this = community.id();

    // Who may talk at all.
    let (status, body) = get_at(addr, this, "/v1/node", None, now()).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("missing"),
        "{body}"
    );
    let (status, body) = get_at(addr, this, "/v1/node", Some(&stranger), now()).await;
    assert_eq!(status, 401);
    assert!(
        body["error"].as_str().unwrap().contains("unknown key"),
        "{body}"
    );
    let (status, body) = get_at(addr, this, "/v1/node", Some(&home), now()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["id"].as_str().unwrap(), body["name"].as_str().unwrap()),
        (community.id().to_string().as_str(), "community")
    );
    let (status, _) = get_at(addr, this, "/v1/node", Some(&home), now() - 400).await;
    assert_eq!(status, 401, "a stale signature");

    // What each may read. The checkpoint served verifies with the origin's key alone.
    let (status, body) = get_at(addr, this, "/v1/origins", Some(&home), now()).await;
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
    assert_eq!(get_at(addr, this, &own, Some(&home), now()).await.0, 200);
    let (status, body) = get_at(addr, this, "/v1/origins", Some(&neighbour), now()).await;
    assert_eq!(
        (status, body["origins"].as_array().unwrap().len()),
        (200, 0)
    );
    let (status, body) = get_at(addr, this, &own, Some(&neighbour), now()).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        get_at(
            addr,
            this,
            &format!("/v1/origins/{}", stranger.id()),
            Some(&home),
            now()
        )
        .await
        .0,
        403
    );
    assert_eq!(
        get_at(addr, this, "/v1/origins/nonsense", Some(&home), now())
            .await
            .0,
        400
    );

    // Headers signed for one request do not authenticate another.
    let outgoing = Outgoing {
        target: this,
        method: "GET",
        path: "/v1/node",
        query: None,
    };
    let h = signature::sign(&home, &outgoing, b"", now());
    let mut replay = tandem::net::client_builder()
        .build()
        .unwrap()
        .get(format!("http://{addr}/v1/origins"));
    for (name, value) in h.pairs() {
        replay = replay.header(name, value);
    }
    assert_eq!(replay.send().await.unwrap().status().as_u16(), 401);
}

/// Signs a request to `url` with the Python RFC 9421 implementation; `target` and `nonce` "-"
/// sign as releases before the target binding. Returns the headers to send.
fn python_sign(
    dir: &std::path::Path,
    key: &NodeKey,
    url: &str,
    target: &str,
    nonce: &str,
) -> Vec<(String, String)> {
    let key_file = dir.join("python.key");
    let _ = std::fs::remove_file(&key_file);
    key.write_new(&key_file).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/httpsig_interop.py");
    let out = Command::new(common::kinto::venv().join("bin/python"))
        .arg(script)
        .args([
            "sign",
            key_file.to_str().unwrap(),
            &key.id().to_string(),
            "GET",
            url,
        ])
        .arg(dir.join("empty"))
        .args([&now().to_string(), target, nonce])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h: Value = serde_json::from_slice(&out.stdout).unwrap();
    h.as_object()
        .unwrap()
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

async fn send_get(url: &str, headers: &[(String, String)]) -> (u16, Value) {
    let mut request = tandem::net::client_builder().build().unwrap().get(url);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_request_signed_by_another_implementation_is_accepted_once() {
    let dir = tempfile::tempdir().unwrap();
    let home = NodeKey::from_seed([11; 32]);
    let (daemon, community) = start(dir.path(), &home, &NodeKey::from_seed([12; 32]));
    let url = format!("http://{}/v1/origins/{}", daemon.addr, community.id());
    let headers = python_sign(
        dir.path(),
        &home,
        &url,
        &community.id().to_string(),
        "cHl0aG9uLW5vbmNlLTAwMQ",
    );
    let (status, body) = send_get(&url, &headers).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["head"]["seq"], 5);
    // The nonce python chose is remembered: the same headers again are a replay.
    let (status, body) = send_get(&url, &headers).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("already used"),
        "{body}"
    );
}

#[tokio::test]
async fn a_signature_of_the_previous_release_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let home = NodeKey::from_seed([11; 32]);
    let (daemon, community) = start(dir.path(), &home, &NodeKey::from_seed([12; 32]));
    let url = format!("http://{}/v1/origins/{}", daemon.addr, community.id());
    // Covering method, path, query and digest, with no target and no nonce: what earlier
    // releases signed.
    let headers = python_sign(dir.path(), &home, &url, "-", "-");
    let (status, body) = send_get(&url, &headers).await;
    assert_eq!(status, 401, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("does not cover tandem-target") && error.contains("upgrade it"),
        "{body}"
    );
}
