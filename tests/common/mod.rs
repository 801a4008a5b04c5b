//! Helpers shared by the integration tests: throwaway Kinto servers.

#![allow(dead_code)] // each test binary uses a different subset

pub mod devices;
pub mod follower;
pub mod kinto;
pub mod node;
pub mod proxy;

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `tandem` binary with `--config config` and `args`; panics with the whole story
/// unless it exits with `code`.
pub fn tandem(config: &Path, args: &[&str], code: i32) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("TANDEM_CONFIG");
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(code),
        "command {cmd:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
