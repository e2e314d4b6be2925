//! Cluster-wide coordination: several agents see the same alert; one acts.
//!
//! Before a cluster-scoped run executes, the agent claims it in the
//! orchestrator's own store and charges the cluster-wide rate limits there,
//! both with compare-and-swap. No home-made consensus: on Kubernetes the
//! claim is a `coordination.k8s.io/v1` Lease per playbook and target
//! (holder = the agent's pod, duration = the run's time bound, so no claim
//! outlives a dead agent) and the counters are a ConfigMap updated with a
//! resourceVersion precondition; on Swarm the claim is a config with a
//! unique name and the counters are versioned configs (creating version
//! N+1 is the compare-and-swap). Both keep one [`History`] per policy:
//! the executions, failures and successes of every agent, so rate limits,
//! cooldowns and the circuit breaker are decided on the whole cluster's
//! runs, and a store that cannot be reached refuses the run (fail closed).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::policy::model::{CircuitBreaker, RateLimit, RateScope};
use crate::policy::{BreakerState, Ledger};

/// A claim on (playbook, target), to release after the run.
#[derive(Debug, Clone)]
pub struct Claim {
    /// Backend name of the claim (the Lease's name).
    pub name: String,
    /// Version of the claim as written, for a conditional release.
    pub version: Option<String>,
    /// The policy and playbook charged, and how long their history is
    /// kept, when the run's outcome is to be recorded cluster-wide (the
    /// policy has a circuit breaker).
    pub outcome: Option<OutcomeKey>,
}

/// Where a run's outcome goes in the cluster-wide history.
#[derive(Debug, Clone)]
pub struct OutcomeKey {
    /// Policy.
    pub policy: String,
    /// Playbook.
    pub playbook: String,
    /// How long entries are kept.
    pub keep: chrono::Duration,
}

/// Why a run may not go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Another agent holds the claim.
    Held {
        /// Who holds it.
        holder: String,
        /// When the claim lapses.
        until: DateTime<Utc>,
    },
    /// The cluster-wide budget is spent, a cooldown runs or the breaker is open.
    RateLimited(String),
    /// The agent's role may not do what coordination needs (a 403).
    Forbidden(String),
    /// The coordination store could not be read or written: fail closed.
    Unavailable(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Held { holder, until } => write!(
                f,
                "claimed by agent {holder} until {} (another agent acts on this target)",
                until.format("%Y-%m-%dT%H:%M:%SZ")
            ),
            Refusal::RateLimited(why) => write!(f, "cluster-wide {why}"),
            Refusal::Forbidden(why) => write!(
                f,
                "{why}; exactly-once and the cluster-wide limits cannot be checked, so nothing is done (fail closed)"
            ),
            Refusal::Unavailable(why) => write!(
                f,
                "cannot reach the cluster's coordination store, so exactly-once and the cluster-wide limits cannot be checked (fail closed): {why}"
            ),
        }
    }
}

/// What a claim is for.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    /// Policy gating the run.
    pub policy: &'a str,
    /// Its rate limits, charged cluster-wide.
    pub limits: &'a [RateLimit],
    /// Its cooldown (same playbook, same target), checked cluster-wide.
    pub cooldown: Option<chrono::Duration>,
    /// Its circuit breaker, counted on every agent's failures.
    pub breaker: Option<&'a CircuitBreaker>,
    /// Playbook.
    pub playbook: &'a str,
    /// Canonical target key.
    pub target_key: &'a str,
    /// How long the claim may live at most (the run's time bound).
    pub ttl: std::time::Duration,
    /// Now.
    pub now: DateTime<Utc>,
}

/// A coordination backend.
#[async_trait]
pub trait Coordinator: Send + Sync + std::fmt::Debug {
    /// Claims the run and charges the cluster-wide limits, or says why not.
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, Refusal>;
    /// Gives the claim up (best effort: it lapses by itself anyway).
    async fn release(&self, claim: Claim);
    /// Records the claimed run's outcome in the cluster-wide history (for
    /// the breaker), when [`Claim::outcome`] asks for it. Best effort: the
    /// run is over; a lost outcome is logged.
    async fn record_outcome(&self, claim: &Claim, ok: bool, at: DateTime<Utc>);
}

impl ClaimRequest<'_> {
    /// Whether anything is counted cluster-wide for this policy.
    pub fn counts(&self) -> bool {
        !self.limits.is_empty() || self.cooldown.is_some() || self.breaker.is_some()
    }

    /// How long the history must keep an entry for this policy's limits:
    /// the longest rate-limit window, the cooldown, the breaker's window
    /// plus its open time.
    pub fn keep(&self) -> chrono::Duration {
        let mut keep = self
            .limits
            .iter()
            .map(|l| l.per.chrono())
            .max()
            .unwrap_or_else(chrono::Duration::zero);
        if let Some(c) = self.cooldown {
            keep = keep.max(c);
        }
        if let Some(b) = self.breaker {
            keep = keep.max(b.within.chrono() + b.open_for.chrono() * 2);
        }
        keep
    }

    /// The outcome key a claim carries when the breaker needs outcomes.
    pub fn outcome_key(&self) -> Option<OutcomeKey> {
        self.breaker.map(|_| OutcomeKey {
            policy: self.policy.to_string(),
            playbook: self.playbook.to_string(),
            keep: self.keep(),
        })
    }
}

/// One policy's runs on every agent: what the cluster-wide limits count.
/// Bounded: entries older than the policy's longest window are dropped on
/// every write.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct History {
    /// Executions.
    #[serde(default)]
    pub e: Vec<Charge>,
    /// Failed runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub f: Vec<Mark>,
    /// Verified runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub s: Vec<Mark>,
}

/// A failure or success of a playbook.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mark {
    /// When.
    pub t: DateTime<Utc>,
    /// Playbook.
    pub p: String,
}

impl History {
    /// Reads a stored history; the list of charges older versions wrote is
    /// read as their executions. Unreadable text is an error (fail closed).
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str::<History>(text)
            .or_else(|_| {
                serde_json::from_str::<Vec<Charge>>(text).map(|e| History {
                    e,
                    ..History::default()
                })
            })
            .map_err(|e| format!("unreadable cluster-wide history: {e}"))
    }

    /// As stored.
    pub fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn prune(&mut self, now: DateTime<Utc>, keep: chrono::Duration) {
        let since = now - keep;
        self.e.retain(|c| c.t > since);
        self.f.retain(|c| c.t > since);
        self.s.retain(|c| c.t > since);
    }

    /// Checks the breaker, the cooldown (unless `takeover`: the run of a
    /// dead agent whose claim lapsed is finished, not repeated) and the
    /// rate limits on every agent's runs; on success returns the history
    /// with this run added and old entries dropped.
    pub fn admit(&self, req: &ClaimRequest<'_>, takeover: bool) -> Result<History, String> {
        let now = req.now;
        if let Some(b) = req.breaker {
            let mut l = Ledger::default();
            for c in self.e.iter().filter(|c| c.p == req.playbook) {
                l.record_execution(c.t, req.policy, &c.p, &c.k);
            }
            for m in self.f.iter().filter(|m| m.p == req.playbook) {
                l.record_failure(m.t, req.policy, &m.p);
            }
            for m in self.s.iter().filter(|m| m.p == req.playbook) {
                l.record_success(m.t, req.policy, &m.p);
            }
            let (within, open_for) = (b.within.chrono(), b.open_for.chrono());
            match l.breaker_state(req.policy, req.playbook, b.failures, within, open_for, now) {
                BreakerState::Closed => {}
                BreakerState::Open { opened, .. } => {
                    return Err(format!(
                        "circuit open: failures of {} on all agents (opened {}, half-opens at {})",
                        req.playbook,
                        opened.format("%Y-%m-%dT%H:%M:%SZ"),
                        (opened + open_for).format("%Y-%m-%dT%H:%M:%SZ")
                    ))
                }
                BreakerState::HalfOpenTrial { started } => {
                    return Err(format!(
                        "circuit half-open: one trial run of {} in flight on an agent since {}",
                        req.playbook,
                        started.format("%Y-%m-%dT%H:%M:%SZ")
                    ))
                }
            }
        }
        if let (Some(cd), false) = (req.cooldown, takeover) {
            let last = self
                .e
                .iter()
                .filter(|c| c.p == req.playbook && c.k == req.target_key)
                .map(|c| c.t)
                .max();
            if let Some(last) = last.filter(|l| now < *l + cd) {
                return Err(format!(
                    "cooldown {}, last run by an agent at {} (allows again at {})",
                    humantime::format_duration(cd.to_std().unwrap_or_default()),
                    last.format("%Y-%m-%dT%H:%M:%SZ"),
                    (last + cd).format("%Y-%m-%dT%H:%M:%SZ")
                ));
            }
        }
        let mut next = self.clone();
        next.e = charge(
            &self.e,
            req.limits,
            req.playbook,
            req.target_key,
            now,
            req.keep(),
        )?;
        next.prune(now, req.keep());
        Ok(next)
    }

    /// The history with a run's outcome added.
    pub fn with_outcome(&self, key: &OutcomeKey, ok: bool, at: DateTime<Utc>) -> History {
        let mut next = self.clone();
        let m = Mark {
            t: at,
            p: key.playbook.clone(),
        };
        if ok {
            next.s.push(m);
        } else {
            next.f.push(m);
        }
        next.prune(at, key.keep);
        next
    }
}

/// Refuses every cluster-scoped run: for an agent that cannot reach the
/// cluster's store (a Swarm worker: the raft store is the managers'), since
/// acting would bypass exactly-once and the cluster-wide limits.
#[derive(Debug)]
pub struct Refusing(pub String);

#[async_trait]
impl Coordinator for Refusing {
    async fn claim(&self, _: &ClaimRequest<'_>) -> Result<Claim, Refusal> {
        Err(Refusal::Unavailable(self.0.clone()))
    }
    async fn release(&self, _: Claim) {}
    async fn record_outcome(&self, _: &Claim, _: bool, _: DateTime<Utc>) {}
}

/// A stable, DNS-safe name for (playbook, target): `remediate-<16 hex>`.
pub fn claim_name(playbook: &str, target_key: &str) -> String {
    let mut labels = crate::event::Labels::new();
    labels.insert("playbook".into(), playbook.into());
    labels.insert("target".into(), target_key.into());
    format!("remediate-{}", crate::event::fingerprint(&labels))
}

/// One execution charged to the cluster-wide counters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Charge {
    /// When.
    pub t: DateTime<Utc>,
    /// Playbook.
    pub p: String,
    /// Target key.
    pub k: String,
}

/// Checks `limits` against `history` (the policy's charges) at `now`; on
/// success returns the history with this run added and entries older than
/// `keep` dropped.
pub fn charge(
    history: &[Charge],
    limits: &[RateLimit],
    playbook: &str,
    target_key: &str,
    now: DateTime<Utc>,
    keep: chrono::Duration,
) -> Result<Vec<Charge>, String> {
    for l in limits {
        let since = now - l.per.chrono();
        let n = history
            .iter()
            .filter(|c| {
                c.t > since
                    && match l.scope {
                        RateScope::Global => true,
                        RateScope::Playbook => c.p == playbook,
                        RateScope::Target => c.p == playbook && c.k == target_key,
                    }
            })
            .count();
        if n >= l.max as usize {
            let scope = match l.scope {
                RateScope::Global => "global",
                RateScope::Playbook => "playbook",
                RateScope::Target => "target",
            };
            return Err(format!(
                "rate-limit {scope} {}/{} spent by all agents",
                l.max, l.per
            ));
        }
    }
    let mut out: Vec<Charge> = history
        .iter()
        .filter(|c| c.t > now - keep)
        .cloned()
        .collect();
    out.push(Charge {
        t: now,
        p: playbook.into(),
        k: target_key.into(),
    });
    Ok(out)
}

pub mod kubernetes;
pub mod swarm;

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(scope: RateScope, max: u32, per: &str) -> RateLimit {
        RateLimit {
            scope,
            max,
            per: per.parse().unwrap(),
        }
    }

    #[test]
    fn charges_count_across_agents_and_old_ones_are_dropped() {
        let t0 = Utc::now();
        let limits = [
            limit(RateScope::Playbook, 2, "1h"),
            limit(RateScope::Target, 1, "1h"),
        ];
        let hour = chrono::Duration::hours(1);
        let h = charge(&[], &limits, "pb", "a", t0, hour).unwrap();
        let h = charge(&h, &limits, "pb", "b", t0, hour).unwrap();
        let err = charge(&h, &limits, "pb", "c", t0, hour).unwrap_err();
        assert_eq!(err, "rate-limit playbook 2/1h spent by all agents");
        let err = charge(
            &h,
            &limits,
            "pb",
            "a",
            t0 + chrono::Duration::minutes(61),
            hour,
        )
        .map(|h| h.len());
        assert_eq!(
            err,
            Ok(1),
            "entries older than the longest window are dropped"
        );
        assert!(claim_name("pb", "kind=kubernetes.pod|name=x").starts_with("remediate-"));
        assert_eq!(claim_name("pb", "k").len(), "remediate-".len() + 16);
    }
}
