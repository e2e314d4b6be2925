//! Where a catalog's tables live: the local file system, or S3-compatible
//! object storage (`backends.iceberg.<key>.s3`).
//!
//! Reads and writes go through the iceberg crate's `FileIO`, which gets
//! its S3 support from `iceberg-storage-opendal` (iceberg 0.10 ships local
//! and memory storage only). What `FileIO` cannot do, listing a table's
//! location (orphan removal, the clean-up after a failed rewrite), is done
//! here: by walking the directory for local tables, by listing the bucket
//! under the table's prefix (OpenDAL's S3 service, configured from the same
//! settings) for S3 tables.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use futures::TryStreamExt;
use iceberg::io::StorageFactory;

use super::location::Location;
use crate::config::IcebergS3;
use crate::drivers::action::DriverError;

/// A listed file.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its location as the storage names it (a local path, or
    /// `s3://bucket/key`).
    pub written: String,
    /// In canonical form.
    pub location: Location,
    /// Bytes.
    pub bytes: u64,
    /// Last modified, when the storage says.
    pub modified: Option<SystemTime>,
}

/// S3 settings resolved (key files read).
#[derive(Clone)]
struct S3 {
    endpoint: Option<String>,
    region: String,
    path_style: bool,
    keys: Option<(String, String)>,
    /// With vended keys: their session token, if any.
    session_token: Option<String>,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("static_keys", &self.keys.is_some())
            .finish()
    }
}

/// A catalog's storage.
#[derive(Debug, Clone, Default)]
pub struct Store {
    s3: Option<S3>,
}

fn read_key(key: &str, field: &str, path: &std::path::Path) -> Result<String, DriverError> {
    crate::config::read_secret(Some(path), None)
        .map_err(|e| DriverError::permanent(format!("backends.iceberg.{key}.s3.{field}: {e}")))?
        .ok_or_else(|| {
            DriverError::permanent(format!(
                "backends.iceberg.{key}.s3.{field}: {} is empty",
                path.display()
            ))
        })
}

impl Store {
    /// The storage of catalog `key` (its key files read now).
    pub fn new(key: &str, s3: Option<&IcebergS3>) -> Result<Store, DriverError> {
        let Some(c) = s3 else {
            return Ok(Store::default());
        };
        let keys = match (&c.access_key_id_file, &c.secret_access_key_file) {
            (Some(a), Some(s)) => Some((
                read_key(key, "accessKeyIdFile", a)?,
                read_key(key, "secretAccessKeyFile", s)?,
            )),
            (None, None) => None,
            _ => {
                return Err(DriverError::permanent(format!(
                    "backends.iceberg.{key}.s3: accessKeyIdFile and secretAccessKeyFile go together (or set neither to use the environment's credentials)"
                )))
            }
        };
        if let Some(e) = &c.endpoint {
            let ok = reqwest::Url::parse(e)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(DriverError::permanent(format!(
                    "backends.iceberg.{key}.s3.endpoint {e:?}: expected http(s)://host[:port]"
                )));
            }
        }
        let region = c
            .region
            .clone()
            .filter(|r| !r.is_empty())
            .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
            .or_else(|| {
                std::env::var("AWS_DEFAULT_REGION")
                    .ok()
                    .filter(|r| !r.is_empty())
            })
            .unwrap_or_else(|| "us-east-1".to_string());
        Ok(Store {
            s3: Some(S3 {
                endpoint: c.endpoint.clone(),
                region,
                path_style: c.path_style,
                keys,
                session_token: None,
            }),
        })
    }

    /// This storage as `table`'s own files are reached: with the keys its
    /// `FileIO` carries (a REST catalog's vended credentials) where the
    /// config gives no key files, so listing and removing files (the
    /// clean-up after a failed rewrite, orphan removal) sign as reading
    /// and writing them do.
    pub fn for_table(&self, table: &iceberg::table::Table) -> Store {
        let mut out = self.clone();
        if let Some(s3) = out.s3.as_mut().filter(|s| s.keys.is_none()) {
            let p = table.file_io().config().props();
            if let (Some(a), Some(k)) = (
                p.get(iceberg::io::S3_ACCESS_KEY_ID),
                p.get(iceberg::io::S3_SECRET_ACCESS_KEY),
            ) {
                s3.keys = Some((a.clone(), k.clone()));
                s3.session_token = p.get(iceberg::io::S3_SESSION_TOKEN).cloned();
            }
        }
        out
    }

    /// Whether S3 is configured.
    pub fn has_s3(&self) -> bool {
        self.s3.is_some()
    }

    /// The storage factory for the catalog's `FileIO`: local files only,
    /// or (with S3 configured) local files and S3 by the location's scheme.
    pub fn factory(&self) -> Arc<dyn StorageFactory> {
        match &self.s3 {
            None => Arc::new(iceberg::io::LocalFsStorageFactory),
            Some(_) => Arc::new(iceberg_storage_opendal::OpenDalResolvingStorageFactory::new()),
        }
    }

    /// The `FileIO` properties (`s3.*`) that configure S3.
    pub fn props(&self) -> HashMap<String, String> {
        let mut p = HashMap::new();
        let Some(s) = &self.s3 else {
            return p;
        };
        if let Some(e) = &s.endpoint {
            p.insert(iceberg::io::S3_ENDPOINT.to_string(), e.clone());
        }
        p.insert(iceberg::io::S3_REGION.to_string(), s.region.clone());
        p.insert(
            iceberg::io::S3_PATH_STYLE_ACCESS.to_string(),
            s.path_style.to_string(),
        );
        if let Some((a, k)) = &s.keys {
            p.insert(iceberg::io::S3_ACCESS_KEY_ID.to_string(), a.clone());
            p.insert(iceberg::io::S3_SECRET_ACCESS_KEY.to_string(), k.clone());
        }
        p
    }

    fn s3_operator(&self, bucket: &str) -> Result<opendal::Operator, String> {
        let Some(s) = &self.s3 else {
            return Err(format!(
                "s3://{bucket}: the catalog has no s3 settings (backends.iceberg.<catalog>.s3)"
            ));
        };
        let mut b = opendal::services::S3::default()
            .bucket(bucket)
            .region(&s.region);
        if let Some(e) = &s.endpoint {
            b = b.endpoint(e);
        }
        if !s.path_style {
            b = b.enable_virtual_host_style();
        }
        if let Some((a, k)) = &s.keys {
            b = b.access_key_id(a).secret_access_key(k);
        }
        if let Some(t) = &s.session_token {
            b = b.session_token(t);
        }
        Ok(opendal::Operator::new(b)
            .map_err(|e| format!("s3://{bucket}: {e}"))?
            .layer(opendal::layers::RetryLayer::new())
            .finish())
    }

    /// Every file under `root`, with Java's hidden-path rule applied: no
    /// path with a segment below `root` named `.x` or `_x` (a directory
    /// `_x=v` is a partition and is listed). A listing error is an error:
    /// a partial list must not pass for a whole one.
    pub async fn list(&self, root: &Location) -> Result<Vec<Listed>, String> {
        if let Some(dir) = root.local_path() {
            return list_local(dir);
        }
        if root.scheme() != "s3" {
            return Err(format!(
                "{root}: listing works on local and s3 locations only"
            ));
        }
        let bucket = root.authority();
        let op = self.s3_operator(bucket)?;
        // The key prefix, as a directory.
        let prefix = format!("{}/", root.path().trim_matches('/'));
        let prefix = if prefix == "/" { String::new() } else { prefix };
        let entries: Vec<opendal::Entry> = op
            .lister_with(&prefix)
            .recursive(true)
            .await
            .map_err(|e| format!("list {root}: {e}"))?
            .try_collect()
            .await
            .map_err(|e| format!("list {root}: {e}"))?;
        let mut out = Vec::new();
        for e in entries {
            let meta = e.metadata();
            if !meta.is_file() {
                continue;
            }
            let key = e.path();
            let Some(rel) = key.strip_prefix(&prefix) else {
                return Err(format!(
                    "list {root}: the server listed s3://{bucket}/{key}, outside the prefix"
                ));
            };
            if hidden_below(rel) {
                continue;
            }
            let written = format!("s3://{bucket}/{key}");
            let location = Location::parse(&written).map_err(|e| format!("listed file: {e}"))?;
            // Keys that fold to another key (`a//b`) are not this file's
            // canonical location: deleting by the canonical one would miss
            // it, or hit another object.
            if location.path() != format!("/{key}") {
                continue;
            }
            out.push(Listed {
                written,
                location,
                bytes: meta.content_length(),
                modified: meta.last_modified().map(SystemTime::from),
            });
        }
        Ok(out)
    }

    /// Deletes the listed file `l`.
    pub async fn delete(&self, l: &Listed) -> std::io::Result<()> {
        if let Some(p) = l.location.local_path() {
            return std::fs::remove_file(p);
        }
        let op = self
            .s3_operator(l.location.authority())
            .map_err(std::io::Error::other)?;
        op.delete(l.location.path().trim_start_matches('/'))
            .await
            .map_err(std::io::Error::other)
    }
}

/// Java's hidden rule on the segments of `rel` (a key below the root):
/// the last is the file's name, the others directories.
fn hidden_below(rel: &str) -> bool {
    let segs: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
    segs.iter().enumerate().any(|(i, s)| {
        let dir = i + 1 < segs.len();
        (s.starts_with('.') || s.starts_with('_')) && !(dir && s.contains('='))
    })
}

fn hidden(e: &walkdir::DirEntry) -> bool {
    let name = e.file_name().to_string_lossy();
    (name.starts_with('.') || name.starts_with('_'))
        && !(e.file_type().is_dir() && name.contains('='))
        && e.depth() > 0
}

fn list_local(dir: &std::path::Path) -> Result<Vec<Listed>, String> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    let walk = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| !hidden(e));
    for entry in walk {
        let entry = entry.map_err(|e| format!("list {}: {e}", dir.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        // A name that is not UTF-8 cannot be compared with the metadata's
        // (UTF-8) locations: never a candidate.
        let Some(p) = entry.path().to_str() else {
            continue;
        };
        let location = Location::parse(p).map_err(|e| format!("listed file: {e}"))?;
        let meta = entry
            .metadata()
            .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        out.push(Listed {
            written: p.to_string(),
            location,
            bytes: meta.len(),
            modified: meta.modified().ok(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_segments_below_the_root_are_not_listed() {
        assert!(!hidden_below("data/category=a/x.parquet"));
        assert!(!hidden_below("data/_c=v/x.parquet"), "a partition dir");
        assert!(hidden_below("data/_tmp/x.parquet"));
        assert!(hidden_below("data/.hidden/x.parquet"));
        assert!(hidden_below("data/c=a/.x.parquet.crc"));
        assert!(hidden_below("data/c=a/_x=1"), "a file, not a partition");
    }

    #[test]
    fn s3_settings_are_checked_and_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("id");
        std::fs::write(&id, "AKID\n").unwrap();
        let one = IcebergS3 {
            access_key_id_file: Some(id.clone()),
            ..Default::default()
        };
        let e = Store::new("lake", Some(&one)).unwrap_err();
        assert!(
            e.message.contains(
                "backends.iceberg.lake.s3: accessKeyIdFile and secretAccessKeyFile go together"
            ),
            "{}",
            e.message
        );
        let missing = IcebergS3 {
            access_key_id_file: Some(id.clone()),
            secret_access_key_file: Some(dir.path().join("nope")),
            ..Default::default()
        };
        let e = Store::new("lake", Some(&missing)).unwrap_err();
        assert!(
            e.message
                .starts_with("backends.iceberg.lake.s3.secretAccessKeyFile: "),
            "{}",
            e.message
        );
        let bad = IcebergS3 {
            endpoint: Some("localhost:9000".into()),
            ..Default::default()
        };
        let e = Store::new("lake", Some(&bad)).unwrap_err();
        assert!(
            e.message
                .contains("s3.endpoint \"localhost:9000\": expected http(s)://"),
            "{}",
            e.message
        );
        std::fs::write(dir.path().join("secret"), "sekrit").unwrap();
        let good = IcebergS3 {
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: Some("eu-west-1".into()),
            path_style: true,
            access_key_id_file: Some(id),
            secret_access_key_file: Some(dir.path().join("secret")),
        };
        let s = Store::new("lake", Some(&good)).unwrap();
        let p = s.props();
        assert_eq!(p["s3.access-key-id"], "AKID");
        assert_eq!(p["s3.secret-access-key"], "sekrit");
        assert_eq!(p["s3.path-style-access"], "true");
        assert_eq!(p["s3.region"], "eu-west-1");
        assert_eq!(p["s3.endpoint"], "http://127.0.0.1:9000");
        assert!(!format!("{s:?}").contains("sekrit"), "no secret in Debug");
    }
}
