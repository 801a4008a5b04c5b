//! Helpers shared by the integration tests: running the `tandem` binary, throwaway Kinto
//! servers ([`kinto`]), nodes in-process ([`node`]) or as processes ([`process`]), kinto.js
//! devices, a faulty proxy, restore targets and comparisons ([`restored`]), and the seeded
//! randomness of the chaos tests.

pub mod chaos;
pub mod devices;
pub mod follower;
pub mod kinto;
pub mod node;
pub mod process;
pub mod proxy;
pub mod restored;

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
    run(cmd, code)
}

/// Runs `cmd` to completion; panics with the command, its stdout and its stderr unless it
/// exits with `code`.
pub fn run(mut cmd: Command, code: i32) -> Output {
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

/// The permission bits of the file at `path`.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Writes a password or token file readable by its owner only (tandem refuses others).
pub fn write_secret(path: impl AsRef<Path>, text: impl AsRef<[u8]>) {
    use std::os::unix::fs::OpenOptionsExt;
    let path = path.as_ref();
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::io::Write::write_all(&mut file, text.as_ref()).unwrap();
}

/// `tandem restore --to TARGET --user USER --password-file DIR/pw` with `extra` arguments, run
/// on the configuration `config` (the password file, [`kinto::PASSWORD`], is written into
/// `dir`); panics unless it exits with `code`; returns stdout and stderr together.
pub fn restore(
    config: &Path,
    dir: &Path,
    target: &kinto::Kinto,
    user: &str,
    extra: &[&str],
    code: i32,
) -> String {
    let pw = dir.join("pw");
    write_secret(&pw, kinto::PASSWORD);
    let mut args = vec![
        "restore",
        "--to",
        &target.url,
        "--user",
        user,
        "--password-file",
        pw.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = tandem(config, &args, code);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}
