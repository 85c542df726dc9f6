//! The default stack of the Lehnz client, tuned to Lehnz's documented limits.

use std::time::Duration;

use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use tower::ServiceBuilder;

use super::client::LehnzService;
use super::error::LehnzError;
use crate::body::ReplayBody;
use crate::retry::RetryStats;
use crate::{RetryAfterLayer, RetryLayer};

/// Settings of the Lehnz client's default stack. Defaults follow Lehnz's documentation.
#[derive(Clone, Debug)]
pub struct StackConfig {
    max_attempts: u32,
    max_retry_after: Duration,
    attempt_timeout: Duration,
    retry_seed: Option<u64>,
}

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            max_attempts: 4,
            max_retry_after: Duration::from_secs(15 * 60),
            attempt_timeout: Duration::from_secs(30),
            retry_seed: None,
        }
    }
}

impl StackConfig {
    /// Attempts per batch, the first included (default 4, as Lehnz recommends).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The longest `RateLimit-Reset` slept on before a batch is given up (default 15 minutes,
    /// Lehnz's window).
    pub fn max_retry_after(mut self, wait: Duration) -> Self {
        self.max_retry_after = wait;
        self
    }

    /// Time limit of one attempt (default 30 s).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Seeds the retry jitter, for reproducible runs.
    pub fn retry_seed(mut self, seed: u64) -> Self {
        self.retry_seed = Some(seed);
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
            .max_total_delay(self.max_retry_after + Duration::from_secs(60))
            // Upserts are keyed on the record's id, and events carry a client id: resending
            // either is safe.
            .retry_non_idempotent(true);
        if let Some(seed) = self.retry_seed {
            retry = retry.rng_seed(seed);
        }
        let gate = RetryAfterLayer::new().max_wait(self.max_retry_after);
        let stats = StackStats {
            retry: retry.stats(),
            gate: gate.stats(),
        };
        let service = ServiceBuilder::new()
            .layer(retry)
            .layer(gate)
            .layer(tower::timeout::TimeoutLayer::new(self.attempt_timeout))
            .service(transport);
        let service = tower::ServiceExt::<http::Request<ReplayBody>>::map_response(
            service,
            |r: http::Response<hyper::body::Incoming>| {
                r.map(|b| {
                    http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(
                        b,
                        Into::into,
                    ))
                })
            },
        );
        Ok((tower::util::BoxCloneSyncService::new(service), stats))
    }
}

/// Counters of the default stack, for reports.
#[derive(Clone, Debug)]
pub struct StackStats {
    retry: RetryStats,
    gate: crate::retry_after::GateStats,
}

impl StackStats {
    /// The retry layer's counters: retries, server waits honored, time waited.
    pub fn retry(&self) -> &RetryStats {
        &self.retry
    }

    /// The Retry-After gate's counters.
    pub fn gate(&self) -> &crate::retry_after::GateStats {
        &self.gate
    }

    pub(crate) fn dead_letters_enabled(&self) -> bool {
        false
    }
}
