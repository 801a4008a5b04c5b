//! `tandem migrate start|status|finish|abort`: moving some buckets of an origin to another
//! Kinto server.
//!
//! `start` restores the selection at the origin's head into the target, as `restore --bucket`
//! does (everything verified first), then records the migration: the daemon's mirror
//! ([`crate::replicate::mirror`]) writes every later entry of the selection into the target.
//! The restore reads the store read-only, so it runs beside a daemon; the record is a write,
//! which the daemon makes when it runs (over the admin socket), so that it starts mirroring
//! at once.
//!
//! `finish` and `abort` run [`crate::replicate::moves::Switcher`], in the daemon when one
//! runs (it holds the store and the ingest), else in this process.
//!
//! `status` prints the migrations; its JSON is the `migrations` array of `tandem status
//! --json`, built here.

use anyhow::{Context, bail};
use serde::Serialize;

use super::restore::{verified_head, write_state};
use super::{Cli, MigrateStart, MigrateSwitch, admin_client, load_config};
use crate::daemon::Node;
use crate::identity::NodeId;
use crate::replicate::mirror::{self, NewMigration};
use crate::replicate::moves;
use crate::replicate::restore;
use crate::replicate::select::Selection;
use crate::store::{Phase, Store};

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
    /// `mirroring`, `stopped`, `finishing` (`migrate finish` runs or was interrupted),
    /// `finished` or `aborted`.
    pub state: &'static str,
    /// Why it stopped (null while it mirrors).
    pub error: Option<String>,
    /// The seq of the moved statements in the origin's feed, once finished.
    pub moved_seq: Option<u64>,
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
            state: match (m.switch.as_ref().map(|s| s.phase), &m.stopped) {
                (Some(Phase::Finished), _) => "finished",
                (Some(Phase::Aborted), _) => "aborted",
                (_, Some(_)) => "stopped",
                (Some(Phase::Finishing), None) => "finishing",
                (None, None) => "mirroring",
            },
            error: m.stopped,
            moved_seq: m.switch.and_then(|s| s.moved_seq),
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
        let state = match (m.state, &m.error) {
            ("finished", _) => format!(
                "finished: the old copy is read-only, moved at seq {}",
                m.moved_seq.unwrap_or(0)
            ),
            ("aborted", _) => format!("aborted at seq {}", m.applied_seq),
            ("finishing", None) => format!(
                "FINISHING (run `tandem migrate finish {}` to complete it), applied up to seq {} of {}",
                m.id, m.applied_seq, m.origin_head
            ),
            (_, None) => format!(
                "mirroring, applied up to seq {} of {} ({} behind)",
                m.applied_seq,
                m.origin_head,
                m.origin_head.saturating_sub(m.applied_seq)
            ),
            (_, Some(reason)) => format!(
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

    let store = super::open_to_read(&config)?;
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
        include_moved: false,
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

/// The account given with `--user` and a password flag, with its password file made
/// absolute (the daemon reads it from its own directory).
fn account_from_flags(args: &MigrateSwitch) -> anyhow::Result<Option<moves::Account>> {
    let Some(user) = &args.user else {
        return Ok(None);
    };
    let secret = match (&args.password_file, &args.password_env) {
        (Some(path), None) => crate::config::Secret::File(
            std::path::absolute(path)
                .with_context(|| format!("cannot resolve {}", path.display()))?,
        ),
        (None, Some(var)) => crate::config::Secret::Env(var.clone()),
        _ => bail!("with --user, give one of --password-file and --password-env"),
    };
    Ok(Some(moves::Account {
        user: user.clone(),
        credentials: mirror::credentials_ref(&secret),
    }))
}

/// `tandem migrate finish` (`finish` true) and `tandem migrate abort`.
pub fn switch(cli: &Cli, args: &MigrateSwitch, finish: bool) -> anyhow::Result<()> {
    crate::telemetry::init_logging(cli.log_format);
    let config = load_config(cli)?;
    let mut account = account_from_flags(args)?;
    if finish && account.is_none() {
        account = match config.source.as_ref().map(|s| &s.auth) {
            Some(crate::config::SourceAuth::Basic { user, password }) => Some(moves::Account {
                user: user.clone(),
                credentials: mirror::credentials_ref(password),
            }),
            Some(_) => bail!(
                "the [source] signs in with a token: give --user and --password-file (or --password-env) of an account that may write every object moved on the old server"
            ),
            None => bail!("this node has no [source]: it knows no old server to make read-only"),
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let data_dir = config.node.data_dir.clone();
    let source = config.source.clone();
    let id = args.id;
    if finish {
        eprintln!(
            "finishing migration {id}: the target catches up, the old copy becomes read-only, the last changes follow; this waits for all of it"
        );
    }
    let answer: serde_json::Value = match Node::open(config) {
        Ok(node) => runtime.block_on(async {
            let key = std::sync::Arc::new(node.key);
            let store = crate::store::StoreHandle::new(node.store, 1)?;
            let ingest = source
                .map(|s| crate::replicate::ingest::IngestSlot::new(s, store.clone(), key.clone()));
            let switcher = moves::Switcher::new(
                store.clone(),
                key,
                ingest,
                crate::replicate::Changes::default(),
            );
            let done = if finish {
                switcher
                    .finish(id, account.expect("resolved above"))
                    .await
                    .map(|d| serde_json::to_value(d).expect("plain data"))
            } else {
                switcher
                    .abort(id, account)
                    .await
                    .map(|d| serde_json::to_value(d).expect("plain data"))
            };
            store.close(std::time::Duration::from_secs(60)).await;
            anyhow::Ok(done?)
        })?,
        Err(e) if super::daemon_holds_store(&e) => {
            let path = format!(
                "/migrations/{id}/{}",
                if finish { "finish" } else { "abort" }
            );
            runtime.block_on(admin_client::post_json(
                &data_dir,
                &path,
                &serde_json::to_value(&account)?,
            ))?
        }
        Err(e) => return Err(e),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    if finish {
        let done: moves::Finished =
            serde_json::from_value(answer).context("unexpected answer from the daemon")?;
        let what: Vec<String> = done.moved.iter().map(|m| m.describe()).collect();
        let to = done.moved.first().map_or("?", |m| m.to.as_str());
        println!(
            "migration {id} {}: {} now live{} at {to}; {} object(s) of the old copy are read-only; the moved statement{} at seq {} of this node's feed",
            if done.already {
                "was already finished"
            } else {
                "finished"
            },
            what.join(", "),
            if what.len() == 1 { "s" } else { "" },
            done.locked,
            if what.len() == 1 { " is" } else { "s are" },
            done.moved_seq
        );
    } else {
        let done: moves::Aborted =
            serde_json::from_value(answer).context("unexpected answer from the daemon")?;
        println!(
            "migration {id} aborted: {} object(s) of the old copy got their permissions back ({} were gone there), {} moved statement(s) retracted; the target keeps what was written there",
            done.unlocked, done.gone, done.retracted
        );
    }
    Ok(())
}
