//! Hedging: when an attempt has not answered after about its upstream's usual p95, send a
//! second copy and take whichever answers first — for the call that is merely slow, which a
//! retry does nothing for.
//!
//! [`HedgeLayer`] decides per upstream, from that upstream's own figures:
//!
//! - **When.** The delay is a quantile (default p95) of the upstream's recent *successful*
//!   attempt latencies, with sub-millisecond resolution (log-linear buckets, at most 12.5 %
//!   above the true value, never below), recorded lock-free, and clamped to
//!   `[min_delay, max_delay]` ([`over_median`](HedgeLayer::over_median) can also hold it to a
//!   multiple of the median, for an upstream whose usual spread is wide). Until 20
//!   samples are in, the fallback delay (default 50 ms) serves. Failures and refusals are
//!   never samples, so they never shrink the delay.
//! - **How many.** A budget, on the model of the [retry budget](crate::retry::RetryBudget):
//!   **over any 10 s, hedges are at most 5 % of the calls made in those 10 s and the 10 s
//!   before them**, per upstream. A hedge the budget refuses is counted, never queued.
//! - **Not in trouble.** No hedge while most of the upstream's last 16 answers took over twice
//!   its usual median (a brownout: every call is slow, and hedging would double the load on a
//!   struggling upstream), nor when the call's remaining deadline is shorter than the median (the copy
//!   could not answer in time). Within [`Outbound`](crate::Outbound), also none while the
//!   upstream's breaker is not closed, while its Retry-After gate holds a server-named pause,
//!   or when the throttle has no token at once (a shared store's token at once is one it holds
//!   here, as a Redis store's leased slot).
//! - **Only what may be sent twice.** `GET`, `HEAD`, `OPTIONS`, and writes that carry an
//!   idempotency key (both copies carry the same one). Any other request is never hedged, nor
//!   is a body that cannot be sent again (a stream over the buffer limit).
//! - **One answer.** The first answer that settles the call (a success, or a failure no retry
//!   would follow) wins and the other copy is dropped at once: its connection is closed, not
//!   reused mid-flight. A retryable failure of one copy does not win while the other is still
//!   pending. One call, one result, one dead letter.
//!
//! Alone, the layer takes `http::Request<ReplayBody>` (put it under a
//! [`RetryLayer`](crate::RetryLayer), or hand it a [`ReplayBody`](crate::body::ReplayBody)):
//! a hedge is not a retry, and a hedged attempt is one attempt for the retry layer above it.
//! In [`Outbound`](crate::Outbound) it is a step of the attempt
//! ([`Outbound::hedge`](crate::Outbound::hedge), on in
//! [`Outbound::latency_sensitive`](crate::Outbound::latency_sensitive)): each attempt may be
//! hedged once; the attempt cap, the retry budget and the breaker count the attempt once, with
//! the winner's outcome.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_outbound::body::ReplayBody;
//! use tower_outbound::hedge::HedgeLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let hedge = HedgeLayer::new().fallback_delay(Duration::from_millis(20));
//! let stats = hedge.stats();
//! let client = ServiceBuilder::new()
//!     .layer(hedge)
//!     .service(tower::service_fn(|_req: Request<ReplayBody>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new("ok"))
//!     }));
//! let request = Request::get("http://api.example.com/items")
//!     .body(ReplayBody::from_bytes(Default::default()))
//!     .unwrap();
//! let response = client.oneshot(request).await.unwrap();
//! assert_eq!(*response.body(), "ok");
//! assert_eq!(stats.sent(), 0, "it answered before the delay");
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use tokio::time::Instant;

use crate::partition::{PartitionKey, Registry, Scope};
use crate::retry::budget::Allowance;
use crate::retry::RetryBudget;
use crate::sync::{AtomicU64, Ordering};

mod future;
mod latency;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::HedgeLayer;
pub use service::Hedge;

use latency::Latencies;

/// Why a hedge was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The budget was spent.
    Budget,
    /// The upstream is in trouble (a brownout, an open breaker, a closed gate, no token), or the
    /// call has too little time left.
    State,
}

/// The settings of a hedge layer, as its calls and the composed call read them.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// The quantile of recent latencies the delay is.
    pub(crate) quantile: f64,
    /// The delay until enough samples are in.
    pub(crate) fallback: Duration,
    pub(crate) min_delay: Duration,
    pub(crate) max_delay: Duration,
    /// The delay is at least this many times the median.
    pub(crate) over_median: u32,
    /// Samples needed before the quantile serves.
    pub(crate) min_samples: u32,
    /// The header whose presence makes a write safe to send twice.
    pub(crate) key_header: HeaderName,
    pub(crate) max_partitions: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            quantile: 0.95,
            fallback: Duration::from_millis(50),
            min_delay: Duration::from_micros(100),
            max_delay: Duration::from_secs(10),
            over_median: 1,
            min_samples: 20,
            key_header: HeaderName::from_static("idempotency-key"),
            max_partitions: 1024,
        }
    }
}

impl Settings {
    /// Whether a request with this method may be sent twice, `has` saying whether it carries
    /// a header.
    pub(crate) fn may_send_twice(
        &self,
        method: &Method,
        has: impl FnOnce(&HeaderName) -> bool,
    ) -> bool {
        matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) || has(&self.key_header)
    }
}

/// Counters of hedges, per upstream or for a whole layer.
#[derive(Debug, Default)]
struct Counts {
    sent: AtomicU64,
    won: AtomicU64,
    refused_budget: AtomicU64,
    refused_state: AtomicU64,
}

/// One upstream's hedging state: its recent latencies, its budget and its counters.
#[derive(Debug)]
pub(crate) struct Hedger {
    latencies: Latencies,
    allowance: Arc<Allowance>,
    counts: Counts,
    /// The clock of the latencies' windows.
    base: Instant,
    /// The upstream, for its meters.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    key: Option<PartitionKey>,
}

impl Hedger {
    fn new(settings: &Settings, allowance: Arc<Allowance>, key: Option<PartitionKey>) -> Self {
        Hedger {
            latencies: Latencies::new(settings.quantile, settings.min_samples),
            allowance,
            counts: Counts::default(),
            base: Instant::now(),
            key,
        }
    }

    /// How long after an attempt is sent its copy is due (whether it may go then is for
    /// [`admit`](Self::admit) to say).
    pub(crate) fn delay(&self, settings: &Settings) -> Duration {
        let figures = self.latencies.figures();
        let delay = if figures.quantile == 0 {
            settings.fallback
        } else {
            let micros = figures.quantile.max(
                figures
                    .median
                    .saturating_mul(u64::from(settings.over_median)),
            );
            Duration::from_micros(micros)
        };
        delay.clamp(
            settings.min_delay,
            settings.max_delay.max(settings.min_delay),
        )
    }

    /// One primary call: its share of a hedge.
    pub(crate) fn deposit(&self, now: Instant) {
        self.allowance.deposit(now);
    }

    /// One primary call, `since_base` nanoseconds after the budget's
    /// [`budget_base`](Self::budget_base) (for a caller that keeps its own clock in nanoseconds).
    pub(crate) fn deposit_at(&self, since_base: u64) {
        self.allowance.deposit_at(since_base);
    }

    /// When the budget's clock starts.
    pub(crate) fn budget_base(&self) -> Instant {
        self.allowance.base()
    }

    /// When the latencies' clock starts.
    pub(crate) fn base(&self) -> Instant {
        self.base
    }

    /// Whether a hedge may go now, for a call with `remaining` time before its deadline: not
    /// in a brownout, with time for the copy to answer, and the budget paying for it (a hedge
    /// refused is counted in `shared`, and here).
    pub(crate) fn admit(
        &self,
        shared: &Shared,
        now: Instant,
        remaining: Option<Duration>,
    ) -> Result<(), Refusal> {
        let figures = self.latencies.figures();
        let median = Duration::from_micros(figures.median);
        let refusal = if figures.is_brownout() || remaining.is_some_and(|left| left < median) {
            Some(Refusal::State)
        } else if !self.allowance.withdraw(now) {
            Some(Refusal::Budget)
        } else {
            None
        };
        match refusal {
            None => Ok(()),
            Some(refusal) => {
                self.refused(shared, refusal);
                Err(refusal)
            }
        }
    }

    /// A hedge not sent because of `refusal`.
    pub(crate) fn refused(&self, shared: &Shared, refusal: Refusal) {
        for counts in [&self.counts, &shared.counts] {
            match refusal {
                Refusal::Budget => &counts.refused_budget,
                Refusal::State => &counts.refused_state,
            }
            .fetch_add(1, Ordering::Relaxed);
        }
        #[cfg(feature = "metrics")]
        crate::metrics::hedge(self.key.as_ref(), refusal_label(refusal));
    }

    /// A hedge sent.
    pub(crate) fn sent(&self, shared: &Shared) {
        self.counts.sent.fetch_add(1, Ordering::Relaxed);
        shared.counts.sent.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        crate::metrics::hedge(self.key.as_ref(), "sent");
    }

    /// A hedge that answered first.
    pub(crate) fn won(&self, shared: &Shared) {
        self.counts.won.fetch_add(1, Ordering::Relaxed);
        shared.counts.won.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        crate::metrics::hedge(self.key.as_ref(), "won");
    }

    /// A successful attempt that took `latency`, ending at `now`.
    pub(crate) fn record(&self, latency: Duration, now: Instant) {
        let at = crate::throttle::nanos(now.saturating_duration_since(self.base));
        self.record_at(crate::throttle::nanos(latency), at);
    }

    /// A successful attempt that took `latency` nanoseconds, ending `since_base` nanoseconds
    /// after [`base`](Self::base).
    pub(crate) fn record_at(&self, latency: u64, since_base: u64) {
        self.latencies.record(latency / 1_000, since_base);
    }

    /// This upstream's counters.
    fn stats(&self) -> HedgeCounts {
        HedgeCounts::of(&self.counts)
    }
}

#[cfg(feature = "metrics")]
fn refusal_label(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::Budget => "refused_budget",
        Refusal::State => "refused_state",
    }
}

/// The state a hedge layer shares with its clones and services: the settings, each upstream's
/// [`Hedger`], and the layer's counters.
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    budget: RetryBudget,
    scope: Scope,
    default: Arc<Hedger>,
    keyed: Registry<Hedger>,
    counts: Counts,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("hedge::Shared")
            .field("settings", &self.settings)
            .field("upstreams", &self.keyed.len())
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(settings: Settings, budget: RetryBudget, scope: Scope) -> Self {
        let default = Arc::new(Hedger::new(&settings, budget.allowance(None), None));
        Shared {
            settings,
            budget,
            scope,
            default,
            keyed: Registry::default(),
            counts: Counts::default(),
        }
    }

    /// The hedging state of `key`'s upstream (`None`: the shared default, as for every call
    /// with a global scope).
    pub(crate) fn hedger(&self, key: Option<&PartitionKey>) -> Arc<Hedger> {
        let key = match self.scope {
            Scope::Global => None,
            Scope::Upstream => key,
        };
        self.keyed.get_or_shared(
            key,
            &self.default,
            self.settings.max_partitions,
            // A hedger with no hedge sent and few samples is not worth keeping over a new one.
            |hedger| hedger.counts.sent.load(Ordering::Relaxed) > 0,
            |key| {
                Hedger::new(
                    &self.settings,
                    self.budget.allowance(Some(key)),
                    Some(key.clone()),
                )
            },
        )
    }
}

/// Counters of hedges: sent, won, and not sent (by the budget, or by the upstream's state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HedgeCounts {
    /// Hedges sent.
    pub sent: u64,
    /// Hedges whose answer was the one returned.
    pub won: u64,
    /// Hedges not sent because the budget was spent.
    pub refused_budget: u64,
    /// Hedges not sent because the upstream was in trouble (a brownout, a breaker not closed,
    /// a gate holding, no throttle token at once) or the call had too little time left.
    pub refused_state: u64,
}

impl HedgeCounts {
    fn of(counts: &Counts) -> Self {
        HedgeCounts {
            sent: counts.sent.load(Ordering::Relaxed),
            won: counts.won.load(Ordering::Relaxed),
            refused_budget: counts.refused_budget.load(Ordering::Relaxed),
            refused_state: counts.refused_state.load(Ordering::Relaxed),
        }
    }
}

/// A read-out of a hedge layer's counters, shared with the layer (see [`HedgeLayer::stats`]).
#[derive(Clone, Debug)]
pub struct HedgeStats {
    shared: Arc<Shared>,
}

impl HedgeStats {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        HedgeStats { shared }
    }

    /// Every upstream's counters together.
    pub fn counts(&self) -> HedgeCounts {
        HedgeCounts::of(&self.shared.counts)
    }

    /// Hedges sent.
    pub fn sent(&self) -> u64 {
        self.counts().sent
    }

    /// Hedges that answered first.
    pub fn won(&self) -> u64 {
        self.counts().won
    }

    /// The counters of one upstream (a [`ByUpstream`](crate::partition::ByUpstream) key),
    /// when it has hedging state.
    pub fn of(&self, key: &PartitionKey) -> Option<HedgeCounts> {
        self.shared.keyed.get(key).map(|hedger| hedger.stats())
    }

    /// The delay a hedge of a call to this upstream would wait now (`None`: no state for it
    /// yet).
    pub fn delay_of(&self, key: &PartitionKey) -> Option<Duration> {
        let hedger = self.shared.keyed.get(key)?;
        Some(hedger.delay(&self.shared.settings))
    }
}

/// Whether an attempt's result settles the call: a success, or a failure no retry would
/// follow. A retryable failure of one copy does not win while the other may still succeed.
pub(crate) fn settles(outcome: crate::classify::Outcome) -> bool {
    !outcome.is_retryable()
}
