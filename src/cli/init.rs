//! `tandem init`: create the data directory, the node key and an empty store.

use super::{Cli, load_config};
use crate::daemon::Node;

/// Creates a new node; the node id is the last line of stdout, for scripts.
pub fn run(cli: &Cli, existing_key: bool, new_feed: bool) -> anyhow::Result<()> {
    crate::telemetry::init_logging(cli.log_format);
    let config = load_config(cli)?;
    let node = Node::init(config, existing_key, new_feed)?;
    if !existing_key {
        println!("created node key {}", node.config.key_path().display());
    }
    println!("created store {}", node.store.path().display());
    if node.store.recovering()? {
        println!(
            "`tandem run` will first fetch this node's feed back from its peers and append nothing before that"
        );
    }
    println!("{}", node.key.id());
    Ok(())
}
