//! Long-lived loops and their timing: when to try the source and each peer again.
//!
//! Each loop owns one target, runs until the shutdown token is cancelled, and reports its health
//! in a [`WorkerStatus`] that `/healthz` shows. Failures back off with capped, jittered delays
//! ([`crate::backoff`]); the daemon never exits because a remote is down. A failure that cannot
//! heal by waiting ([`RetryHint::heals`]: a fork, a forged page, credentials or grants refused,
//! a quota reached, a damaged store) is not retried: the loop logs at `ERROR`, shows
//! `needs_operator` in its status, and waits until it is re-armed ([`WorkerStatus::rearm`]:
//! `tandem sync` or `SIGHUP`). A loop retrying a peer does not sleep out its backoff once the
//! peer is heard from ([`Contacts`]): a peer back from an outage is talked to, and shown
//! healthy, at once rather than up to [`RETRY_CAP`] later.
//!
//! Cron schedules are computed with `croner` and slept with `tokio::time::sleep`, each sleep
//! capped at a minute and recomputed, so that a clock step or a suspend cannot make a schedule
//! drift or silently stop (see docs/dependencies.md on why not `tokio-cron-scheduler`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::config::{CronSchedule, Schedule};
use crate::identity::NodeId;
use crate::telemetry;

/// First retry delay after a failure.
pub const RETRY_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const RETRY_CAP: Duration = Duration::from_secs(300);
/// How often a continuously synchronized peer is checked while nothing else talks to it.
pub const PEER_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// How long a continuous pull waits for new entries in one request.
pub const LONG_POLL: Duration = Duration::from_secs(25);
/// Longest single sleep while waiting for a cron time.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Health of one loop, shared with the HTTP API.
#[derive(Debug)]
pub struct WorkerStatus {
    /// `source` or `peer`.
    pub kind: &'static str,
    /// The peer's name, or the source's kind.
    pub name: String,
    ok: AtomicBool,
    consecutive_errors: AtomicU32,
    last_error: Mutex<Option<String>>,
    /// Set while the loop waits for the operator: the failure that stopped it.
    needs_operator: Mutex<Option<String>>,
    /// Raised by [`WorkerStatus::rearm`].
    rearmed: tokio::sync::watch::Sender<u64>,
    /// The peer this loop talks to, and where it is heard from (see [`Contacts`]).
    peer: Option<(Contacts, NodeId)>,
}

/// Word from each configured peer: a counter per peer, raised when an authenticated request
/// comes from it (`api::peer`) and when one of this node's loops that talk to it succeeds
/// ([`run_loop`]). A loop waiting out its backoff after it could not reach that peer at all
/// ([`RetryHint::unreachable`]: no connection, or one broken off) tries again as soon as the
/// counter moves after its failure, instead of after up to [`RETRY_CAP`]. A peer that
/// answered with an error is not tried again sooner for being heard from: it was heard.
///
/// So that a peer which can reach this node but not be reached by it (behind NAT, a
/// one-way firewall) does not turn each of its requests into a failed attempt here, a wait is
/// cut short only when the attempt before it was not itself one started that way: at most one
/// extra attempt per delay.
#[derive(Debug, Clone, Default)]
pub struct Contacts(Arc<HashMap<NodeId, tokio::sync::watch::Sender<u64>>>);

impl Contacts {
    /// The counters of `peers`.
    pub fn new(peers: impl IntoIterator<Item = NodeId>) -> Contacts {
        Contacts(Arc::new(
            peers
                .into_iter()
                .map(|id| (id, tokio::sync::watch::Sender::new(0)))
                .collect(),
        ))
    }

    /// Records that `peer` was heard from. Peers not configured are ignored.
    pub fn heard(&self, peer: NodeId) {
        if let Some(counter) = self.0.get(&peer) {
            counter.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn subscribe(&self, peer: NodeId) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.0.get(&peer).map(|counter| counter.subscribe())
    }
}

/// A point-in-time copy of a [`WorkerStatus`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WorkerReport {
    /// `source` or `peer`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Whether the last attempt succeeded.
    pub ok: bool,
    /// Failures since the last success.
    pub consecutive_errors: u32,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Set when the loop stopped retrying a failure that cannot heal by waiting: what it was.
    /// The loop tries again after `tandem sync` or `SIGHUP`.
    #[serde(default)]
    pub needs_operator: Option<String>,
}

impl WorkerStatus {
    /// A status for a loop that has not run yet.
    pub fn new(kind: &'static str, name: impl Into<String>) -> WorkerStatus {
        WorkerStatus {
            kind,
            name: name.into(),
            ok: AtomicBool::new(false),
            consecutive_errors: AtomicU32::new(0),
            last_error: Mutex::new(None),
            needs_operator: Mutex::new(None),
            rearmed: tokio::sync::watch::Sender::new(0),
            peer: None,
        }
    }

    /// The status of a loop that talks to `peer`: its successes count as hearing from the
    /// peer, and hearing from the peer ends its backoff (see [`Contacts`]).
    pub fn talking_to(mut self, contacts: &Contacts, peer: NodeId) -> WorkerStatus {
        self.peer = Some((contacts.clone(), peer));
        self
    }

    /// Wakes the loop if it waits for the operator, to try again at once (`tandem sync`,
    /// `SIGHUP`). Does nothing to a loop that is retrying or waiting for its next time.
    pub fn rearm(&self) {
        self.rearmed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Records that the loop stopped on `error`, which cannot heal.
    fn stop_for_operator(&self, error: String) {
        *self
            .needs_operator
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(error);
        metrics::gauge!(telemetry::NEEDS_OPERATOR, "target" => self.kind, "name" => self.name.clone())
            .set(1.0);
    }

    /// Records that the operator re-armed the loop: it no longer waits for them.
    fn resume(&self) {
        *self
            .needs_operator
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        metrics::gauge!(telemetry::NEEDS_OPERATOR, "target" => self.kind, "name" => self.name.clone())
            .set(0.0);
    }

    /// Whether the last attempt succeeded (false before the first one).
    pub fn healthy(&self) -> bool {
        self.ok.load(Ordering::Relaxed)
    }

    /// A snapshot for reporting.
    pub fn report(&self) -> WorkerReport {
        WorkerReport {
            kind: self.kind.to_owned(),
            name: self.name.clone(),
            ok: self.ok.load(Ordering::Relaxed),
            consecutive_errors: self.consecutive_errors.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            needs_operator: self
                .needs_operator
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    fn succeeded(&self) {
        self.ok.store(true, Ordering::Relaxed);
        self.consecutive_errors.store(0, Ordering::Relaxed);
        if self
            .needs_operator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some()
        {
            metrics::gauge!(telemetry::NEEDS_OPERATOR, "target" => self.kind, "name" => self.name.clone())
                .set(0.0);
        }
        metrics::gauge!(telemetry::TARGET_UP, "target" => self.kind, "name" => self.name.clone())
            .set(1.0);
    }

    /// Records a failure that ends the loop before it ran (the operator must act).
    pub(crate) fn stopped(&self, error: String) {
        self.failed(error);
    }

    fn failed(&self, error: String) {
        self.ok.store(false, Ordering::Relaxed);
        self.consecutive_errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
        metrics::gauge!(telemetry::TARGET_UP, "target" => self.kind, "name" => self.name.clone())
            .set(0.0);
        metrics::counter!(telemetry::TARGET_ERRORS, "target" => self.kind, "name" => self.name.clone()).increment(1);
    }
}

pub use crate::backoff::RetryHint;

/// When a loop runs its next attempt after a success.
#[derive(Debug, Clone)]
pub enum Cadence {
    /// A fixed interval.
    Every(Duration),
    /// At the times of a cron expression (UTC).
    Cron(CronSchedule),
}

impl Cadence {
    /// The cadence of a peer with this schedule.
    pub fn for_peer(schedule: &Schedule) -> Cadence {
        match schedule {
            Schedule::Continuous => Cadence::Every(PEER_CHECK_INTERVAL),
            Schedule::Cron(cron) => Cadence::Cron(cron.clone()),
        }
    }
}

/// Runs `attempt` on `cadence` until `shutdown`, retrying failures with backoff and recording
/// health in `status`. `attempt` returns a short description of success for the log. A
/// failure that cannot heal stops the retries until `status` is re-armed.
pub async fn run_loop<F, Fut, E>(
    status: &WorkerStatus,
    cadence: Cadence,
    shutdown: CancellationToken,
    mut attempt: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<String, E>>,
    E: std::fmt::Display + RetryHint,
{
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
    let mut first = true;
    // Re-arms count from the start of each attempt: one asked while the attempt that fails
    // runs is not missed.
    let mut rearmed = status.rearmed.subscribe();
    let mut heard = status
        .peer
        .as_ref()
        .and_then(|(contacts, peer)| contacts.subscribe(*peer));
    // Whether this attempt was started by hearing from the peer (see `Contacts`).
    let mut woken = false;
    loop {
        if matches!(cadence, Cadence::Cron(_)) && first {
            // A cron loop waits for its first time; an interval loop starts at once.
            if !sleep_until_cron(&cadence, &shutdown).await {
                return;
            }
        }
        let span = tracing::info_span!("pass", target_kind = status.kind, name = %status.name);
        rearmed.borrow_and_update();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = tracing::Instrument::instrument(attempt(), span) => result,
        };
        let was_woken = std::mem::take(&mut woken);
        let retry = match result {
            Err(e) if !e.heals() => {
                error!(
                    target_kind = status.kind,
                    name = %status.name,
                    error = %e,
                    "this cannot heal by retrying: fix what the error names, then run `tandem sync` or reload the configuration (SIGHUP, `systemctl reload tandem`); until then this loop waits"
                );
                status.failed(e.to_string());
                status.stop_for_operator(e.to_string());
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = rearmed.changed() => {}
                }
                status.resume();
                info!(target_kind = status.kind, name = %status.name, "trying again as asked");
                backoff.succeed();
                first = false;
                continue;
            }
            Ok(detail) => {
                if first || backoff.failures() > 0 {
                    info!(target_kind = status.kind, name = %status.name, detail = %detail, "reachable");
                }
                backoff.succeed();
                status.succeeded();
                if let Some((contacts, peer)) = &status.peer {
                    contacts.heard(*peer);
                }
                None
            }
            Err(e) => {
                // A server's own Retry-After wins when it asks for longer than our backoff.
                let delay = backoff
                    .fail()
                    .max(e.retry_after().unwrap_or_default().min(RETRY_CAP));
                warn!(
                    target_kind = status.kind,
                    name = %status.name,
                    error = %e,
                    failures = backoff.failures(),
                    retry_in = %humantime::format_duration(Duration::from_secs(delay.as_secs().max(1))),
                    "unreachable, will retry"
                );
                status.failed(e.to_string());
                // Word from the peer counts from now: what came while the attempt ran (a
                // sibling's success just before the peer went down) is no news of its return.
                if let Some(heard) = &mut heard {
                    heard.borrow_and_update();
                }
                Some((delay, e.unreachable()))
            }
        };
        first = false;
        let keep_going = match (retry, &cadence) {
            (Some((delay, unreachable)), _) => {
                match heard.as_mut().filter(|_| unreachable && !was_woken) {
                    Some(heard) => tokio::select! {
                        _ = shutdown.cancelled() => false,
                        _ = tokio::time::sleep(delay) => true,
                        Ok(()) = heard.changed() => {
                            info!(target_kind = status.kind, name = %status.name, "heard from the peer; trying again now");
                            woken = true;
                            true
                        }
                    },
                    None => sleep_or_cancel(delay, &shutdown).await,
                }
            }
            (None, Cadence::Every(interval)) => sleep_or_cancel(*interval, &shutdown).await,
            (None, Cadence::Cron(_)) => sleep_until_cron(&cadence, &shutdown).await,
        };
        if !keep_going {
            return;
        }
    }
}

/// Recovers this node's own feed from its peers before anything is appended (a node started
/// with its key and an empty store). Every peer is asked what it holds of the feed and the
/// entries beyond the local head are pulled and verified; a peer that does not hold it or does
/// not let us read it counts as answered. Only when every peer has answered is the store's
/// recovery flag cleared and `done` set: one unreachable peer might hold the latest entries,
/// and appending before hearing from it could fork the feed. Unreachable peers are retried
/// with backoff.
pub async fn recover_own_feed(
    status: std::sync::Arc<WorkerStatus>,
    feds: Vec<crate::replicate::federate::Federation>,
    store: crate::store::StoreHandle,
    done: tokio::sync::watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut pending = feds;
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
    let mut recovered = 0u64;
    info!(peers = pending.len(), "recovering the own feed from peers");
    loop {
        let mut still = Vec::new();
        let mut errors = Vec::new();
        for fed in pending {
            let answer = tokio::select! {
                _ = shutdown.cancelled() => return,
                answer = fed.recover_own() => answer,
            };
            match answer {
                Ok(report) => {
                    let got = report.map_or(0, |r| r.accepted);
                    recovered += got;
                    info!(peer = %fed.peer().name, entries = got, "peer answered for the own feed");
                }
                Err(e) => {
                    errors.push(e.to_string());
                    still.push(fed);
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        let waiting: Vec<_> = pending.iter().map(|f| f.peer().name.clone()).collect();
        let error = format!("waiting for {}: {}", waiting.join(", "), errors.join("; "));
        warn!(error = %error, "own feed recovery incomplete; appending stays paused");
        status.failed(error);
        if !sleep_or_cancel(backoff.fail(), &shutdown).await {
            return;
        }
    }
    match store.write(|s| s.set_recovering(false)).await {
        Ok(()) => {
            status.succeeded();
            info!(entries = recovered, "own feed recovered; appending resumes");
            let _ = done.send(true);
        }
        Err(e) => {
            error!(error = %e, "cannot clear the recovery flag");
            status.failed(e.to_string());
        }
    }
}

/// Replaces the entries of this store found damaged on disk (see `store::damage`) with good
/// copies from peers, until `shutdown`. It looks whenever the store signals a change (a
/// damaged entry is recorded with one) and every [`PEER_CHECK_INTERVAL`]; for each origin
/// with damaged entries it asks the origin itself first, then every other peer. When every
/// peer answered and none had a good copy, the entry is marked unrepaired (an error in the
/// log, once, and `status`): an operator must restore it; the loop keeps asking, with
/// backoff, in case a peer gets one later.
pub async fn repair_damaged(
    status: std::sync::Arc<WorkerStatus>,
    feds: Vec<crate::replicate::federate::Federation>,
    store: crate::store::StoreHandle,
    changes: crate::replicate::Changes,
    shutdown: CancellationToken,
) {
    let mut seen = changes.subscribe();
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
    loop {
        seen.borrow_and_update();
        let origins: Result<Vec<(crate::identity::NodeId, usize)>, crate::store::StoreError> =
            store
                .write(|s| {
                    s.damaged_origins()?
                        .into_iter()
                        .map(|o| Ok((o, s.damaged(o)?.len())))
                        .collect()
                })
                .await;
        let origins = match origins {
            Ok(origins) => origins,
            Err(e) => {
                error!(error = %e, "cannot read damaged entries");
                status.failed(e.to_string());
                if !sleep_or_cancel(backoff.fail(), &shutdown).await {
                    return;
                }
                continue;
            }
        };
        let pending: usize = origins.iter().map(|(_, n)| n).sum();
        metrics::gauge!(telemetry::ENTRIES_DAMAGED_PENDING).set(pending as f64);
        if origins.is_empty() {
            backoff.succeed();
            status.succeeded();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = seen.changed() => {}
                _ = tokio::time::sleep(PEER_CHECK_INTERVAL) => {}
            }
            continue;
        }
        let mut left = Vec::new();
        for (origin, _) in origins {
            // The origin first: it holds its whole feed unless it compacted it.
            let mut order: Vec<_> = feds.iter().collect();
            order.sort_by_key(|f| f.peer().id != origin);
            let mut unanswered = Vec::new();
            for fed in order {
                let attempt = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    attempt = fed.repair(origin) => attempt,
                };
                if let Err(e) = attempt {
                    warn!(peer = %fed.peer().name, %origin, error = %e, "repair of damaged entries failed");
                    unanswered.push(fed.peer().name.clone());
                }
            }
            let still: Result<Vec<crate::feed::Seq>, crate::store::StoreError> = store
                .write(move |s| Ok(s.damaged(origin)?.into_iter().map(|d| d.seq).collect()))
                .await;
            let still = still.unwrap_or_default();
            if still.is_empty() {
                continue;
            }
            if unanswered.is_empty() {
                let seqs = still.clone();
                let new = store
                    .write(move |s| s.mark_unrepaired(origin, &seqs))
                    .await
                    .unwrap_or_default();
                for seq in new {
                    error!(%origin, seq = seq.0, "no peer holds a good copy of a damaged entry: restore it from a backup or an archive, or give a peer that holds it to this node");
                }
            }
            left.push(format!(
                "origin {origin}: {} damaged entries await a good copy{}",
                still.len(),
                if unanswered.is_empty() {
                    String::new()
                } else {
                    format!(" (unreachable: {})", unanswered.join(", "))
                }
            ));
        }
        if left.is_empty() {
            backoff.succeed();
            status.succeeded();
            continue;
        }
        status.failed(left.join("; "));
        if !sleep_or_cancel(backoff.fail(), &shutdown).await {
            return;
        }
    }
}

/// How long a heartbeat request may take.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// `[node] heartbeat_url`: a GET after every successful round of the daemon's work, so that an
/// outside monitor (a dead man's switch: healthchecks.io, Uptime Kuma's push monitors…) raises
/// an alarm when they stop, whatever the reason: the daemon is down, wedged, or its rounds fail.
///
/// A round is, on a node with a `[source]`, an ingest pass that succeeded while no loop that
/// pushes to or pulls from a peer is failing (each one's last attempt succeeded, or it has not
/// run yet); on a node without one, a push, a pull or a scheduled round with a peer that
/// succeeded while no other peer loop is failing ([`PeerBeat`]). A failed round sends nothing. The request is sent in the background with a short
/// timeout; its failure is logged and never fails the round.
#[derive(Clone)]
pub struct Heartbeat {
    url: url::Url,
    http: reqwest::Client,
}

impl Heartbeat {
    /// A heartbeat to `url`.
    pub fn new(url: url::Url) -> Result<Heartbeat, reqwest::Error> {
        Ok(Heartbeat {
            url,
            http: crate::net::client_builder()
                .timeout(HEARTBEAT_TIMEOUT)
                .build()?,
        })
    }

    /// Sends the request in the background.
    pub fn beat(&self) {
        let this = self.clone();
        tokio::spawn(async move { this.send().await });
    }

    /// Sends the request and waits for its answer; a failure is logged at WARN.
    pub async fn send(&self) {
        // The URL may carry a secret token in its path: only the host is logged.
        let host = self.url.host_str().unwrap_or_default().to_owned();
        match self.http.get(self.url.clone()).send().await {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(%host, "heartbeat sent");
            }
            Ok(r) => warn!(%host, status = r.status().as_u16(), "heartbeat refused"),
            Err(e) => warn!(%host, error = %crate::net::transport_reason(&e), "heartbeat failed"),
        }
    }
}

/// Whether none of `workers` is failing: each one's last attempt succeeded, or it has not
/// run yet. `me`, the loop asking right after its own success, is left out: its count of
/// failures is reset only when its attempt returns.
pub fn none_failing(
    workers: &[std::sync::Arc<WorkerStatus>],
    me: Option<&std::sync::Arc<WorkerStatus>>,
) -> bool {
    workers
        .iter()
        .filter(|w| me.is_none_or(|me| !std::sync::Arc::ptr_eq(w, me)))
        .all(|w| w.consecutive_errors.load(Ordering::Relaxed) == 0)
}

/// The heartbeat of a node without a `[source]`: sent after a peer loop's success (a push, a
/// pull, a scheduled round) while no other peer loop is failing, so that one healthy peer does
/// not hide another that stopped.
#[derive(Clone)]
pub struct PeerBeat {
    heartbeat: Heartbeat,
    peers: std::sync::Arc<std::sync::OnceLock<Vec<std::sync::Arc<WorkerStatus>>>>,
}

impl PeerBeat {
    /// A beat to `heartbeat`, gated on the loops `peers` will hold once they are all started.
    pub fn new(
        heartbeat: Heartbeat,
        peers: std::sync::Arc<std::sync::OnceLock<Vec<std::sync::Arc<WorkerStatus>>>>,
    ) -> PeerBeat {
        PeerBeat { heartbeat, peers }
    }

    /// Called by the loop `me` after a success.
    pub fn beat(&self, me: &std::sync::Arc<WorkerStatus>) {
        if none_failing(self.peers.get().map_or(&[], Vec::as_slice), Some(me)) {
            self.heartbeat.beat();
        }
    }
}

/// Sleeps `delay`; false if cancelled first.
async fn sleep_or_cancel(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Sleeps until the next time of a cron cadence; false if cancelled first or if the expression
/// has no future time.
async fn sleep_until_cron(cadence: &Cadence, shutdown: &CancellationToken) -> bool {
    let Cadence::Cron(schedule) = cadence else {
        return true;
    };
    let Some(target) = next_cron_time(schedule, chrono::Utc::now()) else {
        warn!(schedule = %schedule.text, "cron expression has no future time; loop stops");
        return false;
    };
    loop {
        let now = chrono::Utc::now();
        if now >= target {
            return true;
        }
        let left = (target - now).to_std().unwrap_or_default().min(MAX_SLEEP);
        if !sleep_or_cancel(left, shutdown).await {
            return false;
        }
    }
}

/// The first time strictly after `after` that `schedule` names.
pub fn next_cron_time(
    schedule: &CronSchedule,
    after: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    schedule.cron.find_next_occurrence(&after, false).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn cron_times_are_utc_and_strictly_after() {
        let every_5s = CronSchedule::parse("*/5 * * * * *").unwrap();
        let t = chrono::Utc
            .with_ymd_and_hms(2026, 3, 29, 0, 59, 58)
            .unwrap();
        assert_eq!(
            next_cron_time(&every_5s, t).unwrap(),
            chrono::Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap()
        );
        let at = chrono::Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap();
        assert_eq!(
            next_cron_time(&every_5s, at).unwrap(),
            chrono::Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 5).unwrap()
        );
        let nightly = CronSchedule::parse("30 2 * * *").unwrap();
        assert_eq!(
            next_cron_time(&nightly, at).unwrap(),
            chrono::Utc.with_ymd_and_hms(2026, 3, 29, 2, 30, 0).unwrap()
        );
    }

    impl RetryHint for &str {}

    /// A failure that asks for a long wait.
    struct Busy;
    impl std::fmt::Display for Busy {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("busy")
        }
    }
    impl RetryHint for Busy {
        fn retry_after(&self) -> Option<Duration> {
            Some(Duration::from_secs(40))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_longer_than_the_backoff_is_honoured() {
        let status = WorkerStatus::new("source", "kinto");
        let shutdown = CancellationToken::new();
        let calls = std::sync::Arc::new(AtomicU32::new(0));
        let (counter, stop) = (calls.clone(), shutdown.clone());
        let started = tokio::time::Instant::now();
        run_loop(
            &status,
            Cadence::Every(Duration::from_secs(1)),
            shutdown,
            move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let stop = stop.clone();
                async move {
                    if n == 0 {
                        return Err(Busy);
                    }
                    stop.cancel();
                    Ok("up".to_owned())
                }
            },
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(
            started.elapsed() >= Duration::from_secs(40),
            "{:?}",
            started.elapsed()
        );
    }

    /// A peer not reached at all, or (`Busy`) one that answered asking for a long wait.
    enum Down {
        Refused,
        Busy,
    }
    impl std::fmt::Display for Down {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(match self {
                Down::Refused => "refused",
                Down::Busy => "busy",
            })
        }
    }
    impl RetryHint for Down {
        fn retry_after(&self) -> Option<Duration> {
            matches!(self, Down::Busy).then_some(Duration::from_secs(40))
        }
        fn unreachable(&self) -> bool {
            matches!(self, Down::Refused)
        }
    }

    /// Attempts 0–3 fail quietly, growing the backoff; from attempt 4 on, each failure is
    /// followed 100 ms later by word from the peer. The wait after attempt 4 is cut short;
    /// attempt 5, started by that word, fails, and its wait is not; the one after 6 is again;
    /// attempt 8 gets an answer (asking for a wait), and its wait is kept; attempt 9 succeeds.
    #[tokio::test(start_paused = true)]
    async fn hearing_from_an_unreachable_peer_ends_a_backoff_but_not_two_in_a_row() {
        let peer = crate::identity::NodeKey::from_seed([7; 32]).id();
        let contacts = Contacts::new([peer]);
        let status = WorkerStatus::new("pull", "p").talking_to(&contacts, peer);
        let shutdown = CancellationToken::new();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (times, stop, word) = (calls.clone(), shutdown.clone(), contacts.clone());
        run_loop(
            &status,
            Cadence::Every(Duration::from_secs(3600)),
            shutdown,
            move || {
                let n = {
                    let mut times = times.lock().unwrap();
                    times.push(tokio::time::Instant::now());
                    times.len() - 1
                };
                if n >= 4 {
                    let word = word.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        word.heard(peer);
                    });
                }
                let stop = stop.clone();
                async move {
                    match n {
                        8 => Err(Down::Busy),
                        9 => {
                            stop.cancel();
                            Ok("up".to_owned())
                        }
                        _ => Err(Down::Refused),
                    }
                }
            },
        )
        .await;
        let times = calls.lock().unwrap();
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps.len(), 9, "{gaps:?}");
        let cut = |i: usize| gaps[i] == Duration::from_millis(100);
        // Waits of at least 0.5, 1, 2 and 4 s: nothing heard.
        assert!((0..4).all(|i| !cut(i)), "{gaps:?}");
        assert!(cut(4), "the wait after attempt 4 went on: {gaps:?}");
        assert!(!cut(5) && gaps[5] >= Duration::from_secs(16), "{gaps:?}");
        assert!(cut(6), "the wait after attempt 6 went on: {gaps:?}");
        assert!(!cut(7), "{gaps:?}");
        assert!(!cut(8), "the wait after an answer was cut: {gaps:?}");
        assert!(status.report().ok);
    }

    /// A loop's success is word from its peer for the other loops talking to it.
    #[tokio::test(start_paused = true)]
    async fn a_success_is_word_from_the_peer() {
        let peer = crate::identity::NodeKey::from_seed([7; 32]).id();
        let contacts = Contacts::new([peer]);
        let mut word = contacts.subscribe(peer).unwrap();
        word.borrow_and_update();
        let status = WorkerStatus::new("push", "p").talking_to(&contacts, peer);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        run_loop(
            &status,
            Cadence::Every(Duration::from_secs(1)),
            shutdown,
            move || {
                let stop = stop.clone();
                async move {
                    stop.cancel();
                    Ok::<_, Down>("up".to_owned())
                }
            },
        )
        .await;
        assert!(word.has_changed().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_target_backs_off_and_recovers() {
        let status = WorkerStatus::new("source", "kinto");
        let shutdown = CancellationToken::new();
        let calls = std::sync::Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let stop = shutdown.clone();
        let started = tokio::time::Instant::now();
        run_loop(
            &status,
            Cadence::Every(Duration::from_secs(10)),
            shutdown,
            move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let stop = stop.clone();
                async move {
                    match n {
                        0..=3 => Err("down"),
                        4 => Ok("up".to_owned()),
                        _ => {
                            stop.cancel();
                            Ok("up".to_owned())
                        }
                    }
                }
            },
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 6);
        let r = status.report();
        assert!(r.ok && r.consecutive_errors == 0 && r.last_error.as_deref() == Some("down"));
        // Four failures wait at least 0.5 + 1 + 2 + 4 s, then one 10 s interval.
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(17_500) && elapsed <= Duration::from_secs(26),
            "{elapsed:?}"
        );
    }
}
