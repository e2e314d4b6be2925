//! Progress of long steps (a compaction's bins), for people watching: a
//! line logged at info (target `remediate::progress`) and, when the CLI
//! asks for it (`remediate run` without `--dry-run`), printed on stderr
//! even though its log level shows warnings only. The caller throttles.

use std::sync::atomic::{AtomicBool, Ordering};

static STDERR: AtomicBool = AtomicBool::new(false);

/// Print progress lines on stderr from now on (the CLI's `run`).
pub fn print_to_stderr(on: bool) {
    STDERR.store(on, Ordering::Relaxed);
}

/// Reports one progress line.
pub fn report(line: &str) {
    tracing::info!(target: "remediate::progress", "{line}");
    // When the log shows it already (on stderr too, in the CLI), once.
    if STDERR.load(Ordering::Relaxed)
        && !tracing::enabled!(target: "remediate::progress", tracing::Level::INFO)
    {
        eprintln!("{line}");
    }
}
