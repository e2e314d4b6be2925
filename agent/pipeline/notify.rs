//! Notify: what the sinks hear of decisions and runs (the notice), the one
//! escalation per circuit-breaker opening, and an audit record for every
//! delivery that failed. The sinks themselves are [`crate::notify`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;

use super::Shared;
use crate::audit::{Phase, Record};
use crate::config::NotifySink;
use crate::engine::{Engine, RecordSink, RunReport, RunStatus};
use crate::event::Status;
use crate::metrics::NotifyLabels;
use crate::notify::{Notice, Notifier};
use crate::policy::BreakerState;

/// The notify stage's state: the sinks, and the breaker openings already
/// escalated (policy, playbook, opened at).
pub(super) struct Notify {
    notifier: Notifier,
    escalated: Mutex<HashSet<(String, String, DateTime<Utc>)>>,
    /// Chat messages to update with the outcome of a run approved from
    /// them, by (event fingerprint, playbook).
    followups: Mutex<HashMap<(String, String), Followup>>,
}

/// Where the outcome of a run approved from chat is posted.
#[derive(Debug, Clone)]
pub struct Followup {
    /// Slack's `response_url` of the message (POST), or Discord's
    /// `webhooks/{application}/{token}/messages/@original` (PATCH).
    pub url: String,
    /// Which of the two.
    pub discord: bool,
    /// The answer, which the outcome follows.
    pub answer: String,
    /// When it was registered (Slack's `response_url` lasts 30 minutes).
    pub at: DateTime<Utc>,
    /// Gets a permit once the answer is posted: the outcome goes after it.
    pub answered: Arc<tokio::sync::Semaphore>,
}

impl Notify {
    /// The configured sinks.
    pub(super) fn from_config(
        sinks: &[NotifySink],
        chat: &crate::config::ChatConfig,
    ) -> Result<Self, String> {
        Ok(Self {
            notifier: Notifier::from_config(sinks, chat)?,
            escalated: Mutex::new(HashSet::new()),
            followups: Mutex::new(HashMap::new()),
        })
    }
}

/// The playbook's runbook link, for the notice.
pub(super) fn runbook_of(engine: &Engine, playbook: &str) -> Option<String> {
    engine
        .config
        .playbook(playbook)
        .and_then(|p| p.doc.metadata.runbook.clone())
}

/// After a run: its notice (if a sink wants it), then the breaker's
/// escalation if this run opened it.
pub(super) async fn after_run(shared: &Shared, engine: &Engine, rep: &RunReport) {
    if let Some((f, text)) = take_followup(shared, rep) {
        post_followup(shared, f, text).await;
    }
    let runbook = runbook_of(engine, &rep.planned.playbook);
    let escalation = escalation(shared, engine, rep, runbook.clone());
    if wants(shared, rep) {
        send(shared, notice(shared, rep, runbook)).await;
    }
    if let Some(n) = escalation {
        send(shared, n).await;
    }
}

/// Remembers a chat message to update with the outcome of the approved run
/// of `playbook` for the event `fingerprint`.
pub fn follow_up(shared: &Shared, fingerprint: &str, playbook: &str, f: Followup) {
    let mut m = shared
        .notify
        .followups
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // Slack's response_url is good for 30 minutes, a Discord interaction
    // token for 15: older ones are dropped.
    let cutoff = Utc::now() - chrono::Duration::minutes(15);
    m.retain(|_, f| f.at >= cutoff);
    m.insert((fingerprint.to_string(), playbook.to_string()), f);
}

/// Forgets a followup whose approval was not recorded.
pub fn drop_followup(shared: &Shared, fingerprint: &str, playbook: &str) {
    shared
        .notify
        .followups
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(fingerprint.to_string(), playbook.to_string()));
}

/// The followup a decided run answers, if it was approved from chat (a run
/// held again is not an outcome).
pub(super) fn take_followup(shared: &Shared, rep: &RunReport) -> Option<(Followup, String)> {
    let p = &rep.planned;
    if p.decision.as_str() == "needs-approval" {
        return None;
    }
    let f = shared
        .notify
        .followups
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(p.trigger.fingerprint.clone(), p.playbook.clone()))?;
    let n = notice(shared, rep, None);
    let text = format!(
        "{}\nOutcome: {} on {}: {} ({}): {}",
        f.answer, n.playbook, n.target, n.status, n.decision, n.outcome
    );
    Some((f, text))
}

/// Posts a followup's outcome, replacing the chat message.
pub(super) async fn post_followup(shared: &Shared, f: Followup, text: String) {
    // After the answer (or 15 s, if that post hangs).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(15), f.answered.acquire()).await;
    let client = shared.notify.notifier.client();
    let req = if f.discord {
        client
            .patch(&f.url)
            .json(&serde_json::json!({"content": text, "embeds": [], "components": []}))
    } else {
        client
            .post(&f.url)
            .json(&crate::chat::slack::replace(&text, &[]))
    };
    let platform = if f.discord { "discord" } else { "slack" };
    match req.timeout(std::time::Duration::from_secs(10)).send().await {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => tracing::warn!(platform, status = %r.status(), "chat refused the outcome"),
        Err(e) => {
            tracing::warn!(platform, error = %e.without_url(), "cannot post the outcome to chat")
        }
    }
}

/// Sends notices in the background (the dispatcher waits for them on shutdown).
pub(super) fn spawn(shared: &Arc<Shared>, notices: Vec<Notice>, tasks: &mut JoinSet<()>) {
    for n in notices {
        let shared = shared.clone();
        tasks.spawn(async move { send(&shared, n).await });
    }
}

/// After a failed run: if it opened the playbook's circuit breaker, the one
/// escalation notice for that opening (None when already sent or not open).
fn escalation(
    shared: &Shared,
    engine: &Engine,
    rep: &RunReport,
    runbook: Option<String>,
) -> Option<Notice> {
    rep.failed_at?;
    let p = &rep.planned;
    let spec = engine
        .config
        .policies
        .get(&p.policy)?
        .doc
        .spec
        .circuit_breaker
        .clone()?;
    let now = Utc::now();
    let state = shared.ledger().breaker_state(
        &p.policy,
        &p.playbook,
        spec.failures,
        spec.within.chrono(),
        spec.open_for.chrono(),
        now,
    );
    let BreakerState::Open { opened, .. } = state else {
        return None;
    };
    let fresh = {
        let mut escalated = shared
            .notify
            .escalated
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Openings of the last week are remembered; older ones are over.
        let week = now - chrono::Duration::days(7);
        escalated.retain(|(_, _, at)| *at >= week || *at + spec.open_for.chrono() >= now);
        escalated.insert((p.policy.clone(), p.playbook.clone(), opened))
    };
    if !fresh {
        return None;
    }
    tracing::warn!(playbook = %p.playbook, policy = %p.policy, %opened, "circuit breaker opened");
    let mut n = notice(shared, rep, runbook);
    n.decision = "circuit-open".into();
    n.status = "failed".into();
    n.reason = format!("{} failed runs within {}", spec.failures, spec.within);
    n.outcome = format!(
        "circuit breaker opened at {}: {} is suppressed until {}, then one trial run is allowed; the last failure: {}",
        opened.format("%Y-%m-%dT%H:%M:%SZ"),
        p.playbook,
        (opened + spec.open_for.chrono()).format("%Y-%m-%dT%H:%M:%SZ"),
        n.outcome
    );
    Some(n)
}

/// Whether any sink wants to hear of this run.
pub(super) fn wants(shared: &Shared, rep: &RunReport) -> bool {
    !shared.notify.notifier.is_empty()
        && (matches!(rep.status, RunStatus::Failed(_))
            || shared
                .cfg
                .notify
                .iter()
                .any(|s| s.on.iter().any(|d| d == rep.planned.decision.as_str())))
}

/// The notice of a run.
pub(super) fn notice(shared: &Shared, rep: &RunReport, runbook: Option<String>) -> Notice {
    let p = &rep.planned;
    let (status, outcome) = match &rep.status {
        RunStatus::Verified => (
            "verified",
            rep.records
                .last()
                .map(|r| r.outcome.clone())
                .unwrap_or_default(),
        ),
        RunStatus::Failed(m) => ("failed", m.clone()),
        RunStatus::NotExecuted => (
            "not-executed",
            rep.records
                .first()
                .map(|r| r.outcome.clone())
                .unwrap_or_default(),
        ),
    };
    Notice {
        playbook: p.playbook.clone(),
        runbook,
        alertname: p.trigger.alertname.clone(),
        trigger: p.trigger.kind.as_str().to_string(),
        trigger_kind: p.trigger.kind,
        fingerprint: p.trigger.fingerprint.clone(),
        target: p.target_display(),
        actions: p.steps.iter().map(|s| s.action.to_string()).collect(),
        decision: p.decision.as_str().to_string(),
        reason: p.decision.reason().to_string(),
        status: status.to_string(),
        outcome,
        node: shared.node.clone(),
        audit_id: rep
            .records
            .first()
            .map(|r| r.id.clone())
            .unwrap_or_default(),
        decided_at: p.decided_at,
        how_to_approve: None,
        approval_id: None,
        labels: p.trigger.labels.clone(),
        // Every step's evidence; a later record of a step has all of it.
        evidence: rep
            .records
            .iter()
            .flat_map(|r| r.evidence.iter())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// Sends a notice to every sink; a failed delivery is counted and audited.
async fn send(shared: &Shared, n: Notice) {
    for d in shared.notify.notifier.send(&n).await {
        let ok = d.result.is_ok();
        shared
            .metrics
            .notifications
            .get_or_create(&NotifyLabels {
                sink: d.sink.clone(),
                result: if ok { "success" } else { "failure" },
            })
            .inc();
        if let Err(msg) = d.result {
            tracing::warn!(sink = %d.sink, error = %msg, "notification failed");
            let rec = Record {
                ts: Utc::now(),
                id: uuid::Uuid::now_v7().to_string(),
                trigger: std::sync::Arc::new(crate::audit::TriggerRef {
                    kind: n.trigger_kind,
                    alertname: n.alertname.clone(),
                    fingerprint: n.fingerprint.clone(),
                    status: Status::Firing,
                    labels: Default::default(),
                    annotations: Default::default(),
                    values: Default::default(),
                    starts_at: None,
                }),
                playbook: n.playbook.clone(),
                action: format!("notify:{}", d.sink),
                target: Default::default(),
                params: serde_json::Value::Null,
                decision: "notify".into(),
                reason: format!(
                    "notification of decision {} (audit id {})",
                    n.decision, n.audit_id
                ),
                dry_run: false,
                phase: Phase::Failed,
                outcome: msg,
                duration_ms: 0,
                node: shared.node.clone(),
                policy: String::new(),
                step: 0,
                decided_at: None,
                evidence: Default::default(),
            };
            if let Err(e) = shared.append(&rec) {
                tracing::error!(error = %e, "cannot audit a failed notification");
            }
        }
    }
}
