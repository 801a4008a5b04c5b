//! Everything that parses what another party sent returns an error and never panics, whatever
//! the bytes: feed entries and statements, peer pages and JSON documents, request signature
//! headers, archives, the configuration, and Kinto's answers (served by a real socket).
//!
//! Inputs are arbitrary bytes and, where a valid encoding exists, valid ones damaged at random
//! (bytes flipped, cut short, spliced): random bytes alone rarely get past a magic number.

use crate::common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use tandem::config::{Config, Secret, SourceAuth, SourceConfig};
use tandem::feed::{Checkpoint, Op, Seq, Snapshot, decode_entry, decode_stored_entry};
use tandem::identity::NodeKey;
use tandem::protocol::{signature, wire};
use tandem::source::kinto::{KintoClient, ListTarget};
use tandem::store::{Change, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Valid encodings to damage: a signed page of entries, its checkpoint, and an archive.
struct Samples {
    page: Vec<u8>,
    entry: Vec<u8>,
    checkpoint: Vec<u8>,
    archive: Vec<u8>,
    receipt_json: Vec<u8>,
    signature_input: String,
    signature: String,
    digest: String,
}

fn samples() -> &'static Samples {
    static SAMPLES: OnceLock<Samples> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::from_seed([5; 32]);
        let mut store = Store::open_writer(dir.path(), key.id()).unwrap();
        let changes: Vec<Change> = (0..6)
            .map(|i| Change {
                op: if i == 4 { Op::Delete } else { Op::Put },
                path: format!("/buckets/b/collections/c/records/r{}", i % 5),
                body: if i == 4 {
                    Vec::new()
                } else {
                    format!(r#"{{"data":{{"i":{i}}},"permissions":{{"read":["x"]}}}}"#).into_bytes()
                },
            })
            .collect();
        let checkpoint = store.append(&key, &changes, &[]).unwrap().unwrap();
        let (entries, cp) = store
            .entries_page(key.id(), Seq(0), 100, 1 << 20)
            .unwrap()
            .unwrap();
        let page = wire::encode_page(&cp, entries.iter().map(|e| e.bytes.as_slice()));
        let mut archive = Vec::new();
        tandem::replicate::archive::write_archive(&store, key.id(), &mut archive, None, None)
            .unwrap();
        let receipt = tandem::feed::Receipt::sign(
            &NodeKey::from_seed([6; 32]),
            key.id(),
            checkpoint.head(),
            1,
        );
        let receipt_json = serde_json::to_vec(&wire::ReceiptDoc::from(&receipt)).unwrap();
        let outgoing = signature::Outgoing {
            target: NodeKey::from_seed([6; 32]).id(),
            method: "GET",
            path: "/v1/origins",
            query: Some("after=1"),
        };
        let headers = signature::sign(&key, &outgoing, b"", 1_000);
        Samples {
            page,
            entry: entries[0].bytes.clone(),
            checkpoint: checkpoint.to_bytes().to_vec(),
            archive,
            receipt_json,
            signature_input: headers.signature_input,
            signature: headers.signature,
            digest: headers.content_digest,
        }
    })
}

/// `valid` damaged by `how`: flip bytes, cut, or splice `noise` in.
fn damage(valid: &[u8], how: u8, at: usize, noise: &[u8]) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    if bytes.is_empty() {
        return noise.to_vec();
    }
    let at = at % bytes.len();
    match how % 4 {
        0 => {
            for (i, n) in noise.iter().enumerate() {
                let j = (at + i * 7) % bytes.len();
                bytes[j] ^= n | 1;
            }
        }
        1 => bytes.truncate(at),
        2 => {
            bytes.splice(at..at, noise.iter().copied());
        }
        _ => {
            let end = (at + noise.len()).min(bytes.len());
            bytes.splice(at..end, noise.iter().copied());
        }
    }
    bytes
}

fn read_archive(bytes: &[u8]) {
    let Ok(mut reader) = tandem::protocol::archive::ArchiveReader::new(bytes) else {
        return;
    };
    // Bounded: a damaged archive must end, in an error or its last section.
    for _ in 0..10_000 {
        match reader.next_section() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
    panic!("an archive of {} bytes never ended", bytes.len());
}

fn read_page(bytes: &[u8]) {
    if let Ok((checkpoint, entries)) = wire::decode_page(bytes) {
        let _ = checkpoint.verify();
        for entry in &entries {
            let _ = decode_entry(entry);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn feed_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), how: u8, at: usize) {
        let s = samples();
        for input in [bytes.clone(), damage(&s.entry, how, at, &bytes)] {
            let _ = decode_entry(&input);
            let _ = decode_stored_entry(&input);
        }
        for input in [bytes.clone(), damage(&s.checkpoint, how, at, &bytes)] {
            if let Ok(cp) = Checkpoint::from_bytes(&input) {
                let _ = cp.verify();
            }
            let _ = Snapshot::from_bytes(&input);
        }
    }

    #[test]
    fn peer_pages_and_documents_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000), how: u8, at: usize) {
        let s = samples();
        for input in [bytes.clone(), damage(&s.page, how, at, &bytes)] {
            read_page(&input);
            let _ = wire::decode_base_page(&input);
            let _ = wire::decode_entry_list("entries", &input);
            if let Ok(plain) = wire::decompress(&input) {
                read_page(&plain);
            }
        }
        read_page(&wire::compress(&damage(&s.page, how, at, &bytes)));
        for input in [bytes.clone(), damage(&s.receipt_json, how, at, &bytes)] {
            if let Ok(doc) = serde_json::from_slice::<wire::ReceiptDoc>(&input)
                && let Ok(receipt) = doc.to_receipt()
            {
                let _ = receipt.verify();
            }
            if let Ok(doc) = serde_json::from_slice::<wire::CheckpointDoc>(&input) {
                let _ = doc.to_checkpoint();
            }
        }
    }

    #[test]
    fn signature_headers_never_panic(
        input in ".{0,300}",
        sig in ".{0,200}",
        digest in ".{0,120}",
        target in ".{0,80}",
        how: u8,
        at: usize,
    ) {
        let s = samples();
        let damaged_input = String::from_utf8_lossy(&damage(s.signature_input.as_bytes(), how, at, input.as_bytes())).into_owned();
        let damaged_sig = String::from_utf8_lossy(&damage(s.signature.as_bytes(), how, at, sig.as_bytes())).into_owned();
        let (valid_target, valid_digest) = (NodeKey::from_seed([6; 32]).id().to_string(), &s.digest);
        for (i, g, d, t) in [
            (&input, &sig, &digest, &target),
            (&damaged_input, &damaged_sig, valid_digest, &valid_target),
            (&damaged_input, &s.signature, valid_digest, &valid_target),
            (&s.signature_input, &damaged_sig, valid_digest, &valid_target),
            (&s.signature_input, &s.signature, &digest, &target),
        ] {
            let _ = signature::claimed_signer(Some(i));
            let parts = signature::RequestParts {
                method: "GET",
                path: "/v1/origins",
                query: Some("after=1"),
                content_digest: Some(d),
                target: Some(t),
            };
            let _ = signature::verify(&parts, Some(i), Some(g), NodeKey::from_seed([6; 32]).id(), 1_000);
        }
        if let Ok(check) = signature::DigestCheck::parse(&digest) {
            let _ = check.check(input.as_bytes());
        }
        let _ = signature::check_content_digest(&digest, sig.as_bytes());
    }

    #[test]
    fn archives_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), how: u8, at: usize) {
        let s = samples();
        read_archive(&bytes);
        read_archive(&damage(&s.archive, how, at, &bytes));
        // Damage inside the compression too: the plain archive, damaged, recompressed.
        if let Ok(plain) = zstd::decode_all(s.archive.as_slice()) {
            read_archive(&zstd::encode_all(damage(&plain, how, at, &bytes).as_slice(), 1).unwrap());
        }
    }

    #[test]
    fn configurations_never_panic(text in "(\\[\\[?[a-z]{0,8}\\]\\]?\n|[a-z_]{1,12} = (\"[^\"\n]{0,20}\"|[0-9]{1,6}|true|\\[[^\n]{0,20}\\])\n|.{0,30}\n){0,12}") {
        let _ = Config::parse(std::path::Path::new("tandem.toml"), &text);
    }
}

/// What the fake Kinto answers next: status line, headers, body.
type Answer = (String, Vec<(String, String)>, Vec<u8>);

/// A loopback server answering every request with the current [`Answer`].
struct Fake {
    url: String,
    answer: Arc<Mutex<Answer>>,
    runtime: tokio::runtime::Runtime,
}

fn fake() -> &'static Fake {
    static FAKE: OnceLock<Fake> = OnceLock::new();
    FAKE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let answer: Arc<Mutex<Answer>> =
            Arc::new(Mutex::new(("200 OK".into(), Vec::new(), Vec::new())));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}/v1/", listener.local_addr().unwrap());
        let shared = answer.clone();
        runtime.spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let answer = shared.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let (status, headers, body) = answer.lock().unwrap().clone();
                    let mut out = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n",
                        body.len()
                    )
                    .into_bytes();
                    for (name, value) in headers {
                        out.extend_from_slice(name.as_bytes());
                        out.extend_from_slice(b": ");
                        out.extend_from_slice(value.as_bytes());
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&body);
                    let _ = stream.write_all(&out).await;
                });
            }
        });
        Fake {
            url,
            answer,
            runtime,
        }
    })
}

fn client() -> &'static KintoClient {
    static CLIENT: OnceLock<(tempfile::TempDir, KintoClient)> = OnceLock::new();
    let (_, client) = CLIENT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("password");
        common::write_secret(&password, "s3cret");
        let client = KintoClient::new(&SourceConfig {
            url: fake().url.parse().unwrap(),
            auth: SourceAuth::Basic {
                user: "tandem".into(),
                password: Secret::File(password),
            },
            poll: Duration::from_secs(5),
            concurrency: 1,
        })
        .unwrap();
        (dir, client)
    });
    client
}

/// JSON-ish bodies: Kinto's shapes with arbitrary values, and arbitrary text.
fn kinto_body() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        Just("null".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[0-9]{1,400}",
        "\"[^\"\\\\]{0,20}\"",
        Just("{}".to_owned()),
        Just("[]".to_owned()),
        Just("1e999".to_owned()),
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        (value.clone(), value.clone(), value.clone()).prop_map(|(a, b, c)| format!(
            r#"{{"project_version":{a},"settings":{{"batch_max_requests":{b}}},"capabilities":{{"tandem":{c}}},"user":{{"id":{c}}}}}"#
        ).into_bytes()),
        (value.clone(), value.clone(), value).prop_map(|(a, b, c)| format!(
            r#"{{"data":[{{"id":{a},"last_modified":{b}}},{{"id":"x","last_modified":{c},"deleted":{a}}}]}}"#
        ).into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn kinto_answers_never_panic(
        status in prop_oneof![Just("200 OK"), Just("304 Not Modified"), Just("400 Bad Request"), Just("503 Service Unavailable")],
        etag in "\"?[-0-9a-z]{0,24}\"?",
        next in prop_oneof![Just(String::new()), ".{0,60}", Just("http://127.0.0.1:1/v1/x?_token=1".to_owned())],
        backoff in "[-0-9a-z]{0,6}",
        body in kinto_body(),
    ) {
        let fake = fake();
        let mut headers = vec![("etag".to_owned(), etag), ("backoff".to_owned(), backoff)];
        if !next.is_empty() && !next.contains(['\r', '\n']) {
            headers.push(("next-page".to_owned(), next));
        }
        *fake.answer.lock().unwrap() = (status.to_owned(), headers, body);
        let client = client();
        fake.runtime.block_on(async {
            let _ = client.server_info().await;
            let _ = client
                .list(ListTarget::Path { path: "buckets", since: Some(1), limit: None }, Some(1))
                .await;
            let mut pages = client.pages("buckets/b/collections", None, None);
            // A page that names itself as the next one would loop: a few pages are enough.
            for _ in 0..3 {
                match pages.next().await {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        });
    }
}

/// The samples the properties damage are valid to begin with, so that damage reaches past the
/// first checks.
#[test]
fn the_samples_are_valid() {
    let s = samples();
    let (checkpoint, entries) = wire::decode_page(&s.page).unwrap();
    checkpoint.verify().unwrap();
    assert_eq!(entries.len(), 6);
    decode_entry(&s.entry).unwrap();
    let doc: wire::ReceiptDoc = serde_json::from_slice(&s.receipt_json).unwrap();
    doc.to_receipt().unwrap().verify().unwrap();
    let mut reader = tandem::protocol::archive::ArchiveReader::new(s.archive.as_slice()).unwrap();
    let mut sections = 0;
    while reader.next_section().unwrap().is_some() {
        sections += 1;
    }
    assert!(sections >= 1);
    let target = NodeKey::from_seed([6; 32]).id();
    let parts = signature::RequestParts {
        method: "GET",
        path: "/v1/origins",
        query: Some("after=1"),
        content_digest: Some(&s.digest),
        target: Some(&target.to_string()),
    };
    signature::verify(
        &parts,
        Some(&s.signature_input),
        Some(&s.signature),
        target,
        1_000,
    )
    .unwrap();
}
