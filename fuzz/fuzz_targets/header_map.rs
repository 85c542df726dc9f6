//! `RateLimitInfo` from a whole header map with every header the crate reads, mixed, repeated
//! and in any order; also through `of_response` twice (the second read is the extension).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_outbound::RateLimitInfo;
use tower_outbound_fuzz::{check_headers, check_info, header_map};

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

fuzz_target!(|data: &[u8]| {
    let map = header_map(NAMES, data);
    check_headers(&map);
    let mut response = http::Response::new(());
    *response.headers_mut() = map;
    let first = RateLimitInfo::of_response(&mut response);
    check_info(first);
    assert_eq!(RateLimitInfo::of_response(&mut response).is_some(), first.is_some());
});
