//! postgres.connections.recycle against a real PostgreSQL server (Debian
//! `postgresql`), initialised in a temp dir and run as the non-root
//! `postgres` user on a random loopback port with a small max_connections.
//! The incident is reproduced: leaked idle sessions hold every slot and a
//! new connection fails with "too many clients"; the playbook runs through
//! the CLI; a new connection then succeeds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;

use common::pg::Server;

fn write_setup(dir: &Path, port: u16) -> PathBuf {
    std::fs::create_dir_all(dir.join("playbooks")).unwrap();
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("playbooks/recycle.yaml"),
        r#"apiVersion: remediate/v1
kind: Playbook
metadata: { name: recycle }
spec:
  triggers: [{ alert: ['alertname="PostgresTooManyConnections"'] }]
  target: { kind: postgres.instance, name: "{{ labels.instance }}" }
  steps:
    - action: postgres.connections.recycle
      with:
        connection: main
        states: [idle]
        minStateAge: 1s
        keepNewestPerApplication: 1
        exclude: { applicationNames: [keep-me] }
  verify: { timeout: 10s }
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
            "backends:\n  postgres:\n    main: {{ dsn: \"host=127.0.0.1 port={port} user=remediate dbname=postgres sslmode=disable\", passwordEnv: REMEDIATE_TEST_PG_PASSWORD }}\n"
        ),
    )
    .unwrap();
    cfg
}

fn alert(dir: &Path) -> PathBuf {
    let p = dir.join("alert.json");
    std::fs::write(
        &p,
        serde_json::to_vec(&serde_json::json!({
            "version": "4", "status": "firing", "receiver": "r", "groupLabels": {}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "", "groupKey": "{}", "truncatedAlerts": 0,
            "alerts": [{"status": "firing", "labels": {"alertname": "PostgresTooManyConnections", "instance": "db-1"},
                "annotations": {}, "startsAt": "2026-11-25T12:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "", "fingerprint": ""}]
        }))
        .unwrap(),
    )
    .unwrap();
    p
}

fn cli(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_remediate"))
        .current_dir(dir)
        .args(args)
        .env("REMEDIATE_TEST_PG_PASSWORD", "not-needed-with-trust")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Client sessions the server has now.
async fn client_sessions(su: &tokio_postgres::Client) -> i64 {
    su.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Waits (up to 10 s) until at most `n` client sessions remain: a closed
/// session's slot frees only once its backend process has exited, which
/// lags the client's disconnect on a loaded machine.
async fn settle(su: &tokio_postgres::Client, n: i64) {
    for _ in 0..100 {
        if client_sessions(su).await <= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "sessions did not drop to {n}: {}",
        client_sessions(su).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaked_idle_sessions_are_recycled_through_the_cli_and_protected_ones_survive() {
    let s = Server::start(14);
    let admin = s.connect("postgres", "admin").await.unwrap();
    admin
        .batch_execute("CREATE ROLE app LOGIN; CREATE ROLE remediate LOGIN; GRANT pg_signal_backend TO remediate; GRANT pg_read_all_stats TO remediate;")
        .await
        .unwrap();
    // Protected: an idle superuser session and an excluded application.
    let su = s.connect("postgres", "psql").await.unwrap();
    let keep = s.connect("app", "keep-me").await.unwrap();
    // The leak: Airflow workers that exited without closing their pool.
    let mut leaked = Vec::new();
    let err = loop {
        match s.connect("app", "airflow-worker").await {
            Ok(c) => leaked.push(c),
            Err(e) => {
                break e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string())
            }
        }
        assert!(leaked.len() < 50, "max_connections did not bite");
    };
    assert!(
        err.contains("too many clients already")
            || err.contains("remaining connection slots are reserved"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Free one slot for the agent's own session (an operator would reserve
    // one for it with a connection limit or a reserved role).
    let before = client_sessions(&su).await;
    drop(leaked.pop());
    settle(&su, before - 1).await;

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_setup(dir.path(), s.port);
    let alert = alert(dir.path());
    let a = alert.display().to_string();
    let c = cfg.display().to_string();
    // Dry-run: lists exactly the sessions it would terminate.
    let (code, out, err) = cli(
        dir.path(),
        &[
            "run",
            "--dry-run",
            "--config",
            &c,
            "--alert",
            &a,
            "--audit",
            "dry.jsonl",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let expected = leaked.len() - 1; // keepNewestPerApplication: 1
    assert!(
        out.contains(&format!("terminate {expected} session(s):")),
        "{out}"
    );
    assert!(
        !out.contains("keep-me") && !out.contains("postgres/psql"),
        "{out}"
    );
    let count = su
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'airflow-worker'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(count as usize, leaked.len(), "the dry-run changed nothing");
    // The dry-run's own session must be gone before the real run needs
    // the one free slot.
    settle(&su, before - 1).await;

    let (code, out, err) = cli(
        dir.path(),
        &[
            "run",
            "--config",
            &c,
            "--alert",
            &a,
            "--audit",
            "audit.jsonl",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let recs = remediate::audit::read(&dir.path().join("audit.jsonl"))
        .unwrap()
        .records;
    let applied = recs
        .iter()
        .find(|r| r.phase == remediate::audit::Phase::Applied)
        .expect("applied");
    assert!(
        applied.outcome.starts_with(&format!("terminated {expected} of {expected} planned session(s) ({expected} app/airflow-worker)")),
        "{}",
        applied.outcome
    );
    assert!(recs
        .iter()
        .any(|r| r.phase == remediate::audit::Phase::Verified));
    // The evidence on-call would look up: connections against
    // max_connections, whose sessions went, and the oldest idle one.
    let ev = &applied.evidence;
    assert!(
        ev.get("connections")
            .is_some_and(|c| c.ends_with("(max_connections)")),
        "{ev:?}"
    );
    assert!(
        ev.get("sessions to terminate")
            .is_some_and(|c| c.starts_with(&format!("{expected} app/airflow-worker on "))),
        "{ev:?}"
    );
    assert!(ev.contains_key("oldest idle"), "{ev:?}");
    assert_eq!(
        ev.get("terminated by user/application").map(String::as_str),
        Some(format!("{expected} app/airflow-worker").as_str()),
        "{ev:?}"
    );
    // The audit names pids, users, applications and ages, never query text.
    let line = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(
        !line.contains("SELECT") && !line.contains("query"),
        "no query text in the audit"
    );
    // The platform breathes again; the protected sessions are alive.
    let probe = s
        .connect("app", "probe")
        .await
        .expect("a new connection succeeds");
    probe.simple_query("SELECT 1").await.unwrap();
    su.simple_query("SELECT 1")
        .await
        .expect("the superuser session survived");
    keep.simple_query("SELECT 1")
        .await
        .expect("the excluded application survived");
    let count = su
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'airflow-worker'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(count, 1, "the newest airflow-worker session is kept");
    drop(admin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_away_fails_the_run_cleanly_and_it_is_audited() {
    let s = Server::start(20);
    let admin = s.connect("postgres", "admin").await.unwrap();
    admin
        .batch_execute("CREATE ROLE remediate LOGIN; GRANT pg_signal_backend TO remediate;")
        .await
        .unwrap();
    drop(admin);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_setup(dir.path(), s.port);
    let alert = alert(dir.path());
    s.ctl("stop");
    let (code, out, err) = cli(
        dir.path(),
        &[
            "run",
            "--config",
            &cfg.display().to_string(),
            "--alert",
            &alert.display().to_string(),
            "--audit",
            "audit.jsonl",
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    let recs = remediate::audit::read(&dir.path().join("audit.jsonl"))
        .unwrap()
        .records;
    let failed = recs
        .iter()
        .find(|r| r.phase == remediate::audit::Phase::Failed)
        .expect("a failed record");
    assert!(
        failed.outcome.starts_with("plan failed: connect to main:"),
        "{}",
        failed.outcome
    );
    assert!(
        !failed.outcome.contains("not-needed-with-trust"),
        "the password is never audited"
    );
    s.ctl("start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_cannot_see_other_sessions_is_told_what_to_grant() {
    let s = Server::start(20);
    let admin = s.connect("postgres", "admin").await.unwrap();
    admin.batch_execute("CREATE ROLE app LOGIN; CREATE ROLE remediate LOGIN; GRANT pg_signal_backend TO remediate;").await.unwrap();
    let _idle = s.connect("app", "airflow-worker").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_setup(dir.path(), s.port);
    let alert = alert(dir.path());
    let (code, out, err) = cli(
        dir.path(),
        &[
            "run",
            "--config",
            &cfg.display().to_string(),
            "--alert",
            &alert.display().to_string(),
            "--audit",
            "audit.jsonl",
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    let recs = remediate::audit::read(&dir.path().join("audit.jsonl"))
        .unwrap()
        .records;
    let failed = recs
        .iter()
        .find(|r| r.phase == remediate::audit::Phase::Failed)
        .unwrap();
    assert!(
        failed
            .outcome
            .contains("GRANT pg_monitor (or pg_read_all_stats) and pg_signal_backend"),
        "{}",
        failed.outcome
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_plan_and_apply_terminates_nothing_twice_and_a_stop_fails_retryably() {
    use remediate::drivers::{Registry, Request, Verdict};
    let s = Server::start(20);
    let admin = s.connect("postgres", "admin").await.unwrap();
    admin
        .batch_execute("CREATE ROLE app LOGIN; CREATE ROLE remediate LOGIN; GRANT pg_signal_backend TO remediate; GRANT pg_read_all_stats TO remediate;")
        .await
        .unwrap();
    drop(admin);
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(s.connect("app", "airflow-worker").await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut servers = std::collections::BTreeMap::new();
    servers.insert(
        "main".to_string(),
        remediate::config::PostgresBackend {
            dsn: format!(
                "host=127.0.0.1 port={} user=remediate dbname=postgres sslmode=disable",
                s.port
            ),
            password_file: None,
            password_env: None,
        },
    );
    let mut reg = Registry::new();
    remediate::drivers::postgres::register(&mut reg, &servers);
    let a = reg.get("postgres.connections.recycle").unwrap();
    let req = Request {
        target: [
            ("kind".to_string(), "postgres.instance".to_string()),
            ("name".to_string(), "db".to_string()),
        ]
        .into_iter()
        .collect(),
        params: serde_json::json!({"connection": "main", "states": ["idle"], "minStateAge": "1s", "maxSessions": 10}),
        dry_run: false,
    };
    let plan = a.plan(&req).await.unwrap();
    assert!(
        plan.summary.contains("terminate 3 session(s)"),
        "{}",
        plan.summary
    );
    // The server restarts under the action: the planned sessions are gone,
    // and the pids are not reused blindly (every condition is re-checked).
    s.ctl("restart");
    let out = a.apply(&req, &plan).await.unwrap();
    assert!(
        out.summary
            .starts_with("terminated 0 of 3 planned session(s)"),
        "{}",
        out.summary
    );
    assert!(matches!(
        a.verify(&req, &plan).await.unwrap(),
        Verdict::Verified(_)
    ));
    // Stopped under the action: a clear, retryable failure.
    s.ctl("stop");
    let err = a.apply(&req, &plan).await.unwrap_err();
    assert!(err.retryable, "{err}");
    assert!(err.message.starts_with("connect to main:"), "{err}");
    s.ctl("start");
}
