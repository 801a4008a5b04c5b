//! Restore drills: prove, again and again, that the backups this node holds restore.
//!
//! Nothing proves a backup restorable until it is restored, and the day it is needed is the
//! worst day to find out. A drill does, for each origin held, one after another:
//!
//! 1. **Empty the scratch server**, after checking that it holds only buckets earlier drills
//!    wrote there (the store keeps their list per scratch URL, written before each restore),
//!    each as the drill that read it back left it (a fingerprint of every object's path and
//!    timestamp, recorded then). A scratch holding anything else is refused before anything is
//!    touched: an operator who points `[drill] to` at a real server, or puts the scratch to
//!    use, must lose nothing. An empty server is fine.
//! 2. **Check the feed, then the latest snapshot against it**: the whole stored chain and
//!    its checkpoints verify (as `tandem restore` checks before writing anything), then the
//!    snapshot's signature, its seq in the held chain, and its state root, object count and
//!    bytes against
//!    [`crate::store::Store::state_root_at`] (through
//!    [`crate::store::Store::check_snapshot`]).
//! 3. **Restore that state** with the code `tandem restore` runs ([`super::restore`]), after
//!    recomputing the state root over exactly the objects about to be written
//!    ([`crate::feed::StateRoot`]) and comparing it with the one the snapshot signs (for a
//!    sealed origin, whose root is over the sealed entries, the count of live objects: each
//!    was opened, authenticated, from an entry step 2 checked).
//! 4. **Read back** every object from the scratch server and compare it with what was
//!    restored: the same paths, no object more, each with the recorded data and
//!    permissions, and every tombstone with its timestamp. Kinto shows an object's
//!    permissions only to accounts its own ACL lets write it, so they are compared where the
//!    drill's account sees them. Kinto re-serializes JSON (member
//!    order, spacing, numbers), so its answers are compared as JSON values, not hashed as
//!    bytes; the bytes are bound to the signature by step 3.
//!
//! Each origin's outcome is recorded in the store: when, the snapshot's seq, ok or why not,
//! the objects restored, and the duration from emptying the scratch to the last check: the
//! measured recovery time of that origin.
//!
//! Not drilled: accounts (restored into a scratch they would give the origin's users logins
//! there, and deleting them again could delete the drill's own account), the source's
//! description (`/tandem/source`), which a restore never writes, and sealed origins this node
//! does not read, which cannot be restored here (their origin and readers drill them). The
//! scratch's identity secrets are not compared with the source's: a drill proves the data,
//! not the logins.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use serde_json::value::RawValue;

use super::restore::{self, NulStrings, RESTORE_MARKER, RestoreOptions};
use crate::config::DrillConfig;
use crate::feed::{Snapshot, StateRoot};
use crate::identity::NodeId;
use crate::source::kinto::{KintoClient, KintoError, ListResult};
use crate::store::{DrillRecord, StateItem, Store, StoreError, StoreHandle, now_ms};

/// Why a drill could not start, or one origin's drill failed.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The scratch server holds buckets no drill wrote.
    #[error(
        "the scratch server {target} holds bucket(s) no drill wrote: {}{}; a drill empties its scratch server first, so it refuses to touch this one. Point [drill] to at an empty Kinto server kept for drills, or delete those buckets there yourself; nothing was changed",
        buckets.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
        if buckets.len() > 10 { ", …" } else { "" }
    )]
    ScratchNotEmpty {
        /// The scratch server.
        target: String,
        /// What it holds that no drill wrote.
        buckets: Vec<String>,
    },
    /// The stored feed does not verify (hashes, chain, checkpoint signatures).
    #[error(
        "the stored copy of the origin does not verify ({count} problem(s); first: {first}): a restore from it would be refused; see `tandem verify`"
    )]
    Feed {
        /// How many problems.
        count: usize,
        /// The first one.
        first: String,
    },
    /// No snapshot of the origin is held.
    #[error(
        "no snapshot of this origin is held: configure [snapshots] (or run `tandem snapshot create`) on its node"
    )]
    NoSnapshot,
    /// The snapshot does not match the feed, or its state not the snapshot.
    #[error("the snapshot at seq {seq} does not hold: {what}")]
    Snapshot {
        /// The snapshot's seq.
        seq: u64,
        /// What is wrong.
        what: String,
    },
    /// The restore into the scratch server stopped.
    #[error("the restore into the scratch server failed: {0}")]
    Restore(#[from] restore::RestoreError),
    /// A bucket a drill wrote into the scratch server was changed there since.
    #[error(
        "bucket {bucket} on the scratch server {target} changed since a drill wrote and checked it: someone else writes there. A drill deletes only what it left untouched, so nothing was changed; keep that server out of [drill] to, or delete the bucket there yourself"
    )]
    ScratchChanged {
        /// The scratch server.
        target: String,
        /// The bucket that changed.
        bucket: String,
    },
    /// The scratch server answered other than the restore wrote.
    #[error("the scratch server does not hold what was restored: {0}")]
    Mismatch(String),
    /// Talking to the scratch server failed.
    #[error("the scratch server: {0}")]
    Kinto(#[from] KintoError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl crate::backoff::RetryHint for DrillError {
    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            DrillError::Kinto(e) => e.retry_after(),
            _ => None,
        }
    }

    fn heals(&self) -> bool {
        match self {
            DrillError::Kinto(e) => e.heals(),
            DrillError::Store(e) => e.heals(),
            // The scratch server may be restarting mid-restore; asked again.
            DrillError::Restore(_) => true,
            // A scratch holding what no drill wrote, or a held copy that does not verify, is
            // for the operator to look at: drilling again changes nothing.
            DrillError::ScratchNotEmpty { .. }
            | DrillError::ScratchChanged { .. }
            | DrillError::Feed { .. }
            | DrillError::NoSnapshot
            | DrillError::Snapshot { .. }
            | DrillError::Mismatch(_) => false,
        }
    }
}

/// Runs drills against one scratch server; one at a time (the scheduled ones and those asked
/// for by `tandem drill` wait for each other).
#[derive(Clone)]
pub struct Drill {
    config: DrillConfig,
    store: StoreHandle,
    running: Arc<tokio::sync::Mutex<()>>,
}

impl Drill {
    /// A drill of the origins in `store` into `config.to`.
    pub fn new(config: DrillConfig, store: StoreHandle) -> Drill {
        Drill {
            config,
            store,
            running: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// This drill waits for those given the same `running` (the daemon shares one across
    /// configuration reloads): two drills at once into one scratch server would each empty
    /// it under the other.
    pub fn sharing_drills_with(mut self, running: Arc<tokio::sync::Mutex<()>>) -> Drill {
        self.running = running;
        self
    }

    /// Drills every origin held, one after another, and records each outcome. Fails without
    /// drilling anything when the scratch server cannot be reached or holds what no drill
    /// wrote.
    pub async fn run(&self) -> Result<Vec<DrillRecord>, DrillError> {
        let _one_at_a_time = self.running.lock().await;
        let client = Arc::new(KintoClient::new(&self.config.target())?);
        let target = self.config.to.to_string();
        // A sealed origin this node does not read is not drilled: it cannot be restored here
        // (its origin and readers drill it); `tandem verify` checks what this node holds.
        let origins: Vec<NodeId> = self
            .read(|s| {
                let mut origins = Vec::new();
                for o in s.origins()? {
                    if o.head.is_none() {
                        continue;
                    }
                    if s.holds_unread(o.id)? {
                        tracing::info!(origin = %o.id, "not drilled: sealed, and this node does not read it");
                        continue;
                    }
                    origins.push(o.id);
                }
                Ok(origins)
            })
            .await?;
        // Refused before anything is touched; each origin's drill is then a failure, so that
        // status and alerts on the last drill show it.
        if let Err(e) = self.foreign_buckets(&client, &target).await {
            if !matches!(e, DrillError::Store(_)) {
                tracing::error!(error = %e, "drill could not run");
                let (at, error) = (now_ms(), e.to_string());
                self.write(move |s| {
                    for origin in origins {
                        s.record_drill(&DrillRecord {
                            origin,
                            at,
                            seq: 0,
                            ok: false,
                            error: Some(error.clone()),
                            duration_ms: 0,
                            objects: 0,
                        })?;
                    }
                    Ok(())
                })
                .await?;
            }
            return Err(e);
        }
        let mut records = Vec::new();
        for origin in origins {
            let at = now_ms();
            let started = Instant::now();
            let outcome = self.drill_origin(&client, &target, origin).await;
            let record = DrillRecord {
                origin,
                at,
                seq: outcome.seq,
                ok: outcome.result.is_ok(),
                error: outcome.result.as_ref().err().map(|e| e.to_string()),
                duration_ms: started.elapsed().as_millis() as u64,
                objects: outcome.result.as_ref().copied().unwrap_or(0),
            };
            match &record.error {
                None => {
                    tracing::info!(%origin, seq = record.seq, objects = record.objects, duration_ms = record.duration_ms, "drill ok")
                }
                Some(e) => tracing::error!(%origin, seq = record.seq, error = %e, "drill failed"),
            }
            let stored = record.clone();
            self.write(move |s| s.record_drill(&stored)).await?;
            records.push(record);
        }
        Ok(records)
    }

    /// One origin: empty the scratch, check the snapshot, restore, read back.
    async fn drill_origin(
        &self,
        client: &Arc<KintoClient>,
        target: &str,
        origin: NodeId,
    ) -> Outcome {
        let mut outcome = Outcome {
            seq: 0,
            result: Ok(0),
        };
        outcome.result = async {
            self.empty(client, target).await?;
            let snapshot = self
                .read(move |s| Ok(s.snapshots(origin)?.pop()))
                .await?
                .ok_or(DrillError::NoSnapshot)?;
            outcome.seq = snapshot.seq.0;
            // What `tandem restore` checks first: the whole chain, every checkpoint and
            // snapshot.
            let problems = self.read(move |s| s.verify_origin(origin)).await?.problems;
            if let Some(first) = problems.first() {
                return Err(DrillError::Feed {
                    count: problems.len(),
                    first: first.to_string(),
                });
            }
            let state = self
                .read(move |s| {
                    let checked = snapshot
                        .verify()
                        .map_err(StoreError::from)
                        .and_then(|()| s.check_snapshot(&snapshot));
                    Ok(match checked {
                        Err(e) => Err(e.to_string()),
                        Ok(()) => Ok(s.state_for_restore(origin, snapshot.seq)?),
                    })
                })
                .await?
                .map_err(|what| DrillError::Snapshot {
                    seq: snapshot.seq.0,
                    what,
                })?;
            if let Err(e) = check_state_root(&snapshot, &state) {
                // A sealed state's root is over its sealed entries, which the restore does not
                // write: there each object read was opened, authenticated, from an entry of
                // the state the snapshot check found signed, and their count is what is left
                // to compare. (Asked only then: on a plain feed the search reads back to its
                // first entry.)
                let at = snapshot.seq;
                let sealed = self
                    .read(move |s| s.newest_sealed_epoch(origin, at))
                    .await?
                    .is_some();
                if !sealed {
                    return Err(e);
                }
                check_live_count(&snapshot, &state)?;
            }
            let state: Vec<StateItem> = state.into_iter().filter(drilled).collect();
            let buckets: Vec<String> = state
                .iter()
                .filter_map(|i| bucket_of(&i.path))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            // Known before written: a drill stopped halfway leaves only buckets the next one
            // may delete.
            let t = target.to_owned();
            let written = buckets.clone();
            self.write(move |s| s.add_drill_buckets(&t, &written))
                .await?;
            let options = RestoreOptions {
                selection: crate::replicate::select::Selection::all(),
                concurrency: restore::CONCURRENCY,
                ignore_secrets_mismatch: true,
                nul: NulStrings::Refuse,
                // A drill checks that the whole backup comes back.
                include_moved: true,
            };
            let report =
                restore::restore(client.clone(), state.clone(), options, Arc::new(|_| {})).await?;
            read_back(client, &state).await?;
            // What the next drill must find before it may delete these buckets.
            for bucket in buckets {
                let fingerprint = fingerprint(client, &bucket).await?;
                let t = target.to_owned();
                self.write(move |s| s.seal_drill_bucket(&t, &bucket, &fingerprint))
                    .await?;
            }
            Ok(report.objects)
        }
        .await;
        outcome
    }

    /// Fails with [`DrillError::ScratchNotEmpty`] if the scratch holds buckets no drill wrote,
    /// and with [`DrillError::ScratchChanged`] if one a drill wrote and read back changed
    /// since; returns those it holds that drills wrote.
    async fn foreign_buckets(
        &self,
        client: &KintoClient,
        target: &str,
    ) -> Result<Vec<String>, DrillError> {
        let t = target.to_owned();
        let recorded = self.read(move |s| s.drill_bucket_fingerprints(&t)).await?;
        let ours: BTreeSet<String> = recorded.iter().map(|(b, _)| b.clone()).collect();
        let held = list_ids(client, "buckets", None).await?;
        let foreign: Vec<String> = held
            .iter()
            .filter(|(id, _)| !ours.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        if !foreign.is_empty() {
            return Err(DrillError::ScratchNotEmpty {
                target: target.to_owned(),
                buckets: foreign,
            });
        }
        for (bucket, sealed) in &recorded {
            if let Some(sealed) = sealed
                && held.contains_key(bucket)
                && fingerprint(client, bucket).await? != *sealed
            {
                return Err(DrillError::ScratchChanged {
                    target: target.to_owned(),
                    bucket: bucket.clone(),
                });
            }
        }
        Ok(held.into_keys().collect())
    }

    /// Deletes every bucket earlier drills wrote into the scratch (after checking it holds
    /// nothing else), and forgets them.
    async fn empty(&self, client: &KintoClient, target: &str) -> Result<(), DrillError> {
        let held = self.foreign_buckets(client, target).await?;
        for chunk in held.chunks(25) {
            let requests: Vec<Box<RawValue>> = chunk
                .iter()
                .map(|id| {
                    let path = format!("/buckets/{}", segment(id));
                    RawValue::from_string(
                        serde_json::json!({"method": "DELETE", "path": path}).to_string(),
                    )
                    .expect("built as JSON")
                })
                .collect();
            let answers = client.batch(&requests).await?;
            for (id, answer) in chunk.iter().zip(answers) {
                if !(answer.status < 300 || answer.status == 404) {
                    return Err(DrillError::Mismatch(format!(
                        "emptying it, deleting bucket {id} was refused (HTTP {}): {}",
                        answer.status, answer.message
                    )));
                }
            }
        }
        let t = target.to_owned();
        let all: Vec<String> = self.read(move |s| s.drill_buckets(&t)).await?;
        let t = target.to_owned();
        self.write(move |s| {
            for bucket in &all {
                s.remove_drill_bucket(&t, bucket)?;
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Runs `f` on a read-only connection to the store (it does not hold up the writer).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.store.read(f).await
    }

    /// Runs `f` on the store's writer.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.store.write(f).await
    }
}

/// What one origin's drill gave: the snapshot's seq (0 if none was taken) and the objects
/// restored, or why it failed.
struct Outcome {
    seq: u64,
    result: Result<u64, DrillError>,
}

/// Whether a drill restores this item (see the module docs).
fn drilled(item: &StateItem) -> bool {
    !super::moves::is_tandem_path(&item.path) && !item.path.starts_with("/accounts/")
}

/// `b` of `/buckets/b…`.
fn bucket_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/buckets/")?;
    Some(rest.split('/').next()?.to_owned())
}

/// One path segment, percent-encoded as the restore encodes ids.
fn segment(id: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_');
    percent_encoding::utf8_percent_encode(id, SEGMENT).to_string()
}

/// Compares the live objects of a sealed state read for the restore with the count the
/// snapshot signs (see where it is called).
fn check_live_count(snapshot: &Snapshot, state: &[StateItem]) -> Result<(), DrillError> {
    let live = state.iter().filter(|i| !i.deleted).count() as u64;
    if live != snapshot.objects {
        return Err(DrillError::Snapshot {
            seq: snapshot.seq.0,
            what: format!(
                "the sealed state read for the restore holds {live} objects, the snapshot {}",
                snapshot.objects
            ),
        });
    }
    Ok(())
}

/// Recomputes the state root over the very objects about to be restored and compares it, the
/// object count and the bytes with what the snapshot signs.
fn check_state_root(snapshot: &Snapshot, state: &[StateItem]) -> Result<(), DrillError> {
    let fail = |what: String| DrillError::Snapshot {
        seq: snapshot.seq.0,
        what,
    };
    let mut root = StateRoot::new();
    for item in state {
        let pushed = if item.deleted {
            root.push_tombstone_hashed(&item.path, blake3::hash(&item.body).as_bytes())
        } else {
            root.push(&item.path, &item.body)
        };
        pushed.map_err(|e| fail(e.to_string()))?;
    }
    let summary = root.finish();
    if summary.root != snapshot.state_root
        || summary.objects != snapshot.objects
        || summary.bytes != snapshot.bytes
    {
        return Err(fail(format!(
            "the state read for the restore ({} objects, {} bytes) does not give the state root it signs ({} objects, {} bytes)",
            summary.objects, summary.bytes, snapshot.objects, snapshot.bytes
        )));
    }
    Ok(())
}

/// The ids of the objects of a list, with each object as Kinto sent it; with `since`, the
/// tombstones too.
async fn list_ids(
    client: &KintoClient,
    list: &str,
    since: Option<i64>,
) -> Result<BTreeMap<String, Value>, DrillError> {
    let mut out = BTreeMap::new();
    let mut pages = client.pages(list, since, None);
    while let Some(answer) = pages.next().await? {
        let ListResult::Page(page) = answer else {
            continue;
        };
        for item in page.items {
            let value: Value = serde_json::from_str(item.get()).map_err(|e| {
                DrillError::Mismatch(format!("{list} answered an item that is not JSON: {e}"))
            })?;
            let id = value["id"].as_str().unwrap_or_default().to_owned();
            out.insert(id, value);
        }
    }
    Ok(out)
}

/// What a bucket on the scratch server holds, in short: the path and timestamp of the bucket
/// and of every live group, collection and record in it. Any write under it, by anyone, adds
/// an object, removes one or gives one a new timestamp. (Kinto's list ETags would be
/// cheaper, but they were seen to move on a scratch server nobody wrote to.)
async fn fingerprint(client: &KintoClient, bucket: &str) -> Result<String, DrillError> {
    let path = format!("buckets/{}", segment(bucket));
    let object = client.object(&format!("/{path}")).await?;
    let stamp = object
        .and_then(|o| serde_json::from_str::<Value>(o.get()).ok())
        .map(|o| o["data"]["last_modified"].to_string())
        .unwrap_or_else(|| "gone".to_owned());
    let mut hasher = blake3::Hasher::new();
    let mut add = |list: &str, id: &str, object: &Value| {
        let line = format!("{list}/{id}={}\n", object["last_modified"]);
        hasher.update(line.as_bytes());
    };
    add(
        "buckets",
        bucket,
        &serde_json::json!({ "last_modified": stamp }),
    );
    let groups = format!("{path}/groups");
    for (id, object) in list_ids(client, &groups, None).await? {
        add(&groups, &id, &object);
    }
    let collections = format!("{path}/collections");
    for (id, object) in list_ids(client, &collections, None).await? {
        add(&collections, &id, &object);
        let records = format!("{collections}/{}/records", segment(&id));
        for (id, object) in list_ids(client, &records, None).await? {
            add(&records, &id, &object);
        }
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// What a restored object must read back as.
#[derive(Debug, PartialEq)]
struct Expected {
    data: Value,
    /// `None` when the feed recorded none (the account that followed the source could not
    /// see them): not compared.
    permissions: Option<Value>,
    deleted: bool,
}

/// Principals sorted and empty lists left out: permissions are sets.
fn normalize_permissions(permissions: &Value) -> Value {
    let Some(map) = permissions.as_object() else {
        return permissions.clone();
    };
    let mut out = serde_json::Map::new();
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    for key in keys {
        let mut principals: Vec<String> = map[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if principals.is_empty() {
            continue;
        }
        principals.sort();
        principals.dedup();
        out.insert(key.clone(), Value::from(principals));
    }
    Value::Object(out)
}

fn expected(item: &StateItem) -> Result<Expected, DrillError> {
    let body: Value = serde_json::from_slice(&item.body).map_err(|e| {
        DrillError::Mismatch(format!("{}: recorded body is not JSON: {e}", item.path))
    })?;
    Ok(Expected {
        data: body["data"].clone(),
        permissions: body
            .get("permissions")
            .filter(|p| !p.is_null())
            .map(normalize_permissions),
        deleted: item.deleted,
    })
}

/// Reads the scratch server back and compares it with `state` (see the module docs).
async fn read_back(client: &KintoClient, state: &[StateItem]) -> Result<(), DrillError> {
    let mut want: BTreeMap<&str, Expected> = BTreeMap::new();
    for item in state {
        want.insert(&item.path, expected(item)?);
    }
    // Every live object the scratch holds, and the tombstones of the lists the state has.
    let mut live: BTreeMap<String, Value> = BTreeMap::new();
    let mut tombstones: BTreeMap<String, Value> = BTreeMap::new();
    // (path, as requested): ids are percent-encoded in requests.
    let mut lists: Vec<(String, String)> = vec![("/buckets".to_owned(), "buckets".to_owned())];
    while let Some((list, url)) = lists.pop() {
        let children: &[&str] = match list.split('/').count() {
            2 => &["groups", "collections"],
            4 if list.ends_with("/collections") => &["records"],
            _ => &[],
        };
        for (id, object) in list_ids(client, &url, Some(0)).await? {
            let path = format!("{list}/{id}");
            if object["deleted"] == Value::Bool(true) {
                if !(list.ends_with("/records") && id == RESTORE_MARKER) {
                    tombstones.insert(path, object);
                }
                continue;
            }
            for kind in children {
                lists.push((
                    format!("{path}/{kind}"),
                    format!("{url}/{}/{kind}", segment(&id)),
                ));
            }
            live.insert(path, object);
        }
    }
    let restored: BTreeSet<&str> = want
        .iter()
        .filter(|(_, e)| !e.deleted)
        .map(|(p, _)| *p)
        .collect();
    if let Some(extra) = live.keys().find(|p| !restored.contains(p.as_str())) {
        return Err(DrillError::Mismatch(format!(
            "it holds {extra}, which the snapshot does not"
        )));
    }
    for (path, expect) in &want {
        if expect.deleted {
            match tombstones.get(*path) {
                Some(found) if *found == expect.data => {}
                Some(found) => {
                    return Err(DrillError::Mismatch(format!(
                        "the tombstone {path} reads back as {found}, not {}",
                        expect.data
                    )));
                }
                None => {
                    return Err(DrillError::Mismatch(format!(
                        "the tombstone {path} is missing"
                    )));
                }
            }
            continue;
        }
        if !live.contains_key(*path) {
            return Err(DrillError::Mismatch(format!("{path} is missing")));
        }
        // Lists leave permissions out: each object is read on its own.
        let encoded: Vec<String> = path.split('/').skip(1).map(segment).collect();
        let Some(raw) = client.object(&encoded.join("/")).await? else {
            return Err(DrillError::Mismatch(format!("{path} is missing")));
        };
        let found: Value = serde_json::from_str(raw.get())
            .map_err(|e| DrillError::Mismatch(format!("{path} is not JSON: {e}")))?;
        if found["data"] != expect.data {
            return Err(DrillError::Mismatch(format!(
                "{path} reads back with other data than recorded"
            )));
        }
        // Kinto shows an object's permissions only to accounts its own ACL lets write it
        // (not to those the server settings let write everything): an empty answer says
        // nothing, and is not compared.
        let got = normalize_permissions(&found["permissions"]);
        let visible = got.as_object().is_some_and(|m| !m.is_empty());
        if let (Some(permissions), true) = (&expect.permissions, visible)
            && got != *permissions
        {
            return Err(DrillError::Mismatch(format!(
                "{path} reads back with permissions {got}, not the recorded {permissions}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_compare_as_sets() {
        let a = normalize_permissions(&serde_json::json!({"write": ["b", "a"], "read": []}));
        let b = normalize_permissions(&serde_json::json!({"write": ["a", "b", "a"]}));
        assert_eq!(a, b);
        assert_ne!(
            a,
            normalize_permissions(&serde_json::json!({"write": ["a"]}))
        );
    }

    #[test]
    fn accounts_and_the_source_description_are_not_drilled() {
        let item = |path: &str| StateItem {
            path: path.into(),
            body: b"{}".to_vec(),
            deleted: false,
            seq: crate::feed::Seq(1),
        };
        assert!(!drilled(&item("/accounts/alice")));
        assert!(!drilled(&item(super::super::ingest::SOURCE_PATH)));
        assert!(drilled(&item("/buckets/b")));
        assert_eq!(bucket_of("/buckets/b/collections/c").as_deref(), Some("b"));
        assert_eq!(bucket_of("/accounts/a"), None);
    }
}
