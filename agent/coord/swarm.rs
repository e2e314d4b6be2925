//! Docker Swarm: claims are Swarm configs named after (playbook, target),
//! kept in the managers' raft store. Creating a config is atomic and names
//! are unique, so of several agents creating the same claim exactly one
//! succeeds (the others get 409). A claim carries its holder and expiry as
//! labels; a lapsed claim is removed by id (only one remover succeeds) and
//! the race to recreate it is again decided by the unique name.
//!
//! Why configs and not a service's version index: a config is a first-class,
//! create-once object of the same raft store, so the claim needs no service
//! to exist and never changes anything that runs.
//!
//! Cluster-wide limits: configs are immutable, so each policy's [`History`]
//! is a chain of versions, `remediate-counters-<policy hash>-<N>`. A write
//! reads the highest version N and creates N+1: the unique name is the
//! compare-and-swap (of two agents writing N+1 one gets 409, reads again
//! and retries). The writer then deletes every version below N+1, and the
//! history drops entries older than the policy's longest window on every
//! write, so one policy costs one small config and one list, one create
//! and a delete or two per run. A store that cannot be read or written
//! refuses the run (fail closed).

use super::*;
use bollard::models::ConfigSpec;
use bollard::Docker;
use std::collections::HashMap;

use base64::Engine as _;

const COUNTERS_LABEL: &str = "remediate.io/counters";
const VERSION_LABEL: &str = "remediate.io/counters-version";

/// Claims as Swarm configs, held as `holder`.
pub struct ConfigCoordinator {
    docker: Docker,
    holder: String,
}

impl std::fmt::Debug for ConfigCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigCoordinator")
            .field("holder", &self.holder)
            .finish()
    }
}

impl ConfigCoordinator {
    /// A coordinator on a Swarm manager's engine.
    pub fn new(docker: Docker, holder: &str) -> Self {
        Self {
            docker,
            holder: holder.into(),
        }
    }

    async fn create(
        &self,
        name: &str,
        until: DateTime<Utc>,
    ) -> Result<String, bollard::errors::Error> {
        let labels: HashMap<String, String> = [
            ("remediate.io/claim-holder".to_string(), self.holder.clone()),
            ("remediate.io/claim-until".to_string(), until.to_rfc3339()),
            ("remediate.io/managed".to_string(), "true".to_string()),
        ]
        .into_iter()
        .collect();
        let r = self
            .docker
            .create_config(ConfigSpec {
                name: Some(name.to_string()),
                labels: Some(labels),
                // Swarm wants 1 byte or more, base64-encoded.
                data: Some({
                    base64::engine::general_purpose::STANDARD.encode(
                        serde_json::json!({"holder": self.holder, "until": until.to_rfc3339()})
                            .to_string(),
                    )
                }),
                templating: None,
            })
            .await?;
        Ok(r.id)
    }

    async fn holder_of(
        &self,
        name: &str,
    ) -> Result<Option<(String, String, DateTime<Utc>)>, String> {
        match self.docker.inspect_config(name).await {
            Ok(c) => {
                let labels = c.spec.and_then(|s| s.labels).unwrap_or_default();
                let until = labels
                    .get("remediate.io/claim-until")
                    .and_then(|u| DateTime::parse_from_rfc3339(u).ok())
                    .map(|u| u.with_timezone(&Utc))
                    .unwrap_or_default();
                Ok(Some((
                    c.id.unwrap_or_default(),
                    labels
                        .get("remediate.io/claim-holder")
                        .cloned()
                        .unwrap_or_default(),
                    until,
                )))
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl ConfigCoordinator {
    /// Reads the policy's newest history, applies `change` and writes it as
    /// the next version; a 409 (another agent wrote that version) reads again.
    async fn update(
        &self,
        policy: &str,
        change: impl Fn(&History) -> Result<History, Refusal>,
    ) -> Result<(), Refusal> {
        let mut l = crate::event::Labels::new();
        l.insert("policy".into(), policy.into());
        let hash = crate::event::fingerprint(&l);
        let unavailable =
            |e: String| Refusal::Unavailable(format!("swarm counters of policy {policy}: {e}"));
        for _ in 0..8 {
            let opts = bollard::query_parameters::ListConfigsOptions {
                filters: Some(
                    [(
                        "label".to_string(),
                        vec![format!("{COUNTERS_LABEL}={hash}")],
                    )]
                    .into_iter()
                    .collect(),
                ),
            };
            let list = self
                .docker
                .list_configs(Some(opts))
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let versions: Vec<(u64, String, Option<String>)> = list
                .into_iter()
                .filter_map(|c| {
                    let spec = c.spec?;
                    let v = spec.labels.as_ref()?.get(VERSION_LABEL)?.parse().ok()?;
                    Some((v, c.id.unwrap_or_default(), spec.data))
                })
                .collect();
            let newest = versions.iter().max_by_key(|(v, ..)| *v);
            let (version, history) = match newest {
                None => (0, History::default()),
                Some((v, _, data)) => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(data.as_deref().unwrap_or_default())
                        .map_err(|e| unavailable(format!("version {v}: {e}")))?;
                    let text = String::from_utf8_lossy(&raw);
                    (*v, History::parse(&text).map_err(unavailable)?)
                }
            };
            let next = change(&history)?;
            let name = format!("remediate-counters-{hash}-{}", version + 1);
            let labels: HashMap<String, String> = [
                (COUNTERS_LABEL.to_string(), hash.clone()),
                (VERSION_LABEL.to_string(), (version + 1).to_string()),
                ("remediate.io/policy".to_string(), policy.to_string()),
            ]
            .into_iter()
            .collect();
            let created = self
                .docker
                .create_config(ConfigSpec {
                    name: Some(name.clone()),
                    labels: Some(labels),
                    data: Some(base64::engine::general_purpose::STANDARD.encode(next.text())),
                    templating: None,
                })
                .await;
            match created {
                Ok(_) => {
                    // Older versions are garbage now; a failed delete is
                    // collected by the next writer.
                    for (v, id, _) in &versions {
                        if *v <= version {
                            if let Err(e) = self.docker.delete_config(id).await {
                                tracing::debug!(config = %id, error = %e, "old counters version not deleted");
                            }
                        }
                    }
                    return Ok(());
                }
                Err(e) if conflict(&e) => continue,
                Err(e) => return Err(unavailable(format!("create {name}: {e}"))),
            }
        }
        Err(unavailable("kept changing under 8 attempts".into()))
    }
}

fn conflict(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}

#[async_trait]
impl Coordinator for ConfigCoordinator {
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, Refusal> {
        let (claim, takeover) = self.claim_config(req).await?;
        if req.counts() {
            if let Err(r) = self
                .update(req.policy, |h| {
                    h.admit(req, takeover).map_err(Refusal::RateLimited)
                })
                .await
            {
                self.release(claim).await;
                return Err(r);
            }
        }
        Ok(claim)
    }

    async fn release(&self, claim: Claim) {
        if let Some(id) = claim.version {
            if let Err(e) = self.docker.delete_config(&id).await {
                tracing::warn!(claim = %claim.name, error = %e, "cannot release the claim; it lapses by itself");
            }
        }
    }

    async fn record_outcome(&self, claim: &Claim, ok: bool, at: DateTime<Utc>) {
        let Some(key) = &claim.outcome else { return };
        if let Err(e) = self
            .update(&key.policy, |h| Ok(h.with_outcome(key, ok, at)))
            .await
        {
            tracing::warn!(playbook = %key.playbook, error = %e, "cannot record the run's outcome cluster-wide; the other agents' breakers do not count it");
        }
    }
}

impl ConfigCoordinator {
    /// Claims the run's config; true when a lapsed claim of another agent
    /// was removed first (that agent died before releasing it).
    async fn claim_config(&self, req: &ClaimRequest<'_>) -> Result<(Claim, bool), Refusal> {
        let name = claim_name(req.playbook, req.target_key);
        let mut takeover = false;
        let until = req.now + chrono::Duration::from_std(req.ttl).unwrap_or_default();
        for _ in 0..3 {
            match self.create(&name, until).await {
                Ok(id) => {
                    return Ok((
                        Claim {
                            name,
                            version: Some(id),
                            outcome: req.outcome_key(),
                        },
                        takeover,
                    ))
                }
                Err(e) if conflict(&e) => {}
                Err(e) => return Err(Refusal::Unavailable(format!("swarm config {name}: {e}"))),
            }
            match self.holder_of(&name).await.map_err(Refusal::Unavailable)? {
                None => continue, // released in between: try again
                Some((_, holder, until)) if until > req.now => {
                    return Err(Refusal::Held { holder, until })
                }
                Some((id, holder, _)) => {
                    tracing::info!(claim = %name, %holder, "removing a lapsed claim");
                    // Only one agent's delete of this id succeeds; the
                    // recreate race is decided by the unique name.
                    let _ = self.docker.delete_config(&id).await;
                    takeover = holder != self.holder;
                }
            }
        }
        match self.holder_of(&name).await.map_err(Refusal::Unavailable)? {
            Some((_, holder, until)) => Err(Refusal::Held { holder, until }),
            None => Err(Refusal::Unavailable(format!(
                "swarm config {name} kept changing"
            ))),
        }
    }
}
