//! What the crash and fault tests share: a seeded random source whose seed is printed (and
//! taken from `TANDEM_CRASH_SEED`), so that a failing sequence of kill delays and faults can be
//! replayed exactly, and `tandem` processes to start, SIGKILL and check.
//!
//! The generator is SplitMix64: a few lines, no dependency, and good enough to pick delays and
//! faults; nothing here needs more.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A seeded random source.
pub struct Rng {
    state: u64,
}

impl Rng {
    /// The generator for `test`: seeded by `TANDEM_CRASH_SEED` if set, else at random. Prints
    /// the seed (the test harness shows it when the test fails).
    pub fn from_env(test: &str) -> Rng {
        let seed = match std::env::var("TANDEM_CRASH_SEED") {
            Ok(text) => text
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("TANDEM_CRASH_SEED={text} is not a u64")),
            Err(_) => getrandom::u64().unwrap(),
        };
        println!("{test}: seed = {seed} (set TANDEM_CRASH_SEED={seed} to replay)");
        Rng::new(seed)
    }

    /// The generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A duration between `low` and `high`.
    pub fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = high.saturating_sub(low).as_micros() as u64;
        low + Duration::from_micros(self.below(span.max(1)))
    }
}

/// Starts `tandem --config CONFIG ARGS…`, its output discarded but for its standard error,
/// which goes to the file [`stderr_of`] names (beside the config), so that a command that
/// fails by itself can say why.
pub fn spawn(config: &Path, args: &[&str]) -> Child {
    let stderr = std::fs::File::create(stderr_of(config)).unwrap();
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("TANDEM_CONFIG")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Where [`spawn`] writes the standard error of the last command it started on `config`.
pub fn stderr_of(config: &Path) -> std::path::PathBuf {
    config.with_extension("stderr")
}

/// SIGKILLs `child` after `delay` unless it ended before; returns `None` when the kill
/// landed, else how the command ended by itself.
pub fn kill_after(mut child: Child, delay: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + delay;
    // Poll, so that a command that ends early is seen to end (and its exit checked).
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(2)));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    // It may have ended between the last poll and the kill.
    use std::os::unix::process::ExitStatusExt;
    if status.signal() == Some(libc::SIGKILL) {
        None
    } else {
        Some(status)
    }
}

/// `tandem verify` on the store of `config` must pass.
pub fn verify(config: &Path, when: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--config")
        .arg(config)
        .arg("verify")
        .env_remove("TANDEM_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{when}: tandem verify failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
