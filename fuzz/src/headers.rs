//! The header parsers: each target reads the fuzz bytes as header values (bad input: nothing
//! panics, no wait over `MAX_WAIT`, the client's clock does not count when the server sent its
//! `Date`), then as the values of a round trip (well-formed input: the crate reads back what
//! was written, see [`round_trip`](super::round_trip)).

use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Unstructured;
use http::header::RETRY_AFTER;
use http::HeaderValue;
use tower_outbound::rate_limit::{
    parse_delta_seconds, parse_duration, parse_http_date, parse_retry_after, MAX_LINES, MAX_WAIT,
};
use tower_outbound::RateLimitInfo;

use super::{check_headers, check_info, header_map, now, one_server_date, round_trip, LAST_SECOND};

/// `Retry-After` in both forms (delta-seconds and the three HTTP-date forms), with and without
/// a `Date` header, through the single-value parser and through a whole header map; the map's
/// `retry_after` is the longest of its lines read one by one.
pub fn retry_after(data: &[u8]) -> bool {
    // The first line is the value; a second line, when there is one, is the server's Date.
    let mut lines = data.splitn(2, |&b| b == b'\n');
    let value = lines.next().unwrap_or_default();
    let date = lines.next().and_then(|d| parse_http_date(d).ok());
    if let Ok(value) = HeaderValue::from_bytes(value) {
        for reference in [
            now(),
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::from_secs(LAST_SECOND),
        ] {
            for server_date in [None, date] {
                if let Ok(wait) = parse_retry_after(&value, server_date, reference) {
                    assert!(wait <= MAX_WAIT);
                }
            }
        }
    }
    let map = header_map(&["retry-after", "retry-after", "date"], data);
    check_headers(&map);
    let dates = map.get_all(http::header::DATE).iter().count();
    let server_date = one_server_date(&map);
    if dates == 0 || server_date.is_some() {
        let longest = map
            .get_all(RETRY_AFTER)
            .iter()
            .take(MAX_LINES)
            .filter_map(|v| parse_retry_after(v, server_date, now()).ok())
            .max();
        let info = RateLimitInfo::from_headers_at(&map, now());
        assert_eq!(info.and_then(|i| i.retry_after), longest, "{map:?}");
    }
    let _ = round_trip::retry_after(&mut Unstructured::new(data));
    true
}

/// The draft-7 `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset` headers (with a
/// `RateLimit-Policy` and a `Date`).
pub fn ratelimit_draft7(data: &[u8]) -> bool {
    check_headers(&header_map(
        &[
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
            "ratelimit-policy",
            "date",
        ],
        data,
    ));
    let _ = round_trip::draft7(&mut Unstructured::new(data));
    true
}

/// The structured-field `RateLimit` and `RateLimit-Policy` headers (dictionary and list
/// drafts).
pub fn ratelimit_structured(data: &[u8]) -> bool {
    check_headers(&header_map(&["ratelimit", "ratelimit-policy"], data));
    let _ = round_trip::structured(&mut Unstructured::new(data));
    true
}

/// `X-RateLimit-*` (delta, epoch seconds and epoch milliseconds resets) and the OpenAI
/// `x-ratelimit-*-requests` / `-tokens` families (duration resets), with a `Date`.
pub fn x_ratelimit(data: &[u8]) -> bool {
    check_headers(&header_map(
        &[
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
            "date",
        ],
        data,
    ));
    let mut u = Unstructured::new(data);
    let _ = round_trip::x_ratelimit(&mut u);
    let _ = round_trip::openai(&mut u);
    true
}

/// Duration strings ("6m0s", "17ms", "1h2m3.5s"), delta-seconds and HTTP-dates, one value at a
/// time; then a duration written in Go's form and others, read back.
pub fn duration(data: &[u8]) -> bool {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(d) = parse_duration(text) {
            assert!(d <= MAX_WAIT);
            // A parsed duration printed in whole nanoseconds, and in Go's form, parses back
            // to itself.
            assert_eq!(parse_duration(&format!("{}ns", d.as_nanos())), Ok(d));
            assert_eq!(parse_duration(&round_trip::go_duration(d, "µs")), Ok(d));
        }
    }
    if let Ok(d) = parse_delta_seconds(data) {
        assert!(d <= MAX_WAIT);
        assert_eq!(d.subsec_nanos(), 0);
        assert_eq!(
            parse_delta_seconds(d.as_secs().to_string().as_bytes()),
            Ok(d)
        );
    }
    if let Ok(date) = parse_http_date(data) {
        // A parsed date written again in each form names the same second.
        for form in round_trip::http_dates(date) {
            assert_eq!(parse_http_date(form.as_bytes()), Ok(date), "{form:?}");
        }
    }
    let _ = round_trip::duration(&mut Unstructured::new(data));
    true
}

const NAMES: &[&str] = &[
    "retry-after",
    "date",
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "content-type",
];

/// `RateLimitInfo` from a whole header map with every header the crate reads, mixed, repeated
/// and in any order; also through `of_response` twice (the second read is the extension).
pub fn header_map_target(data: &[u8]) -> bool {
    let map = header_map(NAMES, data);
    check_headers(&map);
    let mut response = http::Response::new(());
    *response.headers_mut() = map;
    let first = RateLimitInfo::of_response(&mut response);
    check_info(first);
    assert_eq!(RateLimitInfo::of_response(&mut response), first);
    true
}
