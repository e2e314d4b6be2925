//! The engine's execute path (plan, apply, verify, timeouts, audit order)
//! with an in-process driver: these tests check the engine's contract with
//! any driver, so the driver here only counts calls and returns what each
//! test asks for. Real backends are tested in their own suites.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use remediate::audit::{self, Phase};
use remediate::drivers::{Action, DriverError, Outcome, Plan, Registry, Request, Scope, Verdict};
use remediate::engine::{Engine, RunStatus};
use remediate::playbook::load::{Config, Source};
use remediate::policy::Ledger;
use remediate::trigger::alertmanager::Payload;

#[derive(Clone, Copy)]
enum Behaviour {
    Works,
    ApplyFails,
    NeverVerifies,
    VerifyFails,
    ApplyHangs,
}

struct Restart {
    behaviour: Behaviour,
    applied: AtomicUsize,
    verified: AtomicUsize,
}

#[async_trait]
impl Action for Restart {
    fn name(&self) -> &'static str {
        "kubernetes.pod.restart"
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        Ok(Plan {
            summary: format!("evict {}", req.target["name"]),
            details: serde_json::json!({}),
        })
    }
    async fn apply(&self, _: &Request, _: &Plan) -> Result<Outcome, DriverError> {
        match self.behaviour {
            Behaviour::ApplyFails => Err(DriverError::retryable(
                "eviction refused: 429 PodDisruptionBudget",
            )),
            Behaviour::ApplyHangs => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                unreachable!()
            }
            _ => {
                self.applied.fetch_add(1, Ordering::SeqCst);
                Ok(Outcome {
                    summary: "evicted".into(),
                    details: serde_json::json!({}),
                })
            }
        }
    }
    async fn verify(&self, _: &Request, _: &Plan) -> Result<Verdict, DriverError> {
        let n = self.verified.fetch_add(1, Ordering::SeqCst);
        Ok(match self.behaviour {
            Behaviour::NeverVerifies => Verdict::Pending("replacement not Ready".into()),
            Behaviour::VerifyFails => Verdict::Failed("replacement crash-looping".into()),
            _ if n == 0 => Verdict::Pending("replacement starting".into()),
            _ => Verdict::Verified("replacement Running and Ready".into()),
        })
    }
}

const PLAYBOOK: &str = r#"apiVersion: remediate/v1
kind: Playbook
metadata: { name: crashloop }
spec:
  triggers: [{ alert: ['alertname="KubePodCrashLooping"'] }]
  target: { kind: kubernetes.pod, namespace: "{{ labels.namespace }}", name: "{{ labels.pod }}" }
  steps:
    - action: kubernetes.pod.restart
      timeout: 1s
  verify: { timeout: 1s }
"#;

const POLICY: &str = "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec: { cooldown: 10m }\n";

fn engine(b: Behaviour) -> (Engine, Arc<Restart>) {
    let cfg = Config::load(
        &[Source {
            path: "pb.yaml".into(),
            text: PLAYBOOK.into(),
        }],
        &[Source {
            path: "default.yaml".into(),
            text: POLICY.into(),
        }],
    )
    .unwrap();
    let driver = Arc::new(Restart {
        behaviour: b,
        applied: AtomicUsize::new(0),
        verified: AtomicUsize::new(0),
    });
    let mut reg = Registry::new();
    reg.register(driver.clone()).unwrap();
    let mut e = Engine::new(cfg, reg, "node-a");
    e.verify_interval = Duration::from_millis(50);
    (e, driver)
}

async fn run_once(e: &Engine, dry: bool) -> (RunStatus, Vec<audit::Record>, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let w = std::sync::Mutex::new(audit::Writer::open(&path).unwrap());
    let mut ledger = Ledger::default();
    let ev = &Payload::parse(include_bytes!("../examples/alerts/crashloop-firing.json"))
        .unwrap()
        .events()[0];
    let planned = e.decide(ev, dry, chrono::Utc::now(), &mut ledger);
    assert_eq!(planned.len(), 1);
    let rep = e
        .execute(planned.into_iter().next().unwrap(), &w, &mut ledger)
        .await
        .unwrap();
    // What the engine reports is exactly what is on disk.
    assert_eq!(audit::read(&path).unwrap().records, rep.records);
    (rep.status, rep.records, ledger)
}

fn phases(r: &[audit::Record]) -> Vec<Phase> {
    r.iter().map(|r| r.phase).collect()
}

#[tokio::test]
async fn executed_action_is_audited_planned_applied_verified_after_polling() {
    let (e, d) = engine(Behaviour::Works);
    let (status, recs, _) = run_once(&e, false).await;
    assert_eq!(status, RunStatus::Verified);
    assert_eq!(
        phases(&recs),
        [Phase::Planned, Phase::Applied, Phase::Verified]
    );
    // The planned record carries what the driver found in its plan.
    assert_eq!(recs[0].outcome, "pending: evict spark-driver-1");
    assert_eq!(recs[2].outcome, "replacement Running and Ready");
    assert!(recs
        .iter()
        .all(|r| r.id == recs[0].id && r.node == "node-a" && !r.dry_run));
    assert_eq!(d.applied.load(Ordering::SeqCst), 1);
    assert_eq!(
        d.verified.load(Ordering::SeqCst),
        2,
        "pending once, then verified"
    );
}

#[tokio::test]
async fn dry_run_uses_the_drivers_plan_and_never_applies() {
    let (e, d) = engine(Behaviour::Works);
    let (status, recs, _) = run_once(&e, true).await;
    assert_eq!(status, RunStatus::NotExecuted);
    assert_eq!(phases(&recs), [Phase::Planned]);
    assert_eq!(recs[0].outcome, "would evict spark-driver-1");
    assert_eq!(d.applied.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn apply_error_is_audited_as_failed_with_its_retryability_and_counts_for_the_breaker() {
    let (e, _) = engine(Behaviour::ApplyFails);
    let (status, recs, ledger) = run_once(&e, false).await;
    assert!(
        matches!(status, RunStatus::Failed(ref m) if m.contains("429")),
        "{status:?}"
    );
    assert_eq!(phases(&recs), [Phase::Planned, Phase::Failed]);
    assert_eq!(
        recs[1].outcome,
        "apply failed (retryable): eviction refused: 429 PodDisruptionBudget"
    );
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(ledger.failures_since("default", "crashloop", since), 1);
}

#[tokio::test]
async fn hanging_apply_is_cut_off_by_the_step_timeout() {
    let (e, _) = engine(Behaviour::ApplyHangs);
    let started = std::time::Instant::now();
    let (status, recs, _) = run_once(&e, false).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(phases(&recs), [Phase::Planned, Phase::Failed]);
    assert_eq!(recs[1].outcome, "apply timed out after 1s");
    assert!(matches!(status, RunStatus::Failed(_)));
}

#[tokio::test]
async fn unverified_fix_fails_after_the_verify_timeout() {
    let (e, d) = engine(Behaviour::NeverVerifies);
    let (status, recs, _) = run_once(&e, false).await;
    assert_eq!(phases(&recs), [Phase::Planned, Phase::Failed]);
    assert!(
        recs[1]
            .outcome
            .starts_with("applied (evicted) but not verified within 1s: replacement not Ready"),
        "{}",
        recs[1].outcome
    );
    assert!(
        d.verified.load(Ordering::SeqCst) >= 2,
        "verify polled until the timeout"
    );
    assert!(matches!(status, RunStatus::Failed(_)));
}

#[tokio::test]
async fn failed_verification_stops_at_once() {
    let (e, d) = engine(Behaviour::VerifyFails);
    let (_, recs, _) = run_once(&e, false).await;
    assert_eq!(
        recs[1].outcome,
        "applied (evicted) but not verified: replacement crash-looping"
    );
    assert_eq!(d.verified.load(Ordering::SeqCst), 1);
}

#[test]
fn registry_refuses_actions_outside_the_catalogue() {
    struct Bogus;
    #[async_trait]
    impl Action for Bogus {
        fn name(&self) -> &'static str {
            "kubernetes.cluster.delete"
        }
        fn scope(&self, _: &Request) -> Scope {
            Scope::Cluster
        }
        async fn plan(&self, _: &Request) -> Result<Plan, DriverError> {
            Err(DriverError::permanent("no"))
        }
        async fn apply(&self, _: &Request, _: &Plan) -> Result<Outcome, DriverError> {
            Err(DriverError::permanent("no"))
        }
        async fn verify(&self, _: &Request, _: &Plan) -> Result<Verdict, DriverError> {
            Err(DriverError::permanent("no"))
        }
    }
    let err = Registry::new().register(Arc::new(Bogus)).unwrap_err();
    assert_eq!(
        err,
        "action \"kubernetes.cluster.delete\" is not in the catalogue"
    );
}

/// A restart driver that reports its workload in the plan, as the
/// Kubernetes driver must for `blastRadius.maxUnavailableFraction`.
struct WorkloadRestart {
    workload: Option<(u64, u64)>,
    applied: AtomicUsize,
}

#[async_trait]
impl Action for WorkloadRestart {
    fn name(&self) -> &'static str {
        "kubernetes.pod.restart"
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, _: &Request) -> Result<Plan, DriverError> {
        let details = match self.workload {
            Some((replicas, unavailable)) => serde_json::json!({
                "workload": {"name": "deployment etl/spark", "replicas": replicas, "unavailable": unavailable}
            }),
            None => serde_json::json!({}),
        };
        Ok(Plan {
            summary: "evict".into(),
            details,
        })
    }
    async fn apply(&self, _: &Request, _: &Plan) -> Result<Outcome, DriverError> {
        self.applied.fetch_add(1, Ordering::SeqCst);
        Ok(Outcome {
            summary: "evicted".into(),
            details: serde_json::json!({}),
        })
    }
    async fn verify(&self, _: &Request, _: &Plan) -> Result<Verdict, DriverError> {
        Ok(Verdict::Verified("ready".into()))
    }
}

async fn run_with_unavailable_limit(workload: Option<(u64, u64)>) -> (RunStatus, usize) {
    let cfg = Config::load(
        &[Source {
            path: "pb.yaml".into(),
            text: PLAYBOOK.into(),
        }],
        &[Source {
            path: "default.yaml".into(),
            text: "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec: { blastRadius: { maxUnavailableFraction: 0.25 } }\n".into(),
        }],
    )
    .unwrap();
    let driver = Arc::new(WorkloadRestart {
        workload,
        applied: AtomicUsize::new(0),
    });
    let mut reg = Registry::new();
    reg.register(driver.clone()).unwrap();
    let e = Engine::new(cfg, reg, "node-a");
    let (status, _, _) = run_once(&e, false).await;
    (status, driver.applied.load(Ordering::SeqCst))
}

#[tokio::test]
async fn max_unavailable_fraction_blocks_a_restart_that_would_exceed_it_and_fails_closed_without_replica_counts(
) {
    // 8 replicas, 1 down: one more is 25%, allowed.
    let (status, applied) = run_with_unavailable_limit(Some((8, 1))).await;
    assert_eq!(status, RunStatus::Verified);
    assert_eq!(applied, 1);
    // 4 replicas, 1 down: one more is 50%: blocked before apply.
    let (status, applied) = run_with_unavailable_limit(Some((4, 1))).await;
    assert_eq!(applied, 0);
    assert!(
        matches!(&status, RunStatus::Failed(m) if m.contains("1 of 4 replicas of deployment etl/spark are unavailable; restarting this available one would make 2 (50%), over policy default's blastRadius.maxUnavailableFraction 25%")),
        "{status:?}"
    );
    // The driver cannot tell: blocked (fail closed).
    let (status, applied) = run_with_unavailable_limit(None).await;
    assert_eq!(applied, 0);
    assert!(
        matches!(&status, RunStatus::Failed(m) if m.contains("cannot be checked (fail closed)")),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_node_scoped_step_for_another_node_is_left_to_that_nodes_agent_not_failed() {
    let pb = r#"apiVersion: remediate/v1
kind: Playbook
metadata: { name: rotate }
spec:
  triggers: [{ alert: ['alertname="DiskFull"'] }]
  target: { kind: host, node: "{{ labels.node }}" }
  steps: [{ action: host.command, with: { argv: ["true"] } }]
"#;
    let cfg = Config::load(
        &[Source {
            path: "pb.yaml".into(),
            text: pb.into(),
        }],
        &[Source {
            path: "default.yaml".into(),
            text: POLICY.into(),
        }],
    )
    .unwrap();
    let e = Engine::new(cfg, remediate::drivers::host::builtin("node-a"), "node-a");
    let dir = tempfile::tempdir().unwrap();
    let w = std::sync::Mutex::new(audit::Writer::open(&dir.path().join("a.jsonl")).unwrap());
    let mut ledger = Ledger::default();
    for (node, want) in [("node-b", "suppressed"), ("node-a", "execute")] {
        let labels: remediate::event::Labels = [("alertname", "DiskFull"), ("node", node)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let ev = remediate::event::Event {
            trigger: remediate::event::TriggerKind::Alert,
            status: remediate::event::Status::Firing,
            fingerprint: remediate::event::fingerprint(&labels),
            labels,
            annotations: Default::default(),
            values: Default::default(),
            starts_at: None,
            playbook: None,
        };
        let p = e
            .decide(&ev, false, chrono::Utc::now(), &mut ledger)
            .remove(0);
        let rep = e.execute(p, &w, &mut ledger).await.unwrap();
        assert_eq!(rep.records[0].decision, want, "{:#?}", rep.records);
        if want == "suppressed" {
            assert!(rep.records[0]
                .reason
                .contains("host.command runs on node node-b: that node's agent acts"));
            assert_eq!(
                rep.failed_at, None,
                "not a failure: the breaker does not count it"
            );
        } else {
            assert_eq!(rep.status, RunStatus::Verified);
        }
    }
}
