//! `POST /chat/slack/interactions` and `POST /chat/discord/interactions`:
//! button presses from chat. The platform's signature is verified on the
//! raw body before anything in it is parsed; the user id in the verified
//! payload is mapped through `chat.approvers`; then the press approves,
//! denies, pauses or resumes through the same pipeline functions as the
//! API, and the message is updated with the answer. Strangers and people
//! without the right are told no, and that is audited.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::json;

use super::{content_length, read_limited, Http, Peer};
use crate::chat::{self, discord, slack, Press, Who};
use crate::pipeline::{approvals, notify, pauses, Shared};

/// Largest interaction body (Slack sends the whole message with its blocks).
const MAX_INTERACTION_BYTES: usize = 256 << 10;

/// How the message is answered.
enum Shape {
    /// The pressed message is replaced (its buttons go).
    Replace,
    /// A new message in the channel; the pressed one stays.
    New,
    /// Only the presser sees it; the pressed message stays.
    Private,
}

/// What a press led to.
struct Reply {
    shape: Shape,
    text: String,
    buttons: Vec<(String, Press)>,
}

impl Reply {
    fn private(text: String) -> Self {
        Self {
            shape: Shape::Private,
            text,
            buttons: Vec::new(),
        }
    }
}

/// Audits a refused press and says no, politely.
fn refuse(shared: &Shared, who: &Who<'_>, press: &Press, playbook: &str, why: &str) -> Reply {
    let rec = pauses::record(
        shared,
        "chat-refused",
        playbook,
        None,
        format!(
            "{} pressed {} ({})",
            who.recorded(),
            press.verb(),
            press.encode()
        ),
        format!("refused: {why}"),
    );
    if let Err(e) = crate::engine::RecordSink::append(shared, &rec) {
        tracing::error!(error = %e, "cannot audit a refused chat answer");
    }
    tracing::warn!(platform = who.platform, user = %who.user, verb = press.verb(), playbook, "chat answer refused: {why}");
    Reply::private(format!(
        "Sorry, you cannot {} this: {why}. Ask someone listed in the agent's chat.approvers.",
        press.verb()
    ))
}

/// Where the outcome of an approved run goes: (url, Discord?, a permit
/// once the answer itself is out).
type FollowupTo<'a> = (&'a str, bool, Arc<tokio::sync::Semaphore>);

/// Carries out a verified press. `followup`: where the outcome of an
/// approved run is posted, registered before the run is queued so a fast
/// run cannot miss it.
fn act(shared: &Shared, who: &Who<'_>, press: Press, followup: Option<FollowupTo<'_>>) -> Reply {
    let choices = &shared.cfg.chat.pause_choices;
    match &press {
        Press::Approve(id) | Press::Deny(id) => {
            let approve = matches!(press, Press::Approve(_));
            let pending = approvals::pending(shared).into_iter().find(|p| p.id == *id);
            if who.entries.is_empty() {
                let pb = pending.as_ref().map(|p| p.playbook.as_str()).unwrap_or("");
                return refuse(
                    shared,
                    who,
                    &press,
                    pb,
                    &format!("{} is not a chat approver", who.recorded()),
                );
            }
            if let Some(p) = &pending {
                if !who.may_answer(&p.playbook, &p.actions) {
                    return refuse(
                        shared,
                        who,
                        &press,
                        &p.playbook,
                        &format!(
                            "{} may not answer {} ({})",
                            who.recorded(),
                            p.playbook,
                            p.actions.join(", ")
                        ),
                    );
                }
            }
            let by = who.recorded();
            let key = pending
                .as_ref()
                .filter(|_| approve)
                .map(|p| (p.event.fingerprint.clone(), p.playbook.clone()));
            if let (Some((fp, pb)), Some((url, discord, answered))) = (&key, followup) {
                notify::follow_up(
                    shared,
                    fp,
                    pb,
                    notify::Followup {
                        url: url.to_string(),
                        discord,
                        answer: format!("Approved by {by}."),
                        at: chrono::Utc::now(),
                        answered,
                    },
                );
            }
            let answered =
                approvals::answer(shared, id, approve, &by, &format!("from {}", who.platform));
            if answered.is_err() {
                if let Some((fp, pb)) = &key {
                    notify::drop_followup(shared, fp, pb);
                }
            }
            match answered {
                Ok(p) => Reply {
                    shape: Shape::Replace,
                    text: if approve {
                        format!(
                            "Approved by {by}: {} on {}. Decided again now (limits, windows and the breaker still apply). Approval {id}.",
                            p.playbook, p.target
                        )
                    } else {
                        format!(
                            "Denied by {by}: {} on {}; nothing done. Approval {id}.",
                            p.playbook, p.target
                        )
                    },
                    buttons: chat::buttons(None, &p.playbook, &p.target, choices),
                },
                Err(approvals::AnswerError::NotPending(why)) => Reply::private(why),
                Err(approvals::AnswerError::Storage(e)) => {
                    Reply::private(format!("cannot record the answer, try again: {e}"))
                }
            }
        }
        Press::Pause {
            playbook,
            target,
            duration,
        } => {
            if !who.may_pause(playbook) {
                return refuse(
                    shared,
                    who,
                    &press,
                    playbook,
                    &format!("{} may not pause {playbook}", who.recorded()),
                );
            }
            let by = who.recorded();
            match pauses::pause(
                shared,
                playbook,
                target.as_deref(),
                duration.chrono(),
                &by,
                &format!("from {}", who.platform),
            ) {
                Ok(p) => Reply {
                    shape: Shape::New,
                    text: format!(
                        "Paused by {by}: {} until {}; matching runs are suppressed. Pause {}.",
                        p.scope(),
                        p.until.format("%Y-%m-%dT%H:%M:%SZ"),
                        p.id
                    ),
                    buttons: vec![("Resume".into(), Press::Resume(p.id.clone()))],
                },
                Err(e) => Reply::private(format!("cannot pause: {e}")),
            }
        }
        Press::Resume(id) => {
            let now = chrono::Utc::now();
            let Some(p) = pauses::active(shared, now)
                .into_iter()
                .find(|p| p.id == *id)
            else {
                return Reply::private(format!("no pause {id} in force (ended or already lifted)"));
            };
            if !who.may_pause(&p.playbook) {
                return refuse(
                    shared,
                    who,
                    &press,
                    &p.playbook,
                    &format!("{} may not resume {}", who.recorded(), p.playbook),
                );
            }
            let by = who.recorded();
            match pauses::resume(shared, id, &by) {
                Ok(p) => Reply {
                    shape: Shape::Replace,
                    text: format!(
                        "Resumed by {by}: {} runs again (pause {id} lifted).",
                        p.scope()
                    ),
                    buttons: Vec::new(),
                },
                Err(e) => Reply::private(format!("cannot resume: {e}")),
            }
        }
    }
}

/// Reads the body (limits before anything else), or the refusal.
async fn body_of(
    http: &Http,
    headers: &HeaderMap,
    body: Body,
    peer: Option<std::net::SocketAddr>,
) -> Result<axum::body::Bytes, Response> {
    let timeout = http.shared.cfg.server.body_timeout;
    read_limited(
        body,
        MAX_INTERACTION_BYTES,
        timeout.std(),
        content_length(headers),
    )
    .await
    .map_err(|e| {
        let (code, reason, msg) = e.rejection(&format!("{MAX_INTERACTION_BYTES} bytes"), timeout);
        http.reject(code, reason, peer, msg)
    })
}

/// The 401 of a request whose signature does not verify (no bearer
/// challenge: a signature, not a token, is what is missing).
fn unsigned(http: &Http, bad: chat::BadSignature, peer: Option<std::net::SocketAddr>) -> Response {
    let mut r = http.reject(
        StatusCode::UNAUTHORIZED,
        bad.reason(),
        peer,
        bad.message().into(),
    );
    r.headers_mut().remove(axum::http::header::WWW_AUTHENTICATE);
    r
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(super) async fn slack_interactions(
    State(http): State<Arc<Http>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let peer = peer.map(|Extension(Peer(p))| p);
    let Some(secret) = http.auth.slack_secret() else {
        return http.reject(
            StatusCode::NOT_FOUND,
            "chat_not_configured",
            peer,
            "Slack interactions are not configured (chat.slack)".into(),
        );
    };
    let bytes = match body_of(&http, &headers, body, peer).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let h = |n: &str| headers.get(n).map(|v| v.as_bytes());
    if let Err(bad) = slack::verify(
        secret,
        h("x-slack-request-timestamp"),
        h("x-slack-signature"),
        &bytes,
        now_secs(),
    ) {
        return unsigned(&http, bad, peer);
    }
    let i = match slack::parse(&bytes) {
        Ok(i) => i,
        Err(e) => return http.reject(StatusCode::BAD_REQUEST, "invalid_interaction", peer, e),
    };
    if i.kind != "block_actions" {
        return StatusCode::OK.into_response();
    }
    let (Some(user), Some(press)) = (&i.user, i.press()) else {
        return StatusCode::OK.into_response();
    };
    let who = Who::slack(&http.shared.cfg.chat, &user.id);
    let url = match i.response_url {
        Some(url) if allowed_response_url(&http, &url) => Some(url),
        Some(_) => {
            tracing::warn!(
                "slack response_url outside chat.slack.responseUrls: the message is not updated"
            );
            None
        }
        None => None,
    };
    // The outcome of an approved run is posted after the answer.
    let answered = Arc::new(tokio::sync::Semaphore::new(0));
    let followup = url.as_deref().map(|u| (u, false, answered.clone()));
    let reply = act(&http.shared, &who, press, followup);
    let msg = match reply.shape {
        Shape::Replace => slack::replace(&reply.text, &reply.buttons),
        Shape::New => {
            let mut m = slack::replace(&reply.text, &reply.buttons);
            m["replace_original"] = json!(false);
            m["response_type"] = json!("in_channel");
            m
        }
        Shape::Private => slack::ephemeral(&reply.text),
    };
    if let Some(url) = url {
        let client = http.chat_client.clone();
        {
            tokio::spawn(async move {
                let r = client
                    .post(&url)
                    .timeout(std::time::Duration::from_secs(10))
                    .json(&msg)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), "slack response_url refused the answer")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e.without_url(), "cannot post the answer to slack's response_url")
                    }
                }
                answered.add_permits(1);
            });
        }
    }
    StatusCode::OK.into_response()
}

fn allowed_response_url(http: &Http, url: &str) -> bool {
    http.shared
        .cfg
        .chat
        .slack
        .as_ref()
        .is_some_and(|s| s.response_urls.iter().any(|p| url.starts_with(p.as_str())))
}

pub(super) async fn discord_interactions(
    State(http): State<Arc<Http>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let peer = peer.map(|Extension(Peer(p))| p);
    let Some(key) = http.auth.discord_key() else {
        return http.reject(
            StatusCode::NOT_FOUND,
            "chat_not_configured",
            peer,
            "Discord interactions are not configured (chat.discord)".into(),
        );
    };
    let bytes = match body_of(&http, &headers, body, peer).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let h = |n: &str| headers.get(n).map(|v| v.as_bytes());
    if let Err(bad) = discord::verify(
        key,
        h("x-signature-timestamp"),
        h("x-signature-ed25519"),
        &bytes,
        now_secs(),
    ) {
        return unsigned(&http, bad, peer);
    }
    let i: discord::Interaction = match serde_json::from_slice(&bytes) {
        Ok(i) => i,
        Err(e) => {
            return http.reject(
                StatusCode::BAD_REQUEST,
                "invalid_interaction",
                peer,
                format!("interaction: {e}"),
            )
        }
    };
    if i.kind == discord::PING {
        return axum::Json(json!({"type": 1})).into_response();
    }
    if i.kind != discord::MESSAGE_COMPONENT {
        return axum::Json(discord::ephemeral("remediate only answers its own buttons"))
            .into_response();
    }
    let Some(press) = i.press() else {
        return axum::Json(discord::ephemeral("not a remediate button")).into_response();
    };
    let (user, roles) = i.who();
    let who = Who::discord(&http.shared.cfg.chat, &user, &roles);
    // The outcome edits the original message through the interaction's
    // webhook, after this response is on its way.
    let answered = Arc::new(tokio::sync::Semaphore::new(0));
    let api = http
        .shared
        .cfg
        .chat
        .discord
        .as_ref()
        .map(|d| d.api_url.trim_end_matches('/').to_string())
        .unwrap_or_default();
    let url = match (&i.application_id, &i.token) {
        (Some(app), Some(token)) if !app.is_empty() && !token.is_empty() => {
            Some(format!("{api}/webhooks/{app}/{token}/messages/@original"))
        }
        _ => None,
    };
    let followup = url.as_deref().map(|u| (u, true, answered.clone()));
    let reply = act(&http.shared, &who, press, followup);
    let msg = match reply.shape {
        Shape::Replace => discord::update(&reply.text, &reply.buttons),
        Shape::New => {
            let mut m = discord::update(&reply.text, &reply.buttons);
            m["type"] = json!(4);
            m
        }
        Shape::Private => discord::ephemeral(&reply.text),
    };
    released_after(msg, answered)
}

/// A JSON response body that lets the outcome go once hyper has taken it
/// (or dropped it): an edit of `@original` must not overtake the answer.
/// Its exact size is known, so the response carries a Content-Length.
struct Released {
    data: Option<axum::body::Bytes>,
    len: u64,
    answered: Arc<tokio::sync::Semaphore>,
}

impl Drop for Released {
    fn drop(&mut self) {
        self.answered.add_permits(1);
    }
}

impl hyper::body::Body for Released {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Ready(self.data.take().map(|d| Ok(hyper::body::Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.len)
    }
}

fn released_after(msg: serde_json::Value, answered: Arc<tokio::sync::Semaphore>) -> Response {
    let data = axum::body::Bytes::from(msg.to_string());
    let body = Released {
        len: data.len() as u64,
        data: Some(data),
        answered,
    };
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        Body::new(body),
    )
        .into_response()
}
