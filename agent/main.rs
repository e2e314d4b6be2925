//! `remediate` CLI: parses the arguments, runs the subcommand from the
//! library ([`remediate::cli`]) and maps the outcome to the exit code
//! (0 ok, 1 an action failed, 2 bad input).

use std::process::ExitCode;

use clap::Parser;
use remediate::cli::{self, args::Cli};

fn main() -> ExitCode {
    let args = Cli::parse();
    match cli::main(args, &mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
