//! host.disk.prune on a real filesystem: a small tmpfs mounted for the test
//! (so usage is exact and nothing else is on it), filled with files of known
//! sizes and ages, a symlink pointing out of the root, and a second tmpfs
//! mounted inside the root. Needs root (mount), as CI runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use remediate::drivers::host::disk_prune::{usage, HostDiskPrune};
use remediate::drivers::{Action, Request, Verdict};
use serde_json::json;

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (as in CI): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(dir.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn file(path: &Path, bytes: usize, age_days: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Incompressible-ish content for deletes; compressible for logs.
    let body: Vec<u8> = if path.to_string_lossy().contains(".log") {
        b"GET /index.html 200\n"
            .iter()
            .cycle()
            .take(bytes)
            .copied()
            .collect()
    } else {
        (0..bytes)
            .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1])
            .collect()
    };
    std::fs::write(path, body).unwrap();
    let t = SystemTime::now() - Duration::from_secs(age_days * 86400);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn request(root: &Path, target: u8) -> Request {
    let root = root.display().to_string();
    Request {
        target: [
            ("kind", "host"),
            ("node", "n1"),
            ("mountpoint", root.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        params: json!({
            "targetUsagePercent": target,
            "rules": [
                {"root": format!("{root}/log"), "globs": ["**/*.log.[0-9]"], "minAge": "1d", "keepNewest": 0, "action": "compress"},
                {"root": format!("{root}/tmp"), "globs": ["**/*"], "minAge": "7d", "keepNewest": 0, "action": "delete"},
                {"root": format!("{root}/backups"), "globs": ["*.tar"], "minAge": "1d", "keepNewest": 2, "action": "delete"}
            ]
        }),
        dry_run: false,
    }
}

#[tokio::test]
async fn prunes_only_what_the_rules_allow_until_usage_is_under_the_target() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("fs");
    let _m = Mount::tmpfs(&root, "8m");
    let outside = base.path().join("outside.bin");
    file(&outside, 1 << 20, 30);

    // 8 MiB filesystem.
    file(&root.join("log/app.log.1"), 1 << 20, 3); // compress
    file(&root.join("log/app.log"), 256 << 10, 3); // not matched: current log
    file(&root.join("tmp/old-a.bin"), 1 << 20, 30); // delete (oldest first)
    file(&root.join("tmp/old-b.bin"), 1 << 20, 20);
    file(&root.join("tmp/fresh.bin"), 1 << 20, 1); // too young
    std::os::unix::fs::symlink(&outside, root.join("tmp/link-out.bin")).unwrap(); // never followed
    for (i, age) in [10u64, 9, 8, 7].iter().enumerate() {
        file(&root.join(format!("backups/b{i}.tar")), 512 << 10, *age); // keep newest 2
    }
    // Another filesystem inside a root: never entered.
    let _inner = Mount::tmpfs(&root.join("tmp/mnt"), "1m");
    file(&root.join("tmp/mnt/deep.bin"), 256 << 10, 30);

    let u0 = usage(&root).unwrap();
    assert!(u0.percent() > 70, "setup fills the fs: {u0:?}");
    let d = HostDiskPrune::new("n1");

    // Dry-run: the plan lists files and bytes; nothing changes.
    let req = request(&root, 55);
    let plan = d.plan(&req).await.unwrap();
    let listed: Vec<String> = plan.details["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            f["path"]
                .as_str()
                .unwrap()
                .trim_start_matches(&root.display().to_string())
                .to_string()
        })
        .collect();
    assert!(listed.contains(&"/log/app.log.1".to_string()), "{listed:?}");
    assert!(
        !listed.iter().any(|p| p.contains("fresh")
            || p.contains("link-out")
            || p.contains("mnt/")
            || p.ends_with("app.log")),
        "{listed:?}"
    );
    assert!(
        !listed
            .iter()
            .any(|p| p.ends_with("b2.tar") || p.ends_with("b3.tar")),
        "newest 2 backups kept: {listed:?}"
    );
    assert!(
        plan.summary.contains("file(s)") && plan.summary.contains("delete "),
        "{}",
        plan.summary
    );
    assert!(root.join("tmp/old-a.bin").exists() && root.join("log/app.log.1").exists());
    assert_eq!(usage(&root).unwrap(), u0);

    let out = d.apply(&req, &plan).await.unwrap();
    let u1 = usage(&root).unwrap();
    assert!(u1.percent() <= 55, "{u1:?} {}", out.summary);
    assert!(out.details["bytesFreed"].as_u64().unwrap() > 0);
    // The evidence, in human units: usage before and after, per rule.
    let before = remediate::engine::evidence::from_details(&plan.details);
    let after = remediate::engine::evidence::from_details(&out.details);
    let pct = format!("{}% (", u0.percent());
    assert!(before["usage before"].starts_with(&pct), "{before:?}");
    assert!(
        before["usage before"].ends_with("of 8.0 MiB used)"),
        "{before:?}"
    );
    assert!(before["to prune by rule"].contains("/tmp: "), "{before:?}");
    assert!(after["freed"].ends_with(" MiB"), "human units: {after:?}");
    assert!(after["freed by rule"].contains(" file(s)"), "{after:?}");
    assert!(
        after["usage after"].starts_with(&format!("{}% (", u1.percent())),
        "{after:?}"
    );
    assert!(matches!(
        d.verify(&req, &plan).await.unwrap(),
        Verdict::Verified(_)
    ));
    // Compressed in place, mtime kept; originals of deleted files gone.
    assert!(root.join("log/app.log.1.gz").exists() && !root.join("log/app.log.1").exists());
    // Untouched: the young file, the current log, what the symlink points
    // to, the other filesystem, and the newest backups.
    assert!(root.join("tmp/fresh.bin").exists());
    assert!(root.join("log/app.log").exists());
    assert!(
        outside.exists(),
        "a symlink target outside the root survived"
    );
    assert!(
        std::fs::symlink_metadata(root.join("tmp/link-out.bin")).is_ok(),
        "the symlink itself is not a regular file"
    );
    assert!(
        root.join("tmp/mnt/deep.bin").exists(),
        "another filesystem is not entered"
    );
    assert!(root.join("backups/b2.tar").exists() && root.join("backups/b3.tar").exists());
    // It stopped once under the target: not everything allowed went.
    let remaining_allowed = [
        "tmp/old-a.bin",
        "tmp/old-b.bin",
        "backups/b0.tar",
        "backups/b1.tar",
    ]
    .iter()
    .filter(|p| root.join(p).exists())
    .count();
    assert!(
        remaining_allowed > 0,
        "stopped at the target instead of pruning all: {}",
        out.summary
    );

    // Already under the target: nothing to do.
    let plan = d.plan(&request(&root, 90)).await.unwrap();
    assert!(
        plan.summary.contains("nothing to prune"),
        "{}",
        plan.summary
    );
}

#[tokio::test]
async fn another_nodes_target_is_refused_and_roots_must_be_specific() {
    let d = HostDiskPrune::new("n1");
    let mut req = request(Path::new("/tmp/does-not-matter"), 80);
    req.target.insert("node".into(), "n2".into());
    let err = d.plan(&req).await.unwrap_err();
    assert!(
        err.message
            .contains("targets node n2, but this agent runs on n1"),
        "{err}"
    );
    // Parameter checks reject `/` and `..` roots before anything runs.
    let spec = remediate::drivers::catalog::get("host.disk.prune").unwrap();
    let err = (spec.normalize)(json!({"rules": [{"root": "/", "minAge": "1d"}]})).unwrap_err();
    assert!(
        err.contains("is not allowed: name a specific directory"),
        "{err}"
    );
    let err =
        (spec.normalize)(json!({"rules": [{"root": "/var/../etc", "minAge": "1d"}]})).unwrap_err();
    assert!(err.contains("is not allowed"), "{err}");
}
