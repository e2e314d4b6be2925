//! The dispatcher: the one loop that moves queued events through settle →
//! decide → run, in event order, and stops them on shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use super::intake::Incoming;
use super::settle::{Cancelled, Settler};
use super::{approvals, decide, exporters, outcome, Shared};
use crate::event::{Status, TriggerKind};

/// Runs until `shutdown` flips or the queue closes; then gives running
/// actions the shutdown grace and interrupts what is left. Events still
/// settling or queued stay in the inbox (not done) and are decided after
/// the next start.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut queue: mpsc::UnboundedReceiver<Incoming>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Run tasks and notices: waited for (within the grace) on shutdown.
    let mut tasks: JoinSet<()> = JoinSet::new();
    let slots = Arc::new(Semaphore::new(shared.cfg.concurrency));
    let mut settler = Settler::new(shared.cfg.webhook.settle.std());
    let mut buf = Vec::with_capacity(1024);
    // While the store cannot write, nothing new is decided: events wait here.
    let mut held: Vec<Incoming> = Vec::new();
    let mut held_cancelled: Vec<Cancelled> = Vec::new();
    let mut expiry = tokio::time::interval(std::time::Duration::from_secs(1));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next_due = settler.next_due();
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            n = queue.recv_many(&mut buf, 1024) => {
                if n == 0 { break; }
                let sorted = settler.sort(buf.drain(..));
                if let Err(back) = decide::cancelled(&shared, sorted.cancelled) {
                    held_cancelled.extend(back);
                }
                // A resolved alert also cancels what waits on it elsewhere.
                for inc in &sorted.ready {
                    if inc.event.status == Status::Resolved && inc.event.trigger == TriggerKind::Alert {
                        approvals::cancel_for(&shared, inc);
                        shared.board.resolved(&inc.event.fingerprint, inc.at);
                        outcome::resolved(&shared, &inc.event.fingerprint, inc.at);
                    }
                }
                decide_or_hold(&shared, sorted.ready, &mut held, &slots, &mut tasks);
            }
            _ = async { tokio::time::sleep_until(next_due.unwrap_or_else(tokio::time::Instant::now)).await }, if next_due.is_some() => {
                let due = settler.take_due(tokio::time::Instant::now());
                decide_or_hold(&shared, due, &mut held, &slots, &mut tasks);
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = expiry.tick() => {
                shared.storage_metrics();
                shared.board.prune(chrono::Utc::now());
                if !shared.store.health().failing() {
                    if !held_cancelled.is_empty() {
                        if let Err(back) = decide::cancelled(&shared, std::mem::take(&mut held_cancelled)) {
                            held_cancelled = back;
                        }
                    }
                    decide_or_hold(&shared, Vec::new(), &mut held, &slots, &mut tasks);
                }
                approvals::expire(&shared);
                outcome::tick(&shared, chrono::Utc::now(), &mut tasks);
                exporters::breakers(&shared);
            }
        }
    }
    shared.stopping.store(true, Ordering::SeqCst);
    let left = tasks.len();
    if left > 0 {
        tracing::info!(runs = left, grace = %shared.cfg.shutdown_grace, "waiting for running actions");
    }
    let grace = shared.cfg.shutdown_grace.std();
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            runs = tasks.len(),
            "shutdown grace over: interrupting running actions"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    // Events never decided keep their inbox entry; forget nothing else.
    drop(settler);
}

/// Decides `ready` unless the store is failing: then they wait in `held`
/// (in order) and are decided once it writes again.
fn decide_or_hold(
    shared: &Arc<Shared>,
    ready: Vec<Incoming>,
    held: &mut Vec<Incoming>,
    slots: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
) {
    if ready.is_empty() && held.is_empty() {
        return;
    }
    if shared.store.health().failing() {
        if held.is_empty() {
            tracing::warn!(
                events = ready.len(),
                "the state store cannot write: decisions wait until it can"
            );
        }
        held.extend(ready);
        return;
    }
    // What waited goes first: event order holds.
    let mut all = std::mem::take(held);
    all.extend(ready);
    decide::batch(shared, all, slots, tasks);
}
