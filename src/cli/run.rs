//! `tandem run`: the daemon.

use anyhow::Context;

use super::{Cli, load_config};
use crate::daemon::{self, Node};
use crate::telemetry;

/// Opens the node, binds the listener and serves until SIGTERM or SIGINT.
pub fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    telemetry::init_logging(cli.log_format);
    let node = Node::open(config)?;
    let addr = node.config.node.listen;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen on {addr} ([node] listen in {}); is another process using it?",
                node.config.path.display()
            )
        })?;
        let shutdown = daemon::shutdown_signal()?;
        daemon::serve(node, listener, shutdown).await
    });
    // Do not wait on a blocking task stuck in the store past the shutdown deadline.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}
