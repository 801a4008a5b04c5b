//! `tandem sync`: run one ingest pass now, then push to and pull from every peer once, and
//! report. When the daemon is running (it holds the store), the round is asked of it over its
//! admin socket and `sync` waits for the result.

use std::sync::Arc;

use anyhow::{Context, bail};

use super::admin_client;
use super::{Cli, load_config};
use crate::daemon::Node;
use crate::replicate::federate::Federation;
use crate::replicate::ingest::Ingest;
use crate::replicate::{Changes, SyncReport, sync_peers};
use crate::source::kinto::KintoClient;
use crate::store::StoreHandle;

/// Runs one round; exits non-zero if the ingest or any peer failed.
pub fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    crate::telemetry::init_logging(cli.log_format);
    if config.source.is_none() && config.peers.is_empty() {
        bail!(
            "nothing to sync: {} has no [source] section and no [[peer]]",
            config.path.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let data_dir = config.node.data_dir.clone();
    let report: SyncReport = match Node::open(config) {
        Ok(node) => runtime.block_on(standalone(node))?,
        // The daemon holds the store: ask it to run the round and wait for the result.
        Err(e) if super::daemon_holds_store(&e) => {
            let answer = runtime.block_on(admin_client::post(&data_dir, "/sync"))?;
            serde_json::from_value(answer).context("unexpected answer from the daemon")?
        }
        Err(e) => return Err(e),
    };
    if let Some(r) = &report.ingest {
        println!(
            "ingest: {} entries appended, {} lists changed, {} unchanged",
            r.appended, r.lists_changed, r.lists_unchanged
        );
    }
    let mut failed = Vec::new();
    for p in &report.peers {
        let pushed = p
            .push
            .map(|r| format!("{} entries pushed ({} bytes sent)", r.sent, r.wire_bytes))
            .unwrap_or_else(|| "nothing pushed".into());
        let pulled = p
            .pull
                        .map(|r| {
                let base = if r.base > 0 {
                    format!("started from its snapshot at seq {} (it compacted the entries before), then ", r.base)
                } else {
                    String::new()
                };
                format!(
                    "{base}{} entries pulled ({} bytes received)",
                    r.accepted, r.wire_bytes
                )
            })
            .unwrap_or_else(|| "nothing pulled".into());
        match &p.error {
            None => println!("peer {}: {pushed}, {pulled}", p.peer),
            Some(e) => {
                println!("peer {}: failed: {e}", p.peer);
                failed.push(p.peer.clone());
            }
        }
    }
    if !failed.is_empty() {
        bail!("sync failed with {}", failed.join(", "));
    }
    Ok(())
}

/// The round without a daemon: recovery first if the store needs it, then ingest, then peers.
async fn standalone(node: Node) -> anyhow::Result<SyncReport> {
    let Node { config, key, store } = node;
    let recovering = store.recovering()?;
    let (key, store) = (Arc::new(key), StoreHandle::new(store, 1)?);
    let report = round(config, key, &store, recovering).await;
    // Every write sent is done, and the writer lock released, before the command returns.
    store.close(std::time::Duration::from_secs(60)).await;
    report
}

async fn round(
    config: crate::config::Config,
    key: Arc<crate::identity::NodeKey>,
    store: &StoreHandle,
    recovering: bool,
) -> anyhow::Result<SyncReport> {
    let changes = Changes::default();
    let feds = config
        .peers
        .iter()
        .map(|p| {
            Federation::new(p.clone(), key.clone(), store.clone(), changes.clone())
                .map(|f| f.listing(config.peers.iter().map(|p| p.id).collect()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if recovering {
        for fed in &feds {
            let got = fed.recover_own().await.with_context(|| {
                format!(
                    "recovering this node's feed: peer {} did not answer, and nothing may be appended before every peer has",
                    fed.peer().name
                )
            })?;
            if let Some(r) = got.filter(|r| r.accepted > 0) {
                println!(
                    "recovery: {} entries of this node's feed from peer {} ({} bytes received)",
                    r.accepted,
                    fed.peer().name,
                    r.wire_bytes
                );
            }
        }
        store.write(|s| s.set_recovering(false)).await?;
    }
    crate::daemon::seal_own(store, &key, crate::daemon::SealWanted::of(&config)).await?;
    let ingest = match &config.source {
        Some(source) => {
            let client = Arc::new(KintoClient::new(source)?);
            Some(
                Ingest::new(client, store.clone(), key.clone())
                    .with_concurrency(source.concurrency)
                    .pass()
                    .await?,
            )
        }
        None => None,
    };
    let peers = sync_peers(&feds).await;
    // What this node may read of the sealed origins it now holds is opened for `export` and
    // `restore`, as the daemon does after every change.
    let granted = store.write(move |s| s.open_granted(&key)).await?;
    for (origin, entries) in granted.opened {
        eprintln!("opened {entries} sealed entries of {origin}, which grants this node reading");
    }
    for (origin, e) in granted.failed {
        eprintln!("warning: {origin} grants this node reading but could not be opened: {e}");
    }
    Ok(SyncReport { ingest, peers })
}
