//! Fork evidence: two histories signed by one origin, kept so that anyone can check them.

use super::{Checkpoint, EntryHash, FeedError, Seq, decode_entry};
use crate::identity::NodeId;

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
