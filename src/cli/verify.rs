//! `tandem verify [--origin ID]`: re-check everything stored for each origin (or one): every
//! entry against its hash, every chain link, every checkpoint signature, the head and the
//! materialized state. Reads one consistent snapshot, so it works beside a running daemon.
//! Names the origin, the seq and what failed; exits non-zero on any problem.

use anyhow::bail;

use super::{Cli, load_config};
use crate::identity::NodeId;
use crate::store::Store;

/// Verifies and reports.
pub fn run(cli: &Cli, origin: Option<&str>) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let store = Store::open_read_only(&config.node.data_dir)?;
    let origins: Vec<NodeId> = match origin {
        Some("self") => vec![store.node_id()?],
        Some(id) => vec![id.parse()?],
        None => store.origins()?.into_iter().map(|o| o.id).collect(),
    };
    let mut problems = 0;
    for origin in origins {
        let report = store.verify_origin(origin)?;
        if report.problems.is_empty() {
            println!(
                "{origin}: ok, {} entries, {} checkpoints",
                report.entries, report.checkpoints
            );
        } else {
            for p in &report.problems {
                println!("{p}");
            }
            problems += report.problems.len();
        }
    }
    if problems > 0 {
        bail!("{problems} problem(s) found; the store does not match what its origins signed");
    }
    Ok(())
}
