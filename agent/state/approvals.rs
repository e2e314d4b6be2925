//! Pending approvals: runs a policy holds for a person to approve or deny.
//!
//! A request keeps the event that caused it, so an approved run is decided
//! again from it at approval time (limits, windows and the breaker are
//! re-evaluated; only the approval stage passes). This is the in-memory
//! view; requests and answers are committed to the store
//! ([`super::store::ApprovalChange`]) with their audit records before they
//! take effect here, so pending approvals survive a restart and an answer
//! is never applied twice.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::Event;

/// One pending approval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pending {
    /// Approval id (the audit id of the held run's first step).
    pub id: String,
    /// Playbook to run.
    pub playbook: String,
    /// Policy that asked for approval.
    pub policy: String,
    /// Target, for people: `pod etl/x`.
    pub target: String,
    /// Target fields.
    pub target_fields: BTreeMap<String, String>,
    /// Why approval is needed.
    pub reason: String,
    /// What would be done, step by step.
    pub actions: Vec<String>,
    /// When it was requested.
    pub requested_at: DateTime<Utc>,
    /// When it expires unanswered.
    pub expires_at: DateTime<Utc>,
    /// The event that caused it.
    pub event: Event,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer {
    /// A person approved it.
    Approved,
    /// A person denied it.
    Denied,
    /// Nobody answered in time.
    Expired,
    /// The alert resolved first.
    Cancelled,
}

impl Answer {
    /// Parses [`Answer::as_str`]'s word.
    pub fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "approved" => Answer::Approved,
            "denied" => Answer::Denied,
            "expired" => Answer::Expired,
            "cancelled" => Answer::Cancelled,
            _ => return None,
        })
    }

    /// Lower-case word, as in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Approved => "approved",
            Answer::Denied => "denied",
            Answer::Expired => "expired",
            Answer::Cancelled => "cancelled",
        }
    }
}

/// Why an answer is refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such pending approval.
    #[error("no pending approval {0:?} (unknown, or already answered, expired or cancelled)")]
    NotPending(String),
}

/// Answers remembered in memory (the store keeps a week of them).
const ANSWERS_KEPT: usize = 10_000;

/// Requests pending, and answers given (to tell "already answered" apart).
#[derive(Debug, Default)]
pub struct Approvals {
    pending: BTreeMap<String, Pending>,
    answered: BTreeMap<String, (Answer, String)>,
}

impl Approvals {
    /// The view of what the store holds.
    pub fn from_parts(
        pending: BTreeMap<String, Pending>,
        answered: BTreeMap<String, (Answer, String)>,
    ) -> Self {
        Self { pending, answered }
    }

    /// A new request (committed to the store).
    pub fn request(&mut self, p: Pending) {
        self.pending.insert(p.id.clone(), p);
    }

    /// The pending request `id`, to answer; fails if it is not pending.
    pub fn get(&self, id: &str) -> Result<&Pending, Error> {
        self.pending
            .get(id)
            .ok_or_else(|| Error::NotPending(id.to_string()))
    }

    /// Answers a pending request (its answer committed to the store);
    /// returns it. Fails if it is not pending.
    pub fn answer(&mut self, id: &str, answer: Answer, by: &str) -> Result<Pending, Error> {
        let p = self
            .pending
            .remove(id)
            .ok_or_else(|| Error::NotPending(id.to_string()))?;
        self.answered
            .insert(id.to_string(), (answer, by.to_string()));
        // Ids are time-ordered (UUIDv7): keep the most recent answers.
        while self.answered.len() > ANSWERS_KEPT {
            self.answered.pop_first();
        }
        Ok(p)
    }

    /// How an answered request ended, if it did.
    pub fn answered(&self, id: &str) -> Option<&(Answer, String)> {
        self.answered.get(id)
    }

    /// Pending requests, oldest first.
    pub fn pending(&self) -> Vec<Pending> {
        let mut v: Vec<Pending> = self.pending.values().cloned().collect();
        v.sort_by_key(|p| p.requested_at);
        v
    }

    /// Ids of requests expired at `now`.
    pub fn expired(&self, now: DateTime<Utc>) -> Vec<String> {
        self.pending
            .values()
            .filter(|p| p.expires_at <= now)
            .map(|p| p.id.clone())
            .collect()
    }

    /// Ids of firing requests for an alert fingerprint.
    pub fn for_fingerprint(&self, fingerprint: &str) -> Vec<String> {
        self.pending
            .values()
            .filter(|p| p.event.fingerprint == fingerprint)
            .map(|p| p.id.clone())
            .collect()
    }
}
