//! What passes between the steps of a call, and between a layer and the caller: every request
//! or response extension the crate reads or writes is a type defined here.
//!
//! The layers do not talk to each other through private fields or hidden flags. What one
//! step tells another, or tells the caller, travels as one of these types in the request's or
//! the response's extensions (or on [`Error`](crate::Error), for a call that failed):
//!
//! | type | on | written by | read by | why |
//! |---|---|---|---|---|
//! | [`Deadline`] | request | the caller, [`DeadlineLayer`](crate::deadline::DeadlineLayer) | the retry layer, [`Outbound`](crate::Outbound) | the instant a whole call must be over; the earlier of two wins |
//! | [`Replaying`] | request | [`replay`](crate::dead_letter::replay) | the dead-letter layer, `Outbound`, the call metrics | a replayed letter that fails again is not recorded twice, and replays are counted |
//! | [`RateLimitInfo`] | response | the first step that meets a response with rate-limit headers (throttle, gate, retry, `Outbound`) | every later step, the caller | the server's rate-limit headers parsed once |
//! | [`DoubtedRefusal`] | response | the throttle | the gate, the caller | a `429` the throttle doubts closes no gate for everyone |
//! | [`Attempts`] | response | the retry layer, `Outbound` | the caller, the call metrics, dead letters | attempts made, time waited, and a server's wait too long to sleep on |
//! | [`Recorded`] | response, or [`Error::dead_letter`](crate::Error::dead_letter) | the dead-letter layer, `Outbound` | the caller | the receipt of a dead letter: its id and whether the sink stored it |
//!
//! Inside [`Outbound`](crate::Outbound) the steps of a call share one state machine, so they
//! need none of these to talk to one another: its breaker, gate, throttle, retry budget and
//! dead letters read the one [`Outcome`](crate::classify::Outcome) and the one
//! [`RateLimitInfo`] of each attempt directly. It still writes the extensions the caller reads
//! (`RateLimitInfo`, `DoubtedRefusal`, `Attempts`, `Recorded`), so a response looks the same
//! whether it came through `Outbound` or through the layers stacked by hand.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

pub use crate::rate_limit::RateLimitInfo;

/// The instant by which a logical call must be over; in the request's extensions.
///
/// Put there by the caller or by [`DeadlineLayer`](crate::deadline::DeadlineLayer); the retry
/// layer and [`Outbound`](crate::Outbound) start no wait that would end after it, and end a call
/// still running when it passes. When a request carries one and the layer has its own, the
/// earlier wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// The deadline `timeout` from now. A `timeout` past what the clock can represent
    /// (`Duration::MAX`) is about thirty years: never, in practice.
    pub fn after(timeout: Duration) -> Self {
        Self::after_from(Instant::now(), timeout)
    }

    /// The deadline `timeout` after `now`, as [`after`](Self::after).
    pub(crate) fn after_from(now: Instant, timeout: Duration) -> Self {
        Deadline(now.checked_add(timeout).unwrap_or_else(|| far_future(now)))
    }

    /// Time left until the deadline (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

/// About thirty years after `now`: never, in practice, and representable on every platform.
pub(crate) fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(30 * 365 * 24 * 3600)
}

/// The instant `wait` after `now`, or [`far_future`] when that is past what the clock holds.
pub(crate) fn instant_after(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait).unwrap_or_else(|| far_future(now))
}

/// Marks a request as a replay of a dead letter: a dead-letter layer (or
/// [`Outbound`](crate::Outbound) with dead letters) it passes through does not record it again
/// if it fails (the letter is still in the sink).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replaying;

/// Put into a response's extensions by the throttle when it doubts the response's refusal:
/// a `429` saying the window is used up (`remaining: 0`, no `Retry-After`) while the
/// server's own latest replies, less the requests still outstanding, say the same window has
/// room. The throttle took no pause from it, and a
/// [`RetryAfterLayer`](crate::RetryAfterLayer) outside it does not close its gate for it: the
/// refusal is that request's own (the retry layer still waits its reset before sending it
/// again). A third refusal in a row is believed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DoubtedRefusal;

/// Put into the extensions of a response that took more than one attempt, or on which the retry
/// layer gave up because of a too-long server-requested wait: how many attempts were made and
/// how long was waited between them.
///
/// A response without this extension came from the first attempt, with no wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attempts {
    /// Attempts made, the first included (at least 1).
    pub count: u32,
    /// Total time slept between attempts (backoff and server-requested waits).
    pub waited: Duration,
    /// When the retry layer stopped because the server asked for a longer wait than it will
    /// sleep (or than the retry budget has left): that wait, and the wall-clock time from which
    /// a new request is allowed, so the caller can reschedule.
    pub retry_after: Option<(Duration, SystemTime)>,
}

/// The receipt of a dead letter, on the failed call it records: a response extension on a
/// failed response, and [`Error::dead_letter`](crate::Error::dead_letter) on an error.
///
/// ```
/// # use tower_outbound::dead_letter::Recorded;
/// fn check(recorded: Option<&Recorded>) {
///     match recorded {
///         Some(r) if r.stored => println!("kept as dead letter {}", r.id),
///         Some(r) => eprintln!("dead letter {} could NOT be stored: the call is lost unless retried", r.id),
///         None => {}
///     }
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recorded {
    /// The letter's id in the sink.
    pub id: String,
    /// Whether the sink confirmed the write. `false`: the sink failed (disk full, Redis down,
    /// memory sink at capacity): the record is not kept, and the failure was logged at ERROR
    /// and counted in
    /// [`DeadLetterStats::write_failures`](crate::dead_letter::DeadLetterStats::write_failures).
    pub stored: bool,
}
