//! The concurrency limit, alone and inside `Outbound`: the count in flight never passes the
//! limit across tasks and clones, places come back when futures complete or are dropped, the
//! limit falls on the upstream's overload signals and grows back, refusals are typed and
//! neither retried nor counted by the breaker. Paused clock throughout.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::{sleep, Instant};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_outbound::body::ReplayBody;
use tower_outbound::partition::PartitionKey;
use tower_outbound::{CircuitBreakerLayer, CircuitState, ConcurrencyLayer, Error, Outbound};

#[path = "support/join.rs"]
mod join;
use join::join_all;

/// Counts calls in flight and the most ever seen at once.
#[derive(Clone, Default)]
struct InFlight {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl InFlight {
    fn enter(&self) -> Guard {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        Guard(self.now.clone())
    }
}

struct Guard(Arc<AtomicUsize>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn key() -> PartitionKey {
    PartitionKey::from("http://api.example.com:80")
}

fn get() -> Request<String> {
    Request::get("http://api.example.com/items")
        .body(String::new())
        .unwrap()
}

/// An upstream that answers `status` after `delay`, counting calls in flight.
fn upstream<B: Send + 'static>(
    seen: InFlight,
    delay: Duration,
    status: StatusCode,
) -> impl Service<
    Request<B>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<String>, Infallible>> + Send,
> + Clone {
    tower::service_fn(move |_req: Request<B>| {
        let seen = seen.clone();
        async move {
            let _guard = seen.enter();
            sleep(delay).await;
            let mut response = Response::new(String::new());
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn in_flight_never_exceeds_the_limit_across_64_tasks_and_many_clones() {
    let seen = InFlight::default();
    let layer = ConcurrencyLayer::fixed(5);
    let service = ServiceBuilder::new().layer(layer.clone()).service(upstream(
        seen.clone(),
        Duration::from_millis(10),
        StatusCode::OK,
    ));
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            // A clone per task, and a layer clone's own service for every other task.
            let service = if i % 2 == 0 {
                service.clone()
            } else {
                layer.clone().layer(upstream(
                    seen.clone(),
                    Duration::from_millis(10),
                    StatusCode::OK,
                ))
            };
            tokio::spawn(async move {
                for _ in 0..4 {
                    service.clone().oneshot(get()).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(seen.calls.load(Ordering::SeqCst), 256);
    assert_eq!(
        seen.most.load(Ordering::SeqCst),
        5,
        "the limit, and reached"
    );
    let state = layer.limit_of(&key()).unwrap();
    assert_eq!((state.in_flight, state.queued), (0, 0));
}

/// After tower-resilience#365: a limiter whose futures are dropped mid-call must not leak
/// their places.
#[tokio::test(start_paused = true)]
async fn a_place_comes_back_when_a_future_is_dropped_mid_call() {
    let seen = InFlight::default();
    let layer = ConcurrencyLayer::fixed(2);
    let service = layer.clone().layer(upstream(
        seen.clone(),
        Duration::from_secs(60),
        StatusCode::OK,
    ));
    for _ in 0..10 {
        // Two calls in flight, one in line; all three given up after 10 ms.
        let calls: Vec<_> = (0..3).map(|_| service.clone().oneshot(get())).collect();
        let all = join_all(calls);
        assert!(tokio::time::timeout(Duration::from_millis(10), all)
            .await
            .is_err());
        let state = layer.limit_of(&key()).unwrap();
        assert_eq!((state.in_flight, state.queued), (0, 0), "{state:?}");
    }
    // The limit is whole: two calls go at once again.
    let quick = layer.clone().layer(upstream(
        seen.clone(),
        Duration::from_millis(1),
        StatusCode::OK,
    ));
    let (a, b) = tokio::join!(quick.clone().oneshot(get()), quick.clone().oneshot(get()));
    a.unwrap();
    b.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_full_limit_with_no_wait_refuses_with_a_typed_error() {
    let seen = InFlight::default();
    let layer = ConcurrencyLayer::fixed(1).max_wait(Duration::ZERO);
    let service = layer.layer(upstream(
        seen.clone(),
        Duration::from_millis(50),
        StatusCode::OK,
    ));
    let first = tokio::spawn(service.clone().oneshot(get()));
    tokio::task::yield_now().await;
    let err = service.clone().oneshot(get()).await.unwrap_err();
    assert!(err.is_overloaded(), "{err}");
    assert!(err.is_refusal());
    assert_eq!(
        err.to_string(),
        "overloaded for upstream api.example.com; 1 calls were in flight, the concurrency limit, and none finished within its max_wait"
    );
    first.await.unwrap().unwrap();
    assert_eq!(seen.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_waits_in_line_up_to_max_wait_then_is_refused() {
    let seen = InFlight::default();
    let layer = ConcurrencyLayer::fixed(1).max_wait(Duration::from_millis(100));
    let service = layer.clone().layer(upstream(
        seen.clone(),
        Duration::from_millis(250),
        StatusCode::OK,
    ));
    let first = tokio::spawn(service.clone().oneshot(get()));
    tokio::task::yield_now().await;
    let start = Instant::now();
    let err = service.clone().oneshot(get()).await.unwrap_err();
    assert!(err.is_overloaded());
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(
        layer.limit_of(&key()).unwrap().queued,
        0,
        "it left the line"
    );
    first.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn calls_in_line_go_in_arrival_order() {
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let layer = ConcurrencyLayer::fixed(1);
    let service = {
        let order = order.clone();
        layer.layer(tower::service_fn(move |req: Request<String>| {
            let order = order.clone();
            async move {
                order.lock().unwrap().push(req.into_body());
                sleep(Duration::from_millis(10)).await;
                Ok::<_, Infallible>(Response::new(String::new()))
            }
        }))
    };
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let request = Request::get("http://api.example.com/")
                .body(i.to_string())
                .unwrap();
            service.clone().oneshot(request)
        })
        .collect();
    // Made in the order 7, 6, …, 0 (a call reaches the layer at its first poll): 7 goes,
    // the others wait in line and leave in that order.
    let results = join_all(calls.into_iter().rev()).await;
    assert!(results.iter().all(Result::is_ok));
    let expected: Vec<String> = (0..8).rev().map(|i: i32| i.to_string()).collect();
    assert_eq!(*order.lock().unwrap(), expected);
}

#[tokio::test(start_paused = true)]
async fn overload_signals_shrink_an_adaptive_limit_and_success_grows_it_back() {
    let status = Arc::new(std::sync::Mutex::new(StatusCode::OK));
    let layer = ConcurrencyLayer::adaptive().initial(10).backoff(0.5);
    let service = {
        let status = status.clone();
        layer
            .clone()
            .layer(tower::service_fn(move |_req: Request<String>| {
                let status = *status.lock().unwrap();
                async move {
                    sleep(Duration::from_millis(5)).await;
                    let mut response = Response::new(String::new());
                    *response.status_mut() = status;
                    Ok::<_, Infallible>(response)
                }
            }))
    };
    let wave = |n: usize| {
        let service = service.clone();
        async move {
            let calls: Vec<_> = (0..n).map(|_| service.clone().oneshot(get())).collect();
            join_all(calls).await
        }
    };
    wave(10).await;
    let start = layer.limit_of(&key()).unwrap().limit;
    assert!(start >= 10, "{start}");
    for status_now in [
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::SERVICE_UNAVAILABLE,
    ] {
        *status.lock().unwrap() = status_now;
        let before = layer.limit_of(&key()).unwrap().limit;
        wave(before as usize).await;
        let after = layer.limit_of(&key()).unwrap().limit;
        assert_eq!(
            after,
            before / 2,
            "one halving per round trip on {status_now}"
        );
    }
    // A 400 and a 500 say nothing of load.
    for status_now in [StatusCode::BAD_REQUEST, StatusCode::INTERNAL_SERVER_ERROR] {
        *status.lock().unwrap() = status_now;
        let before = layer.limit_of(&key()).unwrap().limit;
        wave(before as usize).await;
        assert!(
            layer.limit_of(&key()).unwrap().limit >= before,
            "{status_now}"
        );
    }
    *status.lock().unwrap() = StatusCode::OK;
    let low = layer.limit_of(&key()).unwrap().limit;
    for _ in 0..20 {
        let limit = layer.limit_of(&key()).unwrap().limit;
        wave(limit as usize * 2).await;
    }
    assert!(layer.limit_of(&key()).unwrap().limit > low + 10);
}

#[tokio::test(start_paused = true)]
async fn retry_after_and_a_used_up_quota_are_losses_too() {
    for header in [("retry-after", "1"), ("ratelimit-remaining", "0")] {
        let layer = ConcurrencyLayer::adaptive().initial(8).backoff(0.5);
        let service =
            layer
                .clone()
                .layer(tower::service_fn(move |_req: Request<String>| async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header(header.0, header.1)
                            .body(String::new())
                            .unwrap(),
                    )
                }));
        service.oneshot(get()).await.unwrap();
        assert_eq!(layer.limit_of(&key()).unwrap().limit, 4, "{header:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn limits_are_per_upstream() {
    let seen = InFlight::default();
    let layer = ConcurrencyLayer::fixed(1).max_wait(Duration::ZERO);
    let service = layer.clone().layer(upstream(
        seen.clone(),
        Duration::from_millis(50),
        StatusCode::OK,
    ));
    let first = tokio::spawn(service.clone().oneshot(get()));
    tokio::task::yield_now().await;
    let other = Request::get("http://other.example.com/")
        .body(String::new())
        .unwrap();
    service.clone().oneshot(other).await.unwrap();
    first.await.unwrap().unwrap();
}

/// Inside `Outbound`: the limit binds, a refusal is not retried, not counted by the breaker,
/// and each attempt takes its own place.
#[tokio::test(start_paused = true)]
async fn outbound_refuses_past_the_limit_without_retrying_or_tripping_the_breaker() {
    let seen = InFlight::default();
    let breaker = CircuitBreakerLayer::new().minimum_calls(1);
    let outbound = Outbound::new()
        .circuit_breaker(Some(breaker.clone()))
        .concurrency(Some(ConcurrencyLayer::fixed(2).max_wait(Duration::ZERO)));
    let client = outbound.service(upstream::<ReplayBody>(
        seen.clone(),
        Duration::from_millis(50),
        StatusCode::OK,
    ));
    let calls: Vec<_> = (0..5).map(|_| client.clone().oneshot(get())).collect();
    let results = join_all(calls).await;
    let refused = results
        .iter()
        .filter(|r| r.as_ref().is_err_and(Error::is_overloaded))
        .count();
    assert_eq!(refused, 3);
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| e.attempts() == 1));
    assert_eq!(seen.calls.load(Ordering::SeqCst), 2);
    assert_eq!(breaker.state_of(&key()), CircuitState::Closed);
    let limit = outbound
        .concurrency_layer()
        .unwrap()
        .limit_of(&key())
        .unwrap();
    assert_eq!((limit.in_flight, limit.queued), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn outbound_retries_take_a_place_each_and_give_it_back_between_attempts() {
    let seen = InFlight::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let outbound = Outbound::new().concurrency(Some(ConcurrencyLayer::fixed(1)));
    let client = {
        let (seen, calls) = (seen.clone(), calls.clone());
        outbound.service(tower::service_fn(move |_req: Request<ReplayBody>| {
            let (seen, n) = (seen.clone(), calls.fetch_add(1, Ordering::SeqCst));
            async move {
                let _guard = seen.enter();
                sleep(Duration::from_millis(5)).await;
                let mut response = Response::new(String::new());
                if n % 2 == 0 {
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                Ok::<_, Infallible>(response)
            }
        }))
    };
    let results = join_all((0..4).map(|_| client.clone().oneshot(get()))).await;
    assert!(results
        .iter()
        .all(|r| r.as_ref().is_ok_and(|r| r.status() == StatusCode::OK)));
    assert_eq!(seen.most.load(Ordering::SeqCst), 1);
    assert!(calls.load(Ordering::SeqCst) > 4, "some calls were retried");
    let limit = outbound
        .concurrency_layer()
        .unwrap()
        .limit_of(&key())
        .unwrap();
    assert_eq!((limit.in_flight, limit.queued), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn outbound_gives_the_place_back_when_a_call_is_dropped_mid_attempt_or_in_line() {
    let seen = InFlight::default();
    let outbound = Outbound::new()
        .attempt_timeout(None)
        .concurrency(Some(ConcurrencyLayer::fixed(1)));
    let client = outbound.service(upstream::<ReplayBody>(
        seen.clone(),
        Duration::from_secs(60),
        StatusCode::OK,
    ));
    let calls: Vec<_> = (0..3).map(|_| client.clone().oneshot(get())).collect();
    assert!(
        tokio::time::timeout(Duration::from_millis(10), join_all(calls))
            .await
            .is_err()
    );
    let limit = outbound
        .concurrency_layer()
        .unwrap()
        .limit_of(&key())
        .unwrap();
    assert_eq!((limit.in_flight, limit.queued), (0, 0), "{limit:?}");
}

#[tokio::test(start_paused = true)]
async fn the_background_preset_limits_adaptively() {
    let outbound = Outbound::background();
    let layer = outbound.concurrency_layer().expect("on in background()");
    let client = outbound.service(tower::service_fn(|_req: Request<ReplayBody>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    client.oneshot(get()).await.unwrap();
    assert_eq!(layer.limit_of(&key()).unwrap().limit, 20);
    assert!(Outbound::new().concurrency_layer().is_none());
    assert!(Outbound::user_facing().concurrency_layer().is_none());
}

/// Inside `Outbound` the throttle and the limit both hold: whichever binds first sets the pace.
#[tokio::test(start_paused = true)]
async fn outbound_paces_by_whichever_of_the_rate_and_the_limit_binds_first() {
    use tower_outbound::ThrottleLayer;

    let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = InFlight::default();
    let upstream = |delay: Duration| {
        let (arrivals, seen) = (arrivals.clone(), seen.clone());
        tower::service_fn(move |_req: Request<ReplayBody>| {
            let (arrivals, seen) = (arrivals.clone(), seen.clone());
            async move {
                arrivals.lock().unwrap().push(Instant::now());
                let _guard = seen.enter();
                sleep(delay).await;
                Ok::<_, Infallible>(Response::new(String::new()))
            }
        })
    };
    // The rate binds: 10 a second (burst 1) under a limit of 100.
    let outbound = Outbound::new()
        .throttle(Some(
            ThrottleLayer::new(10, Duration::from_secs(1)).burst(1),
        ))
        .concurrency(Some(ConcurrencyLayer::fixed(100)));
    let client = outbound.service(upstream(Duration::from_millis(1)));
    let results = join_all((0..10).map(|_| client.clone().oneshot(get()))).await;
    assert!(results.iter().all(Result::is_ok));
    let times = std::mem::take(&mut *arrivals.lock().unwrap());
    for pair in times.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(99), "{times:?}");
    }
    // The limit binds: 2 in flight under a rate of 1,000 a second.
    let outbound = Outbound::new()
        .throttle(Some(ThrottleLayer::new(1000, Duration::from_secs(1))))
        .concurrency(Some(ConcurrencyLayer::fixed(2)));
    let client = outbound.service(upstream(Duration::from_millis(50)));
    let start = Instant::now();
    let results = join_all((0..10).map(|_| client.clone().oneshot(get()))).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(seen.most.load(Ordering::SeqCst), 2);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(250),
        "five waves of two"
    );
}

#[tokio::test(start_paused = true)]
async fn limits_past_max_partitions_forget_idle_upstreams_first() {
    let seen = InFlight::default();
    let layer = ConcurrencyLayer::fixed(1).max_partitions(2);
    let service = layer.clone().layer(upstream(
        seen.clone(),
        Duration::from_millis(50),
        StatusCode::OK,
    ));
    let to = |host: &str| {
        Request::get(format!("http://{host}/"))
            .body(String::new())
            .unwrap()
    };
    // a.example is busy while b.example and then c.example come: b, idle, is forgotten.
    let slow = layer.clone().layer(upstream(
        seen.clone(),
        Duration::from_secs(1),
        StatusCode::OK,
    ));
    let busy = tokio::spawn(slow.oneshot(to("a.example")));
    tokio::task::yield_now().await;
    service.clone().oneshot(to("b.example")).await.unwrap();
    service.clone().oneshot(to("c.example")).await.unwrap();
    let key = |host: &str| PartitionKey::from(format!("http://{host}:80").as_str());
    assert_eq!(
        layer.limit_of(&key("a.example")).map(|l| l.in_flight),
        Some(1)
    );
    assert!(
        layer.limit_of(&key("b.example")).is_none(),
        "the idle one went"
    );
    assert!(layer.limit_of(&key("c.example")).is_some());
    busy.await.unwrap().unwrap();
}
