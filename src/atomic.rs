//! Files written whole, crash-atomically: a reader (or the next start after a crash or a power
//! cut) sees the old file or the complete new one, never a part.
//!
//! The bytes go to a temporary file beside the target (same directory, so the same file
//! system), which is flushed to disk, then renamed over the target (or linked, when an
//! existing file must never be replaced), and the directory is synced so that the new name
//! itself survives a power cut. A failure at any step removes the temporary file.
//!
//! The SQLite store is not written this way: SQLite has its own journal. This is for the key
//! file and the files commands write for the operator (exports and archives).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What to do when the target already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Replace it (atomically: readers see the old or the new file).
    Replace,
    /// Keep it and fail with [`io::ErrorKind::AlreadyExists`] (a key is never overwritten).
    Keep,
}

/// Writes `path` whole through `write`, which gets the temporary file; the file is created with
/// `mode` (e.g. `0o600` for a secret, before any byte is written). `write`'s own errors, and
/// every I/O error (as `E`), leave the target as it was and no temporary file behind.
pub fn write_atomic<T, E: From<io::Error>>(
    path: &Path,
    mode: u32,
    existing: Existing,
    write: impl FnOnce(&mut File) -> Result<T, E>,
) -> Result<T, E> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = temp_path(path);
    // A leftover of this very process (a pid reused after a crash) is stale.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        let value = write(&mut file)?;
        file.sync_all()?;
        drop(file);
        match existing {
            Existing::Replace => fs::rename(&tmp, path)?,
            Existing::Keep => fs::hard_link(&tmp, path)?,
        }
        File::open(dir)?.sync_all()?;
        Ok(value)
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// The temporary file for `path`: hidden, beside it, named after it and this process.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect()
    }

    #[test]
    fn replaces_whole_and_keeps_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        fs::write(&path, "old").unwrap();
        let n = write_atomic(&path, 0o600, Existing::Replace, |f| {
            f.write_all(b"new")?;
            io::Result::Ok(3)
        })
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn keeps_an_existing_file_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        fs::write(&path, "first").unwrap();
        let err =
            write_atomic(&path, 0o600, Existing::Keep, |f| f.write_all(b"second")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&path).unwrap(), "first");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        fs::write(&path, "old").unwrap();
        let err = write_atomic(&path, 0o644, Existing::Replace, |f| {
            f.write_all(b"half")?;
            Err::<(), _>(io::Error::other("the source went away"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "the source went away");
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        assert!(leftovers(dir.path()).is_empty());
        // No target yet: none after a failure either.
        let fresh = dir.path().join("fresh");
        let _ = write_atomic(&fresh, 0o644, Existing::Replace, |_| {
            Err::<(), _>(io::Error::other("no"))
        });
        assert!(!fresh.exists());
    }
}
