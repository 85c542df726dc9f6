use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use tower_layer::Layer;

use super::backoff::{ExponentialBackoff, Jitter, RngSource};
use super::{Retry, RetryBudget, RetryStats};
use crate::body::DEFAULT_MAX_BUFFERED;
use crate::classify::{Classify, DefaultClassifier};

/// The settings shared by every clone of a [`Retry`] service.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: ExponentialBackoff,
    pub(crate) max_total_delay: Duration,
    pub(crate) max_retry_after: Duration,
    pub(crate) retry_after_jitter: Duration,
    pub(crate) max_buffered_body: usize,
    pub(crate) idempotency_header: HeaderName,
    pub(crate) retry_non_idempotent: bool,
    pub(crate) rng: RngSource,
    pub(crate) stats: RetryStats,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) deadline: Option<Duration>,
}

impl Config {
    /// The retry budget of this request's upstream, with the call deposited into it at `now`.
    pub(crate) fn retry_budget_of<B>(
        &self,
        request: &http::Request<B>,
        now: tokio::time::Instant,
    ) -> Option<Arc<super::budget::Allowance>> {
        self.budget.as_ref().map(|b| b.deposit(request, now))
    }

    /// Whether a request with this method (and these headers) may be sent more than once.
    pub(crate) fn may_retry(&self, method: &Method, headers: &http::HeaderMap) -> bool {
        match *method {
            Method::GET
            | Method::HEAD
            | Method::OPTIONS
            | Method::PUT
            | Method::DELETE
            | Method::TRACE => true,
            Method::POST | Method::PATCH => {
                self.retry_non_idempotent || headers.contains_key(&self.idempotency_header)
            }
            _ => self.retry_non_idempotent,
        }
    }
}

/// Retries failed attempts with capped exponential backoff and jitter, honoring the server's
/// `Retry-After` and rate-limit resets. See the [module docs](super) for the rules.
///
/// `RetryLayer::new()` gives the documented defaults; every setter states its own. Clones of the
/// layer, and every service it makes, share one [`RetryStats`] and, when seeded, one RNG.
#[derive(Clone, Debug)]
pub struct RetryLayer<C = DefaultClassifier> {
    config: Config,
    classify: C,
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryLayer {
    /// A retry layer with the defaults: 4 attempts, 200 ms base delay, 30 s cap per delay, 60 s
    /// total wait, full jitter, Retry-After honored up to 60 s plus up to 250 ms of jitter,
    /// bodies buffered up to 1 MiB, POST and PATCH retried only with an `Idempotency-Key`.
    pub fn new() -> Self {
        RetryLayer {
            config: Config {
                max_attempts: 4,
                backoff: ExponentialBackoff::new(
                    Duration::from_millis(200),
                    Duration::from_secs(30),
                    Jitter::Full,
                ),
                max_total_delay: Duration::from_secs(60),
                max_retry_after: Duration::from_secs(60),
                retry_after_jitter: Duration::from_millis(250),
                max_buffered_body: DEFAULT_MAX_BUFFERED,
                idempotency_header: HeaderName::from_static("idempotency-key"),
                retry_non_idempotent: false,
                rng: RngSource::Thread,
                stats: RetryStats::default(),
                budget: None,
                deadline: None,
            },
            classify: DefaultClassifier,
        }
    }
}

impl<C> RetryLayer<C> {
    /// Attempts in all, the first included (default 4: one call and three retries). Values
    /// below 1 are raised to 1, which turns retrying off.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts.max(1);
        self
    }

    /// The ceiling of the first backoff delay, doubled on each retry (default 200 ms). Every
    /// duration setting of this layer accepts any value: sums saturate, and a delay past what
    /// the timer can represent waits until the end of the wait budget or the deadline.
    pub fn base_delay(mut self, delay: Duration) -> Self {
        let b = self.config.backoff;
        self.config.backoff = ExponentialBackoff::new(delay, b.max(), b.jitter());
        self
    }

    /// The cap on any one backoff delay (default 30 s; any value, `Duration::MAX` included).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        let b = self.config.backoff;
        self.config.backoff = ExponentialBackoff::new(b.base(), delay, b.jitter());
        self
    }

    /// The budget of time spent waiting between attempts of one logical call, backoff and
    /// server-requested waits together (default 60 s). A retry whose wait would overrun it is
    /// not made: the last outcome is returned. Any value is accepted; sums saturate.
    pub fn max_total_delay(mut self, budget: Duration) -> Self {
        self.config.max_total_delay = budget;
        self
    }

    /// How backoff delays are randomised (default [`Jitter::Full`]).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        let b = self.config.backoff;
        self.config.backoff = ExponentialBackoff::new(b.base(), b.max(), jitter);
        self
    }

    /// The longest server-requested wait (`Retry-After`, or the reset of a used-up quota) that
    /// is slept on (default 60 s). A longer one ends the call at once: the response carries an
    /// [`Attempts`](super::Attempts) extension with the wait and the time a retry is allowed.
    /// Any value is accepted (servers' waits are bounded to a year when parsed).
    pub fn max_retry_after(mut self, wait: Duration) -> Self {
        self.config.max_retry_after = wait;
        self
    }

    /// The most random time added to a server-requested wait, so clients that got the same
    /// reset do not all come back in the same instant (default 250 ms; zero turns it off; the
    /// jittered wait never runs past the wait budget or the deadline, whatever this is).
    pub fn retry_after_jitter(mut self, jitter: Duration) -> Self {
        self.config.retry_after_jitter = jitter;
        self
    }

    /// How much of a request body is held in memory to send it again (default 1 MiB). A larger
    /// body is sent once, whole, and not retried; a warning is logged. Any value is accepted:
    /// memory is only taken as the body arrives, never reserved from a size the body claims.
    pub fn max_buffered_body(mut self, bytes: usize) -> Self {
        self.config.max_buffered_body = bytes;
        self
    }

    /// The header whose presence makes a POST or PATCH safe to retry (default
    /// `Idempotency-Key`).
    pub fn idempotency_header(mut self, name: HeaderName) -> Self {
        self.config.idempotency_header = name;
        self
    }

    /// Retry POST, PATCH and other non-idempotent methods even without an idempotency key
    /// (default `false`). Only for APIs that make such requests safe to repeat some other way,
    /// such as upserts keyed on the record's own id.
    pub fn retry_non_idempotent(mut self, yes: bool) -> Self {
        self.config.retry_non_idempotent = yes;
        self
    }

    /// Caps retries at a share of calls per upstream, or `None` for no cap (default: none here;
    /// [`Outbound`](crate::Outbound) and its presets use [`RetryBudget::new`]). Clones of the
    /// budget share it, so one budget can span several layers.
    pub fn retry_budget(mut self, budget: Option<RetryBudget>) -> Self {
        self.config.budget = budget;
        self
    }

    /// The deadline of each logical call, attempts and waits together, or `None` (the
    /// default). It works as [`DeadlineLayer`](crate::deadline::DeadlineLayer) does, without
    /// a layer of its own or a request extension: no wait is started that would end after it,
    /// and an attempt still running when it passes ends the call with a timeout error. The
    /// timer is armed only when the call actually waits on something; one timer serves the
    /// deadline and the waits between attempts. A [`Deadline`](crate::deadline::Deadline)
    /// already in the request's extensions is kept when it is earlier. Any value is accepted
    /// (see [`Deadline::after`](crate::deadline::Deadline::after)).
    pub fn deadline(mut self, deadline: Option<Duration>) -> Self {
        self.config.deadline = deadline;
        self
    }

    /// Draws jitter from a generator seeded with `seed`, shared by every clone, so that delays
    /// are reproducible (default: the thread's random generator).
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.config.rng = RngSource::seeded(seed);
        self
    }

    /// Decides which attempts are retried (default [`DefaultClassifier`]: 408, 429, 500, 502,
    /// 503, 504 and transport errors and timeouts).
    pub fn classify<C2: Classify>(self, classify: C2) -> RetryLayer<C2> {
        RetryLayer {
            config: self.config,
            classify,
        }
    }

    /// The counters of every service made by this layer and its clones.
    pub fn stats(&self) -> RetryStats {
        self.config.stats.clone()
    }

    /// The settings, for a call that runs the retry policy itself.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = Retry<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, Arc::new(self.config.clone()), self.classify.clone())
    }
}
