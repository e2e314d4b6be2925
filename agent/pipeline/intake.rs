//! Intake: events accepted durably, then queued for a decision.
//!
//! A webhook's events are journaled in the inbox (fsynced) before the
//! webhook is answered. An entry is marked done only when the decision it
//! led to is recorded ([`DoneToken`]), so an event accepted before a crash
//! and not decided is decided after the next start ([`recover`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::Shared;
use crate::audit::Record;
use crate::event::{Event, Status};
use crate::metrics::EventLabels;
use crate::state::inbox::{self, Inbox};

/// One event waiting for a decision.
#[derive(Debug)]
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

/// Journals one notification's events durably and queues the new ones.
/// Returns once they are fsynced, so the caller may answer 200.
pub async fn accept(shared: &Shared, events: Vec<Event>) -> Result<Accepted, Refused> {
    let depth = shared.metrics.queue_depth.get().max(0) as usize;
    let capacity = shared.cfg.webhook.queue_capacity;
    if depth + events.len() > capacity {
        return Err(Refused::QueueFull { depth, capacity });
    }
    let result = match shared.inbox.accept(events, Utc::now()).await {
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
            },
        );
    }
    Ok(Accepted {
        accepted,
        duplicates: result.duplicates,
    })
}

/// The inbox entries the previous agent accepted and did not decide. The
/// audit is the source of truth: an event whose decision is recorded was
/// handled even if its `done` mark was lost in a crash.
pub(super) fn recover(
    inbox: &Inbox,
    pending: Vec<inbox::Accepted>,
    history: &[Record],
) -> Vec<Incoming> {
    let mut decided: HashMap<(&str, Status), DateTime<Utc>> = HashMap::new();
    for r in history {
        let e = decided
            .entry((r.trigger.fingerprint.as_str(), r.trigger.status))
            .or_insert(r.ts);
        *e = (*e).max(r.ts);
    }
    let mut recovered = Vec::new();
    for a in pending {
        let key = (a.event.fingerprint.as_str(), a.event.status);
        if decided.get(&key).is_some_and(|ts| *ts >= a.at) {
            inbox.done(a.seq);
            continue;
        }
        recovered.push(Incoming {
            // One group per recovered event: their notifications are gone.
            group: u64::MAX - a.seq,
            seq: Some(a.seq),
            at: a.at,
            event: a.event,
            approved: None,
        });
    }
    if !recovered.is_empty() {
        tracing::info!(
            events = recovered.len(),
            "recovered accepted events that were not decided before the last stop"
        );
    }
    recovered
}

/// Marks an inbox entry done when the last holder (the dispatcher, run
/// tasks) lets go of it, which is after its records are durable.
pub(super) struct DoneToken {
    seq: Option<u64>,
    inbox: Inbox,
}

impl DoneToken {
    /// The token for `inc`'s inbox entry (none for schedule ticks).
    pub(super) fn new(shared: &Shared, inc: &Incoming) -> Self {
        Self {
            seq: inc.seq,
            inbox: shared.inbox.clone(),
        }
    }
}

impl Drop for DoneToken {
    fn drop(&mut self) {
        if let Some(seq) = self.seq {
            self.inbox.done(seq);
        }
    }
}
