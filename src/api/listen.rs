//! The HTTP listener's accept loop: hyper's HTTP/1 server with time limits and a connection
//! cap, because the node listens on the network and anyone can open sockets to it.
//!
//! `axum::serve` sets no limit at all: a client that opens sockets and sends nothing holds a
//! descriptor each, for ever, and enough of them stop the node from accepting `/healthz` (or
//! from opening its own store). Here:
//!
//! - **Request heads and idle keep-alive** ([`Limits::header_timeout`]): hyper's
//!   `header_read_timeout` runs from the moment a connection waits for a request (a new
//!   connection, or a kept-alive one after its last answer) until the head is complete; a
//!   client that sends nothing, or sends its head slowly (slowloris), is disconnected then.
//! - **Request bodies** ([`TimedBody`]): a body must arrive at [`BODY_MIN_RATE`] on average
//!   after a grace of [`BODY_GRACE`]; a trickle slower than that fails the read (the handler
//!   answers `400`) and the connection is closed.
//! - **Connections** ([`Limits::max_connections`]): at the cap, a new connection takes the
//!   place of the one idle the longest (no request in progress), which is closed; when every
//!   connection is busy the new one is closed at once. The accept loop keeps draining the
//!   backlog either way, so a fresh `/healthz` is answered even while the cap is full of idle
//!   sockets. The default cap derives from the process's descriptor limit, raised to its hard
//!   limit at start, keeping [`RESERVED_DESCRIPTORS`] for the store, outgoing requests and the
//!   admin socket.
//!
//! Shutdown is graceful, like `axum::serve`'s: the loop stops accepting, idle connections
//! close, requests in progress finish (long polls end on the node's own stop token).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service as _;
use tracing::{debug, warn};

/// Default time a client has to send a complete request head, counted from when the
/// connection starts waiting for it; also how long an idle keep-alive connection stays open.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a request body may take before [`BODY_MIN_RATE`] applies.
pub const BODY_GRACE: Duration = Duration::from_secs(10);
/// Slowest average rate (bytes per second) at which a request body may arrive after
/// [`BODY_GRACE`]: a full peer page (about 17 MiB) on a link at this floor takes 18 minutes.
pub const BODY_MIN_RATE: u64 = 16 * 1024;
/// Descriptors kept out of the connection cap: standard streams, the runtime's own, SQLite's
/// database, WAL and shared-memory files for the writer, the reader and commands, outgoing
/// requests to peers and the source, the admin socket and its clients.
pub const RESERVED_DESCRIPTORS: u64 = 32;
/// The default cap never exceeds this, however high the descriptor limit: each connection
/// costs buffers and a task, and a node serves a handful of peers and monitors.
pub const MAX_CONNECTIONS_CEILING: usize = 4096;

/// How long an evicted connection may take to let go of its slot before the new one is
/// closed instead.
const EVICT_WAIT: Duration = Duration::from_secs(1);
/// Pause after an accept failure that says the process or system is out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The listener's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// See [`BODY_GRACE`].
    pub body_grace: Duration,
    /// See [`BODY_MIN_RATE`].
    pub body_min_rate: u64,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl Limits {
    /// The defaults, with `max_connections` when given (`[node] max_connections`), else
    /// derived from the descriptor limit (see `cap_for`).
    /// Raises the descriptor limit either way (see [`raise_descriptor_limit`]).
    pub fn new(max_connections: Option<usize>) -> Limits {
        let descriptors = raise_descriptor_limit();
        let max_connections = match max_connections {
            Some(n) => {
                if n as u64 + RESERVED_DESCRIPTORS > descriptors {
                    warn!(
                        max_connections = n,
                        descriptors,
                        "max_connections leaves fewer than 32 descriptors for the store and outgoing requests"
                    );
                }
                n
            }
            None => cap_for(descriptors),
        };
        Limits {
            header_timeout: HEADER_TIMEOUT,
            body_grace: BODY_GRACE,
            body_min_rate: BODY_MIN_RATE,
            max_connections,
        }
    }
}

/// Raises the soft descriptor limit to the hard one (systemd's default soft limit is 1024) and
/// returns the limit in force.
pub fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// The connection cap for the descriptor limit: the limit less [`RESERVED_DESCRIPTORS`] (half
/// the limit when that is smaller, for very low limits), at most [`MAX_CONNECTIONS_CEILING`],
/// at least 1.
fn cap_for(limit: u64) -> usize {
    let reserve = RESERVED_DESCRIPTORS.min(limit / 2);
    (limit.saturating_sub(reserve) as usize).clamp(1, MAX_CONNECTIONS_CEILING)
}

/// What the accept loop knows of one connection.
struct Conn {
    /// Requests in progress, from the head parsed until the answer is written.
    busy: AtomicUsize,
    /// When the last request ended (ms since the loop started), or the connection opened.
    idle_since: AtomicU64,
    /// Cancelled to close the connection at once (an eviction).
    evict: CancellationToken,
}

/// The open connections, for choosing which idle one gives way.
#[derive(Default)]
struct Registry {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Registry {
    fn add(&self, conn: Arc<Conn>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, conn);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the connection idle the longest; false when every connection is busy.
    fn evict_idlest(&self) -> bool {
        let conns = self.lock();
        let victim = conns
            .values()
            .filter(|c| c.busy.load(Ordering::Acquire) == 0 && !c.evict.is_cancelled())
            .min_by_key(|c| c.idle_since.load(Ordering::Acquire));
        match victim {
            Some(c) => {
                c.evict.cancel();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves `router` on `listener` with `limits` until `shutdown` resolves, then waits for the
/// open connections to finish (idle ones close at once).
pub async fn serve(
    listener: Arc<TcpListener>,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let registry = Arc::new(Registry::default());
    let started = Instant::now();
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE) or memory: wait for some to be
                    // released; a connection that failed before it was accepted: go on.
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) {
                        warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            },
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // At the cap: the connection idle the longest gives way to this one.
                let permit = if registry.evict_idlest() {
                    tokio::time::timeout(EVICT_WAIT, slots.clone().acquire_owned())
                        .await
                        .ok()
                        .and_then(Result::ok)
                } else {
                    None
                };
                match permit {
                    Some(permit) => {
                        debug!(remote = %remote, "connection cap reached; closed the idlest connection");
                        permit
                    }
                    None => {
                        warn!(remote = %remote, max = limits.max_connections, "connection cap reached with every connection busy; closing the new one");
                        continue;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(started.elapsed().as_millis() as u64),
            evict: CancellationToken::new(),
        });
        let id = registry.add(conn.clone());
        let service = ConnService {
            router: router.clone(),
            conn: conn.clone(),
            started,
            limits,
        };
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let (registry, stop) = (registry.clone(), stop.clone());
        tracker.spawn(async move {
            let _permit = permit;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => log_end(result),
                _ = conn.evict.cancelled() => {}
                _ = stop.cancelled() => {
                    // An idle connection (a head not complete yet included) closes at once; a
                    // request in progress finishes first.
                    if conn.busy.load(Ordering::Acquire) > 0 {
                        connection.as_mut().graceful_shutdown();
                        tokio::select! {
                            result = connection.as_mut() => log_end(result),
                            _ = conn.evict.cancelled() => {}
                        }
                    }
                }
            }
            registry.remove(id);
        });
    }
    drop(listener);
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(())
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        // Timeouts and resets are what clients on the network do; not the node's failure.
        debug!(error = %e, "connection ended with an error");
    }
}

/// The per-connection service: the router, with the request body under [`TimedBody`] and the
/// connection marked busy until its answer is written.
#[derive(Clone)]
struct ConnService {
    router: Router,
    conn: Arc<Conn>,
    started: Instant,
    limits: Limits,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<BusyBody>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<BusyBody>, std::convert::Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let guard = BusyGuard::new(self.conn.clone(), self.started);
        let limits = self.limits;
        let request = request.map(|body| {
            Body::new(TimedBody::new(
                body,
                limits.body_grace,
                limits.body_min_rate,
            ))
        });
        let mut router = self.router.clone();
        Box::pin(async move {
            let response = router.call(request).await?;
            Ok(response.map(|body| BusyBody {
                body,
                _guard: guard,
            }))
        })
    }
}

/// Marks a connection busy while it lives.
struct BusyGuard {
    conn: Arc<Conn>,
    started: Instant,
}

impl BusyGuard {
    fn new(conn: Arc<Conn>, started: Instant) -> BusyGuard {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        BusyGuard { conn, started }
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.conn
            .idle_since
            .store(self.started.elapsed().as_millis() as u64, Ordering::Release);
        self.conn.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection marked busy until hyper has written it (and
/// drops it).
struct BusyBody {
    body: Body,
    _guard: BusyGuard,
}

impl HttpBody for BusyBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body read too slowly.
#[derive(Debug, thiserror::Error)]
#[error("request body arrived slower than {rate} bytes/s after {grace:?} ({received} bytes)")]
pub struct BodyTooSlow {
    /// Bytes received until then.
    pub received: u64,
    /// The floor.
    pub rate: u64,
    /// The grace.
    pub grace: Duration,
}

/// A request body that fails once it falls behind `grace + received / rate` since it started
/// being read.
pub struct TimedBody {
    inner: Incoming,
    started: Option<Instant>,
    received: u64,
    grace: Duration,
    rate: u64,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn new(inner: Incoming, grace: Duration, rate: u64) -> TimedBody {
        TimedBody {
            inner,
            started: None,
            received: 0,
            grace,
            rate: rate.max(1),
            timer: Box::pin(tokio::time::sleep(grace)),
        }
    }

    fn deadline(&self, started: Instant) -> Instant {
        started + self.grace + Duration::from_millis(self.received.saturating_mul(1000) / self.rate)
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let started = *this.started.get_or_insert_with(|| {
            let now = Instant::now();
            this.timer.as_mut().reset(now + this.grace);
            now
        });
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    let deadline = this.deadline(started);
                    this.timer.as_mut().reset(deadline);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTooSlow {
                    received: this.received,
                    rate: this.rate,
                    grace: this.grace,
                })))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::cap_for;

    #[test]
    fn the_cap_keeps_descriptors_in_reserve() {
        assert_eq!(cap_for(64), 32);
        assert_eq!(cap_for(1024), 992);
        assert_eq!(cap_for(1 << 20), super::MAX_CONNECTIONS_CEILING);
        assert_eq!(cap_for(10), 5);
        assert_eq!(cap_for(0), 1);
    }
}
