//! `tandem export --origin self|<node id> [--format jsonl|kinto-wizard] [--bucket ID]…
//! [--collection BUCKET/COLLECTION]… [--out FILE]`: the current state of an origin, or of the
//! buckets and collections chosen ([`Selection`]). `--archive FILE [--decrypt]`: its whole
//! feed, verifiable anywhere, with the content keys of a sealed origin when decrypting.
//!
//! `jsonl` (the default) is one live object per line, sorted by path, a stable interface
//! (docs/operating.md, "The JSON Lines export"):
//!
//! ```json
//! {"path":"/buckets/b/collections/c/records/r","data":{…},"permissions":{…}}
//! ```
//!
//! `data` and `permissions` are the bytes the source gave. `kinto-wizard` is the YAML that
//! Kinto's own `kinto-wizard load` reads ([`wizard`]), so that data can move to a Kinto server
//! without tandem. Reads through a read-only connection, so it works beside a running daemon.
//! With `--out`, the file appears complete or not at all (written to a temporary name, synced,
//! renamed), readable by its owner only: it holds the origin's data in the clear. So does an
//! archive written with `--decrypt`, which carries the keys.

mod wizard;

/// The mode of a file whoever holds reads: an export, or an archive with content keys.
const PRIVATE: u32 = 0o600;

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

use super::{Cli, load_config};
use crate::atomic::{Existing, write_atomic};
use crate::identity::NodeId;
use crate::replicate::select::Selection;
use crate::store::Store;

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line: {"path":…,"data":…,"permissions":…}, sorted by path.
    Jsonl,
    /// The YAML that `kinto-wizard load` reads: buckets, groups, collections, records and
    /// their permissions (accounts are left out).
    KintoWizard,
}

/// Writes the export of what `selection` holds.
pub fn run(
    cli: &Cli,
    origin: &str,
    format: Format,
    selection: &Selection,
    out: Option<&Path>,
) -> anyhow::Result<()> {
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
    check_selection(&store, origin, selection)?;
    if format == Format::KintoWizard {
        return kinto_wizard(&store, origin, selection, out);
    }
    match out {
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            write_jsonl(&store, origin, selection, &mut w)?;
            w.flush().context("writing to stdout")?;
        }
        Some(path) => {
            write_atomic(path, PRIVATE, Existing::Replace, |file| {
                let mut w = std::io::BufWriter::new(file);
                write_jsonl(&store, origin, selection, &mut w)?;
                w.flush().context("writing the export")
            })
            .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

/// `tandem export --archive FILE [--decrypt]`: the origin's whole feed as a portable archive,
/// with its content keys when decrypting.
pub fn archive(cli: &Cli, origin: &str, file: &Path, decrypt: bool) -> anyhow::Result<()> {
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
    let (keys, up_to) = match decrypt {
        true => {
            let key = crate::identity::NodeKey::load(&config.key_path())?;
            let keys = store
                .content_keys(&key, origin)
                .context("--decrypt needs the keys of a sealed origin this node may read")?;
            if origin == key.id() {
                // The keys go into a file that may travel: what is sealed after it is sealed
                // under a new key it does not carry, and the archive ends where the old one does.
                let (epoch, seq) = super::key::rotate(&config)?;
                let keys = crate::seal::SealKey::of_node_at(&key, epoch - 1).into_ring();
                eprintln!(
                    "started key epoch {epoch}: what {origin} seals from now on does not open with the keys in {}",
                    file.display()
                );
                (Some(keys), Some(seq))
            } else {
                eprintln!(
                    "warning: the keys in {} also open what {origin} seals later, until it starts a new key epoch (`tandem key rotate` on that node, or removing a reader)",
                    file.display()
                );
                (Some(keys), None)
            }
        }
        false => (None, None),
    };
    // Whoever holds the file reads it with the keys: for its owner only. Without them it
    // holds what any holder holds.
    let mode = if keys.is_some() { PRIVATE } else { 0o644 };
    // Entries are only ever appended: pages read one after the other give a prefix of the
    // feed that ends at a checkpoint, even beside a running daemon.
    let summary = write_atomic(file, mode, Existing::Replace, |out| {
        let mut w = std::io::BufWriter::new(out);
        let summary =
            crate::replicate::archive::write_archive(&store, origin, &mut w, keys.as_ref(), up_to)?;
        w.flush().context("writing the archive")?;
        anyhow::Ok(summary)
    })
    .with_context(|| format!("cannot write {}", file.display()))?;
    println!(
        "archived {origin}: {} entries and {} snapshots in {}{}",
        summary.entries,
        summary.snapshots,
        file.display(),
        if summary.readable {
            ", with the content keys: whoever holds the file reads it"
        } else {
            ""
        }
    );
    Ok(())
}

/// Refuses a selection that names a bucket or collection the origin does not hold, rather than
/// writing an export that silently lacks it.
fn check_selection(store: &Store, origin: NodeId, selection: &Selection) -> anyhow::Result<()> {
    for bucket in selection.buckets() {
        if !store.holds_at_or_under(origin, &format!("/buckets/{bucket}"))? {
            bail!(
                "origin {origin} holds no bucket {bucket:?}; `tandem export` lists what it holds"
            );
        }
    }
    for (bucket, collection) in selection.collections() {
        if !store.holds_at_or_under(
            origin,
            &format!("/buckets/{bucket}/collections/{collection}"),
        )? {
            bail!(
                "origin {origin} holds no collection {bucket}/{collection}; `tandem export` lists what it holds"
            );
        }
    }
    Ok(())
}

/// `--format kinto-wizard`: gathers the selected objects into buckets (in memory: YAML keeps
/// each bucket's children together, and sorted paths do not), then writes the YAML.
fn kinto_wizard(
    store: &Store,
    origin: NodeId,
    selection: &Selection,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let mut tree = wizard::Tree::default();
    store.for_each_object(origin, |path, body| -> anyhow::Result<()> {
        if selection.includes(path) {
            tree.add(path, body)?;
        }
        Ok(())
    })?;
    match out {
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            tree.write(&mut w)?;
            w.flush().context("writing to stdout")?;
        }
        Some(path) => {
            write_atomic(path, PRIVATE, Existing::Replace, |file| {
                let mut w = std::io::BufWriter::new(file);
                tree.write(&mut w)?;
                w.flush().context("writing the export")
            })
            .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    let c = tree.counts();
    eprintln!(
        "exported {} buckets, {} groups, {} collections and {} records of {origin} for kinto-wizard",
        c.buckets, c.groups, c.collections, c.records
    );
    if c.left_out > 0 {
        eprintln!(
            "left out {} objects that kinto-wizard cannot carry (accounts, the source's description)",
            c.left_out
        );
    }
    Ok(())
}

fn write_jsonl(
    store: &Store,
    origin: NodeId,
    selection: &Selection,
    w: &mut impl Write,
) -> anyhow::Result<()> {
    store.for_each_object(origin, |path, body| -> anyhow::Result<()> {
        if !selection.includes(path) {
            return Ok(());
        }
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
