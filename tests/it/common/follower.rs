//! A tandem node that follows a Kinto server, driven through its command line (`sync`,
//! `export`, `restore`), as an operator would.

use std::path::PathBuf;

use serde_json::Value;

use super::kinto::{Kinto, PASSWORD};

/// A node whose source is one Kinto server, read as one account.
pub struct Follower {
    /// Holds `tandem.toml`, `pw` and `data/`.
    pub dir: tempfile::TempDir,
    user: String,
}

impl Follower {
    /// A node reading `kinto` as `user` (whose password is [`PASSWORD`]), initialized.
    pub fn new(kinto: &Kinto, user: &str) -> Follower {
        let dir = tempfile::tempdir().unwrap();
        super::write_secret(dir.path().join("pw"), PASSWORD);
        let node = Follower {
            dir,
            user: user.to_owned(),
        };
        node.set_source(kinto);
        node.run(&["init"], 0);
        node
    }

    /// Points the node at `kinto` (the server restored after a disaster, say).
    pub fn set_source(&self, kinto: &Kinto) {
        self.set_source_url(&kinto.url);
    }

    /// Points the node at the Kinto root `url` (a proxy in front of a server, say).
    pub fn set_source_url(&self, url: &str) {
        std::fs::write(
            self.config(),
            format!(
                "[node]\nname = \"home\"\ndata_dir = \"data\"\nlisten = \"127.0.0.1:0\"\n\
                 [source]\nkind = \"kinto\"\nurl = \"{}\"\nuser = \"{}\"\npassword_file = \"pw\"\n",
                url, self.user
            ),
        )
        .unwrap();
    }

    /// The configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("tandem.toml")
    }

    /// Runs `tandem` with `args`, which must exit with `code`; its stdout then stderr.
    pub fn run(&self, args: &[&str], code: i32) -> String {
        let out = super::tandem(&self.config(), args, code);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// `tandem sync`; the number of entries appended.
    pub fn sync(&self) -> u64 {
        let out = self.run(&["sync"], 0);
        out.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{out}"))
    }

    /// The head seq of the own feed.
    pub fn head(&self) -> u64 {
        let out = super::tandem(&self.config(), &["status", "--json"], 0);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        status["origins"][0]["head"]["seq"].as_u64().unwrap()
    }

    /// `tandem export --format jsonl`, parsed.
    pub fn export(&self) -> Vec<Value> {
        self.run(&["export", "--format", "jsonl"], 0)
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// (path, exact bytes of data) of every exported object.
    pub fn raw_data(&self) -> Vec<(String, String)> {
        #[derive(serde::Deserialize)]
        struct Line<'a> {
            path: String,
            #[serde(borrow)]
            data: &'a serde_json::value::RawValue,
        }
        self.run(&["export", "--format", "jsonl"], 0)
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| {
                let line: Line<'_> = serde_json::from_str(l).unwrap();
                (line.path, line.data.get().to_owned())
            })
            .collect()
    }

    /// `tandem restore` of the own origin into `target` as `user`, with `extra` arguments.
    pub fn restore_as(&self, target: &Kinto, user: &str, extra: &[&str], code: i32) -> String {
        super::restore(&self.config(), self.dir.path(), target, user, extra, code)
    }
}
