//! Signed statements about feeds: checkpoints (by the origin) and receipts (by a holder),
//! each over its own tagged, versioned signing input.

use super::{EntryHash, FeedError, Head, MAX_SEQ, Seq};
use crate::identity::{NodeId, NodeKey};

const CHECKPOINT_TAG: &[u8] = b"tandem-checkpoint-v1\0";
const RECEIPT_TAG: &[u8] = b"tandem-receipt-v1\0";

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
