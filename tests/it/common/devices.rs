//! Offline-first devices: real kinto.js clients in one Node process (`tests/kintojs`), kept
//! alive while a test destroys and restores the servers they sync with.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{Value, json};

use super::kinto::{Kinto, PASSWORD};

/// The Node process holding every device.
pub struct Devices {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Devices {
    /// Starts the process (kinto.js and fake-indexeddb come from `tests/kintojs/node_modules`,
    /// which `scripts/test` installs with `npm ci`).
    pub fn start() -> Devices {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kintojs");
        assert!(
            dir.join("node_modules/kinto").exists(),
            "kinto.js is not installed in {}: run the tests with ./scripts/test",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg(dir.join("devices.mjs"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Devices {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command; its answer.
    pub fn send(&mut self, command: Value) -> Value {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?} for {command}"))
    }

    /// Syncs `device`'s `bucket/collection` with `kinto` as `user`: kinto.js's answer.
    pub fn sync(&mut self, device: &str, kinto: &Kinto, user: &str, bc: (&str, &str)) -> Value {
        self.send(
            json!({"cmd": "sync", "device": device, "remote": kinto.url.trim_end_matches('/'),
                         "user": user, "password": PASSWORD, "bucket": bc.0, "collection": bc.1}),
        )
    }

    /// Runs a local command (`create`, `update`, `delete`, `list`, `cursor`, `reset`); panics
    /// unless it succeeds.
    pub fn local(&mut self, device: &str, bc: (&str, &str), mut command: Value) -> Value {
        command["device"] = json!(device);
        command["bucket"] = json!(bc.0);
        command["collection"] = json!(bc.1);
        let answer = self.send(command.clone());
        assert_eq!(answer["ok"], true, "{command}: {answer}");
        answer
    }

    /// The device's records (without kinto.js's local status), sorted by id.
    pub fn records(&mut self, device: &str, bc: (&str, &str)) -> Vec<Value> {
        self.local(device, bc, json!({"cmd": "list"}))["records"]
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Drop for Devices {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
