//! Equality deletes, applied by the compaction itself.
//!
//! The iceberg 0.10 Arrow reader turns an equality delete into a row filter
//! that also drops rows the delete does not match (see `compact.rs` and
//! the test that pins it), so the rewrite hands the reader position
//! deletes only and applies equality deletes here, by the spec:
//!
//! - A delete file applies to a data file of its partition (or, of an
//!   unpartitioned spec other than the default, to every partition) whose
//!   data sequence number is strictly lower than its own.
//! - A data row is deleted when its values in the delete columns (the
//!   file's `equality_ids`) equal those of any row of the delete file; a
//!   null matches a null (the spec's example: `id = 4 and category is
//!   null`). A column the data file was written without reads as null, by
//!   the normal projection rules, as it does for the rest of the rewrite.
//!
//! Both sides are read through the crate's reader projected onto the
//! current schema, so a renamed column or a promoted type (int to long)
//! compares as one, and the keys are compared in Arrow's row format
//! (`arrow-row`: one byte string per key, equal exactly when every column
//! is equal, nulls included). Per set of delete columns a map holds each
//! deleted key with the highest sequence number deleting it, so a row
//! costs one lookup per set however many delete files there are (a Flink
//! upsert table adds one per checkpoint).
//!
//! What is not applied skips the partition with the reason: a delete
//! column the current schema no longer has, or one nested in a struct, or
//! a float or double column (the spec forbids them), or a delete file
//! that cannot be read, or keys that would need more memory than the
//! rewrite's budget (`maxBytesInFlight`).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow_row::{RowConverter, SortField};
use futures::StreamExt;
use iceberg::scan::FileScanTask;
use iceberg::spec::{DataFile, PrimitiveType, Type};
use iceberg::table::Table;

/// Bytes a held key costs beyond its own (map slot, box, hash).
const KEY_OVERHEAD: u64 = 48;

/// Delete files read ahead of the one being keyed.
const READ_AHEAD: usize = 4;

/// One set of delete columns and the keys deleted by it.
struct KeySet {
    /// Field ids, ascending (the set's identity).
    ids: Vec<i32>,
    /// The columns' names in the current schema (both reads' names).
    names: Vec<String>,
    converter: RowConverter,
    /// Deleted key -> the highest sequence number of a file deleting it.
    keys: HashMap<Box<[u8]>, i64>,
    /// The highest sequence number of any of its files.
    max_seq: i64,
}

/// The equality deletes applying to one partition, read and keyed.
pub struct EqDeletes {
    sets: Vec<KeySet>,
    files: usize,
    rows: u64,
    bytes: u64,
}

impl std::fmt::Debug for EqDeletes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EqDeletes")
            .field("files", &self.files)
            .field("rows", &self.rows)
            .field(
                "keys",
                &self.sets.iter().map(|s| s.keys.len()).sum::<usize>(),
            )
            .finish()
    }
}

/// An equality delete file to apply: the file and its data sequence number.
pub struct EqFile<'a> {
    pub file: &'a DataFile,
    pub seq: i64,
    /// A global delete file (it applies to every partition): its read is
    /// kept in the caller's cache for the other partitions.
    pub shared: bool,
}

/// Reads of shared (global) equality delete files, by path: one read per
/// pick, not one per partition.
pub type Reads = HashMap<String, Arc<Vec<RecordBatch>>>;

impl EqDeletes {
    /// Reads `files` (each an equality delete file) and keys their rows.
    /// `budget` bounds the bytes the keys may hold (`held`: what other
    /// partitions' keys already hold of `maxBytesInFlight`); `cache` keeps
    /// and serves the reads of shared files. The error is the reason to
    /// skip the partition.
    pub async fn read(
        table: &Table,
        files: &[EqFile<'_>],
        name_mapping: Option<Arc<iceberg::spec::NameMapping>>,
        budget: u64,
        held: u64,
        cache: &mut Reads,
    ) -> Result<Self, String> {
        let schema = table.metadata().current_schema().clone();
        let top = schema.as_struct().fields();
        let mut out = EqDeletes {
            sets: Vec::new(),
            files: files.len(),
            rows: 0,
            bytes: 0,
        };
        // Checked first, all of them, so a file that cannot be applied
        // skips the partition before anything is read.
        let mut plans = Vec::with_capacity(files.len());
        for f in files {
            let path = f.file.file_path();
            let mut ids = f.file.equality_ids().unwrap_or_default();
            ids.sort_unstable();
            ids.dedup();
            if ids.is_empty() {
                return Err(format!(
                    "equality delete file {path} names no delete columns (equality_ids); which rows it deletes is unknown, so the partition is left as it is"
                ));
            }
            let mut names = Vec::with_capacity(ids.len());
            for &id in &ids {
                let Some(field) = top.iter().find(|c| c.id == id) else {
                    return Err(if schema.field_by_id(id).is_some() {
                        format!("equality delete file {path} deletes by field {id}, which is nested in a struct; such deletes are not applied by this build, so the partition is left as it is")
                    } else {
                        format!("equality delete file {path} deletes by field {id}, which the current schema no longer has; such deletes are not applied by this build, so the partition is left as it is")
                    });
                };
                if matches!(
                    *field.field_type,
                    Type::Primitive(PrimitiveType::Float | PrimitiveType::Double)
                ) {
                    return Err(format!(
                        "equality delete file {path} deletes by the floating-point column {} (the spec allows no float or double delete column), so the partition is left as it is",
                        field.name
                    ));
                }
                names.push(field.name.clone());
            }
            let task = FileScanTask::builder()
                .with_file_size_in_bytes(f.file.file_size_in_bytes())
                .with_start(0)
                .with_length(f.file.file_size_in_bytes())
                .with_record_count(Some(f.file.record_count()))
                .with_data_file_path(path.to_string())
                .with_data_file_format(f.file.file_format())
                .with_schema(schema.clone())
                .with_project_field_ids(ids.clone())
                .with_predicate(None)
                .with_deletes(Vec::new())
                .with_partition(None)
                .with_partition_spec(None)
                .with_name_mapping(name_mapping.clone())
                .with_case_sensitive(true)
                .build();
            plans.push((f, ids, names, task));
        }
        // Read a few files ahead (a Flink upsert table has one per
        // checkpoint; on object storage each is a round trip), keyed in
        // order as they arrive.
        let mut pending = Vec::with_capacity(plans.len());
        for (f, ids, names, task) in plans {
            let (table, path, seq) = (table.clone(), f.file.file_path().to_string(), f.seq);
            let (shared, cached) = (f.shared, cache.get(&path).cloned());
            pending.push(async move {
                if let Some(batches) = cached {
                    return Ok((path, seq, shared, ids, names, batches));
                }
                let unreadable = |e: &dyn std::fmt::Display| {
                    format!("equality delete file {path} cannot be read ({e}); which rows it deletes is unknown, so the partition is left as it is")
                };
                let mut stream = table
                    .reader_builder()
                    .build()
                    .read(Box::pin(futures::stream::iter([Ok(task)])))
                    .map_err(|e| unreadable(&e))?
                    .stream();
                let mut batches = Vec::new();
                while let Some(batch) = stream.next().await {
                    batches.push(batch.map_err(|e| unreadable(&e))?);
                }
                Ok::<_, String>((path, seq, shared, ids, names, Arc::new(batches)))
            });
        }
        let mut reads = futures::stream::iter(pending).buffered(READ_AHEAD);
        while let Some(read) = reads.next().await {
            let (path, file_seq, shared, ids, names, batches) = read?;
            if shared {
                cache.insert(path.clone(), batches.clone());
            }
            let unreadable = |e: &dyn std::fmt::Display| {
                format!("equality delete file {path} cannot be read ({e}); which rows it deletes is unknown, so the partition is left as it is")
            };
            for batch in batches.iter() {
                let cols = columns(batch, &names).map_err(|e| unreadable(&e))?;
                let set = match out.sets.iter().position(|s| s.ids == ids) {
                    Some(i) => &mut out.sets[i],
                    None => {
                        let fields = cols
                            .iter()
                            .map(|c| SortField::new(c.data_type().clone()))
                            .collect();
                        let converter = RowConverter::new(fields).map_err(|e| unreadable(&e))?;
                        out.sets.push(KeySet {
                            ids: ids.clone(),
                            names: names.clone(),
                            converter,
                            keys: HashMap::new(),
                            max_seq: file_seq,
                        });
                        out.sets.last_mut().expect("just pushed")
                    }
                };
                set.max_seq = set.max_seq.max(file_seq);
                let rows = set
                    .converter
                    .convert_columns(&cols)
                    .map_err(|e| unreadable(&e))?;
                out.rows += rows.num_rows() as u64;
                for row in rows.iter() {
                    let key = row.as_ref();
                    match set.keys.get_mut(key) {
                        Some(seq) => *seq = (*seq).max(file_seq),
                        None => {
                            out.bytes += key.len() as u64 + KEY_OVERHEAD;
                            if out.bytes > budget {
                                let others = if held > 0 {
                                    format!(
                                        ", of which other partitions' equality deletes hold {}; left for the next run",
                                        crate::units::human_bytes(held)
                                    )
                                } else {
                                    String::new()
                                };
                                return Err(format!(
                                    "its {} equality delete file(s) hold more distinct keys than fit the rewrite's memory budget (maxBytesInFlight {}{others}), so the partition is left as it is",
                                    files.len(),
                                    crate::units::human_bytes(budget + held)
                                ));
                            }
                            set.keys.insert(key.into(), file_seq);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Whether any of these deletes applies to data of sequence number `seq`.
    pub fn applies_to(&self, seq: i64) -> bool {
        self.sets.iter().any(|s| s.max_seq > seq)
    }

    /// Delete files read.
    pub fn files(&self) -> usize {
        self.files
    }

    /// Bytes the keys hold (an estimate: key bytes and a map slot each).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// `batch` (a data file of sequence number `seq`, read onto the current
    /// schema) without the rows these deletes delete, and how many they are.
    pub fn filter(&self, batch: RecordBatch, seq: i64) -> Result<(RecordBatch, u64), String> {
        let mut deleted: Option<Vec<bool>> = None;
        for set in self.sets.iter().filter(|s| s.max_seq > seq) {
            let cols = columns(&batch, &set.names)?;
            let rows = set
                .converter
                .convert_columns(&cols)
                .map_err(|e| format!("equality delete key: {e}"))?;
            let d = deleted.get_or_insert_with(|| vec![false; batch.num_rows()]);
            for (i, row) in rows.iter().enumerate() {
                if !d[i] && set.keys.get(row.as_ref()).is_some_and(|&s| s > seq) {
                    d[i] = true;
                }
            }
        }
        let Some(d) = deleted else {
            return Ok((batch, 0));
        };
        let n = d.iter().filter(|&&x| x).count() as u64;
        if n == 0 {
            return Ok((batch, 0));
        }
        let keep = BooleanArray::from_iter(d.into_iter().map(|x| Some(!x)));
        let kept = arrow_select::filter::filter_record_batch(&batch, &keep)
            .map_err(|e| format!("equality delete filter: {e}"))?;
        Ok((kept, n))
    }
}

/// The columns `names` of `batch`.
fn columns(batch: &RecordBatch, names: &[String]) -> Result<Vec<ArrayRef>, String> {
    names
        .iter()
        .map(|n| {
            batch
                .column_by_name(n)
                .cloned()
                .ok_or_else(|| format!("the read lacks delete column {n}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    fn set(names: &[&str], types: &[DataType], keys: &[(Vec<ArrayRef>, i64)]) -> KeySet {
        let converter =
            RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect()).unwrap();
        let mut s = KeySet {
            ids: (1..=names.len() as i32).collect(),
            names: names.iter().map(|n| n.to_string()).collect(),
            converter,
            keys: HashMap::new(),
            max_seq: 0,
        };
        for (cols, seq) in keys {
            let rows = s.converter.convert_columns(cols).unwrap();
            for r in rows.iter() {
                let e = s.keys.entry(r.as_ref().into()).or_insert(*seq);
                *e = (*e).max(*seq);
            }
            s.max_seq = s.max_seq.max(*seq);
        }
        s
    }

    fn batch(ids: Vec<Option<i64>>, notes: Vec<Option<&str>>) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, true),
                Field::new("note", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(notes)),
            ],
        )
        .unwrap()
    }

    fn ids_of(b: &RecordBatch) -> Vec<Option<i64>> {
        b.column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .iter()
            .collect()
    }

    #[test]
    fn a_key_deletes_rows_of_older_data_only_and_a_null_matches_a_null() {
        // Deleted: id 2 (seq 5), id 3 (seq 5, again at seq 9), note null (seq 7).
        let by_id = set(
            &["id"],
            &[DataType::Int64],
            &[
                (vec![Arc::new(Int64Array::from(vec![2, 3]))], 5),
                (vec![Arc::new(Int64Array::from(vec![3]))], 9),
            ],
        );
        let by_note = set(
            &["note"],
            &[DataType::Utf8],
            &[(vec![Arc::new(StringArray::from(vec![None::<&str>]))], 7)],
        );
        let d = EqDeletes {
            sets: vec![by_id, by_note],
            files: 3,
            rows: 4,
            bytes: 0,
        };
        let b = || {
            batch(
                vec![Some(1), Some(2), Some(3), None, Some(5)],
                vec![Some("a"), Some("b"), Some("c"), Some("d"), None],
            )
        };
        // Data of seq 4: ids 2 and 3 and the null note go.
        let (kept, n) = d.filter(b(), 4).unwrap();
        assert_eq!((ids_of(&kept), n), (vec![Some(1), None], 3));
        // Seq 6: id 2's delete (seq 5) no longer applies; id 3's at 9 does.
        let (kept, n) = d.filter(b(), 6).unwrap();
        assert_eq!((ids_of(&kept), n), (vec![Some(1), Some(2), None], 2));
        // Seq 8: only id 3 (seq 9).
        let (kept, n) = d.filter(b(), 8).unwrap();
        assert_eq!(n, 1);
        assert_eq!(ids_of(&kept), vec![Some(1), Some(2), None, Some(5)]);
        // Seq 9 and later: nothing applies; a null id is no deleted id.
        assert!(!d.applies_to(9));
        assert!(d.applies_to(8));
        assert_eq!(d.filter(b(), 9).unwrap().1, 0);
    }

    #[test]
    fn a_two_column_key_needs_both_columns_equal() {
        let s = set(
            &["id", "note"],
            &[DataType::Int64, DataType::Utf8],
            &[(
                vec![
                    Arc::new(Int64Array::from(vec![Some(1), Some(4)])),
                    Arc::new(StringArray::from(vec![Some("a"), None])),
                ],
                3,
            )],
        );
        let d = EqDeletes {
            sets: vec![s],
            files: 1,
            rows: 2,
            bytes: 0,
        };
        let b = batch(
            vec![Some(1), Some(1), Some(4), Some(4)],
            vec![Some("a"), Some("b"), None, Some("x")],
        );
        let (kept, n) = d.filter(b, 1).unwrap();
        assert_eq!(n, 2);
        assert_eq!(ids_of(&kept), vec![Some(1), Some(4)]);
    }
}
