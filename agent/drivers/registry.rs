//! The registry: the actions this build can execute, by name, and the
//! router for an action driven by several backends, one target kind each.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::action::{Action, DriverError, Entry, Outcome, Plan, Request, Scope, Verdict};
use super::catalog;

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
}

/// The actions this build can execute, by name.
#[derive(Default, Clone)]
pub struct Registry {
    actions: HashMap<&'static str, Arc<dyn Action>>,
    /// The routes of the actions registered by kind (their entry in
    /// `actions` is a copy of the router).
    routers: HashMap<&'static str, ByKind>,
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
        self.routers.remove(name);
        Ok(())
    }

    /// Registers every action of a backend's table, built from its client.
    /// Every name in a table is in the catalogue, so none is refused.
    pub fn register_table<C>(&mut self, table: &[Entry<C>], client: &C) {
        for e in table {
            let action = (e.new)(client);
            let _ = match e.kind {
                Some(kind) => self.register_for_kind(kind, action),
                None => self.register(action),
            };
        }
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
        let router = self.routers.entry(name).or_insert_with(|| ByKind {
            name,
            routes: Vec::new(),
        });
        router.routes.retain(|(k, _)| *k != kind);
        router.routes.push((kind, action));
        self.actions.insert(name, Arc::new(router.clone()));
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
