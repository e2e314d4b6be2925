//! `deploy/grafana/remediate.json` queries only what the agent exports:
//! every metric each panel names is on a running agent's `/metrics` (a
//! counter as `_total`, a histogram as `_bucket`/`_sum`/`_count`), and
//! every expression parses as PromQL (`promtool check rules`).

mod common;

use std::collections::HashMap;
use std::process::Command;

use std::time::Duration;

use remediate::audit::Phase;

use common::{alert_body, eventually, repo, start_agent, AgentProc, TOKEN};

/// `/metrics` once it has samples of every one of `names`.
async fn eventually_metrics(a: &AgentProc, names: &[&str]) -> String {
    for _ in 0..100 {
        let (code, text) = a.get("/metrics").await;
        assert_eq!(code, 200);
        if names.iter().all(|n| text.lines().any(|l| l.starts_with(n))) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "/metrics never showed {names:?}:\n{}",
        a.get("/metrics").await.1
    );
}

fn exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo("deploy/grafana/remediate.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().unwrap_or_default().to_string();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        for t in p["targets"].as_array().expect("targets") {
            out.push((title.clone(), t["expr"].as_str().expect("expr").to_string()));
        }
    }
    out
}

/// A local receiver for the notification sink.
async fn receiver() -> String {
    let app = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

fn playbook(name: &str, alert: &str, argv: &str) -> String {
    format!(
        "apiVersion: remediate/v1\nkind: Playbook\nmetadata: {{ name: {name} }}\nspec:\n  triggers: [{{ alert: ['alertname=\"{alert}\"'] }}]\n  target: {{ kind: host, node: dash-node }}\n  steps:\n    - action: host.command\n      with: {{ argv: {argv} }}\n  verify: {{ timeout: 10s }}\n"
    )
}

#[tokio::test]
async fn every_dashboard_query_names_metrics_the_agent_exports() {
    // An agent that has done what the dashboard shows: a run verified and
    // resolved, a run failed, a notification sent, a breaker evaluated.
    let hook = receiver().await;
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("playbooks")).unwrap();
    std::fs::create_dir_all(d.path().join("policies")).unwrap();
    std::fs::write(
        d.path().join("playbooks/fix.yaml"),
        playbook("fix", "Fixable", "[\"true\"]"),
    )
    .unwrap();
    std::fs::write(
        d.path().join("playbooks/bad.yaml"),
        playbook("bad", "Unfixable", "[\"false\"]"),
    )
    .unwrap();
    std::fs::write(
        d.path().join("policies/default.yaml"),
        "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec:\n  cooldown: 0s\n  circuitBreaker: { failures: 3, within: 1h, openFor: 1h }\n",
    )
    .unwrap();
    let a = start_agent(
        d.path(),
        &format!("node: dash-node\nlisten: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: {{ enabled: false }}\nwebhook: {{ settle: 0s }}\nnotify:\n  - {{ name: hook, kind: webhook, url: \"http://{hook}/hook\", on: [execute] }}\n"),
    );
    let starts = (chrono::Utc::now() - chrono::Duration::seconds(60)).to_rfc3339();
    let fix = |status: &str| alert_body(status, &[("alertname", "Fixable")], &starts);
    assert_eq!(a.post(&fix("firing"), Some(TOKEN)).await.0, 200);
    eventually(Duration::from_secs(30), || {
        a.audit()
            .iter()
            .any(|r| r.phase == Phase::Verified)
            .then_some(())
    })
    .await
    .expect("the fix is verified");
    assert_eq!(a.post(&fix("resolved"), Some(TOKEN)).await.0, 200);
    let bad = alert_body("firing", &[("alertname", "Unfixable")], &starts);
    assert_eq!(a.post(&bad, Some(TOKEN)).await.0, 200);
    eventually(Duration::from_secs(30), || {
        let recs = a.audit();
        (recs.iter().any(|r| r.phase == Phase::Resolved)
            && recs.iter().any(|r| r.phase == Phase::Failed))
        .then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("a resolved and a failed run; audit: {:#?}", a.audit()));
    // Notifications are sent after the run, and the breaker gauge on the
    // agent's one-second tick.
    let text = eventually_metrics(
        &a,
        &[
            "remediate_notifications_total",
            "remediate_circuit_breaker_state",
        ],
    )
    .await;
    let mut families: HashMap<String, String> = HashMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(n), Some(t)) = (it.next(), it.next()) {
                families.insert(n.to_string(), t.to_string());
            }
        }
    }
    let exported = |name: &str| -> bool {
        let is = |base: &str, kind: &str| families.get(base).map(String::as_str) == Some(kind);
        if families.get(name).is_some_and(|t| t == "gauge") {
            return true;
        }
        if let Some(base) = name.strip_suffix("_total") {
            return is(base, "counter");
        }
        ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|b| is(b, "histogram")))
    };
    let re = regex::Regex::new(r"\bremediate_[a-z0-9_]+").unwrap();
    let queries = exprs();
    assert!(queries.len() >= 10, "{queries:?}");
    let mut missing = Vec::new();
    for (title, e) in &queries {
        let names: Vec<&str> = re.find_iter(e).map(|m| m.as_str()).collect();
        assert!(
            !names.is_empty(),
            "panel {title:?} queries no remediate metric: {e}"
        );
        for n in names {
            if !exported(n) {
                missing.push(format!("panel {title:?}: {n}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the agent does not export:\n{}\nexported families: {:?}",
        missing.join("\n"),
        families.keys().collect::<Vec<_>>()
    );
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let Ok(out) = Command::new("promtool").arg("--version").output() else {
        panic!("promtool not found: install it with `apt-get install prometheus` (.ci/run does)");
    };
    assert!(out.status.success());
    let rules: Vec<serde_json::Value> = exprs()
        .iter()
        .enumerate()
        .map(|(i, (_, e))| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": e}))
        .collect();
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("dashboard-rules.yaml");
    // JSON is YAML.
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool refuses a dashboard query:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
