//! The circuit breaker's state machine, on tokio's paused clock, and under many tasks.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_outbound::circuit::{StateChange, Window};
use tower_outbound::classify::{Attempt, Classify, DefaultClassifier, Outcome};
use tower_outbound::partition::{ByAuthority, PartitionKey};
use tower_outbound::{CircuitBreakerLayer, CircuitState};

/// An upstream whose status can be changed, that counts calls and the most calls in flight at
/// once, and that takes `delay` to answer.
#[derive(Clone, Default)]
struct Upstream {
    status: Arc<AtomicU16>,
    calls: Arc<AtomicU32>,
    in_flight: Arc<AtomicU32>,
    max_in_flight: Arc<AtomicU32>,
    delay_ms: Arc<AtomicU64>,
}

impl Upstream {
    fn new(status: u16) -> Self {
        let upstream = Upstream::default();
        upstream.status.store(status, Ordering::SeqCst);
        upstream
    }

    fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<()>,
        Response = Response<()>,
        Error = Infallible,
        Future = impl std::future::Future<Output = Result<Response<()>, Infallible>> + Send,
    > + Clone
           + Send {
        let this = self.clone();
        tower::service_fn(move |_req: Request<()>| {
            let this = this.clone();
            async move {
                this.calls.fetch_add(1, Ordering::SeqCst);
                let now = this.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                this.max_in_flight.fetch_max(now, Ordering::SeqCst);
                let delay = this.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                this.in_flight.fetch_sub(1, Ordering::SeqCst);
                let status = StatusCode::from_u16(this.status.load(Ordering::SeqCst)).unwrap();
                Ok(Response::builder().status(status).body(()).unwrap())
            }
        })
    }
}

fn get() -> Request<()> {
    Request::get("http://api.example.com/").body(()).unwrap()
}

fn small() -> CircuitBreakerLayer {
    CircuitBreakerLayer::new()
        .window(Window::Count(10))
        .minimum_calls(5)
        .failure_rate_threshold(0.5)
        .open_duration(Duration::from_secs(10))
        .half_open_probes(2)
}

#[tokio::test(start_paused = true)]
async fn opens_only_after_minimum_calls_then_fails_fast_without_calling() {
    let upstream = Upstream::new(500);
    let breaker = small();
    let stats = breaker.stats();
    let svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(upstream.service());

    for _ in 0..4 {
        svc.clone().oneshot(get()).await.unwrap();
        assert_eq!(
            breaker.state(),
            CircuitState::Closed,
            "fewer than minimum_calls"
        );
    }
    svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(breaker.state(), CircuitState::Open);

    for _ in 0..20 {
        let err = svc.clone().oneshot(get()).await.unwrap_err();
        assert!(err.is_circuit_open());
        assert_eq!(err.upstream().map(|a| a.as_str()), Some("api.example.com"));
    }
    assert_eq!(
        upstream.calls(),
        5,
        "an open circuit does not touch the upstream"
    );
    assert_eq!(
        (stats.permitted(), stats.rejected(), stats.times_opened()),
        (5, 20, 1)
    );
    let err = svc.clone().oneshot(get()).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(10)));
    assert!(err
        .to_string()
        .starts_with("circuit open for upstream api.example.com; next probe in 10s"));
}

#[tokio::test(start_paused = true)]
async fn half_open_probes_close_the_circuit_when_they_all_succeed() {
    let upstream = Upstream::new(503);
    let breaker = small();
    let svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(upstream.service());
    for _ in 0..5 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    assert_eq!(breaker.state(), CircuitState::Open);

    upstream.set(200);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
    svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(breaker.state(), CircuitState::HalfOpen, "one probe of two");
    svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(breaker.state(), CircuitState::Closed);
    // The window starts afresh: four failures are not enough to reopen.
    upstream.set(503);
    for _ in 0..4 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_and_the_open_time_can_grow_up_to_a_cap() {
    let upstream = Upstream::new(502);
    let breaker = small().open_backoff(2.0, Duration::from_secs(25));
    let svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(upstream.service());
    for _ in 0..5 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    let mut opens = Vec::new();
    for _ in 0..3 {
        let err = svc.clone().oneshot(get()).await.unwrap_err();
        opens.push(err.retry_after().unwrap());
        tokio::time::advance(err.retry_after().unwrap()).await;
        // The probe fails: open again, for longer.
        svc.clone().oneshot(get()).await.unwrap();
        assert_eq!(breaker.state(), CircuitState::Open);
    }
    assert_eq!(
        opens,
        vec![
            Duration::from_secs(10),
            Duration::from_secs(20),
            Duration::from_secs(25)
        ]
    );

    // Recovery, then a trip at once: a flapping upstream keeps the long open time.
    upstream.set(200);
    let wait = svc.clone().oneshot(get()).await.unwrap_err().retry_after();
    tokio::time::advance(wait.unwrap()).await;
    svc.clone().oneshot(get()).await.unwrap();
    svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(breaker.state(), CircuitState::Closed);
    upstream.set(502);
    for _ in 0..5 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    let err = svc.clone().oneshot(get()).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(25)));

    // Closed for the cap's length: the next trip opens for the first open time again.
    upstream.set(200);
    tokio::time::advance(err.retry_after().unwrap()).await;
    svc.clone().oneshot(get()).await.unwrap();
    svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(breaker.state(), CircuitState::Closed);
    tokio::time::advance(Duration::from_secs(25)).await;
    upstream.set(502);
    for _ in 0..5 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    let err = svc.clone().oneshot(get()).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(10)));
}

#[tokio::test(start_paused = true)]
async fn at_most_the_configured_probes_go_at_once() {
    let upstream = Upstream::new(500);
    let breaker = small().half_open_probes(2);
    let svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(upstream.service());
    for _ in 0..5 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    upstream.set(200);
    upstream.delay_ms.store(1_000, Ordering::SeqCst);
    upstream.max_in_flight.store(0, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(10)).await;

    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(svc.clone().oneshot(get())))
        .collect();
    let mut passed = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => passed += 1,
            Err(err) => {
                assert!(err.is_circuit_open());
                assert_eq!(err.retry_after(), Some(Duration::ZERO));
                refused += 1;
            }
        }
    }
    assert_eq!((passed, refused), (2, 8));
    assert_eq!(upstream.max_in_flight.load(Ordering::SeqCst), 2);
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_gives_its_permit_back() {
    let upstream = Upstream::new(500);
    let breaker = small().half_open_probes(1);
    let mut svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(upstream.service());
    for _ in 0..5 {
        svc.ready().await.unwrap().call(get()).await.unwrap();
    }
    upstream.set(200);
    upstream.delay_ms.store(1_000, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(10)).await;

    // The only probe is taken, then its caller gives up.
    let probe = svc.ready().await.unwrap().call(get());
    let err = svc.ready().await.unwrap().call(get()).await.unwrap_err();
    assert!(err.is_circuit_open(), "the probe permit is out");
    drop(probe);

    // The permit came back: the next call is the probe, and it closes the circuit.
    svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn rate_limits_and_client_errors_do_not_open_it_unless_the_classifier_says_so() {
    for status in [429, 400, 404, 422] {
        let upstream = Upstream::new(status);
        let breaker = small();
        let svc = ServiceBuilder::new()
            .layer(breaker.clone())
            .service(upstream.service());
        for _ in 0..20 {
            svc.clone().oneshot(get()).await.unwrap();
        }
        assert_eq!(breaker.state(), CircuitState::Closed, "status {status}");
    }

    let upstream = Upstream::new(429);
    let breaker = small().classify(|attempt: Attempt<'_>| match attempt {
        Attempt::Response { status, .. } if status == StatusCode::TOO_MANY_REQUESTS => {
            Outcome::Transient
        }
        other => DefaultClassifier.classify(other),
    });
    let svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(upstream.service());
    for _ in 0..5 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    assert_eq!(breaker.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_time_window_forgets_old_failures() {
    let upstream = Upstream::new(500);
    let breaker = CircuitBreakerLayer::new()
        .window(Window::Time {
            length: Duration::from_secs(60),
            buckets: 6,
        })
        .minimum_calls(6)
        .failure_rate_threshold(0.5);
    let svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(upstream.service());
    for _ in 0..5 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    // A minute later those failures are out of the window.
    tokio::time::advance(Duration::from_secs(61)).await;
    upstream.set(200);
    for _ in 0..5 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    upstream.set(500);
    svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(
        breaker.state(),
        CircuitState::Closed,
        "1 failure in 6 recent calls"
    );
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_the_circuit_when_the_rule_is_on() {
    let upstream = Upstream::new(200);
    upstream.delay_ms.store(3_000, Ordering::SeqCst);
    let breaker = small().slow_call(Duration::from_secs(2), 0.8);
    let svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(upstream.service());
    for _ in 0..5 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    assert_eq!(breaker.state(), CircuitState::Open);

    // Without the rule, slow successes are fine.
    let breaker = small();
    let svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(upstream.service());
    for _ in 0..5 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_listener_sees_every_change_in_order() {
    let upstream = Upstream::new(500);
    let changes: Arc<Mutex<Vec<(CircuitState, CircuitState)>>> = Arc::default();
    let seen = changes.clone();
    let breaker = small().on_state_change(move |change: &StateChange| {
        seen.lock().unwrap().push((change.from, change.to));
    });
    let svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(upstream.service());
    for _ in 0..5 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    svc.clone().oneshot(get()).await.unwrap(); // probe fails
                                               // The default open backoff doubles the open time after a failed probe.
    tokio::time::advance(Duration::from_secs(20)).await;
    upstream.set(200);
    svc.clone().oneshot(get()).await.unwrap();
    svc.clone().oneshot(get()).await.unwrap();

    use CircuitState::*;
    assert_eq!(
        *changes.lock().unwrap(),
        vec![
            (Closed, Open),
            (Open, HalfOpen),
            (HalfOpen, Open),
            (Open, HalfOpen),
            (HalfOpen, Closed)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn per_upstream_breakers_are_independent_and_bounded() {
    let upstream = Upstream::new(500);
    let breaker = small().partition(ByAuthority).max_partitions(2);
    let svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(upstream.service());
    let to = |host: &str| Request::get(format!("http://{host}/")).body(()).unwrap();
    for _ in 0..5 {
        svc.clone().oneshot(to("down.example")).await.unwrap();
    }
    assert_eq!(
        breaker.state_of(&PartitionKey::from("down.example")),
        CircuitState::Open
    );
    assert!(svc
        .clone()
        .oneshot(to("down.example"))
        .await
        .unwrap_err()
        .is_circuit_open());
    upstream.set(200);
    svc.clone().oneshot(to("up.example")).await.unwrap();
    assert_eq!(
        breaker.state_of(&PartitionKey::from("up.example")),
        CircuitState::Closed
    );
    // A third host at the cap: the idle "up" breaker is dropped for it, the open one is kept.
    svc.clone().oneshot(to("third.example")).await.unwrap();
    assert_eq!(breaker.partitions(), 2);
    assert_eq!(
        breaker.state_of(&PartitionKey::from("down.example")),
        CircuitState::Open
    );
}

/// Many tasks on two threads against an upstream that fails, then recovers: the invariants
/// hold throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_under_many_tasks() {
    let upstream = Upstream::new(500);
    let breaker = CircuitBreakerLayer::new()
        .minimum_calls(10)
        .open_duration(Duration::from_millis(2))
        .half_open_probes(3);
    let stats = breaker.stats();
    let svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(upstream.service());
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let svc = svc.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    if t == 0 && i == 100 {
                        upstream.set(200);
                    }
                    let _ = svc.clone().oneshot(get()).await;
                    if i % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(stats.permitted() + stats.rejected(), 64 * 200);
    assert_eq!(u64::from(upstream.calls()), stats.permitted());
    assert_eq!(stats.failures() + stats.successes(), stats.permitted());
    assert!(stats.times_opened() >= 1);
    assert!(stats.rejected() > 0, "the open circuit spared the upstream");
}

/// A breaker that holds calls for up to `patience` while its circuit is open.
fn patient(patience: Duration) -> CircuitBreakerLayer {
    small().max_wait(patience)
}

#[tokio::test(start_paused = true)]
async fn held_calls_ride_out_an_outage_with_the_probes_bounded_and_the_release_paced() {
    let upstream = Upstream::new(503);
    let breaker = patient(Duration::from_secs(60));
    let svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(upstream.service());
    for _ in 0..5 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    assert_eq!(breaker.state(), CircuitState::Open);

    // 20 calls arrive while it is open; the upstream comes back, answering in 100 ms.
    let start = tokio::time::Instant::now();
    let calls: Vec<_> = (0..20)
        .map(|_| tokio::spawn(svc.clone().oneshot(get())))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(breaker.held(), 20);
    upstream.set(200);
    upstream.delay_ms.store(100, Ordering::SeqCst);
    upstream.max_in_flight.store(0, Ordering::SeqCst);
    let before = upstream.calls();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    // Two probes (the setting), then 2, 4, 8 and the last 4: never all at once.
    assert_eq!(upstream.calls() - before, 20, "each call sent once");
    assert_eq!(upstream.max_in_flight.load(Ordering::SeqCst), 8);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(10) + Duration::from_millis(500)
    );
    let stats = breaker.stats();
    assert_eq!((stats.held(), stats.rejected()), (20, 0));
    assert_eq!(breaker.held(), 0);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_stays_the_default() {
    let upstream = Upstream::new(503);
    let breaker = small();
    let svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(upstream.service());
    for _ in 0..5 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    let start = tokio::time::Instant::now();
    let err = svc.clone().oneshot(get()).await.unwrap_err();
    assert!(err.is_circuit_open());
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(breaker.stats().held(), 0);
}

#[tokio::test(start_paused = true)]
async fn patience_bounds_the_wait_and_ends_in_the_breakers_error() {
    let upstream = Upstream::new(503);
    // Open for 10 s, then 20 s after the failed probe: a 25 s patience covers the first probe,
    // not the second.
    let breaker = patient(Duration::from_secs(25));
    let svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(upstream.service());
    for _ in 0..5 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    // Answers take 100 ms: both probes are out before the first fails.
    upstream.delay_ms.store(100, Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(svc.clone().oneshot(get())))
        .collect();
    let mut probes = 0;
    let mut refused = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(response) => {
                assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
                probes += 1;
            }
            Err(err) => refused.push(err),
        }
    }
    // The two probes failed at 10.1 s; the others learned then that the next probe is 20 s
    // away, past their patience.
    assert_eq!(probes, 2);
    assert_eq!(refused.len(), 2);
    for err in &refused {
        assert!(err.is_circuit_open(), "{err}");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(20)));
        assert_eq!(err.upstream().map(|a| a.as_str()), Some("api.example.com"));
    }
    assert_eq!(start.elapsed(), Duration::from_millis(10_100));
    assert_eq!(breaker.stats().rejected(), 2);
    assert_eq!(breaker.held(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_held_call_dropped_by_its_caller_frees_its_place() {
    let upstream = Upstream::new(503);
    let breaker = patient(Duration::from_secs(60)).half_open_probes(1);
    let svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(upstream.service());
    for _ in 0..5 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    let gives_up = tokio::spawn(svc.clone().oneshot(get()));
    let waits = tokio::spawn(svc.clone().oneshot(get()));
    tokio::task::yield_now().await;
    assert_eq!(breaker.held(), 2);
    gives_up.abort();
    assert!(gives_up.await.unwrap_err().is_cancelled());
    assert_eq!(breaker.held(), 1, "the dropped call left the line");

    // The one left is the probe at 10 s: nothing waits on the call that gave up.
    upstream.set(200);
    let start = tokio::time::Instant::now();
    assert_eq!(waits.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(upstream.calls(), 6);
}
