//! The Kubernetes driver (kube client): pod restart, rollout restart,
//! memory bump, scale, and spark-operator executor memory; an Event on the
//! target for every executed or failed action.
//!
//! Every read is in `plan`; `apply` writes with preconditions where the
//! API has them (resourceVersion on spec patches); `verify` polls the
//! post-condition (replacement Ready, rollout complete, generation observed).

use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event as K8sEvent, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::Client;
use serde_json::json;

use super::spark::spark_memory;
use super::{Action, DriverError, Outcome, Plan, Registry, Request, Scope, Verdict};
use crate::units::ByteSize;

/// What every Kubernetes action shares.
pub struct Kube {
    /// The API client.
    pub client: Client,
    /// Who acts (the agent's pod name): Event source, Lease holder.
    pub holder: String,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube")
            .field("holder", &self.holder)
            .finish()
    }
}

/// Connects with the in-cluster service account, or a kubeconfig (and context).
pub async fn connect(cfg: &crate::config::KubernetesBackend) -> Result<Client, String> {
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            let opts = kube::config::KubeConfigOptions {
                context: cfg.context.clone(),
                ..Default::default()
            };
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            format!("kubernetes: no in-cluster service account and no usable $KUBECONFIG: {e}")
        })?,
    };
    Client::try_from(config).map_err(|e| format!("kubernetes client: {e}"))
}

/// Registers every Kubernetes action.
pub fn register(reg: &mut Registry, kube: Arc<Kube>) {
    let actions: [Arc<dyn Action>; 4] = [
        Arc::new(PodRestart(kube.clone())),
        Arc::new(RolloutRestart(kube.clone())),
        Arc::new(BumpMemory(kube.clone())),
        Arc::new(ScaleOut(kube.clone())),
    ];
    for a in actions {
        // Every name is in the catalogue.
        let _ = reg.register(a);
    }
    let _ = reg.register_for_kind("spark.application", Arc::new(SparkBumpMemory(kube)));
}

/// An API error as a driver error: 409, 429 and 5xx may pass; the rest do not.
fn api_err(what: &str, e: kube::Error) -> DriverError {
    match &e {
        kube::Error::Api(s) if s.code == 409 || s.code == 429 || s.code >= 500 => {
            DriverError::retryable(format!("{what}: {} ({})", s.message, s.code))
        }
        kube::Error::Api(s) => {
            DriverError::permanent(format!("{what}: {} ({})", s.message, s.code))
        }
        other => DriverError::retryable(format!("{what}: {other}")),
    }
}

/// The HTTP status of an API error.
pub(crate) fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// GET that reads 404 as absent (whatever the error body's reason says).
async fn get_opt<K>(api: &Api<K>, name: &str, what: &str) -> Result<Option<K>, DriverError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get(name).await {
        Ok(o) => Ok(Some(o)),
        Err(e) if code(&e) == Some(404) => Ok(None),
        Err(e) => Err(api_err(what, e)),
    }
}

/// A controller of pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `Deployment`, `StatefulSet`, `DaemonSet` or `ReplicaSet` (a bare one).
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Workload {
    /// The workload a plan recorded (see `workload_details`).
    fn from_details(d: &serde_json::Value) -> Self {
        let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
        Self {
            kind: text("kind"),
            namespace: text("namespace"),
            name: text("name"),
        }
    }

    fn display(&self) -> String {
        format!(
            "{} {}/{}",
            self.kind.to_lowercase(),
            self.namespace,
            self.name
        )
    }
}

fn controller(refs: Option<&Vec<OwnerReference>>) -> Option<&OwnerReference> {
    refs?.iter().find(|o| o.controller == Some(true))
}

/// The workload owning `pod`, following ReplicaSet -> Deployment.
pub async fn owner_of(client: &Client, pod: &Pod) -> Result<Option<Workload>, DriverError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let Some(o) = controller(pod.metadata.owner_references.as_ref()) else {
        return Ok(None);
    };
    if o.kind == "ReplicaSet" {
        let rs = Api::<ReplicaSet>::namespaced(client.clone(), &ns)
            .get(&o.name)
            .await
            .map_err(|e| api_err(&format!("replicaset {ns}/{}", o.name), e))?;
        if let Some(d) = controller(rs.metadata.owner_references.as_ref()) {
            return Ok(Some(Workload {
                kind: d.kind.clone(),
                namespace: ns,
                name: d.name.clone(),
            }));
        }
    }
    Ok(Some(Workload {
        kind: o.kind.clone(),
        namespace: ns,
        name: o.name.clone(),
    }))
}

/// Replicas of a workload: (desired, ready, updated, generation, observed generation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Desired replicas.
    pub desired: i64,
    /// Ready replicas.
    pub ready: i64,
    /// Replicas on the newest template.
    pub updated: i64,
    /// metadata.generation.
    pub generation: i64,
    /// status.observedGeneration.
    pub observed: i64,
}

impl Rollout {
    fn complete(&self) -> bool {
        self.observed >= self.generation
            && self.updated >= self.desired
            && self.ready >= self.desired
    }
}

fn dynamic_api(client: &Client, w: &Workload) -> Result<Api<DynamicObject>, DriverError> {
    let gvk = match w.kind.as_str() {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => {
            GroupVersionKind::gvk("apps", "v1", &w.kind)
        }
        other => {
            return Err(DriverError::permanent(format!(
                "{other} {}/{} is not a workload this driver handles (Deployment, StatefulSet, DaemonSet)",
                w.namespace, w.name
            )))
        }
    };
    Ok(Api::namespaced_with(
        client.clone(),
        &w.namespace,
        &ApiResource::from_gvk(&gvk),
    ))
}

async fn get_workload(client: &Client, w: &Workload) -> Result<DynamicObject, DriverError> {
    dynamic_api(client, w)?
        .get(&w.name)
        .await
        .map_err(|e| api_err(&w.display(), e))
}

fn rollout_of(obj: &DynamicObject, kind: &str) -> Rollout {
    let st = &obj.data["status"];
    let n = |v: &serde_json::Value| v.as_i64().unwrap_or(0);
    let desired = if kind == "DaemonSet" {
        n(&st["desiredNumberScheduled"])
    } else {
        obj.data["spec"]["replicas"].as_i64().unwrap_or(1)
    };
    let (ready, updated) = if kind == "DaemonSet" {
        (n(&st["numberReady"]), n(&st["updatedNumberScheduled"]))
    } else {
        (n(&st["readyReplicas"]), n(&st["updatedReplicas"]))
    };
    Rollout {
        desired,
        ready,
        updated,
        generation: obj.metadata.generation.unwrap_or(0),
        observed: n(&st["observedGeneration"]),
    }
}

fn pod_state(pod: &Pod) -> String {
    let Some(st) = &pod.status else {
        return "no status".into();
    };
    let mut parts = vec![st.phase.clone().unwrap_or_else(|| "Unknown".into())];
    for c in st.container_statuses.iter().flatten() {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            if let Some(r) = &w.reason {
                parts = vec![r.clone()];
            }
        }
        if c.restart_count > 0 {
            parts.push(format!("{} restarts", c.restart_count));
        }
    }
    parts.join(", ")
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

// --------------------------------------------------------------------------
// kubernetes.pod.restart
// --------------------------------------------------------------------------

/// `kubernetes.pod.restart`: evict (PDB-aware) or delete a pod.
#[derive(Debug)]
pub struct PodRestart(pub Arc<Kube>);

#[async_trait]
impl Action for PodRestart {
    fn name(&self) -> &'static str {
        "kubernetes.pod.restart"
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }

    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        let p: super::kubernetes::PodRestart = req.parsed()?;
        let (ns, name) = (req.field("namespace")?, req.field("name")?);
        let pods = Api::<Pod>::namespaced(self.0.client.clone(), ns);
        let pod = pods
            .get(name)
            .await
            .map_err(|e| api_err(&format!("pod {ns}/{name}"), e))?;
        let direct = controller(pod.metadata.owner_references.as_ref()).map(|o| o.name.clone());
        let owner = owner_of(&self.0.client, &pod).await?;
        let Some(owner) = owner else {
            if !p.allow_bare_pods {
                return Err(DriverError::permanent(format!(
                    "pod {ns}/{name} has no controller: deleting it would remove it for good (set allowBarePods: true to allow)"
                )));
            }
            return Ok(Plan {
                summary: format!("{} bare pod {ns}/{name} ({})", verb(&p), pod_state(&pod)),
                details: json!({"uid": pod.metadata.uid}),
            });
        };
        let w = get_workload(&self.0.client, &owner).await?;
        let r = rollout_of(&w, &owner.kind);
        Ok(Plan {
            summary: format!(
                "{} pod {ns}/{name} ({}); {} recreates it ({}/{} ready)",
                verb(&p),
                pod_state(&pod),
                owner.display(),
                r.ready,
                r.desired
            ),
            details: json!({
                "uid": pod.metadata.uid,
                "owner": direct,
                "workload": {
                    "kind": owner.kind,
                    "name": owner.display(),
                    "replicas": r.desired,
                    "unavailable": (r.desired - r.ready).max(0),
                }
            }),
        })
    }

    async fn apply(&self, req: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let p: super::kubernetes::PodRestart = req.parsed()?;
        let (ns, name) = (req.field("namespace")?, req.field("name")?);
        let pods = Api::<Pod>::namespaced(self.0.client.clone(), ns);
        let uid = plan.details["uid"].as_str().map(str::to_string);
        // Idempotent: the pod we planned for may already be gone.
        match get_opt(&pods, name, &format!("pod {ns}/{name}")).await? {
            Some(cur) if cur.metadata.uid == uid => {}
            _ => {
                return Ok(Outcome {
                    summary: format!("pod {ns}/{name} was already replaced; nothing to do"),
                    details: json!({}),
                })
            }
        }
        let dp = DeleteParams {
            grace_period_seconds: p.grace_period_seconds,
            preconditions: uid.clone().map(|u| kube::api::Preconditions {
                uid: Some(u),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match p.mode {
            super::kubernetes::RestartMode::Delete => {
                pods.delete(name, &dp)
                    .await
                    .map_err(|e| api_err(&format!("delete pod {ns}/{name}"), e))?;
                Ok(Outcome {
                    summary: format!("deleted pod {ns}/{name}"),
                    details: json!({}),
                })
            }
            super::kubernetes::RestartMode::Evict => {
                // 429: a PodDisruptionBudget says not now. Wait and retry
                // within the step's timeout (the engine bounds this loop).
                let mut wait = std::time::Duration::from_millis(500);
                loop {
                    match evict(
                        &self.0.client,
                        ns,
                        name,
                        p.grace_period_seconds,
                        uid.as_deref(),
                    )
                    .await
                    {
                        Ok(_) => {
                            return Ok(Outcome {
                                summary: format!("evicted pod {ns}/{name}"),
                                details: json!({}),
                            })
                        }
                        Err(e) if code(&e) == Some(429) => {
                            tracing::info!(pod = %format!("{ns}/{name}"), "eviction refused by a PodDisruptionBudget; retrying");
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(std::time::Duration::from_secs(10));
                        }
                        Err(e) if code(&e) == Some(404) => {
                            return Ok(Outcome {
                                summary: format!("pod {ns}/{name} was already gone"),
                                details: json!({}),
                            })
                        }
                        Err(e) => return Err(api_err(&format!("evict pod {ns}/{name}"), e)),
                    }
                }
            }
        }
    }

    async fn verify(&self, req: &Request, plan: &Plan) -> Result<Verdict, DriverError> {
        let (ns, name) = (req.field("namespace")?, req.field("name")?);
        let uid = plan.details["uid"].as_str();
        let pods = Api::<Pod>::namespaced(self.0.client.clone(), ns);
        let cur = get_opt(&pods, name, &format!("pod {ns}/{name}")).await?;
        if cur
            .as_ref()
            .is_some_and(|p| p.metadata.uid.as_deref() == uid)
        {
            return Ok(Verdict::Pending(format!(
                "pod {ns}/{name} is still terminating"
            )));
        }
        let wl = &plan.details["workload"];
        let Some(kind) = wl["kind"].as_str() else {
            return Ok(Verdict::Verified(format!("bare pod {ns}/{name} is gone")));
        };
        let owner = Workload {
            kind: kind.to_string(),
            namespace: ns.to_string(),
            name: wl["name"]
                .as_str()
                .and_then(|n| n.rsplit('/').next())
                .unwrap_or_default()
                .to_string(),
        };
        // The replacement: a Ready pod of the same direct owner (the
        // ReplicaSet, StatefulSet or DaemonSet) that is not the old pod.
        // Owners are compared on the client, so a stale selector cannot lie.
        let direct = plan.details["owner"].as_str().unwrap_or_default();
        let all = pods
            .list(&Default::default())
            .await
            .map_err(|e| api_err(&format!("pods in {ns}"), e))?;
        let replacement = all.items.iter().find(|p| {
            controller(p.metadata.owner_references.as_ref()).is_some_and(|o| o.name == direct)
                && p.metadata.uid.as_deref() != uid
                && pod_ready(p)
        });
        let Some(replacement) = replacement else {
            return Ok(Verdict::Pending(format!(
                "no Ready replacement for pod {ns}/{name} from {} yet",
                if direct.is_empty() {
                    "its owner"
                } else {
                    direct
                }
            )));
        };
        let r = rollout_of(&get_workload(&self.0.client, &owner).await?, kind);
        if r.ready >= r.desired {
            Ok(Verdict::Verified(format!(
                "replacement pod {ns}/{} Running and Ready; {} has {}/{} ready",
                replacement.metadata.name.as_deref().unwrap_or("?"),
                owner.display(),
                r.ready,
                r.desired
            )))
        } else {
            Ok(Verdict::Pending(format!(
                "{} has {}/{} ready",
                owner.display(),
                r.ready,
                r.desired
            )))
        }
    }

    async fn record(&self, req: &Request, ok: bool, message: &str) {
        event(&self.0, req, "Pod", ok, "kubernetes.pod.restart", message).await;
    }
}

/// POSTs a policy/v1 Eviction. Built here rather than with kube's
/// `Api::evict`, which sends `delete_options` (snake case): the API server
/// ignores that key, and with it the uid precondition and grace period.
async fn evict(
    client: &Client,
    ns: &str,
    name: &str,
    grace: Option<u32>,
    uid: Option<&str>,
) -> Result<kube::core::Status, kube::Error> {
    let mut delete_options = json!({});
    if let Some(g) = grace {
        delete_options["gracePeriodSeconds"] = json!(g);
    }
    if let Some(u) = uid {
        delete_options["preconditions"] = json!({"uid": u});
    }
    let body = json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": ns},
        "deleteOptions": delete_options,
    });
    let req = http::Request::post(format!("/api/v1/namespaces/{ns}/pods/{name}/eviction"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).unwrap_or_default())
        .map_err(kube::Error::HttpError)?;
    client.request::<kube::core::Status>(req).await
}

fn verb(p: &super::kubernetes::PodRestart) -> &'static str {
    match p.mode {
        super::kubernetes::RestartMode::Evict => "evict",
        super::kubernetes::RestartMode::Delete => "delete",
    }
}

/// The workload a target names: `kubernetes.workload` with an optional
/// `workload` field (deployment, statefulset, daemonset; default
/// deployment), or the owner of a `kubernetes.pod`.
async fn target_workload(k: &Kube, req: &Request) -> Result<Workload, DriverError> {
    let (ns, name) = (req.field("namespace")?, req.field("name")?);
    if req.target.get("kind").map(String::as_str) == Some("kubernetes.pod") {
        let pod = Api::<Pod>::namespaced(k.client.clone(), ns)
            .get(name)
            .await
            .map_err(|e| api_err(&format!("pod {ns}/{name}"), e))?;
        return owner_of(&k.client, &pod).await?.ok_or_else(|| {
            DriverError::permanent(format!("pod {ns}/{name} has no controller to act on"))
        });
    }
    let kind = match req
        .target
        .get("workload")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("deployment") => "Deployment",
        Some("statefulset") => "StatefulSet",
        Some("daemonset") => "DaemonSet",
        Some(other) => {
            return Err(DriverError::permanent(format!(
                "target.workload {other:?}: expected deployment, statefulset or daemonset"
            )))
        }
    };
    Ok(Workload {
        kind: kind.into(),
        namespace: ns.into(),
        name: name.into(),
    })
}

async fn verify_rollout(k: &Kube, plan: &Plan) -> Result<Verdict, DriverError> {
    let w = Workload::from_details(&plan.details);
    let obj = get_workload(&k.client, &w).await?;
    let r = rollout_of(&obj, &w.kind);
    let applied_gen = plan.details["appliedGeneration"].as_i64().unwrap_or(0);
    if r.complete() && r.observed >= applied_gen {
        Ok(Verdict::Verified(format!(
            "rollout of {} complete: {}/{} updated and ready, generation {} observed",
            w.display(),
            r.updated,
            r.desired,
            r.observed
        )))
    } else {
        Ok(Verdict::Pending(format!(
            "rollout of {}: {}/{} updated, {} ready, generation {}/{}",
            w.display(),
            r.updated,
            r.desired,
            r.ready,
            r.observed,
            r.generation
        )))
    }
}

fn workload_details(w: &Workload, obj: &DynamicObject) -> serde_json::Value {
    json!({
        "kind": w.kind,
        "namespace": w.namespace,
        "name": w.name,
        "resourceVersion": obj.metadata.resource_version,
        "generation": obj.metadata.generation,
    })
}

// --------------------------------------------------------------------------
// kubernetes.workload.rollout-restart
// --------------------------------------------------------------------------

/// `kubernetes.workload.rollout-restart`, as `kubectl rollout restart` does it.
#[derive(Debug)]
pub struct RolloutRestart(pub Arc<Kube>);

#[async_trait]
impl Action for RolloutRestart {
    fn name(&self) -> &'static str {
        "kubernetes.workload.rollout-restart"
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        let w = target_workload(&self.0, req).await?;
        let obj = get_workload(&self.0.client, &w).await?;
        let r = rollout_of(&obj, &w.kind);
        Ok(Plan {
            summary: format!(
                "rollout-restart {} ({}/{} ready)",
                w.display(),
                r.ready,
                r.desired
            ),
            details: workload_details(&w, &obj),
        })
    }
    async fn apply(&self, _: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let w = Workload::from_details(&plan.details);
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": now
        }}}}});
        let obj = dynamic_api(&self.0.client, &w)?
            .patch(&w.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_err(&format!("patch {}", w.display()), e))?;
        Ok(Outcome {
            summary: format!(
                "restarted {} (restartedAt {now}, generation {})",
                w.display(),
                obj.metadata.generation.unwrap_or(0)
            ),
            details: json!({"appliedGeneration": obj.metadata.generation}),
        })
    }
    async fn verify(&self, _: &Request, plan: &Plan) -> Result<Verdict, DriverError> {
        verify_rollout(&self.0, plan).await
    }
    async fn record(&self, req: &Request, ok: bool, message: &str) {
        event(
            &self.0,
            req,
            "",
            ok,
            "kubernetes.workload.rollout-restart",
            message,
        )
        .await;
    }
}

// --------------------------------------------------------------------------
// kubernetes.workload.bump-memory
// --------------------------------------------------------------------------

/// `kubernetes.workload.bump-memory`: raise an OOM-killed container's limit.
#[derive(Debug)]
pub struct BumpMemory(pub Arc<Kube>);

/// The container to bump: the one named, else the last OOM-killed one.
fn oom_container(pod: &Pod, named: Option<&str>) -> Option<String> {
    if let Some(n) = named {
        return Some(n.to_string());
    }
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| {
            let t = c.last_state.as_ref()?.terminated.as_ref()?;
            (t.reason.as_deref() == Some("OOMKilled")).then(|| c.name.clone())
        })
}

#[async_trait]
impl Action for BumpMemory {
    fn name(&self) -> &'static str {
        "kubernetes.workload.bump-memory"
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        let p: super::kubernetes::BumpMemory = req.parsed()?;
        let (ns, name) = (req.field("namespace")?, req.field("name")?);
        let (w, container) = if req.target.get("kind").map(String::as_str) == Some("kubernetes.pod")
        {
            let pod = Api::<Pod>::namespaced(self.0.client.clone(), ns)
                .get(name)
                .await
                .map_err(|e| api_err(&format!("pod {ns}/{name}"), e))?;
            let c = oom_container(&pod, p.container.as_deref()).ok_or_else(|| {
                DriverError::permanent(format!(
                    "pod {ns}/{name} has no OOM-killed container (name one with `container`)"
                ))
            })?;
            let w = owner_of(&self.0.client, &pod).await?.ok_or_else(|| {
                DriverError::permanent(format!(
                    "pod {ns}/{name} has no controller whose template could be changed"
                ))
            })?;
            (w, c)
        } else {
            let w = target_workload(&self.0, req).await?;
            let c = p.container.clone().ok_or_else(|| {
                DriverError::permanent("name the container to bump with `container`")
            })?;
            (w, c)
        };
        let obj = get_workload(&self.0.client, &w).await?;
        let containers = obj.data["spec"]["template"]["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let c = containers
            .iter()
            .find(|c| c["name"] == container.as_str())
            .ok_or_else(|| {
                DriverError::permanent(format!("{} has no container {container}", w.display()))
            })?;
        let limit = c["resources"]["limits"]["memory"].as_str().ok_or_else(|| {
            DriverError::permanent(format!(
                "container {container} of {} has no memory limit to raise",
                w.display()
            ))
        })?;
        let current: ByteSize = limit
            .parse()
            .map_err(|e| DriverError::permanent(format!("memory limit {limit:?}: {e}")))?;
        if current.0 >= p.ceiling.0 {
            return Err(DriverError::permanent(format!(
                "container {container} of {} is already at {limit}, the ceiling is {}: not raising",
                w.display(),
                p.ceiling
            )));
        }
        let new = p.step.bumped(current.0, p.ceiling);
        let request = c["resources"]["requests"]["memory"]
            .as_str()
            .map(str::to_string);
        let mut details = workload_details(&w, &obj);
        details["container"] = json!(container);
        details["from"] = json!(current.0);
        details["to"] = json!(new);
        details["bumpRequest"] = json!(p.bump_request && request.is_some());
        Ok(Plan {
            summary: format!(
                "raise memory of container {container} in {} from {} to {} (ceiling {})",
                w.display(),
                current,
                ByteSize(new),
                p.ceiling
            ),
            details,
        })
    }
    async fn apply(&self, _: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let d = &plan.details;
        let w = Workload::from_details(d);
        let container = d["container"].as_str().unwrap_or_default();
        let new = d["to"].as_u64().unwrap_or_default();
        let q = ByteSize(new).to_string();
        let mut resources = json!({"limits": {"memory": q}});
        if d["bumpRequest"] == true {
            resources["requests"] = json!({"memory": q});
        }
        // Strategic merge by container name, with the resourceVersion read in
        // plan as a precondition: a concurrent change makes this a 409.
        let patch = json!({
            "metadata": {"resourceVersion": d["resourceVersion"]},
            "spec": {"template": {"spec": {"containers": [{"name": container, "resources": resources}]}}}
        });
        let obj = dynamic_api(&self.0.client, &w)?
            .patch(&w.name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .map_err(|e| api_err(&format!("patch {}", w.display()), e))?;
        Ok(Outcome {
            summary: format!(
                "container {container} of {}: memory limit {} -> {}",
                w.display(),
                ByteSize(d["from"].as_u64().unwrap_or_default()),
                ByteSize(new)
            ),
            details: json!({"appliedGeneration": obj.metadata.generation}),
        })
    }
    async fn verify(&self, _: &Request, plan: &Plan) -> Result<Verdict, DriverError> {
        verify_rollout(&self.0, plan).await
    }
    async fn record(&self, req: &Request, ok: bool, message: &str) {
        event(
            &self.0,
            req,
            "",
            ok,
            "kubernetes.workload.bump-memory",
            message,
        )
        .await;
    }
}

// --------------------------------------------------------------------------
// kubernetes.workload.scale
// --------------------------------------------------------------------------

/// `kubernetes.workload.scale`: bounded scale out.
#[derive(Debug)]
pub struct ScaleOut(pub Arc<Kube>);

#[async_trait]
impl Action for ScaleOut {
    fn name(&self) -> &'static str {
        "kubernetes.workload.scale"
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        let p: super::kubernetes::Scale = req.parsed()?;
        let w = target_workload(&self.0, req).await?;
        if w.kind == "DaemonSet" {
            return Err(DriverError::permanent(format!(
                "{} cannot be scaled",
                w.display()
            )));
        }
        let obj = get_workload(&self.0.client, &w).await?;
        let cur = obj.data["spec"]["replicas"].as_i64().unwrap_or(1);
        if cur >= i64::from(p.max_replicas) {
            return Err(DriverError::permanent(format!(
                "{} already has {cur} replicas, maxReplicas is {}: not scaling",
                w.display(),
                p.max_replicas
            )));
        }
        let to = (cur + i64::from(p.step)).min(i64::from(p.max_replicas));
        let mut details = workload_details(&w, &obj);
        details["from"] = json!(cur);
        details["to"] = json!(to);
        Ok(Plan {
            summary: format!(
                "scale {} from {cur} to {to} replicas (max {})",
                w.display(),
                p.max_replicas
            ),
            details,
        })
    }
    async fn apply(&self, _: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let d = &plan.details;
        let w = Workload::from_details(d);
        let to = d["to"].as_i64().unwrap_or_default();
        let patch = json!({"metadata": {"resourceVersion": d["resourceVersion"]}, "spec": {"replicas": to}});
        let obj = dynamic_api(&self.0.client, &w)?
            .patch(&w.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_err(&format!("scale {}", w.display()), e))?;
        Ok(Outcome {
            summary: format!("scaled {} from {} to {to} replicas", w.display(), d["from"]),
            details: json!({"appliedGeneration": obj.metadata.generation}),
        })
    }
    async fn verify(&self, _: &Request, plan: &Plan) -> Result<Verdict, DriverError> {
        verify_rollout(&self.0, plan).await
    }
    async fn record(&self, req: &Request, ok: bool, message: &str) {
        event(&self.0, req, "", ok, "kubernetes.workload.scale", message).await;
    }
}

// --------------------------------------------------------------------------
// spark.executor.bump-memory (spark-operator)
// --------------------------------------------------------------------------

/// `spark.executor.bump-memory` for `sparkoperator.k8s.io/v1beta2` SparkApplications.
#[derive(Debug)]
pub struct SparkBumpMemory(pub Arc<Kube>);

fn spark_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("sparkoperator.k8s.io", "v1beta2", "SparkApplication");
    let mut ar = ApiResource::from_gvk(&gvk);
    ar.plural = "sparkapplications".into();
    Api::namespaced_with(client.clone(), ns, &ar)
}

#[async_trait]
impl Action for SparkBumpMemory {
    fn name(&self) -> &'static str {
        "spark.executor.bump-memory"
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        let p: super::spark::BumpMemory = req.parsed()?;
        let (ns, name) = (req.field("namespace")?, req.field("name")?);
        let app = spark_api(&self.0.client, ns)
            .get(name)
            .await
            .map_err(|e| api_err(&format!("sparkapplication {ns}/{name}"), e))?;
        let ex = &app.data["spec"]["executor"];
        let mem = ex["memory"].as_str().unwrap_or("1g");
        let current: ByteSize = mem
            .parse()
            .map_err(|e| DriverError::permanent(format!("spec.executor.memory {mem:?}: {e}")))?;
        if current.0 >= p.ceiling.0 {
            return Err(DriverError::permanent(format!(
                "sparkapplication {ns}/{name} executors already have {mem}, the ceiling is {}: not raising",
                p.ceiling
            )));
        }
        let new = p.step.bumped(current.0, p.ceiling);
        let mut patch = json!({"spec": {"executor": {"memory": spark_memory(new)}}});
        if p.bump_overhead {
            if let Some(o) = ex["memoryOverhead"].as_str() {
                let o: ByteSize = o.parse().map_err(|e| {
                    DriverError::permanent(format!("spec.executor.memoryOverhead: {e}"))
                })?;
                let scaled = (o.0 as f64 * new as f64 / current.0 as f64).ceil() as u64;
                patch["spec"]["executor"]["memoryOverhead"] = json!(spark_memory(scaled));
            }
        }
        if let Some(c) = &p.cores {
            let cores = ex["cores"].as_u64().unwrap_or(1);
            patch["spec"]["executor"]["cores"] = json!((cores + u64::from(c.step))
                .min(u64::from(c.ceiling))
                .max(cores));
        }
        Ok(Plan {
            summary: format!(
                "raise executor memory of sparkapplication {ns}/{name} from {mem} to {} (ceiling {}); the next run gets it",
                spark_memory(new),
                p.ceiling
            ),
            details: json!({"patch": patch, "resourceVersion": app.metadata.resource_version}),
        })
    }
    async fn apply(&self, req: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let (ns, name) = (req.field("namespace")?, req.field("name")?);
        let mut patch = plan.details["patch"].clone();
        patch["metadata"] = json!({"resourceVersion": plan.details["resourceVersion"]});
        spark_api(&self.0.client, ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_err(&format!("patch sparkapplication {ns}/{name}"), e))?;
        Ok(Outcome {
            summary: format!(
                "sparkapplication {ns}/{name}: executor {}",
                plan.details["patch"]["spec"]["executor"]
            ),
            details: json!({}),
        })
    }
    async fn verify(&self, req: &Request, plan: &Plan) -> Result<Verdict, DriverError> {
        let (ns, name) = (req.field("namespace")?, req.field("name")?);
        let app = spark_api(&self.0.client, ns)
            .get(name)
            .await
            .map_err(|e| api_err(&format!("sparkapplication {ns}/{name}"), e))?;
        let want = &plan.details["patch"]["spec"]["executor"]["memory"];
        if &app.data["spec"]["executor"]["memory"] == want {
            Ok(Verdict::Verified(format!(
                "sparkapplication {ns}/{name} executors get {} from the next run",
                want.as_str().unwrap_or_default()
            )))
        } else {
            Ok(Verdict::Failed(format!(
                "sparkapplication {ns}/{name} has executor memory {} after the patch, expected {want}",
                app.data["spec"]["executor"]["memory"]
            )))
        }
    }
    async fn record(&self, req: &Request, ok: bool, message: &str) {
        event(
            &self.0,
            req,
            "SparkApplication",
            ok,
            "spark.executor.bump-memory",
            message,
        )
        .await;
    }
}

// --------------------------------------------------------------------------
// Events
// --------------------------------------------------------------------------

/// Creates a core/v1 Event on the target: `Remediated` or `RemediationFailed`.
async fn event(k: &Kube, req: &Request, kind: &str, ok: bool, action: &str, message: &str) {
    let (Some(ns), Some(name)) = (req.target.get("namespace"), req.target.get("name")) else {
        return;
    };
    let (api_version, kind) = match (kind, req.target.get("kind").map(String::as_str)) {
        ("Pod", _) | (_, Some("kubernetes.pod")) => ("v1", "Pod".to_string()),
        ("SparkApplication", _) => ("sparkoperator.k8s.io/v1beta2", "SparkApplication".into()),
        _ => {
            let w = req.target.get("workload").map(|s| s.to_ascii_lowercase());
            let k = match w.as_deref() {
                Some("statefulset") => "StatefulSet",
                Some("daemonset") => "DaemonSet",
                _ => "Deployment",
            };
            ("apps/v1", k.to_string())
        }
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let reason = if ok {
        "Remediated"
    } else {
        "RemediationFailed"
    };
    let ev = K8sEvent {
        metadata: ObjectMeta {
            // A unique name rather than generateName: the same on every API
            // server (and on emulators without generateName).
            name: Some(format!(
                "{name}.remediate.{}",
                uuid::Uuid::now_v7().simple()
            )),
            namespace: Some(ns.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(kind),
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            ..ObjectReference::default()
        },
        reason: Some(reason.into()),
        message: Some(format!("{action}: {}", truncate(message, 900))),
        type_: Some(if ok { "Normal" } else { "Warning" }.into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        action: Some(action.into()),
        reporting_component: Some("remediate".into()),
        reporting_instance: Some(k.holder.clone()),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some("remediate".into()),
            host: None,
        }),
        ..K8sEvent::default()
    };
    if let Err(e) = Api::<K8sEvent>::namespaced(k.client.clone(), ns)
        .create(&PostParams::default(), &ev)
        .await
    {
        tracing::warn!(error = %e, "cannot create the Kubernetes Event for {action} on {ns}/{name}");
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
