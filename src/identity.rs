//! Node identity: the ed25519 key pair that names a node and signs everything it states.
//!
//! A node id is the public key in text form, `ed25519:<base64url without padding>` (43
//! characters after the prefix). The secret key lives in its own file, mode 0600, as an
//! unencrypted PKCS#8 v1 PEM (`-----BEGIN PRIVATE KEY-----`), the form OpenSSL reads:
//! `openssl pkey -in node.key -pubout` prints the matching public key.
//!
//! [`NodeKey`] deliberately has no `Clone`, no `Serialize` and a redacted `Debug`: the secret
//! cannot leak through a log line or a copy left behind. The underlying key is zeroized on drop.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Prefix of the textual node id.
const NODE_ID_PREFIX: &str = "ed25519:";

/// DER prefix of a PKCS#8 v1 `PrivateKeyInfo` holding an Ed25519 seed (RFC 8410): the 32-byte
/// seed follows it directly. Every Ed25519 key file has exactly this 16-byte prefix.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Errors about node ids and key files.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A node id that does not parse.
    #[error("invalid node id {text:?}: {why} (expected ed25519:<43 base64url characters>)")]
    BadNodeId {
        /// The offending text (a public key: safe to show).
        text: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The key file is missing.
    #[error("no node key at {path}; run `tandem init` to create one")]
    KeyMissing {
        /// Where the key was expected.
        path: PathBuf,
    },
    /// The key file is gone but the store it signed for is still there.
    #[error(
        "no node key at {path}, but the store beside it belongs to node {owner}; put that node's key file back (a new key would be a different node)"
    )]
    KeyLost {
        /// Where the key was expected.
        path: PathBuf,
        /// The node id the store records.
        owner: String,
    },
    /// The key file is readable or writable by someone other than its owner.
    #[error("node key {path} has mode {mode:04o}, open to group or others; run `chmod 600 {path}`")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file exists but is not an Ed25519 PKCS#8 PEM.
    #[error("node key {path} is not a valid ed25519 key file: {why}")]
    KeyMalformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong (never includes key material).
        why: &'static str,
    },
    /// Refusing to replace an existing key.
    #[error("a node key already exists at {path}; refusing to overwrite it")]
    KeyExists {
        /// The existing key file.
        path: PathBuf,
    },
    /// An I/O error on a key file.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The public identity of a node: its ed25519 verifying key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Builds a node id from raw public key bytes, rejecting invalid and weak (small-order) keys.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, &'static str> {
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid ed25519 point")?;
        if key.is_weak() {
            return Err("weak (small-order) public key");
        }
        Ok(NodeId(bytes))
    }

    /// The raw 32 public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// This key as an X25519 public key (the birational map of the ed25519 point), so that a
    /// secret can be wrapped to a node knowing only its id (see `crate::seal`'s grants). `None`
    /// for an id that is not a valid point.
    pub(crate) fn x25519_public(&self) -> Option<[u8; 32]> {
        VerifyingKey::from_bytes(&self.0)
            .ok()
            .map(|k| k.to_montgomery().to_bytes())
    }

    /// Verifies `signature` over `message` with this key, in strict mode (no malleable or
    /// small-order signatures).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        match VerifyingKey::from_bytes(&self.0) {
            Ok(key) => key
                .verify_strict(message, &Signature::from_bytes(signature))
                .is_ok(),
            Err(_) => false,
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{NODE_ID_PREFIX}{}", URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = IdentityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why| IdentityError::BadNodeId {
            text: text.chars().take(80).collect(),
            why,
        };
        let b64 = text
            .strip_prefix(NODE_ID_PREFIX)
            .ok_or_else(|| bad("missing the ed25519: prefix"))?;
        let raw = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| bad("not base64url without padding"))?;
        let bytes: [u8; 32] = raw.try_into().map_err(|_| bad("not 32 bytes long"))?;
        NodeId::from_bytes(bytes).map_err(bad)
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The secret half of a node identity. Not `Clone`, not `Serialize`; `Debug` shows only the id.
pub struct NodeKey {
    signing: SigningKey,
}

impl NodeKey {
    /// Generates a fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).expect("the operating system random source failed");
        NodeKey {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// Builds a key from a 32-byte seed (tests and benchmarks use fixed seeds).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        NodeKey {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The public id of this key.
    pub fn id(&self) -> NodeId {
        NodeId(self.signing.verifying_key().to_bytes())
    }

    /// The 32-byte secret seed, for the one module that stores the key encrypted elsewhere
    /// ([`crate::keybackup`]). Zeroized when dropped.
    pub(crate) fn seed(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.signing.to_bytes())
    }

    /// X25519 key agreement between this key (its ed25519 scalar, as age's and libsodium's
    /// conversions take it) and the X25519 public key `their`. `None` when the result is the
    /// all-zero point (`their` is of small order). Using one key for both signing and this
    /// agreement is shown safe in "On using the same key pair for Ed25519 and an X25519 based
    /// KEM" (Thormarker, 2021).
    pub(crate) fn agree(&self, their: [u8; 32]) -> Option<zeroize::Zeroizing<[u8; 32]>> {
        let scalar = zeroize::Zeroizing::new(self.signing.to_scalar_bytes());
        let shared = curve25519_dalek::MontgomeryPoint(their).mul_clamped(*scalar);
        let shared = zeroize::Zeroizing::new(shared.to_bytes());
        (*shared != [0u8; 32]).then_some(shared)
    }

    /// Signs `message`. Callers pass a domain-separated signing input (see `feed`).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// Loads the key at `path`, refusing files open to group or others.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let io = |action, source| IdentityError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        let meta = match fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IdentityError::KeyMissing {
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(io("cannot read", e)),
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::KeyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text =
            zeroize::Zeroizing::new(fs::read_to_string(path).map_err(|e| io("cannot read", e))?);
        Self::from_pem(&text).map_err(|why| IdentityError::KeyMalformed {
            path: path.to_owned(),
            why,
        })
    }

    /// Creates a new key file at `path` (mode 0600), never replacing an existing one. The file
    /// appears complete or not at all: it is written to a temporary name, synced, then linked
    /// into place (which fails if the name is taken).
    pub fn create(path: &Path) -> Result<Self, IdentityError> {
        if path.exists() {
            return Err(IdentityError::KeyExists {
                path: path.to_owned(),
            });
        }
        let key = Self::generate();
        key.write_new(path)?;
        Ok(key)
    }

    /// Writes this key to a new file at `path` (mode 0600), refusing to overwrite.
    pub fn write_new(&self, path: &Path) -> Result<(), IdentityError> {
        let io = |action, source| IdentityError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        crate::atomic::write_atomic(path, 0o600, crate::atomic::Existing::Keep, |file| {
            file.write_all(self.to_pem().as_bytes())
        })
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                IdentityError::KeyExists {
                    path: path.to_owned(),
                }
            } else {
                io("cannot write", e)
            }
        })
    }

    fn to_pem(&self) -> zeroize::Zeroizing<String> {
        let mut der = zeroize::Zeroizing::new(Vec::with_capacity(48));
        der.extend_from_slice(&PKCS8_ED25519_PREFIX);
        der.extend_from_slice(self.signing.as_bytes());
        let b64 = zeroize::Zeroizing::new(STANDARD.encode(&*der));
        zeroize::Zeroizing::new(format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            &*b64
        ))
    }

    fn from_pem(text: &str) -> Result<Self, &'static str> {
        let body: String = text
            .trim()
            .strip_prefix("-----BEGIN PRIVATE KEY-----")
            .and_then(|rest| rest.strip_suffix("-----END PRIVATE KEY-----"))
            .ok_or("missing the PRIVATE KEY PEM armor")?
            .split_whitespace()
            .collect();
        let body = zeroize::Zeroizing::new(body);
        let der =
            zeroize::Zeroizing::new(STANDARD.decode(body.as_bytes()).map_err(|_| "bad base64")?);
        if der.len() != 48 || der[..16] != PKCS8_ED25519_PREFIX {
            return Err("not a PKCS#8 v1 ed25519 private key");
        }
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&der[16..]);
        Ok(Self::from_seed(*seed))
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({}, secret redacted)", self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_round_trips_and_rejects_garbage() {
        let key = NodeKey::from_seed([7; 32]);
        let text = key.id().to_string();
        assert!(text.starts_with("ed25519:"));
        assert_eq!(text.len(), "ed25519:".len() + 43);
        assert_eq!(text.parse::<NodeId>().unwrap(), key.id());
        for bad in [
            "",
            "ed25519:",
            "rsa:AAAA",
            &text[..text.len() - 1],
            &format!("{text}A"),
            &format!("{text}="),
        ] {
            assert!(bad.parse::<NodeId>().is_err(), "accepted {bad:?}");
        }
        // The identity point (a small-order key) is refused.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(NodeId::from_bytes(identity).is_err());
    }

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let key = NodeKey::from_seed([1; 32]);
        let other = NodeKey::from_seed([2; 32]);
        let sig = key.sign(b"hello");
        assert!(key.id().verify(b"hello", &sig));
        assert!(!key.id().verify(b"hellO", &sig));
        assert!(!other.id().verify(b"hello", &sig));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = NodeKey::from_seed([9; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains("redacted"));
        let pem = key.to_pem();
        let b64_line = pem.lines().nth(1).unwrap();
        assert!(!shown.contains(b64_line));
        assert!(!shown.contains(&URL_SAFE_NO_PAD.encode([9u8; 32])));
    }

    #[test]
    fn key_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = NodeKey::create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(NodeKey::load(&path).unwrap().id(), key.id());
        assert!(matches!(
            NodeKey::create(&path),
            Err(IdentityError::KeyExists { .. })
        ));
        assert_eq!(NodeKey::load(&path).unwrap().id(), key.id());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = NodeKey::load(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(matches!(
            NodeKey::load(&path),
            Err(IdentityError::KeyMalformed { .. })
        ));
    }

    #[test]
    fn pem_matches_the_rfc_8410_layout() {
        // RFC 8410 section 10.3 example private key and its public key.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let key = NodeKey::from_pem(pem).unwrap();
        let expected = STANDARD
            .decode("Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=")
            .unwrap();
        assert_eq!(key.id().as_bytes().as_slice(), expected.as_slice());
        assert_eq!(key.to_pem().as_str(), pem);
    }
}
