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

/// Kubernetes: Leases and a counters ConfigMap in the agent's namespace.
pub mod kubernetes {
    use super::*;
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
    use serde_json::json;

    use crate::drivers::kubernetes::code;

    /// Leases and counters in `namespace`, held as `holder`.
    pub struct LeaseCoordinator {
        client: kube::Client,
        namespace: String,
        holder: String,
    }

    impl std::fmt::Debug for LeaseCoordinator {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("LeaseCoordinator")
                .field("namespace", &self.namespace)
                .field("holder", &self.holder)
                .finish()
        }
    }

    fn ts(t: DateTime<Utc>) -> MicroTime {
        let ts = k8s_openapi::jiff::Timestamp::from_microsecond(t.timestamp_micros())
            .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now());
        MicroTime(ts)
    }

    fn from_ts(t: &MicroTime) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(t.0.as_microsecond()).unwrap_or_default()
    }

    impl LeaseCoordinator {
        /// A coordinator for the agent `holder` (its pod name).
        pub fn new(client: kube::Client, namespace: &str, holder: &str) -> Self {
            Self {
                client,
                namespace: namespace.into(),
                holder: holder.into(),
            }
        }

        async fn lease(&self, req: &ClaimRequest<'_>) -> Result<Claim, Refusal> {
            let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
            let name = claim_name(req.playbook, req.target_key);
            let secs = req.ttl.as_secs().clamp(1, i32::MAX as u64) as i32;
            let spec = LeaseSpec {
                holder_identity: Some(self.holder.clone()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(ts(req.now)),
                renew_time: Some(ts(req.now)),
                ..LeaseSpec::default()
            };
            let unavailable = |e: kube::Error| {
                Refusal::Unavailable(format!("lease {}/{name}: {e}", self.namespace))
            };
            let current = match api.get(&name).await {
                Ok(l) => Some(l),
                Err(e) if code(&e) == Some(404) => None,
                Err(e) => return Err(unavailable(e)),
            };
            let Some(current) = current else {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(self.namespace.clone()),
                        labels: Some(
                            [(
                                "app.kubernetes.io/managed-by".to_string(),
                                "remediate".to_string(),
                            )]
                            .into_iter()
                            .collect(),
                        ),
                        annotations: Some(
                            [
                                (
                                    "remediate.io/playbook".to_string(),
                                    req.playbook.to_string(),
                                ),
                                (
                                    "remediate.io/target".to_string(),
                                    req.target_key.to_string(),
                                ),
                            ]
                            .into_iter()
                            .collect(),
                        ),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                return match api.create(&PostParams::default(), &lease).await {
                    Ok(l) => Ok(Claim {
                        name,
                        version: l.metadata.resource_version,
                    }),
                    // Another agent created it first: it acts.
                    Err(e) if code(&e) == Some(409) => Err(self.held_by(&api, &name).await),
                    Err(e) => Err(unavailable(e)),
                };
            };
            let s = current.spec.clone().unwrap_or_default();
            let holder = s.holder_identity.clone().unwrap_or_default();
            let until = s.renew_time.as_ref().map(from_ts).unwrap_or_default()
                + chrono::Duration::seconds(i64::from(s.lease_duration_seconds.unwrap_or(0)));
            if !holder.is_empty() && holder != self.holder && until > req.now {
                return Err(Refusal::Held { holder, until });
            }
            // Expired, released or ours: take it over, conditionally on the
            // version we read, so two agents taking over cannot both win.
            let patch = json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "spec": spec,
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(l) => Ok(Claim {
                    name,
                    version: l.metadata.resource_version,
                }),
                Err(e) if code(&e) == Some(409) => Err(self.held_by(&api, &name).await),
                Err(e) => Err(unavailable(e)),
            }
        }

        async fn held_by(&self, api: &Api<Lease>, name: &str) -> Refusal {
            match api.get(name).await {
                Ok(l) => {
                    let s = l.spec.unwrap_or_default();
                    Refusal::Held {
                        holder: s.holder_identity.unwrap_or_else(|| "another agent".into()),
                        until: s.renew_time.as_ref().map(from_ts).unwrap_or_default()
                            + chrono::Duration::seconds(i64::from(
                                s.lease_duration_seconds.unwrap_or(0),
                            )),
                    }
                }
                Err(e) => Refusal::Unavailable(format!("lease {}/{name}: {e}", self.namespace)),
            }
        }

        /// Charges the policy's limits in the counters ConfigMap (CAS, retried).
        async fn counters(&self, req: &ClaimRequest<'_>) -> Result<(), Refusal> {
            if req.limits.is_empty() {
                return Ok(());
            }
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
            let name = "remediate-counters";
            let key = format!("policy.{}", req.policy);
            let unavailable = |e: kube::Error| {
                Refusal::Unavailable(format!("configmap {}/{name}: {e}", self.namespace))
            };
            for _ in 0..8 {
                let current = match api.get(name).await {
                    Ok(c) => Some(c),
                    Err(e) if code(&e) == Some(404) => None,
                    Err(e) => return Err(unavailable(e)),
                };
                let history: Vec<Charge> = current
                    .as_ref()
                    .and_then(|c| c.data.as_ref())
                    .and_then(|d| d.get(&key))
                    .and_then(|s| serde_json::from_str(s).ok())
                    .unwrap_or_default();
                let next = charge(&history, req.limits, req.playbook, req.target_key, req.now)
                    .map_err(Refusal::RateLimited)?;
                let text = serde_json::to_string(&next).unwrap_or_default();
                let result = match &current {
                    None => {
                        let cm = ConfigMap {
                            metadata: ObjectMeta {
                                name: Some(name.into()),
                                namespace: Some(self.namespace.clone()),
                                ..ObjectMeta::default()
                            },
                            data: Some([(key.clone(), text)].into_iter().collect()),
                            ..ConfigMap::default()
                        };
                        api.create(&PostParams::default(), &cm).await.map(|_| ())
                    }
                    Some(c) => {
                        let patch = json!({
                            "metadata": {"resourceVersion": c.metadata.resource_version},
                            "data": {key.as_str(): text},
                        });
                        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .map(|_| ())
                    }
                };
                match result {
                    Ok(()) => return Ok(()),
                    // Someone else charged in between: read again.
                    Err(e) if code(&e) == Some(409) => continue,
                    Err(e) => return Err(unavailable(e)),
                }
            }
            Err(Refusal::Unavailable(
                "the counters ConfigMap kept changing under 8 attempts".into(),
            ))
        }
    }

    #[async_trait]
    impl Coordinator for LeaseCoordinator {
        async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, Refusal> {
            let claim = self.lease(req).await?;
            if let Err(r) = self.counters(req).await {
                self.release(claim).await;
                return Err(r);
            }
            Ok(claim)
        }

        async fn release(&self, claim: Claim) {
            let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
            let dp = DeleteParams {
                preconditions: claim.version.clone().map(|v| Preconditions {
                    uid: None,
                    resource_version: Some(v),
                }),
                ..DeleteParams::default()
            };
            if let Err(e) = api.delete(&claim.name, &dp).await {
                // 409: it lapsed and another agent took it; 404: gone. Either
                // way it is not ours any more.
                if !matches!(code(&e), Some(404) | Some(409)) {
                    tracing::warn!(lease = %claim.name, error = %e, "cannot release the claim; it lapses by itself");
                }
            }
        }
    }
}

/// Docker Swarm: claims are Swarm configs named after (playbook, target),
/// kept in the managers' raft store. Creating a config is atomic and names
/// are unique, so of several agents creating the same claim exactly one
/// succeeds (the others get 409). A claim carries its holder and expiry as
/// labels; a lapsed claim is removed by id (only one remover succeeds) and
/// the race to recreate it is again decided by the unique name.
///
/// Why configs and not a service's version index: a config is a first-class,
/// create-once object of the same raft store, so the claim needs no service
/// to exist and never changes anything that runs. Cluster-wide counters are
/// not kept on Swarm (configs are immutable): each agent's own limits apply.
pub mod swarm {
    use super::*;
    use bollard::models::ConfigSpec;
    use bollard::Docker;
    use std::collections::HashMap;

    /// Claims as Swarm configs, held as `holder`.
    pub struct ConfigCoordinator {
        docker: Docker,
        holder: String,
    }

    impl std::fmt::Debug for ConfigCoordinator {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ConfigCoordinator")
                .field("holder", &self.holder)
                .finish()
        }
    }

    impl ConfigCoordinator {
        /// A coordinator on a Swarm manager's engine.
        pub fn new(docker: Docker, holder: &str) -> Self {
            Self {
                docker,
                holder: holder.into(),
            }
        }

        async fn create(
            &self,
            name: &str,
            until: DateTime<Utc>,
        ) -> Result<String, bollard::errors::Error> {
            let labels: HashMap<String, String> = [
                ("remediate.io/claim-holder".to_string(), self.holder.clone()),
                ("remediate.io/claim-until".to_string(), until.to_rfc3339()),
                ("remediate.io/managed".to_string(), "true".to_string()),
            ]
            .into_iter()
            .collect();
            let r = self
                .docker
                .create_config(ConfigSpec {
                    name: Some(name.to_string()),
                    labels: Some(labels),
                    // Swarm wants 1 byte or more, base64-encoded.
                    data: Some({
                        use base64::Engine as _;
                        base64::engine::general_purpose::STANDARD.encode(
                            serde_json::json!({"holder": self.holder, "until": until.to_rfc3339()})
                                .to_string(),
                        )
                    }),
                    templating: None,
                })
                .await?;
            Ok(r.id)
        }

        async fn holder_of(
            &self,
            name: &str,
        ) -> Result<Option<(String, String, DateTime<Utc>)>, String> {
            match self.docker.inspect_config(name).await {
                Ok(c) => {
                    let labels = c.spec.and_then(|s| s.labels).unwrap_or_default();
                    let until = labels
                        .get("remediate.io/claim-until")
                        .and_then(|u| DateTime::parse_from_rfc3339(u).ok())
                        .map(|u| u.with_timezone(&Utc))
                        .unwrap_or_default();
                    Ok(Some((
                        c.id.unwrap_or_default(),
                        labels
                            .get("remediate.io/claim-holder")
                            .cloned()
                            .unwrap_or_default(),
                        until,
                    )))
                }
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        }
    }

    fn conflict(e: &bollard::errors::Error) -> bool {
        matches!(
            e,
            bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                ..
            }
        )
    }

    #[async_trait]
    impl Coordinator for ConfigCoordinator {
        async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, Refusal> {
            let name = claim_name(req.playbook, req.target_key);
            let until = req.now + chrono::Duration::from_std(req.ttl).unwrap_or_default();
            for _ in 0..3 {
                match self.create(&name, until).await {
                    Ok(id) => {
                        return Ok(Claim {
                            name,
                            version: Some(id),
                        })
                    }
                    Err(e) if conflict(&e) => {}
                    Err(e) => {
                        return Err(Refusal::Unavailable(format!("swarm config {name}: {e}")))
                    }
                }
                match self.holder_of(&name).await.map_err(Refusal::Unavailable)? {
                    None => continue, // released in between: try again
                    Some((_, holder, until)) if until > req.now => {
                        return Err(Refusal::Held { holder, until })
                    }
                    Some((id, holder, _)) => {
                        tracing::info!(claim = %name, %holder, "removing a lapsed claim");
                        // Only one agent's delete of this id succeeds; the
                        // recreate race is decided by the unique name.
                        let _ = self.docker.delete_config(&id).await;
                    }
                }
            }
            match self.holder_of(&name).await.map_err(Refusal::Unavailable)? {
                Some((_, holder, until)) => Err(Refusal::Held { holder, until }),
                None => Err(Refusal::Unavailable(format!(
                    "swarm config {name} kept changing"
                ))),
            }
        }

        async fn release(&self, claim: Claim) {
            if let Some(id) = claim.version {
                if let Err(e) = self.docker.delete_config(&id).await {
                    tracing::warn!(claim = %claim.name, error = %e, "cannot release the claim; it lapses by itself");
                }
            }
        }
    }
}

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
