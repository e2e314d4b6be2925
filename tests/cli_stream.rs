//! `run` and `replay` on small inputs print exactly what they printed
//! before they streamed (golden files in tests/golden/stream, written by
//! the binary before the change), and `run` leaves every record durable.
//!
//! To rewrite the golden files: `REMEDIATE_BLESS=1 cargo test --test cli_stream`
//! (with `REMEDIATE_GOLDEN_BIN` naming another binary to take them from).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const AT: &str = "2026-11-25T12:00:00Z";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/stream")
}

fn bin() -> Command {
    let exe = std::env::var("REMEDIATE_GOLDEN_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_remediate").to_string());
    let mut c = Command::new(exe);
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c.env_remove("REMEDIATE_PLAYBOOKS")
        .env_remove("REMEDIATE_POLICIES")
        .env_remove("REMEDIATE_AUDIT");
    c
}

fn run(args: &[&str]) -> Output {
    let out = bin().args(args).output().expect("run remediate");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Stdout with the temporary directory and the fields that differ from
/// run to run (record ids, write times, durations) replaced.
fn normalized(out: &Output, dir: &Path) -> String {
    let s = String::from_utf8_lossy(&out.stdout).replace(&dir.display().to_string(), "$DIR");
    s.lines()
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(mut v) if v.get("id").is_some() => {
                for k in ["id", "ts", "duration_ms"] {
                    if v.get(k).is_some() {
                        v[k] = serde_json::json!(k);
                    }
                }
                v.to_string()
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn check(name: &str, got: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("REMEDIATE_BLESS").is_some() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (REMEDIATE_BLESS=1 writes it)", path.display()));
    assert_eq!(got, want, "{name} differs from {}", path.display());
}

#[test]
fn run_and_replay_print_what_they_printed_before_they_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let payload = golden_dir().join("payload.json");
    let payloads = golden_dir().join("payloads.ndjson");
    let (payload, payloads) = (payload.to_str().unwrap(), payloads.to_str().unwrap());
    let a1 = d.join("a1.jsonl");
    let a2 = d.join("a2.jsonl");
    let (a1s, a2s) = (a1.to_str().unwrap(), a2.to_str().unwrap());

    let out = run(&[
        "run",
        "--dry-run",
        "--alert",
        payload,
        "--audit",
        a1s,
        "--at",
        AT,
        "--node",
        "golden",
    ]);
    check("run.txt", &normalized(&out, d));
    let out = run(&[
        "run",
        "--dry-run",
        "--alert",
        payload,
        "--audit",
        a2s,
        "--at",
        AT,
        "--node",
        "golden",
        "--output",
        "json",
    ]);
    check("run.jsonl", &normalized(&out, d));
    // The same decisions were recorded both ways.
    let lines = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
    assert_eq!(lines(&a1), 11);
    assert_eq!(lines(&a2), 11);

    let out = run(&["replay", "--audit", a1s]);
    check("replay-audit.txt", &normalized(&out, d));
    let out = run(&["replay", "--audit", a1s, "--output", "json"]);
    check("replay-audit.jsonl", &normalized(&out, d));
    let out = run(&["replay", "--audit", a1s, "--changed-only"]);
    check("replay-audit-changed.txt", &normalized(&out, d));
    let at = "2026-11-25T12:05:00Z";
    let out = run(&["replay", "--alerts", payloads, "--audit", a1s, "--at", at]);
    check("replay-alerts.txt", &normalized(&out, d));
    let out = run(&[
        "replay", "--alerts", payloads, "--at", at, "--output", "json",
    ]);
    check("replay-alerts.jsonl", &normalized(&out, d));
}
