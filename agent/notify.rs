//! Notifications: Slack and Discord incoming webhooks and a generic JSON
//! webhook. A notification never blocks or fails an action: the agent sends
//! it on its own task, and a failure is logged, counted and audited.
//!
//! Webhook URLs are secrets (whoever has a Slack URL can post to the
//! channel): they are never logged, and errors are stripped of them.

use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use crate::chat::{self, Press};
use crate::config::{ChatConfig, NotifyKind, NotifySink};

/// What a notification says.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    /// Playbook name.
    pub playbook: String,
    /// The playbook's runbook link, if it has one.
    pub runbook: Option<String>,
    /// Alert name, when an alert triggered it.
    pub alertname: Option<String>,
    /// `alert`, `schedule` or `manual`.
    pub trigger: String,
    /// The same, typed.
    #[serde(skip)]
    pub trigger_kind: crate::event::TriggerKind,
    /// Alert fingerprint (or tick identity).
    pub fingerprint: String,
    /// Target, e.g. `pod etl/spark-driver-1`.
    pub target: String,
    /// Actions of the run, in order.
    pub actions: Vec<String>,
    /// `execute`, `dry-run`, `suppressed` or `needs-approval`.
    pub decision: String,
    /// Why the gate decided so.
    pub reason: String,
    /// `verified`, `failed`, `not-executed`, or `unresolved` (an escalation).
    pub status: String,
    /// What happened, in words.
    pub outcome: String,
    /// The agent's node.
    pub node: String,
    /// Audit id of the first step (to find the records).
    pub audit_id: String,
    /// When the run was decided.
    pub decided_at: chrono::DateTime<chrono::Utc>,
    /// For a run held for approval: how to approve or deny it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub how_to_approve: Option<String>,
    /// The alert's labels (empty for schedule and manual runs); sinks route by them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: crate::event::Labels,
    /// What the driver saw (the step records' `evidence`): last termination,
    /// log lines, sessions terminated, bytes freed. Scrubbed and capped
    /// already; each sink caps it again to its own limits.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub evidence: std::collections::BTreeMap<String, String>,
    /// For a run held for approval: the approval id (the chat buttons' value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
}

impl Notice {
    fn headline(&self) -> String {
        let what = match (self.decision.as_str(), self.status.as_str()) {
            (_, "failed") => "FAILED",
            (_, "unresolved") => "UNRESOLVED: the fix did not help",
            ("execute", _) => "remediated",
            ("dry-run", _) => "would remediate (dry-run)",
            ("needs-approval", _) => "needs approval",
            ("suppressed", _) => "suppressed",
            _ => "decided",
        };
        format!(
            "[remediate] {what}: {} on {} ({})",
            self.playbook, self.target, self.node
        )
    }

    fn body(&self) -> String {
        let mut s = format!(
            "decision: {} ({})\noutcome: {}",
            self.decision, self.reason, self.outcome
        );
        if let Some(a) = &self.alertname {
            s.push_str(&format!("\nalert: {a}"));
        }
        s.push_str(&format!("\naudit id: {}", self.audit_id));
        if let Some(h) = &self.how_to_approve {
            s.push_str(&format!("\n{h}"));
        }
        s
    }
}

/// One configured sink with its URL resolved.
#[derive(Clone)]
struct Sink {
    name: String,
    kind: NotifyKind,
    url: String,
    on: Vec<String>,
    timeout: Duration,
    attempts: u32,
    matchers: Vec<crate::playbook::matcher::Matcher>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the URL.
        f.debug_struct("Sink")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// The configured sinks.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    sinks: Vec<Sink>,
    client: reqwest::Client,
    /// Buttons on Slack messages (`chat.slack` configured).
    slack_buttons: bool,
    /// Buttons on Discord messages (`chat.discord` configured).
    discord_buttons: bool,
    pause_choices: Vec<crate::units::Duration>,
}

/// One delivery's result.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Sink name.
    pub sink: String,
    /// Ok, or what went wrong (without the URL).
    pub result: Result<(), String>,
}

impl Notifier {
    /// Resolves URLs (reading `urlFile`s). Errors name the sink. Messages
    /// carry buttons for the platforms `chat` answers.
    pub fn from_config(sinks: &[NotifySink], chat: &ChatConfig) -> Result<Self, String> {
        let mut out = Vec::with_capacity(sinks.len());
        for s in sinks {
            let url = match (&s.url, &s.url_file) {
                (Some(u), _) => u.clone(),
                (None, Some(f)) => crate::config::read_secret(Some(f), None)
                    .map_err(|e| format!("notify sink {:?}: urlFile {e}", s.name))?
                    .unwrap_or_default(),
                (None, None) => return Err(format!("notify sink {:?}: no url", s.name)),
            };
            reqwest::Url::parse(&url)
                .map_err(|e| format!("notify sink {:?}: bad url: {e}", s.name))?;
            let matchers = s
                .matchers
                .iter()
                .map(|m| crate::playbook::matcher::parse_matcher(m))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("notify sink {:?}: matchers: {e}", s.name))?;
            out.push(Sink {
                name: s.name.clone(),
                kind: s.kind,
                url,
                on: s.on.clone(),
                timeout: s.timeout.std(),
                attempts: s.attempts.max(1),
                matchers,
            });
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("remediate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("notify: cannot build HTTP client: {e}"))?;
        Ok(Self {
            sinks: out,
            client,
            slack_buttons: chat.slack.is_some(),
            discord_buttons: chat.discord.is_some(),
            pause_choices: chat.pause_choices.clone(),
        })
    }

    /// The buttons a message of `kind` carries for `n`.
    fn buttons(&self, kind: NotifyKind, n: &Notice) -> Vec<(String, Press)> {
        let on = match kind {
            NotifyKind::Slack => self.slack_buttons,
            NotifyKind::Discord => self.discord_buttons,
            NotifyKind::Webhook => false,
        };
        if !on || n.decision == "suppressed" {
            return Vec::new();
        }
        chat::buttons(
            n.approval_id.as_deref(),
            &n.playbook,
            &n.target,
            &self.pause_choices,
        )
    }

    /// The HTTP client the sinks use.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// True when no sink is configured.
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// The sinks `notice` goes to: those whose matchers its alert labels
    /// satisfy, and that announce its decision (failed and unresolved runs:
    /// all of those).
    pub fn routes(&self, notice: &Notice) -> Vec<&str> {
        self.sinks
            .iter()
            .filter(|s| Self::wanted(s, notice))
            .map(|s| s.name.as_str())
            .collect()
    }

    fn wanted(s: &Sink, notice: &Notice) -> bool {
        (matches!(notice.status.as_str(), "failed" | "unresolved")
            || s.on.contains(&notice.decision))
            && s.matchers.iter().all(|m| m.matches(&notice.labels))
    }

    /// Sends `notice` to every sink that wants it ([`Notifier::routes`]).
    pub async fn send(&self, notice: &Notice) -> Vec<Delivery> {
        let mut out = Vec::new();
        for s in &self.sinks {
            if !Self::wanted(s, notice) {
                continue;
            }
            let result = self.deliver(s, notice).await;
            out.push(Delivery {
                sink: s.name.clone(),
                result,
            });
        }
        out
    }

    async fn deliver(&self, s: &Sink, n: &Notice) -> Result<(), String> {
        let body = payload(s.kind, n, &self.buttons(s.kind, n));
        let mut last = String::new();
        for attempt in 0..s.attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(6))).await;
            }
            let res = self
                .client
                .post(&s.url)
                .timeout(s.timeout)
                .json(&body)
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => {
                    let code = r.status();
                    let text: String = r
                        .text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(200)
                        .collect();
                    last = format!("{} {}: HTTP {code}: {text}", kind_name(s.kind), s.name);
                    if !(code.is_server_error() || code == reqwest::StatusCode::TOO_MANY_REQUESTS) {
                        break;
                    }
                }
                Err(e) => {
                    last = format!("{} {}: {}", kind_name(s.kind), s.name, e.without_url());
                }
            }
        }
        Err(format!("{last} (after {} attempt(s))", s.attempts))
    }
}

fn kind_name(k: NotifyKind) -> &'static str {
    match k {
        NotifyKind::Slack => "slack",
        NotifyKind::Discord => "discord",
        NotifyKind::Webhook => "webhook",
    }
}

/// The JSON body a sink of `kind` receives, with `buttons` (Slack: an
/// `actions` block; Discord: an action row) when given.
pub fn payload(kind: NotifyKind, n: &Notice, buttons: &[(String, Press)]) -> serde_json::Value {
    let headline = n.headline();
    let body = n.body();
    match kind {
        NotifyKind::Slack => {
            let runbook = n
                .runbook
                .as_ref()
                .map(|r| format!("\n<{r}|Runbook>"))
                .unwrap_or_default();
            let mut blocks = vec![
                json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&headline, 150)}}),
                json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("{}{runbook}", truncate(&body, 2800))}}),
            ];
            if !n.evidence.is_empty() {
                // Slack: a section's text is at most 3,000 characters, a
                // message at most 50 blocks: one section, lines cut to fit.
                let text: Vec<String> = n
                    .evidence
                    .iter()
                    .map(|(k, v)| {
                        if v.contains('\n') {
                            format!("*{k}*\n```{}```", truncate_lines(v, 1200))
                        } else {
                            format!("*{k}*: {}", truncate(v, 300))
                        }
                    })
                    .collect();
                blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&text.join("\n"), 2900)}}));
            }
            blocks.extend(chat::slack::actions_block(buttons));
            json!({
                "text": format!("{headline}\n{body}{}", n.runbook.as_ref().map(|r| format!("\nrunbook: {r}")).unwrap_or_default()),
                "blocks": blocks
            })
        }
        NotifyKind::Discord => {
            let color = match (n.decision.as_str(), n.status.as_str()) {
                (_, "failed" | "unresolved") => 0xd0_30_30,
                ("execute", _) => 0x30_a0_50,
                ("needs-approval", _) => 0xe0_a0_20,
                _ => 0x80_80_80,
            };
            let mut embed = json!({
                "title": truncate(&headline, 256),
                "description": truncate(&body, 4000),
                "color": color,
                "timestamp": n.decided_at.to_rfc3339(),
            });
            if let Some(r) = &n.runbook {
                embed["url"] = json!(r);
            }
            if !n.evidence.is_empty() {
                // Discord: at most 25 fields, a name 256 and a value 1,024
                // characters, an embed 6,000 in all.
                let mut budget: usize = 1800;
                let mut fields: Vec<serde_json::Value> = Vec::new();
                for (k, v) in n.evidence.iter().take(20) {
                    if budget <= 40 {
                        break;
                    }
                    let room = budget.min(900);
                    let value = if v.contains('\n') {
                        format!("```{}```", truncate_lines(v, room.saturating_sub(6)))
                    } else {
                        truncate(v, room)
                    };
                    budget = budget.saturating_sub(value.chars().count() + k.len());
                    fields.push(json!({"name": truncate(k, 256), "value": value, "inline": !v.contains('\n') && v.len() < 40}));
                }
                embed["fields"] = json!(fields);
            }
            let mut msg = json!({
                "content": truncate(&format!("{headline}{}", n.runbook.as_ref().map(|r| format!("\nrunbook: {r}")).unwrap_or_default()), 2000),
                "embeds": [embed]
            });
            if let Some(c) = chat::discord::components(buttons) {
                msg["components"] = c;
            }
            msg
        }
        NotifyKind::Webhook => serde_json::to_value(n).unwrap_or_default(),
    }
}

/// `s` in at most `max` characters: lines keep their end (the newest log
/// lines), one-line text its start.
fn truncate_lines(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max || !s.contains('\n') {
        return truncate(s, max);
    }
    let tail: String = s.chars().skip(n - max.saturating_sub(1)).collect();
    let tail = match tail.find('\n') {
        Some(nl) if nl < tail.len() / 2 => tail[nl + 1..].to_string(),
        _ => tail,
    };
    format!("…{tail}")
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_run_says_how_to_approve_it_in_every_format() {
        let n = Notice {
            playbook: "pb".into(),
            runbook: Some("https://runbooks.example/pb".into()),
            alertname: Some("A".into()),
            trigger: "alert".into(),
            trigger_kind: crate::event::TriggerKind::Alert,
            fingerprint: "f".into(),
            target: "pod etl/x".into(),
            actions: vec!["kubernetes.pod.restart".into()],
            decision: "needs-approval".into(),
            reason: "policy requires approval for every run".into(),
            status: "not-executed".into(),
            outcome: "awaiting approval".into(),
            node: "n1".into(),
            audit_id: "01abc".into(),
            decided_at: chrono::Utc::now(),
            how_to_approve: Some(
                "approve within 30m: `remediate approve 01abc --agent http://n1:9095`".into(),
            ),
            approval_id: Some("01abc".into()),
            labels: Default::default(),
            evidence: Default::default(),
        };
        let slack = payload(NotifyKind::Slack, &n, &[]);
        assert!(slack["text"]
            .as_str()
            .unwrap()
            .contains("remediate approve 01abc"));
        let discord = payload(NotifyKind::Discord, &n, &[]);
        assert!(discord["embeds"][0]["description"]
            .as_str()
            .unwrap()
            .contains("remediate approve 01abc"));
        let hook = payload(NotifyKind::Webhook, &n, &[]);
        assert!(hook["how_to_approve"]
            .as_str()
            .unwrap()
            .contains("remediate approve 01abc"));
        assert!(slack["text"]
            .as_str()
            .unwrap()
            .starts_with("[remediate] needs approval: pb on pod etl/x (n1)"));
    }
}

#[cfg(test)]
mod routing {
    use super::*;

    fn notice(severity: Option<&str>, decision: &str, status: &str) -> Notice {
        Notice {
            playbook: "pb".into(),
            runbook: None,
            alertname: Some("A".into()),
            trigger: "alert".into(),
            trigger_kind: crate::event::TriggerKind::Alert,
            fingerprint: "f".into(),
            target: "pod etl/x".into(),
            actions: vec![],
            decision: decision.into(),
            reason: String::new(),
            status: status.into(),
            outcome: String::new(),
            node: "n1".into(),
            audit_id: "01".into(),
            decided_at: chrono::Utc::now(),
            how_to_approve: None,
            approval_id: None,
            labels: severity
                .map(|s| [("severity".to_string(), s.to_string())].into())
                .unwrap_or_default(),
            evidence: Default::default(),
        }
    }

    #[test]
    fn sinks_are_chosen_by_alert_labels_with_alertmanager_matchers() {
        let cfg = crate::config::AgentConfig::parse(
            std::path::Path::new("a.yaml"),
            r#"notify:
  - { name: page, kind: slack, url: "http://127.0.0.1:1/a", matchers: ['severity=~"critical|high"'] }
  - { name: rest, kind: slack, url: "http://127.0.0.1:1/b", matchers: ['severity!~"critical|high"'] }
  - { name: all, kind: webhook, url: "http://127.0.0.1:1/c", on: [execute] }
"#,
        )
        .unwrap();
        let n = Notifier::from_config(&cfg.notify, &cfg.chat).unwrap();
        assert_eq!(
            n.routes(&notice(Some("critical"), "execute", "verified")),
            ["page", "all"]
        );
        assert_eq!(
            n.routes(&notice(Some("high"), "needs-approval", "not-executed")),
            ["page"]
        );
        assert_eq!(
            n.routes(&notice(Some("warning"), "execute", "verified")),
            ["rest", "all"]
        );
        // No severity label (a schedule run): matches as "".
        assert_eq!(
            n.routes(&notice(None, "execute", "verified")),
            ["rest", "all"]
        );
        // Failed runs go to every sink their labels route to, whatever `on` says.
        assert_eq!(
            n.routes(&notice(Some("critical"), "dry-run", "failed")),
            ["page", "all"]
        );
        let err = crate::config::AgentConfig::parse(
            std::path::Path::new("a.yaml"),
            "notify:\n  - { name: x, kind: slack, url: 'http://h/', matchers: ['severity=~\"(\"'] }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("notify[0].matchers[0]: "), "{err}");
    }

    #[test]
    fn evidence_is_shown_within_each_platforms_limits() {
        let mut n = notice_for_evidence();
        n.evidence = (0..30)
            .map(|i| {
                (
                    format!("item {i:02}"),
                    format!("line a {i}\n{}", "x".repeat(3000)),
                )
            })
            .collect();
        n.evidence.insert("exit code".into(), "137".into());
        let slack = payload(NotifyKind::Slack, &n, &[]);
        let blocks = slack["blocks"].as_array().unwrap();
        let ev = blocks
            .iter()
            .find(|b| {
                b["text"]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("*exit code*: 137"))
            })
            .expect("an evidence section");
        assert!(ev["text"]["text"].as_str().unwrap().chars().count() <= 3000);
        let discord = payload(NotifyKind::Discord, &n, &[]);
        let embed = &discord["embeds"][0];
        let fields = embed["fields"].as_array().unwrap();
        assert!(!fields.is_empty() && fields.len() <= 25);
        let mut total = embed["title"].as_str().unwrap().chars().count()
            + embed["description"].as_str().unwrap().chars().count();
        for f in fields {
            let v = f["value"].as_str().unwrap().chars().count();
            assert!(v <= 1024, "{v}");
            total += v + f["name"].as_str().unwrap().chars().count();
        }
        assert!(total <= 6000, "{total}");
        let hook = payload(NotifyKind::Webhook, &n, &[]);
        assert_eq!(hook["evidence"]["exit code"], "137");
    }

    fn notice_for_evidence() -> Notice {
        Notice {
            playbook: "pb".into(),
            runbook: None,
            alertname: Some("A".into()),
            trigger: "alert".into(),
            trigger_kind: crate::event::TriggerKind::Alert,
            fingerprint: "f".into(),
            target: "container web on n1".into(),
            actions: vec!["docker.container.restart".into()],
            decision: "execute".into(),
            reason: "all gates passed".into(),
            status: "verified".into(),
            outcome: "container web running again".into(),
            node: "n1".into(),
            audit_id: "01".into(),
            decided_at: chrono::Utc::now(),
            how_to_approve: None,
            approval_id: None,
            labels: Default::default(),
            evidence: Default::default(),
        }
    }
}
