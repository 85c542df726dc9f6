use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::future::ResponseFuture;
use super::record::Records;
use crate::body::ReplayBody;
use crate::error::{BoxError, Error};

/// A client wrapped in the [`Outbound`](super::Outbound) stack.
///
/// Takes any `http::Request<B>` with an `Unpin` body and sends the client
/// `http::Request<ReplayBody>`. `poll_ready` asks the client; whether a call may go (the
/// breaker, the gate, the throttle) is decided per call, per upstream. The ready client goes
/// with the call, and this service keeps a clone that starts unreserved.
#[derive(Clone)]
pub struct OutboundService<S> {
    inner: S,
    records: Arc<Records>,
}

impl<S> OutboundService<S> {
    pub(crate) fn new(inner: S, records: Arc<Records>) -> Self {
        OutboundService { inner, records }
    }

    /// The records, for model checks.
    #[cfg(all(test, tower_outbound_loom))]
    pub(crate) fn records(&self) -> Arc<Records> {
        self.records.clone()
    }

    /// The client.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The same stack around another client: the two share every upstream's record (breakers,
    /// gates, limits, buckets, retry budgets) and the counters. For a client that cannot live
    /// as long as the stack, such as the rest of a middleware chain borrowed for one call.
    pub fn with_client<T>(&self, client: T) -> OutboundService<T> {
        OutboundService {
            inner: client,
            records: self.records.clone(),
        }
    }

    /// Per-upstream records this stack keeps now (at most 1,024; one record holds an
    /// upstream's retry budget, breaker, gate and throttle bucket).
    pub fn upstreams(&self) -> usize {
        self.records.len()
    }
}

impl<S> fmt::Debug for OutboundService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundService")
            .field("upstreams", &self.records.len())
            .finish_non_exhaustive()
    }
}

impl<S, B, ResB> Service<Request<B>> for OutboundService<S>
where
    S: Service<Request<ReplayBody>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        crate::error::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The record first: a host given a stack of its own (`Outbound::upstream`) stamps its
        // calls with that stack's idempotency layer, as every other step of the call reads
        // the record's stack. Finding it reads the URI only, which stamping does not change.
        let record = self.records.find(request.uri());
        if let Some(keys) = &record.stack.keys {
            keys.stamp(&mut request);
        }
        // The ready client goes with the call; this service keeps an unreserved clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(inner, record, request)
    }
}
