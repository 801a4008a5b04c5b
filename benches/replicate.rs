//! Replication between two real `tandem run` processes over loopback (run with
//! `cargo bench --bench replicate`; `TANDEM_BENCH_ENTRIES` overrides the 1,000,000 entries).
//!
//! The origin's feed is filled with entries of about 300 bytes (Kinto-like record puts), then:
//! 1. **cold**: the holder pulls the whole feed (`tandem sync` on the holder, which asks its
//!    daemon over the admin socket);
//! 2. **incremental**: the origin is stopped, 1% new entries are appended, it is started again,
//!    and the holder pulls once more;
//! 3. **push**: a third node is pushed the whole feed by the origin.
//!
//! Each pass runs twice in the same run, side by side: with a plain origin, then with a
//! sealed one (`[node] seal = true`, see `tandem::seal`). `BENCH_RECORD_IDS=random` gives the
//! records ids in no order, as Kinto's UUID4 ids are, instead of ids that grow within each
//! collection.
//!
//! Printed: entries, seconds, entries/s, bytes on the wire (compressed page bodies, as the
//! receiving or sending side counted them) and the peak RSS (`VmHWM`) of each daemon.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem::config::Config;
use tandem::daemon::Node;
use tandem::identity::NodeKey;
use tandem::store::{Change, Store};

mod common;
use common::change;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

struct Daemon {
    child: Child,
    config: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(config: &Path, data: &Path) -> Daemon {
        let _ = std::fs::remove_file(data.join("tandem.sock"));
        let child = Command::new(TANDEM)
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("TANDEM_LOG", "warn")
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while !data.join("tandem.sock").exists() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            child,
            config: config.to_owned(),
        }
    }

    fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    /// Peak resident set size, MiB.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    }

    /// `tandem sync` against this daemon; returns (seconds, output).
    fn sync(&self) -> (f64, String) {
        let t = Instant::now();
        let out = Command::new(TANDEM)
            .arg("--config")
            .arg(&self.config)
            .arg("sync")
            .env("TANDEM_LOG", "warn")
            .output()
            .unwrap();
        let secs = t.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (secs, text)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn append(data: &Path, from: usize, to: usize, sealed: bool) {
    let key = NodeKey::load(&data.join("node.key")).unwrap();
    let mut store = Store::open_writer(data, key.id()).unwrap();
    if sealed {
        store.seal_own(&key, Some(true)).unwrap();
    }
    let mut i = from;
    while i < to {
        let end = (i + 10_000).min(to);
        let changes: Vec<Change> = (i..end).map(change).collect();
        store.append(&key, &changes, &[]).unwrap();
        i = end;
    }
}

/// Number after `word` in a line like "peer origin: nothing pushed, 12 entries pulled (345 bytes received)".
fn figures(out: &str) -> (u64, u64) {
    let words: Vec<&str> = out.split_whitespace().collect();
    let entries = words
        .windows(3)
        .find(|w| w[1] == "entries" && (w[2] == "pulled" || w[2] == "pushed"))
        .and_then(|w| w[0].parse().ok())
        .unwrap_or_else(|| panic!("no entry count in {out}"));
    let bytes = words
        .windows(2)
        .find(|w| w[1] == "bytes")
        .and_then(|w| w[0].trim_start_matches('(').parse().ok())
        .unwrap_or(0);
    (entries, bytes)
}

fn main() {
    println!(
        "| origin | pass | entries | seconds | entries/s | bytes on the wire | origin peak RSS | receiver peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for sealed in [false, true] {
        run(sealed);
    }
}

fn run(sealed: bool) {
    let kind = if sealed { "sealed" } else { "plain" };
    let n: usize = std::env::var("TANDEM_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let root = tempfile::tempdir().unwrap();
    let names = ["origin", "holder", "pushed"];
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let mut ids = Vec::new();
    for name in names {
        let data = root.path().join(name);
        tandem::daemon::ensure_data_dir(&data).unwrap();
        ids.push(NodeKey::create(&data.join("node.key")).unwrap().id());
    }
    let never = "schedule = \"0 0 0 1 1 *\"";
    let peer = |i: usize, lines: String| {
        format!(
            "[[peer]]\nname = \"{}\"\nurl = \"http://127.0.0.1:{}/\"\nid = \"{}\"\n{lines}\n{never}\n",
            names[i], ports[i], ids[i]
        )
    };
    let configs = [
        format!(
            "{}{}",
            peer(1, "serve = [\"self\"]".into()),
            peer(2, "push = [\"self\"]".into())
        ),
        peer(0, format!("pull = [\"{}\"]", ids[0])),
        peer(0, String::new()),
    ];
    for (i, name) in names.iter().enumerate() {
        let path = root.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[node]\nname = \"{name}\"\ndata_dir = \"{name}\"\nlisten = \"127.0.0.1:{}\"\n{}{}",
                ports[i],
                if sealed && i == 0 {
                    "seal = true\n"
                } else {
                    ""
                },
                configs[i]
            ),
        )
        .unwrap();
        drop(Node::init(Config::load(&path).unwrap(), true, true).unwrap());
    }
    let data = |i: usize| root.path().join(names[i]);
    let config = |i: usize| root.path().join(format!("{}.toml", names[i]));

    let t = Instant::now();
    append(&data(0), 0, n, sealed);
    eprintln!(
        "filled the origin with {n} entries in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let origin = Daemon::start(&config(0), &data(0));
    let holder = Daemon::start(&config(1), &data(1));
    let (secs, out) = holder.sync();
    let (entries, bytes) = figures(&out);
    assert_eq!(entries as usize, n, "{out}");
    println!(
        "| {kind} | cold pull | {entries} | {secs:.2} | {:.0} | {bytes} ({:.0} B/entry) | {} MiB | {} MiB |",
        entries as f64 / secs,
        bytes as f64 / entries as f64,
        origin.peak_rss(),
        holder.peak_rss()
    );

    origin.stop();
    append(&data(0), n, n + n / 100, sealed);
    let origin = Daemon::start(&config(0), &data(0));
    let (secs, out) = holder.sync();
    let (entries, bytes) = figures(&out);
    assert_eq!(entries as usize, n / 100, "{out}");
    println!(
        "| {kind} | incremental pull (+1%) | {entries} | {secs:.2} | {:.0} | {bytes} | {} MiB | {} MiB |",
        entries as f64 / secs,
        origin.peak_rss(),
        holder.peak_rss()
    );
    holder.stop();
    origin.stop();

    let pushed = Daemon::start(&config(2), &data(2));
    let origin = Daemon::start(&config(0), &data(0));
    let (secs, out) = origin.sync();
    let (entries, bytes) = figures(&out);
    println!(
        "| {kind} | cold push | {entries} | {secs:.2} | {:.0} | {bytes} | {} MiB | {} MiB |",
        entries as f64 / secs,
        origin.peak_rss(),
        pushed.peak_rss()
    );
    origin.stop();
    pushed.stop();
}
