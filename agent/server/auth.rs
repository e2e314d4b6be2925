//! Who is calling: the webhook token (may post alerts, nothing else) or an
//! approver's token (may list and answer held runs, nothing else), read
//! from the `Authorization: Bearer` header; and the rate-limited log of
//! requests and connections turned away.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use subtle::ConstantTimeEq;

use crate::config::{read_secret, AgentConfig};

/// The credentials the agent accepts.
#[derive(Clone)]
pub struct Auth {
    /// The webhook token; None when `auth.allowUnauthenticated` is set and
    /// no token is configured.
    webhook: Option<String>,
    /// Approvers by token.
    approvers: Vec<(String, String)>,
    /// The Slack app's signing secret (`chat.slack`).
    slack_secret: Option<Vec<u8>>,
    /// The Discord application's public key (`chat.discord`).
    discord_key: Option<ed25519_dalek::VerifyingKey>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: tokens never reach a log line.
        f.debug_struct("Auth")
            .field("webhook", &self.webhook.is_some())
            .field(
                "approvers",
                &self.approvers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("slack", &self.slack_secret.is_some())
            .field("discord", &self.discord_key.is_some())
            .finish()
    }
}

/// The caller a request's token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// The webhook token (Alertmanager).
    Webhook,
    /// An approver, by configured name.
    Approver(&'a str),
}

/// Why a request carries no usable credential (all are 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthenticated {
    /// No `Authorization` header.
    Missing,
    /// A header that is not `Bearer <token>`.
    Malformed,
    /// A token that is nobody's.
    Unknown,
}

impl Unauthenticated {
    /// The reason label in metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::Malformed => "malformed_authorization",
            Self::Unknown => "unknown_token",
        }
    }

    /// What the 401 answer says.
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => "missing bearer token (Authorization: Bearer <token>)",
            Self::Malformed => "malformed Authorization header: expected Bearer <token>",
            Self::Unknown => "wrong bearer token",
        }
    }
}

impl Auth {
    /// The webhook token (already read by the agent) and the approvers'
    /// tokens, read now from their files or environment variables. Refuses
    /// an approver token that is empty, the shipped placeholder, the
    /// webhook token or another approver's, so a token names one caller.
    pub fn load(cfg: &AgentConfig, webhook: Option<String>) -> Result<Self, String> {
        let mut approvers: Vec<(String, String)> = Vec::new();
        for (i, a) in cfg.auth.approvers.iter().enumerate() {
            let field = if a.token_file.is_some() {
                format!("auth.approvers[{i}].tokenFile")
            } else {
                format!("auth.approvers[{i}].tokenEnv")
            };
            let token = read_secret(a.token_file.as_deref(), a.token_env.as_deref())
                .map_err(|e| format!("{field}: {e}"))?
                .ok_or_else(|| {
                    format!(
                        "{field}: approver {:?} has no token: ${} is unset or empty",
                        a.name,
                        a.token_env.as_deref().unwrap_or_default()
                    )
                })?;
            if token.starts_with("REPLACE-ME") {
                return Err(format!(
                    "{field}: approver {:?}'s token is the shipped placeholder: generate one (openssl rand -hex 32)",
                    a.name
                ));
            }
            if webhook.as_deref() == Some(token.as_str()) {
                return Err(format!(
                    "{field}: approver {:?}'s token is the webhook token; give each approver a token of their own",
                    a.name
                ));
            }
            if let Some((other, _)) = approvers.iter().find(|(_, t)| *t == token) {
                return Err(format!(
                    "{field}: approver {:?}'s token is also {other:?}'s; give each approver a token of their own",
                    a.name
                ));
            }
            approvers.push((a.name.clone(), token));
        }
        let slack_secret = match &cfg.chat.slack {
            None => None,
            Some(s) => {
                let field = if s.signing_secret_file.is_some() {
                    "chat.slack.signingSecretFile"
                } else {
                    "chat.slack.signingSecretEnv"
                };
                let secret = read_secret(
                    s.signing_secret_file.as_deref(),
                    s.signing_secret_env.as_deref(),
                )
                .map_err(|e| format!("{field}: {e}"))?
                .ok_or_else(|| {
                    format!(
                        "{field}: ${} is unset or empty",
                        s.signing_secret_env.as_deref().unwrap_or_default()
                    )
                })?;
                Some(secret.into_bytes())
            }
        };
        let discord_key = match &cfg.chat.discord {
            None => None,
            Some(d) => Some(
                crate::chat::discord::public_key(&d.public_key)
                    .map_err(|e| format!("chat.discord.publicKey: {e}"))?,
            ),
        };
        Ok(Self {
            webhook,
            approvers,
            slack_secret,
            discord_key,
        })
    }

    /// The Slack signing secret, when `chat.slack` is configured.
    pub fn slack_secret(&self) -> Option<&[u8]> {
        self.slack_secret.as_deref()
    }

    /// The Discord public key, when `chat.discord` is configured.
    pub fn discord_key(&self) -> Option<&ed25519_dalek::VerifyingKey> {
        self.discord_key.as_ref()
    }

    /// True when the webhook needs no token (`auth.allowUnauthenticated`).
    pub fn webhook_open(&self) -> bool {
        self.webhook.is_none()
    }

    /// True when at least one approver is configured.
    pub fn has_approvers(&self) -> bool {
        !self.approvers.is_empty()
    }

    /// The caller whose token the request carries. The `Bearer` scheme is
    /// matched case-insensitively (RFC 9110 §11.1); the token is compared
    /// with every configured one in constant time, whichever matches.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Caller<'_>, Unauthenticated> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(Unauthenticated::Missing)?;
        let token = bearer(value.as_bytes()).ok_or(Unauthenticated::Malformed)?;
        let mut found = None;
        if let Some(w) = &self.webhook {
            if bool::from(token.ct_eq(w.as_bytes())) {
                found = Some(Caller::Webhook);
            }
        }
        for (name, t) in &self.approvers {
            if bool::from(token.ct_eq(t.as_bytes())) {
                found = Some(Caller::Approver(name));
            }
        }
        found.ok_or(Unauthenticated::Unknown)
    }
}

/// The token of `Bearer <token>`: the scheme in any case, then one or more
/// spaces; surrounding whitespace ignored. None for another scheme or an
/// empty token.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Logs of turned-away requests and connections, at most one line per
/// reason per interval; the line counts the ones not logged since.
#[derive(Debug)]
pub struct RejectLog {
    interval: Duration,
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl RejectLog {
    /// A log that writes each reason at most once per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Notes one rejection (`status`: the answer's, None for a connection
    /// closed without one); logs it unless this reason was logged within the
    /// interval. `detail` is the agent's own message, never request data
    /// that could hold a secret.
    pub fn note(
        &self,
        reason: &'static str,
        status: Option<u16>,
        peer: Option<SocketAddr>,
        detail: &str,
    ) {
        let now = Instant::now();
        let suppressed = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            match last.get_mut(reason) {
                Some((at, n)) if now.duration_since(*at) < self.interval => {
                    *n += 1;
                    return;
                }
                Some((at, n)) => {
                    let s = *n;
                    *at = now;
                    *n = 0;
                    s
                }
                None => {
                    last.insert(reason, (now, 0));
                    0
                }
            }
        };
        let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
        tracing::warn!(
            reason,
            status,
            peer = %peer,
            suppressed,
            interval = %humantime::format_duration(self.interval),
            "http: rejected: {detail}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_other_schemes_are_not_bearer() {
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR   abc  "] {
            assert_eq!(bearer(v.as_bytes()), Some(&b"abc"[..]), "{v}");
        }
        for v in [
            "Basic abc",
            "Bearer",
            "Bearer ",
            "Bearerabc",
            "Token abc",
            "",
        ] {
            assert_eq!(bearer(v.as_bytes()), None, "{v}");
        }
    }

    fn auth() -> Auth {
        Auth {
            webhook: Some("hook".into()),
            approvers: vec![("alice".into(), "a-tok".into())],
            slack_secret: None,
            discord_key: None,
        }
    }

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn a_token_names_its_caller() {
        let a = auth();
        assert_eq!(a.identify(&headers("bearer hook")), Ok(Caller::Webhook));
        assert_eq!(
            a.identify(&headers("Bearer a-tok")),
            Ok(Caller::Approver("alice"))
        );
        assert_eq!(
            a.identify(&headers("Bearer nope")),
            Err(Unauthenticated::Unknown)
        );
        assert_eq!(
            a.identify(&headers("Basic aG9vaw==")),
            Err(Unauthenticated::Malformed)
        );
        assert_eq!(a.identify(&HeaderMap::new()), Err(Unauthenticated::Missing));
        // Debug output names approvers, never tokens.
        let shown = format!("{a:?}");
        assert!(shown.contains("alice") && !shown.contains("a-tok") && !shown.contains("hook\""));
    }

    #[test]
    fn an_approver_token_must_be_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "hook\n").unwrap();
        let yaml = format!(
            "auth:\n  approvers:\n    - {{ name: alice, tokenFile: {} }}\n",
            f.display()
        );
        let cfg = AgentConfig::parse(std::path::Path::new("a.yaml"), &yaml).unwrap();
        let err = Auth::load(&cfg, Some("hook".into())).unwrap_err();
        assert_eq!(
            err,
            "auth.approvers[0].tokenFile: approver \"alice\"'s token is the webhook token; give each approver a token of their own"
        );
        std::fs::write(&f, "alice-token\n").unwrap();
        let a = Auth::load(&cfg, Some("hook".into())).unwrap();
        assert!(a.has_approvers());
    }
}
