//! Restore drills: the last result per origin, and the buckets the last drill wrote into each
//! scratch server.
//!
//! The bucket list is what lets a drill empty its scratch server safely: it deletes only
//! buckets a drill wrote, and refuses a server holding anything else (see
//! [`crate::replicate::drill`]). It is written before the restore that writes the buckets, so a
//! drill stopped halfway still knows what it may have left behind.
//!
//! Also here: the time of the newest change of a feed that its holders acknowledged, from
//! which `status` and `/metrics` derive the recovery point (RPO).

use rusqlite::OptionalExtension;

use super::{Context, Store, StoreError};
use crate::feed::{self, Seq};
use crate::identity::NodeId;

/// The schema version that added the drill tables: older stores (opened read-only by a newer
/// command) have no drill to show.
const SINCE_VERSION: i64 = 8;

/// The outcome of the last drill of one origin.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DrillRecord {
    /// The origin drilled.
    pub origin: NodeId,
    /// When the drill started (ms since the epoch).
    pub at: u64,
    /// The seq of the snapshot restored (0 when none could be taken).
    pub seq: u64,
    /// Whether the restored server was checked equal to the snapshot.
    pub ok: bool,
    /// Why not, when not.
    pub error: Option<String>,
    /// How long the drill took, from emptying the scratch server to the last check: the
    /// measured recovery time (RTO) of this origin.
    pub duration_ms: u64,
    /// Live objects restored.
    pub objects: u64,
}

impl Store {
    /// Records the outcome of a drill of `record.origin`, replacing the previous one.
    pub fn record_drill(&mut self, record: &DrillRecord) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO drills (origin, at, seq, ok, error, duration_ms, objects) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                (
                    record.origin.as_bytes().as_slice(),
                    record.at as i64,
                    record.seq as i64,
                    record.ok,
                    record.error.as_deref(),
                    record.duration_ms as i64,
                    record.objects as i64,
                ),
            )
            .ctx("recording a drill")?;
        Ok(())
    }

    /// The last drill of every origin drilled, by origin.
    pub fn drills(&self) -> Result<Vec<DrillRecord>, StoreError> {
        if self.user_version()? < SINCE_VERSION {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT origin, at, seq, ok, error, duration_ms, objects FROM drills ORDER BY origin",
            )
            .ctx("reading drills")?;
        type Row = (Vec<u8>, i64, i64, bool, Option<String>, i64, i64);
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
                ))
            })
            .ctx("reading drills")?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at, seq, ok, error, duration_ms, objects): Row = row.ctx("reading drills")?;
            out.push(DrillRecord {
                origin: super::read::node_id_from(id)?,
                at: at as u64,
                seq: seq as u64,
                ok,
                error,
                duration_ms: duration_ms as u64,
                objects: objects as u64,
            });
        }
        Ok(out)
    }

    /// The last drill of `origin`, if it was drilled.
    pub fn drill(&self, origin: NodeId) -> Result<Option<DrillRecord>, StoreError> {
        Ok(self.drills()?.into_iter().find(|d| d.origin == origin))
    }

    /// The buckets drills wrote into the scratch server at `target` and did not delete since.
    pub fn drill_buckets(&self, target: &str) -> Result<Vec<String>, StoreError> {
        if self.user_version()? < SINCE_VERSION {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT bucket FROM drill_buckets WHERE target = ?1 ORDER BY bucket")
            .ctx("reading drill buckets")?;
        let rows = stmt
            .query_map([target], |r| r.get::<_, String>(0))
            .ctx("reading drill buckets")?;
        rows.collect::<rusqlite::Result<_>>()
            .ctx("reading drill buckets")
    }

    /// Adds `buckets` to those written into `target` (before writing them).
    pub fn add_drill_buckets(
        &mut self,
        target: &str,
        buckets: &[String],
    ) -> Result<(), StoreError> {
        let tx = self
            .conn
            .unchecked_transaction()
            .ctx("recording drill buckets")?;
        for bucket in buckets {
            tx.execute(
                "INSERT OR IGNORE INTO drill_buckets (target, bucket) VALUES (?1, ?2)",
                (target, bucket),
            )
            .ctx("recording drill buckets")?;
        }
        tx.commit().ctx("recording drill buckets")
    }

    /// The buckets of [`Store::drill_buckets`], each with the fingerprint recorded when the
    /// drill that wrote it read it back (`None` if that drill stopped before).
    pub fn drill_bucket_fingerprints(
        &self,
        target: &str,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        if self.user_version()? < SINCE_VERSION {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT bucket, fingerprint FROM drill_buckets WHERE target = ?1 ORDER BY bucket",
            )
            .ctx("reading drill buckets")?;
        let rows = stmt
            .query_map([target], |r| Ok((r.get(0)?, r.get(1)?)))
            .ctx("reading drill buckets")?;
        rows.collect::<rusqlite::Result<_>>()
            .ctx("reading drill buckets")
    }

    /// Records what `bucket` of `target` looked like when a drill read it back: a later drill
    /// deletes it only if it still does.
    pub fn seal_drill_bucket(
        &mut self,
        target: &str,
        bucket: &str,
        fingerprint: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE drill_buckets SET fingerprint = ?3 WHERE target = ?1 AND bucket = ?2",
                (target, bucket, fingerprint),
            )
            .ctx("recording a drill bucket's fingerprint")?;
        Ok(())
    }

    /// Forgets `bucket` of `target` (once deleted there).
    pub fn remove_drill_bucket(&mut self, target: &str, bucket: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "DELETE FROM drill_buckets WHERE target = ?1 AND bucket = ?2",
                (target, bucket),
            )
            .ctx("forgetting a drill bucket")?;
        Ok(())
    }

    /// The time (ms, the entry's own) of the newest entry of `origin` that at least `k` of the
    /// holders in `counted` acknowledged ([`Store::durable_seq`]); `None` when none is, or
    /// when that entry was compacted away.
    pub fn durable_at(
        &self,
        origin: NodeId,
        k: u32,
        counted: &[NodeId],
    ) -> Result<Option<u64>, StoreError> {
        let durable = self.durable_seq(origin, k, counted)?;
        if durable == 0 {
            return Ok(None);
        }
        let Some(entry) = self.entries_after(origin, Seq(durable - 1), 1)?.pop() else {
            return Ok(None);
        };
        if entry.seq.0 != durable {
            return Ok(None);
        }
        Ok(Some(feed::decode_entry(&entry.bytes)?.ts))
    }

    pub(super) fn user_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .optional()
            .ctx("reading the schema version")
            .map(|v| v.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;

    #[test]
    fn a_store_from_before_drills_opens_and_gains_them() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::from_seed([7; 32]);
        // A store as the previous schema left it.
        {
            let store = Store::open_writer(dir.path(), key.id()).unwrap();
            store
                .conn
                .execute_batch(
                    "DROP TABLE migrations; DROP TABLE migration_objects; DROP TABLE migration_switch; \
                     DROP TABLE migration_locks; DROP TABLE drills; DROP TABLE drill_buckets; \
                     DROP TABLE key_backups; DROP TRIGGER opened_follows_entries; DROP TABLE opened; \
                     DROP TABLE opened_paths; PRAGMA user_version = 7;",
                )
                .unwrap();
        }
        let old = Store::open_read_only(dir.path()).unwrap();
        assert_eq!(old.drills().unwrap(), vec![]);
        assert_eq!(
            old.drill_buckets("http://s/v1/").unwrap(),
            Vec::<String>::new()
        );
        drop(old);

        let mut store = Store::open_writer(dir.path(), key.id()).unwrap();
        let record = DrillRecord {
            origin: key.id(),
            at: 1_700_000_000_000,
            seq: 12,
            ok: false,
            error: Some("the scratch server: down".into()),
            duration_ms: 340,
            objects: 0,
        };
        store.record_drill(&record).unwrap();
        let newer = DrillRecord {
            ok: true,
            error: None,
            objects: 9,
            ..record.clone()
        };
        store.record_drill(&newer).unwrap();
        assert_eq!(store.drills().unwrap(), vec![newer.clone()]);
        assert_eq!(store.drill(key.id()).unwrap(), Some(newer));

        let target = "http://s/v1/";
        store
            .add_drill_buckets(target, &["b".into(), "a".into(), "b".into()])
            .unwrap();
        assert_eq!(store.drill_buckets(target).unwrap(), vec!["a", "b"]);
        assert!(store.drill_buckets("http://other/v1/").unwrap().is_empty());
        store.remove_drill_bucket(target, "a").unwrap();
        assert_eq!(store.drill_buckets(target).unwrap(), vec!["b"]);
    }

    #[test]
    fn nothing_is_durable_without_holders() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::from_seed([8; 32]);
        let mut store = Store::open_writer(dir.path(), key.id()).unwrap();
        store
            .append(
                &key,
                &[crate::store::Change {
                    op: crate::feed::Op::Put,
                    path: "/buckets/b".into(),
                    body: br#"{"data":{"id":"b","last_modified":1}}"#.to_vec(),
                }],
                &[],
            )
            .unwrap();
        assert_eq!(store.durable_at(key.id(), 1, &[]).unwrap(), None);
    }
}
