//! `kubernetes.workload.scale`: scale a workload out by a bounded step;
//! its parameters and driver.

use std::sync::Arc;

use async_trait::async_trait;
use kube::api::{Patch, PatchParams};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::events::event;
use super::workload::{
    dynamic_api, get_workload, target_workload, verify_rollout, workload_details, Workload,
};
use super::{api_err, Kube};
use crate::drivers::action::{
    target_display, Action, ActionSpec, DriverError, Outcome, Params, Plan, Request, Scope,
    ScopeKind, Target, Verdict,
};

/// `kubernetes.workload.scale` in the catalogue.
pub const SPEC: ActionSpec = ActionSpec::of::<Scale>(
    "kubernetes.workload.scale",
    "kubernetes",
    "Scale a workload out by a bounded step.",
    ScopeKind::Cluster,
    600,
    &[("kubernetes.workload", &["namespace", "name"])],
);

/// `kubernetes.workload.scale`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "KubernetesScale")]
pub struct Scale {
    /// Replicas added per run.
    #[serde(default = "one")]
    pub step: u32,
    /// Never scale above this many replicas.
    pub max_replicas: u32,
}

fn one() -> u32 {
    1
}

impl Params for Scale {
    fn check(&self) -> Result<(), String> {
        if self.step == 0 || self.max_replicas == 0 {
            return Err("step and maxReplicas must be at least 1".into());
        }
        Ok(())
    }
    fn describe(&self, t: &Target) -> String {
        format!(
            "scale {} out by {}, up to {} replicas",
            target_display(t),
            self.step,
            self.max_replicas
        )
    }
}

/// `kubernetes.workload.scale`: bounded scale out.
#[derive(Debug)]
pub struct KubeScaleOut(pub Arc<Kube>);

#[async_trait]
impl Action for KubeScaleOut {
    fn name(&self) -> &'static str {
        SPEC.name
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        let p: Scale = req.parsed()?;
        let w = target_workload(&self.0, req).await?;
        if w.kind == "DaemonSet" {
            return Err(DriverError::permanent(format!(
                "{} cannot be scaled",
                w.display()
            )));
        }
        let obj = get_workload(&self.0.client, &w).await?;
        let cur = obj.data["spec"]["replicas"].as_i64().unwrap_or(1);
        if cur >= i64::from(p.max_replicas) {
            return Err(DriverError::permanent(format!(
                "{} already has {cur} replicas, maxReplicas is {}: not scaling",
                w.display(),
                p.max_replicas
            )));
        }
        let to = (cur + i64::from(p.step)).min(i64::from(p.max_replicas));
        let mut details = workload_details(&w, &obj);
        details["from"] = json!(cur);
        details["to"] = json!(to);
        Ok(Plan {
            summary: format!(
                "scale {} from {cur} to {to} replicas (max {})",
                w.display(),
                p.max_replicas
            ),
            details,
        })
    }
    async fn apply(&self, _: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let d = &plan.details;
        let w = Workload::from_details(d);
        let to = d["to"].as_i64().unwrap_or_default();
        let patch = json!({"metadata": {"resourceVersion": d["resourceVersion"]}, "spec": {"replicas": to}});
        let obj = dynamic_api(&self.0.client, &w)?
            .patch(&w.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_err(&format!("scale {}", w.display()), e))?;
        Ok(Outcome {
            summary: format!("scaled {} from {} to {to} replicas", w.display(), d["from"]),
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
