//! The journal path: a Kinto server running the kinto-tandem plugin (`docs/kinto-plugin.md`)
//! keeps one server-wide journal of every change, each with the object's data and complete
//! permissions, in one total order. Following it needs no per-bucket setup and sees what the
//! account could not read through Kinto's own API: members' buckets whose ACLs do not name it,
//! default buckets, accounts.
//!
//! - **Steady state**: `GET /tandem/journal?_since=<cursor>` with `If-None-Match`, one request
//!   per pass however many buckets there are. Entries are applied in the journal's order, each
//!   page committed with the cursor (the journal's own timestamps).
//! - **First sync**, or a cursor older than what the journal still keeps (`410`): the whole
//!   state is read from `GET /tandem/objects`, page by page, with the journal's position taken
//!   before the first page; objects the replica holds and the server no longer does are
//!   deleted; then the journal is followed from that position. What was written while the dump
//!   ran comes again through the journal, and the store drops what it already has.
//!
//! Entries are applied in the journal's order, not compared by `last_modified`: the order is
//! total, so replaying it gives Kinto's own state even where clients forced timestamps into
//! the past. Deleting a bucket or collection is one entry; everything below it goes with it.
//!
//! The cursors of the other paths are dropped when the journal takes over, and the journal's
//! when it goes away, so that a path coming back reads everything again instead of trusting a
//! cursor from before the other path ran.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

use super::{Ingest, IngestError, IngestReport, ObjectBody, data_only_body};
use crate::feed::Op;
use crate::source::kinto::{KintoError, ListResult, ListTarget, Page, TandemPlugin};
use crate::store::{Change, CursorUpdate};

/// The store cursor holding the journal position followed so far.
pub(super) const CURSOR: &str = "kinto:tandem/journal";

/// Where the source's secrets fingerprint is kept in the feed, so that whoever restores the
/// origin can check a target against it (see `replicate::restore`).
pub const SOURCE_PATH: &str = "/tandem/source";

/// Page size asked of the plugin (its maximum).
const PAGE: u32 = 10_000;

/// One journal entry or dump item, as far as ingest needs it.
#[derive(Deserialize)]
struct Item<'a> {
    #[serde(default)]
    last_modified: Option<i64>,
    #[serde(default)]
    action: Option<String>,
    resource_name: String,
    uri: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow, default)]
    permissions: Option<&'a RawValue>,
}

/// What an item does to the replica.
enum Effect {
    Put(String, Vec<u8>),
    /// A delete of the object at the path (with its tombstone body, if it keeps one), and of
    /// everything below it when it is a container.
    Delete {
        path: String,
        body: Vec<u8>,
        container: bool,
    },
}

impl Item<'_> {
    fn parse<'a>(list: &str, raw: &'a RawValue) -> Result<Item<'a>, IngestError> {
        let item: Item<'a> = serde_json::from_str(raw.get()).map_err(|e| IngestError::Source {
            list: list.to_owned(),
            what: format!("journal item: {e}"),
        })?;
        if !valid_uri(&item.resource_name, &item.uri) {
            return Err(IngestError::Source {
                list: list.to_owned(),
                what: format!(
                    "journal item for a {:?} at {:?}, not a Kinto object path",
                    item.resource_name, item.uri
                ),
            });
        }
        Ok(item)
    }

    fn effect(&self, list: &str) -> Result<Effect, IngestError> {
        let deleted = match self.action.as_deref() {
            Some("create" | "update") => false,
            Some("delete") => true,
            // A dump item: live objects carry their permissions, tombstones none (a live record
            // may have a tombstone's shape).
            None => self.permissions.is_none(),
            Some(other) => {
                return Err(IngestError::Source {
                    list: list.to_owned(),
                    what: format!("unknown journal action {other:?}"),
                });
            }
        };
        Ok(if deleted {
            Effect::Delete {
                path: self.uri.clone(),
                body: data_only_body(self.data.get()),
                container: matches!(self.resource_name.as_str(), "bucket" | "collection"),
            }
        } else {
            let body = ObjectBody {
                data: self.data,
                permissions: self.permissions,
            }
            .body();
            Effect::Put(self.uri.clone(), body)
        })
    }
}

/// Whether `uri` is the path of an object of kind `resource_name`, with ids Kinto accepts.
fn valid_uri(resource_name: &str, uri: &str) -> bool {
    // Kinto's ids: a letter or digit, then letters, digits, `-` and `_` (accounts also allow
    // `.`, `@` and `+`, for e-mail addresses).
    let id_ok = |s: &str| {
        s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'+'))
    };
    let segments: Vec<&str> = match uri.strip_prefix('/') {
        Some(rest) => rest.split('/').collect(),
        None => return false,
    };
    match (resource_name, segments.as_slice()) {
        ("account", ["accounts", id]) => id_ok(id),
        ("bucket", ["buckets", b]) => id_ok(b),
        ("collection", ["buckets", b, "collections", c]) => id_ok(b) && id_ok(c),
        ("group", ["buckets", b, "groups", g]) => id_ok(b) && id_ok(g),
        ("record", ["buckets", b, "collections", c, "records", r]) => {
            id_ok(b) && id_ok(c) && id_ok(r)
        }
        _ => false,
    }
}

impl Ingest {
    /// One pass through the plugin's journal (see the module docs).
    pub(super) async fn sync_journal(
        &self,
        plugin: &TandemPlugin,
    ) -> Result<IngestReport, IngestError> {
        let mut report = IngestReport::default();
        if let Some(fingerprint) = &plugin.secrets_fingerprint {
            report.appended += self.record_fingerprint(fingerprint).await?;
        }
        let cursor = self.cursor(CURSOR).await?;
        let cursor = match cursor {
            Some(cursor) => cursor,
            None => {
                let (position, r) = self.read_whole_state().await?;
                report += r;
                position
            }
        };
        match self.follow_journal(cursor).await {
            Ok(r) => {
                report += r;
                Ok(report)
            }
            Err(IngestError::Kinto(KintoError::Status { status: 410, .. })) => {
                tracing::warn!(
                    cursor,
                    "the journal was trimmed past this node's position; reading the whole state again"
                );
                self.commit(Vec::new(), [CursorUpdate::clear(CURSOR)])
                    .await?;
                let (position, r) = self.read_whole_state().await?;
                report += r;
                report += self.follow_journal(position).await?;
                Ok(report)
            }
            Err(e) => Err(e),
        }
    }

    /// Records the source's secrets fingerprint at [`SOURCE_PATH`] (nothing when unchanged).
    async fn record_fingerprint(&self, fingerprint: &str) -> Result<u64, IngestError> {
        let data = serde_json::json!({
            "secrets_fingerprint": fingerprint,
            "id": "source",
            "last_modified": 0,
        });
        let body = format!("{{\"data\":{data}}}").into_bytes();
        let put = Change {
            op: Op::Put,
            path: SOURCE_PATH.to_owned(),
            body,
        };
        self.commit(vec![put], []).await
    }

    /// Reads every object from the dump, deletes what the server no longer has, and returns
    /// the journal position to follow from. The cursors of the other paths go, in the first
    /// transaction, so that they never resume from before this read.
    async fn read_whole_state(&self) -> Result<(i64, IngestReport), IngestError> {
        let list = "/tandem/objects";
        let origin = self.key.id();
        let mut report = IngestReport::default();
        report.lists_changed += 1;
        // A replica holding nothing from the source has nothing to reconcile: no paths kept in
        // memory, no scan at the end.
        let reconcile = self
            .with_store(move |s| {
                Ok(!s.children(origin, "/buckets")?.is_empty()
                    || !s.children(origin, "/accounts")?.is_empty())
            })
            .await?;
        let mut seen: HashSet<String> = HashSet::new();
        let first = self.plugin_url(&format!("tandem/objects?_limit={PAGE}"))?;
        let mut head = self
            .client
            .list_head(ListTarget::Next(&first), None)
            .await?;
        let position = head.etag.ok_or_else(|| IngestError::Source {
            list: list.to_owned(),
            what: "no ETag (the journal's position) on the first page".into(),
        })?;
        // The plugin answers: the other paths' cursors go (see the module docs), with the first
        // page.
        let mut stale: Vec<CursorUpdate> = self
            .with_store(|s| s.cursor_names("kinto:"))
            .await?
            .into_iter()
            .filter(|n| n != CURSOR)
            .map(CursorUpdate::clear)
            .collect();
        // Pages are read by one future and stored by the other. Each page is asked for as soon
        // as the previous one's headers name it, so that Kinto is never idle while a page is
        // parsed or committed, and each page goes to the store as soon as its body is read,
        // while the next one is still being served, so that only the last page's work is left
        // when Kinto has answered. The channel holds one page: at most three are in memory
        // (one stored, one waiting, one read) besides the one arriving.
        let (pages, mut received) = tokio::sync::mpsc::channel::<Page>(1);
        let read = async move {
            loop {
                let following = head.next.clone();
                let ask_next = async {
                    match &following {
                        Some(url) => Some(self.client.list_head(ListTarget::Next(url), None).await),
                        None => None,
                    }
                };
                let hand_over = async {
                    let ListResult::Page(page) = head.read().await? else {
                        return Err(IngestError::Source {
                            list: list.to_owned(),
                            what: "answered 304 to an unconditional request".into(),
                        });
                    };
                    // A closed channel: the store stopped on an error, which it returns.
                    Ok(pages.send(page).await.is_ok())
                };
                let (handed, next) = tokio::join!(hand_over, ask_next);
                if !handed? {
                    return Ok::<(), IngestError>(());
                }
                match next {
                    Some(next) => head = next?,
                    None => return Ok(()),
                }
            }
        };
        let store = async {
            // Whether the page without a `Next-Page` was stored: only then is the read whole.
            let mut whole = false;
            while let Some(page) = received.recv().await {
                let mut changes = Vec::with_capacity(page.items.len());
                for raw in &page.items {
                    let item = Item::parse(list, raw)?;
                    match item.effect(list)? {
                        Effect::Put(path, body) => {
                            if reconcile {
                                seen.insert(path.clone());
                            }
                            changes.push(Change {
                                op: Op::Put,
                                path,
                                body,
                            });
                        }
                        Effect::Delete { path, body, .. } => changes.push(Change {
                            op: Op::Delete,
                            path,
                            body,
                        }),
                    }
                }
                report.appended += self.commit(changes, std::mem::take(&mut stale)).await?;
                whole = page.next.is_none();
            }
            Ok::<bool, IngestError>(whole)
        };
        let (read, stored) = tokio::join!(read, store);
        // A read that failed ends the channel early: its error, not the partial result.
        read?;
        if !stored? {
            return Err(IngestError::Source {
                list: list.to_owned(),
                what: "the dump ended before its last page".into(),
            });
        }
        let mut deletes = Vec::new();
        if reconcile {
            // What the replica holds that the server no longer has (deepest first).
            let mut gone: Vec<String> = self
                .with_store(move |s| s.paths_under(origin, "/"))
                .await?
                .into_iter()
                .filter(|p| !crate::replicate::moves::is_tandem_path(p) && !seen.contains(p))
                .collect();
            gone.reverse();
            deletes = gone
                .into_iter()
                .map(|path| Change {
                    op: Op::Delete,
                    path,
                    body: Vec::new(),
                })
                .collect();
        }
        report.appended += self
            .commit(deletes, [CursorUpdate::set(CURSOR, position)])
            .await?;
        Ok((position, report))
    }

    /// Applies the journal after `cursor`, page by page.
    async fn follow_journal(&self, cursor: i64) -> Result<IngestReport, IngestError> {
        let list = "/tandem/journal";
        let mut report = IngestReport::default();
        let mut target =
            self.plugin_url(&format!("tandem/journal?_since={cursor}&_limit={PAGE}"))?;
        let mut condition = Some(cursor);
        let mut position = cursor;
        loop {
            let Some(page) = self.plugin_page(&target, condition.take()).await? else {
                report.lists_unchanged += 1;
                return Ok(report);
            };
            if page.etag.is_some_and(|etag| etag < cursor) {
                // The journal went back in time: this is not the server the cursor came from
                // (or it was restored from an older backup). Read everything again.
                tracing::warn!(
                    cursor,
                    etag = page.etag,
                    "the journal's position went backwards; reading the whole state again"
                );
                return Err(KintoError::Status {
                    url: target,
                    status: 410,
                    message: "journal position went backwards".into(),
                }
                .into());
            }
            report.lists_changed += 1;
            let mut changes = Vec::with_capacity(page.items.len());
            for raw in &page.items {
                let item = Item::parse(list, raw)?;
                let stamp = item.last_modified.ok_or_else(|| IngestError::Source {
                    list: list.to_owned(),
                    what: "journal entry without last_modified".into(),
                })?;
                if stamp <= position {
                    return Err(IngestError::Source {
                        list: list.to_owned(),
                        what: format!("journal entries out of order ({stamp} after {position})"),
                    });
                }
                position = stamp;
                match item.effect(list)? {
                    Effect::Put(path, body) => changes.push(Change {
                        op: Op::Put,
                        path,
                        body,
                    }),
                    Effect::Delete {
                        path,
                        body,
                        container,
                    } => {
                        if container {
                            // What lies below includes this page's earlier puts: store them
                            // first, then delete everything below, deepest first.
                            report.appended +=
                                self.commit(std::mem::take(&mut changes), []).await?;
                            for mut change in self.deletes_below(&path).await? {
                                if change.path == path {
                                    change.body = body.clone();
                                }
                                changes.push(change);
                            }
                        } else {
                            changes.push(Change {
                                op: Op::Delete,
                                path,
                                body,
                            });
                        }
                    }
                }
            }
            report.appended += self
                .commit(changes, [CursorUpdate::set(CURSOR, position)])
                .await?;
            match page.next {
                Some(next) => target = next,
                None => return Ok(report),
            }
        }
    }

    /// `path` (with its query) relative to the Kinto root.
    fn plugin_url(&self, path: &str) -> Result<Url, IngestError> {
        self.client
            .root()
            .join(path)
            .map_err(|e| IngestError::Source {
                list: path.to_owned(),
                what: format!("cannot build the URL: {e}"),
            })
    }

    /// One page of a plugin list; `None` for `304`.
    async fn plugin_page(
        &self,
        url: &Url,
        if_none_match: Option<i64>,
    ) -> Result<Option<Page>, IngestError> {
        match self
            .client
            .list(ListTarget::Next(url), if_none_match)
            .await?
        {
            ListResult::NotModified => Ok(None),
            ListResult::Page(page) => Ok(Some(page)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kinto_object_paths_are_accepted() {
        assert!(valid_uri(
            "record",
            "/buckets/b/collections/c/records/r-1_x"
        ));
        assert!(valid_uri("account", "/accounts/alice"));
        assert!(valid_uri("bucket", "/buckets/b"));
        assert!(!valid_uri("record", "/buckets/b/collections/c"));
        assert!(!valid_uri("bucket", "/buckets/../x"));
        assert!(!valid_uri("bucket", "/buckets/b/"));
        assert!(!valid_uri("bucket", "buckets/b"));
        assert!(!valid_uri(
            "collection",
            "/buckets/b/collections/c/records/r"
        ));
        assert!(!valid_uri("history", "/buckets/b/history/h"));
        assert!(!valid_uri("account", "/tandem/source"));
    }

    #[test]
    fn dump_items_are_tombstones_only_without_permissions() {
        let shape = r#"{"id":"r","last_modified":3,"deleted":true}"#;
        let live = format!(
            r#"{{"uri":"/buckets/b/collections/c/records/r","resource_name":"record","data":{shape},"permissions":{{}}}}"#
        );
        let dead = format!(
            r#"{{"uri":"/buckets/b/collections/c/records/r","resource_name":"record","data":{shape}}}"#
        );
        let effect = |json: &str| {
            let raw = RawValue::from_string(json.to_owned()).unwrap();
            let item = Item::parse("dump", &raw).unwrap();
            matches!(item.effect("dump").unwrap(), Effect::Delete { .. })
        };
        assert!(!effect(&live));
        assert!(effect(&dead));
        // A journal entry says what it is.
        let entry = format!(
            r#"{{"last_modified":9,"action":"update","uri":"/buckets/b/collections/c/records/r","resource_name":"record","data":{shape},"permissions":{{}}}}"#
        );
        assert!(!effect(&entry));
    }
}
