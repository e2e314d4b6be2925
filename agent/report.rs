//! Human output: the decision table and the summary line.

use comfy_table::{presets, ContentArrangement, Table};

use crate::audit::Phase;
use crate::engine::{RunReport, RunStatus};
use crate::event::Event;

/// One row: an event with no match, or a run.
#[derive(Debug)]
pub enum Row<'a> {
    /// An event no playbook matched.
    NoMatch(&'a Event),
    /// A decided (and maybe executed) run.
    Run(&'a RunReport),
}

fn trigger_label(ev_alert: Option<&str>, status: &str, kind: crate::event::TriggerKind) -> String {
    match (kind, ev_alert) {
        (crate::event::TriggerKind::Alert, Some(a)) => format!("{a} ({status})"),
        (k, _) => format!("{k:?}").to_lowercase(),
    }
}

/// Renders the decision table.
pub fn table(rows: &[Row<'_>], width: Option<u16>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_HORIZONTAL_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec!["TRIGGER", "PLAYBOOK", "TARGET", "DECISION", "DETAIL"]);
    if let Some(w) = width {
        t.set_width(w);
    }
    for r in rows {
        match r {
            Row::NoMatch(ev) => {
                t.add_row(vec![
                    trigger_label(ev.alertname(), ev.status.as_str(), ev.trigger),
                    "-".into(),
                    "-".into(),
                    "no match".into(),
                    "no playbook matches this alert".into(),
                ]);
            }
            Row::Run(rep) => {
                let p = &rep.planned;
                let detail = match &rep.status {
                    RunStatus::Failed(msg) => format!("FAILED: {msg}"),
                    RunStatus::Verified => rep
                        .records
                        .iter()
                        .filter(|r| r.phase == Phase::Verified)
                        .map(|r| format!("{}: {}", r.action, r.outcome))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    RunStatus::NotExecuted => {
                        let mut lines = vec![p.decision.reason().to_string()];
                        if matches!(p.decision, crate::policy::Decision::DryRun(_)) {
                            lines.extend(rep.records.iter().map(|r| r.outcome.clone()));
                        }
                        lines.join("\n")
                    }
                };
                let decision = match &rep.status {
                    RunStatus::Failed(_) => "execute: failed".to_string(),
                    RunStatus::Verified => "execute: verified".to_string(),
                    RunStatus::NotExecuted => p.decision.as_str().to_string(),
                };
                t.add_row(vec![
                    trigger_label(
                        p.trigger.alertname.as_deref(),
                        p.trigger.status.as_str(),
                        p.trigger.kind,
                    ),
                    p.playbook.clone(),
                    p.target_display(),
                    decision,
                    detail,
                ]);
            }
        }
    }
    t.to_string()
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
    /// Runs by decision.
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
