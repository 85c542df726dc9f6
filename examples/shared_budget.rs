//! Several workers, one budget: four workers, each with its own Redis connection and its own
//! throttle, share 200 requests per second to a loopback upstream through Redis. Each worker
//! registers itself in Redis, so all of them learn they are four. Then Redis is stopped, and
//! each worker falls back to its quarter of the budget.
//!
//! ```text
//! cargo run --example shared_budget --features redis [-- --redis redis://127.0.0.1:6379/]
//! ```
//!
//! Without `--redis` it starts its own `redis-server` (which must be installed:
//! `apt-get install redis-server`) on a free loopback port, and stops it at the end.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_outbound::redis::{Fallback, RedisStore, RedisStoreStats};
use tower_outbound::{BoxError, ThrottleLayer};

const BUDGET: u32 = 200;
const WORKERS: usize = 4;

/// A redis-server this example started, stopped on drop.
struct OwnRedis(Child);

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Result<(OwnRedis, String), BoxError> {
    let port = StdListener::bind("127.0.0.1:0")?.local_addr()?.port();
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
        .map_err(|e| format!("cannot start redis-server ({e}); install it or pass --redis URL"))?;
    let url = format!("redis://127.0.0.1:{port}/");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((OwnRedis(child), url));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err("redis-server did not start".into())
}

/// Counts arrivals, per second since the start.
async fn upstream(arrivals: Arc<Mutex<Vec<Instant>>>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let arrivals = arrivals.clone();
            let service =
                hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                    if let Ok(mut log) = arrivals.lock() {
                        log.push(Instant::now());
                    }
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Runs every worker flat out for `duration`; returns requests sent per worker.
async fn run(
    stores: &[RedisStore],
    addr: SocketAddr,
    duration: Duration,
) -> Result<Vec<u64>, BoxError> {
    let until = Instant::now() + duration;
    let mut handles = Vec::new();
    for store in stores {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let svc = ServiceBuilder::new()
            .layer(
                ThrottleLayer::new(BUDGET, Duration::from_secs(1))
                    .burst(10)
                    .max_wait(Duration::from_secs(5))
                    .store(store.clone()),
            )
            .service(client);
        let sent = Arc::new(AtomicU64::new(0));
        for _ in 0..8 {
            let (svc, sent) = (svc.clone(), sent.clone());
            handles.push((
                sent.clone(),
                tokio::spawn(async move {
                    while Instant::now() < until {
                        let request = Request::get(format!("http://{addr}/"))
                            .body(Full::new(Bytes::new()))?;
                        svc.clone().oneshot(request).await?;
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<_, BoxError>(())
                }),
            ));
        }
    }
    let mut per_worker = vec![0u64; stores.len()];
    for (i, (sent, handle)) in handles.into_iter().enumerate() {
        handle.await??;
        if i % 8 == 0 {
            per_worker[i / 8] = sent.load(Ordering::Relaxed);
        }
    }
    Ok(per_worker)
}

fn report(phase: &str, per_worker: &[u64], arrivals: &[Instant], stats: &[RedisStoreStats]) {
    let total: u64 = per_worker.iter().sum();
    let span = match (arrivals.first(), arrivals.last()) {
        (Some(first), Some(last)) => (*last - *first).as_secs_f64(),
        _ => 0.0,
    };
    println!("{phase}");
    println!("  requests per worker    {per_worker:?}");
    println!(
        "  aggregate              {total} in {span:.2} s = {:.1} requests/s (budget {BUDGET}/s)",
        if span > 0.0 { total as f64 / span } else { 0.0 }
    );
    let redis: u64 = stats.iter().map(RedisStoreStats::redis_decisions).sum();
    let fallback: u64 = stats.iter().map(RedisStoreStats::fallback_decisions).sum();
    println!("  decided by Redis       {redis}, by the fallback {fallback}");
    let seen: Vec<u64> = stats.iter().map(RedisStoreStats::workers_seen).collect();
    println!("  workers seen in Redis  {seen:?}");
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let (own, url) = match (args.next().as_deref(), args.next()) {
        (Some("--redis"), Some(url)) => (None, url),
        (None, _) => {
            let (own, url) = start_redis()?;
            (Some(own), url)
        }
        _ => return Err("usage: shared_budget [--redis URL]".into()),
    };
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let addr = upstream(arrivals.clone()).await?;
    let stores: Vec<RedisStore> = (0..WORKERS)
        .map(|_| {
            RedisStore::open(&url).map(|s| {
                // `Fallback::Learned` is the default; named here to show it. Workers register
                // every 500 ms, so all of them see the four before Redis stops.
                s.prefix(format!("shared-budget-{}", std::process::id()))
                    .fallback(Fallback::Learned)
                    .heartbeat(Duration::from_millis(500))
            })
        })
        .collect::<Result<_, _>>()?;
    let stats: Vec<RedisStoreStats> = stores.iter().map(RedisStore::stats).collect();

    println!("{WORKERS} workers share {BUDGET} requests/s through {url}");
    let per_worker = run(&stores, addr, Duration::from_secs(3)).await?;
    let shared: Vec<Instant> = std::mem::take(&mut *arrivals.lock().map_err(|e| e.to_string())?);
    report("with Redis", &per_worker, &shared, &stats);

    if let Some(own) = own {
        drop(own);
        let per_worker = run(&stores, addr, Duration::from_secs(2)).await?;
        let alone: Vec<Instant> = std::mem::take(&mut *arrivals.lock().map_err(|e| e.to_string())?);
        report(
            "Redis stopped: each worker keeps to its quarter",
            &per_worker,
            &alone,
            &stats,
        );
    }
    Ok(())
}
