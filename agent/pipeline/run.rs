//! Run: an executing run waits for one of the agent's slots
//! (`concurrency`), executes through the engine (plan, apply, verify,
//! audit), is observed (metrics, ledger) and handed to the notify stage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info_span, Instrument};

use super::intake::DoneToken;
use super::{notify, Shared};
use crate::audit::Phase;
use crate::engine::{Engine, Planned, RunReport};
use crate::metrics::{ActionLabels, FailureLabels};
use crate::policy::Decision;

/// Runs queued or executing per playbook (overlapping schedule ticks are
/// skipped), and when alerts resolved (a run still waiting for its slot
/// is cancelled).
#[derive(Debug, Default)]
pub(super) struct Board {
    running: Mutex<HashMap<String, usize>>,
    resolved: Mutex<HashMap<String, DateTime<Utc>>>,
}

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

    fn resolved_since(&self, fingerprint: &str, since: DateTime<Utc>) -> Option<DateTime<Utc>> {
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
    tasks.spawn(
        async move {
            let _token = token;
            let Ok(slot) = slots.acquire_owned().await else {
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
            shared.metrics.in_flight.inc();
            let rep = engine.execute_shared(planned, &*shared).await;
            shared.metrics.in_flight.dec();
            drop(slot);
            drop(guard);
            match rep {
                Ok(rep) => {
                    observe(&shared, &rep);
                    notify::after_run(&shared, &engine, &rep).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit write failed; the run stopped before changing anything further");
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
