//! `host.command`: run a program on this agent's node, the escape hatch for
//! what no driver covers yet (a site's own `remote-deploy.sh`). Arguments
//! are an argv list, never a shell string, so a label value rendered into
//! an argument stays one argument. The step timeout kills the process.
//!
//! Idempotency is the command's: the playbook author makes it safe to run
//! twice, and gives a `check` command that tells whether the fix took.

use std::process::Stdio;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ssh::run_ssh;
use super::tail;
use crate::drivers::action::{
    target_display, Action, ActionSpec, DriverError, Outcome, Params, Plan, Request, Scope,
    ScopeKind, Target, Verdict,
};

/// `host.command` in the catalogue.
pub const SPEC: ActionSpec = ActionSpec::of::<Command>(
    "host.command",
    "host",
    "Run a program (argv, no shell) on the target node; a check program verifies the fix.",
    ScopeKind::Node,
    60,
    &[("host", &["node"])],
);

/// `host.command`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "HostCommand")]
pub struct Command {
    /// Program and arguments; the program is looked up in PATH. Templates are
    /// rendered per element.
    pub argv: Vec<String>,
    /// Exit codes that mean success.
    #[serde(default = "zero")]
    pub success_exit_codes: Vec<i32>,
    /// Verification program: exit 0 means the fix took, anything else that
    /// it did not. Without it, a successful exit is the verification.
    #[serde(default)]
    pub check: Option<Vec<String>>,
    /// Working directory (absolute).
    #[serde(default)]
    pub workdir: Option<String>,
}

fn zero() -> Vec<i32> {
    vec![0]
}

impl Params for Command {
    fn check(&self) -> Result<(), String> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err("argv: give the program and its arguments".into());
        }
        if self
            .check
            .as_ref()
            .is_some_and(|c| c.is_empty() || c[0].is_empty())
        {
            return Err("check: give the program and its arguments".into());
        }
        if self
            .workdir
            .as_ref()
            .is_some_and(|w| !std::path::Path::new(w).is_absolute())
        {
            return Err("workdir: must be an absolute path".into());
        }
        Ok(())
    }

    fn describe(&self, target: &Target) -> String {
        format!(
            "run {} on {}",
            shell_words(&self.argv),
            target_display(target)
        )
    }
}

/// Quoted for display only; never executed through a shell.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The driver: runs commands on this agent's node, or over SSH on hosts of
/// the inventory (`backends.ssh`).
#[derive(Debug, Clone)]
pub struct HostCommand {
    node: String,
    inventory: Vec<crate::config::SshHost>,
}

/// Where a command runs.
enum Where<'a> {
    Local,
    Ssh(&'a crate::config::SshHost),
}

impl HostCommand {
    /// A driver for the agent on `node`.
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            inventory: Vec::new(),
        }
    }

    /// With SSH hosts for other nodes.
    pub fn with_inventory(mut self, inventory: Vec<crate::config::SshHost>) -> Self {
        self.inventory = inventory;
        self
    }

    fn place(&self, req: &Request) -> Result<Where<'_>, DriverError> {
        match req.target.get("node") {
            Some(n) if *n == self.node => Ok(Where::Local),
            Some(n) => match self.inventory.iter().find(|h| h.node == *n) {
                Some(h) => Ok(Where::Ssh(h)),
                None => Err(DriverError::permanent(format!(
                    "host.command targets node {n}, but this agent runs on {} and {n} is not in the SSH inventory (backends.ssh)",
                    self.node
                ))),
            },
            None => Err(DriverError::permanent("host.command needs target.node")),
        }
    }

    fn params(req: &Request) -> Result<Command, DriverError> {
        serde_json::from_value(req.params.clone())
            .map_err(|e| DriverError::permanent(format!("host.command parameters: {e}")))
    }
}

async fn run_at(
    w: &Where<'_>,
    argv: &[String],
    workdir: Option<&str>,
) -> Result<(Option<i32>, String), DriverError> {
    match w {
        Where::Local => run(argv, workdir).await,
        Where::Ssh(h) => run_ssh(h, argv, workdir).await,
    }
}

async fn run(argv: &[String], workdir: Option<&str>) -> Result<(Option<i32>, String), DriverError> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // The engine's timeout drops this future: the process goes with it.
        .kill_on_drop(true);
    if let Some(w) = workdir {
        cmd.current_dir(w);
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| DriverError::permanent(format!("cannot run {}: {e}", argv[0])))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code(), tail(text.trim(), 400)))
}

#[async_trait]
impl Action for HostCommand {
    fn name(&self) -> &'static str {
        SPEC.name
    }

    fn scope(&self, req: &Request) -> Scope {
        Scope::Node(req.target.get("node").cloned().unwrap_or_default())
    }

    fn reaches(&self, req: &Request) -> bool {
        self.place(req).is_ok()
    }

    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        let p = Self::params(req)?;
        let via = match self.place(req)? {
            Where::Local => String::new(),
            Where::Ssh(h) => format!(" over ssh {}@{}:{}", h.user, h.host, h.port),
        };
        Ok(Plan {
            summary: format!("{}{via}", p.describe(&req.target)),
            details: serde_json::json!({ "argv": p.argv }),
        })
    }

    async fn apply(&self, req: &Request, _: &Plan) -> Result<Outcome, DriverError> {
        let p = Self::params(req)?;
        let w = self.place(req)?;
        let (code, output) = run_at(&w, &p.argv, p.workdir.as_deref()).await?;
        match code {
            Some(c) if p.success_exit_codes.contains(&c) => Ok(Outcome {
                summary: if output.is_empty() {
                    format!("{} exited {c}", p.argv[0])
                } else {
                    format!("{} exited {c}: {output}", p.argv[0])
                },
                details: serde_json::json!({ "exitCode": c }),
            }),
            Some(c) => Err(DriverError::permanent(format!(
                "{} exited {c}: {output}",
                p.argv[0]
            ))),
            None => Err(DriverError::permanent(format!(
                "{} was killed by a signal: {output}",
                p.argv[0]
            ))),
        }
    }

    async fn verify(&self, req: &Request, _: &Plan) -> Result<Verdict, DriverError> {
        let p = Self::params(req)?;
        let Some(check) = &p.check else {
            return Ok(Verdict::Verified(
                "command succeeded (no check given)".into(),
            ));
        };
        let w = self.place(req)?;
        let (code, output) = run_at(&w, check, p.workdir.as_deref()).await?;
        Ok(match code {
            Some(0) => Verdict::Verified(format!("check {} passed", shell_words(check))),
            _ => Verdict::Pending(format!(
                "check {} exited {}: {output}",
                shell_words(check),
                code.map_or("by signal".into(), |c| c.to_string())
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(node: &str, params: serde_json::Value) -> Request {
        Request {
            target: [("kind", "host"), ("node", node)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            params,
            dry_run: false,
        }
    }

    #[tokio::test]
    async fn runs_argv_without_a_shell_and_reports_the_exit() {
        let d = HostCommand::new("n1");
        // `$(id)` stays a literal argument: no shell is involved.
        let r = req(
            "n1",
            serde_json::json!({"argv": ["echo", "$(id); rm -rf /"], "successExitCodes": [0]}),
        );
        let plan = d.plan(&r).await.unwrap();
        assert_eq!(plan.summary, "run echo '$(id); rm -rf /' on host n1");
        let out = d.apply(&r, &plan).await.unwrap();
        assert_eq!(out.summary, "echo exited 0: $(id); rm -rf /");
        let r = req(
            "n1",
            serde_json::json!({"argv": ["false"], "successExitCodes": [0]}),
        );
        let err = d.apply(&r, &plan).await.unwrap_err();
        assert_eq!(err.message, "false exited 1: ");
    }

    #[tokio::test]
    async fn verify_runs_the_check_and_a_foreign_node_is_refused() {
        let d = HostCommand::new("n1");
        let r = req(
            "n1",
            serde_json::json!({"argv": ["true"], "successExitCodes": [0], "check": ["test", "-d", "/"]}),
        );
        let plan = d.plan(&r).await.unwrap();
        assert!(matches!(
            d.verify(&r, &plan).await.unwrap(),
            Verdict::Verified(_)
        ));
        let r = req(
            "n1",
            serde_json::json!({"argv": ["true"], "successExitCodes": [0], "check": ["test", "-d", "/nonexistent-dir"]}),
        );
        assert!(matches!(
            d.verify(&r, &plan).await.unwrap(),
            Verdict::Pending(_)
        ));
        let r = req(
            "n2",
            serde_json::json!({"argv": ["true"], "successExitCodes": [0]}),
        );
        let err = d.plan(&r).await.unwrap_err();
        assert!(
            err.message
                .contains("targets node n2, but this agent runs on n1"),
            "{err}"
        );
    }
}
