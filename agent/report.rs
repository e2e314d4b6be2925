//! Human output: the decision table, the plans under it, and the summary line.

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};

use crate::engine::{RunReport, RunStatus};
use crate::event::{Event, TriggerKind};
use crate::policy::Decision;

/// One row: an event with no match, or a run.
#[derive(Debug)]
pub enum Row<'a> {
    /// An event no playbook matched.
    NoMatch(&'a Event),
    /// A decided (and maybe executed) run.
    Run(&'a RunReport),
}

fn trigger_label(alertname: Option<&str>, status: &str, kind: TriggerKind) -> String {
    match (kind, alertname) {
        (TriggerKind::Alert, Some(a)) => format!("{a} ({status})"),
        (TriggerKind::Alert, None) => format!("alert ({status})"),
        (TriggerKind::Schedule, _) => "schedule".into(),
        (TriggerKind::Manual, _) => "manual".into(),
    }
}

/// Renders the decision table and, beneath it, what each run would do or did.
pub fn table(rows: &[Row<'_>]) -> String {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_BORDERS_ONLY).set_header(vec![
        "#", "TRIGGER", "PLAYBOOK", "TARGET", "DECISION", "REASON",
    ]);
    // Plans and outcomes are listed under the table, so rows stay short:
    // never wrap, so a reason is never cut mid-word in a pipe or a log.
    t.set_content_arrangement(ContentArrangement::Disabled);
    if let Some(c) = t.column_mut(0) {
        c.set_cell_alignment(CellAlignment::Right);
    }
    let mut plans = Vec::new();
    for (n, r) in rows.iter().enumerate() {
        let n = n + 1;
        match r {
            Row::NoMatch(ev) => {
                t.add_row(vec![
                    n.to_string(),
                    trigger_label(ev.alertname(), ev.status.as_str(), ev.trigger),
                    "-".into(),
                    "-".into(),
                    "no match".into(),
                    "no playbook matches this alert".into(),
                ]);
            }
            Row::Run(rep) => {
                let p = &rep.planned;
                let decision = match &rep.status {
                    RunStatus::Failed(_) => "FAILED".to_string(),
                    RunStatus::Verified => "executed".to_string(),
                    RunStatus::NotExecuted => p.decision.as_str().to_string(),
                };
                let reason = match &rep.status {
                    RunStatus::Failed(msg) => msg.clone(),
                    RunStatus::Verified => "applied and verified".into(),
                    RunStatus::NotExecuted => p.decision.reason().to_string(),
                };
                t.add_row(vec![
                    n.to_string(),
                    trigger_label(
                        p.trigger.alertname.as_deref(),
                        p.trigger.status.as_str(),
                        p.trigger.kind,
                    ),
                    p.playbook.clone(),
                    p.target_display(),
                    decision,
                    reason,
                ]);
                let show = !matches!(p.decision, Decision::Suppressed(_));
                if show {
                    // The last record of each step says what it would do or did.
                    let mut last: Vec<(usize, &str, &str)> = Vec::new();
                    for rec in &rep.records {
                        match last.iter_mut().find(|(s, ..)| *s == rec.step) {
                            Some(e) => e.2 = rec.outcome.as_str(),
                            None => {
                                last.push((rec.step, rec.action.as_str(), rec.outcome.as_str()))
                            }
                        }
                    }
                    for (_, action, outcome) in last {
                        plans.push(format!("  [{n}] {action}: {outcome}"));
                    }
                }
            }
        }
    }
    let mut out = t.to_string();
    if !plans.is_empty() {
        out.push_str("\n\n");
        out.push_str(&plans.join("\n"));
    }
    out
}

/// Counts for the summary line.
#[derive(Debug, Default)]
pub struct Summary {
    /// Events seen.
    pub events: usize,
    /// Of which resolved.
    pub resolved: usize,
    /// Events no playbook matched.
    pub unmatched: usize,
    /// Execute decisions.
    pub execute: usize,
    /// Dry-run decisions.
    pub dry_run: usize,
    /// Suppressed decisions.
    pub suppressed: usize,
    /// Needs-approval decisions.
    pub needs_approval: usize,
    /// Executed runs that failed.
    pub failed: usize,
    /// Records appended.
    pub records: usize,
}

impl Summary {
    /// One line.
    pub fn line(&self, audit: &str) -> String {
        let runs = self.execute + self.dry_run + self.suppressed + self.needs_approval;
        format!(
            "{} event{} ({} resolved, {} unmatched); {} run{}: {} execute ({} failed), {} dry-run, {} suppressed, {} needs-approval; audit: {} (+{} record{})",
            self.events,
            plural(self.events),
            self.resolved,
            self.unmatched,
            runs,
            plural(runs),
            self.execute,
            self.failed,
            self.dry_run,
            self.suppressed,
            self.needs_approval,
            audit,
            self.records,
            plural(self.records)
        )
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The replay table: then and now, changed rows marked `*`; the reasons
/// are listed under the table for changed rows.
pub fn replay_table(rows: &[crate::replay::Row]) -> String {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_BORDERS_ONLY).set_header(vec![
        "#",
        "",
        "DECIDED AT",
        "TRIGGER",
        "PLAYBOOK",
        "TARGET",
        "THEN",
        "NOW",
    ]);
    t.set_content_arrangement(ContentArrangement::Disabled);
    let mut notes = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let n = i + 1;
        t.add_row(vec![
            n.to_string(),
            if r.changed { "*".into() } else { String::new() },
            r.at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            r.trigger.clone(),
            r.playbook.clone(),
            r.target.clone(),
            r.then.clone(),
            r.now.clone(),
        ]);
        if r.changed || r.then == "-" {
            notes.push(format!("  [{n}] now: {}", r.now_reason));
            if r.then != "-" {
                notes.push(format!("      then: {}", r.then_reason));
            }
        }
    }
    let mut out = t.to_string();
    for n in notes {
        out.push('\n');
        out.push_str(&n);
    }
    out
}
