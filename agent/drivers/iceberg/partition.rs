//! Partition values as people read them, as Iceberg Java's
//! `Transform::toHumanString` prints them: `day` as `2026-11-25`, `month`
//! as `2026-11`, `hour` as `2026-11-25-13`, `year` as `2026`; identity and
//! truncate as the value (a date column's value as a date, a timestamp's
//! as `2026-11-25T10:30:00`, a decimal with its scale); bucket as its
//! number. Used wherever a partition is printed: plan and outcome
//! summaries, the audit, logs.

use std::collections::HashMap;

use iceberg::spec::{
    Literal, PartitionSpec, PrimitiveLiteral, PrimitiveType, Schema, Struct, TableMetadata,
    Transform,
};

/// How to print the values of one partition spec.
#[derive(Debug, Clone, Default)]
pub struct PartitionFormat {
    /// Each field's transform and source column type (`None`: the source
    /// column is no longer in the schema).
    fields: Vec<(Transform, Option<PrimitiveType>)>,
}

impl PartitionFormat {
    /// The format of `spec` over `schema`.
    pub fn new(spec: &PartitionSpec, schema: &Schema) -> Self {
        PartitionFormat {
            fields: spec
                .fields()
                .iter()
                .map(|f| {
                    let t = schema
                        .field_by_id(f.source_id)
                        .and_then(|n| n.field_type.as_primitive_type().cloned());
                    (f.transform, t)
                })
                .collect(),
        }
    }

    /// A partition's value as text: `alpha`, `2026-11-25/7`,
    /// `(unpartitioned)`.
    pub fn text(&self, p: &Struct) -> String {
        let parts: Vec<String> = p
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                None => "null".into(),
                Some(Literal::Primitive(v)) => match self.fields.get(i) {
                    Some((t, src)) => human(*t, src.as_ref(), v),
                    None => plain(v),
                },
                Some(other) => format!("{other:?}"),
            })
            .collect();
        if parts.is_empty() {
            "(unpartitioned)".into()
        } else {
            parts.join("/")
        }
    }
}

/// The formats of every partition spec of a table, by spec id.
#[derive(Debug, Clone, Default)]
pub struct PartitionFormats(HashMap<i32, PartitionFormat>);

impl PartitionFormats {
    /// Every spec of `md`, over its current schema.
    pub fn of(md: &TableMetadata) -> Self {
        let schema = md.current_schema();
        PartitionFormats(
            md.partition_specs_iter()
                .map(|s| (s.spec_id(), PartitionFormat::new(s, schema)))
                .collect(),
        )
    }

    /// `p` of spec `spec_id` as text (plain values for an unknown spec).
    pub fn text(&self, spec_id: i32, p: &Struct) -> String {
        match self.0.get(&spec_id) {
            Some(f) => f.text(p),
            None => PartitionFormat::default().text(p),
        }
    }
}

const DAY_US: i64 = 86_400_000_000;

fn date(days: i64) -> Option<String> {
    let d = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?
        .checked_add_signed(chrono::TimeDelta::try_days(days)?)?;
    Some(d.format("%Y-%m-%d").to_string())
}

fn timestamp(micros: i64, zone: bool) -> Option<String> {
    let t = chrono::DateTime::from_timestamp_micros(micros)?.naive_utc();
    let fmt = if micros.rem_euclid(1_000_000) == 0 {
        "%Y-%m-%dT%H:%M:%S"
    } else {
        "%Y-%m-%dT%H:%M:%S%.6f"
    };
    Some(format!("{}{}", t.format(fmt), if zone { "Z" } else { "" }))
}

fn human(t: Transform, src: Option<&PrimitiveType>, v: &PrimitiveLiteral) -> String {
    use PrimitiveLiteral as L;
    use PrimitiveType as P;
    let text = match (t, v) {
        (Transform::Year, L::Int(y)) => Some(format!("{:04}", 1970 + i64::from(*y))),
        (Transform::Month, L::Int(m)) => {
            let m = i64::from(*m);
            Some(format!(
                "{:04}-{:02}",
                1970 + m.div_euclid(12),
                m.rem_euclid(12) + 1
            ))
        }
        (Transform::Day, L::Int(d)) => date(i64::from(*d)),
        (Transform::Hour, L::Int(h)) => {
            let h = i64::from(*h);
            date(h.div_euclid(24)).map(|d| format!("{d}-{:02}", h.rem_euclid(24)))
        }
        (Transform::Identity | Transform::Truncate(_), v) => match (src, v) {
            (Some(P::Date), L::Int(d)) => date(i64::from(*d)),
            (Some(P::Time), L::Long(us)) => {
                timestamp(us.rem_euclid(DAY_US), false).map(|s| s[11..].to_string())
            }
            (Some(P::Timestamp), L::Long(us)) => timestamp(*us, false),
            (Some(P::Timestamptz), L::Long(us)) => timestamp(*us, true),
            (Some(P::TimestampNs), L::Long(ns)) => timestamp(ns.div_euclid(1000), false),
            (Some(P::TimestamptzNs), L::Long(ns)) => timestamp(ns.div_euclid(1000), true),
            (Some(P::Decimal { scale, .. }), L::Int128(v)) => Some(decimal(*v, *scale)),
            (Some(P::Uuid), L::UInt128(u)) => Some(uuid::Uuid::from_u128(*u).to_string()),
            _ => None,
        },
        _ => None,
    };
    text.unwrap_or_else(|| plain(v))
}

fn decimal(v: i128, scale: u32) -> String {
    if scale == 0 {
        return v.to_string();
    }
    let digits = v.unsigned_abs().to_string();
    let scale = scale as usize;
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = digits.split_at(digits.len() - scale);
    format!("{}{int}.{frac}", if v < 0 { "-" } else { "" })
}

fn plain(v: &PrimitiveLiteral) -> String {
    use PrimitiveLiteral as L;
    match v {
        L::String(s) => s.clone(),
        L::Int(i) => i.to_string(),
        L::Long(i) => i.to_string(),
        L::Boolean(b) => b.to_string(),
        L::Float(f) => f.to_string(),
        L::Double(f) => f.to_string(),
        L::Int128(i) => i.to_string(),
        L::UInt128(u) => u.to_string(),
        L::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceberg::spec::{NestedField, Type};

    fn format(fields: &[(Transform, PrimitiveType)]) -> PartitionFormat {
        PartitionFormat {
            fields: fields.iter().map(|(t, p)| (*t, Some(p.clone()))).collect(),
        }
    }

    fn text(t: Transform, src: PrimitiveType, v: PrimitiveLiteral) -> String {
        format(&[(t, src)]).text(&Struct::from_iter([Some(Literal::Primitive(v))]))
    }

    #[test]
    fn time_transforms_print_as_dates_months_hours_and_years() {
        use PrimitiveLiteral::Int;
        // 2026-11-25 is day 20782 since 1970-01-01.
        assert_eq!(
            text(Transform::Day, PrimitiveType::Timestamp, Int(20782)),
            "2026-11-25"
        );
        assert_eq!(
            text(Transform::Day, PrimitiveType::Date, Int(-1)),
            "1969-12-31"
        );
        assert_eq!(
            text(
                Transform::Month,
                PrimitiveType::Date,
                Int((2026 - 1970) * 12 + 10)
            ),
            "2026-11"
        );
        assert_eq!(
            text(Transform::Month, PrimitiveType::Date, Int(-1)),
            "1969-12"
        );
        assert_eq!(
            text(
                Transform::Hour,
                PrimitiveType::Timestamptz,
                Int(20782 * 24 + 13)
            ),
            "2026-11-25-13"
        );
        assert_eq!(
            text(Transform::Hour, PrimitiveType::Timestamp, Int(-1)),
            "1969-12-31-23"
        );
        assert_eq!(text(Transform::Year, PrimitiveType::Date, Int(56)), "2026");
    }

    #[test]
    fn identity_and_truncate_print_the_value() {
        use PrimitiveLiteral as L;
        use PrimitiveType as P;
        assert_eq!(
            text(Transform::Identity, P::String, L::String("alpha".into())),
            "alpha"
        );
        assert_eq!(
            text(Transform::Truncate(2), P::String, L::String("s1".into())),
            "s1"
        );
        assert_eq!(text(Transform::Truncate(10), P::Long, L::Long(120)), "120");
        assert_eq!(text(Transform::Identity, P::Int, L::Int(7)), "7");
        assert_eq!(
            text(Transform::Identity, P::Boolean, L::Boolean(true)),
            "true"
        );
        assert_eq!(
            text(Transform::Identity, P::Double, L::Double(2.25.into())),
            "2.25"
        );
        assert_eq!(
            text(Transform::Identity, P::Date, L::Int(20782)),
            "2026-11-25"
        );
        let us = 20782 * DAY_US + (10 * 3600 + 30 * 60) * 1_000_000;
        assert_eq!(
            text(Transform::Identity, P::Timestamp, L::Long(us)),
            "2026-11-25T10:30:00"
        );
        assert_eq!(
            text(Transform::Identity, P::Timestamptz, L::Long(us + 5)),
            "2026-11-25T10:30:00.000005Z"
        );
        assert_eq!(
            text(Transform::Identity, P::Time, L::Long(3_600_000_000)),
            "01:00:00"
        );
        let dec = P::Decimal {
            precision: 9,
            scale: 2,
        };
        assert_eq!(
            text(Transform::Identity, dec.clone(), L::Int128(-1234)),
            "-12.34"
        );
        assert_eq!(text(Transform::Truncate(10), dec, L::Int128(5)), "0.05");
        assert_eq!(text(Transform::Bucket(16), P::Long, L::Int(3)), "3");
    }

    #[test]
    fn several_fields_nulls_and_no_fields() {
        let f = format(&[
            (Transform::Day, PrimitiveType::Timestamp),
            (Transform::Identity, PrimitiveType::Int),
        ]);
        let p = Struct::from_iter([Some(Literal::Primitive(PrimitiveLiteral::Int(20782))), None]);
        assert_eq!(f.text(&p), "2026-11-25/null");
        assert_eq!(
            PartitionFormat::default().text(&Struct::empty()),
            "(unpartitioned)"
        );
    }

    #[test]
    fn a_spec_is_read_against_the_schema() {
        let schema = Schema::builder()
            .with_fields(vec![
                NestedField::optional(1, "ts", Type::Primitive(PrimitiveType::Timestamp)).into(),
                NestedField::optional(2, "s", Type::Primitive(PrimitiveType::String)).into(),
            ])
            .build()
            .unwrap();
        let spec = PartitionSpec::builder(schema.clone())
            .add_partition_field("ts", "ts_day", Transform::Day)
            .unwrap()
            .add_partition_field("s", "s_trunc", Transform::Truncate(2))
            .unwrap()
            .build()
            .unwrap();
        let p = Struct::from_iter([
            Some(Literal::Primitive(PrimitiveLiteral::Int(20782))),
            Some(Literal::Primitive(PrimitiveLiteral::String("s1".into()))),
        ]);
        assert_eq!(
            PartitionFormat::new(&spec, &schema).text(&p),
            "2026-11-25/s1"
        );
    }
}
