//! `tandem init`: create the data directory, the node key and an empty store.

use super::{Cli, load_config};
use crate::daemon::Node;

/// Creates a new node; the node id is the last line of stdout, for scripts.
pub fn run(cli: &Cli, existing_key: bool) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let node = Node::init(config, existing_key)?;
    if !existing_key {
        println!("created node key {}", node.config.key_path().display());
    }
    println!("created store {}", node.store.path().display());
    println!("{}", node.key.id());
    Ok(())
}
