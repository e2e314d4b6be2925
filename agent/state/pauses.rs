//! Pauses: a person silenced one playbook, or one playbook on one target,
//! until a time. The decide stage suppresses matching runs ("paused by X
//! until T"). This is the in-memory view; pauses and their lifting commit
//! to the store ([`super::store::PauseChange`]) with their audit records
//! first, so they survive a restart.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One pause.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Pause {
    /// Pause id (time-ordered).
    pub id: String,
    /// Playbook paused.
    pub playbook: String,
    /// Target as displayed (`pod etl/x`); None: every target.
    pub target: Option<String>,
    /// Who paused it (the approver's name; from chat with the platform id).
    pub by: String,
    /// Why, as given.
    pub reason: String,
    /// When it was set.
    pub at: DateTime<Utc>,
    /// When it ends by itself.
    pub until: DateTime<Utc>,
}

impl Pause {
    /// Whether it silences a run of `playbook` on `target` at `now`.
    pub fn covers(&self, playbook: &str, target: &str, now: DateTime<Utc>) -> bool {
        self.playbook == playbook
            && now < self.until
            && self.target.as_deref().is_none_or(|t| t == target)
    }

    /// What it silences, for people: `restart-pod on pod etl/x`.
    pub fn scope(&self) -> String {
        match &self.target {
            Some(t) => format!("{} on {t}", self.playbook),
            None => format!("{} (every target)", self.playbook),
        }
    }

    /// The reason a suppressed run records.
    pub fn suppression(&self) -> String {
        let why = if self.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", self.reason)
        };
        format!(
            "paused by {} until {} (pause {}){why}",
            self.by,
            self.until.format("%Y-%m-%dT%H:%M:%SZ"),
            self.id
        )
    }
}

/// The pauses in force (and ended ones not yet dropped).
#[derive(Debug, Default)]
pub struct Pauses {
    by_id: BTreeMap<String, Pause>,
}

impl Pauses {
    /// The view of what the store holds.
    pub fn from_list(list: Vec<Pause>) -> Self {
        Self {
            by_id: list.into_iter().map(|p| (p.id.clone(), p)).collect(),
        }
    }

    /// A new pause (committed to the store).
    pub fn set(&mut self, p: Pause) {
        self.by_id.insert(p.id.clone(), p);
    }

    /// Lifts a pause (its lifting committed); returns it.
    pub fn lift(&mut self, id: &str) -> Option<Pause> {
        self.by_id.remove(id)
    }

    /// The pause `id` if in force at `now`.
    pub fn get(&self, id: &str, now: DateTime<Utc>) -> Option<&Pause> {
        self.by_id.get(id).filter(|p| now < p.until)
    }

    /// The pause silencing `playbook` on `target` at `now`, if any (the one
    /// lasting longest).
    pub fn covering(&self, playbook: &str, target: &str, now: DateTime<Utc>) -> Option<&Pause> {
        self.by_id
            .values()
            .filter(|p| p.covers(playbook, target, now))
            .max_by_key(|p| p.until)
    }

    /// Pauses in force at `now`, soonest to end first; ended ones are dropped.
    pub fn active(&mut self, now: DateTime<Utc>) -> Vec<Pause> {
        self.by_id.retain(|_, p| now < p.until);
        let mut v: Vec<Pause> = self.by_id.values().cloned().collect();
        v.sort_by_key(|p| p.until);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pause(id: &str, target: Option<&str>, mins: i64, now: DateTime<Utc>) -> Pause {
        Pause {
            id: id.into(),
            playbook: "restart-pod".into(),
            target: target.map(Into::into),
            by: "alice".into(),
            reason: String::new(),
            at: now,
            until: now + chrono::Duration::minutes(mins),
        }
    }

    #[test]
    fn a_pause_covers_its_playbook_on_its_target_until_it_ends() {
        let now = Utc::now();
        let mut ps = Pauses::from_list(vec![
            pause("a", Some("pod etl/x"), 60, now),
            pause("b", None, 10, now),
        ]);
        assert_eq!(
            ps.covering("restart-pod", "pod etl/x", now).unwrap().id,
            "a"
        );
        assert_eq!(
            ps.covering("restart-pod", "pod etl/y", now).unwrap().id,
            "b"
        );
        assert!(ps.covering("other", "pod etl/x", now).is_none());
        let later = now + chrono::Duration::minutes(30);
        assert!(ps.covering("restart-pod", "pod etl/y", later).is_none());
        assert_eq!(ps.active(later).len(), 1);
        assert!(ps.lift("a").is_some());
        assert!(ps.covering("restart-pod", "pod etl/x", now).is_none());
        assert!(pause("c", None, 60, now)
            .suppression()
            .starts_with("paused by alice until "));
    }
}
