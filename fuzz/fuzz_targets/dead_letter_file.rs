//! libFuzzer's entry for `tower_outbound_fuzz::dead_letter_file::dead_letter_file` (see fuzz/src for what it checks).
#![no_main]

use libfuzzer_sys::{fuzz_target, Corpus};

fuzz_target!(|data: &[u8]| -> Corpus {
    if tower_outbound_fuzz::dead_letter_file::dead_letter_file(data) {
        Corpus::Keep
    } else {
        Corpus::Reject
    }
});
