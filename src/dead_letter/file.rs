//! Dead letters in an append-only JSON Lines file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::record::DeadLetter;
use super::sink::{BoxFuture, Sink, SinkError, SinkErrorKind};

/// Dead letters in a JSON Lines file: one record per line, appended, and flushed and fsynced
/// before `write` returns.
///
/// - The file is created readable and writable by its owner only (mode 0600 on Unix; letters
///   hold request bodies), its directory fsynced so the new file survives a crash; an existing
///   file that others could read is narrowed to 0600.
/// - A file that cannot be created or written (a read-only or full disk, a path through a
///   regular file) fails the call with a [`SinkError`] of kind
///   [`SinkErrorKind::Io`](super::SinkErrorKind::Io); it never panics.
/// - A crash can leave a torn last line. Reading skips it (with a warning), never fails, and
///   never loses the other records; the next write first ends the torn line, so the new
///   record stays whole.
/// - A damaged line anywhere is skipped the same way and counted in
///   [`skipped_lines`](Self::skipped_lines).
/// - `remove` rewrites the file atomically: a temporary file in the same directory, fsynced,
///   renamed over the old one, and the directory fsynced. Every line it does not remove,
///   damaged ones included, is kept byte for byte.
///
/// Blocking file work runs on tokio's blocking pool, one operation at a time. Clones share the
/// file. One process should own a file: operations are serialized within a process, not
/// across processes (use a Redis Stream, feature `redis`, to share dead letters between
/// workers).
#[derive(Clone, Debug)]
pub struct JsonLinesSink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    // Held for every operation, so writes, reads and rewrites never interleave.
    lock: Mutex<()>,
    skipped: std::sync::atomic::AtomicU64,
}

impl JsonLinesSink {
    /// A sink appending to `path` (created on first write, with its directory).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        JsonLinesSink {
            inner: Arc::new(Inner {
                path: path.into(),
                lock: Mutex::new(()),
                skipped: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Damaged lines skipped by reads so far.
    pub fn skipped_lines(&self) -> u64 {
        self.inner
            .skipped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, SinkError> + Send + 'static,
    ) -> Result<T, SinkError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = inner.lock.lock().unwrap_or_else(PoisonError::into_inner);
            f(&inner)
        })
        .await
        .map_err(|e| SinkError::new("dead-letter file task failed", e))?
    }
}

fn io(context: &str, path: &Path) -> impl FnOnce(std::io::Error) -> SinkError {
    let message = format!("{context} {}", path.display());
    move |e| SinkError::new(message, e).with_kind(SinkErrorKind::Io)
}

/// Only the owner may read dead letters: they hold request bodies.
const MODE: u32 = 0o600;

/// Opens `path` for appending, creating it (and its directory) readable by its owner only. A
/// file created here makes the directory entry durable too; an existing file readable by
/// others is narrowed to the owner.
fn open_private(path: &Path, dir: &Path) -> Result<File, SinkError> {
    let mut options = OpenOptions::new();
    options.read(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, MODE);
    match options.open(path) {
        Ok(file) => {
            narrow(&file, path);
            return Ok(file);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot open dead-letter file", path)(e)),
    }
    std::fs::create_dir_all(dir).map_err(io("cannot create the directory of", path))?;
    let file = options
        .create(true)
        .open(path)
        .map_err(io("cannot create dead-letter file", path))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Creates `path` anew (a stale one is removed first), readable by its owner only.
fn create_private(path: &Path) -> Result<File, SinkError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot remove stale", path)(e)),
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, MODE);
    options.open(path).map_err(io("cannot create", path))
}

/// Narrows an existing regular file that others may read (made by an older version) to its
/// owner; a failure is logged, not fatal.
fn narrow(file: &File, path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = file.metadata() else { return };
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            if let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(MODE)) {
                tracing::warn!(path = %path.display(), error = %e, "cannot make the dead-letter file private");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (file, path);
}

/// Makes a directory's entries (a created or renamed file) durable.
fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("cannot sync directory", dir))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

impl Inner {
    fn dir(&self) -> &Path {
        self.path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }

    fn append(&self, line: &[u8]) -> Result<(), SinkError> {
        let mut file = open_private(&self.path, self.dir())?;
        // End a torn last line first, so the new record starts on a line of its own.
        let len = file
            .metadata()
            .map_err(io("cannot read", &self.path))?
            .len();
        let mut record = Vec::with_capacity(line.len() + 2);
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::End(-1))
                .and_then(|_| file.read_exact(&mut last))
                .map_err(io("cannot read", &self.path))?;
            if last[0] != b'\n' {
                record.push(b'\n');
            }
        }
        record.extend_from_slice(line);
        record.push(b'\n');
        file.write_all(&record)
            .and_then(|()| file.flush())
            .and_then(|()| file.sync_data())
            .map_err(io("cannot write dead-letter file", &self.path))
    }

    fn read(&self) -> Result<Vec<DeadLetter>, SinkError> {
        let text = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("cannot read dead-letter file", &self.path)(e)),
        };
        let mut letters = Vec::new();
        for (number, line) in text.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<DeadLetter>(line) {
                Ok(letter) => letters.push(letter),
                Err(err) => {
                    self.skipped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        path = %self.path.display(),
                        line = number + 1,
                        error = %err,
                        "skipping a damaged dead-letter line (a torn write after a crash, or an edit)"
                    );
                }
            }
        }
        Ok(letters)
    }

    /// Rewrites the file without the records whose id is in `ids`; every other line, damaged
    /// ones included, is kept as it was.
    fn remove(&self, ids: &[String]) -> Result<usize, SinkError> {
        let text = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io("cannot read dead-letter file", &self.path)(e)),
        };
        let mut keep: Vec<&[u8]> = Vec::new();
        let mut removed = 0;
        for line in text.split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<DeadLetter>(line) {
                Ok(letter) if ids.contains(&letter.id) => removed += 1,
                _ => keep.push(line),
            }
        }
        if removed > 0 {
            self.rewrite(&keep)?;
        }
        Ok(removed)
    }

    fn rewrite(&self, keep: &[&[u8]]) -> Result<(), SinkError> {
        let dir = self.dir();
        let mut temp = self.path.clone().into_os_string();
        temp.push(".rewrite");
        let temp = PathBuf::from(temp);
        let mut file = create_private(&temp)?;
        for line in keep {
            file.write_all(line)
                .and_then(|()| file.write_all(b"\n"))
                .map_err(io("cannot write", &temp))?;
        }
        file.sync_all().map_err(io("cannot sync", &temp))?;
        drop(file);
        std::fs::rename(&temp, &self.path).map_err(io("cannot replace", &self.path))?;
        // Make the rename itself durable.
        sync_dir(dir)
    }
}

impl Sink for JsonLinesSink {
    fn write(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let line = serde_json::to_vec(&letter).map_err(|e| {
                SinkError::new("cannot encode a dead letter", e).with_kind(SinkErrorKind::Encoding)
            })?;
            self.blocking(move |inner| inner.append(&line)).await
        })
    }

    fn read_all(&self) -> BoxFuture<'_, Result<Vec<DeadLetter>, SinkError>> {
        Box::pin(self.blocking(Inner::read))
    }

    fn remove<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<usize, SinkError>> {
        let ids = ids.to_vec();
        Box::pin(self.blocking(move |inner| inner.remove(&ids)))
    }
}
