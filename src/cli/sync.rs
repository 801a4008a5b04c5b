//! `tandem sync`: run one ingest pass now and report it.

use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};

use super::{Cli, load_config};
use crate::daemon::Node;
use crate::replicate::ingest::Ingest;
use crate::source::kinto::KintoClient;
use crate::store::StoreError;

/// Runs one full pass; exits non-zero if it fails.
pub fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let Some(source) = config.source.clone() else {
        bail!(
            "nothing to sync: {} has no [source] section",
            config.path.display()
        );
    };
    let node = match Node::open(config) {
        Ok(node) => node,
        Err(e)
            if matches!(
                e.downcast_ref::<StoreError>(),
                Some(StoreError::Locked { .. })
            ) =>
        {
            return Err(e).context("the daemon is running and already syncs on its schedule; stop it to run a pass by hand");
        }
        Err(e) => return Err(e),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async move {
        let client = Arc::new(KintoClient::new(&source)?);
        let ingest = Ingest::new(client, Arc::new(Mutex::new(node.store)), Arc::new(node.key));
        anyhow::Ok(ingest.pass().await?)
    })?;
    println!(
        "ingest: {} entries appended, {} lists changed, {} unchanged",
        report.appended, report.lists_changed, report.lists_unchanged
    );
    Ok(())
}
