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
    /// Bytes written and not yet fsynced (group commit).
    dirty: u64,
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
    /// Opens (creating the directory and file if needed) for appending. A
    /// torn last line (a write that never completed) is cut back, so the
    /// next record starts after the last whole one.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let (file, size) = open_whole(path).map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            written: 0,
            size,
            rotate: None,
            dirty: 0,
        })
    }

    /// If the log at our path is no longer the file we write (deleted, or
    /// replaced by another), opens the one at the path (creating it) and
    /// says what happened. Records go on in the file people will read.
    pub fn reopen_if_replaced(&mut self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let mine = self.file.metadata().ok()?;
        let why = match std::fs::metadata(&self.path) {
            Ok(m) if m.dev() == mine.dev() && m.ino() == mine.ino() => return None,
            Ok(_) => "replaced by another file",
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "deleted",
            Err(_) => return None,
        };
        // What went to the old file unsynced goes to disk with it.
        if self.dirty > 0 && self.file.sync_data().is_ok() {
            self.dirty = 0;
        }
        match open_whole(&self.path) {
            Ok((file, size)) => {
                self.file = file;
                self.size = size;
                Some(why.to_string())
            }
            Err(e) => Some(format!("{why}; reopening it failed: {e}")),
        }
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
        if self.dirty > 0 {
            self.file.sync_data().map_err(io)?;
            self.dirty = 0;
        }
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
        let mut buf = Vec::with_capacity(recs.len() * 512);
        for rec in recs {
            serde_json::to_writer(&mut buf, rec)?;
            buf.push(b'\n');
        }
        self.append_bytes(&buf, recs.len())
    }

    /// Appends lines already encoded (one record each, no newline), with one fsync.
    pub fn append_lines(&mut self, lines: &[&str]) -> Result<()> {
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for l in lines {
            buf.extend_from_slice(l.as_bytes());
            buf.push(b'\n');
        }
        self.append_bytes(&buf, lines.len())
    }

    /// Writes and fsyncs `buf` (`n` records). A write that fails part-way
    /// (a full disk) is cut back, so what follows never glues onto a torn line.
    fn append_bytes(&mut self, buf: &[u8], n: usize) -> Result<()> {
        self.write_bytes(buf, n, true)
    }

    /// Writes `buf` (`n` records), fsynced (with whatever was written
    /// unsynced before it) when `sync`.
    fn write_bytes(&mut self, buf: &[u8], n: usize, sync: bool) -> Result<()> {
        if buf.is_empty() {
            return if sync { self.sync() } else { Ok(()) };
        }
        self.maybe_rotate()?;
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        let before = self.size;
        let res =
            self.file.write_all(buf).and_then(
                |()| {
                    if sync {
                        self.file.sync_data()
                    } else {
                        Ok(())
                    }
                },
            );
        if let Err(e) = res {
            if let Err(cut) = self.file.set_len(before) {
                tracing::error!(path = %self.path.display(), error = %cut, "cannot cut back a failed audit write; the next open cuts the torn line");
            }
            return Err(io(e));
        }
        self.written += n;
        self.size += buf.len() as u64;
        self.dirty = if sync {
            0
        } else {
            self.dirty + buf.len() as u64
        };
        Ok(())
    }

    /// fsyncs what was written unsynced.
    fn sync(&mut self) -> Result<()> {
        if self.dirty == 0 {
            return Ok(());
        }
        self.file.sync_data().map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        self.dirty = 0;
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

/// Group commit for a batch run (`remediate run`): records that change
/// nothing (dry-run, suppressed, needs-approval) are buffered, written
/// [`GroupCommit::MAX_BYTES`] at a time and fsynced once
/// [`GroupCommit::SYNC_BYTES`] are written (large writes are what a disk
/// does fast); a record of a real execution is written at once, with
/// everything before it, and fsynced before `append` returns, so the log is
/// durable before any apply starts. [`GroupCommit::commit`] writes and
/// fsyncs the rest (call it before exiting).
#[derive(Debug)]
pub struct GroupCommit {
    writer: Writer,
    buf: Vec<u8>,
    pending: usize,
    /// fsyncs done (for tests and benchmarks).
    syncs: usize,
    /// With [`GroupCommit::echo`], every line appended, for the caller to
    /// print (`run --output json`): encoded once, for the log and the output.
    echoed: Option<Vec<u8>>,
}

impl GroupCommit {
    /// Buffered records written at most.
    pub const MAX_PENDING: usize = 4096;
    /// Buffered bytes written at most.
    pub const MAX_BYTES: usize = 1 << 20;
    /// Bytes written between fsyncs at most.
    pub const SYNC_BYTES: u64 = 32 << 20;

    /// Group commit over `writer`.
    pub fn new(writer: Writer) -> Self {
        Self {
            writer,
            buf: Vec::with_capacity(Self::MAX_BYTES + (64 << 10)),
            pending: 0,
            syncs: 0,
            echoed: None,
        }
    }

    /// Keeps a copy of every line appended from now on (the exact bytes
    /// written to the log), taken with [`GroupCommit::take_echoed`].
    pub fn echo(&mut self) {
        self.echoed.get_or_insert_with(Vec::new);
    }

    /// The lines appended since the last call (empty without [`GroupCommit::echo`]).
    pub fn take_echoed(&mut self, into: &mut Vec<u8>) {
        if let Some(e) = &mut self.echoed {
            into.append(e);
        }
    }

    /// Appends a record: buffered; written when the buffer is full; and
    /// (a real execution's record) written and fsynced with all before it.
    pub fn append(&mut self, rec: &Record) -> Result<()> {
        let start = self.buf.len();
        serde_json::to_writer(&mut self.buf, rec)?;
        self.buf.push(b'\n');
        if let Some(e) = &mut self.echoed {
            e.extend_from_slice(&self.buf[start..]);
        }
        self.pending += 1;
        if rec.decision == "execute" && !rec.dry_run {
            return self.commit();
        }
        if self.pending >= Self::MAX_PENDING || self.buf.len() >= Self::MAX_BYTES {
            let sync = self.writer.dirty + self.buf.len() as u64 >= Self::SYNC_BYTES;
            return self.flush(sync);
        }
        Ok(())
    }

    /// Writes and fsyncs everything appended. On a failed write nothing of
    /// the batch stays in the file (it is cut back) and the batch is dropped.
    pub fn commit(&mut self) -> Result<()> {
        self.flush(true)
    }

    fn flush(&mut self, sync: bool) -> Result<()> {
        if self.pending == 0 && !(sync && self.writer.dirty > 0) {
            return Ok(());
        }
        let (n, buf) = (self.pending, std::mem::take(&mut self.buf));
        self.pending = 0;
        let res = self.writer.write_bytes(&buf, n, sync);
        self.buf = buf;
        self.buf.clear();
        if res.is_ok() && sync {
            self.syncs += 1;
        }
        res
    }

    /// Records written (fsynced or not).
    pub fn written(&self) -> usize {
        self.writer.written()
    }

    /// Records buffered, not yet written.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Bytes written and not yet fsynced.
    pub fn unsynced(&self) -> u64 {
        self.writer.dirty
    }

    /// fsyncs done so far.
    pub fn syncs(&self) -> usize {
        self.syncs
    }
}

/// Opens `path` for appending, with a torn last line cut back; returns the
/// file and its length.
fn open_whole(path: &Path) -> std::io::Result<(File, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let len = file.metadata()?.len();
    let whole = whole_length(path, len)?;
    if whole < len {
        tracing::warn!(path = %path.display(), bytes = len - whole, "cutting back a torn final line: that write never completed");
        file.set_len(whole)?;
        file.sync_data()?;
    }
    Ok((file, whole))
}

/// The length up to and including the last newline (0 if there is none).
fn whole_length(path: &Path, len: u64) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    if len == 0 {
        return Ok(0);
    }
    let mut f = File::open(path)?;
    let mut end = len;
    let mut buf = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}
