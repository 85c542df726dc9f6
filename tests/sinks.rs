//! The dead-letter sinks on their own: the in-memory bound, and the JSON Lines file on real
//! files (modes, failures, group commit, removal).

use tower_outbound::dead_letter::{DeadLetter, SinkErrorKind};
use tower_outbound::{MemorySink, Sink};

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
