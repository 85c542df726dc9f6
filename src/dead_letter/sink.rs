//! Where dead letters go: the [`Sink`] trait and the in-memory sink.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use super::record::DeadLetter;

/// A boxed future, as the object-safe [`Sink`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a sink could not do what was asked.
#[derive(Debug)]
pub struct SinkError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SinkError {
    /// An error with this message and cause.
    pub fn new(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        SinkError {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An error with this message.
    pub fn msg(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            source: None,
        }
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

    /// How many letters are kept.
    fn count(&self) -> BoxFuture<'_, Result<usize, SinkError>> {
        Box::pin(async move { Ok(self.read_all().await?.len()) })
    }
}

/// Dead letters in memory: for tests, and for services that hand them on themselves. Clones
/// share the letters.
#[derive(Clone, Debug, Default)]
pub struct MemorySink {
    letters: Arc<Mutex<Vec<DeadLetter>>>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the letters kept.
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Sink for MemorySink {
    fn write(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), SinkError>> {
        self.letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(letter);
        Box::pin(std::future::ready(Ok(())))
    }

    fn read_all(&self) -> BoxFuture<'_, Result<Vec<DeadLetter>, SinkError>> {
        Box::pin(std::future::ready(Ok(self.letters())))
    }

    fn remove<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<usize, SinkError>> {
        let mut letters = self.letters.lock().unwrap_or_else(PoisonError::into_inner);
        let before = letters.len();
        letters.retain(|l| !ids.contains(&l.id));
        let removed = before - letters.len();
        Box::pin(std::future::ready(Ok(removed)))
    }

    fn count(&self) -> BoxFuture<'_, Result<usize, SinkError>> {
        let len = self
            .letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        Box::pin(std::future::ready(Ok(len)))
    }
}
