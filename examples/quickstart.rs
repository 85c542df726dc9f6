//! Starts a flaky HTTP server on 127.0.0.1 (random 429 with Retry-After, 503, latency), calls
//! it through the layer stack, and prints what happened.
//!
//! ```text
//! cargo run --release --example quickstart [-- --calls 200 --concurrency 30 --seed 7]
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::{ServiceBuilder, ServiceExt};
use tower_outbound::body::ReplayBody;
use tower_outbound::retry::Attempts;
use tower_outbound::{IdempotencyKeyLayer, RetryAfterLayer, RetryLayer};

struct Args {
    calls: usize,
    concurrency: usize,
    seed: u64,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        calls: 200,
        concurrency: 30,
        seed: 7,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("{name} needs a number"))
        };
        match flag.as_str() {
            "--calls" => args.calls = value("--calls")?,
            "--concurrency" => args.concurrency = value("--concurrency")?.max(1),
            "--seed" => args.seed = value("--seed")? as u64,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// What the flaky server did.
#[derive(Default)]
struct ServerLog {
    received: AtomicU64,
    answered_429: AtomicU64,
    answered_503: AtomicU64,
}

/// A server that answers 429 (with `Retry-After: 1`) about one time in eight, 503 one time in
/// eight, and otherwise 200 after a few milliseconds.
async fn flaky_server(seed: u64, log: Arc<ServerLog>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let rng = Arc::new(Mutex::new(SmallRng::seed_from_u64(seed)));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (rng, log) = (rng.clone(), log.clone());
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let (roll, latency) = {
                    let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
                    (rng.random_range(0..8u8), rng.random_range(1..15u64))
                };
                let log = log.clone();
                async move {
                    log.received.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(latency)).await;
                    let response = match roll {
                        0 => {
                            log.answered_429.fetch_add(1, Ordering::Relaxed);
                            Response::builder()
                                .status(StatusCode::TOO_MANY_REQUESTS)
                                .header("retry-after", "1")
                        }
                        1 => {
                            log.answered_503.fetch_add(1, Ordering::Relaxed);
                            Response::builder().status(StatusCode::SERVICE_UNAVAILABLE)
                        }
                        _ => Response::builder().status(StatusCode::OK),
                    };
                    Ok::<_, Infallible>(
                        response
                            .body(Full::new(Bytes::from_static(b"{}")))
                            .unwrap_or_default(),
                    )
                }
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let log = Arc::new(ServerLog::default());
    let addr = flaky_server(args.seed, log.clone()).await?;

    // The stack: one key per logical write, retries with backoff and the server's waits, and a
    // gate that holds everyone back while the server asked for a pause.
    let retry = RetryLayer::new()
        .base_delay(Duration::from_millis(50))
        .rng_seed(args.seed);
    let retry_stats = retry.stats();
    let gate = RetryAfterLayer::new();
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let service = ServiceBuilder::new()
        .layer(IdempotencyKeyLayer::new())
        .layer(retry)
        .layer(gate.clone())
        .service(client);

    println!(
        "calling the flaky server at {addr}: {} calls, {} at a time",
        args.calls, args.concurrency
    );
    let started = Instant::now();
    let outcomes = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut tasks = JoinSet::new();
    for i in 0..args.calls {
        let permit = semaphore.clone().acquire_owned().await?;
        let (service, outcomes) = (service.clone(), outcomes.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let request = if i % 2 == 0 {
                Request::get(format!("http://{addr}/items/{i}")).body(Full::new(Bytes::new()))
            } else {
                Request::post(format!("http://{addr}/events"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(format!(r#"{{"event":{i}}}"#))))
            };
            let outcome = match request {
                Err(err) => format!("bad request: {err}"),
                Ok(request) => match service.oneshot(request).await {
                    Ok(response) => {
                        let attempts = response
                            .extensions()
                            .get::<Attempts>()
                            .map_or(1, |a| a.count);
                        let status = response.status();
                        let _ = response.into_body().collect().await;
                        format!("{status} after {attempts} attempt(s)")
                    }
                    Err(err) => format!("error: {err}"),
                },
            };
            *outcomes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(outcome)
                .or_default() += 1;
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();

    println!();
    println!("report");
    println!("  logical calls        {}", retry_stats.calls());
    println!(
        "  requests on the wire {}",
        log.received.load(Ordering::Relaxed)
    );
    println!(
        "  server answered      {} x 429 (Retry-After: 1), {} x 503",
        log.answered_429.load(Ordering::Relaxed),
        log.answered_503.load(Ordering::Relaxed)
    );
    println!("  retries              {}", retry_stats.retries());
    println!("  server waits honored {}", retry_stats.server_waits());
    println!(
        "  time spent waiting   {:.1?} (summed over calls)",
        retry_stats.waited()
    );
    println!(
        "  gate                 closed {} times, held {} requests back",
        gate.stats().times_closed(),
        gate.stats().delayed()
    );
    println!(
        "  succeeded after retry {}",
        retry_stats.successes_after_retry()
    );
    println!("  gave up              {}", retry_stats.gave_up());
    println!("  wall time            {elapsed:.1?}");
    println!("  outcomes:");
    for (outcome, count) in outcomes.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        println!("    {count:>5}  {outcome}");
    }
    Ok(())
}
