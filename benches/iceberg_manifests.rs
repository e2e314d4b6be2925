//! Manifest reading: the iceberg crate's `Manifest::parse_avro` against
//! remediate's reader (`drivers::iceberg::manifest::decode`, which keeps each
//! distinct header's parsed layout), on the 50 manifests of a pyiceberg
//! table (one per append, 4 entries each, deflate).
//!
//! Both decode the same bytes from memory, one manifest after another on
//! one thread; the results must be equal or the bench exits non-zero.
//!
//! `cargo bench --bench iceberg_manifests` (needs python3 with
//! `pyiceberg[sql-sqlite,pyarrow]`). `ICEBERG_BENCH_PROFILE=1` runs only
//! remediate's reader, for `perf record`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use iceberg::spec::Manifest;
use remediate::drivers::iceberg::manifest;

const REPS: usize = 40;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let out = Command::new("python3")
        .arg(repo("tests/iceberg/pyice.py"))
        .args(["make", &wh.display().to_string(), "events", "50", "2000"])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "pyice.py make (pip install 'pyiceberg[sql-sqlite,pyarrow]'): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = wh.join("db/events/metadata");
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&meta)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.ends_with(".avro") && !n.starts_with("snap-")
        })
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    files.sort();
    let n = files.len();

    if std::env::var("ICEBERG_BENCH_PROFILE").is_ok() {
        for _ in 0..REPS * 10 {
            for (_, b) in &files {
                std::hint::black_box(manifest::decode(b).unwrap());
            }
        }
        return;
    }

    // The first manifest parses the layout; the rest reuse it.
    let t = Instant::now();
    let first = manifest::decode(&files[0].1).expect("remediate's reader decodes it");
    let cold = t.elapsed();
    drop(first);
    for (p, b) in &files {
        let (md, entries) = manifest::decode(b).expect("remediate's reader decodes it");
        let ours = Manifest::new(md, entries);
        let theirs = Manifest::parse_avro(b).unwrap();
        if ours != theirs {
            eprintln!("CORRECTNESS FAILURE: {} reads differently", p.display());
            std::process::exit(1);
        }
    }

    let per = |f: &dyn Fn(&[u8])| {
        let mut runs = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..REPS / 5 {
                for (_, b) in &files {
                    f(b);
                }
            }
            runs.push(t.elapsed().as_secs_f64() * 1e6 / ((REPS / 5) * n) as f64);
        }
        runs.sort_by(f64::total_cmp);
        (runs[2], runs[0])
    };
    let (crate_med, crate_min) = per(&|b| {
        std::hint::black_box(Manifest::parse_avro(b).unwrap());
    });
    let (ours_med, ours_min) = per(&|b| {
        std::hint::black_box(manifest::decode(b).unwrap());
    });
    println!(
        "manifest reading: {n} manifests ({:.1} KiB each), one thread",
        files.iter().map(|(_, b)| b.len()).sum::<usize>() as f64 / n as f64 / 1024.0
    );
    println!("  {:<46} {:>8} {:>8}", "", "median", "min");
    println!(
        "  {:<46} {:>6.0}us {:>6.0}us",
        "iceberg crate Manifest::parse_avro", crate_med, crate_min
    );
    println!(
        "  {:<46} {:>6.0}us {:>6.0}us",
        "remediate manifest::decode (layout kept)", ours_med, ours_min
    );
    println!(
        "  remediate, first manifest (parses the layout): {:.0}us",
        cold.as_secs_f64() * 1e6
    );
    println!(
        "  crate / remediate = {:.1}x per manifest; {n} manifests: {:.1} ms -> {:.1} ms of CPU",
        crate_med / ours_med,
        crate_med * n as f64 / 1e3,
        ours_med * n as f64 / 1e3
    );
}
