//! A fault-injecting TCP proxy in front of a real server, for failures the server cannot
//! produce on demand: an error status, a connection dropped or reset before any answer, an
//! answer held back, cut off in the middle of its body, or with a byte flipped.
//! Each connection carries one request (the proxy asks the server to close after answering);
//! a request body (a push) is passed through as it comes.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward untouched.
    None,
    /// Answer this status (with `Retry-After: 1`) without forwarding.
    Status(u16),
    /// Answer this status without `Retry-After` and without forwarding: a server failing on
    /// its own, not one asking to wait.
    Failure(u16),
    /// Forward, but cut the answer after this many bytes and close.
    CutAfter(usize),
    /// Forward, but flip every bit of the answer's byte at this offset.
    FlipAt(usize),
    /// Answer `204 No Content` without forwarding (a server that says it has nothing).
    NoContent,
    /// Read the request, then close the connection without answering.
    Drop,
    /// Read the request, then reset the connection (RST: `SO_LINGER` 0, then close).
    Reset,
    /// Forward, but hold the answer back this many milliseconds first.
    Delay(u64),
}

/// A running proxy.
pub struct Proxy {
    /// `http://127.0.0.1:PORT/v1/` when the upstream is a Kinto root.
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

/// Something to do (say, write to the server) when a matching request passes.
pub type Hook =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

struct State {
    fault: Fault,
    /// Requests to let through before the fault applies.
    skip: usize,
    /// How many requests the fault applies to before requests are forwarded again (`None`:
    /// all of them).
    times: Option<usize>,
    /// Requests seen.
    requests: usize,
    /// Head of the last request (request line and headers).
    last_head: String,
    /// Runs once, before forwarding the first request whose head contains the needle.
    hook: Option<(String, Hook)>,
}

impl Proxy {
    /// Starts a proxy to `upstream` (`host:port`); `path` is appended to build [`Proxy::url`].
    pub async fn start(upstream: String, path: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            fault: Fault::None,
            skip: 0,
            times: None,
            requests: 0,
            last_head: String::new(),
            hook: None,
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (upstream, state) = (upstream.clone(), shared.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, &state).await;
                });
            }
        });
        Proxy { url, state, task }
    }

    /// Applies `fault` to every request after the next `skip` ones.
    pub fn set(&self, fault: Fault, skip: usize) {
        let mut s = self.state.lock().unwrap();
        s.fault = fault;
        s.skip = skip;
        s.times = None;
    }

    /// Applies `fault` to `times` requests after the next `skip` ones, then forwards again.
    pub fn set_times(&self, fault: Fault, skip: usize, times: usize) {
        let mut s = self.state.lock().unwrap();
        s.fault = fault;
        s.skip = skip;
        s.times = Some(times);
    }

    /// Requests seen so far.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    /// Runs `action` before forwarding the first request whose head contains `needle`.
    pub fn when(&self, needle: &str, action: Hook) {
        self.state.lock().unwrap().hook = Some((needle.to_owned(), action));
    }

    /// The head (request line and headers) of the last request.
    pub fn last_head(&self) -> String {
        self.state.lock().unwrap().last_head.clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut client: TcpStream, upstream: &str, state: &Mutex<State>) -> std::io::Result<()> {
    // Read the request head; what follows it (a body) is passed on below.
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body_start = head.split_off(end);
    let head_text = String::from_utf8_lossy(&head).into_owned();
    let hook = {
        let mut s = state.lock().unwrap();
        match &s.hook {
            Some((needle, _)) if head_text.contains(needle.as_str()) => {
                s.hook.take().map(|(_, h)| h)
            }
            _ => None,
        }
    };
    if let Some(action) = hook {
        action().await;
    }
    let fault = {
        let mut s = state.lock().unwrap();
        s.requests += 1;
        s.last_head = head_text;
        if s.skip > 0 {
            s.skip -= 1;
            Fault::None
        } else if s.times == Some(0) {
            Fault::None
        } else {
            s.times = s.times.map(|n| n - 1);
            s.fault
        }
    };
    match fault {
        Fault::Drop => return client.shutdown().await,
        Fault::Reset => {
            client.set_zero_linger()?;
            drop(client);
            return Ok(());
        }
        Fault::Delay(ms) => tokio::time::sleep(std::time::Duration::from_millis(ms)).await,
        _ => {}
    }
    if fault == Fault::NoContent {
        client
            .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            .await?;
        return client.shutdown().await;
    }
    if let Fault::Status(code) | Fault::Failure(code) = fault {
        let body = format!(r#"{{"code":{code},"errno":201,"error":"Service Unavailable"}}"#);
        let retry_after = if matches!(fault, Fault::Status(_)) {
            "Retry-After: 1\r\n"
        } else {
            ""
        };
        let answer = format!(
            "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\n{retry_after}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        client.write_all(answer.as_bytes()).await?;
        return client.shutdown().await;
    }
    // Ask the server to close after answering, so one connection is one request.
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut rewritten = String::new();
    for line in text.split("\r\n") {
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        if line.is_empty() {
            break;
        }
        rewritten.push_str(line);
        rewritten.push_str("\r\n");
    }
    rewritten.push_str("Connection: close\r\n\r\n");
    let server = TcpStream::connect(upstream).await?;
    let (mut from_server, mut to_server) = server.into_split();
    let (mut from_client, mut client) = client.into_split();
    to_server.write_all(rewritten.as_bytes()).await?;
    to_server.write_all(&body_start).await?;
    // The rest of the body, as the client sends it (the server closes after answering).
    let upload = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
    });
    let mut sent = 0usize;
    loop {
        let n = from_server.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let take = match fault {
            Fault::CutAfter(limit) => n.min(limit.saturating_sub(sent)),
            _ => n,
        };
        if let Fault::FlipAt(at) = fault
            && (sent..sent + take).contains(&at)
        {
            buf[at - sent] ^= 0xff;
        }
        client.write_all(&buf[..take]).await?;
        sent += take;
        if take < n {
            break; // cut: drop the connection mid-answer
        }
    }
    upload.abort();
    client.shutdown().await
}
