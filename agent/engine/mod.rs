//! Drives one event through match -> plan -> gate -> execute -> verify -> record.
//!
//! [`decide`]: match, render and gate ([`Engine::decide`]); pure (no I/O,
//! time is a parameter): the hot path the benchmark measures and what
//! `remediate test` checks. [`execute`]: claim, plan, apply, verify and
//! record ([`Engine::execute`]); the I/O: drivers, timeouts and audit
//! records, written and fsynced before and after every change.

mod decide;
pub mod evidence;
mod execute;

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::audit::{self, Record, TriggerRef};
use crate::drivers::Registry;
use crate::drivers::{target_display, Target};
use crate::playbook::load::Config;
use crate::policy::{Decision, Ledger};

/// A step's audit id: a UUIDv7 (time-ordered) whose 74 random bits come
/// from the thread's generator (fastrand, seeded from the OS once), not a
/// `getrandom` call per id: ids only have to be unique, and the decision
/// path makes one per planned step.
pub fn step_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut random = [0u8; 10];
    fastrand::fill(&mut random);
    let id = uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut buf).to_string()
}

/// One planned step of a run.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    /// Audit id of this step (the same across its phases).
    pub id: String,
    /// Action name.
    pub action: &'static str,
    /// Rendered, validated parameters with defaults.
    pub params: serde_json::Value,
    /// Upper bound on apply.
    #[serde(skip)]
    pub timeout: std::time::Duration,
    /// What it would do, offline.
    pub description: String,
}

/// One (event, playbook) decision.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    /// Playbook name.
    pub playbook: String,
    /// Policy that gated it.
    pub policy: String,
    /// The trigger, shared with every record of the run.
    pub trigger: std::sync::Arc<TriggerRef>,
    /// Rendered target (empty when rendering failed).
    pub target: Target,
    /// Steps (empty when rendering failed).
    pub steps: Vec<PlannedStep>,
    /// The gate's decision.
    pub decision: Decision,
    /// Post-condition timeout.
    #[serde(skip)]
    pub verify_timeout: std::time::Duration,
    /// The gate's clock when it decided; records are stamped from it.
    pub decided_at: DateTime<Utc>,
    /// The monotonic clock at the decision: records are stamped
    /// `decided_at` plus the time elapsed since (waits included).
    #[serde(skip)]
    pub decided_instant: Instant,
    /// The decision entered an execution in the ledger (an `execute`, or a
    /// dry-run that would have executed): what [`Planned::uncharge`] takes back.
    #[serde(skip)]
    pub charged: bool,
}

impl Planned {
    /// Takes the execution this decision entered out of the ledger again,
    /// when its records could not be written: nothing happened.
    pub fn uncharge(&self, ledger: &mut Ledger) {
        if self.charged {
            ledger.forget_execution(
                self.decided_at,
                &self.policy,
                &self.playbook,
                &crate::policy::target_key(&self.target),
            );
        }
    }

    /// `pod etl/x`, or `-` when rendering failed.
    pub fn target_display(&self) -> String {
        if self.target.is_empty() {
            "-".into()
        } else {
            target_display(&self.target)
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// Not executed (dry-run, suppressed, needs approval).
    NotExecuted,
    /// Every step applied and verified.
    Verified,
    /// A step failed; the message says which and why.
    Failed(String),
}

/// The result of executing one planned run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// What was decided.
    pub planned: Planned,
    /// How it ended.
    pub status: RunStatus,
    /// The records written for it.
    pub records: Vec<Record>,
    /// When it failed, if it did (the breaker counts it).
    #[serde(skip)]
    pub failed_at: Option<DateTime<Utc>>,
    /// Another agent held the claim (or the cluster's limits refused it):
    /// this agent did not run it, so the execution its decision entered in
    /// the ledger is taken back by [`RunReport::enter`].
    #[serde(skip)]
    pub claim_refused: bool,
}

impl RunReport {
    /// Enters the run's outcome in the ledger (the breaker counts failures
    /// and closes after a verified half-open trial).
    pub fn enter(&self, ledger: &mut Ledger) {
        let p = &self.planned;
        if self.claim_refused {
            // Not run here: no cooldown, rate-limit charge or breaker trial.
            p.uncharge(ledger);
            return;
        }
        if let Some(at) = self.failed_at {
            ledger.record_failure(at, &p.policy, &p.playbook);
        } else if self.status == RunStatus::Verified {
            let at = self.records.last().map(|r| r.ts).unwrap_or(p.decided_at);
            ledger.record_success(at, &p.policy, &p.playbook);
        }
    }
}

/// Where the engine appends audit records. Each `append` is durable when it
/// returns, so the next phase may start.
pub trait RecordSink: Send + Sync {
    /// Appends one record durably.
    fn append(&self, rec: &Record) -> audit::Result<()>;
}

impl RecordSink for std::sync::Mutex<audit::Writer> {
    fn append(&self, rec: &Record) -> audit::Result<()> {
        // A poisoned lock only means another writer panicked mid-call; the
        // file itself is append-only and repaired on open.
        let mut w = self.lock().unwrap_or_else(|p| p.into_inner());
        w.append(rec)
    }
}

/// Group commit (`remediate run`): a record that precedes or follows a
/// change (a real execution's) is durable when `append` returns; the
/// others are durable at the next such record, a full batch, or
/// [`audit::GroupCommit::commit`].
impl RecordSink for std::sync::Mutex<audit::GroupCommit> {
    fn append(&self, rec: &Record) -> audit::Result<()> {
        let mut w = self.lock().unwrap_or_else(|p| p.into_inner());
        w.append(rec)
    }
}

/// The engine: validated config plus the drivers of this build.
#[derive(Debug)]
pub struct Engine {
    /// Playbooks and policies.
    pub config: Config,
    /// Executable actions.
    pub registry: Registry,
    /// This agent's node name (in every record).
    pub node: String,
    /// Interval between verify polls.
    pub verify_interval: std::time::Duration,
    /// Cluster-wide claims and counters (several agents, one action).
    pub coordinator: Option<std::sync::Arc<dyn crate::coord::Coordinator>>,
    /// Decisions only (`remediate replay`): planned steps get no audit id
    /// and no description, and a decision's trigger no copy of the event's
    /// labels and annotations, which only recording or running a step needs.
    pub decide_only: bool,
}

impl Engine {
    /// A new engine.
    pub fn new(config: Config, registry: Registry, node: impl Into<String>) -> Self {
        Self {
            config,
            registry,
            node: node.into(),
            verify_interval: std::time::Duration::from_secs(2),
            coordinator: None,
            decide_only: false,
        }
    }
}
