//! The agent's event inbox: a journal that makes a webhook delivery durable
//! before Alertmanager gets its 200, and remembers deliveries to drop
//! duplicates.
//!
//! One thread owns the file. Callers hand it batches; it writes everything
//! that is waiting with one `fdatasync` (group commit) and then answers each
//! caller, so many concurrent webhooks share one sync. Lines are
//!
//! ```text
//! {"t":"accepted","seq":7,"key":"…","at":"…","event":{…}}   durable before 200
//! {"t":"done","seq":7}                                         its runs are audited
//! {"t":"seen","key":"…","at":"…"}                              compacted: dedupe only
//! ```
//!
//! On open, accepted-but-not-done events are handed back for processing
//! (the agent stopped before deciding them), and the file is compacted to
//! what still matters: pending events and keys inside the dedupe window.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::event::Event;

/// Compact once the file is this large and at least twice the live data.
const COMPACT_AT: u64 = 16 << 20;

/// Inbox errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The journal could not be read or written.
    #[error("event inbox {path}: {source}")]
    Io {
        /// Journal path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread has stopped (shutdown, or a previous write failed).
    #[error("event inbox is closed")]
    Closed,
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Line {
    Accepted {
        seq: u64,
        key: String,
        at: DateTime<Utc>,
        event: Event,
    },
    Done {
        seq: u64,
    },
    Seen {
        key: String,
        at: DateTime<Utc>,
    },
}

/// An event the inbox has made durable.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Journal sequence number (pass to [`Inbox::done`]).
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
    /// Deliveries already seen inside the dedupe window.
    pub duplicates: usize,
}

enum Job {
    Accept {
        events: Vec<Event>,
        at: DateTime<Utc>,
        reply: oneshot::Sender<Result<AcceptResult, String>>,
    },
    Done(u64),
    Stop(oneshot::Sender<()>),
}

/// Handle to the inbox thread. Cloneable; the thread stops on [`Inbox::close`].
#[derive(Clone, Debug)]
pub struct Inbox {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl Inbox {
    /// Opens (creating) the journal, compacts it, and returns the handle and
    /// the events that were accepted but never finished, oldest first.
    pub fn open(path: &Path, window: std::time::Duration) -> Result<(Self, Vec<Accepted>)> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
        let mut st = State {
            path: path.to_path_buf(),
            window,
            seen: HashMap::new(),
            pending: BTreeMap::new(),
            next_seq: 1,
            file: None,
            size: 0,
            accepts_since_prune: 0,
        };
        st.load()?;
        st.compact()?;
        let pending = st
            .pending
            .values()
            .filter_map(|l| match serde_json::from_slice::<Line>(l) {
                Ok(Line::Accepted { seq, at, event, .. }) => Some(Accepted { seq, at, event }),
                _ => None,
            })
            .collect();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("inbox".into())
            .spawn(move || st.run(rx))
            .map_err(io)?;
        Ok((Self { tx }, pending))
    }

    /// Makes new deliveries durable; duplicates are counted, not stored.
    pub async fn accept(&self, events: Vec<Event>, at: DateTime<Utc>) -> Result<AcceptResult> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Accept { events, at, reply })
            .map_err(|_| Error::Closed)?;
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(msg)) => Err(Error::Io {
                path: PathBuf::from("inbox"),
                source: std::io::Error::other(msg),
            }),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Marks an accepted event as fully handled (its records are in the audit).
    pub fn done(&self, seq: u64) {
        let _ = self.tx.send(Job::Done(seq));
    }

    /// Flushes and stops the writer thread.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Job::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

struct State {
    path: PathBuf,
    window: chrono::Duration,
    /// Delivery key -> when first received.
    seen: HashMap<String, DateTime<Utc>>,
    /// Accepted, not done: seq -> its journal line.
    pending: BTreeMap<u64, Vec<u8>>,
    next_seq: u64,
    file: Option<File>,
    size: u64,
    accepts_since_prune: u32,
}

impl State {
    fn io(&self, source: std::io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn load(&mut self) -> Result<()> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io(e)),
        };
        for line in BufReader::new(file).split(b'\n') {
            let line = line.map_err(|e| self.io(e))?;
            // A torn last line is a delivery that never got its 200:
            // Alertmanager retries it.
            let Ok(parsed) = serde_json::from_slice::<Line>(&line) else {
                continue;
            };
            match parsed {
                Line::Accepted { seq, key, at, .. } => {
                    self.seen.entry(key).or_insert(at);
                    self.pending.insert(seq, line);
                    self.next_seq = self.next_seq.max(seq + 1);
                }
                Line::Done { seq } => {
                    self.pending.remove(&seq);
                }
                Line::Seen { key, at } => {
                    self.seen.entry(key).or_insert(at);
                }
            }
        }
        Ok(())
    }

    /// Rewrites the journal as pending events plus live dedupe keys.
    fn compact(&mut self) -> Result<()> {
        let cutoff = Utc::now() - self.window;
        self.seen.retain(|_, at| *at >= cutoff);
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut buf = Vec::new();
        for (key, at) in &self.seen {
            let l = Line::Seen {
                key: key.clone(),
                at: *at,
            };
            serde_json::to_writer(&mut buf, &l).map_err(|e| self.io(e.into()))?;
            buf.push(b'\n');
        }
        for line in self.pending.values() {
            buf.extend_from_slice(line);
            buf.push(b'\n');
        }
        let mut f = File::create(&tmp).map_err(|e| self.io(e))?;
        f.write_all(&buf).map_err(|e| self.io(e))?;
        f.sync_all().map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        self.size = buf.len() as u64;
        self.file = Some(file);
        Ok(())
    }

    fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            while let Ok(j) = rx.try_recv() {
                jobs.push(j);
            }
            let mut buf = Vec::new();
            let mut replies = Vec::new();
            let mut stop = None;
            let mut any_accept = false;
            for job in jobs {
                match job {
                    Job::Accept { events, at, reply } => {
                        any_accept = true;
                        let (r, staged) = self.stage(events, at, &mut buf);
                        replies.push((reply, r, staged));
                    }
                    Job::Done(seq) => {
                        if self.pending.remove(&seq).is_some() {
                            let _ = serde_json::to_writer(&mut buf, &Line::Done { seq });
                            buf.push(b'\n');
                        }
                    }
                    Job::Stop(ack) => stop = Some(ack),
                }
            }
            // `done` lines alone need no sync: losing one only replays an
            // event whose records are already audited (the ledger limits it).
            let written = self.write(&buf, any_accept);
            for (reply, r, staged) in replies {
                if written.is_err() {
                    // Not durable: forget it, so Alertmanager's retry is not
                    // mistaken for a duplicate.
                    for (key, seq) in staged {
                        self.seen.remove(&key);
                        self.pending.remove(&seq);
                    }
                }
                let _ = reply.send(match &written {
                    Ok(()) => Ok(r),
                    Err(e) => Err(e.to_string()),
                });
            }
            if written.is_ok() && self.size > COMPACT_AT {
                let live = (self.seen.len() as u64) * 120
                    + self.pending.values().map(|l| l.len() as u64).sum::<u64>();
                if self.size > 2 * live {
                    if let Err(e) = self.compact() {
                        tracing::error!(error = %e, "inbox compaction failed");
                    }
                }
            }
            if let Some(ack) = stop {
                if let Some(f) = &self.file {
                    let _ = f.sync_data();
                }
                let _ = ack.send(());
                return;
            }
        }
    }

    fn stage(
        &mut self,
        events: Vec<Event>,
        at: DateTime<Utc>,
        buf: &mut Vec<u8>,
    ) -> (AcceptResult, Vec<(String, u64)>) {
        let mut out = AcceptResult::default();
        let mut staged = Vec::new();
        let cutoff = at - self.window;
        for event in events {
            let key = event.delivery_key();
            match self.seen.get(&key) {
                Some(t) if *t >= cutoff => {
                    out.duplicates += 1;
                    continue;
                }
                _ => {}
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            let line = Line::Accepted {
                seq,
                key: key.clone(),
                at,
                event,
            };
            let start = buf.len();
            if serde_json::to_writer(&mut *buf, &line).is_err() {
                buf.truncate(start);
                continue;
            }
            self.pending.insert(seq, buf[start..].to_vec());
            buf.push(b'\n');
            self.seen.insert(key.clone(), at);
            staged.push((key, seq));
            if let Line::Accepted { event, .. } = line {
                out.accepted.push(Accepted { seq, at, event });
            }
        }
        // Bound memory: forget keys that left the window, now and then.
        self.accepts_since_prune += 1;
        if self.accepts_since_prune >= 1024 {
            self.accepts_since_prune = 0;
            self.seen.retain(|_, t| *t >= cutoff);
        }
        (out, staged)
    }

    fn write(&mut self, buf: &[u8], sync: bool) -> std::io::Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Err(std::io::Error::other("inbox file not open"));
        };
        if buf.is_empty() {
            return Ok(());
        }
        f.write_all(buf)?;
        if sync {
            f.sync_data()?;
        }
        self.size += buf.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Labels, Status, TriggerKind};

    fn ev(fp: &str, status: Status) -> Event {
        Event {
            trigger: TriggerKind::Alert,
            status,
            fingerprint: fp.into(),
            labels: Labels::new(),
            annotations: Labels::new(),
            values: Labels::new(),
            starts_at: Some(
                DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
                    .unwrap()
                    .with_timezone(&Utc),
            ),
            playbook: None,
        }
    }

    #[tokio::test]
    async fn accepted_events_survive_reopen_until_done_and_duplicates_are_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inbox.jsonl");
        let day = std::time::Duration::from_secs(86400);
        let (inbox, pending) = Inbox::open(&path, day).unwrap();
        assert!(pending.is_empty());
        let a = ev("aaaa", Status::Firing);
        let b = ev("bbbb", Status::Firing);
        let r = inbox
            .accept(vec![a.clone(), b.clone(), a.clone()], Utc::now())
            .await
            .unwrap();
        assert_eq!(r.accepted.len(), 2);
        assert_eq!(r.duplicates, 1);
        let seq_a = r.accepted[0].seq;
        inbox.done(seq_a);
        inbox.close().await;

        let (inbox, pending) = Inbox::open(&path, day).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].event.fingerprint, "bbbb");
        // Both deliveries are still known after the compaction on open.
        let r = inbox
            .accept(vec![a.clone(), b.clone()], Utc::now())
            .await
            .unwrap();
        assert_eq!((r.accepted.len(), r.duplicates), (0, 2));
        // A resolved delivery of the same alert is a different delivery.
        let r = inbox
            .accept(vec![ev("aaaa", Status::Resolved)], Utc::now())
            .await
            .unwrap();
        assert_eq!(r.accepted.len(), 1);
        // New sequence numbers continue after the old ones.
        assert!(r.accepted[0].seq > seq_a);
        inbox.close().await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines()
                .filter(|l| l.contains("\"t\":\"seen\""))
                .count(),
            2
        );
    }

    #[tokio::test]
    async fn keys_older_than_the_window_are_forgotten_and_a_torn_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inbox.jsonl");
        let (inbox, _) = Inbox::open(&path, std::time::Duration::from_secs(3600)).unwrap();
        let old = Utc::now() - chrono::Duration::hours(2);
        let r = inbox
            .accept(vec![ev("cccc", Status::Firing)], old)
            .await
            .unwrap();
        inbox.done(r.accepted[0].seq);
        inbox.close().await;
        // A crash mid-write leaves a torn line: it never got its 200.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"t\":\"accepted\",\"seq\":99,\"ke").unwrap();
        drop(f);
        let (inbox, pending) = Inbox::open(&path, std::time::Duration::from_secs(3600)).unwrap();
        assert!(pending.is_empty());
        let r = inbox
            .accept(vec![ev("cccc", Status::Firing)], Utc::now())
            .await
            .unwrap();
        assert_eq!(
            r.accepted.len(),
            1,
            "a key outside the window is a new delivery"
        );
        inbox.close().await;
    }
}
