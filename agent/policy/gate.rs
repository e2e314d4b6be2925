//! The gate: each policy rule is a stage that may stop a planned run and say
//! why. The first stage that speaks decides; if none does, the run executes
//! (or is simulated, in dry-run). Time is a parameter: nothing here reads the
//! clock. The stages live beside this file: scope, windows, breaker, limits,
//! approval; the ledger they read is its own module.

use std::fmt;

use chrono::{DateTime, Utc};

use super::approval::Approve;
use super::breaker::Breaker;
use super::decision::Decision;
use super::ledger::Ledger;
use super::limits::{Concurrency, Cooldown, MaxTargets, Rate};
use super::model::Policy;
use super::scope::{Namespaces, OptOut, Resolved};
use super::windows::{CompiledWindow, Freeze, Maintenance};
use crate::event::Event;
use crate::playbook::model::Mode;

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

/// One rule.
pub(super) trait Stage: Send + Sync {
    fn check(&self, input: &GateInput<'_>) -> Option<Decision>;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Labels, Status, TriggerKind};
    use crate::playbook::model::{ApiVersion, Metadata};
    use crate::policy::ledger::target_key;
    use crate::policy::model::{PolicyKind, PolicySpec, RateLimit, RateScope, Window};
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
