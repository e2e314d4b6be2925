//! What-if: the decisions the current playbooks and policies would make for
//! recorded events, compared with what was decided then. This is how a
//! playbook is promoted from shadow (dry-run) to enforce: replay last
//! week's audit and read what would have executed.
//!
//! Replay is offline and pure: it reads files, calls no driver and writes
//! nothing. Each recorded event is decided at its recorded decision time,
//! against a ledger built from the replayed decisions themselves (so limits
//! and cooldowns apply as they would have), plus the outcomes recorded then
//! (failures feed the breaker).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::audit::{Phase, Record};
use crate::engine::Engine;
use crate::event::Event;
use crate::policy::Ledger;

/// One (event, playbook) compared.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Decision time of the recorded event (or the what-if time).
    pub at: DateTime<Utc>,
    /// Alert name or `schedule`/`manual`.
    pub trigger: String,
    /// Alert fingerprint (or tick identity).
    pub fingerprint: String,
    /// Playbook.
    pub playbook: String,
    /// Target as rendered now (or then, when it no longer matches).
    pub target: String,
    /// Decision then (`-` when the playbook did not match then, or for `--alerts`).
    pub then: String,
    /// Reason then.
    pub then_reason: String,
    /// Decision now (`no-match` when the playbook no longer matches).
    pub now: String,
    /// Reason now.
    pub now_reason: String,
    /// Whether then and now differ.
    pub changed: bool,
}

/// Counts over a replay.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    /// Events replayed.
    pub events: usize,
    /// (event, playbook) pairs compared.
    pub rows: usize,
    /// Pairs whose decision changed.
    pub changed: usize,
    /// Decisions now, by decision.
    pub now: BTreeMap<String, usize>,
    /// Changes by `then -> now`.
    pub transitions: BTreeMap<String, usize>,
}

/// One recorded event: fingerprint, startsAt, status and decision second.
type EventKey = (String, Option<DateTime<Utc>>, String, i64);

/// The first record of each recorded decision, in time order.
fn decisions(records: &[Record]) -> Vec<&Record> {
    let mut v: Vec<&Record> = records
        .iter()
        .filter(|r| {
            r.phase == Phase::Planned
                && r.step == 0
                && matches!(
                    r.decision.as_str(),
                    "execute" | "dry-run" | "suppressed" | "needs-approval"
                )
        })
        .collect();
    v.sort_by_key(|r| r.decided_at.unwrap_or(r.ts));
    v
}

/// Replays recorded decisions under `engine`'s current rules.
pub fn audit(engine: &Engine, records: &[Record]) -> (Vec<Row>, Summary) {
    let firsts = decisions(records);
    // Outcomes recorded then, by time, fed to the ledger as we pass them.
    let mut outcomes: Vec<(DateTime<Utc>, &Record)> = records
        .iter()
        .filter(|r| r.decision == "execute" && matches!(r.phase, Phase::Failed | Phase::Verified))
        .map(|r| (r.ts, r))
        .collect();
    outcomes.sort_by_key(|(t, _)| *t);
    let mut next_outcome = 0;

    // Group the recorded decisions by event: one event may have matched
    // several playbooks.
    let mut events: Vec<(DateTime<Utc>, Event, BTreeMap<String, &Record>)> = Vec::new();
    let mut index: BTreeMap<EventKey, usize> = BTreeMap::new();
    for r in firsts {
        let at = r.decided_at.unwrap_or(r.ts);
        let key = (
            r.trigger.fingerprint.clone(),
            r.trigger.starts_at,
            r.trigger.status.as_str().to_string(),
            at.timestamp_millis() / 1000,
        );
        let i = *index.entry(key).or_insert_with(|| {
            events.push((at, r.trigger.to_event(&r.playbook), BTreeMap::new()));
            events.len() - 1
        });
        events[i].2.insert(r.playbook.clone(), r);
    }

    let mut ledger = Ledger::default();
    let mut rows = Vec::new();
    let mut summary = Summary {
        events: events.len(),
        ..Summary::default()
    };
    for (group, (at, ev, then)) in events.iter().enumerate() {
        while next_outcome < outcomes.len() && outcomes[next_outcome].0 <= *at {
            let r = outcomes[next_outcome].1;
            match r.phase {
                Phase::Failed => ledger.record_failure(r.ts, &r.policy, &r.playbook),
                _ => ledger.record_success(r.ts, &r.policy, &r.playbook),
            }
            next_outcome += 1;
        }
        ledger.begin_group(group as u64);
        let now = engine.decide(ev, false, *at, &mut ledger);
        let trigger = ev
            .alertname()
            .map(str::to_string)
            .unwrap_or_else(|| ev.trigger.as_str().to_string());
        let mut seen = BTreeSet::new();
        for p in &now {
            seen.insert(p.playbook.clone());
            let (then_d, then_r) = then
                .get(&p.playbook)
                .map(|r| (r.decision.clone(), r.reason.clone()))
                .unwrap_or_else(|| ("-".into(), "did not match then".into()));
            rows.push(Row {
                at: *at,
                trigger: trigger.clone(),
                fingerprint: ev.fingerprint.clone(),
                playbook: p.playbook.clone(),
                target: p.target_display(),
                changed: then_d != p.decision.as_str(),
                then: then_d,
                then_reason: then_r,
                now: p.decision.as_str().to_string(),
                now_reason: p.decision.reason().to_string(),
            });
        }
        for (pb, r) in then {
            if seen.contains(pb) {
                continue;
            }
            rows.push(Row {
                at: *at,
                trigger: trigger.clone(),
                fingerprint: ev.fingerprint.clone(),
                playbook: pb.clone(),
                target: crate::drivers::target_display(&r.target),
                then: r.decision.clone(),
                then_reason: r.reason.clone(),
                now: "no-match".into(),
                now_reason: "the playbook no longer matches (changed or removed)".into(),
                changed: true,
            });
        }
    }
    for r in &rows {
        summary.rows += 1;
        *summary.now.entry(r.now.clone()).or_insert(0) += 1;
        if r.changed {
            summary.changed += 1;
            *summary
                .transitions
                .entry(format!("{} -> {}", r.then, r.now))
                .or_insert(0) += 1;
        }
    }
    (rows, summary)
}

/// Decides `events` (from Alertmanager payloads) at `at` against `ledger`
/// (empty, or rebuilt from an audit log).
pub fn alerts(
    engine: &Engine,
    events: &[Event],
    at: DateTime<Utc>,
    mut ledger: Ledger,
) -> (Vec<Row>, Summary) {
    let mut rows = Vec::new();
    let mut summary = Summary {
        events: events.len(),
        ..Summary::default()
    };
    ledger.begin_group(u64::MAX);
    for ev in events {
        let trigger = ev
            .alertname()
            .map(str::to_string)
            .unwrap_or_else(|| ev.trigger.as_str().to_string());
        for p in engine.decide(ev, false, at, &mut ledger) {
            rows.push(Row {
                at,
                trigger: trigger.clone(),
                fingerprint: ev.fingerprint.clone(),
                playbook: p.playbook.clone(),
                target: p.target_display(),
                then: "-".into(),
                then_reason: String::new(),
                now: p.decision.as_str().to_string(),
                now_reason: p.decision.reason().to_string(),
                changed: false,
            });
        }
    }
    for r in &rows {
        summary.rows += 1;
        *summary.now.entry(r.now.clone()).or_insert(0) += 1;
    }
    (rows, summary)
}

/// Reads Alertmanager payloads from a file: one JSON object, a JSON array
/// of them, or one per line. Errors name the payload.
pub fn read_payloads(text: &str) -> Result<Vec<Event>, String> {
    let t = text.trim_start();
    let payloads: Vec<serde_json::Value> = if t.starts_with('[') {
        serde_json::from_str(t).map_err(|e| format!("not a JSON array of payloads: {e}"))?
    } else {
        let mut v = Vec::new();
        let mut de = serde_json::Deserializer::from_str(t).into_iter::<serde_json::Value>();
        for (i, p) in de.by_ref().enumerate() {
            v.push(p.map_err(|e| format!("payload {}: {e}", i + 1))?);
        }
        v
    };
    let mut events = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let bytes = serde_json::to_vec(p).map_err(|e| e.to_string())?;
        let payload = crate::trigger::parse_notification(&bytes)
            .map_err(|e| format!("payload {}: {e}", i + 1))?;
        events.extend(payload.events);
    }
    Ok(events)
}
