//! `swarm.service.restart`: a rolling restart of a Swarm service's tasks
//! (`docker service update --force`); its parameters and driver.

use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::swarm::{service, tasks_converged, update};
use super::Engine;
use crate::drivers::action::{
    target_display, Action, ActionSpec, DriverError, Outcome, Params, Plan, Request, Scope,
    ScopeKind, Target, Verdict,
};

/// `swarm.service.restart` in the catalogue.
pub const SPEC: ActionSpec = ActionSpec::of::<ServiceRestart>(
    "swarm.service.restart",
    "swarm",
    "Force a rolling restart of a Swarm service's tasks (docker service update --force).",
    ScopeKind::Cluster,
    600,
    &[("swarm.service", &["name"])],
);

/// `swarm.service.restart`
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "SwarmServiceRestart")]
pub struct ServiceRestart {}

impl Params for ServiceRestart {
    fn describe(&self, t: &Target) -> String {
        format!(
            "force a rolling restart of {} (docker service update --force)",
            target_display(t)
        )
    }
}

/// `swarm.service.restart`: `docker service update --force`.
#[derive(Debug)]
pub struct SwarmServiceRestart(pub Arc<Engine>);

#[async_trait]
impl Action for SwarmServiceRestart {
    fn name(&self) -> &'static str {
        SPEC.name
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        let name = req.field("name")?;
        let s = service(&self.0.docker, name).await?;
        let force = s
            .spec
            .as_ref()
            .and_then(|sp| sp.task_template.as_ref())
            .and_then(|t| t.force_update)
            .unwrap_or(0);
        Ok(Plan {
            summary: format!(
                "force a rolling restart of service {name} (ForceUpdate {force} -> {})",
                force + 1
            ),
            details: json!({"version": s.version.and_then(|v| v.index), "force": force + 1}),
        })
    }
    async fn apply(&self, req: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let name = req.field("name")?;
        let s = service(&self.0.docker, name).await?;
        let mut spec = s.spec.unwrap_or_default();
        let force = plan.details["force"].as_u64().unwrap_or(1);
        let tt = spec.task_template.get_or_insert_with(Default::default);
        if tt.force_update.unwrap_or(0) >= force {
            return Ok(Outcome {
                summary: format!(
                    "service {name} was already force-updated (ForceUpdate {})",
                    tt.force_update.unwrap_or(0)
                ),
                details: json!({}),
            });
        }
        tt.force_update = Some(force);
        // The version read now: the manager rejects the update if the
        // service changed in between (update out of sequence).
        let version = s.version.and_then(|v| v.index).unwrap_or(0);
        update(&self.0.docker, name, version, spec).await?;
        Ok(Outcome {
            summary: format!("service {name} updated with --force (ForceUpdate {force})"),
            details: json!({}),
        })
    }
    async fn verify(&self, req: &Request, plan: &Plan) -> Result<Verdict, DriverError> {
        let name = req.field("name")?;
        let force = plan.details["force"].as_u64().unwrap_or(1);
        tasks_converged(&self.0.docker, name, |t| {
            t.force_update.unwrap_or(0) >= force
        })
        .await
    }
}
