use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::{sample_of, Limiter, Registry};
use crate::error::{BoxError, Error};
use crate::line::HoldTimer;
use crate::rate_limit::RateLimitInfo;

/// A call's place under its upstream's limit: given back when the call's future completes,
/// with what the answer said, or when it is dropped.
pub(crate) struct Permit {
    registry: Arc<Registry>,
    limiter: Arc<Limiter>,
    sent: Instant,
    done: bool,
}

impl Permit {
    pub(crate) fn new(registry: Arc<Registry>, limiter: Arc<Limiter>, sent: Instant) -> Self {
        Permit {
            registry,
            limiter,
            sent,
            done: false,
        }
    }

    fn finish<B>(&mut self, result: &mut Result<Response<B>, Error>) {
        self.done = true;
        let info = match result {
            Ok(response) => RateLimitInfo::of_response(response),
            Err(_) => None,
        };
        let now = Instant::now();
        let sample = sample_of(result, info.as_ref(), self.sent, now);
        self.registry.release(&self.limiter, sample, now);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            self.registry.release(&self.limiter, None, Instant::now());
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("upstream", &self.limiter.key)
            .finish_non_exhaustive()
    }
}

/// A call's place in its upstream's line. Dropped before its turn, it leaves the line.
pub(crate) struct Waiting {
    registry: Arc<Registry>,
    limiter: Arc<Limiter>,
    ticket: Option<u64>,
    until: Instant,
    timer: HoldTimer,
}

impl Waiting {
    pub(crate) fn new(
        registry: Arc<Registry>,
        limiter: Arc<Limiter>,
        ticket: u64,
        until: Instant,
    ) -> Self {
        Waiting {
            registry,
            limiter,
            ticket: Some(ticket),
            until,
            timer: HoldTimer::default(),
        }
    }

    /// A place when the call's turn comes; the limit's error when its wait runs out first.
    fn poll_place(&mut self, cx: &mut Context<'_>) -> Poll<Result<Permit, Error>> {
        let Some(ticket) = self.ticket else {
            panic!("future polled after completion");
        };
        if self.registry.turn(&self.limiter, ticket, cx.waker()) {
            self.ticket = None;
            let permit = Permit::new(self.registry.clone(), self.limiter.clone(), Instant::now());
            return Poll::Ready(Ok(permit));
        }
        ready!(self.timer.poll_until(self.until, cx));
        self.ticket = None;
        self.registry.leave(&self.limiter, ticket);
        Poll::Ready(Err(self.registry.overloaded(&self.limiter, None)))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.registry.leave(&self.limiter, ticket);
        }
    }
}

/// A call waiting in line, with the ready inner service and the request it will send.
struct Held<S, B> {
    waiting: Waiting,
    inner: S,
    request: Option<Request<B>>,
}

pin_project! {
    /// The response future of [`Concurrency`](super::Concurrency).
    ///
    /// # Panics
    ///
    /// When polled again after it completed, as futures may.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        future: Option<S::Future>,
        // A call waiting for a place (boxed: the calling state stays small).
        held: Option<Box<Held<S, B>>>,
        permit: Option<Permit>,
        error: Option<Error>,
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("permit", &self.permit)
            .field("waiting", &self.held.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn calling(future: S::Future, permit: Permit) -> Self {
        ResponseFuture {
            future: Some(future),
            held: None,
            permit: Some(permit),
            error: None,
        }
    }

    pub(crate) fn waiting(waiting: Waiting, inner: S, request: Request<B>) -> Self {
        ResponseFuture {
            future: None,
            held: Some(Box::new(Held {
                waiting,
                inner,
                request: Some(request),
            })),
            permit: None,
            error: None,
        }
    }

    pub(crate) fn refused(error: Error) -> Self {
        ResponseFuture {
            future: None,
            held: None,
            permit: None,
            error: Some(error),
        }
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(held) = this.held.as_mut() {
            let result = ready!(held.waiting.poll_place(cx));
            let request = held.request.take();
            let future = match (result, request) {
                (Ok(permit), Some(request)) => {
                    *this.permit = Some(permit);
                    held.inner.call(request)
                }
                (Err(mut error), request) => {
                    error.set_upstream(request.as_ref().and_then(|r| r.uri().authority()));
                    *this.held = None;
                    return Poll::Ready(Err(error));
                }
                (Ok(_), None) => panic!("future polled after completion"),
            };
            *this.held = None;
            this.future.set(Some(future));
        }
        let Some(future) = this.future.as_pin_mut() else {
            return Poll::Ready(Err(this
                .error
                .take()
                .expect("future polled after completion")));
        };
        let mut result = ready!(future.poll(cx)).map_err(|e| Error::from_box(e.into()));
        if let Some(mut permit) = this.permit.take() {
            permit.finish(&mut result);
        }
        Poll::Ready(result)
    }
}
