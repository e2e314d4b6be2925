//! The CLI as a user runs it: the real binary, real files, exact messages.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_remediate"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c.env_remove("REMEDIATE_PLAYBOOKS")
        .env_remove("REMEDIATE_POLICIES")
        .env_remove("REMEDIATE_AUDIT");
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run remediate")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn audit_lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

const POLICY: &str =
    "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec: {}\n";

const CRASHLOOP: &str = "examples/alerts/crashloop-firing.json";

#[test]
fn validate_accepts_the_bundled_playbooks_and_policies() {
    let out = run(&["validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.starts_with("ok: 10 playbooks (playbooks), 2 policies (policies), 2 schedule triggers"),
        "{s}"
    );
}

#[test]
fn validate_reports_every_error_at_once_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let pb = dir.path().join("pb");
    let pol = dir.path().join("pol");
    std::fs::create_dir_all(&pb).unwrap();
    std::fs::create_dir_all(&pol).unwrap();
    write(&pol, "default.yaml", POLICY);
    write(&pol, "bad.yaml", "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: bad }\nspec:\n  cooldown: 10 parsecs\n");
    write(
        &pb,
        "a-unknown-field.yaml",
        "apiVersion: remediate/v1\nkind: Playbook\nmetadata: { name: a }\nspec:\n  triggers: []\n  target: { kind: host }\n  steps: []\n  retries: 3\n",
    );
    write(
        &pb,
        "b-semantic.yaml",
        r#"apiVersion: remediate/v1
kind: Playbook
metadata: { name: b }
spec:
  triggers:
    - alert: ['alertname="X"', 'namespace=~"kube-(system"', 'job=']
    - schedule: "every night"
  target:
    kind: kubernetes.pod
    namespace: "{{ labels.namespace }}"
    name: "{{ values.pod }}"
  steps:
    - action: kubernetes.pod.restrat
    - action: kubernetes.pod.restart
      with: { mode: explode }
  policy: nope
"#,
    );
    write(
        &pb,
        "c-dup.yaml",
        "apiVersion: remediate/v1\nkind: Playbook\nmetadata: { name: b }\nspec:\n  triggers: [{ alert: ['alertname=\"Y\"'] }]\n  target: { kind: host, node: n }\n  steps: [{ action: docker.prune }]\n",
    );
    let out = run(&[
        "validate",
        "--playbooks",
        pb.to_str().unwrap(),
        "--policies",
        pol.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    let p = |f: &str| pb.join(f).display().to_string();
    let expected = [
        format!("{}:5:3: spec.cooldown: bad duration \"10 parsecs\"", pol.join("bad.yaml").display()),
        format!("{}:8:3: spec.retries: unknown field `retries`, expected one of `triggers`", p("a-unknown-field.yaml")),
        format!("{}:16:3: spec.policy: unknown policy \"nope\" (loaded: ", p("b-semantic.yaml")),
        format!("{}:6:32: spec.triggers[0].alert[1]: bad regular expression in matcher namespace", p("b-semantic.yaml")),
        format!("{}:6:61: spec.triggers[0].alert[2]: matcher value is not present: job=", p("b-semantic.yaml")),
        format!("{}:7:7: spec.triggers[1].schedule: bad cron \"every night\"", p("b-semantic.yaml")),
        format!("{}:10:5: spec.target.namespace: template variable labels.namespace is not set when the schedule trigger fires", p("b-semantic.yaml")),
        format!("{}:11:5: spec.target.name: unknown template variable values.pod: declare it under spec.values", p("b-semantic.yaml")),
        format!("{}:13:7: spec.steps[0].action: unknown action \"kubernetes.pod.restrat\": did you mean \"kubernetes.pod.restart\"?", p("b-semantic.yaml")),
        format!("{}:15:7: spec.steps[1].with: bad parameters for kubernetes.pod.restart: unknown variant `explode`, expected `evict` or `delete`", p("b-semantic.yaml")),
        format!("{}:3:13: metadata.name: duplicate playbook name \"b\": also defined in {}", p("c-dup.yaml"), p("b-semantic.yaml")),
    ];
    for e in &expected {
        assert!(
            err.lines().any(|l| l.starts_with(e.as_str())),
            "missing line starting with:\n{e}\n--- got:\n{err}"
        );
    }
    assert!(
        err.trim_end()
            .ends_with(&format!("{} errors", expected.len())),
        "{err}"
    );
}

#[test]
fn malformed_yaml_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "x.yaml",
        "apiVersion: remediate/v1\nkind: Playbook\nmetadata: { name: x\n",
    );
    let out = run(&["validate", "--playbooks", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!("{}:4:1: ", dir.path().join("x.yaml").display())),
        "{err}"
    );
}

#[test]
fn dry_run_prints_the_plan_and_appends_one_audit_record_per_decision() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let out = run(&[
        "run",
        "--dry-run",
        "--alert",
        CRASHLOOP,
        "--audit",
        audit.to_str().unwrap(),
        "--at",
        "2026-11-25T12:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.contains("k8s-crashloop-restart")
            && s.contains("pod etl/spark-driver-1")
            && s.contains("dry-run"),
        "{s}"
    );
    assert!(
        s.contains("1 event (0 resolved, 0 unmatched); 1 run: 0 execute (0 failed), 1 dry-run"),
        "{s}"
    );
    let recs = audit_lines(&audit);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    for field in [
        "ts",
        "id",
        "trigger",
        "playbook",
        "action",
        "target",
        "params",
        "decision",
        "reason",
        "dry_run",
        "phase",
        "outcome",
        "duration_ms",
        "node",
    ] {
        assert!(r.get(field).is_some(), "audit record lacks {field}: {r}");
    }
    assert_eq!(r["trigger"]["kind"], "alert");
    assert_eq!(r["trigger"]["alertname"], "KubePodCrashLooping");
    assert_eq!(r["trigger"]["fingerprint"], "878bb564defe5a42");
    assert_eq!(r["trigger"]["status"], "firing");
    assert_eq!(r["playbook"], "k8s-crashloop-restart");
    assert_eq!(r["action"], "kubernetes.pod.restart");
    assert_eq!(
        r["target"],
        serde_json::json!({"kind": "kubernetes.pod", "namespace": "etl", "name": "spark-driver-1"})
    );
    assert_eq!(r["params"]["mode"], "evict");
    assert_eq!(r["decision"], "dry-run");
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["phase"], "planned");
    assert!(
        r["outcome"]
            .as_str()
            .unwrap()
            .starts_with("would evict pod etl/spark-driver-1"),
        "{r}"
    );
}

#[test]
fn json_output_prints_exactly_the_records_appended() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let out = run(&[
        "run",
        "--dry-run",
        "--alert",
        CRASHLOOP,
        "--audit",
        audit.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let printed: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed, audit_lines(&audit));
    assert_eq!(printed.len(), 1);
}

#[test]
fn alert_from_stdin_is_read_like_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let mut child = bin()
        .args([
            "run",
            "--dry-run",
            "--alert",
            "-",
            "--audit",
            audit.to_str().unwrap(),
            "--output",
            "json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(CRASHLOOP)).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(audit_lines(&audit).len(), 1);
}

#[test]
fn resolved_alert_starts_nothing_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let out = run(&[
        "run",
        "--alert",
        "examples/alerts/crashloop-resolved.json",
        "--audit",
        audit.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let recs = audit_lines(&audit);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["decision"], "suppressed");
    assert_eq!(
        recs[0]["reason"],
        "alert resolved: resolved alerts start nothing"
    );
    assert_eq!(recs[0]["outcome"], "nothing done");
}

#[test]
fn an_alert_no_playbook_matches_is_a_normal_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let body = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(CRASHLOOP))
        .unwrap()
        .replace("KubePodCrashLooping", "SomethingElse");
    let alert = write(dir.path(), "other.json", &body);
    let out = run(&[
        "run",
        "--dry-run",
        "--alert",
        alert.to_str().unwrap(),
        "--audit",
        audit.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let s = text(&out.stdout);
    assert!(
        s.contains("no match") && s.contains("1 event (0 resolved, 1 unmatched); 0 runs"),
        "{s}"
    );
    assert!(audit_lines(&audit).is_empty());
}

#[test]
fn malformed_payload_exits_2_naming_file_and_position_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let bad = write(
        dir.path(),
        "bad.json",
        "{\"version\": \"4\",\n  \"status\": \"firing\",\n  \"alerts\": [}\n",
    );
    let out = run(&[
        "run",
        "--dry-run",
        "--alert",
        bad.to_str().unwrap(),
        "--audit",
        audit.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "{}: malformed Alertmanager payload at line 3 column 14",
            bad.display()
        )),
        "{err}"
    );
    assert!(
        !audit.exists(),
        "nothing may be recorded for rejected input"
    );
    let v3 = write(
        dir.path(),
        "v3.json",
        r#"{"version":"3","status":"firing","alerts":[]}"#,
    );
    let out = run(&[
        "run",
        "--dry-run",
        "--alert",
        v3.to_str().unwrap(),
        "--audit",
        audit.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr)
        .contains("unsupported Alertmanager webhook version \"3\": expected \"4\""));
}

#[test]
fn huge_payload_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // One body (an annotation of 17 MiB): payloads are read one at a time,
    // and no single one may be larger than 16 MiB.
    let big = dir.path().join("big.json");
    let body = format!(
        r#"{{"version":"4","status":"firing","alerts":[{{"status":"firing","labels":{{"alertname":"X"}},"annotations":{{"a":"{}"}}}}]}}"#,
        "x".repeat(17 << 20)
    );
    std::fs::write(&big, body).unwrap();
    let out = run(&[
        "run",
        "--dry-run",
        "--alert",
        big.to_str().unwrap(),
        "--audit",
        dir.path().join("a").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("larger than 16 MiB"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn executing_an_action_without_a_driver_fails_audited_and_the_limit_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let at = "2026-11-25T12:00:00Z";
    let out = run(&[
        "run",
        "--alert",
        CRASHLOOP,
        "--audit",
        audit.to_str().unwrap(),
        "--at",
        at,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("1 run(s) failed; see "),
        "{}",
        text(&out.stderr)
    );
    let recs = audit_lines(&audit);
    assert_eq!(
        recs[1]["outcome"],
        "no driver for action kubernetes.pod.restart in this build: the kubernetes backend is not available yet, nothing was changed"
    );
    let phases: Vec<&str> = recs.iter().map(|r| r["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, ["planned", "failed"]);
    assert_eq!(
        recs[0]["id"], recs[1]["id"],
        "phases of one step share its id"
    );
    assert_eq!(recs[0]["decision"], "execute");
    assert_eq!(recs[0]["dry_run"], false);

    // A second process reads the audit log: the cooldown still holds.
    let out = run(&[
        "run",
        "--alert",
        CRASHLOOP,
        "--audit",
        audit.to_str().unwrap(),
        "--at",
        "2026-11-25T12:05:00Z",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let recs = audit_lines(&audit);
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[2]["decision"], "suppressed");
    assert_eq!(
        recs[2]["reason"],
        "cooldown 10m, last 2026-11-25T12:00:00Z (allows again at 2026-11-25T12:10:00Z)"
    );
}

#[test]
fn manual_run_renders_values_and_rejects_unknown_or_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let a = audit.to_str().unwrap();
    let out = run(&[
        "run",
        "--dry-run",
        "--playbook",
        "nightly-iceberg-compaction",
        "--set",
        "table=sales.orders",
        "--audit",
        a,
        "--at",
        "2026-11-25T03:00:00Z",
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let recs = audit_lines(&audit);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["trigger"]["kind"], "manual");
    assert_eq!(
        recs[0]["target"],
        serde_json::json!({"kind": "iceberg.table", "catalog": "lake", "name": "sales.orders"})
    );
    assert_eq!(recs[0]["decision"], "dry-run");

    let out = run(&[
        "run",
        "--dry-run",
        "--playbook",
        "nightly-iceberg-compaction",
        "--set",
        "tabel=x",
        "--audit",
        a,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("playbook nightly-iceberg-compaction declares no value \"tabel\" (declared: catalog, table)"));
    let out = run(&[
        "run",
        "--dry-run",
        "--playbook",
        "nightly-iceberg-compaction",
        "--audit",
        a,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("value \"table\" of playbook nightly-iceberg-compaction is required: set it with --set table=..."));
    let out = run(&[
        "run",
        "--dry-run",
        "--playbook",
        "no-such-playbook",
        "--audit",
        a,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("unknown playbook \"no-such-playbook\""));
    assert_eq!(audit_lines(&audit).len(), 1, "rejected runs record nothing");
}

#[test]
fn maintenance_playbook_outside_its_window_is_suppressed_with_the_next_opening() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let out = run(&[
        "run",
        "--playbook",
        "nightly-disk-prune",
        "--audit",
        audit.to_str().unwrap(),
        "--at",
        "2026-11-25T12:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let recs = audit_lines(&audit);
    assert_eq!(recs.len(), 2, "one record per step");
    assert_eq!(
        recs[0]["reason"],
        "outside maintenance windows (next opens 2026-11-26T01:00:00Z)"
    );
}

#[test]
fn embedded_bundle_is_used_outside_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let alert = dir.path().join("a.json");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(CRASHLOOP),
        &alert,
    )
    .unwrap();
    let out = bin()
        .current_dir(dir.path())
        .args(["run", "--dry-run", "--alert", "a.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout)
        .contains("playbooks: 10 from embedded bundle; policies: 2 from embedded bundle"));
    assert_eq!(
        audit_lines(&dir.path().join(".remediate/audit.jsonl")).len(),
        1,
        "default audit path"
    );
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        vec!["--help"],
        vec!["validate", "--help"],
        vec!["run", "--help"],
        vec!["test", "--help"],
        vec!["schema", "--help"],
        vec!["actions", "--help"],
    ] {
        let out = run(&sub);
        assert_eq!(out.status.code(), Some(0), "{sub:?}");
        assert!(text(&out.stdout).contains("Usage: remediate"), "{sub:?}");
    }
    let out = run(&["run"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing --alert/--playbook is a usage error"
    );
}

#[test]
fn actions_lists_the_whole_catalogue() {
    let out = run(&["actions"]);
    assert_eq!(out.status.code(), Some(0));
    let s = text(&out.stdout);
    for a in remediate::drivers::CATALOG {
        assert!(s.contains(a.name), "{}", a.name);
    }
}

#[test]
fn bundled_playbook_tests_pass_and_cover_every_playbook() {
    let out = run(&["test"]);
    let s = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{s}{}", text(&out.stderr));
    assert!(s.trim_end().ends_with(" 0 failed"), "{s}");
    // Every bundled playbook has a test file beside it that names it.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks");
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap();
        if !name.ends_with(".yaml") || name.ends_with(".test.yaml") {
            continue;
        }
        let stem = name.trim_end_matches(".yaml");
        let test = dir.join(format!("{stem}.test.yaml"));
        let body = std::fs::read_to_string(&test)
            .unwrap_or_else(|_| panic!("{name} has no {stem}.test.yaml"));
        assert!(
            body.contains(&format!("playbook: {stem}")),
            "{stem}.test.yaml never expects playbook {stem}"
        );
    }
}

#[test]
fn failing_playbook_test_exits_1_and_says_what_differed() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "pb.yaml",
        "apiVersion: remediate/v1\nkind: Playbook\nmetadata: { name: pb }\nspec:\n  triggers: [{ alert: ['alertname=\"A\"'] }]\n  target: { kind: kubernetes.pod, namespace: \"{{ labels.namespace }}\", name: \"{{ labels.pod }}\" }\n  steps: [{ action: kubernetes.pod.restart }]\n",
    );
    write(
        dir.path(),
        "pb.test.yaml",
        "apiVersion: remediate/v1\nkind: PlaybookTest\nspec:\n  cases:\n    - name: wrong namespace expected\n      alert: { labels: { alertname: A, namespace: etl, pod: p } }\n      expect: [{ playbook: pb, decision: execute, target: { namespace: prod } }]\n    - name: right\n      alert: { labels: { alertname: A, namespace: etl, pod: p } }\n      expect: [{ playbook: pb, decision: execute, target: { namespace: etl } }]\n",
    );
    let pol = dir.path().join("pol");
    std::fs::create_dir(&pol).unwrap();
    write(&pol, "default.yaml", POLICY);
    let out = run(&[
        "test",
        dir.path().to_str().unwrap(),
        "--policies",
        pol.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let s = text(&out.stdout);
    assert!(
        s.contains(
            "wrong namespace expected:\n    pb: target.namespace: got Some(\"etl\"), want \"prod\""
        ),
        "{s}"
    );
    assert!(s.contains("2 cases: 1 passed, 1 failed"), "{s}");
}

#[test]
fn dry_run_over_repeated_alerts_is_as_limited_as_enforce_and_does_not_limit_a_later_real_run() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let one = |fp: &str, container: &str| {
        format!(
            r#"{{"status":"firing","labels":{{"alertname":"KubePodCrashLooping","namespace":"etl","pod":"spark-driver-1","container":"{container}"}},"annotations":{{}},"startsAt":"2026-11-25T11:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"{fp}"}}"#
        )
    };
    let body = format!(
        r#"{{"receiver":"agent","status":"firing","alerts":[{},{}],"groupLabels":{{}},"commonLabels":{{}},"commonAnnotations":{{}},"externalURL":"","version":"4","groupKey":"{{}}","truncatedAlerts":0}}"#,
        one("0000000000000001", "driver"),
        one("0000000000000002", "sidecar")
    );
    let alert = write(dir.path(), "two.json", &body);
    let at = "2026-11-25T12:00:00Z";
    let out = run(&[
        "run",
        "--dry-run",
        "--alert",
        alert.to_str().unwrap(),
        "--audit",
        audit.to_str().unwrap(),
        "--at",
        at,
    ]);
    assert_eq!(out.status.code(), Some(0));
    let recs = audit_lines(&audit);
    let decisions: Vec<&str> = recs
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert_eq!(
        decisions,
        ["dry-run", "suppressed"],
        "the second restart of the same pod meets the cooldown"
    );
    assert!(
        recs[1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("cooldown 10m"),
        "{}",
        recs[1]
    );

    // The what-if left no trace in the limits: a real run right after is not in cooldown.
    let out = run(&[
        "run",
        "--alert",
        CRASHLOOP,
        "--audit",
        audit.to_str().unwrap(),
        "--at",
        at,
    ]);
    let recs = audit_lines(&audit);
    assert_eq!(recs[2]["decision"], "execute", "{}", text(&out.stdout));
}

/// Two episodes of one crash-looping pod in one payload.
fn two_episodes() -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(include_str!("../examples/alerts/crashloop-firing.json")).unwrap();
    let mut second = v["alerts"][0].clone();
    second["startsAt"] = serde_json::json!("2026-11-25T11:30:00Z");
    v["alerts"].as_array_mut().unwrap().push(second);
    serde_json::to_string(&v).unwrap()
}

#[test]
fn replay_shows_what_enforce_would_have_done_with_a_shadow_history() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pb = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/k8s-crashloop-restart.yaml"),
    )
    .unwrap();
    for sub in ["shadow", "enforce", "policies"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    write(
        &d.join("shadow"),
        "pb.yaml",
        &pb.replace("mode: enforce", "mode: dry-run"),
    );
    write(&d.join("enforce"), "pb.yaml", &pb);
    write(
        &d.join("policies"),
        "default.yaml",
        "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec: { cooldown: 10m }\n",
    );
    let alerts = write(d, "alerts.json", &two_episodes());
    let audit = d.join("audit.jsonl");
    let s = |p: &Path| p.display().to_string();
    let out = run(&[
        "run",
        "--alert",
        &s(&alerts),
        "--playbooks",
        &s(&d.join("shadow")),
        "--policies",
        &s(&d.join("policies")),
        "--audit",
        &s(&audit),
        "--at",
        "2026-11-25T12:00:00Z",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Shadow history: the first would have acted (dry-run), the second was
    // held by the cooldown.
    let recs = audit_lines(&audit);
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["decision"], "dry-run");
    assert_eq!(recs[1]["decision"], "suppressed");
    assert_eq!(
        recs[0]["trigger"]["labels"]["pod"], "spark-driver-1",
        "the audit keeps the event"
    );

    // The same rules reproduce every recorded decision.
    let out = run(&[
        "replay",
        "--audit",
        &s(&audit),
        "--playbooks",
        &s(&d.join("shadow")),
        "--policies",
        &s(&d.join("policies")),
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "two rows and the summary");
    assert_eq!(lines[2]["summary"]["changed"], 0, "{lines:#?}");

    // Promoted to enforce: the first now executes, the second is unchanged.
    let out = run(&[
        "replay",
        "--audit",
        &s(&audit),
        "--playbooks",
        &s(&d.join("enforce")),
        "--policies",
        &s(&d.join("policies")),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let o = text(&out.stdout);
    assert!(o.contains("nothing is executed or recorded"), "{o}");
    assert!(o.contains("2 event(s), 2 decision(s): now 1 execute, 1 suppressed; 1 changed (1 dry-run -> execute)"), "{o}");
    assert!(
        o.contains("[1] now: all gates passed")
            && o.contains("then: playbook k8s-crashloop-restart is in dry-run (shadow) mode"),
        "{o}"
    );
    // Replay never writes the audit.
    assert_eq!(audit_lines(&audit).len(), 2);

    // --alerts: new payloads decided now against the recorded history.
    let out = run(&[
        "replay",
        "--alerts",
        &s(&alerts),
        "--audit",
        &s(&audit),
        "--at",
        "2026-11-25T12:01:00Z",
        "--playbooks",
        &s(&d.join("enforce")),
        "--policies",
        &s(&d.join("policies")),
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Shadow records do not count as executions: the first executes, the
    // second is held by the cooldown the first starts.
    assert_eq!(rows[0]["now"], "execute");
    assert_eq!(rows[1]["now"], "suppressed");
    assert_eq!(rows[0]["then"], "-");

    // Bad input is exit 2 with the file named.
    let bad = write(d, "bad.json", "{\"version\": \"4\", \"alerts\": [");
    let out = run(&["replay", "--alerts", &s(&bad)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("bad.json: payload 1:"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["replay", "--audit", &s(&d.join("missing.jsonl"))]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("missing.jsonl: no such audit log"));
}

#[test]
fn a_damaged_audit_log_blocks_execution_but_not_a_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let a = audit.display().to_string();
    let alert = "examples/alerts/crashloop-firing.json";
    let at = ["--at", "2026-11-25T12:00:00Z"];
    assert!(run(&[
        &["run", "--dry-run", "--alert", alert, "--audit", &a][..],
        &at[..]
    ]
    .concat())
    .status
    .success());
    // Corrupt a line in the middle (not a torn final write), then append a good one.
    let good = std::fs::read_to_string(&audit).unwrap();
    std::fs::write(&audit, format!("{good}{{not json\n{good}")).unwrap();
    let out = run(&[&["run", "--alert", alert, "--audit", &a][..], &at[..]].concat());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "audit log {a} has unreadable line(s) {a}:2 that are not a torn final write"
        )),
        "{err}"
    );
    assert!(
        err.contains("Nothing is executed until this is fixed"),
        "{err}"
    );
    // A what-if still works, and says what it skipped.
    let out = run(&[
        &["run", "--dry-run", "--alert", alert, "--audit", &a][..],
        &at[..],
    ]
    .concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("skipped unreadable line(s) [2]"));
}

#[test]
fn a_grafana_notification_file_is_planned_like_an_alertmanager_one_and_its_test_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let out = run(&[
        "run",
        "--dry-run",
        "--alert",
        "examples/alerts/grafana-firing.json",
        "--audit",
        audit.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let recs = audit_lines(&audit);
    let playbooks: Vec<&str> = recs
        .iter()
        .map(|r| r["playbook"].as_str().unwrap())
        .collect();
    assert_eq!(
        playbooks,
        ["postgres-idle-connections-recycle", "k8s-crashloop-restart"],
        "{recs:#?}"
    );
    assert_eq!(recs[0]["trigger"]["values"]["B"], "144.0");

    let test = dir.path().join("test-audit.jsonl");
    let out = run(&[
        "run",
        "--dry-run",
        "--alert",
        "examples/alerts/grafana-test.json",
        "--audit",
        test.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr)
            .contains("1 test notification(s) (Grafana's contact-point test): not decided"),
        "{}",
        text(&out.stderr)
    );
    assert!(audit_lines(&test).is_empty());
}

/// A run the engine suppresses after the gate (here: a node-scoped action
/// for another node) is counted as suppressed in the summary, not execute.
#[test]
fn the_summary_counts_a_run_suppressed_after_the_gate_as_suppressed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("playbooks")).unwrap();
    std::fs::create_dir_all(d.join("policies")).unwrap();
    write(
        d,
        "playbooks/elsewhere.yaml",
        "apiVersion: remediate/v1\nkind: Playbook\nmetadata: { name: elsewhere }\nspec:\n  triggers: [{ alert: ['alertname=\"Elsewhere\"'] }]\n  target: { kind: host, node: node-b }\n  steps:\n    - action: host.command\n      with: { argv: [\"true\"] }\n",
    );
    write(
        d,
        "policies/default.yaml",
        "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec: {}\n",
    );
    write(
        d,
        "alert.json",
        r#"{"version":"4","status":"firing","receiver":"r","groupKey":"g","alerts":[{"status":"firing","labels":{"alertname":"Elsewhere"},"annotations":{},"startsAt":"2026-11-25T10:00:00Z","fingerprint":"f1"}]}"#,
    );
    let out = run(&[
        "run",
        "--alert",
        d.join("alert.json").to_str().unwrap(),
        "--playbooks",
        d.join("playbooks").to_str().unwrap(),
        "--policies",
        d.join("policies").to_str().unwrap(),
        "--audit",
        d.join("audit.jsonl").to_str().unwrap(),
        "--node",
        "node-a",
    ]);
    let s = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{s}{}", text(&out.stderr));
    assert!(s.contains("host.command runs on node node-b"), "{s}");
    assert!(
        s.contains("1 run: 0 execute (0 failed), 0 dry-run, 1 suppressed"),
        "{s}"
    );
}
