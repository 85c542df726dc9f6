use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::hold::HeldCall;
use super::Registry;
use super::{Admission, Breaker};
use crate::classify::{Attempt, Classify, Outcome};
use crate::error::{BoxError, Error};

/// An admitted call's right to report its outcome. A probe dropped before its outcome is known
/// gives its permit back.
pub(crate) struct Permit {
    breaker: Arc<Breaker>,
    registry: Arc<Registry>,
    admission: Admission,
    done: bool,
}

impl Permit {
    pub(crate) fn new(
        breaker: Arc<Breaker>,
        registry: Arc<Registry>,
        admission: Admission,
    ) -> Self {
        Permit {
            breaker,
            registry,
            admission,
            done: false,
        }
    }

    fn finish(&mut self, outcome: Outcome, started: Option<Instant>) {
        self.done = true;
        self.registry
            .finish(&self.breaker, self.admission, outcome, started);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let (false, Admission::Probe { round }) = (self.done, self.admission) {
            self.breaker.release_probe(round);
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// The response future of [`CircuitBreaker`](super::CircuitBreaker).
    ///
    /// # Panics
    ///
    /// When polled again after it completed, as futures may.
    pub struct ResponseFuture<S, B, C>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        future: Option<S::Future>,
        // A call waiting for its circuit (boxed: rare, and the calling state stays small).
        held: Option<Box<HeldCall<S, Request<B>>>>,
        permit: Option<Permit>,
        classify: Option<C>,
        started: Option<Instant>,
        error: Option<Error>,
    }
}

impl<S, B, C> fmt::Debug for ResponseFuture<S, B, C>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("permit", &self.permit)
            .finish_non_exhaustive()
    }
}

impl<S, B, C> ResponseFuture<S, B, C>
where
    S: Service<Request<B>>,
{
    pub(crate) fn calling(
        future: S::Future,
        permit: Permit,
        classify: C,
        started: Option<Instant>,
    ) -> Self {
        ResponseFuture {
            future: Some(future),
            held: None,
            permit: Some(permit),
            classify: Some(classify),
            started,
            error: None,
        }
    }

    pub(crate) fn held(held: HeldCall<S, Request<B>>, classify: C) -> Self {
        ResponseFuture {
            future: None,
            held: Some(Box::new(held)),
            permit: None,
            classify: Some(classify),
            started: None,
            error: None,
        }
    }

    pub(crate) fn rejected(error: Error) -> Self {
        ResponseFuture {
            future: None,
            held: None,
            permit: None,
            classify: None,
            started: None,
            error: Some(error),
        }
    }
}

impl<S, B, C, ResB> Future for ResponseFuture<S, B, C>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    C: Classify,
{
    type Output = Result<Response<ResB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(held) = this.held.as_mut() {
            let (admission, future) = ready!(held.poll_call(cx))?;
            let (breaker, registry) = held.breaker();
            *this.permit = Some(Permit::new(breaker, registry, admission));
            *this.started = held.needs_clock().then(Instant::now);
            *this.held = None;
            this.future.set(Some(future));
        }
        let Some(future) = this.future.as_pin_mut() else {
            return Poll::Ready(Err(this
                .error
                .take()
                .expect("future polled after completion")));
        };
        let result = ready!(future.poll(cx)).map_err(|e| Error::from_box(e.into()));
        if let (Some(mut permit), Some(classify)) = (this.permit.take(), this.classify.as_ref()) {
            // A call refused before it reached the upstream says nothing of its health.
            let outcome = match &result {
                Err(error) if error.is_refusal() => Outcome::Rejected,
                result => classify.classify(Attempt::of(result)),
            };
            permit.finish(outcome, *this.started);
        }
        Poll::Ready(result)
    }
}
