//! Grafana Unified Alerting's webhook contact point posted straight to the
//! agent (`POST /webhook/grafana`): its alerts are decided and run like
//! Alertmanager's, the query values reach the playbook's `values.*`, the
//! contact point's test notification is audited as a test and runs
//! nothing, and bad bodies and tokens are refused. Payloads are built from
//! Grafana's documented webhook format (Grafana cannot run here).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{alert_body, eventually, fixture, start_agent, AgentProc, TOKEN};

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("playbooks")).unwrap();
    std::fs::create_dir_all(d.join("policies")).unwrap();
    let marker = d.join("ran.txt");
    std::fs::write(
        d.join("playbooks/pg.yaml"),
        format!(
            r#"apiVersion: remediate/v1
kind: Playbook
metadata: {{ name: pg-connections }}
spec:
  triggers: [{{ alert: ['alertname="PostgresTooManyConnections"'] }}]
  values:
    B: {{ description: "connections in use (Grafana's query B)", default: none }}
  target: {{ kind: host, node: grafana-node }}
  steps:
    - action: host.command
      with: {{ argv: [sh, -c, 'echo "$0 $1" >> {}', "{{{{ labels.instance }}}}", "{{{{ values.B }}}}"] }}
      timeout: 20s
  verify: {{ timeout: 10s }}
"#,
            marker.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("policies/default.yaml"),
        "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec:\n  cooldown: 0s\n",
    )
    .unwrap();
    (dir, marker)
}

const CONFIG: &str = "node: grafana-node\nlisten: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: { enabled: false }\nwebhook: { settle: 0s }\n";

async fn post(a: &AgentProc, path: &str, body: &[u8], token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(a.url(path))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let code = r.status().as_u16();
    (code, r.text().await.unwrap())
}

fn ran(marker: &Path) -> Vec<String> {
    std::fs::read_to_string(marker)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_grafana_alert_runs_its_playbook_with_the_query_values_and_a_test_runs_nothing() {
    let (d, marker) = setup();
    let a = start_agent(d.path(), CONFIG);

    // The contact point's "Test" button: answered, audited as a test, nothing run.
    let (code, text) = post(
        &a,
        "/webhook/grafana",
        &fixture("grafana-test.json"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["status"], "test", "{text}");
    assert_eq!(v["accepted"], 0, "{text}");
    let recs = a.audit();
    let tests: Vec<_> = recs.iter().filter(|r| r.decision == "test").collect();
    assert_eq!(tests.len(), 1, "{recs:#?}");
    assert_eq!(tests[0].trigger.alertname.as_deref(), Some("TestAlert"));
    assert!(tests[0].dry_run);
    assert_eq!(tests[0].trigger.annotations["summary"], "Notification test");

    // A real notification: two alerts, one matching the playbook, whose
    // `values.B` is Grafana's query result.
    let (code, text) = post(
        &a,
        "/webhook/grafana",
        &fixture("grafana-firing.json"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"accepted\":2"), "{text}");
    let lines = eventually(Duration::from_secs(20), || {
        let l = ran(&marker);
        (!l.is_empty()).then_some(l)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the playbook did not run; audit: {:#?}\nlog:\n{}",
            a.audit(),
            a.log_text()
        )
    });
    assert_eq!(lines, vec!["pg-0.db:5432 144.0".to_string()]);
    let verified = eventually(Duration::from_secs(20), || {
        a.audit().into_iter().find(|r| {
            r.playbook == "pg-connections" && r.phase == remediate::audit::Phase::Verified
        })
    })
    .await
    .expect("a verified record");
    assert_eq!(verified.trigger.values["B"], "144.0");
    assert_eq!(verified.trigger.fingerprint, "c6eadffa33fcdf37");

    // Grafana resends the same group (its repeat interval): not run twice.
    let (code, text) = post(
        &a,
        "/webhook/grafana",
        &fixture("grafana-firing.json"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"duplicates\":2"), "{text}");
    // Its resolution is accepted as any resolved alert.
    let (code, text) = post(
        &a,
        "/webhook/grafana",
        &fixture("grafana-resolved.json"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 200, "{text}");

    // The same alert through Alertmanager has no values: the declared default.
    let body = alert_body(
        "firing",
        &[
            ("alertname", "PostgresTooManyConnections"),
            ("instance", "pg-1.db:5432"),
        ],
        "2026-11-25T10:00:00Z",
    );
    let (code, text) = a.post(&body, Some(TOKEN)).await;
    assert_eq!(code, 200, "{text}");
    let lines = eventually(Duration::from_secs(20), || {
        let l = ran(&marker);
        (l.len() >= 2).then_some(l)
    })
    .await
    .expect("the Alertmanager alert ran");
    assert_eq!(lines[1], "pg-1.db:5432 none");
    assert_eq!(ran(&marker).len(), 2, "nothing ran twice");
}

#[tokio::test]
async fn bad_grafana_bodies_and_tokens_are_refused_and_nothing_is_kept() {
    let (d, marker) = setup();
    let a = start_agent(d.path(), CONFIG);
    let body = fixture("grafana-firing.json");
    assert_eq!(post(&a, "/webhook/grafana", &body, None).await.0, 401);
    assert_eq!(
        post(&a, "/webhook/grafana", &body, Some("wrong")).await.0,
        401
    );
    // An Alertmanager body at Grafana's route is named for what it is.
    let am = fixture("crashloop-firing.json");
    let (code, text) = post(&a, "/webhook/grafana", &am, Some(TOKEN)).await;
    assert_eq!(code, 400, "{text}");
    assert!(
        text.contains(r#"unsupported Grafana webhook version \"4\""#),
        "{text}"
    );
    assert!(text.contains("/webhook/alertmanager"), "{text}");
    // And a Grafana body at Alertmanager's route.
    let (code, text) = a.post(&body, Some(TOKEN)).await;
    assert_eq!(code, 400, "{text}");
    assert!(
        text.contains(r#"unsupported Alertmanager webhook version \"1\""#),
        "{text}"
    );
    assert!(text.contains("/webhook/grafana"), "{text}");
    // A value that is not a number.
    let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["alerts"][0]["values"]["B"] = serde_json::json!({"x": 1});
    let (code, text) = post(
        &a,
        "/webhook/grafana",
        &serde_json::to_vec(&v).unwrap(),
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("alerts[0]: values.B is an object"), "{text}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(a.audit().is_empty(), "{:#?}", a.audit());
    assert!(ran(&marker).is_empty());
}
