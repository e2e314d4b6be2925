//! The agent binary as Swarm containers on the machine's Docker Engine:
//! the image is built with `docker import` from the test build of the
//! binary, its shared libraries and busybox-static (no registry).
//!
//! 1. Three agents on a private Docker network receive the same alert at
//!    once: exactly one restarts the service (claims in the Swarm's raft
//!    store), the others record who holds the claim.
//! 2. deploy/swarm/stack.yml deploys as a global service, passes its
//!    healthcheck, and the agent plans from the engine it is mounted on.
//!
//! Everything is labelled `remediate-test=1` and removed at the end.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::docker::{docker, swarm, unique, Cleanup};

/// `remediate-test/agent:<tag>`: the binary, its libraries, busybox.
fn agent_image(tag: &str) -> String {
    let image = format!("remediate-test/agent:{tag}");
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is required: apt-get install busybox-static"
    );
    let bin = env!("CARGO_BIN_EXE_remediate");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let put = |src: &str, dst: &str| {
        let to = root.join(dst.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src, &to).unwrap_or_else(|e| panic!("{src}: {e}"));
    };
    put(bin, "/usr/local/bin/remediate");
    put("/bin/busybox", "/bin/busybox");
    let ldd = Command::new("ldd").arg(bin).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(str::to_string);
        if let Some(p) = path {
            put(&p, &p);
        }
    }
    for d in ["tmp", "var/lib/remediate", "etc/remediate"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("etc/hostname"), "agent\n").unwrap();
    let tar = dir.path().with_extension("tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap()
        .success());
    docker(&[
        "import",
        "--change",
        "LABEL remediate-test=1",
        "--change",
        "ENTRYPOINT [\"/usr/local/bin/remediate\"]",
        &tar.display().to_string(),
        &image,
    ]);
    let _ = std::fs::remove_file(&tar);
    image
}

fn busybox_service(name: &str, image: &str) {
    docker(&[
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        name,
        "--label",
        "remediate-test=1",
        "--replicas",
        "1",
        "--stop-grace-period",
        "1s",
        "--entrypoint",
        "/bin/busybox",
        image,
        "sleep",
        "3600",
    ]);
}

fn alert(service: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "version": "4", "status": "firing", "receiver": "remediate", "groupLabels": {}, "commonLabels": {},
        "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093", "groupKey": "{}", "truncatedAlerts": 0,
        "alerts": [{"status": "firing", "labels": {"alertname": "SwarmServiceTasksFailing", "service": service},
            "annotations": {}, "startsAt": "2026-11-25T12:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": ""}]
    }))
    .unwrap()
}

async fn wait_http(url: &str) {
    for _ in 0..300 {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never answered");
}

/// Starts `agents` (containers on `net`, the Docker socket mounted: each
/// on a Swarm manager's engine) with `playbook` and a policy `default`
/// whose spec is `policy_spec`; returns their webhook URLs once ready.
/// Agent i's audit is `dir/state<i>/audit.jsonl`.
async fn start_agents(
    dir: &Path,
    agents: &[String],
    net: &str,
    image: &str,
    playbook: &str,
    policy_spec: &str,
) -> Vec<String> {
    let cfg = dir.join("cfg");
    std::fs::create_dir_all(cfg.join("playbooks")).unwrap();
    std::fs::create_dir_all(cfg.join("policies")).unwrap();
    std::fs::write(cfg.join("playbooks/restart.yaml"), playbook).unwrap();
    std::fs::write(
        cfg.join("policies/default.yaml"),
        format!(
            "apiVersion: remediate/v1\nkind: Policy\nmetadata: {{ name: default }}\n{policy_spec}"
        ),
    )
    .unwrap();
    std::fs::write(
        cfg.join("agent.yaml"),
        "node: n1\nlisten: 0.0.0.0:9095\nplaybooks: playbooks\npolicies: policies\nstateDir: /var/lib/remediate\nschedule: { enabled: false }\nbackends: { docker: {} }\n",
    )
    .unwrap();
    let mut urls = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        let state = dir.join(format!("state{i}"));
        std::fs::create_dir_all(&state).unwrap();
        docker(&[
            "run",
            "-d",
            "--name",
            a,
            "--label",
            "remediate-test=1",
            "--network",
            net,
            "-p",
            "127.0.0.1::9095",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            &format!("{}:/etc/remediate:ro", cfg.display()),
            "-v",
            &format!("{}:/var/lib/remediate", state.display()),
            "-e",
            "REMEDIATE_WEBHOOK_TOKEN=race-token",
            "-e",
            &format!("REMEDIATE_AGENT_ID=agent-{i}"),
            image,
            "agent",
            "--config",
            "/etc/remediate/agent.yaml",
        ]);
        let port = docker(&["port", a, "9095/tcp"]);
        let port = port
            .lines()
            .next()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_string();
        urls.push(format!("http://127.0.0.1:{port}"));
    }
    for u in &urls {
        wait_http(&format!("{u}/readyz")).await;
    }
    urls
}

/// Each agent's audit records once `done` says they are complete.
async fn wait_audits(
    dir: &Path,
    agents: &[String],
    done: impl Fn(&[remediate::audit::Record]) -> bool,
) -> Vec<Vec<remediate::audit::Record>> {
    let mut records = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        let path = dir.join(format!("state{i}/audit.jsonl"));
        let mut got = None;
        for _ in 0..900 {
            let recs = remediate::audit::read(&path)
                .map(|r| r.records)
                .unwrap_or_default();
            if done(&recs) {
                got = Some(recs);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        records.push(got.unwrap_or_else(|| {
            panic!(
                "agent {i} recorded nothing complete: {}",
                docker(&["logs", agent])
            )
        }));
    }
    records
}

/// Posts `body` to every agent at once.
async fn post_all(urls: &[String], body: &[u8]) {
    let client = reqwest::Client::new();
    let posts: Vec<_> = urls
        .iter()
        .map(|u| {
            let req = client
                .post(format!("{u}/webhook/alertmanager"))
                .bearer_auth("race-token")
                .body(body.to_vec());
            tokio::spawn(async move { req.send().await })
        })
        .collect();
    for p in posts {
        assert_eq!(p.await.unwrap().unwrap().status(), 200);
    }
}

const RESTART: &str = r#"apiVersion: remediate/v1
kind: Playbook
metadata: { name: swarm-restart }
spec:
  triggers: [{ alert: ['alertname="SwarmServiceTasksFailing"'] }]
  target: { kind: swarm.service, name: "{{ labels.service }}" }
  steps: [{ action: swarm.service.restart, timeout: 2m }]
  verify: { timeout: 3m }
"#;

#[tokio::test]
async fn of_three_agents_receiving_one_alert_exactly_one_restarts_the_service() {
    swarm();
    let tag = unique("race");
    let image = agent_image(&tag);
    let net = unique("rt-net");
    let target = unique("rt-target");
    let agents: Vec<String> = (0..3).map(|i| unique(&format!("rt-agent{i}"))).collect();
    let mut cleanup = vec![vec!["service".into(), "rm".into(), target.clone()]];
    for a in &agents {
        cleanup.push(vec!["rm".into(), "-f".into(), a.clone()]);
    }
    cleanup.push(vec!["network".into(), "rm".into(), net.clone()]);
    cleanup.push(vec!["rmi".into(), image.clone()]);
    let _c = Cleanup(cleanup);
    busybox_service(&target, &image);
    docker(&["network", "create", "--label", "remediate-test=1", &net]);

    let dir = tempfile::tempdir().unwrap();
    let urls = start_agents(dir.path(), &agents, &net, &image, RESTART, "spec: {}\n").await;
    // The same alert to every agent at once.
    post_all(&urls, &alert(&target)).await;
    // Each agent records its decision.
    let records = wait_audits(dir.path(), &agents, |recs| {
        recs.iter()
            .any(|r| r.phase != remediate::audit::Phase::Planned || r.decision == "suppressed")
    })
    .await;
    let acted: Vec<usize> = (0..3)
        .filter(|i| {
            records[*i]
                .iter()
                .any(|r| r.decision == "execute" && r.phase != remediate::audit::Phase::Planned)
        })
        .collect();
    assert_eq!(acted.len(), 1, "exactly one agent acts: {records:#?}");
    for i in (0..3).filter(|i| *i != acted[0]) {
        let r = &records[i][0];
        assert_eq!(r.decision, "suppressed", "{r:#?}");
        assert!(
            r.reason
                .starts_with(&format!("claimed by agent agent-{}", acted[0])),
            "{}",
            r.reason
        );
    }
    assert!(
        records[acted[0]]
            .iter()
            .any(|r| r.phase == remediate::audit::Phase::Verified),
        "{:#?}",
        records[acted[0]]
    );
    assert_eq!(
        docker(&[
            "service",
            "inspect",
            "-f",
            "{{.Spec.TaskTemplate.ForceUpdate}}",
            &target
        ]),
        "1",
        "one restart"
    );
    // The claim was released.
    assert_eq!(
        docker(&[
            "config",
            "ls",
            "--filter",
            "label=remediate.io/managed=true",
            "-q"
        ]),
        ""
    );
}

#[tokio::test]
async fn the_swarm_stack_deploys_as_a_healthy_global_service_that_plans_from_its_engine() {
    swarm();
    let tag = unique("stack");
    let image = agent_image(&tag);
    let stack = unique("rtstack");
    let target = unique("rt-stack-target");
    let _c = Cleanup(vec![
        vec!["stack".into(), "rm".into(), stack.clone()],
        vec!["service".into(), "rm".into(), target.clone()],
        vec!["rmi".into(), image.clone()],
    ]);
    busybox_service(&target, &image);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "stack-token\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new("docker")
        .args(["stack", "deploy", "-c"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/swarm/stack.yml"
        ))
        .arg(&stack)
        .env("REMEDIATE_IMAGE", &image)
        .env("REMEDIATE_PORT", port.to_string())
        .env("REMEDIATE_TOKEN_FILE", &token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker stack deploy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svc = format!("{stack}_agent");
    assert_eq!(
        docker(&[
            "service",
            "inspect",
            "-f",
            "{{if .Spec.Mode.Global}}global{{end}}",
            &svc
        ]),
        "global"
    );
    // Healthy: the healthcheck passes on the task's container.
    let mut healthy = false;
    for _ in 0..120 {
        let ids = docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={svc}"),
        ]);
        if let Some(id) = ids.lines().next() {
            if docker(&["inspect", "-f", "{{.State.Health.Status}}", id]) == "healthy" {
                healthy = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        healthy,
        "the agent never became healthy: {}",
        docker(&["service", "ps", "--no-trunc", &svc])
    );
    let url = format!("http://127.0.0.1:{port}");
    let r = reqwest::Client::new()
        .post(format!("{url}/webhook/alertmanager"))
        .bearer_auth("stack-token")
        .body(alert(&target))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The shipped config is shadow mode: the decision is a dry-run planned
    // with the real engine (or, in the default policy's weekend freeze, held by it).
    let id = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={svc}"),
    ]);
    let id = id.lines().next().unwrap().to_string();
    let mut rec = None;
    for _ in 0..100 {
        let text = Command::new("docker")
            .args([
                "exec",
                &id,
                "/bin/busybox",
                "cat",
                "/var/lib/remediate/audit.jsonl",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(&target)) {
            rec = Some(serde_json::from_str::<serde_json::Value>(l).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rec = rec.expect("the agent recorded the alert");
    match rec["decision"].as_str().unwrap() {
        "dry-run" => assert!(
            rec["outcome"].as_str().unwrap().starts_with(&format!(
                "would force a rolling restart of service {target} (ForceUpdate 0 -> 1)"
            )),
            "{rec}"
        ),
        "suppressed" => assert!(
            rec["reason"].as_str().unwrap().starts_with("freeze window"),
            "{rec}"
        ),
        other => panic!("unexpected decision {other}: {rec}"),
    }
    assert_eq!(
        docker(&[
            "service",
            "inspect",
            "-f",
            "{{.Spec.TaskTemplate.ForceUpdate}}",
            &target
        ]),
        "0",
        "shadow mode changed nothing"
    );
}

/// Every run decided for `service` in an agent's audit is finished: an
/// execution verified or failed, or a decision that was not to execute.
fn decided(recs: &[remediate::audit::Record], service: &str) -> bool {
    let mine: Vec<_> = recs
        .iter()
        .filter(|r| r.target.get("name").map(String::as_str) == Some(service))
        .collect();
    !mine.is_empty() && mine.iter().all(|r| r.decision != "execute")
        || mine.iter().any(|r| {
            matches!(
                r.phase,
                remediate::audit::Phase::Verified | remediate::audit::Phase::Failed
            )
        })
}

#[tokio::test]
async fn a_storm_against_three_agents_executes_exactly_the_policys_global_limit() {
    swarm();
    let tag = unique("storm");
    let image = agent_image(&tag);
    let net = unique("rt-storm-net");
    let services: Vec<String> = (0..4).map(|i| unique(&format!("rt-storm{i}"))).collect();
    let agents: Vec<String> = (0..3)
        .map(|i| unique(&format!("rt-storm-agent{i}")))
        .collect();
    let mut cleanup: Vec<Vec<String>> = services
        .iter()
        .map(|s| vec!["service".into(), "rm".into(), s.clone()])
        .collect();
    for a in &agents {
        cleanup.push(vec!["rm".into(), "-f".into(), a.clone()]);
    }
    cleanup.push(vec!["network".into(), "rm".into(), net.clone()]);
    cleanup.push(vec!["rmi".into(), image.clone()]);
    // The counters of policy `default` outlive the run (they are the
    // budget): removed with everything else.
    let counters = || {
        docker(&[
            "config",
            "ls",
            "--filter",
            "label=remediate.io/policy=default",
            "-q",
        ])
        .lines()
        .map(str::to_string)
        .collect::<Vec<_>>()
    };
    for id in counters() {
        docker(&["config", "rm", &id]);
    }
    let _c = Cleanup(cleanup);
    for s in &services {
        busybox_service(s, &image);
    }
    docker(&["network", "create", "--label", "remediate-test=1", &net]);
    let dir = tempfile::tempdir().unwrap();
    // Each agent alone would allow 2 an hour: 6 among three without a
    // cluster-wide budget.
    let urls = start_agents(
        dir.path(),
        &agents,
        &net,
        &image,
        RESTART,
        "spec:\n  rateLimits: [{ scope: global, max: 2, per: 1h }]\n",
    )
    .await;
    // The storm: every service's alert to every agent, each agent getting
    // them in its own order, so that locally they pick different services.
    let client = reqwest::Client::new();
    let storms: Vec<_> = urls
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let (client, u) = (client.clone(), u.clone());
            let order: Vec<String> = (0..services.len())
                .map(|k| services[(i + k) % services.len()].clone())
                .collect();
            tokio::spawn(async move {
                for s in order {
                    let r = client
                        .post(format!("{u}/webhook/alertmanager"))
                        .bearer_auth("race-token")
                        .body(alert(&s))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    for s in storms {
        s.await.unwrap();
    }
    let records = wait_audits(dir.path(), &agents, |recs| {
        services.iter().all(|s| decided(recs, s))
    })
    .await;
    let executed: Vec<(usize, String)> = records
        .iter()
        .enumerate()
        .flat_map(|(i, recs)| {
            recs.iter()
                .filter(|r| r.decision == "execute" && r.phase == remediate::audit::Phase::Verified)
                .map(move |r| (i, r.target["name"].clone()))
        })
        .collect();
    assert_eq!(executed.len(), 2, "exactly the global limit: {records:#?}");
    let restarted: usize = services
        .iter()
        .map(|s| {
            docker(&[
                "service",
                "inspect",
                "-f",
                "{{.Spec.TaskTemplate.ForceUpdate}}",
                s,
            ])
            .parse::<usize>()
            .unwrap()
        })
        .sum();
    assert_eq!(restarted, 2, "two restarts among all services");
    // Every other decision says why: another agent's claim, the cluster's
    // budget, or this agent's own limit.
    for r in records
        .iter()
        .flatten()
        .filter(|r| r.decision == "suppressed")
    {
        assert!(
            r.reason.starts_with("claimed by agent agent-")
                || r.reason
                    .starts_with("cluster-wide rate-limit global 2/1h spent by all agents")
                || r.reason.starts_with("rate-limit global 2/1h"),
            "{}",
            r.reason
        );
    }
    assert!(
        records
            .iter()
            .flatten()
            .any(|r| r.reason.starts_with("cluster-wide rate-limit global 2/1h")),
        "some agent was stopped by the cluster-wide budget, not only its own"
    );
    // One version of the counters is left (older ones collected), holding
    // both executions.
    let left = counters();
    assert_eq!(left.len(), 1, "{left:?}");
    let data = docker(&["config", "inspect", "-f", "{{json .Spec.Data}}", &left[0]]);
    let b64: String = serde_json::from_str(&data).unwrap();
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let h = remediate::coord::History::parse(&String::from_utf8(text).unwrap()).unwrap();
    assert_eq!(h.e.len(), 2, "{h:?}");
    // The claims were released.
    assert_eq!(
        docker(&[
            "config",
            "ls",
            "--filter",
            "label=remediate.io/managed=true",
            "-q"
        ]),
        ""
    );
}
