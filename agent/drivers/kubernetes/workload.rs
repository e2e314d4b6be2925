//! Workloads (the controllers of pods) as the Kubernetes actions see them:
//! the owner of a pod, a workload's rollout state, and waiting for a rollout.

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::Client;
use serde_json::json;

use super::{api_err, Kube};
use crate::drivers::action::{DriverError, Plan, Request, Verdict};

/// A controller of pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `Deployment`, `StatefulSet`, `DaemonSet` or `ReplicaSet` (a bare one).
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Workload {
    /// The workload a plan recorded (see `workload_details`).
    pub(super) fn from_details(d: &serde_json::Value) -> Self {
        let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
        Self {
            kind: text("kind"),
            namespace: text("namespace"),
            name: text("name"),
        }
    }

    pub(super) fn display(&self) -> String {
        format!(
            "{} {}/{}",
            self.kind.to_lowercase(),
            self.namespace,
            self.name
        )
    }
}

pub(super) fn controller(refs: Option<&Vec<OwnerReference>>) -> Option<&OwnerReference> {
    refs?.iter().find(|o| o.controller == Some(true))
}

/// The workload owning `pod`, following ReplicaSet -> Deployment.
pub async fn owner_of(client: &Client, pod: &Pod) -> Result<Option<Workload>, DriverError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let Some(o) = controller(pod.metadata.owner_references.as_ref()) else {
        return Ok(None);
    };
    if o.kind == "ReplicaSet" {
        let rs = Api::<ReplicaSet>::namespaced(client.clone(), &ns)
            .get(&o.name)
            .await
            .map_err(|e| api_err(&format!("replicaset {ns}/{}", o.name), e))?;
        if let Some(d) = controller(rs.metadata.owner_references.as_ref()) {
            return Ok(Some(Workload {
                kind: d.kind.clone(),
                namespace: ns,
                name: d.name.clone(),
            }));
        }
    }
    Ok(Some(Workload {
        kind: o.kind.clone(),
        namespace: ns,
        name: o.name.clone(),
    }))
}

/// Replicas of a workload as its controller reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Desired replicas (`spec.replicas`; DaemonSet: `desiredNumberScheduled`).
    pub desired: i64,
    /// Replicas that exist, old and new (`status.replicas`; DaemonSet:
    /// `currentNumberScheduled`).
    pub current: i64,
    /// Ready replicas (old ones included).
    pub ready: i64,
    /// Available replicas (ready for `minReadySeconds`).
    pub available: i64,
    /// Replicas on the newest template.
    pub updated: i64,
    /// `status.unavailableReplicas` (Deployment; DaemonSet `numberUnavailable`).
    pub unavailable: i64,
    /// metadata.generation.
    pub generation: i64,
    /// status.observedGeneration.
    pub observed: i64,
    /// The `Progressing` condition's message when its reason is
    /// `ProgressDeadlineExceeded` (Deployment).
    pub deadline_exceeded: Option<String>,
    /// StatefulSet/DaemonSet `spec.updateStrategy.type` (RollingUpdate when unset).
    pub strategy: String,
    /// StatefulSet `status.currentRevision` / `updateRevision`.
    pub revisions: (String, String),
    /// StatefulSet rolling-update partition.
    pub partition: i64,
}

/// Where a rollout stands, as `kubectl rollout status` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutState {
    /// The controller observed the newest generation and every replica is
    /// updated and available, with no old replica left.
    Complete(String),
    /// Still going: what it waits for.
    Progressing(String),
    /// It will not finish by itself (`ProgressDeadlineExceeded`, OnDelete).
    Failed(String),
}

impl Rollout {
    /// The rollout's state for `kind`, following kubectl's status viewers
    /// (rollout_status.go), stricter where the issue asked: a Deployment is
    /// complete only when `status.replicas == updatedReplicas`, every
    /// updated replica is available and `unavailableReplicas` is 0.
    pub fn state(&self, kind: &str) -> RolloutState {
        use RolloutState::*;
        if self.observed < self.generation || (kind == "StatefulSet" && self.observed == 0) {
            return Progressing(format!(
                "waiting for the controller to observe generation {} (observed {})",
                self.generation, self.observed
            ));
        }
        match kind {
            "Deployment" => {
                if let Some(m) = &self.deadline_exceeded {
                    return Failed(format!("ProgressDeadlineExceeded: {m}"));
                }
                if self.updated < self.desired {
                    Progressing(format!(
                        "{} out of {} new replicas have been updated",
                        self.updated, self.desired
                    ))
                } else if self.current > self.updated {
                    Progressing(format!(
                        "{} old replicas are pending termination (status.replicas {}, updated {})",
                        self.current - self.updated,
                        self.current,
                        self.updated
                    ))
                } else if self.available < self.updated {
                    Progressing(format!(
                        "{} of {} updated replicas are available",
                        self.available, self.updated
                    ))
                } else if self.unavailable > 0 {
                    Progressing(format!("{} replicas are unavailable", self.unavailable))
                } else {
                    Complete(format!(
                        "{}/{} updated and available, no old replica left",
                        self.updated, self.desired
                    ))
                }
            }
            "StatefulSet" => {
                if self.strategy != "RollingUpdate" {
                    return Failed(format!(
                        "updateStrategy {}: pods take the new template only when deleted",
                        self.strategy
                    ));
                }
                if self.ready < self.desired {
                    return Progressing(format!("{} of {} pods ready", self.ready, self.desired));
                }
                if self.available < self.desired {
                    return Progressing(format!(
                        "{} of {} pods available",
                        self.available, self.desired
                    ));
                }
                if self.partition > 0 {
                    let want = (self.desired - self.partition).max(0);
                    return if self.updated < want {
                        Progressing(format!(
                            "partitioned rollout: {} of {want} new pods updated",
                            self.updated
                        ))
                    } else {
                        Complete(format!(
                            "partitioned rollout complete: {} new pods updated",
                            self.updated
                        ))
                    };
                }
                let (cur, upd) = &self.revisions;
                if cur != upd {
                    Progressing(format!(
                        "{} of {} pods at revision {upd}",
                        self.updated, self.desired
                    ))
                } else {
                    Complete(format!(
                        "{}/{} pods ready at revision {upd}",
                        self.ready, self.desired
                    ))
                }
            }
            "DaemonSet" => {
                if self.strategy != "RollingUpdate" {
                    return Failed(format!(
                        "updateStrategy {}: pods take the new template only when deleted",
                        self.strategy
                    ));
                }
                if self.updated < self.desired {
                    Progressing(format!(
                        "{} out of {} new pods have been updated",
                        self.updated, self.desired
                    ))
                } else if self.available < self.desired {
                    Progressing(format!(
                        "{} of {} updated pods are available",
                        self.available, self.desired
                    ))
                } else {
                    Complete(format!(
                        "{}/{} updated and available",
                        self.updated, self.desired
                    ))
                }
            }
            _ => {
                if self.ready >= self.desired {
                    Complete(format!("{}/{} ready", self.ready, self.desired))
                } else {
                    Progressing(format!("{}/{} ready", self.ready, self.desired))
                }
            }
        }
    }
}

pub(super) fn dynamic_api(
    client: &Client,
    w: &Workload,
) -> Result<Api<DynamicObject>, DriverError> {
    let gvk = match w.kind.as_str() {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => {
            GroupVersionKind::gvk("apps", "v1", &w.kind)
        }
        other => {
            return Err(DriverError::permanent(format!(
                "{other} {}/{} is not a workload this driver handles (Deployment, StatefulSet, DaemonSet)",
                w.namespace, w.name
            )))
        }
    };
    Ok(Api::namespaced_with(
        client.clone(),
        &w.namespace,
        &ApiResource::from_gvk(&gvk),
    ))
}

pub(super) async fn get_workload(
    client: &Client,
    w: &Workload,
) -> Result<DynamicObject, DriverError> {
    dynamic_api(client, w)?
        .get(&w.name)
        .await
        .map_err(|e| api_err(&w.display(), e))
}

pub(super) fn rollout_of(obj: &DynamicObject, kind: &str) -> Rollout {
    let st = &obj.data["status"];
    let spec = &obj.data["spec"];
    let n = |v: &serde_json::Value| v.as_i64().unwrap_or(0);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mut r = Rollout {
        generation: obj.metadata.generation.unwrap_or(0),
        observed: n(&st["observedGeneration"]),
        strategy: spec["updateStrategy"]["type"]
            .as_str()
            .unwrap_or("RollingUpdate")
            .to_string(),
        ..Rollout::default()
    };
    if kind == "DaemonSet" {
        r.desired = n(&st["desiredNumberScheduled"]);
        r.current = n(&st["currentNumberScheduled"]);
        r.ready = n(&st["numberReady"]);
        r.available = n(&st["numberAvailable"]);
        r.updated = n(&st["updatedNumberScheduled"]);
        r.unavailable = n(&st["numberUnavailable"]);
        return r;
    }
    r.desired = spec["replicas"].as_i64().unwrap_or(1);
    r.current = n(&st["replicas"]);
    r.ready = n(&st["readyReplicas"]);
    // availableReplicas is reported by Deployments and (1.22+) StatefulSets;
    // where a controller leaves it out, ready is the best it says.
    r.available = st["availableReplicas"].as_i64().unwrap_or(r.ready);
    r.updated = n(&st["updatedReplicas"]);
    r.unavailable = n(&st["unavailableReplicas"]);
    r.partition = n(&spec["updateStrategy"]["rollingUpdate"]["partition"]);
    r.revisions = (text(&st["currentRevision"]), text(&st["updateRevision"]));
    r.deadline_exceeded = st["conditions"].as_array().and_then(|cs| {
        cs.iter()
            .find(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded")
            .map(|c| text(&c["message"]))
    });
    r
}

/// The workload a target names: `kubernetes.workload` with an optional
/// `workload` field (deployment, statefulset, daemonset; default
/// deployment), or the owner of a `kubernetes.pod`.
pub(super) async fn target_workload(k: &Kube, req: &Request) -> Result<Workload, DriverError> {
    Ok(target_workload_and_pod(k, req).await?.0)
}

/// [`target_workload`], with the pod when the target is one.
pub(super) async fn target_workload_and_pod(
    k: &Kube,
    req: &Request,
) -> Result<(Workload, Option<Pod>), DriverError> {
    let (ns, name) = (req.field("namespace")?, req.field("name")?);
    if req.target.get("kind").map(String::as_str) == Some("kubernetes.pod") {
        let pod = Api::<Pod>::namespaced(k.client.clone(), ns)
            .get(name)
            .await
            .map_err(|e| api_err(&format!("pod {ns}/{name}"), e))?;
        let w = owner_of(&k.client, &pod).await?.ok_or_else(|| {
            DriverError::permanent(format!("pod {ns}/{name} has no controller to act on"))
        })?;
        return Ok((w, Some(pod)));
    }
    let kind = match req
        .target
        .get("workload")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("deployment") => "Deployment",
        Some("statefulset") => "StatefulSet",
        Some("daemonset") => "DaemonSet",
        Some(other) => {
            return Err(DriverError::permanent(format!(
                "target.workload {other:?}: expected deployment, statefulset or daemonset"
            )))
        }
    };
    Ok((
        Workload {
            kind: kind.into(),
            namespace: ns.into(),
            name: name.into(),
        },
        None,
    ))
}

pub(super) async fn verify_rollout(k: &Kube, plan: &Plan) -> Result<Verdict, DriverError> {
    let w = Workload::from_details(&plan.details);
    let obj = get_workload(&k.client, &w).await?;
    let r = rollout_of(&obj, &w.kind);
    let applied_gen = plan.details["appliedGeneration"].as_i64().unwrap_or(0);
    if r.observed < applied_gen {
        return Ok(Verdict::Pending(format!(
            "rollout of {}: waiting for the controller to observe generation {applied_gen} (observed {})",
            w.display(),
            r.observed
        )));
    }
    Ok(match r.state(&w.kind) {
        RolloutState::Complete(m) => Verdict::Verified(format!(
            "rollout of {} complete: {m}, generation {} observed",
            w.display(),
            r.observed
        )),
        RolloutState::Progressing(m) => {
            Verdict::Pending(format!("rollout of {}: {m}", w.display()))
        }
        RolloutState::Failed(m) => Verdict::Failed(format!("rollout of {}: {m}", w.display())),
    })
}

pub(super) fn workload_details(w: &Workload, obj: &DynamicObject) -> serde_json::Value {
    json!({
        "kind": w.kind,
        "namespace": w.namespace,
        "name": w.name,
        "resourceVersion": obj.metadata.resource_version,
        "generation": obj.metadata.generation,
    })
}
