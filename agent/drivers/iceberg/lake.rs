//! One configured Iceberg catalog: loading tables through the iceberg
//! crate's SQL or REST catalog, and committing a prepared list of
//! requirements and updates (the catalog protocol's own language).
//!
//! Why the commit is here: iceberg 0.10 builds a `TableCommit` only inside
//! its own `Transaction`, whose actions are crate-private and include no
//! `replace`. So the snapshot is produced with the crate's public manifest,
//! manifest-list and metadata builders, and committed the way each catalog
//! defines a commit: for the SQL catalog, a new metadata file and a
//! compare-and-swap of `iceberg_tables.metadata_location` (the statement the
//! crate, pyiceberg and Java's JdbcCatalog use); for REST, `POST
//! /v1/{prefix}/namespaces/{ns}/tables/{table}` with the requirements and
//! updates, which the server checks atomically (409 on a conflict).
//!
//! SQL catalogs come in two layouts (Iceberg Java's `JdbcUtil`): V1, with
//! the `iceberg_type` column, is served by iceberg-catalog-sql; V0, Java's
//! default, which that crate cannot read, by [`super::sql_v0`]. The layout
//! is found by reading `iceberg_tables` before either is opened; a database
//! without that table is refused, not given one.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use iceberg::spec::TableMetadata;
use iceberg::table::Table;
use iceberg::{
    Catalog, CatalogBuilder, MetadataLocation, NamespaceIdent, TableIdent, TableRequirement,
    TableUpdate,
};
use serde_json::json;

use crate::config::IcebergCatalog;
use crate::drivers::action::DriverError;

/// Why a commit did not land.
#[derive(Debug)]
pub enum CommitError {
    /// Someone else committed first (or a requirement no longer holds):
    /// plan the change again on the new state.
    Conflict(String),
    /// The outcome is unknown (the connection died mid-commit): look
    /// before assuming either way.
    Unknown(String),
    /// It certainly did not land.
    Failed(String),
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitError::Conflict(m) => write!(f, "commit conflict: {m}"),
            CommitError::Unknown(m) => write!(f, "commit outcome unknown: {m}"),
            CommitError::Failed(m) => write!(f, "commit failed: {m}"),
        }
    }
}

enum Committer {
    Sql {
        /// Opened with the catalog (it finds the layout, and serves a V0
        /// catalog's reads too).
        pool: tokio::sync::OnceCell<sqlx::AnyPool>,
        uri: String,
        catalog_name: String,
        dollar: bool,
    },
    Rest {
        http: reqwest::Client,
        /// `{uri}/v1/` plus the server's prefix, if any.
        base: String,
        token: Option<String>,
    },
}

/// An opened catalog.
pub struct Lake {
    /// The configured key (`backends.iceberg.<key>`).
    pub key: String,
    catalog: Arc<dyn Catalog>,
    committer: Committer,
    store: super::store::Store,
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lake").field("key", &self.key).finish()
    }
}

/// Splits `namespace.table` (the namespace may itself be dotted).
pub fn ident(table: &str) -> Result<TableIdent, DriverError> {
    let (ns, name) = table.rsplit_once('.').ok_or_else(|| {
        DriverError::permanent(format!(
            "table {table:?}: expected namespace.table, e.g. db.events"
        ))
    })?;
    if ns.is_empty() || name.is_empty() {
        return Err(DriverError::permanent(format!(
            "table {table:?}: expected namespace.table, e.g. db.events"
        )));
    }
    Ok(TableIdent::new(
        NamespaceIdent::from_strs(ns.split('.'))
            .map_err(|e| DriverError::permanent(format!("table {table:?}: {e}")))?,
        name.to_string(),
    ))
}

fn is_rest(uri: &str) -> bool {
    uri.starts_with("http://") || uri.starts_with("https://")
}

/// A bearer token for `key` from its OAuth2 token endpoint (the
/// client-credentials grant, as Iceberg's REST clients make it: a form with
/// `grant_type`, `client_id`, `client_secret` and `scope`). It is fetched
/// whenever the catalog is opened (each action; the exporter reopens a
/// catalog whose requests fail), so an expired token is replaced.
async fn oauth2_token(
    http: &reqwest::Client,
    key: &str,
    uri: &str,
    o: &crate::config::IcebergOAuth2,
) -> Result<String, DriverError> {
    let secret = crate::config::read_secret(
        o.client_secret_file.as_deref(),
        o.client_secret_env.as_deref(),
    )
    .map_err(|e| {
        DriverError::permanent(format!("backends.iceberg.{key}.oauth2: client secret: {e}"))
    })?
    .ok_or_else(|| {
        DriverError::permanent(format!(
            "backends.iceberg.{key}.oauth2: the client secret is empty"
        ))
    })?;
    let url = o
        .server_uri
        .clone()
        .unwrap_or_else(|| format!("{}/v1/oauth/tokens", uri.trim_end_matches('/')));
    let resp = http
        .post(&url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", o.client_id.as_str()),
            ("client_secret", secret.as_str()),
            ("scope", o.scope.as_str()),
        ])
        .send()
        .await
        .map_err(|e| {
            DriverError::retryable(format!(
                "catalog {key}: OAuth2 token endpoint {url}: {}",
                e.without_url()
            ))
        })?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        // RFC 6749 §5.2: {"error": "invalid_client", "error_description": …}.
        let why = [body["error"].as_str(), body["error_description"].as_str()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        let msg = format!(
            "catalog {key}: OAuth2 token endpoint {url} answered {status}{}",
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            }
        );
        return Err(if status.is_server_error() || status.as_u16() == 429 {
            DriverError::retryable(msg)
        } else {
            DriverError::permanent(msg)
        });
    }
    body["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            DriverError::permanent(format!(
                "catalog {key}: OAuth2 token endpoint {url} answered without an access_token"
            ))
        })
}

fn is_postgres(uri: &str) -> bool {
    uri.starts_with("postgres://") || uri.starts_with("postgresql://")
}

impl Lake {
    /// Opens the catalog `key` of the agent config.
    pub async fn open(key: &str, cfg: &IcebergCatalog) -> Result<Lake, DriverError> {
        let secret =
            crate::config::read_secret(cfg.secret_file.as_deref(), cfg.secret_env.as_deref())
                .map_err(|e| {
                    DriverError::permanent(format!("backends.iceberg.{key}: secret: {e}"))
                })?;
        let name = cfg.name.clone().unwrap_or_else(|| key.to_string());
        let store = super::store::Store::new(key, cfg.s3.as_ref())?;
        let storage = store.factory();
        if is_rest(&cfg.uri) {
            let http = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .map_err(|e| DriverError::permanent(format!("catalog {key}: http client: {e}")))?;
            let secret = match &cfg.oauth2 {
                Some(o) => Some(oauth2_token(&http, key, &cfg.uri, o).await?),
                None => secret,
            };
            let mut props = HashMap::from([(
                iceberg_catalog_rest::REST_CATALOG_PROP_URI.to_string(),
                cfg.uri.clone(),
            )]);
            if !cfg.warehouse.is_empty() {
                props.insert(
                    iceberg_catalog_rest::REST_CATALOG_PROP_WAREHOUSE.to_string(),
                    cfg.warehouse.clone(),
                );
            }
            if let Some(t) = &secret {
                props.insert("token".into(), t.clone());
            }
            if cfg.s3.is_some() {
                // Ask for the table's own storage credentials (the REST
                // spec's access delegation); a catalog that vends none
                // leaves the configured or environment's credentials.
                props.insert(
                    "header.X-Iceberg-Access-Delegation".into(),
                    "vended-credentials".into(),
                );
            }
            props.extend(store.props());
            let catalog = iceberg_catalog_rest::RestCatalogBuilder::default()
                .with_storage_factory(storage)
                .load(name, props)
                .await
                .map_err(|e| super::ice(format!("catalog {key} ({})", cfg.uri), e))?;
            let root = cfg.uri.trim_end_matches('/');
            let mut req = http.get(format!("{root}/v1/config"));
            if !cfg.warehouse.is_empty() {
                req = req.query(&[("warehouse", &cfg.warehouse)]);
            }
            if let Some(t) = &secret {
                req = req.bearer_auth(t);
            }
            let conf: serde_json::Value = req
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| DriverError::retryable(format!("catalog {key}: GET /v1/config: {e}")))?
                .json()
                .await
                .map_err(|e| DriverError::retryable(format!("catalog {key}: /v1/config: {e}")))?;
            let prefix = conf["overrides"]["prefix"]
                .as_str()
                .or(conf["defaults"]["prefix"].as_str())
                .map(|p| format!("{}/", p.trim_matches('/')))
                .unwrap_or_default();
            let root = conf["overrides"]["uri"]
                .as_str()
                .map(|u| u.trim_end_matches('/').to_string())
                .unwrap_or_else(|| root.to_string());
            return Ok(Lake {
                key: key.to_string(),
                catalog: Arc::new(catalog),
                committer: Committer::Rest {
                    http,
                    base: format!("{root}/v1/{prefix}"),
                    token: secret,
                },
                store,
            });
        }
        let uri = if is_postgres(&cfg.uri) {
            let mut u = reqwest::Url::parse(&cfg.uri)
                .map_err(|e| DriverError::permanent(format!("backends.iceberg.{key}.uri: {e}")))?;
            if let Some(p) = &secret {
                u.set_password(Some(p)).map_err(|_| {
                    DriverError::permanent(format!(
                        "backends.iceberg.{key}.uri: cannot carry a password"
                    ))
                })?;
            }
            u.to_string()
        } else if cfg.uri.starts_with("sqlite:") {
            cfg.uri.clone()
        } else {
            return Err(DriverError::permanent(format!(
                "backends.iceberg.{key}.uri {:?}: expected sqlite:PATH, postgres://… or http(s)://… (REST)",
                cfg.uri
            )));
        };
        let dollar = is_postgres(&uri);
        let mut props = HashMap::from([
            (
                iceberg_catalog_sql::SQL_CATALOG_PROP_URI.to_string(),
                uri.clone(),
            ),
            (
                iceberg_catalog_sql::SQL_CATALOG_PROP_WAREHOUSE.to_string(),
                cfg.warehouse.clone(),
            ),
        ]);
        if dollar {
            props.insert(
                iceberg_catalog_sql::SQL_CATALOG_PROP_BIND_STYLE.to_string(),
                "DollarNumeric".to_string(),
            );
        }
        props.extend(store.props());
        // The layout decides who serves the catalog; finding it out reads
        // only, where the crate's catalog would create missing tables.
        let cell = tokio::sync::OnceCell::new();
        let pool = sql_pool(&cell, &uri)
            .await
            .map_err(|e| DriverError::retryable(format!("catalog {key}: connect: {e}")))?;
        let layout = super::sql_v0::layout(pool).await.map_err(|e| {
            DriverError::permanent(format!(
                "catalog {key}: no iceberg_tables table, so not an Iceberg JDBC/SQL catalog (nothing was created): {e}"
            ))
        })?;
        let catalog: Arc<dyn Catalog> = match layout {
            super::sql_v0::SqlLayout::V1 => Arc::new(
                iceberg_catalog_sql::SqlCatalogBuilder::default()
                    .with_storage_factory(storage)
                    .load(name.clone(), props)
                    .await
                    .map_err(|e| super::ice(format!("catalog {key}"), e))?,
            ),
            super::sql_v0::SqlLayout::V0 => {
                tracing::debug!(catalog = %key, "JDBC catalog in the V0 layout (no iceberg_type column)");
                let io = iceberg::io::FileIOBuilder::new(storage)
                    .with_props(props)
                    .build();
                Arc::new(
                    super::sql_v0::SqlV0Catalog::new(name.clone(), pool.clone(), io, dollar)
                        .map_err(|e| super::ice(format!("catalog {key}"), e))?,
                )
            }
        };
        Ok(Lake {
            key: key.to_string(),
            catalog,
            committer: Committer::Sql {
                pool: cell,
                uri,
                catalog_name: name,
                dollar,
            },
            store,
        })
    }

    /// Where the catalog's tables live (listing and deleting what
    /// `FileIO` cannot).
    pub fn store(&self) -> &super::store::Store {
        &self.store
    }

    /// Loads a table's current state.
    pub async fn load(&self, ident: &TableIdent) -> Result<Table, DriverError> {
        let t = self.catalog.load_table(ident).await.map_err(|e| {
            let mut err = super::ice(format!("table {}.{ident}", self.key), e);
            // The crate's local storage reads `s3://b/k` as a relative
            // path and says only that it is not there.
            if !self.store.has_s3()
                && ["s3://", "s3a://", "s3n://"]
                    .iter()
                    .any(|s| err.message.contains(s))
            {
                err.message.push_str(&format!(
                    " (the table is on S3 and backends.iceberg.{}.s3 is not set)",
                    self.key
                ));
                err.retryable = false;
            }
            err
        })?;
        // Never let the local storage act on an S3 table's files.
        if !self.store.has_s3() {
            if let Ok(l) = super::location::Location::parse(t.metadata().location()) {
                if l.scheme() == "s3" {
                    return Err(DriverError::permanent(format!(
                        "table {}.{ident} is on S3 ({}) and backends.iceberg.{}.s3 is not set",
                        self.key,
                        t.metadata().location(),
                        self.key
                    )));
                }
            }
        }
        Ok(t)
    }

    /// The underlying catalog (for the crate's own transactions).
    pub fn catalog(&self) -> &dyn Catalog {
        self.catalog.as_ref()
    }

    /// Opens what a commit needs ahead of it (the SQL catalog's commit
    /// connection), so a caller can overlap that with its own work. A
    /// failure here is reported again by the commit itself.
    pub async fn prepare_commit(&self) {
        if let Committer::Sql { pool, uri, .. } = &self.committer {
            let _ = sql_pool(pool, uri).await;
        }
    }

    /// Commits `updates` to the table if `requirements` hold on the
    /// catalog's current state, atomically.
    ///
    /// SQL catalogs: first optimistically on `base` (the state the caller
    /// built the updates on), with a compare-and-swap of its metadata
    /// location; if the table moved on, once more on a fresh load, where
    /// the requirements decide whether the change still applies.
    pub async fn commit(
        &self,
        base: &Table,
        requirements: Vec<TableRequirement>,
        updates: Vec<TableUpdate>,
    ) -> Result<(), CommitError> {
        let ident = base.identifier().clone();
        match &self.committer {
            Committer::Sql {
                pool,
                uri,
                catalog_name,
                dollar,
            } => {
                let pool = sql_pool(pool, uri).await.map_err(|e| {
                    CommitError::Failed(format!("catalog {}: connect: {e}", self.key))
                })?;
                let sql = SqlCommit {
                    pool,
                    catalog_name,
                    dollar: *dollar,
                };
                match sql.attempt(base, &requirements, updates.clone()).await? {
                    Swapped::Yes => return Ok(()),
                    Swapped::MovedOn(_) => {}
                }
                let current = self
                    .catalog
                    .load_table(&ident)
                    .await
                    .map_err(|e| CommitError::Failed(format!("reload {ident}: {e}")))?;
                match sql.attempt(&current, &requirements, updates).await? {
                    Swapped::Yes => Ok(()),
                    Swapped::MovedOn(from) => Err(CommitError::Conflict(format!(
                        "{ident}: metadata moved on from {from}"
                    ))),
                }
            }
            Committer::Rest {
                http,
                base: url,
                token,
            } => {
                let mut target = reqwest::Url::parse(url)
                    .map_err(|e| CommitError::Failed(format!("{ident}: catalog url {url}: {e}")))?;
                target
                    .path_segments_mut()
                    .map_err(|_| CommitError::Failed(format!("{ident}: catalog url {url}")))?
                    .pop_if_empty()
                    .extend([
                        "namespaces",
                        &ident.namespace().clone().inner().join("\u{1f}"),
                        "tables",
                        ident.name(),
                    ]);
                let mut req = http
                    .post(target)
                    .json(&json!({
                        "identifier": {"namespace": ident.namespace().clone().inner(), "name": ident.name()},
                        "requirements": requirements,
                        "updates": updates,
                    }));
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| CommitError::Unknown(format!("{ident}: POST commit: {e}")))?;
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                match status.as_u16() {
                    200 => Ok(()),
                    409 => Err(CommitError::Conflict(format!(
                        "{ident}: {}",
                        rest_message(&body)
                    ))),
                    500 | 502 | 503 | 504 => Err(CommitError::Unknown(format!(
                        "{ident}: HTTP {status}: {}",
                        rest_message(&body)
                    ))),
                    _ => Err(CommitError::Failed(format!(
                        "{ident}: HTTP {status}: {}",
                        rest_message(&body)
                    ))),
                }
            }
        }
    }
}

fn rest_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(300).collect())
}

/// The SQL catalog's own connection (layout, V0 reads, commits).
async fn sql_pool<'a>(
    cell: &'a tokio::sync::OnceCell<sqlx::AnyPool>,
    uri: &str,
) -> Result<&'a sqlx::AnyPool, sqlx::Error> {
    cell.get_or_try_init(|| async {
        sqlx::any::install_default_drivers();
        sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(std::time::Duration::from_secs(30))
            .connect(uri)
            .await
    })
    .await
}

/// Whether a compare-and-swap of the metadata location took.
pub(super) enum Swapped {
    Yes,
    /// The row no longer held this location.
    MovedOn(String),
}

pub(super) struct SqlCommit<'a> {
    pub(super) pool: &'a sqlx::AnyPool,
    pub(super) catalog_name: &'a str,
    pub(super) dollar: bool,
}

impl SqlCommit<'_> {
    /// Checks `requirements` on `on`, writes the updated metadata as the
    /// next version, and swaps the catalog row from `on`'s location to it.
    pub(super) async fn attempt(
        &self,
        on: &Table,
        requirements: &[TableRequirement],
        updates: Vec<TableUpdate>,
    ) -> Result<Swapped, CommitError> {
        let ident = on.identifier();
        for r in requirements {
            if let Err(e) = r.check(Some(on.metadata())) {
                return Err(CommitError::Conflict(e.to_string()));
            }
        }
        let current_loc = on
            .metadata_location()
            .ok_or_else(|| CommitError::Failed(format!("{ident}: no metadata location")))?
            .to_string();
        let mut b = on
            .metadata()
            .clone()
            .into_builder(Some(current_loc.clone()));
        for u in updates {
            b = u
                .apply(b)
                .map_err(|e| CommitError::Failed(format!("{ident}: apply update: {e}")))?;
        }
        let md: TableMetadata = b
            .build()
            .map_err(|e| CommitError::Failed(format!("{ident}: build metadata: {e}")))?
            .metadata;
        let loc = MetadataLocation::from_str(&current_loc)
            .map_err(|e| CommitError::Failed(format!("{ident}: {e}")))?
            .with_next_version()
            .with_new_metadata(&md);
        md.write_to(on.file_io(), &loc)
            .await
            .map_err(|e| CommitError::Failed(format!("{ident}: write metadata: {e}")))?;
        let new_loc = loc.to_string();
        let ns = ident.namespace().clone().inner().join(".");
        let sql = if self.dollar {
            "UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2 \
             WHERE catalog_name = $3 AND table_namespace = $4 AND table_name = $5 AND metadata_location = $6"
        } else {
            "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? AND metadata_location = ?"
        };
        let res = sqlx::query(sql)
            .bind(&new_loc)
            .bind(&current_loc)
            .bind(self.catalog_name)
            .bind(&ns)
            .bind(ident.name())
            .bind(&current_loc)
            .execute(self.pool)
            .await;
        match res {
            Ok(r) if r.rows_affected() == 1 => Ok(Swapped::Yes),
            Ok(_) => {
                let _ = on.file_io().delete(&new_loc).await;
                Ok(Swapped::MovedOn(current_loc))
            }
            Err(e) => Err(CommitError::Unknown(format!(
                "{ident}: UPDATE iceberg_tables: {e}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_need_a_namespace() {
        assert_eq!(ident("db.events").unwrap().name(), "events");
        let t = ident("a.b.events").unwrap();
        assert_eq!(t.namespace().clone().inner(), vec!["a", "b"]);
        for bad in ["events", ".events", "db."] {
            assert!(
                ident(bad)
                    .unwrap_err()
                    .message
                    .contains("expected namespace.table"),
                "{bad}"
            );
        }
    }
}
