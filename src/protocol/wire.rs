//! The peer protocol's bodies: the binary page of entries that pulls and pushes carry, and the
//! JSON documents for origins, checkpoints and receipts. Pure: bytes and serde types, no I/O.
//!
//! # Page of entries
//!
//! A run of consecutive entries of one origin, ending exactly at a checkpoint of that origin,
//! so that the receiver verifies it alone ([`crate::feed::verify_batch`]):
//!
//! ```text
//! page  = "TNDP" version:u8=1 checkpoint:144 count:u32 entry{count}
//! entry = len:u32 bytes{len}        (the entry verbatim, as hashed)
//! ```
//!
//! Integers are big-endian; `checkpoint` is the stored form of [`Checkpoint::to_bytes`]
//! (origin · seq · hash · ts · signature). A page of three entries of 300 bytes is
//! `4 + 1 + 144 + 4 + 3 × (4 + 300)` = 1,065 bytes. On the wire it is compressed with zstd
//! (`Content-Encoding: zstd`) when the receiver asked for it (`Accept-Encoding: zstd`) or, for
//! a push, when the sender chose to; decompression is bounded by [`MAX_PAGE`].
//!
//! # Page of a base
//!
//! A node that cannot serve the entries a puller asks for (they were compacted into a
//! snapshot) serves the base instead: the snapshot and the entries that hold its state, in
//! pages of at most [`PAGE_BYTES`] of entries, in seq order:
//!
//! ```text
//! base  = "TNDB" version:u8=1 snapshot:192 more:u8 count:u32 entry{count}
//! ```
//!
//! `more` is 1 when entries with a higher seq follow (ask again with `after` = the last seq).
//! The receiver gathers every page, then checks the entries against the snapshot's state root
//! before it keeps anything.
//!
//! # JSON documents
//!
//! Hashes are 64 lowercase hex digits, signatures the standard padded base64 of 64 bytes, node
//! ids `ed25519:…`, times milliseconds since the Unix epoch.
//!
//! ```json
//! {"origin": "ed25519:…", "seq": 1024, "hash": "9f…", "ts": 1764169200000, "signature": "q8…=="}
//! ```
//! is a checkpoint ([`CheckpointDoc`]); a receipt ([`ReceiptDoc`]) adds `"holder"`; an origin
//! ([`OriginDoc`]) is `{"id", "head": {"seq", "hash"}, "checkpoint": checkpoint | null,
//! "snapshot_seq"}`, plus `"receipts": [receipt…]` when the node relays other holders'
//! receipts to the caller (see [`OriginDoc::receipts`]); a list of receipts sent after a pull
//! ([`ReceiptsDoc`]) is `{"receipts": [receipt…]}` and is answered by [`ReceiptsAnswer`]; a
//! snapshot ([`SnapshotDoc`]) is `{"id", "origin", "seq", "head_hash",
//! "ts", "objects", "bytes", "state_root", "signature"}` (`state_root` in hex).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::feed::{CHECKPOINT_LEN, Checkpoint, EntryHash, MAX_ENTRY_LEN, Receipt, Seq, Snapshot};
use crate::identity::NodeId;

/// Magic bytes that open a page.
pub const PAGE_MAGIC: &[u8; 4] = b"TNDP";
/// The page format version.
pub const PAGE_VERSION: u8 = 1;
/// Media type of a page.
pub const PAGE_TYPE: &str = "application/vnd.tandem.page";
/// How many bytes of entries a page holds at most, unless its first checkpoint lies beyond:
/// a page never splits the run up to a checkpoint, and origins sign one at least every
/// [`crate::store::CHECKPOINT_BYTES`], so pages stay near this size.
pub const PAGE_BYTES: usize = 8 << 20;
/// Largest page, decompressed, that a node reads: the byte budget plus one largest entry.
pub const MAX_PAGE: usize = PAGE_BYTES + MAX_ENTRY_LEN + (1 << 20);

/// A body that is not a valid page or document.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Structure is wrong.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Page, checkpoint, receipt…
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Larger than [`MAX_PAGE`] once decompressed.
    #[error("page larger than {MAX_PAGE} bytes once decompressed")]
    TooLarge,
}

fn malformed(what: &'static str, detail: impl Into<String>) -> WireError {
    WireError::Malformed {
        what,
        detail: detail.into(),
    }
}

/// Encodes a page.
pub fn encode_page<'a>(
    checkpoint: &Checkpoint,
    entries: impl ExactSizeIterator<Item = &'a [u8]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(153 + entries.len() * 310);
    out.extend_from_slice(PAGE_MAGIC);
    out.push(PAGE_VERSION);
    out.extend_from_slice(&checkpoint.to_bytes());
    encode_entry_list(&mut out, entries);
    out
}

/// Decodes a page into its checkpoint and entries (nothing verified yet).
pub fn decode_page(mut bytes: &[u8]) -> Result<(Checkpoint, Vec<Vec<u8>>), WireError> {
    let mut take = |n: usize, what: &str| -> Result<&[u8], WireError> {
        if bytes.len() < n {
            return Err(malformed("page", format!("truncated in {what}")));
        }
        let (head, rest) = bytes.split_at(n);
        bytes = rest;
        Ok(head)
    };
    if take(4, "the magic")? != PAGE_MAGIC {
        return Err(malformed("page", "does not start with TNDP"));
    }
    let version = take(1, "the version")?[0];
    if version != PAGE_VERSION {
        return Err(malformed("page", format!("unknown version {version}")));
    }
    let checkpoint = Checkpoint::from_bytes(take(CHECKPOINT_LEN, "the checkpoint")?)
        .map_err(|e| malformed("page", e.to_string()))?;
    Ok((checkpoint, decode_entry_list("page", bytes)?))
}

/// Magic bytes that open a base page.
pub const BASE_MAGIC: &[u8; 4] = b"TNDB";
/// Media type of a base page (always sent zstd-compressed).
pub const BASE_TYPE: &str = "application/vnd.tandem.base";

/// Encodes a page of a base.
pub fn encode_base_page<'a>(
    snapshot: &Snapshot,
    more: bool,
    entries: impl ExactSizeIterator<Item = &'a [u8]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(202 + entries.len() * 310);
    out.extend_from_slice(BASE_MAGIC);
    out.push(PAGE_VERSION);
    out.extend_from_slice(&snapshot.to_bytes());
    out.push(more as u8);
    encode_entry_list(&mut out, entries);
    out
}

/// Decodes a page of a base: the snapshot, whether more follow, and the entries.
pub fn decode_base_page(bytes: &[u8]) -> Result<(Snapshot, bool, Vec<Vec<u8>>), WireError> {
    let head = 4 + 1 + crate::feed::SNAPSHOT_LEN + 1;
    if bytes.len() < head {
        return Err(malformed("base page", "truncated"));
    }
    if &bytes[..4] != BASE_MAGIC || bytes[4] != PAGE_VERSION {
        return Err(malformed("base page", "does not start with TNDB version 1"));
    }
    let snapshot = Snapshot::from_bytes(&bytes[5..head - 1])
        .map_err(|e| malformed("base page", e.to_string()))?;
    let more = match bytes[head - 1] {
        0 => false,
        1 => true,
        b => return Err(malformed("base page", format!("more flag {b}"))),
    };
    Ok((
        snapshot,
        more,
        decode_entry_list("base page", &bytes[head..])?,
    ))
}

/// Appends `count:u32 (len:u32 bytes)*`.
pub fn encode_entry_list<'a>(out: &mut Vec<u8>, entries: impl ExactSizeIterator<Item = &'a [u8]>) {
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for e in entries {
        out.extend_from_slice(&(e.len() as u32).to_be_bytes());
        out.extend_from_slice(e);
    }
}

/// Reads `count:u32 (len:u32 bytes)*`, which must fill `bytes` exactly.
pub fn decode_entry_list(what: &'static str, mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, WireError> {
    let mut take = |n: usize, part: &str| -> Result<&[u8], WireError> {
        if bytes.len() < n {
            return Err(malformed(what, format!("truncated in {part}")));
        }
        let (head, rest) = bytes.split_at(n);
        bytes = rest;
        Ok(head)
    };
    let count = u32::from_be_bytes(take(4, "the count")?.try_into().unwrap()) as usize;
    let mut entries = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let len = u32::from_be_bytes(take(4, "an entry length")?.try_into().unwrap()) as usize;
        if len > MAX_ENTRY_LEN {
            return Err(malformed(what, format!("entry of {len} bytes")));
        }
        entries.push(take(len, "an entry")?.to_vec());
    }
    if !bytes.is_empty() {
        return Err(malformed(
            what,
            format!("{} bytes after the last entry", bytes.len()),
        ));
    }
    Ok(entries)
}

/// Compresses a body with zstd (level 1: fast, and entries compress well even so).
pub fn compress(bytes: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(bytes, 1).expect("compressing into memory does not fail")
}

/// Decompresses a zstd body, refusing more than [`MAX_PAGE`] bytes of output.
pub fn decompress(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    use std::io::Read;
    let decoder = zstd::stream::read::Decoder::new(bytes)
        .map_err(|e| malformed("zstd body", e.to_string()))?;
    let mut out = Vec::new();
    decoder
        .take(MAX_PAGE as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| malformed("zstd body", e.to_string()))?;
    if out.len() > MAX_PAGE {
        return Err(WireError::TooLarge);
    }
    Ok(out)
}

/// A checkpoint as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointDoc {
    /// The origin.
    pub origin: NodeId,
    /// Seq of the head it states.
    pub seq: u64,
    /// Hash of the entry at `seq`.
    pub hash: String,
    /// When the origin signed it (ms).
    pub ts: u64,
    /// base64 of the origin's signature.
    pub signature: String,
}

impl From<&Checkpoint> for CheckpointDoc {
    fn from(cp: &Checkpoint) -> Self {
        CheckpointDoc {
            origin: cp.origin,
            seq: cp.seq.0,
            hash: cp.hash.to_string(),
            ts: cp.ts,
            signature: STANDARD.encode(cp.signature),
        }
    }
}

impl CheckpointDoc {
    /// Parses the fields (the signature is not verified here).
    pub fn to_checkpoint(&self) -> Result<Checkpoint, WireError> {
        Ok(Checkpoint {
            origin: self.origin,
            seq: Seq(self.seq),
            hash: parse_hash(&self.hash, "checkpoint")?,
            ts: self.ts,
            signature: parse_signature(&self.signature, "checkpoint")?,
        })
    }
}

/// A receipt as JSON: a checkpoint document plus the holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptDoc {
    /// The node that stores the feed and signed this.
    pub holder: NodeId,
    /// The origin.
    pub origin: NodeId,
    /// Seq stored up to.
    pub seq: u64,
    /// Hash of the entry at `seq`.
    pub hash: String,
    /// When the holder signed it (ms).
    pub ts: u64,
    /// base64 of the holder's signature.
    pub signature: String,
}

impl From<&Receipt> for ReceiptDoc {
    fn from(r: &Receipt) -> Self {
        ReceiptDoc {
            holder: r.holder,
            origin: r.origin,
            seq: r.seq.0,
            hash: r.hash.to_string(),
            ts: r.ts,
            signature: STANDARD.encode(r.signature),
        }
    }
}

impl ReceiptDoc {
    /// Parses the fields (the signature is not verified here).
    pub fn to_receipt(&self) -> Result<Receipt, WireError> {
        Ok(Receipt {
            holder: self.holder,
            origin: self.origin,
            seq: Seq(self.seq),
            hash: parse_hash(&self.hash, "receipt")?,
            ts: self.ts,
            signature: parse_signature(&self.signature, "receipt")?,
        })
    }
}

/// A snapshot as JSON. `id` is informative (it is derived from the other fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDoc {
    /// The snapshot's id.
    pub id: String,
    /// The origin that signed it.
    pub origin: NodeId,
    /// The seq the state is at.
    pub seq: u64,
    /// Hash of the entry at `seq`.
    pub head_hash: String,
    /// When the origin signed it (ms).
    pub ts: u64,
    /// Live objects.
    pub objects: u64,
    /// Bytes of their bodies.
    pub bytes: u64,
    /// The state root, hex.
    pub state_root: String,
    /// base64 of the origin's signature.
    pub signature: String,
}

impl From<&Snapshot> for SnapshotDoc {
    fn from(s: &Snapshot) -> Self {
        SnapshotDoc {
            id: s.id(),
            origin: s.origin,
            seq: s.seq.0,
            head_hash: s.head_hash.to_string(),
            ts: s.ts,
            objects: s.objects,
            bytes: s.bytes,
            state_root: s.root_hex(),
            signature: STANDARD.encode(s.signature),
        }
    }
}

impl SnapshotDoc {
    /// Parses the fields (the signature is not verified here).
    pub fn to_snapshot(&self) -> Result<Snapshot, WireError> {
        Ok(Snapshot {
            origin: self.origin,
            seq: Seq(self.seq),
            head_hash: parse_hash(&self.head_hash, "snapshot")?,
            ts: self.ts,
            objects: self.objects,
            bytes: self.bytes,
            state_root: parse_hash(&self.state_root, "snapshot")?.0,
            signature: parse_signature(&self.signature, "snapshot")?,
        })
    }
}

/// A head as JSON; `hash` is null for an empty feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadDoc {
    /// Seq of the last entry held (0: none).
    pub seq: u64,
    /// Its hash.
    pub hash: Option<String>,
}

/// An origin a node holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginDoc {
    /// The origin.
    pub id: NodeId,
    /// What the node holds of it.
    pub head: HeadDoc,
    /// The origin's latest checkpoint held; null for an empty feed.
    pub checkpoint: Option<CheckpointDoc>,
    /// Seq of the latest snapshot of the origin held (0: none).
    #[serde(default)]
    pub snapshot_seq: u64,
    /// Receipts other holders signed for this origin that the node holds, relayed to a caller
    /// that is the origin or may push it there, so that receipts reach the origin through the
    /// nodes between. Absent (empty) otherwise, and from nodes that predate it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub receipts: Vec<ReceiptDoc>,
}

/// Most receipts one `POST /v1/origins/{id}/receipts` may carry.
pub const MAX_RECEIPTS: usize = 256;
/// Largest body of a `POST /v1/origins/{id}/receipts`: [`MAX_RECEIPTS`] documents of about
/// 350 bytes each, with room to spare.
pub const MAX_RECEIPTS_BODY: usize = 128 << 10;

/// The body of `POST /v1/origins/{id}/receipts`: receipts of one origin, the caller's own (for
/// what it just pulled) and those of other holders it relays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptsDoc {
    /// At most [`MAX_RECEIPTS`].
    pub receipts: Vec<ReceiptDoc>,
}

/// The answer to a [`ReceiptsDoc`]: how many receipts were new here, and the ones refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptsAnswer {
    /// Receipts that acknowledged more than what was held from their holder.
    pub recorded: u64,
    /// Receipts refused, with why.
    #[serde(default)]
    pub refused: Vec<RefusedReceipt>,
}

/// One receipt of a [`ReceiptsDoc`] that was not kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedReceipt {
    /// Its holder.
    pub holder: NodeId,
    /// The seq it acknowledges.
    pub seq: u64,
    /// Why it was refused.
    pub error: String,
}

/// An error body: `{"error": "…"}`, plus the holder's head where it matters (a gap).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDoc {
    /// What went wrong.
    pub error: String,
    /// The receiver's head for the origin, when the error is about where a push starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<u64>,
}

fn parse_hash(text: &str, what: &'static str) -> Result<EntryHash, WireError> {
    text.parse()
        .map_err(|_| malformed(what, "hash is not 64 lowercase hex digits"))
}

fn parse_signature(text: &str, what: &'static str) -> Result<[u8; 64], WireError> {
    STANDARD
        .decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| malformed(what, "signature is not base64 of 64 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{Head, Op, encode_entry, verify_batch};
    use crate::identity::NodeKey;

    fn feed(key: &NodeKey, n: u64) -> (Vec<Vec<u8>>, Checkpoint) {
        let mut prev = EntryHash::genesis(&key.id());
        let mut entries = Vec::new();
        for seq in 1..=n {
            let bytes =
                encode_entry(Seq(seq), prev, 1, Op::Put, "/buckets/b", b"{\"data\":{}}").unwrap();
            prev = EntryHash::of(&bytes);
            entries.push(bytes);
        }
        let cp = Checkpoint::sign(
            key,
            Head {
                seq: Seq(n),
                hash: prev,
            },
            7,
        );
        (entries, cp)
    }

    #[test]
    fn a_page_round_trips_and_verifies() {
        let key = NodeKey::from_seed([3; 32]);
        let (entries, cp) = feed(&key, 3);
        let page = encode_page(&cp, entries.iter().map(Vec::as_slice));
        let squeezed = compress(&page);
        let (cp2, entries2) = decode_page(&decompress(&squeezed).unwrap()).unwrap();
        assert_eq!((cp2, &entries2), (cp, &entries));
        verify_batch(key.id(), entries2, cp2).unwrap();
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_refused() {
        let key = NodeKey::from_seed([4; 32]);
        let (entries, cp) = feed(&key, 2);
        let page = encode_page(&cp, entries.iter().map(Vec::as_slice));
        for cut in 0..page.len() {
            assert!(decode_page(&page[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = page.clone();
        longer.push(0);
        assert!(decode_page(&longer).is_err());
        let mut bad = page;
        bad[4] = 2;
        assert!(
            decode_page(&bad)
                .unwrap_err()
                .to_string()
                .contains("version 2")
        );
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let bomb = compress(&vec![0u8; MAX_PAGE + 10]);
        assert!(bomb.len() < 1 << 20);
        assert!(matches!(decompress(&bomb), Err(WireError::TooLarge)));
        assert!(decompress(b"not zstd").is_err());
    }

    #[test]
    fn documents_round_trip() {
        let key = NodeKey::from_seed([5; 32]);
        let (_, cp) = feed(&key, 1);
        let doc = CheckpointDoc::from(&cp);
        let json = serde_json::to_string(&doc).unwrap();
        let back: CheckpointDoc = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_checkpoint().unwrap(), cp);
        let holder = NodeKey::from_seed([6; 32]);
        let r = Receipt::sign(&holder, key.id(), cp.head(), 9);
        assert_eq!(ReceiptDoc::from(&r).to_receipt().unwrap(), r);
        let mut doc = ReceiptDoc::from(&r);
        doc.signature = "AAAA".into();
        assert!(doc.to_receipt().is_err());
    }
}
