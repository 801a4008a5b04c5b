//! Ingest: one pass over a Kinto server, turning every change since the last pass into entries
//! of this node's own feed.
//!
//! # How changes are found (the polling path)
//!
//! - **Containers** (`/buckets`, and per bucket `/collections` and `/groups`) are small lists.
//!   Each is asked with `If-None-Match` on its last ETag; when it changed, the full list is read
//!   and compared with the replica: a new or changed object (its `last_modified` differs) is
//!   fetched on its own to get its permissions, and an object no longer listed is deleted
//!   *together with everything below it*. Comparing full lists also catches what tombstones
//!   cannot show: a bucket's tombstone is invisible to most accounts, and deleting a bucket or
//!   collection drops its children without tombstones.
//! - **Records** are read with `_since=<cursor>` and `If-None-Match`, ascending by
//!   `last_modified`, page by page; tombstones (objects whose keys are exactly `id`,
//!   `last_modified` and `deleted: true`, and which a GET confirms are gone) become deletes. A collection that is new or changed
//!   since the last pass (which includes "deleted and recreated under the same id") is
//!   reconciled instead: its full record list is read (with `_since=0`, so that the tombstones
//!   Kinto keeps come too) and records no longer listed are deleted,
//!   so the replica ends with exactly the new contents. That obligation is stored, not kept in
//!   memory: the transaction that records a changed container also removes the cursors of the
//!   lists below it, and a list without a cursor is always reconciled.
//!
//! The polling path lives in `polling`, the history path in `history`; this module holds what
//! they share: the pass itself, the slot the daemon runs it through, and store access.
//!
//! # The history path
//!
//! When Kinto has the history plugin, each bucket whose history the account can fully read is
//! followed through it instead (module `history`): one request per bucket per pass when nothing
//! changed, and every object with its full permissions. Other buckets are polled as above.
//!
//! # Guarantees
//!
//! - Each page of changes and the cursor it moves commit in one transaction; a crash at any
//!   point resumes from the last committed page. The store drops no-op changes (a put equal to
//!   the live object), so re-reading a page appends nothing twice.
//! - Bodies are `{"data":<bytes Kinto sent>,"permissions":<bytes Kinto sent>}`. On the polling
//!   path, records carry `{"data":…}` only (Kinto's lists do not include permissions), and
//!   other objects the permissions Kinto shows the account (only those it is a writer of).
//! - A failed request aborts the pass before anything of its page is stored.
//!
//! Paths in the feed are Kinto object paths without the `/v1` prefix, e.g.
//! `/buckets/b/collections/c/records/r`. Cursors are named `kinto:<list path>`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::value::RawValue;

mod history;
mod journal;
mod order;
mod polling;

pub use journal::SOURCE_PATH;

use crate::config::SourceConfig;
use crate::feed::Op;
use crate::identity::NodeKey;
use crate::source::kinto::{KintoClient, KintoError};
use crate::store::{Change, CursorUpdate, Store, StoreError, StoreHandle};

pub use crate::config::DEFAULT_CONCURRENCY;

/// Why a pass failed. Nothing of the failing page was stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Talking to Kinto failed.
    #[error(transparent)]
    Kinto(#[from] KintoError),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Kinto sent something that is not a Kinto object.
    #[error("unexpected object in {list}: {what}")]
    Source {
        /// The list it came from.
        list: String,
        /// What is wrong.
        what: String,
    },
}

impl crate::backoff::RetryHint for IngestError {
    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            IngestError::Kinto(e) => e.retry_after(),
            _ => None,
        }
    }

    fn heals(&self) -> bool {
        match self {
            IngestError::Kinto(e) => e.heals(),
            IngestError::Store(e) => e.heals(),
            IngestError::Source { .. } => true,
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IngestReport {
    /// Entries appended to the feed.
    pub appended: u64,
    /// Lists that had changed (read in full or since their cursor).
    pub lists_changed: u64,
    /// Lists answered with 304 Not Modified.
    pub lists_unchanged: u64,
}

impl std::ops::AddAssign for IngestReport {
    fn add_assign(&mut self, other: IngestReport) {
        self.appended += other.appended;
        self.lists_changed += other.lists_changed;
        self.lists_unchanged += other.lists_unchanged;
    }
}

/// Follows one Kinto server into one node's feed.
pub struct Ingest {
    client: Arc<KintoClient>,
    store: StoreHandle,
    key: Arc<NodeKey>,
    concurrency: usize,
    /// The server's root answer while the journal is followed: a pass is then one request.
    /// Dropped on any failure, so that credentials and capabilities are read again.
    journal_info: Arc<Mutex<Option<crate::source::kinto::ServerInfo>>>,
    /// When the plugin last refused this account its journal (tried again after
    /// [`JOURNAL_RETRY`]).
    journal_refused: Arc<Mutex<Option<std::time::Instant>>>,
}

/// How long after the plugin refused the journal to this account it is asked again.
const JOURNAL_RETRY: std::time::Duration = std::time::Duration::from_secs(600);

/// The ingest of a running daemon, shared by its source loop and the admin endpoint: one pass
/// at a time. The Kinto client is built on first use and rebuilt after a credentials error, so
/// fixing the password file needs no restart.
#[derive(Clone)]
pub struct IngestSlot {
    current: Arc<tokio::sync::Mutex<Option<Ingest>>>,
    /// Held for each pass; shared with the slot a reloaded configuration makes.
    passes: Arc<tokio::sync::Mutex<()>>,
    source: SourceConfig,
    store: StoreHandle,
    key: Arc<NodeKey>,
}

impl IngestSlot {
    /// A slot for `source` into `key`'s feed in `store`.
    pub fn new(source: SourceConfig, store: StoreHandle, key: Arc<NodeKey>) -> IngestSlot {
        IngestSlot {
            current: Arc::default(),
            passes: Arc::default(),
            source,
            store,
            key,
        }
    }

    /// This slot's passes wait for those of every other slot given the same `passes`: two
    /// passes at once would each move the list cursors from what they read, and the feed
    /// could record a list going back. The daemon shares one across configuration reloads,
    /// during which a pass of the old configuration may still be ending.
    pub fn sharing_passes_with(mut self, passes: Arc<tokio::sync::Mutex<()>>) -> IngestSlot {
        self.passes = passes;
        self
    }

    /// The source this slot follows.
    pub fn source(&self) -> &SourceConfig {
        &self.source
    }

    /// Runs one pass, after the one in progress (if any). Waits first while Kinto's `Backoff`
    /// header asks clients to stay away.
    pub async fn run_pass(&self) -> Result<IngestReport, IngestError> {
        let _one_at_a_time = self.passes.lock().await;
        let mut current = self.current.lock().await;
        if current.is_none() {
            let client = Arc::new(KintoClient::new(&self.source)?);
            *current = Some(
                Ingest::new(client, self.store.clone(), self.key.clone())
                    .with_concurrency(self.source.concurrency),
            );
        }
        let ingest = current.as_ref().expect("just set");
        tokio::time::sleep(ingest.client().backoff_remaining()).await;
        let result = ingest.pass().await;
        if matches!(
            result,
            Err(IngestError::Kinto(
                KintoError::Unauthorized { .. } | KintoError::Credentials(_)
            ))
        ) {
            *current = None;
        }
        result
    }
}

/// Bodies from the history plugin: path → (the object's `last_modified`, feed body).
type HistoryBodies = HashMap<String, (i64, Vec<u8>)>;

/// How the polling path reads: in full (ignoring list cursors), and with bodies the history
/// plugin provided, keyed by path with the object's `last_modified` they belong to. It counts
/// the listed objects the history did not cover.
#[derive(Clone, Default)]
struct Walk {
    full: bool,
    bodies: Option<Arc<HistoryBodies>>,
    /// When the history was read (its ETag): objects written later are not misses, since
    /// following the history from there will bring them.
    history_read_at: i64,
    /// Listed objects (path, `last_modified`) whose version the history did not hold.
    misses: Arc<Mutex<Vec<(String, i64)>>>,
}

impl Walk {
    /// The history's body for `path`, if it is of this very version (a miss is counted
    /// otherwise, when there are history bodies at all).
    fn body_for(&self, path: &str, last_modified: i64) -> Option<&[u8]> {
        let bodies = self.bodies.as_ref()?;
        match bodies.get(path) {
            Some((lm, body)) if *lm == last_modified => Some(body),
            _ if last_modified > self.history_read_at => None,
            _ => {
                self.miss(path, last_modified);
                None
            }
        }
    }

    fn miss(&self, path: &str, last_modified: i64) {
        self.misses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((path.to_owned(), last_modified));
    }

    fn take_misses(&self) -> Vec<(String, i64)> {
        std::mem::take(&mut *self.misses.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The identifying fields of a listed object. Only `id` and `last_modified` are decoded: every
/// other member is kept as its raw bytes, so that no value (a number wider than any machine
/// type, as Kinto on PostgreSQL serves some) can make an object unreadable.
struct ItemHead {
    id: String,
    last_modified: i64,
    /// Whether `deleted` is `true`.
    deleted: bool,
    /// How many members other than `id`, `last_modified` and `deleted` it has.
    others: usize,
}

impl ItemHead {
    fn parse(list: &str, raw: &RawValue) -> Result<ItemHead, IngestError> {
        let bad = |what: String| IngestError::Source {
            list: list.to_owned(),
            what,
        };
        let members: HashMap<std::borrow::Cow<'_, str>, &RawValue> =
            serde_json::from_str(raw.get()).map_err(|e| bad(format!("{e}")))?;
        let id = members
            .get("id")
            .ok_or_else(|| bad("an object without id".into()))
            .and_then(|v| {
                serde_json::from_str::<String>(v.get())
                    .map_err(|e| bad(format!("id is not a string: {e}")))
            })?;
        let last_modified = members
            .get("last_modified")
            .ok_or_else(|| bad(format!("{id} has no last_modified")))
            .and_then(|v| {
                serde_json::from_str::<i64>(v.get())
                    .map_err(|e| bad(format!("last_modified of {id} is not an integer: {e}")))
            })?;
        let deleted = members.get("deleted").is_some_and(|v| v.get() == "true");
        let others = members.len() - 2 - usize::from(members.contains_key("deleted"));
        Ok(ItemHead {
            id,
            last_modified,
            deleted,
            others,
        })
    }

    /// Whether it has a tombstone's shape: exactly the keys `id`, `last_modified` and
    /// `deleted: true`. A live record may have a `deleted` field of its own, and one whose only
    /// field is `deleted: true` has this very shape: see [`Ingest::is_deleted`].
    fn looks_deleted(&self) -> bool {
        self.deleted && self.others == 0
    }
}

/// The body of a fetched object, split so that it can be stored in the feed's shape.
#[derive(Deserialize)]
struct ObjectBody<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow)]
    permissions: Option<&'a RawValue>,
}

impl Ingest {
    /// An ingest of `client`'s server into `key`'s feed in `store`.
    pub fn new(client: Arc<KintoClient>, store: StoreHandle, key: Arc<NodeKey>) -> Ingest {
        Ingest {
            client,
            store,
            key,
            concurrency: DEFAULT_CONCURRENCY,
            journal_info: Arc::default(),
            journal_refused: Arc::default(),
        }
    }

    /// Runs at most `n` requests at once (at least 1).
    pub fn with_concurrency(mut self, n: usize) -> Ingest {
        self.concurrency = n.max(1);
        self
    }

    /// The Kinto client (for its `Backoff` state).
    pub fn client(&self) -> &KintoClient {
        &self.client
    }

    /// Runs one pass: checks the credentials, then buckets, their groups and collections, and
    /// every collection's records.
    pub async fn pass(&self) -> Result<IngestReport, IngestError> {
        let cached = self
            .journal_info
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let info = match cached {
            Some(info) => info,
            None => self.client.server_info().await?,
        };
        let refused_lately = self
            .journal_refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < JOURNAL_RETRY);
        if let Some(plugin) = info
            .tandem
            .as_ref()
            .filter(|p| p.journal && !refused_lately)
        {
            let result = self.sync_journal(plugin).await;
            *self.journal_info.lock().unwrap_or_else(|e| e.into_inner()) =
                result.is_ok().then(|| info.clone());
            match result {
                // The account is not in kinto.tandem.principals: follow what it can read.
                Err(IngestError::Kinto(KintoError::Forbidden { .. })) => {
                    tracing::warn!(
                        user = %info.user_id,
                        "the server runs the kinto-tandem plugin but this account may not read its journal (kinto.tandem.principals); following the lists it can read instead"
                    );
                    *self
                        .journal_refused
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
                }
                result => return result,
            }
        }
        if self.cursor(journal::CURSOR).await?.is_some() {
            // The plugin went away: its position means nothing to the other paths, and a
            // plugin coming back must read everything again.
            tracing::info!("the kinto-tandem journal is gone; following the server's lists");
            self.commit(Vec::new(), [CursorUpdate::clear(journal::CURSOR)])
                .await?;
        }
        // With explicit_permissions off, Kinto's history logs only the first object of each
        // event (a batch of creates is one entry): it cannot be followed.
        let history = info.history && info.explicit_permissions;
        let mut report = self
            .sync_container_list("/buckets", &Walk::default())
            .await?;
        // One bucket's failure does not hold the others back; the pass still fails at the end.
        let mut failure = None;
        for bucket in self.live_children("/buckets").await? {
            match self.sync_bucket(&bucket, history).await {
                Ok(r) => report += r,
                Err(e) => {
                    tracing::warn!(bucket = %bucket, error = %e, "bucket not synchronized");
                    failure.get_or_insert(e);
                }
            }
        }
        let incomplete = self.with_store(|s| permissions_incomplete(s)).await?.len();
        metrics::gauge!(crate::telemetry::SOURCE_PERMISSIONS_INCOMPLETE).set(incomplete as f64);
        match failure {
            None => Ok(report),
            Some(e) => Err(e),
        }
    }

    /// One bucket, through its history if it can be followed, else through its lists.
    async fn sync_bucket(&self, bucket: &str, history: bool) -> Result<IngestReport, IngestError> {
        let mark = format!("kinto:{bucket}/{}", history::INCOMPLETE);
        let incomplete = match self.cursor(&mark).await? {
            // Marked a while ago: the history may cover the bucket by now (objects rewritten,
            // a change of ACL): try it again.
            Some(since) if history && history::retry_due(since) => {
                self.commit(Vec::new(), [CursorUpdate::clear(mark)]).await?;
                false
            }
            Some(_) => true,
            None => false,
        };
        if history && !incomplete {
            match self.sync_bucket_history(bucket).await {
                Ok(report) => return Ok(report),
                // The account cannot read this bucket's history: poll its lists instead, and
                // let the bucket listing record the bucket object again.
                Err(IngestError::Kinto(
                    KintoError::Forbidden { .. } | KintoError::Status { status: 404, .. },
                )) => {
                    tracing::debug!(bucket = %bucket, "history not readable, polling lists");
                    self.commit(
                        Vec::new(),
                        [CursorUpdate::clear(format!("kinto:{bucket}/history"))],
                    )
                    .await?;
                }
                Err(e) => return Err(e),
            }
        }
        self.sync_bucket_lists(bucket, &Walk::default()).await
    }

    /// Deletes for `path` and every object below it (children first).
    async fn deletes_below(&self, path: &str) -> Result<Vec<Change>, IngestError> {
        let mut paths = self
            .with_store({
                let prefix = format!("{path}/");
                let origin = self.key.id();
                move |s| s.paths_under(origin, &prefix)
            })
            .await?;
        paths.reverse();
        paths.push(path.to_owned());
        Ok(paths
            .into_iter()
            .map(|path| Change {
                op: Op::Delete,
                path,
                body: Vec::new(),
            })
            .collect())
    }

    /// Paths of the live direct children of `list` in the replica.
    async fn live_children(&self, list: &str) -> Result<Vec<String>, IngestError> {
        let (origin, list) = (self.key.id(), list.to_owned());
        self.with_store(move |s| s.children(origin, &list)).await
    }

    /// `data.last_modified` of the live object at `path`, if any.
    async fn stored_last_modified(&self, path: &str) -> Result<Option<i64>, IngestError> {
        let origin = self.key.id();
        let path = path.to_owned();
        let body = self.with_store(move |s| s.object(origin, &path)).await?;
        Ok(body.and_then(|b| {
            #[derive(Deserialize)]
            struct Data {
                data: Stamp,
            }
            #[derive(Deserialize)]
            struct Stamp {
                last_modified: i64,
            }
            serde_json::from_slice::<Data>(&b)
                .ok()
                .map(|d| d.data.last_modified)
        }))
    }

    async fn cursor(&self, name: &str) -> Result<Option<i64>, IngestError> {
        let name = name.to_owned();
        self.with_store(move |s| list_cursor(s, &name)).await
    }

    /// Appends `changes` (no-ops and restore markers dropped) and moves `cursor`, in one
    /// transaction.
    async fn commit(
        &self,
        mut changes: Vec<Change>,
        cursors: impl IntoIterator<Item = CursorUpdate>,
    ) -> Result<u64, IngestError> {
        changes.retain(|c| !is_restore_marker(&c.path));
        let cursors: Vec<CursorUpdate> = cursors.into_iter().collect();
        if changes.is_empty() && cursors.is_empty() {
            return Ok(0);
        }
        let key = self.key.clone();
        let (_, appended) = self
            .with_store(move |s| s.append_changes(&key, changes, &cursors))
            .await?;
        metrics::counter!(crate::telemetry::ENTRIES_APPENDED).increment(appended as u64);
        Ok(appended as u64)
    }

    /// Gives the puts at `data_only` (bodies made from data alone: the path reading them cannot
    /// see permissions) the permissions recorded for their object, if any. A path that cannot
    /// see permissions says nothing about them: it must not record "none" over what another
    /// path (the history, the journal, a restore) recorded. Unchanged data then appends nothing.
    async fn keep_recorded_permissions(
        &self,
        changes: &mut [Change],
        data_only: &[usize],
    ) -> Result<(), IngestError> {
        if data_only.is_empty() {
            return Ok(());
        }
        let paths: Vec<String> = data_only.iter().map(|&i| changes[i].path.clone()).collect();
        let origin = self.key.id();
        let stored: Vec<Option<Vec<u8>>> = self
            .with_store(move |s| paths.iter().map(|p| s.object(origin, p)).collect())
            .await?;
        for (&i, stored) in data_only.iter().zip(stored) {
            let Some(stored) = stored else { continue };
            let Ok(ObjectBody {
                permissions: Some(permissions),
                ..
            }) = serde_json::from_slice::<ObjectBody<'_>>(&stored)
            else {
                continue;
            };
            let Ok(new) = serde_json::from_slice::<ObjectBody<'_>>(&changes[i].body) else {
                continue;
            };
            changes[i].body = format!(
                "{{\"data\":{},\"permissions\":{}}}",
                new.data.get(),
                permissions.get()
            )
            .into_bytes();
        }
        Ok(())
    }

    /// Runs `f` on the store's writer.
    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, IngestError> {
        Ok(self.store.write(f).await?)
    }
}

impl ObjectBody<'_> {
    /// `{"data":…,"permissions":…}` from the parts, bytes kept.
    fn body(&self) -> Vec<u8> {
        let permissions = self.permissions.map_or("{}", RawValue::get);
        format!(
            "{{\"data\":{},\"permissions\":{}}}",
            order::data_bytes(self.data.get()),
            permissions
        )
        .into_bytes()
    }
}

/// The buckets followed without record permissions: their history did not cover them for the
/// account (marked `kinto:<bucket>/history-incomplete`).
pub fn permissions_incomplete(store: &Store) -> Result<Vec<String>, StoreError> {
    let suffix = format!("/{}", history::INCOMPLETE);
    Ok(store
        .cursor_names("kinto:/buckets/")?
        .into_iter()
        .filter_map(|name| {
            name.strip_prefix("kinto:")?
                .strip_suffix(&suffix)
                .map(str::to_owned)
        })
        .collect())
}

/// Whether `path` is the tombstone a restore ends each records list with
/// ([`crate::replicate::restore::RESTORE_MARKER`]): not the source's data, never recorded.
fn is_restore_marker(path: &str) -> bool {
    path.rsplit_once('/').is_some_and(|(list, id)| {
        id == crate::replicate::restore::RESTORE_MARKER && list.ends_with("/records")
    })
}

/// The list cursor `name` (a Kinto timestamp), if one is stored.
fn list_cursor(store: &Store, name: &str) -> Result<Option<i64>, StoreError> {
    Ok(store.cursor(name)?.and_then(|v| v.parse().ok()))
}

/// The feed body of an object known only by its data (a listed record, a tombstone, an
/// object whose permissions the account cannot see): `{"data":…}`, members in the order
/// both paths record (see [`order`]).
fn data_only_body(data: &str) -> Vec<u8> {
    format!("{{\"data\":{}}}", order::data_bytes(data)).into_bytes()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    use super::{ItemHead, ObjectBody, data_only_body};

    /// Any JSON number literal: integers of up to 400 digits, fractions, exponents far outside
    /// any machine type.
    fn number() -> impl Strategy<Value = String> {
        "-?(0|[1-9][0-9]{0,400})(\\.[0-9]{1,40})?([eE][+-]?[0-9]{1,4})?"
    }

    /// Any JSON string literal: arbitrary text as serde_json writes it, or with escapes of the
    /// kinds other encoders use (`\u00e9`, surrogate pairs, `\/`).
    fn string() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
            "[a-z]{0,5}".prop_map(|s| format!(r#""{s}\u00e9\ud83c\udfb5\/\u0000""#)),
        ]
    }

    proptest! {
        #[test]
        fn any_number_or_string_is_recorded_byte_for_byte(
            n in number(), s in string(), key in string(), lm in 0i64..i64::MAX,
        ) {
            let data = format!(r#"{{{key}:[{n},{s}],"n":{n},"s":{s},"id":"r1","last_modified":{lm}}}"#);
            let raw = RawValue::from_string(data.clone()).unwrap();
            let head = ItemHead::parse("list", &raw).unwrap();
            prop_assert!(!head.looks_deleted());
            prop_assert_eq!(head.id, "r1");
            prop_assert_eq!(head.last_modified, lm);
            // Already in list order: the recorded data is the served bytes.
            let body = String::from_utf8(data_only_body(&data)).unwrap();
            prop_assert_eq!(body, format!(r#"{{"data":{data}}}"#));
            // Through an object fetched on its own (or a journal or history entry).
            let object = format!(r#"{{"data":{data},"permissions":{{"read":[{s}]}}}}"#);
            let parts: ObjectBody<'_> = serde_json::from_str(&object).unwrap();
            prop_assert_eq!(String::from_utf8(parts.body()).unwrap(), object);
        }
    }
}
