//! The agent's runtime in process, with an in-process driver whose apply
//! takes as long as the test says: cron ticks, overlap, catch-up, the
//! concurrency slot, graceful shutdown and notifications that fail. The HTTP
//! path is the real one (a loopback listener); real backends are tested in
//! their own suites.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use remediate::audit::{self, Phase, Record};
use remediate::config::AgentConfig;
use remediate::drivers::{Action, DriverError, Outcome, Plan, Registry, Request, Scope, Verdict};
use remediate::event::TriggerKind;
use remediate::pipeline::Agent;
use remediate::server;

use common::{alert_body, count, eventually, TOKEN};

/// Restarts nothing; apply takes `apply_for`.
struct SlowRestart {
    apply_for: Duration,
    applied: AtomicUsize,
    /// Apply fails (after `apply_for`).
    fail: bool,
}

#[async_trait]
impl Action for SlowRestart {
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
        tokio::time::sleep(self.apply_for).await;
        if self.fail {
            return Err(DriverError::permanent(
                "eviction refused: pod is not owned by a controller",
            ));
        }
        self.applied.fetch_add(1, Ordering::SeqCst);
        Ok(Outcome {
            summary: "evicted".into(),
            details: serde_json::json!({}),
        })
    }
    async fn verify(&self, _: &Request, _: &Plan) -> Result<Verdict, DriverError> {
        Ok(Verdict::Verified("replacement Running and Ready".into()))
    }
}

const ALERT_PLAYBOOK: &str = r#"apiVersion: remediate/v1
kind: Playbook
metadata: { name: crashloop, runbook: "https://runbooks.example/crashloop" }
spec:
  triggers: [{ alert: ['alertname="KubePodCrashLooping"'] }]
  target: { kind: kubernetes.pod, namespace: "{{ labels.namespace }}", name: "{{ labels.pod }}" }
  steps:
    - action: kubernetes.pod.restart
      timeout: 2m
  verify: { timeout: 10s }
"#;

const SCHEDULE_PLAYBOOK: &str = r#"apiVersion: remediate/v1
kind: Playbook
metadata: { name: every-second }
spec:
  triggers: [{ schedule: "* * * * * *" }]
  values: { pod: { default: batch-0 } }
  target: { kind: kubernetes.pod, namespace: batch, name: "{{ values.pod }}" }
  steps:
    - action: kubernetes.pod.restart
      timeout: 2m
  verify: { timeout: 10s }
"#;

const HOURLY_PLAYBOOK: &str = r#"apiVersion: remediate/v1
kind: Playbook
metadata: { name: hourly }
spec:
  triggers: [{ schedule: "0 0 * * * *" }]
  target: { kind: kubernetes.pod, namespace: batch, name: hourly-0 }
  steps:
    - action: kubernetes.pod.restart
  verify: { timeout: 10s }
"#;

/// No limits but the scope defaults: these tests are about the runtime.
const POLICY: &str =
    "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec: {}\n";

struct Setup {
    dir: tempfile::TempDir,
    driver: Arc<SlowRestart>,
}

fn setup(playbooks: &[(&str, &str)], apply_for: Duration) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("playbooks")).unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    for (name, text) in playbooks {
        std::fs::write(dir.path().join("playbooks").join(name), text).unwrap();
    }
    std::fs::write(dir.path().join("policies/default.yaml"), POLICY).unwrap();
    Setup {
        dir,
        driver: Arc::new(SlowRestart {
            apply_for,
            applied: AtomicUsize::new(0),
            fail: false,
        }),
    }
}

struct Running {
    addr: String,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    audit: std::path::PathBuf,
}

impl Running {
    fn audit(&self) -> Vec<Record> {
        audit::read(&self.audit).unwrap().records
    }
    async fn post(&self, body: Vec<u8>) {
        let r = reqwest::Client::new()
            .post(format!("http://{}/webhook/alertmanager", self.addr))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("agent stops")
            .unwrap()
            .unwrap();
    }
}

async fn start(s: &Setup, extra: &str) -> Running {
    let yaml = format!(
        "listen: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nauth: {{ tokenEnv: AGENT_RUNTIME_TEST_TOKEN_UNSET }}\n{extra}"
    );
    let mut cfg = AgentConfig::parse(&s.dir.path().join("agent.yaml"), &yaml).unwrap();
    cfg.auth.allow_unauthenticated = false;
    // The token comes from a file so tests do not share process env.
    let token_file = s.dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    cfg.auth.token_file = Some(token_file);
    let audit = cfg.audit_path();
    let mut reg = Registry::new();
    reg.register(s.driver.clone()).unwrap();
    let agent = Agent::prepare_with(cfg, "node-a".into(), reg, Duration::from_millis(20)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(server::serve(agent, listener, rx));
    Running {
        addr,
        stop,
        task,
        audit,
    }
}

fn crashloop(pod: &str, status: &str) -> Vec<u8> {
    alert_body(
        status,
        &[
            ("alertname", "KubePodCrashLooping"),
            ("namespace", "etl"),
            ("pod", pod),
        ],
        "2026-11-25T11:00:00Z",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_ticks_run_on_time_and_an_overlapping_tick_is_skipped_and_audited() {
    // Ticks every second; each run takes 2.5 s, so ticks land on a running playbook.
    let s = setup(
        &[("every-second.yaml", SCHEDULE_PLAYBOOK)],
        Duration::from_millis(2500),
    );
    let a = start(&s, "schedule: { jitter: 0s }\n").await;
    let audit = a.audit.clone();
    let done = eventually(Duration::from_secs(15), || {
        let recs = audit::read(&audit).unwrap().records;
        let verified = count(&recs, |r| r.phase == Phase::Verified);
        let skipped = count(&recs, |r| {
            r.decision == "suppressed"
                && r.reason
                    .contains("previous run of this playbook is still in progress")
        });
        (verified >= 1 && skipped >= 1).then_some(recs)
    })
    .await;
    a.stop().await;
    let recs = done.expect("a verified scheduled run and a skipped overlapping tick");
    assert!(recs.iter().all(|r| r.trigger.kind == TriggerKind::Schedule));
    assert!(recs.iter().all(|r| r.playbook == "every-second"));
    // Never two runs of the playbook at once: between a planned execute and its
    // verified record, no other execute starts.
    let mut open = 0i32;
    for r in recs.iter().filter(|r| r.decision == "execute") {
        match r.phase {
            Phase::Planned => {
                open += 1;
                assert!(open <= 1, "overlapping runs of one scheduled playbook");
            }
            Phase::Verified | Phase::Failed => open -= 1,
            Phase::Applied | Phase::Resolved | Phase::Unresolved => {}
        }
    }
    // Every skipped tick names its reason and the playbook's target.
    for r in recs.iter().filter(|r| r.decision == "suppressed") {
        assert_eq!(r.target["name"], "batch-0");
        assert_eq!(r.phase, Phase::Planned);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_missed_while_down_is_caught_up_once_on_start_and_not_with_catch_up_zero() {
    for (catch_up, expect) in [(1usize, 1usize), (0, 0)] {
        let s = setup(&[("hourly.yaml", HOURLY_PLAYBOOK)], Duration::ZERO);
        // The last run was 5 hours ago: 4 or 5 hourly ticks were missed.
        let state = s.dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let last = chrono::Utc::now() - chrono::Duration::hours(5);
        let rec = Record {
            ts: last,
            id: "seed".into(),
            trigger: std::sync::Arc::new(audit::TriggerRef {
                kind: TriggerKind::Schedule,
                alertname: None,
                fingerprint: "seed".into(),
                status: remediate::event::Status::Firing,
                labels: Default::default(),
                annotations: Default::default(),
                values: Default::default(),
                starts_at: None,
            }),
            playbook: "hourly".into(),
            action: "kubernetes.pod.restart".into(),
            target: [
                ("kind", "kubernetes.pod"),
                ("namespace", "batch"),
                ("name", "hourly-0"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            params: serde_json::json!({}),
            decision: "execute".into(),
            reason: String::new(),
            dry_run: false,
            phase: Phase::Verified,
            outcome: "seeded".into(),
            duration_ms: 0,
            node: "node-a".into(),
            policy: "default".into(),
            step: 0,
            decided_at: None,
            evidence: Default::default(),
        };
        audit::Writer::open(&state.join("audit.jsonl"))
            .unwrap()
            .append(&rec)
            .unwrap();
        let a = start(
            &s,
            &format!("schedule: {{ jitter: 0s, catchUp: {catch_up} }}\n"),
        )
        .await;
        // Give a catch-up time to run; the next real tick is up to an hour away.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let recs = a.audit();
        a.stop().await;
        let runs = count(&recs, |r| {
            r.id != "seed" && r.phase == Phase::Verified && r.playbook == "hourly"
        });
        assert_eq!(runs, expect, "catchUp {catch_up}: {recs:#?}");
        assert_eq!(s.driver.applied.load(Ordering::SeqCst), expect);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_short_action_finish_and_records_one_that_outlives_the_grace_as_interrupted(
) {
    // Finishes within the grace period: verified, nothing interrupted.
    let s = setup(
        &[("crashloop.yaml", ALERT_PLAYBOOK)],
        Duration::from_millis(700),
    );
    let a = start(&s, "shutdownGrace: 5s\n").await;
    a.post(crashloop("short-1", "firing")).await;
    let audit = a.audit.clone();
    eventually(Duration::from_secs(5), || {
        let recs = audit::read(&audit).unwrap().records;
        (count(&recs, |r| {
            r.phase == Phase::Planned && r.decision == "execute"
        }) == 1)
            .then_some(())
    })
    .await
    .expect("run started");
    a.stop().await;
    let recs = audit::read(&audit).unwrap().records;
    assert_eq!(count(&recs, |r| r.phase == Phase::Verified), 1, "{recs:#?}");
    assert_eq!(count(&recs, |r| r.outcome.starts_with("interrupted")), 0);

    // Outlives the grace period: interrupted, and the record says so.
    let s = setup(
        &[("crashloop.yaml", ALERT_PLAYBOOK)],
        Duration::from_secs(60),
    );
    let a = start(&s, "shutdownGrace: 300ms\n").await;
    a.post(crashloop("long-1", "firing")).await;
    let audit = a.audit.clone();
    eventually(Duration::from_secs(5), || {
        let recs = audit::read(&audit).unwrap().records;
        (count(&recs, |r| {
            r.phase == Phase::Planned && r.decision == "execute"
        }) == 1)
            .then_some(())
    })
    .await
    .expect("run started");
    let t = std::time::Instant::now();
    a.stop().await;
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stop waited {:?}",
        t.elapsed()
    );
    let recs = audit::read(&audit).unwrap().records;
    let failed: Vec<&Record> = recs.iter().filter(|r| r.phase == Phase::Failed).collect();
    assert_eq!(failed.len(), 1, "{recs:#?}");
    assert!(
        failed[0]
            .outcome
            .starts_with("interrupted: the agent stopped"),
        "{}",
        failed[0].outcome
    );
    assert_eq!(failed[0].target["name"], "long-1");
    assert_eq!(s.driver.applied.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_alert_cancels_a_run_waiting_for_a_concurrency_slot() {
    let s = setup(
        &[("crashloop.yaml", ALERT_PLAYBOOK)],
        Duration::from_millis(1500),
    );
    let a = start(&s, "concurrency: 1\n").await;
    a.post(crashloop("first", "firing")).await;
    a.post(crashloop("second", "firing")).await;
    // `second` waits for the slot `first` holds; its alert resolves meanwhile.
    a.post(crashloop("second", "resolved")).await;
    let audit = a.audit.clone();
    let recs = eventually(Duration::from_secs(10), || {
        let recs = audit::read(&audit).unwrap().records;
        (count(&recs, |r| {
            r.target.get("name").map(String::as_str) == Some("second")
                && r.reason.contains("cancelled")
        }) == 1
            && count(&recs, |r| r.phase == Phase::Verified) == 1)
            .then_some(recs)
    })
    .await;
    a.stop().await;
    let recs = recs.expect("second cancelled, first verified");
    assert_eq!(s.driver.applied.load(Ordering::SeqCst), 1);
    let second: Vec<&Record> = recs
        .iter()
        .filter(|r| {
            r.target.get("name").map(String::as_str) == Some("second")
                && r.trigger.status == remediate::event::Status::Firing
        })
        .collect();
    assert_eq!(second.len(), 1, "{second:#?}");
    assert_eq!(second[0].decision, "suppressed");
    assert!(second[0]
        .reason
        .contains("while the run waited for a concurrency slot"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_sink_that_hangs_never_delays_the_action_and_its_failure_is_audited() {
    // A receiver that accepts connections and never answers.
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = sink.accept().await {
            held.push(sock);
        }
    });
    let s = setup(
        &[("crashloop.yaml", ALERT_PLAYBOOK)],
        Duration::from_millis(50),
    );
    // One slot: if a notification held it, the second run would wait for
    // the sink's two 1 s attempts.
    let a = start(
        &s,
        &format!(
            "concurrency: 1\nnotify:\n  - {{ name: stuck, kind: webhook, url: \"http://{sink_addr}/hook\", timeout: 1s, attempts: 2 }}\n"
        ),
    )
    .await;
    let t0 = chrono::Utc::now();
    a.post(crashloop("n-1", "firing")).await;
    a.post(crashloop("n-2", "firing")).await;
    let audit = a.audit.clone();
    let recs = eventually(Duration::from_secs(15), || {
        let recs = audit::read(&audit).unwrap().records;
        (count(&recs, |r| r.decision == "notify") == 2).then_some(recs)
    })
    .await;
    let metrics = reqwest::get(format!("http://{}/metrics", a.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    a.stop().await;
    for series in [
        "remediate_action_duration_seconds_count{action=\"kubernetes.pod.restart\"} 2",
        "remediate_notifications_total{sink=\"stuck\",result=\"failure\"} 2",
        "remediate_decisions_total{playbook=\"crashloop\",action=\"kubernetes.pod.restart\",decision=\"execute\"} 2",
        "remediate_runs_in_flight 0",
    ] {
        assert!(metrics.contains(series), "missing {series:?} in:\n{metrics}");
    }
    hold.abort();
    let recs = recs.expect("both failed notifications are audited");
    let verified: Vec<&Record> = recs.iter().filter(|r| r.phase == Phase::Verified).collect();
    assert_eq!(verified.len(), 2, "{recs:#?}");
    let first_notify_failure = recs
        .iter()
        .filter(|r| r.decision == "notify")
        .map(|r| r.ts)
        .min()
        .unwrap();
    // Both actions were done before the first notification even gave up.
    for v in &verified {
        assert!(
            v.ts < first_notify_failure,
            "{} verified at {} after a notification failed at {first_notify_failure}",
            v.target["name"],
            v.ts
        );
    }
    for n in recs.iter().filter(|r| r.decision == "notify") {
        assert_eq!(n.phase, Phase::Failed);
        assert_eq!(n.action, "notify:stuck");
        assert!(n.outcome.contains("after 2 attempt(s)"), "{}", n.outcome);
        assert!(
            !n.outcome.contains(&sink_addr.to_string()),
            "the sink URL is a secret: {}",
            n.outcome
        );
    }
    // A notification failure is not an action failure: the breaker does not count it.
    let ledger = audit::ledger_from(&recs);
    assert_eq!(
        ledger.failures_since("default", "crashloop", t0 - chrono::Duration::hours(1)),
        0
    );
}

const STORM_POLICY: &str = "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec:\n  cooldown: 1h\n  rateLimits:\n    - { scope: global, max: 1000, per: 1h }\n    - { scope: playbook, max: 250, per: 1h }\n    - { scope: target, max: 1, per: 1h }\n";

/// Bodies of 100 alerts each, over `targets` pods, every alert its own episode.
fn storm_bodies(total: usize, targets: usize) -> Vec<Vec<u8>> {
    let template: serde_json::Value =
        serde_json::from_slice(&common::fixture("crashloop-firing.json")).unwrap();
    let alert = template["alerts"][0].clone();
    (0..total)
        .collect::<Vec<_>>()
        .chunks(100)
        .map(|chunk| {
            let mut body = template.clone();
            body["alerts"] = chunk
                .iter()
                .map(|i| {
                    let mut a = alert.clone();
                    a["labels"]["pod"] = serde_json::json!(format!("storm-{}", i % targets));
                    a["startsAt"] = serde_json::json!(format!(
                        "2026-11-25T10:{:02}:{:02}.{:03}Z",
                        (i / 60_000) % 60,
                        (i / 1000) % 60,
                        i % 1000
                    ));
                    a["fingerprint"] = serde_json::json!("");
                    a
                })
                .collect();
            serde_json::to_vec(&body).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_10000_alerts_over_300_targets_executes_exactly_what_the_policy_allows() {
    let s = setup(&[("crashloop.yaml", ALERT_PLAYBOOK)], Duration::ZERO);
    std::fs::write(s.dir.path().join("policies/default.yaml"), STORM_POLICY).unwrap();
    // A small audit file, so the storm rotates it and the rebuild spans files.
    // Every alert is its own episode (distinct startsAt): no HA tolerance.
    let extra =
        "concurrency: 8\naudit: { maxBytes: 1Mi, keep: 50 }\nwebhook: { dedupeTolerance: 0s }\n";
    let a = start(&s, extra).await;
    let bodies = storm_bodies(10_000, 300);
    let client = reqwest::Client::new();
    let url = format!("http://{}/webhook/alertmanager", a.addr);
    let next = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(bodies);
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, url, next, bodies) =
            (client.clone(), url.clone(), next.clone(), bodies.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(b) = bodies.get(i) else { break };
                let r = client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .body(b.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let v: serde_json::Value = r.json().await.unwrap();
                assert_eq!(v["accepted"], 100, "{v}");
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let audit_path = a.audit.clone();
    let recs = eventually(Duration::from_secs(60), || {
        let recs = audit::read_all(&audit_path).unwrap().records;
        let decided = count(&recs, |r| r.phase == Phase::Planned);
        let verified = count(&recs, |r| r.phase == Phase::Verified);
        (decided == 10_000 && verified == 250).then_some(recs)
    })
    .await;
    let recs = recs.unwrap_or_else(|| {
        let recs = audit::read_all(&audit_path).unwrap().records;
        panic!(
            "not settled: {} decided, {} verified",
            count(&recs, |r| r.phase == Phase::Planned),
            count(&recs, |r| r.phase == Phase::Verified)
        )
    });
    assert!(
        s.dir.path().join("state/audit.jsonl.1").exists(),
        "the storm rotated the audit"
    );
    // Exactly the playbook limit executed: 250 of 300 targets, once each.
    assert_eq!(s.driver.applied.load(Ordering::SeqCst), 250);
    assert_eq!(
        count(&recs, |r| r.phase == Phase::Planned
            && r.decision == "execute"),
        250
    );
    let mut executed: Vec<&str> = recs
        .iter()
        .filter(|r| r.phase == Phase::Planned && r.decision == "execute")
        .map(|r| r.target["name"].as_str())
        .collect();
    executed.sort_unstable();
    executed.dedup();
    assert_eq!(executed.len(), 250, "no target twice");
    // Every other event has its record, and says which rule held it.
    let suppressed: Vec<&Record> = recs.iter().filter(|r| r.decision == "suppressed").collect();
    assert_eq!(suppressed.len(), 9_750);
    for r in &suppressed {
        assert!(
            r.reason.starts_with("rate-limit playbook 250/1h")
                || r.reason.starts_with("cooldown 1h")
                || r.reason.starts_with("rate-limit target 1/1h"),
            "{}",
            r.reason
        );
        assert!(r.reason.contains("allows again at"), "{}", r.reason);
    }
    a.stop().await;

    // After a restart the limits are rebuilt from the rotated files: a new
    // target is still held by the playbook limit.
    let a = start(&s, extra).await;
    a.post(crashloop("after-restart", "firing")).await;
    let audit_path = a.audit.clone();
    let held = eventually(Duration::from_secs(10), || {
        audit::read_all(&audit_path)
            .unwrap()
            .records
            .into_iter()
            .find(|r| r.target.get("name").map(String::as_str) == Some("after-restart"))
    })
    .await
    .expect("decided");
    a.stop().await;
    assert_eq!(held.decision, "suppressed");
    assert!(
        held.reason.starts_with("rate-limit playbook 250/1h"),
        "{}",
        held.reason
    );
    assert_eq!(s.driver.applied.load(Ordering::SeqCst), 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_open_the_breaker_which_suppresses_and_escalates_once() {
    use axum::routing::post;
    let got: Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: axum::body::Bytes| {
            let g = g.clone();
            async move {
                g.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or_default());
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });

    let mut s = setup(&[("crashloop.yaml", ALERT_PLAYBOOK)], Duration::ZERO);
    s.driver = Arc::new(SlowRestart {
        apply_for: Duration::ZERO,
        applied: AtomicUsize::new(0),
        fail: true,
    });
    std::fs::write(
        s.dir.path().join("policies/default.yaml"),
        "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec:\n  circuitBreaker: { failures: 2, within: 1h, openFor: 1h }\n",
    )
    .unwrap();
    let a = start(
        &s,
        &format!("concurrency: 1\nnotify:\n  - {{ name: ops, kind: webhook, url: \"{hook}\", on: [] }}\n"),
    )
    .await;
    let audit = a.audit.clone();
    // One at a time: each run ends (fails, or is suppressed) before the next alert.
    for pod in ["b-1", "b-2", "b-3", "b-4"] {
        a.post(crashloop(pod, "firing")).await;
        eventually(Duration::from_secs(10), || {
            audit::read(&audit).unwrap().records.into_iter().find(|r| {
                r.target.get("name").map(String::as_str) == Some(pod)
                    && (r.phase == Phase::Failed || r.decision == "suppressed")
            })
        })
        .await
        .unwrap_or_else(|| panic!("{pod} not decided"));
    }
    let recs = eventually(Duration::from_secs(10), || {
        let recs = audit::read(&audit).unwrap().records;
        (count(&recs, |r| r.phase == Phase::Failed) == 2
            && count(&recs, |r| r.reason.starts_with("circuit open")) == 2)
            .then_some(recs)
    })
    .await
    .unwrap_or_else(|| panic!("{:#?}", audit::read(&a.audit).unwrap().records));
    // Give a would-be second escalation time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.stop().await;
    let open = recs
        .iter()
        .find(|r| r.reason.starts_with("circuit open"))
        .unwrap();
    assert!(
        open.reason.contains("2 failures of crashloop within 1h"),
        "{}",
        open.reason
    );
    assert!(open.reason.contains("half-opens at"), "{}", open.reason);
    let got = got.lock().unwrap().clone();
    let escalations: Vec<&serde_json::Value> = got
        .iter()
        .filter(|n| n["decision"] == "circuit-open")
        .collect();
    assert_eq!(escalations.len(), 1, "{got:#?}");
    assert!(escalations[0]["outcome"]
        .as_str()
        .unwrap()
        .starts_with("circuit breaker opened at"));
    // The two failed runs were announced too (failures always are).
    assert_eq!(
        got.iter()
            .filter(|n| n["status"] == "failed" && n["decision"] == "execute")
            .count(),
        2
    );
}
