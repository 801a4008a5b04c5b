//! The history-plugin path: one feed per bucket with every change to the bucket, its groups,
//! collections and records, each with the object's full permissions.
//!
//! - **Steady state**: `GET /buckets/{id}/history?_since=<cursor>` with `If-None-Match`, one
//!   request per bucket per pass when nothing changed; entries are applied oldest first and
//!   committed page by page with the cursor (the history entries' own timestamps). Deleting a
//!   collection or group logs one entry: it deletes everything below it in the feed too.
//! - **First sync of a bucket** (no history cursor: new, recreated, or history newly readable):
//!   the whole history is read into a map of each object's latest body, then the bucket's lists
//!   are walked in full as the polling path does, taking an object's body from the history when
//!   the history has that very version (same `last_modified`) and from the list otherwise. The
//!   replica is therefore exact even where the history is incomplete (trimmed, or enabled
//!   after the data was written); only permissions are missing where the history is.
//!
//! Entries are applied per object in the order of the object's own `last_modified`, not the
//! history's: Kinto merges the events of one batch request (`PUT x, DELETE x, PUT x` is logged
//! as two creates, then a delete). A history with a gap (tombstones of trimmed or cleared
//! entries, or an ETag below the cursor) makes the bucket's first sync run again, and so does
//! a `create` of the bucket itself: deleting a bucket erases its history, so a recreated
//! bucket cannot be followed from the old cursor. A change to the bucket object alone (its
//! permissions, say) is followed like any other entry.
//!
//! A history is followed only if it covered every object the first sync listed. An account
//! that can read only part of a bucket's history (Kinto filters entries by the permissions of
//! the bucket and objects, and settings such as `bucket_read_principals` do not count), or a
//! history trimmed or started after the data, would miss changes: such a bucket is marked
//! (`kinto:<bucket>/history-incomplete`) and polled instead, without record permissions. That
//! is a warning in the log, in `status` and in `/metrics`; the history is tried again when the
//! bucket changes and every 15 minutes, and followed again once it covers the bucket. Before a
//! bucket is marked, the objects the history lacked are looked for again a few times: Kinto
//! writes a request's history entries when the request ends, so a batch still running during
//! the first read is not yet in the history that another writer's entries already moved past.
//! A bucket whose history the account cannot read at all (403) is polled as well.
//!
//! The history plugin files every object of a batch event under the bucket of the first, and
//! Kinto merges the buckets written by one batch into one event: the first bucket's history
//! then holds the others' entries, and theirs lack them. Such entries are skipped there, and
//! the buckets they are about are read again in full at once; their own histories do not
//! cover them, so they are polled and named as recorded without permissions.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Ingest, IngestError, IngestReport, ItemHead, ObjectBody, Walk};
use crate::feed::Op;
use crate::source::kinto::ListResult;
use crate::store::{Change, CursorUpdate};

/// One history entry, as far as ingest needs it.
#[derive(Deserialize)]
struct Entry<'a> {
    last_modified: i64,
    action: String,
    resource_name: String,
    uri: String,
    #[serde(borrow)]
    target: ObjectBody<'a>,
}

/// What an entry does to the replica. `last_modified` is the object's own timestamp (of its
/// new version, or of its tombstone), which only grows for one object; history entries are
/// not always in that order (Kinto merges the events of one batch request).
enum Effect {
    /// The object at this path now has this body.
    Put {
        path: String,
        last_modified: i64,
        body: Vec<u8>,
        /// Whether the entry is a creation (not an update).
        created: bool,
    },
    /// The object at this path is gone, and with it everything below it.
    Delete {
        path: String,
        last_modified: i64,
        container: bool,
    },
}

impl Effect {
    fn path(&self) -> &str {
        match self {
            Effect::Put { path, .. } | Effect::Delete { path, .. } => path,
        }
    }

    fn last_modified(&self) -> i64 {
        match self {
            Effect::Put { last_modified, .. } | Effect::Delete { last_modified, .. } => {
                *last_modified
            }
        }
    }
}

/// A history item: an entry, or a sign that the history cannot be followed from the cursor.
enum Item {
    Entry(i64, Effect),
    /// The tombstone of a trimmed or cleared entry.
    Gap,
    /// An entry about another bucket (this one's path): the history plugin files every object
    /// of a batch event under the bucket of the first, so creating several buckets in one batch
    /// logs them all in the first one's history. That bucket's own history lacks it.
    Elsewhere(i64, String),
}

impl Entry<'_> {
    fn parse(list: &str, bucket: &str, raw: &RawValue) -> Result<Item, IngestError> {
        if ItemHead::parse(list, raw)?.looks_deleted() {
            return Ok(Item::Gap);
        }
        let bad = |what: String| IngestError::Source {
            list: list.to_owned(),
            what,
        };
        let entry: Entry<'_> =
            serde_json::from_str(raw.get()).map_err(|e| bad(format!("history entry: {e}")))?;
        if entry.uri != bucket && !entry.uri.starts_with(&format!("{bucket}/")) {
            let other = entry
                .uri
                .strip_prefix("/buckets/")
                .map(|rest| rest.split('/').next().unwrap_or(rest))
                .filter(|id| !id.is_empty());
            return match other {
                Some(id) => Ok(Item::Elsewhere(
                    entry.last_modified,
                    format!("/buckets/{id}"),
                )),
                None => Err(bad(format!(
                    "history entry for {} outside {bucket}",
                    entry.uri
                ))),
            };
        }
        let container = match entry.resource_name.as_str() {
            "record" => false,
            "bucket" | "collection" | "group" => true,
            other => {
                return Err(bad(format!(
                    "history entry for an unknown kind of object {other:?}"
                )));
            }
        };
        #[derive(Deserialize)]
        struct Stamp {
            last_modified: i64,
        }
        let stamp: Stamp = serde_json::from_str(entry.target.data.get())
            .map_err(|e| bad(format!("history target without last_modified: {e}")))?;
        let effect = match entry.action.as_str() {
            "create" | "update" => Effect::Put {
                body: entry.target.body(),
                path: entry.uri,
                last_modified: stamp.last_modified,
                created: entry.action == "create",
            },
            "delete" => Effect::Delete {
                path: entry.uri,
                last_modified: stamp.last_modified,
                container,
            },
            other => return Err(bad(format!("unknown history action {other:?}"))),
        };
        Ok(Item::Entry(entry.last_modified, effect))
    }
}

impl Ingest {
    /// Brings one bucket up to date through its history (see the module docs).
    pub(super) async fn sync_bucket_history(
        &self,
        bucket: &str,
    ) -> Result<IngestReport, IngestError> {
        let list = format!("{bucket}/history");
        let cursor_name = format!("kinto:{list}");
        match self.cursor(&cursor_name).await? {
            Some(cursor) => match self
                .follow_history(bucket, &list, &cursor_name, cursor)
                .await?
            {
                Some(report) => Ok(report),
                None => {
                    tracing::info!(bucket = %bucket, "the history has a gap (trimmed or cleared); reading the bucket again");
                    self.commit(Vec::new(), [CursorUpdate::clear(cursor_name.clone())])
                        .await?;
                    self.first_history_sync(bucket, &list, &cursor_name).await
                }
            },
            None => self.first_history_sync(bucket, &list, &cursor_name).await,
        }
    }

    async fn first_history_sync(
        &self,
        bucket: &str,
        list: &str,
        cursor_name: &str,
    ) -> Result<IngestReport, IngestError> {
        // Each object's newest version by its own timestamp (None: deleted), folded page by
        // page so that only these, not the whole history, are held in memory.
        let mut latest: HashMap<String, (i64, Option<Vec<u8>>)> = HashMap::new();
        let mut position = 0;
        let mut pages = self.client.pages(list, None, None);
        while let Some(result) = pages.next().await? {
            let ListResult::Page(page) = result else {
                unreachable!("an unconditional request is never answered 304");
            };
            if pages.pages_read() == 1 {
                position = page.etag.unwrap_or(0);
            }
            for raw in &page.items {
                // Gaps (trimmed entries) are fine here: objects they hid count as misses below.
                let Item::Entry(stamp, effect) = Entry::parse(list, bucket, raw)? else {
                    continue;
                };
                position = position.max(stamp);
                if let Effect::Delete {
                    path,
                    last_modified,
                    container: true,
                } = &effect
                {
                    // What the delete removed goes, even if the container was recreated later.
                    let below = format!("{path}/");
                    latest.retain(|p, (lm, _)| !(p.starts_with(&below) && *lm <= *last_modified));
                }
                if latest
                    .get(effect.path())
                    .is_some_and(|(lm, _)| *lm > effect.last_modified())
                {
                    continue;
                }
                match effect {
                    Effect::Put {
                        path,
                        last_modified,
                        body,
                        ..
                    } => {
                        latest.insert(path, (last_modified, Some(body)));
                    }
                    Effect::Delete {
                        path,
                        last_modified,
                        ..
                    } => {
                        latest.insert(path, (last_modified, None));
                    }
                }
            }
        }
        // Objects whose newest version is a delete: Kinto keeps their tombstones (those below
        // a deleted container were dropped above, as Kinto drops them).
        let mut tombstones: Vec<(i64, String)> = latest
            .iter()
            .filter(|(path, (_, body))| body.is_none() && path.as_str() != bucket)
            .map(|(path, (lm, _))| (*lm, path.clone()))
            .collect();
        tombstones.sort();
        let bodies: HashMap<String, (i64, Vec<u8>)> = latest
            .into_iter()
            .filter_map(|(path, (lm, body))| body.map(|b| (path, (lm, b))))
            .collect();
        let walk = Walk {
            full: true,
            bodies: Some(Arc::new(bodies)),
            history_read_at: position,
            ..Walk::default()
        };

        // The bucket object itself: its newest version in the history, with its permissions.
        let mut report = IngestReport::default();
        match walk.bodies.as_ref().and_then(|b| b.get(bucket)) {
            Some((_, body)) => {
                let put = Change {
                    op: Op::Put,
                    path: bucket.to_owned(),
                    body: body.clone(),
                };
                report.appended += self.commit(vec![put], []).await?;
            }
            None => {
                let lm = self.stored_last_modified(bucket).await?.unwrap_or(0);
                walk.miss(bucket, lm);
            }
        }
        report += self.sync_bucket_lists(bucket, &walk).await?;
        // The tombstones of objects deleted before this first read, which the list reads
        // cannot show; not for an object live again in the replica (re-created since).
        let mut deletes = Vec::new();
        for (lm, path) in tombstones {
            if self.stored_last_modified(&path).await?.is_none() {
                deletes.push(Change {
                    op: Op::Delete,
                    body: tombstone(&path, lm),
                    path,
                });
            }
        }
        report.appended += self.commit(deletes, []).await?;
        let misses = self
            .confirm_misses(bucket, list, position, walk.take_misses())
            .await?;
        let cursor = if misses.is_empty() {
            // Only now is everything up to `position` in the replica.
            CursorUpdate::set(cursor_name, position)
        } else {
            // The account sees only part of this history (or it was trimmed, or started after
            // the data): following it would miss changes. Poll this bucket's lists instead,
            // without record permissions, and try the history again later.
            tracing::warn!(
                bucket = %bucket,
                objects = misses.len(),
                first = %misses[0].0,
                "the history does not cover this bucket for this account; following it without record permissions"
            );
            CursorUpdate::set(
                format!("kinto:{bucket}/{INCOMPLETE}"),
                crate::store::now_ms(),
            )
        };
        report.appended += self.commit(Vec::new(), [cursor]).await?;
        Ok(report)
    }

    /// Applies the history since `cursor`. `None` when the history has a gap (trimmed or
    /// cleared entries, or an ETag below the cursor): the bucket must be read again.
    async fn follow_history(
        &self,
        bucket: &str,
        list: &str,
        cursor_name: &str,
        cursor: i64,
    ) -> Result<Option<IngestReport>, IngestError> {
        let mut report = IngestReport::default();
        let mut position = cursor;
        // Cursors of other buckets whose changes this history holds (see `Item::Elsewhere`).
        let mut misfiled = Vec::new();
        let mut pages = self.client.pages(list, Some(cursor), Some(cursor));
        while let Some(result) = pages.next().await? {
            let ListResult::Page(page) = result else {
                report.lists_unchanged += 1;
                return Ok(Some(report));
            };
            if pages.pages_read() == 1 {
                report.lists_changed += 1;
                if page.etag.is_some_and(|etag| etag < cursor) {
                    return Ok(None);
                }
            }
            let mut effects = Vec::with_capacity(page.items.len());
            for raw in &page.items {
                match Entry::parse(list, bucket, raw)? {
                    Item::Gap => return Ok(None),
                    // Another bucket changed in a batch with this one, and its own history
                    // lacks the change: it is read again in full at its next pass.
                    Item::Elsewhere(stamp, other) => {
                        position = position.max(stamp);
                        tracing::info!(bucket = %bucket, other = %other, "a change of another bucket is in this one's history; reading that bucket again");
                        misfiled.push(CursorUpdate::clear(format!("kinto:{other}/history")));
                    }
                    // The bucket was (re)created: deleting a bucket erases its history, so what
                    // came before cannot be followed from here. Read the bucket again.
                    Item::Entry(
                        _,
                        Effect::Put {
                            path,
                            created: true,
                            ..
                        },
                    ) if path == bucket => return Ok(None),
                    Item::Entry(stamp, effect) => {
                        position = position.max(stamp);
                        effects.push(effect);
                    }
                }
            }
            // Within the page, only each object's newest version counts.
            let mut newest: HashMap<String, i64> = HashMap::new();
            for e in &effects {
                let lm = newest.entry(e.path().to_owned()).or_insert(i64::MIN);
                *lm = (*lm).max(e.last_modified());
            }
            let mut changes = Vec::new();
            for effect in effects {
                let superseded = newest[effect.path()] > effect.last_modified()
                    || self
                        .stored_last_modified(effect.path())
                        .await?
                        .is_some_and(|lm| lm > effect.last_modified());
                match effect {
                    Effect::Delete {
                        path,
                        last_modified,
                        container: true,
                    } => {
                        // What lies below must include this page's earlier puts: store them first.
                        report.appended += self.commit(std::mem::take(&mut changes), []).await?;
                        // The delete removed what was below it then, even if the container was
                        // recreated since: everything below not newer than the delete.
                        for mut change in self.deletes_below(&path).await? {
                            let is_container = change.path == path;
                            if is_container {
                                change.body = tombstone(&path, last_modified);
                            }
                            let newer = self
                                .stored_last_modified(&change.path)
                                .await?
                                .is_some_and(|lm| lm > last_modified);
                            if (is_container && !superseded) || (!is_container && !newer) {
                                changes.push(change);
                            }
                        }
                    }
                    _ if superseded => {} // a newer version is in this page or already stored
                    Effect::Put { path, body, .. } => changes.push(Change {
                        op: Op::Put,
                        path,
                        body,
                    }),
                    Effect::Delete {
                        path,
                        last_modified,
                        ..
                    } => changes.push(Change {
                        op: Op::Delete,
                        body: tombstone(&path, last_modified),
                        path,
                    }),
                }
            }
            let mut cursors = std::mem::take(&mut misfiled);
            cursors.push(CursorUpdate::set(cursor_name, position));
            report.appended += self.commit(changes, cursors).await?;
        }
        Ok(Some(report))
    }
}

/// The name of the mark (below `kinto:<bucket>/`) of a bucket whose history does not cover it.
/// Its value is when it was set, in milliseconds.
pub(super) const INCOMPLETE: &str = "history-incomplete";

/// How long a bucket stays on the polling path before its history is tried again.
const RETRY_AFTER_MS: u64 = 15 * 60 * 1000;

/// How long to wait for history entries a concurrent request has not written yet, and how
/// many times to look again.
const SETTLE: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(200),
    std::time::Duration::from_millis(800),
    std::time::Duration::from_secs(2),
];

/// Whether a stored body is of version `last_modified` and carries permissions.
fn recorded_with_permissions(body: &[u8], last_modified: i64) -> bool {
    #[derive(Deserialize)]
    struct Stored<'a> {
        data: Stamp,
        #[serde(borrow)]
        permissions: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Stamp {
        last_modified: i64,
    }
    serde_json::from_slice::<Stored<'_>>(body)
        .is_ok_and(|s| s.data.last_modified == last_modified && s.permissions.is_some())
}

/// Whether a mark set at `since` (milliseconds, as stored) is old enough to try the history again.
pub(super) fn retry_due(since: i64) -> bool {
    crate::store::now_ms().saturating_sub(since.max(0) as u64) >= RETRY_AFTER_MS
}

impl Ingest {
    /// Of the objects the first sync listed but did not find in the history (path and
    /// `last_modified`), those the history still lacks after a few more reads. Kinto writes a
    /// request's history entries when the request ends, and another request's entries can move
    /// the history's ETag past them before that: objects written by a request still running
    /// during the first read are not misses, and their entries come after `position`.
    async fn confirm_misses(
        &self,
        bucket: &str,
        list: &str,
        position: i64,
        mut misses: Vec<(String, i64)>,
    ) -> Result<Vec<(String, i64)>, IngestError> {
        // A version recorded with its permissions already (followed before, restored from
        // this very feed) loses nothing by being absent from the history: a restored server's
        // history, or a trimmed one, does not hold what it was given at the start.
        if !misses.is_empty() {
            let origin = self.key.id();
            let paths: Vec<String> = misses.iter().map(|(p, _)| p.clone()).collect();
            let stored: Vec<Option<Vec<u8>>> = self
                .with_store(move |s| paths.iter().map(|p| s.object(origin, p)).collect())
                .await?;
            let mut known = stored.into_iter();
            misses.retain(|(_, lm)| {
                !known
                    .next()
                    .flatten()
                    .is_some_and(|body| recorded_with_permissions(&body, *lm))
            });
        }
        for delay in SETTLE {
            if misses.is_empty() {
                break;
            }
            tokio::time::sleep(delay).await;
            let mut found: std::collections::HashSet<(String, i64)> = Default::default();
            let mut pages = self.client.pages(list, Some(position), None);
            while let Some(result) = pages.next().await? {
                let ListResult::Page(page) = result else {
                    break;
                };
                for raw in &page.items {
                    if let Item::Entry(_, effect) = Entry::parse(list, bucket, raw)? {
                        found.insert((effect.path().to_owned(), effect.last_modified()));
                    }
                }
            }
            misses.retain(|m| !found.contains(m));
        }
        Ok(misses)
    }
}

/// The body of a delete seen in the history: the tombstone Kinto keeps for the object, as the
/// polling path records the one a `_since` read gives (`{"deleted":true,"id","last_modified"}`:
/// see [`super::order`]).
fn tombstone(path: &str, last_modified: i64) -> Vec<u8> {
    let id = path.rsplit('/').next().unwrap_or_default();
    let id = serde_json::to_string(id).expect("a string serializes");
    format!(r#"{{"data":{{"deleted":true,"id":{id},"last_modified":{last_modified}}}}}"#)
        .into_bytes()
}
