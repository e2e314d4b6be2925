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
use crate::diag::Diagnostics;
use crate::engine::Engine;
use crate::metrics::ResultLabels;
use crate::playbook::load::{read_dir, Config};

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
            shared
                .metrics
                .reloads
                .get_or_create(&ResultLabels { result: "failure" })
                .inc();
            tracing::error!(trigger = why, errors = %d, "reload rejected: the new playbooks or policies do not validate; the previous set stays in force");
            false
        }
    }
}
