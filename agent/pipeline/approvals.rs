//! Approvals: runs held for a person. The decide stage requests them; a
//! person answers through the HTTP API (and later chat); unanswered ones
//! expire, a resolved alert cancels them, and every answer is an audit
//! record with the held run's id. An approved run is queued again and
//! decided anew (every stage but approval re-evaluated). The journal of
//! pending requests is [`crate::state::approvals`].

use chrono::{DateTime, Utc};

use super::intake::{self, ApprovedRun, Incoming};
use super::Shared;
use crate::audit::{Phase, Record};
use crate::engine::{Engine, Planned, RecordSink};
use crate::event::Event;
use crate::state::approvals::{self as journal, Answer, Pending};

/// Records a run held for approval; returns how to approve it.
pub(super) fn request(
    shared: &Shared,
    engine: &Engine,
    p: &Planned,
    event: &Event,
    now: DateTime<Utc>,
) -> Option<String> {
    let id = p.steps.first()?.id.clone();
    let timeout = engine
        .config
        .policies
        .get(&p.policy)
        .and_then(|pol| pol.doc.spec.approval.timeout.map(|t| t.chrono()))
        .unwrap_or_else(|| chrono::Duration::minutes(30));
    let pending = Pending {
        id: id.clone(),
        playbook: p.playbook.clone(),
        policy: p.policy.clone(),
        target: p.target_display(),
        target_fields: p.target.clone(),
        reason: p.decision.reason().to_string(),
        actions: p.steps.iter().map(|s| s.action.to_string()).collect(),
        requested_at: now,
        expires_at: now + timeout,
        event: event.clone(),
    };
    let mut a = shared.approvals.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = a.request(pending) {
        shared.metrics.storage_errors.inc();
        tracing::error!(error = %e, "cannot record an approval request; the run stays held and cannot be approved");
        return None;
    }
    let url = external_url(shared);
    Some(format!(
        "approve within {}: `remediate approve {id} --agent {url}` (or `remediate deny {id} ...`), or POST {url}/api/v1/approvals/{id} with {{\"decision\":\"approve\"}}",
        humantime::format_duration(timeout.to_std().unwrap_or_default())
    ))
}

/// The audit record of an approval's answer (same id as the held run).
fn record(shared: &Shared, p: &Pending, answer: Answer, outcome: String) -> Record {
    Record {
        ts: Utc::now(),
        id: p.id.clone(),
        trigger: crate::audit::TriggerRef::from_event(&p.event),
        playbook: p.playbook.clone(),
        action: p.actions.first().cloned().unwrap_or_default(),
        target: p.target_fields.clone(),
        params: serde_json::Value::Null,
        decision: answer.as_str().to_string(),
        reason: p.reason.clone(),
        dry_run: true,
        phase: Phase::Planned,
        outcome,
        duration_ms: (Utc::now() - p.requested_at).num_milliseconds().max(0) as u64,
        node: shared.node.clone(),
        policy: p.policy.clone(),
        step: 0,
        decided_at: None,
    }
}

/// A resolved alert cancels the approvals its firing runs wait for.
pub(super) fn cancel_for(shared: &Shared, resolved: &Incoming) {
    let mut a = shared.approvals.lock().unwrap_or_else(|e| e.into_inner());
    for id in a.for_fingerprint(&resolved.event.fingerprint) {
        if let Ok(p) = a.answer(&id, Answer::Cancelled, "alert resolved", Utc::now()) {
            let rec = record(
                shared,
                &p,
                Answer::Cancelled,
                format!(
                    "approval {id} cancelled: the alert resolved at {}; nothing done",
                    resolved.at.format("%Y-%m-%dT%H:%M:%SZ")
                ),
            );
            let _ = shared.append(&rec);
        }
    }
}

/// Expires the requests nobody answered in time.
pub(super) fn expire(shared: &Shared) {
    let now = Utc::now();
    let mut a = shared.approvals.lock().unwrap_or_else(|e| e.into_inner());
    for id in a.expired(now) {
        if let Ok(p) = a.answer(&id, Answer::Expired, "timeout", now) {
            let rec = record(
                shared,
                &p,
                Answer::Expired,
                format!(
                    "approval {id} expired at {} unanswered; nothing done",
                    p.expires_at.format("%Y-%m-%dT%H:%M:%SZ")
                ),
            );
            tracing::info!(approval = %id, playbook = %p.playbook, "approval expired");
            let _ = shared.append(&rec);
        }
    }
}

/// Why an approval answer was refused.
#[derive(Debug)]
pub enum AnswerError {
    /// Unknown id, or already answered / expired / cancelled.
    NotPending(String),
    /// The journal or audit could not be written.
    Storage(String),
}

/// The URL this agent is reached at.
pub fn external_url(shared: &Shared) -> String {
    shared
        .cfg
        .external_url
        .clone()
        .unwrap_or_else(|| format!("http://{}:{}", shared.node, shared.cfg.listen.port()))
}

/// Pending approvals, oldest first.
pub fn pending(shared: &Shared) -> Vec<Pending> {
    shared
        .approvals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pending()
}

/// Approves or denies a held run. An approved run is queued to be decided
/// again (every stage but approval re-evaluated now).
pub fn answer(
    shared: &Shared,
    id: &str,
    approve: bool,
    by: &str,
    comment: &str,
) -> Result<Pending, AnswerError> {
    let answer = if approve {
        Answer::Approved
    } else {
        Answer::Denied
    };
    let mut a = shared.approvals.lock().unwrap_or_else(|e| e.into_inner());
    let p = match a.answer(id, answer, by, Utc::now()) {
        Ok(p) => p,
        Err(journal::Error::NotPending(_)) => {
            let why = match a.answered(id) {
                Some((ans, who)) => {
                    format!("approval {id} is already {} ({who})", ans.as_str())
                }
                None => format!("no pending approval {id}"),
            };
            return Err(AnswerError::NotPending(why));
        }
        Err(e) => return Err(AnswerError::Storage(e.to_string())),
    };
    drop(a);
    let note = if comment.is_empty() {
        String::new()
    } else {
        format!(": {comment}")
    };
    let outcome = if approve {
        format!("approved by {by}{note}; decided again now (limits and windows re-checked)")
    } else {
        format!("denied by {by}{note}; nothing done")
    };
    let rec = record(shared, &p, answer, outcome);
    shared
        .append(&rec)
        .map_err(|e| AnswerError::Storage(e.to_string()))?;
    tracing::info!(approval = %id, playbook = %p.playbook, by, approved = approve, "approval answered");
    if approve {
        // An approved run enters the pipeline again, like a new event.
        intake::enqueue(
            shared,
            Incoming {
                seq: None,
                group: shared.group(),
                at: Utc::now(),
                event: p.event.clone(),
                approved: Some(ApprovedRun {
                    id: id.to_string(),
                    playbook: p.playbook.clone(),
                    by: by.to_string(),
                }),
            },
        );
    }
    Ok(p)
}
