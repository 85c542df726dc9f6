//! The draft-7 `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset` headers (with a
//! `RateLimit-Policy` and a `Date`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_outbound_fuzz::{check_headers, header_map};

fuzz_target!(|data: &[u8]| {
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
});
