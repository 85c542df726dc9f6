//! An overall deadline per logical call, which the retry layer inside it respects.
//!
//! A per-attempt timeout (tower's [`TimeoutLayer`](tower::timeout::TimeoutLayer), inside the
//! retry layer) turns a hung attempt into a retryable failure. It does not bound the call: four
//! attempts of 10 s plus backoff is most of a minute. [`DeadlineLayer`] bounds the whole call,
//! attempts and waits together, and tells the layers inside it when the call must end by putting
//! a [`Deadline`] into the request's extensions:
//!
//! - the retry layer starts no backoff or `Retry-After` sleep that would end after the deadline:
//!   it returns the last outcome at once, with the server's wait exposed when there was one;
//! - if the deadline passes anyway (an attempt still running), the call fails with
//!   [`Kind::Timeout`](crate::error::Kind::Timeout).
//!
//! When a request already carries an earlier [`Deadline`] (set by the caller or an outer
//! layer), the earlier one is kept.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_outbound::deadline::DeadlineLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let hung = tower::service_fn(|_req: Request<()>| async {
//!     std::future::pending::<Result<Response<()>, std::convert::Infallible>>().await
//! });
//! let client = ServiceBuilder::new()
//!     .layer(DeadlineLayer::new(Duration::from_secs(30)))
//!     .service(hung);
//! let err = client.oneshot(Request::new(())).await.unwrap_err();
//! assert!(err.is_timeout());
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use http::Request;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{BoxError, Error};

pub(crate) use crate::handoff::far_future;
pub use crate::handoff::Deadline;

pin_project! {
    /// A timer armed on first use: a future that finishes without waiting never registers
    /// one with the runtime's timer wheel (nor reads the clock for it).
    #[project = TimerProj]
    pub(crate) enum Timer {
        Unarmed,
        Armed { #[pin] sleep: Sleep },
    }
}

impl Timer {
    /// Polls the timer, arming it first for the instant `at` gives (asked once, when the
    /// timer is armed).
    pub(crate) fn poll_at_or_armed(
        mut self: Pin<&mut Self>,
        at: impl FnOnce() -> Instant,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        match self.as_mut().project() {
            TimerProj::Armed { sleep } => sleep.poll(cx),
            TimerProj::Unarmed => self.poll_at(at(), cx),
        }
    }

    /// Polls the timer for `at`: armed on first use, moved when `at` changed.
    pub(crate) fn poll_at(mut self: Pin<&mut Self>, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if let TimerProj::Armed { mut sleep } = self.as_mut().project() {
            if sleep.deadline() != at {
                sleep.as_mut().reset(at);
            }
            return sleep.poll(cx);
        }
        self.set(Timer::Armed {
            sleep: tokio::time::sleep_until(at),
        });
        match self.project() {
            TimerProj::Armed { sleep } => sleep.poll(cx),
            TimerProj::Unarmed => Poll::Pending,
        }
    }
}

/// Bounds each logical call by a deadline. See the [module docs](self).
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    timeout: Duration,
}

impl DeadlineLayer {
    /// Every call must be over within `timeout` of its start. Any value is accepted: one past
    /// what the clock can represent means no deadline in practice (see [`Deadline::after`]).
    pub fn new(timeout: Duration) -> Self {
        DeadlineLayer { timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service made by [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct DeadlineService<S> {
    inner: S,
    timeout: Duration,
}

impl<S, B> Service<Request<B>> for DeadlineService<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        crate::error::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let ours = Deadline::after(self.timeout);
        let deadline = match request.extensions().get::<Deadline>() {
            Some(theirs) if *theirs <= ours => *theirs,
            _ => {
                request.extensions_mut().insert(ours);
                ours
            }
        };
        // Kept as it is (a reference count); `Error::set_upstream` drops its userinfo.
        let upstream = request.uri().authority().cloned();
        ResponseFuture {
            inner: self.inner.call(request),
            timer: Timer::Unarmed,
            deadline: deadline.0,
            upstream,
        }
    }
}

pin_project! {
    /// The response future of [`DeadlineService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // Armed only when the call is pending.
        #[pin]
        timer: Timer,
        deadline: Instant,
        upstream: Option<Authority>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let deadline = *this.deadline;
        poll_until(this.inner, this.timer, || deadline, cx)
            .map_err(|err| err.for_upstream(this.upstream.as_ref()))
    }
}

/// Polls `inner`; while it is pending, the timer (armed on the first pending poll, for the
/// instant `at` gives then) ends it with a timeout error. Shared by the deadline and the
/// attempt timeout.
pub(crate) fn poll_until<F, T, E>(
    inner: Pin<&mut F>,
    timer: Pin<&mut Timer>,
    at: impl FnOnce() -> Instant,
    cx: &mut Context<'_>,
) -> Poll<Result<T, Error>>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    if let Poll::Ready(result) = inner.poll(cx) {
        return Poll::Ready(result.map_err(|e| Error::from_box(e.into())));
    }
    ready!(timer.poll_at_or_armed(at, cx));
    Poll::Ready(Err(Error::timed_out()))
}
