//! Docker Swarm: claims are Swarm configs named after (playbook, target),
//! kept in the managers' raft store. Creating a config is atomic and names
//! are unique, so of several agents creating the same claim exactly one
//! succeeds (the others get 409). A claim carries its holder and expiry as
//! labels; a lapsed claim is removed by id (only one remover succeeds) and
//! the race to recreate it is again decided by the unique name.
//!
//! Why configs and not a service's version index: a config is a first-class,
//! create-once object of the same raft store, so the claim needs no service
//! to exist and never changes anything that runs. Cluster-wide counters are
//! not kept on Swarm (configs are immutable): each agent's own limits apply.

use super::*;
use bollard::models::ConfigSpec;
use bollard::Docker;
use std::collections::HashMap;

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
                    use base64::Engine as _;
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
        let name = claim_name(req.playbook, req.target_key);
        let until = req.now + chrono::Duration::from_std(req.ttl).unwrap_or_default();
        for _ in 0..3 {
            match self.create(&name, until).await {
                Ok(id) => {
                    return Ok(Claim {
                        name,
                        version: Some(id),
                    })
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

    async fn release(&self, claim: Claim) {
        if let Some(id) = claim.version {
            if let Err(e) = self.docker.delete_config(&id).await {
                tracing::warn!(claim = %claim.name, error = %e, "cannot release the claim; it lapses by itself");
            }
        }
    }
}
