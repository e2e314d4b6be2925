//! The Iceberg backend: `iceberg.table.compact`, native small-file
//! compaction of an Iceberg table in a SQL (SQLite, Postgres) or REST
//! catalog. This module holds the action's parameters, catalogue entry and
//! driver, the table of actions, and the statistics survey for /metrics;
//! [`compact`] picks, rewrites and commits, [`lake`] opens catalogs.
//!
//! `plan` reads the current snapshot and reports, per partition, data
//! files, bytes, the small-files ratio (files under the threshold / all data
//! files, as remediate_iceberg_table_small_files /
//! remediate_iceberg_table_total_files) and the output files the bin-pack
//! will write; it records the snapshot it picked from. `apply` rewrites
//! exactly that pick and commits one `replace` snapshot (see
//! [`compact`]); `verify` checks none of the picked files is live any more.

pub mod compact;
mod eqdelete;
pub mod lake;
pub mod location;
mod maintain;
pub mod manifest;
pub mod partition;
pub mod sql_v0;
pub mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::json;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::IcebergCatalog;
use crate::drivers::action::{
    self, target_display, Action, ActionSpec, DriverError, Entry, Outcome, Plan, Request, Scope,
    ScopeKind, Target, Verdict,
};
use crate::drivers::registry::Registry;
use crate::units::{ByteSize, Duration};
pub use compact::{BeforeCommit, Params, Report, Selection};
pub use lake::Lake;
pub use partition::{PartitionFormat, PartitionFormats};

/// `iceberg.table.compact` in the catalogue.
pub const SPEC: ActionSpec = ActionSpec::of::<Compact>(
    "iceberg.table.compact",
    "iceberg",
    "Bin-pack small data files of an Iceberg table into files near a target size.",
    ScopeKind::Cluster,
    3600,
    &[("iceberg.table", &["catalog", "name"])],
);

/// `iceberg.table.compact`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "IcebergCompact")]
pub struct Compact {
    /// A data file smaller than this counts as small.
    #[serde(default = "default_small")]
    pub small_file_threshold: ByteSize,
    /// Size the rewritten files aim for.
    #[serde(default = "default_target")]
    pub target_file_size: ByteSize,
    /// Compact a partition only when its small-file ratio exceeds this (0..1).
    #[serde(default = "default_ratio")]
    pub min_small_files_ratio: f64,
    /// Compact at most this many partitions per run.
    #[serde(default)]
    pub max_partitions: Option<u32>,
    /// Optionally expire snapshots older than this after compacting.
    #[serde(default)]
    pub expire_snapshots_older_than: Option<Duration>,
    /// Optionally remove files under the table's location that nothing
    /// references (local and S3 tables).
    #[serde(default)]
    pub remove_orphan_files: bool,
    /// Orphans younger than this are kept: a writer's uncommitted files.
    #[serde(default = "default_orphan_age")]
    pub orphan_min_age: Duration,
    /// Commit attempts after the first when another writer commits first.
    #[serde(default = "default_retries")]
    pub commit_retries: u32,
    /// The rewrite's memory bound: bins are rewritten at once (at most one
    /// per core) only while their input adds up to at most this; a bin
    /// larger than this runs alone. Peak memory follows this, not the
    /// table's size (docs/benchmarks.md has figures).
    #[serde(default = "default_in_flight")]
    pub max_bytes_in_flight: ByteSize,
}

/// Orphans a plan's summary names one by one (the log and the plan's
/// details name them all).
const ORPHANS_SHOWN: usize = 100;

fn default_orphan_age() -> Duration {
    Duration(std::time::Duration::from_secs(72 * 3600))
}
fn default_retries() -> u32 {
    4
}

fn default_in_flight() -> ByteSize {
    ByteSize(256 << 20)
}

fn default_small() -> ByteSize {
    ByteSize(32 << 20)
}
fn default_target() -> ByteSize {
    ByteSize(128 << 20)
}
fn default_ratio() -> f64 {
    0.3
}

impl action::Params for Compact {
    fn check(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.min_small_files_ratio) {
            return Err(format!(
                "minSmallFilesRatio must be in [0, 1), got {}",
                self.min_small_files_ratio
            ));
        }
        if self.small_file_threshold >= self.target_file_size {
            return Err("smallFileThreshold must be smaller than targetFileSize".into());
        }
        Ok(())
    }
    fn describe(&self, t: &Target) -> String {
        format!(
            "compact partitions of {} whose small-file ratio (files < {}) exceeds {:.0}% into ~{} files",
            target_display(t),
            self.small_file_threshold,
            self.min_small_files_ratio * 100.0,
            self.target_file_size
        )
    }
}

/// An iceberg crate error as a driver error naming `what`. A missing table
/// or namespace, invalid data and unsupported features are permanent;
/// the rest (a locked SQLite file, a restarting catalog, storage) may pass.
pub(crate) fn ice(what: impl std::fmt::Display, e: iceberg::Error) -> DriverError {
    use iceberg::ErrorKind as K;
    let msg = format!("{what}: {e}");
    match e.kind() {
        K::TableNotFound | K::NamespaceNotFound | K::DataInvalid | K::FeatureUnsupported => {
            DriverError::permanent(msg)
        }
        _ => DriverError::retryable(msg),
    }
}

/// One partition's files.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PartitionStats {
    /// Partition value, as text.
    pub partition: String,
    /// Data files.
    pub files: usize,
    /// Of which under the small-file threshold.
    pub small_files: usize,
    /// Bytes of all data files.
    pub bytes: u64,
    /// Bytes of the small files.
    pub small_bytes: u64,
    /// Rows.
    pub rows: u64,
    /// Delete files (format v2) of this partition.
    pub delete_files: usize,
}

impl PartitionStats {
    /// small files / all data files.
    pub fn ratio(&self) -> f64 {
        if self.files == 0 {
            0.0
        } else {
            self.small_files as f64 / self.files as f64
        }
    }
}

/// The driver: catalogs by name from `backends.iceberg`.
#[derive(Debug)]
pub struct IcebergCompact {
    catalogs: BTreeMap<String, IcebergCatalog>,
    /// What `apply` picked, by table and planned snapshot, for `verify`:
    /// the planned snapshot may be expired by then.
    picked: std::sync::Mutex<HashMap<(String, i64), HashSet<String>>>,
}

/// Every Iceberg action: its catalogue entry and its driver.
pub const ACTIONS: &[Entry<BTreeMap<String, IcebergCatalog>>] = &[Entry::new(&SPEC, |catalogs| {
    Arc::new(IcebergCompact {
        catalogs: catalogs.clone(),
        picked: Default::default(),
    })
})];

/// Registers the Iceberg action when catalogs are configured.
pub fn register(reg: &mut Registry, catalogs: &BTreeMap<String, IcebergCatalog>) {
    if !catalogs.is_empty() {
        reg.register_table(ACTIONS, catalogs);
    }
}

impl From<&Compact> for Params {
    fn from(c: &Compact) -> Self {
        Params {
            small: c.small_file_threshold.0,
            target: c.target_file_size.0,
            min_ratio: c.min_small_files_ratio,
            max_partitions: c.max_partitions.map(|n| n as usize),
            commit_retries: c.commit_retries,
            max_bytes_in_flight: c.max_bytes_in_flight.0,
        }
    }
}

/// Keeps catalogs open and manifests read between /metrics refreshes: a
/// manifest never changes, so a refresh reads only the manifests committed
/// since the last one.
#[derive(Default)]
pub struct Survey {
    lakes: HashMap<String, Lake>,
    manifests: HashMap<String, compact::Manifests>,
}

impl Survey {
    /// Per-partition statistics of `table`'s current snapshot.
    pub async fn stats(
        &mut self,
        key: &str,
        cfg: &IcebergCatalog,
        table: &str,
        small: u64,
    ) -> Result<Vec<PartitionStats>, DriverError> {
        let ident = lake::ident(table)?;
        if !self.lakes.contains_key(key) {
            self.lakes
                .insert(key.to_string(), Lake::open(key, cfg).await?);
        }
        let t = match self.lakes[key].load(&ident).await {
            Ok(t) => t,
            Err(e) => {
                // Reopen next time: the catalog may have moved or restarted.
                self.lakes.remove(key);
                return Err(e);
            }
        };
        let cache = self.manifests.entry(format!("{key}.{table}")).or_default();
        let p = Params {
            small,
            target: u64::MAX,
            min_ratio: 1.0,
            max_partitions: None,
            commit_retries: 0,
            max_bytes_in_flight: u64::MAX,
        };
        let partitions = compact::select_cached(&t, None, &p, cache)
            .await?
            .partitions;
        // Keep only what the current snapshot lists.
        match t.metadata().current_snapshot() {
            Some(s) => {
                let now: HashSet<String> = compact::manifests_of(&t, s, cache)
                    .await?
                    .into_iter()
                    .map(|m| m.manifest_path)
                    .collect();
                cache.retain(|path, _| now.contains(path));
            }
            None => cache.clear(),
        }
        Ok(partitions)
    }
}

impl IcebergCompact {
    async fn open(&self, req: &Request) -> Result<(Lake, iceberg::table::Table), DriverError> {
        let key = req.target.get("catalog").cloned().unwrap_or_default();
        let table = req.target.get("name").cloned().unwrap_or_default();
        let cfg = self.catalogs.get(&key).ok_or_else(|| {
            DriverError::permanent(format!(
                "no backends.iceberg catalog named {key:?} (configured: {})",
                self.catalogs.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let lake = Lake::open(&key, cfg).await?;
        let t = lake.load(&lake::ident(&table)?).await?;
        Ok((lake, t))
    }
}

/// Partitions an evidence list names one by one; the rest are counted.
const EVIDENCE_PARTITIONS: usize = 10;

/// `items` (already in the order to show) as `a; b; …; and N more`.
fn capped(items: Vec<String>) -> String {
    let n = items.len();
    let mut shown: Vec<String> = items.into_iter().take(EVIDENCE_PARTITIONS).collect();
    if n > EVIDENCE_PARTITIONS {
        shown.push(format!("… {} more", n - EVIDENCE_PARTITIONS));
    }
    shown.join("; ")
}

/// What on-call would look up before a compaction: the partitions picked
/// (the ones with the most files first), their files and bytes now, the
/// bins and the files they will make; and what is left alone.
fn plan_evidence(sel: &Selection) -> serde_json::Value {
    use crate::units::human_bytes as human;
    if sel.groups.is_empty() {
        return json!({"to compact": "nothing: no partition over the threshold"});
    }
    let mut groups: Vec<&compact::Group> = sel.groups.iter().collect();
    groups.sort_by(|a, b| {
        b.stats
            .files
            .cmp(&a.stats.files)
            .then_with(|| a.stats.partition.cmp(&b.stats.partition))
    });
    let files: usize = groups.iter().map(|g| g.input_files()).sum();
    let bytes: u64 = groups.iter().map(|g| g.input_bytes()).sum();
    let outputs: usize = groups.iter().map(|g| g.planned_outputs()).sum();
    let by = groups
        .iter()
        .map(|g| {
            format!(
                "{}: {} files, {} now, {} small in {} bin(s) -> {} file(s)",
                g.stats.partition,
                g.stats.files,
                human(g.stats.bytes),
                g.input_files(),
                g.planned_outputs(),
                g.planned_outputs()
            )
        })
        .collect();
    let mut ev = json!({
        "to compact": format!(
            "{files} files ({}) in {} partition(s) -> {outputs} file(s)",
            human(bytes),
            groups.len()
        ),
        "partitions to compact": capped(by),
    });
    if !sel.skipped.is_empty() {
        ev["partitions skipped"] = json!(capped(
            sel.skipped
                .iter()
                .map(|(p, why)| format!("{p}: {why}"))
                .collect()
        ));
    }
    ev
}

/// What a compaction did: each partition's files and bytes before -> after
/// (the ones that lost the most files first), the totals, how long.
fn outcome_evidence(r: &Report) -> serde_json::Value {
    use crate::units::human_bytes as human;
    let mut changes: Vec<&compact::PartitionChange> = r.changes.iter().collect();
    changes.sort_by(|a, b| {
        let gone = |c: &compact::PartitionChange| c.files_before.saturating_sub(c.files_after);
        gone(b)
            .cmp(&gone(a))
            .then_with(|| a.partition.cmp(&b.partition))
    });
    let by = changes
        .iter()
        .map(|c| {
            format!(
                "{}: {} files, {} -> {} files, {}",
                c.partition,
                c.files_before,
                human(c.bytes_before),
                c.files_after,
                human(c.bytes_after)
            )
        })
        .collect();
    json!({
        "compacted": format!(
            "{} files ({}) -> {} files ({}) in {} partition(s), {} rows",
            r.files_removed,
            human(r.bytes_removed),
            r.files_added,
            human(r.bytes_added),
            r.partitions,
            r.rows
        ),
        "compacted by partition": capped(by),
        "duration": format!(
            "{} (rewrite {}, commit {})",
            crate::units::human_ms(r.rewrite_ms + r.commit_ms),
            crate::units::human_ms(r.rewrite_ms),
            crate::units::human_ms(r.commit_ms)
        ),
    })
}

fn table_key(req: &Request) -> String {
    format!(
        "{}.{}",
        req.target.get("catalog").map_or("", String::as_str),
        req.target.get("name").map_or("", String::as_str)
    )
}

fn planned_snapshot(plan: &Plan) -> Option<i64> {
    plan.details["snapshotId"].as_i64()
}

#[async_trait]
impl Action for IcebergCompact {
    fn name(&self) -> &'static str {
        SPEC.name
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        let c: Compact = req.parsed()?;
        let (lake, t) = self.open(req).await?;
        let sel = compact::select(&t, None, &Params::from(&c)).await?;
        let mut lines = Vec::new();
        let mut chosen = Vec::new();
        for g in &sel.groups {
            let s = &g.stats;
            let mut deletes = match g.delete_files_applied() {
                0 => String::new(),
                n => format!(
                    ", {n} position delete file(s) applied ({} row(s)), {} of them removed",
                    g.rows_deleted(),
                    g.delete_files_dropped()
                ),
            };
            if let n @ 1.. = g.equality_files_applied() {
                deletes.push_str(&format!(
                    ", {n} equality delete file(s) applied, {} of them removed",
                    g.equality_files_dropped()
                ));
            }
            lines.push(format!(
                "{}: {} files, {} small ({:.0}%), {} -> {} file(s){deletes}",
                s.partition,
                s.files,
                s.small_files,
                s.ratio() * 100.0,
                crate::units::human_bytes(s.small_bytes),
                g.planned_outputs()
            ));
            chosen.push(
                json!({"partition": s.partition, "files": s.files, "smallFiles": s.small_files,
                "bytes": s.bytes, "smallBytes": s.small_bytes, "ratio": s.ratio(),
                "inputFiles": g.input_files(), "outputFiles": g.planned_outputs(),
                "deleteFilesApplied": g.delete_files_applied(), "deleteFilesRemoved": g.delete_files_dropped(),
                "rowsDeleted": g.rows_deleted(),
                "equalityDeleteFilesApplied": g.equality_files_applied(),
                "equalityDeleteFilesRemoved": g.equality_files_dropped()}),
            );
        }
        for (p, why) in &sel.skipped {
            lines.push(format!("{p}: skipped, {why}"));
        }
        let files: usize = sel.partitions.iter().map(|s| s.files).sum();
        let small: usize = sel.partitions.iter().map(|s| s.small_files).sum();
        let name = t.identifier().to_string();
        let extra = match (&c.expire_snapshots_older_than, c.remove_orphan_files) {
            (Some(d), true) => format!(
                "; then expire snapshots older than {d} and remove orphan files older than {}",
                c.orphan_min_age
            ),
            (Some(d), false) => format!("; then expire snapshots older than {d}"),
            (None, true) => format!("; then remove orphan files older than {}", c.orphan_min_age),
            (None, false) => String::new(),
        };
        // The orphans as of now, listed in full: apply removes no file
        // this list lacks.
        let (extra, orphans) = if c.remove_orphan_files {
            match maintain::orphans(
                &lake.store().for_table(&t),
                &t,
                c.orphan_min_age.0,
                &mut compact::Manifests::new(),
            )
            .await
            {
                Ok(found) => {
                    let bytes: u64 = found.iter().map(|o| o.bytes).sum();
                    let paths: Vec<String> = found.iter().map(|o| o.path.clone()).collect();
                    for p in &paths {
                        tracing::info!(path = %p, "orphan file to remove");
                    }
                    let shown = if paths.len() > ORPHANS_SHOWN {
                        format!(
                            "{} and {} more (every one in the log and the plan's details)",
                            paths[..ORPHANS_SHOWN].join(", "),
                            paths.len() - ORPHANS_SHOWN
                        )
                    } else {
                        paths.join(", ")
                    };
                    let text = if paths.is_empty() {
                        format!("{extra} (none now)")
                    } else {
                        format!(
                            "{extra} ({} file(s), {}: {shown})",
                            paths.len(),
                            crate::units::human_bytes(bytes)
                        )
                    };
                    (text, json!(paths))
                }
                Err(why) => (
                    format!("{extra} (it will remove none: {why})"),
                    serde_json::Value::Null,
                ),
            }
        } else {
            (extra, serde_json::Value::Null)
        };
        let evidence = plan_evidence(&sel);
        Ok(Plan {
            summary: format!(
                "table {}.{name}: {files} data files, {small} small; compact {} partition(s): {}{extra}",
                lake.key,
                sel.groups.len(),
                if lines.is_empty() { "none over the threshold".into() } else { lines.join("; ") }
            ),
            details: json!({
                "snapshotId": sel.snapshot_id,
                "partitions": chosen,
                "skipped": sel.skipped.iter().map(|(p, w)| json!({"partition": p, "reason": w})).collect::<Vec<_>>(),
                "orphans": orphans,
                "evidence": evidence,
            }),
        })
    }
    async fn apply(&self, req: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let c: Compact = req.parsed()?;
        let (lake, t) = self.open(req).await?;
        let mut details = serde_json::Map::new();
        let mut summary = Vec::new();
        match planned_snapshot(plan) {
            Some(snap)
                if plan.details["partitions"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty()) =>
            {
                let r = compact::compact(&lake, &t, Some(snap), &Params::from(&c), None).await?;
                {
                    let mut m = self.picked.lock().unwrap_or_else(|e| e.into_inner());
                    if m.len() >= 64 {
                        m.clear();
                    }
                    m.insert((table_key(req), snap), r.picked.clone());
                }
                let deletes = if r.rows_deleted > 0
                    || r.rows_equality_deleted > 0
                    || r.delete_files_removed > 0
                {
                    format!(
                        " ({} row(s) deleted by position deletes and {} by equality deletes left out; {} delete file(s) removed)",
                        r.rows_deleted, r.rows_equality_deleted, r.delete_files_removed
                    )
                } else {
                    String::new()
                };
                summary.push(match r.snapshot_id {
                    Some(id) => format!(
                        "replaced {} small files ({}) in {} partition(s) with {} ({}), {} rows{deletes}, snapshot {id} (operation replace, {} attempt(s))",
                        r.files_removed,
                        crate::units::human_bytes(r.bytes_removed),
                        r.partitions,
                        r.files_added,
                        crate::units::human_bytes(r.bytes_added),
                        r.rows,
                        r.attempts
                    ),
                    None => "the planned files are no longer live: nothing to do".to_string(),
                });
                details.insert(
                    "compaction".into(),
                    serde_json::to_value(&r).unwrap_or_default(),
                );
                if r.snapshot_id.is_some() {
                    details.insert("evidence".into(), outcome_evidence(&r));
                }
            }
            _ => summary.push("no partition over the threshold: nothing to compact".into()),
        }
        let planned: HashSet<String> = plan.details["orphans"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let m = maintain::run(&lake, &t, &c, Some(&planned)).await?;
        if let Some(s) = m.summary() {
            summary.push(s);
        }
        details.insert(
            "maintenance".into(),
            serde_json::to_value(&m).unwrap_or_default(),
        );
        Ok(Outcome {
            summary: summary.join("; "),
            details: serde_json::Value::Object(details),
        })
    }
    async fn verify(&self, req: &Request, plan: &Plan) -> Result<Verdict, DriverError> {
        let c: Compact = req.parsed()?;
        let (_, t) = self.open(req).await?;
        // One read of each manifest serves the figures, the live files and
        // (without apply's pick at hand) the pick from the planned snapshot.
        let mut cache = compact::Manifests::new();
        let now = compact::select_cached(&t, None, &Params::from(&c), &mut cache).await?;
        let files: usize = now.partitions.iter().map(|s| s.files).sum();
        let small: usize = now.partitions.iter().map(|s| s.small_files).sum();
        let Some(snap) = planned_snapshot(plan) else {
            return Ok(Verdict::Verified(format!(
                "nothing was due; {files} data files, {small} small"
            )));
        };
        let stashed = self
            .picked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(table_key(req), snap))
            .cloned();
        let picked = match stashed {
            Some(p) => p,
            // Applied by another process: pick again from the snapshot.
            None => compact::select_cached(&t, Some(snap), &Params::from(&c), &mut cache)
                .await?
                .picked(),
        };
        let live: HashSet<String> = compact::live_paths_cached(&t, &mut cache)
            .await?
            .iter()
            .map(|p| location::key(p))
            .collect();
        let left = picked
            .iter()
            .filter(|p| live.contains(&location::key(p)))
            .count();
        Ok(if left == 0 {
            Verdict::Verified(format!(
                "none of the {} picked small files is live; the table has {files} data files, {small} small",
                picked.len()
            ))
        } else {
            Verdict::Failed(format!(
                "{left} of the {} picked small files are still live",
                picked.len()
            ))
        })
    }
}
