use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::gcra::nanos;
use super::store::{Decision, Reservation, WindowReport};
use super::{DoubtedRefusal, Shared};
use crate::error::{BoxError, Error, Kind};
use crate::partition::PartitionKey;
use crate::rate_limit::RateLimitInfo;

type Deciding = Pin<Box<dyn Future<Output = Result<Decision, Error>> + Send>>;

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
                this.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
            }
            if let Some(reservation) = this.reservation.take() {
                this.shared
                    .store
                    .release(this.key.as_ref(), &this.shared.quota, reservation);
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
    let now = tokio::time::Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| crate::deadline::far_future(now))
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
    pub(crate) fn calling(
        future: S::Future,
        shared: Arc<Shared>,
        key: Option<PartitionKey>,
    ) -> Self {
        shared.outstanding.fetch_add(1, Ordering::AcqRel);
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

    pub(crate) fn waiting(
        wait: Duration,
        reservation: Reservation,
        inner: S,
        request: Request<B>,
        shared: Arc<Shared>,
        key: Option<PartitionKey>,
    ) -> Self {
        shared.stats.count(1, 1);
        shared.stats.count(3, nanos(wait));
        shared.outstanding.fetch_add(1, Ordering::AcqRel);
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
                    match decision {
                        Ok(Decision::Go) => {
                            this.shared.stats.count(0, 1);
                            this.shared.outstanding.fetch_add(1, Ordering::AcqRel);
                            *this.outstanding = true;
                            let held = held.take().expect("the request is held once");
                            this.state.set(State::Waiting { held });
                        }
                        Ok(Decision::Wait { wait, reservation }) => {
                            this.shared.stats.count(1, 1);
                            this.shared.stats.count(3, nanos(wait));
                            this.shared.outstanding.fetch_add(1, Ordering::AcqRel);
                            *this.outstanding = true;
                            *this.reservation = Some(reservation);
                            let mut held = held.take().expect("the request is held once");
                            held.as_mut().project().sleep.reset(after(wait));
                            this.state.set(State::Waiting { held });
                        }
                        Ok(Decision::Reject { wait }) => {
                            this.shared.stats.count(2, 1);
                            let error = Error::new(Kind::Throttled { wait })
                                .for_upstream(upstream.as_ref());
                            return Poll::Ready(Err(error));
                        }
                        Err(error) => {
                            return Poll::Ready(Err(error.for_upstream(upstream.as_ref())))
                        }
                    }
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
                    let others = if std::mem::take(this.outstanding) {
                        this.shared
                            .outstanding
                            .fetch_sub(1, Ordering::AcqRel)
                            .saturating_sub(1)
                    } else {
                        this.shared.outstanding.load(Ordering::Acquire)
                    };
                    let mut response = result.map_err(|e| Error::from_box(e.into()))?;
                    if this.shared.adaptive {
                        adopt(this.shared, this.key.as_ref(), &mut response, others);
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

/// Adopts the server's view from the response, when it gave one: the window's count from
/// `remaining` and `reset` (less the `outstanding` requests the server may not have counted
/// yet), and a pause from a 429 that names a wait. A 429 the store doubts (see
/// [`DoubtedRefusal`]) pauses nothing, and is marked so that the gate outside does not close.
fn adopt<ResB>(
    shared: &Shared,
    key: Option<&PartitionKey>,
    response: &mut Response<ResB>,
    outstanding: u64,
) {
    let Some(info) = RateLimitInfo::of_response(response) else {
        return;
    };
    let too_many = response.status() == StatusCode::TOO_MANY_REQUESTS;
    let mut adopted = false;
    if let (Some(remaining), Some(reset)) = (info.remaining, info.reset) {
        let report = WindowReport {
            remaining,
            reset,
            refused: too_many && remaining == 0 && info.retry_after.is_none(),
            outstanding,
        };
        if !shared.store.adopt_report(key, &shared.quota, report) {
            shared.stats.count(5, 1);
            response.extensions_mut().insert(DoubtedRefusal);
            return;
        }
        adopted = true;
    }
    if too_many {
        if let Some(wait) = info.wait().filter(|w| !w.is_zero()) {
            if !(adopted && info.remaining == Some(0) && info.reset == Some(wait)) {
                shared.store.adopt(key, &shared.quota, 0, wait);
                adopted = true;
            }
        }
    }
    if adopted {
        shared.stats.count(4, 1);
    }
}
