//! `remediate run --dry-run` and `remediate replay` on a million alerts,
//! each a child process: alerts per second and peak RSS (the child's
//! `ru_maxrss` from wait4), under a limiting policy (most decisions
//! suppressed by the cooldown and rate limits) and a permissive one (limits
//! checked, never reached: every decision executes, so the ledger grows).
//!
//! Inputs (under `REMEDIATE_BENCH_DIR`, default target/bench-replay, a real
//! disk: the audit is fsynced there): 200 playbooks (180 keyed on an
//! alertname, 20 on other labels), `REMEDIATE_BENCH_ALERTS` (default
//! 1,000,000) alerts as payloads of 100 (one per line) over 20,000 pods, and
//! an audit log of as many recorded decisions spread over 7 days.
//! Run with `cargo bench --bench replay_scale`. `REMEDIATE_BENCH_BIN`
//! measures another binary, `REMEDIATE_BENCH_KEEP` keeps (and reuses) the
//! inputs, `REMEDIATE_BENCH_ONLY` runs the cases whose "mode policy"
//! contains it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[path = "common/scale.rs"]
mod scale;
use scale::{playbook, LIMITING, PERMISSIVE, PODS};

fn alert(i: usize) -> String {
    // 9 in 10 hit a keyed playbook, 1 in 10 matches nothing.
    let name = if i % 10 == 9 {
        "Unrelated".to_string()
    } else {
        format!("Alert{}", (i * 7) % 180)
    };
    let pod = i % PODS;
    format!(
        r#"{{"status":"firing","labels":{{"alertname":"{name}","namespace":"etl","pod":"spark-{pod}","severity":"warning","job":"kube-state-metrics"}},"annotations":{{"summary":"Pod etl/spark-{pod} is crash looping"}},"startsAt":"2026-11-24T00:55:54Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prometheus/graph","fingerprint":"{i:016x}"}}"#
    )
}

fn write_alerts(path: &Path, n: usize) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for start in (0..n).step_by(100) {
        let alerts: Vec<String> = (start..(start + 100).min(n)).map(alert).collect();
        writeln!(
            w,
            r#"{{"receiver":"agent","status":"firing","alerts":[{}],"groupLabels":{{}},"commonLabels":{{}},"commonAnnotations":{{}},"externalURL":"http://am:9093","version":"4","groupKey":"{{}}:{{}}","truncatedAlerts":0}}"#,
            alerts.join(",")
        )
        .unwrap();
    }
    w.flush().unwrap();
}

/// A recorded decision, as `remediate run` writes one.
fn record(i: usize, ts: chrono::DateTime<chrono::Utc>) -> String {
    let pb = (i * 7) % 180;
    let pod = i % PODS;
    serde_json::json!({
        "ts": ts, "id": format!("0193{i:028x}"),
        "trigger": {"kind": "alert", "alertname": format!("Alert{pb}"), "fingerprint": format!("{i:016x}"),
            "status": "firing", "labels": {"alertname": format!("Alert{pb}"), "namespace": "etl", "pod": format!("spark-{pod}"),
            "severity": "warning", "job": "kube-state-metrics"},
            "annotations": {"summary": format!("Pod etl/spark-{pod} is crash looping")},
            "values": {}, "startsAt": "2026-11-24T00:55:54Z"},
        "playbook": format!("pb-{pb}"), "action": "kubernetes.pod.restart",
        "target": {"kind": "kubernetes.pod", "namespace": "etl", "name": format!("spark-{pod}")},
        "params": {"mode": "evict", "allowBarePods": false, "gracePeriodSeconds": null},
        "decision": "dry-run", "reason": "dry-run requested",
        "dry_run": true, "phase": "planned", "outcome": "would evict pod (offline: no kubernetes backend configured)",
        "duration_ms": 0, "node": "bench", "policy": "default", "step": 0, "decided_at": ts,
    })
    .to_string()
}

fn write_audit(path: &Path, n: usize) {
    let end = chrono::DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let span = chrono::Duration::days(7);
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..n {
        let ts = end - span
            + chrono::Duration::milliseconds(span.num_milliseconds() * i as i64 / n as i64);
        writeln!(w, "{}", record(i, ts)).unwrap();
    }
    w.flush().unwrap();
}

/// The binary measured: `REMEDIATE_BENCH_BIN` (another build, e.g. a
/// copy taken before a shared target dir was rebuilt), else this build's.
fn bin() -> std::path::PathBuf {
    std::env::var_os("REMEDIATE_BENCH_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_remediate").into())
}

/// Runs the binary, output to /dev/null; (seconds, CPU seconds (user +
/// system), peak RSS KiB, exit ok). CPU time is what one core does: on a
/// shared machine the wall time says more about the neighbours.
fn measure(args: &[&str]) -> (f64, f64, i64, bool) {
    let t0 = Instant::now();
    #[allow(clippy::zombie_processes)] // reaped by wait4 below, for its rusage
    let child = Command::new(bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start remediate");
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value to be filled in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; status and usage are valid pointers.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(r, child.id() as i32, "wait4");
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    (secs, cpu, usage.ru_maxrss, ok)
}

fn main() {
    // A bench binary is also run by `cargo test --benches`: keep that quick.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let n: usize = std::env::var("REMEDIATE_BENCH_ALERTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let base = PathBuf::from(
        std::env::var("REMEDIATE_BENCH_DIR").unwrap_or_else(|_| "target/bench-replay".into()),
    );
    // REMEDIATE_BENCH_KEEP: keep the inputs (and reuse them when present),
    // to compare two builds on the same files.
    let keep = std::env::var_os("REMEDIATE_BENCH_KEEP").is_some();
    // REMEDIATE_BENCH_ONLY: run only the cases whose "mode policy" contains it.
    let only = std::env::var("REMEDIATE_BENCH_ONLY").unwrap_or_default();
    if !keep {
        let _ = std::fs::remove_dir_all(&base);
    }
    std::fs::create_dir_all(base.join("playbooks")).unwrap();
    for i in 0..200 {
        std::fs::write(base.join(format!("playbooks/pb-{i}.yaml")), playbook(i)).unwrap();
    }
    for (name, text) in [("limiting", LIMITING), ("permissive", PERMISSIVE)] {
        std::fs::create_dir_all(base.join(name)).unwrap();
        std::fs::write(base.join(name).join("default.yaml"), text).unwrap();
    }
    let t = Instant::now();
    let alerts = base.join("alerts.ndjson");
    let recorded = base.join("recorded.jsonl");
    if !(keep && alerts.exists() && recorded.exists()) {
        write_alerts(&alerts, n);
        write_audit(&recorded, n);
    }
    let mib = |p: &Path| std::fs::metadata(p).map(|m| m.len() >> 20).unwrap_or(0);
    eprintln!(
        "inputs: {n} alerts in {} payloads ({} MiB), {n} recorded decisions ({} MiB), written in {:.1}s",
        n.div_ceil(100),
        mib(&alerts),
        mib(&recorded),
        t.elapsed().as_secs_f64()
    );
    let s = |p: &Path| p.display().to_string();
    let pb = s(&base.join("playbooks"));
    println!("| mode | policy | alerts | time | alerts/s | CPU | alerts/CPU-s | peak RSS | exit |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");
    for policy in ["limiting", "permissive"] {
        let pol = s(&base.join(policy));
        let audit = base.join(format!("run-{policy}.jsonl"));
        let audit_json = base.join(format!("run-{policy}-json.jsonl"));
        let cases: Vec<(&str, Vec<String>)> = vec![
            (
                "run --dry-run (text)",
                vec![
                    "run".into(),
                    "--dry-run".into(),
                    "--alert".into(),
                    s(&alerts),
                    "--audit".into(),
                    s(&audit),
                ],
            ),
            (
                "run --dry-run --output json",
                vec![
                    "run".into(),
                    "--dry-run".into(),
                    "--alert".into(),
                    s(&alerts),
                    "--audit".into(),
                    s(&audit_json),
                    "--output".into(),
                    "json".into(),
                ],
            ),
            (
                "replay --audit (text)",
                vec!["replay".into(), "--audit".into(), s(&recorded)],
            ),
            (
                "replay --audit --output json",
                vec![
                    "replay".into(),
                    "--audit".into(),
                    s(&recorded),
                    "--output".into(),
                    "json".into(),
                ],
            ),
            (
                "replay --alerts --output json",
                vec![
                    "replay".into(),
                    "--alerts".into(),
                    s(&alerts),
                    "--at".into(),
                    "2026-11-25T12:00:00Z".into(),
                    "--output".into(),
                    "json".into(),
                ],
            ),
        ];
        for (name, mut args) in cases {
            if !format!("{name} {policy}").contains(&only) {
                continue;
            }
            args.extend([
                "--playbooks".into(),
                pb.clone(),
                "--policies".into(),
                pol.clone(),
            ]);
            if args[0] == "run" {
                args.extend([
                    "--at".into(),
                    "2026-11-25T12:00:00Z".into(),
                    "--node".into(),
                    "bench".into(),
                ]);
            }
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let (secs, cpu, rss, ok) = measure(&argv);
            println!(
                "| {name} | {policy} | {n} | {secs:.2} s | {:.0} | {cpu:.2} s | {:.0} | {:.1} MiB | {} |",
                n as f64 / secs,
                n as f64 / cpu,
                rss as f64 / 1024.0,
                if ok { "ok" } else { "FAILED" }
            );
            if args[0] == "run" {
                let a = if name.contains("json") {
                    &audit_json
                } else {
                    &audit
                };
                eprintln!("  audit written: {} MiB", mib(a));
                let _ = std::fs::remove_file(a);
            }
        }
    }
    if !keep {
        let _ = std::fs::remove_dir_all(&base);
    }
}
