//! libFuzzer's entry for `tower_outbound_fuzz::headers::x_ratelimit` (see fuzz/src for what it checks).
#![no_main]

use libfuzzer_sys::{fuzz_target, Corpus};

fuzz_target!(|data: &[u8]| -> Corpus {
    if tower_outbound_fuzz::headers::x_ratelimit(data) {
        Corpus::Keep
    } else {
        Corpus::Reject
    }
});
