//! Sealed entries: what a holder of a sealed origin sees instead of paths and bodies, and how
//! whoever holds the origin's keys turns it back. Pure: no I/O but the random source.
//!
//! A sealed entry has the layout of any other (the encoding of [`crate::feed`], version 2), so
//! that a holder chains, verifies, compacts, snapshots and serves it with the code it uses for
//! any other: only its version byte, path and body differ.
//!
//! | field | plain entry (version 1) | sealed entry (version 2) |
//! |---|---|---|
//! | `op` | put or delete | the same |
//! | `path` | `/buckets/b/collections/c/records/r` | `/sealed/` · base64url(BLAKE3-keyed(path key, path)), 51 bytes |
//! | `body` | the object (put), its tombstone (delete), or nothing | `0x01 · E (u32, big-endian) · nonce (24 bytes) · XChaCha20-Poly1305(content key of epoch E, nonce, ad, plaintext)`, or nothing when the plain body is empty |
//!
//! where `0x01` names the sealing scheme described here, the nonce is 16 random bytes drawn
//! once per append and a counter of the entries it seals (so that a holder can tell which
//! entries one append sealed, which their seqs and times tell it anyway), and
//!
//! ```text
//! plaintext = path length (u16, big-endian) · path · body
//! ad        = "tandem-sealed-v2" 0x00 · origin key (32) · op (1) · scheme (1) · E (u32, big-endian) · sealed path
//! ```
//!
//! A sealed put is `29 + 2 + n + m + 16` bytes of body for a source path of `n` bytes and a
//! body of `m`: 47 bytes more than the plaintext, and the path moves inside it.
//!
//! The associated data binds a ciphertext to its origin, its op and its sealed path, so that a
//! holder cannot move one to another place of a feed (it could not sign the result anyway).
//!
//! Feeds sealed by earlier builds hold version 1 entries with the same sealed paths and the
//! body `{"key":E,"sealed":"B"}`, `B` base64url (no padding) of the nonce and the ciphertext,
//! under the associated data `"tandem-sealed-v1" 0x00 · origin key · op · E · sealed path`.
//! Readers open both forms, each only in an entry of its own version ([`Ring::open_entry`]:
//! a version 2 body starts with a scheme number, a version 1 body with `{`); only version 2
//! is written.
//! A delete without a body (the children of a deleted container) carries no ciphertext: its
//! sealed path names what it deletes, and a reader knows the path behind it from the put
//! that came before.
//!
//! ## What a holder sees, and why it suffices
//!
//! The keyed hash gives every source path one stable sealed path, so a holder folds a sealed
//! feed into its state (one live object per sealed path, a tombstone per deleted one), compacts
//! it and computes its state root exactly as for a plain feed, without learning a path. The
//! one rule of the state that looks inside paths, "deleting a container drops the tombstones
//! below it", cannot work on hashes: the origin spells it out instead, as explicit deletes of
//! those tombstones written before the container's (see `store::write`), so that the plain and
//! the sealed fold keep the same entries.
//!
//! ## Keys
//!
//! Every key derives from the node key (BLAKE3 `derive_key`, one context string each), so the
//! node key alone — and so a key backup with its passphrase — opens the whole feed. The path
//! key never changes: a path keeps its sealed path for the life of the feed. Content keys are
//! numbered by epoch: epoch 0's from the node key, each later one from the node key and its
//! number, so that knowing the keys of some epochs tells nothing of the next.
//!
//! ## Readers
//!
//! Other nodes of the same person (`[[peer]] read = true`) read a sealed feed through one plain
//! statement in it, at [`READERS_PATH`]:
//!
//! ```json
//! {"epoch": E, "readers": {"<node id>": "<grant>", …}}
//! ```
//!
//! `E` is the epoch new entries are sealed under. A grant is base64url (no padding) of
//! `ephemeral X25519 public key (32) · nonce (24) · XChaCha20-Poly1305(wrap key, nonce, ad,
//! content keys of epochs 0..=E, 32 bytes each)`: the content keys wrapped to the reader's
//! node key taken as an X25519 key (as age does for ssh-ed25519 recipients), with
//!
//! ```text
//! wrap key = BLAKE3-derive_key("…reader grant…", shared secret · ephemeral key · reader's X25519 key)
//! ad       = "tandem-grant-v1" 0x00 · origin key (32) · reader key (32) · E (u32, big-endian)
//! ```
//!
//! The path key is not granted: a reader learns source paths from the plaintext it opens.
//! Removing a reader starts a new epoch whose key it is not given, so it cannot open what is
//! sealed after; what it opened before, it keeps. Holders see who may read (the node ids),
//! not the keys.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, AeadInOut, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, Zeroizing};

use crate::feed::{EntryRef, MAX_BODY_LEN, MAX_PATH_LEN, Op, SEALED_ENTRY_VERSION};
use crate::identity::{NodeId, NodeKey};

pub use crate::feed::SEALED_PREFIX;

/// The path of the readers statement (see the module docs); it stays plain in a sealed feed.
pub const READERS_PATH: &str = "/tandem/readers";

/// Whether a change at `path` stays plain in a sealed feed: the readers statement, which a
/// reader must find before it holds a key.
pub fn stays_plain(path: &str) -> bool {
    path == READERS_PATH
}

const AD_TAG: &[u8] = b"tandem-sealed-v2\0";
const AD_TAG_V1: &[u8] = b"tandem-sealed-v1\0";
/// The sealing scheme of the module docs: XChaCha20-Poly1305 over path and body.
const SCHEME: u8 = 0x01;
/// Bytes of a sealed body before its ciphertext: scheme, epoch, nonce.
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
const GRANT_AD_TAG: &[u8] = b"tandem-grant-v1\0";
const CONTENT_CONTEXT: &str = "tandem 2026-12 sealed origin content key, epoch 0";
const LATER_CONTENT_CONTEXT: &str = "tandem 2026-12 sealed origin content key, later epochs";
const GRANT_CONTEXT: &str = "tandem 2026-12 sealed origin reader grant wrapping key";
/// Most epochs a feed may have (each removal of a reader starts one): bounds what a grant
/// carries and what a reader allocates.
pub const MAX_EPOCHS: u32 = 4096;
const PATH_CONTEXT: &str = "tandem 2026-12 sealed origin path key";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Whether `path` is a sealed path (what holders of a sealed origin see).
pub fn is_sealed(path: &str) -> bool {
    path.starts_with(SEALED_PREFIX)
}

/// Why a sealed entry could not be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The body is not a sealed envelope.
    #[error("the body of a sealed entry is not a sealed envelope ({0})")]
    Envelope(&'static str),
    /// Sealed under a content key this node does not have.
    #[error(
        "sealed under content key epoch {epoch}, which this node does not have: only readers the origin granted it may open the entry"
    )]
    UnknownEpoch {
        /// The epoch the entry names.
        epoch: u32,
    },
    /// Authentication failed: another key, or altered bytes.
    #[error(
        "a sealed entry does not open with the content key it names (of this node, its grant, or the archive that carries it): it was sealed under another key, or altered"
    )]
    Open,
    /// The sealed form would exceed the entry limits.
    #[error("the object at {path} is too large to seal (its sealed form exceeds 64 MiB)")]
    TooLarge {
        /// The source path.
        path: String,
    },
    /// The readers statement does not parse.
    #[error("the readers statement of a sealed feed is malformed ({0})")]
    Statement(&'static str),
    /// Content keys (an archive's keys section) that are not a ring of keys.
    #[error("the content keys are malformed: {0}")]
    Keys(&'static str),
    /// A grant that does not open with this node's key.
    #[error(
        "the grant to this node in the readers statement does not open with this node's key: it was made for another key, or altered"
    )]
    Grant,
    /// A reader id that cannot receive a grant.
    #[error("node id {0} cannot be granted reading: it is not a usable X25519 key")]
    Reader(NodeId),
}

/// The content keys of one origin, by epoch: what opens its sealed entries. Held by the origin
/// (all epochs, from its node key) and by its readers (the epochs granted). Not `Clone`;
/// zeroized when dropped; `Debug` shows nothing secret.
pub struct Ring {
    origin: NodeId,
    contents: Vec<Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("origin", &self.origin)
            .field("epochs", &self.contents.len())
            .finish_non_exhaustive()
    }
}

/// The keys that seal and open one origin's entries: its [`Ring`] up to the current epoch and
/// its path key. Not `Clone`; zeroized when dropped; `Debug` shows nothing secret.
pub struct SealKey {
    ring: Ring,
    path_key: Zeroizing<[u8; 32]>,
    nonces: Nonces,
}

/// The nonces of the entries one [`SealKey`] seals: 16 random bytes drawn when the key is
/// made, then a 64-bit counter (big-endian). Unique within one key by the counter, and across
/// keys (every append, every restart makes one) by the random prefix, as a random 24-byte
/// nonce would be, for one system call per key instead of one per entry.
struct Nonces {
    prefix: [u8; NONCE_LEN - 8],
    next: AtomicU64,
}

impl Nonces {
    fn new() -> Nonces {
        Nonces {
            prefix: random(),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> [u8; NONCE_LEN] {
        // 2^64 entries under one key are out of reach; were they not, the counter stops
        // rather than wrap and repeat a nonce.
        let n = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1))
            .expect("nonce counter exhausted");
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..NONCE_LEN - 8].copy_from_slice(&self.prefix);
        nonce[NONCE_LEN - 8..].copy_from_slice(&n.to_be_bytes());
        nonce
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKey")
            .field("origin", &self.ring.origin)
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

/// A plain entry's path and body, as opened from (or before it became) a sealed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plain {
    /// The source path.
    pub path: String,
    /// The body (empty for a delete without one).
    pub body: Vec<u8>,
}

/// The content key of `epoch`, from a node key's seed.
fn content_key(seed: &[u8; 32], epoch: u32) -> Zeroizing<[u8; 32]> {
    if epoch == 0 {
        return Zeroizing::new(blake3::derive_key(CONTENT_CONTEXT, seed));
    }
    let mut material = Zeroizing::new([0u8; 36]);
    material[..32].copy_from_slice(seed);
    material[32..].copy_from_slice(&epoch.to_be_bytes());
    Zeroizing::new(blake3::derive_key(LATER_CONTENT_CONTEXT, &*material))
}

/// The epoch a sealed body names, without opening it; `None` for a body that is not sealed (a
/// plain entry, a delete without a body).
pub fn epoch_of(body: &[u8]) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct Key {
        key: u32,
    }
    match body.first() {
        Some(&SCHEME) if body.len() >= HEADER_LEN => {
            Some(u32::from_be_bytes(body[1..5].try_into().expect("4 bytes")))
        }
        Some(b'{') => serde_json::from_slice::<Key>(body).ok().map(|k| k.key),
        _ => None,
    }
}

impl Ring {
    /// A ring from raw content keys, epoch 0 first (an archive's keys section).
    pub fn from_keys(origin: NodeId, keys: &[u8]) -> Result<Ring, SealError> {
        if keys.is_empty()
            || !keys.len().is_multiple_of(32)
            || keys.len() / 32 > MAX_EPOCHS as usize
        {
            return Err(SealError::Keys(
                "they are not one or more 32-byte keys (at most one per epoch)",
            ));
        }
        Ok(Ring {
            origin,
            contents: keys
                .chunks_exact(32)
                .map(|k| Zeroizing::new(k.try_into().expect("chunks of 32")))
                .collect(),
        })
    }

    /// The origin these keys belong to.
    pub fn origin(&self) -> NodeId {
        self.origin
    }

    /// How many epochs this ring opens (0 to this, exclusive).
    pub fn epochs(&self) -> u32 {
        self.contents.len() as u32
    }

    /// The keys of epochs 0 to `epoch` only (all of them when it has fewer).
    pub fn up_to(&self, epoch: u32) -> Ring {
        Ring {
            origin: self.origin,
            contents: self
                .contents
                .iter()
                .take(epoch as usize + 1)
                .cloned()
                .collect(),
        }
    }

    /// The raw content keys, epoch 0 first (what a grant or an archive's keys section carries).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(32 * self.contents.len()));
        for k in &self.contents {
            out.extend_from_slice(&**k);
        }
        out
    }

    /// Opens a sealed entry (one whose path [`is_sealed`]): its body in the form its version
    /// writes, a version 2 entry's sealing scheme or a version 1 entry's JSON envelope (see the
    /// module docs), so that neither is ever read as the other. `None` for an empty body (a
    /// delete without one: its path is known from the entries before it).
    pub fn open_entry(&self, entry: &EntryRef<'_>) -> Result<Option<Plain>, SealError> {
        let envelope = entry.body.first() == Some(&b'{');
        if !entry.body.is_empty() && envelope == (entry.version == SEALED_ENTRY_VERSION) {
            return Err(SealError::Envelope("not the form of its entry version"));
        }
        self.open(entry.op, entry.path, entry.body)
    }

    /// Opens a sealed body, in the form its first byte names (see [`Ring::open_entry`]).
    fn open(&self, op: Op, sealed_path: &str, body: &[u8]) -> Result<Option<Plain>, SealError> {
        let plaintext = match body.first() {
            None => return Ok(None),
            Some(&SCHEME) => self.open_binary(op, sealed_path, body)?,
            Some(b'{') => self.open_envelope(op, sealed_path, body)?,
            Some(_) => return Err(SealError::Envelope("unknown sealing scheme")),
        };
        let n = u16::from_be_bytes([plaintext[0], plaintext[1]]) as usize;
        if plaintext.len() < 2 + n {
            return Err(SealError::Envelope("plaintext truncated"));
        }
        let path = std::str::from_utf8(&plaintext[2..2 + n])
            .map_err(|_| SealError::Envelope("path is not UTF-8"))?;
        Ok(Some(Plain {
            path: path.to_owned(),
            body: plaintext[2 + n..].to_vec(),
        }))
    }

    /// The content key of `epoch`.
    fn content(&self, epoch: u32) -> Result<&[u8; 32], SealError> {
        self.contents
            .get(epoch as usize)
            .map(|k| &**k)
            .ok_or(SealError::UnknownEpoch { epoch })
    }

    /// Opens a sealed body of a version 2 entry to its plaintext.
    fn open_binary(
        &self,
        op: Op,
        sealed_path: &str,
        body: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if body.len() < HEADER_LEN + TAG_LEN + 2 {
            return Err(SealError::Envelope("too short"));
        }
        let epoch = u32::from_be_bytes(body[1..5].try_into().expect("4 bytes"));
        let content = self.content(epoch)?;
        let ad = associated_data(&self.origin, op, epoch, sealed_path);
        aead_open(content, &body[5..], &ad).ok_or(SealError::Open)
    }

    /// Opens the JSON envelope of a version 1 sealed entry to its plaintext.
    fn open_envelope(
        &self,
        op: Op,
        sealed_path: &str,
        body: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        #[derive(serde::Deserialize)]
        struct Envelope<'a> {
            key: u32,
            #[serde(borrow)]
            sealed: &'a str,
        }
        let envelope: Envelope<'_> = serde_json::from_slice(body)
            .map_err(|_| SealError::Envelope("not {\"key\", \"sealed\"}"))?;
        let content = self.content(envelope.key)?;
        let raw = URL_SAFE_NO_PAD
            .decode(envelope.sealed)
            .map_err(|_| SealError::Envelope("not base64url"))?;
        if raw.len() < NONCE_LEN + TAG_LEN + 2 {
            return Err(SealError::Envelope("too short"));
        }
        let ad = associated_data_v1(&self.origin, op, envelope.key, sealed_path);
        aead_open(content, &raw, &ad).ok_or(SealError::Open)
    }

    /// The keys the readers statement `readers` grants to `me` for its origin `origin`.
    /// `Ok(None)` when it names no grant to `me`.
    pub fn from_grant(
        origin: NodeId,
        readers: &Readers,
        me: &NodeKey,
    ) -> Result<Option<Ring>, SealError> {
        let Some(grant) = readers.readers.get(&me.id().to_string()) else {
            return Ok(None);
        };
        let raw = URL_SAFE_NO_PAD
            .decode(grant)
            .map_err(|_| SealError::Statement("a grant is not base64url"))?;
        if raw.len() < 32 + NONCE_LEN + TAG_LEN {
            return Err(SealError::Statement("a grant is too short"));
        }
        let ephemeral: [u8; 32] = raw[..32].try_into().expect("checked length");
        let mine = me.id().x25519_public().ok_or(SealError::Grant)?;
        let shared = me.agree(ephemeral).ok_or(SealError::Grant)?;
        let wrap = wrap_key(&shared, &ephemeral, &mine);
        let ad = grant_ad(&origin, &me.id(), readers.epoch);
        let keys = aead_open(&wrap, &raw[32..], &ad).ok_or(SealError::Grant)?;
        let ring = Ring::from_keys(origin, &keys)
            .map_err(|_| SealError::Statement("a grant carries malformed content keys"))?;
        if ring.epochs() != readers.epoch + 1 {
            return Err(SealError::Statement(
                "a grant does not carry the keys of every epoch",
            ));
        }
        Ok(Some(ring))
    }
}

impl SealKey {
    /// The keys of `key`'s own origin, epoch 0.
    pub fn of_node(key: &NodeKey) -> SealKey {
        SealKey::of_node_at(key, 0)
    }

    /// The keys of `key`'s own origin, sealing under `epoch` and opening every epoch up to it.
    pub fn of_node_at(key: &NodeKey, epoch: u32) -> SealKey {
        let seed = key.seed();
        SealKey {
            ring: Ring {
                origin: key.id(),
                contents: (0..=epoch.min(MAX_EPOCHS - 1))
                    .map(|e| content_key(&seed, e))
                    .collect(),
            },
            path_key: Zeroizing::new(blake3::derive_key(PATH_CONTEXT, seed.as_ref())),
            nonces: Nonces::new(),
        }
    }

    /// The origin these keys belong to.
    pub fn origin(&self) -> NodeId {
        self.ring.origin
    }

    /// The epoch new entries are sealed under.
    pub fn epoch(&self) -> u32 {
        self.ring.epochs() - 1
    }

    /// The content keys of every epoch up to the current one.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The content keys alone.
    pub fn into_ring(self) -> Ring {
        self.ring
    }

    /// The sealed path of a source path.
    pub fn sealed_path(&self, path: &str) -> String {
        let hash = blake3::keyed_hash(&self.path_key, path.as_bytes());
        let mut out = String::with_capacity(SEALED_PREFIX.len() + 43);
        out.push_str(SEALED_PREFIX);
        URL_SAFE_NO_PAD.encode_string(hash.as_bytes(), &mut out);
        out
    }

    /// Seals a change: its sealed path and body (see the module docs).
    pub fn seal(&self, op: Op, path: &str, body: &[u8]) -> Result<(String, Vec<u8>), SealError> {
        let sealed = self.sealed_path(path);
        let body = self.seal_body(op, path, &sealed, body)?;
        Ok((sealed, body))
    }

    /// The sealed body of a change whose sealed path, [`SealKey::sealed_path`] of `path`, the
    /// caller already holds: empty for an empty body.
    pub fn seal_body(
        &self,
        op: Op,
        path: &str,
        sealed: &str,
        body: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        if body.is_empty() {
            return Ok(Vec::new());
        }
        let too_large = || SealError::TooLarge {
            path: path.to_owned(),
        };
        if path.len() > MAX_PATH_LEN {
            return Err(too_large());
        }
        let mut plaintext = Zeroizing::new(Vec::with_capacity(2 + path.len() + body.len()));
        plaintext.extend_from_slice(&(path.len() as u16).to_be_bytes());
        plaintext.extend_from_slice(path.as_bytes());
        plaintext.extend_from_slice(body);
        let epoch = self.epoch();
        let ad = associated_data(&self.ring.origin, op, epoch, sealed);
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.push(SCHEME);
        out.extend_from_slice(&epoch.to_be_bytes());
        aead_seal_into(
            &self.ring.contents[epoch as usize],
            self.nonces.next(),
            &plaintext,
            &ad,
            &mut out,
        )
        .ok_or_else(too_large)?;
        if out.len() > MAX_BODY_LEN {
            return Err(too_large());
        }
        Ok(out)
    }

    /// Opens a sealed body (see [`Ring::open_entry`]).
    #[cfg(test)]
    fn open(&self, op: Op, sealed_path: &str, body: &[u8]) -> Result<Option<Plain>, SealError> {
        self.ring.open(op, sealed_path, body)
    }

    /// A grant of every content key up to the current epoch to `reader` (see the module
    /// docs).
    pub fn grant(&self, reader: &NodeId) -> Result<String, SealError> {
        let theirs = reader.x25519_public().ok_or(SealError::Reader(*reader))?;
        let secret = Zeroizing::new(random::<32>());
        let ephemeral = curve25519_dalek::MontgomeryPoint::mul_base_clamped(*secret).to_bytes();
        let shared = Zeroizing::new(
            curve25519_dalek::MontgomeryPoint(theirs)
                .mul_clamped(*secret)
                .to_bytes(),
        );
        if *shared == [0u8; 32] {
            return Err(SealError::Reader(*reader));
        }
        let wrap = wrap_key(&shared, &ephemeral, &theirs);
        let ad = grant_ad(&self.ring.origin, reader, self.epoch());
        let sealed =
            aead_seal(&wrap, &self.ring.to_bytes(), &ad).ok_or(SealError::Reader(*reader))?;
        let mut raw = Vec::with_capacity(32 + sealed.len());
        raw.extend_from_slice(&ephemeral);
        raw.extend_from_slice(&sealed);
        Ok(URL_SAFE_NO_PAD.encode(raw))
    }
}

#[cfg(test)]
impl SealKey {
    /// Seals a change as builds before version 2 entries did: a JSON envelope, for a version 1
    /// entry (see the module docs). Only tests write it.
    pub(crate) fn seal_v1(&self, op: Op, path: &str, body: &[u8]) -> (String, Vec<u8>) {
        let sealed = self.sealed_path(path);
        if body.is_empty() {
            return (sealed, Vec::new());
        }
        let mut plaintext = (path.len() as u16).to_be_bytes().to_vec();
        plaintext.extend_from_slice(path.as_bytes());
        plaintext.extend_from_slice(body);
        let epoch = self.epoch();
        let ad = associated_data_v1(&self.ring.origin, op, epoch, &sealed);
        let raw = aead_seal(&self.ring.contents[epoch as usize], &plaintext, &ad).unwrap();
        let envelope = format!(
            "{{\"key\":{epoch},\"sealed\":\"{}\"}}",
            URL_SAFE_NO_PAD.encode(&raw)
        );
        (sealed, envelope.into_bytes())
    }
}

/// The readers statement of a sealed feed (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Readers {
    /// The epoch new entries are sealed under.
    pub epoch: u32,
    /// Node id → grant, for each node that may read.
    pub readers: BTreeMap<String, String>,
}

impl Readers {
    /// Parses a statement's body.
    pub fn parse(body: &[u8]) -> Result<Readers, SealError> {
        let readers: Readers = serde_json::from_slice(body)
            .map_err(|_| SealError::Statement("not {\"epoch\", \"readers\"}"))?;
        if readers.epoch >= MAX_EPOCHS {
            return Err(SealError::Statement("too many epochs"));
        }
        Ok(readers)
    }

    /// The statement's body.
    pub fn to_body(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a map of strings serializes")
    }

    /// The node ids named, parsed (an id that does not parse is left out).
    pub fn ids(&self) -> Vec<NodeId> {
        self.readers.keys().filter_map(|k| k.parse().ok()).collect()
    }
}

/// `nonce (24 random bytes) · XChaCha20-Poly1305(key, nonce, ad, msg)`; `None` only past the
/// cipher's length limit.
fn aead_seal(key: &[u8; 32], msg: &[u8], ad: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(NONCE_LEN + msg.len() + TAG_LEN);
    aead_seal_into(key, random(), msg, ad, &mut out)?;
    Some(out)
}

/// `nonce · XChaCha20-Poly1305(key, nonce, ad, msg)` appended to `out`, encrypted in place:
/// no copy of the ciphertext. `None` only past the cipher's length limit.
fn aead_seal_into(
    key: &[u8; 32],
    nonce: [u8; NONCE_LEN],
    msg: &[u8],
    ad: &[u8],
    out: &mut Vec<u8>,
) -> Option<()> {
    out.extend_from_slice(&nonce);
    let start = out.len();
    out.extend_from_slice(msg);
    let sealed = XChaCha20Poly1305::new(key.into()).encrypt_inout_detached(
        &XNonce::from(nonce),
        ad,
        out[start..].as_mut().into(),
    );
    let Ok(tag) = sealed else {
        // Refused before encrypting: what was copied in is the plaintext.
        out[start..].zeroize();
        return None;
    };
    out.extend_from_slice(&tag);
    Some(())
}

/// Opens what [`aead_seal`] made; `None` when it is too short, or does not authenticate.
fn aead_open(key: &[u8; 32], sealed: &[u8], ad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, msg) = sealed.split_at(NONCE_LEN);
    let nonce = <[u8; NONCE_LEN]>::try_from(nonce).expect("split at the nonce length");
    XChaCha20Poly1305::new(key.into())
        .decrypt(&XNonce::from(nonce), Payload { msg, aad: ad })
        .ok()
        .map(Zeroizing::new)
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).expect("the operating system random source failed");
    out
}

fn wrap_key(shared: &[u8; 32], ephemeral: &[u8; 32], reader: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut material = Zeroizing::new([0u8; 96]);
    material[..32].copy_from_slice(shared);
    material[32..64].copy_from_slice(ephemeral);
    material[64..].copy_from_slice(reader);
    Zeroizing::new(blake3::derive_key(GRANT_CONTEXT, &*material))
}

fn grant_ad(origin: &NodeId, reader: &NodeId, epoch: u32) -> Vec<u8> {
    let mut ad = Vec::with_capacity(GRANT_AD_TAG.len() + 68);
    ad.extend_from_slice(GRANT_AD_TAG);
    ad.extend_from_slice(origin.as_bytes());
    ad.extend_from_slice(reader.as_bytes());
    ad.extend_from_slice(&epoch.to_be_bytes());
    ad
}

/// The associated data of a version 2 sealed body (see the module docs).
fn associated_data(origin: &NodeId, op: Op, epoch: u32, sealed_path: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AD_TAG.len() + 38 + sealed_path.len());
    ad.extend_from_slice(AD_TAG);
    ad.extend_from_slice(origin.as_bytes());
    ad.push(op.code());
    ad.push(SCHEME);
    ad.extend_from_slice(&epoch.to_be_bytes());
    ad.extend_from_slice(sealed_path.as_bytes());
    ad
}

/// The associated data of a version 1 sealed envelope (see the module docs).
fn associated_data_v1(origin: &NodeId, op: Op, epoch: u32, sealed_path: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AD_TAG_V1.len() + 37 + sealed_path.len());
    ad.extend_from_slice(AD_TAG_V1);
    ad.extend_from_slice(origin.as_bytes());
    ad.push(op.code());
    ad.extend_from_slice(&epoch.to_be_bytes());
    ad.extend_from_slice(sealed_path.as_bytes());
    ad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SealKey {
        SealKey::of_node(&NodeKey::from_seed([n; 32]))
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// `body` with its epoch replaced by `epoch`.
    fn relabelled(body: &[u8], epoch: u32) -> Vec<u8> {
        let mut out = body.to_vec();
        out[1..5].copy_from_slice(&epoch.to_be_bytes());
        out
    }

    #[test]
    fn content_keys_that_are_no_ring_are_refused_as_such() {
        let origin = NodeKey::from_seed([9; 32]).id();
        for keys in [&[][..], &[1u8; 33][..]] {
            let e = Ring::from_keys(origin, keys).unwrap_err();
            assert!(matches!(e, SealError::Keys(_)), "{e}");
            assert!(e.to_string().starts_with("the content keys are malformed"));
        }
        assert_eq!(Ring::from_keys(origin, &[1u8; 64]).unwrap().epochs(), 2);
    }

    #[test]
    fn a_sealed_put_opens_to_what_was_sealed_and_shows_neither() {
        let k = key(1);
        let path = "/buckets/diary/collections/days/records/r1";
        let body = br#"{"data":{"id":"r1","text":"a distinctive secret"},"permissions":{"read":["account:alice"]}}"#;
        let (sealed, sealed_body) = k.seal(Op::Put, path, body).unwrap();
        assert!(is_sealed(&sealed));
        assert_eq!(sealed.len(), SEALED_PREFIX.len() + 43);
        assert_eq!(sealed, k.sealed_path(path), "one sealed path per path");
        for secret in ["diary", "distinctive", "alice", "r1"] {
            assert!(
                !contains(&sealed_body, secret.as_bytes()) && !sealed.contains(secret),
                "{secret}"
            );
        }
        assert_eq!(sealed_body[0], SCHEME);
        assert_eq!(epoch_of(&sealed_body), Some(0));
        assert_eq!(
            sealed_body.len(),
            HEADER_LEN + 2 + path.len() + body.len() + TAG_LEN,
            "the documented size"
        );
        let plain = k.open(Op::Put, &sealed, &sealed_body).unwrap().unwrap();
        assert_eq!(plain.path, path);
        assert_eq!(plain.body, body);
        // Random nonces: the same change seals differently each time.
        assert_ne!(k.seal(Op::Put, path, body).unwrap().1, sealed_body);
    }

    #[test]
    fn a_sealed_entry_opens_only_in_its_place_and_with_its_key() {
        let k = key(1);
        let (sealed, body) = k.seal(Op::Delete, "/buckets/b", br#"{"data":{}}"#).unwrap();
        assert!(matches!(
            k.open(Op::Put, &sealed, &body),
            Err(SealError::Open)
        ));
        let other = k.sealed_path("/buckets/c");
        assert!(matches!(
            k.open(Op::Delete, &other, &body),
            Err(SealError::Open)
        ));
        assert!(matches!(
            key(2).open(Op::Delete, &sealed, &body),
            Err(SealError::Open)
        ));
        assert_ne!(
            key(2).sealed_path("/buckets/b"),
            sealed,
            "keyed by the origin"
        );
        for i in [HEADER_LEN - 1, HEADER_LEN + 3, body.len() - 1] {
            let mut flipped = body.clone();
            flipped[i] ^= 0x20;
            assert!(
                matches!(k.open(Op::Delete, &sealed, &flipped), Err(SealError::Open)),
                "byte {i}"
            );
        }
        assert!(matches!(
            k.open(Op::Delete, &sealed, &relabelled(&body, 7)),
            Err(SealError::UnknownEpoch { epoch: 7 })
        ));
        let mut scheme = body.clone();
        scheme[0] = 0x02;
        assert!(matches!(
            k.open(Op::Delete, &sealed, &scheme),
            Err(SealError::Envelope(_))
        ));
        assert!(matches!(
            k.open(Op::Delete, &sealed, &body[..HEADER_LEN + TAG_LEN]),
            Err(SealError::Envelope("too short"))
        ));
        assert_eq!(k.open(Op::Delete, &sealed, b"").unwrap(), None);
        assert_eq!(
            k.seal(Op::Delete, "/buckets/b", b"").unwrap(),
            (sealed, Vec::new())
        );
    }

    #[test]
    fn a_version_1_envelope_still_opens_and_does_not_pass_for_version_2() {
        let k = key(1);
        let path = "/buckets/b/collections/c/records/r";
        let body = br#"{"data":{"id":"r"}}"#;
        let (sealed, envelope) = k.seal_v1(Op::Put, path, body);
        assert_eq!(epoch_of(&envelope), Some(0));
        let plain = k.open(Op::Put, &sealed, &envelope).unwrap().unwrap();
        assert_eq!(
            (plain.path.as_str(), plain.body.as_slice()),
            (path, &body[..])
        );
        assert!(matches!(
            k.open(Op::Delete, &sealed, &envelope),
            Err(SealError::Open)
        ));
        // The same ciphertext framed as a version 2 body: other associated data, no opening.
        #[derive(serde::Deserialize)]
        struct Envelope {
            sealed: String,
        }
        let raw = serde_json::from_slice::<Envelope>(&envelope)
            .unwrap()
            .sealed;
        let mut reframed = vec![SCHEME, 0, 0, 0, 0];
        reframed.extend_from_slice(&URL_SAFE_NO_PAD.decode(raw).unwrap());
        assert!(matches!(
            k.open(Op::Put, &sealed, &reframed),
            Err(SealError::Open)
        ));
        // And a version 2 body is not a version 1 envelope either.
        let (_, binary) = k.seal(Op::Put, path, body).unwrap();
        let mut wrapped = b"{\"key\":0,\"sealed\":\"".to_vec();
        wrapped.extend_from_slice(URL_SAFE_NO_PAD.encode(&binary[1 + 4..]).as_bytes());
        wrapped.extend_from_slice(b"\"}");
        assert!(matches!(
            k.open(Op::Put, &sealed, &wrapped),
            Err(SealError::Open)
        ));
        // An entry opens only in the form of its version: an envelope in a version 2 entry,
        // or a binary body in a version 1 entry, is refused before any key is tried.
        let entry = |version, body: &[u8]| {
            let encode = if version == SEALED_ENTRY_VERSION {
                crate::feed::encode_sealed_entry
            } else {
                crate::feed::encode_entry
            };
            encode(
                crate::feed::Seq(1),
                crate::feed::EntryHash([0; 32]),
                1,
                Op::Put,
                &sealed,
                body,
            )
        };
        let ring = k.ring();
        let v1 = entry(crate::feed::ENTRY_VERSION, &envelope).unwrap();
        let v1 = crate::feed::decode_entry(&v1).unwrap();
        assert_eq!(ring.open_entry(&v1).unwrap().unwrap().path, path);
        let (_, binary) = k.seal(Op::Put, path, body).unwrap();
        let v2 = entry(SEALED_ENTRY_VERSION, &binary).unwrap();
        let v2 = crate::feed::decode_entry(&v2).unwrap();
        assert_eq!(ring.open_entry(&v2).unwrap().unwrap().path, path);
        let envelope_in_v2 = entry(SEALED_ENTRY_VERSION, &envelope).unwrap();
        let envelope_in_v2 = crate::feed::decode_entry(&envelope_in_v2).unwrap();
        assert!(matches!(
            ring.open_entry(&envelope_in_v2),
            Err(SealError::Envelope(_))
        ));
        // A version 1 entry's body must be JSON: a binary one is not even an entry there.
        assert!(entry(crate::feed::ENTRY_VERSION, &binary).is_err());
    }

    #[test]
    fn a_grant_opens_for_its_reader_only_and_a_later_epoch_stays_shut_to_a_removed_one() {
        let home = NodeKey::from_seed([1; 32]);
        let (laptop, other) = (NodeKey::from_seed([2; 32]), NodeKey::from_seed([3; 32]));
        let path = "/buckets/diary/collections/days/records/r1";
        let body = br#"{"data":{"id":"r1"}}"#;
        let at0 = SealKey::of_node(&home);
        let (sealed0, body0) = at0.seal(Op::Put, path, body).unwrap();
        let mut readers = Readers {
            epoch: 0,
            readers: [(laptop.id().to_string(), at0.grant(&laptop.id()).unwrap())].into(),
        };
        let statement = Readers::parse(&readers.to_body()).unwrap();
        assert_eq!(statement, readers);
        let ring = Ring::from_grant(home.id(), &statement, &laptop)
            .unwrap()
            .expect("granted");
        assert_eq!(ring.epochs(), 1);
        assert_eq!(
            ring.open(Op::Put, &sealed0, &body0).unwrap().unwrap().body,
            body
        );
        assert!(
            Ring::from_grant(home.id(), &statement, &other)
                .unwrap()
                .is_none(),
            "not named"
        );
        // A grant moved to another name, or another origin, does not open.
        let stolen = Readers {
            epoch: 0,
            readers: [(
                other.id().to_string(),
                readers.readers[&laptop.id().to_string()].clone(),
            )]
            .into(),
        };
        assert!(matches!(
            Ring::from_grant(home.id(), &stolen, &other),
            Err(SealError::Grant)
        ));
        assert!(matches!(
            Ring::from_grant(other.id(), &statement, &laptop),
            Err(SealError::Grant)
        ));
        // The laptop is removed: epoch 1, granted to the other node only.
        let at1 = SealKey::of_node_at(&home, 1);
        assert_eq!(
            at1.sealed_path(path),
            sealed0,
            "paths keep their sealed path"
        );
        let (sealed1, body1) = at1.seal(Op::Put, path, b"{\"data\":{\"v\":2}}").unwrap();
        assert_eq!(epoch_of(&body1), Some(1));
        readers = Readers {
            epoch: 1,
            readers: [(other.id().to_string(), at1.grant(&other.id()).unwrap())].into(),
        };
        assert!(
            Ring::from_grant(home.id(), &readers, &laptop)
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            ring.open(Op::Put, &sealed1, &body1),
            Err(SealError::UnknownEpoch { epoch: 1 })
        ));
        // Epoch 1's key is not epoch 0's relabelled: a forged label does not open either.
        assert!(matches!(
            ring.open(Op::Put, &sealed1, &relabelled(&body1, 0)),
            Err(SealError::Open)
        ));
        let ring1 = Ring::from_grant(home.id(), &readers, &other)
            .unwrap()
            .unwrap();
        assert_eq!(
            ring1.epochs(),
            2,
            "a reader reads every epoch up to its grant"
        );
        assert_eq!(
            ring1.open(Op::Put, &sealed0, &body0).unwrap().unwrap().body,
            body
        );
        assert!(ring1.open(Op::Put, &sealed1, &body1).unwrap().is_some());
        assert_eq!(
            at1.open(Op::Put, &sealed0, &body0).unwrap().unwrap().body,
            body
        );
        assert!(Readers::parse(b"{\"epoch\":1}").is_err());
        assert!(Readers::parse(b"[]").is_err());
    }
}
