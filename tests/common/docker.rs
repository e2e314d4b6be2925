//! Docker helpers shared by the tests on the machine's engine. Everything
//! they create is labelled `remediate-test=1`.

use std::process::Command;
use std::time::Duration;

/// Runs the docker CLI; panics with its stderr when it fails.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether the docker CLI succeeds.
pub fn docker_ok(args: &[&str]) -> bool {
    Command::new("docker")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:06x}", fastrand::u32(..) & 0xffffff)
}

/// Removes test objects (docker CLI argument lists) when dropped.
pub struct Cleanup(pub Vec<Vec<String>>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for args in &self.0 {
            if args[0] == "rmi" {
                // Stack and service removal is asynchronous: wait for their
                // containers to go before removing the image they use.
                for _ in 0..60 {
                    let left = Command::new("docker")
                        .args([
                            "ps",
                            "-aq",
                            "--filter",
                            &format!("ancestor={}", args[args.len() - 1]),
                        ])
                        .output()
                        .map(|o| !o.stdout.is_empty())
                        .unwrap_or(false);
                    if !left {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            let _ = Command::new("docker").args(args).output();
        }
    }
}

/// Initialises a one-node swarm on loopback unless the engine is in one.
pub fn swarm() {
    assert!(docker_ok(&["info"]), "a running Docker Engine is required");
    if docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]) != "active" {
        docker(&[
            "swarm",
            "init",
            "--advertise-addr",
            "127.0.0.1",
            "--listen-addr",
            "127.0.0.1:2377",
        ]);
    }
}
