//! One section of settings, and how it is laid over a stack.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use super::duration;
use super::error::{ConfigError, ConfigErrorKind};
use crate::circuit::Window;
use crate::retry::{Jitter, RetryBudget};
use crate::{
    CircuitBreakerLayer, ConcurrencyLayer, HedgeLayer, Outbound, RetryAfterLayer, ThrottleLayer,
};

/// The longest duration any part accepts (longer ones would be lowered to it).
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
const UP_TO_A_YEAR: &str = "0s to 365 days";
const ABOVE_ZERO: &str = "above zero and at most 365 days; \"off\" for none";

/// One section of settings: the `defaults` of an [`OutboundConfig`](super::OutboundConfig),
/// or the settings of one of its `upstreams`. Every field is optional: a field left out keeps
/// what the stack it is laid over has ([`apply`](Self::apply)). Each maps to a setter of the
/// crate's layers, whose docs give the defaults; the ranges here are what those setters take
/// without lowering or raising anything.
///
/// | key | value | setter |
/// |---|---|---|
/// | `attempts` | 1 to 100 | [`RetryLayer::max_attempts`](crate::RetryLayer::max_attempts) |
/// | `base_delay`, `max_delay` | duration | [`RetryLayer::base_delay`](crate::RetryLayer::base_delay), [`max_delay`](crate::RetryLayer::max_delay) |
/// | `max_total_delay` | duration: the wait budget | [`RetryLayer::max_total_delay`](crate::RetryLayer::max_total_delay) |
/// | `max_retry_after`, `retry_after_jitter` | duration | [`RetryLayer::max_retry_after`](crate::RetryLayer::max_retry_after), [`retry_after_jitter`](crate::RetryLayer::retry_after_jitter) |
/// | `jitter` | `"full"`, `"equal"`, `"decorrelated"`, `"none"` | [`RetryLayer::jitter`](crate::RetryLayer::jitter) |
/// | `retry_non_idempotent` | bool | [`RetryLayer::retry_non_idempotent`](crate::RetryLayer::retry_non_idempotent) |
/// | `deadline`, `attempt_timeout` | duration above zero, or `"off"` | [`Outbound::deadline`], [`Outbound::attempt_timeout`] |
/// | `retry_budget` | `"off"` or [`BudgetSettings`] | [`Outbound::retry_budget`] |
/// | `breaker` | `"off"` or [`BreakerSettings`] | [`Outbound::circuit_breaker`] |
/// | `gate` | [`GateSettings`] | [`Outbound::gate`] |
/// | `concurrency` | `"off"`, `"adaptive"` or [`ConcurrencySettings`] | [`Outbound::concurrency`] |
/// | `throttle` | `"off"` or [`ThrottleSettings`] | [`Outbound::throttle`] |
/// | `hedge` | `"off"` or [`HedgeSettings`] | [`Outbound::hedge`] |
///
/// Durations are text with a unit: `"250ms"`, `"15m"`, `"1h30m"`, `"1.5s"` (up to 365 days,
/// `"8760h"`); a plain number is refused, with a message saying to add a unit. Unknown keys
/// are refused, naming the key.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Settings {
    /// Attempts in all, the first included: 1 (no retry) to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The ceiling of the first backoff delay, doubled on each retry.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub base_delay: Option<Duration>,
    /// The cap on any one backoff delay.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_delay: Option<Duration>,
    /// The wait budget: the time one call may spend waiting between attempts.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_total_delay: Option<Duration>,
    /// The longest server-requested wait slept on.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_retry_after: Option<Duration>,
    /// The most random time added to a server-requested wait.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_after_jitter: Option<Duration>,
    /// How backoff delays are randomised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Jitter>,
    /// Whether POST and PATCH are retried without an idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_non_idempotent: Option<bool>,
    /// The deadline of one call, attempts and waits together; `Some(None)` is `"off"`.
    #[serde(
        default,
        with = "duration::or_off",
        skip_serializing_if = "Option::is_none"
    )]
    pub deadline: Option<Option<Duration>>,
    /// The time limit of one attempt; `Some(None)` is `"off"`.
    #[serde(
        default,
        with = "duration::or_off",
        skip_serializing_if = "Option::is_none"
    )]
    pub attempt_timeout: Option<Option<Duration>>,
    /// The retry budget; `Some(None)` is `"off"`.
    #[serde(
        default,
        with = "duration::table_or_off",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_budget: Option<Option<BudgetSettings>>,
    /// The circuit breaker; `Some(None)` is `"off"`.
    #[serde(
        default,
        with = "duration::table_or_off",
        skip_serializing_if = "Option::is_none"
    )]
    pub breaker: Option<Option<BreakerSettings>>,
    /// The Retry-After gate (always on: `max_pause = "0s"` lets no server close it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateSettings>,
    /// The concurrency limit; `Some(None)` is `"off"`, and `"adaptive"` reads as a table with
    /// `limit = "adaptive"` only.
    #[serde(
        default,
        with = "concurrency_or_off",
        skip_serializing_if = "Option::is_none"
    )]
    pub concurrency: Option<Option<ConcurrencySettings>>,
    /// The throttle; `Some(None)` is `"off"`.
    #[serde(
        default,
        with = "duration::table_or_off",
        skip_serializing_if = "Option::is_none"
    )]
    pub throttle: Option<Option<ThrottleSettings>>,
    /// Hedging of slow attempts; `Some(None)` is `"off"`.
    #[serde(
        default,
        with = "duration::table_or_off",
        skip_serializing_if = "Option::is_none"
    )]
    pub hedge: Option<Option<HedgeSettings>>,
}

/// Hedging ([`HedgeLayer`]): a second copy of an attempt that is slower than its upstream's
/// usual. Keys left out keep the stack's hedge layer's settings, or [`HedgeLayer::new`]'s.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HedgeSettings {
    /// The quantile of recent successful latencies a copy waits for, 0.5 to 0.999
    /// ([`HedgeLayer::quantile`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantile: Option<f64>,
    /// The delay is at least this many times the median, 1 to 100
    /// ([`HedgeLayer::over_median`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over_median: Option<u32>,
    /// The delay until the upstream has enough samples ([`HedgeLayer::fallback_delay`]).
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub fallback_delay: Option<Duration>,
    /// Samples an upstream needs before its quantile serves, 1 to 10,000
    /// ([`HedgeLayer::min_samples`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u32>,
    /// Hedges allowed per call over 10 s, 0 to 1 ([`HedgeLayer::budget`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<f64>,
}

impl HedgeSettings {
    fn check(&self) -> Result<(), ConfigError> {
        if let Some(q) = self.quantile {
            within("quantile", q, 0.5, 0.999, "0.5 to 0.999")?;
        }
        if let Some(n) = self.over_median {
            within("over_median", n, 1, 100, "1 to 100")?;
        }
        if let Some(n) = self.min_samples {
            within("min_samples", n, 1, 10_000, "1 to 10000")?;
        }
        if let Some(budget) = self.budget {
            within("budget", budget, 0.0, 1.0, "0 to 1")?;
        }
        up_to_a_year("fallback_delay", self.fallback_delay)
    }

    fn apply(&self, base: Option<&HedgeLayer>) -> HedgeLayer {
        let mut layer = base.cloned().unwrap_or_default();
        if let Some(q) = self.quantile {
            layer = layer.quantile(q);
        }
        if let Some(n) = self.over_median {
            layer = layer.over_median(n);
        }
        if let Some(d) = self.fallback_delay {
            layer = layer.fallback_delay(d);
        }
        if let Some(n) = self.min_samples {
            layer = layer.min_samples(n);
        }
        if let Some(budget) = self.budget {
            layer = layer.budget(budget as f32);
        }
        layer
    }
}

/// The retry budget ([`RetryBudget`]): retries allowed over a window, per upstream.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BudgetSettings {
    /// Retries allowed per call over the window, 0 to 1,000 ([`RetryBudget::ratio`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Retries allowed per second whatever the calls, 0 to 1,000,000
    /// ([`RetryBudget::min_per_second`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<u32>,
    /// How long a call counts toward the budget, 1 s to 60 s ([`RetryBudget::window`]).
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub window: Option<Duration>,
}

/// The circuit breaker ([`CircuitBreakerLayer`]). A table laid over a stack without a breaker
/// starts from [`CircuitBreakerLayer::new`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BreakerSettings {
    /// The failure rate over the window at which the circuit opens, 0 to 1
    /// ([`CircuitBreakerLayer::failure_rate_threshold`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
    /// Calls the window must hold before the circuit may open, 1 to 10,000
    /// ([`CircuitBreakerLayer::minimum_calls`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_calls: Option<u32>,
    /// A window of the last this many calls, 1 to 10,000 ([`Window::Count`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_calls: Option<u32>,
    /// A window of the calls of this last time, above zero ([`Window::Time`]; not with
    /// `window_calls`).
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub window_length: Option<Duration>,
    /// The slices a time window is kept in, 1 to 1,000 (default 10; only with
    /// `window_length`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_buckets: Option<u32>,
    /// How long the circuit stays open the first time it trips
    /// ([`CircuitBreakerLayer::open_duration`]).
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub open_duration: Option<Duration>,
    /// The factor the open time grows by when it trips again soon, 1 to 1,000; given with
    /// `max_open_duration` ([`CircuitBreakerLayer::open_backoff`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_backoff_factor: Option<f64>,
    /// The cap of the open time; given with `open_backoff_factor`.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_open_duration: Option<Duration>,
    /// How long a call may wait for an open circuit ([`CircuitBreakerLayer::max_wait`]).
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_wait: Option<Duration>,
    /// Probe calls let through while half-open, 1 to 1,000
    /// ([`CircuitBreakerLayer::half_open_probes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_probes: Option<u32>,
    /// A call longer than this is slow; given with `slow_call_rate`
    /// ([`CircuitBreakerLayer::slow_call`]).
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub slow_call_duration: Option<Duration>,
    /// The rate of slow calls at which the circuit opens, 0 to 1; given with
    /// `slow_call_duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_call_rate: Option<f64>,
}

/// The Retry-After gate ([`RetryAfterLayer`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct GateSettings {
    /// The longest a call waits at a closed gate ([`RetryAfterLayer::max_wait`]).
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_wait: Option<Duration>,
    /// The longest a server can close the gate ([`RetryAfterLayer::max_pause`]).
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_pause: Option<Duration>,
    /// Held calls let go at once when the gate opens, at least 1
    /// ([`RetryAfterLayer::release`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<u32>,
}

/// The concurrency limit ([`ConcurrencyLayer`]).
///
/// | `limit` | the limit |
/// |---|---|
/// | left out | the stack's own, tuned by the other keys (a stack without one: a new adaptive one); the adaptive keys are refused when the stack's is fixed |
/// | `"adaptive"` (also `concurrency = "adaptive"`) | the stack's own when it is adaptive, else a new one ([`ConcurrencyLayer::adaptive`]: AIMD from 20 within 1 to 1,000, 30 s in line) |
/// | `"vegas"` | as `"adaptive"`, moved by TCP Vegas ([`ConcurrencyLayer::vegas`]) |
/// | a number, 1 to 100,000 | a new fixed limit of that many calls in flight ([`ConcurrencyLayer::fixed`], 30 s in line); the adaptive keys are refused |
///
/// The adaptive keys are `min` and `max` (given together), `initial`, `backoff` and
/// `latency_tolerance`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ConcurrencySettings {
    /// Which limit (see the table above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitKind>,
    /// Where an adaptive limit starts, 1 to 100,000, within `min` and `max`
    /// ([`ConcurrencyLayer::initial`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<u32>,
    /// The lowest an adaptive limit goes, 1 to 100,000; given with `max`
    /// ([`ConcurrencyLayer::limits`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    /// The highest an adaptive limit goes, `min` to 100,000; given with `min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// The factor a loss multiplies an adaptive limit by, 0.01 to 0.99
    /// ([`ConcurrencyLayer::backoff`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<f64>,
    /// Latency over the baseline times this is a loss, 1.1 to 100, or `"off"` (`Some(None)`)
    /// ([`ConcurrencyLayer::latency_tolerance`]).
    #[serde(
        default,
        with = "duration::number_or_off",
        skip_serializing_if = "Option::is_none"
    )]
    pub latency_tolerance: Option<Option<f64>>,
    /// How long a call may wait in line for a place ([`ConcurrencyLayer::max_wait`]).
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_wait: Option<Duration>,
}

/// Which concurrency limit a [`ConcurrencySettings`] names: `"adaptive"`, `"vegas"` or a
/// number (a fixed limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// An adaptive limit, AIMD unless the stack's own moves by Vegas.
    Adaptive,
    /// An adaptive limit moved by TCP Vegas.
    Vegas,
    /// A fixed limit of this many calls in flight.
    Fixed(u32),
}

/// The throttle ([`ThrottleLayer`]): a token bucket per upstream. A throttle has no default
/// rate, so `rate` and `per` are required, and the table makes a new throttle (an in-process
/// bucket per upstream) whatever the stack had.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ThrottleSettings {
    /// Requests per `per`, at least 1.
    pub rate: u32,
    /// The period of the rate, above zero.
    #[serde(with = "required_duration")]
    pub per: Duration,
    /// The most requests let through at once, at least 1 (default: the rate;
    /// [`ThrottleLayer::burst`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// The longest a request waits for its slot (default 30 s; [`ThrottleLayer::max_wait`]).
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_wait: Option<Duration>,
    /// Whether to adopt the server's remaining/reset view (default `true`;
    /// [`ThrottleLayer::adaptive`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<bool>,
}

impl ThrottleSettings {
    /// `rate` requests per `per`, the other keys left out.
    pub fn new(rate: u32, per: Duration) -> Self {
        ThrottleSettings {
            rate,
            per,
            burst: None,
            max_wait: None,
            adaptive: None,
        }
    }
}

impl Settings {
    /// Lays these settings over `outbound`: each key given replaces that setting, each key
    /// left out keeps `outbound`'s (its preset's, or what the code set). The parts keep
    /// `outbound`'s partition. A part turned on here that `outbound` does not have starts
    /// from its layer's defaults (a throttle always starts anew: see
    /// [`ThrottleSettings`]); a part whose settings change gets state of its own, as a
    /// layer's setters do.
    ///
    /// Every value is checked before anything is changed.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the key (`breaker.failure_rate`) for a value out of its range
    /// or settings that do not go together.
    pub fn apply(&self, outbound: Outbound) -> Result<Outbound, ConfigError> {
        self.check()?;
        let mut outbound = outbound;
        if self.touches_retry() {
            let retry = self.retry_layer(outbound.retry_layer().clone());
            outbound = outbound.retry(retry);
        }
        if let Some(deadline) = self.deadline {
            outbound = outbound.deadline(deadline);
        }
        if let Some(timeout) = self.attempt_timeout {
            outbound = outbound.attempt_timeout(timeout);
        }
        if let Some(budget) = &self.retry_budget {
            let budget = budget
                .as_ref()
                .map(|b| b.apply(outbound.budget().cloned().unwrap_or_default()));
            outbound = outbound.retry_budget(budget);
        }
        if let Some(breaker) = &self.breaker {
            let breaker = breaker.as_ref().map(|b| {
                let base = outbound.circuit_breaker_layer().cloned();
                b.apply(
                    base.unwrap_or_else(|| crate::outbound::watched(CircuitBreakerLayer::new())),
                )
            });
            outbound = outbound.circuit_breaker(breaker);
        }
        if let Some(gate) = &self.gate {
            let layer = gate.apply(outbound.gate_layer().clone());
            outbound = outbound.gate(layer);
        }
        if let Some(concurrency) = &self.concurrency {
            let limit = match concurrency {
                Some(c) => Some(c.apply(outbound.concurrency_layer())?),
                None => None,
            };
            outbound = outbound.concurrency(limit);
        }
        if let Some(throttle) = &self.throttle {
            let layer = match throttle {
                Some(t) => Some(t.layer()?),
                None => None,
            };
            outbound = outbound.throttle(layer);
        }
        if let Some(hedge) = &self.hedge {
            let layer = hedge.as_ref().map(|h| h.apply(outbound.hedge_layer()));
            outbound = outbound.hedge(layer);
        }
        Ok(outbound)
    }

    fn touches_retry(&self) -> bool {
        self.attempts.is_some()
            || self.base_delay.is_some()
            || self.max_delay.is_some()
            || self.max_total_delay.is_some()
            || self.max_retry_after.is_some()
            || self.retry_after_jitter.is_some()
            || self.jitter.is_some()
            || self.retry_non_idempotent.is_some()
    }

    fn retry_layer(&self, mut retry: crate::RetryLayer) -> crate::RetryLayer {
        if let Some(attempts) = self.attempts {
            retry = retry.max_attempts(attempts);
        }
        if let Some(delay) = self.base_delay {
            retry = retry.base_delay(delay);
        }
        if let Some(delay) = self.max_delay {
            retry = retry.max_delay(delay);
        }
        if let Some(budget) = self.max_total_delay {
            retry = retry.max_total_delay(budget);
        }
        if let Some(wait) = self.max_retry_after {
            retry = retry.max_retry_after(wait);
        }
        if let Some(jitter) = self.retry_after_jitter {
            retry = retry.retry_after_jitter(jitter);
        }
        if let Some(jitter) = self.jitter {
            retry = retry.jitter(jitter);
        }
        if let Some(yes) = self.retry_non_idempotent {
            retry = retry.retry_non_idempotent(yes);
        }
        retry
    }

    /// Every value against its range, and the pairs.
    fn check(&self) -> Result<(), ConfigError> {
        if let Some(n) = self.attempts {
            within("attempts", n, 1, 100, "1 to 100")?;
        }
        for (key, value) in [
            ("base_delay", self.base_delay),
            ("max_delay", self.max_delay),
            ("max_total_delay", self.max_total_delay),
            ("max_retry_after", self.max_retry_after),
            ("retry_after_jitter", self.retry_after_jitter),
        ] {
            up_to_a_year(key, value)?;
        }
        for (key, value) in [
            ("deadline", self.deadline),
            ("attempt_timeout", self.attempt_timeout),
        ] {
            if let Some(Some(d)) = value {
                if d.is_zero() || d > YEAR {
                    return Err(ConfigError::out_of_range(
                        key,
                        duration::format(d),
                        ABOVE_ZERO,
                    ));
                }
            }
        }
        if let Some(Some(budget)) = &self.retry_budget {
            budget.check().map_err(|e| e.within("retry_budget"))?;
        }
        if let Some(Some(breaker)) = &self.breaker {
            breaker.check().map_err(|e| e.within("breaker"))?;
        }
        if let Some(gate) = &self.gate {
            gate.check().map_err(|e| e.within("gate"))?;
        }
        if let Some(Some(concurrency)) = &self.concurrency {
            concurrency.check().map_err(|e| e.within("concurrency"))?;
        }
        if let Some(Some(throttle)) = &self.throttle {
            throttle.check().map_err(|e| e.within("throttle"))?;
        }
        if let Some(Some(hedge)) = &self.hedge {
            hedge.check().map_err(|e| e.within("hedge"))?;
        }
        Ok(())
    }
}

impl BudgetSettings {
    fn check(&self) -> Result<(), ConfigError> {
        if let Some(ratio) = self.ratio {
            within("ratio", ratio, 0.0, 1000.0, "0 to 1000")?;
        }
        if let Some(n) = self.min_per_second {
            within("min_per_second", n, 0, 1_000_000, "0 to 1000000")?;
        }
        if let Some(window) = self.window {
            if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&window) {
                return Err(ConfigError::out_of_range(
                    "window",
                    duration::format(window),
                    "1s to 60s",
                ));
            }
        }
        Ok(())
    }

    fn apply(&self, mut budget: RetryBudget) -> RetryBudget {
        if let Some(ratio) = self.ratio {
            budget = budget.ratio(ratio as f32);
        }
        if let Some(n) = self.min_per_second {
            budget = budget.min_per_second(n);
        }
        if let Some(window) = self.window {
            budget = budget.window(window);
        }
        budget
    }
}

impl BreakerSettings {
    fn check(&self) -> Result<(), ConfigError> {
        if let Some(rate) = self.failure_rate {
            within("failure_rate", rate, 0.0, 1.0, "0 to 1")?;
        }
        if let Some(n) = self.minimum_calls {
            within("minimum_calls", n, 1, 10_000, "1 to 10000")?;
        }
        if let Some(n) = self.window_calls {
            within("window_calls", n, 1, 10_000, "1 to 10000")?;
            if self.window_length.is_some() {
                return Err(conflict(
                    "window_length",
                    "a window is of calls (window_calls) or of time (window_length), not both",
                ));
            }
        }
        if let Some(length) = self.window_length {
            if length.is_zero() || length > YEAR {
                return Err(ConfigError::out_of_range(
                    "window_length",
                    duration::format(length),
                    "above zero and at most 365 days",
                ));
            }
        }
        if let Some(n) = self.window_buckets {
            within("window_buckets", n, 1, 1000, "1 to 1000")?;
            if self.window_length.is_none() {
                return Err(conflict(
                    "window_buckets",
                    "only for a window of time: give window_length too",
                ));
            }
        }
        for (key, value) in [
            ("open_duration", self.open_duration),
            ("max_open_duration", self.max_open_duration),
            ("max_wait", self.max_wait),
            ("slow_call_duration", self.slow_call_duration),
        ] {
            up_to_a_year(key, value)?;
        }
        if let Some(factor) = self.open_backoff_factor {
            within("open_backoff_factor", factor, 1.0, 1000.0, "1 to 1000")?;
        }
        pair(
            ("open_backoff_factor", self.open_backoff_factor.is_some()),
            ("max_open_duration", self.max_open_duration.is_some()),
        )?;
        if let Some(n) = self.half_open_probes {
            within("half_open_probes", n, 1, 1000, "1 to 1000")?;
        }
        if let Some(rate) = self.slow_call_rate {
            within("slow_call_rate", rate, 0.0, 1.0, "0 to 1")?;
        }
        pair(
            ("slow_call_duration", self.slow_call_duration.is_some()),
            ("slow_call_rate", self.slow_call_rate.is_some()),
        )
    }

    fn apply(&self, mut breaker: CircuitBreakerLayer) -> CircuitBreakerLayer {
        if let Some(rate) = self.failure_rate {
            breaker = breaker.failure_rate_threshold(rate as f32);
        }
        if let Some(n) = self.minimum_calls {
            breaker = breaker.minimum_calls(n);
        }
        if let Some(n) = self.window_calls {
            breaker = breaker.window(Window::Count(n));
        }
        if let Some(length) = self.window_length {
            let buckets = self.window_buckets.unwrap_or(10);
            breaker = breaker.window(Window::Time { length, buckets });
        }
        if let Some(open) = self.open_duration {
            breaker = breaker.open_duration(open);
        }
        if let (Some(factor), Some(max)) = (self.open_backoff_factor, self.max_open_duration) {
            breaker = breaker.open_backoff(factor as f32, max);
        }
        if let Some(patience) = self.max_wait {
            breaker = breaker.max_wait(patience);
        }
        if let Some(probes) = self.half_open_probes {
            breaker = breaker.half_open_probes(probes);
        }
        if let (Some(duration), Some(rate)) = (self.slow_call_duration, self.slow_call_rate) {
            breaker = breaker.slow_call(duration, rate as f32);
        }
        breaker
    }
}

impl GateSettings {
    fn check(&self) -> Result<(), ConfigError> {
        up_to_a_year("max_wait", self.max_wait)?;
        up_to_a_year("max_pause", self.max_pause)?;
        if let Some(n) = self.release {
            within("release", n, 1, u32::MAX, "at least 1")?;
        }
        Ok(())
    }

    fn apply(&self, mut gate: RetryAfterLayer) -> RetryAfterLayer {
        if let Some(wait) = self.max_wait {
            gate = gate.max_wait(wait);
        }
        if let Some(pause) = self.max_pause {
            gate = gate.max_pause(pause);
        }
        if let Some(first) = self.release {
            gate = gate.release(first);
        }
        gate
    }
}

impl ConcurrencySettings {
    /// The first adaptive key given, if any.
    fn adaptive_key(&self) -> Option<&'static str> {
        [
            ("initial", self.initial.is_some()),
            ("min", self.min.is_some()),
            ("max", self.max.is_some()),
            ("backoff", self.backoff.is_some()),
            ("latency_tolerance", self.latency_tolerance.is_some()),
        ]
        .into_iter()
        .find_map(|(key, given)| given.then_some(key))
    }

    fn check(&self) -> Result<(), ConfigError> {
        const LIMIT: &str = "1 to 100000";
        if let Some(LimitKind::Fixed(n)) = self.limit {
            within("limit", n, 1, 100_000, LIMIT)?;
            if let Some(key) = self.adaptive_key() {
                return Err(conflict(key, "only for an adaptive limit, not a fixed one"));
            }
        }
        for (key, value) in [
            ("initial", self.initial),
            ("min", self.min),
            ("max", self.max),
        ] {
            if let Some(n) = value {
                within(key, n, 1, 100_000, LIMIT)?;
            }
        }
        pair(("min", self.min.is_some()), ("max", self.max.is_some()))?;
        if let (Some(min), Some(max)) = (self.min, self.max) {
            if max < min {
                return Err(ConfigError::out_of_range(
                    "max",
                    max,
                    &format!("min ({min}) to 100000"),
                ));
            }
            if let Some(initial) = self.initial {
                if !(min..=max).contains(&initial) {
                    return Err(ConfigError::out_of_range(
                        "initial",
                        initial,
                        &format!("min to max: {min} to {max}"),
                    ));
                }
            }
        }
        if let Some(factor) = self.backoff {
            within("backoff", factor, 0.01, 0.99, "0.01 to 0.99")?;
        }
        if let Some(Some(tolerance)) = self.latency_tolerance {
            within(
                "latency_tolerance",
                tolerance,
                1.1,
                100.0,
                "1.1 to 100, or \"off\"",
            )?;
        }
        up_to_a_year("max_wait", self.max_wait)
    }

    /// The limit these settings make over `base`, the stack's.
    fn apply(&self, base: Option<&ConcurrencyLayer>) -> Result<ConcurrencyLayer, ConfigError> {
        let adaptive_base = || match base {
            Some(limit) if !limit.is_fixed() => limit.clone(),
            _ => ConcurrencyLayer::adaptive(),
        };
        let mut limit = match self.limit {
            Some(LimitKind::Fixed(n)) => ConcurrencyLayer::fixed(n),
            Some(LimitKind::Adaptive) => adaptive_base(),
            Some(LimitKind::Vegas) => adaptive_base().vegas(),
            None => match base {
                Some(limit) if limit.is_fixed() => {
                    if let Some(key) = self.adaptive_key() {
                        return Err(conflict(
                            key,
                            "the stack's limit is fixed: give limit = \"adaptive\" for an \
                             adaptive one",
                        )
                        .within("concurrency"));
                    }
                    limit.clone()
                }
                _ => adaptive_base(),
            },
        };
        if let (Some(min), Some(max)) = (self.min, self.max) {
            limit = limit.limits(min, max);
        }
        if let Some(initial) = self.initial {
            limit = limit.initial(initial);
        }
        if let Some(factor) = self.backoff {
            limit = limit.backoff(factor);
        }
        if let Some(tolerance) = self.latency_tolerance {
            limit = limit.latency_tolerance(tolerance);
        }
        if let Some(wait) = self.max_wait {
            limit = limit.max_wait(wait);
        }
        Ok(limit)
    }
}

impl ThrottleSettings {
    fn check(&self) -> Result<(), ConfigError> {
        within("rate", self.rate, 1, u32::MAX, "at least 1")?;
        if self.per.is_zero() || self.per > YEAR {
            return Err(ConfigError::out_of_range(
                "per",
                duration::format(self.per),
                "above zero and at most 365 days",
            ));
        }
        if let Some(n) = self.burst {
            within("burst", n, 1, u32::MAX, "at least 1")?;
        }
        up_to_a_year("max_wait", self.max_wait)
    }

    fn layer(&self) -> Result<ThrottleLayer, ConfigError> {
        let mut layer = ThrottleLayer::try_new(self.rate, self.per).map_err(|e| {
            ConfigError::new("throttle", ConfigErrorKind::OutOfRange, e.to_string())
        })?;
        if let Some(burst) = self.burst {
            layer = layer.burst(burst);
        }
        if let Some(wait) = self.max_wait {
            layer = layer.max_wait(wait);
        }
        if let Some(adaptive) = self.adaptive {
            layer = layer.adaptive(adaptive);
        }
        Ok(layer)
    }
}

/// Refuses `value` outside `lo..=hi` (NaN included), saying the range as `range`.
fn within<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    lo: T,
    hi: T,
    range: &str,
) -> Result<(), ConfigError> {
    match lo <= value && value <= hi {
        true => Ok(()),
        false => Err(ConfigError::out_of_range(key, value, range)),
    }
}

fn up_to_a_year(key: &str, value: Option<Duration>) -> Result<(), ConfigError> {
    match value {
        Some(d) if d > YEAR => Err(ConfigError::out_of_range(
            key,
            duration::format(d),
            UP_TO_A_YEAR,
        )),
        _ => Ok(()),
    }
}

fn conflict(key: &str, message: &str) -> ConfigError {
    ConfigError::new(key, ConfigErrorKind::Conflict, message)
}

/// Refuses one of a pair of keys given without the other.
fn pair(a: (&str, bool), b: (&str, bool)) -> Result<(), ConfigError> {
    let (given, missing) = match (a.1, b.1) {
        (true, false) => (a.0, b.0),
        (false, true) => (b.0, a.0),
        _ => return Ok(()),
    };
    Err(conflict(
        given,
        &format!("given without {missing}: the two go together"),
    ))
}

/// A required duration field.
mod required_duration {
    use super::*;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        duration::option::deserialize(deserializer)?
            .ok_or_else(|| de::Error::custom("a duration is required"))
    }

    pub(super) fn serialize<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&duration::format(*value))
    }
}

impl<'de> Deserialize<'de> for LimitKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KindVisitor;

        impl Visitor<'_> for KindVisitor {
            type Value = LimitKind;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"adaptive\", \"vegas\" or a number of calls in flight")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<LimitKind, E> {
                match text {
                    "adaptive" => Ok(LimitKind::Adaptive),
                    "vegas" => Ok(LimitKind::Vegas),
                    _ => Err(E::invalid_value(de::Unexpected::Str(text), &self)),
                }
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<LimitKind, E> {
                u32::try_from(n)
                    .map(LimitKind::Fixed)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(n), &"1 to 100000"))
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<LimitKind, E> {
                u32::try_from(n)
                    .map(LimitKind::Fixed)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &"1 to 100000"))
            }
        }

        deserializer.deserialize_any(KindVisitor)
    }
}

impl Serialize for LimitKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            LimitKind::Adaptive => serializer.serialize_str("adaptive"),
            LimitKind::Vegas => serializer.serialize_str("vegas"),
            LimitKind::Fixed(n) => serializer.serialize_u32(*n),
        }
    }
}

/// The `concurrency` key: `"off"`, `"adaptive"` or a table.
mod concurrency_or_off {
    use super::*;

    struct ConcurrencyVisitor;

    impl<'de> Visitor<'de> for ConcurrencyVisitor {
        type Value = Option<ConcurrencySettings>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("\"off\", \"adaptive\" or a table of settings")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            match text {
                "off" => Ok(None),
                "adaptive" => Ok(Some(ConcurrencySettings {
                    limit: Some(LimitKind::Adaptive),
                    ..ConcurrencySettings::default()
                })),
                _ => Err(E::invalid_value(de::Unexpected::Str(text), &self)),
            }
        }

        fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
            ConcurrencySettings::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<ConcurrencySettings>>, D::Error> {
        deserializer.deserialize_any(ConcurrencyVisitor).map(Some)
    }

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Option<ConcurrencySettings>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        duration::table_or_off::serialize(value, serializer)
    }
}
