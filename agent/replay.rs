//! What-if: the decisions the current playbooks and policies would make for
//! recorded events, compared with what was decided then. This is how a
//! playbook is promoted from shadow (dry-run) to enforce: replay last
//! week's audit and read what would have executed.
//!
//! Replay is offline and pure: it reads files, calls no driver and writes
//! nothing. Each recorded event is decided at its recorded decision time,
//! against a ledger built from the replayed decisions themselves (so limits
//! and cooldowns apply as they would have), plus the outcomes recorded then
//! (failures feed the breaker).
//!
//! Both modes stream: records and payloads are read one at a time and each
//! row is handed on as it is decided, so memory does not grow with the
//! input. Recorded decisions are put in time order within a window of
//! [`REORDER_WINDOW`] events (a log is in time order but for runs decided
//! concurrently); one further out of order is decided where it is met.

use std::collections::BTreeMap;

use hashbrown::HashMap;
use std::io::Read;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::audit::{Phase, Record, Recorded};
use crate::engine::Engine;
use crate::event::Event;
use crate::policy::Ledger;
use crate::trigger::alertmanager::Payload;

/// One (event, playbook) compared.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Decision time of the recorded event (or the what-if time).
    pub at: DateTime<Utc>,
    /// Alert name or `schedule`/`manual`.
    pub trigger: String,
    /// Alert fingerprint (or tick identity).
    pub fingerprint: String,
    /// Playbook.
    pub playbook: String,
    /// Target as rendered now (or then, when it no longer matches).
    pub target: String,
    /// Decision then (`-` when the playbook did not match then, or for `--alerts`).
    pub then: String,
    /// Reason then.
    pub then_reason: String,
    /// Decision now (`no-match` when the playbook no longer matches).
    pub now: String,
    /// Reason now.
    pub now_reason: String,
    /// Whether then and now differ.
    pub changed: bool,
}

/// Counts over a replay.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    /// Events replayed.
    pub events: usize,
    /// (event, playbook) pairs compared.
    pub rows: usize,
    /// Pairs whose decision changed.
    pub changed: usize,
    /// Decisions now, by decision.
    pub now: BTreeMap<String, usize>,
    /// Changes by `then -> now`.
    pub transitions: BTreeMap<String, usize>,
}

/// One recorded event: fingerprint, startsAt, status and decision second.
type EventKey = (String, Option<DateTime<Utc>>, crate::event::Status, i64);

/// Recorded events held to be put in time order before they are decided.
pub const REORDER_WINDOW: usize = 4096;

/// What was decided then for one playbook of an event.
struct Then {
    decision: String,
    reason: String,
    target: crate::drivers::Target,
}

/// A recorded event waiting in the reorder window.
struct Pending {
    key: EventKey,
    event: Event,
    then: BTreeMap<String, Then>,
}

/// Replays a recorded log, record by record: [`AuditReplay::record`] for
/// each, then [`AuditReplay::finish`]. Rows go to `emit` as decided.
pub struct AuditReplay<'a> {
    engine: &'a Engine,
    ledger: Ledger,
    /// Events by (decision time, arrival): BTreeMap order is time order,
    /// ties in log order, as a stable sort would put them.
    window: BTreeMap<(DateTime<Utc>, u64), Pending>,
    index: HashMap<EventKey, (DateTime<Utc>, u64)>,
    /// Outcomes recorded then, by (time, arrival): (failed, policy, playbook).
    outcomes: BTreeMap<(DateTime<Utc>, u64), (bool, String, String)>,
    seq: u64,
    group: u64,
    last: Option<DateTime<Utc>>,
    /// Events met after a later one had been decided (further out of
    /// order than the window).
    pub late: usize,
    summary: Summary,
}

impl<'a> AuditReplay<'a> {
    /// A replay under `engine`'s rules, its ledger keeping `horizon` (None: all).
    pub fn new(engine: &'a Engine, horizon: Option<crate::policy::Horizon>) -> Self {
        let ledger = horizon.map_or_else(Ledger::default, Ledger::with_horizons);
        Self {
            engine,
            ledger,
            window: BTreeMap::new(),
            index: HashMap::new(),
            outcomes: BTreeMap::new(),
            seq: 0,
            group: 0,
            last: None,
            late: 0,
            summary: Summary::default(),
        }
    }

    /// Takes one record of the log (read as [`Recorded`]: see
    /// [`crate::audit::scan_all_as`]).
    pub fn record(&mut self, r: Recorded, emit: &mut dyn FnMut(Row)) {
        self.seq += 1;
        let seq = self.seq;
        if r.decision == "execute" && matches!(r.phase, Phase::Failed | Phase::Verified) {
            self.outcomes.insert(
                (r.ts, seq),
                (r.phase == Phase::Failed, r.policy, r.playbook),
            );
            return;
        }
        let first = r.phase == Phase::Planned
            && r.step == 0
            && matches!(
                r.decision.as_str(),
                "execute" | "dry-run" | "suppressed" | "needs-approval"
            );
        if !first {
            return;
        }
        let at = r.decided_at.unwrap_or(r.ts);
        let key = (
            r.trigger.fingerprint.clone(),
            r.trigger.starts_at,
            r.trigger.status,
            at.timestamp_millis() / 1000,
        );
        let then = Then {
            decision: r.decision,
            reason: r.reason,
            target: r.target,
        };
        match self.index.get(&key).copied() {
            Some(slot) => {
                let Some(mut p) = self.window.remove(&slot) else {
                    return;
                };
                // The earliest record of an event gives its time and trigger.
                let slot = if at < slot.0 {
                    p.event = r.trigger.into_event(&r.playbook);
                    (at, slot.1)
                } else {
                    slot
                };
                p.then.insert(r.playbook, then);
                self.index.insert(key, slot);
                self.window.insert(slot, p);
            }
            None => {
                let event = r.trigger.into_event(&r.playbook);
                let mut then_map = BTreeMap::new();
                then_map.insert(r.playbook, then);
                self.index.insert(key.clone(), (at, seq));
                self.window.insert(
                    (at, seq),
                    Pending {
                        key,
                        event,
                        then: then_map,
                    },
                );
            }
        }
        while self.window.len() > REORDER_WINDOW {
            self.decide_first(emit);
        }
    }

    fn decide_first(&mut self, emit: &mut dyn FnMut(Row)) {
        let Some(((at, _), p)) = self.window.pop_first() else {
            return;
        };
        self.index.remove(&p.key);
        if self.last.is_some_and(|l| at < l) {
            self.late += 1;
        }
        self.last = Some(self.last.map_or(at, |l| l.max(at)));
        while let Some(entry) = self.outcomes.first_entry() {
            if entry.key().0 > at {
                break;
            }
            let ((ts, _), (failed, policy, playbook)) = entry.remove_entry();
            if failed {
                self.ledger.record_failure(ts, &policy, &playbook);
            } else {
                self.ledger.record_success(ts, &policy, &playbook);
            }
        }
        self.summary.events += 1;
        self.ledger.begin_group(self.group);
        self.group += 1;
        let ev = &p.event;
        let now = self.engine.decide(ev, false, at, &mut self.ledger);
        let trigger = ev
            .alertname()
            .map(str::to_string)
            .unwrap_or_else(|| ev.trigger.as_str().to_string());
        // What was decided then for a playbook is taken as it is compared:
        // what remains afterwards no longer matches.
        let mut then = p.then;
        for d in &now {
            let (then_d, then_r) = then
                .remove(&d.playbook)
                .map(|t| (t.decision, t.reason))
                .unwrap_or_else(|| ("-".into(), "did not match then".into()));
            let row = Row {
                at,
                trigger: trigger.clone(),
                fingerprint: ev.fingerprint.clone(),
                playbook: d.playbook.clone(),
                target: d.target_display(),
                changed: then_d != d.decision.as_str(),
                then: then_d,
                then_reason: then_r,
                now: d.decision.as_str().to_string(),
                now_reason: d.decision.reason().to_string(),
            };
            self.summary.count(&row);
            emit(row);
        }
        for (pb, t) in then {
            let row = Row {
                at,
                trigger: trigger.clone(),
                fingerprint: ev.fingerprint.clone(),
                playbook: pb,
                target: crate::drivers::target_display(&t.target),
                then: t.decision,
                then_reason: t.reason,
                now: "no-match".into(),
                now_reason: "the playbook no longer matches (changed or removed)".into(),
                changed: true,
            };
            self.summary.count(&row);
            emit(row);
        }
    }

    /// Decides what is still in the window; the counts.
    pub fn finish(mut self, emit: &mut dyn FnMut(Row)) -> Summary {
        while !self.window.is_empty() {
            self.decide_first(emit);
        }
        self.summary
    }
}

impl Summary {
    /// Counts one row. The keys are a handful of decisions: a key is
    /// allocated the first time it is seen, not for every row.
    fn count(&mut self, r: &Row) {
        self.rows += 1;
        match self.now.get_mut(&r.now) {
            Some(n) => *n += 1,
            None => {
                self.now.insert(r.now.clone(), 1);
            }
        }
        if r.changed {
            self.changed += 1;
            let found = self.transitions.iter_mut().find(|(k, _)| {
                k.strip_prefix(r.then.as_str())
                    .and_then(|rest| rest.strip_prefix(" -> "))
                    == Some(r.now.as_str())
            });
            match found {
                Some((_, n)) => *n += 1,
                None => {
                    self.transitions
                        .insert(format!("{} -> {}", r.then, r.now), 1);
                }
            }
        }
    }
}

/// Replays recorded decisions under `engine`'s current rules.
pub fn audit(engine: &Engine, records: &[Record]) -> (Vec<Row>, Summary) {
    let mut rows = Vec::new();
    let mut r = AuditReplay::new(engine, None);
    for rec in records {
        r.record(Recorded::from(rec), &mut |row| rows.push(row));
    }
    let summary = r.finish(&mut |row| rows.push(row));
    (rows, summary)
}

/// Decides events from Alertmanager payloads at one time against a ledger
/// (empty, or rebuilt from an audit log), one event at a time.
pub struct AlertReplay<'a> {
    engine: &'a Engine,
    ledger: Ledger,
    at: DateTime<Utc>,
    summary: Summary,
}

impl<'a> AlertReplay<'a> {
    /// Decides as of `at`.
    pub fn new(engine: &'a Engine, at: DateTime<Utc>, mut ledger: Ledger) -> Self {
        ledger.begin_group(u64::MAX);
        Self {
            engine,
            ledger,
            at,
            summary: Summary::default(),
        }
    }

    /// Decides one event; its rows go to `emit`.
    pub fn event(&mut self, ev: &Event, emit: &mut dyn FnMut(Row)) {
        self.summary.events += 1;
        let trigger = ev
            .alertname()
            .map(str::to_string)
            .unwrap_or_else(|| ev.trigger.as_str().to_string());
        for p in self.engine.decide(ev, false, self.at, &mut self.ledger) {
            let row = Row {
                at: self.at,
                trigger: trigger.clone(),
                fingerprint: ev.fingerprint.clone(),
                playbook: p.playbook.clone(),
                target: p.target_display(),
                then: "-".into(),
                then_reason: String::new(),
                now: p.decision.as_str().to_string(),
                now_reason: p.decision.reason().to_string(),
                changed: false,
            };
            self.summary.count(&row);
            emit(row);
        }
    }

    /// The counts.
    pub fn finish(self) -> Summary {
        self.summary
    }
}

/// Decides `events` (from Alertmanager payloads) at `at` against `ledger`
/// (empty, or rebuilt from an audit log).
pub fn alerts(
    engine: &Engine,
    events: &[Event],
    at: DateTime<Utc>,
    ledger: Ledger,
) -> (Vec<Row>, Summary) {
    let mut rows = Vec::new();
    let mut r = AlertReplay::new(engine, at, ledger);
    for ev in events {
        r.event(ev, &mut |row| rows.push(row));
    }
    (rows, r.finish())
}

/// Largest single payload a stream accepts (as `remediate run --alert`).
pub const MAX_PAYLOAD_BYTES: usize = 16 << 20;

/// Alertmanager payloads read from a file or a pipe one at a time: one
/// JSON object, objects one after another (one per line, or pretty
/// printed), or a JSON array of them (read whole). Memory is bounded by
/// the largest payload.
pub struct Payloads<R> {
    r: R,
    buf: Vec<u8>,
    start: usize,
    eof: bool,
    done: bool,
    n: usize,
    /// A JSON array, parsed whole, handed out in order.
    array: Option<std::vec::IntoIter<serde_json::Value>>,
}

/// A payload of a stream that could not be read: which one (1-based) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadError {
    /// The payload's number in the stream.
    pub n: usize,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "payload {}: {}", self.n, self.message)
    }
}

impl<R: Read> Payloads<R> {
    /// Payloads from `r`.
    pub fn new(r: R) -> Self {
        Self {
            r,
            buf: Vec::new(),
            start: 0,
            eof: false,
            done: false,
            n: 0,
            array: None,
        }
    }

    /// Payloads read so far.
    pub fn count(&self) -> usize {
        self.n
    }

    /// Reads at least `want` more bytes (or to the end).
    fn fill(&mut self, want: usize) -> std::io::Result<()> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let target = self.buf.len() + want;
        while self.buf.len() < target && !self.eof {
            let len = self.buf.len();
            self.buf.resize(target, 0);
            match self.r.read(&mut self.buf[len..]) {
                Ok(0) => {
                    self.buf.truncate(len);
                    self.eof = true;
                }
                Ok(n) => self.buf.truncate(len + n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => self.buf.truncate(len),
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Stops the stream with an error about the next payload.
    fn fail(&mut self, message: String) -> Option<Result<Payload, PayloadError>> {
        self.done = true;
        Some(Err(PayloadError {
            n: self.n + 1,
            message,
        }))
    }

    fn too_large(&mut self) -> Option<Result<Payload, PayloadError>> {
        self.fail(format!(
            "larger than {} MiB: not an Alertmanager webhook body",
            MAX_PAYLOAD_BYTES >> 20
        ))
    }

    fn check(&mut self, mut p: Payload) -> Option<Result<Payload, PayloadError>> {
        // A Grafana contact point's body (version "1") is the same shape
        // with `values`; its test notification is not decided.
        let checked = if p.version == "1" {
            let before = p.alerts.len();
            p.alerts
                .retain(|a| !crate::trigger::grafana::is_test_alert(&a.labels));
            let tests = before - p.alerts.len();
            if tests > 0 {
                eprintln!(
                    "note: payload {}: {tests} test notification(s) (Grafana's contact-point test): not decided",
                    self.n + 1
                );
            }
            p.check().map(|()| p)
        } else {
            p.validate()
        };
        match checked {
            Ok(p) => {
                self.n += 1;
                Some(Ok(p))
            }
            Err(e) => self.fail(e.to_string()),
        }
    }
}

impl<R: Read> Iterator for Payloads<R> {
    type Item = Result<Payload, PayloadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some(arr) = &mut self.array {
            let v = arr.next()?;
            let p = serde_json::from_value::<Payload>(v);
            return match p {
                Ok(p) => self.check(p),
                Err(e) => self.fail(e.to_string()),
            };
        }
        loop {
            let rest = &self.buf[self.start..];
            let ws = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
            self.start += ws;
            if self.start == self.buf.len() {
                if self.eof {
                    return None;
                }
                if let Err(e) = self.fill(1 << 20) {
                    return self.fail(format!("cannot read: {e}"));
                }
                continue;
            }
            if self.n == 0 && self.array.is_none() && self.buf[self.start] == b'[' {
                // An array: read whole, as before.
                while !self.eof {
                    if let Err(e) = self.fill(1 << 20) {
                        return self.fail(format!("cannot read: {e}"));
                    }
                }
                let all: Vec<serde_json::Value> =
                    match serde_json::from_slice(&self.buf[self.start..]) {
                        Ok(v) => v,
                        Err(e) => return self.fail(format!("not a JSON array of payloads: {e}")),
                    };
                self.buf = Vec::new();
                self.start = 0;
                self.array = Some(all.into_iter());
                return self.next();
            }
            let rest = &self.buf[self.start..];
            let mut it = serde_json::Deserializer::from_slice(rest).into_iter::<Payload>();
            match it.next() {
                Some(Ok(p)) => {
                    let len = it.byte_offset();
                    if len > MAX_PAYLOAD_BYTES {
                        return self.too_large();
                    }
                    self.start += len;
                    return self.check(p);
                }
                Some(Err(e)) if e.is_eof() && !self.eof => {
                    let len = rest.len();
                    if len > MAX_PAYLOAD_BYTES {
                        return self.too_large();
                    }
                    // Read as much again (a payload is parsed O(1) times on
                    // average), never far past the cap.
                    let want = len.max(1 << 20).min(MAX_PAYLOAD_BYTES + 1 - len);
                    if let Err(e) = self.fill(want) {
                        return self.fail(format!("cannot read: {e}"));
                    }
                }
                Some(Err(e)) => {
                    return self
                        .fail(crate::trigger::alertmanager::Error::malformed(&e).to_string())
                }
                None => return None,
            }
        }
    }
}

/// Reads Alertmanager payloads from a file: one JSON object, a JSON array
/// of them, or one per line. Errors name the payload.
pub fn read_payloads(text: &str) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    for p in Payloads::new(text.as_bytes()) {
        events.extend(p.map_err(|e| e.to_string())?.into_events());
    }
    Ok(events)
}
