//! The five signals on a Prometheus endpoint: a chaos workload through `Outbound` against two
//! loopback upstreams (one flaky, one down), with the metrics served while it runs, and the
//! signals printed at the end. Runs on its own and exits.
//!
//! ```text
//! cargo run --example metrics --features metrics                        # any free port
//! cargo run --example metrics --features metrics -- --metrics 127.0.0.1:9464 --hold 60
//! ```
//!
//! `--hold SECS` keeps the endpoint up after the run, to scrape it by hand
//! (`curl http://127.0.0.1:9464/metrics`). `docs/operability.md` has the queries and alerts.

#![allow(dead_code)] // tests/metrics.rs includes this file and uses what `main` does not.

#[path = "support/prometheus.rs"]
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_outbound::body::ReplayBody;
use tower_outbound::circuit::CircuitStats;
use tower_outbound::dead_letter::{self, DeadLetterStats, ReplayReport};
use tower_outbound::metrics::Signals;
use tower_outbound::retry::RetryStats;
use tower_outbound::{BoxError, CircuitBreakerLayer, Outbound, RetryLayer};

pub(crate) use support::serve_prometheus;

/// A loopback upstream answering its n-th request with `answer(n)`. Returns its base URL.
async fn upstream(answer: fn(u32) -> StatusCode) -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let requests = Arc::new(AtomicU32::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let requests = requests.clone();
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let status = answer(requests.fetch_add(1, Ordering::Relaxed));
                let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
                *response.status_mut() = status;
                if status == StatusCode::TOO_MANY_REQUESTS {
                    response
                        .headers_mut()
                        .insert("retry-after", http::HeaderValue::from_static("0"));
                }
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(url)
}

/// Three answers in ten fail and one asks for a pause; the rest succeed.
fn flaky(n: u32) -> StatusCode {
    match n % 10 {
        0 | 3 => StatusCode::SERVICE_UNAVAILABLE,
        6 => StatusCode::TOO_MANY_REQUESTS,
        8 => StatusCode::BAD_GATEWAY,
        _ => StatusCode::OK,
    }
}

/// Down: every answer is a 503.
fn down(_n: u32) -> StatusCode {
    StatusCode::SERVICE_UNAVAILABLE
}

/// What the workload did, counted by itself and by the stack's own stats handles.
#[derive(Debug)]
pub(crate) struct Run {
    /// `scheme://host:port` of the flaky upstream.
    pub(crate) flaky: String,
    /// `scheme://host:port` of the upstream that is down.
    pub(crate) down: String,
    /// Calls issued to the flaky upstream, the replays included.
    pub(crate) flaky_calls: u64,
    /// Of those, the ones that came back a 2xx.
    pub(crate) flaky_ok: u64,
    /// Calls issued to the upstream that is down, the replays included.
    pub(crate) down_calls: u64,
    /// Of those, the ones that came back a 2xx.
    pub(crate) down_ok: u64,
    /// The stack's retry counters.
    pub(crate) retry: RetryStats,
    /// The stack's breaker counters.
    pub(crate) circuit: CircuitStats,
    /// The stack's dead-letter counters.
    pub(crate) dead_letters: DeadLetterStats,
    /// What the replay of the dead letters did.
    pub(crate) replay: ReplayReport,
    /// Letters still kept after the replay.
    pub(crate) dead_letters_kept: usize,
}

/// Runs `calls` calls to each upstream through `Outbound::background()` (dead letters in a
/// metered memory sink, breakers reporting their state), then replays the dead letters once.
pub(crate) async fn workload(calls: u32) -> Result<Run, BoxError> {
    let flaky_url = upstream(flaky).await?;
    let down_url = upstream(down).await?;
    // The breaker fails fast and stays open 30 s: the down upstream's refusals are one of the
    // signals shown (the preset's breaker would hold those calls for up to a minute).
    let breaker = CircuitBreakerLayer::new().open_duration(Duration::from_secs(30));
    let stack = Outbound::background()
        .retry(
            RetryLayer::new()
                .max_attempts(3)
                .base_delay(Duration::from_millis(1))
                .max_delay(Duration::from_millis(4)),
        )
        .circuit_breaker(Some(tower_outbound::metrics::watch(breaker)));
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let service = stack.service(client);

    let (mut flaky_calls, mut flaky_ok, mut down_calls, mut down_ok) = (0, 0, 0, 0);
    for i in 0..calls {
        for (url, issued, ok) in [
            (&flaky_url, &mut flaky_calls, &mut flaky_ok),
            (&down_url, &mut down_calls, &mut down_ok),
        ] {
            let request = Request::post(format!("{url}/v1/items/{i}?page=1"))
                .body(Full::new(Bytes::from_static(b"{\"n\":1}")))?;
            *issued += 1;
            if let Ok(response) = service.clone().oneshot(request).await {
                if response.status().is_success() {
                    *ok += 1;
                }
            }
        }
    }

    let Some(letters) = stack.dead_letter_layer() else {
        return Err("the background preset keeps dead letters".into());
    };
    let sink = letters.sink();
    // Each letter sent again goes through the same stack: count it as a call to its upstream.
    // (Once the down upstream's open circuit refuses one, its other letters are not sent.)
    let replayed = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    let counted = replayed.clone();
    let flaky_prefix = flaky_url.clone();
    let counting = tower::ServiceBuilder::new()
        .map_request(move |request: Request<ReplayBody>| {
            let mut counts = counted.lock().unwrap_or_else(|e| e.into_inner());
            if request.uri().to_string().starts_with(&flaky_prefix) {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
            request
        })
        .service(service.clone());
    let replay = dead_letter::replay(&*sink, counting).await?;
    let (flaky_replayed, down_replayed) = *replayed.lock().unwrap_or_else(|e| e.into_inner());
    flaky_calls += flaky_replayed;
    down_calls += down_replayed;
    // Only the flaky upstream can deliver a replay.
    flaky_ok += u64::try_from(replay.succeeded)?;
    let dead_letters_kept = sink.count().await?;
    let Some(breaker) = stack.circuit_breaker_layer() else {
        return Err("every preset has a breaker".into());
    };
    Ok(Run {
        // `http://127.0.0.1:PORT` is already the `upstream` label: the port is explicit.
        flaky: flaky_url,
        down: down_url,
        flaky_calls,
        flaky_ok,
        down_calls,
        down_ok,
        retry: stack.retry_stats(),
        circuit: breaker.stats(),
        dead_letters: letters.stats(),
        replay,
        dead_letters_kept,
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let mut addr: SocketAddr = "127.0.0.1:0".parse()?;
    let mut hold = 0;
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--metrics", Some(value)) => addr = value.parse()?,
            ("--hold", Some(value)) => hold = value.parse()?,
            _ => {
                return Err(
                    format!("usage: metrics [--metrics ADDR] [--hold SECS]; got {arg}").into(),
                )
            }
        }
    }
    let (bound, _handle) = serve_prometheus(addr).await?;
    println!("metrics at http://{bound}/metrics");

    let run = workload(40).await?;
    println!(
        "calls: {} to {} ({} ok), {} to {} ({} ok); retries {}; breaker opened {} time(s); \
         dead letters written {}, replayed {}, {} delivered, {} kept",
        run.flaky_calls,
        run.flaky,
        run.flaky_ok,
        run.down_calls,
        run.down,
        run.down_ok,
        run.retry.retries(),
        run.circuit.times_opened(),
        run.dead_letters.written(),
        run.replay.replayed,
        run.replay.succeeded,
        run.dead_letters_kept,
    );
    println!("\nthe five signals:\n{}", Signals::snapshot());
    if hold > 0 {
        println!("serving http://{bound}/metrics for {hold} s");
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }
    Ok(())
}
