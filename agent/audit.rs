//! The audit log: one JSON object a line, appended and fsynced. It is the
//! source of truth for what was decided and done, and the ledger of rate
//! limits, cooldowns and breakers is rebuilt from it.
//!
//! Record fields are a stable contract: add, never rename.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::policy::Ledger;

/// Which trigger an audited run came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerRef {
    /// `alert`, `schedule` or `manual`.
    pub kind: crate::event::TriggerKind,
    /// The alert's name, if an alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertname: Option<String>,
    /// Alert fingerprint (or tick identity).
    pub fingerprint: String,
    /// `firing` or `resolved`.
    pub status: crate::event::Status,
    /// The alert's labels (added field; `remediate replay` rebuilds the event from them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The alert's annotations (added field).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Values of a schedule or manual run (added field).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
    /// When the alert started firing, or the tick was due (added field).
    #[serde(default, rename = "startsAt", skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<DateTime<Utc>>,
}

impl TriggerRef {
    /// The trigger of `ev`, with everything needed to rebuild it.
    pub fn from_event(ev: &crate::event::Event) -> Self {
        Self {
            kind: ev.trigger,
            alertname: ev.alertname().map(str::to_string),
            fingerprint: ev.fingerprint.clone(),
            status: ev.status,
            labels: ev.labels.clone(),
            annotations: ev.annotations.clone(),
            values: ev.values.clone(),
            starts_at: ev.starts_at,
        }
    }

    /// The event this trigger describes (`playbook` for schedule and manual runs).
    pub fn to_event(&self, playbook: &str) -> crate::event::Event {
        use crate::event::TriggerKind;
        crate::event::Event {
            trigger: self.kind,
            status: self.status,
            fingerprint: self.fingerprint.clone(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            values: self.values.clone(),
            starts_at: self.starts_at,
            playbook: match self.kind {
                TriggerKind::Alert => None,
                TriggerKind::Schedule | TriggerKind::Manual => Some(playbook.to_string()),
            },
        }
    }
}

/// Phase of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The decision, written before anything is applied.
    Planned,
    /// Applied without error.
    Applied,
    /// Applied and the post-condition holds.
    Verified,
    /// Apply or verify failed, or no driver exists.
    Failed,
}

/// One audit line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When this record was written.
    pub ts: DateTime<Utc>,
    /// Identity of the planned step; the same across its phases.
    pub id: String,
    /// The trigger.
    pub trigger: TriggerRef,
    /// Playbook name.
    pub playbook: String,
    /// Action name.
    pub action: String,
    /// Rendered target.
    pub target: BTreeMap<String, String>,
    /// Rendered, validated parameters.
    pub params: serde_json::Value,
    /// `execute`, `dry-run`, `suppressed` or `needs-approval`.
    pub decision: String,
    /// Why: the rule that fired, or the switch that made it a dry-run.
    pub reason: String,
    /// True when nothing was or will be changed.
    pub dry_run: bool,
    /// `planned`, `applied`, `verified` or `failed`.
    pub phase: Phase,
    /// What happened or would happen, in words.
    pub outcome: String,
    /// Time spent in this phase.
    pub duration_ms: u64,
    /// The agent's node.
    pub node: String,
    /// Policy that gated the run (added field).
    #[serde(default)]
    pub policy: String,
    /// Step index within the playbook (added field).
    #[serde(default)]
    pub step: usize,
    /// When the gate decided the run (added field): limits count from it, so
    /// a ledger rebuilt from the log decides exactly as the one in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
}

/// Audit errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log could not be opened or written.
    #[error("audit log {path}: {source}")]
    Io {
        /// The log's path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A record could not be serialized.
    #[error("audit record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Result alias for audit operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Appends records, each fsynced before `append` returns.
#[derive(Debug)]
pub struct Writer {
    path: PathBuf,
    file: File,
    written: usize,
    size: u64,
    rotate: Option<Rotation>,
}

/// Size-based rotation: `audit.jsonl` becomes `audit.jsonl.1`, `.1` becomes
/// `.2`, and so on; the oldest beyond `keep` is deleted. [`read_all`] reads
/// the rotated files too, so the ledger spans them.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// Rotate once the current file reaches this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: usize,
}

impl Writer {
    /// Opens (creating the directory and file if needed) for appending.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        // A torn last line from a crash must not swallow the next record.
        let len = file.metadata().map_err(io)?.len();
        let mut w = Self {
            path: path.to_path_buf(),
            file,
            written: 0,
            size: len,
            rotate: None,
        };
        if len > 0 && !ends_with_newline(path).map_err(io)? {
            w.file.write_all(b"\n").map_err(io)?;
        }
        Ok(w)
    }

    /// Opens with size-based rotation.
    pub fn open_rotating(path: &Path, rotation: Rotation) -> Result<Self> {
        let mut w = Self::open(path)?;
        w.rotate = Some(rotation);
        Ok(w)
    }

    /// Appends one record and fsyncs.
    pub fn append(&mut self, rec: &Record) -> Result<()> {
        self.append_batch(std::slice::from_ref(rec))
    }

    /// Rotates if the current file is full. Records are never split across
    /// files, and a rotation is complete (renamed, new file synced) before
    /// the next record is written.
    fn maybe_rotate(&mut self) -> Result<()> {
        let Some(r) = self.rotate else {
            return Ok(());
        };
        if self.size < r.max_bytes {
            return Ok(());
        }
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        let nth = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        if r.keep == 0 {
            std::fs::remove_file(&self.path).map_err(io)?;
        } else {
            let _ = std::fs::remove_file(nth(r.keep));
            for n in (1..r.keep).rev() {
                if nth(n).exists() {
                    std::fs::rename(nth(n), nth(n + 1)).map_err(io)?;
                }
            }
            std::fs::rename(&self.path, nth(1)).map_err(io)?;
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        self.size = 0;
        Ok(())
    }

    /// Appends several records with one fsync (the agent batches decisions
    /// that change nothing).
    pub fn append_batch(&mut self, recs: &[Record]) -> Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(recs.len() * 512);
        for rec in recs {
            serde_json::to_writer(&mut buf, rec)?;
            buf.push(b'\n');
        }
        self.maybe_rotate()?;
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&buf).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.written += recs.len();
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Records appended through this writer.
    pub fn written(&self) -> usize {
        self.written
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn ends_with_newline(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    f.seek(SeekFrom::End(-1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(b[0] == b'\n')
}

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
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(io)?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        last = i + 1;
        match serde_json::from_slice::<Record>(&line) {
            Ok(r) => out.records.push(r),
            Err(_) => out.skipped.push(i + 1),
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
            Phase::Planned | Phase::Applied => {}
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
        let r = read(p)?;
        out.records.extend(r.records);
        // A rotated file was complete when it was rotated: every bad line is damage.
        out.damaged
            .extend(r.skipped.iter().map(|n| format!("{}:{n}", p.display())));
    }
    let current = read(path)?;
    out.records.extend(current.records);
    out.skipped = current.skipped;
    out.damaged.extend(current.damaged);
    Ok(out)
}

/// Rebuilds the ledger (executions and failures) from records.
pub fn ledger_from(records: &[Record]) -> Ledger {
    let mut l = Ledger::default();
    for r in records {
        if r.dry_run {
            continue;
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
            (Phase::Failed, "execute") => l.record_failure(r.ts, &r.policy, &r.playbook),
            (Phase::Verified, "execute") => l.record_success(r.ts, &r.policy, &r.playbook),
            _ => {}
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Status, TriggerKind};

    fn rec(id: &str) -> Record {
        Record {
            ts: Utc::now(),
            id: id.into(),
            trigger: TriggerRef {
                kind: TriggerKind::Alert,
                alertname: Some("A".into()),
                fingerprint: "f".into(),
                status: Status::Firing,
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                values: BTreeMap::new(),
                starts_at: None,
            },
            playbook: "pb".into(),
            action: "kubernetes.pod.restart".into(),
            target: BTreeMap::new(),
            params: serde_json::json!({}),
            decision: "execute".into(),
            reason: "all gates passed".into(),
            dry_run: false,
            phase: Phase::Planned,
            outcome: "pending".into(),
            duration_ms: 0,
            node: "n".into(),
            policy: "default".into(),
            step: 0,
            decided_at: None,
        }
    }

    #[test]
    fn torn_last_line_is_skipped_and_next_append_starts_on_a_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/audit.jsonl");
        let mut w = Writer::open(&p).unwrap();
        w.append(&rec("a")).unwrap();
        drop(w);
        // Simulate a crash mid-write.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(br#"{"ts":"2026-11-24T00:00:00Z","id":"tor"#)
            .unwrap();
        drop(f);
        let r = read(&p).unwrap();
        assert_eq!(r.records.len(), 1);
        assert_eq!(r.skipped, vec![2]);
        let mut w = Writer::open(&p).unwrap();
        w.append(&rec("b")).unwrap();
        let r = read(&p).unwrap();
        assert_eq!(
            r.records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert_eq!(r.skipped, vec![2]);
    }

    #[test]
    fn missing_log_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let r = read(&dir.path().join("none.jsonl")).unwrap();
        assert!(r.records.is_empty() && r.skipped.is_empty());
    }

    #[test]
    fn ledger_counts_real_executions_and_failures_not_dry_runs() {
        let t0 = Utc::now();
        let exec = rec("a");
        let mut dry = rec("b");
        dry.dry_run = true;
        dry.decision = "dry-run".into();
        let mut second_step = rec("c");
        second_step.step = 1;
        let mut failed = rec("d");
        failed.phase = Phase::Failed;
        let l = ledger_from(&[exec, dry, second_step, failed]);
        let since = t0 - chrono::Duration::hours(1);
        let (n, _) = l.executions_since(
            "default",
            crate::policy::model::RateScope::Global,
            "pb",
            "",
            since,
        );
        assert_eq!(
            n, 1,
            "one execution: dry-runs and later steps of the same run do not count"
        );
        assert_eq!(l.failures_since("default", "pb", since), 1);
        assert!(l.last_execution("default", "pb", "").is_some());
    }

    #[test]
    fn rotation_keeps_n_files_and_the_ledger_spans_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let mut w = Writer::open_rotating(
            &p,
            Rotation {
                max_bytes: 2000,
                keep: 3,
            },
        )
        .unwrap();
        // The execution lands in what becomes a rotated file.
        let mut exec = rec("exec");
        exec.target.insert("name".into(), "pod-a".into());
        w.append(&exec).unwrap();
        for i in 0..8 {
            let mut r = rec(&format!("filler-{i}"));
            r.decision = "suppressed".into();
            w.append(&r).unwrap();
        }
        drop(w);
        assert!(dir.path().join("audit.jsonl.1").exists());
        let all = read_all(&p).unwrap();
        let ids: Vec<&str> = all.records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.first(), Some(&"exec"), "oldest first: {ids:?}");
        assert_eq!(ids.len(), 9, "{ids:?}");
        let key = crate::policy::target_key(&exec.target);
        let l = ledger_from(&all.records);
        assert!(l.last_execution("default", "pb", &key).is_some());
        // The current file alone would have lost it.
        assert!(ledger_from(&read(&p).unwrap().records)
            .last_execution("default", "pb", &key)
            .is_none());

        // Beyond `keep`, the oldest file goes.
        let mut w = Writer::open_rotating(
            &p,
            Rotation {
                max_bytes: 2000,
                keep: 3,
            },
        )
        .unwrap();
        for i in 0..40 {
            w.append(&rec(&format!("more-{i}"))).unwrap();
        }
        assert!(dir.path().join("audit.jsonl.3").exists());
        assert!(!dir.path().join("audit.jsonl.4").exists());
        assert!(!read_all(&p).unwrap().records.iter().any(|r| r.id == "exec"));
    }

    #[test]
    fn a_planned_step_without_an_outcome_is_interrupted_once() {
        let planned = rec("s1");
        let mut done_planned = rec("s2");
        done_planned.target.insert("name".into(), "b".into());
        let mut done = done_planned.clone();
        done.phase = Phase::Verified;
        let mut dry = rec("s3");
        dry.dry_run = true;
        dry.decision = "dry-run".into();
        let now = Utc::now();
        let recs = vec![planned, done_planned, done, dry];
        let lost = interrupted(&recs, now);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].id, "s1");
        assert_eq!(lost[0].phase, Phase::Failed);
        assert_eq!(lost[0].outcome, INTERRUPTED);
        let mut all = recs.clone();
        all.extend(lost);
        assert!(interrupted(&all, now).is_empty());
        // The interruption counts as a failure for the breaker.
        assert_eq!(
            ledger_from(&all).failures_since("default", "pb", now - chrono::Duration::hours(1)),
            1
        );
    }
}
