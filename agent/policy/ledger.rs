//! The ledger: what has happened, as far as limits care (executions,
//! failures, successes, runs in flight, the notification being decided).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::model::RateScope;

/// A canonical key for a target: `kind|field=value|...` in field order.
pub fn target_key(target: &crate::drivers::Target) -> String {
    let mut s = String::new();
    for (i, (k, v)) in target.iter().enumerate() {
        if i > 0 {
            s.push('|');
        }
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
    s
}

/// What has happened, as far as limits care: executions, their outcomes
/// and runs in flight, rebuilt from the audit log and extended as decisions
/// are made.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// (time, policy, playbook, target key) of each executed run.
    pub(super) executions: Vec<(DateTime<Utc>, String, String, String)>,
    /// (time, policy, playbook) of each failed run.
    pub(super) failures: Vec<(DateTime<Utc>, String, String)>,
    /// (time, policy, playbook) of each verified run.
    pub(super) successes: Vec<(DateTime<Utc>, String, String)>,
    last: HashMap<(String, String, String), DateTime<Utc>>,
    /// Runs executing now, per policy (the agent keeps this; a CLI run is sequential).
    in_flight: HashMap<String, usize>,
    /// The notification (Alertmanager group delivery) being decided, and
    /// executions per (policy, playbook) within it.
    group: Option<u64>,
    group_counts: HashMap<(String, String), usize>,
}

impl Ledger {
    /// Records an executed run.
    pub fn record_execution(
        &mut self,
        at: DateTime<Utc>,
        policy: &str,
        playbook: &str,
        target_key: &str,
    ) {
        self.executions
            .push((at, policy.into(), playbook.into(), target_key.into()));
        let e = self
            .last
            .entry((policy.into(), playbook.into(), target_key.into()))
            .or_insert(at);
        if at > *e {
            *e = at;
        }
        if self.group.is_some() {
            *self
                .group_counts
                .entry((policy.into(), playbook.into()))
                .or_insert(0) += 1;
        }
    }

    /// Takes back an execution recorded at `at` (one whose records could
    /// not be written, so it did not happen).
    pub fn forget_execution(
        &mut self,
        at: DateTime<Utc>,
        policy: &str,
        playbook: &str,
        target_key: &str,
    ) {
        let Some(i) = self.executions.iter().rposition(|(t, pol, pb, tk)| {
            *t == at && pol == policy && pb == playbook && tk == target_key
        }) else {
            return;
        };
        self.executions.remove(i);
        let key = (
            policy.to_string(),
            playbook.to_string(),
            target_key.to_string(),
        );
        let last = self
            .executions
            .iter()
            .filter(|(_, pol, pb, tk)| pol == policy && pb == playbook && tk == target_key)
            .map(|(t, ..)| *t)
            .max();
        match last {
            Some(t) => {
                self.last.insert(key, t);
            }
            None => {
                self.last.remove(&key);
            }
        }
        if self.group.is_some() {
            if let Some(n) = self
                .group_counts
                .get_mut(&(policy.to_string(), playbook.to_string()))
            {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Starts deciding the events of one notification: `maxTargetsPerRun`
    /// counts executions within it.
    pub fn begin_group(&mut self, id: u64) {
        if self.group != Some(id) {
            self.group = Some(id);
            self.group_counts.clear();
        }
    }

    /// Executions of `playbook` decided within the current notification.
    pub fn group_executions(&self, policy: &str, playbook: &str) -> usize {
        self.group_counts
            .get(&(policy.to_string(), playbook.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// A run of `policy` started executing.
    pub fn run_started(&mut self, policy: &str) {
        *self.in_flight.entry(policy.to_string()).or_insert(0) += 1;
    }

    /// A run of `policy` finished (whatever the outcome).
    pub fn run_finished(&mut self, policy: &str) {
        if let Some(n) = self.in_flight.get_mut(policy) {
            *n = n.saturating_sub(1);
        }
    }

    /// Runs of `policy` executing now.
    pub fn in_flight(&self, policy: &str) -> usize {
        self.in_flight.get(policy).copied().unwrap_or(0)
    }

    /// Failed runs of `playbook` since `since`.
    pub fn failures_since(&self, policy: &str, playbook: &str, since: DateTime<Utc>) -> usize {
        self.failures
            .iter()
            .filter(|(at, pol, pb)| *at > since && pol == policy && pb == playbook)
            .count()
    }

    /// Records a failed (or unverified, or interrupted) run.
    pub fn record_failure(&mut self, at: DateTime<Utc>, policy: &str, playbook: &str) {
        self.failures.push((at, policy.into(), playbook.into()));
    }

    /// Records a verified run.
    pub fn record_success(&mut self, at: DateTime<Utc>, policy: &str, playbook: &str) {
        self.successes.push((at, policy.into(), playbook.into()));
    }

    /// When `playbook` last executed on the target.
    pub fn last_execution(
        &self,
        policy: &str,
        playbook: &str,
        target_key: &str,
    ) -> Option<DateTime<Utc>> {
        self.last
            .get(&(
                policy.to_string(),
                playbook.to_string(),
                target_key.to_string(),
            ))
            .copied()
    }

    /// Executions counted for a rate-limit scope since `since`, and the oldest of them.
    pub fn executions_since(
        &self,
        policy: &str,
        scope: RateScope,
        playbook: &str,
        target_key: &str,
        since: DateTime<Utc>,
    ) -> (usize, Option<DateTime<Utc>>) {
        let mut n = 0;
        let mut oldest: Option<DateTime<Utc>> = None;
        for (at, pol, pb, tk) in &self.executions {
            // Not ordered: `--at` what-ifs append records out of time order.
            let hit = *at > since
                && pol == policy
                && match scope {
                    RateScope::Global => true,
                    RateScope::Playbook => pb == playbook,
                    RateScope::Target => pb == playbook && tk == target_key,
                };
            if hit {
                n += 1;
                oldest = Some(oldest.map_or(*at, |o| o.min(*at)));
            }
        }
        (n, oldest)
    }
}
