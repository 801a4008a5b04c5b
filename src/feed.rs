//! The feed: an origin's append-only, hash-chained log of changes, and the signed statements
//! about it (checkpoints, receipts, fork evidence).
//!
//! This module is the byte-level reference for any other implementation. Everything here is
//! pure: no I/O, no clock, no storage.
//!
//! # Entry encoding, version 1
//!
//! An entry travels and is stored as exactly these bytes; its hash is `BLAKE3(bytes)` (plain
//! BLAKE3, 32 bytes) over them, and nothing ever re-serializes an entry. All integers are
//! unsigned big-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version, `0x01` |
//! | 1 | 8 | `seq`, 1 for the first entry, then +1 each; at most 2^40 − 1 |
//! | 9 | 32 | `prev`: hash of entry `seq − 1`; for `seq` = 1, the origin's genesis hash |
//! | 41 | 8 | `ts`: milliseconds since the Unix epoch, the origin's clock when it recorded the change; at most 2^63 − 1 |
//! | 49 | 1 | `op`: `0x01` put, `0x02` delete |
//! | 50 | 2 | `n`, length of `path` in bytes, 1 ..= 4096 |
//! | 52 | n | `path`: UTF-8, starts with `/`, e.g. `/buckets/b/collections/c/records/r` |
//! | 52+n | 4 | `m`, length of `body` in bytes, at most 64 MiB |
//! | 56+n | m | `body`: for put, a JSON object (RFC 8259, UTF-8; the source object's data and permissions, bytes as the source gave them); for delete, empty (`m` = 0) |
//!
//! The entry is exactly `56 + n + m` bytes; trailing bytes are an error. A put body must be
//! valid UTF-8 and parse as one JSON object (surrounding whitespace allowed; duplicate keys
//! are not checked). There is one encoding
//! of any given entry, so equal entries have equal hashes.
//!
//! The *genesis hash* of an origin is `BLAKE3("tandem-genesis-v1" 0x00 · origin key (32))`.
//! Entries do not repeat their origin's key, yet every chain is bound to its origin from the
//! first link: an entry of one origin can never be spliced into another's feed, even when the
//! two recorded identical changes.
//!
//! # Signed statements
//!
//! Each kind of statement is signed (ed25519, strict verification) over its own signing input,
//! which starts with an ASCII tag naming the statement and its version, then a zero byte. No
//! signing input of one kind is a prefix or a valid parse of another, so a signature can never
//! be replayed as a different statement.
//!
//! | statement | signing input |
//! |---|---|
//! | checkpoint | `"tandem-checkpoint-v1" 0x00` · origin key (32) · seq (8) · head hash (32) · ts (8) |
//! | receipt | `"tandem-receipt-v1" 0x00` · holder key (32) · origin key (32) · seq (8) · head hash (32) · ts (8) |
//!
//! A *checkpoint* is signed by the origin: "my feed up to `seq` ends with entry hash `hash`".
//! A receiver accepts entries only up to a checkpoint it has verified. A *receipt* is signed by
//! a holder: "I store origin O up to `seq`, whose entry hash is `hash`".
//!
//! The stored form of a checkpoint (in the database and in fork evidence) is the signing
//! input's fields without the tag, followed by the 64-byte signature: 144 bytes.
//!
//! # Forks
//!
//! Two valid checkpoints of one origin disagree when they name different hashes for the same
//! seq, or when one's chain does not extend the other. Since only the origin's key can sign a
//! checkpoint, that shows the origin's key signed two histories. [`ForkEvidence`] keeps both
//! checkpoints and the two conflicting entry hashes at the first seq where they differ. When
//! the two checkpoints name the same seq, the evidence stands on its own; otherwise a third
//! party also needs the entries linking each hash to its checkpoint, which the store keeps for
//! its own history and records with the evidence for the conflicting one.

use std::fmt;
use std::str::FromStr;

use crate::identity::{NodeId, NodeKey};

/// Version byte of the entry encoding this module reads and writes.
pub const ENTRY_VERSION: u8 = 1;
/// Largest `seq` an entry may carry (2^40 − 1); the store packs (origin, seq) into one integer.
pub const MAX_SEQ: u64 = (1 << 40) - 1;
/// Longest path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Largest body, in bytes.
pub const MAX_BODY_LEN: usize = 64 << 20;
/// Bytes of an entry that are not path or body.
pub const ENTRY_OVERHEAD: usize = 56;

const GENESIS_TAG: &[u8] = b"tandem-genesis-v1\0";
const CHECKPOINT_TAG: &[u8] = b"tandem-checkpoint-v1\0";
const RECEIPT_TAG: &[u8] = b"tandem-receipt-v1\0";

/// Position of an entry in its origin's feed: 1, 2, 3, … (0 means "before the first entry").
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Seq(pub u64);

impl Seq {
    /// The position after this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// BLAKE3 hash of an entry's bytes. Text form: 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EntryHash(pub [u8; 32]);

impl EntryHash {
    /// The `prev` of the first entry of `origin`'s feed (see the module docs).
    pub fn genesis(origin: &NodeId) -> EntryHash {
        let mut hasher = blake3::Hasher::new();
        hasher.update(GENESIS_TAG);
        hasher.update(origin.as_bytes());
        EntryHash(*hasher.finalize().as_bytes())
    }

    /// Hashes encoded entry bytes.
    pub fn of(entry_bytes: &[u8]) -> EntryHash {
        EntryHash(*blake3::hash(entry_bytes).as_bytes())
    }
}

impl fmt::Display for EntryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for EntryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryHash({self})")
    }
}

impl FromStr for EntryHash {
    type Err = FeedError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || FeedError::Malformed("entry hash is not 64 lowercase hex digits");
        if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(chunk).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(s, 16).map_err(|_| bad())?;
        }
        Ok(EntryHash(out))
    }
}

impl serde::Serialize for EntryHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The last entry of a feed: its seq and hash. An empty feed has no head.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
pub struct Head {
    /// Seq of the last entry.
    pub seq: Seq,
    /// Hash of the last entry.
    pub hash: EntryHash,
}

impl serde::Serialize for Seq {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// What an entry does to the object at its path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    /// The object now has this body (created or replaced).
    Put,
    /// The object is gone.
    Delete,
}

impl Op {
    fn code(self) -> u8 {
        match self {
            Op::Put => 1,
            Op::Delete => 2,
        }
    }
}

/// Why bytes or statements were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// The bytes do not follow the encoding.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// An entry's seq is not the one its position requires.
    #[error("entry out of order: expected seq {expected}, found {found}")]
    OutOfOrder {
        /// The seq the chain needs next.
        expected: Seq,
        /// The seq the entry carries.
        found: Seq,
    },
    /// An entry's `prev` is not the hash of the entry before it.
    #[error("broken chain at seq {seq}: prev does not match the hash of seq {}", seq.0 - 1)]
    BrokenChain {
        /// The entry whose `prev` is wrong.
        seq: Seq,
    },
    /// A signature does not verify.
    #[error("bad {what} signature for seq {seq} of origin {origin}")]
    BadSignature {
        /// "checkpoint" or "receipt".
        what: &'static str,
        /// Origin the statement is about.
        origin: NodeId,
        /// Seq it states.
        seq: Seq,
    },
    /// The batch does not end exactly at the checkpoint that is meant to cover it.
    #[error("checkpoint (seq {checkpoint}) does not cover the batch ending at seq {last}")]
    NotCovered {
        /// Seq of the checkpoint.
        checkpoint: Seq,
        /// Seq of the batch's last entry.
        last: Seq,
    },
    /// A checkpoint of another origin was offered for this origin's entries.
    #[error("checkpoint is from origin {found}, expected {expected}")]
    WrongOrigin {
        /// Origin of the entries.
        expected: NodeId,
        /// Origin of the checkpoint.
        found: NodeId,
    },
    /// An empty batch.
    #[error("empty batch")]
    Empty,
}

/// A decoded view of an entry's bytes (borrowed, no copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// Position in the feed.
    pub seq: Seq,
    /// Hash of the previous entry.
    pub prev: EntryHash,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    /// Put or delete.
    pub op: Op,
    /// Source object path.
    pub path: &'a str,
    /// Object body (empty for delete).
    pub body: &'a [u8],
}

/// Encodes an entry. `body` must be a JSON object for a put and empty for a delete.
pub fn encode_entry(
    seq: Seq,
    prev: EntryHash,
    ts: u64,
    op: Op,
    path: &str,
    body: &[u8],
) -> Result<Vec<u8>, FeedError> {
    check_fields(seq, ts, op, path, body)?;
    let mut out = Vec::with_capacity(ENTRY_OVERHEAD + path.len() + body.len());
    out.push(ENTRY_VERSION);
    out.extend_from_slice(&seq.0.to_be_bytes());
    out.extend_from_slice(&prev.0);
    out.extend_from_slice(&ts.to_be_bytes());
    out.push(op.code());
    out.extend_from_slice(&(path.len() as u16).to_be_bytes());
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

fn check_fields(seq: Seq, ts: u64, op: Op, path: &str, body: &[u8]) -> Result<(), FeedError> {
    if seq.0 == 0 || seq.0 > MAX_SEQ {
        return Err(FeedError::Malformed("seq out of range"));
    }
    if ts > i64::MAX as u64 {
        return Err(FeedError::Malformed("ts out of range"));
    }
    if path.is_empty() || path.len() > MAX_PATH_LEN || !path.starts_with('/') {
        return Err(FeedError::Malformed(
            "path must start with / and be 1..=4096 bytes",
        ));
    }
    if body.len() > MAX_BODY_LEN {
        return Err(FeedError::Malformed("body larger than 64 MiB"));
    }
    match op {
        Op::Delete if !body.is_empty() => Err(FeedError::Malformed("delete with a body")),
        Op::Put if !is_json_object(body) => {
            Err(FeedError::Malformed("put body is not a JSON object"))
        }
        _ => Ok(()),
    }
}

fn is_json_object(body: &[u8]) -> bool {
    // serde_json skips over string contents without checking their UTF-8: check it first.
    std::str::from_utf8(body).is_ok()
        && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// Decodes and validates entry bytes (see the module docs for the layout).
pub fn decode_entry(bytes: &[u8]) -> Result<EntryRef<'_>, FeedError> {
    let short = FeedError::Malformed("entry truncated");
    if bytes.len() < ENTRY_OVERHEAD {
        return Err(short);
    }
    if bytes[0] != ENTRY_VERSION {
        return Err(FeedError::Malformed("unknown entry version"));
    }
    let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
    let seq = Seq(u64_at(1));
    let prev = EntryHash(bytes[9..41].try_into().unwrap());
    let ts = u64_at(41);
    let op = match bytes[49] {
        1 => Op::Put,
        2 => Op::Delete,
        _ => return Err(FeedError::Malformed("unknown op")),
    };
    let n = u16::from_be_bytes([bytes[50], bytes[51]]) as usize;
    if bytes.len() < ENTRY_OVERHEAD + n {
        return Err(short);
    }
    let path = std::str::from_utf8(&bytes[52..52 + n])
        .map_err(|_| FeedError::Malformed("path is not UTF-8"))?;
    let m = u32::from_be_bytes(bytes[52 + n..56 + n].try_into().unwrap()) as usize;
    match bytes.len().cmp(&(ENTRY_OVERHEAD + n + m)) {
        std::cmp::Ordering::Less => return Err(short),
        std::cmp::Ordering::Greater => return Err(FeedError::Malformed("trailing bytes")),
        std::cmp::Ordering::Equal => {}
    }
    let body = &bytes[56 + n..];
    check_fields(seq, ts, op, path, body)?;
    Ok(EntryRef {
        seq,
        prev,
        ts,
        op,
        path,
        body,
    })
}

/// An origin's signed statement about its own head.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Checkpoint {
    /// The origin whose feed this is.
    pub origin: NodeId,
    /// Seq of the head.
    pub seq: Seq,
    /// Hash of the entry at `seq`.
    pub hash: EntryHash,
    /// Milliseconds since the Unix epoch, when the origin signed it.
    pub ts: u64,
    /// ed25519 signature by `origin` over [`Checkpoint::signing_input`].
    pub signature: [u8; 64],
}

/// Length of a stored checkpoint.
pub const CHECKPOINT_LEN: usize = 32 + 8 + 32 + 8 + 64;

impl Checkpoint {
    /// Signs a checkpoint for `key`'s own feed.
    pub fn sign(key: &NodeKey, head: Head, ts: u64) -> Checkpoint {
        let origin = key.id();
        let signature = key.sign(&Self::signing_input(&origin, head, ts));
        Checkpoint {
            origin,
            seq: head.seq,
            hash: head.hash,
            ts,
            signature,
        }
    }

    /// The exact bytes the origin signs.
    pub fn signing_input(origin: &NodeId, head: Head, ts: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHECKPOINT_TAG.len() + 80);
        out.extend_from_slice(CHECKPOINT_TAG);
        out.extend_from_slice(origin.as_bytes());
        out.extend_from_slice(&head.seq.0.to_be_bytes());
        out.extend_from_slice(&head.hash.0);
        out.extend_from_slice(&ts.to_be_bytes());
        out
    }

    /// The head this checkpoint states.
    pub fn head(&self) -> Head {
        Head {
            seq: self.seq,
            hash: self.hash,
        }
    }

    /// Checks the signature.
    pub fn verify(&self) -> Result<(), FeedError> {
        if self.seq.0 == 0 || self.seq.0 > MAX_SEQ {
            return Err(FeedError::Malformed("checkpoint seq out of range"));
        }
        let input = Self::signing_input(&self.origin, self.head(), self.ts);
        if self.origin.verify(&input, &self.signature) {
            Ok(())
        } else {
            Err(FeedError::BadSignature {
                what: "checkpoint",
                origin: self.origin,
                seq: self.seq,
            })
        }
    }

    /// Stored form: origin · seq · hash · ts · signature (144 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHECKPOINT_LEN);
        out.extend_from_slice(self.origin.as_bytes());
        out.extend_from_slice(&self.seq.0.to_be_bytes());
        out.extend_from_slice(&self.hash.0);
        out.extend_from_slice(&self.ts.to_be_bytes());
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses the stored form (does not verify the signature).
    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint, FeedError> {
        if bytes.len() != CHECKPOINT_LEN {
            return Err(FeedError::Malformed("checkpoint is not 144 bytes"));
        }
        let origin = NodeId::from_bytes(bytes[0..32].try_into().unwrap())
            .map_err(|_| FeedError::Malformed("checkpoint origin is not a valid key"))?;
        Ok(Checkpoint {
            origin,
            seq: Seq(u64::from_be_bytes(bytes[32..40].try_into().unwrap())),
            hash: EntryHash(bytes[40..72].try_into().unwrap()),
            ts: u64::from_be_bytes(bytes[72..80].try_into().unwrap()),
            signature: bytes[80..144].try_into().unwrap(),
        })
    }
}

/// A holder's signed statement: "I store `origin` up to `seq`".
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Receipt {
    /// The node that stores the feed.
    pub holder: NodeId,
    /// The origin whose feed is stored.
    pub origin: NodeId,
    /// Seq stored up to.
    pub seq: Seq,
    /// Hash of the entry at `seq`.
    pub hash: EntryHash,
    /// Milliseconds since the Unix epoch, when the holder signed it.
    pub ts: u64,
    /// ed25519 signature by `holder` over [`Receipt::signing_input`].
    pub signature: [u8; 64],
}

impl Receipt {
    /// Signs a receipt as `holder_key` for `origin` up to `head`.
    pub fn sign(holder_key: &NodeKey, origin: NodeId, head: Head, ts: u64) -> Receipt {
        let holder = holder_key.id();
        let signature = holder_key.sign(&Self::signing_input(&holder, &origin, head, ts));
        Receipt {
            holder,
            origin,
            seq: head.seq,
            hash: head.hash,
            ts,
            signature,
        }
    }

    /// The exact bytes the holder signs.
    pub fn signing_input(holder: &NodeId, origin: &NodeId, head: Head, ts: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECEIPT_TAG.len() + 112);
        out.extend_from_slice(RECEIPT_TAG);
        out.extend_from_slice(holder.as_bytes());
        out.extend_from_slice(origin.as_bytes());
        out.extend_from_slice(&head.seq.0.to_be_bytes());
        out.extend_from_slice(&head.hash.0);
        out.extend_from_slice(&ts.to_be_bytes());
        out
    }

    /// Checks the signature.
    pub fn verify(&self) -> Result<(), FeedError> {
        let head = Head {
            seq: self.seq,
            hash: self.hash,
        };
        let input = Self::signing_input(&self.holder, &self.origin, head, self.ts);
        if self.holder.verify(&input, &self.signature) {
            Ok(())
        } else {
            Err(FeedError::BadSignature {
                what: "receipt",
                origin: self.origin,
                seq: self.seq,
            })
        }
    }
}

/// A run of consecutive entries of one origin whose chain, encoding and covering checkpoint
/// have been verified. Only [`verify_batch`] makes one, so holding one is proof of that work.
/// Whether it links to what a store already holds is the store's check.
#[derive(Debug)]
pub struct VerifiedBatch {
    entries: Vec<Vec<u8>>,
    hashes: Vec<EntryHash>,
    first_prev: EntryHash,
    checkpoint: Checkpoint,
}

impl VerifiedBatch {
    /// The origin of every entry.
    pub fn origin(&self) -> NodeId {
        self.checkpoint.origin
    }
    /// Seq of the first entry.
    pub fn first_seq(&self) -> Seq {
        Seq(self.checkpoint.seq.0 + 1 - self.entries.len() as u64)
    }
    /// `prev` of the first entry: the hash the batch claims for seq `first_seq - 1`.
    pub fn first_prev(&self) -> EntryHash {
        self.first_prev
    }
    /// The checkpoint covering the last entry.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }
    /// Entry bytes, in seq order.
    pub fn entries(&self) -> &[Vec<u8>] {
        &self.entries
    }
    /// Entry hashes, parallel to [`VerifiedBatch::entries`].
    pub fn hashes(&self) -> &[EntryHash] {
        &self.hashes
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// Always false: an empty batch does not verify.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Verifies a batch of consecutive entries of `origin` ending exactly at `checkpoint`: every
/// entry decodes, seqs are consecutive, each `prev` is the hash of the entry before it, the
/// last entry's hash is the checkpoint's, and the checkpoint's signature is the origin's.
pub fn verify_batch(
    origin: NodeId,
    entries: Vec<Vec<u8>>,
    checkpoint: Checkpoint,
) -> Result<VerifiedBatch, FeedError> {
    if checkpoint.origin != origin {
        return Err(FeedError::WrongOrigin {
            expected: origin,
            found: checkpoint.origin,
        });
    }
    let first = decode_entry(entries.first().ok_or(FeedError::Empty)?)?;
    let first_prev = first.prev;
    let mut hashes = Vec::with_capacity(entries.len());
    let mut expected = first.seq;
    for bytes in &entries {
        let entry = decode_entry(bytes)?;
        if entry.seq != expected {
            return Err(FeedError::OutOfOrder {
                expected,
                found: entry.seq,
            });
        }
        if let Some(prev) = hashes.last()
            && entry.prev != *prev
        {
            return Err(FeedError::BrokenChain { seq: entry.seq });
        }
        if entry.seq.0 == 1 && entry.prev != EntryHash::genesis(&origin) {
            return Err(FeedError::BrokenChain { seq: entry.seq });
        }
        hashes.push(EntryHash::of(bytes));
        expected = expected.next();
    }
    let last = Seq(expected.0 - 1);
    if checkpoint.seq != last || checkpoint.hash != *hashes.last().unwrap() {
        return Err(FeedError::NotCovered {
            checkpoint: checkpoint.seq,
            last,
        });
    }
    checkpoint.verify()?;
    Ok(VerifiedBatch {
        entries,
        hashes,
        first_prev,
        checkpoint,
    })
}

/// Proof that an origin signed two histories: two valid checkpoints whose chains disagree at
/// `seq`, where `ours` committed to `our_hash` and `theirs` to `their_hash`, with the entries
/// that link each hash to its checkpoint. [`ForkEvidence::verify`] checks it with nothing but
/// the origin's public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkEvidence {
    /// The forked origin.
    pub origin: NodeId,
    /// First seq where the two histories differ (as far as this node could see).
    pub seq: Seq,
    /// Entry hash at `seq` in the history this node held.
    pub our_hash: EntryHash,
    /// Entry hash at `seq` in the conflicting history.
    pub their_hash: EntryHash,
    /// A checkpoint covering our history at or after `seq`.
    pub ours: Checkpoint,
    /// The checkpoint covering the conflicting history.
    pub theirs: Checkpoint,
    /// Our entries from `seq` to `ours.seq` (empty when `ours` is at `seq`).
    pub our_entries: Vec<Vec<u8>>,
    /// Their entries linking `their_hash` to `theirs`: starting at `seq`, or at `seq + 1` when
    /// only the next entry's `prev` showed their hash (empty when `theirs` is at `seq`).
    pub their_entries: Vec<Vec<u8>>,
}

impl ForkEvidence {
    /// Checks the evidence on its own: both checkpoints are valid signatures of the origin, the
    /// two hashes differ, and each hash is linked to its checkpoint by its entries.
    pub fn verify(&self) -> Result<(), FeedError> {
        let bad = FeedError::Malformed;
        if self.ours.origin != self.origin || self.theirs.origin != self.origin {
            return Err(bad("fork evidence mixes origins"));
        }
        if self.our_hash == self.their_hash {
            return Err(bad("fork evidence names the same hash twice"));
        }
        self.ours.verify()?;
        self.theirs.verify()?;
        links(self.seq, self.our_hash, &self.our_entries, &self.ours)?;
        links(self.seq, self.their_hash, &self.their_entries, &self.theirs)
    }

    /// Length-prefixed concatenation of entries (u32 big-endian length, then bytes), the
    /// stored form of [`ForkEvidence::our_entries`] and [`ForkEvidence::their_entries`].
    pub fn pack(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::with_capacity(entries.iter().map(|e| e.len() + 4).sum());
        for e in entries {
            out.extend_from_slice(&(e.len() as u32).to_be_bytes());
            out.extend_from_slice(e);
        }
        out
    }

    /// Inverse of [`ForkEvidence::pack`].
    pub fn unpack(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, FeedError> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = bytes
                .get(..4)
                .map(|b| u32::from_be_bytes(b.try_into().unwrap()) as usize)
                .ok_or(FeedError::Malformed("packed entries truncated"))?;
            let entry = bytes
                .get(4..4 + len)
                .ok_or(FeedError::Malformed("packed entries truncated"))?;
            out.push(entry.to_vec());
            bytes = &bytes[4 + len..];
        }
        Ok(out)
    }
}

/// Checks that `entries` link the entry hash `hash` at `seq` to `checkpoint`.
fn links(
    seq: Seq,
    hash: EntryHash,
    entries: &[Vec<u8>],
    checkpoint: &Checkpoint,
) -> Result<(), FeedError> {
    let bad = FeedError::Malformed("fork evidence entries do not link the hash to its checkpoint");
    let Some(first) = entries.first() else {
        return (checkpoint.seq == seq && checkpoint.hash == hash)
            .then_some(())
            .ok_or(bad);
    };
    let e0 = decode_entry(first)?;
    let starts = (e0.seq == seq && EntryHash::of(first) == hash)
        || (e0.seq == seq.next() && e0.prev == hash);
    if !starts {
        return Err(bad);
    }
    let mut prev = EntryHash::of(first);
    let mut at = e0.seq;
    for bytes in &entries[1..] {
        let e = decode_entry(bytes)?;
        if e.seq != at.next() || e.prev != prev {
            return Err(bad);
        }
        prev = EntryHash::of(bytes);
        at = e.seq;
    }
    (at == checkpoint.seq && prev == checkpoint.hash)
        .then_some(())
        .ok_or(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(key: &NodeKey, from: Head, n: u64) -> (Vec<Vec<u8>>, Checkpoint) {
        let mut prev = from.hash;
        let mut out = Vec::new();
        for i in 0..n {
            let seq = Seq(from.seq.0 + 1 + i);
            let body = format!(r#"{{"data":{{"id":"r{}"}}}}"#, seq.0);
            let bytes = encode_entry(
                seq,
                prev,
                1_700_000_000_000 + seq.0,
                Op::Put,
                "/buckets/b/collections/c/records/r",
                body.as_bytes(),
            )
            .unwrap();
            prev = EntryHash::of(&bytes);
            out.push(bytes);
        }
        let head = Head {
            seq: Seq(from.seq.0 + n),
            hash: prev,
        };
        (out, Checkpoint::sign(key, head, 1))
    }

    fn genesis(key: &NodeKey) -> Head {
        Head {
            seq: Seq(0),
            hash: EntryHash::genesis(&key.id()),
        }
    }

    #[test]
    fn encoding_round_trips_and_is_exact() {
        let bytes = encode_entry(
            Seq(5),
            EntryHash([3; 32]),
            42,
            Op::Put,
            "/buckets/b",
            b"{\"data\":{}}",
        )
        .unwrap();
        assert_eq!(bytes.len(), ENTRY_OVERHEAD + "/buckets/b".len() + 11);
        let e = decode_entry(&bytes).unwrap();
        assert_eq!(
            (e.seq, e.prev, e.ts, e.op, e.path),
            (Seq(5), EntryHash([3; 32]), 42, Op::Put, "/buckets/b")
        );
        assert_eq!(e.body, b"{\"data\":{}}");
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_entry(&longer).is_err());
        assert!(decode_entry(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn encoding_rejects_bad_fields() {
        let p = EntryHash([0; 32]);
        assert!(encode_entry(Seq(0), p, 1, Op::Delete, "/a", b"").is_err());
        assert!(encode_entry(Seq(MAX_SEQ + 1), p, 1, Op::Delete, "/a", b"").is_err());
        assert!(encode_entry(Seq(1), p, 1, Op::Delete, "a", b"").is_err());
        assert!(encode_entry(Seq(1), p, 1, Op::Delete, "/a", b"{}").is_err());
        assert!(encode_entry(Seq(1), p, 1, Op::Put, "/a", b"[1]").is_err());
        assert!(encode_entry(Seq(1), p, 1, Op::Put, "/a", b"{\"a\":").is_err());
        assert!(encode_entry(Seq(1), p, u64::MAX, Op::Delete, "/a", b"").is_err());
        assert!(encode_entry(Seq(1), p, 1, Op::Put, "/a", b" {\"a\":1.50}").is_ok());
        assert!(encode_entry(Seq(1), p, 1, Op::Put, "/a", b"{\"a\":\"\xff\xfe\"}").is_err());
    }

    #[test]
    fn a_valid_batch_verifies() {
        let key = NodeKey::from_seed([1; 32]);
        let (entries, cp) = chain(&key, genesis(&key), 5);
        let batch = verify_batch(key.id(), entries, cp).unwrap();
        assert_eq!(batch.first_seq(), Seq(1));
        assert_eq!(batch.len(), 5);
    }

    #[test]
    fn checkpoint_and_receipt_signatures_are_domain_separated() {
        let key = NodeKey::from_seed([1; 32]);
        let head = Head {
            seq: Seq(3),
            hash: EntryHash([9; 32]),
        };
        let cp = Checkpoint::sign(&key, head, 77);
        cp.verify().unwrap();
        assert_eq!(Checkpoint::from_bytes(&cp.to_bytes()).unwrap(), cp);
        // A receipt where holder == origin carries the same key, seq, hash and ts, yet the
        // checkpoint's signature must not verify as a receipt.
        let forged = Receipt {
            holder: key.id(),
            origin: key.id(),
            seq: cp.seq,
            hash: cp.hash,
            ts: cp.ts,
            signature: cp.signature,
        };
        assert!(forged.verify().is_err());
        let receipt = Receipt::sign(&key, key.id(), head, 77);
        receipt.verify().unwrap();
        let forged_cp = Checkpoint {
            signature: receipt.signature,
            ..cp
        };
        assert!(forged_cp.verify().is_err());
    }

    #[test]
    fn checkpoint_of_another_origin_or_wrong_head_is_rejected() {
        let key = NodeKey::from_seed([1; 32]);
        let other = NodeKey::from_seed([2; 32]);
        let (entries, cp) = chain(&key, genesis(&key), 3);
        let stolen = Checkpoint::sign(&other, cp.head(), cp.ts);
        assert!(matches!(
            verify_batch(key.id(), entries.clone(), stolen),
            Err(FeedError::WrongOrigin { .. })
        ));
        let relabelled = Checkpoint {
            origin: key.id(),
            ..stolen
        };
        assert!(matches!(
            verify_batch(key.id(), entries.clone(), relabelled),
            Err(FeedError::BadSignature { .. })
        ));
        let short = Checkpoint::sign(
            &key,
            Head {
                seq: Seq(2),
                hash: EntryHash::of(&entries[1]),
            },
            1,
        );
        assert!(matches!(
            verify_batch(key.id(), entries, short),
            Err(FeedError::NotCovered { .. })
        ));
    }

    #[test]
    fn entry_hash_text_round_trips() {
        let h = EntryHash::of(b"x");
        assert_eq!(h.to_string().parse::<EntryHash>().unwrap(), h);
        assert!("zz".parse::<EntryHash>().is_err());
        assert!(h.to_string().to_uppercase().parse::<EntryHash>().is_err());
    }
}
