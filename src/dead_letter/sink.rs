//! Where dead letters go: the [`Sink`] trait and the in-memory sink.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::record::DeadLetter;

/// A boxed future, as the object-safe [`Sink`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What kind of failure a [`SinkError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkErrorKind {
    /// The sink is at its configured capacity and refused the letter; nothing was stored.
    Full,
    /// The storage below the sink failed: a file that cannot be created or written (a
    /// read-only or full disk, missing permissions), or a Redis call that failed.
    Io,
    /// The store did not answer in time.
    Timeout,
    /// A letter could not be encoded or a record decoded.
    Encoding,
    /// Anything else.
    Other,
}

/// Why a sink could not do what was asked. When a `write` returns it, the letter was **not**
/// stored.
#[derive(Debug)]
pub struct SinkError {
    kind: SinkErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SinkError {
    /// An error with this message and cause (of kind [`SinkErrorKind::Other`]).
    pub fn new(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        SinkError {
            kind: SinkErrorKind::Other,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An error with this message (of kind [`SinkErrorKind::Other`]).
    pub fn msg(message: impl Into<String>) -> Self {
        SinkError {
            kind: SinkErrorKind::Other,
            message: message.into(),
            source: None,
        }
    }

    /// The same error, of this kind.
    pub fn with_kind(mut self, kind: SinkErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> SinkErrorKind {
        self.kind
    }

    /// A copy for another caller of the same failed batch: the same kind and message, and
    /// an I/O cause with the same OS error code (other causes as text).
    pub(crate) fn duplicate(&self) -> SinkError {
        let source = self.source.as_deref().map(|source| {
            let copy = match source.downcast_ref::<std::io::Error>() {
                Some(io) => match io.raw_os_error() {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::new(io.kind(), io.to_string()),
                },
                None => std::io::Error::other(source.to_string()),
            };
            Box::new(copy) as Box<dyn std::error::Error + Send + Sync>
        });
        SinkError {
            kind: self.kind,
            message: self.message.clone(),
            source,
        }
    }

    /// Whether the sink refused the letter because it is at capacity.
    pub fn is_full(&self) -> bool {
        self.kind == SinkErrorKind::Full
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Where dead letters are kept. Object safe, so a layer holds an `Arc<dyn Sink>` and any
/// store fits: in memory, a JSON Lines file, a Redis Stream.
///
/// `write` must not return before the letter is durable as far as the sink can make it (the
/// file sink flushes and fsyncs). `remove` removes exactly the letters with those ids and
/// keeps every other.
pub trait Sink: Send + Sync + 'static {
    /// Stores one letter.
    fn write(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), SinkError>>;

    /// Every letter kept, oldest first. Damaged records are skipped (and logged), never fatal.
    fn read_all(&self) -> BoxFuture<'_, Result<Vec<DeadLetter>, SinkError>>;

    /// Removes the letters with these ids; returns how many were removed.
    fn remove<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<usize, SinkError>>;

    /// Stores several letters; one result per letter, in order. Each `Ok` means that letter is
    /// as durable as [`write`](Self::write) makes it. The default writes them one at a time;
    /// sinks that can share the cost (the JSON Lines sink: one fsync for all) do so. A writer
    /// that drains a queue of letters should hand them over here rather than one by one.
    fn write_many(&self, letters: Vec<DeadLetter>) -> BoxFuture<'_, Vec<Result<(), SinkError>>> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(letters.len());
            for letter in letters {
                results.push(self.write(letter).await);
            }
            results
        })
    }

    /// How many letters are kept.
    fn count(&self) -> BoxFuture<'_, Result<usize, SinkError>> {
        Box::pin(async move { Ok(self.read_all().await?.len()) })
    }
}

/// The default capacity of a [`MemorySink`].
const DEFAULT_MEMORY_CAPACITY: usize = 10_000;

/// Dead letters in memory: for tests, and for services that hand them on themselves. Clones
/// share the letters.
///
/// Bounded: it keeps at most [`capacity`](Self::capacity) letters (default 10,000). When full,
/// `write` refuses the new letter with a [`SinkError`] of kind [`SinkErrorKind::Full`] (so the
/// caller learns it was not stored), counts it in [`dropped`](Self::dropped), and logs one
/// warning until the sink has room again. Nothing already kept is evicted.
#[derive(Clone, Debug)]
pub struct MemorySink {
    shared: Arc<MemoryShared>,
}

#[derive(Debug)]
struct MemoryShared {
    letters: Mutex<MemoryLetters>,
    capacity: usize,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct MemoryLetters {
    letters: Vec<DeadLetter>,
    // Set once the sink refused a letter and warned; cleared when room is made.
    warned: bool,
}

impl Default for MemorySink {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_MEMORY_CAPACITY)
    }
}

impl MemorySink {
    /// An empty sink keeping at most 10,000 letters.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty sink keeping at most `capacity` letters (0 refuses every letter).
    pub fn with_capacity(capacity: usize) -> Self {
        MemorySink {
            shared: Arc::new(MemoryShared {
                letters: Mutex::new(MemoryLetters::default()),
                capacity,
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// The most letters kept.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Letters refused because the sink was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryLetters> {
        self.shared
            .letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the letters kept.
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.lock().letters.clone()
    }
}

impl Sink for MemorySink {
    fn write(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), SinkError>> {
        let mut kept = self.lock();
        let result = if kept.letters.len() < self.shared.capacity {
            kept.letters.push(letter);
            Ok(())
        } else {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            if !kept.warned {
                kept.warned = true;
                tracing::warn!(
                    capacity = self.shared.capacity,
                    "in-memory dead-letter sink is full; refusing new letters until some are removed"
                );
            }
            Err(SinkError::msg(format!(
                "in-memory dead-letter sink is full ({} letters); the letter was not stored",
                self.shared.capacity
            ))
            .with_kind(SinkErrorKind::Full))
        };
        drop(kept);
        Box::pin(std::future::ready(result))
    }

    fn read_all(&self) -> BoxFuture<'_, Result<Vec<DeadLetter>, SinkError>> {
        Box::pin(std::future::ready(Ok(self.letters())))
    }

    fn remove<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<usize, SinkError>> {
        let ids: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut kept = self.lock();
        let before = kept.letters.len();
        kept.letters.retain(|l| !ids.contains(l.id.as_str()));
        let removed = before - kept.letters.len();
        if removed > 0 {
            kept.warned = false;
        }
        drop(kept);
        Box::pin(std::future::ready(Ok(removed)))
    }

    fn count(&self) -> BoxFuture<'_, Result<usize, SinkError>> {
        let len = self.lock().letters.len();
        Box::pin(std::future::ready(Ok(len)))
    }
}
