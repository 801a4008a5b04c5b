//! What a crash and a bad network may not do, against real `tandem` processes: SIGKILL at
//! seeded random moments of ingest, push, pull, restore, import and compaction, and a proxy
//! that drops, resets, delays, cuts and damages the traffic between two daemons.
//!
//! After every kill the store is reopened by `tandem verify` (which must pass), heads only
//! grow, and whatever was acknowledged before the kill (a head committed, a receipt the pusher
//! recorded) is still held; after a last run that is not killed, everything converges. The
//! seed is printed at the start of each test; `TANDEM_CRASH_SEED=N` replays it.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::chaos::{self, Rng};
use common::kinto::{Kinto, Options};
use common::node::{NEVER, TestNode};
use common::process::Daemon;
use common::proxy::{Fault, Proxy};
use serde_json::{Value, json};

/// Puts `n` records into `collection` (one batch per 150), each with `pad` bytes of text;
/// `tag` makes the data differ between calls that write the same ids.
async fn fill(kinto: &Kinto, collection: &str, ids: std::ops::Range<usize>, tag: &str) {
    let ids: Vec<usize> = ids.collect();
    for chunk in ids.chunks(150) {
        let requests: Vec<_> = chunk
            .iter()
            .map(|i| json!({"method": "PUT", "path": format!("{collection}/records/r{i:05}"), "body": {"data": {"i": i, "tag": tag, "pad": "p".repeat(300)}}}))
            .collect();
        let answer = kinto.batch("alice", requests).await;
        for r in answer["responses"].as_array().unwrap() {
            assert!(r["status"].as_u64().unwrap() < 300, "{r}");
        }
    }
}

/// A Kinto server with bucket `b` holding `collections` collections `c0`, `c1`…, each filled
/// with `records` records (see [`fill`]).
async fn filled_kinto(collections: usize, records: usize) -> Kinto {
    let kinto = Kinto::start(Options::default()).await;
    kinto
        .ok("alice", "PUT", "buckets/b", Some(json!({"data": {}})))
        .await;
    for c in 0..collections {
        kinto
            .ok(
                "alice",
                "PUT",
                &format!("buckets/b/collections/c{c}"),
                Some(json!({"data": {}})),
            )
            .await;
        fill(
            &kinto,
            &format!("/buckets/b/collections/c{c}"),
            0..records,
            "a",
        )
        .await;
    }
    kinto
}

/// `tandem export` of `node`'s own state, one JSON value per object.
fn export(node: &TestNode) -> Vec<Value> {
    let out = common::tandem(&node.config_path(), &["export"], 0);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The same objects (paths, and data apart from `last_modified`) in a feed's state and in a
/// Kinto dump.
fn assert_same_objects(ours: &[Value], theirs: &[Value], what: &str) {
    let view = |v: &[Value]| -> Vec<(String, Value)> {
        v.iter()
            .map(|o| {
                let mut data = o["data"].clone();
                if let Some(d) = data.as_object_mut() {
                    d.remove("last_modified");
                }
                (o["path"].as_str().unwrap().to_owned(), data)
            })
            .collect()
    };
    let (ours, theirs) = (view(ours), view(theirs));
    assert_eq!(ours.len(), theirs.len(), "{what}: object counts differ");
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a, b, "{what}");
    }
}

/// The seq up to which `holder`'s receipt for `origin`, recorded in `node`'s store, says it
/// stores the feed (0 without one).
fn receipt_seq(node: &TestNode, origin: &TestNode, holder: &TestNode) -> u64 {
    node.store()
        .receipts(origin.id)
        .unwrap()
        .iter()
        .filter(|r| r.holder == holder.id)
        .map(|r| r.seq.0)
        .max()
        .unwrap_or(0)
}

/// Counts rounds, and the kills that landed while the command still ran.
#[derive(Default)]
struct Tally {
    rounds: u32,
    kills: u32,
}

impl Tally {
    /// Prints the test's tally (`details` after the kills) and checks that at least a third
    /// of the kills landed while the command ran.
    fn finish(&self, test: &str, details: &str, started: Instant) {
        println!(
            "{test}: {} rounds, {} kills landed{details}, {:.1}s",
            self.rounds,
            self.kills,
            started.elapsed().as_secs_f64()
        );
        assert!(
            self.kills * 3 >= self.rounds,
            "only {} of {} kills landed while the command ran",
            self.kills,
            self.rounds
        );
    }

    /// Runs `tandem ARGS` on `config`, SIGKILLs it after `delay`; a command that ended by
    /// itself must have succeeded.
    fn round(&mut self, config: &Path, args: &[&str], delay: Duration) {
        self.rounds += 1;
        match chaos::kill_after(chaos::spawn(config, args), delay) {
            None => self.kills += 1,
            Some(status) => assert!(
                status.success(),
                "round {}: tandem {args:?} failed by itself: {status}\n{}",
                self.rounds,
                std::fs::read_to_string(chaos::stderr_of(config)).unwrap_or_default()
            ),
        }
    }
}

/// Ingest from a real Kinto and push to a running daemon, killed round after round; then a
/// third node pulls from the origin's daemon, killed round after round; then nothing is
/// killed and all three converge on the Kinto server's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingest_push_and_pull_loses_nothing_acknowledged() {
    let mut rng = Rng::from_env("ingest_push_pull");
    let started = Instant::now();
    let kinto = filled_kinto(3, 150).await;
    let mut home = TestNode::new("home");
    let mut community = TestNode::new("community");
    let mut laptop = TestNode::new("laptop");
    home.configure(
        "",
        &format!(
            "{}{}{}",
            home.source(&kinto, "1s"),
            TestNode::peer_entry(&community, &format!("push = [\"self\"]\n{NEVER}")),
            TestNode::peer_entry(&laptop, &format!("serve = [\"self\"]\n{NEVER}")),
        ),
    );
    community.configure("", &TestNode::peer_entry(&home, NEVER));
    laptop.configure(
        "",
        &TestNode::peer_entry(&home, &format!("pull = [\"{}\"]\n{NEVER}", home.id)),
    );
    for n in [&mut home, &mut community, &mut laptop] {
        n.init();
        n.release_port();
    }
    let mut holder = Daemon::spawn(&community.config_path());
    let mut tally = Tally::default();

    // Ingest and push: each round brings 150 new records and updates 50.
    let mut own = 0;
    for round in 0..16 {
        let c = round % 3;
        let collection = format!("/buckets/b/collections/c{c}");
        fill(
            &kinto,
            &collection,
            1000 + round * 150..1150 + round * 150,
            "n",
        )
        .await;
        fill(&kinto, &collection, 0..50, &format!("u{round}")).await;
        let held_before = community.head(home.id);
        let delay = rng.between(Duration::from_millis(10), Duration::from_millis(400));
        tally.round(&home.config_path(), &["sync"], delay);
        let when = format!("ingest/push round {round} (kill after {delay:?})");
        chaos::verify(&home.config_path(), &when);
        chaos::verify(&community.config_path(), &when);
        let head = home.head(home.id);
        assert!(
            head >= own,
            "{when}: own head went from {own} back to {head}"
        );
        own = head;
        // A receipt the pusher recorded says what the holder has: it must hold it.
        let receipt = receipt_seq(&home, &home, &community);
        let held = community.head(home.id);
        assert!(
            held >= receipt.max(held_before),
            "{when}: the holder holds {held}, its receipt says {receipt}, it held {held_before}"
        );
        assert!(held <= own, "{when}: the holder holds more than the origin");
    }
    // The holder itself, killed while idle or receiving.
    tally.rounds += 1;
    tally.kills += 1;
    unsafe { libc::kill(holder.pid() as i32, libc::SIGKILL) };
    holder.child.wait().unwrap();
    chaos::verify(&community.config_path(), "after killing the holder");

    // Pull: the origin's daemon serves (and ingests), the laptop's `tandem sync` is killed.
    let mut origin = Daemon::spawn(&home.config_path());
    let mut pulled = 0;
    for round in 0..14 {
        if round == 7 {
            // The serving daemon, killed in the middle of the rounds, comes back.
            tally.rounds += 1;
            tally.kills += 1;
            unsafe { libc::kill(origin.pid() as i32, libc::SIGKILL) };
            origin.child.wait().unwrap();
            chaos::verify(&home.config_path(), "after killing the serving daemon");
            assert!(home.head(home.id) >= own, "the origin lost entries");
            origin = Daemon::spawn(&home.config_path());
        }
        fill(
            &kinto,
            "/buckets/b/collections/c0",
            5000 + round * 100..5100 + round * 100,
            "p",
        )
        .await;
        let delay = rng.between(Duration::from_millis(10), Duration::from_millis(300));
        let when = format!("pull round {round} (kill after {delay:?})");
        tally.rounds += 1;
        // The origin's daemon may be pushing to the dead holder, or busy: a pull that ends
        // by itself may report that the round failed, never damage.
        if chaos::kill_after(chaos::spawn(&laptop.config_path(), &["sync"]), delay).is_none() {
            tally.kills += 1;
        }
        chaos::verify(&laptop.config_path(), &when);
        let held = laptop.head(home.id);
        assert!(held >= pulled, "{when}: pulled {pulled}, now holds {held}");
        pulled = held;
        assert!(
            held <= home.head(home.id),
            "{when}: more than the origin has"
        );
    }
    drop(origin);

    // Healed: nothing killed any more; everything converges on the Kinto server's state.
    let _holder = Daemon::spawn(&community.config_path());
    common::tandem(&home.config_path(), &["sync"], 0);
    let _origin = Daemon::spawn(&home.config_path());
    common::tandem(&laptop.config_path(), &["sync"], 0);
    let head = home.head(home.id);
    assert_eq!(community.head(home.id), head);
    assert_eq!(laptop.head(home.id), head);
    assert_eq!(receipt_seq(&home, &home, &community), head);
    for n in [&home, &community, &laptop] {
        chaos::verify(&n.config_path(), "after healing");
    }
    assert_same_objects(&export(&home), &kinto.dump("tandem"), "home and its Kinto");
    tally.finish("ingest_push_pull", &format!(", head {head}"), started);
}

/// Compaction (`tandem snapshot create` with retention), restore into a real Kinto and
/// import of an archive, each killed round after round; each, run once more without a kill,
/// completes, and gives the state it must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_compaction_restore_and_import_leaves_it_whole() {
    let mut rng = Rng::from_env("compaction_restore_import");
    let started = Instant::now();
    let kinto = filled_kinto(2, 300).await;
    let node = TestNode::new("home");
    node.configure(
        "",
        &format!(
            "{}[snapshots]\n{NEVER}\nkeep_last = 1\n",
            node.source(&kinto, "1s")
        ),
    );
    node.init();
    let config = node.config_path();
    common::tandem(&config, &["sync"], 0);
    let mut tally = Tally::default();

    // Compaction: every round updates records, ingests them, and is killed while it signs a
    // snapshot and compacts the entries it supersedes.
    for round in 0..10 {
        fill(
            &kinto,
            &format!("/buckets/b/collections/c{}", round % 2),
            0..200,
            &format!("u{round}"),
        )
        .await;
        common::tandem(&config, &["sync"], 0);
        let (head, state) = (node.head(node.id), export(&node));
        let delay = rng.between(Duration::from_millis(5), Duration::from_millis(120));
        let when = format!("compaction round {round} (kill after {delay:?})");
        tally.round(&config, &["snapshot", "create"], delay);
        chaos::verify(&config, &when);
        assert_eq!(node.head(node.id), head, "{when}");
        assert_eq!(export(&node), state, "{when}: compaction changed the state");
    }
    common::tandem(&config, &["snapshot", "create"], 0);
    chaos::verify(&config, "after the last compaction");
    let status = node.status();
    assert!(
        status["origins"][0]["base_seq"].as_u64().unwrap() > 0,
        "nothing was ever compacted: {status}"
    );
    let state = export(&node);
    assert_same_objects(
        &state,
        &kinto.dump("tandem"),
        "compacted node and its Kinto",
    );

    // Restore into a fresh Kinto, killed; then once more to the end: the target holds the
    // state, and a further restore writes nothing.
    // The target lets `admin` write everything (as docs/operating.md says) and read it back.
    let mut settings = common::kinto::restore_target_settings("admin");
    for kind in ["bucket", "group", "collection", "record"] {
        settings.push_str(&format!("kinto.{kind}_read_principals = account:admin\n"));
    }
    let target = Kinto::start_with_settings(Options::default(), &settings).await;
    let pw = node.dir.path().join("admin-pw");
    common::write_secret(&pw, common::kinto::PASSWORD);
    let restore_args = [
        "restore",
        "--to",
        &target.url,
        "--user",
        "admin",
        "--password-file",
        pw.to_str().unwrap(),
    ];
    for round in 0..10 {
        let delay = rng.between(Duration::from_millis(20), Duration::from_millis(700));
        tally.round(&config, &restore_args, delay);
        chaos::verify(&config, &format!("restore round {round}"));
    }
    let out = common::restore(&config, node.dir.path(), &target, "admin", &[], 0);
    assert!(out.contains("restored"), "{out}");
    assert_same_objects(&state, &target.dump("admin"), "restored Kinto and the feed");
    let out = common::restore(&config, node.dir.path(), &target, "admin", &[], 0);
    assert!(
        out.contains("(0 written,"),
        "a second restore wrote again: {out}"
    );

    // Import of the archive into a new node, killed; then once more to the end.
    let archive = node.dir.path().join("home.tandem");
    common::tandem(
        &config,
        &["export", "--archive", archive.to_str().unwrap()],
        0,
    );
    let copy = TestNode::new("copy");
    copy.configure("", &TestNode::peer_entry(&node, NEVER));
    copy.init();
    let mut held = 0;
    for round in 0..8 {
        let delay = rng.between(Duration::from_millis(5), Duration::from_millis(150));
        let when = format!("import round {round} (kill after {delay:?})");
        tally.round(
            &copy.config_path(),
            &["import", archive.to_str().unwrap()],
            delay,
        );
        chaos::verify(&copy.config_path(), &when);
        let now = copy.head(node.id);
        assert!(now >= held, "{when}: held {held}, now {now}");
        held = now;
    }
    common::tandem(
        &copy.config_path(),
        &["import", archive.to_str().unwrap()],
        0,
    );
    chaos::verify(&copy.config_path(), "after the last import");
    assert_eq!(copy.head(node.id), node.head(node.id));
    tally.finish("compaction_restore_import", "", started);
}

/// A seeded sequence of faults on the wire between two daemons, both ways (the origin pushes
/// through one proxy, the holder pulls through another): nothing damaged is stored, each
/// failure says what happened, and once the wire is healed both converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_between_peers_store_nothing_corrupt_and_heal() {
    let mut rng = Rng::from_env("wire_faults");
    let mut home = TestNode::new("home");
    let mut community = TestNode::new("community");
    let to_community = Proxy::start(community.addr.to_string(), "/").await;
    let to_home = Proxy::start(home.addr.to_string(), "/").await;
    home.configure(
        "",
        &TestNode::peer_entry_at(
            &community,
            &to_community.url,
            &format!("push = [\"self\"]\nserve = [\"self\"]\n{NEVER}"),
        ),
    );
    community.configure(
        "",
        &TestNode::peer_entry_at(
            &home,
            &to_home.url,
            &format!("pull = [\"{}\"]\n{NEVER}", home.id),
        ),
    );
    home.init();
    community.init();
    community.start().await;
    let mut seen = Vec::new();
    let mut held = 0;
    for round in 0..12 {
        // New entries every round, so that each fault meets pages to carry.
        home.append(800 + rng.below(3000) as usize, &format!("r{round}_"));
        home.start().await;
        let mut faults = Vec::new();
        for proxy in [&to_community, &to_home] {
            let fault = match rng.below(6) {
                0 => Fault::Drop,
                1 => Fault::Reset,
                2 => Fault::Delay(rng.below(300)),
                3 => Fault::CutAfter(200 + rng.below(60_000) as usize),
                4 => Fault::FlipAt(200 + rng.below(60_000) as usize),
                _ => Fault::Status(503),
            };
            proxy.set(fault, rng.below(3) as usize);
            faults.push(fault);
        }
        let pushed = home.sync().await;
        let pulled = community.sync().await;
        for answer in [&pushed, &pulled] {
            if let Some(error) = answer["peers"][0]["error"].as_str() {
                seen.push(error.to_owned());
            }
        }
        let when = format!("round {round} with {faults:?}");
        for n in [&home, &community] {
            let report = n.store().verify_origin(home.id).unwrap();
            assert!(report.problems.is_empty(), "{when}: {:?}", report.problems);
        }
        let now = community.head(home.id);
        assert!(now >= held, "{when}: the holder went from {held} to {now}");
        assert!(
            receipt_seq(&home, &home, &community) <= now,
            "{when}: a receipt for more than is held"
        );
        held = now;
        home.stop().await;
    }
    // Healed.
    to_community.set(Fault::None, 0);
    to_home.set(Fault::None, 0);
    home.start().await;
    let answer = home.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    let answer = community.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    let head = home.head(home.id);
    assert_eq!(community.head(home.id), head);
    assert_eq!(receipt_seq(&home, &home, &community), head);
    home.stop().await;
    community.stop().await;
    for n in [&home, &community] {
        chaos::verify(&n.config_path(), "after healing");
    }
    println!("wire_faults: errors seen: {seen:#?}");
    assert!(!seen.is_empty(), "no fault was noticed");
    // Each failure names what happened on the wire, not only that something failed.
    const NAMED: &[&str] = &[
        "reset",
        "cut short",
        "closed",
        "answered 503",
        "invalid",
        "hash",
        "signature",
        "malformed",
        "parse",
        "decod",
        "digest",
    ];
    for error in &seen {
        assert!(
            NAMED.iter().any(|n| error.to_lowercase().contains(n)),
            "this failure does not say what happened: {error}"
        );
    }
}
