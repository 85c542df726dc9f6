//! The happy-path cost of the layers, beside what a user would pick instead.
//!
//! One criterion group, `happy_path`, calls the same no-op in-memory service with the same
//! requests (a GET with one header, a POST with a small JSON body), built per call:
//!
//! - `bare/*`: the service alone — request construction and one poll, the floor;
//! - `layer/<name>/*`: each of the crate's layers alone;
//! - `outbound/*`: the whole `Outbound::new()` stack with every layer on (throttle at a rate
//!   nobody waits for, dead letters to a `MemorySink`);
//! - `outbound_hedge/get`: the same stack with hedging on (`HedgeLayer::new()`), a GET that
//!   answers before any hedge is due: what hedging costs a call that is never hedged;
//! - `tower/*`: tower's own stack, RateLimit → ConcurrencyLimit → Retry with a cloning `Policy`
//!   and a `TpsBudget` (the POST adds a UUID idempotency header first);
//! - `tower_resilience/*`: tower-resilience 0.13's retry → circuit breaker → rate limiter.
//!
//! Every case is driven the same way: one service, `ready().await` then `call(..).await` in a
//! loop, and every response is checked to be `Ok` (a refused call would not be the happy path).
//!
//! A second group, `contention`, runs 64 tasks that share one `Outbound` on a 2-thread and on a
//! 1-thread runtime and reports calls per second.
//!
//! ```text
//! cargo bench --bench happy_path
//! ```
//!
//! Times are kept short (1 s of measurement per case) so the whole run takes about a minute;
//! see docs/benchmarks.md for figures.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use http::{HeaderName, Request, Response};
use http_body_util::Full;
use tower::limit::{ConcurrencyLimitLayer, RateLimitLayer};
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::{Policy, RetryLayer as TowerRetryLayer};
use tower::timeout::TimeoutLayer;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_outbound::deadline::DeadlineLayer;
use tower_outbound::idempotency::{MakeKey, UuidV4};
use tower_outbound::{
    CircuitBreakerLayer, DeadLetterLayer, HedgeLayer, IdempotencyKeyLayer, MemorySink, Outbound,
    RetryAfterLayer, RetryLayer, ThrottleLayer,
};

type Body = Full<Bytes>;

fn get() -> Request<Body> {
    Request::get("http://api.example.com/v1/items/42")
        .header("accept", "application/json")
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

fn post() -> Request<Body> {
    Request::post("http://api.example.com/v1/events")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"event":"view","item_id":"42"}"#,
        )))
        .unwrap_or_default()
}

/// The upstream: answers 200 at once, for any request body type (the crate's retry and
/// dead-letter layers send `Request<ReplayBody>`, the others pass the caller's body through).
#[derive(Clone, Copy, Debug)]
struct Noop;

impl<B> Service<Request<B>> for Noop {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        drop(request);
        ready(Ok(Response::new(())))
    }
}

/// A retry policy as tower's docs write one: retries 5xx and errors up to 3 times while the
/// shared `TpsBudget` allows, keeping a clone of each request for the next attempt.
#[derive(Clone, Debug)]
struct CloningPolicy {
    budget: Arc<TpsBudget>,
    left: u32,
}

impl CloningPolicy {
    fn new() -> Self {
        CloningPolicy {
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 5, 0.2)),
            left: 3,
        }
    }
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

/// tower's stack: RateLimit → ConcurrencyLimit → Retry. `RateLimit` is not `Clone`, so each
/// batch of calls builds its own (the policy's budget is shared the same way either way).
fn tower_stack() -> impl Service<Request<Body>, Response = Response<()>, Error = Infallible> {
    ServiceBuilder::new()
        .layer(RateLimitLayer::new(u64::MAX, Duration::from_secs(1)))
        .layer(ConcurrencyLimitLayer::new(1024))
        .layer(TowerRetryLayer::new(CloningPolicy::new()))
        .service(Noop)
}

/// The same with an `Idempotency-Key` (UUID v4) added to every POST, as a user of tower's
/// stack would with `MapRequest`.
fn tower_stack_with_key() -> impl Service<Request<Body>, Response = Response<()>, Error = Infallible>
{
    let header = HeaderName::from_static("idempotency-key");
    ServiceBuilder::new()
        .map_request(move |mut request: Request<Body>| {
            if !request.headers().contains_key(&header) {
                request
                    .headers_mut()
                    .insert(header.clone(), UuidV4.make_key());
            }
            request
        })
        .service(tower_stack())
}

type ResilienceError = tower_resilience::circuitbreaker::CircuitBreakerError<
    tower_resilience::ratelimiter::RateLimiterServiceError<Infallible>,
>;

/// tower-resilience 0.13: retry → circuit breaker → rate limiter, with its presets.
fn tower_resilience_stack(
) -> impl Service<Request<Body>, Response = Response<()>, Error = ResilienceError> + Clone {
    let retry = tower_resilience::retry::RetryLayer::<Request<Body>, Response<()>, ResilienceError>::builder()
        .max_attempts(3)
        .exponential_backoff(Duration::from_millis(100))
        .build();
    let breaker = tower_resilience::circuitbreaker::CircuitBreakerLayer::standard()
        .build()
        .expect("tower-resilience's standard circuit breaker");
    let limiter = tower_resilience::ratelimiter::RateLimiterLayer::per_second(1_000_000_000)
        .build()
        .expect("tower-resilience's rate limiter");
    ServiceBuilder::new()
        .layer(retry)
        .layer(breaker)
        .layer(limiter)
        .service(Noop)
}

/// `Outbound::new()` with every layer on: a throttle nobody waits for and dead letters to
/// memory (never written on the happy path).
fn outbound() -> Outbound {
    Outbound::new()
        .throttle(Some(ThrottleLayer::new(u32::MAX, Duration::from_secs(1))))
        .dead_letters(Some(DeadLetterLayer::new(MemorySink::new())))
}

/// Calls `service` `iters` times, one request at a time, and returns the time taken.
async fn drive<S>(mut service: S, request: fn() -> Request<Body>, iters: u64) -> Duration
where
    S: Service<Request<Body>>,
    S::Error: std::fmt::Debug,
{
    let mut failed = 0u64;
    let start = Instant::now();
    for _ in 0..iters {
        let result = match service.ready().await {
            Ok(ready) => ready.call(request()).await,
            Err(err) => Err(err),
        };
        failed += u64::from(black_box(result).is_err());
    }
    let elapsed = start.elapsed();
    assert_eq!(failed, 0, "a call failed: not the happy path");
    elapsed
}

/// Registers one case: `make` gives a fresh (or cloned) service for each batch of calls.
fn case<S, M>(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    request: fn() -> Request<Body>,
    make: M,
) where
    M: Fn() -> S,
    S: Service<Request<Body>>,
    S::Error: std::fmt::Debug,
{
    if let Some((case, calls)) = count_mode() {
        if case == name {
            runtime.block_on(drive(make(), request, calls));
        }
        return;
    }
    group.bench_function(name, |b| {
        b.to_async(runtime)
            .iter_custom(|iters| drive(make(), request, iters))
    });
}

/// `HAPPY_PATH_CALLS=N HAPPY_PATH_CASE=outbound/get`: make exactly `N` calls of that one case
/// and exit, without criterion, so a profiler can count what the calls cost
/// (`scripts/instructions.sh` runs it under callgrind with two values of `N` and differences).
fn count_mode() -> Option<(String, u64)> {
    let calls = std::env::var("HAPPY_PATH_CALLS").ok()?.parse().ok()?;
    Some((std::env::var("HAPPY_PATH_CASE").ok()?, calls))
}

fn happy_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    // Layers that start timers or read tokio's clock when built need the runtime.
    let _guard = runtime.enter();

    let mut group = c.benchmark_group("happy_path");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);

    case(&mut group, &runtime, "bare/get", get, || Noop);
    case(&mut group, &runtime, "bare/post", post, || Noop);

    // Each layer alone, its state shared by the clones as in real use.
    let idempotency = IdempotencyKeyLayer::new().layer(Noop);
    case(&mut group, &runtime, "layer/idempotency/post", post, || {
        idempotency.clone()
    });
    let dead_letters = DeadLetterLayer::new(MemorySink::new()).layer(Noop);
    case(&mut group, &runtime, "layer/dead_letters/get", get, || {
        dead_letters.clone()
    });
    case(
        &mut group,
        &runtime,
        "layer/dead_letters/post",
        post,
        || dead_letters.clone(),
    );
    let deadline = DeadlineLayer::new(Duration::from_secs(30)).layer(Noop);
    case(&mut group, &runtime, "layer/deadline/get", get, || {
        deadline.clone()
    });
    let retry_deadline = RetryLayer::new()
        .deadline(Some(Duration::from_secs(30)))
        .layer(Noop);
    case(
        &mut group,
        &runtime,
        "layer/retry_with_deadline/get",
        get,
        || retry_deadline.clone(),
    );
    let retry = RetryLayer::new().layer(Noop);
    case(&mut group, &runtime, "layer/retry/get", get, || {
        retry.clone()
    });
    case(&mut group, &runtime, "layer/retry/post", post, || {
        retry.clone()
    });
    let breaker = CircuitBreakerLayer::new().layer(Noop);
    case(
        &mut group,
        &runtime,
        "layer/circuit_breaker/get",
        get,
        || breaker.clone(),
    );
    let gate = RetryAfterLayer::new().layer(Noop);
    case(&mut group, &runtime, "layer/retry_after/get", get, || {
        gate.clone()
    });
    let throttle = ThrottleLayer::new(u32::MAX, Duration::from_secs(1)).layer(Noop);
    case(&mut group, &runtime, "layer/throttle/get", get, || {
        throttle.clone()
    });
    let timeout = TimeoutLayer::new(Duration::from_secs(10)).layer(Noop);
    case(&mut group, &runtime, "layer/tower_timeout/get", get, || {
        timeout.clone()
    });
    let attempt_timeout =
        tower_outbound::timeout::TimeoutLayer::new(Duration::from_secs(10)).layer(Noop);
    case(&mut group, &runtime, "layer/timeout/get", get, || {
        attempt_timeout.clone()
    });

    // The whole stack, tower's and tower-resilience's.
    let full = outbound().service(Noop);
    case(&mut group, &runtime, "outbound/get", get, || full.clone());
    case(&mut group, &runtime, "outbound/post", post, || full.clone());
    let hedged = outbound().hedge(Some(HedgeLayer::new())).service(Noop);
    case(&mut group, &runtime, "outbound_hedge/get", get, || {
        hedged.clone()
    });
    case(&mut group, &runtime, "tower/get", get, tower_stack);
    case(
        &mut group,
        &runtime,
        "tower/post",
        post,
        tower_stack_with_key,
    );
    let resilience = tower_resilience_stack();
    case(&mut group, &runtime, "tower_resilience/get", get, || {
        resilience.clone()
    });
    case(&mut group, &runtime, "tower_resilience/post", post, || {
        resilience.clone()
    });
    group.finish();
}

/// Number of tasks sharing one stack in the contention group.
const TASKS: u64 = 64;

/// `TASKS` tasks share `service` (clones of it); each makes `iters` GETs. One iteration of the
/// bench is one round of `TASKS` calls.
async fn contend<S>(service: S, iters: u64) -> Duration
where
    S: Service<Request<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| tokio::spawn(drive(service.clone(), get, iters)))
        .collect();
    for task in tasks {
        task.await.expect("a contention task");
    }
    start.elapsed()
}

fn contention(c: &mut Criterion) {
    if count_mode().is_some() {
        return;
    }
    let mut group = c.benchmark_group("contention");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10)
        .throughput(Throughput::Elements(TASKS));
    for threads in [1usize, 2] {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_time()
            .build()
            .expect("a tokio runtime");
        let _guard = runtime.enter();
        group.bench_function(format!("bare/{threads}_threads"), |b| {
            b.to_async(&runtime)
                .iter_custom(|iters| contend(Noop, iters))
        });
        let full = outbound().service(Noop);
        group.bench_function(format!("outbound/{threads}_threads"), |b| {
            b.to_async(&runtime)
                .iter_custom(|iters| contend(full.clone(), iters))
        });
    }
    group.finish();
}

criterion_group!(benches, happy_path, contention);
criterion_main!(benches);
