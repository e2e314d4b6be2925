//! Node-scoped actions on another node over SSH: the agent runs its own
//! binary there (`remediate exec-step`, an argv, never a shell string) and
//! reads the step's result as JSON. Used for hosts in the SSH inventory
//! (`backends.ssh`) that run no agent of their own; the remote binary uses
//! that host's own engine and filesystem.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Action, DriverError, Outcome, Plan, Registry, Request, Scope, Verdict};
use crate::config::SshHost;

/// What `remediate exec-step` prints: one JSON object.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepResult {
    /// The plan (phase plan).
    #[serde(default)]
    pub plan: Option<Plan>,
    /// The outcome (phase apply).
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// The verdict (phase verify).
    #[serde(default)]
    pub verdict: Option<Verdict>,
    /// The driver's error, if it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Whether the error may pass.
    #[serde(default)]
    pub retryable: bool,
}

/// Routes a node-scoped action: this node's driver locally, the remote
/// binary over SSH for inventory hosts.
pub struct SshRoute {
    name: &'static str,
    node: String,
    local: Option<Arc<dyn Action>>,
    inventory: Vec<SshHost>,
}

impl std::fmt::Debug for SshRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshRoute")
            .field("name", &self.name)
            .finish()
    }
}

/// Wraps the node-scoped actions of `reg` (and those this build has no
/// local driver for) so other nodes in `inventory` are reached over SSH.
pub fn route(reg: &mut Registry, node: &str, inventory: &[SshHost]) {
    if inventory.is_empty() {
        return;
    }
    for name in [
        "host.disk.prune",
        "docker.prune",
        "docker.container.restart",
    ] {
        let local = reg.get(name);
        let _ = reg.register(Arc::new(SshRoute {
            name,
            node: node.to_string(),
            local,
            inventory: inventory.to_vec(),
        }));
    }
}

enum Place<'a> {
    Local(&'a Arc<dyn Action>),
    Remote(&'a SshHost),
}

impl SshRoute {
    fn place(&self, req: &Request) -> Result<Place<'_>, DriverError> {
        let n = req
            .target
            .get("node")
            .ok_or_else(|| DriverError::permanent(format!("{} needs target.node", self.name)))?;
        if *n == self.node {
            return self.local.as_ref().map(Place::Local).ok_or_else(|| {
                DriverError::permanent(format!("no local driver for {} in this build", self.name))
            });
        }
        self.inventory
            .iter()
            .find(|h| h.node == *n)
            .map(Place::Remote)
            .ok_or_else(|| {
                DriverError::permanent(format!(
                    "{} targets node {n}, but this agent runs on {} and {n} is not in the SSH inventory (backends.ssh)",
                    self.name, self.node
                ))
            })
    }

    async fn remote(
        &self,
        h: &SshHost,
        req: &Request,
        phase: &str,
        plan: Option<&Plan>,
    ) -> Result<StepResult, DriverError> {
        let mut argv = vec![
            h.remediate.clone(),
            "exec-step".to_string(),
            "--action".into(),
            self.name.into(),
            "--node".into(),
            h.node.clone(),
            "--phase".into(),
            phase.into(),
            "--target".into(),
            serde_json::to_string(&req.target).unwrap_or_default(),
            "--params".into(),
            req.params.to_string(),
        ];
        if let Some(p) = plan {
            argv.push("--plan".into());
            argv.push(serde_json::to_string(p).unwrap_or_default());
        }
        let (code, out) = super::command::ssh_output(h, &argv).await?;
        let r: StepResult = serde_json::from_str(out.trim()).map_err(|e| {
            DriverError::permanent(format!(
                "{} on {} over ssh: unreadable result (exit {code:?}: {e}): {}",
                self.name,
                h.node,
                out.chars().take(300).collect::<String>()
            ))
        })?;
        if let Some(e) = &r.error {
            return Err(DriverError {
                message: format!("on {} over ssh: {e}", h.node),
                retryable: r.retryable,
            });
        }
        Ok(r)
    }
}

fn missing(what: &str) -> DriverError {
    DriverError::permanent(format!("remote step returned no {what}"))
}

#[async_trait]
impl Action for SshRoute {
    fn name(&self) -> &'static str {
        self.name
    }
    fn scope(&self, req: &Request) -> Scope {
        Scope::Node(req.target.get("node").cloned().unwrap_or_default())
    }
    fn reaches(&self, req: &Request) -> bool {
        self.place(req).is_ok()
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        match self.place(req)? {
            Place::Local(a) => a.plan(req).await,
            Place::Remote(h) => {
                let mut p = self
                    .remote(h, req, "plan", None)
                    .await?
                    .plan
                    .ok_or_else(|| missing("plan"))?;
                p.summary = format!("{} (on {} over ssh)", p.summary, h.node);
                Ok(p)
            }
        }
    }
    async fn apply(&self, req: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        match self.place(req)? {
            Place::Local(a) => a.apply(req, plan).await,
            Place::Remote(h) => self
                .remote(h, req, "apply", Some(plan))
                .await?
                .outcome
                .ok_or_else(|| missing("outcome")),
        }
    }
    async fn verify(&self, req: &Request, plan: &Plan) -> Result<Verdict, DriverError> {
        match self.place(req)? {
            Place::Local(a) => a.verify(req, plan).await,
            Place::Remote(h) => self
                .remote(h, req, "verify", Some(plan))
                .await?
                .verdict
                .ok_or_else(|| missing("verdict")),
        }
    }
}
