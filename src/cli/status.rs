//! `tandem status [--json]`: this node and every origin it holds, read from the store (a
//! read-only connection, so it works beside a running daemon).
//!
//! JSON shape (stable; later versions only add fields):
//!
//! ```json
//! {"node": {"id": "ed25519:…", "name": "home"},
//!  "origins": [{"id": "ed25519:…", "self": true,
//!               "head": {"seq": 12, "hash": "3f2a…"},
//!               "bytes": 4096, "frozen": false, "forks": []}]}
//! ```
//!
//! An origin with no entries has `"head": {"seq": 0, "hash": null}`. `forks` lists stored fork
//! evidence as `{"seq", "our_hash", "their_hash"}`. `daemon` says whether a daemon runs on this
//! store and, if so, the health of its loops: `{"running": true, "workers": [{"kind", "name",
//! "ok", "consecutive_errors", "last_error"}]}`.

use serde::Serialize;

use super::{Cli, load_config};
use crate::api::admin;
use crate::feed::{EntryHash, Seq};
use crate::identity::NodeId;
use crate::scheduler::WorkerReport;
use crate::store::Store;

/// The whole status document (the JSON shape in the module docs).
#[derive(Serialize)]
struct Status {
    node: NodeDoc,
    origins: Vec<OriginDoc>,
    daemon: DaemonDoc,
}

#[derive(Serialize)]
struct NodeDoc {
    id: NodeId,
    name: String,
}

#[derive(Serialize)]
struct OriginDoc {
    id: NodeId,
    #[serde(rename = "self")]
    is_self: bool,
    head: HeadDoc,
    bytes: u64,
    frozen: bool,
    forks: Vec<ForkDoc>,
}

#[derive(Serialize)]
struct HeadDoc {
    seq: Seq,
    hash: Option<EntryHash>,
}

#[derive(Serialize)]
struct ForkDoc {
    seq: Seq,
    our_hash: EntryHash,
    their_hash: EntryHash,
}

#[derive(Serialize)]
struct DaemonDoc {
    running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    workers: Option<Vec<WorkerReport>>,
}

/// Prints the status.
pub fn run(cli: &Cli, as_json: bool) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let store = Store::open_read_only(&config.node.data_dir)?;
    let mut origins = Vec::new();
    for o in store.origins()? {
        let forks = store
            .forks(o.id)?
            .into_iter()
            .map(|f| ForkDoc {
                seq: f.seq,
                our_hash: f.our_hash,
                their_hash: f.their_hash,
            })
            .collect();
        origins.push(OriginDoc {
            id: o.id,
            is_self: o.is_self,
            head: HeadDoc {
                seq: o.head.map_or(Seq(0), |h| h.seq),
                hash: o.head.map(|h| h.hash),
            },
            bytes: o.bytes,
            frozen: o.frozen,
            forks,
        });
    }
    let status = Status {
        node: NodeDoc {
            id: store.node_id()?,
            name: config.node.name.clone(),
        },
        origins,
        daemon: daemon_status(&config.node.data_dir),
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_text(&status);
    }
    Ok(())
}

/// Asks a running daemon for its loops' health; a missing or dead socket means none runs.
fn daemon_status(data_dir: &std::path::Path) -> DaemonDoc {
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
        .and_then(|rt| rt.block_on(admin::call(data_dir, "GET", "/workers")).ok());
    let workers =
        answer.and_then(|a| serde_json::from_value::<Vec<WorkerReport>>(a["workers"].clone()).ok());
    DaemonDoc {
        running: workers.is_some(),
        workers,
    }
}

fn print_text(status: &Status) {
    println!("node {} ({})", status.node.name, status.node.id);
    match &status.daemon.workers {
        None => println!("daemon not running"),
        Some(workers) => {
            println!("daemon running");
            for w in workers {
                let state = match (&w.ok, w.consecutive_errors, &w.last_error) {
                    (true, _, _) => "ok".to_owned(),
                    (false, 0, _) => "starting".to_owned(),
                    (false, n, error) => {
                        format!("failing ({n} attempts): {}", error.as_deref().unwrap_or(""))
                    }
                };
                println!("  {} {}: {state}", w.kind, w.name);
            }
        }
    }
    println!("{} origin(s) held", status.origins.len());
    for o in &status.origins {
        println!(
            "  {}{}  seq {}  head {}  {} bytes{}",
            o.id,
            if o.is_self { " (self)" } else { "" },
            o.head.seq,
            o.head.hash.map_or("-".to_owned(), |h| h.to_string()),
            o.bytes,
            if o.frozen {
                "  FROZEN: fork evidence stored"
            } else {
                ""
            },
        );
        for f in &o.forks {
            println!(
                "    fork at seq {}: ours {} theirs {}",
                f.seq, f.our_hash, f.their_hash
            );
        }
    }
}
