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

/// Runs `remediate replay`.
pub fn replay(args: ReplayArgs, out: &mut dyn Write) -> Result<()> {
    let (cfg, pb_origin, pol_origin) = load(&args.sources)?;
    let engine = Engine::new(cfg, Registry::new(), "replay");
    let history = match &args.audit {
        Some(p) => {
            if !p.exists() {
                return Err(Error::Input(format!("{}: no such audit log", p.display())));
            }
            audit::read_all(p)
                .map_err(|e| Error::Input(e.to_string()))?
                .records
        }
        None => Vec::new(),
    };
    let (rows, summary) = match &args.alerts {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Input(format!("{}: cannot read: {e}", path.display())))?;
            let events = crate::replay::read_payloads(&text)
                .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
            let ledger = audit::ledger_from(&history);
            crate::replay::alerts(&engine, &events, args.at.unwrap_or_else(Utc::now), ledger)
        }
        None => crate::replay::audit(&engine, &history),
    };
    let shown: Vec<_> = rows
        .into_iter()
        .filter(|r| !args.changed_only || r.changed)
        .collect();
    match args.output {
        Output::Json => {
            for r in &shown {
                outln!(out, "{}", serde_json::to_string(r).unwrap_or_default());
            }
            outln!(
                out,
                "{}",
                serde_json::to_string(&serde_json::json!({ "summary": summary }))
                    .unwrap_or_default()
            );
        }
        Output::Text => {
            outln!(
        out,
                "replaying with playbooks from {pb_origin} and policies from {pol_origin}; nothing is executed or recorded"
            );
            if !shown.is_empty() {
                outln!(out, "{}", report::replay_table(&shown));
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
    Ok(())
}
