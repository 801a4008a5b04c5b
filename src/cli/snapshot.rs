//! `tandem snapshot create|list|verify`: signed snapshots of an origin's state.
//!
//! `create` signs a snapshot of this node's state at its head (asking the running daemon, if
//! there is one, since it holds the store); the next push hands it to the holders. `list` shows
//! the snapshots held, of every origin or one, and which holders are known to have them.
//! `verify` re-checks each snapshot's signature and recomputes its state root from the entries.

use serde::Serialize;

use super::admin_client;
use super::{Cli, load_config};
use crate::daemon::Node;
use crate::identity::NodeId;
use crate::protocol::wire::SnapshotDoc;
use crate::store::{Store, StoreError};

/// `tandem snapshot create`.
pub fn create(cli: &Cli) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let data_dir = config.node.data_dir.clone();
    let (doc, created) = match Node::open(config) {
        Ok(mut node) => {
            if node.store.recovering()? {
                anyhow::bail!(
                    "this node is still recovering its own feed from its peers; run `tandem run` (or `tandem sync`) until `tandem status` no longer says so"
                );
            }
            let (s, created) = node.store.create_snapshot(&node.key)?;
            if let (true, Some(retention)) = (created, &node.config.snapshots) {
                let (removed, compacted) = node.store.apply_retention(
                    node.key.id(),
                    retention.into(),
                    &crate::retention::Holders::of_own_feed(&node.config, node.key.id()),
                )?;
                if removed > 0 || compacted.entries > 0 {
                    eprintln!(
                        "retention: {removed} snapshots removed; {} entries ({} bytes) below seq {} compacted away",
                        compacted.entries, compacted.bytes, compacted.base
                    );
                }
            }
            (SnapshotDoc::from(&s), created)
        }
        Err(e) if super::daemon_holds_store(&e) => {
            let answer = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(admin_client::post(&data_dir, "/snapshot"))?;
            (
                serde_json::from_value(answer["snapshot"].clone())?,
                answer["created"].as_bool().unwrap_or(false),
            )
        }
        Err(e) => return Err(e),
    };
    println!(
        "snapshot {} at seq {}: {} objects, {} bytes{}",
        doc.id,
        doc.seq,
        doc.objects,
        doc.bytes,
        if created {
            ""
        } else {
            " (unchanged since the last snapshot)"
        }
    );
    Ok(())
}

#[derive(Serialize)]
struct Listed {
    #[serde(flatten)]
    snapshot: SnapshotDoc,
    time: String,
    holders: Vec<HolderName>,
}

#[derive(Serialize)]
struct HolderName {
    id: NodeId,
    peer: Option<String>,
}

/// The origins named by `--origin` (`self`, an id, or none for all).
fn origins(store: &Store, origin: Option<&str>) -> anyhow::Result<Vec<NodeId>> {
    Ok(match origin {
        None => store.origins()?.into_iter().map(|o| o.id).collect(),
        Some("self") => vec![store.node_id()?],
        Some(id) => vec![id.parse()?],
    })
}

/// `tandem snapshot list`.
pub fn list(cli: &Cli, origin: Option<&str>, json: bool) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let store = Store::open_read_only(&config.node.data_dir)?;
    let mut out = Vec::new();
    for origin in origins(&store, origin)? {
        for s in store.snapshots(origin)? {
            let holders = store
                .snapshot_holders(origin, s.seq)?
                .into_iter()
                .map(|id| HolderName {
                    id,
                    peer: config
                        .peers
                        .iter()
                        .find(|p| p.id == id)
                        .map(|p| p.name.clone()),
                })
                .collect();
            out.push(Listed {
                time: super::rfc3339(s.ts),
                snapshot: SnapshotDoc::from(&s),
                holders,
            });
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if out.is_empty() {
        println!("no snapshots held");
    }
    for l in &out {
        let holders: Vec<String> = l
            .holders
            .iter()
            .map(|h| h.peer.clone().unwrap_or_else(|| h.id.to_string()))
            .collect();
        println!(
            "{}  origin {}  seq {}  {}  {} objects  {} bytes  holders: {}",
            l.snapshot.id,
            l.snapshot.origin,
            l.snapshot.seq,
            l.time,
            l.snapshot.objects,
            l.snapshot.bytes,
            if holders.is_empty() {
                "none known".to_owned()
            } else {
                holders.join(", ")
            }
        );
    }
    Ok(())
}

/// `tandem snapshot verify`: non-zero exit if any snapshot fails.
pub fn verify(cli: &Cli, origin: Option<&str>) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let store = Store::open_read_only(&config.node.data_dir)?;
    let mut failed = 0;
    let mut checked = 0;
    for origin in origins(&store, origin)? {
        for s in store.snapshots(origin)? {
            checked += 1;
            let result = s
                .verify()
                .map_err(StoreError::from)
                .and_then(|()| store.check_snapshot(&s));
            if let Err(e) = result {
                failed += 1;
                println!(
                    "snapshot {} of origin {origin} at seq {}: {e}",
                    s.id(),
                    s.seq
                );
            }
        }
    }
    println!("{checked} snapshot(s) checked, {failed} failed");
    if failed > 0 {
        anyhow::bail!("{failed} snapshot(s) failed verification");
    }
    Ok(())
}
