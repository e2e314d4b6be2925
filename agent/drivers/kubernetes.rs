//! Kubernetes actions: parameters and offline descriptions. The driver
//! (kube client, Leases, Events) arrives with the Kubernetes backend.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::action::{target_display, Params, Target};
use crate::units::{ByteSize, Step};

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
    /// Container to raise; the OOM-killed one (alert label `container`) when unset.
    #[serde(default)]
    pub container: Option<String>,
    /// Increase per run: `25%` (default) or a size such as `256Mi`.
    #[serde(default = "default_step")]
    pub step: Step,
    /// Never raise the limit above this.
    pub ceiling: ByteSize,
    /// Raise the memory request by the same step when one is set.
    #[serde(default = "yes")]
    pub bump_request: bool,
}

impl Params for BumpMemory {
    fn describe(&self, t: &Target) -> String {
        let c = self
            .container
            .as_deref()
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
