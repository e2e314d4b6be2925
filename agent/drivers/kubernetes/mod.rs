//! The Kubernetes backend (kube client): pod restart, rollout restart,
//! memory bump, scale, and the spark-operator route of
//! `spark.executor.bump-memory`; an Event on the target for every executed
//! or failed action. One file per action; this module holds the client, the
//! API error mapping and the table of actions.
//!
//! Every read is in `plan`; `apply` writes with preconditions where the
//! API has them (resourceVersion on spec patches); `verify` polls the
//! post-condition (replacement Ready, rollout complete, generation observed).

pub mod bump_memory;
mod events;
mod pod_evidence;
pub mod pod_restart;
pub mod rollout_restart;
pub mod scale;
pub mod spark_application;
mod workload;

use std::sync::Arc;

use kube::api::Api;
use kube::Client;

use crate::drivers::action::{DriverError, Entry};
use crate::drivers::registry::Registry;
use crate::drivers::spark;

pub use bump_memory::{BumpMemory, KubeBumpMemory};
pub use pod_restart::{KubePodRestart, PodRestart, RestartMode};
pub use rollout_restart::{KubeRolloutRestart, RolloutRestart};
pub use scale::{KubeScaleOut, Scale};
pub use spark_application::SparkApplicationBump;
pub use workload::{owner_of, Rollout, RolloutState, Workload};

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
    Client::try_from(without_retries(config)).map_err(|e| format!("kubernetes client: {e}"))
}

/// The client config the drivers need: kube's default retry layer off. It
/// retries 429, 503 and 504 up to 15 times with a back-off growing to
/// minutes, inside a single call: an eviction a PodDisruptionBudget refuses
/// would then end as a bare step timeout, and a Lease or counters write
/// would wait past the run's own bound. The drivers retry 429 themselves
/// within the step timeout and report 5xx as retryable; the coordinator
/// fails closed.
pub fn without_retries(mut config: kube::Config) -> kube::Config {
    // Every client the agent and its tests build goes through here.
    crate::install_tls_provider();
    config.default_retry = false;
    config
}

/// Every Kubernetes action: its catalogue entry and its driver.
pub const ACTIONS: &[Entry<Arc<Kube>>] = &[
    Entry::new(&pod_restart::SPEC, |k| Arc::new(KubePodRestart(k.clone()))),
    Entry::new(&rollout_restart::SPEC, |k| {
        Arc::new(KubeRolloutRestart(k.clone()))
    }),
    Entry::new(&bump_memory::SPEC, |k| Arc::new(KubeBumpMemory(k.clone()))),
    Entry::new(&scale::SPEC, |k| Arc::new(KubeScaleOut(k.clone()))),
    Entry::for_kind(&spark::SPEC, spark::ON_KUBERNETES, |k| {
        Arc::new(SparkApplicationBump(k.clone()))
    }),
];

/// Registers every Kubernetes action.
pub fn register(reg: &mut Registry, kube: Arc<Kube>) {
    reg.register_table(ACTIONS, &kube);
}

/// An API error as a driver error: 409, 429 and 5xx may pass; the rest do
/// not. A 403 names what the agent's role lacks and how to grant it.
pub(super) fn api_err(what: &str, e: kube::Error) -> DriverError {
    match &e {
        kube::Error::Api(s) if s.code == 403 => {
            DriverError::permanent(format!("{what}: {}", forbidden(s)))
        }
        kube::Error::Api(s) if s.code == 409 || s.code == 429 || s.code >= 500 => {
            DriverError::retryable(format!("{what}: {} ({})", s.message, s.code))
        }
        kube::Error::Api(s) => {
            DriverError::permanent(format!("{what}: {} ({})", s.message, s.code))
        }
        other => DriverError::retryable(format!("{what}: {other}")),
    }
}

/// A 403 as the fix: "forbidden: the agent's role lacks delete on leases
/// (coordination.k8s.io) in namespace remediate; ...". The verb, resource,
/// group and namespace are read from the API server's message (`User "..."
/// cannot VERB resource "RESOURCE" in API group "GROUP" in the namespace
/// "NS"`, the authorizer's fixed wording); the raw message follows.
pub(crate) fn forbidden(s: &kube::core::Status) -> String {
    let m = &s.message;
    let after = |key: &str| -> Option<&str> {
        let i = m.find(key)? + key.len();
        let rest = &m[i..];
        Some(&rest[..rest.find('"')?])
    };
    let verb = m
        .find(" cannot ")
        .map(|i| &m[i + " cannot ".len()..])
        .and_then(|r| r.split_whitespace().next());
    let resource = after("resource \"");
    match (verb, resource) {
        (Some(verb), Some(resource)) => {
            let group = after("in API group \"").unwrap_or_default();
            let what = if group.is_empty() {
                resource.to_string()
            } else {
                format!("{resource} ({group})")
            };
            let (scope, role) = match after("in the namespace \"") {
                Some(ns) => (format!(" in namespace {ns}"), "Role or ClusterRole"),
                None => (" cluster-wide".to_string(), "ClusterRole"),
            };
            format!(
                "forbidden: the agent's role lacks {verb} on {what}{scope}; grant it to the agent's service account in its {role} (deploy/k8s/rbac.yaml grants what every action needs: kubectl apply -k deploy/k8s). API server: {m} (403)"
            )
        }
        _ => format!(
            "forbidden: the agent's role does not allow this request; check the agent's service account against deploy/k8s/rbac.yaml. API server: {m} (403)"
        ),
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
pub(super) async fn get_opt<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
) -> Result<Option<K>, DriverError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get(name).await {
        Ok(o) => Ok(Some(o)),
        Err(e) if code(&e) == Some(404) => Ok(None),
        Err(e) => Err(api_err(what, e)),
    }
}
