//! Reading a log (and its rotated files) back: records in order, a torn
//! last line tolerated, any other unreadable line reported as damage; the
//! steps a stop interrupted; the ledger rebuilt from records.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::{Error, Phase, Record, Result};
use crate::policy::Ledger;

/// What reading a log found.
#[derive(Debug, Default)]
pub struct ReadResult {
    /// Records in order.
    pub records: Vec<Record>,
    /// 1-based numbers of lines that were not records (a torn last line, or corruption).
    pub skipped: Vec<usize>,
    /// Unreadable lines that are not the torn last line of the newest file
    /// (`file:line`): records may be missing there, so limits rebuilt from
    /// this log cannot be trusted.
    pub damaged: Vec<String>,
}

/// Reads a log, tolerating a torn or corrupt line (reported in `skipped`).
/// A missing file reads as empty.
pub fn read(path: &Path) -> Result<ReadResult> {
    let mut records = Vec::new();
    let mut out = scan(path, &mut |r| records.push(r))?;
    out.records = records;
    Ok(out)
}

/// Reads a log line by line, handing each record to `each` (nothing is
/// kept): what [`read`] does, in memory bounded by one line. The result
/// has no records, only the lines skipped and the damage.
pub fn scan(path: &Path, each: &mut dyn FnMut(Record)) -> Result<ReadResult> {
    scan_as(path, each)
}

/// [`scan`] into another type than [`Record`] (a view of fewer fields that
/// accepts exactly the lines a `Record` does: see `replay::Recorded`).
pub fn scan_as<T: serde::de::DeserializeOwned>(
    path: &Path,
    each: &mut dyn FnMut(T),
) -> Result<ReadResult> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ReadResult::default()),
        Err(e) => return Err(io(e)),
    };
    let mut out = ReadResult::default();
    let mut last = 0;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    let mut i = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(io)? == 0 {
            break;
        }
        i += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        last = i;
        // UTF-8 checked once for the line, not string by string.
        match std::str::from_utf8(&line)
            .ok()
            .and_then(|l| serde_json::from_str::<T>(l).ok())
        {
            Some(r) => each(r),
            None => out.skipped.push(i),
        }
    }
    // A torn last line is what a crash mid-append leaves; anything else is damage.
    out.damaged = out
        .skipped
        .iter()
        .filter(|n| **n != last)
        .map(|n| format!("{}:{n}", path.display()))
        .collect();
    Ok(out)
}

/// Outcome of a step whose apply was under way when the agent stopped.
pub const INTERRUPTED: &str = "interrupted: the agent stopped (crash, kill or power loss) after this step was planned and before its outcome was recorded; it may be partly applied and is not retried automatically: check the target";

/// Records for executed steps that have a `planned` record but no outcome
/// (the agent died between them): each becomes `failed` with
/// [`INTERRUPTED`], stamped `now`. Appending them makes the log say what
/// happened, and the ledger counts them as failures (the breaker sees them).
pub fn interrupted(records: &[Record], now: DateTime<Utc>) -> Vec<Record> {
    let mut open: Vec<&Record> = Vec::new();
    let mut ended = std::collections::HashSet::new();
    for r in records {
        match r.phase {
            Phase::Planned if r.decision == "execute" && !r.dry_run => open.push(r),
            Phase::Verified | Phase::Failed => {
                ended.insert(r.id.as_str());
            }
            Phase::Planned | Phase::Applied | Phase::Resolved | Phase::Unresolved => {}
        }
    }
    open.into_iter()
        .filter(|r| !ended.contains(r.id.as_str()))
        .map(|r| {
            let mut f = r.clone();
            f.ts = now.max(r.ts);
            f.phase = Phase::Failed;
            f.outcome = INTERRUPTED.to_string();
            f.duration_ms = (now - r.ts).num_milliseconds().max(0) as u64;
            f
        })
        .collect()
}

/// The error for a damaged log: fail closed, say where and what to do.
pub fn damaged_error(path: &Path, damaged: &[String]) -> String {
    format!(
        "audit log {} has unreadable line(s) {} that are not a torn final write: records may be missing, so rate limits, cooldowns and the breaker cannot be evaluated. Nothing is executed until this is fixed: repair or remove those lines (or move the log aside to start a new history)",
        path.display(),
        damaged.join(", ")
    )
}

/// Reads a log and its rotated files (`PATH.N` ... `PATH.1`, then `PATH`),
/// oldest first. Skipped line numbers are those of the current file.
pub fn read_all(path: &Path) -> Result<ReadResult> {
    let mut records = Vec::new();
    let mut out = scan_all(path, &mut |r| records.push(r))?;
    out.records = records;
    Ok(out)
}

/// [`read_all`] as a stream: each record of the rotated files and then of
/// the current one handed to `each`, oldest first, none kept.
pub fn scan_all(path: &Path, each: &mut dyn FnMut(Record)) -> Result<ReadResult> {
    scan_all_as(path, each)
}

/// [`scan_all`] into another type than [`Record`] (see [`scan_as`]).
pub fn scan_all_as<T: serde::de::DeserializeOwned>(
    path: &Path,
    each: &mut dyn FnMut(T),
) -> Result<ReadResult> {
    let mut rotated = Vec::new();
    for n in 1.. {
        let p = PathBuf::from(format!("{}.{n}", path.display()));
        if !p.exists() {
            break;
        }
        rotated.push(p);
    }
    let mut out = ReadResult::default();
    for p in rotated.iter().rev() {
        let r = scan_as(p, each)?;
        // A rotated file was complete when it was rotated: every bad line is damage.
        out.damaged
            .extend(r.skipped.iter().map(|n| format!("{}:{n}", p.display())));
    }
    let current = scan_as(path, each)?;
    out.skipped = current.skipped;
    out.damaged.extend(current.damaged);
    Ok(out)
}

/// Rebuilds the ledger (executions and failures) from records.
pub fn ledger_from(records: &[Record]) -> Ledger {
    let mut l = Ledger::default();
    for r in records {
        enter(&mut l, r);
    }
    l
}

/// Enters what one record says about limits into `ledger` (the step of
/// [`ledger_from`], for a stream of records).
pub fn enter(l: &mut Ledger, r: &Record) {
    if r.dry_run {
        return;
    }
    match (r.phase, r.decision.as_str()) {
        // One execution per planned step 0: a multi-step run counts once.
        (Phase::Planned, "execute") if r.step == 0 => {
            l.record_execution(
                r.decided_at.unwrap_or(r.ts),
                &r.policy,
                &r.playbook,
                &crate::policy::target_key(&r.target),
            );
        }
        // An unresolved run (verified, but its alert kept firing) is a
        // failure for the breaker too.
        (Phase::Failed | Phase::Unresolved, "execute") => {
            l.record_failure(r.ts, &r.policy, &r.playbook)
        }
        (Phase::Verified, "execute") => l.record_success(r.ts, &r.policy, &r.playbook),
        _ => {}
    }
}

/// The `seq` of the last record written to the log (the store's sequence
/// number, on every line it writes), from the tail of the current file or,
/// just after a rotation, of the newest rotated one. None when the log has
/// no numbered record (empty, or written before the store).
pub fn last_seq(path: &Path) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: Option<u64>,
    }
    let tail = |p: &Path| -> Option<Option<u64>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = File::open(p).ok()?;
        let len = f.metadata().ok()?.len();
        // Records are capped in size; the last whole one fits in 1 MiB.
        let start = len.saturating_sub(1 << 20);
        f.seek(SeekFrom::Start(start)).ok()?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).ok()?;
        let last = buf
            .split(|b| *b == b'\n')
            .rev()
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .find_map(|l| serde_json::from_slice::<Seq>(l).ok())?;
        Some(last.seq)
    };
    match tail(path) {
        Some(seq) => seq,
        None => tail(&PathBuf::from(format!("{}.1", path.display()))).flatten(),
    }
}
