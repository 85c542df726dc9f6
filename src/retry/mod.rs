//! Retry with capped exponential backoff and jitter. (in progress)

use std::time::{Duration, SystemTime};

/// Put into the extensions of a response that took more than one attempt, or on which the retry
/// layer gave up: how many attempts were made and how long was waited between them.
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
