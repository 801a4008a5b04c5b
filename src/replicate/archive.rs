//! Portable archives of a feed ([`crate::protocol::archive`]): writing one from the store, and
//! importing one into the store after verifying all of it.

use std::path::Path;

use crate::feed::{EntryHash, FeedError, Seq, Snapshot, StateFold, verify_batch};
use crate::identity::NodeId;
use crate::protocol::archive::{ArchiveError, ArchiveReader, ArchiveWriter, Section};
use crate::protocol::wire::PAGE_BYTES;
use crate::seal::Ring;
use crate::store::{Store, StoreError};

/// Why an archive could not be written or imported. Nothing is imported from an archive that
/// fails verification.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file is not a readable archive.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Its content does not verify against the origin's key.
    #[error("the archive does not verify: {what}")]
    Invalid {
        /// What failed (names the seq).
        what: String,
    },
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A compaction ran while the archive was written (beside a running daemon).
    #[error("the store was compacted while the archive was written; run the export again")]
    Changed,
    /// The archive verified, but loading stopped: the entries up to `entries` are stored.
    #[error(
        "the archive verified, but loading stopped after seq {entries} (what came before is stored): {source}"
    )]
    Stopped {
        /// The last seq stored.
        entries: u64,
        /// Why it stopped (a fork, the store).
        source: StoreError,
    },
}

/// Most snapshots an archive may carry.
pub const MAX_SNAPSHOTS: usize = 100_000;

/// What an archive holds, once verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ArchiveSummary {
    /// Its origin.
    pub origin: NodeId,
    /// The last seq it holds.
    pub entries: u64,
    /// Snapshots (each checked against the state the entries give).
    pub snapshots: u64,
    /// Whether it carries the origin's content keys (each sealed entry checked to open).
    pub readable: bool,
}

/// Writes `origin` to `out`: for an origin compacted here, its base snapshot, the entries that
/// give the state there, the feed after it (in pages ending at its checkpoints) and the later
/// snapshots; otherwise every snapshot and the whole feed from seq 1 (nothing held is left out).
///
/// With `keys` (the origin's content keys, `export --archive --decrypt`), the archive carries
/// them, so that whoever holds it reads the sealed entries (format version 3). With `up_to` (a
/// seq the feed has a checkpoint at), it ends there, with the snapshots up to it.
pub fn write_archive(
    store: &Store,
    origin: NodeId,
    out: impl std::io::Write,
    keys: Option<&Ring>,
    up_to: Option<Seq>,
) -> Result<ArchiveSummary, ImportError> {
    let mut w = match keys {
        Some(ring) => ArchiveWriter::with_keys(out, &origin, &ring.to_bytes())?,
        None => ArchiveWriter::new(out, &origin)?,
    };
    let mut snapshots = store.snapshots(origin)?;
    snapshots.retain(|s| up_to.is_none_or(|u| s.seq <= u));
    for s in &snapshots {
        w.snapshot(s)?;
    }
    let mut after = Seq(0);
    if let Some(base) = store.base(origin)? {
        // A compaction between these reads (the daemon works beside the export) moves the base.
        let changed = || ImportError::Changed;
        if snapshots.first().map(|s| s.seq) != Some(base.seq) {
            return Err(changed());
        }
        // Sections of at most one page's bytes, as peers are served them.
        let mut last = 0;
        loop {
            let (_, more, entries) = store
                .base_page(origin, Some(base.seq), last, PAGE_BYTES)?
                .ok_or_else(changed)?;
            w.base(entries.iter().map(Vec::as_slice))?;
            match entries.last() {
                Some(e) if more => {
                    last = crate::feed::decode_entry(e)
                        .map_err(StoreError::from)?
                        .seq
                        .0
                }
                _ => break,
            }
        }
        after = base.seq;
    }
    loop {
        // Up to `up_to`, a checkpoint: a page of at most the entries before it ends at or
        // before it.
        let limit = match up_to {
            Some(end) if end <= after => break,
            Some(end) => (end.0 - after.0) as usize,
            None => usize::MAX,
        };
        let Some((entries, checkpoint)) = store.entries_page(origin, after, limit, PAGE_BYTES)?
        else {
            break;
        };
        w.page(&checkpoint, entries.iter().map(|e| e.bytes.as_slice()))?;
        after = checkpoint.seq;
    }
    let mut out = w.finish()?;
    out.flush().map_err(ArchiveError::Io)?;
    Ok(ArchiveSummary {
        origin,
        entries: after.0,
        snapshots: snapshots.len() as u64,
        readable: keys.is_some(),
    })
}

/// Reads and verifies the whole archive at `path` without storing anything: the chain from
/// seq 1, every checkpoint, every snapshot's signature, head and state root (the state
/// replayed in memory), and the file's digest.
pub fn verify_archive(path: &Path) -> Result<ArchiveSummary, ImportError> {
    verify_archive_from(&mut open(path)?)
}

/// Verifies an archive, then loads it from the same open file (so what was verified is what
/// is loaded). Nothing is loaded unless everything verifies; a load that stops partway keeps
/// the verified pages it stored and says how far it got.
pub fn import_archive(path: &Path, store: &mut Store) -> Result<ArchiveSummary, ImportError> {
    use std::io::Seek;
    let mut file = open(path)?;
    let verified = verify_archive_from(&mut file)?;
    file.rewind().map_err(ArchiveError::Io)?;
    load_archive_from(&mut file, store)?;
    Ok(verified)
}

fn verify_archive_from(file: &mut std::fs::File) -> Result<ArchiveSummary, ImportError> {
    let mut r = ArchiveReader::new(&*file)?;
    let origin = r.origin();
    let invalid = |what: String| ImportError::Invalid { what };
    let mut snapshots: Vec<Snapshot> = Vec::new();
    // The state as the entries are replayed.
    let mut state = StateFold::new();
    let mut head = (0u64, EntryHash::genesis(&origin));
    let mut next_snapshot = 0;
    // Base entries read so far (count, last seq and hash), until the base is settled.
    let mut base: Option<(usize, u64, EntryHash)> = None;
    let mut settled = false;
    // The content keys it carries (version 3): every sealed entry must open with them.
    let mut ring: Option<Ring> = None;
    let mut first = true;
    let opens =
        |ring: &Option<Ring>, entry: &crate::feed::EntryRef<'_>| -> Result<(), ImportError> {
            match ring {
                Some(ring) if crate::seal::is_sealed(entry.path) => {
                    ring.open_entry(entry).map(drop).map_err(|e| {
                        invalid(format!(
                            "seq {}: the archive's keys do not open it: {e}",
                            entry.seq
                        ))
                    })
                }
                _ => Ok(()),
            }
        };
    // Once the base sections end: their state must be the first snapshot's, and the feed
    // goes on from its head.
    let settle = |base: Option<(usize, u64, EntryHash)>,
                  state: &StateFold,
                  snapshots: &[Snapshot]|
     -> Result<Option<(u64, EntryHash)>, ImportError> {
        let Some((count, last, hash)) = base else {
            return Ok(None);
        };
        let s = &snapshots[0];
        crate::feed::check_base(s, state, count, Some((last, hash)))
            .map_err(|what| invalid(format!("snapshot {}: {what}", s.id())))?;
        Ok(Some((s.seq.0, s.head_hash)))
    };
    while let Some(section) = r.next_section()? {
        let is_first = std::mem::replace(&mut first, false);
        if !settled
            && !matches!(
                section,
                Section::Snapshot(_) | Section::Base(_) | Section::Keys(_)
            )
        {
            settled = true;
            if let Some(h) = settle(base, &state, &snapshots)? {
                head = h;
                next_snapshot = 1;
            }
        }
        match section {
            Section::Keys(keys) => {
                if !is_first {
                    return Err(invalid("content keys after the first section".into()));
                }
                ring = Some(Ring::from_keys(origin, &keys).map_err(|e| invalid(e.to_string()))?);
            }
            Section::Base(entries) => {
                let Some(s) = snapshots.first() else {
                    return Err(invalid("base entries without a snapshot".into()));
                };
                if settled {
                    return Err(invalid("base entries after the first page".into()));
                }
                let (mut count, mut last, mut hash) = base.unwrap_or((0, 0, EntryHash([0; 32])));
                for bytes in &entries {
                    let entry = crate::feed::decode_entry(bytes)
                        .map_err(|e| invalid(format!("a base entry: {e}")))?;
                    if entry.seq.0 <= last || entry.seq > s.seq {
                        return Err(invalid(format!(
                            "base entry at seq {} out of order or beyond snapshot {}",
                            entry.seq,
                            s.id()
                        )));
                    }
                    opens(&ring, &entry)?;
                    state.apply(entry.seq.0, &entry);
                    last = entry.seq.0;
                    hash = EntryHash::of(bytes);
                    count += 1;
                }
                base = Some((count, last, hash));
            }
            Section::Snapshot(s) => {
                if head.0 > 0 || base.is_some() {
                    return Err(invalid("a snapshot after the first page".into()));
                }
                if s.origin != origin {
                    return Err(invalid(format!(
                        "a snapshot of another origin, {}",
                        s.origin
                    )));
                }
                if snapshots.last().is_some_and(|l: &Snapshot| l.seq >= s.seq) {
                    return Err(invalid("snapshots not in increasing seq order".into()));
                }
                if snapshots.len() >= MAX_SNAPSHOTS {
                    return Err(invalid(format!("more than {MAX_SNAPSHOTS} snapshots")));
                }
                s.verify().map_err(|e| invalid(e.to_string()))?;
                snapshots.push(s);
            }
            Section::Page(checkpoint, entries) => {
                let batch = verify_batch(origin, entries, checkpoint)
                    .map_err(|e| invalid(format!("page ending at seq {}: {e}", checkpoint.seq)))?;
                if batch.first_seq().0 != head.0 + 1 || batch.first_prev() != head.1 {
                    return Err(invalid(format!(
                        "the page starting at seq {} does not follow seq {}",
                        batch.first_seq(),
                        head.0
                    )));
                }
                for (bytes, hash) in batch.entries().iter().zip(batch.hashes()) {
                    let entry = crate::feed::decode_entry(bytes)
                        .map_err(|e| invalid(format!("seq {}: {e}", head.0 + 1)))?;
                    opens(&ring, &entry)?;
                    state.apply(entry.seq.0, &entry);
                    head = (entry.seq.0, *hash);
                    while let Some(s) = snapshots.get(next_snapshot).filter(|s| s.seq.0 == head.0) {
                        check_snapshot(s, head.1, &state).map_err(invalid)?;
                        next_snapshot += 1;
                    }
                }
            }
        }
    }
    if !settled && let Some(h) = settle(base, &state, &snapshots)? {
        head = h;
        next_snapshot = 1;
    }
    if let Some(s) = snapshots.get(next_snapshot) {
        return Err(invalid(format!(
            "snapshot {} is at seq {}, beyond the archive's last entry ({})",
            s.id(),
            s.seq,
            head.0
        )));
    }
    Ok(ArchiveSummary {
        origin,
        entries: head.0,
        snapshots: snapshots.len() as u64,
        readable: ring.is_some(),
    })
}

fn check_snapshot(s: &Snapshot, hash: EntryHash, state: &StateFold) -> Result<(), String> {
    if s.head_hash != hash {
        return Err(format!(
            "snapshot {} names another entry at seq {}",
            s.id(),
            s.seq
        ));
    }
    let got = state.summary().map_err(|e: FeedError| e.to_string())?;
    if (got.root, got.objects, got.bytes) != (s.state_root, s.objects, s.bytes) {
        return Err(format!(
            "snapshot {} at seq {} states another state than the entries give",
            s.id(),
            s.seq
        ));
    }
    Ok(())
}

/// Imports a verified archive into `store`: every page is accepted as from a peer (what is
/// already held is skipped; a different history is a fork, stored as evidence), then the
/// snapshots. Call [`verify_archive`] first: this reads the file again.
pub fn load_archive(path: &Path, store: &mut Store) -> Result<ArchiveSummary, ImportError> {
    load_archive_from(&mut open(path)?, store)
}

fn load_archive_from(
    file: &mut std::fs::File,
    store: &mut Store,
) -> Result<ArchiveSummary, ImportError> {
    let mut r = ArchiveReader::new(&*file)?;
    let origin = r.origin();
    let mut snapshots: Vec<Snapshot> = Vec::new();
    let mut entries = 0;
    let mut base: Option<Vec<Vec<u8>>> = None;
    let install = |base: &mut Option<Vec<Vec<u8>>>,
                   snapshots: &[Snapshot],
                   store: &mut Store|
     -> Result<u64, ImportError> {
        let Some(parts) = base.take() else {
            return Ok(0);
        };
        store
            .install_base(&snapshots[0], &parts)
            .map_err(|source| ImportError::Stopped { entries: 0, source })?;
        Ok(snapshots[0].seq.0)
    };
    let mut ring = None;
    while let Some(section) = r.next_section()? {
        if !matches!(
            section,
            Section::Snapshot(_) | Section::Base(_) | Section::Keys(_)
        ) && base.is_some()
        {
            entries = install(&mut base, &snapshots, store)?;
        }
        match section {
            Section::Keys(keys) => {
                ring = Some(
                    Ring::from_keys(origin, &keys).map_err(|e| ImportError::Invalid {
                        what: e.to_string(),
                    })?,
                );
            }
            Section::Snapshot(s) => snapshots.push(s),
            Section::Base(page) => base.get_or_insert_with(Vec::new).extend(page),
            Section::Page(checkpoint, page) => {
                let batch =
                    verify_batch(origin, page, checkpoint).map_err(|e| ImportError::Invalid {
                        what: e.to_string(),
                    })?;
                store
                    .accept(&batch, &[])
                    .map_err(|source| ImportError::Stopped { entries, source })?;
                entries = batch.checkpoint().seq.0;
            }
        }
    }
    if base.is_some() {
        entries = install(&mut base, &snapshots, store)?;
    }
    for s in &snapshots {
        match store.accept_snapshot(s) {
            // Below what this node compacted: it cannot check it, and needs it no more.
            Ok(()) | Err(StoreError::Compacted { .. }) => {}
            Err(source) => return Err(ImportError::Stopped { entries, source }),
        }
    }
    // The keys it carries open what was loaded: this node then reads the origin as its
    // readers do.
    if let Some(ring) = &ring {
        store
            .open_with(ring, Seq(entries))
            .map_err(|source| ImportError::Stopped { entries, source })?;
    }
    Ok(ArchiveSummary {
        origin,
        entries,
        snapshots: snapshots.len() as u64,
        readable: ring.is_some(),
    })
}

fn open(path: &Path) -> Result<std::fs::File, ImportError> {
    std::fs::File::open(path).map_err(|e| {
        ImportError::Archive(ArchiveError::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Op;
    use crate::identity::NodeKey;
    use crate::store::Change;

    /// Writes `origin`'s archive from `store` to `file`.
    fn archive_to(
        store: &Store,
        origin: NodeId,
        file: &Path,
        keys: Option<&Ring>,
    ) -> ArchiveSummary {
        write_archive(
            store,
            origin,
            std::fs::File::create(file).unwrap(),
            keys,
            None,
        )
        .unwrap()
    }

    fn store_with_feed(dir: &Path, key: &NodeKey) -> Store {
        let mut store = Store::open_writer(dir, key.id()).unwrap();
        let changes: Vec<Change> = (0..3000)
            .map(|i| Change {
                op: if i % 10 == 9 { Op::Delete } else { Op::Put },
                path: format!("/buckets/b/collections/c/records/r{}", i % 700),
                body: if i % 10 == 9 {
                    Vec::new()
                } else {
                    format!(r#"{{"data":{{"n":{i}}}}}"#).into_bytes()
                },
            })
            .collect();
        for chunk in changes.chunks(1000) {
            store.append(key, chunk, &[]).unwrap();
            store.create_snapshot(key).unwrap();
        }
        store
    }

    #[test]
    fn an_archive_up_to_a_rotation_carries_only_the_keys_before_it_and_ends_there() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let key = NodeKey::from_seed([57; 32]);
        let mut store = Store::open_writer(a.path(), key.id()).unwrap();
        store.seal_own(&key, Some(true)).unwrap();
        let change = |i: u32| Change {
            op: Op::Put,
            path: format!("/buckets/b/collections/c/records/r{}", i % 300),
            body: format!(r#"{{"data":{{"n":{i}}}}}"#).into_bytes(),
        };
        // Several appends (each ends at a checkpoint), a snapshot, the rotation, then more
        // entries, and a snapshot after it.
        for round in 0..4u32 {
            let changes: Vec<Change> = (round * 250..(round + 1) * 250).map(change).collect();
            store.append(&key, &changes, &[]).unwrap();
        }
        store.create_snapshot(&key).unwrap();
        assert_eq!(
            store
                .newest_sealed_epoch(key.id(), store.head(key.id()).unwrap().unwrap().seq)
                .unwrap(),
            Some(0)
        );
        let (statement, at) = store.rotate_key(&key).unwrap();
        assert_eq!(statement.epoch, 1);
        let later: Vec<Change> = (1000..1100).map(change).collect();
        store.append(&key, &later, &[]).unwrap();
        store.create_snapshot(&key).unwrap();
        let head = store.head(key.id()).unwrap().unwrap().seq;
        assert_eq!(store.newest_sealed_epoch(key.id(), head).unwrap(), Some(1));
        assert_eq!(store.newest_sealed_epoch(key.id(), at).unwrap(), Some(0));

        let before = crate::seal::SealKey::of_node_at(&key, 0).into_ring();
        let bounded = a.path().join("bounded.tandem");
        let written = write_archive(
            &store,
            key.id(),
            std::fs::File::create(&bounded).unwrap(),
            Some(&before),
            Some(at),
        )
        .unwrap();
        assert_eq!(written.entries, at.0, "it ends at the rotation");
        assert_eq!(written.snapshots, 1, "the later snapshot is left out");
        assert_eq!(verify_archive(&bounded).unwrap(), written);
        let other = NodeKey::from_seed([58; 32]);
        let mut elsewhere = Store::open_writer(b.path(), other.id()).unwrap();
        import_archive(&bounded, &mut elsewhere).unwrap();
        assert_eq!(elsewhere.head(key.id()).unwrap().unwrap().seq, at);
        assert_eq!(
            elsewhere
                .object(key.id(), "/buckets/b/collections/c/records/r7")
                .unwrap(),
            store
                .object(key.id(), "/buckets/b/collections/c/records/r7")
                .unwrap(),
        );
        // Without the bound, the same keys do not open what came after: refused.
        let unbounded = a.path().join("unbounded.tandem");
        archive_to(&store, key.id(), &unbounded, Some(&before));
        let err = verify_archive(&unbounded).unwrap_err().to_string();
        assert!(err.contains("keys do not open"), "{err}");
    }

    #[test]
    fn a_decrypted_archive_of_a_sealed_feed_opens_on_any_node_and_a_plain_one_does_not() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let key = NodeKey::from_seed([52; 32]);
        let mut store = Store::open_writer(a.path(), key.id()).unwrap();
        store.seal_own(&key, Some(true)).unwrap();
        // Two epochs: a reader added, then removed.
        let reader = NodeKey::from_seed([53; 32]).id();
        store.set_readers(&key, &[reader]).unwrap();
        let path = "/buckets/b/collections/c/records/r1";
        let body = |n: u32| format!(r#"{{"data":{{"secret":"tapir{n}"}}}}"#).into_bytes();
        let change = |n| Change {
            op: Op::Put,
            path: path.into(),
            body: body(n),
        };
        store.append(&key, &[change(1)], &[]).unwrap();
        store.set_readers(&key, &[]).unwrap();
        store.append(&key, &[change(2)], &[]).unwrap();
        store.create_snapshot(&key).unwrap();
        let (sealed, readable) = (a.path().join("sealed.tandem"), a.path().join("open.tandem"));
        archive_to(&store, key.id(), &sealed, None);
        let keys = store.content_keys(&key, key.id()).unwrap();
        assert_eq!(keys.epochs(), 2);
        let written = archive_to(&store, key.id(), &readable, Some(&keys));
        assert!(written.readable);
        assert_eq!(verify_archive(&readable).unwrap(), written);
        let mut plain = Store::open_writer(b.path(), NodeKey::from_seed([54; 32]).id()).unwrap();
        assert!(!import_archive(&sealed, &mut plain).unwrap().readable);
        assert!(matches!(
            plain.object(key.id(), path),
            Err(StoreError::Sealed { .. })
        ));
        let other = NodeKey::from_seed([55; 32]);
        let mut opened = Store::open_writer(c.path(), other.id()).unwrap();
        assert!(import_archive(&readable, &mut opened).unwrap().readable);
        assert_eq!(opened.object(key.id(), path).unwrap(), Some(body(2)));
        assert!(matches!(
            opened.content_keys(&other, key.id()),
            Err(StoreError::Sealed { .. })
        ));
        // Keys that do not open the entries are refused before anything is stored.
        let wrong = crate::seal::Ring::from_keys(key.id(), &[7u8; 64]).unwrap();
        let forged = a.path().join("forged.tandem");
        archive_to(&store, key.id(), &forged, Some(&wrong));
        let err = verify_archive(&forged).unwrap_err().to_string();
        assert!(err.contains("keys do not open"), "{err}");
        // An unsealed origin has no keys to carry.
        let d = tempfile::tempdir().unwrap();
        let plain_key = NodeKey::from_seed([56; 32]);
        let mut plain_origin = Store::open_writer(d.path(), plain_key.id()).unwrap();
        plain_origin.append(&plain_key, &[change(3)], &[]).unwrap();
        assert!(matches!(
            plain_origin.content_keys(&plain_key, plain_key.id()),
            Err(StoreError::NotSealed { .. })
        ));
    }

    #[test]
    fn an_archive_verifies_and_loads_elsewhere() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let key = NodeKey::from_seed([50; 32]);
        let store = store_with_feed(a.path(), &key);
        let file = a.path().join("feed.tandem");
        let written = archive_to(&store, key.id(), &file, None);
        assert_eq!((written.entries, written.snapshots), (3000, 3));
        assert_eq!(verify_archive(&file).unwrap(), written);
        let mut other = Store::open_writer(b.path(), NodeKey::from_seed([51; 32]).id()).unwrap();
        assert_eq!(load_archive(&file, &mut other).unwrap(), written);
        assert_eq!(other.head(key.id()).unwrap(), store.head(key.id()).unwrap());
        assert_eq!(
            other.snapshots(key.id()).unwrap(),
            store.snapshots(key.id()).unwrap()
        );
        // Loading again changes nothing.
        load_archive(&file, &mut other).unwrap();
        assert!(other.verify_origin(key.id()).unwrap().problems.is_empty());
    }

    #[test]
    fn a_forged_archive_with_a_valid_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::from_seed([52; 32]);
        let store = store_with_feed(dir.path(), &key);
        // Rewrite the archive with one entry changed: the digest is recomputed, so only the
        // origin's signatures can tell.
        let file = dir.path().join("forged.tandem");
        let mut w = ArchiveWriter::new(std::fs::File::create(&file).unwrap(), &key.id()).unwrap();
        let mut after = Seq(0);
        while let Some((entries, cp)) = store
            .entries_page(key.id(), after, 500, PAGE_BYTES)
            .unwrap()
        {
            let mut bytes: Vec<Vec<u8>> = entries.into_iter().map(|e| e.bytes).collect();
            if after.0 == 0 {
                let last = bytes[5].len() - 3;
                bytes[5][last] ^= 1;
            }
            w.page(&cp, bytes.iter().map(Vec::as_slice)).unwrap();
            after = cp.seq;
        }
        w.finish().unwrap();
        let e = verify_archive(&file).unwrap_err();
        assert!(matches!(e, ImportError::Invalid { .. }), "{e}");
        // A snapshot that lies about the state, validly signed, is refused as well.
        let file = dir.path().join("lying.tandem");
        let mut w = ArchiveWriter::new(std::fs::File::create(&file).unwrap(), &key.id()).unwrap();
        let real = store.snapshots(key.id()).unwrap()[0];
        let lie = Snapshot::sign(
            &key,
            real.head(),
            real.ts,
            crate::feed::StateSummary {
                root: [0; 32],
                objects: real.objects,
                bytes: real.bytes,
            },
        );
        w.snapshot(&lie).unwrap();
        let mut after = Seq(0);
        while let Some((entries, cp)) = store
            .entries_page(key.id(), after, 500, PAGE_BYTES)
            .unwrap()
        {
            w.page(&cp, entries.iter().map(|e| e.bytes.as_slice()))
                .unwrap();
            after = cp.seq;
        }
        w.finish().unwrap();
        let e = verify_archive(&file).unwrap_err();
        assert!(e.to_string().contains("another state"), "{e}");
    }

    #[test]
    fn an_archive_is_the_oldest_snapshot_its_state_and_the_tail() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let key = NodeKey::from_seed([53; 32]);
        let mut store = store_with_feed(a.path(), &key);
        let first = store.snapshots(key.id()).unwrap()[0];
        let done = store.compact(key.id(), first.seq).unwrap();
        assert!(done.entries > 0);
        let file = a.path().join("feed.tandem");
        let written = archive_to(&store, key.id(), &file, None);
        assert_eq!((written.entries, written.snapshots), (3000, 3));
        let mut other = Store::open_writer(b.path(), NodeKey::from_seed([54; 32]).id()).unwrap();
        assert_eq!(import_archive(&file, &mut other).unwrap(), written);
        assert_eq!(other.base(key.id()).unwrap(), Some(first.head()));
        for s in store.snapshots(key.id()).unwrap() {
            assert_eq!(
                other.state_for_restore(key.id(), s.seq).unwrap(),
                store.state_for_restore(key.id(), s.seq).unwrap()
            );
        }
        assert!(other.verify_origin(key.id()).unwrap().problems.is_empty());

        // A base entry with one byte of its body changed is refused, digest or not.
        let (snapshot, _, parts) = store
            .base_page(key.id(), None, 0, usize::MAX)
            .unwrap()
            .unwrap();
        let forged = a.path().join("forged.tandem");
        let mut w = ArchiveWriter::new(std::fs::File::create(&forged).unwrap(), &key.id()).unwrap();
        w.snapshot(&snapshot).unwrap();
        let mut bytes: Vec<Vec<u8>> = parts;
        let n = bytes[0].len() - 3;
        bytes[0][n] ^= 1;
        w.base(bytes.iter().map(Vec::as_slice)).unwrap();
        w.finish().unwrap();
        let e = verify_archive(&forged).unwrap_err();
        assert!(
            e.to_string().contains("state root is not the one signed"),
            "{e}"
        );
        // So is a base that smuggles in an entry its state does not hold.
        let extra = a.path().join("extra.tandem");
        let mut w = ArchiveWriter::new(std::fs::File::create(&extra).unwrap(), &key.id()).unwrap();
        w.snapshot(&snapshot).unwrap();
        bytes[0][n] ^= 1;
        let superseded = crate::feed::encode_entry(
            Seq(snapshot.seq.0 - 1),
            EntryHash([0; 32]),
            1,
            Op::Put,
            "/buckets/b/collections/c/records/r0",
            b"{}",
        )
        .unwrap();
        let mut with_extra: Vec<Vec<u8>> = bytes.clone();
        with_extra.retain(|e| crate::feed::decode_entry(e).unwrap().seq.0 < snapshot.seq.0 - 1);
        with_extra.push(superseded);
        with_extra.extend(
            bytes
                .iter()
                .filter(|e| crate::feed::decode_entry(e).unwrap().seq.0 >= snapshot.seq.0 - 1)
                .cloned(),
        );
        w.base(with_extra.iter().map(Vec::as_slice)).unwrap();
        w.finish().unwrap();
        let e = verify_archive(&extra).unwrap_err();
        assert!(e.to_string().contains("snapshot"), "{e}");
        // And one whose last entry is not the entry the snapshot names.
        let short = a.path().join("short.tandem");
        let mut w = ArchiveWriter::new(std::fs::File::create(&short).unwrap(), &key.id()).unwrap();
        w.snapshot(&snapshot).unwrap();
        w.base(bytes[..bytes.len() - 1].iter().map(Vec::as_slice))
            .unwrap();
        w.finish().unwrap();
        let e = verify_archive(&short).unwrap_err();
        assert!(e.to_string().contains("does not end with the entry"), "{e}");
    }
}
