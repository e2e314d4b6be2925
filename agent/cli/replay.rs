//! `remediate replay`: what the current playbooks and policies would decide
//! for recorded events or alert payloads, beside what was decided then.
//! Reads only; the logic is [`crate::replay`].

use std::io::Write;

use chrono::Utc;

use super::args::{Output, ReplayArgs};
use super::sources::load;
use super::{Error, Result};
use crate::audit;
use crate::drivers::Registry;
use crate::engine::Engine;
use crate::report;

/// Rows the text table shows at most; the rest are counted under it
/// (`--output json` lists every row).
pub const TABLE_ROWS: usize = 1000;

/// Runs `remediate replay`.
pub fn replay(args: ReplayArgs, out: &mut dyn Write) -> Result<()> {
    let (cfg, pb_origin, pol_origin) = load(&args.sources)?;
    let horizon = crate::pipeline::exact_horizon(&cfg);
    let mut engine = Engine::new(cfg, Registry::new(), "replay");
    engine.decide_only = true;
    if let Some(p) = &args.audit {
        if !p.exists() {
            return Err(Error::Input(format!("{}: no such audit log", p.display())));
        }
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
    if args.output == Output::Text {
        outln!(
            out,
            "replaying with playbooks from {pb_origin} and policies from {pol_origin}; nothing is executed or recorded"
        );
    }
    // Rows go out as they are decided: a JSON line each, or into the
    // table while it has room.
    let mut shown: Vec<crate::replay::Row> = Vec::new();
    let mut more = 0usize;
    let mut failed: Option<std::io::Error> = None;
    let mut emit = |r: crate::replay::Row| {
        if args.changed_only && !r.changed {
            return;
        }
        match args.output {
            Output::Json => {
                if failed.is_none() {
                    let res = serde_json::to_writer(&mut out, &r)
                        .map_err(std::io::Error::from)
                        .and_then(|()| out.write_all(b"\n"));
                    if let Err(e) = res {
                        failed = Some(e);
                    }
                }
            }
            Output::Text if shown.len() < TABLE_ROWS => shown.push(r),
            Output::Text => more += 1,
        }
    };
    let summary = match &args.alerts {
        Some(path) => {
            // With `--at` (a time that may lie before the newest history),
            // the agent's wider horizon, as the agent would keep.
            let horizon = match args.at {
                None => horizon,
                Some(_) => crate::policy::Horizon::all(crate::pipeline::horizon(&engine.config)),
            };
            let ledger = match &args.audit {
                Some(p) => {
                    let mut l = crate::policy::Ledger::with_horizons(horizon);
                    audit::scan_all(p, &mut |r| audit::enter(&mut l, &r))
                        .map_err(|e| Error::Input(e.to_string()))?;
                    l
                }
                None => crate::policy::Ledger::with_horizons(horizon),
            };
            let file = std::fs::File::open(path)
                .map_err(|e| Error::Input(format!("{}: cannot read: {e}", path.display())))?;
            let mut r =
                crate::replay::AlertReplay::new(&engine, args.at.unwrap_or_else(Utc::now), ledger);
            for p in crate::replay::Payloads::new(std::io::BufReader::new(file)) {
                let p = p.map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
                for ev in p.into_events() {
                    r.event(&ev, &mut emit);
                }
            }
            r.finish()
        }
        None => {
            let mut r = crate::replay::AuditReplay::new(&engine, Some(horizon));
            if let Some(p) = &args.audit {
                audit::scan_all_as(p, &mut |rec| r.record(rec, &mut emit))
                    .map_err(|e| Error::Input(e.to_string()))?;
            }
            if r.late > 0 {
                eprintln!(
                    "warning: {} recorded event(s) were more than {} events out of time order in the log; each was decided where it was met",
                    r.late,
                    crate::replay::REORDER_WINDOW
                );
            }
            r.finish(&mut emit)
        }
    };
    if let Some(e) = failed {
        return Err(Error::Input(format!("cannot write the output: {e}")));
    }
    match args.output {
        Output::Json => {
            outln!(
                out,
                "{}",
                serde_json::to_string(&serde_json::json!({ "summary": summary }))
                    .unwrap_or_default()
            );
        }
        Output::Text => {
            if !shown.is_empty() {
                outln!(out, "{}", report::replay_table(&shown));
            }
            if more > 0 {
                outln!(
                    out,
                    "… and {more} more row(s): the table shows the first {TABLE_ROWS}; --output json lists every row"
                );
            }
            let now: Vec<String> = summary
                .now
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect();
            let changes: Vec<String> = summary
                .transitions
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect();
            outln!(
                out,
                "{} event(s), {} decision(s): now {}; {} changed{}",
                summary.events,
                summary.rows,
                if now.is_empty() {
                    "none".into()
                } else {
                    now.join(", ")
                },
                summary.changed,
                if changes.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", changes.join(", "))
                }
            );
        }
    }
    out.flush()
        .map_err(|e| Error::Input(format!("cannot write the output: {e}")))?;
    Ok(())
}
