//! HTTP: the Alertmanager webhook, `/metrics`, `/healthz`, `/readyz` and the
//! approvals API, and [`serve`], which runs the agent behind them. The
//! server feeds the pipeline's intake and approvals stages; the pipeline
//! does not know it exists.
//!
//! The app is built by [`app`] from the shared state, so tests can drive it
//! in process or over a real socket.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::metrics::{CodeLabels, CONTENT_TYPE};
use crate::pipeline::intake::{self, Refused};
use crate::pipeline::{approvals, Agent, Shared};
use crate::trigger::alertmanager::Payload;

/// Serves the HTTP app on `listener` and runs `agent` until `stop` flips to
/// true: then the listener stops accepting, running actions get the grace
/// period, and the inbox and audit are flushed before this returns.
pub async fn serve(
    agent: Agent,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let shared = agent.shared.clone();
    let app = app(shared.clone());
    let mut http_stop = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|v| *v).await;
            })
            .await
    });
    let core = tokio::spawn(agent.run(stop.clone()));
    let _ = stop.wait_for(|v| *v).await;
    shared.stopping.store(true, Ordering::SeqCst);
    let _ = core.await;
    match server.await {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(e)),
    }
}

/// The agent's HTTP routes.
pub fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/webhook/alertmanager", post(webhook))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/approvals", get(list_approvals))
        .route("/api/v1/approvals/{id}", post(answer_approval))
        .with_state(shared)
}

fn reply(shared: &Shared, code: StatusCode, body: serde_json::Value) -> Response {
    shared
        .metrics
        .webhook_requests
        .get_or_create(&CodeLabels {
            code: code.as_u16(),
        })
        .inc();
    (code, axum::Json(body)).into_response()
}

/// True when the request carries the configured bearer token. The
/// comparison takes the same time wherever the first difference is.
fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(want) = &shared.token else {
        return true;
    };
    let Some(got) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    let got = got.trim_ascii();
    bool::from(got.ct_eq(want.as_bytes()))
}

async fn webhook(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    if shared.stopping.load(Ordering::SeqCst) {
        return reply(
            &shared,
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "agent is shutting down; retry"}),
        );
    }
    if !authorized(&shared, &headers) {
        let mut r = reply(
            &shared,
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing or wrong bearer token"}),
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let max = shared.cfg.webhook.max_body_bytes;
    let too_big = || {
        reply(
            &shared,
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": format!("body larger than {max} bytes (webhook.maxBodyBytes)")}),
        )
    };
    let bytes = match read_limited(body, max).await {
        Ok(b) => b,
        Err(ReadError::TooLarge) => return too_big(),
        Err(ReadError::Io(msg)) => {
            return reply(
                &shared,
                StatusCode::BAD_REQUEST,
                json!({"error": format!("cannot read body: {msg}")}),
            )
        }
    };
    let payload = match Payload::parse(&bytes) {
        Ok(p) => p,
        Err(e) => {
            return reply(
                &shared,
                StatusCode::BAD_REQUEST,
                json!({"error": e.to_string()}),
            )
        }
    };
    if payload.truncated_alerts > 0 {
        tracing::warn!(
            truncated = payload.truncated_alerts,
            "Alertmanager left alerts out of this group (max_alerts); they are not decided"
        );
    }
    let events = payload.events();
    match intake::accept(&shared, events).await {
        Ok(a) => reply(
            &shared,
            StatusCode::OK,
            json!({"status": "accepted", "accepted": a.accepted, "duplicates": a.duplicates}),
        ),
        Err(Refused::QueueFull { depth, capacity }) => {
            let mut r = reply(
                &shared,
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": format!("event queue is full ({depth} waiting, webhook.queueCapacity {capacity}); retry")}),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
        Err(Refused::Storage(e)) => reply(
            &shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": format!("cannot record the events durably: {e}; retry")}),
        ),
    }
}

enum ReadError {
    TooLarge,
    Io(String),
}

/// Most bytes read (and thrown away) from an oversized body, so the client
/// sees the 413 instead of a reset connection; beyond it, the connection is cut.
const DRAIN_LIMIT: usize = 16 << 20;

/// Reads at most `max` bytes of body. An oversized body is drained (up to
/// [`DRAIN_LIMIT`]) and reported as too large.
async fn read_limited(mut body: Body, max: usize) -> Result<Bytes, ReadError> {
    use http_body_util::BodyExt;
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Io(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen > max {
            if seen > DRAIN_LIMIT {
                return Err(ReadError::TooLarge);
            }
            buf = Vec::new();
            continue;
        }
        buf.extend_from_slice(&data);
    }
    if seen > max {
        return Err(ReadError::TooLarge);
    }
    Ok(Bytes::from(buf))
}

fn unauthorized() -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": "missing or wrong bearer token"})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

async fn list_approvals(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let pending: Vec<serde_json::Value> = approvals::pending(&shared)
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
    /// Who answers (recorded in the audit).
    by: String,
    /// Optional note (recorded in the audit).
    #[serde(default)]
    comment: String,
}

async fn answer_approval(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let bad =
        |msg: String| (StatusCode::BAD_REQUEST, axum::Json(json!({"error": msg}))).into_response();
    let b: AnswerBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad(format!("body: {e} (expected {{\"decision\": \"approve\"|\"deny\", \"by\": NAME, \"comment\": TEXT}})")),
    };
    let approve = match b.decision.as_str() {
        "approve" => true,
        "deny" => false,
        other => return bad(format!("decision: expected approve or deny, got {other:?}")),
    };
    if b.by.trim().is_empty() {
        return bad("by: say who answers (it is recorded in the audit)".into());
    }
    match approvals::answer(&shared, &id, approve, b.by.trim(), &b.comment) {
        Ok(p) => axum::Json(json!({
            "id": id,
            "answer": if approve { "approved" } else { "denied" },
            "playbook": p.playbook,
            "target": p.target,
            "note": if approve { "queued: the run is decided again now; limits, windows and the breaker still apply" } else { "nothing will be done" },
        }))
        .into_response(),
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

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    shared.storage_metrics();
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        shared.metrics.encode(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
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
