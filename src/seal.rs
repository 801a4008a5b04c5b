//! Sealed entries: what a holder of a sealed origin sees instead of paths and bodies, and how
//! whoever holds the origin's keys turns it back. Pure: no I/O but the random source.
//!
//! A sealed entry is an ordinary entry (the encoding of [`crate::feed`], version 1), so that a
//! holder chains, verifies, compacts, snapshots and serves it with the code it uses for any
//! other: only its path and body differ.
//!
//! | field | plain entry | sealed entry |
//! |---|---|---|
//! | `op` | put or delete | the same |
//! | `path` | `/buckets/b/collections/c/records/r` | `/sealed/` · base64url(BLAKE3-keyed(path key, path)), 51 bytes |
//! | `body` | the object (put), its tombstone (delete), or nothing | `{"key":E,"sealed":"B"}`, or nothing when the plain body is empty |
//!
//! `B` is base64url (no padding) of `nonce (24 random bytes) · XChaCha20-Poly1305(content key
//! of epoch E, nonce, ad, plaintext)`, where
//!
//! ```text
//! plaintext = path length (u16, big-endian) · path · body
//! ad        = "tandem-sealed-v1" 0x00 · origin key (32) · op (1) · E (u32, big-endian) · sealed path
//! ```
//!
//! The associated data binds a ciphertext to its origin, its op and its sealed path, so that a
//! holder cannot move one to another place of a feed (it could not sign the result anyway).
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
//! Both keys of epoch 0 derive from the node key (BLAKE3 `derive_key`, one context string
//! each), so the node key alone — and so a key backup with its passphrase — opens the whole
//! feed. The path key never changes: a path keeps its sealed path for the life of the feed.
//! Content keys are numbered by epoch so that later keys can be told apart.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::feed::{MAX_BODY_LEN, MAX_PATH_LEN, Op};
use crate::identity::{NodeId, NodeKey};

/// Every sealed path starts with this; no source path does (Kinto's start with `/buckets`,
/// tandem's own statements with `/tandem/`).
pub const SEALED_PREFIX: &str = "/sealed/";

const AD_TAG: &[u8] = b"tandem-sealed-v1\0";
const CONTENT_CONTEXT: &str = "tandem 2026-12 sealed origin content key, epoch 0";
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
        "a sealed entry does not open with this node's key: it was sealed by another key, or altered"
    )]
    Open,
    /// The sealed form would exceed the entry limits.
    #[error("the object at {path} is too large to seal (its sealed form exceeds 64 MiB)")]
    TooLarge {
        /// The source path.
        path: String,
    },
}

/// The keys that seal and open one origin's entries. Not `Clone`; zeroized when dropped;
/// `Debug` shows nothing secret.
pub struct SealKey {
    origin: NodeId,
    path_key: Zeroizing<[u8; 32]>,
    content: Zeroizing<[u8; 32]>,
    epoch: u32,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKey")
            .field("origin", &self.origin)
            .field("epoch", &self.epoch)
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

impl SealKey {
    /// The keys of `key`'s own origin, epoch 0.
    pub fn of_node(key: &NodeKey) -> SealKey {
        let seed = key.seed();
        SealKey {
            origin: key.id(),
            path_key: Zeroizing::new(blake3::derive_key(PATH_CONTEXT, seed.as_ref())),
            content: Zeroizing::new(blake3::derive_key(CONTENT_CONTEXT, seed.as_ref())),
            epoch: 0,
        }
    }

    /// The origin these keys belong to.
    pub fn origin(&self) -> NodeId {
        self.origin
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
        if body.is_empty() {
            return Ok((sealed, Vec::new()));
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
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system random source failed");
        let ad = associated_data(&self.origin, op, self.epoch, &sealed);
        let ciphertext = XChaCha20Poly1305::new((&*self.content).into())
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &plaintext,
                    aad: &ad,
                },
            )
            .map_err(|_| too_large())?;
        let mut raw = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ciphertext);
        let mut out = format!("{{\"key\":{},\"sealed\":\"", self.epoch).into_bytes();
        out.reserve(raw.len().div_ceil(3) * 4 + 2);
        let mut text = String::new();
        URL_SAFE_NO_PAD.encode_string(&raw, &mut text);
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\"}");
        if out.len() > MAX_BODY_LEN {
            return Err(too_large());
        }
        Ok((sealed, out))
    }

    /// Opens a sealed entry's body. `None` for an empty body (a delete without one: its path is
    /// known from the entries before it).
    pub fn open(&self, op: Op, sealed_path: &str, body: &[u8]) -> Result<Option<Plain>, SealError> {
        if body.is_empty() {
            return Ok(None);
        }
        #[derive(serde::Deserialize)]
        struct Envelope<'a> {
            key: u32,
            #[serde(borrow)]
            sealed: &'a str,
        }
        let envelope: Envelope<'_> = serde_json::from_slice(body)
            .map_err(|_| SealError::Envelope("not {\"key\", \"sealed\"}"))?;
        if envelope.key != self.epoch {
            return Err(SealError::UnknownEpoch {
                epoch: envelope.key,
            });
        }
        let raw = URL_SAFE_NO_PAD
            .decode(envelope.sealed)
            .map_err(|_| SealError::Envelope("not base64url"))?;
        if raw.len() < NONCE_LEN + TAG_LEN + 2 {
            return Err(SealError::Envelope("too short"));
        }
        let ad = associated_data(&self.origin, op, envelope.key, sealed_path);
        let plaintext = Zeroizing::new(
            XChaCha20Poly1305::new((&*self.content).into())
                .decrypt(
                    &XNonce::from(
                        <[u8; NONCE_LEN]>::try_from(&raw[..NONCE_LEN]).expect("checked length"),
                    ),
                    Payload {
                        msg: &raw[NONCE_LEN..],
                        aad: &ad,
                    },
                )
                .map_err(|_| SealError::Open)?,
        );
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
}

fn associated_data(origin: &NodeId, op: Op, epoch: u32, sealed_path: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AD_TAG.len() + 37 + sealed_path.len());
    ad.extend_from_slice(AD_TAG);
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

    #[test]
    fn a_sealed_put_opens_to_what_was_sealed_and_shows_neither() {
        let k = key(1);
        let path = "/buckets/diary/collections/days/records/r1";
        let body = br#"{"data":{"id":"r1","text":"a distinctive secret"},"permissions":{"read":["account:alice"]}}"#;
        let (sealed, sealed_body) = k.seal(Op::Put, path, body).unwrap();
        assert!(is_sealed(&sealed));
        assert_eq!(sealed.len(), SEALED_PREFIX.len() + 43);
        assert_eq!(sealed, k.sealed_path(path), "one sealed path per path");
        let text = String::from_utf8(sealed_body.clone()).unwrap();
        for secret in ["diary", "distinctive", "alice", "r1"] {
            assert!(
                !text.contains(secret) && !sealed.contains(secret),
                "{secret}"
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&sealed_body).unwrap();
        assert!(v.is_object(), "a holder's checks need a JSON object");
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
        let mut flipped = body.clone();
        let i = flipped.len() - 5;
        flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
        assert!(k.open(Op::Delete, &sealed, &flipped).is_err());
        let later = String::from_utf8(body.clone())
            .unwrap()
            .replacen("\"key\":0", "\"key\":7", 1)
            .into_bytes();
        assert!(matches!(
            k.open(Op::Delete, &sealed, &later),
            Err(SealError::UnknownEpoch { epoch: 7 })
        ));
        assert_eq!(k.open(Op::Delete, &sealed, b"").unwrap(), None);
        assert_eq!(
            k.seal(Op::Delete, "/buckets/b", b"").unwrap(),
            (sealed, Vec::new())
        );
    }
}
