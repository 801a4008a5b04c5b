//! Composition root of `tandem run`: opens the node, builds every part, spawns every loop, and
//! owns signals, systemd notifications and a bounded shutdown.
//!
//! [`serve`] takes an already bound listener and a shutdown future, so tests start a node on
//! port 0 and stop it without signals or sleeps.

use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::api::{self, ApiState};
use crate::config::{Config, Schedule};
use crate::identity::{IdentityError, NodeKey};
use crate::probe::Prober;
use crate::replicate::Changes;
use crate::replicate::federate::{FederateError, Federation};
use crate::replicate::ingest::IngestSlot;
use crate::scheduler::{self, Cadence, WorkerStatus};
use crate::store::{DB_FILE, Store, StoreError, StoreHandle};
use crate::telemetry;

/// How long shutdown waits for loops and connections before giving up on them.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// How long shutdown then waits for store calls still running to finish.
pub const STORE_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// An opened node: its configuration, key and (locked) store.
pub struct Node {
    /// The configuration it runs with.
    pub config: Config,
    /// Its identity.
    pub key: NodeKey,
    /// Its store, held for writing.
    pub store: Store,
}

/// Creates the data directory (mode 0700) if it does not exist; one that exists open to group
/// or others (the store and its WAL hold every backed-up object) is set to 0700, with a
/// warning that says so.
pub fn ensure_data_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        let mode = std::fs::metadata(dir)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
            .unwrap_or(0o700);
        if mode & 0o077 != 0 {
            std::fs::set_permissions(
                dir,
                std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7700),
            )
            .map_err(|source| StoreError::NotWritable {
                dir: dir.to_owned(),
                source,
            })?;
            warn!(
                dir = %dir.display(),
                was = %format!("{mode:04o}"),
                now = %format!("{:04o}", mode & 0o7700),
                "the data directory was open to group or others; it is now private to this user"
            );
        }
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::NotWritable {
            dir: dir.to_owned(),
            source,
        })
}

/// A data directory in a state that only the operator can resolve.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A secret file open to group or others.
    #[error("{0}")]
    SecretOpen(String),
    /// A key without its store, and no peer to recover the feed from.
    #[error(
        "the node key {key} exists but there is no store in {dir}, and no [[peer]] is configured to recover this node's feed from: starting it again at seq 1 would fork it. Add the peers that hold this node's feed to the configuration (`tandem run` then fetches it back before appending anything), restore the data directory from a backup, or, to start this node's feed anew on purpose (peers that hold the old one will record a fork), run `tandem init --existing-key --new-feed`"
    )]
    StoreLost {
        /// The key file.
        key: std::path::PathBuf,
        /// The data directory.
        dir: std::path::PathBuf,
    },
    /// `init` where a node already lives.
    #[error(
        "a store already exists in {dir}; refusing to initialize over it (see `tandem status`)"
    )]
    AlreadyInitialized {
        /// The data directory.
        dir: std::path::PathBuf,
    },
}

impl Node {
    /// `tandem init`: creates the data directory, a new key (never replacing one) and the
    /// store. With `existing_key`, uses the key already there (one restored from a backup) and
    /// only creates the store. Refuses where a store already exists.
    ///
    /// A store for an existing key is created marked as recovering when peers are configured:
    /// `tandem run` then fetches the node's own feed back from them before appending anything.
    /// Without peers it is refused, unless `new_feed` says to start the feed anew at seq 1.
    pub fn init(config: Config, existing_key: bool, new_feed: bool) -> anyhow::Result<Node> {
        let dir = config.node.data_dir.clone();
        ensure_data_dir(&dir)?;
        if !existing_key && config.key_path().exists() {
            return Err(IdentityError::KeyExists {
                path: config.key_path(),
            }
            .into());
        }
        if dir.join(DB_FILE).exists() {
            return Err(SetupError::AlreadyInitialized { dir }.into());
        }
        let key = if existing_key {
            NodeKey::load(&config.key_path())?
        } else {
            NodeKey::create(&config.key_path())?
        };
        let recover = existing_key && !new_feed;
        if recover && config.peers.is_empty() {
            return Err(SetupError::StoreLost {
                key: config.key_path(),
                dir,
            }
            .into());
        }
        let store = Store::open_writer_with(&dir, key.id(), recover)?;
        Ok(Node { config, key, store })
    }

    /// Opens a node for `tandem run`. A brand-new data directory (no key, no store) is
    /// initialized; a store without its key is refused, since a new key would be another node.
    pub fn open(config: Config) -> anyhow::Result<Node> {
        let dir = config.node.data_dir.clone();
        if let Some(source) = &config.source {
            source
                .auth
                .secret()
                .check_private()
                .map_err(SetupError::SecretOpen)?;
        }
        ensure_data_dir(&dir)?;
        let key_path = config.key_path();
        let mut created = false;
        let key = match NodeKey::load(&key_path) {
            Ok(key) => key,
            Err(IdentityError::KeyMissing { .. }) if !dir.join(DB_FILE).exists() => {
                let key = NodeKey::create(&key_path)?;
                info!(node = %key.id(), path = %key_path.display(), "created a new node key");
                created = true;
                key
            }
            Err(IdentityError::KeyMissing { path }) => {
                let owner = Store::open_read_only(&dir).and_then(|s| s.node_id());
                return Err(IdentityError::KeyLost {
                    path,
                    owner: owner
                        .map(|id| id.to_string())
                        .unwrap_or_else(|e| format!("unknown ({e})")),
                }
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        if !dir.join(DB_FILE).exists() && !created && config.peers.is_empty() {
            return Err(SetupError::StoreLost { key: key_path, dir }.into());
        }
        // A store created now for a key that existed is marked as recovering in the same
        // transaction that creates it: a crash at any point resumes the recovery, never an
        // append at seq 1.
        let store = Store::open_writer_with(&dir, key.id(), !created)?;
        // The keys of the sealed feeds this node reads, before anything reads them.
        store.unlock(&key)?;
        if store.recovering()? {
            if config.peers.is_empty() {
                return Err(SetupError::StoreLost { key: key_path, dir }.into());
            }
            warn!(node = %key.id(), dir = %dir.display(), "this node's feed is being fetched back from its peers; nothing is appended before that");
        }
        Ok(Node { config, key, store })
    }
}

/// Runs the node until `shutdown` resolves: serves HTTP on `listener`, runs the loops, tells
/// systemd (when present) it is ready, feeds its watchdog, and stops within
/// [`SHUTDOWN_DEADLINE`].
///
/// `SIGHUP` reloads the configuration from its file. The new one is checked in full first
/// (as `tandem config check` does, and every peer and the source client built); a bad one, or
/// one that changes what only a restart can (`listen`, `data_dir`), is refused with an
/// `ERROR` and the running one goes on. A good one replaces it: the loops and servers stop
/// as at shutdown (each write finishes) and start again with it, on the same socket and
/// store, within the process. Every loop that waited for the operator tries again.
pub async fn serve(
    node: Node,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let Node { config, key, store } = node;
    let (key, listener) = (Arc::new(key), Arc::new(listener));
    let writer = StoreHandle::new(store, crate::store::READERS)?;
    let once = OneAtATime::default();
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut config = config;
    let result = loop {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut stop = Some(stop);
        let serving = serve_with(
            config.clone(),
            key.clone(),
            writer.clone(),
            listener.clone(),
            once.clone(),
            async move {
                let _ = stopped.await;
            },
        );
        let mut serving = std::pin::pin!(serving);
        let next = loop {
            tokio::select! {
                ended = &mut serving => break Err(ended),
                _ = &mut shutdown => {
                    info!("shutting down");
                    notify(&[NotifyState::Stopping]);
                    break Ok(None);
                }
                Some(()) = hangup.recv() => {
                    info!(signal = "SIGHUP", config = %config.path.display(), "reloading the configuration");
                    match reloadable(&config, &key, &writer).await {
                        Ok(new) => break Ok(Some(new)),
                        Err(e) => error!(error = %format!("{e:#}"), "the new configuration is refused; the running one goes on"),
                    }
                }
            }
        };
        match next {
            // serve_with only returns on its own when it failed to start.
            Err(ended) => break ended,
            Ok(new) => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                let ended = serving.await;
                match (new, ended) {
                    (Some(new), Ok(())) => {
                        notify(&[NotifyState::Reloading]);
                        config = new;
                        info!(peers = config.peers.len(), "configuration reloaded");
                    }
                    (_, ended) => break ended,
                }
            }
        }
    };
    // A write that a loop sent before it stopped runs to its end and holds the store (and its
    // writer lock) until then: wait for it, so that whatever opens the store next (a restarted
    // daemon, a command) finds it free.
    if !writer.close(STORE_RELEASE_WAIT).await {
        warn!(waited = ?STORE_RELEASE_WAIT, "the store is still in use after shutdown");
    }
    result
}

/// Checks the configuration file again for a reload: it must load, keep what only a restart
/// can change, and give a client for the source and every peer.
async fn reloadable(
    running: &Config,
    key: &Arc<NodeKey>,
    writer: &StoreHandle,
) -> anyhow::Result<Config> {
    let new = Config::load(&running.path)?;
    // What `seal_own` would refuse when the loops start again under the new configuration.
    match (writer.read(|s| s.sealed_from()).await?, new.node.seal) {
        (Some(from), Some(false)) => {
            return Err(crate::store::StoreError::SealOff { from }.into());
        }
        (None, seal) if seal != Some(true) && new.peers.iter().any(|p| p.read) => {
            anyhow::bail!(
                "a [[peer]] has read = true, but this node's feed is not sealed: there are no keys to grant; set seal = true under [node] or remove read"
            );
        }
        _ => {}
    }
    for (what, changed) in [
        ("listen", new.node.listen != running.node.listen),
        ("data_dir", new.node.data_dir != running.node.data_dir),
    ] {
        if changed {
            anyhow::bail!("[node] {what} changed: restart tandem to apply it (or put it back)");
        }
    }
    if let Some(source) = &new.source {
        crate::source::kinto::KintoClient::new(source)?;
    }
    for peer in &new.peers {
        Federation::new(
            peer.clone(),
            key.clone(),
            writer.clone(),
            Changes::default(),
        )
        .with_context(|| format!("[[peer]] {}", peer.name))?;
    }
    Ok(new)
}

/// Work that never runs twice at once in the process, even across a reload, when a pass or a
/// drill that an admin request started under the old configuration may still be ending.
#[derive(Clone, Default)]
struct OneAtATime {
    ingest: Arc<tokio::sync::Mutex<()>>,
    drill: Arc<tokio::sync::Mutex<()>>,
}

async fn serve_with(
    config: Config,
    key: Arc<NodeKey>,
    writer: StoreHandle,
    listener: Arc<tokio::net::TcpListener>,
    once: OneAtATime,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let node_id = key.id();
    let addr = listener
        .local_addr()
        .context("reading the listener address")?;
    telemetry::metrics();
    let recovering = writer.read(|s| s.recovering()).await?;
    let changes = Changes::default();
    let feds = config
        .peers
        .iter()
        .map(|p| {
            Federation::new(p.clone(), key.clone(), writer.clone(), changes.clone())
                .map(|f| f.listing(config.peers.iter().map(|p| p.id).collect()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Cleared once this node's own feed is back from its peers (at once when nothing was lost).
    let (recovered_tx, recovered) = tokio::sync::watch::channel(!recovering);
    let token = CancellationToken::new();
    let tasks = TaskTracker::new();
    let prober = Prober::new()?;
    // Hearing from a peer ends the backoff of the loops that talk to it.
    let contacts = scheduler::Contacts::new(config.peers.iter().map(|p| p.id));
    let mut workers = Vec::new();
    let heartbeat = config
        .node
        .heartbeat_url
        .clone()
        .map(scheduler::Heartbeat::new)
        .transpose()
        .context("building the heartbeat client")?;
    // The loops that talk to peers, known once they are spawned: a round of the source loop
    // counts for the heartbeat only while none of them fails.
    let peer_workers: Arc<std::sync::OnceLock<Vec<Arc<WorkerStatus>>>> = Arc::default();

    let ingest = config.source.as_ref().map(|source| {
        IngestSlot::new(source.clone(), writer.clone(), key.clone())
            .sharing_passes_with(once.ingest.clone())
    });
    if recovering {
        let status = Arc::new(WorkerStatus::new("recovery", "own feed"));
        workers.push(status.clone());
        tasks.spawn(scheduler::recover_own_feed(
            status,
            feds.clone(),
            writer.clone(),
            recovered_tx,
            token.child_token(),
        ));
    }
    if !recovering {
        // Refused before anything starts: `seal = false` for a sealed feed.
        seal_own(&writer, &key, SealWanted::of(&config)).await?;
    }
    if let (Some(source), Some(slot)) = (&config.source, &ingest) {
        let status = Arc::new(WorkerStatus::new("source", "kinto"));
        workers.push(status.clone());
        let (slot, token, changes) = (slot.clone(), token.child_token(), changes.clone());
        let cadence = Cadence::Every(source.poll);
        let mut recovered = recovered.clone();
        let (heartbeat, peer_workers) = (heartbeat.clone(), peer_workers.clone());
        let (writer_for_seal, key_for_seal, want_seal) =
            (writer.clone(), key.clone(), SealWanted::of(&config));
        tasks.spawn(async move {
            // Nothing is appended before the own feed is back (see `recover_own_feed`).
            tokio::select! {
                _ = token.cancelled() => return,
                _ = recovered.wait_for(|done| *done) => {}
            }
            // A feed recovered sealed is opened (and stays sealed) before the first append.
            if recovering && let Err(e) = seal_own(&writer_for_seal, &key_for_seal, want_seal).await
            {
                error!(error = %format!("{e:#}"), "the source loop stops");
                status.stopped(format!("{e:#}"));
                return;
            }
            scheduler::run_loop(&status, cadence, token, || {
                let (slot, changes) = (slot.clone(), changes.clone());
                let (heartbeat, peer_workers) = (heartbeat.clone(), peer_workers.clone());
                async move {
                    let r = slot.run_pass().await?;
                    if r.appended > 0 {
                        changes.notify();
                    }
                    if let Some(heartbeat) = heartbeat
                        && scheduler::none_failing(
                            peer_workers.get().map_or(&[], Vec::as_slice),
                            None,
                        )
                    {
                        heartbeat.beat();
                    }
                    Ok::<_, crate::replicate::ingest::IngestError>(format!(
                        "{} entries appended, {} lists changed",
                        r.appended, r.lists_changed
                    ))
                }
            })
            .await
        });
    } else {
        info!("no [source] configured: this node only keeps other origins");
    }
    let before_peers = workers.len();
    // Without a source, a successful push round is the node's round (see `Heartbeat`).
    let peer_heartbeat = heartbeat
        .clone()
        .filter(|_| config.source.is_none())
        .map(|h| scheduler::PeerBeat::new(h, peer_workers.clone()));
    for fed in &feds {
        let peer = fed.peer().id;
        let mut status_of = |kind, name| {
            let status = Arc::new(WorkerStatus::new(kind, name).talking_to(&contacts, peer));
            workers.push(status.clone());
            status
        };
        spawn_peer_loops(
            fed,
            &prober,
            &changes,
            &tasks,
            &token,
            &mut status_of,
            peer_heartbeat.clone(),
        );
    }
    let _ = peer_workers.set(workers[before_peers..].to_vec());
    // Entries damaged on disk are fetched again from peers (see `store::damage`). Its health
    // is not listed with the loops': `status` shows the damaged entries themselves.
    tasks.spawn(scheduler::repair_damaged(
        Arc::new(WorkerStatus::new("repair", "damaged entries")),
        feds.clone(),
        writer.clone(),
        changes.clone(),
        token.child_token(),
    ));
    tasks.spawn(open_granted(
        writer.clone(),
        key.clone(),
        changes.clone(),
        token.child_token(),
    ));
    // Migrations: the mirror writes later entries into their targets, on every change of the
    // store (and every check interval). Its health is listed with the loops' once the store
    // holds a migration; `status` shows each migration's own state.
    {
        let status = Arc::new(WorkerStatus::new("mirror", "migrations"));
        if writer
            .read(|s| Ok(!s.migrations()?.is_empty()))
            .await
            .unwrap_or(false)
        {
            workers.push(status.clone());
        }
        let mirror = crate::replicate::mirror::Mirror::new(writer.clone());
        let token = token.child_token();
        let on_change = OnChange::new(&changes);
        tasks.spawn(async move {
            scheduler::run_loop(&status, Cadence::Every(Duration::ZERO), token, || {
                let (mirror, on_change) = (mirror.clone(), on_change.clone());
                async move {
                    let report = on_change.attempt(mirror.pass()).await?;
                    Ok::<_, crate::replicate::mirror::MirrorError>(format!(
                        "{} migration(s) mirroring, {} entries applied, {} objects written",
                        report.mirroring, report.entries, report.written
                    ))
                }
            })
            .await
        });
    }
    let snapshots = crate::replicate::snapshot::SnapshotMaker {
        key: key.clone(),
        store: writer.clone(),
        changes: changes.clone(),
        retention: config
            .snapshots
            .as_ref()
            .map(crate::retention::Policy::from),
        holders: crate::retention::Holders::of_own_feed(&config, key.id()),
    };
    if let Some(schedule) = &config.snapshots {
        let status = Arc::new(WorkerStatus::new("snapshot", "schedule"));
        workers.push(status.clone());
        let (maker, token) = (snapshots.clone(), token.child_token());
        let cadence = Cadence::Cron(schedule.schedule.clone());
        let mut recovered = recovered.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = recovered.wait_for(|done| *done) => {}
            }
            scheduler::run_loop(&status, cadence, token, || {
                let maker = maker.clone();
                async move {
                    match maker.make().await {
                        Ok((s, true)) => Ok(format!("snapshot {} at seq {}", s.id(), s.seq)),
                        Ok((s, false)) => Ok(format!("no change since snapshot {}", s.id())),
                        // An empty feed has nothing to snapshot yet; not a failure.
                        Err(crate::store::StoreError::Feed(e)) => Ok(format!("skipped: {e}")),
                        Err(e) => Err(e),
                    }
                }
            })
            .await
        });
    }

    let drill = config.drill.as_ref().map(|d| {
        crate::replicate::drill::Drill::new(d.clone(), writer.clone())
            .sharing_drills_with(once.drill.clone())
    });
    if let (Some(schedule), Some(drill)) = (&config.drill, &drill) {
        let status = Arc::new(WorkerStatus::new("drill", "schedule"));
        workers.push(status.clone());
        let (drill, token) = (drill.clone(), token.child_token());
        let cadence = Cadence::Cron(schedule.schedule.clone());
        tasks.spawn(async move {
            scheduler::run_loop(&status, cadence, token, || {
                let drill = drill.clone();
                async move {
                    // A drill that ran is a success of the loop, even when an origin failed
                    // it: that is recorded per origin (status, metrics), and drilling again at
                    // once would only repeat it. Only a drill that could not run is retried.
                    let records = drill.run().await?;
                    let failed = records.iter().filter(|r| !r.ok).count();
                    Ok::<_, crate::replicate::drill::DrillError>(format!(
                        "{} origin(s) drilled, {failed} failed",
                        records.len()
                    ))
                }
            })
            .await
        });
    }

    let state = Arc::new(ApiState {
        node: node_id,
        name: config.node.name.clone(),
        store: writer.clone(),
        workers: workers.clone(),
        durability: config.node.durability,
        peers: config.peers.iter().map(|p| p.id).collect(),
    });
    let peer_state = Arc::new(api::peer::PeerState {
        node: node_id,
        name: config.node.name.clone(),
        peers: config.peers.clone(),
        store: writer.clone(),
        key: key.clone(),
        changes: changes.clone(),
        contacts: contacts.clone(),
        stopping: token.child_token(),
    });
    let server_token = token.clone();
    let limits = api::listen::Limits::new(config.node.max_connections);
    info!(
        max_connections = limits.max_connections,
        header_timeout = ?limits.header_timeout,
        "http limits"
    );
    let server = tokio::spawn(api::listen::serve(
        listener,
        api::router(state, peer_state),
        limits,
        server_token.cancelled_owned(),
    ));

    let admin_listener = api::admin::bind(&config.node.data_dir).with_context(|| {
        format!(
            "cannot create the admin socket in {}",
            config.node.data_dir.display()
        )
    })?;
    let admin_token = token.clone();
    let admin_state = api::admin::AdminState {
        ingest,
        feds: feds.clone(),
        recovered: recovered.clone(),
        changes: changes.clone(),
        snapshots: snapshots.clone(),
        workers: workers.clone(),
        drill,
    };
    let admin = tokio::spawn(api::admin::serve(
        admin_listener,
        admin_state,
        admin_token.cancelled_owned(),
    ));

    if let Some(interval) = sd_notify::watchdog_enabled() {
        tasks.spawn(watchdog(
            writer.clone(),
            node_id,
            interval / 2,
            token.child_token(),
        ));
    }
    tasks.close();
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
    info!(node = %node_id, name = %config.node.name, listen = %addr, "tandem running");

    shutdown.await;
    info!("stopping the loops and servers");
    token.cancel();
    let stopped = tokio::time::timeout(SHUTDOWN_DEADLINE, async {
        tasks.wait().await;
        let _ = admin.await;
        server.await
    })
    .await;
    let _ = std::fs::remove_file(config.node.data_dir.join(api::admin::SOCKET_FILE));
    match stopped {
        Ok(Ok(Ok(()))) => info!("stopped"),
        Ok(Ok(Err(e))) => error!(error = %e, "http server failed"),
        Ok(Err(e)) => error!(error = %e, "http server task failed"),
        Err(_) => warn!(deadline = ?SHUTDOWN_DEADLINE, "shutdown deadline passed; stopping anyway"),
    }
    Ok(())
}

/// Starts the loops that synchronize with one peer, by its schedule:
/// - `continuous`: a push loop that pushes at once and again on every change of the store (or
///   every [`scheduler::PEER_CHECK_INTERVAL`]), and one long-poll loop per origin pulled;
/// - a cron expression: one loop that pushes, then pulls, at each time;
/// - a peer with nothing to push or pull is only probed, so `status` shows whether it is up.
///
/// `status_of(kind, name)` gives each loop its status, listed with the daemon's loops.
fn spawn_peer_loops(
    fed: &Federation,
    prober: &Prober,
    changes: &Changes,
    tasks: &TaskTracker,
    token: &CancellationToken,
    status_of: &mut dyn FnMut(&'static str, String) -> Arc<WorkerStatus>,
    heartbeat: Option<scheduler::PeerBeat>,
) {
    let peer = fed.peer().clone();
    let (push, pull) = (!peer.push.is_empty(), !peer.pull.is_empty());
    if !push && !pull {
        let status = status_of("peer", peer.name.clone());
        let (prober, url, token) = (prober.clone(), peer.url.clone(), token.child_token());
        let cadence = Cadence::for_peer(&peer.schedule);
        tasks.spawn(async move {
            scheduler::run_loop(&status, cadence, token, || {
                let (prober, url) = (prober.clone(), url.clone());
                async move { prober.peer(&url).await.map(|()| "healthz ok".to_owned()) }
            })
            .await
        });
        return;
    }
    if let Schedule::Cron(cron) = &peer.schedule {
        let status = status_of("peer", peer.name.clone());
        let (fed, token, cadence) = (
            fed.clone(),
            token.child_token(),
            Cadence::Cron(cron.clone()),
        );
        let me = status.clone();
        tasks.spawn(async move {
            scheduler::run_loop(&status, cadence, token, || {
                let (fed, heartbeat, me) = (fed.clone(), heartbeat.clone(), me.clone());
                async move {
                    let (pushed, pulled) = fed.round().await;
                    let pushed = pushed.transpose()?.unwrap_or_default();
                    let pulled = pulled.transpose()?.unwrap_or_default();
                    if let Some(heartbeat) = heartbeat {
                        heartbeat.beat(&me);
                    }
                    Ok::<_, FederateError>(format!(
                        "{} entries pushed, {} pulled",
                        pushed.sent, pulled.accepted
                    ))
                }
            })
            .await
        });
        return;
    }
    if push {
        let status = status_of("push", peer.name.clone());
        let (fed, token) = (fed.clone(), token.child_token());
        let on_change = OnChange::new(changes);
        let (me, heartbeat) = (status.clone(), heartbeat.clone());
        tasks.spawn(async move {
            scheduler::run_loop(&status, Cadence::Every(Duration::ZERO), token, || {
                let (fed, on_change, heartbeat) =
                    (fed.clone(), on_change.clone(), heartbeat.clone());
                let me = me.clone();
                async move {
                    let pushed = on_change.attempt(fed.push()).await?;
                    if let Some(heartbeat) = heartbeat {
                        heartbeat.beat(&me);
                    }
                    Ok::<_, FederateError>(format!("{} entries pushed", pushed.sent))
                }
            })
            .await
        });
    }
    for origin in fed.resolve(&peer.pull) {
        let status = status_of("pull", format!("{} {origin}", peer.name));
        let (fed, token) = (fed.clone(), token.child_token());
        let (me, heartbeat) = (status.clone(), heartbeat.clone());
        tasks.spawn(async move {
            scheduler::run_loop(&status, Cadence::Every(Duration::ZERO), token, || {
                let (fed, heartbeat, me) = (fed.clone(), heartbeat.clone(), me.clone());
                async move {
                    let started = tokio::time::Instant::now();
                    // At start and after a failure, one quick ask first: the loop shows
                    // healthy as soon as the peer answers, not once a long poll ends.
                    let wait = if me.healthy() {
                        scheduler::LONG_POLL
                    } else {
                        Duration::ZERO
                    };
                    let pulled = fed.pull_origin(origin, wait).await?;
                    if let Some(heartbeat) = heartbeat {
                        heartbeat.beat(&me);
                    }
                    // A peer that answers a long poll at once with nothing is not hammered.
                    if pulled.accepted == 0 {
                        tokio::time::sleep_until(started + Duration::from_secs(1)).await;
                    }
                    Ok::<_, FederateError>(format!("{} entries pulled", pulled.accepted))
                }
            })
            .await
        });
    }
}

/// The rhythm of a loop driven by the store's changes (a push, the migrations' mirror): after
/// an attempt that succeeded, the next one first waits for a change (or
/// [`scheduler::PEER_CHECK_INTERVAL`]); after a failure, or when re-armed, it starts at once.
/// The wait is at the start of an attempt, so that a success is reported as soon as it
/// happens.
#[derive(Clone)]
struct OnChange {
    seen: Arc<tokio::sync::Mutex<tokio::sync::watch::Receiver<u64>>>,
    caught_up: Arc<std::sync::atomic::AtomicBool>,
}

impl OnChange {
    fn new(changes: &Changes) -> OnChange {
        OnChange {
            seen: Arc::new(tokio::sync::Mutex::new(changes.subscribe())),
            caught_up: Arc::default(),
        }
    }

    /// Runs `work` when it is time.
    async fn attempt<T, E>(&self, work: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut seen = self.seen.lock().await;
        if self.caught_up.swap(false, Relaxed) {
            let _ = tokio::time::timeout(scheduler::PEER_CHECK_INTERVAL, seen.changed()).await;
        }
        // Marked seen before the work: a change during it triggers another attempt.
        seen.borrow_and_update();
        let result = work.await;
        if result.is_ok() {
            self.caught_up.store(true, Relaxed);
        }
        result
    }
}

/// Pings the systemd watchdog every `every`, but only while the store still answers: a wedged
/// writer stops the pings and lets systemd restart the service.
async fn watchdog(
    store: StoreHandle,
    node: crate::identity::NodeId,
    every: Duration,
    token: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // On the writer: a wedged writer is what the watchdog must catch.
        let check = store.write(move |s| s.head(node).map(drop));
        match tokio::time::timeout(every, check).await {
            Ok(Ok(())) => notify(&[NotifyState::Watchdog]),
            Ok(Err(e)) => {
                error!(error = %e, "store check failed; withholding the watchdog ping")
            }
            _ => error!("store check timed out; withholding the watchdog ping"),
        }
    }
}

/// Tells systemd about a state change; does nothing outside systemd.
fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// Installs SIGTERM and SIGINT handlers now (so that readiness is never announced before a
/// signal would be handled) and returns a future that resolves on the first of them.
pub fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!(signal = "SIGTERM", "signal received"),
            _ = int.recv() => info!(signal = "SIGINT", "signal received"),
        }
    })
}

/// What `[node] seal` and the peers with `read = true` ask of the own feed's sealing.
#[derive(Debug, Clone)]
pub(crate) struct SealWanted {
    seal: Option<bool>,
    readers: Vec<crate::identity::NodeId>,
}

impl SealWanted {
    pub(crate) fn of(config: &Config) -> SealWanted {
        SealWanted {
            seal: config.node.seal,
            readers: config
                .peers
                .iter()
                .filter(|p| p.read)
                .map(|p| p.id)
                .collect(),
        }
    }
}

/// Brings the own feed's sealing in line with `[node] seal` (see [`Store::seal_own`]), and its
/// readers with the peers that have `read = true` (see [`Store::set_readers`]).
pub(crate) async fn seal_own(
    writer: &StoreHandle,
    key: &Arc<NodeKey>,
    wanted: SealWanted,
) -> anyhow::Result<()> {
    let key = key.clone();
    let (sealing, readers, before) = writer
        .write(move |s| {
            let sealing = s.seal_own(&key, wanted.seal)?;
            let before = s.readers(key.id())?;
            let readers = s.set_readers(&key, &wanted.readers)?;
            Ok((sealing, readers, before))
        })
        .await?;
    match sealing {
        crate::store::Sealing::On { from, now: true } => {
            info!(
                from = from.0,
                "sealing switched on: holders see this node's feed sealed from this seq"
            );
        }
        crate::store::Sealing::On { from, now: false } => {
            info!(from = from.0, "this node's feed is sealed");
        }
        crate::store::Sealing::Off => {}
    }
    if let Some(readers) = readers {
        let removed: Vec<&String> = before
            .iter()
            .flat_map(|b| b.readers.keys())
            .filter(|id| !readers.readers.contains_key(*id))
            .collect();
        if !removed.is_empty() {
            // After `tandem recover`, a configuration written anew names no reader: say how
            // to give them back what they had (a grant carries every epoch up to its own).
            warn!(
                ?removed,
                epoch = readers.epoch,
                "readers no longer named with read = true in the configuration: they open nothing sealed from now on; to keep one, add its [[peer]] with read = true again"
            );
        }
        info!(
            epoch = readers.epoch,
            readers = readers.readers.len(),
            "the readers of this node's sealed feed changed: each may read every epoch up to this one"
        );
    }
    Ok(())
}

/// Opens, after every change of the store, what this node may read of the sealed origins it
/// holds (see [`Store::open_granted`]), so that `export` and `restore` find it readable.
async fn open_granted(
    writer: StoreHandle,
    key: Arc<NodeKey>,
    changes: Changes,
    token: CancellationToken,
) {
    let status = WorkerStatus::new("readers", "sealed origins");
    let on_change = OnChange::new(&changes);
    let refused = Arc::new(std::sync::Mutex::new(Vec::new()));
    scheduler::run_loop(&status, Cadence::Every(Duration::ZERO), token, || {
        let (writer, key, on_change, refused) =
            (writer.clone(), key.clone(), on_change.clone(), refused.clone());
        async move {
            let granted = on_change
                .attempt(writer.write(move |s| s.open_granted(&key)))
                .await?;
            for (origin, entries) in &granted.opened {
                info!(%origin, entries, "opened sealed entries this node may read");
            }
            let mut seen = refused.lock().expect("not poisoned");
            for origin in &granted.refused {
                if !seen.contains(origin) {
                    info!(%origin, "origin is sealed and does not grant this node reading: it is held, not read");
                }
            }
            *seen = granted.refused;
            for (origin, e) in &granted.failed {
                warn!(%origin, error = %e, "a sealed origin that grants this node reading could not be opened; the others were");
            }
            Ok::<_, crate::store::StoreError>(format!("{} origin(s) opened further", granted.opened.len()))
        }
    })
    .await
}
