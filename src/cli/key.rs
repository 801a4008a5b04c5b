//! `tandem key show|export`.

use super::{Cli, KeyCommand, load_config};
use crate::identity::NodeKey;

/// Prints the node id, or copies the secret key to a new private file.
pub fn run(cli: &Cli, cmd: &KeyCommand) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let key = NodeKey::load(&config.key_path())?;
    match cmd {
        KeyCommand::Show => println!("{}", key.id()),
        KeyCommand::Export { out } => {
            key.write_new(out)?;
            eprintln!(
                "wrote the secret key of {} to {} (mode 0600); keep it offline",
                key.id(),
                out.display()
            );
        }
    }
    Ok(())
}
