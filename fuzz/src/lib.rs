//! The fuzz targets of tower-outbound, as plain functions of the fuzz input's bytes.
//!
//! Each binary in `fuzz_targets/` is one line that hands libFuzzer's input to the function of
//! the same name in [`TARGETS`]. The same functions run on stable in the crate's own tests
//! (`tests/fuzz_seeds.rs` includes this file and feeds every file of `fuzz/seeds/TARGET`
//! through its target), so `cargo test` builds every oracle and runs it over the committed
//! seeds; `scripts/fuzz.sh` runs them under libFuzzer on nightly.
//!
//! Nothing here may name this crate by path (`crate::`, `tower_outbound_fuzz::`): the test
//! includes the files as a module of its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use tower_outbound::rate_limit::MAX_WAIT;
use tower_outbound::RateLimitInfo;

pub mod dead_letter_file;
pub mod headers;
#[cfg(all(feature = "lehnz", feature = "sim"))]
pub mod lehnz;
pub mod outbound_stack;
pub mod round_trip;

/// A fuzz target: its name (the binary's and the seed directory's) and its function, which
/// says whether it used the input (`false`: a structured target could not read its input as
/// its type, and libFuzzer is told to drop it from the corpus).
pub type Target = (&'static str, fn(&[u8]) -> bool);

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("retry_after", headers::retry_after),
    ("ratelimit_draft7", headers::ratelimit_draft7),
    ("ratelimit_structured", headers::ratelimit_structured),
    ("x_ratelimit", headers::x_ratelimit),
    ("duration", headers::duration),
    ("header_map", headers::header_map_target),
    ("dead_letter_file", dead_letter_file::dead_letter_file),
    ("outbound_stack", outbound_stack::outbound_stack),
    #[cfg(all(feature = "lehnz", feature = "sim"))]
    ("lehnz_key", lehnz::lehnz_key),
    #[cfg(all(feature = "lehnz", feature = "sim"))]
    ("lehnz_reply", lehnz::lehnz_reply),
    #[cfg(all(feature = "lehnz", feature = "sim"))]
    ("sim_request", lehnz::sim_request),
];

/// A fixed "now" (2023-11-14), so a run does not depend on the wall clock.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// The last second an HTTP-date can name: 9999-12-31T23:59:59Z.
pub const LAST_SECOND: u64 = 253_402_300_799;

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

/// Parses `map` against three clocks and checks what any result must keep: no wait longer
/// than `MAX_WAIT`, and, when the map carries one unambiguous server `Date`, a result that
/// does not depend on the client's clock (dates and epochs are counted from the server's
/// `Date`, deltas from the response).
pub fn check_headers(map: &HeaderMap) {
    let at_now = RateLimitInfo::from_headers_at(map, now());
    check_info(at_now);
    // Far past and far future clocks: a date or epoch must never overflow.
    let at_epoch = RateLimitInfo::from_headers_at(map, UNIX_EPOCH);
    let at_end = RateLimitInfo::from_headers_at(map, UNIX_EPOCH + Duration::from_secs(LAST_SECOND));
    check_info(at_epoch);
    check_info(at_end);
    if one_server_date(map).is_some() {
        assert_eq!(
            at_now, at_epoch,
            "with a server Date the client's clock does not count"
        );
        assert_eq!(
            at_now, at_end,
            "with a server Date the client's clock does not count"
        );
    }
}

/// The server's `Date` when every `Date` line of `map` is a valid HTTP-date naming the same
/// time (and there are few enough lines to be read), else `None`.
pub fn one_server_date(map: &HeaderMap) -> Option<SystemTime> {
    let mut dates = map.get_all(http::header::DATE).iter();
    let first = tower_outbound::rate_limit::parse_http_date(dates.next()?.as_bytes()).ok()?;
    if map.get_all(http::header::DATE).iter().count() > tower_outbound::rate_limit::MAX_LINES {
        return None;
    }
    dates
        .all(|d| tower_outbound::rate_limit::parse_http_date(d.as_bytes()) == Ok(first))
        .then_some(first)
}

/// What every parsed `RateLimitInfo` keeps: no wait longer than `MAX_WAIT`.
pub fn check_info(info: Option<RateLimitInfo>) {
    let Some(info) = info else { return };
    for wait in [info.retry_after, info.reset, info.window, info.wait()]
        .into_iter()
        .flatten()
    {
        assert!(
            wait <= MAX_WAIT,
            "{wait:?} is longer than MAX_WAIT: {info:?}"
        );
    }
}

/// Reads the fuzz input as `T` the way libFuzzer's typed targets do (`arbitrary_take_rest`).
pub fn structured<'a, T: arbitrary::Arbitrary<'a>>(data: &'a [u8]) -> Option<T> {
    T::arbitrary_take_rest(arbitrary::Unstructured::new(data)).ok()
}
