//! Header parsers. (stub: to be implemented)

use std::fmt;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};

use super::RateLimitInfo;

/// Why a rate-limit header could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// The value is not valid UTF-8 / visible ASCII.
    NotText,
    /// The value does not have the expected syntax.
    Malformed,
    /// The value parses but is out of range (overflowing, negative, or an absurd wait).
    OutOfRange,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeaderError::NotText => "header value is not text",
            HeaderError::Malformed => "header value is malformed",
            HeaderError::OutOfRange => "header value is out of range",
        })
    }
}

impl std::error::Error for HeaderError {}

/// Parses `Retry-After`.
pub fn parse_retry_after(
    _value: &HeaderValue,
    _server_date: Option<SystemTime>,
    _now: SystemTime,
) -> Result<Duration, HeaderError> {
    Err(HeaderError::Malformed)
}

/// Parses delta-seconds.
pub fn parse_delta_seconds(_value: &[u8]) -> Result<Duration, HeaderError> {
    Err(HeaderError::Malformed)
}

/// Parses a duration string.
pub fn parse_duration(_value: &str) -> Result<Duration, HeaderError> {
    Err(HeaderError::Malformed)
}

/// Parses an HTTP-date.
pub fn parse_http_date(_value: &[u8]) -> Result<SystemTime, HeaderError> {
    Err(HeaderError::Malformed)
}

pub(super) fn from_headers_at(_headers: &HeaderMap, _now: SystemTime) -> Option<RateLimitInfo> {
    None
}
