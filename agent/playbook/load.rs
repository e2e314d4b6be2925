//! Loading: files to a validated [`Config`]. Pure: reads no network and no
//! secrets. Every problem in every file is collected and reported at once,
//! each with file, line and column.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::diag::{Diagnostic, Diagnostics};
use crate::drivers::catalog;
use crate::drivers::{ActionSpec, Target};
use crate::event::{Event, Labels, TriggerKind};
use crate::playbook::matcher::{parse_matchers, MatchOp, Matcher};
use crate::playbook::model::Playbook;
use crate::playbook::template::{Context, Root, Template, TemplateError};
use crate::policy::model::Policy;
use crate::policy::{parse_cron, Gate};
use crate::units::Duration;
use crate::yamlpos::PositionIndex;

/// A file's name and text.
#[derive(Debug, Clone)]
pub struct Source {
    /// Path shown in errors.
    pub path: PathBuf,
    /// Contents.
    pub text: String,
}

/// Reads every `*.yaml` / `*.yml` file of `dir` (not `*.test.yaml`), sorted by name.
/// Every file that cannot be read is reported, not only the first.
pub fn read_dir(dir: &Path) -> Result<Vec<Source>, Diagnostics> {
    let mut diags = Diagnostics::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            diags.push(Diagnostic::at(
                dir,
                None,
                format!("cannot read directory: {e}"),
            ));
            return Err(diags);
        }
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for e in entries {
        match e {
            Ok(e) if is_document(&e.path()) => paths.push(e.path()),
            Ok(_) => {}
            Err(e) => diags.push(Diagnostic::at(
                dir,
                None,
                format!("cannot read a directory entry: {e}"),
            )),
        }
    }
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        match std::fs::read_to_string(&p) {
            Ok(text) => out.push(Source { path: p, text }),
            Err(e) => diags.push(Diagnostic::at(&p, None, format!("cannot read file: {e}"))),
        }
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(diags)
    }
}

fn is_document(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    (name.ends_with(".yaml") || name.ends_with(".yml"))
        && !name.ends_with(".test.yaml")
        && !name.ends_with(".test.yml")
        && !name.starts_with('.')
}

/// One step, compiled.
#[derive(Debug, Clone)]
pub struct CompiledStep {
    /// The catalogue entry.
    pub spec: &'static ActionSpec,
    /// Raw parameters (strings may be templates).
    pub params: serde_json::Value,
    /// Upper bound on apply.
    pub timeout: Duration,
}

/// A schedule trigger, compiled.
#[derive(Debug, Clone)]
pub struct CompiledSchedule {
    /// The cron expression as written.
    pub expr: String,
    /// The schedule.
    pub schedule: cron::Schedule,
    /// Values the tick passes.
    pub values: BTreeMap<String, String>,
}

/// A validated playbook.
#[derive(Debug, Clone)]
pub struct LoadedPlaybook {
    /// The document.
    pub doc: Playbook,
    /// Where it came from.
    pub file: PathBuf,
    /// Alert triggers: each is a list of matchers that must all hold.
    pub alert_triggers: Vec<Vec<Matcher>>,
    /// Schedule triggers.
    pub schedules: Vec<CompiledSchedule>,
    /// Target field templates.
    pub target: Vec<(String, Template)>,
    /// Steps.
    pub steps: Vec<CompiledStep>,
    /// Post-condition timeout.
    pub verify_timeout: Duration,
}

impl LoadedPlaybook {
    /// Name.
    pub fn name(&self) -> &str {
        &self.doc.metadata.name
    }

    /// Whether any alert trigger matches these labels.
    pub fn matches_alert(&self, labels: &Labels) -> bool {
        self.alert_triggers
            .iter()
            .any(|t| t.iter().all(|m| m.matches(labels)))
    }

    /// Values for an event: declared defaults, overlaid by the event's values.
    /// Unknown keys and missing required values are errors.
    pub fn resolve_values(&self, given: &Labels) -> Result<Labels, String> {
        let declared = &self.doc.spec.values;
        if let Some(k) = given.keys().find(|k| !declared.contains_key(*k)) {
            let known: Vec<&str> = declared.keys().map(String::as_str).collect();
            return Err(format!(
                "playbook {} declares no value {k:?} (declared: {})",
                self.name(),
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ));
        }
        let mut out = Labels::new();
        for (k, spec) in declared {
            match given.get(k).or(spec.default.as_ref()) {
                Some(v) => {
                    out.insert(k.clone(), v.clone());
                }
                None => {
                    return Err(format!(
                        "value {k:?} of playbook {} is required: set it with --set {k}=...",
                        self.name()
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Renders the target for an event.
    pub fn render_target(&self, ctx: &Context<'_>) -> Result<Target, TemplateError> {
        self.target
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.render(ctx)?)))
            .collect()
    }
}

/// Renders every template string inside a JSON value.
pub fn render_json(
    v: &serde_json::Value,
    ctx: &Context<'_>,
) -> Result<serde_json::Value, TemplateError> {
    Ok(match v {
        serde_json::Value::String(s) if s.contains("{{") => {
            serde_json::Value::String(Template::parse(s)?.render(ctx)?)
        }
        serde_json::Value::Array(a) => serde_json::Value::Array(
            a.iter()
                .map(|x| render_json(x, ctx))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(o) => serde_json::Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), render_json(x, ctx)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

/// A validated policy with its compiled gate.
#[derive(Debug)]
pub struct LoadedPolicy {
    /// The document.
    pub doc: Policy,
    /// Where it came from.
    pub file: PathBuf,
    /// The compiled gate.
    pub gate: Gate,
}

/// The validated set of playbooks and policies the engine runs on.
#[derive(Debug, Default)]
pub struct Config {
    /// Playbooks, in file order.
    pub playbooks: Vec<LoadedPlaybook>,
    /// Policies by name.
    pub policies: BTreeMap<String, LoadedPolicy>,
    by_alertname: HashMap<String, Vec<usize>>,
    /// The playbooks not keyed on an alertname, grouped by the labels each
    /// of their triggers needs (the labels of its matchers an absent label
    /// fails): an alert that lacks one of every trigger's labels matches
    /// none of the group's playbooks, so a few lookups skip them all. A
    /// group with no needs is always checked.
    unindexed: Vec<(Vec<Vec<String>>, Vec<usize>)>,
}

impl Config {
    /// Loads and validates everything, reporting every problem at once.
    pub fn load(playbooks: &[Source], policies: &[Source]) -> Result<Self, Diagnostics> {
        let mut diags = Diagnostics::default();
        let mut cfg = Config::default();
        let mut policy_files: HashMap<String, PathBuf> = HashMap::new();
        for src in policies {
            let Some((doc, idx)) = parse_doc::<Policy>(src, &mut diags) else {
                continue;
            };
            let name = doc.metadata.name.clone();
            check_name(&name, src, &idx, &mut diags);
            if let Some(prev) = policy_files.get(&name) {
                diags.push(Diagnostic::at(
                    &src.path,
                    idx.get("metadata.name"),
                    format!(
                        "metadata.name: duplicate policy name {name:?}: also defined in {}",
                        prev.display()
                    ),
                ));
                continue;
            }
            match Gate::compile(&doc) {
                Ok(gate) => {
                    policy_files.insert(name.clone(), src.path.clone());
                    cfg.policies.insert(
                        name,
                        LoadedPolicy {
                            doc,
                            file: src.path.clone(),
                            gate,
                        },
                    );
                }
                Err(errs) => {
                    policy_files.insert(name, src.path.clone());
                    for (path, msg) in errs {
                        diags.push(Diagnostic::at(
                            &src.path,
                            idx.get(&path),
                            format!("{path}: {msg}"),
                        ));
                    }
                }
            }
        }
        let mut seen: HashMap<String, PathBuf> = HashMap::new();
        for src in playbooks {
            let Some((doc, idx)) = parse_doc::<Playbook>(src, &mut diags) else {
                continue;
            };
            let name = doc.metadata.name.clone();
            check_name(&name, src, &idx, &mut diags);
            if let Some(prev) = seen.get(&name) {
                diags.push(Diagnostic::at(
                    &src.path,
                    idx.get("metadata.name"),
                    format!(
                        "metadata.name: duplicate playbook name {name:?}: also defined in {}",
                        prev.display()
                    ),
                ));
                continue;
            }
            seen.insert(name, src.path.clone());
            if !policy_files.contains_key(&doc.spec.policy) {
                let known: Vec<&str> = policy_files.keys().map(String::as_str).collect();
                diags.push(Diagnostic::at(
                    &src.path,
                    idx.get("spec.policy"),
                    format!(
                        "spec.policy: unknown policy {:?}{} (loaded: {})",
                        doc.spec.policy,
                        suggest(&doc.spec.policy, &known)
                            .map(|m| format!(": did you mean {m:?}?"))
                            .unwrap_or_default(),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            if let Some(pb) = compile_playbook(doc, src, &idx, &mut diags) {
                cfg.playbooks.push(pb);
            }
        }
        if !diags.is_empty() {
            return Err(diags);
        }
        cfg.build_index();
        Ok(cfg)
    }

    fn build_index(&mut self) {
        for (i, pb) in self.playbooks.iter().enumerate() {
            let mut names: Vec<&str> = Vec::new();
            let mut indexable = !pb.alert_triggers.is_empty();
            for t in &pb.alert_triggers {
                match t
                    .iter()
                    .find(|m| m.name == "alertname" && m.op == MatchOp::Equal)
                {
                    Some(m) => names.push(&m.value),
                    None => indexable = false,
                }
            }
            if pb.alert_triggers.is_empty() {
                continue;
            }
            if indexable {
                names.sort_unstable();
                names.dedup();
                for n in names {
                    self.by_alertname.entry(n.to_string()).or_default().push(i);
                }
            } else {
                // Per trigger, the labels an alert must carry for it to
                // match (those of its matchers an absent label fails); a
                // trigger that needs none makes the playbook always checked.
                let mut needs: Vec<Vec<String>> = Vec::new();
                for t in &pb.alert_triggers {
                    let mut set: Vec<String> = t
                        .iter()
                        .filter(|m| !m.matches_absent())
                        .map(|m| m.name.clone())
                        .collect();
                    if set.is_empty() {
                        needs.clear();
                        break;
                    }
                    set.sort_unstable();
                    set.dedup();
                    needs.push(set);
                }
                needs.sort_unstable();
                needs.dedup();
                match self.unindexed.iter_mut().find(|(n, _)| *n == needs) {
                    Some((_, v)) => v.push(i),
                    None => self.unindexed.push((needs, vec![i])),
                }
            }
        }
    }

    /// Playbooks whose alert triggers match the event, in file order. Schedule
    /// and manual events name their one playbook instead.
    pub fn matching(&self, ev: &Event) -> Vec<&LoadedPlaybook> {
        if ev.trigger != TriggerKind::Alert {
            return ev
                .playbook
                .as_deref()
                .and_then(|n| self.playbook(n))
                .into_iter()
                .collect();
        }
        let mut idx: Vec<usize> = Vec::new();
        if let Some(v) = ev.alertname().and_then(|a| self.by_alertname.get(a)) {
            idx.extend(v);
        }
        for (needs, group) in &self.unindexed {
            let may_match = |set: &Vec<String>| set.iter().all(|n| ev.labels.contains_key(n));
            if needs.is_empty() || needs.iter().any(may_match) {
                idx.extend(group);
            }
        }
        if idx.len() > 1 {
            idx.sort_unstable();
            idx.dedup();
        }
        idx.into_iter()
            .map(|i| &self.playbooks[i])
            .filter(|pb| pb.matches_alert(&ev.labels))
            .collect()
    }

    /// A playbook by name.
    pub fn playbook(&self, name: &str) -> Option<&LoadedPlaybook> {
        self.playbooks.iter().find(|p| p.name() == name)
    }
}

fn parse_doc<T: serde::de::DeserializeOwned>(
    src: &Source,
    diags: &mut Diagnostics,
) -> Option<(T, PositionIndex)> {
    if src.text.trim().is_empty() {
        diags.push(Diagnostic::at(
            &src.path,
            None,
            "empty document: expected a remediate/v1 Playbook or Policy",
        ));
        return None;
    }
    match crate::diag::parse_yaml::<T>(&src.path, &src.text) {
        Ok(doc) => Some((doc, PositionIndex::build(&src.text))),
        Err(mut d) => {
            // A document in the wrong directory: say where it belongs.
            for (kind, flag) in [("Policy", "--policies"), ("Playbook", "--playbooks")] {
                if d.message
                    .starts_with(&format!("kind: unknown variant `{kind}`"))
                {
                    d.message.push_str(&format!(
                        " (this is a {kind}: give its directory with {flag})"
                    ));
                }
            }
            diags.push(d);
            None
        }
    }
}

fn check_name(name: &str, src: &Source, idx: &PositionIndex, diags: &mut Diagnostics) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        diags.push(Diagnostic::at(
            &src.path,
            idx.get("metadata.name"),
            format!("metadata.name: {name:?} is not a valid name: expected lower-case letters, digits and '-', at most 63"),
        ));
    }
}

fn compile_playbook(
    doc: Playbook,
    src: &Source,
    idx: &PositionIndex,
    diags: &mut Diagnostics,
) -> Option<LoadedPlaybook> {
    let before = diags.len();
    let file = &src.path;
    let mut err = |path: &str, msg: String| {
        diags.push(Diagnostic::at(
            file,
            idx.get(path),
            format!("{path}: {msg}"),
        ))
    };
    let spec = &doc.spec;
    let declared = &spec.values;

    let mut alert_triggers = Vec::new();
    let mut schedules = Vec::new();
    if spec.triggers.is_empty() {
        err(
            "spec.triggers",
            "at least one trigger is required (alert or schedule)".into(),
        );
    }
    for (i, t) in spec.triggers.iter().enumerate() {
        let path = format!("spec.triggers[{i}]");
        match (&t.alert, &t.schedule) {
            (Some(list), None) => {
                if list.is_empty() {
                    err(&format!("{path}.alert"), "at least one matcher is required, e.g. 'alertname=\"KubePodCrashLooping\"'".into());
                }
                if !t.values.is_empty() {
                    err(
                        &format!("{path}.values"),
                        "values are for schedule triggers; alerts carry labels".into(),
                    );
                }
                let mut ms = Vec::new();
                for (j, s) in list.iter().enumerate() {
                    match parse_matchers(s) {
                        Ok(m) if m.is_empty() => {
                            err(&format!("{path}.alert[{j}]"), "empty matcher".into())
                        }
                        Ok(m) => ms.extend(m),
                        Err(e) => err(&format!("{path}.alert[{j}]"), e.to_string()),
                    }
                }
                // A conjunction: comparisons first, so a regex runs only
                // when they all hold (the order changes no result).
                ms.sort_by_key(Matcher::is_regex);
                alert_triggers.push(ms);
            }
            (None, Some(expr)) => match parse_cron(expr) {
                Ok(schedule) => {
                    for k in t.values.keys() {
                        if !declared.contains_key(k) {
                            err(
                                &format!("{path}.values.{k}"),
                                format!("value {k:?} is not declared in spec.values"),
                            );
                        }
                    }
                    schedules.push(CompiledSchedule {
                        expr: expr.clone(),
                        schedule,
                        values: t.values.clone(),
                    });
                }
                Err(e) => err(&format!("{path}.schedule"), e),
            },
            (Some(_), Some(_)) => err(
                &path,
                "a trigger has either alert or schedule, not both".into(),
            ),
            (None, None) => err(
                &path,
                "a trigger needs alert (matchers) or schedule (cron)".into(),
            ),
        }
    }

    // Count triggers as written, so one bad trigger does not hide another error.
    let has_schedule = spec.triggers.iter().any(|t| t.schedule.is_some());
    let has_alert = spec.triggers.iter().any(|t| t.alert.is_some());
    let check_template = |path: &str,
                          s: &str,
                          err: &mut dyn FnMut(&str, String)|
     -> Option<Template> {
        match Template::parse(s) {
            Ok(t) => {
                for v in t.vars() {
                    match v.root {
                        Root::Values if !declared.contains_key(&v.key) => err(
                            path,
                            format!("unknown template variable {v}: declare it under spec.values"),
                        ),
                        Root::Labels | Root::Annotations if !has_alert => err(
                            path,
                            format!("template variable {v}: this playbook has no alert trigger, so there are no labels or annotations"),
                        ),
                        Root::Labels | Root::Annotations if has_schedule && !v.has_default() => err(
                            path,
                            format!("template variable {v} is not set when the schedule trigger fires: add | default \"...\""),
                        ),
                        _ => {}
                    }
                }
                Some(t)
            }
            Err(e) => {
                err(path, e.to_string());
                None
            }
        }
    };

    let mut target = Vec::new();
    let kind = spec.target.get("kind").cloned();
    match &kind {
        None => err(
            "spec.target",
            "target.kind is required, e.g. kubernetes.pod".into(),
        ),
        Some(k) if k.contains("{{") => err(
            "spec.target.kind",
            "target.kind cannot be a template".into(),
        ),
        _ => {}
    }
    for (k, v) in &spec.target {
        if let Some(t) = check_template(&format!("spec.target.{k}"), v, &mut err) {
            target.push((k.clone(), t));
        }
    }

    let mut steps = Vec::new();
    if spec.steps.is_empty() {
        err("spec.steps", "at least one step is required".into());
    }
    for (i, s) in spec.steps.iter().enumerate() {
        let path = format!("spec.steps[{i}]");
        let Some(a) = catalog::get(&s.action) else {
            let names: Vec<&str> = catalog::CATALOG.iter().map(|a| a.name).collect();
            let msg = match suggest(&s.action, &names) {
                Some(m) => format!(
                    "unknown action {:?}: did you mean {m:?}? (`remediate actions` lists all)",
                    s.action
                ),
                None => format!(
                    "unknown action {:?} (known: {})",
                    s.action,
                    names.join(", ")
                ),
            };
            err(&format!("{path}.action"), msg);
            continue;
        };
        if let Some(k) = &kind {
            match a.targets.iter().find(|(tk, _)| tk == k) {
                None => {
                    let kinds: Vec<&str> = a.targets.iter().map(|(k, _)| *k).collect();
                    err(
                        "spec.target.kind",
                        format!(
                            "action {} does not act on {k:?} (expected {})",
                            a.name,
                            kinds.join(" or ")
                        ),
                    );
                }
                Some((_, fields)) => {
                    for f in *fields {
                        if !spec.target.contains_key(*f) {
                            err("spec.target", format!("action {} needs target.{f}", a.name));
                        }
                    }
                }
            }
        }
        let params = match serde_json::to_value(&s.with) {
            Ok(v) => v,
            Err(e) => {
                err(
                    &format!("{path}.with"),
                    format!("parameters must be a mapping with string keys: {e}"),
                );
                continue;
            }
        };
        walk_strings(&params, &format!("{path}.with"), &mut |p, s| {
            if s.contains("{{") {
                check_template(p, s, &mut err);
            }
        });
        if let Err(e) = (a.normalize)(params.clone()) {
            let hint = if e.contains("invalid type: string") {
                " (templates are allowed in string parameters only)"
            } else {
                ""
            };
            err(
                &format!("{path}.with"),
                format!("bad parameters for {}: {e}{hint}", a.name),
            );
        }
        steps.push(CompiledStep {
            spec: a,
            params,
            timeout: s
                .timeout
                .unwrap_or(Duration::from_secs(a.default_timeout_secs)),
        });
    }
    for (k, v) in declared {
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            err(
                &format!("spec.values.{k}"),
                "value names are letters, digits, _ and -".into(),
            );
        }
        if let Some(d) = &v.default {
            if d.contains("{{") {
                err(
                    &format!("spec.values.{k}.default"),
                    "defaults are literal, not templates".into(),
                );
            }
        }
    }
    let verify_timeout = spec
        .verify
        .as_ref()
        .map(|v| v.timeout)
        .unwrap_or(Duration::from_secs(300));
    if verify_timeout.0.is_zero() {
        err("spec.verify.timeout", "must be greater than zero".into());
    }
    if diags.len() > before {
        return None;
    }
    Some(LoadedPlaybook {
        file: src.path.clone(),
        doc,
        alert_triggers,
        schedules,
        target,
        steps,
        verify_timeout,
    })
}

/// The closest known name, if it is close enough to be a typo.
fn suggest<'a>(given: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(given, k), *k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 6))
        .min()
        .map(|(_, k)| k)
}

fn walk_strings(v: &serde_json::Value, path: &str, f: &mut dyn FnMut(&str, &str)) {
    match v {
        serde_json::Value::String(s) => f(path, s),
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                walk_strings(x, &format!("{path}[{i}]"), f);
            }
        }
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                walk_strings(x, &format!("{path}.{k}"), f);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index (by alertname, and by the labels an unkeyed playbook
    /// needs) finds exactly the playbooks a walk over all of them finds:
    /// random playbooks, keyed and not, with several triggers and
    /// matchers an absent label passes or fails, against random alerts.
    #[test]
    fn the_match_index_finds_what_a_walk_over_every_playbook_finds() {
        let mut rng = fastrand::Rng::with_seed(5);
        let names = ["alertname", "team", "severity", "env"];
        let values = ["A", "B", "x"];
        let matcher = |rng: &mut fastrand::Rng| {
            let n = names[rng.usize(..names.len())];
            let v = values[rng.usize(..values.len())];
            match rng.usize(..5) {
                0 | 1 => format!("'{n}=\"{v}\"'"),
                2 => format!("'{n}!=\"{v}\"'"),
                3 => format!("'{n}=~\"{v}|x\"'"),
                _ => format!("'{n}!~\"{v}.*\"'"),
            }
        };
        for round in 0..30 {
            let mut pbs = Vec::new();
            for i in 0..12 {
                let triggers: Vec<String> = (0..1 + rng.usize(..3))
                    .map(|_| {
                        let ms: Vec<String> =
                            (0..1 + rng.usize(..3)).map(|_| matcher(&mut rng)).collect();
                        format!("{{ alert: [{}] }}", ms.join(", "))
                    })
                    .collect();
                pbs.push(Source {
                    path: format!("pb-{i}.yaml").into(),
                    text: format!(
                        "apiVersion: remediate/v1\nkind: Playbook\nmetadata: {{ name: pb-{i} }}\nspec:\n  triggers: [{}]\n  target: {{ kind: kubernetes.pod, namespace: ns, name: p }}\n  steps: [{{ action: kubernetes.pod.restart, with: {{ mode: evict }} }}]\n",
                        triggers.join(", ")
                    ),
                });
            }
            let pol = Source {
                path: "default.yaml".into(),
                text: "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec: {}\n".into(),
            };
            let cfg = Config::load(&pbs, &[pol]).unwrap_or_else(|d| panic!("round {round}: {d:?}"));
            for _ in 0..200 {
                let mut labels = Labels::new();
                for n in names {
                    if rng.bool() {
                        labels.insert(n.into(), values[rng.usize(..values.len())].into());
                    }
                }
                let ev = Event {
                    trigger: TriggerKind::Alert,
                    status: crate::event::Status::Firing,
                    fingerprint: "f".into(),
                    labels: labels.clone(),
                    annotations: Labels::new(),
                    values: Labels::new(),
                    starts_at: None,
                    playbook: None,
                };
                let got: Vec<&str> = cfg.matching(&ev).iter().map(|p| p.name()).collect();
                let want: Vec<&str> = cfg
                    .playbooks
                    .iter()
                    .filter(|p| p.matches_alert(&labels))
                    .map(|p| p.name())
                    .collect();
                assert_eq!(got, want, "round {round}, labels {labels:?}");
            }
        }
    }
}
