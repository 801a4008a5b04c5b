//! tandem nodes run in-process: each on its own port and data directory, started and stopped
//! through [`tandem::daemon::serve`] with a shutdown token, as many times as a test needs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem::config::Config;
use tandem::daemon::{self, Node};
use tandem::feed::Op;
use tandem::identity::{NodeId, NodeKey};
use tandem::store::{Change, Store};
use tokio_util::sync::CancellationToken;

use crate::common::kinto::{Kinto, PASSWORD};

/// A `schedule` that never fires during a test: rounds run only when asked (`sync`).
pub const NEVER: &str = "schedule = \"0 0 0 1 1 *\"";

/// One node: a data directory with its key, a reserved port, and (while started) a daemon.
pub struct TestNode {
    /// Its name.
    pub name: String,
    /// Holds `tandem.toml` and `data/`.
    pub dir: tempfile::TempDir,
    /// Its node id.
    pub id: NodeId,
    /// Its listener address.
    pub addr: SocketAddr,
    /// The listener, bound from the start so that no other test takes the port; handed to the
    /// first daemon (later starts bind the same address again).
    listener: Option<std::net::TcpListener>,
    running: Option<(
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
}

impl TestNode {
    /// A node with a new key and a reserved port, not configured yet.
    pub fn new(name: &str) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        daemon::ensure_data_dir(&data).unwrap();
        let key = NodeKey::create(&data.join("node.key")).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        TestNode {
            name: name.to_owned(),
            dir,
            id: key.id(),
            addr,
            listener: Some(listener),
            running: None,
        }
    }

    /// A second node with the same key as `other` (a forked origin).
    pub fn clone_key(name: &str, other: &TestNode) -> TestNode {
        let mut node = TestNode::new(name);
        std::fs::copy(other.data().join("node.key"), node.data().join("node.key")).unwrap();
        node.id = other.id;
        node
    }

    /// Lets go of the reserved port, for a daemon run as a separate process.
    pub fn release_port(&mut self) {
        self.listener = None;
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Its data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Its configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("tandem.toml")
    }

    /// Its key.
    pub fn key(&self) -> NodeKey {
        NodeKey::load(&self.data().join("node.key")).unwrap()
    }

    /// Writes its configuration: the `[node]` table, then `rest` (sections and peers).
    pub fn configure(&self, node_extra: &str, rest: &str) {
        std::fs::write(
            self.config_path(),
            format!(
                "[node]\nname = \"{}\"\ndata_dir = \"data\"\nlisten = \"{}\"\n{node_extra}\n{rest}",
                self.name, self.addr
            ),
        )
        .unwrap();
    }

    /// A `[[peer]]` table for `other`, with `lines` (push, pull, serve, schedule…).
    pub fn peer_entry(other: &TestNode, lines: &str) -> String {
        TestNode::peer_entry_at(other, &other.url(), lines)
    }

    /// A `[[peer]]` table for `other` reached at `url` (say, through a proxy).
    pub fn peer_entry_at(other: &TestNode, url: &str, lines: &str) -> String {
        format!(
            "[[peer]]\nname = \"{}\"\nurl = \"{url}\"\nid = \"{}\"\n{lines}\n",
            other.name, other.id
        )
    }

    /// A `[source]` table following `kinto` as the `tandem` account every `poll` (`"1s"`,
    /// `"1h"`), whose password file this writes into the node's directory.
    pub fn source(&self, kinto: &Kinto, poll: &str) -> String {
        crate::common::write_secret(self.dir.path().join("pw"), PASSWORD);
        format!(
            "[source]\nkind = \"kinto\"\nurl = \"{}\"\nuser = \"tandem\"\npassword_file = \"pw\"\npoll = \"{poll}\"\n",
            kinto.url
        )
    }

    /// Creates the store (as `tandem init` does for an existing key).
    pub fn init(&self) {
        let config = Config::load(&self.config_path()).unwrap();
        drop(Node::init(config, true, true).unwrap());
    }

    /// Appends `n` puts of about 300 bytes to its own feed (the node must be stopped).
    pub fn append(&self, n: usize, prefix: &str) {
        self.append_sized(n, prefix, 220);
    }

    /// Appends `n` puts whose text field has `size` characters that compress poorly.
    pub fn append_sized(&self, n: usize, prefix: &str, size: usize) {
        let key = self.key();
        let mut store = Store::open_writer(&self.data(), key.id()).unwrap();
        let changes: Vec<Change> = (0..n)
            .map(|i| Change {
                op: Op::Put,
                path: format!("/buckets/b/collections/c/records/{prefix}{i:07}"),
                body: format!(
                    "{{\"data\":{{\"id\":\"{prefix}{i:07}\",\"last_modified\":{i},\"text\":\"{}\"}}}}",
                    noise(i as u64, size)
                )
                .into_bytes(),
            })
            .collect();
        for chunk in changes.chunks(10_000) {
            store.append(&key, chunk, &[]).unwrap();
        }
    }

    /// Starts the daemon.
    pub async fn start(&mut self) {
        assert!(self.running.is_none(), "{} already runs", self.name);
        let config = Config::load(&self.config_path()).unwrap();
        let node = Node::open(config).unwrap();
        let listener = match self.listener.take() {
            Some(l) => {
                l.set_nonblocking(true).unwrap();
                tokio::net::TcpListener::from_std(l).unwrap()
            }
            None => tokio::net::TcpListener::bind(self.addr).await.unwrap(),
        };
        let token = CancellationToken::new();
        let stop = token.clone();
        let task =
            tokio::spawn(
                async move { daemon::serve(node, listener, stop.cancelled_owned()).await },
            );
        self.running = Some((token, task));
        let socket = self.data().join(tandem::api::admin::SOCKET_FILE);
        // Connectable, not just present: the file appears at bind(), a moment before listen().
        wait_for(Duration::from_secs(10), "the daemon's admin socket", || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        })
        .await;
    }

    /// Stops the daemon and waits for it, and for its store to be let go: the daemon stops
    /// waiting for that after a while (say, a slow checkpoint on a loaded machine), and the
    /// lock file is emptied once it is.
    pub async fn stop(&mut self) {
        let (token, task) = self.running.take().expect("the node runs");
        token.cancel();
        task.await.unwrap().unwrap();
        let lock = self.data().join(tandem::store::LOCK_FILE);
        wait_for(
            Duration::from_secs(30),
            "the stopped daemon to let go of its store",
            || std::fs::read(&lock).is_ok_and(|pid| pid.is_empty()),
        )
        .await;
    }

    /// The health of its running daemon's first loop of `kind` (`source`, `push`, `pull`…),
    /// as `GET /workers` on the admin socket reports it.
    pub async fn worker(&self, kind: &str) -> Value {
        let answer = tandem::cli::admin_client::get(&self.data(), "/workers")
            .await
            .unwrap();
        answer["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["kind"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} loop in {answer}"))
    }

    /// A read-only view of its store.
    pub fn store(&self) -> Store {
        Store::open_read_only(&self.data()).unwrap()
    }

    /// Its head seq for `origin` (0 when it holds none).
    pub fn head(&self, origin: NodeId) -> u64 {
        self.store().head(origin).unwrap().map_or(0, |h| h.seq.0)
    }

    /// `tandem status --json`, run as a process beside the daemon.
    pub fn status(&self) -> Value {
        let out = crate::common::tandem(&self.config_path(), &["status", "--json"], 0);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Asks the running daemon for one round (`POST /sync` on its admin socket).
    pub async fn sync(&mut self) -> Value {
        match tandem::cli::admin_client::post(&self.data(), "/sync").await {
            Ok(answer) => answer,
            Err(e) => {
                // Say why the daemon is gone, if it is.
                if let Some((_, task)) = self.running.take_if(|(_, t)| t.is_finished()) {
                    panic!("{}: the daemon stopped: {:?}", self.name, task.await);
                }
                panic!("{}: sync failed: {e}", self.name)
            }
        }
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> String {
        tandem::net::client_builder()
            .build()
            .unwrap()
            .get(format!("{}metrics", self.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some((token, _)) = &self.running {
            token.cancel();
        }
    }
}

/// Waits until `check` holds, checking every 20 ms; panics with `what` after `limit`.
pub async fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `len` characters from a small PRNG seeded by `seed`: base64-like text that zstd barely
/// compresses (unlike repeated characters).
fn noise(seed: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 64) as usize] as char
        })
        .collect()
}

/// The entry of origin `id` in a `status --json` document.
pub fn origin_status<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["origins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == id)
        .unwrap_or_else(|| panic!("no origin {id} in {status:#}"))
}

/// The holder of `origin` in a `status --json` document whose field `key` (`"peer"`, its
/// configured name, or `"id"`) is `value`.
pub fn holder_status<'a>(status: &'a Value, origin: &str, key: &str, value: &str) -> &'a Value {
    let o = origin_status(status, origin);
    o["holders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[key] == value)
        .unwrap_or_else(|| panic!("no holder with {key} {value} in {o:#}"))
}

impl TestNode {
    /// Exported state of `origin` on this node, as the CLI prints it.
    pub fn export_origin(&self, origin: &str) -> String {
        let out = super::tandem(&self.config_path(), &["export", "--origin", origin], 0);
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Three nodes, configured and initialized, not started, every round by hand ([`NEVER`]):
/// home pushes its own feed to the community (its peer entry also has `home_lines`), the
/// community serves home's feed to the laptop, and the laptop pulls it from there. `home_node`
/// goes into home's `[node]` table.
pub fn relay_trio(home_node: &str, home_lines: &str) -> (TestNode, TestNode, TestNode) {
    let (home, community, laptop) = (
        TestNode::new("home"),
        TestNode::new("community"),
        TestNode::new("laptop"),
    );
    let h = home.id.to_string();
    home.configure(
        home_node,
        &TestNode::peer_entry(
            &community,
            &format!("push = [\"self\"]\n{home_lines}\n{NEVER}"),
        ),
    );
    community.configure(
        "",
        &format!(
            "{}{}",
            TestNode::peer_entry(&home, NEVER),
            TestNode::peer_entry(&laptop, &format!("serve = [\"{h}\"]\n{NEVER}"))
        ),
    );
    laptop.configure(
        "",
        &TestNode::peer_entry(&community, &format!("pull = [\"{h}\"]\n{NEVER}")),
    );
    for n in [&home, &community, &laptop] {
        n.init();
    }
    (home, community, laptop)
}

/// Two nodes, configured and initialized, not started: home pushes its own feed to the
/// community, by hand ([`NEVER`]). With `source` (a server and a poll interval), home follows
/// that Kinto server.
pub fn backup_pair(source: Option<(&Kinto, &str)>) -> (TestNode, TestNode) {
    let (home, community) = (TestNode::new("home"), TestNode::new("community"));
    let source = source.map_or(String::new(), |(kinto, poll)| home.source(kinto, poll));
    home.configure(
        "",
        &format!(
            "{source}{}",
            TestNode::peer_entry(&community, &format!("push = [\"self\"]\n{NEVER}"))
        ),
    );
    community.configure("", &TestNode::peer_entry(&home, NEVER));
    home.init();
    community.init();
    (home, community)
}
