//! Kubernetes: Leases and a counters ConfigMap in the agent's namespace.
//!
//! The requests, and so the Role they need (deploy/k8s/rbac.yaml):
//! leases get, create, patch (a lapsed claim taken over, conditional on the
//! resourceVersion read), delete (release, conditional likewise);
//! configmaps get, create, patch (the counters, conditional likewise).
//! A 403 is reported as what the role lacks, never as an unreachable store.

use super::*;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;

use crate::drivers::kubernetes::{code, forbidden};

/// A failed coordination request: a 403 says what the role lacks; anything
/// else means the store cannot be used. Either way nothing runs.
fn refusal(what: &str, e: kube::Error) -> Refusal {
    match &e {
        kube::Error::Api(s) if s.code == 403 => {
            Refusal::Forbidden(format!("{what}: {}", forbidden(s)))
        }
        _ => Refusal::Unavailable(format!("{what}: {e}")),
    }
}

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

    /// Claims the Lease; true when it was taken over from another holder
    /// whose claim lapsed (that agent died before releasing it).
    async fn lease(&self, req: &ClaimRequest<'_>) -> Result<(Claim, bool), Refusal> {
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
        let what = format!("lease {}/{name}", self.namespace);
        let unavailable = |e: kube::Error| refusal(&what, e);
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
                Ok(l) => Ok((
                    Claim {
                        name,
                        version: l.metadata.resource_version,
                        outcome: req.outcome_key(),
                    },
                    false,
                )),
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
        let takeover = !holder.is_empty() && holder != self.holder;
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
            Ok(l) => {
                if takeover {
                    tracing::info!(lease = %name, %holder, "took over a lapsed claim");
                }
                Ok((
                    Claim {
                        name,
                        version: l.metadata.resource_version,
                        outcome: req.outcome_key(),
                    },
                    takeover,
                ))
            }
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
            Err(e) => refusal(&format!("lease {}/{name}", self.namespace), e),
        }
    }

    /// Charges the policy's limits in the counters ConfigMap (CAS, retried).
    async fn counters(&self, req: &ClaimRequest<'_>, takeover: bool) -> Result<(), Refusal> {
        if !req.counts() {
            return Ok(());
        }
        self.update(req.policy, |h| {
            h.admit(req, takeover).map_err(Refusal::RateLimited)
        })
        .await
    }

    /// Reads the policy's history, applies `change` and writes it back
    /// conditionally on the resourceVersion read; a 409 reads again.
    async fn update(
        &self,
        policy: &str,
        change: impl Fn(&History) -> Result<History, Refusal>,
    ) -> Result<(), Refusal> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = COUNTERS;
        let key = format!("policy.{policy}");
        let what = format!("configmap {}/{name}", self.namespace);
        for _ in 0..8 {
            let current = match api.get(name).await {
                Ok(c) => Some(c),
                Err(e) if code(&e) == Some(404) => None,
                Err(e) => return Err(refusal(&what, e)),
            };
            let history = match current
                .as_ref()
                .and_then(|c| c.data.as_ref())
                .and_then(|d| d.get(&key))
            {
                Some(text) => History::parse(text)
                    .map_err(|e| Refusal::Unavailable(format!("{what} key {key}: {e}")))?,
                None => History::default(),
            };
            let text = change(&history)?.text();
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
                // Someone else wrote in between: read again.
                Err(e) if code(&e) == Some(409) => continue,
                Err(e) => return Err(refusal(&what, e)),
            }
        }
        Err(Refusal::Unavailable(format!(
            "{what} kept changing under 8 attempts"
        )))
    }
}

/// The counters ConfigMap's name.
pub const COUNTERS: &str = "remediate-counters";

#[async_trait]
impl Coordinator for LeaseCoordinator {
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, Refusal> {
        let (claim, takeover) = self.lease(req).await?;
        if let Err(r) = self.counters(req, takeover).await {
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
                let why = refusal(&format!("lease {}/{}", self.namespace, claim.name), e);
                tracing::warn!(lease = %claim.name, error = %why, "cannot release the claim; it lapses by itself");
            }
        }
    }

    async fn record_outcome(&self, claim: &Claim, ok: bool, at: DateTime<Utc>) {
        let Some(key) = &claim.outcome else { return };
        if let Err(e) = self
            .update(&key.policy, |h| Ok(h.with_outcome(key, ok, at)))
            .await
        {
            tracing::warn!(playbook = %key.playbook, error = %e, "cannot record the run's outcome cluster-wide; the other agents' breakers do not count it");
        }
    }
}
