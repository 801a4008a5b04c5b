//! `tandem recover`: a node brought back on a blank machine from its key backup (see
//! `tandem key backup` and [`crate::keybackup`]), with nothing but the passphrase, the node id
//! and the URL of a peer that holds its feed.
//!
//! Everything is checked before anything is written: that the data directory holds no key and
//! no store, that the passphrase opens the backup the peer holds, that the key inside is the
//! node's, and that the peer answers a request signed by that key as the node it says it is
//! (its id goes into the configuration). Only then are the configuration (when there is
//! none), the key file and the store written, the store marked to recover as after
//! `tandem init --existing-key`: `tandem run` or `tandem sync` then fetches the node's feed
//! back from its peers before appending anything.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};

use super::{Cli, key, passphrase};
use crate::config::{Config, DEFAULT_DATA_DIR};
use crate::daemon::{Node, ensure_data_dir};
use crate::identity::{NodeId, NodeKey};
use crate::keybackup::{self, BackupKeys};
use crate::peer::{KeyBackupFetch, NodeDoc, PeerClient, PeerError};
use crate::store::DB_FILE;

/// What `tandem recover` was given.
pub struct RecoverArgs<'a> {
    /// A peer that holds the node's feed and key backup.
    pub peer: &'a url::Url,
    /// The node to bring back.
    pub id: NodeId,
    /// Where its data goes, when no configuration says it.
    pub data_dir: Option<&'a Path>,
    /// The passphrase's file, instead of the terminal.
    pub passphrase_file: Option<&'a Path>,
}

/// Why nothing came back: each a case of its own, for the operator.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The holder's uniform refusal.
    #[error(
        "the peer at {peer} holds no key backup of node {id} that this passphrase opens: either the passphrase is wrong, or no backup of this id is stored there (a holder does not tell the two apart, so that strangers learn nothing from it); check the passphrase and the id, or ask another peer"
    )]
    NoBackup {
        /// The peer asked.
        peer: url::Url,
        /// The node id given.
        id: NodeId,
    },
    /// The URL does not answer the key backup route.
    #[error(
        "{peer} does not know key backups (it answered 404 for the route): check the URL, or upgrade tandem there"
    )]
    NoRoute {
        /// The peer asked.
        peer: url::Url,
    },
    /// The peer's answer does not belong to this request.
    #[error("the peer at {peer} answered with {what}; ask another peer")]
    Inconsistent {
        /// The peer asked.
        peer: url::Url,
        /// What is off.
        what: String,
    },
}

/// Where the configuration comes from.
enum Plan {
    /// The file `--config` names exists: its data directory and peers are used.
    Existing(Box<Config>),
    /// It does not: one is written there once the peer is known.
    New {
        /// The file to write.
        path: PathBuf,
        /// The data directory it will name.
        data_dir: PathBuf,
    },
}

impl Plan {
    fn data_dir(&self) -> &Path {
        match self {
            Plan::Existing(config) => &config.node.data_dir,
            Plan::New { data_dir, .. } => data_dir,
        }
    }
}

/// Brings the node back; prints the node id last, as `tandem init` does.
pub fn run(cli: &Cli, args: RecoverArgs<'_>) -> anyhow::Result<()> {
    crate::telemetry::init_logging(cli.log_format);
    let plan = plan(cli, &args).context("tandem recover wrote nothing")?;
    let passphrase =
        passphrase::read(args.passphrase_file, false).context("tandem recover wrote nothing")?;
    let keys = key::derive(&passphrase, args.id);
    drop(passphrase);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (node_key, holder) = runtime
        .block_on(fetch(args.peer, args.id, &keys))
        .context("tandem recover wrote nothing")?;
    println!(
        "recovered the key of node {} from peer {} ({})",
        args.id, holder.name, args.peer
    );
    let (config, new_config) = match plan {
        Plan::Existing(config) => {
            if !config.peers.iter().any(|p| p.id == holder.id) {
                return Err(anyhow::anyhow!(
                    "{} has no [[peer]] with id {} (the node at {}); add one, with \"self\" in its push list, or name with --config a file that does not exist yet and tandem recover writes one",
                    config.path.display(),
                    holder.id,
                    args.peer
                ))
                .context("tandem recover wrote nothing");
            }
            (*config, None)
        }
        Plan::New { path, data_dir } => {
            let text = config_text(&data_dir, &holder, args.peer);
            let config = Config::parse(&path, &text)
                .context("the configuration tandem recover would write does not check")?;
            (config, Some(text))
        }
    };
    write(config, new_config, node_key)
}

/// Checks what can be checked before the passphrase is asked: the configuration, and a data
/// directory without key or store.
fn plan(cli: &Cli, args: &RecoverArgs<'_>) -> anyhow::Result<Plan> {
    let plan = if cli.config.exists() {
        let config = Config::load(&cli.config)?;
        if let Some(dir) = args.data_dir {
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
            if dir != config.node.data_dir {
                bail!(
                    "--data-dir {} differs from the data_dir {} of {}; leave out --data-dir, or change the file",
                    dir.display(),
                    config.node.data_dir.display(),
                    config.path.display()
                );
            }
        }
        Plan::Existing(Box::new(config))
    } else {
        let dir = args.data_dir.unwrap_or(Path::new(DEFAULT_DATA_DIR));
        Plan::New {
            path: cli.config.clone(),
            data_dir: std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned()),
        }
    };
    let dir = plan.data_dir();
    let key_path = dir.join("node.key");
    if key_path.exists() {
        bail!(
            "a node key already exists at {}; this machine is not blank: to recover the feed with that key, run `tandem init --existing-key`",
            key_path.display()
        );
    }
    if dir.join(DB_FILE).exists() {
        bail!(
            "a store already exists in {}; recover into an empty data directory",
            dir.display()
        );
    }
    Ok(plan)
}

/// Fetches the backup, opens it, and asks the peer who it is with the key it gave back.
async fn fetch(
    peer: &url::Url,
    id: NodeId,
    keys: &BackupKeys,
) -> anyhow::Result<(NodeKey, NodeDoc)> {
    let inconsistent = |what: String| RecoverError::Inconsistent {
        peer: peer.clone(),
        what,
    };
    let answer = crate::peer::fetch_key_backup(peer, id, &keys.fetch_request(key::unix_now()))
        .await
        .map_err(|e| match e {
            PeerError::Refused { status: 404, .. } => {
                anyhow::Error::new(RecoverError::NoRoute { peer: peer.clone() })
            }
            e => e.into(),
        })?;
    let doc = match answer {
        KeyBackupFetch::Found(doc) => doc,
        KeyBackupFetch::Nothing => {
            return Err(RecoverError::NoBackup {
                peer: peer.clone(),
                id,
            }
            .into());
        }
    };
    if doc.origin != id {
        return Err(inconsistent(format!("the backup of another node ({})", doc.origin)).into());
    }
    let fetch_key: [u8; 32] = keybackup::decode_fixed(&doc.fetch_key, "fetch_key")?;
    if fetch_key != keys.fetch_public() {
        return Err(inconsistent("a backup made with another passphrase".into()).into());
    }
    let blob = keybackup::decode_bounded(&doc.blob, keybackup::MAX_BLOB, "blob")?;
    let node_key = Arc::new(keys.open(doc.version, &blob)?);
    // A request signed by the recovered key for the id the peer gave: answered only by the
    // node with that id, and only if it knows this node's key.
    let client = PeerClient::new("recovery", doc.holder, peer, node_key.clone())?;
    let holder = client.node().await.with_context(|| {
        format!(
            "the peer at {peer} says it is node {}, but does not answer a request signed by node {id} for that id",
            doc.holder
        )
    })?;
    if holder.id != doc.holder {
        return Err(
            inconsistent(format!("two node ids ({} and {})", doc.holder, holder.id)).into(),
        );
    }
    drop(client);
    let node_key = Arc::into_inner(node_key).expect("the only holder of the key");
    Ok((node_key, holder))
}

/// A configuration for a node with `data_dir` and one peer, `holder` at `url`, to which the
/// node pushes its feed and from which it recovers it.
fn config_text(data_dir: &Path, holder: &NodeDoc, url: &url::Url) -> String {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let name = valid_name(&hostname()).unwrap_or_else(|| "tandem".to_owned());
    let peer = valid_name(&holder.name).unwrap_or_else(|| "peer".to_owned());
    format!(
        "# Written by `tandem recover`: this node and the peer it was recovered from.\n\
         # Add the [source] section (the Kinto server this node follows), a `listen` address\n\
         # peers can reach, and any other peer, as in peers.example.toml.\n\
         \n\
         [node]\n\
         name = {}\n\
         data_dir = {}\n\
         \n\
         [[peer]]\n\
         name = {}\n\
         url = {}\n\
         id = \"{}\"\n\
         push = [\"self\"]\n\
         serve = [\"self\"]\n",
        quote(&name),
        quote(&data_dir.to_string_lossy()),
        quote(&peer),
        quote(url.as_str()),
        holder.id,
    )
}

/// `text` as a configuration name (letters, digits, `-`, `_`, `.`, at most 64, starting with
/// a letter or digit), when something of it is left.
fn valid_name(text: &str) -> Option<String> {
    let name: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(64)
        .collect();
    (!name.is_empty()).then_some(name)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let host = String::from_utf8_lossy(&buf[..end]).into_owned();
    host.split('.').next().unwrap_or("").to_owned()
}

/// Writes the configuration (when new), the key and the store; what was written is removed
/// again when a later step fails.
fn write(config: Config, new_config: Option<String>, key: NodeKey) -> anyhow::Result<()> {
    let mut written: Vec<PathBuf> = Vec::new();
    let result = (|| -> anyhow::Result<Node> {
        if let Some(text) = &new_config {
            if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            crate::atomic::write_atomic(
                &config.path,
                0o644,
                crate::atomic::Existing::Keep,
                |file| std::io::Write::write_all(file, text.as_bytes()),
            )
            .with_context(|| format!("cannot write {}", config.path.display()))?;
            written.push(config.path.clone());
        }
        ensure_data_dir(&config.node.data_dir)?;
        key.write_new(&config.key_path())?;
        written.push(config.key_path());
        Node::init(config.clone(), true, false)
    })();
    let node = match result {
        Ok(node) => node,
        Err(e) => {
            for path in written.iter().rev() {
                let _ = std::fs::remove_file(path);
            }
            return Err(e.context("tandem recover stopped; what it had written is removed"));
        }
    };
    if new_config.is_some() {
        println!(
            "wrote the configuration {}: add the [source] section and the other [[peer]] entries, and check `listen`, before `tandem run` (a reader of a sealed feed not named again with read = true is removed at the first start)",
            config.path.display()
        );
    }
    println!(
        "wrote the node key {} (mode 0600)",
        config.key_path().display()
    );
    println!(
        "created store {}, marked to recover: `tandem run` (or `tandem sync`) first fetches this node's feed back from its peers and appends nothing before that",
        node.store.path().display()
    );
    println!("{}", node.key.id());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_valid_or_left_out() {
        assert_eq!(valid_name("community").as_deref(), Some("community"));
        assert_eq!(valid_name("my host!").as_deref(), Some("my-host-"));
        assert_eq!(valid_name("--x").as_deref(), Some("x"));
        assert_eq!(valid_name("été").as_deref(), Some("t-"));
        assert_eq!(valid_name("!!!").as_deref(), None);
        assert_eq!(valid_name(&"a".repeat(100)).map(|n| n.len()), Some(64));
    }

    #[test]
    fn the_written_configuration_checks() {
        let holder = NodeDoc {
            id: NodeKey::from_seed([1; 32]).id(),
            name: "community \"hub\"".into(),
        };
        let url: url::Url = "http://127.0.0.1:8751/".parse().unwrap();
        let text = config_text(Path::new("/var/lib/tan\"dem"), &holder, &url);
        let config = Config::parse(Path::new("/etc/tandem/tandem.toml"), &text).unwrap();
        assert_eq!(config.node.data_dir, Path::new("/var/lib/tan\"dem"));
        assert_eq!(config.peers.len(), 1);
        assert_eq!(config.peers[0].id, holder.id);
        assert_eq!(config.peers[0].url, url);
        assert_eq!(
            config.peers[0].push,
            vec![crate::config::OriginRef::SelfNode]
        );
    }
}
