//! Retry-After honoring as a gate shared by every clone of a service.
//!
//! Once the upstream says "come back in N seconds", a client that keeps sending collects one
//! 429 per request and may be blocked for longer. [`RetryAfterLayer`] closes a gate when a
//! response asks for a pause, and holds every later request until it opens:
//!
//! - a 429 or 503 that names a wait (`Retry-After`, or a rate-limit reset with nothing
//!   remaining) closes the gate for that wait;
//! - any response that says the quota is used up (`remaining: 0` with a reset) closes it until
//!   the reset, before a single 429 is seen;
//! - a request that meets a closed gate waits until it opens, then goes; if the gate stays
//!   closed longer than [`max_wait`](RetryAfterLayer::max_wait) (60 s by default) the request
//!   fails at once with [`Kind::RateLimited`], carrying the
//!   remaining wait and the wall-clock time the upstream accepts requests again.
//!
//! The gate reads the response's [`RateLimitInfo`] (parsing the headers
//! and inserting the extension if no layer did yet), so the retry layer outside it reads the same
//! value without parsing again. When the gate is open, passing it costs one atomic load: no clock
//! read, no lock.
//!
//! Place it inside [`RetryLayer`](crate::RetryLayer): the retry layer then sees every attempt's
//! wait, and retries pass the gate like any other request.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_outbound::RetryAfterLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let upstream = tower::service_fn(|_req: Request<()>| async {
//!     let response = Response::builder()
//!         .status(StatusCode::TOO_MANY_REQUESTS)
//!         .header("retry-after", "120")
//!         .body(())
//!         .unwrap();
//!     Ok::<_, std::convert::Infallible>(response)
//! });
//! let gate = RetryAfterLayer::new().max_wait(Duration::from_secs(30));
//! let mut client = ServiceBuilder::new().layer(gate.clone()).service(upstream);
//!
//! let first = client.ready().await.unwrap().call(Request::new(())).await.unwrap();
//! assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
//!
//! // The server asked for two minutes: the next request fails fast instead of collecting
//! // another 429.
//! let err = client.ready().await.unwrap().call(Request::new(())).await.unwrap_err();
//! assert!(err.is_rate_limited());
//! assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
//! assert!(gate.closed_for().is_some());
//! # }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Response, StatusCode};
use tokio::time::Instant;

use crate::error::{Error, Kind};
use crate::rate_limit::RateLimitInfo;

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::RetryAfterLayer;
pub use service::RetryAfter;

/// The shared gate: the instant it opens again, as nanoseconds since `base` (0 = open).
#[derive(Debug)]
pub(crate) struct Gate {
    base: Instant,
    until: AtomicU64,
    max_wait: Duration,
    stats: GateStats,
}

/// What a request finds at the gate.
pub(crate) enum Pass {
    Open,
    Wait(Instant),
    Refuse(Error),
}

impl Gate {
    pub(crate) fn new(max_wait: Duration) -> Self {
        Gate {
            base: Instant::now(),
            until: AtomicU64::new(0),
            max_wait,
            stats: GateStats::default(),
        }
    }

    fn nanos_since_base(&self, instant: Instant) -> u64 {
        // At least 1, so that a gate closed until the base instant is still told from open.
        u64::try_from(instant.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    pub(crate) fn pass(&self) -> Pass {
        let until = self.until.load(Ordering::Acquire);
        if until == 0 {
            return Pass::Open;
        }
        let now = Instant::now();
        let until_instant = self.base + Duration::from_nanos(until);
        if now >= until_instant {
            // Reopen, unless another response closed it again meanwhile.
            let _ = self
                .until
                .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire);
            return Pass::Open;
        }
        let wait = until_instant - now;
        if wait > self.max_wait {
            return Pass::Refuse(Error::new(Kind::RateLimited {
                wait,
                retry_at: SystemTime::now() + wait,
            }));
        }
        Pass::Wait(until_instant)
    }

    /// Closes the gate when the response asks for a pause.
    pub(crate) fn observe<B>(&self, response: &mut Response<B>) {
        let Some(info) = RateLimitInfo::of_response(response) else {
            return;
        };
        let wait = match response.status() {
            StatusCode::TOO_MANY_REQUESTS => info.wait().or(info.reset),
            StatusCode::SERVICE_UNAVAILABLE => info.wait(),
            _ if info.is_exhausted() => info.reset,
            _ => None,
        };
        let Some(wait) = wait.filter(|w| !w.is_zero()) else {
            return;
        };
        let until = self.nanos_since_base(Instant::now() + wait);
        let previous = self.until.fetch_max(until, Ordering::AcqRel);
        if previous < until {
            self.stats.closed();
            tracing::info!(
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                status = response.status().as_u16(),
                "upstream asked for a pause: gate closed"
            );
        }
    }

    pub(crate) fn closed_for(&self) -> Option<Duration> {
        let until = self.until.load(Ordering::Acquire);
        if until == 0 {
            return None;
        }
        let until = self.base + Duration::from_nanos(until);
        let now = Instant::now();
        (until > now).then(|| until - now)
    }

    pub(crate) fn stats(&self) -> GateStats {
        self.stats.clone()
    }
}

/// Counters of a [`RetryAfterLayer`]'s gate. Cheap to clone: clones read the same counters.
#[derive(Clone, Debug, Default)]
pub struct GateStats {
    counters: Arc<[AtomicU64; 3]>,
}

impl GateStats {
    /// Times a response closed the gate or pushed its opening later.
    pub fn times_closed(&self) -> u64 {
        self.counters[0].load(Ordering::Relaxed)
    }

    /// Requests that waited at the closed gate.
    pub fn delayed(&self) -> u64 {
        self.counters[1].load(Ordering::Relaxed)
    }

    /// Requests refused because the gate stayed closed longer than `max_wait`.
    pub fn refused(&self) -> u64 {
        self.counters[2].load(Ordering::Relaxed)
    }

    fn closed(&self) {
        self.counters[0].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn delayed_one(&self) {
        self.counters[1].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused_one(&self) {
        self.counters[2].fetch_add(1, Ordering::Relaxed);
    }
}
