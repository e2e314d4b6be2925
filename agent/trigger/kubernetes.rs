//! The pods of this agent's node as alerts, without Prometheus. Each
//! condition episode is one firing event and, when the condition clears or
//! the pod is deleted, one resolved event, named like the kube-prometheus
//! alerts the bundled playbooks answer, so they take either trigger:
//!
//! | pod status | alert | clears when |
//! |---|---|---|
//! | a container waiting in `CrashLoopBackOff` | `KubePodCrashLooping` | it is no longer waiting in it |
//! | a container's last termination `OOMKilled` | `KubeContainerOOMKilled` | its last termination is something else |
//! | `status.reason: Evicted` | `KubePodEvicted` | the pod is deleted |
//! | a container waiting in `ImagePullBackOff` or `ErrImagePull` | `KubePodImagePullFailing` | it is no longer waiting in either |
//! | `Ready` false for longer than `readinessFailingFor` | `KubePodNotReady` | `Ready` is true |
//!
//! Labels: `alertname`, `namespace`, `pod`, `container` (container
//! conditions), `reason`, `restarts` (the container's restart count, for
//! pod conditions the highest), `owner_kind`, `owner_name` (the pod's
//! controller), `node`, and `remediate_source="kubernetes"`. The
//! fingerprint is taken from the identity labels only (alert, namespace,
//! pod, container, node), so the updates of one episode (a restart count
//! going up, `ErrImagePull` turning into `ImagePullBackOff`) are the same
//! alert and make no new event.
//!
//! [`Episodes`] is pure (pods in, alerts out, time a parameter); the
//! agent's watch stage ([`crate::pipeline::native`]) feeds it the watch's
//! updates and, after every (re)list, the pods as they are.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::event::{fingerprint, Event, Labels, Status, TriggerKind};

/// The value of `remediate_source` on these alerts.
pub const SOURCE: &str = "kubernetes";

const CRASHLOOP: &str = "KubePodCrashLooping";
const OOMKILLED: &str = "KubeContainerOOMKilled";
const EVICTED: &str = "KubePodEvicted";
const IMAGE_PULL: &str = "KubePodImagePullFailing";
const NOT_READY: &str = "KubePodNotReady";

/// (namespace/pod, container or "", alertname).
type Key = (String, String, &'static str);

/// A pod whose `Ready` is false, not yet long enough (or already firing).
#[derive(Debug)]
struct NotReady {
    since: DateTime<Utc>,
    alert: Event,
}

/// Conditions open per pod, container and alert.
#[derive(Debug)]
pub struct Episodes {
    node: String,
    not_ready_for: chrono::Duration,
    namespaces: BTreeSet<String>,
    open: HashMap<Key, Event>,
    /// namespace/pod -> since when `Ready` is false.
    not_ready: HashMap<String, NotReady>,
}

/// One condition a pod is in now.
struct Condition {
    container: String,
    alertname: &'static str,
    reason: String,
    restarts: i32,
    at: DateTime<Utc>,
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

impl Episodes {
    /// Episodes of the pods on `node`; `Ready` false longer than
    /// `not_ready_for` is `KubePodNotReady`; `namespaces` empty: all.
    pub fn new(
        node: impl Into<String>,
        not_ready_for: chrono::Duration,
        namespaces: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            node: node.into(),
            not_ready_for,
            namespaces: namespaces.into_iter().collect(),
            open: HashMap::new(),
            not_ready: HashMap::new(),
        }
    }

    /// Conditions now open.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    fn watched(&self, pod: &Pod) -> bool {
        self.namespaces.is_empty()
            || pod
                .metadata
                .namespace
                .as_ref()
                .is_some_and(|n| self.namespaces.contains(n))
    }

    fn alert(&self, pod: &Pod, c: &Condition) -> Event {
        let mut identity = Labels::new();
        identity.insert("alertname".into(), c.alertname.into());
        identity.insert(
            "namespace".into(),
            pod.metadata.namespace.clone().unwrap_or_default(),
        );
        identity.insert("pod".into(), pod.metadata.name.clone().unwrap_or_default());
        if !c.container.is_empty() {
            identity.insert("container".into(), c.container.clone());
        }
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| self.node.clone());
        identity.insert("node".into(), node);
        let fp = fingerprint(&identity);
        let mut labels = identity;
        labels.insert("remediate_source".into(), SOURCE.into());
        labels.insert("reason".into(), c.reason.clone());
        labels.insert("restarts".into(), c.restarts.to_string());
        let refs = pod.metadata.owner_references.as_deref().unwrap_or_default();
        if let Some(o) = refs
            .iter()
            .find(|o| o.controller == Some(true))
            .or(refs.first())
        {
            labels.insert("owner_kind".into(), o.kind.clone());
            labels.insert("owner_name".into(), o.name.clone());
        }
        Event {
            trigger: TriggerKind::Alert,
            status: Status::Firing,
            fingerprint: fp,
            labels,
            annotations: Labels::new(),
            values: Labels::new(),
            starts_at: Some(c.at),
            playbook: None,
        }
    }

    /// The pod's conditions now (readiness apart).
    fn conditions(pod: &Pod, now: DateTime<Utc>) -> Vec<Condition> {
        let mut out = Vec::new();
        let Some(st) = pod.status.as_ref() else {
            return out;
        };
        // Dated from when the pod stopped being ready when it says so: the
        // same date on a re-list after an agent restart, so intake sees a
        // duplicate, not a new episode.
        let unready_at = ready_condition(pod)
            .filter(|(ready, _)| !ready)
            .and_then(|(_, t)| t)
            .unwrap_or(now);
        let max_restarts = st
            .container_statuses
            .iter()
            .flatten()
            .map(|c| c.restart_count)
            .max()
            .unwrap_or(0);
        if st.reason.as_deref() == Some("Evicted") {
            out.push(Condition {
                container: String::new(),
                alertname: EVICTED,
                reason: "Evicted".into(),
                restarts: max_restarts,
                at: st.start_time.as_ref().map(time).unwrap_or(now),
            });
        }
        let containers = st
            .init_container_statuses
            .iter()
            .flatten()
            .chain(st.container_statuses.iter().flatten());
        for cs in containers {
            let waiting = cs
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref());
            let cond = |alertname, reason: &str, at| Condition {
                container: cs.name.clone(),
                alertname,
                reason: reason.to_string(),
                restarts: cs.restart_count,
                at,
            };
            match waiting {
                Some(r @ "CrashLoopBackOff") => out.push(cond(CRASHLOOP, r, unready_at)),
                Some(r @ ("ImagePullBackOff" | "ErrImagePull")) => {
                    out.push(cond(IMAGE_PULL, r, unready_at))
                }
                _ => {}
            }
            if let Some(at) = oom_killed(cs) {
                out.push(cond(OOMKILLED, "OOMKilled", at.unwrap_or(now)));
            }
        }
        out
    }

    fn fire(&mut self, key: Key, ev: Event) -> Option<Event> {
        if self.open.contains_key(&key) {
            return None;
        }
        self.open.insert(key, ev.clone());
        Some(ev)
    }

    fn clear(&mut self, key: &Key, at: DateTime<Utc>) -> Option<Event> {
        let mut ev = self.open.remove(key)?;
        ev.status = Status::Resolved;
        ev.annotations.insert("resolved_at".into(), at.to_rfc3339());
        Some(ev)
    }

    /// Alerts from a pod as it is now (added or modified).
    pub fn on_pod(&mut self, pod: &Pod, now: DateTime<Utc>) -> Vec<Event> {
        if !self.watched(pod) {
            return Vec::new();
        }
        let pk = pod_key(pod);
        let mut out = Vec::new();
        let mut current = BTreeSet::new();
        for c in Self::conditions(pod, now) {
            let key = (pk.clone(), c.container.clone(), c.alertname);
            current.insert(key.clone());
            let ev = self.alert(pod, &c);
            out.extend(self.fire(key, ev));
        }
        // Readiness: a running or starting pod whose Ready is false.
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let done = matches!(phase, Some("Succeeded" | "Failed"));
        let not_ready_key = (pk.clone(), String::new(), NOT_READY);
        match ready_condition(pod) {
            Some((false, since)) if !done => {
                let since = self
                    .not_ready
                    .get(&pk)
                    .map(|n| n.since)
                    .or(since)
                    .unwrap_or(now);
                let restarts = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|cs| cs.iter().map(|c| c.restart_count).max())
                    .unwrap_or(0);
                let alert = self.alert(
                    pod,
                    &Condition {
                        container: String::new(),
                        alertname: NOT_READY,
                        reason: "NotReady".into(),
                        restarts,
                        at: since,
                    },
                );
                self.not_ready.insert(pk.clone(), NotReady { since, alert });
                if self.open.contains_key(&not_ready_key) {
                    current.insert(not_ready_key);
                }
            }
            _ => {
                self.not_ready.remove(&pk);
            }
        }
        let stale: Vec<Key> = self
            .open
            .keys()
            .filter(|k| k.0 == pk && !current.contains(*k))
            .cloned()
            .collect();
        for k in stale {
            out.extend(self.clear(&k, now));
        }
        out.extend(self.tick(now));
        out
    }

    /// Resolved events for every open condition of a deleted pod.
    pub fn on_delete(&mut self, pod: &Pod, now: DateTime<Utc>) -> Vec<Event> {
        let pk = pod_key(pod);
        self.forget(&pk, now)
    }

    fn forget(&mut self, pk: &str, now: DateTime<Utc>) -> Vec<Event> {
        self.not_ready.remove(pk);
        let gone: Vec<Key> = self.open.keys().filter(|k| k.0 == pk).cloned().collect();
        gone.iter().filter_map(|k| self.clear(k, now)).collect()
    }

    /// Alerts from every pod of the node as a (re)list found them: each
    /// pod's conditions, and resolved events for pods deleted meanwhile.
    pub fn on_listing(&mut self, pods: &[Pod], now: DateTime<Utc>) -> Vec<Event> {
        let listed: BTreeSet<String> = pods.iter().map(pod_key).collect();
        let mut out = Vec::new();
        let known: BTreeSet<String> = self
            .open
            .keys()
            .map(|k| k.0.clone())
            .chain(self.not_ready.keys().cloned())
            .collect();
        for pk in known.difference(&listed) {
            out.extend(self.forget(pk, now));
        }
        for p in pods {
            out.extend(self.on_pod(p, now));
        }
        out
    }

    /// Fires what time alone fires: `Ready` false for long enough.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<Event> {
        let due: Vec<(Key, Event)> = self
            .not_ready
            .iter()
            .filter(|(_, n)| now - n.since >= self.not_ready_for)
            .map(|(pk, n)| ((pk.clone(), String::new(), NOT_READY), n.alert.clone()))
            .collect();
        due.into_iter()
            .filter_map(|(k, ev)| self.fire(k, ev))
            .collect()
    }

    /// When the earliest pending readiness alert is due, if any.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.not_ready
            .iter()
            .filter(|(pk, _)| {
                !self
                    .open
                    .contains_key(&((*pk).clone(), String::new(), NOT_READY))
            })
            .map(|(_, n)| n.since + self.not_ready_for)
            .min()
    }
}

fn time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.0.as_microsecond()).unwrap_or_default()
}

/// The pod's `Ready` condition: whether true, and since when.
fn ready_condition(pod: &Pod) -> Option<(bool, Option<DateTime<Utc>>)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| {
            (
                c.status == "True",
                c.last_transition_time.as_ref().map(time),
            )
        })
}

/// Some(when) if the container's last termination was an OOM kill.
fn oom_killed(cs: &ContainerStatus) -> Option<Option<DateTime<Utc>>> {
    let t = cs.last_state.as_ref()?.terminated.as_ref()?;
    (t.reason.as_deref() == Some("OOMKilled")).then(|| t.finished_at.as_ref().map(time))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T: i64 = 1_764_000_000;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(T + s, 0).unwrap()
    }

    fn episodes() -> Episodes {
        Episodes::new("node-a", chrono::Duration::minutes(5), Vec::new())
    }

    /// A pod of Deployment `web` on node-a; `app` in `state`, `last` its
    /// last state, restarted `restarts` times, Ready `ready`.
    fn pod(state: serde_json::Value, last: serde_json::Value, restarts: i32, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-5d9-x1", "namespace": "etl",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d9", "uid": "rs-1", "controller": true}]},
            "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "app:1"}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                    "lastTransitionTime": "2025-11-24T16:00:00Z"}],
                "containerStatuses": [{"name": "app", "ready": ready, "restartCount": restarts,
                    "image": "app:1", "imageID": "", "state": state, "lastState": last}]}
        }))
        .unwrap()
    }

    fn waiting(reason: &str) -> serde_json::Value {
        json!({"waiting": {"reason": reason}})
    }

    fn running() -> serde_json::Value {
        json!({"running": {"startedAt": "2025-11-24T16:00:00Z"}})
    }

    fn names(evs: &[Event]) -> Vec<(String, Status)> {
        evs.iter()
            .map(|e| (e.labels["alertname"].clone(), e.status))
            .collect()
    }

    #[test]
    fn a_crash_loop_is_one_firing_event_until_it_clears_then_one_resolved() {
        let mut e = episodes();
        let fired = e.on_pod(
            &pod(waiting("CrashLoopBackOff"), json!({}), 3, false),
            at(0),
        );
        assert_eq!(names(&fired), vec![(CRASHLOOP.into(), Status::Firing)]);
        let ev = &fired[0];
        for (k, v) in [
            ("namespace", "etl"),
            ("pod", "web-5d9-x1"),
            ("container", "app"),
            ("reason", "CrashLoopBackOff"),
            ("restarts", "3"),
            ("owner_kind", "ReplicaSet"),
            ("owner_name", "web-5d9"),
            ("node", "node-a"),
            ("remediate_source", "kubernetes"),
        ] {
            assert_eq!(ev.labels[k], v, "{k}");
        }
        // More updates of the episode (restarts going up, the container
        // running briefly between back-offs is another story): nothing new.
        for (i, r) in (4..9).enumerate() {
            let p = pod(waiting("CrashLoopBackOff"), json!({}), r, false);
            assert!(e.on_pod(&p, at(10 + i as i64)).is_empty(), "restart {r}");
        }
        assert_eq!(e.open(), 1);
        let cleared = e.on_pod(&pod(running(), json!({}), 9, true), at(60));
        assert_eq!(names(&cleared), vec![(CRASHLOOP.into(), Status::Resolved)]);
        assert_eq!(cleared[0].fingerprint, ev.fingerprint, "the same alert");
        assert_eq!(cleared[0].starts_at, ev.starts_at);
        assert!(e
            .on_pod(&pod(running(), json!({}), 9, true), at(61))
            .is_empty());
        assert_eq!(e.open(), 0);
    }

    #[test]
    fn the_fingerprint_is_the_identity_only_and_the_labels_fit_the_bundled_playbook() {
        let mut e = episodes();
        let a = e.on_pod(
            &pod(waiting("CrashLoopBackOff"), json!({}), 3, false),
            at(0),
        );
        let mut e2 = episodes();
        let b = e2.on_pod(
            &pod(waiting("CrashLoopBackOff"), json!({}), 30, false),
            at(99),
        );
        assert_eq!(a[0].fingerprint, b[0].fingerprint);
        // The alert names the bundled playbooks match.
        for (file, name) in [
            (
                include_str!("../../playbooks/k8s-crashloop-restart.yaml"),
                CRASHLOOP,
            ),
            (
                include_str!("../../playbooks/k8s-oomkilled-bump-memory.yaml"),
                OOMKILLED,
            ),
        ] {
            assert!(file.contains(&format!("alertname=\"{name}\"")), "{name}");
        }
    }

    #[test]
    fn a_pod_deleted_in_an_episode_resolves_it() {
        let mut e = episodes();
        let p = pod(waiting("CrashLoopBackOff"), json!({}), 3, false);
        assert_eq!(e.on_pod(&p, at(0)).len(), 1);
        let gone = e.on_delete(&p, at(5));
        assert_eq!(names(&gone), vec![(CRASHLOOP.into(), Status::Resolved)]);
        assert!(e.on_delete(&p, at(6)).is_empty());
    }

    #[test]
    fn an_oom_kill_is_named_as_the_bundled_playbook_matches_and_clears_on_another_termination() {
        let mut e = episodes();
        let oom = json!({"terminated": {"reason": "OOMKilled", "exitCode": 137, "finishedAt": "2025-11-24T16:00:00Z"}});
        let fired = e.on_pod(&pod(running(), oom.clone(), 1, true), at(0));
        assert_eq!(names(&fired), vec![(OOMKILLED.into(), Status::Firing)]);
        assert_eq!(fired[0].labels["container"], "app");
        assert_eq!(fired[0].labels["reason"], "OOMKilled");
        assert_eq!(
            fired[0].starts_at,
            Some("2025-11-24T16:00:00Z".parse().unwrap()),
            "dated from the kill"
        );
        // A second kill of the same container: the same episode.
        assert!(e.on_pod(&pod(running(), oom, 2, true), at(30)).is_empty());
        let other = json!({"terminated": {"reason": "Error", "exitCode": 1}});
        let cleared = e.on_pod(&pod(running(), other, 3, true), at(60));
        assert_eq!(names(&cleared), vec![(OOMKILLED.into(), Status::Resolved)]);
    }

    #[test]
    fn an_evicted_pod_fires_once_and_resolves_when_deleted() {
        let mut e = episodes();
        let mut p = pod(running(), json!({}), 0, true);
        let st = p.status.as_mut().unwrap();
        st.phase = Some("Failed".into());
        st.reason = Some("Evicted".into());
        st.conditions.as_mut().unwrap()[0].status = "False".into();
        let fired = e.on_pod(&p, at(0));
        assert_eq!(names(&fired), vec![(EVICTED.into(), Status::Firing)]);
        assert!(!fired[0].labels.contains_key("container"));
        // Failed pods are not "not ready" however long they stay.
        assert!(e.on_pod(&p, at(3600)).is_empty());
        assert!(e.tick(at(7200)).is_empty());
        assert_eq!(
            names(&e.on_delete(&p, at(7300))),
            vec![(EVICTED.into(), Status::Resolved)]
        );
    }

    #[test]
    fn image_pull_failures_are_one_episode_across_both_reasons() {
        let mut e = episodes();
        let fired = e.on_pod(&pod(waiting("ErrImagePull"), json!({}), 0, false), at(0));
        assert_eq!(names(&fired), vec![(IMAGE_PULL.into(), Status::Firing)]);
        assert_eq!(fired[0].labels["reason"], "ErrImagePull");
        assert!(e
            .on_pod(
                &pod(waiting("ImagePullBackOff"), json!({}), 0, false),
                at(10)
            )
            .is_empty());
        assert!(e
            .on_pod(&pod(waiting("ErrImagePull"), json!({}), 0, false), at(20))
            .is_empty());
        let cleared = e.on_pod(&pod(running(), json!({}), 0, true), at(30));
        assert_eq!(names(&cleared), vec![(IMAGE_PULL.into(), Status::Resolved)]);
    }

    #[test]
    fn readiness_fires_only_past_the_threshold_and_resolves_when_ready() {
        let mut e = episodes();
        let mut p = pod(running(), json!({}), 0, false);
        // Not ready since the transition the pod reports.
        let since: DateTime<Utc> = "2025-11-24T16:00:00Z".parse().unwrap();
        p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(since.timestamp()).unwrap(),
            ));
        let minute = chrono::Duration::minutes(1);
        assert!(e.on_pod(&p, since + minute).is_empty());
        assert!(e.tick(since + minute * 4).is_empty(), "under 5m");
        assert_eq!(e.next_due(), Some(since + minute * 5));
        let fired = e.tick(since + minute * 5);
        assert_eq!(names(&fired), vec![(NOT_READY.into(), Status::Firing)]);
        assert_eq!(fired[0].starts_at, Some(since));
        assert_eq!(e.next_due(), None);
        // Updates while still not ready: nothing new.
        assert!(e.on_pod(&p, since + minute * 6).is_empty());
        assert!(e.tick(since + minute * 7).is_empty());
        let cleared = e.on_pod(&pod(running(), json!({}), 0, true), since + minute * 8);
        assert_eq!(names(&cleared), vec![(NOT_READY.into(), Status::Resolved)]);
        // Ready again, then briefly not ready: under the threshold, nothing.
        let mut e = episodes();
        let p = pod(running(), json!({}), 0, false);
        let now = at(0);
        let mut p2 = p.clone();
        p2.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time = None;
        assert!(e.on_pod(&p2, now).is_empty());
        assert!(e
            .on_pod(&pod(running(), json!({}), 0, true), now + minute)
            .is_empty());
        assert!(e.tick(now + minute * 10).is_empty());
    }

    #[test]
    fn a_listing_resolves_the_pods_deleted_while_away_and_repeats_nothing() {
        let mut e = episodes();
        let p = pod(waiting("CrashLoopBackOff"), json!({}), 3, false);
        assert_eq!(e.on_listing(std::slice::from_ref(&p), at(0)).len(), 1);
        assert!(e.on_listing(std::slice::from_ref(&p), at(10)).is_empty());
        let gone = e.on_listing(&[], at(20));
        assert_eq!(names(&gone), vec![(CRASHLOOP.into(), Status::Resolved)]);
    }

    #[test]
    fn pods_outside_the_namespace_allow_list_are_ignored() {
        let mut e = Episodes::new("node-a", chrono::Duration::minutes(5), ["web".to_string()]);
        assert!(e
            .on_pod(
                &pod(waiting("CrashLoopBackOff"), json!({}), 3, false),
                at(0)
            )
            .is_empty());
        assert_eq!(e.open(), 0);
    }
}
