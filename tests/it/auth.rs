//! What the peer API of a running daemon (a real `tandem run` process on a real socket) costs
//! and allows before and after authentication: bodies are not read for unauthenticated
//! requests, a signed request works once (a restart included) and only at the node it was
//! signed for, a body must match its signed digest, and concurrent bodies and long polls are
//! bounded.

use crate::common;

use std::time::{Duration, Instant};

use common::process::{self, Daemon};
use serde_json::Value;
use tandem::feed::{Op, Seq};
use tandem::identity::{NodeId, NodeKey};
use tandem::protocol::signature::{self, Outgoing, SignatureHeaders};
use tandem::protocol::wire;
use tandem::store::{Change, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1 << 20;

/// [`process::node_with_entries`], by id.
fn node(
    dir: &std::path::Path,
    name: &str,
    peers: &[(&str, &NodeKey, &str)],
) -> (std::path::PathBuf, NodeId) {
    let (config, key) = process::node_with_entries(dir, name, peers);
    (config, key.id())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Signs `method path?query` with `body` as `key`, for the node `target`.
fn sign(
    key: &NodeKey,
    target: NodeId,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> SignatureHeaders {
    let (path, query) = path_and_query
        .split_once('?')
        .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
    let outgoing = Outgoing {
        target,
        method,
        path,
        query,
    };
    signature::sign(key, &outgoing, body, now())
}

/// Sends a request with `headers` and `body`; returns its status, its `Retry-After` and its
/// JSON body.
async fn send(
    addr: &str,
    method: reqwest::Method,
    path_and_query: &str,
    headers: &SignatureHeaders,
    body: Vec<u8>,
) -> (u16, Option<String>, Value) {
    let mut request = tandem::net::client_builder()
        .build()
        .unwrap()
        .request(method, format!("http://{addr}{path_and_query}"))
        .body(body);
    for (name, value) in headers.pairs() {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, response.json().await.unwrap_or(Value::Null))
}

/// A GET sent with `headers` signed beforehand (captured, or signed for another node).
async fn send_get(
    addr: &str,
    path_and_query: &str,
    headers: &SignatureHeaders,
) -> (u16, Option<String>, Value) {
    send(
        addr,
        reqwest::Method::GET,
        path_and_query,
        headers,
        Vec::new(),
    )
    .await
}

/// A signed GET sent once.
async fn get(addr: &str, key: &NodeKey, target: NodeId, path_and_query: &str) -> (u16, Value) {
    let h = sign(key, target, "GET", path_and_query, b"");
    let (status, _, body) = send_get(addr, path_and_query, &h).await;
    (status, body)
}

/// The head of a request on a raw connection: `headers` plus `framing` (a `Content-Length` or
/// `Transfer-Encoding`), to be followed by a body written by hand.
fn raw_head(
    addr: &str,
    method: &str,
    path: &str,
    headers: &SignatureHeaders,
    framing: &str,
) -> String {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {}\r\n{framing}\r\n",
        wire::PAGE_TYPE
    );
    for (name, value) in headers.pairs() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// The status code of the answer read from `stream`, if one came before it closed.
async fn read_status(stream: &mut tokio::net::tcp::OwnedReadHalf) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    std::str::from_utf8(&buf)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// 50 clients that know a peer's id (ids are public) but not its key upload 70 MiB each at
/// once, in chunked bodies: the node must not read them. Its resident memory may grow by less
/// than 64 MiB (before bodies waited for authentication, it grew by gigabytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_uploads_are_refused_before_their_body_is_read() {
    const CLIENTS: usize = 50;
    const UPLOAD: u64 = 70 * MIB;
    const BUDGET: u64 = 64 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let laptop = NodeKey::from_seed([31; 32]);
    let accept = format!("accept = [\"{}\"]", laptop.id());
    let (config, id) = node(dir.path(), "community", &[("laptop", &laptop, &accept)]);
    let daemon = Daemon::spawn(&config);
    let addr = daemon.addr.clone();
    // Warm up: one authenticated request, so that idle includes what serving needs anyway.
    assert_eq!(get(&addr, &laptop, id, "/v1/node").await.0, 200);
    let idle = daemon.memory("VmRSS");

    // A well-formed signature by a known key that does not verify.
    let path = format!("/v1/origins/{}/entries", laptop.id());
    let mut forged = sign(&laptop, id, "POST", &path, b"");
    forged.signature = format!(
        "tandem=:{}:",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 64])
    );
    let head = raw_head(&addr, "POST", &path, &forged, "transfer-encoding: chunked");

    let over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(idle));
    let sampler = {
        let (over, peak) = (over.clone(), peak.clone());
        let status = format!("/proc/{}/status", daemon.pid());
        std::thread::spawn(move || {
            let done = Instant::now() + Duration::from_secs(120);
            while Instant::now() < done && !over.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(text) = std::fs::read_to_string(&status) else {
                    return;
                };
                let rss = text
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
                    .unwrap_or(0)
                    * 1024;
                peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                // Past the budget the test has failed: stop the uploads rather than feed the
                // node gigabytes.
                if rss > idle + BUDGET {
                    over.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let started = Instant::now();
    let uploads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addr, head, over) = (addr.clone(), head.clone(), over.clone());
            tokio::spawn(async move {
                let stream = TcpStream::connect(&addr).await.unwrap();
                let (mut read, mut write) = stream.into_split();
                let answer = tokio::spawn(async move { read_status(&mut read).await });
                let chunk = vec![b'x'; 64 << 10];
                let mut sent = 0u64;
                let frame_head = format!("{:x}\r\n", chunk.len());
                let mut result = write.write_all(head.as_bytes()).await;
                while result.is_ok()
                    && sent < UPLOAD
                    && !over.load(std::sync::atomic::Ordering::Relaxed)
                {
                    result = async {
                        write.write_all(frame_head.as_bytes()).await?;
                        write.write_all(&chunk).await?;
                        write.write_all(b"\r\n").await
                    }
                    .await;
                    if result.is_ok() {
                        sent += chunk.len() as u64;
                    }
                }
                if result.is_ok() {
                    let _ = write.write_all(b"0\r\n\r\n").await;
                }
                (answer.await.unwrap(), sent)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut sent = 0;
    for upload in uploads {
        let (status, bytes) = upload.await.unwrap();
        statuses.push(status);
        sent += bytes;
    }
    let elapsed = started.elapsed();
    over.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let hwm = daemon.memory("VmHWM");
    let sampled = peak.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{CLIENTS} unauthenticated chunked uploads of {} MiB each: idle VmRSS {:.1} MiB, peak VmRSS sampled {:.1} MiB, VmHWM {:.1} MiB (+{:.1} MiB over idle); {:.1} MiB sent in all before the node closed the connections, {:.1} s; answers: {statuses:?}",
        UPLOAD / MIB,
        idle as f64 / MIB as f64,
        sampled as f64 / MIB as f64,
        hwm as f64 / MIB as f64,
        hwm.saturating_sub(idle) as f64 / MIB as f64,
        sent as f64 / MIB as f64,
        elapsed.as_secs_f64(),
    );
    assert!(
        hwm.max(sampled) < idle + BUDGET,
        "the node's memory grew by {} MiB (idle {} MiB, peak {} MiB)",
        (hwm.max(sampled) - idle) / MIB,
        idle / MIB,
        hwm.max(sampled) / MIB
    );
    assert!(
        statuses.iter().all(|s| s.is_none_or(|s| s == 401)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&Some(401)), "{statuses:?}");
    // The node still answers its peers.
    assert_eq!(get(&addr, &laptop, id, "/v1/node").await.0, 200);
}

/// A request a peer signed for node A is refused by node B, which knows the same peer (B might
/// hold copies the peer that replays it may not read), and by A itself the second time; a
/// freshly signed request passes at each.
#[tokio::test]
async fn a_signed_request_works_once_and_only_at_the_node_it_was_signed_for() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let home = NodeKey::from_seed([41; 32]);
    let peers = [("home", &home, "serve = [\"self\"]")];
    let (config_a, a) = node(dir_a.path(), "a", &peers);
    let (config_b, b) = node(dir_b.path(), "b", &peers);
    let (node_a, node_b) = (Daemon::spawn(&config_a), Daemon::spawn(&config_b));
    let entries = |origin: NodeId| format!("/v1/origins/{origin}/entries?after=0");

    // Captured on its way to A (it would read B's own feed the same way at B).
    let for_a = sign(&home, a, "GET", &entries(a), b"");
    let at_b = send_get(&node_b.addr, &entries(a), &for_a).await;
    assert_eq!(at_b.0, 401, "{:?}", at_b.2);
    let error = at_b.2["error"].as_str().unwrap();
    assert!(error.contains(&format!("signed for node {a}")), "{error}");
    // Even on B's own path, it stays A's request.
    let at_b = send_get(&node_b.addr, &entries(b), &for_a).await;
    assert_eq!(at_b.0, 401, "{:?}", at_b.2);

    // At A it works, once.
    let first = send_get(&node_a.addr, &entries(a), &for_a).await;
    assert_eq!(first.0, 200, "{:?}", first.2);
    let again = send_get(&node_a.addr, &entries(a), &for_a).await;
    assert_eq!(again.0, 401, "{:?}", again.2);
    assert!(
        again.2["error"].as_str().unwrap().contains("already used"),
        "{:?}",
        again.2
    );

    // Fresh signatures pass, at both.
    assert_eq!(get(&node_a.addr, &home, a, &entries(a)).await.0, 200);
    assert_eq!(get(&node_b.addr, &home, b, &entries(b)).await.0, 200);
}

/// A node that restarts has forgotten the nonces it saw: a request signed before its restart,
/// captured and sent again after it, gets `503`, not the entries (the peer would sign its
/// retry anew); requests signed since pass once, as ever.
#[tokio::test]
async fn a_request_captured_before_a_restart_is_not_served_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let home = NodeKey::from_seed([42; 32]);
    let (config, a) = node(dir.path(), "a", &[("home", &home, "serve = [\"self\"]")]);
    let entries = format!("/v1/origins/{a}/entries?after=0");
    let node = Daemon::spawn(&config);
    let (captured, signed) = (sign(&home, a, "GET", &entries, b""), now());
    let first = send_get(&node.addr, &entries, &captured).await;
    assert_eq!(first.0, 200, "{:?}", first.2);

    // Killed, and started again in a later second than the capture's.
    drop(node);
    while now() <= signed {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let node = Daemon::spawn(&config);
    let again = send_get(&node.addr, &entries, &captured).await;
    assert_eq!(again.0, 503, "{:?}", again.2);
    let retry: u64 = again.1.as_deref().unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    assert!(
        again.2["error"].as_str().unwrap().contains("sign it anew"),
        "{:?}",
        again.2
    );
    assert_eq!(get(&node.addr, &home, a, &entries).await.0, 200);
}

/// A page whose signature verifies but whose body is not the one the signed digest names is
/// refused with 400 and nothing of it is stored; the same page, honestly signed, is stored.
#[tokio::test]
async fn a_body_that_does_not_match_its_signed_digest_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let laptop = NodeKey::from_seed([51; 32]);
    let accept = format!("accept = [\"{}\"]", laptop.id());
    let (config, id) = node(dir.path(), "community", &[("laptop", &laptop, &accept)]);
    let daemon = Daemon::spawn(&config);
    // A valid page of the laptop's feed.
    let laptop_dir = tempfile::tempdir().unwrap();
    let page = {
        let mut store = Store::open_writer(laptop_dir.path(), laptop.id()).unwrap();
        let changes: Vec<Change> = (0..3)
            .map(|i| Change {
                op: Op::Put,
                path: format!("/buckets/l{i}"),
                body: b"{\"data\":{}}".to_vec(),
            })
            .collect();
        store.append(&laptop, &changes, &[]).unwrap();
        let (entries, checkpoint) = store
            .entries_page(laptop.id(), Seq(0), 100, usize::MAX)
            .unwrap()
            .unwrap();
        wire::encode_page(&checkpoint, entries.iter().map(|e| e.bytes.as_slice()))
    };
    let path = format!("/v1/origins/{}/entries", laptop.id());
    let origin = format!("/v1/origins/{}", laptop.id());

    // Signed over the digest of another body, sent with the page.
    let mut other = page.clone();
    *other.last_mut().unwrap() ^= 1;
    let h = sign(&laptop, id, "POST", &path, &other);
    let (status, _, body) =
        send(&daemon.addr, reqwest::Method::POST, &path, &h, page.clone()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("content-digest"),
        "{body}"
    );
    assert_eq!(get(&daemon.addr, &laptop, id, &origin).await.0, 404);

    // The same, streamed in chunks on a raw connection.
    let h = sign(&laptop, id, "POST", &path, &other);
    let stream = TcpStream::connect(&daemon.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(
            raw_head(
                &daemon.addr,
                "POST",
                &path,
                &h,
                "transfer-encoding: chunked",
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    for chunk in page.chunks(100) {
        write
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        write.write_all(chunk).await.unwrap();
        write.write_all(b"\r\n").await.unwrap();
    }
    write.write_all(b"0\r\n\r\n").await.unwrap();
    assert_eq!(read_status(&mut read).await, Some(400));
    assert_eq!(get(&daemon.addr, &laptop, id, &origin).await.0, 404);

    // Honestly signed, the page is stored.
    let h = sign(&laptop, id, "POST", &path, &page);
    let (status, _, body) = send(&daemon.addr, reqwest::Method::POST, &path, &h, page).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&daemon.addr, &laptop, id, &origin).await;
    assert_eq!(
        (status, body["head"]["seq"].as_u64()),
        (200, Some(3)),
        "{body}"
    );
}

/// An authenticated upload that sends its headers and then only part of its body, held open.
async fn stalled_upload(addr: &str, key: &NodeKey, target: NodeId) -> TcpStream {
    let path = format!("/v1/origins/{}/entries", key.id());
    let body = vec![0u8; 1000];
    let h = sign(key, target, "POST", &path, &body);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(raw_head(addr, "POST", &path, &h, "content-length: 1000").as_bytes())
        .await
        .unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    stream
}

/// Sends complete small uploads signed by `key` until one is answered `status`, for at most
/// ten seconds; returns that answer.
async fn upload_until(
    addr: &str,
    key: &NodeKey,
    target: NodeId,
    status: u16,
) -> (Option<String>, Value) {
    let path = format!("/v1/origins/{}/entries", key.id());
    let started = Instant::now();
    loop {
        let body = b"not a page".to_vec();
        let h = sign(key, target, "POST", &path, &body);
        let (got, retry, answer) = send(addr, reqwest::Method::POST, &path, &h, body).await;
        if got == status {
            return (retry, answer);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no {status} after 10 s; the last answer was {got} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bodies in flight are bounded per peer (429) and for the node (503), with `Retry-After` and
/// an error that says so; once they finish, uploads go through again.
#[tokio::test]
async fn concurrent_bodies_are_bounded_per_peer_and_per_node() {
    use tandem::api::peer::guard::{MAX_BODIES, MAX_BODIES_PER_PEER};
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<NodeKey> = (0..=MAX_BODIES / MAX_BODIES_PER_PEER)
        .map(|i| NodeKey::from_seed([60 + i as u8; 32]))
        .collect();
    let names: Vec<String> = (0..keys.len()).map(|i| format!("p{i}")).collect();
    let accepts: Vec<String> = keys
        .iter()
        .map(|k| format!("accept = [\"{}\"]", k.id()))
        .collect();
    let peers: Vec<(&str, &NodeKey, &str)> = names
        .iter()
        .zip(&keys)
        .zip(&accepts)
        .map(|((n, k), a)| (n.as_str(), k, a.as_str()))
        .collect();
    let (config, id) = node(dir.path(), "community", &peers);
    let daemon = Daemon::spawn(&config);
    let addr = daemon.addr.as_str();

    // The first peer fills its share.
    let mut held = Vec::new();
    for _ in 0..MAX_BODIES_PER_PEER {
        held.push(stalled_upload(addr, &keys[0], id).await);
    }
    let (retry, answer) = upload_until(addr, &keys[0], id, 429).await;
    assert!(
        retry.is_some_and(|r| r.parse::<u64>().unwrap() > 0),
        "{answer}"
    );
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("request bodies at once"),
        "{answer}"
    );
    // Others are not held back by it...
    let (_, answer) = upload_until(addr, &keys[1], id, 400).await;
    assert!(
        answer["error"].as_str().unwrap().contains("rejected"),
        "{answer}"
    );
    // ...until the node's share is used up.
    for key in &keys[1..keys.len() - 1] {
        for _ in 0..MAX_BODIES_PER_PEER {
            held.push(stalled_upload(addr, key, id).await);
        }
    }
    assert_eq!(held.len(), MAX_BODIES);
    let last = keys.last().unwrap();
    let (retry, answer) = upload_until(addr, last, id, 503).await;
    assert!(retry.is_some(), "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("request bodies at once"),
        "{answer}"
    );
    // Uploads that give up free their place.
    drop(held);
    upload_until(addr, last, id, 400).await;
    upload_until(addr, &keys[0], id, 400).await;
}

/// A peer may hold one long poll per origin it may read plus a few; one more is answered at
/// once (as if it asked no wait) instead of being held.
#[tokio::test]
async fn long_polls_beyond_a_peers_share_are_answered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let home = NodeKey::from_seed([71; 32]);
    let (config, id) = node(
        dir.path(),
        "community",
        &[("home", &home, "serve = [\"self\"]")],
    );
    let daemon = Daemon::spawn(&config);
    // What `serve = ["self"]` allows: its own feed and this node's.
    let share = 2 + tandem::api::peer::guard::POLL_SLACK;
    let path = format!("/v1/origins/{id}/entries?after=5&wait=30");
    let started = Instant::now();
    let mut polls = tokio::task::JoinSet::new();
    for _ in 0..=share {
        let (addr, h, path) = (
            daemon.addr.clone(),
            sign(&home, id, "GET", &path, b""),
            path.clone(),
        );
        polls.spawn(async move { send_get(&addr, &path, &h).await });
    }
    let first = tokio::time::timeout(Duration::from_secs(15), polls.join_next())
        .await
        .expect("one long poll beyond the share is answered at once")
        .unwrap()
        .unwrap();
    assert_eq!(first.0, 204, "{:?}", first.2);
    assert!(started.elapsed() < Duration::from_secs(15));
    // The others still wait.
    assert_eq!(polls.len(), share);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), polls.join_next())
            .await
            .is_err()
    );
    polls.abort_all();
}
