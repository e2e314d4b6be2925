//! deploy/prometheus: the alert rules that raise the alerts the bundled
//! playbooks answer, checked and unit-tested by the real `promtool`; and
//! every alert a bundled playbook matches on is defined there.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn promtool() {
    let ok = Command::new("promtool")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "promtool not found: install it with `apt-get install prometheus` (Debian), or run .ci/run"
    );
}

#[test]
fn rules_pass_promtool_check_and_unit_tests() {
    promtool();
    let dir = root().join("deploy/prometheus");
    let check = Command::new("promtool")
        .args(["check", "rules", "remediate-rules.yaml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let test = Command::new("promtool")
        .args(["test", "rules", "remediate-rules.test.yaml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(test.status.success(), "promtool test rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_a_bundled_playbook_answers_is_defined_in_the_rules() {
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("deploy/prometheus/remediate-rules.yaml")).unwrap(),
    )
    .unwrap();
    let mut defined = std::collections::BTreeSet::new();
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            if let Some(a) = r["alert"].as_str() {
                defined.insert(a.to_string());
            }
        }
    }
    let srcs = remediate::playbook::load::read_dir(&root().join("playbooks")).unwrap();
    let pols = remediate::playbook::load::read_dir(&root().join("policies")).unwrap();
    let cfg = remediate::playbook::load::Config::load(&srcs, &pols).unwrap();
    let mut answered = 0;
    for pb in &cfg.playbooks {
        for t in &pb.alert_triggers {
            let name = t
                .iter()
                .find(|m| m.name == "alertname")
                .map(|m| m.value.clone());
            let name = name.unwrap_or_else(|| {
                panic!("{}: alert trigger without an alertname matcher", pb.name())
            });
            assert!(
                defined.contains(&name),
                "playbook {} answers {name}, which deploy/prometheus does not define",
                pb.name()
            );
            answered += 1;
        }
    }
    assert!(answered >= 8, "{answered}");
}
