//! Proactive token-bucket throttling, adaptive to the server's own view of the limit.
//!
//! [`ThrottleLayer`] paces requests below a rate limit instead of reacting to 429s: each request
//! takes a slot from a bucket before it is sent, and waits for it when the bucket is empty.
//!
//! - **Rate and burst.** `ThrottleLayer::new(1000, Duration::from_secs(900))` lets 1,000
//!   requests through per 15 minutes, at most [`burst`](ThrottleLayer::burst) (default: the
//!   rate) at once. Over any interval `t`, no more than `rate · t / per + burst` requests pass.
//! - **Waiting.** A request waits for its slot (tokio's timer, so tests run on the paused clock),
//!   in arrival order: slots are reserved as requests arrive, so a later request never gets an
//!   earlier slot, and nobody starves. A request that would wait longer than
//!   [`max_wait`](ThrottleLayer::max_wait) (default 30 s) fails at once with
//!   [`Kind::Throttled`], carrying the wait, and takes nothing.
//!   A request dropped while it waits gives its slot back when no later request reserved one
//!   after it (otherwise that one slot stays used: the bucket is never looser than configured).
//! - **Adaptive.** When a response carries a [`RateLimitInfo`] with
//!   `remaining` and `reset`, the bucket adopts the server's view: if the server says 12 left
//!   until a reset in 40 s, no more than 12 more go before then. A pause and the window's count
//!   are kept apart: a 429 (or any response with nothing remaining) stops the bucket until the
//!   wait it names, and then the window's count goes on where it was, so a short spurious 429
//!   in the middle of a window does not cost the rest of the window. Within one window the
//!   smallest `remaining` and the earliest reset win (a reset is rounded up to whole seconds,
//!   so the earliest is the closest to the real end, and never before it). The server's view
//!   only ever makes the bucket slower, never faster than configured. This is what keeps
//!   several clients that share one server-side quota from overrunning it together.
//! - **The freshest word wins.** With the default [`LocalStore`], each reply's `remaining`,
//!   less the requests still outstanding (let through and not answered: the server may not
//!   have counted them yet), is what is left of the window, up or down from the bucket's own
//!   count: requests the server refused or lost before counting them come back to the
//!   window, and requests another client sent are taken away.
//! - **Doubted refusals.** A `429` that says the window is used up (`remaining: 0`, no
//!   `Retry-After`) while the server's latest replies say the same window has room is doubted
//!   (a spurious 429, or one about another quota): it pauses nothing, and the response
//!   carries [`DoubtedRefusal`], so a [`RetryAfterLayer`](crate::RetryAfterLayer) outside does
//!   not close its gate for everyone; the retry layer still waits out that request's own
//!   reset. Two in a row are doubted, the third is believed, and so is every refusal when
//!   the bucket has no view or its view has nothing left: a window that another client used
//!   up costs a couple of refusals, and is then honored. A `Retry-After` is always honored.
//! - **Partitions.** One bucket for the whole service by default; one per upstream with
//!   [`partition(ByAuthority)`](crate::partition::ByAuthority), or any
//!   [`Partition`](crate::partition::Partition). Idle buckets are evicted, so memory stays
//!   bounded however many keys pass.
//! - **Shared state.** Clones of the layer and of its services share one bucket store. The
//!   store is a [`BucketStore`]: [`LocalStore`] in this process by default, or one shared by many
//!   processes (Redis, with the `redis` feature).
//!
//! The happy path of the default store is one clock read and one compare-and-swap: no lock,
//! no allocation, no background task, no timer per bucket.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_outbound::ThrottleLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let upstream = tower::service_fn(|_req: Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(()))
//! });
//! // 2 requests per second, 2 at once; wait at most 1 s for a slot.
//! let throttle = ThrottleLayer::new(2, Duration::from_secs(1)).max_wait(Duration::from_secs(1));
//! let stats = throttle.stats();
//! let client = ServiceBuilder::new().layer(throttle).service(upstream);
//!
//! let start = tokio::time::Instant::now();
//! for _ in 0..4 {
//!     client.clone().oneshot(Request::new(())).await.unwrap();
//! }
//! // Two at once, then one every 500 ms.
//! assert_eq!(start.elapsed(), Duration::from_secs(1));
//! assert_eq!(stats.delayed(), 2);
//!
//! // Three more at once: slots are taken in `call`, and the third would wait 1.5 s, more
//! // than max_wait.
//! let mut svc = client.clone();
//! let a = ServiceExt::<Request<()>>::ready(&mut svc).await.unwrap().call(Request::new(()));
//! let b = ServiceExt::<Request<()>>::ready(&mut svc).await.unwrap().call(Request::new(()));
//! let c = ServiceExt::<Request<()>>::ready(&mut svc).await.unwrap().call(Request::new(()));
//! let err = c.await.unwrap_err();
//! assert!(err.is_throttled());
//! assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
//! # let _ = (a.await, b.await);
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod future;
mod gcra;
mod layer;
mod service;
mod store;

pub(crate) use future::Deciding;
pub use future::ResponseFuture;
pub use layer::ThrottleLayer;
pub use service::Throttle;
pub use store::{Acquire, BucketStore, Decision, LocalStore, Reservation, WindowReport};

pub(crate) use gcra::{nanos, Bucket};

use crate::error::{Error, Kind};
use crate::partition::PartitionKey;
use crate::rate_limit::RateLimitInfo;

pub use crate::handoff::DoubtedRefusal;

/// A rate: `rate` requests per `per`, at most `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    rate: u32,
    per: Duration,
    burst: u32,
    /// The in-process bucket's interval and tolerance, worked out once.
    cell: gcra::Cell,
}

/// Why a [`Quota`] cannot be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuotaError {
    /// The rate is zero: no request could ever pass.
    ZeroRate,
    /// The period is zero.
    ZeroPeriod,
    /// The burst is zero: no request could ever pass.
    ZeroBurst,
}

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuotaError::ZeroRate => "throttle rate is zero: no request could ever pass",
            QuotaError::ZeroPeriod => "throttle period is zero",
            QuotaError::ZeroBurst => "throttle burst is zero: no request could ever pass",
        })
    }
}

impl std::error::Error for QuotaError {}

impl Quota {
    /// `rate` requests per `per`, with a burst of `rate`.
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroRate`] and [`QuotaError::ZeroPeriod`]. Any other value is accepted:
    /// the in-process bucket counts time in nanoseconds in a `u64`, and takes an interval
    /// between slots (`per / rate`), or a burst's span (`burst · per / rate`), longer than
    /// about 73 years as 73 years. A `per` of [`Duration::MAX`] is a bucket that lets its
    /// burst through and then, in practice, nothing more. Nothing overflows or panics later.
    pub fn new(rate: u32, per: Duration) -> Result<Self, QuotaError> {
        if rate == 0 {
            return Err(QuotaError::ZeroRate);
        }
        if per.is_zero() {
            return Err(QuotaError::ZeroPeriod);
        }
        Ok(Quota {
            rate,
            per,
            burst: rate,
            cell: gcra::Cell::of(per / rate, rate),
        })
    }

    /// The same rate with another burst. Any burst from 1 to `u32::MAX` is accepted.
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroBurst`].
    pub fn with_burst(self, burst: u32) -> Result<Self, QuotaError> {
        if burst == 0 {
            return Err(QuotaError::ZeroBurst);
        }
        Ok(Quota {
            burst,
            cell: gcra::Cell::of(self.interval(), burst),
            ..self
        })
    }

    /// Requests per period.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// The period.
    pub fn per(&self) -> Duration {
        self.per
    }

    /// The most requests let through at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Time between two slots: `per / rate`.
    pub fn interval(&self) -> Duration {
        self.per / self.rate
    }

    /// The in-process bucket's cell.
    pub(crate) fn cell(&self) -> gcra::Cell {
        self.cell
    }
}

/// Counters of a [`ThrottleLayer`] and every service it made. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ThrottleStats {
    counters: Arc<[AtomicU64; 6]>,
    /// Requests let through at once: counted on every call, from every core.
    immediate: Arc<crate::sync::ShardedCount>,
}

impl ThrottleStats {
    /// Requests let through at once.
    pub fn immediate(&self) -> u64 {
        self.immediate.sum()
    }

    /// Requests that waited for their slot.
    pub fn delayed(&self) -> u64 {
        self.counters[1].load(Ordering::Relaxed)
    }

    /// Requests refused because the wait was over `max_wait`.
    pub fn rejected(&self) -> u64 {
        self.counters[2].load(Ordering::Relaxed)
    }

    /// Total time requests waited for slots.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.counters[3].load(Ordering::Relaxed))
    }

    /// Times the server's view (remaining and reset) was adopted.
    pub fn adjustments(&self) -> u64 {
        self.counters[4].load(Ordering::Relaxed)
    }

    /// Refusals doubted: `429`s saying the window was used up while the server's latest
    /// replies said it had room (see [`DoubtedRefusal`]).
    pub fn doubted(&self) -> u64 {
        self.counters[5].load(Ordering::Relaxed)
    }

    /// Adds `by` to a counter, stopping at `u64::MAX` (the summed wait can be that large with
    /// waits of centuries).
    pub(crate) fn count(&self, index: usize, by: u64) {
        let _ = self.counters[index].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_add(by))
        });
    }

    /// Adds one to a count of requests (which cannot reach `u64::MAX`).
    pub(crate) fn count_one(&self, index: usize) {
        self.counters[index].fetch_add(1, Ordering::Relaxed);
    }
}

/// What every service of one layer shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) quota: Quota,
    pub(crate) max_wait: Duration,
    /// `max_wait` in nanoseconds (`u64::MAX` past 584 years), for the in-process bucket.
    pub(crate) max_wait_nanos: u64,
    pub(crate) adaptive: bool,
    pub(crate) store: Arc<dyn BucketStore>,
    /// The store, when it is a [`LocalStore`]: its buckets can be held and used directly.
    pub(crate) local: Option<Arc<LocalStore>>,
    pub(crate) stats: ThrottleStats,
    /// Requests that took a slot and were not answered yet (one shard per core: every call
    /// counts itself in and out).
    pub(crate) outstanding: Arc<crate::sync::ShardedCount>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("quota", &self.quota)
            .field("max_wait", &self.max_wait)
            .field("adaptive", &self.adaptive)
            .finish_non_exhaustive()
    }
}

/// What a request got from the throttle, counted.
pub(crate) enum Slot {
    /// Send now.
    Go,
    /// Send after `wait`; the slot is `reservation` (given back if the request is dropped).
    Wait {
        wait: Duration,
        reservation: Reservation,
    },
    /// Not sent: throttled past `max_wait`, or the store failed.
    Refused(Error),
}

/// A request counted among the outstanding ones while this lives.
pub(crate) struct OutstandingHold(Arc<crate::sync::ShardedCount>);

impl Drop for OutstandingHold {
    fn drop(&mut self) {
        self.0.add(-1);
    }
}

impl Shared {
    /// Counts the store's decision for one request and turns it into what the request does.
    /// A request that goes (now or later) is outstanding until [`answered`](Self::answered).
    pub(crate) fn take(
        &self,
        decision: Result<Decision, Error>,
        upstream: Option<&http::uri::Authority>,
    ) -> Slot {
        match decision {
            Ok(Decision::Go) => {
                self.stats.immediate.add(1);
                self.outstanding.add(1);
                Slot::Go
            }
            Ok(Decision::Wait { wait, reservation }) => {
                self.stats.count_one(1);
                self.stats.count(3, nanos(wait));
                self.outstanding.add(1);
                Slot::Wait { wait, reservation }
            }
            Ok(Decision::Reject { wait }) => {
                self.stats.count_one(2);
                Slot::Refused(Error::new(Kind::Throttled { wait }).for_upstream(upstream))
            }
            Err(error) => Slot::Refused(error.for_upstream(upstream)),
        }
    }

    /// An outstanding request was answered (or failed, or was dropped).
    pub(crate) fn answered(&self) {
        self.outstanding.add(-1);
    }

    /// One more request outstanding (a hedge's copy, sent on a token taken at once) until the
    /// returned hold is dropped.
    pub(crate) fn hold_outstanding(&self) -> OutstandingHold {
        self.outstanding.add(1);
        OutstandingHold(self.outstanding.clone())
    }

    /// Requests outstanding now (summed over the shards: for adopting a server's report).
    pub(crate) fn outstanding(&self) -> u64 {
        self.outstanding.sum()
    }

    /// Gives back a reserved slot a dropped request did not use, to `bucket` when the request
    /// held its bucket, else to the store.
    pub(crate) fn release(
        &self,
        key: Option<&PartitionKey>,
        bucket: Option<&Bucket>,
        reservation: Reservation,
    ) {
        match (bucket, &self.local) {
            (Some(bucket), Some(local)) => local.release_in(bucket, &self.quota, reservation),
            _ => self.store.release(key, &self.quota, reservation),
        }
    }

    /// Adopts the server's view from a response, when it gave one (`info`): the window's
    /// count from `remaining` and `reset` (less the requests still outstanding, which the
    /// server may not have counted yet: call it once this request is
    /// [`answered`](Self::answered)), and a pause from a 429 that names a wait. Returns `true`
    /// when the store doubts the response's refusal (see [`DoubtedRefusal`]): it paused
    /// nothing. `bucket`: the request's bucket, when it holds it (an in-process store).
    pub(crate) fn adopt(
        &self,
        key: Option<&PartitionKey>,
        bucket: Option<&Bucket>,
        status: http::StatusCode,
        info: &RateLimitInfo,
    ) -> bool {
        let local = bucket.zip(self.local.as_deref());
        let too_many = status == http::StatusCode::TOO_MANY_REQUESTS;
        let mut adopted = false;
        if let (Some(remaining), Some(reset)) = (info.remaining, info.reset) {
            let report = WindowReport {
                remaining,
                reset,
                refused: too_many && remaining == 0 && info.retry_after.is_none(),
                outstanding: self.outstanding(),
            };
            let believed = match local {
                Some((bucket, store)) => store.report_in(bucket, report),
                None => self.store.adopt_report(key, &self.quota, report),
            };
            if !believed {
                self.stats.count_one(5);
                return true;
            }
            adopted = true;
        }
        if too_many {
            if let Some(wait) = info.wait().filter(|w| !w.is_zero()) {
                if !(adopted && info.remaining == Some(0) && info.reset == Some(wait)) {
                    match local {
                        Some((bucket, store)) => store.adopt_in(bucket, 0, wait),
                        None => self.store.adopt(key, &self.quota, 0, wait),
                    }
                    adopted = true;
                }
            }
        }
        if adopted {
            self.stats.count_one(4);
        }
        false
    }
}
