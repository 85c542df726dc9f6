use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::{Gates, Pass};
use crate::error::{BoxError, Error};
use crate::partition::PartitionKey;

pin_project! {
    /// The response future of [`RetryAfter`](super::RetryAfter).
    ///
    /// # Panics
    ///
    /// When polled again after it completed, as futures may.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B, S::Future>,
        gates: Arc<Gates>,
        key: Option<PartitionKey>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, F> {
        // Boxed: held requests are rare, and the calling state stays small to move.
        Waiting { held: Pin<Box<Held<S, B>>> },
        Calling { #[pin] future: F },
        Refused { error: Option<Error> },
    }
}

pin_project! {
    /// A request held at the closed gate.
    struct Held<S, B> {
        #[pin]
        sleep: Sleep,
        // When its patience (`max_wait` from its first meeting with the closed gate) ends.
        deadline: Instant,
        inner: S,
        request: Option<Request<B>>,
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn calling(future: S::Future, gates: Arc<Gates>, key: Option<PartitionKey>) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            gates,
            key,
        }
    }

    pub(crate) fn waiting(
        until: Instant,
        inner: S,
        request: Request<B>,
        gates: Arc<Gates>,
        key: Option<PartitionKey>,
    ) -> Self {
        gates.count_delayed();
        ResponseFuture {
            state: State::Waiting {
                held: Box::pin(Held {
                    sleep: tokio::time::sleep_until(until),
                    deadline: {
                        let now = Instant::now();
                        now.checked_add(gates.settings.max_wait).unwrap_or(until)
                    },
                    inner,
                    request: Some(request),
                }),
            },
            gates,
            key,
        }
    }

    pub(crate) fn refused(error: Error, gates: Arc<Gates>) -> Self {
        gates.count_refused();
        ResponseFuture {
            state: State::Refused { error: Some(error) },
            gates,
            key: None,
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
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { held } => {
                    let held = held.as_mut().project();
                    let (mut sleep, inner, request) = (held.sleep, held.inner, held.request);
                    ready!(sleep.as_mut().poll(cx));
                    // Another response may have closed the gate again while this one slept.
                    match this.gates.pass_by(this.key.as_ref(), Some(*held.deadline)) {
                        Pass::Open => {}
                        Pass::Wait(until) => {
                            sleep.reset(until);
                            continue;
                        }
                        Pass::Refuse(mut error) => {
                            error.set_upstream(request.as_ref().and_then(|r| r.uri().authority()));
                            this.gates.count_refused();
                            return Poll::Ready(Err(error));
                        }
                    }
                    ready!(inner.poll_ready(cx)).map_err(|e| Error::from_box(e.into()))?;
                    let request = request.take().expect("the request is sent only once");
                    let future = inner.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let mut response =
                        ready!(future.poll(cx)).map_err(|e| Error::from_box(e.into()))?;
                    this.gates.observe(this.key.as_ref(), &mut response);
                    return Poll::Ready(Ok(response));
                }
                StateProj::Refused { error } => {
                    let error = error.take().expect("future polled after completion");
                    return Poll::Ready(Err(error));
                }
            }
        }
    }
}
