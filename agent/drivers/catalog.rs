//! The catalogue of every action a playbook may name, with its target kinds
//! and parameter schema. Playbooks validate against it whether or not this
//! build has a driver for the action.

use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{command, docker, host, iceberg, kubernetes, postgres, spark};

/// Where an action runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeKind {
    /// Once per cluster.
    Cluster,
    /// On the node named by the target's `node` field.
    Node,
}

/// Parameters of one action.
pub trait Params: DeserializeOwned + Serialize + JsonSchema {
    /// Checks beyond types (ranges, absolute paths).
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
    /// What the action would do, for offline dry-run and plans.
    fn describe(&self, target: &Target) -> String;
}

/// Rendered target fields.
pub type Target = BTreeMap<String, String>;

/// One catalogue entry.
pub struct ActionSpec {
    /// Name, e.g. `kubernetes.pod.restart`.
    pub name: &'static str,
    /// One line for listings.
    pub summary: &'static str,
    /// The backend whose driver executes it.
    pub backend: &'static str,
    /// Accepted target kinds, each with the fields it requires.
    pub targets: &'static [(&'static str, &'static [&'static str])],
    /// Cluster or node scoped.
    pub scope: ScopeKind,
    /// Upper bound on apply when the step sets none.
    pub default_timeout_secs: u64,
    /// Validates parameters and returns them with defaults filled in.
    pub normalize: fn(serde_json::Value) -> Result<serde_json::Value, String>,
    /// The parameters' JSON Schema.
    pub schema: fn(&mut SchemaGenerator) -> Schema,
    /// Offline description of the effect.
    pub describe: fn(&Target, &serde_json::Value) -> String,
}

impl std::fmt::Debug for ActionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionSpec")
            .field("name", &self.name)
            .finish()
    }
}

fn normalize<P: Params>(v: serde_json::Value) -> Result<serde_json::Value, String> {
    let p: P = serde_json::from_value(v).map_err(|e| e.to_string())?;
    p.check()?;
    serde_json::to_value(&p).map_err(|e| e.to_string())
}

fn schema<P: Params>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<P>()
}

fn describe<P: Params>(t: &Target, v: &serde_json::Value) -> String {
    match serde_json::from_value::<P>(v.clone()) {
        Ok(p) => p.describe(t),
        Err(e) => format!("(parameters do not validate: {e})"),
    }
}

macro_rules! action {
    ($name:literal, $backend:literal, $summary:literal, $scope:ident, $timeout:literal, $p:ty, [$(($kind:literal, [$($f:literal),*])),+]) => {
        ActionSpec {
            name: $name,
            summary: $summary,
            backend: $backend,
            targets: &[$(($kind, &[$($f),*])),+],
            scope: ScopeKind::$scope,
            default_timeout_secs: $timeout,
            normalize: normalize::<$p>,
            schema: schema::<$p>,
            describe: describe::<$p>,
        }
    };
}

/// Every action, in the order of DESIGN.md's incident table.
pub static CATALOG: &[ActionSpec] = &[
    action!("kubernetes.pod.restart", "kubernetes", "Evict (honouring PodDisruptionBudgets) or delete a pod so its controller recreates it.",
        Cluster, 300, kubernetes::PodRestart, [("kubernetes.pod", ["namespace", "name"])]),
    action!("kubernetes.workload.rollout-restart", "kubernetes", "Restart a Deployment, StatefulSet or DaemonSet the way `kubectl rollout restart` does.",
        Cluster, 600, kubernetes::RolloutRestart, [("kubernetes.workload", ["namespace", "name"]), ("kubernetes.pod", ["namespace", "name"])]),
    action!("kubernetes.workload.bump-memory", "kubernetes", "Raise an OOM-killed container's memory limit in its owning workload, by a step up to a ceiling.",
        Cluster, 600, kubernetes::BumpMemory, [("kubernetes.pod", ["namespace", "name"]), ("kubernetes.workload", ["namespace", "name"])]),
    action!("kubernetes.workload.scale", "kubernetes", "Scale a workload out by a bounded step.",
        Cluster, 600, kubernetes::Scale, [("kubernetes.workload", ["namespace", "name"])]),
    action!("postgres.connections.recycle", "postgres", "Terminate leaked idle Postgres sessions, never superusers, replication or non-client backends.",
        Cluster, 60, postgres::Recycle, [("postgres.instance", ["name"])]),
    action!("iceberg.table.compact", "iceberg", "Bin-pack small data files of an Iceberg table into files near a target size.",
        Cluster, 3600, iceberg::Compact, [("iceberg.table", ["catalog", "name"])]),
    action!("host.disk.prune", "host", "Delete or compress old files under allowlisted roots until disk usage is under a target.",
        Node, 600, host::DiskPrune, [("host", ["node"])]),
    action!("docker.prune", "docker", "Remove stopped containers, dangling images, build cache and (opt-in) unused volumes.",
        Node, 600, docker::Prune, [("host", ["node"])]),
    action!("spark.executor.bump-memory", "spark", "Raise spark.executor.memory of a Spark application within a ceiling, for its next run.",
        Cluster, 300, spark::BumpMemory, [("spark.application", ["namespace", "name"]), ("swarm.service", ["name"])]),
    action!("swarm.service.restart", "swarm", "Force a rolling restart of a Swarm service's tasks (docker service update --force).",
        Cluster, 600, docker::ServiceRestart, [("swarm.service", ["name"])]),
    action!("swarm.service.bump-memory", "swarm", "Raise a Swarm service's memory limit (and reservation) by a step up to a ceiling.",
        Cluster, 600, docker::ServiceBumpMemory, [("swarm.service", ["name"])]),
    action!("docker.container.restart", "docker", "Restart an unhealthy or OOM-killed container on its node.",
        Node, 120, docker::ContainerRestart, [("docker.container", ["node", "name"])]),
    action!("host.command", "host", "Run a program (argv, no shell) on the target node; a check program verifies the fix.",
        Node, 60, command::Command, [("host", ["node"])]),
];

/// Looks an action up by name.
pub fn get(name: &str) -> Option<&'static ActionSpec> {
    CATALOG.iter().find(|a| a.name == name)
}

/// A short human name for a target: `pod etl/spark-driver-1`, `host node-1`.
pub fn target_display(t: &Target) -> String {
    let kind = t.get("kind").map(String::as_str).unwrap_or("target");
    let short = kind.rsplit('.').next().unwrap_or(kind);
    let name = t.get("name").map(String::as_str);
    match (kind, t.get("namespace"), name, t.get("node")) {
        ("host", _, _, Some(node)) => format!("host {node}"),
        ("iceberg.table", _, Some(n), _) => {
            format!(
                "table {}.{n}",
                t.get("catalog").map(String::as_str).unwrap_or("?")
            )
        }
        (_, Some(ns), Some(n), _) => format!("{short} {ns}/{n}"),
        (_, None, Some(n), Some(node)) => format!("{short} {n} on {node}"),
        (_, None, Some(n), None) => format!("{short} {n}"),
        _ => kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_has_unique_name_and_valid_defaults_where_possible() {
        let mut names: Vec<_> = CATALOG.iter().map(|a| a.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOG.len());
        // Actions whose parameters all have defaults accept `{}`.
        for name in [
            "kubernetes.pod.restart",
            "docker.prune",
            "swarm.service.restart",
            "postgres.connections.recycle",
        ] {
            let a = get(name).unwrap();
            (a.normalize)(serde_json::json!({})).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn bad_parameters_are_rejected_with_the_field_named() {
        let a = get("kubernetes.pod.restart").unwrap();
        let err = (a.normalize)(serde_json::json!({"mode": "explode"})).unwrap_err();
        assert!(err.contains("unknown variant `explode`"), "{err}");
        let err = (a.normalize)(serde_json::json!({"mdoe": "evict"})).unwrap_err();
        assert!(err.contains("unknown field `mdoe`"), "{err}");
    }
}
