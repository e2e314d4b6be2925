//! The audit log: one JSON object a line, appended and fsynced. It is the
//! source of truth for what was decided and done, and the ledger of rate
//! limits, cooldowns and breakers is rebuilt from it.
//!
//! Record fields are a stable contract: add, never rename. [`write`] appends
//! (fsynced, rotated by size); [`read`] reads a log and its rotated files back.

mod read;
pub(crate) mod ts;
mod write;

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use read::{
    damaged_error, enter, interrupted, last_seq, ledger_from, read, read_all, scan, scan_all,
    scan_all_as, scan_as, ReadResult, INTERRUPTED,
};
pub use write::{GroupCommit, Rotation, Writer};

/// Longest label, annotation or value name kept in an audit record.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest label, annotation or value kept in an audit record.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Most bytes of names and values one trigger puts in an audit record.
pub const MAX_TRIGGER_BYTES: usize = 64 << 10;

/// `s` if it fits in `max` bytes, else its first bytes (on a character
/// boundary) and a marker saying how much was cut.
fn cut(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…[cut {} bytes]", &s[..end], s.len() - end))
}

/// A label set within the caps; `budget` is what the trigger has left.
fn capped(set: &BTreeMap<String, String>, budget: &mut usize) -> BTreeMap<String, String> {
    set.iter()
        .map(|(k, v)| {
            let k = cut(k, MAX_NAME_BYTES).into_owned();
            let v = cut(v, MAX_VALUE_BYTES.min(*budget));
            *budget = budget.saturating_sub(k.len() + v.len());
            (k, v.into_owned())
        })
        .collect()
}

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
    #[serde(
        default,
        rename = "startsAt",
        skip_serializing_if = "Option::is_none",
        serialize_with = "ts::serialize_opt",
        deserialize_with = "ts::deserialize_opt"
    )]
    pub starts_at: Option<DateTime<Utc>>,
}

impl TriggerRef {
    /// The trigger of `ev`, with everything needed to rebuild it.
    ///
    /// What one alert puts in the audit is capped (every record of a run
    /// repeats it): a label, annotation or value name at
    /// [`MAX_NAME_BYTES`], its value at [`MAX_VALUE_BYTES`], all of them
    /// together at [`MAX_TRIGGER_BYTES`]; each cut is marked
    /// `…[cut N bytes]` where it was made.
    pub fn from_event(ev: &crate::event::Event) -> Self {
        let mut budget = MAX_TRIGGER_BYTES;
        let labels = capped(&ev.labels, &mut budget);
        let annotations = capped(&ev.annotations, &mut budget);
        let values = capped(&ev.values, &mut budget);
        Self {
            kind: ev.trigger,
            alertname: ev.alertname().map(|a| cut(a, MAX_VALUE_BYTES).into_owned()),
            fingerprint: ev.fingerprint.clone(),
            status: ev.status,
            labels,
            annotations,
            values,
            starts_at: ev.starts_at,
        }
    }

    /// [`TriggerRef::to_event`], taking the trigger (no copies).
    pub fn into_event(self, playbook: &str) -> crate::event::Event {
        use crate::event::TriggerKind;
        crate::event::Event {
            trigger: self.kind,
            status: self.status,
            fingerprint: self.fingerprint,
            labels: self.labels,
            annotations: self.annotations,
            values: self.values,
            starts_at: self.starts_at,
            playbook: match self.kind {
                TriggerKind::Alert => None,
                TriggerKind::Schedule | TriggerKind::Manual => Some(playbook.to_string()),
            },
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
    /// After a verified run, the alert that triggered it resolved; the
    /// record's `duration_ms` is the time from the alert's start.
    Resolved,
    /// After a verified run, the alert still fired `escalateAfter` later:
    /// the fix did not help (a failure for the circuit breaker).
    Unresolved,
}

/// One audit line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When this record was written.
    #[serde(serialize_with = "ts::serialize", deserialize_with = "ts::deserialize")]
    pub ts: DateTime<Utc>,
    /// Identity of the planned step; the same across its phases.
    pub id: String,
    /// The trigger: shared by every record of a run (and its decision),
    /// not copied into each.
    pub trigger: std::sync::Arc<TriggerRef>,
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
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ts::serialize_opt",
        deserialize_with = "ts::deserialize_opt"
    )]
    pub decided_at: Option<DateTime<Utc>>,
    /// What the driver saw that on-call would look up (added field): the
    /// last termination and exit code, log lines, sessions terminated,
    /// bytes freed, limits before and after. Read-only observations,
    /// size-capped and with secrets scrubbed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub evidence: BTreeMap<String, String>,
}

/// A record as `remediate replay --audit` reads it: the fields it uses,
/// the others checked (so a line is accepted exactly when it is a
/// [`Record`]) but not kept. Reading a record this way allocates no
/// parameters, outcome, id or node: replay reads every record of a log.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Recorded {
    /// When this record was written.
    #[serde(serialize_with = "ts::serialize", deserialize_with = "ts::deserialize")]
    pub ts: DateTime<Utc>,
    #[allow(dead_code)]
    id: Checked,
    /// The trigger.
    pub trigger: TriggerRef,
    /// Playbook name.
    pub playbook: String,
    #[allow(dead_code)]
    action: Checked,
    /// Rendered target.
    pub target: BTreeMap<String, String>,
    #[allow(dead_code)]
    params: serde::de::IgnoredAny,
    /// The decision then.
    pub decision: String,
    /// Why.
    pub reason: String,
    #[allow(dead_code)]
    dry_run: bool,
    /// The phase.
    pub phase: Phase,
    #[allow(dead_code)]
    outcome: Checked,
    #[allow(dead_code)]
    duration_ms: u64,
    #[allow(dead_code)]
    node: Checked,
    /// Policy that gated the run.
    #[serde(default)]
    pub policy: String,
    /// Step index within the playbook.
    #[serde(default)]
    pub step: usize,
    /// When the gate decided the run.
    #[serde(default, deserialize_with = "ts::deserialize_opt")]
    pub decided_at: Option<DateTime<Utc>>,
    #[allow(dead_code)]
    #[serde(default)]
    evidence: CheckedMap,
}

impl From<&Record> for Recorded {
    fn from(r: &Record) -> Self {
        Self {
            ts: r.ts,
            id: Checked,
            trigger: (*r.trigger).clone(),
            playbook: r.playbook.clone(),
            action: Checked,
            target: r.target.clone(),
            params: serde::de::IgnoredAny,
            decision: r.decision.clone(),
            reason: r.reason.clone(),
            dry_run: r.dry_run,
            phase: r.phase,
            outcome: Checked,
            duration_ms: r.duration_ms,
            node: Checked,
            policy: r.policy.clone(),
            step: r.step,
            decided_at: r.decided_at,
            evidence: CheckedMap,
        }
    }
}

/// A string field read and checked to be a string, not kept.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Checked;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Checked, E> {
                Ok(Checked)
            }
        }
        d.deserialize_str(V)
    }
}

/// A map of strings to strings read and checked, not kept.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct CheckedMap;

impl<'de> Deserialize<'de> for CheckedMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = CheckedMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<CheckedMap, A::Error> {
                while m.next_entry::<Checked, Checked>()?.is_some() {}
                Ok(CheckedMap)
            }
        }
        d.deserialize_map(V)
    }
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

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;

    use super::*;
    use crate::event::{Status, TriggerKind};

    fn rec(id: &str) -> Record {
        Record {
            ts: Utc::now(),
            id: id.into(),
            trigger: std::sync::Arc::new(TriggerRef {
                kind: TriggerKind::Alert,
                alertname: Some("A".into()),
                fingerprint: "f".into(),
                status: Status::Firing,
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                values: BTreeMap::new(),
                starts_at: None,
            }),
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
            evidence: Default::default(),
        }
    }

    /// `replay --audit` reads records as `Recorded`: it must accept exactly
    /// the lines a `Record` accepts (no record skipped or let in that the
    /// ledger rebuild would treat otherwise) and keep the same fields.
    #[test]
    fn recorded_accepts_exactly_the_lines_a_record_does() {
        let mut full = rec("id-1");
        full.params = serde_json::json!({"mode": "evict", "n": [1, {"a": null}]});
        full.evidence.insert("restarts".into(), "14".into());
        full.decided_at = Some(full.ts);
        std::sync::Arc::make_mut(&mut full.trigger)
            .labels
            .insert("pod".into(), "x".into());
        full.target.insert("name".into(), "x".into());
        let good: serde_json::Value = serde_json::to_value(&full).unwrap();
        let mut lines = vec![good.to_string()];
        let obj = good.as_object().unwrap();
        // Each field missing, or of a wrong type.
        for k in obj.keys() {
            let mut v = good.clone();
            v.as_object_mut().unwrap().remove(k);
            lines.push(v.to_string());
            for bad in [
                serde_json::json!(5),
                serde_json::json!("s"),
                serde_json::json!(null),
                serde_json::json!({"k": 1}),
                serde_json::json!([]),
                serde_json::json!(true),
            ] {
                let mut v = good.clone();
                v[k] = bad;
                lines.push(v.to_string());
            }
        }
        lines.push(
            good.to_string()
                .replace(r#""ts""#, r#""ts":"2026-01-01T00:00:00Z","ts""#),
        );
        lines.push("{}".into());
        lines.push("not json".into());
        lines.push(r#"{"seq": 4}"#.into());
        let mut accepted = 0;
        for l in &lines {
            let a = serde_json::from_str::<Record>(l);
            let b = serde_json::from_str::<Recorded>(l);
            assert_eq!(a.is_ok(), b.is_ok(), "{l}\nRecord: {a:?}\nRecorded: {b:?}");
            if let (Ok(a), Ok(b)) = (a, b) {
                assert_eq!(Recorded::from(&a), b, "{l}");
                accepted += 1;
            }
        }
        // The good line, and those whose field may be left out or be null.
        assert!(accepted > 5 && accepted < lines.len() / 2, "{accepted}");
    }

    #[test]
    fn group_commit_batches_what_changes_nothing_and_writes_an_execution_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let mut g = GroupCommit::new(Writer::open(&p).unwrap());
        let mut quiet = rec("dry");
        quiet.decision = "dry-run".into();
        quiet.dry_run = true;
        for _ in 0..10_000 {
            g.append(&quiet).unwrap();
        }
        // Full batches (4096 records or 1 MiB) are written, the rest waits;
        // under 32 MiB written, none is fsynced yet: not 10,000 fsyncs.
        assert_eq!(g.syncs(), 0);
        assert!(g.unsynced() > 0);
        assert_eq!(g.written() + g.pending(), 10_000);
        assert!(g.pending() > 0);
        assert_eq!(read(&p).unwrap().records.len(), g.written());
        let syncs = 0;
        // A real execution's record goes out at once, with all before it.
        g.append(&rec("exec")).unwrap();
        assert_eq!(g.pending(), 0);
        assert_eq!(g.unsynced(), 0);
        let on_disk = read(&p).unwrap().records;
        assert_eq!(on_disk.len(), 10_001);
        assert_eq!(on_disk.last().unwrap().id, "exec");
        g.append(&quiet).unwrap();
        assert_eq!(g.pending(), 1);
        g.commit().unwrap();
        assert_eq!(g.unsynced(), 0);
        assert_eq!(read(&p).unwrap().records.len(), 10_002);
        assert_eq!(g.syncs(), syncs + 2);
        // Nothing pending: no write.
        g.commit().unwrap();
        assert_eq!(g.syncs(), syncs + 2);
    }

    #[test]
    fn scanning_hands_on_every_record_as_read_all_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let mut w = Writer::open_rotating(
            &p,
            Rotation {
                max_bytes: 2000,
                keep: 5,
            },
        )
        .unwrap();
        for i in 0..20 {
            w.append(&rec(&format!("r{i}"))).unwrap();
        }
        drop(w);
        let mut torn = OpenOptions::new().append(true).open(&p).unwrap();
        torn.write_all(b"{\"ts\":").unwrap();
        let all = read_all(&p).unwrap();
        let mut ids = Vec::new();
        let scanned = scan_all(&p, &mut |r| ids.push(r.id)).unwrap();
        let want: Vec<String> = all.records.iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids, want);
        assert!(ids.len() > 5 && ids.len() <= 20, "{ids:?}");
        assert_eq!(scanned.skipped, all.skipped);
        assert_eq!(scanned.skipped.len(), 1);
        assert!(scanned.damaged.is_empty());
    }

    #[test]
    fn a_torn_last_line_is_skipped_on_read_and_cut_back_before_the_next_append() {
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
        assert!(r.damaged.is_empty(), "a torn final write is not damage");
        // The write never completed: the next record replaces it, so the log
        // stays readable as a whole (no torn line left in the middle).
        let mut w = Writer::open(&p).unwrap();
        w.append(&rec("b")).unwrap();
        let r = read(&p).unwrap();
        assert_eq!(
            r.records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
        assert!(r.damaged.is_empty(), "{:?}", r.damaged);
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
