//! Dead letters at outage scale: 100,000 letters written to a `JsonLinesSink` by concurrent
//! writers (group commit: one write and one fsync per batch), then removed as a replay does
//! (one read, one removal of everything delivered) and one at a time.
//!
//! ```text
//! cargo bench --bench dead_letters
//! ```
//!
//! Files go to a temporary directory on the same disk as the system's temp dir; the figures
//! depend on that disk's fsync latency.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tower_outbound::dead_letter::DeadLetter;
use tower_outbound::{JsonLinesSink, Sink};

const LETTERS: usize = 100_000;

fn letter(id: usize) -> DeadLetter {
    serde_json::from_value(serde_json::json!({
        "version": 1,
        "id": format!("{id:08}-0000-4000-8000-000000000000"),
        "method": "POST",
        "uri": "https://api.example.com/v1/orders",
        "headers": [
            {"name": "content-type", "value": "application/json"},
            {"name": "authorization", "value": "[redacted]"},
            {"name": "idempotency-key", "value": "6f1c2b8e-6a44-4f5e-9a53-3a9d1f0e2c11"}
        ],
        "body": {"encoding": "text", "data": "{\"sku\":\"A-1\",\"quantity\":3}"},
        "body_kept": true,
        "idempotency_key": "6f1c2b8e-6a44-4f5e-9a53-3a9d1f0e2c11",
        "outcome": {"status": 503},
        "attempts": 4,
        "waited_ms": 1200,
        "first_attempt_at_ms": 1_700_000_000_000u64,
        "last_attempt_at_ms": 1_700_000_001_200u64,
    }))
    .expect("a valid letter")
}

/// Writes `LETTERS` letters from `writers` tasks, each waiting for its letter to be durable
/// before the next; returns the time taken.
async fn write_concurrently(sink: &JsonLinesSink, writers: usize) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let sink = sink.clone();
            tokio::spawn(async move {
                for i in (w..LETTERS).step_by(writers) {
                    sink.write(letter(i)).await.expect("written");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task");
    }
    start.elapsed()
}

fn dead_letters(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut group = c.benchmark_group("dead_letters");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(1));

    group.throughput(Throughput::Elements(LETTERS as u64));
    for writers in [64, 256] {
        group.bench_function(format!("json_lines_write_100k_{writers}_writers"), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let dir = tempfile::tempdir().expect("a temporary directory");
                        let sink = JsonLinesSink::new(dir.path().join("dead.jsonl"));
                        total += write_concurrently(&sink, writers).await;
                    }
                    total
                })
            })
        });
    }

    // A writer that drains a queue hands letters over 1,000 at a time (`write_many`).
    group.bench_function("json_lines_write_many_100k_by_1000", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().expect("a temporary directory");
                    let sink = JsonLinesSink::new(dir.path().join("dead.jsonl"));
                    let start = Instant::now();
                    for chunk in 0..LETTERS / 1000 {
                        let letters = (chunk * 1000..(chunk + 1) * 1000).map(letter).collect();
                        for result in sink.write_many(letters).await {
                            result.expect("written");
                        }
                    }
                    total += start.elapsed();
                }
                total
            })
        })
    });

    // A replay: read every letter, then remove all that were delivered in one call.
    group.bench_function("json_lines_read_and_remove_100k", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().expect("a temporary directory");
                    let sink = JsonLinesSink::new(dir.path().join("dead.jsonl"));
                    write_concurrently(&sink, 64).await;
                    let start = Instant::now();
                    let letters = sink.read_all().await.expect("read");
                    let ids: Vec<String> = letters.into_iter().map(|l| l.id).collect();
                    let removed = sink.remove(&ids).await.expect("removed");
                    total += start.elapsed();
                    assert_eq!(removed, LETTERS);
                }
                total
            })
        })
    });

    // Removal one letter per call (a replay that removes as it goes): each call appends a
    // tombstone, never rewrites the 100k-letter file.
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("json_lines_remove_1k_one_by_one_of_100k", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().expect("a temporary directory");
                    let sink = JsonLinesSink::new(dir.path().join("dead.jsonl"));
                    write_concurrently(&sink, 64).await;
                    let ids: Vec<String> = (0..1_000).map(|i| letter(i).id).collect();
                    sink.count().await.expect("count");
                    let start = Instant::now();
                    for id in &ids {
                        sink.remove(std::slice::from_ref(id))
                            .await
                            .expect("removed");
                    }
                    total += start.elapsed();
                }
                total
            })
        })
    });
    group.finish();
}

criterion_group!(benches, dead_letters);
criterion_main!(benches);
