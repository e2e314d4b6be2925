//! Scope stages: resolved alerts, namespaces, the opt-out label.

use super::decision::Decision;
use super::gate::{GateInput, Stage};
use crate::event::Status;

pub(super) struct Resolved;
impl Stage for Resolved {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        (i.event.status == Status::Resolved)
            .then(|| Decision::Suppressed("alert resolved: resolved alerts start nothing".into()))
    }
}

pub(super) struct Namespaces {
    pub(super) allow: Vec<String>,
    pub(super) deny: Vec<String>,
}
impl Stage for Namespaces {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        let ns = i.target.get("namespace")?;
        if self.deny.iter().any(|d| d == ns) {
            return Some(Decision::Suppressed(format!(
                "namespace {ns} denied by policy scope (never allowed while the policy denies it)"
            )));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|a| a == ns) {
            return Some(Decision::Suppressed(format!(
                "namespace {ns} not in the policy's allow list (never allowed while it is not listed)"
            )));
        }
        None
    }
}

pub(super) struct OptOut {
    pub(super) label: String,
    /// The label as it appears on alerts: `remediate_io_disabled` and
    /// kube-state-metrics' `label_remediate_io_disabled`.
    pub(super) prom: [String; 2],
}
impl OptOut {
    pub(super) fn new(label: &str) -> Self {
        let sanitized: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        Self {
            label: label.to_string(),
            prom: [sanitized.clone(), format!("label_{sanitized}")],
        }
    }
}
impl Stage for OptOut {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        let labels = &i.event.labels;
        let hit = std::iter::once(&self.label)
            .chain(self.prom.iter())
            .find(|k| {
                labels
                    .get(*k)
                    .is_some_and(|v| !matches!(v.as_str(), "" | "false" | "0"))
            })?;
        Some(Decision::Suppressed(format!(
            "opted out by label {hit} (allows again once the label is removed)"
        )))
    }
}
