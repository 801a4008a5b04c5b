//! Interoperability of tandem's request signatures (RFC 9421) with an independent
//! implementation, the Python `http-message-signatures` package, in both directions.

mod common;

use std::process::Command;

use tandem::identity::NodeKey;
use tandem::protocol::signature::{self, RequestParts, SignatureError};

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

#[test]
fn python_verifies_what_tandem_signs() {
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::from_seed([21; 32]);
    let body = br#"{"entries":[]}"#;
    std::fs::write(dir.path().join("body"), body).unwrap();
    let body_file = dir.path().join("body");
    let h = signature::sign(
        &key,
        "POST",
        "/v1/origins/abc/entries",
        Some("after=5&limit=10"),
        body,
        now(),
    );
    let verify = |signature: &str| {
        python(&[
            "verify",
            &hex(key.id().as_bytes()),
            &key.id().to_string(),
            "POST",
            "http://peer.example:8750/v1/origins/abc/entries?after=5&limit=10",
            body_file.to_str().unwrap(),
            &h.content_digest,
            &h.signature_input,
            signature,
        ])
    };
    let out = verify(&h.signature);
    assert!(
        out.status.success(),
        "python refused tandem's signature: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["label"], "tandem");
    // A flipped signature byte: python refuses too.
    let mut bytes = h.signature.clone().into_bytes();
    let at = bytes.len() - 5;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    assert!(
        !verify(std::str::from_utf8(&bytes).unwrap())
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
    std::fs::write(dir.path().join("body"), b"").unwrap();
    let created = now();
    let out = python(&[
        "sign",
        key_path.to_str().unwrap(),
        &key.id().to_string(),
        "GET",
        "http://peer.example:8750/v1/origins?x=1",
        dir.path().join("body").to_str().unwrap(),
        &created.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (digest, input, sig) = (
        h["content-digest"].as_str().unwrap(),
        h["signature-input"].as_str().unwrap(),
        h["signature"].as_str().unwrap(),
    );
    let parts = RequestParts {
        method: "GET",
        path: "/v1/origins",
        query: Some("x=1"),
        content_digest: Some(digest),
    };
    assert_eq!(
        signature::verify(&parts, Some(input), Some(sig), b"", now()).unwrap(),
        key.id()
    );
    // The same headers on another query, or another key's claim, do not verify.
    let other = RequestParts {
        query: Some("x=2"),
        ..parts
    };
    assert_eq!(
        signature::verify(&other, Some(input), Some(sig), b"", now()),
        Err(SignatureError::Bad)
    );
    assert!(signature::verify(&parts, Some(input), Some(sig), b"", created + 1000).is_err());
}
