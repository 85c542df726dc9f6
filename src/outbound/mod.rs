//! The whole stack in one call, in the right order, with presets from practice.
//!
//! [`Outbound`] puts the crate's layers together around a client:
//!
//! ```text
//! IdempotencyKeyLayer   one key per logical write                       (logical call)
//! DeadlineLayer         the whole call ends by the deadline (30 s)      (logical call)
//! RetryLayer            attempts and the waits between them             ─ each attempt below ─
//! RetryAfterLayer       shared gate while the server asked for a pause
//! TimeoutLayer          one attempt ends after 10 s: a retryable failure
//! client
//! ```
//!
//! See `docs/design.md` for why this order. Every part can be replaced or left out; two presets
//! give the common shapes:
//!
//! | preset                          | attempts | delays            | wait budget | deadline | attempt timeout | gate     |
//! |---------------------------------|----------|-------------------|-------------|----------|-----------------|----------|
//! | [`Outbound::new`]               | 4        | 200 ms · 2ⁿ ≤ 30 s | 60 s        | 30 s     | 10 s            | ≤ 60 s   |
//! | [`Outbound::user_facing`]       | 2        | 100 ms · 2ⁿ ≤ 1 s  | 2 s         | 5 s      | 2 s             | fail fast |
//! | [`Outbound::background`]        | 5        | 500 ms · 2ⁿ ≤ 30 s | 60 s        | 120 s    | 20 s            | ≤ 60 s   |
//!
//! # Example
//!
//! ```
//! use http::{Request, Response};
//! use tower::ServiceExt;
//! use tower_outbound::body::ReplayBody;
//! use tower_outbound::Outbound;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_outbound::Error> {
//! // Stands in for a hyper-util `Client<_, ReplayBody>`.
//! let upstream = tower::service_fn(|_req: Request<ReplayBody>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new("ok"))
//! });
//! let client = Outbound::user_facing().service(upstream);
//! let response = client.oneshot(Request::get("http://api.example.com/").body(String::new()).unwrap()).await?;
//! assert_eq!(*response.body(), "ok");
//! # Ok(()) }
//! ```

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use tower::timeout::{Timeout, TimeoutLayer};
use tower_layer::Layer;
use tower_service::Service;

use crate::deadline::{DeadlineLayer, DeadlineService};
use crate::error::Error;
use crate::idempotency::IdempotencyKey;
use crate::retry::{Jitter, Retry};
use crate::retry_after::RetryAfter;
use crate::{classify::DefaultClassifier, IdempotencyKeyLayer, RetryAfterLayer, RetryLayer};

mod maybe;

use maybe::MaybeLayer;
pub use maybe::{Maybe, MaybeFuture};

/// The composed stack. Configure it, then wrap a client with [`service`](Outbound::service)
/// or use it as a [`Layer`]. Clones share the state of the layers they hold (the retry
/// counters, the gate).
#[derive(Clone, Debug)]
pub struct Outbound {
    idempotency: Option<IdempotencyKeyLayer>,
    deadline: Option<Duration>,
    retry: RetryLayer,
    gate: RetryAfterLayer,
    attempt_timeout: Option<Duration>,
}

impl Default for Outbound {
    fn default() -> Self {
        Self::new()
    }
}

impl Outbound {
    /// The general-purpose stack (see the [module docs](self) table).
    pub fn new() -> Self {
        Outbound {
            idempotency: Some(IdempotencyKeyLayer::new()),
            deadline: Some(Duration::from_secs(30)),
            retry: RetryLayer::new(),
            gate: RetryAfterLayer::new(),
            attempt_timeout: Some(Duration::from_secs(10)),
        }
    }

    /// Same as [`new`](Self::new), to start a chain of setters.
    pub fn builder() -> Self {
        Self::new()
    }

    /// For a call a person is waiting on: few attempts, short caps, and a gate that fails fast
    /// instead of holding the request while the upstream asked for a pause.
    pub fn user_facing() -> Self {
        Outbound {
            idempotency: Some(IdempotencyKeyLayer::new()),
            deadline: Some(Duration::from_secs(5)),
            retry: RetryLayer::new()
                .max_attempts(2)
                .base_delay(Duration::from_millis(100))
                .max_delay(Duration::from_secs(1))
                .max_total_delay(Duration::from_secs(2))
                .max_retry_after(Duration::from_secs(2)),
            gate: RetryAfterLayer::new().max_wait(Duration::ZERO),
            attempt_timeout: Some(Duration::from_secs(2)),
        }
    }

    /// For work no person waits on (sync jobs, webhooks, queues): more attempts, a longer
    /// budget and deadline.
    pub fn background() -> Self {
        Outbound {
            idempotency: Some(IdempotencyKeyLayer::new()),
            deadline: Some(Duration::from_secs(120)),
            retry: RetryLayer::new()
                .max_attempts(5)
                .base_delay(Duration::from_millis(500))
                .jitter(Jitter::Full),
            gate: RetryAfterLayer::new(),
            attempt_timeout: Some(Duration::from_secs(20)),
        }
    }

    /// The retry layer (default [`RetryLayer::new`]).
    pub fn retry(mut self, retry: RetryLayer) -> Self {
        self.retry = retry;
        self
    }

    /// The Retry-After gate (default [`RetryAfterLayer::new`]).
    pub fn gate(mut self, gate: RetryAfterLayer) -> Self {
        self.gate = gate;
        self
    }

    /// The idempotency-key layer, or `None` to leave it out (default
    /// [`IdempotencyKeyLayer::new`]).
    pub fn idempotency(mut self, layer: Option<IdempotencyKeyLayer>) -> Self {
        self.idempotency = layer;
        self
    }

    /// The deadline of one logical call, attempts and waits together, or `None` for none
    /// (default 30 s).
    pub fn deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = deadline;
        self
    }

    /// The time limit of one attempt, or `None` for none (default 10 s). A timed-out attempt
    /// is a transient failure: retried.
    pub fn attempt_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The retry counters of this stack.
    pub fn retry_stats(&self) -> crate::retry::RetryStats {
        self.retry.stats()
    }

    /// The gate's counters.
    pub fn gate_stats(&self) -> crate::retry_after::GateStats {
        self.gate.stats()
    }

    /// Wraps `client` in the stack.
    pub fn service<S>(&self, client: S) -> OutboundService<S> {
        self.layer(client)
    }
}

/// The attempt-side part of the stack: below the retry layer.
type AttemptStack<S> = RetryAfter<Maybe<Timeout<S>, S>>;

/// The whole stack's type.
type Stack<S> = Maybe<
    IdempotencyKey<
        Maybe<
            DeadlineService<Retry<AttemptStack<S>, DefaultClassifier>>,
            Retry<AttemptStack<S>, DefaultClassifier>,
        >,
    >,
    Maybe<
        DeadlineService<Retry<AttemptStack<S>, DefaultClassifier>>,
        Retry<AttemptStack<S>, DefaultClassifier>,
    >,
>;

impl<S> Layer<S> for Outbound {
    type Service = OutboundService<S>;

    fn layer(&self, client: S) -> Self::Service {
        let attempt = MaybeLayer(self.attempt_timeout.map(TimeoutLayer::new)).layer(client);
        let attempt = self.gate.layer(attempt);
        let call = self.retry.layer(attempt);
        let call = MaybeLayer(self.deadline.map(DeadlineLayer::new)).layer(call);
        let call = MaybeLayer(self.idempotency.clone()).layer(call);
        OutboundService { inner: call }
    }
}

/// A client wrapped in the [`Outbound`] stack.
#[derive(Clone)]
pub struct OutboundService<S> {
    inner: Stack<S>,
}

impl<S> fmt::Debug for OutboundService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundService").finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for OutboundService<S>
where
    Stack<S>: Service<Request<B>, Error = Error>,
{
    type Response = <Stack<S> as Service<Request<B>>>::Response;
    type Error = Error;
    type Future = <Stack<S> as Service<Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.inner.call(request)
    }
}
