//! Node-scoped actions on another node over SSH: the agent runs its own
//! binary there (`remediate exec-step`, an argv, never a shell string) and
//! reads the step's result as JSON. Used for hosts in the SSH inventory
//! (`backends.ssh`) that run no agent of their own; the remote binary uses
//! that host's own engine and filesystem. Also the SSH runner this route and
//! `host.command` share.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::tail;
use crate::config::SshHost;
use crate::drivers::action::{Action, DriverError, Outcome, Plan, Request, Scope, Verdict};
use crate::drivers::registry::Registry;

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
        let (code, out) = ssh_output(h, &argv).await?;
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

/// Runs `argv` on an inventory host over SSH; exit code and output.
pub async fn ssh_output(
    h: &SshHost,
    argv: &[String],
) -> Result<(Option<i32>, String), DriverError> {
    run_ssh_full(h, argv, None, usize::MAX).await
}

/// Runs `argv` over SSH: each argument is shell-escaped for the remote
/// shell, so it arrives as exactly one argument.
pub(super) async fn run_ssh(
    h: &SshHost,
    argv: &[String],
    workdir: Option<&str>,
) -> Result<(Option<i32>, String), DriverError> {
    run_ssh_full(h, argv, workdir, 400).await
}

async fn run_ssh_full(
    h: &SshHost,
    argv: &[String],
    workdir: Option<&str>,
    keep: usize,
) -> Result<(Option<i32>, String), DriverError> {
    if workdir.is_some() {
        return Err(DriverError::permanent("workdir is not supported over SSH"));
    }
    let mut b = openssh::SessionBuilder::default();
    b.user(h.user.clone())
        .port(h.port)
        .known_hosts_check(openssh::KnownHosts::Strict)
        .connect_timeout(std::time::Duration::from_secs(10));
    if let Some(k) = &h.key_file {
        b.keyfile(k);
    }
    if let Some(kh) = &h.known_hosts {
        b.user_known_hosts_file(kh);
    }
    let dest = format!("{}@{}", h.user, h.host);
    let session = b
        .connect(&dest)
        .await
        .map_err(|e| DriverError::retryable(format!("ssh {dest} (node {}): {e}", h.node)))?;
    let out = session
        .command(argv[0].as_str())
        .args(argv[1..].iter().map(String::as_str))
        .output()
        .await;
    let _ = session.close().await;
    let out = out.map_err(|e| DriverError::retryable(format!("ssh {dest}: {e}")))?;
    if keep == usize::MAX {
        // Machine-read output: stdout only, whole.
        return Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ));
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code(), tail(text.trim(), keep)))
}
