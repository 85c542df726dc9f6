//! The hedge service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::time::Instant;
use tower_service::Service;

use super::future::{Copy, ResponseFuture};
use super::Shared;
use crate::body::ReplayBody;
use crate::error::{BoxError, Error};
use crate::handoff::Deadline;
use crate::head::HeadCopy;
use crate::partition::ByUpstream;

/// A client whose slow attempts get a second copy. Made by [`HedgeLayer`](super::HedgeLayer).
#[derive(Clone)]
pub struct Hedge<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Hedge<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Hedge { inner, shared }
    }

    /// The client.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> fmt::Debug for Hedge<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<S, ResB> Service<Request<ReplayBody>> for Hedge<S>
where
    S: Service<Request<ReplayBody>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        crate::error::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: Request<ReplayBody>) -> Self::Future {
        let shared = &self.shared;
        let hedger = shared.hedger(ByUpstream::of(request.uri()).as_ref());
        let now = Instant::now();
        hedger.deposit(now);
        // A copy only of what may be sent twice, and only when it can be had without reading.
        let body = if shared.settings.may_send_twice(request.method(), |name| {
            request.headers().contains_key(name)
        }) {
            request.body().try_clone()
        } else {
            None
        };
        let copy = match body {
            Some(body) => {
                let deadline = request.extensions().get::<Deadline>().map(|d| d.0);
                let (parts, original) = request.into_parts();
                let head = HeadCopy::of(&parts);
                request = Request::from_parts(parts, original);
                Some(Box::new(Copy {
                    head,
                    body,
                    due: crate::handoff::instant_after(now, hedger.delay(&shared.settings)),
                    deadline,
                }))
            }
            None => None,
        };
        // The ready client goes with the call; this service keeps an unreserved clone, which
        // also sends the copy.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let future = inner.call(request);
        ResponseFuture::new(future, copy, inner, hedger, shared.clone(), now)
    }
}
