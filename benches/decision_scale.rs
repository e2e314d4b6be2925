//! The cost of one decision against a ledger that already holds many
//! executions: 0 and 1,000,000 earlier executions inside the rate-limit
//! window (1 h), over 20,000 pods and 180 playbooks, under a limiting
//! policy (cooldown, rate limits, breaker: most decisions suppressed) and a
//! permissive one (the same limits checked, never reached: every decision
//! executes and is charged). 200 playbooks, 100k alerts decided per case
//! (parsing excluded). The target: the same cost at 1M as at 0.
//! Run with `cargo bench --bench decision_scale`.

use std::time::Instant;

use remediate::drivers::Registry;
use remediate::engine::Engine;
use remediate::event::Event;
use remediate::playbook::load::{Config, Source};
use remediate::policy::Ledger;
use remediate::trigger::alertmanager::Payload;

#[path = "common/scale.rs"]
mod scale;
use scale::{playbook, LIMITING, PERMISSIVE, PODS};

fn playbooks() -> Vec<Source> {
    (0..200)
        .map(|i| Source {
            path: format!("pb-{i}.yaml").into(),
            text: playbook(i),
        })
        .collect()
}

/// 100,000 events (1,000 bodies of 100): 9 in 10 hit a keyed playbook.
fn events() -> Vec<Event> {
    let mut out = Vec::new();
    for b in 0..1000 {
        let alerts: Vec<String> = (0..100)
            .map(|j| {
                let i = b * 100 + j;
                let name = if i % 10 == 9 { "Unrelated".to_string() } else { format!("Alert{}", (i * 7) % 180) };
                let pod = (i * 13) % PODS;
                format!(
                    r#"{{"status":"firing","labels":{{"alertname":"{name}","namespace":"etl","pod":"spark-{pod}","severity":"warning"}},"annotations":{{}},"startsAt":"2026-11-24T00:55:54Z","fingerprint":"{i:016x}"}}"#
                )
            })
            .collect();
        let body = format!(
            r#"{{"receiver":"agent","status":"firing","alerts":[{}],"version":"4","groupKey":"g"}}"#,
            alerts.join(",")
        );
        out.extend(
            Payload::parse(body.as_bytes())
                .expect("valid body")
                .into_events(),
        );
    }
    out
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let events = events();
    println!("| policy | earlier executions | decisions | ns/decision | executes |");
    println!("|---|---:|---:|---:|---:|");
    for (name, text) in [("limiting", LIMITING), ("permissive", PERMISSIVE)] {
        let policy = [Source {
            path: "default.yaml".into(),
            text: text.into(),
        }];
        let cfg = Config::load(&playbooks(), &policy).expect("bench config loads");
        let engine = Engine::new(cfg, Registry::new(), "bench");
        for earlier in [0usize, 1_000_000] {
            let mut ledger = Ledger::with_horizon(chrono::Duration::days(1));
            // Spread over the 50 minutes before `now`, oldest first, as a
            // ledger is filled.
            let span = 50 * 60 * 1000i64;
            for i in 0..earlier {
                let at =
                    now - chrono::Duration::milliseconds(span - span * i as i64 / earlier as i64);
                let pb = (i * 7) % 180;
                let pod = (i * 31) % PODS;
                ledger.record_execution(
                    at,
                    "default",
                    &format!("pb-{pb}"),
                    &format!("kind=kubernetes.pod|name=spark-{pod}|namespace=etl"),
                );
            }
            // Three passes; the best (least disturbed on a shared machine).
            let mut best = f64::MAX;
            let mut executes = 0;
            let mut decisions = 0;
            for pass in 0..3 {
                let mut l = ledger.clone();
                let t = Instant::now();
                let (mut d, mut x) = (0, 0);
                for (k, ev) in events.iter().enumerate() {
                    l.begin_group((pass * 1000 + k / 100) as u64);
                    for p in engine.decide(ev, false, now, &mut l) {
                        d += 1;
                        x += usize::from(p.decision == remediate::policy::Decision::Execute);
                    }
                }
                let ns = t.elapsed().as_nanos() as f64 / d.max(1) as f64;
                best = best.min(ns);
                (decisions, executes) = (d, x);
            }
            println!("| {name} | {earlier} | {decisions} | {best:.0} | {executes} |");
        }
    }
}
