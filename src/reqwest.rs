//! reqwest as the transport, and the whole stack as reqwest-middleware's middleware.
//!
//! Two ways in, for the two ways reqwest is used:
//!
//! - [`ReqwestService`] (feature `reqwest`) makes a [`reqwest::Client`] a
//!   `Service<http::Request<ReplayBody>>`, the transport any of the crate's layers or
//!   [`Outbound`](crate::Outbound) wraps: `Outbound::background().service(ReqwestService::new(client))`.
//! - `OutboundMiddleware` (feature `reqwest-middleware`) runs an [`Outbound`](crate::Outbound) stack inside a
//!   `reqwest_middleware::ClientWithMiddleware`: adopting it is one line,
//!   `ClientBuilder::new(client).with(OutboundMiddleware::new(Outbound::new()))`.
//!
//! Either way the stack's rules apply as they do around a hyper-util client: `Retry-After` and
//! `RateLimit-*` honoured, one idempotency key on every attempt of a write, per-upstream
//! breakers, gates, limits and buckets, dead letters for what finally fails.
//!
//! # Bodies
//!
//! A body held in memory (reqwest's `Body::from(bytes)`, `.json(..)`, `.form(..)`) is sent on
//! every attempt without a copy. A streaming reqwest body (`Body::wrap_stream`, a multipart
//! form with a file part) can be read only once: the stack buffers it up to its limit
//! ([`RetryLayer::max_buffered_body`](crate::RetryLayer::max_buffered_body), 1 MiB) and sends
//! a longer one once, unretried. For an upload of any size that can be retried, send a
//! [`ReplayBody`] made by a [`BodySource`](crate::body::BodySource) through
//! [`ReqwestService`], or through `OutboundMiddleware` give the request no body and the
//! source as an extension (`client.post(url).with_extension(source)`): each attempt makes the
//! body again.
//!
//! # reqwest's own retries
//!
//! reqwest 0.13 retries by itself only what is known to be safe to send again and never
//! reached the server (an HTTP/2 `REFUSED_STREAM`, a connection closed before the request was
//! written), within a budget of 20 % extra requests. Those attempts happen below the stack and
//! are not counted by it; they cannot duplicate a write. For an exact count of what reaches the
//! upstream (the throttle's tokens, the breaker's window, the retry budget), turn them off with
//! `reqwest::ClientBuilder::retry(reqwest::retry::never())`. Do not add reqwest-retry's
//! middleware to the same client: two retry policies multiply each other's attempts.
//!
//! # Errors
//!
//! reqwest's errors print the whole URL, query secrets included; [`ReqwestService`] returns
//! them [`without_url`](::reqwest::Error::without_url), so the stack's errors, logs and dead
//! letters stay redacted. `OutboundMiddleware` returns the stack's [`Error`](crate::Error) inside
//! `reqwest_middleware::Error::Middleware`; `err.downcast_ref::<tower_outbound::Error>()` gets it,
//! with its kind, attempts and dead letter, and the transport's error as its source.
//!
//! # Example
//!
//! ```no_run
//! # #[cfg(feature = "reqwest-middleware")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_outbound::reqwest::OutboundMiddleware;
//! use tower_outbound::Outbound;
//!
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(OutboundMiddleware::new(Outbound::background()))
//!     .build();
//! let response = client.get("https://api.example.com/v1/items").send().await?;
//! println!("{}", response.status());
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::ReplayBody;
use crate::error::BoxError;

/// A [`reqwest::Client`] as a `Service<http::Request<ReplayBody>>`: the
/// transport for the crate's layers and for [`Outbound`](crate::Outbound). See the [module docs](self).
///
/// Responses are `http::Response<reqwest::Body>`; errors are reqwest's, without the URL.
/// Clones share the client (and its connection pool).
#[derive(Clone, Debug, Default)]
pub struct ReqwestService {
    client: ::reqwest::Client,
}

impl ReqwestService {
    /// Sends the stack's requests through `client`.
    pub fn new(client: ::reqwest::Client) -> Self {
        ReqwestService { client }
    }

    /// The client.
    pub fn get_ref(&self) -> &::reqwest::Client {
        &self.client
    }
}

impl From<::reqwest::Client> for ReqwestService {
    fn from(client: ::reqwest::Client) -> Self {
        ReqwestService::new(client)
    }
}

impl Service<http::Request<ReplayBody>> for ReqwestService {
    type Response = http::Response<::reqwest::Body>;
    type Error = ::reqwest::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // reqwest's client is always ready: its pool waits inside the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<ReplayBody>) -> Self::Future {
        let state = match to_reqwest(request) {
            Ok(request) => State::Sending {
                pending: self.client.call(request),
            },
            Err(err) => State::Failed {
                error: Some(err.without_url()),
            },
        };
        ResponseFuture { state }
    }
}

type Pending = <::reqwest::Client as Service<::reqwest::Request>>::Future;

pin_project! {
    /// The response future of [`ReqwestService`]: reqwest's own, with the response turned
    /// into an `http::Response` that keeps its URL for a `reqwest::Response` made from it.
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Sending { #[pin] pending: Pending },
        Failed { error: Option<::reqwest::Error> },
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<::reqwest::Body>, ::reqwest::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Sending { pending } => {
                let response = ready!(pending.poll(cx)).map_err(::reqwest::Error::without_url)?;
                Poll::Ready(Ok(to_http(response)))
            }
            StateProj::Failed { error } => match error.take() {
                Some(error) => Poll::Ready(Err(error)),
                None => panic!("ResponseFuture polled after it completed"),
            },
        }
    }
}

/// The request as reqwest takes it: a body in memory is handed over without a copy, any other
/// is streamed.
fn to_reqwest(request: http::Request<ReplayBody>) -> Result<::reqwest::Request, ::reqwest::Error> {
    let (parts, body) = request.into_parts();
    let body = match body.bytes() {
        Some(bytes) => ::reqwest::Body::from(bytes),
        None => ::reqwest::Body::wrap(Streamed::new(body)),
    };
    ::reqwest::Request::try_from(http::Request::from_parts(parts, body))
}

/// The response as an `http::Response`, its URL kept in the extensions where reqwest looks for
/// it when a `reqwest::Response` is made from it again.
fn to_http(response: ::reqwest::Response) -> http::Response<::reqwest::Body> {
    use ::reqwest::ResponseBuilderExt;
    let url = response.url().clone();
    let mut response = http::Response::from(response);
    if let Ok(carrier) = http::Response::builder().url(url).body(()) {
        let (parts, ()) = carrier.into_parts();
        response.extensions_mut().extend(parts.extensions);
    }
    response
}

/// A streamed [`ReplayBody`] as reqwest takes a body: `Sync`. It is only ever polled through
/// `&mut`, so the lock is never taken; the size is read once, up front.
struct Streamed {
    body: Mutex<ReplayBody>,
    hint: SizeHint,
}

impl Streamed {
    fn new(body: ReplayBody) -> Self {
        let hint = body.size_hint();
        Streamed {
            body: Mutex::new(body),
            hint,
        }
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let body = match this.body.get_mut() {
            Ok(body) => body,
            Err(poisoned) => poisoned.into_inner(),
        };
        let frame = ready!(Pin::new(&mut *body).poll_frame(cx));
        this.hint = body.size_hint();
        Poll::Ready(frame)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(feature = "reqwest-middleware")]
pub use middleware::OutboundMiddleware;

#[cfg(feature = "reqwest-middleware")]
mod middleware {
    use std::fmt;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http::Extensions;
    use reqwest_middleware::{Middleware, Next};
    use tower_service::Service;

    use super::{to_http, to_reqwest};
    use crate::body::{BodySource, ReplayBody};
    use crate::error::{Error, Kind};
    use crate::outbound::{Outbound, OutboundService};

    /// An [`Outbound`] stack as reqwest-middleware's [`Middleware`]: every request of a
    /// `ClientWithMiddleware` goes through the whole stack, and each attempt through the
    /// middleware after it and the client. See the [module docs](super).
    ///
    /// The per-upstream state (breakers, gates, limits, buckets, retry budgets) and the
    /// counters are the stack's, shared by every request of every client built with this
    /// middleware (clones share them too).
    ///
    /// Each attempt gets a copy of the request's extensions as they were when the middleware was
    /// called; what the middleware after it put in them does not come back.
    ///
    /// An upload that must survive a retry without being held in memory gives the request no
    /// body and a [`BodySource`] as an extension
    /// (`client.post(url).with_extension(source).send()`): each attempt makes the body again,
    /// as through [`ReqwestService`](super::ReqwestService). A request with a body and a
    /// source fails with [`Kind::Body`] before anything is sent.
    #[derive(Clone)]
    pub struct OutboundMiddleware {
        // The stack, made once: its records are shared by every call, whatever `Next` it runs.
        stack: OutboundService<()>,
    }

    impl OutboundMiddleware {
        /// Runs `stack` around the rest of the middleware chain.
        pub fn new(stack: Outbound) -> Self {
            OutboundMiddleware {
                stack: stack.service(()),
            }
        }
    }

    impl From<Outbound> for OutboundMiddleware {
        fn from(stack: Outbound) -> Self {
            OutboundMiddleware::new(stack)
        }
    }

    impl fmt::Debug for OutboundMiddleware {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("OutboundMiddleware")
                .field("stack", &self.stack)
                .finish()
        }
    }

    #[async_trait::async_trait]
    impl Middleware for OutboundMiddleware {
        async fn handle(
            &self,
            request: ::reqwest::Request,
            extensions: &mut Extensions,
            next: Next<'_>,
        ) -> reqwest_middleware::Result<::reqwest::Response> {
            let request = http::Request::<::reqwest::Body>::try_from(request)
                .map_err(|e| reqwest_middleware::Error::Reqwest(e.without_url()))?;
            let source = extensions.get::<BodySource>().cloned();
            let mut service = self.stack.with_client(Rest {
                next,
                extensions: extensions.clone(),
            });
            let response = match source {
                None => call(&mut service, request).await,
                Some(source) => {
                    if request.body().as_bytes() != Some(&[]) {
                        return Err(reqwest_middleware::Error::middleware(Error::with_source(
                            Kind::Body,
                            "the request has a body and a BodySource extension: give it one",
                        )));
                    }
                    let (parts, _) = request.into_parts();
                    call(
                        &mut service,
                        http::Request::from_parts(parts, ReplayBody::from(source)),
                    )
                    .await
                }
            };
            Ok(::reqwest::Response::from(
                response.map_err(reqwest_middleware::Error::middleware)?,
            ))
        }
    }

    /// One call through the stack, once it is ready.
    async fn call<S, B>(service: &mut S, request: http::Request<B>) -> Result<S::Response, Error>
    where
        S: Service<http::Request<B>, Error = Error>,
    {
        std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
        service.call(request).await
    }

    /// The rest of the chain as the stack's client: each attempt runs it once.
    #[derive(Clone)]
    struct Rest<'a> {
        next: Next<'a>,
        extensions: Extensions,
    }

    type Attempt<'a> = Pin<
        Box<
            dyn Future<Output = Result<http::Response<::reqwest::Body>, reqwest_middleware::Error>>
                + Send
                + 'a,
        >,
    >;

    impl<'a> Service<http::Request<ReplayBody>> for Rest<'a> {
        type Response = http::Response<::reqwest::Body>;
        type Error = reqwest_middleware::Error;
        type Future = Attempt<'a>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<ReplayBody>) -> Self::Future {
            let next = self.next.clone();
            let mut extensions = self.extensions.clone();
            Box::pin(async move {
                let request = to_reqwest(request)
                    .map_err(|e| reqwest_middleware::Error::Reqwest(e.without_url()))?;
                let response = next
                    .run(request, &mut extensions)
                    .await
                    .map_err(without_url)?;
                Ok(to_http(response))
            })
        }
    }

    /// reqwest's errors print the URL, query secrets included: the stack keeps them without.
    fn without_url(error: reqwest_middleware::Error) -> reqwest_middleware::Error {
        match error {
            reqwest_middleware::Error::Reqwest(e) => {
                reqwest_middleware::Error::Reqwest(e.without_url())
            }
            other => other,
        }
    }
}
