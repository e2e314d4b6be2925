//! host.command on another node over SSH (openssh crate), against a real
//! sshd (Debian openssh-server) started by the test on a loopback port with
//! keys it generates, checked strictly against its own known_hosts file.
//! Arguments travel as an argv: shell metacharacters in a rendered label
//! stay one literal argument on the remote side.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use remediate::config::SshHost;
use remediate::drivers::host::HostCommand;
use remediate::drivers::{Action, Request, Verdict};
use serde_json::json;

struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (apt-get install openssh-client)");
    assert!(st.success());
}

fn start_sshd() -> Sshd {
    let sshd = Path::new("/usr/sbin/sshd");
    assert!(
        sshd.exists(),
        "sshd is required: apt-get install openssh-server (.ci/run does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keygen(&d.join("host_key"));
    keygen(&d.join("user_key"));
    std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nAllowUsers {user}\nLogLevel ERROR\n",
        d = d.display()
    );
    std::fs::write(d.join("sshd_config"), config).unwrap();
    std::fs::create_dir_all("/run/sshd").ok();
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(d.join("sshd_config"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sshd");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
    let mut parts = host_pub.split_whitespace();
    let (kt, key) = (parts.next().unwrap(), parts.next().unwrap());
    std::fs::write(
        d.join("known_hosts"),
        format!("[127.0.0.1]:{port} {kt} {key}\n"),
    )
    .unwrap();
    Sshd { child, port, dir }
}

fn inventory(s: &Sshd, known_hosts: PathBuf) -> Vec<SshHost> {
    vec![SshHost {
        node: "remote-1".into(),
        host: "127.0.0.1".into(),
        port: s.port,
        user: std::env::var("USER").unwrap_or_else(|_| "root".into()),
        key_file: Some(s.dir.path().join("user_key")),
        known_hosts: Some(known_hosts),
        remediate: env!("CARGO_BIN_EXE_remediate").to_string(),
    }]
}

fn req(node: &str, argv: Vec<String>, check: Vec<String>) -> Request {
    Request {
        target: [("kind", "host"), ("node", node)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        params: json!({"argv": argv, "successExitCodes": [0], "check": check}),
        dry_run: false,
    }
}

#[tokio::test]
async fn a_command_for_another_node_runs_over_ssh_as_an_argv_and_is_verified() {
    let s = start_sshd();
    let d = HostCommand::new("local-node")
        .with_inventory(inventory(&s, s.dir.path().join("known_hosts")));
    let work = tempfile::tempdir().unwrap();
    // A label value with shell metacharacters: one literal file name remotely.
    let marker = format!("pwned-{:08x}", fastrand::u32(..));
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let pwned = Path::new(&home).join(&marker);
    let name = format!("x; touch {marker}; $(touch {marker})");
    let file = work.path().join(&name);
    let r = req(
        "remote-1",
        vec!["touch".into(), file.display().to_string()],
        vec!["test".into(), "-f".into(), file.display().to_string()],
    );
    let plan = d.plan(&r).await.unwrap();
    assert!(
        plan.summary.contains(&format!(
            "over ssh {}@127.0.0.1:{}",
            std::env::var("USER").unwrap_or_else(|_| "root".into()),
            s.port
        )),
        "{}",
        plan.summary
    );
    let out = d.apply(&r, &plan).await.unwrap();
    assert_eq!(out.summary, "touch exited 0");
    assert!(
        file.exists(),
        "the file with the literal name was created remotely"
    );
    assert!(!pwned.exists(), "no shell interpreted the argument");
    assert!(matches!(
        d.verify(&r, &plan).await.unwrap(),
        Verdict::Verified(_)
    ));
    // A failing remote command is a failed step with its exit code.
    let r = req("remote-1", vec!["false".into()], vec![]);
    let err = d.apply(&r, &plan).await.unwrap_err();
    assert_eq!(err.message, "false exited 1: ");
}

#[tokio::test]
async fn an_unknown_host_key_is_refused_and_a_node_outside_the_inventory_too() {
    let s = start_sshd();
    let empty = s.dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let d = HostCommand::new("local-node").with_inventory(inventory(&s, empty));
    let r = req("remote-1", vec!["true".into()], vec![]);
    let plan = d.plan(&r).await.unwrap();
    let err = d.apply(&r, &plan).await.unwrap_err();
    assert!(err.message.starts_with("ssh "), "{err}");
    let r = req("elsewhere", vec!["true".into()], vec![]);
    let err = d.plan(&r).await.unwrap_err();
    assert!(
        err.message
            .contains("elsewhere is not in the SSH inventory"),
        "{err}"
    );
}

#[tokio::test]
async fn a_node_scoped_action_for_an_inventory_host_runs_its_remote_binary_over_ssh() {
    let s = start_sshd();
    // The "remote" host's disk: a small tmpfs filled with old files.
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("fs");
    std::fs::create_dir_all(&root).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs needs root (as in CI)");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _u = Unmount(root.clone());
    for i in 0..3 {
        let f = root.join(format!("tmp/old-{i}.bin"));
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, vec![7u8; 1 << 20]).unwrap();
        let t = std::time::SystemTime::now() - Duration::from_secs(30 * 86400);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    let mut reg = remediate::drivers::host::builtin("local-node");
    remediate::drivers::host::ssh::route(
        &mut reg,
        "local-node",
        &inventory(&s, s.dir.path().join("known_hosts")),
    );
    let a = reg.get("host.disk.prune").unwrap();
    let r = Request {
        target: [
            ("kind", "host"),
            ("node", "remote-1"),
            ("mountpoint", root.to_str().unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        params: json!({"targetUsagePercent": 40, "rules": [
            {"root": format!("{}/tmp", root.display()), "globs": ["*.bin"], "minAge": "7d", "keepNewest": 0, "action": "delete"}
        ]}),
        dry_run: false,
    };
    let plan = a.plan(&r).await.unwrap();
    assert!(
        plan.summary.ends_with("(on remote-1 over ssh)"),
        "{}",
        plan.summary
    );
    assert!(plan.summary.contains("old-0.bin"), "{}", plan.summary);
    let out = a.apply(&r, &plan).await.unwrap();
    assert!(out.summary.starts_with("freed "), "{}", out.summary);
    assert!(matches!(
        a.verify(&r, &plan).await.unwrap(),
        Verdict::Verified(_)
    ));
    assert!(!root.join("tmp/old-0.bin").exists());
    // A remote driver error comes back as the step's error.
    let mut bad = r.clone();
    bad.params = json!({"targetUsagePercent": 40, "rules": [{"root": "/nonexistent-root", "globs": ["*"], "minAge": "1d"}]});
    bad.target
        .insert("mountpoint".into(), "/nonexistent-mount".into());
    let err = a.plan(&bad).await.unwrap_err();
    assert!(
        err.message
            .starts_with("on remote-1 over ssh: /nonexistent-mount"),
        "{err}"
    );
}
