//! Interoperability of tandem's request signatures (RFC 9421) with an independent
//! implementation, the Python `http-message-signatures` package, in both directions.

use crate::common;

use std::process::Command;

use tandem::identity::NodeKey;
use tandem::protocol::signature::{self, Outgoing, RequestParts, SignatureError};

fn python(args: &[&str]) -> std::process::Output {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/httpsig_interop.py");
    Command::new(common::kinto::venv().join("bin/python"))
        .arg(script)
        .args(args)
        .output()
        .unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The node the requests are for.
fn target() -> NodeKey {
    NodeKey::from_seed([22; 32])
}

#[test]
fn python_verifies_what_tandem_signs() {
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::from_seed([21; 32]);
    let body = br#"{"entries":[]}"#;
    std::fs::write(dir.path().join("body"), body).unwrap();
    let body_file = dir.path().join("body");
    let h = signature::sign(
        &key,
        &Outgoing {
            target: target().id(),
            method: "POST",
            path: "/v1/origins/abc/entries",
            query: Some("after=5&limit=10"),
        },
        body,
        now(),
    );
    let verify = |signature: &str, digest: &str, target: &str| {
        python(&[
            "verify",
            &hex(key.id().as_bytes()),
            &key.id().to_string(),
            "POST",
            "http://peer.example:8750/v1/origins/abc/entries?after=5&limit=10",
            body_file.to_str().unwrap(),
            digest,
            &h.signature_input,
            signature,
            target,
        ])
    };
    let out = verify(&h.signature, &h.content_digest, &h.target);
    assert!(
        out.status.success(),
        "python refused tandem's signature: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["label"], "tandem");
    let covered = report["covered"].to_string();
    assert!(covered.contains("tandem-target"), "{covered}");
    // The nonce python read is the one tandem signed.
    let nonce = report["nonce"].as_str().unwrap();
    assert!(
        h.signature_input.contains(&format!(r#";nonce="{nonce}""#)),
        "{report}"
    );
    // A flipped signature byte: python refuses too.
    let mut bytes = h.signature.clone().into_bytes();
    let at = bytes.len() - 5;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let flipped = std::str::from_utf8(&bytes).unwrap();
    assert!(
        !verify(flipped, &h.content_digest, &h.target)
            .status
            .success()
    );
    // Presented to another node, python refuses it as tandem does.
    let elsewhere = NodeKey::from_seed([23; 32]).id().to_string();
    assert!(
        !verify(&h.signature, &h.content_digest, &elsewhere)
            .status
            .success()
    );
    // Python checks the body against the digest itself.
    let other_digest = signature::content_digest(b"another body");
    assert!(
        !verify(&h.signature, &other_digest, &h.target)
            .status
            .success()
    );
}

#[test]
fn tandem_verifies_what_python_signs() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("node.key");
    // The node key file, as tandem writes it, is what python loads (PKCS#8 PEM).
    let key = NodeKey::create(&key_path).unwrap();
    let body = b"a body";
    std::fs::write(dir.path().join("body"), body).unwrap();
    let created = now();
    let this = target().id();
    let nonce = "cHl0aG9uLW5vbmNlLTAwMQ";
    let out = python(&[
        "sign",
        key_path.to_str().unwrap(),
        &key.id().to_string(),
        "POST",
        "http://peer.example:8750/v1/origins?x=1",
        dir.path().join("body").to_str().unwrap(),
        &created.to_string(),
        &this.to_string(),
        nonce,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (digest, target_header, input, sig) = (
        h["content-digest"].as_str().unwrap(),
        h["tandem-target"].as_str().unwrap(),
        h["signature-input"].as_str().unwrap(),
        h["signature"].as_str().unwrap(),
    );
    let parts = RequestParts {
        method: "POST",
        path: "/v1/origins",
        query: Some("x=1"),
        content_digest: Some(digest),
        target: Some(target_header),
    };
    let verified = signature::verify(&parts, Some(input), Some(sig), this, now()).unwrap();
    assert_eq!(
        (verified.signer, verified.nonce.as_str()),
        (key.id(), nonce)
    );
    // The digest python computed is the body's; another body does not match it.
    verified.digest.check(body).unwrap();
    let verified = signature::verify(&parts, Some(input), Some(sig), this, now()).unwrap();
    assert_eq!(
        verified.digest.check(b"a bodY").unwrap_err(),
        SignatureError::Digest
    );
    // The same headers on another query, at another node, or long after, do not verify.
    let other = RequestParts {
        query: Some("x=2"),
        ..parts
    };
    assert_eq!(
        signature::verify(&other, Some(input), Some(sig), this, now()).unwrap_err(),
        SignatureError::Bad
    );
    let elsewhere = NodeKey::from_seed([23; 32]).id();
    assert!(matches!(
        signature::verify(&parts, Some(input), Some(sig), elsewhere, now()),
        Err(SignatureError::WrongTarget { .. })
    ));
    assert!(signature::verify(&parts, Some(input), Some(sig), this, created + 1000).is_err());
}
