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

/// Replicas of a workload: (desired, ready, updated, generation, observed generation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Desired replicas.
    pub desired: i64,
    /// Ready replicas.
    pub ready: i64,
    /// Replicas on the newest template.
    pub updated: i64,
    /// metadata.generation.
    pub generation: i64,
    /// status.observedGeneration.
    pub observed: i64,
}

impl Rollout {
    pub(super) fn complete(&self) -> bool {
        self.observed >= self.generation
            && self.updated >= self.desired
            && self.ready >= self.desired
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
    let n = |v: &serde_json::Value| v.as_i64().unwrap_or(0);
    let desired = if kind == "DaemonSet" {
        n(&st["desiredNumberScheduled"])
    } else {
        obj.data["spec"]["replicas"].as_i64().unwrap_or(1)
    };
    let (ready, updated) = if kind == "DaemonSet" {
        (n(&st["numberReady"]), n(&st["updatedNumberScheduled"]))
    } else {
        (n(&st["readyReplicas"]), n(&st["updatedReplicas"]))
    };
    Rollout {
        desired,
        ready,
        updated,
        generation: obj.metadata.generation.unwrap_or(0),
        observed: n(&st["observedGeneration"]),
    }
}

/// The workload a target names: `kubernetes.workload` with an optional
/// `workload` field (deployment, statefulset, daemonset; default
/// deployment), or the owner of a `kubernetes.pod`.
pub(super) async fn target_workload(k: &Kube, req: &Request) -> Result<Workload, DriverError> {
    let (ns, name) = (req.field("namespace")?, req.field("name")?);
    if req.target.get("kind").map(String::as_str) == Some("kubernetes.pod") {
        let pod = Api::<Pod>::namespaced(k.client.clone(), ns)
            .get(name)
            .await
            .map_err(|e| api_err(&format!("pod {ns}/{name}"), e))?;
        return owner_of(&k.client, &pod).await?.ok_or_else(|| {
            DriverError::permanent(format!("pod {ns}/{name} has no controller to act on"))
        });
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
    Ok(Workload {
        kind: kind.into(),
        namespace: ns.into(),
        name: name.into(),
    })
}

pub(super) async fn verify_rollout(k: &Kube, plan: &Plan) -> Result<Verdict, DriverError> {
    let w = Workload::from_details(&plan.details);
    let obj = get_workload(&k.client, &w).await?;
    let r = rollout_of(&obj, &w.kind);
    let applied_gen = plan.details["appliedGeneration"].as_i64().unwrap_or(0);
    if r.complete() && r.observed >= applied_gen {
        Ok(Verdict::Verified(format!(
            "rollout of {} complete: {}/{} updated and ready, generation {} observed",
            w.display(),
            r.updated,
            r.desired,
            r.observed
        )))
    } else {
        Ok(Verdict::Pending(format!(
            "rollout of {}: {}/{} updated, {} ready, generation {}/{}",
            w.display(),
            r.updated,
            r.desired,
            r.ready,
            r.observed,
            r.generation
        )))
    }
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
