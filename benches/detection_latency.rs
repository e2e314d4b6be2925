//! Detection and repair latency end to end, on real components (issue 19's
//! "Measured"): the figures in docs/benchmarks.md.
//!
//! 1. **Docker OOM kill → action → verified**: a container the kernel
//!    OOM-kills (8 MiB limit, 64 MiB allocated), seen by the Docker trigger
//!    on the machine's engine, restarted by the bundled
//!    `docker-container-oom-restart` playbook. The kill time is the
//!    engine's `State.FinishedAt`; "action" is the audit's `planned`
//!    record (written after the plan read the container and before the
//!    restart), "verified" the `verified` record.
//! 2. **Alertmanager webhook → first action**: from posting a notification
//!    (settle 0) to the run's `planned` record, for a `host.command` step.
//!
//! Run with `cargo bench --bench detection_latency`
//! (`REMEDIATE_BENCH_ROUNDS`, default 5 OOM kills and 20 webhooks).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use remediate::audit::{Phase, Record};

use common::docker::{busybox, docker, unique, Cleanup};
use common::{alert_body, repo, start_agent, TOKEN};

fn rounds(default: usize) -> usize {
    std::env::var("REMEDIATE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn audit(dir: &std::path::Path) -> Vec<Record> {
    remediate::audit::read(&dir.join("state/audit.jsonl"))
        .map(|r| r.records)
        .unwrap_or_default()
}

fn wait<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn ms(d: chrono::Duration) -> f64 {
    d.num_microseconds().unwrap_or(0) as f64 / 1000.0
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = v[v.len() / 2];
    let max = v[v.len() - 1];
    let min = v[0];
    println!(
        "{name:<44} n={:<3} min {min:>8.1} ms  median {med:>8.1} ms  max {max:>8.1} ms",
        v.len()
    );
}

fn docker_oom(rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("playbooks")).unwrap();
    std::fs::create_dir_all(d.join("policies")).unwrap();
    std::fs::copy(
        repo("playbooks/docker-container-oom-restart.yaml"),
        d.join("playbooks/docker-container-oom-restart.yaml"),
    )
    .unwrap();
    std::fs::write(
        d.join("policies/default.yaml"),
        "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec: { cooldown: 0s }\n",
    )
    .unwrap();
    let run = unique("bench-oom");
    let _agent = rt.block_on(async {
        start_agent(d, &format!("node: bench-node\nlisten: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: {{ enabled: false }}\nbackends: {{ docker: {{}} }}\ntriggers: {{ docker: {{ enabled: true, labels: [remediate-bench-run={run}] }} }}\n"))
    });
    let (mut to_action, mut to_verified) = (Vec::new(), Vec::new());
    for i in 0..rounds(5) {
        let name = format!("{run}-{i}");
        let _c = Cleanup(vec![vec!["rm".into(), "-f".into(), name.clone()]]);
        docker(&[
            "run", "-d", "--name", &name, "--label", "remediate-test=1",
            "--label", &format!("remediate-bench-run={run}"), "--memory", "8m", "--memory-swap", "8m",
            busybox(), "sh", "-c",
            "if [ ! -f /tmp/ran ]; then touch /tmp/ran; head -c 67108864 /dev/zero | tail; exit 137; fi; sleep 3600",
        ]);
        let recs = wait(Duration::from_secs(60), || {
            let recs: Vec<Record> = audit(d)
                .into_iter()
                .filter(|r| r.target.get("name") == Some(&name))
                .collect();
            recs.iter()
                .any(|r| r.phase == Phase::Verified)
                .then_some(recs)
        })
        .unwrap_or_else(|| panic!("{name} was not restarted and verified"));
        let planned = recs.iter().find(|r| r.phase == Phase::Planned).unwrap();
        let verified = recs.iter().find(|r| r.phase == Phase::Verified).unwrap();
        let killed: DateTime<Utc> = docker(&["inspect", "-f", "{{.State.FinishedAt}}", &name])
            .parse()
            .ok()
            .filter(|t: &DateTime<Utc>| *t < planned.ts)
            .unwrap_or_else(|| {
                // The restart may have stopped again meanwhile: fall back
                // to the OOM event's own time in the alert.
                planned.trigger.starts_at.unwrap()
            });
        to_action.push(ms(planned.ts - killed));
        to_verified.push(ms(verified.ts - killed));
    }
    summary("docker: OOM kill -> first action (planned)", to_action);
    summary("docker: OOM kill -> verified (running again)", to_verified);
}

fn webhook(rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("playbooks")).unwrap();
    std::fs::create_dir_all(d.join("policies")).unwrap();
    std::fs::write(
        d.join("playbooks/fix.yaml"),
        "apiVersion: remediate/v1\nkind: Playbook\nmetadata: { name: fix }\nspec:\n  triggers: [{ alert: ['alertname=\"BenchAlert\"'] }]\n  target: { kind: host, node: bench-node }\n  steps:\n    - action: host.command\n      with: { argv: [\"true\"] }\n",
    )
    .unwrap();
    std::fs::write(
        d.join("policies/default.yaml"),
        "apiVersion: remediate/v1\nkind: Policy\nmetadata: { name: default }\nspec: { cooldown: 0s }\n",
    )
    .unwrap();
    let mut lat = Vec::new();
    rt.block_on(async {
        let a = start_agent(d, "node: bench-node\nlisten: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: { enabled: false }\nwebhook: { settle: 0s }\n");
        for i in 0..rounds(20) {
            let id = format!("w{i}");
            let body = alert_body("firing", &[("alertname", "BenchAlert"), ("i", &id)], &Utc::now().to_rfc3339());
            let t0 = Utc::now();
            let (code, text) = a.post(&body, Some(TOKEN)).await;
            assert_eq!(code, 200, "{text}");
            let planned = wait(Duration::from_secs(30), || {
                audit(d).into_iter().find(|r| {
                    r.phase == Phase::Planned
                        && r.trigger.labels.get("i").map(String::as_str) == Some(id.as_str())
                })
            })
            .expect("planned");
            lat.push(ms(planned.ts - t0));
        }
    });
    summary("alertmanager webhook -> first action (planned)", lat);
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    webhook(&rt);
    docker_oom(&rt);
}
