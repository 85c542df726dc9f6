use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::store::{BucketStore, LocalStore};
use super::{Quota, QuotaError, Shared, Throttle, ThrottleStats};
use crate::partition::{Global, Partition};

/// Paces requests with a token bucket. See the [module docs](super).
///
/// Clones share one bucket store and one set of counters.
#[derive(Clone, Debug)]
pub struct ThrottleLayer<P = Global> {
    shared: Arc<Shared>,
    partition: P,
}

impl ThrottleLayer {
    /// `rate` requests per `per`, with a burst of `rate` and a `max_wait` of 30 s.
    ///
    /// A very long `per` (up to [`Duration::MAX`]) is accepted; see [`Quota::new`] for how it
    /// is bounded.
    ///
    /// # Panics
    ///
    /// When `rate` or `per` is zero; [`try_new`](Self::try_new) returns the error instead.
    pub fn new(rate: u32, per: Duration) -> Self {
        match Self::try_new(rate, per) {
            Ok(layer) => layer,
            Err(err) => panic!("{err}"),
        }
    }

    /// As [`new`](Self::new), with a typed error for a zero rate or period.
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroRate`] and [`QuotaError::ZeroPeriod`].
    pub fn try_new(rate: u32, per: Duration) -> Result<Self, QuotaError> {
        Ok(Self::with_quota(Quota::new(rate, per)?))
    }

    /// A throttle for this quota (a [`Quota`] is valid by construction).
    pub fn with_quota(quota: Quota) -> Self {
        let local = Arc::new(LocalStore::new());
        ThrottleLayer {
            shared: Arc::new(Shared {
                quota,
                max_wait: Duration::from_secs(30),
                max_wait_nanos: super::nanos(Duration::from_secs(30)),
                adaptive: true,
                store: local.clone(),
                local: Some(local),
                stats: ThrottleStats::default(),
                outstanding: Arc::default(),
            }),
            partition: Global,
        }
    }
}

impl<P> ThrottleLayer<P> {
    fn update(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        let shared = Arc::make_mut(&mut self.shared);
        f(shared);
        self
    }

    /// The most requests let through at once (default: the rate). Zero is raised to 1; any
    /// larger value is used as it is.
    pub fn burst(self, burst: u32) -> Self {
        self.update(|s| {
            s.quota = s.quota.with_burst(burst.max(1)).unwrap_or(s.quota);
        })
    }

    /// The longest a request waits for its slot (default 30 s). A request that would wait
    /// longer fails at once with `Kind::Throttled`, taking nothing.
    ///
    /// [`Duration::ZERO`] never waits: a request that cannot go at once fails at once. Waits are
    /// counted in nanoseconds in a `u64`, so anything over about 584 years (up to
    /// [`Duration::MAX`]) means "wait as long as it takes"; tokio's timer caps a single sleep
    /// on its own, so nothing overflows or panics.
    pub fn max_wait(self, wait: Duration) -> Self {
        self.update(|s| {
            s.max_wait = wait;
            s.max_wait_nanos = super::nanos(wait);
        })
    }

    /// Whether to adopt the server's remaining/reset view (default `true`).
    pub fn adaptive(self, adaptive: bool) -> Self {
        self.update(|s| s.adaptive = adaptive)
    }

    /// Keeps buckets in `store` instead of in this process (default [`LocalStore`]).
    pub fn store(self, store: impl BucketStore) -> Self {
        let store = Arc::new(store);
        // An in-process store's buckets can be held and used directly.
        let local = (Arc::clone(&store) as Arc<dyn std::any::Any + Send + Sync>)
            .downcast::<LocalStore>()
            .ok();
        self.update(|s| {
            s.store = store;
            s.local = local;
        })
    }

    /// Splits requests among buckets (default [`Global`]: one bucket).
    pub fn partition<P2: Partition>(self, partition: P2) -> ThrottleLayer<P2> {
        ThrottleLayer {
            shared: self.shared,
            partition,
        }
    }

    /// The quota.
    pub fn quota(&self) -> Quota {
        self.shared.quota
    }

    /// The counters of every service made by this layer and its clones.
    pub fn stats(&self) -> ThrottleStats {
        self.shared.stats.clone()
    }

    /// What every service of this layer shares, for a call that takes its slots itself.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl<S, P: Clone> Layer<S> for ThrottleLayer<P> {
    type Service = Throttle<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Throttle::new(inner, self.shared.clone(), self.partition.clone())
    }
}
