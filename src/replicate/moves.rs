//! The switch at the end of a migration (`tandem migrate finish` and `abort`), and the moved
//! statements it leaves in the origin's feed.
//!
//! # Finish
//!
//! [`Switcher::finish`] runs on the node whose own origin the migration mirrors (the node that
//! follows the old server): only that node signs its feed, and only it knows the old server.
//!
//! 1. An ingest pass and the mirror bring the target up to the old server's present.
//! 2. The old server's copy is made read-only through Kinto's API: the `write` and `…:create`
//!    permissions of the chosen buckets, their groups, collections and records are emptied,
//!    and those who could write an object (which let them read it) get `read` on it (`PATCH`
//!    of those ACEs only; the others are kept). The permissions each object had are
//!    recorded first, in the store, so that [`Switcher::abort`] can give them back whatever
//!    happens after. Only objects someone other than the switch's account may change are
//!    touched (the others are writable only through their bucket or collection, which are). A
//!    member's write that lands while the locks go on is recorded by the next ingest pass, and
//!    the object it made is locked too, until a pass finds nothing open. A lock whose answer
//!    an interruption lost is confirmed by the next run from what the ingest recorded (the
//!    object's version without writers), and the mirror waits until every lock is confirmed,
//!    so that it never takes a lock's version for a member's change.
//! 3. The mirror writes what the ingest recorded meanwhile into the target, except the locks
//!    themselves: a version of a locked object at the timestamp the old server gave the lock
//!    is the switch's own change, and a later one gets the permissions from before (see
//!    [`crate::replicate::mirror`]). The target ends with the old copy's data, timestamps and
//!    permissions as they were before the switch, and no version bumped by it, so devices
//!    that synced against the old server find nothing new.
//! 4. A *moved statement* per chosen bucket or collection is appended to the origin's feed, at
//!    `/tandem/moved` followed by the object's path, e.g. `/tandem/moved/buckets/alice`,
//!    with `{"data": {"to": <the target's root URL>, "applied_seq": <every chosen entry up
//!    to here is there>, "migration": <its id>, "at": <ms>}}`. It is an entry like any other:
//!    signed by the origin's checkpoints, carried by every holder, kept by compaction and
//!    snapshots. Holders show it (`status --json`), and a restore of the origin leaves the
//!    moved buckets out and names where they went.
//!
//! Every step can be run again: a finish interrupted anywhere (a crash, a refused lock) is
//! resumed by running it again, and a finished migration answers what it did.
//!
//! # Abort
//!
//! [`Switcher::abort`] gives every locked object its recorded permissions back, retracts the
//! moved statements (a delete of each, so a restore brings the buckets back again), and ends
//! the mirror. What was written on the target stays there.
//!
//! # Limits
//!
//! Permissions granted server-wide by the old server's settings
//! (`kinto.record_write_principals` and the like) cannot be taken back through the API: the
//! switch refuses to start while the selection's recorded permissions are unknown, but it
//! cannot see those. A collection moved without its bucket stays writable through the bucket's
//! `write` permission: the switch refuses, naming the principals. With
//! `kinto.explicit_permissions = true` on the old server, Kinto adds the switch's account to
//! the `write` permission of every object it changes, locks and abort alike.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::{Secret, SourceAuth, SourceConfig};
use crate::feed::{Op, Seq};
use crate::identity::{NodeId, NodeKey};
use crate::replicate::Changes;
use crate::replicate::ingest::{IngestError, IngestSlot};
use crate::replicate::mirror::{Mirror, MirrorError};
use crate::replicate::restore;
use crate::replicate::select::{Selection, SelectionError};
use crate::source::kinto::{KintoClient, KintoError};
use crate::store::{Change, Migration, Phase, Store, StoreError, StoreHandle};

/// Where moved statements live in a feed: this, then the moved object's path.
pub const MOVED_PREFIX: &str = "/tandem/moved";

/// How many lock rounds a finish makes before it gives up on objects that stay writable.
const LOCK_ROUNDS: usize = 8;

/// A moved statement: a bucket or collection of the origin now lives on another server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    /// What moved: `/buckets/B` or `/buckets/B/collections/C`.
    pub path: String,
    /// The root URL of the server it lives on now.
    pub to: String,
    /// Every entry of it up to this seq is there.
    pub applied_seq: u64,
    /// The migration that moved it, on the origin's node.
    pub migration: u64,
    /// When the move was recorded (ms since the epoch).
    pub at: u64,
}

/// The body of a statement, under `data` as Kinto objects have it.
#[derive(Serialize, Deserialize)]
struct StatementData {
    to: String,
    applied_seq: u64,
    migration: u64,
    at: u64,
}

#[derive(Serialize, Deserialize)]
struct Statement {
    data: StatementData,
}

impl Moved {
    /// The feed path of this statement.
    pub fn statement_path(&self) -> String {
        format!("{MOVED_PREFIX}{}", self.path)
    }

    /// The statement's body.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&Statement {
            data: StatementData {
                to: self.to.clone(),
                applied_seq: self.applied_seq,
                migration: self.migration,
                at: self.at,
            },
        })
        .expect("plain data")
    }

    /// Reads the statement recorded at feed path `path` with `body`; None for any other path
    /// or an unreadable body.
    pub fn parse(path: &str, body: &[u8]) -> Option<Moved> {
        let object = path.strip_prefix(MOVED_PREFIX)?;
        let segments: Vec<&str> = object.trim_start_matches('/').split('/').collect();
        if !object.starts_with('/')
            || !matches!(
                segments.as_slice(),
                ["buckets", _] | ["buckets", _, "collections", _]
            )
        {
            return None;
        }
        let s: Statement = serde_json::from_slice(body).ok()?;
        Some(Moved {
            path: object.to_owned(),
            to: s.data.to,
            applied_seq: s.data.applied_seq,
            migration: s.data.migration,
            at: s.data.at,
        })
    }

    /// `bucket B` or `collection B/C`.
    pub fn describe(&self) -> String {
        let segments: Vec<&str> = self.path.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            ["buckets", b, "collections", c] => format!("collection {b}/{c}"),
            [_, b] => format!("bucket {b}"),
            _ => self.path.clone(),
        }
    }

    /// Whether the object at `path` is the moved one or lies within it.
    pub fn covers(&self, path: &str) -> bool {
        path == self.path
            || path
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// Whether `path` is one of tandem's own paths in a feed (the source's description, moved
/// statements), not a Kinto object.
pub fn is_tandem_path(path: &str) -> bool {
    path.starts_with("/tandem/")
}

/// The moved statements live in `origin`'s state in `store`. None for a sealed origin this
/// node cannot read (or not with the keys this store was given, as a store opened without
/// its key file): its statements are sealed with the rest.
pub fn moves(store: &Store, origin: NodeId) -> Result<Vec<Moved>, StoreError> {
    let mut out = Vec::new();
    let paths = match store.paths_under(origin, &format!("{MOVED_PREFIX}/")) {
        Err(StoreError::Sealed { .. }) => return Ok(out),
        paths => paths?,
    };
    for path in paths {
        let body = match store.object(origin, &path) {
            Err(StoreError::Sealed { .. } | StoreError::NotGranted { .. }) => continue,
            body => body?,
        };
        if let Some(body) = body
            && let Some(moved) = Moved::parse(&path, &body)
        {
            out.push(moved);
        }
    }
    Ok(out)
}

/// The moved statements live in a state (as [`Store::state_for_restore`] gives it).
pub fn in_state(state: &[crate::store::StateItem]) -> Vec<Moved> {
    state
        .iter()
        .filter(|i| !i.deleted)
        .filter_map(|i| Moved::parse(&i.path, &i.body))
        .collect()
}

/// Why a switch could not go on. Whatever it did stays recorded; running it again resumes.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// No such migration here.
    #[error("no migration {0} here; see `tandem migrate status`")]
    NoMigration(u64),
    /// The migration mirrors another node's origin.
    #[error(
        "migration {id} mirrors origin {origin}, not this node's own: the switch changes the old server's permissions and signs a moved statement in the origin's feed, which only node {origin} can do; run `tandem migrate finish` there"
    )]
    NotOwnOrigin {
        /// The migration.
        id: u64,
        /// Its origin.
        origin: NodeId,
    },
    /// The node follows no source, so it knows no old server.
    #[error("this node has no [source]: it knows no old server to make read-only")]
    NoSource,
    /// The mirror stopped.
    #[error(
        "migration {id} stopped: {reason}; nothing was switched. Fix the target (or start a new migration), or give up with `tandem migrate abort {id}`"
    )]
    Stopped {
        /// The migration.
        id: u64,
        /// Why it stopped.
        reason: String,
    },
    /// The migration was aborted.
    #[error("migration {0} was aborted; start a new one with `tandem migrate start`")]
    Aborted(u64),
    /// A chosen collection stays writable through its bucket.
    #[error(
        "collection {collection} is writable through its bucket's write permission ({}): the old copy cannot be made read-only without changing the whole bucket. Move the whole bucket, or take those principals out of the bucket's write permission first; nothing was switched",
        principals.join(", ")
    )]
    WritableThroughBucket {
        /// `bucket/collection`.
        collection: String,
        /// Who may write the bucket.
        principals: Vec<String>,
    },
    /// Objects whose permissions the feed does not hold.
    #[error(
        "the permissions of {} object(s) of the selection were not recorded ({}{}): the switch cannot tell who may write them. Give tandem's account read access to permissions on the old server (the kinto-tandem plugin, or its history) and sync first; nothing was switched",
        paths.len(),
        paths.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
        if paths.len() > 5 { ", …" } else { "" }
    )]
    PermissionsUnknown {
        /// The objects.
        paths: Vec<String>,
    },
    /// The old server refused to change an object's permissions.
    #[error(
        "the old server refused to change the permissions of {path} (HTTP {status}: {message}): the account {user} needs write permission on every object of the selection (e.g. kinto.bucket_write_principals, collection_…, group_… and record_write_principals); what was locked is recorded: run finish again once it may, or `tandem migrate abort {id}`"
    )]
    Refused {
        /// The migration.
        id: u64,
        /// The object.
        path: String,
        /// The account.
        user: String,
        /// Kinto's status.
        status: u16,
        /// Kinto's message.
        message: String,
    },
    /// Objects stayed writable after every lock round.
    #[error(
        "after {LOCK_ROUNDS} rounds {} object(s) are still writable on the old server ({}{}): something keeps granting write on them; what was locked is recorded: run finish again, or `tandem migrate abort {id}`",
        paths.len(),
        paths.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
        if paths.len() > 5 { ", …" } else { "" }
    )]
    StillOpen {
        /// The migration.
        id: u64,
        /// The objects.
        paths: Vec<String>,
    },
    /// The mirror stopped moving before the target had everything.
    #[error(
        "migration {id}: the mirror applied up to seq {applied} of {head} and moves no further{}; see the daemon's log, then run finish again",
        if unconfirmed.is_empty() { String::new() } else { format!(" (locks not confirmed: {})", unconfirmed.join(", ")) }
    )]
    Stalled {
        /// The migration.
        id: u64,
        /// Where the mirror is.
        applied: u64,
        /// The origin's head.
        head: u64,
        /// Locks without the old server's timestamp.
        unconfirmed: Vec<String>,
    },
    /// The recorded selection does not parse.
    #[error("migration {id}: {source}")]
    Selection {
        /// The migration.
        id: u64,
        /// What is wrong.
        #[source]
        source: SelectionError,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The old server could not be reached.
    #[error("the old server: {0}")]
    Kinto(#[from] KintoError),
    /// The ingest pass failed.
    #[error("reading the old server: {0}")]
    Ingest(#[from] IngestError),
    /// The mirror failed.
    #[error(transparent)]
    Mirror(#[from] Box<MirrorError>),
}

/// The account that changes the old server's permissions: a user and where its password is
/// (`file:PATH`, `env:VAR`), as [`crate::replicate::mirror::credentials_ref`] writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The user.
    pub user: String,
    /// Where its password is.
    pub credentials: String,
}

/// What a finish did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// The migration.
    pub id: u64,
    /// Objects made read-only on the old server (in all runs).
    pub locked: u64,
    /// The statements recorded.
    pub moved: Vec<Moved>,
    /// Their seq in the origin's feed.
    pub moved_seq: u64,
    /// Whether it was finished before this call.
    pub already: bool,
}

/// What an abort did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aborted {
    /// The migration.
    pub id: u64,
    /// Objects given their permissions back on the old server.
    pub unlocked: u64,
    /// Objects that were gone there.
    pub gone: u64,
    /// Moved statements retracted.
    pub retracted: u64,
}

/// Finishes and aborts the migrations of a node's own origin.
#[derive(Clone)]
pub struct Switcher {
    store: StoreHandle,
    key: Arc<NodeKey>,
    ingest: Option<IngestSlot>,
    changes: Changes,
}

/// The permission types that let a principal change an object of this kind.
fn lockable(path: &str) -> Option<&'static [&'static str]> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    Some(match segments.as_slice() {
        ["buckets", _] => &["write", "collection:create", "group:create"],
        ["buckets", _, "collections", _] => &["write", "record:create"],
        ["buckets", _, "groups", _] => &["write"],
        ["buckets", _, "collections", _, "records", _] => &["write"],
        _ => return None,
    })
}

/// The recorded permissions of a body: None when it holds none.
fn permissions_of(body: &[u8]) -> Option<HashMap<String, Vec<String>>> {
    #[derive(Deserialize)]
    struct Body {
        permissions: Option<HashMap<String, Vec<String>>>,
    }
    serde_json::from_slice::<Body>(body).ok()?.permissions
}

/// Who, besides `locker`, may change the object (its lockable ACEs).
fn writers(path: &str, permissions: &HashMap<String, Vec<String>>, locker: &str) -> Vec<String> {
    let Some(types) = lockable(path) else {
        return Vec::new();
    };
    let mut out: Vec<String> = types
        .iter()
        .filter_map(|t| permissions.get(*t))
        .flatten()
        .filter(|p| p.as_str() != locker)
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The permissions that make an object read-only for everyone who could change it: the
/// lockable ACEs emptied, and those who could write it (which let them read it) given `read`.
fn read_only(path: &str, before: &HashMap<String, Vec<String>>) -> HashMap<String, Vec<String>> {
    let mut read: Vec<String> = before
        .get("read")
        .into_iter()
        .chain(before.get("write"))
        .flatten()
        .cloned()
        .collect();
    read.sort();
    read.dedup();
    let mut out: HashMap<String, Vec<String>> = lockable(path)
        .unwrap_or_default()
        .iter()
        .map(|t| ((*t).to_owned(), Vec::new()))
        .collect();
    out.insert("read".to_owned(), read);
    out
}

/// A batch sub-request that sets the lockable ACEs and `read` of `path` to those of
/// `permissions` (empty when absent there); the others are left as they are.
fn patch_request(path: &str, permissions: &HashMap<String, Vec<String>>) -> Box<RawValue> {
    let aces: serde_json::Map<String, serde_json::Value> = lockable(path)
        .unwrap_or_default()
        .iter()
        .chain(&["read"])
        .map(|t| {
            let principals = permissions.get(*t).cloned().unwrap_or_default();
            ((*t).to_owned(), serde_json::json!(principals))
        })
        .collect();
    let request = serde_json::json!({
        "method": "PATCH",
        "path": restore::encoded_path(path),
        "body": {"permissions": aces},
    });
    RawValue::from_string(request.to_string()).expect("built as JSON")
}

/// The paths of the live objects of `origin` the selection moves (not the buckets it brings
/// only as parents), with their bodies.
fn chosen_objects(
    store: &Store,
    origin: NodeId,
    selection: &Selection,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for (_, _, root) in selection.named() {
        let mut paths = vec![root.clone()];
        paths.extend(store.paths_under(origin, &format!("{root}/"))?);
        for path in paths {
            if selection.is_parent_only(&path) || lockable(&path).is_none() {
                continue;
            }
            if let Some(body) = store.object(origin, &path)? {
                out.push((path, body));
            }
        }
    }
    // A collection chosen within a bucket chosen whole comes twice.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

impl From<MirrorError> for MoveError {
    fn from(e: MirrorError) -> MoveError {
        MoveError::Mirror(Box::new(e))
    }
}

impl Switcher {
    /// A switcher over `store`, for `key`'s own origin, reading the old server with `ingest`
    /// (None on a node without a source).
    pub fn new(
        store: StoreHandle,
        key: Arc<NodeKey>,
        ingest: Option<IngestSlot>,
        changes: Changes,
    ) -> Switcher {
        Switcher {
            store,
            key,
            ingest,
            changes,
        }
    }

    async fn migration(&self, id: u64) -> Result<Migration, MoveError> {
        let all = self.store.read(|s| s.migrations()).await?;
        all.into_iter()
            .find(|m| m.id == id)
            .ok_or(MoveError::NoMigration(id))
    }

    fn ingest(&self) -> Result<&IngestSlot, MoveError> {
        self.ingest.as_ref().ok_or(MoveError::NoSource)
    }

    /// A client of the old server, as `account`.
    fn old_server(&self, account: &Account) -> Result<KintoClient, MoveError> {
        let source = self.ingest()?.source();
        let password = match account.credentials.split_once(':') {
            Some(("file", path)) => Secret::File(path.into()),
            Some(("env", var)) => Secret::Env(var.to_owned()),
            _ => {
                return Err(KintoError::Credentials(format!(
                    "unknown credentials reference {:?}",
                    account.credentials
                ))
                .into());
            }
        };
        Ok(KintoClient::new(&SourceConfig {
            url: source.url.clone(),
            auth: SourceAuth::Basic {
                user: account.user.clone(),
                password,
            },
            poll: source.poll,
            concurrency: 1,
        })?)
    }

    /// Confirms the locks an interrupted finish sent without recording the old server's answer:
    /// a locked object the feed now holds with nobody but `locker` able to change it was
    /// locked, at that version's timestamp; one the feed no longer holds is forgotten. Returns
    /// whether every lock of migration `id` is confirmed (the mirror waits until they are).
    async fn adopt(&self, id: u64, origin: NodeId, locker: &str) -> Result<bool, MoveError> {
        let locker = locker.to_owned();
        Ok(self
            .store
            .write(move |s| {
                let (mut stamps, mut gone, mut open) = (Vec::new(), Vec::new(), 0);
                for lock in s.migration_locks(id)? {
                    if lock.locked_stamp.is_some() {
                        continue;
                    }
                    let body = s.object(origin, &lock.path)?;
                    let stamp = body.as_deref().and_then(|b| restore::data_stamp(b).ok());
                    match (body, stamp) {
                        (None, _) => gone.push(lock.path),
                        (Some(body), Some(stamp))
                            if writers(
                                &lock.path,
                                &permissions_of(&body).unwrap_or_default(),
                                &locker,
                            )
                            .is_empty() =>
                        {
                            stamps.push((lock.path, stamp))
                        }
                        _ => open += 1,
                    }
                }
                s.set_lock_stamps(id, &stamps)?;
                s.remove_migration_locks(id, &gone)?;
                Ok::<_, StoreError>(open == 0)
            })
            .await?)
    }

    /// Runs the mirror until migration `id` holds everything this node holds of its origin.
    async fn catch_up(&self, id: u64) -> Result<u64, MoveError> {
        let mirror = Mirror::new(self.store.clone());
        let mut before = u64::MAX;
        loop {
            mirror.pass().await?;
            let m = self.migration(id).await?;
            if let Some(reason) = m.stopped {
                return Err(MoveError::Stopped { id, reason });
            }
            let origin = m.origin;
            let head = self
                .store
                .read(move |s| s.head(origin))
                .await?
                .map_or(0, |h| h.seq.0);
            if m.applied_seq >= head {
                return Ok(m.applied_seq);
            }
            if m.applied_seq == before {
                // A pass that moved nothing: the mirror waits for locks to be confirmed
                // (which a finish does before it waits here), or something keeps it back.
                let unconfirmed: Vec<String> = self
                    .store
                    .read(move |s| s.migration_locks(id))
                    .await?
                    .into_iter()
                    .filter(|l| l.locked_stamp.is_none())
                    .map(|l| l.path)
                    .collect();
                return Err(MoveError::Stalled {
                    id,
                    applied: m.applied_seq,
                    head,
                    unconfirmed,
                });
            }
            before = m.applied_seq;
        }
    }

    /// Finishes migration `id` (see the module docs), changing the old server's permissions
    /// as `account`.
    pub async fn finish(&self, id: u64, account: Account) -> Result<Finished, MoveError> {
        let m = self.migration(id).await?;
        if m.origin != self.key.id() {
            return Err(MoveError::NotOwnOrigin {
                id,
                origin: m.origin,
            });
        }
        match m.switch.as_ref().map(|s| s.phase) {
            Some(Phase::Aborted) => return Err(MoveError::Aborted(id)),
            Some(Phase::Finished) => {
                let origin = m.origin;
                let moved = self.store.read(move |s| moves(s, origin)).await?;
                let locked = self.store.read(move |s| s.migration_locks(id)).await?.len();
                return Ok(Finished {
                    id,
                    locked: locked as u64,
                    moved: moved.into_iter().filter(|v| v.migration == id).collect(),
                    moved_seq: m.switch.and_then(|s| s.moved_seq).unwrap_or(0),
                    already: true,
                });
            }
            _ => {}
        }
        if let Some(reason) = m.stopped {
            return Err(MoveError::Stopped { id, reason });
        }
        let selection = Selection::parse(&m.buckets, &m.collections)
            .map_err(|source| MoveError::Selection { id, source })?;
        let ingest = self.ingest()?.clone();
        let client = self.old_server(&account)?;
        let info = client.server_info().await?;
        let locker = info.user_id.clone();
        let batch_max = restore::batch_max(&info);

        // 1. The target close to the present before anything is locked (unless an
        //    interrupted finish left locks unconfirmed: the mirror waits for them).
        let origin = m.origin;
        ingest.run_pass().await?;
        if self.adopt(id, origin, &locker).await? {
            self.catch_up(id).await?;
        }

        // 2. What cannot be locked is refused before anything is.
        let (objects, parents) = {
            let selection = selection.clone();
            self.store
                .read(move |s| {
                    let objects = chosen_objects(s, origin, &selection)?;
                    let mut parents = Vec::new();
                    for (bucket, collection) in selection.collections() {
                        let path = format!("/buckets/{bucket}");
                        if !selection.buckets().any(|b| b == bucket) {
                            parents
                                .push((format!("{bucket}/{collection}"), s.object(origin, &path)?));
                        }
                    }
                    Ok::<_, StoreError>((objects, parents))
                })
                .await?
        };
        let unknown: Vec<String> = objects
            .iter()
            .filter(|(_, body)| permissions_of(body).is_none())
            .map(|(path, _)| path.clone())
            .collect();
        if !unknown.is_empty() {
            return Err(MoveError::PermissionsUnknown { paths: unknown });
        }
        for (collection, bucket) in parents {
            let principals = bucket
                .as_deref()
                .and_then(permissions_of)
                .and_then(|p| p.get("write").cloned())
                .unwrap_or_default()
                .into_iter()
                .filter(|p| *p != locker)
                .collect::<Vec<_>>();
            if !principals.is_empty() {
                return Err(MoveError::WritableThroughBucket {
                    collection,
                    principals,
                });
            }
        }
        let (user, credentials) = (account.user.clone(), account.credentials.clone());
        self.store
            .write(move |s| s.set_switch(id, Phase::Finishing, &user, &credentials, None))
            .await?;

        // 3. Lock until a pass finds nothing open: nobody but the switch's account may change
        //    any object moved.
        let mut settled = false;
        for round in 0..LOCK_ROUNDS {
            if round > 0 {
                ingest.run_pass().await?;
            }
            self.adopt(id, origin, &locker).await?;
            let objects = {
                let selection = selection.clone();
                self.store
                    .read(move |s| chosen_objects(s, origin, &selection))
                    .await?
            };
            let mut open = Vec::new();
            for (path, body) in objects {
                let permissions = permissions_of(&body).unwrap_or_default();
                if !writers(&path, &permissions, &locker).is_empty() {
                    let raw = serde_json::to_string(&permissions).expect("plain data");
                    open.push((path, raw));
                }
            }
            if open.is_empty() {
                settled = true;
                break;
            }
            let intents = open.clone();
            self.store
                .write(move |s| s.add_migration_locks(id, &intents))
                .await?;
            let (mut stamps, mut gone) = (Vec::new(), Vec::new());
            for chunk in open.chunks(batch_max) {
                let requests: Vec<Box<RawValue>> = chunk
                    .iter()
                    .map(|(path, before)| {
                        let before = serde_json::from_str(before).unwrap_or_default();
                        patch_request(path, &read_only(path, &before))
                    })
                    .collect();
                let answers = client.batch(&requests).await?;
                for ((path, _), answer) in chunk.iter().zip(answers) {
                    match answer.status {
                        // Kinto always answers the object; without its timestamp every later
                        // version counts as after the lock.
                        200..=299 => stamps.push((path.clone(), answer.last_modified.unwrap_or(0))),
                        // Deleted meanwhile: the ingest records it, the mirror follows.
                        404 => gone.push(path.clone()),
                        status => {
                            let (done, gone) = (stamps.clone(), gone.clone());
                            self.store
                                .write(move |s| {
                                    s.set_lock_stamps(id, &done)?;
                                    s.remove_migration_locks(id, &gone)
                                })
                                .await?;
                            return Err(MoveError::Refused {
                                id,
                                path: path.clone(),
                                user: account.user.clone(),
                                status,
                                message: answer.message,
                            });
                        }
                    }
                }
            }
            tracing::info!(
                migration = id,
                objects = open.len(),
                "made read-only on the old server"
            );
            self.store
                .write(move |s| {
                    s.set_lock_stamps(id, &stamps)?;
                    s.remove_migration_locks(id, &gone)
                })
                .await?;
        }
        if !settled {
            let paths = {
                let selection = selection.clone();
                self.store
                    .read(move |s| chosen_objects(s, origin, &selection))
                    .await?
            }
            .into_iter()
            .filter(|(path, body)| {
                !writers(path, &permissions_of(body).unwrap_or_default(), &locker).is_empty()
            })
            .map(|(path, _)| path)
            .collect();
            return Err(MoveError::StillOpen { id, paths });
        }

        // 4. The target takes the rest; 5. the statements.
        let applied = self.catch_up(id).await?;
        let at = crate::store::now_ms();
        let moved: Vec<Moved> = selection
            .named()
            .into_iter()
            .map(|(_, _, path)| Moved {
                path,
                to: m.target.clone(),
                applied_seq: applied,
                migration: id,
                at,
            })
            .collect();
        let changes: Vec<Change> = moved
            .iter()
            .map(|v| Change {
                op: Op::Put,
                path: v.statement_path(),
                body: v.body(),
            })
            .collect();
        let key = self.key.clone();
        let (user, credentials) = (account.user.clone(), account.credentials.clone());
        let moved_seq = self
            .store
            .write(move |s| {
                let checkpoint = s.append(&key, &changes, &[])?;
                let seq = checkpoint.map_or(Seq(0), |c| c.seq).0;
                s.set_switch(id, Phase::Finished, &user, &credentials, Some(seq))?;
                Ok::<_, StoreError>(seq)
            })
            .await?;
        self.changes.notify();
        let locked = self.store.read(move |s| s.migration_locks(id)).await?.len();
        Ok(Finished {
            id,
            locked: locked as u64,
            moved,
            moved_seq,
            already: false,
        })
    }

    /// Aborts migration `id` (see the module docs), giving the old server's objects their
    /// permissions back as `account` (by default the one that locked them).
    pub async fn abort(&self, id: u64, account: Option<Account>) -> Result<Aborted, MoveError> {
        let m = self.migration(id).await?;
        if m.switch.as_ref().map(|s| s.phase) == Some(Phase::Aborted) {
            return Ok(Aborted {
                id,
                unlocked: 0,
                gone: 0,
                retracted: 0,
            });
        }
        let locks = self.store.read(move |s| s.migration_locks(id)).await?;
        let account = match (account, &m.switch) {
            (Some(a), _) => Some(a),
            (None, Some(s)) => Some(Account {
                user: s.user.clone(),
                credentials: s.credentials.clone(),
            }),
            (None, None) => None,
        };
        let (mut unlocked, mut gone) = (0, 0);
        if !locks.is_empty() {
            if m.origin != self.key.id() {
                return Err(MoveError::NotOwnOrigin {
                    id,
                    origin: m.origin,
                });
            }
            let account = account
                .clone()
                .expect("locks are recorded with their account");
            let client = self.old_server(&account)?;
            let info = client.server_info().await?;
            let batch_max = restore::batch_max(&info);
            for chunk in locks.chunks(batch_max) {
                let requests: Vec<Box<RawValue>> = chunk
                    .iter()
                    .map(|l| {
                        let before: HashMap<String, Vec<String>> =
                            serde_json::from_str(&l.permissions).unwrap_or_default();
                        patch_request(&l.path, &before)
                    })
                    .collect();
                let answers = client.batch(&requests).await?;
                for (lock, answer) in chunk.iter().zip(answers) {
                    match answer.status {
                        200..=299 => unlocked += 1,
                        404 => gone += 1,
                        status => {
                            return Err(MoveError::Refused {
                                id,
                                path: lock.path.clone(),
                                user: account.user.clone(),
                                status,
                                message: answer.message,
                            });
                        }
                    }
                }
            }
        }
        // The statements of this migration, retracted.
        let origin = m.origin;
        let retract: Vec<Change> = if origin == self.key.id() {
            self.store
                .read(move |s| moves(s, origin))
                .await?
                .into_iter()
                .filter(|v| v.migration == id)
                .map(|v| Change {
                    op: Op::Delete,
                    path: v.statement_path(),
                    body: Vec::new(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let retracted = retract.len() as u64;
        let key = self.key.clone();
        let (user, credentials) = account.map(|a| (a.user, a.credentials)).unwrap_or_default();
        self.store
            .write(move |s| {
                if !retract.is_empty() {
                    s.append(&key, &retract, &[])?;
                }
                s.set_switch(id, Phase::Aborted, &user, &credentials, None)
            })
            .await?;
        if retracted > 0 {
            self.changes.notify();
        }
        Ok(Aborted {
            id,
            unlocked,
            gone,
            retracted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(path: &str) -> Moved {
        Moved {
            path: path.to_owned(),
            to: "https://alice.example/v1/".to_owned(),
            applied_seq: 41,
            migration: 3,
            at: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_statement_reads_back_from_its_path_and_body() {
        for path in ["/buckets/alice", "/buckets/alice/collections/notes"] {
            let m = moved(path);
            assert_eq!(m.statement_path(), format!("/tandem/moved{path}"));
            assert_eq!(Moved::parse(&m.statement_path(), &m.body()), Some(m));
        }
        let body = moved("/buckets/a").body();
        for path in [
            "/tandem/moved",
            "/tandem/moved/",
            "/tandem/movedx/buckets/a",
            "/tandem/moved/buckets/a/collections/c/records/r",
            "/tandem/source",
            "/buckets/a",
        ] {
            assert_eq!(Moved::parse(path, &body), None, "{path}");
        }
        assert_eq!(Moved::parse("/tandem/moved/buckets/a", b"{}"), None);
    }

    #[test]
    fn a_statement_covers_its_object_and_what_lies_within_only() {
        let m = moved("/buckets/alice");
        assert!(m.covers("/buckets/alice"));
        assert!(m.covers("/buckets/alice/collections/c/records/r"));
        assert!(!m.covers("/buckets/alice2"));
        assert!(!m.covers("/buckets/bob"));
        assert_eq!(m.describe(), "bucket alice");
        assert_eq!(
            moved("/buckets/a/collections/c").describe(),
            "collection a/c"
        );
    }

    #[test]
    fn writers_are_who_may_change_an_object_besides_the_locker() {
        let p: HashMap<String, Vec<String>> = serde_json::from_str(
            r#"{"write":["account:alice","account:admin"],"read":["account:bob"],"collection:create":["account:carol"]}"#,
        )
        .unwrap();
        assert_eq!(
            writers("/buckets/a", &p, "account:admin"),
            vec!["account:alice", "account:carol"]
        );
        // A record has no collection:create; reading is not writing.
        assert_eq!(
            writers("/buckets/a/collections/c/records/r", &p, "account:admin"),
            vec!["account:alice"]
        );
        assert!(writers("/tandem/source", &p, "x").is_empty());
        let locked = read_only("/buckets/a/collections/c", &p);
        let r = patch_request("/buckets/a/collections/c", &locked);
        let v: serde_json::Value = serde_json::from_str(r.get()).unwrap();
        // Writers keep reading; nobody keeps writing or creating.
        assert_eq!(
            v,
            serde_json::json!({"method": "PATCH", "path": "/buckets/a/collections/c",
                "body": {"permissions": {"write": [], "record:create": [],
                    "read": ["account:admin", "account:alice", "account:bob"]}}})
        );
    }
}
