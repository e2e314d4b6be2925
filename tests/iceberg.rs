//! Iceberg planning against tables made by an independent implementation:
//! pyiceberg (PyPI) with its SQL catalog on SQLite and a local warehouse
//! creates a table with hundreds of small files across partitions; the
//! dry-run reports them per partition. The rewrite itself is not in this
//! build: executing refuses and the table is unchanged (pyiceberg checks).

mod common;

use std::path::Path;
use std::process::Command;

fn pyice(args: &[&str]) -> serde_json::Value {
    let probe = Command::new("python3")
        .args(["-c", "import pyiceberg, pyarrow, sqlalchemy"])
        .output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "pyiceberg is required: pip install 'pyiceberg[sql-sqlite,pyarrow]' (.ci/run does)"
    );
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/iceberg/pyice.py"
        ))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn setup(dir: &Path) -> std::path::PathBuf {
    let wh = dir.join("warehouse");
    std::fs::create_dir_all(dir.join("playbooks")).unwrap();
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("playbooks/compact.yaml"),
        r#"apiVersion: remediate/v1
kind: Playbook
metadata: { name: compact }
spec:
  triggers: [{ alert: ['alertname="IcebergTableSmallFilesRatioHigh"'] }]
  target: { kind: iceberg.table, catalog: lake, name: "{{ labels.table }}" }
  steps:
    - action: iceberg.table.compact
      with: { smallFileThreshold: 1Mi, targetFileSize: 64Mi, minSmallFilesRatio: 0.3 }
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("policies/default.yaml"),
        "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec: {}\n",
    )
    .unwrap();
    let cfg = dir.join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "backends:\n  iceberg:\n    lake: {{ uri: \"sqlite:{wh}/catalog.db\", warehouse: \"file://{wh}\" }}\n",
            wh = wh.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("alert.json"),
        serde_json::to_vec(&serde_json::json!({
            "version": "4", "status": "firing", "receiver": "r", "groupLabels": {}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "", "groupKey": "{}", "truncatedAlerts": 0,
            "alerts": [{"status": "firing", "labels": {"alertname": "IcebergTableSmallFilesRatioHigh", "table": "db.events"},
                "annotations": {}, "startsAt": "2026-11-25T12:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "", "fingerprint": ""}]
        }))
        .unwrap(),
    )
    .unwrap();
    cfg
}

#[test]
fn the_dry_run_reports_small_files_per_partition_of_a_pyiceberg_table() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    let wh = dir.path().join("warehouse");
    let made = pyice(&["make", &wh.display().to_string(), "events", "50", "40"]);
    assert_eq!(made["files"], 200);
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_remediate"))
            .current_dir(dir.path())
            .args([
                "run",
                "--config",
                &cfg.display().to_string(),
                "--alert",
                "alert.json",
                "--audit",
                "audit.jsonl",
            ])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["--dry-run"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("table lake.db.events: 200 data files, 200 small; compact 4 partition(s):"),
        "{out}"
    );
    for p in ["alpha", "beta", "gamma", "delta"] {
        assert!(
            out.contains(&format!("{p}: 50 files, 50 small (100%),")),
            "{p}: {out}"
        );
    }
    assert!(out.contains("-> 1 file(s)"), "{out}");
    // Executing is refused in this build; the table is untouched.
    let (code, _, _) = run(&[]);
    assert_eq!(code, Some(1));
    let recs = remediate::audit::read(&dir.path().join("audit.jsonl"))
        .unwrap()
        .records;
    assert!(recs.iter().any(|r| r.phase == remediate::audit::Phase::Failed
        && r.outcome.contains("the Iceberg rewrite and its replace commit are not in this build yet; nothing was changed")));
    let after = pyice(&["inspect", &wh.display().to_string(), "events"]);
    assert_eq!(after["files"], 200);
    assert_eq!(after["checksum"], made["checksum"]);
    assert_eq!(after["snapshots"], made["snapshots"]);
}

#[tokio::test]
async fn the_agent_exports_the_small_files_ratio_of_configured_tables() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let wh = dir.path().join("warehouse");
    pyice(&["make", &wh.display().to_string(), "events", "12", "10"]);
    let cfg = format!(
        "listen: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: {{ enabled: false }}\nbackends:\n  iceberg:\n    lake: {{ uri: \"sqlite:{wh}/catalog.db\", warehouse: \"file://{wh}\", tables: [db.events], smallFileThreshold: 1Mi, scrapeInterval: 1s }}\n",
        wh = wh.display()
    );
    let a = common::start_agent(dir.path(), &cfg);
    let series = "remediate_iceberg_table_small_files_ratio{catalog=\"lake\",namespace=\"db\",table=\"events\"}";
    let mut got = None;
    for _ in 0..100 {
        got = a.metric(series).await;
        if got.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(got, Some(1.0), "{}", a.log_text());
    assert_eq!(
        a.metric("remediate_iceberg_table_total_files{catalog=\"lake\",namespace=\"db\",table=\"events\"}").await,
        Some(48.0),
        "12 appends over 4 partitions"
    );
}
