use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::store::{Decision, Reservation};
use super::{DoubtedRefusal, Shared, Slot};
use crate::error::{BoxError, Error};
use crate::partition::PartitionKey;
use crate::rate_limit::RateLimitInfo;

/// A shared bucket store's decision, on its way.
pub(crate) type Deciding = Pin<Box<dyn Future<Output = Result<Decision, Error>> + Send>>;

pin_project! {
    /// The response future of [`Throttle`](super::Throttle): waits for the slot, then calls.
    ///
    /// Dropping it while it waits gives the slot back when that is still possible.
    ///
    /// # Panics
    ///
    /// When polled again after it completed, as futures may.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B, S::Future>,
        shared: Arc<Shared>,
        key: Option<PartitionKey>,
        // A reserved slot not yet used: given back if the future is dropped.
        reservation: Option<Reservation>,
        // Whether this request is counted in `shared.outstanding`.
        outstanding: bool,
    }

    impl<S, B> PinnedDrop for ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if std::mem::take(this.outstanding) {
                this.shared.answered();
            }
            if let Some(reservation) = this.reservation.take() {
                this.shared.release(this.key.as_ref(), None, reservation);
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, F> {
        // The held request is boxed: waiting is rare, and the calling state stays small to
        // move.
        Deciding {
            decision: Deciding,
            held: Option<Pin<Box<Held<S, B>>>>,
        },
        Waiting { held: Pin<Box<Held<S, B>>> },
        Calling { #[pin] future: F },
        Failed { error: Option<Error> },
    }
}

pin_project! {
    /// A request held until its slot comes.
    struct Held<S, B> {
        #[pin]
        sleep: Sleep,
        inner: Option<S>,
        request: Option<Request<B>>,
    }
}

impl<S, B> Held<S, B> {
    fn boxed(wait: Duration, inner: S, request: Request<B>) -> Pin<Box<Self>> {
        Box::pin(Held {
            sleep: tokio::time::sleep_until(after(wait)),
            inner: Some(inner),
            request: Some(request),
        })
    }
}

/// The instant `wait` from now (about thirty years for a wait past the clock's range).
fn after(wait: Duration) -> tokio::time::Instant {
    crate::handoff::instant_after(tokio::time::Instant::now(), wait)
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    /// A request the throttle let through ([`Shared::take`] counted it outstanding).
    pub(crate) fn calling(
        future: S::Future,
        shared: Arc<Shared>,
        key: Option<PartitionKey>,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            shared,
            key,
            reservation: None,
            outstanding: true,
        }
    }

    pub(crate) fn failed(error: Error, shared: Arc<Shared>) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            shared,
            key: None,
            reservation: None,
            outstanding: false,
        }
    }

    /// A request held for its reserved slot ([`Shared::take`] counted it outstanding).
    pub(crate) fn waiting(
        wait: Duration,
        reservation: Reservation,
        inner: S,
        request: Request<B>,
        shared: Arc<Shared>,
        key: Option<PartitionKey>,
    ) -> Self {
        ResponseFuture {
            state: State::Waiting {
                held: Held::boxed(wait, inner, request),
            },
            shared,
            key,
            reservation: Some(reservation),
            outstanding: true,
        }
    }

    pub(crate) fn deciding(
        decision: Deciding,
        inner: S,
        request: Request<B>,
        shared: Arc<Shared>,
        key: Option<PartitionKey>,
    ) -> Self {
        ResponseFuture {
            state: State::Deciding {
                decision,
                held: Some(Held::boxed(Duration::ZERO, inner, request)),
            },
            shared,
            key,
            reservation: None,
            outstanding: false,
        }
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Deciding { decision, held } => {
                    let decision = ready!(decision.as_mut().poll(cx));
                    let upstream = held
                        .as_ref()
                        .and_then(|h| h.request.as_ref())
                        .and_then(|r| r.uri().authority().cloned());
                    let mut held = held.take().expect("the request is held once");
                    match this.shared.take(decision, upstream.as_ref()) {
                        Slot::Go => {}
                        Slot::Wait { wait, reservation } => {
                            *this.reservation = Some(reservation);
                            held.as_mut().project().sleep.reset(after(wait));
                        }
                        Slot::Refused(error) => return Poll::Ready(Err(error)),
                    }
                    *this.outstanding = true;
                    this.state.set(State::Waiting { held });
                }
                StateProj::Waiting { held } => {
                    let held = held.as_mut().project();
                    let (inner, request) = (held.inner, held.request);
                    ready!(held.sleep.poll(cx));
                    let service = inner.as_mut().expect("the service is used once");
                    ready!(service.poll_ready(cx)).map_err(|e| Error::from_box(e.into()))?;
                    // The slot is used from here on.
                    *this.reservation = None;
                    let request = request.take().expect("the request is sent once");
                    let future = service.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx));
                    // Answered (or failed): no longer outstanding.
                    if std::mem::take(this.outstanding) {
                        this.shared.answered();
                    }
                    let mut response = result.map_err(|e| Error::from_box(e.into()))?;
                    if this.shared.adaptive {
                        if let Some(info) = RateLimitInfo::of_response(&mut response) {
                            let status = response.status();
                            if this.shared.adopt(this.key.as_ref(), None, status, &info) {
                                response.extensions_mut().insert(DoubtedRefusal);
                            }
                        }
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().expect("future polled after completion")));
                }
            }
        }
    }
}
