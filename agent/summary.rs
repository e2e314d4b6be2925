//! `remediate report`: what the agent did and whether it helped, per
//! playbook, over the audit log: runs decided, executed, verified,
//! resolved, unresolved, failed, suppressed by reason, and the time to
//! resolve (p50, p95).
//!
//! The log is read as a stream ([`Summary::add`] one record at a time).
//! What is kept per playbook is counters and one number per resolved run;
//! run state is kept only for executed runs that did not fail (bounded by
//! the policies' rate limits), so memory does not grow with the dry-runs
//! and suppressions of a storm.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::audit::{Phase, Record};

/// One playbook's figures.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PlaybookSummary {
    /// Playbook name.
    pub playbook: String,
    /// Decisions made (every event the playbook matched).
    pub runs: u64,
    /// Runs executed (not dry-run).
    pub executed: u64,
    /// Executed runs whose every step the driver verified.
    pub verified: u64,
    /// Verified runs whose alert then resolved.
    pub resolved: u64,
    /// Verified runs whose alert still fired `escalateAfter` later.
    pub unresolved: u64,
    /// Executed runs that failed (apply or verify error, timeout, interrupted).
    pub failed: u64,
    /// Dry-run decisions (shadow mode, `--dry-run`).
    pub dry_run: u64,
    /// Runs held for approval.
    pub needs_approval: u64,
    /// Suppressed decisions by reason (the gate stage that said no).
    pub suppressed: BTreeMap<String, u64>,
    /// Time from the alert's start to its resolution, median, seconds.
    pub time_to_resolve_p50: Option<f64>,
    /// The same, 95th percentile.
    pub time_to_resolve_p95: Option<f64>,
}

impl PlaybookSummary {
    /// Suppressed decisions of every reason.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed.values().sum()
    }
}

/// An executed run's progress: the highest step planned and verified.
#[derive(Debug, Default)]
struct Open {
    planned: usize,
    verified: Option<usize>,
}

/// The running totals.
#[derive(Debug, Default)]
pub struct Summary {
    since: Option<DateTime<Utc>>,
    by: BTreeMap<String, PlaybookSummary>,
    ttr_ms: HashMap<String, Vec<u64>>,
    open: HashMap<(String, i64, String), Open>,
    /// Records read (inside the window).
    pub records: u64,
    /// First and last record time seen.
    pub first: Option<DateTime<Utc>>,
    /// Last record time.
    pub last: Option<DateTime<Utc>>,
}

/// The gate stage a suppression came from, from its reason.
pub fn reason_class(reason: &str) -> String {
    const KNOWN: &[&str] = &[
        "opted out",
        "namespace",
        "circuit open",
        "circuit half-open",
        "cooldown",
        "rate-limit",
        "concurrency",
        "blast radius",
        "freeze window",
        "maintenance window",
        "cannot plan",
        "cancelled",
        "resolved",
        "approval",
    ];
    let r = reason.trim_start();
    if let Some(k) = KNOWN.iter().find(|k| r.starts_with(*k)) {
        return (*k).to_string();
    }
    if r.contains(" runs on node ") {
        return "another node's agent acts".into();
    }
    r.split([':', '(', ','])
        .next()
        .unwrap_or(r)
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0)
}

impl Summary {
    /// Totals of records at or after `since` (all when None).
    pub fn new(since: Option<DateTime<Utc>>) -> Self {
        Self {
            since,
            ..Self::default()
        }
    }

    /// Counts one record.
    pub fn add(&mut self, r: &Record) {
        if self.since.is_some_and(|s| r.ts < s) {
            return;
        }
        // Notification failures and test notifications are not runs.
        if r.playbook.is_empty() || matches!(r.decision.as_str(), "notify" | "test") {
            return;
        }
        self.records += 1;
        self.first = Some(self.first.map_or(r.ts, |f| f.min(r.ts)));
        self.last = Some(self.last.map_or(r.ts, |l| l.max(r.ts)));
        let s = self
            .by
            .entry(r.playbook.clone())
            .or_insert_with(|| PlaybookSummary {
                playbook: r.playbook.clone(),
                ..PlaybookSummary::default()
            });
        let key = || {
            (
                r.playbook.clone(),
                r.decided_at
                    .unwrap_or(r.ts)
                    .timestamp_nanos_opt()
                    .unwrap_or(0),
                r.trigger.fingerprint.clone(),
            )
        };
        match (r.phase, r.decision.as_str()) {
            (Phase::Planned, d) if r.step == 0 => {
                s.runs += 1;
                match d {
                    "execute" if !r.dry_run => {
                        s.executed += 1;
                        self.open.insert(key(), Open::default());
                    }
                    "execute" | "dry-run" => s.dry_run += 1,
                    "needs-approval" => s.needs_approval += 1,
                    "suppressed" => {
                        *s.suppressed.entry(reason_class(&r.reason)).or_insert(0) += 1;
                    }
                    _ => {}
                }
            }
            (Phase::Planned, "execute") if !r.dry_run => {
                if let Some(o) = self.open.get_mut(&key()) {
                    o.planned = o.planned.max(r.step);
                }
            }
            (Phase::Verified, "execute") if !r.dry_run => {
                if let Some(o) = self.open.get_mut(&key()) {
                    o.verified = Some(o.verified.map_or(r.step, |v| v.max(r.step)));
                }
            }
            (Phase::Failed, "execute") if !r.dry_run => {
                s.failed += 1;
                // A failed run is settled: its state goes.
                self.open.remove(&key());
            }
            (Phase::Resolved, _) => {
                s.resolved += 1;
                self.ttr_ms
                    .entry(r.playbook.clone())
                    .or_default()
                    .push(r.duration_ms);
            }
            (Phase::Unresolved, _) => s.unresolved += 1,
            _ => {}
        }
    }

    /// The figures, by playbook name.
    pub fn finish(mut self) -> Vec<PlaybookSummary> {
        // Executed runs that did not fail: verified when every step planned was.
        for ((pb, _, _), o) in self.open.drain() {
            if o.verified == Some(o.planned) {
                if let Some(s) = self.by.get_mut(&pb) {
                    s.verified += 1;
                }
            }
        }
        for (pb, mut v) in self.ttr_ms.drain() {
            v.sort_unstable();
            if let Some(s) = self.by.get_mut(&pb) {
                s.time_to_resolve_p50 = percentile(&v, 50.0);
                s.time_to_resolve_p95 = percentile(&v, 95.0);
            }
        }
        self.by.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::TriggerRef;
    use crate::event::{Status, TriggerKind};

    fn rec(pb: &str, decision: &str, phase: Phase, step: usize, decided: i64) -> Record {
        let t = DateTime::from_timestamp(1_764_000_000 + decided, 0).unwrap();
        Record {
            ts: t,
            id: format!("{pb}-{decided}-{step}"),
            trigger: std::sync::Arc::new(TriggerRef {
                kind: TriggerKind::Alert,
                alertname: Some("A".into()),
                fingerprint: format!("fp{decided}"),
                status: Status::Firing,
                labels: Default::default(),
                annotations: Default::default(),
                values: Default::default(),
                starts_at: None,
            }),
            playbook: pb.into(),
            action: "host.command".into(),
            target: Default::default(),
            params: serde_json::Value::Null,
            decision: decision.into(),
            reason: String::new(),
            dry_run: decision == "dry-run",
            phase,
            outcome: String::new(),
            duration_ms: 0,
            node: "n".into(),
            policy: "default".into(),
            step,
            decided_at: Some(t),
            evidence: Default::default(),
        }
    }

    #[test]
    fn counts_runs_by_how_they_ended_and_the_time_to_resolve() {
        let mut s = Summary::new(None);
        // Run 1: two steps, both verified, then resolved after 90 s.
        s.add(&rec("fix", "execute", Phase::Planned, 0, 1));
        s.add(&rec("fix", "execute", Phase::Verified, 0, 1));
        s.add(&rec("fix", "execute", Phase::Planned, 1, 1));
        s.add(&rec("fix", "execute", Phase::Applied, 1, 1));
        s.add(&rec("fix", "execute", Phase::Verified, 1, 1));
        let mut r = rec("fix", "execute", Phase::Resolved, 1, 1);
        r.duration_ms = 90_000;
        s.add(&r);
        // Run 2: step 1 fails.
        s.add(&rec("fix", "execute", Phase::Planned, 0, 2));
        s.add(&rec("fix", "execute", Phase::Verified, 0, 2));
        s.add(&rec("fix", "execute", Phase::Planned, 1, 2));
        s.add(&rec("fix", "execute", Phase::Failed, 1, 2));
        // Run 3: verified, unresolved.
        s.add(&rec("fix", "execute", Phase::Planned, 0, 3));
        s.add(&rec("fix", "execute", Phase::Verified, 0, 3));
        s.add(&rec("fix", "execute", Phase::Unresolved, 0, 3));
        // Suppressed and dry-run decisions.
        let mut c = rec("fix", "suppressed", Phase::Planned, 0, 4);
        c.reason =
            "cooldown 10m, last 2026-11-25T10:00:00Z (allows again at 2026-11-25T10:10:00Z)".into();
        s.add(&c);
        let mut c = rec("fix", "suppressed", Phase::Planned, 0, 5);
        c.reason = "rate-limit global 30/1h".into();
        s.add(&c);
        s.add(&rec("other", "dry-run", Phase::Planned, 0, 6));
        // Not runs.
        s.add(&rec("", "test", Phase::Planned, 0, 7));
        let out = s.finish();
        assert_eq!(out.len(), 2);
        let f = &out[0];
        assert_eq!(f.playbook, "fix");
        assert_eq!(
            (
                f.runs,
                f.executed,
                f.verified,
                f.failed,
                f.resolved,
                f.unresolved
            ),
            (5, 3, 2, 1, 1, 1)
        );
        assert_eq!(f.suppressed["cooldown"], 1);
        assert_eq!(f.suppressed["rate-limit"], 1);
        assert_eq!(f.time_to_resolve_p50, Some(90.0));
        assert_eq!(out[1].dry_run, 1);
        assert_eq!(out[1].time_to_resolve_p50, None);
    }

    #[test]
    fn since_skips_older_records_and_percentiles_are_nearest_rank() {
        let mut s = Summary::new(Some(DateTime::from_timestamp(1_764_000_010, 0).unwrap()));
        s.add(&rec("fix", "execute", Phase::Planned, 0, 1));
        for (i, secs) in [10u64, 20, 30, 40, 50, 60, 70, 80, 90, 1000]
            .iter()
            .enumerate()
        {
            let mut r = rec("fix", "execute", Phase::Resolved, 0, 20 + i as i64);
            r.duration_ms = secs * 1000;
            s.add(&r);
        }
        let f = &s.finish()[0];
        assert_eq!(f.runs, 0, "the planned record is older than --since");
        assert_eq!(f.resolved, 10);
        assert_eq!(f.time_to_resolve_p50, Some(50.0));
        assert_eq!(f.time_to_resolve_p95, Some(1000.0));
    }

    #[test]
    fn suppression_reasons_are_grouped_by_gate_stage() {
        assert_eq!(
            reason_class("circuit open: 3 failed runs (opened x)"),
            "circuit open"
        );
        assert_eq!(
            reason_class("freeze window \"weekend\" for default"),
            "freeze window"
        );
        assert_eq!(
            reason_class("host runs on node b: that node's agent acts"),
            "another node's agent acts"
        );
        assert_eq!(reason_class("something new: detail"), "something new");
    }
}
