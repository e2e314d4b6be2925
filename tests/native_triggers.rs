//! Native triggers against the real components: the machine's Docker
//! Engine. A container OOM-killed by the kernel is seen on the engine's
//! event stream, matched by the bundled `docker-container-oom-restart`
//! playbook, restarted and verified, with no Prometheus in between; one
//! killed while the agent was down is caught up from the container list.

mod common;

use std::time::Duration;

use remediate::audit::{Phase, Record};

use common::docker::{busybox, docker, unique, Cleanup};
use common::{eventually, repo, start_agent, AgentProc};

const POLICY: &str =
    "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec:\n  cooldown: 10m\n";

/// The agent watches only the containers of one test (label `run=<id>`):
/// tests run side by side on one engine.
fn config(run: &str) -> String {
    format!("node: native-node\nlisten: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: {{ enabled: false }}\nbackends: {{ docker: {{}} }}\ntriggers: {{ docker: {{ enabled: true, labels: [remediate-native-run={run}] }} }}\n")
}

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

/// Runs a container that the kernel OOM-kills on its first run only.
fn oom_container(name: &str) {
    let run = format!("remediate-native-run={name}");
    docker(&[
        "run", "-d", "--name", name, "--label", "remediate-test=1", "--label", &run, "--memory", "8m", "--memory-swap", "8m",
        busybox(), "sh", "-c",
        "if [ ! -f /tmp/ran ]; then touch /tmp/ran; echo 'loading 64 MiB into memory'; head -c 67108864 /dev/zero | tail; exit 137; fi; sleep 3600",
    ]);
}

fn records_for<'a>(a: &AgentProc, name: &'a str) -> impl Fn() -> Option<Vec<Record>> + 'a {
    let log = a.dir.join("state/audit.jsonl");
    move || {
        let recs: Vec<Record> = remediate::audit::read(&log)
            .ok()?
            .records
            .into_iter()
            .filter(|r| r.target.get("name").map(String::as_str) == Some(name))
            .collect();
        recs.iter()
            .any(|r| r.phase == Phase::Verified || r.phase == Phase::Failed)
            .then_some(recs)
    }
}

fn assert_restarted(recs: &[Record], name: &str) {
    let verified = recs
        .iter()
        .find(|r| r.phase == Phase::Verified)
        .unwrap_or_else(|| panic!("{name}: not verified: {recs:#?}"));
    assert_eq!(verified.playbook, "docker-container-oom-restart");
    assert_eq!(
        verified.trigger.alertname.as_deref(),
        Some("ContainerOOMKilled")
    );
    assert_eq!(verified.trigger.labels["remediate_source"], "docker");
    assert_eq!(verified.trigger.labels["node"], "native-node");
    assert!(
        verified
            .outcome
            .starts_with(&format!("container {name} running again since")),
        "{}",
        verified.outcome
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", name]),
        "true",
        "{name} runs again"
    );
    // What on-call would look up is in the record: the state the plan
    // read (with the OOM flag and exit code) and the last log lines.
    let ev = &verified.evidence;
    for k in ["state", "OOM-killed", "exit code", "restarts"] {
        assert!(ev.contains_key(k), "{k}: {ev:?}");
    }
    assert!(
        ev.get("last log lines")
            .is_some_and(|l| l.contains("loading 64 MiB into memory")),
        "{ev:?}"
    );
}

/// A container that had exited before the plan read it: the engine's
/// OOM flag and exit code are final, and in the evidence. (Planned at the
/// `oom` event itself, the container may still be exiting: the evidence
/// then says what the plan read, e.g. `running`.)
fn assert_oom_evidence(recs: &[Record]) {
    let verified = recs.iter().find(|r| r.phase == Phase::Verified).unwrap();
    let ev = &verified.evidence;
    assert_eq!(
        ev.get("OOM-killed").map(String::as_str),
        Some("yes"),
        "{ev:?}"
    );
    assert_eq!(
        ev.get("exit code").map(String::as_str),
        Some("137"),
        "{ev:?}"
    );
    assert!(
        ev.get("state").is_some_and(|s| s.starts_with("exited")),
        "{ev:?}"
    );
}

#[tokio::test]
async fn an_oom_kill_on_the_engine_is_detected_restarted_and_verified_without_prometheus() {
    let dir = setup();
    let name = unique("native-oom");
    let a = start_agent(dir.path(), &config(&name));
    let _c = Cleanup(vec![vec!["rm".into(), "-f".into(), name.clone()]]);
    oom_container(&name);
    let recs = eventually(Duration::from_secs(60), records_for(&a, &name))
        .await
        .unwrap_or_else(|| panic!("no run for {name}:\n{}", a.log_text()));
    assert_restarted(&recs, &name);
    // One episode, one run: the die after the kill is not a run of its own,
    // and the start after the restart resolves the alert (which runs nothing).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let planned = remediate::audit::read(&a.dir.join("state/audit.jsonl"))
        .unwrap()
        .records
        .into_iter()
        .filter(|r| {
            r.target.get("name") == Some(&name)
                && r.phase == Phase::Planned
                && r.decision == "execute"
        })
        .count();
    assert_eq!(planned, 1);
}

#[tokio::test]
async fn an_oom_kill_while_the_agent_was_down_is_caught_up_from_the_container_list() {
    let dir = setup();
    let name = unique("native-missed");
    let _c = Cleanup(vec![vec!["rm".into(), "-f".into(), name.clone()]]);
    oom_container(&name);
    for _ in 0..600 {
        if docker(&["inspect", "-f", "{{.State.Status}}", &name]) == "exited" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.OOMKilled}}", &name]),
        "true"
    );
    let a = start_agent(dir.path(), &config(&name));
    let recs = eventually(Duration::from_secs(60), records_for(&a, &name))
        .await
        .unwrap_or_else(|| panic!("no run for {name}:\n{}", a.log_text()));
    assert_restarted(&recs, &name);
    assert_oom_evidence(&recs);
    // A restart of the agent lists the container again: the same episode,
    // a duplicate, not a second run.
    drop(a);
    let a = start_agent(dir.path(), &config(&name));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let planned = remediate::audit::read(&a.dir.join("state/audit.jsonl"))
        .unwrap()
        .records
        .into_iter()
        .filter(|r| {
            r.target.get("name") == Some(&name)
                && r.phase == Phase::Planned
                && r.decision == "execute"
        })
        .count();
    assert_eq!(planned, 1, "{}", a.log_text());
}
