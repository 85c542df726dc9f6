use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::{request::Parts, Method, Request, Response, Uri};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::record::{millis, new_id, outcome_of, store_headers, unix_ms, DeadLetter, StoredBody};
use super::sink::BoxFuture;
use super::{Config, Recorded};
use crate::body::{Buffer, Buffered, ReplayBody};
use crate::classify::{Attempt, Classify, Outcome};
use crate::error::{BoxError, Error, Kind};
use crate::retry::Handed;

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
        // The service to call once the body is read (`None` when the call went out at once).
        inner: Option<S>,
        config: Arc<Config>,
        classify: C,
        head: Head,
        body: Option<Bytes>,
        record: bool,
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

/// A dead letter on its way to the sink.
///
/// On a tokio runtime the write runs in a task of its own, so it finishes even when the caller
/// drops this future (a `select!`, a timeout, a client that went away); the future only waits
/// for the receipt. Without a runtime the write runs here, inside the caller's future.
pub(crate) struct Write {
    id: String,
    how: How,
}

enum How {
    Task(tokio::task::JoinHandle<bool>),
    Inline(BoxFuture<'static, bool>),
}

impl Write {
    fn start(config: &Arc<Config>, letter: DeadLetter) -> Self {
        let id = letter.id.clone();
        let guard = config.writer.start();
        let sink = config.sink.clone();
        let stats = config.stats.clone();
        let write = async move {
            let stored = match sink.write(letter).await {
                Ok(()) => {
                    stats.count(0);
                    true
                }
                Err(err) => {
                    stats.count(1);
                    tracing::error!(error = %err, "could not write a dead letter; the failed call is returned to the caller");
                    false
                }
            };
            drop(guard);
            stored
        };
        let how = match tokio::runtime::Handle::try_current() {
            Ok(handle) => How::Task(handle.spawn(write)),
            Err(_) => How::Inline(Box::pin(write)),
        };
        Write { id, how }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Recorded> {
        let stored = match &mut self.how {
            // A task that panicked or was cancelled (runtime shutdown) did not store the letter.
            How::Task(handle) => ready!(Pin::new(handle).poll(cx)).unwrap_or(false),
            How::Inline(write) => ready!(write.as_mut().poll(cx)),
        };
        Poll::Ready(Recorded {
            id: self.id.clone(),
            stored,
        })
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
    ) -> Self {
        ResponseFuture {
            state: State::Buffering { buffer },
            inner: Some(inner),
            config,
            classify,
            head: Head::Kept(parts),
            body: None,
            record,
            started: None,
        }
    }

    /// A call already sent by the service (with `head_from_inner`): the layer inside hands
    /// the head and body back if it fails; `sent` is kept should they not come back.
    pub(crate) fn passing(
        future: S::Future,
        config: Arc<Config>,
        classify: C,
        sent: (Method, Uri),
        record: bool,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            inner: None,
            config,
            classify,
            head: Head::Sent(sent.0, sent.1),
            body: None,
            record,
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
                    *this.body = buffered.bytes().cloned();
                    if this.body.is_none() {
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
                let Some(inner) = this.inner.as_mut() else {
                    return Poll::Ready(Err(Error::with_source(
                        Kind::Body,
                        "request was already sent",
                    )));
                };
                match (ready!(inner.poll_ready(cx)), buffered.take_attempt()) {
                    (Ok(()), Some(body)) => match this.head.send() {
                        Some(parts) => {
                            let future = inner.call(Request::from_parts(parts, body));
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
                let mut result = ready!(future.poll(cx)).map_err(|e| Error::from_box(e.into()));
                let handed = if this.config.head_from_inner {
                    match &mut result {
                        Ok(response) => response.extensions_mut().remove::<Handed>(),
                        Err(error) => error.take_handed(),
                    }
                } else {
                    None
                };
                let outcome = this.classify.classify(Attempt::of(&result));
                let failed = result.is_err()
                    || matches!(
                        outcome,
                        Outcome::RateLimited | Outcome::Transient | Outcome::ServerError
                    );
                if !failed {
                    return Poll::Ready(result);
                }
                if let Some(Handed { parts, body }) = handed {
                    *this.head = Head::Kept(parts);
                    if this.body.is_none() {
                        *this.body = body.filter(|b| b.len() <= this.config.max_body);
                    }
                }
                result
            }
            StateProj::Recording { write, result } => {
                let recorded = ready!(write.poll(cx));
                let mut result = result.take().expect("future polled after completion");
                match &mut result {
                    Ok(response) => {
                        response.extensions_mut().insert(recorded);
                    }
                    Err(error) => error.set_dead_letter(recorded),
                }
                return Poll::Ready(result);
            }
        };
        let refused = matches!(&result, Err(e) if e.is_refusal());
        let record = *this.record && (this.config.record_refusals || !refused);
        match record
            .then(|| letter(this.config, this.head, this.body, this.started, &result))
            .flatten()
        {
            Some(letter) => this.state.set(State::Recording {
                write: Write::start(this.config, letter),
                result: Some(result),
            }),
            None => return Poll::Ready(result),
        }
    }
}

/// The request head a letter is made from.
enum Head {
    /// Kept here (or handed back by the layer inside).
    Kept(Parts),
    /// Sent on, with `head_from_inner`: the layer inside hands it back with a failure. The
    /// method and URI stay, for a letter should it not come back.
    Sent(Method, Uri),
    /// Used for a letter.
    Gone,
}

impl Head {
    /// A copy of the head kept here, to send (a call with `head_from_inner` went out at once
    /// and never gets here).
    fn send(&self) -> Option<Parts> {
        match self {
            Head::Kept(parts) => Some(parts.clone()),
            Head::Sent(..) | Head::Gone => None,
        }
    }

    fn take(&mut self) -> Option<Parts> {
        match std::mem::replace(self, Head::Gone) {
            Head::Kept(parts) => Some(parts),
            Head::Sent(method, uri) => {
                // Cannot happen with the retry layer `Outbound` puts inside: logged, and the
                // letter still records the call.
                tracing::error!("the request head of a failed call did not come back; its dead letter keeps the method and URI only");
                let (mut parts, ()) = Request::new(()).into_parts();
                parts.method = method;
                parts.uri = uri;
                Some(parts)
            }
            Head::Gone => None,
        }
    }
}

/// The dead letter of a failed call.
fn letter<R>(
    config: &Arc<Config>,
    head: &mut Head,
    body: &Option<Bytes>,
    started: &Option<SystemTime>,
    result: &Result<Response<R>, Error>,
) -> Option<DeadLetter> {
    let parts = head.take()?;
    let now = SystemTime::now();
    let (outcome, attempts, waited) = outcome_of(result);
    let uri_redacted = !config.keep_secret_uris && config.redactor.has_secrets(&parts.uri);
    let uri = if config.keep_secret_uris {
        parts.uri.to_string()
    } else {
        config.redactor.uri(&parts.uri)
    };
    let letter = DeadLetter {
        version: 1,
        id: new_id(),
        method: parts.method.to_string(),
        uri,
        uri_redacted,
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
        first_attempt_at_ms: unix_ms(started.unwrap_or(now)),
        last_attempt_at_ms: unix_ms(now),
    };
    let logged_uri = if config.keep_secret_uris {
        config.redactor.uri(&parts.uri)
    } else {
        letter.uri.clone()
    };
    tracing::warn!(id = %letter.id, method = %letter.method, uri = %logged_uri, "recording a dead letter");
    Some(letter)
}
