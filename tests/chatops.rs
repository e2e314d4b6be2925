//! Answers from chat through the real HTTP path: the agent binary posts
//! needs-approval notifications with buttons to a local receiver standing
//! in for Slack and Discord; presses are built from the platforms'
//! documented payloads (tests/fixtures/chat), signed with test keys and
//! posted to the agent's interaction endpoints. A missing, wrong or stale
//! signature is a 401 and changes nothing; strangers are told no (and
//! audited); pauses from a button, the API and the CLI suppress matching
//! runs, show on /metrics and survive a restart.

mod common;

use std::process::Command;
use std::time::Duration;

use common::receiver::Receiver;
use common::{alert_body, count, eventually, repo, start_agent, AgentProc, TOKEN};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};

const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const ALICE_SLACK: &str = "UA8RXUSPL";
const EVE_SLACK: &str = "UEVE00001";
const ONCALL_ROLE: &str = "789012345678901234";
const ALICE: &str = "alice-token-91c3";

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

const POLICY: &str = "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec:\n  approval: { required: true, timeout: 10m }\n";

fn discord_key() -> SigningKey {
    SigningKey::from_bytes(&[42u8; 32])
}

fn start(d: &std::path::Path, rx: &Receiver) -> AgentProc {
    std::fs::create_dir_all(d.join("playbooks")).unwrap();
    std::fs::create_dir_all(d.join("policies")).unwrap();
    std::fs::write(
        d.join("playbooks/needs-hands.yaml"),
        PLAYBOOK.replace("{DIR}", &d.display().to_string()),
    )
    .unwrap();
    std::fs::write(d.join("policies/default.yaml"), POLICY).unwrap();
    std::fs::write(d.join("slack.secret"), SLACK_SECRET).unwrap();
    std::fs::write(d.join("alice.token"), ALICE).unwrap();
    let pk = hex::encode(discord_key().verifying_key().as_bytes());
    start_agent(
        d,
        &format!(
            "node: chat-node\nlisten: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: {{ enabled: false }}
auth:
  approvers: [{{ name: alice, tokenFile: alice.token }}]
notify:
  - {{ name: slack, kind: slack, url: '{u}/slack', on: [needs-approval, suppressed] }}
  - {{ name: discord, kind: discord, url: '{u}/discord', on: [needs-approval] }}
chat:
  slack: {{ signingSecretFile: slack.secret, responseUrls: ['{u}/'] }}
  discord: {{ publicKey: {pk}, apiUrl: '{u}/discord-api' }}
  pauseChoices: [1h]
  approvers:
    - {{ name: alice, slackUsers: [{ALICE_SLACK}], playbooks: [needs-hands] }}
    - {{ name: oncall, discordRoles: ['{ONCALL_ROLE}'] }}
    - {{ name: viewer, slackUsers: [UVIEW0001], playbooks: [other-playbook] }}
",
            u = rx.url
        ),
    )
}

fn alert(case: &str) -> Vec<u8> {
    alert_body(
        "firing",
        &[
            ("alertname", "NeedsHands"),
            ("node", "chat-node"),
            ("case", case),
        ],
        "2026-11-25T10:00:00Z",
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

fn fixture(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(repo("tests/fixtures/chat").join(name)).unwrap()).unwrap()
}

/// Slack's block_actions payload for `user` pressing a button of value `value`.
fn slack_press(user: &str, value: &str, response_url: &str) -> Vec<u8> {
    let mut p = fixture("slack_block_actions.json");
    p["user"]["id"] = json!(user);
    p["response_url"] = json!(response_url);
    p["actions"][0]["action_id"] = json!("remediate_x_0");
    p["actions"][0]["value"] = json!(value);
    let payload = serde_json::to_string(&p).unwrap();
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload)
        .finish()
        .into_bytes()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn post_slack(a: &AgentProc, body: &[u8], ts: Option<i64>, sig: Option<String>) -> u16 {
    let mut req = reqwest::Client::new()
        .post(a.url("/chat/slack/interactions"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_vec());
    if let Some(ts) = ts {
        req = req.header("x-slack-request-timestamp", ts.to_string());
    }
    if let Some(s) = sig {
        req = req.header("x-slack-signature", s);
    }
    req.send().await.unwrap().status().as_u16()
}

async fn post_slack_signed(a: &AgentProc, body: &[u8]) -> u16 {
    let ts = now();
    let sig = remediate::chat::slack::sign(SLACK_SECRET.as_bytes(), &ts.to_string(), body);
    post_slack(a, body, Some(ts), Some(sig)).await
}

async fn post_discord(a: &AgentProc, body: &[u8], key: &SigningKey, ts: i64) -> (u16, Value) {
    let ts = ts.to_string();
    let sig = hex::encode(key.sign(&[ts.as_bytes(), body].concat()).to_bytes());
    let r = reqwest::Client::new()
        .post(a.url("/chat/discord/interactions"))
        .header("content-type", "application/json")
        .header("x-signature-ed25519", sig)
        .header("x-signature-timestamp", ts)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

/// The `value` of the Slack button labelled `label` in a notification.
fn slack_button(msg: &Value, label: &str) -> String {
    msg["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().unwrap().clone())
        .find(|e| e["text"]["text"] == label)
        .unwrap_or_else(|| panic!("no {label} button in {msg:#}"))["value"]
        .as_str()
        .unwrap()
        .to_string()
}

fn pending(a: &AgentProc, id: &str) -> bool {
    !a.audit()
        .iter()
        .any(|r| r.id == id && matches!(r.decision.as_str(), "approved" | "denied"))
}

fn cli(a: &AgentProc, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_remediate"))
        .args(args)
        .args(["--agent", &a.url("")])
        .arg("--token-file")
        .arg(a.dir.join("alice.token"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn slack_buttons_approve_and_pause_only_for_mapped_people_with_a_valid_signature() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = start(d, &rx);

    assert_eq!(a.post(&alert("s1"), Some(TOKEN)).await.0, 200);
    let id = held_id(&a, "s1").await;
    let msg = rx
        .wait("/slack", |v| v["text"].as_str().unwrap_or("").contains(&id))
        .await;
    let approve = slack_button(&msg, "Approve");
    assert_eq!(approve, format!("approve:{id}"));
    assert_eq!(slack_button(&msg, "Deny"), format!("deny:{id}"));
    let pause = slack_button(&msg, "Pause 1h");
    assert_eq!(pause, "pause:1h:needs-hands:host chat-node");
    let resp = format!("{}/resp", rx.url);

    // Missing, wrong and stale signatures: 401, nothing answered.
    let body = slack_press(ALICE_SLACK, &approve, &resp);
    assert_eq!(post_slack(&a, &body, None, None).await, 401);
    assert_eq!(post_slack(&a, &body, Some(now()), None).await, 401);
    let wrong = remediate::chat::slack::sign(b"not-the-secret", &now().to_string(), &body);
    assert_eq!(post_slack(&a, &body, Some(now()), Some(wrong)).await, 401);
    let old = now() - 301;
    let stale = remediate::chat::slack::sign(SLACK_SECRET.as_bytes(), &old.to_string(), &body);
    assert_eq!(post_slack(&a, &body, Some(old), Some(stale)).await, 401);
    // A body changed after signing does not verify either.
    let ts = now();
    let sig = remediate::chat::slack::sign(SLACK_SECRET.as_bytes(), &ts.to_string(), &body);
    let forged = slack_press(EVE_SLACK, &approve, &resp);
    assert_eq!(post_slack(&a, &forged, Some(ts), Some(sig)).await, 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(pending(&a, &id) && !d.join("done-s1").exists());
    assert_eq!(rx.count("/resp"), 0);
    assert!(
        a.metric("remediate_http_rejected_requests_total{reason=\"bad_signature\"}")
            .await
            >= Some(2.0),
        "{}",
        a.get("/metrics").await.1
    );

    // A stranger, and someone mapped only for another playbook: told no, audited.
    assert_eq!(
        post_slack_signed(&a, &slack_press(EVE_SLACK, &approve, &resp)).await,
        200
    );
    let no = rx
        .wait("/resp", |v| v["response_type"] == "ephemeral")
        .await;
    assert_eq!(no["replace_original"], false);
    assert!(
        no["text"].as_str().unwrap().starts_with(
            "Sorry, you cannot approve this: slack user UEVE00001 is not a chat approver"
        ),
        "{no}"
    );
    assert_eq!(
        post_slack_signed(&a, &slack_press("UVIEW0001", &approve, &resp)).await,
        200
    );
    rx.wait("/resp", |v| {
        v["text"]
            .as_str()
            .unwrap_or("")
            .contains("viewer (slack UVIEW0001) may not answer needs-hands")
    })
    .await;
    let refused = eventually(Duration::from_secs(5), || {
        let n = count(&a.audit(), |r| r.decision == "chat-refused");
        (n == 2).then_some(n)
    })
    .await;
    assert_eq!(refused, Some(2), "{:#?}", a.audit());
    assert!(pending(&a, &id) && !d.join("done-s1").exists());

    // Alice approves: audited with her name and Slack id, the run executes,
    // the message is replaced with the answer.
    assert_eq!(
        post_slack_signed(&a, &slack_press(ALICE_SLACK, &approve, &resp)).await,
        200
    );
    let upd = rx.wait("/resp", |v| v["replace_original"] == true).await;
    assert!(
        upd["text"]
            .as_str()
            .unwrap()
            .starts_with("Approved by alice (slack UA8RXUSPL): needs-hands on host chat-node"),
        "{upd}"
    );
    let answered = eventually(Duration::from_secs(10), || {
        a.audit()
            .into_iter()
            .find(|r| r.id == id && r.decision == "approved")
    })
    .await
    .expect("approval audited");
    assert!(
        answered
            .outcome
            .starts_with("approved by alice (slack UA8RXUSPL): from slack"),
        "{}",
        answered.outcome
    );
    assert!(eventually(Duration::from_secs(10), || d
        .join("done-s1")
        .exists()
        .then_some(()))
    .await
    .is_some());
    // Then the message is replaced again with the outcome, after the answer.
    let outcome = rx
        .wait("/resp", |v| {
            v["text"].as_str().unwrap_or("").contains("Outcome:")
        })
        .await;
    let text = outcome["text"].as_str().unwrap();
    assert!(
        text.starts_with("Approved by alice (slack UA8RXUSPL).\nOutcome: needs-hands on host chat-node: verified (execute): "),
        "{text}"
    );
    {
        let got = rx.got.lock().unwrap();
        let pos = |f: &dyn Fn(&Value) -> bool| {
            got.iter().position(|(p, v)| p == "/resp" && f(v)).unwrap()
        };
        assert!(
            pos(&|v| v["text"]
                .as_str()
                .unwrap_or("")
                .starts_with("Approved by alice (slack UA8RXUSPL): "))
                < pos(&|v| v["text"].as_str().unwrap_or("").contains("Outcome:"))
        );
    }
    // Pressed again: already answered, nothing more.
    assert_eq!(
        post_slack_signed(&a, &slack_press(ALICE_SLACK, &approve, &resp)).await,
        200
    );
    rx.wait("/resp", |v| {
        v["text"]
            .as_str()
            .unwrap_or("")
            .contains("is already approved")
    })
    .await;

    // Pause from the button: a new message with Resume; runs on that target suppressed.
    assert_eq!(
        post_slack_signed(&a, &slack_press(ALICE_SLACK, &pause, &resp)).await,
        200
    );
    let paused = rx
        .wait("/resp", |v| {
            v["text"]
                .as_str()
                .unwrap_or("")
                .starts_with("Paused by alice")
        })
        .await;
    assert_eq!(paused["response_type"], "in_channel");
    let resume = slack_button(&paused, "Resume");
    assert_eq!(
        a.metric("remediate_paused{playbook=\"needs-hands\"}").await,
        Some(1.0)
    );
    assert_eq!(a.post(&alert("s2"), Some(TOKEN)).await.0, 200);
    let sup = eventually(Duration::from_secs(10), || {
        a.audit()
            .into_iter()
            .find(|r| r.decision == "suppressed" && r.params.to_string().contains("done-s2"))
    })
    .await
    .expect("paused run suppressed");
    assert!(
        sup.reason
            .starts_with("paused by alice (slack UA8RXUSPL) until "),
        "{}",
        sup.reason
    );
    let (code, out, err) = cli(&a, &["pauses"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("needs-hands on host chat-node  paused by alice (slack UA8RXUSPL) until"),
        "{out}"
    );

    // A stranger cannot resume; alice can.
    assert_eq!(
        post_slack_signed(&a, &slack_press(EVE_SLACK, &resume, &resp)).await,
        200
    );
    rx.wait("/resp", |v| {
        v["text"]
            .as_str()
            .unwrap_or("")
            .contains("cannot resume this")
    })
    .await;
    assert_eq!(
        a.metric("remediate_paused{playbook=\"needs-hands\"}").await,
        Some(1.0)
    );
    assert_eq!(
        post_slack_signed(&a, &slack_press(ALICE_SLACK, &resume, &resp)).await,
        200
    );
    rx.wait("/resp", |v| {
        v["text"]
            .as_str()
            .unwrap_or("")
            .starts_with("Resumed by alice")
    })
    .await;
    assert_eq!(
        a.metric("remediate_paused{playbook=\"needs-hands\"}").await,
        None
    );
    assert_eq!(a.post(&alert("s3"), Some(TOKEN)).await.0, 200);
    held_id(&a, "s3").await;

    // The playbook on every target, from the same message.
    let all = slack_button(&msg, "Pause playbook 1h");
    assert_eq!(all, "pause:1h:needs-hands");
    assert_eq!(
        post_slack_signed(&a, &slack_press(ALICE_SLACK, &all, &resp)).await,
        200
    );
    let paused_all = rx
        .wait("/resp", |v| {
            let t = v["text"].as_str().unwrap_or("");
            t.starts_with("Paused by alice") && !t.contains("chat-node")
        })
        .await;
    let (code, out, err) = cli(&a, &["pauses"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("needs-hands (every target)"), "{out}");
    assert_eq!(a.post(&alert("s4"), Some(TOKEN)).await.0, 200);
    eventually(Duration::from_secs(10), || {
        a.audit()
            .into_iter()
            .find(|r| r.decision == "suppressed" && r.params.to_string().contains("done-s4"))
    })
    .await
    .expect("a run of the playbook paused on every target is suppressed");
    let resume_all = slack_button(&paused_all, "Resume");
    assert_eq!(
        post_slack_signed(&a, &slack_press(ALICE_SLACK, &resume_all, &resp)).await,
        200
    );
    eventually(Duration::from_secs(10), || {
        let (_, out, _) = cli(&a, &["pauses"]);
        (!out.contains("needs-hands")).then_some(())
    })
    .await
    .expect("resumed");

    let recs = a.audit();
    assert_eq!(count(&recs, |r| r.decision == "pause"), 2);
    assert_eq!(
        count(&recs, |r| r.decision == "resume"
            && r.reason == "resumed by alice (slack UA8RXUSPL)"),
        2
    );
}

#[tokio::test]
async fn discord_buttons_answer_with_update_message_for_mapped_roles_only() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = start(d, &rx);
    let key = discord_key();

    // PING: PONG when signed, 401 when not.
    let ping = serde_json::to_vec(&fixture("discord_ping.json")).unwrap();
    assert_eq!(
        post_discord(&a, &ping, &key, now()).await,
        (200, json!({"type": 1}))
    );
    let other = SigningKey::from_bytes(&[1u8; 32]);
    assert_eq!(post_discord(&a, &ping, &other, now()).await.0, 401);
    assert_eq!(post_discord(&a, &ping, &key, now() - 600).await.0, 401);
    let unsigned = reqwest::Client::new()
        .post(a.url("/chat/discord/interactions"))
        .body(ping.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);

    assert_eq!(a.post(&alert("d1"), Some(TOKEN)).await.0, 200);
    let id = held_id(&a, "d1").await;
    let msg = rx
        .wait("/discord", |v| {
            v["embeds"][0]["description"]
                .as_str()
                .unwrap_or("")
                .contains(&id)
        })
        .await;
    let buttons = msg["components"][0]["components"].as_array().unwrap();
    let deny = buttons.iter().find(|b| b["label"] == "Deny").unwrap()["custom_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(deny, format!("remediate:deny:{id}"));

    let press = |user: &str, roles: &[&str], custom_id: &str| {
        let mut p = fixture("discord_component.json");
        p["member"]["user"]["id"] = json!(user);
        p["member"]["roles"] = json!(roles);
        p["data"]["custom_id"] = json!(custom_id);
        serde_json::to_vec(&p).unwrap()
    };
    // Bad signature: 401 and still pending.
    let body = press("53908232506183680", &[ONCALL_ROLE], &deny);
    assert_eq!(post_discord(&a, &body, &other, now()).await.0, 401);
    // A member without the role: an ephemeral no, audited.
    let (code, v) = post_discord(&a, &press("1", &["5"], &deny), &key, now()).await;
    assert_eq!(code, 200);
    assert_eq!(v["type"], 4);
    assert_eq!(v["data"]["flags"], 64);
    assert!(
        v["data"]["content"]
            .as_str()
            .unwrap()
            .contains("discord user 1 is not a chat approver"),
        "{v}"
    );
    assert!(pending(&a, &id));

    // A member holding the on-call role denies: UPDATE_MESSAGE with the answer.
    let (code, v) = post_discord(&a, &body, &key, now()).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["type"], 7);
    assert!(
        v["data"]["content"].as_str().unwrap().starts_with("Denied by oncall (discord 53908232506183680): needs-hands on host chat-node; nothing done"),
        "{v}"
    );
    let rec = eventually(Duration::from_secs(5), || {
        a.audit()
            .into_iter()
            .find(|r| r.id == id && r.decision == "denied")
    })
    .await
    .expect("denial audited");
    assert!(
        rec.outcome
            .starts_with("denied by oncall (discord 53908232506183680)"),
        "{}",
        rec.outcome
    );
    assert!(!d.join("done-d1").exists());
    assert_eq!(count(&a.audit(), |r| r.decision == "chat-refused"), 1);

    // Approved from Discord: the run executes, and its outcome edits the
    // original message through the interaction's webhook.
    assert_eq!(a.post(&alert("d2"), Some(TOKEN)).await.0, 200);
    let id2 = held_id(&a, "d2").await;
    let (code, v) = post_discord(
        &a,
        &press(
            "53908232506183680",
            &[ONCALL_ROLE],
            &format!("remediate:approve:{id2}"),
        ),
        &key,
        now(),
    )
    .await;
    assert_eq!((code, v["type"].clone()), (200, json!(7)), "{v}");
    assert!(eventually(Duration::from_secs(10), || d
        .join("done-d2")
        .exists()
        .then_some(()))
    .await
    .is_some());
    let edit = rx
        .wait(
            "PATCH /discord-api/webhooks/290926444748734465/unique_interaction_token/messages/@original",
            |_| true,
        )
        .await;
    assert!(
        edit["content"].as_str().unwrap_or_default().starts_with("Approved by oncall (discord 53908232506183680).\nOutcome: needs-hands on host chat-node: verified (execute): "),
        "{edit}"
    );
}

#[tokio::test]
async fn a_pause_from_the_cli_suppresses_matching_runs_survives_a_restart_and_is_undone() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut a = start(d, &rx);

    // The webhook token cannot pause; a bad duration and an unknown playbook are refused.
    let r = reqwest::Client::new()
        .post(a.url("/api/v1/pauses"))
        .bearer_auth(TOKEN)
        .json(&json!({"playbook": "needs-hands", "for": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let (code, _, err) = cli(&a, &["pause", "needs-hands", "--for", "soon"]);
    assert_ne!(code, 0);
    assert!(err.contains("--for \"soon\""), "{err}");
    let (code, _, err) = cli(&a, &["pause", "nope", "--for", "1h"]);
    assert_ne!(code, 0);
    assert!(err.contains("no playbook \"nope\" is loaded"), "{err}");

    let (code, out, err) = cli(
        &a,
        &[
            "pause",
            "needs-hands",
            "--target",
            "host chat-node",
            "--for",
            "2h",
            "--reason",
            "disk swap OPS-7",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("paused "), "{out}");
    assert!(
        out.contains("needs-hands on host chat-node  paused by alice until"),
        "{out}"
    );
    assert!(out.contains("(disk swap OPS-7)"), "{out}");
    let pause_id = out.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(
        a.metric("remediate_paused{playbook=\"needs-hands\"}").await,
        Some(1.0)
    );

    // Durable: still in force after a restart.
    a.signal("TERM");
    a.wait_exit(Duration::from_secs(20));
    let a = common::start_agent_with(d, &d.join("agent.yaml"), &[]);
    let (code, out, _) = cli(&a, &["pauses"]);
    assert_eq!(code, 0);
    assert!(out.starts_with(&pause_id), "{out}");
    assert_eq!(a.post(&alert("c1"), Some(TOKEN)).await.0, 200);
    let sup = eventually(Duration::from_secs(10), || {
        a.audit()
            .into_iter()
            .find(|r| r.decision == "suppressed" && r.params.to_string().contains("done-c1"))
    })
    .await
    .expect("suppressed");
    assert!(
        sup.reason.starts_with("paused by alice until "),
        "{}",
        sup.reason
    );
    assert!(
        sup.reason
            .ends_with(&format!("(pause {pause_id}): disk swap OPS-7")),
        "{}",
        sup.reason
    );
    // The suppression is announced to the sink that wants suppressed runs.
    rx.wait("/slack", |v| {
        v["text"].as_str().unwrap_or("").contains("paused by alice")
    })
    .await;

    let (code, out, err) = cli(&a, &["resume", &pause_id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("resumed {pause_id}")) && out.ends_with("by alice\n"),
        "{out}"
    );
    let (_, out, _) = cli(&a, &["pauses"]);
    assert!(out.starts_with("no pauses in force"), "{out}");
    let (code, _, err) = cli(&a, &["resume", &pause_id]);
    assert_ne!(code, 0);
    assert!(err.contains("HTTP 404"), "{err}");
    assert_eq!(a.post(&alert("c2"), Some(TOKEN)).await.0, 200);
    held_id(&a, "c2").await;
    let recs = a.audit();
    assert_eq!(
        count(&recs, |r| r.decision == "pause"
            && r.reason == "paused by alice: disk swap OPS-7"),
        1
    );
    assert_eq!(count(&recs, |r| r.decision == "resume"), 1);
}

#[tokio::test]
async fn notices_are_routed_to_sinks_by_alert_labels_with_alertmanager_matchers() {
    let rx = Receiver::start().await;
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
        &format!(
            "node: chat-node\nlisten: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: {{ enabled: false }}
notify:
  - {{ name: page, kind: slack, url: '{u}/page', on: [needs-approval], matchers: ['severity=~\"critical|high\"'] }}
  - {{ name: rest, kind: discord, url: '{u}/rest', on: [needs-approval], matchers: ['severity!~\"critical|high\"'] }}
",
            u = rx.url
        ),
    );
    for (case, sev) in [("r1", "critical"), ("r2", "warning"), ("r3", "high")] {
        let body = alert_body(
            "firing",
            &[
                ("alertname", "NeedsHands"),
                ("node", "chat-node"),
                ("case", case),
                ("severity", sev),
            ],
            "2026-11-25T10:00:00Z",
        );
        assert_eq!(a.post(&body, Some(TOKEN)).await.0, 200);
        held_id(&a, case).await;
    }
    let r2 = held_id(&a, "r2").await;
    rx.wait("/rest", |v| {
        v["embeds"][0]["description"]
            .as_str()
            .unwrap_or("")
            .contains(&r2)
    })
    .await;
    for case in ["r1", "r3"] {
        let id = held_id(&a, case).await;
        rx.wait("/page", |v| v["text"].as_str().unwrap_or("").contains(&id))
            .await;
    }
    // Each reached its route and, as far as has arrived, no other (the
    // exact routes are covered by notify::routing's unit test).
    assert_eq!(rx.count("/page"), 2);
    assert_eq!(rx.count("/rest"), 1);
    // Without chat configured, messages carry no buttons.
    let page = rx.wait("/page", |_| true).await;
    assert!(
        !page["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["type"] == "actions"),
        "{page}"
    );
}
