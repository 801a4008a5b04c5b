//! `[node] heartbeat_url`: a tiny HTTP server in the test counts the GETs a running daemon
//! sends. It is hit after successful rounds (an ingest pass of a live source), not while the
//! source is down; a heartbeat that fails does not fail the round.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::kinto::{Kinto, Options, PASSWORD};
use crate::common::node::{TestNode, wait_for};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starts a server that answers every request `200` and counts the `GET /beat/…` ones.
async fn counter() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/beat/token-1234", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if head.starts_with(b"GET /beat/token-1234 ") {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (url, hits)
}

/// Waits until `node`'s source loop reports `check`.
async fn wait_source(node: &TestNode, what: &str, check: impl Fn(&Value) -> bool) {
    let started = Instant::now();
    loop {
        let w = node.worker("source").await;
        if check(&w) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}: {w}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn source_section(node: &TestNode, kinto: &Kinto) -> String {
    crate::common::write_secret(node.dir.path().join("pw"), PASSWORD);
    format!(
        "[source]\nkind = \"kinto\"\nurl = \"{}\"\nuser = \"tandem\"\npassword_file = \"pw\"\npoll = \"1s\"\n",
        kinto.url
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_follows_successful_rounds_only() {
    let mut kinto = Kinto::start(Options::default()).await;
    kinto
        .ok(
            "alice",
            "PUT",
            "/buckets/b",
            Some(json!({"data": {}, "permissions": {"read": ["account:tandem"]}})),
        )
        .await;
    let (url, hits) = counter().await;
    let mut home = TestNode::new("home");
    home.configure(
        &format!("heartbeat_url = \"{url}\""),
        &source_section(&home, &kinto),
    );
    home.init();
    // A node whose heartbeat goes nowhere: its rounds succeed all the same.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}/beat", closed.local_addr().unwrap());
    drop(closed);
    let mut lonely = TestNode::new("lonely");
    lonely.configure(
        &format!("heartbeat_url = \"{nowhere}\""),
        &source_section(&lonely, &kinto),
    );
    lonely.init();
    home.start().await;
    lonely.start().await;

    wait_for(Duration::from_secs(30), "three heartbeats", || {
        hits.load(Ordering::SeqCst) >= 3
    })
    .await;
    wait_source(&lonely, "rounds after failed heartbeats", |w| {
        w["ok"] == true && w["consecutive_errors"] == 0
    })
    .await;

    // The source goes down: rounds fail, and no heartbeat follows them.
    kinto.kill();
    wait_source(&home, "a failed round", |w| {
        w["consecutive_errors"].as_u64() >= Some(1)
    })
    .await;
    // A heartbeat sent just before the failure may still be arriving: counted from the
    // second failure on.
    wait_source(&home, "two failed rounds", |w| {
        w["consecutive_errors"].as_u64() >= Some(2)
    })
    .await;
    let during = hits.load(Ordering::SeqCst);
    wait_source(&home, "four failed rounds", |w| {
        w["consecutive_errors"].as_u64() >= Some(4)
    })
    .await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        during,
        "no heartbeat while failing"
    );
    home.stop().await;
    lonely.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_source_successful_pushes_are_the_rounds() {
    let (url, hits) = counter().await;
    let mut laptop = TestNode::new("laptop");
    let mut community = TestNode::new("community");
    laptop.configure(
        &format!("heartbeat_url = \"{url}\""),
        &TestNode::peer_entry(&community, "push = [\"self\"]"),
    );
    community.configure("", &TestNode::peer_entry(&laptop, ""));
    laptop.init();
    community.init();
    laptop.append(3, "r");
    community.start().await;
    laptop.start().await;
    wait_for(Duration::from_secs(30), "a heartbeat after a push", || {
        hits.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(community.head(laptop.id), 3);

    // The peer goes away: pushes fail, and no heartbeat follows them.
    community.stop().await;
    let push_errors = || async {
        laptop.worker("push").await["consecutive_errors"]
            .as_u64()
            .unwrap()
    };
    let started = Instant::now();
    while push_errors().await < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "pushes never failed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = hits.load(Ordering::SeqCst);
    while push_errors().await < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "pushes stopped failing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        during,
        "no heartbeat while failing"
    );
    laptop.stop().await;
}
