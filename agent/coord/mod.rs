//! Cluster-wide coordination: several agents see the same alert; one acts.
//!
//! Before a cluster-scoped run executes, the agent claims it in the
//! orchestrator's own store and charges the cluster-wide rate limits there,
//! both with compare-and-swap. No home-made consensus: on Kubernetes the
//! claim is a `coordination.k8s.io/v1` Lease per playbook and target
//! (holder = the agent's pod, duration = the run's time bound, so no claim
//! outlives a dead agent) and the counters are a ConfigMap updated with a
//! resourceVersion precondition.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::policy::model::{RateLimit, RateScope};

/// A claim on (playbook, target), to release after the run.
#[derive(Debug, Clone)]
pub struct Claim {
    /// Backend name of the claim (the Lease's name).
    pub name: String,
    /// Version of the claim as written, for a conditional release.
    pub version: Option<String>,
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
    /// The cluster-wide budget is spent.
    RateLimited(String),
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
/// success returns the history with this run added and old entries dropped.
pub fn charge(
    history: &[Charge],
    limits: &[RateLimit],
    playbook: &str,
    target_key: &str,
    now: DateTime<Utc>,
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
    let keep = limits
        .iter()
        .map(|l| l.per.chrono())
        .max()
        .unwrap_or_else(chrono::Duration::zero);
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
        let h = charge(&[], &limits, "pb", "a", t0).unwrap();
        let h = charge(&h, &limits, "pb", "b", t0).unwrap();
        let err = charge(&h, &limits, "pb", "c", t0).unwrap_err();
        assert_eq!(err, "rate-limit playbook 2/1h spent by all agents");
        let err =
            charge(&h, &limits, "pb", "a", t0 + chrono::Duration::minutes(61)).map(|h| h.len());
        assert_eq!(
            err,
            Ok(1),
            "entries older than the longest window are dropped"
        );
        assert!(claim_name("pb", "kind=kubernetes.pod|name=x").starts_with("remediate-"));
        assert_eq!(claim_name("pb", "k").len(), "remediate-".len() + 16);
    }
}
