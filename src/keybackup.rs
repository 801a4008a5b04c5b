//! The node key kept at peers under a passphrase: the key derivation, the sealed blob, the
//! proof that fetches it back, and their wire forms. Pure: no I/O but the random source, no
//! clock (callers pass the time).
//!
//! A node that loses everything — disk, key, configuration — comes back with three things its
//! operator kept: a passphrase, its node id and the URL of a peer. `tandem key backup` stores
//! the node key encrypted under the passphrase at the peers that hold the node's feed;
//! `tandem recover` fetches it from one of them, decrypts it, and the node recovers its feed as
//! after `tandem init --existing-key`.
//!
//! ## Format, version 1
//!
//! ```text
//! salt      = "tandem key backup" || 0x00 || version (u16, big-endian) || node id (32 bytes)
//! master    = Argon2id(passphrase, salt; m = 256 MiB, t = 4, p = 1; 64 bytes)
//! enc key   = BLAKE3 derive_key("tandem 2026 key backup encryption key", master)
//! auth seed = BLAKE3 derive_key("tandem 2026 key backup fetch key", master)
//! fetch key = the ed25519 key whose seed is the auth seed
//! ad        = "tandem key backup" || 0x00 || version || node id
//! blob      = nonce (24 random bytes) || XChaCha20-Poly1305(enc key, nonce, ad, node key seed)
//!             (24 + 32 + 16 = 72 bytes)
//! ```
//!
//! A holder stores `(version, fetch public key, blob)` and hands the blob only to a request
//! that proves it knows the passphrase: an ed25519 signature by the fetch key over
//! `"tandem-key-backup-fetch-v1" || 0x00 || version || node id || created (i64, big-endian,
//! Unix seconds) || nonce (16 bytes)`, with `created` close to the holder's clock and each
//! nonce accepted once. The passphrase, the master key and the encryption key never leave the
//! client; the fetch key's public half and the proofs tell nothing about them beyond what
//! the blob itself lets a holder try offline, one Argon2id evaluation per guess.
//!
//! ## The cost is fixed by the version, and chosen by the client only
//!
//! The Argon2id parameters are constants of a format version ([`V1`]), not fields of the blob:
//! a client derives its keys (and the proof) before it asks a holder anything, with the
//! parameters of the version it makes, and never with parameters a holder names. A malicious
//! holder serving "cheap parameters" would otherwise obtain a proof (a signature by a key
//! derived from the passphrase) that it could attack offline at that cheap cost. A later
//! version with other parameters gets another number, which the salt and the associated data
//! bind.
//!
//! [`TEST`], a cost of milliseconds, exists only in debug builds (`cfg(debug_assertions)`)
//! and unit tests: a release binary has no code path that derives keys at a lower cost than
//! [`V1`], whatever its environment or a server says. The command line selects it in a debug
//! build when [`TEST_KDF_ENV`] is `1` (the integration tests do, so that they run in
//! seconds); its blobs carry another version number, so that neither kind opens the other.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::identity::{NodeId, NodeKey};

/// Argon2id parameters, fixed by a format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kdf {
    /// The format version these parameters belong to (bound into the salt, the associated
    /// data and every proof).
    pub version: u16,
    /// Memory, in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub lanes: u32,
}

/// Version 1: Argon2id with 256 MiB, 4 passes, 1 lane: about 1.3 s on one core of the
/// project's build machine (see docs/recovery.md for the measurement), and 256 MiB of memory,
/// per guess, for whoever tries passphrases against a blob.
pub const V1: Kdf = Kdf {
    version: 1,
    memory_kib: 256 * 1024,
    iterations: 4,
    lanes: 1,
};

/// Test-only parameters (64 KiB, 1 pass): milliseconds. Not in release builds (see the module
/// documentation); blobs made with them carry version 65535, which no release opens.
#[cfg(any(test, debug_assertions))]
pub const TEST: Kdf = Kdf {
    version: u16::MAX,
    memory_kib: 64,
    iterations: 1,
    lanes: 1,
};

/// The environment variable that makes a debug build of the command line use [`TEST`].
/// Read by nothing in a release build.
pub const TEST_KDF_ENV: &str = "TANDEM_INSECURE_TEST_KDF";

/// The parameters the command line derives with: [`V1`], or in a debug build [`TEST`] when
/// [`TEST_KDF_ENV`] is `1`.
pub fn client_kdf() -> Kdf {
    #[cfg(debug_assertions)]
    if std::env::var_os(TEST_KDF_ENV).is_some_and(|v| v == "1") {
        return TEST;
    }
    V1
}

/// Length of the XChaCha20-Poly1305 nonce at the head of a blob.
pub const NONCE_LEN: usize = 24;
/// Length of a blob of any version so far: nonce, sealed seed, tag.
pub const BLOB_LEN: usize = NONCE_LEN + 32 + 16;
/// Largest blob a holder stores (room for later versions; this one is [`BLOB_LEN`]).
pub const MAX_BLOB: usize = 256;
/// Largest upload body a holder reads.
pub const MAX_UPLOAD_BODY: usize = 1024;
/// Largest fetch request body a holder reads.
pub const MAX_FETCH_BODY: usize = 512;
/// How far a proof's `created` may be from the holder's clock, in seconds.
pub const PROOF_WINDOW_SECS: i64 = 120;
/// Length of a proof's nonce, in bytes.
pub const PROOF_NONCE_LEN: usize = 16;

/// The error text of a holder's uniform refusal of a fetch (no backup for the id, or a proof
/// that does not open it: a stranger is not told which).
pub const NO_BACKUP: &str = "no key backup here that this proof opens: the node id or the passphrase is wrong, or no backup was stored here";

const TAG: &[u8] = b"tandem key backup\0";
const ENC_CONTEXT: &str = "tandem 2026 key backup encryption key";
const FETCH_CONTEXT: &str = "tandem 2026 key backup fetch key";
const PROOF_TAG: &[u8] = b"tandem-key-backup-fetch-v1\0";

/// Why a blob did not give back a node key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyBackupError {
    /// The blob fails authentication under the key the passphrase gives: it was changed.
    #[error(
        "the key backup does not decrypt: its copy at the holder was altered or damaged (the holder accepted the proof, so the passphrase is right); fetch it from another peer that holds this node's feed"
    )]
    Tampered,
    /// The blob decrypts to the key of another node.
    #[error("the key backup holds the key of node {found}, not of {expected}; check the node id")]
    WrongNode {
        /// The id asked for.
        expected: NodeId,
        /// The id of the key found.
        found: NodeId,
    },
    /// The blob is not of the version this client derived its keys for.
    #[error(
        "the key backup is of format version {found}, this tandem makes and reads version {expected}; use a tandem release that knows version {found}"
    )]
    Version {
        /// Ours.
        expected: u16,
        /// The holder's.
        found: u16,
    },
    /// The blob or a field of a wire document has the wrong shape.
    #[error("malformed key backup: {0}")]
    Malformed(&'static str),
}

/// The keys a passphrase gives for one node: the encryption key of its blob and the fetch
/// key that proves the passphrase to a holder. Not `Clone`; `Debug` shows nothing secret.
pub struct BackupKeys {
    kdf: Kdf,
    node: NodeId,
    enc: Zeroizing<[u8; 32]>,
    fetch: SigningKey,
}

impl std::fmt::Debug for BackupKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BackupKeys(node {}, version {}, secret redacted)",
            self.node, self.kdf.version
        )
    }
}

fn binding(version: u16, node: NodeId) -> Vec<u8> {
    let mut out = Vec::with_capacity(TAG.len() + 2 + 32);
    out.extend_from_slice(TAG);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(node.as_bytes());
    out
}

impl BackupKeys {
    /// Derives the keys of `node`'s backup from `passphrase` with `kdf` (about a second and
    /// 256 MiB with [`V1`]: run it off async workers).
    pub fn derive(kdf: Kdf, passphrase: &[u8], node: NodeId) -> BackupKeys {
        let params = argon2::Params::new(kdf.memory_kib, kdf.iterations, kdf.lanes, Some(64))
            .expect("the parameters of a format version are valid");
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut master = Zeroizing::new([0u8; 64]);
        argon
            .hash_password_into(passphrase, &binding(kdf.version, node), master.as_mut())
            .expect("a salt of 52 bytes and an output of 64 are within Argon2's bounds");
        let enc = Zeroizing::new(blake3::derive_key(ENC_CONTEXT, master.as_ref()));
        let seed = Zeroizing::new(blake3::derive_key(FETCH_CONTEXT, master.as_ref()));
        BackupKeys {
            kdf,
            node,
            enc,
            fetch: SigningKey::from_bytes(&seed),
        }
    }

    /// The format version the keys were derived for.
    pub fn version(&self) -> u16 {
        self.kdf.version
    }

    /// The public half of the fetch key, stored beside the blob.
    pub fn fetch_public(&self) -> [u8; 32] {
        self.fetch.verifying_key().to_bytes()
    }

    /// Seals `key` (which must be this node's) into a blob, under a fresh random nonce.
    pub fn seal(&self, key: &NodeKey) -> Vec<u8> {
        assert_eq!(key.id(), self.node, "sealing another node's key");
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system random source failed");
        let cipher = XChaCha20Poly1305::new((&*self.enc).into());
        let ad = binding(self.kdf.version, self.node);
        let seed = key.seed();
        let sealed = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: seed.as_ref(),
                    aad: &ad,
                },
            )
            .expect("32 bytes are within XChaCha20-Poly1305's bounds");
        let mut blob = Vec::with_capacity(BLOB_LEN);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        blob
    }

    /// Opens `blob`, a backup of version `version`: the node key, checked to be the key of the
    /// node these keys were derived for.
    pub fn open(&self, version: u16, blob: &[u8]) -> Result<NodeKey, KeyBackupError> {
        if version != self.kdf.version {
            return Err(KeyBackupError::Version {
                expected: self.kdf.version,
                found: version,
            });
        }
        if blob.len() != BLOB_LEN {
            return Err(KeyBackupError::Malformed("a blob of version 1 is 72 bytes"));
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at the nonce's length");
        let cipher = XChaCha20Poly1305::new((&*self.enc).into());
        let ad = binding(self.kdf.version, self.node);
        let seed = Zeroizing::new(
            cipher
                .decrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: sealed,
                        aad: &ad,
                    },
                )
                .map_err(|_| KeyBackupError::Tampered)?,
        );
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            seed.as_slice()
                .try_into()
                .map_err(|_| KeyBackupError::Malformed("the sealed seed is not 32 bytes"))?,
        );
        let key = NodeKey::from_seed(*seed);
        if key.id() != self.node {
            return Err(KeyBackupError::WrongNode {
                expected: self.node,
                found: key.id(),
            });
        }
        Ok(key)
    }

    /// A fetch request for this node's backup, made at `created` (Unix seconds) with a fresh
    /// random nonce.
    pub fn fetch_request(&self, created: i64) -> FetchDoc {
        let mut nonce = [0u8; PROOF_NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system random source failed");
        let proof = self
            .fetch
            .sign(&proof_message(self.kdf.version, self.node, created, &nonce));
        FetchDoc {
            created,
            nonce: URL_SAFE_NO_PAD.encode(nonce),
            proof: URL_SAFE_NO_PAD.encode(proof.to_bytes()),
        }
    }
}

/// What a fetch proof signs.
fn proof_message(
    version: u16,
    node: NodeId,
    created: i64,
    nonce: &[u8; PROOF_NONCE_LEN],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(PROOF_TAG.len() + 2 + 32 + 8 + PROOF_NONCE_LEN);
    out.extend_from_slice(PROOF_TAG);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(node.as_bytes());
    out.extend_from_slice(&created.to_be_bytes());
    out.extend_from_slice(nonce);
    out
}

/// Whether `proof` is the fetch key `fetch_public`'s signature over a fetch of `node`'s
/// backup of `version`, made at `created` with `nonce` (strict ed25519; a weak or invalid
/// public key verifies nothing). The caller checks `created` against its clock and that the
/// nonce is new.
pub fn verify_proof(
    fetch_public: &[u8; 32],
    version: u16,
    node: NodeId,
    created: i64,
    nonce: &[u8; PROOF_NONCE_LEN],
    proof: &[u8; 64],
) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(fetch_public) else {
        return false;
    };
    !key.is_weak()
        && key
            .verify_strict(
                &proof_message(version, node, created, nonce),
                &Signature::from_bytes(proof),
            )
            .is_ok()
}

/// Whether `key` can serve as a fetch public key: a valid ed25519 point, not of small order.
pub fn valid_fetch_key(key: &[u8; 32]) -> bool {
    VerifyingKey::from_bytes(key).is_ok_and(|k| !k.is_weak())
}

/// Why a passphrase is refused, when it is: zxcvbn's score (0 to 4; 3 is needed), its warning
/// and its suggestions, in one message that says what to do.
pub fn weakness(passphrase: &str, context: &[&str]) -> Option<String> {
    let estimate = zxcvbn::zxcvbn(passphrase, context);
    let score = u8::from(estimate.score());
    if score >= 3 {
        return None;
    }
    let mut message = format!(
        "this passphrase is too weak (strength {score} of 4, 3 needed): anyone who gets the encrypted key from a peer can try about {} guesses before finding it",
        format_guesses(estimate.guesses())
    );
    if let Some(feedback) = estimate.feedback() {
        if let Some(warning) = feedback.warning() {
            message.push_str(&format!("; {warning}"));
        }
        for suggestion in feedback.suggestions() {
            message.push_str(&format!("; {suggestion}"));
        }
    }
    message.push_str(
        "; choose a longer one, for example five or six random words that you can write down and keep offline",
    );
    Some(message)
}

fn format_guesses(guesses: u64) -> String {
    match guesses {
        0..1_000 => guesses.to_string(),
        _ => format!("10^{}", (guesses as f64).log10().floor() as u32),
    }
}

/// `PUT /v1/origins/{id}/key-backup`: what a node stores at a holder.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadDoc {
    /// The format version.
    pub version: u16,
    /// The fetch public key, base64url.
    pub fetch_key: String,
    /// The blob, base64url.
    pub blob: String,
}

/// `POST /v1/key-backup/{id}`: a fetch request, with its proof.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchDoc {
    /// When the proof was made, Unix seconds.
    pub created: i64,
    /// 16 random bytes, base64url: a holder accepts each once.
    pub nonce: String,
    /// The fetch key's signature, base64url.
    pub proof: String,
}

/// The answer to a fetch with a valid proof.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct BackupDoc {
    /// The format version.
    pub version: u16,
    /// The node whose key it is.
    pub origin: NodeId,
    /// The node that answered (its id, as its `[[peer]]` entry needs it).
    pub holder: NodeId,
    /// The fetch public key stored with the blob, base64url.
    pub fetch_key: String,
    /// The blob, base64url.
    pub blob: String,
}

/// Decodes base64url (no padding) into exactly `N` bytes.
pub fn decode_fixed<const N: usize>(
    text: &str,
    what: &'static str,
) -> Result<[u8; N], KeyBackupError> {
    decode_bounded(text, N, what)?
        .try_into()
        .map_err(|_| KeyBackupError::Malformed(what))
}

/// Decodes base64url (no padding) of at most `max` bytes.
pub fn decode_bounded(
    text: &str,
    max: usize,
    what: &'static str,
) -> Result<Vec<u8>, KeyBackupError> {
    if text.len() > max.div_ceil(3) * 4 {
        return Err(KeyBackupError::Malformed(what));
    }
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .filter(|b| b.len() <= max)
        .ok_or(KeyBackupError::Malformed(what))
}

/// Encodes bytes as base64url without padding (the wire form of keys, blobs and proofs).
pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(seed: u8) -> NodeKey {
        NodeKey::from_seed([seed; 32])
    }

    #[test]
    fn a_blob_opens_with_the_passphrase_it_was_sealed_under() {
        let key = node(1);
        let keys = BackupKeys::derive(TEST, b"correct horse battery staple", key.id());
        let blob = keys.seal(&key);
        assert_eq!(blob.len(), BLOB_LEN);
        // The same passphrase, derived again (as on a new machine), opens it.
        let again = BackupKeys::derive(TEST, b"correct horse battery staple", key.id());
        assert_eq!(again.fetch_public(), keys.fetch_public());
        let opened = again.open(TEST.version, &blob).unwrap();
        assert_eq!(opened.id(), key.id());
        assert_eq!(*opened.seed(), *key.seed());
        // Two seals of one key differ (fresh nonces) and both open.
        let other = keys.seal(&key);
        assert_ne!(other, blob);
        assert_eq!(keys.open(TEST.version, &other).unwrap().id(), key.id());
    }

    #[test]
    fn another_passphrase_gives_other_keys_and_does_not_open() {
        let key = node(2);
        let keys = BackupKeys::derive(TEST, b"correct horse battery staple", key.id());
        let wrong = BackupKeys::derive(TEST, b"correct horse battery stapler", key.id());
        assert_ne!(wrong.fetch_public(), keys.fetch_public());
        let blob = keys.seal(&key);
        assert_eq!(
            wrong.open(TEST.version, &blob).unwrap_err(),
            KeyBackupError::Tampered
        );
    }

    #[test]
    fn the_node_id_is_bound_a_blob_for_one_id_does_not_open_for_another() {
        let (a, b) = (node(3), node(4));
        let pass = b"one passphrase for two nodes";
        let keys_a = BackupKeys::derive(TEST, pass, a.id());
        let keys_b = BackupKeys::derive(TEST, pass, b.id());
        // The salt holds the id: one passphrase gives each node its own keys.
        assert_ne!(keys_a.fetch_public(), keys_b.fetch_public());
        let blob = keys_a.seal(&a);
        assert_eq!(
            keys_b.open(TEST.version, &blob).unwrap_err(),
            KeyBackupError::Tampered
        );
        // Even with the encryption key of A, the associated data names A: a blob whose
        // associated data named B does not open as A's.
        let cipher = XChaCha20Poly1305::new((&*keys_a.enc).into());
        let nonce = [9u8; NONCE_LEN];
        let sealed = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: a.seed().as_ref(),
                    aad: &binding(TEST.version, b.id()),
                },
            )
            .unwrap();
        let forged = [nonce.as_slice(), &sealed].concat();
        assert_eq!(
            keys_a.open(TEST.version, &forged).unwrap_err(),
            KeyBackupError::Tampered
        );
    }

    #[test]
    fn the_version_is_bound_and_checked() {
        let key = node(5);
        let keys = BackupKeys::derive(TEST, b"pass", key.id());
        let blob = keys.seal(&key);
        assert!(matches!(
            keys.open(1, &blob),
            Err(KeyBackupError::Version { expected, found: 1 }) if expected == TEST.version
        ));
        // The version is in the associated data too: the same keys with another version in
        // the AD refuse the blob.
        let relabelled = BackupKeys {
            kdf: Kdf { version: 7, ..TEST },
            node: key.id(),
            enc: Zeroizing::new(*keys.enc),
            fetch: SigningKey::from_bytes(&keys.fetch.to_bytes()),
        };
        assert_eq!(
            relabelled.open(7, &blob).unwrap_err(),
            KeyBackupError::Tampered
        );
    }

    #[test]
    fn a_changed_byte_anywhere_in_the_blob_is_tampering() {
        let key = node(6);
        let keys = BackupKeys::derive(TEST, b"pass", key.id());
        let blob = keys.seal(&key);
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                keys.open(TEST.version, &bad).unwrap_err(),
                KeyBackupError::Tampered,
                "byte {i}"
            );
        }
        assert!(matches!(
            keys.open(TEST.version, &blob[..BLOB_LEN - 1]),
            Err(KeyBackupError::Malformed(_))
        ));
    }

    #[test]
    fn a_blob_holding_another_nodes_key_is_refused() {
        // A blob sealed under A's keys and binding but holding B's seed (what only a holder
        // that knows the passphrase, or a bug, could make).
        let (a, b) = (node(7), node(8));
        let keys = BackupKeys::derive(TEST, b"pass", a.id());
        let cipher = XChaCha20Poly1305::new((&*keys.enc).into());
        let nonce = [1u8; NONCE_LEN];
        let sealed = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: b.seed().as_ref(),
                    aad: &binding(TEST.version, a.id()),
                },
            )
            .unwrap();
        let blob = [nonce.as_slice(), &sealed].concat();
        assert_eq!(
            keys.open(TEST.version, &blob).unwrap_err(),
            KeyBackupError::WrongNode {
                expected: a.id(),
                found: b.id()
            }
        );
    }

    #[test]
    fn a_proof_verifies_only_for_its_key_node_version_time_and_nonce() {
        let (a, b) = (node(9), node(10));
        let keys = BackupKeys::derive(TEST, b"pass", a.id());
        let fetch = keys.fetch_public();
        let doc = keys.fetch_request(1_000);
        let nonce: [u8; 16] = decode_fixed(&doc.nonce, "nonce").unwrap();
        let proof: [u8; 64] = decode_fixed(&doc.proof, "proof").unwrap();
        let v = TEST.version;
        assert!(verify_proof(&fetch, v, a.id(), 1_000, &nonce, &proof));
        assert!(!verify_proof(&fetch, v, b.id(), 1_000, &nonce, &proof));
        assert!(!verify_proof(&fetch, v, a.id(), 1_001, &nonce, &proof));
        assert!(!verify_proof(&fetch, 1, a.id(), 1_000, &nonce, &proof));
        let mut other_nonce = nonce;
        other_nonce[0] ^= 1;
        assert!(!verify_proof(
            &fetch,
            v,
            a.id(),
            1_000,
            &other_nonce,
            &proof
        ));
        let wrong = BackupKeys::derive(TEST, b"pasS", a.id());
        assert!(!verify_proof(
            &wrong.fetch_public(),
            v,
            a.id(),
            1_000,
            &nonce,
            &proof
        ));
        // Each request has its own nonce.
        assert_ne!(keys.fetch_request(1_000).nonce, doc.nonce);
        // A small-order key verifies nothing.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(!valid_fetch_key(&identity));
        assert!(!verify_proof(&identity, v, a.id(), 1_000, &nonce, &proof));
        assert!(valid_fetch_key(&fetch));
    }

    #[test]
    fn the_production_parameters_are_what_the_format_says() {
        // Changing these makes every existing backup unreadable: a new version instead.
        assert_eq!(
            V1,
            Kdf {
                version: 1,
                memory_kib: 262_144,
                iterations: 4,
                lanes: 1
            }
        );
        assert_ne!(TEST.version, V1.version);
        assert!(argon2::Params::new(V1.memory_kib, V1.iterations, V1.lanes, Some(64)).is_ok());
    }

    #[test]
    fn weak_passphrases_are_refused_with_a_reason() {
        for weak in ["", "password", "tandem123", "home-server", "Summer2026!"] {
            let why = weakness(weak, &["home-server"]).unwrap_or_else(|| panic!("{weak:?}"));
            assert!(why.contains("too weak") && why.contains("of 4"), "{why}");
        }
        assert!(weakness("plinth acorn gravel mustard orbit fennel", &[]).is_none());
    }

    #[test]
    fn decoding_is_bounded() {
        assert!(decode_fixed::<4>(&encode(&[1, 2, 3, 4]), "x").is_ok());
        assert!(decode_fixed::<4>(&encode(&[1, 2, 3]), "x").is_err());
        assert!(decode_bounded(&encode(&[0; 300]), MAX_BLOB, "x").is_err());
        assert!(decode_bounded("not base64!", MAX_BLOB, "x").is_err());
        assert!(decode_bounded(&"A".repeat(10_000), MAX_BLOB, "x").is_err());
    }

    #[test]
    fn debug_shows_nothing_secret() {
        let key = node(11);
        let keys = BackupKeys::derive(TEST, b"pass", key.id());
        let shown = format!("{keys:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains(&encode(keys.enc.as_ref())));
    }
}
