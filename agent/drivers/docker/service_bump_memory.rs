//! `swarm.service.bump-memory`: raise a Swarm service's memory limit (and
//! reservation) by a step up to a ceiling; its parameters and driver.

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
use crate::units::{ByteSize, Step};

/// `swarm.service.bump-memory` in the catalogue.
pub const SPEC: ActionSpec = ActionSpec::of::<ServiceBumpMemory>(
    "swarm.service.bump-memory",
    "swarm",
    "Raise a Swarm service's memory limit (and reservation) by a step up to a ceiling.",
    ScopeKind::Cluster,
    600,
    &[("swarm.service", &["name"])],
);

/// `swarm.service.bump-memory`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "SwarmServiceBumpMemory")]
pub struct ServiceBumpMemory {
    /// Increase per run: `25%` (default) or a size.
    #[serde(default = "default_step")]
    pub step: Step,
    /// Never above this.
    pub ceiling: ByteSize,
    /// Raise the memory reservation by the same step when one is set.
    #[serde(default = "super::yes")]
    pub bump_reservation: bool,
}

fn default_step() -> Step {
    Step::Percent(0.25)
}

impl Params for ServiceBumpMemory {
    fn describe(&self, t: &Target) -> String {
        format!(
            "raise the memory limit of {} by {}, up to {}",
            target_display(t),
            self.step,
            self.ceiling
        )
    }
}

/// `swarm.service.bump-memory`: limits (and reservations) by a step up to a ceiling.
#[derive(Debug)]
pub struct SwarmServiceBumpMemory(pub Arc<Engine>);

#[async_trait]
impl Action for SwarmServiceBumpMemory {
    fn name(&self) -> &'static str {
        SPEC.name
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        let p: ServiceBumpMemory = req.parsed()?;
        let name = req.field("name")?;
        let s = service(&self.0.docker, name).await?;
        let cur = s
            .spec
            .as_ref()
            .and_then(|sp| sp.task_template.as_ref())
            .and_then(|t| t.resources.as_ref())
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.memory_bytes)
            .ok_or_else(|| {
                DriverError::permanent(format!("service {name} has no memory limit to raise"))
            })? as u64;
        if cur >= p.ceiling.0 {
            return Err(DriverError::permanent(format!(
                "service {name} already has {}, the ceiling is {}: not raising",
                ByteSize(cur),
                p.ceiling
            )));
        }
        let new = p.step.bumped(cur, p.ceiling);
        Ok(Plan {
            summary: format!(
                "raise the memory limit of service {name} from {} to {} (ceiling {})",
                ByteSize(cur),
                ByteSize(new),
                p.ceiling
            ),
            details: json!({"from": cur, "to": new, "version": s.version.and_then(|v| v.index)}),
        })
    }
    async fn apply(&self, req: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let p: ServiceBumpMemory = req.parsed()?;
        let name = req.field("name")?;
        let s = service(&self.0.docker, name).await?;
        let version = s.version.and_then(|v| v.index).unwrap_or(0);
        if Some(version) != plan.details["version"].as_u64() {
            return Err(DriverError::retryable(format!(
                "service {name} changed since the plan (version {} -> {version}): not applying a stale bump",
                plan.details["version"]
            )));
        }
        let new = plan.details["to"].as_u64().unwrap_or_default() as i64;
        let mut spec = s.spec.unwrap_or_default();
        let res = spec
            .task_template
            .get_or_insert_with(Default::default)
            .resources
            .get_or_insert_with(Default::default);
        res.limits.get_or_insert_with(Default::default).memory_bytes = Some(new);
        if p.bump_reservation {
            if let Some(r) = res
                .reservations
                .as_mut()
                .filter(|r| r.memory_bytes.is_some())
            {
                r.memory_bytes = Some(new);
            }
        }
        update(&self.0.docker, name, version, spec).await?;
        Ok(Outcome {
            summary: format!(
                "service {name}: memory limit {} -> {}",
                ByteSize(plan.details["from"].as_u64().unwrap_or_default()),
                ByteSize(new as u64)
            ),
            details: json!({}),
        })
    }
    async fn verify(&self, req: &Request, plan: &Plan) -> Result<Verdict, DriverError> {
        let name = req.field("name")?;
        let new = plan.details["to"].as_u64().unwrap_or_default() as i64;
        tasks_converged(&self.0.docker, name, |t| {
            t.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.memory_bytes)
                == Some(new)
        })
        .await
    }
}
