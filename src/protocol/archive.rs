//! The portable archive: one file holding everything needed to carry an origin's feed to any
//! node, verifiable with nothing but the origin's key (`tandem export --archive`,
//! `tandem import`).
//!
//! # Format, versions 2 and 3
//!
//! The file is one zstd frame. Decompressed, it is a header and a run of sections:
//!
//! ```text
//! archive = "TNDA" version:u8 origin:32 section* end
//! section = kind:u8 len:u32 payload{len}
//!   kind 1: a snapshot of the origin (the 192-byte stored form, see crate::feed::Snapshot)
//!   kind 2: a page of entries (crate::protocol::wire's page format: checkpoint, entries)
//!   kind 3: entries of the base (count:u32, then len:u32 and the entry, count times)
//!   kind 4: version 3 only, first: the content keys of a sealed origin, 32 bytes per epoch
//!           from epoch 0 (see crate::seal), so that whoever holds the file reads it
//! end     = kind:u8=0 digest:32      BLAKE3 of every byte before it
//! ```
//!
//! Version 2 is written unless keys are included (`tandem export --archive --decrypt`), so
//! that every archive without them reads with builds that know only version 2.
//!
//! Snapshots come first, in seq order. When base sections follow (tandem writes them for an
//! origin it compacted), the first snapshot is the
//! base: the base sections hold, in seq order, exactly the entries that give the state at its
//! seq (one live object or tombstone each), and the pages after them continue the feed from
//! the entry after the snapshot. Without base sections, the pages start at seq 1. Each page
//! ends at a checkpoint of the origin. Integers are big-endian. Version 1 files (no base) are
//! still read.
//!
//! The final digest only catches damage early (a truncated or corrupted file); trust comes from
//! the signatures: the base's entries must give the state root its snapshot signs, every page
//! is a chain link of the origin's feed covered by its checkpoint (the first one linking to the
//! base snapshot's head hash), every snapshot is signed by the origin and checked against the
//! state the entries give.

use std::io::{Read, Write};

use crate::feed::{Checkpoint, SNAPSHOT_LEN, Snapshot};
use crate::identity::NodeId;
use crate::protocol::wire::{self, MAX_PAGE, WireError};

/// Magic bytes that open an archive.
pub const MAGIC: &[u8; 4] = b"TNDA";
/// The format version written.
pub const VERSION: u8 = 2;
/// The format version of an archive that carries its origin's content keys.
pub const KEYS_VERSION: u8 = 3;

/// One section of an archive.
#[derive(Debug)]
pub enum Section {
    /// A snapshot.
    Snapshot(Snapshot),
    /// A page of entries ending at a checkpoint.
    Page(Checkpoint, Vec<Vec<u8>>),
    /// Entries of the base.
    Base(Vec<Vec<u8>>),
    /// The content keys of a sealed origin, 32 bytes per epoch (version 3).
    Keys(zeroize::Zeroizing<Vec<u8>>),
}

/// Errors reading or writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid archive.
    #[error("not a valid tandem archive: {0}")]
    Malformed(String),
    /// A page inside does not parse.
    #[error("not a valid tandem archive: {0}")]
    Page(#[from] WireError),
}

/// Writes an archive: a header, then sections, then the end mark.
pub struct ArchiveWriter<W: Write> {
    out: zstd::stream::write::Encoder<'static, W>,
    digest: blake3::Hasher,
}

impl<W: Write> ArchiveWriter<W> {
    /// Starts an archive of `origin`'s feed.
    pub fn new(out: W, origin: &NodeId) -> Result<Self, ArchiveError> {
        Self::start(out, origin, VERSION)
    }

    /// Starts an archive of `origin`'s feed that carries its content keys (`keys`, 32 bytes
    /// per epoch): whoever holds the file reads it.
    pub fn with_keys(out: W, origin: &NodeId, keys: &[u8]) -> Result<Self, ArchiveError> {
        let mut w = Self::start(out, origin, KEYS_VERSION)?;
        w.section(4, keys)?;
        Ok(w)
    }

    fn start(out: W, origin: &NodeId, version: u8) -> Result<Self, ArchiveError> {
        let mut w = ArchiveWriter {
            out: zstd::stream::write::Encoder::new(out, 3)?,
            digest: blake3::Hasher::new(),
        };
        w.put(MAGIC)?;
        w.put(&[version])?;
        w.put(origin.as_bytes())?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), ArchiveError> {
        self.digest.update(bytes);
        self.out.write_all(bytes)?;
        Ok(())
    }

    fn section(&mut self, kind: u8, payload: &[u8]) -> Result<(), ArchiveError> {
        self.put(&[kind])?;
        self.put(&(payload.len() as u32).to_be_bytes())?;
        self.put(payload)
    }

    /// Adds a snapshot (all snapshots come before the first page).
    pub fn snapshot(&mut self, snapshot: &Snapshot) -> Result<(), ArchiveError> {
        self.section(1, &snapshot.to_bytes())
    }

    /// Adds a page.
    pub fn page<'a>(
        &mut self,
        checkpoint: &Checkpoint,
        entries: impl ExactSizeIterator<Item = &'a [u8]>,
    ) -> Result<(), ArchiveError> {
        self.section(2, &wire::encode_page(checkpoint, entries))
    }

    /// Adds entries of the base (after the snapshots, before the pages).
    pub fn base<'a>(
        &mut self,
        entries: impl ExactSizeIterator<Item = &'a [u8]>,
    ) -> Result<(), ArchiveError> {
        let mut payload = Vec::new();
        wire::encode_entry_list(&mut payload, entries);
        self.section(3, &payload)
    }

    /// Writes the end mark and returns the underlying writer, flushed.
    pub fn finish(mut self) -> Result<W, ArchiveError> {
        let digest = *self.digest.finalize().as_bytes();
        self.out.write_all(&[0])?;
        self.out.write_all(&digest)?;
        Ok(self.out.finish()?)
    }
}

/// Reads an archive section by section, checking the end mark.
pub struct ArchiveReader<R: Read> {
    input: zstd::stream::read::Decoder<'static, std::io::BufReader<R>>,
    digest: blake3::Hasher,
    origin: NodeId,
    version: u8,
    done: bool,
}

impl<R: Read> ArchiveReader<R> {
    /// Opens an archive and reads its header.
    pub fn new(input: R) -> Result<Self, ArchiveError> {
        let mut input = zstd::stream::read::Decoder::new(input)
            .map_err(|e| ArchiveError::Malformed(format!("not zstd: {e}")))?;
        let mut header = [0u8; 37];
        input.read_exact(&mut header).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ArchiveError::Malformed("truncated".into()),
            _ => ArchiveError::Malformed(format!("unreadable: {e}")),
        })?;
        if &header[..4] != MAGIC {
            return Err(ArchiveError::Malformed("does not start with TNDA".into()));
        }
        if !(1..=KEYS_VERSION).contains(&header[4]) {
            return Err(ArchiveError::Malformed(format!(
                "format version {} (this tandem reads 1 to {KEYS_VERSION})",
                header[4]
            )));
        }
        let origin = NodeId::from_bytes(header[5..37].try_into().unwrap())
            .map_err(|_| ArchiveError::Malformed("the origin is not a valid key".into()))?;
        let mut digest = blake3::Hasher::new();
        digest.update(&header);
        Ok(ArchiveReader {
            input,
            digest,
            origin,
            version: header[4],
            done: false,
        })
    }

    /// The origin the archive says it holds.
    pub fn origin(&self) -> NodeId {
        self.origin
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), ArchiveError> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ArchiveError::Malformed("truncated".into()),
            _ => ArchiveError::Malformed(format!("unreadable: {e}")),
        })?;
        self.digest.update(buf);
        Ok(())
    }

    /// The next section; `None` after the end mark (whose digest was checked).
    pub fn next_section(&mut self) -> Result<Option<Section>, ArchiveError> {
        if self.done {
            return Ok(None);
        }
        let mut kind = [0u8; 1];
        self.input
            .read_exact(&mut kind)
            .map_err(|_| ArchiveError::Malformed("truncated: no end mark".into()))?;
        if kind[0] != 0 {
            self.digest.update(&kind);
        } else {
            let expected = *self.digest.finalize().as_bytes();
            let mut digest = [0u8; 32];
            self.input
                .read_exact(&mut digest)
                .map_err(|_| ArchiveError::Malformed("truncated in the end mark".into()))?;
            if digest != expected {
                return Err(ArchiveError::Malformed(
                    "the digest does not match the content (the file is damaged)".into(),
                ));
            }
            let mut rest = [0u8; 1];
            if self.input.read(&mut rest)? != 0 {
                return Err(ArchiveError::Malformed("bytes after the end mark".into()));
            }
            self.done = true;
            return Ok(None);
        }
        let mut len = [0u8; 4];
        self.take(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_PAGE {
            return Err(ArchiveError::Malformed(format!("a section of {len} bytes")));
        }
        let mut payload = vec![0u8; len];
        self.take(&mut payload)?;
        match kind[0] {
            1 if len == SNAPSHOT_LEN => Ok(Some(Section::Snapshot(
                Snapshot::from_bytes(&payload)
                    .map_err(|e| ArchiveError::Malformed(e.to_string()))?,
            ))),
            2 => {
                let (checkpoint, entries) = wire::decode_page(&payload)?;
                Ok(Some(Section::Page(checkpoint, entries)))
            }
            3 if self.version >= 2 => Ok(Some(Section::Base(wire::decode_entry_list(
                "base section",
                &payload,
            )?))),
            4 if self.version >= KEYS_VERSION => {
                Ok(Some(Section::Keys(zeroize::Zeroizing::new(payload))))
            }
            k => Err(ArchiveError::Malformed(format!("unknown section kind {k}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{EntryHash, Head, Op, Seq, encode_entry};
    use crate::identity::NodeKey;

    fn archive(key: &NodeKey) -> Vec<u8> {
        let mut prev = EntryHash::genesis(&key.id());
        let mut entries = Vec::new();
        for seq in 1..=3 {
            let e = encode_entry(Seq(seq), prev, 1, Op::Put, "/buckets/b", b"{}").unwrap();
            prev = EntryHash::of(&e);
            entries.push(e);
        }
        let cp = Checkpoint::sign(
            key,
            Head {
                seq: Seq(3),
                hash: prev,
            },
            2,
        );
        let mut w = ArchiveWriter::new(Vec::new(), &key.id()).unwrap();
        w.page(&cp, entries.iter().map(Vec::as_slice)).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn an_archive_round_trips() {
        let key = NodeKey::from_seed([8; 32]);
        let bytes = archive(&key);
        let mut r = ArchiveReader::new(bytes.as_slice()).unwrap();
        assert_eq!(r.origin(), key.id());
        let Some(Section::Page(cp, entries)) = r.next_section().unwrap() else {
            panic!("a page");
        };
        assert_eq!((cp.seq, entries.len()), (Seq(3), 3));
        assert!(r.next_section().unwrap().is_none());
    }

    #[test]
    fn damage_and_truncation_are_refused() {
        let key = NodeKey::from_seed([9; 32]);
        let bytes = archive(&key);
        let read_all = |b: &[u8]| -> Result<(), ArchiveError> {
            let mut r = ArchiveReader::new(b)?;
            while r.next_section()?.is_some() {}
            Ok(())
        };
        read_all(&bytes).unwrap();
        // Damage inside the compressed stream: zstd or the digest catches it.
        let mut plain = zstd::decode_all(bytes.as_slice()).unwrap();
        let n = plain.len();
        plain[n - 40] ^= 1;
        let damaged = zstd::encode_all(plain.as_slice(), 3).unwrap();
        assert!(read_all(&damaged).is_err());
        for cut in [10, bytes.len() / 2, bytes.len() - 1] {
            assert!(read_all(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
