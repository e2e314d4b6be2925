//! The Kubernetes pod-watch trigger (`triggers.kubernetes`) against kmock
//! (tests/k8s/kmock_server.py, with the shipped RBAC): the real agent
//! binary lists and watches the pods of its node (`spec.nodeName`), and a
//! pod reaching CrashLoopBackOff is decided by the bundled
//! `k8s-crashloop-restart` playbook with no Prometheus in between (dry-run:
//! the plan reads the cluster; enforced: the pod is evicted). A
//! crash-looping pod on another node is not this agent's. Readiness past
//! `readinessFailingFor` fires through the real watch. A watch that ends is
//! resumed from its resourceVersion; a 410 Gone (kmock's compaction) is
//! answered with a re-list; an API server that is not there yet is retried
//! with a growing backoff. The times from the status patch to the decision
//! and to the eviction request are logged (docs/benchmarks.md), not
//! asserted.

mod common;

use std::time::{Duration, Instant};

use remediate::audit::Record;
use serde_json::{json, Value};

use common::kmock::{
    kubeconfig, pod_watch_config, start_kmock, start_kmock_on, KMock, SHIPPED_RBAC,
};
use common::{eventually, repo, start_agent, AgentProc};

const PODS: &str = "/api/v1/namespaces/etl/pods";
const POLICY: &str = "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec: { blastRadius: { maxUnavailableFraction: 0.5 } }\n";

struct Admin {
    http: reqwest::Client,
    base: String,
}

impl Admin {
    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("authorization", "Bearer admin")
            .header("content-type", "application/merge-patch+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{method} {path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn create(&self, path: &str, body: Value) -> Value {
        self.send(reqwest::Method::POST, path, body).await
    }

    /// What the kubelet writes: the pod's status.
    async fn pod_status(&self, pod: &str, status: Value) {
        self.send(
            reqwest::Method::PATCH,
            &format!("{PODS}/{pod}/status"),
            json!({ "status": status }),
        )
        .await;
    }
}

fn running() -> Value {
    json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "app:1", "imageID": "", "state": {"running": {}}}]})
}

fn crash_looping(restarts: i64) -> Value {
    json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [{"name": "app", "ready": false, "restartCount": restarts, "image": "app:1", "imageID": "",
            "lastState": {"terminated": {"reason": "Error", "exitCode": 1}},
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]})
}

/// Deployment `web` (2 replicas), ReplicaSet `web-5d9`, pod `web-5d9-a` on
/// node-a and `web-5d9-b` on node-b, both running and Ready.
async fn seed(a: &Admin) {
    let d = a
        .create(
            "/apis/apps/v1/namespaces/etl/deployments",
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "etl"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "app", "image": "app:1"}]}}}}),
        )
        .await;
    a.send(
        reqwest::Method::PATCH,
        "/apis/apps/v1/namespaces/etl/deployments/web/status",
        json!({"status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
            "readyReplicas": 2, "availableReplicas": 2, "unavailableReplicas": 0}}),
    )
    .await;
    a.create(
        "/apis/apps/v1/namespaces/etl/replicasets",
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-5d9", "namespace": "etl", "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": d["metadata"]["uid"], "controller": true}]},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}}}),
    )
    .await;
    for (pod, node) in [("web-5d9-a", "node-a"), ("web-5d9-b", "node-b")] {
        a.create(
            PODS,
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": "etl", "labels": {"app": "web"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d9", "uid": "rs-1", "controller": true}]},
                "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app:1"}]},
                "status": running()}),
        )
        .await;
    }
}

fn records(a: &AgentProc) -> Vec<Record> {
    remediate::audit::read(&a.dir.join("state/audit.jsonl"))
        .map(|l| l.records)
        .unwrap_or_default()
}

fn for_pod(recs: &[Record], pod: &str) -> Vec<Record> {
    recs.iter()
        .filter(|r| r.trigger.labels.get("pod").map(String::as_str) == Some(pod))
        .cloned()
        .collect()
}

/// The agent's "native trigger" log lines: (alertname, status).
fn native_events(a: &AgentProc) -> Vec<(String, String)> {
    a.logs
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "native trigger")
        .map(|v| {
            (
                v["alertname"].as_str().unwrap_or_default().to_string(),
                v["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn log_count(a: &AgentProc, message: &str) -> usize {
    a.logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(message))
        .count()
}

async fn start(kmock: &KMock) -> (tempfile::TempDir, AgentProc) {
    let (dir, agent) = spawn(&kmock.url);
    wait_watching(&agent, 1).await;
    (dir, agent)
}

async fn wait_watching(agent: &AgentProc, n: usize) {
    let watching = eventually(Duration::from_secs(45), || {
        (log_count(agent, "watching the node's pods") >= n).then_some(())
    })
    .await;
    assert!(watching.is_some(), "not watching:\n{}", agent.log_text());
}

/// The agent on node-a, dry-run, with the bundled crash-loop playbook,
/// against the API server at `base`.
fn spawn(base: &str) -> (tempfile::TempDir, AgentProc) {
    spawn_with(base, None, "dryRun: true\n")
}

/// [`spawn`] with `readinessFailingFor` and `extra` config lines.
fn spawn_with(base: &str, readiness: Option<&str>, extra: &str) -> (tempfile::TempDir, AgentProc) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["playbooks", "policies"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::copy(
        repo("playbooks/k8s-crashloop-restart.yaml"),
        d.join("playbooks/k8s-crashloop-restart.yaml"),
    )
    .unwrap();
    std::fs::write(d.join("policies/default.yaml"), POLICY).unwrap();
    let kc = kubeconfig(d, base);
    let mut cfg = pod_watch_config(&kc, "node-a", extra);
    if let Some(r) = readiness {
        cfg = cfg.replace(
            "node: node-a }",
            &format!("node: node-a, readinessFailingFor: {r} }}"),
        );
    }
    let agent = start_agent(d, &cfg);
    (dir, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_on_the_agents_node_is_one_decision_and_its_clearing_one_resolved_event() {
    let kmock = start_kmock(std::path::Path::new(SHIPPED_RBAC));
    let admin = Admin {
        http: reqwest::Client::new(),
        base: kmock.url.clone(),
    };
    seed(&admin).await;
    let (_dir, agent) = start(&kmock).await;
    // Both pods crash-loop; only node-a's is this agent's.
    admin.pod_status("web-5d9-b", crash_looping(3)).await;
    let patched = Instant::now();
    admin.pod_status("web-5d9-a", crash_looping(3)).await;
    let decided = eventually(Duration::from_secs(30), || {
        let recs = for_pod(&records(&agent), "web-5d9-a");
        (!recs.is_empty()).then_some(recs)
    })
    .await
    .unwrap_or_else(|| panic!("no decision for web-5d9-a:\n{}", agent.log_text()));
    let took = patched.elapsed();
    eprintln!(
        "k8s pod watch: CrashLoopBackOff status patch to the decision: {} ms",
        took.as_millis()
    );
    let r = &decided[0];
    assert_eq!(r.playbook, "k8s-crashloop-restart");
    assert_eq!(r.trigger.alertname.as_deref(), Some("KubePodCrashLooping"));
    for (k, v) in [
        ("namespace", "etl"),
        ("container", "app"),
        ("reason", "CrashLoopBackOff"),
        ("restarts", "3"),
        ("owner_kind", "ReplicaSet"),
        ("owner_name", "web-5d9"),
        ("node", "node-a"),
        ("remediate_source", "kubernetes"),
    ] {
        assert_eq!(r.trigger.labels[k], v, "{k}");
    }
    assert_eq!(r.target.get("name").map(String::as_str), Some("web-5d9-a"));
    // More restarts in the same episode: no new event.
    admin.pod_status("web-5d9-a", crash_looping(4)).await;
    admin.pod_status("web-5d9-a", crash_looping(5)).await;
    // Cleared: one resolved event.
    admin.pod_status("web-5d9-a", running()).await;
    let resolved = eventually(Duration::from_secs(30), || {
        native_events(&agent)
            .iter()
            .any(|(_, s)| s == "resolved")
            .then_some(())
    })
    .await;
    assert!(
        resolved.is_some(),
        "no resolved event:\n{}",
        agent.log_text()
    );
    // Settle: anything more the updates would (wrongly) cause has arrived.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        native_events(&agent),
        vec![
            ("KubePodCrashLooping".to_string(), "firing".to_string()),
            ("KubePodCrashLooping".to_string(), "resolved".to_string())
        ],
        "{}",
        agent.log_text()
    );
    let recs = records(&agent);
    assert!(
        for_pod(&recs, "web-5d9-b").is_empty(),
        "node-b's pod is not this agent's: {recs:#?}"
    );
    // One decision for the firing event (a dry-run plan that read the
    // cluster) and one record of the resolved event, which runs nothing.
    let planned: Vec<(String, String)> = for_pod(&recs, "web-5d9-a")
        .into_iter()
        .filter(|r| r.phase == remediate::audit::Phase::Planned)
        .map(|r| (r.trigger.status.as_str().to_string(), r.decision.clone()))
        .collect();
    assert_eq!(
        planned,
        vec![
            ("firing".to_string(), "dry-run".to_string()),
            ("resolved".to_string(), "suppressed".to_string())
        ],
        "{recs:#?}"
    );
    assert!(
        decided[0]
            .outcome
            .starts_with("would evict pod etl/web-5d9-a (CrashLoopBackOff, 3 restarts"),
        "{}",
        decided[0].outcome
    );
    assert!(
        admin
            .http
            .get(format!("{}{PODS}/web-5d9-a", kmock.url))
            .header("authorization", "Bearer admin")
            .send()
            .await
            .unwrap()
            .status()
            .is_success(),
        "a dry-run evicts nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_gone_on_the_watch_is_answered_with_a_relist_and_the_watch_goes_on() {
    let kmock = start_kmock(std::path::Path::new(SHIPPED_RBAC));
    let admin = Admin {
        http: reqwest::Client::new(),
        base: kmock.url.clone(),
    };
    seed(&admin).await;
    let (_dir, agent) = start(&kmock).await;
    assert_eq!(log_count(&agent, "listed the node's pods"), 1);
    // Compaction: the open watch ends with a 410 ERROR event.
    admin
        .send(reqwest::Method::POST, "/_kmock/compact", json!({}))
        .await;
    let relisted = eventually(Duration::from_secs(30), || {
        (log_count(&agent, "listed the node's pods") >= 2
            && log_count(&agent, "watching the node's pods") >= 2)
            .then_some(())
    })
    .await;
    assert!(relisted.is_some(), "no re-list:\n{}", agent.log_text());
    assert!(log_count(&agent, "(410)") >= 1, "{}", agent.log_text());
    // The new watch sees what happens next.
    admin.pod_status("web-5d9-a", crash_looping(1)).await;
    let fired = eventually(Duration::from_secs(30), || {
        (!native_events(&agent).is_empty()).then_some(())
    })
    .await;
    assert!(fired.is_some(), "{}", agent.log_text());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        native_events(&agent),
        vec![("KubePodCrashLooping".to_string(), "firing".to_string())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_api_server_is_retried_with_a_growing_backoff_until_it_answers() {
    // A loopback port nothing listens on (yet).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_dir, agent) = spawn(&format!("http://127.0.0.1:{port}"));
    let retries = eventually(Duration::from_secs(30), || {
        let waits: Vec<String> = agent
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "kubernetes trigger: cannot list pods")
            .map(|v| v["retry_in"].as_str().unwrap_or_default().to_string())
            .collect();
        (waits.len() >= 3).then_some(waits)
    })
    .await
    .unwrap_or_else(|| panic!("no retries:\n{}", agent.log_text()));
    assert_eq!(retries[..3], ["1s", "2s", "4s"], "{}", agent.log_text());
    // The API server comes up: the agent lists, watches and decides.
    let kmock = start_kmock_on(std::path::Path::new(SHIPPED_RBAC), port);
    let admin = Admin {
        http: reqwest::Client::new(),
        base: kmock.url.clone(),
    };
    seed(&admin).await;
    wait_watching(&agent, 1).await;
    admin.pod_status("web-5d9-a", crash_looping(2)).await;
    let decided = eventually(Duration::from_secs(30), || {
        let recs = for_pod(&records(&agent), "web-5d9-a");
        (!recs.is_empty()).then_some(recs)
    })
    .await;
    assert!(decided.is_some(), "{}", agent.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforced_the_crash_looping_pod_of_the_agents_node_is_evicted_and_the_other_nodes_is_not() {
    let kmock = start_kmock(std::path::Path::new(SHIPPED_RBAC));
    let admin = Admin {
        http: reqwest::Client::new(),
        base: kmock.url.clone(),
    };
    seed(&admin).await;
    let (_dir, agent) = spawn_with(&kmock.url, None, "");
    wait_watching(&agent, 1).await;
    admin.pod_status("web-5d9-b", crash_looping(3)).await;
    let patched = Instant::now();
    admin.pod_status("web-5d9-a", crash_looping(3)).await;
    let evictions = |pod: &str| {
        std::fs::read_to_string(&kmock.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["subresource"] == "eviction" && r["name"] == pod)
            .count()
    };
    let evicted = eventually(Duration::from_secs(30), || {
        (evictions("web-5d9-a") > 0).then_some(())
    })
    .await;
    let took = patched.elapsed();
    assert!(evicted.is_some(), "no eviction:\n{}", agent.log_text());
    eprintln!(
        "k8s pod watch: CrashLoopBackOff status patch to the eviction request: {} ms",
        took.as_millis()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(evictions("web-5d9-a"), 1);
    assert_eq!(
        evictions("web-5d9-b"),
        0,
        "node-b's pod is not this agent's"
    );
    let get = |pod: &str| {
        admin
            .http
            .get(format!("{}{PODS}/{pod}", kmock.url))
            .header("authorization", "Bearer admin")
            .send()
    };
    assert_eq!(get("web-5d9-a").await.unwrap().status(), 404, "evicted");
    assert!(get("web-5d9-b").await.unwrap().status().is_success());
    // The deleted pod ends its episode: one resolved event.
    let resolved = eventually(Duration::from_secs(30), || {
        native_events(&agent)
            .iter()
            .any(|(_, s)| s == "resolved")
            .then_some(())
    })
    .await;
    assert!(resolved.is_some(), "{}", agent.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_not_ready_past_the_threshold_fires_once_and_resolves_when_ready() {
    let kmock = start_kmock(std::path::Path::new(SHIPPED_RBAC));
    let admin = Admin {
        http: reqwest::Client::new(),
        base: kmock.url.clone(),
    };
    seed(&admin).await;
    let (_dir, agent) = spawn_with(&kmock.url, Some("1s"), "dryRun: true\n");
    wait_watching(&agent, 1).await;
    // Running, not crash-looping, but its readiness probe fails.
    let mut unready = running();
    unready["conditions"][0]["status"] = json!("False");
    unready["containerStatuses"][0]["ready"] = json!(false);
    admin.pod_status("web-5d9-a", unready.clone()).await;
    let fired = eventually(Duration::from_secs(30), || {
        (!native_events(&agent).is_empty()).then_some(())
    })
    .await;
    assert!(fired.is_some(), "{}", agent.log_text());
    // Still not ready, more updates: nothing new. Then ready: resolved.
    unready["containerStatuses"][0]["restartCount"] = json!(1);
    admin.pod_status("web-5d9-a", unready).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    admin.pod_status("web-5d9-a", running()).await;
    let resolved = eventually(Duration::from_secs(30), || {
        (native_events(&agent).len() >= 2).then_some(())
    })
    .await;
    assert!(resolved.is_some(), "{}", agent.log_text());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        native_events(&agent),
        vec![
            ("KubePodNotReady".to_string(), "firing".to_string()),
            ("KubePodNotReady".to_string(), "resolved".to_string())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_ends_is_resumed_from_its_resource_version_and_sees_what_changed_meanwhile() {
    let kmock = start_kmock(std::path::Path::new(SHIPPED_RBAC));
    let admin = Admin {
        http: reqwest::Client::new(),
        base: kmock.url.clone(),
    };
    seed(&admin).await;
    let (_dir, agent) = start(&kmock).await;
    admin
        .send(reqwest::Method::POST, "/_kmock/close-watches", json!({}))
        .await;
    admin.pod_status("web-5d9-a", crash_looping(1)).await;
    let fired = eventually(Duration::from_secs(30), || {
        (!native_events(&agent).is_empty()).then_some(())
    })
    .await;
    assert!(fired.is_some(), "{}", agent.log_text());
    wait_watching(&agent, 2).await;
    assert_eq!(
        log_count(&agent, "listed the node's pods"),
        1,
        "resumed, not listed again: {}",
        agent.log_text()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        native_events(&agent),
        vec![("KubePodCrashLooping".to_string(), "firing".to_string())]
    );
}
