//! `tandem status [--json]`: this node and every origin it holds, read from the store (a
//! read-only connection, so it works beside a running daemon).
//!
//! JSON shape (stable; later versions only add fields):
//!
//! ```json
//! {"node": {"id": "ed25519:…", "name": "home", "durability": 1, "recovering": false},
//!  "origins": [{"id": "ed25519:…", "self": true,
//!               "head": {"seq": 12, "hash": "3f2a…"},
//!               "bytes": 4096, "frozen": false, "forks": [],
//!               "durable_seq": 12, "base_seq": 0, "damaged": [],
//!               "holders": [{"peer": "community", "id": "ed25519:…", "acked_seq": 12,
//!                            "acked_at": "2026-11-26T15:04:05.123Z", "served_seq": 12,
//!                            "behind": false, "last_rollback": null,
//!                            "pulled_seq": null, "pulled_at": null}]}]}
//! ```
//!
//! An origin with no entries has `"head": {"seq": 0, "hash": null}`. `forks` lists stored fork
//! evidence as `{"seq", "our_hash", "their_hash"}`. `holders` are the nodes known to hold the
//! origin: `acked_seq` and `acked_at` come from the latest receipt the holder signed (0 and
//! null without one), `served_seq` is the head it showed when last asked, and `behind` is true
//! while that is less than it acknowledged or served before (it rolled back or withholds);
//! `last_rollback` keeps the last such finding, `{"at", "served_seq", "expected_seq"}`, after a
//! push has healed it. On the own origin, `pulled_seq` says where a peer that reads the feed
//! from this node last asked for entries after (what it says it holds; null if it never
//! pulled), and `pulled_at` when it first asked that (refreshed hourly while it keeps asking
//! the same): compaction waits for it as for receipts.
//! `peer` is the holder's name in the configuration (null if it is not configured: no longer,
//! or a holder known only from receipts relayed by other nodes, which does not count toward
//! `durable_seq`). A holder's receipt comes from a push, from the holder after it pulled, or
//! relayed by the nodes between (see [`crate::replicate::federate`]).
//! `damaged` lists the entries found damaged in this store (their bytes no longer hash or chain:
//! the disk, or an edited file) as `{"seq", "found_at", "detail", "needs_operator"}`: they are
//! not served until a good copy fetched from a peer replaces them; `needs_operator` is true
//! when every peer was asked and none had one (restore the entry from a backup or an archive).
//! `base_seq` is the compacted base (0 when the whole feed is held): below it, only the
//! entries holding the state at that seq's snapshot are kept.
//! `sealed_from` (own origin only, absent when the feed is plain) is the first sealed seq
//! (see [`crate::seal`]). `readers` (absent without a readers statement) is
//! `{"epoch", "ids"}`: the key epoch new entries are sealed under and the node ids that may
//! read the origin. `unread` is true (absent otherwise) for a sealed origin this node holds
//! without reading it, or has not opened up to its head.
//! `durable_seq` (own origin only) is the highest seq held by at least `node.durability`
//! configured holders. `recovering` is true while the node fetches its own feed back from its peers. `daemon` says whether a daemon runs on this
//! store and, if so, the health of its loops: `{"running": true, "workers": [{"kind", "name",
//! "ok", "consecutive_errors", "last_error", "needs_operator"}]}`; `needs_operator` is the
//! failure a loop stopped on because retrying cannot heal it (null otherwise): it waits for
//! `tandem sync` or `SIGHUP`. `source.permissions_incomplete` lists the
//! buckets followed without record permissions (the history the account reads does not
//! cover them; see docs/operating.md).
//!
//! Restore drills (see `docs/drills.md`): each origin has `"drill": {"at", "ok", "seq",
//! "duration_ms", "objects", "error"}`, its last drill (null if never drilled): when it started,
//! whether the scratch server read back equal to the snapshot, the snapshot's seq (0 if none
//! was taken), how long it took in ms (the measured recovery time), the live objects restored,
//! and why it failed (null when ok). The own origin also has `rpo_seconds`: the age of the
//! newest change that `node.durability` configured holders acknowledged (null while none is).
//!
//! Migrations (`tandem migrate start`, see docs/operating.md): `"migrations": [{"id", "origin",
//! "target", "selection": {"buckets", "collections"}, "applied_seq", "origin_head", "state",
//! "error", "created_at"}]`: what each mirrors where, the seq up to which every chosen entry is
//! on the target, the origin's head here, `state` `mirroring` or `stopped`, and `error`, why it
//! stopped (it names the object found changed on the target; null while it mirrors).
//! `state` is `finishing` while `tandem migrate finish` runs (or was interrupted), then
//! `finished` (with `moved_seq`, the seq of its moved statements) or `aborted`.
//!
//! Moves: each origin has `"moved": [{"path", "to", "applied_seq", "migration", "at"}]`, the
//! moved statements in its feed (see [`crate::replicate::moves`]): the bucket or collection
//! that lives on another server now, that server's root URL, the seq up to which it holds
//! every change, the migration's number on the origin's node, and when (RFC 3339).

use serde::Serialize;

use super::admin_client;
use super::{Cli, load_config};
use crate::feed::{EntryHash, Seq};
use crate::identity::NodeId;
use crate::scheduler::WorkerReport;

/// The whole status document (the JSON shape in the module docs).
#[derive(Serialize)]
struct Status {
    node: NodeDoc,
    origins: Vec<OriginDoc>,
    daemon: DaemonDoc,
    source: SourceDoc,
    migrations: Vec<super::migrate::MigrationDoc>,
}

/// What the source path could not record.
#[derive(Serialize)]
struct SourceDoc {
    /// Buckets polled without record permissions, because the history the account can read
    /// does not cover them.
    permissions_incomplete: Vec<String>,
}

#[derive(Serialize)]
struct NodeDoc {
    id: NodeId,
    name: String,
    durability: u32,
    recovering: bool,
}

#[derive(Serialize)]
struct ReadersDoc {
    epoch: u32,
    ids: Vec<NodeId>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    durable_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sealed_from: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    readers: Option<ReadersDoc>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unread: bool,
    base_seq: u64,
    holders: Vec<HolderDoc>,
    damaged: Vec<DamagedDoc>,
    drill: Option<DrillDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rpo_seconds: Option<Option<u64>>,
    moved: Vec<MovedDoc>,
}

#[derive(Serialize)]
struct MovedDoc {
    path: String,
    to: String,
    applied_seq: u64,
    migration: u64,
    at: String,
}

#[derive(Serialize)]
struct DrillDoc {
    at: String,
    ok: bool,
    seq: u64,
    duration_ms: u64,
    objects: u64,
    error: Option<String>,
}

#[derive(Serialize)]
struct DamagedDoc {
    seq: Seq,
    found_at: String,
    detail: String,
    needs_operator: bool,
}

#[derive(Serialize)]
struct HolderDoc {
    peer: Option<String>,
    id: NodeId,
    acked_seq: u64,
    acked_at: Option<String>,
    served_seq: Option<u64>,
    behind: bool,
    last_rollback: Option<RollbackDoc>,
    pulled_seq: Option<u64>,
    pulled_at: Option<String>,
}

#[derive(Serialize)]
struct RollbackDoc {
    at: String,
    served_seq: u64,
    expected_seq: u64,
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
    // With the keys of the sealed feeds this node reads: their moved statements are sealed.
    let store = super::open_to_read(&config)?;
    let mut origins = Vec::new();
    let drills = store.drills()?;
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
        let holders = store
            .holders(o.id)?
            .into_iter()
            .map(|h| HolderDoc {
                peer: config
                    .peers
                    .iter()
                    .find(|p| p.id == h.holder)
                    .map(|p| p.name.clone()),
                id: h.holder,
                acked_seq: h.acked_seq,
                acked_at: h.acked_at.map(super::rfc3339),
                served_seq: h.served_seq,
                behind: h.behind(),
                last_rollback: h.last_rollback.map(|r| RollbackDoc {
                    at: super::rfc3339(r.at),
                    served_seq: r.served_seq,
                    expected_seq: r.expected_seq,
                }),
                pulled_seq: h.pulled_seq,
                pulled_at: h.pulled_at.map(super::rfc3339),
            })
            .collect();
        let counted: Vec<NodeId> = config.peers.iter().map(|p| p.id).collect();
        let durable_seq = if o.is_self {
            Some(store.durable_seq(o.id, config.node.durability, &counted)?)
        } else {
            None
        };
        let rpo_seconds = if o.is_self {
            let at = store.durable_at(o.id, config.node.durability, &counted)?;
            Some(at.map(|at| crate::store::now_ms().saturating_sub(at) / 1000))
        } else {
            None
        };
        let drill = drills.iter().find(|d| d.origin == o.id).map(|d| DrillDoc {
            at: super::rfc3339(d.at),
            ok: d.ok,
            seq: d.seq,
            duration_ms: d.duration_ms,
            objects: d.objects,
            error: d.error.clone(),
        });
        let damaged = store
            .damaged(o.id)?
            .into_iter()
            .map(|d| DamagedDoc {
                seq: d.seq,
                found_at: super::rfc3339(d.found_at),
                detail: d.detail,
                needs_operator: d.unrepaired_at.is_some(),
            })
            .collect();
        let moved = crate::replicate::moves::moves(&store, o.id)?
            .into_iter()
            .map(|m| MovedDoc {
                path: m.path,
                to: m.to,
                applied_seq: m.applied_seq,
                migration: m.migration,
                at: super::rfc3339(m.at),
            })
            .collect();
        let sealed_from = if o.is_self {
            store.sealed_from()?.map(|s| s.0)
        } else {
            None
        };
        let readers = store.readers(o.id)?.map(|r| ReadersDoc {
            epoch: r.epoch,
            ids: r.ids(),
        });
        origins.push(OriginDoc {
            sealed_from,
            readers,
            unread: store.holds_unread(o.id)?,
            moved,
            drill,
            rpo_seconds,
            damaged,
            durable_seq,
            base_seq: store.base(o.id)?.map_or(0, |b| b.seq.0),
            holders,
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
            durability: config.node.durability,
            recovering: store.recovering()?,
        },
        origins,
        daemon: daemon_status(&config.node.data_dir),
        source: SourceDoc {
            permissions_incomplete: crate::replicate::ingest::permissions_incomplete(&store)?,
        },
        migrations: super::migrate::migrations(&store)?,
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
        .and_then(|rt| rt.block_on(admin_client::get(data_dir, "/workers")).ok());
    let workers =
        answer.and_then(|a| serde_json::from_value::<Vec<WorkerReport>>(a["workers"].clone()).ok());
    DaemonDoc {
        running: workers.is_some(),
        workers,
    }
}

/// How long ago an RFC 3339 time was, roughly ("3m", "2h", "5d").
fn age(at: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(at) else {
        return "?".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0) as u64;
    humantime::format_duration(std::time::Duration::from_secs(secs))
        .to_string()
        .split(' ')
        .next()
        .unwrap_or("0s")
        .to_owned()
}

fn print_text(status: &Status) {
    println!("node {} ({})", status.node.name, status.node.id);
    if status.node.recovering {
        println!(
            "RECOVERING: fetching this node's own feed back from its peers; nothing is appended until then"
        );
    }
    match &status.daemon.workers {
        None => println!("daemon not running"),
        Some(workers) => {
            println!("daemon running");
            for w in workers {
                let state = match (&w.ok, w.consecutive_errors, &w.last_error) {
                    _ if w.needs_operator.is_some() => format!(
                        "NEEDS OPERATOR: {} (fix it, then `tandem sync` or reload with SIGHUP)",
                        w.needs_operator.as_deref().unwrap_or("")
                    ),
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
    for bucket in &status.source.permissions_incomplete {
        println!(
            "WARNING: {bucket} is followed without record permissions (its history does not cover it for this account)"
        );
    }
    super::migrate::print_text(&status.migrations);
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
        for m in &o.moved {
            println!(
                "    moved: {} lives at {} since {} (every change up to seq {} is there)",
                m.path, m.to, m.at, m.applied_seq
            );
        }
        if o.base_seq > 0 {
            println!(
                "    compacted: entries up to seq {} hold only the state at that seq's snapshot",
                o.base_seq
            );
        }
        if let Some(from) = o.sealed_from {
            println!("    sealed from seq {from}: holders keep it without reading it");
        }
        if let Some(readers) = &o.readers {
            println!(
                "    readers (key epoch {}): {}",
                readers.epoch,
                match readers.ids.is_empty() {
                    true => "none".to_owned(),
                    false => readers
                        .ids
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            );
        }
        if o.unread {
            println!("    sealed: held and verified here, not readable by this node");
        }
        if let Some(durable) = o.durable_seq {
            println!(
                "    durable up to seq {durable} (held by at least {} holder(s))",
                status.node.durability
            );
        }
        if let Some(Some(rpo)) = o.rpo_seconds {
            println!(
                "    recovery point: the newest durable change is {} old",
                humantime::format_duration(std::time::Duration::from_secs(rpo))
            );
        }
        match &o.drill {
            None => {}
            Some(d) if d.ok => println!(
                "    last drill {} ago: ok, snapshot seq {}, {} objects restored in {} ms",
                age(&d.at),
                d.seq,
                d.objects,
                d.duration_ms
            ),
            Some(d) => println!(
                "    last drill {} ago: FAILED: {}",
                age(&d.at),
                d.error.as_deref().unwrap_or("")
            ),
        }
        for h in &o.holders {
            let name = h.peer.clone().unwrap_or_else(|| h.id.to_string());
            let acked = match &h.acked_at {
                Some(at) => format!("acked seq {} ({} ago)", h.acked_seq, age(at)),
                None => "no receipt".to_owned(),
            };
            let pulled = match (h.pulled_seq, &h.pulled_at) {
                (Some(seq), Some(at)) => format!(", pulled after seq {seq} ({} ago)", age(at)),
                _ => String::new(),
            };
            let served = h
                .served_seq
                .map(|s| format!(", serves seq {s}"))
                .unwrap_or_default();
            let behind = if h.behind {
                "  BEHIND: serves less than it acknowledged or served before (rolled back or withholding)"
            } else {
                ""
            };
            println!("    holder {name}: {acked}{pulled}{served}{behind}");
            if let Some(r) = &h.last_rollback {
                println!(
                    "      served seq {} at {} after acknowledging or serving seq {}: rolled back or withholding",
                    r.served_seq, r.at, r.expected_seq
                );
            }
        }
        for d in &o.damaged {
            println!(
                "    DAMAGED entry at seq {} (found {} ago: {}): not served; {}",
                d.seq,
                age(&d.found_at),
                d.detail,
                if d.needs_operator {
                    "no peer holds a good copy: restore it from a backup or an archive"
                } else {
                    "fetching a good copy from the peers"
                }
            );
        }
        for f in &o.forks {
            println!(
                "    fork at seq {}: ours {} theirs {}",
                f.seq, f.our_hash, f.their_hash
            );
        }
    }
}
