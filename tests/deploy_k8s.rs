//! deploy/k8s: `kubectl kustomize` builds it, every built-in object
//! validates against the Kubernetes OpenAPI schemas (kubernetes-validate
//! from PyPI, strict: unknown fields rejected), and the rest is checked
//! here: the PrometheusRule equals deploy/prometheus, the shipped playbooks
//! and policies equal the bundled ones and validate, the DaemonSet is
//! locked down, and RBAC grants only what the actions use.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require(cmd: &str, args: &[&str], install: &str) {
    let ok = Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "{cmd} is required: {install} (.ci/run does)");
}

fn build() -> (String, Vec<Value>) {
    require(
        "kubectl",
        &["version", "--client"],
        "install kubectl (Debian: apt-get install kubernetes-client)",
    );
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(root().join("deploy/k8s"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/k8s failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    (text, docs)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not in the build"))
}

fn validate(path: &Path) -> std::process::Output {
    Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.33.0", "--no-warn"])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn the_base_builds_and_every_builtin_object_validates_against_the_openapi_schemas() {
    let (text, docs) = build();
    require(
        "kubernetes-validate",
        &["--version"],
        "pip install kubernetes-validate",
    );
    let dir = tempfile::tempdir().unwrap();
    let built = dir.path().join("built.yaml");
    std::fs::write(&built, &text).unwrap();
    let out = validate(&built);
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Secret",
        "Service",
        "DaemonSet",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
        assert!(
            report.contains(&format!("passed for resource {}/", kind.to_lowercase())),
            "{kind} was not validated: {report}"
        );
    }
    // The validator bites: an unknown field in the DaemonSet fails.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        text.replace(
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: true\n          readOnlyRootFilesytem: true",
        ),
    )
    .unwrap();
    let out = validate(&bad);
    assert!(!out.status.success(), "a misspelt field passed validation");
}

#[test]
fn the_daemonset_is_locked_down_and_mounts_the_host_only_for_disk_prune() {
    let (_, docs) = build();
    let ds = find(&docs, "DaemonSet", "remediate");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["serviceAccountName"], "remediate");
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert!(sc.get("privileged").is_none());
    assert_eq!(c["resources"]["limits"]["memory"], "96Mi");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let host_paths: Vec<&str> = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(
        host_paths,
        vec!["/var/log"],
        "hostPath only for disk-prune roots"
    );
    // The token comes from the generated Secret, the config from ConfigMaps.
    let secret = find(
        &docs,
        "Secret",
        pod["volumes"][3]["secret"]["secretName"].as_str().unwrap(),
    );
    assert!(secret["data"]["token"].is_string());
    // Graceful shutdown fits in the termination grace period.
    let cfg_map = find(
        &docs,
        "ConfigMap",
        pod["volumes"][0]["configMap"]["name"].as_str().unwrap(),
    );
    let agent_yaml = cfg_map["data"]["agent.yaml"].as_str().unwrap();
    let cfg = remediate::config::AgentConfig::parse(Path::new("agent.yaml"), agent_yaml).unwrap();
    assert!(
        pod["terminationGracePeriodSeconds"].as_u64().unwrap() > cfg.shutdown_grace.std().as_secs(),
        "terminationGracePeriodSeconds must exceed shutdownGrace"
    );
    assert!(cfg.dry_run, "the shipped agent starts in shadow mode");
}

#[test]
fn rbac_grants_only_the_verbs_the_actions_use() {
    let (_, docs) = build();
    let role = find(&docs, "ClusterRole", "remediate");
    let mut grants = Vec::new();
    for rule in role["rules"].as_sequence().unwrap() {
        for g in rule["apiGroups"].as_sequence().unwrap() {
            for r in rule["resources"].as_sequence().unwrap() {
                for v in rule["verbs"].as_sequence().unwrap() {
                    grants.push(format!(
                        "{}/{}:{}",
                        g.as_str().unwrap(),
                        r.as_str().unwrap(),
                        v.as_str().unwrap()
                    ));
                }
            }
        }
    }
    for g in &grants {
        assert!(!g.contains('*'), "wildcard grant {g}");
        assert!(!g.contains("/secrets:"), "secrets are never read: {g}");
    }
    for needed in [
        "/pods:delete",
        "/pods/eviction:create",
        "apps/deployments:patch",
        "apps/replicasets:get",
        "sparkoperator.k8s.io/sparkapplications:patch",
        "/events:create",
        "/events:list",
        "/pods/log:get",
    ] {
        assert!(
            grants.iter().any(|g| g == needed),
            "missing {needed}: {grants:?}"
        );
    }
    // Coordination is namespaced to the agent's own namespace, with the
    // verbs the coordinator uses (the full derivation, every request
    // recorded and evaluated, is tests/k8s_kmock.rs).
    let coord = find(&docs, "Role", "remediate-coordination");
    assert_eq!(coord["metadata"]["namespace"], "remediate");
    let verbs = |res: &str| -> Vec<String> {
        coord["rules"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|r| r["resources"][0] == res)
            .unwrap()["verbs"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(verbs("leases"), ["get", "create", "patch", "delete"]);
    assert_eq!(verbs("configmaps"), ["get", "create", "patch"]);
}

#[test]
fn shipped_playbooks_policies_and_rules_equal_the_bundled_ones_and_validate() {
    for (sub, src) in [("playbooks", "playbooks"), ("policies", "policies")] {
        let shipped = root().join("deploy/k8s").join(sub);
        let mut names: Vec<String> = std::fs::read_dir(root().join(src))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") && !n.ends_with(".test.yaml"))
            .collect();
        names.sort();
        let kustomization =
            std::fs::read_to_string(root().join("deploy/k8s/kustomization.yaml")).unwrap();
        for n in &names {
            let a = std::fs::read_to_string(root().join(src).join(n)).unwrap();
            let b = std::fs::read_to_string(shipped.join(n)).unwrap_or_default();
            assert!(
                a == b,
                "deploy/k8s/{sub}/{n} differs from {src}/{n}: copy it (cp {src}/{n} deploy/k8s/{sub}/)"
            );
            assert!(
                kustomization.contains(&format!("{sub}/{n}")),
                "kustomization.yaml does not list {sub}/{n}"
            );
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_remediate"))
        .args(["validate", "--playbooks"])
        .arg(root().join("deploy/k8s/playbooks"))
        .arg("--policies")
        .arg(root().join("deploy/k8s/policies"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (_, docs) = build();
    let rule = find(&docs, "PrometheusRule", "remediate");
    let rules: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("deploy/prometheus/remediate-rules.yaml")).unwrap(),
    )
    .unwrap();
    assert!(
        rule["spec"]["groups"] == rules["groups"],
        "deploy/k8s/prometheusrule.yaml differs from deploy/prometheus/remediate-rules.yaml"
    );
    // The ServiceMonitor scrapes the Service's port by name.
    let sm = find(&docs, "ServiceMonitor", "remediate");
    let svc = find(&docs, "Service", "remediate");
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
}
