use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::{
    CircuitBreaker, CircuitState, CircuitStats, Registry, Settings, StateChange, Window,
    MAX_DURATION,
};
use crate::classify::{Classify, DefaultClassifier};
use crate::partition::{Partition, PartitionKey, Scope};

/// Fails fast while the upstream is failing. See the [module docs](super) for the rules and
/// defaults.
///
/// The breakers are created with the layer; every clone of it, and every service it makes,
/// shares them: one per upstream by default. Setters called after a clone was taken give that
/// layer breakers of its own.
///
/// Every setting accepts any value; out-of-range ones are clamped as each setter says, so a
/// breaker never panics later on a configured value.
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer<C = DefaultClassifier, P = Scope> {
    registry: Arc<Registry>,
    classify: C,
    partition: P,
}

impl Default for CircuitBreakerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CircuitBreakerLayer {
    /// A breaker with the defaults in the [module docs](super).
    pub fn new() -> Self {
        CircuitBreakerLayer {
            registry: Arc::new(Registry::new(Settings::default())),
            classify: DefaultClassifier,
            partition: Scope::Upstream,
        }
    }
}

impl<C, P> CircuitBreakerLayer<C, P> {
    fn update(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.registry.settings.clone();
        f(&mut settings);
        self.registry = Arc::new(Registry::new(settings));
        self
    }

    /// The failure rate over the window at which the circuit opens, from 0.0 to 1.0 (default
    /// 0.5). Values outside are clamped; NaN keeps the current value.
    pub fn failure_rate_threshold(self, rate: f32) -> Self {
        self.update(|s| {
            if !rate.is_nan() {
                s.failure_rate_threshold = rate.clamp(0.0, 1.0);
            }
        })
    }

    /// The window the rates are computed over (default the last 20 calls). A zero count or
    /// bucket number is raised to 1; a count over 10,000 is lowered to 10,000, buckets over
    /// 1,000 to 1,000, and a length over a year to a year.
    pub fn window(self, window: Window) -> Self {
        self.update(|s| s.window = window.clamped())
    }

    /// Calls the window must hold before the circuit may open (default 10).
    pub fn minimum_calls(self, calls: u32) -> Self {
        self.update(|s| s.minimum_calls = calls.max(1))
    }

    /// How long the circuit stays open the first time it trips, before the first probe
    /// (default 1 s; over a year is lowered to a year). With an
    /// [`open_backoff`](Self::open_backoff) (on by default) repeated trips open it longer.
    pub fn open_duration(self, duration: Duration) -> Self {
        self.update(|s| s.open_duration = duration.min(MAX_DURATION))
    }

    /// Lengthens the open time by `factor` each time the circuit opens again soon, up to
    /// `max` (default on: a factor of 2 up to 30 s, so the open times are 1 s, 2 s, 4 s, …,
    /// 30 s). "Again soon" is a failed probe, or a trip less than `max` after the circuit last
    /// closed; a trip after the circuit stayed closed for `max` or longer opens it for
    /// [`open_duration`](Self::open_duration) again. A factor below 1 (or NaN) is raised to
    /// 1, over 1,000 lowered to 1,000; a `max` over a year is lowered to a year; a `max` below
    /// `open_duration` (or a factor of 1) keeps every open time at `open_duration`.
    pub fn open_backoff(self, factor: f32, max: Duration) -> Self {
        self.update(|s| {
            let factor = if factor.is_nan() {
                1.0
            } else {
                factor.clamp(1.0, 1000.0)
            };
            s.open_backoff = Some((factor, max.min(MAX_DURATION)));
        })
    }

    /// How long a call may wait for an open circuit, its patience (default zero: calls fail at
    /// once with [`Kind::CircuitOpen`](crate::error::Kind::CircuitOpen), the right choice for
    /// a call a person waits on; over a year is lowered to a year).
    ///
    /// Above zero, a call that meets an open circuit is held instead, when the next probe
    /// comes within its patience (else it fails at once, as without patience): held calls
    /// wait for the probe time, take the [`half_open_probes`](Self::half_open_probes) slots
    /// (never more), and wait for the probes' verdict. When the probes close the circuit,
    /// held calls leave paced: as many as there were probes at once, then two more for each
    /// success that comes back (a slow start); new calls line up behind them. When a probe
    /// fails, held calls wait for the next probe if it still comes within their patience, and
    /// fail with `CircuitOpen` otherwise. A caller that drops a held call frees its place.
    /// Use it for work nobody waits on: [`Outbound::background`](crate::Outbound::background)
    /// holds calls for up to 60 s.
    ///
    /// The patience counts from the moment the call met the open circuit and covers the
    /// whole hold; a deadline around the call (the retry layer's) still ends it first.
    pub fn max_wait(self, patience: Duration) -> Self {
        self.update(|s| s.max_wait = patience.min(MAX_DURATION))
    }

    /// Probe calls let through while half-open; all must succeed to close (default 3; at
    /// least 1).
    pub fn half_open_probes(self, probes: u32) -> Self {
        self.update(|s| s.half_open_probes = probes.max(1))
    }

    /// Also opens the circuit when at least `rate` (0.0 to 1.0) of the calls in the window took
    /// longer than `duration` (default off). A rate outside 0.0–1.0 is clamped, NaN is 1.0; any `duration`
    /// is accepted.
    pub fn slow_call(self, duration: Duration, rate: f32) -> Self {
        self.update(|s| {
            let rate = if rate.is_nan() {
                1.0
            } else {
                rate.clamp(0.0, 1.0)
            };
            s.slow_call = Some((duration, rate));
        })
    }

    /// The most per-partition breakers kept (default 1,024). At the cap, idle closed breakers
    /// are dropped first; if none is idle, a new key shares the default breaker. Zero makes every
    /// key share the default breaker.
    pub fn max_partitions(self, max: usize) -> Self {
        self.update(|s| s.max_partitions = max)
    }

    /// Calls `listener` on every state change, after the change, outside any lock.
    pub fn on_state_change(self, listener: impl Fn(&StateChange) + Send + Sync + 'static) -> Self {
        let listener = Arc::new(listener);
        self.update(|s| s.listener = Some(listener))
    }

    /// What counts as a failure (default [`DefaultClassifier`]: 5xx, transport errors and
    /// timeouts; not 4xx, not 429).
    pub fn classify<C2: Classify>(self, classify: C2) -> CircuitBreakerLayer<C2, P> {
        CircuitBreakerLayer {
            registry: self.registry,
            classify,
            partition: self.partition,
        }
    }

    /// One breaker per partition (default [`Scope::Upstream`]: one per scheme, host and port;
    /// [`Global`](crate::partition::Global) or [`Scope::Global`] for one for the whole
    /// service).
    pub fn partition<P2: Partition>(self, partition: P2) -> CircuitBreakerLayer<C, P2> {
        CircuitBreakerLayer {
            registry: self.registry,
            classify: self.classify,
            partition,
        }
    }

    /// The worst state of any breaker of this layer: open if one is open, else half-open if one
    /// is probing, else closed. With one breaker (a global partition) that is its state; see
    /// [`state_of`](Self::state_of) for one upstream.
    pub fn state(&self) -> CircuitState {
        self.registry.worst_state()
    }

    /// The state of the breaker of `key` (closed when there is none).
    pub fn state_of(&self, key: &PartitionKey) -> CircuitState {
        self.registry.state_of(Some(key))
    }

    /// Per-partition breakers currently kept.
    pub fn partitions(&self) -> usize {
        self.registry.partitions()
    }

    /// How long until the longest-open breaker lets a probe through, or `None` when no
    /// breaker is open (closed or half-open). A source of work can pause this long instead of
    /// queueing calls that would wait or fail.
    pub fn open_for(&self) -> Option<Duration> {
        self.registry.longest_open()
    }

    /// Calls held now, waiting for their circuit ([`max_wait`](Self::max_wait)).
    pub fn held(&self) -> usize {
        self.registry.held()
    }

    /// The counters of every service made by this layer and its clones.
    pub fn stats(&self) -> CircuitStats {
        self.registry.stats.clone()
    }

    /// The breakers, for a call that drives them itself.
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

impl<S, C: Clone, P: Clone> Layer<S> for CircuitBreakerLayer<C, P> {
    type Service = CircuitBreaker<S, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(
            inner,
            self.registry.clone(),
            self.classify.clone(),
            self.partition.clone(),
        )
    }
}
