//! Run: an executing run waits for one of the agent's slots
//! (`concurrency`), executes through the engine (plan, apply, verify,
//! audit), is observed (metrics, ledger) and handed to the notify stage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info_span, Instrument};

use super::intake::DoneToken;
use super::{notify, Shared};
use crate::audit::{self, Phase, Record};
use crate::engine::{Engine, Planned, RecordSink, RunReport};
use crate::metrics::{ActionLabels, FailureLabels};
use crate::policy::Decision;
use crate::state::{ApprovalChange, Commit};

/// Runs queued or executing per playbook (overlapping schedule ticks are
/// skipped), and when alerts resolved (a run still waiting for its slot
/// is cancelled).
#[derive(Debug, Default)]
pub(super) struct Board {
    running: Mutex<HashMap<String, usize>>,
    resolved: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Runs waiting for a slot, per alert fingerprint.
    waiting: Mutex<HashMap<String, usize>>,
}

/// How long a resolution is remembered for an alert with no run waiting
/// (covers an event queued again after a failed write).
const RESOLVED_KEPT: chrono::Duration = chrono::Duration::minutes(10);

impl Board {
    /// Whether a run of `playbook` is queued or executing.
    pub(super) fn is_running(&self, playbook: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(playbook)
            .is_some_and(|n| *n > 0)
    }

    /// The alert with `fingerprint` resolved at `at`.
    pub(super) fn resolved(&self, fingerprint: &str, at: DateTime<Utc>) {
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fingerprint.to_string(), at);
    }

    /// Forgets resolutions no waiting run can need, so the map stays as
    /// small as the work in hand.
    pub(super) fn prune(&self, now: DateTime<Utc>) {
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|fp, at| waiting.contains_key(fp) || *at > now - RESOLVED_KEPT);
    }

    fn wait(&self, fingerprint: &str, delta: isize) {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let n = w.entry(fingerprint.to_string()).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            w.remove(fingerprint);
        }
    }

    pub(super) fn resolved_since(
        &self,
        fingerprint: &str,
        since: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(fingerprint)
            .copied()
            .filter(|r| *r >= since)
    }
}

/// A decided run for the run stage. Made at decision time, so the next
/// decision already sees it (concurrency, overlapping ticks).
pub(super) struct Order {
    planned: Planned,
    /// When its event was received.
    received: DateTime<Utc>,
    /// Its event's inbox entry, done once every run of it is recorded.
    token: Arc<DoneToken>,
    guard: RunningGuard,
}

impl Order {
    /// Counts the run as running (and, if it executes, in flight for its
    /// policy's concurrency) until it ends.
    pub(super) fn new(
        shared: &Arc<Shared>,
        planned: Planned,
        received: DateTime<Utc>,
        token: Arc<DoneToken>,
    ) -> Self {
        *shared
            .board
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(planned.playbook.clone())
            .or_insert(0) += 1;
        let executes = planned.decision == Decision::Execute;
        if executes {
            shared.ledger().run_started(&planned.policy);
        }
        let guard = RunningGuard {
            shared: shared.clone(),
            playbook: planned.playbook.clone(),
            policy: executes.then(|| planned.policy.clone()),
        };
        Self {
            planned,
            received,
            token,
            guard,
        }
    }
}

impl Order {
    /// Takes its execution out of the ledger (its decision was not recorded).
    pub(super) fn uncharge(&self, ledger: &mut crate::policy::Ledger) {
        self.planned.uncharge(ledger);
    }
}

/// Where a run's records go: committed one by one to the store, the first
/// marking its event decided. A `planned` record that cannot be written
/// stops the step before it starts; a later one (an outcome) is kept and
/// written as soon as the store writes again, so none is lost.
struct RunSink {
    shared: Arc<Shared>,
    token: Arc<DoneToken>,
    playbook: String,
    wrote: AtomicBool,
    backlog: Mutex<Vec<Record>>,
}

impl RecordSink for RunSink {
    fn append(&self, rec: &Record) -> audit::Result<()> {
        let mut backlog = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        backlog.push(rec.clone());
        match self.commit(&mut backlog) {
            Ok(()) => Ok(()),
            Err(e) if rec.phase == Phase::Planned => {
                // Not durable: the step does not start.
                backlog.pop();
                Err(audit::Error::Io {
                    path: self.shared.cfg.audit_path(),
                    source: std::io::Error::other(e),
                })
            }
            Err(_) => Ok(()),
        }
    }
}

impl RunSink {
    fn commit(&self, backlog: &mut Vec<Record>) -> Result<(), String> {
        let first = !self.wrote.load(Ordering::SeqCst);
        let c = Commit {
            records: backlog.clone(),
            decided: if first {
                self.token.seq().into_iter().collect()
            } else {
                Vec::new()
            },
            // An approved run's first record: it is not queued again at start.
            approvals: match (first, self.token.approval()) {
                (true, Some(id)) => vec![ApprovalChange::Ran(id.to_string())],
                _ => Vec::new(),
            },
            ..Commit::default()
        };
        self.shared.commit(c).map_err(|e| e.to_string())?;
        backlog.clear();
        if first {
            self.wrote.store(true, Ordering::SeqCst);
            self.token.recorded(&self.playbook);
        }
        Ok(())
    }

    /// Writes what is left, retrying while the store fails (or until shutdown).
    async fn flush(&self) {
        loop {
            {
                let mut backlog = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
                if backlog.is_empty() || self.commit(&mut backlog).is_ok() {
                    return;
                }
            }
            if self.shared.stopping.load(Ordering::SeqCst) {
                tracing::error!(playbook = %self.playbook, "stopping with a run's outcome not recorded: its step is recorded as interrupted at the next start");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}

/// Counts a run as waiting for a slot until dropped.
struct Waiting {
    shared: Arc<Shared>,
    fingerprint: String,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.shared.board.wait(&self.fingerprint, -1);
    }
}

/// Marks a playbook as running for as long as it lives.
struct RunningGuard {
    shared: Arc<Shared>,
    playbook: String,
    /// Set for executing runs: the policy whose concurrency they count against.
    policy: Option<String>,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if let Some(p) = &self.policy {
            self.shared.ledger().run_finished(p);
        }
        let mut m = self
            .shared
            .board
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.playbook) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.playbook);
            }
        }
    }
}

/// Starts a run task: it waits for a slot, executes and notifies.
pub(super) fn start(
    shared: &Arc<Shared>,
    engine: &Arc<Engine>,
    order: Order,
    slots: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
) {
    let Order {
        mut planned,
        received,
        token,
        guard,
    } = order;
    let shared = shared.clone();
    let engine = engine.clone();
    let slots = slots.clone();
    let span = info_span!("run", playbook = %planned.playbook, target_ref = %planned.target_display(), fingerprint = %planned.trigger.fingerprint);
    shared.board.wait(&planned.trigger.fingerprint, 1);
    let waiting = Waiting {
        shared: shared.clone(),
        fingerprint: planned.trigger.fingerprint.clone(),
    };
    tasks.spawn(
        async move {
            let slot = slots.acquire_owned().await;
            drop(waiting);
            let Ok(slot) = slot else {
                return;
            };
            // A resolved alert cancels a run that is still waiting for its turn.
            if let Some(r) = shared
                .board
                .resolved_since(&planned.trigger.fingerprint, received)
            {
                planned.decision = Decision::Suppressed(format!(
                    "cancelled: the alert resolved at {} while the run waited for a concurrency slot",
                    r.format("%Y-%m-%dT%H:%M:%SZ")
                ));
            }
            let undo = planned.clone();
            let sink = RunSink {
                shared: shared.clone(),
                token: token.clone(),
                playbook: planned.playbook.clone(),
                wrote: AtomicBool::new(false),
                backlog: Mutex::new(Vec::new()),
            };
            shared.metrics.in_flight.inc();
            let silence = super::silence::begin(&shared, &engine, &planned).await;
            let rep = engine.execute_shared(planned, &sink).await;
            super::silence::end(&shared, silence).await;
            shared.metrics.in_flight.dec();
            drop(slot);
            sink.flush().await;
            match rep {
                Ok(rep) => {
                    drop(guard);
                    observe(&shared, &rep);
                    super::outcome::after_run(&shared, &engine, &rep, received);
                    notify::after_run(&shared, &engine, &rep).await;
                }
                Err(e) if !sink.wrote.load(Ordering::SeqCst) => {
                    // Nothing of it is recorded: it did not happen; decide it again later.
                    undo.uncharge(&mut shared.ledger());
                    drop(guard);
                    token.failed();
                    tracing::error!(error = %e, "cannot record the run; nothing was changed, the event is decided again once the store writes");
                }
                Err(e) => {
                    drop(guard);
                    tracing::error!(error = %e, "cannot record the next step; the run stopped before changing anything further");
                }
            }
        }
        .instrument(span),
    );
}

/// Metrics of a finished run, and its outcome in the ledger (the breaker).
fn observe(shared: &Shared, rep: &RunReport) {
    for r in &rep.records {
        if matches!(r.phase, Phase::Verified | Phase::Failed) && !r.action.is_empty() {
            shared
                .metrics
                .action_duration
                .get_or_create(&ActionLabels {
                    action: r.action.clone(),
                })
                .observe(r.duration_ms as f64 / 1000.0);
        }
    }
    if rep.failed_at.is_some() {
        let failed = rep
            .records
            .iter()
            .rev()
            .find(|r| r.phase == Phase::Failed)
            .map(|r| r.action.clone())
            .unwrap_or_default();
        shared
            .metrics
            .failures
            .get_or_create(&FailureLabels {
                playbook: rep.planned.playbook.clone(),
                action: failed,
            })
            .inc();
    }
    rep.enter(&mut shared.ledger());
}
