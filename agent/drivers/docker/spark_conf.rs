//! `spark.executor.bump-memory` for Spark on Swarm: the Docker route of the
//! action (see [`crate::drivers::spark`]), a new spark-defaults.conf config.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;

use super::swarm::{service, tasks_converged, update};
use super::{derr, Engine};
use crate::drivers::action::{Action, DriverError, Outcome, Plan, Request, Scope, Verdict};
use crate::drivers::spark::{spark_memory, BumpMemory, SPEC};

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
        SPEC.name
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        use base64::Engine as _;
        let p: BumpMemory = req.parsed()?;
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
        let (_, new) = p.next(&mem, "spark.executor.memory", &format!("service {name}"))?;
        let mut new_text = conf_set(&text, "spark.executor.memory", &spark_memory(new));
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
                spark_memory(new),
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
