use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::{Entry, Gates};
use crate::error::{BoxError, Error};
use crate::partition::Scope;

/// The gate service made by [`RetryAfterLayer`](super::RetryAfterLayer).
#[derive(Clone, Debug)]
pub struct RetryAfter<S> {
    inner: S,
    gates: Arc<Gates>,
    scope: Scope,
}

impl<S> RetryAfter<S> {
    pub(crate) fn new(inner: S, gates: Arc<Gates>, scope: Scope) -> Self {
        RetryAfter {
            inner,
            gates,
            scope,
        }
    }

    /// How long the longest-closed gate stays closed from now, or `None` when every gate is
    /// open.
    pub fn closed_for(&self) -> Option<std::time::Duration> {
        self.gates.longest_closed()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for RetryAfter<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        crate::error::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let key = crate::partition::key_of(&self.scope, &request);
        match self.gates.enter_by(key.as_ref()) {
            Entry::Open => {
                let future = self.inner.call(request);
                ResponseFuture::calling(future, self.gates.clone(), key)
            }
            Entry::Held(hold) => {
                // The ready service goes with the request; this one keeps an unreserved clone.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::held(hold, inner, request, self.gates.clone(), key)
            }
            Entry::Refused(mut error) => {
                error.set_upstream(request.uri().authority());
                ResponseFuture::refused(error, self.gates.clone())
            }
        }
    }
}
