//! Evidence: what a driver saw, kept with the run so on-call does not have
//! to look it up (the last termination, log lines, sessions terminated,
//! bytes freed, limits before and after). A driver puts it in its plan's or
//! outcome's `details.evidence` (an object of names to text); the engine
//! takes it from there, scrubs secrets and caps its size, and stores it on
//! the step's audit records, where notifications, `remediate report` and
//! replay read it. Collecting it is the driver's read-only business,
//! bounded by its own timeout; none of it can fail the step.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

/// One value at most this long (bytes), cut with a marker.
pub const MAX_VALUE_BYTES: usize = 2048;
/// All values of one record together at most this long.
pub const MAX_TOTAL_BYTES: usize = 8192;

/// The patterns, compiled once; the unit tests prove each one compiles
/// and matches (a pattern that did not would scrub nothing, never panic).
static SECRETS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        // user:password@ in URLs and connection strings.
        (
            r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s:@]+:[^@\s/]+@",
            "${1}***:***@",
        ),
        (r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+", "$1 ***"),
        // key=value and key: value for secret-looking keys.
        (
            r#"(?i)\b([a-z0-9_.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)[a-z0-9_.-]*)(["']?\s*[:=]\s*["']?)[^\s"',;&]+"#,
            "$1$2***",
        ),
        (r"\bAKIA[0-9A-Z]{16}\b", "AKIA***"),
    ]
    .into_iter()
    .filter_map(|(p, with)| Regex::new(p).ok().map(|r| (r, with)))
    .collect()
});

/// `s` with passwords, tokens and keys replaced by `***`.
pub fn scrub(s: &str) -> String {
    let mut out = s.to_string();
    for (re, with) in SECRETS.iter() {
        out = re.replace_all(&out, *with).into_owned();
    }
    out
}

/// `s` in at most `max` bytes and a marker. Lines (a log tail, events)
/// keep their end, whole lines where it can: the newest lines are the
/// ones on-call needs; one-line values keep their start.
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    if s.contains('\n') {
        let mut start = s.len() - max;
        while !s.is_char_boundary(start) {
            start += 1;
        }
        // From the next whole line, unless that would drop nearly all.
        if let Some(nl) = s[start..].find('\n').filter(|nl| *nl < max / 2) {
            start += nl + 1;
        }
        return format!("[cut {} bytes]…\n{}", start, &s[start..]);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[cut {} bytes]", &s[..end], s.len() - end)
}

/// The evidence in a plan's or outcome's details, scrubbed and capped.
pub fn from_details(details: &serde_json::Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(obj) = details.get("evidence").and_then(|e| e.as_object()) else {
        return out;
    };
    let mut budget = MAX_TOTAL_BYTES;
    for (k, v) in obj {
        if budget == 0 {
            break;
        }
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => continue,
            other => other.to_string(),
        };
        let v = cut(&scrub(&text), MAX_VALUE_BYTES.min(budget));
        budget = budget.saturating_sub(k.len() + v.len());
        out.insert(cut(k, 128), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed_from_what_a_driver_saw() {
        assert_eq!(SECRETS.len(), 4, "every pattern compiles");
        let s = scrub("connecting to postgres://app:hunter2@db:5432/x with PGPASSWORD=hunter2 token: abc.def Authorization: Bearer eyJhbGciOi key AKIAABCDEFGHIJKLMNOP");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(!s.contains("abc.def"), "{s}");
        assert!(!s.contains("eyJhbGciOi"), "{s}");
        assert!(!s.contains("AKIAABCDEFGHIJKLMNOP"), "{s}");
        assert!(s.contains("postgres://***:***@db:5432/x"), "{s}");
        assert!(s.contains("PGPASSWORD=***"), "{s}");
        // Ordinary text is left as it is.
        assert_eq!(
            scrub("exit code 137, OOM-killed, 3 restarts"),
            "exit code 137, OOM-killed, 3 restarts"
        );
    }

    #[test]
    fn evidence_is_read_from_details_and_capped() {
        let big = "x".repeat(5000);
        let d = serde_json::json!({"id": "c1", "evidence": {"exit code": 137, "log": big, "gone": null, "oom": true}});
        let e = from_details(&d);
        assert_eq!(e["exit code"], "137");
        assert_eq!(e["oom"], "true");
        assert!(!e.contains_key("gone"));
        assert!(
            e["log"].len() < 2100 && e["log"].ends_with("…[cut 2952 bytes]"),
            "{}",
            &e["log"][2000..]
        );
        assert!(from_details(&serde_json::json!({"id": 1})).is_empty());
        // A log tail keeps its newest lines, from a line start.
        let log: String = (0..100)
            .map(|i| format!("line {i:03} {}\n", "y".repeat(40)))
            .collect();
        let e = from_details(&serde_json::json!({"evidence": {"last log lines": log.trim_end()}}));
        let t = &e["last log lines"];
        assert!(t.len() <= MAX_VALUE_BYTES + 32, "{}", t.len());
        assert!(
            t.starts_with("[cut ") && t.ends_with(&format!("line 099 {}", "y".repeat(40))),
            "{t}"
        );
        assert!(
            t.lines().nth(1).is_some_and(|l| l.starts_with("line ")),
            "{t}"
        );
        let many: serde_json::Map<String, serde_json::Value> = (0..20)
            .map(|i| (format!("k{i:02}"), serde_json::json!(big.clone())))
            .collect();
        let e = from_details(&serde_json::json!({ "evidence": many }));
        let total: usize = e.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(total <= MAX_TOTAL_BYTES + 64, "{total}");
    }
}
