//! `X-RateLimit-*` (delta, epoch seconds and epoch milliseconds resets) and the OpenAI
//! `x-ratelimit-*-requests` / `-tokens` families (duration resets), with a `Date`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_outbound_fuzz::{check_headers, header_map};

fuzz_target!(|data: &[u8]| {
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
});
