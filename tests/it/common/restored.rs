//! Restore targets, and how a restored server is compared with the one its feed was recorded
//! from: what the owners of the data see there, row by row.

use serde_json::{Value, json};

use super::kinto::{Kinto, Options};

/// A source whose every permission is recorded: the history plugin, and every bucket readable
/// by `tandem` (and `poller`, `admin`).
pub async fn source() -> Kinto {
    Kinto::start_with_settings(
        Options {
            history: true,
            ..Options::default()
        },
        "kinto.bucket_read_principals = account:tandem account:poller account:admin",
    )
    .await
}

/// A source whose `admin` account may change every object (what `migrate finish` needs to
/// make the old copy read-only), with Kinto's default `explicit_permissions`: every writer is
/// in its objects' write permission.
pub async fn switchable_source() -> Kinto {
    let mut settings =
        "kinto.bucket_read_principals = account:tandem account:poller account:admin\n".to_owned();
    for kind in ["bucket", "group", "collection", "record"] {
        settings.push_str(&format!("kinto.{kind}_write_principals = account:admin\n"));
    }
    Kinto::start_with_settings(
        Options {
            history: true,
            ..Options::default()
        },
        &settings,
    )
    .await
}

/// What a restore target needs (as docs/operating.md says): permissions stored exactly as
/// sent, and the restoring account (`admin` here) allowed to create, read and write everything.
pub const TARGET_SETTINGS: &str = "kinto.explicit_permissions = false
kinto.bucket_create_principals = account:admin
kinto.bucket_write_principals = account:admin
kinto.bucket_read_principals = account:tandem account:poller account:admin
kinto.group_create_principals = account:admin
kinto.group_write_principals = account:admin
kinto.group_read_principals = account:tandem account:poller account:admin
kinto.collection_create_principals = account:admin
kinto.collection_write_principals = account:admin
kinto.collection_read_principals = account:tandem account:poller account:admin
kinto.record_create_principals = account:admin
kinto.record_write_principals = account:admin
kinto.record_read_principals = account:tandem account:poller account:admin";

/// A restore target without the kinto-tandem plugin: stores permissions exactly as sent, and
/// lets `admin` (the restoring account) read and write everywhere.
pub async fn target() -> Kinto {
    Kinto::start_with_settings(
        Options {
            history: false,
            ..Options::default()
        },
        TARGET_SETTINGS,
    )
    .await
}

/// `PUT path` as `user`; panics unless it succeeds.
pub async fn put(kinto: &Kinto, user: &str, path: &str, body: Value) {
    kinto.ok(user, "PUT", path, Some(body)).await;
}

/// What the owners of the data see: alice and bob each read their buckets with every
/// permission (they write them), and what the other shared with them.
pub fn views(kinto: &Kinto) -> Vec<Value> {
    let mut out = Vec::new();
    for user in ["alice", "bob"] {
        for mut row in kinto.state(user) {
            row["as"] = json!(user);
            out.push(row);
        }
    }
    out
}

/// Compares a restored state with the original, row by row, with readable differences.
///
/// Records-list ETags are compared separately: Kinto sets a list's timestamp to the current
/// time at the first request that touches it (kinto/core/resource: "Initialize timestamp as
/// soon as possible"), before any write, so no client of its HTTP API can give a restored list
/// an older ETag than the time of the restore. What matters to syncing clients is that it is
/// never lower than the original (a lower one would hide changes from them): that is checked.
pub fn assert_same(ours: &[Value], theirs: &[Value]) {
    let etag = |row: &Value| row["etag"].as_str().and_then(|e| e.parse::<i64>().ok());
    let strip = |rows: &[Value]| -> Vec<Value> {
        rows.iter()
            .map(|row| {
                let mut row = row.clone();
                if row.get("etag").is_some() {
                    row["etag"] = Value::Null;
                }
                // The tombstone a restore ends each records list with (checked by the kinto.js
                // tests): not part of the original.
                if let Some(o) = row.as_object_mut() {
                    o.remove("restore_marker");
                }
                row
            })
            .collect()
    };
    for (o, t) in ours.iter().zip(theirs) {
        if let (Some(restored), Some(original)) = (etag(o), etag(t)) {
            assert!(
                restored >= original,
                "a restored ETag went back: {o} vs {t}"
            );
        }
    }
    let (ours, theirs) = (strip(ours), strip(theirs));
    let differences: Vec<String> = ours
        .iter()
        .zip(theirs.iter())
        .filter(|(o, t)| o != t)
        .take(8)
        .map(|(o, t)| format!("restored: {o}\n original: {t}"))
        .collect();
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    assert_eq!(
        ours.len(),
        theirs.len(),
        "row count: {ours:#?} vs {theirs:#?}"
    );
}

/// A database dump without what belongs to the server itself rather than to its users: the
/// account the restore ran as, which each server had before its restore.
pub fn users_data(rows: Vec<Value>) -> Vec<Value> {
    rows.into_iter()
        .filter(|r| {
            !(r["object"][1] == "account" && r["object"][2] == "tandem")
                && r["ace"][0] != "/accounts/tandem"
        })
        .collect()
}

/// Asserts that two database dumps (`Kinto::database`) hold the same rows, naming the first
/// ones only one of them has.
pub fn assert_same_rows(a: &[Value], b: &[Value], (a_name, b_name): (&str, &str)) {
    let differences: Vec<String> = a
        .iter()
        .filter(|r| !b.contains(r))
        .map(|r| format!("{a_name} only: {r}"))
        .chain(
            b.iter()
                .filter(|r| !a.contains(r))
                .map(|r| format!("{b_name} only: {r}")),
        )
        .take(10)
        .collect();
    assert!(
        differences.is_empty(),
        "{b_name}'s tables differ from {a_name}'s:\n{}",
        differences.join("\n")
    );
}
