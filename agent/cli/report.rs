//! `remediate report`: per playbook, what was decided and executed, whether
//! the fixes were verified and whether the alerts then resolved, with the
//! time to resolve; over the audit log and its rotated files, streamed
//! ([`crate::audit::scan_all`]).

use std::io::Write;
use std::path::PathBuf;

use chrono::Utc;
use comfy_table::{presets, CellAlignment, ContentArrangement, Table};

use super::args::{Output, ReportArgs};
use super::{Error, Result};
use crate::summary::{PlaybookSummary, Summary};

fn secs(v: Option<f64>) -> String {
    v.map_or_else(
        || "-".into(),
        |s| crate::units::human_secs(s.max(0.0) as u64),
    )
}

/// Runs `remediate report`.
pub fn report(args: ReportArgs, out: &mut dyn Write) -> Result<()> {
    let since = args.since.map(|d| Utc::now() - d.chrono());
    let mut summary = Summary::new(since);
    let rotated = PathBuf::from(format!("{}.1", args.audit.display()));
    if !args.audit.exists() && !rotated.exists() {
        return Err(Error::Input(format!(
            "{}: no audit log there (give the agent's with --audit, e.g. /var/lib/remediate/audit.jsonl)",
            args.audit.display()
        )));
    }
    let read = crate::audit::scan_all(&args.audit, &mut |r| summary.add(&r))
        .map_err(|e| Error::Input(e.to_string()))?;
    let unreadable: Vec<String> = read
        .damaged
        .iter()
        .cloned()
        .chain(
            read.skipped
                .iter()
                .map(|n| format!("{}:{n}", args.audit.display())),
        )
        .collect();
    if !unreadable.is_empty() {
        eprintln!(
            "warning: {} unreadable line(s) skipped: {}",
            unreadable.len(),
            unreadable
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (first, last, records) = (summary.first, summary.last, summary.records);
    let rows = summary.finish();
    let rows: Vec<PlaybookSummary> = match &args.playbook {
        Some(p) => rows.into_iter().filter(|r| &r.playbook == p).collect(),
        None => rows,
    };
    match args.output {
        Output::Json => {
            let v = serde_json::json!({
                "since": since,
                "from": first,
                "to": last,
                "records": records,
                "playbooks": rows,
            });
            outln!(out, "{v}");
        }
        Output::Text => {
            let window = match since {
                Some(s) => format!("since {}", s.format("%Y-%m-%d %H:%M UTC")),
                None => "all history".into(),
            };
            outln!(
                out,
                "{}: {window}, {records} records{}",
                args.audit.display(),
                match (first, last) {
                    (Some(f), Some(l)) => format!(
                        " from {} to {}",
                        f.format("%Y-%m-%d %H:%M"),
                        l.format("%Y-%m-%d %H:%M")
                    ),
                    _ => String::new(),
                }
            );
            if rows.is_empty() {
                outln!(out, "no runs in this window");
                return Ok(());
            }
            let mut t = Table::new();
            t.load_preset(presets::UTF8_BORDERS_ONLY)
                .set_content_arrangement(ContentArrangement::Disabled)
                .set_header(vec![
                    "PLAYBOOK",
                    "RUNS",
                    "EXECUTED",
                    "VERIFIED",
                    "RESOLVED",
                    "UNRESOLVED",
                    "FAILED",
                    "DRY-RUN",
                    "SUPPRESSED",
                    "TTR p50",
                    "TTR p95",
                ]);
            for r in &rows {
                t.add_row(vec![
                    r.playbook.clone(),
                    r.runs.to_string(),
                    r.executed.to_string(),
                    r.verified.to_string(),
                    r.resolved.to_string(),
                    r.unresolved.to_string(),
                    r.failed.to_string(),
                    r.dry_run.to_string(),
                    r.suppressed_total().to_string(),
                    secs(r.time_to_resolve_p50),
                    secs(r.time_to_resolve_p95),
                ]);
            }
            for i in 1..=10 {
                if let Some(c) = t.column_mut(i) {
                    c.set_cell_alignment(CellAlignment::Right);
                }
            }
            outln!(out, "{t}");
            for r in rows.iter().filter(|r| !r.suppressed.is_empty()) {
                let mut by: Vec<_> = r.suppressed.iter().collect();
                by.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                let parts: Vec<String> = by.iter().map(|(k, n)| format!("{k} {n}")).collect();
                outln!(out, "  {} suppressed: {}", r.playbook, parts.join(", "));
            }
        }
    }
    Ok(())
}
