//! The live mirror of a migration: the later entries of an origin that fall in a selection,
//! written into the Kinto server its buckets move to, as they reach this node.
//!
//! A migration starts with a restore of the selection at the origin's head (`tandem migrate
//! start`, [`record`] then notes it with the timestamp of every live object written). From
//! then on each [`Mirror::pass`] takes the entries after the applied seq, at most [`CHUNK`] at
//! a time, and makes the target hold what they hold: a put writes the object with its recorded
//! data, timestamp and permissions, a delete deletes it (with the recorded tombstone's
//! timestamp). The applied seq and the timestamps written move in one store transaction, after
//! the target acknowledged every write of the chunk.
//!
//! # Writing only over what the mirror wrote
//!
//! Every write is conditional on what the mirror last wrote at that path: `If-Match: "T"` on
//! the timestamp it expects, `If-None-Match: *` where it expects nothing live. Kinto keeps a
//! client's `last_modified` on an update when it is newer than the object's, which a later
//! entry's always is, so the target ends with the source's timestamps (see
//! `kinto-interop.md`). Anything else on the target (an object written, re-timed or deleted
//! there since) fails the precondition, and the migration stops, named by the object's path,
//! rather than overwrite it.
//!
//! # Crash safety
//!
//! A chunk written to the target but not committed here (a crash, a SIGKILL, a target that
//! went away in the middle) is written again from the same applied seq. The chunks after a
//! given seq only grow (more entries may have arrived), so an object the interrupted run wrote
//! holds the timestamp of one of the versions this chunk has for it: a precondition failing on
//! such a timestamp is the mirror's own write, and the write is retried on it (or found done,
//! when it is the chunk's last version). Nothing is written twice and nothing is skipped.
//!
//! # Within a chunk
//!
//! Only the last version of each object counts (the target ends the same). Deletes of live
//! objects go first, records before their collections before their buckets, and an object
//! whose bucket or collection the chunk deletes is left to that deletion (Kinto drops it with
//! its parent, as the source did). Then puts, buckets first, with the tombstones of objects
//! the target never held live (created and deleted within the chunk), replayed as a restore
//! replays them. Within a list, objects go in ascending timestamp, as a restore writes them.
//!
//! # Records lists and syncing clients
//!
//! Kinto sets a list's timestamp (its ETag) to the current time when a request first touches
//! the list, and a write at an older `last_modified` leaves it there. So a records list the
//! mirror writes into after the source did (one the restore touched before the source's later
//! writes, or one the mirror creates) can hold the source's records under an ETag newer than
//! all of them, where kinto.js takes a device whose cursor is the newest of them for one that
//! saw data the server lost (`ServerWasFlushedError`: `_since` empty under a newer ETag). After
//! each chunk, every records list it wrote that is in that state gets what the restore gives
//! each list it writes: the marker tombstone ([`restore::RESTORE_MARKER`]) one millisecond
//! after the newest timestamp the chunk wrote there, so that a device whose cursor is at or
//! before it gets a non-empty answer (a tombstone of an unknown id, which it skips) and syncs
//! on. A list whose ETag is the newest timestamp written needs nothing, and gets nothing.
//!
//! # Limits
//!
//! Writes go through Kinto's batch endpoint, not the kinto-tandem plugin's restore endpoint
//! (which creates objects but does not update them): the target must store permissions as sent
//! (`kinto.explicit_permissions = false`), as a restore without the plugin needs. A bucket
//! brought only as the parent of chosen collections is the target's, and is not mirrored. A
//! delete the source recorded without a tombstone (an object found gone) gets a fresh
//! timestamp on the target. A later change on the source at the marker's timestamp (one
//! millisecond after the newest of a chunk, which the target's list timestamp was above) meets
//! the marker there, as one meets the restore's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::config::{Secret, SourceAuth, SourceConfig};
use crate::feed::{Op, Seq};
use crate::identity::NodeId;
use crate::replicate::restore::{self, Precondition, RestoreError};
use crate::replicate::select::{Selection, SelectionError};
use crate::source::kinto::{KintoClient, KintoError, ListResult, ListTarget, SubAnswer};
use crate::store::{Lock, Migration, StoreError, StoreHandle};

/// Entries applied, and committed, at a time.
pub const CHUNK: usize = 500;

/// Why a pass could not go on. A migration stopped because its target was written is not an
/// error of the pass: it is recorded, with its reason, in the store.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The target could not be written (unreachable, busy, credentials refused).
    #[error("migration {id} to {target}: {source}")]
    Kinto {
        /// The migration.
        id: u64,
        /// Its target.
        target: String,
        /// What failed.
        #[source]
        source: KintoError,
    },
    /// A recorded selection no longer parses (an edited store).
    #[error("migration {id}: {source}")]
    Selection {
        /// The migration.
        id: u64,
        /// What is wrong.
        #[source]
        source: SelectionError,
    },
    /// The state to start from is not what the selection needs.
    #[error(transparent)]
    Restore(#[from] RestoreError),
}

impl crate::backoff::RetryHint for MirrorError {
    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            MirrorError::Kinto { source, .. } => source.retry_after(),
            _ => None,
        }
    }

    fn heals(&self) -> bool {
        match self {
            MirrorError::Store(e) => e.heals(),
            MirrorError::Kinto { source, .. } => source.heals(),
            MirrorError::Selection { .. } | MirrorError::Restore(_) => false,
        }
    }
}

/// Where a migration's password is, as recorded: `file:PATH` or `env:VAR`.
pub fn credentials_ref(secret: &Secret) -> String {
    match secret {
        Secret::File(path) => format!("file:{}", path.display()),
        Secret::Env(var) => format!("env:{var}"),
    }
}

/// The client that writes a migration's target.
fn client(migration: &Migration) -> Result<KintoClient, KintoError> {
    let password = match migration.credentials.split_once(':') {
        Some(("file", path)) => Secret::File(path.into()),
        Some(("env", var)) => Secret::Env(var.to_owned()),
        _ => {
            return Err(KintoError::Credentials(format!(
                "migration {}: unknown credentials reference {:?}",
                migration.id, migration.credentials
            )));
        }
    };
    let url = url::Url::parse(&migration.target).map_err(|e| {
        KintoError::Credentials(format!(
            "migration {}: target {:?} is not a URL: {e}",
            migration.id, migration.target
        ))
    })?;
    KintoClient::new(&SourceConfig {
        url: crate::config::kinto_root(url),
        auth: SourceAuth::Basic {
            user: migration.user.clone(),
            password,
        },
        poll: crate::config::DEFAULT_POLL,
        concurrency: 1,
    })
}

/// A new migration, as `tandem migrate start` asks for it once the selection is restored at
/// `seq`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewMigration {
    /// The origin.
    pub origin: NodeId,
    /// Buckets chosen whole.
    pub buckets: Vec<String>,
    /// Collections chosen, `bucket/collection`.
    pub collections: Vec<String>,
    /// The target's root URL.
    pub target: String,
    /// The account that writes there.
    pub user: String,
    /// Where its password is ([`credentials_ref`]).
    pub credentials: String,
    /// The seq the selection was restored at.
    pub seq: u64,
}

/// Records `new` (its selection restored at `new.seq`): the migration mirrors from the next
/// entry on, expecting on the target the timestamps the restore wrote. Returns its id.
pub async fn record(store: &StoreHandle, new: NewMigration) -> Result<u64, MirrorError> {
    let selection = Selection::parse(&new.buckets, &new.collections)
        .map_err(|source| MirrorError::Selection { id: 0, source })?;
    let (origin, seq) = (new.origin, Seq(new.seq));
    let state = store
        .read(move |s| s.state_for_restore(origin, seq))
        .await?;
    let state = restore::select(state, &selection)?;
    let mut objects = Vec::new();
    for item in state {
        // tandem's own paths (the source's description, moved statements, a sealed feed's
        // readers statement) are about the feed, never written to the target.
        if item.deleted
            || crate::replicate::moves::is_tandem_path(&item.path)
            || selection.is_parent_only(&item.path)
        {
            continue;
        }
        let stamp = restore::data_stamp(&item.body).map_err(|what| RestoreError::Unrestorable {
            path: item.path.clone(),
            what,
        })?;
        objects.push((item.path, stamp));
    }
    let migration = Migration {
        id: 0,
        origin: new.origin,
        buckets: new.buckets,
        collections: new.collections,
        target: new.target,
        user: new.user,
        credentials: new.credentials,
        applied_seq: new.seq,
        stopped: None,
        created_at: crate::store::now_ms(),
        switch: None,
    };
    Ok(store
        .write(move |s| s.add_migration(&migration, &objects))
        .await?)
}

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MirrorReport {
    /// Migrations still mirroring.
    pub mirroring: usize,
    /// Entries applied (chosen or not) by all of them.
    pub entries: u64,
    /// Objects written or deleted on targets.
    pub written: u64,
    /// Migrations this pass stopped.
    pub stopped: usize,
}

/// Runs the mirrors of the store's migrations.
#[derive(Clone)]
pub struct Mirror {
    store: StoreHandle,
}

impl Mirror {
    /// A mirror over `store`.
    pub fn new(store: StoreHandle) -> Mirror {
        Mirror { store }
    }

    /// Brings every migration that still mirrors up to its origin's head. A migration whose
    /// target cannot be written now does not hold back the others; the first such failure is
    /// returned once all were tried.
    pub async fn pass(&self) -> Result<MirrorReport, MirrorError> {
        let migrations = self.store.read(|s| s.migrations()).await?;
        let mut report = MirrorReport::default();
        let mut failed = None;
        for migration in migrations.into_iter().filter(Migration::mirrors) {
            match self.catch_up(&migration, &mut report).await {
                Ok(()) => {}
                Err(e) if failed.is_none() => failed = Some(e),
                Err(e) => {
                    tracing::warn!(migration = migration.id, error = %e, "mirror failed, will retry")
                }
            }
        }
        failed.map_or(Ok(report), Err)
    }

    async fn catch_up(
        &self,
        migration: &Migration,
        report: &mut MirrorReport,
    ) -> Result<(), MirrorError> {
        let id = migration.id;
        let kinto = |source: KintoError| MirrorError::Kinto {
            id,
            target: migration.target.clone(),
            source,
        };
        let selection = Selection::parse(&migration.buckets, &migration.collections)
            .map_err(|source| MirrorError::Selection { id, source })?;
        let origin = migration.origin;
        let mut applied = migration.applied_seq;
        let mut target: Option<(Arc<KintoClient>, usize)> = None;
        let locks: HashMap<String, Lock> = self
            .store
            .read(move |s| s.migration_locks(id))
            .await?
            .into_iter()
            .map(|l| (l.path.clone(), l))
            .collect();
        if locks.values().any(|l| l.locked_stamp.is_none()) {
            // An interrupted `migrate finish` sent locks whose answers it did not record:
            // until it runs again and confirms them, their versions cannot be told apart.
            tracing::info!(
                migration = id,
                "waiting for `tandem migrate finish` to confirm the old server's locks"
            );
            report.mirroring += 1;
            return Ok(());
        }
        loop {
            let entries = self
                .store
                .read(move |s| s.plain_entries_after(origin, Seq(applied), CHUNK))
                .await?;
            let Some(last) = entries.last().map(|e| e.seq.0) else {
                break;
            };
            let mut changes = Vec::new();
            for entry in &entries {
                let entry =
                    crate::feed::decode_stored_entry(&entry.bytes).map_err(StoreError::from)?;
                if !selection.includes(entry.path) || selection.is_parent_only(entry.path) {
                    continue;
                }
                let body = match (entry.op, locks.get(entry.path)) {
                    (Op::Put, Some(lock)) => match unlocked(entry.body, lock) {
                        Some(body) => body,
                        // The switch's own change of the old copy: not the target's.
                        None => continue,
                    },
                    _ => entry.body.to_vec(),
                };
                changes.push((entry.op, entry.path.to_owned(), body));
            }
            let plan = Plan::new(changes).map_err(|(path, what)| {
                MirrorError::Restore(RestoreError::Unrestorable { path, what })
            })?;
            let written = if plan.objects.is_empty() {
                Ok(Vec::new())
            } else {
                if target.is_none() {
                    let client = Arc::new(client(migration).map_err(kinto)?);
                    let info = client.server_info().await.map_err(kinto)?;
                    if info.explicit_permissions {
                        tracing::warn!(
                            migration = id,
                            target = %migration.target,
                            "the target adds the mirror's account to the write permissions of every object it writes (kinto.explicit_permissions is true): permissions will not be exactly the recorded ones"
                        );
                    }
                    target = Some((client, restore::batch_max(&info)));
                }
                let (client, batch_max) = target.as_ref().expect("connected");
                let paths: Vec<String> = plan.objects.iter().map(|o| o.path.clone()).collect();
                let before = self
                    .store
                    .read(move |s| s.migration_stamps(id, &paths))
                    .await?;
                plan.apply(client, *batch_max, &before)
                    .await
                    .map_err(kinto)?
            };
            match written {
                Ok(written) => {
                    let n = written.len() as u64;
                    let from = applied;
                    let moved = self
                        .store
                        .write(move |s| s.advance_migration(id, from, last, &written))
                        .await?;
                    if !moved {
                        // Stopped or moved meanwhile by someone else: read it again next pass.
                        return Ok(());
                    }
                    report.entries += last - applied;
                    report.written += n;
                    applied = last;
                }
                Err(reason) => {
                    tracing::error!(
                        migration = id,
                        target = %migration.target,
                        %reason,
                        "migration stopped: the target was written outside the mirror; nothing there was overwritten"
                    );
                    let why = reason.clone();
                    self.store
                        .write(move |s| s.stop_migration(id, &why))
                        .await?;
                    report.stopped += 1;
                    return Ok(());
                }
            }
        }
        report.mirroring += 1;
        Ok(())
    }
}

/// What the target gets of a put the ingest recorded for an object the switch locked on the
/// old server (see [`crate::replicate::moves`]): nothing for the lock itself (the version at
/// the timestamp the old server gave it); a version from before the lock as it is; a later one
/// with the permissions from before the lock, which the object keeps on the target.
fn unlocked(body: &[u8], lock: &Lock) -> Option<Vec<u8>> {
    let stamp = restore::data_stamp(body).ok();
    match (lock.locked_stamp, stamp) {
        (Some(locked), Some(stamp)) if stamp == locked => None,
        (Some(locked), Some(stamp)) if stamp < locked => Some(body.to_vec()),
        _ => Some(with_permissions(body, &lock.permissions).unwrap_or_else(|| body.to_vec())),
    }
}

/// `body` (`{"data": …, "permissions": …}`) with `permissions` instead of its own; the data's
/// bytes are kept as they are. None if `body` is not such an object.
fn with_permissions(body: &[u8], permissions: &str) -> Option<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let parsed: Body<'_> = serde_json::from_slice(body).ok()?;
    let permissions: &RawValue = serde_json::from_str(permissions).ok()?;
    let mut out = Vec::with_capacity(body.len() + permissions.get().len());
    out.extend_from_slice(b"{\"data\":");
    out.extend_from_slice(parsed.data.get().as_bytes());
    out.extend_from_slice(b",\"permissions\":");
    out.extend_from_slice(permissions.get().as_bytes());
    out.push(b'}');
    Some(out)
}

/// The last version of one object in a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Version {
    /// Live, with this body and timestamp.
    Put { body: Vec<u8>, stamp: i64 },
    /// Deleted, with the tombstone's timestamp when the source kept one.
    Delete { stamp: Option<i64> },
}

/// One object a chunk changes.
#[derive(Debug, Clone)]
struct Object {
    path: String,
    /// 1 for a bucket, 2 for a group or collection, 3 for a record.
    depth: usize,
    last: Version,
    /// The timestamps of every live version the chunk has for it: what an interrupted run of
    /// this chunk may have left on the target.
    stamps: HashSet<i64>,
    /// Whether the chunk deletes it at some point.
    deleted: bool,
}

impl Object {
    fn stamp(&self) -> i64 {
        match self.last {
            Version::Put { stamp, .. } => stamp,
            Version::Delete { stamp } => stamp.unwrap_or(0),
        }
    }

    fn list(&self) -> &str {
        self.path.rsplit_once('/').map_or("", |(list, _)| list)
    }
}

/// The objects a chunk changes, each at its last version.
#[derive(Debug)]
struct Plan {
    objects: Vec<Object>,
}

/// What one attempt at writing one object came to.
#[derive(Debug, PartialEq, Eq)]
enum Judged {
    /// On the target as the chunk has it: live at this timestamp, or gone.
    Done(Option<i64>),
    /// An earlier run of this chunk wrote it: try again on this condition.
    Retry(Precondition),
    /// Written outside the mirror (or refused): stop, for this reason.
    Stop(String),
}

impl Plan {
    /// Coalesces `(op, path, body)` changes (in seq order) into last versions; an error names a
    /// path whose body holds no timestamp.
    fn new(changes: Vec<(Op, String, Vec<u8>)>) -> Result<Plan, (String, String)> {
        let mut objects: Vec<Object> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        for (op, path, body) in changes {
            let depth = path.trim_start_matches('/').split('/').count() / 2;
            let last = match op {
                Op::Put => Version::Put {
                    stamp: restore::data_stamp(&body).map_err(|e| (path.clone(), e))?,
                    body,
                },
                Op::Delete if body.is_empty() => Version::Delete { stamp: None },
                Op::Delete => Version::Delete {
                    stamp: Some(restore::data_stamp(&body).map_err(|e| (path.clone(), e))?),
                },
            };
            let i = *at.entry(path.clone()).or_insert_with(|| {
                objects.push(Object {
                    path,
                    depth,
                    last: last.clone(),
                    stamps: HashSet::new(),
                    deleted: false,
                });
                objects.len() - 1
            });
            let object = &mut objects[i];
            match &last {
                Version::Put { stamp, .. } => {
                    object.stamps.insert(*stamp);
                }
                Version::Delete { .. } => object.deleted = true,
            }
            object.last = last;
        }
        Ok(Plan { objects })
    }

    /// Writes the plan into the target, given what the mirror last wrote (`before`: path →
    /// timestamp of the live object). `Ok(Ok(written))` when everything is there, with what
    /// each path now holds; `Ok(Err(reason))` when the target was written outside the mirror;
    /// `Err` when the target cannot be reached now (nothing is known, try again).
    async fn apply(
        self,
        client: &KintoClient,
        batch_max: usize,
        before: &HashMap<String, i64>,
    ) -> Result<Result<Vec<(String, Option<i64>)>, String>, KintoError> {
        let mut written = Vec::new();
        let containers: Vec<String> = self
            .objects
            .iter()
            .filter(|o| o.depth < 3 && matches!(o.last, Version::Delete { .. }))
            .map(|o| format!("{}/", o.path))
            .collect();
        let mut phases: Vec<Vec<(&Object, Precondition)>> = vec![Vec::new(); 6];
        for object in &self.objects {
            let expected = before.get(&object.path).copied();
            match &object.last {
                Version::Delete { stamp } => {
                    // Left to the deletion of its bucket or collection.
                    let below_deleted = containers.iter().any(|c| object.path.starts_with(c));
                    match expected {
                        _ if below_deleted => written.push((object.path.clone(), None)),
                        Some(at) => phases[3 - object.depth.clamp(1, 3)]
                            .push((object, Precondition::At(at))),
                        // A tombstone where nothing live was: replayed with the puts, once
                        // its bucket or collection is there.
                        None if stamp.is_some() => phases[2 + object.depth.clamp(1, 3)]
                            .push((object, Precondition::Absent)),
                        None => written.push((object.path.clone(), None)),
                    }
                }
                Version::Put { .. } => {
                    let pre = expected.map_or(Precondition::Absent, Precondition::At);
                    phases[2 + object.depth.clamp(1, 3)].push((object, pre));
                }
            }
        }
        for mut attempts in phases {
            attempts.sort_by(|(a, _), (b, _)| (a.list(), a.stamp()).cmp(&(b.list(), b.stamp())));
            for round in 0..2 {
                if attempts.is_empty() {
                    break;
                }
                let answers = send(client, &attempts, batch_max).await?;
                let mut again = Vec::new();
                for ((object, pre), answers) in attempts.into_iter().zip(answers) {
                    match judge(object, pre, &answers, before.get(&object.path).copied()) {
                        Judged::Done(now) => written.push((object.path.clone(), now)),
                        Judged::Retry(pre) if round == 0 => again.push((object, pre)),
                        Judged::Retry(_) => {
                            return Ok(Err(format!(
                                "{} changed on the target while the mirror wrote it",
                                object.path
                            )));
                        }
                        Judged::Stop(reason) => return Ok(Err(reason)),
                    }
                }
                attempts = again;
            }
        }
        for (list, newest) in self.records_lists(&containers) {
            if let Err(reason) = mark(client, list, newest).await? {
                return Ok(Err(reason));
            }
        }
        Ok(Ok(written))
    }

    /// The records lists the plan writes the source's timestamps into, each with the newest
    /// of them (see "Records lists and syncing clients"), sorted; those below a bucket or
    /// collection the plan deletes (`containers`, each ending with `/`) are gone with it.
    fn records_lists(&self, containers: &[String]) -> Vec<(&str, i64)> {
        let mut newest: HashMap<&str, i64> = HashMap::new();
        for object in &self.objects {
            let stamp = match object.last {
                Version::Put { stamp, .. } | Version::Delete { stamp: Some(stamp) } => stamp,
                // A fresh timestamp on the target: newer than the list's.
                Version::Delete { stamp: None } => continue,
            };
            if object.depth == 3 && !containers.iter().any(|c| object.path.starts_with(c)) {
                let at = newest.entry(object.list()).or_insert(stamp);
                *at = (*at).max(stamp);
            }
        }
        let mut lists: Vec<(&str, i64)> = newest.into_iter().collect();
        lists.sort_unstable();
        lists
    }
}

/// Ends the records list `list`, whose newest timestamp written is `newest`, with the marker
/// tombstone one millisecond after it, when the list's ETag is newer and nothing is listed
/// after `newest` (see "Records lists and syncing clients"). `Ok(Err(reason))` when the target
/// refuses it (a live object at the marker's reserved id was written there).
async fn mark(
    client: &KintoClient,
    list: &str,
    newest: i64,
) -> Result<Result<(), String>, KintoError> {
    let path = restore::encoded_path(list);
    let listed = ListTarget::Path {
        path: &path,
        since: Some(newest),
        limit: Some(1),
    };
    let ListResult::Page(page) = client.list(listed, None).await? else {
        return Ok(Ok(()));
    };
    if !page.items.is_empty() || page.etag.is_none_or(|etag| etag <= newest) {
        return Ok(Ok(()));
    }
    let marker = Object {
        path: format!("{list}/{}", restore::RESTORE_MARKER),
        depth: 3,
        last: Version::Delete {
            stamp: Some(newest + 1),
        },
        stamps: HashSet::new(),
        deleted: true,
    };
    // A placeholder where no live object is, deleted at the marker's timestamp (2 requests).
    let answers = send(client, &[(&marker, Precondition::Absent)], 2).await?;
    match judge(&marker, Precondition::Absent, &answers[0], None) {
        Judged::Done(_) => Ok(Ok(())),
        Judged::Stop(reason) => Ok(Err(reason)),
        // Only a stamp the chunk wrote is retried; the marker has none.
        Judged::Retry(_) => Ok(Err(format!(
            "{}: the target did not take the marker tombstone",
            marker.path
        ))),
    }
}

/// The sub-requests of one attempt.
fn requests(object: &Object, pre: Precondition) -> Vec<Box<RawValue>> {
    match (&object.last, pre) {
        (Version::Put { body, .. }, pre) => vec![restore::put_request(&object.path, body, pre)],
        (Version::Delete { stamp }, Precondition::At(at)) => {
            vec![restore::delete_request(&object.path, *stamp, at)]
        }
        (Version::Delete { stamp }, Precondition::Absent) => {
            let id = object.path.rsplit('/').next().unwrap_or_default();
            vec![
                restore::placeholder_request(&object.path, id),
                restore::delete_request(&object.path, *stamp, 1),
            ]
        }
    }
}

/// Sends the attempts in batches of at most `batch_max` sub-requests (an attempt's requests
/// stay in one batch, in order) and returns each attempt's answers. A sub-request the target
/// could not serve now (5xx, 429) fails the whole call: it is tried again later.
async fn send(
    client: &KintoClient,
    attempts: &[(&Object, Precondition)],
    batch_max: usize,
) -> Result<Vec<Vec<SubAnswer>>, KintoError> {
    let mut out = Vec::with_capacity(attempts.len());
    let mut batch: Vec<Box<RawValue>> = Vec::new();
    let mut sizes: Vec<usize> = Vec::new();
    let flush = |batch: &mut Vec<Box<RawValue>>, sizes: &mut Vec<usize>| {
        (std::mem::take(batch), std::mem::take(sizes))
    };
    let mut pending = Vec::new();
    for (object, pre) in attempts {
        let reqs = requests(object, *pre);
        if batch.len() + reqs.len() > batch_max && !batch.is_empty() {
            pending.push(flush(&mut batch, &mut sizes));
        }
        sizes.push(reqs.len());
        batch.extend(reqs);
    }
    if !batch.is_empty() {
        pending.push(flush(&mut batch, &mut sizes));
    }
    for (requests, sizes) in pending {
        let answers = client.batch(&requests).await?;
        if let Some(busy) = answers.iter().find(|a| a.status >= 500 || a.status == 429) {
            return Err(KintoError::Unavailable {
                url: client
                    .root()
                    .join("batch")
                    .unwrap_or_else(|_| client.root().clone()),
                status: busy.status,
                retry_after: None,
            });
        }
        let mut answers = answers.into_iter();
        for n in sizes {
            out.push(answers.by_ref().take(n).collect());
        }
    }
    Ok(out)
}

/// What the answers to one attempt mean; `expected` is what the mirror last wrote there.
fn judge(
    object: &Object,
    pre: Precondition,
    answers: &[SubAnswer],
    expected: Option<i64>,
) -> Judged {
    let path = &object.path;
    // The answer that decides: a put's, a delete's (the last of a tombstone's replay).
    let Some(answer) = answers.last() else {
        return Judged::Stop(format!("{path}: the target answered nothing"));
    };
    let written_elsewhere = |found: Option<i64>| {
        let expected = match expected {
            Some(t) => format!("last_modified {t}"),
            None => "no live object".to_owned(),
        };
        let found = match found {
            Some(t) => format!("last_modified {t}"),
            None => "no live object".to_owned(),
        };
        Judged::Stop(format!(
            "{path} was changed on the target outside the mirror (found {found}, expected {expected})"
        ))
    };
    let refused = || {
        Judged::Stop(format!(
            "the target refused to write {path} (HTTP {}): {}",
            answer.status, answer.message
        ))
    };
    match &object.last {
        Version::Put { stamp, .. } => match (answer.status, answer.existing_last_modified) {
            (200..=299, _) => match answer.last_modified {
                Some(stored) if stored == *stamp => Judged::Done(Some(*stamp)),
                stored => Judged::Stop(format!(
                    "the target stored {path} at last_modified {} instead of {stamp}: its list holds a newer timestamp",
                    stored.map_or("?".to_owned(), |s| s.to_string())
                )),
            },
            (412, Some(found)) if found == *stamp => Judged::Done(Some(*stamp)),
            (412, Some(found))
                if (object.stamps.contains(&found) || Some(found) == expected)
                    && pre != Precondition::At(found) =>
            {
                Judged::Retry(Precondition::At(found))
            }
            (412, None) if object.deleted && pre != Precondition::Absent => {
                Judged::Retry(Precondition::Absent)
            }
            (412, found) => written_elsewhere(found),
            _ => refused(),
        },
        Version::Delete { .. } => match (answer.status, answer.existing_last_modified) {
            (200..=299, _) => Judged::Done(None),
            // Gone already (with its bucket or collection, or by an earlier run).
            (404 | 403, _) | (412, None) => Judged::Done(None),
            (412, Some(found))
                if object.stamps.contains(&found) && pre != Precondition::At(found) =>
            {
                Judged::Retry(Precondition::At(found))
            }
            (412, found) => written_elsewhere(found),
            _ => refused(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(path: &str, stamp: i64) -> (Op, String, Vec<u8>) {
        let id = path.rsplit('/').next().unwrap();
        (
            Op::Put,
            path.to_owned(),
            format!(r#"{{"data":{{"id":"{id}","last_modified":{stamp}}},"permissions":{{}}}}"#)
                .into_bytes(),
        )
    }

    fn delete(path: &str, stamp: Option<i64>) -> (Op, String, Vec<u8>) {
        let id = path.rsplit('/').next().unwrap();
        let body = stamp.map_or(Vec::new(), |t| {
            format!(r#"{{"data":{{"id":"{id}","last_modified":{t},"deleted":true}}}}"#).into_bytes()
        });
        (Op::Delete, path.to_owned(), body)
    }

    fn answer(status: u16, last_modified: Option<i64>, existing: Option<i64>) -> SubAnswer {
        SubAnswer {
            status,
            last_modified,
            existing_last_modified: existing,
            message: String::new(),
        }
    }

    #[test]
    fn a_chunk_keeps_the_last_version_of_each_object_and_every_stamp_it_had() {
        let plan = Plan::new(vec![
            put("/buckets/a/collections/c/records/r", 10),
            put("/buckets/a/collections/c/records/s", 11),
            put("/buckets/a/collections/c/records/r", 12),
            delete("/buckets/a/collections/c/records/s", Some(13)),
            delete("/buckets/a/collections/c/records/t", None),
        ])
        .unwrap();
        assert_eq!(plan.objects.len(), 3);
        let r = &plan.objects[0];
        assert_eq!(r.depth, 3);
        assert_eq!(r.stamps, HashSet::from([10, 12]));
        assert!(matches!(r.last, Version::Put { stamp: 12, .. }));
        assert!(!r.deleted);
        let s = &plan.objects[1];
        assert_eq!(s.last, Version::Delete { stamp: Some(13) });
        assert!(s.deleted);
        assert_eq!(plan.objects[2].last, Version::Delete { stamp: None });
        assert_eq!(r.list(), "/buckets/a/collections/c/records");
        assert!(Plan::new(vec![(Op::Put, "/buckets/a".into(), b"{}".to_vec())]).is_err());
    }

    #[test]
    fn an_answer_is_the_mirrors_own_write_only_at_a_stamp_it_wrote() {
        let plan = Plan::new(vec![
            put("/buckets/a/collections/c/records/r", 10),
            put("/buckets/a/collections/c/records/r", 12),
        ])
        .unwrap();
        let r = &plan.objects[0];
        let at = Precondition::At(5);
        assert_eq!(
            judge(r, at, &[answer(200, Some(12), None)], Some(5)),
            Judged::Done(Some(12))
        );
        // Kinto moved the timestamp: stop, never a silent re-time.
        assert!(matches!(
            judge(r, at, &[answer(200, Some(13), None)], Some(5)),
            Judged::Stop(_)
        ));
        // Already written by an interrupted run: done, or written again over its own write.
        assert_eq!(
            judge(r, at, &[answer(412, None, Some(12))], Some(5)),
            Judged::Done(Some(12))
        );
        assert_eq!(
            judge(r, at, &[answer(412, None, Some(10))], Some(5)),
            Judged::Retry(Precondition::At(10))
        );
        assert_eq!(
            judge(r, Precondition::At(10), &[answer(412, None, Some(10))], Some(5)),
            Judged::Stop(
                "/buckets/a/collections/c/records/r was changed on the target outside the mirror (found last_modified 10, expected last_modified 5)"
                    .into()
            )
        );
        // Someone else's write, or someone else's delete.
        let Judged::Stop(reason) = judge(r, at, &[answer(412, None, Some(7))], Some(5)) else {
            panic!()
        };
        assert!(
            reason.starts_with("/buckets/a/collections/c/records/r was changed on the target"),
            "{reason}"
        );
        assert!(matches!(
            judge(r, at, &[answer(412, None, None)], Some(5)),
            Judged::Stop(_)
        ));
        assert!(matches!(
            judge(r, at, &[answer(403, None, None)], Some(5)),
            Judged::Stop(_)
        ));

        // A delete: gone is done; a live object at a stamp it never wrote stops it.
        let plan = Plan::new(vec![
            put("/buckets/a/collections/c/records/r", 10),
            delete("/buckets/a/collections/c/records/r", Some(11)),
        ])
        .unwrap();
        let r = &plan.objects[0];
        assert_eq!(
            judge(r, at, &[answer(412, None, None)], Some(5)),
            Judged::Done(None)
        );
        assert_eq!(
            judge(r, at, &[answer(412, None, Some(10))], Some(5)),
            Judged::Retry(Precondition::At(10))
        );
        assert!(matches!(
            judge(r, at, &[answer(412, None, Some(8))], Some(5)),
            Judged::Stop(_)
        ));
    }

    #[test]
    fn the_lists_to_mark_are_the_records_lists_written_with_their_newest_stamp() {
        let plan = Plan::new(vec![
            put("/buckets/a/collections/c/records/r", 10),
            put("/buckets/a/collections/c/records/s", 14),
            put("/buckets/a/collections/c/records/r", 12),
            delete("/buckets/a/collections/d/records/t", Some(20)),
            delete("/buckets/a/collections/d/records/u", None),
            delete("/buckets/a/collections/e/records/v", None),
            put("/buckets/a/collections/gone/records/w", 30),
            put("/buckets/a/collections/f", 40),
        ])
        .unwrap();
        let containers = vec!["/buckets/a/collections/gone/".to_owned()];
        assert_eq!(
            plan.records_lists(&containers),
            [
                ("/buckets/a/collections/c/records", 14),
                ("/buckets/a/collections/d/records", 20),
            ]
        );
    }

    #[test]
    fn attempts_are_conditional_on_what_the_mirror_wrote() {
        let plan = Plan::new(vec![
            put("/buckets/a/collections/c/records/r", 10),
            delete("/buckets/a/collections/c/records/s", Some(11)),
        ])
        .unwrap();
        let put = requests(&plan.objects[0], Precondition::At(7));
        assert!(put[0].get().contains(r#""If-Match":"\"7\"""#), "{}", put[0]);
        let put = requests(&plan.objects[0], Precondition::Absent);
        assert!(
            put[0].get().contains(r#""If-None-Match":"*""#),
            "{}",
            put[0]
        );
        let delete = requests(&plan.objects[1], Precondition::At(9));
        assert_eq!(delete.len(), 1);
        assert!(
            delete[0].get().contains("s?last_modified=11") && delete[0].get().contains(r#"\"9\""#),
            "{}",
            delete[0]
        );
        assert_eq!(requests(&plan.objects[1], Precondition::Absent).len(), 2);
    }
}
