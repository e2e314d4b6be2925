//! The configured backends, connected: the registry of drivers this agent
//! can execute and the coordinator that makes a cluster-scoped action run
//! once among several agents. Connecting reads; it changes nothing.

use std::sync::Arc;

use crate::cli::{Error, Result};
use crate::config::AgentConfig;
use crate::coord::Coordinator;
use crate::drivers::Registry;

/// The drivers the config's backends enable (connecting reads, changes
/// nothing), and the coordinator for exactly-once across agents.
pub fn connect(
    cfg: &AgentConfig,
    node: &str,
    rt: &tokio::runtime::Runtime,
) -> Result<(Registry, Option<Arc<dyn Coordinator>>)> {
    let node = node.to_string();
    // Drivers: host.command always; Kubernetes when configured (connecting
    // reads the service account or kubeconfig, nothing is changed).
    let mut registry = crate::drivers::host::builtin_with(&node, cfg.backends.ssh.clone());
    let mut coordinator: Option<Arc<dyn Coordinator>> = None;
    if let Some(k) = &cfg.backends.kubernetes {
        let client = rt
            .block_on(crate::drivers::kubernetes::connect(k))
            .map_err(|e| Error::Input(format!("backends.kubernetes: {e}")))?;
        let holder = std::env::var("POD_NAME").unwrap_or_else(|_| node.clone());
        let namespace = k
            .namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "remediate".into());
        coordinator = Some(std::sync::Arc::new(
            crate::coord::kubernetes::LeaseCoordinator::new(client.clone(), &namespace, &holder),
        ));
        crate::drivers::kubernetes::register(
            &mut registry,
            std::sync::Arc::new(crate::drivers::kubernetes::Kube { client, holder }),
        );
    }
    if let Some(d) = &cfg.backends.docker {
        let docker = crate::drivers::docker::connect(d)
            .map_err(|e| Error::Input(format!("backends.docker: {e}")))?;
        // On a Swarm manager, claims go to the managers' raft store.
        let info = rt
            .block_on(docker.info())
            .map_err(|e| Error::Input(format!("backends.docker: cannot reach the engine: {e}")))?;
        let manager = info
            .swarm
            .as_ref()
            .and_then(|s| s.control_available)
            .unwrap_or(false);
        let in_swarm = info
            .swarm
            .as_ref()
            .and_then(|s| s.local_node_state.as_ref())
            .is_some_and(|s| *s == bollard::models::LocalNodeState::ACTIVE);
        if coordinator.is_none() && in_swarm && !manager {
            coordinator = Some(std::sync::Arc::new(crate::coord::Refusing(
                "this agent runs on a Swarm worker: cluster-scoped runs are claimed and counted in the managers' raft store, which a worker cannot reach; a manager's agent acts".into(),
            )));
        }
        if coordinator.is_none() && manager {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default();
            let holder = std::env::var("REMEDIATE_AGENT_ID").unwrap_or(format!("{node}@{host}"));
            coordinator = Some(std::sync::Arc::new(
                crate::coord::swarm::ConfigCoordinator::new(docker.clone(), &holder),
            ));
        }
        crate::drivers::docker::register(
            &mut registry,
            std::sync::Arc::new(crate::drivers::docker::Engine {
                docker,
                node: node.clone(),
            }),
        );
    }
    crate::drivers::postgres::register(&mut registry, &cfg.backends.postgres);
    crate::drivers::iceberg::register(&mut registry, &cfg.backends.iceberg);
    // Node-scoped actions on inventory hosts go over SSH.
    crate::drivers::host::ssh::route(&mut registry, &node, &cfg.backends.ssh);
    Ok((registry, coordinator))
}
