use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::store::Acquire;
use super::{Shared, Slot};
use crate::error::{BoxError, Error};
use crate::partition::Partition;

/// The service made by [`ThrottleLayer`](super::ThrottleLayer).
#[derive(Clone, Debug)]
pub struct Throttle<S, P> {
    inner: S,
    shared: Arc<Shared>,
    partition: P,
}

impl<S, P> Throttle<S, P> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, partition: P) -> Self {
        Throttle {
            inner,
            shared,
            partition,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, P, B, ResB> Service<Request<B>> for Throttle<S, P>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    P: Partition,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        crate::error::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let key = crate::partition::key_of(&self.partition, &request);
        let shared = &self.shared;
        let decision = match shared
            .store
            .acquire(key.as_ref(), &shared.quota, shared.max_wait)
        {
            Acquire::Ready(decision) => decision,
            Acquire::Pending(decision) => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                return ResponseFuture::deciding(
                    decision,
                    inner,
                    request,
                    self.shared.clone(),
                    key,
                );
            }
        };
        match shared.take(decision, request.uri().authority()) {
            Slot::Go => {
                let future = self.inner.call(request);
                ResponseFuture::calling(future, self.shared.clone(), key)
            }
            Slot::Wait { wait, reservation } => {
                // The ready service goes with the request; this one keeps an unreserved clone.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(wait, reservation, inner, request, self.shared.clone(), key)
            }
            Slot::Refused(error) => ResponseFuture::failed(error, self.shared.clone()),
        }
    }
}
