//! Host disk prune: old files under allowlisted roots.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::action::{target_display, Params, Target};
use crate::units::Duration;

/// What to do with a matching file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PruneAction {
    /// Remove it.
    #[default]
    Delete,
    /// gzip it in place (rotated logs).
    Compress,
}

/// One prune rule.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "HostPruneRule")]
pub struct PruneRule {
    /// Absolute directory; nothing outside it is touched, symlinks are not followed,
    /// other filesystems are not entered.
    pub root: String,
    /// File name globs relative to the root (`**/*.log.*`, `*.tmp`).
    #[serde(default = "all")]
    pub globs: Vec<String>,
    /// Only files not modified for this long.
    pub min_age: Duration,
    /// Always keep the newest N matching files of each directory.
    #[serde(default)]
    pub keep_newest: u32,
    /// `delete` (default) or `compress`.
    #[serde(default)]
    pub action: PruneAction,
}

fn all() -> Vec<String> {
    vec!["**/*".into()]
}

/// `host.disk.prune`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "HostDiskPrune")]
pub struct DiskPrune {
    /// Rules, applied in order.
    pub rules: Vec<PruneRule>,
    /// Stop once usage of the filesystem is under this percentage.
    #[serde(default = "default_target")]
    pub target_usage_percent: u8,
}

fn default_target() -> u8 {
    80
}

impl Params for DiskPrune {
    fn check(&self) -> Result<(), String> {
        if self.rules.is_empty() {
            return Err("rules must have at least one rule".into());
        }
        for (i, r) in self.rules.iter().enumerate() {
            if !r.root.starts_with('/') || r.root.contains("{{") {
                return Err(format!(
                    "rules[{i}].root must be an absolute path, got {:?}",
                    r.root
                ));
            }
            let trimmed = r.root.trim_end_matches('/');
            if trimmed.is_empty() || r.root.split('/').any(|c| c == "..") {
                return Err(format!(
                    "rules[{i}].root {:?} is not allowed: name a specific directory",
                    r.root
                ));
            }
            if r.globs.is_empty()
                || r.globs
                    .iter()
                    .any(|g| g.starts_with('/') || g.split('/').any(|c| c == ".."))
            {
                return Err(format!(
                    "rules[{i}].globs must be non-empty and relative, without '..'"
                ));
            }
        }
        if !(1..=99).contains(&self.target_usage_percent) {
            return Err(format!(
                "targetUsagePercent must be in 1..=99, got {}",
                self.target_usage_percent
            ));
        }
        Ok(())
    }
    fn describe(&self, t: &Target) -> String {
        let rules: Vec<String> = self
            .rules
            .iter()
            .map(|r| {
                let verb = match r.action {
                    PruneAction::Delete => "delete",
                    PruneAction::Compress => "compress",
                };
                let keep = if r.keep_newest > 0 {
                    format!(", keep newest {}", r.keep_newest)
                } else {
                    String::new()
                };
                format!(
                    "{verb} {}/{{{}}} older than {}{keep}",
                    r.root.trim_end_matches('/'),
                    r.globs.join(","),
                    r.min_age
                )
            })
            .collect();
        format!(
            "on {}: {} until usage is under {}%",
            target_display(t),
            rules.join("; "),
            self.target_usage_percent
        )
    }
}
