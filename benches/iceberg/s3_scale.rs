//! The scale run on S3 (`ICEBERG_BENCH_SCALE=FILES ICEBERG_BENCH_SCALE_S3=1`):
//! the table of the local scale run, made by `make_scale.py` in a bucket
//! of a real S3 API server on loopback (`moto_server`, PyPI
//! `moto[server]`; its state is in memory, so the table is made anew each
//! run), with the SQLite catalog on local disk under
//! `ICEBERG_BENCH_SCALE_DIR` (default `/tmp/iceberg-scale-s3-FILES`).
//!
//! - **ours**: `compact::compact` through the catalog's S3 settings as a
//!   playbook's `backends.iceberg.<key>.s3` gives them (endpoint, region,
//!   path style, static key files); then pyiceberg must read the same rows
//!   from a `replace` snapshot (`make_scale.py check`), or the bench exits
//!   non-zero.
//! - **raw**: the same input objects (listed before ours ran; compaction
//!   leaves them in the bucket) GET from the same server with OpenDAL's S3
//!   operator, decoded and re-encoded with the parquet crate alone (the
//!   input's codec, one output per partition, `cores` partitions at once,
//!   the next file's GET issued while the current one is decoded), PUT back
//!   through an OpenDAL writer (as the iceberg crate's `FileIO` writes).
//!
//! Besides the local run's figures it prints CPU time: this process's
//! (getrusage, ours and raw apart) and the server's (/proc/PID/stat), since
//! moto, a Python server, does its share of the work in another process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::TryStreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use remediate::config::IcebergCatalog;

use super::{check_compacted, Raw, TABLE};
use super::{cpu_time, mib, ours_once, peak_rss, python_env, reset_peak, scale_params, secs};

const BUCKET: &str = "lake";
const KEY_ID: &str = "remediate-bench-key";
const SECRET: &str = "remediate-bench-secret";
/// The table's data files, as keys in the bucket.
const DATA: &str = "wh/db/events/data/";

/// `moto_server` on 127.0.0.1, with the bucket; killed on drop.
struct Moto {
    child: Child,
    endpoint: String,
    /// The server's request log.
    log: PathBuf,
}

impl Moto {
    fn start(log: &Path) -> Moto {
        let probe = Command::new("moto_server").arg("--help").output();
        assert!(
            probe.is_ok_and(|o| o.status.success()),
            "moto_server is required: pip install 'moto[server]' s3fs"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on 127.0.0.1:{port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        python_env(
            "tests/iceberg/pyice.py",
            &["s3-mkbucket", BUCKET],
            &moto.env(),
        );
        moto
    }

    /// pyice.py's settings for this server (warehouse `s3://lake/wh`).
    fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("PYICE_S3_ENDPOINT", self.endpoint.as_str()),
            ("PYICE_S3_KEY_ID", KEY_ID),
            ("PYICE_S3_SECRET", SECRET),
            ("PYICE_WAREHOUSE", "s3://lake/wh"),
        ]
    }

    /// The server's CPU time so far (user + system, /proc/PID/stat).
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // After the command name (in parentheses): state is field 3,
        // utime and stime fields 14 and 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf reads a constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// Requests logged so far, by method.
    fn requests(&self) -> BTreeMap<String, usize> {
        let mut n = BTreeMap::new();
        for l in std::fs::read_to_string(&self.log).unwrap().lines() {
            // `127.0.0.1 - - [date] "GET /lake/... HTTP/1.1" 200 -`
            if let Some(m) = l.split('"').nth(1).and_then(|r| r.split(' ').next()) {
                *n.entry(m.to_string()).or_insert(0) += 1;
            }
        }
        n
    }

    /// The server's peak resident memory (VmHWM), in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib * 1024
    }

    /// The catalog as a playbook configures it for this server: SQLite
    /// catalog at `wh`, warehouse `s3://lake/wh`, the S3 settings with the
    /// keys in files under `dir`.
    fn catalog(&self, wh: &Path, dir: &Path) -> IcebergCatalog {
        let id = dir.join("key-id");
        let secret = dir.join("secret");
        std::fs::write(&id, KEY_ID).unwrap();
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        serde_json::from_value(serde_json::json!({
            "uri": format!("sqlite:{}/catalog.db", wh.display()),
            "warehouse": "s3://lake/wh",
            "s3": {
                "endpoint": self.endpoint,
                "region": "us-east-1",
                "pathStyle": true,
                "accessKeyIdFile": id,
                "secretAccessKeyFile": secret,
            },
        }))
        .unwrap()
    }

    /// An OpenDAL operator on the bucket, configured as the agent's own
    /// (path style, static keys, retries), never reading the environment.
    fn operator(&self) -> opendal::Operator {
        let b = opendal::services::S3::default()
            .bucket(BUCKET)
            .region("us-east-1")
            .endpoint(&self.endpoint)
            .access_key_id(KEY_ID)
            .secret_access_key(SECRET)
            .disable_config_load();
        opendal::Operator::new(b)
            .unwrap()
            .layer(opendal::layers::RetryLayer::new())
            .finish()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Objects of one partition: (key, bytes).
type Objects = Vec<(String, u64)>;

/// An OpenDAL writer as the parquet crate's async sink.
struct Sink(opendal::Writer);

impl AsyncFileWriter for Sink {
    fn write(&mut self, bs: bytes::Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            self.0
                .write(bs)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        })
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            self.0
                .close()
                .await
                .map(|_| ())
                .map_err(|e| ParquetError::External(Box::new(e)))
        })
    }
}

/// The table's data files in the bucket by partition prefix, with sizes.
async fn data_objects(op: &opendal::Operator) -> BTreeMap<String, Objects> {
    let entries: Vec<opendal::Entry> = op
        .lister_with(DATA)
        .recursive(true)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut per: BTreeMap<String, Objects> = BTreeMap::new();
    for e in entries {
        let key = e.path();
        if !e.metadata().is_file() || !key.ends_with(".parquet") {
            continue;
        }
        let dir = key[..key.rfind('/').unwrap()].to_string();
        per.entry(dir)
            .or_default()
            .push((key.to_string(), e.metadata().content_length()));
    }
    for v in per.values_mut() {
        v.sort();
    }
    per
}

async fn get(op: opendal::Operator, key: String) -> bytes::Bytes {
    op.read(&key).await.unwrap().to_bytes()
}

/// One partition: every input GET (the next one while this one is
/// decoded), its batches written to one output PUT through an OpenDAL
/// writer. (rows, bytes written)
async fn raw_partition(
    op: &opendal::Operator,
    dir: &str,
    inputs: &[(String, u64)],
    props: &WriterProperties,
) -> (usize, u64) {
    let out = format!("{dir}/raw-rewrite.parquet");
    let mut w: Option<AsyncArrowWriter<Sink>> = None;
    let mut rows = 0;
    let mut next = inputs
        .first()
        .map(|(k, _)| tokio::spawn(get(op.clone(), k.clone())));
    for i in 0..inputs.len() {
        let body = next.take().unwrap().await.unwrap();
        next = inputs
            .get(i + 1)
            .map(|(k, _)| tokio::spawn(get(op.clone(), k.clone())));
        let reader = ParquetRecordBatchReaderBuilder::try_new(body)
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            rows += b.num_rows();
            if w.is_none() {
                let sink = Sink(op.writer(&out).await.unwrap());
                w = Some(AsyncArrowWriter::try_new(sink, b.schema(), Some(props.clone())).unwrap());
            }
            w.as_mut().unwrap().write(&b).await.unwrap();
        }
    }
    let Some(w) = w else {
        return (rows, 0);
    };
    w.close().await.unwrap();
    (rows, op.stat(&out).await.unwrap().content_length())
}

/// The raw job on S3: `threads` partitions at a time.
async fn raw_rewrite(
    op: &opendal::Operator,
    parts: Arc<Vec<(String, Objects)>>,
    compression: Compression,
    threads: usize,
) -> Raw {
    let files_in = parts.iter().map(|(_, f)| f.len()).sum();
    let props = WriterProperties::builder()
        .set_compression(compression)
        .build();
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let workers: Vec<_> = (0..threads.min(parts.len()))
        .map(|_| {
            let (op, parts, next, props) = (op.clone(), parts.clone(), next.clone(), props.clone());
            tokio::spawn(async move {
                let (mut rows, mut files, mut bytes) = (0usize, 0usize, 0u64);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((dir, inputs)) = parts.get(i) else {
                        break;
                    };
                    let (r, b) = raw_partition(&op, dir, inputs, &props).await;
                    rows += r;
                    bytes += b;
                    files += usize::from(r > 0);
                }
                (rows, files, bytes)
            })
        })
        .collect();
    let mut per_worker = Vec::new();
    for w in workers {
        per_worker.push(w.await.unwrap());
    }
    Raw {
        elapsed: t.elapsed(),
        rows: per_worker.iter().map(|r| r.0).sum(),
        files_in,
        files_out: per_worker.iter().map(|r| r.1).sum(),
        bytes_out: per_worker.iter().map(|r| r.2).sum(),
    }
}

/// The requests in `after` not in `before`, e.g. `GET 4321, PUT 20`.
fn requests_between(before: &BTreeMap<String, usize>, after: &BTreeMap<String, usize>) -> String {
    after
        .iter()
        .map(|(m, n)| (m, n - before.get(m).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .map(|(m, n)| format!("{m} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The S3 scale run (see the module docs).
pub fn run(files: usize) {
    let root = PathBuf::from(
        std::env::var("ICEBERG_BENCH_SCALE_DIR")
            .unwrap_or_else(|_| format!("/tmp/iceberg-scale-s3-{files}")),
    );
    // The catalog must match the server's (empty) bucket: made anew.
    let wh = root.join("warehouse");
    if wh.exists() {
        std::fs::remove_dir_all(&wh).unwrap();
    }
    std::fs::create_dir_all(&root).unwrap();
    println!("load average at start: {}", loadavg());
    let moto = Moto::start(&root.join("moto.log"));
    let env = moto.env();
    let w = wh.display().to_string();
    let t = Instant::now();
    let moto_cpu0 = moto.cpu();
    let (made, _) = python_env(
        "benches/iceberg/make_scale.py",
        &[&w, TABLE, &files.to_string(), "16000", "8"],
        &env,
    );
    println!(
        "made the table on S3 in {:.0} s (server CPU {:.0} s): {made}; load average {}",
        secs(t.elapsed()),
        secs(moto.cpu() - moto_cpu0),
        loadavg()
    );
    let cfg = moto.catalog(&wh, &root);
    let op = moto.operator();
    let (params, in_flight) = scale_params();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    // The inputs, listed before ours runs.
    let parts: Vec<(String, Objects)> = rt.block_on(data_objects(&op)).into_iter().collect();
    let files_in: usize = parts.iter().map(|(_, f)| f.len()).sum();
    let bytes_in: u64 = parts.iter().flat_map(|(_, f)| f).map(|(_, b)| b).sum();
    assert_eq!(Some(files_in as u64), made["files"].as_u64(), "listed");
    assert_eq!(Some(bytes_in), made["bytes"].as_u64(), "listed bytes");
    let first = rt.block_on(get(op.clone(), parts[0].1[0].0.clone()));
    let compression = ParquetRecordBatchReaderBuilder::try_new(first)
        .unwrap()
        .metadata()
        .row_group(0)
        .column(0)
        .compression();

    // Ours, with its progress lines on stderr.
    remediate::progress::print_to_stderr(true);
    let load_before = loadavg();
    reset_peak();
    let base = peak_rss();
    let moto_cpu0 = moto.cpu();
    let req0 = moto.requests();
    let o = rt.block_on(ours_once(&cfg, &params));
    let ours_moto_cpu = moto.cpu() - moto_cpu0;
    let ours_requests = requests_between(&req0, &moto.requests());
    let ours_peak = peak_rss();
    let load_after_ours = loadavg();
    remediate::progress::print_to_stderr(false);
    let r = &o.report;
    let (after, _) = python_env("benches/iceberg/make_scale.py", &["check", &w, TABLE], &env);
    check_compacted(&made, &after, r, files_in);

    // Raw on the same input objects, from the same server.
    reset_peak();
    let raw_base = peak_rss();
    let cpu0 = cpu_time();
    let moto_cpu0 = moto.cpu();
    let req0 = moto.requests();
    let raw = rt.block_on(raw_rewrite(&op, Arc::new(parts), compression, cores));
    let raw_cpu = cpu_time() - cpu0;
    let raw_moto_cpu = moto.cpu() - moto_cpu0;
    let raw_requests = requests_between(&req0, &moto.requests());
    let raw_peak = peak_rss();
    let load_after_raw = loadavg();
    assert_eq!(raw.files_in, files_in);
    assert_eq!(Some(raw.rows as u64), made["rows"].as_u64(), "raw read");
    let moto_peak = moto.peak_rss();
    drop(moto);
    std::fs::remove_dir_all(&wh).unwrap();

    let ours_s = secs(o.total);
    let raw_s = secs(raw.elapsed);
    println!(
        "iceberg compaction at scale on S3 (moto_server, loopback): {files_in} files, {:.1} MiB ({compression}), {} rows, 8 partitions; {cores} core(s); maxBytesInFlight {in_flight} MiB",
        mib(bytes_in),
        made["rows"]
    );
    println!(
        "  ours: {ours_s:.1} s, {:.1} MiB/s read, -> {} files ({:.1} MiB); pick {:.1} s, rewrite {:.1} s, commit {:.1} s; {} bins, at most {} at once; peak RSS {:.0} MiB (at start {:.0} MiB); CPU {:.1} s (server {:.1} s)",
        mib(bytes_in) / ours_s,
        r.files_added,
        mib(r.bytes_added),
        secs(o.pick),
        r.rewrite_ms as f64 / 1e3,
        r.commit_ms as f64 / 1e3,
        r.bins,
        r.peak_bins_in_flight,
        mib(ours_peak),
        mib(base),
        secs(o.cpu),
        secs(ours_moto_cpu)
    );
    println!(
        "  raw Parquet GET+decode+encode+PUT ({} tasks): {raw_s:.1} s, {:.1} MiB/s read, -> {} files ({:.1} MiB); peak RSS {:.0} MiB (at start {:.0} MiB); CPU {:.1} s (server {:.1} s)",
        cores.min(8),
        mib(bytes_in) / raw_s,
        raw.files_out,
        mib(raw.bytes_out),
        mib(raw_peak),
        mib(raw_base),
        secs(raw_cpu),
        secs(raw_moto_cpu)
    );
    let ratio = raw_s / ours_s;
    println!(
        "  ours / raw rate = {ratio:.2} (budget >= 0.7: {})",
        if ratio >= 0.7 { "met" } else { "MISSED" }
    );
    println!("  requests: ours (with its select() probe) {ours_requests}; raw {raw_requests}");
    println!(
        "  server peak RSS {:.0} MiB; load average before ours {load_before}, after ours {load_after_ours}, after raw {load_after_raw}",
        mib(moto_peak)
    );
}
