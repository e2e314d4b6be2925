//! Schedule: playbooks' cron triggers as ticks onto the queue, jittered,
//! with the ticks missed while the agent was down caught up at start.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::intake::{self, Incoming};
use super::Shared;
use crate::metrics::EventLabels;
use crate::trigger::schedule::{self, ScheduleTrigger};

/// The tick tasks of the playbooks now loaded (restarted on reload).
pub struct Scheduler {
    tasks: JoinSet<()>,
    tz: Tz,
}

impl Scheduler {
    /// A scheduler in the configured time zone, with no tasks yet.
    pub(super) fn new(shared: &Shared) -> Self {
        Self {
            tasks: JoinSet::new(),
            tz: shared.cfg.schedule.timezone.parse().unwrap_or(Tz::UTC),
        }
    }

    /// Queues the ticks missed since each playbook last ran (within the
    /// catch-up window).
    pub(super) fn catch_up(&self, shared: &Arc<Shared>, last_run: &HashMap<String, DateTime<Utc>>) {
        let engine = shared.engine();
        let c = &shared.cfg.schedule;
        let now = Utc::now();
        for t in schedule::triggers(&engine.config, &shared.node) {
            let missed = schedule::missed(
                &t.schedule,
                self.tz,
                last_run.get(&t.playbook).copied(),
                now,
                c.catch_up_window.chrono(),
                c.catch_up,
            );
            for due in missed {
                tracing::info!(playbook = %t.playbook, schedule = %t.expr, %due, "catching up a tick missed while the agent was down");
                tick(shared, &t, due);
            }
        }
    }

    /// (Re)starts one tick task per schedule trigger of the loaded playbooks.
    pub(super) fn start(&mut self, shared: &Arc<Shared>, shutdown: watch::Receiver<bool>) {
        self.tasks.abort_all();
        let engine = shared.engine();
        for t in schedule::triggers(&engine.config, &shared.node) {
            let shared = shared.clone();
            let tz = self.tz;
            let mut shutdown = shutdown.clone();
            let jitter = shared.cfg.schedule.jitter.std();
            self.tasks.spawn(async move {
                tick_loop(shared, t, tz, jitter, &mut shutdown).await;
            });
        }
    }
}

/// Queues one tick; false once the pipeline has stopped.
fn tick(shared: &Shared, t: &ScheduleTrigger, due: DateTime<Utc>) -> bool {
    shared
        .metrics
        .events
        .get_or_create(&EventLabels {
            trigger: "schedule",
            status: "firing",
        })
        .inc();
    intake::enqueue(
        shared,
        Incoming {
            group: shared.group(),
            seq: None,
            at: due,
            event: t.event(due),
            approved: None,
            skip: Vec::new(),
            requeued: false,
        },
    )
}

async fn tick_loop(
    shared: Arc<Shared>,
    t: ScheduleTrigger,
    tz: Tz,
    jitter: std::time::Duration,
    shutdown: &mut watch::Receiver<bool>,
) {
    let mut after = Utc::now();
    let mut extra = schedule::jitter(jitter);
    loop {
        let Some(due) = schedule::next_after(&t.schedule, tz, after) else {
            tracing::warn!(playbook = %t.playbook, schedule = %t.expr, "schedule has no further ticks");
            return;
        };
        let wait = (due - Utc::now()).to_std().unwrap_or_default() + extra;
        extra = std::time::Duration::ZERO;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        tracing::info!(playbook = %t.playbook, schedule = %t.expr, %due, "schedule tick");
        if !tick(&shared, &t, due) {
            return;
        }
        after = due;
    }
}
