//! Optional maintenance after a compaction, off by default:
//!
//! - **Expire snapshots** older than `expireSnapshotsOlderThan` (the
//!   current snapshot and the table's `history.expire.min-snapshots-to-keep`
//!   always stay) with the iceberg crate's own expire action, committed
//!   through its catalog; then the files only the expired snapshots
//!   referenced (manifest lists, manifests, data files) are deleted, as
//!   Java's `expireSnapshots` does.
//! - **Remove orphan files**: files under the table's location that no
//!   snapshot, metadata file or statistics file references and that are
//!   older than `orphanMinAge` (default 3 days, so a writer's files that are
//!   not committed yet are never taken). Local (`file://`) tables only.

use std::collections::HashSet;
use std::time::SystemTime;

use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use serde::Serialize;

use super::compact::{manifests_of, Manifests};
use super::ice;
use super::lake::Lake;
use super::Compact;
use crate::drivers::action::DriverError;

/// What maintenance did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    /// Snapshots expired (`None`: not asked).
    pub snapshots_expired: Option<usize>,
    /// Files deleted because only expired snapshots referenced them.
    pub expired_files_deleted: usize,
    /// Orphan files removed (`None`: not asked).
    pub orphans_removed: Option<usize>,
    /// Their bytes.
    pub orphan_bytes: u64,
}

impl Maintenance {
    /// A sentence, or `None` when nothing was asked.
    pub fn summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(n) = self.snapshots_expired {
            parts.push(format!(
                "expired {n} snapshot(s), deleting {} file(s) only they referenced",
                self.expired_files_deleted
            ));
        }
        if let Some(n) = self.orphans_removed {
            parts.push(format!(
                "removed {n} orphan file(s) ({})",
                crate::units::human_bytes(self.orphan_bytes)
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

fn local(path: &str) -> &str {
    path.strip_prefix("file://").unwrap_or(path)
}

/// Every file the table's metadata references, as local paths. Snapshots
/// share most manifests: each is read once, through `cache`.
async fn referenced(table: &Table, cache: &mut Manifests) -> Result<HashSet<String>, DriverError> {
    let md = table.metadata();
    let mut out = HashSet::new();
    if let Some(l) = table.metadata_location() {
        out.insert(local(l).to_string());
    }
    for l in md.metadata_log() {
        out.insert(local(&l.metadata_file).to_string());
    }
    for s in md.statistics_iter() {
        out.insert(local(&s.statistics_path).to_string());
    }
    for s in md.partition_statistics_iter() {
        out.insert(local(&s.statistics_path).to_string());
    }
    for s in md.snapshots() {
        out.extend(snapshot_files(table, s, cache).await?);
    }
    Ok(out)
}

/// The manifest list, manifests and live content files of one snapshot.
async fn snapshot_files(
    table: &Table,
    s: &iceberg::spec::SnapshotRef,
    cache: &mut Manifests,
) -> Result<HashSet<String>, DriverError> {
    let mut out = HashSet::new();
    out.insert(local(s.manifest_list()).to_string());
    for mf in manifests_of(table, s, cache).await? {
        out.insert(local(&mf.manifest_path).to_string());
        for e in cache[&mf.manifest_path].entries() {
            // Live entries only: a file a snapshot lists as deleted is live
            // in its parent, which counts on its own if it is retained.
            if e.is_alive() {
                out.insert(local(e.file_path()).to_string());
            }
        }
    }
    Ok(out)
}

/// Runs what `c` asks for.
pub async fn run(lake: &Lake, table: &Table, c: &Compact) -> Result<Maintenance, DriverError> {
    let mut m = Maintenance::default();
    let mut cache = Manifests::new();
    let mut table = table.clone();
    if c.expire_snapshots_older_than.is_none() && !c.remove_orphan_files {
        return Ok(m);
    }
    // Work on the state after the compaction.
    table = lake.load(table.identifier()).await?;
    if let Some(age) = c.expire_snapshots_older_than {
        let before: HashSet<i64> = table
            .metadata()
            .snapshots()
            .map(|s| s.snapshot_id())
            .collect();
        let cutoff = chrono::Utc::now().timestamp_millis() - age.0.as_millis() as i64;
        let tx = Transaction::new(&table);
        let tx = tx
            .expire_snapshots()
            .expire_older_than_ms(cutoff)
            .apply(tx)
            .map_err(|e| ice("expire snapshots", e))?;
        let after = tx
            .commit(lake.catalog())
            .await
            .map_err(|e| ice("expire snapshots: commit", e))?;
        let kept: HashSet<i64> = after
            .metadata()
            .snapshots()
            .map(|s| s.snapshot_id())
            .collect();
        let gone: Vec<i64> = before.difference(&kept).copied().collect();
        m.snapshots_expired = Some(gone.len());
        if !gone.is_empty() {
            let still = referenced(&after, &mut cache).await?;
            let mut candidates = HashSet::new();
            for id in &gone {
                if let Some(s) = table.metadata().snapshot_by_id(*id) {
                    candidates.extend(snapshot_files(&table, s, &mut cache).await?);
                }
            }
            for f in candidates.difference(&still) {
                match std::fs::remove_file(f) {
                    Ok(()) => m.expired_files_deleted += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %f, error = %e, "could not delete a file of an expired snapshot")
                    }
                }
            }
        }
        table = after;
    }
    if c.remove_orphan_files {
        let root = table.metadata().location();
        if !(root.starts_with("file://") || root.starts_with('/')) {
            return Err(DriverError::permanent(format!(
                "removeOrphanFiles lists the table's directory and works on local (file://) tables only; {root} is not"
            )));
        }
        let root = local(root).to_string();
        let keep = referenced(&table, &mut cache).await?;
        let min_age = c.orphan_min_age.0;
        let now = SystemTime::now();
        let (mut n, mut bytes) = (0usize, 0u64);
        for entry in walkdir::WalkDir::new(&root).follow_links(false) {
            let entry = entry.map_err(|e| DriverError::retryable(format!("list {root}: {e}")))?;
            if !entry.file_type().is_file() {
                continue;
            }
            let path = entry.path().display().to_string();
            if keep.contains(&path) {
                continue;
            }
            let meta = entry
                .metadata()
                .map_err(|e| DriverError::retryable(format!("{path}: {e}")))?;
            let old = meta
                .modified()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|a| a >= min_age);
            if !old {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    n += 1;
                    bytes += meta.len();
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(DriverError::retryable(format!("remove {path}: {e}"))),
            }
        }
        m.orphans_removed = Some(n);
        m.orphan_bytes = bytes;
    }
    Ok(m)
}
