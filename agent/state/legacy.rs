//! Upgrading a state directory written before the store: the inbox journal
//! (`inbox.jsonl`), the approvals journal (`approvals.jsonl`) and the limit
//! state the audit log implied. Runs once, when `state.db` does not exist
//! yet, in the transaction that creates it; the old journals are then kept
//! beside it as `*.upgraded`.
//!
//! The audit log is read as a stream, keeping only what the store keeps
//! (the limit state inside the horizon, steps without an outcome, the last
//! schedule run, whether a pending event was decided), so an upgrade over
//! a long history costs time once and no more memory than a short one.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rusqlite::Transaction;
use serde::Deserialize;

use super::approvals::{Answer, Pending};
use super::store::{self, ApprovalChange, Error, Options, Result};
use crate::audit::Record;
use crate::event::{Event, Status};

#[derive(Debug, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum InboxLine {
    Accepted {
        seq: u64,
        at: DateTime<Utc>,
        event: Event,
    },
    Done {
        seq: u64,
    },
    Seen {
        key: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum ApprovalLine {
    Requested(Box<Pending>),
    Answered {
        id: String,
        answer: Answer,
        by: String,
        at: DateTime<Utc>,
    },
}

/// Lines of a journal that parse; a torn or foreign line is skipped (a
/// delivery that never got its 200, a request never acknowledged).
fn journal<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Invalid(format!("{}: {e}", path.display()))),
    };
    let mut out = Vec::new();
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        if let Ok(v) = serde_json::from_slice(&line) {
            out.push(v);
        }
    }
    Ok(out)
}

/// An alert's fingerprint and status.
type AlertKey = (String, Status);

/// A legacy dedupe key, `fingerprint/startsAtMillis/status`.
fn parse_key(key: &str) -> Option<(String, Option<DateTime<Utc>>, Status)> {
    let mut parts = key.rsplitn(3, '/');
    let status = match parts.next()? {
        "firing" => Status::Firing,
        "resolved" => Status::Resolved,
        _ => return None,
    };
    let millis: i64 = parts.next()?.parse().ok()?;
    let fp = parts.next()?.to_string();
    let starts = (millis != 0)
        .then(|| DateTime::from_timestamp_millis(millis))
        .flatten();
    Some((fp, starts, status))
}

/// The audit log's files, oldest first (`PATH.N` ... `PATH.1`, `PATH`).
fn audit_files(path: &Path) -> Vec<PathBuf> {
    let mut rotated = Vec::new();
    for n in 1.. {
        let p = PathBuf::from(format!("{}.{n}", path.display()));
        if !p.exists() {
            break;
        }
        rotated.push(p);
    }
    rotated.reverse();
    rotated.push(path.to_path_buf());
    rotated
}

/// Carries the legacy state into the new store (inside its creating
/// transaction). Returns a summary when there was anything to carry.
pub(super) fn upgrade(
    tx: &Transaction<'_>,
    opts: &Options,
    now: DateTime<Utc>,
) -> Result<Option<String>> {
    let db = |e: rusqlite::Error| Error::Db {
        path: opts.path.clone(),
        message: format!("upgrading: {e}"),
    };
    let files = audit_files(&opts.audit);
    let any_audit = files.iter().any(|p| p.exists());
    if !any_audit && !opts.legacy_inbox.exists() && !opts.legacy_approvals.exists() {
        return Ok(None);
    }

    // The inbox: accepted minus done, and the dedupe keys.
    let mut pending: std::collections::BTreeMap<u64, (DateTime<Utc>, Event)> = Default::default();
    let mut seen: HashMap<AlertKey, (Option<DateTime<Utc>>, DateTime<Utc>)> = HashMap::new();
    for line in journal::<InboxLine>(&opts.legacy_inbox)? {
        match line {
            InboxLine::Accepted { seq, at, event } => {
                seen.insert(
                    (event.fingerprint.clone(), event.status),
                    (event.starts_at, at),
                );
                pending.insert(seq, (at, event));
            }
            InboxLine::Done { seq } => {
                pending.remove(&seq);
            }
            InboxLine::Seen { key, at } => {
                if let Some((fp, starts, status)) = parse_key(&key) {
                    let e = seen.entry((fp, status)).or_insert((starts, at));
                    if at > e.1 {
                        *e = (starts, at);
                    }
                }
            }
        }
    }
    // Which pending events the audit says were decided: a record of the
    // same alert and status at or after its acceptance.
    let mut undecided: HashMap<(String, Status), DateTime<Utc>> = HashMap::new();
    for (at, ev) in pending.values() {
        let e = undecided
            .entry((ev.fingerprint.clone(), ev.status))
            .or_insert(*at);
        *e = (*e).min(*at);
    }
    let mut decided: HashMap<(String, Status), DateTime<Utc>> = HashMap::new();

    // The audit log, streamed: limit state inside the horizon, open steps,
    // schedules. A damaged line other than a torn final write fails closed.
    let since = now - opts.horizon;
    let mut records = 0u64;
    let newest = files.len().saturating_sub(1);
    for (fi, path) in files.iter().enumerate() {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::Invalid(format!("{}: {e}", path.display()))),
        };
        let mut bad: Option<usize> = None;
        for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
            let line = line.map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if let Some(n) = bad.take() {
                return Err(damaged(path, n));
            }
            match serde_json::from_slice::<Record>(&line) {
                Ok(r) => {
                    records += 1;
                    let key = (r.trigger.fingerprint.clone(), r.trigger.status);
                    if undecided.get(&key).is_some_and(|at| r.ts >= *at) {
                        let e = decided.entry(key).or_insert(r.ts);
                        *e = (*e).max(r.ts);
                    }
                    store::apply_history(tx, &r, since).map_err(db)?;
                }
                Err(_) => bad = Some(i + 1),
            }
        }
        // Only the newest file may end in a torn line.
        if let (Some(n), true) = (bad, fi != newest) {
            return Err(damaged(path, n));
        }
    }

    let mut carried = 0usize;
    for (seq, (at, ev)) in &pending {
        let key = (ev.fingerprint.clone(), ev.status);
        if decided.get(&key).is_some_and(|ts| ts >= at) {
            continue;
        }
        store::insert_pending(tx, *seq, *at, ev).map_err(db)?;
        carried += 1;
    }
    let cutoff = now - opts.dedupe_window;
    for ((fp, status), (starts, at)) in &seen {
        if *at >= cutoff {
            let ev = Event {
                trigger: crate::event::TriggerKind::Alert,
                status: *status,
                fingerprint: fp.clone(),
                labels: Default::default(),
                annotations: Default::default(),
                values: Default::default(),
                starts_at: *starts,
                playbook: None,
            };
            store::remember(tx, &ev, *at).map_err(db)?;
        }
    }
    let mut approvals = 0usize;
    for line in journal::<ApprovalLine>(&opts.legacy_approvals)? {
        let change = match line {
            ApprovalLine::Requested(p) => {
                approvals += 1;
                ApprovalChange::Request(p)
            }
            ApprovalLine::Answered { id, answer, by, at } => {
                ApprovalChange::Answer { id, answer, by, at }
            }
        };
        store::apply_approval(tx, &change).map_err(db)?;
    }
    // The old agent queued its approved runs in memory; whether they ran is
    // in the audit, not here: none is queued again.
    tx.execute("DELETE FROM approved_runs", []).map_err(db)?;
    Ok(Some(format!(
        "upgraded the state directory: {records} audit record(s) read for the limit state, {carried} pending event(s) and {approvals} approval request(s) carried over"
    )))
}

fn damaged(path: &Path, line: usize) -> Error {
    Error::Invalid(crate::audit::damaged_error(
        path,
        &[format!("{}:{line}", path.display())],
    ))
}

/// Keeps the legacy journals beside the store, renamed, once it holds them.
pub(super) fn retire(opts: &Options) {
    for p in [&opts.legacy_inbox, &opts.legacy_approvals] {
        if p.exists() {
            let to = PathBuf::from(format!("{}.upgraded", p.display()));
            if let Err(e) = std::fs::rename(p, &to) {
                tracing::warn!(path = %p.display(), error = %e, "cannot rename an upgraded journal");
            }
        }
    }
}
