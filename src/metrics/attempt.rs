//! Each attempt: the `reason` counter, the attempt duration, refusals, and one event.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::time::Instant;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::call::error_type;
use super::upstream::{self, Upstream};
use crate::error::{Error, Kind};

/// Meters and traces each attempt: put it just inside the [`RetryLayer`](crate::RetryLayer),
/// so it sees every attempt and every refusal of the breaker, the gate and the throttle.
///
/// It records `outbound_attempts_total{upstream, reason}`,
/// `outbound_attempt_duration_seconds{upstream}` (waits at the gate and the throttle
/// included) and `outbound_refusals_total{upstream, kind}`, and emits one `DEBUG` event per
/// attempt in the current span (the call's, under [`CallMetricsLayer`](super::CallMetricsLayer))
/// with `retry.reason`, `http.response.status_code`, `http.request.resend_count` and
/// `error.type`. [`Outbound`](crate::Outbound) puts it in its place when the `metrics`
/// feature is on.
#[derive(Clone, Debug, Default)]
pub struct AttemptMetricsLayer {
    _priv: (),
}

impl AttemptMetricsLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for AttemptMetricsLayer {
    type Service = AttemptMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptMetrics { inner, sent: 0 }
    }
}

/// The service of [`AttemptMetricsLayer`].
///
/// The retry layer moves one clone of it into each call and sends every attempt of that call
/// through it, so the clone counts the attempts it has sent: that count is the event's
/// `http.request.resend_count`. A new clone starts at zero.
#[derive(Debug)]
pub struct AttemptMetrics<S> {
    inner: S,
    sent: u32,
}

impl<S: Clone> Clone for AttemptMetrics<S> {
    fn clone(&self) -> Self {
        AttemptMetrics {
            inner: self.inner.clone(),
            sent: 0,
        }
    }
}

impl<S, B, ResB> Service<Request<B>> for AttemptMetrics<S>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = Error>,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let upstream = upstream::of(request.uri());
        let meter = AttemptMeter::start(self.sent, Instant::now());
        self.sent = self.sent.saturating_add(1);
        AttemptFuture {
            inner: self.inner.call(request),
            upstream,
            meter,
        }
    }
}

/// One attempt's meters: the layer's future and [`Outbound`](crate::Outbound)'s call both
/// keep one per attempt.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttemptMeter {
    started: Instant,
    resend_count: u32,
}

/// Indexes into [`upstream::REASONS`].
const OK: usize = 0;
const TOO_MANY: usize = 1;
const SERVER: usize = 2;
const CLIENT: usize = 3;
const TIMEOUT: usize = 4;
const TRANSPORT: usize = 5;
const REFUSED: usize = 6;
const BODY: usize = 7;

impl AttemptMeter {
    /// The attempt after `resend_count` earlier ones, starting at `started`.
    pub(crate) fn start(resend_count: u32, started: Instant) -> Self {
        AttemptMeter {
            started,
            resend_count,
        }
    }

    /// Records the attempt's end, at `now`, with its result, for `upstream`.
    pub(crate) fn end<ResB>(
        &self,
        upstream: &Upstream,
        result: &Result<Response<ResB>, Error>,
        now: Instant,
    ) {
        let seconds = now.saturating_duration_since(self.started).as_secs_f64();
        let reason = match result {
            Ok(response) => match response.status().as_u16() {
                429 => TOO_MANY,
                500..=599 => SERVER,
                400..=499 => CLIENT,
                _ => OK,
            },
            Err(error) => match error.kind() {
                Kind::Timeout => TIMEOUT,
                Kind::Transport => TRANSPORT,
                Kind::Body => BODY,
                Kind::Throttled { .. } => {
                    upstream.refusal(0);
                    REFUSED
                }
                Kind::RateLimited { .. } => {
                    upstream.refusal(1);
                    REFUSED
                }
                Kind::CircuitOpen { .. } => {
                    upstream.refusal(2);
                    REFUSED
                }
                Kind::Overloaded { .. } => {
                    upstream.refusal(3);
                    REFUSED
                }
            },
        };
        upstream.attempt(reason, seconds);
        let reason_label = upstream::REASONS[reason];
        match result {
            Ok(response) => tracing::debug!(
                retry.reason = reason_label,
                http.response.status_code = response.status().as_u16(),
                http.request.resend_count = self.resend_count,
                "outbound attempt",
            ),
            Err(error) => tracing::debug!(
                retry.reason = reason_label,
                http.request.resend_count = self.resend_count,
                error.type = error_type(error),
                circuit.state = error.is_circuit_open().then_some("open"),
                retry.wait_ms = error.retry_after().map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
                "outbound attempt failed",
            ),
        }
    }
}

pin_project! {
    /// The response future of [`AttemptMetrics`].
    pub struct AttemptFuture<F> {
        #[pin]
        inner: F,
        upstream: Arc<Upstream>,
        meter: AttemptMeter,
    }
}

impl<F> fmt::Debug for AttemptFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptFuture")
            .field("upstream", &self.upstream.label)
            .field("resend_count", &self.meter.resend_count)
            .finish_non_exhaustive()
    }
}

impl<F, ResB> Future for AttemptFuture<F>
where
    F: Future<Output = Result<Response<ResB>, Error>>,
{
    type Output = Result<Response<ResB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        this.meter.end(this.upstream, &result, Instant::now());
        Poll::Ready(result)
    }
}
