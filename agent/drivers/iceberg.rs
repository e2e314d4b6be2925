//! Iceberg: native small-file compaction.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::action::{target_display, Params, Target};
use crate::units::{ByteSize, Duration};

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
    /// references (local tables only).
    #[serde(default)]
    pub remove_orphan_files: bool,
    /// Orphans younger than this are kept: a writer's uncommitted files.
    #[serde(default = "default_orphan_age")]
    pub orphan_min_age: Duration,
    /// Commit attempts after the first when another writer commits first.
    #[serde(default = "default_retries")]
    pub commit_retries: u32,
}

fn default_orphan_age() -> Duration {
    Duration(std::time::Duration::from_secs(72 * 3600))
}
fn default_retries() -> u32 {
    4
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

impl Params for Compact {
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
