//! The dead-letter JSON Lines reader on torn, corrupted and truncated files: the fuzz bytes
//! are written to a file that `JsonLinesSink` then reads. Reading never fails on damage, never
//! panics, counts what it skipped, and every letter read can be turned back into a request
//! (or says it cannot) without panicking. Round trip: the letters read, written again by a
//! sink, read back equal, in the same order, none skipped.

use std::cell::RefCell;
use std::path::PathBuf;

use tower_outbound::dead_letter::Sink;
use tower_outbound::JsonLinesSink;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    static DIR: RefCell<PathBuf> = RefCell::new({
        let dir = std::env::temp_dir().join(format!("tower-outbound-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    });
}

pub fn dead_letter_file(data: &[u8]) -> bool {
    let dir = DIR.with(|d| d.borrow().clone());
    let path = dir.join("letters.jsonl");
    let again = dir.join("again.jsonl");
    std::fs::write(&path, data).unwrap();
    let _ = std::fs::remove_file(&again);
    let sink = JsonLinesSink::new(&path);
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let letters = sink
                .read_all()
                .await
                .expect("a readable file never fails to read");
            let count = sink
                .count()
                .await
                .expect("a readable file never fails to count");
            assert_eq!(letters.len(), count);
            let lines = data
                .split(|&b| b == b'\n')
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                .count();
            assert!(letters.len() <= lines);
            assert!(sink.skipped_lines() as usize <= 2 * lines);
            for letter in &letters {
                let _ = letter.to_request();
                let _ = format!("{letter:?}");
            }

            // What the sink read, it writes so that it reads back the same.
            let rewritten = JsonLinesSink::new(&again);
            for result in rewritten.write_many(letters.clone()).await {
                result.expect("a letter the sink read can be written again");
            }
            assert_eq!(rewritten.read_all().await.unwrap(), letters);
            assert_eq!(rewritten.count().await.unwrap(), letters.len());
            assert_eq!(rewritten.skipped_lines(), 0);
        })
    });
    true
}
