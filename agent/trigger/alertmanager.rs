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
    #[serde(default, deserialize_with = "crate::audit::ts::deserialize_opt")]
    pub starts_at: Option<DateTime<Utc>>,
    /// When it ended (zero time while firing).
    #[serde(default, deserialize_with = "crate::audit::ts::deserialize_opt")]
    pub ends_at: Option<DateTime<Utc>>,
    /// Link to the expression.
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    /// Alertmanager's fingerprint; computed from labels when absent.
    #[serde(default)]
    pub fingerprint: String,
    /// Query values that made the alert fire (Grafana's `values`, numbers
    /// by refId); never in an Alertmanager body.
    #[serde(default, skip_serializing, deserialize_with = "grafana_values")]
    pub values: Labels,
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
    #[error("unsupported Alertmanager webhook version {0:?}: expected \"4\"{hint}", hint = grafana_hint(.0))]
    Version(String),
    /// An alert without an alertname label.
    #[error("alerts[{0}] has no alertname label")]
    NoAlertname(usize),
    /// A control character in a label or annotation.
    #[error("alerts[{alert}] ({alertname:?}): {field} {name:?} {part} has the control character {ch:?} at byte {at}; control characters are refused, nothing of this notification was accepted")]
    BadChar {
        /// Index of the alert in the body.
        alert: usize,
        /// Its alertname.
        alertname: String,
        /// `label`, `annotation` or `field`.
        field: &'static str,
        /// The label's or annotation's name (or the field's).
        name: String,
        /// `name` or `value`.
        part: &'static str,
        /// The character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
}

impl Error {
    /// A body that is not a payload, at the decoder's position.
    pub fn malformed(e: &serde_json::Error) -> Self {
        Error::Malformed {
            line: e.line(),
            column: e.column(),
            reason: strip_position(&e.to_string()),
        }
    }
}

impl Payload {
    /// Parses and checks a webhook body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let p: Payload = serde_json::from_slice(body).map_err(|e| Error::malformed(&e))?;
        p.validate()
    }

    /// The checks [`Payload::parse`] makes after decoding: version 4, an
    /// alertname on every alert, no control characters.
    pub fn validate(self) -> Result<Self, Error> {
        let p = self;
        if p.version != "4" {
            return Err(Error::Version(p.version));
        }
        p.check()?;
        Ok(p)
    }

    /// Every alert has an alertname, and no label, annotation or value
    /// holds a control character.
    pub fn check(&self) -> Result<(), Error> {
        let p = self;
        if let Some(i) = p
            .alerts
            .iter()
            .position(|a| !a.labels.contains_key("alertname"))
        {
            return Err(Error::NoAlertname(i));
        }
        p.check_bytes()
    }

    /// One event per alert.
    pub fn events(&self) -> Vec<Event> {
        self.alerts.iter().cloned().map(Alert::into_event).collect()
    }

    /// One event per alert, moving the alerts' labels rather than copying
    /// them (a storm body is not held twice).
    pub fn into_events(self) -> Vec<Event> {
        self.alerts.into_iter().map(Alert::into_event).collect()
    }

    /// Refuses control characters in label and annotation names and values
    /// (and the fingerprint): a NUL cannot be passed to a command, and
    /// line breaks or escapes in a label would reach targets, commands and
    /// logs. Annotation values may hold tabs and line breaks (descriptions
    /// are often multi-line); nothing else below U+0020, nor DEL, nor the
    /// C1 controls U+0080..U+009F.
    fn check_bytes(&self) -> Result<(), Error> {
        for (i, a) in self.alerts.iter().enumerate() {
            let bad =
                |field: &'static str, name: &str, part: &'static str, s: &str, multiline: bool| {
                    bad_char(s, multiline).map(|(at, ch)| Error::BadChar {
                        alert: i,
                        alertname: a.labels.get("alertname").cloned().unwrap_or_default(),
                        field,
                        name: name.to_string(),
                        part,
                        ch,
                        at,
                    })
                };
            for (k, v) in &a.labels {
                if let Some(e) =
                    bad("label", k, "name", k, false).or_else(|| bad("label", k, "value", v, false))
                {
                    return Err(e);
                }
            }
            for (k, v) in &a.annotations {
                if let Some(e) = bad("annotation", k, "name", k, false)
                    .or_else(|| bad("annotation", k, "value", v, true))
                {
                    return Err(e);
                }
            }
            if let Some(e) = bad("field", "fingerprint", "value", &a.fingerprint, false) {
                return Err(e);
            }
            for (k, v) in &a.values {
                if let Some(e) =
                    bad("value", k, "name", k, false).or_else(|| bad("value", k, "value", v, false))
                {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// The first refused character of `s` and its byte offset.
fn bad_char(s: &str, multiline: bool) -> Option<(usize, char)> {
    s.char_indices().find(|&(_, c)| {
        let allowed = multiline && matches!(c, '\t' | '\n' | '\r');
        !allowed && (c < ' ' || c == '\u{7f}' || ('\u{80}'..='\u{9f}').contains(&c))
    })
}

impl Alert {
    /// The normalized event.
    pub fn to_event(&self) -> Event {
        self.clone().into_event()
    }

    /// The normalized event, consuming the alert.
    pub fn into_event(self) -> Event {
        Event {
            trigger: TriggerKind::Alert,
            status: self.status,
            fingerprint: if self.fingerprint.is_empty() {
                fingerprint(&self.labels)
            } else {
                self.fingerprint
            },
            labels: self.labels,
            annotations: self.annotations,
            values: self.values,
            starts_at: self.starts_at,
            playbook: None,
        }
    }
}

/// Grafana's `values`: numbers (or null, left out) by refId, as text.
fn grafana_values<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Labels, D::Error> {
    let raw: Option<std::collections::BTreeMap<String, serde_json::Value>> =
        Option::deserialize(d)?;
    let mut out = Labels::new();
    for (k, v) in raw.into_iter().flatten() {
        match super::grafana::value_text(&v) {
            Ok(Some(t)) => {
                out.insert(k, t);
            }
            Ok(None) => {}
            Err(kind) => {
                return Err(serde::de::Error::custom(format!(
                    "values.{k} is {kind}; expected a number"
                )))
            }
        }
    }
    Ok(out)
}

fn grafana_hint(version: &str) -> &'static str {
    if version == "1" {
        " (Grafana's version \"1\" bodies go to /webhook/grafana)"
    } else {
        ""
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

    #[test]
    fn refuses_control_characters_naming_the_alert_and_the_label() {
        // JSON escapes, so the bytes reach the check (serde_json itself
        // refuses raw control bytes inside strings).
        let body = |labels: &str, ann: &str| {
            format!(
                r#"{{"version":"4","status":"firing","alerts":[{{"status":"firing","labels":{{"alertname":"A"}}}},{{"status":"firing","labels":{labels},"annotations":{ann}}}]}}"#
            )
        };
        let err = Payload::parse(body(r#"{"alertname":"Disk","pod":"p\u0000x"}"#, "{}").as_bytes())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"alerts[1] ("Disk"): label "pod" value has the control character '\0' at byte 1; control characters are refused, nothing of this notification was accepted"#
        );
        let err = Payload::parse(body(r#"{"alertname":"Disk","a\nb":"x"}"#, "{}").as_bytes())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"label "a\nb" name has the control character '\n' at byte 1"#),
            "{err}"
        );
        let err =
            Payload::parse(body(r#"{"alertname":"Disk","pod":"x\u001b[31m"}"#, "{}").as_bytes())
                .unwrap_err();
        assert!(err.to_string().contains(r"'\u{1b}'"), "{err}");
        let err =
            Payload::parse(body(r#"{"alertname":"Disk"}"#, r#"{"summary":"a\u0085b"}"#).as_bytes())
                .unwrap_err();
        assert!(
            err.to_string().contains(r#"annotation "summary" value"#),
            "{err}"
        );
        // Multi-line annotation values and non-ASCII text are fine.
        let p = Payload::parse(
            body(
                r#"{"alertname":"Disk","pod":"café-1"}"#,
                r#"{"description":"line 1\n\tline 2\r\n"}"#,
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(p.alerts.len(), 2);
    }
}
