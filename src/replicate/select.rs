//! Choosing part of an origin: whole buckets, or single collections, with everything under
//! them. `restore --bucket/--collection` and `export --bucket` read only what a selection
//! holds, so that one member's data can move without the rest of the server.
//!
//! A selection works on object paths as recorded in the feed (`/buckets/B`,
//! `/buckets/B/groups/G`, `/buckets/B/collections/C`, `/buckets/B/collections/C/records/R`).
//! A bucket brings itself and every group, collection and record in it. A collection brings
//! itself and its records, and its bucket object (so that the collection has somewhere to
//! live on a target that lacks it) but none of the bucket's other groups or collections.
//! Accounts and the source's description (`/tandem/source`) belong to the whole server and are
//! never part of a selection. The empty selection holds everything.

use std::collections::BTreeSet;

/// Why a `--bucket` or `--collection` argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    /// An id Kinto would not accept.
    #[error(
        "{what} id {id:?} is not a Kinto id: use letters, digits, '-' and '_' (at most 256 characters)"
    )]
    BadId {
        /// `bucket` or `collection`.
        what: &'static str,
        /// As given.
        id: String,
    },
    /// `--collection` without its bucket.
    #[error("--collection takes BUCKET/COLLECTION, got {0:?}")]
    NotBucketSlashCollection(String),
}

/// The buckets and collections chosen; empty means everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    buckets: BTreeSet<String>,
    collections: BTreeSet<(String, String)>,
}

/// Whether `id` is what Kinto accepts as a bucket or collection id.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Selection {
    /// Everything.
    pub fn all() -> Selection {
        Selection::default()
    }

    /// From `--bucket ID` and `--collection BUCKET/COLLECTION` arguments.
    pub fn parse(buckets: &[String], collections: &[String]) -> Result<Selection, SelectionError> {
        let mut out = Selection::default();
        for b in buckets {
            if !valid_id(b) {
                return Err(SelectionError::BadId {
                    what: "bucket",
                    id: b.clone(),
                });
            }
            out.buckets.insert(b.clone());
        }
        for c in collections {
            let Some((b, c)) = c.split_once('/') else {
                return Err(SelectionError::NotBucketSlashCollection(c.clone()));
            };
            for (what, id) in [("bucket", b), ("collection", c)] {
                if !valid_id(id) {
                    return Err(SelectionError::BadId {
                        what,
                        id: id.to_owned(),
                    });
                }
            }
            out.collections.insert((b.to_owned(), c.to_owned()));
        }
        Ok(out)
    }

    /// Whether this selects everything.
    pub fn is_all(&self) -> bool {
        self.buckets.is_empty() && self.collections.is_empty()
    }

    /// The buckets chosen whole.
    pub fn buckets(&self) -> impl Iterator<Item = &str> {
        self.buckets.iter().map(String::as_str)
    }

    /// The collections chosen, as (bucket, collection).
    pub fn collections(&self) -> impl Iterator<Item = (&str, &str)> {
        self.collections
            .iter()
            .map(|(b, c)| (b.as_str(), c.as_str()))
    }

    /// Whether the object at `path` (as recorded in the feed) is part of the selection.
    pub fn includes(&self, path: &str) -> bool {
        if self.is_all() {
            return true;
        }
        let Some(rest) = path.strip_prefix("/buckets/") else {
            return false;
        };
        let mut parts = rest.split('/');
        let Some(bucket) = parts.next() else {
            return false;
        };
        if self.buckets.contains(bucket) {
            return true;
        }
        match (parts.next(), parts.next()) {
            // The bucket object itself: the parent of a chosen collection.
            (None, _) => self.collections.iter().any(|(b, _)| b == bucket),
            (Some("collections"), Some(collection)) => self
                .collections
                .iter()
                .any(|(b, c)| b == bucket && c == collection),
            _ => false,
        }
    }

    /// The objects the selection names, as (`bucket` or `collection`, the argument as given,
    /// the object's path): the state must hold each of them for the selection to make sense.
    pub fn named(&self) -> Vec<(&'static str, String, String)> {
        let buckets = self
            .buckets()
            .map(|b| ("bucket", b.to_owned(), format!("/buckets/{b}")));
        let collections = self.collections().map(|(b, c)| {
            (
                "collection",
                format!("{b}/{c}"),
                format!("/buckets/{b}/collections/{c}"),
            )
        });
        buckets.chain(collections).collect()
    }

    /// Whether `path` is a bucket object that is part of the selection only as the parent of
    /// chosen collections, not as a bucket chosen whole. A target that already holds such a
    /// bucket keeps its own (see `replicate::restore`).
    pub fn is_parent_only(&self, path: &str) -> bool {
        let Some(bucket) = path.strip_prefix("/buckets/") else {
            return false;
        };
        !bucket.contains('/')
            && !self.buckets.contains(bucket)
            && self.collections.iter().any(|(b, _)| b == bucket)
    }

    /// A short description for messages: `buckets a, b; collections a/c`.
    pub fn describe(&self) -> String {
        if self.is_all() {
            return "everything".to_owned();
        }
        let mut parts = Vec::new();
        if !self.buckets.is_empty() {
            let list: Vec<&str> = self.buckets().collect();
            parts.push(format!("bucket(s) {}", list.join(", ")));
        }
        if !self.collections.is_empty() {
            let list: Vec<String> = self
                .collections()
                .map(|(b, c)| format!("{b}/{c}"))
                .collect();
            parts.push(format!("collection(s) {}", list.join(", ")));
        }
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(b: &[&str], c: &[&str]) -> Selection {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Selection::parse(&own(b), &own(c)).unwrap()
    }

    #[test]
    fn the_empty_selection_holds_everything() {
        let all = Selection::all();
        for p in [
            "/buckets/a",
            "/accounts/x",
            "/tandem/source",
            "/buckets/a/groups/g",
        ] {
            assert!(all.includes(p), "{p}");
        }
    }

    #[test]
    fn a_bucket_brings_everything_under_it_and_nothing_else() {
        let s = sel(&["alice"], &[]);
        for p in [
            "/buckets/alice",
            "/buckets/alice/groups/g",
            "/buckets/alice/collections/c",
            "/buckets/alice/collections/c/records/r",
        ] {
            assert!(s.includes(p), "{p}");
        }
        for p in [
            "/buckets/alicia",
            "/buckets/alice2/collections/c",
            "/buckets/bob",
            "/accounts/alice",
            "/tandem/source",
        ] {
            assert!(!s.includes(p), "{p}");
        }
    }

    #[test]
    fn a_collection_brings_its_records_and_its_bucket_object_only() {
        let s = sel(&[], &["b/c"]);
        for p in [
            "/buckets/b",
            "/buckets/b/collections/c",
            "/buckets/b/collections/c/records/r",
        ] {
            assert!(s.includes(p), "{p}");
        }
        for p in [
            "/buckets/b/collections/c2",
            "/buckets/b/collections/c2/records/r",
            "/buckets/b/groups/g",
            "/buckets/c/collections/c",
        ] {
            assert!(!s.includes(p), "{p}");
        }
    }

    #[test]
    fn a_bucket_is_parent_only_when_chosen_for_its_collections_alone() {
        let s = sel(&["a"], &["a/x", "b/y"]);
        assert!(s.is_parent_only("/buckets/b"));
        assert!(!s.is_parent_only("/buckets/a"), "chosen whole");
        assert!(!s.is_parent_only("/buckets/c"));
        assert!(!s.is_parent_only("/buckets/b/collections/y"));
        assert!(!Selection::all().is_parent_only("/buckets/b"));
        assert_eq!(
            s.named(),
            vec![
                ("bucket", "a".to_owned(), "/buckets/a".to_owned()),
                (
                    "collection",
                    "a/x".to_owned(),
                    "/buckets/a/collections/x".to_owned()
                ),
                (
                    "collection",
                    "b/y".to_owned(),
                    "/buckets/b/collections/y".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn bad_arguments_are_refused_with_what_is_wrong() {
        let e = Selection::parse(&["a/b".into()], &[]).unwrap_err();
        assert!(e.to_string().contains("\"a/b\""), "{e}");
        let e = Selection::parse(&[], &["abc".into()]).unwrap_err();
        assert_eq!(e, SelectionError::NotBucketSlashCollection("abc".into()));
        assert!(Selection::parse(&[], &["a/".into()]).is_err());
        assert!(Selection::parse(&["".into()], &[]).is_err());
        assert_eq!(
            sel(&["a"], &["a/b"]).describe(),
            "bucket(s) a; collection(s) a/b"
        );
    }
}
