//! Meters and spans for the five signals to alert on (feature `metrics`).
//!
//! The layers record through the [`metrics`](https://docs.rs/metrics) facade, the standard of
//! the Rust ecosystem: install any exporter (Prometheus, StatsD, OpenTelemetry) in the
//! application and the series appear; the crate installs none. With no recorder installed, a
//! call costs a few relaxed atomic operations and two clock reads more: handles are registered
//! once per upstream and label set, and reused.
//!
//! With the feature on, [`Outbound`](crate::Outbound) puts [`CallMetricsLayer`] outermost (just
//! inside the idempotency-key layer) and [`AttemptMetricsLayer`] just inside the retry layer,
//! watches the breakers of its presets with [`record_circuit_change`] and meters the dead-letter
//! sink of [`Outbound::background`](crate::Outbound::background) with [`MeteredSink`]. A
//! breaker or a sink given to `Outbound` by the application is used as given: wrap it with
//! [`watch`] and [`MeteredSink::new`] to export it too.
//!
//! | name | type | labels | meaning |
//! |------|------|--------|---------|
//! | `outbound_calls_total` | counter | `upstream`, `method`, `outcome` | logical calls ended: `success`, `success_after_retry`, `failed` (an error, or a final response that is not a success), `refused` (throttle, gate or open circuit) |
//! | `outbound_call_duration_seconds` | histogram | `upstream` | whole call, attempts and waits together |
//! | `outbound_retries_total` | counter | `upstream` | attempts after the first |
//! | `outbound_calls_retried_total` | counter | `upstream` | calls that took more than one attempt |
//! | `outbound_retry_wait_seconds` | histogram | `upstream` | time slept between attempts of one call (backoff and server-named waits), for calls that slept |
//! | `outbound_attempts_total` | counter | `upstream`, `reason` | attempts: `ok`, `429`, `5xx`, `4xx`, `timeout`, `transport`, `refused`, `body` |
//! | `outbound_attempt_duration_seconds` | histogram | `upstream` | one attempt, gate and throttle waits included |
//! | `outbound_refusals_total` | counter | `upstream`, `kind` | attempts refused before the upstream: `throttle`, `gate`, `circuit`, `concurrency` |
//! | `outbound_circuit_state` | gauge | `upstream` | 0 closed, 1 half-open, 2 open |
//! | `outbound_concurrency_limit` | gauge | `upstream` | the concurrency limit ([`ConcurrencyLayer`](crate::ConcurrencyLayer)) |
//! | `outbound_in_flight` | gauge | `upstream` | calls holding a place under the concurrency limit |
//! | `outbound_concurrency_queued` | gauge | `upstream` | calls waiting in line for a place |
//! | `outbound_circuit_transitions_total` | counter | `upstream`, `from`, `to` | breaker state changes (`closed`, `half_open`, `open`) |
//! | `outbound_dead_letters_written_total` | counter | `sink` | letters stored |
//! | `outbound_dead_letters_write_failures_total` | counter | `sink` | letters the sink failed to store |
//! | `outbound_dead_letters_removed_total` | counter | `sink` | letters removed (replayed and delivered, or superseded) |
//! | `outbound_dead_letters_replayed_total` | counter | `upstream`, `outcome` | replays sent: `delivered`, `failed` |
//! | `outbound_dead_letters_depth` | gauge | `sink` | letters kept |
//! | `outbound_dead_letters_oldest_timestamp_seconds` | gauge | `sink` | Unix time of the oldest letter's first attempt (0 when empty) |
//! | `outbound_dead_letters_oldest_age_seconds` | gauge | `sink` | its age at the last write, remove or refresh |
//!
//! `upstream` is `scheme://host:port` ([`ByUpstream`](crate::partition::ByUpstream)), never a
//! path, a query or userinfo. After [`max_upstreams`] distinct upstreams (default 100, for the
//! process), new ones share the value `other`; a relative URI is `none`. Durations are in
//! seconds; [`DURATION_BUCKETS`] suits them for exporters that need buckets.
//!
//! Each call also runs in one `INFO` span, `outbound.call`, with OpenTelemetry HTTP client
//! field names (`http.request.method`, `server.address`, `server.port`, `url.full` redacted by
//! [`redact::uri`](crate::redact::uri), `http.response.status_code`,
//! `http.request.resend_count`, `error.type`, and `otel.name`, `otel.kind`,
//! `otel.status_code` for `tracing-opentelemetry`) plus `retry.wait_ms`; each attempt is a
//! `DEBUG` event in it with `retry.reason`, the status or `error.type`, the resend count and,
//! for refusals, `retry.wait_ms` and `circuit.state`.
//!
//! `docs/operability.md` gives the query of each signal, alerting rules and a runbook; for a
//! final report, [`Signals::snapshot`] reads the same figures in process.
//!
//! # Example
//!
//! ```
//! use http::{Request, Response};
//! use tower::ServiceExt;
//! use tower_outbound::body::ReplayBody;
//! use tower_outbound::metrics::Signals;
//! use tower_outbound::Outbound;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_outbound::Error> {
//! // Install an exporter first, e.g. metrics_exporter_prometheus::PrometheusBuilder.
//! let upstream = tower::service_fn(|_req: Request<ReplayBody>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new("ok"))
//! });
//! let client = Outbound::new().service(upstream);
//! client.oneshot(Request::get("http://doc-example.test/a").body(String::new()).unwrap()).await?;
//!
//! let signals = Signals::snapshot();
//! let row = signals.upstream("http://doc-example.test:80").unwrap();
//! assert_eq!((row.calls, row.successes), (1, 1));
//! println!("{signals}");
//! # Ok(()) }
//! ```

mod attempt;
mod call;
mod circuit;
mod signals;
mod sink;
pub(crate) mod upstream;

pub use attempt::{AttemptFuture, AttemptMetrics, AttemptMetricsLayer};
pub use call::{CallFuture, CallMetrics, CallMetricsLayer};
pub use circuit::{gauge_value, record_circuit_change, watch};
pub use signals::{Signals, SinkSignals, UpstreamSignals};
pub use sink::MeteredSink;

pub(crate) use attempt::AttemptMeter;
pub(crate) use call::{first_call, CallMeter};
pub(crate) use upstream::{of as upstream_of, Meters, MetersRef, Upstream};

/// One hedge event of `key`'s upstream: `sent`, `won`, `refused_budget` or `refused_state`.
pub(crate) fn hedge(key: Option<&crate::partition::PartitionKey>, result: &str) {
    if let Some(index) = upstream::HEDGES.iter().position(|r| *r == result) {
        upstream::of_partition(key).hedge(index);
    }
}

/// The default of [`max_upstreams`].
pub const DEFAULT_MAX_UPSTREAMS: usize = 100;

/// Histogram buckets for the duration series, in seconds: 5 ms to 2 minutes.
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Sets how many distinct `upstream` label values the process records (default 100); past
/// it, new upstreams share `other`. It bounds the series an exporter keeps when a client calls
/// many hosts (a crawler, a webhook sender). Upstreams already recorded keep their label; 0
/// records every new upstream as `other`.
pub fn max_upstreams(max: usize) {
    upstream::set_max_upstreams(max);
}

/// The metric names, for queries and dashboards built in code.
pub mod names {
    /// Counter: logical calls, by `upstream`, `method` and `outcome`.
    pub const CALLS: &str = "outbound_calls_total";
    /// Histogram: whole-call duration in seconds, by `upstream`.
    pub const CALL_DURATION: &str = "outbound_call_duration_seconds";
    /// Counter: attempts after the first, by `upstream`.
    pub const RETRIES: &str = "outbound_retries_total";
    /// Counter: calls that took more than one attempt, by `upstream`.
    pub const RETRIED_CALLS: &str = "outbound_calls_retried_total";
    /// Histogram: seconds slept between the attempts of one call, by `upstream`.
    pub const RETRY_WAIT: &str = "outbound_retry_wait_seconds";
    /// Counter: attempts, by `upstream` and `reason`.
    pub const ATTEMPTS: &str = "outbound_attempts_total";
    /// Histogram: attempt duration in seconds, by `upstream`.
    pub const ATTEMPT_DURATION: &str = "outbound_attempt_duration_seconds";
    /// Counter: refused attempts, by `upstream` and `kind`.
    pub const REFUSALS: &str = "outbound_refusals_total";
    /// Gauge: the concurrency limit, by `upstream`.
    pub const CONCURRENCY_LIMIT: &str = "outbound_concurrency_limit";
    /// Gauge: calls holding a place under the concurrency limit, by `upstream`.
    pub const IN_FLIGHT: &str = "outbound_in_flight";
    /// Gauge: calls waiting in line for a place under the concurrency limit, by `upstream`.
    pub const CONCURRENCY_QUEUED: &str = "outbound_concurrency_queued";
    /// Gauge: breaker state (0 closed, 1 half-open, 2 open), by `upstream`.
    pub const CIRCUIT_STATE: &str = "outbound_circuit_state";
    /// Counter: hedges, by `upstream` and `result` (`sent`, `won`, `refused_budget`,
    /// `refused_state`).
    pub const HEDGES: &str = "outbound_hedges_total";
    /// Counter: breaker state changes, by `upstream`, `from` and `to`.
    pub const CIRCUIT_TRANSITIONS: &str = "outbound_circuit_transitions_total";
    /// Counter: dead letters stored, by `sink`.
    pub const DEAD_LETTERS_WRITTEN: &str = "outbound_dead_letters_written_total";
    /// Counter: dead letters the sink failed to store, by `sink`.
    pub const DEAD_LETTERS_WRITE_FAILURES: &str = "outbound_dead_letters_write_failures_total";
    /// Counter: dead letters removed, by `sink`.
    pub const DEAD_LETTERS_REMOVED: &str = "outbound_dead_letters_removed_total";
    /// Counter: dead letters replayed, by `upstream` and `outcome`.
    pub const DEAD_LETTERS_REPLAYED: &str = "outbound_dead_letters_replayed_total";
    /// Gauge: dead letters kept, by `sink`.
    pub const DEAD_LETTERS_DEPTH: &str = "outbound_dead_letters_depth";
    /// Gauge: Unix time in seconds of the oldest dead letter's first attempt, by `sink`.
    pub const DEAD_LETTERS_OLDEST_TIMESTAMP: &str =
        "outbound_dead_letters_oldest_timestamp_seconds";
    /// Gauge: age in seconds of the oldest dead letter, by `sink`.
    pub const DEAD_LETTERS_OLDEST_AGE: &str = "outbound_dead_letters_oldest_age_seconds";
}
