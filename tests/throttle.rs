//! The throttle's rules on tokio's paused clock, with in-memory upstreams that record when each
//! request arrived.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_outbound::partition::ByAuthority;
use tower_outbound::throttle::LocalStore;
use tower_outbound::ThrottleLayer;

const MS: Duration = Duration::from_millis(1);

type Arrivals = Arc<Mutex<Vec<(Duration, String)>>>;

/// An upstream that records (time since `start`, request path) and answers with `headers`
/// on every response.
fn upstream(
    start: Instant,
    headers: Vec<(&'static str, String)>,
) -> (
    impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future = impl Send> + Clone,
    Arrivals,
) {
    let arrivals: Arrivals = Arc::default();
    let recorded = arrivals.clone();
    let service = tower::service_fn(move |req: Request<()>| {
        recorded
            .lock()
            .unwrap()
            .push((Instant::now() - start, req.uri().path().to_owned()));
        let mut response = Response::new(());
        for (name, value) in &headers {
            response.headers_mut().insert(*name, value.parse().unwrap());
        }
        async move { Ok::<_, Infallible>(response) }
    });
    (service, arrivals)
}

fn times(arrivals: &Arrivals) -> Vec<Duration> {
    arrivals.lock().unwrap().iter().map(|(t, _)| *t).collect()
}

fn get(path: &str) -> Request<()> {
    Request::get(format!("http://api.example.com{path}"))
        .body(())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_burst_goes_at_once_then_one_request_per_interval() {
    let start = Instant::now();
    let (upstream, arrivals) = upstream(start, vec![]);
    let throttle = ThrottleLayer::new(10, Duration::from_secs(1)).burst(3);
    let stats = throttle.stats();
    let svc = ServiceBuilder::new().layer(throttle).service(upstream);

    let tasks: Vec<_> = (0..6)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/"))))
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    assert_eq!(
        times(&arrivals),
        vec![
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            100 * MS,
            200 * MS,
            300 * MS
        ]
    );
    assert_eq!(
        (stats.immediate(), stats.delayed(), stats.rejected()),
        (3, 3, 0)
    );
    assert_eq!(stats.waited(), 600 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_wait_over_max_wait_fails_at_once_and_takes_no_slot() {
    let start = Instant::now();
    let (upstream, arrivals) = upstream(start, vec![]);
    let mut svc = ServiceBuilder::new()
        .layer(ThrottleLayer::new(1, Duration::from_secs(1)).max_wait(500 * MS))
        .service(upstream);

    svc.ready().await.unwrap().call(get("/a")).await.unwrap();
    for _ in 0..3 {
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(get("/b"))
            .await
            .unwrap_err();
        assert!(err.is_throttled());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(err.upstream().map(|a| a.as_str()), Some("api.example.com"));
    }
    assert_eq!(Instant::now(), start, "rejected without waiting");
    // The rejections took nothing: a second later the next request goes at once.
    tokio::time::advance(Duration::from_secs(1)).await;
    svc.ready().await.unwrap().call(get("/c")).await.unwrap();
    assert_eq!(
        times(&arrivals),
        vec![Duration::ZERO, Duration::from_secs(1)]
    );
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order() {
    let start = Instant::now();
    let (upstream, arrivals) = upstream(start, vec![]);
    let mut svc = ServiceBuilder::new()
        .layer(ThrottleLayer::new(1, Duration::from_secs(1)))
        .service(upstream);

    // Slots are taken in `call`, in this order; the futures are then run in reverse.
    let mut futures = Vec::new();
    for i in 0..8 {
        futures.push(svc.ready().await.unwrap().call(get(&format!("/{i}"))));
    }
    let tasks: Vec<_> = futures.into_iter().rev().map(tokio::spawn).collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    let order: Vec<String> = arrivals
        .lock()
        .unwrap()
        .iter()
        .map(|(_, p)| p.clone())
        .collect();
    let expected: Vec<String> = (0..8).map(|i| format!("/{i}")).collect();
    assert_eq!(order, expected);
    let expected_times: Vec<Duration> = (0..8).map(Duration::from_secs).collect();
    assert_eq!(times(&arrivals), expected_times);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_gives_its_slot_back_and_wedges_nobody() {
    let start = Instant::now();
    let (upstream, arrivals) = upstream(start, vec![]);
    let mut svc = ServiceBuilder::new()
        .layer(ThrottleLayer::new(1, Duration::from_secs(1)))
        .service(upstream);

    svc.ready()
        .await
        .unwrap()
        .call(get("/first"))
        .await
        .unwrap();
    // Reserves the slot at 1 s, then gives up.
    let cancelled = svc.ready().await.unwrap().call(get("/cancelled"));
    drop(cancelled);
    // The slot at 1 s is free again.
    let next = svc.ready().await.unwrap().call(get("/next"));
    // A waiter in the middle of the queue is dropped: the ones after it still go.
    let middle = svc.ready().await.unwrap().call(get("/middle"));
    let last = svc.ready().await.unwrap().call(get("/last"));
    drop(middle);
    next.await.unwrap();
    last.await.unwrap();

    let seen: Vec<(Duration, String)> = arrivals.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (Duration::ZERO, "/first".to_owned()),
            (Duration::from_secs(1), "/next".to_owned()),
            // The middle slot (2 s) could not be given back, since /last had reserved after
            // it: it stays used, and /last keeps its own slot.
            (Duration::from_secs(3), "/last".to_owned()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn partitions_have_their_own_buckets_and_idle_ones_are_evicted() {
    let start = Instant::now();
    let (upstream, arrivals) = upstream(start, vec![]);
    let svc = ServiceBuilder::new()
        .layer(
            ThrottleLayer::new(1, Duration::from_secs(1))
                .store(LocalStore::new().max_partitions(2))
                .partition(ByAuthority),
        )
        .service(upstream);
    let request = |host: &str| Request::get(format!("http://{host}/")).body(()).unwrap();

    // Two hosts: each has a bucket of its own, so both go at once.
    svc.clone().oneshot(request("a.example")).await.unwrap();
    svc.clone().oneshot(request("b.example")).await.unwrap();
    assert_eq!(times(&arrivals), vec![Duration::ZERO, Duration::ZERO]);

    // Once both buckets are idle (full again), a third host evicts them rather than growing
    // the map past its cap.
    tokio::time::advance(Duration::from_secs(2)).await;
    svc.clone().oneshot(request("c.example")).await.unwrap();
    svc.clone().oneshot(request("d.example")).await.unwrap();
    assert_eq!(
        times(&arrivals)[2..],
        [Duration::from_secs(2), Duration::from_secs(2)]
    );
}

#[tokio::test(start_paused = true)]
async fn the_servers_remaining_and_reset_cap_what_is_sent_before_the_reset() {
    let start = Instant::now();
    // Locally 100 per second; the server says 12 left, reset in 40 s, on every response.
    let (upstream, arrivals) = upstream(
        start,
        vec![
            ("ratelimit-limit", "1000".to_owned()),
            ("ratelimit-remaining", "12".to_owned()),
            ("ratelimit-reset", "40".to_owned()),
        ],
    );
    let throttle =
        ThrottleLayer::new(100, Duration::from_secs(1)).max_wait(Duration::from_secs(60));
    let stats = throttle.stats();
    let svc = ServiceBuilder::new().layer(throttle).service(upstream);

    // The first response tells the view; then 30 requests, one after another.
    svc.clone().oneshot(get("/probe")).await.unwrap();
    for _ in 0..30 {
        svc.clone().oneshot(get("/")).await.unwrap();
    }

    let sent = times(&arrivals);
    let before_reset = sent[1..]
        .iter()
        .filter(|t| **t < Duration::from_secs(40))
        .count();
    assert!(
        before_reset <= 12,
        "{before_reset} sent before the reset: {sent:?}"
    );
    assert!(stats.adjustments() >= 1);
}

#[tokio::test(start_paused = true)]
async fn remaining_zero_holds_everything_until_the_reset() {
    let start = Instant::now();
    let (upstream, arrivals) = upstream(
        start,
        vec![
            ("x-ratelimit-remaining", "0".to_owned()),
            ("x-ratelimit-reset", "30".to_owned()),
        ],
    );
    let svc = ServiceBuilder::new()
        .layer(ThrottleLayer::new(100, Duration::from_secs(1)).max_wait(Duration::from_secs(60)))
        .service(upstream);
    svc.clone().oneshot(get("/")).await.unwrap();
    svc.clone().oneshot(get("/")).await.unwrap();
    assert!(
        times(&arrivals)[1] >= Duration::from_secs(30),
        "{:?}",
        times(&arrivals)
    );
}

#[tokio::test(start_paused = true)]
async fn the_servers_view_never_makes_the_bucket_faster() {
    let start = Instant::now();
    // Locally 1 per second; the server claims plenty left.
    let (upstream, arrivals) = upstream(
        start,
        vec![
            ("ratelimit-remaining", "5000".to_owned()),
            ("ratelimit-reset", "1".to_owned()),
        ],
    );
    let svc = ServiceBuilder::new()
        .layer(ThrottleLayer::new(1, Duration::from_secs(1)).burst(1))
        .service(upstream);
    for _ in 0..4 {
        svc.clone().oneshot(get("/")).await.unwrap();
    }
    assert_eq!(
        times(&arrivals),
        vec![
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(3)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_with_a_wait_stops_the_bucket_until_then() {
    let start = Instant::now();
    let arrivals: Arrivals = Arc::default();
    let recorded = arrivals.clone();
    let upstream = tower::service_fn(move |req: Request<()>| {
        let n = {
            let mut seen = recorded.lock().unwrap();
            seen.push((Instant::now() - start, req.uri().path().to_owned()));
            seen.len()
        };
        async move {
            let mut response = Response::new(());
            if n == 1 {
                *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                response
                    .headers_mut()
                    .insert("retry-after", "20".parse().unwrap());
            }
            Ok::<_, Infallible>(response)
        }
    });
    let svc = ServiceBuilder::new()
        .layer(ThrottleLayer::new(100, Duration::from_secs(1)).max_wait(Duration::from_secs(60)))
        .service(upstream);
    assert_eq!(svc.clone().oneshot(get("/")).await.unwrap().status(), 429);
    svc.clone().oneshot(get("/")).await.unwrap();
    assert!(
        times(&arrivals)[1] >= Duration::from_secs(20),
        "{:?}",
        times(&arrivals)
    );
}

#[test]
fn zero_rates_are_typed_errors() {
    assert!(ThrottleLayer::try_new(0, Duration::from_secs(1)).is_err());
    assert!(ThrottleLayer::try_new(1, Duration::ZERO).is_err());
    assert!(ThrottleLayer::try_new(1, Duration::from_secs(1)).is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_period_of_duration_max_holds_the_second_request_instead_of_letting_all_through() {
    let start = Instant::now();
    let (upstream, arrivals) = upstream(start, vec![]);
    // One slot per Duration::MAX, waiting as long as it takes. (A saturated interval once
    // made the burst's tolerance as large as the arrival time, and every request went at once.)
    let throttle = ThrottleLayer::new(1, Duration::MAX)
        .burst(1)
        .max_wait(Duration::MAX);
    let stats = throttle.stats();
    let svc = ServiceBuilder::new().layer(throttle).service(upstream);
    svc.clone().oneshot(get("/first")).await.unwrap();
    // The second waits for centuries: still waiting after a simulated hour, then dropped.
    let second = tokio::time::timeout(Duration::from_secs(3600), svc.clone().oneshot(get("/")));
    assert!(second.await.is_err(), "still waiting");
    assert_eq!(stats.delayed(), 1);
    assert!(stats.waited() > Duration::from_secs(50 * 365 * 24 * 3600));
    assert_eq!(times(&arrivals).len(), 1);

    // The same quota with no wait allowed: refused at once, with the wait it would take.
    let (upstream, _) = self::upstream(start, vec![]);
    let svc = ServiceBuilder::new()
        .layer(ThrottleLayer::new(1, Duration::MAX).max_wait(Duration::ZERO))
        .service(upstream);
    svc.clone().oneshot(get("/")).await.unwrap();
    let err = svc.clone().oneshot(get("/")).await.unwrap_err();
    assert!(err.is_throttled());
    assert!(err.retry_after().unwrap() > Duration::from_secs(50 * 365 * 24 * 3600));
}

#[tokio::test(start_paused = true)]
async fn a_pause_of_duration_max_from_a_store_caller_is_bounded_not_a_panic() {
    use tower_outbound::throttle::{Acquire, BucketStore, Decision, Quota};
    let store = LocalStore::new();
    let quota = Quota::new(10, Duration::from_secs(1)).unwrap();
    store.adopt(None, &quota, 0, Duration::MAX);
    store.adopt(None, &quota, u64::MAX, Duration::MAX);
    let Acquire::Ready(Ok(decision)) = store.acquire(None, &quota, Duration::from_secs(1)) else {
        panic!("the local store decides at once");
    };
    assert!(matches!(decision, Decision::Reject { wait } if wait > Duration::from_secs(3600)));
    let Acquire::Ready(Ok(decision)) = store.acquire(None, &quota, Duration::MAX) else {
        panic!("the local store decides at once");
    };
    assert!(matches!(decision, Decision::Wait { .. }));
}

#[test]
fn a_zero_burst_is_raised_to_one_and_a_huge_one_is_kept() {
    let quota = ThrottleLayer::new(5, Duration::from_secs(1))
        .burst(0)
        .quota();
    assert_eq!(quota.burst(), 1);
    let quota = ThrottleLayer::new(5, Duration::from_secs(1))
        .burst(u32::MAX)
        .quota();
    assert_eq!(quota.burst(), u32::MAX);
    assert!(
        tower_outbound::throttle::Quota::new(5, Duration::from_secs(1))
            .unwrap()
            .with_burst(0)
            .is_err()
    );
}
