//! The subcommands' logic, callable and testable from the library:
//! `agent/main.rs` only parses the arguments ([`args::Cli`]) and maps the
//! outcome to an exit code ([`Error::exit_code`]). Every subcommand writes
//! its output to the `out` it is given.

/// `writeln!` into a subcommand's output; a failed write (a closed pipe)
/// ends the subcommand with [`Error::Action`].
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {
        writeln!($out, $($arg)*).map_err($crate::cli::Error::output)?
    };
}

pub mod agent;
pub mod approvals;
pub mod args;
pub mod exec_step;
pub mod reference;
pub mod replay;
pub mod report;
pub mod run;
pub mod sources;
pub mod test;

use std::io::Write;

use crate::diag::Diagnostics;
use args::{Cli, Command};

/// How a subcommand failed; each class has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Exit 2: bad input; the message says what and where.
    #[error("{0}")]
    Input(String),
    /// Exit 1: an action (or the audit) failed.
    #[error("{0}")]
    Action(String),
}

/// A subcommand's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process exit code: 2 for bad input, 1 for a failed action.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Input(_) => 2,
            Error::Action(_) => 1,
        }
    }

    /// The output could not be written (a closed pipe, a full disk).
    pub fn output(e: std::io::Error) -> Self {
        Error::Action(format!("cannot write the output: {e}"))
    }
}

impl From<Diagnostics> for Error {
    fn from(d: Diagnostics) -> Self {
        let n = d.len();
        Error::Input(format!("{d}\n{n} error{}", if n == 1 { "" } else { "s" }))
    }
}

/// Runs the parsed command line, writing its output to `out`.
pub fn main(cli: Cli, out: &mut dyn Write) -> Result<()> {
    crate::install_tls_provider();
    if let Command::Agent(args) = cli.command {
        // The agent sets up its own logging from its config.
        return agent::agent(args, cli.verbose, out);
    }
    init_tracing(cli.verbose);
    match cli.command {
        Command::Agent(_) => Ok(()),
        Command::Replay(a) => replay::replay(a, out),
        Command::Report(a) => report::report(a, out),
        Command::ExecStep(a) => exec_step::exec_step(a, out),
        Command::Approve(a) => approvals::answer(a, true, out),
        Command::Deny(a) => approvals::answer(a, false, out),
        Command::Approvals(c) => approvals::list(c, out),
        Command::Pause(a) => approvals::pause(a, out),
        Command::Resume(a) => approvals::resume(a, out),
        Command::Pauses(c) => approvals::pauses(c, out),
        Command::Validate { sources } => sources::validate(&sources, out),
        Command::Run(args) => run::run(args, out),
        Command::Test { dir, policies } => test::test(dir, policies, out),
        Command::Actions => reference::actions(out),
        Command::Schema { kind, out: dir } => reference::schema(kind, dir, out),
    }
}

/// Logs to stderr: warnings by default, `-v` info, `-vv` debug; RUST_LOG overrides.
fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A second subscriber (a test calling main twice) is not an error.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn run_cli(argv: &[&str]) -> (Result<()>, String) {
        let cli = Cli::try_parse_from(argv).unwrap();
        let mut out = Vec::new();
        let r = main(cli, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn run_dry_run_prints_the_decision_and_appends_the_audit() {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.jsonl");
        let audit = audit.to_str().unwrap();
        let (r, out) = run_cli(&[
            "remediate",
            "run",
            "--dry-run",
            "--alert",
            "examples/alerts/crashloop-firing.json",
            "--audit",
            audit,
            "--at",
            "2026-11-25T12:00:00Z",
        ]);
        r.unwrap();
        assert!(out.contains("k8s-crashloop-restart"), "{out}");
        assert!(
            out.contains("1 run: 0 execute (0 failed), 1 dry-run"),
            "{out}"
        );
        let records = crate::audit::read(std::path::Path::new(audit))
            .unwrap()
            .records;
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].decision, "dry-run");
    }

    #[test]
    fn bad_input_and_failed_actions_have_their_exit_codes() {
        let (r, _) = run_cli(&["remediate", "run", "--alert", "no/such/file.json"]);
        let e = r.unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(
            e.to_string().starts_with("no/such/file.json: cannot read"),
            "{e}"
        );
        assert_eq!(Error::Action("x".into()).exit_code(), 1);
        assert_eq!(
            args::parse_kv("table=sales.orders"),
            Ok(("table".into(), "sales.orders".into()))
        );
        assert!(args::parse_kv("=x").is_err());
    }

    #[test]
    fn a_closed_output_ends_the_subcommand_with_an_error() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let cli = Cli::try_parse_from(["remediate", "actions"]).unwrap();
        let e = main(cli, &mut Closed).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().starts_with("cannot write the output"), "{e}");
    }
}
