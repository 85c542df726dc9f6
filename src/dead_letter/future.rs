use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::{request::Parts, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::record::{millis, store_headers, unix_ms, DeadLetter, FinalOutcome, StoredBody};
use super::sink::{BoxFuture, SinkError};
use super::Config;
use crate::body::{Buffer, ReplayBody};
use crate::classify::{Attempt, Classify, Outcome};
use crate::error::{BoxError, Error, Kind};
use crate::idempotency::{MakeKey, UuidV4};
use crate::retry::Attempts;

pin_project! {
    /// The response future of [`DeadLetterService`](super::DeadLetterService): reads the body,
    /// calls, and on a final failure writes the dead letter before returning.
    ///
    /// # Panics
    ///
    /// When polled again after it completed, as futures may.
    pub struct ResponseFuture<S, C, B>
    where
        S: Service<Request<ReplayBody>>,
    {
        #[pin]
        state: State<S::Future, B, S::Response>,
        inner: S,
        config: Arc<Config>,
        classify: C,
        parts: Option<Parts>,
        body: Option<Bytes>,
        record: bool,
        started: SystemTime,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, R> {
        Buffering { #[pin] buffer: Buffer<B> },
        Calling { #[pin] future: F },
        Recording {
            write: BoxFuture<'static, Result<(), SinkError>>,
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
        record: bool,
        started: SystemTime,
    ) -> Self {
        ResponseFuture {
            state: State::Buffering { buffer },
            inner,
            config,
            classify,
            parts: Some(parts),
            body: None,
            record,
            started,
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
        loop {
            let result = match this.state.as_mut().project() {
                StateProj::Buffering { buffer } => match ready!(buffer.poll(cx)) {
                    Ok(mut buffered) => {
                        *this.body = buffered.bytes().cloned();
                        if this.body.is_none() {
                            tracing::warn!(
                                limit = this.config.max_body,
                                "request body is larger than the dead-letter limit: if the call fails, its body is not kept"
                            );
                        }
                        match (ready!(this.inner.poll_ready(cx)), buffered.take_attempt()) {
                            (Ok(()), Some(body)) => {
                                let parts =
                                    this.parts.clone().expect("the head is kept until the end");
                                let future = this.inner.call(Request::from_parts(parts, body));
                                this.state.set(State::Calling { future });
                                continue;
                            }
                            // The call never went out; a dead letter still records it.
                            (Err(err), _) => Err(Error::from_box(err.into())),
                            (Ok(()), None) => {
                                Err(Error::with_source(Kind::Body, "request body is gone"))
                            }
                        }
                    }
                    Err(err) => Err(Error::with_source(Kind::Body, err)),
                },
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx)).map_err(|e| Error::from_box(e.into()));
                    let outcome = this.classify.classify(Attempt::of(&result));
                    let failed = result.is_err()
                        || matches!(
                            outcome,
                            Outcome::RateLimited | Outcome::Transient | Outcome::ServerError
                        );
                    if !failed {
                        return Poll::Ready(result);
                    }
                    result
                }
                StateProj::Recording { write, result } => {
                    if let Err(err) = ready!(write.as_mut().poll(cx)) {
                        // The caller's outcome is never replaced by the sink's failure.
                        this.config.stats.count(1);
                        tracing::error!(error = %err, "could not write a dead letter; the failed call is returned to the caller");
                    } else {
                        this.config.stats.count(0);
                    }
                    return Poll::Ready(result.take().expect("future polled after completion"));
                }
            };
            match record(
                this.config,
                this.parts,
                this.body,
                this.started,
                &result,
                *this.record,
            ) {
                Some(write) => this.state.set(State::Recording {
                    write,
                    result: Some(result),
                }),
                None => return Poll::Ready(result),
            }
        }
    }
}

/// Builds the dead letter for a failed call and starts writing it, when recording is on.
fn record<R>(
    config: &Arc<Config>,
    parts: &mut Option<Parts>,
    body: &Option<Bytes>,
    started: &SystemTime,
    result: &Result<Response<R>, Error>,
    record: bool,
) -> Option<BoxFuture<'static, Result<(), SinkError>>> {
    if !record {
        return None;
    }
    let parts = parts.take()?;
    let (outcome, attempts, waited) = match result {
        Ok(response) => {
            let attempts = response.extensions().get::<Attempts>();
            (
                FinalOutcome {
                    status: Some(response.status().as_u16()),
                    error_kind: None,
                    error: None,
                },
                attempts.map_or(1, |a| a.count),
                attempts.map_or(std::time::Duration::ZERO, |a| a.waited),
            )
        }
        Err(error) => (
            FinalOutcome {
                status: None,
                error_kind: Some(kind_name(error.kind()).to_owned()),
                error: Some(error.to_string()),
            },
            error.attempts(),
            error.waited(),
        ),
    };
    let letter = DeadLetter {
        version: 1,
        id: UuidV4.make_key().to_str().unwrap_or_default().to_owned(),
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: store_headers(&parts.headers, &config.redact),
        body: body.as_ref().map(StoredBody::from_bytes),
        body_kept: body.is_some(),
        idempotency_key: parts
            .headers
            .get(&config.idempotency_header)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        outcome,
        attempts,
        waited_ms: millis(waited),
        first_attempt_at_ms: unix_ms(*started),
        last_attempt_at_ms: unix_ms(SystemTime::now()),
    };
    tracing::warn!(id = %letter.id, method = %letter.method, uri = %letter.uri, "recording a dead letter");
    let sink = config.sink.clone();
    Some(Box::pin(async move { sink.write(letter).await }))
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Transport => "transport",
        Kind::Timeout => "timeout",
        Kind::Body => "body",
        Kind::RateLimited { .. } => "rate_limited",
        Kind::Throttled { .. } => "throttled",
        Kind::CircuitOpen { .. } => "circuit_open",
    }
}
