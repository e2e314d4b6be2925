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
    let bin = alertmanager_binary();
    let port = free_port();
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
