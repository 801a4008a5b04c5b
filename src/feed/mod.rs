//! The feed: an origin's append-only, hash-chained log of changes, and the signed statements
//! about it (checkpoints, receipts, fork evidence).
//!
//! This module is the byte-level reference for any other implementation. Everything here is
//! pure: no I/O, no clock, no storage.
//!
//! # Entry encoding, version 1: plain entries
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
//! | 56+n | m | `body`: for put, a JSON object (RFC 8259, UTF-8; the source object's data and permissions, bytes as the source gave them); for delete, empty (`m` = 0), or a JSON object describing the source's tombstone (`{"data": <the tombstone the source keeps>}`, e.g. Kinto's `{"deleted":true,"id","last_modified"}`) |
//!
//! The entry is exactly `56 + n + m` bytes; trailing bytes are an error. A put body, and a
//! non-empty delete body, must be valid UTF-8 and parse as one JSON object (surrounding
//! whitespace allowed; duplicate keys are not checked). A delete carries a body when the source
//! keeps a tombstone for it (its timestamp is what clients that sync with the source compare);
//! a delete the source implied without one (the children of a deleted container) has none. There is one encoding
//! of any given entry, so equal entries have equal hashes.
//!
//! # Entry encoding, version 2: sealed entries
//!
//! A sealed feed (see [`crate::seal`]) hides its paths and bodies from the nodes that hold it.
//! Its entries have exactly the layout of version 1, with these differences:
//!
//! - the version byte is `0x02`;
//! - `path` is a sealed path: `/sealed/` then 43 base64url characters (no padding), 51 bytes;
//! - `body` is opaque bytes that only the feed's readers open: not empty for a put, empty or
//!   not for a delete. Nothing else about it is checked, so that how it is sealed can change
//!   without the nodes that only hold the feed having to learn it.
//!
//! A sealed feed mixes both versions: its entries before sealing, and the few statements that
//! must stay readable (the readers statement), are version 1. A version 1 entry may also carry
//! a sealed path with a JSON body: an earlier form of sealed entry, still read and verified.
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
//! | snapshot | `"tandem-snapshot-v2" 0x00` · origin key (32) · seq (8) · head hash (32) · ts (8) · objects (8) · bytes (8) · state root (32) (see [`Snapshot`]) |
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

use crate::identity::NodeId;

mod batch;
mod entry;
mod fork;
mod snapshot;
mod statements;

pub use batch::{VerifiedBatch, verify_batch};
pub use entry::{
    EntryRef, check_change, decode_entry, decode_stored_entry, encode_entry, encode_sealed_entry,
};
pub use fork::ForkEvidence;
pub use snapshot::{
    FoldedItem, SNAPSHOT_LEN, Snapshot, StateFold, StateRoot, StateSummary, check_base,
};
pub use statements::{CHECKPOINT_LEN, Checkpoint, Receipt};

/// Version byte of a plain entry.
pub const ENTRY_VERSION: u8 = 1;
/// Version byte of a sealed entry (see the module docs).
pub const SEALED_ENTRY_VERSION: u8 = 2;
/// Every sealed path starts with this; no source path does (Kinto's start with `/buckets`,
/// tandem's own statements with `/tandem/`).
pub const SEALED_PREFIX: &str = "/sealed/";
/// Length of a sealed path: the prefix and a 32-byte hash in base64url without padding.
pub const SEALED_PATH_LEN: usize = SEALED_PREFIX.len() + 43;
/// Largest `seq` an entry may carry (2^40 − 1); the store packs (origin, seq) into one integer.
pub const MAX_SEQ: u64 = (1 << 40) - 1;
/// Longest path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Largest body, in bytes.
pub const MAX_BODY_LEN: usize = 64 << 20;
/// Bytes of an entry that are not path or body.
pub const ENTRY_OVERHEAD: usize = 56;
/// Largest encoded entry.
pub const MAX_ENTRY_LEN: usize = ENTRY_OVERHEAD + MAX_PATH_LEN + MAX_BODY_LEN;

const GENESIS_TAG: &[u8] = b"tandem-genesis-v1\0";

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
    pub(crate) fn code(self) -> u8 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;

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
    fn a_sealed_entry_is_version_2_with_a_sealed_path_and_an_opaque_body() {
        let p = EntryHash([3; 32]);
        let path = format!("{SEALED_PREFIX}{}", "A_-z09".repeat(7) + "x");
        assert_eq!(path.len(), SEALED_PATH_LEN);
        let body = [0x01, 0xff, 0x00, b'{', 0xfe];
        let bytes = encode_sealed_entry(Seq(5), p, 42, Op::Put, &path, &body).unwrap();
        assert_eq!(bytes[0], SEALED_ENTRY_VERSION);
        assert_eq!(bytes.len(), ENTRY_OVERHEAD + SEALED_PATH_LEN + body.len());
        for e in [decode_entry(&bytes), decode_stored_entry(&bytes)] {
            let e = e.unwrap();
            assert_eq!(
                (e.seq, e.prev, e.ts, e.op, e.path, e.body),
                (Seq(5), p, 42, Op::Put, path.as_str(), &body[..])
            );
        }
        // A delete may have a body or none; a put must have one.
        assert!(encode_sealed_entry(Seq(5), p, 42, Op::Delete, &path, b"").is_ok());
        assert!(encode_sealed_entry(Seq(5), p, 42, Op::Delete, &path, &body).is_ok());
        assert!(encode_sealed_entry(Seq(5), p, 42, Op::Put, &path, b"").is_err());
        // Only a sealed path: prefix, 43 base64url characters, nothing else.
        for bad in [
            "/buckets/b".to_owned(),
            path[..path.len() - 1].to_owned(),
            format!("{path}A"),
            path.replace('x', "="),
            path.replace("/sealed/", "/sealeD/"),
        ] {
            assert!(
                encode_sealed_entry(Seq(5), p, 42, Op::Put, &bad, &body).is_err(),
                "{bad}"
            );
        }
        assert!(encode_sealed_entry(Seq(0), p, 42, Op::Put, &path, &body).is_err());
        // Neither version passes for the other: the plain rules reject the opaque body, the
        // sealed rules a plain path, and the version byte is hashed with the rest.
        assert!(encode_entry(Seq(5), p, 42, Op::Put, &path, &body).is_err());
        let mut as_plain = bytes.clone();
        as_plain[0] = ENTRY_VERSION;
        assert!(decode_entry(&as_plain).is_err());
        let plain = encode_entry(Seq(5), p, 42, Op::Put, "/buckets/b", b"{}").unwrap();
        let mut as_sealed = plain.clone();
        as_sealed[0] = SEALED_ENTRY_VERSION;
        assert!(decode_entry(&as_sealed).is_err());
        assert!(decode_stored_entry(&as_sealed).is_err());
        let mut unknown = bytes.clone();
        unknown[0] = 3;
        assert_eq!(
            decode_entry(&unknown),
            Err(FeedError::Malformed("unknown entry version"))
        );
        assert!(decode_entry(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn encoding_rejects_bad_fields() {
        let p = EntryHash([0; 32]);
        assert!(encode_entry(Seq(0), p, 1, Op::Delete, "/a", b"").is_err());
        assert!(encode_entry(Seq(MAX_SEQ + 1), p, 1, Op::Delete, "/a", b"").is_err());
        assert!(encode_entry(Seq(1), p, 1, Op::Delete, "a", b"").is_err());
        assert!(encode_entry(Seq(1), p, 1, Op::Delete, "/a", b"[]").is_err());
        assert!(encode_entry(Seq(1), p, 1, Op::Delete, "/a", b"\"x\"").is_err());
        let tombstone = br#"{"data":{"id":"a","last_modified":5,"deleted":true}}"#;
        assert!(encode_entry(Seq(1), p, 1, Op::Delete, "/a", tombstone).is_ok());
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
