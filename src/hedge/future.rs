//! The response future of the hedge service: the attempt, its copy when one is due, and the
//! first answer that settles the call.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::{settles, Hedger, Refusal, Shared};
use crate::body::ReplayBody;
use crate::classify::{Attempt, Classify, DefaultClassifier, Outcome};
use crate::deadline::Timer;
use crate::error::{BoxError, Error};
use crate::head::HeadCopy;

/// What a hedge needs to be sent: the request's copy, and when it is due.
pub(crate) struct Copy {
    pub(crate) head: HeadCopy,
    pub(crate) body: ReplayBody,
    pub(crate) due: Instant,
    /// The call's deadline, when the request carries one.
    pub(crate) deadline: Option<Instant>,
}

pin_project! {
    /// The response future of [`Hedge`](super::Hedge). Dropping it drops both copies.
    pub struct ResponseFuture<S>
    where
        S: Service<Request<ReplayBody>>,
    {
        #[pin]
        primary: S::Future,
        primary_done: bool,
        // The copy in flight (boxed: one call in twenty at most has one).
        hedge: Option<Pin<Box<S::Future>>>,
        hedge_started: Option<Instant>,
        // What the copy is made from, until it is sent or given up.
        copy: Option<Box<Copy>>,
        #[pin]
        timer: Timer,
        inner: S,
        hedger: Arc<Hedger>,
        shared: Arc<Shared>,
        started: Instant,
    }
}

impl<S> fmt::Debug for ResponseFuture<S>
where
    S: Service<Request<ReplayBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("hedged", &self.hedge.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> ResponseFuture<S>
where
    S: Service<Request<ReplayBody>>,
{
    pub(crate) fn new(
        primary: S::Future,
        copy: Option<Box<Copy>>,
        inner: S,
        hedger: Arc<Hedger>,
        shared: Arc<Shared>,
        started: Instant,
    ) -> Self {
        ResponseFuture {
            primary,
            primary_done: false,
            hedge: None,
            hedge_started: None,
            copy,
            timer: Timer::Unarmed,
            inner,
            hedger,
            shared,
            started,
        }
    }
}

impl<S, ResB> Future for ResponseFuture<S>
where
    S: Service<Request<ReplayBody>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if !*this.primary_done {
                if let Poll::Ready(result) = this.primary.as_mut().poll(cx) {
                    let result = result.map_err(|e| Error::from_box(e.into()));
                    let outcome = DefaultClassifier.classify(Attempt::of(&result));
                    if this.hedge.is_none() || settles(outcome) {
                        *this.hedge = None;
                        *this.copy = None;
                        learn(this.hedger, outcome, *this.started);
                        return Poll::Ready(result);
                    }
                    // A retryable failure while the copy may still succeed: wait for it.
                    *this.primary_done = true;
                }
            }
            if let Some(hedge) = this.hedge.as_mut() {
                if let Poll::Ready(result) = hedge.as_mut().poll(cx) {
                    let result = result.map_err(|e| Error::from_box(e.into()));
                    let outcome = DefaultClassifier.classify(Attempt::of(&result));
                    if *this.primary_done || settles(outcome) {
                        *this.hedge = None;
                        if settles(outcome) {
                            this.hedger.won(this.shared);
                        }
                        if let Some(started) = *this.hedge_started {
                            learn(this.hedger, outcome, started);
                        }
                        return Poll::Ready(result);
                    }
                    // The copy failed first: the attempt goes on alone.
                    *this.hedge = None;
                }
                return Poll::Pending;
            }
            let Some(copy) = this.copy.as_ref() else {
                return Poll::Pending;
            };
            if this.timer.as_mut().poll_at(copy.due, cx).is_pending() {
                return Poll::Pending;
            }
            // The copy is due: sent if the client is ready at once and the upstream's state and
            // budget allow it; given up otherwise.
            let copy = this.copy.take().map(|c| *c);
            let Some(copy) = copy else {
                return Poll::Pending;
            };
            let now = Instant::now();
            let remaining = copy.deadline.map(|d| d.saturating_duration_since(now));
            match this.inner.poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    if this.hedger.admit(this.shared, now, remaining).is_ok() {
                        let request = Request::from_parts(copy.head.to_parts(), copy.body);
                        *this.hedge = Some(Box::pin(this.inner.call(request)));
                        *this.hedge_started = Some(now);
                        this.hedger.sent(this.shared);
                        // The call's span, when it has the field (`outbound.hedged`).
                        tracing::Span::current().record("outbound.hedged", true);
                    }
                }
                // A client that cannot take another request now: no copy.
                Poll::Ready(Err(_)) | Poll::Pending => {
                    this.hedger.refused(this.shared, Refusal::State);
                }
            }
            if this.hedge.is_none() {
                return Poll::Pending;
            }
        }
    }
}

/// A successful attempt's latency is a sample; failures and refusals never are.
fn learn(hedger: &Hedger, outcome: Outcome, started: Instant) {
    if outcome.is_success() {
        let now = Instant::now();
        hedger.record(now.saturating_duration_since(started), now);
    }
}
