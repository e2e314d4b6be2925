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

/// Largest `--alert` body accepted.
const MAX_ALERT_BYTES: u64 = 16 << 20;

fn read_alert(path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let shown = path.display();
    let res = if path == Path::new("-") {
        std::io::stdin()
            .take(MAX_ALERT_BYTES + 1)
            .read_to_end(&mut buf)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_ALERT_BYTES + 1).read_to_end(&mut buf))
    };
    res.map_err(|e| Error::Input(format!("{shown}: cannot read: {e}")))?;
    if buf.len() as u64 > MAX_ALERT_BYTES {
        return Err(Error::Input(format!(
            "{shown}: larger than {} MiB: not an Alertmanager webhook body",
            MAX_ALERT_BYTES >> 20
        )));
    }
    Ok(buf)
}

/// Runs `remediate run`.
pub fn run(args: RunArgs, out: &mut dyn Write) -> Result<()> {
    let (cfg, pb_origin, pol_origin) = load(&args.sources)?;
    let now = args.at.unwrap_or_else(Utc::now);
    let events: Vec<Event> = match (&args.alert, &args.playbook) {
        (Some(path), _) => {
            let body = read_alert(path)?;
            let payload = crate::trigger::parse_notification(&body)
                .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
            if !payload.tests.is_empty() {
                eprintln!(
                    "note: {}: {} test notification(s) (Grafana's contact-point test): not decided",
                    path.display(),
                    payload.tests.len()
                );
            }
            if payload.truncated_alerts > 0 {
                eprintln!(
                    "warning: {}: Alertmanager left out {} alert(s) of this group (max_alerts); they are not in the payload and are not decided",
                    path.display(),
                    payload.truncated_alerts
                );
            }
            payload.events
        }
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
            vec![Event::for_playbook(TriggerKind::Manual, name, values, now)]
        }
        (None, None) => return Err(Error::Input("give --alert FILE or --playbook NAME".into())),
    };

    let history = audit::read_all(&args.audit).map_err(|e| Error::Input(e.to_string()))?;
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
    let mut ledger = audit::ledger_from(&history.records);
    // One payload is one notification: maxTargetsPerRun counts within it.
    ledger.begin_group(0);
    let writer = std::sync::Mutex::new(
        audit::Writer::open(&args.audit).map_err(|e| Error::Input(e.to_string()))?,
    );
    let node = crate::config::node_name(args.node.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
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
    let mut engine = Engine::new(cfg, registry, node.clone());
    engine.coordinator = coordinator;
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

    let mut summary = Summary {
        events: events.len(),
        ..Summary::default()
    };
    let mut reports = Vec::new();
    let mut unmatched = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        if ev.status == Status::Resolved {
            summary.resolved += 1;
        }
        let planned = engine.decide(ev, args.dry_run, now, &mut ledger);
        if planned.is_empty() {
            summary.unmatched += 1;
            unmatched.push(i);
        }
        for p in planned {
            match &p.decision {
                Decision::Execute => summary.execute += 1,
                Decision::DryRun(_) => summary.dry_run += 1,
                Decision::Suppressed(_) => summary.suppressed += 1,
                Decision::NeedsApproval(_) => summary.needs_approval += 1,
            }
            let rep = rt
                .block_on(engine.execute(p, &writer, &mut ledger))
                .map_err(|e| {
                    Error::Action(format!(
                        "audit write failed, stopping before any further action: {e}"
                    ))
                })?;
            if matches!(rep.status, RunStatus::Failed(_)) {
                summary.failed += 1;
            }
            if args.output == Output::Json {
                for r in &rep.records {
                    outln!(out, "{}", serde_json::to_string(r).unwrap_or_default());
                }
            }
            reports.push((i, rep));
        }
    }
    summary.records = writer.lock().map(|w| w.written()).unwrap_or_default();

    if args.output == Output::Text {
        let mut rows: Vec<(usize, Row<'_>)> =
            reports.iter().map(|(i, r)| (*i, Row::Run(r))).collect();
        rows.extend(unmatched.iter().map(|i| (*i, Row::NoMatch(&events[*i]))));
        rows.sort_by_key(|(i, _)| *i);
        let rows: Vec<Row<'_>> = rows.into_iter().map(|(_, r)| r).collect();
        outln!(out, "{}", report::table(&rows));
        outln!(out, "{}", summary.line(&args.audit.display().to_string()));
    }
    if summary.failed > 0 {
        return Err(Error::Action(format!(
            "{} run(s) failed; see {}",
            summary.failed,
            args.audit.display()
        )));
    }
    Ok(())
}
