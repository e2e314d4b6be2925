//! Approvals against the real binary: a policy holds runs for approval;
//! `remediate approvals`, `remediate approve` and `remediate deny` (and the
//! HTTP API) answer them with an approver's own token; approvals expire; a
//! resolved alert cancels them. The webhook token cannot approve, and the
//! name in the audit is the token's approver whatever the body says.
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

const ALICE: &str = "alice-token-91c3";
const BOB: &str = "bob-token-4d7e";

/// Writes the approvers' token files; the config lines naming them.
fn approvers(d: &std::path::Path) -> &'static str {
    std::fs::write(d.join("alice.token"), format!("{ALICE}\n")).unwrap();
    std::fs::write(d.join("bob.token"), BOB).unwrap();
    "auth:\n  approvers:\n    - { name: alice, tokenFile: alice.token }\n    - { name: bob, tokenFile: bob.token }\n"
}

/// Runs the CLI against the agent as `who` (a token file in the agent's dir).
fn cli(a: &AgentProc, who: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_remediate"))
        .args(args)
        .args(["--agent", &a.url("")])
        .arg("--token-file")
        .arg(a.dir.join(format!("{who}.token")))
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

/// An agent whose policy holds every run of `needs-hands` for approval,
/// with approvers alice and bob.
fn start(d: &std::path::Path) -> AgentProc {
    std::fs::create_dir_all(d.join("playbooks")).unwrap();
    std::fs::create_dir_all(d.join("policies")).unwrap();
    std::fs::write(
        d.join("playbooks/needs-hands.yaml"),
        PLAYBOOK.replace("{DIR}", &d.display().to_string()),
    )
    .unwrap();
    std::fs::write(d.join("policies/default.yaml"), POLICY).unwrap();
    start_agent(
        d,
        &format!("node: appr-node\nlisten: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: {{ enabled: false }}\n{}", approvers(d)),
    )
}

#[tokio::test]
async fn held_runs_are_approved_denied_expired_or_cancelled_and_each_answer_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = start(d);

    // Held: nothing runs until someone answers.
    assert_eq!(
        a.post(&alert("approve", "firing"), Some(TOKEN)).await.0,
        200
    );
    assert_eq!(a.post(&alert("deny", "firing"), Some(TOKEN)).await.0, 200);
    let approve_id = held_id(&a, "approve").await;
    let deny_id = held_id(&a, "deny").await;
    assert!(!d.join("done-approve").exists());
    let (code, out, err) = cli(&a, "alice", &["approvals"]);
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
        "alice",
        &["approve", &approve_id, "--comment", "ticket OPS-1"],
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
    let (code, _, err) = cli(&a, "bob", &["deny", &approve_id]);
    assert_eq!(code, 2);
    assert!(err.contains("is already approved (alice)"), "{err}");

    // Deny through the HTTP API.
    let r = reqwest::Client::new()
        .post(a.url(&format!("/api/v1/approvals/{deny_id}")))
        .bearer_auth(BOB)
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
    let (code, out, _) = cli(&a, "bob", &["approvals"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("no runs wait for approval"), "{out}");
}

async fn answer(
    a: &AgentProc,
    id: &str,
    auth: Option<&str>,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .post(a.url(&format!("/api/v1/approvals/{id}")))
        .json(&body);
    if let Some(v) = auth {
        req = req.header("authorization", v);
    }
    let r = req.send().await.unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or_default())
}

#[tokio::test]
async fn only_an_approver_token_answers_and_the_audit_names_its_approver_not_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = start(d);
    assert_eq!(a.post(&alert("who", "firing"), Some(TOKEN)).await.0, 200);
    let id = held_id(&a, "who").await;
    let body = serde_json::json!({"decision": "approve", "by": "alertmanager"});

    // The webhook token can neither answer nor list: 403 with the reason.
    let (code, v) = answer(&a, &id, Some(&format!("Bearer {TOKEN}")), body.clone()).await;
    assert_eq!(code, 403, "{v}");
    assert_eq!(
        v["error"],
        "the webhook token may only post alerts: listing and answering approvals needs an approver's own token (auth.approvers)"
    );
    let r = reqwest::Client::new()
        .get(a.url("/api/v1/approvals"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (code, _, err) = cli(&a, "missing", &["approvals"]);
    assert_eq!(code, 2, "{err}");
    // An unknown token, no token, and another scheme: 401.
    for auth in [Some("Bearer not-a-token"), None, Some("Basic YWxpY2U6eA==")] {
        let (code, v) = answer(&a, &id, auth, body.clone()).await;
        assert_eq!(code, 401, "{auth:?}: {v}");
    }
    // An approver token cannot post alerts either.
    let (code, text) = a.post(&alert("who-2", "firing"), Some(ALICE)).await;
    assert_eq!(code, 403, "{text}");
    assert!(!d.join("done-who").exists());
    assert_eq!(count(&a.audit(), |r| r.decision == "approved"), 0);

    // Alice's token, the scheme in lower case, the body claiming to be
    // Alertmanager: approved, and recorded as alice.
    let (code, v) = answer(&a, &id, Some(&format!("bearer {ALICE}")), body).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["by"], "alice");
    assert!(
        v["warning"]
            .as_str()
            .unwrap()
            .contains("\"alertmanager\" ignored"),
        "{v}"
    );
    let rec = eventually(Duration::from_secs(10), || {
        a.audit().into_iter().find(|r| r.decision == "approved")
    })
    .await
    .unwrap();
    assert_eq!(rec.id, id);
    assert!(
        rec.outcome.starts_with("approved by alice;"),
        "{}",
        rec.outcome
    );
    assert!(!rec.outcome.contains("alertmanager"), "{}", rec.outcome);
    eventually(Duration::from_secs(10), || {
        d.join("done-who").exists().then_some(())
    })
    .await
    .expect("the approved run executed");

    // The webhook accepts its token with the scheme in any case.
    let r = reqwest::Client::new()
        .post(a.url("/webhook/alertmanager"))
        .header("authorization", format!("BEARER {TOKEN}"))
        .body(alert("who-3", "firing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Every rejection is logged with its reason and the peer, never a token.
    let logs = a.log_text();
    for reason in [
        "forbidden",
        "unknown_token",
        "missing_token",
        "malformed_authorization",
    ] {
        let line = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["reason"] == reason)
            .unwrap_or_else(|| panic!("no log line for {reason}:\n{logs}"));
        assert!(
            line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{line}"
        );
    }
    for secret in [TOKEN, ALICE, BOB, "not-a-token", "YWxpY2U6eA=="] {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
    }
    assert_eq!(
        a.metric("remediate_http_rejected_requests_total{reason=\"forbidden\"}")
            .await,
        Some(3.0)
    );
}

/// An approved run that ran is not run again after a restart (its
/// decision marks the approval spent in the store); one approved just
/// before a stop would be decided at the next start (the store test
/// `approvals_survive_reopen_and_an_answer_is_given_once` covers that).
#[tokio::test]
async fn an_approved_run_that_ran_does_not_run_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = start(d);
    assert_eq!(a.post(&alert("once", "firing"), Some(TOKEN)).await.0, 200);
    let id = held_id(&a, "once").await;
    let (code, _, err) = cli(&a, "alice", &["approve", &id]);
    assert_eq!(code, 0, "{err}");
    eventually(Duration::from_secs(20), || {
        a.audit()
            .into_iter()
            .find(|r| r.phase == remediate::audit::Phase::Verified)
    })
    .await
    .expect("the approved run is verified");
    drop(a);
    std::fs::remove_file(d.join("done-once")).unwrap();
    let a = start(d);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!d.join("done-once").exists(), "ran again: {}", a.log_text());
    let recs = a.audit();
    assert_eq!(
        count(&recs, |r| r.phase == remediate::audit::Phase::Planned
            && r.decision == "execute"),
        1
    );
}
