//! A throwaway Kinto server: memory backend, loopback, a free port, stopped on drop.
//!
//! Kinto comes from the virtualenv that `scripts/test` builds (`TANDEM_TEST_VENV`), with the
//! kinto-tandem plugin and PostgreSQL drivers. `scripts/test` also starts a PostgreSQL server
//! and names it in `TANDEM_TEST_POSTGRES=postgresql://USER@HOST:PORT`: tests that run on both
//! backends ask for it ([`Options::postgres`]), each server getting a new database there, and
//! `TANDEM_TEST_BACKEND=postgresql` puts every test's servers on it (the same tests, against
//! Kinto's production backend).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The password of every account the helper creates.
pub const PASSWORD: &str = "s3cret-pw";

/// The virtualenv with the pinned Kinto and kinto-http.
pub fn venv() -> PathBuf {
    let dir = std::env::var_os("TANDEM_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv"));
    assert!(
        dir.join("bin/kinto").exists(),
        "no Kinto in {}: run the tests with ./scripts/test, which installs it",
        dir.display()
    );
    dir
}

/// The `kinto` command of the virtualenv, able to load the test servers' own include
/// (`tests/kinto/tandem_test_bcrypt.py`), writing no bytecode into the checkout.
fn kinto_command(venv: &std::path::Path) -> Command {
    let mut command = Command::new(venv.join("bin/kinto"));
    command
        .env(
            "PYTHONPATH",
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kinto"),
        )
        .env("PYTHONDONTWRITEBYTECODE", "1");
    command
}

/// The storage backend and URL for a new server: memory, or a new database on the
/// PostgreSQL server `TANDEM_TEST_POSTGRES` names when the test asks for it (`postgres`) or
/// `TANDEM_TEST_BACKEND=postgresql` asks it for every test.
fn postgres_database(venv: &std::path::Path, options: Options) -> (&'static str, String) {
    let everywhere = std::env::var("TANDEM_TEST_BACKEND").is_ok_and(|b| b == "postgresql");
    if options.memory || (!options.postgres && !everywhere) {
        return ("memory", String::new());
    }
    let server = std::env::var("TANDEM_TEST_POSTGRES").expect(
        "this test needs PostgreSQL: run it with ./scripts/test, which starts one, or set TANDEM_TEST_POSTGRES=postgresql://USER@HOST:PORT",
    );
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let database = format!("tandem_test_{}_{n}", std::process::id());
    let created = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import psycopg2, sys; c = psycopg2.connect(sys.argv[1] + '/postgres'); \
             c.autocommit = True; c.cursor().execute('CREATE DATABASE ' + sys.argv[2])",
            &server,
            &database,
        ])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "creating database {database}: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    (
        "postgresql",
        format!("{}/{database}", server.trim_end_matches('/')),
    )
}

/// The settings of a restore target without the kinto-tandem plugin, as docs/operating.md
/// gives them:
/// permissions stored exactly as sent, and `account` allowed to create and write everything.
pub fn restore_target_settings(account: &str) -> String {
    let mut settings = "kinto.explicit_permissions = false\n".to_owned();
    for kind in ["bucket", "group", "collection", "record"] {
        for permission in ["create", "write"] {
            settings.push_str(&format!(
                "kinto.{kind}_{permission}_principals = account:{account}\n"
            ));
        }
    }
    settings
}

/// A running Kinto server.
pub struct Kinto {
    child: Child,
    /// Its configuration and log, removed when the server is dropped.
    dir: tempfile::TempDir,
    /// Root URL, ending with `/v1/`.
    pub url: String,
    /// The PostgreSQL database it stores into (empty on the memory backend).
    pub storage_url: String,
    http: reqwest::Client,
}

/// How to configure a server.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Install the history plugin.
    pub history: bool,
    /// Install the kinto-tandem plugin, readable by `account:tandem` (`kinto.tandem.principals`).
    pub plugin: bool,
    /// Store into PostgreSQL whatever `TANDEM_TEST_BACKEND` says (for tests that run on both
    /// backends).
    pub postgres: bool,
    /// Keep the data in memory whatever `TANDEM_TEST_BACKEND` says (a server that must accept
    /// what PostgreSQL cannot store).
    pub memory: bool,
    /// The accounts to create (default: `admin`, `tandem`, `poller`, `alice` and `bob`).
    pub accounts: Option<&'static [&'static str]>,
}

impl Options {
    /// A server whose answers all carry `Backoff: <seconds>` (Kinto's `kinto.backoff`).
    pub fn with_backoff(self, seconds: u32) -> (Options, Option<u32>) {
        (self, Some(seconds))
    }
}

impl Kinto {
    /// Starts a server with accounts `admin`, `tandem`, `poller`, `alice` and `bob`. `tandem`
    /// and `poller` read everything through the `*_read_principals` settings.
    pub async fn start(options: Options) -> Kinto {
        Kinto::start_with(options, None).await
    }

    /// [`Kinto::start`], with `kinto.backoff` set when `backoff` is given.
    pub async fn start_with(options: Options, backoff: Option<u32>) -> Kinto {
        let settings = backoff
            .map(|s| format!("kinto.backoff = {s}"))
            .unwrap_or_default();
        Kinto::start_with_settings(options, &settings).await
    }

    /// [`Kinto::start`], with more `[app:main]` settings (ini lines).
    pub async fn start_with_settings(options: Options, settings: &str) -> Kinto {
        let venv = venv();
        let dir = tempfile::tempdir().unwrap();
        // `tandem_test_bcrypt` (tests/kinto): passwords hashed at bcrypt's lowest cost.
        let mut includes = "kinto.plugins.accounts\n                 kinto.plugins.flush\n                 tandem_test_bcrypt".to_owned();
        if options.history {
            includes.push_str("\n                 kinto.plugins.history");
        }
        let mut plugin_settings = String::new();
        if options.plugin {
            includes.push_str(
                "\n                 kinto.plugins.default_bucket\n                 kinto_tandem",
            );
            plugin_settings.push_str("kinto.tandem.principals = account:tandem\n");
        }
        let (backend, storage_url) = postgres_database(&venv, options);
        // The root names this server's own directory: a server that answers on the port we
        // probed is ours, not another test's that took the port first.
        let tag = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches('.')
            .to_owned();
        let ini = format!(
            r#"[server:main]
use = egg:waitress#main
host = 127.0.0.1
port = %(http_port)s
threads = 8

[app:main]
use = egg:kinto
kinto.includes = {includes}
kinto.storage_backend = kinto.core.storage.{backend}
kinto.storage_url = {storage_url}
kinto.cache_backend = kinto.core.cache.memory
kinto.cache_url =
kinto.permission_backend = kinto.core.permission.{backend}
kinto.permission_url = {storage_url}
kinto.userid_hmac_secret = 0a1b2c3d4e5f60718293a4b5c6d7e8f9
kinto.project_name = {tag}
multiauth.policies = account
multiauth.policy.account.use = kinto.plugins.accounts.AccountsPolicy
kinto.account_create_principals = system.Everyone
kinto.account_write_principals = account:admin
kinto.bucket_create_principals = system.Authenticated
kinto.bucket_read_principals = account:tandem account:poller
kinto.collection_read_principals = account:tandem account:poller
kinto.group_read_principals = account:tandem account:poller
kinto.record_read_principals = account:tandem account:poller
kinto.batch_max_requests = 200
# Small pages, so that every test crosses page boundaries.
kinto.paginate_by = 40
{plugin_settings}{backoff}

[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = plain

[logger_root]
level = WARNING
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = plain

[formatter_plain]
format = %(levelname)s %(message)s
"#,
            backoff = settings
        );
        // A setting given again replaces the default one (ini keys must be unique).
        let given: Vec<&str> = settings
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
            .collect();
        let ini: String = ini
            .lines()
            .filter(|l| {
                !l.split_once('=').is_some_and(|(k, _)| {
                    given.contains(&k.trim()) && !settings.lines().any(|s| s.trim() == l.trim())
                })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(dir.path().join("kinto.ini"), ini).unwrap();
        if backend == "postgresql" {
            let migrated = kinto_command(&venv)
                .args(["migrate", "--ini", "kinto.ini"])
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                migrated.status.success(),
                "kinto migrate: {}",
                String::from_utf8_lossy(&migrated.stderr)
            );
        }
        let http = tandem::net::client_builder().build().unwrap();
        // A free port can be taken between our probe and Kinto's bind: try a few.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let url = format!("http://127.0.0.1:{port}/v1/");
            let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
            let mut child = kinto_command(&venv)
                .args(["start", "--ini", "kinto.ini", "--port", &port.to_string()])
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            if wait_ready(&mut child, &http, &url, &tag).await {
                let kinto = Kinto {
                    child,
                    dir,
                    url,
                    storage_url: storage_url.clone(),
                    http,
                };
                let accounts = options
                    .accounts
                    .unwrap_or(&["admin", "tandem", "poller", "alice", "bob"]);
                for user in accounts {
                    kinto.create_account(user).await;
                }
                return kinto;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "Kinto did not start; its log:\n{}",
            std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// Creates the account `user` with [`PASSWORD`].
    pub async fn create_account(&self, user: &str) {
        let r = self
            .http
            .put(format!("{}accounts/{user}", self.url))
            .json(&json!({"data": {"password": PASSWORD}}))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "creating account {user}: {}",
            r.status()
        );
    }

    /// Sends a request as `user` and returns (status, JSON body).
    pub async fn request(
        &self,
        user: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{}", self.url, path.trim_start_matches('/'));
        let mut req = self
            .http
            .request(method.parse().unwrap(), url)
            .basic_auth(user, Some(PASSWORD));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Like [`Kinto::request`] but panics unless the status is 2xx.
    pub async fn ok(&self, user: &str, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.request(user, method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path} as {user}: {status} {value}"
        );
        value
    }

    /// `POST /batch` of `requests` as `user` (panics unless the batch itself answers 2xx);
    /// returns the answer, whose `responses` hold each request's own status.
    pub async fn batch(&self, user: &str, requests: impl serde::Serialize) -> Value {
        let body = serde_json::json!({ "requests": requests });
        self.ok(user, "POST", "batch", Some(body)).await
    }

    /// Everything `user` can read, as the independent client (kinto-http) sees it: one JSON
    /// value per object, sorted by path.
    pub fn dump(&self, user: &str) -> Vec<Value> {
        self.dump_with(user, &[])
    }

    /// [`Kinto::dump`] with extra arguments for `tests/kinto_dump.py`.
    pub fn dump_with(&self, user: &str, extra: &[&str]) -> Vec<Value> {
        self.read_with("kinto_dump.py", user, extra)
    }

    /// Runs one of the kinto-http scripts in `tests/` as `user`; parses its JSON lines.
    fn read_with(&self, script: &str, user: &str, extra: &[&str]) -> Vec<Value> {
        let mut args = vec![self.url.as_str(), user, PASSWORD];
        args.extend_from_slice(extra);
        run_script(script, &args)
    }

    /// The whole state `user` sees, read by `tests/kinto_state.py` (kinto-http): objects with
    /// their permissions, and per collection the records ETag and tombstones.
    pub fn state(&self, user: &str) -> Vec<Value> {
        self.read_with("kinto_state.py", user, &[])
    }

    /// What Kinto's PostgreSQL tables hold, read by `tests/kinto_db.py` (psycopg2, not Kinto):
    /// every bucket, group, collection, record and account with its timestamp, data and
    /// tombstone flag, and every access control entry on them. Panics on the memory backend.
    pub fn database(&self) -> Vec<Value> {
        assert!(
            !self.storage_url.is_empty(),
            "not a PostgreSQL-backed Kinto"
        );
        run_script("kinto_db.py", &[&self.storage_url])
    }

    /// Stops the server (as a crash would: its memory backend is gone).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the Python script `tests/<script>` from the virtualenv with `args`; parses the JSON
/// object on each line it prints.
fn run_script(script: &str, args: &[&str]) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let out = Command::new(venv().join("bin/python"))
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits until the server answers its heartbeat; false if it died or took over a minute.
/// Waits until the server at `url` answers and is this `child` (its root names `tag`); false
/// when the child exits first (its port was taken) or after a minute.
async fn wait_ready(child: &mut Child, http: &reqwest::Client, url: &str, tag: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
            && let Ok(root) = r.json::<Value>().await
        {
            if root["project_name"] == tag {
                return true;
            }
            // Another test's server took the port: ours cannot bind it.
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

impl Drop for Kinto {
    /// Stops the server. Dropped while its thread unwinds from a failed assertion, it prints
    /// the end of its log (a `500`'s traceback, say), which goes with its directory.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            eprintln!("the log of Kinto at {} (last 80 lines):\n{tail}", self.url);
        }
    }
}
