//! The hedge layer: its settings and the state its services share.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use tower_layer::Layer;

use super::{Hedge, HedgeStats, Settings, Shared};
use crate::partition::Scope;
use crate::retry::RetryBudget;

/// Sends a second copy of a slow attempt to the same upstream and takes the first answer. See
/// the [module docs](super) for when, how often, and what is never hedged.
///
/// | setting | default | out-of-range values |
/// |---|---|---|
/// | [`quantile`](Self::quantile) | 0.95 | clamped to 0.5–0.999 |
/// | [`over_median`](Self::over_median) | 1 | clamped to 1–100 |
/// | [`fallback_delay`](Self::fallback_delay) | 50 ms | clamped to the delay bounds |
/// | [`delay_bounds`](Self::delay_bounds) | 100 µs to 10 s | a maximum below the minimum is raised to it |
/// | [`min_samples`](Self::min_samples) | 20 | clamped to 1–10,000 |
/// | [`budget`](Self::budget) | 5 % of calls over 10 s | clamped to 0–1 |
/// | [`idempotency_header`](Self::idempotency_header) | `idempotency-key` | |
/// | [`partition`](Self::partition) | [`Scope::Upstream`] | |
///
/// Clones, and every service made from the layer, share each upstream's latencies, budget and
/// counters. The setters make a new state: set them before the layer is used.
#[derive(Clone)]
pub struct HedgeLayer {
    shared: Arc<Shared>,
    ratio: f32,
    window: Duration,
    scope: Scope,
}

impl fmt::Debug for HedgeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("settings", &self.shared.settings)
            .field("budget", &self.ratio)
            .field("window", &self.window)
            .field("scope", &self.scope)
            .finish()
    }
}

impl Default for HedgeLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl HedgeLayer {
    /// A hedge layer with the defaults in the table above.
    pub fn new() -> Self {
        Self::with(
            Settings::default(),
            0.05,
            Duration::from_secs(10),
            Scope::Upstream,
        )
    }

    fn with(settings: Settings, ratio: f32, window: Duration, scope: Scope) -> Self {
        let budget = RetryBudget::new()
            .ratio(ratio)
            .min_per_second(0)
            .window(window)
            .max_partitions(settings.max_partitions)
            .partition(scope);
        HedgeLayer {
            shared: Arc::new(Shared::new(settings, budget, scope)),
            ratio,
            window,
            scope,
        }
    }

    fn update(self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.shared.settings.clone();
        change(&mut settings);
        Self::with(settings, self.ratio, self.window, self.scope)
    }

    /// The quantile of recent successful latencies a copy waits for (default 0.95).
    pub fn quantile(self, quantile: f64) -> Self {
        self.update(|s| {
            if !quantile.is_nan() {
                s.quantile = quantile.clamp(0.5, 0.999);
            }
        })
    }

    /// The delay is at least this many times the upstream's median (default 1: the quantile
    /// alone). Raise it for an upstream whose usual spread is wide, where a copy sent while the
    /// first attempt is within that spread wins little; on a tight spread with rare stragglers
    /// (the case hedging is for) it only delays the copies that matter (docs/benchmarks.md).
    pub fn over_median(self, times: u32) -> Self {
        self.update(|s| s.over_median = times.clamp(1, 100))
    }

    /// The delay until the upstream has [`min_samples`](Self::min_samples) (default 50 ms).
    pub fn fallback_delay(self, delay: Duration) -> Self {
        self.update(|s| s.fallback = delay)
    }

    /// The shortest and longest delay (default 100 µs and 10 s); the fallback is held within
    /// them too.
    pub fn delay_bounds(self, min: Duration, max: Duration) -> Self {
        self.update(|s| {
            s.min_delay = min;
            s.max_delay = max.max(min);
        })
    }

    /// Successful attempts an upstream needs before its quantile replaces the fallback
    /// (default 20).
    pub fn min_samples(self, samples: u32) -> Self {
        self.update(|s| s.min_samples = samples.clamp(1, 10_000))
    }

    /// Hedges allowed per call, over the window (default 0.05: one per twenty calls, over 10 s).
    pub fn budget(self, ratio: f32) -> Self {
        let ratio = if ratio.is_nan() {
            self.ratio
        } else {
            ratio.clamp(0.0, 1.0)
        };
        Self::with(self.shared.settings.clone(), ratio, self.window, self.scope)
    }

    /// How long a call counts toward the budget (default 10 s; clamped to 1–60 s).
    pub fn budget_window(self, window: Duration) -> Self {
        Self::with(self.shared.settings.clone(), self.ratio, window, self.scope)
    }

    /// The header whose presence makes a write safe to send twice (default
    /// `idempotency-key`, the [`IdempotencyKeyLayer`](crate::IdempotencyKeyLayer)'s).
    pub fn idempotency_header(self, name: HeaderName) -> Self {
        self.update(|s| s.key_header = name)
    }

    /// One state per upstream ([`Scope::Upstream`], the default) or one for every call. The
    /// same scope again keeps the state (and the [`stats`](Self::stats) handles) as they are.
    pub fn partition(self, scope: Scope) -> Self {
        if scope == self.scope {
            return self;
        }
        Self::with(self.shared.settings.clone(), self.ratio, self.window, scope)
    }

    /// The most upstreams with state of their own (default 1,024); beyond it, new upstreams
    /// share one.
    pub fn max_partitions(self, max: usize) -> Self {
        self.update(|s| s.max_partitions = max)
    }

    /// The counters of every service made from this layer, per upstream and together.
    pub fn stats(&self) -> HedgeStats {
        HedgeStats::new(self.shared.clone())
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl<S> Layer<S> for HedgeLayer {
    type Service = Hedge<S>;

    fn layer(&self, inner: S) -> Hedge<S> {
        Hedge::new(inner, self.shared.clone())
    }
}
