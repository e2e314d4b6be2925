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
        let mine = |v: &[(DateTime<Utc>, String, String)]| -> Vec<DateTime<Utc>> {
            let mut t: Vec<DateTime<Utc>> = v
                .iter()
                .filter(|(at, pol, pb)| pol == policy && pb == playbook && *at <= now)
                .map(|(at, ..)| *at)
                .collect();
            t.sort_unstable();
            t
        };
        let fails = mine(&self.failures);
        let k = failures as usize;
        if k == 0 || fails.len() < k {
            return BreakerState::Closed;
        }
        // The latest moment k failures within `within` opened it.
        let Some(mut opened) = fails
            .windows(k)
            .filter(|w| w[k - 1] - w[0] <= within)
            .map(|w| w[k - 1])
            .max()
        else {
            return BreakerState::Closed;
        };
        let oks = mine(&self.successes);
        let mut reopened = false;
        loop {
            let half_open = opened + open_for;
            if now < half_open {
                return BreakerState::Open { opened, reopened };
            }
            // The trial: the first execution of the playbook after half-open.
            let trial = self
                .executions
                .iter()
                .filter(|(at, pol, pb, _)| {
                    pol == policy && pb == playbook && *at >= half_open && *at <= now
                })
                .map(|(at, ..)| *at)
                .min();
            let Some(started) = trial else {
                return BreakerState::Closed;
            };
            let failed = fails.iter().find(|t| **t >= started).copied();
            let verified = oks.iter().find(|t| **t >= started).copied();
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
