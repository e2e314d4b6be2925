//! Docker Engine events as alerts, without Prometheus: what docker-autoheal
//! users rely on. Each condition episode is one firing event and, when the
//! condition clears, one resolved event, named like the alerts the bundled
//! playbooks answer, so they take either trigger:
//!
//! | engine event | alert | clears on |
//! |---|---|---|
//! | `oom` | `ContainerOOMKilled` | the container starts again |
//! | `die` with a non-zero exit (not after its own `oom`) | `ContainerDied` | the container starts again |
//! | `health_status: unhealthy` | `ContainerUnhealthy` | `health_status: healthy`, or a start |
//! | `die` of a Swarm task, non-zero | `SwarmTaskFailed` | a task of the service starts |
//! | 3 task failures of one service within 15 minutes | `SwarmServiceTasksFailing` | 15 minutes with none |
//!
//! Labels: `alertname`, `name` (the container), `container_id`, `image`,
//! `node`, `exit_code`, and for Swarm tasks `service`, `stack`, `task_id`;
//! `remediate_source="docker"` says where it came from. The fingerprint is
//! taken from the identity labels only (alert, container or service, node),
//! so every update of one episode is the same alert.
//!
//! [`Episodes`] is pure (events in, alerts out, time a parameter); the
//! agent's watch stage feeds it the engine's event stream and, after every
//! (re)connect, the container list, so what happened while it was away is
//! caught up.

use std::collections::{HashMap, VecDeque};

use bollard::models::{ContainerInspectResponse, EventMessage};
use chrono::{DateTime, Utc};

use crate::event::{fingerprint, Event, Labels, Status, TriggerKind};

/// Task failures of one service that make it `SwarmServiceTasksFailing`.
pub const TASK_FAILURES: usize = 3;
/// Within this long (and it clears after this long without one).
pub const TASK_FAILURE_WINDOW: chrono::Duration = chrono::Duration::minutes(15);
/// A `die` this soon after the container's `oom` is the same episode.
const OOM_DIE: chrono::Duration = chrono::Duration::seconds(30);

/// The value of `remediate_source` on these alerts.
pub const SOURCE: &str = "docker";

/// Conditions open, per container and alert, and recent task failures.
#[derive(Debug)]
pub struct Episodes {
    node: String,
    /// (container id or service, alertname) -> the firing event.
    open: HashMap<(String, &'static str), Event>,
    /// Container id -> when it was OOM-killed (its `die` follows).
    oom_at: HashMap<String, DateTime<Utc>>,
    /// Service -> recent task failures.
    task_failures: HashMap<String, VecDeque<DateTime<Utc>>>,
}

fn attr<'a>(msg: &'a EventMessage, key: &str) -> Option<&'a str> {
    msg.actor
        .as_ref()?
        .attributes
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn event_time(msg: &EventMessage) -> DateTime<Utc> {
    msg.time_nano
        .map(DateTime::from_timestamp_nanos)
        .or_else(|| msg.time.and_then(|t| DateTime::from_timestamp(t, 0)))
        .unwrap_or_else(Utc::now)
}

/// What identifies a container in alerts, from an event's or an inspect's fields.
struct Container<'a> {
    id: &'a str,
    name: &'a str,
    image: &'a str,
    service: Option<&'a str>,
    stack: Option<&'a str>,
    task: Option<&'a str>,
}

impl Episodes {
    /// Episodes of the containers on `node` (this agent's).
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            open: HashMap::new(),
            oom_at: HashMap::new(),
            task_failures: HashMap::new(),
        }
    }

    /// Conditions now open.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    fn alert(
        &self,
        alertname: &'static str,
        c: &Container<'_>,
        extra: &[(&str, String)],
        at: DateTime<Utc>,
    ) -> Event {
        let mut identity = Labels::new();
        identity.insert("alertname".into(), alertname.into());
        identity.insert("node".into(), self.node.clone());
        match (alertname, c.service) {
            ("SwarmServiceTasksFailing", Some(s)) => {
                identity.insert("service".into(), s.into());
            }
            _ => {
                identity.insert("name".into(), c.name.into());
            }
        }
        let fp = fingerprint(&identity);
        let mut labels = identity;
        labels.insert("remediate_source".into(), SOURCE.into());
        if alertname != "SwarmServiceTasksFailing" {
            labels.insert("container_id".into(), short(c.id).into());
            labels.insert("image".into(), c.image.into());
        }
        for (k, v) in [
            ("service", c.service),
            ("stack", c.stack),
            ("task_id", c.task),
        ] {
            if let Some(v) = v {
                labels.insert(k.into(), v.into());
            }
        }
        for (k, v) in extra {
            labels.insert((*k).into(), v.clone());
        }
        Event {
            trigger: TriggerKind::Alert,
            status: Status::Firing,
            fingerprint: fp,
            labels,
            annotations: Labels::new(),
            values: Labels::new(),
            starts_at: Some(at),
            playbook: None,
        }
    }

    /// Opens an episode unless one is open already; the firing event if new.
    fn fire(&mut self, key: String, alertname: &'static str, ev: Event) -> Option<Event> {
        if self.open.contains_key(&(key.clone(), alertname)) {
            return None;
        }
        self.open.insert((key, alertname), ev.clone());
        Some(ev)
    }

    /// Closes an episode; its resolved event if it was open.
    fn clear(&mut self, key: &str, alertname: &'static str, at: DateTime<Utc>) -> Option<Event> {
        let k = (key.to_string(), alertname);
        // An event from before the episode began (the stream replaying its
        // catch-up window after the container list opened the episode)
        // clears nothing.
        if self
            .open
            .get(&k)
            .and_then(|e| e.starts_at)
            .is_some_and(|started| at < started)
        {
            return None;
        }
        let mut ev = self.open.remove(&k)?;
        ev.status = Status::Resolved;
        ev.annotations.insert("resolved_at".into(), at.to_rfc3339());
        Some(ev)
    }

    /// Alerts from one engine event.
    pub fn on_event(&mut self, msg: &EventMessage) -> Vec<Event> {
        let at = event_time(msg);
        let Some(action) = msg.action.as_deref() else {
            return Vec::new();
        };
        let id = msg
            .actor
            .as_ref()
            .and_then(|a| a.id.as_deref())
            .unwrap_or_default()
            .to_string();
        let c = Container {
            id: &id,
            name: attr(msg, "name").unwrap_or(&id),
            image: attr(msg, "image").unwrap_or_default(),
            service: attr(msg, "com.docker.swarm.service.name"),
            stack: attr(msg, "com.docker.stack.namespace"),
            task: attr(msg, "com.docker.swarm.task.id"),
        };
        let mut out = Vec::new();
        match action {
            "oom" => {
                self.oom_at.insert(id.clone(), at);
                let ev = self.alert("ContainerOOMKilled", &c, &[], at);
                out.extend(self.fire(id.clone(), "ContainerOOMKilled", ev));
            }
            "die" => {
                let code = attr(msg, "exitCode").unwrap_or("0");
                let after_oom = self.oom_at.get(&id).is_some_and(|t| at - *t <= OOM_DIE);
                if code != "0" && !after_oom {
                    out.extend(self.died(&c, code, at));
                }
            }
            "start" => {
                for alert in ["ContainerOOMKilled", "ContainerDied", "ContainerUnhealthy"] {
                    out.extend(self.clear(&id, alert, at));
                }
                self.oom_at.remove(&id);
                if let Some(s) = c.service {
                    out.extend(self.clear(s, "SwarmTaskFailed", at));
                }
            }
            "destroy" => {
                for alert in ["ContainerOOMKilled", "ContainerDied", "ContainerUnhealthy"] {
                    out.extend(self.clear(&id, alert, at));
                }
                self.oom_at.remove(&id);
            }
            a if a.starts_with("health_status") => {
                if a.ends_with("unhealthy") {
                    let ev = self.alert("ContainerUnhealthy", &c, &[], at);
                    out.extend(self.fire(id.clone(), "ContainerUnhealthy", ev));
                } else if a.ends_with("healthy") {
                    out.extend(self.clear(&id, "ContainerUnhealthy", at));
                }
            }
            _ => {}
        }
        out.extend(self.tick(at));
        out
    }

    fn died(&mut self, c: &Container<'_>, code: &str, at: DateTime<Utc>) -> Vec<Event> {
        let mut out = Vec::new();
        let extra = [("exit_code", code.to_string())];
        match c.service {
            Some(service) => {
                // One open failure per service, until one of its tasks starts.
                let ev = self.alert("SwarmTaskFailed", c, &extra, at);
                out.extend(self.fire(service.to_string(), "SwarmTaskFailed", ev));
                let q = self.task_failures.entry(service.to_string()).or_default();
                q.push_back(at);
                while q.front().is_some_and(|t| at - *t > TASK_FAILURE_WINDOW) {
                    q.pop_front();
                }
                if q.len() >= TASK_FAILURES {
                    let ev = self.alert("SwarmServiceTasksFailing", c, &[], at);
                    out.extend(self.fire(service.to_string(), "SwarmServiceTasksFailing", ev));
                }
            }
            None => {
                let ev = self.alert("ContainerDied", c, &extra, at);
                out.extend(self.fire(c.id.to_string(), "ContainerDied", ev));
            }
        }
        out
    }

    /// Clears what time alone clears: a failing service with no task
    /// failure for the window.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<Event> {
        let quiet: Vec<String> = self
            .task_failures
            .iter()
            .filter(|(_, q)| q.back().is_none_or(|t| now - *t > TASK_FAILURE_WINDOW))
            .map(|(s, _)| s.clone())
            .collect();
        let mut out = Vec::new();
        for s in quiet {
            self.task_failures.remove(&s);
            out.extend(self.clear(&s, "SwarmServiceTasksFailing", now));
        }
        self.oom_at.retain(|_, t| now - *t <= OOM_DIE);
        out
    }

    /// Alerts from the engine's containers as they are now (after a
    /// (re)connect): an OOM-killed or failed exit not yet seen, or an
    /// unhealthy container, opens its episode, dated when it happened, so
    /// a delivery already made is recognised as a duplicate.
    pub fn on_listing(&mut self, containers: &[ContainerInspectResponse]) -> Vec<Event> {
        let mut out = Vec::new();
        for ci in containers {
            let Some(st) = ci.state.as_ref() else {
                continue;
            };
            let id = ci.id.clone().unwrap_or_default();
            let labels = ci.config.as_ref().and_then(|c| c.labels.as_ref());
            let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
            let name = ci
                .name
                .as_deref()
                .unwrap_or(&id)
                .trim_start_matches('/')
                .to_string();
            let image = ci
                .config
                .as_ref()
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            let c = Container {
                id: &id,
                name: &name,
                image: &image,
                service: label("com.docker.swarm.service.name"),
                stack: label("com.docker.stack.namespace"),
                task: label("com.docker.swarm.task.id"),
            };
            let parse = |t: &Option<String>| {
                t.as_deref()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc))
            };
            let running = st.running.unwrap_or(false);
            let finished = parse(&st.finished_at);
            if !running && st.oom_killed == Some(true) {
                let at = finished.unwrap_or_else(Utc::now);
                let ev = self.alert("ContainerOOMKilled", &c, &[], at);
                out.extend(self.fire(id.clone(), "ContainerOOMKilled", ev));
            } else if !running && st.exit_code.is_some_and(|c| c != 0) && finished.is_some() {
                let at = finished.unwrap_or_else(Utc::now);
                let code = st.exit_code.unwrap_or_default().to_string();
                if c.service.is_none() {
                    out.extend(self.died(&c, &code, at));
                }
            }
            let unhealthy = st
                .health
                .as_ref()
                .and_then(|h| h.status)
                .is_some_and(|s| s == bollard::models::HealthStatusEnum::UNHEALTHY);
            if running && unhealthy {
                // Dated from the container's start: the same across reconnects.
                let at = parse(&st.started_at).unwrap_or_else(Utc::now);
                let ev = self.alert("ContainerUnhealthy", &c, &[], at);
                out.extend(self.fire(id.clone(), "ContainerUnhealthy", ev));
            }
        }
        out
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EventActor;

    fn msg(action: &str, id: &str, t: i64, attrs: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            typ: Some(bollard::models::EventMessageTypeEnum::CONTAINER),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some(id.into()),
                attributes: Some(
                    attrs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            scope: None,
            time: Some(t),
            time_nano: Some(t * 1_000_000_000),
        }
    }

    fn names(evs: &[Event]) -> Vec<(String, Status)> {
        evs.iter()
            .map(|e| (e.labels["alertname"].clone(), e.status))
            .collect()
    }

    const T: i64 = 1_764_000_000;

    #[test]
    fn an_oom_kill_is_one_episode_until_the_container_starts_again() {
        let mut e = Episodes::new("node-1");
        let attrs = [("name", "web"), ("image", "busybox")];
        let fired = e.on_event(&msg("oom", "abc123abc123ffff", T, &attrs));
        assert_eq!(
            names(&fired),
            vec![("ContainerOOMKilled".into(), Status::Firing)]
        );
        let ev = &fired[0];
        assert_eq!(ev.labels["name"], "web");
        assert_eq!(ev.labels["node"], "node-1");
        assert_eq!(ev.labels["container_id"], "abc123abc123");
        assert_eq!(ev.labels["remediate_source"], "docker");
        // The die that follows the kill is the same episode.
        let attrs_die = [("name", "web"), ("image", "busybox"), ("exitCode", "137")];
        assert!(e
            .on_event(&msg("die", "abc123abc123ffff", T + 1, &attrs_die))
            .is_empty());
        // A second oom while it is down: still one episode.
        assert!(e
            .on_event(&msg("oom", "abc123abc123ffff", T + 2, &attrs))
            .is_empty());
        let cleared = e.on_event(&msg("start", "abc123abc123ffff", T + 5, &attrs));
        assert_eq!(
            names(&cleared),
            vec![("ContainerOOMKilled".into(), Status::Resolved)]
        );
        assert_eq!(cleared[0].fingerprint, ev.fingerprint, "the same alert");
        assert_eq!(cleared[0].starts_at, ev.starts_at);
        assert_eq!(e.open(), 0);
        // A new kill later is a new episode.
        let again = e.on_event(&msg("oom", "abc123abc123ffff", T + 100, &attrs));
        assert_eq!(
            names(&again),
            vec![("ContainerOOMKilled".into(), Status::Firing)]
        );
        assert_ne!(again[0].starts_at, ev.starts_at);
    }

    #[test]
    fn a_failed_exit_and_an_unhealthy_container_fire_and_clear_and_a_clean_exit_does_not() {
        let mut e = Episodes::new("n");
        let ok = [("name", "job"), ("exitCode", "0")];
        assert!(e.on_event(&msg("die", "c1", T, &ok)).is_empty());
        let bad = [("name", "job"), ("exitCode", "3")];
        let f = e.on_event(&msg("die", "c1", T, &bad));
        assert_eq!(names(&f), vec![("ContainerDied".into(), Status::Firing)]);
        assert_eq!(f[0].labels["exit_code"], "3");
        let u = e.on_event(&msg(
            "health_status: unhealthy",
            "c2",
            T,
            &[("name", "api")],
        ));
        assert_eq!(
            names(&u),
            vec![("ContainerUnhealthy".into(), Status::Firing)]
        );
        // Repeated unhealthy reports: the same episode.
        assert!(e
            .on_event(&msg(
                "health_status: unhealthy",
                "c2",
                T + 30,
                &[("name", "api")]
            ))
            .is_empty());
        let h = e.on_event(&msg(
            "health_status: healthy",
            "c2",
            T + 60,
            &[("name", "api")],
        ));
        assert_eq!(
            names(&h),
            vec![("ContainerUnhealthy".into(), Status::Resolved)]
        );
        let s = e.on_event(&msg("start", "c1", T + 60, &[("name", "job")]));
        assert_eq!(names(&s), vec![("ContainerDied".into(), Status::Resolved)]);
    }

    #[test]
    fn three_task_failures_of_a_service_in_fifteen_minutes_make_it_failing_until_it_is_quiet() {
        let mut e = Episodes::new("n");
        let task = |t: &'static str| {
            vec![
                ("name", "etl_worker.1.x"),
                ("exitCode", "1"),
                ("com.docker.swarm.service.name", "etl_worker"),
                ("com.docker.stack.namespace", "etl"),
                ("com.docker.swarm.task.id", t),
            ]
        };
        let a = e.on_event(&msg("die", "t1", T, &task("a")));
        assert_eq!(names(&a), vec![("SwarmTaskFailed".into(), Status::Firing)]);
        assert_eq!(a[0].labels["service"], "etl_worker");
        assert_eq!(a[0].labels["stack"], "etl");
        e.on_event(&msg("die", "t2", T + 60, &task("b")));
        let c = e.on_event(&msg("die", "t3", T + 120, &task("c")));
        let failing: Vec<_> = c
            .iter()
            .filter(|e| e.labels["alertname"] == "SwarmServiceTasksFailing")
            .collect();
        assert_eq!(failing.len(), 1);
        assert_eq!(failing[0].labels["service"], "etl_worker");
        assert!(!failing[0].labels.contains_key("name"));
        // Fifteen quiet minutes clear it.
        let later = DateTime::from_timestamp(T + 120 + 16 * 60, 0).unwrap();
        assert_eq!(
            names(&e.tick(later)),
            vec![("SwarmServiceTasksFailing".into(), Status::Resolved)]
        );
    }

    #[test]
    fn a_replayed_start_from_before_the_oom_does_not_clear_what_the_list_found() {
        let mut e = Episodes::new("n1");
        // The container list after a (re)connect: OOM-killed at T.
        let oom = e.alert(
            "ContainerOOMKilled",
            &Container {
                id: "c1",
                name: "web",
                image: "img",
                service: None,
                stack: None,
                task: None,
            },
            &[],
            DateTime::from_timestamp(T, 0).unwrap(),
        );
        let fired: Vec<Event> = e
            .fire("c1".into(), "ContainerOOMKilled", oom)
            .into_iter()
            .collect();
        assert_eq!(
            names(&fired),
            vec![("ContainerOOMKilled".into(), Status::Firing)]
        );
        // The event stream replays its window: the container's first start,
        // before the kill, clears nothing.
        assert!(e
            .on_event(&msg("start", "c1", T - 5, &[("name", "web")]))
            .is_empty());
        // A start after the kill resolves it.
        let r = e.on_event(&msg("start", "c1", T + 5, &[("name", "web")]));
        assert_eq!(
            names(&r),
            vec![("ContainerOOMKilled".into(), Status::Resolved)]
        );
    }
}
