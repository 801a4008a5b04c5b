//! A full disk under the data directory: `tandem` runs with a file size limit
//! (`RLIMIT_FSIZE`, with `SIGXFSZ` ignored so that writes fail instead of killing it), the
//! same failure a full file system gives without needing root or a small mount. The command
//! must fail saying that space ran out and where, store nothing damaged, and converge once the
//! limit is lifted.

use crate::common;

use std::os::unix::process::CommandExt;
use std::process::Command;

use common::kinto::{Kinto, Options};
use common::node::{NEVER, TestNode};
use common::process::Daemon;
use serde_json::json;

/// `tandem ARGS` on `config` with every file it writes limited to `limit` bytes.
fn tandem_limited(config: &std::path::Path, args: &[&str], limit: u64) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("TANDEM_CONFIG");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_named_stores_nothing_damaged_and_heals() {
    let kinto = Kinto::start(Options::default()).await;
    kinto
        .ok("alice", "PUT", "buckets/b", Some(json!({"data": {}})))
        .await;
    kinto
        .ok(
            "alice",
            "PUT",
            "buckets/b/collections/c",
            Some(json!({"data": {}})),
        )
        .await;
    let ids: Vec<usize> = (0..800).collect();
    for chunk in ids.chunks(100) {
        let requests: Vec<_> = chunk
            .iter()
            .map(|i| json!({"method": "PUT", "path": format!("/buckets/b/collections/c/records/r{i:04}"), "body": {"data": {"i": i, "pad": format!("{i:04}").repeat(500)}}}))
            .collect();
        kinto.batch("alice", requests).await;
    }
    let mut node = TestNode::new("home");
    let mut laptop = TestNode::new("laptop");
    node.configure(
        "",
        &(node.source(&kinto, "1s")
            + &TestNode::peer_entry(&laptop, &format!("serve = [\"self\"]\n{NEVER}"))),
    );
    node.init();
    laptop.configure(
        "",
        &TestNode::peer_entry(&node, &format!("pull = [\"{}\"]\n{NEVER}", node.id)),
    );
    laptop.init();
    let config = node.config_path();

    // About 1.6 MB to ingest; no file may grow past 512 kB.
    let out = tandem_limited(&config, &["sync"], 512 * 1024);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the sync fit: {stderr}");
    let data = node.data();
    assert!(
        stderr.contains("no space left"),
        "the error does not say space ran out: {stderr}"
    );
    assert!(
        stderr.contains(data.to_str().unwrap()),
        "the error does not name the data directory {}: {stderr}",
        data.display()
    );
    println!(
        "the failed sync said: {}",
        stderr.lines().last().unwrap_or_default()
    );
    common::chaos::verify(&config, "after the disk filled up");

    // Space again: the next sync completes and holds the whole source.
    common::tandem(&config, &["sync"], 0);
    common::chaos::verify(&config, "after the limit was lifted");
    let status = node.status();
    assert_eq!(status["origins"][0]["head"]["seq"], 802, "{status}");

    // A node pulling that feed fills its disk the same way, and heals the same way.
    node.release_port();
    laptop.release_port();
    let _home = Daemon::spawn(&config);
    let out = tandem_limited(&laptop.config_path(), &["sync"], 512 * 1024);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the pull fit: {stderr}");
    let data = laptop.data();
    assert!(
        stderr.contains("no space left") && stderr.contains(data.to_str().unwrap()),
        "the pull's error does not say that {} is full: {stderr}",
        data.display()
    );
    common::chaos::verify(&laptop.config_path(), "after the pull filled the disk");
    common::tandem(&laptop.config_path(), &["sync"], 0);
    common::chaos::verify(&laptop.config_path(), "after the pull's limit was lifted");
    assert_eq!(laptop.head(node.id), 802);
}
