//! The base every backend depends on: the [`Action`] trait a driver
//! implements, what it is given and returns, and the catalogue entry
//! ([`ActionSpec`]) built from an action's [`Params`] type.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Where an action runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeKind {
    /// Once per cluster.
    Cluster,
    /// On the node named by the target's `node` field.
    Node,
}

/// Parameters of one action.
pub trait Params: DeserializeOwned + Serialize + JsonSchema {
    /// Checks beyond types (ranges, absolute paths).
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
    /// What the action would do, for offline dry-run and plans.
    fn describe(&self, target: &Target) -> String;
}

/// Rendered target fields.
pub type Target = BTreeMap<String, String>;

/// One catalogue entry.
pub struct ActionSpec {
    /// Name, e.g. `kubernetes.pod.restart`.
    pub name: &'static str,
    /// One line for listings.
    pub summary: &'static str,
    /// The backend whose driver executes it.
    pub backend: &'static str,
    /// Accepted target kinds, each with the fields it requires.
    pub targets: &'static [(&'static str, &'static [&'static str])],
    /// Cluster or node scoped.
    pub scope: ScopeKind,
    /// Upper bound on apply when the step sets none.
    pub default_timeout_secs: u64,
    /// Validates parameters and returns them with defaults filled in.
    pub normalize: fn(serde_json::Value) -> Result<serde_json::Value, String>,
    /// The parameters' JSON Schema.
    pub schema: fn(&mut SchemaGenerator) -> Schema,
    /// Offline description of the effect.
    pub describe: fn(&Target, &serde_json::Value) -> String,
}

impl std::fmt::Debug for ActionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionSpec")
            .field("name", &self.name)
            .finish()
    }
}

fn normalize<P: Params>(v: serde_json::Value) -> Result<serde_json::Value, String> {
    let p: P = serde_json::from_value(v).map_err(|e| e.to_string())?;
    p.check()?;
    serde_json::to_value(&p).map_err(|e| e.to_string())
}

fn schema<P: Params>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<P>()
}

fn describe<P: Params>(t: &Target, v: &serde_json::Value) -> String {
    match serde_json::from_value::<P>(v.clone()) {
        Ok(p) => p.describe(t),
        Err(e) => format!("(parameters do not validate: {e})"),
    }
}

impl ActionSpec {
    /// The catalogue entry of an action whose parameters are `P`: targets
    /// are (kind, required fields) pairs.
    pub const fn of<P: Params>(
        name: &'static str,
        backend: &'static str,
        summary: &'static str,
        scope: ScopeKind,
        default_timeout_secs: u64,
        targets: &'static [(&'static str, &'static [&'static str])],
    ) -> Self {
        Self {
            name,
            summary,
            backend,
            targets,
            scope,
            default_timeout_secs,
            normalize: normalize::<P>,
            schema: schema::<P>,
            describe: describe::<P>,
        }
    }
}

/// One row of a backend's table of actions: the action's catalogue entry
/// and how the backend builds its driver from its client `C`.
pub struct Entry<C> {
    /// The catalogue entry.
    pub spec: &'static ActionSpec,
    /// `Some(kind)`: this backend drives the action for targets of that kind
    /// only, beside other backends for other kinds; the action's module,
    /// not the backend, lists it in the catalogue.
    pub kind: Option<&'static str>,
    /// Builds the driver.
    pub new: fn(&C) -> Arc<dyn Action>,
}

impl<C> Entry<C> {
    /// An action of this backend.
    pub const fn new(spec: &'static ActionSpec, new: fn(&C) -> Arc<dyn Action>) -> Self {
        Self {
            spec,
            kind: None,
            new,
        }
    }

    /// This backend's driver of a shared action, for targets of `kind`.
    pub const fn for_kind(
        spec: &'static ActionSpec,
        kind: &'static str,
        new: fn(&C) -> Arc<dyn Action>,
    ) -> Self {
        Self {
            spec,
            kind: Some(kind),
            new,
        }
    }
}

/// A short human name for a target: `pod etl/spark-driver-1`, `host node-1`.
pub fn target_display(t: &Target) -> String {
    let kind = t.get("kind").map(String::as_str).unwrap_or("target");
    let short = kind.rsplit('.').next().unwrap_or(kind);
    let name = t.get("name").map(String::as_str);
    match (kind, t.get("namespace"), name, t.get("node")) {
        ("host", _, _, Some(node)) => format!("host {node}"),
        ("iceberg.table", _, Some(n), _) => {
            format!(
                "table {}.{n}",
                t.get("catalog").map(String::as_str).unwrap_or("?")
            )
        }
        (_, Some(ns), Some(n), _) => format!("{short} {ns}/{n}"),
        (_, None, Some(n), Some(node)) => format!("{short} {n} on {node}"),
        (_, None, Some(n), None) => format!("{short} {n}"),
        _ => kind.to_string(),
    }
}

/// Where an action runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "node")]
pub enum Scope {
    /// Once per cluster, by whichever agent claims it.
    Cluster,
    /// On the named node.
    Node(String),
}

/// What a driver needs to plan or apply: the rendered target and parameters.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    /// Rendered target fields, `kind` included.
    pub target: BTreeMap<String, String>,
    /// Validated parameters with defaults filled in.
    pub params: serde_json::Value,
    /// True when nothing may be changed.
    pub dry_run: bool,
}

impl Request {
    /// A target field, or a permanent error naming the missing one.
    pub fn field(&self, f: &str) -> Result<&str, DriverError> {
        self.target
            .get(f)
            .map(String::as_str)
            .ok_or_else(|| DriverError::permanent(format!("target has no {f}")))
    }

    /// The parameters as the action's own type (the engine has validated
    /// them; this only fails for a request built by hand).
    pub fn parsed<T: serde::de::DeserializeOwned>(&self) -> Result<T, DriverError> {
        serde_json::from_value(self.params.clone())
            .map_err(|e| DriverError::permanent(format!("parameters: {e}")))
    }
}

tokio::task_local! {
    /// When the step being applied times out (set by the engine around
    /// `apply`): a driver that waits and retries (an eviction a
    /// PodDisruptionBudget refuses) stops just before it and says why,
    /// rather than being cut off without a word.
    pub static APPLY_DEADLINE: std::time::Instant;
}

/// The current step's apply deadline, when the engine set one.
pub fn apply_deadline() -> Option<std::time::Instant> {
    APPLY_DEADLINE.try_with(|d| *d).ok()
}

/// The result of `plan`: what would be done, read from the backend.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Plan {
    /// A sentence a person reads: "evict pod etl/spark-driver-1 (CrashLoopBackOff, 14 restarts)".
    pub summary: String,
    /// Structured details for the audit record.
    pub details: serde_json::Value,
}

/// The result of `apply`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Outcome {
    /// What was done.
    pub summary: String,
    /// Structured details (counts, names, bytes).
    pub details: serde_json::Value,
}

/// The result of `verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Verdict {
    /// The fix took.
    Verified(String),
    /// Not yet; the engine asks again until the verify timeout.
    Pending(String),
    /// The fix did not take.
    Failed(String),
}

/// A driver error. `retryable` says whether trying again later may succeed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DriverError {
    /// What went wrong, naming the backend object.
    pub message: String,
    /// Whether a later attempt may succeed (timeouts, 429, 5xx).
    pub retryable: bool,
}

impl DriverError {
    /// A permanent error.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
    /// An error worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }
}

/// One executable action. `plan` only reads; `apply` changes; `verify` checks.
/// Every method is bounded by the engine's timeouts.
#[async_trait]
pub trait Action: Send + Sync {
    /// Catalogue name, e.g. `kubernetes.pod.restart`.
    fn name(&self) -> &'static str;
    /// Where it must run for this request.
    fn scope(&self, req: &Request) -> Scope;
    /// Resolve the target and describe the effect, reading only.
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError>;
    /// Make the change. Must be idempotent.
    async fn apply(&self, req: &Request, plan: &Plan) -> Result<Outcome, DriverError>;
    /// Check the change took.
    async fn verify(&self, req: &Request, plan: &Plan) -> Result<Verdict, DriverError>;
    /// Leaves a trace on the target after the step ended (a Kubernetes
    /// Event, say). Best effort: failures are logged, never fail the run.
    async fn record(&self, _req: &Request, _ok: bool, _message: &str) {}
    /// Whether this agent can act on the request's target (a node-scoped
    /// action for another node it cannot reach is that node's agent's).
    fn reaches(&self, _req: &Request) -> bool {
        true
    }
}
