//! The happy-path cost of the layers: a no-op in-memory service called bare, through the
//! foundation stack (idempotency → retry → Retry-After gate), and through the whole
//! `Outbound` stack (with deadline, breaker, throttle, attempt timeout and dead letters), in one
//! group.

use std::convert::Infallible;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use std::time::Duration;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_outbound::body::ReplayBody;
use tower_outbound::{
    DeadLetterLayer, IdempotencyKeyLayer, MemorySink, Outbound, RetryAfterLayer, RetryLayer,
    ThrottleLayer,
};

fn get() -> Request<Full<Bytes>> {
    Request::get("http://api.example.com/v1/items/42")
        .header("accept", "application/json")
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

fn post() -> Request<Full<Bytes>> {
    Request::post("http://api.example.com/v1/events")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"event":"view","item_id":"42"}"#,
        )))
        .unwrap_or_default()
}

fn happy_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let _guard = runtime.enter();

    let noop = tower::service_fn(|_req: Request<ReplayBody>| async {
        Ok::<_, Infallible>(Response::new(()))
    });
    let bare = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(()))
    });
    let stack = ServiceBuilder::new()
        .layer(IdempotencyKeyLayer::new())
        .layer(RetryLayer::new())
        .layer(RetryAfterLayer::new())
        .service(noop);

    // Everything on: a throttle that never makes anyone wait, a closed breaker, a dead-letter
    // sink that is never written.
    let full = Outbound::new()
        .throttle(Some(ThrottleLayer::new(u32::MAX, Duration::from_secs(1))))
        .dead_letters(Some(DeadLetterLayer::new(MemorySink::new())))
        .service(noop);

    let mut group = c.benchmark_group("happy_path");
    group.bench_function("bare/get", |b| {
        b.to_async(&runtime).iter(|| {
            let mut svc = bare;
            async move { svc.ready().await?.call(get()).await }
        })
    });
    group.bench_function("stack/get", |b| {
        b.to_async(&runtime).iter(|| {
            let svc = stack.clone();
            async move { svc.oneshot(get()).await }
        })
    });
    group.bench_function("bare/post", |b| {
        b.to_async(&runtime).iter(|| {
            let mut svc = bare;
            async move { svc.ready().await?.call(post()).await }
        })
    });
    group.bench_function("stack/post", |b| {
        b.to_async(&runtime).iter(|| {
            let svc = stack.clone();
            async move { svc.oneshot(post()).await }
        })
    });
    group.bench_function("outbound/get", |b| {
        b.to_async(&runtime).iter(|| {
            let svc = full.clone();
            async move { svc.oneshot(get()).await }
        })
    });
    group.bench_function("outbound/post", |b| {
        b.to_async(&runtime).iter(|| {
            let svc = full.clone();
            async move { svc.oneshot(post()).await }
        })
    });
    group.finish();
}

criterion_group!(benches, happy_path);
criterion_main!(benches);
