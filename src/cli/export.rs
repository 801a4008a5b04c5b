//! `tandem export --origin self|<node id> --format jsonl [--out FILE]`: the current state of an
//! origin, one live object per line, sorted by path:
//!
//! ```json
//! {"path":"/buckets/b/collections/c/records/r","data":{…},"permissions":{…}}
//! ```
//!
//! `data` and `permissions` are the bytes the source gave. Reads through a read-only
//! connection, so it works beside a running daemon. With `--out`, the file appears complete or
//! not at all (written to a temporary name, synced, renamed).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

use super::{Cli, load_config};
use crate::atomic::{Existing, write_atomic};
use crate::identity::NodeId;
use crate::store::Store;

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
}

/// Writes the export.
pub fn run(cli: &Cli, origin: &str, _format: Format, out: Option<&Path>) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let store = Store::open_read_only(&config.node.data_dir)?;
    let origin: NodeId = if origin == "self" {
        store.node_id()?
    } else {
        origin.parse()?
    };
    if !store.origins()?.iter().any(|o| o.id == origin) {
        bail!("this node holds no feed of origin {origin}; see `tandem status`");
    }
    match out {
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            write_jsonl(&store, origin, &mut w)?;
            w.flush().context("writing to stdout")?;
        }
        Some(path) => {
            write_atomic(path, 0o644, Existing::Replace, |file| {
                let mut w = std::io::BufWriter::new(file);
                write_jsonl(&store, origin, &mut w)?;
                w.flush().context("writing the export")
            })
            .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

/// `tandem export --archive FILE`: the origin's whole feed as a portable archive.
pub fn archive(cli: &Cli, origin: &str, file: &Path) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let store = Store::open_read_only(&config.node.data_dir)?;
    let origin: NodeId = if origin == "self" {
        store.node_id()?
    } else {
        origin.parse()?
    };
    if store.head(origin)?.is_none() {
        bail!("this node holds no entries of origin {origin}; see `tandem status`");
    }
    // Entries are only ever appended: pages read one after the other give a prefix of the
    // feed that ends at a checkpoint, even beside a running daemon.
    let summary = write_atomic(file, 0o644, Existing::Replace, |out| {
        let mut w = std::io::BufWriter::new(out);
        let summary = crate::replicate::archive::write_archive(&store, origin, &mut w)?;
        w.flush().context("writing the archive")?;
        anyhow::Ok(summary)
    })
    .with_context(|| format!("cannot write {}", file.display()))?;
    println!(
        "archived {origin}: {} entries and {} snapshots in {}",
        summary.entries,
        summary.snapshots,
        file.display()
    );
    Ok(())
}

fn write_jsonl(store: &Store, origin: NodeId, w: &mut impl Write) -> anyhow::Result<()> {
    store.for_each_object(origin, |path, body| -> anyhow::Result<()> {
        // body is {"data":…,"permissions":…}: splice the path in front, keeping the bytes.
        let rest = body.strip_prefix(b"{").unwrap_or(body);
        w.write_all(b"{\"path\":")?;
        serde_json::to_writer(&mut *w, path)?;
        w.write_all(b",")?;
        w.write_all(rest)?;
        w.write_all(b"\n")?;
        Ok(())
    })
}
