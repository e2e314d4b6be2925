//! The Docker Engine and Swarm driver (bollard): container restart, prune,
//! Swarm service restart and memory bump. Node-scoped actions act on this
//! agent's own engine; Swarm actions need a manager's engine.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bollard::query_parameters as qp;
use bollard::Docker;
use serde_json::json;

use super::{Action, DriverError, Outcome, Plan, Registry, Request, Scope, Verdict};
use crate::units::ByteSize;

/// What the Docker actions share.
#[derive(Debug)]
pub struct Engine {
    /// The engine API.
    pub docker: Docker,
    /// This agent's node (node-scoped actions only act here).
    pub node: String,
}

/// Connects to the engine named in the config (default: the local socket).
pub fn connect(cfg: &crate::config::DockerBackend) -> Result<Docker, String> {
    match cfg.host.as_deref() {
        None => Docker::connect_with_local_defaults(),
        Some(h) if h.starts_with("unix://") => Docker::connect_with_unix(
            h.trim_start_matches("unix://"),
            60,
            bollard::API_DEFAULT_VERSION,
        ),
        Some(h) => Docker::connect_with_http(h, 60, bollard::API_DEFAULT_VERSION),
    }
    .map_err(|e| format!("docker: {e}"))
}

/// Registers the Docker and Swarm actions.
pub fn register(reg: &mut Registry, e: Arc<Engine>) {
    let actions: [Arc<dyn Action>; 4] = [
        Arc::new(ContainerRestart(e.clone())),
        Arc::new(Prune(e.clone())),
        Arc::new(ServiceRestart(e.clone())),
        Arc::new(ServiceBumpMemory(e.clone())),
    ];
    for a in actions {
        let _ = reg.register(a);
    }
    let _ = reg.register_for_kind("swarm.service", Arc::new(SparkConfBump(e)));
}

fn derr(what: &str, e: bollard::errors::Error) -> DriverError {
    use bollard::errors::Error as E;
    match &e {
        E::DockerResponseServerError {
            status_code,
            message,
        } if *status_code == 404 || *status_code == 400 || *status_code == 409 => {
            DriverError::permanent(format!("{what}: {message} ({status_code})"))
        }
        E::DockerResponseServerError {
            status_code,
            message,
        } => {
            // Swarm answers "update out of sequence" for a stale version: retryable.
            DriverError::retryable(format!("{what}: {message} ({status_code})"))
        }
        _ => DriverError::retryable(format!("{what}: {e}")),
    }
}

fn local(e: &Engine, req: &Request, action: &str) -> Result<(), DriverError> {
    match req.target.get("node") {
        Some(n) if *n == e.node => Ok(()),
        Some(n) => Err(DriverError::permanent(format!(
            "{action} targets node {n}, but this agent runs on {}; acting on another node's engine (its agent or SSH) is not available in this build",
            e.node
        ))),
        None => Err(DriverError::permanent(format!("{action} needs target.node"))),
    }
}

// --------------------------------------------------------------------------
// docker.container.restart
// --------------------------------------------------------------------------

/// `docker.container.restart`: an unhealthy or OOM-killed container.
#[derive(Debug)]
pub struct ContainerRestart(pub Arc<Engine>);

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

#[async_trait]
impl Action for ContainerRestart {
    fn name(&self) -> &'static str {
        "docker.container.restart"
    }
    fn scope(&self, req: &Request) -> Scope {
        Scope::Node(req.target.get("node").cloned().unwrap_or_default())
    }
    fn reaches(&self, req: &Request) -> bool {
        req.target.get("node") == Some(&self.0.node)
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        local(&self.0, req, "docker.container.restart")?;
        let name = req.field("name")?;
        let c = self
            .0
            .docker
            .inspect_container(name, None::<qp::InspectContainerOptions>)
            .await
            .map_err(|e| derr(&format!("container {name}"), e))?;
        let st = c.state.unwrap_or_default();
        Ok(Plan {
            summary: format!(
                "restart container {name} ({}; {} restarts)",
                describe_state(&st),
                c.restart_count.unwrap_or(0)
            ),
            details: json!({"id": c.id, "startedAt": st.started_at}),
        })
    }
    async fn apply(&self, req: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let p: super::docker::ContainerRestart = req.parsed()?;
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

// --------------------------------------------------------------------------
// docker.prune
// --------------------------------------------------------------------------

/// `docker.prune`: stopped containers, dangling images, build cache and
/// (opt-in) unused volumes, older than a minimum age, sparing a label.
#[derive(Debug)]
pub struct Prune(pub Arc<Engine>);

fn filters(p: &super::docker::Prune, until: bool) -> HashMap<String, Vec<String>> {
    let mut f = HashMap::new();
    if until {
        f.insert(
            "until".to_string(),
            vec![format!("{}s", p.older_than.std().as_secs())],
        );
    }
    f.insert("label!".to_string(), vec![p.protect_label.clone()]);
    if let Some(l) = &p.only_label {
        f.insert("label".to_string(), vec![l.clone()]);
    }
    f
}

/// Whether labels satisfy `onlyLabel` (`key` or `key=value`).
fn selected(p: &super::docker::Prune, labels: Option<&HashMap<String, String>>) -> bool {
    let Some(want) = &p.only_label else {
        return true;
    };
    let (k, v) = match want.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (want.as_str(), None),
    };
    labels
        .and_then(|l| l.get(k))
        .is_some_and(|have| v.is_none_or(|v| have == v))
}

#[async_trait]
impl Action for Prune {
    fn name(&self) -> &'static str {
        "docker.prune"
    }
    fn scope(&self, req: &Request) -> Scope {
        Scope::Node(req.target.get("node").cloned().unwrap_or_default())
    }
    fn reaches(&self, req: &Request) -> bool {
        req.target.get("node") == Some(&self.0.node)
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        local(&self.0, req, "docker.prune")?;
        let p: super::docker::Prune = req.parsed()?;
        let d = &self.0.docker;
        let cutoff = chrono::Utc::now().timestamp() - p.older_than.std().as_secs() as i64;
        let mut items = Vec::new();
        let mut bytes = 0u64;
        if p.containers {
            let mut f = HashMap::new();
            f.insert(
                "status".to_string(),
                vec![
                    "exited".to_string(),
                    "created".to_string(),
                    "dead".to_string(),
                ],
            );
            let cs = d
                .list_containers(Some(qp::ListContainersOptions {
                    all: true,
                    size: true,
                    filters: Some(f),
                    ..Default::default()
                }))
                .await
                .map_err(|e| derr("list containers", e))?;
            for c in cs {
                let protected = c
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(&p.protect_label));
                if protected || !selected(&p, c.labels.as_ref()) || c.created.unwrap_or(0) > cutoff
                {
                    continue;
                }
                let size = c.size_rw.unwrap_or(0).max(0) as u64;
                bytes += size;
                let name = c.names.and_then(|n| n.first().cloned()).unwrap_or_default();
                items.push(format!(
                    "container {} ({})",
                    name.trim_start_matches('/'),
                    ByteSize(size)
                ));
            }
        }
        if p.images {
            let mut f = HashMap::new();
            f.insert("dangling".to_string(), vec!["true".to_string()]);
            let is = d
                .list_images(Some(qp::ListImagesOptions {
                    all: false,
                    filters: Some(f),
                    ..Default::default()
                }))
                .await
                .map_err(|e| derr("list images", e))?;
            for i in is {
                if i.labels.contains_key(&p.protect_label)
                    || !selected(&p, Some(&i.labels))
                    || i.created > cutoff
                {
                    continue;
                }
                let size = i.size.max(0) as u64;
                bytes += size;
                items.push(format!(
                    "image {} ({})",
                    &i.id[..i.id.len().min(19)],
                    ByteSize(size)
                ));
            }
        }
        if p.volumes {
            let mut f = HashMap::new();
            f.insert("dangling".to_string(), vec!["true".to_string()]);
            let vs = d
                .list_volumes(Some(qp::ListVolumesOptions { filters: Some(f) }))
                .await
                .map_err(|e| derr("list volumes", e))?;
            for v in vs.volumes.unwrap_or_default() {
                if v.labels.contains_key(&p.protect_label) || !selected(&p, Some(&v.labels)) {
                    continue;
                }
                items.push(format!("volume {}", v.name));
            }
        }
        if p.build_cache && p.only_label.is_none() {
            items.push(format!("build cache older than {}", p.older_than));
        }
        Ok(Plan {
            summary: if items.is_empty() {
                "nothing to prune".into()
            } else {
                format!(
                    "remove {} (at least {}): {}",
                    items.len(),
                    ByteSize(bytes),
                    items.join(", ")
                )
            },
            details: json!({"items": items, "bytes": bytes}),
        })
    }
    async fn apply(&self, req: &Request, _plan: &Plan) -> Result<Outcome, DriverError> {
        let p: super::docker::Prune = req.parsed()?;
        let d = &self.0.docker;
        let mut reclaimed = 0u64;
        let mut removed = Vec::new();
        if p.containers {
            let r = d
                .prune_containers(Some(qp::PruneContainersOptions {
                    filters: Some(filters(&p, true)),
                }))
                .await
                .map_err(|e| derr("prune containers", e))?;
            reclaimed += r.space_reclaimed.unwrap_or(0).max(0) as u64;
            removed.push(format!(
                "{} container(s)",
                r.containers_deleted.map(|v| v.len()).unwrap_or(0)
            ));
        }
        if p.images {
            let mut f = filters(&p, true);
            f.insert("dangling".into(), vec!["true".into()]);
            let r = d
                .prune_images(Some(qp::PruneImagesOptions { filters: Some(f) }))
                .await
                .map_err(|e| derr("prune images", e))?;
            reclaimed += r.space_reclaimed.unwrap_or(0).max(0) as u64;
            removed.push(format!(
                "{} image layer(s)",
                r.images_deleted.map(|v| v.len()).unwrap_or(0)
            ));
        }
        if p.volumes {
            // The API has no age filter for volumes: the label filter only.
            let r = d
                .prune_volumes(Some(qp::PruneVolumesOptions {
                    filters: Some(filters(&p, false)),
                }))
                .await
                .map_err(|e| derr("prune volumes", e))?;
            reclaimed += r.space_reclaimed.unwrap_or(0).max(0) as u64;
            removed.push(format!(
                "{} volume(s)",
                r.volumes_deleted.map(|v| v.len()).unwrap_or(0)
            ));
        }
        // The build cache carries no labels: with onlyLabel it is left alone.
        if p.build_cache && p.only_label.is_none() {
            let mut f = HashMap::new();
            f.insert(
                "until".to_string(),
                vec![format!("{}s", p.older_than.std().as_secs())],
            );
            match d
                .prune_build(Some(qp::PruneBuildOptions {
                    filters: Some(f),
                    ..Default::default()
                }))
                .await
            {
                Ok(r) => {
                    reclaimed += r.space_reclaimed.unwrap_or(0).max(0) as u64;
                    removed.push("build cache".into());
                }
                // Engines without BuildKit have no build cache to prune.
                Err(e) => removed.push(format!("build cache skipped ({e})")),
            }
        }
        Ok(Outcome {
            summary: format!("reclaimed {}: {}", ByteSize(reclaimed), removed.join(", ")),
            details: json!({"bytesReclaimed": reclaimed}),
        })
    }
    async fn verify(&self, req: &Request, _plan: &Plan) -> Result<Verdict, DriverError> {
        // The post-condition: nothing the rules allow is left.
        let again = self.plan(req).await?;
        let left = again.details["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|i| !i.as_str().unwrap_or_default().starts_with("build cache"))
                    .count()
            })
            .unwrap_or(0);
        Ok(if left == 0 {
            Verdict::Verified("nothing prunable left".into())
        } else {
            Verdict::Failed(format!("{left} prunable object(s) left: {}", again.summary))
        })
    }
}

// --------------------------------------------------------------------------
// swarm.service.restart / swarm.service.bump-memory
// --------------------------------------------------------------------------

async fn service(d: &Docker, name: &str) -> Result<bollard::models::Service, DriverError> {
    d.inspect_service(name, None::<qp::InspectServiceOptions>)
        .await
        .map_err(|e| derr(&format!("service {name}"), e))
}

async fn update(
    d: &Docker,
    name: &str,
    version: u64,
    spec: bollard::models::ServiceSpec,
) -> Result<(), DriverError> {
    d.update_service(
        name,
        spec,
        qp::UpdateServiceOptions {
            version: version as i32,
            ..Default::default()
        },
        None,
    )
    .await
    .map(|_| ())
    .map_err(|e| derr(&format!("update service {name}"), e))
}

/// How long a new task must have been running to count: a task that
/// starts and crashes a second later is not a fix.
const STABLE: chrono::Duration = chrono::Duration::seconds(5);

fn task_time(t: &bollard::models::Task) -> Option<chrono::DateTime<chrono::Utc>> {
    let ts = t.status.as_ref()?.timestamp.clone()?;
    let s = ts.to_string();
    chrono::DateTime::parse_from_rfc3339(&s)
        .ok()
        .map(|d| d.with_timezone(&chrono::Utc))
}

/// Verified when every task the service wants runs the new spec (its
/// ForceUpdate counter, its memory limit, its config) and has been running
/// for a while; failed when a task of the new spec fails.
async fn tasks_converged(
    d: &Docker,
    name: &str,
    matches: impl Fn(&bollard::models::TaskSpec) -> bool,
) -> Result<Verdict, DriverError> {
    use bollard::models::TaskState as S;
    let svc = service(d, name).await?;
    let want = svc
        .spec
        .as_ref()
        .and_then(|s| s.mode.as_ref())
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .unwrap_or(1);
    let mut f = HashMap::new();
    f.insert("service".to_string(), vec![name.to_string()]);
    let tasks = d
        .list_tasks(Some(qp::ListTasksOptions { filters: Some(f) }))
        .await
        .map_err(|e| derr(&format!("tasks of {name}"), e))?;
    let now = chrono::Utc::now();
    let new: Vec<&bollard::models::Task> = tasks
        .iter()
        .filter(|t| t.spec.as_ref().is_some_and(&matches))
        .collect();
    if let Some(failed) = new.iter().find(|t| {
        matches!(
            t.status.as_ref().and_then(|s| s.state),
            Some(S::FAILED) | Some(S::REJECTED)
        )
    }) {
        let st = failed.status.clone().unwrap_or_default();
        return Ok(Verdict::Failed(format!(
            "a new task of service {name} failed: {}",
            st.err
                .or(st.message)
                .unwrap_or_else(|| "no reason given".into())
        )));
    }
    let stable = new
        .iter()
        .filter(|t| t.desired_state == Some(S::RUNNING))
        .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(S::RUNNING))
        .filter(|t| task_time(t).is_some_and(|at| now - at >= STABLE))
        .count() as i64;
    let old = tasks
        .iter()
        .filter(|t| t.desired_state == Some(S::RUNNING) && !t.spec.as_ref().is_some_and(&matches))
        .count();
    if stable >= want && old == 0 {
        Ok(Verdict::Verified(format!(
            "service {name}: {stable}/{want} new tasks running for {}s or more",
            STABLE.num_seconds()
        )))
    } else {
        Ok(Verdict::Pending(format!(
            "service {name}: {stable}/{want} new tasks running stably, {old} old"
        )))
    }
}

/// `swarm.service.restart`: `docker service update --force`.
#[derive(Debug)]
pub struct ServiceRestart(pub Arc<Engine>);

#[async_trait]
impl Action for ServiceRestart {
    fn name(&self) -> &'static str {
        "swarm.service.restart"
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        let name = req.field("name")?;
        let s = service(&self.0.docker, name).await?;
        let force = s
            .spec
            .as_ref()
            .and_then(|sp| sp.task_template.as_ref())
            .and_then(|t| t.force_update)
            .unwrap_or(0);
        Ok(Plan {
            summary: format!(
                "force a rolling restart of service {name} (ForceUpdate {force} -> {})",
                force + 1
            ),
            details: json!({"version": s.version.and_then(|v| v.index), "force": force + 1}),
        })
    }
    async fn apply(&self, req: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let name = req.field("name")?;
        let s = service(&self.0.docker, name).await?;
        let mut spec = s.spec.unwrap_or_default();
        let force = plan.details["force"].as_u64().unwrap_or(1);
        let tt = spec.task_template.get_or_insert_with(Default::default);
        if tt.force_update.unwrap_or(0) >= force {
            return Ok(Outcome {
                summary: format!(
                    "service {name} was already force-updated (ForceUpdate {})",
                    tt.force_update.unwrap_or(0)
                ),
                details: json!({}),
            });
        }
        tt.force_update = Some(force);
        // The version read now: the manager rejects the update if the
        // service changed in between (update out of sequence).
        let version = s.version.and_then(|v| v.index).unwrap_or(0);
        update(&self.0.docker, name, version, spec).await?;
        Ok(Outcome {
            summary: format!("service {name} updated with --force (ForceUpdate {force})"),
            details: json!({}),
        })
    }
    async fn verify(&self, req: &Request, plan: &Plan) -> Result<Verdict, DriverError> {
        let name = req.field("name")?;
        let force = plan.details["force"].as_u64().unwrap_or(1);
        tasks_converged(&self.0.docker, name, |t| {
            t.force_update.unwrap_or(0) >= force
        })
        .await
    }
}

/// `swarm.service.bump-memory`: limits (and reservations) by a step up to a ceiling.
#[derive(Debug)]
pub struct ServiceBumpMemory(pub Arc<Engine>);

#[async_trait]
impl Action for ServiceBumpMemory {
    fn name(&self) -> &'static str {
        "swarm.service.bump-memory"
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        let p: super::docker::ServiceBumpMemory = req.parsed()?;
        let name = req.field("name")?;
        let s = service(&self.0.docker, name).await?;
        let cur = s
            .spec
            .as_ref()
            .and_then(|sp| sp.task_template.as_ref())
            .and_then(|t| t.resources.as_ref())
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.memory_bytes)
            .ok_or_else(|| {
                DriverError::permanent(format!("service {name} has no memory limit to raise"))
            })? as u64;
        if cur >= p.ceiling.0 {
            return Err(DriverError::permanent(format!(
                "service {name} already has {}, the ceiling is {}: not raising",
                ByteSize(cur),
                p.ceiling
            )));
        }
        let new = p.step.bumped(cur, p.ceiling);
        Ok(Plan {
            summary: format!(
                "raise the memory limit of service {name} from {} to {} (ceiling {})",
                ByteSize(cur),
                ByteSize(new),
                p.ceiling
            ),
            details: json!({"from": cur, "to": new, "version": s.version.and_then(|v| v.index)}),
        })
    }
    async fn apply(&self, req: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let p: super::docker::ServiceBumpMemory = req.parsed()?;
        let name = req.field("name")?;
        let s = service(&self.0.docker, name).await?;
        let version = s.version.and_then(|v| v.index).unwrap_or(0);
        if Some(version) != plan.details["version"].as_u64() {
            return Err(DriverError::retryable(format!(
                "service {name} changed since the plan (version {} -> {version}): not applying a stale bump",
                plan.details["version"]
            )));
        }
        let new = plan.details["to"].as_u64().unwrap_or_default() as i64;
        let mut spec = s.spec.unwrap_or_default();
        let res = spec
            .task_template
            .get_or_insert_with(Default::default)
            .resources
            .get_or_insert_with(Default::default);
        res.limits.get_or_insert_with(Default::default).memory_bytes = Some(new);
        if p.bump_reservation {
            if let Some(r) = res
                .reservations
                .as_mut()
                .filter(|r| r.memory_bytes.is_some())
            {
                r.memory_bytes = Some(new);
            }
        }
        update(&self.0.docker, name, version, spec).await?;
        Ok(Outcome {
            summary: format!(
                "service {name}: memory limit {} -> {}",
                ByteSize(plan.details["from"].as_u64().unwrap_or_default()),
                ByteSize(new as u64)
            ),
            details: json!({}),
        })
    }
    async fn verify(&self, req: &Request, plan: &Plan) -> Result<Verdict, DriverError> {
        let name = req.field("name")?;
        let new = plan.details["to"].as_u64().unwrap_or_default() as i64;
        tasks_converged(&self.0.docker, name, |t| {
            t.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.memory_bytes)
                == Some(new)
        })
        .await
    }
}

// --------------------------------------------------------------------------
// spark.executor.bump-memory on Swarm: a new spark-defaults.conf config
// --------------------------------------------------------------------------

/// `spark.executor.bump-memory` for Spark on Swarm: Swarm configs are
/// immutable, so a new config `<name>-vN` is created with
/// spark.executor.memory (and cores) raised within the ceiling, and the
/// service is updated to mount it in place of the old one.
#[derive(Debug)]
pub struct SparkConfBump(pub Arc<Engine>);

/// Reads `key` from a spark-defaults.conf (`key value` or `key=value`).
pub fn conf_get(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.trim();
        let rest = l.strip_prefix(key)?;
        let rest = rest.trim_start_matches([' ', '\t', '=']).trim();
        (!rest.is_empty() && !l.starts_with('#')).then(|| rest.to_string())
    })
}

/// Sets `key` in a spark-defaults.conf, replacing its line or appending one.
pub fn conf_set(text: &str, key: &str, value: &str) -> String {
    let mut found = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|l| {
            let t = l.trim_start();
            let is_key = t
                .strip_prefix(key)
                .is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t', '=']));
            if is_key && !t.starts_with('#') {
                found = true;
                format!("{key} {value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        out.push(format!("{key} {value}"));
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

fn next_name(name: &str) -> String {
    match name.rsplit_once("-v") {
        Some((base, n)) if n.parse::<u32>().is_ok() => {
            format!("{base}-v{}", n.parse::<u32>().unwrap_or(1) + 1)
        }
        _ => format!("{name}-v2"),
    }
}

#[async_trait]
impl Action for SparkConfBump {
    fn name(&self) -> &'static str {
        "spark.executor.bump-memory"
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        use base64::Engine as _;
        let p: super::spark::BumpMemory = req.parsed()?;
        let name = req.field("name")?;
        let d = &self.0.docker;
        let svc = service(d, name).await?;
        let configs = svc
            .spec
            .as_ref()
            .and_then(|s| s.task_template.as_ref())
            .and_then(|t| t.container_spec.as_ref())
            .and_then(|c| c.configs.clone())
            .unwrap_or_default();
        let mounted = configs
            .iter()
            .find(|c| {
                c.file
                    .as_ref()
                    .and_then(|f| f.name.as_deref())
                    .is_some_and(|n| n.ends_with("spark-defaults.conf"))
            })
            .ok_or_else(|| {
                DriverError::permanent(format!(
                    "service {name} mounts no spark-defaults.conf config"
                ))
            })?;
        let old_id = mounted.config_id.clone().unwrap_or_default();
        let old_name = mounted.config_name.clone().unwrap_or_default();
        let cfg = d
            .inspect_config(&old_id)
            .await
            .map_err(|e| derr(&format!("config {old_name}"), e))?;
        let data = cfg
            .spec
            .as_ref()
            .and_then(|s| s.data.clone())
            .unwrap_or_default();
        let text = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(data.as_bytes())
                .map_err(|e| DriverError::permanent(format!("config {old_name}: {e}")))?,
        )
        .map_err(|e| DriverError::permanent(format!("config {old_name}: {e}")))?;
        let mem = conf_get(&text, "spark.executor.memory").unwrap_or_else(|| "1g".into());
        let current: ByteSize = mem
            .parse()
            .map_err(|e| DriverError::permanent(format!("spark.executor.memory {mem:?}: {e}")))?;
        if current.0 >= p.ceiling.0 {
            return Err(DriverError::permanent(format!(
                "service {name} executors already have {mem}, the ceiling is {}: not raising",
                p.ceiling
            )));
        }
        let new = p.step.bumped(current.0, p.ceiling);
        let mut new_text = conf_set(
            &text,
            "spark.executor.memory",
            &super::spark::spark_memory(new),
        );
        if let Some(c) = &p.cores {
            let cores: u32 = conf_get(&text, "spark.executor.cores")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let to = (cores + c.step).min(c.ceiling).max(cores);
            new_text = conf_set(&new_text, "spark.executor.cores", &to.to_string());
        }
        let new_name = next_name(&old_name);
        Ok(Plan {
            summary: format!(
                "new config {new_name} with spark.executor.memory {} (was {mem}, ceiling {}) in place of {old_name} on service {name}",
                super::spark::spark_memory(new),
                p.ceiling
            ),
            details: json!({
                "oldId": old_id, "oldName": old_name, "newName": new_name,
                "content": new_text, "version": svc.version.and_then(|v| v.index),
            }),
        })
    }
    async fn apply(&self, req: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        use base64::Engine as _;
        let name = req.field("name")?;
        let d = &self.0.docker;
        let new_name = plan.details["newName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let content = plan.details["content"].as_str().unwrap_or_default();
        let labels: HashMap<String, String> = [
            (
                "remediate.io/previous".to_string(),
                plan.details["oldName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ),
            ("remediate.io/service".to_string(), name.to_string()),
        ]
        .into_iter()
        .collect();
        // Idempotent: a config of that name from an earlier attempt is reused.
        let new_id = match d
            .create_config(bollard::models::ConfigSpec {
                name: Some(new_name.clone()),
                labels: Some(labels),
                data: Some(base64::engine::general_purpose::STANDARD.encode(content)),
                templating: None,
            })
            .await
        {
            Ok(r) => r.id,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => d
                .inspect_config(&new_name)
                .await
                .map_err(|e| derr(&format!("config {new_name}"), e))?
                .id
                .unwrap_or_default(),
            Err(e) => return Err(derr(&format!("create config {new_name}"), e)),
        };
        let svc = service(d, name).await?;
        let version = svc.version.and_then(|v| v.index).unwrap_or(0);
        let mut spec = svc.spec.unwrap_or_default();
        let old_id = plan.details["oldId"].as_str().unwrap_or_default();
        let mut swapped = false;
        if let Some(cs) = spec
            .task_template
            .as_mut()
            .and_then(|t| t.container_spec.as_mut())
            .and_then(|c| c.configs.as_mut())
        {
            for c in cs.iter_mut() {
                if c.config_id.as_deref() == Some(old_id) {
                    c.config_id = Some(new_id.clone());
                    c.config_name = Some(new_name.clone());
                    swapped = true;
                }
            }
        }
        if !swapped {
            return Err(DriverError::permanent(format!(
                "service {name} no longer mounts config {} (changed since the plan)",
                plan.details["oldName"]
            )));
        }
        update(d, name, version, spec).await?;
        Ok(Outcome {
            summary: format!("service {name} now mounts {new_name}"),
            details: json!({"newId": new_id}),
        })
    }
    async fn verify(&self, req: &Request, plan: &Plan) -> Result<Verdict, DriverError> {
        let name = req.field("name")?;
        let new_name = plan.details["newName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        tasks_converged(&self.0.docker, name, move |t| {
            t.container_spec
                .as_ref()
                .and_then(|c| c.configs.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.config_name.as_deref() == Some(new_name.as_str()))
                })
        })
        .await
    }
}
