use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::time::Instant;
use tower_service::Service;

use super::future::{Permit, ResponseFuture};
use super::hold::{HeldCall, Hold};
use super::Admission;
use super::{CircuitState, Registry};
use crate::classify::Classify;
use crate::error::{BoxError, Error};
use crate::partition::Partition;

/// The service made by [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
///
/// `poll_ready` asks only the inner service: whether a call may go is decided per call in
/// `call` (with per-upstream breakers it depends on the request), so a refused call leaves the
/// inner service's readiness unused, which tower services allow.
#[derive(Clone, Debug)]
pub struct CircuitBreaker<S, C, P> {
    inner: S,
    registry: Arc<Registry>,
    classify: C,
    partition: P,
}

impl<S, C, P> CircuitBreaker<S, C, P> {
    pub(crate) fn new(inner: S, registry: Arc<Registry>, classify: C, partition: P) -> Self {
        CircuitBreaker {
            inner,
            registry,
            classify,
            partition,
        }
    }

    /// The state of the default breaker.
    pub fn state(&self) -> CircuitState {
        self.registry.state_of(None)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, C, P, B, ResB> Service<Request<B>> for CircuitBreaker<S, C, P>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    C: Classify,
    P: Partition,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = ResponseFuture<S, B, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        crate::error::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let key = crate::partition::key_of(&self.partition, &request);
        let breaker = self.registry.breaker(key.as_ref());
        match self.registry.admit(&breaker) {
            Admission::Reject { .. } if self.registry.holds() => {
                // The ready service goes with the request; this one keeps an unreserved clone.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let hold = Hold::new(self.registry.clone(), breaker, Instant::now());
                let held = HeldCall::new(hold, inner, request);
                ResponseFuture::held(held, self.classify.clone())
            }
            Admission::Reject { retry_in } => {
                ResponseFuture::rejected(super::open_error(retry_in, request.uri().authority()))
            }
            admission => {
                let started = self.registry.needs_clock().then(Instant::now);
                let future = self.inner.call(request);
                let permit = Permit::new(breaker, self.registry.clone(), admission);
                ResponseFuture::calling(future, permit, self.classify.clone(), started)
            }
        }
    }
}
