//! Decision path: parse a 100-alert Alertmanager webhook body, match it
//! against 200 playbooks, render and gate every match. Budget (DESIGN.md):
//! >= 100k alerts/s on one core. No I/O: audit writes are measured apart.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use remediate::drivers::Registry;
use remediate::engine::Engine;
use remediate::playbook::load::{Config, Source};
use remediate::policy::Ledger;
use remediate::trigger::alertmanager::Payload;

const POLICY: &str = r#"apiVersion: remediate/v1
kind: Policy
metadata: { name: default }
spec:
  rateLimits:
    - { scope: global, max: 100000, per: 1h }
    - { scope: target, max: 3, per: 1h }
  cooldown: 10m
  circuitBreaker: { failures: 3, within: 1h, openFor: 6h }
  windows: { freeze: [{ cron: "0 0 18 * * FRI", duration: 62h }] }
"#;

/// 200 playbooks: 180 keyed on an alertname (as real ones are), 20 matching
/// on other labels only (the slow path every alert is checked against).
fn playbooks() -> Vec<Source> {
    (0..200)
        .map(|i| {
            let trigger = if i < 180 {
                format!(r#"['alertname="Alert{i}"', 'namespace!~"kube-system|kube-public"']"#)
            } else {
                format!(r#"['team=~"team-{i}|other"', 'severity="critical"']"#)
            };
            Source {
                path: format!("pb-{i}.yaml").into(),
                text: format!(
                    "apiVersion: remediate/v1\nkind: Playbook\nmetadata: {{ name: pb-{i} }}\nspec:\n  triggers: [{{ alert: {trigger} }}]\n  target: {{ kind: kubernetes.pod, namespace: \"{{{{ labels.namespace }}}}\", name: \"{{{{ labels.pod }}}}\" }}\n  steps: [{{ action: kubernetes.pod.restart, with: {{ mode: evict }} }}]\n"
                ),
            }
        })
        .collect()
}

/// A webhook body of 100 alerts: 90 hit a keyed playbook, 10 match nothing.
fn body() -> Vec<u8> {
    let alerts: Vec<String> = (0..100)
        .map(|i| {
            let name = if i % 10 == 9 { "Unrelated".to_string() } else { format!("Alert{}", (i * 7) % 180) };
            format!(
                r#"{{"status":"firing","labels":{{"alertname":"{name}","namespace":"etl","pod":"spark-{i}","severity":"warning","job":"kube-state-metrics"}},"annotations":{{"summary":"Pod etl/spark-{i} is crash looping"}},"startsAt":"2026-11-24T00:55:54Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prometheus/graph","fingerprint":"{i:016x}"}}"#
            )
        })
        .collect();
    format!(
        r#"{{"receiver":"agent","status":"firing","alerts":[{}],"groupLabels":{{}},"commonLabels":{{}},"commonAnnotations":{{}},"externalURL":"http://am:9093","version":"4","groupKey":"{{}}:{{}}","truncatedAlerts":0}}"#,
        alerts.join(",")
    )
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let policy = [Source {
        path: "default.yaml".into(),
        text: POLICY.into(),
    }];
    let cfg = Config::load(&playbooks(), &policy).expect("bench config loads");
    let engine = Engine::new(cfg, Registry::new(), "bench");
    let body = body();
    let now = chrono::Utc::now();
    let mut g = c.benchmark_group("decision_path");
    g.throughput(Throughput::Elements(100));
    g.bench_function("parse+match+gate 100 alerts x 200 playbooks", |b| {
        b.iter_batched_ref(
            Ledger::default,
            |ledger| {
                let payload = Payload::parse(&body).expect("valid body");
                let mut runs = 0;
                for ev in payload.events() {
                    runs += engine.decide(&ev, false, now, ledger).len();
                }
                assert_eq!(runs, 90);
                runs
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
