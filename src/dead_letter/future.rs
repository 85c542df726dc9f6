use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::SystemTime;

use http::{request::Parts, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::recording::{self, Kept, Write};
use super::Config;
use super::MissingBody;
use crate::body::{Buffer, Buffered, ReplayBody};
use crate::classify::{Attempt, Classify};
use crate::error::{BoxError, Error, Kind};

pin_project! {
    /// The response future of [`DeadLetterService`](super::DeadLetterService): reads the body,
    /// calls, and on a final failure writes the dead letter before returning.
    ///
    /// # Panics
    ///
    /// When polled again after it completed, as futures may.
    #[project = ResponseFutureProj]
    pub struct ResponseFuture<S, C, B>
    where
        S: Service<Request<ReplayBody>>,
    {
        #[pin]
        state: State<S::Future, B, S::Response>,
        inner: S,
        config: Arc<Config>,
        classify: C,
        // The request head, kept for a letter.
        head: Option<Parts>,
        // What a letter can keep of the body (`None`: not read yet).
        body: Option<Kept>,
        replaying: bool,
        // When the call was first seen pending (a call that ends in its first poll took no
        // time worth a clock read).
        started: Option<SystemTime>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, R> {
        Buffering { #[pin] buffer: Buffer<B> },
        // The body is read; waiting for the inner service to be ready.
        Buffered { buffered: Buffered },
        Calling { #[pin] future: F },
        Recording {
            write: Write,
            result: Option<Result<R, Error>>,
        },
    }
}

impl<S, C, B> fmt::Debug for ResponseFuture<S, C, B>
where
    S: Service<Request<ReplayBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
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
        replaying: bool,
    ) -> Self {
        ResponseFuture {
            state: State::Buffering { buffer },
            inner,
            config,
            classify,
            head: Some(parts),
            body: None,
            replaying,
            started: None,
        }
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
        let poll = step(&mut this, cx);
        if poll.is_pending() && this.started.is_none() {
            *this.started = Some(SystemTime::now());
        }
        poll
    }
}

/// Runs the call as far as it goes without waiting.
fn step<S, C, B, ResB>(
    this: &mut ResponseFutureProj<'_, S, C, B>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResB>, Error>>
where
    S: Service<Request<ReplayBody>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    C: Classify,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    loop {
        let result = match this.state.as_mut().project() {
            StateProj::Buffering { buffer } => match ready!(buffer.poll(cx)) {
                Ok(buffered) => {
                    let kept = Kept::of(Some(&buffered));
                    let streamed = matches!(kept, Kept::Missing(MissingBody::Streamed));
                    *this.body = Some(kept);
                    if streamed {
                        tracing::warn!(
                            limit = this.config.max_body,
                            "request body is larger than the dead-letter limit: if the call fails, its body is not kept"
                        );
                    }
                    this.state.set(State::Buffered { buffered });
                    continue;
                }
                Err(err) => Err(Error::with_source(Kind::Body, err)),
            },
            StateProj::Buffered { buffered } => {
                match (ready!(this.inner.poll_ready(cx)), buffered.take_attempt()) {
                    (Ok(()), Some(body)) => match this.head.clone() {
                        Some(parts) => {
                            let future = this.inner.call(Request::from_parts(parts, body));
                            this.state.set(State::Calling { future });
                            continue;
                        }
                        None => Err(Error::with_source(Kind::Body, "request head is gone")),
                    },
                    // The call never went out; a dead letter still records it.
                    (Err(err), _) => Err(Error::from_box(err.into())),
                    (Ok(()), None) => Err(Error::with_source(Kind::Body, "request body is gone")),
                }
            }
            StateProj::Calling { future } => {
                let result = ready!(future.poll(cx)).map_err(|e| Error::from_box(e.into()));
                let outcome = this.classify.classify(Attempt::of(&result));
                if !recording::failed(&result, outcome) {
                    return Poll::Ready(result);
                }
                result
            }
            StateProj::Recording { write, result } => {
                let recorded = ready!(write.poll(cx));
                let mut result = result.take().expect("future polled after completion");
                recording::attach(recorded, &mut result);
                return Poll::Ready(result);
            }
        };
        let head = this.head.take();
        match head.filter(|_| recording::wanted(this.config, *this.replaying, &result)) {
            Some(parts) => {
                let letter = recording::letter(
                    this.config,
                    parts,
                    this.body
                        .take()
                        .unwrap_or(Kept::Missing(MissingBody::Unread)),
                    *this.started,
                    &result,
                );
                this.state.set(State::Recording {
                    write: Write::start(this.config, letter),
                    result: Some(result),
                });
            }
            None => return Poll::Ready(result),
        }
    }
}
