//! `tandem restore`: writes an origin's state, at its head or at a chosen point, into a Kinto
//! server. Everything is verified before the first write: the whole chain of the origin, every
//! checkpoint, and the snapshot when one is named; a damaged copy is refused and nothing is
//! written. Works beside a running daemon (it reads the store read-only); `--from-peer` first
//! fetches the origin from that peer (through the daemon when one runs). `--bucket` and
//! `--collection` restore part of the state (one member's buckets, say) into a server that may
//! hold others; the whole origin is verified all the same.

use std::sync::Arc;

use anyhow::{Context, bail};

use super::admin_client;
use super::target::TargetArgs;
use super::{Cli, load_config};
use crate::daemon::Node;
use crate::feed::Seq;
use crate::identity::NodeId;
use crate::replicate::Changes;
use crate::replicate::federate::Federation;
use crate::replicate::restore;
use crate::replicate::select::Selection;
use crate::store::{Store, StoreError};

/// Where to restore to, and from which point.
pub struct RestoreArgs<'a> {
    /// `self` or a node id.
    pub origin: &'a str,
    /// A snapshot id.
    pub snapshot: Option<&'a str>,
    /// A seq.
    pub seq: Option<u64>,
    /// An RFC 3339 time.
    pub at: Option<&'a str>,
    /// The target Kinto server and the account that writes there.
    pub target: &'a TargetArgs,
    /// A peer to fetch the origin from first.
    pub from_peer: Option<&'a str>,
    /// Lists written at the same time.
    pub concurrency: usize,
    /// Objects holding U+0000.
    pub nul: restore::NulStrings,
    /// `--bucket` arguments: restore only these buckets.
    pub buckets: &'a [String],
    /// `--collection` arguments: restore only these collections.
    pub collections: &'a [String],
    /// Restore what moved to another server too.
    pub include_moved: bool,
}

/// Runs the restore.
pub fn run(cli: &Cli, args: RestoreArgs<'_>) -> anyhow::Result<()> {
    crate::telemetry::init_logging(cli.log_format);
    let selection = Selection::parse(args.buckets, args.collections)?;
    let config = load_config(cli)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let store = Store::open_read_only(&config.node.data_dir)?;
    let origin: NodeId = match args.origin {
        "self" => store.node_id()?,
        id => id.parse()?,
    };
    drop(store);

    if let Some(name) = args.from_peer {
        let Some(peer) = config.peers.iter().find(|p| p.name == name).cloned() else {
            bail!("no [[peer]] named {name:?} in {}", config.path.display());
        };
        let data_dir = config.node.data_dir.clone();
        match Node::open(config.clone()) {
            Ok(node) => runtime.block_on(async {
                let store = crate::store::StoreHandle::new(node.store, 1)?;
                let key = Arc::new(node.key);
                let fed = Federation::new(peer, key.clone(), store.clone(), Changes::default())?;
                let pulled = async {
                    let pulled = fed
                        .pull_origin(origin, std::time::Duration::ZERO)
                        .await
                        .with_context(|| format!("fetching {origin} from peer {name}"))?;
                    // A sealed origin that grants this node reading is opened for the restore.
                    let granted = store.write(move |s| s.open_granted(&key)).await?;
                    if let Some((_, e)) = granted.failed.into_iter().find(|f| f.0 == origin) {
                        return Err(e.into());
                    }
                    anyhow::Ok(pulled)
                }
                .await;
                // The restore below opens the store again: the writer must be gone first.
                store.close(std::time::Duration::from_secs(60)).await;
                eprintln!("fetched {} new entries from peer {name}", pulled?.accepted);
                anyhow::Ok(())
            })?,
            Err(e) if super::daemon_holds_store(&e) => {
                // The daemon holds the store: ask it to pull the origin from that peer.
                let path = format!(
                    "/pull?peer={}&origin={origin}",
                    url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
                );
                let answer = runtime
                    .block_on(admin_client::post(&data_dir, &path))
                    .with_context(|| format!("fetching {origin} from peer {name}"))?;
                eprintln!(
                    "fetched {} new entries from peer {name}",
                    answer["accepted"].as_u64().unwrap_or(0)
                );
            }
            Err(e) => return Err(e),
        }
    }

    let store = super::open_to_read(&config)?;
    let head = verified_head(&store, origin)?;
    let seq = match (args.snapshot, args.seq, args.at) {
        (Some(id), None, None) => {
            let snapshot = store
                .snapshots(origin)?
                .into_iter()
                .find(|s| s.id() == id)
                .with_context(|| {
                    format!("no snapshot {id} of {origin} here; see `tandem snapshot list`")
                })?;
            snapshot
                .verify()
                .map_err(StoreError::from)
                .and_then(|()| store.check_snapshot(&snapshot))
                .with_context(|| {
                    format!(
                        "refusing to restore: snapshot {id} does not verify; nothing was written"
                    )
                })?;
            snapshot.seq
        }
        (None, Some(seq), None) => {
            if seq == 0 || seq > head.seq.0 {
                bail!(
                    "seq {seq} is not held: the head of {origin} here is {}",
                    head.seq
                );
            }
            Seq(seq)
        }
        (None, None, Some(at)) => {
            let t = chrono::DateTime::parse_from_rfc3339(at)
                .with_context(|| format!("--at {at:?} is not an RFC 3339 time"))?;
            store
                .seq_at_time(origin, t.timestamp_millis().max(0) as u64)?
                .with_context(|| format!("nothing of {origin} was recorded at or before {at}"))?
        }
        (None, None, None) => head.seq,
        _ => bail!("give at most one of --snapshot, --seq and --at"),
    };
    let state = store.state_for_restore(origin, seq)?;
    drop(store);
    let options = restore::RestoreOptions {
        selection,
        concurrency: args.concurrency,
        ignore_secrets_mismatch: args.target.ignore_secrets_mismatch,
        nul: args.nul,
        include_moved: args.include_moved,
    };
    write_state(&runtime, args.target, state, options, origin, seq)?;
    Ok(())
}

/// The head of `origin` in `store`, once every entry, link and checkpoint held of it verified:
/// a damaged or forged copy writes nothing.
pub(super) fn verified_head(store: &Store, origin: NodeId) -> anyhow::Result<crate::feed::Head> {
    let Some(head) = store.head(origin)? else {
        bail!("this node holds no entries of origin {origin}; see `tandem status`");
    };
    let report = store.verify_origin(origin)?;
    if let Some(problem) = report.problems.first() {
        bail!(
            "refusing to restore: the stored copy of {origin} does not verify ({} problem(s); first: {problem}); nothing was written",
            report.problems.len()
        );
    }
    Ok(head)
}

/// Writes the part of `state` (of `origin` at `seq`) that `options.selection` chooses into
/// `target`, with a progress bar on a terminal, and prints what was done.
pub(super) fn write_state(
    runtime: &tokio::runtime::Runtime,
    target: &TargetArgs,
    state: Vec<crate::store::StateItem>,
    options: restore::RestoreOptions,
    origin: NodeId,
    seq: Seq,
) -> anyhow::Result<restore::RestoreReport> {
    let selection = options.selection.clone();
    let include_moved = options.include_moved;
    let (state, _) = restore::leave_out_moved(state, &selection, options.include_moved)
        .with_context(|| {
            format!(
                "cannot restore {} of {origin} at seq {seq}",
                selection.describe()
            )
        })?;
    // A bucket or collection the origin did not hold is an error before anything is written.
    let state = restore::select(state, &selection).with_context(|| {
        format!(
            "cannot restore {} of {origin} at seq {seq}",
            selection.describe()
        )
    })?;
    let blind = restore::buckets_without_permissions(&state);
    if !blind.is_empty() {
        eprintln!(
            "warning: {} bucket(s) were recorded without their permissions (the account that followed the source could not see them); restored, they will grant nobody access and their members will be locked out until someone gives it back: {}",
            blind.len(),
            blind.join(", ")
        );
    }
    let client = Arc::new(target.client(options.concurrency)?);

    let total = state.len() as u64;
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} restoring {pos}/{len} objects [{bar:30}] {per_sec} eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let progress: Arc<dyn Fn(u64) + Send + Sync> = {
        let bar = bar.clone();
        Arc::new(move |n| bar.inc(n))
    };
    let report = runtime.block_on(restore::restore(client, state, options, progress));
    bar.finish_and_clear();
    let report = report.context("restore stopped; run the same command again to resume")?;
    let how = if report.via_plugin {
        "requests to the target's kinto-tandem plugin"
    } else {
        "batch requests"
    };
    let what = if selection.is_all() {
        String::new()
    } else {
        format!("{} of ", selection.describe())
    };
    println!(
        "restored {what}{origin} at seq {seq}: {} objects ({} written, {} already there) and {} tombstones, in {} {how}",
        report.objects, report.written, report.skipped, report.tombstones, report.batches
    );
    for m in &report.moved {
        let when = super::rfc3339(m.at);
        if include_moved {
            println!(
                "{} moved to {} on {when} (migration {}): restored anyway, from the copy this origin kept from before the move (--include-moved)",
                m.describe(),
                m.to,
                m.migration
            );
        } else {
            println!(
                "{} moved to {} on {when} (migration {}; every change up to seq {} is there): not restored, it lives there now; restore it from there, or pass --include-moved to restore the copy kept from before the move",
                m.describe(),
                m.to,
                m.migration,
                m.applied_seq
            );
        }
    }
    if !report.skipped_nul.is_empty() {
        println!(
            "{} objects holding U+0000 were not restored: {}",
            report.skipped_nul.len(),
            report.skipped_nul.join(", ")
        );
    }
    if !report.accounts_kept.is_empty() {
        println!(
            "{} accounts already existed on the target and were kept as they are there: {}",
            report.accounts_kept.len(),
            report.accounts_kept.join(", ")
        );
    }
    if !report.buckets_kept.is_empty() {
        println!(
            "{} buckets already existed on the target and were kept as they are there (data and permissions); the chosen collections were restored into them: {}",
            report.buckets_kept.len(),
            report.buckets_kept.join(", ")
        );
    }
    if !selection.is_all() {
        println!(
            "accounts are not part of --bucket or --collection: none were restored, and the target's are as they were"
        );
    }
    if !report.accounts_not_restored.is_empty() {
        println!(
            "{} accounts were not restored (the target does not run the kinto-tandem plugin, and Kinto's API cannot set a password hash); create them again and let their users choose new passwords: {}",
            report.accounts_not_restored.len(),
            report.accounts_not_restored.join(", ")
        );
    }
    Ok(report)
}
