//! Freeze and maintenance windows: cron openings plus a duration, read in
//! the policy's time zone.

use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::decision::Decision;
use super::gate::{GateInput, Stage};

/// A window compiled from its cron expression.
#[derive(Debug, Clone)]
pub struct CompiledWindow {
    cron: cron::Schedule,
    source: String,
    duration: chrono::Duration,
    tz: chrono_tz::Tz,
}

impl CompiledWindow {
    /// Compiles a window read in UTC; the error says what was expected.
    pub fn new(cron_expr: &str, duration: crate::units::Duration) -> Result<Self, String> {
        Self::new_in(cron_expr, duration, chrono_tz::Tz::UTC)
    }

    /// Compiles a window whose cron expression is read in `tz`.
    pub fn new_in(
        cron_expr: &str,
        duration: crate::units::Duration,
        tz: chrono_tz::Tz,
    ) -> Result<Self, String> {
        Ok(Self {
            cron: parse_cron(cron_expr)?,
            source: cron_expr.to_string(),
            duration: duration.chrono(),
            tz,
        })
    }

    /// If open at `now`: when it opened. The latest opening not after `now`
    /// whose duration covers `now` (windows may wrap midnight).
    pub fn open_since(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = self
            .cron
            .after(&(now - self.duration).with_timezone(&self.tz))
            .next()?
            .with_timezone(&Utc);
        (start <= now).then_some(start)
    }

    /// The next time it opens after `now`.
    pub fn next_open(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .after(&now.with_timezone(&self.tz))
            .next()
            .map(|t| t.with_timezone(&Utc))
    }

    fn label(&self) -> String {
        if self.tz == chrono_tz::Tz::UTC {
            self.source.clone()
        } else {
            format!("{} {}", self.source, self.tz.name())
        }
    }
}

/// Parses a cron expression with a seconds field, with an error that says what is expected.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(expr).map_err(|e| {
        // The cron crate's message repeats the input with a caret; keep its last line.
        let e = e.to_string();
        let e = e.lines().last().unwrap_or_default().trim().to_string();
        format!("bad cron {expr:?}: {e} (expected 6 or 7 fields: sec min hour day-of-month month day-of-week [year], e.g. \"0 0 3 * * *\")")
    })
}

/// `windows.freeze`: no changes while one is open.
pub(super) struct Freeze(pub(super) Vec<CompiledWindow>);
impl Stage for Freeze {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        self.0.iter().find_map(|w| {
            w.open_since(i.now).map(|since| {
                Decision::Suppressed(format!(
                    "freeze window \"{}\" for {} (opened {}, allows again at {})",
                    w.label(),
                    humantime::format_duration(w.duration.to_std().unwrap_or_default()),
                    since.format("%Y-%m-%dT%H:%M:%SZ"),
                    (since + w.duration).format("%Y-%m-%dT%H:%M:%SZ")
                ))
            })
        })
    }
}

/// `windows.maintenance`: when set, changes only while one is open.
pub(super) struct Maintenance(pub(super) Vec<CompiledWindow>);
impl Stage for Maintenance {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        if self.0.is_empty() || self.0.iter().any(|w| w.open_since(i.now).is_some()) {
            return None;
        }
        let next = self.0.iter().filter_map(|w| w.next_open(i.now)).min();
        Some(Decision::Suppressed(match next {
            Some(n) => format!(
                "outside maintenance windows (next opens {})",
                n.format("%Y-%m-%dT%H:%M:%SZ")
            ),
            None => "outside maintenance windows (none opens again)".into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn window(cron: &str, dur: &str, tz: &str) -> CompiledWindow {
        CompiledWindow::new_in(cron, dur.parse().unwrap(), tz.parse().unwrap()).unwrap()
    }

    #[test]
    fn windows_in_a_time_zone_follow_its_daylight_saving_changes() {
        // Maintenance 01:00-05:00 Berlin time: UTC+1 in winter, UTC+2 in summer.
        let w = window("0 0 1 * * *", "4h", "Europe/Berlin");
        let table = [
            ("2026-11-25T00:30:00Z", Some("2026-11-25T00:00:00Z")), // 01:30 CET
            ("2026-11-25T03:59:59Z", Some("2026-11-25T00:00:00Z")), // 04:59:59 CET
            ("2026-11-25T04:00:00Z", None),                         // 05:00 CET: closed
            ("2026-11-24T23:59:59Z", None),                         // 00:59:59 CET
            ("2026-07-01T23:30:00Z", Some("2026-07-01T23:00:00Z")), // 01:30 CEST
            ("2026-07-02T02:59:59Z", Some("2026-07-01T23:00:00Z")), // 04:59:59 CEST
            ("2026-07-02T03:00:00Z", None),                         // 05:00 CEST
        ];
        for (now, want) in table {
            assert_eq!(w.open_since(at(now)), want.map(at), "at {now}");
        }
        assert_eq!(
            w.next_open(at("2026-11-25T12:00:00Z")),
            Some(at("2026-11-26T00:00:00Z"))
        );
        // The night the clocks go back (2026-10-25, 03:00 CEST -> 02:00 CET):
        // the duration is elapsed time, so the window opened at 01:00 CEST
        // (23:00Z) closes 4 hours later, at 04:00 CET (03:00Z).
        assert_eq!(
            w.open_since(at("2026-10-25T02:59:59Z")),
            Some(at("2026-10-24T23:00:00Z"))
        );
        assert_eq!(w.open_since(at("2026-10-25T03:00:00Z")), None);
    }

    #[test]
    fn windows_wrap_midnight() {
        let w = window("0 0 22 * * *", "8h", "UTC");
        let table = [
            ("2026-11-25T21:59:59Z", None),
            ("2026-11-25T22:00:00Z", Some("2026-11-25T22:00:00Z")),
            ("2026-11-25T23:59:59Z", Some("2026-11-25T22:00:00Z")),
            ("2026-11-26T00:00:00Z", Some("2026-11-25T22:00:00Z")),
            ("2026-11-26T05:59:59Z", Some("2026-11-25T22:00:00Z")),
            ("2026-11-26T06:00:00Z", None),
        ];
        for (now, want) in table {
            assert_eq!(w.open_since(at(now)), want.map(at), "at {now}");
        }
        // The same window in New York, across midnight there.
        let ny = window("0 0 22 * * *", "8h", "America/New_York");
        assert_eq!(
            ny.open_since(at("2026-11-26T04:00:00Z")), // 23:00 EST
            Some(at("2026-11-26T03:00:00Z"))
        );
        assert_eq!(
            ny.open_since(at("2026-11-26T10:59:59Z")), // 05:59:59 EST
            Some(at("2026-11-26T03:00:00Z"))
        );
        assert_eq!(ny.open_since(at("2026-11-26T11:00:00Z")), None);
    }
}
