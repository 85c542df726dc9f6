//! The retry layer and the Retry-After gate, driven by in-memory services on tokio's paused
//! clock.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_outbound::body::ReplayBody;
use tower_outbound::error::Kind;
use tower_outbound::retry::Attempts;
use tower_outbound::{Error, Jitter, RetryAfterLayer, RetryLayer};

const MS: Duration = Duration::from_millis(1);

/// One scripted outcome of the in-memory upstream.
#[derive(Clone)]
enum Step {
    Status(u16, Vec<(&'static str, &'static str)>),
    Fail(std::io::ErrorKind),
    Error(Kind),
}

fn status(code: u16) -> Step {
    Step::Status(code, Vec::new())
}

#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    method: Method,
    body: Bytes,
    key: Option<String>,
}

/// An upstream that plays `script` (then answers 200) and records each request.
#[derive(Clone)]
struct Upstream {
    script: Arc<Mutex<VecDeque<Step>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    fn new(script: Vec<Step>) -> Self {
        Upstream {
            script: Arc::new(Mutex::new(script.into())),
            seen: Arc::default(),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn offsets(&self, start: Instant) -> Vec<Duration> {
        self.seen().iter().map(|s| s.at - start).collect()
    }
}

impl Service<Request<ReplayBody>> for Upstream {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let at = Instant::now();
            let method = req.method().clone();
            let key = req
                .headers()
                .get("idempotency-key")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = req.into_body().collect().await?.to_bytes();
            this.seen.lock().unwrap().push(Seen {
                at,
                method,
                body,
                key,
            });
            let step = this.script.lock().unwrap().pop_front();
            match step.unwrap_or_else(|| status(200)) {
                Step::Status(code, headers) => {
                    let mut response = Response::new(Full::new(Bytes::new()));
                    *response.status_mut() = StatusCode::from_u16(code).unwrap();
                    for (name, value) in headers {
                        response.headers_mut().insert(name, value.parse().unwrap());
                    }
                    Ok(response)
                }
                Step::Fail(kind) => Err(std::io::Error::new(kind, "scripted failure").into()),
                Step::Error(kind) => Err(Error::new(kind).into()),
            }
        })
    }
}

fn get() -> Request<Full<Bytes>> {
    Request::get("http://api.example.com/items")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A request as it reaches a layer inside the retry layer.
fn replay_get() -> Request<ReplayBody> {
    Request::get("http://api.example.com/items")
        .body(ReplayBody::from_bytes(Bytes::new()))
        .unwrap()
}

fn post(body: &'static str) -> Request<Full<Bytes>> {
    Request::post("http://api.example.com/items")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn no_jitter() -> RetryLayer {
    RetryLayer::new()
        .jitter(Jitter::None)
        .retry_after_jitter(Duration::ZERO)
}

async fn send<S>(svc: S, req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Error>,
{
    svc.oneshot(req).await
}

#[tokio::test(start_paused = true)]
async fn retries_503_with_exponential_backoff_then_returns_the_last_response() {
    let upstream = Upstream::new(vec![status(503), status(503), status(503), status(503)]);
    let layer = no_jitter();
    let stats = layer.stats();
    let svc = ServiceBuilder::new().layer(layer).service(upstream.clone());
    let start = Instant::now();

    let response = send(svc, get()).await.unwrap();

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        upstream.offsets(start),
        vec![Duration::ZERO, 200 * MS, 600 * MS, 1400 * MS]
    );
    let attempts = response.extensions().get::<Attempts>().unwrap();
    assert_eq!(attempts.count, 4);
    assert_eq!(attempts.waited, 1400 * MS);
    assert_eq!(attempts.retry_after, None);
    assert_eq!((stats.calls(), stats.retries(), stats.gave_up()), (1, 3, 1));
}

#[tokio::test(start_paused = true)]
async fn success_after_retry_is_counted_and_marked() {
    let upstream = Upstream::new(vec![status(502), status(504)]);
    let layer = RetryLayer::new().rng_seed(7);
    let stats = layer.stats();
    let svc = ServiceBuilder::new().layer(layer).service(upstream.clone());

    let response = send(svc, get()).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.extensions().get::<Attempts>().unwrap().count, 3);
    assert_eq!(stats.successes_after_retry(), 1);
    assert_eq!(stats.gave_up(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_first_attempt_success_carries_no_attempts_extension() {
    let upstream = Upstream::new(vec![]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new())
        .service(upstream.clone());
    let response = send(svc, get()).await.unwrap();
    assert!(response.extensions().get::<Attempts>().is_none());
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn client_errors_and_501_are_not_retried() {
    for code in [400, 401, 403, 404, 409, 422, 501] {
        let upstream = Upstream::new(vec![status(code)]);
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::new())
            .service(upstream.clone());
        let response = send(svc, get()).await.unwrap();
        assert_eq!(response.status().as_u16(), code);
        assert_eq!(upstream.seen().len(), 1, "status {code} was retried");
    }
}

#[tokio::test(start_paused = true)]
async fn every_default_retryable_status_is_retried() {
    for code in [408, 429, 500, 502, 503, 504] {
        let upstream = Upstream::new(vec![status(code)]);
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::new())
            .service(upstream.clone());
        let response = send(svc, get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "status {code}");
        assert_eq!(upstream.seen().len(), 2, "status {code}");
    }
}

#[tokio::test(start_paused = true)]
async fn post_is_retried_only_with_an_idempotency_key_or_an_explicit_opt_in() {
    // No key: sent once.
    let upstream = Upstream::new(vec![status(503)]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new())
        .service(upstream.clone());
    assert_eq!(send(svc, post("{}")).await.unwrap().status(), 503);
    assert_eq!(upstream.seen().len(), 1);

    // With a key: retried, the key and the body on every attempt.
    let upstream = Upstream::new(vec![status(503), status(500)]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new())
        .service(upstream.clone());
    let mut request = post(r#"{"amount":10}"#);
    request
        .headers_mut()
        .insert("idempotency-key", "k-1".parse().unwrap());
    assert_eq!(send(svc, request).await.unwrap().status(), 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.method, Method::POST);
        assert_eq!(s.key.as_deref(), Some("k-1"));
        assert_eq!(s.body, r#"{"amount":10}"#);
    }

    // Opted in: retried without a key.
    let upstream = Upstream::new(vec![status(503)]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new().retry_non_idempotent(true))
        .service(upstream.clone());
    assert_eq!(send(svc, post("{}")).await.unwrap().status(), 200);
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_is_waited_exactly_instead_of_backoff() {
    let upstream = Upstream::new(vec![Step::Status(429, vec![("retry-after", "3")])]);
    let svc = ServiceBuilder::new()
        .layer(no_jitter())
        .service(upstream.clone());
    let start = Instant::now();
    let response = send(svc, get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        upstream.offsets(start),
        vec![Duration::ZERO, Duration::from_secs(3)]
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_jitter_only_adds_and_stays_within_its_bound() {
    for seed in 0..20 {
        let upstream = Upstream::new(vec![Step::Status(503, vec![("retry-after", "2")])]);
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::new().rng_seed(seed))
            .service(upstream.clone());
        let start = Instant::now();
        send(svc, get()).await.unwrap();
        let waited = upstream.offsets(start)[1];
        assert!(
            waited >= Duration::from_secs(2) && waited <= Duration::from_millis(2250),
            "seed {seed}: waited {waited:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_reset_on_429_is_honored() {
    let upstream = Upstream::new(vec![Step::Status(
        429,
        vec![
            ("ratelimit-limit", "1000"),
            ("ratelimit-remaining", "0"),
            ("ratelimit-reset", "5"),
        ],
    )]);
    let svc = ServiceBuilder::new()
        .layer(no_jitter())
        .service(upstream.clone());
    let start = Instant::now();
    send(svc, get()).await.unwrap();
    assert_eq!(upstream.offsets(start)[1], Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_wait_over_max_retry_after_returns_at_once_with_the_wait_exposed() {
    let upstream = Upstream::new(vec![Step::Status(429, vec![("retry-after", "120")])]);
    let layer = RetryLayer::new();
    let stats = layer.stats();
    let svc = ServiceBuilder::new().layer(layer).service(upstream.clone());
    let start = Instant::now();
    let before = std::time::SystemTime::now();

    let response = send(svc, get()).await.unwrap();

    assert_eq!(Instant::now(), start, "no time was slept");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let attempts = response.extensions().get::<Attempts>().unwrap();
    assert_eq!(attempts.count, 1);
    let (wait, at) = attempts.retry_after.unwrap();
    assert_eq!(wait, Duration::from_secs(120));
    assert!(at >= before + Duration::from_secs(120));
    assert_eq!(upstream.seen().len(), 1);
    assert_eq!(stats.gave_up(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_total_wait_budget_is_never_overrun() {
    // Delays would be 400 ms, 800 ms: the second overruns a 1 s budget and is not started.
    let upstream = Upstream::new(vec![status(503), status(503), status(503)]);
    let svc = ServiceBuilder::new()
        .layer(
            no_jitter()
                .base_delay(400 * MS)
                .max_total_delay(Duration::from_secs(1)),
        )
        .service(upstream.clone());
    let start = Instant::now();
    let response = send(svc, get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.offsets(start), vec![Duration::ZERO, 400 * MS]);
    assert_eq!(Instant::now() - start, 400 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_server_wait_that_overruns_the_budget_is_returned_to_the_caller() {
    let upstream = Upstream::new(vec![Step::Status(503, vec![("retry-after", "30")])]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new().max_total_delay(Duration::from_secs(10)))
        .service(upstream.clone());
    let response = send(svc, get()).await.unwrap();
    let attempts = response.extensions().get::<Attempts>().unwrap();
    assert_eq!(attempts.retry_after.unwrap().0, Duration::from_secs(30));
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn transport_errors_are_retried_then_returned_typed_with_attempts_and_cause() {
    let refused = Step::Fail(std::io::ErrorKind::ConnectionRefused);
    let upstream = Upstream::new(vec![
        refused.clone(),
        refused.clone(),
        refused.clone(),
        refused,
    ]);
    let svc = ServiceBuilder::new()
        .layer(no_jitter())
        .service(upstream.clone());

    let err = send(svc, get()).await.unwrap_err();

    assert!(err.is_transport());
    assert_eq!(err.attempts(), 4);
    assert_eq!(err.waited(), 1400 * MS);
    assert_eq!(err.upstream().map(|a| a.as_str()), Some("api.example.com"));
    let cause = std::error::Error::source(&err).unwrap();
    let io = cause.downcast_ref::<std::io::Error>().unwrap();
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(upstream.seen().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn errors_that_refuse_the_call_are_not_retried() {
    let upstream = Upstream::new(vec![Step::Error(Kind::CircuitOpen {
        retry_in: Duration::from_secs(5),
    })]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new())
        .service(upstream.clone());
    let err = send(svc, get()).await.unwrap_err();
    assert!(err.is_circuit_open());
    assert_eq!(err.attempts(), 1);
    assert_eq!(upstream.seen().len(), 1);
}

/// A body that yields its chunks one at a time and cannot be cloned.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
    }
}

fn streaming_put(chunks: &[&'static str]) -> Request<Chunks> {
    let chunks = chunks.iter().map(|c| Bytes::from_static(c.as_bytes()));
    Request::put("http://api.example.com/blob")
        .body(Chunks(chunks.collect()))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_is_buffered_and_replayed_on_every_attempt() {
    let upstream = Upstream::new(vec![status(503), status(503)]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new())
        .service(upstream.clone());
    let response = svc
        .oneshot(streaming_put(&["hello ", "streaming ", "world"]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.body == "hello streaming world"));
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_limit_is_sent_once_whole_and_not_retried() {
    let upstream = Upstream::new(vec![status(503)]);
    let layer = RetryLayer::new().max_buffered_body(8);
    let stats = layer.stats();
    let svc = ServiceBuilder::new().layer(layer).service(upstream.clone());
    let response = svc
        .oneshot(streaming_put(&["0123456", "789abcdef", "ghij"]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let seen = upstream.seen();
    assert_eq!(
        seen.len(),
        1,
        "a body that cannot be replayed is not retried"
    );
    assert_eq!(seen[0].body, "0123456789abcdefghij", "never truncated");
    assert_eq!(stats.gave_up(), 1);
}

#[tokio::test(start_paused = true)]
async fn max_attempts_one_turns_retrying_off() {
    let upstream = Upstream::new(vec![status(503)]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new().max_attempts(0))
        .service(upstream.clone());
    assert_eq!(send(svc, get()).await.unwrap().status(), 503);
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn seeded_full_jitter_gives_the_same_delays_and_stays_under_the_ceiling() {
    let run = |seed| async move {
        let upstream = Upstream::new(vec![status(503), status(503), status(503)]);
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::new().rng_seed(seed))
            .service(upstream.clone());
        let start = Instant::now();
        send(svc, get()).await.unwrap();
        upstream.offsets(start)
    };
    let a = run(11).await;
    let b = run(11).await;
    assert_eq!(a, b);
    let gaps: Vec<Duration> = a.windows(2).map(|w| w[1] - w[0]).collect();
    for (retry, gap) in gaps.iter().enumerate() {
        assert!(*gap <= 200 * MS * (1 << retry), "retry {retry}: {gap:?}");
    }
}

// ---- the gate ----

#[tokio::test(start_paused = true)]
async fn the_gate_holds_later_requests_until_the_server_named_time() {
    let upstream = Upstream::new(vec![Step::Status(429, vec![("retry-after", "10")])]);
    let gate = RetryAfterLayer::new();
    let svc = ServiceBuilder::new()
        .layer(gate.clone())
        .service(upstream.clone());
    let start = Instant::now();

    let first = svc.clone().oneshot(replay_get()).await.unwrap();
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(gate.closed_for(), Some(Duration::from_secs(10)));

    // A clone of the service shares the gate.
    let second = svc.clone().oneshot(replay_get()).await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(
        upstream.offsets(start),
        vec![Duration::ZERO, Duration::from_secs(10)]
    );
    assert_eq!(gate.stats().delayed(), 1);
    assert_eq!(gate.closed_for(), None);
}

#[tokio::test(start_paused = true)]
async fn the_gate_fails_fast_past_its_max_wait_without_calling_the_upstream() {
    let upstream = Upstream::new(vec![Step::Status(503, vec![("retry-after", "300")])]);
    let gate = RetryAfterLayer::new().max_wait(Duration::from_secs(30));
    let svc = ServiceBuilder::new()
        .layer(gate.clone())
        .service(upstream.clone());
    svc.clone().oneshot(replay_get()).await.unwrap();
    tokio::time::advance(Duration::from_secs(100)).await;

    let err = svc.clone().oneshot(replay_get()).await.unwrap_err();

    assert!(err.is_rate_limited());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(200)));
    assert!(err.retry_at().is_some());
    assert_eq!(err.upstream().map(|a| a.as_str()), Some("api.example.com"));
    assert_eq!(upstream.seen().len(), 1);
    assert_eq!(gate.stats().refused(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_used_up_quota_closes_the_gate_before_any_429() {
    let upstream = Upstream::new(vec![Step::Status(
        200,
        vec![
            ("x-ratelimit-limit", "100"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "7"),
        ],
    )]);
    let svc = ServiceBuilder::new()
        .layer(RetryAfterLayer::new())
        .service(upstream.clone());
    let start = Instant::now();
    svc.clone().oneshot(replay_get()).await.unwrap();
    svc.clone().oneshot(replay_get()).await.unwrap();
    assert_eq!(
        upstream.offsets(start),
        vec![Duration::ZERO, Duration::from_secs(7)]
    );
}

#[tokio::test(start_paused = true)]
async fn responses_without_a_pause_leave_the_gate_open() {
    let upstream = Upstream::new(vec![
        Step::Status(503, vec![]),
        Step::Status(
            200,
            vec![("ratelimit-remaining", "5"), ("ratelimit-reset", "60")],
        ),
    ]);
    let gate = RetryAfterLayer::new();
    let svc = ServiceBuilder::new()
        .layer(gate.clone())
        .service(upstream.clone());
    for _ in 0..3 {
        svc.clone().oneshot(replay_get()).await.unwrap();
    }
    assert_eq!(gate.closed_for(), None);
    assert_eq!(gate.stats().times_closed(), 0);
}

#[tokio::test(start_paused = true)]
async fn retry_outside_a_fail_fast_gate_sleeps_the_gate_wait_and_succeeds() {
    let upstream = Upstream::new(vec![Step::Status(429, vec![("retry-after", "4")])]);
    let svc = ServiceBuilder::new()
        .layer(no_jitter())
        .layer(RetryAfterLayer::new().max_wait(Duration::ZERO))
        .service(upstream.clone());
    let start = Instant::now();
    let response = svc.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        upstream.offsets(start),
        vec![Duration::ZERO, Duration::from_secs(4)]
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_behind_one_gate_do_not_stampede() {
    let upstream = Upstream::new(vec![Step::Status(429, vec![("retry-after", "5")])]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new().rng_seed(3))
        .layer(RetryAfterLayer::new())
        .service(upstream.clone());
    let start = Instant::now();
    let first = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(svc.clone().oneshot(get())))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    // One 429, then every request after it arrived no earlier than the named time.
    let offsets = upstream.offsets(start);
    assert_eq!(offsets.len(), 12);
    assert!(offsets[1..].iter().all(|o| *o >= Duration::from_secs(5)));
}
