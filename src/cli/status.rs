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

use serde_json::json;

use super::{Cli, load_config};
use crate::api::admin;
use crate::store::Store;

/// Prints the status.
pub fn run(cli: &Cli, as_json: bool) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let store = Store::open_read_only(&config.node.data_dir)?;
    let node_id = store.node_id()?;
    let mut origins = Vec::new();
    for o in store.origins()? {
        let forks: Vec<_> = store
            .forks(o.id)?
            .into_iter()
            .map(|f| json!({ "seq": f.seq, "our_hash": f.our_hash, "their_hash": f.their_hash }))
            .collect();
        origins.push(json!({
            "id": o.id,
            "self": o.is_self,
            "head": match o.head {
                Some(h) => json!({ "seq": h.seq, "hash": h.hash }),
                None => json!({ "seq": 0, "hash": null }),
            },
            "bytes": o.bytes,
            "frozen": o.frozen,
            "forks": forks,
        }));
    }
    // A running daemon answers on its admin socket; a missing or dead socket means none runs.
    let workers = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
        .and_then(|rt| {
            rt.block_on(admin::call(&config.node.data_dir, "GET", "/workers"))
                .ok()
        });
    let daemon = match &workers {
        Some(w) => json!({ "running": true, "workers": w["workers"] }),
        None => json!({ "running": false }),
    };
    if as_json {
        let doc = json!({
            "node": { "id": node_id, "name": config.node.name },
            "origins": origins,
            "daemon": daemon,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("node {} ({})", config.node.name, node_id);
    match daemon["workers"].as_array() {
        None => println!("daemon not running"),
        Some(workers) => {
            println!("daemon running");
            for w in workers {
                let state = if w["ok"] == true {
                    "ok".to_owned()
                } else if w["consecutive_errors"] == 0 {
                    "starting".to_owned()
                } else {
                    format!(
                        "failing ({} attempts): {}",
                        w["consecutive_errors"],
                        w["last_error"].as_str().unwrap_or("")
                    )
                };
                println!(
                    "  {} {}: {state}",
                    w["kind"].as_str().unwrap_or(""),
                    w["name"].as_str().unwrap_or("")
                );
            }
        }
    }
    println!("{} origin(s) held", origins.len());
    for o in &origins {
        let head = &o["head"];
        println!(
            "  {}{}  seq {}  head {}  {} bytes{}",
            o["id"].as_str().unwrap_or(""),
            if o["self"] == true { " (self)" } else { "" },
            head["seq"],
            head["hash"].as_str().unwrap_or("-"),
            o["bytes"],
            if o["frozen"] == true {
                "  FROZEN: fork evidence stored"
            } else {
                ""
            },
        );
        for f in o["forks"].as_array().into_iter().flatten() {
            println!(
                "    fork at seq {}: ours {} theirs {}",
                f["seq"],
                f["our_hash"].as_str().unwrap_or(""),
                f["their_hash"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}
