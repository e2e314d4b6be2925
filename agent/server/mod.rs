//! HTTP: the Alertmanager webhook, `/metrics`, `/healthz`, `/readyz` and the
//! approvals API, and [`serve`], which runs the agent behind them. The
//! server feeds the pipeline's intake and approvals stages; the pipeline
//! does not know it exists.
//!
//! - [`conn`]: the accept loop and the connection limits (cap with
//!   eviction, header and idle timeouts, read buffer size), all enforced
//!   before any authentication.
//! - [`auth`]: which caller a bearer token is (the webhook, or a named
//!   approver), and the rate-limited log of rejected requests.
//! - [`webhook`]: `POST /webhook/alertmanager` (body limits, validation,
//!   oversized notifications, intake).
//! - [`api`]: the approvals API, metrics and health.
//! - [`trim`]: hands freed memory back to the system after a large body.
//!
//! The app is built by [`app`] from the shared state, so tests can drive it
//! in process or over a real socket.

mod api;
pub mod auth;
mod chat;
mod conn;
mod trim;
mod webhook;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use tokio::sync::watch;

pub use auth::{Auth, Caller};
pub use conn::Peer;
pub use trim::tune_allocator;

use crate::metrics::ReasonLabels;
use crate::pipeline::{Agent, Shared};

/// What the handlers share: the agent's state, the credentials and the
/// log of rejected requests.
#[derive(Debug)]
pub struct Http {
    /// The agent's shared state.
    pub shared: Arc<Shared>,
    auth: Auth,
    rejects: auth::RejectLog,
    trim: trim::Trim,
    /// Posts answers to Slack's `response_url`.
    chat_client: reqwest::Client,
}

/// Serves the HTTP app on `listener` and runs `agent` until `stop` flips to
/// true: then the listener stops accepting, running actions get the grace
/// period, and the inbox and audit are flushed before this returns. The
/// approvers' tokens are read from the agent's config.
pub async fn serve(
    agent: Agent,
    listener: tokio::net::TcpListener,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let auth =
        Auth::load(&agent.shared.cfg, agent.shared.token.clone()).map_err(std::io::Error::other)?;
    serve_with(agent, auth, listener, stop).await
}

/// [`serve`] with credentials already read ([`Auth::load`]).
pub async fn serve_with(
    agent: Agent,
    auth: Auth,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let shared = agent.shared.clone();
    let http = Http::new(shared.clone(), auth);
    let router = app(http.clone());
    let server = tokio::spawn(conn::accept_loop(
        listener,
        router,
        http.clone(),
        stop.clone(),
    ));
    let trimmer = tokio::spawn(trim::run(http.clone(), stop.clone()));
    let core = tokio::spawn(agent.run(stop.clone()));
    let _ = stop.wait_for(|v| *v).await;
    shared.stopping.store(true, Ordering::SeqCst);
    let _ = core.await;
    let _ = trimmer.await;
    match server.await {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(e)),
    }
}

impl Http {
    /// The handlers' state.
    pub fn new(shared: Arc<Shared>, auth: Auth) -> Arc<Self> {
        if !auth.has_approvers()
            && shared
                .engine()
                .config
                .policies
                .values()
                .any(|p| p.doc.spec.approval.required || !p.doc.spec.approval.actions.is_empty())
        {
            tracing::warn!("a policy holds runs for approval but no approvers are configured (auth.approvers): held runs can only expire");
        }
        let rejects = auth::RejectLog::new(shared.cfg.server.reject_log_interval.std());
        Arc::new(Self {
            shared,
            auth,
            rejects,
            trim: trim::Trim::default(),
            chat_client: reqwest::Client::builder()
                .user_agent(concat!("remediate/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
        })
    }

    /// Counts and logs (rate-limited) a turned-away request (or the
    /// turned-away part of one).
    fn note_reject(&self, reason: &'static str, code: u16, peer: Option<SocketAddr>, msg: &str) {
        self.shared
            .metrics
            .http_rejected
            .get_or_create(&ReasonLabels { reason })
            .inc();
        self.rejects.note(reason, Some(code), peer, msg);
    }

    /// [`Http::note_reject`], and the request's JSON answer.
    fn reject(
        &self,
        code: StatusCode,
        reason: &'static str,
        peer: Option<SocketAddr>,
        msg: String,
    ) -> Response {
        self.note_reject(reason, code.as_u16(), peer, &msg);
        let mut r = (code, axum::Json(json!({ "error": msg }))).into_response();
        match code {
            StatusCode::UNAUTHORIZED => {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of the body may still be arriving: do not keep the
            // connection for another request.
            StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE => {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        r
    }
}

/// The agent's HTTP routes.
pub fn app(http: Arc<Http>) -> Router {
    Router::new()
        .route("/webhook/alertmanager", post(webhook::webhook))
        .route("/webhook/grafana", post(webhook::grafana))
        .route("/metrics", get(api::metrics))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/api/v1/approvals", get(api::list_approvals))
        .route("/api/v1/approvals/{id}", post(api::answer_approval))
        .route("/api/v1/pauses", get(api::list_pauses).post(api::add_pause))
        .route(
            "/api/v1/pauses/{id}",
            axum::routing::delete(api::lift_pause),
        )
        .route("/chat/slack/interactions", post(chat::slack_interactions))
        .route(
            "/chat/discord/interactions",
            post(chat::discord_interactions),
        )
        .with_state(http)
}

/// A listener on `addr` with a deep accept queue (4096, or the kernel's
/// `somaxconn` if lower), so a burst of connections waits for the accept
/// loop instead of being dropped.
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Raises the soft open-files limit to the hard one (sockets are files)
/// and checks that `server.maxConnections` fits under it with room for the
/// agent's own files and backend connections. Returns (soft, hard) after.
pub fn raise_nofile(max_connections: usize) -> Result<(u64, u64), String> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    /// Descriptors kept for the audit, inbox, playbooks and backends.
    const RESERVE: u64 = 128;
    let mut lim = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (lim.current, lim.maximum) {
        let raised = Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if soft < hard && setrlimit(Resource::Nofile, raised).is_ok() {
            lim = raised;
        }
    }
    let soft = lim.current.unwrap_or(u64::MAX);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    if (max_connections as u64).saturating_add(RESERVE) > soft {
        return Err(format!(
            "server.maxConnections {max_connections} does not fit the open-files limit {soft} (hard {hard}) with {RESERVE} kept for the agent's own files: lower server.maxConnections or raise the limit (ulimit -n, LimitNOFILE=)"
        ));
    }
    Ok((soft, hard))
}

/// Why a body was not read.
enum ReadError {
    TooLarge,
    Timeout,
    Io(String),
}

impl ReadError {
    /// The answer's status, reason label and message; `limit` names the
    /// size limit in force.
    fn rejection(
        self,
        limit: &str,
        timeout: crate::units::Duration,
    ) -> (StatusCode, &'static str, String) {
        match self {
            Self::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("body larger than {limit}"),
            ),
            Self::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("body not complete within {timeout} (server.bodyTimeout)"),
            ),
            Self::Io(msg) => (
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                format!("cannot read body: {msg}"),
            ),
        }
    }
}

/// Most bytes read (and thrown away) from an oversized body, so the client
/// sees the 413 instead of a reset connection; beyond it, the connection is cut.
const DRAIN_LIMIT: usize = 16 << 20;

/// Reads at most `max` bytes of body within `timeout` (for the whole body).
/// An oversized body is drained (up to [`DRAIN_LIMIT`], within the same
/// timeout) and reported as too large. The buffer is sized from
/// `Content-Length` when given, so a large body is one allocation.
async fn read_limited(
    body: Body,
    max: usize,
    timeout: Duration,
    length: Option<usize>,
) -> Result<Bytes, ReadError> {
    if length.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(ReadError::TooLarge);
    }
    match tokio::time::timeout(timeout, read_all(body, max, length)).await {
        Ok(r) => r,
        Err(_) => Err(ReadError::Timeout),
    }
}

async fn read_all(mut body: Body, max: usize, length: Option<usize>) -> Result<Bytes, ReadError> {
    use http_body_util::BodyExt;
    let mut buf = Vec::with_capacity(length.unwrap_or(0).min(max));
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

/// The `Content-Length` of a request, if it has a valid one.
fn content_length(headers: &axum::http::HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
