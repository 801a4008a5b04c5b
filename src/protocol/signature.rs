//! HTTP Message Signatures (RFC 9421) as tandem peers use them, and `Content-Digest`
//! (RFC 9530). Pure: it works on strings and bytes, not on an HTTP library's types.
//!
//! Every peer request carries:
//!
//! ```text
//! Content-Digest: sha-256=:<base64 of SHA-256(body)>:        (also for an empty body)
//! Signature-Input: tandem=("@method" "@path" "@query" "content-digest");created=<unix seconds>;keyid="ed25519:…";alg="ed25519"
//! Signature: tandem=:<base64 of the 64-byte ed25519 signature>:
//! ```
//!
//! The signature is over the RFC 9421 signature base: one line per covered component,
//! `"<name>": <value>`, then `"@signature-params": <the inner list and its parameters>`, joined
//! with `\n`. `@query` is `?` followed by the query string (just `?` without one). `keyid` is
//! the signer's node id, and the key that verifies.
//!
//! A verifier requires at least these four components, `created` within ±300 s of its clock,
//! `alg` absent or `ed25519`, `expires` (if present) in the future, and a `Content-Digest`
//! (SHA-256 or SHA-512; every one given must match) equal to the body. Signatures made by any
//! RFC 9421 implementation with these parameters verify; the tests check this against the
//! Python `http-message-signatures` package in both directions.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sfv::{BareItem, Dictionary, FieldType, Integer, KeyRef, ListEntry, Parser, StringRef};
use sha2::Digest;

use crate::identity::{NodeId, NodeKey};

/// The signature label tandem uses.
pub const LABEL: &str = "tandem";
/// Largest accepted difference between `created` and the verifier's clock, in seconds.
pub const MAX_SKEW_SECS: i64 = 300;
/// Components every signature must cover, in the order tandem signs them.
pub const COVERED: [&str; 4] = ["@method", "@path", "@query", "content-digest"];

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
    /// The body does not match `Content-Digest`.
    #[error("the body does not match its content-digest")]
    Digest,
    /// The signature does not verify.
    #[error("the signature does not verify")]
    Bad,
}

/// The parts of a request that a signature covers.
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
}

/// Headers that carry a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// `Content-Digest`.
    pub content_digest: String,
    /// `Signature-Input`.
    pub signature_input: String,
    /// `Signature`.
    pub signature: String,
}

/// `sha-256=:<base64>:` for `body`.
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(sha2::Sha256::digest(body)))
}

/// Signs a request as `key` at `created` (Unix seconds).
pub fn sign(
    key: &NodeKey,
    method: &str,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    created: i64,
) -> SignatureHeaders {
    let content_digest = content_digest(body);
    let keyid = key.id().to_string();
    let params = signature_params(&COVERED, created, &keyid);
    let parts = RequestParts {
        method,
        path,
        query,
        content_digest: Some(&content_digest),
    };
    let base =
        signature_base(&parts, &COVERED, &params).expect("tandem's own components are supported");
    let signature = key.sign(base.as_bytes());
    SignatureHeaders {
        signature_input: format!("{LABEL}={params}"),
        signature: format!("{LABEL}=:{}:", STANDARD.encode(signature)),
        content_digest,
    }
}

/// The `keyid` a `Signature-Input` header names, without verifying anything: lets a server
/// refuse unknown keys before it reads a request's body.
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

/// Verifies a request's signature and body digest at `now` (Unix seconds). Returns the signer.
pub fn verify(
    parts: &RequestParts<'_>,
    signature_input: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<NodeId, SignatureError> {
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
            return Err(SignatureError::NotCovered(required));
        }
    }
    let param = |name: &str| {
        list.params
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| v)
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

    check_content_digest(
        parts
            .content_digest
            .ok_or(SignatureError::Missing("content-digest"))?,
        body,
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
        Ok(signer)
    } else {
        Err(SignatureError::Bad)
    }
}

/// Checks a `Content-Digest` value against `body`: at least one of `sha-256`, `sha-512`, and
/// every one given must match.
pub fn check_content_digest(header: &str, body: &[u8]) -> Result<(), SignatureError> {
    let digests: Dictionary =
        Parser::new(header)
            .parse()
            .map_err(|e| SignatureError::Malformed {
                header: "content-digest",
                why: e.to_string(),
            })?;
    let mut checked = 0;
    for (name, entry) in &digests {
        let expected: Vec<u8> = match name.as_str() {
            "sha-256" => sha2::Sha256::digest(body).to_vec(),
            "sha-512" => sha2::Sha512::digest(body).to_vec(),
            _ => continue,
        };
        let ListEntry::Item(item) = entry else {
            return Err(SignatureError::Digest);
        };
        if item.bare_item.as_byte_sequence() != Some(expected.as_slice()) {
            return Err(SignatureError::Digest);
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(SignatureError::Malformed {
            header: "content-digest",
            why: "no sha-256 or sha-512 digest".into(),
        });
    }
    Ok(())
}

fn member<'a>(dict: &'a Dictionary, name: &str) -> Option<&'a ListEntry> {
    dict.iter()
        .find(|(k, _)| k.as_str() == name)
        .map(|(_, v)| v)
}

/// The serialized inner list of `components` with tandem's parameters.
fn signature_params(components: &[&str], created: i64, keyid: &str) -> String {
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

    fn parts<'a>(h: &'a SignatureHeaders, query: Option<&'a str>) -> RequestParts<'a> {
        RequestParts {
            method: "POST",
            path: "/v1/origins/x/entries",
            query,
            content_digest: Some(&h.content_digest),
        }
    }

    #[test]
    fn a_signature_verifies_and_names_its_signer() {
        let key = NodeKey::from_seed([3; 32]);
        let h = sign(
            &key,
            "POST",
            "/v1/origins/x/entries",
            Some("after=5"),
            b"body",
            NOW,
        );
        assert!(h.signature_input.starts_with(r#"tandem=("@method" "@path" "@query" "content-digest");created=1795700000;keyid="ed25519:"#));
        let signer = verify(
            &parts(&h, Some("after=5")),
            Some(&h.signature_input),
            Some(&h.signature),
            b"body",
            NOW + 10,
        )
        .unwrap();
        assert_eq!(signer, key.id());
    }

    #[test]
    fn any_change_to_what_is_covered_fails() {
        let key = NodeKey::from_seed([3; 32]);
        let h = sign(
            &key,
            "POST",
            "/v1/origins/x/entries",
            Some("after=5"),
            b"body",
            NOW,
        );
        let ok = parts(&h, Some("after=5"));
        let check = |p: &RequestParts<'_>, body: &[u8], now: i64| {
            verify(p, Some(&h.signature_input), Some(&h.signature), body, now)
        };
        assert_eq!(
            check(
                &RequestParts {
                    method: "GET",
                    ..ok
                },
                b"body",
                NOW
            ),
            Err(SignatureError::Bad)
        );
        assert_eq!(
            check(
                &RequestParts {
                    path: "/v1/origins/y/entries",
                    ..ok
                },
                b"body",
                NOW
            ),
            Err(SignatureError::Bad)
        );
        assert_eq!(
            check(
                &RequestParts {
                    query: Some("after=6"),
                    ..ok
                },
                b"body",
                NOW
            ),
            Err(SignatureError::Bad)
        );
        assert_eq!(
            check(&RequestParts { query: None, ..ok }, b"body", NOW),
            Err(SignatureError::Bad)
        );
        assert_eq!(check(&ok, b"bodY", NOW), Err(SignatureError::Digest));
        assert_eq!(
            check(&ok, b"body", NOW + 301),
            Err(SignatureError::Skew(301))
        );
        assert_eq!(
            check(&ok, b"body", NOW - 301),
            Err(SignatureError::Skew(-301))
        );
        // Another key cannot pass as this one.
        let other = sign(
            &NodeKey::from_seed([4; 32]),
            "POST",
            "/v1/origins/x/entries",
            Some("after=5"),
            b"body",
            NOW,
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
                b"body",
                NOW
            ),
            Err(SignatureError::Bad)
        );
    }

    #[test]
    fn signatures_that_cover_too_little_or_use_other_algorithms_are_refused() {
        let key = NodeKey::from_seed([3; 32]);
        let h = sign(&key, "GET", "/v1/node", None, b"", NOW);
        let p = RequestParts {
            method: "GET",
            path: "/v1/node",
            query: None,
            content_digest: Some(&h.content_digest),
        };
        let less = h.signature_input.replace(r#" "content-digest""#, "");
        assert_eq!(
            verify(&p, Some(&less), Some(&h.signature), b"", NOW),
            Err(SignatureError::NotCovered("content-digest"))
        );
        let rsa = h
            .signature_input
            .replace(r#"alg="ed25519""#, r#"alg="rsa-pss-sha512""#);
        assert!(matches!(
            verify(&p, Some(&rsa), Some(&h.signature), b"", NOW),
            Err(SignatureError::Algorithm(_))
        ));
        assert_eq!(
            verify(&p, None, Some(&h.signature), b"", NOW),
            Err(SignatureError::Missing("signature-input"))
        );
        assert!(matches!(
            verify(&p, Some("tandem=nonsense("), Some(&h.signature), b"", NOW),
            Err(SignatureError::Malformed { .. })
        ));
        let other_label = h.signature_input.replacen("tandem=", "sig1=", 1);
        assert!(matches!(
            verify(&p, Some(&other_label), Some(&h.signature), b"", NOW),
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
    }
}
