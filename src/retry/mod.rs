//! Retry with capped exponential backoff and jitter, a hard attempt cap and a total wait
//! budget, honoring the server's `Retry-After`.
//!
//! [`RetryLayer::new()`] works as it is; every rule below is a setter on it.
//!
//! # What is retried
//!
//! An attempt is retried when the [`Classify`](crate::classify::Classify) implementation says
//! so ([`DefaultClassifier`](crate::classify::DefaultClassifier) by default: 408, 429, 500,
//! 502, 503, 504, transport errors and timeouts; never other 4xx) **and** the request may be
//! repeated:
//!
//! | method                                   | retried                                                   |
//! |------------------------------------------|-----------------------------------------------------------|
//! | GET, HEAD, OPTIONS, PUT, DELETE, TRACE   | yes: RFC 9110 defines them as idempotent                  |
//! | POST, PATCH                              | only with an `Idempotency-Key` header, or after [`RetryLayer::retry_non_idempotent`] |
//! | anything else (CONNECT, extensions)      | only after [`RetryLayer::retry_non_idempotent`]           |
//!
//! A POST that timed out may have been processed: sending it again without a key the server
//! de-duplicates on can charge a card twice. Put
//! [`IdempotencyKeyLayer`](crate::IdempotencyKeyLayer) outside this layer and every attempt of
//! one call carries the same key.
//!
//! # How long to wait
//!
//! - When the response names a wait (`Retry-After`, or the reset of a used-up quota: see
//!   [`RateLimitInfo::wait`](crate::RateLimitInfo::wait)), the layer waits exactly that long,
//!   plus up to [`retry_after_jitter`](RetryLayer::retry_after_jitter) (250 ms), not its own
//!   backoff: the server's word wins.
//! - A named wait longer than [`max_retry_after`](RetryLayer::max_retry_after) (60 s) is not
//!   slept on: the response is returned at once with an [`Attempts`] extension holding the wait
//!   and the wall-clock time a retry is allowed, so the caller can reschedule.
//! - Otherwise the delay is capped exponential backoff with [`Jitter`] (full jitter by default):
//!   up to 200 ms, 400 ms, 800 ms …, never over 30 s.
//! - At most 4 attempts, and at most 60 s of waiting in all per call; a wait that would overrun
//!   the budget is not started.
//! - With a [`RetryBudget`] ([`RetryLayer::retry_budget`]; on in [`Outbound`](crate::Outbound) and its
//!   presets), retries per upstream are at most a share of calls — with the defaults, over any
//!   10 s, at most 5 per second plus 20 % of the calls made in those 10 s and the 10 s before
//!   them: during an outage the layer stops multiplying the load on the failing upstream.
//!
//! # Bodies
//!
//! The body is read into memory first (up to [`max_buffered_body`](RetryLayer::max_buffered_body),
//! 1 MiB) and sent as a [`ReplayBody`](crate::body::ReplayBody) on each attempt; a `Full<Bytes>`
//! costs no copy. A larger body is sent once, whole, and not retried, with a warning.
//!
//! # What the caller gets
//!
//! - A response, when the last attempt got one, even a 503 after the last retry. A response
//!   that took more than one attempt, or on which the layer gave up because of a too-long wait,
//!   carries an [`Attempts`] extension.
//! - An [`Error`](crate::Error) otherwise, with [`attempts`](crate::Error::attempts),
//!   [`waited`](crate::Error::waited) and the last cause as its source.
//!
//! Each retry emits a `tracing` event at INFO (attempt, delay, reason, host), and
//! [`RetryStats`] counts calls, retries, successes after retry and calls that gave up.
//!
//! # Example
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_outbound::body::ReplayBody;
//! use tower_outbound::retry::{Attempts, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! // An upstream that fails twice, then answers.
//! let calls = Arc::new(AtomicU32::new(0));
//! let upstream = tower::service_fn({
//!     let calls = calls.clone();
//!     move |_req: Request<ReplayBody>| {
//!         let n = calls.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             let status = if n < 2 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
//!             Ok::<_, std::convert::Infallible>(Response::builder().status(status).body(()).unwrap())
//!         }
//!     }
//! });
//! let retry = RetryLayer::new().base_delay(Duration::from_millis(100)).rng_seed(1);
//! let stats = retry.stats();
//! let client = ServiceBuilder::new().layer(retry).service(upstream);
//!
//! let request = Request::get("http://api.example.com/items").body(String::new()).unwrap();
//! let response = client.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.extensions().get::<Attempts>().unwrap().count, 3);
//! assert_eq!(stats.retries(), 2);
//! # }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod backoff;
pub(crate) mod budget;
mod future;
mod layer;
pub(crate) mod policy;
mod service;

pub use backoff::{ExponentialBackoff, Jitter};
pub use budget::RetryBudget;
pub use future::ResponseFuture;
pub use layer::RetryLayer;
pub use service::Retry;

pub(crate) use budget::Allowance;
pub(crate) use layer::Config;

pub use crate::handoff::Attempts;

/// Counters of a [`RetryLayer`] and every service it made. Cheap to clone: clones read the same
/// counters.
#[derive(Clone, Debug, Default)]
pub struct RetryStats {
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    /// Counted on every call, from every core: one shard per core.
    calls: crate::sync::ShardedCount,
    retries: AtomicU64,
    successes_after_retry: AtomicU64,
    gave_up: AtomicU64,
    server_waits: AtomicU64,
    waited_nanos: AtomicU64,
    budget_exhausted: AtomicU64,
}

impl RetryStats {
    /// Logical calls made (each may have had several attempts).
    pub fn calls(&self) -> u64 {
        self.counters.calls.sum()
    }

    /// Retries made (attempts after the first).
    pub fn retries(&self) -> u64 {
        self.counters.retries.load(Ordering::Relaxed)
    }

    /// Calls that succeeded after at least one retry.
    pub fn successes_after_retry(&self) -> u64 {
        self.counters.successes_after_retry.load(Ordering::Relaxed)
    }

    /// Calls of a retryable method whose last attempt was still worth retrying but were not
    /// retried again: the attempts, the wait budget, the deadline or the body ran out, or the
    /// server asked for too long a wait.
    pub fn gave_up(&self) -> u64 {
        self.counters.gave_up.load(Ordering::Relaxed)
    }

    /// Retries not made because the [`RetryBudget`] was spent: the last response or error was
    /// returned at once.
    pub fn budget_exhausted(&self) -> u64 {
        self.counters.budget_exhausted.load(Ordering::Relaxed)
    }

    pub(crate) fn record_budget_exhausted(&self) {
        self.counters
            .budget_exhausted
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_call(&self) {
        self.counters.calls.add(1);
    }

    /// Retries whose wait was the one the server named (`Retry-After` or a rate-limit reset)
    /// rather than computed backoff.
    pub fn server_waits(&self) -> u64 {
        self.counters.server_waits.load(Ordering::Relaxed)
    }

    /// Total time slept between attempts, over all calls.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.counters.waited_nanos.load(Ordering::Relaxed))
    }

    pub(crate) fn record_retry(&self, delay: Duration, server_named: bool) {
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        if server_named {
            self.counters.server_waits.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        // Saturating: a total that overflowed would read as a short wait.
        let _ =
            self.counters
                .waited_nanos
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                    Some(w.saturating_add(nanos))
                });
    }

    pub(crate) fn record_success_after_retry(&self) {
        self.counters
            .successes_after_retry
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_give_up(&self) {
        self.counters.gave_up.fetch_add(1, Ordering::Relaxed);
    }
}
