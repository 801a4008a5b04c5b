//! Federation between real nodes on real sockets: push, pull, relay, continuous propagation,
//! cron schedules, authorization, faults on the wire, forks, rolled-back holders,
//! self-recovery, quotas and a peer's return from an outage. Nodes run in-process (see
//! `common::node`); the home node follows a real Kinto server where the test needs changes to
//! happen while nodes run.

use crate::common;

use std::time::{Duration, Instant};

use common::kinto::{Kinto, Options};
use common::node::{NEVER, TestNode, backup_pair, holder_status, relay_trio, wait_for};
use common::proxy::{Fault, Proxy};
use serde_json::{Value, json};
use tandem::feed::Seq;
use tandem::identity::NodeKey;
use tandem::peer::{PeerClient, PeerError};

const LONG: Duration = Duration::from_secs(30);

/// A Kinto server (no history) with bucket `b`, collection `c` and `n` records `r0`, `r1`…
async fn kinto_with_records(n: usize) -> Kinto {
    let kinto = Kinto::start(Options {
        history: false,
        ..Options::default()
    })
    .await;
    kinto.ok("alice", "PUT", "/buckets/b", None).await;
    kinto
        .ok("alice", "PUT", "/buckets/b/collections/c", None)
        .await;
    for i in 0..n {
        record(&kinto, &format!("r{i}")).await;
    }
    kinto
}

async fn record(kinto: &Kinto, id: &str) {
    kinto
        .ok(
            "alice",
            "PUT",
            &format!("/buckets/b/collections/c/records/{id}"),
            Some(json!({"data": {"title": id}})),
        )
        .await;
}

/// Home follows Kinto and pushes continuously to the community node, which relays home's feed
/// to the member's laptop (a continuous pull). Changes reach the community within a second,
/// receipts come back, and the laptop ends with home's exact state, verified end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_relay_and_continuous_propagation() {
    let kinto = kinto_with_records(20).await;
    let mut home = TestNode::new("home");
    let mut community = TestNode::new("community");
    let mut laptop = TestNode::new("laptop");
    home.configure(
        "durability = 1",
        &format!(
            "{}{}",
            home.source(&kinto, "1s"),
            TestNode::peer_entry(&community, "push = [\"self\"]\nserve = [\"self\"]")
        ),
    );
    let h = home.id.to_string();
    community.configure(
        "",
        &format!(
            "{}{}",
            TestNode::peer_entry(&home, &format!("serve = [\"{h}\"]")),
            TestNode::peer_entry(&laptop, &format!("serve = [\"{h}\"]"))
        ),
    );
    laptop.configure(
        "",
        &TestNode::peer_entry(&community, &format!("pull = [\"{h}\"]")),
    );
    for n in [&home, &community, &laptop] {
        n.init();
    }
    for n in [&mut community, &mut laptop, &mut home] {
        n.start().await;
    }
    wait_for(LONG, "home ingests", || home.head(home.id) >= 22).await;
    let head = home.head(home.id);
    wait_for(
        LONG,
        "the laptop gets home's feed through the community",
        || laptop.head(home.id) == home.head(home.id),
    )
    .await;
    assert_eq!(community.head(home.id), home.head(home.id));
    assert_eq!(laptop.export_origin(&h), home.export_origin("self"));
    assert!(home.export_origin("self").contains("/records/r19"));

    // Three more changes, each timed from the moment home has it to the moment the
    // community does; the median must be under a second.
    let mut latencies = Vec::new();
    let mut new_head = head;
    for i in 0..3 {
        record(&kinto, &format!("late{i}")).await;
        let before = new_head;
        wait_for(LONG, "home ingests the change", || {
            home.head(home.id) > before
        })
        .await;
        let ingested = Instant::now();
        new_head = home.head(home.id);
        wait_for(Duration::from_secs(10), "the community gets it", || {
            community.head(home.id) >= new_head
        })
        .await;
        latencies.push(ingested.elapsed());
    }
    latencies.sort();
    assert!(
        latencies[1] < Duration::from_secs(1),
        "changes reached the continuous peer after {latencies:?}"
    );
    wait_for(LONG, "the laptop gets it by long poll", || {
        laptop.head(home.id) == new_head
    })
    .await;

    // Receipts: home knows what the community holds; durability 1 = that head.
    wait_for(LONG, "the receipt for the last push", || {
        holder_status(&home.status(), &h, "peer", "community")["acked_seq"] == new_head
    })
    .await;
    let status = home.status();
    let c = holder_status(&status, &h, "peer", "community");
    assert_eq!(c["id"], community.id.to_string());
    assert!(c["acked_at"].as_str().unwrap().ends_with('Z'), "{c}");
    assert_eq!(c["behind"], false);
    let own = &status["origins"][0];
    assert_eq!(own["durable_seq"], new_head);
    let metrics = home.metrics().await;
    assert!(
        metrics.contains(&format!("tandem_durable_seq{{origin=\"{h}\"}} {new_head}")),
        "{metrics}"
    );
    // Everything the laptop holds verifies against home's key.
    let report = laptop.store().verify_origin(home.id).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    for n in [&mut home, &mut community, &mut laptop] {
        n.stop().await;
    }
}

/// A cron schedule: the laptop pulls every second; the origin's feed arrives without any
/// other trigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_schedule_pulls() {
    let mut origin = TestNode::new("origin");
    let mut laptop = TestNode::new("laptop");
    origin.configure("", &TestNode::peer_entry(&laptop, "serve = [\"self\"]"));
    laptop.configure(
        "",
        &TestNode::peer_entry(
            &origin,
            &format!("pull = [\"{}\"]\nschedule = \"* * * * * *\"", origin.id),
        ),
    );
    origin.init();
    laptop.init();
    origin.append(2500, "a");
    origin.start().await;
    laptop.start().await;
    wait_for(LONG, "the cron pull", || laptop.head(origin.id) == 2500).await;
    origin.stop().await;
    laptop.stop().await;
}

/// Every cell of the authorization matrix, with the real client: unknown keys get 401, known
/// peers without the right 403, and nothing is stored for either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix() {
    let mut host = TestNode::new("host");
    let reader = TestNode::new("reader");
    let pusher = TestNode::new("pusher");
    let nobody = TestNode::new("nobody");
    host.configure(
        "",
        &format!(
            "{}{}{}",
            TestNode::peer_entry(&reader, &format!("serve = [\"self\"]\n{NEVER}")),
            TestNode::peer_entry(&pusher, NEVER),
            TestNode::peer_entry(&nobody, &format!("accept = []\n{NEVER}"))
        ),
    );
    host.init();
    host.append(10, "h");
    pusher.configure("", "");
    pusher.init();
    pusher.append(5, "p");
    nobody.configure("", "");
    nobody.init();
    nobody.append(5, "n");
    host.start().await;

    let url: url::Url = host.url().parse().unwrap();
    let client =
        |key: NodeKey| PeerClient::new("host", host.id, &url, std::sync::Arc::new(key)).unwrap();
    let page_of = |node: &TestNode| {
        let store = node.store();
        let (entries, cp) = store
            .entries_page(node.id, Seq(0), 100, usize::MAX)
            .unwrap()
            .unwrap();
        let raw =
            tandem::protocol::wire::encode_page(&cp, entries.iter().map(|e| e.bytes.as_slice()));
        (cp, raw)
    };
    let status = |r: Result<(), PeerError>| r.err().and_then(|e| e.status()).unwrap_or(200);
    let (pusher_cp, pusher_page) = page_of(&pusher);
    let (nobody_cp, nobody_page) = page_of(&nobody);
    let (host_cp, host_page) = page_of(&host);

    // Unknown key: 401 everywhere.
    let c = client(NodeKey::from_seed([42; 32]));
    assert_eq!(status(c.origins().await.map(drop)), 401);
    assert_eq!(status(c.origin(host.id).await.map(drop)), 401);
    assert_eq!(
        status(c.page(host.id, Seq(0), Duration::ZERO).await.map(drop)),
        401
    );
    assert_eq!(
        status(c.push(host.id, &pusher_cp, &pusher_page).await.map(drop)),
        401
    );
    assert_eq!(host.head(pusher.id), 0, "nothing stored for an unknown key");

    // A reader reads what `serve` grants, and nothing else; it may not push.
    let c = client(reader.key());
    let listed = c.origins().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, host.id);
    assert_eq!(listed[0].head.seq, 10);
    let page = c
        .page(host.id, Seq(0), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.entries.len(), 10);
    assert!(
        c.page(host.id, Seq(10), Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        status(c.page(pusher.id, Seq(0), Duration::ZERO).await.map(drop)),
        403
    );
    assert_eq!(
        status(c.push(host.id, &host_cp, &host_page).await.map(drop)),
        403
    );
    assert_eq!(
        status(c.push(host.id, &pusher_cp, &pusher_page).await.map(drop)),
        403
    );
    assert_eq!(host.head(pusher.id), 0, "nothing stored for a refused push");

    // A pusher pushes its own feed (the default `accept`) and gets a signed receipt; it may
    // not read the host's feed, nor push another origin, nor the host's own.
    let c = client(pusher.key());
    let (receipt, _) = c.push(host.id, &pusher_cp, &pusher_page).await.unwrap();
    assert_eq!(
        (receipt.holder, receipt.origin, receipt.seq),
        (host.id, pusher.id, Seq(5))
    );
    receipt.verify().unwrap();
    assert_eq!(host.head(pusher.id), 5);
    // Re-delivery is a no-op with the same answer.
    let (again, _) = c.push(host.id, &pusher_cp, &pusher_page).await.unwrap();
    assert_eq!(again.seq, Seq(5));
    // It may always read its own feed back (and nothing else).
    let listed = c.origins().await.unwrap();
    assert_eq!(
        listed.iter().map(|o| o.id).collect::<Vec<_>>(),
        vec![pusher.id]
    );
    assert_eq!(
        status(c.page(host.id, Seq(0), Duration::ZERO).await.map(drop)),
        403
    );
    assert_eq!(
        status(c.push(host.id, &nobody_cp, &nobody_page).await.map(drop)),
        403
    );
    assert_eq!(
        status(c.push(host.id, &host_cp, &host_page).await.map(drop)),
        403
    );

    // A known peer with empty lists: 403 for its own feed too.
    let c = client(nobody.key());
    assert_eq!(
        status(c.push(host.id, &nobody_cp, &nobody_page).await.map(drop)),
        403
    );
    assert_eq!(status(c.origin(host.id).await.map(drop)), 403);
    assert_eq!(host.head(nobody.id), 0, "nothing stored for a refused push");
    assert!(
        host.store()
            .origins()
            .unwrap()
            .iter()
            .all(|o| o.id != nobody.id)
    );

    // A page that does not verify is refused with 400 and stores nothing.
    let c = client(pusher.key());
    let mut forged = pusher_page.clone();
    let last = forged.len() - 3;
    forged[last] ^= 1;
    let e = c.push(host.id, &pusher_cp, &forged).await.unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert_eq!(host.head(pusher.id), 5);
    host.stop().await;
}

/// Pulls through a TCP proxy that flips a byte or drops the connection mid-page: nothing
/// corrupt is stored, every stored page verifies, and the nodes converge once the wire heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_the_wire_store_nothing_corrupt() {
    let mut home = TestNode::new("home");
    let mut community = TestNode::new("community");
    home.configure(
        "",
        &TestNode::peer_entry(&community, &format!("serve = [\"self\"]\n{NEVER}")),
    );
    home.init();
    home.append(10_000, "r");
    let proxy = Proxy::start(home.addr.to_string(), "/").await;
    community.configure(
        "",
        &TestNode::peer_entry_at(
            &home,
            &proxy.url,
            &format!("pull = [\"{}\"]\n{NEVER}", home.id),
        ),
    );
    community.init();
    home.start().await;
    community.start().await;

    // The first request (the origin's head) passes; the first page is damaged.
    for fault in [
        Fault::FlipAt(2_000),
        Fault::FlipAt(40_000),
        Fault::CutAfter(30_000),
    ] {
        proxy.set(fault, 1);
        let answer = community.sync().await;
        let error = answer["peers"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(!error.is_empty(), "{fault:?} went unnoticed: {answer}");
        let held = community.head(home.id);
        assert_eq!(held, 0, "{fault:?}: part of a damaged page was stored");
    }
    // One page through, then damage: the good page stays, and verifies.
    proxy.set(Fault::FlipAt(3_000), 2);
    let answer = community.sync().await;
    assert!(answer["peers"][0]["error"].is_string(), "{answer}");
    assert_eq!(community.head(home.id), 4096);
    assert!(
        community
            .store()
            .verify_origin(home.id)
            .unwrap()
            .problems
            .is_empty()
    );

    // A peer that claims a head and then serves nothing is reported as withholding, and
    // nothing changes here.
    proxy.set(Fault::NoContent, 1);
    let answer = community.sync().await;
    let error = answer["peers"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("withholding") && error.contains("claims seq 10000"),
        "{answer}"
    );
    assert_eq!(community.head(home.id), 4096);

    proxy.set(Fault::None, 0);
    let answer = community.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    assert_eq!(community.head(home.id), 10_000);
    assert!(
        community
            .store()
            .verify_origin(home.id)
            .unwrap()
            .problems
            .is_empty()
    );
    home.stop().await;
    community.stop().await;
}

/// Two nodes with the same key push different histories: the second push is refused, the
/// evidence is stored and verifies with the origin's key alone, and the origin is frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_origin_is_evidence() {
    let mut community = TestNode::new("community");
    let mut x1 = TestNode::new("x");
    let mut x2 = TestNode::clone_key("x", &x1);
    community.configure("", &TestNode::peer_entry(&x1, NEVER));
    for x in [&x1, &x2] {
        x.configure(
            "",
            &TestNode::peer_entry(&community, &format!("push = [\"self\"]\n{NEVER}")),
        );
        x.init();
    }
    x1.append(30, "one");
    x2.append(40, "two");
    community.init();
    community.start().await;
    x1.start().await;
    x2.start().await;
    let answer = x1.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    assert_eq!(community.head(x1.id), 30);
    let answer = x2.sync().await;
    let error = answer["peers"][0]["error"].as_str().unwrap();
    assert!(error.contains("fork"), "{error}");
    // Both sides keep the evidence: x2 learns that its key signed another history, and the
    // community refuses x2's chain.
    let own = x2.status();
    assert_eq!(own["origins"][0]["frozen"], true, "{own}");
    let status = community.status();
    let origin = status["origins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == x1.id.to_string())
        .unwrap();
    assert_eq!(origin["frozen"], true, "{origin}");
    assert_eq!(origin["forks"][0]["seq"], 30, "{origin}");
    let evidence = community.store().forks(x1.id).unwrap();
    evidence[0].verify().unwrap();
    // The frozen origin takes nothing more, even from the first history.
    x1.stop().await;
    x1.append(5, "more");
    x1.start().await;
    let answer = x1.sync().await;
    assert!(
        answer["peers"][0]["error"]
            .as_str()
            .unwrap()
            .contains("409"),
        "{answer}"
    );
    assert_eq!(community.head(x1.id), 30);
    for n in [&mut community, &mut x1, &mut x2] {
        n.stop().await;
    }
}

/// A holder restored from an old backup serves less than it acknowledged: the origin reports
/// it (status, metric), then pushes the missing entries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_holder_is_reported() {
    let (mut home, mut community) = backup_pair(None);
    home.append(100, "a");
    home.start().await;
    community.start().await;
    home.sync().await;
    let h = home.id.to_string();
    assert_eq!(
        holder_status(&home.status(), &h, "peer", "community")["acked_seq"],
        100
    );

    // Back up the community's data directory while it is stopped.
    community.stop().await;
    let backup = tempfile::tempdir().unwrap();
    for f in ["tandem.db", "node.key"] {
        std::fs::copy(community.data().join(f), backup.path().join(f)).unwrap();
    }
    community.start().await;
    home.stop().await;
    home.append(50, "b");
    home.start().await;
    home.sync().await;
    assert_eq!(
        holder_status(&home.status(), &h, "peer", "community")["acked_seq"],
        150
    );

    // Restore the old copy.
    community.stop().await;
    for f in ["tandem.db-wal", "tandem.db-shm"] {
        let _ = std::fs::remove_file(community.data().join(f));
    }
    std::fs::copy(
        backup.path().join("tandem.db"),
        community.data().join("tandem.db"),
    )
    .unwrap();
    community.start().await;
    assert_eq!(community.head(home.id), 100);
    let answer = home.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    let status = home.status();
    let c = holder_status(&status, &h, "peer", "community");
    let rollback = &c["last_rollback"];
    assert_eq!(
        (&rollback["served_seq"], &rollback["expected_seq"]),
        (&json!(100), &json!(150)),
        "{c}"
    );
    assert!(rollback["at"].as_str().unwrap().ends_with('Z'));
    let text = common::tandem(&home.config_path(), &["status"], 0);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("served seq 100 at ")
            && text.contains(" after acknowledging or serving seq 150: rolled back or withholding"),
        "{text}"
    );
    let metrics = home.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tandem_holder_rollbacks_total{")
                && l.contains("holder=\"community\"")
                && l.contains(&h)
                && l.ends_with(" 1")),
        "{metrics}"
    );
    // The same pass pushed the missing entries again: healed, but the finding stays.
    assert_eq!(community.head(home.id), 150);
    assert_eq!(
        (&c["behind"], &c["acked_seq"]),
        (&json!(false), &json!(150)),
        "{c}"
    );
    home.stop().await;
    community.stop().await;
}

/// A node that lost its store (key kept) fetches its feed back from its peer before appending,
/// and continues from the recovered head: the holder sees no fork.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_recovery_after_losing_the_store() {
    let kinto = kinto_with_records(10).await;
    let mut home = TestNode::new("home");
    let mut community = TestNode::new("community");
    home.configure(
        "",
        &format!(
            "{}{}",
            home.source(&kinto, "1s"),
            TestNode::peer_entry(&community, "push = [\"self\"]\nserve = [\"self\"]")
        ),
    );
    // The community's entry for home has default lists: a node may always read its own feed
    // back, which is what recovery needs.
    community.configure("", &TestNode::peer_entry(&home, ""));
    home.init();
    community.init();
    community.start().await;
    home.start().await;
    wait_for(LONG, "home's feed at the community", || {
        let head = home.head(home.id);
        head >= 12 && community.head(home.id) == head
    })
    .await;
    let head = home.head(home.id);
    let before = home.export_origin("self");
    home.stop().await;
    for f in ["tandem.db", "tandem.db-wal", "tandem.db-shm"] {
        let _ = std::fs::remove_file(home.data().join(f));
    }
    record(&kinto, "after").await;
    home.start().await;
    wait_for(LONG, "recovery and the next ingest", || {
        home.head(home.id) > head
    })
    .await;
    // Exactly one new entry: the record written while the store was gone.
    wait_for(LONG, "the community gets it", || {
        community.head(home.id) == head + 1
    })
    .await;
    assert_eq!(home.head(home.id), head + 1);
    assert!(home.export_origin("self").contains("/records/after"));
    assert!(
        before
            .lines()
            .all(|l| home.export_origin("self").contains(l))
    );
    let status = community.status();
    assert_eq!(status["origins"][1]["frozen"], false, "{status}");
    assert_eq!(home.status()["node"]["recovering"], false);
    home.stop().await;
    community.stop().await;
}

/// A host with a quota refuses pushes past it with 507; the pushing node shows it in status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_overrun_is_refused_and_shown() {
    let mut home = TestNode::new("home");
    let mut community = TestNode::new("community");
    home.configure("", &TestNode::peer_entry(&community, "push = [\"self\"]"));
    community.configure(
        "",
        &TestNode::peer_entry(&home, &format!("quota = \"16 KiB\"\n{NEVER}")),
    );
    home.init();
    community.init();
    home.append(40, "a");
    community.start().await;
    home.start().await;
    wait_for(LONG, "the first push under the quota", || {
        community.head(home.id) == 40
    })
    .await;
    home.stop().await;
    home.append(100, "b");
    home.start().await;
    wait_for(LONG, "status shows the quota", || {
        let status = home.status();
        status["daemon"]["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|w| {
                w["name"] == "community"
                    && w["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("507") || e.contains("quota"))
            })
    })
    .await;
    assert_eq!(
        community.head(home.id),
        40,
        "nothing past the quota is stored"
    );
    let answer = home.sync().await;
    let error = answer["peers"][0]["error"].as_str().unwrap();
    assert!(error.contains("quota exceeded"), "{error}");
    home.stop().await;
    community.stop().await;
}

/// A `tandem run` process.
struct Process(std::process::Child);

impl Process {
    /// Starts `node` as a process. Its reserved port is let go of only now, so that no other
    /// test can take it in between.
    fn start(node: &mut TestNode) -> Process {
        node.release_port();
        let _ = std::fs::remove_file(node.data().join("tandem.sock"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("--config")
            .arg(node.config_path())
            .arg("run")
            .env("TANDEM_LOG", "warn")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Process(child)
    }

    fn signal(&self, signal: i32) {
        assert_eq!(unsafe { libc::kill(self.0.id() as i32, signal) }, 0);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Real processes: the holder is killed with SIGKILL in the middle of a continuous pull, then
/// started again; the origin is stopped with SIGTERM while serving. Every stored page verifies
/// at every step, and the holder ends with the whole feed, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_processes_resume_without_loss() {
    let mut origin = TestNode::new("origin");
    let mut holder = TestNode::new("holder");
    origin.configure("", &TestNode::peer_entry(&holder, "serve = [\"self\"]"));
    holder.configure(
        "",
        &TestNode::peer_entry(&origin, &format!("pull = [\"{}\"]", origin.id)),
    );
    origin.init();
    holder.init();
    origin.append(60_000, "r");
    let serving = Process::start(&mut origin);
    let mut pulling = Process::start(&mut holder);
    for round in 0..3 {
        wait_for(LONG, "the pull to start", || {
            holder.head(origin.id) > round * 10_000
        })
        .await;
        pulling.signal(libc::SIGKILL);
        let _ = pulling.0.wait();
        let held = holder.head(origin.id);
        let report = holder.store().verify_origin(origin.id).unwrap();
        assert!(
            report.problems.is_empty(),
            "after SIGKILL at {held}: {report:?}"
        );
        // Pages end at the origin's checkpoints: the holder never keeps part of one.
        let checkpoints = origin.store().checkpoints(origin.id).unwrap();
        assert!(
            checkpoints.iter().any(|cp| cp.seq.0 == held),
            "held seq {held} is not at a checkpoint: a page was split"
        );
        pulling = Process::start(&mut holder);
    }
    serving.signal(libc::SIGTERM);
    let mut serving = serving;
    let exit = serving.0.wait().unwrap();
    assert!(exit.success(), "SIGTERM ends the daemon cleanly: {exit}");
    let serving = Process::start(&mut origin);
    wait_for(LONG, "the whole feed", || holder.head(origin.id) == 60_000).await;
    let store = holder.store();
    assert!(store.verify_origin(origin.id).unwrap().problems.is_empty());
    let info = store.origins().unwrap();
    let held = info.iter().find(|o| o.id == origin.id).unwrap();
    let mine = origin.store().origins().unwrap()[0].clone();
    assert_eq!(
        (held.head, held.bytes),
        (mine.head, mine.bytes),
        "nothing twice"
    );
    drop(pulling);
    drop(serving);
}

/// Snapshots: signed on demand (through the running daemon), handed to the holder with the
/// feed, relayed to a third node, listed with their holders, verified; a tampered one fails
/// verification, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_travel_with_the_feed() {
    let (mut home, mut community, mut laptop) = relay_trio("", "");
    home.append(3000, "a");
    for n in [&mut home, &mut community, &mut laptop] {
        n.start().await;
    }
    let out = common::tandem(&home.config_path(), &["snapshot", "create"], 0);
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.contains("at seq 3000: 3000 objects"), "{line}");
    let again = common::tandem(&home.config_path(), &["snapshot", "create"], 0);
    assert!(String::from_utf8_lossy(&again.stdout).contains("unchanged"));

    let answer = home.sync().await;
    assert_eq!(answer["peers"][0]["push"]["snapshots"], 1, "{answer}");
    let answer = laptop.sync().await;
    assert_eq!(answer["peers"][0]["pull"]["snapshots"], 1, "{answer}");
    let listed: Value = serde_json::from_slice(
        &common::tandem(&home.config_path(), &["snapshot", "list", "--json"], 0).stdout,
    )
    .unwrap();
    assert_eq!(listed[0]["seq"], 3000, "{listed}");
    assert_eq!(listed[0]["holders"][0]["peer"], "community", "{listed}");
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    for node in [&community, &laptop] {
        let snaps = node.store().snapshots(home.id).unwrap();
        assert_eq!(snaps.len(), 1);
        assert_eq!(snaps[0].id(), id);
        let out = common::tandem(&node.config_path(), &["snapshot", "verify"], 0);
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 snapshot(s) checked, 0 failed"));
    }

    // Flip one byte of the laptop's stored statement: verification names the snapshot.
    laptop.stop().await;
    {
        let conn = rusqlite::Connection::open(laptop.data().join("tandem.db")).unwrap();
        let mut statement: Vec<u8> = conn
            .query_row("SELECT statement FROM snapshots", [], |r| r.get(0))
            .unwrap();
        statement[100] ^= 1;
        conn.execute("UPDATE snapshots SET statement = ?1", [statement])
            .unwrap();
    }
    let out = common::tandem(&laptop.config_path(), &["snapshot", "verify"], 1);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("at seq 3000") && text.contains("bad snapshot signature"),
        "{text}"
    );
    home.stop().await;
    community.stop().await;
}

/// Entries large enough that 4,096 of them would not fit a page, and incompressible enough that
/// a page is several MiB on the wire: pages are cut by bytes, and pushes and pulls of them work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_entries_travel_in_pages_cut_by_size() {
    let (mut home, mut community, mut laptop) = relay_trio("", "");
    // 120 entries of ~150 KB: 18 MB, in pages of at most 8 MiB plus one entry.
    home.append_sized(120, "big", 150_000);
    for n in [&mut home, &mut community, &mut laptop] {
        n.start().await;
    }
    let answer = home.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    let pushed = &answer["peers"][0]["push"];
    assert_eq!(pushed["sent"], 120, "{answer}");
    assert!(pushed["pages"].as_u64().unwrap() >= 3, "{answer}");
    assert!(
        pushed["wire_bytes"].as_u64().unwrap() > 12_000_000,
        "the test data compresses too well to test anything: {answer}"
    );
    let answer = laptop.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    assert_eq!(laptop.head(home.id), 120);
    assert!(
        laptop
            .store()
            .verify_origin(home.id)
            .unwrap()
            .problems
            .is_empty()
    );
    for n in [&mut home, &mut community, &mut laptop] {
        n.stop().await;
    }
}

/// A node whose store was restored from an old backup sees a peer holding more of its own
/// feed: it fetches the missing entries back before appending, and nobody records a fork.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_restored_from_an_old_backup_catches_up_before_appending() {
    let (mut home, mut community) = backup_pair(None);
    home.append(100, "a");
    let backup = tempfile::tempdir().unwrap();
    std::fs::copy(
        home.data().join("tandem.db"),
        backup.path().join("tandem.db"),
    )
    .unwrap();
    home.append(50, "b");
    community.start().await;
    home.start().await;
    home.sync().await;
    assert_eq!(community.head(home.id), 150);
    home.stop().await;
    for f in ["tandem.db-wal", "tandem.db-shm"] {
        let _ = std::fs::remove_file(home.data().join(f));
    }
    std::fs::copy(
        backup.path().join("tandem.db"),
        home.data().join("tandem.db"),
    )
    .unwrap();
    assert_eq!(home.head(home.id), 100);
    home.start().await;
    let answer = home.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    assert_eq!(home.head(home.id), 150, "the missing entries came back");
    assert_eq!(home.status()["node"]["recovering"], false);
    home.stop().await;
    // New entries continue from seq 150, and the community accepts them: no fork.
    home.append(10, "c");
    home.start().await;
    let answer = home.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    assert_eq!(community.head(home.id), 160);
    assert!(community.store().forks(home.id).unwrap().is_empty());
    home.stop().await;
    community.stop().await;
}

/// A peer that pulls home's feed holds compaction back until it has pulled past the oldest
/// kept snapshot: it never meets 410 for entries it lacks. Its position comes from its own
/// signed requests, and shows in `status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_pulled_holds_compaction_back_until_it_has_pulled_past() {
    let (mut home, mut laptop) = (TestNode::new("home"), TestNode::new("laptop"));
    let h = home.id.to_string();
    home.configure(
        "",
        &format!(
            "[snapshots]\n{NEVER}\nkeep_last = 2\n{}",
            TestNode::peer_entry(&laptop, &format!("serve = [\"self\"]\n{NEVER}"))
        ),
    );
    laptop.configure(
        "",
        &TestNode::peer_entry(&home, &format!("pull = [\"{h}\"]\n{NEVER}")),
    );
    home.init();
    laptop.init();
    home.append(1000, "a");
    home.start().await;
    common::tandem(&laptop.config_path(), &["sync"], 0);
    home.stop().await;
    let pulled = |home: &TestNode| {
        let holders = home.store().holders(home.id).unwrap();
        holders
            .iter()
            .find(|x| x.holder == laptop.id)
            .and_then(|x| x.pulled_seq)
    };
    assert_eq!(pulled(&home), Some(1000));

    // Every object rewritten, then a snapshot: without the laptop, compaction would drop the
    // first 1,000 entries, which the laptop has not pulled yet.
    home.append(1000, "a");
    let out = common::tandem(&home.config_path(), &["snapshot", "create"], 0);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("compacted away"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(home.store().base(home.id).unwrap(), None);
    let status = common::tandem(&home.config_path(), &["status", "--json"], 0);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["origins"][0]["holders"][0]["pulled_seq"], 1000,
        "{status}"
    );

    // The laptop catches up with the feed, then the next snapshot compacts.
    home.start().await;
    let out = common::tandem(&laptop.config_path(), &["sync"], 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1000 entries pulled"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    home.stop().await;
    assert_eq!(pulled(&home), Some(2000));
    home.append(10, "b");
    let out = common::tandem(&home.config_path(), &["snapshot", "create"], 0);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("1000 entries") && said.contains("below seq 2000"),
        "{said}"
    );
    home.start().await;
    common::tandem(&laptop.config_path(), &["sync"], 0);
    assert_eq!(laptop.head(home.id), 2010);
    laptop.start().await;
    assert_eq!(laptop.export_origin(&h), home.export_origin("self"));
    laptop.stop().await;
    home.stop().await;
}

/// Home keeps one snapshot and compacts the entries below it. A new holder cannot get those
/// entries from home any more: it starts from home's snapshot (its state, checked against the
/// signed root), then tails the feed, and ends with home's exact state; both verify.
/// The laptop joins home's `serve` list only after the compaction (a reader already listed
/// would have held it back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_holder_starts_from_a_compacted_origins_snapshot() {
    let (mut home, mut laptop) = (TestNode::new("home"), TestNode::new("laptop"));
    let h = home.id.to_string();
    let snapshots = format!("[snapshots]\n{NEVER}\nkeep_last = 1\n");
    home.configure("", &snapshots);
    laptop.configure(
        "",
        &TestNode::peer_entry(&home, &format!("pull = [\"{h}\"]\n{NEVER}")),
    );
    home.init();
    laptop.init();
    home.append(2000, "a");
    common::tandem(&home.config_path(), &["snapshot", "create"], 0);
    // Rewrite the first 1,000 objects: their first versions are no longer state.
    home.append(1000, "a");
    let out = common::tandem(&home.config_path(), &["snapshot", "create"], 0);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("1000 entries") && said.contains("below seq 3000"),
        "{said}"
    );
    home.append(500, "b");
    assert_eq!(home.store().base(home.id).unwrap().unwrap().seq.0, 3000);
    common::tandem(&home.config_path(), &["verify"], 0);

    home.configure(
        "",
        &format!(
            "{snapshots}{}",
            TestNode::peer_entry(&laptop, &format!("serve = [\"self\"]\n{NEVER}"))
        ),
    );
    home.start().await;
    let out = common::tandem(&laptop.config_path(), &["sync"], 0);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("started from its snapshot at seq 3000")
            && said.contains("500 entries pulled"),
        "{said}"
    );
    assert_eq!(laptop.head(home.id), 3500);
    // Home recorded what its last request said: it holds everything.
    let pulled: Vec<Option<u64>> = home
        .store()
        .holders(home.id)
        .unwrap()
        .iter()
        .map(|x| x.pulled_seq)
        .collect();
    assert_eq!(pulled, vec![Some(3500)]);
    laptop.start().await;
    assert_eq!(laptop.export_origin(&h), home.export_origin("self"));
    let store = laptop.store();
    assert_eq!(
        store.base(home.id).unwrap(),
        home.store().base(home.id).unwrap()
    );
    assert_eq!(store.snapshots(home.id).unwrap().len(), 1);
    drop(store);
    let out = common::tandem(&laptop.config_path(), &["verify"], 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&h));
    laptop.stop().await;
    home.stop().await;
}

/// A daemon stopped while a peer waits in a long poll answers the poll at once and lets go of
/// its store: whatever opens the store next (here a writer) finds it free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_long_poll_answers_it_and_lets_go_of_the_store() {
    let (mut home, laptop) = (TestNode::new("home"), TestNode::new("laptop"));
    home.configure(
        "",
        &TestNode::peer_entry(&laptop, &format!("serve = [\"self\"]\n{NEVER}")),
    );
    home.init();
    home.append(3, "a");
    home.start().await;
    let (path, query) = (
        format!("/v1/origins/{}/entries", home.id),
        "after=3&wait=30",
    );
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let outgoing = tandem::protocol::signature::Outgoing {
        target: home.id,
        method: "GET",
        path: &path,
        query: Some(query),
    };
    let signed = tandem::protocol::signature::sign(&laptop.key(), &outgoing, b"", created);
    let mut poll = tandem::net::client_builder().build().unwrap().get(format!(
        "{}{}?{query}",
        home.url().trim_end_matches('/'),
        path
    ));
    for (name, value) in signed.pairs() {
        poll = poll.header(name, value);
    }
    let poll = poll.send();
    let poll = tokio::spawn(poll);
    // The poll is in once home has recorded what the laptop says it holds.
    let laptop_id = laptop.id;
    wait_for(LONG, "the long poll to arrive", || {
        home.store()
            .holders(home.id)
            .unwrap()
            .iter()
            .any(|h| h.holder == laptop_id && h.pulled_seq == Some(3))
    })
    .await;
    home.stop().await;
    // Held by the stopped daemon (the poll's handler still waiting), the store would be
    // locked here.
    home.append(1, "b");
    let answer = poll.await.unwrap().unwrap();
    assert_eq!(answer.status().as_u16(), 204);
    assert_eq!(answer.headers()["tandem-head"], "3");
}

/// A peer back from an outage is pulled from as soon as it is heard from: the community's
/// pull from home, backing off while home is down, tries again when home's push arrives
/// (not when its delay ends) and shows healthy within a second or so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_back_from_an_outage_is_pulled_from_as_soon_as_it_is_heard_from() {
    let (mut home, mut community) = (TestNode::new("home"), TestNode::new("community"));
    let h = home.id.to_string();
    home.configure(
        "",
        &TestNode::peer_entry(&community, "push = [\"self\"]\nserve = [\"self\"]"),
    );
    community.configure(
        "",
        &TestNode::peer_entry(&home, &format!("pull = [\"{h}\"]")),
    );
    home.init();
    community.init();
    home.append(3, "a");
    community.start().await;
    home.start().await;
    wait_for(LONG, "the community holds home's feed", || {
        community.head(home.id) == 3
    })
    .await;

    let pull = || community.worker("pull");
    home.stop().await;
    // Refused at once each time, the pull backs off: after its fifth failure it waits 8 to
    // 16 s.
    let started = Instant::now();
    while pull().await["consecutive_errors"].as_u64() < Some(5) {
        assert!(started.elapsed() < LONG * 2, "{}", pull().await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let back = Instant::now();
    home.start().await;
    loop {
        let w = pull().await;
        if w["ok"] == true {
            break;
        }
        // Without the wake, not before the 8 s its delay lasts at least.
        assert!(
            back.elapsed() < Duration::from_secs(7),
            "the pull still waits out its backoff: {w}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("pull healthy {:?} after home's return", back.elapsed());
    home.stop().await;
    community.stop().await;
}
