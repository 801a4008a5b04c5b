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
//! renamed), readable by its owner only: it holds the origin's data in the clear. So is every
//! archive.

mod wizard;

/// The mode of every file written: an export or an archive holds the origin's data (in the
/// clear, or sealed with or without the keys).
const PRIVATE: u32 = 0o600;

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

use super::{Cli, load_config};
use crate::atomic::{Existing, write_atomic};
use crate::feed::Seq;
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
    let store = super::open_to_read(&config)?;
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
    let store = super::open_to_read(&config)?;
    let origin: NodeId = if origin == "self" {
        store.node_id()?
    } else {
        origin.parse()?
    };
    let Some(head) = store.head(origin)? else {
        bail!("this node holds no entries of origin {origin}; see `tandem status`");
    };
    let sealed = match decrypt {
        true => Some(archive_keys(&config, &store, origin, head.seq, file)?),
        false => None,
    };
    let (keys, up_to) = match &sealed {
        Some(s) => (Some(&s.keys), Some(s.up_to)),
        None => (None, None),
    };
    // Entries are only ever appended: pages read one after the other give a prefix of the
    // feed that ends at a checkpoint, even beside a running daemon.
    let summary = write_atomic(file, PRIVATE, Existing::Replace, |out| {
        let mut w = std::io::BufWriter::new(out);
        let summary =
            crate::replicate::archive::write_archive(&store, origin, &mut w, keys, up_to)?;
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
    match sealed.map(|s| s.after) {
        Some(After::Rotated(epoch)) => eprintln!(
            "started key epoch {epoch} before writing it: what {origin} seals from now on does not open with the keys in {}",
            file.display()
        ),
        Some(After::Opens(epoch)) => eprintln!(
            "warning: the keys in {} also open what {origin} seals later under key epoch {epoch}, until it starts a new one (`tandem key rotate` on that node, or removing a reader)",
            file.display()
        ),
        Some(After::Closed) | None => {}
    }
    Ok(())
}

/// The content keys an archive of a sealed origin carries, and where it ends.
struct ArchiveKeys {
    /// The keys of the epochs its sealed entries were sealed under, no later one.
    keys: crate::seal::Ring,
    /// Its last entry: the head when the keys were chosen (entries that arrive meanwhile may
    /// be sealed under a key it does not carry), or the statement of a new epoch.
    up_to: Seq,
    /// What the keys open of what the origin seals after it.
    after: After,
}

/// See [`ArchiveKeys::after`].
enum After {
    /// Nothing: the origin sealed nothing under the last epoch carried, and seals no more
    /// under it.
    Closed,
    /// Nothing: this (the origin) started a new epoch first, the one given.
    Rotated(u32),
    /// Whatever the origin seals later under this epoch, until it starts another one: a
    /// reader cannot start one for it.
    Opens(u32),
}

/// Chooses the keys of an archive of `origin` (held up to `head`) with `--decrypt`: the
/// epochs its sealed entries need. A key the origin still seals under travels only from a
/// reader (with a warning); the origin starts a new epoch first (see `Store::rotate_key`), so
/// that the file opens nothing sealed after it.
fn archive_keys(
    config: &crate::config::Config,
    store: &Store,
    origin: NodeId,
    head: Seq,
    file: &Path,
) -> anyhow::Result<ArchiveKeys> {
    let key = crate::identity::NodeKey::load(&config.key_path())?;
    let all = store
        .content_keys(&key, origin)
        .context("--decrypt needs the keys of a sealed origin this node may read")?;
    let latest = all.epochs() - 1;
    let needed = store.newest_sealed_epoch(origin, head)?.unwrap_or(0);
    if needed < latest {
        return Ok(ArchiveKeys {
            keys: all.up_to(needed),
            up_to: head,
            after: After::Closed,
        });
    }
    if origin != key.id() {
        return Ok(ArchiveKeys {
            keys: all,
            up_to: head,
            after: After::Opens(latest),
        });
    }
    let (epoch, seq) = super::key::rotate(config)
        .with_context(|| format!("nothing was written to {}", file.display()))?;
    Ok(ArchiveKeys {
        keys: crate::seal::SealKey::of_node_at(&key, epoch - 1).into_ring(),
        up_to: seq,
        after: After::Rotated(epoch),
    })
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
        // As in JSON Lines, a sealed feed's readers statement is not an object of the source.
        if selection.includes(path) && !crate::seal::stays_plain(path) {
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
    if let Some(left_out) = c.left_out.describe() {
        eprintln!("left out what kinto-wizard cannot carry: {left_out}");
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
        // A sealed feed's readers statement (the content keys wrapped to each reader) is how
        // the feed is read, not an object of the source.
        if !selection.includes(path) || crate::seal::stays_plain(path) {
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
