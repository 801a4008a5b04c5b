//! Signed snapshots: an origin's statement of its full state at a seq, and the state root that
//! summarizes that state.
//!
//! # State root
//!
//! The state at a seq is the set of live objects: for each path, the body of the last put at or
//! before the seq, unless a later delete removed it; and the tombstones the source keeps: for
//! each path whose last entry is a delete that carried the source's tombstone (a non-empty
//! body), that body, unless a container above it was deleted since (deleting a container drops
//! the tombstones below it, as Kinto does). [`StateFold`] applies entries in order to give it.
//!
//! Sorted by path (bytewise), each live object is a leaf
//! `BLAKE3("tandem-leaf-v1" 0x00 · len(path) (4) · path · BLAKE3(body))` and each tombstone a
//! leaf `BLAKE3("tandem-tombstone-v1" 0x00 · len(path) (4) · path · BLAKE3(body))`, and the
//! root is the Merkle tree hash of RFC 6962 (section 2.1) over the leaves with interior nodes
//! `BLAKE3("tandem-node-v1" 0x00 · left · right)`: the left subtree holds the largest power of
//! two of leaves below the count. An empty state's root is `BLAKE3("tandem-empty-v1" 0x00)`.
//! [`StateRoot`] computes it in one pass, holding one hash per level. Tombstones are in the
//! root so that everything a restore writes (they give clients their deletions and the lists
//! their timestamps) is covered by the origin's signature, also once the entries below a
//! snapshot are compacted away. The object count and bytes count live objects only. (Version 1
//! of the statement had roots over live objects alone; its signatures do not verify as
//! version 2, so such a snapshot is refused as badly signed, never taken for a lie.)
//!
//! # Snapshot statement
//!
//! Signed by the origin over `"tandem-snapshot-v2" 0x00` · origin key (32) · seq (8) · head hash
//! (32) · ts (8) · objects (8) · bytes (8) · state root (32). `head hash` is the hash of the
//! entry at `seq`, binding the snapshot to one chain; `bytes` is the sum of the bodies' lengths.
//! The stored form is those fields without the tag, then the 64-byte signature: 192 bytes.
//! A snapshot's id is the first 8 bytes of `BLAKE3(stored form)`, in hex.

use super::{EntryHash, FeedError, Head, MAX_SEQ, Seq};
use crate::identity::{NodeId, NodeKey};

const SNAPSHOT_TAG: &[u8] = b"tandem-snapshot-v2\0";
const LEAF_TAG: &[u8] = b"tandem-leaf-v1\0";
const TOMBSTONE_TAG: &[u8] = b"tandem-tombstone-v1\0";
const NODE_TAG: &[u8] = b"tandem-node-v1\0";
const EMPTY_TAG: &[u8] = b"tandem-empty-v1\0";

/// Length of a stored snapshot.
pub const SNAPSHOT_LEN: usize = 32 + 8 + 32 + 8 + 8 + 8 + 32 + 64;

/// What a state root computation yields.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct StateSummary {
    /// The Merkle root.
    pub root: [u8; 32],
    /// Number of live objects.
    pub objects: u64,
    /// Sum of their bodies' lengths.
    pub bytes: u64,
}

/// Computes a state root from objects given in path order.
#[derive(Default)]
pub struct StateRoot {
    /// Perfect subtrees not yet merged, with their leaf counts (powers of two, decreasing).
    stack: Vec<(u64, [u8; 32])>,
    objects: u64,
    bytes: u64,
    last_path: Option<Vec<u8>>,
}

impl StateRoot {
    /// An empty computation.
    pub fn new() -> StateRoot {
        StateRoot::default()
    }

    /// Adds the next object. Paths must come in strictly increasing bytewise order.
    pub fn push(&mut self, path: &str, body: &[u8]) -> Result<(), FeedError> {
        self.push_hashed(path, blake3::hash(body).as_bytes(), body.len() as u64)
    }

    /// [`StateRoot::push`] for an object whose body was already hashed (`BLAKE3(body)`, and
    /// its length).
    pub fn push_hashed(
        &mut self,
        path: &str,
        body_hash: &[u8; 32],
        body_len: u64,
    ) -> Result<(), FeedError> {
        self.push_leaf(LEAF_TAG, path, body_hash)?;
        self.objects += 1;
        self.bytes += body_len;
        Ok(())
    }

    /// Adds the next tombstone, by its path and `BLAKE3(body)` of its delete. Paths of objects
    /// and tombstones together must come in strictly increasing order.
    pub fn push_tombstone_hashed(
        &mut self,
        path: &str,
        body_hash: &[u8; 32],
    ) -> Result<(), FeedError> {
        self.push_leaf(TOMBSTONE_TAG, path, body_hash)
    }

    fn push_leaf(&mut self, tag: &[u8], path: &str, body_hash: &[u8; 32]) -> Result<(), FeedError> {
        if self
            .last_path
            .as_deref()
            .is_some_and(|last| last >= path.as_bytes())
        {
            return Err(FeedError::Malformed(
                "state paths are not strictly increasing",
            ));
        }
        self.last_path = Some(path.as_bytes().to_vec());
        let mut leaf = blake3::Hasher::new();
        leaf.update(tag);
        leaf.update(&(path.len() as u32).to_be_bytes());
        leaf.update(path.as_bytes());
        leaf.update(body_hash);
        let mut node = (1u64, *leaf.finalize().as_bytes());
        while let Some(&(size, left)) = self.stack.last() {
            if size != node.0 {
                break;
            }
            self.stack.pop();
            node = (size * 2, interior(&left, &node.1));
        }
        self.stack.push(node);
        Ok(())
    }

    /// The root, object count and body bytes.
    pub fn finish(self) -> StateSummary {
        let root = match self.stack.split_last() {
            None => *blake3::hash(EMPTY_TAG).as_bytes(),
            Some((last, rest)) => rest
                .iter()
                .rev()
                .fold(last.1, |right, (_, left)| interior(left, &right)),
        };
        StateSummary {
            root,
            objects: self.objects,
            bytes: self.bytes,
        }
    }
}

/// One path of a folded state: a live object or a tombstone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FoldedItem {
    /// The seq of the entry that holds its body.
    pub seq: u64,
    /// `BLAKE3(body)`.
    pub body_hash: [u8; 32],
    /// The body's length.
    pub len: u64,
    /// Whether it is a tombstone.
    pub deleted: bool,
}

/// An origin's state (see the module docs) as its entries are applied in seq order.
#[derive(Default)]
pub struct StateFold {
    items: std::collections::BTreeMap<String, FoldedItem>,
}

impl StateFold {
    /// An empty state.
    pub fn new() -> StateFold {
        StateFold::default()
    }

    /// Applies the entry at `seq`.
    pub fn apply(&mut self, seq: u64, entry: &super::EntryRef<'_>) {
        let item = |deleted| FoldedItem {
            seq,
            body_hash: *blake3::hash(entry.body).as_bytes(),
            len: entry.body.len() as u64,
            deleted,
        };
        match entry.op {
            super::Op::Put => {
                self.items.insert(entry.path.to_owned(), item(false));
            }
            super::Op::Delete => {
                let below = format!("{}/", entry.path);
                let purged: Vec<String> = self
                    .items
                    .range(below.clone()..)
                    .take_while(|(p, _)| p.starts_with(&below))
                    .filter(|(_, i)| i.deleted)
                    .map(|(p, _)| p.clone())
                    .collect();
                for p in purged {
                    self.items.remove(&p);
                }
                if entry.body.is_empty() {
                    self.items.remove(entry.path);
                } else {
                    self.items.insert(entry.path.to_owned(), item(true));
                }
            }
        }
    }

    /// Every path, in order, with what it holds.
    pub fn items(&self) -> impl Iterator<Item = (&str, &FoldedItem)> {
        self.items.iter().map(|(p, i)| (p.as_str(), i))
    }

    /// The state root of the state as it stands.
    pub fn summary(&self) -> Result<StateSummary, FeedError> {
        let mut root = StateRoot::new();
        for (path, item) in &self.items {
            if item.deleted {
                root.push_tombstone_hashed(path, &item.body_hash)?;
            } else {
                root.push_hashed(path, &item.body_hash, item.len)?;
            }
        }
        Ok(root.finish())
    }
}

/// Checks a base (the entries that give a snapshot's state, see [`crate::store`]'s compaction)
/// against its snapshot: `fold` holds the `count` entries applied in seq order, the last of
/// which, `last` (seq and hash), must be the very entry the snapshot names; every other entry
/// must hold a live object or tombstone of the state, and the state must be the one signed.
/// Returns what is wrong.
pub fn check_base(
    snapshot: &Snapshot,
    fold: &StateFold,
    count: usize,
    last: Option<(u64, EntryHash)>,
) -> Result<(), &'static str> {
    if last != Some((snapshot.seq.0, snapshot.head_hash)) {
        return Err("a base that does not end with the entry its snapshot names");
    }
    let items = fold.items().count();
    let last_is_state = fold.items().any(|(_, i)| i.seq == snapshot.seq.0);
    if count != items + usize::from(!last_is_state) {
        return Err("a base with entries that are not part of its state");
    }
    let state = fold
        .summary()
        .map_err(|_| "a base whose paths do not sort")?;
    if state.root != snapshot.state_root {
        return Err("a base whose state root is not the one signed");
    }
    if (state.objects, state.bytes) != (snapshot.objects, snapshot.bytes) {
        return Err("a base whose object count or size is not the one signed");
    }
    Ok(())
}

fn interior(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(NODE_TAG);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// An origin's signed statement of its state at a seq.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Snapshot {
    /// The origin.
    pub origin: NodeId,
    /// The seq the state is at.
    pub seq: Seq,
    /// Hash of the entry at `seq`.
    pub head_hash: EntryHash,
    /// When the origin signed it (ms since the epoch).
    pub ts: u64,
    /// Number of live objects.
    pub objects: u64,
    /// Sum of their bodies' lengths.
    pub bytes: u64,
    /// The state root.
    pub state_root: [u8; 32],
    /// The origin's signature over [`Snapshot::signing_input`].
    pub signature: [u8; 64],
}

impl Snapshot {
    /// Signs a snapshot of `key`'s own state at `head`.
    pub fn sign(key: &NodeKey, head: Head, ts: u64, state: StateSummary) -> Snapshot {
        let mut s = Snapshot {
            origin: key.id(),
            seq: head.seq,
            head_hash: head.hash,
            ts,
            objects: state.objects,
            bytes: state.bytes,
            state_root: state.root,
            signature: [0; 64],
        };
        s.signature = key.sign(&s.signing_input());
        s
    }

    /// The exact bytes the origin signs.
    pub fn signing_input(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SNAPSHOT_TAG.len() + 128);
        out.extend_from_slice(SNAPSHOT_TAG);
        out.extend_from_slice(&self.fields());
        out
    }

    fn fields(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SNAPSHOT_LEN);
        out.extend_from_slice(self.origin.as_bytes());
        out.extend_from_slice(&self.seq.0.to_be_bytes());
        out.extend_from_slice(&self.head_hash.0);
        out.extend_from_slice(&self.ts.to_be_bytes());
        out.extend_from_slice(&self.objects.to_be_bytes());
        out.extend_from_slice(&self.bytes.to_be_bytes());
        out.extend_from_slice(&self.state_root);
        out
    }

    /// Checks the signature.
    pub fn verify(&self) -> Result<(), FeedError> {
        if self.seq.0 == 0 || self.seq.0 > MAX_SEQ {
            return Err(FeedError::Malformed("snapshot seq out of range"));
        }
        if self.origin.verify(&self.signing_input(), &self.signature) {
            Ok(())
        } else {
            Err(FeedError::BadSignature {
                what: "snapshot",
                origin: self.origin,
                seq: self.seq,
            })
        }
    }

    /// The head this snapshot is at.
    pub fn head(&self) -> Head {
        Head {
            seq: self.seq,
            hash: self.head_hash,
        }
    }

    /// Stored form (192 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.fields();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses the stored form (does not verify the signature).
    pub fn from_bytes(b: &[u8]) -> Result<Snapshot, FeedError> {
        if b.len() != SNAPSHOT_LEN {
            return Err(FeedError::Malformed("snapshot is not 192 bytes"));
        }
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap());
        Ok(Snapshot {
            origin: NodeId::from_bytes(b[0..32].try_into().unwrap())
                .map_err(|_| FeedError::Malformed("snapshot origin is not a valid key"))?,
            seq: Seq(u64_at(32)),
            head_hash: EntryHash(b[40..72].try_into().unwrap()),
            ts: u64_at(72),
            objects: u64_at(80),
            bytes: u64_at(88),
            state_root: b[96..128].try_into().unwrap(),
            signature: b[128..192].try_into().unwrap(),
        })
    }

    /// The snapshot's id: 16 hex digits.
    pub fn id(&self) -> String {
        blake3::hash(&self.to_bytes()).as_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The state root in hex.
    pub fn root_hex(&self) -> String {
        self.state_root.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(path: &str, body: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(LEAF_TAG);
        h.update(&(path.len() as u32).to_be_bytes());
        h.update(path.as_bytes());
        h.update(blake3::hash(body).as_bytes());
        *h.finalize().as_bytes()
    }

    /// RFC 6962's recursive definition, to check the one-pass computation against.
    fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => *blake3::hash(EMPTY_TAG).as_bytes(),
            1 => leaves[0],
            n => {
                let k = 1 << (usize::BITS - 1 - (n - 1).leading_zeros());
                interior(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn one_pass_root_is_the_rfc6962_tree() {
        for n in 0..40 {
            let objects: Vec<(String, Vec<u8>)> = (0..n)
                .map(|i| {
                    (
                        format!("/buckets/b{i:03}"),
                        format!("{{\"n\":{i}}}").into_bytes(),
                    )
                })
                .collect();
            let mut root = StateRoot::new();
            for (p, b) in &objects {
                root.push(p, b).unwrap();
            }
            let StateSummary {
                root: got,
                objects: count,
                ..
            } = root.finish();
            let leaves: Vec<_> = objects.iter().map(|(p, b)| leaf(p, b)).collect();
            assert_eq!((got, count), (mth(&leaves), n as u64), "{n} leaves");
        }
    }

    #[test]
    fn any_change_moves_the_root_and_order_is_enforced() {
        let root = |objects: &[(&str, &str)]| {
            let mut r = StateRoot::new();
            for (p, b) in objects {
                r.push(p, b.as_bytes()).unwrap();
            }
            r.finish().root
        };
        let base = root(&[("/a", "{}"), ("/b", "{\"x\":1}")]);
        assert_ne!(base, root(&[("/a", "{}"), ("/b", "{\"x\":2}")]));
        assert_ne!(base, root(&[("/a", "{}"), ("/c", "{\"x\":1}")]));
        assert_ne!(base, root(&[("/a", "{}")]));
        let mut r = StateRoot::new();
        r.push("/b", b"{}").unwrap();
        assert!(r.push("/a", b"{}").is_err());
        assert!(r.push("/b", b"{}").is_err());
        assert!(r.push_tombstone_hashed("/b", &[0; 32]).is_err());
    }

    #[test]
    fn a_tombstone_is_its_own_kind_of_leaf_and_counts_no_object() {
        let body = b"{\"data\":{\"deleted\":true}}";
        let mut live = StateRoot::new();
        live.push("/a", b"{}").unwrap();
        live.push("/b", body).unwrap();
        let mut tomb = StateRoot::new();
        tomb.push("/a", b"{}").unwrap();
        tomb.push_tombstone_hashed("/b", blake3::hash(body).as_bytes())
            .unwrap();
        let (live, tomb) = (live.finish(), tomb.finish());
        assert_ne!(live.root, tomb.root);
        assert_eq!((tomb.objects, tomb.bytes), (1, 2));
        let mut only_a = StateRoot::new();
        only_a.push("/a", b"{}").unwrap();
        assert_ne!(only_a.finish().root, tomb.root);
    }

    #[test]
    fn snapshots_sign_round_trip_and_refuse_tampering() {
        let key = NodeKey::from_seed([9; 32]);
        let head = Head {
            seq: Seq(7),
            hash: EntryHash([1; 32]),
        };
        let state = StateSummary {
            root: [2; 32],
            objects: 3,
            bytes: 40,
        };
        let s = Snapshot::sign(&key, head, 5, state);
        s.verify().unwrap();
        let back = Snapshot::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back, s);
        assert_eq!(s.id().len(), 16);
        let bytes = s.to_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            if let Ok(t) = Snapshot::from_bytes(&b) {
                assert!(t.verify().is_err(), "flipped byte {i} still verifies");
            }
        }
    }
}
