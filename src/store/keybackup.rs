//! Key backups this node keeps for the origins it holds: one sealed node key per origin, with
//! the public key that a fetch must prove (see [`crate::keybackup`]). The store neither
//! checks nor understands the blob; whoever stores and whoever fetches it does.

use rusqlite::OptionalExtension;

use super::{Context, Store, StoreError};
use crate::identity::NodeId;

/// The schema version that added the table: an older store (read by a newer command) holds
/// no key backup.
const SINCE_VERSION: i64 = 11;

/// One origin's key backup as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKeyBackup {
    /// The format version the origin says it sealed with.
    pub version: u16,
    /// The public key a fetch proof must verify under.
    pub fetch_key: [u8; 32],
    /// The sealed key, opaque here.
    pub blob: Vec<u8>,
    /// When it was stored (ms since the epoch).
    pub stored_at: u64,
}

impl std::fmt::Debug for StoredKeyBackup {
    // The blob is only ever shown by its size.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StoredKeyBackup(version {}, {} bytes, stored at {})",
            self.version,
            self.blob.len(),
            self.stored_at
        )
    }
}

impl Store {
    /// Stores `backup` as `origin`'s key backup, replacing the one before.
    pub fn put_key_backup(
        &mut self,
        origin: NodeId,
        backup: &StoredKeyBackup,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO key_backups (origin, version, fetch_key, blob, stored_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                (
                    origin.as_bytes().as_slice(),
                    backup.version,
                    backup.fetch_key.as_slice(),
                    backup.blob.as_slice(),
                    backup.stored_at as i64,
                ),
            )
            .ctx("storing a key backup")?;
        Ok(())
    }

    /// `origin`'s key backup, if one is stored.
    pub fn key_backup(&self, origin: NodeId) -> Result<Option<StoredKeyBackup>, StoreError> {
        if self.user_version()? < SINCE_VERSION {
            return Ok(None);
        }
        let row: Option<(u16, Vec<u8>, Vec<u8>, i64)> = self
            .conn
            .query_row(
                "SELECT version, fetch_key, blob, stored_at FROM key_backups WHERE origin = ?1",
                [origin.as_bytes().as_slice()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .ctx("reading a key backup")?;
        Ok(
            row.map(|(version, fetch_key, blob, stored_at)| StoredKeyBackup {
                version,
                // The table's CHECK holds it to 32 bytes.
                fetch_key: fetch_key.try_into().unwrap_or([0; 32]),
                blob,
                stored_at: stored_at.max(0) as u64,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;

    #[test]
    fn one_backup_per_origin_the_last_stored_wins() {
        let dir = tempfile::tempdir().unwrap();
        let me = NodeKey::from_seed([1; 32]).id();
        let origin = NodeKey::from_seed([2; 32]).id();
        let mut store = Store::open_writer(dir.path(), me).unwrap();
        assert_eq!(store.key_backup(origin).unwrap(), None);
        let first = StoredKeyBackup {
            version: 1,
            fetch_key: [3; 32],
            blob: vec![4; 72],
            stored_at: 10,
        };
        store.put_key_backup(origin, &first).unwrap();
        assert_eq!(store.key_backup(origin).unwrap(), Some(first.clone()));
        let second = StoredKeyBackup {
            blob: vec![5; 72],
            stored_at: 20,
            ..first
        };
        store.put_key_backup(origin, &second).unwrap();
        assert_eq!(store.key_backup(origin).unwrap(), Some(second.clone()));
        assert_eq!(store.key_backup(me).unwrap(), None);
        // Oversized blobs never get in, whatever the caller checked.
        let huge = StoredKeyBackup {
            blob: vec![0; 257],
            ..second
        };
        assert!(store.put_key_backup(origin, &huge).is_err());
        assert!(!format!("{huge:?}").contains("0, 0"));
    }

    #[test]
    fn a_store_from_before_key_backups_opens_and_gains_them() {
        let dir = tempfile::tempdir().unwrap();
        let me = NodeKey::from_seed([6; 32]).id();
        {
            let store = Store::open_writer(dir.path(), me).unwrap();
            store
                .conn
                .execute_batch("DROP TABLE key_backups; DROP TRIGGER opened_follows_entries; DROP TABLE opened; DROP TABLE opened_paths; PRAGMA user_version = 10;")
                .unwrap();
        }
        let old = Store::open_read_only(dir.path()).unwrap();
        assert_eq!(old.key_backup(me).unwrap(), None);
        drop(old);
        let mut store = Store::open_writer(dir.path(), me).unwrap();
        let backup = StoredKeyBackup {
            version: 1,
            fetch_key: [7; 32],
            blob: vec![8; 72],
            stored_at: 1,
        };
        store.put_key_backup(me, &backup).unwrap();
        assert_eq!(store.key_backup(me).unwrap(), Some(backup));
    }
}
