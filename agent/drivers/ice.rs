//! `iceberg.table.compact`, planning half: reads a table's current snapshot
//! (SQL catalog, manifests) and reports, per partition, data files, bytes,
//! the small-files ratio (files under the threshold / all data files, as
//! remediate_iceberg_table_small_files / remediate_iceberg_table_total_files) and
//! the output files a bin-pack to the target size would write. Partitions
//! with delete files are skipped with the reason.
//!
//! The rewrite and its `replace` commit are not in this build: `apply`
//! refuses and changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableIdent};
use serde::Serialize;
use serde_json::json;

use super::iceberg::Compact;
use super::{Action, DriverError, Outcome, Plan, Registry, Request, Scope, Verdict};
use crate::config::IcebergCatalog;

/// One partition's files.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PartitionStats {
    /// Partition value, as text.
    pub partition: String,
    /// Data files.
    pub files: usize,
    /// Of which under the small-file threshold.
    pub small_files: usize,
    /// Bytes of all data files.
    pub bytes: u64,
    /// Bytes of the small files.
    pub small_bytes: u64,
    /// Rows.
    pub rows: u64,
    /// Delete files (format v2): the partition is skipped.
    pub delete_files: usize,
}

impl PartitionStats {
    /// small files / all data files.
    pub fn ratio(&self) -> f64 {
        if self.files == 0 {
            0.0
        } else {
            self.small_files as f64 / self.files as f64
        }
    }
}

/// The driver: catalogs by name from `backends.iceberg`.
#[derive(Debug)]
pub struct IcebergCompact {
    catalogs: BTreeMap<String, IcebergCatalog>,
}

/// Registers the Iceberg action when catalogs are configured.
pub fn register(reg: &mut Registry, catalogs: &BTreeMap<String, IcebergCatalog>) {
    if !catalogs.is_empty() {
        let _ = reg.register(Arc::new(IcebergCompact {
            catalogs: catalogs.clone(),
        }));
    }
}

fn err(what: &str, e: iceberg::Error) -> DriverError {
    DriverError::retryable(format!("{what}: {e}"))
}

/// Per-partition statistics of the table's current snapshot.
pub async fn stats(
    cfg: &IcebergCatalog,
    catalog_key: &str,
    table: &str,
    small: u64,
) -> Result<Vec<PartitionStats>, DriverError> {
    let cat = iceberg_catalog_sql::SqlCatalogBuilder::default()
        .with_storage_factory(Arc::new(iceberg::io::LocalFsStorageFactory))
        .load(
            cfg.name.clone().unwrap_or_else(|| catalog_key.to_string()),
            HashMap::from_iter([
                (
                    iceberg_catalog_sql::SQL_CATALOG_PROP_URI.to_string(),
                    cfg.uri.clone(),
                ),
                (
                    iceberg_catalog_sql::SQL_CATALOG_PROP_WAREHOUSE.to_string(),
                    cfg.warehouse.clone(),
                ),
            ]),
        )
        .await
        .map_err(|e| err(&format!("catalog {catalog_key}"), e))?;
    let (ns, name) = table.rsplit_once('.').ok_or_else(|| {
        DriverError::permanent(format!("table {table:?}: expected namespace.table"))
    })?;
    let ident = TableIdent::new(
        NamespaceIdent::from_strs(ns.split('.')).map_err(|e| err("namespace", e))?,
        name.to_string(),
    );
    let t = cat
        .load_table(&ident)
        .await
        .map_err(|e| err(&format!("table {table}"), e))?;
    let md = t.metadata();
    let Some(snap) = md.current_snapshot() else {
        return Ok(Vec::new());
    };
    let list = t
        .manifest_list_reader(snap)
        .load()
        .await
        .map_err(|e| err("manifest list", e))?;
    let mut per: BTreeMap<String, PartitionStats> = BTreeMap::new();
    for mf in list.entries() {
        let m = mf
            .load_manifest(t.file_io())
            .await
            .map_err(|e| err(&format!("manifest {}", mf.manifest_path), e))?;
        for e in m.entries() {
            if !e.is_alive() {
                continue;
            }
            let df = e.data_file();
            let key = partition_text(df.partition());
            let s = per.entry(key.clone()).or_insert_with(|| PartitionStats {
                partition: key,
                ..Default::default()
            });
            if df.content_type() != iceberg::spec::DataContentType::Data {
                s.delete_files += 1;
                continue;
            }
            s.files += 1;
            s.bytes += df.file_size_in_bytes();
            s.rows += df.record_count();
            if df.file_size_in_bytes() < small {
                s.small_files += 1;
                s.small_bytes += df.file_size_in_bytes();
            }
        }
    }
    Ok(per.into_values().collect())
}

fn partition_text(p: &iceberg::spec::Struct) -> String {
    let parts: Vec<String> = p
        .iter()
        .map(|f| match f {
            Some(iceberg::spec::Literal::Primitive(v)) => match v {
                iceberg::spec::PrimitiveLiteral::String(s) => s.clone(),
                other => format!("{other:?}"),
            },
            Some(other) => format!("{other:?}"),
            None => "null".into(),
        })
        .collect();
    if parts.is_empty() {
        "(unpartitioned)".into()
    } else {
        parts.join("/")
    }
}

#[async_trait]
impl Action for IcebergCompact {
    fn name(&self) -> &'static str {
        "iceberg.table.compact"
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        let p: Compact = req.parsed()?;
        let key = req.target.get("catalog").cloned().unwrap_or_default();
        let table = req.target.get("name").cloned().unwrap_or_default();
        let cfg = self.catalogs.get(&key).ok_or_else(|| {
            DriverError::permanent(format!(
                "no backends.iceberg catalog named {key:?} (configured: {})",
                self.catalogs.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let all = stats(cfg, &key, &table, p.small_file_threshold.0).await?;
        let mut lines = Vec::new();
        let mut chosen = Vec::new();
        for s in &all {
            if s.delete_files > 0 {
                lines.push(format!(
                    "{}: skipped, {} delete file(s) (format v2 deletes are not rewritten)",
                    s.partition, s.delete_files
                ));
                continue;
            }
            if s.ratio() <= p.min_small_files_ratio || s.small_files < 2 {
                continue;
            }
            let out = s.small_bytes.div_ceil(p.target_file_size.0.max(1)).max(1);
            lines.push(format!(
                "{}: {} files, {} small ({:.0}%), {} -> {} file(s)",
                s.partition,
                s.files,
                s.small_files,
                s.ratio() * 100.0,
                crate::units::ByteSize(s.small_bytes),
                out
            ));
            chosen.push(json!({"partition": s.partition, "files": s.files, "smallFiles": s.small_files,
                "bytes": s.bytes, "smallBytes": s.small_bytes, "ratio": s.ratio(), "outputFiles": out}));
        }
        if let Some(max) = p.max_partitions {
            chosen.truncate(max as usize);
        }
        let files: usize = all.iter().map(|s| s.files).sum();
        let small: usize = all.iter().map(|s| s.small_files).sum();
        Ok(Plan {
            summary: format!(
                "table {key}.{table}: {files} data files, {small} small; compact {} partition(s): {}",
                chosen.len(),
                if lines.is_empty() { "none over the threshold".into() } else { lines.join("; ") }
            ),
            details: json!({"partitions": chosen}),
        })
    }
    async fn apply(&self, _req: &Request, _plan: &Plan) -> Result<Outcome, DriverError> {
        Err(DriverError::permanent(
            "the Iceberg rewrite and its replace commit are not in this build yet; nothing was changed (dry-run plans are real)",
        ))
    }
    async fn verify(&self, _req: &Request, _plan: &Plan) -> Result<Verdict, DriverError> {
        Ok(Verdict::Failed("not applied".into()))
    }
}
