use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::uri::Authority;
use http::{request::Parts, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::budget::Allowance;
use super::layer::Config;
use super::policy::{self, Next, Progress};
use crate::body::{Buffer, Buffered, ReplayBody};
use crate::classify::{Attempt, Classify};
use crate::deadline::Timer;
use crate::error::{BoxError, Error, Kind};
use crate::rate_limit::RateLimitInfo;

pin_project! {
    /// The response future of [`Retry`](super::Retry): reads the body once, then runs attempts
    /// and the waits between them until one is final.
    #[project = ResponseFutureProj]
    pub struct ResponseFuture<S, C, B>
    where
        S: Service<Request<ReplayBody>>,
    {
        #[pin]
        state: State<S::Future, B>,
        // One timer for the call: the deadline while an attempt runs, the wake-up while
        // waiting between attempts. Armed only when the call is pending.
        #[pin]
        timer: Timer,
        inner: S,
        config: Arc<Config>,
        classify: C,
        // The request head, kept for the next attempt while one may come.
        parts: Option<Parts>,
        body: Option<Buffered>,
        progress: Progress,
        budget: Option<Arc<Allowance>>,
        upstream: Option<Authority>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Buffering { #[pin] buffer: Buffer<B> },
        Ready,
        Calling { #[pin] future: F },
        Waiting { until: Instant },
    }
}

impl<S, C, B> ResponseFuture<S, C, B>
where
    S: Service<Request<ReplayBody>>,
{
    pub(crate) fn new(
        inner: S,
        config: Arc<Config>,
        classify: C,
        parts: Parts,
        buffer: Buffer<B>,
        budget: Option<Arc<Allowance>>,
        deadline: Option<Instant>,
    ) -> Self {
        let may_retry = config.max_attempts > 1 && config.may_retry(&parts.method, &parts.headers);
        // Kept as it is (a reference count); its userinfo is dropped where it is shown.
        let upstream = parts.uri.authority().cloned();
        ResponseFuture {
            state: State::Buffering { buffer },
            timer: Timer::Unarmed,
            upstream,
            inner,
            config,
            classify,
            parts: Some(parts),
            body: None,
            progress: Progress::new(may_retry, deadline),
            budget,
        }
    }
}

impl<S, C, B> fmt::Debug for ResponseFuture<S, C, B>
where
    S: Service<Request<ReplayBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.progress.attempts)
            .field("waited", &self.progress.waited)
            .finish_non_exhaustive()
    }
}

impl<S, C, B, ResB> Future for ResponseFuture<S, C, B>
where
    S: Service<Request<ReplayBody>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    C: Classify,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Buffering { buffer } => {
                    let Poll::Ready(buffered) = buffer.poll(cx) else {
                        return until_deadline(
                            this.timer.as_mut(),
                            this.progress,
                            this.upstream,
                            cx,
                        );
                    };
                    let buffered = match buffered {
                        Ok(buffered) => buffered,
                        Err(err) => return Poll::Ready(Err(Error::with_source(Kind::Body, err))),
                    };
                    if this.progress.may_retry && !buffered.is_replayable() {
                        tracing::warn!(
                            limit = this.config.max_buffered_body,
                            "request body is larger than max_buffered_body: it is sent once and not retried"
                        );
                    }
                    *this.body = Some(buffered);
                    this.state.set(State::Ready);
                }
                StateProj::Ready => {
                    let Poll::Ready(ready) = this.inner.poll_ready(cx) else {
                        return until_deadline(
                            this.timer.as_mut(),
                            this.progress,
                            this.upstream,
                            cx,
                        );
                    };
                    if let Err(err) = ready {
                        let mut err = Error::from_box(err.into());
                        err.set_attempts(this.progress.attempts, this.progress.waited);
                        return Poll::Ready(Err(err));
                    }
                    let (Some(body), Some(parts)) = (
                        this.body.as_mut().and_then(Buffered::take_attempt),
                        this.parts.take(),
                    ) else {
                        return Poll::Ready(Err(Error::with_source(
                            Kind::Body,
                            "request body is no longer available for another attempt",
                        )));
                    };
                    let replayable = this.body.as_ref().is_some_and(Buffered::is_replayable);
                    this.progress.start_attempt(this.config, replayable);
                    // The head is cloned only while another attempt may need it.
                    if this.progress.repeatable {
                        *this.parts = Some(parts.clone());
                    }
                    let future = this.inner.call(Request::from_parts(parts, body));
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let Poll::Ready(result) = future.poll(cx) else {
                        return until_deadline(
                            this.timer.as_mut(),
                            this.progress,
                            this.upstream,
                            cx,
                        );
                    };
                    let result = result.map_err(|e| Error::from_box(e.into()));
                    let outcome = this.classify.classify(Attempt::of(&result));
                    match policy::next(
                        this.config,
                        this.progress,
                        this.budget.as_deref(),
                        this.upstream.as_ref(),
                        result,
                        outcome,
                        RateLimitInfo::of_response,
                    ) {
                        Next::Retry { until } => this.state.set(State::Waiting { until }),
                        Next::Return(result) => return Poll::Ready(result),
                    }
                }
                StateProj::Waiting { until } => {
                    let until = *until;
                    ready!(this.timer.as_mut().poll_at(until, cx));
                    this.state.set(State::Ready);
                }
            }
        }
    }
}

/// The call is pending on an attempt, the body or the inner service's readiness: it stays
/// so until its deadline, if it has one, and then ends with a timeout error.
fn until_deadline<T>(
    timer: Pin<&mut Timer>,
    progress: &Progress,
    upstream: &Option<Authority>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, Error>> {
    let Some(deadline) = progress.deadline else {
        return Poll::Pending;
    };
    ready!(timer.poll_at(deadline, cx));
    Poll::Ready(Err(policy::deadline_passed(upstream.as_ref(), progress)))
}
