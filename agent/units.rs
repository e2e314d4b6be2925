//! Human units used in playbooks and policies: durations (`10m`, `1h30m`)
//! and byte sizes (`256Mi`, `4g`, `128MiB`).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written the way operators write them: `30s`, `10m`, `1h30m`, `62h`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// The std duration.
    pub fn std(self) -> std::time::Duration {
        self.0
    }
    /// As a chrono duration (saturating).
    pub fn chrono(self) -> chrono::Duration {
        chrono::Duration::from_std(self.0).unwrap_or(chrono::Duration::MAX)
    }
    /// From whole seconds.
    pub fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("empty duration: expected e.g. 30s, 10m, 1h30m".into());
        }
        humantime::parse_duration(t)
            .map(Duration)
            .map_err(|e| format!("bad duration {s:?}: {e} (expected e.g. 30s, 10m, 1h30m, 7d)"))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration such as 30s, 10m, 1h30m, 62h or 7d.",
            "pattern": "^\\s*([0-9]+\\s*(ns|us|ms|s|sec|m|min|h|hr|d|w)\\s*)+$"
        })
    }
}

/// A size in bytes: `512`, `256Mi`, `1Gi`, `128MiB`, `500M` (decimal, as
/// Kubernetes), or Spark's lower-case `512m`, `4g` (binary, as Spark).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num.parse().map_err(|_| {
            format!("bad size {s:?}: expected a number and a unit, e.g. 256Mi, 4g, 128MiB")
        })?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "Ki" | "KiB" | "k" | "kb" => 1 << 10,
            "Mi" | "MiB" | "m" | "mb" => 1 << 20,
            "Gi" | "GiB" | "g" | "gb" => 1 << 30,
            "Ti" | "TiB" | "t" | "tb" => 1 << 40,
            "K" | "KB" => 1_000,
            "M" | "MB" => 1_000_000,
            "G" | "GB" => 1_000_000_000,
            "T" | "TB" => 1_000_000_000_000,
            other => {
                return Err(format!(
                    "bad size {s:?}: unknown unit {other:?} (expected Ki, Mi, Gi, Ti, KiB.., K, M, G, T, or Spark's k, m, g, t)"
                ))
            }
        };
        let bytes = n * mult as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(format!("bad size {s:?}: out of range"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("Ti", 1 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ];
        for (u, m) in UNITS {
            if self.0 >= m && self.0.is_multiple_of(m) {
                return write!(f, "{}{u}", self.0 / m);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A duration for people, to the second: `42s`, `3m05s`, `2h13m`.
pub fn human_secs(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// A duration in milliseconds for people: `850ms`, `4.2s`, then as
/// [`human_secs`] from a minute on.
pub fn human_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => human_secs(ms / 1000),
    }
}

/// A size for people: `274.3 KiB`, `1.2 GiB`, `512 B`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", UNITS[i])
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "description": "A size: 256Mi, 1Gi, 128MiB, 500M, or Spark's 512m, 4g.",
            "type": ["string", "integer"]
        })
    }
}

/// A memory increase: a percentage of the current value (`25%`) or an absolute size (`256Mi`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Grow by this fraction of the current value (0.25 for `25%`).
    Percent(f64),
    /// Grow by this many bytes.
    Bytes(ByteSize),
}

impl Step {
    /// The value `self` above `current`, at most `ceiling`: a raised limit.
    pub fn bumped(self, current: u64, ceiling: ByteSize) -> u64 {
        let next = match self {
            Step::Percent(f) => current + ((current as f64) * f).ceil() as u64,
            Step::Bytes(b) => current + b.0,
        };
        next.min(ceiling.0)
    }
}

impl FromStr for Step {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| {
                format!("bad step {s:?}: expected a percentage like 25% or a size like 256Mi")
            })?;
            if !(v > 0.0 && v <= 400.0) {
                return Err(format!("bad step {s:?}: percentage must be in (0, 400]"));
            }
            return Ok(Step::Percent(v / 100.0));
        }
        let b: ByteSize = t.parse()?;
        if b.0 == 0 {
            return Err(format!("bad step {s:?}: must be greater than zero"));
        }
        Ok(Step::Bytes(b))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Percent(p) => write!(f, "{}%", p * 100.0),
            Step::Bytes(b) => write!(f, "{b}"),
        }
    }
}

impl Serialize for Step {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Step {
    fn schema_name() -> Cow<'static, str> {
        "MemoryStep".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "description": "An increase: a percentage (25%) or a size (256Mi).",
            "type": "string"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_read_as_people_say_them() {
        assert_eq!(human_ms(0), "0ms");
        assert_eq!(human_ms(850), "850ms");
        assert_eq!(human_ms(4_200), "4.2s");
        assert_eq!(human_ms(75_000), "1m15s");
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(human_secs(0), "0s");
        assert_eq!(human_secs(59), "59s");
        assert_eq!(human_secs(185), "3m05s");
        assert_eq!(human_secs(7980), "2h13m");
    }

    #[test]
    fn durations_parse_operator_forms() {
        assert_eq!("10m".parse::<Duration>().unwrap().0.as_secs(), 600);
        assert_eq!("1h30m".parse::<Duration>().unwrap().0.as_secs(), 5400);
        assert_eq!("62h".parse::<Duration>().unwrap().0.as_secs(), 62 * 3600);
        assert!("10 parsecs".parse::<Duration>().is_err());
        assert!("".parse::<Duration>().is_err());
    }

    #[test]
    fn sizes_follow_kubernetes_and_spark_conventions() {
        assert_eq!("256Mi".parse::<ByteSize>().unwrap().0, 256 << 20);
        assert_eq!("500M".parse::<ByteSize>().unwrap().0, 500_000_000);
        assert_eq!("4g".parse::<ByteSize>().unwrap().0, 4 << 30);
        assert_eq!("128MiB".parse::<ByteSize>().unwrap().0, 128 << 20);
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(280_872), "274.3 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(3 << 30).to_string(), "3Gi");
    }

    #[test]
    fn steps_are_percent_or_size() {
        assert_eq!("25%".parse::<Step>().unwrap(), Step::Percent(0.25));
        assert_eq!(
            "256Mi".parse::<Step>().unwrap(),
            Step::Bytes(ByteSize(256 << 20))
        );
        assert!("0%".parse::<Step>().is_err());
        assert!("0Mi".parse::<Step>().is_err());
    }
}
