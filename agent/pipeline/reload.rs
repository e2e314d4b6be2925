//! Reload: playbooks and policies validated again on SIGHUP or when their
//! files change, and swapped in only if the whole set loads; a bad set
//! keeps the old one in force.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use super::schedule::Scheduler;
use super::Shared;
use crate::bundle;
use crate::config::AgentConfig;
use crate::diag::{Diagnostic, Diagnostics};
use crate::engine::Engine;
use crate::metrics::ResultLabels;
use crate::playbook::load::{read_dir, Config, Source};

/// Loads playbooks and policies from the configured directories (or the
/// embedded bundle). Every problem is reported: files that cannot be read
/// in either directory and those that do not validate. A set without any
/// playbook is refused unless `reload.allowEmpty` is set: an emptied
/// directory (a ConfigMap that lost its keys) would otherwise silently
/// turn the agent into one that does nothing.
pub fn load_config(cfg: &AgentConfig) -> Result<Config, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut read = |dir: &Option<PathBuf>, bundled: fn() -> Vec<Source>| match dir {
        Some(d) => read_dir(d).unwrap_or_else(|d| {
            diags.0.extend(d.0);
            Vec::new()
        }),
        None => bundled(),
    };
    let pbs = read(&cfg.playbooks, bundle::playbooks);
    let pols = read(&cfg.policies, bundle::policies);
    let loaded = Config::load(&pbs, &pols);
    let config = match loaded {
        Ok(c) if diags.is_empty() => c,
        Ok(_) => return Err(diags),
        Err(d) => {
            diags.0.extend(d.0);
            return Err(diags);
        }
    };
    if config.playbooks.is_empty() && !cfg.reload.allow_empty {
        let dir = cfg.playbooks.clone().unwrap_or_default();
        diags.push(Diagnostic::at(
            &dir,
            None,
            "no playbooks: the directory holds no playbook (*.yaml, *.yml), so the agent would do nothing; restore them, or set reload.allowEmpty: true if that is intended",
        ));
        return Err(diags);
    }
    Ok(config)
}

/// A cheap fingerprint of the configured directories' files (names and
/// contents), to notice changes by polling.
pub(super) fn fingerprint(cfg: &AgentConfig) -> u64 {
    dir_fingerprint(&sources_dirs(cfg))
}

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

/// Reloads on SIGHUP and, when `reload.watch` is on, on a file change
/// that has held still for one interval; restarts the schedule after a
/// successful reload.
pub(super) async fn watch(
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
            shared.store.set_horizon(super::horizon(&config));
            shared.ledger().set_horizon(Some(super::horizon(&config)));
            let old = shared.engine();
            let mut engine = Engine::new(config, old.registry.clone(), old.node.clone());
            engine.verify_interval = old.verify_interval;
            engine.coordinator = old.coordinator.clone();
            *shared.engine.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(engine);
            shared.metrics.playbooks.set(n as i64);
            shared.metrics.config_ok.set(1);
            shared.metrics.config_errors.set(0);
            shared
                .metrics
                .reloads
                .get_or_create(&ResultLabels { result: "success" })
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
            shared.metrics.config_errors.set(d.0.len() as i64);
            shared
                .metrics
                .reloads
                .get_or_create(&ResultLabels { result: "failure" })
                .inc();
            tracing::error!(trigger = why, count = d.0.len(), errors = %d, "reload rejected: the new playbooks or policies do not validate; the previous set stays in force");
            for e in &d.0 {
                tracing::error!(trigger = why, error = %e, "reload error");
            }
            false
        }
    }
}
