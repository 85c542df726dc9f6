//! A dead-letter queue: every call that finally fails is recorded, to be replayed later.
//! Nothing is silently lost.
//!
//! [`DeadLetterLayer`] is the outermost layer of a stack (only the idempotency-key layer goes
//! outside it, so the record carries the key). It reads the request body into memory (up to
//! 1 MiB by default; the retry layer inside takes the bytes over without copying), and when
//! the call finally fails it writes a [`DeadLetter`] to a [`Sink`] **before** returning:
//!
//! - what counts as a final failure: any error (retries exhausted on a transport error or a
//!   timeout, circuit open, throttled past its wait, rate limited past the retry budget), and
//!   a response the [`Classify`](crate::classify::Classify) implementation calls rate limited,
//!   transient or a server error (429, 5xx). Other 4xx are not recorded: sending a bad request
//!   again cannot succeed.
//! - what a record holds: method, URI, headers with secrets redacted (`Authorization`,
//!   `Proxy-Authorization`, `X-API-KEY`, `Cookie`, `Set-Cookie` and any value marked
//!   sensitive; configurable), the body bytes (text, or base64 when not UTF-8), the
//!   idempotency key, the final status or error, attempts, time waited, and the times of the
//!   first and last attempt.
//! - a body larger than the limit is still sent whole; its record says the body was not kept.
//! - if the sink fails, the caller still gets the call's own outcome; the failure is logged at
//!   ERROR, counted ([`DeadLetterStats::write_failures`]) and reported on the call's receipt
//!   ([`Recorded`]).
//! - the letter is written by a task of its own, so a caller that drops its future after the
//!   final failure does not lose it; [`DeadLetterLayer::flush`] waits for pending writes (call
//!   it before the runtime shuts down).
//!
//! Sinks: [`MemorySink`] (bounded: 10,000 letters by default), [`JsonLinesSink`] (an
//! append-only file, 0600, group-committed: concurrent letters share one write and one fsync,
//! each caller told only once its letter is durable; robust to a torn last line), and with the
//! `redis` feature a Redis Stream. [`replay`] sends the
//! letters again, with their original idempotency keys, and removes exactly those that now
//! succeed. Redacted headers are not sent as `[redacted]`: they are left out, and the replaying
//! service adds credentials itself.
//!
//! # Example
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_outbound::body::ReplayBody;
//! use tower_outbound::dead_letter::{replay, MemorySink, Sink};
//! use tower_outbound::DeadLetterLayer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let down = tower::service_fn(|_req: Request<ReplayBody>| async {
//!     Ok::<_, std::convert::Infallible>(
//!         Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).body(()).unwrap(),
//!     )
//! });
//! let sink = MemorySink::new();
//! let client = ServiceBuilder::new().layer(DeadLetterLayer::new(sink.clone())).service(down);
//!
//! let request = Request::post("https://api.example.com/v1/orders")
//!     .header("authorization", "Bearer secret")
//!     .body(String::from(r#"{"sku":"A-1"}"#))
//!     .unwrap();
//! let response = client.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
//! let letters = sink.letters();
//! assert_eq!(letters.len(), 1);
//! assert!(letters[0].headers.iter().any(|h| h.name == "authorization" && h.is_redacted()));
//!
//! // Later, once the upstream is back:
//! let up = tower::service_fn(|_req: Request<ReplayBody>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(()))
//! });
//! let report = replay(&sink, up).await.unwrap();
//! assert_eq!(report.succeeded, 1);
//! assert_eq!(sink.count().await.unwrap(), 0);
//! # }
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use http::{HeaderName, Request, Response};
use tokio::sync::Notify;
use tower::ServiceExt;
use tower_service::Service;

use crate::body::ReplayBody;
use crate::error::{BoxError, Error};
use crate::redact::Redactor;

mod file;
mod future;
mod layer;
mod record;
pub(crate) mod recording;
mod service;
mod sink;

pub use file::JsonLinesSink;
pub use future::ResponseFuture;
pub use layer::DeadLetterLayer;
pub use record::{DeadLetter, FinalOutcome, MissingBody, StoredBody, StoredHeader, REDACTED};
pub use service::DeadLetterService;
pub use sink::{BoxFuture, MemorySink, Sink, SinkError, SinkErrorKind};

/// What every service of one layer shares.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) max_body: usize,
    pub(crate) redact: Vec<HeaderName>,
    pub(crate) redactor: Redactor,
    pub(crate) keep_secret_uris: bool,
    pub(crate) record_refusals: bool,
    pub(crate) idempotency_header: HeaderName,
    pub(crate) stats: DeadLetterStats,
    pub(crate) writer: Arc<Writer>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("max_body", &self.max_body)
            .field("redact", &self.redact)
            .field("keep_secret_uris", &self.keep_secret_uris)
            .field("record_refusals", &self.record_refusals)
            .finish_non_exhaustive()
    }
}

/// Letters handed to a write that has not finished yet, and a way to wait until none are.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pending: AtomicUsize,
    idle: Notify,
}

impl Writer {
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Counts one write as started; the guard counts it as finished when dropped, even if the
    /// task writing it is cancelled.
    pub(crate) fn start(self: &Arc<Self>) -> WriteGuard {
        self.pending.fetch_add(1, Ordering::AcqRel);
        WriteGuard(self.clone())
    }

    async fn flush(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One write in progress. See [`Writer::start`].
#[derive(Debug)]
pub(crate) struct WriteGuard(Arc<Writer>);

impl Drop for WriteGuard {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

pub use crate::handoff::{Recorded, Replaying};

/// Counters of a [`DeadLetterLayer`] and every service it made. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct DeadLetterStats {
    counters: Arc<[AtomicU64; 4]>,
}

impl DeadLetterStats {
    /// Dead letters written.
    pub fn written(&self) -> u64 {
        self.counters[0].load(Ordering::Relaxed)
    }

    /// Dead letters the sink failed to write (each logged at ERROR).
    pub fn write_failures(&self) -> u64 {
        self.counters[1].load(Ordering::Relaxed)
    }

    /// Dead letters sent again by [`DeadLetterLayer::replay`].
    pub fn replayed(&self) -> u64 {
        self.counters[2].load(Ordering::Relaxed)
    }

    /// Replayed dead letters that succeeded and were removed.
    pub fn replayed_ok(&self) -> u64 {
        self.counters[3].load(Ordering::Relaxed)
    }

    pub(crate) fn count(&self, index: usize) {
        self.counters[index].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(&self, index: usize, by: usize) {
        self.counters[index].fetch_add(u64::try_from(by).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// What [`replay`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Letters sent again.
    pub replayed: usize,
    /// Letters that succeeded (a 2xx) and were removed from the sink.
    pub succeeded: usize,
    /// Letters that failed again and were kept, with the new outcome recorded.
    pub still_failing: usize,
    /// Letters that could not be sent (body not kept, URI redacted, or a damaged record); kept.
    pub skipped: usize,
    /// Letters the filter of [`replay_matching`] refused (say, for a host the replaying
    /// client does not own); kept, not sent.
    pub refused: usize,
    /// Letters not sent because an earlier letter to the same upstream met an open circuit
    /// (the replay stops there for that upstream: it is down); kept as they were, for the next
    /// replay.
    pub deferred: usize,
}

/// Sends every letter in `sink` again through `service`, one at a time, and removes exactly
/// those that now succeed: a **2xx** response. Anything else (an error, a 1xx or 3xx — a
/// redirect to a login page is not delivery —, a 4xx or 5xx) keeps the letter, with its
/// outcome, attempts and time updated to the replay's. Calling it twice never sends a removed
/// letter again, and the idempotency key of each letter goes with it. Requests carry the
/// [`Replaying`] extension, so the same stack can be used.
///
/// A letter refused by an open circuit ([`Error::is_circuit_open`]) ends the replay for its
/// upstream (scheme, host and port): the later letters to that upstream are kept untouched and
/// counted in [`ReplayReport::deferred`], instead of each waiting for (or failing on) a circuit
/// that says the upstream is down. Letters to other upstreams are still sent.
///
/// A letter is sent to the URI it holds: replay only sinks whose letters come from your own
/// clients, or use [`replay_matching`] to restrict the hosts.
pub async fn replay<S, ResB>(sink: &dyn Sink, service: S) -> Result<ReplayReport, sink::SinkError>
where
    S: Service<Request<ReplayBody>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
{
    replay_matching(sink, service, |_: &DeadLetter| true).await
}

/// The scheme and authority of a letter's URI (`https://api.example.com:8443`), as written.
fn upstream_of(uri: &str) -> &str {
    let rest = uri.find("://").map_or(0, |i| i + 3);
    let end = uri
        .get(rest..)
        .and_then(|r| r.find(['/', '?', '#']))
        .map_or(uri.len(), |i| rest + i);
    uri.get(..end).unwrap_or(uri)
}

/// As [`replay`], sending only the letters `filter` accepts; the others are kept and counted
/// in [`ReplayReport::refused`]. Use it to send credentials only to the hosts they belong to:
///
/// ```
/// # use tower_outbound::dead_letter::DeadLetter;
/// let own_host = |letter: &DeadLetter| letter.uri.starts_with("https://api.example.com/");
/// # let _ = own_host;
/// ```
pub async fn replay_matching<S, ResB, F>(
    sink: &dyn Sink,
    service: S,
    filter: F,
) -> Result<ReplayReport, sink::SinkError>
where
    S: Service<Request<ReplayBody>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    F: Fn(&DeadLetter) -> bool,
{
    let letters = sink.read_all().await?;
    let mut report = ReplayReport::default();
    let mut delivered = Vec::new();
    let mut failed_again = Vec::new();
    // Upstreams whose circuit refused a letter: their later letters wait for the next replay.
    let mut down: Vec<String> = Vec::new();
    for letter in letters {
        let upstream = upstream_of(&letter.uri);
        if down.iter().any(|d| *d == upstream) {
            report.deferred += 1;
            continue;
        }
        if !filter(&letter) {
            report.refused += 1;
            continue;
        }
        let Some(mut request) = letter.to_request() else {
            report.skipped += 1;
            continue;
        };
        request.extensions_mut().insert(Replaying);
        report.replayed += 1;
        let started = std::time::SystemTime::now();
        let result = service
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| Error::from_box(e.into()));
        match result {
            Ok(response) if response.status().is_success() => delivered.push(letter.id),
            result => {
                if matches!(&result, Err(e) if e.is_circuit_open()) {
                    down.push(upstream.to_owned());
                }
                report.still_failing += 1;
                failed_again.push(letter.replayed(&result, started));
            }
        }
    }
    report.succeeded = sink.remove(&delivered).await?;
    // The new outcome is written before the old record goes: a crash in between leaves the
    // letter twice, never not at all.
    let mut superseded = Vec::with_capacity(failed_again.len());
    for (old_id, letter) in failed_again {
        sink.write(letter).await?;
        superseded.push(old_id);
    }
    sink.remove(&superseded).await?;
    Ok(report)
}
