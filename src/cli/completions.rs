//! `tandem completions SHELL`: a shell completion script, generated from the same command-line
//! definition that parses the arguments, so that it can never offer a subcommand or an option
//! the binary does not have.
//!
//! The script is built whole in memory before a byte is written: a failed write is an error
//! with an exit code, not a half script.

use std::io::Write;

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// Where each shell looks for a completion script; shown by `tandem completions --help`.
pub const INSTALL_HELP: &str = "\
Print a completion script for SHELL on stdout. Install it where the shell looks for one, e.g.:

  bash        tandem completions bash > ~/.local/share/bash-completion/completions/tandem
  zsh         tandem completions zsh > ~/.zfunc/_tandem   (a directory in $fpath)
  fish        tandem completions fish > ~/.config/fish/completions/tandem.fish
  elvish      eval (tandem completions elvish | slurp)   (in ~/.config/elvish/rc.elv)
  powershell  tandem completions powershell | Out-String | Invoke-Expression   (in $PROFILE)

The Debian package installs the bash, zsh and fish scripts system-wide.";

/// Writes the completion script for `shell` to stdout.
pub fn run(shell: Shell) -> anyhow::Result<()> {
    let script = script(shell);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(())
}

/// The completion script for `shell`.
pub fn script(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "tandem", &mut script);
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_nested_subcommands() {
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::Elvish,
            Shell::PowerShell,
        ] {
            let text = String::from_utf8(script(shell)).unwrap();
            for word in ["snapshot", "restore", "completions", "--config"] {
                assert!(text.contains(word), "{shell}: no {word:?} in\n{text}");
            }
        }
    }
}
