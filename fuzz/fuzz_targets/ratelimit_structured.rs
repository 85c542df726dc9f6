//! The structured-field `RateLimit` and `RateLimit-Policy` headers (dictionary and list
//! drafts).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_outbound_fuzz::{check_headers, header_map};

fuzz_target!(|data: &[u8]| {
    check_headers(&header_map(&["ratelimit", "ratelimit-policy"], data));
});
