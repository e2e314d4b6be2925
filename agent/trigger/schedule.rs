//! Cron maintenance: when schedule triggers are due.
//!
//! Pure functions of time (time is a parameter), so tests cover time zones,
//! daylight-saving changes and catch-up without sleeping. The agent's
//! scheduler task sleeps until [`next_after`] and sends one event per tick.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::event::{Event, Labels, TriggerKind};
use crate::playbook::load::Config;

/// One schedule trigger of one playbook.
#[derive(Debug, Clone)]
pub struct ScheduleTrigger {
    /// Playbook name.
    pub playbook: String,
    /// Index among the playbook's schedule triggers.
    pub index: usize,
    /// The cron expression as written.
    pub expr: String,
    /// Parsed schedule.
    pub schedule: cron::Schedule,
    /// Values the tick passes.
    pub values: Labels,
}

impl ScheduleTrigger {
    /// The event for a tick due at `due`.
    pub fn event(&self, due: DateTime<Utc>) -> Event {
        Event::for_playbook(
            TriggerKind::Schedule,
            &self.playbook,
            self.values.clone(),
            due,
        )
    }
}

/// Every schedule trigger of the loaded playbooks, as the agent of `node`
/// runs them: a playbook that declares a value `node` which its schedule
/// does not set gets this agent's node (cron maintenance acts where it
/// runs, whatever the value's default for `remediate run --set`).
pub fn triggers(cfg: &Config, node: &str) -> Vec<ScheduleTrigger> {
    cfg.playbooks
        .iter()
        .flat_map(|pb| {
            let declares_node = pb.doc.spec.values.contains_key("node");
            pb.schedules.iter().enumerate().map(move |(index, s)| {
                let mut values = s.values.clone();
                if declares_node && !values.contains_key("node") {
                    values.insert("node".into(), node.to_string());
                }
                ScheduleTrigger {
                    playbook: pb.name().to_string(),
                    index,
                    expr: s.expr.clone(),
                    schedule: s.schedule.clone(),
                    values,
                }
            })
        })
        .collect()
}

/// The first tick strictly after `after`, reading the expression in `tz`.
pub fn next_after(
    schedule: &cron::Schedule,
    tz: Tz,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    schedule
        .after(&after.with_timezone(&tz))
        .next()
        .map(|t| t.with_timezone(&Utc))
}

/// Ticks missed while the agent was down, to run once on start: those due
/// after the last recorded run (and within `window` before `start`), up to
/// `start`, of which only the latest `max` are returned, oldest first.
/// With no recorded run, nothing was missed (the agent is new here).
pub fn missed(
    schedule: &cron::Schedule,
    tz: Tz,
    last_run: Option<DateTime<Utc>>,
    start: DateTime<Utc>,
    window: chrono::Duration,
    max: usize,
) -> Vec<DateTime<Utc>> {
    let Some(last) = last_run else {
        return Vec::new();
    };
    if max == 0 {
        return Vec::new();
    }
    let from = last.max(start - window);
    // Keep only the latest `max` without collecting an unbounded backlog.
    let mut latest = std::collections::VecDeque::with_capacity(max);
    for t in schedule.after(&from.with_timezone(&tz)) {
        let t = t.with_timezone(&Utc);
        if t > start {
            break;
        }
        if latest.len() == max {
            latest.pop_front();
        }
        latest.push_back(t);
    }
    latest.into_iter().collect()
}

/// Random delay in `[0, max]` before a schedule's first tick.
pub fn jitter(max: std::time::Duration) -> std::time::Duration {
    if max.is_zero() {
        return max;
    }
    let ms = max.as_millis().min(u64::MAX as u128) as u64;
    std::time::Duration::from_millis(fastrand::u64(0..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn sched(expr: &str) -> cron::Schedule {
        cron::Schedule::from_str(expr).unwrap()
    }

    #[test]
    fn daily_0300_in_berlin_is_0200_utc_in_winter_and_0100_in_summer() {
        let s = sched("0 0 3 * * *");
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            next_after(&s, tz, at("2026-11-25T12:00:00Z")),
            Some(at("2026-11-26T02:00:00Z"))
        );
        assert_eq!(
            next_after(&s, tz, at("2026-07-01T12:00:00Z")),
            Some(at("2026-07-02T01:00:00Z"))
        );
        assert_eq!(
            next_after(&s, Tz::UTC, at("2026-11-25T12:00:00Z")),
            Some(at("2026-11-26T03:00:00Z"))
        );
    }

    #[test]
    fn a_tick_inside_the_spring_forward_gap_is_not_invented() {
        // 02:30 does not exist in Berlin on 2026-03-29: the next real 02:30 is a day later.
        let s = sched("0 30 2 * * *");
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let next = next_after(&s, tz, at("2026-03-28T23:00:00Z")).unwrap();
        assert_eq!(next, at("2026-03-30T00:30:00Z"));
    }

    #[test]
    fn the_bundled_nightly_prune_runs_on_the_node_of_the_agent_whose_schedule_fires() {
        let src = |p: &str| crate::playbook::load::Source {
            path: p.into(),
            text: std::fs::read_to_string(format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))).unwrap(),
        };
        let cfg = Config::load(
            &[src("playbooks/nightly-disk-prune.yaml")],
            &[src("policies/maintenance.yaml")],
        )
        .unwrap();
        let t = triggers(&cfg, "worker-7");
        assert_eq!(t.len(), 1);
        assert_eq!(
            t[0].values.get("node").map(String::as_str),
            Some("worker-7")
        );
        // A schedule that names its node keeps it.
        let mut cfg = cfg;
        cfg.playbooks[0].schedules[0]
            .values
            .insert("node".into(), "edge-1".into());
        assert_eq!(
            triggers(&cfg, "worker-7")[0]
                .values
                .get("node")
                .map(String::as_str),
            Some("edge-1")
        );
    }

    #[test]
    fn no_recorded_run_means_nothing_missed() {
        let s = sched("0 0 * * * *");
        assert!(missed(
            &s,
            Tz::UTC,
            None,
            at("2026-11-25T12:30:00Z"),
            chrono::Duration::hours(24),
            1
        )
        .is_empty());
    }

    #[test]
    fn a_long_outage_catches_up_only_the_latest_tick() {
        // Hourly, last run 09:00, agent back at 12:30: 10, 11 and 12 were
        // missed; only 12:00 runs.
        let s = sched("0 0 * * * *");
        let got = missed(
            &s,
            Tz::UTC,
            Some(at("2026-11-25T09:00:00Z")),
            at("2026-11-25T12:30:00Z"),
            chrono::Duration::hours(24),
            1,
        );
        assert_eq!(got, vec![at("2026-11-25T12:00:00Z")]);
        let got = missed(
            &s,
            Tz::UTC,
            Some(at("2026-11-25T09:00:00Z")),
            at("2026-11-25T12:30:00Z"),
            chrono::Duration::hours(24),
            2,
        );
        assert_eq!(
            got,
            vec![at("2026-11-25T11:00:00Z"), at("2026-11-25T12:00:00Z")]
        );
    }

    #[test]
    fn catch_up_zero_or_outside_the_window_runs_nothing() {
        let s = sched("0 0 3 * * *");
        let last = Some(at("2026-11-20T03:00:00Z"));
        let start = at("2026-11-25T12:00:00Z");
        assert!(missed(&s, Tz::UTC, last, start, chrono::Duration::hours(24), 0).is_empty());
        // Window of 6h before 12:00 does not reach 03:00.
        assert!(missed(&s, Tz::UTC, last, start, chrono::Duration::hours(6), 1).is_empty());
        assert_eq!(
            missed(&s, Tz::UTC, last, start, chrono::Duration::hours(24), 1),
            vec![at("2026-11-25T03:00:00Z")]
        );
    }

    #[test]
    fn a_run_that_already_happened_is_not_missed() {
        let s = sched("0 0 3 * * *");
        assert!(missed(
            &s,
            Tz::UTC,
            Some(at("2026-11-25T03:00:00Z")),
            at("2026-11-25T12:00:00Z"),
            chrono::Duration::hours(24),
            1
        )
        .is_empty());
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        for _ in 0..1000 {
            assert!(jitter(std::time::Duration::from_secs(3)) <= std::time::Duration::from_secs(3));
        }
        assert!(jitter(std::time::Duration::ZERO).is_zero());
    }
}
