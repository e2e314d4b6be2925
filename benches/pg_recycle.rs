//! Recycle 500 idle sessions on a real PostgreSQL server: the time from the
//! plan's read of pg_stat_activity through pg_terminate_backend of all of
//! them to the verification. Budget: < 1 s.
//!
//! `cargo bench --bench pg_recycle` (needs Debian's postgresql and root, to
//! run the server as the postgres user, as the tests do).

use std::process::Command;
use std::time::{Duration, Instant};

use remediate::drivers::{Registry, Request, Verdict};

fn bin(name: &str) -> std::path::PathBuf {
    std::fs::read_dir("/usr/lib/postgresql")
        .expect("apt-get install postgresql")
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin").join(name))
        .find(|p| p.exists())
        .expect("postgresql server binaries")
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: usize = std::env::var("SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    assert!(Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir.path())
        .status()
        .unwrap()
        .success());
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        bin("initdb").as_os_str(),
        "-A".as_ref(),
        "trust".as_ref(),
        "-U".as_ref(),
        "postgres".as_ref(),
        "-D".as_ref(),
        data.as_os_str(),
    ]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        data.join("postgresql.auto.conf"),
        format!("listen_addresses = '127.0.0.1'\nport = {port}\nmax_connections = {}\nunix_socket_directories = '{}'\nfsync = off\n", n + 20, data.display()),
    )
    .unwrap();
    let log = dir.path().join("log");
    run(&[
        bin("pg_ctl").as_os_str(),
        "-w".as_ref(),
        "-D".as_ref(),
        data.as_os_str(),
        "-l".as_ref(),
        log.as_os_str(),
        "start".as_ref(),
    ]);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (elapsed, terminated, verdict) = rt.block_on(async {
        let connect = |user: &'static str| async move {
            let (c, conn) = tokio_postgres::connect(
                &format!("host=127.0.0.1 port={port} user={user} dbname=postgres application_name=airflow-worker"),
                tokio_postgres::NoTls,
            )
            .await
            .unwrap();
            tokio::spawn(async move {
                let _ = conn.await;
            });
            c
        };
        let admin = connect("postgres").await;
        admin.batch_execute("CREATE ROLE app LOGIN; CREATE ROLE remediate LOGIN; GRANT pg_signal_backend TO remediate; GRANT pg_read_all_stats TO remediate;").await.unwrap();
        let mut idle = Vec::with_capacity(n);
        for chunk in 0..n.div_ceil(50) {
            let futs: Vec<_> = (0..50.min(n - chunk * 50)).map(|_| tokio::spawn(connect("app"))).collect();
            for f in futs {
                idle.push(f.await.unwrap());
            }
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let mut servers = std::collections::BTreeMap::new();
        servers.insert(
            "main".to_string(),
            remediate::config::PostgresBackend {
                dsn: format!("host=127.0.0.1 port={port} user=remediate dbname=postgres sslmode=disable"),
                password_file: None,
                password_env: None,
            },
        );
        let mut reg = Registry::new();
        remediate::drivers::postgres::register(&mut reg, &servers);
        let a = reg.get("postgres.connections.recycle").unwrap();
        let req = Request {
            target: [("kind".to_string(), "postgres.instance".to_string()), ("name".to_string(), "db".to_string())].into_iter().collect(),
            params: serde_json::json!({"connection": "main", "states": ["idle"], "minStateAge": "1s", "maxSessions": n}),
            dry_run: false,
        };
        let t = Instant::now();
        let plan = a.plan(&req).await.unwrap();
        assert!(plan.summary.contains(&format!("terminate {n} session(s)")), "{}", &plan.summary[..200.min(plan.summary.len())]);
        let out = a.apply(&req, &plan).await.unwrap();
        let verdict = a.verify(&req, &plan).await.unwrap();
        let elapsed = t.elapsed();
        drop(idle);
        (elapsed, out.details["terminated"].as_array().map(Vec::len).unwrap_or(0), verdict)
    });
    run(&[
        bin("pg_ctl").as_os_str(),
        "-m".as_ref(),
        "immediate".as_ref(),
        "-D".as_ref(),
        data.as_os_str(),
        "stop".as_ref(),
    ]);
    assert!(matches!(verdict, Verdict::Verified(_)), "{verdict:?}");
    println!(
        "recycle {n} idle sessions: plan + terminate + verify in {:.1} ms ({terminated} terminated); budget < 1000 ms",
        elapsed.as_secs_f64() * 1e3
    );
}
