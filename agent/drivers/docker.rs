//! Docker and Swarm actions.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::action::{target_display, Params, Target};
use crate::units::{ByteSize, Duration, Step};

fn yes() -> bool {
    true
}

/// `docker.prune`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "DockerPrune")]
pub struct Prune {
    /// Remove stopped containers.
    #[serde(default = "yes")]
    pub containers: bool,
    /// Remove dangling images.
    #[serde(default = "yes")]
    pub images: bool,
    /// Remove unused volumes: data loss if wrong, so off unless the playbook says so.
    #[serde(default)]
    pub volumes: bool,
    /// Remove build cache.
    #[serde(default = "yes")]
    pub build_cache: bool,
    /// Only objects older than this.
    #[serde(default = "day")]
    pub older_than: Duration,
    /// Objects carrying this label are never removed.
    #[serde(default = "keep_label")]
    pub protect_label: String,
    /// Only objects carrying this label (`key` or `key=value`), e.g.
    /// `com.docker.stack.namespace=etl`. Default: every object.
    #[serde(default)]
    pub only_label: Option<String>,
}

fn day() -> Duration {
    Duration::from_secs(86_400)
}
fn keep_label() -> String {
    "remediate.io/keep".into()
}

impl Params for Prune {
    fn check(&self) -> Result<(), String> {
        if !(self.containers || self.images || self.volumes || self.build_cache) {
            return Err(
                "nothing to prune: enable at least one of containers, images, volumes, buildCache"
                    .into(),
            );
        }
        Ok(())
    }
    fn describe(&self, t: &Target) -> String {
        let mut what = Vec::new();
        if self.containers {
            what.push("stopped containers");
        }
        if self.images {
            what.push("dangling images");
        }
        if self.volumes {
            what.push("unused volumes");
        }
        if self.build_cache {
            what.push("build cache");
        }
        format!(
            "docker prune on {}: {} older than {}; objects labelled {} kept",
            target_display(t),
            what.join(", "),
            self.older_than,
            self.protect_label
        )
    }
}

/// `docker.container.restart`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "DockerContainerRestart")]
pub struct ContainerRestart {
    /// Seconds to wait for a clean stop before killing.
    #[serde(default = "ten")]
    pub stop_timeout_seconds: u32,
}

fn ten() -> u32 {
    10
}

impl Params for ContainerRestart {
    fn describe(&self, t: &Target) -> String {
        format!(
            "restart {} (stop timeout {}s)",
            target_display(t),
            self.stop_timeout_seconds
        )
    }
}

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
    #[serde(default = "yes")]
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
