//! Tests against real Kinto servers (from the virtualenv `scripts/test` installs).

mod common;

use std::path::Path;

use common::kinto::{Kinto, Options, PASSWORD};
use serde_json::json;
use tandem::config::{Config, SourceConfig};
use tandem::source::kinto::{KintoClient, KintoError, ListResult, ListTarget};

fn source(dir: &Path, url: &str, user: &str, password: &str) -> SourceConfig {
    std::fs::write(dir.join("pw"), format!("{password}\n")).unwrap();
    let text = format!(
        "[node]\nname = \"t\"\n[source]\nkind = \"kinto\"\nurl = \"{url}\"\nuser = \"{user}\"\npassword_file = \"pw\"\n"
    );
    Config::parse(&dir.join("t.toml"), &text)
        .unwrap()
        .source
        .unwrap()
}

#[tokio::test]
async fn the_client_checks_credentials_and_reads_capabilities() {
    let kinto = Kinto::start(Options { history: true }).await;
    let dir = tempfile::tempdir().unwrap();

    let client = KintoClient::new(&source(dir.path(), &kinto.url, "tandem", PASSWORD)).unwrap();
    let info = client.server_info().await.unwrap();
    assert_eq!(info.user_id, "account:tandem");
    assert_eq!(info.version, "26.5.0");
    assert_eq!(info.batch_max_requests, Some(200));
    assert!(info.history);

    // Kinto answers a wrong password as if anonymous; the client must notice.
    let wrong = KintoClient::new(&source(dir.path(), &kinto.url, "tandem", "nope")).unwrap();
    let err = wrong.server_info().await.unwrap_err();
    assert!(matches!(err, KintoError::Unauthorized { .. }), "{err}");
    assert!(!err.to_string().contains("nope"));

    let plain = Kinto::start(Options { history: false }).await;
    let client = KintoClient::new(&source(dir.path(), &plain.url, "tandem", PASSWORD)).unwrap();
    assert!(!client.server_info().await.unwrap().history);
}

#[tokio::test]
async fn lists_page_keep_bytes_and_answer_304() {
    let kinto = Kinto::start(Options { history: false }).await;
    kinto
        .ok("alice", "PUT", "buckets/b", Some(json!({"data": {}})))
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/b/collections/c",
            Some(json!({"data": {}})),
        )
        .await;
    for i in 0..5 {
        kinto
            .ok(
                "alice",
                "PUT",
                &format!("buckets/b/collections/c/records/r{i}"),
                Some(json!({"data": {"i": i}})),
            )
            .await;
    }
    // A body whose numbers and escapes Kinto writes its own way: we must keep Kinto's bytes.
    let raw = r#"{"data":{"f":1.50,"big":12345678901234567890,"u":"é","e":1e3}}"#;
    let r = tandem::net::client_builder()
        .build()
        .unwrap()
        .put(format!("{}buckets/b/collections/c/records/odd", kinto.url))
        .basic_auth("alice", Some(PASSWORD))
        .header("Content-Type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    let dir = tempfile::tempdir().unwrap();
    let client = KintoClient::new(&source(dir.path(), &kinto.url, "tandem", PASSWORD)).unwrap();
    let path = "buckets/b/collections/c/records";
    let mut pages = 0;
    let mut items = Vec::new();
    let mut first_etag = None;
    let mut next = None;
    loop {
        let target = match &next {
            None => ListTarget::Path {
                path,
                since: Some(0),
                limit: Some(2),
            },
            Some(url) => ListTarget::Next(url),
        };
        let ListResult::Page(page) = client.list(target, None).await.unwrap() else {
            panic!("304 without a condition")
        };
        pages += 1;
        first_etag = first_etag.or(page.etag);
        items.extend(page.items);
        match page.next {
            Some(url) => next = Some(url),
            None => break,
        }
    }
    assert_eq!((pages, items.len()), (3, 6));
    let stamps: Vec<i64> = items
        .iter()
        .map(|i| {
            serde_json::from_str::<serde_json::Value>(i.get()).unwrap()["last_modified"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "ascending: {stamps:?}"
    );
    let etag = first_etag.unwrap();
    assert_eq!(etag, *stamps.last().unwrap());

    // Exactly the bytes Kinto serves for the object.
    let odd = client
        .object("buckets/b/collections/c/records/odd")
        .await
        .unwrap()
        .unwrap();
    let served = tandem::net::client_builder()
        .build()
        .unwrap()
        .get(format!("{}buckets/b/collections/c/records/odd", kinto.url))
        .basic_auth("tandem", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(odd.get(), served);
    let listed = items.last().unwrap().get();
    assert!(
        listed.contains("12345678901234567890") && listed.contains(r#""f":1.5"#),
        "{listed}"
    );

    assert!(matches!(
        client
            .list(
                ListTarget::Path {
                    path,
                    since: Some(etag),
                    limit: None
                },
                Some(etag)
            )
            .await
            .unwrap(),
        ListResult::NotModified
    ));
    assert!(
        client
            .object("buckets/b/collections/c/records/missing")
            .await
            .unwrap()
            .is_none()
    );
    assert!(client.object("buckets/nope").await.unwrap().is_none());
}
