//! Exporters: state read from backends for `/metrics`, on their own
//! schedule (the configured Iceberg tables' files and small files), and the
//! circuit breakers' state, every second.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::Shared;
use crate::metrics::TableLabels;

/// Sets `remediate_circuit_breaker_state` for every loaded playbook whose
/// policy has a circuit breaker.
pub(super) fn breakers(shared: &Shared) {
    use crate::metrics::BreakerLabels;
    use crate::policy::BreakerState;
    let engine = shared.engine();
    let now = chrono::Utc::now();
    let ledger = shared.ledger();
    for pb in &engine.config.playbooks {
        let policy = &pb.doc.spec.policy;
        let Some(spec) = engine
            .config
            .policies
            .get(policy)
            .and_then(|p| p.doc.spec.circuit_breaker.as_ref())
        else {
            continue;
        };
        let state = ledger.breaker_state(
            policy,
            pb.name(),
            spec.failures,
            spec.within.chrono(),
            spec.open_for.chrono(),
            now,
        );
        let v = match state {
            BreakerState::Closed => 0,
            BreakerState::Open { .. } => 1,
            BreakerState::HalfOpenTrial { .. } => 2,
        };
        shared
            .metrics
            .breaker_state
            .get_or_create(&BreakerLabels {
                policy: policy.clone(),
                playbook: pb.name().to_string(),
            })
            .set(v);
    }
}

/// Exports the files, small files and small-file ratio of every configured
/// Iceberg table, each catalog at its own `scrapeInterval`.
pub(super) async fn iceberg(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
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
    let mut survey = crate::drivers::iceberg::Survey::default();
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
                let labels = TableLabels {
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
