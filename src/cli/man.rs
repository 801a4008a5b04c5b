//! `tandem man`: manual pages generated from the command-line definition, so that `man tandem`
//! says what `tandem --help` says and cannot fall behind it.
//!
//! One page per command, as git and cargo ship theirs: `tandem.1` for the binary,
//! `tandem-run.1`, `tandem-snapshot-create.1` and so on for each subcommand, each with what
//! its `--help` shows. The main page adds what `--help` has no room for: exit status,
//! environment and files. Packaging runs `tandem man --dir DIR` and compresses the pages.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use clap_mangen::Man;

use super::Cli;
use crate::atomic::{Existing, write_atomic};

/// Prints the main page to stdout, or writes every page into `dir` (created if missing) and
/// prints the path of each.
pub fn run(dir: Option<&Path>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match dir {
        None => out.write_all(&main_page()?)?,
        Some(dir) => {
            for path in write_pages(dir)? {
                writeln!(out, "{}", path.display())?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The command tree as the pages show it: built (so every subcommand knows its full name,
/// `tandem snapshot create`), without clap's `help` subcommand, which has no page. The NAME
/// line already starts with "tandem \-", so the summary does not repeat it.
fn command() -> clap::Command {
    let mut cmd = Cli::command()
        .about("signed, replicated backups between community and personal servers")
        .disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// A page generator with the footer every page shares: the package and its version.
fn man(cmd: clap::Command) -> Man {
    Man::new(cmd).source(format!("tandem {}", env!("CARGO_PKG_VERSION")))
}

/// Roff lines each part of a page rendered on its own starts with (a string definition
/// for the apostrophe); a page needs them once, at its top.
const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

/// `tandem.1`: the generated page with the sections `--help` leaves out.
pub fn main_page() -> anyhow::Result<Vec<u8>> {
    let man = man(command());
    let mut parts = Vec::new();
    man.render_title(&mut parts)?;
    man.render_name_section(&mut parts)?;
    man.render_synopsis_section(&mut parts)?;
    man.render_description_section(&mut parts)?;
    man.render_options_section(&mut parts)?;
    man.render_subcommands_section(&mut parts)?;
    parts.extend_from_slice(MAIN_PAGE_SECTIONS.as_bytes());
    man.render_version_section(&mut parts)?;
    let parts = String::from_utf8(parts)?;
    let mut page = String::from(PREAMBLE);
    page.push_str(&parts.replace(PREAMBLE, ""));
    Ok(ascii(&page))
}

/// Exit status, environment and files of `tandem.1`, in roff.
const MAIN_PAGE_SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
0
Success.
.TP
1
Failure: the error is printed on one line on stderr.
.TP
2
Bad usage: an unknown subcommand or option, or a missing argument.
.TP
78
The configuration, the node key or the store must be fixed by the operator before trying
again (sysexits EX_CONFIG). The systemd unit does not restart the daemon after it.
.SH ENVIRONMENT
.TP
TANDEM_CONFIG
The configuration file, when \fB\-\-config\fR is not given.
.TP
TANDEM_LOG
Log filter of the commands that log (\fBrun\fR, \fBinit\fR, \fBsync\fR,
\fBrestore\fR), e.g. \fBinfo\fR (the default), \fBdebug\fR or \fBtandem=debug,info\fR.
.TP
TANDEM_LOG_FORMAT
Log format, when \fB\-\-log\-format\fR is not given: \fBtext\fR or \fBjson\fR.
.SH FILES
.TP
/etc/tandem/tandem.toml
The configuration (default of \fB\-\-config\fR). Check it with \fBtandem config check\fR.
.TP
/var/lib/tandem/node.key
The node key (mode 0600), in the configuration's \fBdata_dir\fR. Losing it loses the
node's identity: keep a copy made by \fBtandem key export\fR, or store it at the peers under
a passphrase with \fBtandem key backup\fR (and bring it back with \fBtandem recover\fR).
.TP
/var/lib/tandem/tandem.db
The store (SQLite), in the configuration's \fBdata_dir\fR.
.SH "SEE ALSO"
The page of each subcommand, e.g. \fBtandem\-run\fR(1). The commented reference
configuration, peers.example.toml (in /usr/share/doc/tandem/examples/ when installed from
the Debian package), and the documentation in docs/ of the source tree.
"#;

/// Writes one page per command into `dir`, each whole, and returns their paths in command
/// order (the main page first).
pub fn write_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    let mut pages = vec![("tandem.1".to_owned(), main_page()?)];
    let root = command();
    collect(&root, &mut pages)?;
    let mut written = Vec::with_capacity(pages.len());
    for (name, page) in pages {
        let path = dir.join(name);
        write_atomic(&path, 0o644, Existing::Replace, |file| {
            file.write_all(&page)
        })
        .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// `page` with every character beyond ASCII (the help text's "…") as a roff escape, `\[u2026]`:
/// roff reads bytes, and only some front ends (man-db's preconv) decode UTF-8 first.
fn ascii(page: &str) -> Vec<u8> {
    let mut out = String::with_capacity(page.len());
    for c in page.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\[u{:04X}]", u32::from(c)));
        }
    }
    out.into_bytes()
}

/// Adds the page of every subcommand below `parent`, depth first.
fn collect(parent: &clap::Command, pages: &mut Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
    for sub in parent.get_subcommands().filter(|s| !s.is_hide_set()) {
        let man = man(sub.clone());
        let mut page = Vec::new();
        man.render(&mut page)?;
        // The parent's page lists the commands around this one.
        let parent_page = parent.get_display_name().unwrap_or(parent.get_name());
        page.extend_from_slice(
            format!(
                ".SH \"SEE ALSO\"\n\\fB{}\\fR(1)\n",
                parent_page.replace('-', "\\-")
            )
            .as_bytes(),
        );
        pages.push((man.get_filename(), ascii(&String::from_utf8(page)?)));
        collect(sub, pages)?;
    }
    Ok(())
}
