//! Rate-limit hints sent by servers, parsed once into a typed [`RateLimitInfo`].
//!
//! Servers say "slow down" in many dialects. [`RateLimitInfo::from_headers`] reads all of the
//! ones below from a response's headers; [`RateLimitInfo::of_response`] does it once per
//! response and keeps the result in the response's extensions, so every layer after the first
//! reads the typed value instead of parsing again.
//!
//! | headers | example values | fields |
//! |---------|----------------|--------|
//! | `Retry-After` | `120`, `Sun, 06 Nov 1994 08:49:37 GMT` (also RFC 850 and asctime dates) | `retry_after` |
//! | `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` | `100`, `0`, `30` | `limit`, `remaining`, `reset` (delta-seconds; an epoch is recognised as below) |
//! | `RateLimit` dictionary with `RateLimit-Policy` | `limit=100, remaining=0, reset=30` with `100;w=60` | `limit`, `remaining`, `reset`; `window` from `w` of the policy with that quota |
//! | `RateLimit` structured fields with `RateLimit-Policy` | `"default";r=0;t=30` with `"default";q=100;w=60` | `remaining` = `r`, `reset` = `t`; `limit` = `q`, `window` = `w` of the policy with the same name |
//! | `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` | `100`, `0`, `30` / `1700000000` / `1700000000000` | `limit`, `remaining`, `reset` (delta-seconds, Unix seconds or Unix milliseconds) |
//! | `x-ratelimit-{limit,remaining,reset}-requests` and `-tokens` (OpenAI) | `60`, `0`, `6m0s` | `limit`, `remaining`, `reset` (a duration such as `1s`, `1h2m3.5s`, `250ms`) |
//!
//! # Several quotas, several sources
//!
//! Each structured-field item, each OpenAI `requests`/`tokens` pair and each header family is
//! one quota. The result describes the tightest one: `remaining` is the smallest reported, and
//! `limit`, `reset` and `window` come from the quota with that remaining count. When several
//! quotas are equally tight (say two are exhausted) the one with the **longest reset wins**.
//! A source that reports the same remaining count (or none) fills in fields the tightest quota
//! lacks, so `RateLimit-Remaining: 0` with `X-RateLimit-Reset: 30` says "exhausted, resets in
//! 30s". Where a header has several lines (or comma-separated values), `remaining` takes the
//! smallest and `reset` the longest.
//!
//! Several `Retry-After` lines: the **longest valid one wins**, invalid ones are skipped. The
//! crate never waits less than the server asked.
//!
//! # Dates, epochs and clocks
//!
//! - An HTTP-date in `Retry-After` or a Unix timestamp in `X-RateLimit-Reset` /
//!   `RateLimit-Reset` is turned into a wait counted from the response's own `Date` header when
//!   it has a valid one, else from "now" (the wall clock, or the `now` given to
//!   [`RateLimitInfo::from_headers_at`]). Counting from the server's clock means a client clock
//!   that runs ahead or behind does not retry early, nor wait too long.
//! - A reset integer of at least `1_000_000_000` (2001-09-09 as Unix seconds) is a timestamp in
//!   seconds, one of at least `1_000_000_000_000` a timestamp in milliseconds; smaller values
//!   are delta-seconds.
//! - Waits are rounded **up** to the precision of the header: whole seconds for dates and
//!   second timestamps, whole milliseconds for millisecond timestamps. A date or timestamp in
//!   the past is a zero wait.
//!
//! # Bad values
//!
//! Parsing never panics. A value that is not visible ASCII, has the wrong syntax (`+5`, `5.0`,
//! `10abc`, an empty value), is negative, overflows, or asks for a wait longer than
//! [`MAX_WAIT`] (365 days; a date in the year 9999) is ignored: that one header (or parameter)
//! contributes nothing and the others are still read. [`from_headers`](RateLimitInfo::from_headers)
//! returns `None` only when nothing usable is left. The single-value parsers
//! ([`parse_retry_after`], [`parse_delta_seconds`], [`parse_duration`], [`parse_http_date`])
//! say what was wrong with a [`HeaderError`] (a value longer than [`MAX_VALUE_LEN`] is
//! [`HeaderError::OutOfRange`]). Surrounding spaces and tabs are accepted
//! everywhere; unknown structured-field parameters and dictionary keys are ignored.
//!
//! # Cost and bounds
//!
//! Parsing borrows the header bytes: no allocation, no regex; each header name is a static
//! [`http::HeaderName`], so a lookup hashes it once. The work is linear in the length of the
//! headers read, and bounded whatever the server sends:
//!
//! - at most [`MAX_LINES`] (64) lines of each header name are read, later lines are ignored;
//! - a line longer than [`MAX_VALUE_LEN`] (4 KiB) is ignored as a whole, unread;
//! - at most [`MAX_ITEMS`] (16) members of each list header (over all its lines) and at most
//!   [`MAX_ITEMS`] parameters of each member are read, later ones are ignored;
//! - `RateLimit-Policy` is parsed once per response, so matching the items of `RateLimit` to
//!   their policies does not scan it again for every item.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use http::{HeaderMap, HeaderValue};
//! use tower_outbound::RateLimitInfo;
//!
//! let mut headers = HeaderMap::new();
//! let items = r#""burst";r=0;t=2, "daily";r=4000;t=3600"#;
//! let policies = r#""burst";q=10;w=1, "daily";q=5000;w=86400"#;
//! headers.insert("ratelimit", HeaderValue::from_static(items));
//! headers.insert("ratelimit-policy", HeaderValue::from_static(policies));
//! headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
//! headers.insert("x-ratelimit-reset", HeaderValue::from_static("5"));
//!
//! let info = RateLimitInfo::from_headers_at(&headers, SystemTime::now()).unwrap();
//! assert_eq!(info.remaining, Some(0));
//! // Two exhausted quotas: the longer reset wins.
//! assert_eq!(info.reset, Some(Duration::from_secs(5)));
//! assert_eq!(info.wait(), Some(Duration::from_secs(5)));
//! ```
//!
//! In a service stack, read it from the response; the first call parses, later ones (in this
//! or another layer) read the extension:
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, ServiceExt};
//! use tower_outbound::RateLimitInfo;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstream = service_fn(|_req: Request<()>| async {
//!     let response = Response::builder()
//!         .status(StatusCode::TOO_MANY_REQUESTS)
//!         .header("retry-after", "7")
//!         .header("x-ratelimit-limit-requests", "60")
//!         .header("x-ratelimit-remaining-requests", "0")
//!         .header("x-ratelimit-reset-requests", "1.5s")
//!         .body(())
//!         .unwrap();
//!     Ok::<_, Infallible>(response)
//! });
//!
//! let mut response = upstream.oneshot(Request::new(())).await.unwrap();
//! let info = RateLimitInfo::of_response(&mut response).unwrap();
//! assert_eq!(info.retry_after, Some(Duration::from_secs(7)));
//! assert_eq!(info.limit, Some(60));
//! assert_eq!(info.reset, Some(Duration::from_millis(1500)));
//! assert_eq!(info.wait(), Some(Duration::from_secs(7)));
//! assert!(response.extensions().get::<RateLimitInfo>().is_some());
//! # }
//! ```

use std::time::{Duration, SystemTime};

use http::HeaderMap;

mod parse;
#[cfg(test)]
mod tests;

pub use parse::{
    parse_delta_seconds, parse_duration, parse_http_date, parse_retry_after, HeaderError,
    MAX_ITEMS, MAX_LINES, MAX_VALUE_LEN, MAX_WAIT,
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
        parse::from_headers_at(headers, &SystemTime::now)
    }

    /// As [`from_headers`](Self::from_headers), with an explicit "now" (for HTTP-dates and epoch
    /// resets when the response has no `Date` header).
    pub fn from_headers_at(headers: &HeaderMap, now: SystemTime) -> Option<Self> {
        parse::from_headers_at(headers, &move || now)
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
