//! `docker.prune`: remove stopped containers, dangling images, build cache
//! and (opt-in) unused volumes on this agent's node; its parameters and driver.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bollard::query_parameters as qp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{derr, local, Engine};
use crate::drivers::action::{
    target_display, Action, ActionSpec, DriverError, Outcome, Params, Plan, Request, Scope,
    ScopeKind, Target, Verdict,
};
use crate::units::{ByteSize, Duration};

/// `docker.prune` in the catalogue.
pub const SPEC: ActionSpec = ActionSpec::of::<Prune>(
    "docker.prune",
    "docker",
    "Remove stopped containers, dangling images, build cache and (opt-in) unused volumes.",
    ScopeKind::Node,
    600,
    &[("host", &["node"])],
);

/// `docker.prune`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "DockerPrune")]
pub struct Prune {
    /// Remove stopped containers.
    #[serde(default = "super::yes")]
    pub containers: bool,
    /// Remove dangling images.
    #[serde(default = "super::yes")]
    pub images: bool,
    /// Remove unused volumes: data loss if wrong, so off unless the playbook says so.
    #[serde(default)]
    pub volumes: bool,
    /// Remove build cache.
    #[serde(default = "super::yes")]
    pub build_cache: bool,
    /// Only objects older than this.
    #[serde(default = "day")]
    pub older_than: Duration,
    /// Objects carrying this label are never removed.
    #[serde(default = "keep_label")]
    pub protect_label: String,
    /// Only objects carrying this label (`key` or `key=value`), e.g.
    /// `com.docker.stack.namespace=etl`. Default: every object.
    #[serde(default)]
    pub only_label: Option<String>,
}

fn day() -> Duration {
    Duration::from_secs(86_400)
}
fn keep_label() -> String {
    "remediate.io/keep".into()
}

impl Params for Prune {
    fn check(&self) -> Result<(), String> {
        if !(self.containers || self.images || self.volumes || self.build_cache) {
            return Err(
                "nothing to prune: enable at least one of containers, images, volumes, buildCache"
                    .into(),
            );
        }
        Ok(())
    }
    fn describe(&self, t: &Target) -> String {
        let mut what = Vec::new();
        if self.containers {
            what.push("stopped containers");
        }
        if self.images {
            what.push("dangling images");
        }
        if self.volumes {
            what.push("unused volumes");
        }
        if self.build_cache {
            what.push("build cache");
        }
        format!(
            "docker prune on {}: {} older than {}; objects labelled {} kept",
            target_display(t),
            what.join(", "),
            self.older_than,
            self.protect_label
        )
    }
}

/// `docker.prune`: stopped containers, dangling images, build cache and
/// (opt-in) unused volumes, older than a minimum age, sparing a label.
#[derive(Debug)]
pub struct DockerPrune(pub Arc<Engine>);

fn filters(p: &Prune, until: bool) -> HashMap<String, Vec<String>> {
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
fn selected(p: &Prune, labels: Option<&HashMap<String, String>>) -> bool {
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
impl Action for DockerPrune {
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
        let p: Prune = req.parsed()?;
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
        let p: Prune = req.parsed()?;
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
            summary: format!(
                "reclaimed {}: {}",
                crate::units::human_bytes(reclaimed),
                removed.join(", ")
            ),
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
