//! The approvals client: `remediate approvals`, `approve` and `deny`
//! against an agent's API, with the approver's own token. The agent records
//! the name configured for that token as who answered.

use std::io::Write;

use super::args::{AgentClient, AnswerArgs, PauseArgs, ResumeArgs};
use super::{Error, Result};

/// Where the approver's token is read from when `--token-file` is not given.
pub const TOKEN_ENV: &str = "REMEDIATE_APPROVER_TOKEN";

fn client_token(c: &AgentClient) -> Result<String> {
    crate::config::read_secret(c.token_file.as_deref(), Some(TOKEN_ENV))
        .map_err(|e| Error::Input(format!("--token-file: {e}")))?
        .ok_or_else(|| {
            Error::Input(format!(
                "no approver token: give --token-file or set ${TOKEN_ENV} (your token from the agent's auth.approvers; the webhook token cannot answer approvals)"
            ))
        })
}

/// Calls the agent's API; non-2xx answers become errors carrying its message.
fn call(
    c: &AgentClient,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let token = client_token(c)?;
    let url = format!("{}{path}", c.agent.trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Action(format!("cannot start runtime: {e}")))?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(15))
            .build()
            .map_err(|e| Error::Action(e.to_string()))?;
        let mut req = client.request(method, &url).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req
            .send()
            .await
            .map_err(|e| Error::Action(format!("cannot reach the agent at {}: {e}", c.agent)))?;
        let code = r.status();
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        if code.is_success() {
            return Ok(v);
        }
        let msg = v["error"].as_str().unwrap_or("no message").to_string();
        if code.is_client_error() {
            Err(Error::Input(format!("{}: HTTP {code}: {msg}", c.agent)))
        } else {
            Err(Error::Action(format!("{}: HTTP {code}: {msg}", c.agent)))
        }
    })
}

/// `remediate approve` (or `deny`): answers a held run.
pub fn answer(a: AnswerArgs, approve: bool, out: &mut dyn Write) -> Result<()> {
    let v = call(
        &a.client,
        reqwest::Method::POST,
        &format!("/api/v1/approvals/{}", a.id),
        Some(serde_json::json!({
            "decision": if approve { "approve" } else { "deny" },
            "comment": a.comment,
        })),
    )?;
    outln!(
        out,
        "{} {}: {} on {} by {} ({})",
        v["answer"].as_str().unwrap_or_default(),
        a.id,
        v["playbook"].as_str().unwrap_or_default(),
        v["target"].as_str().unwrap_or_default(),
        v["by"].as_str().unwrap_or_default(),
        v["note"].as_str().unwrap_or_default()
    );
    Ok(())
}

/// `remediate approvals`: what an agent holds for approval.
pub fn list(c: AgentClient, out: &mut dyn Write) -> Result<()> {
    let v = call(&c, reqwest::Method::GET, "/api/v1/approvals", None)?;
    let pending = v["pending"].as_array().cloned().unwrap_or_default();
    if pending.is_empty() {
        outln!(out, "no runs wait for approval on {}", c.agent);
        return Ok(());
    }
    for p in pending {
        outln!(
            out,
            "{}  {} on {}  ({}; expires {})",
            p["id"].as_str().unwrap_or_default(),
            p["playbook"].as_str().unwrap_or_default(),
            p["target"].as_str().unwrap_or_default(),
            p["reason"].as_str().unwrap_or_default(),
            p["expiresAt"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

fn pause_line(p: &serde_json::Value) -> String {
    let scope = match p["target"].as_str() {
        Some(t) => format!("{} on {t}", p["playbook"].as_str().unwrap_or_default()),
        None => format!(
            "{} (every target)",
            p["playbook"].as_str().unwrap_or_default()
        ),
    };
    let reason = p["reason"].as_str().filter(|r| !r.is_empty());
    format!(
        "{}  {scope}  paused by {} until {}{}",
        p["id"].as_str().unwrap_or_default(),
        p["by"].as_str().unwrap_or_default(),
        p["until"].as_str().unwrap_or_default(),
        reason.map(|r| format!(" ({r})")).unwrap_or_default()
    )
}

/// `remediate pause`: silences a playbook (or a playbook on one target).
pub fn pause(a: PauseArgs, out: &mut dyn Write) -> Result<()> {
    let d: crate::units::Duration = a
        .duration
        .parse()
        .map_err(|e| Error::Input(format!("--for {:?}: {e}", a.duration)))?;
    let v = call(
        &a.client,
        reqwest::Method::POST,
        "/api/v1/pauses",
        Some(serde_json::json!({
            "playbook": a.playbook,
            "target": a.target,
            "for": d.to_string(),
            "reason": a.reason,
        })),
    )?;
    outln!(out, "paused {}", pause_line(&v));
    Ok(())
}

/// `remediate resume`: lifts a pause.
pub fn resume(a: ResumeArgs, out: &mut dyn Write) -> Result<()> {
    let v = call(
        &a.client,
        reqwest::Method::DELETE,
        &format!("/api/v1/pauses/{}", a.id),
        None,
    )?;
    outln!(
        out,
        "resumed {} by {}",
        pause_line(&v),
        v["resumedBy"].as_str().unwrap_or_default()
    );
    Ok(())
}

/// `remediate pauses`: the pauses in force.
pub fn pauses(c: AgentClient, out: &mut dyn Write) -> Result<()> {
    let v = call(&c, reqwest::Method::GET, "/api/v1/pauses", None)?;
    let list = v["pauses"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        outln!(out, "no pauses in force on {}", c.agent);
        return Ok(());
    }
    for p in list {
        outln!(out, "{}", pause_line(&p));
    }
    Ok(())
}
