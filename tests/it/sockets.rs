//! The HTTP listener of a real daemon process against clients that hold sockets without
//! finishing requests: idle connections, heads sent byte by byte (slowloris), bodies that
//! trickle, and more idle sockets than the process has descriptors.

use crate::common;

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use tandem::identity::NodeKey;
use tandem::protocol::signature;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A daemon process, killed when dropped.
struct Daemon {
    /// The `tandem run` process, killed on drop.
    process: common::process::Daemon,
    addr: String,
    /// The daemon's node id.
    id: tandem::identity::NodeId,
}

impl Daemon {
    /// Descriptors the process has open.
    fn descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.process.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// How many of the connections from the local `ports` the process holds as descriptors
    /// (accepted, not only queued in the kernel's backlog): the server side of each is found in
    /// `/proc/net/tcp` by its ports, and its socket inode among the process's descriptors.
    /// Exact whatever else the process opens or closes meanwhile.
    fn holds(&self, ports: &std::collections::HashSet<u16>) -> usize {
        let inodes: std::collections::HashSet<u64> =
            std::fs::read_dir(format!("/proc/{}/fd", self.process.pid()))
                .into_iter()
                .flatten()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|target| {
                    let target = target.to_str()?;
                    target
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse()
                        .ok()
                })
                .collect();
        let listening: u16 = self.addr.rsplit(':').next().unwrap().parse().unwrap();
        let port = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        table
            .lines()
            .skip(1)
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 9
                    && port(fields[1]) == Some(listening)
                    && port(fields[2]).is_some_and(|p| ports.contains(&p))
                    && fields[9].parse().is_ok_and(|i: u64| inodes.contains(&i))
            })
            .count()
    }

    /// Stops it with SIGTERM and returns its exit code.
    fn terminate(mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.process.pid() as i32, libc::SIGTERM) };
        self.process.child.wait().unwrap().code()
    }
}

/// Starts `tandem run` on port 0 in `dir`, with `peer` (if any) allowed to push its own feed,
/// and with its descriptor limit set to `nofile` (soft and hard) when given.
fn start(dir: &std::path::Path, peer: Option<&NodeKey>, nofile: Option<u64>) -> Daemon {
    let config = dir.join("tandem.toml");
    let peer = peer.map_or(String::new(), |k| {
        format!(
            "[[peer]]\nname = \"home\"\nurl = \"http://127.0.0.1:9/\"\nid = \"{}\"\naccept = [\"{}\"]\nschedule = \"0 0 1 1 *\"\n",
            k.id(),
            k.id()
        )
    });
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"community\"\ndata_dir = \"data\"\nlisten = \"127.0.0.1:0\"\n{peer}"
        ),
    )
    .unwrap();
    let init = common::tandem(&config, &["init"], 0);
    let id = String::from_utf8_lossy(&init.stdout)
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    let mut cmd = common::process::Daemon::command(&config);
    if let Some(n) = nofile {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let process = common::process::Daemon::start(cmd);
    Daemon {
        addr: process.addr.clone(),
        process,
        id,
    }
}

/// Raises this process's soft descriptor limit to its hard limit; returns it.
fn raise_own_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

/// `GET /healthz` on a fresh connection (raw HTTP/1.1, so that nothing is pooled): the
/// status line, and how long the answer took from connecting.
async fn healthz(addr: &str) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .expect("connected within 5 s")
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("answered within 5 s")
        .unwrap();
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    (text.lines().next().unwrap_or("").to_owned(), elapsed)
}

/// Opens `n` connections to `addr` that send nothing.
async fn idle_sockets(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        sockets.push(TcpStream::connect(addr).await.unwrap());
    }
    sockets
}

/// Waits until `stream` is closed by the other end; returns how long that took from `since`,
/// or `None` if it stays open for `limit`.
async fn closed_after(stream: &mut TcpStream, since: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::from_std(since + limit);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn healthz_answers_fast_while_1000_idle_connections_are_held() {
    let limit = raise_own_limit();
    assert!(
        limit >= 2200,
        "the hard descriptor limit ({limit}) is too low for this test"
    );
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), None, None);
    let addr = daemon.addr.clone();

    let mut before = Vec::new();
    for _ in 0..20 {
        let (status, took) = healthz(&addr).await;
        assert!(status.contains("200"), "{status}");
        before.push(took);
    }
    let sockets = idle_sockets(&addr, 1000).await;
    let ports: std::collections::HashSet<u16> = sockets
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect();
    // Held by the daemon, not only queued in the kernel: each is one of its descriptors.
    // How fast they are accepted is not what is measured: slack for a busy machine.
    common::node::wait_for(Duration::from_secs(30), "1000 accepted sockets", || {
        daemon.holds(&ports) == 1000
    })
    .await;
    let mut during = Vec::new();
    for _ in 0..20 {
        let (status, took) = healthz(&addr).await;
        assert!(status.contains("200"), "{status}");
        during.push(took);
    }
    let held = daemon.holds(&ports);
    println!(
        "healthz on a fresh connection: median {:?}, max {:?} with no idle connection; \
         median {:?}, max {:?} with 1000 idle connections opened ({held} still held)",
        median(before.clone()),
        before.iter().max().unwrap(),
        median(during.clone()),
        during.iter().max().unwrap(),
    );
    assert!(
        median(during.clone()) < Duration::from_millis(50),
        "healthz took {during:?}"
    );
    // Idle connections do not hold up a shutdown (half a head sent, either).
    let mut half = TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let stopping = Instant::now();
    assert_eq!(daemon.terminate(), Some(0));
    let stopped = stopping.elapsed();
    println!("stopped in {stopped:?} with 1001 idle connections open");
    assert!(
        stopped < Duration::from_secs(5),
        "stopping took {stopped:?}"
    );
    drop(sockets);
}

#[tokio::test]
async fn a_daemon_with_64_descriptors_answers_healthz_past_80_idle_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), None, Some(64));
    let addr = daemon.addr.clone();
    let (status, _) = healthz(&addr).await;
    assert!(status.contains("200"), "{status}");

    let mut sockets = idle_sockets(&addr, 80).await;
    let mut answers = Vec::new();
    for _ in 0..5 {
        let (status, took) = healthz(&addr).await;
        assert!(status.contains("200"), "healthz: {status}");
        answers.push(took);
        assert!(daemon.descriptors() <= 64);
    }
    // More idle sockets arriving all the time do not change that.
    sockets.extend(idle_sockets(&addr, 80).await);
    let (status, took) = healthz(&addr).await;
    assert!(status.contains("200"), "healthz: {status}");
    answers.push(took);
    // The oldest idle sockets gave way: the daemon closed them.
    let since = Instant::now();
    let closed = closed_after(&mut sockets[0], since, Duration::from_secs(1)).await;
    assert!(closed.is_some(), "the first idle socket is still open");
    println!(
        "with RLIMIT_NOFILE = 64 and 160 idle sockets: healthz answered in {answers:?}, \
         the daemon holds {} descriptors",
        daemon.descriptors()
    );
    drop(sockets);
    assert_eq!(daemon.terminate(), Some(0));
}

#[tokio::test]
async fn slow_or_silent_clients_are_disconnected_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), None, None);
    let addr = daemon.addr.clone();
    let timeout = tandem::api::listen::HEADER_TIMEOUT;
    let started = Instant::now();

    // Sends nothing.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    // Answered once, then kept alive and idle.
    let mut kept = TcpStream::connect(&addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let kept_since = Instant::now();
    // Sends its head one header line every 500 ms, for ever (slowloris).
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        let mut i = 0u64;
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            i += 1;
            if slow
                .write_all(format!("X-Slow-{i}: {i}\r\n").as_bytes())
                .await
                .is_err()
            {
                return Some(started.elapsed());
            }
            // A closed socket is seen as a reset on a later write, or as EOF on read.
            let mut probe = [0u8; 64];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await
            {
                return Some(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(30) {
                return None;
            }
        }
    });

    let limit = timeout + Duration::from_secs(5);
    let silent_closed = closed_after(&mut silent, started, limit).await;
    let kept_closed = closed_after(&mut kept, kept_since, limit).await;
    let slow_closed = trickle.await.unwrap();
    println!(
        "header timeout {timeout:?}: silent closed after {silent_closed:?}, kept-alive idle after \
         {kept_closed:?}, slowloris after {slow_closed:?}"
    );
    for (what, closed) in [
        ("silent", silent_closed),
        ("kept-alive", kept_closed),
        ("slowloris", slow_closed),
    ] {
        let closed = closed.unwrap_or_else(|| panic!("the {what} connection is still open"));
        assert!(
            closed >= timeout - Duration::from_secs(1),
            "{what} closed after {closed:?}, before the timeout"
        );
    }
    // The node still answers.
    let (status, _) = healthz(&addr).await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(daemon.terminate(), Some(0));
}

#[tokio::test]
async fn a_request_body_that_trickles_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let home = NodeKey::from_seed([21; 32]);
    let daemon = start(dir.path(), Some(&home), None);
    let addr = daemon.addr.clone();
    let grace = tandem::api::listen::BODY_GRACE;

    // A signed push (so that the body is read at all) whose 4 KiB body comes one byte at a
    // time, every 200 ms.
    let body = vec![b'x'; 4096];
    let path = format!("/v1/origins/{}/entries", home.id());
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let outgoing = signature::Outgoing {
        target: daemon.id,
        method: "POST",
        path: &path,
        query: None,
    };
    let h = signature::sign(&home, &outgoing, &body, created);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/vnd.tandem.page\r\n\
         Content-Length: {}\r\ncontent-digest: {}\r\ntandem-target: {}\r\n\
         signature-input: {}\r\nsignature: {}\r\n\r\n",
        body.len(),
        h.content_digest,
        h.target,
        h.signature_input,
        h.signature
    );
    let started = Instant::now();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        for b in &body {
            if write.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        grace + Duration::from_secs(10),
        read.read_to_end(&mut answer),
    )
    .await
    .expect("the daemon answered and closed the connection");
    let took = started.elapsed();
    writer.abort();
    let text = String::from_utf8_lossy(&answer);
    println!(
        "trickled body: answered after {took:?}: {}",
        text.lines().next().unwrap_or("")
    );
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("slower than"), "{text}");
    assert!(took >= grace, "cut after {took:?}, before the grace");
    assert_eq!(daemon.terminate(), Some(0));
}
