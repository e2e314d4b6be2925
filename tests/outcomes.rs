//! The outcome of every run, against the real agent process: a verified run
//! is watched until its alert resolves (`resolved`, with the time from the
//! alert's start, on `remediate_time_to_resolve_seconds`), or is
//! `unresolved` when the alert still fires `escalateAfter` later: a failure
//! for the circuit breaker and one escalation notice. A watch survives a
//! kill -9 and is ended once.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use remediate::audit::{Phase, Record};

use common::{alert_body, eventually, start_agent, AgentProc, TOKEN};

fn setup(escalate_after: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("playbooks")).unwrap();
    std::fs::create_dir_all(d.join("policies")).unwrap();
    let marker = d.join("ran.txt");
    std::fs::write(
        d.join("playbooks/fix.yaml"),
        format!(
            r#"apiVersion: remediate/v1
kind: Playbook
metadata: {{ name: fix }}
spec:
  triggers: [{{ alert: ['alertname="Broken"'] }}]
  target: {{ kind: host, node: outcome-node }}
  steps:
    - action: host.command
      with: {{ argv: [sh, -c, 'echo "$0" >> {}', "{{{{ labels.thing }}}}"] }}
      timeout: 20s
  verify: {{ timeout: 10s }}
  escalateAfter: {escalate_after}
"#,
            marker.display()
        ),
    )
    .unwrap();
    // One unresolved run opens the breaker; no cooldown, so each thing runs.
    std::fs::write(
        d.join("policies/default.yaml"),
        "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec:\n  cooldown: 0s\n  circuitBreaker: { failures: 1, within: 1h, openFor: 1h }\n",
    )
    .unwrap();
    (dir, marker)
}

fn config(extra: &str) -> String {
    format!("node: outcome-node\nlisten: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: {{ enabled: false }}\nwebhook: {{ settle: 0s }}\n{extra}")
}

fn broken(status: &str, thing: &str, starts: &str) -> Vec<u8> {
    alert_body(status, &[("alertname", "Broken"), ("thing", thing)], starts)
}

fn for_thing<'a>(recs: &'a [Record], thing: &str) -> Vec<&'a Record> {
    recs.iter()
        .filter(|r| r.trigger.labels.get("thing").map(String::as_str) == Some(thing))
        .collect()
}

/// Whether playbook `fix`'s `outcome` counter reaches 1 within 10 s: it is
/// counted once the record is durable, a moment after it is in the log.
async fn counted_once(a: &AgentProc, outcome: &str) -> bool {
    let name = format!("remediate_run_outcomes_total{{playbook=\"fix\",outcome=\"{outcome}\"}}");
    eventually(Duration::from_secs(10), || {
        (metric_now(a, &name) == Some(1.0)).then_some(())
    })
    .await
    .is_some()
}

async fn wait_phase(a: &AgentProc, thing: &str, phase: Phase) -> Record {
    eventually(Duration::from_secs(30), || {
        a.audit().into_iter().find(|r| {
            r.phase == phase && r.trigger.labels.get("thing").map(String::as_str) == Some(thing)
        })
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no {phase:?} record for {thing}; audit: {:#?}\nlog:\n{}",
            a.audit(),
            a.log_text()
        )
    })
}

fn ago(secs: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::seconds(secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn ran(marker: &Path) -> usize {
    std::fs::read_to_string(marker)
        .unwrap_or_default()
        .lines()
        .count()
}

#[tokio::test]
async fn a_resolved_alert_records_the_time_to_resolve_and_a_kill_does_not_lose_the_watch() {
    let (d, marker) = setup("1h");
    let cfg = config("");
    let a = start_agent(d.path(), &cfg);
    // The alert started two minutes ago; the fix runs and is verified.
    let starts = ago(120);
    assert_eq!(
        a.post(&broken("firing", "disk", &starts), Some(TOKEN))
            .await
            .0,
        200
    );
    wait_phase(&a, "disk", Phase::Verified).await;
    let watched = eventually(Duration::from_secs(10), || {
        let m = metric_now(&a, "remediate_runs_watched");
        (m == Some(1.0)).then_some(())
    })
    .await;
    assert!(watched.is_some(), "the verified run is watched");

    // kill -9: the watch is in the store, not only in memory.
    let mut a = a;
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(10));
    drop(a);
    let a = start_agent(d.path(), &cfg);
    assert_eq!(a.metric("remediate_runs_watched").await, Some(1.0));

    // Alertmanager's resolved notification ends it: resolved, once.
    assert_eq!(
        a.post(&broken("resolved", "disk", &starts), Some(TOKEN))
            .await
            .0,
        200
    );
    let rec = wait_phase(&a, "disk", Phase::Resolved).await;
    assert!(
        rec.duration_ms >= 120_000,
        "time to resolve counts from the alert's start: {} ms",
        rec.duration_ms
    );
    assert!(
        rec.outcome.contains("the alert resolved 2m"),
        "{}",
        rec.outcome
    );
    assert_eq!(rec.playbook, "fix");
    // A resend of the resolution changes nothing.
    assert_eq!(
        a.post(&broken("resolved", "disk", &starts), Some(TOKEN))
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let recs = a.audit();
    let ended: Vec<_> = for_thing(&recs, "disk")
        .into_iter()
        .filter(|r| matches!(r.phase, Phase::Resolved | Phase::Unresolved))
        .collect();
    assert_eq!(ended.len(), 1, "{ended:#?}");
    assert_eq!(a.metric("remediate_runs_watched").await, Some(0.0));
    assert!(
        counted_once(&a, "resolved").await,
        "the resolved outcome is counted on /metrics"
    );
    assert_eq!(
        a.metric("remediate_time_to_resolve_seconds_count{playbook=\"fix\"}")
            .await,
        Some(1.0)
    );
    let sum = a
        .metric("remediate_time_to_resolve_seconds_sum{playbook=\"fix\"}")
        .await
        .unwrap();
    assert!(sum >= 120.0, "{sum}");
    assert_eq!(ran(&marker), 1);

    // `remediate report` over the same audit says so.
    let audit = d.path().join("state/audit.jsonl");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_remediate"))
        .args(["report", "--since", "1h", "--output", "json", "--audit"])
        .arg(&audit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fix = &v["playbooks"][0];
    assert_eq!(fix["playbook"], "fix", "{v}");
    assert_eq!(
        (
            &fix["executed"],
            &fix["verified"],
            &fix["resolved"],
            &fix["unresolved"],
            &fix["failed"]
        ),
        (&1.into(), &1.into(), &1.into(), &0.into(), &0.into()),
        "{v}"
    );
    assert!(fix["timeToResolveP50"].as_f64().unwrap() >= 120.0, "{v}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_remediate"))
        .args(["report", "--audit"])
        .arg(&audit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("TTR p50"), "{text}");
    assert!(
        text.lines().any(|l| l.contains("fix") && l.contains(" 2m")),
        "{text}"
    );
    // A log that is not there is named, exit 2.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_remediate"))
        .args(["report", "--audit", "/nonexistent/audit.jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("/nonexistent/audit.jsonl: no audit log there"));
}

/// The metric from a synchronous poll (`eventually` takes a plain closure).
fn metric_now(a: &AgentProc, series: &str) -> Option<f64> {
    let url = a.url("/metrics");
    let text = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { reqwest::get(url).await.ok()?.text().await.ok() })
    })
    .join()
    .unwrap()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

async fn receiver() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    use axum::routing::post;
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: axum::body::Bytes| {
            let g = g.clone();
            async move {
                g.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or_default());
                axum::http::StatusCode::OK
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, got)
}

#[tokio::test]
async fn an_alert_still_firing_after_escalate_after_is_unresolved_escalated_and_opens_the_breaker()
{
    let (hook, got) = receiver().await;
    let (d, marker) = setup("2s");
    let a = start_agent(
        d.path(),
        &config(&format!(
            "notify:\n  - {{ name: oncall, kind: webhook, url: \"http://{hook}/hook\", on: [execute] }}\n"
        )),
    );
    let starts = ago(30);
    assert_eq!(
        a.post(&broken("firing", "cache", &starts), Some(TOKEN))
            .await
            .0,
        200
    );
    wait_phase(&a, "cache", Phase::Verified).await;
    let rec = wait_phase(&a, "cache", Phase::Unresolved).await;
    assert!(
        rec.outcome.contains("the fix did not help"),
        "{}",
        rec.outcome
    );
    assert!(
        counted_once(&a, "unresolved").await,
        "the unresolved outcome is counted on /metrics"
    );
    // One escalation reaches on-call, beside the run's own notice.
    let esc = eventually(Duration::from_secs(10), || {
        got.lock()
            .unwrap()
            .iter()
            .find(|v| v["decision"] == "unresolved")
            .cloned()
    })
    .await
    .unwrap_or_else(|| panic!("no escalation; got {:#?}", got.lock().unwrap()));
    assert_eq!(esc["playbook"], "fix");
    assert!(
        esc["outcome"].as_str().unwrap().contains("did not help"),
        "{esc}"
    );

    // The unresolved run counts as a failure: the breaker (1 failure) is open.
    assert_eq!(
        a.post(&broken("firing", "queue", &ago(5)), Some(TOKEN))
            .await
            .0,
        200
    );
    let next = eventually(Duration::from_secs(20), || {
        a.audit()
            .into_iter()
            .find(|r| r.trigger.labels.get("thing").map(String::as_str) == Some("queue"))
    })
    .await
    .expect("a decision for the next alert");
    assert_eq!(next.decision, "suppressed", "{next:#?}");
    assert!(next.reason.contains("circuit"), "{}", next.reason);
    let open = eventually(Duration::from_secs(10), || {
        (metric_now(
            &a,
            "remediate_circuit_breaker_state{policy=\"default\",playbook=\"fix\"}",
        ) == Some(1.0))
        .then_some(())
    })
    .await;
    assert!(open.is_some(), "the breaker's state is on /metrics as open");
    // A late resolution of the escalated alert records nothing more.
    assert_eq!(
        a.post(&broken("resolved", "cache", &starts), Some(TOKEN))
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let recs = a.audit();
    assert_eq!(
        for_thing(&recs, "cache")
            .iter()
            .filter(|r| matches!(r.phase, Phase::Resolved | Phase::Unresolved))
            .count(),
        1
    );
    assert_eq!(ran(&marker), 1, "only the first alert ran");
}
