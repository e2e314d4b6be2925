//! `remediate agent`: the long-running node agent.
//!
//! ```text
//! webhook ──► inbox (fsync) ──► 200
//!                 │
//! cron tick ──────┼──► dispatcher: settle / cancel ─► decide (engine, ledger)
//!                 │        ├─ nothing to do: records batched, one fsync
//!                 │        └─ execute: run task (concurrency permit) ─► audit, metrics, notify
//! SIGHUP/poll ──► reload (validate first, swap)      SIGTERM ──► drain, grace, interrupt
//! ```
//!
//! The dispatcher is the only place that decides, so the ledger is updated
//! in event order and a storm cannot race two runs past one limit.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{info_span, Instrument};

use crate::audit::{self, Phase, Record};
use crate::bundle;
use crate::config::AgentConfig;
use crate::diag::Diagnostics;
use crate::drivers::Registry;
use crate::engine::{Engine, Planned, RecordSink, RunReport, RunStatus};
use crate::event::{Event, Status, TriggerKind};
use crate::inbox::Inbox;
use crate::metrics::{DecisionLabels, FailureLabels, Metrics, NotifyLabels};
use crate::notify::{Notice, Notifier};
use crate::playbook::load::{read_dir, Config};
use crate::policy::Decision;
use crate::policy::Ledger;
use crate::trigger::schedule::{self, ScheduleTrigger};

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
    /// The inbox cannot be opened.
    #[error(transparent)]
    Inbox(#[from] crate::inbox::Error),
}

/// One event waiting for a decision.
#[derive(Debug)]
pub struct Incoming {
    /// Inbox sequence number (None for schedule ticks, which are not journaled).
    pub seq: Option<u64>,
    /// The notification it came in (one webhook body); `maxTargetsPerRun`
    /// counts executions within it.
    pub group: u64,
    /// When it was received (or the tick was due).
    pub at: DateTime<Utc>,
    /// The event.
    pub event: Event,
    /// Set when a person approved a held run: decide this playbook again
    /// with the approval stage passed.
    pub approved: Option<ApprovedRun>,
}

/// An approved run, to decide again.
#[derive(Debug, Clone)]
pub struct ApprovedRun {
    /// Approval id.
    pub id: String,
    /// Playbook to decide.
    pub playbook: String,
    /// Who approved.
    pub by: String,
}

/// State shared by the HTTP server, the dispatcher and run tasks.
pub struct Shared {
    /// Agent config.
    pub cfg: AgentConfig,
    /// Current playbooks and policies, swapped on reload.
    engine: RwLock<Arc<Engine>>,
    ledger: Mutex<Ledger>,
    audit: Mutex<audit::Writer>,
    /// Durable intake.
    pub inbox: Inbox,
    /// Metrics.
    pub metrics: Metrics,
    notifier: Notifier,
    /// Webhook bearer token (None: unauthenticated, by explicit config).
    pub token: Option<String>,
    /// Ready once playbooks are loaded and recovery is queued.
    pub ready: AtomicBool,
    /// Set on SIGTERM: stop accepting.
    pub stopping: AtomicBool,
    /// To the dispatcher.
    pub queue: mpsc::UnboundedSender<Incoming>,
    /// Fingerprint -> when it resolved (cancels runs waiting for a permit).
    resolved: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Playbook -> runs queued or executing (overlap detection for schedules).
    running: Mutex<HashMap<String, usize>>,
    /// Notification groups handed out.
    next_group: std::sync::atomic::AtomicU64,
    /// Runs held for approval.
    approvals: Mutex<crate::approvals::Approvals>,
    /// Breaker openings already escalated: (policy, playbook, opened at).
    escalated: Mutex<std::collections::HashSet<(String, String, DateTime<Utc>)>>,
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

    fn audit_batch(&self, recs: &[Record]) {
        if recs.is_empty() {
            return;
        }
        let mut w = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = w.append_batch(recs) {
            self.metrics.storage_errors.inc();
            tracing::error!(error = %e, records = recs.len(), "audit write failed");
        }
    }
}

impl RecordSink for Shared {
    fn append(&self, rec: &Record) -> audit::Result<()> {
        let r = self.audit.append(rec);
        if r.is_err() {
            self.metrics.storage_errors.inc();
        }
        r
    }
}

/// Collects records of decisions that change nothing, written in one batch.
#[derive(Default)]
struct Batch(Mutex<Vec<Record>>);

impl RecordSink for Batch {
    fn append(&self, rec: &Record) -> audit::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rec.clone());
        Ok(())
    }
}

/// Loads playbooks and policies from the configured directories (or the
/// embedded bundle).
pub fn load_config(cfg: &AgentConfig) -> Result<Config, Diagnostics> {
    let pbs = match &cfg.playbooks {
        Some(d) => read_dir(d)?,
        None => bundle::playbooks(),
    };
    let pols = match &cfg.policies {
        Some(d) => read_dir(d)?,
        None => bundle::policies(),
    };
    Config::load(&pbs, &pols)
}

/// A cheap fingerprint of a directory's YAML files (names, sizes, contents),
/// to notice changes by polling.
fn dir_fingerprint(dirs: &[&Path]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for d in dirs {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(d)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        entries.sort();
        for p in entries {
            p.hash(&mut h);
            if let Ok(bytes) = std::fs::read(&p) {
                bytes.hash(&mut h);
            }
        }
    }
    h.finish()
}

fn sources_dirs(cfg: &AgentConfig) -> Vec<&Path> {
    [cfg.playbooks.as_deref(), cfg.policies.as_deref()]
        .into_iter()
        .flatten()
        .collect()
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
        let registry = crate::drivers::command::builtin(&node);
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
        let sources_fp = dir_fingerprint(&sources_dirs(&cfg));
        let config = load_config(&cfg)?;
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
        let notifier = Notifier::from_config(&cfg.notify).map_err(Error::Setup)?;
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| Error::Setup(format!("stateDir {}: {e}", cfg.state_dir.display())))?;
        let lock = lock_state_dir(&cfg.state_dir)?;
        let audit_path = cfg.audit_path();
        let mut history = audit::read_all(&audit_path)?;
        if !history.damaged.is_empty() {
            // Fail closed: limits rebuilt from a damaged log cannot be trusted.
            return Err(Error::Setup(audit::damaged_error(
                &audit_path,
                &history.damaged,
            )));
        }
        if !history.skipped.is_empty() {
            tracing::warn!(path = %audit_path.display(), lines = ?history.skipped, "skipped unreadable audit lines (a torn write from a crash is expected at the end)");
        }
        let mut writer = audit::Writer::open_rotating(
            &audit_path,
            audit::Rotation {
                max_bytes: cfg.audit.max_bytes.0,
                keep: cfg.audit.keep,
            },
        )?;
        // Steps the previous agent planned and never finished: say so, once.
        let lost = audit::interrupted(&history.records, Utc::now());
        if !lost.is_empty() {
            writer.append_batch(&lost)?;
            for r in &lost {
                tracing::warn!(id = %r.id, playbook = %r.playbook, action = %r.action, target_ref = %crate::drivers::catalog::target_display(&r.target), "step was interrupted by the previous stop; recorded as failed, not retried");
            }
            history.records.extend(lost);
        }
        let ledger = audit::ledger_from(&history.records);
        let mut schedules_last_run: HashMap<String, DateTime<Utc>> = HashMap::new();
        for r in &history.records {
            if r.trigger.kind == TriggerKind::Schedule {
                let e = schedules_last_run.entry(r.playbook.clone()).or_insert(r.ts);
                *e = (*e).max(r.ts);
            }
        }
        let approvals = crate::approvals::Approvals::open(&cfg.approvals_path())
            .map_err(|e| Error::Setup(e.to_string()))?;
        let (inbox, pending) = Inbox::open(&cfg.inbox_path(), cfg.webhook.dedupe_window.std())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let metrics = Metrics::new();
        metrics.playbooks.set(config.playbooks.len() as i64);
        let mut engine = Engine::new(config, registry, node.clone());
        engine.verify_interval = verify_interval;
        engine.coordinator = coordinator;
        // The audit is the source of truth: an event whose decision is
        // recorded was handled even if its `done` mark was lost in a crash.
        let mut decided: HashMap<(&str, Status), DateTime<Utc>> = HashMap::new();
        for r in &history.records {
            let e = decided
                .entry((r.trigger.fingerprint.as_str(), r.trigger.status))
                .or_insert(r.ts);
            *e = (*e).max(r.ts);
        }
        let mut recovered = Vec::new();
        for a in pending {
            let key = (a.event.fingerprint.as_str(), a.event.status);
            if decided.get(&key).is_some_and(|ts| *ts >= a.at) {
                inbox.done(a.seq);
                continue;
            }
            recovered.push(Incoming {
                // One group per recovered event: their notifications are gone.
                group: u64::MAX - a.seq,
                seq: Some(a.seq),
                at: a.at,
                event: a.event,
                approved: None,
            });
        }
        if !recovered.is_empty() {
            tracing::info!(
                events = recovered.len(),
                "recovered accepted events that were not decided before the last stop"
            );
        }
        let shared = Arc::new(Shared {
            cfg,
            engine: RwLock::new(Arc::new(engine)),
            ledger: Mutex::new(ledger),
            audit: Mutex::new(writer),
            inbox,
            metrics,
            notifier,
            token,
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            queue: tx,
            resolved: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            next_group: std::sync::atomic::AtomicU64::new(1),
            approvals: Mutex::new(approvals),
            escalated: Mutex::new(std::collections::HashSet::new()),
            node,
            _lock: lock,
        });
        Ok(Self {
            shared,
            rx: Some(rx),
            recovered,
            schedules_last_run,
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
            shared.metrics.queue_depth.inc();
            let _ = shared.queue.send(inc);
        }
        let tz: Tz = shared.cfg.schedule.timezone.parse().unwrap_or(Tz::UTC);
        let mut sched = Scheduler {
            tasks: JoinSet::new(),
            tz,
        };
        if shared.cfg.schedule.enabled {
            sched.catch_up(&shared, &self.schedules_last_run);
            sched.start(&shared, shutdown.clone());
        }
        shared.ready.store(true, Ordering::SeqCst);
        let exporter = tokio::spawn(iceberg_exporter(shared.clone(), shutdown.clone()));
        let reloader = tokio::spawn(reload_loop(
            shared.clone(),
            shutdown.clone(),
            sched,
            self.sources_fp,
        ));
        dispatch(shared.clone(), rx, shutdown).await;
        reloader.abort();
        let _ = reloader.await;
        exporter.abort();
        let _ = exporter.await;
        shared.inbox.close().await;
        tracing::info!("agent stopped; audit and inbox flushed");
    }
}

/// Serves the HTTP app on `listener` and runs `agent` until `stop` flips to
/// true: then the listener stops accepting, running actions get the grace
/// period, and the inbox and audit are flushed before this returns.
pub async fn serve(
    agent: Agent,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let shared = agent.shared.clone();
    let app = crate::server::app(shared.clone());
    let mut http_stop = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|v| *v).await;
            })
            .await
    });
    let core = tokio::spawn(agent.run(stop.clone()));
    let _ = stop.wait_for(|v| *v).await;
    shared.stopping.store(true, Ordering::SeqCst);
    let _ = core.await;
    match server.await {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(e)),
    }
}

/// Exports the small-file ratio of every configured Iceberg table.
async fn iceberg_exporter(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let catalogs = shared.cfg.backends.iceberg.clone();
    if catalogs.values().all(|c| c.tables.is_empty()) {
        return;
    }
    let tick = catalogs
        .values()
        .filter(|c| !c.tables.is_empty())
        .map(|c| c.scrape_interval.std())
        .min()
        .unwrap_or(std::time::Duration::from_secs(300));
    let mut survey = crate::drivers::ice::Survey::default();
    let mut last: HashMap<String, std::time::Instant> = HashMap::new();
    loop {
        for (key, c) in &catalogs {
            // Each catalog at its own scrapeInterval.
            if last.get(key).is_some_and(|t| {
                t.elapsed() + std::time::Duration::from_millis(50) < c.scrape_interval.std()
            }) {
                continue;
            }
            last.insert(key.clone(), std::time::Instant::now());
            for table in &c.tables {
                let (namespace, name) = table.rsplit_once('.').unwrap_or(("", table.as_str()));
                let labels = crate::metrics::TableLabels {
                    catalog: key.clone(),
                    namespace: namespace.to_string(),
                    table: name.to_string(),
                };
                match survey.stats(key, c, table, c.small_file_threshold.0).await {
                    Ok(parts) => {
                        let total: usize = parts.iter().map(|p| p.files).sum();
                        let small: usize = parts.iter().map(|p| p.small_files).sum();
                        let m = &shared.metrics;
                        m.iceberg_total_files
                            .get_or_create(&labels)
                            .set(total as i64);
                        m.iceberg_small_files
                            .get_or_create(&labels)
                            .set(small as i64);
                        m.iceberg_small_files_ratio
                            .get_or_create(&labels)
                            .set(if total == 0 {
                                0.0
                            } else {
                                small as f64 / total as f64
                            });
                    }
                    Err(e) => {
                        tracing::warn!(catalog = %key, %table, error = %e, "cannot read an Iceberg table for /metrics")
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
    }
}

struct Scheduler {
    tasks: JoinSet<()>,
    tz: Tz,
}

impl Scheduler {
    fn catch_up(&self, shared: &Arc<Shared>, last_run: &HashMap<String, DateTime<Utc>>) {
        let engine = shared.engine();
        let c = &shared.cfg.schedule;
        let now = Utc::now();
        for t in schedule::triggers(&engine.config) {
            let missed = schedule::missed(
                &t.schedule,
                self.tz,
                last_run.get(&t.playbook).copied(),
                now,
                c.catch_up_window.chrono(),
                c.catch_up,
            );
            for due in missed {
                tracing::info!(playbook = %t.playbook, schedule = %t.expr, %due, "catching up a tick missed while the agent was down");
                count_schedule_event(shared);
                shared.metrics.queue_depth.inc();
                let _ = shared.queue.send(Incoming {
                    group: shared.group(),
                    seq: None,
                    at: due,
                    event: t.event(due),
                    approved: None,
                });
            }
        }
    }

    fn start(&mut self, shared: &Arc<Shared>, shutdown: watch::Receiver<bool>) {
        self.tasks.abort_all();
        let engine = shared.engine();
        for t in schedule::triggers(&engine.config) {
            let shared = shared.clone();
            let tz = self.tz;
            let mut shutdown = shutdown.clone();
            let jitter = shared.cfg.schedule.jitter.std();
            self.tasks.spawn(async move {
                tick_loop(shared, t, tz, jitter, &mut shutdown).await;
            });
        }
    }
}

async fn tick_loop(
    shared: Arc<Shared>,
    t: ScheduleTrigger,
    tz: Tz,
    jitter: std::time::Duration,
    shutdown: &mut watch::Receiver<bool>,
) {
    let mut after = Utc::now();
    let mut extra = schedule::jitter(jitter);
    loop {
        let Some(due) = schedule::next_after(&t.schedule, tz, after) else {
            tracing::warn!(playbook = %t.playbook, schedule = %t.expr, "schedule has no further ticks");
            return;
        };
        let wait = (due - Utc::now()).to_std().unwrap_or_default() + extra;
        extra = std::time::Duration::ZERO;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        tracing::info!(playbook = %t.playbook, schedule = %t.expr, %due, "schedule tick");
        count_schedule_event(&shared);
        shared.metrics.queue_depth.inc();
        if shared
            .queue
            .send(Incoming {
                group: shared.group(),
                seq: None,
                at: due,
                event: t.event(due),
                approved: None,
            })
            .is_err()
        {
            return;
        }
        after = due;
    }
}

async fn reload_loop(
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    mut sched: Scheduler,
    mut last: u64,
) {
    let dirs = sources_dirs(&shared.cfg);
    let mut settling: Option<u64> = None;
    let watch_files = shared.cfg.reload.watch && !dirs.is_empty();
    let mut interval = tokio::time::interval(shared.cfg.reload.interval.std());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let sighup = async {
            match hup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<Option<()>>();
        let why = tokio::select! {
            _ = shutdown.changed() => return,
            _ = sighup => "SIGHUP",
            _ = interval.tick(), if watch_files => {
                // Reload once a change has held still for one interval, so
                // a file caught half-written is not reported as broken.
                let now = dir_fingerprint(&dirs);
                if now == last {
                    settling = None;
                    continue;
                }
                if settling != Some(now) {
                    settling = Some(now);
                    continue;
                }
                settling = None;
                "file change"
            }
        };
        last = dir_fingerprint(&dirs);
        if reload(&shared, why) && shared.cfg.schedule.enabled {
            sched.start(&shared, shutdown.clone());
        }
    }
}

/// Validates the new set and swaps it in; a bad set keeps the old one.
/// Returns true when the new set is in force.
pub fn reload(shared: &Shared, why: &str) -> bool {
    match load_config(&shared.cfg) {
        Ok(config) => {
            let n = config.playbooks.len();
            let old = shared.engine();
            let mut engine = Engine::new(config, old.registry.clone(), old.node.clone());
            engine.verify_interval = old.verify_interval;
            engine.coordinator = old.coordinator.clone();
            *shared.engine.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(engine);
            shared.metrics.playbooks.set(n as i64);
            shared.metrics.config_ok.set(1);
            shared
                .metrics
                .reloads
                .get_or_create(&crate::metrics::ResultLabels { result: "success" })
                .inc();
            tracing::info!(
                trigger = why,
                playbooks = n,
                "reloaded playbooks and policies"
            );
            true
        }
        Err(d) => {
            shared.metrics.config_ok.set(0);
            shared
                .metrics
                .reloads
                .get_or_create(&crate::metrics::ResultLabels { result: "failure" })
                .inc();
            tracing::error!(trigger = why, errors = %d, "reload rejected: the new playbooks or policies do not validate; the previous set stays in force");
            false
        }
    }
}

/// Drops an inbox entry as done when the last holder (the dispatcher, run
/// tasks) lets go of it.
struct DoneToken {
    seq: Option<u64>,
    inbox: Inbox,
}

impl Drop for DoneToken {
    fn drop(&mut self) {
        if let Some(seq) = self.seq {
            self.inbox.done(seq);
        }
    }
}

struct Settling {
    due: tokio::time::Instant,
    inc: Incoming,
}

async fn dispatch(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Incoming>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(shared.cfg.concurrency));
    let mut runs: JoinSet<()> = JoinSet::new();
    let settle = shared.cfg.webhook.settle.std();
    // Min-heap on due time; entries carry an index into `settling`.
    let mut heap: BinaryHeap<Reverse<(tokio::time::Instant, u64)>> = BinaryHeap::new();
    let mut settling: HashMap<u64, Settling> = HashMap::new();
    let mut next_id = 0u64;
    let mut buf = Vec::with_capacity(1024);
    let mut expiry = tokio::time::interval(std::time::Duration::from_secs(1));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next_due = heap.peek().map(|Reverse((t, _))| *t);
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            n = rx.recv_many(&mut buf, 1024) => {
                if n == 0 { break; }
                let mut now_batch = Vec::with_capacity(n);
                for inc in buf.drain(..) {
                    if inc.event.status == Status::Resolved && inc.event.trigger == TriggerKind::Alert {
                        cancel_settling(&shared, &inc, &mut settling, settle);
                        cancel_approvals(&shared, &inc);
                        shared.resolved.lock().unwrap_or_else(|p| p.into_inner())
                            .insert(inc.event.fingerprint.clone(), inc.at);
                        now_batch.push(inc);
                    } else if !settle.is_zero() && inc.event.trigger == TriggerKind::Alert {
                        let due = tokio::time::Instant::now() + settle;
                        heap.push(Reverse((due, next_id)));
                        settling.insert(next_id, Settling { due, inc });
                        next_id += 1;
                    } else {
                        now_batch.push(inc);
                    }
                }
                decide_batch(&shared, now_batch, &permits, &mut runs);
            }
            _ = async { tokio::time::sleep_until(next_due.unwrap_or_else(tokio::time::Instant::now)).await }, if next_due.is_some() => {
                let now = tokio::time::Instant::now();
                let mut due = Vec::new();
                while let Some(Reverse((t, id))) = heap.peek().copied() {
                    if t > now { break; }
                    heap.pop();
                    if let Some(s) = settling.remove(&id) {
                        debug_assert!(s.due <= now);
                        due.push(s.inc);
                    }
                }
                decide_batch(&shared, due, &permits, &mut runs);
            }
            Some(_) = runs.join_next(), if !runs.is_empty() => {}
            _ = expiry.tick() => expire_approvals(&shared),
        }
    }
    // Stop: settling and queued events stay in the inbox (not done) and are
    // decided after the next start. Running actions get the grace period.
    shared.stopping.store(true, Ordering::SeqCst);
    let left = runs.len();
    if left > 0 {
        tracing::info!(runs = left, grace = %shared.cfg.shutdown_grace, "waiting for running actions");
    }
    let grace = shared.cfg.shutdown_grace.std();
    let drained =
        tokio::time::timeout(grace, async { while runs.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            runs = runs.len(),
            "shutdown grace over: interrupting running actions"
        );
        runs.abort_all();
        while runs.join_next().await.is_some() {}
    }
    // Events never decided keep their inbox entry; forget nothing else.
    drop(settling);
}

/// A resolved alert cancels its firing deliveries still settling.
fn cancel_settling(
    shared: &Arc<Shared>,
    resolved: &Incoming,
    settling: &mut HashMap<u64, Settling>,
    settle: std::time::Duration,
) {
    let fp = &resolved.event.fingerprint;
    let ids: Vec<u64> = settling
        .iter()
        .filter(|(_, s)| s.inc.event.fingerprint == *fp && s.inc.event.status == Status::Firing)
        .map(|(id, _)| *id)
        .collect();
    if ids.is_empty() {
        return;
    }
    let engine = shared.engine();
    let now = Utc::now();
    let reason = format!(
        "cancelled: the alert resolved at {} before the agent acted (settle {})",
        resolved.at.format("%Y-%m-%dT%H:%M:%SZ"),
        humantime::format_duration(settle)
    );
    let batch = Batch::default();
    let mut tokens = Vec::new();
    for id in ids {
        let Some(s) = settling.remove(&id) else {
            continue;
        };
        shared.metrics.queue_depth.dec();
        for p in engine.suppress(&s.inc.event, &reason, now) {
            count_decision(shared, &p);
            // Records only: a suppressed run never reaches a driver.
            let _ = futures_now(engine.execute_shared(p, &batch));
        }
        tokens.push(DoneToken {
            seq: s.inc.seq,
            inbox: shared.inbox.clone(),
        });
    }
    let recs = batch.0.into_inner().unwrap_or_else(|p| p.into_inner());
    shared.audit_batch(&recs);
    drop(tokens);
}

/// Polls a future that completes without waiting (the engine's record-only
/// path never awaits I/O); anything else is a bug, reported as an error.
fn futures_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => {
            tracing::error!("record-only run did not complete synchronously");
            None
        }
    }
}

fn count_schedule_event(shared: &Shared) {
    shared
        .metrics
        .events
        .get_or_create(&crate::metrics::EventLabels {
            trigger: "schedule",
            status: "firing",
        })
        .inc();
}

fn count_decision(shared: &Shared, p: &Planned) {
    shared
        .metrics
        .decisions
        .get_or_create(&DecisionLabels {
            playbook: p.playbook.clone(),
            action: p
                .steps
                .first()
                .map(|s| s.action.to_string())
                .unwrap_or_default(),
            decision: p.decision.as_str(),
        })
        .inc();
}

fn decide_batch(
    shared: &Arc<Shared>,
    incs: Vec<Incoming>,
    permits: &Arc<Semaphore>,
    runs: &mut JoinSet<()>,
) {
    if incs.is_empty() {
        return;
    }
    let engine = shared.engine();
    let batch = Batch::default();
    let mut tokens = Vec::with_capacity(incs.len());
    let mut quiet_notices = Vec::new();
    for inc in incs {
        shared.metrics.queue_depth.dec();
        let span = info_span!(
            "event",
            trigger = inc.event.trigger.as_str(),
            status = inc.event.status.as_str(),
            fingerprint = %inc.event.fingerprint,
            alertname = inc.event.alertname().unwrap_or(""),
            playbook = inc.event.playbook.as_deref().unwrap_or(""),
        );
        let _g = span.enter();
        let now = Utc::now();
        let token = Arc::new(DoneToken {
            seq: inc.seq,
            inbox: shared.inbox.clone(),
        });
        let planned = match (&inc.approved, &inc.event.trigger, &inc.event.playbook) {
            (Some(a), _, _) => {
                let mut ledger = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
                ledger.begin_group(inc.group);
                let p = engine.decide_approved(&inc.event, &a.playbook, shared.cfg.dry_run, now, &mut ledger);
                if p.is_none() {
                    tracing::warn!(approval = %a.id, playbook = %a.playbook, "approved playbook is no longer loaded; nothing done");
                }
                p.into_iter().collect()
            }
            (None, TriggerKind::Schedule, Some(pb)) if running(shared, pb) > 0 => engine.suppress(
                &inc.event,
                "skipped: the previous run of this playbook is still in progress (overlapping schedule tick)",
                now,
            ),
            _ => {
                let mut ledger = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
                ledger.begin_group(inc.group);
                engine.decide(&inc.event, shared.cfg.dry_run, now, &mut ledger)
            }
        };
        if planned.is_empty() {
            tracing::debug!("no playbook matches");
        }
        for p in planned {
            count_decision(shared, &p);
            tracing::info!(playbook = %p.playbook, target_ref = %p.target_display(), decision = p.decision.as_str(), reason = p.decision.reason(), "decided");
            let needs_driver = match p.decision {
                Decision::Execute => true,
                Decision::DryRun(_) => p
                    .steps
                    .iter()
                    .any(|s| engine.registry.get(s.action).is_some()),
                _ => false,
            };
            if needs_driver {
                spawn_run(shared, &engine, p, inc.at, token.clone(), permits, runs);
            } else {
                let fp = p.trigger.fingerprint.clone();
                let runbook = runbook_of(&engine, &p.playbook);
                let hold = matches!(p.decision, Decision::NeedsApproval(_))
                    .then(|| request_approval(shared, &engine, &p, &inc.event, now));
                if let Some(Ok(rep)) = futures_now(engine.execute_shared(p, &batch)) {
                    if wants_notice(shared, &rep) {
                        let mut n = notice(shared, &rep, runbook);
                        n.how_to_approve = hold.flatten();
                        quiet_notices.push(n);
                    }
                } else {
                    tracing::error!(fingerprint = %fp, "could not record a decision");
                }
            }
        }
        tokens.push(token);
    }
    let recs = batch.0.into_inner().unwrap_or_else(|p| p.into_inner());
    shared.audit_batch(&recs);
    // Only now, with the records durable, may the inbox forget the events.
    drop(tokens);
    for n in quiet_notices {
        let shared = shared.clone();
        runs.spawn(async move { send_notice(&shared, n).await });
    }
}

/// Records a run held for approval; returns how to approve it.
fn request_approval(
    shared: &Shared,
    engine: &Engine,
    p: &Planned,
    event: &Event,
    now: DateTime<Utc>,
) -> Option<String> {
    let id = p.steps.first()?.id.clone();
    let timeout = engine
        .config
        .policies
        .get(&p.policy)
        .and_then(|pol| pol.doc.spec.approval.timeout.map(|t| t.chrono()))
        .unwrap_or_else(|| chrono::Duration::minutes(30));
    let pending = crate::approvals::Pending {
        id: id.clone(),
        playbook: p.playbook.clone(),
        policy: p.policy.clone(),
        target: p.target_display(),
        target_fields: p.target.clone(),
        reason: p.decision.reason().to_string(),
        actions: p.steps.iter().map(|s| s.action.to_string()).collect(),
        requested_at: now,
        expires_at: now + timeout,
        event: event.clone(),
    };
    let mut a = shared.approvals.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = a.request(pending) {
        shared.metrics.storage_errors.inc();
        tracing::error!(error = %e, "cannot record an approval request; the run stays held and cannot be approved");
        return None;
    }
    let url = shared.external_url();
    Some(format!(
        "approve within {}: `remediate approve {id} --agent {url}` (or `remediate deny {id} ...`), or POST {url}/api/v1/approvals/{id} with {{\"decision\":\"approve\"}}",
        humantime::format_duration(timeout.to_std().unwrap_or_default())
    ))
}

/// The audit record of an approval's answer (same id as the held run).
fn approval_record(
    shared: &Shared,
    p: &crate::approvals::Pending,
    answer: crate::approvals::Answer,
    outcome: String,
) -> Record {
    Record {
        ts: Utc::now(),
        id: p.id.clone(),
        trigger: crate::audit::TriggerRef::from_event(&p.event),
        playbook: p.playbook.clone(),
        action: p.actions.first().cloned().unwrap_or_default(),
        target: p.target_fields.clone(),
        params: serde_json::Value::Null,
        decision: answer.as_str().to_string(),
        reason: p.reason.clone(),
        dry_run: true,
        phase: Phase::Planned,
        outcome,
        duration_ms: (Utc::now() - p.requested_at).num_milliseconds().max(0) as u64,
        node: shared.node.clone(),
        policy: p.policy.clone(),
        step: 0,
        decided_at: None,
    }
}

fn cancel_approvals(shared: &Shared, resolved: &Incoming) {
    let mut a = shared.approvals.lock().unwrap_or_else(|e| e.into_inner());
    for id in a.for_fingerprint(&resolved.event.fingerprint) {
        if let Ok(p) = a.answer(
            &id,
            crate::approvals::Answer::Cancelled,
            "alert resolved",
            Utc::now(),
        ) {
            let rec = approval_record(
                shared,
                &p,
                crate::approvals::Answer::Cancelled,
                format!(
                    "approval {id} cancelled: the alert resolved at {}; nothing done",
                    resolved.at.format("%Y-%m-%dT%H:%M:%SZ")
                ),
            );
            let _ = shared.append(&rec);
        }
    }
}

fn expire_approvals(shared: &Shared) {
    let now = Utc::now();
    let mut a = shared.approvals.lock().unwrap_or_else(|e| e.into_inner());
    for id in a.expired(now) {
        if let Ok(p) = a.answer(&id, crate::approvals::Answer::Expired, "timeout", now) {
            let rec = approval_record(
                shared,
                &p,
                crate::approvals::Answer::Expired,
                format!(
                    "approval {id} expired at {} unanswered; nothing done",
                    p.expires_at.format("%Y-%m-%dT%H:%M:%SZ")
                ),
            );
            tracing::info!(approval = %id, playbook = %p.playbook, "approval expired");
            let _ = shared.append(&rec);
        }
    }
}

/// Why an approval answer was refused.
#[derive(Debug)]
pub enum AnswerError {
    /// Unknown id, or already answered / expired / cancelled.
    NotPending(String),
    /// The journal or audit could not be written.
    Storage(String),
}

impl Shared {
    /// The URL this agent is reached at.
    pub fn external_url(&self) -> String {
        self.cfg
            .external_url
            .clone()
            .unwrap_or_else(|| format!("http://{}:{}", self.node, self.cfg.listen.port()))
    }

    /// Pending approvals, oldest first.
    pub fn pending_approvals(&self) -> Vec<crate::approvals::Pending> {
        self.approvals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending()
    }

    /// Approves or denies a held run. An approved run is queued to be
    /// decided again (every stage but approval re-evaluated now).
    pub fn answer_approval(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        comment: &str,
    ) -> Result<crate::approvals::Pending, AnswerError> {
        use crate::approvals::Answer;
        let answer = if approve {
            Answer::Approved
        } else {
            Answer::Denied
        };
        let mut a = self.approvals.lock().unwrap_or_else(|e| e.into_inner());
        let p = match a.answer(id, answer, by, Utc::now()) {
            Ok(p) => p,
            Err(crate::approvals::Error::NotPending(_)) => {
                let why = match a.answered(id) {
                    Some((ans, who)) => {
                        format!("approval {id} is already {} ({who})", ans.as_str())
                    }
                    None => format!("no pending approval {id}"),
                };
                return Err(AnswerError::NotPending(why));
            }
            Err(e) => return Err(AnswerError::Storage(e.to_string())),
        };
        drop(a);
        let note = if comment.is_empty() {
            String::new()
        } else {
            format!(": {comment}")
        };
        let outcome = if approve {
            format!("approved by {by}{note}; decided again now (limits and windows re-checked)")
        } else {
            format!("denied by {by}{note}; nothing done")
        };
        let rec = approval_record(self, &p, answer, outcome);
        self.append(&rec)
            .map_err(|e| AnswerError::Storage(e.to_string()))?;
        tracing::info!(approval = %id, playbook = %p.playbook, by, approved = approve, "approval answered");
        if approve {
            self.metrics.queue_depth.inc();
            let _ = self.queue.send(Incoming {
                seq: None,
                group: self.group(),
                at: Utc::now(),
                event: p.event.clone(),
                approved: Some(ApprovedRun {
                    id: id.to_string(),
                    playbook: p.playbook.clone(),
                    by: by.to_string(),
                }),
            });
        }
        Ok(p)
    }
}

fn running(shared: &Shared, playbook: &str) -> usize {
    shared
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(playbook)
        .copied()
        .unwrap_or(0)
}

fn runbook_of(engine: &Engine, playbook: &str) -> Option<String> {
    engine
        .config
        .playbook(playbook)
        .and_then(|p| p.doc.metadata.runbook.clone())
}

/// Marks a playbook as running for as long as it lives.
struct RunningGuard {
    shared: Arc<Shared>,
    playbook: String,
    /// Set for executing runs: the policy whose concurrency they count against.
    policy: Option<String>,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if let Some(p) = &self.policy {
            self.shared
                .ledger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .run_finished(p);
        }
        let mut m = self
            .shared
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.playbook) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.playbook);
            }
        }
    }
}

fn spawn_run(
    shared: &Arc<Shared>,
    engine: &Arc<Engine>,
    mut planned: Planned,
    received: DateTime<Utc>,
    token: Arc<DoneToken>,
    permits: &Arc<Semaphore>,
    runs: &mut JoinSet<()>,
) {
    *shared
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(planned.playbook.clone())
        .or_insert(0) += 1;
    let executes = planned.decision == Decision::Execute;
    if executes {
        // Counted from the decision on, so the next decision sees it.
        shared
            .ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .run_started(&planned.policy);
    }
    let guard = RunningGuard {
        shared: shared.clone(),
        playbook: planned.playbook.clone(),
        policy: executes.then(|| planned.policy.clone()),
    };
    let shared = shared.clone();
    let engine = engine.clone();
    let permits = permits.clone();
    let span = info_span!("run", playbook = %planned.playbook, target_ref = %planned.target_display(), fingerprint = %planned.trigger.fingerprint);
    runs.spawn(
        async move {
            let _token = token;
            let Ok(permit) = permits.acquire_owned().await else {
                return;
            };
            // A resolved alert cancels a run that is still waiting for its turn.
            let resolved_at = shared
                .resolved
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&planned.trigger.fingerprint)
                .copied();
            if let Some(r) = resolved_at.filter(|r| *r >= received) {
                planned.decision = Decision::Suppressed(format!(
                    "cancelled: the alert resolved at {} while the run waited for a concurrency slot",
                    r.format("%Y-%m-%dT%H:%M:%SZ")
                ));
            }
            let runbook = runbook_of(&engine, &planned.playbook);
            shared.metrics.in_flight.inc();
            let rep = engine.execute_shared(planned, &*shared).await;
            shared.metrics.in_flight.dec();
            drop(permit);
            drop(guard);
            match rep {
                Ok(rep) => {
                    observe(&shared, &rep);
                    let escalation = breaker_escalation(&shared, &engine, &rep, runbook.clone());
                    if wants_notice(&shared, &rep) {
                        let n = notice(&shared, &rep, runbook);
                        send_notice(&shared, n).await;
                    }
                    if let Some(n) = escalation {
                        send_notice(&shared, n).await;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit write failed; the run stopped before changing anything further");
                }
            }
        }
        .instrument(span),
    );
}

fn observe(shared: &Shared, rep: &RunReport) {
    for r in &rep.records {
        if matches!(r.phase, Phase::Verified | Phase::Failed) && !r.action.is_empty() {
            shared
                .metrics
                .action_duration
                .get_or_create(&crate::metrics::ActionLabels {
                    action: r.action.clone(),
                })
                .observe(r.duration_ms as f64 / 1000.0);
        }
    }
    if rep.failed_at.is_some() {
        let failed = rep
            .records
            .iter()
            .rev()
            .find(|r| r.phase == Phase::Failed)
            .map(|r| r.action.clone())
            .unwrap_or_default();
        shared
            .metrics
            .failures
            .get_or_create(&FailureLabels {
                playbook: rep.planned.playbook.clone(),
                action: failed,
            })
            .inc();
    }
    rep.enter(&mut shared.ledger.lock().unwrap_or_else(|p| p.into_inner()));
}

/// After a failed run: if it opened the playbook's circuit breaker, the one
/// escalation notice for that opening (None when already sent or not open).
fn breaker_escalation(
    shared: &Shared,
    engine: &Engine,
    rep: &RunReport,
    runbook: Option<String>,
) -> Option<Notice> {
    rep.failed_at?;
    let p = &rep.planned;
    let spec = engine
        .config
        .policies
        .get(&p.policy)?
        .doc
        .spec
        .circuit_breaker
        .clone()?;
    let now = Utc::now();
    let state = shared
        .ledger
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .breaker_state(
            &p.policy,
            &p.playbook,
            spec.failures,
            spec.within.chrono(),
            spec.open_for.chrono(),
            now,
        );
    let crate::policy::BreakerState::Open { opened, .. } = state else {
        return None;
    };
    let fresh = shared
        .escalated
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((p.policy.clone(), p.playbook.clone(), opened));
    if !fresh {
        return None;
    }
    tracing::warn!(playbook = %p.playbook, policy = %p.policy, %opened, "circuit breaker opened");
    let mut n = notice(shared, rep, runbook);
    n.decision = "circuit-open".into();
    n.status = "failed".into();
    n.reason = format!("{} failed runs within {}", spec.failures, spec.within);
    n.outcome = format!(
        "circuit breaker opened at {}: {} is suppressed until {}, then one trial run is allowed; the last failure: {}",
        opened.format("%Y-%m-%dT%H:%M:%SZ"),
        p.playbook,
        (opened + spec.open_for.chrono()).format("%Y-%m-%dT%H:%M:%SZ"),
        n.outcome
    );
    Some(n)
}

fn wants_notice(shared: &Shared, rep: &RunReport) -> bool {
    !shared.notifier.is_empty()
        && (matches!(rep.status, RunStatus::Failed(_))
            || shared
                .cfg
                .notify
                .iter()
                .any(|s| s.on.iter().any(|d| d == rep.planned.decision.as_str())))
}

fn notice(shared: &Shared, rep: &RunReport, runbook: Option<String>) -> Notice {
    let p = &rep.planned;
    let (status, outcome) = match &rep.status {
        RunStatus::Verified => (
            "verified",
            rep.records
                .last()
                .map(|r| r.outcome.clone())
                .unwrap_or_default(),
        ),
        RunStatus::Failed(m) => ("failed", m.clone()),
        RunStatus::NotExecuted => (
            "not-executed",
            rep.records
                .first()
                .map(|r| r.outcome.clone())
                .unwrap_or_default(),
        ),
    };
    Notice {
        playbook: p.playbook.clone(),
        runbook,
        alertname: p.trigger.alertname.clone(),
        trigger: p.trigger.kind.as_str().to_string(),
        trigger_kind: p.trigger.kind,
        fingerprint: p.trigger.fingerprint.clone(),
        target: p.target_display(),
        actions: p.steps.iter().map(|s| s.action.to_string()).collect(),
        decision: p.decision.as_str().to_string(),
        reason: p.decision.reason().to_string(),
        status: status.to_string(),
        outcome,
        node: shared.node.clone(),
        audit_id: rep
            .records
            .first()
            .map(|r| r.id.clone())
            .unwrap_or_default(),
        decided_at: p.decided_at,
        how_to_approve: None,
    }
}

async fn send_notice(shared: &Shared, n: Notice) {
    for d in shared.notifier.send(&n).await {
        let ok = d.result.is_ok();
        shared
            .metrics
            .notifications
            .get_or_create(&NotifyLabels {
                sink: d.sink.clone(),
                result: if ok { "success" } else { "failure" },
            })
            .inc();
        if let Err(msg) = d.result {
            tracing::warn!(sink = %d.sink, error = %msg, "notification failed");
            let rec = Record {
                ts: Utc::now(),
                id: uuid::Uuid::now_v7().to_string(),
                trigger: crate::audit::TriggerRef {
                    kind: n.trigger_kind,
                    alertname: n.alertname.clone(),
                    fingerprint: n.fingerprint.clone(),
                    status: Status::Firing,
                    labels: Default::default(),
                    annotations: Default::default(),
                    values: Default::default(),
                    starts_at: None,
                },
                playbook: n.playbook.clone(),
                action: format!("notify:{}", d.sink),
                target: Default::default(),
                params: serde_json::Value::Null,
                decision: "notify".into(),
                reason: format!(
                    "notification of decision {} (audit id {})",
                    n.decision, n.audit_id
                ),
                dry_run: false,
                phase: Phase::Failed,
                outcome: msg,
                duration_ms: 0,
                node: shared.node.clone(),
                policy: String::new(),
                step: 0,
                decided_at: None,
            };
            if let Err(e) = shared.append(&rec) {
                tracing::error!(error = %e, "cannot audit a failed notification");
            }
        }
    }
}

/// A helper for callers: the agent's node name from the config, the
/// environment or the host name.
pub fn node_name(cfg: &AgentConfig) -> String {
    cfg.node
        .clone()
        .or_else(|| std::env::var("REMEDIATE_NODE").ok())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Reads source directories for `--check`.
pub fn describe_sources(cfg: &AgentConfig) -> (String, String) {
    let show = |d: &Option<PathBuf>| match d {
        Some(p) => p.display().to_string(),
        None => "embedded bundle".to_string(),
    };
    (show(&cfg.playbooks), show(&cfg.policies))
}
