//! Spark executor memory: on spark-operator SparkApplications (Kubernetes)
//! or on a Swarm service's spark-defaults.conf config.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::action::{target_display, Params, Target};
use crate::units::{ByteSize, Step};

/// Executor cores bump.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "SparkCoresBump")]
pub struct CoresBump {
    /// Cores added per run.
    pub step: u32,
    /// Never above this.
    pub ceiling: u32,
}

/// `spark.executor.bump-memory`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "SparkBumpMemory")]
pub struct BumpMemory {
    /// Increase of spark.executor.memory per run: `25%` (default) or a size such as `1g`.
    #[serde(default = "default_step")]
    pub step: Step,
    /// Never raise spark.executor.memory above this.
    pub ceiling: ByteSize,
    /// Also raise memoryOverhead in proportion.
    #[serde(default)]
    pub bump_overhead: bool,
    /// Optionally raise executor cores too.
    #[serde(default)]
    pub cores: Option<CoresBump>,
}

fn default_step() -> Step {
    Step::Percent(0.25)
}

impl Params for BumpMemory {
    fn check(&self) -> Result<(), String> {
        if let Some(c) = &self.cores {
            if c.step == 0 || c.ceiling == 0 {
                return Err("cores.step and cores.ceiling must be at least 1".into());
            }
        }
        Ok(())
    }
    fn describe(&self, t: &Target) -> String {
        let cores = self
            .cores
            .as_ref()
            .map(|c| format!(", cores +{} up to {}", c.step, c.ceiling))
            .unwrap_or_default();
        format!(
            "raise spark.executor.memory of {} by {}, up to {}{cores}; takes effect on the next run",
            target_display(t),
            self.step,
            self.ceiling
        )
    }
}

/// Spark's memory notation: `512m`, `4g` (binary).
pub fn spark_memory(bytes: u64) -> String {
    const MI: u64 = 1 << 20;
    const GI: u64 = 1 << 30;
    if bytes.is_multiple_of(GI) {
        format!("{}g", bytes / GI)
    } else {
        format!("{}m", bytes.div_ceil(MI))
    }
}
