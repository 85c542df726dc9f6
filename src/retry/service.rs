use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Config;
use super::RetryStats;
use crate::body::{Buffer, ReplayBody};
use crate::classify::Classify;
use crate::deadline::Deadline;
use crate::error::{BoxError, Error};

/// Retries failed attempts of the inner service. Made by [`RetryLayer`](super::RetryLayer).
///
/// Takes any `http::Request<B>` with an `Unpin` body, and sends the inner service
/// `http::Request<ReplayBody>`.
#[derive(Clone, Debug)]
pub struct Retry<S, C> {
    inner: S,
    config: Arc<Config>,
    classify: C,
}

impl<S, C> Retry<S, C> {
    pub(crate) fn new(inner: S, config: Arc<Config>, classify: C) -> Self {
        Retry {
            inner,
            config,
            classify,
        }
    }

    /// The counters shared by every clone of this service and of its layer.
    pub fn stats(&self) -> RetryStats {
        self.config.stats.clone()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, C, B, ResB> Service<Request<B>> for Retry<S, C>
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
        // The ready service goes with the call; this one keeps an unreserved clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        self.config.stats.record_call();
        // One clock read serves the retry budget and the deadline.
        let config = &self.config;
        let now = (config.budget.is_some() || config.deadline.is_some()).then(Instant::now);
        let budget = now.and_then(|now| config.retry_budget_of(&request, now));
        let ours = now.and_then(|now| {
            config
                .deadline
                .map(|timeout| Deadline::after_from(now, timeout))
        });
        let deadline = match (request.extensions().get::<Deadline>(), ours) {
            (Some(theirs), Some(ours)) => Some((*theirs).min(ours)),
            (theirs, ours) => theirs.copied().or(ours),
        };
        let (parts, body) = request.into_parts();
        let buffer = Buffer::new(body, self.config.max_buffered_body);
        ResponseFuture::new(
            inner,
            self.config.clone(),
            self.classify.clone(),
            parts,
            buffer,
            budget,
            deadline.map(|d| d.0),
        )
    }
}
