//! Evidence end to end: a real container on the machine's Docker Engine
//! crashes after logging a connection string with a password and a page of
//! noise; an alert runs the bundled restart playbook through the agent
//! binary, and the Slack, Discord and webhook messages a local receiver gets
//! carry what the driver saw (exit code, OOM flag, the newest log lines),
//! with the secret scrubbed and within each platform's documented limits
//! (Slack: a section's text 3,000 characters, 50 blocks; Discord: 25
//! fields, a field value 1,024 and an embed 6,000 characters).

mod common;

use std::time::Duration;

use serde_json::Value;

use common::docker::{busybox, docker, unique, Cleanup};
use common::receiver::Receiver;
use common::{alert_body, eventually, repo, start_agent};

/// With the bundled default policy's blast radius: restarting a container
/// that is down takes nothing more down (allowed); restarting the only
/// running replica would take 100 % of it down (blocked).
const POLICY: &str = "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec:\n  cooldown: 10m\n  blastRadius: { maxTargetsPerRun: 5, maxUnavailableFraction: 0.25 }\n";

/// A state dir with the bundled Docker OOM playbook and [`POLICY`].
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("playbooks")).unwrap();
    std::fs::create_dir_all(d.join("policies")).unwrap();
    std::fs::copy(
        repo("playbooks/docker-container-oom-restart.yaml"),
        d.join("playbooks/docker-container-oom-restart.yaml"),
    )
    .unwrap();
    std::fs::write(d.join("policies/default.yaml"), POLICY).unwrap();
    dir
}

/// The alert the bundled playbook answers, for container `name`.
fn oom_alert(name: &str) -> Vec<u8> {
    alert_body(
        "firing",
        &[
            ("alertname", "ContainerOOMKilled"),
            ("name", name),
            ("node", "ev-node"),
        ],
        "2026-11-25T10:00:00Z",
    )
}

/// Characters of a JSON string value, as the platforms count them.
fn chars(v: &Value) -> usize {
    v.as_str().map_or(0, |s| s.chars().count())
}

#[tokio::test]
async fn a_restart_notification_carries_the_scrubbed_capped_evidence_to_slack_discord_and_webhooks()
{
    let rx = Receiver::start().await;
    let dir = setup();
    let d = dir.path();

    // First run: 30 long lines, a connection string with a password, the
    // fatal line last,
    // exit 3. Later runs stay up (what the restart is verified by).
    let name = unique("evidence");
    let _c = Cleanup(vec![vec!["rm".into(), "-f".into(), name.clone()]]);
    docker(&[
        "run", "-d", "--name", &name, "--label", "remediate-test=1", busybox(), "sh", "-c",
        "if [ ! -f /tmp/ran ]; then touch /tmp/ran; \
         i=0; while [ $i -lt 30 ]; do echo \"worker $i: retrying the upstream after a timeout, backing off and reading the queue again, batch size 512, window 30s\"; i=$((i+1)); done; \
         echo 'connecting to postgres://app:hunter2@db:5432/orders'; echo 'fatal: cannot reach db, giving up'; exit 3; fi; sleep 3600",
    ]);
    let exited = eventually(Duration::from_secs(30), || {
        (docker(&["inspect", "-f", "{{.State.Status}}", &name]) == "exited").then_some(())
    })
    .await;
    assert!(exited.is_some(), "{name} did not exit");

    let a = start_agent(
        d,
        &format!(
            "node: ev-node\nlisten: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: {{ enabled: false }}\nbackends: {{ docker: {{}} }}
notify:
  - {{ name: slack, kind: slack, url: '{u}/slack', on: [execute] }}
  - {{ name: discord, kind: discord, url: '{u}/discord', on: [execute] }}
  - {{ name: hook, kind: webhook, url: '{u}/hook', on: [execute] }}
",
            u = rx.url
        ),
    );
    let (status, body) = a.post(&oom_alert(&name), Some(common::TOKEN)).await;
    assert_eq!(status, 200, "{body}");

    // The notice of the finished run (its evidence is on the verified step).
    let done = |v: &Value| v.to_string().contains("last log lines");
    let slack = rx.wait("/slack", done).await;
    let discord = rx.wait("/discord", done).await;
    let hook = rx.wait("/hook", done).await;

    for (sink, v) in [("slack", &slack), ("discord", &discord), ("hook", &hook)] {
        let text = v.to_string();
        assert!(
            !text.contains("hunter2"),
            "{sink}: the password went out: {text}"
        );
        assert!(text.contains("postgres://***:***@db"), "{sink}: {text}");
    }

    // Webhook: the evidence as a map, whole (within the engine's caps).
    let ev = &hook["evidence"];
    assert_eq!(ev["exit code"], "3", "{hook:#}");
    assert_eq!(ev["OOM-killed"], "no", "{hook:#}");
    let log = ev["last log lines"].as_str().unwrap();
    assert!(log.ends_with("fatal: cannot reach db, giving up"), "{log}");
    assert!(
        log.len() <= remediate::engine::evidence::MAX_VALUE_BYTES + 32,
        "{}",
        log.len()
    );

    // Slack: one evidence section within 3,000 characters; the newest log
    // line kept; at most 50 blocks.
    let blocks = slack["blocks"].as_array().unwrap();
    assert!(blocks.len() <= 50);
    for b in blocks {
        assert!(chars(&b["text"]["text"]) <= 3000, "{b:#}");
    }
    let section = blocks
        .iter()
        .map(|b| b["text"]["text"].as_str().unwrap_or(""))
        .find(|t| t.contains("*last log lines*"))
        .unwrap_or_else(|| panic!("no evidence section: {slack:#}"));
    assert!(section.contains("*exit code*: 3"), "{section}");
    assert!(
        section.contains("fatal: cannot reach db, giving up"),
        "{section}"
    );
    assert!(chars(&slack["blocks"][0]["text"]["text"]) <= 150);

    // Discord: fields within 1,024 characters, 25 fields, 6,000 in all.
    let embed = &discord["embeds"][0];
    let fields = embed["fields"].as_array().unwrap();
    assert!(fields.len() <= 25);
    let mut total = chars(&embed["title"]) + chars(&embed["description"]);
    for f in fields {
        assert!(
            chars(&f["name"]) <= 256 && chars(&f["value"]) <= 1024,
            "{f:#}"
        );
        total += chars(&f["name"]) + chars(&f["value"]);
    }
    assert!(total <= 6000, "{total}");
    let field = |n: &str| {
        fields
            .iter()
            .find(|f| f["name"] == n)
            .unwrap_or_else(|| panic!("no {n} field: {embed:#}"))["value"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(field("exit code"), "3");
    assert!(field("last log lines").contains("fatal: cannot reach db, giving up"));

    // The audit keeps the same evidence for `remediate report` and replay.
    let recs = a.audit();
    let verified = recs
        .iter()
        .find(|r| r.phase == remediate::audit::Phase::Verified)
        .unwrap_or_else(|| panic!("not verified: {recs:#?}"));
    assert_eq!(verified.evidence["exit code"], "3");
    assert!(!serde_json::to_string(verified).unwrap().contains("hunter2"));
}

#[tokio::test]
async fn restarting_a_running_standalone_container_is_blocked_by_the_blast_radius_and_changes_nothing(
) {
    let dir = setup();
    let d = dir.path();
    let name = unique("blast");
    let _c = Cleanup(vec![vec!["rm".into(), "-f".into(), name.clone()]]);
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        "remediate-test=1",
        busybox(),
        "sleep",
        "3600",
    ]);
    let started = docker(&["inspect", "-f", "{{.State.StartedAt}}", &name]);
    let a = start_agent(
        d,
        "node: ev-node\nlisten: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: { enabled: false }\nbackends: { docker: {} }\n",
    );
    let (status, body) = a.post(&oom_alert(&name), Some(common::TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let failed = eventually(Duration::from_secs(30), || {
        a.audit()
            .into_iter()
            .find(|r| r.phase == remediate::audit::Phase::Failed)
    })
    .await
    .unwrap_or_else(|| panic!("no failed record: {}", a.log_text()));
    assert!(
        failed.outcome.contains(&format!(
            "0 of 1 replicas of container {name} are unavailable; restarting this available one would make 1 (100%)"
        )),
        "{}",
        failed.outcome
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.StartedAt}}", &name]),
        started,
        "not restarted"
    );
}
