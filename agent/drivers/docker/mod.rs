//! The Docker backend (bollard): container restart and prune on this
//! agent's own engine, Swarm service restart and memory bump, and the
//! Swarm route of `spark.executor.bump-memory` (these need a manager's
//! engine). One file per action; this module holds the engine client, the
//! error mapping and the table of actions.

pub mod container_restart;
pub mod prune;
pub mod service_bump_memory;
pub mod service_restart;
pub mod spark_conf;
mod swarm;

use std::sync::Arc;

use bollard::Docker;

use crate::drivers::action::{DriverError, Entry, Request};
use crate::drivers::registry::Registry;
use crate::drivers::spark;

pub use container_restart::{ContainerRestart, DockerContainerRestart};
pub use prune::{DockerPrune, Prune};
pub use service_bump_memory::{ServiceBumpMemory, SwarmServiceBumpMemory};
pub use service_restart::{ServiceRestart, SwarmServiceRestart};
pub use spark_conf::{conf_get, conf_set, SparkConfBump};

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

/// Every Docker and Swarm action: its catalogue entry and its driver.
pub const ACTIONS: &[Entry<Arc<Engine>>] = &[
    Entry::new(&prune::SPEC, |e| Arc::new(DockerPrune(e.clone()))),
    Entry::new(&service_restart::SPEC, |e| {
        Arc::new(SwarmServiceRestart(e.clone()))
    }),
    Entry::new(&service_bump_memory::SPEC, |e| {
        Arc::new(SwarmServiceBumpMemory(e.clone()))
    }),
    Entry::new(&container_restart::SPEC, |e| {
        Arc::new(DockerContainerRestart(e.clone()))
    }),
    Entry::for_kind(&spark::SPEC, spark::ON_SWARM, |e| {
        Arc::new(SparkConfBump(e.clone()))
    }),
];

/// Registers the Docker and Swarm actions.
pub fn register(reg: &mut Registry, e: Arc<Engine>) {
    reg.register_table(ACTIONS, &e);
}

/// The serde default of the flags that are on unless a playbook turns them off.
fn yes() -> bool {
    true
}

pub(super) fn derr(what: &str, e: bollard::errors::Error) -> DriverError {
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

pub(super) fn local(e: &Engine, req: &Request, action: &str) -> Result<(), DriverError> {
    match req.target.get("node") {
        Some(n) if *n == e.node => Ok(()),
        Some(n) => Err(DriverError::permanent(format!(
            "{action} targets node {n}, but this agent runs on {}; acting on another node's engine (its agent or SSH) is not available in this build",
            e.node
        ))),
        None => Err(DriverError::permanent(format!("{action} needs target.node"))),
    }
}

/// How long a new task must have been running to count: a task that
/// starts and crashes a second later is not a fix.
pub(super) const STABLE: chrono::Duration = chrono::Duration::seconds(5);
