//! The `tandem` binary: parse the command line and hand over to [`tandem::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    tandem::cli::main(tandem::cli::Cli::parse())
}
