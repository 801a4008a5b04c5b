//! Verification of a batch of entries from the network, before anything of it is stored.

use super::{Checkpoint, EntryHash, FeedError, Seq, decode_entry};
use crate::identity::NodeId;

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
