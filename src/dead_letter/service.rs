use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::future::ResponseFuture;
use super::{Config, DeadLetterStats, Replaying};
use crate::body::{Buffer, ReplayBody};
use crate::classify::Classify;
use crate::error::{BoxError, Error};

/// The service made by [`DeadLetterLayer`](super::DeadLetterLayer).
///
/// Takes any `http::Request<B>` with an `Unpin` body and sends the inner service
/// `http::Request<ReplayBody>`.
#[derive(Clone, Debug)]
pub struct DeadLetterService<S, C> {
    inner: S,
    config: Arc<Config>,
    classify: C,
}

impl<S, C> DeadLetterService<S, C> {
    pub(crate) fn new(inner: S, config: Arc<Config>, classify: C) -> Self {
        DeadLetterService {
            inner,
            config,
            classify,
        }
    }

    /// The counters shared with the layer.
    pub fn stats(&self) -> DeadLetterStats {
        self.config.stats.clone()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, C, B, ResB> Service<Request<B>> for DeadLetterService<S, C>
where
    S: Service<Request<ReplayBody>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    C: Classify,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = ResponseFuture<S, C, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        crate::error::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, body) = request.into_parts();
        // A replayed letter that fails again stays where it is: no second record.
        let replaying = parts.extensions.get::<Replaying>().is_some();
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(
            inner,
            self.config.clone(),
            self.classify.clone(),
            parts,
            Buffer::new(body, self.config.max_body),
            replaying,
        )
    }
}
