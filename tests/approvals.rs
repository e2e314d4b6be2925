//! Approvals against the real binary: a policy holds runs for approval;
//! `remediate approvals`, `remediate approve` and `remediate deny` (and the
//! HTTP API) answer them; approvals expire; a resolved alert cancels them.
//! The held action is `host.command` (`touch FILE`), so an approved run
//! really executes and the test sees its effect.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{alert_body, count, eventually, start_agent, AgentProc, TOKEN};

const PLAYBOOK: &str = r#"apiVersion: remediate/v1
kind: Playbook
metadata: { name: needs-hands }
spec:
  triggers: [{ alert: ['alertname="NeedsHands"'] }]
  target: { kind: host, node: "{{ labels.node }}" }
  steps:
    - action: host.command
      with:
        argv: [touch, "{DIR}/done-{{ labels.case }}"]
        check: [test, -f, "{DIR}/done-{{ labels.case }}"]
  verify: { timeout: 10s }
"#;

const POLICY: &str = "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec:\n  approval: { required: true, timeout: 3s }\n";

fn alert(case: &str, status: &str) -> Vec<u8> {
    alert_body(
        status,
        &[
            ("alertname", "NeedsHands"),
            ("node", "appr-node"),
            ("case", case),
        ],
        "2026-11-25T10:00:00Z",
    )
}

fn cli(a: &AgentProc, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_remediate"))
        .args(args)
        .args(["--agent", &a.url("")])
        .env("REMEDIATE_WEBHOOK_TOKEN", TOKEN)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn held_id(a: &AgentProc, case: &str) -> String {
    eventually(Duration::from_secs(10), || {
        a.audit()
            .into_iter()
            .find(|r| {
                r.decision == "needs-approval"
                    && r.params.to_string().contains(&format!("done-{case}"))
            })
            .map(|r| r.id)
    })
    .await
    .unwrap_or_else(|| panic!("no held run for {case}: {:#?}", a.audit()))
}

#[tokio::test]
async fn held_runs_are_approved_denied_expired_or_cancelled_and_each_answer_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("playbooks")).unwrap();
    std::fs::create_dir_all(d.join("policies")).unwrap();
    std::fs::write(
        d.join("playbooks/needs-hands.yaml"),
        PLAYBOOK.replace("{DIR}", &d.display().to_string()),
    )
    .unwrap();
    std::fs::write(d.join("policies/default.yaml"), POLICY).unwrap();
    let a = start_agent(
        d,
        "node: appr-node\nlisten: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: { enabled: false }\n",
    );

    // Held: nothing runs until someone answers.
    assert_eq!(
        a.post(&alert("approve", "firing"), Some(TOKEN)).await.0,
        200
    );
    assert_eq!(a.post(&alert("deny", "firing"), Some(TOKEN)).await.0, 200);
    let approve_id = held_id(&a, "approve").await;
    let deny_id = held_id(&a, "deny").await;
    assert!(!d.join("done-approve").exists());
    let (code, out, err) = cli(&a, &["approvals"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&approve_id) && out.contains("needs-hands on host appr-node"),
        "{out}"
    );
    assert!(
        out.contains("policy requires approval for every run"),
        "{out}"
    );

    // Approve through the CLI: decided again and executed.
    let (code, out, err) = cli(
        &a,
        &[
            "approve",
            &approve_id,
            "--by",
            "alice",
            "--comment",
            "ticket OPS-1",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!(
            "approved {approve_id}: needs-hands on host appr-node"
        )),
        "{out}"
    );
    let verified = eventually(Duration::from_secs(10), || {
        a.audit()
            .into_iter()
            .find(|r| r.phase == remediate::audit::Phase::Verified)
    })
    .await
    .expect("the approved run executed and verified");
    assert!(
        verified.outcome.starts_with("check test -f"),
        "{}",
        verified.outcome
    );
    assert!(d.join("done-approve").exists());
    let answer = a
        .audit()
        .into_iter()
        .find(|r| r.decision == "approved")
        .unwrap();
    assert_eq!(answer.id, approve_id);
    assert!(
        answer
            .outcome
            .starts_with("approved by alice: ticket OPS-1"),
        "{}",
        answer.outcome
    );

    // Answering twice is refused with what happened.
    let (code, _, err) = cli(&a, &["deny", &approve_id, "--by", "bob"]);
    assert_eq!(code, 2);
    assert!(err.contains("is already approved (alice)"), "{err}");

    // Deny through the HTTP API.
    let r = reqwest::Client::new()
        .post(a.url(&format!("/api/v1/approvals/{deny_id}")))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"decision": "deny", "by": "bob"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A wrong token gets nothing.
    let r = reqwest::Client::new()
        .post(a.url("/api/v1/approvals/whatever"))
        .bearer_auth("nope")
        .json(&serde_json::json!({"decision": "approve", "by": "mallory"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Cancelled by the alert resolving; expired when nobody answers (3s).
    assert_eq!(a.post(&alert("cancel", "firing"), Some(TOKEN)).await.0, 200);
    held_id(&a, "cancel").await;
    assert_eq!(
        a.post(&alert("cancel", "resolved"), Some(TOKEN)).await.0,
        200
    );
    assert_eq!(a.post(&alert("expire", "firing"), Some(TOKEN)).await.0, 200);
    let expire_id = held_id(&a, "expire").await;
    let recs = eventually(Duration::from_secs(15), || {
        let recs = a.audit();
        (count(&recs, |r| r.decision == "expired") == 1
            && count(&recs, |r| r.decision == "cancelled") == 1)
            .then_some(recs)
    })
    .await
    .unwrap_or_else(|| panic!("{:#?}", a.audit()));
    let expired = recs.iter().find(|r| r.decision == "expired").unwrap();
    assert_eq!(expired.id, expire_id);
    assert!(
        expired.outcome.contains("expired at")
            && expired.outcome.ends_with("unanswered; nothing done")
    );
    let cancelled = recs.iter().find(|r| r.decision == "cancelled").unwrap();
    assert!(
        cancelled.outcome.contains("cancelled: the alert resolved"),
        "{}",
        cancelled.outcome
    );
    let denied = recs.iter().find(|r| r.decision == "denied").unwrap();
    assert_eq!(denied.id, deny_id);

    // Exactly one action ran: the approved one.
    assert_eq!(
        count(&recs, |r| r.decision == "execute"
            && r.phase == remediate::audit::Phase::Planned),
        1
    );
    assert!(
        !d.join("done-deny").exists()
            && !d.join("done-expire").exists()
            && !d.join("done-cancel").exists()
    );
    let (code, out, _) = cli(&a, &["approvals"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("no runs wait for approval"), "{out}");
}
