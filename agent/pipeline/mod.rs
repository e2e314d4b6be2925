//! `remediate agent`: the long-running node agent, as a pipeline of stages.
//!
//! ```text
//! webhook ─► intake (inbox, fsync) ─► 200    schedule (cron)    approvals (approved runs)
//!               │                                │                     │
//!               └──────────────────────────────► queue ◄───────────────┘
//!                                                 │
//!                   settle: firing alerts wait `webhook.settle`; a resolved alert cancels them
//!                                                 │
//!                   decide: the single dispatcher (engine + ledger); no-op records batched
//!                     ├─ needs approval ─► approvals (request, expiry, cancel on resolve)
//!                     ├─ nothing to change ─► notify
//!                     └─ execute ─► run: slot, execute, observe ─► notify (and escalation)
//!                                                 │
//!                   outcome: a verified run is watched until its alert resolves (resolved,
//!                     time to resolve) or `escalateAfter` passes (unresolved, escalation)
//!
//! reload: SIGHUP or a file change, validated first, then swapped
//! exporters: Iceberg table files on /metrics
//! SIGTERM: stop accepting, grace for running actions, flush the inbox and audit
//! ```
//!
//! Each stage is a module with one job: [`intake`], [`schedule`],
//! [`settle`], [`decide`], [`run`], [`outcome`], [`notify`], [`approvals`], [`reload`],
//! [`exporters`]. [`dispatch`] is the one loop that moves events through
//! settle → decide → run in event order: it is the only place that decides,
//! so the ledger is updated in event order and a storm cannot race two runs
//! past one limit. Stages hand typed values forward ([`intake::Incoming`],
//! [`settle::Sorted`], [`run::Order`], [`crate::notify::Notice`]); none calls
//! back into the one before it. The HTTP server ([`crate::server`]) feeds
//! intake and approvals; nothing here depends on it.

pub mod approvals;
pub mod decide;
pub mod dispatch;
pub mod exporters;
pub mod intake;
pub mod native;
pub mod notify;
pub mod outcome;
pub mod pauses;
pub mod reload;
pub mod run;
pub mod schedule;
pub mod settle;
pub mod silence;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};

use crate::audit::{self, Record};
use crate::config::AgentConfig;
use crate::diag::Diagnostics;
use crate::drivers::Registry;
use crate::engine::{Engine, RecordSink};
use crate::metrics::Metrics;
use crate::playbook::load::Config;
use crate::policy::Ledger;
use crate::state::{Commit, Store};
use intake::Incoming;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Playbooks or policies do not load.
    #[error("{0}")]
    Config(#[from] Diagnostics),
    /// Something the config names is missing or unusable.
    #[error("{0}")]
    Setup(String),
    /// The audit log cannot be read or written.
    #[error(transparent)]
    Audit(#[from] audit::Error),
    /// The state store cannot be opened.
    #[error(transparent)]
    Store(#[from] crate::state::store::Error),
}

/// State shared by the HTTP server and the stages. Each stage's own state
/// sits in its field ([`run::Board`], [`notify::Notify`], the approvals
/// journal); the rest is what every stage reads.
pub struct Shared {
    /// Agent config.
    pub cfg: AgentConfig,
    /// Current playbooks and policies, swapped on reload.
    engine: RwLock<Arc<Engine>>,
    ledger: Mutex<Ledger>,
    /// The durable state: inbox, limit state, approvals, the audit log's outbox.
    pub store: Store,
    /// Metrics.
    pub metrics: Metrics,
    /// Webhook bearer token (None: unauthenticated, by explicit config).
    pub token: Option<String>,
    /// Ready once playbooks are loaded and recovery is queued.
    pub ready: AtomicBool,
    /// Set on SIGTERM: stop accepting.
    pub stopping: AtomicBool,
    /// Into the pipeline: settle, then decide.
    queue: mpsc::UnboundedSender<Incoming>,
    /// Notification groups handed out.
    next_group: std::sync::atomic::AtomicU64,
    /// Runs held for approval.
    approvals: Mutex<crate::state::approvals::Approvals>,
    /// Pauses in force.
    pauses: Mutex<crate::state::pauses::Pauses>,
    /// Runs queued or executing, and alerts resolved meanwhile.
    board: run::Board,
    /// Notification sinks and breaker escalations already sent.
    notify: notify::Notify,
    /// Verified runs watched until their alert resolves.
    outcomes: outcome::Outcomes,
    /// Alertmanager's silences API, for policies with `silenceWhileActing`.
    silencer: Option<silence::Silencer>,
    node: String,
    /// Held for the agent's life: one agent per state directory.
    _lock: std::fs::File,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// A new notification group id.
    pub fn group(&self) -> u64 {
        self.next_group.fetch_add(1, Ordering::Relaxed)
    }

    /// The engine now in force.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pauses(&self) -> std::sync::MutexGuard<'_, crate::state::pauses::Pauses> {
        self.pauses.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits to the store (one group commit); a failure is counted and logged.
    fn commit(&self, c: Commit) -> Result<(), crate::state::store::Error> {
        let records = c.records.len();
        let r = self.store.commit(c);
        if let Err(e) = &r {
            self.metrics.storage_errors.inc();
            tracing::error!(error = %e, records, "cannot record durably");
        }
        r
    }

    /// Storage gauges from the store's health.
    pub fn storage_metrics(&self) {
        let h = self.store.health();
        self.metrics.storage_failing.set(i64::from(h.failing()));
        self.metrics.storage_reopened.set(h.reopened() as i64);
        pauses::export(self);
    }
}

impl RecordSink for Shared {
    fn append(&self, rec: &Record) -> audit::Result<()> {
        self.commit(Commit {
            records: vec![rec.clone()],
            ..Commit::default()
        })
        .map_err(|e| audit::Error::Io {
            path: self.cfg.audit_path(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}

/// How far back the limit state must reach for `config`'s policies: their
/// longest rate-limit window, cooldown, breaker period (twice, for the
/// half-open trial) and approval timeout, and never less than a day, so a
/// reload to a somewhat longer window still sees recent history.
pub fn horizon(config: &Config) -> chrono::Duration {
    let mut h = chrono::Duration::days(1);
    for p in config.policies.values() {
        let spec = &p.doc.spec;
        for r in &spec.rate_limits {
            h = h.max(r.per.chrono());
        }
        if let Some(c) = spec.cooldown {
            h = h.max(c.chrono());
        }
        if let Some(b) = &spec.circuit_breaker {
            h = h.max((b.within.chrono() + b.open_for.chrono()) * 2);
        }
        if let Some(t) = spec.approval.timeout {
            h = h.max(t.chrono());
        }
    }
    h
}

/// What a one-shot decision run (`remediate run`, `remediate replay`)
/// keeps of the ledger: exactly what `config`'s windows read, part by part
/// (see [`crate::policy::Horizon`]), plus an hour for events decided out
/// of time order; no day's floor, since nothing is reloaded. Under
/// hour-long limits and a breaker, the per-target entries (nearly all of a
/// permissive policy's ledger) keep two hours, not the agent's day.
pub fn exact_horizon(config: &Config) -> crate::policy::Horizon {
    use crate::policy::model::RateScope;
    let slack = chrono::Duration::hours(1);
    let (mut playbooks, mut targets) = (chrono::Duration::zero(), chrono::Duration::zero());
    for p in config.policies.values() {
        let spec = &p.doc.spec;
        for r in &spec.rate_limits {
            match r.scope {
                RateScope::Playbook => playbooks = playbooks.max(r.per.chrono()),
                RateScope::Global | RateScope::Target => targets = targets.max(r.per.chrono()),
            }
        }
        if let Some(c) = spec.cooldown {
            targets = targets.max(c.chrono());
        }
        if let Some(b) = &spec.circuit_breaker {
            playbooks = playbooks.max((b.within.chrono() + b.open_for.chrono()) * 2);
        }
    }
    let targets = targets + slack;
    crate::policy::Horizon {
        playbooks: (playbooks + slack).max(targets),
        targets,
    }
}

/// Takes the state directory's lock, so two agents never share an audit log.
fn lock_state_dir(dir: &Path) -> Result<std::fs::File, Error> {
    let path = dir.join("agent.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Setup(format!(
            "stateDir {} is in use by another remediate agent (lock {}); give each agent its own stateDir",
            dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error::Setup(format!("{}: {e}", path.display())))
        }
    }
}

/// Reads the webhook token, refusing the shipped placeholder and a missing
/// token unless unauthenticated access is configured.
fn webhook_token(cfg: &AgentConfig) -> Result<Option<String>, Error> {
    let token = crate::config::read_secret(
        cfg.auth.token_file.as_deref(),
        Some(cfg.auth.token_env.as_str()),
    )
    .map_err(|e| Error::Setup(format!("auth.tokenFile: {e}")))?;
    if token
        .as_deref()
        .is_some_and(|t| t.starts_with("REPLACE-ME"))
    {
        return Err(Error::Setup(
            "the webhook token is the shipped placeholder: generate one (openssl rand -hex 32) and put it in the token file or Secret".into(),
        ));
    }
    if token.is_none() && !cfg.auth.allow_unauthenticated {
        return Err(Error::Setup(format!(
            "no webhook token: set auth.tokenFile or ${}, or set auth.allowUnauthenticated: true for a lab",
            cfg.auth.token_env
        )));
    }
    Ok(token)
}

/// A running agent: its shared state and the handles to stop it.
#[derive(Debug)]
pub struct Agent {
    /// Shared state (the HTTP app is built from it).
    pub shared: Arc<Shared>,
    rx: Option<mpsc::UnboundedReceiver<Incoming>>,
    recovered: Vec<Incoming>,
    schedules_last_run: HashMap<String, DateTime<Utc>>,
    sources_fp: u64,
}

impl Agent {
    /// Prepares everything that can fail before the agent listens: loads
    /// playbooks, reads secrets, replays the audit into the ledger and
    /// recovers unfinished events from the inbox.
    pub fn prepare(cfg: AgentConfig, node: String) -> Result<Self, Error> {
        let registry = crate::drivers::host::builtin(&node);
        Self::prepare_with(cfg, node, registry, std::time::Duration::from_secs(2))
    }

    /// [`Agent::prepare`] with the drivers to use (kept across reloads) and
    /// the interval between verify polls.
    pub fn prepare_with(
        cfg: AgentConfig,
        node: String,
        registry: Registry,
        verify_interval: std::time::Duration,
    ) -> Result<Self, Error> {
        Self::prepare_coordinated(cfg, node, registry, None, verify_interval)
    }

    /// [`Agent::prepare_with`] plus a cluster coordinator (Leases), so that
    /// of several agents receiving one alert, one acts.
    pub fn prepare_coordinated(
        cfg: AgentConfig,
        node: String,
        registry: Registry,
        coordinator: Option<Arc<dyn crate::coord::Coordinator>>,
        verify_interval: std::time::Duration,
    ) -> Result<Self, Error> {
        // Fingerprint before loading: a change after this is seen as a change.
        let sources_fp = reload::fingerprint(&cfg);
        let config = reload::load_config(&cfg)?;
        let token = webhook_token(&cfg)?;
        let notify = notify::Notify::from_config(&cfg.notify, &cfg.chat).map_err(Error::Setup)?;
        let silencer =
            silence::Silencer::from_config(cfg.alertmanager.as_ref()).map_err(Error::Setup)?;
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| Error::Setup(format!("stateDir {}: {e}", cfg.state_dir.display())))?;
        let lock = lock_state_dir(&cfg.state_dir)?;
        let opened = Store::open(
            crate::state::Options {
                path: cfg.state_dir.join("state.db"),
                audit: cfg.audit_path(),
                rotation: audit::Rotation {
                    max_bytes: cfg.audit.max_bytes.0,
                    keep: cfg.audit.keep,
                },
                dedupe_window: cfg.webhook.dedupe_window.chrono(),
                dedupe_tolerance: cfg.webhook.dedupe_tolerance.chrono(),
                horizon: horizon(&config),
                legacy_inbox: cfg.inbox_path(),
                legacy_approvals: cfg.approvals_path(),
            },
            Utc::now(),
        )?;
        if let Some(summary) = &opened.upgraded {
            tracing::warn!(state = %cfg.state_dir.display(), "{summary}");
        }
        for r in &opened.interrupted {
            tracing::warn!(id = %r.id, playbook = %r.playbook, action = %r.action, target_ref = %crate::drivers::target_display(&r.target), "step was interrupted by the previous stop; recorded as failed, not retried");
        }
        let mut recovered = intake::recover(opened.pending);
        recovered.extend(intake::recover_approved(opened.approved_runs));
        // The ledger drops what no window can see, as the store does.
        let mut ledger = opened.ledger;
        ledger.set_horizon(Some(horizon(&config)));
        let (tx, rx) = mpsc::unbounded_channel();
        let metrics = Metrics::new();
        metrics.playbooks.set(config.playbooks.len() as i64);
        let mut engine = Engine::new(config, registry, node.clone());
        engine.verify_interval = verify_interval;
        engine.coordinator = coordinator;
        let shared = Arc::new(Shared {
            cfg,
            engine: RwLock::new(Arc::new(engine)),
            ledger: Mutex::new(ledger),
            store: opened.store,
            metrics,
            token,
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            queue: tx,
            next_group: std::sync::atomic::AtomicU64::new(1),
            approvals: Mutex::new(opened.approvals),
            pauses: Mutex::new(opened.pauses),
            board: run::Board::default(),
            notify,
            outcomes: outcome::Outcomes::new(opened.watches),
            silencer,
            node,
            _lock: lock,
        });
        shared.metrics.watched.set(shared.outcomes.len() as i64);
        Ok(Self {
            shared,
            rx: Some(rx),
            recovered,
            schedules_last_run: opened.schedules,
            sources_fp,
        })
    }

    /// Runs until `shutdown` flips to true: dispatcher, scheduler and
    /// reloader. Returns once in-flight runs finished or were interrupted
    /// and the inbox is flushed. The HTTP server is run by the caller.
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) {
        let shared = self.shared.clone();
        let Some(rx) = self.rx.take() else {
            return;
        };
        for inc in std::mem::take(&mut self.recovered) {
            intake::enqueue(&shared, inc);
        }
        let mut sched = schedule::Scheduler::new(&shared);
        if shared.cfg.schedule.enabled {
            sched.catch_up(&shared, &self.schedules_last_run);
            sched.start(&shared, shutdown.clone());
        }
        shared.ready.store(true, Ordering::SeqCst);
        let exporter = tokio::spawn(exporters::iceberg(shared.clone(), shutdown.clone()));
        let docker_events = shared
            .cfg
            .triggers
            .docker
            .enabled
            .then(|| tokio::spawn(native::docker_events(shared.clone(), shutdown.clone())));
        let pod_events = shared
            .cfg
            .triggers
            .kubernetes
            .enabled
            .then(|| tokio::spawn(native::kubernetes_pods(shared.clone(), shutdown.clone())));
        let reloader = tokio::spawn(reload::watch(
            shared.clone(),
            shutdown.clone(),
            sched,
            self.sources_fp,
        ));
        dispatch::run(shared.clone(), rx, shutdown).await;
        reloader.abort();
        let _ = reloader.await;
        exporter.abort();
        let _ = exporter.await;
        for w in [docker_events, pod_events].into_iter().flatten() {
            w.abort();
            let _ = w.await;
        }
        shared.store.close().await;
        tracing::info!("agent stopped; audit and inbox flushed");
    }
}

/// Where playbooks and policies come from, for `--check`.
pub fn describe_sources(cfg: &AgentConfig) -> (String, String) {
    let show = |d: &Option<PathBuf>| match d {
        Some(p) => p.display().to_string(),
        None => "embedded bundle".to_string(),
    };
    (show(&cfg.playbooks), show(&cfg.policies))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(policy: &str) -> Config {
        let src = |path: &str, text: &str| crate::playbook::load::Source {
            path: path.into(),
            text: text.into(),
        };
        Config::load(&[], &[src("p.yaml", policy)]).unwrap()
    }

    /// A one-shot run keeps what the windows read, part by part, plus an
    /// hour; the agent keeps at least a day of everything.
    #[test]
    fn the_exact_horizon_is_what_each_part_of_the_ledger_reads() {
        let h = chrono::Duration::hours;
        let cfg = config(
            "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec:\n  rateLimits:\n    - { scope: global, max: 30, per: 1h }\n    - { scope: playbook, max: 10, per: 3h }\n    - { scope: target, max: 3, per: 2h }\n  cooldown: 10m\n  circuitBreaker: { failures: 3, within: 1h, openFor: 6h }\n",
        );
        let e = exact_horizon(&cfg);
        // Targets: the 2h target window (the longest of global, target and
        // the cooldown), plus the hour.
        assert_eq!(e.targets, h(3));
        // Playbooks: the breaker's (1h + 6h) twice, plus the hour.
        assert_eq!(e.playbooks, h(15));
        assert_eq!(horizon(&cfg), chrono::Duration::days(1));
        // A cooldown longer than any window; no breaker: the playbooks'
        // part is never shorter than the targets'.
        let cfg = config(
            "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec:\n  rateLimits:\n    - { scope: playbook, max: 10, per: 1h }\n  cooldown: 4h\n",
        );
        let e = exact_horizon(&cfg);
        assert_eq!((e.targets, e.playbooks), (h(5), h(5)));
    }
}
