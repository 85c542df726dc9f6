//! The hedge layer on its own, on tokio's paused clock: when a copy goes, which answer wins, the
//! budget, the brownout, what is never sent twice, and that the loser is dropped.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_outbound::body::ReplayBody;
use tower_outbound::deadline::Deadline;
use tower_outbound::hedge::{HedgeCounts, HedgeLayer};
use tower_outbound::partition::ByUpstream;
use tower_outbound::Error;

const URL: &str = "http://api.example.com/items";

/// Counts its copies alive: dropped when the future that holds it is.
struct Alive(Arc<AtomicU32>);

impl Alive {
    fn new(count: &Arc<AtomicU32>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Alive(count.clone())
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An upstream whose `n`-th request (from 0) answers `plan(n)`: after a delay, with a status.
#[derive(Clone)]
struct Upstream {
    plan: Arc<dyn Fn(u32) -> (Duration, StatusCode) + Send + Sync>,
    /// The window's count each answer carries, when the upstream has a window (reset in 60 s).
    remaining: Option<Arc<dyn Fn(u32) -> u64 + Send + Sync>>,
    calls: Arc<AtomicU32>,
    alive: Arc<AtomicU32>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// What the upstream saw of one request: its method, idempotency key and body.
type Seen = (Method, Option<String>, Bytes);

impl Upstream {
    fn new(plan: impl Fn(u32) -> (Duration, StatusCode) + Send + Sync + 'static) -> Self {
        Upstream {
            plan: Arc::new(plan),
            remaining: None,
            calls: Arc::default(),
            alive: Arc::default(),
            seen: Arc::default(),
        }
    }

    /// With a window: the `n`-th answer says `remaining(n)` requests are left
    /// (`RateLimit-Remaining`), the window resetting in 60 s.
    fn window(mut self, remaining: impl Fn(u32) -> u64 + Send + Sync + 'static) -> Self {
        self.remaining = Some(Arc::new(remaining));
        self
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<Request<ReplayBody>> for Upstream {
    type Response = Response<()>;
    type Error = Error;
    type Future = futures_like::BoxFuture<Result<Response<()>, Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReplayBody>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let (delay, status) = (self.plan)(n);
        let remaining = self.remaining.as_ref().map(|remaining| remaining(n));
        let alive = Alive::new(&self.alive);
        let seen = self.seen.clone();
        Box::pin(async move {
            let _alive = alive;
            let (parts, body) = request.into_parts();
            let key = parts
                .headers
                .get("idempotency-key")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = http_body_util::BodyExt::collect(body)
                .await
                .unwrap()
                .to_bytes();
            seen.lock().unwrap().push((parts.method, key, body));
            tokio::time::sleep(delay).await;
            let mut response = Response::builder().status(status);
            if let Some(remaining) = remaining {
                response = response
                    .header("ratelimit-remaining", remaining)
                    .header("ratelimit-reset", "60");
            }
            Ok(response.body(()).unwrap())
        })
    }
}

mod futures_like {
    pub(crate) type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
}

fn get() -> Request<ReplayBody> {
    Request::get(URL)
        .body(ReplayBody::from_bytes(Bytes::new()))
        .unwrap()
}

fn counts(layer: &HedgeLayer) -> HedgeCounts {
    layer
        .stats()
        .of(&ByUpstream::of(&URL.parse().unwrap()).unwrap())
        .unwrap_or_default()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn a_slow_get_gets_a_copy_and_the_faster_answer_wins_and_the_loser_is_dropped() {
    let upstream = Upstream::new(|n| match n {
        0 => (ms(300), StatusCode::OK),
        _ => (ms(2), StatusCode::OK),
    });
    let layer = HedgeLayer::new().fallback_delay(ms(20)).budget(1.0);
    let client = layer.layer(upstream.clone());

    let start = Instant::now();
    let response = client.oneshot(get()).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        start.elapsed(),
        ms(22),
        "the copy went at 20 ms and answered 2 ms later"
    );
    assert_eq!(upstream.calls(), 2);
    assert_eq!(
        upstream.alive.load(Ordering::SeqCst),
        0,
        "the slower attempt was dropped with the call"
    );
    let counts = counts(&layer);
    assert_eq!((counts.sent, counts.won), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn an_answer_before_the_delay_sends_no_copy() {
    let upstream = Upstream::new(|_| (ms(5), StatusCode::OK));
    let layer = HedgeLayer::new().fallback_delay(ms(20)).budget(1.0);

    for _ in 0..10 {
        layer.layer(upstream.clone()).oneshot(get()).await.unwrap();
    }

    assert_eq!(upstream.calls(), 10);
    assert_eq!(counts(&layer), HedgeCounts::default());
}

#[tokio::test(start_paused = true)]
async fn a_retryable_failure_does_not_win_over_a_copy_that_may_still_succeed() {
    // The first attempt fails with a 503 at 50 ms; the copy, sent at 20 ms, succeeds at 70 ms.
    let upstream = Upstream::new(|n| match n {
        0 => (ms(50), StatusCode::SERVICE_UNAVAILABLE),
        _ => (ms(50), StatusCode::OK),
    });
    let layer = HedgeLayer::new().fallback_delay(ms(20)).budget(1.0);

    let start = Instant::now();
    let response = layer.layer(upstream.clone()).oneshot(get()).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), ms(70));
    assert_eq!(counts(&layer).won, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failure_no_retry_would_follow_settles_the_call_at_once() {
    let upstream = Upstream::new(|n| match n {
        0 => (ms(50), StatusCode::NOT_FOUND),
        _ => (ms(100), StatusCode::OK),
    });
    let layer = HedgeLayer::new().fallback_delay(ms(20)).budget(1.0);

    let start = Instant::now();
    let response = layer.layer(upstream.clone()).oneshot(get()).await.unwrap();

    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "a 404 is the answer"
    );
    assert_eq!(start.elapsed(), ms(50));
    assert_eq!(upstream.alive.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn the_delay_follows_the_upstreams_own_latency() {
    // tokio's timer counts whole milliseconds: each answer takes exactly 3 ms.
    let upstream = Upstream::new(|_| (ms(3), StatusCode::OK));
    let layer = HedgeLayer::new().fallback_delay(ms(50));
    let key = ByUpstream::of(&URL.parse().unwrap()).unwrap();

    layer.layer(upstream.clone()).oneshot(get()).await.unwrap();
    assert_eq!(
        layer.stats().delay_of(&key),
        Some(ms(50)),
        "the fallback at first"
    );
    for _ in 0..100 {
        layer.layer(upstream.clone()).oneshot(get()).await.unwrap();
    }

    // The p95 of 3 ms answers, within the buckets' eighth, in microseconds.
    let delay = layer.stats().delay_of(&key).unwrap();
    assert!(
        delay >= Duration::from_micros(3_000) && delay <= Duration::from_micros(3_375),
        "{delay:?}"
    );
    assert_ne!(
        delay.subsec_micros() % 1_000,
        0,
        "not rounded to a millisecond"
    );
}

#[tokio::test(start_paused = true)]
async fn hedges_stay_within_the_budget() {
    // One request in ten is a straggler, and the delay is the median: without a budget a
    // tenth of the calls would be hedged.
    let upstream = Upstream::new(|n| {
        if n % 10 == 0 {
            (ms(300), StatusCode::OK)
        } else {
            (ms(1), StatusCode::OK)
        }
    });
    let layer = HedgeLayer::new().quantile(0.5).fallback_delay(ms(10));
    let mut client = layer.layer(upstream.clone());

    let calls = 400;
    for _ in 0..calls {
        client.ready().await.unwrap().call(get()).await.unwrap();
        tokio::time::sleep(ms(10)).await;
    }

    let counts = counts(&layer);
    assert!(
        f64::from(counts.sent as u32) <= 0.05 * f64::from(calls),
        "{counts:?}"
    );
    assert!(
        counts.sent >= 15,
        "the budget was spent, not unused: {counts:?}"
    );
    assert!(counts.refused_budget > 0, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn a_brownout_sends_few_copies_then_none() {
    // Steady at 2 ms (with rare stragglers), then every answer takes 30 ms.
    let brownout_from = 600;
    let upstream = Upstream::new(move |n| {
        if n >= brownout_from {
            (ms(30), StatusCode::OK)
        } else if n % 100 == 57 {
            (ms(300), StatusCode::OK)
        } else {
            (ms(2), StatusCode::OK)
        }
    });
    let layer = HedgeLayer::new();
    let mut client = layer.layer(upstream.clone());
    let mut primaries = 0;
    while upstream.calls() < brownout_from {
        client.ready().await.unwrap().call(get()).await.unwrap();
        primaries += 1;
    }
    let before = counts(&layer);
    assert!(before.sent >= 4, "the stragglers were hedged: {before:?}");

    for _ in 0..300 {
        client.ready().await.unwrap().call(get()).await.unwrap();
    }

    let during = counts(&layer);
    let sent = during.sent - before.sent;
    // Copies go until the samples since the last working-out (16) show the climb.
    assert!(
        sent <= 16,
        "at most one update's worth of the 300 calls in the brownout were hedged, not {sent} ({during:?}, {primaries} calls before)"
    );
    assert!(
        during.refused_state > before.refused_state,
        "the brownout stopped copies: {during:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_with_less_time_left_than_the_median_gets_no_copy() {
    let upstream = Upstream::new(|n| {
        if n < 40 {
            (ms(10), StatusCode::OK)
        } else {
            (ms(500), StatusCode::OK)
        }
    });
    let layer = HedgeLayer::new();
    let mut client = layer.layer(upstream.clone());
    for _ in 0..40 {
        client.ready().await.unwrap().call(get()).await.unwrap();
    }

    // 15 ms left: the copy would be due at about 10 ms (the p95), with 5 ms to go.
    let mut request = get();
    request
        .extensions_mut()
        .insert(Deadline(Instant::now() + ms(15)));
    let _ = tokio::time::timeout(ms(600), client.ready().await.unwrap().call(request)).await;

    let counts = counts(&layer);
    assert_eq!(counts.sent, 0, "{counts:?}");
    assert_eq!(counts.refused_state, 1, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn a_post_with_a_key_is_hedged_with_the_same_key_and_body() {
    let upstream = Upstream::new(|n| match n {
        0 => (ms(300), StatusCode::OK),
        _ => (ms(2), StatusCode::CREATED),
    });
    let layer = HedgeLayer::new().fallback_delay(ms(20)).budget(1.0);
    let request = Request::post(URL)
        .header("idempotency-key", "order-42")
        .body(ReplayBody::from_bytes(Bytes::from_static(
            b"{\"order\":42}",
        )))
        .unwrap();

    let response = layer
        .layer(upstream.clone())
        .oneshot(request)
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::CREATED);
    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for (method, key, body) in &seen {
        assert_eq!(*method, Method::POST);
        assert_eq!(key.as_deref(), Some("order-42"));
        assert_eq!(body, "{\"order\":42}");
    }
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::HEAD),
        Just(Method::OPTIONS),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::PATCH),
        Just(Method::DELETE),
        Just(Method::TRACE),
        Just(Method::CONNECT),
        Just(Method::from_bytes(b"PURGE").unwrap()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the method, key and timing, a request is sent at most once unless its method
    /// is safe or it carries a key, and at most twice when it is.
    #[test]
    fn nothing_without_a_safe_method_or_a_key_is_ever_sent_twice(
        method in method(),
        keyed in any::<bool>(),
        first_ms in 0u64..400,
        copy_ms in 0u64..400,
        fallback_ms in 1u64..100,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let upstream = Upstream::new(move |n| {
            (ms(if n == 0 { first_ms } else { copy_ms }), StatusCode::OK)
        });
        let layer = HedgeLayer::new().fallback_delay(ms(fallback_ms)).budget(1.0);
        let mut request = Request::builder().method(method.clone()).uri(URL);
        if keyed {
            request = request.header("idempotency-key", "k-1");
        }
        let request = request.body(ReplayBody::from_bytes(Bytes::from_static(b"x"))).unwrap();
        runtime.block_on(layer.layer(upstream.clone()).oneshot(request)).unwrap();
        let safe = matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) || keyed;
        if safe {
            prop_assert!(upstream.calls() <= 2);
            prop_assert_eq!(upstream.calls() == 2, first_ms > fallback_ms);
        } else {
            prop_assert_eq!(upstream.calls(), 1);
        }
        prop_assert_eq!(upstream.alive.load(Ordering::SeqCst), 0);
    }
}

// ------------------------------------------------------------------------------------------
// Hedging as a step of `Outbound`.

mod composed {
    use super::*;
    use tower_outbound::dead_letter::MemorySink;
    use tower_outbound::retry::Attempts;
    use tower_outbound::{
        CircuitBreakerLayer, ConcurrencyLayer, DeadLetterLayer, Outbound, RetryLayer, ThrottleLayer,
    };

    fn hedging(layer: &HedgeLayer) -> Outbound {
        Outbound::new().hedge(Some(layer.clone()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_hedged_attempt_is_one_attempt_and_the_loser_is_dropped() {
        let upstream = Upstream::new(|n| match n {
            0 => (ms(300), StatusCode::OK),
            _ => (ms(2), StatusCode::OK),
        });
        let layer = HedgeLayer::new().fallback_delay(ms(20)).budget(1.0);

        let start = Instant::now();
        let response = hedging(&layer)
            .service(upstream.clone())
            .oneshot(get())
            .await
            .unwrap();

        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(start.elapsed(), ms(22));
        assert_eq!(
            response
                .extensions()
                .get::<Attempts>()
                .map_or(1, |a| a.count),
            1,
            "a hedge is not a retry"
        );
        assert_eq!(upstream.calls(), 2);
        assert_eq!(
            upstream.alive.load(Ordering::SeqCst),
            0,
            "the slower copy was dropped"
        );
        assert_eq!((counts(&layer).sent, counts(&layer).won), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_post_is_hedged_with_the_key_the_stack_stamped() {
        let upstream = Upstream::new(|n| match n {
            0 => (ms(300), StatusCode::OK),
            _ => (ms(2), StatusCode::CREATED),
        });
        let layer = HedgeLayer::new().fallback_delay(ms(20)).budget(1.0);
        let request = Request::post(URL)
            .body(ReplayBody::from_bytes(Bytes::from_static(b"{}")))
            .unwrap();

        let response = hedging(&layer)
            .service(upstream.clone())
            .oneshot(request)
            .await
            .unwrap();

        assert_eq!(response.status(), StatusCode::CREATED);
        let seen = upstream.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert!(seen[0].1.is_some());
        assert_eq!(seen[0].1, seen[1].1, "both copies carry the one key");
    }

    #[tokio::test(start_paused = true)]
    async fn a_post_without_a_key_is_never_hedged_by_the_stack() {
        let upstream = Upstream::new(|_| (ms(300), StatusCode::OK));
        let layer = HedgeLayer::new().fallback_delay(ms(20)).budget(1.0);
        let request = Request::post(URL)
            .body(ReplayBody::from_bytes(Bytes::from_static(b"{}")))
            .unwrap();

        // No idempotency layer: nothing stamps a key.
        hedging(&layer)
            .idempotency(None)
            .service(upstream.clone())
            .oneshot(request)
            .await
            .unwrap();

        assert_eq!(upstream.calls(), 1);
        assert_eq!(counts(&layer), HedgeCounts::default());
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_of_a_half_open_breaker_gets_no_copy() {
        // Four failures open the breaker; after its open time, the probe is slow.
        let upstream = Upstream::new(|n| {
            if n < 4 {
                (ms(1), StatusCode::SERVICE_UNAVAILABLE)
            } else {
                (ms(300), StatusCode::OK)
            }
        });
        let layer = HedgeLayer::new().fallback_delay(ms(20)).budget(1.0);
        let stack = hedging(&layer)
            .retry(RetryLayer::new().max_attempts(1))
            .circuit_breaker(Some(CircuitBreakerLayer::new().minimum_calls(4)));
        let client = stack.service(upstream.clone());
        for _ in 0..4 {
            client.clone().oneshot(get()).await.unwrap();
        }
        let refused = client.clone().oneshot(get()).await.unwrap_err();
        assert!(refused.is_circuit_open());
        tokio::time::sleep(Duration::from_secs(2)).await;

        let response = client.clone().oneshot(get()).await.unwrap();

        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(upstream.calls(), 5, "the probe went alone");
        let counts = counts(&layer);
        assert_eq!((counts.sent, counts.refused_state), (0, 1), "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_copy_goes_while_the_gate_holds_a_server_named_pause() {
        // Request 0 is slow; request 1, sent a moment later, is answered 429 with a 30 s pause.
        let upstream = Upstream::new(|n| match n {
            0 => (ms(300), StatusCode::OK),
            1 => (ms(5), StatusCode::TOO_MANY_REQUESTS),
            _ => (ms(2), StatusCode::OK),
        });
        let layer = HedgeLayer::new().fallback_delay(ms(20)).budget(1.0);
        let client = hedging(&layer)
            .retry(RetryLayer::new().max_attempts(1))
            .service(Throttled429(upstream.clone()));

        let slow = tokio::spawn(client.clone().oneshot(get()));
        tokio::time::sleep(ms(1)).await;
        let limited = client.clone().oneshot(get()).await.unwrap();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        let response = slow.await.unwrap().unwrap();

        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(upstream.calls(), 2, "no copy of the slow request");
        assert_eq!(counts(&layer).refused_state, 1);
    }

    /// Puts `Retry-After: 30` on the upstream's 429s.
    #[derive(Clone)]
    struct Throttled429(Upstream);

    impl Service<Request<ReplayBody>> for Throttled429 {
        type Response = Response<()>;
        type Error = Error;
        type Future = futures_like::BoxFuture<Result<Response<()>, Error>>;

        fn poll_ready(
            &mut self,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Error>> {
            self.0.poll_ready(cx)
        }

        fn call(&mut self, request: Request<ReplayBody>) -> Self::Future {
            let future = self.0.call(request);
            Box::pin(async move {
                let mut response = future.await?;
                if response.status() == StatusCode::TOO_MANY_REQUESTS {
                    response
                        .headers_mut()
                        .insert("retry-after", http::HeaderValue::from_static("30"));
                }
                Ok(response)
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_throttle_a_copy_goes_only_with_a_token_at_once() {
        let upstream = Upstream::new(|n| match n {
            0 => (ms(300), StatusCode::OK),
            _ => (ms(2), StatusCode::OK),
        });
        let layer = HedgeLayer::new().fallback_delay(ms(20)).budget(1.0);
        // One request per 10 s: the attempt takes the token, none is left for a copy.
        let stack = hedging(&layer).throttle(Some(ThrottleLayer::new(1, Duration::from_secs(10))));

        let response = stack
            .service(upstream.clone())
            .oneshot(get())
            .await
            .unwrap();

        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(upstream.calls(), 1);
        assert_eq!(counts(&layer).refused_state, 1);
    }

    /// A regression test: a copy went on a token of the throttle's bucket but was not among its
    /// outstanding requests, so a reply that came while a copy was in flight was taken as
    /// leaving one more request in the window than it did.
    #[tokio::test(start_paused = true)]
    async fn a_copy_in_flight_counts_among_the_throttles_outstanding_requests() {
        // A and its copy: slow, still out when B answers with 4 left in the window, not
        // counting A and its copy.
        let upstream = Upstream::new(|n| match n {
            0 | 1 => (ms(300), StatusCode::OK),
            2 => (ms(5), StatusCode::OK),
            _ => (ms(1), StatusCode::OK),
        })
        .window(|n| match n {
            2 => 4,
            0 | 1 => 50,
            _ => 1,
        });
        let layer = HedgeLayer::new().fallback_delay(ms(20)).budget(1.0);
        let stack = hedging(&layer)
            .throttle(Some(
                ThrottleLayer::new(100, Duration::from_secs(60)).burst(100),
            ))
            .service(upstream.clone());

        let a = tokio::spawn(stack.clone().oneshot(get()));
        tokio::time::sleep(ms(30)).await;
        assert_eq!(counts(&layer).sent, 1, "A's copy is out");
        stack.clone().oneshot(get()).await.unwrap();
        // 4 left less A and its copy: two more go, the others would wait for the reset.
        let calls: Vec<_> = (0..4)
            .map(|_| tokio::spawn(stack.clone().oneshot(get())))
            .collect();
        let mut results = Vec::new();
        for call in calls {
            results.push(call.await.unwrap());
        }
        let sent = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(sent, 2, "{results:?}");
        for err in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(err.kind(), tower_outbound::error::Kind::Throttled { .. }),
                "{err}"
            );
        }
        a.await.unwrap().unwrap();
    }

    /// A copy is a request to the upstream like the attempt: it goes only with a place under
    /// the concurrency limit free at once (it never waits in line), and gives it back when it
    /// answers or is dropped.
    #[tokio::test(start_paused = true)]
    async fn a_copy_goes_only_with_a_place_under_the_concurrency_limit_free_at_once() {
        for (limit, copies) in [(1, 0), (2, 1)] {
            let upstream = Upstream::new(|n| match n {
                0 => (ms(300), StatusCode::OK),
                _ => (ms(2), StatusCode::OK),
            });
            let layer = HedgeLayer::new().fallback_delay(ms(20)).budget(1.0);
            let stack = hedging(&layer).concurrency(Some(ConcurrencyLayer::fixed(limit)));

            let response = stack
                .clone()
                .service(upstream.clone())
                .oneshot(get())
                .await
                .unwrap();

            assert_eq!(response.status(), StatusCode::OK);
            let counts = counts(&layer);
            assert_eq!(counts.sent, copies, "limit {limit}: {counts:?}");
            assert_eq!(
                counts.refused_state,
                1 - copies,
                "limit {limit}: {counts:?}"
            );
            assert_eq!(upstream.calls(), 1 + copies as u32, "limit {limit}");
            let key = ByUpstream::of(&URL.parse().unwrap()).unwrap();
            let state = stack.concurrency_layer().unwrap().limit_of(&key).unwrap();
            assert_eq!(state.in_flight, 0, "limit {limit}: every place given back");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hedged_call_that_fails_gets_one_dead_letter() {
        let upstream = Upstream::new(|_| (ms(100), StatusCode::SERVICE_UNAVAILABLE));
        let layer = HedgeLayer::new().fallback_delay(ms(20)).budget(1.0);
        let sink = MemorySink::new();
        let stack = hedging(&layer)
            .retry(RetryLayer::new().max_attempts(1))
            .dead_letters(Some(DeadLetterLayer::new(sink.clone())));

        let response = stack
            .service(upstream.clone())
            .oneshot(get())
            .await
            .unwrap();

        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(upstream.calls(), 2, "the attempt and its copy");
        assert_eq!(sink.letters().len(), 1, "one call, one letter");
        assert_eq!(sink.letters()[0].attempts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_latency_sensitive_preset_hedges() {
        let upstream = Upstream::new(|n| match n {
            0 => (ms(300), StatusCode::OK),
            _ => (ms(2), StatusCode::OK),
        });
        let stack = Outbound::latency_sensitive();
        let layer = stack.hedge_layer().unwrap().clone();
        let client = stack.service(upstream.clone());
        // Twenty quick calls fund the budget and teach the delay (2 × 2 ms).
        let quick = Upstream::new(|_| (ms(2), StatusCode::OK));
        let warm = stack_for(&stack, quick);
        for _ in 0..40 {
            warm.clone().oneshot(get()).await.unwrap();
        }

        let start = Instant::now();
        client.oneshot(get()).await.unwrap();

        assert!(start.elapsed() < ms(20), "{:?}", start.elapsed());
        assert_eq!(counts(&layer).won, 1);
    }

    fn stack_for(
        stack: &Outbound,
        upstream: Upstream,
    ) -> tower_outbound::outbound::OutboundService<Upstream> {
        stack.service(upstream)
    }
}
