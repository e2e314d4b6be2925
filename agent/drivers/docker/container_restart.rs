//! `docker.container.restart`: restart an unhealthy or OOM-killed
//! container on this agent's node; its parameters and driver.

use std::sync::Arc;

use async_trait::async_trait;
use bollard::query_parameters as qp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{derr, local, Engine, STABLE};
use crate::drivers::action::{
    target_display, Action, ActionSpec, DriverError, Outcome, Params, Plan, Request, Scope,
    ScopeKind, Target, Verdict,
};

/// `docker.container.restart` in the catalogue.
pub const SPEC: ActionSpec = ActionSpec::of::<ContainerRestart>(
    "docker.container.restart",
    "docker",
    "Restart an unhealthy or OOM-killed container on its node.",
    ScopeKind::Node,
    120,
    &[("docker.container", &["node", "name"])],
);

/// `docker.container.restart`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "DockerContainerRestart")]
pub struct ContainerRestart {
    /// Seconds to wait for a clean stop before killing.
    #[serde(default = "ten")]
    pub stop_timeout_seconds: u32,
}

fn ten() -> u32 {
    10
}

impl Params for ContainerRestart {
    fn describe(&self, t: &Target) -> String {
        format!(
            "restart {} (stop timeout {}s)",
            target_display(t),
            self.stop_timeout_seconds
        )
    }
}

/// `docker.container.restart`: an unhealthy or OOM-killed container.
#[derive(Debug)]
pub struct DockerContainerRestart(pub Arc<Engine>);

fn describe_state(s: &bollard::models::ContainerState) -> String {
    let status = s
        .status
        .map(|x| x.to_string())
        .unwrap_or_else(|| "unknown".into());
    let mut parts = vec![status];
    if s.oom_killed == Some(true) {
        parts.push("OOM-killed".into());
    }
    if let Some(c) = s.exit_code.filter(|c| *c != 0) {
        parts.push(format!("exit {c}"));
    }
    if let Some(h) = s.health.as_ref().and_then(|h| h.status) {
        parts.push(format!("health {h}"));
    }
    parts.join(", ")
}

/// The container's last `n` log lines (stdout and stderr), read within 3 s;
/// None when there are none or they cannot be read in time (evidence never
/// holds the action back).
async fn last_log_lines(docker: &bollard::Docker, id: &str, n: usize) -> Option<String> {
    use futures::StreamExt;
    let opts = qp::LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .tail(&n.to_string())
        .build();
    let read = async {
        let mut stream = docker.logs(id, Some(opts));
        let mut out = String::new();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            if out.len() > 16 << 10 {
                break;
            }
        }
        out
    };
    let text = tokio::time::timeout(std::time::Duration::from_secs(3), read)
        .await
        .ok()?;
    let text = text.trim_end().to_string();
    (!text.is_empty()).then_some(text)
}

/// Whether a container counts as available: running and not unhealthy.
fn available(s: &bollard::models::ContainerState) -> bool {
    s.running == Some(true)
        && !matches!(
            s.health.as_ref().and_then(|h| h.status),
            Some(bollard::models::HealthStatusEnum::UNHEALTHY)
        )
}

/// The workload the container is a replica of, for the policy's
/// `blastRadius.maxUnavailableFraction`: the containers on this engine of
/// the same Swarm service or Compose service (by their labels), or the
/// container alone. `targetAvailable` says whether restarting it takes one
/// more down.
async fn workload(
    docker: &bollard::Docker,
    c: &bollard::models::ContainerInspectResponse,
) -> serde_json::Value {
    let name = c
        .name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    let me = c.state.as_ref().is_some_and(available);
    let labels = c
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let group = if let Some(svc) = labels.get("com.docker.swarm.service.name") {
        Some((
            format!("service {svc}"),
            vec![format!("com.docker.swarm.service.name={svc}")],
        ))
    } else {
        match (
            labels.get("com.docker.compose.project"),
            labels.get("com.docker.compose.service"),
        ) {
            (Some(p), Some(svc)) => Some((
                format!("compose service {p}/{svc}"),
                vec![
                    format!("com.docker.compose.project={p}"),
                    format!("com.docker.compose.service={svc}"),
                ],
            )),
            _ => None,
        }
    };
    let standalone = json!({
        "name": format!("container {name}"),
        "replicas": 1,
        "unavailable": u64::from(!me),
        "targetAvailable": me,
    });
    let Some((what, filter)) = group else {
        return standalone;
    };
    let opts = qp::ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&std::collections::HashMap::from([("label", filter)]))
        .build();
    let list = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        docker.list_containers(Some(opts)),
    )
    .await;
    let Ok(Ok(list)) = list else {
        // Unknown siblings: the container alone (the stricter count).
        return standalone;
    };
    // Stopped containers of a Swarm task history are not replicas; count
    // the running ones and this one.
    let mut replicas = 0u64;
    let mut up = 0u64;
    for other in &list {
        let is_me = other.id.as_deref() == c.id.as_deref();
        let running = other.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
        let healthy = !other
            .status
            .as_deref()
            .unwrap_or("")
            .contains("(unhealthy)");
        if running || is_me {
            replicas += 1;
            if running && healthy {
                up += 1;
            }
        }
    }
    let replicas = replicas.max(1);
    json!({
        "name": format!("{what} on this node"),
        "replicas": replicas,
        "unavailable": replicas.saturating_sub(up),
        "targetAvailable": me,
    })
}

#[async_trait]
impl Action for DockerContainerRestart {
    fn name(&self) -> &'static str {
        SPEC.name
    }
    fn scope(&self, req: &Request) -> Scope {
        Scope::Node(req.target.get("node").cloned().unwrap_or_default())
    }
    fn reaches(&self, req: &Request) -> bool {
        req.target.get("node") == Some(&self.0.node)
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        local(&self.0, req, SPEC.name)?;
        let name = req.field("name")?;
        let c = self
            .0
            .docker
            .inspect_container(name, None::<qp::InspectContainerOptions>)
            .await
            .map_err(|e| derr(&format!("container {name}"), e))?;
        let st = c.state.clone().unwrap_or_default();
        let id = c.id.clone().unwrap_or_else(|| name.to_string());
        let mut evidence = json!({
            "state": describe_state(&st),
            "exit code": st.exit_code,
            "OOM-killed": if st.oom_killed == Some(true) { "yes" } else { "no" },
            "restarts": c.restart_count.unwrap_or(0),
        });
        if let Some(f) = st
            .finished_at
            .as_deref()
            .filter(|f| !f.starts_with("0001-"))
        {
            evidence["finished at"] = json!(f);
        }
        if let Some(lines) = last_log_lines(&self.0.docker, &id, 20).await {
            evidence["last log lines"] = json!(lines);
        }
        let workload = workload(&self.0.docker, &c).await;
        Ok(Plan {
            summary: format!(
                "restart container {name} ({}; {} restarts)",
                describe_state(&st),
                c.restart_count.unwrap_or(0)
            ),
            details: json!({"id": c.id, "startedAt": st.started_at, "workload": workload, "evidence": evidence}),
        })
    }
    async fn apply(&self, req: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let p: ContainerRestart = req.parsed()?;
        let name = req.field("name")?;
        let id = plan.details["id"].as_str().unwrap_or(name);
        // Idempotent: if it restarted since the plan, leave it.
        let c = self
            .0
            .docker
            .inspect_container(id, None::<qp::InspectContainerOptions>)
            .await
            .map_err(|e| derr(&format!("container {name}"), e))?;
        let started = c.state.as_ref().and_then(|s| s.started_at.clone());
        if started.as_deref() != plan.details["startedAt"].as_str()
            && c.state.as_ref().and_then(|s| s.running) == Some(true)
        {
            return Ok(Outcome {
                summary: format!(
                    "container {name} was restarted since the plan (at {}); nothing to do",
                    started.unwrap_or_default()
                ),
                details: json!({}),
            });
        }
        self.0
            .docker
            .restart_container(
                id,
                Some(qp::RestartContainerOptions {
                    t: Some(p.stop_timeout_seconds as i32),
                    signal: None,
                }),
            )
            .await
            .map_err(|e| derr(&format!("restart container {name}"), e))?;
        Ok(Outcome {
            summary: format!("restarted container {name}"),
            details: json!({}),
        })
    }
    async fn verify(&self, req: &Request, plan: &Plan) -> Result<Verdict, DriverError> {
        let name = req.field("name")?;
        let id = plan.details["id"].as_str().unwrap_or(name);
        let c = self
            .0
            .docker
            .inspect_container(id, None::<qp::InspectContainerOptions>)
            .await
            .map_err(|e| derr(&format!("container {name}"), e))?;
        let st = c.state.unwrap_or_default();
        let restarted = st.started_at.as_deref() != plan.details["startedAt"].as_str();
        if !restarted || st.running != Some(true) {
            return Ok(Verdict::Pending(format!(
                "container {name}: {}",
                describe_state(&st)
            )));
        }
        // Running for a while, not just started: a crash loop is no fix.
        let since = st
            .started_at
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| chrono::Utc::now() - t.with_timezone(&chrono::Utc));
        if since.is_none_or(|d| d < STABLE) {
            return Ok(Verdict::Pending(format!(
                "container {name} restarted; running for less than {}s",
                STABLE.num_seconds()
            )));
        }
        match st.health.as_ref().and_then(|h| h.status) {
            Some(bollard::models::HealthStatusEnum::HEALTHY)
            | Some(bollard::models::HealthStatusEnum::NONE)
            | None => Ok(Verdict::Verified(format!(
                "container {name} running again since {}",
                st.started_at.unwrap_or_default()
            ))),
            Some(h) => Ok(Verdict::Pending(format!(
                "container {name} running, health {h}"
            ))),
        }
    }
}
