//! Restore: writes an origin's state at a chosen seq into a Kinto server, so that the server
//! answers like the one the feed was recorded from.
//!
//! The caller verifies the feed and picks the seq; this module only writes. What it writes:
//! every live object with its data (bytes as recorded, `last_modified` included) and
//! permissions, and every tombstone the source kept, list by list: buckets first, then each
//! bucket's groups and collections, then each collection's records. Within a list, objects go
//! in ascending `last_modified`, the order in which Kinto keeps client-supplied timestamps (see
//! `kinto-interop.md`). A tombstone at `T` is replayed as a placeholder created at
//! `last_modified = 1` and deleted with `?last_modified=T` and `If-Match: "1"`, so that only the
//! placeholder can be deleted, never an object the target holds.
//!
//! What cannot come back: a list's ETag. Kinto stamps a list with the current time on the
//! first request that touches it, before any write, so a restored list's ETag is the time of
//! the restore, newer than the original (never older: clients miss no change).
//!
//! # Devices that synced with the lost server
//!
//! kinto.js raises `ServerWasFlushedError` when a list's ETag is newer than its cursor and
//! `_since=<cursor>` returns nothing. So that devices whose cursor the restored state covers
//! sync on, every restored records list ends with a tombstone for the reserved id
//! [`RESTORE_MARKER`], one millisecond after the newest timestamp restored in the list: any
//! cursor at or before that timestamp gets a non-empty answer (a tombstone of an unknown id,
//! which clients skip). A device whose cursor is newer saw changes the backup never received:
//! it gets nothing since its cursor under a newer ETag, which is the flush signal, and it
//! uploads its records again. (Once the restored list is written again, such a device gets
//! those writes instead and is no longer told.) A list with nothing restored in it gets no
//! marker.
//!
//! Writes go through `POST /v1/batch`, at most `batch_max_requests` per call, a few lists at
//! once. Every put is conditional (`If-None-Match: *`): an object already there with the same
//! timestamp is left alone, one with another timestamp stops the restore (named, untouched).
//! So a restore is idempotent, and one that was killed resumes where it stopped without writing
//! any object twice (tombstones are replayed again, which leaves the same tombstone).
//!
//! The target must store permissions as sent: with `kinto.explicit_permissions = false` Kinto
//! does not add the writing account to each object's `write` list (see docs/operating.md).
//!
//! # Through the kinto-tandem plugin
//!
//! When the target runs the plugin (`docs/kinto-plugin.md`), objects go through its restore
//! endpoint instead, in the same order and the same chunks: it writes data, timestamps and
//! permissions exactly whatever `explicit_permissions` says, accounts with their password
//! hashes, tombstones as tombstones, and the history entries of what it wrote. Each object is
//! answered `created`, `unchanged` (already there with the same timestamp) or `conflict`, which
//! stops the restore as a retimed object does above. Without the plugin, accounts cannot be
//! restored (Kinto hashes whatever password it is given): the report names them.
//!
//! # Part of an origin
//!
//! A [`Selection`] restores only some buckets or collections, with everything under them,
//! typically to move one member's data into a server that holds others. Every object the
//! selection names must be live in the state, or nothing is written ([`RestoreError::NotHeld`]).
//! Nothing outside the selection is written: no accounts (they belong to the whole server),
//! and no other bucket, group or collection, not even a tombstone. The conditional writes above
//! are what make a non-empty target safe: an object the selection brings that the target holds
//! otherwise stops the restore, named and untouched. One exception: a bucket brought only as
//! the parent of chosen collections, which the target already holds, is left as it is there
//! (data and permissions: it is the target's), the collections are written into it, and the
//! report names it.
//!
//! # Secrets that decide identities
//!
//! Default bucket ids and `basicauth:` principals are HMACs under the server's secrets. When
//! the source ran the plugin, its fingerprint of them is in the feed (`/tandem/source`); a
//! target whose fingerprint differs is refused before anything is written, unless the caller
//! accepts it, since its users would not find their default buckets.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::task::JoinSet;

use crate::replicate::moves::{self, Moved};
use crate::replicate::select::Selection;
use crate::source::kinto::{KintoClient, KintoError, SubAnswer};
use crate::store::StateItem;

/// The id of the tombstone that ends every restored records list (see the module docs).
/// Ingest never records it.
pub const RESTORE_MARKER: &str = "tandem-restored";

/// Lists written at the same time, by default. Measured against a single-process Kinto on two
/// cores: 1 and 2 are as fast as a plain sequential batch script, 4 is 30% slower (Kinto's
/// threads contend); a Kinto with several worker processes may take more.
pub const CONCURRENCY: usize = 2;

/// Why a restore stopped. Everything written before stays, and a new run resumes.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Objects hold U+0000, which a PostgreSQL-backed Kinto cannot store.
    #[error(
        "{} object(s) hold the character U+0000 in a string, which Kinto on PostgreSQL cannot store (the write fails with 503, every time): {}{}. Run again with --nul skip to restore everything else, or --nul write if the target keeps its data in memory; nothing was written",
        paths.len(),
        paths.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
        if paths.len() > 10 { ", …" } else { "" }
    )]
    NulStrings {
        /// The objects.
        paths: Vec<String>,
    },
    /// The target's identity secrets differ from the source's.
    #[error(
        "the target's secrets differ from the source's (fingerprint {target} instead of {recorded}): its users would get other default buckets and basicauth principals. Copy kinto.userid_hmac_secret (and kinto.default_bucket_hmac_secret, if the source set it) from the source's ini to the target's and restart it, or accept the difference with --ignore-secrets-mismatch; nothing was written"
    )]
    SecretsDiffer {
        /// What the source's plugin published.
        recorded: String,
        /// What the target's publishes (`unknown` without the plugin).
        target: String,
    },
    /// A chosen bucket or collection is not in the state at the chosen point.
    #[error(
        "the origin held no {} at this point ({}); nothing was written",
        missing.join(", "),
        held_buckets(held)
    )]
    NotHeld {
        /// What is missing, e.g. `bucket alice` or `collection alice/c (deleted before)`.
        missing: Vec<String>,
        /// The ids of the buckets the state holds.
        held: Vec<String>,
    },
    /// Talking to the target failed.
    #[error(transparent)]
    Kinto(#[from] KintoError),
    /// An object the feed holds cannot be written to Kinto.
    #[error("cannot restore {path}: {what}")]
    Unrestorable {
        /// The object.
        path: String,
        /// Why.
        what: String,
    },
    /// The target refused a write.
    #[error("the target refused {method} {path} (HTTP {status}): {message}")]
    Refused {
        /// PUT or DELETE.
        method: &'static str,
        /// The object.
        path: String,
        /// Kinto's status.
        status: u16,
        /// Kinto's message.
        message: String,
    },
    /// A chosen bucket or collection moved to another server.
    #[error(
        "{}: restore from there (or from the backups of the node that follows it), or pass --include-moved to restore the copy this origin kept from before the move; nothing was written",
        moved.iter().map(|m| format!("{} moved to {} (migration {}, every change up to seq {} is there)", m.describe(), m.to, m.migration, m.applied_seq)).collect::<Vec<_>>().join("; ")
    )]
    Moved {
        /// The statements.
        moved: Vec<Moved>,
    },
    /// The target kept another timestamp than the one sent.
    #[error(
        "the target stored {path} with last_modified {stored} instead of {sent}: it holds newer data there; restore into an empty server or bucket"
    )]
    Retimed {
        /// The object.
        path: String,
        /// What was sent.
        sent: i64,
        /// What Kinto kept.
        stored: i64,
    },
}

/// The buckets a state holds, for [`RestoreError::NotHeld`]: a few of them.
fn held_buckets(held: &[String]) -> String {
    const SHOWN: usize = 10;
    match held.len() {
        0 => "it held no bucket".to_owned(),
        n if n <= SHOWN => format!("its buckets: {}", held.join(", ")),
        n => format!("{n} buckets, among them {}, …", held[..SHOWN].join(", ")),
    }
}

/// What a restore did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RestoreReport {
    /// Whether the target's kinto-tandem plugin wrote the objects.
    pub via_plugin: bool,
    /// Accounts in the state that could not be restored (the target has no plugin): their
    /// users must be created again, with new passwords.
    pub accounts_not_restored: Vec<String>,
    /// Accounts the target already had under another version (e.g. the account restoring):
    /// the target's are kept.
    pub accounts_kept: Vec<String>,
    /// Buckets brought only as the parent of chosen collections that the target already had:
    /// left as they are there (see the module docs).
    pub buckets_kept: Vec<String>,
    /// Objects not restored because they hold U+0000 (with [`NulStrings::Skip`]).
    pub skipped_nul: Vec<String>,
    /// Live objects in the restored state.
    pub objects: u64,
    /// Tombstones in it.
    pub tombstones: u64,
    /// Live objects written now.
    pub written: u64,
    /// Live objects already on the target with the same timestamp.
    pub skipped: u64,
    /// Batch calls made.
    pub batches: u64,
    /// Buckets and collections the state says moved to another server: left out, or, with
    /// [`RestoreOptions::include_moved`], restored from the copy kept before the move.
    pub moved: Vec<Moved>,
}

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// What to restore: everything, or some buckets and collections.
    pub selection: Selection,
    /// Lists written at the same time.
    pub concurrency: usize,
    /// Go on when the target's secrets fingerprint differs from the source's.
    pub ignore_secrets_mismatch: bool,
    /// What to do with objects holding U+0000 in a string.
    pub nul: NulStrings,
    /// Restore buckets and collections that moved to another server too (from the copy this
    /// origin kept before the move) instead of leaving them out.
    pub include_moved: bool,
}

/// What to do with objects holding the character U+0000 in a string (key or value), which
/// Kinto on PostgreSQL cannot store: a batch holding one fails with `503`, every time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NulStrings {
    /// Stop before writing anything, and name them.
    #[default]
    Refuse,
    /// Restore everything else, and name them.
    Skip,
    /// Write them (a target on the memory backend stores them).
    Write,
}

/// One object to write.
struct Item {
    /// Kinto's resource name (`bucket`, `record`…).
    kind: &'static str,
    path: String,
    id: String,
    last_modified: i64,
    /// `{"data":…,"permissions":…}` as recorded (live objects).
    body: Vec<u8>,
    deleted: bool,
    /// A bucket brought only as the parent of chosen collections: one already on the target is
    /// kept as it is.
    keep_existing: bool,
}

/// The objects of one list (a plural endpoint), and the phase it belongs to.
struct List {
    path: String,
    phase: u8,
    items: Vec<Item>,
}

/// The live buckets of `state` recorded without permissions: restored, they grant nobody access.
pub fn buckets_without_permissions(state: &[StateItem]) -> Vec<String> {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        permissions: Option<&'a RawValue>,
    }
    state
        .iter()
        .filter(|i| !i.deleted)
        .filter(|i| {
            let segments: Vec<&str> = i.path.trim_start_matches('/').split('/').collect();
            matches!(segments.as_slice(), ["buckets", _])
        })
        .filter(|i| {
            serde_json::from_slice::<Body<'_>>(&i.body)
                .map_or(true, |b| b.permissions.is_none_or(|p| p.get() == "{}"))
        })
        .map(|i| i.path.clone())
        .collect()
}

/// `state` without the buckets and collections its moved statements say live elsewhere now
/// (see [`crate::replicate::moves`]), and those statements. The statements themselves stay
/// in the state (nothing writes them). A selection that names a moved object, or something
/// within one, is refused unless `include_moved`, which keeps everything.
pub fn leave_out_moved(
    state: Vec<StateItem>,
    selection: &Selection,
    include_moved: bool,
) -> Result<(Vec<StateItem>, Vec<Moved>), RestoreError> {
    let moved: Vec<Moved> = moves::in_state(&state)
        .into_iter()
        .filter(|m| selection.includes(&m.path))
        .collect();
    if moved.is_empty() || include_moved {
        return Ok((state, moved));
    }
    let asked: Vec<Moved> = moved
        .iter()
        .filter(|m| selection.named().iter().any(|(_, _, path)| m.covers(path)))
        .cloned()
        .collect();
    if !asked.is_empty() {
        return Err(RestoreError::Moved { moved: asked });
    }
    let state = state
        .into_iter()
        .filter(|i| !moved.iter().any(|m| m.covers(&i.path)))
        .collect();
    Ok((state, moved))
}

/// The part of `state` that `selection` chooses, and the source's description (its secrets
/// fingerprint decides whether the target may be written). Fails, before anything is written,
/// when a chosen bucket or collection is not live in `state`. Selecting twice changes nothing.
pub fn select(
    state: Vec<StateItem>,
    selection: &Selection,
) -> Result<Vec<StateItem>, RestoreError> {
    if selection.is_all() {
        return Ok(state);
    }
    let deleted: std::collections::HashMap<&str, bool> =
        state.iter().map(|i| (i.path.as_str(), i.deleted)).collect();
    let missing: Vec<String> = selection
        .named()
        .into_iter()
        .filter_map(|(what, name, path)| match deleted.get(path.as_str()) {
            Some(false) => None,
            Some(true) => Some(format!("{what} {name} (deleted before)")),
            None => Some(format!("{what} {name}")),
        })
        .collect();
    if !missing.is_empty() {
        let held = state
            .iter()
            .filter(|i| !i.deleted)
            .filter_map(|i| i.path.strip_prefix("/buckets/"))
            .filter(|id| !id.contains('/'))
            .map(str::to_owned)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        return Err(RestoreError::NotHeld { missing, held });
    }
    Ok(state
        .into_iter()
        .filter(|i| moves::is_tandem_path(&i.path) || selection.includes(&i.path))
        .collect())
}

/// The lists to write, and the source's secrets fingerprint if the feed recorded one.
struct Plan {
    lists: Vec<List>,
    fingerprint: Option<String>,
}

/// Groups the state into lists, each sorted by `last_modified`; marks the buckets `selection`
/// brings only as parents.
fn plan(state: Vec<StateItem>, selection: &Selection) -> Result<Plan, RestoreError> {
    let mut lists: BTreeMap<String, List> = BTreeMap::new();
    let mut fingerprint = None;
    for item in state {
        if item.path == crate::replicate::ingest::SOURCE_PATH {
            #[derive(Deserialize)]
            struct Source {
                data: SourceData,
            }
            #[derive(Deserialize)]
            struct SourceData {
                secrets_fingerprint: String,
            }
            fingerprint = serde_json::from_slice::<Source>(&item.body)
                .ok()
                .map(|s| s.data.secrets_fingerprint);
            continue;
        }
        if moves::is_tandem_path(&item.path) {
            // Moved statements: about the feed, not objects of the server.
            continue;
        }
        let unrestorable = |what: &str| RestoreError::Unrestorable {
            path: item.path.clone(),
            what: what.to_owned(),
        };
        let segments: Vec<&str> = item.path.trim_start_matches('/').split('/').collect();
        let (phase, kind) = match segments.as_slice() {
            ["accounts", _] => (0, "account"),
            ["buckets", _] => (1, "bucket"),
            ["buckets", _, "groups", _] => (2, "group"),
            ["buckets", _, "collections", _] => (2, "collection"),
            ["buckets", _, "collections", _, "records", _] => (3, "record"),
            _ => {
                return Err(unrestorable(
                    "not a Kinto account, bucket, group, collection or record",
                ));
            }
        };
        let (list, id) = item.path.rsplit_once('/').expect("a path with segments");
        let last_modified = if item.body.is_empty() {
            return Err(unrestorable("a tombstone without its timestamp"));
        } else {
            data_stamp(&item.body).map_err(|what| unrestorable(&what))?
        };
        let entry = lists.entry(list.to_owned()).or_insert_with(|| List {
            path: list.to_owned(),
            phase,
            items: Vec::new(),
        });
        entry.items.push(Item {
            kind,
            keep_existing: kind == "bucket" && selection.is_parent_only(&item.path),
            id: id.to_owned(),
            path: item.path,
            last_modified,
            body: item.body,
            deleted: item.deleted,
        });
    }
    let mut out: Vec<List> = lists.into_values().collect();
    for list in &mut out {
        list.items
            .retain(|i| i.kind != "record" || i.id != RESTORE_MARKER);
        list.items.sort_by_key(|i| i.last_modified);
        // Records lists end with the marker tombstone, one millisecond after the newest
        // timestamp restored (see the module docs).
        if list.phase == 3
            && let Some(newest) = list.items.last().map(|i| i.last_modified)
        {
            let id = RESTORE_MARKER.to_owned();
            let path = format!("{}/{id}", list.path);
            let last_modified = newest + 1;
            list.items.push(Item {
                kind: "record",
                body: format!(
                    r#"{{"data":{{"deleted":true,"id":"{id}","last_modified":{last_modified}}}}}"#
                )
                .into_bytes(),
                id,
                path,
                last_modified,
                deleted: true,
                keep_existing: false,
            });
        }
    }
    Ok(Plan {
        lists: out,
        fingerprint,
    })
}

/// Whether a JSON text holds the escape `\u0000` (JSON cannot carry a raw U+0000, and a
/// backslash outside strings is not JSON).
fn holds_nul(json: &[u8]) -> bool {
    let mut i = 0;
    while i < json.len() {
        if json[i] == b'\\' {
            if json.get(i + 1) == Some(&b'u') && json.get(i + 2..i + 6) == Some(b"0000") {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

/// Objects per request to the plugin's restore endpoint (its default limit is 1,000).
const PLUGIN_CHUNK: usize = 500;

/// The plugin's answer for one object.
#[derive(Deserialize)]
struct PluginResult {
    uri: String,
    status: String,
    #[serde(default)]
    existing_last_modified: Option<i64>,
}

/// Restores one list through the plugin's endpoint.
async fn restore_list_plugin(
    client: Arc<KintoClient>,
    list: List,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<RestoreReport, RestoreError> {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        data: &'a RawValue,
        #[serde(borrow, default)]
        permissions: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Answer {
        results: Vec<PluginResult>,
    }
    let mut report = RestoreReport::default();
    for chunk in list.items.chunks(PLUGIN_CHUNK) {
        let mut request = Vec::with_capacity(chunk.iter().map(|i| i.body.len() + 96).sum());
        request.extend_from_slice(b"{\"objects\":[");
        for (n, item) in chunk.iter().enumerate() {
            let body: Body<'_> =
                serde_json::from_slice(&item.body).map_err(|e| RestoreError::Unrestorable {
                    path: item.path.clone(),
                    what: format!("body is not {{\"data\":…}}: {e}"),
                })?;
            if n > 0 {
                request.push(b',');
            }
            let uri = serde_json::to_string(&item.path).expect("a string");
            request.extend_from_slice(
                format!(
                    "{{\"uri\":{uri},\"resource_name\":\"{}\",\"data\":{}",
                    item.kind,
                    // Numbers as Kinto's parsers read them exactly (see `exact_for_kinto`).
                    crate::source::kinto::exact_for_kinto(body.data.get())
                )
                .as_bytes(),
            );
            if !item.deleted {
                let permissions = body.permissions.map_or("{}", RawValue::get);
                request.extend_from_slice(format!(",\"permissions\":{permissions}").as_bytes());
            }
            request.push(b'}');
        }
        request.extend_from_slice(b"]}");
        let answer = client.post("tandem/restore", request).await?;
        report.batches += 1;
        let answer: Answer =
            serde_json::from_slice(&answer).map_err(|e| RestoreError::Unrestorable {
                path: list.path.clone(),
                what: format!("the target's plugin answered something unreadable: {e}"),
            })?;
        if answer.results.len() != chunk.len() {
            return Err(RestoreError::Unrestorable {
                path: list.path.clone(),
                what: format!(
                    "the target's plugin answered {} results for {} objects",
                    answer.results.len(),
                    chunk.len()
                ),
            });
        }
        for (item, result) in chunk.iter().zip(answer.results) {
            if result.uri != item.path {
                return Err(RestoreError::Unrestorable {
                    path: item.path.clone(),
                    what: format!("the target's plugin answered for {} instead", result.uri),
                });
            }
            if item.deleted {
                report.tombstones += 1;
            } else {
                report.objects += 1;
            }
            match result.status.as_str() {
                "created" if !item.deleted => report.written += 1,
                "unchanged" if !item.deleted => report.skipped += 1,
                "created" | "unchanged" => {}
                // An account made on the target before the restore (the restoring account
                // itself, typically) is the target's to keep, not a reason to stop.
                "conflict" if item.kind == "account" => {
                    report.skipped += 1;
                    report.accounts_kept.push(item.id.clone());
                }
                // A bucket brought only for its chosen collections is the target's to keep.
                "conflict" if item.keep_existing && result.existing_last_modified.is_some() => {
                    report.skipped += 1;
                    report.buckets_kept.push(item.id.clone());
                }
                "conflict" => {
                    return Err(match result.existing_last_modified {
                        Some(stored) => RestoreError::Retimed {
                            path: item.path.clone(),
                            sent: item.last_modified,
                            stored,
                        },
                        // Nothing at this path, but its timestamp is taken in the list.
                        None => RestoreError::Refused {
                            method: "POST",
                            path: item.path.clone(),
                            status: 200,
                            message: format!(
                                "the target's list already holds another object at last_modified {} (or that is the list's own timestamp): restore into an empty server",
                                item.last_modified
                            ),
                        },
                    });
                }
                other => {
                    return Err(RestoreError::Refused {
                        method: "POST",
                        path: item.path.clone(),
                        status: 200,
                        message: format!("unknown result {other:?}"),
                    });
                }
            }
        }
        progress(chunk.len() as u64);
    }
    Ok(report)
}

/// What is percent-encoded in a path segment: everything but letters, digits, `-` and `_`
/// (Kinto's default id characters).
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_');

/// Sub-requests of one item: (method, request).
type Requests = Vec<(&'static str, Box<RawValue>)>;

/// Sub-requests for one item. Puts are conditional (`If-None-Match: *`): an object already
/// there is not written again, and its answer (412, with the existing object) tells whether it
/// is the one being restored. A tombstone is a placeholder put at `last_modified = 1` and a
/// delete at the tombstone's timestamp.
fn requests(item: &Item) -> Requests {
    if item.deleted {
        vec![
            ("PUT", placeholder_request(&item.path, &item.id)),
            // Only the placeholder (at last_modified 1) may be deleted: a live object the
            // target already holds there makes this fail (412) instead of deleting it.
            (
                "DELETE",
                delete_request(&item.path, Some(item.last_modified), 1),
            ),
        ]
    } else {
        vec![(
            "PUT",
            put_request(&item.path, &item.body, Precondition::Absent),
        )]
    }
}

/// `path` with every segment percent-encoded: Kinto decodes `%xx` in batch paths and splits
/// them at `?`, so no id (from any origin) can point elsewhere or smuggle in a parameter.
pub(crate) fn encoded_path(path: &str) -> String {
    path.split('/')
        .map(|segment| percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// What a conditional write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Precondition {
    /// No live object (`If-None-Match: *`; a tombstone counts as none).
    Absent,
    /// The live object at this timestamp (`If-Match: "T"`).
    At(i64),
}

impl Precondition {
    fn header(self) -> String {
        match self {
            Precondition::Absent => r#""headers":{"If-None-Match":"*"}"#.to_owned(),
            Precondition::At(t) => format!(r#""headers":{{"If-Match":"\"{t}\""}}"#),
        }
    }
}

/// A batch sub-request that puts `body` (`{"data":…,"permissions":…}` as recorded, its
/// `last_modified` included) at `path`, on condition.
pub(crate) fn put_request(path: &str, body: &[u8], pre: Precondition) -> Box<RawValue> {
    let path = serde_json::to_string(&encoded_path(path)).expect("a string");
    let body = String::from_utf8_lossy(body);
    // Numbers as Kinto's parser reads them exactly (see `exact_for_kinto`).
    let body = crate::source::kinto::exact_for_kinto(&body);
    RawValue::from_string(format!(
        r#"{{"method":"PUT","path":{path},{},"body":{body}}}"#,
        pre.header()
    ))
    .expect("built as JSON")
}

/// A batch sub-request that deletes the object at `path` if it is live at `at`, leaving a
/// tombstone at `last_modified` (Kinto keeps it when it is newer than the object's).
pub(crate) fn delete_request(path: &str, last_modified: Option<i64>, at: i64) -> Box<RawValue> {
    let mut target = encoded_path(path);
    if let Some(t) = last_modified {
        target.push_str(&format!("?last_modified={t}"));
    }
    let target = serde_json::to_string(&target).expect("a string");
    RawValue::from_string(format!(
        r#"{{"method":"DELETE","path":{target},{}}}"#,
        Precondition::At(at).header()
    ))
    .expect("built as JSON")
}

/// A batch sub-request that creates the placeholder a tombstone is replayed from: an empty
/// object at `last_modified = 1`, where no live object is.
pub(crate) fn placeholder_request(path: &str, id: &str) -> Box<RawValue> {
    let path = serde_json::to_string(&encoded_path(path)).expect("a string");
    let id = serde_json::to_string(id).expect("a string");
    RawValue::from_string(format!(
        r#"{{"method":"PUT","path":{path},{},"body":{{"data":{{"id":{id},"last_modified":1}}}}}}"#,
        Precondition::Absent.header()
    ))
    .expect("built as JSON")
}

/// The `last_modified` in the `data` of a recorded body.
pub(crate) fn data_stamp(body: &[u8]) -> Result<i64, String> {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        data: &'a RawValue,
    }
    #[derive(Deserialize)]
    struct Stamp {
        last_modified: i64,
    }
    let body: Body<'_> =
        serde_json::from_slice(body).map_err(|e| format!("body is not {{\"data\":…}}: {e}"))?;
    serde_json::from_str::<Stamp>(body.data.get())
        .map(|s| s.last_modified)
        .map_err(|e| format!("data has no last_modified: {e}"))
}

/// How many sub-requests to send per batch to a server that says `info`.
pub(crate) fn batch_max(info: &crate::source::kinto::ServerInfo) -> usize {
    info.batch_max_requests.unwrap_or(100).clamp(2, 500) as usize
}

/// What became of one object on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Written now.
    Written,
    /// Already there, as restored.
    Present,
    /// Already there otherwise, and kept (a bucket brought only as a parent).
    Kept,
}

/// Checks one sub-response.
fn check(item: &Item, method: &'static str, answer: &SubAnswer) -> Result<Outcome, RestoreError> {
    let status = answer.status;
    let expected = match method {
        "PUT" if item.deleted => 1,
        _ => item.last_modified,
    };
    if status == 412 && method == "DELETE" {
        let stored = answer.existing_last_modified.unwrap_or(0);
        return Err(RestoreError::Retimed {
            path: item.path.clone(),
            sent: item.last_modified,
            stored,
        });
    }
    if status == 412 && method == "PUT" {
        // Already there: from an earlier run of this restore if its timestamp is ours (a
        // tombstone's placeholder: anything may be there, the delete settles it).
        let existing = answer.existing_last_modified;
        return match existing {
            _ if item.deleted => Ok(Outcome::Present),
            Some(stored) if stored == expected => Ok(Outcome::Present),
            Some(_) if item.keep_existing => Ok(Outcome::Kept),
            Some(stored) => Err(RestoreError::Retimed {
                path: item.path.clone(),
                sent: expected,
                stored,
            }),
            None => Err(RestoreError::Refused {
                method,
                path: item.path.clone(),
                status,
                message: "precondition failed without the existing object".into(),
            }),
        };
    }
    if status >= 400 {
        return Err(RestoreError::Refused {
            method,
            path: item.path.clone(),
            status,
            message: answer.message.clone(),
        });
    }
    match answer.last_modified {
        Some(stored) if stored != expected => Err(RestoreError::Retimed {
            path: item.path.clone(),
            sent: expected,
            stored,
        }),
        _ => Ok(Outcome::Written),
    }
}

/// Restores one list; `progress` is called with the number of items done.
async fn restore_list(
    client: Arc<KintoClient>,
    list: List,
    batch_max: usize,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<RestoreReport, RestoreError> {
    tracing::debug!(list = %list.path, items = list.items.len(), "restoring a list");
    let mut report = RestoreReport::default();
    // Batches of whole items (a tombstone's two requests stay together).
    let mut batches: Vec<Vec<(&Item, Requests)>> = vec![Vec::new()];
    let mut queued = 0;
    for item in &list.items {
        if item.deleted {
            report.tombstones += 1;
        } else {
            report.objects += 1;
        }
        let reqs = requests(item);
        if queued + reqs.len() > batch_max && queued > 0 {
            batches.push(Vec::new());
            queued = 0;
        }
        queued += reqs.len();
        batches.last_mut().expect("one batch").push((item, reqs));
    }
    for batch in batches.into_iter().filter(|b| !b.is_empty()) {
        let requests: Vec<Box<RawValue>> = batch
            .iter()
            .flat_map(|(_, reqs)| reqs.iter().map(|(_, r)| r.clone()))
            .collect();
        let answers = client.batch(&requests).await?;
        report.batches += 1;
        let mut answers = answers.into_iter();
        for (item, reqs) in &batch {
            let mut outcome = Outcome::Present;
            for (method, _) in reqs {
                let answer = answers.next().expect("one answer per request");
                match check(item, method, &answer)? {
                    Outcome::Present => {}
                    other => outcome = other,
                }
            }
            // Tombstones are replayed every time (the target's lists are not read, see the
            // module docs); replaying one again leaves the same tombstone.
            match (item.deleted, outcome) {
                (true, _) => {}
                (false, Outcome::Written) => report.written += 1,
                (false, Outcome::Present) => report.skipped += 1,
                (false, Outcome::Kept) => {
                    report.skipped += 1;
                    report.buckets_kept.push(item.id.clone());
                }
            }
        }
        progress(batch.len() as u64);
    }
    Ok(report)
}

/// Writes `state` (the part of it `options.selection` chooses) into the Kinto server behind
/// `client`. `progress` is called as objects are done (written or found already there), with
/// how many.
pub async fn restore(
    client: Arc<KintoClient>,
    state: Vec<StateItem>,
    options: RestoreOptions,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<RestoreReport, RestoreError> {
    let (state, moved) = leave_out_moved(state, &options.selection, options.include_moved)?;
    let state = select(state, &options.selection)?;
    let info = client.server_info().await?;
    let batch_max = batch_max(&info);
    let Plan {
        mut lists,
        fingerprint,
    } = plan(state, &options.selection)?;
    let with_nul: Vec<String> = lists
        .iter()
        .flat_map(|l| l.items.iter())
        .filter(|i| !i.deleted && holds_nul(&i.body))
        .map(|i| i.path.clone())
        .collect();
    let mut skipped_nul = Vec::new();
    if !with_nul.is_empty() {
        match options.nul {
            NulStrings::Refuse => return Err(RestoreError::NulStrings { paths: with_nul }),
            NulStrings::Write => {}
            NulStrings::Skip => {
                for list in &mut lists {
                    list.items.retain(|i| i.deleted || !holds_nul(&i.body));
                }
                progress(with_nul.len() as u64);
                skipped_nul = with_nul;
            }
        }
    }
    let plugin = info.tandem.as_ref().filter(|p| p.restore).is_some();
    if let Some(recorded) = fingerprint {
        let target = info
            .tandem
            .as_ref()
            .and_then(|p| p.secrets_fingerprint.clone());
        match target {
            Some(target) if target != recorded => {
                if !options.ignore_secrets_mismatch {
                    return Err(RestoreError::SecretsDiffer { recorded, target });
                }
                tracing::warn!(%recorded, %target, "restoring into a target whose secrets differ from the source's");
            }
            Some(_) => {}
            None => tracing::warn!(
                "the target does not publish its secrets fingerprint (no kinto-tandem plugin): if its kinto.userid_hmac_secret differs from the source's, users get other default buckets and basicauth principals"
            ),
        }
    }
    let mut total = RestoreReport {
        via_plugin: plugin,
        skipped_nul,
        moved,
        ..RestoreReport::default()
    };
    if !plugin {
        if info.explicit_permissions {
            tracing::warn!(
                "the target adds the restoring account to every object's write permissions (kinto.explicit_permissions is true): permissions will not be exactly the recorded ones"
            );
        }
        // Kinto hashes whatever password it is given: accounts cannot come back through its
        // API. Name them instead.
        let (accounts, rest): (Vec<List>, Vec<List>) =
            lists.into_iter().partition(|l| l.path == "/accounts");
        lists = rest;
        for list in accounts {
            progress(list.items.len() as u64);
            total
                .accounts_not_restored
                .extend(list.items.into_iter().filter(|i| !i.deleted).map(|i| i.id));
        }
    }
    for phase in 0..=3u8 {
        let mut set = JoinSet::new();
        let semaphore = Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)));
        let (now, later): (Vec<List>, Vec<List>) =
            lists.into_iter().partition(|l| l.phase == phase);
        lists = later;
        for list in now {
            let (client, progress, semaphore) =
                (client.clone(), progress.clone(), semaphore.clone());
            set.spawn(async move {
                let _permit = semaphore.acquire_owned().await.expect("never closed");
                if plugin {
                    restore_list_plugin(client, list, progress).await
                } else {
                    restore_list(client, list, batch_max, progress).await
                }
            });
        }
        while let Some(done) = set.join_next().await {
            let r = done.expect("restore task panicked")?;
            total.objects += r.objects;
            total.tombstones += r.tombstones;
            total.written += r.written;
            total.skipped += r.skipped;
            total.batches += r.batches;
            total.accounts_kept.extend(r.accounts_kept);
            total.buckets_kept.extend(r.buckets_kept);
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Seq;

    fn item(path: &str, lm: i64, deleted: bool) -> StateItem {
        let id = path.rsplit('/').next().unwrap();
        let body = if deleted {
            format!(r#"{{"data":{{"id":"{id}","last_modified":{lm},"deleted":true}}}}"#)
        } else {
            format!(
                r#"{{"data":{{"id":"{id}","last_modified":{lm}}},"permissions":{{"read":["system.Everyone"]}}}}"#
            )
        };
        StateItem {
            path: path.into(),
            body: body.into_bytes(),
            deleted,
            seq: Seq(1),
        }
    }

    fn plan_all(state: Vec<StateItem>) -> Result<Plan, RestoreError> {
        plan(state, &Selection::all())
    }

    #[test]
    fn the_plan_groups_lists_by_phase_and_sorts_by_timestamp() {
        let lists = plan_all(vec![
            item("/buckets/b", 5, false),
            item("/buckets/b/collections/c", 7, false),
            item("/buckets/b/collections/c/records/r1", 30, false),
            item("/buckets/b/collections/c/records/r2", 20, true),
            item("/buckets/b/groups/g", 6, false),
        ])
        .unwrap()
        .lists;
        let summary: Vec<(String, u8, Vec<i64>)> = lists
            .iter()
            .map(|l| {
                (
                    l.path.clone(),
                    l.phase,
                    l.items.iter().map(|i| i.last_modified).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("/buckets".into(), 1, vec![5]),
                ("/buckets/b/collections".into(), 2, vec![7]),
                // The records end with the restore marker, 1 ms after the newest.
                (
                    "/buckets/b/collections/c/records".into(),
                    3,
                    vec![20, 30, 31]
                ),
                ("/buckets/b/groups".into(), 2, vec![6]),
            ]
        );
        assert_eq!(
            plan_all(vec![item("/accounts/a", 1, false)]).unwrap().lists[0].phase,
            0
        );
        assert!(plan_all(vec![item("/accounts/a/b", 1, false)]).is_err());
        assert!(plan_all(vec![item("/history/h", 1, false)]).is_err());
    }

    #[test]
    fn a_selection_keeps_its_objects_and_the_source_description_only() {
        let state = vec![
            item("/accounts/alice", 1, false),
            item("/tandem/source", 1, false),
            item("/buckets/alice", 5, false),
            item("/buckets/alice/groups/g", 6, false),
            item("/buckets/alice/collections/c1", 7, false),
            item("/buckets/alice/collections/c1/records/r", 8, false),
            item("/buckets/alice/collections/c2", 9, false),
            item("/buckets/alice/collections/old", 10, true),
            item("/buckets/bob", 11, false),
            item("/buckets/gone", 12, true),
        ];
        let paths = |s: &[StateItem]| s.iter().map(|i| i.path.clone()).collect::<Vec<_>>();
        let bucket = Selection::parse(&["alice".into()], &[]).unwrap();
        let chosen = select(state.clone(), &bucket).unwrap();
        assert_eq!(
            paths(&chosen),
            [
                "/tandem/source",
                "/buckets/alice",
                "/buckets/alice/groups/g",
                "/buckets/alice/collections/c1",
                "/buckets/alice/collections/c1/records/r",
                "/buckets/alice/collections/c2",
                "/buckets/alice/collections/old",
            ]
        );
        assert_eq!(
            paths(&select(chosen, &bucket).unwrap()).len(),
            7,
            "idempotent"
        );
        let collection = Selection::parse(&[], &["alice/c1".into()]).unwrap();
        let chosen = select(state.clone(), &collection).unwrap();
        assert_eq!(
            paths(&chosen),
            [
                "/tandem/source",
                "/buckets/alice",
                "/buckets/alice/collections/c1",
                "/buckets/alice/collections/c1/records/r",
            ]
        );
        // The bucket is brought as a parent: one on the target is kept.
        let lists = plan(chosen, &collection).unwrap().lists;
        let buckets = lists.iter().find(|l| l.path == "/buckets").unwrap();
        assert!(buckets.items[0].keep_existing);
        let lists = plan(select(state.clone(), &bucket).unwrap(), &bucket)
            .unwrap()
            .lists;
        assert!(
            lists
                .iter()
                .flat_map(|l| &l.items)
                .all(|i| !i.keep_existing)
        );
        assert_eq!(select(state.clone(), &Selection::all()).unwrap().len(), 10);

        // What the state does not hold, deleted or never there, is named with the buckets it
        // does hold.
        let absent =
            Selection::parse(&["gone".into(), "carol".into()], &["alice/old".into()]).unwrap();
        let e = select(state, &absent).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(
                "bucket carol, bucket gone (deleted before), collection alice/old (deleted before)"
            ),
            "{text}"
        );
        assert!(text.contains("(its buckets: alice, bob)"), "{text}");
    }

    #[test]
    fn many_held_buckets_are_listed_in_part() {
        let held: Vec<String> = (0..25).map(|i| format!("b{i:02}")).collect();
        let text = held_buckets(&held);
        assert!(text.starts_with("25 buckets, among them b00, "), "{text}");
        assert!(text.ends_with("b09, …"), "{text}");
        assert_eq!(held_buckets(&[]), "it held no bucket");
    }

    #[test]
    fn requests_keep_the_recorded_bytes_and_replay_tombstones() {
        let lists = plan_all(vec![
            item("/buckets/b/collections/c/records/r1", 30, false),
            item("/buckets/b/collections/c/records/r2", 20, true),
        ])
        .unwrap()
        .lists;
        let items = &lists[0].items;
        let tomb = requests(&items[0]);
        assert_eq!(tomb.len(), 2);
        assert!(tomb[0].1.get().contains(r#""last_modified":1"#));
        assert!(tomb[1].1.get().contains("r2?last_modified=20"));
        let put = requests(&items[1]);
        assert!(put[0].1.get().contains(r#""If-None-Match":"*""#));
        assert!(
            put[0]
                .1
                .get()
                .contains(r#""permissions":{"read":["system.Everyone"]}"#)
        );
        let parsed: serde_json::Value = serde_json::from_str(put[0].1.get()).unwrap();
        assert_eq!(parsed["body"]["data"]["last_modified"], 30);
        // A delete only removes the placeholder.
        assert!(tomb[1].1.get().contains(r#""If-Match":"\"1\"""#));
    }

    #[test]
    fn nul_escapes_are_found_and_escaped_backslashes_are_not() {
        assert!(holds_nul(br#"{"data":{"a":"x\u0000y"}}"#));
        assert!(holds_nul(br#"{"data":{"a\u0000":1}}"#));
        assert!(!holds_nul(br#"{"data":{"a":"x\\u0000y"}}"#));
        assert!(holds_nul(br#"{"data":{"a":"x\\\u0000y"}}"#));
        assert!(holds_nul(br#"{"data":{"a":"\u00001"}}"#));
        assert!(!holds_nul(br#"{"data":{"a":"\u0001"}}"#));
    }

    #[test]
    fn ids_are_encoded_in_batch_paths() {
        let lists = plan_all(vec![item(
            "/buckets/b/collections/c/records/a?b%2F c",
            3,
            true,
        )])
        .unwrap()
        .lists;
        let reqs = requests(&lists[0].items[0]);
        let delete: serde_json::Value = serde_json::from_str(reqs[1].1.get()).unwrap();
        assert_eq!(
            delete["path"],
            "/buckets/b/collections/c/records/a%3Fb%252F%20c?last_modified=3"
        );
    }
}
