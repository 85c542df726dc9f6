//! Dead letters on a Redis Stream, so any worker can replay what another dead-lettered.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::RedisConnection;
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, Script};

use crate::dead_letter::{BoxFuture, DeadLetter, Sink, SinkError, SinkErrorKind};

/// Adds a letter unless the stream already holds `cap` entries: nothing is ever trimmed.
///
/// KEYS[1] the stream; ARGV cap, letter id, letter JSON. Returns the entry id, or nil when
/// full.
const ADD: &str = r"
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', 'id', ARGV[2], 'letter', ARGV[3])
";

/// Entries read per `XRANGE` call.
const PAGE: usize = 1000;

/// Bounds of the call timeout.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Dead letters as entries of a Redis Stream, shared by every worker that uses the same
/// stream.
///
/// - Each entry holds the letter's id and its JSON. `read_all` reads the stream (`XRANGE`,
///   1,000 entries per call); `remove` deletes exactly the entries of the given letter ids
///   (`XDEL`), so a letter replayed by one worker is gone for all.
/// - **A hard cap, never eviction.** The stream holds at most `max_len` letters: a write
///   past it is refused with a [`SinkError`] of kind [`SinkErrorKind::Full`] (the letter is
///   not stored and the caller is told so), checked and added in one atomic script. Nothing
///   is ever trimmed: a letter leaves the stream only by `remove`. Choose a cap that bounds
///   Redis's memory and watch for `Full` errors; replaying makes room.
/// - `remove` costs O(removed letters): the entry id of every letter `read_all` returned is
///   remembered (clones share the memory), so removing them needs no scan. Only ids this
///   sink has not read are looked up by reading the stream once per call.
/// - Every Redis call has a timeout (default 1 s); a slow or unreachable Redis is a
///   [`SinkError`] of kind [`SinkErrorKind::Timeout`] or [`SinkErrorKind::Io`].
#[derive(Clone)]
pub struct RedisStreamSink {
    connection: RedisConnection,
    stream: String,
    max_len: usize,
    timeout: Duration,
    add: Script,
    // Letter id → entry id, of the letters last read.
    entries: Arc<Mutex<HashMap<String, String>>>,
}

impl fmt::Debug for RedisStreamSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStreamSink")
            .field("stream", &self.stream)
            .field("max_len", &self.max_len)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStreamSink {
    /// Letters on `stream`, at most `max_len` of them: writes past the cap are refused with a
    /// [`SinkErrorKind::Full`] error, never trimmed (0 refuses every letter).
    pub fn new(
        connection: impl Into<RedisConnection>,
        stream: impl Into<String>,
        max_len: usize,
    ) -> Self {
        RedisStreamSink {
            connection: connection.into(),
            stream: stream.into(),
            max_len,
            timeout: Duration::from_secs(1),
            add: Script::new(ADD),
            entries: Arc::default(),
        }
    }

    /// The most one Redis call may take before it fails with a [`SinkError`] (default 1 s).
    /// Values are kept within 1 ms and 1 hour.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.clamp(MIN_TIMEOUT, MAX_TIMEOUT);
        self
    }

    /// The most letters the stream holds.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Checks that Redis answers and lets this connection do what the sink does on its stream,
    /// so an ACL user without a permission is a typed error at start, not a letter refused
    /// later: load and run the script that adds letters (`SCRIPT LOAD`, `EVALSHA`, `XLEN`), add
    /// an entry (`XADD` with the id `0-0`, which Redis refuses after the permission check, so
    /// nothing is written), read (`XRANGE`) and remove (`XDEL` of `0-0`, which no entry has).
    /// Each step has the sink's timeout, at least 1 s. A key of another type under the
    /// stream's name is an error too.
    ///
    /// # Errors
    ///
    /// A [`RedisSetupError`](super::RedisSetupError): [`NoPermission`](super::SetupErrorKind::NoPermission)
    /// names the command or key the ACL refused.
    pub async fn verify(&self) -> Result<(), super::RedisSetupError> {
        let limit = self.timeout.max(Duration::from_secs(1));
        let within = |what: &'static str| move |_| super::RedisSetupError::unreachable("", what);
        let setup = |e: redis::RedisError| super::RedisSetupError::of(&e, "");
        let mut connection = self.connection.clone();
        tokio::time::timeout(limit, self.add.load_async(&mut connection))
            .await
            .map_err(within("loading the dead-letter script timed out"))?
            .map_err(setup)?;
        // A cap of 0 adds nothing.
        let added: Option<String> = tokio::time::timeout(
            limit,
            self.add
                .key(&self.stream)
                .arg(0)
                .arg("")
                .arg("")
                .invoke_async(&mut connection),
        )
        .await
        .map_err(within("running the dead-letter script timed out"))?
        .map_err(setup)?;
        debug_assert!(added.is_none());
        let refused: redis::RedisResult<String> = tokio::time::timeout(
            limit,
            redis::cmd("XADD")
                .arg(&self.stream)
                .arg("0-0")
                .arg("id")
                .arg("")
                .query_async(&mut connection),
        )
        .await
        .map_err(within("a probe XADD timed out"))?;
        match refused {
            Err(e) if e.to_string().contains("greater than 0-0") => {}
            Err(e) => return Err(setup(e)),
            Ok(id) => {
                return Err(super::RedisSetupError::other(&format!(
                    "XADD with the id 0-0 added entry {id} to {}",
                    self.stream
                )))
            }
        }
        let _: StreamRangeReply =
            tokio::time::timeout(limit, connection.xrange_count(&self.stream, "-", "+", 1))
                .await
                .map_err(within("a probe XRANGE timed out"))?
                .map_err(setup)?;
        let _: u64 = tokio::time::timeout(limit, connection.xdel(&self.stream, &["0-0"]))
            .await
            .map_err(within("a probe XDEL timed out"))?
            .map_err(setup)?;
        Ok(())
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one Redis call under the timeout.
    async fn call<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SinkError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(
                SinkError::new(format!("cannot {what} stream {}", self.stream), e)
                    .with_kind(SinkErrorKind::Io),
            ),
            Err(_) => Err(SinkError::msg(format!(
                "cannot {what} stream {}: Redis did not answer within {:?}",
                self.stream, self.timeout
            ))
            .with_kind(SinkErrorKind::Timeout)),
        }
    }

    /// Every entry, oldest first, a page at a time: (entry id, letter id, letter).
    async fn entries(
        &self,
    ) -> Result<Vec<(String, Option<String>, Option<DeadLetter>)>, SinkError> {
        let mut connection = self.connection.clone();
        let mut all = Vec::new();
        let mut start = "-".to_owned();
        loop {
            let reply: StreamRangeReply = self
                .call(
                    "read",
                    connection.xrange_count(&self.stream, &start, "+", PAGE),
                )
                .await?;
            let last = reply.ids.len() < PAGE;
            if let Some(entry) = reply.ids.last() {
                start = format!("({}", entry.id);
            }
            for entry in reply.ids {
                let id = entry.get::<String>("id");
                let letter = entry
                    .get::<String>("letter")
                    .and_then(|json| serde_json::from_str::<DeadLetter>(&json).ok());
                if letter.is_none() {
                    tracing::warn!(stream = %self.stream, entry = %entry.id, "skipping a damaged dead-letter entry");
                }
                all.push((entry.id, id, letter));
            }
            if last {
                return Ok(all);
            }
        }
    }
}

impl Sink for RedisStreamSink {
    fn write(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let json = serde_json::to_string(&letter).map_err(|e| {
                SinkError::new("cannot encode a dead letter", e).with_kind(SinkErrorKind::Encoding)
            })?;
            let mut connection = self.connection.clone();
            let added: Option<String> = self
                .call(
                    "add to",
                    self.add
                        .key(&self.stream)
                        .arg(self.max_len)
                        .arg(&letter.id)
                        .arg(&json)
                        .invoke_async(&mut connection),
                )
                .await?;
            match added {
                Some(_) => Ok(()),
                None => Err(SinkError::msg(format!(
                    "dead-letter stream {} is full ({} letters); the letter was not stored",
                    self.stream, self.max_len
                ))
                .with_kind(SinkErrorKind::Full)),
            }
        })
    }

    fn read_all(&self) -> BoxFuture<'_, Result<Vec<DeadLetter>, SinkError>> {
        Box::pin(async move {
            let entries = self.entries().await?;
            let mut remembered = HashMap::with_capacity(entries.len());
            let letters = entries
                .into_iter()
                .filter_map(|(entry, _, letter)| {
                    let letter = letter?;
                    remembered.insert(letter.id.clone(), entry);
                    Some(letter)
                })
                .collect();
            *self.remembered() = remembered;
            Ok(letters)
        })
    }

    fn remove<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<usize, SinkError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(0);
            }
            let (mut entries, unknown): (Vec<String>, Vec<&String>) = {
                let remembered = self.remembered();
                let mut entries = Vec::with_capacity(ids.len());
                let mut unknown = Vec::new();
                for id in ids {
                    match remembered.get(id) {
                        Some(entry) => entries.push(entry.clone()),
                        None => unknown.push(id),
                    }
                }
                (entries, unknown)
            };
            if !unknown.is_empty() {
                // Letters this sink did not read: find their entries once.
                let wanted: std::collections::HashSet<&str> =
                    unknown.iter().map(|id| id.as_str()).collect();
                entries.extend(
                    self.entries()
                        .await?
                        .into_iter()
                        .filter(|(_, id, _)| id.as_deref().is_some_and(|id| wanted.contains(id)))
                        .map(|(entry, _, _)| entry),
                );
            }
            if entries.is_empty() {
                return Ok(0);
            }
            let mut connection = self.connection.clone();
            let mut removed = 0;
            for chunk in entries.chunks(PAGE) {
                let count: usize = self
                    .call("delete from", connection.xdel(&self.stream, chunk))
                    .await?;
                removed += count;
            }
            let mut remembered = self.remembered();
            for id in ids {
                remembered.remove(id);
            }
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
