//! Property tests of the limiter arithmetic, through the engine's decide
//! path: for any sequence of alerts over time and targets, the executions
//! it lets through never exceed a rate limit in any sliding window, never
//! repeat a target inside its cooldown, and nothing is suppressed that the
//! limits would have allowed (the limiter is exact, not just safe). The
//! same holds after the ledger is rebuilt from the audit records.

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use remediate::drivers::Registry;
use remediate::engine::Engine;
use remediate::event::{Event, Labels, Status, TriggerKind};
use remediate::playbook::load::{Config, Source};
use remediate::policy::Decision;
use remediate::policy::Ledger;

const PLAYBOOK: &str = r#"apiVersion: remediate/v1
kind: Playbook
metadata: { name: restart }
spec:
  triggers: [{ alert: ['alertname="Crash"'] }]
  target: { kind: kubernetes.pod, namespace: etl, name: "{{ labels.pod }}" }
  steps: [{ action: kubernetes.pod.restart }]
"#;

fn engine(global: u32, global_per: i64, target: u32, target_per: i64, cooldown: i64) -> Engine {
    let policy = format!(
        "apiVersion: remediate/v1\nkind: Policy\nmetadata: {{ name: default }}\nspec:\n  cooldown: {cooldown}s\n  rateLimits:\n    - {{ scope: global, max: {global}, per: {global_per}s }}\n    - {{ scope: target, max: {target}, per: {target_per}s }}\n"
    );
    let cfg = Config::load(
        &[Source {
            path: "pb.yaml".into(),
            text: PLAYBOOK.into(),
        }],
        &[Source {
            path: "default.yaml".into(),
            text: policy,
        }],
    )
    .unwrap();
    Engine::new(cfg, Registry::new(), "n")
}

fn alert(pod: usize, starts: DateTime<Utc>) -> Event {
    let labels: Labels = [
        ("alertname", "Crash".to_string()),
        ("pod", format!("p{pod}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Event {
        trigger: TriggerKind::Alert,
        status: Status::Firing,
        fingerprint: remediate::event::fingerprint(&labels),
        labels,
        annotations: Labels::new(),
        values: Labels::new(),
        starts_at: Some(starts),
        playbook: None,
    }
}

fn within(execs: &[(i64, usize)], t: i64, per: i64, pod: Option<usize>) -> usize {
    execs
        .iter()
        .filter(|(at, p)| *at > t - per && *at <= t && pod.is_none_or(|x| *p == x))
        .count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn rate_limits_and_cooldowns_are_exact_over_sliding_windows(
        gaps in prop::collection::vec((0i64..400, 0usize..6), 1..120),
        global in 1u32..8,
        global_per in 60i64..3600,
        target in 1u32..4,
        target_per in 60i64..3600,
        cooldown in 0i64..900,
    ) {
        let e = engine(global, global_per, target, target_per, cooldown);
        let t0 = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap();
        let mut ledger = Ledger::default();
        let mut t = 0i64;
        let mut execs: Vec<(i64, usize)> = Vec::new();
        for (gap, pod) in gaps {
            t += gap;
            let now = t0 + Duration::seconds(t);
            let planned = e.decide(&alert(pod, now), false, now, &mut ledger);
            prop_assert_eq!(planned.len(), 1);
            let allowed_by_model = within(&execs, t, global_per, None) < global as usize
                && within(&execs, t, target_per, Some(pod)) < target as usize
                && execs.iter().filter(|(_, p)| *p == pod).all(|(at, _)| t >= at + cooldown);
            match &planned[0].decision {
                Decision::Execute => {
                    prop_assert!(allowed_by_model, "executed at {t} for p{pod} against the limits: {execs:?}");
                    execs.push((t, pod));
                }
                Decision::Suppressed(reason) => {
                    prop_assert!(!allowed_by_model, "suppressed at {t} for p{pod} although the limits allow it: {reason}; {execs:?}");
                    prop_assert!(reason.contains("allows again at"), "{}", reason);
                }
                d => prop_assert!(false, "unexpected decision {d}"),
            }
        }
        // Every window, checked at every execution, holds.
        for (at, pod) in &execs {
            prop_assert!(within(&execs, *at, global_per, None) <= global as usize);
            prop_assert!(within(&execs, *at, target_per, Some(*pod)) <= target as usize);
        }
    }

    #[test]
    fn the_same_decisions_come_from_a_ledger_rebuilt_from_the_audit(
        gaps in prop::collection::vec((0i64..300, 0usize..4), 1..60),
        split in 0usize..60,
    ) {
        // Decide a prefix, write it to the audit, rebuild the ledger from the
        // file (as a restart does) and decide the rest: same outcome as one run.
        let e = engine(5, 1800, 2, 1800, 300);
        let t0 = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap();
        let times: Vec<(DateTime<Utc>, usize)> = gaps
            .iter()
            .scan(0i64, |t, (g, p)| { *t += g; Some((t0 + Duration::seconds(*t), *p)) })
            .collect();
        let mut one = Ledger::default();
        let straight: Vec<String> = times
            .iter()
            .map(|(now, p)| e.decide(&alert(*p, *now), false, *now, &mut one)[0].decision.to_string())
            .collect();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let split = split.min(times.len());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut ledger = Ledger::default();
        let mut got = Vec::new();
        {
            let w = std::sync::Mutex::new(remediate::audit::Writer::open(&path).unwrap());
            for (now, p) in &times[..split] {
                let planned = e.decide(&alert(*p, *now), false, *now, &mut ledger);
                got.push(planned[0].decision.to_string());
                // No driver: execute records planned + failed; the breaker is off.
                for pl in planned {
                    rt.block_on(e.execute(pl, &w, &mut ledger)).unwrap();
                }
            }
        }
        let mut rebuilt = remediate::audit::ledger_from(&remediate::audit::read(&path).unwrap().records);
        for (now, p) in &times[split..] {
            got.push(e.decide(&alert(*p, *now), false, *now, &mut rebuilt)[0].decision.to_string());
        }
        prop_assert_eq!(got, straight);
    }
}
