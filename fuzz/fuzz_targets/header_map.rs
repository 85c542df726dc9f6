//! libFuzzer's entry for `tower_outbound_fuzz::headers::header_map_target` (see fuzz/src for what it checks).
#![no_main]

use libfuzzer_sys::{fuzz_target, Corpus};

fuzz_target!(|data: &[u8]| -> Corpus {
    if tower_outbound_fuzz::headers::header_map_target(data) {
        Corpus::Keep
    } else {
        Corpus::Reject
    }
});
