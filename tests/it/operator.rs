//! What needs the operator: a failure that retrying cannot heal stops its loop until the
//! operator acts (`tandem sync`, `SIGHUP`), and `SIGHUP` reloads the configuration of a
//! running `tandem run` process, refusing a bad one. Real daemons on real sockets.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::node::{TestNode, wait_for};
use serde_json::Value;

/// The status of the loop `kind`/`name` in `status --json`, if it runs.
fn worker(status: &Value, kind: &str, name: &str) -> Option<Value> {
    status["daemon"]["workers"]
        .as_array()?
        .iter()
        .find(|w| w["kind"] == kind && w["name"] == name)
        .cloned()
}

/// A peer that refuses this node's pushes (403: it may not push that origin there) is not
/// retried for ever: the push loop stops, says so in `status --json` and `/metrics`, and stays
/// stopped after the peer is fixed until `tandem sync` re-arms it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_peer_stops_the_loop_until_the_operator_acts() {
    let mut home = TestNode::new("home");
    let mut community = TestNode::new("community");
    home.configure(
        "",
        &TestNode::peer_entry(&community, "push = [\"self\"]\nschedule = \"continuous\""),
    );
    // The community knows home but accepts nothing from it.
    community.configure("", &TestNode::peer_entry(&home, "accept = []"));
    home.init();
    community.init();
    home.append(20, "a");
    community.start().await;
    home.start().await;

    let mut stopped = Value::Null;
    wait_for(
        Duration::from_secs(30),
        "the push loop to wait for the operator",
        || {
            stopped = worker(&home.status(), "push", "community").unwrap_or_default();
            stopped["needs_operator"].is_string()
        },
    )
    .await;
    let why = stopped["needs_operator"].as_str().unwrap();
    assert!(
        why.contains("403") && why.contains("may not push"),
        "{stopped}"
    );
    assert_eq!(stopped["ok"], false, "{stopped}");
    let metrics = home.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tandem_needs_operator{")
                && l.contains("community")
                && l.ends_with(" 1")),
        "{metrics}"
    );

    // No retries while it waits: backoff would have retried within a few seconds.
    let errors = stopped["consecutive_errors"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let later = worker(&home.status(), "push", "community").unwrap();
    assert_eq!(later["consecutive_errors"], errors, "{later}");
    assert!(later["needs_operator"].is_string(), "{later}");

    // The community is fixed; the loop still waits (it does not poll for fixes) ...
    community.stop().await;
    community.configure("", &TestNode::peer_entry(&home, ""));
    community.start().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = worker(&home.status(), "push", "community").unwrap();
    assert!(waiting["needs_operator"].is_string(), "{waiting}");
    assert_eq!(community.head(home.id), 0);

    // ... until `tandem sync` re-arms it: the loop itself then succeeds and clears the flag.
    let answer = home.sync().await;
    assert_eq!(answer["peers"][0]["error"], Value::Null, "{answer}");
    let mut healed = Value::Null;
    wait_for(
        Duration::from_secs(30),
        "the push loop to succeed again",
        || {
            healed = worker(&home.status(), "push", "community").unwrap_or_default();
            healed["ok"] == true
        },
    )
    .await;
    assert_eq!(healed["needs_operator"], Value::Null, "{healed}");
    assert_eq!(community.head(home.id), 20);
    let metrics = home.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tandem_needs_operator{")
                && l.contains("community")
                && l.ends_with(" 0")),
        "{metrics}"
    );
    home.stop().await;
    community.stop().await;
}

/// `tandem run` as its own process, its log in a file.
struct Daemon {
    child: Child,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(node: &mut TestNode) -> Daemon {
        node.release_port();
        let log = node.data().with_extension("log");
        let child = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("--config")
            .arg(node.config_path())
            .arg("run")
            .env_remove("TANDEM_CONFIG")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    fn hangup(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: a plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `SIGHUP` reloads the configuration without a restart: a peer added starts its loop; a
/// file that does not parse, that changes `listen`, or that grants reading of a feed that is
/// not sealed, is refused with an error and the running configuration goes on; the process
/// never exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_configuration_and_refuses_a_bad_one() {
    let mut home = TestNode::new("home");
    let community = TestNode::new("community");
    home.configure("", "");
    home.init();
    let mut daemon = Daemon::start(&mut home);
    let socket = home.data().join(tandem::api::admin::SOCKET_FILE);
    wait_for(Duration::from_secs(20), "the daemon's admin socket", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await;
    assert_eq!(worker(&home.status(), "push", "community"), None);

    // A file that does not parse: refused, nothing changes.
    let good = std::fs::read_to_string(home.config_path()).unwrap();
    std::fs::write(home.config_path(), format!("{good}\n[[peer]\n")).unwrap();
    daemon.hangup();
    wait_for(Duration::from_secs(10), "the refusal in the log", || {
        daemon.log().contains("the new configuration is refused")
    })
    .await;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "{}",
        daemon.log()
    );

    // A peer added: its loop starts (it is not running, so the loop fails, and retries).
    home.configure(
        "",
        &TestNode::peer_entry(&community, "push = [\"self\"]\nschedule = \"continuous\""),
    );
    daemon.hangup();
    wait_for(Duration::from_secs(20), "the new peer's loop", || {
        worker(&home.status(), "push", "community").is_some()
    })
    .await;
    assert!(
        daemon.log().contains("configuration reloaded"),
        "{}",
        daemon.log()
    );

    // `listen` changed: only a restart can apply it.
    let with_peer = std::fs::read_to_string(home.config_path()).unwrap();
    std::fs::write(
        home.config_path(),
        with_peer.replace(&home.addr.to_string(), "127.0.0.1:1"),
    )
    .unwrap();
    daemon.hangup();
    wait_for(
        Duration::from_secs(10),
        "the listen refusal in the log",
        || daemon.log().contains("listen changed: restart tandem"),
    )
    .await;
    assert!(worker(&home.status(), "push", "community").is_some());
    // A reader granted on a feed that is not sealed: no keys to grant, refused.
    std::fs::write(
        home.config_path(),
        with_peer.replace("push = [\"self\"]", "push = [\"self\"]\nread = true"),
    )
    .unwrap();
    daemon.hangup();
    wait_for(
        Duration::from_secs(10),
        "the read refusal in the log",
        || {
            daemon
                .log()
                .contains("read = true, but this node's feed is not sealed")
        },
    )
    .await;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "{}",
        daemon.log()
    );
    // Still serving on the old address.
    let health = tandem::net::client_builder()
        .build()
        .unwrap()
        .get(format!("{}healthz", home.url()))
        .send()
        .await
        .unwrap();
    assert!(health.status().as_u16() > 0);
    let exit = daemon.stop();
    assert!(exit.success(), "{exit:?}");
}
