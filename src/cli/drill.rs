//! `tandem drill`: run a restore drill now, into the `[drill]` scratch server: every origin
//! held is restored from its latest snapshot and read back (see
//! [`crate::replicate::drill`]). When the daemon runs (it holds the store), the drill is asked
//! of it over its admin socket, and waits for any drill it is running.

use anyhow::{Context, bail};

use super::{Cli, admin_client, load_config};
use crate::daemon::{Node, SetupError};
use crate::replicate::drill::Drill;
use crate::store::{DrillRecord, StoreError, StoreHandle};

/// Runs one drill; exits non-zero if it could not run or any origin failed it.
pub fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    crate::telemetry::init_logging(cli.log_format);
    let Some(drill) = config.drill.clone() else {
        bail!(
            "no [drill] section in {}: add one with schedule, to (a scratch Kinto server), user, and password_file or password_env (see docs/drills.md)",
            config.path.display()
        );
    };
    drill
        .password
        .check_private()
        .map_err(SetupError::SecretOpen)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let data_dir = config.node.data_dir.clone();
    // A drill of a node that does not exist yet would create it: refused instead.
    let db = data_dir.join(crate::store::DB_FILE);
    if !db.exists() {
        return Err(StoreError::Missing { path: db }.into());
    }
    let records: Vec<DrillRecord> = match Node::open(config) {
        Ok(node) => {
            let store = StoreHandle::new(node.store, 1)?;
            runtime.block_on(async {
                let records = Drill::new(drill, store.clone()).run().await;
                store.close(std::time::Duration::from_secs(30)).await;
                records
            })?
        }
        // The daemon holds the store: ask it to drill and wait for the result.
        Err(e) if super::daemon_holds_store(&e) => {
            let answer = runtime.block_on(admin_client::post(&data_dir, "/drill"))?;
            serde_json::from_value(answer["drills"].clone())
                .context("unexpected answer from the daemon")?
        }
        Err(e) => return Err(e),
    };
    if records.is_empty() {
        println!(
            "nothing to drill: this node holds no entries it reads (a sealed feed it holds without reading it is drilled by its origin and readers)"
        );
    }
    let mut failed = 0;
    for r in &records {
        let outcome = match &r.error {
            None => "ok".to_owned(),
            Some(why) => {
                failed += 1;
                format!("FAILED: {why}")
            }
        };
        println!(
            "origin {}: snapshot seq {}, {} objects, {} ms, {outcome}",
            r.origin, r.seq, r.objects, r.duration_ms
        );
    }
    if failed > 0 {
        bail!("{failed} of {} origin(s) failed the drill", records.len());
    }
    Ok(())
}
