//! The dead-letter sinks on their own: the in-memory bound, and the JSON Lines file on real
//! files (modes, failures, group commit, removal).

use tower_outbound::dead_letter::{DeadLetter, SinkErrorKind};
use tower_outbound::{JsonLinesSink, MemorySink, Sink};

#[path = "support/join.rs"]
mod join;
use join::join_all;

fn letter(id: &str) -> DeadLetter {
    serde_json::from_value(serde_json::json!({
        "version": 1,
        "id": id,
        "method": "POST",
        "uri": "https://api.example.com/v1/orders",
        "headers": [{"name": "content-type", "value": "application/json"}],
        "body": {"encoding": "text", "data": "{\"sku\":\"A-1\"}"},
        "body_kept": true,
        "outcome": {"status": 503},
        "attempts": 4,
        "waited_ms": 1200,
        "first_attempt_at_ms": 1_700_000_000_000u64,
        "last_attempt_at_ms": 1_700_000_001_200u64,
    }))
    .expect("a valid letter")
}

fn ids(letters: &[DeadLetter]) -> Vec<&str> {
    letters.iter().map(|l| l.id.as_str()).collect()
}

// ---- MemorySink ----

#[tokio::test]
async fn memory_sink_is_bounded_and_refuses_instead_of_growing_without_limit() {
    let sink = MemorySink::with_capacity(3);
    for i in 0..3 {
        sink.write(letter(&format!("l{i}"))).await.unwrap();
    }
    // Full: the new letters are refused with a typed error, counted, and nothing kept is lost.
    for i in 3..6 {
        let err = sink.write(letter(&format!("l{i}"))).await.unwrap_err();
        assert_eq!(err.kind(), SinkErrorKind::Full, "{err}");
        assert!(err.is_full());
    }
    assert_eq!(sink.dropped(), 3);
    assert_eq!(ids(&sink.letters()), ["l0", "l1", "l2"]);

    // Room again after a removal.
    assert_eq!(sink.remove(&["l1".to_owned()]).await.unwrap(), 1);
    sink.write(letter("l6")).await.unwrap();
    assert_eq!(ids(&sink.letters()), ["l0", "l2", "l6"]);
}

#[tokio::test]
async fn memory_sink_new_keeps_a_default_bound() {
    let sink = MemorySink::new();
    assert_eq!(sink.capacity(), 10_000);
    sink.write(letter("a")).await.unwrap();
    assert_eq!(sink.count().await.unwrap(), 1);
    assert_eq!(sink.dropped(), 0);
}

// ---- JsonLinesSink: modes and failures ----

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test]
async fn dead_letter_file_is_not_world_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("dead.jsonl");
    let sink = JsonLinesSink::new(&path);
    sink.write(letter("a")).await.unwrap();
    assert_eq!(mode(&path), 0o600);
}

#[cfg(unix)]
#[tokio::test]
async fn rewritten_dead_letter_file_is_not_world_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    let sink = JsonLinesSink::new(&path);
    for id in ["a", "b", "c"] {
        sink.write(letter(id)).await.unwrap();
    }
    // Whatever way the sink removes (a rewrite through a temporary file, or compaction), the
    // file stays private, and no other file in the directory is readable by others.
    sink.remove(&["b".to_owned()]).await.unwrap();
    sink.compact().await.unwrap();
    assert_eq!(ids(&sink.read_all().await.unwrap()), ["a", "c"]);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap().path();
        assert_eq!(mode(&entry), 0o600, "{}", entry.display());
    }
}

#[cfg(unix)]
#[tokio::test]
async fn existing_world_readable_dead_letter_file_is_narrowed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    JsonLinesSink::new(&path).write(letter("a")).await.unwrap();
    assert_eq!(mode(&path), 0o600);
}

#[tokio::test]
async fn unwritable_dead_letter_path_is_a_typed_error_not_a_panic() {
    // A read-only directory does not stop root (tests may run as root), so the path goes
    // through a regular file instead: no directory can be created there, for anyone.
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, "x").unwrap();
    let sink = JsonLinesSink::new(blocker.join("dead.jsonl"));
    let err = sink.write(letter("a")).await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Io, "{err}");
    assert!(err.to_string().contains("not-a-directory"), "{err}");
    // Reading says the same, and nothing panics.
    let err = sink.read_all().await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Io, "{err}");
}

#[cfg(unix)]
#[tokio::test]
async fn read_only_dead_letter_directory_is_a_typed_error_not_a_panic() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
    // Root (or a process with CAP_DAC_OVERRIDE) ignores the mode: ask the system what this
    // process may do there, and check that the sink does exactly that.
    let probe = locked.join("probe");
    let writable = std::fs::write(&probe, "").is_ok();
    let _ = std::fs::remove_file(&probe);
    let sink = JsonLinesSink::new(locked.join("dead.jsonl"));
    let result = sink.write(letter("a")).await;
    let read = sink.read_all().await;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    if writable {
        // The directory's mode does not bind this process: the letter is kept.
        result.unwrap();
        let ids: Vec<String> = read.unwrap().into_iter().map(|l| l.id).collect();
        assert_eq!(ids, ["a"]);
    } else {
        let err = result.expect_err("a directory this process cannot write to");
        assert_eq!(err.kind(), SinkErrorKind::Io, "{err}");
        assert!(err.to_string().contains("locked"), "{err}");
        // Nothing was written, so reading finds nothing, without an error.
        assert!(read.unwrap().is_empty());
    }
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn full_disk_is_a_typed_error_not_a_panic() {
    // /dev/full answers every write with ENOSPC, as a full disk does.
    let sink = JsonLinesSink::new("/dev/full");
    let err = sink.write(letter("a")).await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Io, "{err}");
    assert_eq!(
        std::error::Error::source(&err)
            .and_then(|e| e.downcast_ref::<std::io::Error>())
            .and_then(std::io::Error::raw_os_error),
        Some(28), // ENOSPC
        "{err}"
    );
}

// ---- JsonLinesSink: group commit and linear removal ----

fn ids_of(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

async fn write_all(sink: &JsonLinesSink, ids: &[String]) {
    let writes = ids.iter().map(|id| {
        let sink = sink.clone();
        let letter = letter(id);
        async move { sink.write(letter).await }
    });
    for result in join_all(writes).await {
        result.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_dead_letters_share_one_fsync_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    let sink = JsonLinesSink::new(&path);
    let all = ids_of("c", 2000);
    write_all(&sink, &all).await;
    // Every letter is whole and durable before its write returned; far fewer fsyncs than
    // letters (one per letter before group commit).
    let reopened = JsonLinesSink::new(&path);
    assert_eq!(reopened.read_all().await.unwrap().len(), 2000);
    assert_eq!(reopened.skipped_lines(), 0);
    assert!(
        sink.batches_written() < 2000,
        "{} batches for 2000 letters",
        sink.batches_written()
    );
}

#[tokio::test]
async fn a_letter_is_written_even_if_its_caller_drops_the_future() {
    let dir = tempfile::tempdir().unwrap();
    let sink = JsonLinesSink::new(dir.path().join("dead.jsonl"));
    let mut write = sink.write(letter("dropped"));
    // Polled once (handed to the writer), then dropped, as a caller that times out would.
    std::future::poll_fn(|cx| {
        let _ = write.as_mut().poll(cx);
        std::task::Poll::Ready(())
    })
    .await;
    drop(write);
    // Records are written in order: once a later one is durable, so is the dropped one.
    sink.write(letter("later")).await.unwrap();
    assert_eq!(ids(&sink.read_all().await.unwrap()), ["dropped", "later"]);
}

#[cfg(unix)]
fn inode(path: &std::path::Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
}

#[cfg(unix)]
#[tokio::test]
async fn removing_letters_one_by_one_does_not_rewrite_the_whole_file_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    let sink = JsonLinesSink::new(&path);
    let all = ids_of("r", 3000);
    write_all(&sink, &all).await;
    let file = inode(&path);
    let size = std::fs::metadata(&path).unwrap().len();
    for id in &all[..100] {
        assert_eq!(sink.remove(std::slice::from_ref(id)).await.unwrap(), 1);
    }
    // Removing an id twice, or an unknown id, removes nothing.
    assert_eq!(sink.remove(&all[..2]).await.unwrap(), 0);
    assert_eq!(sink.remove(&["unknown".to_owned()]).await.unwrap(), 0);
    // The same file, only appended to (a tombstone per call), not rewritten per removal.
    assert_eq!(inode(&path), file);
    let grown = std::fs::metadata(&path).unwrap().len() - size;
    assert!(grown < 100 * 64, "{grown} bytes appended for 100 removals");
    assert_eq!(sink.count().await.unwrap(), 2900);
    // A fresh reader agrees: removed letters stay removed.
    let reopened = JsonLinesSink::new(&path);
    let kept = reopened.read_all().await.unwrap();
    assert_eq!(kept.len(), 2900);
    assert_eq!(kept[0].id, "r100");
}

#[tokio::test]
async fn replaying_many_letters_compacts_the_file_once_garbage_dominates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    let sink = JsonLinesSink::new(&path);
    let all = ids_of("p", 3000);
    write_all(&sink, &all).await;
    // A torn line in the middle of the log survives removals and compaction byte for byte.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"version\":1,\"id\":\"torn"))
        .unwrap();
    write_all(&sink, &ids_of("q", 10)).await;

    let read = sink.read_all().await.unwrap();
    assert_eq!(read.len(), 3010);
    let delivered: Vec<String> = read.iter().take(2995).map(|l| l.id.clone()).collect();
    assert_eq!(sink.remove(&delivered).await.unwrap(), 2995);

    // Removed records outnumber the kept ones: the file was compacted to what is kept.
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 16, "{text}");
    assert!(text.contains("{\"version\":1,\"id\":\"torn\n"));
    assert!(!text.contains("\"removed\""));
    let kept = JsonLinesSink::new(&path).read_all().await.unwrap();
    let mut expected: Vec<String> = all[2995..].to_vec();
    expected.extend(ids_of("q", 10));
    assert_eq!(
        kept.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
        expected
    );
    // And writing goes on in the compacted file.
    sink.write(letter("after")).await.unwrap();
    assert_eq!(sink.count().await.unwrap(), 16);
}

#[tokio::test]
async fn a_torn_last_line_after_removals_is_skipped_and_the_next_record_stays_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    let sink = JsonLinesSink::new(&path);
    write_all(&sink, &ids_of("t", 3)).await;
    sink.remove(&["t1".to_owned()]).await.unwrap();
    // A crash in the middle of the next batch.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"removed\":[\"t0"))
        .unwrap();
    assert_eq!(ids(&sink.read_all().await.unwrap()), ["t0", "t2"]);
    sink.write(letter("t3")).await.unwrap();
    assert_eq!(sink.remove(&["t2".to_owned()]).await.unwrap(), 1);
    assert_eq!(
        ids(&JsonLinesSink::new(&path).read_all().await.unwrap()),
        ["t0", "t3"]
    );
}

#[tokio::test]
async fn a_queue_of_letters_handed_over_at_once_costs_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    let sink = JsonLinesSink::new(&path);
    let letters: Vec<DeadLetter> = ids_of("m", 500).iter().map(|id| letter(id)).collect();
    let results = sink.write_many(letters).await;
    assert_eq!(results.len(), 500);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(sink.batches_written(), 1);
    assert_eq!(
        JsonLinesSink::new(&path).read_all().await.unwrap().len(),
        500
    );
}

#[tokio::test]
async fn write_many_reports_each_letter_a_full_memory_sink_refused() {
    let sink = MemorySink::with_capacity(3);
    let letters: Vec<DeadLetter> = ids_of("m", 5).iter().map(|id| letter(id)).collect();
    let results = sink.write_many(letters).await;
    let stored: Vec<bool> = results.iter().map(Result::is_ok).collect();
    assert_eq!(stored, [true, true, true, false, false]);
    assert_eq!(sink.dropped(), 2);
}
