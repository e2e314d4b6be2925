//! Native triggers. The local Docker Engine's event stream
//! (and, after every connect, its container list, so what happened while
//! the agent was away is caught up) becomes alerts through
//! [`crate::trigger::docker`], journaled by intake like a webhook's. A lost
//! connection (an engine restart) is retried with a backoff. The pods of
//! the agent's node, listed and then watched, become alerts through
//! [`crate::trigger::kubernetes`] the same way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::{EventsOptions, InspectContainerOptions, ListContainersOptions};
use chrono::Utc;
use futures::StreamExt;
use tokio::sync::watch;

use super::{intake, Shared};
use crate::event::Event;
use crate::trigger::docker::{self, Episodes};
use crate::trigger::kubernetes;

/// Hands alerts to intake, retrying while the store cannot write (they
/// are not lost while the agent runs; a webhook would be retried by
/// Alertmanager instead).
async fn deliver(
    shared: &Shared,
    source: &'static str,
    events: Vec<Event>,
    stop: &watch::Receiver<bool>,
) {
    if events.is_empty() {
        return;
    }
    for e in &events {
        tracing::info!(source, alertname = e.alertname().unwrap_or(""), status = e.status.as_str(), fingerprint = %e.fingerprint, "native trigger");
    }
    let mut wait = Duration::from_millis(200);
    loop {
        match intake::accept_native(shared, source, events.clone()).await {
            Ok(_) => return,
            Err(e) => {
                if *stop.borrow() {
                    return;
                }
                tracing::warn!(source, error = ?e, "cannot journal native alerts yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Containers that exited (or are unhealthy) recently, inspected.
async fn listing(
    d: &bollard::Docker,
    catch_up: chrono::Duration,
    labels: &[String],
) -> Result<Vec<bollard::models::ContainerInspectResponse>, bollard::errors::Error> {
    let mut out = Vec::new();
    for filter in [("status", "exited"), ("health", "unhealthy")] {
        let mut filters = HashMap::from([(filter.0.to_string(), vec![filter.1.to_string()])]);
        if !labels.is_empty() {
            filters.insert("label".into(), labels.to_vec());
        }
        let opts = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        // At most the 200 most recent of each.
        for c in d.list_containers(Some(opts)).await?.into_iter().take(200) {
            let Some(id) = c.id else { continue };
            let ci = d
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await?;
            let finished = ci
                .state
                .as_ref()
                .and_then(|s| s.finished_at.as_deref())
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc));
            let recent = finished.is_some_and(|t| Utc::now() - t <= catch_up);
            if filter.0 == "health" || recent {
                out.push(ci);
            }
        }
    }
    Ok(out)
}

/// Runs the Docker trigger until `stop` flips.
pub(super) async fn docker_events(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let Some(backend) = shared.cfg.backends.docker.clone() else {
        return;
    };
    let catch_up = shared.cfg.triggers.docker.catch_up.chrono();
    let labels = shared.cfg.triggers.docker.labels.clone();
    let mut episodes = Episodes::new(shared.node.clone());
    // The last event seen: a reconnect asks the engine for what followed.
    let mut since = Utc::now().timestamp();
    let mut backoff = Duration::from_secs(1);
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        let d = match crate::drivers::docker::connect(&backend) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "docker trigger: cannot connect to the engine");
                if sleep_or_stop(backoff, &mut stop).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        match listing(&d, catch_up, &labels).await {
            Ok(cs) => {
                let evs = episodes.on_listing(&cs);
                deliver(&shared, docker::SOURCE, evs, &stop).await;
            }
            Err(e) => tracing::warn!(error = %e, "docker trigger: cannot list containers"),
        }
        let mut filters = HashMap::from([("type".to_string(), vec!["container".to_string()])]);
        if !labels.is_empty() {
            filters.insert("label".into(), labels.clone());
        }
        let opts = EventsOptions {
            since: Some(since.to_string()),
            filters: Some(filters),
            ..Default::default()
        };
        let mut stream = Box::pin(d.events(Some(opts)));
        tracing::info!(since, "docker trigger: watching the engine's events");
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {
                    let evs = episodes.tick(Utc::now());
                    deliver(&shared, docker::SOURCE, evs, &stop).await;
                }
                item = stream.next() => match item {
                    Some(Ok(msg)) => {
                        backoff = Duration::from_secs(1);
                        if let Some(t) = msg.time {
                            since = since.max(t);
                        }
                        let evs = episodes.on_event(&msg);
                        deliver(&shared, docker::SOURCE, evs, &stop).await;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "docker trigger: the event stream failed; reconnecting");
                        break;
                    }
                    None => {
                        tracing::warn!("docker trigger: the engine closed the event stream; reconnecting");
                        break;
                    }
                }
            }
        }
        if sleep_or_stop(backoff, &mut stop).await {
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Sleeps; true if the agent is stopping.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// The node whose pods the Kubernetes trigger watches: configured, else
/// `$NODE_NAME` (the DaemonSet's `spec.nodeName`), else the agent's node.
pub fn kubernetes_node(cfg: &crate::config::KubernetesTrigger, agent_node: &str) -> String {
    cfg.node
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| agent_node.to_string())
}

/// Runs the Kubernetes pod trigger until `stop` flips: a list of the node's
/// pods (`fieldSelector=spec.nodeName=<node>`), then a watch resumed from
/// the last resourceVersion seen; a 410 Gone (the version was compacted)
/// lists again; an unavailable API server is retried with a backoff
/// (1s doubling to 30s).
pub(super) async fn kubernetes_pods(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams, WatchEvent, WatchParams};

    let Some(backend) = shared.cfg.backends.kubernetes.clone() else {
        return;
    };
    let t = shared.cfg.triggers.kubernetes.clone();
    let node = kubernetes_node(&t, &shared.node);
    let mut episodes = kubernetes::Episodes::new(
        node.clone(),
        t.readiness_failing_for.chrono(),
        t.namespaces.clone(),
    );
    let fields = format!("spec.nodeName={node}");
    let mut client: Option<kube::Client> = None;
    // None: list first (at start, and after a 410).
    let mut version: Option<String> = None;
    let mut backoff = Duration::from_secs(1);
    let cap = Duration::from_secs(30);
    loop {
        let c = match &client {
            Some(c) => c.clone(),
            None => match crate::drivers::kubernetes::connect(&backend).await {
                Ok(c) => {
                    client = Some(c.clone());
                    c
                }
                Err(e) => {
                    tracing::error!(error = %e, "kubernetes trigger: cannot connect to the API server");
                    if sleep_or_stop(backoff, &mut stop).await {
                        return;
                    }
                    backoff = (backoff * 2).min(cap);
                    continue;
                }
            },
        };
        let api: Api<Pod> = Api::all(c);
        let rv = match &version {
            Some(v) => v.clone(),
            None => match api.list(&ListParams::default().fields(&fields)).await {
                Ok(list) => {
                    backoff = Duration::from_secs(1);
                    let evs = episodes.on_listing(&list.items, Utc::now());
                    tracing::info!(node = %node, pods = list.items.len(), open = episodes.open(), "kubernetes trigger: listed the node's pods");
                    deliver(&shared, kubernetes::SOURCE, evs, &stop).await;
                    let v = list.metadata.resource_version.unwrap_or_default();
                    version = Some(v.clone());
                    v
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "kubernetes trigger: cannot list pods");
                    if sleep_or_stop(backoff, &mut stop).await {
                        return;
                    }
                    backoff = (backoff * 2).min(cap);
                    continue;
                }
            },
        };
        let wp = WatchParams::default().fields(&fields).timeout(290);
        let mut stream = match api.watch(&wp, &rv).await {
            Ok(s) => Box::pin(s),
            Err(kube::Error::Api(s)) if s.code == 410 => {
                tracing::info!(resource_version = %rv, "kubernetes trigger: resourceVersion expired (410); listing again");
                version = None;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "kubernetes trigger: cannot watch pods");
                if sleep_or_stop(backoff, &mut stop).await {
                    return;
                }
                backoff = (backoff * 2).min(cap);
                continue;
            }
        };
        tracing::info!(node = %node, resource_version = %rv, "kubernetes trigger: watching the node's pods");
        let started = std::time::Instant::now();
        let mut failed = false;
        loop {
            // Wake for the next readiness threshold, at least every 30s.
            let wake = match episodes.next_due() {
                None => Duration::from_secs(30),
                Some(d) => (d - Utc::now()).to_std().unwrap_or(Duration::ZERO),
            }
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(wake) => {
                    let evs = episodes.tick(Utc::now());
                    deliver(&shared, kubernetes::SOURCE, evs, &stop).await;
                }
                item = stream.next() => {
                    let (pod, deleted) = match item {
                        Some(Ok(WatchEvent::Added(p) | WatchEvent::Modified(p))) => (p, false),
                        Some(Ok(WatchEvent::Deleted(p))) => (p, true),
                        Some(Ok(WatchEvent::Bookmark(b))) => {
                            version = Some(b.metadata.resource_version);
                            continue;
                        }
                        Some(Ok(WatchEvent::Error(s))) if s.code == 410 => {
                            tracing::info!("kubernetes trigger: the watch's resourceVersion expired (410); listing again");
                            version = None;
                            break;
                        }
                        Some(Ok(WatchEvent::Error(s))) => {
                            tracing::warn!(code = s.code, message = %s.message, "kubernetes trigger: the watch failed; resuming");
                            failed = true;
                            break;
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "kubernetes trigger: the watch stream failed; resuming");
                            failed = true;
                            break;
                        }
                        None => break,
                    };
                    backoff = Duration::from_secs(1);
                    if let Some(v) = pod.metadata.resource_version.clone() {
                        version = Some(v);
                    }
                    let now = Utc::now();
                    let evs = if deleted {
                        episodes.on_delete(&pod, now)
                    } else {
                        episodes.on_pod(&pod, now)
                    };
                    deliver(&shared, kubernetes::SOURCE, evs, &stop).await;
                }
            }
        }
        // A watch that ends at once (or fails) is retried with the backoff,
        // not in a tight loop.
        if failed || started.elapsed() < Duration::from_secs(1) {
            if sleep_or_stop(backoff, &mut stop).await {
                return;
            }
            backoff = (backoff * 2).min(cap);
        }
    }
}
