//! Dead letters in an append-only JSON Lines file, written by group commit.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::record::DeadLetter;
use super::sink::{BoxFuture, Sink, SinkError, SinkErrorKind};
// From loom under `--cfg tower_outbound_loom`: the queue and its writer are model-checked.
use crate::sync::{lock, wait_timeout_while, Condvar, Mutex};

/// Dead letters in a JSON Lines file: one record per line, appended, and flushed and fsynced
/// before `write` returns.
///
/// - **Group commit.** Concurrent `write`s (and `remove`s) are queued and written together by
///   one writer on tokio's blocking pool: one `write` and one fsync per batch (up to 4,096
///   records or 8 MiB). Each caller is answered only once the batch holding its record is
///   durable, so an outage's worth of letters costs one fsync per batch, not per letter. A
///   letter handed to `write` is written even if the caller then drops the future.
/// - **Removal is linear.** `remove` appends one tombstone line naming the removed letters
///   (`{"removed":["<id>",...]}`), fsynced like a write; it never rewrites the file per call.
///   Once the last letter is removed, or removed records and tombstones outnumber the letters
///   kept (and there are at least 1,024 of them), the file is compacted: rewritten atomically
///   without them, so a drained file is empty (damaged lines aside) (a temporary
///   file in the same directory, fsynced, renamed over the old one, the directory fsynced).
///   Every line that is not removed, damaged ones included, is kept byte for byte. Replaying
///   N letters (one read, removals in any grouping) is O(N) overall. [`compact`](Self::compact)
///   compacts at once.
/// - The file is created readable and writable by its owner only (mode 0600 on Unix; letters
///   hold request bodies), its directory fsynced so the new file survives a crash; an existing
///   file that others could read is narrowed to 0600.
/// - A file that cannot be created or written (a read-only or full disk, a path through a
///   regular file) fails the call with a [`SinkError`] of kind
///   [`SinkErrorKind::Io`](super::SinkErrorKind::Io): none of the records of that batch is
///   stored (a partly written batch is cut off again where possible, else left as a damaged
///   line that reads skip). It never panics.
/// - A crash can leave a torn last line. Reading skips it (with a warning), never fails, and
///   never loses the other records; the next write first ends the torn line, so the new
///   record stays whole. A torn tombstone is skipped the same way: the letters it named come
///   back and can be replayed again (their idempotency keys go with them).
/// - A damaged line anywhere is skipped the same way and counted in
///   [`skipped_lines`](Self::skipped_lines).
///
/// Clones share the file, the queue and the writer. One process should own a file: the sink
/// keeps an index of the letters in memory (built by the first read, count or removal) and
/// operations are serialized within a process, not across processes (use a Redis Stream,
/// feature `redis`, to share dead letters between workers). A change to the file made from
/// outside (another length or another inode) is noticed and the index rebuilt.
#[derive(Clone, Debug)]
pub struct JsonLinesSink {
    inner: Arc<Inner>,
}

/// Most records written in one batch.
const MAX_BATCH: usize = 4096;
/// Most bytes written in one batch (a single larger record still goes alone).
const MAX_BATCH_BYTES: usize = 8 << 20;
/// The longest a writer waits for the callers of its last batch to queue their next records.
const COMMIT_DELAY: Duration = Duration::from_millis(1);
/// Compaction waits until at least this many lines are garbage.
const COMPACT_MIN_GARBAGE: usize = 1024;
/// The start of a tombstone line; no letter line starts so (a letter's first field is
/// `version`).
const TOMBSTONE_PREFIX: &[u8] = b"{\"removed\":";

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    // Held for every file operation, so batches, reads and rewrites never interleave.
    store: Mutex<Store>,
    queue: Mutex<Queue>,
    // Signalled when a record is queued, for a writer gathering a batch.
    arrived: Condvar,
    skipped: AtomicU64,
    batches: AtomicU64,
}

#[derive(Debug, Default)]
struct Queue {
    pending: VecDeque<Pending>,
    // A writer is draining the queue.
    running: bool,
}

#[derive(Debug)]
enum Op {
    Append { id: String, line: Vec<u8> },
    Remove { ids: Vec<String> },
}

#[derive(Debug)]
struct Pending {
    op: Op,
    done: oneshot::Sender<Result<usize, SinkError>>,
}

/// What this process knows of the file.
#[derive(Debug, Default)]
struct Store {
    // Open for appending, when open.
    file: Option<File>,
    // The file as this process last left it; another one means it was changed from outside.
    seen: Option<Identity>,
    // The letters kept, once read.
    index: Option<Index>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    device: u64,
    inode: u64,
    len: u64,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Identity {
                device: meta.dev(),
                inode: meta.ino(),
                len: meta.len(),
            }
        }
        #[cfg(not(unix))]
        {
            Identity {
                device: 0,
                inode: 0,
                len: meta.len(),
            }
        }
    }
}

#[derive(Debug, Default)]
struct Index {
    // Live letter lines per id: a file may hold one letter twice (written again after a
    // crash, or joined by hand), and `count` must agree with `read_all`, which returns every
    // copy.
    live: HashMap<String, usize>,
    // Live letter lines in all.
    letters: usize,
    // Lines that compaction would drop: removed records and tombstones.
    garbage: usize,
}

impl Index {
    fn add(&mut self, id: &str) {
        match self.live.get_mut(id) {
            Some(copies) => *copies += 1,
            None => {
                self.live.insert(id.to_owned(), 1);
            }
        }
        self.letters += 1;
    }

    /// Forgets every copy of `id`; how many there were.
    fn remove(&mut self, id: &str) -> usize {
        let copies = self.live.remove(id).unwrap_or(0);
        self.letters -= copies;
        copies
    }
}

#[derive(Serialize, Deserialize)]
struct Tombstone<'a> {
    #[serde(borrow)]
    removed: Vec<std::borrow::Cow<'a, str>>,
}

impl JsonLinesSink {
    /// A sink appending to `path` (created on first write, with its directory).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        JsonLinesSink {
            inner: Arc::new(Inner {
                path: path.into(),
                store: Mutex::new(Store::default()),
                queue: Mutex::new(Queue::default()),
                arrived: Condvar::new(),
                skipped: AtomicU64::new(0),
                batches: AtomicU64::new(0),
            }),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Damaged lines skipped by reads so far.
    pub fn skipped_lines(&self) -> u64 {
        self.inner.skipped.load(Ordering::Relaxed)
    }

    /// Batches written so far: each is one write and one fsync, for one or more records.
    pub fn batches_written(&self) -> u64 {
        self.inner.batches.load(Ordering::Relaxed)
    }

    /// Rewrites the file now without removed records and tombstones (damaged lines are kept).
    /// Done on its own once they outnumber the letters kept; this is for a quiet moment.
    pub async fn compact(&self) -> Result<(), SinkError> {
        self.blocking(|inner, store| store.compact(inner)).await
    }

    /// Runs `f` on the file with the store locked, on the blocking pool when there is a
    /// runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner, &mut Store) -> Result<T, SinkError> + Send + 'static,
    ) -> Result<T, SinkError> {
        let inner = self.inner.clone();
        let work = move || {
            let mut store = lock(&inner.store);
            f(&inner, &mut store)
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle
                .spawn_blocking(work)
                .await
                .map_err(|e| SinkError::new("dead-letter file task failed", e))?,
            Err(_) => work(),
        }
    }

    /// Queues one operation for the writer and waits for its batch to be durable.
    async fn submit(&self, op: Op) -> Result<usize, SinkError> {
        let mut answers = self.enqueue(vec![op]);
        match answers.pop() {
            Some(answer) => self.answer(answer).await,
            None => Ok(0),
        }
    }

    /// Queues operations for the writer, in order, and starts it if it is not running.
    fn enqueue(&self, ops: Vec<Op>) -> Vec<oneshot::Receiver<Result<usize, SinkError>>> {
        let mut answers = Vec::with_capacity(ops.len());
        let start = {
            let mut queue = lock(&self.inner.queue);
            for op in ops {
                let (done, answer) = oneshot::channel();
                queue.pending.push_back(Pending { op, done });
                answers.push(answer);
            }
            !std::mem::replace(&mut queue.running, true)
        };
        if !start {
            self.inner.arrived.notify_one();
        }
        if start {
            let writer = Writer::new(self.inner.clone());
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    // The writer owns its queue's flag: if it is dropped without running (the
                    // runtime shutting down), its drop hands the flag back and fails the queue.
                    drop(handle.spawn_blocking(move || writer.run()));
                }
                Err(_) => writer.run(),
            }
        }
        answers
    }

    async fn answer(
        &self,
        answer: oneshot::Receiver<Result<usize, SinkError>>,
    ) -> Result<usize, SinkError> {
        answer.await.map_err(|_| {
            SinkError::msg(format!(
                "the writer of dead-letter file {} stopped before the record was written",
                self.inner.path.display()
            ))
            .with_kind(SinkErrorKind::Io)
        })?
    }
}

/// Drains the queue, one batch at a time. Dropped without finishing (a panic, a runtime that
/// shuts down first), it clears the queue: the waiting callers get an error, and the next
/// `write` starts a new writer.
struct Writer {
    inner: Arc<Inner>,
    finished: bool,
}

impl Writer {
    fn new(inner: Arc<Inner>) -> Self {
        Writer {
            inner,
            finished: false,
        }
    }

    fn run(mut self) {
        let mut last_batch = 0;
        loop {
            let batch = {
                let mut queue = lock(&self.inner.queue);
                if last_batch > 1 && queue.pending.len() < last_batch {
                    // The callers of the last batch are many and were just answered: give
                    // them a moment to queue their next records, so they share one fsync
                    // instead of trickling into small batches.
                    queue = wait_timeout_while(
                        &self.inner.arrived,
                        &self.inner.queue,
                        queue,
                        COMMIT_DELAY,
                        |q| q.pending.len() < last_batch,
                    );
                }
                if queue.pending.is_empty() {
                    queue.running = false;
                    drop(queue);
                    self.finished = true;
                    return;
                }
                let mut bytes = 0;
                let mut take = 0;
                for pending in &queue.pending {
                    if take == MAX_BATCH || (take > 0 && bytes >= MAX_BATCH_BYTES) {
                        break;
                    }
                    bytes += match &pending.op {
                        Op::Append { line, .. } => line.len(),
                        Op::Remove { ids } => ids.len() * 40,
                    };
                    take += 1;
                }
                last_batch = take;
                queue.pending.drain(..take).collect::<Vec<_>>()
            };
            let (ops, answers): (Vec<Op>, Vec<_>) =
                batch.into_iter().map(|p| (p.op, p.done)).unzip();
            let results = {
                let mut store = lock(&self.inner.store);
                store.apply(&self.inner, &ops)
            };
            match results {
                Ok(counts) => {
                    for (answer, count) in answers.into_iter().zip(counts) {
                        let _ = answer.send(Ok(count));
                    }
                }
                Err(error) => {
                    for answer in answers {
                        let _ = answer.send(Err(error.duplicate()));
                    }
                }
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut queue = lock(&self.inner.queue);
        queue.running = false;
        queue.pending.clear();
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

/// One non-blank line of the file.
struct Line<'a> {
    raw: &'a [u8],
    kind: LineKind,
}

// Nearly every line is a letter: boxing them would cost an allocation per line for nothing.
#[allow(clippy::large_enum_variant)]
enum LineKind {
    Letter {
        letter: DeadLetter,
        live: bool,
        // An earlier line with the same id, so a tombstone removes every copy.
        same_id: Option<usize>,
    },
    Tombstone,
    Damaged,
}

/// Reads every line once: letters, tombstones applied to the letters before them, and damaged
/// lines. Linear in the file's size.
fn parse<'a>(bytes: &'a [u8], inner: &Inner, report_damaged: bool) -> Vec<Line<'a>> {
    let mut lines: Vec<Line<'a>> = Vec::new();
    let mut latest: HashMap<String, usize> = HashMap::new();
    for (number, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let error = if raw.starts_with(TOMBSTONE_PREFIX) {
            match serde_json::from_slice::<Tombstone<'_>>(raw) {
                Ok(tombstone) => {
                    for id in &tombstone.removed {
                        let mut at = latest.remove(id.as_ref());
                        while let Some(i) = at {
                            at = None;
                            if let LineKind::Letter { live, same_id, .. } = &mut lines[i].kind {
                                *live = false;
                                at = *same_id;
                            }
                        }
                    }
                    lines.push(Line {
                        raw,
                        kind: LineKind::Tombstone,
                    });
                    continue;
                }
                Err(err) => err,
            }
        } else {
            match serde_json::from_slice::<DeadLetter>(raw) {
                Ok(letter) => {
                    let same_id = latest.insert(letter.id.clone(), lines.len());
                    lines.push(Line {
                        raw,
                        kind: LineKind::Letter {
                            letter,
                            live: true,
                            same_id,
                        },
                    });
                    continue;
                }
                Err(err) => err,
            }
        };
        if report_damaged {
            inner.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                path = %inner.path.display(),
                line = number + 1,
                error = %error,
                "skipping a damaged dead-letter line (a torn write after a crash, or an edit)"
            );
        }
        lines.push(Line {
            raw,
            kind: LineKind::Damaged,
        });
    }
    lines
}

fn index_of(lines: &[Line<'_>]) -> Index {
    let mut index = Index::default();
    for line in lines {
        match &line.kind {
            LineKind::Letter {
                letter, live: true, ..
            } => index.add(&letter.id),
            LineKind::Letter { live: false, .. } | LineKind::Tombstone => index.garbage += 1,
            LineKind::Damaged => {}
        }
    }
    index
}

impl Store {
    /// Forgets what it knew of the file if the file was changed from outside.
    fn check(&mut self, path: &Path) -> Result<(), SinkError> {
        let now = match std::fs::metadata(path) {
            Ok(meta) => Some(Identity::of(&meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io("cannot read dead-letter file", path)(e)),
        };
        if now != self.seen {
            self.file = None;
            self.index = None;
            self.seen = now;
        }
        Ok(())
    }

    /// The whole file and its identity (empty when it does not exist yet).
    fn contents(&mut self, path: &Path) -> Result<Vec<u8>, SinkError> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.seen = None;
                return Ok(Vec::new());
            }
            Err(e) => return Err(io("cannot read dead-letter file", path)(e)),
        };
        let meta = file
            .metadata()
            .map_err(io("cannot read dead-letter file", path))?;
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.read_to_end(&mut bytes)
            .map_err(io("cannot read dead-letter file", path))?;
        self.seen = Some(Identity::of(&meta));
        Ok(bytes)
    }

    /// Every letter kept, oldest first; builds the index on the way.
    fn read(&mut self, inner: &Inner) -> Result<Vec<DeadLetter>, SinkError> {
        self.check(&inner.path)?;
        let bytes = self.contents(&inner.path)?;
        let lines = parse(&bytes, inner, true);
        self.index = Some(index_of(&lines));
        Ok(lines
            .into_iter()
            .filter_map(|line| match line.kind {
                LineKind::Letter {
                    letter, live: true, ..
                } => Some(letter),
                _ => None,
            })
            .collect())
    }

    fn load_index(&mut self, inner: &Inner) -> Result<&mut Index, SinkError> {
        if self.index.is_none() {
            let bytes = self.contents(&inner.path)?;
            let lines = parse(&bytes, inner, false);
            self.index = Some(index_of(&lines));
        }
        Ok(self.index.get_or_insert_with(Index::default))
    }

    fn count(&mut self, inner: &Inner) -> Result<usize, SinkError> {
        self.check(&inner.path)?;
        Ok(self.load_index(inner)?.letters)
    }

    /// The file open for appending, and whether it ends in a torn line.
    fn open(&mut self, path: &Path) -> Result<(&mut File, bool), SinkError> {
        let mut torn = false;
        if self.file.is_none() {
            let mut file = open_private(path, parent(path))?;
            let meta = file.metadata().map_err(io("cannot read", path))?;
            if meta.is_file() && meta.len() > 0 {
                let mut last = [0u8; 1];
                file.seek(SeekFrom::End(-1))
                    .and_then(|_| file.read_exact(&mut last))
                    .map_err(io("cannot read", path))?;
                torn = last[0] != b'\n';
            }
            self.seen = Some(Identity::of(&meta));
            self.file = Some(file);
        }
        match self.file.as_mut() {
            Some(file) => Ok((file, torn)),
            None => Err(SinkError::msg("dead-letter file not open").with_kind(SinkErrorKind::Io)),
        }
    }

    /// Writes one batch with one write and one fsync; the count of letters each removal
    /// removed (0 for appends).
    fn apply(&mut self, inner: &Inner, ops: &[Op]) -> Result<Vec<usize>, SinkError> {
        let path = &inner.path;
        self.check(path)?;
        if ops.iter().any(|op| matches!(op, Op::Remove { .. })) {
            self.load_index(inner)?;
        }
        let mut buf = Vec::new();
        let mut counts = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Append { id, line } => {
                    buf.extend_from_slice(line);
                    buf.push(b'\n');
                    if let Some(index) = &mut self.index {
                        index.add(id);
                    }
                    counts.push(0);
                }
                Op::Remove { ids } => {
                    let index = self.index.get_or_insert_with(Index::default);
                    let mut lines_removed = 0;
                    let removed: Vec<std::borrow::Cow<'_, str>> = ids
                        .iter()
                        .filter(|id| {
                            let copies = index.remove(id.as_str());
                            lines_removed += copies;
                            copies > 0
                        })
                        .map(|id| std::borrow::Cow::Borrowed(id.as_str()))
                        .collect();
                    counts.push(lines_removed);
                    if !removed.is_empty() {
                        index.garbage += lines_removed + 1;
                        serde_json::to_writer(&mut buf, &Tombstone { removed }).map_err(|e| {
                            SinkError::new("cannot encode a dead-letter removal", e)
                                .with_kind(SinkErrorKind::Encoding)
                        })?;
                        buf.push(b'\n');
                    }
                }
            }
        }
        if buf.is_empty() {
            return Ok(counts);
        }
        let (file, torn) = match self.open(path) {
            Ok(open) => open,
            Err(e) => {
                self.index = None;
                return Err(e);
            }
        };
        let before = file.metadata().map(|m| (m.is_file(), m.len()));
        let written = if torn {
            // End the torn line first, so the batch starts on a line of its own.
            file.write_all(b"\n")
        } else {
            Ok(())
        }
        .and_then(|()| file.write_all(&buf))
        .and_then(|()| file.flush())
        .and_then(|()| file.sync_data())
        .and_then(|()| file.metadata());
        match written {
            Ok(meta) => {
                self.seen = Some(Identity::of(&meta));
                inner.batches.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // Cut a partly written batch off again, so no half record stays behind.
                if let Ok((true, len)) = before {
                    let _ = file.set_len(len).and_then(|()| file.sync_data());
                }
                self.file = None;
                self.index = None;
                self.seen = None;
                return Err(io("cannot write dead-letter file", path)(e));
            }
        }
        if self.index.as_ref().is_some_and(|i| {
            // Drained (whatever the count), or mostly garbage.
            (i.letters == 0 && i.garbage > 0)
                || (i.garbage >= COMPACT_MIN_GARBAGE && i.garbage > i.letters)
        }) {
            // The batch is durable already; a failed compaction only leaves the file longer.
            if let Err(e) = self.compact(inner) {
                tracing::warn!(path = %path.display(), error = %e, "cannot compact the dead-letter file");
            }
        }
        Ok(counts)
    }

    /// Rewrites the file without removed records and tombstones, atomically.
    fn compact(&mut self, inner: &Inner) -> Result<(), SinkError> {
        let path = &inner.path;
        self.check(path)?;
        let bytes = self.contents(path)?;
        let lines = parse(&bytes, inner, false);
        let index = index_of(&lines);
        if index.garbage == 0 {
            self.index = Some(index);
            return Ok(());
        }
        let mut temp = path.clone().into_os_string();
        temp.push(".rewrite");
        let temp = PathBuf::from(temp);
        let mut file = create_private(&temp)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut file);
        for line in &lines {
            if matches!(
                line.kind,
                LineKind::Letter { live: true, .. } | LineKind::Damaged
            ) {
                out.write_all(line.raw)
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(io("cannot write", &temp))?;
            }
        }
        out.flush().map_err(io("cannot write", &temp))?;
        drop(out);
        file.sync_all().map_err(io("cannot sync", &temp))?;
        drop(file);
        std::fs::rename(&temp, path).map_err(io("cannot replace", path))?;
        self.file = None;
        self.seen = None;
        self.index = None;
        // Make the rename itself durable.
        sync_dir(parent(path))?;
        self.seen = std::fs::metadata(path).ok().map(|m| Identity::of(&m));
        self.index = Some(Index {
            garbage: 0,
            ..index
        });
        Ok(())
    }
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

impl Sink for JsonLinesSink {
    fn write(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let line = serde_json::to_vec(&letter).map_err(|e| {
                SinkError::new("cannot encode a dead letter", e).with_kind(SinkErrorKind::Encoding)
            })?;
            self.submit(Op::Append {
                id: letter.id,
                line,
            })
            .await
            .map(|_| ())
        })
    }

    fn write_many(&self, letters: Vec<DeadLetter>) -> BoxFuture<'_, Vec<Result<(), SinkError>>> {
        Box::pin(async move {
            let mut results: Vec<Option<Result<(), SinkError>>> = Vec::with_capacity(letters.len());
            let mut ops = Vec::with_capacity(letters.len());
            for letter in letters {
                match serde_json::to_vec(&letter) {
                    Ok(line) => {
                        ops.push(Op::Append {
                            id: letter.id,
                            line,
                        });
                        results.push(None);
                    }
                    Err(e) => {
                        results.push(Some(Err(SinkError::new("cannot encode a dead letter", e)
                            .with_kind(SinkErrorKind::Encoding))))
                    }
                }
            }
            let mut answers = self.enqueue(ops).into_iter();
            let mut out = Vec::with_capacity(results.len());
            for result in results {
                out.push(match result {
                    Some(failed) => failed,
                    None => match answers.next() {
                        Some(answer) => self.answer(answer).await.map(|_| ()),
                        None => Err(SinkError::msg("dead-letter record lost in the queue")),
                    },
                });
            }
            out
        })
    }

    fn read_all(&self) -> BoxFuture<'_, Result<Vec<DeadLetter>, SinkError>> {
        Box::pin(self.blocking(|inner, store| store.read(inner)))
    }

    fn remove<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<usize, SinkError>> {
        let ids = ids.to_vec();
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(0);
            }
            self.submit(Op::Remove { ids }).await
        })
    }

    fn count(&self) -> BoxFuture<'_, Result<usize, SinkError>> {
        Box::pin(self.blocking(|inner, store| store.count(inner)))
    }
}

/// Model checks of the group-commit queue (`--cfg tower_outbound_loom`, see
/// `docs/reliability.md`): the queue's mutex, its condvar and its `running` flag, with the
/// writer run inline (no runtime) on real files.
#[cfg(all(test, tower_outbound_loom))]
mod loom_models {
    use super::*;
    use loom::thread;
    use tokio::sync::oneshot::error::TryRecvError;

    fn append(id: &str) -> Op {
        Op::Append {
            id: id.to_owned(),
            line: format!("{{\"id\":\"{id}\"}}").into_bytes(),
        }
    }

    fn directory() -> tempfile::TempDir {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            if let Ok(dir) = tempfile::tempdir_in(shm) {
                return dir;
            }
        }
        tempfile::tempdir().unwrap()
    }

    fn is_idle(sink: &JsonLinesSink) -> bool {
        let queue = lock(&sink.inner.queue);
        queue.pending.is_empty() && !queue.running
    }

    /// Two callers queue letters while the first one's writer drains, waits for the next
    /// batch (the commit delay) and stops: every letter is written once, whole, in its
    /// caller's order, every caller is answered, and the writer never stops with work queued.
    #[test]
    fn loom_every_queued_letter_is_written_once_and_answered() {
        loom::model(|| {
            let dir = directory();
            let path = dir.path().join("letters.jsonl");
            let sink = JsonLinesSink::new(&path);
            let other = sink.clone();
            let second = thread::spawn(move || other.enqueue(vec![append("b")]));
            let first = sink.enqueue(vec![append("a1"), append("a2")]);
            let second = second.join().unwrap();
            for mut answer in first.into_iter().chain(second) {
                assert!(
                    matches!(answer.try_recv(), Ok(Ok(0))),
                    "a caller was not answered with its letter written"
                );
            }
            assert!(is_idle(&sink), "the writer stopped with letters queued");
            let text = std::fs::read_to_string(&path).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            let mut sorted = lines.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                [r#"{"id":"a1"}"#, r#"{"id":"a2"}"#, r#"{"id":"b"}"#]
            );
            let at = |id: &str| lines.iter().position(|l| l.contains(id)).unwrap();
            assert!(at("a1") < at("a2"), "one caller's letters keep their order");
        });
    }

    /// A writer dropped before it ran (its runtime shutting down) hands the `running` flag
    /// back and fails what it held, while another caller queues a letter: that caller is
    /// answered either way (written by a writer of its own, or failed with the rest), never
    /// left waiting, and the queue ends idle.
    #[test]
    fn loom_a_writer_dropped_unrun_leaves_no_caller_waiting() {
        loom::model(|| {
            let dir = directory();
            let path = dir.path().join("letters.jsonl");
            let sink = JsonLinesSink::new(&path);
            let mut held = {
                let mut queue = lock(&sink.inner.queue);
                let (done, answer) = oneshot::channel();
                queue.pending.push_back(Pending {
                    op: append("a"),
                    done,
                });
                queue.running = true;
                answer
            };
            let writer = Writer::new(sink.inner.clone());
            let dropper = thread::spawn(move || drop(writer));
            let mut queued = sink.enqueue(vec![append("b")]);
            dropper.join().unwrap();
            assert!(matches!(held.try_recv(), Err(TryRecvError::Closed)));
            let answer = queued.pop().unwrap().try_recv();
            assert!(
                !matches!(answer, Err(TryRecvError::Empty)),
                "a caller waits for a writer that is gone"
            );
            if matches!(answer, Ok(Ok(0))) {
                let text = std::fs::read_to_string(&path).unwrap();
                assert_eq!(text, "{\"id\":\"b\"}\n");
            }
            assert!(is_idle(&sink));
        });
    }
}
