//! Silence while acting: for policies with `silenceWhileActing`, a run that
//! executes for an alert first creates an Alertmanager silence (API v2)
//! matching the alert's labels, so on-call is not paged for what the agent
//! is already fixing, and expires it when the run ends. The silence's own
//! end is the run's step and verify timeouts from now, so it lapses by
//! itself if the agent dies mid-run. A silence that cannot be made is
//! logged and counted; the run never waits on it beyond the API timeout.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::Shared;
use crate::config::AlertmanagerApi;
use crate::engine::{Engine, Planned};
use crate::event::{Status, TriggerKind};
use crate::metrics::ResultLabels;
use crate::policy::Decision;

/// A client of one Alertmanager's silences API.
#[derive(Debug)]
pub struct Silencer {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Silencer {
    /// The configured Alertmanager, if any; a bad token file is an error.
    pub fn from_config(cfg: Option<&AlertmanagerApi>) -> Result<Option<Self>, String> {
        let Some(c) = cfg else { return Ok(None) };
        let token = crate::config::read_secret(c.token_file.as_deref(), None)
            .map_err(|e| format!("alertmanager.tokenFile: {e}"))?;
        let url = c.url.trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("alertmanager.url: {url:?} is not an http(s) URL"));
        }
        let client = reqwest::Client::builder()
            .timeout(c.timeout.std())
            .build()
            .map_err(|e| format!("alertmanager: {e}"))?;
        Ok(Some(Self { client, url, token }))
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Creates a silence of exactly these labels until `ends_at`; its id.
    pub async fn create(
        &self,
        labels: &crate::event::Labels,
        ends_at: DateTime<Utc>,
        comment: &str,
    ) -> Result<String, String> {
        let matchers: Vec<_> = labels
            .iter()
            .map(|(k, v)| json!({"name": k, "value": v, "isRegex": false, "isEqual": true}))
            .collect();
        let body = json!({
            "matchers": matchers,
            "startsAt": Utc::now(),
            "endsAt": ends_at,
            "createdBy": "remediate",
            "comment": comment,
        });
        let r = self
            .auth(self.client.post(format!("{}/api/v2/silences", self.url)))
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("POST /api/v2/silences: {}", e.without_url()))?;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!(
                "POST /api/v2/silences: {status}: {}",
                text.chars().take(300).collect::<String>()
            ));
        }
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("POST /api/v2/silences: answer is not JSON: {e}"))?;
        v["silenceID"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("POST /api/v2/silences: no silenceID in {text}"))
    }

    /// Expires a silence (idempotent: one already expired is fine).
    pub async fn expire(&self, id: &str) -> Result<(), String> {
        let r = self
            .auth(
                self.client
                    .delete(format!("{}/api/v2/silence/{id}", self.url)),
            )
            .send()
            .await
            .map_err(|e| format!("DELETE /api/v2/silence/{id}: {}", e.without_url()))?;
        let status = r.status();
        if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        let text = r.text().await.unwrap_or_default();
        // Alertmanager answers 500 "silence ... already expired" for a second expiry.
        if text.contains("already expired") {
            return Ok(());
        }
        Err(format!(
            "DELETE /api/v2/silence/{id}: {status}: {}",
            text.chars().take(300).collect::<String>()
        ))
    }
}

fn count(shared: &Shared, result: &'static str) {
    shared
        .metrics
        .silences
        .get_or_create(&ResultLabels { result })
        .inc();
}

/// Before an executing run: its alert's silence, if its policy asks for one.
pub(super) async fn begin(shared: &Shared, engine: &Engine, p: &Planned) -> Option<String> {
    if p.decision != Decision::Execute
        || p.trigger.kind != TriggerKind::Alert
        || p.trigger.status != Status::Firing
        || p.trigger.labels.is_empty()
    {
        return None;
    }
    let wanted = engine
        .config
        .policies
        .get(&p.policy)
        .is_some_and(|pol| pol.doc.spec.silence_while_acting);
    if !wanted {
        return None;
    }
    let Some(s) = shared.silencer.as_ref() else {
        tracing::warn!(policy = %p.policy, "policy asks for silenceWhileActing but the agent config has no alertmanager: acting without a silence");
        count(shared, "failure");
        return None;
    };
    let budget: std::time::Duration = p
        .steps
        .iter()
        .map(|s| s.timeout)
        .sum::<std::time::Duration>()
        + p.verify_timeout;
    let ends_at = Utc::now()
        + chrono::Duration::from_std(budget).unwrap_or(chrono::Duration::hours(1))
        + chrono::Duration::minutes(1);
    let comment = format!(
        "remediate on {} is running playbook {} on {}; expired when the run ends",
        shared.node,
        p.playbook,
        p.target_display()
    );
    match s.create(&p.trigger.labels, ends_at, &comment).await {
        Ok(id) => {
            tracing::info!(silence = %id, until = %ends_at, "alert silenced in Alertmanager while the run acts");
            count(shared, "created");
            Some(id)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot silence the alert in Alertmanager; acting without a silence");
            count(shared, "failure");
            None
        }
    }
}

/// After the run: its silence expired.
pub(super) async fn end(shared: &Shared, id: Option<String>) {
    let (Some(id), Some(s)) = (id, shared.silencer.as_ref()) else {
        return;
    };
    match s.expire(&id).await {
        Ok(()) => {
            tracing::info!(silence = %id, "silence expired: the run ended");
            count(shared, "expired");
        }
        Err(e) => {
            tracing::warn!(silence = %id, error = %e, "cannot expire the silence; it ends by itself at its end time");
            count(shared, "failure");
        }
    }
}
