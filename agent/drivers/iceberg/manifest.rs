//! Manifest reading with the parsed layout of a manifest's header kept
//! between files.
//!
//! `iceberg::spec::Manifest::parse_avro` (0.10) parses each manifest's Avro
//! header twice (its writer schema is some 4 KB of JSON), parses the table
//! schema and partition spec embedded in the header, builds a reader schema
//! and resolves every entry against it. A table's manifests share one
//! header (same table schema, spec, format version and content), so that
//! work is the same for all of them; it was most of the 0.7 ms of CPU each
//! manifest cost. Here it is done once per distinct header and kept.
//!
//! Entries are decoded against the writer schema (no resolution) and
//! converted to the crate's `ManifestEntry` by field name, with the field
//! set of the crate's own reader schema for the format version, so the
//! result equals `ManifestFile::load_manifest`'s (tests compare the two on
//! tables from pyiceberg and from this crate). Anything outside the common
//! shape (an encrypted manifest, an unknown codec, a partition type other
//! than boolean, int, long, float, double, date, time, timestamp or string,
//! any decoding doubt) goes to the crate's reader instead, which also gives
//! the error for a broken file.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use apache_avro::types::Value;
use apache_avro::{Codec, Schema as AvroSchema};
use iceberg::io::FileIO;
use iceberg::spec::{
    DataContentType, DataFile, DataFileBuilder, DataFileFormat, Datum, FormatVersion, Literal,
    Manifest, ManifestEntry, ManifestFile, ManifestMetadata, ManifestStatus, PrimitiveType, Schema,
    Struct, StructType, Type,
};

/// What every manifest with one header shares.
struct Layout {
    avro: AvroSchema,
    codec: Codec,
    metadata: ManifestMetadata,
    partition_type: StructType,
}

/// Layouts by the header's bytes. Few distinct headers exist (one per
/// table schema, spec and content kind); the bound only guards a process
/// that reads many tables.
static LAYOUTS: LazyLock<Mutex<HashMap<Vec<u8>, Arc<Layout>>>> = LazyLock::new(Default::default);
const MAX_LAYOUTS: usize = 256;

/// Reads the manifest `mf` names, with its entries inheriting the snapshot
/// id and sequence numbers from `mf` as `ManifestFile::load_manifest` does.
pub async fn load(io: &FileIO, mf: &ManifestFile) -> iceberg::Result<Manifest> {
    load_with(io, mf, true).await
}

/// [`load`] without the entries' column statistics (sizes, value, null
/// and NaN counts, lower and upper bounds): what the pick, the exporter
/// and maintenance read, and what they hold for every file of a table;
/// the statistics were most of an entry's memory. A manifest being
/// rewritten is read again with [`load`].
pub async fn load_slim(io: &FileIO, mf: &ManifestFile) -> iceberg::Result<Manifest> {
    load_with(io, mf, false).await
}

async fn load_with(io: &FileIO, mf: &ManifestFile, stats: bool) -> iceberg::Result<Manifest> {
    let (metadata, mut entries) = if mf.key_metadata.is_some() {
        let (entries, metadata) = mf.load_manifest(io).await?.into_parts();
        (
            metadata,
            entries.into_iter().map(Arc::unwrap_or_clone).collect(),
        )
    } else {
        let bytes = io.new_input(&mf.manifest_path)?.read().await?;
        match decode_with(&bytes, stats) {
            Some(m) => m,
            // The crate's reader, on the bytes already read.
            None => {
                let (entries, metadata) = Manifest::parse_avro(&bytes)?.into_parts();
                let entries: Vec<ManifestEntry> =
                    entries.into_iter().map(Arc::unwrap_or_clone).collect();
                (metadata, entries)
            }
        }
    };
    if !stats {
        let spec_id = metadata.partition_spec.spec_id();
        for e in &mut entries {
            if !e.data_file.column_sizes().is_empty() || !e.data_file.lower_bounds().is_empty() {
                e.data_file = without_stats(&e.data_file, spec_id)
                    .map_err(|why| iceberg::Error::new(iceberg::ErrorKind::DataInvalid, why))?;
            }
        }
    }
    for e in &mut entries {
        inherit(e, mf);
    }
    Ok(Manifest::new(metadata, entries))
}

/// `f` without its column statistics (optional in every format version);
/// everything that identifies and counts the file is kept.
pub fn without_stats(f: &DataFile, spec_id: i32) -> Result<DataFile, String> {
    let mut b = DataFileBuilder::default();
    b.content(f.content_type())
        .file_path(f.file_path().to_string())
        .file_format(f.file_format())
        .partition(f.partition().clone())
        .partition_spec_id(spec_id)
        .record_count(f.record_count())
        .file_size_in_bytes(f.file_size_in_bytes())
        .key_metadata(f.key_metadata().map(<[u8]>::to_vec))
        .split_offsets(f.split_offsets().map(<[i64]>::to_vec))
        .equality_ids(f.equality_ids())
        .first_row_id(f.first_row_id())
        .referenced_data_file(f.referenced_data_file())
        .content_offset(f.content_offset())
        .content_size_in_bytes(f.content_size_in_bytes());
    if let Some(id) = f.sort_order_id() {
        b.sort_order_id(id);
    }
    b.build()
        .map_err(|e| format!("entry {}: {e}", f.file_path()))
}

/// `ManifestEntry::inherit_data` (crate-private in 0.10).
fn inherit(e: &mut ManifestEntry, mf: &ManifestFile) {
    const INITIAL_SEQUENCE_NUMBER: i64 = 0;
    if e.snapshot_id.is_none() {
        e.snapshot_id = Some(mf.added_snapshot_id);
    }
    let inherits =
        e.status == ManifestStatus::Added || mf.sequence_number == INITIAL_SEQUENCE_NUMBER;
    if e.sequence_number.is_none() && inherits {
        e.sequence_number = Some(mf.sequence_number);
    }
    if e.file_sequence_number.is_none() && inherits {
        e.file_sequence_number = Some(mf.sequence_number);
    }
}

/// Decodes a manifest file's bytes; `None` when this reader does not
/// handle it (the caller uses the crate's reader).
pub fn decode(bytes: &[u8]) -> Option<(ManifestMetadata, Vec<ManifestEntry>)> {
    decode_with(bytes, true)
}

/// [`decode`], with the column statistics or without them.
fn decode_with(bytes: &[u8], stats: bool) -> Option<(ManifestMetadata, Vec<ManifestEntry>)> {
    let mut r = bytes.strip_prefix(b"Obj\x01")?;
    let header_start = r;
    let meta = read_header_map(&mut r)?;
    let header = &header_start[..header_start.len() - r.len()];
    // The sync marker is per file; it ends the header and every block.
    let (sync, rest) = r.split_first_chunk::<16>()?;
    let layout = layout(header, &meta)?;
    let mut r = rest;
    let mut entries = Vec::new();
    while !r.is_empty() {
        let count = usize::try_from(read_long(&mut r)?).ok()?;
        let size = usize::try_from(read_long(&mut r)?).ok()?;
        if r.len() < size.checked_add(16)? {
            return None;
        }
        let (block, tail) = r.split_at(size);
        let (marker, tail) = tail.split_at(16);
        if marker != sync {
            return None;
        }
        r = tail;
        let mut data = block.to_vec();
        layout.codec.decompress(&mut data).ok()?;
        let mut d = &data[..];
        for _ in 0..count {
            let v = apache_avro::from_avro_datum(&layout.avro, &mut d, None).ok()?;
            entries.push(entry(v, &layout, stats)?);
        }
        if !d.is_empty() {
            return None;
        }
    }
    Some((layout.metadata.clone(), entries))
}

fn layout(header: &[u8], meta: &[(&str, &[u8])]) -> Option<Arc<Layout>> {
    if let Some(l) = LAYOUTS.lock().ok()?.get(header) {
        return Some(l.clone());
    }
    let get = |key: &str| meta.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let avro = AvroSchema::parse_str(std::str::from_utf8(get("avro.schema")?).ok()?).ok()?;
    let codec = match get("avro.codec") {
        None => Codec::Null,
        Some(name) => std::str::from_utf8(name).ok()?.parse().ok()?,
    };
    let user: HashMap<String, Vec<u8>> = meta
        .iter()
        .filter(|(k, _)| !k.starts_with("avro."))
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect();
    let metadata = ManifestMetadata::parse(&user).ok()?;
    let partition_type = metadata
        .partition_spec
        .partition_type(&metadata.schema)
        .ok()?;
    if !partition_type
        .fields()
        .iter()
        .all(|f| supported_partition_type(&f.field_type))
    {
        return None;
    }
    let l = Arc::new(Layout {
        avro,
        codec,
        metadata,
        partition_type,
    });
    let mut cache = LAYOUTS.lock().ok()?;
    if cache.len() >= MAX_LAYOUTS {
        cache.clear();
    }
    cache.insert(header.to_vec(), l.clone());
    Some(l)
}

fn supported_partition_type(t: &Type) -> bool {
    matches!(
        t,
        Type::Primitive(
            PrimitiveType::Boolean
                | PrimitiveType::Int
                | PrimitiveType::Long
                | PrimitiveType::Float
                | PrimitiveType::Double
                | PrimitiveType::Date
                | PrimitiveType::Time
                | PrimitiveType::Timestamp
                | PrimitiveType::Timestamptz
                | PrimitiveType::String
        )
    )
}

/// An Avro zig-zag varint.
fn read_long(r: &mut &[u8]) -> Option<i64> {
    let mut n: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = r.split_first()?;
        *r = rest;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some((n >> 1) as i64 ^ -((n & 1) as i64));
        }
    }
    None
}

fn read_bytes<'a>(r: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = usize::try_from(read_long(r)?).ok()?;
    if r.len() < n {
        return None;
    }
    let (b, rest) = r.split_at(n);
    *r = rest;
    Some(b)
}

/// The file header's metadata, an Avro `map<bytes>`, borrowed.
fn read_header_map<'a>(r: &mut &'a [u8]) -> Option<Vec<(&'a str, &'a [u8])>> {
    let mut m = Vec::new();
    loop {
        let mut count = read_long(r)?;
        if count == 0 {
            return Some(m);
        }
        if count < 0 {
            count = count.checked_neg()?;
            read_long(r)?; // the block's size in bytes
        }
        for _ in 0..count {
            let k = std::str::from_utf8(read_bytes(r)?).ok()?;
            m.push((k, read_bytes(r)?));
        }
    }
}

/// A record's field by name, unwrapped from its union; `None` when absent
/// or null.
fn field<'a>(rec: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    let v = &rec.iter().find(|(n, _)| n == name)?.1;
    let v = match v {
        Value::Union(_, inner) => inner.as_ref(),
        v => v,
    };
    (!matches!(v, Value::Null)).then_some(v)
}

/// An optional field: `Some(None)` when absent or null, `None` when
/// present but not what `f` accepts.
fn opt<T>(
    rec: &[(String, Value)],
    name: &str,
    f: impl FnOnce(&Value) -> Option<T>,
) -> Option<Option<T>> {
    match field(rec, name) {
        None => Some(None),
        Some(v) => f(v).map(Some),
    }
}

fn as_long(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Some(i64::from(*i)),
        Value::Long(l)
        | Value::TimeMicros(l)
        | Value::TimestampMicros(l)
        | Value::LocalTimestampMicros(l) => Some(*l),
        _ => None,
    }
}

fn as_int(v: &Value) -> Option<i32> {
    match v {
        Value::Int(i) | Value::Date(i) => Some(*i),
        Value::Long(l) => i32::try_from(*l).ok(),
        _ => None,
    }
}

fn as_str(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        _ => None,
    }
}

fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::Bytes(b) | Value::Fixed(_, b) => Some(b),
        _ => None,
    }
}

fn as_array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) => Some(a),
        _ => None,
    }
}

fn as_record(v: &Value) -> Option<&[(String, Value)]> {
    match v {
        Value::Record(r) => Some(r),
        _ => None,
    }
}

/// An `array<record{key: int, value: …}>` map field as (key, value) pairs;
/// empty when absent or null, `None` when shaped otherwise.
fn key_values<'a>(rec: &'a [(String, Value)], name: &str) -> Option<Vec<(i32, &'a Value)>> {
    let Some(v) = field(rec, name) else {
        return Some(Vec::new());
    };
    as_array(v)?
        .iter()
        .map(|kv| {
            let kv = as_record(kv)?;
            Some((as_int(field(kv, "key")?)?, field(kv, "value")?))
        })
        .collect()
}

/// Counts as the crate reads them: negative ones are dropped.
fn counts(rec: &[(String, Value)], name: &str) -> Option<HashMap<i32, u64>> {
    let mut m = HashMap::new();
    for (k, v) in key_values(rec, name)? {
        if let Ok(n) = u64::try_from(as_long(v)?) {
            m.insert(k, n);
        }
    }
    Some(m)
}

/// Bounds typed by the table schema; fields no longer in it are dropped,
/// as the crate does.
fn bounds(rec: &[(String, Value)], name: &str, schema: &Schema) -> Option<HashMap<i32, Datum>> {
    let mut m = HashMap::new();
    for (k, v) in key_values(rec, name)? {
        let f = schema
            .field_by_id(k)
            .or_else(|| iceberg::metadata_columns::get_metadata_field(k).ok());
        if let Some(f) = f {
            let t = f.field_type.as_primitive_type()?.clone();
            m.insert(k, Datum::try_from_bytes(as_bytes(v)?, t).ok()?);
        }
    }
    Some(m)
}

/// A partition value of type `t`, as the crate's `RawLiteral` converts it.
fn partition_literal(v: &Value, t: &Type) -> Option<Literal> {
    let Type::Primitive(p) = t else { return None };
    Some(match (p, v) {
        (PrimitiveType::Boolean, Value::Boolean(b)) => Literal::bool(*b),
        (PrimitiveType::Int, v) => Literal::int(as_int(v)?),
        (PrimitiveType::Date, v) => Literal::date(as_int(v)?),
        (PrimitiveType::Long, v) => Literal::long(as_long(v)?),
        (PrimitiveType::Time, v) => Literal::time(as_long(v)?),
        (PrimitiveType::Timestamp, v) => Literal::timestamp(as_long(v)?),
        (PrimitiveType::Timestamptz, v) => Literal::timestamptz(as_long(v)?),
        (PrimitiveType::Float, Value::Float(f)) => Literal::float(*f),
        (PrimitiveType::Double, Value::Double(f)) => Literal::double(*f),
        (PrimitiveType::Double, Value::Float(f)) => Literal::double(f64::from(*f)),
        (PrimitiveType::String, Value::String(s)) => Literal::string(s.clone()),
        _ => return None,
    })
}

/// The partition tuple in the partition type's field order (as schema
/// resolution orders it); a field the writer lacks is null.
fn partition(v: Option<&Value>, t: &StructType) -> Option<Struct> {
    let rec = match v {
        Some(v) => as_record(v)?,
        None => &[],
    };
    let mut values = Vec::with_capacity(t.fields().len());
    for f in t.fields() {
        values.push(match field(rec, &f.name) {
            None => None,
            Some(v) => Some(partition_literal(v, &f.field_type)?),
        });
    }
    Some(Struct::from_iter(values))
}

fn entry(v: Value, l: &Layout, stats: bool) -> Option<ManifestEntry> {
    let rec = as_record(&v)?;
    let v1 = l.metadata.format_version == FormatVersion::V1;
    let status = ManifestStatus::try_from(as_int(field(rec, "status")?)?).ok()?;
    let df = as_record(field(rec, "data_file")?)?;
    let data_file = data_file(df, l, v1, stats)?;
    Some(if v1 {
        ManifestEntry {
            status,
            snapshot_id: Some(as_long(field(rec, "snapshot_id")?)?),
            sequence_number: Some(0),
            file_sequence_number: Some(0),
            data_file,
        }
    } else {
        ManifestEntry {
            status,
            snapshot_id: opt(rec, "snapshot_id", as_long)?,
            sequence_number: opt(rec, "sequence_number", as_long)?,
            file_sequence_number: opt(rec, "file_sequence_number", as_long)?,
            data_file,
        }
    })
}

fn data_file(df: &[(String, Value)], l: &Layout, v1: bool, stats: bool) -> Option<DataFile> {
    let schema = &l.metadata.schema;
    let content = if v1 {
        0
    } else {
        opt(df, "content", as_int)?.unwrap_or(0)
    };
    let long_list = |name| {
        opt(df, name, |v| {
            as_array(v)?.iter().map(as_long).collect::<Option<Vec<_>>>()
        })
    };
    let mut b = DataFileBuilder::default();
    b.content(DataContentType::try_from(content).ok()?)
        .file_path(as_str(field(df, "file_path")?)?.to_string())
        .file_format(
            as_str(field(df, "file_format")?)?
                .parse::<DataFileFormat>()
                .ok()?,
        )
        .partition(partition(field(df, "partition"), &l.partition_type)?)
        .record_count(u64::try_from(as_long(field(df, "record_count")?)?).ok()?)
        .file_size_in_bytes(u64::try_from(as_long(field(df, "file_size_in_bytes")?)?).ok()?);
    if stats {
        b.column_sizes(counts(df, "column_sizes")?)
            .value_counts(counts(df, "value_counts")?)
            .null_value_counts(counts(df, "null_value_counts")?)
            .nan_value_counts(counts(df, "nan_value_counts")?)
            .lower_bounds(bounds(df, "lower_bounds", schema)?)
            .upper_bounds(bounds(df, "upper_bounds", schema)?);
    }
    b.key_metadata(opt(df, "key_metadata", |v| {
        as_bytes(v).map(<[u8]>::to_vec)
    })?)
    .split_offsets(long_list("split_offsets")?)
    .partition_spec_id(l.metadata.partition_spec.spec_id());
    if let Some(id) = opt(df, "sort_order_id", as_int)? {
        b.sort_order_id(id);
    }
    if !v1 {
        let ids = opt(df, "equality_ids", |v| {
            as_array(v)?.iter().map(as_int).collect::<Option<Vec<_>>>()
        })?;
        b.equality_ids(ids)
            .first_row_id(opt(df, "first_row_id", as_long)?)
            .referenced_data_file(opt(df, "referenced_data_file", |v| {
                as_str(v).map(str::to_string)
            })?)
            .content_offset(opt(df, "content_offset", as_long)?)
            .content_size_in_bytes(opt(df, "content_size_in_bytes", as_long)?);
    }
    b.build().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceberg::io::{FileIOBuilder, LocalFsStorageFactory};
    use iceberg::spec::{ManifestWriterBuilder, NestedField, PartitionSpec, Transform};

    fn schema() -> Arc<Schema> {
        Arc::new(
            Schema::builder()
                .with_fields(vec![
                    Arc::new(NestedField::optional(
                        1,
                        "n",
                        Type::Primitive(PrimitiveType::Long),
                    )),
                    Arc::new(NestedField::optional(
                        2,
                        "b",
                        Type::Primitive(PrimitiveType::Binary),
                    )),
                ])
                .build()
                .unwrap(),
        )
    }

    /// Writes a v2 data manifest of two files partitioned by identity of
    /// `column`, with the crate's writer, and returns its listing.
    async fn write(io: &FileIO, path: &str, column: &str, value: Literal) -> ManifestFile {
        let schema = schema();
        let spec = PartitionSpec::builder(schema.clone())
            .add_partition_field(column, column, Transform::Identity)
            .unwrap()
            .build()
            .unwrap();
        let mut w =
            ManifestWriterBuilder::new(io.new_output(path).unwrap(), Some(7), schema, spec.clone())
                .build_v2_data();
        for i in 0..2 {
            let f = DataFileBuilder::default()
                .content(DataContentType::Data)
                .file_path(format!("/data/{column}-{i}.parquet"))
                .file_format(DataFileFormat::Parquet)
                .partition(Struct::from_iter([Some(value.clone())]))
                .record_count(10 + i)
                .file_size_in_bytes(1000 + i)
                .partition_spec_id(spec.spec_id())
                .build()
                .unwrap();
            w.add_file(f, 3).unwrap();
        }
        w.write_manifest_file().await.unwrap()
    }

    #[tokio::test]
    async fn a_long_partition_is_decoded_here_and_a_binary_one_by_the_crate_both_alike() {
        let dir = tempfile::tempdir().unwrap();
        let io = FileIOBuilder::new(Arc::new(LocalFsStorageFactory)).build();
        let long = format!("{}/long.avro", dir.path().display());
        let binary = format!("{}/binary.avro", dir.path().display());
        let cases = [
            (write(&io, &long, "n", Literal::long(5)).await, true),
            (
                write(&io, &binary, "b", Literal::binary(vec![1, 2, 3])).await,
                false,
            ),
        ];
        for (mf, here) in cases {
            let bytes = io
                .new_input(&mf.manifest_path)
                .unwrap()
                .read()
                .await
                .unwrap();
            assert_eq!(decode(&bytes).is_some(), here, "{}", mf.manifest_path);
            let ours = load(&io, &mf).await.unwrap();
            assert_eq!(ours, mf.load_manifest(&io).await.unwrap());
            assert_eq!(ours.entries().len(), 2);
            assert_eq!(ours.entries()[1].data_file().record_count(), 11);
            assert_eq!(ours.entries()[0].snapshot_id(), Some(7), "inherited");
        }
    }

    #[tokio::test]
    async fn broken_bytes_are_left_to_the_crate_which_names_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let io = FileIOBuilder::new(Arc::new(LocalFsStorageFactory)).build();
        let path = format!("{}/m.avro", dir.path().display());
        let mf = write(&io, &path, "n", Literal::long(1)).await;
        let good = std::fs::read(&path).unwrap();
        assert!(decode(&good).is_some());
        assert!(decode(b"not an avro file").is_none());
        assert!(decode(&good[..good.len() - 20]).is_none(), "truncated");
        let mut bad_sync = good.clone();
        let n = bad_sync.len();
        bad_sync[n - 1] ^= 0xff;
        assert!(decode(&bad_sync).is_none(), "sync marker mismatch");
        // A block claiming i64::MAX bytes: refused.
        let mut r = &good[4..];
        read_header_map(&mut r).unwrap();
        let header_end = good.len() - r.len() + 16;
        let mut huge = good[..header_end].to_vec();
        huge.extend_from_slice(&[2]); // one entry
        huge.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(decode(&huge).is_none(), "oversized block");
        std::fs::write(&path, &good[..good.len() - 20]).unwrap();
        let err = load(&io, &mf).await.unwrap_err();
        assert!(!err.to_string().is_empty());
    }
}
