//! `host.disk.prune`: delete or compress old files under allowlisted roots
//! until the filesystem's usage is under a target.
//!
//! Safety, checked for every file at plan time and again right before it is
//! touched: only regular files (never a symlink, never followed), only under
//! the rule's root (resolved), only on the root's own filesystem (same
//! device; mounts below the root are not entered), only older than the
//! rule's minimum age, never one of the newest `keepNewest` matches of its
//! directory. Dry-run lists every file and the bytes it would free.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::drivers::action::{
    target_display, Action, ActionSpec, DriverError, Outcome, Params, Plan, Request, Scope,
    ScopeKind, Target, Verdict,
};
use crate::units::Duration;

/// `host.disk.prune` in the catalogue.
pub const SPEC: ActionSpec = ActionSpec::of::<DiskPrune>(
    "host.disk.prune",
    "host",
    "Delete or compress old files under allowlisted roots until disk usage is under a target.",
    ScopeKind::Node,
    600,
    &[("host", &["node"])],
);

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

/// One file the plan would touch.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Candidate {
    /// Absolute path.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Delete or compress.
    pub action: String,
    /// Rule index.
    pub rule: usize,
}

/// Filesystem usage.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Bytes used (size minus available to unprivileged users, as `df`).
    pub used: u64,
    /// Total usable bytes (used + available).
    pub total: u64,
}

impl Usage {
    /// Percent used, rounded up (as `df`).
    pub fn percent(&self) -> u64 {
        if self.total == 0 {
            return 0;
        }
        (self.used * 100).div_ceil(self.total)
    }
}

/// Usage of the filesystem holding `path`.
pub fn usage(path: &Path) -> std::io::Result<Usage> {
    let s = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    let f = s.f_frsize;
    let used = (s.f_blocks - s.f_bfree) * f;
    let avail = s.f_bavail * f;
    Ok(Usage {
        used,
        total: used + avail,
    })
}

fn globs(rule: &PruneRule) -> Result<globset::GlobSet, String> {
    let mut b = globset::GlobSetBuilder::new();
    for g in &rule.globs {
        let glob = globset::GlobBuilder::new(g)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("glob {g:?}: {e}"))?;
        b.add(glob);
    }
    b.build().map_err(|e| e.to_string())
}

/// Every file the rules allow touching, oldest first within each rule.
pub fn candidates(p: &DiskPrune, now: SystemTime) -> Result<Vec<Candidate>, String> {
    let mut out = Vec::new();
    for (i, rule) in p.rules.iter().enumerate() {
        let root = Path::new(&rule.root);
        let Ok(root_meta) = std::fs::symlink_metadata(root) else {
            continue; // an absent root has nothing to prune
        };
        if !root_meta.is_dir() {
            return Err(format!(
                "rules[{i}].root {} is not a directory (symlinks are not followed)",
                rule.root
            ));
        }
        let set = globs(rule)?;
        let min_age = rule.min_age.std();
        let mut files: Vec<(PathBuf, u64, SystemTime)> = Vec::new();
        for entry in walkdir::WalkDir::new(root)
            .follow_links(false)
            .same_file_system(true)
            .into_iter()
            .filter_map(Result::ok)
        {
            let ft = entry.file_type();
            if !ft.is_file() {
                continue;
            }
            let Ok(rel) = entry.path().strip_prefix(root) else {
                continue;
            };
            if !set.is_match(rel) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != root_meta.dev() {
                continue;
            }
            let mtime = meta.modified().unwrap_or(now);
            if now
                .duration_since(mtime)
                .unwrap_or(std::time::Duration::ZERO)
                < min_age
            {
                continue;
            }
            if rule.action == PruneAction::Compress
                && entry.path().extension().is_some_and(|e| e == "gz")
            {
                continue;
            }
            files.push((entry.path().to_path_buf(), meta.len(), mtime));
        }
        // keepNewest per directory.
        let mut by_dir: std::collections::BTreeMap<PathBuf, Vec<(PathBuf, u64, SystemTime)>> =
            Default::default();
        for f in files {
            by_dir
                .entry(f.0.parent().map(Path::to_path_buf).unwrap_or_default())
                .or_default()
                .push(f);
        }
        let mut kept: Vec<(PathBuf, u64, SystemTime)> = Vec::new();
        for (_, mut v) in by_dir {
            v.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
            kept.extend(v.into_iter().skip(rule.keep_newest as usize));
        }
        kept.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.cmp(&b.0)));
        out.extend(kept.into_iter().map(|(path, bytes, _)| Candidate {
            path,
            bytes,
            action: match rule.action {
                PruneAction::Delete => "delete".into(),
                PruneAction::Compress => "compress".into(),
            },
            rule: i,
        }));
    }
    Ok(out)
}

/// The candidates needed to bring usage under the target (estimated: a
/// compressed file is assumed to free 90% of its size).
pub fn select(all: Vec<Candidate>, u: Usage, target_percent: u8) -> Vec<Candidate> {
    let goal = u.total * u64::from(target_percent) / 100;
    let mut used = u.used;
    let mut out = Vec::new();
    for c in all {
        if used <= goal {
            break;
        }
        let freed = if c.action == "compress" {
            c.bytes * 9 / 10
        } else {
            c.bytes
        };
        used = used.saturating_sub(freed);
        out.push(c);
    }
    out
}

/// Re-checks a candidate right before touching it: still a regular file,
/// still under its root, still on the root's filesystem.
fn still_safe(c: &Candidate, root: &Path) -> Result<std::fs::Metadata, String> {
    let meta =
        std::fs::symlink_metadata(&c.path).map_err(|e| format!("{}: {e}", c.path.display()))?;
    if !meta.file_type().is_file() {
        return Err(format!("{} is no longer a regular file", c.path.display()));
    }
    let root_real = std::fs::canonicalize(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let parent = c.path.parent().ok_or("no parent")?;
    let parent_real =
        std::fs::canonicalize(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    if !parent_real.starts_with(&root_real) {
        return Err(format!(
            "{} resolves outside {}",
            c.path.display(),
            root.display()
        ));
    }
    let root_dev = std::fs::metadata(&root_real)
        .map_err(|e| e.to_string())?
        .dev();
    if meta.dev() != root_dev {
        return Err(format!(
            "{} is on another filesystem than {}",
            c.path.display(),
            root.display()
        ));
    }
    Ok(meta)
}

fn compress(path: &Path) -> std::io::Result<u64> {
    use std::io::Write;
    let gz = {
        let mut s = path.as_os_str().to_owned();
        s.push(".gz");
        PathBuf::from(s)
    };
    if gz.exists() {
        return Err(std::io::Error::other(format!("{} exists", gz.display())));
    }
    let mut input = std::fs::File::open(path)?;
    let tmp = {
        let mut s = gz.as_os_str().to_owned();
        s.push(".remediate-tmp");
        PathBuf::from(s)
    };
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    std::io::copy(&mut input, &mut enc)?;
    let out = enc.finish()?;
    out.sync_all()?;
    let written = out.metadata()?.len();
    drop(out);
    let mtime = std::fs::metadata(path)?.modified()?;
    std::fs::rename(&tmp, &gz)?;
    let f = std::fs::File::options().write(true).open(&gz)?;
    f.set_modified(mtime)?;
    let mut f = f;
    f.flush()?;
    std::fs::remove_file(path)?;
    Ok(written)
}

/// The driver, for targets on this agent's node.
#[derive(Debug, Clone)]
pub struct HostDiskPrune {
    node: String,
}

impl HostDiskPrune {
    /// For the agent on `node`.
    pub fn new(node: impl Into<String>) -> Self {
        Self { node: node.into() }
    }
}

/// The filesystem the target names: `target.mountpoint`, else the first root.
fn mountpoint(req: &Request, p: &DiskPrune) -> PathBuf {
    req.target
        .get("mountpoint")
        .filter(|m| !m.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(&p.rules[0].root))
}

fn human(b: u64) -> String {
    crate::units::human_bytes(b)
}

/// `83% (41.5GiB of 50GiB used)`.
fn usage_text(u: &Usage) -> String {
    format!(
        "{}% ({} of {} used)",
        u.percent(),
        human(u.used),
        human(u.total)
    )
}

/// Per rule: `ROOT: SIZE in N file(s)`, for the files given.
fn by_rule(p: &DiskPrune, files: &[Candidate], bytes: impl Fn(&Candidate) -> u64) -> String {
    p.rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let mine: Vec<&Candidate> = files.iter().filter(|c| c.rule == i).collect();
            (!mine.is_empty()).then(|| {
                format!(
                    "{}: {} in {} file(s)",
                    r.root,
                    human(mine.iter().map(|c| bytes(c)).sum()),
                    mine.len()
                )
            })
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[async_trait]
impl Action for HostDiskPrune {
    fn name(&self) -> &'static str {
        SPEC.name
    }
    fn scope(&self, req: &Request) -> Scope {
        Scope::Node(req.target.get("node").cloned().unwrap_or_default())
    }

    fn reaches(&self, req: &Request) -> bool {
        req.target.get("node") == Some(&self.node)
    }

    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        match req.target.get("node") {
            Some(n) if *n == self.node => {}
            Some(n) => {
                return Err(DriverError::permanent(format!(
                    "host.disk.prune targets node {n}, but this agent runs on {}; pruning another node (its agent or SSH) is not available in this build",
                    self.node
                )))
            }
            None => return Err(DriverError::permanent("host.disk.prune needs target.node")),
        }
        let p: DiskPrune = req.parsed()?;
        let mp = mountpoint(req, &p);
        let p2 = p.clone();
        let (u, all) = tokio::task::spawn_blocking(move || {
            let u = usage(&mp).map_err(|e| format!("{}: {e}", mp.display()))?;
            let all = candidates(&p2, SystemTime::now())?;
            Ok::<_, String>((u, all))
        })
        .await
        .map_err(|e| DriverError::permanent(e.to_string()))?
        .map_err(DriverError::permanent)?;
        let chosen = if u.percent() <= u64::from(p.target_usage_percent) {
            Vec::new()
        } else {
            select(all, u, p.target_usage_percent)
        };
        let bytes: u64 = chosen.iter().map(|c| c.bytes).sum();
        let listing: Vec<String> = chosen
            .iter()
            .map(|c| format!("{} {} ({})", c.action, c.path.display(), human(c.bytes)))
            .collect();
        let summary = if chosen.is_empty() {
            format!(
                "usage {}% is under {}%: nothing to prune",
                u.percent(),
                p.target_usage_percent
            )
        } else {
            format!(
                "usage {}%, target {}%: {} file(s), {} : {}",
                u.percent(),
                p.target_usage_percent,
                chosen.len(),
                human(bytes),
                listing.join(", ")
            )
        };
        let evidence = json!({
            "usage before": usage_text(&u),
            "to prune by rule": if chosen.is_empty() { "nothing".to_string() } else { by_rule(&p, &chosen, |c| c.bytes) },
        });
        Ok(Plan {
            summary,
            details: json!({"usage": u, "files": chosen, "evidence": evidence}),
        })
    }

    async fn apply(&self, req: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let p: DiskPrune = req.parsed()?;
        let files: Vec<Candidate> =
            serde_json::from_value::<Vec<serde_json::Value>>(plan.details["files"].clone())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|v| {
                    Some(Candidate {
                        path: PathBuf::from(v["path"].as_str()?),
                        bytes: v["bytes"].as_u64()?,
                        action: v["action"].as_str()?.to_string(),
                        rule: v["rule"].as_u64()? as usize,
                    })
                })
                .collect();
        let mp = mountpoint(req, &p);
        let target = p.target_usage_percent;
        let rules = p.rules.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut freed = 0u64;
            let mut done = 0usize;
            let mut per_rule: Vec<(usize, u64)> = Vec::new();
            let mut skipped = Vec::new();
            for c in files {
                // Stop as soon as the target is met.
                if usage(&mp)
                    .map(|u| u.percent() <= u64::from(target))
                    .unwrap_or(false)
                {
                    break;
                }
                let root = Path::new(&rules[c.rule].root);
                let meta = match still_safe(&c, root) {
                    Ok(m) => m,
                    Err(why) => {
                        skipped.push(why);
                        continue;
                    }
                };
                let r = if c.action == "compress" {
                    compress(&c.path).map(|gz| meta.len().saturating_sub(gz))
                } else {
                    std::fs::remove_file(&c.path).map(|_| meta.len())
                };
                match r {
                    Ok(b) => {
                        freed += b;
                        done += 1;
                        per_rule.push((c.rule, b));
                    }
                    Err(e) => skipped.push(format!("{}: {e}", c.path.display())),
                }
            }
            let u = usage(&mp).ok();
            (freed, done, skipped, u, per_rule)
        })
        .await
        .map_err(|e| DriverError::permanent(e.to_string()))?;
        let (freed, done, skipped, u, per_rule) = res;
        let mut freed_by_rule: Vec<String> = Vec::new();
        for (i, r) in p.rules.iter().enumerate() {
            let mine: Vec<u64> = per_rule
                .iter()
                .filter(|(k, _)| *k == i)
                .map(|(_, b)| *b)
                .collect();
            if !mine.is_empty() {
                freed_by_rule.push(format!(
                    "{}: {} in {} file(s)",
                    r.root,
                    human(mine.iter().sum()),
                    mine.len()
                ));
            }
        }
        let evidence = json!({
            "freed": human(freed),
            "freed by rule": if freed_by_rule.is_empty() { "nothing".to_string() } else { freed_by_rule.join("; ") },
            "usage after": u.as_ref().map(usage_text),
        });
        Ok(Outcome {
            summary: format!(
                "freed {} in {done} file(s){}; usage now {}",
                human(freed),
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!(", skipped {}: {}", skipped.len(), skipped.join("; "))
                },
                u.map(|u| format!("{}%", u.percent()))
                    .unwrap_or_else(|| "unknown".into())
            ),
            details: json!({"bytesFreed": freed, "files": done, "skipped": skipped, "evidence": evidence}),
        })
    }

    async fn verify(&self, req: &Request, _plan: &Plan) -> Result<Verdict, DriverError> {
        let p: DiskPrune = req.parsed()?;
        let mp = mountpoint(req, &p);
        let u = usage(&mp).map_err(|e| DriverError::permanent(format!("{}: {e}", mp.display())))?;
        Ok(if u.percent() <= u64::from(p.target_usage_percent) {
            Verdict::Verified(format!(
                "usage {}% is under {}%",
                u.percent(),
                p.target_usage_percent
            ))
        } else {
            Verdict::Failed(format!(
                "usage still {}% (target {}%): the rules allow nothing more to be pruned",
                u.percent(),
                p.target_usage_percent
            ))
        })
    }
}
