//! A JDBC/SQL catalog in Iceberg Java's V0 layout: `iceberg_tables`
//! without the `iceberg_type` column (what `JdbcCatalog` creates by
//! default, `jdbc.schema-version` unset), and maybe no
//! `iceberg_namespace_properties` table.
//!
//! iceberg-catalog-sql 0.10 assumes the V1 layout: its queries name
//! `iceberg_type` (`no such column: iceberg_type`), and opening it runs
//! `CREATE TABLE IF NOT EXISTS` for both tables, which would change a
//! user's catalog schema. So a V0 catalog is served here with the two
//! operations remediate needs, the statements Java's `JdbcUtil` uses for
//! V0: load a table (read its `metadata_location`) and commit (write the
//! next metadata file, then a compare-and-swap `UPDATE` of
//! `metadata_location` and `previous_metadata_location`). Nothing else is
//! offered, and nothing is ever created or altered.

use async_trait::async_trait;
use iceberg::io::FileIO;
use iceberg::spec::TableMetadata;
use iceberg::table::Table;
use iceberg::{
    Catalog, Error, ErrorKind, Namespace, NamespaceIdent, Result, TableCommit, TableCreation,
    TableIdent,
};
use sqlx::Row;
use std::collections::HashMap;

use super::lake::{CommitError, SqlCommit, Swapped};

/// The layout of a JDBC catalog's `iceberg_tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlLayout {
    /// No `iceberg_type` column (Java's default).
    V0,
    /// With `iceberg_type` (`jdbc.schema-version=V1`, pyiceberg, the
    /// iceberg crate).
    V1,
}

/// Looks at the catalog's `iceberg_tables` without changing anything:
/// `Err` when there is no such table.
pub async fn layout(pool: &sqlx::AnyPool) -> std::result::Result<SqlLayout, sqlx::Error> {
    if sqlx::query("SELECT iceberg_type FROM iceberg_tables WHERE 1 = 0")
        .execute(pool)
        .await
        .is_ok()
    {
        return Ok(SqlLayout::V1);
    }
    sqlx::query("SELECT metadata_location FROM iceberg_tables WHERE 1 = 0")
        .execute(pool)
        .await
        .map(|_| SqlLayout::V0)
}

/// The V0 catalog: loads and commits tables, nothing else.
#[derive(Debug)]
pub struct SqlV0Catalog {
    name: String,
    pool: sqlx::AnyPool,
    file_io: FileIO,
    dollar: bool,
    runtime: iceberg::Runtime,
}

fn unsupported<T>(what: &str) -> Result<T> {
    Err(Error::new(
        ErrorKind::FeatureUnsupported,
        format!("{what}: a catalog in the V0 JDBC layout is only read and committed to here"),
    ))
}

impl SqlV0Catalog {
    /// Serves catalog `name` from `pool`, reading files through `file_io`;
    /// tables run their work on the current Tokio runtime.
    pub fn new(name: String, pool: sqlx::AnyPool, file_io: FileIO, dollar: bool) -> Result<Self> {
        Ok(SqlV0Catalog {
            name,
            pool,
            file_io,
            dollar,
            runtime: iceberg::Runtime::try_current()?,
        })
    }

    async fn location(&self, ident: &TableIdent) -> Result<Option<String>> {
        let sql = if self.dollar {
            "SELECT metadata_location FROM iceberg_tables \
             WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = $3"
        } else {
            "SELECT metadata_location FROM iceberg_tables \
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?"
        };
        let row = sqlx::query(sql)
            .bind(&self.name)
            .bind(ident.namespace().clone().inner().join("."))
            .bind(ident.name())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Unexpected, format!("SELECT iceberg_tables: {e}"))
                    .with_retryable(true)
            })?;
        match row {
            None => Ok(None),
            Some(r) => r
                .try_get::<Option<String>, _>("metadata_location")
                .map_err(|e| {
                    Error::new(
                        ErrorKind::DataInvalid,
                        format!("iceberg_tables.metadata_location: {e}"),
                    )
                })?
                .map(Some)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::DataInvalid,
                        format!("catalog row of {ident} has no metadata_location"),
                    )
                }),
        }
    }
}

#[async_trait]
impl Catalog for SqlV0Catalog {
    async fn list_namespaces(&self, _: Option<&NamespaceIdent>) -> Result<Vec<NamespaceIdent>> {
        unsupported("list namespaces")
    }
    async fn create_namespace(
        &self,
        _: &NamespaceIdent,
        _: HashMap<String, String>,
    ) -> Result<Namespace> {
        unsupported("create namespace")
    }
    async fn get_namespace(&self, _: &NamespaceIdent) -> Result<Namespace> {
        unsupported("get namespace")
    }
    async fn namespace_exists(&self, _: &NamespaceIdent) -> Result<bool> {
        unsupported("namespace exists")
    }
    async fn update_namespace(&self, _: &NamespaceIdent, _: HashMap<String, String>) -> Result<()> {
        unsupported("update namespace")
    }
    async fn drop_namespace(&self, _: &NamespaceIdent) -> Result<()> {
        unsupported("drop namespace")
    }
    async fn list_tables(&self, _: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        unsupported("list tables")
    }
    async fn create_table(&self, _: &NamespaceIdent, _: TableCreation) -> Result<Table> {
        unsupported("create table")
    }
    async fn load_table(&self, ident: &TableIdent) -> Result<Table> {
        let Some(loc) = self.location(ident).await? else {
            return Err(Error::new(
                ErrorKind::TableNotFound,
                format!("no table {ident} in catalog {}", self.name),
            ));
        };
        let md = TableMetadata::read_from(&self.file_io, &loc).await?;
        Table::builder()
            .file_io(self.file_io.clone())
            .identifier(ident.clone())
            .metadata_location(loc)
            .metadata(md)
            .runtime(self.runtime.clone())
            .build()
    }
    async fn drop_table(&self, _: &TableIdent) -> Result<()> {
        unsupported("drop table")
    }
    async fn purge_table(&self, _: &TableIdent) -> Result<()> {
        unsupported("purge table")
    }
    async fn table_exists(&self, ident: &TableIdent) -> Result<bool> {
        Ok(self.location(ident).await?.is_some())
    }
    async fn rename_table(&self, _: &TableIdent, _: &TableIdent) -> Result<()> {
        unsupported("rename table")
    }
    async fn register_table(&self, _: &TableIdent, _: String) -> Result<Table> {
        unsupported("register table")
    }
    /// The crate's transactions (snapshot expiry) commit through this:
    /// the requirements are checked on the current state and the row is
    /// swapped from that state's location, or the commit conflicts.
    async fn update_table(&self, mut commit: TableCommit) -> Result<Table> {
        let ident = commit.identifier().clone();
        let current = self.load_table(&ident).await?;
        let sql = SqlCommit {
            pool: &self.pool,
            catalog_name: &self.name,
            dollar: self.dollar,
        };
        let requirements = commit.take_requirements();
        match sql
            .attempt(&current, &requirements, commit.take_updates())
            .await
        {
            Ok(Swapped::Yes) => self.load_table(&ident).await,
            Ok(Swapped::MovedOn(from)) => Err(Error::new(
                ErrorKind::CatalogCommitConflicts,
                format!("{ident}: metadata moved on from {from}"),
            )
            .with_retryable(true)),
            Err(CommitError::Conflict(m)) => Err(Error::new(ErrorKind::CatalogCommitConflicts, m)),
            Err(e @ CommitError::Unknown(_)) => {
                Err(Error::new(ErrorKind::Unexpected, e.to_string()))
            }
            Err(CommitError::Failed(m)) => Err(Error::new(ErrorKind::Unexpected, m)),
        }
    }
}
