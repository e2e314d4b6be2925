//! The one normalized input every trigger produces.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Label or annotation set. Ordered so fingerprints and output are stable.
pub type Labels = BTreeMap<String, String>;

/// What produced an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TriggerKind {
    /// An Alertmanager webhook (or a payload given to `remediate run --alert`).
    Alert,
    /// A cron tick of a playbook's schedule trigger.
    Schedule,
    /// `remediate run --playbook NAME` by a person.
    Manual,
}

impl TriggerKind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Alert => "alert",
            TriggerKind::Schedule => "schedule",
            TriggerKind::Manual => "manual",
        }
    }
}

/// Alert status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Firing: may start an action.
    Firing,
    /// Resolved: never starts an action.
    Resolved,
}

impl Status {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

/// One event: an alert, a schedule tick or a manual run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What produced it.
    pub trigger: TriggerKind,
    /// Firing or resolved (schedule and manual events are firing).
    pub status: Status,
    /// Identity of the alert (Alertmanager's fingerprint) or of the tick.
    pub fingerprint: String,
    /// Alert labels (empty for schedule and manual events).
    pub labels: Labels,
    /// Alert annotations.
    pub annotations: Labels,
    /// Parameters for `values.*` (schedule and manual events).
    pub values: Labels,
    /// When the alert started firing, or when the tick was due.
    pub starts_at: Option<DateTime<Utc>>,
    /// For schedule and manual events: the one playbook they run.
    pub playbook: Option<String>,
}

impl Event {
    /// Identity of one delivery: fingerprint, startsAt and status. Alertmanager
    /// HA pairs and `repeat_interval` resend the same delivery; a new episode
    /// of the alert has a new startsAt.
    pub fn delivery_key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.fingerprint,
            self.starts_at.map(|t| t.timestamp_millis()).unwrap_or(0),
            self.status.as_str()
        )
    }

    /// The alert name, if this is an alert.
    pub fn alertname(&self) -> Option<&str> {
        self.labels.get("alertname").map(String::as_str)
    }

    /// An event that runs one playbook by name (manual or schedule).
    pub fn for_playbook(
        trigger: TriggerKind,
        playbook: &str,
        values: Labels,
        at: DateTime<Utc>,
    ) -> Self {
        let mut id: Labels = values.clone();
        id.insert("__playbook__".into(), playbook.to_string());
        id.insert("__at__".into(), at.to_rfc3339());
        Self {
            trigger,
            status: Status::Firing,
            fingerprint: fingerprint(&id),
            labels: Labels::new(),
            annotations: Labels::new(),
            values,
            starts_at: Some(at),
            playbook: Some(playbook.to_string()),
        }
    }
}

/// Alertmanager's label-set fingerprint: FNV-1a 64 over sorted
/// `name 0xff value 0xff` pairs, printed as 16 hex digits.
pub fn fingerprint(labels: &Labels) -> String {
    const OFFSET: u64 = 0xcbf29ce484222325;
    const PRIME: u64 = 0x100000001b3;
    let mut h = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for (k, v) in labels {
        feed(k.as_bytes());
        feed(&[0xff]);
        feed(v.as_bytes());
        feed(&[0xff]);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_and_order_independent() {
        let a: Labels = [("b", "2"), ("a", "1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let b: Labels = [("a", "1"), ("b", "2")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a).len(), 16);
        assert_ne!(fingerprint(&a), fingerprint(&Labels::new()));
    }
}
