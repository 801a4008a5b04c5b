//! Logging and metrics set-up.
//!
//! Logs go to stderr (journald captures them under systemd), as text or JSON lines. The level
//! comes from `TANDEM_LOG` (`tracing-subscriber` filter syntax, e.g. `info,tandem=debug`),
//! default `info`. Messages are fixed lowercase strings with values in fields; payloads, keys
//! and passwords are never logged.
//!
//! Metrics use the `metrics` facade with a Prometheus recorder installed once per process;
//! `/metrics` renders it. Names used across the code are listed here so they are documented in
//! one place.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Gauge: seq of each held origin's head. Labels: `origin`, `self` ("true"/"false").
pub const FEED_HEAD_SEQ: &str = "tandem_feed_head_seq";
/// Gauge: bytes of stored entries per origin. Labels: `origin`, `self`.
pub const FEED_BYTES: &str = "tandem_feed_bytes";
/// Gauge: 1 for an origin frozen by fork evidence. Labels: `origin`.
pub const FEED_FROZEN: &str = "tandem_feed_frozen";
/// Counter: entries appended to this node's own feed.
pub const ENTRIES_APPENDED: &str = "tandem_entries_appended_total";
/// Counter: entries of other origins accepted into the store.
pub const ENTRIES_ACCEPTED: &str = "tandem_entries_accepted_total";
/// Gauge: 1 when the last probe of a target succeeded. Labels: `target` (`source` or `peer`), `name`.
pub const TARGET_UP: &str = "tandem_target_up";
/// Counter: failed probes or passes per target. Labels: `target`, `name`.
pub const TARGET_ERRORS: &str = "tandem_target_errors_total";
/// Gauge: 1 while a loop has stopped retrying a failure that cannot heal and waits for the
/// operator (`tandem sync`, `SIGHUP`). Labels: `target`, `name`.
pub const NEEDS_OPERATOR: &str = "tandem_needs_operator";

/// Counter: entries served to peers in pages. Labels: `peer`.
pub const ENTRIES_SERVED: &str = "tandem_entries_served_total";
/// Gauge: the seq a holder's latest receipt acknowledges. Labels: `origin`, `holder` (peer name).
pub const HOLDER_ACKED_SEQ: &str = "tandem_holder_acked_seq";
/// Counter: times a holder served less than it acknowledged or served before (rolled back or
/// withholding). Labels: `origin`, `holder`.
pub const HOLDER_ROLLBACKS: &str = "tandem_holder_rollbacks_total";
/// Gauge: the highest seq of this node's feed held by at least `[node] durability` holders.
/// Labels: `origin` (this node).
pub const DURABLE_SEQ: &str = "tandem_durable_seq";
/// Gauge: 1 while a peer refuses our pushes for lack of quota. Labels: `peer`.
pub const PEER_QUOTA_EXCEEDED: &str = "tandem_peer_quota_exceeded";
/// Counter: peer API requests refused before any handler ran. Labels: `reason`
/// (`unauthenticated`, `replayed`, `nonces`, `before_start`, `peer_bodies`, `bodies`,
/// `long_polls`, `key_backup_proof`, `key_backup_limited`).
pub const PEER_REQUESTS_REFUSED: &str = "tandem_peer_requests_refused_total";
/// Counter: stored entries found damaged (their bytes no longer hash or chain) when read to be
/// served or pushed; each counted once. Labels: `origin`.
pub const ENTRIES_DAMAGED: &str = "tandem_entries_damaged_total";
/// Counter: damaged entries replaced by a good copy from a peer. Labels: `origin`.
pub const ENTRIES_REPAIRED: &str = "tandem_entries_repaired_total";
/// Gauge: damaged entries awaiting a good copy (not served meanwhile).
pub const ENTRIES_DAMAGED_PENDING: &str = "tandem_entries_damaged";
/// Gauge: buckets of the source followed without record permissions (their history does not
/// cover them for the account).
pub const SOURCE_PERMISSIONS_INCOMPLETE: &str = "tandem_source_buckets_permissions_incomplete";
/// Gauge: 1 when the last restore drill of an origin read back equal to its snapshot, 0 when
/// it failed. Labels: `origin`.
pub const DRILL_LAST_OK: &str = "tandem_drill_last_ok";
/// Gauge: how long the last restore drill of an origin took (the measured recovery time).
/// Labels: `origin`.
pub const DRILL_DURATION: &str = "tandem_drill_duration_seconds";
/// Gauge: when the last restore drill of an origin started (Unix time). Labels: `origin`.
pub const DRILL_LAST_TIMESTAMP: &str = "tandem_drill_last_timestamp_seconds";
/// Gauge: the age of the newest change of this node's feed that `[node] durability` holders
/// acknowledged (the recovery point). Labels: `origin` (this node). Absent while none is.
pub const RPO: &str = "tandem_rpo_seconds";
/// Gauge: entries of a migration's origin held here and not yet applied to its target.
/// Labels: `id` (the migration).
pub const MIGRATION_LAG: &str = "tandem_migration_lag_entries";
/// Gauge: 1 when a migration's mirror stopped (its target was written outside it), 0 while it
/// mirrors. Labels: `id`.
pub const MIGRATION_STOPPED: &str = "tandem_migration_stopped";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Starts logging to stderr. Safe to call once per process; later calls do nothing.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use, with every metric described.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .install_recorder()
            .expect("no other metrics recorder is installed in this process");
        let process = metrics_process::Collector::new("");
        process.describe();
        metrics::describe_gauge!(FEED_HEAD_SEQ, "Seq of the head of each held origin's feed.");
        metrics::describe_gauge!(
            FEED_BYTES,
            metrics::Unit::Bytes,
            "Bytes of stored entries per origin."
        );
        metrics::describe_gauge!(
            FEED_FROZEN,
            "1 when fork evidence froze the origin on this node."
        );
        metrics::describe_counter!(
            ENTRIES_APPENDED,
            "Entries appended to this node's own feed."
        );
        metrics::describe_counter!(
            ENTRIES_ACCEPTED,
            "Entries of other origins accepted into the store."
        );
        metrics::describe_gauge!(
            TARGET_UP,
            "1 when the last attempt to reach the source or peer succeeded."
        );
        metrics::describe_counter!(
            TARGET_ERRORS,
            "Failed attempts to reach the source or a peer."
        );
        metrics::describe_counter!(ENTRIES_SERVED, "Entries served to peers in pages.");
        metrics::describe_gauge!(
            HOLDER_ACKED_SEQ,
            "Seq acknowledged by each holder's latest receipt."
        );
        metrics::describe_counter!(
            HOLDER_ROLLBACKS,
            "Times a holder served less than it acknowledged or served before."
        );
        metrics::describe_gauge!(
            DURABLE_SEQ,
            "Highest seq of the own feed held by at least `durability` holders."
        );
        metrics::describe_gauge!(
            PEER_QUOTA_EXCEEDED,
            "1 while a peer refuses pushes for lack of quota."
        );
        metrics::describe_counter!(
            PEER_REQUESTS_REFUSED,
            "Peer API requests refused by authentication, replay protection or a limit."
        );
        metrics::describe_gauge!(
            SOURCE_PERMISSIONS_INCOMPLETE,
            "Source buckets followed without record permissions."
        );
        metrics::describe_counter!(
            ENTRIES_DAMAGED,
            "Stored entries found damaged when read to be served or pushed."
        );
        metrics::describe_counter!(
            ENTRIES_REPAIRED,
            "Damaged entries replaced by a good copy from a peer."
        );
        metrics::describe_gauge!(
            ENTRIES_DAMAGED_PENDING,
            "Damaged entries awaiting a good copy from a peer (not served meanwhile)."
        );
        metrics::describe_gauge!(
            DRILL_LAST_OK,
            "1 when the last restore drill of the origin read back equal to its snapshot."
        );
        metrics::describe_gauge!(
            DRILL_DURATION,
            metrics::Unit::Seconds,
            "Duration of the last restore drill of the origin (the measured recovery time)."
        );
        metrics::describe_gauge!(
            DRILL_LAST_TIMESTAMP,
            metrics::Unit::Seconds,
            "Start of the last restore drill of the origin, Unix time."
        );
        metrics::describe_gauge!(
            RPO,
            metrics::Unit::Seconds,
            "Age of the newest change of the own feed acknowledged by `durability` holders."
        );
        metrics::describe_gauge!(
            MIGRATION_LAG,
            "Entries of a migration's origin held here and not yet applied to its target."
        );
        metrics::describe_gauge!(
            MIGRATION_STOPPED,
            "1 when a migration's mirror stopped because its target was written outside it."
        );
        metrics::counter!(ENTRIES_APPENDED).absolute(0);
        metrics::counter!(ENTRIES_ACCEPTED).absolute(0);
        Metrics { handle, process }
    })
}

/// The installed recorder and the process collector.
pub struct Metrics {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

impl Metrics {
    /// Refreshes process metrics and renders everything in the Prometheus text format.
    pub fn render(&self) -> String {
        self.process.collect();
        self.handle.render()
    }
}
