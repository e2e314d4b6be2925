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
//! it at the end; nothing else in the cluster is touched.

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
    let client = kube::Client::try_default()
        .await
        .unwrap_or_else(|e| panic!("no cluster reachable through KUBECONFIG: {e}"));
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

async fn run(e: &Engine, labels: &[(&str, &str)]) -> RunStatus {
    let labels: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let ev = Event {
        trigger: TriggerKind::Alert,
        status: Status::Firing,
        fingerprint: remediate::event::fingerprint(&labels),
        labels,
        annotations: Labels::new(),
        values: Labels::new(),
        starts_at: None,
        playbook: None,
    };
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
