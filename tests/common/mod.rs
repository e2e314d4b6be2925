//! Helpers for tests that run the real `remediate agent` binary.
#![allow(dead_code)]

pub mod docker;
pub mod kmock;
pub mod pg;
pub mod receiver;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use remediate::audit::{self, Record};

pub const TOKEN: &str = "test-token-5f2a";

/// A running agent process; killed on drop.
pub struct AgentProc {
    pub child: Child,
    pub addr: String,
    pub dir: PathBuf,
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// Writes `config` (YAML, may reference `{dir}`) into `dir/agent.yaml` and
/// starts the agent with it, waiting until it listens.
pub fn start_agent(dir: &Path, config: &str) -> AgentProc {
    let cfg = config.replace("{dir}", &dir.display().to_string());
    let path = dir.join("agent.yaml");
    std::fs::write(&path, cfg).unwrap();
    start_agent_with(dir, &path, &[])
}

pub fn start_agent_with(dir: &Path, config: &Path, env: &[(&str, &str)]) -> AgentProc {
    spawn(
        dir,
        Command::new(env!("CARGO_BIN_EXE_remediate")),
        config,
        env,
    )
}

/// [`start_agent`] with the agent's open-files limit (soft and hard) at
/// `nofile`, as in a container started with `--ulimit nofile=N`.
pub fn start_agent_nofile(dir: &Path, config: &str, nofile: u64) -> AgentProc {
    let path = dir.join("agent.yaml");
    std::fs::write(&path, config.replace("{dir}", &dir.display().to_string())).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -Sn {nofile} && ulimit -Hn {nofile} && exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_remediate"));
    spawn(dir, cmd, &path, &[])
}

fn spawn(dir: &Path, mut cmd: Command, config: &Path, env: &[(&str, &str)]) -> AgentProc {
    cmd.args(["agent", "--config"])
        .arg(config)
        .env("REMEDIATE_WEBHOOK_TOKEN", TOKEN)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start remediate agent");
    let stderr = child.stderr.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let logs = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "listening" {
                        let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_string());
                    }
                }
                logs.lock().unwrap().push(line);
            }
        });
    }
    let addr = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            let out = logs.lock().unwrap().join("\n");
            panic!("agent did not start listening within 20s; its log:\n{out}");
        }
    };
    AgentProc {
        child,
        addr,
        dir: dir.to_path_buf(),
        logs,
    }
}

impl AgentProc {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn audit(&self) -> Vec<Record> {
        audit::read(&self.dir.join("state/audit.jsonl"))
            .unwrap()
            .records
    }

    /// Sends a signal (by name, e.g. "TERM", "HUP", "KILL") to the agent.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agent did not exit within {within:?}");
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits up to 10 s until the log holds every one of `texts`; panics
    /// with the log otherwise.
    pub async fn wait_log(&self, texts: &[&str]) {
        let found = eventually(Duration::from_secs(10), || {
            let logs = self.log_text();
            texts.iter().all(|t| logs.contains(t)).then_some(())
        })
        .await;
        assert!(
            found.is_some(),
            "{texts:?} not logged:\n{}",
            self.log_text()
        );
    }

    pub async fn post(&self, body: &[u8], token: Option<&str>) -> (u16, String) {
        let c = reqwest::Client::new();
        let mut req = c
            .post(self.url("/webhook/alertmanager"))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let code = r.status().as_u16();
        (code, r.text().await.unwrap())
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(self.url(path)).await.unwrap();
        let code = r.status().as_u16();
        (code, r.text().await.unwrap())
    }

    /// The value of one metric line (exact name with labels), if exported.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns Some or `within` passes.
pub async fn eventually<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo("examples/alerts").join(name)).unwrap()
}

/// An Alertmanager v4 body with one alert.
pub fn alert_body(status: &str, labels: &[(&str, &str)], starts_at: &str) -> Vec<u8> {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    let ends = if status == "resolved" {
        "2026-11-25T12:05:00Z"
    } else {
        "0001-01-01T00:00:00Z"
    };
    serde_json::to_vec(&serde_json::json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"test\"}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "remediate",
        "groupLabels": {},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": {},
            "startsAt": starts_at,
            "endsAt": ends,
            "generatorURL": "http://127.0.0.1:9090/graph",
            "fingerprint": ""
        }]
    }))
    .unwrap()
}

/// Checks every Record for an alertname and status.
pub fn count(recs: &[Record], f: impl Fn(&Record) -> bool) -> usize {
    recs.iter().filter(|r| f(r)).count()
}
