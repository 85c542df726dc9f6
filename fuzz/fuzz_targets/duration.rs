//! Duration strings ("6m0s", "17ms", "1h2m3.5s"), delta-seconds and HTTP-dates, one value at a
//! time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_outbound::rate_limit::{parse_delta_seconds, parse_duration, parse_http_date, MAX_WAIT};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(d) = parse_duration(text) {
            assert!(d <= MAX_WAIT);
            // A parsed duration printed in whole nanoseconds parses back to itself.
            assert_eq!(parse_duration(&format!("{}ns", d.as_nanos())), Ok(d));
        }
    }
    if let Ok(d) = parse_delta_seconds(data) {
        assert!(d <= MAX_WAIT);
        assert_eq!(d.subsec_nanos(), 0);
    }
    let _ = parse_http_date(data);
});
