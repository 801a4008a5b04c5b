//! `tandem migrate start|status`: moving some buckets of an origin to another Kinto server.
//!
//! `start` restores the selection at the origin's head into the target, as `restore --bucket`
//! does (everything verified first), then records the migration: the daemon's mirror
//! ([`crate::replicate::mirror`]) writes every later entry of the selection into the target.
//! The restore reads the store read-only, so it runs beside a daemon; the record is a write,
//! which the daemon makes when it runs (over the admin socket), so that it starts mirroring
//! at once.
//!
//! `status` prints the migrations; its JSON is the `migrations` array of `tandem status
//! --json`, built here.

use anyhow::{Context, bail};
use serde::Serialize;

use super::restore::{verified_head, write_state};
use super::{Cli, MigrateStart, admin_client, load_config};
use crate::daemon::Node;
use crate::identity::NodeId;
use crate::replicate::mirror::{self, NewMigration};
use crate::replicate::restore;
use crate::replicate::select::Selection;
use crate::store::Store;

/// One migration in `status --json` and `migrate status --json`.
#[derive(Debug, Serialize)]
pub struct MigrationDoc {
    /// Its number.
    pub id: u64,
    /// The origin mirrored.
    pub origin: NodeId,
    /// The target's root URL.
    pub target: String,
    /// What is mirrored.
    pub selection: SelectionDoc,
    /// Every chosen entry up to this seq is on the target.
    pub applied_seq: u64,
    /// The head of the origin here.
    pub origin_head: u64,
    /// `mirroring` or `stopped`.
    pub state: &'static str,
    /// Why it stopped (null while it mirrors).
    pub error: Option<String>,
    /// When it was started (RFC 3339).
    pub created_at: String,
}

/// The buckets and collections of a migration.
#[derive(Debug, Serialize)]
pub struct SelectionDoc {
    /// Buckets moved whole.
    pub buckets: Vec<String>,
    /// Collections moved, `bucket/collection`.
    pub collections: Vec<String>,
}

/// The migrations recorded in `store`, with their origins' heads.
pub fn migrations(store: &Store) -> anyhow::Result<Vec<MigrationDoc>> {
    let mut out = Vec::new();
    for m in store.migrations()? {
        let head = store.head(m.origin)?.map_or(0, |h| h.seq.0);
        out.push(MigrationDoc {
            id: m.id,
            origin: m.origin,
            target: m.target,
            selection: SelectionDoc {
                buckets: m.buckets,
                collections: m.collections,
            },
            applied_seq: m.applied_seq,
            origin_head: head,
            state: if m.stopped.is_some() {
                "stopped"
            } else {
                "mirroring"
            },
            error: m.stopped,
            created_at: super::rfc3339(m.created_at),
        });
    }
    Ok(out)
}

/// The text lines of `tandem status` and `tandem migrate status` for `docs`.
pub fn print_text(docs: &[MigrationDoc]) {
    for m in docs {
        let what = Selection::parse(&m.selection.buckets, &m.selection.collections)
            .map(|s| s.describe())
            .unwrap_or_else(|_| "?".to_owned());
        let state = match &m.error {
            None => format!(
                "mirroring, applied up to seq {} of {} ({} behind)",
                m.applied_seq,
                m.origin_head,
                m.origin_head.saturating_sub(m.applied_seq)
            ),
            Some(reason) => format!(
                "STOPPED at seq {} of {}: {reason}",
                m.applied_seq, m.origin_head
            ),
        };
        println!(
            "migration {}: {what} of {} to {}: {state}",
            m.id, m.origin, m.target
        );
    }
}

/// `tandem migrate status`.
pub fn status(cli: &Cli, as_json: bool) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let store = Store::open_read_only(&config.node.data_dir)?;
    let docs = migrations(&store)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&docs)?);
    } else if docs.is_empty() {
        println!("no migration");
    } else {
        print_text(&docs);
    }
    Ok(())
}

/// `tandem migrate start`.
pub fn start(cli: &Cli, args: &MigrateStart) -> anyhow::Result<()> {
    crate::telemetry::init_logging(cli.log_format);
    let selection = Selection::parse(&args.bucket, &args.collection)?;
    let config = load_config(cli)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The daemon reads the password where the command did, from its own directory.
    let secret = match args.target.secret()? {
        crate::config::Secret::File(path) => crate::config::Secret::File(
            std::path::absolute(&path)
                .with_context(|| format!("cannot resolve {}", path.display()))?,
        ),
        env => env,
    };

    let store = Store::open_read_only(&config.node.data_dir)?;
    let origin: NodeId = match args.origin.as_str() {
        "self" => store.node_id()?,
        id => id.parse()?,
    };
    let head = verified_head(&store, origin)?;
    let state = store.state_for_restore(origin, head.seq)?;
    drop(store);
    let options = restore::RestoreOptions {
        selection: selection.clone(),
        concurrency: restore::CONCURRENCY,
        ignore_secrets_mismatch: args.target.ignore_secrets_mismatch,
        nul: restore::NulStrings::Refuse,
    };
    write_state(&runtime, &args.target, state, options, origin, head.seq)?;
    // The restore may go through the kinto-tandem plugin; the mirror writes through Kinto's
    // API, which adds the writer to every object's write permissions unless told not to.
    let info = runtime.block_on(args.target.client(1)?.server_info())?;
    if info.explicit_permissions {
        eprintln!(
            "warning: the target has kinto.explicit_permissions = true: every object the mirror writes will also list {} in its write permissions; set it to false on the target (see docs/operating.md)",
            args.target.user
        );
    }

    let new = NewMigration {
        origin,
        buckets: args.bucket.clone(),
        collections: args.collection.clone(),
        target: args.target.root().to_string(),
        user: args.target.user.clone(),
        credentials: mirror::credentials_ref(&secret),
        seq: head.seq.0,
    };
    let data_dir = config.node.data_dir.clone();
    let (id, by_daemon) = match Node::open(config) {
        Ok(node) => runtime.block_on(async {
            let store = crate::store::StoreHandle::new(node.store, 1)?;
            let id = mirror::record(&store, new).await;
            store.close(std::time::Duration::from_secs(60)).await;
            anyhow::Ok((id?, false))
        })?,
        Err(e) if super::daemon_holds_store(&e) => {
            // The daemon holds the store: it records the migration and mirrors at once.
            let answer = runtime
                .block_on(admin_client::post_json(
                    &data_dir,
                    "/migrations",
                    &serde_json::to_value(&new)?,
                ))
                .context("recording the migration in the running daemon")?;
            let Some(id) = answer["id"].as_u64() else {
                bail!("the daemon answered without a migration id: {answer}");
            };
            (id, true)
        }
        Err(e) => return Err(e),
    };
    println!(
        "migration {id} started: {} of {origin} is mirrored into {} from seq {} on; {}",
        selection.describe(),
        args.target.root(),
        head.seq.0 + 1,
        if by_daemon {
            "the running daemon mirrors every later change"
        } else {
            "`tandem run` mirrors every later change"
        }
    );
    Ok(())
}
