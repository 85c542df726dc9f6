use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::time::Instant;
use tower_service::Service;

use super::future::{Permit, ResponseFuture, Waiting};
use super::{Acquired, Registry};
use crate::error::{BoxError, Error};
use crate::partition::Partition;

/// The service made by [`ConcurrencyLayer`](super::ConcurrencyLayer).
///
/// `poll_ready` asks only the inner service: whether a call may go depends on its upstream, so
/// it is decided in `call`. A call that waits for a place takes the ready inner service with
/// it (this one keeps an unreserved clone) and calls it when its turn comes.
#[derive(Clone, Debug)]
pub struct Concurrency<S, P> {
    inner: S,
    registry: Arc<Registry>,
    partition: P,
}

impl<S, P> Concurrency<S, P> {
    pub(crate) fn new(inner: S, registry: Arc<Registry>, partition: P) -> Self {
        Concurrency {
            inner,
            registry,
            partition,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, P, B, ResB> Service<Request<B>> for Concurrency<S, P>
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
        let limiter = self.registry.limiter(key.as_ref());
        match self.registry.acquire(&limiter) {
            Acquired::Go => {
                let permit = Permit::new(self.registry.clone(), limiter, Instant::now());
                ResponseFuture::calling(self.inner.call(request), permit)
            }
            Acquired::Wait(ticket) => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let until =
                    crate::handoff::instant_after(Instant::now(), self.registry.settings.max_wait);
                let waiting = Waiting::new(self.registry.clone(), limiter, ticket, until);
                ResponseFuture::waiting(waiting, inner, request)
            }
            Acquired::Full => ResponseFuture::refused(
                self.registry
                    .overloaded(&limiter, request.uri().authority()),
            ),
        }
    }
}
