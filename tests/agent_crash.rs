//! kill -9 against the real binary between `planned` and the outcome: after
//! the restart the limits still hold, the interrupted step is recorded as
//! interrupted, and it is not run again. The action is `host.command`
//! (`sleep`), a real driver, so the agent is genuinely mid-apply when killed.

mod common;

use std::time::Duration;

use remediate::audit::{Phase, INTERRUPTED};

use common::{alert_body, count, eventually, start_agent, TOKEN};

const PLAYBOOK: &str = r#"apiVersion: remediate/v1
kind: Playbook
metadata: { name: slow-fix }
spec:
  triggers: [{ alert: ['alertname="DiskSlow"'] }]
  target: { kind: host, node: "{{ labels.node }}" }
  steps:
    - action: host.command
      with: { argv: [sleep, "4"] }
      timeout: 30s
  verify: { timeout: 10s }
"#;

const POLICY: &str = "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec:\n  cooldown: 1h\n  rateLimits: [{ scope: target, max: 1, per: 1h }]\n";

const CONFIG: &str = "node: crash-node\nlisten: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: { enabled: false }\n";

fn disk_slow(starts: &str) -> Vec<u8> {
    alert_body(
        "firing",
        &[("alertname", "DiskSlow"), ("node", "crash-node")],
        starts,
    )
}

#[tokio::test]
async fn sigkill_mid_action_is_recorded_as_interrupted_and_limits_hold_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("playbooks")).unwrap();
    std::fs::create_dir_all(d.join("policies")).unwrap();
    std::fs::write(d.join("playbooks/slow-fix.yaml"), PLAYBOOK).unwrap();
    std::fs::write(d.join("policies/default.yaml"), POLICY).unwrap();

    let mut a = start_agent(d, CONFIG);
    assert_eq!(
        a.post(&disk_slow("2026-11-25T10:00:00Z"), Some(TOKEN))
            .await
            .0,
        200
    );
    let planned = eventually(Duration::from_secs(10), || {
        a.audit()
            .into_iter()
            .find(|r| r.phase == Phase::Planned && r.decision == "execute")
    })
    .await
    .expect("the step was planned");
    // Mid-apply: `sleep 4` is running.
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(5));
    let before = a.audit();
    assert!(
        !before
            .iter()
            .any(|r| r.id == planned.id && r.phase != Phase::Planned),
        "the step finished before the kill: {before:#?}"
    );
    drop(a);

    let a = start_agent(d, CONFIG);
    let recs = a.audit();
    let failed: Vec<_> = recs
        .iter()
        .filter(|r| r.id == planned.id && r.phase == Phase::Failed)
        .collect();
    assert_eq!(failed.len(), 1, "{recs:#?}");
    assert_eq!(failed[0].outcome, INTERRUPTED);
    assert_eq!(failed[0].playbook, "slow-fix");
    assert_eq!(failed[0].target["node"], "crash-node");
    assert!(a.log_text().contains("interrupted by the previous stop"));

    // Not re-executed: the delivery's decision is in the audit, so the
    // inbox does not replay it, and no new execute is planned.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        count(&a.audit(), |r| r.phase == Phase::Planned
            && r.decision == "execute"),
        1
    );

    // The limits survived the kill: a new episode of the alert is held by
    // the cooldown, and the reason says when it allows again.
    assert_eq!(
        a.post(&disk_slow("2026-11-25T11:00:00Z"), Some(TOKEN))
            .await
            .0,
        200
    );
    let held = eventually(Duration::from_secs(10), || {
        a.audit().into_iter().find(|r| r.decision == "suppressed")
    })
    .await
    .expect("second episode decided");
    assert!(held.reason.starts_with("cooldown 1h"), "{}", held.reason);
    assert!(held.reason.contains("allows again at"), "{}", held.reason);

    // A second agent on the same state directory is refused.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_remediate"))
        .args(["agent", "--config"])
        .arg(d.join("agent.yaml"))
        .env("REMEDIATE_WEBHOOK_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is in use by another remediate agent"),
        "{err}"
    );

    // Restarting again does not record the interruption twice.
    drop(a);
    let a = start_agent(d, CONFIG);
    assert_eq!(count(&a.audit(), |r| r.outcome == INTERRUPTED), 1);
}
