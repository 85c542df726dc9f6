//! The Lehnz API key check, and a client built with that key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_outbound::lehnz::{ApiKey, Client};

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    if let Ok(key) = ApiKey::parse(&raw) {
        let value = key.header_value();
        assert!(value.is_sensitive());
        assert!(!value.is_empty());
        // The Debug output never holds the key.
        let debug = format!("{key:?}");
        if value.len() > 12 {
            assert!(!debug.contains(value.to_str().unwrap()));
        }
    }
    let _ = Client::builder(&*raw).build();
});
