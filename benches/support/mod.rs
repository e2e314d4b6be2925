//! What the benches that drive the real agent share: starting it, reading
//! its memory, Alertmanager bodies of many alerts, percentiles.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The webhook token the benches' agents use.
pub const TOKEN: &str = "bench-token";

/// `name` from the environment as a number, else `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A field of /proc/PID/status in kB (`VmRSS:`, `VmHWM:`).
pub fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A running `remediate agent` (the bench profile's binary, or
/// `$REMEDIATE_BIN` to measure another build); killed on drop.
pub struct Agent {
    pub child: Child,
    pub pid: u32,
    pub addr: String,
    pub dir: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent on `config` (YAML, in a temp dir) and waits until it listens.
    pub fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("agent.yaml");
        std::fs::write(&cfg, config).unwrap();
        let bin = std::env::var("REMEDIATE_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_remediate").to_string());
        let mut child = Command::new(bin)
            .args(["agent", "--config"])
            .arg(&cfg)
            .env("REMEDIATE_WEBHOOK_TOKEN", TOKEN)
            .env("RUST_LOG", "warn,remediate=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "listening" {
                        let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_string());
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("agent listening");
        Self {
            child,
            pid,
            addr,
            dir,
        }
    }

    /// `VmRSS` or `VmHWM` of the agent in kB.
    pub fn kb(&self, field: &str) -> u64 {
        rss_kb(self.pid, field)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bundled Alertmanager body (`examples/alerts/crashloop-firing.json`).
pub fn template() -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/alerts/crashloop-firing.json"
        ))
        .unwrap(),
    )
    .unwrap()
}

/// A real Alertmanager body (the bundled fixture) carrying `n` alerts.
pub fn body(template: &serde_json::Value, first: u64, n: u64, targets: u64) -> Vec<u8> {
    let mut v = template.clone();
    let alert = v["alerts"][0].clone();
    let alerts: Vec<serde_json::Value> = (first..first + n)
        .map(|i| {
            let mut a = alert.clone();
            a["labels"]["pod"] = serde_json::json!(format!("spark-driver-{}", i % targets));
            // A distinct episode per alert, so none is a duplicate.
            a["startsAt"] = serde_json::json!(format!(
                "2026-11-25T{:02}:{:02}:{:02}.{:03}Z",
                (i / 3_600_000) % 24,
                (i / 60_000) % 60,
                (i / 1000) % 60,
                i % 1000
            ));
            a["fingerprint"] = serde_json::json!("");
            a
        })
        .collect();
    v["alerts"] = serde_json::json!(alerts);
    serde_json::to_vec(&v).unwrap()
}

/// The `p` quantile of sorted durations.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// The value of an unlabelled series on the agent's /metrics.
pub async fn metric(client: &reqwest::Client, addr: &str, series: &str) -> Option<f64> {
    let text = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
