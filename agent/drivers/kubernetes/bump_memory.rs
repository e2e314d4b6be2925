//! `kubernetes.workload.bump-memory`: raise an OOM-killed container's
//! memory limit in its owning workload; its parameters and driver.

use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::events::event;
use super::workload::{
    dynamic_api, get_workload, owner_of, target_workload, verify_rollout, workload_details,
    Workload,
};
use super::{api_err, Kube};
use crate::drivers::action::{
    target_display, Action, ActionSpec, DriverError, Outcome, Params, Plan, Request, Scope,
    ScopeKind, Target, Verdict,
};
use crate::units::{ByteSize, Step};

/// `kubernetes.workload.bump-memory` in the catalogue.
pub const SPEC: ActionSpec = ActionSpec::of::<BumpMemory>(
    "kubernetes.workload.bump-memory",
    "kubernetes",
    "Raise an OOM-killed container's memory limit in its owning workload, by a step up to a ceiling.",
    ScopeKind::Cluster,
    600,
    &[
        ("kubernetes.pod", &["namespace", "name"]),
        ("kubernetes.workload", &["namespace", "name"]),
    ],
);

fn default_step() -> Step {
    Step::Percent(0.25)
}

fn yes() -> bool {
    true
}

/// `kubernetes.workload.bump-memory`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "KubernetesBumpMemory")]
pub struct BumpMemory {
    /// Container to raise; when unset or empty, the one the pod's status
    /// says was OOM-killed last.
    #[serde(default)]
    pub container: Option<String>,
    /// Increase per run: `25%` (default) or a size such as `256Mi`.
    #[serde(default = "default_step")]
    pub step: Step,
    /// Never raise the limit above this.
    pub ceiling: ByteSize,
    /// Raise the memory request (when one is set) by the same step from its
    /// own value, never above the new limit.
    #[serde(default = "yes")]
    pub bump_request: bool,
}

impl Params for BumpMemory {
    fn describe(&self, t: &Target) -> String {
        let c = self
            .container
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(|c| format!("container {c}"))
            .unwrap_or_else(|| "the OOM-killed container".into());
        format!(
            "raise the memory limit of {c} in the workload owning {} by {}, up to {}",
            target_display(t),
            self.step,
            self.ceiling
        )
    }
}

/// `kubernetes.workload.bump-memory`: raise an OOM-killed container's limit.
#[derive(Debug)]
pub struct KubeBumpMemory(pub Arc<Kube>);

/// The container to bump: the one named, else the last OOM-killed one.
fn oom_container(pod: &Pod, named: Option<&str>) -> Option<String> {
    // An empty name (the alert had no `container` label) is no name.
    if let Some(n) = named.filter(|n| !n.is_empty()) {
        return Some(n.to_string());
    }
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| {
            let t = c.last_state.as_ref()?.terminated.as_ref()?;
            (t.reason.as_deref() == Some("OOMKilled")).then(|| c.name.clone())
        })
}

#[async_trait]
impl Action for KubeBumpMemory {
    fn name(&self) -> &'static str {
        SPEC.name
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        let p: BumpMemory = req.parsed()?;
        let (ns, name) = (req.field("namespace")?, req.field("name")?);
        let (w, container) = if req.target.get("kind").map(String::as_str) == Some("kubernetes.pod")
        {
            let pod = Api::<Pod>::namespaced(self.0.client.clone(), ns)
                .get(name)
                .await
                .map_err(|e| api_err(&format!("pod {ns}/{name}"), e))?;
            let c = oom_container(&pod, p.container.as_deref()).ok_or_else(|| {
                DriverError::permanent(format!(
                    "pod {ns}/{name} has no OOM-killed container (name one with `container`)"
                ))
            })?;
            let w = owner_of(&self.0.client, &pod).await?.ok_or_else(|| {
                DriverError::permanent(format!(
                    "pod {ns}/{name} has no controller whose template could be changed"
                ))
            })?;
            (w, c)
        } else {
            let w = target_workload(&self.0, req).await?;
            let c = p
                .container
                .clone()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    DriverError::permanent("name the container to bump with `container`")
                })?;
            (w, c)
        };
        let obj = get_workload(&self.0.client, &w).await?;
        let containers = obj.data["spec"]["template"]["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let c = containers
            .iter()
            .find(|c| c["name"] == container.as_str())
            .ok_or_else(|| {
                DriverError::permanent(format!("{} has no container {container}", w.display()))
            })?;
        let limit = c["resources"]["limits"]["memory"].as_str().ok_or_else(|| {
            DriverError::permanent(format!(
                "container {container} of {} has no memory limit to raise",
                w.display()
            ))
        })?;
        let current: ByteSize = limit
            .parse()
            .map_err(|e| DriverError::permanent(format!("memory limit {limit:?}: {e}")))?;
        if current.0 >= p.ceiling.0 {
            return Err(DriverError::permanent(format!(
                "container {container} of {} is already at {limit}, the ceiling is {}: not raising",
                w.display(),
                p.ceiling
            )));
        }
        let new = p.step.bumped(current.0, p.ceiling);
        // The request is raised by the same step from its own value (never
        // above the new limit), not set to the limit: a bigger request than
        // needed can leave the new pod unschedulable.
        let request = match c["resources"]["requests"]["memory"].as_str() {
            Some(r) if p.bump_request => {
                let cur: ByteSize = r
                    .parse()
                    .map_err(|e| DriverError::permanent(format!("memory request {r:?}: {e}")))?;
                Some((cur.0, p.step.bumped(cur.0, ByteSize(new)).max(cur.0)))
            }
            _ => None,
        };
        let mut details = workload_details(&w, &obj);
        details["container"] = json!(container);
        details["from"] = json!(current.0);
        details["to"] = json!(new);
        details["bumpRequest"] = json!(request.is_some());
        if let Some((from, to)) = request {
            details["requestFrom"] = json!(from);
            details["requestTo"] = json!(to);
        }
        let request_note = request
            .map(|(from, to)| format!(", request {} to {}", ByteSize(from), ByteSize(to)))
            .unwrap_or_default();
        let mut evidence = json!({
            "container": container,
            "memory limit": format!("{current} → {}", ByteSize(new)),
            "ceiling": format!(
                "{} ({} left after this bump)",
                p.ceiling,
                crate::units::human_bytes(p.ceiling.0.saturating_sub(new))
            ),
        });
        if let Some((from, to)) = request {
            evidence["memory request"] = json!(format!("{} → {}", ByteSize(from), ByteSize(to)));
        }
        details["evidence"] = evidence;
        Ok(Plan {
            summary: format!(
                "raise memory of container {container} in {} from {} to {} (ceiling {}){request_note}",
                w.display(),
                current,
                ByteSize(new),
                p.ceiling
            ),
            details,
        })
    }
    async fn apply(&self, _: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let d = &plan.details;
        let w = Workload::from_details(d);
        let container = d["container"].as_str().unwrap_or_default();
        let new = d["to"].as_u64().unwrap_or_default();
        let q = ByteSize(new).to_string();
        let mut resources = json!({"limits": {"memory": q}});
        if d["bumpRequest"] == true {
            let r = ByteSize(d["requestTo"].as_u64().unwrap_or(new)).to_string();
            resources["requests"] = json!({"memory": r});
        }
        // Strategic merge by container name, with the resourceVersion read in
        // plan as a precondition: a concurrent change makes this a 409.
        let patch = json!({
            "metadata": {"resourceVersion": d["resourceVersion"]},
            "spec": {"template": {"spec": {"containers": [{"name": container, "resources": resources}]}}}
        });
        let obj = dynamic_api(&self.0.client, &w)?
            .patch(&w.name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .map_err(|e| api_err(&format!("patch {}", w.display()), e))?;
        Ok(Outcome {
            summary: format!(
                "container {container} of {}: memory limit {} -> {}",
                w.display(),
                ByteSize(d["from"].as_u64().unwrap_or_default()),
                ByteSize(new)
            ),
            details: json!({"appliedGeneration": obj.metadata.generation}),
        })
    }
    async fn verify(&self, _: &Request, plan: &Plan) -> Result<Verdict, DriverError> {
        verify_rollout(&self.0, plan).await
    }
    async fn record(&self, req: &Request, ok: bool, message: &str) {
        event(&self.0, req, "", ok, SPEC.name, message).await;
    }
}
