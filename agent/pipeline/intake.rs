//! Intake: events accepted durably, then queued for a decision.
//!
//! A webhook's events are committed to the store's inbox (fsynced) before
//! the webhook is answered. An entry is done only when the decisions it led
//! to are recorded ([`DoneToken`]); one whose records could not be written
//! (a full disk) goes back on the queue and is decided when the store
//! writes again, and one accepted before a crash and not decided is decided
//! after the next start ([`recover`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::Shared;
use crate::event::Event;
use crate::metrics::EventLabels;
use crate::state::approvals::Pending;
use crate::state::Accepted as Journaled;

/// One event waiting for a decision.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Inbox sequence number (None for schedule ticks, which are not journaled).
    pub seq: Option<u64>,
    /// The notification it came in (one webhook body); `maxTargetsPerRun`
    /// counts executions within it.
    pub group: u64,
    /// When it was received (or the tick was due).
    pub at: DateTime<Utc>,
    /// The event.
    pub event: Event,
    /// Set when a person approved a held run: decide this playbook again
    /// with the approval stage passed.
    pub approved: Option<ApprovedRun>,
    /// Playbooks whose decisions of this event are recorded already (an
    /// event queued again after a failed write): not decided again.
    pub skip: Vec<String>,
    /// Queued again after its decision could not be recorded: it has
    /// settled already, and is cancelled if its alert resolved meanwhile.
    pub requeued: bool,
}

/// An approved run, to decide again.
#[derive(Debug, Clone)]
pub struct ApprovedRun {
    /// Approval id.
    pub id: String,
    /// Playbook to decide.
    pub playbook: String,
    /// Who approved.
    pub by: String,
}

/// What a webhook body added.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    /// Events journaled and queued.
    pub accepted: usize,
    /// Events already accepted within the dedupe window.
    pub duplicates: usize,
}

/// Why a webhook body's events were not accepted; nothing of it was kept.
#[derive(Debug)]
pub enum Refused {
    /// The queue holds `webhook.queueCapacity` events already.
    QueueFull {
        /// Events waiting.
        depth: usize,
        /// The configured capacity.
        capacity: usize,
    },
    /// The inbox could not be written.
    Storage(String),
}

/// Queues an event for settle and decide.
pub fn enqueue(shared: &Shared, inc: Incoming) -> bool {
    shared.metrics.queue_depth.inc();
    shared.queue.send(inc).is_ok()
}

/// The audit record of a contact point's test notification: nothing was
/// decided or run.
fn test_record(shared: &Shared, ev: &Event) -> crate::audit::Record {
    crate::audit::Record {
        ts: chrono::Utc::now(),
        id: uuid::Uuid::now_v7().to_string(),
        trigger: crate::audit::TriggerRef::from_event(ev).into(),
        playbook: String::new(),
        action: "test-notification".into(),
        target: Default::default(),
        params: serde_json::Value::Null,
        decision: "test".into(),
        reason: "Grafana contact point test notification (alertname=TestAlert, instance=Grafana)"
            .into(),
        dry_run: true,
        phase: crate::audit::Phase::Planned,
        outcome: "received; the webhook works; nothing is decided or run for a test".into(),
        duration_ms: 0,
        node: shared.node.clone(),
        policy: String::new(),
        step: 0,
        decided_at: None,
        evidence: Default::default(),
    }
}

/// Audits a sender's test notifications (Grafana's contact-point "Test"):
/// durable when it returns; nothing is decided or run for them.
pub fn record_tests(shared: &Shared, tests: &[Event]) -> crate::audit::Result<()> {
    use crate::engine::RecordSink;
    tests
        .iter()
        .try_for_each(|ev| shared.append(&test_record(shared, ev)))
}

/// Journals one notification's events durably and queues the new ones.
/// Returns once they are fsynced, so the caller may answer 200.
pub async fn accept(shared: &Shared, events: Vec<Event>) -> Result<Accepted, Refused> {
    let depth = shared.metrics.queue_depth.get().max(0) as usize;
    let capacity = shared.cfg.webhook.queue_capacity;
    if depth + events.len() > capacity {
        return Err(Refused::QueueFull { depth, capacity });
    }
    let result = match shared.store.accept(events, Utc::now()).await {
        Ok(r) => r,
        Err(e) => {
            shared.metrics.storage_errors.inc();
            tracing::error!(error = %e, "cannot record webhook events durably");
            return Err(Refused::Storage(e.to_string()));
        }
    };
    shared.metrics.duplicates.inc_by(result.duplicates as u64);
    let accepted = result.accepted.len();
    let group = shared.group();
    for a in result.accepted {
        shared
            .metrics
            .events
            .get_or_create(&EventLabels {
                trigger: "alert",
                status: a.event.status.as_str(),
            })
            .inc();
        enqueue(
            shared,
            Incoming {
                group,
                seq: Some(a.seq),
                at: a.at,
                event: a.event,
                approved: None,
                skip: Vec::new(),
                requeued: false,
            },
        );
    }
    Ok(Accepted {
        accepted,
        duplicates: result.duplicates,
    })
}

/// Journals alerts from a native trigger (`source`: `docker`,
/// `kubernetes`) and queues the new ones. Their episodes are exact, so
/// dedupe compares `startsAt` exactly (a delivery seen again after a
/// reconnect is still a duplicate).
pub async fn accept_native(
    shared: &Shared,
    source: &'static str,
    events: Vec<Event>,
) -> Result<Accepted, Refused> {
    let result = match shared
        .store
        .accept_with(events, Utc::now(), Some(chrono::Duration::zero()))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            shared.metrics.storage_errors.inc();
            return Err(Refused::Storage(e.to_string()));
        }
    };
    shared.metrics.duplicates.inc_by(result.duplicates as u64);
    let accepted = result.accepted.len();
    let group = shared.group();
    for a in result.accepted {
        shared
            .metrics
            .events
            .get_or_create(&EventLabels {
                trigger: source,
                status: a.event.status.as_str(),
            })
            .inc();
        enqueue(
            shared,
            Incoming {
                group,
                seq: Some(a.seq),
                at: a.at,
                event: a.event,
                approved: None,
                skip: Vec::new(),
                requeued: false,
            },
        );
    }
    Ok(Accepted {
        accepted,
        duplicates: result.duplicates,
    })
}

/// The inbox entries the previous agent accepted and did not decide (the
/// store already dropped those a record says were decided), to queue.
pub(super) fn recover(pending: Vec<Journaled>) -> Vec<Incoming> {
    let recovered: Vec<Incoming> = pending
        .into_iter()
        .map(|a| Incoming {
            // One group per recovered event: their notifications are gone.
            group: u64::MAX - a.seq,
            seq: Some(a.seq),
            at: a.at,
            event: a.event,
            approved: None,
            skip: Vec::new(),
            requeued: false,
        })
        .collect();
    if !recovered.is_empty() {
        tracing::info!(
            events = recovered.len(),
            "recovered accepted events that were not decided before the last stop"
        );
    }
    recovered
}

/// The runs approved before the last stop and not decided then, to queue
/// again (their approval is spent: nothing else would run them).
pub(super) fn recover_approved(runs: Vec<(Pending, String)>) -> Vec<Incoming> {
    runs.into_iter()
        .enumerate()
        .map(|(i, (p, by))| {
            tracing::info!(approval = %p.id, playbook = %p.playbook, by = %by, "an approved run was not decided before the last stop: deciding it now");
            Incoming {
                // One group per run: its notifications are gone.
                group: u64::MAX / 2 - i as u64,
                seq: None,
                at: Utc::now(),
                event: p.event.clone(),
                approved: Some(ApprovedRun {
                    id: p.id.clone(),
                    playbook: p.playbook.clone(),
                    by,
                }),
                skip: Vec::new(),
                requeued: false,
            }
        })
        .collect()
}

/// Held by everything that records a decision of one event (the decide
/// stage, its run tasks). When the last holder lets go, the event is done;
/// or, if a holder could not record ([`DoneToken::failed`]), the event goes
/// back on the queue to be decided again once the store writes.
pub(super) struct DoneToken {
    shared: Arc<Shared>,
    inc: Incoming,
    failed: AtomicBool,
    recorded: std::sync::Mutex<Vec<String>>,
}

impl DoneToken {
    /// The token for `inc`.
    pub(super) fn new(shared: &Arc<Shared>, inc: &Incoming) -> Self {
        Self {
            shared: shared.clone(),
            inc: inc.clone(),
            failed: AtomicBool::new(false),
            recorded: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Its inbox entry, if it has one (schedule ticks and approved runs do not).
    pub(super) fn seq(&self) -> Option<u64> {
        self.inc.seq
    }

    /// The approval whose run this is, if it is one.
    pub(super) fn approval(&self) -> Option<&str> {
        self.inc.approved.as_ref().map(|a| a.id.as_str())
    }

    /// A decision of this event could not be recorded: decide it again later.
    pub(super) fn failed(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    /// `playbook`'s decision of this event is recorded: if the event is
    /// queued again, it is not decided again.
    pub(super) fn recorded(&self, playbook: &str) {
        self.recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(playbook.to_string());
    }
}

impl Drop for DoneToken {
    fn drop(&mut self) {
        if self.failed.load(Ordering::SeqCst) {
            tracing::warn!(fingerprint = %self.inc.event.fingerprint, "a decision could not be recorded: the event is queued again and decided once the store writes");
            let mut inc = self.inc.clone();
            inc.requeued = true;
            inc.skip.extend(std::mem::take(
                &mut *self.recorded.lock().unwrap_or_else(|p| p.into_inner()),
            ));
            enqueue(&self.shared, inc);
        } else if let Some(seq) = self.inc.seq {
            self.shared.store.done(seq);
        }
    }
}
