//! Settle: a firing alert waits `webhook.settle` before it is decided, so
//! an alert that resolves at once (a flap) starts nothing; its resolved
//! notification cancels the firing deliveries still waiting.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use tokio::time::Instant;

use super::intake::Incoming;
use crate::event::{Status, TriggerKind};

/// What settle hands to decide.
#[derive(Debug, Default)]
pub struct Sorted {
    /// Events to decide now, in arrival order.
    pub ready: Vec<Incoming>,
    /// Firing deliveries a resolved alert cancelled before the agent acted.
    pub cancelled: Vec<Cancelled>,
}

/// A firing delivery cancelled while it settled.
#[derive(Debug)]
pub struct Cancelled {
    /// The firing event.
    pub inc: Incoming,
    /// Why, for the audit: when the alert resolved.
    pub reason: String,
}

/// Firing alerts waiting out the settle period.
#[derive(Debug)]
pub struct Settler {
    settle: std::time::Duration,
    /// Min-heap on due time; entries carry a key into `held`.
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    held: HashMap<u64, Incoming>,
    next_id: u64,
}

impl Settler {
    /// A settler holding firing alerts for `settle` (zero: none is held).
    pub fn new(settle: std::time::Duration) -> Self {
        Self {
            settle,
            heap: BinaryHeap::new(),
            held: HashMap::new(),
            next_id: 0,
        }
    }

    /// Sorts newly queued events: firing alerts are held, a resolved alert
    /// cancels its held firing deliveries and is ready at once, anything
    /// else (schedule ticks, manual and approved runs, events queued again
    /// after a failed write, which settled before) is ready at once.
    pub fn sort(&mut self, batch: impl IntoIterator<Item = Incoming>) -> Sorted {
        let mut out = Sorted::default();
        for inc in batch {
            let alert = inc.event.trigger == TriggerKind::Alert;
            if alert && inc.event.status == Status::Resolved {
                self.cancel(&inc, &mut out.cancelled);
                out.ready.push(inc);
            } else if alert && !self.settle.is_zero() && !inc.requeued {
                let due = Instant::now() + self.settle;
                self.heap.push(Reverse((due, self.next_id)));
                self.held.insert(self.next_id, inc);
                self.next_id += 1;
            } else {
                out.ready.push(inc);
            }
        }
        out
    }

    fn cancel(&mut self, resolved: &Incoming, out: &mut Vec<Cancelled>) {
        let fp = &resolved.event.fingerprint;
        let mut ids: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, i)| i.event.fingerprint == *fp && i.event.status == Status::Firing)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        let reason = format!(
            "cancelled: the alert resolved at {} before the agent acted (settle {})",
            resolved.at.format("%Y-%m-%dT%H:%M:%SZ"),
            humantime::format_duration(self.settle)
        );
        for id in ids {
            if let Some(inc) = self.held.remove(&id) {
                out.push(Cancelled {
                    inc,
                    reason: reason.clone(),
                });
            }
        }
    }

    /// When the next held alert is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// The held alerts due at `now`, oldest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<Incoming> {
        let mut due = Vec::new();
        while let Some(Reverse((t, id))) = self.heap.peek().copied() {
            if t > now {
                break;
            }
            self.heap.pop();
            // Cancelled ones left their heap entry behind.
            if let Some(inc) = self.held.remove(&id) {
                due.push(inc);
            }
        }
        due
    }
}
