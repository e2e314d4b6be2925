//! Alertmanager webhook payloads (version "4"), exactly as Alertmanager posts them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{fingerprint, Event, Labels, Status, TriggerKind};

/// The webhook body. Unknown fields are accepted: Alertmanager may add some.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    /// Must be "4".
    pub version: String,
    /// Receiver name.
    #[serde(default)]
    pub receiver: String,
    /// Group status.
    pub status: Status,
    /// The alerts of the group.
    pub alerts: Vec<Alert>,
    /// Group labels.
    #[serde(default)]
    pub group_labels: Labels,
    /// Labels all alerts share.
    #[serde(default)]
    pub common_labels: Labels,
    /// Annotations all alerts share.
    #[serde(default)]
    pub common_annotations: Labels,
    /// Alertmanager's external URL.
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    /// Group key.
    #[serde(default)]
    pub group_key: String,
    /// Alerts left out because of max_alerts.
    #[serde(default)]
    pub truncated_alerts: u64,
}

/// One alert of a webhook body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Firing or resolved.
    pub status: Status,
    /// Labels (identity).
    pub labels: Labels,
    /// Annotations.
    #[serde(default)]
    pub annotations: Labels,
    /// When it started firing.
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    /// When it ended (zero time while firing).
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    /// Link to the expression.
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    /// Alertmanager's fingerprint; computed from labels when absent.
    #[serde(default)]
    pub fingerprint: String,
}

/// Why a payload was rejected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not JSON, or not the payload shape.
    #[error("malformed Alertmanager payload at line {line} column {column}: {reason}")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_json's message.
        reason: String,
    },
    /// Valid JSON of an unsupported version.
    #[error("unsupported Alertmanager webhook version {0:?}: expected \"4\"")]
    Version(String),
    /// An alert without an alertname label.
    #[error("alerts[{0}] has no alertname label")]
    NoAlertname(usize),
}

impl Payload {
    /// Parses and checks a webhook body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let p: Payload = serde_json::from_slice(body).map_err(|e| Error::Malformed {
            line: e.line(),
            column: e.column(),
            reason: strip_position(&e.to_string()),
        })?;
        if p.version != "4" {
            return Err(Error::Version(p.version));
        }
        if let Some(i) = p
            .alerts
            .iter()
            .position(|a| !a.labels.contains_key("alertname"))
        {
            return Err(Error::NoAlertname(i));
        }
        Ok(p)
    }

    /// One event per alert.
    pub fn events(&self) -> Vec<Event> {
        self.alerts.iter().map(Alert::to_event).collect()
    }
}

impl Alert {
    /// The normalized event.
    pub fn to_event(&self) -> Event {
        Event {
            trigger: TriggerKind::Alert,
            status: self.status,
            fingerprint: if self.fingerprint.is_empty() {
                fingerprint(&self.labels)
            } else {
                self.fingerprint.clone()
            },
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            values: Labels::new(),
            starts_at: self.starts_at,
            playbook: None,
        }
    }
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRING: &str = include_str!("../../examples/alerts/crashloop-firing.json");

    #[test]
    fn parses_a_real_alertmanager_body() {
        let p = Payload::parse(FIRING.as_bytes()).unwrap();
        assert_eq!(p.alerts.len(), 1);
        let ev = &p.events()[0];
        assert_eq!(ev.alertname(), Some("KubePodCrashLooping"));
        assert_eq!(ev.fingerprint, "878bb564defe5a42");
        assert_eq!(ev.status, Status::Firing);
    }

    #[test]
    fn rejects_bad_bodies_with_a_position_or_reason() {
        let err = Payload::parse(b"{\"version\": \"4\",\n \"status\": \"firing\", \"alerts\": [}")
            .unwrap_err();
        assert!(matches!(err, Error::Malformed { line: 2, .. }), "{err}");
        let err = Payload::parse(br#"{"version":"3","status":"firing","alerts":[]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported Alertmanager webhook version \"3\": expected \"4\""
        );
        let err = Payload::parse(br#"{"version":"4","status":"burning","alerts":[]}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `burning`"),
            "{err}"
        );
        let err = Payload::parse(
            br#"{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{}}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "alerts[0] has no alertname label");
    }
}
