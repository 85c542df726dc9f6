//! The default stack of the Lehnz client, tuned to Lehnz's documented limits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use tower::ServiceBuilder;

use super::error::LehnzError;
use crate::body::ReplayBody;
use crate::circuit::CircuitStats;
use crate::config::Settings;
use crate::dead_letter::{DeadLetterStats, Sink};
use crate::outbound::Outbound;
use crate::partition::Scope;
use crate::retry::RetryStats;
use crate::retry_after::GateStats;
use crate::throttle::{BucketStore, ThrottleStats};
use crate::{
    CircuitBreakerLayer, ConcurrencyLayer, DeadLetterLayer, JsonLinesSink, RetryAfterLayer,
    RetryLayer, ThrottleLayer,
};

/// The service a [`Client`](super::Client) sends its requests through: the layer stack and the
/// transport, type-erased so a custom stack fits too (see
/// [`ClientBuilder::service`](super::ClientBuilder::service)).
pub type LehnzService = tower::util::BoxCloneSyncService<
    http::Request<ReplayBody>,
    http::Response<http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, crate::BoxError>>,
    crate::Error,
>;

/// Settings of the Lehnz client's default stack. Defaults follow Lehnz's documentation:
///
/// | layer | default |
/// |---|---|
/// | dead letters | off; [`dead_letter_file`](Self::dead_letter_file) turns them on |
/// | retry | 4 attempts; honors `RateLimit-Reset` and `Retry-After` up to 15 min; backoff with full jitter for 5xx and network errors |
/// | circuit breaker | opens at 50 % failures over the last 20 calls (a full window of 20), for 1 s, then 2, 4, … up to 30 s if it trips again soon; batches fail at once while it is open ([`circuit_max_wait`](Self::circuit_max_wait) holds them instead), and streamed ingestion pauses its source |
/// | Retry-After gate | holds every batch while the org's window is used up |
/// | concurrency limit | off; [`concurrency_limit`](Self::concurrency_limit) turns one on (`lehnz_sync` runs an adaptive one) |
/// | throttle | 1,000 requests per 15 minutes for the organization, adopting the server's `RateLimit-*` view |
/// | attempt timeout | 30 s |
#[derive(Clone)]
pub struct StackConfig {
    max_attempts: u32,
    max_retry_after: Duration,
    attempt_timeout: Duration,
    retry_seed: Option<u64>,
    throttle: Option<(u32, Duration)>,
    throttle_store: Option<Arc<dyn BucketStore>>,
    breaker: bool,
    circuit_max_wait: Duration,
    concurrency: Option<ConcurrencyLayer>,
    dead_letters: Option<Arc<dyn Sink>>,
    settings: Option<Settings>,
}

impl std::fmt::Debug for StackConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackConfig")
            .field("max_attempts", &self.max_attempts)
            .field("max_retry_after", &self.max_retry_after)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("throttle", &self.throttle)
            .field("breaker", &self.breaker)
            .field("circuit_max_wait", &self.circuit_max_wait)
            .field("concurrency", &self.concurrency)
            .field("dead_letters", &self.dead_letters.is_some())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            max_attempts: 4,
            max_retry_after: Duration::from_secs(15 * 60),
            attempt_timeout: Duration::from_secs(30),
            retry_seed: None,
            throttle: Some((1000, Duration::from_secs(15 * 60))),
            throttle_store: None,
            breaker: true,
            circuit_max_wait: Duration::ZERO,
            concurrency: None,
            dead_letters: None,
            settings: None,
        }
    }
}

impl StackConfig {
    /// Attempts per batch, the first included (default 4, as Lehnz recommends); 0 is raised
    /// to 1 (no retries).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The longest `RateLimit-Reset` slept on before a batch is given up (default 15 minutes,
    /// Lehnz's window). Any value is accepted: sums saturate, and the gate never holds a batch
    /// longer than a year.
    pub fn max_retry_after(mut self, wait: Duration) -> Self {
        self.max_retry_after = wait;
        self
    }

    /// Time limit of one attempt (default 30 s). Any value is accepted; one past what the
    /// timer can hold means no limit.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Seeds the retry jitter, for reproducible runs.
    pub fn retry_seed(mut self, seed: u64) -> Self {
        self.retry_seed = Some(seed);
        self
    }

    /// The organization's rate: `limit` requests per `window` (default 1,000 per 15 minutes),
    /// or `None` for no local throttle. Set it to your share when other clients use the same
    /// organization without sharing a store.
    pub fn throttle(mut self, rate: Option<(u32, Duration)>) -> Self {
        self.throttle = rate;
        self
    }

    /// Keeps the throttle's bucket in `store`, for example Redis with the `redis` feature, so
    /// every process of the organization shares one budget.
    pub fn throttle_store(mut self, store: impl BucketStore) -> Self {
        self.throttle_store = Some(Arc::new(store));
        self
    }

    /// Whether to use a circuit breaker (default `true`).
    pub fn circuit_breaker(mut self, on: bool) -> Self {
        self.breaker = on;
        self
    }

    /// How long a batch waits for an open circuit before it fails (default zero: it fails at
    /// once, and is dead-lettered when dead letters are on). A job that nobody waits on
    /// should wait: held batches go out once a probe finds Lehnz back, paced, and an outage
    /// shorter than the patience dead-letters nothing. `lehnz_sync` waits 60 s. Over a year
    /// is lowered to a year; see [`CircuitBreakerLayer::max_wait`].
    pub fn circuit_max_wait(mut self, patience: Duration) -> Self {
        self.circuit_max_wait = patience;
        self
    }

    /// A limit on batches in flight to Lehnz, or `None` (the default: the client's own
    /// [`concurrency`](super::client::ClientBuilder::concurrency) bounds them). With
    /// [`ConcurrencyLayer::adaptive`] the limit falls when Lehnz answers 429 or 503, names a
    /// wait or slows down, and grows back while it answers fast; one limit for the
    /// organization, as the throttle.
    pub fn concurrency_limit(mut self, limit: Option<ConcurrencyLayer>) -> Self {
        self.concurrency = limit;
        self
    }

    /// Writes batches that finally fail to a JSON Lines file, to replay later (default off).
    pub fn dead_letter_file(self, path: impl Into<PathBuf>) -> Self {
        self.dead_letter_sink(JsonLinesSink::new(path))
    }

    /// Writes batches that finally fail to `sink` (default off).
    pub fn dead_letter_sink(mut self, sink: impl Sink) -> Self {
        // With the `metrics` feature the sink's depth and oldest letter are exported.
        #[cfg(feature = "metrics")]
        let sink = crate::metrics::MeteredSink::new(sink);
        self.dead_letters = Some(Arc::new(sink));
        self
    }

    /// Settings from a configuration file ([`config::Settings`](crate::config::Settings)), laid
    /// over this stack when it is built: each key given replaces that setting, each left out
    /// keeps Lehnz's default or what the setters above chose. A `throttle` key is refused (the
    /// organization's window is Lehnz's, set with [`throttle`](Self::throttle)), as is any
    /// value out of range; both fail [`ClientBuilder::build`](super::ClientBuilder::build) with
    /// [`LehnzError::InvalidConfig`] naming the key.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = Some(settings);
        self
    }

    pub(crate) fn build(self) -> Result<(LehnzService, StackStats), LehnzError> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        let transport = HyperClient::builder(TokioExecutor::new()).build::<_, ReplayBody>(https);
        let mut retry = RetryLayer::new()
            .max_attempts(self.max_attempts)
            .max_retry_after(self.max_retry_after)
            .max_total_delay(self.max_retry_after.saturating_add(Duration::from_secs(60)))
            // Upserts are keyed on the record's id, and events carry a client id: resending
            // either is safe.
            .retry_non_idempotent(true);
        if let Some(seed) = self.retry_seed {
            retry = retry.rng_seed(seed);
        }
        let gate = RetryAfterLayer::new().max_wait(self.max_retry_after);
        let throttle = match self.throttle {
            Some((limit, window)) => {
                let mut throttle = ThrottleLayer::try_new(limit, window)
                    .map_err(|e| LehnzError::InvalidConfig(e.to_string()))?
                    .max_wait(self.max_retry_after);
                if let Some(store) = self.throttle_store.clone() {
                    throttle = throttle.store(store);
                }
                Some(throttle)
            }
            None => None,
        };
        // A full window of 20 calls before the breaker may open: with many batches in flight,
        // the first 10 to finish are too small a sample, and a few ordinary 5xx and dropped
        // connections among them opened it for 30 s, dead-lettering every batch meanwhile.
        let patience = self.circuit_max_wait;
        let breaker = self.breaker.then(|| {
            CircuitBreakerLayer::new()
                .minimum_calls(20)
                .max_wait(patience)
        });
        // With the `metrics` feature its state is exported per upstream.
        #[cfg(feature = "metrics")]
        let breaker = breaker.map(crate::metrics::watch);
        let dead_letters = self.dead_letters.map(DeadLetterLayer::with_sink);
        // Lehnz's limits are per organization, across the API and the ingestion hosts: one
        // gate, breaker and budget for both.
        let stack = Outbound::new()
            .partition(Scope::Global)
            .idempotency(None)
            .deadline(None)
            .retry(retry)
            .gate(gate)
            .throttle(throttle)
            .circuit_breaker(breaker)
            .concurrency(self.concurrency)
            .dead_letters(dead_letters)
            .attempt_timeout(Some(self.attempt_timeout));
        let stack = match &self.settings {
            Some(settings) if settings.throttle.is_some() => {
                return Err(LehnzError::InvalidConfig(
                    "throttle: the organization's window is Lehnz's; leave it out of the settings"
                        .to_owned(),
                ))
            }
            Some(settings) => settings
                .apply(stack)
                .map_err(|e| LehnzError::InvalidConfig(e.to_string()))?,
            None => stack,
        };
        // The counters of the stack as built: settings that replace a layer replace its state.
        let stats = StackStats {
            retry: stack.retry_stats(),
            gate: stack.gate_stats(),
            throttle: stack.throttle_layer().map(ThrottleLayer::stats),
            breaker: stack
                .circuit_breaker_layer()
                .map(CircuitBreakerLayer::stats),
            dead_letters: stack.dead_letter_layer().map(DeadLetterLayer::stats),
            circuit: stack.circuit_breaker_layer().cloned(),
        };
        let service = ServiceBuilder::new()
            .map_response(|r: http::Response<hyper::body::Incoming>| {
                r.map(|b| {
                    http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(
                        b,
                        Into::into,
                    ))
                })
            })
            .service(stack.service(transport));
        Ok((tower::util::BoxCloneSyncService::new(service), stats))
    }
}

/// Counters of the default stack, for reports.
#[derive(Clone, Debug)]
pub struct StackStats {
    retry: RetryStats,
    gate: GateStats,
    throttle: Option<ThrottleStats>,
    breaker: Option<CircuitStats>,
    dead_letters: Option<DeadLetterStats>,
    /// The breaker itself, for its state (streamed ingestion pauses while it is open).
    circuit: Option<CircuitBreakerLayer>,
}

impl StackStats {
    /// The retry layer's counters: retries, server waits honored, time waited.
    pub fn retry(&self) -> &RetryStats {
        &self.retry
    }

    /// The Retry-After gate's counters.
    pub fn gate(&self) -> &GateStats {
        &self.gate
    }

    /// The throttle's counters, when it is on.
    pub fn throttle(&self) -> Option<&ThrottleStats> {
        self.throttle.as_ref()
    }

    /// The circuit breaker's counters, when it is on.
    pub fn circuit_breaker(&self) -> Option<&CircuitStats> {
        self.breaker.as_ref()
    }

    /// The dead-letter counters, when dead letters are on.
    pub fn dead_letters(&self) -> Option<&DeadLetterStats> {
        self.dead_letters.as_ref()
    }

    /// How long until the breaker lets a probe through, when it is open.
    pub fn circuit_open_for(&self) -> Option<Duration> {
        self.circuit
            .as_ref()
            .and_then(CircuitBreakerLayer::open_for)
    }
}
