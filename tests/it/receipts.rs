//! Receipts for entries that arrive by pull: a holder that pulls signs a receipt for what it
//! stored and hands it to the node it pulled from, which relays it towards the origin. Real
//! nodes on real sockets, synchronized by hand (`sync` through each daemon's admin socket).

use crate::common;

use common::node::{NEVER, TestNode, holder_status, origin_status, relay_trio};
use serde_json::Value;

/// A holder that only pulls (the origin never pushes to it) still acknowledges what it holds:
/// the origin shows its receipt, and durability counts it. Pulling again with nothing new
/// changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_pulls_acknowledges_to_the_origin() {
    let mut home = TestNode::new("home");
    let mut laptop = TestNode::new("laptop");
    let h = home.id.to_string();
    home.configure(
        "durability = 1",
        &TestNode::peer_entry(&laptop, &format!("serve = [\"self\"]\n{NEVER}")),
    );
    laptop.configure(
        "",
        &TestNode::peer_entry(&home, &format!("pull = [\"{h}\"]\n{NEVER}")),
    );
    home.init();
    laptop.init();
    home.append(1500, "a");
    home.start().await;
    laptop.start().await;

    let before = home.status();
    assert_eq!(origin_status(&before, &h)["durable_seq"], 0, "{before:#}");
    let answer = laptop.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    assert_eq!(laptop.head(home.id), 1500);

    let status = home.status();
    let l = holder_status(&status, &h, "id", &laptop.id.to_string());
    assert_eq!(l["peer"], "laptop", "{l}");
    assert_eq!(l["acked_seq"], 1500, "{l}");
    assert!(l["acked_at"].as_str().unwrap().ends_with('Z'), "{l}");
    assert_eq!(
        origin_status(&status, &h)["durable_seq"],
        1500,
        "{status:#}"
    );

    // More entries: the next pull acknowledges them too; a pull with nothing new sends the
    // same receipt no more.
    home.stop().await;
    home.append(10, "b");
    home.start().await;
    laptop.sync().await;
    let status = home.status();
    let acked_at = holder_status(&status, &h, "id", &laptop.id.to_string())["acked_at"].clone();
    assert_eq!(
        holder_status(&status, &h, "id", &laptop.id.to_string())["acked_seq"],
        1510
    );
    assert_eq!(origin_status(&status, &h)["durable_seq"], 1510);
    laptop.sync().await;
    let again = home.status();
    assert_eq!(
        holder_status(&again, &h, "id", &laptop.id.to_string())["acked_at"],
        acked_at
    );
    let out = common::tandem(&home.config_path(), &["verify"], 0);
    assert!(out.status.success());
    home.stop().await;
    laptop.stop().await;
}

/// Home pushes to the community; the laptop pulls home's feed from the community, never
/// talking to home. The laptop's receipt reaches home through the community (in its answer
/// to home's next push pass). Home does not configure the laptop, so it shows the receipt but
/// does not count it toward durability.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_hands_the_pullers_receipt_to_the_origin() {
    let (mut home, mut community, mut laptop) = relay_trio("durability = 2", "");
    let h = home.id.to_string();
    home.append(200, "a");
    for n in [&mut home, &mut community, &mut laptop] {
        n.start().await;
    }
    home.sync().await;
    let answer = laptop.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    assert_eq!(laptop.head(home.id), 200);
    // The community keeps the laptop's receipt (the laptop is its configured peer).
    let c = community.status();
    assert_eq!(
        holder_status(&c, &h, "id", &laptop.id.to_string())["acked_seq"],
        200,
        "{c:#}"
    );
    // Home's next pass with the community brings it home.
    home.sync().await;
    let status = home.status();
    let l = holder_status(&status, &h, "id", &laptop.id.to_string());
    assert_eq!(l["acked_seq"], 200, "{l}");
    assert_eq!(l["peer"], Value::Null, "{l}");
    assert_eq!(
        holder_status(&status, &h, "id", &community.id.to_string())["acked_seq"],
        200
    );
    // Two holders acknowledge seq 200, but only the community is configured here.
    assert_eq!(origin_status(&status, &h)["durable_seq"], 0, "{status:#}");

    // Configured (even with no lists), the laptop counts.
    home.stop().await;
    home.configure(
        "durability = 2",
        &format!(
            "{}{}",
            TestNode::peer_entry(&community, &format!("push = [\"self\"]\n{NEVER}")),
            TestNode::peer_entry(&laptop, NEVER)
        ),
    );
    home.start().await;
    let status = home.status();
    assert_eq!(origin_status(&status, &h)["durable_seq"], 200, "{status:#}");
    assert_eq!(
        holder_status(&status, &h, "id", &laptop.id.to_string())["peer"],
        "laptop"
    );
    for n in [&mut home, &mut community, &mut laptop] {
        n.stop().await;
    }
}
