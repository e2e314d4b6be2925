//! Start-up time and memory of `remediate agent` against a long audit
//! history (issue: start-up must not grow with history).
//!
//! Builds a state directory whose kept audit files hold
//! `REMEDIATE_BENCH_AUDIT_MB` (default 1024) MiB of records spread over 30
//! days, the last hour with executions, in the format agents wrote before
//! the state store (no `state.db`). Then starts the agent on it twice:
//!
//! 1. the first start upgrades the directory: it reads the history once,
//!    as a stream, to carry the limit state into the store;
//! 2. every later start reads only the store.
//!
//! For each: the time from spawn until `/readyz` answers 200, and the
//! agent's peak RSS (VmHWM). Run with `cargo bench --bench agent_startup`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-token";

fn record(i: u64, ts: chrono::DateTime<chrono::Utc>, phase: &str, decision: &str) -> String {
    serde_json::json!({
        "ts": ts, "id": format!("0193{i:028x}"),
        "trigger": {"kind": "alert", "alertname": "KubePodCrashLooping", "fingerprint": format!("{:016x}", i % 50_000),
            "status": "firing", "labels": {"alertname": "KubePodCrashLooping", "namespace": "etl", "pod": format!("spark-driver-{}", i % 50_000),
            "container": "driver", "severity": "warning", "job": "kube-state-metrics"},
            "annotations": {"summary": "Pod is crash looping.", "runbook_url": "https://runbooks.example/KubePodCrashLooping"},
            "values": {}, "startsAt": ts},
        "playbook": "k8s-crashloop-restart", "action": "kubernetes.pod.restart",
        "target": {"kind": "kubernetes.pod", "namespace": "etl", "name": format!("spark-driver-{}", i % 50_000)},
        "params": {"mode": "evict", "allowBarePods": false},
        "decision": decision, "reason": if decision == "execute" { "all gates passed" } else { "cooldown 10m, last 2026-11-25T12:00:00Z (allows again at 2026-11-25T12:10:00Z)" },
        "dry_run": decision != "execute", "phase": phase, "outcome": "pending: evict pod etl/spark-driver-1 (CrashLoopBackOff, 14 restarts)",
        "duration_ms": 0, "node": "node-1", "policy": "default", "step": 0, "decided_at": ts,
    })
    .to_string()
}

/// Writes `total` bytes of history into `audit.jsonl` and its rotated files.
fn write_history(state: &Path, total: u64, file_bytes: u64) -> (u64, usize) {
    let now = chrono::Utc::now();
    let span = chrono::Duration::days(30);
    let per_record = record(0, now, "planned", "suppressed").len() as u64 + 1;
    let records = total / per_record;
    let files = total.div_ceil(file_bytes) as usize;
    let per_file = records / files as u64 + 1;
    let mut i = 0u64;
    // Oldest first: audit.jsonl.N ... audit.jsonl.1, then audit.jsonl.
    for f in (0..files).rev() {
        let name = if f == 0 {
            "audit.jsonl".to_string()
        } else {
            format!("audit.jsonl.{f}")
        };
        let mut w = std::io::BufWriter::new(std::fs::File::create(state.join(name)).unwrap());
        for _ in 0..per_file {
            if i >= records {
                break;
            }
            let ts = now - span + span * (i as i32) / (records as i32).max(1);
            // The last hour: executed runs, the limit state that must survive.
            if now - ts < chrono::Duration::hours(1) {
                writeln!(w, "{}", record(i, ts, "planned", "execute")).unwrap();
                writeln!(w, "{}", record(i, ts, "verified", "execute")).unwrap();
            } else {
                writeln!(w, "{}", record(i, ts, "planned", "suppressed")).unwrap();
            }
            i += 1;
        }
        w.flush().unwrap();
    }
    (records, files)
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// `GET /readyz` answers 200.
fn ready(addr: &str) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.ends_with(b"200")
}

/// The binary measured: `REMEDIATE_BENCH_BIN` (another build, e.g. a
/// copy taken before a shared target dir was rebuilt), else this build's.
fn bin() -> std::path::PathBuf {
    std::env::var_os("REMEDIATE_BENCH_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_remediate").into())
}

/// Starts the agent, waits for `/readyz` 200, returns (time to ready, peak RSS KiB).
fn start(dir: &Path) -> (Duration, u64) {
    let t0 = Instant::now();
    let mut child = Command::new(bin())
        .args(["agent", "--config"])
        .arg(dir.join("agent.yaml"))
        .env("REMEDIATE_WEBHOOK_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["message"] == "listening" {
                    let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_string());
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(600))
        .expect("the agent listens");
    while !ready(&addr) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready = t0.elapsed();
    let rss = vm_hwm_kib(child.id());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    (ready, rss)
}

fn main() {
    let mib: u64 = std::env::var("REMEDIATE_BENCH_AUDIT_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    // A bench binary is also run by `cargo test --benches`: keep that quick.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let base =
        std::env::var("REMEDIATE_BENCH_DIR").unwrap_or_else(|_| "target/bench-startup".into());
    let dir = Path::new(&base);
    let _ = std::fs::remove_dir_all(dir);
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let t = Instant::now();
    let (records, files) = write_history(&state, mib << 20, 64 << 20);
    eprintln!(
        "history: {mib} MiB, {records} records in {files} files (written in {:.1}s)",
        t.elapsed().as_secs_f64()
    );
    std::fs::write(
        dir.join("agent.yaml"),
        format!(
            "listen: 127.0.0.1:0\nstateDir: {}\naudit: {{ maxBytes: 64Mi, keep: {} }}\nschedule: {{ enabled: false }}\ndryRun: true\n",
            state.display(),
            files
        ),
    )
    .unwrap();
    let (upgrade, upgrade_rss) = start(dir);
    println!(
        "first start (upgrade: reads {mib} MiB of history once): ready in {:.2}s, peak RSS {:.1} MiB",
        upgrade.as_secs_f64(),
        upgrade_rss as f64 / 1024.0
    );
    let mut times = Vec::new();
    for _ in 0..5 {
        times.push(start(dir));
    }
    times.sort();
    let (med, rss) = times[times.len() / 2];
    let max_rss = times.iter().map(|t| t.1).max().unwrap_or(rss);
    println!(
        "later starts (from the store, {mib} MiB of history kept): ready in {:.3}s median of 5 (max {:.3}s), peak RSS {:.1} MiB (max {:.1})",
        med.as_secs_f64(),
        times.last().map(|t| t.0.as_secs_f64()).unwrap_or(0.0),
        rss as f64 / 1024.0,
        max_rss as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(dir);
}
