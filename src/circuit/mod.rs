//! Circuit breaking: fail fast while the upstream is down, probe it, recover.
//!
//! A dead upstream fills every worker with calls that wait for a timeout. [`CircuitBreakerLayer`]
//! watches the outcomes of calls and, when too many fail, stops calling for a while:
//!
//! ```text
//!   Closed ──(failure rate ≥ threshold over the window, with ≥ minimum_calls)──▶ Open
//!     ▲                                                                         │
//!     │ every probe succeeded                                   open_duration   │
//!     │                                                          has passed     ▼
//!     └──────────────────────────────── HalfOpen ◀──────────────────────────────┘
//!                                          │ a probe failed
//!                                          └──────────────▶ Open (again, maybe longer)
//! ```
//!
//! - **Closed:** calls go through; their outcomes fill a sliding window, by count (the last
//!   N calls) or by time (the last T, in slices).
//! - **Open:** calls fail at once with [`Kind::CircuitOpen`],
//!   carrying the time until the next probe, without touching the inner service; or, with a
//!   [`max_wait`](CircuitBreakerLayer::max_wait) (a patience), they wait in line for the
//!   probe and leave paced once it passes (see below).
//! - **Half-open:** at most `half_open_probes` calls go through; all must succeed to close, one
//!   failure re-opens. Other calls meanwhile fail fast with a `retry_in` of zero. A probe whose
//!   caller gives up (drops the future) gives its permit back.
//!
//! What counts as a failure comes from [`Classify`](crate::classify::Classify)
//! ([`Outcome::is_failure`](crate::classify::Outcome::is_failure)): by default 5xx, transport
//! errors and timeouts are failures; 4xx and 429 are not (the upstream is healthy, just
//! limiting); calls refused by another layer (throttled, another breaker) are not counted.
//!
//! | setting | default |
//! |---|---|
//! | [`failure_rate_threshold`](CircuitBreakerLayer::failure_rate_threshold) | 0.5 (50 %) |
//! | [`window`](CircuitBreakerLayer::window) | the last 20 calls |
//! | [`minimum_calls`](CircuitBreakerLayer::minimum_calls) | 10 |
//! | [`open_duration`](CircuitBreakerLayer::open_duration) | 1 s (the first open time) |
//! | [`open_backoff`](CircuitBreakerLayer::open_backoff) | ×2 up to 30 s when it trips again soon |
//! | [`half_open_probes`](CircuitBreakerLayer::half_open_probes) | 3 |
//! | [`max_wait`](CircuitBreakerLayer::max_wait) | zero: fail fast |
//! | [`slow_call`](CircuitBreakerLayer::slow_call) | off |
//! | [`partition`](CircuitBreakerLayer::partition) | one breaker per upstream (scheme, host, port) |
//!
//! # Waiting for the circuit
//!
//! Fail-fast is right for a call a person waits on. For work nobody waits on (a sync job, a
//! queue consumer), [`max_wait`](CircuitBreakerLayer::max_wait) lets a call that meets an open
//! circuit wait, up to that patience, instead of failing (and being dead-lettered):
//!
//! - it waits for the probe time if that comes within its patience, else fails at once;
//! - once half-open, held calls take the probe slots, never more than `half_open_probes`, and
//!   the others wait for the verdict;
//! - when the probes close the circuit, held calls leave paced: as many as there were probes,
//!   then two more per success that comes back (a slow start), new calls lining up behind them;
//! - when a probe fails, they wait for the next probe if it still fits their patience, and fail
//!   with `CircuitOpen` (its `retry_in` the time to that probe) otherwise;
//! - a caller that drops a held call frees its place (a probe slot or a release it was given
//!   passes to the next in line).
//!
//! [`Outbound::background`](crate::Outbound::background) waits up to 60 s. The open time starts
//! at 1 s and doubles, up to 30 s, each time the circuit opens again soon after, so a held call
//! waits about as long as the outage, not 30 s more.
//!
//! Every state change is logged (`warn` on open, `info` otherwise) and reaches the listener set
//! with [`on_state_change`](CircuitBreakerLayer::on_state_change). Clones of the layer and its
//! services share the breakers. A closed breaker admits a call with one atomic load and records
//! its outcome in one short critical section; nothing is allocated per call.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_outbound::{CircuitBreakerLayer, CircuitState};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let down = tower::service_fn(|_req: Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(
//!         Response::builder().status(StatusCode::BAD_GATEWAY).body(()).unwrap(),
//!     )
//! });
//! let breaker = CircuitBreakerLayer::new().minimum_calls(4).open_duration(Duration::from_secs(10));
//! let client = ServiceBuilder::new().layer(breaker.clone()).service(down);
//!
//! for _ in 0..4 {
//!     client.clone().oneshot(Request::new(())).await.unwrap();
//! }
//! assert_eq!(breaker.state(), CircuitState::Open);
//! let err = client.clone().oneshot(Request::new(())).await.unwrap_err();
//! assert!(err.is_circuit_open());
//! assert_eq!(err.retry_after(), Some(Duration::from_secs(10)));
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::classify::Outcome;
use crate::error::{Error, Kind};
use crate::partition::PartitionKey;

mod breaker;
mod future;
pub(crate) mod hold;
mod layer;
mod service;
mod window;

pub use future::ResponseFuture;
pub use layer::CircuitBreakerLayer;
pub use service::CircuitBreaker;
pub use window::Window;

pub(crate) use breaker::{Admission, Breaker};
pub(crate) use hold::Hold;

/// Where a breaker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls fail fast.
    Open,
    /// A few probe calls go through to test the upstream.
    HalfOpen,
}

/// A state change, as the listener and the logs see it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StateChange {
    /// The partition of the breaker (`None`: the default breaker).
    pub key: Option<PartitionKey>,
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
    /// The failure rate over the window when it changed.
    pub failure_rate: f32,
    /// The slow-call rate over the window when it changed.
    pub slow_call_rate: f32,
    /// Calls in the window when it changed.
    pub calls: u32,
    /// For a change to open: how long it stays open.
    pub open_for: Option<Duration>,
}

type Listener = Arc<dyn Fn(&StateChange) + Send + Sync>;

/// The longest duration a breaker setting can hold: a year.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The settings of every breaker of one layer.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) failure_rate_threshold: f32,
    pub(crate) window: Window,
    pub(crate) minimum_calls: u32,
    pub(crate) open_duration: Duration,
    pub(crate) open_backoff: Option<(f32, Duration)>,
    pub(crate) half_open_probes: u32,
    pub(crate) max_wait: Duration,
    pub(crate) slow_call: Option<(Duration, f32)>,
    pub(crate) max_partitions: usize,
    pub(crate) listener: Option<Listener>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("failure_rate_threshold", &self.failure_rate_threshold)
            .field("window", &self.window)
            .field("minimum_calls", &self.minimum_calls)
            .field("open_duration", &self.open_duration)
            .field("open_backoff", &self.open_backoff)
            .field("half_open_probes", &self.half_open_probes)
            .field("max_wait", &self.max_wait)
            .field("slow_call", &self.slow_call)
            .finish_non_exhaustive()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            failure_rate_threshold: 0.5,
            window: Window::Count(20),
            minimum_calls: 10,
            open_duration: Duration::from_secs(1),
            open_backoff: Some((2.0, Duration::from_secs(30))),
            half_open_probes: 3,
            max_wait: Duration::ZERO,
            slow_call: None,
            max_partitions: 1024,
            listener: None,
        }
    }
}

/// Counters of a [`CircuitBreakerLayer`] and every service it made. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct CircuitStats {
    counters: Arc<[AtomicU64; 6]>,
    /// Calls let through and successes: counted on every call, from every core.
    permitted: Arc<crate::sync::ShardedCount>,
    successes: Arc<crate::sync::ShardedCount>,
}

impl CircuitStats {
    /// Calls let through (probes included).
    pub fn permitted(&self) -> u64 {
        self.permitted.sum()
    }

    /// Calls refused because a breaker was open (or half-open with every probe out).
    pub fn rejected(&self) -> u64 {
        self.counters[1].load(Ordering::Relaxed)
    }

    /// Calls that counted as failures.
    pub fn failures(&self) -> u64 {
        self.counters[2].load(Ordering::Relaxed)
    }

    /// Calls that counted as successes.
    pub fn successes(&self) -> u64 {
        self.successes.sum()
    }

    /// Times a breaker opened.
    pub fn times_opened(&self) -> u64 {
        self.counters[4].load(Ordering::Relaxed)
    }

    /// Calls that waited for the circuit ([`max_wait`](CircuitBreakerLayer::max_wait)): each
    /// is also counted once in [`permitted`](Self::permitted) or [`rejected`](Self::rejected)
    /// when it stops waiting, unless its caller dropped it first.
    pub fn held(&self) -> u64 {
        self.counters[5].load(Ordering::Relaxed)
    }

    pub(crate) fn count(&self, index: usize) {
        match index {
            0 => self.permitted.add(1),
            3 => self.successes.add(1),
            _ => {
                self.counters[index].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The error of a call refused because its upstream's breaker is open.
pub(crate) fn open_error(retry_in: Duration, upstream: Option<&http::uri::Authority>) -> Error {
    Error::new(Kind::CircuitOpen { retry_in }).for_upstream(upstream)
}

/// The breakers of one layer: the default one, and one per partition key.
pub(crate) struct Registry {
    pub(crate) settings: Settings,
    default: Arc<Breaker>,
    keyed: crate::partition::Registry<Breaker>,
    pub(crate) stats: CircuitStats,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub(crate) fn new(settings: Settings) -> Self {
        Registry {
            default: Arc::new(Breaker::new(&settings, None)),
            settings,
            keyed: crate::partition::Registry::default(),
            stats: CircuitStats::default(),
        }
    }

    /// The breaker of `key`. At `max_partitions`, idle closed breakers are dropped first; if
    /// none is idle, the key shares the default breaker.
    pub(crate) fn breaker(&self, key: Option<&PartitionKey>) -> Arc<Breaker> {
        self.keyed.get_or_shared(
            key,
            &self.default,
            self.settings.max_partitions,
            |b| !b.is_idle(),
            |key| Breaker::new(&self.settings, Some(key.clone())),
        )
    }

    pub(crate) fn state_of(&self, key: Option<&PartitionKey>) -> CircuitState {
        match key {
            None => self.default.state(),
            Some(key) => self
                .keyed
                .get(key)
                .map_or(CircuitState::Closed, |b| b.state()),
        }
    }

    /// Open if any breaker is open, else half-open if any is, else closed.
    pub(crate) fn worst_state(&self) -> CircuitState {
        let rank = |state: CircuitState| match state {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        };
        let map = self.keyed.snapshot();
        map.values()
            .chain(std::iter::once(&self.default))
            .map(|b| b.state())
            .max_by_key(|s| rank(*s))
            .unwrap_or(CircuitState::Closed)
    }

    pub(crate) fn partitions(&self) -> usize {
        self.keyed.len()
    }

    /// Decides whether a call may go through `breaker`, and counts it (let through or
    /// refused). State changes are logged and announced.
    pub(crate) fn admit(&self, breaker: &Breaker) -> Admission {
        let mut changes = Vec::new();
        let admission = breaker.admit(&self.settings, &mut changes);
        if !changes.is_empty() {
            self.announce(&changes);
        }
        match admission {
            // With a patience, a refused call is held: the hold counts it when it answers.
            Admission::Reject { .. } if self.holds() => {}
            Admission::Reject { .. } => self.stats.count(1),
            Admission::Call | Admission::Probe { .. } => self.stats.count(0),
        }
        admission
    }

    /// Whether calls the breaker refuses wait for it (a `max_wait` above zero) rather than fail
    /// at once.
    pub(crate) fn holds(&self) -> bool {
        !self.settings.max_wait.is_zero()
    }

    /// Whether an admitted call's outcome needs the time it started: slow calls are judged,
    /// or the window is kept by time.
    pub(crate) fn needs_clock(&self) -> bool {
        self.settings.slow_call.is_some() || matches!(self.settings.window, Window::Time { .. })
    }

    /// Records the outcome of a call `breaker` admitted. A refusal by another step
    /// ([`Outcome::Rejected`]) says nothing of the upstream's health: it counts neither way,
    /// and a probe gives its permit back. `started`: when the call started, if
    /// [`needs_clock`](Self::needs_clock).
    pub(crate) fn finish(
        &self,
        breaker: &Breaker,
        admission: Admission,
        outcome: Outcome,
        started: Option<Instant>,
    ) {
        let failure = match outcome {
            Outcome::Rejected => None,
            outcome => Some(outcome.is_failure()),
        };
        match failure {
            Some(true) => self.stats.count(2),
            Some(false) => self.stats.count(3),
            None => {}
        }
        let (now, slow) = match started {
            None => (None, false),
            Some(started) => {
                let now = Instant::now();
                let slow = self
                    .settings
                    .slow_call
                    .is_some_and(|(limit, _)| now.saturating_duration_since(started) > limit);
                (Some(now), slow)
            }
        };
        let mut changes = Vec::new();
        breaker.record(admission, failure, slow, now, &self.settings, &mut changes);
        if !changes.is_empty() {
            self.announce(&changes);
        }
    }

    /// The longest time until an open breaker lets a probe through (`None`: none is open).
    pub(crate) fn longest_open(&self) -> Option<Duration> {
        let map = self.keyed.snapshot();
        map.values()
            .chain(std::iter::once(&self.default))
            .filter_map(|b| b.open_for())
            .max()
    }

    /// Calls held by every breaker, now.
    pub(crate) fn held(&self) -> usize {
        let map = self.keyed.snapshot();
        map.values()
            .chain(std::iter::once(&self.default))
            .map(|b| b.held())
            .sum()
    }

    /// Logs and announces state changes (outside any breaker's lock).
    pub(crate) fn announce(&self, changes: &[StateChange]) {
        for change in changes {
            let key = change
                .key
                .as_ref()
                .map(|k| k.to_string())
                .unwrap_or_default();
            match change.to {
                CircuitState::Open => {
                    self.stats.count(4);
                    tracing::warn!(
                        partition = %key,
                        failure_rate = change.failure_rate,
                        calls = change.calls,
                        open_ms = change.open_for.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                        "circuit opened"
                    );
                }
                CircuitState::HalfOpen => {
                    tracing::info!(partition = %key, "circuit half-open: probing")
                }
                CircuitState::Closed => tracing::info!(partition = %key, "circuit closed"),
            }
            if let Some(listener) = &self.settings.listener {
                listener(change);
            }
        }
    }
}
