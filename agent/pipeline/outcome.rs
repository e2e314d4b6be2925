//! Outcome: did the fix help? After a run the driver verified, the agent
//! watches the alert that triggered it. Its resolved notification (or the
//! native trigger's condition clearing) records the run `resolved`, with
//! the time from the alert's start to resolution on
//! `remediate_time_to_resolve_seconds` (the users' MTTR, measured). Still
//! firing `escalateAfter` after verification (per playbook, 15 minutes by
//! default) records it `unresolved`: a failure for the circuit breaker and
//! one escalation notice.
//!
//! Watches are durable (the store's `watches`), so a restart neither loses
//! one nor records one twice: the outcome record and the end of its watch
//! are one commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;

use super::Shared;
use crate::audit::Phase;
use crate::engine::{Engine, RunReport, RunStatus};
use crate::event::{Status, TriggerKind};
use crate::metrics::{OutcomeLabels, PlaybookLabels};
use crate::notify::Notice;
use crate::policy::Decision;
use crate::state::{Commit, Watch, WatchChange};

/// How a watched run ended.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// Its alert resolved at this time.
    Resolved(DateTime<Utc>),
    /// Its alert still fired at the deadline.
    Unresolved,
}

struct Entry {
    watch: Watch,
    /// Set once the run has ended but its record could not be written yet
    /// (the store failing): written on a later tick.
    ended: Option<Ending>,
}

/// The watched runs, by watch id.
pub(super) struct Outcomes {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Outcomes {
    /// The watches the store held at start.
    pub(super) fn new(watches: Vec<Watch>) -> Self {
        Self {
            entries: Mutex::new(
                watches
                    .into_iter()
                    .map(|w| {
                        (
                            w.id().to_string(),
                            Entry {
                                watch: w,
                                ended: None,
                            },
                        )
                    })
                    .collect(),
            ),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs watched now.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

fn human(d: chrono::Duration) -> String {
    crate::units::human_secs(d.num_seconds().max(0) as u64)
}

/// After a run: a run the driver verified, that acted on a firing alert,
/// is watched until its alert resolves or `escalateAfter` passes. `received`
/// is when its alert arrived: a resolution since then (while the run was
/// under way) ends it at once.
pub(super) fn after_run(
    shared: &Shared,
    engine: &Engine,
    rep: &RunReport,
    received: DateTime<Utc>,
) {
    let p = &rep.planned;
    if rep.status != RunStatus::Verified
        || p.decision != Decision::Execute
        || p.trigger.kind != TriggerKind::Alert
        || p.trigger.status != Status::Firing
    {
        return;
    }
    let Some(last) = rep.records.last() else {
        return;
    };
    if last.dry_run || last.phase != Phase::Verified {
        return;
    }
    let escalate = engine
        .config
        .playbook(&p.playbook)
        .map(|pb| pb.doc.spec.escalate_after.chrono())
        .unwrap_or_else(|| chrono::Duration::minutes(15));
    let now = Utc::now();
    let watch = Watch {
        record: last.clone(),
        starts_at: p.trigger.starts_at,
        verified_at: now,
        deadline: now + escalate,
    };
    let id = watch.id().to_string();
    let ended = shared
        .board
        .resolved_since(&p.trigger.fingerprint, received)
        .map(Ending::Resolved);
    match ended {
        Some(how) => {
            // Resolved while it ran: nothing to watch, only the outcome.
            let mut entries = shared.outcomes.lock();
            entries.insert(
                id.clone(),
                Entry {
                    watch,
                    ended: Some(how),
                },
            );
            drop(entries);
            finish(shared, &id, false);
        }
        None => {
            let commit = Commit {
                watches: vec![WatchChange::Add(Box::new(watch.clone()))],
                ..Commit::default()
            };
            if let Err(e) = shared.commit(commit) {
                // Watched in memory all the same; only a restart would lose it.
                tracing::warn!(error = %e, "cannot record the watch of a verified run durably");
            }
            shared
                .outcomes
                .lock()
                .insert(id, Entry { watch, ended: None });
        }
    }
    shared.metrics.watched.set(shared.outcomes.len() as i64);
}

/// The alert with `fingerprint` resolved at `at`: its watched runs are resolved.
pub(super) fn resolved(shared: &Shared, fingerprint: &str, at: DateTime<Utc>) {
    let ids: Vec<String> = {
        let mut entries = shared.outcomes.lock();
        entries
            .iter_mut()
            .filter(|(_, e)| e.ended.is_none() && e.watch.record.trigger.fingerprint == fingerprint)
            .map(|(id, e)| {
                e.ended = Some(Ending::Resolved(at.max(e.watch.verified_at)));
                id.clone()
            })
            .collect()
    };
    for id in ids {
        finish(shared, &id, true);
    }
    shared.metrics.watched.set(shared.outcomes.len() as i64);
}

/// Every second: runs whose alert still fires at their deadline are
/// unresolved; outcomes that could not be written are tried again.
pub(super) fn tick(shared: &Arc<Shared>, now: DateTime<Utc>, tasks: &mut JoinSet<()>) {
    let ids: Vec<String> = {
        let mut entries = shared.outcomes.lock();
        entries
            .iter_mut()
            .filter_map(|(id, e)| {
                if e.ended.is_none() && e.watch.deadline <= now {
                    e.ended = Some(Ending::Unresolved);
                }
                e.ended.is_some().then(|| id.clone())
            })
            .collect()
    };
    let mut notices = Vec::new();
    for id in ids {
        if let Some(mut n) = finish(shared, &id, true) {
            n.runbook = super::notify::runbook_of(&shared.engine(), &n.playbook);
            notices.push(n);
        }
    }
    if !notices.is_empty() {
        super::notify::spawn(shared, notices, tasks);
    }
    shared.metrics.watched.set(shared.outcomes.len() as i64);
}

/// Records how the run `id` ended, with the end of its watch (`watched`:
/// the store holds one) in the same commit. Returns the escalation to send
/// for an unresolved run. A failed write keeps the entry for the next tick.
fn finish(shared: &Shared, id: &str, watched: bool) -> Option<Notice> {
    let (watch, how) = {
        let entries = shared.outcomes.lock();
        let e = entries.get(id)?;
        (e.watch.clone(), e.ended?)
    };
    let now = Utc::now();
    let mut rec = watch.record.clone();
    rec.ts = now;
    let since_start = |at: DateTime<Utc>| watch.starts_at.map(|s| at - s);
    match how {
        Ending::Resolved(at) => {
            rec.phase = Phase::Resolved;
            let ttr = since_start(at).unwrap_or(at - watch.verified_at);
            rec.duration_ms = ttr.num_milliseconds().max(0) as u64;
            rec.outcome = format!(
                "the alert resolved {} after it started firing, {} after the fix was verified",
                human(ttr),
                human(at - watch.verified_at)
            );
        }
        Ending::Unresolved => {
            rec.phase = Phase::Unresolved;
            let firing = since_start(now).unwrap_or(now - watch.verified_at);
            rec.duration_ms = firing.num_milliseconds().max(0) as u64;
            rec.outcome = format!(
                "the alert still fires {} after the fix was verified (escalateAfter): the fix did not help; counted as a failure for the circuit breaker",
                human(watch.deadline - watch.verified_at)
            );
        }
    }
    let commit = Commit {
        records: vec![rec.clone()],
        watches: if watched {
            vec![WatchChange::Remove(id.to_string())]
        } else {
            Vec::new()
        },
        ..Commit::default()
    };
    if let Err(e) = shared.commit(commit) {
        tracing::warn!(error = %e, run = %id, "cannot record the run's outcome yet; trying again");
        return None;
    }
    shared.outcomes.lock().remove(id);
    let playbook = rec.playbook.clone();
    match how {
        Ending::Resolved(_) => {
            shared
                .metrics
                .time_to_resolve
                .get_or_create(&PlaybookLabels {
                    playbook: playbook.clone(),
                })
                .observe(rec.duration_ms as f64 / 1000.0);
            shared
                .metrics
                .outcomes
                .get_or_create(&OutcomeLabels {
                    playbook,
                    outcome: "resolved",
                })
                .inc();
            tracing::info!(playbook = %rec.playbook, outcome = %rec.outcome, "resolved");
            None
        }
        Ending::Unresolved => {
            shared
                .ledger()
                .record_failure(now, &rec.policy, &rec.playbook);
            shared
                .metrics
                .outcomes
                .get_or_create(&OutcomeLabels {
                    playbook,
                    outcome: "unresolved",
                })
                .inc();
            tracing::warn!(playbook = %rec.playbook, outcome = %rec.outcome, "unresolved");
            Some(Notice {
                playbook: rec.playbook.clone(),
                runbook: None,
                alertname: rec.trigger.alertname.clone(),
                trigger: rec.trigger.kind.as_str().to_string(),
                trigger_kind: rec.trigger.kind,
                fingerprint: rec.trigger.fingerprint.clone(),
                target: if rec.target.is_empty() {
                    "-".into()
                } else {
                    crate::drivers::target_display(&rec.target)
                },
                actions: vec![rec.action.clone()],
                decision: "unresolved".into(),
                reason: "the fix was verified but the alert did not resolve".into(),
                status: "unresolved".into(),
                outcome: rec.outcome.clone(),
                node: shared.node.clone(),
                audit_id: rec.id.clone(),
                decided_at: rec.decided_at.unwrap_or(rec.ts),
                how_to_approve: None,
                approval_id: None,
                labels: rec.trigger.labels.clone(),
                evidence: rec.evidence.clone(),
            })
        }
    }
}
