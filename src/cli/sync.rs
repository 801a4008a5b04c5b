//! `tandem sync`: run one ingest pass now and report it. When the daemon is running (it holds
//! the store), the pass is asked of it over its admin socket and `sync` waits for the result.

use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};

use super::{Cli, load_config};
use crate::api::admin;
use crate::daemon::Node;
use crate::replicate::ingest::{Ingest, IngestReport};
use crate::source::kinto::KintoClient;
use crate::store::StoreError;

/// Runs one full pass; exits non-zero if it fails.
pub fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    crate::telemetry::init_logging(cli.log_format);
    let Some(source) = config.source.clone() else {
        bail!(
            "nothing to sync: {} has no [source] section",
            config.path.display()
        );
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let data_dir = config.node.data_dir.clone();
    let report: IngestReport = match Node::open(config) {
        Ok(node) => runtime.block_on(async move {
            let client = Arc::new(KintoClient::new(&source)?);
            let ingest = Ingest::new(client, Arc::new(Mutex::new(node.store)), Arc::new(node.key));
            anyhow::Ok(ingest.pass().await?)
        })?,
        // The daemon holds the store: ask it to run the pass and wait for the result.
        Err(e)
            if matches!(
                e.downcast_ref::<StoreError>(),
                Some(StoreError::Locked { .. })
            ) =>
        {
            let answer = runtime.block_on(admin::call(&data_dir, "POST", "/sync"))?;
            serde_json::from_value(answer).context("unexpected answer from the daemon")?
        }
        Err(e) => return Err(e),
    };
    println!(
        "ingest: {} entries appended, {} lists changed, {} unchanged",
        report.appended, report.lists_changed, report.lists_unchanged
    );
    Ok(())
}
