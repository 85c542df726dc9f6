//! Heap allocations per call on the happy path, counted (not timed) with a counting global
//! allocator, so the figure is the same on every machine and every run.
//!
//! The whole `Outbound` stack allocates nothing per call beyond the copy of the request head a
//! retry or a dead letter needs and, for a write, the idempotency key. The copy holds no
//! header map of its own, so it allocates only where copying the request's own bytes does: a
//! header value made with `HeaderValue::from_str` (as `Request::builder().header(..)` makes
//! it) lives in a buffer that becomes shared on its first copy (one allocation, `bytes`' own).
//! So: a GET with such a header adds 1 allocation (`GET_LIMIT`), a POST 2 (`POST_LIMIT`: the
//! same, and the key); with static header values, 0 and 1 (`GET_STATIC`, `POST_STATIC`).
//!
//! Everything runs in one `#[test]` on a current-thread runtime: the counter is global, and no
//! other test of this binary may allocate while a call is being counted.

use std::alloc::System;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{Service, ServiceExt};
use tower_outbound::{DeadLetterLayer, MemorySink, Outbound, ThrottleLayer};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations per GET through `Outbound` (every layer on) over the bare service: the head
/// copy's header value, made with `from_str`, shared on its first copy.
const GET_LIMIT: u64 = 1;
/// Allocations per POST: the same, and the idempotency key.
const POST_LIMIT: u64 = 2;
/// Allocations per GET whose header values are static: none.
const GET_STATIC: u64 = 0;
/// Allocations per POST whose header values are static: the idempotency key only.
const POST_STATIC: u64 = 1;

/// Calls counted per measurement.
const CALLS: u64 = 200;
/// Measurements per case; the smallest is kept, so one stray allocation cannot fail the test.
const ROUNDS: usize = 3;

fn get() -> Request<Full<Bytes>> {
    Request::get("http://api.example.com/v1/items/42")
        .header("accept", "application/json")
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

fn get_static() -> Request<Full<Bytes>> {
    Request::get("http://api.example.com/v1/items/42")
        .header("accept", http::HeaderValue::from_static("application/json"))
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

fn post_static() -> Request<Full<Bytes>> {
    Request::post("http://api.example.com/v1/events")
        .header(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        )
        .body(Full::new(Bytes::from_static(
            br#"{"event":"view","item_id":"42"}"#,
        )))
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

/// The upstream: answers 200 at once and allocates nothing.
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

/// Heap allocations (new blocks and reallocations) per call of `service`, after a warm-up
/// call; the smallest of [`ROUNDS`] measurements of [`CALLS`] calls each.
async fn allocations_per_call<S>(mut service: S, request: fn() -> Request<Full<Bytes>>) -> f64
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let call = async |service: &mut S| {
        let response = service
            .ready()
            .await
            .expect("the service is ready")
            .call(request())
            .await;
        if let Err(err) = response {
            panic!("the happy path succeeds: {err:?}");
        }
    };
    // Warm-up: per-upstream state, thread-locals and the runtime's own first-use allocations.
    call(&mut service).await;
    call(&mut service).await;
    let mut best = u64::MAX;
    for _ in 0..ROUNDS {
        let region = Region::new(GLOBAL);
        for _ in 0..CALLS {
            call(&mut service).await;
        }
        let change = region.change();
        best = best.min((change.allocations + change.reallocations) as u64);
    }
    best as f64 / CALLS as f64
}

/// `Outbound::new()` with every layer on (the bench's configuration).
fn outbound() -> Outbound {
    Outbound::new()
        .throttle(Some(ThrottleLayer::new(u32::MAX, Duration::from_secs(1))))
        .dead_letters(Some(DeadLetterLayer::new(MemorySink::new())))
}

#[test]
fn outbound_allocates_no_more_per_call_than_the_limit() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        // The counter counts: a call that allocates is seen.
        let boxed = tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(std::hint::black_box(vec![0u8; 64])))
        });
        let counted = allocations_per_call(boxed, get).await;
        let bare_get = allocations_per_call(Noop, get).await;
        assert!(
            counted >= bare_get + 1.0,
            "the counting allocator sees an allocation ({counted} vs {bare_get})"
        );

        let full = outbound().service(Noop);
        let bare_post = allocations_per_call(Noop, post).await;
        let outbound_get = allocations_per_call(full.clone(), get).await;
        let outbound_post = allocations_per_call(full.clone(), post).await;
        let added_get = outbound_get - bare_get;
        let added_post = outbound_post - bare_post;
        println!("allocations per call: bare GET {bare_get}, Outbound GET {outbound_get} (+{added_get}; limit {GET_LIMIT})");
        println!("allocations per call: bare POST {bare_post}, Outbound POST {outbound_post} (+{added_post}; limit {POST_LIMIT})");
        assert!(
            added_get <= GET_LIMIT as f64,
            "Outbound adds {added_get} allocations per GET; the limit is {GET_LIMIT}"
        );
        assert!(
            added_post <= POST_LIMIT as f64,
            "Outbound adds {added_post} allocations per POST; the limit is {POST_LIMIT}"
        );

        let static_get = allocations_per_call(full.clone(), get_static).await
            - allocations_per_call(Noop, get_static).await;
        let static_post = allocations_per_call(full, post_static).await
            - allocations_per_call(Noop, post_static).await;
        println!("with static header values: Outbound GET +{static_get}, POST +{static_post}");
        assert!(
            static_get <= GET_STATIC as f64,
            "Outbound adds {static_get} allocations per GET with static headers; the limit is {GET_STATIC}"
        );
        assert!(
            static_post <= POST_STATIC as f64,
            "Outbound adds {static_post} allocations per POST with static headers; the limit is {POST_STATIC} (the key)"
        );
    });
}
