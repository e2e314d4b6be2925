//! End to end with a real Alertmanager (Debian `prometheus-alertmanager`):
//! alerts posted to its API reach the agent through a `webhook_config` with
//! `http_config.authorization`; the audit shows the decision; a resolved
//! alert cancels; a receiver with a wrong token gets nothing done.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{count, eventually, repo, start_agent, TOKEN};

struct Alertmanager {
    child: Child,
    url: String,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn alertmanager_binary() -> &'static str {
    let bin = "prometheus-alertmanager";
    let found = Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{bin} not found: install it with `apt-get install prometheus-alertmanager` (.ci/run does)"
    );
    bin
}

async fn start_alertmanager(dir: &std::path::Path, agent_addr: &str) -> Alertmanager {
    start_alertmanager_on(dir, agent_addr, free_port()).await
}

async fn start_alertmanager_on(dir: &std::path::Path, agent_addr: &str, port: u16) -> Alertmanager {
    let bin = alertmanager_binary();
    let config = format!(
        r#"route:
  receiver: remediate
  group_by: [alertname, namespace, pod]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
  routes:
    - matchers: ['team="intruder"']
      receiver: wrong-token
receivers:
  - name: remediate
    webhook_configs:
      - url: http://{agent_addr}/webhook/alertmanager
        send_resolved: true
        http_config:
          authorization: {{ type: Bearer, credentials: {TOKEN} }}
  - name: wrong-token
    webhook_configs:
      - url: http://{agent_addr}/webhook/alertmanager
        send_resolved: true
        http_config:
          authorization: {{ type: Bearer, credentials: not-the-token }}
"#
    );
    let cfg = dir.join("alertmanager.yml");
    std::fs::write(&cfg, config).unwrap();
    let log = std::fs::File::create(dir.join("alertmanager.log")).unwrap();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.path={}", dir.join("am-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus-alertmanager");
    let am = Alertmanager {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let ready = async {
        for _ in 0..100 {
            if let Ok(r) = reqwest::get(format!("{}/-/ready", am.url)).await {
                if r.status().is_success() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(
        ready.await,
        "alertmanager did not become ready; log:\n{}",
        std::fs::read_to_string(dir.join("alertmanager.log")).unwrap_or_default()
    );
    am
}

async fn post_alert(am: &Alertmanager, pod: &str, extra: &[(&str, &str)], resolved: bool) {
    let now = chrono::Utc::now();
    let mut labels = serde_json::json!({
        "alertname": "KubePodCrashLooping",
        "namespace": "etl",
        "pod": pod,
        "severity": "warning",
    });
    for (k, v) in extra {
        labels[*k] = serde_json::json!(v);
    }
    let ends = if resolved {
        now - chrono::Duration::seconds(1)
    } else {
        now + chrono::Duration::hours(1)
    };
    let body = serde_json::json!([{
        "labels": labels,
        "annotations": { "summary": format!("{pod} is crash looping") },
        "startsAt": (now - chrono::Duration::minutes(5)).to_rfc3339(),
        "endsAt": ends.to_rfc3339(),
        "generatorURL": "http://127.0.0.1:9090/graph",
    }]);
    let r = reqwest::Client::new()
        .post(format!("{}/api/v2/alerts", am.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "alertmanager refused the alert: {}",
        r.status()
    );
}

/// Alertmanager's own fingerprint for the alert on `pod`.
async fn am_fingerprint(am: &Alertmanager, pod: &str) -> String {
    let v: serde_json::Value = reqwest::get(format!("{}/api/v2/alerts", am.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["pod"] == pod)
        .and_then(|a| a["fingerprint"].as_str())
        .unwrap_or_else(|| panic!("alert for {pod} not in alertmanager: {v}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_flow_from_a_real_alertmanager_to_audited_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("playbooks")).unwrap();
    std::fs::create_dir_all(d.join("policies")).unwrap();
    std::fs::copy(
        repo("playbooks/k8s-crashloop-restart.yaml"),
        d.join("playbooks/k8s-crashloop-restart.yaml"),
    )
    .unwrap();
    std::fs::write(
        d.join("policies/default.yaml"),
        "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec: { cooldown: 10m }\n",
    )
    .unwrap();
    // A settle period long enough for Alertmanager's resolved notification
    // (one group_interval later) to arrive first.
    let agent = start_agent(
        d,
        "listen: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\ndryRun: true\nschedule: { enabled: false }\nwebhook: { settle: 4s }\n",
    );
    let am = start_alertmanager(d, &agent.addr).await;

    // 1. A firing alert is delivered, authenticated, and decided.
    post_alert(&am, "am-steady", &[], false).await;
    // 2. One that resolves while the agent lets it settle.
    post_alert(&am, "am-flap", &[], false).await;
    // 3. One routed to a receiver with the wrong token.
    post_alert(&am, "am-intruder", &[("team", "intruder")], false).await;
    let fp_steady = am_fingerprint(&am, "am-steady").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    post_alert(&am, "am-flap", &[], true).await;

    let recs = eventually(Duration::from_secs(20), || {
        let recs = agent.audit();
        let steady = count(&recs, |r| r.target.get("name").map(String::as_str) == Some("am-steady"));
        let flap_cancelled = count(&recs, |r| {
            r.target.get("name").map(String::as_str) == Some("am-flap")
                && r.reason.starts_with("cancelled: the alert resolved")
        });
        (steady == 1 && flap_cancelled == 1).then_some(recs)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "expected decisions for am-steady and a cancel for am-flap; audit: {:#?}\nagent log:\n{}\nalertmanager log:\n{}",
            agent.audit(),
            agent.log_text(),
            std::fs::read_to_string(d.join("alertmanager.log")).unwrap_or_default()
        )
    });

    let steady = recs
        .iter()
        .find(|r| r.target.get("name").map(String::as_str) == Some("am-steady"))
        .unwrap();
    assert_eq!(steady.decision, "dry-run");
    assert_eq!(steady.playbook, "k8s-crashloop-restart");
    assert_eq!(
        steady.trigger.fingerprint, fp_steady,
        "the agent keeps Alertmanager's fingerprint"
    );
    assert!(
        steady.outcome.starts_with("would evict pod etl/am-steady"),
        "{}",
        steady.outcome
    );

    // The flapping alert never got past the settle: no dry-run for it.
    assert_eq!(
        count(&recs, |r| r.target.get("name").map(String::as_str)
            == Some("am-flap")
            && r.decision == "dry-run"),
        0
    );

    // The wrong token got 401s and nothing was decided for its alert.
    let mut got_401 = None;
    for _ in 0..100 {
        got_401 = agent
            .metric("remediate_webhook_requests_total{code=\"401\"}")
            .await;
        if got_401.is_some_and(|n| n >= 1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        got_401.is_some_and(|n| n >= 1.0),
        "Alertmanager's wrong-token delivery was not refused"
    );
    assert_eq!(
        count(&agent.audit(), |r| r.target.get("name").map(String::as_str)
            == Some("am-intruder")),
        0
    );
    assert!(!agent.log_text().contains(TOKEN), "the token was logged");
}

async fn silences(am: &Alertmanager) -> Vec<serde_json::Value> {
    let v: serde_json::Value = reqwest::get(format!("{}/api/v2/silences", am.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_with_silence_while_acting_silences_the_alert_during_the_run_and_expires_it_after()
{
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("playbooks")).unwrap();
    std::fs::create_dir_all(d.join("policies")).unwrap();
    let marker = d.join("ran.txt");
    // The action takes a few seconds: long enough to see the silence.
    std::fs::write(
        d.join("playbooks/slow.yaml"),
        format!(
            "apiVersion: remediate/v1\nkind: Playbook\nmetadata: {{ name: slow-fix }}\nspec:\n  triggers: [{{ alert: ['alertname=\"KubePodCrashLooping\"'] }}]\n  target: {{ kind: host, node: am-node }}\n  steps:\n    - action: host.command\n      with: {{ argv: [sh, -c, 'sleep 4; echo done >> {}'] }}\n      timeout: 30s\n  verify: {{ timeout: 10s }}\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("policies/default.yaml"),
        "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec: { cooldown: 10m, silenceWhileActing: true }\n",
    )
    .unwrap();
    let port = free_port();
    let agent = start_agent(
        d,
        &format!("node: am-node\nlisten: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: {{ enabled: false }}\nwebhook: {{ settle: 0s }}\nalertmanager: {{ url: \"http://127.0.0.1:{port}\" }}\n"),
    );
    let am = start_alertmanager_on(d, &agent.addr, port).await;
    post_alert(&am, "am-silenced", &[], false).await;

    // While the run acts: one active silence by remediate, matching exactly
    // the alert's labels.
    let mut active = None;
    for _ in 0..200 {
        active = silences(&am)
            .await
            .into_iter()
            .find(|s| s["createdBy"] == "remediate" && s["status"]["state"] == "active");
        if active.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let active = active.unwrap_or_else(|| {
        panic!(
            "no active silence while the run acts; agent log:\n{}",
            agent.log_text()
        )
    });
    assert!(
        !marker.exists(),
        "the silence is made before the action finishes"
    );
    let mut matchers: Vec<(String, String)> = active["matchers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["isRegex"], false);
            (
                m["name"].as_str().unwrap().to_string(),
                m["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    matchers.sort();
    assert_eq!(
        matchers,
        vec![
            ("alertname".to_string(), "KubePodCrashLooping".to_string()),
            ("namespace".into(), "etl".into()),
            ("pod".into(), "am-silenced".into()),
            ("severity".into(), "warning".into()),
        ]
    );
    // Alertmanager itself now reports the alert as silenced.
    let alerts: serde_json::Value = reqwest::get(format!("{}/api/v2/alerts", am.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let a = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["pod"] == "am-silenced")
        .unwrap();
    assert_eq!(a["status"]["state"], "suppressed", "{a}");

    // After the run: verified, and the silence expired.
    let ended = eventually(Duration::from_secs(30), || {
        agent
            .audit()
            .iter()
            .any(|r| r.phase == remediate::audit::Phase::Verified)
            .then_some(())
    })
    .await;
    assert!(
        ended.is_some(),
        "the run was not verified: {:#?}",
        agent.audit()
    );
    let id = active["id"].as_str().unwrap().to_string();
    let mut state = String::new();
    for _ in 0..100 {
        state = silences(&am)
            .await
            .into_iter()
            .find(|s| s["id"] == id.as_str())
            .map(|s| {
                s["status"]["state"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default();
        if state == "expired" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "expired", "agent log:\n{}", agent.log_text());
    assert_eq!(
        agent
            .metric("remediate_alertmanager_silences_total{result=\"created\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        agent
            .metric("remediate_alertmanager_silences_total{result=\"expired\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn an_unreachable_alertmanager_never_stops_the_fix_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("playbooks")).unwrap();
    std::fs::create_dir_all(d.join("policies")).unwrap();
    std::fs::write(
        d.join("playbooks/fix.yaml"),
        "apiVersion: remediate/v1\nkind: Playbook\nmetadata: { name: fix }\nspec:\n  triggers: [{ alert: ['alertname=\"KubePodCrashLooping\"'] }]\n  target: { kind: host, node: am-node }\n  steps:\n    - action: host.command\n      with: { argv: [\"true\"] }\n  verify: { timeout: 10s }\n",
    )
    .unwrap();
    std::fs::write(
        d.join("policies/default.yaml"),
        "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec: { cooldown: 10m, silenceWhileActing: true }\n",
    )
    .unwrap();
    // Nothing listens on this port.
    let port = free_port();
    let agent = start_agent(
        d,
        &format!("node: am-node\nlisten: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: {{ enabled: false }}\nwebhook: {{ settle: 0s }}\nalertmanager: {{ url: \"http://127.0.0.1:{port}\", timeout: 2s }}\n"),
    );
    let body = common::alert_body(
        "firing",
        &[("alertname", "KubePodCrashLooping"), ("pod", "p")],
        "2026-11-25T10:00:00Z",
    );
    assert_eq!(agent.post(&body, Some(TOKEN)).await.0, 200);
    let verified = eventually(Duration::from_secs(30), || {
        agent
            .audit()
            .iter()
            .any(|r| r.phase == remediate::audit::Phase::Verified)
            .then_some(())
    })
    .await;
    assert!(verified.is_some(), "{:#?}", agent.audit());
    assert_eq!(
        agent
            .metric("remediate_alertmanager_silences_total{result=\"failure\"}")
            .await,
        Some(1.0)
    );
    assert!(agent
        .log_text()
        .contains("cannot silence the alert in Alertmanager; acting without a silence"));
}
