//! The circuit breaker: opens after repeated failures, half-opens for one
//! trial run, closes on a verified trial.

use chrono::{DateTime, Utc};

use super::decision::Decision;
use super::gate::{GateInput, Stage};
use super::ledger::Ledger;

pub(super) struct Breaker {
    pub(super) policy: String,
    pub(super) failures: u32,
    pub(super) within: chrono::Duration,
    pub(super) open_for: chrono::Duration,
}
impl Stage for Breaker {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        let state = i.ledger.breaker_state(
            &self.policy,
            i.playbook,
            self.failures,
            self.within,
            self.open_for,
            i.now,
        );
        match state {
            BreakerState::Closed => None,
            BreakerState::Open { opened, reopened } => Some(Decision::Suppressed(format!(
                "circuit open: {} (opened {}, half-opens at {})",
                if reopened {
                    "the half-open trial run failed".to_string()
                } else {
                    format!(
                        "{} failures of {} within {}",
                        self.failures,
                        i.playbook,
                        humantime::format_duration(self.within.to_std().unwrap_or_default())
                    )
                },
                opened.format("%Y-%m-%dT%H:%M:%SZ"),
                (opened + self.open_for).format("%Y-%m-%dT%H:%M:%SZ")
            ))),
            BreakerState::HalfOpenTrial { started } => Some(Decision::Suppressed(format!(
                "circuit half-open: one trial run of {} in flight since {} (allows again once it succeeds)",
                i.playbook,
                started.format("%Y-%m-%dT%H:%M:%SZ")
            ))),
        }
    }
}

/// Where a playbook's circuit breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Runs are allowed (after an opening, the next run is the trial).
    Closed,
    /// No runs until `opened + openFor`.
    Open {
        /// When it opened.
        opened: DateTime<Utc>,
        /// True when a failed half-open trial reopened it.
        reopened: bool,
    },
    /// Half-open: the one trial run has started and has no outcome yet.
    HalfOpenTrial {
        /// When the trial started.
        started: DateTime<Utc>,
    },
}

impl Ledger {
    /// When the breaker for `playbook` opened, if it is open at `now`.
    pub fn breaker_opened_at(
        &self,
        policy: &str,
        playbook: &str,
        failures: u32,
        within: chrono::Duration,
        open_for: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        match self.breaker_state(policy, playbook, failures, within, open_for, now) {
            BreakerState::Open { opened, .. } => Some(opened),
            _ => None,
        }
    }

    /// The breaker's state at `now`. It opens when `failures` runs failed
    /// within `within`; after `open_for` it half-opens: the next run is a
    /// trial, no other run starts while the trial has no outcome, a failed
    /// trial reopens it and a verified one closes it.
    pub fn breaker_state(
        &self,
        policy: &str,
        playbook: &str,
        failures: u32,
        within: chrono::Duration,
        open_for: chrono::Duration,
        now: DateTime<Utc>,
    ) -> BreakerState {
        let Some(pb) = self.playbook(policy, playbook) else {
            return BreakerState::Closed;
        };
        // Failures at or before `now`, ascending: fails[..n].
        let fails = &pb.failures;
        let n = fails.count_until(now);
        let k = failures as usize;
        if k == 0 || n < k {
            return BreakerState::Closed;
        }
        // The latest moment k failures within `within` opened it: from the
        // newest window back, the first that fits.
        let Some(mut opened) = (k - 1..n)
            .rev()
            .filter_map(|j| Some((fails.nth(j - (k - 1))?, fails.nth(j)?)))
            .find(|(first, last)| *last - *first <= within)
            .map(|(_, last)| last)
        else {
            return BreakerState::Closed;
        };
        let mut reopened = false;
        loop {
            let half_open = opened + open_for;
            if now < half_open {
                return BreakerState::Open { opened, reopened };
            }
            // The trial: the first execution of the playbook after half-open.
            let Some(started) = pb.executions.first_between(half_open, now) else {
                return BreakerState::Closed;
            };
            let failed = fails.first_between(started, now);
            let verified = pb.successes.first_between(started, now);
            match (failed, verified) {
                (Some(f), Some(v)) if v < f => return BreakerState::Closed,
                (None, Some(_)) => return BreakerState::Closed,
                (Some(f), _) => {
                    opened = f;
                    reopened = true;
                }
                (None, None) => return BreakerState::HalfOpenTrial { started },
            }
        }
    }
}
