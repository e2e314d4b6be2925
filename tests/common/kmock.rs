//! kmock (tests/k8s/kmock_server.py): a Kubernetes API emulator behind a
//! strict facade, started as a process on loopback.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const SHIPPED_RBAC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s/rbac.yaml");

/// A running kmock; killed on drop.
pub struct KMock {
    pub child: Child,
    pub url: String,
    /// Every agent request, one JSON line each.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for KMock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts kmock authorizing the agent's requests with `rbac`.
pub fn start_kmock(rbac: &Path) -> KMock {
    start_kmock_on(rbac, 0)
}

/// [`start_kmock`] on loopback port `port` (0: any).
pub fn start_kmock_on(rbac: &Path, port: u16) -> KMock {
    let probe = Command::new("python3")
        .args(["-c", "import kmock, yaml"])
        .output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "python3 with kmock and PyYAML is required: pip install kmock pyyaml (.ci/run does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/k8s/kmock_server.py"
        ))
        .arg("--port")
        .arg(port.to_string())
        .arg("--rbac")
        .arg(rbac)
        .arg("--log")
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kmock");
    let out = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("KMOCK_URL=")
        .unwrap_or_else(|| panic!("kmock did not start: {line:?}"))
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"));
    KMock {
        child,
        url,
        log,
        _dir: dir,
    }
}

/// A kubeconfig for `base` (no credentials: the facade's RBAC user).
pub fn kubeconfig(dir: &Path, base: &str) -> PathBuf {
    let kc = dir.join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: kmock, cluster: {{server: \"{base}\"}}}}]\nusers: [{{name: u, user: {{}}}}]\ncontexts: [{{name: kmock, context: {{cluster: kmock, user: u}}}}]\ncurrent-context: kmock\n"
        ),
    )
    .unwrap();
    kc
}

/// An agent config for a pod-watch agent on `node` against the cluster of
/// `kubeconfig`, with `extra` lines appended.
pub fn pod_watch_config(kubeconfig: &Path, node: &str, extra: &str) -> String {
    format!(
        "node: {node}\nlisten: 127.0.0.1:0\nplaybooks: playbooks\npolicies: policies\nstateDir: state\nschedule: {{ enabled: false }}\nbackends: {{ kubernetes: {{ kubeconfig: {}, namespace: remediate }} }}\ntriggers: {{ kubernetes: {{ enabled: true, node: {node} }} }}\n{extra}",
        kubeconfig.display()
    )
}
