//! End to end against a real Kubernetes cluster (kind or k3d), when one is
//! available. No API server can run on the CI machine, so these tests are
//! ignored by default and nextest reports them as skipped with the reason.
//! Run them with a cluster whose nodes can pull `busybox`:
//!
//! ```sh
//! kind create cluster --name remediate-e2e
//! KUBECONFIG=~/.kube/config cargo nextest run --test k8s_e2e --run-ignored only
//! ```
//!
//! Each test works in its own namespace `remediate-e2e-<random>` and deletes
//! it at the end (the one test that binds the shipped ClusterRole creates it
//! as `<namespace>-remediate` and deletes it too); nothing else in the
//! cluster is touched. The cases: eviction verified by its replacement,
//! rollout-restart and bump-memory rollouts, the bundled crash-loop playbook
//! on a 1- and a 2-replica Deployment under the default policy, a stuck
//! rollout (unschedulable new pods) not verified and a progress deadline
//! failing the run, and three agents with the shipped RBAC bound to the
//! agent's service account (a TokenRequest token) evicting once, the Lease
//! deleted after, Secrets forbidden.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event as K8sEvent, Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use remediate::drivers::kubernetes::{self, Kube};
use remediate::drivers::Registry;
use remediate::engine::{Engine, RunStatus};
use remediate::event::{Event, Labels, Status, TriggerKind};
use remediate::playbook::load::{Config, Source};
use remediate::policy::Ledger;
use serde_json::json;

const WHY: &str =
    "needs a real cluster: KUBECONFIG=... cargo nextest run --test k8s_e2e --run-ignored only";

async fn cluster() -> (kube::Client, String) {
    let cfg = kube::Config::infer()
        .await
        .unwrap_or_else(|e| panic!("no cluster reachable through KUBECONFIG: {e}"));
    let client = kube::Client::try_from(kubernetes::without_retries(cfg)).unwrap();
    let ns = format!("remediate-e2e-{:08x}", fastrand::u32(..));
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": ns, "labels": {"remediate-test": "1"}}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    (client, ns)
}

async fn cleanup(client: &kube::Client, ns: &str) {
    let nss: Api<Namespace> = Api::all(client.clone());
    let _ = nss.delete(ns, &DeleteParams::default()).await;
}

async fn deployment(client: &kube::Client, ns: &str, replicas: i32) {
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "app", "image": "busybox:1.36", "command": ["sleep", "3600"],
                    "resources": {"limits": {"memory": "32Mi"}, "requests": {"memory": "16Mi"}}}]}}}
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    // Wait for the rollout.
    for _ in 0..120 {
        let d = Api::<Deployment>::namespaced(client.clone(), ns)
            .get("web")
            .await
            .unwrap();
        if d.status.and_then(|s| s.ready_replicas).unwrap_or(0) == replicas {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("deployment web in {ns} did not become ready");
}

fn engine(client: kube::Client, playbook: &str) -> Engine {
    let cfg = Config::load(
        &[Source { path: "pb.yaml".into(), text: playbook.into() }],
        &[Source {
            path: "default.yaml".into(),
            text: "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec: { blastRadius: { maxUnavailableFraction: 0.5 } }\n".into(),
        }],
    )
    .unwrap();
    let mut reg = Registry::new();
    kubernetes::register(
        &mut reg,
        Arc::new(Kube {
            client,
            holder: "e2e".into(),
        }),
    );
    Engine::new(cfg, reg, "e2e")
}

fn event(labels: &[(&str, &str)]) -> Event {
    let labels: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Event {
        trigger: TriggerKind::Alert,
        status: Status::Firing,
        fingerprint: remediate::event::fingerprint(&labels),
        labels,
        annotations: Labels::new(),
        values: Labels::new(),
        starts_at: None,
        playbook: None,
    }
}

async fn run(e: &Engine, labels: &[(&str, &str)]) -> RunStatus {
    let ev = event(labels);
    let dir = tempfile::tempdir().unwrap();
    let w =
        std::sync::Mutex::new(remediate::audit::Writer::open(&dir.path().join("a.jsonl")).unwrap());
    let mut ledger = Ledger::default();
    let p = e
        .decide(&ev, false, chrono::Utc::now(), &mut ledger)
        .remove(0);
    e.execute(p, &w, &mut ledger).await.unwrap().status
}

#[tokio::test]
#[ignore = "needs a real cluster: KUBECONFIG=... cargo nextest run --test k8s_e2e --run-ignored only"]
async fn evicting_a_pod_of_a_deployment_is_verified_by_its_ready_replacement_and_leaves_an_event() {
    let _ = WHY;
    let (client, ns) = cluster().await;
    deployment(&client, &ns, 2).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    let victim = pods.items[0].metadata.name.clone().unwrap();
    let pb = r#"apiVersion: remediate/v1
kind: Playbook
metadata: { name: restart }
spec:
  triggers: [{ alert: ['alertname="KubePodCrashLooping"'] }]
  target: { kind: kubernetes.pod, namespace: "{{ labels.namespace }}", name: "{{ labels.pod }}" }
  steps: [{ action: kubernetes.pod.restart, with: { mode: evict }, timeout: 2m }]
  verify: { timeout: 3m }
"#;
    let status = run(
        &engine(client.clone(), pb),
        &[
            ("alertname", "KubePodCrashLooping"),
            ("namespace", &ns),
            ("pod", &victim),
        ],
    )
    .await;
    let events = Api::<K8sEvent>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    cleanup(&client, &ns).await;
    assert_eq!(status, RunStatus::Verified);
    assert!(events
        .items
        .iter()
        .any(|e| e.reason.as_deref() == Some("Remediated")
            && e.involved_object.name.as_deref() == Some(victim.as_str())));
}

#[tokio::test]
#[ignore = "needs a real cluster: KUBECONFIG=... cargo nextest run --test k8s_e2e --run-ignored only"]
async fn rollout_restart_and_memory_bump_complete_their_rollouts() {
    let (client, ns) = cluster().await;
    deployment(&client, &ns, 2).await;
    let pb = r#"apiVersion: remediate/v1
kind: Playbook
metadata: { name: roll }
spec:
  triggers: [{ alert: ['alertname="Stuck"'] }]
  target: { kind: kubernetes.workload, namespace: "{{ labels.namespace }}", name: web }
  steps:
    - action: kubernetes.workload.rollout-restart
      timeout: 2m
    - action: kubernetes.workload.bump-memory
      with: { container: app, step: 50%, ceiling: 128Mi }
      timeout: 2m
  verify: { timeout: 3m }
"#;
    let status = run(
        &engine(client.clone(), pb),
        &[("alertname", "Stuck"), ("namespace", &ns)],
    )
    .await;
    let d = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("web")
        .await
        .unwrap();
    cleanup(&client, &ns).await;
    assert_eq!(status, RunStatus::Verified);
    let c = &d
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(
        c.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0,
        "48Mi"
    );
}

/// A Deployment `name` whose container exits at once (CrashLoopBackOff).
async fn crashing(client: &kube::Client, ns: &str, name: &str, replicas: i32) {
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "app", "image": "busybox:1.36", "command": ["sh", "-c", "exit 1"]}]}}}
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    for _ in 0..120 {
        let pods = Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(&format!("app={name}")))
            .await
            .unwrap();
        let looping = pods.items.iter().filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.restart_count > 0))
        });
        if looping.count() == replicas as usize {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("deployment {name} in {ns} never crash-looped");
}

fn bundled(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The bundled crash-loop playbook under the bundled default policy, on a
/// weekday (the default policy freezes weekends), deciding on `pod`.
async fn bundled_crashloop(
    client: &kube::Client,
    ns: &str,
    pod: &str,
) -> Vec<remediate::audit::Record> {
    use chrono::Datelike;
    let cfg = Config::load(
        &[Source {
            path: "pb.yaml".into(),
            text: bundled("playbooks/k8s-crashloop-restart.yaml"),
        }],
        &[Source {
            path: "default.yaml".into(),
            text: bundled("policies/default.yaml"),
        }],
    )
    .unwrap();
    let mut reg = Registry::new();
    kubernetes::register(
        &mut reg,
        Arc::new(Kube {
            client: client.clone(),
            holder: "e2e".into(),
        }),
    );
    let e = Engine::new(cfg, reg, "e2e");
    let mut now = chrono::Utc::now();
    while !matches!(
        now.weekday(),
        chrono::Weekday::Tue | chrono::Weekday::Wed | chrono::Weekday::Thu
    ) {
        now -= chrono::Duration::days(1);
    }
    let ev = event(&[
        ("alertname", "KubePodCrashLooping"),
        ("namespace", ns),
        ("pod", pod),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let w =
        std::sync::Mutex::new(remediate::audit::Writer::open(&dir.path().join("a.jsonl")).unwrap());
    let mut ledger = Ledger::default();
    let p = e.decide(&ev, false, now, &mut ledger).remove(0);
    e.execute(p, &w, &mut ledger).await.unwrap().records
}

#[tokio::test]
#[ignore = "needs a real cluster: KUBECONFIG=... cargo nextest run --test k8s_e2e --run-ignored only"]
async fn the_bundled_crashloop_playbook_evicts_the_pod_of_a_one_and_a_two_replica_deployment() {
    let (client, ns) = cluster().await;
    for replicas in [1, 2] {
        let name = format!("loop{replicas}");
        crashing(&client, &ns, &name, replicas).await;
        let pod = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels(&format!("app={name}")))
            .await
            .unwrap()
            .items[0]
            .metadata
            .name
            .clone()
            .unwrap();
        let recs = bundled_crashloop(&client, &ns, &pod).await;
        // The pod keeps crashing after the restart, so verification fails;
        // the point is that the blast radius did not stop the eviction.
        assert!(
            recs.iter()
                .any(|r| r.outcome.contains(&format!("evicted pod {ns}/{pod}"))),
            "{replicas} replicas: {recs:#?}"
        );
    }
    cleanup(&client, &ns).await;
}

#[tokio::test]
#[ignore = "needs a real cluster: KUBECONFIG=... cargo nextest run --test k8s_e2e --run-ignored only"]
async fn a_stuck_rollout_is_not_verified_and_a_progress_deadline_fails_the_run() {
    let (client, ns) = cluster().await;
    deployment(&client, &ns, 2).await;
    // New pods can never be scheduled: the rollout the restart starts is stuck
    // with the old replicas still there.
    let api = Api::<Deployment>::namespaced(client.clone(), &ns);
    api.patch(
        "web",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"progressDeadlineSeconds": 20,
            "template": {"spec": {"nodeSelector": {"remediate-e2e/none": "x"}}}}})),
    )
    .await
    .unwrap();
    let pb = r#"apiVersion: remediate/v1
kind: Playbook
metadata: { name: roll }
spec:
  triggers: [{ alert: ['alertname="Stuck"'] }]
  target: { kind: kubernetes.workload, namespace: "{{ labels.namespace }}", name: web }
  steps: [{ action: kubernetes.workload.rollout-restart, timeout: 1m }]
  verify: { timeout: 10s }
"#;
    let status = run(
        &engine(client.clone(), pb),
        &[("alertname", "Stuck"), ("namespace", &ns)],
    )
    .await;
    assert!(
        matches!(&status, RunStatus::Failed(m) if m.contains("not verified within 10s") || m.contains("verify timed out")),
        "{status:?}"
    );
    // Past the 20 s progress deadline the controller reports
    // ProgressDeadlineExceeded: the next run fails at once with it.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let status = run(
        &engine(client.clone(), &pb.replace("timeout: 10s", "timeout: 5m")),
        &[("alertname", "Stuck"), ("namespace", &ns)],
    )
    .await;
    cleanup(&client, &ns).await;
    assert!(
        matches!(&status, RunStatus::Failed(m) if m.contains("ProgressDeadlineExceeded")),
        "{status:?}"
    );
}

/// deploy/k8s/rbac.yaml bound to a service account `remediate` in `ns`
/// (cluster objects renamed for the test), and a client with its token.
async fn shipped_rbac_client(admin: &kube::Client, ns: &str) -> kube::Client {
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "remediate", "namespace": ns}}))
            .unwrap();
    Api::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let text = bundled("deploy/k8s/rbac.yaml");
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let mut v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        let kind = v["kind"].as_str().unwrap().to_string();
        let cluster = kind.starts_with("Cluster");
        if cluster {
            v["metadata"]["name"] =
                json!(format!("{ns}-{}", v["metadata"]["name"].as_str().unwrap()));
            if kind == "ClusterRoleBinding" {
                v["roleRef"]["name"] =
                    json!(format!("{ns}-{}", v["roleRef"]["name"].as_str().unwrap()));
            }
        } else {
            v["metadata"]["namespace"] = json!(ns);
        }
        if let Some(subjects) = v["subjects"].as_array_mut() {
            for s in subjects {
                s["namespace"] = json!(ns);
            }
        }
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "rbac.authorization.k8s.io",
            "v1",
            &kind,
        ));
        let api: Api<DynamicObject> = if cluster {
            Api::all_with(admin.clone(), &ar)
        } else {
            Api::namespaced_with(admin.clone(), ns, &ar)
        };
        let obj: DynamicObject = serde_json::from_value(v).unwrap();
        api.create(&PostParams::default(), &obj).await.unwrap();
    }
    let req = http::Request::post(format!("/api/v1/namespaces/{ns}/serviceaccounts/remediate/token"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})).unwrap())
        .unwrap();
    let tr: serde_json::Value = admin.request(req).await.unwrap();
    let token = tr["status"]["token"].as_str().unwrap().to_string();
    let mut cfg = kube::Config::infer().await.unwrap();
    cfg.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    kube::Client::try_from(kubernetes::without_retries(cfg)).unwrap()
}

async fn delete_cluster_rbac(admin: &kube::Client, ns: &str) {
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    for kind in ["ClusterRoleBinding", "ClusterRole"] {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "rbac.authorization.k8s.io",
            "v1",
            kind,
        ));
        let _ = Api::<DynamicObject>::all_with(admin.clone(), &ar)
            .delete(&format!("{ns}-remediate"), &DeleteParams::default())
            .await;
    }
}

#[tokio::test]
#[ignore = "needs a real cluster: KUBECONFIG=... cargo nextest run --test k8s_e2e --run-ignored only"]
async fn three_agents_with_the_shipped_rbac_evict_once_and_cannot_read_secrets() {
    let (admin, ns) = cluster().await;
    deployment(&admin, &ns, 3).await;
    let agent = shipped_rbac_client(&admin, &ns).await;
    let victim = Api::<Pod>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    let pb = r#"apiVersion: remediate/v1
kind: Playbook
metadata: { name: restart }
spec:
  triggers: [{ alert: ['alertname="KubePodCrashLooping"'] }]
  target: { kind: kubernetes.pod, namespace: "{{ labels.namespace }}", name: "{{ labels.pod }}" }
  steps: [{ action: kubernetes.pod.restart, with: { mode: evict }, timeout: 2m }]
  verify: { timeout: 3m }
"#;
    let agents: Vec<Engine> = (0..3)
        .map(|i| {
            let mut e = engine(agent.clone(), pb);
            e.coordinator = Some(Arc::new(
                remediate::coord::kubernetes::LeaseCoordinator::new(
                    agent.clone(),
                    &ns,
                    &format!("agent-{i}"),
                ),
            ));
            e
        })
        .collect();
    let labels = [
        ("alertname", "KubePodCrashLooping"),
        ("namespace", ns.as_str()),
        ("pod", victim.as_str()),
    ];
    let (a, b, c) = tokio::join!(
        run(&agents[0], &labels),
        run(&agents[1], &labels),
        run(&agents[2], &labels)
    );
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(agent.clone(), &ns)
        .list(&ListParams::default())
        .await;
    let leases = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    delete_cluster_rbac(&admin, &ns).await;
    cleanup(&admin, &ns).await;
    let statuses = [a, b, c];
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == RunStatus::Verified)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == RunStatus::NotExecuted)
            .count(),
        2
    );
    assert!(
        leases.items.is_empty(),
        "the Lease was deleted after the run"
    );
    assert!(matches!(secrets, Err(kube::Error::Api(s)) if s.code == 403));
}
