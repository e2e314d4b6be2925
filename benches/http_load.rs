//! The HTTP server under hostile connections and after an alert storm, on
//! the real agent over loopback.
//!
//! 1. **Connections**: `CONNS` (10,000) attacker connections from
//!    `ATTACK_FROM` (127.0.0.2; 127.0.0.1 puts them on the probes' address),
//!    half idle (connect, send nothing) and half slow (a request head that
//!    never ends, one more header line a second), each reconnecting
//!    `RECONNECT_MS` (1000) after the agent closes it. Meanwhile, for
//!    `SECONDS`, a fresh connection every 100 ms from 127.0.0.1 asks
//!    `/healthz` and another posts an authenticated webhook, on a thread
//!    and runtime of their own. Reports their latency and failures (5 s
//!    timeout), the agent's RSS and how it closed connections.
//! 2. **Storm memory**: one 10,000-alert and one 18,000-alert body
//!    (`webhook.maxBodyBytes` raised to take them); RSS idle, at peak,
//!    just after both are decided and `SETTLE` (30) seconds later.
//!
//! `cargo bench --bench http_load` (env: CONNS SECONDS RECONNECT_MS
//! ATTACK_FROM SETTLE PHASE=conns|storm|both; REMEDIATE_BIN=path measures
//! another build).

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{env_or, metric, pct, Agent, TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BASE: &str = "listen: 127.0.0.1:0\nstateDir: state\ndryRun: true\nschedule: { enabled: false }\nlog: { level: warn }\n";

fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(1024)
}

/// One attacker connection, reopened whenever the agent closes it.
async fn attacker(
    addr: std::net::SocketAddr,
    from: std::net::IpAddr,
    slow: bool,
    reconnect: Duration,
    closed: Arc<AtomicU64>,
) {
    let mut buf = [0u8; 256];
    loop {
        let connect = async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind((from, 0).into())?;
            sock.connect(addr).await
        };
        let Ok(mut s) = connect.await else {
            tokio::time::sleep(reconnect.max(Duration::from_millis(100))).await;
            continue;
        };
        if slow
            && s.write_all(b"POST /webhook/alertmanager HTTP/1.1\r\nHost: agent\r\n")
                .await
                .is_err()
        {
            continue;
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Err(_) if slow => {
                    if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                        break;
                    }
                }
                Err(_) => {}
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => break,
            }
        }
        closed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(reconnect).await;
    }
}

fn report(name: &str, lat: &mut [Duration], failed: usize) {
    lat.sort();
    println!(
        "  {name}: {} answered, {failed} failed; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        pct(lat, 0.5).as_secs_f64() * 1e3,
        pct(lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}

/// Latencies and failures of `/healthz` and webhook probes, each on a new
/// connection, every 100 ms for `secs`; and the agent's largest RSS meanwhile.
struct Probes {
    health: Vec<Duration>,
    health_failed: usize,
    hook: Vec<Duration>,
    hook_failed: usize,
    peak_rss: u64,
}

fn probe(addr: String, pid: u32, secs: u64) -> Probes {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = support::body(&support::template(), 0, 1, 1);
    rt.block_on(async {
        // No connection reuse: every probe is a new connection at the cap.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut p = Probes {
            health: Vec::new(),
            health_failed: 0,
            hook: Vec::new(),
            hook_failed: 0,
            peak_rss: 0,
        };
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            let t = Instant::now();
            match client.get(format!("http://{addr}/healthz")).send().await {
                Ok(r) if r.status() == 200 => p.health.push(t.elapsed()),
                _ => p.health_failed += 1,
            }
            let t = Instant::now();
            match client
                .post(format!("http://{addr}/webhook/alertmanager"))
                .bearer_auth(TOKEN)
                .body(body.clone())
                .send()
                .await
            {
                Ok(r) if r.status() == 200 => p.hook.push(t.elapsed()),
                _ => p.hook_failed += 1,
            }
            p.peak_rss = p.peak_rss.max(support::rss_kb(pid, "VmRSS:"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    })
}

fn connections(rt: &tokio::runtime::Runtime) {
    let conns = env_or("CONNS", 10_000);
    let secs = env_or("SECONDS", 10);
    let reconnect = Duration::from_millis(env_or("RECONNECT_MS", 1000));
    let from: std::net::IpAddr = std::env::var("ATTACK_FROM")
        .unwrap_or_else(|_| "127.0.0.2".into())
        .parse()
        .unwrap();
    let limit = raise_nofile();
    assert!(
        limit > conns + 100,
        "open-files limit {limit} too low for {conns} connections"
    );
    let agent = Agent::start(BASE);
    let addr = agent.addr.clone();
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = agent.kb("VmRSS:");
    rt.block_on(async {
        let closed = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        let mut attackers = Vec::new();
        for i in 0..conns {
            attackers.push(tokio::spawn(attacker(
                addr.parse().unwrap(),
                from,
                i % 2 == 1,
                reconnect,
                closed.clone(),
            )));
            if i % 500 == 499 {
                tokio::task::yield_now().await;
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let opened_in = t0.elapsed();
        let (a, pid) = (addr.clone(), agent.pid);
        let mut p = tokio::task::spawn_blocking(move || probe(a, pid, secs))
            .await
            .unwrap();
        let stats = reqwest::Client::new();
        let open = metric(&stats, &addr, "remediate_http_connections_open").await;
        let by = |r: &'static str| {
            let stats = stats.clone();
            let addr = addr.clone();
            async move {
                metric(
                    &stats,
                    &addr,
                    &format!("remediate_http_connections_closed_total{{reason=\"{r}\"}}"),
                )
                .await
                .unwrap_or(0.0)
            }
        };
        let (evicted, header, idle) = (
            by("evicted").await,
            by("header_timeout").await,
            by("idle_timeout").await,
        );
        println!(
            "connections: {conns} attackers from {from} (half idle, half slow headers), reconnecting {} ms after each close; started in {:.1} s, then {secs} s of probes on new connections from 127.0.0.1:",
            reconnect.as_millis(),
            opened_in.as_secs_f64()
        );
        report("/healthz", &mut p.health, p.health_failed);
        report("webhook (authenticated)", &mut p.hook, p.hook_failed);
        println!(
            "  agent: RSS idle {:.1} MB, max while attacked {:.1} MB, VmHWM {:.1} MB; {} connections open at the end; closed: evicted {evicted}, header_timeout {header}, idle_timeout {idle}; attacker connections closed by the agent: {}",
            idle_rss as f64 / 1024.0,
            p.peak_rss as f64 / 1024.0,
            agent.kb("VmHWM:") as f64 / 1024.0,
            open.map_or("?".to_string(), |o| o.to_string()),
            closed.load(Ordering::Relaxed)
        );
        for a in attackers {
            a.abort();
        }
    });
}

fn storm(rt: &tokio::runtime::Runtime) {
    let settle = env_or("SETTLE", 30);
    let agent = Agent::start(&format!(
        "{BASE}webhook: {{ queueCapacity: 100000, maxBodyBytes: 67108864 }}\n"
    ));
    let addr = agent.addr.clone();
    let template = support::template();
    let bodies = [
        support::body(&template, 0, 10_000, 300),
        support::body(&template, 10_000, 18_000, 300),
    ];
    std::thread::sleep(Duration::from_secs(2));
    let idle = agent.kb("VmRSS:");
    let client = reqwest::Client::new();
    let mut after_each = Vec::new();
    rt.block_on(async {
        for b in &bodies {
            let r = client
                .post(format!("http://{addr}/webhook/alertmanager"))
                .bearer_auth(TOKEN)
                .body(b.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            while metric(&client, &addr, "remediate_queue_depth")
                .await
                .unwrap_or(1.0)
                > 0.0
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            after_each.push(agent.kb("VmRSS:"));
        }
    });
    let peak = agent.kb("VmHWM:");
    std::thread::sleep(Duration::from_secs(settle));
    let later = agent.kb("VmRSS:");
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!(
        "storm memory: bodies of 10,000 ({:.1} MB) and 18,000 ({:.1} MB) alerts:",
        mb(bodies[0].len() as u64 / 1024),
        mb(bodies[1].len() as u64 / 1024)
    );
    println!(
        "  RSS idle {:.1} MB; peak {:.1} MB; when the 10k body was decided {:.1} MB, the 18k body {:.1} MB; {settle} s later {:.1} MB",
        mb(idle),
        mb(peak),
        mb(after_each[0]),
        mb(after_each[1]),
        mb(later)
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: skip then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let phase = std::env::var("PHASE").unwrap_or_else(|_| "both".into());
    if phase != "storm" {
        connections(&rt);
    }
    if phase != "conns" {
        storm(&rt);
    }
}
