//! Docker helpers shared by the tests on the machine's engine. Everything
//! they create is labelled `remediate-test=1`.

use std::process::Command;
use std::sync::OnceLock;
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

const IMAGE: &str = "remediate-test/busybox:1";

/// The busybox test image (`docker import` of /bin/busybox; no registry),
/// built once per test binary.
#[allow(dead_code)]
pub fn busybox() -> &'static str {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        assert!(
            docker_ok(&["info"]),
            "a running Docker Engine is required (the machine's; `docker info` failed)"
        );
        assert!(
            std::path::Path::new("/bin/busybox").exists(),
            "/bin/busybox is required: apt-get install busybox-static (.ci/run does)"
        );
        if docker_ok(&["image", "inspect", IMAGE]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        for tool in [
            "sh", "sleep", "head", "tail", "touch", "test", "true", "cat", "tr",
        ] {
            std::os::unix::fs::symlink("busybox", bin.join(tool)).unwrap();
        }
        let tar = dir.path().join("rootfs.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(dir.path())
            .args(["-cf"])
            .arg(&tar)
            .args(["bin", "tmp"])
            .status()
            .unwrap();
        assert!(st.success());
        docker(&[
            "import",
            "--change",
            "LABEL remediate-test=1",
            "--change",
            "CMD [\"/bin/sh\"]",
            &tar.display().to_string(),
            IMAGE,
        ]);
    });
    IMAGE
}
