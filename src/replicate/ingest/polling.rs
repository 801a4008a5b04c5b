//! The polling path: container lists compared in full when they change, records read with
//! `_since` and `If-None-Match` page by page (see the [`super`] module docs).

use std::collections::{HashMap, HashSet};

use serde_json::value::RawValue;
use tokio::task::JoinSet;

use super::{
    Ingest, IngestError, IngestReport, ItemHead, ObjectBody, Walk, data_only_body, list_cursor,
};
use crate::feed::Op;
use crate::source::kinto::{KintoError, ListResult, Page};
use crate::store::{Change, CursorUpdate};

impl Ingest {
    /// The polling path for one bucket: its groups, its collections and their records.
    pub(super) async fn sync_bucket_lists(
        &self,
        bucket: &str,
        walk: &Walk,
    ) -> Result<IngestReport, IngestError> {
        let mut report = self
            .sync_container_list(&format!("{bucket}/groups"), walk)
            .await?;
        report += self
            .sync_container_list(&format!("{bucket}/collections"), walk)
            .await?;
        let collections = self.live_children(&format!("{bucket}/collections")).await?;
        report += self.sync_collections(collections, walk).await?;
        Ok(report)
    }

    /// Reads the records of `collections` with bounded concurrency.
    async fn sync_collections(
        &self,
        collections: Vec<String>,
        walk: &Walk,
    ) -> Result<IngestReport, IngestError> {
        let mut report = IngestReport::default();
        // Every cursor in one store call rather than one each: in a steady state, each
        // collection costs a single conditional request. Only each collection's own task
        // moves its cursor, so reading them all first is the same as reading each at its start.
        let cursors: Vec<Option<i64>> = if walk.full {
            vec![None; collections.len()]
        } else {
            let names: Vec<String> = collections
                .iter()
                .map(|c| format!("kinto:{c}/records"))
                .collect();
            self.with_store(move |s| names.iter().map(|name| list_cursor(s, name)).collect())
                .await?
        };
        let mut tasks = JoinSet::new();
        let mut pending = collections.into_iter().zip(cursors);
        loop {
            while tasks.len() < self.concurrency {
                let Some((collection, cursor)) = pending.next() else {
                    break;
                };
                let (worker, walk) = (self.clone_handle(), walk.clone());
                tasks.spawn(async move { worker.sync_records(&collection, cursor, &walk).await });
            }
            match tasks.join_next().await {
                None => return Ok(report),
                Some(Ok(Ok(r))) => report += r,
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(join)) => std::panic::resume_unwind(join.into_panic()),
            }
        }
    }

    fn clone_handle(&self) -> Ingest {
        Ingest {
            client: self.client.clone(),
            store: self.store.clone(),
            key: self.key.clone(),
            concurrency: self.concurrency,
            journal_info: self.journal_info.clone(),
            journal_refused: self.journal_refused.clone(),
        }
    }

    /// Brings one container list up to date. A child that is new, changed (possibly deleted
    /// and recreated) or gone loses the cursors of its own lists in the same transaction, so
    /// that they are read in full and reconciled next, even if this process dies first.
    pub(super) async fn sync_container_list(
        &self,
        list: &str,
        walk: &Walk,
    ) -> Result<IngestReport, IngestError> {
        let cursor_name = format!("kinto:{list}");
        let cursor = if walk.full {
            None
        } else {
            self.cursor(&cursor_name).await?
        };
        let mut report = IngestReport::default();
        let Some((items, etag)) = self.read_full_list(list, cursor).await? else {
            report.lists_unchanged += 1;
            return Ok(report);
        };
        report.lists_changed += 1;

        // Decide per object, in list order: body from the history, nothing to do, or a GET
        // (permissions are only in the object itself, not in lists).
        enum Plan {
            Body(Vec<u8>),
            Fetch,
        }
        let mut plans: Vec<(String, bool, Plan)> = Vec::new();
        let mut listed = HashSet::new();
        for raw in &items {
            let head = ItemHead::parse(list, raw)?;
            let path = format!("{list}/{}", head.id);
            listed.insert(path.clone());
            if list == "/buckets"
                && self
                    .cursor(&format!("kinto:{path}/history"))
                    .await?
                    .is_some()
            {
                continue; // a followed bucket's object comes from its history, permissions and all
            }
            let same_version = self.stored_last_modified(&path).await? == Some(head.last_modified);
            match walk.body_for(&path, head.last_modified) {
                // The history knows this version, with its full permissions.
                Some(body) => plans.push((path, same_version, Plan::Body(body.to_vec()))),
                None if same_version => {}
                None => plans.push((path, same_version, Plan::Fetch)),
            }
        }
        // The GETs run concurrently; their results keep the list's order.
        let mut fetched: HashMap<usize, Option<Box<RawValue>>> = HashMap::new();
        let mut tasks = JoinSet::new();
        let mut wanted = plans
            .iter()
            .enumerate()
            .filter(|(_, (_, _, plan))| matches!(plan, Plan::Fetch));
        loop {
            while tasks.len() < self.concurrency {
                let Some((i, (path, _, _))) = wanted.next() else {
                    break;
                };
                let (client, path) = (self.client.clone(), path.clone());
                tasks.spawn(async move { (i, client.object(&path).await) });
            }
            match tasks.join_next().await {
                None => break,
                Some(Ok((i, result))) => {
                    fetched.insert(i, result?);
                }
                Some(Err(join)) => std::panic::resume_unwind(join.into_panic()),
            }
        }
        let mut changes = Vec::new();
        let mut cursors = Vec::new();
        let mut data_only = Vec::new();
        for (i, (path, same_version, plan)) in plans.into_iter().enumerate() {
            let body = match plan {
                Plan::Body(body) => body,
                Plan::Fetch => match fetched.remove(&i).flatten() {
                    Some(object) => {
                        let (body, with_permissions) = object_body(list, &object)?;
                        if !with_permissions {
                            data_only.push(changes.len());
                        }
                        body
                    }
                    None => continue, // deleted since it was listed; the next pass sees it gone
                },
            };
            if !same_version {
                // A new or changed container: what lies below it is read in full next.
                cursors
                    .extend(child_lists(&path).map(|l| CursorUpdate::clear(format!("kinto:{l}"))));
            }
            changes.push(Change {
                op: Op::Put,
                path,
                body,
            });
        }
        for path in self.live_children(list).await? {
            if !listed.contains(&path) {
                if list == "/buckets" {
                    cursors.push(CursorUpdate::clear(format!("kinto:{path}/history")));
                }
                changes.extend(self.deletes_below(&path).await?);
                cursors
                    .extend(child_lists(&path).map(|l| CursorUpdate::clear(format!("kinto:{l}"))));
            }
        }
        cursors.extend(etag.map(|e| CursorUpdate::set(cursor_name, e)));
        self.keep_recorded_permissions(&mut changes, &data_only)
            .await?;
        report.appended += self.commit(changes, cursors).await?;
        Ok(report)
    }

    /// Reads the records of one collection since its `cursor` (read by the caller; `None`
    /// for a full read), committing page by page. Without a cursor (a new collection, or one
    /// that changed), the full list is read and records no longer in it are deleted; the
    /// cursor is only set once that is done.
    async fn sync_records(
        &self,
        collection: &str,
        cursor: Option<i64>,
        walk: &Walk,
    ) -> Result<IngestReport, IngestError> {
        let list = format!("{collection}/records");
        let cursor_name = format!("kinto:{list}");
        let reconcile = cursor.is_none();
        let mut report = IngestReport::default();
        let mut listed = HashSet::new();
        let mut first_etag = None;
        let mut position = cursor.unwrap_or(0);
        // A full read asks `_since=0` too: the list then includes the tombstones Kinto keeps,
        // which a plain read hides (and which clients that sync with this server have seen).
        let mut pages = self.client.pages(&list, Some(cursor.unwrap_or(0)), cursor);
        loop {
            let first = pages.pages_read() == 0;
            let page: Page = match pages.next().await {
                Ok(None) => return Ok(report),
                Ok(Some(ListResult::NotModified)) => {
                    report.lists_unchanged += 1;
                    return Ok(report);
                }
                Ok(Some(ListResult::Page(page))) => page,
                // The collection was deleted since it was listed: the next pass sees it gone.
                Err(KintoError::Status { status: 404, .. } | KintoError::Forbidden { .. })
                    if first =>
                {
                    return Ok(report);
                }
                // Deleted while its pages were read: the pass fails, and the next one (which
                // retrying starts) no longer lists it. Not a refusal that needs the operator.
                Err(KintoError::Status { status: 404, .. } | KintoError::Forbidden { .. }) => {
                    return Err(IngestError::Source {
                        list: list.clone(),
                        what: "it vanished while its pages were read (deleted meanwhile?); it is listed again on the next pass".into(),
                    });
                }
                Err(e) => return Err(e.into()),
            };
            let last = page.next.is_none();
            if first {
                report.lists_changed += 1;
                first_etag = page.etag;
                if let (Some(etag), Some(cursor)) = (page.etag, cursor)
                    && etag < cursor
                {
                    // The list went back in time (a server restored from an older backup,
                    // client-set timestamps): what we hold may be gone. Read it in full next.
                    tracing::warn!(list = %list, etag, cursor, "list timestamp went backwards; reconciling");
                    report.appended += self
                        .commit(Vec::new(), [CursorUpdate::clear(cursor_name.clone())])
                        .await?;
                    return Ok(report);
                }
            }
            let mut changes = Vec::with_capacity(page.items.len());
            let mut data_only = Vec::new();
            for raw in &page.items {
                let head = ItemHead::parse(&list, raw)?;
                let path = format!("{list}/{}", head.id);
                position = position.max(head.last_modified);
                if self.is_deleted(&head, &path).await? {
                    // The tombstone Kinto sent (members in the order both paths record): its
                    // timestamp is part of what clients that sync with this server have seen.
                    changes.push(Change {
                        op: Op::Delete,
                        path,
                        body: data_only_body(raw.get()),
                    });
                } else {
                    if reconcile {
                        listed.insert(path.clone());
                    }
                    let body = match walk.body_for(&path, head.last_modified) {
                        Some(body) => body.to_vec(),
                        None => {
                            data_only.push(changes.len());
                            data_only_body(raw.get())
                        }
                    };
                    changes.push(Change {
                        op: Op::Put,
                        path,
                        body,
                    });
                }
            }
            if last {
                position = if reconcile {
                    // A full read lists no tombstones: a record deleted while it ran would be
                    // skipped for good if the cursor moved past its tombstone. Start the next
                    // pass where this read began; what it re-reads is dropped as no-ops.
                    first_etag.unwrap_or(0)
                } else {
                    position.max(first_etag.unwrap_or(0))
                };
            }
            // Mid-list pages move the cursor to their last item; the last page to the list's
            // ETag. A reconcile only moves it once the vanished records are deleted too.
            let cursors =
                (!reconcile || last).then(|| CursorUpdate::set(cursor_name.clone(), position));
            self.keep_recorded_permissions(&mut changes, &data_only)
                .await?;
            if reconcile && last {
                for path in self.live_children(&list).await? {
                    if !listed.contains(&path) {
                        changes.push(Change {
                            op: Op::Delete,
                            path,
                            body: Vec::new(),
                        });
                    }
                }
            }
            report.appended += self.commit(changes, cursors).await?;
            if last {
                return Ok(report);
            }
        }
    }

    /// Whether a listed item is a tombstone. Records are always listed with `_since`, so
    /// tombstones come with them; an item of tombstone shape may still be a live record whose
    /// data is just `{"deleted": true}`, which only a GET of the object settles (404 for a
    /// tombstone).
    async fn is_deleted(&self, head: &ItemHead, path: &str) -> Result<bool, IngestError> {
        if !head.looks_deleted() {
            return Ok(false);
        }
        // Live only if the object is there in this very version; a newer one means this item
        // is the tombstone of an object recreated since (its new version comes later).
        let Some(object) = self.client.object(path).await? else {
            return Ok(true);
        };
        let parts: ObjectBody<'_> =
            serde_json::from_str(object.get()).map_err(|e| IngestError::Source {
                list: path.to_owned(),
                what: format!("object without data: {e}"),
            })?;
        let head_now = ItemHead::parse(path, parts.data)?;
        Ok(head_now.last_modified != head.last_modified)
    }

    /// The whole list (all pages), unless it is unchanged since `etag`. Returns the items and
    /// the first page's ETag.
    async fn read_full_list(
        &self,
        list: &str,
        etag: Option<i64>,
    ) -> Result<Option<(Vec<Box<RawValue>>, Option<i64>)>, IngestError> {
        let mut pages = self.client.pages(list, None, etag);
        let (mut items, mut first_etag) = (Vec::new(), None);
        while let Some(result) = pages.next().await? {
            let ListResult::Page(page) = result else {
                return Ok(None);
            };
            if pages.pages_read() == 1 {
                first_etag = page.etag;
            }
            items.extend(page.items);
        }
        Ok(Some((items, first_etag)))
    }
}

/// The lists below a container whose cursors depend on it.
fn child_lists(path: &str) -> impl Iterator<Item = String> + '_ {
    let depth = path.matches('/').count();
    let kinds: &[&str] = match depth {
        // A bucket's history cursor stays: a recreated bucket shows in its history as a new
        // `create` of the bucket, which restarts its first sync (see `history`).
        2 => &["groups", "collections", "history-incomplete"], // /buckets/{id}
        4 if path.contains("/collections/") => &["records"],
        _ => &[],
    };
    kinds.iter().map(move |kind| format!("{path}/{kind}"))
}

/// The feed body of a fetched object: `{"data":…,"permissions":…}` with Kinto's bytes.
/// On the polling path, Kinto shows `"permissions": {}` both for an empty ACL and for one the
/// account may not see; the body leaves it out rather than record an empty ACL that may be false.
/// The feed body of a fetched object, and whether the account saw its permissions.
fn object_body(list: &str, object: &RawValue) -> Result<(Vec<u8>, bool), IngestError> {
    let parts: ObjectBody<'_> =
        serde_json::from_str(object.get()).map_err(|e| IngestError::Source {
            list: list.to_owned(),
            what: format!("object without data: {e}"),
        })?;
    if parts.permissions.is_none_or(|p| p.get().trim() == "{}") {
        return Ok((data_only_body(parts.data.get()), false));
    }
    Ok((parts.body(), true))
}
