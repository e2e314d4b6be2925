//! Grafana Unified Alerting's webhook contact point (payload version "1"),
//! posted straight to the agent with no Alertmanager in between.
//!
//! The body is Alertmanager's webhook body with Grafana's additions: per
//! alert `values` (the query results that made it fire, by refId),
//! `valueString`, `silenceURL`, `dashboardURL` and `panelURL`, and per
//! notification `orgId`, `state`, `title` and `message`. Its alerts become
//! the same events as Alertmanager's (same dedupe, resolve and cancel
//! semantics), with `values` carried for the playbooks' `values.*`.
//!
//! The contact point's "Test" button sends one alert labelled
//! `alertname=TestAlert, instance=Grafana` (annotation `summary:
//! Notification test`): it is recognised, answered and audited as a test,
//! and runs nothing.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::alertmanager;
use crate::event::{Event, Labels, Status};

/// The webhook body. Unknown fields are accepted: Grafana adds some.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    /// Must be "1".
    pub version: String,
    /// Contact point name.
    #[serde(default)]
    pub receiver: String,
    /// Group status.
    pub status: Status,
    /// Grafana organisation.
    #[serde(default)]
    pub org_id: i64,
    /// `alerting`, `ok`, … (informational).
    #[serde(default)]
    pub state: String,
    /// The rendered title, e.g. `[FIRING:1] HighMemory (blue)`.
    #[serde(default)]
    pub title: String,
    /// The rendered message (informational).
    #[serde(default)]
    pub message: String,
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
    /// Grafana's external URL.
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    /// Group key.
    #[serde(default)]
    pub group_key: String,
    /// Alerts left out because of the contact point's max alerts.
    #[serde(default)]
    pub truncated_alerts: u64,
}

/// One alert of a Grafana webhook body.
#[derive(Debug, Clone, Deserialize)]
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
    /// Link to the rule.
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    /// Grafana's fingerprint; computed from labels when absent.
    #[serde(default)]
    pub fingerprint: String,
    /// Link to silence the alert.
    #[serde(default, rename = "silenceURL")]
    pub silence_url: String,
    /// Link to the rule's dashboard.
    #[serde(default, rename = "dashboardURL")]
    pub dashboard_url: String,
    /// Link to the rule's panel.
    #[serde(default, rename = "panelURL")]
    pub panel_url: String,
    /// Query and expression results by refId (`null` in some versions).
    #[serde(default)]
    pub values: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// The values as Grafana prints them.
    #[serde(default)]
    pub value_string: String,
}

/// Why a payload was rejected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not JSON, or not the payload shape.
    #[error("malformed Grafana webhook payload at line {line} column {column}: {reason}")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_json's message.
        reason: String,
    },
    /// Valid JSON of another version.
    #[error("unsupported Grafana webhook version {0:?}: expected \"1\" (Alertmanager's version \"4\" bodies go to /webhook/alertmanager)")]
    Version(String),
    /// A value that is not a number, a string, a boolean or null.
    #[error("alerts[{alert}]: values.{name} is {kind}; expected a number")]
    Value {
        /// Index of the alert.
        alert: usize,
        /// The refId.
        name: String,
        /// What it was.
        kind: &'static str,
    },
    /// The alerts themselves (alertname, control characters).
    #[error(transparent)]
    Alerts(#[from] alertmanager::Error),
}

/// A checked Grafana notification: the events to decide, and the test
/// alerts that were recognised and are only recorded.
#[derive(Debug)]
pub struct Parsed {
    /// Events to journal and decide.
    pub events: Vec<Event>,
    /// The contact point's test alerts: recorded, never decided.
    pub tests: Vec<Event>,
    /// Alerts Grafana left out of the group.
    pub truncated_alerts: u64,
}

/// True for the alert Grafana's "Test" button sends.
pub fn is_test_alert(labels: &Labels) -> bool {
    labels.get("alertname").map(String::as_str) == Some("TestAlert")
        && labels.get("instance").map(String::as_str) == Some("Grafana")
}

pub(crate) fn value_text(v: &serde_json::Value) -> Result<Option<String>, &'static str> {
    use serde_json::Value as V;
    match v {
        V::Null => Ok(None),
        V::Number(n) => Ok(Some(n.to_string())),
        V::String(s) => Ok(Some(s.clone())),
        V::Bool(b) => Ok(Some(b.to_string())),
        V::Array(_) => Err("an array"),
        V::Object(_) => Err("an object"),
    }
}

impl Payload {
    /// Parses and checks a webhook body.
    pub fn parse(body: &[u8]) -> Result<Parsed, Error> {
        let p: Payload = serde_json::from_slice(body).map_err(|e| Error::Malformed {
            line: e.line(),
            column: e.column(),
            reason: e
                .to_string()
                .rsplit_once(" at line ")
                .map(|(m, _)| m.to_string())
                .unwrap_or_else(|| e.to_string()),
        })?;
        if p.version != "1" {
            return Err(Error::Version(p.version));
        }
        let truncated_alerts = p.truncated_alerts;
        let mut alerts = Vec::with_capacity(p.alerts.len());
        for (i, a) in p.alerts.into_iter().enumerate() {
            let mut values = Labels::new();
            for (k, v) in a.values.iter().flatten() {
                match value_text(v) {
                    Ok(Some(t)) => {
                        values.insert(k.clone(), t);
                    }
                    Ok(None) => {}
                    Err(kind) => {
                        return Err(Error::Value {
                            alert: i,
                            name: k.clone(),
                            kind,
                        })
                    }
                }
            }
            alerts.push(alertmanager::Alert {
                status: a.status,
                labels: a.labels,
                annotations: a.annotations,
                starts_at: a.starts_at,
                ends_at: a.ends_at,
                generator_url: a.generator_url,
                fingerprint: a.fingerprint,
                values,
            });
        }
        // The same checks as an Alertmanager body: one place decides what a
        // label may hold.
        let am = alertmanager::Payload {
            version: "4".into(),
            receiver: p.receiver,
            status: p.status,
            alerts,
            group_labels: p.group_labels,
            common_labels: p.common_labels,
            common_annotations: p.common_annotations,
            external_url: p.external_url,
            group_key: p.group_key,
            truncated_alerts,
        };
        am.check()?;
        let (tests, events): (Vec<Event>, Vec<Event>) = am
            .into_events()
            .into_iter()
            .partition(|e| is_test_alert(&e.labels));
        Ok(Parsed {
            events,
            tests,
            truncated_alerts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRING: &str = include_str!("../../examples/alerts/grafana-firing.json");
    const RESOLVED: &str = include_str!("../../examples/alerts/grafana-resolved.json");
    const TEST: &str = include_str!("../../examples/alerts/grafana-test.json");

    #[test]
    fn a_grafana_notification_becomes_events_with_its_values() {
        let p = Payload::parse(FIRING.as_bytes()).unwrap();
        assert!(p.tests.is_empty());
        assert_eq!(p.events.len(), 2);
        let e = &p.events[0];
        assert_eq!(e.alertname(), Some("PostgresTooManyConnections"));
        assert_eq!(e.fingerprint, "c6eadffa33fcdf37");
        assert_eq!(e.status, Status::Firing);
        assert_eq!(e.values.get("B").map(String::as_str), Some("144.0"));
        assert_eq!(e.values.get("C").map(String::as_str), Some("1"));
        assert_eq!(e.labels["instance"], "pg-0.db:5432");
        assert!(e.starts_at.is_some());
        // A null value is absent, not "null".
        assert!(!p.events[1].values.contains_key("B"), "{:?}", p.events[1]);

        let r = Payload::parse(RESOLVED.as_bytes()).unwrap();
        assert_eq!(r.events[0].status, Status::Resolved);
        assert_eq!(r.events[0].fingerprint, e.fingerprint);
        assert_eq!(
            r.events[0].delivery_key().split('/').nth(1),
            e.delivery_key().split('/').nth(1)
        );
    }

    #[test]
    fn the_contact_points_test_notification_is_recognised_as_a_test() {
        let p = Payload::parse(TEST.as_bytes()).unwrap();
        assert!(p.events.is_empty());
        assert_eq!(p.tests.len(), 1);
        assert_eq!(p.tests[0].annotations["summary"], "Notification test");
    }

    #[test]
    fn bad_bodies_are_refused_with_the_reason() {
        let err = Payload::parse(br#"{"version":"4","status":"firing","alerts":[]}"#).unwrap_err();
        assert!(err.to_string().contains("/webhook/alertmanager"), "{err}");
        let err = Payload::parse(b"{\"version\":\"1\",\n\"status\":\"firing\",\"alerts\":[}")
            .unwrap_err();
        assert!(matches!(err, Error::Malformed { line: 2, .. }), "{err}");
        let err = Payload::parse(
            br#"{"version":"1","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"A"},"values":{"B":[1]}}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "alerts[0]: values.B is an array; expected a number"
        );
        let err = Payload::parse(
            br#"{"version":"1","status":"firing","alerts":[{"status":"firing","labels":{"team":"a"}}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "alerts[0] has no alertname label");
        let err = Payload::parse(
            br#"{"version":"1","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"A","pod":"x\u0000"}}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("control character"), "{err}");
    }
}
