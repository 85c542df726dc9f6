//! The dead-letter sinks on their own: the in-memory bound, and the JSON Lines file on real
//! files (modes, failures, group commit, removal).

use tower_outbound::dead_letter::{DeadLetter, SinkErrorKind};
use tower_outbound::{JsonLinesSink, MemorySink, Sink};

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
    let sink = JsonLinesSink::new(locked.join("dead.jsonl"));
    let result = sink.write(letter("a")).await;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Root ignores the mode; everyone else gets a typed error.
    if let Err(err) = result {
        assert_eq!(err.kind(), SinkErrorKind::Io, "{err}");
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
