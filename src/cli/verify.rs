//! `tandem verify [--origin ID] [--sample PERCENT]`: re-check everything stored for each origin
//! (or one): every entry against its hash, every chain link, every checkpoint signature, every
//! receipt signature, every snapshot (signature and state root), the head and the materialized
//! state. With `--sample`, only that share of the entries is re-hashed. Reads one consistent
//! snapshot of the store, so it works beside a running daemon. Names the origin, the seq and
//! what failed; exits non-zero on any problem. Before the origins, SQLite checks the file itself
//! (`integrity_check`; `quick_check` with `--sample`): a damaged page is a problem even where no
//! entry on it is read.

use anyhow::bail;

use super::{Cli, load_config};
use crate::identity::NodeId;
use crate::store::Store;

/// Verifies and reports.
pub fn run(cli: &Cli, origin: Option<&str>, sample: Option<f64>) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let store = Store::open_read_only(&config.node.data_dir)?;
    // The file first: a damaged page can hide entries from the checks below.
    let mut problems = 0;
    let damage = store.check_file(sample.is_none())?;
    for p in &damage {
        println!("{}: {p}", store.path().display());
    }
    problems += damage.len();
    let origins: Vec<NodeId> = match origin {
        Some("self") => vec![store.node_id()?],
        Some(id) => vec![id.parse()?],
        None => store.origins()?.into_iter().map(|o| o.id).collect(),
    };
    for origin in origins {
        let report = store.verify_origin_sampled(origin, sample)?;
        if report.problems.is_empty() {
            println!(
                "{origin}: ok, {} entries ({} re-hashed), {} checkpoints, {} receipts, {} snapshots",
                report.entries,
                report.rehashed,
                report.checkpoints,
                report.receipts,
                report.snapshots
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
