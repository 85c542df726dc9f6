//! The logical call: one span, the `outcome` counter and the whole-call duration.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::field::Empty;

use super::upstream::{self, method_index, CallOutcome, Upstream};
use crate::classify::classify_status;
use crate::dead_letter::Replaying;
use crate::error::Error;
use crate::retry::Attempts;

/// Meters and traces each logical call: put it outside the [`RetryLayer`](crate::RetryLayer)
/// (and outside the dead-letter layer) so it sees the call once, whatever the attempts.
///
/// It records `outbound_calls_total{upstream, method, outcome}`,
/// `outbound_call_duration_seconds{upstream}`, `outbound_retries_total{upstream}` and
/// `outbound_retry_wait_seconds{upstream}`, counts replays of dead letters, and runs the call
/// inside one `outbound.call` span with OpenTelemetry HTTP client field names (see the
/// [module docs](super)). [`Outbound`](crate::Outbound) puts it in its place when the
/// `metrics` feature is on.
#[derive(Clone, Debug, Default)]
pub struct CallMetricsLayer {
    circuit: bool,
}

impl CallMetricsLayer {
    /// A layer for a stack without a circuit breaker watched by
    /// [`record_circuit_change`](super::record_circuit_change).
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the stack's breaker reports to
    /// [`record_circuit_change`](super::record_circuit_change) (default `false`): then each
    /// upstream's `outbound_circuit_state` starts at 0 (closed) on its first call, so the
    /// series exists before the first change.
    pub fn circuit(mut self, watched: bool) -> Self {
        self.circuit = watched;
        self
    }
}

impl<S> Layer<S> for CallMetricsLayer {
    type Service = CallMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallMetrics {
            inner,
            circuit: self.circuit,
        }
    }
}

/// The service of [`CallMetricsLayer`].
#[derive(Clone, Debug)]
pub struct CallMetrics<S> {
    inner: S,
    circuit: bool,
}

impl<S, B, ResB> Service<Request<B>> for CallMetrics<S>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = Error>,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let upstream = upstream::of(request.uri());
        if self.circuit {
            first_call(&upstream);
        }
        let mut meter = CallMeter::start(&request);
        meter.starts_at(Instant::now());
        let future = {
            let _entered = meter.span.enter();
            self.inner.call(request)
        };
        CallFuture {
            inner: future,
            upstream,
            meter,
        }
    }
}

/// An upstream's first call through a stack whose breaker reports to
/// [`record_circuit_change`](super::record_circuit_change): its `outbound_circuit_state`
/// starts at 0 (closed), so the series exists before the first change.
pub(crate) fn first_call(upstream: &Upstream) {
    if upstream
        .counts
        .circuit_known
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        upstream.circuit_state(0);
    }
}

/// One logical call's meters, from its start to its end: the layer's future and
/// [`Outbound`](crate::Outbound)'s call both keep one.
#[derive(Debug)]
pub(crate) struct CallMeter {
    pub(crate) span: tracing::Span,
    method: usize,
    started: Option<Instant>,
    replaying: bool,
}

impl CallMeter {
    /// A call of `request`. Its time counts from [`starts_at`](Self::starts_at).
    pub(crate) fn start<B>(request: &Request<B>) -> Self {
        CallMeter {
            span: span_of(request),
            method: method_index(request.method()),
            started: None,
            replaying: request.extensions().get::<Replaying>().is_some(),
        }
    }

    /// When the call started.
    pub(crate) fn starts_at(&mut self, at: Instant) {
        self.started = Some(at);
    }

    /// Records the call's end, at `now`, with its result, for `upstream`.
    pub(crate) fn end<ResB>(
        &self,
        upstream: &Upstream,
        result: &Result<Response<ResB>, Error>,
        now: Instant,
    ) {
        let seconds = self.started.map_or(0.0, |started| {
            now.saturating_duration_since(started).as_secs_f64()
        });
        let (outcome, attempts, waited) = match result {
            Ok(response) => {
                let (attempts, waited) = response
                    .extensions()
                    .get::<Attempts>()
                    .map_or((1, Duration::ZERO), |a| (a.count, a.waited));
                let outcome = match (classify_status(response.status()).is_success(), attempts) {
                    (true, 0 | 1) => CallOutcome::Success,
                    (true, _) => CallOutcome::SuccessAfterRetry,
                    (false, _) => CallOutcome::Failed,
                };
                self.span
                    .record("http.response.status_code", response.status().as_u16());
                if outcome == CallOutcome::Failed {
                    self.span
                        .record("error.type", response.status().as_str())
                        .record("otel.status_code", "ERROR");
                }
                (outcome, attempts, waited)
            }
            Err(error) => {
                let outcome = if error.is_refusal() {
                    CallOutcome::Refused
                } else {
                    CallOutcome::Failed
                };
                self.span
                    .record("error.type", error_type(error))
                    .record("otel.status_code", "ERROR");
                (outcome, error.attempts(), error.waited())
            }
        };
        upstream.call(self.method, outcome, seconds);
        if attempts > 1 {
            upstream.retries(u64::from(attempts - 1));
            self.span.record("http.request.resend_count", attempts - 1);
        }
        if !waited.is_zero() {
            upstream.retry_wait(waited.as_secs_f64());
            let waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
            self.span.record("retry.wait_ms", waited_ms);
        }
        if self.replaying {
            upstream.replayed(matches!(
                outcome,
                CallOutcome::Success | CallOutcome::SuccessAfterRetry
            ));
        }
    }
}

/// The span of one logical call, with the OpenTelemetry HTTP client field names. The field
/// values (the redacted URL among them) are only computed when a subscriber wants the span.
fn span_of<B>(request: &Request<B>) -> tracing::Span {
    let uri = request.uri();
    tracing::info_span!(
        "outbound.call",
        otel.name = request.method().as_str(),
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = request.method().as_str(),
        server.address = uri.host(),
        server.port = port_of(uri),
        url.full = crate::redact::uri(uri),
        http.response.status_code = Empty,
        http.request.resend_count = Empty,
        error.type = Empty,
        retry.wait_ms = Empty,
        outbound.hedged = Empty,
    )
}

pub(crate) fn port_of(uri: &http::Uri) -> Option<u16> {
    uri.port_u16().or(match uri.scheme_str() {
        Some("https") | Some("wss") => Some(443),
        Some("http") | Some("ws") => Some(80),
        _ => None,
    })
}

/// The `error.type` of an error: a short stable name of its kind.
pub(crate) fn error_type(error: &Error) -> &'static str {
    error.kind().name()
}

pin_project! {
    /// The response future of [`CallMetrics`]: the inner future, polled inside the call's
    /// span; records the call when it ends.
    pub struct CallFuture<F> {
        #[pin]
        inner: F,
        upstream: Arc<Upstream>,
        meter: CallMeter,
    }
}

impl<F> fmt::Debug for CallFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallFuture")
            .field("upstream", &self.upstream.label)
            .finish_non_exhaustive()
    }
}

impl<F, ResB> Future for CallFuture<F>
where
    F: Future<Output = Result<Response<ResB>, Error>>,
{
    type Output = Result<Response<ResB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.meter.span.enter();
            ready!(this.inner.poll(cx))
        };
        this.meter.end(this.upstream, &result, Instant::now());
        Poll::Ready(result)
    }
}
