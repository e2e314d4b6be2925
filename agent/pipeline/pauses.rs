//! Pauses: a person silences a playbook (or a playbook on one target) for
//! a while, from the API, the CLI or a chat button; the decide stage then
//! suppresses matching runs with the pause's reason. Setting and lifting
//! commit to the store with their audit records before they take effect.

use chrono::{DateTime, Utc};

use super::Shared;
use crate::audit::{Phase, Record, TriggerRef};
use crate::event::{Status, TriggerKind};
use crate::state::pauses::Pause;
use crate::state::{Commit, PauseChange};

/// Why a pause or resume was refused.
#[derive(Debug)]
pub enum PauseError {
    /// No such playbook loaded, or a bad duration.
    Invalid(String),
    /// No pause in force with that id.
    NotFound(String),
    /// The store could not be written.
    Storage(String),
}

impl std::fmt::Display for PauseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(m) | Self::NotFound(m) => f.write_str(m),
            Self::Storage(m) => write!(f, "cannot record it: {m}"),
        }
    }
}

/// An audit record of a pause set or lifted (or a chat answer refused):
/// `decision` is `pause`, `resume` or `chat-refused`; never charged to a
/// limit, never replayed.
pub(crate) fn record(
    shared: &Shared,
    decision: &str,
    playbook: &str,
    target: Option<&str>,
    reason: String,
    outcome: String,
) -> Record {
    Record {
        ts: Utc::now(),
        id: uuid::Uuid::now_v7().to_string(),
        trigger: std::sync::Arc::new(TriggerRef {
            kind: TriggerKind::Manual,
            alertname: None,
            fingerprint: String::new(),
            status: Status::Firing,
            labels: Default::default(),
            annotations: Default::default(),
            values: Default::default(),
            starts_at: None,
        }),
        playbook: playbook.to_string(),
        action: decision.to_string(),
        // The target as people name it, not the driver's fields.
        target: Default::default(),
        params: match target {
            Some(t) => serde_json::json!({ "target": t }),
            None => serde_json::Value::Null,
        },
        decision: decision.to_string(),
        reason,
        dry_run: true,
        phase: Phase::Planned,
        outcome,
        duration_ms: 0,
        node: shared.node.clone(),
        policy: String::new(),
        step: 0,
        decided_at: None,
        evidence: Default::default(),
    }
}

/// Pauses `playbook` (on `target` only, when given) for `duration`.
pub fn pause(
    shared: &Shared,
    playbook: &str,
    target: Option<&str>,
    duration: chrono::Duration,
    by: &str,
    reason: &str,
) -> Result<Pause, PauseError> {
    if shared.engine().config.playbook(playbook).is_none() {
        return Err(PauseError::Invalid(format!(
            "no playbook {playbook:?} is loaded"
        )));
    }
    if duration <= chrono::Duration::zero() || duration > chrono::Duration::days(30) {
        return Err(PauseError::Invalid(
            "a pause lasts more than 0s and at most 30 days".into(),
        ));
    }
    let now = Utc::now();
    let p = Pause {
        id: uuid::Uuid::now_v7().to_string(),
        playbook: playbook.to_string(),
        target: target.filter(|t| !t.is_empty()).map(str::to_string),
        by: by.to_string(),
        reason: reason.to_string(),
        at: now,
        until: now + duration,
    };
    let rec = record(
        shared,
        "pause",
        playbook,
        p.target.as_deref(),
        if reason.is_empty() {
            format!("paused by {by}")
        } else {
            format!("paused by {by}: {reason}")
        },
        format!(
            "pause {}: {} paused until {}",
            p.id,
            p.scope(),
            p.until.format("%Y-%m-%dT%H:%M:%SZ")
        ),
    );
    shared
        .commit(Commit {
            records: vec![rec],
            pauses: vec![PauseChange::Set(p.clone())],
            ..Commit::default()
        })
        .map_err(|e| PauseError::Storage(e.to_string()))?;
    shared.pauses().set(p.clone());
    tracing::info!(pause = %p.id, playbook, target = p.target.as_deref().unwrap_or("*"), by, until = %p.until, "paused");
    Ok(p)
}

/// Lifts the pause `id` before its end.
pub fn resume(shared: &Shared, id: &str, by: &str) -> Result<Pause, PauseError> {
    let now = Utc::now();
    let p = shared.pauses().get(id, now).cloned().ok_or_else(|| {
        PauseError::NotFound(format!(
            "no pause {id:?} in force (unknown, ended or lifted)"
        ))
    })?;
    let rec = record(
        shared,
        "resume",
        &p.playbook,
        p.target.as_deref(),
        format!("resumed by {by}"),
        format!(
            "pause {id} lifted by {by}: {} runs again (it was paused by {} until {})",
            p.scope(),
            p.by,
            p.until.format("%Y-%m-%dT%H:%M:%SZ")
        ),
    );
    shared
        .commit(Commit {
            records: vec![rec],
            pauses: vec![PauseChange::Lift(id.to_string())],
            ..Commit::default()
        })
        .map_err(|e| PauseError::Storage(e.to_string()))?;
    shared.pauses().lift(id);
    tracing::info!(pause = %id, playbook = %p.playbook, by, "resumed");
    Ok(p)
}

/// Pauses in force, soonest to end first.
pub fn active(shared: &Shared, now: DateTime<Utc>) -> Vec<Pause> {
    shared.pauses().active(now)
}

/// The pause silencing a run of `playbook` on `target` now, if any.
pub(super) fn covering(
    shared: &Shared,
    playbook: &str,
    target: &str,
    now: DateTime<Utc>,
) -> Option<Pause> {
    shared.pauses().covering(playbook, target, now).cloned()
}

/// Sets the `paused_playbooks` gauge from the pauses in force.
pub(super) fn export(shared: &Shared) {
    let active = active(shared, Utc::now());
    shared.metrics.paused.clear();
    for p in &active {
        shared
            .metrics
            .paused
            .get_or_create(&crate::metrics::PlaybookLabels {
                playbook: p.playbook.clone(),
            })
            .inc();
    }
}
