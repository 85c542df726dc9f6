//! The whole system over loopback: a hyper-util client against a hyper server on 127.0.0.1, bare
//! and through two stacks, in requests per second.
//!
//! ```text
//! cargo bench --bench loopback                                    # 20,000 GETs × 5 rounds
//! LOOPBACK_REQUESTS=2000 LOOPBACK_ROUNDS=3 cargo bench --bench loopback   # a quick run
//! ```
//!
//! The server runs in this process on a runtime of its own (one worker thread, its own OS
//! thread); the client runs on a current-thread runtime, so the client's CPU cost per call is
//! what limits throughput and what the comparison shows. Each round runs, back to back, the
//! same number of small GETs (the response body read to the end) through:
//!
//! - `bare`: `hyper_util::client::legacy::Client` alone;
//! - `outbound`: the same client through `Outbound::new()` with every layer on (a throttle
//!   nobody waits for, dead letters to memory);
//! - `tower`: the same client through tower's RateLimit → ConcurrencyLimit → Retry (a cloning
//!   `Policy` with a `TpsBudget`).
//!
//! twice: one request at a time, and 32 in flight (32 tasks sharing the stack: clones of the
//! `Outbound` service and of the client; tower's `RateLimit` is not `Clone`, so each task has
//! its own, with one `GlobalConcurrencyLimit` and one budget shared by all). The ratio of each
//! stack to `bare` is taken within a round, where the two ran seconds apart, and the median
//! over the rounds is printed, so drift of the shared machine between rounds cancels.
//!
//! Run by `cargo test --benches` (no `--bench` argument), it makes a few hundred calls only,
//! as a smoke test.
//!
//! To profile one stack, `LOOPBACK_ONLY=bare|outbound|tower` runs that stack alone (no ratios),
//! for example under `valgrind --tool=callgrind --separate-threads=yes`, so the client thread's
//! instructions divided by the requests made are that stack's whole CPU cost per call.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tower::limit::{GlobalConcurrencyLimitLayer, RateLimitLayer};
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::{Policy, RetryLayer as TowerRetryLayer};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_outbound::body::ReplayBody;
use tower_outbound::{BoxError, DeadLetterLayer, MemorySink, Outbound, ThrottleLayer};

type Body = Full<Bytes>;

/// Calls in flight in the concurrent mode.
const IN_FLIGHT: u64 = 32;

/// A small fixed answer, as a JSON API's would be.
const ANSWER: &[u8] = br#"{"id":42,"name":"item"}"#;

/// Starts the loopback server on its own thread and runtime; it stops when `stop` is sent or
/// dropped.
fn start_server() -> std::io::Result<(SocketAddr, oneshot::Sender<()>, std::thread::JoinHandle<()>)>
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        runtime.block_on(async move {
            let accept = async {
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(|_req: Request<Incoming>| {
                            ready(Ok::<_, Infallible>(Response::new(Full::new(
                                Bytes::from_static(ANSWER),
                            ))))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            };
            tokio::select! {
                _ = accept => {}
                _ = stopped => {}
            }
        });
    });
    Ok((addr, stop, thread))
}

/// tower's retry policy as its docs write one (the same as in the happy-path bench).
#[derive(Clone, Debug)]
struct CloningPolicy {
    budget: Arc<TpsBudget>,
    left: u32,
}

impl<B: Clone, ResB, E> Policy<Request<B>, Response<ResB>, E> for CloningPolicy {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<ResB>, E>,
    ) -> Option<Self::Future> {
        match result {
            Ok(response) if !response.status().is_server_error() => {
                self.budget.deposit();
                None
            }
            _ if self.left > 0 && self.budget.withdraw() => {
                self.left -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        Some(request.clone())
    }
}

/// The stacks compared; each `make` gives the service one task uses.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stack {
    Bare,
    Outbound,
    Tower,
}

impl Stack {
    fn parse(name: &str) -> Option<Self> {
        [Stack::Bare, Stack::Outbound, Stack::Tower]
            .into_iter()
            .find(|stack| stack.name() == name.trim())
    }

    fn name(self) -> &'static str {
        match self {
            Stack::Bare => "bare",
            Stack::Outbound => "outbound",
            Stack::Tower => "tower",
        }
    }
}

/// What every task needs to build its service; clones share the clients and the stacks' state.
#[derive(Clone)]
struct Clients {
    bare: Client<HttpConnector, Body>,
    outbound: tower_outbound::outbound::OutboundService<Client<HttpConnector, ReplayBody>>,
    tower_limit: GlobalConcurrencyLimitLayer,
    tower_budget: Arc<TpsBudget>,
}

impl Clients {
    fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let bare = Client::builder(TokioExecutor::new()).build(connector.clone());
        let replay = Client::builder(TokioExecutor::new()).build(connector);
        let outbound = Outbound::new()
            .throttle(Some(ThrottleLayer::new(u32::MAX, Duration::from_secs(1))))
            .dead_letters(Some(DeadLetterLayer::new(MemorySink::new())))
            .service(replay);
        Clients {
            bare,
            outbound,
            tower_limit: GlobalConcurrencyLimitLayer::new(1024),
            tower_budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 5, 0.2)),
        }
    }

    /// Runs `count` calls through `stack`, one at a time; returns the number that failed.
    async fn run(&self, stack: Stack, uri: &Uri, count: u64, next: &AtomicU64) -> u64 {
        match stack {
            Stack::Bare => calls(self.bare.clone(), uri, count, next).await,
            Stack::Outbound => calls(self.outbound.clone(), uri, count, next).await,
            Stack::Tower => {
                let service = ServiceBuilder::new()
                    .layer(RateLimitLayer::new(u64::MAX, Duration::from_secs(1)))
                    .layer(self.tower_limit.clone())
                    .layer(TowerRetryLayer::new(CloningPolicy {
                        budget: self.tower_budget.clone(),
                        left: 3,
                    }))
                    .service(self.bare.clone());
                calls(service, uri, count, next).await
            }
        }
    }
}

/// Takes call numbers from `next` until `count` are taken; makes each call and reads the body.
async fn calls<S, ResB>(mut service: S, uri: &Uri, count: u64, next: &AtomicU64) -> u64
where
    S: Service<Request<Body>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: hyper::body::Body,
{
    let mut failed = 0;
    while next.fetch_add(1, Ordering::Relaxed) < count {
        let request = Request::get(uri.clone())
            .header("accept", "application/json")
            .body(Full::new(Bytes::new()))
            .unwrap_or_default();
        let ok = match service.ready().await {
            Ok(ready) => match ready.call(request).await {
                Ok(response) => response.into_body().collect().await.is_ok(),
                Err(_) => false,
            },
            Err(_) => false,
        };
        failed += u64::from(!ok);
    }
    failed
}

/// Requests per second for `count` calls through `stack` with `in_flight` tasks.
async fn measure(clients: &Clients, stack: Stack, uri: &Uri, count: u64, in_flight: u64) -> f64 {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let failed = if in_flight == 1 {
        clients.run(stack, uri, count, &next).await
    } else {
        let tasks: Vec<_> = (0..in_flight)
            .map(|_| {
                let (clients, uri, next) = (clients.clone(), uri.clone(), next.clone());
                tokio::spawn(async move { clients.run(stack, &uri, count, &next).await })
            })
            .collect();
        let mut failed = 0;
        for task in tasks {
            failed += task.await.unwrap_or(count);
        }
        failed
    };
    let elapsed = start.elapsed();
    assert_eq!(
        failed,
        0,
        "{} calls failed through {}",
        failed,
        stack.name()
    );
    count as f64 / elapsed.as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

fn main() -> Result<(), BoxError> {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: a smoke run then.
    let benching = std::env::args().any(|arg| arg == "--bench");
    let (requests, rounds) = if benching {
        (
            env_count("LOOPBACK_REQUESTS", 20_000),
            env_count("LOOPBACK_ROUNDS", 5),
        )
    } else {
        (200, 1)
    };

    let (addr, stop, server) = start_server()?;
    let uri: Uri = format!("http://{addr}/v1/items/42").parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let only = std::env::var("LOOPBACK_ONLY")
        .ok()
        .map(|name| {
            Stack::parse(&name).ok_or(format!("LOOPBACK_ONLY={name}: not bare, outbound or tower"))
        })
        .transpose()?;

    runtime.block_on(async {
        let clients = Clients::new();
        if let Some(stack) = only {
            for in_flight in [1, IN_FLIGHT] {
                let rate = measure(&clients, stack, &uri, requests, in_flight).await;
                println!("{}: {requests} GETs, {in_flight} in flight: {rate:.0}/s", stack.name());
            }
            return;
        }
        // Warm-up: open the connections and fill the stacks' per-upstream state.
        for stack in [Stack::Bare, Stack::Outbound, Stack::Tower] {
            measure(&clients, stack, &uri, IN_FLIGHT * 4, IN_FLIGHT).await;
        }
        println!(
            "loopback: {requests} GETs per run, {rounds} round(s), client on 1 thread, server on 1 thread"
        );
        for in_flight in [1, IN_FLIGHT] {
            let mut rates: [Vec<f64>; 3] = Default::default();
            let mut ratios: [Vec<f64>; 2] = Default::default();
            for round in 0..rounds {
                // Alternate which stack goes first so a trend within a round does not favour one.
                let order = if round % 2 == 0 {
                    [Stack::Bare, Stack::Outbound, Stack::Tower]
                } else {
                    [Stack::Tower, Stack::Outbound, Stack::Bare]
                };
                let mut rate = [0.0; 3];
                for stack in order {
                    rate[stack as usize] = measure(&clients, stack, &uri, requests, in_flight).await;
                }
                println!(
                    "  in flight {in_flight:>2}, round {}: bare {:>8.0}/s  outbound {:>8.0}/s ({:.3}×)  tower {:>8.0}/s ({:.3}×)",
                    round + 1,
                    rate[0],
                    rate[1],
                    rate[1] / rate[0],
                    rate[2],
                    rate[2] / rate[0]
                );
                for (i, r) in rate.iter().enumerate() {
                    rates[i].push(*r);
                }
                ratios[0].push(rate[1] / rate[0]);
                ratios[1].push(rate[2] / rate[0]);
            }
            println!(
                "in flight {in_flight:>2}: median bare {:.0}/s, outbound {:.0}/s, tower {:.0}/s; median paired ratio to bare: outbound {:.3}×, tower {:.3}×",
                median(&mut rates[0]),
                median(&mut rates[1]),
                median(&mut rates[2]),
                median(&mut ratios[0]),
                median(&mut ratios[1]),
            );
        }
    });
    drop(runtime);
    let _ = stop.send(());
    server
        .join()
        .map_err(|_| BoxError::from("the loopback server's thread panicked"))?;
    Ok(())
}
