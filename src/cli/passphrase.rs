//! Reading the key backup passphrase: from the terminal without echo (`rpassword`), or from a
//! file for scripts. Shared by `tandem key backup` and `tandem recover`.

use std::path::Path;

use anyhow::{Context, bail};
use zeroize::Zeroizing;

/// The passphrase from `file` (its first line, without the line ending; the file must not be
/// open to group or others), or asked on the terminal, twice when `confirm`.
pub fn read(file: Option<&Path>, confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    let passphrase = match file {
        Some(path) => from_file(path)?,
        None => from_terminal(confirm)?,
    };
    if passphrase.is_empty() {
        bail!("the passphrase is empty");
    }
    Ok(passphrase)
}

fn from_file(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    crate::config::Secret::File(path.to_owned())
        .check_private()
        .map_err(anyhow::Error::msg)?;
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the passphrase file {}", path.display()))?,
    );
    let line = text.split('\n').next().unwrap_or("");
    Ok(Zeroizing::new(
        line.strip_suffix('\r').unwrap_or(line).to_owned(),
    ))
}

fn from_terminal(confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt).map(Zeroizing::new).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the passphrase from a terminal ({e}); pass --passphrase-file FILE instead"
            )
        })
    };
    let first = ask("Passphrase: ")?;
    if confirm {
        let second = ask("The same passphrase again: ")?;
        if *first != *second {
            bail!("the two passphrases differ; nothing was changed, run the command again");
        }
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_file_gives_its_first_line_and_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pass");
        std::fs::write(&path, "word word word\r\nsecond line\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(Some(&path), false).unwrap().as_str(), "word word word");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read(Some(&path), false).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::write(&path, "\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read(Some(&path), false).is_err());
    }
}
