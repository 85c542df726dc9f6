//! Dead letters on a Redis Stream, so any worker can replay what another dead-lettered.

use std::fmt;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::{StreamMaxlen, StreamRangeReply};
use redis::AsyncCommands;

use crate::dead_letter::{BoxFuture, DeadLetter, Sink, SinkError};

/// Dead letters as entries of a Redis Stream (`XADD` with a length cap), shared by every
/// worker that uses the same stream.
///
/// Each entry holds the letter's id and its JSON. `read_all` reads the stream (`XRANGE`);
/// `remove` deletes exactly the entries of the given letter ids (`XDEL`), so a letter replayed
/// by one worker is gone for all. Every Redis call has a timeout (default 1 s). Entries past the cap (approximate trimming, `MAXLEN ~`) are
/// dropped by Redis: choose a cap above the backlog you may need to keep.
#[derive(Clone)]
pub struct RedisStreamSink {
    connection: ConnectionManager,
    stream: String,
    max_len: usize,
    timeout: Duration,
}

impl fmt::Debug for RedisStreamSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStreamSink")
            .field("stream", &self.stream)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl RedisStreamSink {
    /// Letters on `stream`, keeping about `max_len` of them at most.
    pub fn new(connection: ConnectionManager, stream: impl Into<String>, max_len: usize) -> Self {
        RedisStreamSink {
            connection,
            stream: stream.into(),
            max_len,
            timeout: Duration::from_secs(1),
        }
    }

    /// The most one Redis call may take before it fails with a [`SinkError`] (default 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs one Redis call under the timeout.
    async fn call<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SinkError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(SinkError::new(
                format!("cannot {what} stream {}", self.stream),
                e,
            )),
            Err(_) => Err(SinkError::msg(format!(
                "cannot {what} stream {}: Redis did not answer within {:?}",
                self.stream, self.timeout
            ))),
        }
    }

    async fn entries(&self) -> Result<Vec<(String, Option<DeadLetter>)>, SinkError> {
        let mut connection = self.connection.clone();
        let reply: StreamRangeReply = self
            .call("read", connection.xrange_all(&self.stream))
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|entry| {
                let letter = entry
                    .get::<String>("letter")
                    .and_then(|json| serde_json::from_str::<DeadLetter>(&json).ok());
                if letter.is_none() {
                    tracing::warn!(stream = %self.stream, entry = %entry.id, "skipping a damaged dead-letter entry");
                }
                (entry.id, letter)
            })
            .collect())
    }
}

impl Sink for RedisStreamSink {
    fn write(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let json = serde_json::to_string(&letter)
                .map_err(|e| SinkError::new("cannot encode a dead letter", e))?;
            let mut connection = self.connection.clone();
            let _: String = self
                .call(
                    "add to",
                    connection.xadd_maxlen(
                        &self.stream,
                        StreamMaxlen::Approx(self.max_len),
                        "*",
                        &[("id", letter.id.as_str()), ("letter", json.as_str())],
                    ),
                )
                .await?;
            Ok(())
        })
    }

    fn read_all(&self) -> BoxFuture<'_, Result<Vec<DeadLetter>, SinkError>> {
        Box::pin(async move {
            Ok(self
                .entries()
                .await?
                .into_iter()
                .filter_map(|(_, letter)| letter)
                .collect())
        })
    }

    fn remove<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<usize, SinkError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(0);
            }
            let entries: Vec<String> = self
                .entries()
                .await?
                .into_iter()
                .filter(|(_, letter)| letter.as_ref().is_some_and(|l| ids.contains(&l.id)))
                .map(|(entry, _)| entry)
                .collect();
            if entries.is_empty() {
                return Ok(0);
            }
            let mut connection = self.connection.clone();
            let removed: usize = connection.xdel(&self.stream, &entries).await.map_err(|e| {
                SinkError::new(format!("cannot delete from stream {}", self.stream), e)
            })?;
            Ok(removed)
        })
    }

    fn count(&self) -> BoxFuture<'_, Result<usize, SinkError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            self.call("count", connection.xlen(&self.stream)).await
        })
    }
}
