//! `kubernetes.workload.rollout-restart`: restart a workload the way
//! `kubectl rollout restart` does; its parameters and driver.

use std::sync::Arc;

use async_trait::async_trait;
use kube::api::{Patch, PatchParams};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::events::event;
use super::pod_evidence::{collect, owner_line};
use super::workload::{
    controller, dynamic_api, get_workload, rollout_of, target_workload_and_pod, verify_rollout,
    workload_details, Workload,
};
use super::{api_err, Kube};
use crate::drivers::action::{
    target_display, Action, ActionSpec, DriverError, Outcome, Params, Plan, Request, Scope,
    ScopeKind, Target, Verdict,
};

/// `kubernetes.workload.rollout-restart` in the catalogue.
pub const SPEC: ActionSpec = ActionSpec::of::<RolloutRestart>(
    "kubernetes.workload.rollout-restart",
    "kubernetes",
    "Restart a Deployment, StatefulSet or DaemonSet the way `kubectl rollout restart` does.",
    ScopeKind::Cluster,
    600,
    &[
        ("kubernetes.workload", &["namespace", "name"]),
        ("kubernetes.pod", &["namespace", "name"]),
    ],
);

/// `kubernetes.workload.rollout-restart`
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "KubernetesRolloutRestart")]
pub struct RolloutRestart {}

impl Params for RolloutRestart {
    fn describe(&self, t: &Target) -> String {
        if t.get("kind").map(String::as_str) == Some("kubernetes.pod") {
            format!(
                "rollout-restart the workload that owns {}",
                target_display(t)
            )
        } else {
            format!("rollout-restart {}", target_display(t))
        }
    }
}

/// `kubernetes.workload.rollout-restart`, as `kubectl rollout restart` does it.
#[derive(Debug)]
pub struct KubeRolloutRestart(pub Arc<Kube>);

#[async_trait]
impl Action for KubeRolloutRestart {
    fn name(&self) -> &'static str {
        SPEC.name
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        let (w, pod) = target_workload_and_pod(&self.0, req).await?;
        let obj = get_workload(&self.0.client, &w).await?;
        let r = rollout_of(&obj, &w.kind);
        let mut details = workload_details(&w, &obj);
        // Restarting a pod's owner: what the pod went through, as for a
        // pod restart.
        if let Some(pod) = &pod {
            let direct =
                controller(pod.metadata.owner_references.as_ref()).map(|o| o.name.as_str());
            let evidence = collect(
                &self.0.client,
                pod,
                req.target.get("container").map(String::as_str),
                owner_line(&w, direct, &r),
            )
            .await;
            details["evidence"] = evidence.into();
        }
        Ok(Plan {
            summary: format!(
                "rollout-restart {} ({}/{} ready)",
                w.display(),
                r.ready,
                r.desired
            ),
            details,
        })
    }
    async fn apply(&self, _: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let w = Workload::from_details(&plan.details);
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": now
        }}}}});
        let obj = dynamic_api(&self.0.client, &w)?
            .patch(&w.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_err(&format!("patch {}", w.display()), e))?;
        Ok(Outcome {
            summary: format!(
                "restarted {} (restartedAt {now}, generation {})",
                w.display(),
                obj.metadata.generation.unwrap_or(0)
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
