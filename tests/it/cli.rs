//! End-to-end tests of the `tandem` binary: real processes, real files, real sockets.
//! Each test gets a fresh temporary directory; nothing waits on a fixed sleep.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common;

const BIN: &str = env!("CARGO_BIN_EXE_tandem");

/// A temporary node directory with a config file.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(extra: &str) -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        env.write_config(&format!(
            "[node]\nname = \"t\"\ndata_dir = \"data\"\nlisten = \"127.0.0.1:0\"\n{extra}"
        ));
        env
    }

    fn write_config(&self, text: &str) {
        std::fs::write(self.config(), text).unwrap();
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("tandem.toml")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(self.config())
            .args(args)
            .current_dir(self.dir.path());
        cmd.env_remove("TANDEM_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC");
        cmd
    }

    /// `tandem init`; returns the node id, the last line it prints.
    fn init(&self) -> String {
        let out = stdout(&self.run(&["init"], 0));
        out.lines().last().unwrap().to_owned()
    }

    /// Runs to completion; panics with the whole story if the exit code is not `code`.
    fn run(&self, args: &[&str], code: i32) -> Output {
        common::run(self.cmd(args), code)
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// A running `tandem run` with its stderr lines streamed to a channel.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    addr: String,
}

impl Daemon {
    fn start(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut daemon = Daemon {
            child,
            lines,
            seen: Vec::new(),
            addr: String::new(),
        };
        let line = daemon.wait_for("tandem running");
        daemon.addr = field(&line, "listen").expect("listen address in the log");
        daemon
    }

    /// Waits (up to 20 s) for a log line containing `needle` and returns it.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?}; log so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.addr, path)
    }

    fn signal(&self, sig: i32) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits for the process to exit (up to 20 s) and returns its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit; log:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Extracts `name=value` from a text log line.
fn field(line: &str, name: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .map(|v| v.trim_matches('"').to_owned())
}

/// A minimal HTTP/1.0 GET; returns status and body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn init_creates_a_private_key_and_prints_the_id_last() {
    let env = Env::new("");
    let out = env.run(&["init"], 0);
    let text = stdout(&out);
    let id = text.lines().last().unwrap();
    assert!(id.starts_with("ed25519:") && id.len() == 51, "{text}");
    let key = env.data().join("node.key");
    assert_eq!(common::mode(&key), 0o600);
    assert_eq!(common::mode(&env.data()), 0o700);
    let before = std::fs::read(&key).unwrap();
    assert!(
        !text.contains(
            std::str::from_utf8(&before)
                .unwrap()
                .lines()
                .nth(1)
                .unwrap()
        )
    );

    // Never overwritten.
    let out = env.run(&["init"], 78);
    assert!(
        stderr(&out).contains("refusing to overwrite"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&key).unwrap(), before);

    assert_eq!(stdout(&env.run(&["key", "show"], 0)).trim(), id);
}

#[test]
fn a_key_open_to_others_is_refused_with_the_fix() {
    let env = Env::new("");
    env.run(&["init"], 0);
    let key = env.data().join("node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    for args in [&["key", "show"][..], &["run"]] {
        let out = env.run(args, 78);
        let err = stderr(&out);
        assert!(
            err.contains("chmod 600") && err.contains("node.key"),
            "{err}"
        );
        assert!(!err.contains("PRIVATE KEY"));
    }
}

#[test]
fn key_export_writes_a_private_copy_and_prints_no_secret() {
    let env = Env::new("");
    env.run(&["init"], 0);
    let copy = env.dir.path().join("backup.key");
    let out = env.run(&["key", "export", "--out", copy.to_str().unwrap()], 0);
    let secret = std::fs::read_to_string(env.data().join("node.key")).unwrap();
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), secret);
    assert_eq!(common::mode(&copy), 0o600);
    let b64 = secret.lines().nth(1).unwrap();
    assert!(!stdout(&out).contains(b64) && !stderr(&out).contains(b64));
    env.run(&["key", "export", "--out", copy.to_str().unwrap()], 78);
}

#[test]
fn the_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers.example.toml");
    let out = common::run(
        {
            let mut c = Command::new(BIN);
            c.args(["config", "check"]).arg(&example);
            c
        },
        0,
    );
    let text = stdout(&out);
    assert!(
        text.contains("peer \"community\"") && text.contains("snapshots"),
        "{text}"
    );
    // Every key in the example is documented by a comment above it or on its table.
    let config = std::fs::read_to_string(&example).unwrap();
    let lines: Vec<&str> = config.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with('[') || line.is_empty() || line.starts_with('#') {
            continue;
        }
        assert!(
            lines[..i]
                .iter()
                .rev()
                .take_while(|l| !l.is_empty())
                .any(|l| l.starts_with('#')),
            "undocumented line {}: {line}",
            i + 1
        );
    }
}

#[test]
fn config_errors_name_file_line_and_key() {
    let env = Env::new("");
    env.write_config("[node]\nname = \"t\"\n\n[[peer]]\nname = \"p\"\nurl = \"http://127.0.0.1:1\"\nid = \"ed25519:nope\"\n");
    for args in [&["config", "check"][..], &["status"], &["run"], &["init"]] {
        let out = env.run(args, 78);
        let err = stderr(&out);
        assert!(
            err.contains("tandem.toml, line 7, key `peer.id`"),
            "{args:?}: {err}"
        );
    }
    assert!(!env.data().exists(), "nothing is created from a bad config");

    env.write_config("[node]\nname = \"t\"\ncolour = \"blue\"\n");
    let err = stderr(&env.run(&["config", "check"], 78));
    assert!(err.contains("line 3") && err.contains("colour"), "{err}");

    let missing = env.dir.path().join("nope.toml");
    let mut cmd = Command::new(BIN);
    cmd.args(["status", "--config"]).arg(&missing);
    let err = stderr(&common::run(cmd, 78));
    assert!(
        err.contains("nope.toml") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn config_comes_from_the_flag_anywhere_or_the_environment() {
    let env = Env::new("");
    let id = env.init();
    let mut after = Command::new(BIN);
    after.args(["key", "show", "--config"]).arg(env.config());
    assert_eq!(stdout(&common::run(after, 0)).trim(), id);
    let mut from_env = Command::new(BIN);
    from_env
        .args(["key", "show"])
        .env("TANDEM_CONFIG", env.config());
    assert_eq!(stdout(&common::run(from_env, 0)).trim(), id);
}

#[test]
fn status_reports_the_node_and_its_own_origin() {
    let env = Env::new("");
    let id = env.init();
    let out = env.run(&["status", "--json"], 0);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["node"]["id"], id.as_str());
    assert_eq!(doc["node"]["name"], "t");
    let origins = doc["origins"].as_array().unwrap();
    assert_eq!(origins.len(), 1);
    assert_eq!(origins[0]["id"], id.as_str());
    assert_eq!(origins[0]["self"], true);
    assert_eq!(origins[0]["head"]["seq"], 0);
    assert!(origins[0]["head"]["hash"].is_null());
    assert_eq!(doc["daemon"]["running"], false);
    let text = stdout(&env.run(&["status"], 0));
    assert!(text.contains(&id) && text.contains("(self)"), "{text}");
}

#[test]
fn status_before_init_says_what_to_do() {
    let env = Env::new("");
    let err = stderr(&env.run(&["status"], 78));
    assert!(err.contains("tandem init"), "{err}");
}

#[test]
fn the_daemon_serves_health_and_metrics_and_stops_on_sigterm() {
    // Nothing listens on port 1: the source and the peer are unreachable.
    let env = Env::new(
        "[source]\nkind = \"kinto\"\nurl = \"http://127.0.0.1:1\"\nuser = \"u\"\npassword_env = \"PW\"\npoll = \"1s\"\n\
         [[peer]]\nname = \"far\"\nurl = \"http://127.0.0.1:1\"\nid = \"ed25519:dYF38bYGVyvmHA_iN-Cy8KY32iTTZ-h7aPa_2gmSP5E\"\n",
    );
    // A brand-new data directory is initialized by `run` itself.
    let mut daemon = Daemon::start(env.cmd(&["run"]));
    daemon.wait_for("created a new node key");
    let warn = daemon.wait_for("unreachable, will retry");
    assert!(warn.contains("WARN") && warn.contains("retry_in"), "{warn}");
    daemon.wait_for("name=far");

    let (status, body) = daemon.get("/healthz");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = stdout(&env.run(&["key", "show"], 0)).trim().to_owned();
    assert_eq!(health["node"]["id"], id.as_str());
    let workers = health["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    assert!(workers.iter().all(|w| w["ok"] == false), "{body}");

    let (status, metrics) = daemon.get("/metrics");
    assert_eq!(status, 200);
    for needle in [
        format!("tandem_feed_head_seq{{origin=\"{id}\",self=\"true\"}} 0"),
        "tandem_entries_appended_total 0".to_owned(),
        "process_resident_memory_bytes".to_owned(),
        "tandem_target_up{target=\"source\",name=\"kinto\"} 0".to_owned(),
    ] {
        assert!(metrics.contains(&needle), "missing {needle} in\n{metrics}");
    }
    assert_eq!(daemon.get("/nope").0, 404);

    // Read-only commands work beside the running daemon; a second writer does not start.
    let status: serde_json::Value =
        serde_json::from_slice(&env.run(&["status", "--json"], 0).stdout).unwrap();
    assert_eq!(status["daemon"]["running"], true);
    let workers = status["daemon"]["workers"].as_array().unwrap();
    assert!(
        workers
            .iter()
            .any(|w| w["kind"] == "source" && w["ok"] == false),
        "{status}"
    );
    let text = stdout(&env.run(&["status"], 0));
    assert!(
        // An unset credentials variable cannot heal by retrying: the loop waits for the operator.
        text.contains("daemon running") && text.contains("source kinto: NEEDS OPERATOR"),
        "{text}"
    );
    let err = stderr(&env.run(&["run"], 1));
    assert!(
        err.contains("another tandem process") && err.contains(&daemon.child.id().to_string()),
        "{err}"
    );

    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(), Some(0));
    assert!(
        daemon.seen.iter().any(|l| l.contains("stopped")),
        "{}",
        daemon.seen.join("\n")
    );
}

#[test]
fn sigint_stops_and_json_logs_are_json() {
    let env = Env::new("");
    env.run(&["init"], 0);
    let mut cmd = env.cmd(&["run"]);
    cmd.args(["--log-format", "json"]);
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let running = loop {
        let line = lines.next().expect("a log line").unwrap();
        let doc: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if doc["message"] == "tandem running" {
            break doc;
        }
    };
    assert_eq!(running["level"], "INFO");
    assert!(
        running["listen"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{running}"
    );
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(child.wait().unwrap().success());
    assert!(
        rest.iter()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{rest:?}"
    );
}

#[test]
fn systemd_hears_ready_watchdog_and_stopping() {
    let env = Env::new("");
    env.run(&["init"], 0);
    let socket_path = env.dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut cmd = env.cmd(&["run"]);
    cmd.env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000");
    let mut daemon = Daemon::start(cmd);
    let recv = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut got = String::new();
    while !got.contains("READY=1") || !got.contains("WATCHDOG=1") {
        got.push_str(&recv());
    }
    daemon.signal(libc::SIGTERM);
    while !got.contains("STOPPING=1") {
        got.push_str(&recv());
    }
    assert_eq!(daemon.wait_exit(), Some(0));
}

#[test]
fn a_damaged_store_is_refused_and_kept() {
    let env = Env::new("");
    env.run(&["init"], 0);
    let db = env.data().join("tandem.db");
    let mut damaged = std::fs::read(&db).unwrap();
    damaged[0..16].copy_from_slice(b"not sqlite at al");
    std::fs::write(&db, &damaged).unwrap();
    for args in [&["run"][..], &["status"]] {
        let err = stderr(&env.run(args, 78));
        assert!(
            err.contains("damaged") && err.contains("tandem.db"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read(&db).unwrap(), damaged);
}

#[test]
fn verify_finds_a_damaged_page_that_no_entry_check_reads() {
    let env = Env::new("");
    env.run(&["init"], 0);
    env.run(&["verify"], 0);
    let db = env.data().join("tandem.db");
    // The root page of the cursors table (no origin check reads it) gets a page type SQLite does not know.
    let (page, size): (i64, i64) = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let page = conn
            .query_row(
                "SELECT rootpage FROM sqlite_schema WHERE name = 'cursors'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let size = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        (page, size)
    };
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[((page - 1) * size) as usize] = 0x42;
    std::fs::write(&db, &bytes).unwrap();
    // SQLite gives up on this page rather than list its problems: the store is damaged.
    for args in [&["verify"][..], &["verify", "--sample", "10"]] {
        let err = stderr(&env.run(args, 78));
        assert!(
            err.contains("damaged") && err.contains("malformed"),
            "{err}"
        );
    }
    // What `verify` reads is what `run` refuses.
    let err = stderr(&env.run(&["run"], 78));
    assert!(err.contains("damaged"), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), bytes);
}

#[test]
fn a_store_without_its_key_is_not_given_a_new_identity() {
    let env = Env::new("");
    let id = env.init();
    std::fs::remove_file(env.data().join("node.key")).unwrap();
    let err = stderr(&env.run(&["run"], 78));
    assert!(err.contains("no node key") && err.contains(&id), "{err}");
    assert!(!env.data().join("node.key").exists());
}

#[test]
fn init_never_leaves_a_stray_key_beside_a_store() {
    let env = Env::new("");
    env.run(&["init"], 0);
    std::fs::remove_file(env.data().join("node.key")).unwrap();
    let err = stderr(&env.run(&["init"], 78));
    assert!(err.contains("a store already exists"), "{err}");
    assert!(!env.data().join("node.key").exists());
}

#[test]
fn a_key_without_its_store_is_not_restarted_at_seq_1() {
    let env = Env::new("");
    let id = env.init();
    for file in ["tandem.db", "tandem.db-wal", "tandem.db-shm"] {
        let _ = std::fs::remove_file(env.data().join(file));
    }
    let err = stderr(&env.run(&["run"], 78));
    assert!(
        err.contains("would fork it") && err.contains("--existing-key"),
        "{err}"
    );
    assert!(!env.data().join("tandem.db").exists());
    // Without peers to recover from, `init --existing-key` refuses too...
    let err = stderr(&env.run(&["init", "--existing-key"], 78));
    assert!(err.contains("--new-feed"), "{err}");
    assert!(!env.data().join("tandem.db").exists());
    // ...and the operator decides: a new feed for the same key.
    let out = env.run(&["init", "--existing-key", "--new-feed"], 0);
    assert_eq!(stdout(&out).lines().last().unwrap(), id);
    assert_eq!(stdout(&env.run(&["key", "show"], 0)).trim(), id);
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["status", "--json"], 0))).unwrap();
    assert_eq!(status["node"]["recovering"], false);
}

#[test]
fn a_kept_key_with_peers_recovers_its_feed_before_appending() {
    let env = Env::new(
        "[[peer]]\nname = \"far\"\nurl = \"http://127.0.0.1:1\"\nid = \"ed25519:dYF38bYGVyvmHA_iN-Cy8KY32iTTZ-h7aPa_2gmSP5E\"\n",
    );
    let id = env.init();
    for file in ["tandem.db", "tandem.db-wal", "tandem.db-shm"] {
        let _ = std::fs::remove_file(env.data().join(file));
    }
    let out = stdout(&env.run(&["init", "--existing-key"], 0));
    assert!(
        out.contains("will first fetch this node's feed back"),
        "{out}"
    );
    assert_eq!(out.lines().last().unwrap(), id);
    // The store waits for the feed from the peers: nothing can be appended to it before.
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["status", "--json"], 0))).unwrap();
    assert_eq!(status["node"]["recovering"], true, "{status}");
}

#[test]
fn an_unusable_data_dir_is_a_clear_error() {
    let env = Env::new("");
    env.write_config(
        "[node]\nname = \"t\"\ndata_dir = \"/dev/null/tandem\"\nlisten = \"127.0.0.1:0\"\n",
    );
    for args in [&["init"][..], &["run"]] {
        let err = stderr(&env.run(args, 78));
        assert!(err.contains("cannot write in /dev/null/tandem"), "{err}");
        assert_eq!(err.matches("Not a directory").count(), 1, "{err}");
    }
}

#[test]
fn a_busy_listen_address_is_a_clear_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let env = Env::new("");
    env.write_config(&format!(
        "[node]\nname = \"t\"\ndata_dir = \"data\"\nlisten = \"{addr}\"\n"
    ));
    env.run(&["init"], 0);
    let err = stderr(&env.run(&["run"], 1));
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/tandem.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for needle in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=tandem",
        "StateDirectory=tandem",
        "UMask=0077",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "CapabilityBoundingSet=\n",
        "RestartPreventExitStatus=78",
    ] {
        assert!(text.contains(needle), "unit lacks {needle:?}");
    }
    let sysusers = std::fs::read_to_string(unit.with_file_name("tandem.sysusers")).unwrap();
    assert!(
        sysusers
            .lines()
            .any(|l| l.starts_with("u ") && l.contains("tandem"))
    );

    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed; checked the unit's text only");
        return;
    };
    assert!(probe.status.success());
    // Verify a copy whose ExecStart points at the binary just built.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tandem.service");
    std::fs::write(&copy, text.replace("/usr/local/bin/tandem", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let relevant: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("tandem.service"))
        .collect();
    assert!(
        out.status.success() && relevant.is_empty(),
        "systemd-analyze verify:\n{err}"
    );
}

#[test]
fn output_cut_short_by_the_reader_is_not_a_crash() {
    // `tandem peers --json | head -1`: the reader goes away after one line.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers.example.toml");
    let mut child = Command::new(BIN)
        .args(["peers", "--json", "--config"])
        .arg(&example)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // close the pipe before anything is read
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn verify_finds_a_flipped_byte_and_names_it() {
    let env = Env::new("");
    env.run(&["init"], 0);
    let key = tandem::identity::NodeKey::load(&env.data().join("node.key")).unwrap();
    {
        let mut store = tandem::store::Store::open_writer(&env.data(), key.id()).unwrap();
        let changes: Vec<tandem::store::Change> = (0..20)
            .map(|i| tandem::store::Change {
                op: tandem::feed::Op::Put,
                path: format!("/buckets/b/collections/c/records/r{i}"),
                body: format!(r#"{{"data":{{"n":{i}}}}}"#).into_bytes(),
            })
            .collect();
        store.append(&key, &changes, &[]).unwrap();
        store.create_snapshot(&key).unwrap();
    }
    let out = stdout(&env.run(&["verify"], 0));
    assert!(
        out.contains("ok, 20 entries (20 re-hashed), 1 checkpoints, 0 receipts, 1 snapshots"),
        "{out}"
    );

    // Flip one byte of entry 7's body, behind tandem's back.
    let db = rusqlite::Connection::open(env.data().join("tandem.db")).unwrap();
    let (rowid, mut bytes): (i64, Vec<u8>) = db
        .query_row(
            "SELECT key, bytes FROM entries ORDER BY key LIMIT 1 OFFSET 6",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01;
    db.execute(
        "UPDATE entries SET bytes = ?1 WHERE key = ?2",
        (bytes, rowid),
    )
    .unwrap();
    drop(db);
    let out = env.run(&["verify", "--origin", "self"], 1);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("{} seq 7", key.id())) && text.contains("hash"),
        "{text}"
    );
    assert!(stderr(&out).contains("problem(s) found"));
    // The snapshot, checked against the damaged entry, fails too.
    assert!(text.contains("snapshot"), "{text}");
    // A full sample finds it; an empty one re-hashes nothing, and sees only sound links.
    let out = env.run(&["verify", "--sample", "100"], 1);
    assert!(stdout(&out).contains("seq 7"), "{}", stdout(&out));
    let out = env.run(&["verify", "--sample", "0"], 1);
    assert!(
        !stdout(&out).contains("seq 7: entry bytes"),
        "{}",
        stdout(&out)
    );
    env.run(&["verify", "--sample", "250"], 2);
}

#[test]
fn a_password_file_open_to_others_is_refused_and_an_open_data_dir_is_closed() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new(
        "[source]\nkind = \"kinto\"\nurl = \"http://127.0.0.1:1/\"\nuser = \"tandem\"\npassword_file = \"pw\"\n",
    );
    std::fs::write(env.dir.path().join("pw"), "secret\n").unwrap();
    std::fs::set_permissions(
        env.dir.path().join("pw"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // A data directory someone made open to all.
    std::fs::create_dir(env.data()).unwrap();
    std::fs::set_permissions(env.data(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = stderr(&env.run(&["init"], 0));
    assert!(err.contains("now private to this user"), "{err}");
    let mode = common::mode(&env.data());
    assert_eq!(mode, 0o700);
    let err = stderr(&env.run(&["run"], 78));
    assert!(
        err.contains("has mode 0644, open to group or others") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!err.contains("secret\n"), "{err}");
}

/// A command that must go through the daemon (another process holds the store) but finds no
/// daemon on the admin socket says which socket it tried and why, whether the socket file is
/// missing or left behind with nobody listening; `status` says no daemon runs.
#[test]
fn a_held_store_without_a_daemon_names_the_admin_socket() {
    let env = Env::new("");
    env.run(&["init"], 0);
    let key = tandem::identity::NodeKey::load(&env.data().join("node.key")).unwrap();
    // Holds the store's lock, as a daemon would, without serving the admin socket.
    let _writer = tandem::store::Store::open_writer(&env.data(), key.id()).unwrap();
    let socket = env.data().join("tandem.sock");

    let err = stderr(&env.run(&["snapshot", "create"], 1));
    assert!(
        err.contains(&format!(
            "cannot reach the running daemon at {}: No such file or directory",
            socket.display()
        )),
        "{err}"
    );

    // A socket file nobody listens on, as a daemon killed with SIGKILL leaves it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let err = stderr(&env.run(&["snapshot", "create"], 1));
    assert!(
        err.contains(&format!(
            "cannot reach the running daemon at {}: Connection refused",
            socket.display()
        )),
        "{err}"
    );
    let status: serde_json::Value =
        serde_json::from_slice(&env.run(&["status", "--json"], 0).stdout).unwrap();
    assert_eq!(status["daemon"], serde_json::json!({"running": false}));
}
