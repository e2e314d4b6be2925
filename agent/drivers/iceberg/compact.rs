//! Small-file compaction of one Iceberg table: pick, rewrite, commit.
//!
//! - **Pick.** From one snapshot, per partition of the default spec: the
//!   data files under the small-file threshold, bin-packed (first fit,
//!   largest first) into bins near the target size. A partition is picked
//!   when its small-file ratio exceeds the threshold and it has two or more
//!   small files (see **Deletes** for what delete files change). The pick
//!   is a pure function of the snapshot and the parameters, so the plan
//!   names a snapshot id and apply and verify pick exactly the same files
//!   again.
//! - **Deletes** (format v2). The delete files that apply to a partition
//!   are its own and the global ones (of an unpartitioned spec), as Java's
//!   scan planning matches them.
//!   - *Position deletes* are applied: the pick reads each one (`file_path`,
//!     `pos`), the rewrite hands them to the crate's Arrow reader (the
//!     scan task's `deletes`), which leaves the deleted rows out, and the
//!     row check becomes rows read less rows deleted (counted by the pick,
//!     independently of the reader) equals rows written. A position delete
//!     file all of whose referenced data files are rewritten is removed in
//!     the same `replace` commit; one that also references a file left
//!     alone is kept (it still applies there; it names the old paths, so it
//!     cannot touch the new files). The partition is skipped, with the
//!     reason, when a position delete file cannot be read (or is not
//!     Parquet), names a picked file in another spelling than the manifest
//!     (the reader matches paths exactly), deletes a row past a file's end,
//!     or references a picked file of a later data sequence number (it must
//!     not apply there, but the reader would apply it once another file of
//!     the bin loaded it).
//!   - *Equality deletes* are applied by the rewrite itself
//!     (`eqdelete.rs`), not by the crate's reader: the iceberg 0.10 reader
//!     turns them into a row filter `NOT (c1 = v1 AND …)` per deleted row,
//!     which drops rows the delete does not match: with one equality
//!     column, every row of a file written before the column was added
//!     (tested in `tests/iceberg.rs`; Iceberg reads the column as null,
//!     which equals no deleted value) and, by its code, any row holding a
//!     null there. The pick reads every equality delete file that applies
//!     to a small file (data sequence number strictly below its own) into
//!     keys; the rewrite reads each such file on its own and leaves out
//!     the rows whose key is deleted at a higher sequence number, and the
//!     row check subtracts what it left out. An equality delete file of
//!     the partition itself is removed in the same commit when every data
//!     file of the partition it applies to is rewritten (the lowest
//!     sequence number of the files left alone is not below its own);
//!     global ones are kept (they apply to partitions this does not
//!     rewrite). The partition is skipped, with the reason, when a delete
//!     column is no longer in the schema or nested in a struct, a delete
//!     file cannot be read, or the keys would outgrow `maxBytesInFlight`.
//!   - *Sequence numbers.* The new files are added with the commit's
//!     sequence number (inherited, as for any added file), above every
//!     delete file's: the equality deletes that applied to the files they
//!     replace were applied, and none applies to them now; the kept
//!     position deletes name other paths. An equality or position delete
//!     committed between the pick and the commit, in a compacted partition
//!     or global, aborts the commit (with Spark's choice, the old sequence
//!     number, a concurrent equality delete would apply to the new files;
//!     with the new one it would be lost), and so does data committed
//!     meanwhile with a sequence number below an equality delete being
//!     removed.
//! - **Rewrite.** Each bin is read with the crate's Arrow reader (field-id
//!   projection onto the current schema) and written with its Parquet
//!   writer (the table's write properties), rolling at the target size;
//!   bins run in parallel. When the table has a sort order of identity
//!   fields, each output file is sorted by it.
//! - **Commit.** One snapshot with operation `replace`: the picked files are
//!   marked deleted in rewrites of the manifests that list them, every other
//!   manifest of the current snapshot is carried over, and a new manifest
//!   adds the output files; the dropped position delete files are marked
//!   deleted in rewrites of their delete manifests. On a conflict the table
//!   is reloaded and the manifests rebuilt on the new state (a concurrent
//!   append is kept); a picked or dropped file that someone else removed,
//!   or a new delete file in a compacted partition (or a global one),
//!   aborts. Row counts are checked before committing.
//!   Whatever is not committed is deleted again, unless the commit's outcome
//!   is unknown and cannot be settled by reloading.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use iceberg::scan::{FileScanTask, FileScanTaskDeleteFile};
use iceberg::spec::{
    DataContentType, DataFile, DataFileFormat, FormatVersion, Manifest, ManifestContentType,
    ManifestEntry, ManifestFile, ManifestListWriter, ManifestWriterBuilder, Operation,
    PartitionKey, Snapshot, SnapshotReference, SnapshotRetention, SnapshotSummaryCollector, Struct,
    Summary, Transform, MAIN_BRANCH,
};
use iceberg::table::Table;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::{TableRequirement, TableUpdate};
use serde::Serialize;

use super::eqdelete::{EqDeletes, EqFile};
use super::ice;
use super::lake::{CommitError, Lake};
use super::partition::PartitionFormats;
use super::PartitionStats;
use crate::drivers::action::DriverError;

/// What to compact.
#[derive(Debug, Clone)]
pub struct Params {
    /// A data file under this many bytes is small.
    pub small: u64,
    /// Output files aim for this size.
    pub target: u64,
    /// Compact a partition whose small-file ratio exceeds this.
    pub min_ratio: f64,
    /// At most this many partitions (the worst first).
    pub max_partitions: Option<usize>,
    /// Commit attempts after the first, on conflicts.
    pub commit_retries: u32,
    /// The input bytes of the bins being rewritten at once add up to at
    /// most this (one bin always runs, however large): the bound on the
    /// rewrite's memory, whatever the table's size.
    pub max_bytes_in_flight: u64,
}

/// A manifest entry shared with the manifest cache: a picked file is not
/// copied (a `DataFile` with its column statistics is some kilobytes, and
/// a small-files table has many thousands of them).
#[derive(Debug, Clone)]
struct Entry(Arc<ManifestEntry>);

impl std::ops::Deref for Entry {
    type Target = DataFile;
    fn deref(&self) -> &DataFile {
        self.0.data_file()
    }
}

/// A data file as listed by a manifest.
#[derive(Debug, Clone)]
struct Listed {
    file: Entry,
    spec_id: i32,
    /// Data sequence number (inherited from the manifest when unset).
    seq: i64,
}

/// One partition chosen for compaction.
#[derive(Debug, Clone)]
pub struct Group {
    /// Its figures before.
    pub stats: PartitionStats,
    partition: Struct,
    /// Bins of files to merge, each into ~one output file.
    bins: Vec<Vec<Entry>>,
    /// The position delete files each picked data file's read applies, by
    /// the data file's path.
    deletes: HashMap<String, Vec<FileScanTaskDeleteFile>>,
    /// Rows those deletes remove from the picked files.
    rows_deleted: u64,
    /// Position delete files referencing only picked files: removed in the
    /// same commit.
    dropped: Vec<Entry>,
    /// Position delete files applied but kept: they also reference data
    /// files this compaction leaves alone.
    kept: usize,
    /// The equality deletes applying to some picked file, read and keyed
    /// (applied by the rewrite, not the crate's reader).
    eq: Option<Arc<EqDeletes>>,
    /// Data sequence numbers of the picked files, by path (an equality
    /// delete applies to data of a strictly lower one).
    seqs: HashMap<String, i64>,
    /// Of `dropped`, equality delete files: every data file of the
    /// partition they apply to is rewritten.
    eq_dropped: usize,
    /// The highest sequence number of a dropped equality delete file: a
    /// concurrent commit adding data of a lower one to the partition (a
    /// rewrite keeping its starting sequence number) aborts the commit.
    eq_dropped_seq: Option<i64>,
}

impl Group {
    /// Files this group rewrites.
    pub fn input_files(&self) -> usize {
        self.bins.iter().map(Vec::len).sum()
    }
    /// Output files the bins should make.
    pub fn planned_outputs(&self) -> usize {
        self.bins.len()
    }
    /// Position delete files applied while rewriting.
    pub fn delete_files_applied(&self) -> usize {
        self.dropped.len() - self.eq_dropped + self.kept
    }
    /// Of which removed in the commit (they reference only picked files).
    pub fn delete_files_dropped(&self) -> usize {
        self.dropped.len() - self.eq_dropped
    }
    /// Equality delete files applied while rewriting.
    pub fn equality_files_applied(&self) -> usize {
        self.eq.as_ref().map_or(0, |e| e.files())
    }
    /// Of which removed in the commit (every data file of the partition
    /// they apply to is rewritten).
    pub fn equality_files_dropped(&self) -> usize {
        self.eq_dropped
    }
    /// Rows the applied deletes remove from the picked files.
    pub fn rows_deleted(&self) -> u64 {
        self.rows_deleted
    }
    /// Bytes of the files this group rewrites.
    pub fn input_bytes(&self) -> u64 {
        self.bins
            .iter()
            .flatten()
            .map(|f| f.file_size_in_bytes())
            .sum()
    }
}

/// The pick from one snapshot.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// The snapshot picked from (`None`: empty table).
    pub snapshot_id: Option<i64>,
    /// Every partition's figures.
    pub partitions: Vec<PartitionStats>,
    /// The partitions to compact, worst ratio first.
    pub groups: Vec<Group>,
    /// Partitions over the threshold that are left alone, and why.
    pub skipped: Vec<(String, String)>,
}

impl Selection {
    /// Paths of every picked file.
    pub fn picked(&self) -> HashSet<String> {
        self.groups
            .iter()
            .flat_map(|g| g.bins.iter().flatten())
            .map(|f| f.file_path().to_string())
            .collect()
    }
}

/// Manifests by path, their entries without column statistics
/// ([`super::manifest::load_slim`]). A manifest is immutable, so one loaded
/// for the pick serves the liveness check and every commit attempt (which
/// reads the manifests it rewrites again in full).
pub type Manifests = HashMap<String, Arc<Manifest>>;

/// Loads the manifests of `list` that `cache` lacks, in parallel tasks
/// (parsing a manifest's Avro is CPU work; this spreads it over the cores).
pub(super) async fn load_manifests(
    table: &Table,
    list: &[ManifestFile],
    cache: &mut Manifests,
) -> Result<(), DriverError> {
    let io = table.file_io().clone();
    let missing: Vec<ManifestFile> = list
        .iter()
        .filter(|m| !cache.contains_key(&m.manifest_path))
        .cloned()
        .collect();
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get()) * 4;
    let loaded: Vec<(String, Manifest)> = futures::stream::iter(missing)
        .map(|mf| {
            let io = io.clone();
            tokio::spawn(async move {
                let m = super::manifest::load_slim(&io, &mf)
                    .await
                    .map_err(|e| ice(format!("manifest {}", mf.manifest_path), e))?;
                Ok::<_, DriverError>((mf.manifest_path, m))
            })
        })
        .buffer_unordered(parallel)
        .map(|j| j.map_err(|e| DriverError::retryable(format!("manifest load task: {e}")))?)
        .try_collect()
        .await?;
    for (path, m) in loaded {
        cache.insert(path, Arc::new(m));
    }
    Ok(())
}

/// The manifest list of a snapshot, its manifests loaded into `cache`.
pub(super) async fn manifests_of(
    table: &Table,
    snapshot: &iceberg::spec::SnapshotRef,
    cache: &mut Manifests,
) -> Result<Vec<ManifestFile>, DriverError> {
    let list = table
        .manifest_list_reader(snapshot)
        .load()
        .await
        .map_err(|e| ice("manifest list", e))?;
    let list = list.entries().to_vec();
    load_manifests(table, &list, cache).await?;
    Ok(list)
}

/// Every live entry of a snapshot, with the spec of its manifest.
async fn live_files(
    table: &Table,
    snapshot: &iceberg::spec::SnapshotRef,
    cache: &mut Manifests,
) -> Result<(Vec<Listed>, Vec<Listed>), DriverError> {
    let list = manifests_of(table, snapshot, cache).await?;
    let (mut data, mut deletes) = (Vec::new(), Vec::new());
    for mf in &list {
        let m = &cache[&mf.manifest_path];
        for e in m.entries() {
            if !e.is_alive() {
                continue;
            }
            let l = Listed {
                file: Entry(e.clone()),
                spec_id: mf.partition_spec_id,
                seq: e.sequence_number().unwrap_or(0),
            };
            if e.content_type() == DataContentType::Data {
                data.push(l);
            } else {
                deletes.push(l);
            }
        }
    }
    Ok((data, deletes))
}

/// Picks from `snapshot_id` (default: the current snapshot).
pub async fn select(
    table: &Table,
    snapshot_id: Option<i64>,
    p: &Params,
) -> Result<Selection, DriverError> {
    select_cached(table, snapshot_id, p, &mut Manifests::new()).await
}

pub(super) async fn select_cached(
    table: &Table,
    snapshot_id: Option<i64>,
    p: &Params,
    cache: &mut Manifests,
) -> Result<Selection, DriverError> {
    let md = table.metadata();
    let snapshot = match snapshot_id {
        Some(id) => Some(md.snapshot_by_id(id).cloned().ok_or_else(|| {
            DriverError::permanent(format!(
                "snapshot {id} is no longer in the table (expired?); plan again"
            ))
        })?),
        None => md.current_snapshot().cloned(),
    };
    let Some(snapshot) = snapshot else {
        return Ok(Selection::default());
    };
    let (data, deletes) = live_files(table, &snapshot, cache).await?;
    let default_spec = md.default_partition_spec_id();
    let formats = PartitionFormats::of(md);
    let key = |l: &Listed| {
        let t = formats.text(l.spec_id, l.file.partition());
        if l.spec_id == default_spec {
            t
        } else {
            format!("spec {}: {t}", l.spec_id)
        }
    };
    // Per partition: its figures, partition value, spec, small files and
    // the lowest data sequence number of its other files.
    type Part = (PartitionStats, Struct, i32, Vec<Listed>, Option<i64>);
    let mut per: BTreeMap<String, Part> = BTreeMap::new();
    for l in &data {
        let k = key(l);
        let e = per.entry(k.clone()).or_insert_with(|| {
            (
                PartitionStats {
                    partition: k,
                    ..Default::default()
                },
                l.file.partition().clone(),
                l.spec_id,
                Vec::new(),
                None,
            )
        });
        let size = l.file.file_size_in_bytes();
        e.0.files += 1;
        e.0.bytes += size;
        e.0.rows += l.file.record_count();
        if size < p.small {
            e.0.small_files += 1;
            e.0.small_bytes += size;
            e.3.push(l.clone());
        } else {
            e.4 = Some(e.4.map_or(l.seq, |m: i64| m.min(l.seq)));
        }
    }
    // Delete files by partition; those of an unpartitioned spec other than
    // the default are global (they apply to every partition, as Java's
    // scan planning has it).
    let mut partition_deletes: HashMap<String, Vec<&Listed>> = HashMap::new();
    let is_global = |l: &Listed| {
        l.spec_id != default_spec
            && md
                .partition_spec_by_id(l.spec_id)
                .is_some_and(|s| s.is_unpartitioned())
    };
    let mut global: Vec<&Listed> = Vec::new();
    for l in &deletes {
        if is_global(l) {
            global.push(l);
        }
        let k = key(l);
        if let Some(e) = per.get_mut(&k) {
            e.0.delete_files += 1;
        }
        partition_deletes.entry(k).or_default().push(l);
    }
    let mut sel = Selection {
        snapshot_id: Some(snapshot.snapshot_id()),
        ..Default::default()
    };
    let mut over = Vec::new();
    // Bytes the picked partitions' equality delete keys hold: they are all
    // held until the rewrite ends, so they share one budget.
    let mut eq_held = 0u64;
    // Read once for the pick: the global equality delete files and the
    // table's name mapping (parsed only when some equality delete applies).
    let mut eq_reads = super::eqdelete::Reads::new();
    let mut mapping: Option<Option<Arc<iceberg::spec::NameMapping>>> = None;
    for (_, (stats, partition, spec_id, mut small, large_min_seq)) in per {
        sel.partitions.push(stats.clone());
        if stats.ratio() <= p.min_ratio || stats.small_files < 2 {
            continue;
        }
        if spec_id != default_spec {
            sel.skipped.push((
                stats.partition.clone(),
                format!("written under partition spec {spec_id}, not the table's current spec {default_spec}"),
            ));
            continue;
        }
        let relevant: Vec<&Listed> = partition_deletes
            .get(&stats.partition)
            .into_iter()
            .flatten()
            .chain(global.iter())
            .copied()
            .collect();
        // Equality deletes are applied by the rewrite (see the module
        // doc): read and keyed here, those applying to some small file (of
        // a strictly lower data sequence number).
        let min_small = small.iter().map(|l| l.seq).min().unwrap_or(i64::MAX);
        let eq: Vec<&Listed> = relevant
            .iter()
            .filter(|d| {
                d.file.content_type() == DataContentType::EqualityDeletes && d.seq > min_small
            })
            .copied()
            .collect();
        let eq_deletes = if eq.is_empty() {
            None
        } else {
            let files: Vec<EqFile> = eq
                .iter()
                .map(|d| EqFile {
                    file: &d.file,
                    seq: d.seq,
                    shared: is_global(d),
                })
                .collect();
            let names = match &mapping {
                Some(m) => m.clone(),
                None => mapping.insert(name_mapping(md)?).clone(),
            };
            let budget = p.max_bytes_in_flight.saturating_sub(eq_held);
            match EqDeletes::read(table, &files, names, budget, eq_held, &mut eq_reads).await {
                Ok(e) => {
                    eq_held += e.bytes();
                    Some(Arc::new(e))
                }
                Err(why) => {
                    sel.skipped.push((stats.partition.clone(), why));
                    continue;
                }
            }
        };
        let pos: Vec<&Listed> = relevant
            .iter()
            .filter(|d| d.file.content_type() == DataContentType::PositionDeletes)
            .copied()
            .collect();
        let read = match read_position_deletes(table, &pos).await {
            Ok(r) => r,
            Err(why) => {
                sel.skipped.push((stats.partition.clone(), why));
                continue;
            }
        };
        let applied = match apply_position_deletes(&pos, &read, &small) {
            Ok(a) => a,
            Err(why) => {
                sel.skipped.push((stats.partition.clone(), why));
                continue;
            }
        };
        let small_seqs: Vec<(String, i64)> = small
            .iter()
            .map(|l| (l.file.file_path().to_string(), l.seq))
            .collect();
        // First fit, largest first; ties broken by path so a pick is
        // reproducible from the snapshot.
        small.sort_by(|a, b| {
            b.file
                .file_size_in_bytes()
                .cmp(&a.file.file_size_in_bytes())
                .then_with(|| a.file.file_path().cmp(b.file.file_path()))
        });
        let mut bins: Vec<(u64, Vec<Entry>)> = Vec::new();
        for l in small {
            let f = l.file;
            let size = f.file_size_in_bytes();
            match bins.iter_mut().find(|(used, _)| used + size <= p.target) {
                Some(b) => {
                    b.0 += size;
                    b.1.push(f);
                }
                None => bins.push((size, vec![f])),
            }
        }
        let bins: Vec<Vec<Entry>> = bins
            .into_iter()
            .map(|(_, b)| b)
            .filter(|b| b.len() > 1)
            .collect();
        if bins.is_empty() {
            continue;
        }
        // What the deletes do to the files the bins rewrite.
        let rewritten: HashSet<String> = bins
            .iter()
            .flatten()
            .map(|f| super::location::key(f.file_path()))
            .collect();
        let mut deletes: HashMap<String, Vec<FileScanTaskDeleteFile>> = HashMap::new();
        let mut rows_deleted = 0u64;
        for f in bins.iter().flatten() {
            if let Some((n, ds)) = applied.get(&super::location::key(f.file_path())) {
                rows_deleted += n;
                deletes.insert(
                    f.file_path().to_string(),
                    ds.iter().map(|&i| scan_delete(pos[i])).collect(),
                );
            }
        }
        let seqs: HashMap<String, i64> = small_seqs
            .iter()
            .filter(|(p, _)| rewritten.contains(&super::location::key(p)))
            .map(|(p, s)| (p.clone(), *s))
            .collect();
        let (mut dropped, mut kept) = (Vec::new(), 0usize);
        // An equality delete file of this partition (not a global one) is
        // dropped when it applied to some rewritten file and every data
        // file of the partition it applies to is rewritten: the lowest
        // sequence number of a file left alone is not below its own.
        let left_min = small_seqs
            .iter()
            .filter(|(p, _)| !rewritten.contains(&super::location::key(p)))
            .map(|(_, s)| *s)
            .chain(large_min_seq)
            .min()
            .unwrap_or(i64::MAX);
        let rewritten_min = seqs.values().copied().min().unwrap_or(i64::MAX);
        let (mut eq_dropped, mut eq_dropped_seq) = (0usize, None::<i64>);
        if eq_deletes.is_some() {
            for d in &eq {
                if !is_global(d) && d.seq > rewritten_min && d.seq <= left_min {
                    dropped.push(d.file.clone());
                    eq_dropped += 1;
                    eq_dropped_seq = eq_dropped_seq.max(Some(d.seq));
                }
            }
        }
        for (i, d) in pos.iter().enumerate() {
            let refs = &read[i];
            if refs.keys().any(|k| rewritten.contains(k)) {
                if refs.keys().all(|k| rewritten.contains(k)) {
                    dropped.push(d.file.clone());
                } else {
                    kept += 1;
                }
            }
        }
        over.push(Group {
            stats,
            partition,
            bins,
            deletes,
            rows_deleted,
            dropped,
            kept,
            eq: eq_deletes,
            seqs,
            eq_dropped,
            eq_dropped_seq,
        });
    }
    over.sort_by(|a, b| {
        b.stats
            .ratio()
            .total_cmp(&a.stats.ratio())
            .then_with(|| a.stats.partition.cmp(&b.stats.partition))
    });
    if let Some(max) = p.max_partitions {
        for g in over.drain(max.min(over.len())..) {
            sel.skipped.push((
                g.stats.partition.clone(),
                format!("over maxPartitions ({max}); left for the next run"),
            ));
        }
    }
    sel.groups = over;
    Ok(sel)
}

/// The rows one position delete file deletes: by the referenced data file's
/// canonical location, the path as the delete file spells it and the
/// positions.
type Positions = HashMap<String, (String, BTreeSet<u64>)>;

/// Reads the position delete files `pos` (columns `file_path` and `pos`).
/// A file that cannot be read skips the partition: which rows it deletes
/// cannot be known.
async fn read_position_deletes(table: &Table, pos: &[&Listed]) -> Result<Vec<Positions>, String> {
    let io = table.file_io().clone();
    let files: Vec<Entry> = pos.iter().map(|d| d.file.clone()).collect();
    futures::stream::iter(files)
        .map(move |f| {
            let io = io.clone();
            async move {
                read_positions(&io, &f).await.map_err(|why| {
                    format!(
                        "position delete file {}: {why}; which rows it deletes is unknown, so the partition is left as it is",
                        f.file_path()
                    )
                })
            }
        })
        .buffered(8)
        .try_collect()
        .await
}

async fn read_positions(io: &iceberg::io::FileIO, d: &DataFile) -> Result<Positions, String> {
    use arrow_array::{Array, Int64Array, LargeStringArray, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    if d.file_format() != DataFileFormat::Parquet {
        return Err(format!(
            "its format is {}; only Parquet position deletes are read",
            d.file_format()
        ));
    }
    let bytes = io
        .new_input(d.file_path())
        .map_err(|e| format!("cannot be opened ({e})"))?
        .read()
        .await
        .map_err(|e| format!("cannot be read ({e})"))?;
    let b = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| format!("is no readable Parquet ({e})"))?;
    let fields = b.schema().fields();
    let index = |name: &str| {
        fields
            .iter()
            .position(|f| f.name() == name)
            .ok_or_else(|| format!("has no column {name}"))
    };
    let (fp, ps) = (index("file_path")?, index("pos")?);
    let mask = parquet::arrow::ProjectionMask::roots(b.parquet_schema(), [fp, ps]);
    let reader = b
        .with_projection(mask)
        .build()
        .map_err(|e| format!("cannot be read ({e})"))?;
    let mut out = Positions::new();
    for batch in reader {
        let batch = batch.map_err(|e| format!("cannot be read ({e})"))?;
        let (Some(paths), Some(positions)) = (
            batch.column_by_name("file_path"),
            batch.column_by_name("pos"),
        ) else {
            return Err("lost its file_path or pos column in the read".into());
        };
        let positions = positions
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| format!("has pos of type {}, not long", positions.data_type()))?;
        let paths: Vec<Option<&str>> = if let Some(a) = paths.as_any().downcast_ref::<StringArray>()
        {
            a.iter().collect()
        } else if let Some(a) = paths.as_any().downcast_ref::<LargeStringArray>() {
            a.iter().collect()
        } else {
            return Err(format!(
                "has file_path of type {}, not string",
                paths.data_type()
            ));
        };
        for (i, path) in paths.into_iter().enumerate() {
            let (Some(path), true) = (path, positions.is_valid(i)) else {
                return Err(format!("has a null file_path or pos (row {i})"));
            };
            let p = u64::try_from(positions.value(i))
                .map_err(|_| format!("has a negative pos for {path}"))?;
            out.entry(super::location::key(path))
                .or_insert_with(|| (path.to_string(), BTreeSet::new()))
                .1
                .insert(p);
        }
    }
    Ok(out)
}

/// For each small file some position delete references: the rows they
/// delete and which of `pos` apply. Refuses (with the reason to skip the
/// partition) what the crate's reader would not apply exactly.
fn apply_position_deletes(
    pos: &[&Listed],
    read: &[Positions],
    small: &[Listed],
) -> Result<HashMap<String, (u64, Vec<usize>)>, String> {
    let mut out = HashMap::new();
    for f in small {
        let k = super::location::key(f.file.file_path());
        let mut rows: BTreeSet<u64> = BTreeSet::new();
        let mut applied = Vec::new();
        for (i, d) in pos.iter().enumerate() {
            let Some((spelled, positions)) = read[i].get(&k) else {
                continue;
            };
            if d.seq < f.seq {
                // By the spec it does not apply; the crate's reader would
                // apply it anyway once another file's read loaded it.
                return Err(format!(
                    "position delete file {} (sequence number {}) references data file {} of the later sequence number {}, which it must not delete from",
                    d.file.file_path(),
                    d.seq,
                    f.file.file_path(),
                    f.seq
                ));
            }
            if spelled != f.file.file_path() {
                return Err(format!(
                    "position delete file {} names data file {} as {spelled}; the iceberg 0.10 reader matches the exact path and would not apply it",
                    d.file.file_path(),
                    f.file.file_path()
                ));
            }
            if let Some(&last) = positions.last() {
                if last >= f.file.record_count() {
                    return Err(format!(
                        "position delete file {} deletes row {last} of data file {}, which has {} rows",
                        d.file.file_path(),
                        f.file.file_path(),
                        f.file.record_count()
                    ));
                }
            }
            rows.extend(positions.iter().copied());
            applied.push(i);
        }
        if !applied.is_empty() {
            out.insert(k, (rows.len() as u64, applied));
        }
    }
    Ok(out)
}

/// A delete file as a scan task lists it.
fn scan_delete(d: &Listed) -> FileScanTaskDeleteFile {
    FileScanTaskDeleteFile::builder()
        .with_file_path(d.file.file_path().to_string())
        .with_file_size_in_bytes(d.file.file_size_in_bytes())
        .with_file_type(d.file.content_type())
        .with_partition_spec_id(d.spec_id)
        .with_equality_ids(d.file.equality_ids())
        .build()
}

/// What a compaction did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The committed snapshot (`None`: nothing to do).
    pub snapshot_id: Option<i64>,
    /// Partitions compacted.
    pub partitions: usize,
    /// Data files replaced.
    pub files_removed: usize,
    /// Data files written.
    pub files_added: usize,
    /// Bytes replaced.
    pub bytes_removed: u64,
    /// Bytes written.
    pub bytes_added: u64,
    /// Rows written (the rows read less those the deletes remove).
    pub rows: u64,
    /// Rows position deletes removed from the rewritten files.
    pub rows_deleted: u64,
    /// Rows equality deletes removed from them (after the position deletes).
    pub rows_equality_deleted: u64,
    /// Delete files removed: position deletes that referenced only
    /// rewritten files, equality deletes that applied only to them.
    pub delete_files_removed: usize,
    /// Commit attempts (1 without conflicts).
    pub attempts: u32,
    /// Whether output files are sorted by the table's sort order.
    pub sorted: bool,
    /// Milliseconds reading and writing.
    pub rewrite_ms: u64,
    /// Milliseconds committing.
    pub commit_ms: u64,
    /// Bins rewritten.
    pub bins: usize,
    /// The most bins that were being rewritten at once.
    pub peak_bins_in_flight: usize,
    /// Each compacted partition before and after, in pick order.
    #[serde(skip)]
    pub changes: Vec<PartitionChange>,
    /// Paths of the picked files (for verify).
    #[serde(skip)]
    pub picked: HashSet<String>,
}

/// One compacted partition's data files before and after.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartitionChange {
    /// Partition value, as text.
    pub partition: String,
    /// Data files and their bytes before.
    pub files_before: usize,
    pub bytes_before: u64,
    /// Data files and their bytes after.
    pub files_after: usize,
    pub bytes_after: u64,
}

/// Progress of a rewrite for people watching: bins done of all, bytes
/// read and written, the rate. Logged (and, in the CLI, printed on stderr
/// through [`crate::progress`]) at most every 2 s, at each tenth of the
/// bins, and at the end, so a rewrite of thousands of files does not spam.
struct Progress {
    table: String,
    bins: usize,
    bytes: u64,
    done: usize,
    failed: usize,
    read: u64,
    written: u64,
    started: Instant,
    last: Instant,
    tenth: usize,
}

impl Progress {
    fn new(table: String, bins: usize, bytes: u64) -> Self {
        let now = Instant::now();
        Progress {
            table,
            bins,
            bytes,
            done: 0,
            failed: 0,
            read: 0,
            written: 0,
            started: now,
            last: now,
            tenth: 0,
        }
    }

    /// One bin finished: `read` input bytes, `written` output bytes.
    fn bin(&mut self, read: u64, written: Option<u64>) {
        self.done += 1;
        self.read += read;
        match written {
            Some(w) => self.written += w,
            None => self.failed += 1,
        }
        let tenth = self.done * 10 / self.bins.max(1);
        let now = Instant::now();
        let due = self.done == self.bins
            || tenth > self.tenth
            || now.duration_since(self.last) >= std::time::Duration::from_secs(2);
        if !due {
            return;
        }
        self.tenth = tenth;
        self.last = now;
        let secs = now.duration_since(self.started).as_secs_f64();
        let rate = if secs > 0.0 {
            self.read as f64 / secs / (1u64 << 20) as f64
        } else {
            0.0
        };
        let human = crate::units::human_bytes;
        let failed = if self.failed > 0 {
            format!(", {} failed", self.failed)
        } else {
            String::new()
        };
        let line = if self.done == self.bins {
            format!(
                "compaction of {}: {}/{} bins done{failed}, read {}, wrote {} in {} ({rate:.1} MiB/s)",
                self.table,
                self.done,
                self.bins,
                human(self.read),
                human(self.written),
                crate::units::human_secs(secs as u64)
            )
        } else {
            format!(
                "compaction of {}: {}/{} bins{failed}, read {} of {}, wrote {}, {rate:.1} MiB/s",
                self.table,
                self.done,
                self.bins,
                human(self.read),
                human(self.bytes),
                human(self.written)
            )
        };
        crate::progress::report(&line);
    }
}

/// Test seam: runs before each commit attempt (0, 1, …). Tests use it to
/// make a real concurrent commit through another implementation.
pub type BeforeCommit = Arc<dyn Fn(u32) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// A sort column: name, descending, nulls first.
type SortKey = (String, bool, bool);

/// The table's sort order as Arrow sort keys, with its order id.
type SortSpec = (i64, Vec<SortKey>);

/// Sort keys usable on Arrow batches: identity transforms of top-level
/// columns. `None` when the table is unsorted or sorts by something else.
fn sort_keys(table: &Table) -> Option<SortSpec> {
    let md = table.metadata();
    let order = md.default_sort_order();
    if order.is_unsorted() {
        return None;
    }
    let schema = md.current_schema();
    let mut keys = Vec::new();
    for f in &order.fields {
        if f.transform != Transform::Identity {
            return None;
        }
        let field = schema.as_struct().field_by_id(f.source_id)?;
        keys.push((
            field.name.clone(),
            f.direction == iceberg::spec::SortDirection::Descending,
            f.null_order == iceberg::spec::NullOrder::First,
        ));
    }
    Some((order.order_id, keys))
}

fn sort_batch(
    batch: &arrow_array::RecordBatch,
    keys: &[SortKey],
) -> Result<arrow_array::RecordBatch, String> {
    let cols = keys
        .iter()
        .map(|(name, desc, nulls_first)| {
            let values = batch
                .column_by_name(name)
                .ok_or_else(|| format!("sort column {name} missing"))?
                .clone();
            Ok(arrow_ord::sort::SortColumn {
                values,
                options: Some(arrow_schema::SortOptions {
                    descending: *desc,
                    nulls_first: *nulls_first,
                }),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let idx = arrow_ord::sort::lexsort_to_indices(&cols, None).map_err(|e| e.to_string())?;
    let columns = batch
        .columns()
        .iter()
        .map(|c| arrow_select::take::take(c.as_ref(), &idx, None))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    arrow_array::RecordBatch::try_new(batch.schema(), columns).map_err(|e| e.to_string())
}

/// Parquet writer settings from the table's properties: the codec
/// (`write.parquet.compression-codec`, Iceberg's default zstd) and level
/// (`write.parquet.compression-level`). iceberg 0.10's own
/// `ParquetWriterBuilder::from_table_properties` ignores the codec and
/// writes uncompressed files.
fn writer_properties(
    md: &iceberg::spec::TableMetadata,
) -> Result<parquet::file::properties::WriterProperties, DriverError> {
    use parquet::basic::{BrotliLevel, Compression, GzipLevel, ZstdLevel};
    let props = md.properties();
    let codec = props
        .get("write.parquet.compression-codec")
        .map(|c| c.to_ascii_lowercase())
        .unwrap_or_else(|| "zstd".into());
    let level: Option<u32> = props
        .get("write.parquet.compression-level")
        .and_then(|l| l.parse().ok());
    let bad = |e: parquet::errors::ParquetError| {
        DriverError::permanent(format!("write.parquet.compression-level: {e}"))
    };
    let compression = match codec.as_str() {
        "zstd" => Compression::ZSTD(match level {
            Some(l) => ZstdLevel::try_new(l as i32).map_err(bad)?,
            None => ZstdLevel::default(),
        }),
        "gzip" => Compression::GZIP(match level {
            Some(l) => GzipLevel::try_new(l).map_err(bad)?,
            None => GzipLevel::default(),
        }),
        "brotli" => Compression::BROTLI(match level {
            Some(l) => BrotliLevel::try_new(l).map_err(bad)?,
            None => BrotliLevel::default(),
        }),
        "snappy" => Compression::SNAPPY,
        "lz4" => Compression::LZ4_RAW,
        "uncompressed" | "none" => Compression::UNCOMPRESSED,
        other => {
            return Err(DriverError::permanent(format!(
                "write.parquet.compression-codec {other:?}: expected zstd, gzip, brotli, snappy, lz4 or uncompressed"
            )))
        }
    };
    Ok(parquet::file::properties::WriterProperties::builder()
        .set_compression(compression)
        .build())
}

/// The table's default name mapping (for files written without field ids).
fn name_mapping(
    md: &iceberg::spec::TableMetadata,
) -> Result<Option<Arc<iceberg::spec::NameMapping>>, DriverError> {
    match md.properties().get("schema.name-mapping.default") {
        Some(raw) => Ok(Some(Arc::new(
            serde_json::from_str::<iceberg::spec::NameMapping>(raw).map_err(|e| {
                DriverError::permanent(format!("table property schema.name-mapping.default: {e}"))
            })?,
        ))),
        None => Ok(None),
    }
}

/// A scan task reading the whole of `f` projected onto the current schema
/// (columns added since read as null), built from the manifest entry the
/// pick already holds instead of planning a scan again.
fn task_for(
    md: &iceberg::spec::TableMetadata,
    f: &DataFile,
    name_mapping: Option<Arc<iceberg::spec::NameMapping>>,
    deletes: Vec<FileScanTaskDeleteFile>,
) -> FileScanTask {
    let schema = md.current_schema().clone();
    let ids: Vec<i32> = schema.as_struct().fields().iter().map(|f| f.id).collect();
    FileScanTask::builder()
        .with_file_size_in_bytes(f.file_size_in_bytes())
        .with_start(0)
        .with_length(f.file_size_in_bytes())
        .with_record_count(Some(f.record_count()))
        .with_data_file_path(f.file_path().to_string())
        .with_data_file_format(f.file_format())
        .with_schema(schema)
        .with_project_field_ids(ids)
        .with_predicate(None)
        .with_deletes(deletes)
        .with_partition(Some(f.partition().clone()))
        // As the crate's own scan planning does: with a spec the reader
        // would fill identity columns from the partition as run-end
        // encoded constants, which its Parquet writer then refuses.
        .with_partition_spec(None)
        .with_name_mapping(name_mapping)
        .with_case_sensitive(true)
        .build()
}

/// The largest rewrite budget honoured (a semaphore's permits are bytes).
const MAX_BUDGET: u64 = u32::MAX as u64;

/// Reads one bin and writes it back as files near the target size.
/// With `eq` (the partition's equality deletes and each task's data
/// sequence number), each file is read on its own and the rows those
/// deletes delete are left out; returns the files written and how many
/// rows that left out.
async fn rewrite_bin(
    table: Table,
    tasks: Vec<FileScanTask>,
    eq: Option<(Arc<EqDeletes>, Vec<i64>)>,
    key: PartitionKey,
    target: u64,
    prefix: String,
    sort: Option<SortSpec>,
) -> Result<(Vec<DataFile>, u64), DriverError> {
    let table = &table;
    let md = table.metadata();
    let writer = ParquetWriterBuilder::new(writer_properties(md)?, md.current_schema().clone());
    let loc = DefaultLocationGenerator::new(md).map_err(|e| ice("data location", e))?;
    let names = DefaultFileNameGenerator::new(prefix, None, DataFileFormat::Parquet);
    let mut out =
        RollingFileWriterBuilder::new(writer, target as usize, table.file_io().clone(), loc, names)
            .build();
    // The reads: every file in one stream, or (with equality deletes) one
    // stream per file, so each batch is known to come from its file.
    let reads: Vec<(Vec<FileScanTask>, Option<i64>)> = match &eq {
        Some((_, seqs)) => tasks
            .into_iter()
            .zip(seqs.iter().copied())
            .map(|(t, s)| (vec![t], Some(s)))
            .collect(),
        None => vec![(tasks, None)],
    };
    let pk = Some(key.clone());
    let mut held = Vec::new();
    let mut left_out = 0u64;
    for (tasks, seq) in reads {
        let mut stream = table
            .reader_builder()
            .with_data_file_concurrency_limit(4)
            .build()
            .read(Box::pin(futures::stream::iter(tasks.into_iter().map(Ok))))
            .map_err(|e| ice("read", e))?
            .stream();
        while let Some(b) = stream.next().await {
            let mut b = b.map_err(|e| ice("read", e))?;
            if let (Some((deletes, _)), Some(seq)) = (&eq, seq) {
                let (kept, n) = deletes.filter(b, seq).map_err(DriverError::permanent)?;
                left_out += n;
                b = kept;
                if b.num_rows() == 0 {
                    continue;
                }
            }
            if sort.is_some() {
                held.push(b);
            } else {
                out.write(&pk, &b).await.map_err(|e| ice("write", e))?;
            }
        }
    }
    if let (Some((_, keys)), Some(first)) = (&sort, held.first()) {
        let all = arrow_select::concat::concat_batches(&first.schema(), &held)
            .map_err(|e| DriverError::retryable(format!("concat: {e}")))?;
        held.clear();
        let sorted = sort_batch(&all, keys).map_err(DriverError::permanent)?;
        out.write(&pk, &sorted).await.map_err(|e| ice("write", e))?;
    }
    let files = out
        .close()
        .await
        .map_err(|e| ice("close", e))?
        .into_iter()
        .map(|mut b| {
            b.content(DataContentType::Data)
                .partition(key.data().clone())
                .partition_spec_id(key.spec().spec_id());
            if let Some((id, _)) = &sort {
                b.sort_order_id(*id as i32);
            }
            b.build()
                .map_err(|e| DriverError::permanent(format!("data file: {e}")))
        })
        .collect::<Result<Vec<DataFile>, DriverError>>()?;
    Ok((files, left_out))
}

/// Best effort: files a failed bin wrote before failing, found by listing
/// the table's `data/` (its directory, or its prefix in the bucket).
async fn remove_run_files(lake: &Lake, table: &Table, prefix: &str) {
    let Some(data) = super::location::Location::parse(table.metadata().location())
        .ok()
        .and_then(|l| super::location::Location::parse(&format!("{l}/data")).ok())
    else {
        return;
    };
    let store = lake.store().for_table(table);
    let files = match store.list(&data).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "could not list the files a failed rewrite may have left");
            return;
        }
    };
    for f in files {
        let name = f.location.path().rsplit('/').next().unwrap_or_default();
        if name.starts_with(prefix) {
            if let Err(e) = store.delete(&f).await {
                tracing::warn!(path = %f.written, error = %e, "could not remove an uncommitted file");
            }
        }
    }
}

fn paths(files: &[DataFile]) -> Vec<String> {
    files.iter().map(|f| f.file_path().to_string()).collect()
}

async fn delete_all(table: &Table, paths: Vec<String>) {
    for p in paths {
        if let Err(e) = table.file_io().delete(&p).await {
            tracing::warn!(path = %p, error = %e, "could not remove an uncommitted file");
        }
    }
}

/// Compacts what `select` picks from `snapshot_id` (default: current).
pub async fn compact(
    lake: &Lake,
    table: &Table,
    snapshot_id: Option<i64>,
    p: &Params,
    before_commit: Option<BeforeCommit>,
) -> Result<Report, DriverError> {
    let md = table.metadata();
    let version = md.format_version();
    if version > FormatVersion::V2 {
        return Err(DriverError::permanent(format!(
            "format version {version} (row lineage) is not rewritten by this build; nothing was changed"
        )));
    }
    let mut cache = Manifests::new();
    let sel = select_cached(table, snapshot_id, p, &mut cache).await?;
    if sel.groups.is_empty() {
        return Ok(Report::default());
    }
    let started = Instant::now();
    let picked = sel.picked();
    // Before the expensive part: are the picked files still live? None
    // live means this pick was compacted (or dropped) already: done. Some
    // gone means the table moved on under the plan. (A pick from the
    // current snapshot is live by construction.)
    if let Some(current) = md.current_snapshot() {
        if Some(current.snapshot_id()) != sel.snapshot_id {
            let (live, _) = live_files(table, current, &mut cache).await?;
            let live: HashSet<String> = live
                .iter()
                .map(|l| super::location::key(l.file.file_path()))
                .collect();
            let still = picked
                .iter()
                .filter(|p| live.contains(&super::location::key(p)))
                .count();
            if still == 0 {
                return Ok(Report {
                    picked,
                    ..Default::default()
                });
            }
            if still < picked.len() {
                return Err(DriverError::permanent(format!(
                    "{} of the {} planned files are no longer live (a concurrent commit); nothing was changed, plan again",
                    picked.len() - still,
                    picked.len()
                )));
            }
        }
    }
    let name_mapping = name_mapping(md)?;
    let spec = md.default_partition_spec().as_ref().clone();
    let schema = md.current_schema().clone();
    let sort = sort_keys(table);
    let run = uuid::Uuid::now_v7();
    let mut jobs = Vec::new();
    for (gi, g) in sel.groups.iter().enumerate() {
        for (bi, bin) in g.bins.iter().enumerate() {
            let ts = bin
                .iter()
                .map(|f| {
                    let deletes = g.deletes.get(f.file_path()).cloned().unwrap_or_default();
                    task_for(md, f, name_mapping.clone(), deletes)
                })
                .collect();
            let key = PartitionKey::new(spec.clone(), schema.clone(), g.partition.clone());
            let bytes: u64 = bin.iter().map(|f| f.file_size_in_bytes()).sum();
            let seqs: Vec<i64> = bin
                .iter()
                .map(|f| g.seqs.get(f.file_path()).copied().unwrap_or(i64::MAX))
                .collect();
            let eq =
                g.eq.clone()
                    .filter(|e| seqs.iter().any(|&s| e.applies_to(s)))
                    .map(|e| (e, seqs));
            let job = rewrite_bin(
                table.clone(),
                ts,
                eq,
                key,
                p.target,
                format!("compact-{run}-{gi}-{bi}"),
                sort.clone(),
            );
            jobs.push((gi, bytes, job));
        }
    }
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    let bins = jobs.len();
    let bytes_in: u64 = jobs.iter().map(|(_, b, _)| b).sum();
    tracing::info!(
        table = %table.identifier(),
        partitions = sel.groups.len(),
        files = picked.len(),
        bins,
        bytes = bytes_in,
        max_bytes_in_flight = p.max_bytes_in_flight,
        "compaction: rewriting"
    );
    // The bins in flight hold at most max_bytes_in_flight of input between
    // them (a bin larger than that runs alone), and at most one per core.
    let budget = p.max_bytes_in_flight.clamp(1, MAX_BUDGET);
    let memory = Arc::new(tokio::sync::Semaphore::new(budget as usize));
    let mut progress = Progress::new(table.identifier().to_string(), bins, bytes_in);
    let in_flight = Arc::new((
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
    ));
    // Each bin in its own task, so bins decode and encode on every core.
    let rewrite = futures::stream::iter(jobs)
        .map(|(gi, bytes, job)| {
            let memory = memory.clone();
            let in_flight = in_flight.clone();
            async move {
                let permits = bytes.clamp(1, budget) as u32;
                let r = match memory.acquire_many_owned(permits).await {
                    Ok(permit) => tokio::spawn(async move {
                        use std::sync::atomic::Ordering::SeqCst;
                        let now = in_flight.0.fetch_add(1, SeqCst) + 1;
                        in_flight.1.fetch_max(now, SeqCst);
                        let r = job.await;
                        in_flight.0.fetch_sub(1, SeqCst);
                        drop(permit);
                        r
                    })
                    .await
                    .unwrap_or_else(|e| Err(DriverError::retryable(format!("rewrite task: {e}")))),
                    Err(e) => Err(DriverError::retryable(format!("rewrite budget: {e}"))),
                };
                (gi, bytes, r)
            }
        })
        .buffer_unordered(parallel)
        .inspect(|(_, bytes, r)| {
            let written = r
                .as_ref()
                .ok()
                .map(|(files, _)| files.iter().map(DataFile::file_size_in_bytes).sum());
            progress.bin(*bytes, written);
        })
        .collect::<Vec<(usize, u64, Result<(Vec<DataFile>, u64), DriverError>)>>();
    // The commit's connection opens while the bins are written.
    let (results, ()) = tokio::join!(rewrite, lake.prepare_commit());
    let mut added = Vec::new();
    let mut added_by_group: Vec<(usize, u64)> = vec![(0, 0); sel.groups.len()];
    let mut first_err = None;
    let mut rows_eq_deleted = 0u64;
    for (gi, _, r) in results {
        match r {
            Ok((files, left_out)) => {
                rows_eq_deleted += left_out;
                added_by_group[gi].0 += files.len();
                added_by_group[gi].1 += files.iter().map(DataFile::file_size_in_bytes).sum::<u64>();
                added.extend(files)
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        delete_all(table, paths(&added)).await;
        // A failed bin may have left files under the run's prefix.
        remove_run_files(lake, table, &format!("compact-{run}-")).await;
        return Err(DriverError {
            message: format!("rewrite failed, nothing was committed: {}", e.message),
            retryable: e.retryable,
        });
    }
    let changes: Vec<PartitionChange> = sel
        .groups
        .iter()
        .zip(&added_by_group)
        .map(|(g, (files, bytes))| {
            let (in_files, in_bytes) = (g.input_files(), g.input_bytes());
            PartitionChange {
                partition: g.stats.partition.clone(),
                files_before: g.stats.files,
                bytes_before: g.stats.bytes,
                files_after: g.stats.files - in_files + files,
                bytes_after: g.stats.bytes - in_bytes + bytes,
            }
        })
        .collect();
    let removed: Vec<Entry> = sel
        .groups
        .iter()
        .flat_map(|g| g.bins.iter().flatten().cloned())
        .collect();
    let dropped: Vec<Entry> = sel
        .groups
        .iter()
        .flat_map(|g| g.dropped.iter().cloned())
        .collect();
    let rows_in: u64 = removed.iter().map(|f| f.record_count()).sum();
    let rows_deleted: u64 = sel.groups.iter().map(|g| g.rows_deleted).sum();
    let rows_out: u64 = added.iter().map(DataFile::record_count).sum();
    // Position-deleted rows are counted by the pick (from the delete
    // files, apart from the reader that leaves them out); equality-deleted
    // ones by the filter that left them out, after the position deletes.
    if rows_in
        .checked_sub(rows_deleted)
        .and_then(|r| r.checked_sub(rows_eq_deleted))
        != Some(rows_out)
    {
        delete_all(table, paths(&added)).await;
        return Err(DriverError::permanent(format!(
            "row count check failed: {rows_in} rows in {} files less {rows_deleted} deleted by position deletes and {rows_eq_deleted} by equality deletes is not the {rows_out} written; nothing was committed",
            removed.len()
        )));
    }
    let rewrite_ms = started.elapsed().as_millis() as u64;
    let started = Instant::now();
    // Compacted partitions, with the highest sequence number of an
    // equality delete file dropped there.
    let partitions: HashMap<String, Option<i64>> = sel
        .groups
        .iter()
        .map(|g| (g.stats.partition.clone(), g.eq_dropped_seq))
        .collect();
    let mut report = Report {
        picked: picked.clone(),
        partitions: sel.groups.len(),
        files_removed: removed.len(),
        files_added: added.len(),
        bytes_removed: removed.iter().map(|f| f.file_size_in_bytes()).sum(),
        bytes_added: added.iter().map(DataFile::file_size_in_bytes).sum(),
        rows: rows_out,
        rows_deleted,
        rows_equality_deleted: rows_eq_deleted,
        delete_files_removed: dropped.len(),
        sorted: sort.is_some(),
        rewrite_ms,
        bins,
        peak_bins_in_flight: in_flight.1.load(std::sync::atomic::Ordering::SeqCst),
        changes,
        ..Default::default()
    };
    let base_snapshot = sel.snapshot_id.expect("groups come from a snapshot");
    let mut current = table.clone();
    let mut last = String::new();
    for attempt in 0..=p.commit_retries {
        if attempt > 0 {
            current = match lake.load(current.identifier()).await {
                Ok(t) => t,
                Err(e) => {
                    delete_all(table, paths(&added)).await;
                    return Err(DriverError::retryable(format!(
                        "{}; nothing was committed and the rewritten files were removed",
                        e.message
                    )));
                }
            };
        }
        if let Some(h) = &before_commit {
            h(attempt).await;
        }
        report.attempts = attempt + 1;
        let staged = stage(
            &current,
            base_snapshot,
            &removed,
            &dropped,
            &added,
            &partitions,
            &mut cache,
        )
        .await;
        let staged = match staged {
            Ok(s) => s,
            Err(e) => {
                delete_all(table, paths(&added)).await;
                return Err(e);
            }
        };
        let id = staged.snapshot_id;
        match lake
            .commit(&current, staged.requirements, staged.updates)
            .await
        {
            Ok(_) => {
                report.snapshot_id = Some(id);
                report.commit_ms = started.elapsed().as_millis() as u64;
                return Ok(report);
            }
            Err(CommitError::Conflict(m)) => {
                tracing::info!(attempt, conflict = %m, "compaction: commit conflicted; rebuilding on the new state");
                delete_all(table, staged.metadata_files).await;
                last = m;
                let back = 50u64 << attempt.min(6);
                tokio::time::sleep(std::time::Duration::from_millis(back)).await;
            }
            Err(CommitError::Unknown(m)) => {
                // Look: is our snapshot in the table now?
                match lake.load(current.identifier()).await {
                    Ok(t) if t.metadata().snapshot_by_id(id).is_some() => {
                        report.snapshot_id = Some(id);
                        report.commit_ms = started.elapsed().as_millis() as u64;
                        return Ok(report);
                    }
                    Ok(_) => {
                        delete_all(table, staged.metadata_files).await;
                        last = m;
                    }
                    Err(e) => {
                        return Err(DriverError::retryable(format!(
                            "{m}; the table could not be reloaded to settle it ({}). The rewritten files are kept: if snapshot {id} is not in the table, they are orphans",
                            e.message
                        )));
                    }
                }
            }
            Err(CommitError::Failed(m)) => {
                delete_all(table, staged.metadata_files).await;
                delete_all(table, paths(&added)).await;
                return Err(DriverError::retryable(format!(
                    "{m}; nothing was committed and the rewritten files were removed"
                )));
            }
        }
    }
    delete_all(table, paths(&added)).await;
    Err(DriverError::retryable(format!(
        "commit conflicted {} time(s) (last: {last}); nothing was committed and the rewritten files were removed",
        p.commit_retries + 1
    )))
}

/// A manifest as listed (path, counts) and its content.
type Listing = (ManifestFile, Arc<Manifest>);

struct Staged {
    snapshot_id: i64,
    requirements: Vec<TableRequirement>,
    updates: Vec<TableUpdate>,
    /// Manifests and the manifest list written for this attempt.
    metadata_files: Vec<String>,
}

/// Writes the manifests and manifest list of a `replace` snapshot on top of
/// `table`'s current snapshot, and returns the catalog updates.
async fn stage(
    table: &Table,
    base_snapshot: i64,
    removed: &[Entry],
    dropped: &[Entry],
    added: &[DataFile],
    partitions: &HashMap<String, Option<i64>>,
    cache: &mut Manifests,
) -> Result<Staged, DriverError> {
    let md = table.metadata();
    let current = md.current_snapshot().cloned().ok_or_else(|| {
        DriverError::permanent("the table has no current snapshot any more; nothing was committed")
    })?;
    let io = table.file_io();
    let formats = PartitionFormats::of(md);
    let list = manifests_of(table, &current, cache).await?;
    // By canonical location: a concurrent writer may spell a carried-over
    // entry's path its own way.
    // The replaced data files and the dropped delete files.
    let gone: HashSet<String> = removed
        .iter()
        .chain(dropped)
        .map(|f| super::location::key(f.file_path()))
        .collect();
    let snapshot_id = loop {
        let (a, b) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((a ^ b) & (i64::MAX as u64)) as i64;
        if id != 0 && md.snapshot_by_id(id).is_none() {
            break id;
        }
    };
    let seq = md.next_sequence_number();
    let version = md.format_version();
    let base_manifests: HashSet<String> = match md.snapshot_by_id(base_snapshot) {
        Some(s) if s.snapshot_id() == current.snapshot_id() => {
            list.iter().map(|m| m.manifest_path.clone()).collect()
        }
        Some(s) => table
            .manifest_list_reader(s)
            .load()
            .await
            .map_err(|e| ice("manifest list", e))?
            .entries()
            .iter()
            .map(|m| m.manifest_path.clone())
            .collect(),
        None => HashSet::new(),
    };
    let commit = uuid::Uuid::now_v7();
    let meta_dir = format!("{}/metadata", md.location());
    let mut written = Vec::new();
    let mut manifests: Vec<ManifestFile> = Vec::new();
    let mut found = 0usize;
    let mut collector = SnapshotSummaryCollector::default();
    // Manifests listing picked files, by (spec, schema): each group is
    // rewritten into one manifest (the picked entries deleted, the rest
    // existing) instead of one rewrite per manifest.
    let mut affected: BTreeMap<(bool, i32, i32), Vec<Listing>> = BTreeMap::new();
    for mf in list {
        let m = cache[&mf.manifest_path].clone();
        if mf.content == ManifestContentType::Deletes && !base_manifests.contains(&mf.manifest_path)
        {
            // A delete manifest committed since the pick: it may delete
            // rows of files being replaced.
            let text = |e: &iceberg::spec::ManifestEntry| {
                formats.text(mf.partition_spec_id, e.data_file().partition())
            };
            // Global ones (an unpartitioned spec's) apply everywhere.
            let global = md
                .partition_spec_by_id(mf.partition_spec_id)
                .is_some_and(|s| s.is_unpartitioned());
            if let Some(e) = m
                .entries()
                .iter()
                .find(|e| e.is_alive() && (global || partitions.contains_key(&text(e))))
            {
                return Err(DriverError::permanent(format!(
                    "a concurrent commit added delete file {} to compacted partition {}; nothing was committed",
                    e.file_path(),
                    text(e)
                )));
            }
        }
        if mf.content == ManifestContentType::Data && !base_manifests.contains(&mf.manifest_path) {
            // Data committed since the pick with a sequence number an
            // equality delete being dropped would apply to (a rewrite that
            // keeps its starting sequence number): dropping it would bring
            // deleted rows back.
            let text = |e: &iceberg::spec::ManifestEntry| {
                formats.text(mf.partition_spec_id, e.data_file().partition())
            };
            if let Some((e, floor)) = m.entries().iter().filter(|e| e.is_alive()).find_map(|e| {
                let floor = partitions.get(&text(e)).copied().flatten()?;
                (e.sequence_number().unwrap_or(0) < floor).then_some((e, floor))
            }) {
                return Err(DriverError::permanent(format!(
                    "a concurrent commit added data file {} of sequence number {} to compacted partition {}, below the equality delete (sequence number {floor}) this compaction removes; nothing was committed",
                    e.file_path(),
                    e.sequence_number().unwrap_or(0),
                    text(e)
                )));
            }
        }
        let hit = m
            .entries()
            .iter()
            .any(|e| e.is_alive() && gone.contains(&super::location::key(e.file_path())));
        if hit {
            let key = (
                mf.content == ManifestContentType::Deletes,
                mf.partition_spec_id,
                m.metadata().schema_id(),
            );
            affected.entry(key).or_default().push((mf, m));
        } else {
            manifests.push(mf);
        }
    }
    // Any failure below removes the manifests written so far.
    let rewritten = async {
        for (n, ((deletes, _, _), group)) in affected.into_iter().enumerate() {
            let meta = group[0].1.metadata().clone();
            let spec = Arc::new(meta.partition_spec().clone());
            // The crate's writer holds every entry until it writes, so a long
            // group is split into manifests of at most MANIFEST_CHUNK entries.
            let mut w: Option<(String, iceberg::spec::ManifestWriter)> = None;
            let mut in_w = 0usize;
            let mut chunk = 0usize;
            for (mf, _) in &group {
                // The cache holds entries without their statistics; the
                // entries carried over keep theirs, so this manifest is read
                // again in full (one at a time).
                let m = super::manifest::load(io, mf)
                    .await
                    .map_err(|e| ice(format!("manifest {}", mf.manifest_path), e))?;
                for e in m.entries() {
                    if !e.is_alive() {
                        continue;
                    }
                    if w.is_none() {
                        let path = format!("{meta_dir}/{commit}-r{n}-{chunk}.avro");
                        chunk += 1;
                        let out = io.new_output(&path).map_err(|e| ice(&path, e))?;
                        let b = ManifestWriterBuilder::new(
                            out,
                            Some(snapshot_id),
                            meta.schema().clone(),
                            meta.partition_spec().clone(),
                        );
                        let writer = match version {
                            FormatVersion::V1 => b.build_v1(),
                            _ if deletes => b.build_v2_deletes(),
                            _ => b.build_v2_data(),
                        };
                        w = Some((path, writer));
                    }
                    let Some((_, writer)) = w.as_mut() else {
                        unreachable!("a writer was just made");
                    };
                    let seq_n = e.sequence_number().unwrap_or(0);
                    let res = if gone.contains(&super::location::key(e.file_path())) {
                        found += 1;
                        collector.remove_file(e.data_file(), meta.schema().clone(), spec.clone());
                        writer.add_delete_file(
                            deleted(e.data_file(), mf.partition_spec_id)?,
                            seq_n,
                            e.file_sequence_number.or(Some(seq_n)),
                        )
                    } else {
                        writer.add_existing_file(
                            e.data_file().clone(),
                            e.snapshot_id().unwrap_or(mf.added_snapshot_id),
                            seq_n,
                            e.file_sequence_number.or(Some(seq_n)),
                        )
                    };
                    res.map_err(|e| ice("manifest entry", e))?;
                    in_w += 1;
                    if in_w == MANIFEST_CHUNK {
                        in_w = 0;
                        if let Some((path, writer)) = w.take() {
                            finish_manifest(writer, path, &mut written, &mut manifests).await?;
                        }
                    }
                }
            }
            if let Some((path, writer)) = w.take() {
                finish_manifest(writer, path, &mut written, &mut manifests).await?;
            }
        }
        Ok::<(), DriverError>(())
    }
    .await;
    if let Err(e) = rewritten {
        delete_all(table, written).await;
        return Err(e);
    }
    let what = if dropped.is_empty() {
        "files being compacted"
    } else {
        "files being compacted or delete files being removed"
    };
    if found > gone.len() {
        // The same file live twice (perhaps spelled two ways): rewriting
        // it would duplicate its rows or lose track of one entry.
        delete_all(table, written).await;
        return Err(DriverError::permanent(format!(
            "the current snapshot lists {} live entries for the {} {what} (a file listed more than once); nothing was committed",
            found,
            gone.len()
        )));
    }
    if found < gone.len() {
        delete_all(table, written).await;
        return Err(DriverError::permanent(format!(
            "a concurrent commit removed or replaced {} of the {} {what}; nothing was committed",
            gone.len() - found,
            gone.len()
        )));
    }
    // The new files.
    let path = format!("{meta_dir}/{commit}-a.avro");
    let out = io.new_output(&path).map_err(|e| ice(&path, e))?;
    let b = ManifestWriterBuilder::new(
        out,
        Some(snapshot_id),
        md.current_schema().clone(),
        md.default_partition_spec().as_ref().clone(),
    );
    let mut w = match version {
        FormatVersion::V1 => b.build_v1(),
        _ => b.build_v2_data(),
    };
    for f in added {
        collector.add_file(
            f,
            md.current_schema().clone(),
            md.default_partition_spec().clone(),
        );
        w.add_file(f.clone(), -1)
            .map_err(|e| ice("manifest entry", e))?;
    }
    written.push(path.clone());
    manifests.insert(0, w.write_manifest_file().await.map_err(|e| ice(&path, e))?);
    // The manifest list.
    let list_path = format!("{meta_dir}/snap-{snapshot_id}-1-{commit}.avro");
    let writer = io
        .new_output(&list_path)
        .map_err(|e| ice(&list_path, e))?
        .writer()
        .await
        .map_err(|e| ice(&list_path, e))?;
    let parent = Some(current.snapshot_id());
    let mut lw = match version {
        FormatVersion::V1 => ManifestListWriter::v1(writer, snapshot_id, parent),
        _ => ManifestListWriter::v2(writer, snapshot_id, parent, seq),
    };
    written.push(list_path.clone());
    lw.add_manifests(manifests.into_iter())
        .map_err(|e| ice(&list_path, e))?;
    lw.close().await.map_err(|e| ice(&list_path, e))?;
    // Summary: this commit's changes plus the table totals.
    let mut props = collector.build();
    let prev = current.summary().additional_properties.clone();
    let num = |m: &HashMap<String, String>, k: &str| m.get(k).and_then(|v| v.parse::<i64>().ok());
    for (total, add, del) in [
        ("total-data-files", "added-data-files", "deleted-data-files"),
        ("total-records", "added-records", "deleted-records"),
        ("total-files-size", "added-files-size", "removed-files-size"),
        (
            "total-delete-files",
            "added-delete-files",
            "removed-delete-files",
        ),
        (
            "total-position-deletes",
            "added-position-deletes",
            "removed-position-deletes",
        ),
        (
            "total-equality-deletes",
            "added-equality-deletes",
            "removed-equality-deletes",
        ),
    ] {
        if let Some(before) = num(&prev, total) {
            let v = before + num(&props, add).unwrap_or(0) - num(&props, del).unwrap_or(0);
            props.insert(total.to_string(), v.to_string());
        }
    }
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(parent)
        .with_sequence_number(seq)
        .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
        .with_manifest_list(list_path)
        .with_summary(Summary {
            operation: Operation::Replace,
            additional_properties: props,
        })
        .with_schema_id(md.current_schema_id())
        .build();
    Ok(Staged {
        snapshot_id,
        requirements: vec![
            TableRequirement::UuidMatch { uuid: md.uuid() },
            TableRequirement::RefSnapshotIdMatch {
                r#ref: MAIN_BRANCH.to_string(),
                snapshot_id: parent,
            },
        ],
        updates: vec![
            TableUpdate::AddSnapshot { snapshot },
            TableUpdate::SetSnapshotRef {
                ref_name: MAIN_BRANCH.to_string(),
                reference: SnapshotReference::new(
                    snapshot_id,
                    SnapshotRetention::branch(None, None, None),
                ),
            },
        ],
        metadata_files: written,
    })
}

/// Writes a rewritten manifest; its path is recorded first, so a failed
/// write is cleaned up with the rest.
async fn finish_manifest(
    writer: iceberg::spec::ManifestWriter,
    path: String,
    written: &mut Vec<String>,
    manifests: &mut Vec<ManifestFile>,
) -> Result<(), DriverError> {
    written.push(path.clone());
    manifests.push(
        writer
            .write_manifest_file()
            .await
            .map_err(|e| ice(&path, e))?,
    );
    Ok(())
}

/// Entries one rewritten manifest holds at most.
const MANIFEST_CHUNK: usize = 4096;

/// A replaced file's entry as the `replace` marks it deleted: without its
/// column statistics (optional in every format version). Nothing plans a
/// scan from a deleted entry; what reads one (expiry, the snapshot's
/// summary, a changelog) needs what identifies and counts it, which is
/// kept. A compaction's deleted entries are most of a small-files table.
fn deleted(f: &DataFile, spec_id: i32) -> Result<DataFile, DriverError> {
    super::manifest::without_stats(f, spec_id).map_err(DriverError::permanent)
}

/// Paths of the live data files of the table's current snapshot.
pub async fn live_paths(table: &Table) -> Result<HashSet<String>, DriverError> {
    live_paths_cached(table, &mut Manifests::new()).await
}

/// [`live_paths`], reading manifests through `cache`.
pub(super) async fn live_paths_cached(
    table: &Table,
    cache: &mut Manifests,
) -> Result<HashSet<String>, DriverError> {
    let Some(s) = table.metadata().current_snapshot().cloned() else {
        return Ok(HashSet::new());
    };
    let (data, _) = live_files(table, &s, cache).await?;
    Ok(data
        .into_iter()
        .map(|l| l.file.file_path().to_string())
        .collect())
}
