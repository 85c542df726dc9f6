//! The whole stack in one call, in the right order, with presets from practice.
//!
//! [`Outbound`] runs the steps of the crate's layers around a client, in this order:
//!
//! ```text
//!                        ┌──────────────────────────────────────────── one logical call ──┐
//! idempotency key        │ one key per logical write, the same on every attempt            │
//! dead letters           │ records the call if it finally fails                            │
//! retry                  │ attempts, and the waits between them; the whole call ends by    │
//!                        │ the deadline (30 s)                                             │
//!                        ├──────────────────────────────────────────── each attempt ───────┤
//! circuit breaker        │ fails fast while the upstream is down; counts every attempt     │
//! Retry-After gate       │ shared gate while the server asked for a pause                  │
//! concurrency limit      │ a place among the upstream's calls in flight (background: on)   │
//! throttle               │ waits for a token right before sending                          │
//! attempt timeout        │ one attempt ends after 10 s: a retryable, breaker-counted failure│
//! client                 └─────────────────────────────────────────────────────────────────┘
//! ```
//!
//! It does the same as [`IdempotencyKeyLayer`], [`DeadLetterLayer`], [`RetryLayer`],
//! [`CircuitBreakerLayer`], [`RetryAfterLayer`], [`ConcurrencyLayer`], [`ThrottleLayer`] and
//! [`TimeoutLayer`](crate::timeout::TimeoutLayer) stacked in that order, with their settings,
//! but as one state machine over one record per upstream: each call finds its upstream's
//! retry budget, breaker, gate, concurrency limit and bucket once, reads the clock once, arms one timer only if it
//! waits, classifies each attempt once and keeps one copy of the request head. The layers given
//! to it keep their read-outs (`state()`, `stats()`, `closed_for()`): they read the same state.
//! See `docs/design.md` for the order and the call's state machine.
//!
//! Every part can be replaced or left out; two presets give the common shapes:
//!
//! | preset                    | attempts | delays             | wait budget | deadline | attempt timeout | gate      | breaker          | concurrency limit | dead letters |
//! |---------------------------|----------|--------------------|-------------|----------|-----------------|-----------|------------------|-------------------|--------------|
//! | [`Outbound::new`]         | 4        | 200 ms · 2ⁿ ≤ 30 s | 60 s        | 30 s     | 10 s            | ≤ 60 s    | on, fail fast    | off               | off          |
//! | [`Outbound::user_facing`] | 2        | 100 ms · 2ⁿ ≤ 1 s  | 2 s         | 5 s      | 2 s             | fail fast | on, fail fast    | off               | off          |
//! | [`Outbound::background`]  | 5        | 500 ms · 2ⁿ ≤ 30 s | 60 s        | 120 s    | 20 s            | ≤ 60 s    | on, waits ≤ 60 s | adaptive, waits ≤ 60 s | on (memory)  |
//! | [`Outbound::latency_sensitive`] | 2  | 50 ms · 2ⁿ ≤ 500 ms | 1 s        | 2 s      | 1 s             | fail fast | on, fail fast    | off               | off          |
//!
//! `latency_sensitive()` also [hedges](crate::hedge) slow reads (off in the others).
//!
//! "Waits ≤ 60 s" is the breaker's [`max_wait`](CircuitBreakerLayer::max_wait): a call that
//! meets an open circuit waits for the next probe (and leaves paced once it passes) instead of
//! failing at once, up to the same 60 s the gate holds a call ([`RetryAfterLayer::max_wait`]).
//!
//! Every preset keeps its state **per upstream** (scheme, host and port): the Retry-After gate,
//! the circuit breaker, the throttle and the retry budget of one host never change what
//! happens to calls to another ([`partition`](Outbound::partition) with [`Scope::Global`]
//! shares one state for an API whose limits span several hosts);
//! [`upstream`](Outbound::upstream) gives one host settings and state of its own, and
//! [`config`](crate::config) reads all of them from a file. No server can close a gate for
//! longer than 15 minutes ([`RetryAfterLayer::max_pause`]). A [`RetryBudget`] per upstream
//! caps retries — over any 10 s, retries are at most 5 per second plus 20 % of the calls made
//! in those 10 s and the 10 s before them — so an outage does not multiply the load on the
//! failing upstream. `background()` keeps dead letters in a bounded [`MemorySink`]
//! (see [`dead_letters`](Outbound::dead_letters) for a durable file or a shared stream);
//! refused calls (circuit open, throttled or gated past their wait) get a letter too, since
//! their caller may not try again — see [`DeadLetterLayer::record_refusals`].
//!
//! `background()`'s adaptive concurrency limit (AIMD from 20 calls in flight per upstream) is
//! there because a batch job is the caller most likely to push an upstream past its knee and
//! least hurt by waiting for a place; a call a person waits on is better served failing fast,
//! so the other presets leave it out.
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

use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::dead_letter::MemorySink;
use crate::partition::Scope;
use crate::retry::{Jitter, RetryBudget};
use crate::{
    CircuitBreakerLayer, ConcurrencyLayer, DeadLetterLayer, HedgeLayer, IdempotencyKeyLayer,
    RetryAfterLayer, RetryLayer, ThrottleLayer,
};

mod future;
mod maybe;
mod record;
mod service;
mod stack;
mod upstream;

pub use future::ResponseFuture;
pub use maybe::{Maybe, MaybeFuture};
pub use service::OutboundService;
pub use upstream::MAX_UPSTREAM_STACKS;

use record::Records;
use stack::Stack;
pub(crate) use upstream::Host;

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
    concurrency: Option<ConcurrencyLayer>,
    throttle: Option<ThrottleLayer<Scope>>,
    hedge: Option<HedgeLayer>,
    attempt_timeout: Option<Duration>,
    scope: Scope,
    /// Hosts with stacks of their own ([`upstream`](Outbound::upstream)).
    upstreams: Vec<(Host, Outbound)>,
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
            circuit_breaker: Some(watched(CircuitBreakerLayer::new())),
            gate: RetryAfterLayer::new(),
            concurrency: None,
            throttle: None,
            hedge: None,
            attempt_timeout: Some(Duration::from_secs(10)),
            scope: Scope::Upstream,
            upstreams: Vec::new(),
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
            circuit_breaker: Some(watched(CircuitBreakerLayer::new())),
            gate: RetryAfterLayer::new().max_wait(Duration::ZERO),
            concurrency: None,
            throttle: None,
            hedge: None,
            attempt_timeout: Some(Duration::from_secs(2)),
            scope: Scope::Upstream,
            upstreams: Vec::new(),
        }
    }

    /// For read-heavy fan-out a person waits on (a page built from many reads): the
    /// [`user_facing`](Self::user_facing) stack with shorter caps and [hedging](crate::hedge):
    /// a read not answered after its upstream's usual p95 gets a second copy, within 5 % of
    /// calls, never while the upstream is in trouble.
    pub fn latency_sensitive() -> Self {
        Outbound {
            deadline: Some(Duration::from_secs(2)),
            retry: RetryLayer::new()
                .max_attempts(2)
                .base_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(500))
                .max_total_delay(Duration::from_secs(1))
                .max_retry_after(Duration::from_secs(1)),
            attempt_timeout: Some(Duration::from_secs(1)),
            hedge: Some(HedgeLayer::new()),
            ..Self::user_facing()
        }
    }

    /// For work no person waits on (sync jobs, webhooks, queues): more attempts, a longer
    /// budget and deadline, and dead letters for what still fails. They go to a bounded
    /// [`MemorySink`] (see [`dead_letters`](Self::dead_letters) for a durable file or a shared
    /// stream); a letter the full sink refuses is reported on the call's receipt
    /// ([`Recorded::stored`](crate::dead_letter::Recorded)) and counted, never dropped silently.
    /// A call that meets an open circuit waits up to 60 s for it instead of failing at once.
    /// An adaptive concurrency limit ([`ConcurrencyLayer::adaptive`], calls waiting up to
    /// 60 s for a place) keeps a batch job from pushing a saturating upstream over its knee:
    /// it backs off on the upstream's 429s, 503s, named waits and rising latency, and grows
    /// back while answers come fast.
    pub fn background() -> Self {
        Outbound {
            idempotency: Some(IdempotencyKeyLayer::new()),
            dead_letters: Some(DeadLetterLayer::new(metered(MemorySink::new()))),
            deadline: Some(Duration::from_secs(120)),
            retry: RetryLayer::new()
                .max_attempts(5)
                .base_delay(Duration::from_millis(500))
                .jitter(Jitter::Full),
            retry_budget: Some(RetryBudget::new()),
            circuit_breaker: Some(watched(
                CircuitBreakerLayer::new().max_wait(Duration::from_secs(60)),
            )),
            gate: RetryAfterLayer::new(),
            concurrency: Some(ConcurrencyLayer::adaptive().max_wait(Duration::from_secs(60))),
            throttle: None,
            hedge: None,
            attempt_timeout: Some(Duration::from_secs(20)),
            scope: Scope::Upstream,
            upstreams: Vec::new(),
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
        self.hedge = self.hedge.map(|h| h.partition(scope));
        self.retry_budget = self.retry_budget.map(|b| b.partition(scope));
        self
    }

    /// Calls to `host` use `stack`'s settings and state instead of this stack's (default:
    /// none). `host` is a host (`api.example.com`: every scheme and port of it) or a host and
    /// port (`api.example.com:8443`, `127.0.0.1:3000`, `[::1]:8080`), compared without regard
    /// to case; a host and port is preferred to the host alone. Everything a call reads comes
    /// from `stack`: its retry settings, deadline, attempt timeout, idempotency key, retry
    /// budget, breaker, gate, concurrency limit, throttle and dead letters; their state is kept
    /// per upstream (scheme, host and port) in `stack`'s layers, so their read-outs
    /// (`stack.circuit_breaker_layer()`, `stack.retry_stats()`, …) count that host's calls and
    /// this stack's count the others. `stack`'s own partition and hosts are not used.
    ///
    /// The host is matched once, when the stack first meets an upstream, never per call.
    ///
    /// Per-upstream stacks need per-upstream state: with [`Scope::Global`] every call shares
    /// one record and these are **not used** (a warning is logged when a service is made;
    /// [`OutboundConfig::build`](crate::config::OutboundConfig::build) refuses the
    /// combination). A second stack for the same host replaces the first. At most
    /// [`MAX_UPSTREAM_STACKS`] (256) hosts; a further host, or one that is neither a host nor
    /// a host and port (a URL, a path, userinfo, an empty string), is not added, and a
    /// warning is logged ([`OutboundConfig`](crate::config::OutboundConfig) refuses both with
    /// a typed error instead).
    ///
    /// ```
    /// use tower_outbound::{Outbound, RetryLayer};
    ///
    /// let stack = Outbound::new()
    ///     .upstream("payments.example.com", Outbound::new().retry(RetryLayer::new().max_attempts(1)));
    /// assert_eq!(stack.upstream_stacks().count(), 1);
    /// ```
    pub fn upstream(mut self, host: impl Into<String>, stack: Outbound) -> Self {
        let spec = host.into();
        let Some(host) = Host::parse(&spec) else {
            tracing::warn!(
                host = %spec.chars().take(64).collect::<String>(),
                "not a host or host:port: the stack given for it is not used"
            );
            return self;
        };
        if let Some(slot) = self.upstreams.iter_mut().find(|(h, _)| *h == host) {
            slot.1 = stack;
        } else if self.upstreams.len() >= MAX_UPSTREAM_STACKS {
            tracing::warn!(
                %host,
                max = MAX_UPSTREAM_STACKS,
                "too many hosts with stacks of their own: the stack given for this one is not used"
            );
        } else {
            self.upstreams.push((host, stack));
        }
        self
    }

    /// The hosts given stacks of their own ([`upstream`](Self::upstream)), normalised
    /// (lowercase, an IPv6 literal in brackets), with their stacks, in the order they were
    /// given: to read each stack's figures.
    pub fn upstream_stacks(&self) -> impl Iterator<Item = (String, &Outbound)> + '_ {
        self.upstreams.iter().map(|(host, s)| (host.to_string(), s))
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

    /// The limit on calls in flight per upstream, or `None` to leave it out (default: none;
    /// adaptive in [`background`](Self::background)). Its partition is the stack's
    /// [`partition`](Self::partition). Each attempt takes a place after the breaker and the
    /// gate let it through and before the throttle's slot; a call given no place within the
    /// limit's `max_wait` fails with [`Kind::Overloaded`](crate::error::Kind::Overloaded),
    /// neither retried nor counted by the breaker.
    pub fn concurrency(mut self, layer: Option<ConcurrencyLayer>) -> Self {
        self.concurrency = layer;
        self
    }

    /// Hedging of slow attempts, or `None` to leave it out (default: none; on in
    /// [`latency_sensitive`](Self::latency_sensitive)). Its partition is the stack's
    /// [`partition`](Self::partition). An attempt not answered after its upstream's usual p95
    /// gets one copy (see [`hedge`](crate::hedge) for when one is never sent); whichever
    /// answers first is the attempt's answer. A hedge is not a retry: the attempt cap, the retry
    /// budget and the breaker count the hedged attempt once, with the winner's outcome. The
    /// copy goes only when the breaker is closed, the gate open, (with a concurrency limit) a
    /// place is free at once, which it holds until it answers or is dropped, and (with a
    /// throttle) a token is there at once: from
    /// this process's bucket, or from a shared store that holds one here without a round trip
    /// ([`BucketStore::take_at_once`](crate::throttle::BucketStore::take_at_once): a Redis
    /// store's leased slot; without leasing, never).
    pub fn hedge(mut self, layer: Option<HedgeLayer>) -> Self {
        self.hedge = layer.map(|h| h.partition(self.scope));
        self
    }

    /// The hedge layer, when there is one (to read its counters per upstream).
    pub fn hedge_layer(&self) -> Option<&HedgeLayer> {
        self.hedge.as_ref()
    }

    /// The concurrency limit, when there is one (to read its figures per upstream).
    pub fn concurrency_layer(&self) -> Option<&ConcurrencyLayer> {
        self.concurrency.as_ref()
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

    /// The retry layer (to read its counters, or to change one setting of it and give it back
    /// with [`retry`](Self::retry)).
    pub fn retry_layer(&self) -> &RetryLayer {
        &self.retry
    }

    /// The Retry-After gate (to read how long it stays closed and its counters, or to change
    /// one setting of it and give it back with [`gate`](Self::gate)).
    pub fn gate_layer(&self) -> &RetryAfterLayer {
        &self.gate
    }

    /// The retry budget, when there is one.
    pub(crate) fn budget(&self) -> Option<&RetryBudget> {
        self.retry_budget.as_ref()
    }

    /// The partition of the stack's state.
    #[cfg(test)]
    pub(crate) fn scope(&self) -> Scope {
        self.scope
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

impl<S> Layer<S> for Outbound {
    type Service = OutboundService<S>;

    fn layer(&self, client: S) -> Self::Service {
        OutboundService::new(client, Arc::new(self.records()))
    }
}

impl Outbound {
    /// The records of a service made from this stack: this stack's, and the stacks of the
    /// hosts given their own.
    fn records(&self) -> Records {
        if self.scope == Scope::Global && !self.upstreams.is_empty() {
            tracing::warn!(
                hosts = self.upstreams.len(),
                "a stack with a global partition does not use the stacks given to hosts"
            );
        }
        let upstreams = self
            .upstreams
            .iter()
            .map(|(host, stack)| (host.clone(), stack.stack()))
            .collect();
        Records::new(self.stack(), upstreams)
    }

    /// What every call of a service made from this stack reads.
    pub(crate) fn stack(&self) -> Stack {
        let retry = self
            .retry
            .clone()
            .retry_budget(self.retry_budget.clone())
            .deadline(self.deadline);
        Stack {
            keys: self.idempotency.clone(),
            retry: retry.config().clone(),
            budget: self.retry_budget.clone(),
            breaker: self.circuit_breaker.as_ref().map(|b| b.registry().clone()),
            gates: self.gate.gates().clone(),
            concurrency: self.concurrency.as_ref().map(|c| c.registry().clone()),
            throttle: self.throttle.as_ref().map(|t| t.shared().clone()),
            hedge: self.hedge.as_ref().map(|h| h.shared().clone()),
            attempt_timeout: self.attempt_timeout,
            dead_letters: self.dead_letters.as_ref().map(|d| d.config().clone()),
            scope: self.scope,
        }
    }
}

impl Outbound {
    /// The records of a stack, for model checks.
    #[cfg(all(test, tower_outbound_loom))]
    pub(crate) fn records_for_model(&self) -> Arc<Records> {
        OutboundService::new((), Arc::new(self.records())).records()
    }
}

/// A preset's breaker: with the `metrics` feature, its state changes are exported.
pub(crate) fn watched(breaker: CircuitBreakerLayer) -> CircuitBreakerLayer {
    #[cfg(feature = "metrics")]
    return crate::metrics::watch(breaker);
    #[cfg(not(feature = "metrics"))]
    breaker
}

/// A preset's dead-letter sink: with the `metrics` feature, its depth and oldest letter are
/// exported.
#[cfg(feature = "metrics")]
fn metered(sink: MemorySink) -> crate::metrics::MeteredSink<MemorySink> {
    crate::metrics::MeteredSink::new(sink)
}

#[cfg(not(feature = "metrics"))]
fn metered(sink: MemorySink) -> MemorySink {
    sink
}
