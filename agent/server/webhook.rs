//! `POST /webhook/alertmanager` and `POST /webhook/grafana`: authenticated
//! (the webhook token only), size- and time-limited body, validated
//! payload, and a notification with more alerts than the queue can ever
//! hold accepted in part or refused, never answered 503 forever. Grafana's
//! contact-point test notification is audited as a test and runs nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::json;

use super::{content_length, read_limited, Caller, Http, Peer};
use crate::config::Oversized;
use crate::metrics::CodeLabels;
use crate::pipeline::intake::{self, Refused};
use crate::trigger::alertmanager::Payload;
use crate::trigger::grafana;

/// Which sender's body a route takes.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// Alertmanager's webhook body, version "4".
    Alertmanager,
    /// Grafana Unified Alerting's webhook contact point, version "1".
    Grafana,
}

/// Bodies at least this large are followed by a memory trim once the
/// pipeline is idle again.
const TRIM_AFTER_BYTES: usize = 256 << 10;

fn count(http: &Http, code: StatusCode) {
    http.shared
        .metrics
        .webhook_requests
        .get_or_create(&CodeLabels {
            code: code.as_u16(),
        })
        .inc();
}

fn reply(http: &Http, code: StatusCode, body: serde_json::Value) -> Response {
    count(http, code);
    (code, axum::Json(body)).into_response()
}

pub(super) async fn webhook(
    State(http): State<Arc<Http>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(http, peer, headers, body, Source::Alertmanager).await
}

pub(super) async fn grafana(
    State(http): State<Arc<Http>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(http, peer, headers, body, Source::Grafana).await
}

async fn handle(
    http: Arc<Http>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
    source: Source,
) -> Response {
    let peer = peer.map(|Extension(Peer(p))| p);
    let reject = |code: StatusCode, reason: &'static str, msg: String| {
        count(&http, code);
        http.reject(code, reason, peer, msg)
    };
    let shared = &http.shared;
    if shared.stopping.load(Ordering::SeqCst) {
        return reply(
            &http,
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "agent is shutting down; retry"}),
        );
    }
    if !http.auth.webhook_open() {
        match http.auth.identify(&headers) {
            Ok(Caller::Webhook) => {}
            Ok(Caller::Approver(name)) => {
                return reject(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("this is approver {name:?}'s token: approvers cannot post alerts (Alertmanager sends the webhook token, auth.tokenFile)"),
                )
            }
            Err(why) => {
                return reject(
                    StatusCode::UNAUTHORIZED,
                    why.reason(),
                    why.message().to_string(),
                )
            }
        }
    }
    let cfg = &shared.cfg;
    let max = cfg.webhook.max_body_bytes;
    let timeout = cfg.server.body_timeout;
    let bytes = match read_limited(body, max, timeout.std(), content_length(&headers)).await {
        Ok(b) => b,
        Err(e) => {
            let (code, reason, msg) =
                e.rejection(&format!("{max} bytes (webhook.maxBodyBytes)"), timeout);
            return reject(code, reason, msg);
        }
    };
    let parsed = match source {
        Source::Alertmanager => Payload::parse(&bytes)
            .map(|p| (p.truncated_alerts, p.into_events(), Vec::new()))
            .map_err(|e| e.to_string()),
        Source::Grafana => grafana::Payload::parse(&bytes)
            .map(|p| (p.truncated_alerts, p.events, p.tests))
            .map_err(|e| e.to_string()),
    };
    let (truncated, mut events, tests) = match parsed {
        Ok(p) => p,
        Err(e) => return reject(StatusCode::BAD_REQUEST, "invalid_payload", e),
    };
    let large = bytes.len() >= TRIM_AFTER_BYTES;
    drop(bytes);
    if truncated > 0 {
        tracing::warn!(
            truncated,
            source = ?source,
            "the sender left alerts out of this group (max alerts); they are not decided"
        );
    }
    let n_tests = tests.len();
    if n_tests > 0 {
        // Recorded before the answer, like every accepted event.
        let sh = shared.clone();
        let written = tokio::task::spawn_blocking(move || intake::record_tests(&sh, &tests)).await;
        match written {
            Ok(Ok(())) => tracing::info!(
                tests = n_tests,
                "Grafana contact point test notification received; nothing is run"
            ),
            Ok(Err(e)) => {
                return reply(
                    &http,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": format!("cannot record the test notification durably: {e}; retry")}),
                )
            }
            Err(e) => {
                return reply(
                    &http,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": format!("recording the test notification failed: {e}")}),
                )
            }
        }
        if events.is_empty() {
            return reply(
                &http,
                StatusCode::OK,
                json!({"status": "test", "accepted": 0, "duplicates": 0, "tests": n_tests}),
            );
        }
    }
    let n = events.len();
    let capacity = cfg.webhook.queue_capacity;
    let mut refused = 0;
    if n > capacity {
        let msg = format!("the notification carries {n} alerts, more than webhook.queueCapacity ({capacity}) can ever hold");
        let advice = format!("set the Alertmanager receiver's max_alerts to at most {capacity}, or raise webhook.queueCapacity");
        match cfg.webhook.oversized_notification {
            Oversized::Refuse => {
                shared.metrics.alerts_refused.inc_by(n as u64);
                return reject(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "oversized_notification",
                    format!(
                        "{msg}; nothing accepted (webhook.oversizedNotification: refuse): {advice}"
                    ),
                );
            }
            Oversized::AcceptPart => {
                let depth = shared.metrics.queue_depth.get().max(0) as usize;
                let room = capacity.saturating_sub(depth);
                if room > 0 {
                    refused = n - room;
                    events.truncate(room);
                    shared.metrics.alerts_refused.inc_by(refused as u64);
                    http.note_reject(
                        "oversized_notification",
                        200,
                        peer,
                        &format!("{msg}: accepted alerts[0..{room}], refused alerts[{room}..{n}] ({refused}); {advice}"),
                    );
                }
                // No room at all: the queue is full, and 503 below says retry.
            }
        }
    }
    let result = intake::accept(shared, events).await;
    if large {
        http.trim.after_large_body();
    }
    match result {
        Ok(a) if refused > 0 => reply(
            &http,
            StatusCode::OK,
            json!({
                "status": "partial",
                "accepted": a.accepted,
                "duplicates": a.duplicates,
                "refused": refused,
                "error": format!("alerts[{}..{n}] refused: the notification carries {n} alerts, more than webhook.queueCapacity ({capacity}); set the Alertmanager receiver's max_alerts to at most {capacity}", n - refused),
            }),
        ),
        Ok(a) if n_tests > 0 => reply(
            &http,
            StatusCode::OK,
            json!({"status": "accepted", "accepted": a.accepted, "duplicates": a.duplicates, "tests": n_tests}),
        ),
        Ok(a) => reply(
            &http,
            StatusCode::OK,
            json!({"status": "accepted", "accepted": a.accepted, "duplicates": a.duplicates}),
        ),
        Err(Refused::QueueFull { depth, capacity }) => {
            let mut r = reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                format!("event queue is full ({depth} waiting, webhook.queueCapacity {capacity}); retry"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
        Err(Refused::Storage(e)) => reply(
            &http,
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": format!("cannot record the events durably: {e}; retry")}),
        ),
    }
}
