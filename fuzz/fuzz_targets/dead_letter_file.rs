//! The dead-letter JSON Lines reader on torn, corrupted and truncated files: the fuzz bytes
//! are written to a file that `JsonLinesSink` then reads. Reading never fails on damage, never
//! panics, counts what it skipped, and every letter read can be turned back into a request
//! (or says it cannot) without panicking.
#![no_main]

use std::cell::RefCell;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use tower_outbound::dead_letter::Sink;
use tower_outbound::JsonLinesSink;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    static PATH: RefCell<PathBuf> = RefCell::new({
        let dir = std::env::temp_dir().join(format!("tower-outbound-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("letters.jsonl")
    });
}

fuzz_target!(|data: &[u8]| {
    let path = PATH.with(|p| p.borrow().clone());
    std::fs::write(&path, data).unwrap();
    let sink = JsonLinesSink::new(&path);
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let letters = sink.read_all().await.expect("a readable file never fails to read");
            let count = sink.count().await.expect("a readable file never fails to count");
            assert_eq!(letters.len(), count);
            let lines = data.split(|&b| b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)).count();
            assert!(letters.len() <= lines);
            assert!(sink.skipped_lines() as usize <= 2 * lines);
            for letter in &letters {
                let _ = letter.to_request();
                let _ = format!("{letter:?}");
            }
        })
    });
});
