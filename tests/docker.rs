//! The Docker and Swarm driver against the machine's Docker Engine. The test
//! image is built locally with `docker import` from Debian's busybox-static
//! (there is no registry). Everything the tests create is labelled
//! `remediate-test=1` and removed; prune runs with `onlyLabel` so it never
//! touches anything else on the engine. Swarm: `docker swarm init` on
//! loopback if the engine is not in a swarm yet (left initialised).

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use remediate::drivers::docker::{self, Engine};
use remediate::drivers::{Action, Registry, Request, Verdict};
use serde_json::json;

use common::docker::{busybox as image, docker, docker_ok, swarm, unique, Cleanup};

/// Imports a one-file image under `tag` (labelled), returning its id.
fn import_tagged(tag: &str, content: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), content).unwrap();
    let tar = dir.path().join("i.tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .arg("-cf")
        .arg(&tar)
        .arg("f")
        .status()
        .unwrap()
        .success());
    docker(&[
        "import",
        "--change",
        "LABEL remediate-test=1",
        &tar.display().to_string(),
        tag,
    ]);
    docker(&["image", "inspect", "-f", "{{.Id}}", tag])
}

fn actions() -> Registry {
    let d = bollard::Docker::connect_with_local_defaults().unwrap();
    let mut reg = Registry::new();
    docker::register(
        &mut reg,
        Arc::new(Engine {
            docker: d,
            node: "n1".into(),
        }),
    );
    reg
}

fn req(kind: &str, name: &str, params: serde_json::Value) -> Request {
    Request {
        target: [("kind", kind), ("node", "n1"), ("name", name)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        params,
        dry_run: false,
    }
}

async fn verify_until(
    a: &dyn Action,
    r: &Request,
    plan: &remediate::drivers::Plan,
    secs: u64,
) -> Verdict {
    let mut last = Verdict::Pending("not polled".into());
    for _ in 0..secs * 4 {
        last = a.verify(r, plan).await.unwrap();
        if !matches!(last, Verdict::Pending(_)) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    last
}

#[tokio::test]
async fn an_oom_killed_container_is_restarted_and_verified_running() {
    let img = image();
    let name = unique("rt-oom");
    let _c = Cleanup(vec![vec!["rm".into(), "-f".into(), name.clone()]]);
    // OOM-killed on its first run only (a marker in its own filesystem).
    docker(&[
        "run", "-d", "--name", &name, "--label", "remediate-test=1", "--memory", "8m", "--memory-swap", "8m", img,
        "sh", "-c", "if [ ! -f /tmp/ran ]; then touch /tmp/ran; head -c 67108864 /dev/zero | tail; exit 137; fi; sleep 3600",
    ]);
    for _ in 0..600 {
        if docker(&["inspect", "-f", "{{.State.Status}}", &name]) == "exited" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        docker(&[
            "inspect",
            "-f",
            "{{.State.OOMKilled}} {{.State.ExitCode}}",
            &name
        ]),
        "true 137"
    );
    let reg = actions();
    let a = reg.get("docker.container.restart").unwrap();
    let r = req("docker.container", &name, json!({"stopTimeoutSeconds": 1}));
    let plan = a.plan(&r).await.unwrap();
    assert!(
        plan.summary.starts_with(&format!(
            "restart container {name} (exited, OOM-killed, exit 137;"
        )),
        "{}",
        plan.summary
    );
    let out = a.apply(&r, &plan).await.unwrap();
    assert_eq!(out.summary, format!("restarted container {name}"));
    let v = verify_until(a.as_ref(), &r, &plan, 10).await;
    assert!(
        matches!(&v, Verdict::Verified(m) if m.starts_with(&format!("container {name} running again since"))),
        "{v:?}"
    );
    // Applying the same plan again changes nothing (idempotent).
    let again = a.apply(&r, &plan).await.unwrap();
    assert!(
        again.summary.contains("was restarted since the plan"),
        "{}",
        again.summary
    );
}

#[tokio::test]
async fn prune_removes_only_old_unprotected_labelled_objects_and_reports_bytes() {
    let img = image();
    let stopped = unique("rt-stopped");
    let kept = unique("rt-kept");
    let vol = unique("rt-vol");
    let _c = Cleanup(vec![
        vec!["rm".into(), "-f".into(), stopped.clone()],
        vec!["rm".into(), "-f".into(), kept.clone()],
        vec!["volume".into(), "rm".into(), "-f".into(), vol.clone()],
    ]);
    docker(&[
        "run",
        "--name",
        &stopped,
        "--label",
        "remediate-test=1",
        img,
        "sh",
        "-c",
        "head -c 300000 /dev/zero > /tmp/junk",
    ]);
    docker(&[
        "run",
        "--name",
        &kept,
        "--label",
        "remediate-test=1",
        "--label",
        "remediate.io/keep=1",
        img,
        "true",
    ]);
    docker(&["volume", "create", "--label", "remediate-test=1", &vol]);
    // A dangling image: the same tag imported twice leaves the first untagged.
    let dangling_tag = format!("remediate-test/dangling:{}", unique("t"));
    let id_old = import_tagged(&dangling_tag, "one");
    let _id_new = import_tagged(&dangling_tag, "two");
    let _ci = Cleanup(vec![
        vec!["rmi".into(), "-f".into(), dangling_tag.clone()],
        vec!["rmi".into(), "-f".into(), id_old.clone()],
    ]);
    assert_eq!(
        docker(&["image", "inspect", "-f", "{{len .RepoTags}}", &id_old]),
        "0",
        "the first import is dangling"
    );
    let reg = actions();
    let a = reg.get("docker.prune").unwrap();
    let params = |volumes: bool, older: &str| {
        json!({"containers": true, "images": true, "volumes": volumes, "buildCache": true, "olderThan": older,
               "protectLabel": "remediate.io/keep", "onlyLabel": "remediate-test=1"})
    };
    // The age filter: nothing here is an hour old.
    let young = req("host", "n1", params(false, "1h"));
    let plan = a.plan(&young).await.unwrap();
    assert_eq!(plan.summary, "nothing to prune");
    a.apply(&young, &plan).await.unwrap();
    assert!(
        docker_ok(&["inspect", &stopped]),
        "younger than olderThan: kept"
    );
    // Ages are in whole seconds: let them pass one.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = req("host", "n1", params(false, "1s"));
    // Dry-run lists what would go, and nothing changes.
    let plan = a.plan(&r).await.unwrap();
    assert!(
        plan.summary.contains(&format!("container {stopped}")),
        "{}",
        plan.summary
    );
    assert!(
        !plan.summary.contains(&kept) && !plan.summary.contains(&vol),
        "{}",
        plan.summary
    );
    assert!(docker_ok(&["inspect", &stopped]));
    let out = a.apply(&r, &plan).await.unwrap();
    assert!(
        out.details["bytesReclaimed"].as_u64().unwrap() >= 300_000,
        "{}",
        out.summary
    );
    assert!(
        !docker_ok(&["inspect", &stopped]),
        "the stopped container is gone"
    );
    assert!(
        !docker_ok(&["image", "inspect", &id_old]),
        "the dangling image is gone"
    );
    assert!(
        docker_ok(&["image", "inspect", &dangling_tag]),
        "the tagged one stays"
    );
    assert!(docker_ok(&["inspect", &kept]), "the protected one is kept");
    assert!(
        docker_ok(&["volume", "inspect", &vol]),
        "volumes only when the playbook says so"
    );
    assert!(matches!(
        a.verify(&r, &plan).await.unwrap(),
        Verdict::Verified(_)
    ));
    // Opted in: the unused volume goes too.
    let r = req("host", "n1", params(true, "1s"));
    let plan = a.plan(&r).await.unwrap();
    assert!(
        plan.summary.contains(&format!("volume {vol}")),
        "{}",
        plan.summary
    );
    a.apply(&r, &plan).await.unwrap();
    assert!(!docker_ok(&["volume", "inspect", &vol]));
}

#[tokio::test]
async fn a_swarm_service_is_force_restarted_and_its_memory_raised_with_new_tasks_running() {
    let img = image();
    swarm();
    let svc = unique("rt-svc");
    let _c = Cleanup(vec![vec!["service".into(), "rm".into(), svc.clone()]]);
    docker(&[
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        &svc,
        "--label",
        "remediate-test=1",
        "--replicas",
        "2",
        "--limit-memory",
        "16m",
        "--reserve-memory",
        "8m",
        "--stop-grace-period",
        "1s",
        img,
        "sleep",
        "3600",
    ]);
    let reg = actions();
    let restart = reg.get("swarm.service.restart").unwrap();
    let r = req("swarm.service", &svc, json!({}));
    // Wait for the service to run before acting on it.
    let plan = restart.plan(&r).await.unwrap();
    let baseline = verify_until(
        reg.get("swarm.service.bump-memory").unwrap().as_ref(),
        &req(
            "swarm.service",
            &svc,
            json!({"step": "50%", "ceiling": "64Mi", "bumpReservation": false}),
        ),
        &remediate::drivers::Plan {
            summary: String::new(),
            details: json!({"to": 16 << 20}),
        },
        60,
    )
    .await;
    assert!(
        matches!(baseline, Verdict::Verified(_)),
        "service never ran: {baseline:?}"
    );
    assert!(
        plan.summary.contains("ForceUpdate 0 -> 1"),
        "{}",
        plan.summary
    );
    restart.apply(&r, &plan).await.unwrap();
    let v = verify_until(restart.as_ref(), &r, &plan, 180).await;
    assert!(
        matches!(&v, Verdict::Verified(m) if m.contains("2/2 new tasks running")),
        "{v:?}"
    );
    assert_eq!(
        docker(&[
            "service",
            "inspect",
            "-f",
            "{{.Spec.TaskTemplate.ForceUpdate}}",
            &svc
        ]),
        "1"
    );

    let bump = reg.get("swarm.service.bump-memory").unwrap();
    let r = req(
        "swarm.service",
        &svc,
        json!({"step": "50%", "ceiling": "64Mi", "bumpReservation": true}),
    );
    let plan = bump.plan(&r).await.unwrap();
    assert!(
        plan.summary.contains("from 16Mi to 24Mi (ceiling 64Mi)"),
        "{}",
        plan.summary
    );
    bump.apply(&r, &plan).await.unwrap();
    let v = verify_until(bump.as_ref(), &r, &plan, 180).await;
    assert!(matches!(&v, Verdict::Verified(_)), "{v:?}");
    assert_eq!(
        docker(&["service", "inspect", "-f", "{{.Spec.TaskTemplate.Resources.Limits.MemoryBytes}} {{.Spec.TaskTemplate.Resources.Reservations.MemoryBytes}}", &svc]),
        format!("{} {}", 24 << 20, 24 << 20)
    );
    // A plan made before someone else changed the service is not applied.
    let stale = bump.plan(&r).await.unwrap();
    docker(&[
        "service",
        "update",
        "--detach",
        "--no-resolve-image",
        "--label-add",
        "touched=1",
        &svc,
    ]);
    let err = bump.apply(&r, &stale).await.unwrap_err();
    assert!(
        err.retryable && err.message.contains("changed since the plan"),
        "{err}"
    );
}

#[tokio::test]
async fn spark_on_swarm_gets_a_new_spark_defaults_config_version_with_more_executor_memory() {
    let img = image();
    swarm();
    let svc = unique("rt-spark");
    let conf = format!("{svc}-conf");
    let _c = Cleanup(vec![
        vec!["service".into(), "rm".into(), svc.clone()],
        vec!["config".into(), "rm".into(), conf.clone()],
        vec!["config".into(), "rm".into(), format!("{conf}-v2")],
    ]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spark-defaults.conf");
    std::fs::write(&file, "# worker settings\nspark.executor.memory   1g\nspark.executor.cores 1\nspark.eventLog.enabled true\n").unwrap();
    docker(&[
        "config",
        "create",
        "--label",
        "remediate-test=1",
        &conf,
        &file.display().to_string(),
    ]);
    docker(&[
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        &svc,
        "--label",
        "remediate-test=1",
        "--config",
        &format!("source={conf},target=/opt/spark/conf/spark-defaults.conf"),
        "--stop-grace-period",
        "1s",
        img,
        "sleep",
        "3600",
    ]);
    let reg = actions();
    let a = reg.get("spark.executor.bump-memory").unwrap();
    let r = req(
        "swarm.service",
        &svc,
        json!({"step": "50%", "ceiling": "4g", "bumpOverhead": false, "cores": {"step": 1, "ceiling": 2}}),
    );
    let plan = a.plan(&r).await.unwrap();
    assert!(
        plan.summary.starts_with(&format!("new config {conf}-v2 with spark.executor.memory 1536m (was 1g, ceiling 4Gi) in place of {conf}")),
        "{}",
        plan.summary
    );
    a.apply(&r, &plan).await.unwrap();
    let v = verify_until(a.as_ref(), &r, &plan, 180).await;
    assert!(matches!(&v, Verdict::Verified(_)), "{v:?}");
    // The running task sees the new file; the rest of it is unchanged.
    let task = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={svc}"),
    ]);
    let text = docker(&[
        "exec",
        task.lines().next().unwrap(),
        "cat",
        "/opt/spark/conf/spark-defaults.conf",
    ]);
    assert_eq!(
        text,
        "# worker settings\nspark.executor.memory 1536m\nspark.executor.cores 2\nspark.eventLog.enabled true"
    );
    assert_eq!(
        docker(&[
            "config",
            "inspect",
            "-f",
            "{{index .Spec.Labels \"remediate.io/previous\"}}",
            &format!("{conf}-v2")
        ]),
        conf
    );
    // Spark on Kubernetes is another driver's: this build has no cluster here.
    let k8s = req(
        "spark.application",
        &svc,
        json!({"step": "50%", "ceiling": "4g", "bumpOverhead": false}),
    );
    let err = a.plan(&k8s).await.unwrap_err();
    assert!(
        err.message
            .contains("this build drives it for swarm.service only"),
        "{err}"
    );
}

#[tokio::test]
async fn restarting_a_service_whose_tasks_crash_is_not_verified() {
    let img = image();
    swarm();
    let svc = unique("rt-crash");
    let _c = Cleanup(vec![vec!["service".into(), "rm".into(), svc.clone()]]);
    docker(&[
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        &svc,
        "--label",
        "remediate-test=1",
        "--restart-delay",
        "1s",
        img,
        "sh",
        "-c",
        "sleep 1; exit 3",
    ]);
    let reg = actions();
    let a = reg.get("swarm.service.restart").unwrap();
    let r = req("swarm.service", &svc, json!({}));
    let plan = a.plan(&r).await.unwrap();
    a.apply(&r, &plan).await.unwrap();
    // Its new tasks crash a second after they start: not verified, failed.
    let v = verify_until(a.as_ref(), &r, &plan, 30).await;
    assert!(
        matches!(&v, Verdict::Failed(m) if m.starts_with(&format!("a new task of service {svc} failed: task: non-zero exit (3)"))),
        "{v:?}"
    );
}
