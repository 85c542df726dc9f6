//! The retry budget: retries at most a share of calls, per upstream, so that an outage does not
//! multiply the load on an upstream that is already failing.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

use crate::partition::{PartitionKey, Scope};

/// Caps retries at a share of calls over a sliding window, per upstream — the model of
/// Finagle, Linkerd and Envoy, built on tower's [`TpsBudget`].
///
/// Every call deposits into its upstream's budget; every retry withdraws. A retry the budget
/// cannot pay for is not made: the retry layer returns the last response or error at once, and
/// counts it in [`RetryStats::budget_exhausted`](super::RetryStats::budget_exhausted). With the
/// defaults, over any 10 s window retries are at most 20 % of calls plus 5 per second (the
/// floor lets a quiet client still retry its rare failures). During an outage every call
/// becomes at most 1.2 attempts on average instead of 4.
///
/// Budgets are kept per upstream (scheme, host and port) by default, at most 1,024 of them;
/// beyond that, new upstreams share one budget. Clones share the budgets.
///
/// | setting | default | out-of-range values |
/// |---|---|---|
/// | [`ratio`](Self::ratio) | 0.2 | clamped to 0.0–1000.0; NaN keeps the current value |
/// | [`min_per_second`](Self::min_per_second) | 5 | clamped to 0–1,000,000 |
/// | [`window`](Self::window) | 10 s | clamped to 1–60 s |
/// | [`partition`](Self::partition) | [`Scope::Upstream`] | |
#[derive(Clone)]
pub struct RetryBudget {
    shared: Arc<Shared>,
    scope: Scope,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Settings {
    window: Duration,
    min_per_second: u32,
    ratio: f32,
    max_partitions: usize,
}

impl Settings {
    fn budget(&self) -> TpsBudget {
        // The values are clamped by the setters to what `TpsBudget::new` accepts.
        TpsBudget::new(self.window, self.min_per_second, self.ratio)
    }
}

struct Shared {
    settings: Settings,
    default: Arc<TpsBudget>,
    keyed: RwLock<HashMap<PartitionKey, Arc<TpsBudget>>>,
    exhausted: AtomicU64,
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("settings", &self.shared.settings)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryBudget {
    /// A budget with the defaults in the table above.
    pub fn new() -> Self {
        Self::with(Settings {
            window: Duration::from_secs(10),
            min_per_second: 5,
            ratio: 0.2,
            max_partitions: 1024,
        })
    }

    fn with(settings: Settings) -> Self {
        RetryBudget {
            scope: Scope::Upstream,
            shared: Arc::new(Shared {
                default: Arc::new(settings.budget()),
                settings,
                keyed: RwLock::new(HashMap::new()),
                exhausted: AtomicU64::new(0),
            }),
        }
    }

    fn update(self, f: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.shared.settings;
        f(&mut settings);
        RetryBudget {
            scope: self.scope,
            ..Self::with(settings)
        }
    }

    /// Retries allowed per call, over the window (default 0.2: one retry per five calls).
    pub fn ratio(self, ratio: f32) -> Self {
        self.update(|s| {
            if !ratio.is_nan() {
                s.ratio = ratio.clamp(0.0, 1000.0);
            }
        })
    }

    /// Retries allowed per second whatever the number of calls (default 5).
    pub fn min_per_second(self, retries: u32) -> Self {
        self.update(|s| s.min_per_second = retries.min(1_000_000))
    }

    /// How long a call counts toward the budget (default 10 s).
    pub fn window(self, window: Duration) -> Self {
        self.update(|s| s.window = window.clamp(Duration::from_secs(1), Duration::from_secs(60)))
    }

    /// One budget per upstream ([`Scope::Upstream`], the default) or one for every call
    /// ([`Scope::Global`]). The budgets stay shared with clones.
    pub fn partition(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// The most per-upstream budgets kept (default 1,024); beyond it, new upstreams share one.
    pub fn max_partitions(self, max: usize) -> Self {
        self.update(|s| s.max_partitions = max)
    }

    /// Retries refused because the budget was spent, by every service using this budget.
    pub fn exhausted(&self) -> u64 {
        self.shared.exhausted.load(Ordering::Relaxed)
    }

    /// The budget of this request's upstream, with the call deposited. The upstream, once
    /// worked out, is left in the request's extensions for the layers inside.
    pub(crate) fn deposit<B>(&self, request: &mut http::Request<B>) -> Arc<TpsBudget> {
        let budget = match crate::partition::key_of(&self.scope, request) {
            None => self.shared.default.clone(),
            Some(key) => {
                let budget = self.budget_of_key(&key);
                if self.scope == Scope::Upstream {
                    request
                        .extensions_mut()
                        .insert(crate::partition::UpstreamOf(key));
                }
                budget
            }
        };
        budget.deposit();
        budget
    }

    pub(crate) fn refused(&self) {
        self.shared.exhausted.fetch_add(1, Ordering::Relaxed);
    }

    fn budget_of_key(&self, key: &PartitionKey) -> Arc<TpsBudget> {
        let shared = &self.shared;
        if let Some(budget) = shared
            .keyed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return budget.clone();
        }
        let mut map = shared.keyed.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(budget) = map.get(key) {
            return budget.clone();
        }
        if map.len() >= shared.settings.max_partitions {
            return shared.default.clone();
        }
        let budget = Arc::new(shared.settings.budget());
        map.insert(key.clone(), budget.clone());
        budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> http::Request<()> {
        http::Request::get(uri).body(()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn budgets_are_per_upstream() {
        let budget = RetryBudget::new().min_per_second(0).ratio(0.5);
        let mut a = request("https://a.example/");
        let a_budget = budget.deposit(&mut a);
        budget.deposit(&mut request("https://a.example/"));
        let b_budget = budget.budget_of_key(&PartitionKey::from("https://b.example:443"));
        assert!(a
            .extensions()
            .get::<crate::partition::UpstreamOf>()
            .is_some());
        assert!(a_budget.withdraw(), "two calls pay for one retry at 50 %");
        assert!(!a_budget.withdraw());
        assert!(!b_budget.withdraw(), "b's budget is b's own");
    }

    #[test]
    fn out_of_range_settings_are_clamped_not_panics() {
        let budget = RetryBudget::new()
            .ratio(f32::INFINITY)
            .ratio(-1.0)
            .ratio(f32::NAN)
            .min_per_second(u32::MAX)
            .window(Duration::MAX)
            .window(Duration::ZERO);
        assert_eq!(budget.shared.settings.ratio, 0.0);
        assert_eq!(budget.shared.settings.window, Duration::from_secs(1));
    }
}
