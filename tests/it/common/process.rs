//! tandem daemons run as real processes (`tandem run`), for tests that measure or signal the
//! process itself: its memory, its exit. Each is killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tandem::feed::Op;
use tandem::identity::NodeKey;
use tandem::store::{Change, Store};

/// A running `tandem run` process.
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// The address its HTTP listener bound (`listen = "127.0.0.1:0"` gives a free port).
    pub addr: String,
}

impl Daemon {
    /// Starts `tandem --config CONFIG run` and waits until it says where it listens.
    pub fn spawn(config: &Path) -> Daemon {
        Daemon::start(Daemon::command(config))
    }

    /// The command [`Daemon::spawn`] runs, for a caller to adjust (limits, environment)
    /// before [`Daemon::start`].
    pub fn command(config: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tandem"));
        command
            .arg("--config")
            .arg(config)
            .arg("run")
            .env_remove("TANDEM_CONFIG");
        command
    }

    /// Starts `command` (a `tandem run`) and waits until it says where it listens.
    pub fn start(mut command: Command) -> Daemon {
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // The address once it is known; everything it said if it ends before.
            let mut said = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("listen="))
                {
                    let _ = tx.send(Ok(addr.to_owned()));
                }
                said.push_str(&line);
                said.push('\n');
            }
            let _ = tx.send(Err(said));
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(addr)) => Daemon { child, addr },
            Ok(Err(said)) => panic!("{command:?} ended before listening; it said:\n{said}"),
            Err(e) => panic!("{command:?} did not say where it listens: {e}"),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of `/proc/PID/status` in bytes (`VmRSS`, `VmHWM`: given there in kB).
    pub fn memory(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid()))
            * 1024
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node named `name` in `dir`, initialized by `tandem init`, whose own feed holds five
/// entries (buckets `b0`…`b4`), with a `[[peer]]` per `(name, key, lines)` (none reachable,
/// none scheduled). Returns its configuration file and its key.
pub fn node_with_entries(
    dir: &Path,
    name: &str,
    peers: &[(&str, &NodeKey, &str)],
) -> (PathBuf, NodeKey) {
    let mut text =
        format!("[node]\nname = \"{name}\"\ndata_dir = \"data\"\nlisten = \"127.0.0.1:0\"\n");
    for (peer, key, lines) in peers {
        text.push_str(&format!(
            "[[peer]]\nname = \"{peer}\"\nurl = \"http://127.0.0.1:9/\"\nid = \"{}\"\nschedule = \"0 0 1 1 *\"\n{lines}\n",
            key.id()
        ));
    }
    let config = dir.join("tandem.toml");
    std::fs::write(&config, text).unwrap();
    crate::common::tandem(&config, &["init"], 0);
    let key = NodeKey::load(&dir.join("data/node.key")).unwrap();
    let mut store = Store::open_writer(&dir.join("data"), key.id()).unwrap();
    let changes: Vec<Change> = (0..5)
        .map(|i| Change {
            op: Op::Put,
            path: format!("/buckets/b{i}"),
            body: b"{\"data\":{}}".to_vec(),
        })
        .collect();
    store.append(&key, &changes, &[]).unwrap();
    (config, key)
}
