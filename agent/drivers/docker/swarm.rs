//! Swarm services as the Swarm actions see them: reading and updating a
//! service, and waiting until its tasks run the new spec.

use std::collections::HashMap;

use bollard::query_parameters as qp;
use bollard::Docker;

use super::{derr, STABLE};
use crate::drivers::action::{DriverError, Verdict};

pub(super) async fn service(
    d: &Docker,
    name: &str,
) -> Result<bollard::models::Service, DriverError> {
    d.inspect_service(name, None::<qp::InspectServiceOptions>)
        .await
        .map_err(|e| derr(&format!("service {name}"), e))
}

pub(super) async fn update(
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
pub(super) async fn tasks_converged(
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
