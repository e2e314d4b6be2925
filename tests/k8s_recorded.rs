//! The Kubernetes paths kmock cannot produce, with recorded API responses
//! (kube's tower-test style): each test serves the exact responses a real
//! API server gives and asserts the exact requests the driver makes.
//! Eviction refused by a PodDisruptionBudget (429) then granted; a
//! resourceVersion conflict (409) on a memory bump; a server error (503) on
//! a read; a lost race for a lapsed Lease (409 on the conditional patch).

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use remediate::coord::{ClaimRequest, Coordinator, Refusal};
use remediate::drivers::kubernetes::{self, Kube};
use remediate::drivers::{Action, Registry};
use serde_json::{json, Value};
use tower_test::mock::{self, Handle};

type Mock = Handle<Request<kube::client::Body>, Response<Full<axum::body::Bytes>>>;

fn client() -> (kube::Client, Mock) {
    let (svc, handle) =
        mock::pair::<Request<kube::client::Body>, Response<Full<axum::body::Bytes>>>();
    (kube::Client::new(svc, "default"), handle)
}

/// Serves one request: asserts method and path (query ignored), returns the body sent.
async fn expect(h: &mut Mock, method: Method, path: &str, status: u16, body: Value) -> Value {
    let (req, send) = h.next_request().await.expect("a request");
    assert_eq!(req.method(), method, "{} {}", req.method(), req.uri());
    assert_eq!(req.uri().path(), path, "{} {}", req.method(), req.uri());
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let sent: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    send.send_response(
        Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header("content-type", "application/json")
            .body(Full::new(axum::body::Bytes::from(
                serde_json::to_vec(&body).unwrap(),
            )))
            .unwrap(),
    );
    sent
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "etl", "uid": "u-1",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "uid": "s-1", "controller": true}]},
        "status": {"phase": "Running"}})
}

fn statefulset(ready: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web", "namespace": "etl", "generation": 3, "resourceVersion": "41"},
        "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "app", "image": "app:1",
            "resources": {"limits": {"memory": "512Mi"}}}]}}},
        "status": {"replicas": 3, "readyReplicas": ready, "updatedReplicas": 3, "observedGeneration": 3}})
}

fn request(kind: &str, params: Value) -> remediate::drivers::Request {
    remediate::drivers::Request {
        target: [("kind", kind), ("namespace", "etl"), ("name", "web-1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        params,
        dry_run: false,
    }
}

fn action(client: kube::Client, name: &str) -> Arc<dyn Action> {
    let mut reg = Registry::new();
    kubernetes::register(
        &mut reg,
        Arc::new(Kube {
            client,
            holder: "agent-0".into(),
        }),
    );
    reg.get(name).unwrap()
}

#[tokio::test]
async fn eviction_refused_by_a_disruption_budget_is_retried_until_granted() {
    let (c, mut h) = client();
    let a = action(c, "kubernetes.pod.restart");
    let req = request(
        "kubernetes.pod",
        json!({"mode": "evict", "allowBarePods": false, "gracePeriodSeconds": null}),
    );
    let server = tokio::spawn(async move {
        // plan: the pod, its owner, the owner's status
        expect(
            &mut h,
            Method::GET,
            "/api/v1/namespaces/etl/pods/web-1",
            200,
            pod(),
        )
        .await;
        expect(
            &mut h,
            Method::GET,
            "/apis/apps/v1/namespaces/etl/statefulsets/web",
            200,
            statefulset(3),
        )
        .await;
        // the owner's pods now (the replacement is the one not among them)
        expect(
            &mut h,
            Method::GET,
            "/api/v1/namespaces/etl/pods",
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod()]}),
        )
        .await;
        // evidence: the pod's Events (it reports no container, so no log is asked for)
        expect(
            &mut h,
            Method::GET,
            "/api/v1/namespaces/etl/events",
            200,
            json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": []}),
        )
        .await;
        // apply: still the same pod; eviction 429 (PDB), then 201
        expect(
            &mut h,
            Method::GET,
            "/api/v1/namespaces/etl/pods/web-1",
            200,
            pod(),
        )
        .await;
        let sent = expect(
            &mut h,
            Method::POST,
            "/api/v1/namespaces/etl/pods/web-1/eviction",
            429,
            status(
                429,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
            ),
        )
        .await;
        assert_eq!(sent["kind"], "Eviction");
        assert_eq!(sent["apiVersion"], "policy/v1");
        assert_eq!(
            sent["deleteOptions"]["preconditions"]["uid"], "u-1",
            "evicts only the pod it planned for"
        );
        // A second refusal, with the budget named in the Status causes.
        expect(&mut h, Method::POST, "/api/v1/namespaces/etl/pods/web-1/eviction", 429,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "Cannot evict pod as it would violate the pod's disruption budget.", "reason": "TooManyRequests", "code": 429,
                "details": {"causes": [{"reason": "DisruptionBudget", "message": "The disruption budget web-pdb needs 3 healthy pods and has 3 currently"}]}})).await;
        expect(&mut h, Method::POST, "/api/v1/namespaces/etl/pods/web-1/eviction", 201,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})).await;
    });
    let plan = a.plan(&req).await.unwrap();
    assert!(
        plan.summary.starts_with(
            "evict pod etl/web-1 (Running, not Ready); statefulset etl/web recreates it (3/3 ready)"
        ),
        "{}",
        plan.summary
    );
    assert_eq!(plan.details["workload"]["replicas"], 3);
    assert_eq!(plan.details["siblings"], json!(["u-1"]));
    let ev = &plan.details["evidence"];
    assert_eq!(ev["owner"], "StatefulSet etl/web: 3/3 ready");
    assert_eq!(
        ev["container"],
        "unavailable: the pod reports no container status"
    );
    assert_eq!(
        ev["previous container log"],
        "unavailable: the pod has no container"
    );
    assert_eq!(
        ev["events"],
        "none (Events expire after an hour by default)"
    );
    let out = a.apply(&req, &plan).await.unwrap();
    assert_eq!(
        out.summary,
        "evicted pod etl/web-1 (after 2 refusals by its disruption budget)"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_resource_version_conflict_on_a_memory_bump_is_a_retryable_failure_and_changes_nothing() {
    let (c, mut h) = client();
    let a = action(c, "kubernetes.workload.bump-memory");
    let mut req = request(
        "kubernetes.workload",
        json!({"container": "app", "step": "50%", "ceiling": "2Gi", "bumpRequest": true}),
    );
    req.target.insert("workload".into(), "statefulset".into());
    req.target.insert("name".into(), "web".into());
    let server = tokio::spawn(async move {
        expect(
            &mut h,
            Method::GET,
            "/apis/apps/v1/namespaces/etl/statefulsets/web",
            200,
            statefulset(3),
        )
        .await;
        let sent = expect(
            &mut h,
            Method::PATCH,
            "/apis/apps/v1/namespaces/etl/statefulsets/web",
            409,
            status(409, "Conflict", "Operation cannot be fulfilled on statefulsets.apps \"web\": the object has been modified; please apply your changes to the latest version and try again"),
        )
        .await;
        // The patch carries the version read in plan, and only the container's memory.
        assert_eq!(sent["metadata"]["resourceVersion"], "41");
        assert_eq!(
            sent["spec"]["template"]["spec"]["containers"][0],
            json!({"name": "app", "resources": {"limits": {"memory": "768Mi"}}})
        );
    });
    let plan = a.plan(&req).await.unwrap();
    assert!(
        plan.summary.contains("from 512Mi to 768Mi (ceiling 2Gi)"),
        "{}",
        plan.summary
    );
    let err = a.apply(&req, &plan).await.unwrap_err();
    assert!(err.retryable);
    assert!(
        err.message.contains("the object has been modified") && err.message.ends_with("(409)"),
        "{}",
        err.message
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_server_error_on_a_read_is_retryable_and_a_missing_pod_is_not() {
    let (c, mut h) = client();
    let a = action(c, "kubernetes.pod.restart");
    let req = request(
        "kubernetes.pod",
        json!({"mode": "delete", "allowBarePods": false, "gracePeriodSeconds": 5}),
    );
    let server = tokio::spawn(async move {
        expect(
            &mut h,
            Method::GET,
            "/api/v1/namespaces/etl/pods/web-1",
            503,
            status(503, "ServiceUnavailable", "etcdserver: leader changed"),
        )
        .await;
        expect(
            &mut h,
            Method::GET,
            "/api/v1/namespaces/etl/pods/web-1",
            404,
            status(404, "NotFound", "pods \"web-1\" not found"),
        )
        .await;
    });
    let err = a.plan(&req).await.unwrap_err();
    assert!(err.retryable, "{err}");
    assert_eq!(
        err.message,
        "pod etl/web-1: etcdserver: leader changed (503)"
    );
    let err = a.plan(&req).await.unwrap_err();
    assert!(!err.retryable);
    assert_eq!(err.message, "pod etl/web-1: pods \"web-1\" not found (404)");
    server.await.unwrap();
}

#[tokio::test]
async fn losing_the_race_for_a_lapsed_lease_leaves_the_action_to_the_winner() {
    let (c, mut h) = client();
    let coord = remediate::coord::kubernetes::LeaseCoordinator::new(c, "remediate", "agent-b");
    let name = remediate::coord::claim_name("restart", "k");
    let path = format!("/apis/coordination.k8s.io/v1/namespaces/remediate/leases/{name}");
    let lapsed = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "remediate", "resourceVersion": "5"},
        "spec": {"holderIdentity": "agent-dead", "leaseDurationSeconds": 60, "renewTime": "2026-11-25T10:00:00.000000Z"}});
    let won = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "remediate", "resourceVersion": "6"},
        "spec": {"holderIdentity": "agent-a", "leaseDurationSeconds": 300, "renewTime": "2026-11-25T12:00:00.000000Z"}});
    let server = tokio::spawn({
        let path = path.clone();
        async move {
            expect(&mut h, Method::GET, &path, 200, lapsed).await;
            let sent = expect(&mut h, Method::PATCH, &path, 409,
                status(409, "Conflict", "Operation cannot be fulfilled on leases.coordination.k8s.io: the object has been modified")).await;
            assert_eq!(
                sent["metadata"]["resourceVersion"], "5",
                "the takeover is conditional on the version read"
            );
            assert_eq!(sent["spec"]["holderIdentity"], "agent-b");
            assert_eq!(sent["spec"]["leaseDurationSeconds"], 300);
            expect(&mut h, Method::GET, &path, 200, won).await;
        }
    });
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-25T12:00:01Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let refusal = coord
        .claim(&ClaimRequest {
            policy: "default",
            limits: &[],
            cooldown: None,
            breaker: None,
            playbook: "restart",
            target_key: "k",
            ttl: std::time::Duration::from_secs(300),
            now,
        })
        .await
        .unwrap_err();
    server.await.unwrap();
    match refusal {
        Refusal::Held { holder, until } => {
            assert_eq!(holder, "agent-a");
            assert_eq!(until.to_rfc3339(), "2026-11-25T12:05:00+00:00");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_forbidden_request_names_the_verb_and_resource_the_role_lacks() {
    let (c, mut h) = client();
    let a = action(c, "kubernetes.pod.restart");
    let req = request(
        "kubernetes.pod",
        json!({"mode": "delete", "allowBarePods": false, "gracePeriodSeconds": 5}),
    );
    let server = tokio::spawn(async move {
        expect(&mut h, Method::GET, "/api/v1/namespaces/etl/pods/web-1", 403,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "pods \"web-1\" is forbidden: User \"system:serviceaccount:remediate:remediate\" cannot get resource \"pods\" in API group \"\" in the namespace \"etl\"",
                "reason": "Forbidden", "details": {"name": "web-1", "kind": "pods"}, "code": 403})).await;
    });
    let err = a.plan(&req).await.unwrap_err();
    server.await.unwrap();
    assert!(!err.retryable);
    assert!(
        err.message.starts_with("pod etl/web-1: forbidden: the agent's role lacks get on pods in namespace etl; grant it to the agent's service account"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn a_rollout_past_its_progress_deadline_fails_verification_with_the_conditions_message() {
    let (c, mut h) = client();
    let a = action(c, "kubernetes.workload.rollout-restart");
    let plan = remediate::drivers::Plan {
        summary: String::new(),
        details: json!({"kind": "Deployment", "namespace": "etl", "name": "web", "appliedGeneration": 4}),
    };
    let req = request("kubernetes.workload", json!({}));
    let server = tokio::spawn(async move {
        expect(&mut h, Method::GET, "/apis/apps/v1/namespaces/etl/deployments/web", 200,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "etl", "generation": 4},
                "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": {}},
                "status": {"observedGeneration": 4, "replicas": 4, "updatedReplicas": 1, "readyReplicas": 3,
                    "availableReplicas": 3, "unavailableReplicas": 1,
                    "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                        "message": "ReplicaSet \"web-6f7\" has timed out progressing."}]}})).await;
    });
    let v = a.verify(&req, &plan).await.unwrap();
    server.await.unwrap();
    assert_eq!(
        v,
        remediate::drivers::Verdict::Failed(
            "rollout of deployment etl/web: ProgressDeadlineExceeded: ReplicaSet \"web-6f7\" has timed out progressing.".into()
        )
    );
}

#[tokio::test]
async fn a_log_read_that_never_answers_is_evidence_unavailable_and_the_plan_goes_on() {
    let (c, mut h) = client();
    let a = action(c, "kubernetes.pod.restart");
    let req = request(
        "kubernetes.pod",
        json!({"mode": "delete", "allowBarePods": false, "gracePeriodSeconds": 5}),
    );
    let mut crashed = pod();
    crashed["spec"] = json!({"containers": [{"name": "app", "image": "app:1"}]});
    crashed["status"]["containerStatuses"] = json!([{"name": "app", "ready": false, "restartCount": 4,
        "image": "app:1", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"reason": "Error", "exitCode": 1, "containerID": "containerd://c4"}}}]);
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        expect(
            &mut h,
            Method::GET,
            "/api/v1/namespaces/etl/pods/web-1",
            200,
            crashed.clone(),
        )
        .await;
        expect(
            &mut h,
            Method::GET,
            "/apis/apps/v1/namespaces/etl/statefulsets/web",
            200,
            statefulset(2),
        )
        .await;
        expect(
            &mut h,
            Method::GET,
            "/api/v1/namespaces/etl/pods",
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [crashed]}),
        )
        .await;
        // The log and the Events are asked for together: the Events are
        // answered, the log never (its response is held until the plan is done).
        let mut held = None;
        for _ in 0..2 {
            let (r, send) = h.next_request().await.expect("a request");
            match r.uri().path() {
                "/api/v1/namespaces/etl/pods/web-1/log" => {
                    let q = r.uri().query().unwrap_or_default().to_string();
                    assert!(
                        q.contains("container=app")
                            && q.contains("previous=true")
                            && q.contains("tailLines=20"),
                        "{q}"
                    );
                    held = Some(send);
                }
                "/api/v1/namespaces/etl/events" => {
                    let q = r.uri().query().unwrap_or_default().to_string();
                    assert!(
                        q.contains(
                            "fieldSelector=involvedObject.name%3Dweb-1%2CinvolvedObject.uid%3Du-1"
                        ),
                        "{q}"
                    );
                    send.send_response(Response::builder().status(200)
                        .header("content-type", "application/json")
                        .body(Full::new(axum::body::Bytes::from(serde_json::to_vec(&json!({
                            "apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": [
                                {"metadata": {"name": "e1", "namespace": "etl"}, "involvedObject": {"name": "web-1", "uid": "u-1"},
                                 "reason": "BackOff", "message": "Back-off restarting failed container app", "type": "Warning", "count": 3}]
                        })).unwrap()))).unwrap());
                }
                other => panic!("unexpected {other}"),
            }
        }
        let _ = held_rx.await;
        drop(held);
    });
    let plan = a.plan(&req).await.unwrap();
    let _ = held_tx.send(());
    server.await.unwrap();
    let ev = &plan.details["evidence"];
    assert_eq!(
        ev["previous container log"], "unavailable: no answer within 3s",
        "{ev:#}"
    );
    assert_eq!(
        ev["events"], "Warning BackOff: Back-off restarting failed container app (x3)",
        "{ev:#}"
    );
    assert_eq!(ev["last termination"], "Error, exit code 1", "{ev:#}");
    assert_eq!(ev["restarts"], 4, "{ev:#}");
    assert_eq!(ev["owner"], "StatefulSet etl/web: 2/3 ready", "{ev:#}");
}
