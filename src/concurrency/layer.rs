use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::limiter::{Algorithm, Settings};
use super::{Concurrency, LimitState, Registry};
use crate::partition::{Partition, PartitionKey, Scope};

/// A limit on calls in flight per upstream, fixed or adaptive. See the [module docs](super)
/// for the rules and defaults.
///
/// The limits are created with the layer; every clone of it, and every service it makes,
/// shares them. Setters called after a clone was taken give that layer limits of its own.
/// Every setting accepts any value; out-of-range ones are clamped as each setter says.
#[derive(Clone, Debug)]
pub struct ConcurrencyLayer<P = Scope> {
    registry: Arc<Registry>,
    partition: P,
}

impl ConcurrencyLayer {
    /// An adaptive limit per upstream: AIMD, starting at 20, within [1, 1,000], ×0.9 on a
    /// loss (×0.95 on latency over 1.5 times its baseline), calls waiting up to 30 s for a place.
    pub fn adaptive() -> Self {
        ConcurrencyLayer {
            registry: Arc::new(Registry::new(Settings::adaptive())),
            partition: Scope::Upstream,
        }
    }

    /// A fixed limit of `limit` calls in flight per upstream (a bulkhead; 0 is raised to 1),
    /// further calls waiting up to 30 s for a place.
    pub fn fixed(limit: u32) -> Self {
        ConcurrencyLayer {
            registry: Arc::new(Registry::new(Settings::fixed(limit))),
            partition: Scope::Upstream,
        }
    }
}

impl<P> ConcurrencyLayer<P> {
    fn update(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.registry.settings.clone();
        f(&mut settings);
        self.registry = Arc::new(Registry::new(settings));
        self
    }

    fn is_adaptive(settings: &Settings) -> bool {
        settings.algorithm != Algorithm::Fixed
    }

    /// The bounds an adaptive limit moves within (default 1 and 1,000). A zero `min` is raised
    /// to 1 and a `max` below `min` to `min`; the initial limit is kept within them. A fixed
    /// limit is not changed.
    pub fn limits(self, min: u32, max: u32) -> Self {
        self.update(|s| {
            if Self::is_adaptive(s) {
                s.min = min.max(1);
                s.max = max.max(s.min);
            }
        })
    }

    /// The limit an adaptive limit starts at, for each upstream (default 20; kept within the
    /// [`limits`](Self::limits)). A fixed limit is not changed.
    pub fn initial(self, limit: u32) -> Self {
        self.update(|s| {
            if Self::is_adaptive(s) {
                s.initial = limit;
            }
        })
    }

    /// The factor a loss multiplies an adaptive limit by (default 0.9): 0.5 halves it. Values
    /// are clamped to [0.01, 0.99]; NaN keeps the current value.
    pub fn backoff(self, factor: f64) -> Self {
        self.update(|s| {
            if !factor.is_nan() {
                s.backoff = factor.clamp(0.01, 0.99);
            }
        })
    }

    /// With AIMD, recent latency above its baseline times `tolerance` counts as a loss, and
    /// multiplies the limit by the square root of the [`backoff`](Self::backoff) (default
    /// `Some(1.5)`: ×0.95), and a limit stops growing once recent latency is 10 % over the
    /// baseline: requests have started to queue at the upstream, so it holds at the knee
    /// instead of sawing through it. `None` listens to losses only: for an upstream whose
    /// latency varies with the work asked of it (batches of different sizes) more than with
    /// its load. A tolerance below 1.1 (or NaN) is raised to 1.1.
    pub fn latency_tolerance(self, tolerance: Option<f64>) -> Self {
        self.update(|s| {
            s.tolerance = tolerance.map(|t| if t.is_nan() { 1.1 } else { t.max(1.1) });
        })
    }

    /// Moves an adaptive limit by TCP Vegas instead of AIMD: it grows while the queue it
    /// estimates at the upstream (from latency over the baseline) is short and shrinks when it
    /// is long, and multiplies down by [`backoff`](Self::backoff) on a loss. For upstreams
    /// whose latency is a clean signal. A fixed limit is not changed.
    pub fn vegas(self) -> Self {
        self.update(|s| {
            if Self::is_adaptive(s) {
                s.algorithm = Algorithm::Vegas;
            }
        })
    }

    /// How long a call may wait in line for a place (default 30 s; over a year is lowered to
    /// a year). Zero fails a call at once with
    /// [`Kind::Overloaded`](crate::error::Kind::Overloaded) when the limit is reached. Calls
    /// wait in arrival order; a deadline around the call still ends the wait first.
    pub fn max_wait(self, max_wait: Duration) -> Self {
        self.update(|s| s.max_wait = max_wait.min(crate::circuit::MAX_DURATION))
    }

    /// The most upstreams whose limits are kept (default 1,024; at least 1). Past it, idle
    /// limits are forgotten first; if none is idle, new upstreams share one limit.
    pub fn max_partitions(self, max: usize) -> Self {
        self.update(|s| s.max_partitions = max.max(1))
    }

    /// How calls are grouped under one limit (default [`Scope::Upstream`]).
    pub fn partition<Q: Partition>(self, partition: Q) -> ConcurrencyLayer<Q> {
        ConcurrencyLayer {
            registry: self.registry,
            partition,
        }
    }

    /// Whether the limit is fixed ([`fixed`](ConcurrencyLayer::fixed)) rather than adaptive:
    /// the setters of an adaptive limit ([`limits`](Self::limits),
    /// [`initial`](Self::initial), [`vegas`](Self::vegas)) do not change a fixed one.
    pub fn is_fixed(&self) -> bool {
        !Self::is_adaptive(&self.registry.settings)
    }

    /// The limit, calls in flight and calls in line of `key`'s upstream, when one is kept.
    pub fn limit_of(&self, key: &PartitionKey) -> Option<LimitState> {
        self.registry.state_of(key)
    }

    /// The figures of the limit shared by calls with no key ([`Scope::Global`], or a request
    /// with no authority).
    pub fn global_limit(&self) -> LimitState {
        self.registry.global()
    }

    /// The limits, for a call that drives them itself.
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

impl<S, P: Clone> Layer<S> for ConcurrencyLayer<P> {
    type Service = Concurrency<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Concurrency::new(inner, self.registry.clone(), self.partition.clone())
    }
}
