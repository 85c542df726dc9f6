use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::store::{Acquire, Decision};
use super::Shared;
use crate::error::{BoxError, Error, Kind};
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
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::from_box(e.into()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let key = crate::partition::key_of(&self.partition, &request);
        let shared = &self.shared;
        let acquire = shared
            .store
            .acquire(key.as_ref(), &shared.quota, shared.max_wait);
        match acquire {
            Acquire::Ready(Ok(Decision::Go)) => {
                shared.stats.count(0, 1);
                let future = self.inner.call(request);
                ResponseFuture::calling(future, self.shared.clone(), key)
            }
            Acquire::Ready(Ok(Decision::Reject { wait })) => {
                shared.stats.count(2, 1);
                let error =
                    Error::new(Kind::Throttled { wait }).for_upstream(request.uri().authority());
                ResponseFuture::failed(error, self.shared.clone())
            }
            Acquire::Ready(Err(mut error)) => {
                error.set_upstream(request.uri().authority());
                ResponseFuture::failed(error, self.shared.clone())
            }
            Acquire::Ready(Ok(Decision::Wait { wait, reservation })) => {
                // The ready service goes with the request; this one keeps an unreserved clone.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(wait, reservation, inner, request, self.shared.clone(), key)
            }
            Acquire::Pending(decision) => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::deciding(decision, inner, request, self.shared.clone(), key)
            }
        }
    }
}
