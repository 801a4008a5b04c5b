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
//! main.rs        parse the command line, dispatch, map errors to exit codes
//! cli/           one file per subcommand; the only place that prints for humans
//! daemon         composition root of `tandem run`: builds everything, owns signals and shutdown
//! api/           HTTP (axum): /healthz, /metrics, the signed peer API under /v1/ (api/peer;
//!                authentication and per-peer limits in api/peer/guard), the local admin
//!                socket (api/admin), and the listener's time limits and connection cap
//!                (api/listen)
//! scheduler      long-lived loops and their timing: ingest passes, pushes on change, long
//!                polls, cron times, the recovery of the own feed before any append; a failure
//!                that cannot heal stops its loop until the operator re-arms it; word from a
//!                peer ends the backoff of the loops that could not reach it
//! replicate/     one pass of work, no spawning, no timing: ingest (the kinto-tandem journal,
//!                history and polling paths), federate (push, pull, recover with one peer),
//!                accept (a page a peer pushes), snapshot (sign the own state, apply retention),
//!                restore (a state into Kinto), mirror (a migration's later entries into its
//!                target), archive (write, verify and load a portable archive)
//! store/         the only SQLite user, reached from async code through one StoreHandle (a
//!                writer thread, a pool of readers): feeds, checkpoints, state, cursors, fork evidence,
//!                what holders acknowledged, entries found damaged on disk (never served;
//!                replaced through the accept path by a good copy a peer sends), migrations
//!                and what their mirrors wrote, the plaintext of sealed feeds this node may
//!                read (kept beside them, never served)
//! source/kinto   the Kinto client: credentials, lists with _since/ETag, objects, batches, the
//!                kinto-tandem plugin's capability (reqwest)
//! peer           the peer protocol client: signed requests, pages, receipts (reqwest)
//! probe          is a peer answering? (reqwest)
//! feed, protocol, identity, keybackup, seal, config, telemetry, backoff, net, retention,
//! atomic         leaves: the feed's byte format and signed statements (checkpoints, receipts,
//!                snapshots and their state root), sealed entries (keyed path hashes and
//!                ciphertext that holders keep unread), request signatures (RFC 9421) and the
//!                nonces already seen, the page, receipt and archive formats, keys, the node
//!                key sealed under a passphrase and the proof that fetches it back, TOML,
//!                logging and metrics, retry timing, HTTP client set-up (no redirects, bounded
//!                body reads), which snapshots a retention policy keeps, files written whole
//!                (temporary file, fsync, rename, fsync of the directory)
//! ```
//!
//! Where to start reading: `feed` (the format everything else carries), then `store` (what is
//! kept and how), then `replicate::ingest` (how a Kinto server becomes a feed), then
//! `protocol::wire` and `replicate::federate` (how feeds move between nodes).
//!
//! ## Invariants the code keeps
//!
//! - [`feed`] is pure: no I/O, no clock. It defines the entry encoding and every signed
//!   statement; hashing and signature checks happen only over exact stored or received bytes.
//! - [`store`] never trusts unverified input: foreign entries arrive as a
//!   [`feed::VerifiedBatch`], which only [`feed::verify_batch`] can build. Each write is one
//!   transaction including the cursors that produced it.
//! - [`store`] knows nothing of HTTP, Kinto or peers; [`api`], [`source`], [`replicate`] and
//!   [`probe`] know nothing of SQL.
//! - [`replicate`] decides nothing about time: the [`scheduler`] (or a command) runs a pass.
//! - Every peer request is authenticated from its headers before any of its body is read, for
//!   this node and once ([`api::peer::guard`]) — except the fetch of a key backup, which is
//!   proven by a key the passphrase gives, reads at most a few hundred bytes, and answers a
//!   stranger the same whatever it asks ([`api::peer::keybackup`]) — and
//!   every page from a peer is verified against its origin's key before the store sees it,
//!   whoever relayed it ([`replicate::federate`]).
//! - Secrets ([`identity::NodeKey`], source passwords) are never logged or printed.
//! - `cli` and `daemon` use `anyhow`; every other module has its own `thiserror` enum whose
//!   variants say what to do, and says whether retrying can heal it
//!   ([`backoff::RetryHint::heals`]).
//! - Only [`api`] knows axum; only [`store`] knows SQLite ([`store::StoreError`] carries no
//!   SQLite type). Async code reaches the store only through [`store::StoreHandle`].

pub mod api;
pub mod atomic;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod feed;
pub mod identity;
pub mod keybackup;
pub mod net;
pub mod peer;
pub mod probe;
pub mod protocol;
pub mod replicate;
pub mod retention;
pub mod scheduler;
pub mod seal;
pub mod source;
pub mod store;
pub mod telemetry;
