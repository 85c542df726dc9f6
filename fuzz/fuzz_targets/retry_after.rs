//! `Retry-After` in both forms (delta-seconds and the three HTTP-date forms), with and without
//! a `Date` header, through the single-value parser and through a whole header map.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use tower_outbound::rate_limit::{parse_http_date, parse_retry_after, MAX_WAIT};
use tower_outbound_fuzz::{check_headers, header_map, now};

fuzz_target!(|data: &[u8]| {
    // The first line is the value; a second line, when there is one, is the server's Date.
    let mut lines = data.splitn(2, |&b| b == b'\n');
    let value = lines.next().unwrap_or_default();
    let date = lines.next().and_then(|d| parse_http_date(d).ok());
    if let Ok(value) = HeaderValue::from_bytes(value) {
        for reference in [now(), UNIX_EPOCH, UNIX_EPOCH + Duration::from_secs(253_402_300_799)] {
            for server_date in [None, date] {
                if let Ok(wait) = parse_retry_after(&value, server_date, reference) {
                    assert!(wait <= MAX_WAIT);
                }
            }
        }
    }
    check_headers(&header_map(&["retry-after", "retry-after", "date"], data));
});
