//! Execute, verify, record: a decided run claimed in the coordination
//! store (cluster-scoped actions), each step planned by its driver, the
//! blast radius checked, applied and verified within its timeouts, with an
//! audit record durable before and after every change.

use std::time::Instant;

use tracing::{info_span, Instrument};

use super::{Engine, Planned, PlannedStep, RecordSink, RunReport, RunStatus};
use crate::audit::{self, Phase, Record};
use crate::drivers::{Request, Verdict};
use crate::policy::{target_key, Decision, Ledger};

/// What a driver saw, by name (see [`super::evidence`]).
type Evidence = std::collections::BTreeMap<String, String>;

impl Engine {
    /// Executes (or, for any decision but `execute`, only records) one
    /// planned run. Every record is fsynced before the next phase starts;
    /// an audit write failure stops the run before anything else changes.
    ///
    /// A failed run is entered in `ledger` (for the circuit breaker).
    pub async fn execute(
        &self,
        planned: Planned,
        audit: &dyn RecordSink,
        ledger: &mut Ledger,
    ) -> audit::Result<RunReport> {
        let rep = self.execute_shared(planned, audit).await?;
        rep.enter(ledger);
        Ok(rep)
    }

    /// [`Engine::execute`] for callers that share the ledger themselves (the
    /// agent runs actions concurrently): the report's `failed_at` says
    /// whether to enter a failure.
    pub async fn execute_shared(
        &self,
        planned: Planned,
        audit: &dyn RecordSink,
    ) -> audit::Result<RunReport> {
        let span = info_span!("run", playbook = %planned.playbook, target_ref = %planned.target_display(), decision = planned.decision.as_str());
        self.execute_inner(planned, audit).instrument(span).await
    }

    /// Claims a cluster-scoped run in the coordination store first; a
    /// refused claim turns the decision into `suppressed` with the reason.
    async fn execute_inner(
        &self,
        mut planned: Planned,
        audit: &dyn RecordSink,
    ) -> audit::Result<RunReport> {
        // A node-scoped step for a node this agent cannot reach is that
        // node's own agent's: recorded as such, not as a failure.
        if planned.decision == Decision::Execute {
            let req_for = |s: &PlannedStep| Request {
                target: planned.target.clone(),
                params: s.params.clone(),
                dry_run: false,
            };
            let elsewhere = planned.steps.iter().find(|s| {
                crate::drivers::catalog::get(s.action)
                    .is_some_and(|a| a.scope == crate::drivers::ScopeKind::Node)
                    && self
                        .registry
                        .get(s.action)
                        .is_some_and(|d| !d.reaches(&req_for(s)))
            });
            if let Some(s) = elsewhere {
                planned.decision = Decision::Suppressed(format!(
                    "{} runs on node {}: that node's agent acts (this agent runs on {} and has no SSH route there)",
                    s.action,
                    planned.target.get("node").map(String::as_str).unwrap_or("?"),
                    self.node
                ));
            }
        }
        let mut claim = None;
        let mut refused = false;
        if let (Decision::Execute, Some(coord)) = (&planned.decision, &self.coordinator) {
            let cluster = planned.steps.iter().any(|s| {
                crate::drivers::catalog::get(s.action)
                    .is_some_and(|a| a.scope == crate::drivers::ScopeKind::Cluster)
            });
            if cluster {
                let spec = self
                    .config
                    .policies
                    .get(&planned.policy)
                    .map(|p| p.doc.spec.clone())
                    .unwrap_or_default();
                let ttl = planned
                    .steps
                    .iter()
                    .map(|s| s.timeout)
                    .sum::<std::time::Duration>()
                    + planned.verify_timeout;
                let key = target_key(&planned.target);
                let req = crate::coord::ClaimRequest {
                    policy: &planned.policy,
                    limits: &spec.rate_limits,
                    cooldown: spec.cooldown.map(|c| c.chrono()),
                    breaker: spec.circuit_breaker.as_ref(),
                    playbook: &planned.playbook,
                    target_key: &key,
                    ttl,
                    now: engine_now(&planned),
                };
                match coord.claim(&req).await {
                    Ok(c) => claim = Some(c),
                    Err(refusal) => {
                        tracing::info!(playbook = %planned.playbook, reason = %refusal, "claim refused");
                        planned.decision = Decision::Suppressed(refusal.to_string());
                        refused = true;
                    }
                }
            }
        }
        let rep = self.execute_claimed(planned, audit).await;
        if let (Some(c), Some(coord)) = (claim, &self.coordinator) {
            if let Ok(r) = &rep {
                match &r.status {
                    RunStatus::Verified => {
                        coord.record_outcome(&c, true, engine_now(&r.planned)).await
                    }
                    RunStatus::Failed(_) => {
                        coord
                            .record_outcome(
                                &c,
                                false,
                                r.failed_at.unwrap_or_else(|| engine_now(&r.planned)),
                            )
                            .await
                    }
                    RunStatus::NotExecuted => {}
                }
            }
            coord.release(c).await;
        }
        rep.map(|mut r| {
            // The decision's ledger charge is taken back by `enter`, in the
            // agent's pipeline and in `remediate run` alike.
            r.claim_refused = refused;
            r
        })
    }

    async fn execute_claimed(
        &self,
        planned: Planned,
        audit: &dyn RecordSink,
    ) -> audit::Result<RunReport> {
        let mut records = Vec::new();
        // Stamp records on the engine clock: the decision time plus real elapsed
        // time (wall time in production; consistent in `--at` what-ifs).
        let clock = || {
            planned.decided_at
                + chrono::Duration::from_std(planned.decided_instant.elapsed()).unwrap_or_default()
        };
        let base =
            |step: Option<&PlannedStep>, idx: usize, phase: Phase, outcome: String, ms: u64| {
                Record {
                    ts: clock(),
                    id: step.map(|s| s.id.clone()).unwrap_or_else(super::step_id),
                    trigger: planned.trigger.clone(),
                    playbook: planned.playbook.clone(),
                    action: step.map(|s| s.action.to_string()).unwrap_or_default(),
                    target: planned.target.clone(),
                    params: step
                        .map(|s| s.params.clone())
                        .unwrap_or(serde_json::Value::Null),
                    decision: planned.decision.as_str().to_string(),
                    reason: planned.decision.reason().to_string(),
                    dry_run: !matches!(planned.decision, Decision::Execute),
                    phase,
                    outcome,
                    duration_ms: ms,
                    node: self.node.clone(),
                    policy: planned.policy.clone(),
                    step: idx,
                    decided_at: Some(planned.decided_at),
                    evidence: Default::default(),
                }
            };
        let write = |rec: Record, records: &mut Vec<Record>| -> audit::Result<()> {
            audit.append(&rec)?;
            records.push(rec);
            Ok(())
        };

        if planned.decision != Decision::Execute {
            if planned.steps.is_empty() {
                write(
                    base(None, 0, Phase::Planned, "nothing done".into(), 0),
                    &mut records,
                )?;
            }
            for (i, s) in planned.steps.iter().enumerate() {
                let outcome = match &planned.decision {
                    Decision::DryRun(_) => format!("would {}", self.describe(&planned, s).await),
                    Decision::NeedsApproval(_) => format!("awaiting approval to {}", s.description),
                    _ => "nothing done".to_string(),
                };
                write(base(Some(s), i, Phase::Planned, outcome, 0), &mut records)?;
            }
            return Ok(RunReport {
                planned,
                status: RunStatus::NotExecuted,
                records,
                failed_at: None,
                claim_refused: false,
            });
        }

        for (i, s) in planned.steps.iter().enumerate() {
            let span = info_span!("action", action = s.action, step = i);
            let started = Instant::now();
            // Plan first (reads only), so the planned record says what the
            // driver found: "pending: evict pod etl/x (CrashLoopBackOff, 14 restarts) ...".
            let prepared = self.plan_step(&planned, s).instrument(span.clone()).await;
            let (pending, seen) = match &prepared {
                Ok((_, _, plan)) => (
                    format!("pending: {}", plan.summary),
                    super::evidence::from_details(&plan.details),
                ),
                Err(_) => (format!("pending: {}", s.description), Default::default()),
            };
            let mut rec = base(Some(s), i, Phase::Planned, pending, 0);
            rec.evidence = seen.clone();
            write(rec, &mut records)?;
            // If this future is dropped mid-step (the agent's shutdown grace
            // ran out), the guard records the step as interrupted.
            let mut guard = InterruptGuard {
                sink: audit,
                record: Some(base(
                    Some(s),
                    i,
                    Phase::Failed,
                    "interrupted: the agent stopped before the step finished; it may be partly applied, check the target".into(),
                    0,
                )),
                started,
            };
            let result = match prepared {
                Ok((driver, req, plan)) => {
                    self.finish_step(&planned, s, driver.as_ref(), &req, &plan)
                        .instrument(span)
                        .await
                }
                Err(msg) => Err(msg),
            };
            guard.record = None;
            let ms = started.elapsed().as_millis() as u64;
            match result {
                Ok((applied, verified, after)) => {
                    // What the plan saw, and what the apply reported.
                    let mut all = seen;
                    all.extend(after);
                    let mut rec = base(Some(s), i, Phase::Applied, applied, ms);
                    rec.evidence = all.clone();
                    write(rec, &mut records)?;
                    let mut rec = base(
                        Some(s),
                        i,
                        Phase::Verified,
                        verified,
                        started.elapsed().as_millis() as u64,
                    );
                    rec.evidence = all;
                    write(rec, &mut records)?;
                }
                Err(msg) => {
                    let mut rec = base(Some(s), i, Phase::Failed, msg.clone(), ms);
                    rec.evidence = seen;
                    write(rec, &mut records)?;
                    let failed_at = Some(clock());
                    let status = RunStatus::Failed(format!("{}: {msg}", s.action));
                    return Ok(RunReport {
                        planned,
                        status,
                        records,
                        failed_at,
                        claim_refused: false,
                    });
                }
            }
        }
        Ok(RunReport {
            planned,
            status: RunStatus::Verified,
            records,
            failed_at: None,
            claim_refused: false,
        })
    }

    /// `blastRadius.maxUnavailableFraction`: an action that takes a replica
    /// of a workload down may not push the workload's unavailable fraction
    /// over the limit. What counts is the change: the driver reports the
    /// workload (`details.workload.replicas`, `.unavailable`) and whether
    /// the target itself is available (`.targetAvailable`, true when not
    /// said); restarting a replica that is already unavailable leaves as
    /// many unavailable after as before and is allowed, whatever the
    /// fraction (it is the fix). When the driver cannot say, the step is
    /// blocked (fail closed).
    fn check_unavailable(
        &self,
        planned: &Planned,
        s: &PlannedStep,
        plan: &crate::drivers::Plan,
    ) -> Result<(), String> {
        const TAKES_A_REPLICA_DOWN: &[&str] =
            &["kubernetes.pod.restart", "docker.container.restart"];
        let Some(max) = self
            .config
            .policies
            .get(&planned.policy)
            .and_then(|p| p.doc.spec.blast_radius.as_ref())
            .and_then(|b| b.max_unavailable_fraction)
        else {
            return Ok(());
        };
        if !TAKES_A_REPLICA_DOWN.contains(&s.action) {
            return Ok(());
        }
        let w = &plan.details["workload"];
        let (Some(replicas), Some(before)) = (w["replicas"].as_u64(), w["unavailable"].as_u64())
        else {
            return Err(format!(
                "blocked, nothing was changed: policy {} limits blastRadius.maxUnavailableFraction to {max}, and the driver did not report the workload's replicas, so the limit cannot be checked (fail closed)",
                planned.policy
            ));
        };
        let name = w["name"].as_str().unwrap_or("the workload");
        let target_available = w["targetAvailable"].as_bool().unwrap_or(true);
        let after = (before + u64::from(target_available)).min(replicas.max(before));
        if after <= before && replicas > 0 {
            // Restarting a replica that is down takes nothing more down.
            return Ok(());
        }
        let fraction = after as f64 / replicas.max(1) as f64;
        if replicas == 0 || fraction > max {
            return Err(format!(
                "blocked, nothing was changed: {before} of {replicas} replicas of {name} are unavailable; restarting this available one would make {after} ({:.0}%), over policy {}'s blastRadius.maxUnavailableFraction {:.0}%",
                fraction * 100.0,
                planned.policy,
                max * 100.0
            ));
        }
        Ok(())
    }

    /// The driver's plan summary when a backend is configured, else the offline description.
    async fn describe(&self, planned: &Planned, s: &PlannedStep) -> String {
        let Some(driver) = self.registry.get(s.action) else {
            return format!(
                "{} (offline: no {} backend configured)",
                s.description,
                backend_of(s.action)
            );
        };
        let req = Request {
            target: planned.target.clone(),
            params: s.params.clone(),
            dry_run: true,
        };
        match tokio::time::timeout(s.timeout, driver.plan(&req)).await {
            Ok(Ok(p)) => p.summary,
            Ok(Err(e)) => format!("{} (plan failed: {e})", s.description),
            Err(_) => format!("{} (plan timed out after {:?})", s.description, s.timeout),
        }
    }

    /// Finds the driver and plans one step (reads only) within its timeout,
    /// then checks the blast radius on the plan.
    async fn plan_step(
        &self,
        planned: &Planned,
        s: &PlannedStep,
    ) -> Result<
        (
            std::sync::Arc<dyn crate::drivers::Action>,
            Request,
            crate::drivers::Plan,
        ),
        String,
    > {
        let Some(driver) = self.registry.get(s.action) else {
            return Err(format!(
                "no driver for action {} in this build: the {} backend is not available yet, nothing was changed",
                s.action,
                backend_of(s.action)
            ));
        };
        let req = Request {
            target: planned.target.clone(),
            params: s.params.clone(),
            dry_run: false,
        };
        let plan = tokio::time::timeout(s.timeout, driver.plan(&req))
            .await
            .map_err(|_| {
                format!(
                    "plan timed out after {}",
                    humantime::format_duration(s.timeout)
                )
            })?
            .map_err(|e| format!("plan failed: {e}"))?;
        self.check_unavailable(planned, s, &plan)?;
        Ok((driver, req, plan))
    }

    /// Applies and verifies a planned step within its timeouts, then leaves
    /// a trace on the target. Ok carries the applied and verified outcomes.
    async fn finish_step(
        &self,
        planned: &Planned,
        s: &PlannedStep,
        driver: &dyn crate::drivers::Action,
        req: &Request,
        plan: &crate::drivers::Plan,
    ) -> Result<(String, String, Evidence), String> {
        let result = self.apply_and_verify(planned, s, driver, req, plan).await;
        // Leave a trace on the target (a Kubernetes Event): best effort.
        let (ok, msg) = match &result {
            Ok((applied, verified, _)) => (true, format!("{applied}; {verified}")),
            Err(m) => (false, m.clone()),
        };
        if tokio::time::timeout(
            std::time::Duration::from_secs(5),
            driver.record(req, ok, &msg),
        )
        .await
        .is_err()
        {
            tracing::warn!(
                action = s.action,
                "recording the outcome on the target timed out"
            );
        }
        result
    }

    async fn apply_and_verify(
        &self,
        planned: &Planned,
        s: &PlannedStep,
        driver: &dyn crate::drivers::Action,
        req: &Request,
        plan: &crate::drivers::Plan,
    ) -> Result<(String, String, Evidence), String> {
        let timed = |what: &str| {
            format!(
                "{what} timed out after {}",
                humantime::format_duration(s.timeout)
            )
        };
        let deadline = Instant::now() + s.timeout;
        let apply = crate::drivers::APPLY_DEADLINE.scope(deadline, driver.apply(req, plan));
        let outcome = tokio::time::timeout(s.timeout, apply)
            .await
            .map_err(|_| timed("apply"))?
            .map_err(|e| {
                format!(
                    "apply failed{}: {e}",
                    if e.retryable { " (retryable)" } else { "" }
                )
            })?;
        let deadline = Instant::now() + planned.verify_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let verdict = tokio::time::timeout(left, driver.verify(req, plan)).await;
            match verdict {
                Ok(Ok(Verdict::Verified(msg))) => {
                    let seen = super::evidence::from_details(&outcome.details);
                    return Ok((outcome.summary, msg, seen));
                }
                Ok(Ok(Verdict::Failed(msg))) => {
                    return Err(format!(
                        "applied ({}) but not verified: {msg}",
                        outcome.summary
                    ))
                }
                Ok(Ok(Verdict::Pending(msg)))
                    if Instant::now() + self.verify_interval < deadline =>
                {
                    tracing::debug!(%msg, "verify pending");
                    tokio::time::sleep(self.verify_interval).await;
                }
                Ok(Ok(Verdict::Pending(msg))) => {
                    return Err(format!(
                        "applied ({}) but not verified within {}: {msg}",
                        outcome.summary,
                        humantime::format_duration(planned.verify_timeout)
                    ))
                }
                Ok(Err(e)) => {
                    return Err(format!(
                        "applied ({}) but verify failed: {e}",
                        outcome.summary
                    ))
                }
                Err(_) => {
                    return Err(format!(
                        "applied ({}) but verify timed out after {}",
                        outcome.summary,
                        humantime::format_duration(planned.verify_timeout)
                    ))
                }
            }
        }
    }
}

struct InterruptGuard<'a> {
    sink: &'a dyn RecordSink,
    record: Option<Record>,
    started: Instant,
}

impl Drop for InterruptGuard<'_> {
    fn drop(&mut self) {
        if let Some(mut rec) = self.record.take() {
            let elapsed = self.started.elapsed();
            rec.duration_ms = elapsed.as_millis() as u64;
            rec.ts += chrono::Duration::from_std(elapsed).unwrap_or_default();
            if let Err(e) = self.sink.append(&rec) {
                tracing::error!(error = %e, id = %rec.id, "cannot record an interrupted step");
            } else {
                tracing::warn!(id = %rec.id, playbook = %rec.playbook, action = %rec.action, "step interrupted");
            }
        }
    }
}

/// The engine clock for `planned`: its decision time plus the time elapsed since.
fn engine_now(planned: &Planned) -> chrono::DateTime<chrono::Utc> {
    planned.decided_at
        + chrono::Duration::from_std(planned.decided_instant.elapsed()).unwrap_or_default()
}

fn backend_of(action: &str) -> &'static str {
    crate::drivers::catalog::get(action)
        .map(|a| a.backend)
        .unwrap_or("unknown")
}
