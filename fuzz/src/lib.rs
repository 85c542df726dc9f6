//! Shared pieces of the fuzz targets: turning fuzz bytes into header maps, and the invariants
//! every rate-limit result must keep.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use tower_outbound::rate_limit::MAX_WAIT;
use tower_outbound::RateLimitInfo;

/// A fixed "now" (2023-11-14), so a run does not depend on the wall clock.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// Splits `data` into lines at `\n`; the first byte of each line picks one of `names`, the rest
/// is the value. Lines whose value is not a valid header value are skipped.
pub fn header_map(names: &[&'static str], data: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some((&pick, value)) = line.split_first() else {
            continue;
        };
        let name = HeaderName::from_static(names[usize::from(pick) % names.len()]);
        if let Ok(value) = HeaderValue::from_bytes(value) {
            if map.try_append(name, value).is_err() {
                break;
            }
        }
    }
    map
}

/// Parses `map` with and without a clock and checks what any result must keep.
pub fn check_headers(map: &HeaderMap) {
    let info = RateLimitInfo::from_headers_at(map, now());
    check_info(info);
    // Far past and far future clocks: a date or epoch must never overflow.
    check_info(RateLimitInfo::from_headers_at(map, UNIX_EPOCH));
    check_info(RateLimitInfo::from_headers_at(
        map,
        UNIX_EPOCH + Duration::from_secs(253_402_300_799), // 9999-12-31T23:59:59Z
    ));
}

/// What every parsed `RateLimitInfo` keeps: no wait longer than `MAX_WAIT`.
pub fn check_info(info: Option<RateLimitInfo>) {
    let Some(info) = info else { return };
    for wait in [info.retry_after, info.reset, info.window, info.wait()] {
        if let Some(wait) = wait {
            assert!(wait <= MAX_WAIT, "{wait:?} is longer than MAX_WAIT: {info:?}");
        }
    }
    assert_eq!(info.is_exhausted(), info.remaining == Some(0));
}
