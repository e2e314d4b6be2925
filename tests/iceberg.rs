//! Iceberg compaction against tables made and read by an independent
//! implementation: pyiceberg (PyPI) with its SQL catalog on SQLite (and on a
//! real PostgreSQL, and behind a REST catalog server built on pyiceberg,
//! `tests/iceberg/rest_catalog.py`) and a local warehouse. pyiceberg makes
//! tables with hundreds of small files across partitions; after compaction
//! pyiceberg reads the same rows (an order-free checksum of every row), sees
//! fewer files and a current snapshot whose operation is `replace`, and
//! appends or rewrites made by pyiceberg during compaction survive.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use remediate::config::IcebergCatalog;
use remediate::drivers::iceberg::{compact, lake, manifest, Lake, Params};
use serde_json::Value;

fn pyice_env(env: &[(&str, &str)], args: &[&str]) -> Value {
    let probe = Command::new("python3")
        .args(["-c", "import pyiceberg, pyarrow, sqlalchemy"])
        .output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "pyiceberg is required: pip install 'pyiceberg[sql-sqlite,sql-postgres,pyarrow]' (.ci/run does)"
    );
    let out = Command::new("python3")
        .arg(common::repo("tests/iceberg/pyice.py"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// [`pyice_env`] on a blocking thread, for async tests (the agent or a
/// hook may be serving meanwhile).
async fn pyice_blocking(env: Vec<(String, String)>, args: &[&str]) -> Value {
    let args = strings(args);
    tokio::task::spawn_blocking(move || {
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        pyice_env(&e, &a)
    })
    .await
    .unwrap()
}

fn pyice(args: &[&str]) -> Value {
    pyice_env(&[], args)
}

fn setup(dir: &Path, with: &str) -> PathBuf {
    let wh = dir.join("warehouse");
    std::fs::create_dir_all(dir.join("playbooks")).unwrap();
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("playbooks/compact.yaml"),
        format!(
            r#"apiVersion: remediate/v1
kind: Playbook
metadata: {{ name: compact }}
spec:
  triggers: [{{ alert: ['alertname="IcebergTableSmallFilesRatioHigh"'] }}]
  target: {{ kind: iceberg.table, catalog: lake, name: "{{{{ labels.table }}}}" }}
  steps:
    - action: iceberg.table.compact
      with: {{ smallFileThreshold: 1Mi, targetFileSize: 64Mi, minSmallFilesRatio: 0.3{with} }}
"#
        ),
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

fn run_cli(dir: &Path, cfg: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_remediate"))
        .current_dir(dir)
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
}

fn sqlite_lake(wh: &Path) -> IcebergCatalog {
    serde_json::from_value(serde_json::json!({
        "uri": format!("sqlite:{}/catalog.db", wh.display()),
        "warehouse": format!("file://{}", wh.display()),
    }))
    .unwrap()
}

fn params(retries: u32) -> Params {
    Params {
        small: 1 << 20,
        target: 64 << 20,
        min_ratio: 0.3,
        max_partitions: None,
        commit_retries: retries,
        max_bytes_in_flight: 256 << 20,
    }
}

/// Files the compaction wrote (`compact-…` under the table's data dir).
fn compact_files(wh: &Path, table: &str) -> Vec<PathBuf> {
    walk(&wh.join("db").join(table).join("data"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("compact-"))
        })
        .collect()
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn unchanged_shape(before: &Value, after: &Value) {
    for k in ["schema", "spec", "sort_order", "format_version"] {
        assert_eq!(before[k], after[k], "{k} changed");
    }
}

#[test]
fn the_cli_compacts_a_pyiceberg_table_and_pyiceberg_reads_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path(), "");
    let wh = dir.path().join("warehouse");
    let made = pyice(&["make", &wh.display().to_string(), "events", "50", "40"]);
    assert_eq!(made["files"], 200);
    let (code, out, err) = run_cli(dir.path(), &cfg, &["--dry-run"]);
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
    assert_eq!(
        pyice(&["inspect", &wh.display().to_string(), "events"])["snapshots"],
        50,
        "a dry-run commits nothing"
    );

    let (code, out, err) = run_cli(dir.path(), &cfg, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let after = pyice(&["inspect", &wh.display().to_string(), "events"]);
    assert_eq!(after["checksum"], made["checksum"], "same rows");
    assert_eq!(after["rows"], 2000);
    assert_eq!(after["files"], 4, "one file per partition");
    assert_eq!(after["operation"], "replace");
    assert_eq!(made["codecs"], serde_json::json!(["ZSTD"]));
    assert_eq!(
        after["codecs"],
        serde_json::json!(["ZSTD"]),
        "the table's codec (Iceberg's default)"
    );
    assert_eq!(after["snapshots"], 51);
    unchanged_shape(&made, &after);
    let recs = remediate::audit::read(&dir.path().join("audit.jsonl"))
        .unwrap()
        .records;
    let applied = recs
        .iter()
        .find(|r| r.phase == remediate::audit::Phase::Applied)
        .expect("applied record");
    assert!(
        applied.outcome.contains("replaced 200 small files")
            && applied.outcome.contains("with 4 ("),
        "{}",
        applied.outcome
    );
    // The evidence: the plan's per partition (files and bytes now, bins,
    // output files) and the outcome's before -> after, totals, duration.
    let ev = &applied.evidence;
    let planned = recs
        .iter()
        .rev()
        .find(|r| r.phase == remediate::audit::Phase::Planned)
        .expect("planned record");
    assert_eq!(
        planned.evidence.get("to compact").map(String::as_str),
        ev.get("to compact").map(String::as_str),
        "the applied record keeps what the plan saw"
    );
    let to = &ev["to compact"];
    assert!(
        to.starts_with("200 files (") && to.ends_with(" in 4 partition(s) -> 4 file(s)"),
        "{ev:?}"
    );
    let by = &ev["partitions to compact"];
    for p in ["alpha", "beta", "gamma", "delta"] {
        let line = by
            .split("; ")
            .find(|l| l.starts_with(&format!("{p}: ")))
            .unwrap_or_else(|| panic!("{p} in {by}"));
        assert!(
            line.starts_with(&format!("{p}: 50 files, "))
                && line.contains(" KiB now, 50 small in 1 bin(s) -> 1 file(s)"),
            "{line}"
        );
        let line = ev["compacted by partition"]
            .split("; ")
            .find(|l| l.starts_with(&format!("{p}: ")))
            .unwrap_or_else(|| panic!("{p} in {ev:?}"));
        let (before, after) = line.split_once(" -> ").unwrap();
        assert!(before.starts_with(&format!("{p}: 50 files, ")), "{line}");
        assert!(before.ends_with(" KiB"), "{line}");
        assert!(
            after.starts_with("1 files, ") && after.ends_with(" KiB"),
            "{line}"
        );
    }
    assert!(
        ev["compacted"].starts_with("200 files (")
            && ev["compacted"].contains(") -> 4 files (")
            && ev["compacted"].ends_with(") in 4 partition(s), 2000 rows"),
        "{ev:?}"
    );
    assert!(
        ev["duration"].contains(" (rewrite ") && ev["duration"].contains(", commit "),
        "{ev:?}"
    );
    // Progress on stderr while it ran: bins done of all, and the end.
    assert!(
        err.lines()
            .any(|l| l.starts_with("compaction of db.events: ") && l.contains("/4 bins")),
        "{err}"
    );
    assert!(
        err.lines().any(
            |l| l.starts_with("compaction of db.events: 4/4 bins done, read ")
                && l.contains(" MiB/s)")
        ),
        "{err}"
    );
    assert!(recs
        .iter()
        .any(|r| r.phase == remediate::audit::Phase::Verified
            && r.outcome
                .contains("none of the 200 picked small files is live")));

    // Idempotent: a second run finds nothing to do and commits nothing.
    let (code, out, err) = run_cli(dir.path(), &cfg, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let recs = remediate::audit::read(&dir.path().join("audit.jsonl"))
        .unwrap()
        .records;
    assert!(
        recs.iter()
            .any(|r| r.phase == remediate::audit::Phase::Applied
                && r.outcome == "no partition over the threshold: nothing to compact"),
        "{out}"
    );
    assert_eq!(
        pyice(&["inspect", &wh.display().to_string(), "events"])["snapshots"],
        51
    );
}

/// A before-commit hook that runs `pyice` with `args(attempt)` (when it
/// gives some) against the table, as a concurrent writer would, and keeps
/// the summary of its last run.
fn pyice_hook(
    env: Vec<(String, String)>,
    args: impl Fn(u32) -> Option<Vec<String>> + Send + Sync + 'static,
) -> (compact::BeforeCommit, Arc<std::sync::Mutex<Option<Value>>>) {
    let last = Arc::new(std::sync::Mutex::new(None));
    let seen = last.clone();
    let args = Arc::new(args);
    let hook: compact::BeforeCommit = Arc::new(move |attempt| {
        let (seen, env, args) = (seen.clone(), env.clone(), args.clone());
        Box::pin(async move {
            let Some(a) = args(attempt) else { return };
            let v = tokio::task::spawn_blocking(move || {
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                let e: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                pyice_env(&e, &a)
            })
            .await
            .unwrap();
            *seen.lock().unwrap() = Some(v);
        })
    });
    (hook, last)
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn an_append_committed_during_compaction_survives() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    pyice(&["make", &w, "events", "30", "20"]);
    let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let w2 = w.clone();
    let (hook, appended) = pyice_hook(vec![], move |attempt| {
        (attempt == 0).then(|| strings(&["append", &w2, "events", "8"]))
    });
    let r = compact::compact(&lake, &t, None, &params(4), Some(hook))
        .await
        .unwrap();
    assert_eq!(r.attempts, 2, "the first commit conflicts with the append");
    assert_eq!(r.files_removed, 120);
    let appended = appended.lock().unwrap().clone().unwrap();
    let after = pyice(&["inspect", &w, "events"]);
    assert_eq!(after["rows"], 608);
    assert_eq!(
        after["checksum"], appended["checksum"],
        "every row, the appended ones too"
    );
    assert_eq!(after["operation"], "replace");
    assert_eq!(
        after["files"],
        4 + 4,
        "four compacted files and the append's four"
    );
}

#[tokio::test]
async fn conflicts_past_the_retry_budget_fail_cleanly_and_leave_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    pyice(&["make", &w, "events", "10", "20"]);
    let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let w2 = w.clone();
    // A different batch each time, so no two appends cancel out in the
    // order-free checksum.
    let (hook, last) = pyice_hook(vec![], move |attempt| {
        let start = (20_000_000 + attempt * 100).to_string();
        Some(strings(&["append", &w2, "events", "4", &start]))
    });
    let e = compact::compact(&lake, &t, None, &params(2), Some(hook))
        .await
        .unwrap_err();
    assert!(
        e.message.contains("commit conflicted 3 time(s)")
            && e.message
                .contains("nothing was committed and the rewritten files were removed"),
        "{}",
        e.message
    );
    let after = pyice(&["inspect", &w, "events"]);
    let last = last.lock().unwrap().clone().unwrap();
    assert_eq!(after["checksum"], last["checksum"]);
    assert_eq!(after["rows"], 200 + 3 * 4);
    assert_eq!(after["operation"], "append");
    assert!(
        compact_files(&wh, "events").is_empty(),
        "{:?}",
        compact_files(&wh, "events")
    );
}

#[tokio::test]
async fn a_concurrent_rewrite_of_a_picked_file_aborts_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    pyice(&["make", &w, "events", "10", "20"]);
    let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let w2 = w.clone();
    // id 4 is in category alpha: pyiceberg rewrites that file
    // (copy-on-write), one of the files being compacted.
    let (hook, after_delete) = pyice_hook(vec![], move |attempt| {
        (attempt == 0).then(|| strings(&["delete", &w2, "events", "alpha", "4"]))
    });
    let e = compact::compact(&lake, &t, None, &params(4), Some(hook))
        .await
        .unwrap_err();
    assert!(
        e.message.contains("a concurrent commit removed or replaced 1 of the 40 files being compacted; nothing was committed"),
        "{}",
        e.message
    );
    let after = pyice(&["inspect", &w, "events"]);
    let deleted = after_delete.lock().unwrap().clone().unwrap();
    assert_eq!(after["checksum"], deleted["checksum"]);
    assert_eq!(after["rows"], 199);
    assert_eq!(after["operation"], "overwrite");
    assert!(compact_files(&wh, "events").is_empty());
}

/// A rewrite budget smaller than any bin still compacts (one bin at a
/// time), the same rows, and reports the same files as an unbounded one.
#[tokio::test]
async fn a_tiny_rewrite_budget_runs_one_bin_at_a_time_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    let made = pyice(&["make", &w, "events", "10", "20"]);
    let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let p = Params {
        max_bytes_in_flight: 1,
        ..params(4)
    };
    let r = compact::compact(&lake, &t, None, &p, None).await.unwrap();
    assert_eq!((r.files_removed, r.files_added), (40, 4), "{r:?}");
    assert_eq!(r.peak_bins_in_flight, 1, "{r:?}");
    let by: std::collections::BTreeMap<&str, (usize, usize)> = r
        .changes
        .iter()
        .map(|c| (c.partition.as_str(), (c.files_before, c.files_after)))
        .collect();
    assert_eq!(
        by,
        [
            ("alpha", (10, 1)),
            ("beta", (10, 1)),
            ("delta", (10, 1)),
            ("gamma", (10, 1))
        ]
        .into_iter()
        .collect(),
        "{r:?}"
    );
    let bytes_after: u64 = r.changes.iter().map(|c| c.bytes_after).sum();
    assert_eq!(bytes_after, r.bytes_added, "only compacted files are left");
    let after = pyice(&["inspect", &w, "events"]);
    assert_eq!(after["checksum"], made["checksum"]);
    assert_eq!(after["files"], 4);
    assert_eq!(after["operation"], "replace");
}

/// Reads every manifest of every snapshot of `t` with remediate's manifest
/// reader and with the iceberg crate's `load_manifest`: they must be equal,
/// and remediate's must decode it itself (not fall back to the crate).
/// Returns how many distinct manifests were compared.
async fn manifests_read_alike(t: &iceberg::table::Table) -> usize {
    let io = t.file_io();
    let mut seen = std::collections::HashSet::new();
    for s in t.metadata().snapshots() {
        let list = t.manifest_list_reader(s).load().await.unwrap();
        for mf in list.entries() {
            if !seen.insert(mf.manifest_path.clone()) {
                continue;
            }
            let bytes = io
                .new_input(&mf.manifest_path)
                .unwrap()
                .read()
                .await
                .unwrap();
            assert!(
                manifest::decode(&bytes).is_some(),
                "remediate's reader fell back to the crate's for {}",
                mf.manifest_path
            );
            let ours = manifest::load(io, mf).await.unwrap();
            let theirs = mf.load_manifest(io).await.unwrap();
            assert_eq!(ours, theirs, "{}", mf.manifest_path);
        }
    }
    seen.len()
}

#[tokio::test]
async fn manifests_of_every_partition_type_read_the_same_as_the_iceberg_crate() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    let made = pyice(&["make-types", &w, "types", "3", "8"]);
    let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
    let ident = lake::ident("db.types").unwrap();
    let t = lake.load(&ident).await.unwrap();
    assert_eq!(manifests_read_alike(&t).await, 3, "one manifest per append");
    // Partition values print in their human form: identity date, day and
    // hour transforms as dates and hours, truncate as the value.
    let sel = compact::select(&t, None, &params(4)).await.unwrap();
    let names: Vec<&str> = sel
        .partitions
        .iter()
        .map(|s| s.partition.as_str())
        .collect();
    for want in [
        "7/true/1.5/2.25/2026-11-25/2026-11-25/2026-11-25-10/s0/",
        "null/true/1.5/2.25/2026-11-25/2026-11-25/2026-11-25-10/s1/",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(want)),
            "{want}: {names:?}"
        );
    }
    // Compacting it goes through the same reader; the rows stay.
    let r = compact::compact(&lake, &t, None, &params(4), None)
        .await
        .unwrap();
    assert!(r.files_removed > r.files_added, "{r:?}");
    let after = pyice(&["inspect", &w, "types"]);
    assert_eq!(after["checksum"], made["checksum"]);
    assert_eq!(after["operation"], "replace");
    // Its own manifests (existing, deleted and added entries) too.
    let t = lake.load(&ident).await.unwrap();
    assert!(manifests_read_alike(&t).await > 3);
}

#[tokio::test]
async fn v1_sorted_and_evolved_tables_keep_schema_spec_sort_order_and_rows() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    let lake_cfg = sqlite_lake(&wh);
    for (make, table) in [
        ("make-v1", "v1"),
        ("make-sorted", "sorted"),
        ("make-evolved", "evolved"),
    ] {
        let made = pyice(&[make, &w, table, "12", "25"]);
        assert_eq!(made["files"], 48, "{table}");
        let lake = Lake::open("lake", &lake_cfg).await.unwrap();
        let t = lake
            .load(&lake::ident(&format!("db.{table}")).unwrap())
            .await
            .unwrap();
        let r = compact::compact(&lake, &t, None, &params(4), None)
            .await
            .unwrap();
        assert_eq!(
            (r.files_removed, r.files_added, r.rows),
            (48, 4, 300),
            "{table}"
        );
        let after = pyice(&["inspect", &w, table]);
        assert_eq!(after["checksum"], made["checksum"], "{table}");
        assert_eq!(after["files"], 4, "{table}");
        let t = lake
            .load(&lake::ident(&format!("db.{table}")).unwrap())
            .await
            .unwrap();
        assert!(
            manifests_read_alike(&t).await > 12,
            "{table}: the 12 appends' manifests and the compaction's"
        );
        assert_eq!(after["operation"], "replace", "{table}");
        unchanged_shape(&made, &after);
        if table == "sorted" {
            assert!(r.sorted);
            assert_eq!(
                made["files_sorted_desc_by_id"], false,
                "pyiceberg wrote ascending files"
            );
            assert_eq!(
                after["files_sorted_desc_by_id"], true,
                "the output follows the sort order"
            );
        }
    }
}

#[tokio::test]
async fn the_agent_exports_the_small_files_ratio_of_configured_tables() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), "");
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
    // A later append shows at the next refresh (the agent keeps the
    // manifests it read and reads only the new one).
    let w = dir.path().join("warehouse").display().to_string();
    tokio::task::spawn_blocking(move || pyice(&["append", &w, "events", "8"]))
        .await
        .unwrap();
    let total =
        "remediate_iceberg_table_total_files{catalog=\"lake\",namespace=\"db\",table=\"events\"}";
    let mut now = None;
    for _ in 0..100 {
        now = a.metric(total).await;
        if now == Some(52.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(now, Some(52.0), "{}", a.log_text());
}

/// The test REST catalog server (`tests/iceberg/rest_catalog.py`, on
/// pyiceberg), killed on drop.
struct RestCatalog {
    child: std::process::Child,
    url: String,
    /// The server's stderr: a line per request, and what it was told.
    log: tempfile::NamedTempFile,
}

impl RestCatalog {
    fn start(wh: &Path, env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new("python3")
            .arg(common::repo("tests/iceberg/rest_catalog.py"))
            .arg(wh)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("python3 with pyiceberg is required (.ci/run installs it)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("rest_catalog.py said {line:?}"))
            .to_string();
        RestCatalog { child, url, log }
    }
}

impl Drop for RestCatalog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_rest_catalog_path_commits_through_the_server_and_retries_a_409() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path(), "");
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    let made = pyice(&["make", &w, "events", "20", "20"]);
    // The server answers the first commit with 409 CommitFailedException.
    let rest = RestCatalog::start(&wh, &[("REST_CATALOG_FAIL_COMMITS", "1")]);
    std::fs::write(
        &cfg,
        format!(
            "backends:\n  iceberg:\n    lake: {{ uri: \"{}\" }}\n",
            rest.url
        ),
    )
    .unwrap();
    let (code, out, err) = run_cli(dir.path(), &cfg, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let recs = remediate::audit::read(&dir.path().join("audit.jsonl"))
        .unwrap()
        .records;
    assert!(
        recs.iter()
            .any(|r| r.phase == remediate::audit::Phase::Applied
                && r.outcome.contains("replaced 80 small files")
                && r.outcome.contains("(operation replace, 2 attempt(s))")),
        "{recs:#?}"
    );
    let after = pyice(&["inspect", &w, "events"]);
    assert_eq!(after["checksum"], made["checksum"]);
    assert_eq!(after["files"], 4);
    assert_eq!(after["operation"], "replace");
    unchanged_shape(&made, &after);
}

#[test]
fn a_rest_catalog_behind_oauth2_client_credentials_is_compacted_and_a_wrong_secret_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path(), "");
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    let made = pyice(&["make", &w, "events", "10", "20"]);
    let before = pyice(&["inspect", &w, "events"]);
    // Every route needs a token the server issued for these credentials.
    let rest = RestCatalog::start(&wh, &[("REST_CATALOG_OAUTH2", "remediate:s3cr3t-91")]);
    let secret = dir.path().join("client.secret");
    let write_cfg = |secret_text: &str| {
        std::fs::write(&secret, secret_text).unwrap();
        std::fs::write(
            &cfg,
            format!(
                "backends:\n  iceberg:\n    lake: {{ uri: \"{}\", oauth2: {{ clientId: remediate, clientSecretFile: client.secret }} }}\n",
                rest.url
            ),
        )
        .unwrap();
    };

    // A wrong secret: the run fails, naming the catalog, the endpoint and
    // the server's reason; nothing is changed.
    write_cfg("not-the-secret\n");
    let (code, out, err) = run_cli(dir.path(), &cfg, &[]);
    assert_ne!(code, Some(0), "{out}{err}");
    let text = format!("{out}{err}");
    assert!(
        text.contains("catalog lake: OAuth2 token endpoint")
            && text.contains("/v1/oauth/tokens answered 401")
            && text.contains("invalid_client"),
        "{text}"
    );
    assert_eq!(pyice(&["inspect", &w, "events"])["files"], before["files"]);

    // The right one (the file's trailing newline ignored): compacted.
    write_cfg("s3cr3t-91\n");
    let (code, out, err) = run_cli(dir.path(), &cfg, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let after = pyice(&["inspect", &w, "events"]);
    assert_eq!(after["checksum"], made["checksum"]);
    assert_eq!(after["files"], 4);
    assert_eq!(after["operation"], "replace");
}

#[tokio::test]
async fn the_postgres_catalog_path_keeps_a_concurrent_append() {
    let pg = common::pg::Server::start(30);
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    let py_uri = format!(
        "postgresql+psycopg2://postgres@127.0.0.1:{}/postgres",
        pg.port
    );
    let env = [("PYICE_CATALOG_URI", py_uri.as_str())];
    let made = pyice_env(&env, &["make", &w, "events", "15", "20"]);
    assert!(
        !wh.join("catalog.db").exists(),
        "the catalog lives in PostgreSQL"
    );
    let cfg: IcebergCatalog = serde_json::from_value(serde_json::json!({
        "uri": format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port),
        "warehouse": format!("file://{w}"),
    }))
    .unwrap();
    let lake = Lake::open("lake", &cfg).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let w2 = w.clone();
    let (hook, appended) = pyice_hook(
        vec![("PYICE_CATALOG_URI".into(), py_uri.clone())],
        move |attempt| (attempt == 0).then(|| strings(&["append", &w2, "events", "8"])),
    );
    let r = compact::compact(&lake, &t, None, &params(4), Some(hook))
        .await
        .unwrap();
    assert_eq!((r.attempts, r.files_removed), (2, 60));
    let after = pyice_env(&env, &["inspect", &w, "events"]);
    let appended = appended.lock().unwrap().clone().unwrap();
    assert_eq!(after["checksum"], appended["checksum"]);
    assert_eq!(after["rows"], 308);
    assert_eq!(after["operation"], "replace");
    unchanged_shape(&made, &after);
}

#[test]
fn expiring_snapshots_and_removing_orphans_frees_the_small_files_and_keeps_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(
        dir.path(),
        ", expireSnapshotsOlderThan: 1ms, removeOrphanFiles: true, orphanMinAge: 1h",
    );
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    let made = pyice(&["make", &w, "events", "25", "20"]);
    let data = wh.join("db/events/data");
    let old_stray = data.join("category=alpha/crashed-writer.parquet");
    let new_stray = data.join("category=alpha/in-flight-writer.parquet");
    std::fs::write(&old_stray, b"an old uncommitted file").unwrap();
    std::fs::write(&new_stray, b"a writer's file, not committed yet").unwrap();
    let st = Command::new("touch")
        .args(["-d", "3 hours ago"])
        .arg(&old_stray)
        .status()
        .unwrap();
    assert!(st.success());
    let parquet_before = walk(&data).len();
    assert_eq!(parquet_before, 100 + 2);

    let (code, out, err) = run_cli(dir.path(), &cfg, &["--dry-run"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("then expire snapshots older than 1ms and remove orphan files older than 1h"),
        "{out}"
    );
    let (code, out, err) = run_cli(dir.path(), &cfg, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let recs = remediate::audit::read(&dir.path().join("audit.jsonl"))
        .unwrap()
        .records;
    let applied = recs
        .iter()
        .find(|r| r.phase == remediate::audit::Phase::Applied)
        .expect("applied");
    assert!(
        applied
            .outcome
            .contains("expired 25 snapshot(s), deleting 150 file(s) only they referenced")
            && applied.outcome.contains("removed 1 orphan file(s)"),
        "{}",
        applied.outcome
    );
    let after = pyice(&["inspect", &w, "events"]);
    assert_eq!(after["checksum"], made["checksum"]);
    assert_eq!(after["snapshots"], 1);
    assert!(!old_stray.exists(), "an old orphan is removed");
    assert!(new_stray.exists(), "a young one may be a writer's: kept");
    let left = walk(&data);
    assert_eq!(
        left.len(),
        4 + 1,
        "the compacted files and the young stray: {left:#?}"
    );
}

#[tokio::test]
async fn bad_catalog_settings_and_missing_tables_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let bad: IcebergCatalog =
        serde_json::from_value(serde_json::json!({"uri": "mysql://db/lake"})).unwrap();
    let e = Lake::open("lake", &bad).await.unwrap_err();
    assert!(
        e.message.contains("backends.iceberg.lake.uri \"mysql://db/lake\": expected sqlite:PATH, postgres://… or http(s)://… (REST)"),
        "{}",
        e.message
    );
    // A database that is no Iceberg catalog: said so, and left as it was.
    let empty = dir.path().join("other.db");
    sqlx::any::install_default_drivers();
    let other = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite:{}?mode=rwc", empty.display()))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (x INTEGER)")
        .execute(&other)
        .await
        .unwrap();
    let not_ice: IcebergCatalog = serde_json::from_value(
        serde_json::json!({"uri": format!("sqlite:{}", empty.display()), "warehouse": "file:///nowhere"}),
    )
    .unwrap();
    let e = Lake::open("lake", &not_ice).await.unwrap_err();
    assert!(
        e.message.starts_with("catalog lake: no iceberg_tables table, so not an Iceberg JDBC/SQL catalog (nothing was created): ")
            && !e.retryable,
        "{}",
        e.message
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master")
        .fetch_one(&other)
        .await
        .unwrap();
    assert_eq!(n, 1, "no table created");
    pyice(&["make", &wh.display().to_string(), "events", "1", "4"]);
    let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
    let e = lake
        .load(&lake::ident("db.missing").unwrap())
        .await
        .unwrap_err();
    assert!(
        e.message.starts_with("table lake.db.missing: "),
        "{}",
        e.message
    );
    // A REST catalog nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down: IcebergCatalog =
        serde_json::from_value(serde_json::json!({"uri": format!("http://127.0.0.1:{port}")}))
            .unwrap();
    let e = Lake::open("lake", &down).await.unwrap_err();
    assert!(e.retryable, "{}", e.message);
    assert!(e.message.starts_with("catalog lake"), "{}", e.message);
}

/// A delete file for [`commit_deletes`]: position deletes (`file_path`,
/// `pos`) or equality deletes on column `id` (field 1).
enum Del {
    /// Rows by (data file as written in the file, position); the manifest's
    /// `referenced_data_file` is set when `referenced` and one file is named.
    Pos {
        rows: Vec<(String, i64)>,
        referenced: bool,
    },
    /// Deletes the rows whose id is one of these.
    Eq { ids: Vec<i64> },
    /// Deletes by these columns (name, field id), the rows of `columns`;
    /// the file's `equality_ids` are `only`, or every field's (Flink
    /// writes whole rows and names the key columns).
    EqOn {
        fields: Vec<(&'static str, i32)>,
        columns: Vec<arrow_array::ArrayRef>,
        only: Option<Vec<i32>>,
    },
    /// Position deletes added with this explicit data sequence number.
    PosAt { rows: Vec<(String, i64)>, seq: i64 },
    /// Position deletes as Iceberg Java writes them when it keeps the
    /// deleted rows: with the optional `row` column (field 2147483544, a
    /// struct of the table's columns; here `id`, field 1).
    PosRow { rows: Vec<(String, i64, i64)> },
    /// Not a delete: a copy of the data file `partition_of`, added (in a
    /// data manifest of its own) with this data sequence number, as a
    /// rewrite keeping its starting sequence number commits its files.
    DataAt { seq: i64 },
}

/// Commits delete files, one snapshot, with the iceberg crate's public
/// writers: pyiceberg (0.12) writes no delete files (copy-on-write only,
/// even with `write.delete.mode=merge-on-read`), so the test makes them.
/// Each delete file goes to the partition of `partition_of` (a data file).
/// Returns the delete files' paths.
async fn commit_deletes(lake: &Lake, table: &str, files: Vec<(&str, Del)>) -> Vec<String> {
    use iceberg::spec::{
        DataContentType, DataFileBuilder, DataFileFormat, ManifestListWriter,
        ManifestWriterBuilder, Operation, Snapshot, SnapshotReference, SnapshotRetention, Summary,
    };
    use iceberg::{TableRequirement, TableUpdate};
    let t = lake.load(&lake::ident(table).unwrap()).await.unwrap();
    let md = t.metadata();
    let cur = md.current_snapshot().unwrap().clone();
    let list = t.manifest_list_reader(&cur).load().await.unwrap();
    let mut partitions = std::collections::HashMap::new();
    for mf in list.entries() {
        let m = mf.load_manifest(t.file_io()).await.unwrap();
        for e in m.entries() {
            partitions.insert(
                e.file_path().to_string(),
                (e.data_file().partition().clone(), mf.partition_spec_id),
            );
        }
    }
    // Every delete file goes to the spec of its `partition_of`: one spec.
    let spec_id = partitions[files[0].0].1;
    assert!(files.iter().all(|f| partitions[f.0].1 == spec_id));
    let spec = md.partition_spec_by_id(spec_id).unwrap().as_ref().clone();
    let seq = md.next_sequence_number();
    let snap_id = 424_242_424_242 + seq;
    let meta = format!("{}/metadata", md.location());
    let out = t
        .file_io()
        .new_output(format!("{meta}/test-deletes-{seq}.avro"))
        .unwrap();
    let mut mw = ManifestWriterBuilder::new(out, Some(snap_id), md.current_schema().clone(), spec)
        .build_v2_deletes();
    let field = |name: &str, t: arrow_schema::DataType, id: &str| {
        arrow_schema::Field::new(name, t, false)
            .with_metadata([("PARQUET:field_id".to_string(), id.to_string())].into())
    };
    let (mut paths, mut pos_rows, mut eq_rows) = (Vec::new(), 0u64, 0u64);
    let mut data_manifest = None;
    for (n, (partition_of, del)) in files.into_iter().enumerate() {
        let partition = partitions[partition_of].0.clone();
        let dir = Path::new(partition_of.strip_prefix("file://").unwrap())
            .parent()
            .unwrap()
            .to_path_buf();
        if let Del::DataAt { seq: data_seq } = del {
            let path = dir.join(format!("test-data-{seq}-{n}.parquet"));
            std::fs::copy(partition_of.strip_prefix("file://").unwrap(), &path).unwrap();
            let f = t
                .file_io()
                .new_input(partition_of)
                .unwrap()
                .metadata()
                .await
                .unwrap();
            let rows = id_rows(partition_of);
            let mut b = DataFileBuilder::default();
            b.content(DataContentType::Data)
                .file_path(format!("file://{}", path.display()))
                .file_format(DataFileFormat::Parquet)
                .partition(partition)
                .partition_spec_id(spec_id)
                .record_count(rows)
                .file_size_in_bytes(f.size);
            let w = data_manifest.get_or_insert_with(|| {
                let out = t
                    .file_io()
                    .new_output(format!("{meta}/test-data-{seq}.avro"))
                    .unwrap();
                ManifestWriterBuilder::new(
                    out,
                    Some(snap_id),
                    md.current_schema().clone(),
                    md.partition_spec_by_id(spec_id).unwrap().as_ref().clone(),
                )
                .build_v2_data()
            });
            w.add_file(b.build().unwrap(), data_seq).unwrap();
            paths.push(format!("file://{}", path.display()));
            continue;
        }
        let path = dir.join(format!("test-delete-{seq}-{n}.parquet"));
        let (del, data_seq) = match del {
            Del::PosAt { rows, seq } => (
                Del::Pos {
                    rows,
                    referenced: false,
                },
                seq,
            ),
            d => (d, -1),
        };
        let (batch, content, referenced, ids) = match del {
            Del::PosAt { .. } | Del::DataAt { .. } => unreachable!(),
            Del::PosRow { rows } => {
                let id = field("id", arrow_schema::DataType::Int64, "1");
                let row_type = arrow_schema::DataType::Struct(vec![id.clone()].into());
                let schema = Arc::new(arrow_schema::Schema::new(vec![
                    field("file_path", arrow_schema::DataType::Utf8, "2147483546"),
                    field("pos", arrow_schema::DataType::Int64, "2147483545"),
                    arrow_schema::Field::new("row", row_type, true).with_metadata(
                        [("PARQUET:field_id".to_string(), "2147483544".to_string())].into(),
                    ),
                ]));
                let row = arrow_array::StructArray::from(vec![(
                    Arc::new(id),
                    Arc::new(arrow_array::Int64Array::from_iter_values(
                        rows.iter().map(|r| r.2),
                    )) as arrow_array::ArrayRef,
                )]);
                let batch = arrow_array::RecordBatch::try_new(
                    schema,
                    vec![
                        Arc::new(arrow_array::StringArray::from_iter_values(
                            rows.iter().map(|r| r.0.as_str()),
                        )),
                        Arc::new(arrow_array::Int64Array::from_iter_values(
                            rows.iter().map(|r| r.1),
                        )),
                        Arc::new(row),
                    ],
                )
                .unwrap();
                pos_rows += rows.len() as u64;
                (batch, DataContentType::PositionDeletes, None, None)
            }
            Del::Pos { rows, referenced } => {
                let schema = Arc::new(arrow_schema::Schema::new(vec![
                    field("file_path", arrow_schema::DataType::Utf8, "2147483546"),
                    field("pos", arrow_schema::DataType::Int64, "2147483545"),
                ]));
                let one: std::collections::BTreeSet<&String> = rows.iter().map(|r| &r.0).collect();
                let referenced = (referenced && one.len() == 1).then(|| rows[0].0.clone());
                let batch = arrow_array::RecordBatch::try_new(
                    schema,
                    vec![
                        Arc::new(arrow_array::StringArray::from_iter_values(
                            rows.iter().map(|r| r.0.as_str()),
                        )),
                        Arc::new(arrow_array::Int64Array::from_iter_values(
                            rows.iter().map(|r| r.1),
                        )),
                    ],
                )
                .unwrap();
                pos_rows += rows.len() as u64;
                (batch, DataContentType::PositionDeletes, referenced, None)
            }
            Del::Eq { ids } => {
                let schema = Arc::new(arrow_schema::Schema::new(vec![field(
                    "id",
                    arrow_schema::DataType::Int64,
                    "1",
                )]));
                let batch = arrow_array::RecordBatch::try_new(
                    schema,
                    vec![Arc::new(arrow_array::Int64Array::from(ids.clone()))],
                )
                .unwrap();
                eq_rows += ids.len() as u64;
                (batch, DataContentType::EqualityDeletes, None, Some(vec![1]))
            }
            Del::EqOn {
                fields,
                columns,
                only,
            } => {
                let schema = Arc::new(arrow_schema::Schema::new(
                    fields
                        .iter()
                        .zip(&columns)
                        .map(|((name, id), c)| {
                            arrow_schema::Field::new(*name, c.data_type().clone(), true)
                                .with_metadata(
                                    [("PARQUET:field_id".to_string(), id.to_string())].into(),
                                )
                        })
                        .collect::<Vec<_>>(),
                ));
                let batch = arrow_array::RecordBatch::try_new(schema, columns).unwrap();
                eq_rows += batch.num_rows() as u64;
                let ids = only.unwrap_or_else(|| fields.iter().map(|f| f.1).collect());
                (batch, DataContentType::EqualityDeletes, None, Some(ids))
            }
        };
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let written = format!("file://{}", path.display());
        let mut b = DataFileBuilder::default();
        b.content(content)
            .file_path(written.clone())
            .file_format(DataFileFormat::Parquet)
            .partition(partition)
            .partition_spec_id(spec_id)
            .record_count(batch.num_rows() as u64)
            .file_size_in_bytes(std::fs::metadata(&path).unwrap().len())
            .referenced_data_file(referenced);
        if let Some(ids) = ids {
            b.equality_ids(Some(ids));
        }
        mw.add_file(b.build().unwrap(), data_seq).unwrap();
        paths.push(written);
    }
    let mut manifests: Vec<_> = list.entries().to_vec();
    manifests.push(mw.write_manifest_file().await.unwrap());
    if let Some(w) = data_manifest {
        manifests.push(w.write_manifest_file().await.unwrap());
    }
    let list_path = format!("{meta}/snap-{snap_id}-test.avro");
    let writer = t
        .file_io()
        .new_output(&list_path)
        .unwrap()
        .writer()
        .await
        .unwrap();
    let mut lw = ManifestListWriter::v2(writer, snap_id, Some(cur.snapshot_id()), seq);
    lw.add_manifests(manifests.into_iter()).unwrap();
    lw.close().await.unwrap();
    let mut props = cur.summary().additional_properties.clone();
    let mut bump = |k: &str, by: u64| {
        let before: u64 = props.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        props.insert(k.into(), (before + by).to_string());
    };
    bump("total-delete-files", paths.len() as u64);
    bump("total-position-deletes", pos_rows);
    bump("total-equality-deletes", eq_rows);
    props.insert("added-delete-files".into(), paths.len().to_string());
    props.insert("added-position-deletes".into(), pos_rows.to_string());
    props.insert("added-equality-deletes".into(), eq_rows.to_string());
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snap_id)
        .with_parent_snapshot_id(Some(cur.snapshot_id()))
        .with_sequence_number(seq)
        .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
        .with_manifest_list(list_path)
        .with_summary(Summary {
            operation: Operation::Delete,
            additional_properties: props,
        })
        .with_schema_id(md.current_schema_id())
        .build();
    lake.commit(
        &t,
        vec![TableRequirement::RefSnapshotIdMatch {
            r#ref: "main".into(),
            snapshot_id: Some(cur.snapshot_id()),
        }],
        vec![
            TableUpdate::AddSnapshot { snapshot },
            TableUpdate::SetSnapshotRef {
                ref_name: "main".into(),
                reference: SnapshotReference::new(
                    snap_id,
                    SnapshotRetention::branch(None, None, None),
                ),
            },
        ],
    )
    .await
    .unwrap();
    paths
}

/// Live data files of the current snapshot: (path, size, rows), by path.
async fn data_files(t: &iceberg::table::Table) -> Vec<(String, u64, u64)> {
    let cur = t.metadata().current_snapshot().unwrap().clone();
    let list = t.manifest_list_reader(&cur).load().await.unwrap();
    let mut out = Vec::new();
    for mf in list.entries() {
        let m = mf.load_manifest(t.file_io()).await.unwrap();
        for e in m.entries() {
            if e.is_alive() && e.content_type() == iceberg::spec::DataContentType::Data {
                out.push((
                    e.file_path().to_string(),
                    e.file_size_in_bytes(),
                    e.data_file().record_count(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Live delete files of the current snapshot, by path.
async fn live_deletes(t: &iceberg::table::Table) -> Vec<String> {
    let cur = t.metadata().current_snapshot().unwrap().clone();
    let list = t.manifest_list_reader(&cur).load().await.unwrap();
    let mut out = Vec::new();
    for mf in list.entries() {
        let m = mf.load_manifest(t.file_io()).await.unwrap();
        for e in m.entries() {
            if e.is_alive() && e.content_type() != iceberg::spec::DataContentType::Data {
                out.push(e.file_path().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The rows of a local data file, from its Parquet footer.
fn id_rows(data_file: &str) -> u64 {
    let f = std::fs::File::open(data_file.strip_prefix("file://").unwrap()).unwrap();
    let r = parquet::file::reader::SerializedFileReader::new(f).unwrap();
    parquet::file::reader::FileReader::metadata(&r)
        .file_metadata()
        .num_rows() as u64
}

/// The `id` of row `pos` of a local data file, read with the parquet crate.
fn id_at(data_file: &str, pos: usize) -> i64 {
    let f = std::fs::File::open(data_file.strip_prefix("file://").unwrap()).unwrap();
    let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for b in r {
        let b = b.unwrap();
        let c = b.column_by_name("id").unwrap();
        let c = c
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .unwrap();
        ids.extend(c.iter().map(Option::unwrap));
    }
    ids[pos]
}

fn ids(w: &str, table: &str) -> Vec<i64> {
    serde_json::from_value(pyice(&["ids", w, table])).unwrap()
}

#[tokio::test]
async fn position_deletes_are_applied_and_the_delete_files_covering_only_rewritten_files_are_dropped(
) {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    // 40 files of 5 rows (ten per category), then one of 100 per category.
    pyice(&["make", &w, "events", "10", "20"]);
    pyice(&["append", &w, "events", "400", "1000"]);
    let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let files = data_files(&t).await;
    let of = |cat: &str, rows: u64| -> Vec<String> {
        files
            .iter()
            .filter(|f| f.0.contains(&format!("category={cat}/")) && f.2 == rows)
            .map(|f| f.0.clone())
            .collect()
    };
    let (alpha, beta, beta_big) = (of("alpha", 5), of("beta", 5), of("beta", 100));
    assert_eq!((alpha.len(), beta.len(), beta_big.len()), (10, 10, 1));
    // Small: the 5-row files; the 100-row ones are left alone.
    let small_max = files
        .iter()
        .filter(|f| f.2 == 5)
        .map(|f| f.1)
        .max()
        .unwrap();
    let big_min = files
        .iter()
        .filter(|f| f.2 == 100)
        .map(|f| f.1)
        .min()
        .unwrap();
    assert!(small_max < big_min, "{small_max} < {big_min}");
    let p = Params {
        small: small_max + 1,
        ..params(0)
    };
    let pos = |f: &String, p: i64| (f.clone(), p);
    let deletes = commit_deletes(
        &lake,
        "db.events",
        vec![
            // Two alpha files, no referenced_data_file: dropped.
            (
                &alpha[0],
                Del::Pos {
                    rows: vec![pos(&alpha[0], 0), pos(&alpha[1], 1), pos(&alpha[1], 3)],
                    referenced: false,
                },
            ),
            // One alpha file, referenced_data_file set: dropped.
            (
                &alpha[2],
                Del::Pos {
                    rows: vec![pos(&alpha[2], 4)],
                    referenced: true,
                },
            ),
            // A small beta file and the big one, which stays: kept.
            (
                &beta[0],
                Del::Pos {
                    rows: vec![pos(&beta[0], 2), pos(&beta_big[0], 7)],
                    referenced: false,
                },
            ),
        ],
    )
    .await;
    let gone: Vec<i64> = [
        (&alpha[0], 0),
        (&alpha[1], 1),
        (&alpha[1], 3),
        (&alpha[2], 4),
        (&beta[0], 2),
        (&beta_big[0], 7),
    ]
    .iter()
    .map(|(f, p)| id_at(f, *p))
    .collect();
    let before = pyice(&["inspect", &w, "events"]);
    assert_eq!(before["rows"], 600 - 6, "pyiceberg applies the deletes");
    assert_eq!(before["delete_files"], 3);
    let ids_before = ids(&w, "events");
    assert!(gone.iter().all(|g| !ids_before.contains(g)), "{gone:?}");

    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let sel = compact::select(&t, None, &p).await.unwrap();
    assert!(sel.skipped.is_empty(), "{:?}", sel.skipped);
    let figures: Vec<(String, usize, usize, usize, u64)> = sel
        .groups
        .iter()
        .map(|g| {
            (
                g.stats.partition.clone(),
                g.input_files(),
                g.delete_files_applied(),
                g.delete_files_dropped(),
                g.rows_deleted(),
            )
        })
        .collect();
    let find = |name: &str| {
        figures
            .iter()
            .find(|f| f.0.contains(name))
            .unwrap_or_else(|| panic!("{name} in {figures:?}"))
            .clone()
    };
    assert_eq!((find("alpha").1, find("beta").1), (10, 10), "{figures:?}");
    assert_eq!(
        (find("alpha").2, find("alpha").3, find("alpha").4),
        (2, 2, 4),
        "both alpha delete files applied and dropped, 4 rows"
    );
    assert_eq!(
        (find("beta").2, find("beta").3, find("beta").4),
        (1, 0, 1),
        "the beta delete file applied to the small file and kept"
    );
    assert_eq!((find("gamma").2, find("delta").2), (0, 0));

    let r = compact::compact(&lake, &t, None, &p, None).await.unwrap();
    assert!(r.snapshot_id.is_some());
    assert_eq!(
        (r.files_removed, r.files_added, r.rows, r.rows_deleted),
        (40, 4, 200 - 5, 5)
    );
    assert_eq!(r.delete_files_removed, 2);

    let after = pyice(&["inspect", &w, "events"]);
    assert_eq!(after["checksum"], before["checksum"], "the same rows");
    assert_eq!(after["rows"], 594);
    assert_eq!(
        ids(&w, "events"),
        ids_before,
        "the deleted rows stay deleted"
    );
    assert_eq!(after["operation"], "replace");
    assert_eq!(
        after["files"],
        4 + 4,
        "one compacted and one big per category"
    );
    assert_eq!(after["delete_files"], 1);
    assert_eq!(
        after["delete_file_paths"],
        serde_json::json!([deletes[2]]),
        "the delete file that also covers the big beta file is kept"
    );
    let s = &after["snapshot_summary"];
    assert_eq!(s["total-delete-files"], "1", "{s}");
    assert_eq!(s["total-position-deletes"], "2", "{s}");
    assert_eq!(s["removed-delete-files"], "2", "{s}");
    assert_eq!(s["total-data-files"], "8", "{s}");
    // Rows in data files, before deletes: the big beta file keeps its row
    // deleted by the kept delete file.
    assert_eq!(s["total-records"], "595", "{s}");
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    assert!(manifests_read_alike(&t).await > 0);
    // Nothing over the threshold is left: a second run does nothing.
    let again = compact::select(&t, None, &p).await.unwrap();
    assert!(again.groups.is_empty(), "{:?}", again.groups.len());
}

#[tokio::test]
async fn partitions_whose_deletes_cannot_be_applied_exactly_are_skipped_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    pyice(&["make", &w, "events", "6", "20"]);
    let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let files = data_files(&t).await;
    let of = |cat: &str| -> Vec<String> {
        files
            .iter()
            .filter(|f| f.0.contains(&format!("category={cat}/")))
            .map(|f| f.0.clone())
            .collect()
    };
    let (alpha, beta, gamma, delta) = (of("alpha"), of("beta"), of("gamma"), of("delta"));
    let respelled = alpha[0].replacen("file://", "file:", 1);
    assert_ne!(respelled, alpha[0]);
    let deletes = commit_deletes(
        &lake,
        "db.events",
        vec![
            // alpha: a position delete naming a file in another spelling.
            (
                &alpha[0],
                Del::Pos {
                    rows: vec![(respelled.clone(), 1)],
                    referenced: false,
                },
            ),
            // beta: a row past the end of a 5-row file.
            (
                &beta[0],
                Del::Pos {
                    rows: vec![(beta[0].clone(), 5)],
                    referenced: false,
                },
            ),
            // gamma: an equality delete by a column the schema no longer
            // has (field 99).
            (
                &gamma[0],
                Del::EqOn {
                    fields: vec![("gone", 99)],
                    columns: vec![Arc::new(arrow_array::Int64Array::from(vec![2]))],
                    only: None,
                },
            ),
            // delta: a position delete file that is gone (unreadable).
            (
                &delta[0],
                Del::Pos {
                    rows: vec![(delta[0].clone(), 0)],
                    referenced: true,
                },
            ),
        ],
    )
    .await;
    std::fs::remove_file(deletes[3].strip_prefix("file://").unwrap()).unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let sel = compact::select(&t, None, &params(0)).await.unwrap();
    let reason = |name: &str| {
        sel.skipped
            .iter()
            .find(|s| s.0.contains(name))
            .map(|s| s.1.clone())
            .unwrap_or_default()
    };
    let a = reason("alpha");
    assert!(
        a.contains(&deletes[0])
            && a.contains(&format!("as {respelled}"))
            && a.contains("exact path"),
        "{a}"
    );
    let b = reason("beta");
    assert!(
        b.contains("deletes row 5 of data file") && b.contains("which has 5 rows"),
        "{b}"
    );
    let d = reason("delta");
    assert!(
        d.starts_with(&format!(
            "position delete file {}: cannot be read",
            deletes[3]
        )) && d.ends_with("which rows it deletes is unknown, so the partition is left as it is"),
        "{d}"
    );
    let g = reason("gamma");
    assert_eq!(
        g,
        format!("equality delete file {} deletes by field 99, which the current schema no longer has; such deletes are not applied by this build, so the partition is left as it is", deletes[2])
    );
    assert!(sel.groups.is_empty(), "{:?}", sel.groups);
    let r = compact::compact(&lake, &t, None, &params(0), None)
        .await
        .unwrap();
    assert_eq!(r.snapshot_id, None);
    let mut all = deletes.clone();
    all.sort();
    assert_eq!(live_deletes(&t).await, all, "every delete file is kept");

    // With only equality-deleted small files, the partition is skipped.
    let dir2 = tempfile::tempdir().unwrap();
    let wh2 = dir2.path().join("warehouse");
    let w2 = wh2.display().to_string();
    pyice(&["make", &w2, "events", "4", "20"]);
    let lake2 = Lake::open("lake", &sqlite_lake(&wh2)).await.unwrap();
    let t2 = lake2
        .load(&lake::ident("db.events").unwrap())
        .await
        .unwrap();
    let delta = data_files(&t2)
        .await
        .into_iter()
        .find(|f| f.0.contains("category=delta/"))
        .unwrap()
        .0;
    // beta: a position delete of data sequence number 1 naming the file of
    // the fourth append (sequence number 4), which it must not delete from.
    let cur = t2.metadata().current_snapshot().unwrap().clone();
    let mut beta_last = None;
    for mf in t2
        .manifest_list_reader(&cur)
        .load()
        .await
        .unwrap()
        .entries()
    {
        for e in mf.load_manifest(t2.file_io()).await.unwrap().entries() {
            if e.file_path().contains("category=beta/") && e.sequence_number() == Some(4) {
                beta_last = Some(e.file_path().to_string());
            }
        }
    }
    let beta_last = beta_last.expect("the fourth append's beta file");
    let old = Del::PosAt {
        rows: vec![(beta_last.clone(), 0)],
        seq: 1,
    };
    let d2 = commit_deletes(
        &lake2,
        "db.events",
        vec![(&delta, Del::Eq { ids: vec![3] }), (&beta_last, old)],
    )
    .await;
    let t2 = lake2
        .load(&lake::ident("db.events").unwrap())
        .await
        .unwrap();
    let sel = compact::select(&t2, None, &params(0)).await.unwrap();
    // delta: its equality delete is applied, so all four files are picked.
    let d = sel
        .groups
        .iter()
        .find(|g| g.stats.partition.contains("delta"))
        .expect("delta picked");
    assert_eq!((d.input_files(), d.equality_files_applied()), (4, 1));
    let b = sel
        .skipped
        .iter()
        .find(|s| s.0.contains("beta"))
        .map(|s| s.1.clone())
        .unwrap_or_default();
    assert_eq!(
        b,
        format!("position delete file {} (sequence number 1) references data file {beta_last} of the later sequence number 4, which it must not delete from", d2[1]),
    );
}

/// The three spellings of one local file real writers use: `file:/x`
/// (Iceberg Java, Hadoop `Path`), `file:///x` (pyiceberg, the iceberg
/// crate) and a bare `/x`; `form` picks one, rotating.
fn spell(location: &str, form: usize) -> String {
    let p = location
        .strip_prefix("file://")
        .or(location.strip_prefix("file:"))
        .unwrap_or(location);
    match form % 3 {
        0 => format!("file:{p}"),
        1 => format!("file://{p}"),
        _ => p.to_string(),
    }
}

/// Rewrites the records of Avro file `path` in place with `f`, keeping its
/// schema and metadata (Iceberg's schema, partition spec, format version).
fn rewrite_avro(path: &Path, mut f: impl FnMut(&mut apache_avro::types::Value)) {
    let bytes = std::fs::read(path).unwrap();
    let r = apache_avro::Reader::new(&bytes[..]).unwrap();
    let schema = r.writer_schema().clone();
    let meta = r.user_metadata().clone();
    let mut values: Vec<_> = r.map(|v| v.unwrap()).collect();
    values.iter_mut().for_each(&mut f);
    let mut w = apache_avro::Writer::with_codec(&schema, Vec::new(), apache_avro::Codec::Null);
    for (k, v) in meta {
        w.add_user_metadata(k, v).unwrap();
    }
    for v in values {
        w.append(v).unwrap();
    }
    std::fs::write(path, w.into_inner().unwrap()).unwrap();
}

fn avro_field<'a>(
    v: &'a mut apache_avro::types::Value,
    name: &str,
) -> &'a mut apache_avro::types::Value {
    match v {
        apache_avro::types::Value::Record(fields) => {
            &mut fields.iter_mut().find(|(n, _)| n == name).unwrap().1
        }
        other => panic!("not a record: {other:?}"),
    }
}

/// Respells every location in a pyiceberg table's files so each kind of
/// reference (data files in manifests, manifests in manifest lists,
/// manifest lists, metadata log, statistics, the table location, the
/// catalog's pointer) carries each of the three local forms, as a table
/// written by Java and pyiceberg in turn does. Returns the respelled
/// pointer.
fn respell_table(wh: &Path, table: &str) -> String {
    use apache_avro::types::Value as V;
    let meta = wh.join("db").join(table).join("metadata");
    let mut form = 0usize;
    let mut next = |l: &str| {
        form += 1;
        spell(l, form)
    };
    let mut lengths = std::collections::HashMap::new();
    let mut lists = Vec::new();
    let mut jsons = Vec::new();
    for e in std::fs::read_dir(&meta).unwrap().flatten() {
        let p = e.path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".metadata.json") {
            jsons.push(p);
        } else if name.starts_with("snap-") {
            lists.push(p);
        } else if name.ends_with(".avro") {
            rewrite_avro(&p, |v| {
                if let V::String(s) = avro_field(avro_field(v, "data_file"), "file_path") {
                    *s = next(s);
                }
            });
            lengths.insert(name, std::fs::metadata(&p).unwrap().len() as i64);
        }
    }
    for p in &lists {
        rewrite_avro(p, |v| {
            let name = match avro_field(v, "manifest_path") {
                V::String(s) => {
                    let name = s.rsplit('/').next().unwrap().to_string();
                    *s = next(s);
                    name
                }
                other => panic!("{other:?}"),
            };
            *avro_field(v, "manifest_length") = V::Long(lengths[&name]);
        });
    }
    for p in &jsons {
        let mut md: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        md["location"] = next(md["location"].as_str().unwrap()).into();
        for s in md["snapshots"].as_array_mut().unwrap() {
            s["manifest-list"] = next(s["manifest-list"].as_str().unwrap()).into();
        }
        for l in md["metadata-log"].as_array_mut().unwrap() {
            l["metadata-file"] = next(l["metadata-file"].as_str().unwrap()).into();
        }
        std::fs::write(p, serde_json::to_vec(&md).unwrap()).unwrap();
    }
    let current = pyice(&["inspect", &wh.display().to_string(), table])["metadata"]
        .as_str()
        .unwrap()
        .to_string();
    let pointer = spell(&current, 0);
    pyice(&["repoint", &wh.display().to_string(), table, &pointer]);
    pointer
}

/// Adds a statistics file for the current snapshot and a partition
/// statistics file for the first one to the table's current metadata file
/// (`pointer`), written Java's way and bare; returns their local paths.
fn add_statistics(pointer: &str) -> (PathBuf, PathBuf) {
    let path = PathBuf::from(spell(pointer, 2));
    let mut md: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let dir = path.parent().unwrap();
    let stats = dir.join("stats-current.puffin");
    let pstats = dir.join("partition-stats-first.parquet");
    std::fs::write(&stats, b"PFA1 a statistics file").unwrap();
    std::fs::write(&pstats, b"a partition statistics file").unwrap();
    let current = md["current-snapshot-id"].clone();
    let first = md["snapshots"][0]["snapshot-id"].clone();
    md["statistics"] = serde_json::json!([{
        "snapshot-id": current, "statistics-path": spell(&stats.display().to_string(), 0),
        "file-size-in-bytes": 22, "file-footer-size-in-bytes": 4, "blob-metadata": []
    }]);
    md["partition-statistics"] = serde_json::json!([{
        "snapshot-id": first, "statistics-path": spell(&pstats.display().to_string(), 2),
        "file-size-in-bytes": 27
    }]);
    std::fs::write(&path, serde_json::to_vec(&md).unwrap()).unwrap();
    (stats, pstats)
}

fn applied_outcome(dir: &Path) -> String {
    remediate::audit::read(&dir.join("audit.jsonl"))
        .unwrap()
        .records
        .iter()
        .rev()
        .find(|r| r.phase == remediate::audit::Phase::Applied)
        .expect("applied record")
        .outcome
        .clone()
}

#[test]
fn maintenance_on_a_table_spelling_locations_every_way_keeps_every_referenced_file() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    let made = pyice(&["make", &w, "events", "10", "20"]);
    let pointer = respell_table(&wh, "events");
    assert!(pointer.starts_with("file:/") && !pointer.starts_with("file://"));
    let (stats, pstats) = add_statistics(&pointer);
    let respelled = pyice(&["inspect", &w, "events"]);
    assert_eq!(
        respelled["checksum"], made["checksum"],
        "pyiceberg reads the respelled table"
    );
    assert_eq!(respelled["metadata"], pointer.as_str());
    let snapshots_before = pyice(&["scan-all", &w, "events"]);

    let table = wh.join("db/events");
    let orphan_data = table.join("data/category=alpha/crashed-writer.parquet");
    let orphan_meta = table.join("metadata/crashed-writer-m0.avro");
    let hidden = table.join("data/category=alpha/.crashed-writer.parquet.crc");
    for f in [&orphan_data, &orphan_meta, &hidden] {
        std::fs::write(f, b"never committed").unwrap();
    }
    let before: std::collections::BTreeSet<PathBuf> = walk(&table).into_iter().collect();

    // Orphan removal alone, every file old enough.
    let cfg = setup(dir.path(), ", removeOrphanFiles: true, orphanMinAge: 0s");
    let (code, out, err) = run_cli(dir.path(), &cfg, &["--dry-run"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!(
            "then remove orphan files older than 0s (2 file(s), 30 B: {}, {})",
            orphan_data.display(),
            orphan_meta.display()
        )),
        "the dry-run lists exactly the two orphans: {out}"
    );
    assert_eq!(
        walk(&table).len(),
        before.len(),
        "a dry-run deletes nothing"
    );
    let (code, out, err) = run_cli(dir.path(), &cfg, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let outcome = applied_outcome(dir.path());
    assert!(
        outcome.contains("removed 2 orphan file(s) (30 B)"),
        "{outcome}"
    );
    let after: std::collections::BTreeSet<PathBuf> = walk(&table).into_iter().collect();
    let gone: Vec<_> = before.difference(&after).collect();
    assert_eq!(
        gone,
        vec![&orphan_data, &orphan_meta],
        "exactly the orphans went"
    );
    assert!(hidden.exists(), "hidden files are never listed");
    assert!(
        stats.exists() && pstats.exists(),
        "statistics files are referenced"
    );
    // Every snapshot still reads, with the same rows.
    let snapshots_after = pyice(&["scan-all", &w, "events"]);
    for (id, rows) in snapshots_before.as_object().unwrap() {
        assert_eq!(&snapshots_after[id], rows, "snapshot {id}");
    }
    let compacted = pyice(&["inspect", &w, "events"]);
    assert_eq!(compacted["checksum"], made["checksum"]);
    assert_eq!(
        (compacted["files"].as_u64(), compacted["operation"].as_str()),
        (Some(4), Some("replace"))
    );

    // Expiry: every snapshot but the compaction's goes, and exactly the
    // files only they referenced: 10 manifest lists, the 10 appends'
    // manifests, the 40 small data files and both statistics files (of
    // expired snapshots).
    let cfg = setup(
        dir.path(),
        ", expireSnapshotsOlderThan: 1ms, removeOrphanFiles: true, orphanMinAge: 0s",
    );
    let (code, out, err) = run_cli(dir.path(), &cfg, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let outcome = applied_outcome(dir.path());
    assert!(
        outcome.contains("expired 10 snapshot(s), deleting 62 file(s) only they referenced")
            && outcome.contains("removed 0 orphan file(s)"),
        "{outcome}"
    );
    let left = walk(&table);
    let data: Vec<_> = left
        .iter()
        .filter(|p| p.starts_with(table.join("data")) && !p.ends_with(hidden.file_name().unwrap()))
        .collect();
    assert_eq!(data.len(), 4, "the four compacted files: {data:#?}");
    assert!(!stats.exists() && !pstats.exists());
    let last = pyice(&["inspect", &w, "events"]);
    assert_eq!(last["checksum"], made["checksum"]);
    assert_eq!(last["snapshots"], 1);
    let only = pyice(&["scan-all", &w, "events"]);
    assert_eq!(only.as_object().unwrap().values().next().unwrap(), 200);
}

#[test]
fn orphan_removal_deletes_nothing_when_a_reference_cannot_be_read_or_normalised() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    let made = pyice(&["make", &w, "events", "4", "20"]);
    let pointer = respell_table(&wh, "events");
    let table = wh.join("db/events");
    let orphan = table.join("data/category=alpha/crashed-writer.parquet");
    std::fs::write(&orphan, b"never committed").unwrap();
    let cfg = setup(dir.path(), ", removeOrphanFiles: true, orphanMinAge: 0s");
    let current = PathBuf::from(spell(&pointer, 2));
    let md: Value = serde_json::from_slice(&std::fs::read(&current).unwrap()).unwrap();

    // 1. A metadata file of the log is missing: nothing is deleted, even
    // the real orphan, and the outcome says why.
    let logged = PathBuf::from(spell(
        md["metadata-log"][1]["metadata-file"].as_str().unwrap(),
        2,
    ));
    let aside = dir.path().join("aside.json");
    std::fs::rename(&logged, &aside).unwrap();
    let before = walk(&table).len();
    let (code, out, err) = run_cli(dir.path(), &cfg, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let outcome = applied_outcome(dir.path());
    assert!(
        outcome.contains("removed no orphan files: metadata log entry")
            && outcome.contains(&format!(
                "{} cannot be read",
                md["metadata-log"][1]["metadata-file"].as_str().unwrap()
            )),
        "{outcome}"
    );
    assert!(orphan.exists());
    assert_eq!(
        walk(&table).len(),
        before + 4 + 2 + 1 + 1,
        "the compaction's 4 data files, 2 manifests, manifest list and metadata file added, nothing removed"
    );
    std::fs::rename(&aside, &logged).unwrap();
    let compacted = pyice(&["inspect", &w, "events"]);
    assert_eq!(compacted["checksum"], made["checksum"]);
    let now = PathBuf::from(spell(compacted["metadata"].as_str().unwrap(), 2));

    // 2. A statistics file named with another host's authority has no
    // safe local reading.
    let mut md: Value = serde_json::from_slice(&std::fs::read(&now).unwrap()).unwrap();
    let stats = format!("file://otherhost{}/metadata/stats.puffin", table.display());
    md["statistics"] = serde_json::json!([{
        "snapshot-id": md["current-snapshot-id"], "statistics-path": stats,
        "file-size-in-bytes": 1, "file-footer-size-in-bytes": 1, "blob-metadata": []
    }]);
    let good = std::fs::read(&now).unwrap();
    std::fs::write(&now, serde_json::to_vec(&md).unwrap()).unwrap();
    let (code, out, err) = run_cli(dir.path(), &cfg, &["--dry-run"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("(it will remove none: statistics file: location {stats:?}: file: location names a host")),
        "{out}"
    );
    std::fs::write(&now, &good).unwrap();

    // 3. An older snapshot's manifest list is unreadable (not the current
    // one's: that the compaction plan itself reads, and fails on first).
    let older = md["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["snapshot-id"] != md["current-snapshot-id"])
        .expect("the table has an older snapshot")
        .clone();
    let list = PathBuf::from(spell(older["manifest-list"].as_str().unwrap(), 2));
    let list_bytes = std::fs::read(&list).unwrap();
    std::fs::write(&list, b"not avro").unwrap();
    let (code, out, err) = run_cli(dir.path(), &cfg, &["--dry-run"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!(
            "(it will remove none: snapshot {} (manifest list",
            older["snapshot-id"]
        )) && out.contains("cannot be read"),
        "{out}"
    );
    std::fs::write(&list, list_bytes).unwrap();

    // Whole again, the orphan goes and only it.
    let before = walk(&table).len();
    let (code, out, err) = run_cli(dir.path(), &cfg, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let outcome = applied_outcome(dir.path());
    assert!(
        outcome.contains("removed 1 orphan file(s) (15 B)"),
        "{outcome}"
    );
    assert!(!orphan.exists());
    assert_eq!(walk(&table).len(), before - 1);
    assert_eq!(
        pyice(&["inspect", &w, "events"])["checksum"],
        made["checksum"]
    );
}

/// Iceberg Java's `JdbcUtil.V0_CREATE_CATALOG_SQL`, verbatim: the layout
/// `JdbcCatalog` creates by default (no `iceberg_type` column).
const JAVA_V0_CREATE_CATALOG_SQL: &str = "CREATE TABLE iceberg_tables(catalog_name VARCHAR(255) NOT NULL,table_namespace VARCHAR(255) NOT NULL,table_name VARCHAR(255) NOT NULL,metadata_location VARCHAR(1000),previous_metadata_location VARCHAR(1000),PRIMARY KEY (catalog_name, table_namespace, table_name))";

/// Makes a V0 catalog at `uri` (the DDL above, nothing else: no namespace
/// properties table) registering `db.<table>` at `metadata`, as Java's
/// `JdbcCatalog` with default settings leaves it.
async fn java_v0_catalog(uri: &str, table: &str, metadata: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(uri)
        .await
        .unwrap();
    sqlx::query(JAVA_V0_CREATE_CATALOG_SQL)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!(
        "INSERT INTO iceberg_tables(catalog_name,table_namespace,table_name,metadata_location,previous_metadata_location) VALUES('lake','db','{table}','{metadata}',null)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    pool
}

async fn v0_row(pool: &sqlx::AnyPool, table: &str) -> (String, Option<String>) {
    use sqlx::Row;
    let r = sqlx::query(&format!(
        "SELECT metadata_location, previous_metadata_location FROM iceberg_tables WHERE table_name = '{table}'"
    ))
    .fetch_one(pool)
    .await
    .unwrap();
    (r.get(0), r.get(1))
}

#[tokio::test]
async fn a_java_default_v0_jdbc_catalog_on_sqlite_is_compacted_and_expired_without_touching_its_schema(
) {
    use sqlx::Row;
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(
        dir.path(),
        ", expireSnapshotsOlderThan: 1ms, removeOrphanFiles: true, orphanMinAge: 1h",
    );
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    let made = pyice(&["make", &w, "events", "10", "20"]);
    // Java writes its locations `file:/x`.
    let metadata = spell(made["metadata"].as_str().unwrap(), 0);
    let v0 = format!("sqlite:{w}/v0.db?mode=rwc");
    let pool = java_v0_catalog(&v0, "events", &metadata).await;
    let schema = || async {
        sqlx::query("SELECT type, name, sql FROM sqlite_master ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} {} {:?}",
                    r.get::<String, _>(0),
                    r.get::<String, _>(1),
                    r.get::<Option<String>, _>(2)
                )
            })
            .collect::<Vec<_>>()
    };
    let before = schema().await;
    assert_eq!(
        before.len(),
        2,
        "the table and its primary key index: {before:?}"
    );
    std::fs::write(
        &cfg,
        format!(
            "backends:\n  iceberg:\n    lake: {{ uri: \"sqlite:{w}/v0.db\", warehouse: \"file://{w}\" }}\n"
        ),
    )
    .unwrap();
    let dir_path = dir.path().to_path_buf();
    let cfg2 = cfg.clone();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || run_cli(&dir_path, &cfg2, &["--dry-run"]))
            .await
            .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("table lake.db.events: 40 data files, 40 small; compact 4 partition(s)"),
        "{out}{err}"
    );
    let dir_path = dir.path().to_path_buf();
    let (code, out, err) = tokio::task::spawn_blocking(move || run_cli(&dir_path, &cfg, &[]))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    let outcome = applied_outcome(dir.path());
    assert!(
        outcome.contains("replaced 40 small files")
            && outcome.contains("expired 10 snapshot(s), deleting 60 file(s) only they referenced")
            && outcome.contains("removed 0 orphan file(s)"),
        "{outcome}"
    );
    assert_eq!(schema().await, before, "the catalog's schema is untouched");
    let (now, previous) = v0_row(&pool, "events").await;
    assert_ne!(now, metadata);
    assert!(
        now.starts_with("file:/") && !now.starts_with("file://"),
        "{now}"
    );
    assert!(
        previous.is_some_and(|p| p != metadata && p != now),
        "two commits: compaction, expiry"
    );
    // pyiceberg reads the state the V0 row points at.
    pyice(&["repoint", &w, "events", &now]);
    let after = pyice(&["inspect", &w, "events"]);
    assert_eq!(after["checksum"], made["checksum"]);
    assert_eq!(
        (after["files"].as_u64(), after["snapshots"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(after["operation"], "replace");
    unchanged_shape(&made, &after);
}

#[tokio::test]
async fn a_java_default_v0_jdbc_catalog_on_postgres_is_compacted_without_touching_its_schema() {
    let pg = common::pg::Server::start(30);
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    let made = pyice(&["make", &w, "events", "8", "20"]);
    let metadata = spell(made["metadata"].as_str().unwrap(), 0);
    let uri = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let pool = java_v0_catalog(&uri, "events", &metadata).await;
    let tables = || async {
        use sqlx::Row;
        sqlx::query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect::<Vec<_>>()
    };
    assert_eq!(tables().await, vec!["iceberg_tables"]);
    let cfg: IcebergCatalog = serde_json::from_value(serde_json::json!({
        "uri": uri, "warehouse": format!("file://{w}"),
    }))
    .unwrap();
    let lake = Lake::open("lake", &cfg).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    assert_eq!(t.metadata_location(), Some(metadata.as_str()));
    let r = compact::compact(&lake, &t, None, &params(4), None)
        .await
        .unwrap();
    assert_eq!((r.files_removed, r.files_added), (32, 4));
    let (now, previous) = v0_row(&pool, "events").await;
    assert_eq!(previous.as_deref(), Some(metadata.as_str()));
    assert_eq!(tables().await, vec!["iceberg_tables"], "nothing created");
    let e = lake
        .load(&lake::ident("db.missing").unwrap())
        .await
        .unwrap_err();
    assert!(
        e.message.contains("no table db.missing in catalog lake"),
        "{}",
        e.message
    );
    pyice(&["repoint", &w, "events", &now]);
    let after = pyice(&["inspect", &w, "events"]);
    assert_eq!(after["checksum"], made["checksum"]);
    assert_eq!(after["files"], 4);
    assert_eq!(after["operation"], "replace");
}

/// A real S3 API server on loopback (`moto_server`, PyPI `moto[server]`),
/// with the bucket `lake`; killed on drop.
struct Moto {
    child: std::process::Child,
    endpoint: String,
    /// The server's request log.
    log: tempfile::NamedTempFile,
    /// The keys pyice.py signs with.
    key_id: String,
    secret: String,
}

impl Moto {
    const KEY_ID: &'static str = "remediate-test-key";
    const SECRET: &'static str = "remediate-test-secret";

    fn start() -> Self {
        let probe = Command::new("moto_server").arg("--help").output();
        assert!(
            probe.is_ok_and(|o| o.status.success()),
            "moto_server is required: pip install 'moto[server]' s3fs (.ci/run does)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
            key_id: Self::KEY_ID.into(),
            secret: Self::SECRET.into(),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not listen on 127.0.0.1:{port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        pyice_env(&moto.env(), &["s3-mkbucket", "lake"]);
        moto
    }

    /// Whether the server checks every request's signature from now on
    /// (moto's IAM authentication, switched through its `/moto-api`).
    fn check_signatures(&self, on: bool) {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sys, requests; r = requests.post(sys.argv[1] + '/moto-api/reset-auth', data=sys.argv[2]); r.raise_for_status()",
                &self.endpoint,
                if on { "0" } else { "inf" },
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// pyice.py's settings for this server (warehouse `s3://lake/wh`).
    fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("PYICE_S3_ENDPOINT", self.endpoint.as_str()),
            ("PYICE_S3_KEY_ID", self.key_id.as_str()),
            ("PYICE_S3_SECRET", self.secret.as_str()),
            ("PYICE_WAREHOUSE", "s3://lake/wh"),
        ]
    }

    /// [`Moto::env`], owned (for [`pyice_blocking`]), with `extra` after it.
    fn env_owned_with(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        self.env()
            .into_iter()
            .chain(extra.iter().copied())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn env_owned(&self) -> Vec<(String, String)> {
        self.env_owned_with(&[])
    }

    /// Requests so far with `method` whose path contains `part`.
    fn requests(&self, method: &str, part: &str) -> usize {
        std::fs::read_to_string(self.log.path())
            .unwrap()
            .lines()
            .filter(|l| l.contains(&format!("\"{method} ")) && l.contains(part))
            .count()
    }

    /// Every key under `prefix` (`lake/wh/...`) with its size.
    fn ls(&self, prefix: &str) -> serde_json::Map<String, Value> {
        match pyice_env(&self.env(), &["s3-ls", prefix]) {
            Value::Object(m) => m,
            v => panic!("s3-ls: {v}"),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_table_on_s3_is_surveyed_compacted_expired_and_cleaned_of_orphans_and_a_failed_rewrite_leaves_nothing(
) {
    let moto = tokio::task::spawn_blocking(Moto::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    let made = pyice_blocking(moto.env_owned(), &["make", &w, "events", "20", "10"]).await;
    assert_eq!(made["files"], 80, "20 appends over 4 partitions");
    assert!(
        made["metadata"]
            .as_str()
            .unwrap()
            .starts_with("s3://lake/wh/db/events/metadata/"),
        "{made}"
    );
    // An old writer's leftover and a hidden file (never listed, never
    // removed) under the table's prefix.
    for (key, text) in [
        (
            "data/category=alpha/crashed-writer.parquet",
            "never committed",
        ),
        ("data/_temporary/part-0.parquet", "a job's scratch file"),
    ] {
        pyice_env(
            &moto.env(),
            &["s3-put", &format!("lake/wh/db/events/{key}"), text],
        );
    }
    let data_before = moto.ls("lake/wh/db/events/data");
    assert_eq!(data_before.len(), 82, "{data_before:#?}");

    std::fs::write(dir.path().join("key-id"), Moto::KEY_ID).unwrap();
    std::fs::write(dir.path().join("secret"), format!("{}\n", Moto::SECRET)).unwrap();
    let s3 = format!(
        "s3: {{ endpoint: \"{}\", region: us-east-1, pathStyle: true, accessKeyIdFile: \"{d}/key-id\", secretAccessKeyFile: \"{d}/secret\" }}",
        moto.endpoint,
        d = dir.path().display()
    );
    let catalog = format!(
        "{{ uri: \"sqlite:{w}/catalog.db\", warehouse: \"s3://lake/wh\", tables: [db.events], smallFileThreshold: 1Mi, scrapeInterval: 1s, {s3} }}"
    );

    // The /metrics exporter reads the table's manifests on S3.
    let cfg = setup(
        dir.path(),
        ", expireSnapshotsOlderThan: 1ms, removeOrphanFiles: true, orphanMinAge: 0s",
    );
    let agent_cfg = format!(
        "listen: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: {{ enabled: false }}\nbackends:\n  iceberg:\n    lake: {catalog}\n"
    );
    {
        let a = common::start_agent(dir.path(), &agent_cfg);
        let series = "remediate_iceberg_table_total_files{catalog=\"lake\",namespace=\"db\",table=\"events\"}";
        let mut got = None;
        for _ in 0..300 {
            got = a.metric(series).await;
            if got.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(got, Some(80.0), "{}", a.log_text());
        assert_eq!(
            a.metric("remediate_iceberg_table_small_files_ratio{catalog=\"lake\",namespace=\"db\",table=\"events\"}").await,
            Some(1.0)
        );
    }

    // Without the s3 settings the catalog refuses the table, naming them,
    // and touches no local path.
    let no_s3: IcebergCatalog = serde_json::from_value(serde_json::json!({
        "uri": format!("sqlite:{w}/catalog.db"),
        "warehouse": "s3://lake/wh",
    }))
    .unwrap();
    let e = Lake::open("lake", &no_s3)
        .await
        .unwrap()
        .load(&lake::ident("db.events").unwrap())
        .await
        .unwrap_err();
    assert!(
        e.message
            .contains("the table is on S3 and backends.iceberg.lake.s3 is not set"),
        "{}",
        e.message
    );

    // A rewrite that fails (one input file is gone for the moment) commits
    // nothing and leaves none of the files the other bins wrote.
    let data_key = data_before
        .keys()
        .find(|k| k.contains("/category=alpha/") && !k.contains("crashed-writer"))
        .unwrap()
        .clone();
    let aside = format!("lake/aside/{}", data_key.rsplit('/').next().unwrap());
    let mv = |from: &str, to: &str| {
        pyice_env(&moto.env(), &["s3-mv", from, to]);
    };
    mv(&data_key, &aside);
    let lake_cfg: IcebergCatalog = serde_yaml::from_str(&catalog).unwrap();
    let lake = Lake::open("lake", &lake_cfg).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let snapshots = t.metadata().snapshots().count();
    let e = compact::compact(&lake, &t, None, &params(0), None)
        .await
        .unwrap_err();
    assert!(
        e.message.contains("rewrite failed, nothing was committed"),
        "{}",
        e.message
    );
    let left = moto.ls("lake/wh/db/events/data");
    assert!(
        !left.keys().any(|k| k.contains("/compact-")),
        "the other bins' files are removed: {left:#?}"
    );
    assert_eq!(left.len(), 81, "all but the file set aside");
    let (put, deleted) = (
        moto.requests("PUT", "/compact-"),
        moto.requests("DELETE", "/compact-"),
    );
    assert!(
        put > 0 && deleted >= put,
        "the other bins wrote {put} file(s) to S3 and {deleted} deletes removed them"
    );
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    assert_eq!(
        t.metadata().snapshots().count(),
        snapshots,
        "nothing committed"
    );
    mv(&aside, &data_key);

    // Compaction, expiry and orphan removal through the CLI, as in the
    // local tests.
    std::fs::write(
        &cfg,
        format!("backends:\n  iceberg:\n    lake: {catalog}\n"),
    )
    .unwrap();
    let d = dir.path().to_path_buf();
    let c2 = cfg.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || run_cli(&d, &c2, &["--dry-run"]))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("table lake.db.events: 80 data files, 80 small; compact 4 partition(s):")
            && out.contains(
                "(1 file(s), 15 B: s3://lake/wh/db/events/data/category=alpha/crashed-writer.parquet)"
            ),
        "the dry-run lists exactly the one orphan: {out}"
    );
    let d = dir.path().to_path_buf();
    let c2 = cfg.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || run_cli(&d, &c2, &[]))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    let outcome = applied_outcome(dir.path());
    assert!(
        outcome.contains("replaced 80 small files")
            && outcome.contains("with 4 (")
            && outcome.contains("expired 20 snapshot(s), deleting")
            && outcome.contains("removed 1 orphan file(s) (15 B)"),
        "{outcome}"
    );

    // pyiceberg reads the same rows from fewer files.
    let after = pyice_blocking(moto.env_owned(), &["inspect", &w, "events"]).await;
    assert_eq!(after["checksum"], made["checksum"], "same rows");
    assert_eq!(after["rows"], 200);
    assert_eq!(after["files"], 4, "one file per partition");
    assert_eq!(after["operation"], "replace");
    assert_eq!(after["snapshots"], 1, "the appends' snapshots expired");
    unchanged_shape(&made, &after);

    // In the bucket: the compacted files, and the hidden file, nothing else
    // under data/ (the expired snapshots' files and the orphan are gone).
    let data_after = moto.ls("lake/wh/db/events/data");
    let mut keys: Vec<&String> = data_after.keys().collect();
    keys.sort();
    assert_eq!(keys.len(), 5, "{keys:#?}");
    assert!(keys
        .iter()
        .any(|k| k.ends_with("data/_temporary/part-0.parquet")));
    assert_eq!(
        keys.iter()
            .filter(|k| k.rsplit('/').next().unwrap().starts_with("compact-"))
            .count(),
        4,
        "{keys:#?}"
    );
}

#[tokio::test]
async fn a_local_table_in_a_catalog_with_s3_settings_still_compacts() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    let made = pyice(&["make", &w, "events", "10", "10"]);
    let mut cfg = serde_json::to_value(sqlite_lake(&wh)).unwrap();
    // Never contacted: the table is local.
    cfg["s3"] = serde_json::json!({"endpoint": "http://127.0.0.1:9", "pathStyle": true});
    let cfg: IcebergCatalog = serde_json::from_value(cfg).unwrap();
    let lake = Lake::open("lake", &cfg).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let r = compact::compact(&lake, &t, None, &params(0), None)
        .await
        .unwrap();
    assert_eq!((r.files_removed, r.files_added), (40, 4));
    let after = pyice(&["inspect", &w, "events"]);
    assert_eq!(after["checksum"], made["checksum"]);
    assert_eq!(after["files"], 4);
    assert_eq!(after["operation"], "replace");
}

#[tokio::test]
async fn a_position_delete_committed_during_compaction_aborts_and_stays_applied() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    pyice(&["make", &w, "events", "10", "20"]);
    let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let alpha = data_files(&t)
        .await
        .into_iter()
        .find(|f| f.0.contains("category=alpha/"))
        .unwrap()
        .0;
    let deleted = id_at(&alpha, 3);
    let (wh2, alpha2) = (wh.clone(), alpha.clone());
    let hook: compact::BeforeCommit = Arc::new(move |attempt| {
        let (wh, alpha) = (wh2.clone(), alpha2.clone());
        Box::pin(async move {
            if attempt == 0 {
                let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
                let rows = vec![(alpha.clone(), 3)];
                let del = Del::Pos {
                    rows,
                    referenced: true,
                };
                commit_deletes(&lake, "db.events", vec![(&alpha, del)]).await;
            }
        })
    });
    let e = compact::compact(&lake, &t, None, &params(4), Some(hook))
        .await
        .unwrap_err();
    assert!(
        e.message.contains("a concurrent commit added delete file")
            && e.message.contains("to compacted partition alpha")
            && e.message.contains("nothing was committed"),
        "{}",
        e.message
    );
    assert!(
        compact_files(&wh, "events").is_empty(),
        "no rewritten file left"
    );
    let after = pyice(&["inspect", &w, "events"]);
    assert_eq!(after["rows"], 199, "the concurrent delete applies");
    assert_eq!(after["files"], 40, "nothing compacted");
    assert_eq!(after["delete_files"], 1);
    assert!(!ids(&w, "events").contains(&deleted));
}

#[tokio::test]
async fn the_cli_plan_and_outcome_name_the_position_deletes_applied_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path(), "");
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    pyice(&["make", &w, "events", "10", "20"]);
    let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let alpha = data_files(&t)
        .await
        .into_iter()
        .find(|f| f.0.contains("category=alpha/"))
        .unwrap()
        .0;
    let del = Del::Pos {
        rows: vec![(alpha.clone(), 2)],
        referenced: true,
    };
    commit_deletes(&lake, "db.events", vec![(&alpha, del)]).await;
    let before = pyice(&["inspect", &w, "events"]);
    assert_eq!(before["rows"], 199);
    let cfg_path = cfg.clone();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || run_cli(cfg_path.parent().unwrap(), &cfg_path, &[]))
            .await
            .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    let recs = remediate::audit::read(&dir.path().join("audit.jsonl"))
        .unwrap()
        .records;
    let outcome = |phase| {
        recs.iter()
            .find(|r| r.phase == phase)
            .map(|r| r.outcome.clone())
            .unwrap_or_default()
    };
    let planned = outcome(remediate::audit::Phase::Planned);
    assert!(
        planned.contains("compact 4 partition(s)")
            && planned.contains("alpha: 10 files, 10 small (100%)")
            && planned.contains(
                "-> 1 file(s), 1 position delete file(s) applied (1 row(s)), 1 of them removed"
            ),
        "{planned}"
    );
    let applied = outcome(remediate::audit::Phase::Applied);
    assert!(
        applied.contains("replaced 40 small files")
            && applied.contains(
                "199 rows (1 row(s) deleted by position deletes and 0 by equality deletes left out; 1 delete file(s) removed)"
            ),
        "{applied}"
    );
    let after = pyice(&["inspect", &w, "events"]);
    assert_eq!(after["checksum"], before["checksum"]);
    assert_eq!(
        (after["files"].clone(), after["delete_files"].clone()),
        (4.into(), 0.into())
    );
    assert_eq!(after["operation"], "replace");
}

/// Why equality deletes are not applied (see `compact.rs`): the iceberg
/// 0.10 Arrow reader, given an equality delete on column `note` that
/// matches no row, drops every row of the files written before `note` was
/// added (Iceberg reads the missing column as null, which equals no
/// deleted value, so they must all stay). When this fails, the crate
/// applies equality deletes correctly for this case and they can be
/// reconsidered.
#[tokio::test]
async fn the_iceberg_crate_reader_drops_rows_an_equality_delete_does_not_match() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    pyice(&["make-evolved", &w, "events", "4", "20"]);
    let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let schema = t.metadata().current_schema().clone();
    let note = schema.field_by_name("note").unwrap().id;
    // The equality delete: note = "no such note".
    let f = arrow_schema::Field::new("note", arrow_schema::DataType::Utf8, false)
        .with_metadata([("PARQUET:field_id".to_string(), note.to_string())].into());
    let s = Arc::new(arrow_schema::Schema::new(vec![f]));
    let b = arrow_array::RecordBatch::try_new(
        s.clone(),
        vec![Arc::new(arrow_array::StringArray::from(vec![
            "no such note",
        ]))],
    )
    .unwrap();
    let path = dir.path().join("eq-delete.parquet");
    let mut wr =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), s, None)
            .unwrap();
    wr.write(&b).unwrap();
    wr.close().unwrap();
    let del = iceberg::scan::FileScanTaskDeleteFile::builder()
        .with_file_path(format!("file://{}", path.display()))
        .with_file_size_in_bytes(std::fs::metadata(&path).unwrap().len())
        .with_file_type(iceberg::spec::DataContentType::EqualityDeletes)
        .with_partition_spec_id(t.metadata().default_partition_spec_id())
        .with_equality_ids(Some(vec![note]))
        .build();
    let ids: Vec<i32> = schema.as_struct().fields().iter().map(|f| f.id).collect();
    let (mut with_note, mut without) = (Vec::new(), Vec::new());
    for (p, size, rows) in data_files(&t).await {
        let task = iceberg::scan::FileScanTask::builder()
            .with_file_size_in_bytes(size)
            .with_start(0)
            .with_length(size)
            .with_record_count(Some(rows))
            .with_data_file_path(p.clone())
            .with_data_file_format(iceberg::spec::DataFileFormat::Parquet)
            .with_schema(schema.clone())
            .with_project_field_ids(ids.clone())
            .with_predicate(None)
            .with_deletes(vec![del.clone()])
            .with_partition(None)
            .with_partition_spec(None)
            .with_name_mapping(None)
            .with_case_sensitive(true)
            .build();
        let mut stream = t
            .reader_builder()
            .build()
            .read(Box::pin(futures::stream::iter(vec![Ok(task)])))
            .unwrap()
            .stream();
        let mut read = 0u64;
        while let Some(b) = stream.next().await {
            read += b.unwrap().num_rows() as u64;
        }
        let file = std::fs::File::open(p.strip_prefix("file://").unwrap()).unwrap();
        let has_note = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .schema()
            .field_with_name("note")
            .is_ok();
        if has_note {
            with_note.push((rows, read));
        } else {
            without.push((rows, read));
        }
    }
    assert_eq!((with_note.len(), without.len()), (8, 8));
    assert!(
        with_note.iter().all(|(rows, read)| rows == read),
        "{with_note:?}"
    );
    assert!(
        without.iter().all(|(rows, read)| *rows == 5 && *read == 0),
        "every row of a file lacking the column is dropped: {without:?}"
    );
}

#[tokio::test]
async fn a_global_equality_delete_of_an_older_unpartitioned_spec_is_applied_in_every_partition_and_kept(
) {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    // Two unpartitioned appends, then partitioned by category, four more.
    pyice(&["make-respec", &w, "events", "2", "4", "20"]);
    let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let unpartitioned = data_files(&t)
        .await
        .into_iter()
        .find(|f| !f.0.contains("category="))
        .unwrap()
        .0;
    let before = compact::select(&t, None, &params(0)).await.unwrap();
    let per = |sel: &compact::Selection| -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = sel
            .groups
            .iter()
            .map(|g| (g.stats.partition.clone(), g.input_files()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        per(&before).iter().map(|g| g.1).collect::<Vec<_>>(),
        vec![4; 4],
        "{:?}",
        per(&before)
    );
    // A global equality delete (spec 0) of id 1 (in an unpartitioned
    // file) and id 41 (the first partitioned append's, category beta),
    // then two more appends.
    let global = commit_deletes(
        &lake,
        "db.events",
        vec![(&unpartitioned, Del::Eq { ids: vec![1, 41] })],
    )
    .await;
    pyice(&["append-raw", &w, "events", "20", "5000"]);
    pyice(&["append-raw", &w, "events", "20", "6000"]);
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let sel = compact::select(&t, None, &params(0)).await.unwrap();
    assert_eq!(
        per(&sel).iter().map(|g| g.1).collect::<Vec<_>>(),
        vec![6; 4],
        "every partitioned file, the delete applied: {:?} (skipped {:?})",
        per(&sel),
        sel.skipped
    );
    assert!(sel
        .groups
        .iter()
        .all(|g| (g.equality_files_applied(), g.equality_files_dropped()) == (1, 0)));
    let r = compact::compact(&lake, &t, None, &params(0), None)
        .await
        .unwrap();
    assert_eq!((r.rows_equality_deleted, r.delete_files_removed), (1, 0));
    assert_eq!(r.rows, 4 * 20 + 2 * 20 - 1);
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    assert_eq!(
        live_deletes(&t).await,
        global,
        "a global delete still applies to the unpartitioned files"
    );
}

/// Equality deletes, as Flink upserts and Spark merge-on-read leave them,
/// are applied by the rewrite: by the spec, a deleted key removes rows of
/// data files of a lower sequence number only, a null matches a null, and
/// a column a file was written without reads as null. The delete files of
/// a partition all of whose affected files are rewritten are dropped in
/// the same `replace`, after which pyiceberg (which cannot read equality
/// deletes) reads the table and finds exactly the rows the construction
/// says survive.
#[tokio::test]
async fn equality_deletes_are_applied_by_the_rewrite_and_dropped_with_the_files_they_covered() {
    use arrow_array::{ArrayRef, Int64Array, StringArray};
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    // Ids 0..80, category by id % 4 (alpha, beta, gamma, delta), 5 rows a
    // file; `note` ("n<id>") exists from id 40 on (appends 3 and 4).
    pyice(&["make-evolved", &w, "events", "4", "20"]);
    let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let note = t
        .metadata()
        .current_schema()
        .field_by_name("note")
        .unwrap()
        .id;
    let files = data_files(&t).await;
    let first = |cat: &str| {
        files
            .iter()
            .find(|f| f.0.contains(&format!("category={cat}/")))
            .unwrap()
            .0
            .clone()
    };
    let notes = |v: Vec<Option<&str>>| -> ArrayRef { Arc::new(StringArray::from(v)) };
    let deletes = commit_deletes(
        &lake,
        "db.events",
        vec![
            // alpha: ids 0 (first append) and 40 (third), and 5000, which
            // the append after this delete writes: it must stay. Written
            // as Flink does, whole rows with the key named: the other
            // columns (a wrong value for id 40 here) are not compared.
            (
                &first("alpha"),
                Del::EqOn {
                    fields: vec![("id", 1), ("category", 2), ("value", 3)],
                    columns: vec![
                        Arc::new(Int64Array::from(vec![0, 40, 5000])),
                        Arc::new(StringArray::from(vec!["alpha"; 3])),
                        Arc::new(arrow_array::Float64Array::from(vec![0.0, 999.0, 2500.0])),
                    ],
                    only: Some(vec![1]),
                },
            ),
            // beta: note is null: every row of the two appends written
            // before note existed.
            (
                &first("beta"),
                Del::EqOn {
                    fields: vec![("note", note)],
                    columns: vec![notes(vec![None])],
                    only: None,
                },
            ),
            // gamma: a note no row has (the value the crate's own reader
            // gets wrong): nothing goes.
            (
                &first("gamma"),
                Del::EqOn {
                    fields: vec![("note", note)],
                    columns: vec![notes(vec![Some("no such note")])],
                    only: None,
                },
            ),
            // delta: by (id, note): (3, null) and (43, "n43") match, (47,
            // "nope") does not.
            (
                &first("delta"),
                Del::EqOn {
                    fields: vec![("id", 1), ("note", note)],
                    columns: vec![
                        Arc::new(Int64Array::from(vec![3, 43, 47])),
                        notes(vec![None, Some("n43"), Some("nope")]),
                    ],
                    only: None,
                },
            ),
        ],
    )
    .await;
    pyice(&["append-raw", &w, "events", "20", "5000"]);
    // alpha again, a later delete by the same column: id 4 (first append)
    // and 5004 (the append just made, of a lower sequence number now).
    let later = commit_deletes(
        &lake,
        "db.events",
        vec![(
            &first("alpha"),
            Del::EqOn {
                fields: vec![("id", 1)],
                columns: vec![Arc::new(Int64Array::from(vec![4, 5004]))],
                only: None,
            },
        )],
    )
    .await;
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let mut all: Vec<String> = deletes.iter().chain(&later).cloned().collect();
    all.sort();
    assert_eq!(live_deletes(&t).await, all);

    let sel = compact::select(&t, None, &params(0)).await.unwrap();
    assert!(sel.skipped.is_empty(), "{:?}", sel.skipped);
    assert_eq!(sel.groups.len(), 4);
    for g in &sel.groups {
        let files = if g.stats.partition.contains("alpha") {
            2
        } else {
            1
        };
        assert_eq!(
            (
                g.input_files(),
                g.equality_files_applied(),
                g.equality_files_dropped()
            ),
            (5, files, files),
            "{}",
            g.stats.partition
        );
    }
    let r = compact::compact(&lake, &t, None, &params(0), None)
        .await
        .unwrap();
    // alpha 0, 40, 4 and 5004; beta's 10 rows of appends 1 and 2; delta 3
    // and 43.
    assert_eq!(r.rows_equality_deleted, 4 + 10 + 2, "{r:?}");
    assert_eq!(r.delete_files_removed, 5);
    assert_eq!(r.rows, 80 + 20 - 16);
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    assert!(live_deletes(&t).await.is_empty());
    // What pyiceberg reads: every id but the deleted ones.
    let gone: Vec<i64> = [0, 40, 4, 5004, 3, 43]
        .into_iter()
        .chain((0..40).filter(|i| i % 4 == 1))
        .collect();
    let want: Vec<i64> = (0..80)
        .chain(5000..5020)
        .filter(|i| !gone.contains(i))
        .collect();
    assert_eq!(pyice(&["ids", &w, "events"]), serde_json::json!(want));
    let after = pyice(&["inspect", &w, "events"]);
    assert_eq!(after["operation"], "replace");
    assert_eq!(after["rows"], want.len());
}

/// The entries a compaction carries over keep their column statistics
/// (scan planning prunes with them) though the pick reads manifests
/// without them; the entries it marks deleted are written without.
#[tokio::test]
async fn carried_over_entries_keep_their_column_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    // Each append's manifest lists one file of each of four partitions.
    pyice(&["make", &w, "events", "4", "20"]);
    let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let p = Params {
        max_partitions: Some(1),
        ..params(0)
    };
    let r = compact::compact(&lake, &t, None, &p, None).await.unwrap();
    assert_eq!((r.partitions, r.files_removed), (1, 4));
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let cur = t.metadata().current_snapshot().unwrap().clone();
    let (mut existing, mut deleted) = (0, 0);
    for mf in t.manifest_list_reader(&cur).load().await.unwrap().entries() {
        // The crate's own reader.
        for e in mf.load_manifest(t.file_io()).await.unwrap().entries() {
            let f = e.data_file();
            match e.status() {
                iceberg::spec::ManifestStatus::Existing => {
                    existing += 1;
                    assert!(
                        !f.lower_bounds().is_empty()
                            && !f.upper_bounds().is_empty()
                            && !f.value_counts().is_empty()
                            && !f.column_sizes().is_empty(),
                        "{f:?}"
                    );
                }
                iceberg::spec::ManifestStatus::Deleted => {
                    deleted += 1;
                    assert!(f.record_count() > 0 && f.file_size_in_bytes() > 0);
                }
                iceberg::spec::ManifestStatus::Added => {}
            }
        }
    }
    assert_eq!((existing, deleted), (12, 4));
    let after = pyice(&["inspect", &w, "events"]);
    assert_eq!(
        (after["rows"].as_u64(), after["files"].as_u64()),
        (Some(80), Some(13))
    );
}

/// A position delete file as Iceberg Java writes it when it keeps the
/// deleted rows (the optional `row` struct column) is read and applied
/// like one without, and dropped with the files it covered.
#[tokio::test]
async fn position_deletes_with_the_deleted_rows_column_as_java_writes_them_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    pyice(&["make", &w, "events", "4", "20"]);
    let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let alpha: Vec<String> = data_files(&t)
        .await
        .into_iter()
        .filter(|f| f.0.contains("category=alpha/"))
        .map(|f| f.0)
        .collect();
    let (a, b) = (id_at(&alpha[0], 1), id_at(&alpha[1], 2));
    commit_deletes(
        &lake,
        "db.events",
        vec![(
            &alpha[0],
            Del::PosRow {
                rows: vec![(alpha[0].clone(), 1, a), (alpha[1].clone(), 2, b)],
            },
        )],
    )
    .await;
    let before = ids(&w, "events");
    assert!(
        !before.contains(&a) && !before.contains(&b),
        "pyiceberg applies it"
    );
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let r = compact::compact(&lake, &t, None, &params(0), None)
        .await
        .unwrap();
    assert_eq!((r.rows_deleted, r.delete_files_removed), (2, 1), "{r:?}");
    assert_eq!(ids(&w, "events"), before);
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    assert!(live_deletes(&t).await.is_empty());
    assert_eq!(pyice(&["inspect", &w, "events"])["operation"], "replace");
}

/// Data committed while a compaction runs, with a sequence number below
/// an equality delete the compaction would drop (a concurrent rewrite
/// keeping its starting sequence number), aborts the commit: dropping the
/// delete would bring its rows back in that file.
#[tokio::test]
async fn old_sequence_data_committed_during_compaction_keeps_the_equality_delete() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    pyice(&["make", &w, "events", "4", "20"]);
    let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let alpha = data_files(&t)
        .await
        .into_iter()
        .find(|f| f.0.contains("category=alpha/"))
        .unwrap()
        .0;
    let deletes =
        commit_deletes(&lake, "db.events", vec![(&alpha, Del::Eq { ids: vec![0] })]).await;
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let (wh2, alpha2) = (wh.clone(), alpha.clone());
    let hook: compact::BeforeCommit = Arc::new(move |attempt| {
        let (wh, alpha) = (wh2.clone(), alpha2.clone());
        Box::pin(async move {
            if attempt == 0 {
                let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
                commit_deletes(&lake, "db.events", vec![(&alpha, Del::DataAt { seq: 1 })]).await;
            }
        })
    });
    let e = compact::compact(&lake, &t, None, &params(4), Some(hook))
        .await
        .unwrap_err();
    assert!(
        e.message.contains("a concurrent commit added data file")
            && e.message
                .contains("of sequence number 1 to compacted partition")
            && e.message
                .contains("below the equality delete (sequence number 5)")
            && e.message.contains("nothing was committed"),
        "{}",
        e.message
    );
    assert!(
        compact_files(&wh, "events").is_empty(),
        "no rewritten file left"
    );
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    assert_eq!(live_deletes(&t).await, deletes, "the delete is kept");
    // Without the concurrent commit, the same compaction drops it.
    let dir2 = tempfile::tempdir().unwrap();
    let wh2 = dir2.path().join("warehouse");
    pyice(&["make", &wh2.display().to_string(), "events", "4", "20"]);
    let lake2 = Lake::open("lake", &sqlite_lake(&wh2)).await.unwrap();
    let t2 = lake2
        .load(&lake::ident("db.events").unwrap())
        .await
        .unwrap();
    let alpha = data_files(&t2)
        .await
        .into_iter()
        .find(|f| f.0.contains("category=alpha/"))
        .unwrap()
        .0;
    commit_deletes(
        &lake2,
        "db.events",
        vec![(&alpha, Del::Eq { ids: vec![0] })],
    )
    .await;
    let t2 = lake2
        .load(&lake::ident("db.events").unwrap())
        .await
        .unwrap();
    let r = compact::compact(&lake2, &t2, None, &params(4), None)
        .await
        .unwrap();
    assert_eq!((r.rows_equality_deleted, r.delete_files_removed), (1, 1));
}

/// An equality delete by a floating-point column (the spec forbids them)
/// or whose file cannot be read leaves its partition alone, with the
/// reason; so do keys that would outgrow the rewrite's memory budget.
#[tokio::test]
async fn equality_deletes_that_cannot_be_applied_skip_the_partition_with_the_reason() {
    use arrow_array::{ArrayRef, Float64Array, Int64Array};
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    pyice(&["make", &w, "events", "4", "20"]);
    let lake = Lake::open("lake", &sqlite_lake(&wh)).await.unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let files = data_files(&t).await;
    let first = |cat: &str| {
        files
            .iter()
            .find(|f| f.0.contains(&format!("category={cat}/")))
            .unwrap()
            .0
            .clone()
    };
    let deletes = commit_deletes(
        &lake,
        "db.events",
        vec![
            (
                &first("alpha"),
                Del::EqOn {
                    fields: vec![("value", 3)],
                    columns: vec![Arc::new(Float64Array::from(vec![0.5])) as ArrayRef],
                    only: None,
                },
            ),
            (&first("beta"), Del::Eq { ids: vec![1] }),
            // delta and gamma: 200 keys each (no row has them), which fit
            // the budget below one at a time but not together.
            (
                &first("delta"),
                Del::EqOn {
                    fields: vec![("id", 1)],
                    columns: vec![
                        Arc::new(Int64Array::from_iter_values(100_000..100_200)) as ArrayRef
                    ],
                    only: None,
                },
            ),
            (
                &first("gamma"),
                Del::EqOn {
                    fields: vec![("id", 1)],
                    columns: vec![
                        Arc::new(Int64Array::from_iter_values(200_000..200_200)) as ArrayRef
                    ],
                    only: None,
                },
            ),
        ],
    )
    .await;
    std::fs::remove_file(deletes[1].strip_prefix("file://").unwrap()).unwrap();
    let t = lake.load(&lake::ident("db.events").unwrap()).await.unwrap();
    let mut p = params(0);
    // 200 keys of 9 bytes and their overhead (48 bytes, as counted) are
    // 11.1 KiB: one partition's fit 16 KiB, two do not (the partitions are
    // picked in order, delta before gamma).
    p.max_bytes_in_flight = 16 << 10;
    let sel = compact::select(&t, None, &p).await.unwrap();
    let reason = |name: &str| {
        sel.skipped
            .iter()
            .find(|s| s.0.contains(name))
            .map(|s| s.1.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        reason("alpha"),
        format!("equality delete file {} deletes by the floating-point column value (the spec allows no float or double delete column), so the partition is left as it is", deletes[0])
    );
    let b = reason("beta");
    assert!(
        b.starts_with(&format!(
            "equality delete file {} cannot be read",
            deletes[1]
        )) && b.ends_with("which rows it deletes is unknown, so the partition is left as it is"),
        "{b}"
    );
    assert_eq!(
        reason("gamma"),
        "its 1 equality delete file(s) hold more distinct keys than fit the rewrite's memory budget (maxBytesInFlight 16.0 KiB, of which other partitions' equality deletes hold 11.1 KiB; left for the next run), so the partition is left as it is"
    );
    // delta's keys fit: it is picked, its delete applied.
    assert_eq!(sel.groups.len(), 1);
    assert!(sel.groups[0].stats.partition.contains("delta"));
    assert_eq!(sel.groups[0].equality_files_applied(), 1);
    // With 8 KiB, delta's keys alone do not fit.
    p.max_bytes_in_flight = 8 << 10;
    let sel = compact::select(&t, None, &p).await.unwrap();
    let d = sel
        .skipped
        .iter()
        .find(|s| s.0.contains("delta"))
        .map(|s| s.1.clone())
        .unwrap_or_default();
    assert_eq!(
        d,
        "its 1 equality delete file(s) hold more distinct keys than fit the rewrite's memory budget (maxBytesInFlight 8.0 KiB), so the partition is left as it is"
    );
    assert!(sel.groups.is_empty());
}

/// The agent has no S3 keys of its own and the environment none; the REST
/// catalog, asked with X-Iceberg-Access-Delegation, vends the table's keys
/// in its LoadTableResult config. With the S3 server checking every
/// signature, the plan reads the table's metadata and manifests signed
/// with the vended keys (a wrong secret is refused, so nothing else could
/// sign them). moto also refuses the signature of opendal's ranged GETs
/// (the data files' footers) and of any ListObjectsV2, even with the right
/// keys, so the rewrite itself runs with the check off.
#[tokio::test]
async fn a_rest_catalogs_vended_credentials_are_what_the_agent_signs_its_s3_reads_with() {
    let mut moto = tokio::task::spawn_blocking(Moto::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path(), "");
    let wh = dir.path().join("warehouse");
    let w = wh.display().to_string();
    let keys = pyice_env(&moto.env(), &["iam-keys", "lake-writer"]);
    moto.key_id = keys["id"].as_str().unwrap().to_string();
    moto.secret = keys["secret"].as_str().unwrap().to_string();
    let made = pyice_blocking(moto.env_owned(), &["make", &w, "events", "10", "10"]).await;
    assert_eq!(made["files"], 40);
    let metadata = made["metadata"]
        .as_str()
        .unwrap()
        .trim_start_matches("s3://")
        .to_string();

    let vend = serde_json::json!({
        "s3.access-key-id": moto.key_id,
        "s3.secret-access-key": moto.secret,
    })
    .to_string();
    let mut rest_env = moto.env();
    rest_env.push(("REST_CATALOG_VEND", &vend));
    let rest = RestCatalog::start(&wh, &rest_env);
    std::fs::write(
        &cfg,
        format!(
            "backends:\n  iceberg:\n    lake: {{ uri: \"{}\", s3: {{ endpoint: \"{}\", region: us-east-1, pathStyle: true }} }}\n",
            rest.url, moto.endpoint
        ),
    )
    .unwrap();
    let run = |extra: &'static [&'static str]| {
        let dir = dir.path().to_path_buf();
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_remediate"))
                .current_dir(&dir)
                .args(["run", "--config"])
                .arg(&cfg)
                .args(["--alert", "alert.json", "--audit", "audit.jsonl"])
                .args(extra)
                // No credentials but the vended ones, and no instance metadata.
                .env_remove("AWS_ACCESS_KEY_ID")
                .env_remove("AWS_SECRET_ACCESS_KEY")
                .env_remove("AWS_SESSION_TOKEN")
                .env_remove("AWS_PROFILE")
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("none"))
                .env("AWS_CONFIG_FILE", dir.join("none"))
                .output()
                .unwrap();
            (
                out.status.code(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        })
    };

    moto.check_signatures(true);
    // Signed with the writer's keys: read; with a wrong secret: refused.
    let ok = pyice_blocking(moto.env_owned(), &["s3-get-status", &metadata]).await;
    assert_eq!(ok["status"], 200);
    let bad = pyice_blocking(
        moto.env_owned_with(&[("PYICE_S3_SECRET", "not-the-secret")]),
        &["s3-get-status", &metadata],
    )
    .await;
    assert_eq!(bad["status"], 403, "the server must check signatures");
    let (code, out) = run(&["--dry-run"]).await.unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("table lake.db.events: 40 data files, 40 small; compact 4 partition(s):"),
        "{out}"
    );
    let log = std::fs::read_to_string(rest.log.path()).unwrap();
    assert!(
        log.contains("X-Iceberg-Access-Delegation: vended-credentials"),
        "{log}"
    );

    moto.check_signatures(false);
    let (code, out) = run(&[]).await.unwrap();
    assert_eq!(code, Some(0), "{out}");
    let after = pyice_blocking(moto.env_owned(), &["inspect", &w, "events"]).await;
    assert_eq!(after["checksum"], made["checksum"]);
    assert_eq!(after["files"], 4);
    assert_eq!(after["operation"], "replace");
}
