//! Match, render and gate: which playbooks an event matches, their target
//! and parameters rendered, and the policy gate's decision. Pure.

use std::time::Instant;

use chrono::{DateTime, Utc};

use super::{Engine, Planned, PlannedStep};
use crate::audit::TriggerRef;
use crate::drivers::Target;
use crate::event::{Event, Labels, TriggerKind};
use crate::playbook::load::{render_json, LoadedPlaybook};
use crate::playbook::template::Context;
use crate::policy::{target_key, Decision, GateInput, Ledger};

impl Engine {
    /// Matches, renders and gates one event. Each executed decision is
    /// entered in `ledger`, so the next decision sees it.
    pub fn decide(
        &self,
        ev: &Event,
        force_dry_run: bool,
        now: DateTime<Utc>,
        ledger: &mut Ledger,
    ) -> Vec<Planned> {
        self.decide_except(ev, &[], force_dry_run, now, ledger)
    }

    /// [`Engine::decide`] for the matching playbooks other than `skip`
    /// (whose decisions of this event are recorded already).
    pub fn decide_except(
        &self,
        ev: &Event,
        skip: &[String],
        force_dry_run: bool,
        now: DateTime<Utc>,
        ledger: &mut Ledger,
    ) -> Vec<Planned> {
        self.config
            .matching(ev)
            .into_iter()
            .filter(|pb| !skip.iter().any(|s| s == pb.name()))
            .filter_map(|pb| self.decide_one(pb, ev, force_dry_run, now, ledger))
            .collect()
    }

    /// Decides `playbook` for `ev` again after a person approved it: every
    /// stage but the approval is evaluated now (limits, windows and the
    /// breaker may have changed since the request).
    pub fn decide_approved(
        &self,
        ev: &Event,
        playbook: &str,
        force_dry_run: bool,
        now: DateTime<Utc>,
        ledger: &mut Ledger,
    ) -> Option<Planned> {
        let pb = self.config.playbook(playbook)?;
        self.decide_inner(pb, ev, force_dry_run, now, ledger, true)
    }

    fn decide_one(
        &self,
        pb: &LoadedPlaybook,
        ev: &Event,
        force_dry_run: bool,
        now: DateTime<Utc>,
        ledger: &mut Ledger,
    ) -> Option<Planned> {
        self.decide_inner(pb, ev, force_dry_run, now, ledger, false)
    }

    fn decide_inner(
        &self,
        pb: &LoadedPlaybook,
        ev: &Event,
        force_dry_run: bool,
        now: DateTime<Utc>,
        ledger: &mut Ledger,
        approved: bool,
    ) -> Option<Planned> {
        let mut planned = self.plan(pb, ev, now)?;
        if planned.decision != Decision::Execute {
            return Some(planned);
        }
        let policy = self.config.policies.get(&pb.doc.spec.policy)?;
        let key = target_key(&planned.target);
        let actions: Vec<&str> = planned.steps.iter().map(|s| s.action).collect();
        let (decision, would_execute) = policy.gate.evaluate(&GateInput {
            event: ev,
            playbook: pb.name(),
            actions: &actions,
            target: &planned.target,
            target_key: &key,
            playbook_mode: pb.doc.spec.mode,
            force_dry_run,
            now,
            ledger,
            approved,
        });
        // Dry-runs enter the in-memory ledger too, so a what-if over many
        // alerts is as limited as enforce would be. The audit rebuild skips
        // dry-run records, so a what-if never limits a later real run.
        if would_execute {
            ledger.record_execution(now, &planned.policy, &planned.playbook, &key);
            planned.charged = true;
        }
        planned.decision = decision;
        Some(planned)
    }

    /// Matches and renders one event without gating it, every run decided
    /// `suppressed` with `reason`: how the agent records work it dropped
    /// (cancelled by a resolved alert, an overlapping schedule tick).
    pub fn suppress(&self, ev: &Event, reason: &str, now: DateTime<Utc>) -> Vec<Planned> {
        self.config
            .matching(ev)
            .into_iter()
            .filter_map(|pb| self.plan(pb, ev, now))
            .map(|mut p| {
                p.decision = Decision::Suppressed(reason.to_string());
                p
            })
            .collect()
    }

    /// Renders one run; the decision is `execute` unless rendering failed.
    fn plan(&self, pb: &LoadedPlaybook, ev: &Event, now: DateTime<Utc>) -> Option<Planned> {
        // The loader guarantees the policy exists.
        let policy = self.config.policies.get(&pb.doc.spec.policy)?;
        // Decisions only (replay) record nothing: the trigger is not copied.
        let trigger = std::sync::Arc::new(if self.decide_only {
            TriggerRef {
                kind: ev.trigger,
                alertname: None,
                fingerprint: String::new(),
                status: ev.status,
                labels: Default::default(),
                annotations: Default::default(),
                values: Default::default(),
                starts_at: ev.starts_at,
            }
        } else {
            TriggerRef::from_event(ev)
        });
        let mut planned = Planned {
            playbook: pb.name().to_string(),
            policy: policy.gate.policy().to_string(),
            trigger,
            target: Target::new(),
            steps: Vec::new(),
            decision: Decision::Execute,
            verify_timeout: pb.verify_timeout.std(),
            decided_at: now,
            decided_instant: Instant::now(),
            charged: false,
        };
        match self.render(pb, ev) {
            Ok((target, steps)) => {
                planned.target = target;
                planned.steps = steps;
            }
            Err(e) => {
                // Fail closed: a run that cannot be planned is not run.
                planned.decision = Decision::Suppressed(format!("cannot plan: {e}"));
            }
        }
        Some(planned)
    }

    fn render(
        &self,
        pb: &LoadedPlaybook,
        ev: &Event,
    ) -> Result<(Target, Vec<PlannedStep>), String> {
        let given: Labels = match ev.trigger {
            // An alert's values (Grafana's query results by refId) fill the
            // values the playbook declares; the others are not its business.
            TriggerKind::Alert => ev
                .values
                .iter()
                .filter(|(k, _)| pb.doc.spec.values.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            TriggerKind::Schedule | TriggerKind::Manual => ev.values.clone(),
        };
        let values = pb.resolve_values(&given)?;
        let ctx = Context {
            labels: &ev.labels,
            annotations: &ev.annotations,
            values: &values,
        };
        let target = pb.render_target(&ctx).map_err(|e| format!("target: {e}"))?;
        let mut steps = Vec::with_capacity(pb.steps.len());
        for (i, s) in pb.steps.iter().enumerate() {
            let rendered = render_json(&s.params, &ctx)
                .map_err(|e| format!("steps[{i}] {}: {e}", s.spec.name))?;
            let params = (s.spec.normalize)(rendered)
                .map_err(|e| format!("steps[{i}] {}: {e}", s.spec.name))?;
            let (id, description) = if self.decide_only {
                (String::new(), String::new())
            } else {
                (super::step_id(), (s.spec.describe)(&target, &params))
            };
            steps.push(PlannedStep {
                id,
                action: s.spec.name,
                params,
                timeout: s.timeout.std(),
                description,
            });
        }
        Ok((target, steps))
    }
}
