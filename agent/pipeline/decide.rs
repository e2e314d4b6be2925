//! Decide: the engine's match → plan → gate for each ready event, against
//! the ledger, in event order. Runs that change something (or dry-run
//! through a driver) go to the run stage; the records of every other
//! decision are written in one batch (one fsync), after which the inbox
//! may forget the events and their notices go to the notify stage.

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
use crate::event::TriggerKind;
use crate::metrics::DecisionLabels;
use crate::policy::Decision;

/// Collects records of decisions that change nothing, written in one batch.
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
    /// Writes what was collected (one fsync).
    fn write(self, shared: &Shared) {
        let recs = self.0.into_inner().unwrap_or_else(|p| p.into_inner());
        shared.audit_batch(&recs);
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
/// `suppressed` with the reason; then their inbox entries are done.
pub(super) fn cancelled(shared: &Shared, cancelled: Vec<Cancelled>) {
    if cancelled.is_empty() {
        return;
    }
    let engine = shared.engine();
    let now = Utc::now();
    let batch = Batch::default();
    let mut tokens = Vec::with_capacity(cancelled.len());
    for c in cancelled {
        shared.metrics.queue_depth.dec();
        for p in engine.suppress(&c.inc.event, &c.reason, now) {
            count_decision(shared, &p);
            // Records only: a suppressed run never reaches a driver.
            let _ = futures_now(engine.execute_shared(p, &batch));
        }
        tokens.push(DoneToken::new(shared, &c.inc));
    }
    batch.write(shared);
    drop(tokens);
}

/// Decides a batch of ready events.
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
    let mut tokens = Vec::with_capacity(incs.len());
    let mut quiet_notices = Vec::new();
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
            (None, TriggerKind::Schedule, Some(pb)) if shared.board.is_running(pb) => engine.suppress(
                &inc.event,
                "skipped: the previous run of this playbook is still in progress (overlapping schedule tick)",
                now,
            ),
            _ => {
                let mut ledger = shared.ledger();
                ledger.begin_group(inc.group);
                engine.decide(&inc.event, shared.cfg.dry_run, now, &mut ledger)
            }
        };
        if planned.is_empty() {
            tracing::debug!("no playbook matches");
        }
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
                let order = run::Order::new(shared, p, inc.at, token.clone());
                run::start(shared, &engine, order, slots, tasks);
            } else {
                let fp = p.trigger.fingerprint.clone();
                let runbook = notify::runbook_of(&engine, &p.playbook);
                let hold = matches!(p.decision, Decision::NeedsApproval(_))
                    .then(|| approvals::request(shared, &engine, &p, &inc.event, now));
                if let Some(Ok(rep)) = futures_now(engine.execute_shared(p, &batch)) {
                    if notify::wants(shared, &rep) {
                        let mut n = notify::notice(shared, &rep, runbook);
                        n.how_to_approve = hold.flatten();
                        quiet_notices.push(n);
                    }
                } else {
                    tracing::error!(fingerprint = %fp, "could not record a decision");
                }
            }
        }
        tokens.push(token);
    }
    batch.write(shared);
    // Only now, with the records durable, may the inbox forget the events.
    drop(tokens);
    notify::spawn(shared, quiet_notices, tasks);
}
