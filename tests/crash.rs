//! Crash test of the store: a child process appends batches to a real store and reports each
//! commit on stdout; the parent SIGKILLs it at random moments, reopens the store, and checks
//! that the chain verifies and that every append reported as committed is there. The next
//! round's child continues the same feed, so a damaged tail would also break later appends.
//!
//! Even rounds wait until the child has opened the store and kill it during its appends; odd
//! rounds kill it early, often while it starts, opens (checks, migrates) or first commits.
//!
//! The child is this same test binary started with `child DIR SEED`, which is why the file has
//! its own `main` (`harness = false` in Cargo.toml). Kill delays and the children's batches
//! come from one seed, printed first and taken from `TANDEM_CRASH_SEED` to replay a failure.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[allow(dead_code)] // the rest of the helpers are for the tests that run daemons
#[path = "it/common/chaos.rs"]
mod chaos;

use chaos::Rng;

use tandem::feed::{Op, Seq};
use tandem::identity::NodeKey;
use tandem::store::{Change, CursorUpdate, Store};

const ROUNDS: u32 = 60;
const SEED: [u8; 32] = [42; 32];

/// The child: append forever, printing `committed SEQ` after each commit.
fn child(dir: &Path, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut random = |below| rng.below(below);
    let key = NodeKey::from_seed(SEED);
    let mut store = Store::open_writer(dir, key.id()).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "open").unwrap();
    out.flush().unwrap();
    // n counts entries, so the cursor committed with a batch equals that batch's last seq.
    let mut n = store.head(key.id()).unwrap().map_or(0, |h| h.seq.0);
    loop {
        let size = 1 + random(24) as usize;
        let changes: Vec<Change> = (0..size)
            .map(|_| {
                n += 1;
                let path = format!("/buckets/b/collections/c/records/r{}", random(500));
                if random(5) == 0 {
                    Change {
                        op: Op::Delete,
                        path,
                        body: Vec::new(),
                    }
                } else {
                    // Some bodies are large so that commits span many pages.
                    let pad = "x".repeat(if random(10) == 0 { 20_000 } else { 200 });
                    Change {
                        op: Op::Put,
                        path,
                        body: format!(r#"{{"data":{{"n":{n},"pad":"{pad}"}}}}"#).into_bytes(),
                    }
                }
            })
            .collect();
        let cp = store
            .append(
                &key,
                &changes,
                &[CursorUpdate {
                    name: "crash:n".into(),
                    value: n.to_string(),
                }],
            )
            .unwrap()
            .unwrap();
        writeln!(out, "committed {}", cp.seq).unwrap();
        out.flush().unwrap();
    }
}

fn parent() {
    let mut rng = Rng::from_env("crash");
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::from_seed(SEED);
    let exe = std::env::current_exe().unwrap();
    let mut last_reported = 0u64;
    let mut killed_mid_run = 0;
    for round in 1..=ROUNDS {
        let mut child = Command::new(&exe)
            .arg("child")
            .arg(dir.path())
            .arg(rng.next_u64().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                lines.push(line);
            }
            lines
        });
        if round % 2 == 0 {
            // Even rounds: once the store is open, kill during the appends.
            let deadline = Instant::now() + Duration::from_secs(30);
            while rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .ok()
                .as_deref()
                != Some("open")
            {
                assert!(
                    Instant::now() < deadline,
                    "round {round}: the child never opened the store"
                );
            }
            std::thread::sleep(Duration::from_micros(1_000 + rng.below(80_000)));
        } else {
            // Odd rounds: kill early, often during start-up, the open or the first commit.
            std::thread::sleep(Duration::from_micros(rng.below(30_000)));
        }
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().unwrap();
        let lines = reader.join().unwrap();
        if lines.iter().any(|l| l.starts_with("committed")) {
            killed_mid_run += 1;
        }
        assert!(
            !status.success(),
            "round {round}: the child exited by itself"
        );
        let reported = lines
            .iter()
            .filter_map(|l| l.strip_prefix("committed "))
            .map(|s| s.parse::<u64>().unwrap())
            .max()
            .unwrap_or(last_reported);
        assert!(
            reported >= last_reported,
            "round {round}: reported seq went backwards"
        );
        last_reported = reported;

        if !dir.path().join("tandem.db").exists() {
            continue;
        }
        let store = Store::open_writer(dir.path(), key.id())
            .unwrap_or_else(|e| panic!("round {round}: reopening after SIGKILL: {e}"));
        let head = store.head(key.id()).unwrap().map_or(0, |h| h.seq.0);
        assert!(
            head >= reported,
            "round {round}: committed seq {reported} lost, head is {head}"
        );
        let report = store.verify_origin(key.id()).unwrap();
        assert!(
            report.problems.is_empty(),
            "round {round}: {:?}",
            report.problems
        );
        assert_eq!(report.entries, head, "round {round}");
        // The cursor was committed in the same transaction as the head batch.
        if head > 0 {
            let cursor: u64 = store.cursor("crash:n").unwrap().unwrap().parse().unwrap();
            assert_eq!(
                cursor, head,
                "round {round}: cursor and entries committed apart"
            );
            assert!(
                store
                    .entries_after(key.id(), Seq(head), 1)
                    .unwrap()
                    .is_empty()
            );
        }
        last_reported = head;
    }
    assert!(
        killed_mid_run >= ROUNDS / 3,
        "only {killed_mid_run} rounds were killed while appending"
    );
    assert!(last_reported > 0, "nothing was ever committed");
    println!(
        "crash: {ROUNDS} SIGKILL rounds ({killed_mid_run} while appending), {last_reported} entries verified, {:.1}s",
        started.elapsed().as_secs_f64()
    );
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("child") => child(Path::new(&args[2]), args[3].parse().unwrap()),
        // `cargo test -- --list` and filters: this binary holds one test, named "crash".
        Some("--list") => println!("crash: test"),
        _ => parent(),
    }
}
