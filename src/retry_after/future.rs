use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::{Answer, Gates, Hold, Released};
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
        Held { held: Box<Held<S, B>> },
        // `released`: for a request its gate held, until its answer.
        Calling { #[pin] future: F, released: Option<Released> },
        Refused { error: Option<Error> },
    }
}

/// A request held in its gate's line, with the ready inner service that sends it.
struct Held<S, B> {
    hold: Hold,
    /// Once the hold let the request go, while it waits for the inner service to be ready.
    released: Option<Released>,
    inner: S,
    request: Option<Request<B>>,
}

impl<S, B> Held<S, B>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    /// Waits for the hold, then sends the request.
    fn poll_call(&mut self, cx: &mut Context<'_>) -> Poll<Result<(S::Future, Released), Error>> {
        if self.released.is_none() {
            if let Err(mut error) = ready!(self.hold.poll_pass(cx, Instant::now())) {
                error.set_upstream(self.request.as_ref().and_then(|r| r.uri().authority()));
                return Poll::Ready(Err(error));
            }
            self.released = Some(self.hold.released());
        }
        if let Err(e) = ready!(self.inner.poll_ready(cx)) {
            // Never sent: its turn goes to the next held request.
            self.released = None;
            return Poll::Ready(Err(Error::from_box(e.into())));
        }
        let released = self.released.take().expect("let go above");
        let request = self.request.take().expect("the request is sent only once");
        Poll::Ready(Ok((self.inner.call(request), released)))
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
            state: State::Calling {
                future,
                released: None,
            },
            gates,
            key,
        }
    }

    pub(crate) fn held(
        hold: Hold,
        inner: S,
        request: Request<B>,
        gates: Arc<Gates>,
        key: Option<PartitionKey>,
    ) -> Self {
        ResponseFuture {
            state: State::Held {
                held: Box::new(Held {
                    hold,
                    released: None,
                    inner,
                    request: Some(request),
                }),
            },
            gates,
            key,
        }
    }

    pub(crate) fn refused(error: Error, gates: Arc<Gates>) -> Self {
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
                StateProj::Held { held } => {
                    let (future, released) = ready!(held.poll_call(cx))?;
                    this.state.set(State::Calling {
                        future,
                        released: Some(released),
                    });
                }
                StateProj::Calling { future, released } => {
                    let result = ready!(future.poll(cx));
                    if let Some(released) = released.take() {
                        // Its answer is given to the gate below.
                        released.answered();
                    }
                    return Poll::Ready(match result {
                        Ok(mut response) => {
                            this.gates.observe(this.key.as_ref(), &mut response);
                            Ok(response)
                        }
                        Err(e) => {
                            this.gates.answered_by(this.key.as_ref(), Answer::Neutral);
                            Err(Error::from_box(e.into()))
                        }
                    });
                }
                StateProj::Refused { error } => {
                    let error = error.take().expect("future polled after completion");
                    return Poll::Ready(Err(error));
                }
            }
        }
    }
}
