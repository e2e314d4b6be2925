//! Approvals: runs held for a person. The decide stage requests them; a
//! person answers through the HTTP API (and later chat); unanswered ones
//! expire, a resolved alert cancels them, and every answer is an audit
//! record with the held run's id. An approved run is queued again and
//! decided anew (every stage but approval re-evaluated). Requests and
//! answers commit to the store with their audit records.

use chrono::{DateTime, Utc};

use super::intake::{self, ApprovedRun, Incoming};
use super::Shared;
use crate::audit::{Phase, Record};
use crate::engine::{Engine, Planned};
use crate::event::Event;
use crate::state::approvals::{self as journal, Answer, Pending};
use crate::state::{ApprovalChange, Commit};

/// The request for a run held for approval (committed with the decision's
/// records), and how to approve it.
pub(super) fn prepare(
    shared: &Shared,
    engine: &Engine,
    p: &Planned,
    event: &Event,
    now: DateTime<Utc>,
) -> Option<(Pending, String)> {
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
    let url = external_url(shared);
    let how = format!(
        "approve within {}: `remediate approve {id} --agent {url}` (or `remediate deny {id} ...`), or POST {url}/api/v1/approvals/{id} with {{\"decision\":\"approve\"}}",
        humantime::format_duration(timeout.to_std().unwrap_or_default())
    );
    Some((pending, how))
}

/// A request is committed: it waits for an answer.
pub(super) fn requested(shared: &Shared, p: Pending) {
    shared
        .approvals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .request(p);
}

/// Ends a pending request: its answer and its audit record commit together,
/// then it leaves the pending set. Returns it.
fn end(
    shared: &Shared,
    id: &str,
    answer: Answer,
    by: &str,
    outcome: impl FnOnce(&Pending) -> String,
) -> Result<Pending, AnswerError> {
    let mut a = shared.approvals.lock().unwrap_or_else(|e| e.into_inner());
    let p = match a.get(id) {
        Ok(p) => p.clone(),
        Err(journal::Error::NotPending(_)) => {
            let why = match a.answered(id) {
                Some((ans, who)) => format!("approval {id} is already {} ({who})", ans.as_str()),
                None => format!("no pending approval {id}"),
            };
            return Err(AnswerError::NotPending(why));
        }
    };
    let now = Utc::now();
    let rec = record(shared, &p, answer, outcome(&p));
    shared
        .commit(Commit {
            records: vec![rec],
            approvals: vec![ApprovalChange::Answer {
                id: id.to_string(),
                answer,
                by: by.to_string(),
                at: now,
            }],
            ..Commit::default()
        })
        .map_err(|e| AnswerError::Storage(e.to_string()))?;
    a.answer(id, answer, by)
        .map_err(|e| AnswerError::NotPending(e.to_string()))
}

/// The audit record of an approval's answer (same id as the held run).
fn record(shared: &Shared, p: &Pending, answer: Answer, outcome: String) -> Record {
    Record {
        ts: Utc::now(),
        id: p.id.clone(),
        trigger: crate::audit::TriggerRef::from_event(&p.event).into(),
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
        evidence: Default::default(),
    }
}

/// A resolved alert cancels the approvals its firing runs wait for.
pub(super) fn cancel_for(shared: &Shared, resolved: &Incoming) {
    let ids = shared
        .approvals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .for_fingerprint(&resolved.event.fingerprint);
    for id in ids {
        let r = end(shared, &id, Answer::Cancelled, "alert resolved", |_| {
            format!(
                "approval {id} cancelled: the alert resolved at {}; nothing done",
                resolved.at.format("%Y-%m-%dT%H:%M:%SZ")
            )
        });
        if let Err(AnswerError::Storage(e)) = r {
            tracing::error!(approval = %id, error = %e, "cannot record the cancellation; retried when it expires");
        }
    }
}

/// Expires the requests nobody answered in time (retried every tick until
/// the answer is recorded).
pub(super) fn expire(shared: &Shared) {
    let now = Utc::now();
    let ids = shared
        .approvals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .expired(now);
    for id in ids {
        let r = end(shared, &id, Answer::Expired, "timeout", |p| {
            format!(
                "approval {id} expired at {} unanswered; nothing done",
                p.expires_at.format("%Y-%m-%dT%H:%M:%SZ")
            )
        });
        if let Ok(p) = r {
            tracing::info!(approval = %id, playbook = %p.playbook, "approval expired");
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
    let note = if comment.is_empty() {
        String::new()
    } else {
        format!(": {comment}")
    };
    let p = end(shared, id, answer, by, |_| {
        if approve {
            format!("approved by {by}{note}; decided again now (limits and windows re-checked)")
        } else {
            format!("denied by {by}{note}; nothing done")
        }
    })?;
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
                skip: Vec::new(),
                requeued: false,
            },
        );
    }
    Ok(p)
}
