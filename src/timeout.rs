//! A time limit on each attempt, with its timer armed only when the attempt is pending.
//!
//! [`TimeoutLayer`] does what tower's `TimeoutLayer` does — an attempt still running after
//! the limit fails with a timeout error ([`Kind::Timeout`](crate::error::Kind::Timeout), which the retry layer retries and the
//! circuit breaker counts) — at a smaller cost per call: no clock is read and no timer is
//! created for an attempt that answers at once, and the timer is registered with the runtime
//! only when the attempt is first found pending. The limit counts from that first poll.
//! [`Outbound`](crate::Outbound) uses it for its attempt timeout.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_outbound::timeout::TimeoutLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let hung = tower::service_fn(|_req: Request<()>| async {
//!     std::future::pending::<Result<Response<()>, std::convert::Infallible>>().await
//! });
//! let client = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(Duration::from_secs(10)))
//!     .service(hung);
//! let err = client.oneshot(Request::new(())).await.unwrap_err();
//! assert!(err.is_timeout());
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::deadline::{far_future, poll_until, Timer};
use crate::error::{BoxError, Error};

/// Ends each attempt that runs longer than a time limit. See the [module docs](self).
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// Each attempt may run for `timeout`. Any value is accepted: one past what the clock can
    /// represent means no limit in practice.
    pub fn new(timeout: Duration) -> Self {
        TimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service made by [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, R> Service<R> for Timeout<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        crate::error::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(request),
            timer: Timer::Unarmed,
            timeout: self.timeout,
        }
    }
}

pin_project! {
    /// The response future of [`Timeout`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        timer: Timer,
        timeout: Duration,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("timeout", &self.timeout)
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
        let timeout = *this.timeout;
        poll_until(
            this.inner,
            this.timer,
            || {
                let now = Instant::now();
                now.checked_add(timeout).unwrap_or_else(|| far_future(now))
            },
            cx,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_answers_at_once_arms_no_timer() {
        let mut svc = TimeoutLayer::new(Duration::from_secs(1))
            .layer(tower::service_fn(|()| async { Ok::<_, Infallible>(7) }));
        let mut future = std::pin::pin!(svc.call(()));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(7))));
        assert!(
            matches!(future.timer, Timer::Unarmed),
            "no timer for a call that never waited"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_attempt_arms_its_timer() {
        let mut svc = TimeoutLayer::new(Duration::from_secs(1)).layer(tower::service_fn(|()| {
            std::future::pending::<Result<(), Infallible>>()
        }));
        let mut future = std::pin::pin!(svc.call(()));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert!(matches!(future.timer, Timer::Armed { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_attempt_ends_after_the_limit_from_its_first_pending_poll() {
        let start = Instant::now();
        let svc = TimeoutLayer::new(Duration::from_secs(10)).layer(tower::service_fn(|()| {
            std::future::pending::<Result<(), Infallible>>()
        }));
        let err = svc.oneshot(()).await.unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_past_the_clocks_range_is_no_limit_and_no_panic() {
        let svc = TimeoutLayer::new(Duration::MAX).layer(tower::service_fn(|()| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, Infallible>(())
        }));
        svc.oneshot(()).await.unwrap();
    }
}
