//! `tandem key show|export|backup|rotate`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};

use super::{Cli, KeyCommand, admin_client, load_config, passphrase};
use crate::config::{Config, OriginRef, PeerConfig};
use crate::daemon::Node;
use crate::feed::Seq;
use crate::identity::NodeKey;
use crate::keybackup::{self, BackupKeys, UploadDoc};
use crate::peer::{KeyBackupFetch, PeerClient};

/// Prints the node id, copies the secret key to a new private file, or stores it sealed
/// under a passphrase at the peers that hold this node's feed.
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
        KeyCommand::Backup { passphrase_file } => backup(&config, key, passphrase_file.as_deref())?,
        KeyCommand::Rotate => {
            let (epoch, seq) = rotate(&config)?;
            println!(
                "{}: sealing under key epoch {epoch} from seq {}; its readers are granted it",
                key.id(),
                seq.0 + 1
            );
        }
    }
    Ok(())
}

/// Starts a new epoch of the own sealed feed (see `Store::rotate_key`), through the running
/// daemon when it holds the store. Returns the new epoch and the seq of the statement.
pub(super) fn rotate(config: &Config) -> anyhow::Result<(u32, Seq)> {
    match Node::open(config.clone()) {
        Ok(mut node) => {
            let (statement, seq) = node
                .store
                .rotate_key(&node.key)
                .context("cannot rotate the content key")?;
            Ok((statement.epoch, seq))
        }
        Err(e) if super::daemon_holds_store(&e) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let answer = runtime
                .block_on(admin_client::post(&config.node.data_dir, "/rotate"))
                .context("cannot rotate the content key")?;
            let field = |name: &str| {
                answer[name]
                    .as_u64()
                    .with_context(|| format!("the daemon's answer has no {name}: {answer}"))
            };
            Ok((u32::try_from(field("epoch")?)?, Seq(field("seq")?)))
        }
        Err(e) => Err(e),
    }
}

/// The peers that hold this node's feed: those it pushes it to or serves it to.
fn holders(config: &Config) -> Vec<&PeerConfig> {
    let has_self = |list: &[OriginRef]| list.contains(&OriginRef::SelfNode);
    config
        .peers
        .iter()
        .filter(|p| has_self(&p.push) || has_self(&p.serve))
        .collect()
}

/// Seconds since the epoch, for fetch proofs.
pub(super) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Derives the keys of `node`'s backup, saying on stderr what takes the time.
pub(super) fn derive(passphrase: &str, node: crate::identity::NodeId) -> BackupKeys {
    let kdf = keybackup::client_kdf();
    if kdf != keybackup::V1 {
        eprintln!(
            "warning: {}=1: deriving with the insecure test parameters (debug build only)",
            keybackup::TEST_KDF_ENV
        );
    }
    eprintln!(
        "deriving the keys from the passphrase (Argon2id, {} MiB; about a second)...",
        kdf.memory_kib / 1024
    );
    BackupKeys::derive(kdf, passphrase.as_bytes(), node)
}

fn backup(config: &Config, key: NodeKey, file: Option<&Path>) -> anyhow::Result<()> {
    let targets = holders(config);
    if targets.is_empty() {
        bail!(
            "no [[peer]] in {} holds this node's feed (none has \"self\" in its push or serve list); the key is backed up where the feed is: add such a peer first",
            config.path.display()
        );
    }
    let passphrase = passphrase::read(file, true)?;
    let id = key.id().to_string();
    let mut context: Vec<&str> = vec!["tandem", &config.node.name, &id];
    context.extend(targets.iter().map(|p| p.name.as_str()));
    if let Some(why) = keybackup::weakness(&passphrase, &context) {
        bail!("{why}; nothing was stored");
    }
    let keys = derive(&passphrase, key.id());
    drop(passphrase);
    let doc = UploadDoc {
        version: keys.version(),
        fetch_key: keybackup::encode(&keys.fetch_public()),
        blob: keybackup::encode(&keys.seal(&key)),
    };
    let key = Arc::new(key);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut failed = Vec::new();
    for peer in &targets {
        let outcome = runtime.block_on(store_at(peer, &key, &keys, &doc));
        match outcome {
            Ok(()) => println!(
                "peer {}: key backup stored, fetched back with the passphrase and opened",
                peer.name
            ),
            Err(e) => {
                println!("peer {}: failed: {}", peer.name, super::one_line(&e));
                failed.push(peer.name.as_str());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "the key backup is stored at {} of {} peers; not at {}: fix what is said above and run `tandem key backup` again",
            targets.len() - failed.len(),
            targets.len(),
            failed.join(", ")
        );
    }
    println!(
        "keep the passphrase, the node id {} and the URL of one of these peers: `tandem recover` brings the node back from them",
        key.id()
    );
    Ok(())
}

/// Stores the backup at `peer`, then fetches it back as `tandem recover` would and opens it.
async fn store_at(
    peer: &PeerConfig,
    key: &Arc<NodeKey>,
    keys: &BackupKeys,
    doc: &UploadDoc,
) -> anyhow::Result<()> {
    let client = PeerClient::new(&peer.name, peer.id, &peer.url, key.clone())?;
    client.put_key_backup(doc).await?;
    let fetched =
        crate::peer::fetch_key_backup(&peer.url, key.id(), &keys.fetch_request(unix_now())).await?;
    let KeyBackupFetch::Found(found) = fetched else {
        bail!("the peer stored the backup but does not hand it back for this passphrase");
    };
    let blob = keybackup::decode_bounded(&found.blob, keybackup::MAX_BLOB, "blob")?;
    let opened = keys.open(found.version, &blob)?;
    if opened.id() != key.id() {
        bail!("the backup fetched back holds another key");
    }
    Ok(())
}
