//! The agent's durable state: one SQLite database, `stateDir/state.db`.
//!
//! What must be consistent together commits together or not at all: an
//! accepted event and its dedupe key; a decision's audit records, the limit
//! state they charge (executions, failures, successes), the steps in flight,
//! the event's inbox row and the approval they answer. Recovery is reading
//! the store, never repairing text, so start-up costs what the store holds
//! (the limit windows, pending events and approvals), not the history.
//!
//! The audit log (`audit.jsonl`) stays the append-only record for people and
//! for `replay`. Every record is committed here first (the outbox, with its
//! sequence number) and then appended to the log (fsynced); once written it
//! leaves the outbox. A log write that fails (a full disk) is cut back to
//! its last whole line and retried from the outbox until it succeeds, so no
//! record is lost and none is glued onto a torn one. Each log line carries
//! its `seq`, so after a crash between the two writes the log is resumed
//! exactly where it stopped.
//!
//! One thread owns the database. Callers hand it jobs; it applies every job
//! that is waiting in one transaction and one commit (group commit), then
//! answers each, so many concurrent webhooks share one fsync.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::approvals::{Answer, Approvals, Pending};
use super::pauses::{Pause, Pauses};
use crate::audit::{self, Phase, Record};
use crate::event::{Event, TriggerKind};
use crate::policy::Ledger;

/// Bumped when the schema changes; older stores are upgraded on open.
const SCHEMA_VERSION: i64 = 1;

/// Answered approvals are remembered this long (to say "already approved").
const ANSWERED_KEPT: chrono::Duration = chrono::Duration::days(7);

/// Bytes of committed log lines kept in memory for the log writer before it
/// reads them back from the outbox instead (a log that keeps failing).
const UNWRITTEN_IN_MEMORY: usize = 4 << 20;

/// Done marks waiting for a transaction of their own, at most (they need
/// no fsync of their own: a lost one leaves an entry already decided).
const DONE_DEFERRED: usize = 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Accepted events not yet done; `decided` once a record of theirs is committed.
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, decided INTEGER NOT NULL DEFAULT 0,
    event TEXT NOT NULL);
-- The last accepted delivery of each alert and status, for dedupe.
CREATE TABLE IF NOT EXISTS seen (
    fingerprint TEXT NOT NULL, status TEXT NOT NULL, starts_at INTEGER, at INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, status));
CREATE INDEX IF NOT EXISTS seen_at ON seen (at);
-- Limit state: executed runs and their outcomes, inside the longest window.
CREATE TABLE IF NOT EXISTS executions (
    at INTEGER NOT NULL, policy TEXT NOT NULL, playbook TEXT NOT NULL, target TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS executions_at ON executions (at);
CREATE TABLE IF NOT EXISTS outcomes (
    at INTEGER NOT NULL, policy TEXT NOT NULL, playbook TEXT NOT NULL, ok INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS outcomes_at ON outcomes (at);
-- Executed steps planned and without an outcome: interrupted if still here at start.
CREATE TABLE IF NOT EXISTS steps (id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY, request TEXT NOT NULL, answer TEXT, answered_by TEXT, answered_at INTEGER);
-- Approved runs not decided yet: queued again at start (the approval is
-- spent, so nothing else would run them). Deleted with their decision.
CREATE TABLE IF NOT EXISTS approved_runs (id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS schedules (playbook TEXT PRIMARY KEY, last INTEGER NOT NULL);
-- Verified runs whose alert has not resolved yet: resolved or unresolved later.
CREATE TABLE IF NOT EXISTS watches (id TEXT PRIMARY KEY, watch TEXT NOT NULL);
-- Playbooks (or playbooks on one target) paused by a person until a time.
CREATE TABLE IF NOT EXISTS pauses (id TEXT PRIMARY KEY, until INTEGER NOT NULL, pause TEXT NOT NULL);
-- Audit records committed and not yet in the log, as the log lines to write.
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, line TEXT NOT NULL);
";

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened, read or written.
    #[error("state store {path}: {message}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The store thread has stopped.
    #[error("state store is closed")]
    Closed,
    /// The data found does not make sense (a damaged audit log during upgrade).
    #[error("{0}")]
    Invalid(String),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct Options {
    /// The database file.
    pub path: PathBuf,
    /// The audit log the records are appended to.
    pub audit: PathBuf,
    /// The audit log's rotation.
    pub rotation: audit::Rotation,
    /// How long a delivery is remembered to drop duplicates.
    pub dedupe_window: chrono::Duration,
    /// Two deliveries of one alert whose `startsAt` differ by at most this
    /// are one episode (Alertmanager HA pairs fed by Prometheus replicas).
    pub dedupe_tolerance: chrono::Duration,
    /// Limit state older than this is pruned: the longest window any loaded
    /// policy can ask about.
    pub horizon: chrono::Duration,
    /// Legacy journals to upgrade from, when the database does not exist yet.
    pub legacy_inbox: PathBuf,
    /// See `legacy_inbox`.
    pub legacy_approvals: PathBuf,
}

/// An event the store has made durable.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Inbox sequence number (for [`Store::done`]).
    pub seq: u64,
    /// When it was received.
    pub at: DateTime<Utc>,
    /// The event.
    pub event: Event,
}

/// What one `accept` did.
#[derive(Debug, Default)]
pub struct AcceptResult {
    /// New deliveries, durable now.
    pub accepted: Vec<Accepted>,
    /// Deliveries of an episode already accepted inside the dedupe window.
    pub duplicates: usize,
}

/// A change committed in one transaction.
#[derive(Debug, Default)]
pub struct Commit {
    /// Audit records; the limit state and steps in flight follow from them.
    pub records: Vec<Record>,
    /// Inbox entries whose decision these records are: never decided again.
    pub decided: Vec<u64>,
    /// Inbox entries done: every run of theirs is recorded.
    pub done: Vec<u64>,
    /// Approval requests and answers.
    pub approvals: Vec<ApprovalChange>,
    /// Verified runs watched until their alert resolves, and watches ended.
    pub watches: Vec<WatchChange>,
    /// Pauses set and lifted.
    pub pauses: Vec<PauseChange>,
}

/// A verified run whose trigger is watched: the alert's resolution makes
/// it `resolved`; still firing at `deadline` makes it `unresolved`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Watch {
    /// The run's last record (verified); the outcome record is made from it.
    pub record: Record,
    /// When the alert started firing.
    pub starts_at: Option<DateTime<Utc>>,
    /// When the run was verified.
    pub verified_at: DateTime<Utc>,
    /// When it counts as unresolved (`escalateAfter` after verification).
    pub deadline: DateTime<Utc>,
}

impl Watch {
    /// The watch's identity: the run's last step id.
    pub fn id(&self) -> &str {
        &self.record.id
    }
}

/// A change to the watched runs.
#[derive(Debug, Clone)]
pub enum WatchChange {
    /// Start watching.
    Add(Box<Watch>),
    /// Stop watching (the outcome is recorded in the same commit).
    Remove(String),
}

/// A change to the pauses.
#[derive(Debug, Clone)]
pub enum PauseChange {
    /// A pause is set.
    Set(Pause),
    /// A pause is lifted before its end.
    Lift(String),
}

/// A change to the approvals.
#[derive(Debug, Clone)]
pub enum ApprovalChange {
    /// A run is held for approval.
    Request(Box<Pending>),
    /// The run an approval let go was decided (its records are in the
    /// same commit): it is not queued again at start.
    Ran(String),
    /// A held run was answered.
    Answer {
        /// Approval id.
        id: String,
        /// How.
        answer: Answer,
        /// Who (or `timeout`, `alert resolved`).
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// What the store held at open.
#[derive(Debug)]
pub struct Opened {
    /// The handle.
    pub store: Store,
    /// Accepted events not yet decided, oldest first.
    pub pending: Vec<Accepted>,
    /// The limit state inside the horizon, interrupted steps included.
    pub ledger: Ledger,
    /// Pending approvals (and recent answers).
    pub approvals: Approvals,
    /// Approved runs the previous agent had not decided yet, with who
    /// approved them: to be queued again.
    pub approved_runs: Vec<(Pending, String)>,
    /// Pauses in force.
    pub pauses: Pauses,
    /// When each playbook last ran on its schedule.
    pub schedules: HashMap<String, DateTime<Utc>>,
    /// Verified runs whose alert had not resolved yet.
    pub watches: Vec<Watch>,
    /// Steps the previous agent planned and never finished, now recorded as
    /// failed (interrupted).
    pub interrupted: Vec<Record>,
    /// What an upgrade from the legacy journals carried over, if one ran.
    pub upgraded: Option<String>,
}

/// Whether the store's writes are failing, for `/readyz` and `/metrics`.
#[derive(Debug, Default)]
pub struct Health {
    failing: AtomicBool,
    errors: AtomicU64,
    reopened: AtomicU64,
    last_error: Mutex<String>,
}

impl Health {
    /// True while the last write to the database or the audit log failed.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }
    /// Writes that failed since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    /// Times the audit log was found deleted or replaced and reopened.
    pub fn reopened(&self) -> u64 {
        self.reopened.load(Ordering::Relaxed)
    }
    /// The last write error, if any.
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn fail(&self, what: &str) {
        if !self.failing.swap(true, Ordering::SeqCst) {
            tracing::error!(error = %what, "storage is failing: nothing new is decided until it recovers");
        }
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = what.to_string();
    }
    fn ok(&self) {
        if self.failing.swap(false, Ordering::SeqCst) {
            tracing::warn!("storage recovered: writes succeed again");
        }
    }
}

enum Job {
    Accept {
        events: Vec<Event>,
        at: DateTime<Utc>,
        /// None: the configured tolerance; native triggers' episodes are exact.
        tolerance: Option<chrono::Duration>,
        reply: oneshot::Sender<Result<AcceptResult, String>>,
    },
    Commit {
        commit: Box<Commit>,
        reply: mpsc::SyncSender<Result<(), String>>,
    },
    Done(u64),
    Horizon(chrono::Duration),
    Stop(oneshot::Sender<()>),
}

/// A queued accept: events, when, its own tolerance, where to answer.
type AcceptJob = (
    Vec<Event>,
    DateTime<Utc>,
    Option<chrono::Duration>,
    oneshot::Sender<Result<AcceptResult, String>>,
);

/// A queued commit and where to answer.
type CommitJob = (Box<Commit>, mpsc::SyncSender<Result<(), String>>);

/// A committed audit log line and its sequence number.
type LogLine = (u64, String);

/// Handle to the store thread. Cloneable; the thread stops on [`Store::close`].
#[derive(Clone, Debug)]
pub struct Store {
    tx: mpsc::Sender<Job>,
    health: Arc<Health>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

/// (device, inode) of a file, if it exists.
fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Times are stored as nanoseconds since the epoch (exact to what the
/// engine records; i64 holds them until 2262).
fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

fn from_nanos(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(ns)
}

impl Store {
    /// Opens (creating, or upgrading from the legacy journals) the store,
    /// records the steps a previous stop interrupted, and returns what it holds.
    pub fn open(opts: Options, now: DateTime<Utc>) -> Result<Opened> {
        let db = |e: rusqlite::Error| Error::Db {
            path: opts.path.clone(),
            message: e.to_string(),
        };
        if let Some(dir) = opts.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::Db {
                path: opts.path.clone(),
                message: e.to_string(),
            })?;
        }
        let fresh = !opts.path.exists();
        let mut conn = Connection::open(&opts.path).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        // FULL: a commit is on disk (the WAL fsynced) when it returns.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        // Small state volumes: checkpoint the WAL every 100 pages (~400 KiB)
        // and cut it back to 1 MiB after a checkpoint.
        conn.pragma_update(None, "wal_autocheckpoint", 100)
            .map_err(db)?;
        conn.pragma_update(None, "journal_size_limit", 1 << 20)
            .map_err(db)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db)?;
        if !fresh {
            let ok: String = conn
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .map_err(db)?;
            if ok != "ok" {
                return Err(Error::Db {
                    path: opts.path.clone(),
                    message: format!("the database is damaged ({ok}); nothing is decided until it is repaired or moved aside (the audit log keeps the history)"),
                });
            }
        }
        conn.execute_batch(SCHEMA).map_err(db)?;
        let version: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map_err(db)?
            .and_then(|v| v.parse().ok());
        let mut upgraded = None;
        if version.is_none() {
            let tx = conn.transaction().map_err(db)?;
            if fresh {
                upgraded = super::legacy::upgrade(&tx, &opts, now)?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?1)",
                params![SCHEMA_VERSION.to_string()],
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
            if upgraded.is_some() {
                super::legacy::retire(&opts);
            }
        } else if version.is_some_and(|v| v > SCHEMA_VERSION) {
            return Err(Error::Db {
                path: opts.path.clone(),
                message: format!(
                    "written by a newer remediate (schema {}, this one knows {SCHEMA_VERSION}); run the newer version or move the state aside",
                    version.unwrap_or_default()
                ),
            });
        }

        let health = Arc::new(Health::default());
        let writer =
            audit::Writer::open_rotating(&opts.audit, opts.rotation).map_err(|e| Error::Db {
                path: opts.audit.clone(),
                message: e.to_string(),
            })?;
        let mut st = State {
            opts: opts.clone(),
            conn,
            writer,
            health: health.clone(),
            next_seq: 0,
            written: 0,
            unwritten: std::collections::VecDeque::new(),
            backlog_in_db: false,
            horizon: opts.horizon,
            last_prune: std::time::Instant::now(),
            db_id: file_id(&opts.path),
            last_check: std::time::Instant::now(),
            deferred_done: Vec::new(),
        };
        st.init_seq()?;
        // Whatever was committed and not yet logged goes to the log first.
        st.backlog_in_db = true;
        st.drain();

        // Steps the previous agent planned and never finished: failed, once.
        let open_steps: Vec<Record> = st.query_records("SELECT record FROM steps")?;
        let interrupted = audit::interrupted(&open_steps, now);
        if !interrupted.is_empty() {
            st.commit_now(Commit {
                records: interrupted.clone(),
                ..Commit::default()
            })
            .map_err(|e| Error::Db {
                path: opts.path.clone(),
                message: e,
            })?;
        }
        st.prune(now)?;
        let ledger = st.ledger()?;
        let pending = st.pending()?;
        let approvals = st.approvals()?;
        let approved_runs = st.approved_runs()?;
        let pauses = st.pauses()?;
        let schedules = st.schedules()?;
        let watches = st.watches()?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("state".into())
            .spawn(move || st.run(rx))
            .map_err(|e| Error::Db {
                path: opts.path.clone(),
                message: format!("cannot start the store thread: {e}"),
            })?;
        Ok(Opened {
            store: Store { tx, health },
            pending,
            ledger,
            approvals,
            approved_runs,
            pauses,
            schedules,
            watches,
            interrupted,
            upgraded,
        })
    }

    /// Whether writes are failing.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Makes new deliveries durable; duplicates are counted, not stored.
    pub async fn accept(&self, events: Vec<Event>, at: DateTime<Utc>) -> Result<AcceptResult> {
        self.accept_with(events, at, None).await
    }

    /// [`Store::accept`] with a tolerance of its own: zero for the native
    /// triggers, whose episodes (and their `startsAt`) are exact.
    pub async fn accept_with(
        &self,
        events: Vec<Event>,
        at: DateTime<Utc>,
        tolerance: Option<chrono::Duration>,
    ) -> Result<AcceptResult> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Accept {
                events,
                at,
                tolerance,
                reply,
            })
            .map_err(|_| Error::Closed)?;
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(message)) => Err(Error::Invalid(message)),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Commits records and their state changes; durable when it returns.
    /// Blocks the caller for one group commit.
    pub fn commit(&self, commit: Commit) -> Result<()> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Job::Commit {
                commit: Box::new(commit),
                reply,
            })
            .map_err(|_| Error::Closed)?;
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(Error::Invalid(message)),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Marks an inbox entry done (its runs are recorded). Committed with the
    /// next transaction: losing it only leaves an entry already decided.
    pub fn done(&self, seq: u64) {
        let _ = self.tx.send(Job::Done(seq));
    }

    /// Sets the limit state's horizon (the longest window of the policies
    /// now loaded).
    pub fn set_horizon(&self, horizon: chrono::Duration) {
        let _ = self.tx.send(Job::Horizon(horizon));
    }

    /// Flushes and stops the store thread.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Job::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

struct State {
    opts: Options,
    conn: Connection,
    writer: audit::Writer,
    health: Arc<Health>,
    /// The next audit sequence number.
    next_seq: u64,
    /// The last sequence number written to the log.
    written: u64,
    /// Committed log lines not yet written (when `backlog_in_db` is false).
    unwritten: std::collections::VecDeque<(u64, String)>,
    /// Lines not yet written are (also) only in the outbox.
    backlog_in_db: bool,
    horizon: chrono::Duration,
    last_prune: std::time::Instant,
    /// (device, inode) of the database file we opened.
    db_id: Option<(u64, u64)>,
    last_check: std::time::Instant,
    /// Inbox entries done, not yet committed.
    deferred_done: Vec<u64>,
}

/// One audit log line: the record and its sequence number.
#[derive(serde::Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    record: &'a Record,
    seq: u64,
}

impl State {
    fn db(&self, e: rusqlite::Error) -> Error {
        Error::Db {
            path: self.opts.path.clone(),
            message: e.to_string(),
        }
    }

    /// Sequence numbers continue from the database and from the log's tail
    /// (what the log already has is not written twice).
    fn init_seq(&mut self) -> Result<()> {
        let last: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'seq'", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.db(e))?;
        let last: u64 = last.and_then(|v| v.parse().ok()).unwrap_or(0);
        let outbox: Option<i64> = self
            .conn
            .query_row("SELECT MAX(seq) FROM outbox", [], |r| r.get(0))
            .map_err(|e| self.db(e))?;
        self.next_seq = last.max(outbox.unwrap_or(0).max(0) as u64) + 1;
        self.written = audit::last_seq(&self.opts.audit).unwrap_or(0);
        Ok(())
    }

    fn query_records(&self, sql: &str) -> Result<Vec<Record>> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        for row in rows {
            let text = row.map_err(|e| self.db(e))?;
            let rec: Record = serde_json::from_str(&text)
                .map_err(|e| Error::Invalid(format!("state store: a stored record: {e}")))?;
            out.push(rec);
        }
        Ok(out)
    }

    fn ledger(&self) -> Result<Ledger> {
        let mut l = Ledger::default();
        let mut stmt = self
            .conn
            .prepare("SELECT at, policy, playbook, target FROM executions ORDER BY at")
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(|e| self.db(e))?;
        for row in rows {
            let (at, policy, playbook, target) = row.map_err(|e| self.db(e))?;
            l.record_execution(from_nanos(at), &policy, &playbook, &target);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT at, policy, playbook, ok FROM outcomes ORDER BY at")
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                ))
            })
            .map_err(|e| self.db(e))?;
        for row in rows {
            let (at, policy, playbook, ok) = row.map_err(|e| self.db(e))?;
            if ok {
                l.record_success(from_nanos(at), &policy, &playbook);
            } else {
                l.record_failure(from_nanos(at), &policy, &playbook);
            }
        }
        Ok(l)
    }

    /// Undecided inbox entries, oldest first; decided ones are done.
    fn pending(&mut self) -> Result<Vec<Accepted>> {
        self.conn
            .execute("DELETE FROM inbox WHERE decided = 1", [])
            .map_err(|e| self.db(e))?;
        let mut stmt = self
            .conn
            .prepare("SELECT seq, at, event FROM inbox ORDER BY seq")
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at, event) = row.map_err(|e| self.db(e))?;
            let event: Event = serde_json::from_str(&event)
                .map_err(|e| Error::Invalid(format!("state store: inbox entry {seq}: {e}")))?;
            out.push(Accepted {
                seq: seq as u64,
                at: from_nanos(at),
                event,
            });
        }
        Ok(out)
    }

    /// Every row of a one-column query of JSON documents, decoded; `what`
    /// names one in the error ("a watched run").
    fn json_rows<T: serde::de::DeserializeOwned>(&self, sql: &str, what: &str) -> Result<Vec<T>> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        for row in rows {
            let text = row.map_err(|e| self.db(e))?;
            out.push(
                serde_json::from_str(&text)
                    .map_err(|e| Error::Invalid(format!("state store: {what}: {e}")))?,
            );
        }
        Ok(out)
    }

    fn watches(&self) -> Result<Vec<Watch>> {
        self.json_rows("SELECT watch FROM watches", "a watched run")
    }

    fn approved_runs(&self) -> Result<Vec<(Pending, String)>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT a.request, a.answered_by FROM approved_runs r JOIN approvals a ON a.id = r.id
                 WHERE a.answer = 'approved' ORDER BY a.answered_at",
            )
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })
            .map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (request, by) = row.map_err(|e| self.db(e))?;
            let p: Pending = serde_json::from_str(&request)
                .map_err(|e| Error::Invalid(format!("state store: an approval: {e}")))?;
            out.push((p, by.unwrap_or_default()));
        }
        Ok(out)
    }

    fn approvals(&self) -> Result<Approvals> {
        let mut stmt = self
            .conn
            .prepare("SELECT request, answer, answered_by FROM approvals")
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })
            .map_err(|e| self.db(e))?;
        let mut pending = BTreeMap::new();
        let mut answered = BTreeMap::new();
        for row in rows {
            let (request, answer, by) = row.map_err(|e| self.db(e))?;
            let p: Pending = serde_json::from_str(&request)
                .map_err(|e| Error::Invalid(format!("state store: an approval: {e}")))?;
            match answer.as_deref().and_then(Answer::parse) {
                Some(a) => {
                    answered.insert(p.id.clone(), (a, by.unwrap_or_default()));
                }
                None => {
                    pending.insert(p.id.clone(), p);
                }
            }
        }
        Ok(Approvals::from_parts(pending, answered))
    }

    fn pauses(&self) -> Result<Pauses> {
        Ok(Pauses::from_list(
            self.json_rows("SELECT pause FROM pauses", "a pause")?,
        ))
    }

    fn schedules(&self) -> Result<HashMap<String, DateTime<Utc>>> {
        let mut stmt = self
            .conn
            .prepare("SELECT playbook, last FROM schedules")
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| self.db(e))?;
        let mut out = HashMap::new();
        for row in rows {
            let (pb, last) = row.map_err(|e| self.db(e))?;
            out.insert(pb, from_nanos(last));
        }
        Ok(out)
    }

    /// Forgets limit state, dedupe keys and answers no window can ask about.
    fn prune(&mut self, now: DateTime<Utc>) -> Result<()> {
        let horizon = nanos(now - self.horizon);
        let seen = nanos(now - self.opts.dedupe_window);
        let answered = nanos(now - ANSWERED_KEPT);
        let now_ns = nanos(now);
        self.conn
            .execute_batch(&format!(
                "DELETE FROM executions WHERE at < {horizon};
                 DELETE FROM outcomes WHERE at < {horizon};
                 DELETE FROM seen WHERE at < {seen};
                 DELETE FROM approvals WHERE answer IS NOT NULL AND answered_at < {answered};
                 DELETE FROM approved_runs WHERE id NOT IN (SELECT id FROM approvals);
                 DELETE FROM pauses WHERE until < {now_ns};"
            ))
            .map_err(|e| self.db(e))?;
        self.last_prune = std::time::Instant::now();
        Ok(())
    }

    fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            // Wake up now and then to retry a failing log and to prune.
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(j) => j,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.idle();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut jobs = vec![first];
            while let Ok(j) = rx.try_recv() {
                jobs.push(j);
            }
            if let Some(stop) = self.batch(jobs) {
                self.drain();
                // A clean stop leaves one self-contained database file.
                if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
                    tracing::warn!(error = %e, "state store: the final checkpoint failed; the WAL is replayed at the next start");
                }
                let _ = stop.send(());
                return;
            }
        }
    }

    fn idle(&mut self) {
        self.reopen_if_replaced();
        if !self.deferred_done.is_empty() {
            let done = std::mem::take(&mut self.deferred_done);
            if self.transaction(&[], &[], &done).is_err() {
                // Not committed (the store fails): try again next time.
                self.deferred_done = done;
            }
        }
        if !self.unwritten.is_empty() || self.backlog_in_db {
            self.drain();
        } else if self.health.failing() {
            self.probe();
        }
        if self.last_prune.elapsed() > Duration::from_secs(60) {
            if let Err(e) = self.prune(Utc::now()) {
                tracing::warn!(error = %e, "state store: pruning failed");
            }
        }
    }

    /// If `state.db` at our path is no longer the file we hold open (deleted,
    /// or replaced by another), writes what we hold to the path again and
    /// reopens it: the state on disk is the agent's, for the next start.
    fn reopen_if_replaced(&mut self) {
        let now_id = file_id(&self.opts.path);
        if now_id == self.db_id && now_id.is_some() {
            return;
        }
        let why = if now_id.is_none() {
            "deleted"
        } else {
            "replaced by another file"
        };
        let tmp = self.opts.path.with_extension("db.rewrite");
        let _ = std::fs::remove_file(&tmp);
        let result = self
            .conn
            .execute("VACUUM INTO ?1", params![tmp.to_string_lossy()])
            .map_err(|e| e.to_string())
            .and_then(|_| {
                // Close ours (its WAL goes with it), then put the copy in place.
                let fresh = Connection::open_in_memory().map_err(|e| e.to_string())?;
                let old = std::mem::replace(&mut self.conn, fresh);
                drop(old);
                for ext in ["db-wal", "db-shm"] {
                    let _ = std::fs::remove_file(self.opts.path.with_extension(ext));
                }
                std::fs::rename(&tmp, &self.opts.path).map_err(|e| e.to_string())?;
                let conn = Connection::open(&self.opts.path).map_err(|e| e.to_string())?;
                for (k, v) in [("journal_mode", "WAL"), ("synchronous", "FULL")] {
                    conn.pragma_update(None, k, v).map_err(|e| e.to_string())?;
                }
                conn.pragma_update(None, "wal_autocheckpoint", 100)
                    .map_err(|e| e.to_string())?;
                conn.pragma_update(None, "journal_size_limit", 1 << 20)
                    .map_err(|e| e.to_string())?;
                self.conn = conn;
                Ok(())
            });
        self.db_id = file_id(&self.opts.path);
        self.health.reopened.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                tracing::warn!(path = %self.opts.path.display(), %why, "the state store's file was replaced or deleted under the agent: wrote the agent's state to it again and reopened it")
            }
            Err(e) => {
                self.health.fail(&format!(
                    "state store {} was {why} and could not be written again: {e}",
                    self.opts.path.display()
                ));
            }
        }
    }

    /// While failing with nothing to write: does a write succeed again?
    fn probe(&mut self) {
        let r = self.conn.transaction().and_then(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', ?1)",
                params![Utc::now().to_rfc3339()],
            )?;
            tx.commit()
        });
        match r {
            Ok(()) => self.health.ok(),
            Err(e) => self.health.fail(&e.to_string()),
        }
    }

    /// Applies jobs in one transaction and answers them; returns the stop
    /// acknowledgement if one asked to stop.
    fn batch(&mut self, jobs: Vec<Job>) -> Option<oneshot::Sender<()>> {
        let mut accepts = Vec::new();
        let mut commits = Vec::new();
        let mut done = Vec::new();
        let mut stop = None;
        for job in jobs {
            match job {
                Job::Accept {
                    events,
                    at,
                    tolerance,
                    reply,
                } => accepts.push((events, at, tolerance, reply)),
                Job::Commit { commit, reply } => commits.push((commit, reply)),
                Job::Done(seq) => self.deferred_done.push(seq),
                Job::Horizon(h) => self.horizon = h,
                Job::Stop(ack) => stop = Some(ack),
            }
        }
        // Done marks ride along with the next transaction; alone, they wait
        // (for the idle tick, a stop, or a thousand of them).
        if accepts.is_empty()
            && commits.is_empty()
            && stop.is_none()
            && self.deferred_done.len() < DONE_DEFERRED
        {
            return stop;
        }
        done.append(&mut self.deferred_done);
        if accepts.is_empty() && commits.is_empty() && done.is_empty() {
            return stop;
        }
        let seq_before = self.next_seq;
        let result = self.transaction(&accepts, &commits, &done);
        match result {
            Ok((accepted, lines)) => {
                self.unwritten.extend(lines);
                let bytes: usize = self.unwritten.iter().map(|(_, l)| l.len()).sum();
                if bytes > UNWRITTEN_IN_MEMORY {
                    self.unwritten.clear();
                    self.backlog_in_db = true;
                }
                // Durable in the store: the log follows, then the callers hear.
                self.drain();
                for ((_, _, _, reply), r) in accepts.into_iter().zip(accepted) {
                    let _ = reply.send(Ok(r));
                }
                for (_, reply) in commits {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                self.next_seq = seq_before;
                let msg = e.to_string();
                self.health.fail(&msg);
                for (_, _, _, reply) in accepts {
                    let _ = reply.send(Err(msg.clone()));
                }
                for (_, reply) in commits {
                    let _ = reply.send(Err(msg.clone()));
                }
                // Done marks wait for the next transaction.
                self.deferred_done.extend(done);
            }
        }
        if self.last_prune.elapsed() > Duration::from_secs(60) {
            if let Err(e) = self.prune(Utc::now()) {
                tracing::warn!(error = %e, "state store: pruning failed");
            }
        }
        // Under steady load there is no idle second: look at the file here too.
        if self.last_check.elapsed() > Duration::from_secs(2) {
            self.last_check = std::time::Instant::now();
            self.reopen_if_replaced();
        }
        stop
    }

    fn transaction(
        &mut self,
        accepts: &[AcceptJob],
        commits: &[CommitJob],
        done: &[u64],
    ) -> Result<(Vec<AcceptResult>, Vec<LogLine>), String> {
        let window = self.opts.dedupe_window;
        let tolerance = self.opts.dedupe_tolerance;
        let written = self.written;
        let tx = self.conn.transaction().map_err(|e| e.to_string())?;
        let mut results = Vec::with_capacity(accepts.len());
        for (events, at, own, _) in accepts {
            let tolerance = own.unwrap_or(tolerance);
            results.push(accept(&tx, events, *at, window, tolerance).map_err(|e| e.to_string())?);
        }
        let mut lines = Vec::new();
        for (c, _) in commits {
            apply(&tx, c, &mut self.next_seq, &mut lines).map_err(|e| e.to_string())?;
        }
        for seq in done {
            tx.execute("DELETE FROM inbox WHERE seq = ?1", params![*seq as i64])
                .map_err(|e| e.to_string())?;
        }
        if !lines.is_empty() {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('seq', ?1)",
                params![(self.next_seq - 1).to_string()],
            )
            .map_err(|e| e.to_string())?;
        }
        // Lines already in the log leave the outbox.
        tx.execute(
            "DELETE FROM outbox WHERE seq <= ?1",
            params![written as i64],
        )
        .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        Ok((results, lines))
    }

    /// Commits one change outside a job (at open).
    fn commit_now(&mut self, c: Commit) -> Result<(), String> {
        let tx = self.conn.transaction().map_err(|e| e.to_string())?;
        let mut lines = Vec::new();
        apply(&tx, &c, &mut self.next_seq, &mut lines).map_err(|e| e.to_string())?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('seq', ?1)",
            params![(self.next_seq - 1).to_string()],
        )
        .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        self.unwritten.extend(lines);
        self.drain();
        Ok(())
    }

    /// Appends committed lines to the audit log, in order. A failed write
    /// leaves them in the outbox for the next try.
    fn drain(&mut self) {
        loop {
            let batch: Vec<(u64, String)> = if self.backlog_in_db {
                match self.outbox_after(self.written, 4096) {
                    Ok(b) => b,
                    Err(e) => {
                        self.health.fail(&e.to_string());
                        return;
                    }
                }
            } else {
                self.unwritten.drain(..).collect()
            };
            let batch: Vec<(u64, String)> = batch
                .into_iter()
                .filter(|(s, _)| *s > self.written)
                .collect();
            if batch.is_empty() {
                if self.backlog_in_db {
                    self.backlog_in_db = false;
                }
                self.health.ok();
                return;
            }
            if let Some(why) = self.writer.reopen_if_replaced() {
                self.health.reopened.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %self.opts.audit.display(), %why, "the audit log was replaced or deleted under the agent: reopened it; records go on in the new file");
            }
            let last = batch.last().map(|(s, _)| *s).unwrap_or(self.written);
            let lines: Vec<&str> = batch.iter().map(|(_, l)| l.as_str()).collect();
            match self.writer.append_lines(&lines) {
                Ok(()) => {
                    self.written = last;
                    if !self.backlog_in_db {
                        self.health.ok();
                        return;
                    }
                }
                Err(e) => {
                    // The lines stay in the outbox; read back from there next time.
                    self.backlog_in_db = true;
                    self.unwritten.clear();
                    self.health.fail(&e.to_string());
                    return;
                }
            }
        }
    }

    fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, String)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, line FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2")
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map(params![after as i64, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })
            .map_err(|e| self.db(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.db(e))
    }
}

/// Journals one notification's new deliveries. A delivery is a duplicate of
/// the last accepted one of the same alert and status when that one is
/// inside the dedupe window and their `startsAt` differ by at most the
/// tolerance: one episode, however many Alertmanagers and Prometheus
/// replicas sent it.
fn accept(
    tx: &Transaction<'_>,
    events: &[Event],
    at: DateTime<Utc>,
    window: chrono::Duration,
    tolerance: chrono::Duration,
) -> rusqlite::Result<AcceptResult> {
    let mut out = AcceptResult::default();
    let cutoff = nanos(at - window);
    let tol = tolerance.num_nanoseconds().unwrap_or(i64::MAX);
    for event in events {
        let status = event.status.as_str();
        let starts = event.starts_at.map(nanos);
        let last: Option<(Option<i64>, i64)> = tx
            .prepare_cached(
                "SELECT starts_at, at FROM seen WHERE fingerprint = ?1 AND status = ?2",
            )?
            .query_row(params![event.fingerprint, status], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let duplicate = last.is_some_and(|(s, seen_at)| {
            seen_at >= cutoff
                && match (s, starts) {
                    (Some(a), Some(b)) => a.abs_diff(b) <= tol as u64,
                    (None, None) => true,
                    _ => false,
                }
        });
        if duplicate {
            out.duplicates += 1;
            continue;
        }
        let text = serde_json::to_string(event)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        tx.prepare_cached("INSERT INTO inbox (at, event) VALUES (?1, ?2)")?
            .execute(params![nanos(at), text])?;
        let seq = tx.last_insert_rowid() as u64;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO seen (fingerprint, status, starts_at, at) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![event.fingerprint, status, starts, nanos(at)])?;
        out.accepted.push(Accepted {
            seq,
            at,
            event: event.clone(),
        });
    }
    Ok(out)
}

/// Applies a commit: each record into the outbox (as its log line, with
/// its sequence number) and its state changes, then the inbox and approval
/// changes.
fn apply(
    tx: &Transaction<'_>,
    c: &Commit,
    next_seq: &mut u64,
    lines: &mut Vec<(u64, String)>,
) -> rusqlite::Result<()> {
    for r in &c.records {
        let seq = *next_seq;
        *next_seq += 1;
        let line = serde_json::to_string(&Line { record: r, seq }).map_err(enc)?;
        tx.prepare_cached("INSERT INTO outbox (seq, line) VALUES (?1, ?2)")?
            .execute(params![seq as i64, line])?;
        lines.push((seq, line));
        charge(tx, r, i64::MIN)?;
    }
    for seq in &c.decided {
        tx.prepare_cached("UPDATE inbox SET decided = 1 WHERE seq = ?1")?
            .execute(params![*seq as i64])?;
    }
    for seq in &c.done {
        tx.prepare_cached("DELETE FROM inbox WHERE seq = ?1")?
            .execute(params![*seq as i64])?;
    }
    for a in &c.approvals {
        approval(tx, a)?;
    }
    for w in &c.watches {
        match w {
            WatchChange::Add(w) => {
                let text = serde_json::to_string(w).map_err(enc)?;
                tx.prepare_cached("INSERT OR REPLACE INTO watches (id, watch) VALUES (?1, ?2)")?
                    .execute(params![w.id(), text])?;
            }
            WatchChange::Remove(id) => {
                tx.prepare_cached("DELETE FROM watches WHERE id = ?1")?
                    .execute(params![id])?;
            }
        }
    }
    for p in &c.pauses {
        match p {
            PauseChange::Set(p) => {
                let text = serde_json::to_string(p).map_err(enc)?;
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO pauses (id, until, pause) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![p.id, nanos(p.until), text])?;
            }
            PauseChange::Lift(id) => {
                tx.prepare_cached("DELETE FROM pauses WHERE id = ?1")?
                    .execute(params![id])?;
            }
        }
    }
    Ok(())
}

fn enc(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

/// The state a record changes, as [`audit::ledger_from`] reads it: one
/// execution per run (its step 0), a failure per failed run, a success per
/// verified step; an executed step stays in flight until its outcome; a
/// schedule's last run. Executions and outcomes before `cutoff` (ns) are
/// not kept (an upgrade reading old history).
fn charge(tx: &Transaction<'_>, r: &Record, cutoff: i64) -> rusqlite::Result<()> {
    if !r.dry_run && r.decision == "execute" {
        match r.phase {
            Phase::Planned => {
                let at = nanos(r.decided_at.unwrap_or(r.ts));
                if r.step == 0 && at >= cutoff {
                    tx.prepare_cached(
                        "INSERT INTO executions (at, policy, playbook, target) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![
                        at,
                        r.policy,
                        r.playbook,
                        crate::policy::target_key(&r.target)
                    ])?;
                }
                let text = serde_json::to_string(r).map_err(enc)?;
                tx.prepare_cached("INSERT OR REPLACE INTO steps (id, record) VALUES (?1, ?2)")?
                    .execute(params![r.id, text])?;
            }
            Phase::Failed | Phase::Verified => {
                if nanos(r.ts) >= cutoff {
                    tx.prepare_cached(
                        "INSERT INTO outcomes (at, policy, playbook, ok) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![
                        nanos(r.ts),
                        r.policy,
                        r.playbook,
                        r.phase == Phase::Verified
                    ])?;
                }
                tx.prepare_cached("DELETE FROM steps WHERE id = ?1")?
                    .execute(params![r.id])?;
            }
            // The fix was verified but the alert kept firing: a failure
            // for the breaker.
            Phase::Unresolved => {
                if nanos(r.ts) >= cutoff {
                    tx.prepare_cached(
                        "INSERT INTO outcomes (at, policy, playbook, ok) VALUES (?1, ?2, ?3, 0)",
                    )?
                    .execute(params![nanos(r.ts), r.policy, r.playbook])?;
                }
            }
            Phase::Applied | Phase::Resolved => {}
        }
    }
    if r.trigger.kind == TriggerKind::Schedule {
        tx.prepare_cached(
            "INSERT INTO schedules (playbook, last) VALUES (?1, ?2)
             ON CONFLICT (playbook) DO UPDATE SET last = MAX(last, excluded.last)",
        )?
        .execute(params![r.playbook, nanos(r.ts)])?;
    }
    Ok(())
}

fn approval(tx: &Transaction<'_>, a: &ApprovalChange) -> rusqlite::Result<()> {
    match a {
        ApprovalChange::Request(p) => {
            let text = serde_json::to_string(p).map_err(enc)?;
            tx.prepare_cached("INSERT OR REPLACE INTO approvals (id, request) VALUES (?1, ?2)")?
                .execute(params![p.id, text])?;
        }
        ApprovalChange::Answer { id, answer, by, at } => {
            tx.prepare_cached(
                "UPDATE approvals SET answer = ?2, answered_by = ?3, answered_at = ?4 WHERE id = ?1",
            )?
            .execute(params![id, answer.as_str(), by, nanos(*at)])?;
            if *answer == Answer::Approved {
                tx.prepare_cached("INSERT OR IGNORE INTO approved_runs (id) VALUES (?1)")?
                    .execute(params![id])?;
            }
        }
        ApprovalChange::Ran(id) => {
            tx.prepare_cached("DELETE FROM approved_runs WHERE id = ?1")?
                .execute(params![id])?;
        }
    }
    Ok(())
}

/// Inserts an accepted, undecided event (for upgrades).
pub(super) fn insert_pending(
    tx: &Transaction<'_>,
    seq: u64,
    at: DateTime<Utc>,
    event: &Event,
) -> rusqlite::Result<()> {
    let text = serde_json::to_string(event).map_err(enc)?;
    tx.execute(
        "INSERT OR REPLACE INTO inbox (seq, at, event) VALUES (?1, ?2, ?3)",
        params![seq as i64, nanos(at), text],
    )?;
    remember(tx, event, at)
}

/// Remembers a delivery for dedupe (for upgrades).
pub(super) fn remember(
    tx: &Transaction<'_>,
    event: &Event,
    at: DateTime<Utc>,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO seen (fingerprint, status, starts_at, at) VALUES (?1, ?2, ?3, ?4)",
        params![
            event.fingerprint,
            event.status.as_str(),
            event.starts_at.map(nanos),
            nanos(at)
        ],
    )?;
    Ok(())
}

/// Applies records already in the log to the state (for upgrades); limit
/// state older than `since` is not kept.
pub(super) fn apply_history(
    tx: &Transaction<'_>,
    r: &Record,
    since: DateTime<Utc>,
) -> rusqlite::Result<()> {
    charge(tx, r, nanos(since))
}

/// Applies an approval change (for upgrades).
pub(super) fn apply_approval(tx: &Transaction<'_>, a: &ApprovalChange) -> rusqlite::Result<()> {
    approval(tx, a)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::audit::TriggerRef;
    use crate::event::{Labels, Status};
    use crate::policy::model::RateScope;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn ev(fp: &str, status: Status, starts: &str) -> Event {
        Event {
            trigger: TriggerKind::Alert,
            status,
            fingerprint: fp.into(),
            labels: Labels::new(),
            annotations: Labels::new(),
            values: Labels::new(),
            starts_at: Some(at(starts)),
            playbook: None,
        }
    }

    fn opts(dir: &std::path::Path) -> Options {
        Options {
            path: dir.join("state.db"),
            audit: dir.join("audit.jsonl"),
            rotation: audit::Rotation {
                max_bytes: 64 << 20,
                keep: 2,
            },
            dedupe_window: chrono::Duration::hours(24),
            dedupe_tolerance: chrono::Duration::minutes(2),
            horizon: chrono::Duration::days(1),
            legacy_inbox: dir.join("inbox.jsonl"),
            legacy_approvals: dir.join("approvals.jsonl"),
        }
    }

    fn rec(id: &str, phase: Phase, ts: DateTime<Utc>) -> Record {
        Record {
            ts,
            id: id.into(),
            trigger: std::sync::Arc::new(TriggerRef {
                kind: TriggerKind::Alert,
                alertname: Some("A".into()),
                fingerprint: "f".into(),
                status: Status::Firing,
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                values: BTreeMap::new(),
                starts_at: None,
            }),
            playbook: "pb".into(),
            action: "kubernetes.pod.restart".into(),
            target: [("kind".to_string(), "kubernetes.pod".to_string())].into(),
            params: serde_json::json!({}),
            decision: "execute".into(),
            reason: "all gates passed".into(),
            dry_run: false,
            phase,
            outcome: "x".into(),
            duration_ms: 0,
            node: "n".into(),
            policy: "default".into(),
            step: 0,
            decided_at: Some(ts),
            evidence: Default::default(),
        }
    }

    #[tokio::test]
    async fn accepted_events_survive_reopen_until_done_and_duplicates_are_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let o = Store::open(opts(dir.path()), now).unwrap();
        assert!(o.pending.is_empty());
        let a = ev("aaaa", Status::Firing, "2026-11-25T10:00:00Z");
        let b = ev("bbbb", Status::Firing, "2026-11-25T10:00:00Z");
        let r = o
            .store
            .accept(vec![a.clone(), b.clone(), a.clone()], now)
            .await
            .unwrap();
        assert_eq!((r.accepted.len(), r.duplicates), (2, 1));
        let seq_a = r.accepted[0].seq;
        o.store.done(seq_a);
        o.store.close().await;

        let o = Store::open(opts(dir.path()), now).unwrap();
        assert_eq!(o.pending.len(), 1);
        assert_eq!(o.pending[0].event.fingerprint, "bbbb");
        let r = o
            .store
            .accept(vec![a.clone(), b.clone()], now)
            .await
            .unwrap();
        assert_eq!((r.accepted.len(), r.duplicates), (0, 2));
        // A resolved delivery of the same alert is a different delivery.
        let r = o
            .store
            .accept(
                vec![ev("aaaa", Status::Resolved, "2026-11-25T10:00:00Z")],
                now,
            )
            .await
            .unwrap();
        assert_eq!(r.accepted.len(), 1);
        // New sequence numbers continue after the old ones.
        assert!(r.accepted[0].seq > seq_a);
        o.store.close().await;
    }

    #[tokio::test]
    async fn one_episode_sent_by_ha_replicas_with_jittered_starts_is_accepted_once() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let o = Store::open(opts(dir.path()), now).unwrap();
        let r = o
            .store
            .accept(
                vec![
                    ev("ha", Status::Firing, "2026-11-25T10:00:00Z"),
                    // The second Prometheus replica's copy, one second later.
                    ev("ha", Status::Firing, "2026-11-25T10:00:01Z"),
                ],
                now,
            )
            .await
            .unwrap();
        assert_eq!((r.accepted.len(), r.duplicates), (1, 1));
        // A new episode, starting later than the tolerance: accepted.
        let r = o
            .store
            .accept(vec![ev("ha", Status::Firing, "2026-11-25T10:05:00Z")], now)
            .await
            .unwrap();
        assert_eq!((r.accepted.len(), r.duplicates), (1, 0));
        o.store.close().await;
        // With no tolerance, only the same startsAt is the same delivery.
        let mut exact = opts(dir.path());
        exact.dedupe_tolerance = chrono::Duration::zero();
        let o = Store::open(exact, now).unwrap();
        let r = o
            .store
            .accept(
                vec![
                    ev("ha", Status::Firing, "2026-11-25T10:05:00Z"),
                    ev("ha", Status::Firing, "2026-11-25T10:05:01Z"),
                ],
                now,
            )
            .await
            .unwrap();
        assert_eq!((r.accepted.len(), r.duplicates), (1, 1));
        o.store.close().await;
    }

    #[tokio::test]
    async fn keys_older_than_the_window_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut o1 = opts(dir.path());
        o1.dedupe_window = chrono::Duration::hours(1);
        let old = Utc::now() - chrono::Duration::hours(2);
        let o = Store::open(o1.clone(), old).unwrap();
        let r = o
            .store
            .accept(
                vec![ev("cccc", Status::Firing, "2026-11-25T10:00:00Z")],
                old,
            )
            .await
            .unwrap();
        o.store.done(r.accepted[0].seq);
        o.store.close().await;
        let o = Store::open(o1, Utc::now()).unwrap();
        let r = o
            .store
            .accept(
                vec![ev("cccc", Status::Firing, "2026-11-25T10:00:00Z")],
                Utc::now(),
            )
            .await
            .unwrap();
        assert_eq!(
            r.accepted.len(),
            1,
            "a key outside the window is a new delivery"
        );
        o.store.close().await;
    }

    #[tokio::test]
    async fn limit_state_comes_back_from_the_store_whatever_happened_to_the_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let t0 = now - chrono::Duration::minutes(5);
        let o = Store::open(opts(dir.path()), now).unwrap();
        o.store
            .commit(Commit {
                records: vec![
                    rec("run-1", Phase::Planned, t0),
                    rec("run-1", Phase::Applied, t0),
                    rec("run-1", Phase::Failed, t0),
                    rec("run-2", Phase::Planned, now),
                ],
                ..Commit::default()
            })
            .unwrap();
        o.store.close().await;
        // Every audit file gone (rotation, a person): the limits remain.
        std::fs::remove_file(dir.path().join("audit.jsonl")).unwrap();
        let o = Store::open(opts(dir.path()), now).unwrap();
        let key = crate::policy::target_key(&rec("x", Phase::Planned, now).target);
        let (n, _) = o.ledger.executions_since(
            "default",
            RateScope::Target,
            "pb",
            &key,
            now - chrono::Duration::hours(1),
        );
        assert_eq!(n, 2);
        // run-2 was planned and never finished: recorded as interrupted, once.
        assert_eq!(o.interrupted.len(), 1);
        assert_eq!(o.interrupted[0].id, "run-2");
        assert_eq!(
            o.ledger
                .failures_since("default", "pb", now - chrono::Duration::hours(1)),
            2
        );
        o.store.close().await;
        let o = Store::open(opts(dir.path()), now).unwrap();
        assert!(o.interrupted.is_empty());
        let log = audit::read(&dir.path().join("audit.jsonl")).unwrap();
        assert_eq!(
            log.records
                .iter()
                .filter(|r| r.outcome == audit::INTERRUPTED)
                .count(),
            1
        );
        o.store.close().await;
    }

    #[tokio::test]
    async fn a_record_committed_but_not_yet_in_the_log_is_written_exactly_once_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let log = dir.path().join("audit.jsonl");
        let o = Store::open(opts(dir.path()), now).unwrap();
        o.store
            .commit(Commit {
                records: vec![
                    rec("a", Phase::Planned, now),
                    rec("a", Phase::Verified, now),
                ],
                ..Commit::default()
            })
            .unwrap();
        o.store.close().await;
        // The crash came after the commit and before the log write of the
        // last record: cut it from the log.
        let text = std::fs::read_to_string(&log).unwrap();
        let first = text.lines().next().unwrap();
        std::fs::write(&log, format!("{first}\n")).unwrap();
        let o = Store::open(opts(dir.path()), now).unwrap();
        o.store
            .commit(Commit {
                records: vec![rec("b", Phase::Planned, now)],
                ..Commit::default()
            })
            .unwrap();
        o.store.close().await;
        let r = audit::read(&log).unwrap();
        let got: Vec<(String, Phase)> = r.records.iter().map(|r| (r.id.clone(), r.phase)).collect();
        assert_eq!(
            got,
            vec![
                ("a".to_string(), Phase::Planned),
                ("a".to_string(), Phase::Verified),
                ("b".to_string(), Phase::Planned)
            ]
        );
        assert_eq!(audit::last_seq(&log), Some(3));
    }

    #[tokio::test]
    async fn approvals_survive_reopen_and_an_answer_is_given_once() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let pending = |id: &str, secs: i64| Pending {
            id: id.into(),
            playbook: "pb".into(),
            policy: "default".into(),
            target: "pod etl/x".into(),
            target_fields: BTreeMap::new(),
            reason: "policy requires approval".into(),
            actions: vec!["kubernetes.pod.restart".into()],
            requested_at: now,
            expires_at: now + chrono::Duration::seconds(secs),
            event: ev(&format!("fp-{id}"), Status::Firing, "2026-11-25T10:00:00Z"),
        };
        let o = Store::open(opts(dir.path()), now).unwrap();
        o.store
            .commit(Commit {
                approvals: vec![
                    ApprovalChange::Request(Box::new(pending("a", 60))),
                    ApprovalChange::Request(Box::new(pending("b", -1))),
                ],
                ..Commit::default()
            })
            .unwrap();
        o.store.close().await;
        let o = Store::open(opts(dir.path()), now).unwrap();
        let mut a = o.approvals;
        assert_eq!(a.pending().len(), 2);
        assert_eq!(a.expired(Utc::now()), vec!["b".to_string()]);
        assert_eq!(a.for_fingerprint("fp-a"), vec!["a".to_string()]);
        o.store
            .commit(Commit {
                approvals: vec![ApprovalChange::Answer {
                    id: "a".into(),
                    answer: Answer::Approved,
                    by: "alice".into(),
                    at: now,
                }],
                ..Commit::default()
            })
            .unwrap();
        assert_eq!(
            a.answer("a", Answer::Approved, "alice").unwrap().playbook,
            "pb"
        );
        let err = a.answer("a", Answer::Denied, "bob").unwrap_err();
        assert!(err.to_string().contains("already answered"), "{err}");
        o.store.close().await;
        let o = Store::open(opts(dir.path()), now).unwrap();
        assert_eq!(o.approvals.pending().len(), 1);
        assert_eq!(
            o.approvals.answered("a"),
            Some(&(Answer::Approved, "alice".to_string()))
        );
        // Approved and not decided before the stop: queued again, with who
        // approved it; a denied one is not.
        assert_eq!(o.approved_runs.len(), 1);
        assert_eq!(o.approved_runs[0].0.id, "a");
        assert_eq!(o.approved_runs[0].1, "alice");
        o.store
            .commit(Commit {
                approvals: vec![ApprovalChange::Answer {
                    id: "b".into(),
                    answer: Answer::Denied,
                    by: "bob".into(),
                    at: now,
                }],
                ..Commit::default()
            })
            .unwrap();
        o.store.close().await;
        let o = Store::open(opts(dir.path()), now).unwrap();
        assert_eq!(o.approved_runs.len(), 1, "still not decided");
        // Its decision committed: not queued again.
        o.store
            .commit(Commit {
                approvals: vec![ApprovalChange::Ran("a".into())],
                ..Commit::default()
            })
            .unwrap();
        o.store.close().await;
        let o = Store::open(opts(dir.path()), now).unwrap();
        assert!(o.approved_runs.is_empty());
        o.store.close().await;
    }

    #[tokio::test]
    async fn pauses_survive_reopen_until_lifted_or_ended() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let pause = |id: &str, mins: i64| Pause {
            id: id.into(),
            playbook: "pb".into(),
            target: Some("pod etl/x".into()),
            by: "alice".into(),
            reason: "OPS-7".into(),
            at: now,
            until: now + chrono::Duration::minutes(mins),
        };
        let o = Store::open(opts(dir.path()), now).unwrap();
        o.store
            .commit(Commit {
                pauses: vec![
                    PauseChange::Set(pause("a", 60)),
                    PauseChange::Set(pause("b", 60)),
                    PauseChange::Set(pause("c", 1)),
                ],
                ..Commit::default()
            })
            .unwrap();
        o.store
            .commit(Commit {
                pauses: vec![PauseChange::Lift("b".into())],
                ..Commit::default()
            })
            .unwrap();
        o.store.close().await;
        // Reopened five minutes later: "a" is in force, "b" was lifted, "c" ended.
        let later = now + chrono::Duration::minutes(5);
        let o = Store::open(opts(dir.path()), later).unwrap();
        let mut p = o.pauses;
        let ids: Vec<String> = p.active(later).into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["a"]);
        assert_eq!(
            p.covering("pb", "pod etl/x", later).unwrap().reason,
            "OPS-7"
        );
        o.store.close().await;
    }

    #[tokio::test]
    async fn a_state_directory_of_the_journal_format_is_upgraded_with_its_limits_and_pending_events(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let d = dir.path();
        // An execution five minutes ago, in the old audit log (no seq).
        let t0 = now - chrono::Duration::minutes(5);
        let mut log = audit::Writer::open(&d.join("audit.jsonl")).unwrap();
        log.append(&rec("old", Phase::Planned, t0)).unwrap();
        log.append(&rec("old", Phase::Verified, t0)).unwrap();
        // A planned step with no outcome: interrupted.
        log.append(&rec("cut", Phase::Planned, t0)).unwrap();
        drop(log);
        // The inbox: one event decided (a record of it follows), one pending.
        let decided = ev("f", Status::Firing, "2026-11-25T10:00:00Z");
        let waiting = ev("w", Status::Firing, "2026-11-25T10:00:00Z");
        let line = |seq: u64, e: &Event, at: DateTime<Utc>| {
            serde_json::json!({"t": "accepted", "seq": seq, "key": e.delivery_key(), "at": at, "event": e}).to_string()
        };
        std::fs::write(
            d.join("inbox.jsonl"),
            format!(
                "{}\n{}\n",
                line(1, &decided, t0 - chrono::Duration::seconds(1)),
                line(2, &waiting, t0)
            ),
        )
        .unwrap();
        let p = serde_json::json!({"t": "requested", "id": "ap-1", "playbook": "pb", "policy": "default",
            "target": "pod etl/x", "target_fields": {}, "reason": "r", "actions": [],
            "requested_at": now, "expires_at": now + chrono::Duration::hours(1), "event": waiting});
        std::fs::write(d.join("approvals.jsonl"), format!("{p}\n")).unwrap();

        let o = Store::open(opts(d), now).unwrap();
        assert!(o.upgraded.is_some());
        let key = crate::policy::target_key(&rec("x", Phase::Planned, now).target);
        assert_eq!(
            o.ledger.last_execution("default", "pb", &key),
            Some(t0),
            "the cooldown's last execution is kept"
        );
        assert_eq!(o.pending.len(), 1);
        assert_eq!(o.pending[0].event.fingerprint, "w");
        assert_eq!(o.approvals.pending().len(), 1);
        assert_eq!(o.interrupted.len(), 1);
        assert_eq!(o.interrupted[0].id, "cut");
        assert!(d.join("inbox.jsonl.upgraded").exists());
        assert!(!d.join("inbox.jsonl").exists());
        // A duplicate of the pending delivery is still known.
        let r = o.store.accept(vec![waiting.clone()], now).await.unwrap();
        assert_eq!(r.duplicates, 1);
        o.store.close().await;
        // The old log is continued, not rewritten.
        let r = audit::read(&d.join("audit.jsonl")).unwrap();
        assert_eq!(r.records.len(), 4);
    }
}
