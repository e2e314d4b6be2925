//! Decide: the engine's match → plan → gate for each ready event, against
//! the ledger, in event order. The records of decisions that change nothing
//! are committed in one batch (one fsync) with the approval requests and
//! the events done; then the runs that change something (or dry-run through
//! a driver) go to the run stage and the notices to the notify stage.

use std::sync::{Arc, Mutex};

use chrono::Utc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::info_span;

use super::intake::{DoneToken, Incoming};
use super::settle::Cancelled;
use super::{approvals, notify, run, Shared};
use crate::audit::{self, Record};
use crate::engine::{Planned, RecordSink};
use crate::event::{Status, TriggerKind};
use crate::metrics::DecisionLabels;
use crate::policy::Decision;
use crate::state::{ApprovalChange, Commit};

/// Collects the records of decisions that change nothing, committed in one
/// transaction with the batch's approval requests and finished events.
#[derive(Default)]
struct Batch(Mutex<Vec<Record>>);

impl RecordSink for Batch {
    fn append(&self, rec: &Record) -> audit::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rec.clone());
        Ok(())
    }
}

impl Batch {
    fn records(self) -> Vec<Record> {
        self.0.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

/// Polls a future that completes without waiting (the engine's record-only
/// path never awaits I/O); anything else is a bug, reported as an error.
fn futures_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => {
            tracing::error!("record-only run did not complete synchronously");
            None
        }
    }
}

fn count_decision(shared: &Shared, p: &Planned) {
    shared
        .metrics
        .decisions
        .get_or_create(&DecisionLabels {
            playbook: p.playbook.clone(),
            action: p
                .steps
                .first()
                .map(|s| s.action.to_string())
                .unwrap_or_default(),
            decision: p.decision.as_str(),
        })
        .inc();
}

/// Records the runs a resolved alert cancelled while they settled, as
/// `suppressed` with the reason, with their inbox entries done. If that
/// cannot be written, they are handed back, to record again later.
pub(super) fn cancelled(
    shared: &Arc<Shared>,
    cancelled: Vec<Cancelled>,
) -> Result<(), Vec<Cancelled>> {
    if cancelled.is_empty() {
        return Ok(());
    }
    let engine = shared.engine();
    let now = Utc::now();
    let batch = Batch::default();
    let mut planned = Vec::new();
    for c in &cancelled {
        for p in engine.suppress(&c.inc.event, &c.reason, now) {
            planned.push(p.clone());
            // Records only: a suppressed run never reaches a driver.
            let _ = futures_now(engine.execute_shared(p, &batch));
        }
    }
    let commit = Commit {
        records: batch.records(),
        done: cancelled.iter().filter_map(|c| c.inc.seq).collect(),
        ..Commit::default()
    };
    if shared.commit(commit).is_err() {
        return Err(cancelled);
    }
    for p in &planned {
        count_decision(shared, p);
    }
    for _ in &cancelled {
        shared.metrics.queue_depth.dec();
    }
    Ok(())
}

/// A run a pause covers is suppressed with the pause's reason (and the
/// execution it charged to the limits taken back).
fn paused(shared: &Shared, p: &mut Planned, now: chrono::DateTime<Utc>) {
    if matches!(p.decision, Decision::Suppressed(_)) {
        return;
    }
    let Some(pause) = super::pauses::covering(shared, &p.playbook, &p.target_display(), now) else {
        return;
    };
    if p.charged {
        p.uncharge(&mut shared.ledger());
        p.charged = false;
    }
    p.decision = Decision::Suppressed(pause.suppression());
}

/// What a batch's decisions of one event left to record.
struct Decided {
    token: Arc<DoneToken>,
    /// Playbooks whose decisions are among the batch's records.
    recorded: Vec<String>,
}

/// Decides a batch of ready events. The batch is all or nothing: its
/// records, approval requests and finished events commit in one
/// transaction, and only then do its runs start and its notices go out. If
/// the commit fails (a full disk), the executions it entered in the ledger
/// are taken back, no run starts, and every event is queued again.
pub(super) fn batch(
    shared: &Arc<Shared>,
    incs: Vec<Incoming>,
    slots: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
) {
    if incs.is_empty() {
        return;
    }
    let engine = shared.engine();
    let batch = Batch::default();
    let mut events: Vec<Decided> = Vec::with_capacity(incs.len());
    let mut orders = Vec::new();
    let mut charged = Vec::new();
    let mut requests = Vec::new();
    let mut quiet_notices = Vec::new();
    let mut followups = Vec::new();
    for inc in incs {
        shared.metrics.queue_depth.dec();
        let span = info_span!(
            "event",
            trigger = inc.event.trigger.as_str(),
            status = inc.event.status.as_str(),
            fingerprint = %inc.event.fingerprint,
            alertname = inc.event.alertname().unwrap_or(""),
            playbook = inc.event.playbook.as_deref().unwrap_or(""),
        );
        let _g = span.enter();
        let now = Utc::now();
        let token = Arc::new(DoneToken::new(shared, &inc));
        let planned = match (&inc.approved, &inc.event.trigger, &inc.event.playbook) {
            (Some(a), _, _) => {
                let mut ledger = shared.ledger();
                ledger.begin_group(inc.group);
                let p = engine.decide_approved(&inc.event, &a.playbook, shared.cfg.dry_run, now, &mut ledger);
                if p.is_none() {
                    tracing::warn!(approval = %a.id, playbook = %a.playbook, "approved playbook is no longer loaded; nothing done");
                }
                p.into_iter().collect()
            }
            (None, TriggerKind::Alert, _) if inc.requeued && inc.event.status == Status::Firing
                && shared.board.resolved_since(&inc.event.fingerprint, inc.at).is_some() => engine.suppress(
                &inc.event,
                "cancelled: the alert resolved while its decision waited for the state store to write again",
                now,
            ),
            (None, TriggerKind::Schedule, Some(pb)) if shared.board.is_running(pb) => engine.suppress(
                &inc.event,
                "skipped: the previous run of this playbook is still in progress (overlapping schedule tick)",
                now,
            ),
            _ => {
                let mut ledger = shared.ledger();
                ledger.begin_group(inc.group);
                engine.decide_except(&inc.event, &inc.skip, shared.cfg.dry_run, now, &mut ledger)
            }
        };
        if planned.is_empty() {
            tracing::debug!("no playbook matches");
        }
        let mut planned = planned;
        for p in &mut planned {
            paused(shared, p, now);
        }
        let mut recorded = Vec::new();
        for p in planned {
            count_decision(shared, &p);
            tracing::info!(playbook = %p.playbook, target_ref = %p.target_display(), decision = p.decision.as_str(), reason = p.decision.reason(), "decided");
            let needs_driver = match p.decision {
                Decision::Execute => true,
                Decision::DryRun(_) => p
                    .steps
                    .iter()
                    .any(|s| engine.registry.get(s.action).is_some()),
                _ => false,
            };
            if needs_driver {
                orders.push(run::Order::new(shared, p, inc.at, token.clone()));
                continue;
            }
            let fp = p.trigger.fingerprint.clone();
            let runbook = notify::runbook_of(&engine, &p.playbook);
            if p.charged {
                charged.push(p.clone());
            }
            recorded.push(p.playbook.clone());
            let hold = match p.decision {
                Decision::NeedsApproval(_) => {
                    approvals::prepare(shared, &engine, &p, &inc.event, now).map(|(req, how)| {
                        let id = req.id.clone();
                        requests.push(req);
                        (how, id)
                    })
                }
                _ => None,
            };
            if let Some(Ok(rep)) = futures_now(engine.execute_shared(p, &batch)) {
                followups.extend(notify::take_followup(shared, &rep));
                if notify::wants(shared, &rep) {
                    let mut n = notify::notice(shared, &rep, runbook);
                    if let Some((how, id)) = hold {
                        n.how_to_approve = Some(how);
                        n.approval_id = Some(id);
                    }
                    quiet_notices.push(n);
                }
            } else {
                tracing::error!(fingerprint = %fp, "could not record a decision");
            }
        }
        events.push(Decided { token, recorded });
    }
    let records = batch.records();
    let mut commit = Commit {
        approvals: requests
            .iter()
            .cloned()
            .map(|p| ApprovalChange::Request(Box::new(p)))
            .collect(),
        ..Commit::default()
    };
    for e in &events {
        // An approved run decided here, or recorded by this batch: it is
        // not queued again at start (its runs still going mark it too).
        if let Some(id) = e.token.approval() {
            if Arc::strong_count(&e.token) == 1 || !e.recorded.is_empty() {
                commit.approvals.push(ApprovalChange::Ran(id.to_string()));
            }
        }
        let Some(seq) = e.token.seq() else { continue };
        // An event no run holds is done with this batch; one whose runs go
        // on is decided (never decided again) once a record of it is written.
        if Arc::strong_count(&e.token) == 1 {
            commit.done.push(seq);
        } else if !e.recorded.is_empty() {
            commit.decided.push(seq);
        }
    }
    let nothing_to_write =
        records.is_empty() && commit.approvals.is_empty() && commit.done.is_empty();
    commit.records = records;
    if !nothing_to_write && shared.commit(commit).is_err() {
        let mut ledger = shared.ledger();
        for p in &charged {
            p.uncharge(&mut ledger);
        }
        for o in &orders {
            o.uncharge(&mut ledger);
        }
        drop(ledger);
        drop(orders);
        for e in &events {
            e.token.failed();
        }
        return;
    }
    for p in requests {
        approvals::requested(shared, p);
    }
    for e in &events {
        for pb in &e.recorded {
            e.token.recorded(pb);
        }
    }
    for order in orders {
        run::start(shared, &engine, order, slots, tasks);
    }
    // The records are durable: the inbox may forget the events no run holds.
    drop(events);
    notify::spawn(shared, quiet_notices, tasks);
    for (f, text) in followups {
        let shared = shared.clone();
        tasks.spawn(async move { notify::post_followup(&shared, f, text).await });
    }
}
