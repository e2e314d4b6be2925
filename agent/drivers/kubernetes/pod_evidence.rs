//! Evidence about a pod, what on-call would otherwise look up with
//! `kubectl describe` and `kubectl logs --previous`: the crashing
//! container's last termination and restart count, the last lines of its
//! previous instance's log, the pod's recent Events and its owner's ready
//! replicas. Reads only, all within [`BUDGET`]; whatever cannot be read in
//! time or is refused is recorded as "unavailable: <why>", never an error.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use kube::api::{Api, ListParams, LogParams};
use kube::Client;
use serde_json::{json, Map, Value};

use super::forbidden;
use super::workload::{Rollout, Workload};
use crate::units::human_secs;

/// The time all of a pod's evidence may take together.
pub(super) const BUDGET: Duration = Duration::from_secs(3);
/// Lines of the previous container's log asked for (`tailLines`).
const LOG_LINES: i64 = 20;
/// At most this much log is read from the API server (`limitBytes`, which
/// it applies after `tailLines`, from the start: room for 20 long lines).
const LOG_READ_BYTES: i64 = 256 << 10;
/// Of those lines, the last that fit in this many bytes are kept (below
/// the engine's per-value cap, which would cut the end, not the start).
const LOG_KEEP_BYTES: usize = 1800;
/// The most recent Events kept.
const EVENTS: usize = 5;
/// One Event's message at most this many characters.
const EVENT_MESSAGE_CHARS: usize = 240;

/// The evidence about `pod` as a details `evidence` object: `hint` is the
/// container the alert named (if any), `owner` the owner's line
/// ("Deployment etl/web: 2/3 ready").
pub(super) async fn collect(
    client: &Client,
    pod: &Pod,
    hint: Option<&str>,
    owner: String,
) -> Map<String, Value> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let mut ev = Map::new();
    ev.insert("owner".into(), json!(owner));
    let deadline = tokio::time::Instant::now() + BUDGET;
    let status = crashing(pod, hint);
    let container = match status {
        Some(c) => {
            describe_container(c, &mut ev);
            Some(c.name.clone())
        }
        None => {
            ev.insert(
                "container".into(),
                json!("unavailable: the pod reports no container status"),
            );
            // The log can still be asked for by the spec's container.
            let spec = pod.spec.as_ref().map(|s| &s.containers);
            hint.filter(|h| !h.is_empty())
                .map(str::to_string)
                .or_else(|| spec.and_then(|c| c.first()).map(|c| c.name.clone()))
        }
    };
    // The current instance, when it is the one that terminated (not yet
    // restarted); otherwise the one before it, as `kubectl logs --previous`.
    let previous = status.is_none_or(|c| {
        c.state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_none()
    });
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let log = async {
        let Some(c) = container.clone() else {
            return "unavailable: the pod has no container".to_string();
        };
        let lp = LogParams {
            container: Some(c),
            previous,
            tail_lines: Some(LOG_LINES),
            limit_bytes: Some(LOG_READ_BYTES),
            ..LogParams::default()
        };
        match tokio::time::timeout_at(deadline, pods.logs(name, &lp)).await {
            Ok(Ok(text)) => last_lines(&text),
            Ok(Err(e)) => unavailable(&e),
            Err(_) => late(),
        }
    };
    let events = async {
        let mut fields = format!("involvedObject.name={name}");
        if let Some(uid) = &pod.metadata.uid {
            fields.push_str(&format!(",involvedObject.uid={uid}"));
        }
        let api = Api::<Event>::namespaced(client.clone(), ns);
        match tokio::time::timeout_at(deadline, api.list(&ListParams::default().fields(&fields)))
            .await
        {
            Ok(Ok(list)) => recent_events(list.items),
            Ok(Err(e)) => unavailable(&e),
            Err(_) => late(),
        }
    };
    let (log, events) = tokio::join!(log, events);
    let log_key = if previous {
        "previous container log"
    } else {
        "terminated container log"
    };
    ev.insert(log_key.into(), json!(log));
    ev.insert("events".into(), json!(events));
    ev
}

/// The owner as evidence: "Deployment etl/web (ReplicaSet web-5d9): 2/3 ready".
pub(super) fn owner_line(w: &Workload, direct: Option<&str>, r: &Rollout) -> String {
    let via = match direct {
        Some(d) if d != w.name && w.kind == "Deployment" => format!(" (ReplicaSet {d})"),
        _ => String::new(),
    };
    format!(
        "{} {}/{}{via}: {}/{} ready",
        w.kind, w.namespace, w.name, r.ready, r.desired
    )
}

/// The container to describe: the one named when the pod has it, else the
/// one that crashed (terminated with a failure now or last, not ready, most
/// restarts), the first such in the pod's order; init containers count
/// (Init:CrashLoopBackOff), one that completed does not stand out.
fn crashing<'a>(pod: &'a Pod, hint: Option<&str>) -> Option<&'a ContainerStatus> {
    let st = pod.status.as_ref()?;
    let statuses: Vec<&ContainerStatus> = st
        .init_container_statuses
        .iter()
        .flatten()
        .chain(st.container_statuses.iter().flatten())
        .collect();
    if let Some(c) = hint
        .filter(|h| !h.is_empty())
        .and_then(|h| statuses.iter().find(|c| c.name == h))
    {
        return Some(c);
    }
    let failed = |c: &ContainerStatus| {
        termination(c).is_some_and(|t| t.exit_code != 0 || t.reason.as_deref() != Some("Completed"))
    };
    let score = |c: &ContainerStatus| (failed(c), !c.ready, c.restart_count);
    let mut best: Option<&ContainerStatus> = None;
    for c in statuses {
        if best.is_none_or(|b| score(c) > score(b)) {
            best = Some(c);
        }
    }
    best
}

/// The container's most recent termination: the current state's, else the
/// last state's.
fn termination(
    c: &ContainerStatus,
) -> Option<&k8s_openapi::api::core::v1::ContainerStateTerminated> {
    c.state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| c.last_state.as_ref().and_then(|s| s.terminated.as_ref()))
}

fn describe_container(c: &ContainerStatus, ev: &mut Map<String, Value>) {
    ev.insert("container".into(), json!(c.name));
    ev.insert("restarts".into(), json!(c.restart_count));
    let state = c.state.as_ref();
    let now = if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
        format!(
            "waiting: {}",
            w.reason.as_deref().unwrap_or("unknown reason")
        )
    } else if state.and_then(|s| s.running.as_ref()).is_some() {
        format!("running{}", if c.ready { ", ready" } else { ", not ready" })
    } else if state.and_then(|s| s.terminated.as_ref()).is_some() {
        "terminated".to_string()
    } else {
        "unknown".to_string()
    };
    ev.insert("state".into(), json!(now));
    let Some(t) = termination(c) else {
        ev.insert(
            "last termination".into(),
            json!("none recorded (the container has not terminated)"),
        );
        return;
    };
    let mut text = format!(
        "{}, exit code {}",
        t.reason.as_deref().unwrap_or("no reason given"),
        t.exit_code
    );
    if let Some(s) = t.signal {
        text.push_str(&format!(", signal {s}"));
    }
    if let (Some(start), Some(end)) = (&t.started_at, &t.finished_at) {
        let ran = end.0.as_second().saturating_sub(start.0.as_second()).max(0);
        text.push_str(&format!(" after {} running", human_secs(ran as u64)));
    }
    if let Some(end) = &t.finished_at {
        text.push_str(&format!(", {} ago", ago(end.0)));
    }
    if let Some(m) = t.message.as_deref().filter(|m| !m.is_empty()) {
        text.push_str(&format!(": {}", cut_chars(m, EVENT_MESSAGE_CHARS)));
    }
    ev.insert("last termination".into(), json!(text));
    ev.insert("exit code".into(), json!(t.exit_code));
}

/// The last [`LOG_LINES`] lines that fit in [`LOG_KEEP_BYTES`], saying how
/// many earlier ones were left out.
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    if lines.is_empty() {
        return "(empty: the container wrote nothing)".into();
    }
    let mut keep = Vec::new();
    let mut used = 0;
    for l in lines.iter().rev().take(LOG_LINES as usize) {
        if used + l.len() + 1 > LOG_KEEP_BYTES {
            if keep.is_empty() {
                // One line longer than the room: its end is what matters.
                let mut start = l.len() - LOG_KEEP_BYTES;
                while !l.is_char_boundary(start) {
                    start += 1;
                }
                keep.push(format!("…{}", &l[start..]));
            }
            break;
        }
        used += l.len() + 1;
        keep.push((*l).to_string());
    }
    keep.reverse();
    let left_out = lines.len() - keep.len();
    let mut out = String::new();
    if left_out > 0 {
        out.push_str(&format!("[{left_out} earlier lines left out]\n"));
    }
    out.push_str(&keep.join("\n"));
    out
}

/// The last [`EVENTS`] Events, oldest first: "reason: message (xN, age ago)".
fn recent_events(mut items: Vec<Event>) -> String {
    if items.is_empty() {
        return "none (Events expire after an hour by default)".into();
    }
    items.sort_by_key(|e| last_seen(e).map(|t| t.as_second()).unwrap_or(0));
    let total = items.len();
    let mut lines: Vec<String> = items
        .iter()
        .skip(total.saturating_sub(EVENTS))
        .map(|e| {
            let count = e
                .series
                .as_ref()
                .and_then(|s| s.count)
                .or(e.count)
                .unwrap_or(1);
            let age = last_seen(e)
                .map(|t| format!(", {} ago", ago(t)))
                .unwrap_or_default();
            let kind = match e.type_.as_deref() {
                Some("Warning") => "Warning ",
                _ => "",
            };
            format!(
                "{kind}{}: {} (x{count}{age})",
                e.reason.as_deref().unwrap_or("no reason"),
                cut_chars(
                    e.message.as_deref().unwrap_or("").trim(),
                    EVENT_MESSAGE_CHARS
                )
            )
        })
        .collect();
    if total > EVENTS {
        lines.insert(0, format!("[{} older events left out]", total - EVENTS));
    }
    lines.join("\n")
}

/// When an Event was last seen, by whichever field its reporter set.
fn last_seen(e: &Event) -> Option<k8s_openapi::jiff::Timestamp> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| t.0)
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn ago(t: k8s_openapi::jiff::Timestamp) -> String {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    human_secs(now.saturating_sub(t.as_second()).max(0) as u64)
}

fn cut_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Why a read failed, as evidence: a 403 names the permission to grant.
fn unavailable(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => format!("unavailable: {}", forbidden(s)),
        kube::Error::Api(s) => format!("unavailable: {} ({})", s.message, s.code),
        other => format!("unavailable: {other}"),
    }
}

fn late() -> String {
    format!("unavailable: no answer within {}s", BUDGET.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_that_fit_are_kept_and_the_cut_is_said() {
        assert_eq!(last_lines("a\nb\n"), "a\nb");
        assert_eq!(last_lines("\n"), "(empty: the container wrote nothing)");
        let many: String = (0..30).map(|i| format!("line {i}\n")).collect();
        let out = last_lines(&many);
        assert!(
            out.starts_with("[10 earlier lines left out]\nline 10\n"),
            "{out}"
        );
        assert!(out.ends_with("line 29"), "{out}");
        let wide: String = (0..5)
            .map(|i| format!("{i}{}\n", "x".repeat(700)))
            .collect();
        let out = last_lines(&wide);
        assert!(out.starts_with("[3 earlier lines left out]\n3x"), "{out}");
        assert!(out.len() <= LOG_KEEP_BYTES + 40, "{}", out.len());
        let one = format!("start{}end", "é".repeat(2000));
        let out = last_lines(&one);
        assert!(out.starts_with('…') && out.ends_with("end"), "{out}");
        assert!(out.len() <= LOG_KEEP_BYTES + 4, "{}", out.len());
    }

    #[test]
    fn the_crashing_container_is_the_terminated_one_unless_the_alert_names_another() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"containerStatuses": [
                {"name": "sidecar", "ready": true, "restartCount": 9, "image": "s", "imageID": "", "state": {"running": {}}},
                {"name": "app", "ready": false, "restartCount": 3, "image": "a", "imageID": "",
                 "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
        }))
        .unwrap();
        assert_eq!(crashing(&pod, None).unwrap().name, "app");
        assert_eq!(crashing(&pod, Some("")).unwrap().name, "app");
        assert_eq!(crashing(&pod, Some("sidecar")).unwrap().name, "sidecar");
        assert_eq!(crashing(&pod, Some("nope")).unwrap().name, "app");
        // A completed init container is not the crash; a failing one is.
        let mut with_init = pod.clone();
        let init = |code: i32, reason: &str| {
            json!([{"name": "migrate", "ready": code == 0, "restartCount": 0, "image": "m", "imageID": "",
                    "state": {"terminated": {"reason": reason, "exitCode": code}}}])
        };
        let status = with_init.status.as_mut().unwrap();
        status.init_container_statuses = serde_json::from_value(init(0, "Completed")).unwrap();
        assert_eq!(crashing(&with_init, None).unwrap().name, "app");
        let status = with_init.status.as_mut().unwrap();
        status.init_container_statuses = serde_json::from_value(init(1, "Error")).unwrap();
        status.container_statuses = None;
        assert_eq!(crashing(&with_init, None).unwrap().name, "migrate");
        let mut ev = Map::new();
        describe_container(crashing(&pod, None).unwrap(), &mut ev);
        assert_eq!(ev["last termination"], "OOMKilled, exit code 137");
        assert_eq!(ev["exit code"], 137);
        assert_eq!(ev["restarts"], 3);
        assert_eq!(ev["state"], "waiting: CrashLoopBackOff");
    }

    #[test]
    fn recent_events_are_the_last_five_oldest_first_with_count_and_age() {
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let at = |s: i64| {
            k8s_openapi::jiff::Timestamp::from_second(now - s)
                .unwrap()
                .to_string()
        };
        let evs: Vec<Event> = (0..7)
            .map(|i| {
                serde_json::from_value(json!({
                    "metadata": {"name": format!("e{i}")},
                    "involvedObject": {},
                    "reason": format!("R{i}"), "message": "m", "count": i + 1,
                    "type": if i == 6 { "Warning" } else { "Normal" },
                    "lastTimestamp": at(700 - i * 100),
                }))
                .unwrap()
            })
            .collect();
        let out = recent_events(evs.into_iter().rev().collect());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "[2 older events left out]");
        assert!(lines[1].starts_with("R2: m (x3, 8m"), "{out}");
        assert!(lines[5].starts_with("Warning R6: m (x7, 1m"), "{out}");
        assert_eq!(lines.len(), 6);
        assert!(recent_events(vec![]).starts_with("none"));
    }
}
