//! Drivers: one module per backend behind one [`Action`] trait, the
//! catalogue of every action (names, targets, parameter schemas) and the
//! registry of actions this build can execute.

pub mod catalog;
pub mod command;
pub mod docker;
pub mod dockerd;
pub mod host;
pub mod ice;
pub mod iceberg;
pub mod k8s;
pub mod kubernetes;
pub mod pg;
pub mod postgres;
pub mod prune;
pub mod remote;
pub mod spark;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

pub use catalog::{ActionSpec, ScopeKind, CATALOG};

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
    /// The routes, if this is a by-kind router (see [`Registry::register_for_kind`]).
    fn by_kind(self: Arc<Self>) -> Option<ByKind> {
        None
    }
}

/// One action, dispatched on the target's `kind`.
#[derive(Clone)]
pub struct ByKind {
    name: &'static str,
    routes: Vec<(&'static str, Arc<dyn Action>)>,
}

impl ByKind {
    fn pick(&self, req: &Request) -> Result<&Arc<dyn Action>, DriverError> {
        let kind = req.target.get("kind").map(String::as_str).unwrap_or("");
        self.routes
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, a)| a)
            .ok_or_else(|| {
                let have: Vec<&str> = self.routes.iter().map(|(k, _)| *k).collect();
                DriverError::permanent(format!(
                    "{} for target kind {kind:?}: this build drives it for {} only",
                    self.name,
                    have.join(", ")
                ))
            })
    }
}

#[async_trait]
impl Action for ByKind {
    fn name(&self) -> &'static str {
        self.name
    }
    fn scope(&self, req: &Request) -> Scope {
        self.pick(req)
            .map(|a| a.scope(req))
            .unwrap_or(Scope::Cluster)
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        self.pick(req)?.plan(req).await
    }
    async fn apply(&self, req: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        self.pick(req)?.apply(req, plan).await
    }
    async fn verify(&self, req: &Request, plan: &Plan) -> Result<Verdict, DriverError> {
        self.pick(req)?.verify(req, plan).await
    }
    async fn record(&self, req: &Request, ok: bool, message: &str) {
        if let Ok(a) = self.pick(req) {
            a.record(req, ok, message).await;
        }
    }
    fn reaches(&self, req: &Request) -> bool {
        self.pick(req).is_ok_and(|a| a.reaches(req))
    }
    fn by_kind(self: Arc<Self>) -> Option<ByKind> {
        Some((*self).clone())
    }
}

/// The actions this build can execute, by name.
#[derive(Default, Clone)]
pub struct Registry {
    actions: HashMap<&'static str, Arc<dyn Action>>,
}

impl Registry {
    /// An empty registry: every action is planned offline and cannot be applied.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a driver action. Its name must be in the catalogue.
    pub fn register(&mut self, action: Arc<dyn Action>) -> Result<(), String> {
        let name = action.name();
        if catalog::get(name).is_none() {
            return Err(format!("action {name:?} is not in the catalogue"));
        }
        self.actions.insert(name, action);
        Ok(())
    }

    /// Registers `action` for targets of one `kind` only, beside drivers of
    /// the same action for other kinds (spark.executor.bump-memory is a
    /// Kubernetes SparkApplication or a Swarm service).
    pub fn register_for_kind(
        &mut self,
        kind: &'static str,
        action: Arc<dyn Action>,
    ) -> Result<(), String> {
        let name = action.name();
        if catalog::get(name).is_none() {
            return Err(format!("action {name:?} is not in the catalogue"));
        }
        let mut router = match self.actions.get(name) {
            Some(existing) => match existing.clone().by_kind() {
                Some(r) => r,
                None => ByKind {
                    name,
                    routes: Vec::new(),
                },
            },
            None => ByKind {
                name,
                routes: Vec::new(),
            },
        };
        router.routes.retain(|(k, _)| *k != kind);
        router.routes.push((kind, action));
        self.actions.insert(name, Arc::new(router));
        Ok(())
    }

    /// The driver for `name`, if this build has one.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Action>> {
        self.actions.get(name).cloned()
    }

    /// Names of registered actions.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.actions.keys().copied().collect();
        v.sort_unstable();
        v
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("actions", &self.names())
            .finish()
    }
}
