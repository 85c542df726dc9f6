//! Acquire latency (p50, p99) of the Redis throttle store against a loopback `redis-server`,
//! beside the floor of one small script (`EVALSHA`) alternated with it, and acquires per second
//! from one process with 64 concurrent tasks (pipelined on one multiplexed connection).
//!
//! ```text
//! cargo bench --bench redis_acquire --features redis
//! ```
//!
//! Criterion reports means and medians; the tail (p99) is what a shared limiter adds to a
//! request, so this bench takes its own samples and prints percentiles. It starts its own
//! `redis-server` on a free port (the binary must be installed) and stops it at the end.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tower_outbound::redis::RedisStore;
use tower_outbound::throttle::{Acquire, BucketStore, Quota};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> (Server, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed for this bench");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (Server(child), format!("redis://127.0.0.1:{port}/"))
}

async fn acquire(store: &RedisStore, quota: &Quota) {
    match store.acquire(None, quota, Duration::from_secs(1)) {
        Acquire::Ready(decision) => drop(decision),
        Acquire::Pending(future) => drop(future.await),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` run passes nothing and
    // only checks that the bench builds and runs briefly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (_server, url) = start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let store = RedisStore::open(&url).expect("a Redis URL").prefix("bench");
        // A quota far above what is measured, so no acquire waits: this is the store's cost.
        let quota = Quota::new(1_000_000_000, Duration::from_secs(1))
            .and_then(|q| q.with_burst(1_000_000))
            .expect("a valid quota");
        for _ in 0..200 {
            acquire(&store, &quota).await;
        }

        // The floor beside it: one small script (`EVALSHA`) on a connection of the same kind,
        // from the same runtime, alternated with the acquires so that both see the same load.
        let client = redis::Client::open(url.as_str()).expect("a Redis URL");
        let mut connection = redis::aio::ConnectionManager::new(client)
            .await
            .expect("a connection");
        let script =
            redis::Script::new("local t = redis.call('TIME') return {1, 0, tonumber(t[1])}");
        let floor_call = |connection: &mut redis::aio::ConnectionManager| {
            let mut connection = connection.clone();
            let script = script.clone();
            async move {
                let _: (i64, i64, i64) = script
                    .key("bench-floor")
                    .invoke_async(&mut connection)
                    .await
                    .expect("the floor script");
            }
        };
        for _ in 0..200 {
            floor_call(&mut connection).await;
        }

        let samples = if quick { 500 } else { 20_000 };
        let mut latencies = Vec::with_capacity(samples);
        let mut floor = Vec::with_capacity(samples);
        for _ in 0..samples {
            let start = Instant::now();
            acquire(&store, &quota).await;
            latencies.push(start.elapsed());
            let start = Instant::now();
            floor_call(&mut connection).await;
            floor.push(start.elapsed());
        }
        latencies.sort();
        floor.sort();
        let (p50, floor50) = (percentile(&latencies, 0.50), percentile(&floor, 0.50));
        println!(
            "redis_acquire/latency  samples {samples}  p50 {p50:?}  p99 {:?}  max {:?}",
            percentile(&latencies, 0.99),
            latencies[latencies.len() - 1]
        );
        println!(
            "redis_acquire/floor    samples {samples}  p50 {floor50:?}  p99 {:?}  (acquire p50 / floor p50 = {:.2})",
            percentile(&floor, 0.99),
            p50.as_secs_f64() / floor50.as_secs_f64()
        );

        let tasks = 64;
        let run_for = if quick {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(5)
        };
        let done = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + run_for;
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (store, done) = (store.clone(), done.clone());
                tokio::spawn(async move {
                    while Instant::now() < until {
                        acquire(&store, &quota).await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for handle in handles {
            let _ = handle.await;
        }
        let per_second = done.load(Ordering::Relaxed) as f64 / run_for.as_secs_f64();
        println!("redis_acquire/throughput  {tasks} tasks  {per_second:.0} acquires/s");
        let stats = store.stats();
        assert_eq!(
            stats.fallback_decisions(),
            0,
            "Redis answered every acquire"
        );
    });
}
