//! The Policy document.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::playbook::model::{ApiVersion, Metadata, Mode};
use crate::units::Duration;

/// Limits, windows and scope that gate every playbook naming this policy.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    /// Always `remediate/v1`.
    pub api_version: ApiVersion,
    /// Always `Policy`.
    pub kind: PolicyKind,
    /// Name (playbooks refer to it) and documentation.
    pub metadata: Metadata,
    /// The rules.
    pub spec: PolicySpec,
}

/// The `kind` of a policy document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PolicyKind {
    /// `Policy`
    Policy,
}

/// The rules of a policy.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    /// `dry-run` puts every playbook using this policy in shadow mode.
    #[serde(default)]
    pub mode: Mode,
    /// Sliding-window limits on executed actions.
    #[serde(default)]
    pub rate_limits: Vec<RateLimit>,
    /// Minimum time between runs of the same playbook on the same target.
    #[serde(default)]
    pub cooldown: Option<Duration>,
    /// Actions in flight at once, cluster-wide.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Stop acting after repeated failures.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Freeze and maintenance windows.
    #[serde(default)]
    pub windows: Windows,
    /// What the agent may touch at all.
    #[serde(default)]
    pub scope: ScopeRules,
    /// Limits on how much one run may affect.
    #[serde(default)]
    pub blast_radius: Option<BlastRadius>,
    /// Whether a person must approve first.
    #[serde(default)]
    pub approval: Approval,
    /// Notification sinks (names from the agent config).
    #[serde(default)]
    pub notify: Vec<String>,
    /// While a run executes, silence its alert in Alertmanager (the agent
    /// config's `alertmanager`), so on-call is not paged for what the agent
    /// is already fixing; the silence is expired when the run ends, and
    /// ends by itself after the run's timeouts if the agent dies.
    #[serde(default)]
    pub silence_while_acting: bool,
}

/// What a rate limit counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RateScope {
    /// Every action of every playbook using this policy.
    Global,
    /// Each playbook separately.
    Playbook,
    /// Each playbook and target separately.
    Target,
}

/// At most `max` executed actions per `per`, counted per `scope`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    /// What is counted together.
    pub scope: RateScope,
    /// How many in the window.
    pub max: u32,
    /// The sliding window.
    pub per: Duration,
}

/// Opens after `failures` failed actions within `within`, for `openFor`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Failed or unverified actions that open the breaker.
    pub failures: u32,
    /// The window they are counted in.
    pub within: Duration,
    /// How long it stays open.
    pub open_for: Duration,
}

/// Time windows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Windows {
    /// IANA time zone the windows' cron expressions are read in, e.g.
    /// `Europe/Berlin` (daylight-saving changes included). Default UTC.
    #[serde(default)]
    pub timezone: Option<String>,
    /// No changes while any of these is open.
    #[serde(default)]
    pub freeze: Vec<Window>,
    /// When set, changes only while one of these is open.
    #[serde(default)]
    pub maintenance: Vec<Window>,
}

/// A window: opens at each cron time and stays open for `duration` of
/// elapsed time; a window may wrap midnight (`0 0 22 * * *` for 8h is 22:00
/// to 06:00). On the night clocks go back, a window spanning the change ends
/// an hour earlier by the wall clock.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Window {
    /// When it opens (cron with a seconds field, in `windows.timezone`).
    pub cron: String,
    /// How long it stays open.
    pub duration: Duration,
}

/// What the agent may touch.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScopeRules {
    /// Namespace allow and deny lists (targets with a `namespace` field).
    #[serde(default)]
    pub namespaces: NamespaceRules,
    /// A label that opts an object out (`remediate.io/disabled`). Alert labels are
    /// checked in Prometheus form too (`remediate_io_disabled`, `label_remediate_io_disabled`).
    #[serde(default = "default_opt_out")]
    pub opt_out_label: Option<String>,
}

impl Default for ScopeRules {
    fn default() -> Self {
        Self {
            namespaces: NamespaceRules::default(),
            opt_out_label: default_opt_out(),
        }
    }
}

fn default_opt_out() -> Option<String> {
    Some("remediate.io/disabled".into())
}

/// Namespace lists. Deny wins over allow; an empty allow list allows all.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceRules {
    /// Only these namespaces, when non-empty.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Never these. Defaults to kube-system and kube-public.
    #[serde(default = "default_deny")]
    pub deny: Vec<String>,
}

impl Default for NamespaceRules {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            deny: default_deny(),
        }
    }
}

fn default_deny() -> Vec<String> {
    vec!["kube-system".into(), "kube-public".into()]
}

/// Blast-radius limits.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlastRadius {
    /// Targets one run may act on.
    #[serde(default)]
    pub max_targets_per_run: Option<u32>,
    /// Fraction of a workload's replicas that may be unavailable because of us.
    #[serde(default)]
    pub max_unavailable_fraction: Option<f64>,
}

/// Approval requirements.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Approval {
    /// Every run needs approval.
    #[serde(default)]
    pub required: bool,
    /// Only runs of these actions need approval (when `required` is false).
    #[serde(default)]
    pub actions: Vec<String>,
    /// A pending approval expires after this.
    #[serde(default)]
    pub timeout: Option<Duration>,
}
