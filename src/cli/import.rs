//! `tandem import FILE`: verifies a portable archive completely (chain, checkpoints, snapshots
//! and their state roots, the file's digest), and only then loads the origin's feed into this
//! node's store, as if pulled from a peer. With the daemon running, the daemon does the load
//! (asked over its admin socket); the file must be readable by its user.

use std::path::Path;

use super::admin_client;
use super::{Cli, load_config};
use crate::daemon::Node;
use crate::replicate::archive::{ArchiveSummary, ImportError, import_archive};

/// Verifies and loads.
pub fn run(cli: &Cli, file: &Path) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
    let data_dir = config.node.data_dir.clone();
    let summary: ArchiveSummary = match Node::open(config) {
        Ok(mut node) => match import_archive(&file, &mut node.store) {
            Ok(summary) => summary,
            Err(e @ ImportError::Stopped { .. }) => return Err(e.into()),
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("refusing {}; nothing was imported", file.display())));
            }
        },
        Err(e) if super::daemon_holds_store(&e) => {
            let path = url::form_urlencoded::byte_serialize(file.to_string_lossy().as_bytes())
                .collect::<String>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let answer = runtime.block_on(admin_client::post(
                &data_dir,
                &format!("/import?path={path}"),
            ))?;
            ArchiveSummary {
                origin: serde_json::from_value(answer["origin"].clone())?,
                entries: answer["entries"].as_u64().unwrap_or(0),
                snapshots: answer["snapshots"].as_u64().unwrap_or(0),
                readable: answer["readable"].as_bool().unwrap_or(false),
            }
        }
        Err(e) => return Err(e),
    };
    println!(
        "imported {}: {} entries and {} snapshots{}",
        summary.origin,
        summary.entries,
        summary.snapshots,
        if summary.readable {
            ", opened with the content keys the archive carries"
        } else {
            ""
        }
    );
    Ok(())
}
