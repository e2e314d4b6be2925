//! The agent's state against the real agent process: a full disk (a 2 MiB
//! tmpfs as the state directory), the audit log deleted under the agent,
//! rotation with huge alerts, and one alert sent by HA replicas with
//! jittered starts. In each, nothing accepted is lost, nothing runs twice,
//! and the limits hold across a restart.
//!
//! The action is `host.command` appending the target to a file outside the
//! state directory, so "ran once" is counted from the side effect itself.

mod common;

use std::path::Path;
use std::time::Duration;

use remediate::audit;

use common::{alert_body, eventually, start_agent, AgentProc, TOKEN};

fn playbook(marker: &Path) -> String {
    format!(
        r#"apiVersion: remediate/v1
kind: Playbook
metadata: {{ name: mark }}
spec:
  triggers: [{{ alert: ['alertname="Mark"'] }}]
  target: {{ kind: host, node: fault-node }}
  values: {{}}
  steps:
    - action: host.command
      with: {{ argv: [sh, -c, 'echo "$0" >> {}', "{{{{ labels.target }}}}"] }}
      timeout: 20s
  verify: {{ timeout: 10s }}
"#,
        marker.display()
    )
}

const BASE: &str = "node: fault-node\nlisten: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: { enabled: false }\n";
/// Each test alert is its own episode (exact startsAt dedupe).
const CONFIG: &str = concat!(
    "node: fault-node\nlisten: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: { enabled: false }\n",
    "webhook: { dedupeTolerance: 0s }\n"
);

fn setup(policy: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("playbooks")).unwrap();
    std::fs::create_dir_all(d.join("policies")).unwrap();
    let marker = d.join("ran.txt");
    std::fs::write(d.join("playbooks/mark.yaml"), playbook(&marker)).unwrap();
    std::fs::write(
        d.join("policies/default.yaml"),
        format!("apiVersion: remediate/v1\nkind: Policy\nmetadata: {{ name: default }}\nspec:\n{policy}"),
    )
    .unwrap();
    (dir, marker)
}

fn mark(target: &str, starts: &str) -> Vec<u8> {
    alert_body(
        "firing",
        &[("alertname", "Mark"), ("target", target)],
        starts,
    )
}

fn ran(marker: &Path) -> Vec<String> {
    std::fs::read_to_string(marker)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn times_ran(marker: &Path, target: &str) -> usize {
    ran(marker).iter().filter(|l| *l == target).count()
}

/// The whole log reads back with no torn or damaged line.
fn assert_log_whole(a: &AgentProc) {
    let r = audit::read_all(&a.dir.join("state/audit.jsonl")).unwrap();
    assert!(r.skipped.is_empty(), "torn lines {:?}", r.skipped);
    assert!(r.damaged.is_empty(), "damaged lines {:?}", r.damaged);
}

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Mounts a tmpfs of `size` at `at` (the tests run as root, as in CI).
fn tmpfs(at: &Path, size: &str) -> Tmpfs {
    std::fs::create_dir_all(at).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status()
        .expect("run mount");
    assert!(
        st.success(),
        "mounting a {size} tmpfs at {} failed: this test needs root (CI runs as root) to make a small disk it can fill",
        at.display()
    );
    Tmpfs(at.to_path_buf())
}

/// Fills the filesystem of `dir` with one file until it is full.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    // Partial blocks too.
    while f.write_all(&[0u8]).is_ok() {}
    let _ = f.sync_all();
    p
}

#[tokio::test]
async fn a_full_disk_gets_no_200_for_what_it_cannot_keep_and_recovers_by_itself_running_each_alert_once(
) {
    let (dir, marker) = setup("  rateLimits: []\n");
    let d = dir.path();
    let _mount = tmpfs(&d.join("state"), "2m");
    let a = start_agent(d, CONFIG);
    // Before the disk fills: one alert runs.
    assert_eq!(
        a.post(&mark("t-first", "2026-11-25T10:00:00Z"), Some(TOKEN))
            .await
            .0,
        200
    );
    eventually(Duration::from_secs(20), || {
        (times_ran(&marker, "t-first") == 1).then_some(())
    })
    .await
    .expect("the first alert ran");

    let filler = fill(&d.join("state"));
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for i in 0..40 {
        let t = format!("t-{i}");
        let (code, text) = a.post(&mark(&t, "2026-11-25T10:00:00Z"), Some(TOKEN)).await;
        match code {
            200 => accepted.push(t),
            500 | 503 => refused.push(t),
            other => panic!("unexpected {other} for {t}: {text}"),
        }
    }
    assert!(
        !refused.is_empty(),
        "a full disk must refuse what it cannot record (accepted {accepted:?})"
    );
    // While storage fails: /readyz is 503 and the metric says so.
    let mut saw_unready = false;
    for _ in 0..100 {
        if a.get("/readyz").await.0 == 503
            && a.metric("remediate_storage_failing").await == Some(1.0)
        {
            saw_unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_unready, "readyz stayed 200 while the disk was full");
    // Nothing refused ran; nothing ran twice.
    for t in &refused {
        assert_eq!(times_ran(&marker, t), 0, "{t} was refused yet ran");
    }

    // Space returns: the agent recovers with no help.
    std::fs::remove_file(&filler).unwrap();
    let mut ready = false;
    for _ in 0..300 {
        if a.get("/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ready,
        "the agent did not recover once space returned:\n{}",
        a.log_text()
    );
    // Alertmanager retries what was refused.
    for t in &refused {
        let (code, text) = a.post(&mark(t, "2026-11-25T10:00:00Z"), Some(TOKEN)).await;
        assert_eq!(code, 200, "{t}: {text}");
    }
    let all: Vec<String> = accepted.iter().chain(&refused).cloned().collect();
    eventually(Duration::from_secs(60), || {
        all.iter().all(|t| times_ran(&marker, t) >= 1).then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "not every accepted alert ran: ran {:?}\n{}",
            ran(&marker),
            a.log_text()
        )
    });
    // Give any double run a moment to show.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for t in all.iter().chain(std::iter::once(&"t-first".to_string())) {
        assert_eq!(
            times_ran(&marker, t),
            1,
            "{t} ran {} times",
            times_ran(&marker, t)
        );
    }
    assert_log_whole(&a);
    // Every run is in the audit once: planned, applied, verified.
    let recs = audit::read_all(&a.dir.join("state/audit.jsonl"))
        .unwrap()
        .records;
    for t in &all {
        let verified = recs
            .iter()
            .filter(|r| {
                r.phase == audit::Phase::Verified && r.trigger.labels.get("target") == Some(t)
            })
            .count();
        assert_eq!(verified, 1, "{t}: {verified} verified records");
    }
    // A restart starts (no manual repair) and runs nothing again.
    drop(a);
    let a = start_agent(d, CONFIG);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(a.get("/readyz").await.0, 200);
    for t in &all {
        assert_eq!(times_ran(&marker, t), 1, "{t} ran again after the restart");
    }
    assert_log_whole(&a);
}

#[tokio::test]
async fn the_audit_log_deleted_under_the_agent_is_reopened_and_the_limits_survive_a_restart() {
    let (dir, marker) = setup("  cooldown: 1h\n");
    let d = dir.path();
    let a = start_agent(d, CONFIG);
    assert_eq!(
        a.post(&mark("x", "2026-11-25T10:00:00Z"), Some(TOKEN))
            .await
            .0,
        200
    );
    eventually(Duration::from_secs(20), || {
        (times_ran(&marker, "x") == 1).then_some(())
    })
    .await
    .expect("x ran");
    let log = d.join("state/audit.jsonl");
    eventually(Duration::from_secs(10), || {
        audit::read(&log)
            .unwrap()
            .records
            .iter()
            .any(|r| r.phase == audit::Phase::Verified)
            .then_some(())
    })
    .await
    .unwrap();
    std::fs::remove_file(&log).unwrap();
    // A new episode: suppressed by the cooldown, recorded in a new log.
    assert_eq!(
        a.post(&mark("x", "2026-11-25T10:30:00Z"), Some(TOKEN))
            .await
            .0,
        200
    );
    let rec = eventually(Duration::from_secs(10), || {
        audit::read(&log)
            .ok()?
            .records
            .into_iter()
            .find(|r| r.decision == "suppressed")
    })
    .await
    .expect("the record after the deletion is in a new audit.jsonl");
    assert!(rec.reason.starts_with("cooldown 1h"), "{}", rec.reason);
    assert_eq!(a.metric("remediate_storage_reopened").await, Some(1.0));
    assert!(a
        .log_text()
        .contains("the audit log was replaced or deleted under the agent"));
    // After a restart the target still does not run inside its hour.
    drop(a);
    let a = start_agent(d, CONFIG);
    assert_eq!(
        a.post(&mark("x", "2026-11-25T10:45:00Z"), Some(TOKEN))
            .await
            .0,
        200
    );
    eventually(Duration::from_secs(10), || {
        (a.audit()
            .iter()
            .filter(|r| r.decision == "suppressed")
            .count()
            == 2)
            .then_some(())
    })
    .await
    .expect("the third episode is suppressed");
    assert_eq!(times_ran(&marker, "x"), 1);
}

#[tokio::test]
async fn rotation_and_huge_alerts_cannot_push_an_execution_out_of_the_limits() {
    let (dir, marker) = setup("  cooldown: 1h\n");
    let d = dir.path();
    let config = format!("{CONFIG}audit: {{ maxBytes: 16Ki, keep: 1 }}\n");
    let a = start_agent(d, &config);
    assert_eq!(
        a.post(&mark("y", "2026-11-25T10:00:00Z"), Some(TOKEN))
            .await
            .0,
        200
    );
    eventually(Duration::from_secs(20), || {
        (times_ran(&marker, "y") == 1).then_some(())
    })
    .await
    .expect("y ran");
    // Twelve episodes carrying 900 KB annotations each.
    for i in 0..12 {
        let mut body: serde_json::Value =
            serde_json::from_slice(&mark("y", &format!("2026-11-25T11:{i:02}:00Z"))).unwrap();
        body["alerts"][0]["annotations"]["description"] = serde_json::json!("d".repeat(900 * 1000));
        let (code, text) = a
            .post(&serde_json::to_vec(&body).unwrap(), Some(TOKEN))
            .await;
        assert_eq!(code, 200, "{text}");
    }
    let log = d.join("state/audit.jsonl");
    let last = eventually(Duration::from_secs(30), || {
        audit::read_all(&log)
            .unwrap()
            .records
            .into_iter()
            .find(|r| {
                r.trigger.starts_at.map(|t| t.to_rfc3339())
                    == Some("2026-11-25T11:11:00+00:00".into())
            })
    })
    .await
    .expect("the twelfth episode is decided");
    assert_eq!(last.decision, "suppressed", "{}", last.reason);
    assert!(last.reason.starts_with("cooldown 1h"), "{}", last.reason);
    // What one alert puts in the audit is capped, and the cut is marked.
    let desc = &last.trigger.annotations["description"];
    assert!(desc.len() < 5000, "{} bytes kept", desc.len());
    assert!(
        desc.ends_with("…[cut 895904 bytes]"),
        "{}",
        &desc[desc.len() - 40..]
    );
    // The execution has rotated out of every kept audit file...
    let kept = audit::read_all(&log).unwrap().records;
    assert!(
        !kept.iter().any(|r| r.decision == "execute"),
        "the execution should have rotated out for this test to mean anything"
    );
    // ...and after a restart the cooldown still holds.
    drop(a);
    let a = start_agent(d, &config);
    assert_eq!(
        a.post(&mark("y", "2026-11-25T12:00:00Z"), Some(TOKEN))
            .await
            .0,
        200
    );
    let r = eventually(Duration::from_secs(10), || {
        a.audit().into_iter().find(|r| {
            r.trigger.starts_at.map(|t| t.to_rfc3339()) == Some("2026-11-25T12:00:00+00:00".into())
        })
    })
    .await
    .expect("decided");
    assert_eq!(r.decision, "suppressed", "{}", r.reason);
    assert!(r.reason.starts_with("cooldown 1h"), "{}", r.reason);
    assert_eq!(times_ran(&marker, "y"), 1);
}

#[tokio::test]
async fn one_alert_from_two_prometheus_replicas_a_second_apart_runs_once_without_a_cooldown() {
    let (dir, marker) = setup("  rateLimits: []\n");
    let d = dir.path();
    // The default tolerance (2m).
    let a = start_agent(d, BASE);
    let (c1, t1) = a
        .post(&mark("ha", "2026-11-25T10:00:00Z"), Some(TOKEN))
        .await;
    let (c2, t2) = a
        .post(&mark("ha", "2026-11-25T10:00:01Z"), Some(TOKEN))
        .await;
    assert_eq!((c1, c2), (200, 200), "{t1} {t2}");
    assert!(t2.contains("\"duplicates\":1"), "{t2}");
    eventually(Duration::from_secs(20), || {
        (times_ran(&marker, "ha") == 1).then_some(())
    })
    .await
    .expect("ran");
    // A later episode (past the tolerance) is new.
    assert_eq!(
        a.post(&mark("ha", "2026-11-25T10:10:00Z"), Some(TOKEN))
            .await
            .0,
        200
    );
    eventually(Duration::from_secs(20), || {
        (times_ran(&marker, "ha") == 2).then_some(())
    })
    .await
    .expect("the new episode ran");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(times_ran(&marker, "ha"), 2);
    assert_eq!(
        a.metric("remediate_duplicate_deliveries_total").await,
        Some(1.0)
    );
}

/// An audit record of an executed run of the `mark` playbook on `target`.
fn executed(
    id: &str,
    target: &str,
    at: chrono::DateTime<chrono::Utc>,
    phase: audit::Phase,
) -> audit::Record {
    let labels: std::collections::BTreeMap<String, String> = [
        ("alertname".to_string(), "Mark".to_string()),
        ("target".to_string(), target.to_string()),
    ]
    .into();
    audit::Record {
        ts: at,
        id: id.into(),
        trigger: std::sync::Arc::new(audit::TriggerRef {
            kind: remediate::event::TriggerKind::Alert,
            alertname: Some("Mark".into()),
            fingerprint: remediate::event::fingerprint(&labels),
            status: remediate::event::Status::Firing,
            labels,
            annotations: Default::default(),
            values: Default::default(),
            starts_at: Some(at),
        }),
        playbook: "mark".into(),
        action: "host.command".into(),
        target: [
            ("kind".to_string(), "host".to_string()),
            ("node".to_string(), "fault-node".to_string()),
        ]
        .into(),
        params: serde_json::json!({}),
        decision: "execute".into(),
        reason: "all gates passed".into(),
        dry_run: false,
        phase,
        outcome: "ran".into(),
        duration_ms: 1,
        node: "fault-node".into(),
        policy: "default".into(),
        step: 0,
        decided_at: Some(at),
        evidence: Default::default(),
    }
}

#[tokio::test]
async fn an_agent_upgraded_over_a_journal_state_dir_keeps_its_limits_and_pending_events() {
    let (dir, marker) = setup("  cooldown: 1h\n");
    let d = dir.path();
    let state = d.join("state");
    std::fs::create_dir_all(&state).unwrap();
    // What the previous version left: an execution ten minutes ago in the
    // audit, and an accepted, undecided event in its inbox journal.
    let before = chrono::Utc::now() - chrono::Duration::minutes(10);
    let mut log = audit::Writer::open(&state.join("audit.jsonl")).unwrap();
    log.append(&executed("old-1", "z", before, audit::Phase::Planned))
        .unwrap();
    log.append(&executed("old-1", "z", before, audit::Phase::Verified))
        .unwrap();
    drop(log);
    let body = mark("w", "2026-11-25T09:00:00Z");
    let ev = remediate::trigger::alertmanager::Payload::parse(&body)
        .unwrap()
        .events()
        .remove(0);
    let line = serde_json::json!({"t": "accepted", "seq": 1, "key": ev.delivery_key(), "at": before, "event": ev});
    std::fs::write(state.join("inbox.jsonl"), format!("{line}\n")).unwrap();

    let a = start_agent(d, CONFIG);
    // The event the old inbox held is decided; the run the old audit holds
    // (the same host, ten minutes ago) keeps its cooldown.
    let decided = |who: &'static str| {
        let a = &a;
        move || {
            a.audit().into_iter().find(|r| {
                r.trigger.labels.get("target").map(String::as_str) == Some(who) && r.id != "old-1"
            })
        }
    };
    let w = eventually(Duration::from_secs(20), decided("w"))
        .await
        .unwrap_or_else(|| panic!("the old inbox's event is decided: {}", a.log_text()));
    assert_eq!(w.decision, "suppressed", "{}", w.reason);
    assert!(w.reason.starts_with("cooldown 1h"), "{}", w.reason);
    assert_eq!(
        a.post(&mark("z", "2026-11-25T10:00:00Z"), Some(TOKEN))
            .await
            .0,
        200
    );
    let z = eventually(Duration::from_secs(10), decided("z"))
        .await
        .expect("z decided");
    assert_eq!(z.decision, "suppressed", "{}", z.reason);
    assert!(z.reason.starts_with("cooldown 1h"), "{}", z.reason);
    assert!(ran(&marker).is_empty(), "{:?}", ran(&marker));
    assert!(state.join("inbox.jsonl.upgraded").exists());
    assert!(a.log_text().contains("upgraded the state directory"));
}

#[tokio::test]
async fn a_damaged_state_store_stops_the_agent_with_the_file_named() {
    let (dir, marker) = setup("  cooldown: 1h\n");
    let d = dir.path();
    let mut a = start_agent(d, CONFIG);
    assert_eq!(
        a.post(&mark("q", "2026-11-25T10:00:00Z"), Some(TOKEN))
            .await
            .0,
        200
    );
    eventually(Duration::from_secs(20), || {
        (times_ran(&marker, "q") == 1).then_some(())
    })
    .await
    .expect("q ran");
    // A clean stop checkpoints everything into state.db.
    a.signal("TERM");
    assert_eq!(a.wait_exit(Duration::from_secs(30)), Some(0));
    let db = d.join("state/state.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let n = bytes.len();
    assert!(n > 8192, "{n}");
    // Garbage over the pages after the header page.
    for b in &mut bytes[4096..n] {
        *b = 0xA5;
    }
    std::fs::write(&db, bytes).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_remediate"))
        .current_dir(d)
        .args(["agent", "--check", "--config", "agent.yaml"])
        .env("REMEDIATE_WEBHOOK_TOKEN", TOKEN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("state/state.db"), "{err}");
    assert!(err.contains("state store"), "{err}");
}

#[tokio::test]
async fn the_state_store_deleted_under_the_agent_is_written_again_and_the_limits_survive_a_restart()
{
    let (dir, marker) = setup("  cooldown: 1h\n");
    let d = dir.path();
    let a = start_agent(d, CONFIG);
    assert_eq!(
        a.post(&mark("s", "2026-11-25T10:00:00Z"), Some(TOKEN))
            .await
            .0,
        200
    );
    eventually(Duration::from_secs(20), || {
        (times_ran(&marker, "s") == 1).then_some(())
    })
    .await
    .expect("s ran");
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(d.join("state").join(f));
    }
    eventually(Duration::from_secs(20), || {
        (d.join("state/state.db").exists()
            && a.log_text()
                .contains("the state store's file was replaced or deleted under the agent"))
        .then_some(())
    })
    .await
    .expect("state.db is written again, and the agent says so");
    assert_eq!(a.metric("remediate_storage_reopened").await, Some(1.0));
    drop(a);
    let a = start_agent(d, CONFIG);
    assert_eq!(
        a.post(&mark("s", "2026-11-25T10:30:00Z"), Some(TOKEN))
            .await
            .0,
        200
    );
    let r = eventually(Duration::from_secs(10), || {
        a.audit().into_iter().find(|r| r.decision == "suppressed")
    })
    .await
    .expect("decided");
    assert!(r.reason.starts_with("cooldown 1h"), "{}", r.reason);
    assert_eq!(times_ran(&marker, "s"), 1);
}
