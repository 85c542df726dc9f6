//! Rate-limit hints sent by servers, parsed once into a typed [`RateLimitInfo`].
//!
//! (module docs: to be completed with the parser table and a runnable example)

use std::time::{Duration, SystemTime};

use http::HeaderMap;

mod parse;

pub use parse::{
    parse_delta_seconds, parse_duration, parse_http_date, parse_retry_after, HeaderError,
};

/// What a response said about rate limits, from whichever headers it carried.
///
/// Put into the response's extensions by the first layer that parses it (see
/// [`RateLimitInfo::of_response`]), so later layers and callers read it without parsing again.
/// All durations are relative to when the response was received and are never shorter than what
/// the server asked (rounded up to the header's precision).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitInfo {
    /// The wait demanded by `Retry-After` (delta-seconds or HTTP-date).
    pub retry_after: Option<Duration>,
    /// The request quota of the current window (`RateLimit-Limit`, `X-RateLimit-Limit`, `q=`).
    pub limit: Option<u64>,
    /// Requests left in the current window; the smallest over all quotas the response reported.
    pub remaining: Option<u64>,
    /// Time until the quota with the fewest remaining requests resets (the longest such reset
    /// where several are exhausted).
    pub reset: Option<Duration>,
    /// The window length of the quota, when the server told it (`RateLimit-Policy: ...;w=60`).
    pub window: Option<Duration>,
}

impl RateLimitInfo {
    /// Parses every rate-limit header the crate knows from `headers`, with the wall clock as
    /// "now". Returns `None` when no such header was present or none could be parsed.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        Self::from_headers_at(headers, SystemTime::now())
    }

    /// As [`from_headers`](Self::from_headers), with an explicit "now" (for HTTP-dates and epoch
    /// resets when the response has no `Date` header).
    pub fn from_headers_at(headers: &HeaderMap, now: SystemTime) -> Option<Self> {
        parse::from_headers_at(headers, now)
    }

    /// Returns the response's `RateLimitInfo` extension, parsing the headers and inserting the
    /// extension first if no layer did yet. `None` when the response carries no hints.
    pub fn of_response<B>(response: &mut http::Response<B>) -> Option<Self> {
        if let Some(info) = response.extensions().get::<RateLimitInfo>() {
            return Some(*info);
        }
        let info = Self::from_headers(response.headers())?;
        response.extensions_mut().insert(info);
        Some(info)
    }

    /// The wait the server demands before the next request: the longest of `Retry-After` and,
    /// when the quota is used up (`remaining == 0`), the time until it resets.
    pub fn wait(&self) -> Option<Duration> {
        let exhausted_reset = match self.remaining {
            Some(0) => self.reset,
            _ => None,
        };
        match (self.retry_after, exhausted_reset) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the server said no requests are left in the current window.
    pub fn is_exhausted(&self) -> bool {
        self.remaining == Some(0)
    }
}
