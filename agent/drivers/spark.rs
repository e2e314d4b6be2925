//! `spark.executor.bump-memory`, one action driven by two backends: its
//! parameters, its catalogue entry, which backend drives which target kind,
//! and the memory notation both drivers write.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::action::{target_display, ActionSpec, DriverError, Params, ScopeKind, Target};
use crate::units::{ByteSize, Step};

// The routing by target kind, decided here and nowhere else: each backend's
// table has one `Entry::for_kind(&spark::SPEC, spark::ON_...)` line, and the
// registry's by-kind router dispatches on the target's `kind`.

/// Spark-operator SparkApplications, driven by the Kubernetes backend
/// (`kubernetes::spark_application`).
pub const ON_KUBERNETES: &str = "spark.application";
/// Swarm services that mount a spark-defaults.conf config, driven by the
/// Docker backend (`docker::spark_conf`).
pub const ON_SWARM: &str = "swarm.service";

/// `spark.executor.bump-memory` in the catalogue.
pub const SPEC: ActionSpec = ActionSpec::of::<BumpMemory>(
    "spark.executor.bump-memory",
    "spark",
    "Raise spark.executor.memory of a Spark application within a ceiling, for its next run.",
    ScopeKind::Cluster,
    300,
    &[
        (ON_KUBERNETES, &["namespace", "name"]),
        (ON_SWARM, &["name"]),
    ],
);

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

impl BumpMemory {
    /// The executor memory to set, from the current `spark.executor.memory`
    /// (`mem`, of the application called `what`): the current and the new
    /// bytes, or why it is not raised.
    pub fn next(&self, mem: &str, key: &str, what: &str) -> Result<(u64, u64), DriverError> {
        let current: ByteSize = mem
            .parse()
            .map_err(|e| DriverError::permanent(format!("{key} {mem:?}: {e}")))?;
        if current.0 >= self.ceiling.0 {
            return Err(DriverError::permanent(format!(
                "{what} executors already have {mem}, the ceiling is {}: not raising",
                self.ceiling
            )));
        }
        Ok((current.0, self.step.bumped(current.0, self.ceiling)))
    }
}
