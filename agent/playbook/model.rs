//! The Playbook document, as users write it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::Duration;

/// API version of every document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    /// The only version so far.
    #[serde(rename = "remediate/v1")]
    V1,
}

/// A remediation playbook: which events it answers, what it acts on, and how.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Playbook {
    /// Always `remediate/v1`.
    pub api_version: ApiVersion,
    /// Always `Playbook`.
    pub kind: PlaybookKind,
    /// Name and documentation.
    pub metadata: Metadata,
    /// What triggers it and what it does.
    pub spec: PlaybookSpec,
}

/// The `kind` of a playbook document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PlaybookKind {
    /// `Playbook`
    Playbook,
}

/// Name and documentation of a document.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// Unique name: lower-case letters, digits and `-`.
    pub name: String,
    /// One sentence on what it does and why.
    #[serde(default)]
    pub description: Option<String>,
    /// Link to the runbook a person follows when this fires; carried in notifications.
    #[serde(default)]
    pub runbook: Option<String>,
}

/// What triggers a playbook and what it does.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlaybookSpec {
    /// Alert matchers and/or cron schedules. At least one.
    pub triggers: Vec<Trigger>,
    /// Values the templates may read as `values.NAME`: set by `--set`, by a
    /// schedule, or taken from the default. A value with no default must be set.
    #[serde(default)]
    pub values: BTreeMap<String, ValueSpec>,
    /// The object acted on. `kind` is required; the other fields are templates.
    pub target: BTreeMap<String, String>,
    /// Actions, run in order; the run stops at the first failure.
    pub steps: Vec<Step>,
    /// How long to wait for the fix to show after the last step.
    #[serde(default)]
    pub verify: Option<VerifySpec>,
    /// Name of the policy that gates this playbook.
    #[serde(default = "default_policy")]
    pub policy: String,
    /// `enforce` acts; `dry-run` (shadow mode) only plans and audits.
    #[serde(default)]
    pub mode: Mode,
    /// After a verified run, how long its alert may go on firing before the
    /// run is recorded `unresolved` (the fix did not help): a failure for
    /// the circuit breaker and one escalation notice. Until then the
    /// alert's resolution records the run `resolved`, with the time to
    /// resolve.
    #[serde(default = "default_escalate_after")]
    pub escalate_after: Duration,
}

fn default_policy() -> String {
    "default".into()
}

fn default_escalate_after() -> Duration {
    Duration::from_secs(15 * 60)
}

/// One trigger: exactly one of `alert` or `schedule`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Trigger {
    /// Alertmanager matchers, all of which must hold: `alertname="X"`, `namespace!~"a|b"`.
    #[serde(default)]
    pub alert: Option<Vec<String>>,
    /// Cron expression with a seconds field: `0 0 3 * * *` is 03:00 UTC daily.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Values a schedule tick passes to the templates (override the defaults).
    #[serde(default)]
    pub values: BTreeMap<String, String>,
}

/// A declared value.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ValueSpec {
    /// Used when the trigger does not set it. Without a default the value is required.
    #[serde(default)]
    pub default: Option<String>,
    /// What it is for (shown by `--help`-style listings).
    #[serde(default)]
    pub description: Option<String>,
}

/// One action of a playbook.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    /// Action name from the catalogue, e.g. `kubernetes.pod.restart`.
    pub action: String,
    /// The action's parameters; strings may be templates.
    #[serde(default, rename = "with")]
    pub with: serde_yaml::Mapping,
    /// Upper bound on this step's apply; defaults to the action's own.
    #[serde(default)]
    pub timeout: Option<Duration>,
}

/// Post-condition check.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VerifySpec {
    /// How long the fix may take to show before the run counts as failed.
    pub timeout: Duration,
}

/// Enforce or shadow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Act.
    #[default]
    Enforce,
    /// Plan, gate and audit, but never act (shadow mode).
    DryRun,
}
