//! Migrations: some buckets of an origin mirrored into another Kinto server
//! ([`crate::replicate::mirror`] does the writing).
//!
//! Per migration, the seq up to which every chosen entry is on the target, and per live object
//! the timestamp the mirror last wrote there. That timestamp is what the next write expects to
//! find (`If-Match`): anything else means someone wrote on the target, and the mirror stops
//! rather than overwrite. Both move in one transaction, after the target acknowledged the
//! writes, so a crash between the two leaves the old position and the old expectations (the
//! writer recognizes its own writes when it comes back).
//!
//! The password is never stored: `credentials` says where to read it (`file:PATH`,
//! `env:VAR`).

use std::collections::HashMap;

use rusqlite::OptionalExtension;

use super::{Context, Store, StoreError};
use crate::identity::NodeId;

/// The schema version that added the migration tables: older stores have none.
const SINCE_VERSION: i64 = 9;

/// One migration, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Migration {
    /// Its number in this store.
    pub id: u64,
    /// The origin whose entries are mirrored.
    pub origin: NodeId,
    /// Buckets chosen whole.
    pub buckets: Vec<String>,
    /// Collections chosen, as `bucket/collection`.
    pub collections: Vec<String>,
    /// The target's root URL.
    pub target: String,
    /// The account written as.
    pub user: String,
    /// Where its password is: `file:PATH` or `env:VAR`.
    pub credentials: String,
    /// Every chosen entry up to this seq is on the target.
    pub applied_seq: u64,
    /// Why the mirror stopped (None while it mirrors).
    pub stopped: Option<String>,
    /// When it was recorded (ms since the epoch).
    pub created_at: u64,
}

impl Store {
    /// Records a new migration (its `id` is assigned, `stopped` ignored) with the timestamps
    /// of the live objects its initial restore wrote, as `(path, last_modified)`. Returns its
    /// id.
    pub fn add_migration(
        &mut self,
        migration: &Migration,
        objects: &[(String, i64)],
    ) -> Result<u64, StoreError> {
        let tx = self.conn.transaction().ctx("starting a transaction")?;
        tx.execute(
            "INSERT INTO migrations (origin, buckets, collections, target, user, credentials, \
             applied_seq, state, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'mirroring', ?8)",
            (
                migration.origin.as_bytes().as_slice(),
                serde_json::to_string(&migration.buckets).expect("strings"),
                serde_json::to_string(&migration.collections).expect("strings"),
                &migration.target,
                &migration.user,
                &migration.credentials,
                migration.applied_seq as i64,
                migration.created_at as i64,
            ),
        )
        .ctx("recording a migration")?;
        let id = tx.last_insert_rowid();
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO migration_objects (migration, path, last_modified) VALUES (?1, ?2, ?3)",
                )
                .ctx("recording a migration")?;
            for (path, stamp) in objects {
                insert
                    .execute((id, path, stamp))
                    .ctx("recording a migration")?;
            }
        }
        tx.commit().ctx("recording a migration")?;
        Ok(id as u64)
    }

    /// Every migration, oldest first.
    pub fn migrations(&self) -> Result<Vec<Migration>, StoreError> {
        if self.user_version()? < SINCE_VERSION {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, origin, buckets, collections, target, user, credentials, applied_seq, \
                 state, reason, created_at FROM migrations ORDER BY id",
            )
            .ctx("reading migrations")?;
        type Row = (
            i64,
            Vec<u8>,
            String,
            String,
            String,
            String,
            String,
            i64,
            String,
            Option<String>,
            i64,
        );
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                ))
            })
            .ctx("reading migrations")?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                origin,
                buckets,
                collections,
                target,
                user,
                credentials,
                seq,
                state,
                reason,
                at,
            ): Row = row.ctx("reading migrations")?;
            let list = |text: &str| -> Result<Vec<String>, StoreError> {
                serde_json::from_str(text).map_err(|_| StoreError::Corrupt {
                    path: self.path().to_owned(),
                    detail: format!("migration {id}: a selection that is not a JSON list"),
                })
            };
            out.push(Migration {
                id: id as u64,
                origin: super::read::node_id_from(origin)?,
                buckets: list(&buckets)?,
                collections: list(&collections)?,
                target,
                user,
                credentials,
                applied_seq: seq as u64,
                stopped: (state == "stopped")
                    .then(|| reason.unwrap_or_else(|| "stopped".to_owned())),
                created_at: at as u64,
            });
        }
        Ok(out)
    }

    /// The timestamps the mirror of migration `id` last wrote at `paths` (paths it has not
    /// written live are absent).
    pub fn migration_stamps(
        &self,
        id: u64,
        paths: &[String],
    ) -> Result<HashMap<String, i64>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT last_modified FROM migration_objects WHERE migration = ?1 AND path = ?2",
            )
            .ctx("reading a migration")?;
        let mut out = HashMap::new();
        for path in paths {
            if let Some(stamp) = stmt
                .query_row((id as i64, path), |r| r.get::<_, i64>(0))
                .optional()
                .ctx("reading a migration")?
            {
                out.insert(path.clone(), stamp);
            }
        }
        Ok(out)
    }

    /// Records that migration `id` wrote every chosen entry after `from` up to `to`: `written`
    /// holds what each object it wrote is now on the target (`Some(last_modified)` live, `None`
    /// deleted). One transaction; does nothing (and returns false) unless the migration still
    /// mirrors from `from`, so that a repeated call cannot move it twice.
    pub fn advance_migration(
        &mut self,
        id: u64,
        from: u64,
        to: u64,
        written: &[(String, Option<i64>)],
    ) -> Result<bool, StoreError> {
        let tx = self.conn.transaction().ctx("starting a transaction")?;
        let moved = tx
            .execute(
                "UPDATE migrations SET applied_seq = ?3 \
                 WHERE id = ?1 AND applied_seq = ?2 AND state = 'mirroring'",
                (id as i64, from as i64, to as i64),
            )
            .ctx("advancing a migration")?;
        if moved == 0 {
            return Ok(false);
        }
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO migration_objects (migration, path, last_modified) \
                     VALUES (?1, ?2, ?3)",
                )
                .ctx("advancing a migration")?;
            let mut delete = tx
                .prepare_cached("DELETE FROM migration_objects WHERE migration = ?1 AND path = ?2")
                .ctx("advancing a migration")?;
            for (path, stamp) in written {
                match stamp {
                    Some(stamp) => upsert.execute((id as i64, path, stamp)),
                    None => delete.execute((id as i64, path)),
                }
                .ctx("advancing a migration")?;
            }
        }
        tx.commit().ctx("advancing a migration")?;
        Ok(true)
    }

    /// Stops migration `id` for `reason`; its position and expectations stay as they are.
    pub fn stop_migration(&mut self, id: u64, reason: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE migrations SET state = 'stopped', reason = ?2 WHERE id = ?1",
                (id as i64, reason),
            )
            .ctx("stopping a migration")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;

    fn migration(origin: NodeId) -> Migration {
        Migration {
            id: 0,
            origin,
            buckets: vec!["alice".into()],
            collections: vec!["bob/notes".into()],
            target: "http://t/v1/".into(),
            user: "admin".into(),
            credentials: "file:/etc/pw".into(),
            applied_seq: 10,
            stopped: None,
            created_at: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_migration_advances_once_per_position_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::from_seed([3; 32]);
        let mut store = Store::open_writer(dir.path(), key.id()).unwrap();
        assert!(store.migrations().unwrap().is_empty());
        let objects = vec![
            ("/buckets/alice".to_owned(), 5),
            ("/buckets/alice/collections/c".to_owned(), 6),
        ];
        let id = store.add_migration(&migration(key.id()), &objects).unwrap();
        let got = store.migrations().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0],
            Migration {
                id,
                ..migration(key.id())
            }
        );
        let paths: Vec<String> = vec!["/buckets/alice".into(), "/buckets/x".into()];
        assert_eq!(
            store.migration_stamps(id, &paths).unwrap(),
            HashMap::from([("/buckets/alice".to_owned(), 5)])
        );

        let written = vec![
            ("/buckets/alice".to_owned(), Some(9)),
            ("/buckets/alice/collections/c".to_owned(), None),
        ];
        assert!(store.advance_migration(id, 10, 12, &written).unwrap());
        // The same call again (a retried commit) changes nothing.
        assert!(!store.advance_migration(id, 10, 12, &[]).unwrap());
        let all: Vec<String> = objects.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(
            store.migration_stamps(id, &all).unwrap(),
            HashMap::from([("/buckets/alice".to_owned(), 9)])
        );
        assert_eq!(store.migrations().unwrap()[0].applied_seq, 12);

        store
            .stop_migration(id, "/buckets/alice was written on the target")
            .unwrap();
        assert!(!store.advance_migration(id, 12, 13, &[]).unwrap());
        let got = &store.migrations().unwrap()[0];
        assert_eq!(
            got.stopped.as_deref(),
            Some("/buckets/alice was written on the target")
        );
        assert_eq!(got.applied_seq, 12);
    }

    #[test]
    fn a_store_from_before_migrations_opens_and_gains_them() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::from_seed([4; 32]);
        {
            let store = Store::open_writer(dir.path(), key.id()).unwrap();
            store
                .conn
                .execute_batch(
                    "DROP TABLE migrations; DROP TABLE migration_objects; DROP TABLE key_backups; \
                     PRAGMA user_version = 8;",
                )
                .unwrap();
        }
        let old = Store::open_read_only(dir.path()).unwrap();
        assert!(old.migrations().unwrap().is_empty());
        drop(old);
        let mut store = Store::open_writer(dir.path(), key.id()).unwrap();
        let id = store.add_migration(&migration(key.id()), &[]).unwrap();
        assert_eq!(store.migrations().unwrap()[0].id, id);
    }
}
