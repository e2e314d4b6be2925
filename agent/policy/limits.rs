//! Limit stages counted from the ledger: cooldown, rate limits,
//! concurrency, targets per notification.

use super::decision::Decision;
use super::gate::{GateInput, Stage};
use super::model::RateScope;

pub(super) struct Cooldown {
    pub(super) policy: String,
    pub(super) period: chrono::Duration,
}
impl Stage for Cooldown {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        let last = i
            .ledger
            .last_execution(&self.policy, i.playbook, i.target_key)?;
        (i.now < last + self.period).then(|| {
            Decision::Suppressed(format!(
                "cooldown {}, last {} (allows again at {})",
                humantime::format_duration(self.period.to_std().unwrap_or_default()),
                last.format("%Y-%m-%dT%H:%M:%SZ"),
                (last + self.period).format("%Y-%m-%dT%H:%M:%SZ")
            ))
        })
    }
}

pub(super) struct Rate {
    pub(super) policy: String,
    pub(super) scope: RateScope,
    pub(super) max: u32,
    pub(super) per: chrono::Duration,
    pub(super) per_text: String,
}
impl Stage for Rate {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        let since = i.now - self.per;
        let (n, oldest) =
            i.ledger
                .executions_since(&self.policy, self.scope, i.playbook, i.target_key, since);
        if n < self.max as usize {
            return None;
        }
        let scope = match self.scope {
            RateScope::Global => "global",
            RateScope::Playbook => "playbook",
            RateScope::Target => "target",
        };
        let again = oldest
            .map(|o| {
                format!(
                    " (allows again at {})",
                    (o + self.per).format("%Y-%m-%dT%H:%M:%SZ")
                )
            })
            .unwrap_or_default();
        Some(Decision::Suppressed(format!(
            "rate-limit {scope} {}/{}{again}",
            self.max, self.per_text
        )))
    }
}

pub(super) struct Concurrency {
    pub(super) policy: String,
    pub(super) max: u32,
}
impl Stage for Concurrency {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        let n = i.ledger.in_flight(&self.policy);
        (n >= self.max as usize).then(|| {
            Decision::Suppressed(format!(
                "concurrency {}: {n} run(s) of policy {} in flight on this agent (allows again when one finishes)",
                self.max, self.policy
            ))
        })
    }
}

pub(super) struct MaxTargets {
    pub(super) policy: String,
    pub(super) max: u32,
}
impl Stage for MaxTargets {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        let n = i.ledger.group_executions(&self.policy, i.playbook);
        (n >= self.max as usize).then(|| {
            Decision::Suppressed(format!(
                "blast radius: {n} target(s) of {} already act on this notification (maxTargetsPerRun {}); the rest wait for the alert to repeat",
                i.playbook, self.max
            ))
        })
    }
}
