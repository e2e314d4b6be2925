//! Triggers: how events come in.

pub mod alertmanager;
pub mod docker;
pub mod grafana;
pub mod kubernetes;
pub mod schedule;

use crate::event::Event;

/// A webhook body from either sender, checked.
#[derive(Debug)]
pub struct Notification {
    /// Events to decide.
    pub events: Vec<Event>,
    /// Test notifications (Grafana's contact-point test): never decided.
    pub tests: Vec<Event>,
    /// Alerts the sender left out of the group.
    pub truncated_alerts: u64,
}

/// Parses an Alertmanager (version "4") or Grafana (version "1") webhook
/// body, told apart by its `version`; for files given to `remediate run`
/// and `replay`, where there is no route to say which.
pub fn parse_notification(body: &[u8]) -> Result<Notification, String> {
    #[derive(serde::Deserialize)]
    struct Version {
        version: String,
    }
    match serde_json::from_slice::<Version>(body) {
        Ok(v) if v.version == "1" => grafana::Payload::parse(body)
            .map(|p| Notification {
                events: p.events,
                tests: p.tests,
                truncated_alerts: p.truncated_alerts,
            })
            .map_err(|e| e.to_string()),
        _ => alertmanager::Payload::parse(body)
            .map(|p| Notification {
                truncated_alerts: p.truncated_alerts,
                events: p.into_events(),
                tests: Vec::new(),
            })
            .map_err(|e| e.to_string()),
    }
}
