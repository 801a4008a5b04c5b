//! The command line: argument parsing, dispatch and exit codes. One file per subcommand; this
//! is the only layer that prints for humans.
//!
//! Exit codes: 0 success; 1 failure; 2 bad usage; 78 (`EX_CONFIG`) when the configuration, the
//! key or the store must be fixed by the operator before retrying (systemd's
//! `RestartPreventExitStatus=78` stops a restart loop on those).

pub mod admin_client;
mod check;
mod completions;
mod drill;
mod export;
mod import;
mod init;
mod key;
mod man;
mod migrate;
mod passphrase;
mod peers;
mod recover;
mod restore;
mod run;
mod snapshot;
mod status;
mod sync;
pub mod target;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
use crate::identity::IdentityError;
use crate::replicate::select::Selection;
use crate::store::StoreError;
use crate::telemetry::LogFormat;

/// Exit code for problems the operator must fix (sysexits `EX_CONFIG`).
pub const EXIT_CONFIG: u8 = 78;

/// tandem: signed, replicated backups between community and personal servers.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, max_term_width = 100)]
#[command(
    long_about = "tandem follows a data server (Kinto), records every change in a signed, \
hash-chained feed, and exchanges feeds with the peers its configuration names, so that \
community servers and personal servers back each other up."
)]
pub struct Cli {
    /// Configuration file.
    #[arg(short, long, global = true, env = "TANDEM_CONFIG", value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Log format of `run` (logs go to stderr; level from TANDEM_LOG, default info).
    #[arg(long, global = true, env = "TANDEM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the data directory, a new node key and an empty store; print the node id last.
    Init {
        /// Keep the key already in the data directory (one kept when the disk was lost) and
        /// only create the store, marked to recover: `tandem run` first fetches this node's
        /// feed back from the configured peers and appends nothing before that. Refused when
        /// no peer is configured, unless --new-feed.
        #[arg(long)]
        existing_key: bool,
        /// With --existing-key: start this node's feed anew at seq 1 instead of recovering it.
        /// Peers that hold the old feed will record a fork and freeze it.
        #[arg(long, requires = "existing_key")]
        new_feed: bool,
    },
    /// Run the daemon until SIGTERM or SIGINT.
    Run,
    /// Show this node and every origin it holds (works with or without a running daemon).
    Status {
        /// Print JSON (stable shape, see docs/operating.md).
        #[arg(long)]
        json: bool,
    },
    /// List the configured peers and what flows each way.
    Peers {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run one ingest pass, then push to and pull from every peer once (by the running
    /// daemon, if there is one), and report.
    Sync,
    /// Prove the backups restorable: restore every origin held, from its latest snapshot, into
    /// the `[drill]` scratch Kinto server and check it (by the running daemon, if there is
    /// one).
    ///
    /// For each origin, one after another: the scratch server is emptied (only of what earlier
    /// drills wrote there: one holding anything else is refused, untouched), the latest
    /// snapshot is checked against the feed, its state is restored as `tandem restore` does,
    /// and every object is read back and compared with the snapshot. Prints per origin the
    /// snapshot's seq, the objects restored, the duration (the measured recovery time) and ok
    /// or why it failed; exits non-zero if any failed. `tandem status` shows the last drill
    /// of each origin. See docs/drills.md.
    Drill,
    /// Signed snapshots of an origin's state.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Write the current state of an origin: one live object per line, sorted by path
    /// (`jsonl`), or the YAML that `kinto-wizard load` reads, to move data to any Kinto server
    /// (`kinto-wizard`).
    Export {
        /// `self` or a node id.
        #[arg(long, default_value = "self")]
        origin: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = export::Format::Jsonl)]
        format: export::Format,
        /// Export only this bucket, with everything in it (repeatable).
        #[arg(long, value_name = "ID", conflicts_with = "archive")]
        bucket: Vec<String>,
        /// Export only this collection, with its records and its bucket object, but none of
        /// the bucket's other collections or groups (repeatable).
        #[arg(long, value_name = "BUCKET/COLLECTION", conflicts_with = "archive")]
        collection: Vec<String>,
        /// Write to this file (atomically) instead of stdout.
        #[arg(long, value_name = "FILE", conflicts_with = "archive")]
        out: Option<PathBuf>,
        /// Write the portable archive of the origin's feed to this file instead (atomically):
        /// every entry and snapshot, verifiable anywhere; see `tandem import`.
        #[arg(long, value_name = "FILE")]
        archive: Option<PathBuf>,
        /// With `--archive`, for a sealed origin this node may read (its own, or one that
        /// grants it reading): carry the origin's content keys in the archive, so that
        /// `tandem import` on any node opens it. Whoever holds the file then reads everything
        /// in it (it is written with mode 0600): keep it as you would a plain copy. On the
        /// origin, a new key epoch starts first (`tandem key rotate`), so that the file opens
        /// nothing sealed after it; on a reader, its keys open later entries too until the
        /// origin rotates.
        #[arg(long, requires = "archive")]
        decrypt: bool,
    },
    /// Verify a portable archive completely, then load its origin's feed into this node's
    /// store (through the running daemon, if any).
    Import {
        /// The archive (`tandem export --archive`).
        file: PathBuf,
    },
    /// Re-check every stored entry, chain link, checkpoint, receipt, snapshot and the state;
    /// non-zero exit on damage.
    Verify {
        /// `self` or a node id (default: every origin held).
        #[arg(long)]
        origin: Option<String>,
        /// Re-hash only this percentage of the entries, picked at random (chain links,
        /// checkpoints, receipts and snapshots are all still checked).
        #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
        sample: Option<f64>,
    },
    /// Write an origin's state (now, or at a snapshot, seq or time) into a Kinto server,
    /// after verifying everything held of it; all of it, or some buckets and collections.
    Restore(Box<RestoreCommand>),
    /// Move buckets of an origin to another Kinto server: restore them there, then mirror
    /// every later change of them into it (by `tandem run`).
    #[command(subcommand)]
    Migrate(MigrateCommand),
    /// Show or back up the node key, or rotate the content key of a sealed feed.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Bring a node back on a blank machine from its key backup (`tandem key backup`), with
    /// only the passphrase, the node id and the URL of a peer that holds its feed.
    ///
    /// Asks the passphrase (or reads --passphrase-file), derives the keys from it (about a
    /// second and 256 MiB), fetches the sealed key from the peer with a proof that the
    /// passphrase is known, decrypts it and checks that it is the key of --id. Then it writes
    /// the configuration (only when the file --config names does not exist: this node and
    /// that peer; add the `[source]` section after), the key file and a store marked to
    /// recover, as `tandem init --existing-key` does: `tandem run` or `tandem sync` then
    /// fetches the node's whole feed back from its peers before appending anything. A wrong
    /// passphrase (or an id the peer has no backup of: it does not say which), a backup
    /// altered at the peer, or a key of another node is each its own error, and then nothing
    /// is written. Prints the node id last.
    Recover {
        /// A peer that holds this node's feed (and so its key backup), e.g.
        /// `https://community.example.org/tandem/`
        #[arg(long, value_name = "URL")]
        peer: url::Url,
        /// The node to bring back (`ed25519:...`, as `tandem key show` printed it).
        #[arg(long, value_name = "ID")]
        id: crate::identity::NodeId,
        /// The data directory, when the configuration is written by this command (default
        /// /var/lib/tandem); with an existing configuration, its data_dir is used.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Read the passphrase from the first line of this file (mode 0600) instead of the
        /// terminal.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Check configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script.
    #[command(long_about = completions::INSTALL_HELP)]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, or write one page per command into a directory.
    #[command(
        long_about = "Print the manual page of tandem (roff) on stdout, or, with --dir, write one \
page per command into a directory: tandem.1, tandem-run.1, tandem-snapshot-create.1, ... \
View one with `man -l tandem.1`."
    )]
    Man {
        /// Write the pages into this directory (created if missing), one per command, and
        /// print their paths.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Milliseconds since the epoch as RFC 3339 UTC, e.g. `2026-11-26T15:04:05.123Z`.
fn rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A `--bucket` argument, refused as a usage error when Kinto would not take it as an id.
fn parse_bucket(text: &str) -> Result<String, String> {
    crate::replicate::select::Selection::parse(&[text.to_owned()], &[])
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

/// A `--collection BUCKET/COLLECTION` argument, refused as a usage error when malformed.
fn parse_collection(text: &str) -> Result<String, String> {
    crate::replicate::select::Selection::parse(&[], &[text.to_owned()])
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_percent(text: &str) -> Result<f64, String> {
    match text.trim_end_matches('%').parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?} is not a percentage between 0 and 100")),
    }
}

/// `tandem key ...`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print the node id (the public key).
    Show,
    /// Copy the secret key to a new file (mode 0600) for safekeeping; never prints it.
    Export {
        /// Where to write the copy; must not exist.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Store the node key, encrypted under a passphrase, at every peer that holds this
    /// node's feed (push or serve "self"), so that `tandem recover` brings the node back from
    /// the passphrase, the node id and one peer's URL.
    ///
    /// Asks the passphrase twice on the terminal, without echo (or reads --passphrase-file),
    /// and refuses a weak one (zxcvbn strength below 3 of 4): a peer holding the encrypted key
    /// can try passphrases offline, each guess costing about a second and 256 MiB of memory
    /// (Argon2id). Each upload is signed by this node; each peer keeps one backup per node,
    /// the last one sent. Every backup is then fetched back with the passphrase and opened, as
    /// `tandem recover` would. Run it again after changing the passphrase or adding a peer.
    /// Works beside a running daemon.
    Backup {
        /// Read the passphrase from the first line of this file (mode 0600) instead of the
        /// terminal.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Start a new key epoch of this node's sealed feed (`[node] seal = true`): what it
    /// seals from now on opens only with a key nobody held before, while its readers
    /// (`read = true`) are granted the new key and keep reading.
    ///
    /// Run it when content keys may have leaked without a node key: an archive written with
    /// `export --archive --decrypt` by a reader, or a copy of a reader's opened store. What
    /// was sealed before stays readable with the keys given out then. A reader whose node key
    /// leaked must be removed instead (drop its `read = true`): a rotation grants the new key
    /// to that same node key. Works beside a running daemon.
    Rotate,
}

/// `tandem restore ...`
#[derive(Debug, clap::Args)]
pub struct RestoreCommand {
    /// `self` or a node id.
    #[arg(long, default_value = "self")]
    pub origin: String,
    /// Restore the state a snapshot states (see `tandem snapshot list`).
    #[arg(long, value_name = "ID", conflicts_with_all = ["seq", "at"])]
    pub snapshot: Option<String>,
    /// Restore the state at this seq of the feed.
    #[arg(long, value_name = "N", conflicts_with = "at")]
    pub seq: Option<u64>,
    /// Restore the state as it was at this time (RFC 3339, e.g. 2026-11-26T12:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// The Kinto server to write to, and the account that writes there.
    #[command(flatten)]
    pub target: target::TargetArgs,
    /// First fetch the origin from this peer (by its name in the configuration).
    #[arg(long, value_name = "NAME")]
    pub from_peer: Option<String>,
    /// How many lists (collections…) to write at the same time.
    #[arg(long, value_name = "N", default_value_t = crate::replicate::restore::CONCURRENCY, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub concurrency: usize,
    /// Objects holding the character U+0000 in a string, which Kinto on PostgreSQL cannot
    /// store: `refuse` names them before writing anything, `skip` restores everything else,
    /// `write` writes them (a target on the memory backend).
    #[arg(long, value_enum, default_value_t = crate::replicate::restore::NulStrings::Refuse)]
    pub nul: crate::replicate::restore::NulStrings,
    /// Restore only this bucket, with its groups, collections and records (repeatable). The
    /// origin must hold it at the chosen point; other objects on the target are not touched.
    #[arg(long, value_name = "ID", value_parser = parse_bucket)]
    pub bucket: Vec<String>,
    /// Restore only this collection and its records (repeatable), with its bucket when the
    /// target lacks it (a bucket the target has is kept as it is there). Accounts are never
    /// part of --bucket or --collection.
    #[arg(long, value_name = "BUCKET/COLLECTION", value_parser = parse_collection)]
    pub collection: Vec<String>,
    /// Restore buckets and collections the origin's feed says moved to another server
    /// (`tandem migrate finish`) too, from the copy kept from before the move. Without it they
    /// are left out and named, and naming one with --bucket or --collection is refused.
    #[arg(long)]
    pub include_moved: bool,
}

/// `tandem migrate ...`
#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Restore the chosen buckets or collections of an origin, at its head, into the target,
    /// and record a migration: from then on the daemon (`tandem run`) writes every later
    /// change of them that reaches this node into the target, in order, with its recorded
    /// data, timestamp and permissions. If the target is written there by anyone else, the
    /// mirror stops (see `tandem migrate status`) rather than overwrite it. With a running
    /// daemon, the daemon records the migration and starts mirroring at once. The daemon reads
    /// the password where this command did, whenever it connects: a --password-env variable
    /// must be in the daemon's environment too.
    Start(Box<MigrateStart>),
    /// Switch a migration over: wait until the target holds everything, make the old
    /// server's copy read-only for its members (the write and create permissions of every
    /// object moved are emptied through Kinto's API; what they were is recorded), let the
    /// mirror write the last changes, and record a signed moved statement per bucket or
    /// collection in this node's feed: holders show it, and a restore of this origin names
    /// where the buckets went instead of restoring a stale copy. Runs on the node whose own
    /// origin is mirrored, through the running daemon if there is one; run it again to resume
    /// after an interruption. The old server's account needs write permission on every object
    /// moved (by default the `[source]` account).
    Finish(MigrateSwitch),
    /// Give up a migration: the old server's objects get back the permissions finish took (if
    /// it ran), the moved statements are retracted, and the mirror ends. What the target holds
    /// stays there.
    Abort(MigrateSwitch),
    /// List the migrations: what each mirrors where, up to which seq, and whether it stopped
    /// and why.
    Status {
        /// Print JSON (the `migrations` array of `tandem status --json`).
        #[arg(long)]
        json: bool,
    },
}

/// `tandem migrate start ...`
#[derive(Debug, clap::Args)]
pub struct MigrateStart {
    /// `self` or a node id.
    #[arg(long, default_value = "self")]
    pub origin: String,
    /// Move this bucket, with its groups, collections and records (repeatable).
    #[arg(long, value_name = "ID", value_parser = parse_bucket, required_unless_present = "collection")]
    pub bucket: Vec<String>,
    /// Move this collection and its records (repeatable), with its bucket object when the
    /// target lacks it (a bucket the target has is kept as it is there, and not mirrored).
    #[arg(long, value_name = "BUCKET/COLLECTION", value_parser = parse_collection)]
    pub collection: Vec<String>,
    /// The Kinto server the buckets move to, and the account that writes there.
    #[command(flatten)]
    pub target: target::TargetArgs,
}

/// `tandem migrate finish|abort ...`
#[derive(Debug, clap::Args)]
pub struct MigrateSwitch {
    /// The migration's number (see `tandem migrate status`).
    pub id: u64,
    /// The account that changes permissions on the old server (default: the `[source]`
    /// account; for abort, the one finish used).
    #[arg(long)]
    pub user: Option<String>,
    /// File holding that account's password (first line).
    #[arg(
        long,
        value_name = "FILE",
        requires = "user",
        conflicts_with = "password_env"
    )]
    pub password_file: Option<std::path::PathBuf>,
    /// Environment variable holding that account's password (the daemon's environment, when
    /// one runs).
    #[arg(long, value_name = "VAR", requires = "user")]
    pub password_env: Option<String>,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tandem snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Sign a snapshot of this node's state at its head (the next push sends it to holders).
    Create,
    /// List the snapshots held, with the holders known to have them.
    List {
        /// `self` or a node id (default: every origin held).
        #[arg(long)]
        origin: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check every snapshot's signature and recompute its state root from the entries.
    Verify {
        /// `self` or a node id (default: every origin held).
        #[arg(long)]
        origin: Option<String>,
    },
}

/// `tandem config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file (default: --config) and summarize it.
    Check {
        /// The file to check.
        file: Option<PathBuf>,
    },
}

/// Runs the parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    if !matches!(cli.command, Command::Run) {
        // Commands that print end quietly when their reader goes away (`tandem export | head`),
        // as Unix tools do. The daemon keeps Rust's default: a closed socket is an error there.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match &cli.command {
        Command::Init {
            existing_key,
            new_feed,
        } => init::run(&cli, *existing_key, *new_feed),
        Command::Run => run::run(&cli),
        Command::Status { json } => status::run(&cli, *json),
        Command::Peers { json } => peers::run(&cli, *json),
        Command::Sync => sync::run(&cli),
        Command::Drill => drill::run(&cli),
        Command::Snapshot(SnapshotCommand::Create) => snapshot::create(&cli),
        Command::Restore(r) => restore::run(
            &cli,
            restore::RestoreArgs {
                origin: &r.origin,
                snapshot: r.snapshot.as_deref(),
                seq: r.seq,
                at: r.at.as_deref(),
                target: &r.target,
                from_peer: r.from_peer.as_deref(),
                concurrency: r.concurrency,
                nul: r.nul,
                buckets: &r.bucket,
                collections: &r.collection,
                include_moved: r.include_moved,
            },
        ),
        Command::Snapshot(SnapshotCommand::List { origin, json }) => {
            snapshot::list(&cli, origin.as_deref(), *json)
        }
        Command::Snapshot(SnapshotCommand::Verify { origin }) => {
            snapshot::verify(&cli, origin.as_deref())
        }
        Command::Export {
            origin,
            archive: Some(file),
            decrypt,
            ..
        } => export::archive(&cli, origin, file, *decrypt),
        Command::Export {
            origin,
            format,
            bucket,
            collection,
            out,
            archive: None,
            decrypt: _,
        } => Selection::parse(bucket, collection)
            .map_err(anyhow::Error::from)
            .and_then(|selection| export::run(&cli, origin, *format, &selection, out.as_deref())),
        Command::Import { file } => import::run(&cli, file),
        Command::Verify { origin, sample } => verify::run(&cli, origin.as_deref(), *sample),
        Command::Migrate(MigrateCommand::Start(m)) => migrate::start(&cli, m),
        Command::Migrate(MigrateCommand::Status { json }) => migrate::status(&cli, *json),
        Command::Migrate(MigrateCommand::Finish(m)) => migrate::switch(&cli, m, true),
        Command::Migrate(MigrateCommand::Abort(m)) => migrate::switch(&cli, m, false),
        Command::Key(cmd) => key::run(&cli, cmd),
        Command::Recover {
            peer,
            id,
            data_dir,
            passphrase_file,
        } => recover::run(
            &cli,
            recover::RecoverArgs {
                peer,
                id: *id,
                data_dir: data_dir.as_deref(),
                passphrase_file: passphrase_file.as_deref(),
            },
        ),
        Command::Config(ConfigCommand::Check { file }) => {
            check::run(file.as_ref().unwrap_or(&cli.config))
        }
        Command::Completions { shell } => completions::run(*shell),
        Command::Man { dir } => man::run(dir.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The error and its causes on one line, each cause once: many errors already quote their
/// cause in their own message.
fn one_line(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

/// Whether opening the node failed because a running daemon holds its store: commands then
/// ask the daemon over its admin socket instead.
fn daemon_holds_store(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<StoreError>(),
        Some(StoreError::Locked { .. })
    )
}

/// Loads the configuration named on the command line.
fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    Ok(Config::load(&cli.config)?)
}

/// Opens the store read-only (beside a running daemon), with the keys of the sealed feeds
/// this node reads (see `Store::unlock`): what exports and restores read in source paths.
/// Without a usable key file (a data directory copied without it, one this user may not
/// read) plain feeds read as ever and sealed ones stay sealed, and reading one says so.
fn open_to_read(config: &Config) -> anyhow::Result<crate::store::Store> {
    let store = crate::store::Store::open_read_only(&config.node.data_dir)?;
    match crate::identity::NodeKey::load(&config.key_path()) {
        Ok(key) => store.unlock(&key)?,
        Err(crate::identity::IdentityError::KeyMissing { .. }) => {}
        Err(e) => eprintln!("warning: sealed feeds stay sealed for this command: {e}"),
    }
    Ok(store)
}

/// Maps an error to an exit code: 78 for what the operator must fix, 1 otherwise.
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        // A bad --bucket or --collection is a usage error, as clap's own are.
        if cause.is::<crate::replicate::select::SelectionError>() {
            return 2;
        }
        if cause.is::<ConfigError>() || cause.is::<crate::daemon::SetupError>() {
            return EXIT_CONFIG;
        }
        if let Some(err) = cause.downcast_ref::<IdentityError>() {
            return match err {
                IdentityError::Io { .. } => 1,
                _ => EXIT_CONFIG,
            };
        }
        if let Some(err) = cause.downcast_ref::<StoreError>() {
            return match err {
                StoreError::Corrupt { .. }
                | StoreError::Damaged { .. }
                | StoreError::NotReadable { .. }
                | StoreError::TooNew { .. }
                | StoreError::WrongNode { .. }
                | StoreError::Missing { .. }
                | StoreError::NotWritable { .. }
                | StoreError::SealOff { .. }
                | StoreError::SealBusy { .. } => EXIT_CONFIG,
                _ => 1,
            };
        }
    }
    1
}
