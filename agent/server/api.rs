//! The approvals API (approvers' tokens only; the identity recorded is the
//! token's configured name), `/metrics`, `/healthz` and `/readyz`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::json;

use super::{content_length, read_limited, Caller, Http, Peer};
use crate::metrics::CONTENT_TYPE;
use crate::pipeline::{approvals, pauses};

/// Largest approval answer body.
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// The approver a request's token belongs to, or the refusal (status,
/// reason, message). Listing is refused to the webhook token too:
/// Alertmanager has no use for the queue of held runs, and a token that
/// lives in Alertmanager's config should read nothing back.
fn approver<'a>(
    http: &'a Http,
    headers: &HeaderMap,
) -> Result<&'a str, (StatusCode, &'static str, String)> {
    if !http.auth.has_approvers() {
        return Err((
            StatusCode::FORBIDDEN,
            "no_approvers",
            "no approvers are configured (auth.approvers): held runs cannot be listed or answered, they expire".into(),
        ));
    }
    match http.auth.identify(headers) {
        Ok(Caller::Approver(name)) => Ok(name),
        Ok(Caller::Webhook) => Err((
            StatusCode::FORBIDDEN,
            "forbidden",
            "the webhook token may only post alerts: listing and answering approvals needs an approver's own token (auth.approvers)".into(),
        )),
        Err(why) => Err((
            StatusCode::UNAUTHORIZED,
            why.reason(),
            why.message().to_string(),
        )),
    }
}

pub(super) async fn list_approvals(
    State(http): State<Arc<Http>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    if let Err((code, reason, msg)) = approver(&http, &headers) {
        return http.reject(code, reason, peer.map(|Extension(Peer(p))| p), msg);
    }
    let pending: Vec<serde_json::Value> = approvals::pending(&http.shared)
        .into_iter()
        .map(|p| {
            json!({
                "id": p.id,
                "playbook": p.playbook,
                "policy": p.policy,
                "target": p.target,
                "reason": p.reason,
                "actions": p.actions,
                "alertname": p.event.alertname(),
                "requestedAt": p.requested_at,
                "expiresAt": p.expires_at,
            })
        })
        .collect();
    axum::Json(json!({ "pending": pending })).into_response()
}

/// Body of `POST /api/v1/approvals/{id}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerBody {
    /// `approve` or `deny`.
    decision: String,
    /// Accepted for older clients and ignored: who answers is the token's
    /// approver.
    #[serde(default)]
    by: Option<String>,
    /// Optional note (recorded in the audit).
    #[serde(default)]
    comment: String,
}

pub(super) async fn answer_approval(
    State(http): State<Arc<Http>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let peer = peer.map(|Extension(Peer(p))| p);
    let by = match approver(&http, &headers) {
        Ok(name) => name,
        Err((code, reason, msg)) => return http.reject(code, reason, peer, msg),
    };
    let timeout = http.shared.cfg.server.body_timeout;
    let bytes = match read_limited(
        body,
        MAX_ANSWER_BYTES,
        timeout.std(),
        content_length(&headers),
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            let (code, reason, msg) = e.rejection(&format!("{MAX_ANSWER_BYTES} bytes"), timeout);
            return http.reject(code, reason, peer, msg);
        }
    };
    let bad = |msg: String| http.reject(StatusCode::BAD_REQUEST, "invalid_answer", peer, msg);
    let b: AnswerBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => {
            return bad(format!(
                "body: {e} (expected {{\"decision\": \"approve\"|\"deny\", \"comment\": TEXT}})"
            ))
        }
    };
    let approve = match b.decision.as_str() {
        "approve" => true,
        "deny" => false,
        other => return bad(format!("decision: expected approve or deny, got {other:?}")),
    };
    let ignored = b.by.as_deref().map(str::trim).filter(|g| *g != by);
    if let Some(given) = ignored {
        tracing::warn!(approval = %id, by, given, "approval answer names someone else in `by`; the token's approver is recorded");
    }
    match approvals::answer(&http.shared, &id, approve, by, &b.comment) {
        Ok(p) => {
            let mut v = json!({
                "id": id,
                "answer": if approve { "approved" } else { "denied" },
                "by": by,
                "playbook": p.playbook,
                "target": p.target,
                "note": if approve { "queued: the run is decided again now; limits, windows and the breaker still apply" } else { "nothing will be done" },
            });
            if let Some(given) = ignored {
                v["warning"] = json!(format!(
                    "by {given:?} ignored: the answer is recorded as {by:?}, whose token this is"
                ));
            }
            axum::Json(v).into_response()
        }
        Err(approvals::AnswerError::NotPending(why)) => {
            (StatusCode::NOT_FOUND, axum::Json(json!({"error": why}))).into_response()
        }
        Err(approvals::AnswerError::Storage(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": format!("cannot record the answer: {e}")})),
        )
            .into_response(),
    }
}

pub(super) async fn metrics(State(http): State<Arc<Http>>) -> Response {
    http.shared.storage_metrics();
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        http.shared.metrics.encode(),
    )
        .into_response()
}

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

pub(super) async fn readyz(State(http): State<Arc<Http>>) -> Response {
    let shared = &http.shared;
    if shared.stopping.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else if shared.store.health().failing() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage failing: {}\n", shared.store.health().last_error()),
        )
            .into_response()
    } else if shared.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading\n").into_response()
    }
}

/// A pause as the API shows it.
fn pause_json(p: &crate::state::pauses::Pause) -> serde_json::Value {
    json!({
        "id": p.id,
        "playbook": p.playbook,
        "target": p.target,
        "by": p.by,
        "reason": p.reason,
        "at": p.at,
        "until": p.until,
    })
}

pub(super) async fn list_pauses(
    State(http): State<Arc<Http>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    if let Err((code, reason, msg)) = approver(&http, &headers) {
        return http.reject(code, reason, peer.map(|Extension(Peer(p))| p), msg);
    }
    let list: Vec<serde_json::Value> = pauses::active(&http.shared, chrono::Utc::now())
        .iter()
        .map(pause_json)
        .collect();
    axum::Json(json!({ "pauses": list })).into_response()
}

/// Body of `POST /api/v1/pauses`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    /// Playbook to pause.
    playbook: String,
    /// Only on this target (as displayed: `pod etl/x`); absent: every target.
    #[serde(default)]
    target: Option<String>,
    /// How long: `30m`, `4h`.
    #[serde(rename = "for")]
    duration: crate::units::Duration,
    /// Why (recorded in the audit and in the suppressed runs' reason).
    #[serde(default)]
    reason: String,
}

pub(super) async fn add_pause(
    State(http): State<Arc<Http>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let peer = peer.map(|Extension(Peer(p))| p);
    let by = match approver(&http, &headers) {
        Ok(name) => name.to_string(),
        Err((code, reason, msg)) => return http.reject(code, reason, peer, msg),
    };
    let timeout = http.shared.cfg.server.body_timeout;
    let bytes = match read_limited(
        body,
        MAX_ANSWER_BYTES,
        timeout.std(),
        content_length(&headers),
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            let (code, reason, msg) = e.rejection(&format!("{MAX_ANSWER_BYTES} bytes"), timeout);
            return http.reject(code, reason, peer, msg);
        }
    };
    let b: PauseBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => {
            return http.reject(
                StatusCode::BAD_REQUEST,
                "invalid_pause",
                peer,
                format!("body: {e} (expected {{\"playbook\": NAME, \"target\": TARGET, \"for\": \"1h\", \"reason\": TEXT}})"),
            )
        }
    };
    match pauses::pause(
        &http.shared,
        &b.playbook,
        b.target.as_deref(),
        b.duration.chrono(),
        &by,
        &b.reason,
    ) {
        Ok(p) => axum::Json(pause_json(&p)).into_response(),
        Err(e) => pause_error(e),
    }
}

pub(super) async fn lift_pause(
    State(http): State<Arc<Http>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let by = match approver(&http, &headers) {
        Ok(name) => name.to_string(),
        Err((code, reason, msg)) => {
            return http.reject(code, reason, peer.map(|Extension(Peer(p))| p), msg)
        }
    };
    match pauses::resume(&http.shared, &id, &by) {
        Ok(p) => {
            let mut v = pause_json(&p);
            v["resumedBy"] = json!(by);
            axum::Json(v).into_response()
        }
        Err(e) => pause_error(e),
    }
}

fn pause_error(e: pauses::PauseError) -> Response {
    let code = match e {
        pauses::PauseError::Invalid(_) => StatusCode::BAD_REQUEST,
        pauses::PauseError::NotFound(_) => StatusCode::NOT_FOUND,
        pauses::PauseError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, axum::Json(json!({"error": e.to_string()}))).into_response()
}
