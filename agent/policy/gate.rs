//! The gate: each policy rule is a stage that may stop a planned run and say
//! why. The first stage that speaks decides; if none does, the run executes
//! (or is simulated, in dry-run). Time is a parameter: nothing here reads the
//! clock.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::model::{Policy, RateScope};
use crate::event::{Event, Status};
use crate::playbook::model::Mode;

/// The gate's verdict on one planned run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", content = "reason", rename_all = "kebab-case")]
pub enum Decision {
    /// Act now.
    Execute,
    /// Plan and audit but do not act; the reason says which switch.
    DryRun(String),
    /// Do nothing; the reason names the rule that fired.
    Suppressed(String),
    /// Wait for a person; the reason says why.
    NeedsApproval(String),
}

impl Decision {
    /// `execute`, `dry-run`, `suppressed` or `needs-approval`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Execute => "execute",
            Decision::DryRun(_) => "dry-run",
            Decision::Suppressed(_) => "suppressed",
            Decision::NeedsApproval(_) => "needs-approval",
        }
    }
    /// Why.
    pub fn reason(&self) -> &str {
        match self {
            Decision::Execute => "all gates passed",
            Decision::DryRun(r) | Decision::Suppressed(r) | Decision::NeedsApproval(r) => r,
        }
    }
    /// Parses the `decision` word of an audit record.
    pub fn from_parts(decision: &str, reason: &str) -> Option<Self> {
        Some(match decision {
            "execute" => Decision::Execute,
            "dry-run" => Decision::DryRun(reason.into()),
            "suppressed" => Decision::Suppressed(reason.into()),
            "needs-approval" => Decision::NeedsApproval(reason.into()),
            _ => return None,
        })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Execute => f.write_str("execute"),
            d => write!(f, "{}({})", d.as_str(), d.reason()),
        }
    }
}

/// What the gate sees of one planned run.
#[derive(Debug, Clone, Copy)]
pub struct GateInput<'a> {
    /// The event.
    pub event: &'a Event,
    /// Playbook name.
    pub playbook: &'a str,
    /// Actions of the playbook's steps.
    pub actions: &'a [&'a str],
    /// Rendered target.
    pub target: &'a crate::drivers::Target,
    /// Canonical key of the target (see [`target_key`]).
    pub target_key: &'a str,
    /// The playbook's own mode.
    pub playbook_mode: Mode,
    /// `--dry-run` or the agent's shadow switch.
    pub force_dry_run: bool,
    /// Evaluation time.
    pub now: DateTime<Utc>,
    /// Past executions and failures.
    pub ledger: &'a Ledger,
    /// A person approved this run: the approval stage passes (every other
    /// stage is evaluated again, at approval time).
    pub approved: bool,
}

/// A canonical key for a target: `kind|field=value|...` in field order.
pub fn target_key(target: &crate::drivers::Target) -> String {
    let mut s = String::new();
    for (i, (k, v)) in target.iter().enumerate() {
        if i > 0 {
            s.push('|');
        }
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
    s
}

/// One rule.
trait Stage: Send + Sync {
    fn check(&self, input: &GateInput<'_>) -> Option<Decision>;
}

/// A window compiled from its cron expression.
#[derive(Debug, Clone)]
pub struct CompiledWindow {
    cron: cron::Schedule,
    source: String,
    duration: chrono::Duration,
    tz: chrono_tz::Tz,
}

impl CompiledWindow {
    /// Compiles a window read in UTC; the error says what was expected.
    pub fn new(cron_expr: &str, duration: crate::units::Duration) -> Result<Self, String> {
        Self::new_in(cron_expr, duration, chrono_tz::Tz::UTC)
    }

    /// Compiles a window whose cron expression is read in `tz`.
    pub fn new_in(
        cron_expr: &str,
        duration: crate::units::Duration,
        tz: chrono_tz::Tz,
    ) -> Result<Self, String> {
        Ok(Self {
            cron: parse_cron(cron_expr)?,
            source: cron_expr.to_string(),
            duration: duration.chrono(),
            tz,
        })
    }

    /// If open at `now`: when it opened. The latest opening not after `now`
    /// whose duration covers `now` (windows may wrap midnight).
    pub fn open_since(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = self
            .cron
            .after(&(now - self.duration).with_timezone(&self.tz))
            .next()?
            .with_timezone(&Utc);
        (start <= now).then_some(start)
    }

    /// The next time it opens after `now`.
    pub fn next_open(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .after(&now.with_timezone(&self.tz))
            .next()
            .map(|t| t.with_timezone(&Utc))
    }

    fn label(&self) -> String {
        if self.tz == chrono_tz::Tz::UTC {
            self.source.clone()
        } else {
            format!("{} {}", self.source, self.tz.name())
        }
    }
}

/// Parses a cron expression with a seconds field, with an error that says what is expected.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(expr).map_err(|e| {
        // The cron crate's message repeats the input with a caret; keep its last line.
        let e = e.to_string();
        let e = e.lines().last().unwrap_or_default().trim().to_string();
        format!("bad cron {expr:?}: {e} (expected 6 or 7 fields: sec min hour day-of-month month day-of-week [year], e.g. \"0 0 3 * * *\")")
    })
}

struct Resolved;
impl Stage for Resolved {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        (i.event.status == Status::Resolved)
            .then(|| Decision::Suppressed("alert resolved: resolved alerts start nothing".into()))
    }
}

struct Namespaces {
    allow: Vec<String>,
    deny: Vec<String>,
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

struct OptOut {
    label: String,
    /// The label as it appears on alerts: `remediate_io_disabled` and
    /// kube-state-metrics' `label_remediate_io_disabled`.
    prom: [String; 2],
}
impl OptOut {
    fn new(label: &str) -> Self {
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

struct Freeze(Vec<CompiledWindow>);
impl Stage for Freeze {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        self.0.iter().find_map(|w| {
            w.open_since(i.now).map(|since| {
                Decision::Suppressed(format!(
                    "freeze window \"{}\" for {} (opened {}, allows again at {})",
                    w.label(),
                    humantime::format_duration(w.duration.to_std().unwrap_or_default()),
                    since.format("%Y-%m-%dT%H:%M:%SZ"),
                    (since + w.duration).format("%Y-%m-%dT%H:%M:%SZ")
                ))
            })
        })
    }
}

struct Maintenance(Vec<CompiledWindow>);
impl Stage for Maintenance {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        if self.0.is_empty() || self.0.iter().any(|w| w.open_since(i.now).is_some()) {
            return None;
        }
        let next = self.0.iter().filter_map(|w| w.next_open(i.now)).min();
        Some(Decision::Suppressed(match next {
            Some(n) => format!(
                "outside maintenance windows (next opens {})",
                n.format("%Y-%m-%dT%H:%M:%SZ")
            ),
            None => "outside maintenance windows (none opens again)".into(),
        }))
    }
}

struct Breaker {
    policy: String,
    failures: u32,
    within: chrono::Duration,
    open_for: chrono::Duration,
}
impl Stage for Breaker {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        let state = i.ledger.breaker_state(
            &self.policy,
            i.playbook,
            self.failures,
            self.within,
            self.open_for,
            i.now,
        );
        match state {
            BreakerState::Closed => None,
            BreakerState::Open { opened, reopened } => Some(Decision::Suppressed(format!(
                "circuit open: {} (opened {}, half-opens at {})",
                if reopened {
                    "the half-open trial run failed".to_string()
                } else {
                    format!(
                        "{} failures of {} within {}",
                        self.failures,
                        i.playbook,
                        humantime::format_duration(self.within.to_std().unwrap_or_default())
                    )
                },
                opened.format("%Y-%m-%dT%H:%M:%SZ"),
                (opened + self.open_for).format("%Y-%m-%dT%H:%M:%SZ")
            ))),
            BreakerState::HalfOpenTrial { started } => Some(Decision::Suppressed(format!(
                "circuit half-open: one trial run of {} in flight since {} (allows again once it succeeds)",
                i.playbook,
                started.format("%Y-%m-%dT%H:%M:%SZ")
            ))),
        }
    }
}

/// Where a playbook's circuit breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Runs are allowed (after an opening, the next run is the trial).
    Closed,
    /// No runs until `opened + openFor`.
    Open {
        /// When it opened.
        opened: DateTime<Utc>,
        /// True when a failed half-open trial reopened it.
        reopened: bool,
    },
    /// Half-open: the one trial run has started and has no outcome yet.
    HalfOpenTrial {
        /// When the trial started.
        started: DateTime<Utc>,
    },
}

struct Concurrency {
    policy: String,
    max: u32,
}
impl Stage for Concurrency {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        let n = i.ledger.in_flight(&self.policy);
        (n >= self.max as usize).then(|| {
            Decision::Suppressed(format!(
                "concurrency {}: {n} run(s) of policy {} in flight on this agent (allows again when one finishes)",
                self.max, self.policy
            ))
        })
    }
}

struct MaxTargets {
    policy: String,
    max: u32,
}
impl Stage for MaxTargets {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        let n = i.ledger.group_executions(&self.policy, i.playbook);
        (n >= self.max as usize).then(|| {
            Decision::Suppressed(format!(
                "blast radius: {n} target(s) of {} already act on this notification (maxTargetsPerRun {}); the rest wait for the alert to repeat",
                i.playbook, self.max
            ))
        })
    }
}

struct Cooldown {
    policy: String,
    period: chrono::Duration,
}
impl Stage for Cooldown {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        let last = i
            .ledger
            .last_execution(&self.policy, i.playbook, i.target_key)?;
        (i.now < last + self.period).then(|| {
            Decision::Suppressed(format!(
                "cooldown {}, last {} (allows again at {})",
                humantime::format_duration(self.period.to_std().unwrap_or_default()),
                last.format("%Y-%m-%dT%H:%M:%SZ"),
                (last + self.period).format("%Y-%m-%dT%H:%M:%SZ")
            ))
        })
    }
}

struct Rate {
    policy: String,
    scope: RateScope,
    max: u32,
    per: chrono::Duration,
    per_text: String,
}
impl Stage for Rate {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        let since = i.now - self.per;
        let (n, oldest) =
            i.ledger
                .executions_since(&self.policy, self.scope, i.playbook, i.target_key, since);
        if n < self.max as usize {
            return None;
        }
        let scope = match self.scope {
            RateScope::Global => "global",
            RateScope::Playbook => "playbook",
            RateScope::Target => "target",
        };
        let again = oldest
            .map(|o| {
                format!(
                    " (allows again at {})",
                    (o + self.per).format("%Y-%m-%dT%H:%M:%SZ")
                )
            })
            .unwrap_or_default();
        Some(Decision::Suppressed(format!(
            "rate-limit {scope} {}/{}{again}",
            self.max, self.per_text
        )))
    }
}

struct Approve {
    all: bool,
    actions: Vec<String>,
}
impl Stage for Approve {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        if i.approved {
            return None;
        }
        if self.all {
            return Some(Decision::NeedsApproval(
                "policy requires approval for every run".into(),
            ));
        }
        let a = i
            .actions
            .iter()
            .find(|a| self.actions.iter().any(|x| x == *a))?;
        Some(Decision::NeedsApproval(format!(
            "policy requires approval for {a}"
        )))
    }
}

/// The compiled gate of one policy.
pub struct Gate {
    policy: String,
    mode: Mode,
    stages: Vec<Box<dyn Stage>>,
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("policy", &self.policy)
            .field("stages", &self.stages.len())
            .finish()
    }
}

impl Gate {
    /// Compiles a policy into its stages. Errors name the field.
    pub fn compile(policy: &Policy) -> Result<Self, Vec<(String, String)>> {
        let spec = &policy.spec;
        let name = policy.metadata.name.clone();
        let mut errors = Vec::new();
        let tz = match spec.windows.timezone.as_deref() {
            None => chrono_tz::Tz::UTC,
            Some(name) => name.parse::<chrono_tz::Tz>().unwrap_or_else(|_| {
                errors.push((
                    "spec.windows.timezone".into(),
                    format!("unknown time zone {name:?} (use an IANA name such as UTC or Europe/Berlin)"),
                ));
                chrono_tz::Tz::UTC
            }),
        };
        let mut windows = |list: &[super::model::Window], field: &str| -> Vec<CompiledWindow> {
            list.iter()
                .enumerate()
                .filter_map(|(i, w)| {
                    CompiledWindow::new_in(&w.cron, w.duration, tz)
                        .map_err(|e| errors.push((format!("spec.windows.{field}[{i}].cron"), e)))
                        .ok()
                })
                .collect()
        };
        let freeze = windows(&spec.windows.freeze, "freeze");
        let maintenance = windows(&spec.windows.maintenance, "maintenance");
        for (i, r) in spec.rate_limits.iter().enumerate() {
            if r.max == 0 {
                errors.push((
                    format!("spec.rateLimits[{i}].max"),
                    "max must be at least 1 (remove the policy's playbooks to stop them)".into(),
                ));
            }
        }
        if spec.concurrency == Some(0) {
            errors.push((
                "spec.concurrency".into(),
                "concurrency must be at least 1".into(),
            ));
        }
        if spec
            .blast_radius
            .as_ref()
            .and_then(|b| b.max_targets_per_run)
            == Some(0)
        {
            errors.push((
                "spec.blastRadius.maxTargetsPerRun".into(),
                "maxTargetsPerRun must be at least 1".into(),
            ));
        }
        if let Some(b) = &spec.circuit_breaker {
            if b.failures == 0 {
                errors.push((
                    "spec.circuitBreaker.failures".into(),
                    "failures must be at least 1".into(),
                ));
            }
        }
        if let Some(f) = spec
            .blast_radius
            .as_ref()
            .and_then(|b| b.max_unavailable_fraction)
        {
            if !(0.0..=1.0).contains(&f) {
                errors.push((
                    "spec.blastRadius.maxUnavailableFraction".into(),
                    format!("must be in [0, 1], got {f}"),
                ));
            }
        }
        for (i, a) in spec.approval.actions.iter().enumerate() {
            if crate::drivers::catalog::get(a).is_none() {
                errors.push((
                    format!("spec.approval.actions[{i}]"),
                    format!("unknown action {a:?}"),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        // Order matters: the cheapest, most permanent reasons first, so the
        // reason a person reads is the most useful one.
        let mut stages: Vec<Box<dyn Stage>> = vec![
            Box::new(Resolved),
            Box::new(Namespaces {
                allow: spec.scope.namespaces.allow.clone(),
                deny: spec.scope.namespaces.deny.clone(),
            }),
        ];
        if let Some(l) = &spec.scope.opt_out_label {
            stages.push(Box::new(OptOut::new(l)));
        }
        stages.push(Box::new(Freeze(freeze)));
        stages.push(Box::new(Maintenance(maintenance)));
        if let Some(b) = &spec.circuit_breaker {
            stages.push(Box::new(Breaker {
                policy: name.clone(),
                failures: b.failures,
                within: b.within.chrono(),
                open_for: b.open_for.chrono(),
            }));
        }
        if let Some(c) = spec.cooldown {
            stages.push(Box::new(Cooldown {
                policy: name.clone(),
                period: c.chrono(),
            }));
        }
        for r in &spec.rate_limits {
            stages.push(Box::new(Rate {
                policy: name.clone(),
                scope: r.scope,
                max: r.max,
                per: r.per.chrono(),
                per_text: r.per.to_string(),
            }));
        }
        if let Some(n) = spec.concurrency {
            stages.push(Box::new(Concurrency {
                policy: name.clone(),
                max: n,
            }));
        }
        if let Some(n) = spec
            .blast_radius
            .as_ref()
            .and_then(|b| b.max_targets_per_run)
        {
            stages.push(Box::new(MaxTargets {
                policy: name.clone(),
                max: n,
            }));
        }
        if spec.approval.required || !spec.approval.actions.is_empty() {
            stages.push(Box::new(Approve {
                all: spec.approval.required,
                actions: spec.approval.actions.clone(),
            }));
        }
        Ok(Self {
            policy: name,
            mode: spec.mode,
            stages,
        })
    }

    /// Decides one planned run.
    pub fn decide(&self, input: &GateInput<'_>) -> Decision {
        self.evaluate(input).0
    }

    /// The decision, and whether the run would execute but for dry-run. A
    /// dry-run caller enters those in its ledger, so later decisions in the
    /// same process say what enforce mode would decide (cooldown, limits).
    pub fn evaluate(&self, input: &GateInput<'_>) -> (Decision, bool) {
        let verdict = self.stages.iter().find_map(|s| s.check(input));
        let would_execute = verdict.is_none();
        let shadow = if input.force_dry_run {
            Some("dry-run requested".to_string())
        } else if input.playbook_mode == Mode::DryRun {
            Some(format!(
                "playbook {} is in dry-run (shadow) mode",
                input.playbook
            ))
        } else if self.mode == Mode::DryRun {
            Some(format!(
                "policy {} is in dry-run (shadow) mode",
                self.policy
            ))
        } else {
            None
        };
        let decision = match (verdict, shadow) {
            (None, None) => Decision::Execute,
            (None, Some(why)) => Decision::DryRun(why),
            (Some(Decision::NeedsApproval(r)), Some(why)) => {
                Decision::DryRun(format!("{why}; would need approval: {r}"))
            }
            (Some(d), _) => d,
        };
        (decision, would_execute)
    }

    /// The policy name.
    pub fn policy(&self) -> &str {
        &self.policy
    }
}

/// What has happened, as far as limits care: executions, their outcomes
/// and runs in flight, rebuilt from the audit log and extended as decisions
/// are made.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// (time, policy, playbook, target key) of each executed run.
    executions: Vec<(DateTime<Utc>, String, String, String)>,
    /// (time, policy, playbook) of each failed run.
    failures: Vec<(DateTime<Utc>, String, String)>,
    /// (time, policy, playbook) of each verified run.
    successes: Vec<(DateTime<Utc>, String, String)>,
    last: HashMap<(String, String, String), DateTime<Utc>>,
    /// Runs executing now, per policy (the agent keeps this; a CLI run is sequential).
    in_flight: HashMap<String, usize>,
    /// The notification (Alertmanager group delivery) being decided, and
    /// executions per (policy, playbook) within it.
    group: Option<u64>,
    group_counts: HashMap<(String, String), usize>,
}

impl Ledger {
    /// Records an executed run.
    pub fn record_execution(
        &mut self,
        at: DateTime<Utc>,
        policy: &str,
        playbook: &str,
        target_key: &str,
    ) {
        self.executions
            .push((at, policy.into(), playbook.into(), target_key.into()));
        let e = self
            .last
            .entry((policy.into(), playbook.into(), target_key.into()))
            .or_insert(at);
        if at > *e {
            *e = at;
        }
        if self.group.is_some() {
            *self
                .group_counts
                .entry((policy.into(), playbook.into()))
                .or_insert(0) += 1;
        }
    }

    /// Starts deciding the events of one notification: `maxTargetsPerRun`
    /// counts executions within it.
    pub fn begin_group(&mut self, id: u64) {
        if self.group != Some(id) {
            self.group = Some(id);
            self.group_counts.clear();
        }
    }

    /// Executions of `playbook` decided within the current notification.
    pub fn group_executions(&self, policy: &str, playbook: &str) -> usize {
        self.group_counts
            .get(&(policy.to_string(), playbook.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// A run of `policy` started executing.
    pub fn run_started(&mut self, policy: &str) {
        *self.in_flight.entry(policy.to_string()).or_insert(0) += 1;
    }

    /// A run of `policy` finished (whatever the outcome).
    pub fn run_finished(&mut self, policy: &str) {
        if let Some(n) = self.in_flight.get_mut(policy) {
            *n = n.saturating_sub(1);
        }
    }

    /// Runs of `policy` executing now.
    pub fn in_flight(&self, policy: &str) -> usize {
        self.in_flight.get(policy).copied().unwrap_or(0)
    }

    /// Failed runs of `playbook` since `since`.
    pub fn failures_since(&self, policy: &str, playbook: &str, since: DateTime<Utc>) -> usize {
        self.failures
            .iter()
            .filter(|(at, pol, pb)| *at > since && pol == policy && pb == playbook)
            .count()
    }

    /// Records a failed (or unverified, or interrupted) run.
    pub fn record_failure(&mut self, at: DateTime<Utc>, policy: &str, playbook: &str) {
        self.failures.push((at, policy.into(), playbook.into()));
    }

    /// Records a verified run.
    pub fn record_success(&mut self, at: DateTime<Utc>, policy: &str, playbook: &str) {
        self.successes.push((at, policy.into(), playbook.into()));
    }

    /// When `playbook` last executed on the target.
    pub fn last_execution(
        &self,
        policy: &str,
        playbook: &str,
        target_key: &str,
    ) -> Option<DateTime<Utc>> {
        self.last
            .get(&(
                policy.to_string(),
                playbook.to_string(),
                target_key.to_string(),
            ))
            .copied()
    }

    /// Executions counted for a rate-limit scope since `since`, and the oldest of them.
    pub fn executions_since(
        &self,
        policy: &str,
        scope: RateScope,
        playbook: &str,
        target_key: &str,
        since: DateTime<Utc>,
    ) -> (usize, Option<DateTime<Utc>>) {
        let mut n = 0;
        let mut oldest: Option<DateTime<Utc>> = None;
        for (at, pol, pb, tk) in &self.executions {
            // Not ordered: `--at` what-ifs append records out of time order.
            let hit = *at > since
                && pol == policy
                && match scope {
                    RateScope::Global => true,
                    RateScope::Playbook => pb == playbook,
                    RateScope::Target => pb == playbook && tk == target_key,
                };
            if hit {
                n += 1;
                oldest = Some(oldest.map_or(*at, |o| o.min(*at)));
            }
        }
        (n, oldest)
    }

    /// When the breaker for `playbook` opened, if it is open at `now`.
    pub fn breaker_opened_at(
        &self,
        policy: &str,
        playbook: &str,
        failures: u32,
        within: chrono::Duration,
        open_for: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        match self.breaker_state(policy, playbook, failures, within, open_for, now) {
            BreakerState::Open { opened, .. } => Some(opened),
            _ => None,
        }
    }

    /// The breaker's state at `now`. It opens when `failures` runs failed
    /// within `within`; after `open_for` it half-opens: the next run is a
    /// trial, no other run starts while the trial has no outcome, a failed
    /// trial reopens it and a verified one closes it.
    pub fn breaker_state(
        &self,
        policy: &str,
        playbook: &str,
        failures: u32,
        within: chrono::Duration,
        open_for: chrono::Duration,
        now: DateTime<Utc>,
    ) -> BreakerState {
        let mine = |v: &[(DateTime<Utc>, String, String)]| -> Vec<DateTime<Utc>> {
            let mut t: Vec<DateTime<Utc>> = v
                .iter()
                .filter(|(at, pol, pb)| pol == policy && pb == playbook && *at <= now)
                .map(|(at, ..)| *at)
                .collect();
            t.sort_unstable();
            t
        };
        let fails = mine(&self.failures);
        let k = failures as usize;
        if k == 0 || fails.len() < k {
            return BreakerState::Closed;
        }
        // The latest moment k failures within `within` opened it.
        let Some(mut opened) = fails
            .windows(k)
            .filter(|w| w[k - 1] - w[0] <= within)
            .map(|w| w[k - 1])
            .max()
        else {
            return BreakerState::Closed;
        };
        let oks = mine(&self.successes);
        let mut reopened = false;
        loop {
            let half_open = opened + open_for;
            if now < half_open {
                return BreakerState::Open { opened, reopened };
            }
            // The trial: the first execution of the playbook after half-open.
            let trial = self
                .executions
                .iter()
                .filter(|(at, pol, pb, _)| {
                    pol == policy && pb == playbook && *at >= half_open && *at <= now
                })
                .map(|(at, ..)| *at)
                .min();
            let Some(started) = trial else {
                return BreakerState::Closed;
            };
            let failed = fails.iter().find(|t| **t >= started).copied();
            let verified = oks.iter().find(|t| **t >= started).copied();
            match (failed, verified) {
                (Some(f), Some(v)) if v < f => return BreakerState::Closed,
                (None, Some(_)) => return BreakerState::Closed,
                (Some(f), _) => {
                    opened = f;
                    reopened = true;
                }
                (None, None) => return BreakerState::HalfOpenTrial { started },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Labels, TriggerKind};
    use crate::playbook::model::{ApiVersion, Metadata};
    use crate::policy::model::{PolicyKind, PolicySpec, RateLimit, Window};
    use chrono::TimeZone;

    fn policy(spec: PolicySpec) -> Policy {
        Policy {
            api_version: ApiVersion::V1,
            kind: PolicyKind::Policy,
            metadata: Metadata {
                name: "p".into(),
                description: None,
                runbook: None,
            },
            spec,
        }
    }

    fn alert(labels: &[(&str, &str)], status: Status) -> Event {
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Event {
            trigger: TriggerKind::Alert,
            status,
            fingerprint: crate::event::fingerprint(&labels),
            labels,
            annotations: Labels::new(),
            values: Labels::new(),
            starts_at: None,
            playbook: None,
        }
    }

    fn decide(
        gate: &Gate,
        ev: &Event,
        ns: &str,
        now: DateTime<Utc>,
        ledger: &Ledger,
        dry: bool,
    ) -> Decision {
        let target: crate::drivers::Target = [
            ("kind", "kubernetes.pod"),
            ("namespace", ns),
            ("name", "p-1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let key = target_key(&target);
        gate.decide(&GateInput {
            event: ev,
            playbook: "pb",
            actions: &["kubernetes.pod.restart"],
            target: &target,
            target_key: &key,
            playbook_mode: Mode::Enforce,
            force_dry_run: dry,
            approved: false,
            now,
            ledger,
        })
    }

    fn wednesday_noon() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
    }

    #[test]
    fn kube_system_is_denied_by_default_and_named_in_the_reason() {
        let g = Gate::compile(&policy(PolicySpec::default())).unwrap();
        let ev = alert(&[("alertname", "X")], Status::Firing);
        let d = decide(
            &g,
            &ev,
            "kube-system",
            wednesday_noon(),
            &Ledger::default(),
            false,
        );
        assert_eq!(
            d,
            Decision::Suppressed(
                "namespace kube-system denied by policy scope (never allowed while the policy denies it)".into()
            )
        );
        assert_eq!(
            decide(&g, &ev, "etl", wednesday_noon(), &Ledger::default(), false),
            Decision::Execute
        );
    }

    #[test]
    fn dry_run_reports_what_would_have_happened_and_never_hides_suppression() {
        let g = Gate::compile(&policy(PolicySpec::default())).unwrap();
        let ev = alert(&[("alertname", "X")], Status::Firing);
        assert_eq!(
            decide(&g, &ev, "etl", wednesday_noon(), &Ledger::default(), true),
            Decision::DryRun("dry-run requested".into())
        );
        assert!(matches!(
            decide(
                &g,
                &ev,
                "kube-public",
                wednesday_noon(),
                &Ledger::default(),
                true
            ),
            Decision::Suppressed(_)
        ));
    }

    #[test]
    fn resolved_alerts_start_nothing() {
        let g = Gate::compile(&policy(PolicySpec::default())).unwrap();
        let ev = alert(&[("alertname", "X")], Status::Resolved);
        assert!(
            matches!(decide(&g, &ev, "etl", wednesday_noon(), &Ledger::default(), false), Decision::Suppressed(r) if r.contains("resolved"))
        );
    }

    #[test]
    fn opt_out_label_is_recognised_in_prometheus_forms() {
        let g = Gate::compile(&policy(PolicySpec::default())).unwrap();
        for l in ["remediate_io_disabled", "label_remediate_io_disabled"] {
            let ev = alert(&[("alertname", "X"), (l, "true")], Status::Firing);
            let d = decide(&g, &ev, "etl", wednesday_noon(), &Ledger::default(), false);
            assert_eq!(
                d,
                Decision::Suppressed(format!(
                    "opted out by label {l} (allows again once the label is removed)"
                ))
            );
        }
        let ev = alert(
            &[("alertname", "X"), ("label_remediate_io_disabled", "false")],
            Status::Firing,
        );
        assert_eq!(
            decide(&g, &ev, "etl", wednesday_noon(), &Ledger::default(), false),
            Decision::Execute
        );
    }

    #[test]
    fn weekend_freeze_window_blocks_and_says_when_it_allows_again() {
        let spec = PolicySpec {
            windows: crate::policy::model::Windows {
                freeze: vec![Window {
                    cron: "0 0 18 * * FRI".into(),
                    duration: "62h".parse().unwrap(),
                }],
                maintenance: vec![],
                timezone: None,
            },
            ..PolicySpec::default()
        };
        let g = Gate::compile(&policy(spec)).unwrap();
        let ev = alert(&[("alertname", "X")], Status::Firing);
        let saturday = Utc.with_ymd_and_hms(2026, 11, 28, 3, 0, 0).unwrap();
        let d = decide(&g, &ev, "etl", saturday, &Ledger::default(), false);
        assert!(
            matches!(&d, Decision::Suppressed(r) if r.contains("allows again at 2026-11-30T08:00:00Z")),
            "{d}"
        );
        let monday_9 = Utc.with_ymd_and_hms(2026, 11, 30, 9, 0, 0).unwrap();
        assert_eq!(
            decide(&g, &ev, "etl", monday_9, &Ledger::default(), false),
            Decision::Execute
        );
        let friday_17 = Utc.with_ymd_and_hms(2026, 11, 27, 17, 59, 59).unwrap();
        assert_eq!(
            decide(&g, &ev, "etl", friday_17, &Ledger::default(), false),
            Decision::Execute
        );
    }

    #[test]
    fn rate_limit_and_cooldown_count_from_the_ledger() {
        let spec = PolicySpec {
            rate_limits: vec![RateLimit {
                scope: RateScope::Target,
                max: 2,
                per: "1h".parse().unwrap(),
            }],
            cooldown: Some("10m".parse().unwrap()),
            ..PolicySpec::default()
        };
        let g = Gate::compile(&policy(spec)).unwrap();
        let ev = alert(&[("alertname", "X")], Status::Firing);
        let t0 = wednesday_noon();
        let key = "kind=kubernetes.pod|name=p-1|namespace=etl";
        let mut ledger = Ledger::default();
        ledger.record_execution(t0, "p", "pb", key);
        let d = decide(
            &g,
            &ev,
            "etl",
            t0 + chrono::Duration::minutes(5),
            &ledger,
            false,
        );
        assert!(
            matches!(&d, Decision::Suppressed(r) if r.starts_with("cooldown 10m")),
            "{d}"
        );
        assert_eq!(
            decide(
                &g,
                &ev,
                "etl",
                t0 + chrono::Duration::minutes(11),
                &ledger,
                false
            ),
            Decision::Execute
        );
        ledger.record_execution(t0 + chrono::Duration::minutes(11), "p", "pb", key);
        let d = decide(
            &g,
            &ev,
            "etl",
            t0 + chrono::Duration::minutes(30),
            &ledger,
            false,
        );
        assert!(
            matches!(&d, Decision::Suppressed(r) if r.starts_with("rate-limit target 2/1h")),
            "{d}"
        );
        assert_eq!(
            decide(
                &g,
                &ev,
                "etl",
                t0 + chrono::Duration::minutes(61),
                &ledger,
                false
            ),
            Decision::Execute
        );
    }

    #[test]
    fn circuit_breaker_opens_after_failures_and_half_opens_later() {
        let spec = PolicySpec {
            circuit_breaker: Some(crate::policy::model::CircuitBreaker {
                failures: 3,
                within: "1h".parse().unwrap(),
                open_for: "6h".parse().unwrap(),
            }),
            ..PolicySpec::default()
        };
        let g = Gate::compile(&policy(spec)).unwrap();
        let ev = alert(&[("alertname", "X")], Status::Firing);
        let t0 = wednesday_noon();
        let mut ledger = Ledger::default();
        for m in [0, 10, 20] {
            ledger.record_failure(t0 + chrono::Duration::minutes(m), "p", "pb");
        }
        let d = decide(
            &g,
            &ev,
            "etl",
            t0 + chrono::Duration::minutes(30),
            &ledger,
            false,
        );
        assert!(
            matches!(&d, Decision::Suppressed(r) if r.starts_with("circuit open")),
            "{d}"
        );
        let later = t0 + chrono::Duration::minutes(20) + chrono::Duration::hours(6);
        assert_eq!(
            decide(&g, &ev, "etl", later, &ledger, false),
            Decision::Execute
        );

        // Half-open: that run is the trial; nothing else starts meanwhile.
        let min = chrono::Duration::minutes;
        ledger.record_execution(later, "p", "pb", "k");
        let d = decide(&g, &ev, "etl", later + min(1), &ledger, false);
        assert!(
            matches!(&d, Decision::Suppressed(r) if r.starts_with("circuit half-open: one trial run of pb in flight")),
            "{d}"
        );
        // The trial fails: open again for the full period, and it says why.
        ledger.record_failure(later + min(2), "p", "pb");
        let d = decide(&g, &ev, "etl", later + min(3), &ledger, false);
        assert!(
            matches!(&d, Decision::Suppressed(r) if r.starts_with("circuit open: the half-open trial run failed")),
            "{d}"
        );
        let again = later + min(2) + chrono::Duration::hours(6);
        assert!(matches!(
            decide(&g, &ev, "etl", again - min(1), &ledger, false),
            Decision::Suppressed(_)
        ));
        // Second trial, verified: closed, and runs flow again.
        assert_eq!(
            decide(&g, &ev, "etl", again, &ledger, false),
            Decision::Execute
        );
        ledger.record_execution(again, "p", "pb", "k");
        ledger.record_success(again + min(1), "p", "pb");
        assert_eq!(
            decide(&g, &ev, "etl", again + min(2), &ledger, false),
            Decision::Execute
        );
        ledger.record_execution(again + min(2), "p", "pb", "k2");
        assert_eq!(
            decide(&g, &ev, "etl", again + min(3), &ledger, false),
            Decision::Execute,
            "closed: more than one run at a time again"
        );
    }

    #[test]
    fn concurrency_counts_runs_in_flight_and_max_targets_counts_within_one_notification() {
        let spec = PolicySpec {
            concurrency: Some(2),
            blast_radius: Some(crate::policy::model::BlastRadius {
                max_targets_per_run: Some(3),
                max_unavailable_fraction: None,
            }),
            ..PolicySpec::default()
        };
        let g = Gate::compile(&policy(spec)).unwrap();
        let ev = alert(&[("alertname", "X")], Status::Firing);
        let now = wednesday_noon();
        let mut l = Ledger::default();
        l.run_started("p");
        assert_eq!(decide(&g, &ev, "etl", now, &l, false), Decision::Execute);
        l.run_started("p");
        let d = decide(&g, &ev, "etl", now, &l, false);
        assert!(
            matches!(&d, Decision::Suppressed(r) if r == "concurrency 2: 2 run(s) of policy p in flight on this agent (allows again when one finishes)"),
            "{d}"
        );
        l.run_finished("p");
        l.run_finished("p");
        assert_eq!(decide(&g, &ev, "etl", now, &l, false), Decision::Execute);

        l.begin_group(7);
        for i in 0..3 {
            assert_eq!(decide(&g, &ev, "etl", now, &l, false), Decision::Execute);
            l.record_execution(now, "p", "pb", &format!("t{i}"));
        }
        let d = decide(&g, &ev, "etl", now, &l, false);
        assert!(
            matches!(&d, Decision::Suppressed(r) if r.starts_with("blast radius: 3 target(s) of pb already act on this notification (maxTargetsPerRun 3)")),
            "{d}"
        );
        // The next notification starts afresh.
        l.begin_group(8);
        assert_eq!(decide(&g, &ev, "etl", now, &l, false), Decision::Execute);
    }

    #[test]
    fn bad_windows_and_limits_are_reported_by_field() {
        let spec = PolicySpec {
            windows: crate::policy::model::Windows {
                freeze: vec![Window {
                    cron: "every friday".into(),
                    duration: "1h".parse().unwrap(),
                }],
                maintenance: vec![],
                timezone: Some("Mars/Olympus".into()),
            },
            rate_limits: vec![RateLimit {
                scope: RateScope::Global,
                max: 0,
                per: "1h".parse().unwrap(),
            }],
            ..PolicySpec::default()
        };
        let errs = Gate::compile(&policy(spec)).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.windows.timezone",
                "spec.windows.freeze[0].cron",
                "spec.rateLimits[0].max"
            ]
        );
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn window(cron: &str, dur: &str, tz: &str) -> CompiledWindow {
        CompiledWindow::new_in(cron, dur.parse().unwrap(), tz.parse().unwrap()).unwrap()
    }

    #[test]
    fn windows_in_a_time_zone_follow_its_daylight_saving_changes() {
        // Maintenance 01:00-05:00 Berlin time: UTC+1 in winter, UTC+2 in summer.
        let w = window("0 0 1 * * *", "4h", "Europe/Berlin");
        let table = [
            ("2026-11-25T00:30:00Z", Some("2026-11-25T00:00:00Z")), // 01:30 CET
            ("2026-11-25T03:59:59Z", Some("2026-11-25T00:00:00Z")), // 04:59:59 CET
            ("2026-11-25T04:00:00Z", None),                         // 05:00 CET: closed
            ("2026-11-24T23:59:59Z", None),                         // 00:59:59 CET
            ("2026-07-01T23:30:00Z", Some("2026-07-01T23:00:00Z")), // 01:30 CEST
            ("2026-07-02T02:59:59Z", Some("2026-07-01T23:00:00Z")), // 04:59:59 CEST
            ("2026-07-02T03:00:00Z", None),                         // 05:00 CEST
        ];
        for (now, want) in table {
            assert_eq!(w.open_since(at(now)), want.map(at), "at {now}");
        }
        assert_eq!(
            w.next_open(at("2026-11-25T12:00:00Z")),
            Some(at("2026-11-26T00:00:00Z"))
        );
        // The night the clocks go back (2026-10-25, 03:00 CEST -> 02:00 CET):
        // the duration is elapsed time, so the window opened at 01:00 CEST
        // (23:00Z) closes 4 hours later, at 04:00 CET (03:00Z).
        assert_eq!(
            w.open_since(at("2026-10-25T02:59:59Z")),
            Some(at("2026-10-24T23:00:00Z"))
        );
        assert_eq!(w.open_since(at("2026-10-25T03:00:00Z")), None);
    }

    #[test]
    fn windows_wrap_midnight() {
        let w = window("0 0 22 * * *", "8h", "UTC");
        let table = [
            ("2026-11-25T21:59:59Z", None),
            ("2026-11-25T22:00:00Z", Some("2026-11-25T22:00:00Z")),
            ("2026-11-25T23:59:59Z", Some("2026-11-25T22:00:00Z")),
            ("2026-11-26T00:00:00Z", Some("2026-11-25T22:00:00Z")),
            ("2026-11-26T05:59:59Z", Some("2026-11-25T22:00:00Z")),
            ("2026-11-26T06:00:00Z", None),
        ];
        for (now, want) in table {
            assert_eq!(w.open_since(at(now)), want.map(at), "at {now}");
        }
        // The same window in New York, across midnight there.
        let ny = window("0 0 22 * * *", "8h", "America/New_York");
        assert_eq!(
            ny.open_since(at("2026-11-26T04:00:00Z")), // 23:00 EST
            Some(at("2026-11-26T03:00:00Z"))
        );
        assert_eq!(
            ny.open_since(at("2026-11-26T10:59:59Z")), // 05:59:59 EST
            Some(at("2026-11-26T03:00:00Z"))
        );
        assert_eq!(ny.open_since(at("2026-11-26T11:00:00Z")), None);
    }

    #[test]
    fn a_freeze_in_a_time_zone_names_it_and_when_it_allows_again() {
        let spec = PolicySpec {
            windows: crate::policy::model::Windows {
                freeze: vec![Window {
                    cron: "0 0 18 * * FRI".into(),
                    duration: "62h".parse().unwrap(),
                }],
                maintenance: vec![],
                timezone: Some("Europe/Berlin".into()),
            },
            ..PolicySpec::default()
        };
        let g = Gate::compile(&policy(spec)).unwrap();
        let ev = alert(&[("alertname", "X")], Status::Firing);
        // Friday 17:30 UTC is 18:30 in Berlin: frozen (it would not be in UTC).
        let d = decide(
            &g,
            &ev,
            "etl",
            at("2026-11-27T17:30:00Z"),
            &Ledger::default(),
            false,
        );
        assert!(
            matches!(&d, Decision::Suppressed(r) if r.contains("0 0 18 * * FRI Europe/Berlin") && r.contains("allows again at 2026-11-30T07:00:00Z")),
            "{d}"
        );
    }
}
