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

/// The schema version that added the switch at the end of a migration.
const SWITCH_SINCE_VERSION: i64 = 10;

/// Where a migration's switch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// `migrate finish` runs: the old server's copy is being made read-only; the mirror goes on.
    Finishing,
    /// Done: the old copy is read-only, the moved statements are in the feed, the mirror
    /// stopped.
    Finished,
    /// Given up: the old copy's permissions are back, the mirror stopped.
    Aborted,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Finishing => "finishing",
            Phase::Finished => "finished",
            Phase::Aborted => "aborted",
        }
    }

    fn parse(text: &str) -> Option<Phase> {
        match text {
            "finishing" => Some(Phase::Finishing),
            "finished" => Some(Phase::Finished),
            "aborted" => Some(Phase::Aborted),
            _ => None,
        }
    }
}

/// The switch of a migration, once `migrate finish` (or `abort`) began it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Switch {
    /// Where it is.
    pub phase: Phase,
    /// The account that changes the old server's permissions.
    pub user: String,
    /// Where its password is: `file:PATH` or `env:VAR`.
    pub credentials: String,
    /// The seq of the moved statements, once finished.
    pub moved_seq: Option<u64>,
    /// When the phase was entered (ms since the epoch).
    pub at: u64,
}

/// An object of the old server whose write permissions the switch took away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// Its path.
    pub path: String,
    /// Its permissions before, as recorded (`{"write": [...], ...}`).
    pub permissions: String,
    /// The `last_modified` the old server gave it when locked (None until it answered).
    pub locked_stamp: Option<i64>,
}

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
    /// Its switch, once begun.
    pub switch: Option<Switch>,
}

impl Migration {
    /// Whether the mirror still writes its target: neither stopped nor done.
    pub fn mirrors(&self) -> bool {
        self.stopped.is_none()
            && !matches!(
                self.switch.as_ref().map(|s| s.phase),
                Some(Phase::Finished | Phase::Aborted)
            )
    }
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
            let switch = self.switch(id as u64)?;
            out.push(Migration {
                switch,
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
                 WHERE id = ?1 AND applied_seq = ?2 AND state = 'mirroring' AND NOT EXISTS \
                 (SELECT 1 FROM migration_switch WHERE migration = ?1 \
                  AND phase IN ('finished', 'aborted'))",
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

impl Store {
    /// The switch of migration `id`, if begun.
    fn switch(&self, id: u64) -> Result<Option<Switch>, StoreError> {
        if self.user_version()? < SWITCH_SINCE_VERSION {
            return Ok(None);
        }
        let row = self
            .conn
            .prepare_cached(
                "SELECT phase, user, credentials, moved_seq, at FROM migration_switch \
                 WHERE migration = ?1",
            )
            .ctx("reading a migration")?
            .query_row([id as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .optional()
            .ctx("reading a migration")?;
        let Some((phase, user, credentials, moved_seq, at)) = row else {
            return Ok(None);
        };
        let phase = Phase::parse(&phase).ok_or_else(|| StoreError::Corrupt {
            path: self.path().to_owned(),
            detail: format!("migration {id}: unknown switch phase {phase:?}"),
        })?;
        Ok(Some(Switch {
            phase,
            user,
            credentials,
            moved_seq: moved_seq.map(|s| s as u64),
            at: at as u64,
        }))
    }

    /// Enters `phase` for migration `id`: the account and credentials are recorded the first
    /// time (a later phase keeps them), `moved_seq` when given.
    pub fn set_switch(
        &mut self,
        id: u64,
        phase: Phase,
        user: &str,
        credentials: &str,
        moved_seq: Option<u64>,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO migration_switch (migration, phase, user, credentials, moved_seq, at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (migration) DO UPDATE SET \
                 phase = excluded.phase, moved_seq = coalesce(excluded.moved_seq, moved_seq), \
                 at = excluded.at",
                (
                    id as i64,
                    phase.as_str(),
                    user,
                    credentials,
                    moved_seq.map(|s| s as i64),
                    super::now_ms() as i64,
                ),
            )
            .ctx("recording a migration's switch")?;
        Ok(())
    }

    /// The objects migration `id` locked, by path.
    pub fn migration_locks(&self, id: u64) -> Result<Vec<Lock>, StoreError> {
        if self.user_version()? < SWITCH_SINCE_VERSION {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT path, permissions, locked_stamp FROM migration_locks \
                 WHERE migration = ?1 ORDER BY path",
            )
            .ctx("reading a migration")?;
        let rows = stmt
            .query_map([id as i64], |r| {
                Ok(Lock {
                    path: r.get(0)?,
                    permissions: r.get(1)?,
                    locked_stamp: r.get(2)?,
                })
            })
            .ctx("reading a migration")?;
        rows.collect::<Result<_, _>>().ctx("reading a migration")
    }

    /// Records that migration `id` is about to lock `locks` (path, permissions before). A path
    /// already recorded keeps its first permissions: those are what abort gives back.
    pub fn add_migration_locks(
        &mut self,
        id: u64,
        locks: &[(String, String)],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction().ctx("starting a transaction")?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO migration_locks (migration, path, permissions) \
                     VALUES (?1, ?2, ?3)",
                )
                .ctx("recording locks")?;
            for (path, permissions) in locks {
                insert
                    .execute((id as i64, path, permissions))
                    .ctx("recording locks")?;
            }
        }
        tx.commit().ctx("recording locks")
    }

    /// Forgets the locks of migration `id` at `paths` (objects gone from the old server).
    pub fn remove_migration_locks(&mut self, id: u64, paths: &[String]) -> Result<(), StoreError> {
        let tx = self.conn.transaction().ctx("starting a transaction")?;
        {
            let mut delete = tx
                .prepare_cached("DELETE FROM migration_locks WHERE migration = ?1 AND path = ?2")
                .ctx("forgetting locks")?;
            for path in paths {
                delete.execute((id as i64, path)).ctx("forgetting locks")?;
            }
        }
        tx.commit().ctx("forgetting locks")
    }

    /// Records the timestamps the old server gave the objects it locked.
    pub fn set_lock_stamps(&mut self, id: u64, stamps: &[(String, i64)]) -> Result<(), StoreError> {
        let tx = self.conn.transaction().ctx("starting a transaction")?;
        {
            let mut update = tx
                .prepare_cached(
                    "UPDATE migration_locks SET locked_stamp = ?3 WHERE migration = ?1 AND path = ?2",
                )
                .ctx("recording locks")?;
            for (path, stamp) in stamps {
                update
                    .execute((id as i64, path, stamp))
                    .ctx("recording locks")?;
            }
        }
        tx.commit().ctx("recording locks")
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
            switch: None,
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
    fn a_switch_keeps_its_account_and_first_permissions_and_ends_the_mirror() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::from_seed([5; 32]);
        let mut store = Store::open_writer(dir.path(), key.id()).unwrap();
        let id = store.add_migration(&migration(key.id()), &[]).unwrap();
        assert!(store.migrations().unwrap()[0].mirrors());
        store
            .set_switch(id, Phase::Finishing, "admin", "file:/pw", None)
            .unwrap();
        let locks = vec![("/buckets/alice".to_owned(), r#"{"write":["a"]}"#.to_owned())];
        store.add_migration_locks(id, &locks).unwrap();
        // Locked again later: the permissions from before the first lock stay.
        let again = vec![("/buckets/alice".to_owned(), r#"{"write":[]}"#.to_owned())];
        store.add_migration_locks(id, &again).unwrap();
        store
            .set_lock_stamps(id, &[("/buckets/alice".to_owned(), 77)])
            .unwrap();
        assert_eq!(
            store.migration_locks(id).unwrap(),
            vec![Lock {
                path: "/buckets/alice".into(),
                permissions: r#"{"write":["a"]}"#.into(),
                locked_stamp: Some(77),
            }]
        );
        let m = &store.migrations().unwrap()[0];
        assert!(m.mirrors(), "the mirror goes on while finishing");
        assert!(store.advance_migration(id, 10, 11, &[]).unwrap());

        // A later phase keeps the account; a finished migration no longer advances.
        store
            .set_switch(id, Phase::Finished, "other", "env:X", Some(12))
            .unwrap();
        let m = &store.migrations().unwrap()[0];
        let switch = m.switch.as_ref().unwrap();
        assert_eq!(
            (
                switch.phase,
                switch.user.as_str(),
                switch.credentials.as_str()
            ),
            (Phase::Finished, "admin", "file:/pw")
        );
        assert_eq!(switch.moved_seq, Some(12));
        assert!(!m.mirrors());
        assert!(!store.advance_migration(id, 11, 12, &[]).unwrap());
        store
            .set_switch(id, Phase::Aborted, "admin", "file:/pw", None)
            .unwrap();
        let switch = store.migrations().unwrap()[0].switch.clone().unwrap();
        assert_eq!((switch.phase, switch.moved_seq), (Phase::Aborted, Some(12)));
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
                    "DROP TABLE migrations; DROP TABLE migration_objects; DROP TABLE migration_switch; \
                     DROP TABLE migration_locks; DROP TABLE key_backups; DROP TRIGGER opened_follows_entries; \
                     DROP TABLE opened; DROP TABLE opened_paths; PRAGMA user_version = 8;",
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
