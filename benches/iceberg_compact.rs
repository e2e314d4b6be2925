//! Iceberg small-file compaction of a pyiceberg table (200 files of 500
//! rows over 4 partitions, 100,000 rows), timed three ways on fresh copies
//! of the same table:
//!
//! - **ours**: `compact::compact` end to end (pick, read, write, commit of a
//!   `replace` snapshot); afterwards pyiceberg must read the same rows (an
//!   order-free checksum) from a `replace` snapshot, or the bench fails.
//! - **pyiceberg**: its own whole-table rewrite, `table.scan().to_arrow()`
//!   then `table.overwrite(arrow)`, timed inside Python
//!   (`benches/iceberg/pyiceberg_rewrite.py`).
//! - **raw Parquet**: no Iceberg at all: the same data files read into Arrow
//!   batches and written as one file per partition directory with the
//!   parquet crate, with the input files' compression, one thread per
//!   partition up to the available cores.
//!
//! Budgets: pyiceberg's time / ours >= 3, raw's time / ours >= 0.5 (our
//! rate as a fraction of the raw rate). A missed budget is reported, not
//! failed; a failed correctness check exits non-zero.
//!
//! `cargo bench --bench iceberg_compact` (needs python3 with
//! `pyiceberg[sql-sqlite,pyarrow]`, as tests/iceberg.rs does). Env:
//! `ICEBERG_BENCH_FILES` (200, rounded up to a multiple of 4) and
//! `ICEBERG_BENCH_ROWS` (rows per file, 500) change the table's shape;
//! `ICEBERG_BENCH_PROFILE=N` runs only ours, N times, and prints each run's
//! phases (for `perf record`).
//!
//! The table is made once with `tests/iceberg/pyice.py make` and copied
//! back (`cp -a`, same paths) before every measured run, since each run
//! rewrites it.
//!
//! **Scale run**, `ICEBERG_BENCH_SCALE=FILES` (e.g. 4000): a table of FILES
//! files of ~500 KiB (16,000 rows of random-ish data each) over 8
//! partitions, made by `benches/iceberg/make_scale.py` under
//! `ICEBERG_BENCH_SCALE_DIR` (default `/tmp/iceberg-scale-FILES`; kept as
//! `template/` for the next run, removed with
//! `ICEBERG_BENCH_SCALE_CLEAN=1`), compacted with the playbook defaults
//! (small 32 MiB, target 128 MiB) and `maxBytesInFlight` of
//! `ICEBERG_BENCH_IN_FLIGHT` MiB (256), then the raw Parquet read+write of
//! the same files. Prints each one's bytes/s and peak RSS (VmHWM, reset
//! through /proc/self/clear_refs before each), checks through pyiceberg
//! that the rows (count and id sum) are the same in a `replace` snapshot,
//! and the budget ours/raw >= 0.7.
//!
//! **On S3**, `ICEBERG_BENCH_SCALE_S3=1` with `ICEBERG_BENCH_SCALE=FILES`:
//! the same table and jobs against a `moto_server` on loopback, the raw
//! job GETting and PUTting the objects; CPU times besides (see
//! `benches/iceberg/s3_scale.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use remediate::config::IcebergCatalog;
use remediate::drivers::iceberg::{compact, lake, Lake, Params};
use serde_json::Value;

#[path = "iceberg/s3_scale.rs"]
mod s3_scale;

const OURS_RUNS: usize = 5;
const PYICEBERG_RUNS: usize = 3;
const RAW_RUNS: usize = 5;
const TABLE: &str = "events";

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn python(script: &str, args: &[&str]) -> (Value, Duration) {
    python_env(script, args, &[])
}

/// [`python`] with `env` added to the environment.
fn python_env(script: &str, args: &[&str], env: &[(&str, &str)]) -> (Value, Duration) {
    let t = Instant::now();
    let out = Command::new("python3")
        .arg(repo(script))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("python3");
    let wall = t.elapsed();
    assert!(
        out.status.success(),
        "{script} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (serde_json::from_slice(&out.stdout).unwrap(), wall)
}

fn pyice(args: &[&str]) -> Value {
    python("tests/iceberg/pyice.py", args).0
}

/// Replaces the warehouse with a copy of the pristine one (same paths, so
/// the catalog's and manifests' absolute locations stay valid).
fn fresh(template: &Path, wh: &Path) {
    if wh.exists() {
        std::fs::remove_dir_all(wh).unwrap();
    }
    let ok = Command::new("cp")
        .arg("-a")
        .arg(template)
        .arg(wh)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", template.display(), wh.display());
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// (median, min) in seconds.
fn stats(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (median, s[0])
}

fn ms(v: &[f64]) -> String {
    v.iter()
        .map(|s| format!("{:.0}", s * 1e3))
        .collect::<Vec<_>>()
        .join(" ")
}

fn parquet_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            parquet_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
}

/// The table's data files by partition directory.
fn data_files(wh: &Path) -> BTreeMap<PathBuf, Vec<PathBuf>> {
    let mut all = Vec::new();
    parquet_files(&wh.join("db").join(TABLE).join("data"), &mut all);
    let mut per: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for f in all {
        per.entry(f.parent().unwrap().to_path_buf())
            .or_default()
            .push(f);
    }
    for v in per.values_mut() {
        v.sort();
    }
    per
}

/// The compression of the first column chunk of `file`.
fn compression_of(file: &Path) -> Compression {
    let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap()).unwrap();
    b.metadata().row_group(0).column(0).compression()
}

/// What one raw run did.
struct Raw {
    elapsed: Duration,
    rows: usize,
    files_in: usize,
    files_out: usize,
    bytes_out: u64,
}

/// Reads every data file of each partition and writes the batches into one
/// file in the partition's directory, `threads` partitions at a time.
fn raw_rewrite(wh: &Path, compression: Compression, threads: usize) -> Raw {
    let parts: Vec<(PathBuf, Vec<PathBuf>)> = data_files(wh).into_iter().collect();
    let files_in = parts.iter().map(|(_, f)| f.len()).sum();
    let props = WriterProperties::builder()
        .set_compression(compression)
        .build();
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    let per_thread: Vec<(usize, usize, u64)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.min(parts.len()))
            .map(|_| {
                s.spawn(|| {
                    let (mut rows, mut files, mut bytes) = (0usize, 0usize, 0u64);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((dir, inputs)) = parts.get(i) else {
                            break;
                        };
                        let out = dir.join("raw-rewrite.parquet");
                        let mut w: Option<ArrowWriter<std::fs::File>> = None;
                        for f in inputs {
                            let reader = ParquetRecordBatchReaderBuilder::try_new(
                                std::fs::File::open(f).unwrap(),
                            )
                            .unwrap()
                            .build()
                            .unwrap();
                            for b in reader {
                                let b = b.unwrap();
                                rows += b.num_rows();
                                let w = w.get_or_insert_with(|| {
                                    ArrowWriter::try_new(
                                        std::fs::File::create(&out).unwrap(),
                                        b.schema(),
                                        Some(props.clone()),
                                    )
                                    .unwrap()
                                });
                                w.write(&b).unwrap();
                            }
                        }
                        if let Some(w) = w {
                            w.close().unwrap();
                            files += 1;
                            bytes += std::fs::metadata(&out).unwrap().len();
                        }
                    }
                    (rows, files, bytes)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let elapsed = t.elapsed();
    Raw {
        elapsed,
        rows: per_thread.iter().map(|r| r.0).sum(),
        files_in,
        files_out: per_thread.iter().map(|r| r.1).sum(),
        bytes_out: per_thread.iter().map(|r| r.2).sum(),
    }
}

fn catalog(wh: &Path) -> IcebergCatalog {
    serde_json::from_value(serde_json::json!({
        "uri": format!("sqlite:{}/catalog.db", wh.display()),
        "warehouse": format!("file://{}", wh.display()),
    }))
    .unwrap()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One run of ours: end to end, and the phases compact() runs before
/// reading, timed alone on the same snapshot.
struct Ours {
    total: Duration,
    pick: Duration,
    /// This process's CPU time (user + system, every thread) in compact().
    cpu: Duration,
    report: compact::Report,
}

async fn ours_once(cfg: &IcebergCatalog, params: &Params) -> Ours {
    let lake = Lake::open("lake", cfg).await.unwrap();
    let ident = lake::ident(&format!("db.{TABLE}")).unwrap();
    // The phase probes run on a Table of their own: a Table caches the
    // manifests its scans load, and the compacted one must start cold.
    let probe = lake.load(&ident).await.unwrap();
    let s = Instant::now();
    let sel = compact::select(&probe, None, params).await.unwrap();
    let pick = s.elapsed();
    assert!(!sel.groups.is_empty(), "nothing picked");
    drop(probe);
    let t = lake.load(&ident).await.unwrap();
    let cpu = cpu_time();
    let s = Instant::now();
    let report = compact::compact(&lake, &t, None, params, None)
        .await
        .unwrap_or_else(|e| panic!("compaction failed: {}", e.message));
    Ours {
        total: s.elapsed(),
        pick,
        cpu: cpu_time() - cpu,
        report,
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let probe = Command::new("python3")
        .args(["-c", "import pyiceberg, pyarrow, sqlalchemy"])
        .output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "pyiceberg is required: pip install 'pyiceberg[sql-sqlite,pyarrow]'"
    );
    // std captures a backtrace in every error created when these say so,
    // and iceberg 0.10's Arrow reader creates (and drops) errors for every
    // data file it reads: with RUST_BACKTRACE=1 that is measurable. The
    // agent's deploy manifests leave it unset.
    let lib_bt = std::env::var("RUST_LIB_BACKTRACE")
        .or_else(|_| std::env::var("RUST_BACKTRACE"))
        .is_ok_and(|v| v != "0");
    if lib_bt {
        println!(
            "note: RUST_BACKTRACE/RUST_LIB_BACKTRACE enable backtrace capture; the iceberg crate's reader then unwinds once per file read (set RUST_LIB_BACKTRACE=0 or unset RUST_BACKTRACE to measure as deployed)"
        );
    }
    if let Ok(n) = std::env::var("ICEBERG_BENCH_SCALE") {
        let files = n.parse().expect("ICEBERG_BENCH_SCALE=FILES");
        if std::env::var("ICEBERG_BENCH_SCALE_S3").is_ok_and(|v| v == "1") {
            s3_scale::run(files);
        } else {
            scale(files);
        }
        return;
    }
    let files = env_usize("ICEBERG_BENCH_FILES", 200).max(4);
    let rows_per_file = env_usize("ICEBERG_BENCH_ROWS", 500).max(1);
    let appends = files.div_ceil(4);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let template = dir.path().join("template");
    let w = wh.display().to_string();
    let made = pyice(&[
        "make",
        &w,
        TABLE,
        &appends.to_string(),
        &(rows_per_file * 4).to_string(),
    ]);
    let rows = made["rows"].as_u64().unwrap();
    let checksum = made["checksum"].as_str().unwrap().to_string();
    let files_in = made["files"].as_u64().unwrap() as usize;
    let bytes_in: u64 = data_files(&wh)
        .values()
        .flatten()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    fresh(&wh, &template);
    let first = data_files(&wh).into_values().flatten().next().unwrap();
    let compression = compression_of(&first);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let params = Params {
        small: 1 << 20,
        target: 64 << 20,
        min_ratio: 0.3,
        max_partitions: None,
        commit_retries: 4,
        max_bytes_in_flight: 256 << 20,
    };

    if let Ok(n) = std::env::var("ICEBERG_BENCH_PROFILE") {
        for _ in 0..n.parse::<usize>().expect("ICEBERG_BENCH_PROFILE=N") {
            fresh(&template, &wh);
            let o = rt.block_on(ours_once(&catalog(&wh), &params));
            println!(
                "ours {:.1} ms: pick {:.1} ms, rewrite {} ms, commit {} ms",
                secs(o.total) * 1e3,
                secs(o.pick) * 1e3,
                o.report.rewrite_ms,
                o.report.commit_ms
            );
        }
        return;
    }

    // Ours.
    let mut ours = Vec::new();
    let mut files_out = 0;
    let mut bytes_out_ours = 0;
    for _ in 0..OURS_RUNS {
        fresh(&template, &wh);
        let o = rt.block_on(ours_once(&catalog(&wh), &params));
        let r = &o.report;
        let after = pyice(&["inspect", &w, TABLE]);
        if let Some(what) = failed_check(&checksum, Some(rows), &after, r, files_in) {
            eprintln!(
                "CORRECTNESS FAILURE ({what}): before rows {rows} checksum {checksum}; after {after}; report {r:?}"
            );
            drop(dir);
            std::process::exit(1);
        }
        files_out = r.files_added;
        bytes_out_ours = r.bytes_added;
        ours.push(o);
    }

    // pyiceberg.
    let mut py = Vec::new();
    let mut py_wall = Vec::new();
    let mut py_files_out = 0;
    for _ in 0..PYICEBERG_RUNS {
        fresh(&template, &wh);
        let (v, wall) = python("benches/iceberg/pyiceberg_rewrite.py", &[&w, TABLE]);
        assert_eq!(v["rows"].as_u64(), Some(rows), "pyiceberg read {v}");
        py.push(v["seconds"].as_f64().unwrap());
        py_wall.push(secs(wall));
        py_files_out = v["files_after"].as_u64().unwrap();
    }

    // Raw Parquet: as compared (parallel, the input's compression), then
    // on one thread, and uncompressed.
    let raw_variants = [
        ("raw", compression, cores),
        ("raw, 1 thread", compression, 1),
        ("raw, uncompressed", Compression::UNCOMPRESSED, cores),
    ];
    let mut raws: Vec<(&str, Vec<f64>, u64, usize)> = Vec::new();
    for (name, c, threads) in raw_variants {
        let mut times = Vec::new();
        let (mut bytes, mut outs) = (0, 0);
        for _ in 0..RAW_RUNS {
            fresh(&template, &wh);
            let r = raw_rewrite(&wh, c, threads);
            assert_eq!(r.rows as u64, rows, "raw read");
            assert_eq!(r.files_in, files_in);
            times.push(secs(r.elapsed));
            bytes = r.bytes_out;
            outs = r.files_out;
        }
        raws.push((name, times, bytes, outs));
    }
    drop(dir);

    let ours_t: Vec<f64> = ours.iter().map(|o| secs(o.total)).collect();
    let (ours_med, ours_min) = stats(&ours_t);
    let (py_med, py_min) = stats(&py);
    let (py_wall_med, _) = stats(&py_wall);
    let (raw_med, raw_min) = stats(&raws[0].1);
    let rate = |s: f64| rows as f64 / s;
    println!(
        "iceberg compaction: {rows} rows, {files_in} files ({:.0} KiB, {compression}) -> {files_out} files; {cores} core(s)",
        bytes_in as f64 / 1024.0
    );
    println!(
        "  {:<34} {:>9} {:>9} {:>12}  runs (ms)",
        "", "median", "min", "rows/s"
    );
    let line = |name: &str, med: f64, min: f64, runs: &[f64]| {
        println!(
            "  {name:<34} {:>7.1}ms {:>7.1}ms {:>12.0}  {}",
            med * 1e3,
            min * 1e3,
            rate(med),
            ms(runs)
        )
    };
    line(
        &format!("ours (compact, -> {files_out} files)"),
        ours_med,
        ours_min,
        &ours_t,
    );
    line(
        &format!("pyiceberg (scan+overwrite, -> {py_files_out})"),
        py_med,
        py_min,
        &py,
    );
    line(
        "pyiceberg, whole process",
        py_wall_med,
        stats(&py_wall).1,
        &py_wall,
    );
    for (name, times, _, outs) in &raws {
        let (m, n) = stats(times);
        line(&format!("{name} (-> {outs} files)"), m, n, times);
    }
    println!(
        "  output bytes: ours {:.0} KiB, raw {:.0} KiB, raw uncompressed {:.0} KiB (input {:.0} KiB)",
        bytes_out_ours as f64 / 1024.0,
        raws[0].2 as f64 / 1024.0,
        raws[2].2 as f64 / 1024.0,
        bytes_in as f64 / 1024.0
    );
    // Where ours spends its time (medians of the runs).
    let med = |f: &dyn Fn(&Ours) -> f64| stats(&ours.iter().map(f).collect::<Vec<_>>()).0;
    let rewrite = med(&|o| o.report.rewrite_ms as f64 / 1e3);
    let commit = med(&|o| o.report.commit_ms as f64 / 1e3);
    let pick_in = med(&|o| {
        (secs(o.total) - (o.report.rewrite_ms + o.report.commit_ms) as f64 / 1e3).max(0.0)
    });
    println!(
        "  ours by phase (medians): pick {:.1} ms, rewrite {:.1} ms, commit {:.1} ms; select() alone {:.1} ms",
        pick_in * 1e3,
        rewrite * 1e3,
        commit * 1e3,
        med(&|o| secs(o.pick)) * 1e3,
    );
    let vs_py = py_med / ours_med;
    let vs_raw = raw_med / ours_med;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "  pyiceberg / ours = {vs_py:.2}x (budget >= 3: {}); whole pyiceberg process / ours = {:.2}x",
        verdict(vs_py >= 3.0),
        py_wall_med / ours_med
    );
    println!(
        "  raw / ours = {vs_raw:.2} (our rate as a fraction of raw; budget >= 0.5: {}); raw min {:.1} ms",
        verdict(vs_raw >= 0.5),
        raw_min * 1e3
    );
}

/// This process's CPU time so far, user + system, all threads
/// (`getrusage(RUSAGE_SELF)`; child processes are not in it).
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Peak resident memory of this process since the last [`reset_peak`]
/// (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib * 1024
}

/// Resets VmHWM to the current RSS (Linux: "5" to clear_refs).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("/proc/self/clear_refs");
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// The scale runs' compaction settings (the playbook defaults and
/// `maxBytesInFlight` of `ICEBERG_BENCH_IN_FLIGHT` MiB), and that MiB.
fn scale_params() -> (Params, u64) {
    let in_flight = env_usize("ICEBERG_BENCH_IN_FLIGHT", 256) as u64;
    let params = Params {
        small: 32 << 20,
        target: 128 << 20,
        min_ratio: 0.3,
        max_partitions: None,
        commit_retries: 4,
        max_bytes_in_flight: in_flight << 20,
    };
    (params, in_flight)
}

/// The first check pyiceberg's view of the table (`after`: the
/// `inspect` JSON) fails after a compaction that should have replaced
/// every one of `files_in` files with the same rows: same checksum (and
/// row count, if given), a `replace` snapshot, the report's file counts.
fn failed_check(
    checksum: &str,
    rows: Option<u64>,
    after: &Value,
    r: &compact::Report,
    files_in: usize,
) -> Option<&'static str> {
    [
        ("checksum", after["checksum"] == checksum),
        (
            "rows",
            rows.is_none_or(|n| after["rows"].as_u64() == Some(n)),
        ),
        ("operation replace", after["operation"] == "replace"),
        ("files removed", r.files_removed == files_in),
        (
            "files",
            after["files"].as_u64() == Some(r.files_added as u64),
        ),
    ]
    .into_iter()
    .find_map(|(what, ok)| (!ok).then_some(what))
}

/// Exits non-zero unless pyiceberg reads back what was made (`made`,
/// `after`: make_scale.py's JSON) from a `replace` of every input file.
fn check_compacted(made: &Value, after: &Value, r: &compact::Report, files_in: usize) {
    let checksum = made["checksum"].as_str().unwrap_or_default();
    if let Some(what) = failed_check(checksum, None, after, r, files_in) {
        eprintln!("CORRECTNESS FAILURE ({what}): made {made}; after {after}; report {r:?}");
        std::process::exit(1);
    }
}

/// The scale run (see the module docs).
fn scale(files: usize) {
    let root = PathBuf::from(
        std::env::var("ICEBERG_BENCH_SCALE_DIR")
            .unwrap_or_else(|_| format!("/tmp/iceberg-scale-{files}")),
    );
    let wh = root.join("warehouse");
    let template = root.join("template");
    let made_json = root.join("made.json");
    if !template.exists() {
        std::fs::create_dir_all(&root).unwrap();
        let t = Instant::now();
        let (made, _) = python(
            "benches/iceberg/make_scale.py",
            &[
                &wh.display().to_string(),
                TABLE,
                &files.to_string(),
                "16000",
                "8",
            ],
        );
        println!("made the table in {:.0} s: {made}", secs(t.elapsed()));
        std::fs::write(&made_json, made.to_string()).unwrap();
        fresh(&wh, &template);
    }
    let made: Value = serde_json::from_slice(&std::fs::read(&made_json).unwrap()).unwrap();
    let w = wh.display().to_string();
    let bytes_in = made["bytes"].as_u64().unwrap();
    let files_in = made["files"].as_u64().unwrap() as usize;
    let (params, in_flight) = scale_params();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Ours.
    fresh(&template, &wh);
    let first = data_files(&wh).into_values().flatten().next().unwrap();
    let compression = compression_of(&first);
    reset_peak();
    let base = peak_rss();
    let o = rt.block_on(ours_once(&catalog(&wh), &params));
    let ours_peak = peak_rss();
    let r = &o.report;
    let (after, _) = python("benches/iceberg/make_scale.py", &["check", &w, TABLE]);
    check_compacted(&made, &after, r, files_in);
    // Raw Parquet on the same files.
    fresh(&template, &wh);
    reset_peak();
    let raw_base = peak_rss();
    let raw = raw_rewrite(&wh, compression, cores);
    let raw_peak = peak_rss();
    assert_eq!(raw.files_in, files_in);
    assert_eq!(Some(raw.rows as u64), made["rows"].as_u64(), "raw read");
    std::fs::remove_dir_all(&wh).unwrap();
    if std::env::var("ICEBERG_BENCH_SCALE_CLEAN").is_ok_and(|v| v == "1") {
        std::fs::remove_dir_all(&root).unwrap();
    }
    let ours_s = secs(o.total);
    let raw_s = secs(raw.elapsed);
    println!(
        "iceberg compaction at scale: {files_in} files, {:.1} MiB ({compression}), {} rows, 8 partitions; {cores} core(s); maxBytesInFlight {in_flight} MiB",
        mib(bytes_in),
        made["rows"]
    );
    println!(
        "  ours: {ours_s:.1} s, {:.1} MiB/s read, -> {} files ({:.1} MiB); pick {:.1} s, rewrite {:.1} s, commit {:.1} s; {} bins, at most {} at once; peak RSS {:.0} MiB (at start {:.0} MiB)",
        mib(bytes_in) / ours_s,
        r.files_added,
        mib(r.bytes_added),
        secs(o.pick),
        r.rewrite_ms as f64 / 1e3,
        r.commit_ms as f64 / 1e3,
        r.bins,
        r.peak_bins_in_flight,
        mib(ours_peak),
        mib(base)
    );
    println!(
        "  raw Parquet read+write ({} threads): {raw_s:.1} s, {:.1} MiB/s read, -> {} files ({:.1} MiB); peak RSS {:.0} MiB (at start {:.0} MiB)",
        cores.min(8),
        mib(bytes_in) / raw_s,
        raw.files_out,
        mib(raw.bytes_out),
        mib(raw_peak),
        mib(raw_base)
    );
    let ratio = raw_s / ours_s;
    println!(
        "  ours / raw rate = {ratio:.2} (budget >= 0.7: {})",
        if ratio >= 0.7 { "met" } else { "MISSED" }
    );
}
