//! Entries damaged on a node's disk: found when read to be served or pushed, never sent,
//! shown in `status`, and replaced by a good copy fetched from a peer. Real nodes on real
//! sockets; the damage is a byte flipped in the SQLite file with the node stopped.

use crate::common;

use std::time::Duration;

use common::node::{NEVER, TestNode, origin_status, relay_trio, wait_for};
use serde_json::Value;
use tandem::identity::NodeId;

const LONG: Duration = Duration::from_secs(30);

/// Flips one byte in the middle of `origin`'s entry at `seq` in `node`'s store (stopped).
fn flip(node: &TestNode, origin: NodeId, seq: u64) {
    let conn = rusqlite::Connection::open(node.data().join("tandem.db")).unwrap();
    let row: i64 = conn
        .query_row(
            "SELECT id FROM origins WHERE node_id = ?1",
            [origin.as_bytes().as_slice()],
            |r| r.get(0),
        )
        .unwrap();
    let key = (row << 40) | seq as i64;
    let mut bytes: Vec<u8> = conn
        .query_row("SELECT bytes FROM entries WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 0x01;
    conn.execute(
        "UPDATE entries SET bytes = ?2 WHERE key = ?1",
        (key, bytes.as_slice()),
    )
    .unwrap();
}

/// Home pushes to the community, which serves home's feed to the laptop. A byte flipped in
/// one of home's entries on the community: the laptop gets a clear error naming the entry,
/// not the page; the community shows the damage, fetches the entry again from home once home
/// is reachable, and serves the right bytes; the laptop catches up and everything verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_entry_on_a_relay_is_not_served_and_is_fetched_again() {
    let (mut home, mut community, mut laptop) = relay_trio("", "serve = [\"self\"]");
    let h = home.id.to_string();
    home.append(3000, "a");
    for n in [&mut home, &mut community, &mut laptop] {
        n.start().await;
    }
    home.sync().await;
    assert_eq!(community.head(home.id), 3000);

    community.stop().await;
    flip(&community, home.id, 10);
    community.start().await;
    // Home is away: the community cannot fetch a good copy yet.
    home.stop().await;

    let answer = laptop.sync().await;
    let error = answer["peers"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("503") && error.contains("seq 10 is damaged") && error.contains(&h),
        "{answer}"
    );
    assert_eq!(
        laptop.head(home.id),
        0,
        "nothing of the damaged page is stored"
    );

    wait_for(LONG, "the community records the damage", || {
        !community.store().damaged(home.id).unwrap().is_empty()
    })
    .await;
    let status = community.status();
    let damaged = &origin_status(&status, &h)["damaged"];
    assert_eq!(damaged[0]["seq"], 10, "{status:#}");
    assert_eq!(damaged[0]["needs_operator"], false, "{status:#}");
    assert!(
        damaged[0]["detail"]
            .as_str()
            .unwrap()
            .contains("do not hash"),
        "{status:#}"
    );
    let out = common::tandem(&community.config_path(), &["verify"], 1);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("seq 10"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let metrics = community.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tandem_entries_damaged_total{")
                && l.contains(&h)
                && l.ends_with(" 1")),
        "{metrics}"
    );

    // Home back: the community's repair loop (retrying with backoff) fetches the entry.
    home.start().await;
    wait_for(LONG, "the community replaces the damaged entry", || {
        community.store().damaged(home.id).unwrap().is_empty()
    })
    .await;
    let metrics = community.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tandem_entries_repaired_total{")
                && l.contains(&h)
                && l.ends_with(" 1")),
        "{metrics}"
    );
    let answer = laptop.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    assert_eq!(laptop.head(home.id), 3000);
    assert_eq!(laptop.export_origin(&h), home.export_origin("self"));
    assert_eq!(
        origin_status(&community.status(), &h)["damaged"],
        Value::Array(vec![])
    );
    for n in [&community, &laptop] {
        common::tandem(&n.config_path(), &["verify"], 0);
    }
    for n in [&mut home, &mut community, &mut laptop] {
        n.stop().await;
    }
}

/// The damaged entries are on the origin itself: its push finds one and sends nothing, a
/// reader pulling from it gets the other named; it fetches its own entry back from the
/// holder that has it, and reports the one no peer holds as needing an operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_fetches_its_own_damaged_entry_back_or_says_it_cannot() {
    let mut home = TestNode::new("home");
    let mut community = TestNode::new("community");
    let mut laptop = TestNode::new("laptop");
    let h = home.id.to_string();
    home.configure(
        "",
        &format!(
            "{}{}",
            TestNode::peer_entry(&community, &format!("push = [\"self\"]\n{NEVER}")),
            TestNode::peer_entry(&laptop, &format!("serve = [\"self\"]\n{NEVER}"))
        ),
    );
    community.configure("", &TestNode::peer_entry(&home, NEVER));
    laptop.configure(
        "",
        &TestNode::peer_entry(&home, &format!("pull = [\"{h}\"]\n{NEVER}")),
    );
    for n in [&home, &community, &laptop] {
        n.init();
    }
    home.append(100, "a");
    for n in [&mut home, &mut community, &mut laptop] {
        n.start().await;
    }
    home.sync().await;
    assert_eq!(community.head(home.id), 100);

    // Seq 50 is held by the community; seq 150 by no other node.
    home.stop().await;
    home.append(100, "b");
    flip(&home, home.id, 50);
    flip(&home, home.id, 150);
    home.start().await;
    let answer = home.sync().await;
    let error = answer["peers"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("seq 150"), "{answer}");
    assert_eq!(community.head(home.id), 100, "nothing damaged was pushed");
    let answer = laptop.sync().await;
    let error = answer["peers"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("seq 50 is damaged"), "{answer}");

    wait_for(
        LONG,
        "home fetches seq 50 back and gives up on seq 150",
        || {
            let damaged = home.store().damaged(home.id).unwrap();
            damaged.len() == 1 && damaged[0].seq.0 == 150 && damaged[0].unrepaired_at.is_some()
        },
    )
    .await;
    let status = home.status();
    let damaged = &origin_status(&status, &h)["damaged"];
    assert_eq!(damaged[0]["seq"], 150, "{status:#}");
    assert_eq!(damaged[0]["needs_operator"], true, "{status:#}");
    let text = common::tandem(&home.config_path(), &["status"], 0);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("restore it from a backup"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    // Seq 50 is whole again; the reader is now told about seq 150.
    let answer = laptop.sync().await;
    let error = answer["peers"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("seq 150 is damaged"), "{answer}");
    let out = common::tandem(&home.config_path(), &["verify"], 1);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("seq 150") && !text.contains("seq 50:"),
        "{text}"
    );
    for n in [&mut home, &mut community, &mut laptop] {
        n.stop().await;
    }
}
