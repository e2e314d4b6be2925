//! `remediate run`: decide (and, without `--dry-run`, execute) the
//! remediations for an Alertmanager payload or one playbook run by hand,
//! with the audit appended and a table or the records printed.

use std::io::{Read, Write};

use std::path::Path;

use chrono::Utc;

use super::args::{Output, RunArgs};
use super::sources::load;
use super::{Error, Result};
use crate::audit;
use crate::engine::{Engine, RunStatus};
use crate::event::{Event, Labels, Status, TriggerKind};
use crate::policy::Decision;
use crate::report::{self, Row, Summary};
use crate::trigger::alertmanager::Payload;

/// Rows the text table shows at most; the rest are counted under it
/// (`--output json` lists every record).
pub const TABLE_ROWS: usize = 1000;

/// A row kept for the table.
enum Kept {
    Run(Box<crate::engine::RunReport>),
    NoMatch(Event),
}

/// What the table shows of a run, nothing more: its last record per step
/// (action and outcome), without the trigger's labels, the parameters or
/// the evidence, which the audit and `--output json` carry. A thousand
/// kept runs whole were several megabytes of a million-alert run.
fn for_table(mut rep: crate::engine::RunReport) -> crate::engine::RunReport {
    // One stripped trigger for the run and its records (they share one).
    let t = &rep.planned.trigger;
    let stripped = std::sync::Arc::new(crate::audit::TriggerRef {
        kind: t.kind,
        alertname: t.alertname.clone(),
        fingerprint: t.fingerprint.clone(),
        status: t.status,
        labels: Default::default(),
        annotations: Default::default(),
        values: Default::default(),
        starts_at: t.starts_at,
    });
    rep.planned.trigger = stripped.clone();
    for s in &mut rep.planned.steps {
        s.params = serde_json::Value::Null;
    }
    let mut last: Vec<audit::Record> = Vec::with_capacity(rep.planned.steps.len().max(1));
    for mut r in rep.records.drain(..) {
        r.trigger = stripped.clone();
        r.target = Default::default();
        r.params = serde_json::Value::Null;
        r.evidence = Default::default();
        match last.iter_mut().find(|l| l.step == r.step) {
            Some(l) => *l = r,
            None => last.push(r),
        }
    }
    rep.records = last;
    rep
}

/// Where the events come from: payloads read one at a time, or the one
/// event of a manual run.
enum Source {
    Payloads {
        shown: String,
        first: Option<Payload>,
        rest: crate::replay::Payloads<Box<dyn Read>>,
    },
    One(Option<Event>),
}

impl Source {
    /// The next notification's events (None at the end).
    fn next(&mut self) -> Result<Option<Vec<Event>>> {
        match self {
            Source::One(ev) => Ok(ev.take().map(|e| vec![e])),
            Source::Payloads { shown, first, rest } => {
                let p = match first.take() {
                    Some(p) => p,
                    None => match rest.next() {
                        None => return Ok(None),
                        Some(p) => p.map_err(|e| Error::Input(format!("{shown}: {e}")))?,
                    },
                };
                if p.truncated_alerts > 0 {
                    eprintln!(
                        "warning: {shown}: Alertmanager left out {} alert(s) of this group (max_alerts); they are not in the payload and are not decided",
                        p.truncated_alerts
                    );
                }
                Ok(Some(p.into_events()))
            }
        }
    }
}

/// Opens `--alert`: a file or stdin, read as a stream of payloads; the
/// first is read now, so a bad body is refused before anything is recorded.
fn open_alerts(path: &Path) -> Result<Source> {
    let shown = path.display().to_string();
    let reader: Box<dyn Read> = if path == Path::new("-") {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(path)
            .map_err(|e| Error::Input(format!("{shown}: cannot read: {e}")))?;
        Box::new(f)
    };
    let mut rest = crate::replay::Payloads::new(reader);
    // The first body's errors read as they did when `--alert` was one body.
    let first = match rest.next() {
        Some(p) => p.map_err(|e| Error::Input(format!("{shown}: {}", e.message)))?,
        None => {
            return Err(Error::Input(format!(
                "{shown}: empty: not an Alertmanager webhook body"
            )))
        }
    };
    Ok(Source::Payloads {
        shown,
        first: Some(first),
        rest,
    })
}

/// Runs `remediate run`.
pub fn run(args: RunArgs, out: &mut dyn Write) -> Result<()> {
    let (cfg, pb_origin, pol_origin) = load(&args.sources)?;
    let now = args.at.unwrap_or_else(Utc::now);
    let mut source = match (&args.alert, &args.playbook) {
        (Some(path), _) => open_alerts(path)?,
        (None, Some(name)) => {
            let pb = cfg.playbook(name).ok_or_else(|| {
                let names: Vec<&str> = cfg.playbooks.iter().map(|p| p.name()).collect();
                Error::Input(format!(
                    "unknown playbook {name:?} (loaded from {pb_origin}: {})",
                    names.join(", ")
                ))
            })?;
            let values: Labels = args.set.iter().cloned().collect();
            // Reject unknown or missing values before anything is recorded.
            pb.resolve_values(&values).map_err(Error::Input)?;
            Source::One(Some(Event::for_playbook(
                TriggerKind::Manual,
                name,
                values,
                now,
            )))
        }
        (None, None) => return Err(Error::Input("give --alert FILE or --playbook NAME".into())),
    };

    // The history, streamed into the ledger (nothing else is kept).
    // What the windows read; with `--at` (a time that may lie before the
    // newest history) the agent's wider horizon, as the agent would keep.
    let mut ledger = match args.at {
        None => crate::policy::Ledger::with_horizons(crate::pipeline::exact_horizon(&cfg)),
        Some(_) => crate::policy::Ledger::with_horizon(crate::pipeline::horizon(&cfg)),
    };
    let history = audit::scan_all(&args.audit, &mut |r| audit::enter(&mut ledger, &r))
        .map_err(|e| Error::Input(e.to_string()))?;
    if !history.damaged.is_empty() && !args.dry_run {
        return Err(Error::Input(audit::damaged_error(
            &args.audit,
            &history.damaged,
        )));
    }
    if !history.skipped.is_empty() {
        eprintln!(
            "warning: {}: skipped unreadable line(s) {:?} (a torn write from a crash is expected at the end)",
            args.audit.display(),
            history.skipped
        );
    }
    // Group commit: one fsync per batch of records that change nothing;
    // a real execution's records are durable before its apply starts.
    let mut group_commit = audit::GroupCommit::new(
        audit::Writer::open(&args.audit).map_err(|e| Error::Input(e.to_string()))?,
    );
    if args.output == Output::Json {
        // The records printed are the lines written, encoded once.
        group_commit.echo();
    }
    let writer = std::sync::Mutex::new(group_commit);
    let mut echoed = Vec::new();
    let node = crate::config::node_name(args.node.clone());
    // On every core: a step's driver may spread CPU work over tasks (a
    // compaction rewrites its bins in parallel); on one thread they queue.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Action(format!("cannot start runtime: {e}")))?;
    // With --config, the agent's coordinator too: a manual run claims its
    // Lease (or Swarm config) and charges the cluster-wide limits like the
    // running agents, so it cannot double-act beside them.
    let (mut registry, coordinator) = match &args.config {
        Some(path) => {
            let cfg = crate::config::AgentConfig::load(path)?;
            crate::backends::connect(&cfg, &node, &rt)?
        }
        None => (crate::drivers::host::builtin(&node), None),
    };
    if let Some(path) = &args.kubeconfig {
        let backend = crate::config::KubernetesBackend {
            kubeconfig: Some(path.clone()),
            context: args.context.clone(),
            namespace: None,
        };
        let client = rt
            .block_on(crate::drivers::kubernetes::connect(&backend))
            .map_err(|e| Error::Input(format!("--kubeconfig: {e}")))?;
        crate::drivers::kubernetes::register(
            &mut registry,
            std::sync::Arc::new(crate::drivers::kubernetes::Kube {
                client,
                holder: format!("remediate-cli@{node}"),
            }),
        );
    }
    // Long steps (a compaction) say how far they are on stderr.
    crate::progress::print_to_stderr(!args.dry_run);
    let mut engine = Engine::new(cfg, registry, node.clone());
    engine.coordinator = coordinator;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
    if args.output == Output::Text {
        outln!(
            out,
            "playbooks: {} from {pb_origin}; policies: {} from {pol_origin}; evaluated at {}{}",
            engine.config.playbooks.len(),
            engine.config.policies.len(),
            now.format("%Y-%m-%dT%H:%M:%SZ"),
            if args.dry_run {
                "; DRY RUN: nothing will be changed"
            } else {
                ""
            }
        );
    }

    let mut summary = Summary::default();
    let mut kept: Vec<Kept> = Vec::new();
    let mut more = 0usize;
    let decided = (|| -> Result<()> {
        let mut group = 0u64;
        while let Some(events) = source.next()? {
            // One payload is one notification: maxTargetsPerRun counts within it.
            ledger.begin_group(group);
            group += 1;
            for ev in events {
                summary.events += 1;
                if ev.status == Status::Resolved {
                    summary.resolved += 1;
                }
                let planned = engine.decide(&ev, args.dry_run, now, &mut ledger);
                if planned.is_empty() {
                    summary.unmatched += 1;
                    if args.output == Output::Text && kept.len() < TABLE_ROWS {
                        kept.push(Kept::NoMatch(ev));
                    } else {
                        more += 1;
                    }
                    continue;
                }
                for p in planned {
                    let rep = rt
                        .block_on(engine.execute(p, &writer, &mut ledger))
                        .map_err(|e| {
                            Error::Action(format!(
                                "audit write failed, stopping before any further action: {e}"
                            ))
                        })?;
                    // As finally decided: a run can still be suppressed
                    // after the gate (a refused claim, a pause).
                    match &rep.planned.decision {
                        Decision::Execute => summary.execute += 1,
                        Decision::DryRun(_) => summary.dry_run += 1,
                        Decision::Suppressed(_) => summary.suppressed += 1,
                        Decision::NeedsApproval(_) => summary.needs_approval += 1,
                    }
                    if matches!(rep.status, RunStatus::Failed(_)) {
                        summary.failed += 1;
                    }
                    if args.output == Output::Json {
                        writer
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .take_echoed(&mut echoed);
                        out.write_all(&echoed).map_err(Error::output)?;
                        echoed.clear();
                    } else if kept.len() < TABLE_ROWS {
                        kept.push(Kept::Run(Box::new(for_table(rep))));
                    } else {
                        more += 1;
                    }
                }
            }
        }
        Ok(())
    })();
    // Durable before exit, whatever stopped the loop.
    let committed = writer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .commit()
        .map_err(|e| Error::Action(format!("audit write failed: {e}")));
    decided?;
    committed?;
    summary.records = writer.lock().map(|w| w.written()).unwrap_or_default();

    if args.output == Output::Text {
        let rows: Vec<Row<'_>> = kept
            .iter()
            .map(|k| match k {
                Kept::Run(r) => Row::Run(r),
                Kept::NoMatch(e) => Row::NoMatch(e),
            })
            .collect();
        outln!(out, "{}", report::table(&rows));
        if more > 0 {
            outln!(
                out,
                "… and {more} more row(s): the table shows the first {TABLE_ROWS}; --output json lists every record"
            );
        }
        outln!(out, "{}", summary.line(&args.audit.display().to_string()));
    }
    out.flush().map_err(Error::output)?;
    if summary.failed > 0 {
        return Err(Error::Action(format!(
            "{} run(s) failed; see {}",
            summary.failed,
            args.audit.display()
        )));
    }
    Ok(())
}
