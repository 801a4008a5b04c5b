//! Configuration: one TOML file, parsed and validated in full before anything runs.
//!
//! `peers.example.toml` at the top of the repository is the commented reference. Relative paths
//! in the file (`data_dir`, `password_file`) are resolved against the directory of the file, so a
//! configuration means the same thing whatever the working directory.
//!
//! Every error names the file, the line and the key, and unknown keys are errors: a typo in a
//! backup daemon's configuration must not silently fall back to a default.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use url::Url;

use crate::identity::NodeId;

/// Where `--config` points when neither the flag nor `TANDEM_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tandem/tandem.toml";
/// Default `[node] listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8750";
/// Default `[node] data_dir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/tandem";
/// Default `[source] poll`.
pub const DEFAULT_POLL: Duration = Duration::from_secs(10);
/// `[source] concurrency` when unset: how many requests (collections read, objects fetched)
/// the ingest runs against the source at the same time.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// A configuration file that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key (`peer.schedule`), when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ", key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// `[node]`.
    pub node: NodeConfig,
    /// `[source]`, if this node follows a data server.
    pub source: Option<SourceConfig>,
    /// `[snapshots]`, if this node cuts snapshots.
    pub snapshots: Option<SnapshotConfig>,
    /// `[[peer]]` entries, in file order.
    pub peers: Vec<PeerConfig>,
    /// `[drill]`, if this node proves its backups restorable on a schedule.
    pub drill: Option<DrillConfig>,
}

/// `[node]`: this node's name, storage and listener.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Human name, shown in status and to peers.
    pub name: String,
    /// Directory of the store and the key (absolute after loading).
    pub data_dir: PathBuf,
    /// Address the HTTP listener binds.
    pub listen: SocketAddr,
    /// URL peers use to reach this node, if it differs from `listen`.
    pub public_url: Option<Url>,
    /// How many holders must acknowledge an entry of our feed for it to count as durable.
    pub durability: u32,
    /// Most HTTP connections open at once; `None`: derived from the descriptor limit
    /// (see [`crate::api::listen`]).
    pub max_connections: Option<usize>,
    /// URL requested (GET) after every successful round of work (see
    /// [`crate::scheduler::Heartbeat`]), so that an outside monitor notices when they stop.
    pub heartbeat_url: Option<Url>,
    /// `seal`: whether this node's own feed is sealed (see [`crate::seal`]); `None` when
    /// unset, which keeps a sealed feed sealed and a plain one plain.
    pub seal: Option<bool>,
}

/// How the password for the source is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// Read from this file (first line, trailing newline removed).
    File(PathBuf),
    /// Read from this environment variable.
    Env(String),
}

impl Secret {
    /// Refuses a secret file that group or others may read (or write): a password or token
    /// anyone on the machine can read is no secret. Returns what to do about it.
    pub fn check_private(&self) -> Result<(), String> {
        let Secret::File(path) = self else {
            return Ok(());
        };
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => Err(format!(
                "the secret file {} has mode {:04o}, open to group or others; run `chmod 600 {}`",
                path.display(),
                meta.permissions().mode() & 0o7777,
                path.display()
            )),
            // A missing file is reported when it is read, with the reason.
            _ => Ok(()),
        }
    }
}

/// `[source]`: the data server this node follows.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Server root, normalized to end with `/v1/`.
    pub url: Url,
    /// How tandem authenticates.
    pub auth: SourceAuth,
    /// How often to poll for changes.
    pub poll: Duration,
    /// How many requests the ingest runs at once against the source.
    pub concurrency: usize,
}

/// How tandem authenticates to the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceAuth {
    /// HTTP Basic (Kinto's accounts plugin): `user` and a password.
    Basic {
        /// Account name.
        user: String,
        /// Where the password comes from.
        password: Secret,
    },
    /// `Authorization: Bearer <token>` (OpenID Connect and similar plugins).
    Bearer {
        /// Where the token comes from.
        token: Secret,
    },
}

impl SourceAuth {
    /// Where the password or token comes from.
    pub fn secret(&self) -> &Secret {
        match self {
            SourceAuth::Basic { password, .. } => password,
            SourceAuth::Bearer { token } => token,
        }
    }

    /// Who tandem says it is, for messages: the user, or "the bearer token".
    pub fn who(&self) -> String {
        match self {
            SourceAuth::Basic { user, .. } => format!("user {user:?}"),
            SourceAuth::Bearer { .. } => "the bearer token".to_owned(),
        }
    }
}

/// `[snapshots]`: when to cut snapshots and how many to keep.
#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    /// Cron expression (seconds field allowed), UTC.
    pub schedule: CronSchedule,
    /// Keep the N most recent snapshots.
    pub keep_last: u32,
    /// Keep the last snapshot of each of the N most recent hours that have one.
    pub keep_hourly: u32,
    /// Same per day.
    pub keep_daily: u32,
    /// Same per ISO week.
    pub keep_weekly: u32,
    /// Same per month.
    pub keep_monthly: u32,
}

/// `[drill]`: restore drills, which prove on a schedule that the backups this node holds
/// restore (see [`crate::replicate::drill`]).
#[derive(Debug, Clone)]
pub struct DrillConfig {
    /// Cron expression (seconds field allowed), UTC.
    pub schedule: CronSchedule,
    /// Root of the scratch Kinto server, normalized to end with `/v1/`. Everything a drill
    /// wrote there is deleted before the next one.
    pub to: Url,
    /// Account on the scratch server.
    pub user: String,
    /// Where its password comes from.
    pub password: Secret,
}

impl DrillConfig {
    /// The scratch server as a Kinto client configuration.
    pub fn target(&self) -> SourceConfig {
        SourceConfig {
            url: self.to.clone(),
            auth: SourceAuth::Basic {
                user: self.user.clone(),
                password: self.password.clone(),
            },
            poll: DEFAULT_POLL,
            // Used by listing only: the drill restores with its own concurrency.
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

/// An origin named in a peer's `push`, `pull`, `serve` or `accept` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginRef {
    /// This node's own feed (`"self"`).
    SelfNode,
    /// A specific origin.
    Node(NodeId),
}

/// When a peer is synchronized.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Keep a long-poll open and move changes as they happen.
    Continuous,
    /// At the times a cron expression names.
    Cron(CronSchedule),
}

/// A parsed cron expression, kept with its text.
#[derive(Clone)]
pub struct CronSchedule {
    /// The expression as written.
    pub text: String,
    /// The parsed form (shared: clones of a schedule are cheap).
    pub cron: std::sync::Arc<croner::Cron>,
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronSchedule({:?})", self.text)
    }
}

/// `[[peer]]`: another node and what flows each way.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Unique name, used in logs, status and metrics.
    pub name: String,
    /// Base URL of the peer's HTTP listener.
    pub url: Url,
    /// The peer's node id; requests signed by this key are this peer.
    pub id: NodeId,
    /// Origins we send to it.
    pub push: Vec<OriginRef>,
    /// Origins we fetch from it.
    pub pull: Vec<OriginRef>,
    /// Origins it may read from us.
    pub serve: Vec<OriginRef>,
    /// Origins it may push to us (default: only its own feed).
    pub accept: Vec<OriginRef>,
    /// When to synchronize.
    pub schedule: Schedule,
    /// Most bytes of entries this node stores for the origins it accepts from this peer.
    pub quota: Option<u64>,
    /// `read = true`: the peer is another node of the same person, granted the content keys
    /// of this node's sealed feed (see [`crate::seal`]). Removing it starts a new key epoch.
    pub read: bool,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            line: None,
            key: None,
            message: match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "file not found; pass --config FILE or set TANDEM_CONFIG (see peers.example.toml)".into()
                }
                _ => format!("cannot read: {e}"),
            },
        })?;
        Self::parse(path, &text)
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let err = |span: Option<Range<usize>>, message: String| {
            let (line, key) = match span {
                Some(span) => {
                    let (line, key) = locate(text, span.start);
                    (Some(line), key)
                }
                None => (None, None),
            };
            ConfigError {
                path: path.to_owned(),
                line,
                key,
                message,
            }
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| err(e.span(), e.message().trim().to_owned()))?;
        let base = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());

        let node = NodeConfig {
            name: raw.node.name.0,
            data_dir: base.join(raw.node.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into())),
            listen: raw
                .node
                .listen
                .map(|l| l.0)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().unwrap()),
            public_url: raw.node.public_url.map(|u| u.0),
            durability: raw.node.durability.map_or(1, |d| d.0),
            max_connections: raw.node.max_connections.map(|m| m.0),
            heartbeat_url: raw.node.heartbeat_url.map(|u| u.0),
            seal: raw.node.seal,
        };

        let source = match raw.source {
            None => None,
            Some(spanned) => {
                let span = spanned.span();
                let s = spanned.into_inner();
                let secret = |file: Option<PathBuf>, env: Option<EnvName>| match (file, env) {
                    (Some(file), None) => Some(Secret::File(base.join(file))),
                    (None, Some(var)) => Some(Secret::Env(var.0)),
                    _ => None,
                };
                let given = [
                    s.password_file.is_some(),
                    s.password_env.is_some(),
                    s.token_file.is_some(),
                    s.token_env.is_some(),
                ];
                if given.iter().filter(|g| **g).count() != 1 {
                    return Err(err(
                        Some(span),
                        "set exactly one of password_file, password_env (with user), token_file or token_env".into(),
                    ));
                }
                let auth = match (
                    secret(s.password_file, s.password_env),
                    secret(s.token_file, s.token_env),
                    s.user,
                ) {
                    (Some(password), None, Some(user)) => SourceAuth::Basic {
                        user: user.0,
                        password,
                    },
                    (Some(_), None, None) => {
                        return Err(err(
                            Some(span),
                            "missing user for password authentication".into(),
                        ));
                    }
                    (None, Some(token), None) => SourceAuth::Bearer { token },
                    (None, Some(_), Some(_)) => {
                        return Err(err(
                            Some(span),
                            "user goes with a password, not with a bearer token".into(),
                        ));
                    }
                    _ => unreachable!("exactly one secret was checked above"),
                };
                Some(SourceConfig {
                    url: kinto_root(s.url.0),
                    auth,
                    poll: s.poll.map(|p| p.0).unwrap_or(DEFAULT_POLL),
                    concurrency: s.concurrency.map_or(DEFAULT_CONCURRENCY, |c| c.0 as usize),
                })
            }
        };

        let snapshots = match raw.snapshots {
            None => None,
            Some(spanned) => {
                let span = spanned.span();
                let s = spanned.into_inner();
                let keeps = [
                    s.keep_last,
                    s.keep_hourly,
                    s.keep_daily,
                    s.keep_weekly,
                    s.keep_monthly,
                ];
                if keeps.iter().all(|k| k.is_none_or(|k| k == 0)) {
                    return Err(err(
                        Some(span),
                        "no retention set: give at least one of keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly a value above 0".into(),
                    ));
                }
                Some(SnapshotConfig {
                    schedule: s.schedule,
                    keep_last: s.keep_last.unwrap_or(0),
                    keep_hourly: s.keep_hourly.unwrap_or(0),
                    keep_daily: s.keep_daily.unwrap_or(0),
                    keep_weekly: s.keep_weekly.unwrap_or(0),
                    keep_monthly: s.keep_monthly.unwrap_or(0),
                })
            }
        };

        let drill = match raw.drill {
            None => None,
            Some(spanned) => {
                let span = spanned.span();
                let d = spanned.into_inner();
                // The same rules and messages as the source's password.
                let password = match (d.password_file, d.password_env) {
                    (Some(file), None) => Secret::File(base.join(file)),
                    (None, Some(var)) => Secret::Env(var.0),
                    _ => {
                        return Err(err(
                            Some(span),
                            "set exactly one of password_file, password_env (with user)".into(),
                        ));
                    }
                };
                Some(DrillConfig {
                    schedule: d.schedule,
                    to: kinto_root(d.to.0),
                    user: d.user.0,
                    password,
                })
            }
        };
        if let (Some(drill), Some(source)) = (&drill, &source)
            && drill.to == source.url
        {
            return Err(err(
                None,
                format!(
                    "[drill] to is the [source] server {}: a drill empties its target first; point it at a scratch Kinto server",
                    drill.to
                ),
            ));
        }

        let mut peers: Vec<PeerConfig> = Vec::new();
        for spanned in raw.peer {
            let span = spanned.span();
            let p = spanned.into_inner();
            if peers.iter().any(|q| q.name == p.name.0) {
                return Err(err(
                    Some(span),
                    format!("duplicate peer name {:?}", p.name.0),
                ));
            }
            if let Some(q) = peers.iter().find(|q| q.id == p.id) {
                return Err(err(
                    Some(span),
                    format!("peer {:?} has the same id as peer {:?}", p.name.0, q.name),
                ));
            }
            if p.read && raw.node.seal == Some(false) {
                return Err(err(
                    Some(span),
                    format!(
                        "peer {:?} has read = true, but [node] seal = false: every holder reads an unsealed feed, there are no keys to grant; set seal = true or remove read",
                        p.name.0
                    ),
                ));
            }
            peers.push(PeerConfig {
                name: p.name.0,
                url: p.url.0,
                id: p.id,
                push: p.push,
                pull: p.pull,
                serve: p.serve,
                accept: p.accept.unwrap_or_else(|| vec![OriginRef::Node(p.id)]),
                schedule: p.schedule.unwrap_or(Schedule::Continuous),
                quota: p.quota.map(|q| q.0),
                read: p.read,
            });
        }

        Ok(Config {
            path: path.to_owned(),
            node,
            source,
            snapshots,
            peers,
            drill,
        })
    }

    /// The node key file.
    pub fn key_path(&self) -> PathBuf {
        self.node.data_dir.join("node.key")
    }
}

/// A Kinto server's root URL, given with or without the trailing `/v1`: always ending in `/v1/`.
pub fn kinto_root(mut url: Url) -> Url {
    if !url.path().trim_end_matches('/').ends_with("/v1") {
        let path = format!("{}/v1/", url.path().trim_end_matches('/'));
        url.set_path(&path);
    } else if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

/// Finds the 1-based line of byte `offset` and the dotted key written on it (`section.key`),
/// or the section header when the offset is on one.
fn locate(text: &str, offset: usize) -> (usize, Option<String>) {
    let offset = offset.min(text.len());
    let line_no = text[..offset].matches('\n').count() + 1;
    let mut section: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = Some(
                trimmed
                    .trim_matches(|c| c == '[' || c == ']')
                    .trim()
                    .to_owned(),
            );
        }
        if i + 1 == line_no {
            let key = match trimmed.split_once('=') {
                Some((key, _)) if !trimmed.starts_with('#') && !trimmed.starts_with('[') => {
                    let key = key.trim().trim_matches('"');
                    Some(match &section {
                        Some(s) => format!("{s}.{key}"),
                        None => key.to_owned(),
                    })
                }
                _ => section.clone(),
            };
            return (line_no, key);
        }
    }
    (line_no, section)
}

// ---- raw, serde-facing shapes: every value type validates itself so errors carry a span ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    source: Option<Spanned<RawSource>>,
    snapshots: Option<Spanned<RawSnapshots>>,
    #[serde(default)]
    peer: Vec<Spanned<RawPeer>>,
    drill: Option<Spanned<RawDrill>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrill {
    schedule: CronSchedule,
    to: HttpUrl,
    user: NonEmpty,
    password_file: Option<PathBuf>,
    password_env: Option<EnvName>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Name,
    data_dir: Option<PathBuf>,
    listen: Option<Listen>,
    public_url: Option<HttpUrl>,
    durability: Option<Durability>,
    max_connections: Option<MaxConnections>,
    heartbeat_url: Option<HttpUrl>,
    seal: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[allow(dead_code)] // only "kinto" deserializes; the field exists to be explicit
    kind: SourceKind,
    url: HttpUrl,
    user: Option<NonEmpty>,
    password_file: Option<PathBuf>,
    password_env: Option<EnvName>,
    token_file: Option<PathBuf>,
    token_env: Option<EnvName>,
    poll: Option<Interval>,
    concurrency: Option<Concurrency>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum SourceKind {
    Kinto,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnapshots {
    schedule: CronSchedule,
    keep_last: Option<u32>,
    keep_hourly: Option<u32>,
    keep_daily: Option<u32>,
    keep_weekly: Option<u32>,
    keep_monthly: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: Name,
    url: HttpUrl,
    id: NodeId,
    #[serde(default)]
    push: Vec<OriginRef>,
    #[serde(default)]
    pull: Vec<OriginRef>,
    #[serde(default)]
    serve: Vec<OriginRef>,
    accept: Option<Vec<OriginRef>>,
    schedule: Option<Schedule>,
    quota: Option<Quota>,
    #[serde(default)]
    read: bool,
}

/// Deserializes a string through a validating parser, so a bad value fails with its span.
macro_rules! parsed_string {
    ($ty:ty, $parse:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                let parse: fn(&str) -> Result<$ty, String> = $parse;
                parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// `[node] durability`: a holder count of at least 1.
struct Durability(u32);
impl<'de> Deserialize<'de> for Durability {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            0 => Err(serde::de::Error::custom(
                "durability is a number of holders, at least 1",
            )),
            k => Ok(Durability(k)),
        }
    }
}

/// `[node] max_connections`: 1 to 1,000,000.
struct MaxConnections(usize);
impl<'de> Deserialize<'de> for MaxConnections {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            n @ 1..=1_000_000 => Ok(MaxConnections(n as usize)),
            _ => Err(serde::de::Error::custom(
                "max_connections is a number of connections, 1 to 1000000",
            )),
        }
    }
}

/// `[source] concurrency`: requests at once, 1 to 64.
struct Concurrency(u32);
impl<'de> Deserialize<'de> for Concurrency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            c @ 1..=64 => Ok(Concurrency(c)),
            c => Err(serde::de::Error::custom(format!(
                "concurrency is a number of requests from 1 to 64, not {c}"
            ))),
        }
    }
}

/// `quota`: a size such as "5 GiB" or "500 MB".
struct Quota(u64);
parsed_string!(Quota, |s| {
    match s.parse::<bytesize::ByteSize>() {
        Ok(size) if size.as_u64() > 0 => Ok(Quota(size.as_u64())),
        Ok(_) => {
            Err("a quota of 0 bytes would refuse every push; remove the key for no limit".into())
        }
        Err(e) => Err(format!(
            "{s:?} is not a size ({e}); write it like \"5 GiB\" or \"500 MB\""
        )),
    }
});

struct Name(String);
parsed_string!(Name, |s| {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(Name(s.to_owned()))
    } else {
        Err(format!(
            "invalid name {s:?}: use 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
});

struct NonEmpty(String);
parsed_string!(NonEmpty, |s| if s.is_empty() {
    Err("must not be empty".into())
} else {
    Ok(NonEmpty(s.to_owned()))
});

struct EnvName(String);
parsed_string!(EnvName, |s| {
    let ok = !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(EnvName(s.to_owned()))
    } else {
        Err(format!("invalid environment variable name {s:?}"))
    }
});

struct Listen(SocketAddr);
parsed_string!(Listen, |s| s.parse().map(Listen).map_err(|_| format!(
    "invalid listen address {s:?}: expected IP:PORT, e.g. 127.0.0.1:8750 or [::]:8750"
)));

struct HttpUrl(Url);
parsed_string!(HttpUrl, |s| {
    let url = Url::parse(s).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!(
            "invalid URL {s:?}: expected http:// or https:// with a host"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("URL must not contain credentials; use user and password_file".into());
    }
    Ok(HttpUrl(url))
});

struct Interval(Duration);
parsed_string!(Interval, |s| {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: \"10s\", \"1m 30s\")"))?;
    if d < Duration::from_secs(1) {
        return Err(format!("duration {s:?} is below the 1s minimum"));
    }
    Ok(Interval(d))
});

impl CronSchedule {
    /// Parses a cron expression with 5, 6 (leading seconds) or 7 (trailing year) fields.
    pub fn parse(text: &str) -> Result<CronSchedule, String> {
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(text)
            .map_err(|e| format!("invalid cron expression {text:?}: {e}"))?;
        Ok(CronSchedule {
            text: text.to_owned(),
            cron: std::sync::Arc::new(cron),
        })
    }
}
parsed_string!(CronSchedule, CronSchedule::parse);

parsed_string!(Schedule, |s| if s == "continuous" {
    Ok(Schedule::Continuous)
} else {
    CronSchedule::parse(s)
        .map(Schedule::Cron)
        .map_err(|e| format!("{e}; use \"continuous\" or a cron expression"))
});

parsed_string!(OriginRef, |s| if s == "self" {
    Ok(OriginRef::SelfNode)
} else {
    s.parse()
        .map(OriginRef::Node)
        .map_err(|e| format!("{e}; or \"self\" for this node's own feed"))
});

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "ed25519:iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/tandem/t.toml"), text)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("[node]\nname = \"home\"\n").unwrap();
        assert_eq!(c.node.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.node.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(c.source.is_none() && c.snapshots.is_none() && c.peers.is_empty());
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let c = parse("[node]\nname = \"n\"\ndata_dir = \"state\"\n[source]\nkind = \"kinto\"\nurl = \"http://127.0.0.1:8888\"\nuser = \"u\"\npassword_file = \"pw\"\n").unwrap();
        assert_eq!(c.node.data_dir, PathBuf::from("/etc/tandem/state"));
        let s = c.source.unwrap();
        assert_eq!(
            s.auth,
            SourceAuth::Basic {
                user: "u".into(),
                password: Secret::File("/etc/tandem/pw".into())
            }
        );
        assert_eq!(s.url.as_str(), "http://127.0.0.1:8888/v1/");
        assert_eq!(s.poll, DEFAULT_POLL);
    }

    #[test]
    fn source_url_is_normalized_once() {
        for url in [
            "http://k:1/v1",
            "http://k:1/v1/",
            "http://k:1",
            "http://k:1/",
        ] {
            let c = parse(&format!("[node]\nname = \"n\"\n[source]\nkind = \"kinto\"\nurl = \"{url}\"\nuser = \"u\"\npassword_env = \"P\"\n")).unwrap();
            assert_eq!(c.source.unwrap().url.as_str(), "http://k:1/v1/", "{url}");
        }
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse("[node]\nname = \"n\"\nlisten_addr = \"x\"\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("/etc/tandem/t.toml") && text.contains("listen_addr"),
            "{text}"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "[node]\nname = \"n\"\nlisten = \"nope\"\n",
                3,
                "node.listen",
            ),
            ("[node]\nname = \"bad name\"\n", 2, "node.name"),
            (
                "[node]\nname = \"n\"\n\n[[peer]]\nname = \"p\"\nurl = \"ftp://x\"\nid = \"ID\"\n",
                6,
                "peer.url",
            ),
            (
                "[node]\nname = \"n\"\n[[peer]]\nname = \"p\"\nurl = \"http://x\"\nid = \"ed25519:zzz\"\n",
                6,
                "peer.id",
            ),
            (
                "[node]\nname = \"n\"\n[[peer]]\nname = \"p\"\nurl = \"http://x\"\nid = \"ID\"\nschedule = \"every tuesday\"\n",
                7,
                "peer.schedule",
            ),
            (
                "[node]\nname = \"n\"\n[[peer]]\nname = \"p\"\nurl = \"http://x\"\nid = \"ID\"\npush = [\"me\"]\n",
                7,
                "peer.push",
            ),
            (
                "[node]\nname = \"n\"\n[snapshots]\nschedule = \"0 3 * * *\"\nkeep_daily = -1\n",
                5,
                "snapshots.keep_daily",
            ),
            (
                "[node]\nname = \"n\"\n[source]\nkind = \"kinto\"\nurl = \"http://k\"\nuser = \"u\"\npassword_env = \"P\"\npoll = \"soon\"\n",
                8,
                "source.poll",
            ),
            (
                "[node]\nname = \"n\"\n[source]\nkind = \"couch\"\nurl = \"http://k\"\nuser = \"u\"\npassword_env = \"P\"\n",
                4,
                "source.kind",
            ),
        ];
        for (text, line, key) in cases {
            let e = parse(&text.replace("\"ID\"", &format!("\"{ID}\""))).unwrap_err();
            assert_eq!((e.line, e.key.as_deref()), (Some(line), Some(key)), "{e}");
        }
    }

    #[test]
    fn cross_field_errors_point_at_their_table() {
        let e = parse(
            "[node]\nname = \"n\"\n[source]\nkind = \"kinto\"\nurl = \"http://k\"\nuser = \"u\"\n",
        )
        .unwrap_err();
        assert!(e.message.contains("password_file"), "{e}");
        for (extra, needle) in [
            ("password_env = \"P\"\ntoken_env = \"T\"\n", "exactly one"),
            ("token_env = \"T\"\n", "user goes with a password"),
        ] {
            let text = format!(
                "[node]\nname = \"n\"\n[source]\nkind = \"kinto\"\nurl = \"http://k\"\nuser = \"u\"\n{extra}"
            );
            assert!(
                parse(&text).unwrap_err().message.contains(needle),
                "{extra}"
            );
        }
        let bearer = parse("[node]\nname = \"n\"\n[source]\nkind = \"kinto\"\nurl = \"http://k\"\ntoken_file = \"tok\"\n").unwrap();
        assert_eq!(
            bearer.source.unwrap().auth,
            SourceAuth::Bearer {
                token: Secret::File("/etc/tandem/tok".into())
            }
        );
        let e = parse("[node]\nname = \"n\"\n[source]\nkind = \"kinto\"\nurl = \"http://k\"\npassword_env = \"P\"\n").unwrap_err();
        assert!(e.message.contains("missing user"), "{e}");
        assert_eq!(e.line, Some(3));
        let peer = format!("[[peer]]\nname = \"p\"\nurl = \"http://x\"\nid = \"{ID}\"\n");
        let e = parse(&format!("[node]\nname = \"n\"\n{peer}{peer}")).unwrap_err();
        assert!(e.message.contains("duplicate peer name"), "{e}");
        assert_eq!(e.line, Some(7));
        let e = parse("[node]\nname = \"n\"\n[snapshots]\nschedule = \"0 3 * * *\"\n").unwrap_err();
        assert!(e.message.contains("retention"), "{e}");
    }

    #[test]
    fn source_concurrency_is_bounded() {
        let source = "[node]\nname = \"n\"\n[source]\nkind = \"kinto\"\nurl = \"http://k\"\nuser = \"u\"\npassword_env = \"P\"\n";
        let c = parse(&format!("{source}concurrency = 2\n")).unwrap();
        assert_eq!(c.source.unwrap().concurrency, 2);
        let c = parse(source).unwrap();
        assert_eq!(c.source.unwrap().concurrency, DEFAULT_CONCURRENCY);
        for bad in ["0", "65", "\"many\""] {
            let e = parse(&format!("{source}concurrency = {bad}\n")).unwrap_err();
            assert_eq!(
                (e.line, e.key.as_deref()),
                (Some(8), Some("source.concurrency")),
                "{e}"
            );
        }
    }

    #[test]
    fn peer_defaults() {
        let c = parse(&format!("[node]\nname = \"n\"\n[[peer]]\nname = \"p\"\nurl = \"http://x\"\nid = \"{ID}\"\npush = [\"self\"]\n")).unwrap();
        let p = &c.peers[0];
        assert_eq!(p.push, vec![OriginRef::SelfNode]);
        assert_eq!(p.accept, vec![OriginRef::Node(ID.parse().unwrap())]);
        assert!(matches!(p.schedule, Schedule::Continuous));
    }

    #[test]
    fn quota_and_durability() {
        let peer = format!("[[peer]]\nname = \"p\"\nurl = \"http://x\"\nid = \"{ID}\"\n");
        let c = parse(&format!(
            "[node]\nname = \"n\"\ndurability = 2\n{peer}quota = \"5 GiB\"\n"
        ))
        .unwrap();
        assert_eq!(c.node.durability, 2);
        assert_eq!(c.peers[0].quota, Some(5 << 30));
        let c = parse(&format!("[node]\nname = \"n\"\n{peer}")).unwrap();
        assert_eq!((c.node.durability, c.peers[0].quota), (1, None));
        assert_eq!(c.node.max_connections, None);
        let c = parse("[node]\nname = \"n\"\nmax_connections = 100\n").unwrap();
        assert_eq!(c.node.max_connections, Some(100));
        assert_eq!(c.node.seal, None);
        let c = parse("[node]\nname = \"n\"\nseal = true\n").unwrap();
        assert_eq!(c.node.seal, Some(true));
        for (text, line, key) in [
            (
                format!("[node]\nname = \"n\"\n{peer}quota = \"lots\"\n"),
                7,
                "peer.quota",
            ),
            (
                format!("[node]\nname = \"n\"\n{peer}quota = \"0 B\"\n"),
                7,
                "peer.quota",
            ),
            (
                "[node]\nname = \"n\"\ndurability = 0\n".to_owned(),
                3,
                "node.durability",
            ),
            (
                "[node]\nname = \"n\"\nmax_connections = 0\n".to_owned(),
                3,
                "node.max_connections",
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert_eq!((e.line, e.key.as_deref()), (Some(line), Some(key)), "{e}");
        }
    }

    #[test]
    fn drill_and_heartbeat() {
        let drill =
            "[drill]\nschedule = \"0 4 * * *\"\nto = \"http://scratch:8888\"\nuser = \"drill\"\n";
        let c = parse(&format!(
            "[node]\nname = \"n\"\nheartbeat_url = \"https://hc.example/ping/abc\"\n{drill}password_file = \"pw\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.node.heartbeat_url.unwrap().as_str(),
            "https://hc.example/ping/abc"
        );
        let d = c.drill.unwrap();
        assert_eq!(d.to.as_str(), "http://scratch:8888/v1/");
        assert_eq!(d.schedule.text, "0 4 * * *");
        assert_eq!(d.password, Secret::File("/etc/tandem/pw".into()));
        let c = parse(&format!(
            "[node]\nname = \"n\"\n{drill}password_env = \"P\"\n"
        ))
        .unwrap();
        assert_eq!(c.drill.unwrap().password, Secret::Env("P".into()));
        assert!(parse("[node]\nname = \"n\"\n").unwrap().drill.is_none());
        for (extra, needle) in [
            ("", "exactly one of password_file, password_env"),
            (
                "password_env = \"P\"\npassword_file = \"pw\"\n",
                "exactly one of password_file, password_env",
            ),
        ] {
            let e = parse(&format!("[node]\nname = \"n\"\n{drill}{extra}")).unwrap_err();
            assert!(e.message.contains(needle), "{e}");
            assert_eq!(e.line, Some(3), "{e}");
        }
        for (text, line, key) in [
            (
                format!(
                    "[node]\nname = \"n\"\n{}password_env = \"P\"\n",
                    drill.replace("0 4 * * *", "nightly")
                ),
                4,
                "drill.schedule",
            ),
            (
                format!(
                    "[node]\nname = \"n\"\n{}password_env = \"P\"\n",
                    drill.replace("http://scratch:8888", "scratch")
                ),
                5,
                "drill.to",
            ),
            (
                format!("[node]\nname = \"n\"\n{drill}password_env = \"P\"\ntoken_env = \"T\"\n"),
                8,
                "drill.token_env",
            ),
            (
                "[node]\nname = \"n\"\nheartbeat_url = \"not a url\"\n".to_owned(),
                3,
                "node.heartbeat_url",
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert_eq!((e.line, e.key.as_deref()), (Some(line), Some(key)), "{e}");
        }
        // The source itself is never a scratch server.
        let e = parse(&format!(
            "[node]\nname = \"n\"\n[source]\nkind = \"kinto\"\nurl = \"http://scratch:8888\"\nuser = \"u\"\npassword_env = \"P\"\n{drill}password_env = \"P\"\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("scratch Kinto server"), "{e}");
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = parse("[node]\nname = \"n\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }
}
