//! Appending records: each batch fsynced before the call returns; the log
//! rotated by size; a torn last line from a crash never swallows the next.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Error, Record, Result};

/// Appends records, each fsynced before `append` returns.
#[derive(Debug)]
pub struct Writer {
    path: PathBuf,
    file: File,
    written: usize,
    size: u64,
    rotate: Option<Rotation>,
}

/// Size-based rotation: `audit.jsonl` becomes `audit.jsonl.1`, `.1` becomes
/// `.2`, and so on; the oldest beyond `keep` is deleted. [`read_all`] reads
/// the rotated files too, so the ledger spans them.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// Rotate once the current file reaches this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: usize,
}

impl Writer {
    /// Opens (creating the directory and file if needed) for appending.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        // A torn last line from a crash must not swallow the next record.
        let len = file.metadata().map_err(io)?.len();
        let mut w = Self {
            path: path.to_path_buf(),
            file,
            written: 0,
            size: len,
            rotate: None,
        };
        if len > 0 && !ends_with_newline(path).map_err(io)? {
            w.file.write_all(b"\n").map_err(io)?;
        }
        Ok(w)
    }

    /// Opens with size-based rotation.
    pub fn open_rotating(path: &Path, rotation: Rotation) -> Result<Self> {
        let mut w = Self::open(path)?;
        w.rotate = Some(rotation);
        Ok(w)
    }

    /// Appends one record and fsyncs.
    pub fn append(&mut self, rec: &Record) -> Result<()> {
        self.append_batch(std::slice::from_ref(rec))
    }

    /// Rotates if the current file is full. Records are never split across
    /// files, and a rotation is complete (renamed, new file synced) before
    /// the next record is written.
    fn maybe_rotate(&mut self) -> Result<()> {
        let Some(r) = self.rotate else {
            return Ok(());
        };
        if self.size < r.max_bytes {
            return Ok(());
        }
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        let nth = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        if r.keep == 0 {
            std::fs::remove_file(&self.path).map_err(io)?;
        } else {
            let _ = std::fs::remove_file(nth(r.keep));
            for n in (1..r.keep).rev() {
                if nth(n).exists() {
                    std::fs::rename(nth(n), nth(n + 1)).map_err(io)?;
                }
            }
            std::fs::rename(&self.path, nth(1)).map_err(io)?;
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        self.size = 0;
        Ok(())
    }

    /// Appends several records with one fsync (the agent batches decisions
    /// that change nothing).
    pub fn append_batch(&mut self, recs: &[Record]) -> Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(recs.len() * 512);
        for rec in recs {
            serde_json::to_writer(&mut buf, rec)?;
            buf.push(b'\n');
        }
        self.maybe_rotate()?;
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&buf).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.written += recs.len();
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Records appended through this writer.
    pub fn written(&self) -> usize {
        self.written
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn ends_with_newline(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    f.seek(SeekFrom::End(-1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(b[0] == b'\n')
}
