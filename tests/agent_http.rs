//! `remediate agent` as a process: the webhook contract (auth, limits,
//! errors, durability, duplicates, cancel), metrics, health, logs, reload,
//! notifications to local HTTP receivers, and SIGTERM.
//!
//! The agent runs in shadow mode (dryRun) with a test policy that has no
//! time windows, so decisions do not depend on the day the test runs.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use remediate::audit::Phase;

use common::{
    alert_body, count, eventually, fixture, repo, start_agent, start_agent_nofile, AgentProc, TOKEN,
};

const POLICY: &str =
    "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec:\n  cooldown: 10m\n";

/// A temp dir with the bundled crashloop and postgres playbooks and a
/// window-free policy.
fn dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("playbooks")).unwrap();
    std::fs::create_dir_all(d.path().join("policies")).unwrap();
    for pb in [
        "k8s-crashloop-restart.yaml",
        "postgres-idle-connections-recycle.yaml",
    ] {
        std::fs::copy(
            repo("playbooks").join(pb),
            d.path().join("playbooks").join(pb),
        )
        .unwrap();
    }
    std::fs::write(d.path().join("policies/default.yaml"), POLICY).unwrap();
    d
}

const BASE: &str = "listen: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\ndryRun: true\nschedule: { enabled: false }\n";

fn crashloop(pod: &str, status: &str, starts: &str) -> Vec<u8> {
    alert_body(
        status,
        &[
            ("alertname", "KubePodCrashLooping"),
            ("namespace", "etl"),
            ("pod", pod),
        ],
        starts,
    )
}

/// Posts a firing crashloop alert for `pod`; the decision recorded for it.
async fn decide(a: &AgentProc, pod: &str) -> String {
    let body = crashloop(pod, "firing", "2026-11-25T10:00:00Z");
    let (code, text) = a.post(&body, Some(TOKEN)).await;
    assert_eq!(code, 200, "{text}");
    records_for(a, pod, 1).await[0].decision.clone()
}

async fn records_for(a: &AgentProc, pod: &str, n: usize) -> Vec<remediate::audit::Record> {
    eventually(Duration::from_secs(10), || {
        let recs: Vec<_> = a
            .audit()
            .into_iter()
            .filter(|r| r.target.get("name").map(String::as_str) == Some(pod))
            .collect();
        (recs.len() >= n).then_some(recs)
    })
    .await
    .unwrap_or_else(|| panic!("expected {n} record(s) for {pod}; audit: {:#?}", a.audit()))
}

#[tokio::test]
async fn webhook_rejects_bad_tokens_bodies_and_sizes_and_only_a_good_delivery_is_decided() {
    let d = dir();
    let a = start_agent(d.path(), BASE);
    let body = fixture("crashloop-firing.json");

    let (code, text) = a.post(&body, None).await;
    assert_eq!(code, 401, "{text}");
    let (code, _) = a.post(&body, Some("wrong-token")).await;
    assert_eq!(code, 401);
    let (code, _) = a.post(&body, Some(&format!("{TOKEN}x"))).await;
    assert_eq!(code, 401);

    let (code, text) = a
        .post(b"{\"version\": \"4\", \"alerts\": [", Some(TOKEN))
        .await;
    assert_eq!(code, 400);
    assert!(
        text.contains("malformed Alertmanager payload at line 1 column"),
        "{text}"
    );
    let (code, text) = a
        .post(
            br#"{"version":"3","status":"firing","alerts":[]}"#,
            Some(TOKEN),
        )
        .await;
    assert_eq!(code, 400);
    assert!(
        text.contains("unsupported Alertmanager webhook version \\\"3\\\""),
        "{text}"
    );

    // Just over 1 MiB of valid-looking JSON.
    let mut big = b"{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[],\"pad\":\"".to_vec();
    big.resize((1 << 20) + 10, b'a');
    big.extend_from_slice(b"\"}");
    let (code, text) = a.post(&big, Some(TOKEN)).await;
    assert_eq!(code, 413, "{text}");

    // Nothing above reached the audit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.audit().is_empty(), "{:#?}", a.audit());

    let (code, text) = a.post(&body, Some(TOKEN)).await;
    assert_eq!(code, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["accepted"], 1);
    let recs = records_for(&a, "spark-driver-1", 1).await;
    assert_eq!(recs[0].decision, "dry-run");
    assert_eq!(recs[0].playbook, "k8s-crashloop-restart");
    assert_eq!(recs[0].trigger.fingerprint, "878bb564defe5a42");

    assert_eq!(
        a.metric("remediate_webhook_requests_total{code=\"401\"}")
            .await,
        Some(3.0)
    );
    assert_eq!(
        a.metric("remediate_webhook_requests_total{code=\"400\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(
        a.metric("remediate_webhook_requests_total{code=\"413\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        a.metric("remediate_webhook_requests_total{code=\"200\"}")
            .await,
        Some(1.0)
    );
    // The token is never logged.
    assert!(!a.log_text().contains(TOKEN));
}

#[tokio::test]
async fn duplicate_deliveries_run_nothing_twice_and_a_new_episode_is_decided_again() {
    let d = dir();
    let a = start_agent(d.path(), BASE);
    let body = crashloop("dup-1", "firing", "2026-11-25T10:00:00Z");
    // An HA pair delivering at once, then a repeat_interval resend.
    let (r1, r2) = tokio::join!(a.post(&body, Some(TOKEN)), a.post(&body, Some(TOKEN)));
    assert_eq!((r1.0, r2.0), (200, 200));
    let (code, text) = a.post(&body, Some(TOKEN)).await;
    assert_eq!(code, 200);
    assert!(text.contains("\"duplicates\":1"), "{text}");
    records_for(&a, "dup-1", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recs: Vec<_> = a.audit();
    assert_eq!(
        count(&recs, |r| r.target["name"] == "dup-1"),
        1,
        "{recs:#?}"
    );
    assert_eq!(
        a.metric("remediate_duplicate_deliveries_total").await,
        Some(2.0)
    );

    // The alert resolved and fired again: a new startsAt is a new episode,
    // decided again (and held back by the cooldown).
    let again = crashloop("dup-1", "firing", "2026-11-25T11:30:00Z");
    assert_eq!(a.post(&again, Some(TOKEN)).await.0, 200);
    let recs = records_for(&a, "dup-1", 2).await;
    assert_eq!(recs[1].decision, "suppressed");
    assert!(recs[1].reason.contains("cooldown"), "{}", recs[1].reason);
}

#[tokio::test]
async fn an_accepted_delivery_survives_sigkill_before_it_is_decided() {
    let d = dir();
    // A long settle keeps the event undecided when the agent is killed.
    let mut a = start_agent(d.path(), &format!("{BASE}webhook: {{ settle: 1h }}\n"));
    let (code, _) = a
        .post(
            &crashloop("durable-1", "firing", "2026-11-25T10:00:00Z"),
            Some(TOKEN),
        )
        .await;
    assert_eq!(code, 200);
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(5));
    assert!(
        a.audit().is_empty(),
        "decided before the kill: {:#?}",
        a.audit()
    );
    drop(a);

    let a = start_agent(d.path(), BASE);
    let recs = records_for(&a, "durable-1", 1).await;
    assert_eq!(recs[0].decision, "dry-run");
    // Once decided, it is not decided again after another restart.
    drop(a);
    let a = start_agent(d.path(), BASE);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&a.audit(), |r| r.target["name"] == "durable-1"), 1);
    // And the recovered delivery still counts for dedupe.
    let (_, text) = a
        .post(
            &crashloop("durable-1", "firing", "2026-11-25T10:00:00Z"),
            Some(TOKEN),
        )
        .await;
    assert!(text.contains("\"duplicates\":1"), "{text}");
}

#[tokio::test]
async fn a_resolved_alert_cancels_its_firing_delivery_while_it_settles() {
    let d = dir();
    let a = start_agent(d.path(), &format!("{BASE}webhook: {{ settle: 2s }}\n"));
    assert_eq!(
        a.post(
            &crashloop("flap-1", "firing", "2026-11-25T10:00:00Z"),
            Some(TOKEN)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        a.post(
            &crashloop("steady-1", "firing", "2026-11-25T10:00:00Z"),
            Some(TOKEN)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        a.post(
            &crashloop("flap-1", "resolved", "2026-11-25T10:00:00Z"),
            Some(TOKEN)
        )
        .await
        .0,
        200
    );
    let flap = records_for(&a, "flap-1", 2).await;
    let steady = records_for(&a, "steady-1", 1).await;
    let firing: Vec<_> = flap
        .iter()
        .filter(|r| r.trigger.status == remediate::event::Status::Firing)
        .collect();
    assert_eq!(firing.len(), 1, "{flap:#?}");
    assert_eq!(firing[0].decision, "suppressed");
    assert!(
        firing[0]
            .reason
            .starts_with("cancelled: the alert resolved"),
        "{}",
        firing[0].reason
    );
    assert_eq!(
        steady[0].decision, "dry-run",
        "an unrelated alert still runs after its settle"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&a.audit(), |r| r.target["name"] == "flap-1"
            && r.decision == "dry-run"),
        0
    );
}

#[tokio::test]
async fn metrics_health_and_logs() {
    let d = dir();
    let a = start_agent(d.path(), BASE);
    assert_eq!(a.get("/healthz").await.0, 200);
    assert_eq!(a.get("/readyz").await, (200, "ready\n".to_string()));
    // Alerts with unbounded label values.
    for i in 0..5 {
        let b = crashloop(&format!("pod-unique-{i}"), "firing", "2026-11-25T10:00:00Z");
        assert_eq!(a.post(&b, Some(TOKEN)).await.0, 200);
    }
    records_for(&a, "pod-unique-4", 1).await;
    let r = reqwest::get(a.url("/metrics")).await.unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        !text.contains("pod-unique"),
        "alert label values leaked into metrics:\n{text}"
    );
    for series in [
        "remediate_events_total{trigger=\"alert\",status=\"firing\"} 5",
        "remediate_decisions_total{playbook=\"k8s-crashloop-restart\",action=\"kubernetes.pod.restart\",decision=\"dry-run\"} 5",
        "remediate_queue_depth 0",
        "remediate_playbooks_loaded 2",
        "remediate_config_last_reload_successful 1",
        "remediate_build_info{version=\"",
    ] {
        assert!(text.contains(series), "missing {series:?} in:\n{text}");
    }
    // Every log line is JSON; each decision carries its event span.
    let logs = a.log_text();
    let mut decided = 0;
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["message"] == "decided" {
            decided += 1;
            assert_eq!(v["span"]["name"], "event");
            assert_eq!(v["span"]["trigger"], "alert");
            assert!(
                v["span"]["fingerprint"]
                    .as_str()
                    .is_some_and(|f| f.len() == 16),
                "{line}"
            );
        }
    }
    assert_eq!(decided, 5, "{logs}");
}

#[tokio::test]
async fn a_bad_playbook_set_is_rejected_on_reload_and_the_old_set_keeps_running() {
    let d = dir();
    let mut a = start_agent(d.path(), &format!("{BASE}reload: {{ interval: 200ms }}\n"));
    let broken = d.path().join("playbooks/broken.yaml");
    std::fs::write(&broken, "apiVersion: remediate/v1\nkind: Playbook\nmetadata: { name: broken }\nspec:\n  triggers: [{ alert: ['alertname=~\"(\"'] }]\n  target: { kind: kubernetes.pod }\n  steps: []\n").unwrap();
    a.wait_log(&["reload rejected"]).await;
    assert_eq!(
        a.metric("remediate_config_last_reload_successful").await,
        Some(0.0)
    );
    assert_eq!(
        a.metric("remediate_config_reloads_total{result=\"failure\"}")
            .await,
        Some(1.0)
    );
    assert!(
        a.log_text().contains("broken.yaml:5"),
        "the error names the file and line:\n{}",
        a.log_text()
    );
    // The old set still decides.
    assert_eq!(decide(&a, "reload-1").await, "dry-run");

    // Fixed: a valid new playbook is picked up from the file change.
    std::fs::remove_file(&broken).unwrap();
    std::fs::copy(
        repo("playbooks/node-disk-prune.yaml"),
        d.path().join("playbooks/node-disk-prune.yaml"),
    )
    .unwrap();
    a.wait_log(&["\"playbooks\":3"]).await;
    assert_eq!(a.metric("remediate_playbooks_loaded").await, Some(3.0));
    assert_eq!(
        a.metric("remediate_config_last_reload_successful").await,
        Some(1.0)
    );

    // SIGHUP reloads too.
    a.signal("HUP");
    a.wait_log(&["\"trigger\":\"SIGHUP\""]).await;
    assert_eq!(
        a.metric("remediate_config_reloads_total{result=\"success\"}")
            .await,
        Some(2.0)
    );

    // SIGTERM: exits 0 after flushing.
    a.signal("TERM");
    assert_eq!(a.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(a
        .log_text()
        .contains("agent stopped; audit and inbox flushed"));
}

/// A local HTTP receiver: records every body; `/broken` answers 500.
async fn receiver() -> (String, Arc<Mutex<Vec<(String, serde_json::Value)>>>) {
    use axum::routing::post;
    let got: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/{sink}",
        post(
            move |axum::extract::Path(sink): axum::extract::Path<String>,
                  body: axum::body::Bytes| {
                let g = g.clone();
                async move {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    g.lock().unwrap().push((sink.clone(), v));
                    if sink == "broken" {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            },
        ),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, got)
}

#[tokio::test]
async fn notifications_reach_slack_discord_and_webhook_receivers_and_a_failing_sink_is_audited() {
    let (addr, got) = receiver().await;
    let d = dir();
    let url_file = d.path().join("slack-url");
    std::fs::write(&url_file, format!("http://{addr}/slack\n")).unwrap();
    let cfg = format!(
        "{BASE}notify:\n  - {{ name: chat, kind: slack, urlFile: slack-url, on: [dry-run] }}\n  - {{ name: disc, kind: discord, url: \"http://{addr}/discord\", on: [dry-run] }}\n  - {{ name: bot, kind: webhook, url: \"http://{addr}/hook\", on: [dry-run] }}\n  - {{ name: down, kind: webhook, url: \"http://{addr}/broken\", on: [dry-run], attempts: 2 }}\n  - {{ name: quiet, kind: webhook, url: \"http://{addr}/quiet\", on: [execute] }}\n"
    );
    let a = start_agent(d.path(), &cfg);
    assert_eq!(
        a.post(&fixture("crashloop-firing.json"), Some(TOKEN))
            .await
            .0,
        200
    );
    let recs = eventually(Duration::from_secs(10), || {
        let recs = a.audit();
        (count(&recs, |r| r.decision == "notify") == 1).then_some(recs)
    })
    .await
    .unwrap_or_else(|| panic!("no notify failure audited: {:#?}", a.audit()));
    let got = got.lock().unwrap().clone();
    let by = |s: &str| {
        got.iter()
            .filter(|(k, _)| k == s)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    let runbook =
        "https://github.com/remediate/remediate/blob/main/docs/runbooks.md#kubepodcrashlooping";

    let slack = by("slack");
    assert_eq!(slack.len(), 1);
    let text = slack[0]["text"].as_str().unwrap();
    assert!(
        text.contains("k8s-crashloop-restart") && text.contains("pod etl/spark-driver-1"),
        "{text}"
    );
    assert!(
        text.contains("decision: dry-run") && text.contains(runbook),
        "{text}"
    );
    assert!(slack[0]["blocks"][1]["text"]["text"]
        .as_str()
        .unwrap()
        .contains(&format!("<{runbook}|Runbook>")));

    let discord = by("discord");
    assert_eq!(discord.len(), 1);
    assert_eq!(discord[0]["embeds"][0]["url"], runbook);
    assert!(discord[0]["content"]
        .as_str()
        .unwrap()
        .contains("would remediate (dry-run)"));

    let hook = by("hook");
    assert_eq!(hook.len(), 1);
    assert_eq!(hook[0]["playbook"], "k8s-crashloop-restart");
    assert_eq!(hook[0]["decision"], "dry-run");
    assert_eq!(hook[0]["runbook"], runbook);
    assert_eq!(hook[0]["status"], "not-executed");
    assert!(hook[0]["outcome"]
        .as_str()
        .unwrap()
        .starts_with("would evict pod etl/spark-driver-1"));

    // Two attempts at the broken sink, then an audit record; the quiet sink
    // only wants executions.
    assert_eq!(by("broken").len(), 2);
    assert!(by("quiet").is_empty());
    let n = recs.iter().find(|r| r.decision == "notify").unwrap();
    assert_eq!(n.action, "notify:down");
    assert_eq!(n.phase, Phase::Failed);
    assert!(n.outcome.contains("HTTP 500"), "{}", n.outcome);
    // The decision itself was recorded regardless.
    assert_eq!(count(&recs, |r| r.decision == "dry-run"), 1);
}

#[tokio::test]
async fn the_agent_refuses_to_start_without_a_token_or_with_a_bad_config() {
    let d = dir();
    let cfg = d.path().join("agent.yaml");
    std::fs::write(&cfg, BASE).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_remediate"))
        .args(["agent", "--config"])
        .arg(&cfg)
        .env_remove("REMEDIATE_WEBHOOK_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("no webhook token: set auth.tokenFile or $REMEDIATE_WEBHOOK_TOKEN"));

    std::fs::write(&cfg, format!("{BASE}webhook: {{ maxBodyByte: 10 }}\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_remediate"))
        .args(["agent", "--check", "--config"])
        .arg(&cfg)
        .env("REMEDIATE_WEBHOOK_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agent.yaml:7:")
            && err.contains("webhook.maxBodyByte: unknown field `maxBodyByte`"),
        "{err}"
    );

    // The shipped example is valid.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_remediate"))
        .args(["agent", "--check", "--config"])
        .arg(repo("examples/agent.yaml"))
        .env("REMEDIATE_WEBHOOK_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: node "));
}

/// Raises this test process's open-files limit to the hard limit; returns it.
fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum.unwrap_or(1 << 20);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: lim.maximum,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(1024)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// True once the server has closed `s` (EOF or reset), within `within`.
async fn closed_by_server(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_and_half_sent_connections_leave_health_and_the_webhook_answering() {
    let limit = raise_nofile();
    let (idle_n, slow_n) = if limit >= 3_000 {
        (2_000, 500)
    } else {
        (600, 200)
    };
    let d = dir();
    // The agent gets 1024 descriptors, a common container default, so the
    // idle connections alone would exhaust them without the cap.
    let a = start_agent_nofile(
        d.path(),
        &format!(
            "{BASE}server: {{ maxConnections: 600, headerReadTimeout: 2s, idleTimeout: 60s }}\n"
        ),
        1024,
    );
    let addr = a.addr.clone();
    let connect = |i: usize| {
        let addr = addr.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(20),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            .unwrap_or_else(|_| panic!("connection {i} not taken within 20 s"))
            .unwrap()
        }
    };
    let mut idle = Vec::new();
    for i in 0..idle_n {
        idle.push(connect(i).await);
    }
    // Half-sent requests: headers never finished, no token needed.
    let mut slow = Vec::new();
    for i in 0..slow_n {
        use tokio::io::AsyncWriteExt;
        let mut s = connect(idle_n + i).await;
        s.write_all(b"POST /webhook/alertmanager HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    // A client that sends its request at once is served.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let r = client.get(a.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(a.url("/webhook/alertmanager"))
        .bearer_auth(TOKEN)
        .body(crashloop("held-open-1", "firing", "2026-11-25T10:00:00Z"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    records_for(&a, "held-open-1", 1).await;
    let open = a.metric("remediate_http_connections_open").await.unwrap();
    assert!(open <= 600.0, "{open} connections open over the cap of 600");
    let rss = rss_kb(a.child.id());
    assert!(
        rss < 256 * 1024,
        "agent RSS {rss} kB with {idle_n} idle and {slow_n} slow connections"
    );

    // The half-sent ones are closed by the server at the header timeout;
    // the oldest idle ones were closed to make room.
    for s in &mut slow {
        assert!(
            closed_by_server(s, Duration::from_secs(20)).await,
            "a half-sent request is still open"
        );
    }
    // (Not exact counts: a connection the kernel queued while the agent was
    // busy accepting is accepted later, and then ages differently.)
    let header = a
        .metric("remediate_http_connections_closed_total{reason=\"header_timeout\"}")
        .await
        .unwrap_or(0.0);
    assert!(header >= 1.0, "no header timeout counted");
    let evicted = a
        .metric("remediate_http_connections_closed_total{reason=\"evicted\"}")
        .await
        .unwrap_or(0.0);
    assert!(evicted >= 1.0, "no connection evicted at the cap");
    assert!(closed_by_server(&mut idle[0], Duration::from_secs(5)).await);
    // Logged, rate-limited: one line per reason, never one per connection.
    let lines = a
        .log_text()
        .lines()
        .filter(|l| l.contains("\"reason\":\"header_timeout\""))
        .count();
    assert!((1..=3).contains(&lines), "{lines} header_timeout lines");
}

#[tokio::test]
async fn a_never_ending_chunked_body_is_cut_off_at_the_body_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = dir();
    let a = start_agent(d.path(), &format!("{BASE}server: {{ bodyTimeout: 2s }}\n"));
    let mut s = tokio::net::TcpStream::connect(&a.addr).await.unwrap();
    let head = format!("POST /webhook/alertmanager HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let start = std::time::Instant::now();
    let (mut rd, mut wr) = s.into_split();
    let feeder = tokio::spawn(async move {
        // A chunk every 100 ms, never the last one.
        while wr.write_all(b"1\r\n \r\n").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let cut = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    feeder.abort();
    let took = start.elapsed();
    assert!(cut.is_ok(), "the body was still being read after 20 s");
    assert!(took >= Duration::from_millis(1500), "cut after {took:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("server.bodyTimeout"), "{text}");
    assert_eq!(
        a.metric("remediate_http_rejected_requests_total{reason=\"body_timeout\"}")
            .await,
        Some(1.0)
    );
    assert!(a.audit().is_empty());
}

fn inbox_bytes(a: &AgentProc) -> u64 {
    std::fs::metadata(a.dir.join("state/inbox.jsonl"))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_control_character_in_a_label_is_refused_naming_the_alert_and_label_and_nothing_is_kept()
{
    let d = dir();
    let a = start_agent(d.path(), BASE);
    let before = inbox_bytes(&a);
    // Two alerts; the second has a NUL in its pod label.
    let mut body: serde_json::Value =
        serde_json::from_slice(&crashloop("fine-1", "firing", "2026-11-25T10:00:00Z")).unwrap();
    let mut bad = body["alerts"][0].clone();
    bad["labels"]["pod"] = serde_json::json!("evil\u{0}pod");
    body["alerts"].as_array_mut().unwrap().push(bad);
    let (code, text) = a
        .post(&serde_json::to_vec(&body).unwrap(), Some(TOKEN))
        .await;
    assert_eq!(code, 400, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["error"],
        "alerts[1] (\"KubePodCrashLooping\"): label \"pod\" value has the control character '\\0' at byte 4; control characters are refused, nothing of this notification was accepted"
    );
    // An escape sequence in a label name too.
    let mut esc = body.clone();
    esc["alerts"].as_array_mut().unwrap().truncate(1);
    esc["alerts"][0]["labels"]["x\u{1b}[2J"] = serde_json::json!("1");
    let (code, text) = a
        .post(&serde_json::to_vec(&esc).unwrap(), Some(TOKEN))
        .await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("name has the control character"), "{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(inbox_bytes(&a), before, "the inbox changed");
    assert!(a.audit().is_empty(), "{:#?}", a.audit());
    assert_eq!(
        a.metric("remediate_http_rejected_requests_total{reason=\"invalid_payload\"}")
            .await,
        Some(2.0)
    );
}

/// One body with one crashloop alert per pod name.
fn storm(pods: &[String]) -> Vec<u8> {
    let mut body: serde_json::Value =
        serde_json::from_slice(&crashloop("x", "firing", "2026-11-25T10:00:00Z")).unwrap();
    let one = body["alerts"][0].clone();
    body["alerts"] = pods
        .iter()
        .map(|p| {
            let mut a = one.clone();
            a["labels"]["pod"] = serde_json::json!(p);
            a
        })
        .collect();
    serde_json::to_vec(&body).unwrap()
}

#[tokio::test]
async fn a_notification_larger_than_the_queue_is_accepted_in_part_or_refused_never_503_forever() {
    let pods: Vec<String> = (0..8).map(|i| format!("big-{i}")).collect();
    // accept-part (the default): the first 5 are accepted and decided, the
    // other 3 reported in the answer, the log and the metrics.
    let d = dir();
    let a = start_agent(
        d.path(),
        &format!("{BASE}webhook: {{ queueCapacity: 5 }}\n"),
    );
    let (code, text) = a.post(&storm(&pods), Some(TOKEN)).await;
    assert_eq!(code, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["status"], "partial");
    assert_eq!(
        (v["accepted"].as_u64(), v["refused"].as_u64()),
        (Some(5), Some(3))
    );
    assert!(
        v["error"].as_str().unwrap().starts_with("alerts[5..8] refused: the notification carries 8 alerts, more than webhook.queueCapacity (5)"),
        "{v}"
    );
    records_for(&a, "big-4", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recs = a.audit();
    for (i, p) in pods.iter().enumerate() {
        let n = count(&recs, |r| r.target.get("name") == Some(p));
        assert_eq!(n, usize::from(i < 5), "{p}: {recs:#?}");
    }
    assert_eq!(
        a.metric("remediate_webhook_alerts_refused_total").await,
        Some(3.0)
    );
    assert!(
        a.log_text().contains("refused alerts[5..8] (3)"),
        "{}",
        a.log_text()
    );
    drop(a);

    // refuse: 413 with the reason, which Alertmanager does not retry; nothing kept.
    let d = dir();
    let a = start_agent(
        d.path(),
        &format!("{BASE}webhook: {{ queueCapacity: 5, oversizedNotification: refuse }}\n"),
    );
    let (code, text) = a.post(&storm(&pods), Some(TOKEN)).await;
    assert_eq!(code, 413, "{text}");
    assert!(text.contains("nothing accepted (webhook.oversizedNotification: refuse): set the Alertmanager receiver's max_alerts to at most 5"), "{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.audit().is_empty());
    assert_eq!(inbox_bytes(&a), 0);
    // A notification that fits is still accepted whole.
    let (code, _) = a.post(&storm(&pods[..5]), Some(TOKEN)).await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn a_reload_reports_every_broken_file_and_an_emptied_playbook_directory_is_refused() {
    let d = dir();
    let a = start_agent(d.path(), &format!("{BASE}reload: {{ interval: 200ms }}\n"));
    // Two files that cannot be read as text, one in each directory.
    std::fs::write(d.path().join("playbooks/bad-one.yaml"), b"kind: \xff\xfe\n").unwrap();
    std::fs::write(d.path().join("policies/bad-two.yaml"), b"kind: \xff\xfe\n").unwrap();
    a.wait_log(&["bad-one.yaml", "bad-two.yaml"]).await;
    assert_eq!(a.metric("remediate_config_errors").await, Some(2.0));
    assert_eq!(
        a.metric("remediate_config_last_reload_successful").await,
        Some(0.0)
    );
    std::fs::remove_file(d.path().join("playbooks/bad-one.yaml")).unwrap();
    std::fs::remove_file(d.path().join("policies/bad-two.yaml")).unwrap();
    a.wait_log(&["reloaded playbooks and policies"]).await;
    let failures = a
        .metric("remediate_config_reloads_total{result=\"failure\"}")
        .await
        .unwrap();

    // Emptied: refused, counted, logged; the old set still decides.
    for f in std::fs::read_dir(d.path().join("playbooks")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    a.wait_log(&["no playbooks: the directory holds no playbook"])
        .await;
    assert_eq!(
        a.metric("remediate_config_reloads_total{result=\"failure\"}")
            .await,
        Some(failures + 1.0)
    );
    assert_eq!(
        a.metric("remediate_config_last_reload_successful").await,
        Some(0.0)
    );
    assert_eq!(a.metric("remediate_playbooks_loaded").await, Some(2.0));
    assert_eq!(decide(&a, "still-1").await, "dry-run");
    drop(a);

    // Starting on the empty directory is refused too, unless allowed.
    let cfg = d.path().join("agent.yaml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_remediate"))
        .args(["agent", "--check", "--config"])
        .arg(&cfg)
        .env("REMEDIATE_WEBHOOK_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no playbooks"));
    let a = start_agent(d.path(), &format!("{BASE}reload: {{ allowEmpty: true }}\n"));
    assert_eq!(a.metric("remediate_playbooks_loaded").await, Some(0.0));
    assert_eq!(
        a.metric("remediate_config_last_reload_successful").await,
        Some(1.0)
    );
}
