//! HTTP Message Signatures (RFC 9421) as tandem peers use them, and `Content-Digest`
//! (RFC 9530). Pure: it works on strings and bytes, not on an HTTP library's types.
//!
//! Every peer request carries:
//!
//! ```text
//! Content-Digest: sha-256=:<base64 of SHA-256(body)>:        (also for an empty body)
//! Tandem-Target: ed25519:…                                    (the node the request is for)
//! Signature-Input: tandem=("@method" "@path" "@query" "content-digest" "tandem-target");created=<unix seconds>;keyid="ed25519:…";alg="ed25519";nonce="<random>"
//! Signature: tandem=:<base64 of the 64-byte ed25519 signature>:
//! ```
//!
//! The signature is over the RFC 9421 signature base: one line per covered component,
//! `"<name>": <value>`, then `"@signature-params": <the inner list and its parameters>`, joined
//! with `\n`. `@query` is `?` followed by the query string (just `?` without one). `keyid` is
//! the signer's node id, and the key that verifies.
//!
//! ## Binding a signature to one request at one node
//!
//! Method, path, query and body digest alone would let whoever receives a signed request use it
//! again: at the same node within the clock window, or at another node that knows the same
//! signer (a peer that gets a signed `GET …/entries` could read another node's copy of an
//! origin it may not read itself). Two more things are therefore signed:
//!
//! - **The target node**, as the `tandem-target` header holding the receiving node's id, which
//!   a verifier compares with its own. Not `@authority`: behind a reverse proxy or a TLS
//!   terminator the host a node sees is rarely the one its peers dial, one node may be reached
//!   under several names, and `public_url` is optional; a node's id is the one name that is the
//!   same on both ends, and the caller already has it from its `[[peer]]` entry.
//! - **A nonce**, the `nonce` signature parameter: 16 random bytes per request (base64url).
//!   The verifier remembers `(keyid, nonce)` until the signature's `created` leaves the clock
//!   window, and refuses a second use ([`crate::protocol::replay`]).
//!
//! A verifier requires these five components and the nonce (a signature without them comes
//! from a release before the binding, and the error says to upgrade that node), `created`
//! within ±300 s of its clock, `alg` absent or `ed25519`, `expires` (if present) in the future,
//! and a `Content-Digest` (SHA-256 or SHA-512; every one given must match). [`verify`] checks
//! all of that without the body, which the signature does not cover directly: it hands back a
//! [`DigestCheck`] for the covered `Content-Digest`, through which the caller streams the body
//! once the signer is known, so that nothing of an unauthenticated request is ever read.
//!
//! Signatures made by any RFC 9421 implementation with these parameters verify; the tests check
//! this against the Python `http-message-signatures` package in both directions.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sfv::{BareItem, Dictionary, FieldType, Integer, KeyRef, ListEntry, Parser, StringRef};
use sha2::Digest;

use crate::identity::{NodeId, NodeKey};

/// The signature label tandem uses.
pub const LABEL: &str = "tandem";
/// Largest accepted difference between `created` and the verifier's clock, in seconds.
pub const MAX_SKEW_SECS: i64 = 300;
/// The header naming the node a request is for (its id); covered by every signature.
pub const TARGET_HEADER: &str = "tandem-target";
/// Components every signature must cover, in the order tandem signs them.
pub const COVERED: [&str; 5] = [
    "@method",
    "@path",
    "@query",
    "content-digest",
    TARGET_HEADER,
];
/// Shortest accepted nonce, in characters (tandem sends 22: 16 random bytes, base64url).
pub const MIN_NONCE_LEN: usize = 16;
/// Longest accepted nonce, in characters: what a verifier remembers per request stays small.
pub const MAX_NONCE_LEN: usize = 64;

/// Why a request's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header is missing.
    #[error("missing {0} header")]
    Missing(&'static str),
    /// A header does not parse.
    #[error("malformed {header}: {why}")]
    Malformed {
        /// Which header.
        header: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A required component is not covered.
    #[error("the signature does not cover {0}")]
    NotCovered(&'static str),
    /// The signature lacks what binds it to its target and to one use: the signer runs a
    /// release from before that binding.
    #[error(
        "the signature does not cover {0}, which tandem {version} requires (it binds a request to the node it is for and to one use); the signing node runs an older tandem: upgrade it",
        version = env!("CARGO_PKG_VERSION")
    )]
    Outdated(&'static str),
    /// A covered component this verifier cannot reconstruct.
    #[error("the signature covers {0:?}, which tandem does not support")]
    Unsupported(String),
    /// `created` is too far from the verifier's clock.
    #[error(
        "the signature was created {0} s away from this node's clock (at most 300 s allowed); check both clocks"
    )]
    Skew(i64),
    /// `expires` is in the past.
    #[error("the signature has expired")]
    Expired,
    /// Another algorithm than ed25519.
    #[error("unsupported signature algorithm {0:?}")]
    Algorithm(String),
    /// `keyid` is not a node id.
    #[error("keyid {0:?} is not a node id")]
    KeyId(String),
    /// The request was signed for another node.
    #[error(
        "the request was signed for node {signed_for}, not for this node ({this}); a request signed for one node is refused by every other"
    )]
    WrongTarget {
        /// The `tandem-target` the signature covers.
        signed_for: String,
        /// This node.
        this: NodeId,
    },
    /// The body does not match `Content-Digest`.
    #[error("the body does not match its content-digest")]
    Digest,
    /// The signature does not verify.
    #[error("the signature does not verify")]
    Bad,
}

/// The parts of a received request that a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// Method, e.g. `GET`.
    pub method: &'a str,
    /// Path, e.g. `/v1/origins`.
    pub path: &'a str,
    /// Query string without the `?`, if any.
    pub query: Option<&'a str>,
    /// The `Content-Digest` header value, if present.
    pub content_digest: Option<&'a str>,
    /// The `Tandem-Target` header value, if present.
    pub target: Option<&'a str>,
}

/// A request about to be signed: what it asks of which node.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The node the request is for (its `[[peer]]` id).
    pub target: NodeId,
    /// Method, e.g. `GET`.
    pub method: &'a str,
    /// Path, e.g. `/v1/origins`.
    pub path: &'a str,
    /// Query string without the `?`, if any.
    pub query: Option<&'a str>,
}

/// Headers that carry a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// `Content-Digest`.
    pub content_digest: String,
    /// `Tandem-Target`.
    pub target: String,
    /// `Signature-Input`.
    pub signature_input: String,
    /// `Signature`.
    pub signature: String,
}

impl SignatureHeaders {
    /// The headers as (name, value) pairs, to add to a request.
    pub fn pairs(&self) -> [(&'static str, &str); 4] {
        [
            ("content-digest", &self.content_digest),
            (TARGET_HEADER, &self.target),
            ("signature-input", &self.signature_input),
            ("signature", &self.signature),
        ]
    }
}

/// What a verified signature establishes. The body is not checked yet: feed it to `digest`.
#[derive(Debug)]
pub struct Verified {
    /// Who signed (the `keyid`, whose key verified).
    pub signer: NodeId,
    /// `created`, in Unix seconds.
    pub created: i64,
    /// The signature's nonce: a verifier must accept it once per signer.
    pub nonce: String,
    /// The check of the covered `Content-Digest` against the body.
    pub digest: DigestCheck,
}

/// `sha-256=:<base64>:` for `body`.
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(sha2::Sha256::digest(body)))
}

/// A fresh nonce: 16 bytes from the operating system's random source, base64url.
pub fn new_nonce() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system random source failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs `request` with `body` as `key` at `created` (Unix seconds), with a fresh nonce.
pub fn sign(key: &NodeKey, request: &Outgoing<'_>, body: &[u8], created: i64) -> SignatureHeaders {
    sign_with_nonce(key, request, body, created, &new_nonce())
}

/// [`sign`] with a given nonce (tests, and whoever must reproduce a signature).
pub fn sign_with_nonce(
    key: &NodeKey,
    request: &Outgoing<'_>,
    body: &[u8],
    created: i64,
    nonce: &str,
) -> SignatureHeaders {
    let content_digest = content_digest(body);
    let target = request.target.to_string();
    let keyid = key.id().to_string();
    let params = signature_params(&COVERED, created, &keyid, nonce);
    let parts = RequestParts {
        method: request.method,
        path: request.path,
        query: request.query,
        content_digest: Some(&content_digest),
        target: Some(&target),
    };
    let base =
        signature_base(&parts, &COVERED, &params).expect("tandem's own components are supported");
    let signature = key.sign(base.as_bytes());
    SignatureHeaders {
        signature_input: format!("{LABEL}={params}"),
        signature: format!("{LABEL}=:{}:", STANDARD.encode(signature)),
        content_digest,
        target,
    }
}

/// The `keyid` a `Signature-Input` header names, without verifying anything: lets a server
/// refuse unknown keys before it does any other work for a request.
pub fn claimed_signer(signature_input: Option<&str>) -> Result<NodeId, SignatureError> {
    let input = signature_input.ok_or(SignatureError::Missing("signature-input"))?;
    let malformed = |why: String| SignatureError::Malformed {
        header: "signature-input",
        why,
    };
    let inputs: Dictionary = Parser::new(input)
        .parse()
        .map_err(|e| malformed(e.to_string()))?;
    let Some(ListEntry::InnerList(list)) = member(&inputs, LABEL) else {
        return Err(malformed("no inner list labelled \"tandem\"".into()));
    };
    let keyid = list
        .params
        .iter()
        .find(|(k, _)| k.as_str() == "keyid")
        .and_then(|(_, v)| v.as_string())
        .map(|s| s.as_str().to_owned())
        .ok_or_else(|| malformed("keyid is missing".into()))?;
    keyid.parse().map_err(|_| SignatureError::KeyId(keyid))
}

/// Verifies a request's signature at `now` (Unix seconds) as the node `this`: everything but
/// the body, which the caller then checks through [`Verified::digest`]. Does not know which
/// nonces were used before; the caller must refuse a second use ([`crate::protocol::replay`]).
pub fn verify(
    parts: &RequestParts<'_>,
    signature_input: Option<&str>,
    signature: Option<&str>,
    this: NodeId,
    now: i64,
) -> Result<Verified, SignatureError> {
    let input = signature_input.ok_or(SignatureError::Missing("signature-input"))?;
    let signature = signature.ok_or(SignatureError::Missing("signature"))?;
    let malformed = |header, why: &str| SignatureError::Malformed {
        header,
        why: why.to_owned(),
    };

    let inputs: Dictionary = Parser::new(input)
        .parse()
        .map_err(|e| malformed("signature-input", &e.to_string()))?;
    let Some(ListEntry::InnerList(list)) = member(&inputs, LABEL) else {
        return Err(malformed(
            "signature-input",
            "no inner list labelled \"tandem\"",
        ));
    };
    let mut components = Vec::with_capacity(list.items.len());
    for item in &list.items {
        match (&item.bare_item, item.params.is_empty()) {
            (BareItem::String(name), true) => components.push(name.as_str().to_owned()),
            _ => {
                return Err(malformed(
                    "signature-input",
                    "components must be plain strings",
                ));
            }
        }
    }
    for required in COVERED {
        if !components.iter().any(|c| c == required) {
            return Err(if required == TARGET_HEADER {
                SignatureError::Outdated(TARGET_HEADER)
            } else {
                SignatureError::NotCovered(required)
            });
        }
    }
    let param = |name: &str| {
        list.params
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| v)
    };
    let nonce = match param("nonce") {
        None => return Err(SignatureError::Outdated("a nonce parameter")),
        Some(nonce) => nonce
            .as_string()
            .map(|s| s.as_str().to_owned())
            .filter(|n| (MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&n.len()))
            .ok_or_else(|| {
                malformed(
                    "signature-input",
                    "nonce must be a string of 16 to 64 characters",
                )
            })?,
    };
    let created = param("created")
        .and_then(BareItem::as_integer)
        .map(i64::from)
        .ok_or_else(|| malformed("signature-input", "created is missing or not an integer"))?;
    if (now - created).abs() > MAX_SKEW_SECS {
        return Err(SignatureError::Skew(now - created));
    }
    if let Some(expires) = param("expires") {
        let expires = expires
            .as_integer()
            .map(i64::from)
            .ok_or_else(|| malformed("signature-input", "expires is not an integer"))?;
        if expires <= now {
            return Err(SignatureError::Expired);
        }
    }
    if let Some(alg) = param("alg") {
        let alg = alg
            .as_string()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default();
        if alg != "ed25519" {
            return Err(SignatureError::Algorithm(alg));
        }
    }
    let keyid = param("keyid")
        .and_then(BareItem::as_string)
        .map(|s| s.as_str().to_owned())
        .ok_or_else(|| malformed("signature-input", "keyid is missing"))?;
    let signer: NodeId = keyid
        .parse()
        .map_err(|_| SignatureError::KeyId(keyid.clone()))?;

    let target = parts
        .target
        .ok_or(SignatureError::Missing(TARGET_HEADER))?
        .trim();
    if target.parse::<NodeId>().ok() != Some(this) {
        return Err(SignatureError::WrongTarget {
            signed_for: target.chars().take(80).collect(),
            this,
        });
    }
    let digest = DigestCheck::parse(
        parts
            .content_digest
            .ok_or(SignatureError::Missing("content-digest"))?,
    )?;

    let params = vec![ListEntry::InnerList(list.clone())]
        .serialize()
        .ok_or_else(|| malformed("signature-input", "empty"))?;
    let names: Vec<&str> = components.iter().map(String::as_str).collect();
    let base = signature_base(parts, &names, &params)?;

    let signatures: Dictionary = Parser::new(signature)
        .parse()
        .map_err(|e| malformed("signature", &e.to_string()))?;
    let Some(ListEntry::Item(item)) = member(&signatures, LABEL) else {
        return Err(malformed("signature", "no item labelled \"tandem\""));
    };
    let bytes: [u8; 64] = item
        .bare_item
        .as_byte_sequence()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| malformed("signature", "not a 64-byte sequence"))?;
    if signer.verify(base.as_bytes(), &bytes) {
        Ok(Verified {
            signer,
            created,
            nonce,
            digest,
        })
    } else {
        Err(SignatureError::Bad)
    }
}

/// The check of a body against a `Content-Digest` value, fed chunk by chunk as the body
/// arrives: at least one of `sha-256`, `sha-512` must be given, and every one given must match.
pub struct DigestCheck {
    sha256: Option<(sha2::Sha256, Vec<u8>)>,
    sha512: Option<(sha2::Sha512, Vec<u8>)>,
}

impl std::fmt::Debug for DigestCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestCheck")
            .field("sha256", &self.sha256.is_some())
            .field("sha512", &self.sha512.is_some())
            .finish()
    }
}

impl DigestCheck {
    /// Parses a `Content-Digest` value. Other algorithms than SHA-256 and SHA-512 are ignored;
    /// a value with neither is refused.
    pub fn parse(header: &str) -> Result<DigestCheck, SignatureError> {
        let malformed = |why: String| SignatureError::Malformed {
            header: "content-digest",
            why,
        };
        let digests: Dictionary = Parser::new(header)
            .parse()
            .map_err(|e| malformed(e.to_string()))?;
        let mut check = DigestCheck {
            sha256: None,
            sha512: None,
        };
        for (name, entry) in &digests {
            let expected = match entry {
                ListEntry::Item(item) => item.bare_item.as_byte_sequence().map(<[u8]>::to_vec),
                ListEntry::InnerList(_) => None,
            };
            match name.as_str() {
                "sha-256" => {
                    let expected = expected
                        .filter(|e| e.len() == 32)
                        .ok_or_else(|| malformed("sha-256 is not a 32-byte sequence".into()))?;
                    check.sha256 = Some((sha2::Sha256::new(), expected));
                }
                "sha-512" => {
                    let expected = expected
                        .filter(|e| e.len() == 64)
                        .ok_or_else(|| malformed("sha-512 is not a 64-byte sequence".into()))?;
                    check.sha512 = Some((sha2::Sha512::new(), expected));
                }
                _ => {}
            }
        }
        if check.sha256.is_none() && check.sha512.is_none() {
            return Err(malformed("no sha-256 or sha-512 digest".into()));
        }
        Ok(check)
    }

    /// Adds the next chunk of the body.
    pub fn update(&mut self, chunk: &[u8]) {
        if let Some((hasher, _)) = &mut self.sha256 {
            hasher.update(chunk);
        }
        if let Some((hasher, _)) = &mut self.sha512 {
            hasher.update(chunk);
        }
    }

    /// Whether the body fed so far is the one the header names.
    pub fn finish(self) -> Result<(), SignatureError> {
        let sha256 = self
            .sha256
            .is_none_or(|(h, expected)| h.finalize().as_slice() == expected.as_slice());
        let sha512 = self
            .sha512
            .is_none_or(|(h, expected)| h.finalize().as_slice() == expected.as_slice());
        if sha256 && sha512 {
            Ok(())
        } else {
            Err(SignatureError::Digest)
        }
    }

    /// Checks a whole body at once.
    pub fn check(mut self, body: &[u8]) -> Result<(), SignatureError> {
        self.update(body);
        self.finish()
    }
}

/// Checks a `Content-Digest` value against `body`: at least one of `sha-256`, `sha-512`, and
/// every one given must match.
pub fn check_content_digest(header: &str, body: &[u8]) -> Result<(), SignatureError> {
    DigestCheck::parse(header)?.check(body)
}

fn member<'a>(dict: &'a Dictionary, name: &str) -> Option<&'a ListEntry> {
    dict.iter()
        .find(|(k, _)| k.as_str() == name)
        .map(|(_, v)| v)
}

/// The serialized inner list of `components` with tandem's parameters.
fn signature_params(components: &[&str], created: i64, keyid: &str, nonce: &str) -> String {
    let key = |k| KeyRef::from_str(k).expect("a valid key");
    let string = |s| StringRef::from_str(s).expect("an ASCII string");
    let mut ser = sfv::ListSerializer::new();
    {
        let mut list = ser.inner_list();
        for c in components {
            // The serializers hand back their buffer on finish; it is read once, at the end.
            let _ = list.bare_item(string(c)).finish();
        }
        let _ = list
            .finish()
            .parameter(key("created"), Integer::constant(created))
            .parameter(key("keyid"), string(keyid))
            .parameter(key("alg"), string("ed25519"))
            .parameter(key("nonce"), string(nonce))
            .finish();
    }
    ser.finish().expect("a non-empty list")
}

/// The RFC 9421 signature base for `components` of a request.
fn signature_base(
    parts: &RequestParts<'_>,
    components: &[&str],
    params: &str,
) -> Result<String, SignatureError> {
    let mut base = String::new();
    for name in components {
        let value = match *name {
            "@method" => parts.method.to_owned(),
            "@path" => parts.path.to_owned(),
            "@query" => format!("?{}", parts.query.unwrap_or("")),
            "content-digest" => parts
                .content_digest
                .ok_or(SignatureError::Missing("content-digest"))?
                .trim()
                .to_owned(),
            TARGET_HEADER => parts
                .target
                .ok_or(SignatureError::Missing(TARGET_HEADER))?
                .trim()
                .to_owned(),
            other => return Err(SignatureError::Unsupported(other.to_owned())),
        };
        base.push_str(&format!("\"{name}\": {value}\n"));
    }
    base.push_str(&format!("\"@signature-params\": {params}"));
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_700_000;
    const NONCE: &str = "AAECAwQFBgcICQoLDA0ODw";

    fn this() -> NodeId {
        NodeKey::from_seed([9; 32]).id()
    }

    fn outgoing(query: Option<&str>) -> Outgoing<'_> {
        Outgoing {
            target: this(),
            method: "POST",
            path: "/v1/origins/x/entries",
            query,
        }
    }

    fn parts<'a>(h: &'a SignatureHeaders, query: Option<&'a str>) -> RequestParts<'a> {
        RequestParts {
            method: "POST",
            path: "/v1/origins/x/entries",
            query,
            content_digest: Some(&h.content_digest),
            target: Some(&h.target),
        }
    }

    /// Verifies the signature and the body, as a server does in two steps.
    fn check(
        p: &RequestParts<'_>,
        h: &SignatureHeaders,
        body: &[u8],
        now: i64,
    ) -> Result<NodeId, SignatureError> {
        let verified = verify(p, Some(&h.signature_input), Some(&h.signature), this(), now)?;
        verified.digest.check(body)?;
        Ok(verified.signer)
    }

    #[test]
    fn a_signature_verifies_and_names_its_signer_and_nonce() {
        let key = NodeKey::from_seed([3; 32]);
        let h = sign_with_nonce(&key, &outgoing(Some("after=5")), b"body", NOW, NONCE);
        assert!(h.signature_input.starts_with(r#"tandem=("@method" "@path" "@query" "content-digest" "tandem-target");created=1795700000;keyid="ed25519:"#));
        assert!(
            h.signature_input
                .ends_with(&format!(r#"alg="ed25519";nonce="{NONCE}""#))
        );
        assert_eq!(h.target, this().to_string());
        let verified = verify(
            &parts(&h, Some("after=5")),
            Some(&h.signature_input),
            Some(&h.signature),
            this(),
            NOW + 10,
        )
        .unwrap();
        assert_eq!(
            (verified.signer, verified.created, verified.nonce.as_str()),
            (key.id(), NOW, NONCE)
        );
        verified.digest.check(b"body").unwrap();
        // Every signature gets its own nonce.
        let (a, b) = (
            sign(&key, &outgoing(None), b"", NOW),
            sign(&key, &outgoing(None), b"", NOW),
        );
        assert_ne!(a.signature_input, b.signature_input);
    }

    #[test]
    fn any_change_to_what_is_covered_fails() {
        let key = NodeKey::from_seed([3; 32]);
        let h = sign_with_nonce(&key, &outgoing(Some("after=5")), b"body", NOW, NONCE);
        let ok = parts(&h, Some("after=5"));
        let bad = |p: RequestParts<'_>| check(&p, &h, b"body", NOW);
        assert_eq!(
            bad(RequestParts {
                method: "GET",
                ..ok
            }),
            Err(SignatureError::Bad)
        );
        assert_eq!(
            bad(RequestParts {
                path: "/v1/origins/y/entries",
                ..ok
            }),
            Err(SignatureError::Bad)
        );
        assert_eq!(
            bad(RequestParts {
                query: Some("after=6"),
                ..ok
            }),
            Err(SignatureError::Bad)
        );
        assert_eq!(
            bad(RequestParts { query: None, ..ok }),
            Err(SignatureError::Bad)
        );
        let other_digest = content_digest(b"bodY");
        assert_eq!(
            bad(RequestParts {
                content_digest: Some(&other_digest),
                ..ok
            }),
            Err(SignatureError::Bad)
        );
        assert_eq!(check(&ok, &h, b"bodY", NOW), Err(SignatureError::Digest));
        assert_eq!(
            check(&ok, &h, b"body", NOW + 301),
            Err(SignatureError::Skew(301))
        );
        assert_eq!(
            check(&ok, &h, b"body", NOW - 301),
            Err(SignatureError::Skew(-301))
        );
        // Another nonce in the same headers.
        let renonced = h.signature_input.replace(NONCE, "BBECAwQFBgcICQoLDA0ODw");
        assert_eq!(
            verify(&ok, Some(&renonced), Some(&h.signature), this(), NOW).unwrap_err(),
            SignatureError::Bad
        );
        // Another key cannot pass as this one.
        let other = sign_with_nonce(
            &NodeKey::from_seed([4; 32]),
            &outgoing(Some("after=5")),
            b"body",
            NOW,
            NONCE,
        );
        let forged_input = other.signature_input.replace(
            &NodeKey::from_seed([4; 32]).id().to_string(),
            &key.id().to_string(),
        );
        assert_eq!(
            verify(
                &ok,
                Some(&forged_input),
                Some(&other.signature),
                this(),
                NOW
            )
            .unwrap_err(),
            SignatureError::Bad
        );
    }

    #[test]
    fn a_request_signed_for_another_node_is_refused_there() {
        let key = NodeKey::from_seed([3; 32]);
        let elsewhere = NodeKey::from_seed([5; 32]).id();
        let h = sign_with_nonce(&key, &outgoing(None), b"", NOW, NONCE);
        let p = parts(&h, None);
        // At the node it was signed for it verifies; at another it does not, whatever the
        // header then says.
        verify(
            &p,
            Some(&h.signature_input),
            Some(&h.signature),
            this(),
            NOW,
        )
        .unwrap();
        assert!(matches!(
            verify(&p, Some(&h.signature_input), Some(&h.signature), elsewhere, NOW),
            Err(SignatureError::WrongTarget { this, .. }) if this == elsewhere
        ));
        let retargeted = elsewhere.to_string();
        let p = RequestParts {
            target: Some(&retargeted),
            ..p
        };
        assert_eq!(
            verify(
                &p,
                Some(&h.signature_input),
                Some(&h.signature),
                elsewhere,
                NOW
            )
            .unwrap_err(),
            SignatureError::Bad
        );
        let p = RequestParts { target: None, ..p };
        assert_eq!(
            verify(
                &p,
                Some(&h.signature_input),
                Some(&h.signature),
                elsewhere,
                NOW
            )
            .unwrap_err(),
            SignatureError::Missing(TARGET_HEADER)
        );
    }

    #[test]
    fn signatures_of_the_previous_release_are_refused_with_what_to_do() {
        let key = NodeKey::from_seed([3; 32]);
        let h = sign_with_nonce(&key, &outgoing(None), b"", NOW, NONCE);
        let p = parts(&h, None);
        let untargeted = h.signature_input.replace(r#" "tandem-target""#, "");
        let e = verify(&p, Some(&untargeted), Some(&h.signature), this(), NOW).unwrap_err();
        assert_eq!(e, SignatureError::Outdated(TARGET_HEADER));
        assert!(e.to_string().contains("upgrade it"), "{e}");
        let unnonced = h
            .signature_input
            .replace(&format!(r#";nonce="{NONCE}""#), "");
        let e = verify(&p, Some(&unnonced), Some(&h.signature), this(), NOW).unwrap_err();
        assert_eq!(e, SignatureError::Outdated("a nonce parameter"));
        for nonce in ["short", &"n".repeat(65)] {
            let odd = h.signature_input.replace(NONCE, nonce);
            assert!(matches!(
                verify(&p, Some(&odd), Some(&h.signature), this(), NOW),
                Err(SignatureError::Malformed { .. })
            ));
        }
    }

    #[test]
    fn signatures_that_cover_too_little_or_use_other_algorithms_are_refused() {
        let key = NodeKey::from_seed([3; 32]);
        let h = sign_with_nonce(&key, &outgoing(None), b"", NOW, NONCE);
        let p = parts(&h, None);
        let verify_input = |input: Option<&str>| {
            verify(&p, input, Some(&h.signature), this(), NOW).map(|v| v.signer)
        };
        let less = h.signature_input.replace(r#" "content-digest""#, "");
        assert_eq!(
            verify_input(Some(&less)),
            Err(SignatureError::NotCovered("content-digest"))
        );
        let rsa = h
            .signature_input
            .replace(r#"alg="ed25519""#, r#"alg="rsa-pss-sha512""#);
        assert!(matches!(
            verify_input(Some(&rsa)),
            Err(SignatureError::Algorithm(_))
        ));
        assert_eq!(
            verify_input(None),
            Err(SignatureError::Missing("signature-input"))
        );
        assert!(matches!(
            verify_input(Some("tandem=nonsense(")),
            Err(SignatureError::Malformed { .. })
        ));
        let other_label = h.signature_input.replacen("tandem=", "sig1=", 1);
        assert!(matches!(
            verify_input(Some(&other_label)),
            Err(SignatureError::Malformed { .. })
        ));
    }

    #[test]
    fn content_digest_accepts_sha512_and_rejects_mismatches() {
        let sha512 = format!("sha-512=:{}:", STANDARD.encode(sha2::Sha512::digest(b"x")));
        check_content_digest(&sha512, b"x").unwrap();
        assert_eq!(
            check_content_digest(&sha512, b"y"),
            Err(SignatureError::Digest)
        );
        let both = format!("{}, {sha512}", content_digest(b"x"));
        check_content_digest(&both, b"x").unwrap();
        let mixed = format!("{}, {sha512}", content_digest(b"y"));
        assert_eq!(
            check_content_digest(&mixed, b"x"),
            Err(SignatureError::Digest)
        );
        assert!(check_content_digest("md5=:AAAA:", b"x").is_err());
        assert!(check_content_digest("sha-256=:AAAA:", b"x").is_err());
    }

    #[test]
    fn a_digest_fed_in_chunks_is_the_digest_of_the_whole() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut check = DigestCheck::parse(&content_digest(&body)).unwrap();
        for chunk in body.chunks(4093) {
            check.update(chunk);
        }
        check.finish().unwrap();
        let mut short = DigestCheck::parse(&content_digest(&body)).unwrap();
        short.update(&body[..body.len() - 1]);
        assert_eq!(short.finish(), Err(SignatureError::Digest));
    }
}
