//! Load on the real agent over loopback: webhook latency at a fixed request
//! rate (open loop: requests are sent on schedule whether or not earlier
//! ones finished, so a stall shows up in the latencies), then a storm of
//! 10,000 alerts, with the agent's resident memory idle and at its peak.
//!
//! `cargo bench --bench webhook_load` (env: RATE=1000 SECONDS=10 STORM=10000)
//! Budgets (DESIGN.md): p99 < 2 ms at 1k req/s; RSS idle <= 15 MB, storm <= 64 MB.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{body, env_or, pct, Agent, TOKEN};

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: skip then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rate = env_or("RATE", 1000);
    let secs = env_or("SECONDS", 10);
    let storm = env_or("STORM", 10_000);
    let agent = Agent::start(
        "listen: 127.0.0.1:0\nstateDir: state\ndryRun: true\nschedule: { enabled: false }\nlog: { level: warn }\nwebhook: { queueCapacity: 100000 }\n",
    );
    let addr = agent.addr.clone();
    let url = format!("http://{addr}/webhook/alertmanager");
    let template = support::template();

    std::thread::sleep(Duration::from_secs(2));
    let idle = agent.kb("VmRSS:");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();

    // Phase 1: fixed rate, one alert per request.
    let total = rate * secs;
    let bodies: Arc<Vec<Vec<u8>>> =
        Arc::new((0..total).map(|i| body(&template, i, 1, 300)).collect());
    let lat = rt.block_on(async {
        let start = tokio::time::Instant::now();
        let period = Duration::from_secs_f64(1.0 / rate as f64);
        let mut tasks = Vec::with_capacity(total as usize);
        for i in 0..total {
            let due = start + period * i as u32;
            tokio::time::sleep_until(due).await;
            let c = client.clone();
            let url = url.clone();
            let bodies = bodies.clone();
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = c
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .body(bodies[i as usize].clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                t.elapsed()
            }));
        }
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let mut sorted = lat.clone();
    sorted.sort();
    let during_rate = agent.kb("VmHWM:");

    // Phase 2: a storm of `storm` alerts in bodies of 100 (Alertmanager's
    // grouping), 8 in flight, as fast as the agent answers.
    let per = 100u64;
    let n_bodies = storm.div_ceil(per);
    let storm_bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..n_bodies)
            .map(|b| body(&template, 10_000_000 + b * per, per, 300))
            .collect(),
    );
    let t0 = Instant::now();
    rt.block_on(async {
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut workers = Vec::new();
        for _ in 0..8 {
            let c = client.clone();
            let url = url.clone();
            let next = next.clone();
            let bodies = storm_bodies.clone();
            workers.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= bodies.len() as u64 {
                        break;
                    }
                    let r = c
                        .post(&url)
                        .bearer_auth(TOKEN)
                        .body(bodies[i as usize].clone())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
    });
    let accepted = t0.elapsed();
    // Wait until every alert is decided (queue empty).
    let decided = rt.block_on(async {
        loop {
            let depth = support::metric(&client, &addr, "remediate_queue_depth")
                .await
                .unwrap_or(1.0);
            if depth == 0.0 {
                return t0.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let peak = agent.kb("VmHWM:");
    let audit_lines = std::fs::read_to_string(agent.dir.path().join("state/audit.jsonl"))
        .unwrap()
        .lines()
        .count();
    drop(agent);

    println!(
        "webhook at {rate} req/s for {secs}s, one alert per request ({} requests):",
        lat.len()
    );
    println!(
        "  latency p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        pct(&sorted, 0.50).as_secs_f64() * 1e3,
        pct(&sorted, 0.99).as_secs_f64() * 1e3,
        pct(&sorted, 0.999).as_secs_f64() * 1e3,
        sorted.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "storm: {storm} alerts in {n_bodies} bodies: accepted in {:.2} s ({:.0} alerts/s), all decided after {:.2} s ({:.0} alerts/s); {audit_lines} audit records",
        accepted.as_secs_f64(),
        storm as f64 / accepted.as_secs_f64(),
        decided.as_secs_f64(),
        storm as f64 / decided.as_secs_f64()
    );
    println!(
        "RSS: idle {:.1} MB, peak during the rate phase {:.1} MB, peak after the storm {:.1} MB",
        idle as f64 / 1024.0,
        during_rate as f64 / 1024.0,
        peak as f64 / 1024.0
    );
}
