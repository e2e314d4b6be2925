//! Audit timestamps, written and read without chrono's general-purpose
//! formatter and parser on the common path: every record carries two or
//! three, and `run` and `replay` handle a million records.
//!
//! The text is exactly chrono's (`DateTime<Utc>`'s `Serialize`: RFC 3339,
//! `Z`, the fraction in 0, 3, 6 or 9 digits, whichever is shortest and
//! exact). What the fast path does not handle (a year outside 0..=9999, a
//! leap second, an offset, a fraction of another length) goes to chrono,
//! so every text chrono reads is read to the same value, and every value
//! is written as chrono writes it; the property tests below hold both.

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Timelike, Utc};
use serde::{Deserializer, Serializer};

/// Writes `dt` as chrono does, into `buf`; the length, or None where only
/// chrono's formatter applies (a year outside 0..=9999, a leap second).
fn format(dt: &DateTime<Utc>, buf: &mut [u8; 30]) -> Option<usize> {
    let year = dt.year();
    let nano = dt.nanosecond();
    if !(0..=9999).contains(&year) || nano >= 1_000_000_000 {
        return None;
    }
    let mut put = |at: usize, v: u32, digits: usize| {
        let mut v = v;
        for i in (0..digits).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year as u32, 4);
    put(5, dt.month(), 2);
    put(8, dt.day(), 2);
    put(11, dt.hour(), 2);
    put(14, dt.minute(), 2);
    put(17, dt.second(), 2);
    let mut n = 19;
    let (digits, frac) = if nano == 0 {
        (0, 0)
    } else if nano.is_multiple_of(1_000_000) {
        (3, nano / 1_000_000)
    } else if nano.is_multiple_of(1_000) {
        (6, nano / 1_000)
    } else {
        (9, nano)
    };
    if digits > 0 {
        put(n + 1, frac, digits);
        buf[n] = b'.';
        n += 1 + digits;
    }
    buf[4] = b'-';
    buf[7] = b'-';
    buf[10] = b'T';
    buf[13] = b':';
    buf[16] = b':';
    buf[n] = b'Z';
    Some(n + 1)
}

/// `serialize_with` for a `DateTime<Utc>`.
pub fn serialize<S: Serializer>(dt: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 30];
    match format(dt, &mut buf) {
        // ASCII digits and separators only.
        Some(n) => s.serialize_str(std::str::from_utf8(&buf[..n]).unwrap_or_default()),
        None => serde::Serialize::serialize(dt, s),
    }
}

/// `serialize_with` for an `Option<DateTime<Utc>>`.
pub fn serialize_opt<S: Serializer>(dt: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match dt {
        Some(dt) => s.serialize_some(&Ts(dt)),
        None => s.serialize_none(),
    }
}

struct Ts<'a>(&'a DateTime<Utc>);

impl serde::Serialize for Ts<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize(self.0, s)
    }
}

/// Reads `YYYY-MM-DDTHH:MM:SS[.fff|.ffffff|.fffffffff]Z`, the form chrono
/// writes; None for anything else (chrono reads it then).
fn parse_fast(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    let digits = |from: usize, len: usize| -> Option<u32> {
        let mut v = 0u32;
        for &c in b.get(from..from + len)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
        }
        Some(v)
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[b.len() - 1] != b'Z'
    {
        return None;
    }
    let nano = match b.len() - 20 {
        0 => 0,
        4 if b[19] == b'.' => digits(20, 3)? * 1_000_000,
        7 if b[19] == b'.' => digits(20, 6)? * 1_000,
        10 if b[19] == b'.' => digits(20, 9)?,
        _ => return None,
    };
    let second = digits(17, 2)?;
    if second > 59 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(
        i32::try_from(digits(0, 4)?).ok()?,
        digits(5, 2)?,
        digits(8, 2)?,
    )?;
    let time = NaiveTime::from_hms_nano_opt(digits(11, 2)?, digits(14, 2)?, second, nano)?;
    Some(date.and_time(time).and_utc())
}

struct Visitor;

impl serde::de::Visitor<'_> for Visitor {
    type Value = DateTime<Utc>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an RFC 3339 formatted date and time string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        match parse_fast(v) {
            Some(dt) => Ok(dt),
            None => v
                .parse::<DateTime<chrono::FixedOffset>>()
                .map(|d| d.with_timezone(&Utc))
                .map_err(E::custom),
        }
    }
}

/// `deserialize_with` for a `DateTime<Utc>`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    d.deserialize_str(Visitor)
}

/// `deserialize_with` for an `Option<DateTime<Utc>>` (null or absent: None).
pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    struct Opt;
    impl<'de> serde::de::Visitor<'de> for Opt {
        type Value = Option<DateTime<Utc>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("null or an RFC 3339 formatted date and time string")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            deserialize(d).map(Some)
        }
    }
    d.deserialize_option(Opt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Ours {
        #[serde(serialize_with = "serialize", deserialize_with = "deserialize")]
        at: DateTime<Utc>,
        #[serde(
            default,
            serialize_with = "serialize_opt",
            deserialize_with = "deserialize_opt"
        )]
        opt: Option<DateTime<Utc>>,
    }

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Chrono {
        at: DateTime<Utc>,
        #[serde(default)]
        opt: Option<DateTime<Utc>>,
    }

    /// Times from before year 0 to after 9999, with fractions that are
    /// whole seconds, milliseconds, microseconds or nanoseconds, and leap
    /// seconds.
    fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
        (
            -400_000_000_000i64..400_000_000_000i64,
            prop_oneof![
                Just(0u32),
                (0u32..1000).prop_map(|m| m * 1_000_000),
                (0u32..1_000_000).prop_map(|u| u * 1_000),
                0u32..1_000_000_000,
                1_000_000_000u32..2_000_000_000,
            ],
        )
            .prop_filter_map("a representable time", |(secs, nano)| {
                DateTime::from_timestamp(secs, nano)
            })
    }

    proptest! {
        /// Written exactly as chrono writes it, and read back to the same value.
        #[test]
        fn writes_as_chrono(at in any_time(), opt in proptest::option::of(any_time())) {
            let ours = serde_json::to_string(&Ours { at, opt }).unwrap();
            let theirs = serde_json::to_string(&Chrono { at, opt }).unwrap();
            prop_assert_eq!(&ours, &theirs);
            let back: Ours = serde_json::from_str(&ours).unwrap();
            prop_assert_eq!(back, Ours { at, opt });
        }

        /// Any text chrono reads is read to the same value; any it refuses
        /// is refused.
        #[test]
        fn reads_as_chrono(
            y in 0u32..10000, mo in 0u32..14, d in 0u32..33, h in 0u32..25,
            mi in 0u32..61, s in 0u32..62, frac in "(\\.[0-9]{1,10})?", zone in "(Z|z|\\+01:30|-00:00|)",
            t in "[T t]",
        ) {
            let text = format!("{y:04}-{mo:02}-{d:02}{t}{h:02}:{mi:02}:{s:02}{frac}{zone}");
            let json = format!(r#"{{"at":"{text}","opt":"{text}"}}"#);
            let ours = serde_json::from_str::<Ours>(&json).ok();
            let theirs = serde_json::from_str::<Chrono>(&json).ok();
            prop_assert_eq!(ours.as_ref().map(|o| (o.at, o.opt)), theirs.as_ref().map(|c| (c.at, c.opt)), "{}", text);
        }
    }

    #[test]
    fn absent_and_null_are_none() {
        let a: Ours = serde_json::from_str(r#"{"at":"2026-12-01T18:00:00Z"}"#).unwrap();
        let b: Ours = serde_json::from_str(r#"{"at":"2026-12-01T18:00:00Z","opt":null}"#).unwrap();
        assert_eq!(a.opt, None);
        assert_eq!(b.opt, None);
        assert_eq!(
            a.at,
            "2026-12-01T18:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        // An escaped character (valid JSON) still reads.
        let c: Ours = serde_json::from_str(r#"{"at":"2026-12-01T18:00:00\u005a"}"#).unwrap();
        assert_eq!(c.at, a.at);
    }
}
