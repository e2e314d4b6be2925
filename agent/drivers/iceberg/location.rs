//! File locations in one canonical form, for every comparison of paths.
//!
//! Writers spell the same file differently: Iceberg Java (Hadoop `Path`)
//! writes `file:/x`, pyiceberg and the iceberg crate `file:///x`, some
//! tools a bare `/x`; Hadoop's S3 connectors write `s3a://b/k` or
//! `s3n://b/k` for what others call `s3://b/k`. Comparing the strings
//! makes a referenced file look unreferenced, and orphan removal then
//! deletes live data. [`Location::parse`] turns each form into one value:
//!
//! | written                           | canonical         |
//! |-----------------------------------|-------------------|
//! | `/x`, `file:/x`, `file:///x`      | `file:///x`       |
//! | `file://localhost/x`              | `file:///x`       |
//! | `file://host/x` (another host)    | error             |
//! | `s3://b/k`, `s3a://b/k`, `s3n://b/k` | `s3://b/k`     |
//! | `S3://b/k` (scheme in capitals)   | `s3://b/k`        |
//! | `other://auth/p`                  | `other://auth/p`  |
//!
//! Repeated slashes and `.` segments are folded (`/a//./b` is `/a/b`, the
//! same file to a file system and to S3 clients that normalise keys); a
//! `..` segment, a relative path, an empty location or a `file:` with
//! another host's name are errors, never guesses: `file://host/x` is read
//! by the iceberg crate as the local `/host/x` but by Hadoop as `/x` on
//! `host`, so no single answer is safe.

use std::fmt;
use std::path::Path;

/// A location that could not be put in canonical form, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("location {location:?}: {reason}")]
pub struct LocationError {
    /// The location as written.
    pub location: String,
    /// Why it has no canonical form.
    pub reason: &'static str,
}

/// A file's location in canonical form: scheme (lower case, `s3a`/`s3n`
/// folded into `s3`), authority (bucket or host, empty for local files) and
/// an absolute path with no repeated slashes and no `.` segments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    scheme: String,
    authority: String,
    path: String,
}

impl Location {
    /// Parses any form real writers use (see the module docs).
    pub fn parse(written: &str) -> Result<Location, LocationError> {
        let err = |reason| LocationError {
            location: written.to_string(),
            reason,
        };
        if written.is_empty() {
            return Err(err("empty"));
        }
        if written.contains('\0') {
            return Err(err("contains a NUL byte"));
        }
        if written.starts_with('/') {
            return Ok(Location {
                scheme: "file".into(),
                authority: String::new(),
                path: clean_path(written).map_err(err)?,
            });
        }
        let Some((scheme, rest)) = split_scheme(written) else {
            return Err(err(
                "relative path: a table's files are named by absolute locations",
            ));
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "s3a" | "s3n" => "s3".to_string(),
            s => s.to_string(),
        };
        let (authority, path) = match rest.strip_prefix("//") {
            Some(after) => match after.find('/') {
                Some(i) => (&after[..i], &after[i..]),
                None => return Err(err("no path after the authority")),
            },
            // `file:/x` (Hadoop) has no authority; other schemes need one.
            None if scheme == "file" && rest.starts_with('/') => ("", rest),
            None if scheme == "file" => return Err(err("relative file: location")),
            None => return Err(err("expected scheme://authority/path")),
        };
        let authority = if scheme == "file" {
            if authority.is_empty() || authority.eq_ignore_ascii_case("localhost") {
                String::new()
            } else {
                return Err(err(
                    "file: location names a host: readers disagree whether that is a local directory or another machine",
                ));
            }
        } else if scheme == "s3" {
            if authority.is_empty() {
                return Err(err("no bucket"));
            }
            // Bucket names are lower case; the crate's and Java's clients
            // treat them so.
            authority.to_ascii_lowercase()
        } else {
            authority.to_string()
        };
        Ok(Location {
            scheme,
            authority,
            path: clean_path(path).map_err(err)?,
        })
    }

    /// The canonical local path, for `file` locations.
    pub fn local_path(&self) -> Option<&Path> {
        (self.scheme == "file").then(|| Path::new(&self.path))
    }

    /// The scheme, lower case (`file`, `s3`, …).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The authority: an S3 bucket, empty for local files.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The path part (after scheme and authority).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether `self` is `root` or lies under it.
    pub fn is_under(&self, root: &Location) -> bool {
        self.scheme == root.scheme
            && self.authority == root.authority
            && (self.path == root.path
                || root.path == "/"
                || self
                    .path
                    .strip_prefix(&root.path)
                    .is_some_and(|r| r.starts_with('/')))
    }

    /// Other spellings the same file may have been written with by a
    /// writer that percent-encodes (`a%20b` for `a b`): a set of kept
    /// files holds these too, so an encoding difference keeps a file
    /// rather than deleting it.
    pub fn aliases(&self) -> Vec<Location> {
        match percent_decode(&self.path) {
            Some(p) if p != self.path => clean_path(&p)
                .map(|path| {
                    vec![Location {
                        path,
                        ..self.clone()
                    }]
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.path)
    }
}

/// A location's canonical text for comparisons that decide nothing
/// irreversible (liveness checks): the location as written when it has no
/// canonical form.
pub fn key(written: &str) -> String {
    Location::parse(written).map_or_else(|_| written.to_string(), |l| l.to_string())
}

/// `scheme:` and the rest, when `s` starts with a URI scheme
/// (`ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`, RFC 3986).
fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = s.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some((scheme, rest))
}

/// `/a//./b/` as `/a/b`; `..` is refused (resolving it needs the file
/// system, and a symbolic link makes the textual answer wrong).
fn clean_path(p: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(p.len());
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err("has a `..` segment"),
            s => {
                out.push('/');
                out.push_str(s);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// `%XX` escapes decoded, when there are any and the result is UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return None;
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        Location::parse(s).unwrap().to_string()
    }

    #[test]
    fn every_local_form_writers_use_is_one_location() {
        for s in [
            "/wh/db/t/data/a.parquet",
            "file:/wh/db/t/data/a.parquet",
            "file:///wh/db/t/data/a.parquet",
            "file://localhost/wh/db/t/data/a.parquet",
            "FILE:/wh/db/t/data/a.parquet",
            "file:///wh//db/./t/data/a.parquet",
        ] {
            assert_eq!(canon(s), "file:///wh/db/t/data/a.parquet", "{s}");
        }
        assert_eq!(
            Location::parse("file:/wh/a")
                .unwrap()
                .local_path()
                .unwrap()
                .to_str(),
            Some("/wh/a")
        );
    }

    #[test]
    fn s3a_and_s3n_are_s3() {
        for s in [
            "s3://lake/wh/k.parquet",
            "s3a://lake/wh/k.parquet",
            "s3n://lake/wh/k.parquet",
            "S3A://Lake/wh//k.parquet",
        ] {
            assert_eq!(canon(s), "s3://lake/wh/k.parquet", "{s}");
        }
        let s3 = Location::parse("s3://lake/wh/k").unwrap();
        assert!(s3.local_path().is_none());
        assert_ne!(s3, Location::parse("/lake/wh/k").unwrap());
        assert_ne!(s3, Location::parse("s3://other/wh/k").unwrap());
        assert_eq!(canon("gs://b/x"), "gs://b/x");
        assert_eq!(canon("hdfs://nn:8020/x"), "hdfs://nn:8020/x");
    }

    #[test]
    fn ambiguous_or_relative_locations_are_errors_naming_the_location() {
        for (s, why) in [
            ("", "empty"),
            ("data/a.parquet", "relative path"),
            ("file:data/a.parquet", "relative file"),
            ("file://otherhost/wh/a", "names a host"),
            ("s3:///k", "no bucket"),
            ("s3://bucket", "no path"),
            ("s3:bucket/k", "expected scheme://authority/path"),
            ("/wh/../etc/passwd", "`..`"),
            ("/wh/a\0b", "NUL"),
        ] {
            let e = Location::parse(s).unwrap_err();
            assert_eq!(e.location, s);
            assert!(e.reason.contains(why), "{s}: {e}");
            assert!(
                e.to_string().starts_with(&format!("location {s:?}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn under_compares_whole_segments_scheme_and_authority() {
        let root = Location::parse("file:/wh/db/t").unwrap();
        assert!(Location::parse("/wh/db/t/data/a").unwrap().is_under(&root));
        assert!(Location::parse("file:///wh/db/t").unwrap().is_under(&root));
        assert!(!Location::parse("/wh/db/t2/data/a").unwrap().is_under(&root));
        assert!(!Location::parse("s3://wh/db/t/a").unwrap().is_under(&root));
        let b = Location::parse("s3a://lake/wh").unwrap();
        assert!(Location::parse("s3://lake/wh/x").unwrap().is_under(&b));
        assert!(!Location::parse("s3://lake2/wh/x").unwrap().is_under(&b));
    }

    #[test]
    fn percent_encoded_spellings_have_the_decoded_alias() {
        let l = Location::parse("file:/wh/t/data/c=a%20b/f.parquet").unwrap();
        assert_eq!(
            l.aliases(),
            vec![Location::parse("/wh/t/data/c=a b/f.parquet").unwrap()]
        );
        assert!(Location::parse("/wh/t/f.parquet")
            .unwrap()
            .aliases()
            .is_empty());
        assert!(Location::parse("/wh/t/100%").unwrap().aliases().is_empty());
    }
}
