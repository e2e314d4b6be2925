//! Playbook unit tests: YAML files beside the playbooks (`*.test.yaml`) that
//! give alerts or manual runs and expect matched playbooks, rendered targets,
//! parameters and decisions. In the spirit of `promtool test rules`.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;

use crate::diag::{Diagnostic, Diagnostics};
use crate::engine::{Engine, Planned};
use crate::event::{fingerprint, Event, Labels, Status, TriggerKind};
use crate::playbook::load::Source;
use crate::playbook::model::ApiVersion;
use crate::policy::Ledger;

/// A test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestFile {
    /// Always `remediate/v1`.
    pub api_version: ApiVersion,
    /// Always `PlaybookTest`.
    pub kind: TestKind,
    /// The cases.
    pub spec: TestSpec,
}

/// The `kind` of a test file.
#[derive(Debug, Deserialize)]
pub enum TestKind {
    /// `PlaybookTest`
    PlaybookTest,
}

/// Cases and their evaluation time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestSpec {
    /// Evaluation time of every case (windows depend on it). Default:
    /// Wednesday 2026-11-25T12:00:00Z, so tests do not depend on the day they run.
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    /// The cases.
    pub cases: Vec<Case>,
}

/// One case: an alert or a manual run, and what must be decided.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Case {
    /// Says what behaviour is tested.
    pub name: String,
    /// An alert, as Alertmanager would send it.
    #[serde(default)]
    pub alert: Option<TestAlert>,
    /// Or a manual run of this playbook...
    #[serde(default)]
    pub playbook: Option<String>,
    /// ...with these values.
    #[serde(default)]
    pub values: Labels,
    /// Evaluate as `--dry-run`.
    #[serde(default)]
    pub dry_run: bool,
    /// Every run expected, exactly; empty means nothing matches.
    pub expect: Vec<Expect>,
}

/// A test alert.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestAlert {
    /// Labels.
    pub labels: Labels,
    /// Annotations.
    #[serde(default)]
    pub annotations: Labels,
    /// `firing` (default) or `resolved`.
    #[serde(default = "firing")]
    pub status: Status,
}

fn firing() -> Status {
    Status::Firing
}

/// One expected run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Expect {
    /// Playbook name.
    pub playbook: String,
    /// `execute`, `dry-run`, `suppressed` or `needs-approval`.
    pub decision: String,
    /// A substring the reason must contain.
    #[serde(default)]
    pub reason_contains: Option<String>,
    /// Target fields that must be rendered exactly so.
    #[serde(default)]
    pub target: BTreeMap<String, String>,
    /// Action names of the steps, in order.
    #[serde(default)]
    pub actions: Option<Vec<String>>,
    /// Parameters of each step (only the keys given are compared).
    #[serde(default)]
    pub params: Option<Vec<serde_json::Value>>,
}

/// Outcome of a test run.
#[derive(Debug, Default)]
pub struct Report {
    /// Files run.
    pub files: usize,
    /// Cases run.
    pub cases: usize,
    /// One entry per failed case: file, case and what differed.
    pub failures: Vec<String>,
}

/// The default evaluation time: a Wednesday noon, outside weekend freezes.
pub fn default_at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

/// Parses every test file, reporting all problems at once.
pub fn parse(sources: &[Source]) -> Result<Vec<(Source, TestFile)>, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut out = Vec::new();
    for s in sources {
        match crate::diag::parse_yaml::<TestFile>(&s.path, &s.text) {
            Ok(t) => out.push((s.clone(), t)),
            Err(d) => diags.push(d),
        }
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(diags)
    }
}

/// Runs parsed tests against an engine. Unknown playbooks named by a case are
/// reported as input errors.
pub fn run(engine: &Engine, files: &[(Source, TestFile)]) -> Result<Report, Diagnostics> {
    let mut report = Report::default();
    let mut diags = Diagnostics::default();
    for (src, file) in files {
        report.files += 1;
        let at = file.spec.at.unwrap_or_else(default_at);
        for (i, case) in file.spec.cases.iter().enumerate() {
            report.cases += 1;
            let event = match (&case.alert, &case.playbook) {
                (Some(a), None) => Event {
                    trigger: TriggerKind::Alert,
                    status: a.status,
                    fingerprint: fingerprint(&a.labels),
                    labels: a.labels.clone(),
                    annotations: a.annotations.clone(),
                    values: Labels::new(),
                    starts_at: Some(at),
                    playbook: None,
                },
                (None, Some(p)) if engine.config.playbook(p).is_some() => {
                    Event::for_playbook(TriggerKind::Manual, p, case.values.clone(), at)
                }
                (None, Some(p)) => {
                    diags.push(Diagnostic::at(
                        &src.path,
                        None,
                        format!("spec.cases[{i}] ({}): unknown playbook {p:?}", case.name),
                    ));
                    continue;
                }
                _ => {
                    diags.push(Diagnostic::at(
                        &src.path,
                        None,
                        format!(
                            "spec.cases[{i}] ({}): give exactly one of alert or playbook",
                            case.name
                        ),
                    ));
                    continue;
                }
            };
            let planned = engine.decide(&event, case.dry_run, at, &mut Ledger::default());
            let problems = compare(&planned, &case.expect);
            if !problems.is_empty() {
                report.failures.push(format!(
                    "{}: {}:\n    {}",
                    src.path.display(),
                    case.name,
                    problems.join("\n    ")
                ));
            }
        }
    }
    if diags.is_empty() {
        Ok(report)
    } else {
        Err(diags)
    }
}

fn compare(got: &[Planned], want: &[Expect]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut got_names: Vec<&str> = got.iter().map(|p| p.playbook.as_str()).collect();
    let mut want_names: Vec<&str> = want.iter().map(|e| e.playbook.as_str()).collect();
    got_names.sort_unstable();
    want_names.sort_unstable();
    if got_names != want_names {
        problems.push(format!(
            "matched playbooks: got [{}], want [{}]",
            got_names.join(", "),
            want_names.join(", ")
        ));
        return problems;
    }
    for e in want {
        let Some(p) = got.iter().find(|p| p.playbook == e.playbook) else {
            continue;
        };
        let who = &e.playbook;
        if p.decision.as_str() != e.decision {
            problems.push(format!(
                "{who}: decision: got {} ({}), want {}",
                p.decision.as_str(),
                p.decision.reason(),
                e.decision
            ));
        }
        if let Some(r) = &e.reason_contains {
            if !p.decision.reason().contains(r.as_str()) {
                problems.push(format!(
                    "{who}: reason {:?} does not contain {r:?}",
                    p.decision.reason()
                ));
            }
        }
        for (k, v) in &e.target {
            match p.target.get(k) {
                Some(g) if g == v => {}
                other => problems.push(format!("{who}: target.{k}: got {other:?}, want {v:?}")),
            }
        }
        if let Some(actions) = &e.actions {
            let got: Vec<&str> = p.steps.iter().map(|s| s.action).collect();
            if got != actions.iter().map(String::as_str).collect::<Vec<_>>() {
                problems.push(format!("{who}: actions: got {got:?}, want {actions:?}"));
            }
        }
        if let Some(params) = &e.params {
            for (i, want_p) in params.iter().enumerate() {
                match p.steps.get(i) {
                    None => problems.push(format!("{who}: params[{i}]: no such step")),
                    Some(s) => subset(
                        &s.params,
                        want_p,
                        &format!("{who}: params[{i}]"),
                        &mut problems,
                    ),
                }
            }
        }
    }
    problems
}

/// Checks that every key of `want` is in `got` with an equal value.
fn subset(
    got: &serde_json::Value,
    want: &serde_json::Value,
    path: &str,
    problems: &mut Vec<String>,
) {
    match (got, want) {
        (serde_json::Value::Object(g), serde_json::Value::Object(w)) => {
            for (k, wv) in w {
                match g.get(k) {
                    Some(gv) => subset(gv, wv, &format!("{path}.{k}"), problems),
                    None => problems.push(format!("{path}.{k}: missing, want {wv}")),
                }
            }
        }
        (g, w) if g == w => {}
        // YAML numbers compare with JSON numbers by value.
        (g, w) if g.as_f64().is_some() && g.as_f64() == w.as_f64() => {}
        (g, w) => problems.push(format!("{path}: got {g}, want {w}")),
    }
}
