//! A limit on calls in flight per upstream, fixed or adaptive.
//!
//! A token bucket paces requests per second; it cannot see an upstream that answers slower and
//! slower because it is saturating. [`ConcurrencyLayer`] bounds the calls in flight to each
//! upstream instead:
//!
//! - **Fixed** ([`ConcurrencyLayer::fixed`]), a bulkhead: at most N in flight; further calls
//!   wait in line, in arrival order, for up to [`max_wait`](ConcurrencyLayer::max_wait)
//!   (default 30 s), or fail at once with a zero `max_wait`. A call that cannot get a place
//!   fails with [`Kind::Overloaded`].
//! - **Adaptive** ([`ConcurrencyLayer::adaptive`]): the limit moves with the upstream's
//!   answers. AIMD by default: a new limit grows by one per answer (doubling per round
//!   trip, TCP's slow start) until the first loss or sign of queueing; from then on, while
//!   calls succeed with at least half the limit in flight, it grows by about one per round
//!   trip, until recent latency is 10 % over its baseline
//!   (requests start to queue at the upstream: it holds there); on a loss it is multiplied by
//!   [`backoff`](ConcurrencyLayer::backoff) (0.9), once per round trip however many losses
//!   that round trip saw. After a run of losses (an outage drives the limit to its minimum) it
//!   grows by one per success, doubling per round trip, back to where the run started times
//!   the backoff, and by one per round trip from there: a job is back at speed a few round
//!   trips after the upstream is. [`vegas`](ConcurrencyLayer::vegas) selects TCP Vegas instead, which
//!   reads the queue building at the upstream from its latency. Limits start at 20 and stay
//!   within [1, 1,000] ([`limits`](ConcurrencyLayer::limits)).
//!
//! A **loss** is what an HTTP API says when it is overloaded: a 429, a 503 or a 504, a
//! server-named wait (`Retry-After`), a used-up quota (`RateLimit-Remaining: 0`), an attempt
//! timeout or a transport error; with AIMD also latency above 1.5 times its baseline
//! ([`latency_tolerance`](ConcurrencyLayer::latency_tolerance)), a gentler one (×0.95). Other 4xx and 5xx answers are
//! not, nor is a 429 the throttle doubted ([`DoubtedRefusal`]:
//! the server's own count said there was room). The baseline is a smoothed latency that falls quickly towards faster answers and rises
//! slowly, counted in answers rather than time, so a quiet period does not reset it.
//!
//! Limits are per upstream (scheme, host and port; see [`Partition`](crate::partition::Partition)) and shared by every
//! clone of the layer and of its services: the limit is the same whichever clone or task
//! calls. A call's place is given back when its future completes or is dropped. At most
//! 1,024 upstreams' limits are kept; idle ones (nothing in flight or in line) are forgotten
//! first, and a forgotten upstream starts again from the initial limit.
//!
//! In [`Outbound`](crate::Outbound) the limit is a step of the call, after the breaker and the
//! gate and before the throttle (so the effective limit is whichever binds first); each
//! attempt takes its own place, and a refusal is neither retried nor counted by the breaker.
//! [`Outbound::background`](crate::Outbound::background) turns the adaptive limit on.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_outbound::ConcurrencyLayer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_outbound::Error> {
//! let upstream = tower::service_fn(|_req: Request<String>| async move {
//!     Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
//! });
//! let limit = ConcurrencyLayer::adaptive().limits(4, 256);
//! let client = ServiceBuilder::new().layer(limit.clone()).service(upstream);
//!
//! let request = Request::get("https://api.example.com/v1/items").body(String::new()).unwrap();
//! client.oneshot(request).await?;
//! let key = tower_outbound::partition::PartitionKey::from("https://api.example.com:443");
//! assert_eq!(limit.limit_of(&key).map(|l| l.in_flight), Some(0));
//! # Ok(()) }
//! ```

mod future;
mod layer;
pub(crate) mod limiter;
mod service;

use std::sync::Arc;

use http::{Response, StatusCode};
use tokio::time::Instant;

pub use future::ResponseFuture;
pub use layer::ConcurrencyLayer;
pub(crate) use limiter::{Acquired, Limiter, Sample, Settings};
pub use service::Concurrency;

use crate::error::{Error, Kind};
use crate::handoff::DoubtedRefusal;
use crate::partition::PartitionKey;
use crate::rate_limit::RateLimitInfo;

/// One upstream's limit, calls in flight and calls waiting, at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitState {
    /// The limit on calls in flight.
    pub limit: u32,
    /// Calls holding a place now.
    pub in_flight: u32,
    /// Calls waiting in line for a place.
    pub queued: u32,
}

/// The limiters of one layer: one per upstream, and one for calls with no key.
#[derive(Debug)]
pub(crate) struct Registry {
    pub(crate) settings: Settings,
    default: Arc<Limiter>,
    keyed: crate::partition::Registry<Limiter>,
}

impl Registry {
    pub(crate) fn new(settings: Settings) -> Self {
        Registry {
            default: Arc::new(Limiter::new(&settings, None)),
            settings,
            keyed: crate::partition::Registry::default(),
        }
    }

    /// The limiter of `key`. At `max_partitions`, idle limiters are forgotten first; if none
    /// is idle, the key shares the default limiter.
    pub(crate) fn limiter(&self, key: Option<&PartitionKey>) -> Arc<Limiter> {
        self.keyed.get_or_shared(
            key,
            &self.default,
            self.settings.max_partitions,
            |limiter| !limiter.is_idle(),
            |key| Limiter::new(&self.settings, Some(key.clone())),
        )
    }

    pub(crate) fn state_of(&self, key: &PartitionKey) -> Option<LimitState> {
        self.keyed.get(key).map(|limiter| state(&limiter))
    }

    /// The figures of the limit shared by calls with no key.
    pub(crate) fn global(&self) -> LimitState {
        state(&self.default)
    }

    /// A call asks `limiter` for a place.
    pub(crate) fn acquire(&self, limiter: &Limiter) -> Acquired {
        let acquired = limiter.acquire(&self.settings);
        #[cfg(feature = "metrics")]
        meter(limiter);
        acquired
    }

    /// A request that never waits (a hedge's copy) takes a place if one is free now.
    pub(crate) fn try_acquire(&self, limiter: &Limiter) -> bool {
        let took = limiter.try_acquire();
        #[cfg(feature = "metrics")]
        if took {
            meter(limiter);
        }
        took
    }

    /// The call of `ticket` looks whether its turn has come.
    pub(crate) fn turn(&self, limiter: &Limiter, ticket: u64, waker: &std::task::Waker) -> bool {
        let went = limiter.turn(ticket, waker);
        #[cfg(feature = "metrics")]
        if went {
            meter(limiter);
        }
        went
    }

    /// The call of `ticket` leaves the line.
    pub(crate) fn leave(&self, limiter: &Limiter, ticket: u64) {
        limiter.leave(ticket);
        #[cfg(feature = "metrics")]
        meter(limiter);
    }

    /// A call gives its place back, with what its attempt said.
    pub(crate) fn release(&self, limiter: &Limiter, sample: Option<Sample>, now: Instant) {
        limiter.release(&self.settings, sample, now);
        #[cfg(feature = "metrics")]
        meter(limiter);
    }

    /// The error of a call that got no place.
    pub(crate) fn overloaded(
        &self,
        limiter: &Limiter,
        upstream: Option<&http::uri::Authority>,
    ) -> Error {
        Error::new(Kind::Overloaded {
            limit: limiter.figures().limit,
        })
        .for_upstream(upstream)
    }
}

fn state(limiter: &Limiter) -> LimitState {
    let figures = limiter.figures();
    LimitState {
        limit: figures.limit,
        in_flight: figures.in_flight,
        queued: figures.queued,
    }
}

/// Exports `limiter`'s figures as its upstream's gauges.
#[cfg(feature = "metrics")]
fn meter(limiter: &Limiter) {
    let cached = limiter.meters.load_full().filter(|m| m.is_current());
    let meters = cached.unwrap_or_else(|| {
        let key = limiter
            .key
            .as_ref()
            .and_then(|k| std::str::from_utf8(k.as_bytes()).ok());
        let meters = crate::metrics::upstream::of_key(key);
        limiter.meters.store(Some(meters.clone()));
        meters
    });
    let figures = limiter.figures();
    meters.concurrency(figures.limit, figures.in_flight, figures.queued);
}

/// What an attempt's result says of its upstream's load, sent at `started` and answered at
/// `now`: `None` when it says nothing (the call was refused before it reached the upstream,
/// its body failed, or the throttle doubted the server's refusal: a 429 the server's own
/// count contradicts is noise, see [`DoubtedRefusal`]).
///
/// [`DoubtedRefusal`]: crate::handoff::DoubtedRefusal
pub(crate) fn sample_of<B>(
    result: &Result<Response<B>, Error>,
    info: Option<&RateLimitInfo>,
    started: Instant,
    now: Instant,
) -> Option<Sample> {
    let loss = match result {
        Ok(response) if response.extensions().get::<DoubtedRefusal>().is_some() => return None,
        Ok(response) => {
            matches!(
                response.status(),
                StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            ) || info.is_some_and(|info| info.retry_after.is_some() || info.is_exhausted())
        }
        Err(error) => match error.kind() {
            Kind::Transport | Kind::Timeout | Kind::RateLimited { .. } => true,
            _ => return None,
        },
    };
    Some(Sample {
        started,
        latency: now.saturating_duration_since(started),
        loss,
    })
}

#[cfg(all(test, not(tower_outbound_loom)))]
mod tests {
    use std::time::Duration;

    use super::*;

    fn answer(status: u16) -> Result<Response<()>, Error> {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        Ok(response)
    }

    #[test]
    fn overload_signals_are_losses_and_other_answers_are_not() {
        let now = Instant::now();
        let loss = |result: &Result<Response<()>, Error>, info: Option<&RateLimitInfo>| {
            sample_of(result, info, now, now).map(|s| s.loss)
        };
        for status in [429, 503, 504] {
            assert_eq!(loss(&answer(status), None), Some(true), "{status}");
        }
        for status in [200, 400, 404, 500, 502] {
            assert_eq!(loss(&answer(status), None), Some(false), "{status}");
        }
        let wait = RateLimitInfo {
            retry_after: Some(Duration::from_secs(1)),
            ..RateLimitInfo::default()
        };
        let used_up = RateLimitInfo {
            remaining: Some(0),
            ..RateLimitInfo::default()
        };
        assert_eq!(loss(&answer(200), Some(&wait)), Some(true));
        assert_eq!(loss(&answer(200), Some(&used_up)), Some(true));
        assert_eq!(loss(&Err(Error::new(Kind::Transport)), None), Some(true));
        assert_eq!(loss(&Err(Error::timed_out()), None), Some(true));
        // Refusals by the crate's own steps say nothing of the upstream.
        let refused = Error::new(Kind::Throttled {
            wait: Duration::from_secs(1),
        });
        assert_eq!(loss(&Err(refused), None), None);
    }

    /// Chaos 429s that the throttle doubted (the server's own count said there was room)
    /// halved a job's limit one after the other.
    #[test]
    fn a_refusal_the_throttle_doubted_is_no_sign_of_load() {
        let now = Instant::now();
        let mut doubted = answer(429);
        if let Ok(response) = &mut doubted {
            response.extensions_mut().insert(DoubtedRefusal);
        }
        assert!(sample_of(&doubted, None, now, now).is_none());
    }
}
