//! Kubernetes: Leases and a counters ConfigMap in the agent's namespace.

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
        let unavailable =
            |e: kube::Error| Refusal::Unavailable(format!("lease {}/{name}: {e}", self.namespace));
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
