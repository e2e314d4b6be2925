//! Pending approvals: runs a policy holds for a person to approve or deny.
//!
//! A request keeps the event that caused it, so an approved run is decided
//! again from it at approval time (limits, windows and the breaker are
//! re-evaluated; only the approval stage passes). Requests and answers are
//! journaled in `stateDir/approvals.jsonl` (fsynced), so pending approvals
//! survive a restart and an answer is never applied twice.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

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

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Line {
    Requested(Box<Pending>),
    Answered {
        id: String,
        answer: Answer,
        by: String,
        at: DateTime<Utc>,
    },
}

/// Approval errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The journal could not be read or written.
    #[error("approvals journal {path}: {source}")]
    Io {
        /// Journal path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No such pending approval.
    #[error("no pending approval {0:?} (unknown, or already answered, expired or cancelled)")]
    NotPending(String),
}

/// The store.
#[derive(Debug)]
pub struct Approvals {
    path: PathBuf,
    file: File,
    pending: BTreeMap<String, Pending>,
    /// Answers given, by id (to tell "already answered" apart).
    answered: BTreeMap<String, (Answer, String)>,
}

impl Approvals {
    /// Opens the journal and loads what is still pending.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut pending = BTreeMap::new();
        let mut answered = BTreeMap::new();
        match File::open(path) {
            Ok(f) => {
                for line in BufReader::new(f).split(b'\n') {
                    let line = line.map_err(io)?;
                    match serde_json::from_slice::<Line>(&line) {
                        Ok(Line::Requested(p)) => {
                            pending.insert(p.id.clone(), *p);
                        }
                        Ok(Line::Answered { id, answer, by, .. }) => {
                            pending.remove(&id);
                            answered.insert(id, (answer, by));
                        }
                        // A torn last line: the request was never acknowledged.
                        Err(_) => {}
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            pending,
            answered,
        })
    }

    fn write(&mut self, line: &Line) -> Result<(), Error> {
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        let mut buf = serde_json::to_vec(line).map_err(|e| io(e.into()))?;
        buf.push(b'\n');
        self.file.write_all(&buf).map_err(io)?;
        self.file.sync_data().map_err(io)
    }

    /// Records a new request.
    pub fn request(&mut self, p: Pending) -> Result<(), Error> {
        self.write(&Line::Requested(Box::new(p.clone())))?;
        self.pending.insert(p.id.clone(), p);
        Ok(())
    }

    /// Answers a pending request; returns it. Fails if it is not pending.
    pub fn answer(
        &mut self,
        id: &str,
        answer: Answer,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<Pending, Error> {
        if !self.pending.contains_key(id) {
            return Err(Error::NotPending(id.to_string()));
        }
        self.write(&Line::Answered {
            id: id.to_string(),
            answer,
            by: by.to_string(),
            at,
        })?;
        self.answered
            .insert(id.to_string(), (answer, by.to_string()));
        self.pending
            .remove(id)
            .ok_or_else(|| Error::NotPending(id.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Labels, Status, TriggerKind};

    fn pending(id: &str, expires_in: i64) -> Pending {
        let now = Utc::now();
        Pending {
            id: id.into(),
            playbook: "pb".into(),
            policy: "default".into(),
            target: "pod etl/x".into(),
            target_fields: BTreeMap::new(),
            reason: "policy requires approval".into(),
            actions: vec!["kubernetes.pod.restart".into()],
            requested_at: now,
            expires_at: now + chrono::Duration::seconds(expires_in),
            event: Event {
                trigger: TriggerKind::Alert,
                status: Status::Firing,
                fingerprint: format!("fp-{id}"),
                labels: Labels::new(),
                annotations: Labels::new(),
                values: Labels::new(),
                starts_at: None,
                playbook: None,
            },
        }
    }

    #[test]
    fn pending_requests_survive_reopen_and_an_answer_is_given_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("approvals.jsonl");
        let mut a = Approvals::open(&path).unwrap();
        a.request(pending("a", 60)).unwrap();
        a.request(pending("b", -1)).unwrap();
        drop(a);
        let mut a = Approvals::open(&path).unwrap();
        assert_eq!(a.pending().len(), 2);
        assert_eq!(a.expired(Utc::now()), vec!["b".to_string()]);
        assert_eq!(a.for_fingerprint("fp-a"), vec!["a".to_string()]);
        let p = a
            .answer("a", Answer::Approved, "alice", Utc::now())
            .unwrap();
        assert_eq!(p.playbook, "pb");
        let err = a
            .answer("a", Answer::Denied, "bob", Utc::now())
            .unwrap_err();
        assert!(err.to_string().contains("already answered"), "{err}");
        drop(a);
        let a = Approvals::open(&path).unwrap();
        assert_eq!(a.pending().len(), 1);
        assert_eq!(
            a.answered("a"),
            Some(&(Answer::Approved, "alice".to_string()))
        );
    }
}
