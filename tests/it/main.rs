//! The integration tests: one binary, each file a module.
//!
//! One binary links the crate once instead of once per file, and lets the test harness run the
//! slow tests of every file side by side: most of them wait on a Kinto server, a daemon or a
//! socket, not on a core. `scripts/test` sets how many run at once.
//!
//! Each module starts its own throwaway servers, nodes and directories (see [`common`]), so
//! modules share nothing but the process. Run one with a name filter, e.g.
//! `cargo test --test it -- federation::` or `cargo test --test it -- kinto::ingest_`.
//!
//! To add a file of tests: put it here as `tests/it/NAME.rs`, add `mod NAME;` below (in
//! alphabetical order), and reach the helpers through `use crate::common;` (where a file of
//! its own had `mod common;`). Paths to files beside the tests (`tests/*.py`,
//! `tests/kintojs/`) start from `env!("CARGO_MANIFEST_DIR")`, so they do not change.
//!
//! `tests/crash.rs` stays a binary of its own: it re-runs itself as the child process it kills,
//! so it needs its own `main` (`harness = false`).

mod common;

mod auth;
mod chaos;
mod cli;
mod clients;
mod damage;
mod disaster;
mod disk;
mod drill;
mod federation;
mod heartbeat;
mod hostile;
mod interop;
mod keybackup;
mod kinto;
mod migrate;
mod moving_devices;
mod operator;
mod package;
mod parsers;
mod peer;
mod plugin;
mod receipts;
mod restore;
mod sealed;
mod select;
mod sockets;
mod switch;
mod wizard;
