//! Optional maintenance after a compaction, off by default:
//!
//! - **Expire snapshots** older than `expireSnapshotsOlderThan` (the
//!   current snapshot and the table's `history.expire.min-snapshots-to-keep`
//!   always stay) with the iceberg crate's own expire action, committed
//!   through its catalog; then exactly the files only the expired snapshots
//!   referenced (manifest lists, manifests, data and delete files, their
//!   statistics files) are deleted, as Java's `expireSnapshots` does.
//! - **Remove orphan files**: files under the table's location that nothing
//!   references and that are older than `orphanMinAge` (default 3 days, so
//!   a writer's files that are not committed yet are never taken). Local
//!   and S3 tables (the bucket listed under the table's prefix).
//!
//! Every location is compared in canonical form ([`Location`]), whichever
//! way its writer spelled it (`file:/x` from Java, `file:///x`, `/x`).
//! Both fail closed: when anything that decides what is kept cannot be
//! read or its location cannot be put in canonical form, nothing is
//! deleted and the outcome says why. Orphan removal keeps everything
//! referenced by the current metadata and by every metadata file in its
//! log: their snapshots' manifest lists, manifests, live data and delete
//! files, statistics and partition-statistics files, the metadata files
//! themselves and a Hadoop table's `version-hint.text`. Like Java's
//! `DeleteOrphanFiles`, it never lists hidden files (`.x`, `_x`; a
//! directory `_x=v` is a partition and is listed), and a file whose path
//! equals a referenced one's but for scheme or authority stops it (Java's
//! `PrefixMismatchMode.ERROR`).

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use iceberg::spec::{ManifestList, SnapshotRef, TableMetadata};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use serde::Serialize;

use super::compact::{load_manifests, manifests_of, Manifests};
use super::ice;
use super::lake::Lake;
use super::location::Location;
use super::store::{Listed, Store};
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
    /// Why no file of the expired snapshots was deleted, when so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expired_files_kept: Option<String>,
    /// Orphan files removed (`None`: not asked).
    pub orphans_removed: Option<usize>,
    /// Their bytes.
    pub orphan_bytes: u64,
    /// Why no orphan was removed, when orphan removal refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orphans_kept: Option<String>,
}

impl Maintenance {
    /// A sentence, or `None` when nothing was asked.
    pub fn summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(n) = self.snapshots_expired {
            parts.push(match &self.expired_files_kept {
                None => format!(
                    "expired {n} snapshot(s), deleting {} file(s) only they referenced",
                    self.expired_files_deleted
                ),
                Some(why) => {
                    format!("expired {n} snapshot(s) but deleted none of their files: {why}")
                }
            });
        }
        if let Some(n) = self.orphans_removed {
            parts.push(match &self.orphans_kept {
                None => format!(
                    "removed {n} orphan file(s) ({})",
                    crate::units::human_bytes(self.orphan_bytes)
                ),
                Some(why) => format!("removed no orphan files: {why}"),
            });
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Why nothing may be deleted.
type Refusal = String;

/// Canonical locations of files that must stay.
#[derive(Debug, Default)]
struct Kept {
    set: HashSet<Location>,
    /// One kept location per path part, to catch a file that matches a
    /// kept one except for scheme or authority.
    by_path: HashMap<String, Location>,
}

impl Kept {
    /// Adds `written` (as its writer spelled it); `what` names it in the
    /// refusal when it has no canonical form.
    fn add(&mut self, written: &str, what: &str) -> Result<(), Refusal> {
        let l = Location::parse(written).map_err(|e| format!("{what}: {e}"))?;
        for a in l.aliases() {
            self.by_path
                .entry(a.path().to_string())
                .or_insert(a.clone());
            self.set.insert(a);
        }
        self.by_path
            .entry(l.path().to_string())
            .or_insert(l.clone());
        self.set.insert(l);
        Ok(())
    }

    /// Whether `l` may be deleted: `Ok(false)` when it is kept, an error
    /// when it matches a kept file but for scheme or authority.
    fn deletable(&self, l: &Location) -> Result<bool, Refusal> {
        if self.set.contains(l) {
            return Ok(false);
        }
        match self.by_path.get(l.path()) {
            Some(other) => Err(format!(
                "{l} matches the referenced {other} except for scheme or authority; a table's files may have moved, so nothing is deleted"
            )),
            None => Ok(true),
        }
    }
}

/// The manifest list, manifests and live content files of one snapshot
/// of `table`, as written.
async fn snapshot_files(
    table: &Table,
    s: &SnapshotRef,
    cache: &mut Manifests,
) -> Result<Vec<String>, DriverError> {
    let mut out = vec![s.manifest_list().to_string()];
    for mf in manifests_of(table, s, cache).await? {
        out.push(mf.manifest_path.clone());
        for e in cache[&mf.manifest_path].entries() {
            // Live entries only: a file a snapshot lists as deleted is live
            // in its parent, which counts on its own if it is retained.
            if e.is_alive() {
                out.push(e.file_path().to_string());
            }
        }
    }
    Ok(out)
}

/// The metadata file, its log, statistics and every snapshot's files of
/// `table`: what expiry keeps. Any read failure refuses.
async fn kept_by_current(table: &Table, cache: &mut Manifests) -> Result<Kept, Refusal> {
    let md = table.metadata();
    let mut kept = Kept::default();
    if let Some(l) = table.metadata_location() {
        kept.add(l, "current metadata file")?;
    }
    for l in md.metadata_log() {
        kept.add(&l.metadata_file, "metadata log entry")?;
    }
    for s in md.statistics_iter() {
        kept.add(&s.statistics_path, "statistics file")?;
    }
    for s in md.partition_statistics_iter() {
        kept.add(&s.statistics_path, "partition statistics file")?;
    }
    for s in md.snapshots() {
        let files = snapshot_files(table, s, cache).await.map_err(|e| {
            format!(
                "snapshot {} (manifest list {}) cannot be read: {}",
                s.snapshot_id(),
                s.manifest_list(),
                e.message
            )
        })?;
        for f in files {
            kept.add(&f, &format!("a file of snapshot {}", s.snapshot_id()))?;
        }
    }
    Ok(kept)
}

/// What orphan removal keeps: [`kept_by_current`], and everything each
/// metadata file in the log references. A log entry must be readable; a
/// snapshot only older metadata files know of may have been expired and
/// its files deleted, so a manifest list or manifest of such a snapshot
/// that no longer exists is passed over (a file that does not exist is not
/// deleted either), while one that exists and cannot be read refuses.
async fn kept_for_orphans(table: &Table, cache: &mut Manifests) -> Result<Kept, Refusal> {
    let mut kept = kept_by_current(table, cache).await?;
    let io = table.file_io();
    let mut seen: HashSet<i64> = table
        .metadata()
        .snapshots()
        .map(|s| s.snapshot_id())
        .collect();
    for entry in table.metadata().metadata_log() {
        let path = &entry.metadata_file;
        let md = TableMetadata::read_from(io, path)
            .await
            .map_err(|e| format!("metadata log entry {path} cannot be read: {e}"))?;
        for s in md.statistics_iter() {
            kept.add(&s.statistics_path, &format!("statistics file in {path}"))?;
        }
        for s in md.partition_statistics_iter() {
            kept.add(
                &s.statistics_path,
                &format!("partition statistics file in {path}"),
            )?;
        }
        for s in md.snapshots() {
            if !seen.insert(s.snapshot_id()) {
                continue;
            }
            let what = format!("snapshot {} of {path}", s.snapshot_id());
            kept.add(s.manifest_list(), &what)?;
            let list_path = s.manifest_list();
            if !exists(table, list_path)
                .await
                .map_err(|e| format!("{what}: {e}"))?
            {
                continue;
            }
            let bytes = io
                .new_input(list_path)
                .map_err(|e| format!("{what}: manifest list {list_path}: {e}"))?
                .read()
                .await
                .map_err(|e| format!("{what}: manifest list {list_path} cannot be read: {e}"))?;
            let list = ManifestList::parse_with_version(&bytes, md.format_version())
                .map_err(|e| format!("{what}: manifest list {list_path} cannot be read: {e}"))?;
            let mut present = Vec::new();
            for mf in list.entries() {
                kept.add(&mf.manifest_path, &what)?;
                if cache.contains_key(&mf.manifest_path)
                    || exists(table, &mf.manifest_path)
                        .await
                        .map_err(|e| format!("{what}: {e}"))?
                {
                    present.push(mf.clone());
                }
            }
            load_manifests(table, &present, cache)
                .await
                .map_err(|e| format!("{what}: {}", e.message))?;
            for mf in &present {
                for e in cache[&mf.manifest_path].entries() {
                    if e.is_alive() {
                        kept.add(e.file_path(), &what)?;
                    }
                }
            }
        }
    }
    Ok(kept)
}

async fn exists(table: &Table, path: &str) -> Result<bool, String> {
    table
        .file_io()
        .exists(path)
        .await
        .map_err(|e| format!("{path}: cannot tell whether it exists: {e}"))
}

/// An orphan file: where it is and its size.
#[derive(Debug, Clone)]
pub struct Orphan {
    /// The file as listed: a local path, or `s3://bucket/key`.
    pub path: String,
    /// Bytes.
    pub bytes: u64,
    listed: Listed,
}

/// The orphan files of `table` older than `min_age`, or why none may be
/// deleted. Reads the whole reference set first; lists the table's
/// location after (its directory, or its prefix in the bucket), so a file
/// committed in between is seen as kept only if it was committed before
/// the references were read (hence the age). A file whose age the storage
/// does not tell is kept.
pub async fn orphans(
    store: &Store,
    table: &Table,
    min_age: std::time::Duration,
    cache: &mut Manifests,
) -> Result<Vec<Orphan>, Refusal> {
    let written = table.metadata().location();
    let root = Location::parse(written).map_err(|e| format!("table location: {e}"))?;
    if root.local_path().is_none() && root.scheme() != "s3" {
        return Err(format!(
            "orphan removal lists the table's location and works on local and s3 tables only; {written} is neither"
        ));
    }
    if root.scheme() == "s3" && !store.has_s3() {
        return Err(format!(
            "{written} is on S3 but the catalog has no s3 settings (backends.iceberg.<catalog>.s3)"
        ));
    }
    let mut kept = kept_for_orphans(table, cache).await?;
    // A Hadoop catalog's pointer to the current metadata.
    kept.add(
        &format!("{root}/metadata/version-hint.text"),
        "version hint",
    )?;
    let now = SystemTime::now();
    let mut out = Vec::new();
    for f in store.list(&root).await? {
        if !f.location.is_under(&root) {
            return Err(format!(
                "listing {root} gave {}, which is not under it",
                f.written
            ));
        }
        if !kept.deletable(&f.location)? {
            continue;
        }
        let old = f
            .modified
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|a| a >= min_age);
        if old {
            out.push(Orphan {
                path: f.written.clone(),
                bytes: f.bytes,
                listed: f,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Deletes the file at `written` (canonical `l`): locally by path, else
/// through the table's storage.
async fn delete(table: &Table, l: &Location, written: &str) -> std::io::Result<()> {
    match l.local_path() {
        Some(p) => std::fs::remove_file(p),
        None => table
            .file_io()
            .delete(written)
            .await
            .map_err(std::io::Error::other),
    }
}

/// Files only the snapshots `gone` of `before` referenced, given the
/// state `after` the expiry committed: candidates by canonical location,
/// with one spelling to delete each by.
async fn expired_files(
    before: &Table,
    after: &Table,
    gone: &HashSet<i64>,
    cache: &mut Manifests,
) -> Result<Vec<(Location, String)>, Refusal> {
    let kept = kept_by_current(after, cache).await?;
    let mut cands: HashMap<Location, String> = HashMap::new();
    let md = before.metadata();
    let mut written = Vec::new();
    for id in gone {
        if let Some(s) = md.snapshot_by_id(*id) {
            let files = snapshot_files(before, s, cache).await.map_err(|e| {
                format!(
                    "expired snapshot {id} (manifest list {}) cannot be read: {}",
                    s.manifest_list(),
                    e.message
                )
            })?;
            written.extend(files);
        }
    }
    written.extend(
        md.statistics_iter()
            .filter(|s| gone.contains(&s.snapshot_id))
            .map(|s| s.statistics_path.clone()),
    );
    written.extend(
        md.partition_statistics_iter()
            .filter(|s| gone.contains(&s.snapshot_id))
            .map(|s| s.statistics_path.clone()),
    );
    for w in written {
        let l = Location::parse(&w).map_err(|e| format!("a file of an expired snapshot: {e}"))?;
        if kept.deletable(&l)? {
            cands.entry(l).or_insert(w);
        }
    }
    let mut out: Vec<_> = cands.into_iter().collect();
    out.sort();
    Ok(out)
}

/// Runs what `c` asks for. `planned_orphans` (the plan's list, as local
/// paths) bounds orphan removal: a file is removed only when the plan
/// listed it and it is still an orphan now.
pub async fn run(
    lake: &Lake,
    table: &Table,
    c: &Compact,
    planned_orphans: Option<&HashSet<String>>,
) -> Result<Maintenance, DriverError> {
    let mut m = Maintenance::default();
    let mut cache = Manifests::new();
    if c.expire_snapshots_older_than.is_none() && !c.remove_orphan_files {
        return Ok(m);
    }
    // Work on the state after the compaction.
    let mut table = lake.load(table.identifier()).await?;
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
        let gone: HashSet<i64> = before.difference(&kept).copied().collect();
        m.snapshots_expired = Some(gone.len());
        if !gone.is_empty() {
            match expired_files(&table, &after, &gone, &mut cache).await {
                Ok(files) => {
                    for (l, w) in files {
                        match delete(&after, &l, &w).await {
                            Ok(()) => m.expired_files_deleted += 1,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => {
                                tracing::warn!(path = %w, error = %e, "could not delete a file of an expired snapshot")
                            }
                        }
                    }
                }
                Err(why) => {
                    tracing::warn!(reason = %why, "expired snapshots' files kept");
                    m.expired_files_kept = Some(why);
                }
            }
        }
        table = after;
    }
    if c.remove_orphan_files {
        let (mut n, mut bytes) = (0usize, 0u64);
        let store = lake.store().for_table(&table);
        match orphans(&store, &table, c.orphan_min_age.0, &mut cache).await {
            Ok(found) => {
                for o in found {
                    let listed = planned_orphans.is_none_or(|planned| planned.contains(&o.path));
                    if !listed {
                        continue;
                    }
                    match store.delete(&o.listed).await {
                        Ok(()) => {
                            tracing::info!(path = %o.path, bytes = o.bytes, "removed orphan file");
                            n += 1;
                            bytes += o.bytes;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(DriverError::retryable(format!("remove {}: {e}", o.path)))
                        }
                    }
                }
            }
            Err(why) => {
                tracing::warn!(reason = %why, "orphan removal refused: nothing deleted");
                m.orphans_kept = Some(why);
            }
        }
        m.orphans_removed = Some(n);
        m.orphan_bytes = bytes;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_matching_a_kept_one_but_for_scheme_or_authority_refuses() {
        let mut k = Kept::default();
        k.add("file:/wh/t/data/a.parquet", "test").unwrap();
        k.add("s3a://lake/wh/t/data/b.parquet", "test").unwrap();
        let l = |s| Location::parse(s).unwrap();
        assert!(!k.deletable(&l("/wh/t/data/a.parquet")).unwrap());
        assert!(!k.deletable(&l("file:///wh/t/data/a.parquet")).unwrap());
        assert!(!k.deletable(&l("s3://lake/wh/t/data/b.parquet")).unwrap());
        assert!(k.deletable(&l("/wh/t/data/c.parquet")).unwrap());
        let e = k
            .deletable(&l("s3://other/wh/t/data/a.parquet"))
            .unwrap_err();
        assert!(e.contains("except for scheme or authority"), "{e}");
        let e = k.add("file://host/wh/x", "statistics file").unwrap_err();
        assert!(
            e.starts_with("statistics file: location \"file://host/wh/x\""),
            "{e}"
        );
    }

    #[test]
    fn refusals_and_results_read_as_sentences() {
        let m = Maintenance {
            snapshots_expired: Some(2),
            expired_files_kept: Some("expired snapshot 1 cannot be read".into()),
            orphans_removed: Some(0),
            orphans_kept: Some("metadata log entry x cannot be read".into()),
            ..Default::default()
        };
        assert_eq!(
            m.summary().unwrap(),
            "expired 2 snapshot(s) but deleted none of their files: expired snapshot 1 cannot be read; removed no orphan files: metadata log entry x cannot be read"
        );
    }
}
