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

fn alert(name: &str, target: &str, i: usize) -> serde_json::Value {
    serde_json::json!({
        "status": "firing",
        "labels": {"alertname": name, "target": target},
        "annotations": {},
        "startsAt": "2026-11-25T11:00:00Z",
        "fingerprint": format!("{i:016x}"),
    })
}

fn payload(alerts: Vec<serde_json::Value>) -> String {
    serde_json::json!({"version": "4", "status": "firing", "receiver": "r", "alerts": alerts})
        .to_string()
}

/// `run` without `--dry-run` over 5,000 decisions that change nothing
/// (a shadow playbook) and two real executions: every record is in the
/// file when the process exits, and when each apply runs (it copies the
/// audit log aside) every record before it, its own planned record
/// included, is already in the file.
#[test]
fn run_group_commits_the_audit_and_has_it_on_disk_before_each_apply_and_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["playbooks", "policies", "snap"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let audit = d.join("audit.jsonl");
    std::fs::write(
        d.join("playbooks/mark.yaml"),
        format!(
            r#"apiVersion: remediate/v1
kind: Playbook
metadata: {{ name: mark }}
spec:
  triggers: [{{ alert: ['alertname="Mark"'] }}]
  target: {{ kind: host, node: stream-node }}
  steps:
    - action: host.command
      with: {{ argv: [cp, {}, "{}/{{{{ labels.target }}}}.jsonl"] }}
"#,
            audit.display(),
            d.join("snap").display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("playbooks/noise.yaml"),
        r#"apiVersion: remediate/v1
kind: Playbook
metadata: { name: noise }
spec:
  mode: dry-run
  triggers: [{ alert: ['alertname="Noise"'] }]
  target: { kind: host, node: stream-node }
  steps:
    - action: host.command
      with: { argv: ["true"] }
"#,
    )
    .unwrap();
    std::fs::write(
        d.join("policies/default.yaml"),
        "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec: {}\n",
    )
    .unwrap();
    // Two notifications: 3,000 noise then mark a; 2,000 noise then mark b.
    let first: Vec<_> = (0..3000)
        .map(|i| alert("Noise", "n", i))
        .chain([alert("Mark", "a", 100_000)])
        .collect();
    let second: Vec<_> = (3000..5000)
        .map(|i| alert("Noise", "n", i))
        .chain([alert("Mark", "b", 100_001)])
        .collect();
    let alerts = d.join("alerts.ndjson");
    std::fs::write(
        &alerts,
        format!("{}\n{}\n", payload(first), payload(second)),
    )
    .unwrap();
    let s = |p: &Path| p.display().to_string();
    let out = bin()
        .args([
            "run",
            "--alert",
            &s(&alerts),
            "--audit",
            &s(&audit),
            "--playbooks",
            &s(&d.join("playbooks")),
            "--policies",
            &s(&d.join("policies")),
            "--node",
            "stream-node",
            "--at",
            AT,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let all = records(&audit);
    let by = |pb: &str, phase: &str| {
        all.iter()
            .filter(|r| r["playbook"] == pb && r["phase"] == phase)
            .count()
    };
    assert_eq!(
        by("noise", "planned"),
        5000,
        "every decision recorded by exit"
    );
    assert_eq!(by("mark", "planned"), 2);
    assert_eq!(by("mark", "verified"), 2, "{stdout}");
    assert!(
        stdout.contains(&format!("(+{} records)", all.len())),
        "the summary counts what is on disk: {stdout}"
    );
    // The table is capped; the rest is counted.
    assert!(
        stdout.contains("… and 4002 more row(s): the table shows the first 1000"),
        "{stdout}"
    );
    // What the apply saw: everything decided before it, and its own planned record.
    for (target, noise_before) in [("a", 3000), ("b", 5000)] {
        let seen = records(&d.join("snap").join(format!("{target}.jsonl")));
        let noise = seen.iter().filter(|r| r["playbook"] == "noise").count();
        assert_eq!(noise, noise_before, "apply of {target}");
        let last = seen.last().unwrap();
        assert_eq!(last["playbook"], "mark");
        assert_eq!(last["phase"], "planned");
        assert_eq!(last["decision"], "execute");
        assert_eq!(last["trigger"]["labels"]["target"], target);
    }
}
