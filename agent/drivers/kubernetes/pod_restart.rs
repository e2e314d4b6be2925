//! `kubernetes.pod.restart`: evict (honouring PodDisruptionBudgets) or
//! delete a pod so its controller recreates it; its parameters and driver.

use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use kube::Client;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::events::event;
use super::pod_evidence::{collect, owner_line};
use super::workload::{controller, get_workload, owner_of, rollout_of, Workload};
use super::{api_err, code, get_opt, Kube};
use crate::drivers::action::{
    target_display, Action, ActionSpec, DriverError, Outcome, Params, Plan, Request, Scope,
    ScopeKind, Target, Verdict,
};

/// `kubernetes.pod.restart` in the catalogue.
pub const SPEC: ActionSpec = ActionSpec::of::<PodRestart>(
    "kubernetes.pod.restart",
    "kubernetes",
    "Evict (honouring PodDisruptionBudgets) or delete a pod so its controller recreates it.",
    ScopeKind::Cluster,
    300,
    &[("kubernetes.pod", &["namespace", "name"])],
);

/// How a pod is restarted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RestartMode {
    /// Eviction API: honours PodDisruptionBudgets.
    #[default]
    Evict,
    /// Delete with a grace period.
    Delete,
}

/// `kubernetes.pod.restart`
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "KubernetesPodRestart")]
pub struct PodRestart {
    /// `evict` (default, honours PodDisruptionBudgets) or `delete`.
    #[serde(default)]
    pub mode: RestartMode,
    /// Grace period for `delete`; the pod's own when unset.
    #[serde(default)]
    pub grace_period_seconds: Option<u32>,
    /// Also restart pods no controller owns (they will not come back).
    #[serde(default)]
    pub allow_bare_pods: bool,
}

impl Params for PodRestart {
    fn describe(&self, t: &Target) -> String {
        let verb = match self.mode {
            RestartMode::Evict => "evict".to_string(),
            RestartMode::Delete => match self.grace_period_seconds {
                Some(g) => format!("delete (grace {g}s)"),
                None => "delete".to_string(),
            },
        };
        let owner = if self.allow_bare_pods {
            ""
        } else {
            " if a controller owns it"
        };
        format!(
            "{verb} {}{owner}; its controller recreates it",
            target_display(t)
        )
    }
}

fn pod_state(pod: &Pod) -> String {
    let Some(st) = &pod.status else {
        return "no status".into();
    };
    let mut parts = vec![st.phase.clone().unwrap_or_else(|| "Unknown".into())];
    for c in st.container_statuses.iter().flatten() {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            if let Some(r) = &w.reason {
                parts = vec![r.clone()];
            }
        }
        if c.restart_count > 0 {
            parts.push(format!("{} restarts", c.restart_count));
        }
    }
    parts.join(", ")
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `kubernetes.pod.restart`: evict (PDB-aware) or delete a pod.
#[derive(Debug)]
pub struct KubePodRestart(pub Arc<Kube>);

#[async_trait]
impl Action for KubePodRestart {
    fn name(&self) -> &'static str {
        SPEC.name
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }

    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        let p: PodRestart = req.parsed()?;
        let (ns, name) = (req.field("namespace")?, req.field("name")?);
        let pods = Api::<Pod>::namespaced(self.0.client.clone(), ns);
        let pod = pods
            .get(name)
            .await
            .map_err(|e| api_err(&format!("pod {ns}/{name}"), e))?;
        let direct = controller(pod.metadata.owner_references.as_ref()).map(|o| o.name.clone());
        let owner = owner_of(&self.0.client, &pod).await?;
        let Some(owner) = owner else {
            if !p.allow_bare_pods {
                return Err(DriverError::permanent(format!(
                    "pod {ns}/{name} has no controller: deleting it would remove it for good (set allowBarePods: true to allow)"
                )));
            }
            let evidence = collect(
                &self.0.client,
                &pod,
                req.target.get("container").map(String::as_str),
                "none: a bare pod, it will not come back".into(),
            )
            .await;
            return Ok(Plan {
                summary: format!("{} bare pod {ns}/{name} ({})", verb(&p), pod_state(&pod)),
                details: json!({"uid": pod.metadata.uid, "evidence": evidence}),
            });
        };
        let w = get_workload(&self.0.client, &owner).await?;
        let r = rollout_of(&w, &owner.kind);
        // The pods of the same owner now: the replacement is the one that
        // is not among them (a sibling that was already there is not it).
        let siblings: Vec<String> = owned_pods(&pods, &w, direct.as_deref().unwrap_or_default())
            .await?
            .into_iter()
            .filter_map(|p| p.metadata.uid)
            .collect();
        let available = pod_ready(&pod);
        let evidence = collect(
            &self.0.client,
            &pod,
            req.target.get("container").map(String::as_str),
            owner_line(&owner, direct.as_deref(), &r),
        )
        .await;
        Ok(Plan {
            summary: format!(
                "{} pod {ns}/{name} ({}{}); {} recreates it ({}/{} ready)",
                verb(&p),
                pod_state(&pod),
                if available { "" } else { ", not Ready" },
                owner.display(),
                r.ready,
                r.desired
            ),
            details: json!({
                "uid": pod.metadata.uid,
                "owner": direct,
                "siblings": siblings,
                "workload": {
                    "kind": owner.kind,
                    "name": owner.display(),
                    "replicas": r.desired,
                    "unavailable": (r.desired - r.ready).max(0),
                    // A pod that is not Ready is not available: restarting
                    // it takes nothing more down.
                    "targetAvailable": available,
                },
                "evidence": evidence,
            }),
        })
    }

    async fn apply(&self, req: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let p: PodRestart = req.parsed()?;
        let (ns, name) = (req.field("namespace")?, req.field("name")?);
        let pods = Api::<Pod>::namespaced(self.0.client.clone(), ns);
        let uid = plan.details["uid"].as_str().map(str::to_string);
        // Idempotent: the pod we planned for may already be gone.
        match get_opt(&pods, name, &format!("pod {ns}/{name}")).await? {
            Some(cur) if cur.metadata.uid == uid => {}
            _ => {
                return Ok(Outcome {
                    summary: format!("pod {ns}/{name} was already replaced; nothing to do"),
                    details: json!({}),
                })
            }
        }
        let dp = DeleteParams {
            grace_period_seconds: p.grace_period_seconds,
            preconditions: uid.clone().map(|u| kube::api::Preconditions {
                uid: Some(u),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match p.mode {
            RestartMode::Delete => {
                pods.delete(name, &dp)
                    .await
                    .map_err(|e| api_err(&format!("delete pod {ns}/{name}"), e))?;
                Ok(Outcome {
                    summary: format!("deleted pod {ns}/{name}"),
                    details: json!({}),
                })
            }
            RestartMode::Evict => {
                // 429: a PodDisruptionBudget says not now. Wait and retry
                // until just before the step's timeout, then say which
                // budget refused (the engine bounds this loop in any case).
                let deadline = crate::drivers::apply_deadline();
                let mut wait = std::time::Duration::from_millis(500);
                let mut refusals = 0u32;
                loop {
                    match evict(
                        &self.0.client,
                        ns,
                        name,
                        p.grace_period_seconds,
                        uid.as_deref(),
                    )
                    .await
                    {
                        Ok(_) => {
                            return Ok(Outcome {
                                summary: if refusals == 0 {
                                    format!("evicted pod {ns}/{name}")
                                } else {
                                    format!("evicted pod {ns}/{name} (after {refusals} refusals by its disruption budget)")
                                },
                                details: json!({}),
                            })
                        }
                        Err(e) if code(&e) == Some(429) => {
                            refusals += 1;
                            let why = budget_refusal(&e);
                            tracing::info!(pod = %format!("{ns}/{name}"), %why, "eviction refused; retrying");
                            let margin = std::time::Duration::from_millis(250);
                            if let Some(d) = deadline {
                                let left = d.saturating_duration_since(std::time::Instant::now());
                                if left <= wait + margin {
                                    return Err(DriverError::retryable(format!(
                                        "eviction of pod {ns}/{name} refused {refusals} times until the step timeout: {why}"
                                    )));
                                }
                            }
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(std::time::Duration::from_secs(10));
                        }
                        Err(e) if code(&e) == Some(404) => {
                            return Ok(Outcome {
                                summary: format!("pod {ns}/{name} was already gone"),
                                details: json!({}),
                            })
                        }
                        Err(e) => return Err(api_err(&format!("evict pod {ns}/{name}"), e)),
                    }
                }
            }
        }
    }

    async fn verify(&self, req: &Request, plan: &Plan) -> Result<Verdict, DriverError> {
        let (ns, name) = (req.field("namespace")?, req.field("name")?);
        let uid = plan.details["uid"].as_str();
        let pods = Api::<Pod>::namespaced(self.0.client.clone(), ns);
        let cur = get_opt(&pods, name, &format!("pod {ns}/{name}")).await?;
        if cur
            .as_ref()
            .is_some_and(|p| p.metadata.uid.as_deref() == uid)
        {
            return Ok(Verdict::Pending(format!(
                "pod {ns}/{name} is still terminating"
            )));
        }
        let wl = &plan.details["workload"];
        let Some(kind) = wl["kind"].as_str() else {
            return Ok(Verdict::Verified(format!("bare pod {ns}/{name} is gone")));
        };
        let owner = Workload {
            kind: kind.to_string(),
            namespace: ns.to_string(),
            name: wl["name"]
                .as_str()
                .and_then(|n| n.rsplit('/').next())
                .unwrap_or_default()
                .to_string(),
        };
        // The replacement: a Ready pod of the same direct owner (the
        // ReplicaSet, StatefulSet or DaemonSet) that did not exist at plan
        // time (a StatefulSet's has the old name and a new uid). Owners are
        // compared on the client, so a stale selector cannot lie.
        let direct = plan.details["owner"].as_str().unwrap_or_default();
        let before: Vec<&str> = plan.details["siblings"]
            .as_array()
            .map(|a| a.iter().filter_map(|u| u.as_str()).collect())
            .unwrap_or_default();
        let workload = get_workload(&self.0.client, &owner).await?;
        let new: Vec<Pod> = owned_pods(&pods, &workload, direct)
            .await?
            .into_iter()
            .filter(|p| {
                let u = p.metadata.uid.as_deref();
                u != uid && !u.is_some_and(|u| before.contains(&u))
            })
            .collect();
        let Some(replacement) = new.iter().find(|p| pod_ready(p)) else {
            let from = if direct.is_empty() {
                "its owner"
            } else {
                direct
            };
            return Ok(Verdict::Pending(match new.first() {
                Some(p) => format!(
                    "replacement pod {ns}/{} from {from} is not Ready yet ({})",
                    p.metadata.name.as_deref().unwrap_or("?"),
                    pod_state(p)
                ),
                None => format!("no replacement for pod {ns}/{name} from {from} yet"),
            }));
        };
        let r = rollout_of(&workload, kind);
        if r.ready >= r.desired {
            Ok(Verdict::Verified(format!(
                "replacement pod {ns}/{} Running and Ready; {} has {}/{} ready",
                replacement.metadata.name.as_deref().unwrap_or("?"),
                owner.display(),
                r.ready,
                r.desired
            )))
        } else {
            Ok(Verdict::Pending(format!(
                "{} has {}/{} ready",
                owner.display(),
                r.ready,
                r.desired
            )))
        }
    }

    async fn record(&self, req: &Request, ok: bool, message: &str) {
        event(&self.0, req, "Pod", ok, SPEC.name, message).await;
    }
}

/// POSTs a policy/v1 Eviction. Built here rather than with kube's
/// `Api::evict`, which sends `delete_options` (snake case): the API server
/// ignores that key, and with it the uid precondition and grace period.
async fn evict(
    client: &Client,
    ns: &str,
    name: &str,
    grace: Option<u32>,
    uid: Option<&str>,
) -> Result<kube::core::Status, kube::Error> {
    let mut delete_options = json!({});
    if let Some(g) = grace {
        delete_options["gracePeriodSeconds"] = json!(g);
    }
    if let Some(u) = uid {
        delete_options["preconditions"] = json!({"uid": u});
    }
    let body = json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": ns},
        "deleteOptions": delete_options,
    });
    let req = http::Request::post(format!("/api/v1/namespaces/{ns}/pods/{name}/eviction"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).unwrap_or_default())
        .map_err(kube::Error::HttpError)?;
    client.request::<kube::core::Status>(req).await
}

/// The pods `direct` (a ReplicaSet, StatefulSet or DaemonSet) controls,
/// listed with the workload's selector and checked by owner on the client.
async fn owned_pods(
    pods: &Api<Pod>,
    workload: &kube::core::DynamicObject,
    direct: &str,
) -> Result<Vec<Pod>, DriverError> {
    let selector = workload.data["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let lp = kube::api::ListParams::default().labels(&selector);
    let list = pods.list(&lp).await.map_err(|e| api_err("list pods", e))?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| {
            controller(p.metadata.owner_references.as_ref()).is_some_and(|o| o.name == direct)
        })
        .collect())
}

/// What a 429 on an eviction says: the budget that refused, from the
/// Status causes the API server adds ("The disruption budget web needs 2
/// healthy pods and has 2 currently").
fn budget_refusal(e: &kube::Error) -> String {
    let kube::Error::Api(s) = e else {
        return e.to_string();
    };
    let causes: Vec<&str> = s
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .filter(|c| c.reason == "DisruptionBudget" || c.message.contains("disruption budget"))
        .map(|c| c.message.as_str())
        .collect();
    if causes.is_empty() {
        format!("{} (429)", s.message)
    } else {
        format!("PodDisruptionBudget refused: {}", causes.join("; "))
    }
}

fn verb(p: &PodRestart) -> &'static str {
    match p.mode {
        RestartMode::Evict => "evict",
        RestartMode::Delete => "delete",
    }
}
