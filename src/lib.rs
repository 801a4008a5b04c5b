//! # tandem
//!
//! A daemon that lets community servers and personal servers back each other up. It follows a
//! data server (Kinto first), records every change in a signed, hash-chained feed, exchanges
//! feeds with the peers its configuration names, and proves what it holds.
//!
//! This page is the architecture: the layers, what each owns, and what it must not know.
//!
//! ## Layers (dependencies point downward only)
//!
//! ```text
//! main.rs        parse the command line, start logging, dispatch, map errors to exit codes
//! cli/           one file per subcommand; the only place that prints for humans
//! daemon         composition root of `tandem run`: builds everything, owns signals and shutdown
//! api/           the HTTP router (axum): /healthz, /metrics, later the peer API under /v1/
//! scheduler      long-lived loops with their timing: probing the source and the peers
//! store/         the only SQLite user: feeds, checkpoints, state, cursors, fork evidence
//! source/kinto   the Kinto client: credentials, lists with _since/ETag, objects (reqwest)
//! probe          is a peer answering? (reqwest)
//! feed, identity, config, telemetry, backoff, net
//!                leaves: the byte formats and signatures, keys, TOML, logging and metrics,
//!                retry timing, HTTP client set-up
//! ```
//!
//! ## Invariants the code keeps
//!
//! - [`feed`] is pure: no I/O, no clock. It defines the entry encoding and every signed
//!   statement; hashing and signature checks happen only over exact stored or received bytes.
//! - [`store`] never trusts unverified input: foreign entries arrive as a
//!   [`feed::VerifiedBatch`], which only [`feed::verify_batch`] can build. Each write is one
//!   transaction including the cursors that produced it.
//! - [`store`] knows nothing of HTTP, Kinto or peers; [`api`], [`source`] and [`probe`] know nothing of SQL.
//! - Secrets ([`identity::NodeKey`], source passwords) are never logged or printed.
//! - `cli` and `daemon` use `anyhow`; every other module has its own `thiserror` enum whose
//!   variants say what to do.

pub mod api;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod feed;
pub mod identity;
pub mod net;
pub mod probe;
pub mod protocol;
pub mod replicate;
pub mod scheduler;
pub mod source;
pub mod store;
pub mod telemetry;
