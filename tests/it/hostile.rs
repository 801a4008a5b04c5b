//! Servers that tandem talks to, turned hostile: a Kinto source or target, and a peer, each a
//! small server on loopback that answers what an attacker would (redirects and `Next-Page`s to
//! another host, endless or oversized bodies, malformed JSON, wrong types, huge numbers,
//! invalid header bytes, bodies cut short). Each answer must end in a clear error, never in a
//! panic, unbounded buffering, or a request (with credentials or a signature) to the other
//! host, which is a second listener that records whatever reaches it.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem::config::{Secret, SourceAuth, SourceConfig};
use tandem::feed::Seq;
use tandem::identity::NodeKey;
use tandem::peer::{PeerClient, PeerError};
use tandem::source::kinto::{KintoClient, KintoError, ListResult, ListTarget};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the hostile server writes back.
enum Reply {
    /// These bytes, then close.
    Raw(Vec<u8>),
    /// This head, then body bytes for as long as the client reads.
    Endless(Vec<u8>),
}

/// `status` with `headers` and `body` (Content-Length set), connection closed after.
fn answer(status: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Reply {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    Reply::Raw(out)
}

fn json(body: &str) -> Reply {
    answer(
        "200 OK",
        &[("Content-Type", b"application/json")],
        body.as_bytes(),
    )
}

type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// A loopback HTTP server answering each request with its handler's reply, and recording the
/// request heads it saw.
struct Server {
    addr: String,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(handler: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (handler, seen) = (handler.clone(), seen.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, &handler, &seen).await;
                });
            }
        });
        Server { addr, heads, task }
    }

    /// A server that answers `200 {}` to anything: the other host, which must see nothing.
    async fn other() -> Server {
        Server::start(|_| json("{}")).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    handler: &Handler,
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    // Read (and drop) the request body, so that the client sees the answer, not a reset.
    let length = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = head.len() - end;
    while body < length {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        body += n;
    }
    seen.lock().unwrap().push(text.clone());
    match handler(&text) {
        Reply::Raw(bytes) => stream.write_all(&bytes).await?,
        Reply::Endless(head) => {
            stream.write_all(&head).await?;
            let chunk = vec![b' '; 64 << 10];
            loop {
                stream.write_all(&chunk).await?;
            }
        }
    }
    stream.shutdown().await
}

/// The request line's target (`/v1/buckets?…`).
fn target(head: &str) -> &str {
    head.split_whitespace().nth(1).unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// Kinto

const ROOT: &str = r#"{"project_version":"19.0.0","settings":{"batch_max_requests":25},"capabilities":{},"user":{"id":"account:tandem"}}"#;

/// The error of `client`'s first read of the bucket list.
async fn first_list_error(client: &KintoClient) -> KintoError {
    client
        .list(
            ListTarget::Path {
                path: "buckets",
                since: None,
                limit: None,
            },
            None,
        )
        .await
        .unwrap_err()
}

fn kinto_client(server: &Server, dir: &std::path::Path) -> KintoClient {
    let password = dir.join("password");
    common::write_secret(&password, "s3cret");
    KintoClient::new(&SourceConfig {
        url: server.url("/v1/").parse().unwrap(),
        auth: SourceAuth::Basic {
            user: "tandem".into(),
            password: Secret::File(password),
        },
        poll: Duration::from_secs(5),
        concurrency: 1,
    })
    .unwrap()
}

/// Runs `tandem sync` against the Kinto at `kinto` (no peers); returns its exit code and
/// output.
fn sync_with_source(dir: &std::path::Path, kinto: &str) -> (Option<i32>, String) {
    let password = dir.join("password");
    common::write_secret(&password, "s3cret");
    let config = dir.join("tandem.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"home\"\ndata_dir = \"data\"\nlisten = \"127.0.0.1:0\"\n\
             [source]\nkind = \"kinto\"\nurl = \"{kinto}\"\nuser = \"tandem\"\npassword_file = \"password\"\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--config")
        .arg(&config)
        .arg("sync")
        .env_remove("TANDEM_CONFIG")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kinto_redirect_is_not_followed_and_the_credentials_stay_home() {
    let other = Server::other().await;
    let location = other.url("/v1/");
    let kinto =
        Server::start(move |_| answer("302 Found", &[("Location", location.as_bytes())], b""))
            .await;
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = sync_with_source(dir.path(), &kinto.url("/v1/"));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("does not follow redirects"), "{text}");
    assert!(text.contains(&other.addr), "names where it pointed: {text}");
    assert_eq!(kinto.heads().len(), 1);
    assert!(
        kinto.heads()[0].contains("authorization: Basic"),
        "{:?}",
        kinto.heads()
    );
    assert!(other.heads().is_empty(), "{:?}", other.heads());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_page_is_followed_only_on_the_configured_server_under_its_root() {
    let other = Server::other().await;
    let elsewhere = other.url("/v1/buckets?_token=stolen");
    let kinto = Server::start(move |head| match target(head) {
        "/v1/" => json(ROOT),
        t if t.starts_with("/v1/buckets?_sort") => answer(
            "200 OK",
            &[("ETag", b"\"10\""), ("Next-Page", elsewhere.as_bytes())],
            br#"{"data":[]}"#,
        ),
        "/v1/buckets?_token=stolen" => answer("200 OK", &[("ETag", b"\"10\"")], br#"{"data":[]}"#),
        _ => answer("404 Not Found", &[], br#"{"message":"no"}"#),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = kinto_client(&kinto, dir.path());
    let mut pages = client.pages("buckets", None, None);
    let Some(ListResult::Page(first)) = pages.next().await.unwrap() else {
        panic!("a page")
    };
    assert_eq!(
        first.next.as_ref().unwrap().as_str(),
        kinto.url("/v1/buckets?_token=stolen")
    );
    assert!(matches!(
        pages.next().await.unwrap(),
        Some(ListResult::Page(_))
    ));
    assert!(pages.next().await.unwrap().is_none());
    let heads = kinto.heads();
    assert!(
        heads.iter().any(|h| target(h) == "/v1/buckets?_token=stolen" && h.contains("authorization: Basic")),
        "{heads:?}"
    );
    assert!(other.heads().is_empty(), "{:?}", other.heads());

    // A Next-Page outside /v1/ on the same host is refused before any request.
    let kinto = Server::start(|head| match target(head) {
        "/v1/" => json(ROOT),
        t if t.starts_with("/v1/buckets?_sort") => answer(
            "200 OK",
            &[("Next-Page", b"http://127.0.0.1:1/admin/reset?x=1")],
            br#"{"data":[]}"#,
        ),
        _ => json("{}"),
    })
    .await;
    let client = kinto_client(&kinto, dir.path());
    let e = first_list_error(&client).await;
    assert!(matches!(e, KintoError::NextPageElsewhere { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("/admin/reset") && text.contains("outside the root path"),
        "{text}"
    );
    assert!(!tandem::backoff::RetryHint::heals(&e));
    assert_eq!(kinto.heads().len(), 1);

    // Through the daemon's code path: `tandem sync` reports it and exits 1.
    let (code, text) = sync_with_source(dir.path(), &kinto.url("/v1/"));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("outside the root path"), "{text}");
    assert!(
        kinto
            .heads()
            .iter()
            .all(|h| !target(h).starts_with("/admin")),
        "{:?}",
        kinto.heads()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_endless_kinto_answers_are_cut_at_their_bound() {
    let dir = tempfile::tempdir().unwrap();
    // The root, streamed without end.
    let kinto = Server::start(|_| {
        Reply::Endless(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"project_version\":\"".to_vec())
    })
    .await;
    let started = std::time::Instant::now();
    let e = kinto_client(&kinto, dir.path())
        .server_info()
        .await
        .unwrap_err();
    println!("endless root cut after {:?}: {e}", started.elapsed());
    assert!(
        matches!(e, KintoError::TooLarge { limit, .. } if limit == tandem::source::kinto::MAX_ROOT),
        "{e}"
    );
    assert!(e.to_string().contains("larger than"), "{e}");

    // A list page that declares more than the bound is refused before it is read.
    let kinto = Server::start(|head| match target(head) {
        "/v1/" => json(ROOT),
        _ => Reply::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n{\"data\":[".to_vec(),
        ),
    })
    .await;
    let client = kinto_client(&kinto, dir.path());
    let e = client.object("buckets/b").await.unwrap_err();
    assert!(matches!(e, KintoError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("paginate_by"), "{e}");
    let e = client
        .batch(&[serde_json::value::RawValue::from_string("{}".into()).unwrap()])
        .await
        .unwrap_err();
    assert!(matches!(e, KintoError::TooLarge { .. }), "{e}");

    // An error answer without end: its message is cut, the status still reported.
    let kinto = Server::start(|_| {
        Reply::Endless(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n".to_vec())
    })
    .await;
    let e = kinto_client(&kinto, dir.path())
        .server_info()
        .await
        .unwrap_err();
    assert!(matches!(e, KintoError::Status { status: 400, .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_kinto_answers_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not json",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            "not a Kinto root",
        ),
        (
            "wrong types",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 44\r\n\r\n{:<44}",
                r#"{"project_version":5,"user":{"id":[]}}"#
            )
            .into_bytes(),
            "not a Kinto root",
        ),
        (
            "huge number",
            {
                let body = format!(
                    r#"{{"project_version":"1","settings":{{"batch_max_requests":1{}}},"user":{{"id":"a"}}}}"#,
                    "0".repeat(400)
                );
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            },
            "not a Kinto root",
        ),
        (
            "cut short",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"project_version\":".to_vec(),
            "cut short",
        ),
        (
            "chunked, cut short",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"project_versio"
                .to_vec(),
            "cut short",
        ),
        (
            "no user (anonymous)",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                r#"{"project_version":"1"}"#.len(),
                r#"{"project_version":"1"}"#
            )
            .into_bytes(),
            "did not accept the credentials",
        ),
        ("empty", Vec::new(), "cannot reach Kinto"),
        (
            "garbage",
            b"\x00\xff\xfe garbage\r\n\r\n".to_vec(),
            "cannot reach Kinto",
        ),
        (
            "redirect without Location",
            b"HTTP/1.1 307 Temporary Redirect\r\nContent-Length: 0\r\n\r\n".to_vec(),
            "redirecting to nowhere",
        ),
        (
            "redirect with invalid UTF-8",
            b"HTTP/1.1 301 Moved\r\nLocation: http://\xff\xfe/\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
            "does not follow redirects",
        ),
    ];
    for (what, bytes, expected) in cases {
        let kinto = Server::start(move |_| Reply::Raw(bytes.clone())).await;
        let e = kinto_client(&kinto, dir.path())
            .server_info()
            .await
            .unwrap_err();
        println!("{what}: {e}");
        assert!(e.to_string().contains(expected), "{what}: {e}");
    }

    // A list page whose headers are invalid: Next-Page not UTF-8, ETag and Backoff nonsense.
    let kinto = Server::start(|_| {
        answer(
            "200 OK",
            &[
                ("ETag", b"\"99999999999999999999999999\""),
                ("Backoff", b"\xff\xff"),
                ("Next-Page", b"http://\xff/v1/x"),
            ],
            br#"{"data":[{"id":"a","last_modified":1e999}]}"#,
        )
    })
    .await;
    let client = kinto_client(&kinto, dir.path());
    let e = client
        .list(
            ListTarget::Path {
                path: "buckets",
                since: Some(1),
                limit: None,
            },
            Some(1),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unreadable Next-Page"), "{e}");
    // Wrong types in a list and in a batch answer.
    for body in [r#"{"data":{}}"#, r#"{"data":[1,}"#, r#"[]"#] {
        let kinto = Server::start(move |_| json(body)).await;
        let e = first_list_error(&kinto_client(&kinto, dir.path())).await;
        assert!(e.to_string().contains("not a Kinto list"), "{body}: {e}");
    }
    for body in [
        r#"{"responses":[{"status":"200"}]}"#,
        r#"{"responses":[{"status":200,"body":{"data":{"last_modified":1e400}}}]}"#,
        r#"{"responses":[]}"#,
    ] {
        let kinto = Server::start(move |_| json(body)).await;
        let e = kinto_client(&kinto, dir.path())
            .batch(&[serde_json::value::RawValue::from_string("{}".into()).unwrap()])
            .await
            .unwrap_err();
        println!("batch {body}: {e}");
        assert!(matches!(e, KintoError::Protocol { .. }), "{body}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_target_that_redirects_gets_nothing_and_sends_nothing_elsewhere() {
    let other = Server::other().await;
    let location = other.url("/v1/batch");
    let target = Server::start(move |head| match target(head) {
        "/v1/" => json(ROOT),
        _ => answer(
            "307 Temporary Redirect",
            &[("Location", location.as_bytes())],
            b"",
        ),
    })
    .await;
    let client = {
        let dir = tempfile::tempdir().unwrap();
        kinto_client(&target, dir.path())
    };
    let e = client
        .batch(&[serde_json::value::RawValue::from_string(
            r#"{"method":"PUT","path":"/buckets/b","body":{"data":{}}}"#.into(),
        )
        .unwrap()])
        .await
        .unwrap_err();
    assert!(
        matches!(e, KintoError::Redirected { status: 307, .. }),
        "{e}"
    );
    assert!(other.heads().is_empty(), "{:?}", other.heads());
}

// ---------------------------------------------------------------------------------------------
// Peers

fn peer_client(server: &Server) -> PeerClient {
    PeerClient::new(
        "evil",
        NodeKey::from_seed([32; 32]).id(),
        &server.url("/").parse().unwrap(),
        Arc::new(NodeKey::from_seed([31; 32])),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_redirect_is_not_followed_and_no_signed_request_leaves() {
    let other = Server::other().await;
    let location = other.url("/v1/origins");
    let evil = Server::start(move |_| {
        answer(
            "301 Moved Permanently",
            &[("Location", location.as_bytes())],
            b"",
        )
    })
    .await;
    let e = peer_client(&evil).origins().await.unwrap_err();
    assert!(
        matches!(e, PeerError::Redirected { status: 301, .. }),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("peer evil") && text.contains(&other.addr),
        "{text}"
    );
    assert!(other.heads().is_empty(), "{:?}", other.heads());

    // Through `tandem sync` with the peer configured to pull from: exit 1, the peer named.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tandem.toml");
    let origin = NodeKey::from_seed([32; 32]).id();
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"home\"\ndata_dir = \"data\"\nlisten = \"127.0.0.1:0\"\n\
             [[peer]]\nname = \"evil\"\nurl = \"{}\"\nid = \"{origin}\"\npull = [\"{origin}\"]\n",
            evil.url("/")
        ),
    )
    .unwrap();
    common::tandem(&config, &["init"], 0);
    let out = common::tandem(&config, &["sync"], 1);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("peer evil") && text.contains("does not follow redirects"),
        "{text}"
    );
    assert!(other.heads().is_empty(), "{:?}", other.heads());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_endless_peer_answers_are_cut_at_their_bound() {
    // JSON answers: 8 MiB.
    let evil = Server::start(|_| {
        Reply::Endless(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"origins\":[".to_vec(),
        )
    })
    .await;
    let e = peer_client(&evil).origins().await.unwrap_err();
    assert!(
        matches!(e, PeerError::TooLarge { limit, .. } if limit == 8 << 20),
        "{e}"
    );
    // Pages: declared too large, refused at once; streamed without end, cut at the bound.
    let evil = Server::start(|_| {
        Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\nTNDP".to_vec())
    })
    .await;
    let origin = NodeKey::from_seed([33; 32]).id();
    let e = peer_client(&evil)
        .page(origin, Seq(0), Duration::ZERO)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(e, PeerError::TooLarge { limit, .. } if limit == tandem::protocol::wire::MAX_PAGE),
        "{e}"
    );
    let evil = Server::start(|_| Reply::Endless(b"HTTP/1.1 200 OK\r\n\r\nTNDP".to_vec())).await;
    let started = std::time::Instant::now();
    let e = peer_client(&evil)
        .page(origin, Seq(0), Duration::ZERO)
        .await
        .err()
        .unwrap();
    println!("endless page cut after {:?}: {e}", started.elapsed());
    assert!(matches!(e, PeerError::TooLarge { .. }), "{e}");
    // A zstd bomb: small on the wire, past the bound once decompressed.
    let bomb = tandem::protocol::wire::compress(&vec![0u8; tandem::protocol::wire::MAX_PAGE + 10]);
    let evil =
        Server::start(move |_| answer("200 OK", &[("Content-Encoding", b"zstd")], &bomb)).await;
    let e = peer_client(&evil)
        .page(origin, Seq(0), Duration::ZERO)
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("larger than"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_peer_answers_are_clear_errors() {
    let origin = NodeKey::from_seed([34; 32]).id();
    let big = format!("1{}", "0".repeat(400));
    let origins_cases: Vec<(String, &str)> = vec![
        ("{".into(), "invalid body"),
        (r#"{"origins":{}}"#.into(), "invalid body"),
        (r#"{"origins":[{"id":5}]}"#.into(), "invalid body"),
        (
            format!(r#"{{"origins":[{{"id":"{origin}","head":{{"seq":{big},"hash":"x"}}}}]}}"#),
            "invalid body",
        ),
    ];
    for (body, expected) in origins_cases {
        let b = body.clone();
        let evil = Server::start(move |_| json(&b)).await;
        let e = peer_client(&evil).origins().await.unwrap_err();
        println!("origins {}: {e}", &body[..body.len().min(40)]);
        assert!(e.to_string().contains(expected), "{body}: {e}");
    }
    // Pages: garbage, truncated, cut mid-body, invalid header bytes.
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ngarbage".to_vec(),
            "invalid body",
        ),
        (
            "truncated page",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nTNDP\x01abcd".to_vec(),
            "invalid body",
        ),
        (
            "closed mid-body",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\nTNDP\x01".to_vec(),
            "cut short",
        ),
        (
            "invalid encoding header",
            b"HTTP/1.1 200 OK\r\nContent-Encoding: \xff\xfe\r\nContent-Length: 4\r\n\r\nTNDP"
                .to_vec(),
            "invalid body",
        ),
        (
            "not zstd",
            b"HTTP/1.1 200 OK\r\nContent-Encoding: zstd\r\nContent-Length: 4\r\n\r\nTNDP".to_vec(),
            "zstd",
        ),
        (
            "error without end",
            b"HTTP/1.1 500 Oops\r\nContent-Length: 3\r\n\r\n\xff\xfe\xfd".to_vec(),
            "answered 500",
        ),
    ];
    for (what, bytes, expected) in cases {
        let evil = Server::start(move |_| Reply::Raw(bytes.clone())).await;
        let e = peer_client(&evil)
            .page(origin, Seq(0), Duration::ZERO)
            .await
            .err()
            .unwrap();
        println!("page, {what}: {e}");
        assert!(e.to_string().contains(expected), "{what}: {e}");
    }
    // A receipt that is not one.
    for body in [r#"{"holder":1}"#, r#"{}"#, "null"] {
        let evil = Server::start(move |_| json(body)).await;
        let key = NodeKey::from_seed([35; 32]);
        let head = tandem::feed::Head {
            seq: Seq(1),
            hash: tandem::feed::EntryHash([0; 32]),
        };
        let cp = tandem::feed::Checkpoint::sign(&key, head, 1);
        let e = peer_client(&evil)
            .push(origin, &cp, b"page")
            .await
            .err()
            .unwrap();
        println!("receipt {body}: {e}");
        assert!(matches!(e, PeerError::Invalid { .. }), "{body}: {e}");
    }
}
