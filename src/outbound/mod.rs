//! The whole stack in one call, in the right order, with presets from practice.
//!
//! [`Outbound`] puts the crate's layers together around a client:
//!
//! ```text
//!                        ┌──────────────────────────────────────────── one logical call ──┐
//! IdempotencyKeyLayer    │ one key per logical write, the same on every attempt            │
//! DeadLetterLayer        │ reads the body once; records the call if it finally fails       │
//! RetryLayer             │ attempts, and the waits between them; the whole call ends by    │
//!                        │ the deadline (30 s)                                             │
//!                        ├──────────────────────────────────────────── each attempt ───────┤
//! CircuitBreakerLayer    │ fails fast while the upstream is down; counts every attempt     │
//! RetryAfterLayer        │ shared gate while the server asked for a pause                  │
//! ThrottleLayer          │ waits for a token right before sending                          │
//! TimeoutLayer           │ one attempt ends after 10 s: a retryable, breaker-counted failure│
//! client                 └─────────────────────────────────────────────────────────────────┘
//! ```
//!
//! See `docs/design.md` for why this order. Every part can be replaced or left out; two presets
//! give the common shapes:
//!
//! | preset                    | attempts | delays             | wait budget | deadline | attempt timeout | gate      | breaker | dead letters |
//! |---------------------------|----------|--------------------|-------------|----------|-----------------|-----------|---------|--------------|
//! | [`Outbound::new`]         | 4        | 200 ms · 2ⁿ ≤ 30 s | 60 s        | 30 s     | 10 s            | ≤ 60 s    | on      | off          |
//! | [`Outbound::user_facing`] | 2        | 100 ms · 2ⁿ ≤ 1 s  | 2 s         | 5 s      | 2 s             | fail fast | on      | off          |
//! | [`Outbound::background`]  | 5        | 500 ms · 2ⁿ ≤ 30 s | 60 s        | 120 s    | 20 s            | ≤ 60 s    | on      | on (memory)  |
//!
//! Every preset keeps its state **per upstream** (scheme, host and port): the Retry-After gate,
//! the circuit breaker, the throttle and the retry budget of one host never change what
//! happens to calls to another ([`partition`](Outbound::partition) with [`Scope::Global`]
//! shares one state for an API whose limits span several hosts). No server can close a gate
//! for longer than 15 minutes ([`RetryAfterLayer::max_pause`]). A [`RetryBudget`] per upstream
//! caps retries — over any 10 s, retries are at most 5 per second plus 20 % of the calls made
//! in those 10 s and the 10 s before them — so an outage does not multiply the load on the
//! failing upstream. `background()` keeps dead letters in a bounded [`MemorySink`]
//! (see [`dead_letters`](Outbound::dead_letters) for a durable file or a shared stream);
//! refused calls (circuit open, throttled or gated past their wait) get a letter too, since
//! their caller may not try again — see [`DeadLetterLayer::record_refusals`].
//!
//! No preset throttles: the rate belongs to the upstream; add
//! [`throttle`](Outbound::throttle) with its limit.
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
use tower_layer::Layer;
use tower_service::Service;

use crate::circuit::CircuitBreaker;
use crate::classify::DefaultClassifier;
use crate::dead_letter::{DeadLetterService, MemorySink};
use crate::error::Error;
use crate::idempotency::IdempotencyKey;
use crate::partition::Scope;
use crate::retry::{Jitter, Retry, RetryBudget};
use crate::retry_after::RetryAfter;
use crate::throttle::Throttle;
use crate::timeout::{Timeout, TimeoutLayer};
use crate::{
    CircuitBreakerLayer, DeadLetterLayer, IdempotencyKeyLayer, RetryAfterLayer, RetryLayer,
    ThrottleLayer,
};

mod maybe;
pub(crate) mod observe;

use maybe::MaybeLayer;
pub use maybe::{Maybe, MaybeFuture};

/// The composed stack. Configure it, then wrap a client with [`service`](Outbound::service)
/// or use it as a [`Layer`]. Clones, and every service made from it, share the state of the
/// layers they hold (the gates, breakers, buckets, retry budgets and counters).
#[derive(Clone, Debug)]
pub struct Outbound {
    idempotency: Option<IdempotencyKeyLayer>,
    dead_letters: Option<DeadLetterLayer>,
    deadline: Option<Duration>,
    retry: RetryLayer,
    retry_budget: Option<RetryBudget>,
    circuit_breaker: Option<CircuitBreakerLayer>,
    gate: RetryAfterLayer,
    throttle: Option<ThrottleLayer<Scope>>,
    attempt_timeout: Option<Duration>,
    scope: Scope,
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
            dead_letters: None,
            deadline: Some(Duration::from_secs(30)),
            retry: RetryLayer::new(),
            retry_budget: Some(RetryBudget::new()),
            circuit_breaker: Some(observe::breaker(CircuitBreakerLayer::new())),
            gate: RetryAfterLayer::new(),
            throttle: None,
            attempt_timeout: Some(Duration::from_secs(10)),
            scope: Scope::Upstream,
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
            dead_letters: None,
            deadline: Some(Duration::from_secs(5)),
            retry: RetryLayer::new()
                .max_attempts(2)
                .base_delay(Duration::from_millis(100))
                .max_delay(Duration::from_secs(1))
                .max_total_delay(Duration::from_secs(2))
                .max_retry_after(Duration::from_secs(2)),
            retry_budget: Some(RetryBudget::new()),
            circuit_breaker: Some(observe::breaker(CircuitBreakerLayer::new())),
            gate: RetryAfterLayer::new().max_wait(Duration::ZERO),
            throttle: None,
            attempt_timeout: Some(Duration::from_secs(2)),
            scope: Scope::Upstream,
        }
    }

    /// For work no person waits on (sync jobs, webhooks, queues): more attempts, a longer
    /// budget and deadline, and dead letters for what still fails. They go to a bounded
    /// [`MemorySink`] (see [`dead_letters`](Self::dead_letters) for a durable file or a shared
    /// stream); a letter the full sink refuses is reported on the call's receipt
    /// ([`Recorded::stored`](crate::dead_letter::Recorded)) and counted, never dropped silently.
    pub fn background() -> Self {
        Outbound {
            idempotency: Some(IdempotencyKeyLayer::new()),
            dead_letters: Some(DeadLetterLayer::new(observe::sink(MemorySink::new()))),
            deadline: Some(Duration::from_secs(120)),
            retry: RetryLayer::new()
                .max_attempts(5)
                .base_delay(Duration::from_millis(500))
                .jitter(Jitter::Full),
            retry_budget: Some(RetryBudget::new()),
            circuit_breaker: Some(observe::breaker(CircuitBreakerLayer::new())),
            gate: RetryAfterLayer::new(),
            throttle: None,
            attempt_timeout: Some(Duration::from_secs(20)),
            scope: Scope::Upstream,
        }
    }

    /// The retry layer (default [`RetryLayer::new`]). Its retry budget is the one set with
    /// [`retry_budget`](Self::retry_budget).
    pub fn retry(mut self, retry: RetryLayer) -> Self {
        self.retry = retry;
        self
    }

    /// Caps retries at a share of calls, per upstream, or `None` for no cap (default
    /// [`RetryBudget::new`]: over any 10 s, retries are at most 5 per second plus 20 % of the
    /// calls made in those 10 s and the 10 s before them). It replaces any budget set on the
    /// [`retry`](Self::retry) layer.
    pub fn retry_budget(mut self, budget: Option<RetryBudget>) -> Self {
        self.retry_budget = budget.map(|b| b.partition(self.scope));
        self
    }

    /// Whether the gate, the breaker, the throttle and the retry budget keep one state per
    /// upstream (default [`Scope::Upstream`]: scheme, host and port) or one for every call
    /// ([`Scope::Global`]: for an API whose limits span several hosts). It applies to the
    /// layers set before and after it.
    pub fn partition(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self.gate = self.gate.partition(scope);
        self.circuit_breaker = self.circuit_breaker.map(|b| b.partition(scope));
        self.throttle = self.throttle.map(|t| t.partition(scope));
        self.retry_budget = self.retry_budget.map(|b| b.partition(scope));
        self
    }

    /// The Retry-After gate (default [`RetryAfterLayer::new`]: hold up to 60 s, never closed
    /// longer than 15 minutes). Its partition is the stack's [`partition`](Self::partition).
    pub fn gate(mut self, gate: RetryAfterLayer) -> Self {
        self.gate = gate.partition(self.scope);
        self
    }

    /// The idempotency-key layer, or `None` to leave it out (default
    /// [`IdempotencyKeyLayer::new`]).
    pub fn idempotency(mut self, layer: Option<IdempotencyKeyLayer>) -> Self {
        self.idempotency = layer;
        self
    }

    /// The dead-letter layer, or `None` to leave it out (default: none; on in
    /// [`background`](Self::background)).
    pub fn dead_letters(mut self, layer: Option<DeadLetterLayer>) -> Self {
        self.dead_letters = layer;
        self
    }

    /// The circuit breaker, or `None` to leave it out (default [`CircuitBreakerLayer::new`]).
    /// Its partition is the stack's [`partition`](Self::partition).
    pub fn circuit_breaker(mut self, layer: Option<CircuitBreakerLayer>) -> Self {
        self.circuit_breaker = layer.map(|b| b.partition(self.scope));
        self
    }

    /// The throttle, or `None` to leave it out (default: none). Its partition is the stack's
    /// [`partition`](Self::partition): with the default, each upstream gets its own bucket of
    /// the given rate.
    pub fn throttle(mut self, layer: Option<ThrottleLayer>) -> Self {
        self.throttle = layer.map(|t| t.partition(self.scope));
        self
    }

    /// The dead-letter layer, when there is one (to read its sink and counters).
    pub fn dead_letter_layer(&self) -> Option<&DeadLetterLayer> {
        self.dead_letters.as_ref()
    }

    /// The circuit breaker, when there is one (to read its state and counters).
    pub fn circuit_breaker_layer(&self) -> Option<&CircuitBreakerLayer> {
        self.circuit_breaker.as_ref()
    }

    /// The throttle, when there is one (to read its counters).
    pub fn throttle_layer(&self) -> Option<&ThrottleLayer<Scope>> {
        self.throttle.as_ref()
    }

    /// The deadline of one logical call, attempts and waits together, or `None` for none
    /// (default 30 s; any value is accepted, see [`RetryLayer::deadline`]). The retry layer keeps
    /// it, with one timer armed only while the call waits.
    pub fn deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = deadline;
        self
    }

    /// The time limit of one attempt, or `None` for none (default 10 s). A timed-out attempt
    /// is a transient failure: retried. Any value is accepted (tokio's timer treats one past
    /// what it can represent as never).
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

/// Each attempt: the breaker, the gate, the throttle and the attempt timeout.
type Attempt<S> = Maybe<
    CircuitBreaker<RetryAfter<Throttled<S>>, DefaultClassifier, Scope>,
    RetryAfter<Throttled<S>>,
>;
type Throttled<S> = Maybe<Throttle<Timed<S>, Scope>, Timed<S>>;
type Timed<S> = Maybe<Timeout<S>, S>;
/// The logical call: the retries, within the deadline (which the retry layer keeps).
type Call<S> = Retry<observe::Attempts<Attempt<S>>, DefaultClassifier>;
/// The whole stack's type. Without idempotency keys the key layer is there with no methods:
/// its future is the inner one either way, so the call's future is not wrapped once more.
type Stack<S> = IdempotencyKey<Observed<S>>;
type Observed<S> = observe::Calls<Maybe<DeadLetterService<Call<S>, DefaultClassifier>, Call<S>>>;

impl<S> Layer<S> for Outbound {
    type Service = OutboundService<S>;

    fn layer(&self, client: S) -> Self::Service {
        let attempt = MaybeLayer(self.attempt_timeout.map(TimeoutLayer::new)).layer(client);
        let attempt = MaybeLayer(self.throttle.clone()).layer(attempt);
        let attempt = self.gate.layer(attempt);
        let attempt = MaybeLayer(self.circuit_breaker.clone()).layer(attempt);
        let call = self
            .retry
            .clone()
            .retry_budget(self.retry_budget.clone())
            .deadline(self.deadline)
            .hand_back_head(self.dead_letters.is_some())
            .layer(observe::attempts(attempt));
        // The dead-letter layer takes a failed call's head from the retry layer directly
        // inside it: one copy of the head per call, not two.
        let dead_letters = self.dead_letters.clone().map(|d| d.head_from_inner(true));
        let call = MaybeLayer(dead_letters).layer(call);
        let call = observe::calls(call, self.circuit_breaker.is_some());
        let keys = self
            .idempotency
            .clone()
            .unwrap_or_else(|| IdempotencyKeyLayer::new().methods([]));
        let call = keys.layer(call);
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
