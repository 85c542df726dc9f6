//! The foundation stack (idempotency → retry → Retry-After gate) around a hyper-util client,
//! against a real hyper server on 127.0.0.1 that scripts its replies and records every request.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{Reply, ScriptedServer};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_outbound::body::ReplayBody;
use tower_outbound::retry::Attempts;
use tower_outbound::{
    CircuitBreakerLayer, CircuitState, DeadLetterLayer, Error, IdempotencyKeyLayer, MemorySink,
    Outbound, RetryAfterLayer, RetryLayer,
};

type Response = http::Response<hyper::body::Incoming>;

fn stack(
    retry: RetryLayer,
    gate: RetryAfterLayer,
) -> impl Service<Request<Full<Bytes>>, Response = Response, Error = Error> + Clone {
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    ServiceBuilder::new()
        .layer(IdempotencyKeyLayer::new())
        .layer(retry)
        .layer(gate)
        .service(client)
}

fn post(url: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn every_attempt_of_one_call_carries_the_same_key_and_body() {
    let server = ScriptedServer::start(vec![
        Reply::status(503),
        Reply::status(429).header("retry-after", "1"),
        Reply::status(201).body("created"),
    ])
    .await;
    let svc = stack(RetryLayer::new().rng_seed(1), RetryAfterLayer::new());

    let response = svc
        .oneshot(post(&server.url("/v1/charges"), r#"{"amount":42}"#))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.extensions().get::<Attempts>().unwrap().count, 3);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "created"
    );
    let received = server.received();
    assert_eq!(received.len(), 3);
    let key = received[0].headers.get("idempotency-key").unwrap();
    assert_eq!(key.len(), 36);
    for request in &received {
        assert_eq!(request.headers.get("idempotency-key"), Some(key));
        assert_eq!(request.body, r#"{"amount":42}"#);
        assert_eq!(request.uri.path(), "/v1/charges");
    }
    // The Retry-After of the second reply was honored: at least one second between them.
    assert!(received[2].at - received[1].at >= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn different_logical_calls_get_different_keys() {
    let server = ScriptedServer::start(vec![Reply::status(500)]).await;
    let svc = stack(RetryLayer::new().rng_seed(2), RetryAfterLayer::new());

    for _ in 0..3 {
        let response = svc
            .clone()
            .oneshot(post(&server.url("/v1/charges"), "{}"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    let keys: Vec<_> = server
        .received()
        .iter()
        .map(|r| r.headers.get("idempotency-key").unwrap().clone())
        .collect();
    // First call: 500 then 200 (two attempts, one key); then one attempt per call.
    assert_eq!(keys.len(), 4);
    assert_eq!(keys[0], keys[1]);
    assert_ne!(keys[1], keys[2]);
    assert_ne!(keys[2], keys[3]);
    assert_ne!(keys[1], keys[3]);
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_is_retried_and_returned_as_a_typed_transport_error() {
    // Take a free port and close it again, so connecting is refused.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let svc = stack(RetryLayer::new().rng_seed(3), RetryAfterLayer::new());
    let request = Request::get(format!("http://{addr}/health"))
        .body(Full::new(Bytes::new()))
        .unwrap();

    let err = svc.oneshot(request).await.unwrap_err();

    assert!(err.is_transport(), "{err:?}");
    assert_eq!(err.attempts(), 4);
    let cause = std::error::Error::source(&err).unwrap();
    let client_error = cause
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .unwrap();
    assert!(client_error.is_connect());
}

#[tokio::test(start_paused = true)]
async fn a_long_retry_after_stops_the_call_and_the_gate_spares_the_server() {
    let server = ScriptedServer::start(vec![Reply::status(429).header("retry-after", "600")]).await;
    let gate = RetryAfterLayer::new();
    let svc = stack(RetryLayer::new(), gate.clone());
    let start = Instant::now();

    let response = svc
        .clone()
        .oneshot(post(&server.url("/v1/events"), "[]"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let attempts = response.extensions().get::<Attempts>().unwrap();
    assert_eq!(attempts.retry_after.unwrap().0, Duration::from_secs(600));
    assert_eq!(Instant::now(), start);

    // The next call does not reach the server: the gate refuses it with the remaining wait.
    let err = svc
        .oneshot(post(&server.url("/v1/events"), "[]"))
        .await
        .unwrap_err();
    assert!(err.is_rate_limited());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(600)));
    assert_eq!(server.received().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_as_an_http_date_is_read_relative_to_the_server_date() {
    // The server's clock says 12:00:00 and asks to come back at 12:00:05, whatever the
    // client's wall clock says.
    let server = ScriptedServer::start(vec![Reply::status(503)
        .header("date", "Sun, 06 Nov 1994 12:00:00 GMT")
        .header("retry-after", "Sun, 06 Nov 1994 12:00:05 GMT")])
    .await;
    let svc = stack(
        RetryLayer::new().retry_after_jitter(Duration::ZERO),
        RetryAfterLayer::new(),
    );
    let response = svc
        .oneshot(
            Request::get(server.url("/items"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let received = server.received();
    assert_eq!(received[1].at - received[0].at, Duration::from_secs(5));
}

/// Calls an upstream that never answers through `stack` (a deadline of 30 s around attempts
/// that time out after 10 s), and returns the error, the time the call took and how many
/// attempts reached the upstream.
async fn hung_call<L>(stack: L) -> (tower_outbound::Error, Duration, usize)
where
    L: tower::Layer<tower::timeout::Timeout<Client<HttpConnector, ReplayBody>>>,
    L::Service:
        tower::Service<Request<Full<Bytes>>, Response = Response, Error = tower_outbound::Error>,
{
    let server = ScriptedServer::start(vec![
        Reply::hang(),
        Reply::hang(),
        Reply::hang(),
        Reply::hang(),
    ])
    .await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let svc = stack.layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(10)).layer(client));
    let start = Instant::now();
    let err = svc
        .oneshot(
            Request::get(server.url("/slow"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap_err();
    (err, Instant::now() - start, server.received().len())
}

#[tokio::test(start_paused = true)]
async fn a_hung_upstream_trips_the_attempt_timeout_and_then_the_call_deadline() {
    let stack = ServiceBuilder::new()
        .layer(tower_outbound::deadline::DeadlineLayer::new(
            Duration::from_secs(30),
        ))
        .layer(RetryLayer::new().rng_seed(4))
        .layer(RetryAfterLayer::new())
        .into_inner();
    let (err, took, attempts) = hung_call(stack).await;
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(took, Duration::from_secs(30), "the deadline ended the call");
    // Two attempts timed out after 10 s each and were retried; the third was cut by the deadline.
    assert_eq!(attempts, 3);
}

#[tokio::test(start_paused = true)]
async fn the_retry_layers_own_deadline_ends_a_hung_call_without_a_deadline_layer() {
    let stack = RetryLayer::new()
        .rng_seed(4)
        .deadline(Some(Duration::from_secs(30)));
    let (err, took, attempts) = hung_call(stack).await;
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(took, Duration::from_secs(30));
    assert_eq!(attempts, 3, "the third attempt was cut by the deadline");
}

#[tokio::test(start_paused = true)]
async fn no_wait_is_started_that_would_overrun_the_deadline() {
    let server = ScriptedServer::start(vec![Reply::status(503).header("retry-after", "20")]).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let svc = ServiceBuilder::new()
        .layer(tower_outbound::deadline::DeadlineLayer::new(
            Duration::from_secs(10),
        ))
        .layer(RetryLayer::new())
        .service(client);
    let start = Instant::now();

    let response = svc
        .oneshot(
            Request::get(server.url("/busy"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(Instant::now(), start, "returned at once");
    let attempts = response.extensions().get::<Attempts>().unwrap();
    assert_eq!(attempts.retry_after.unwrap().0, Duration::from_secs(20));
    assert_eq!(server.received().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_earlier_deadline_in_the_request_wins_over_the_retry_layers_own() {
    let server = ScriptedServer::start(vec![Reply::hang()]).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let svc = ServiceBuilder::new()
        .layer(tower_outbound::deadline::DeadlineLayer::new(
            Duration::from_secs(3),
        ))
        .layer(RetryLayer::new().deadline(Some(Duration::from_secs(30))))
        .service(client);
    let start = Instant::now();

    let err = svc
        .oneshot(
            Request::get(server.url("/slow"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap_err();

    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(Instant::now() - start, Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn outbound_keeps_its_deadline_across_attempts_and_waits() {
    let server = ScriptedServer::start(vec![
        Reply::status(503),
        Reply::hang(),
        Reply::hang(),
        Reply::hang(),
    ])
    .await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let svc = tower_outbound::Outbound::new()
        .retry(RetryLayer::new().rng_seed(9))
        .deadline(Some(Duration::from_secs(4)))
        .service(client);
    let start = Instant::now();

    let err = svc
        .oneshot(
            Request::get(server.url("/flaky"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap_err();

    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(
        Instant::now() - start,
        Duration::from_secs(4),
        "a 503, a backoff wait, then a hung attempt cut by the deadline"
    );
    assert_eq!(err.attempts(), 2, "{err:?}");
}

/// An upstream that is down (503) while `down` is set, and counts what reaches it.
async fn switchable_upstream() -> (String, Arc<AtomicBool>, Arc<AtomicU32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let down = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicU32::new(0));
    let (flag, count) = (down.clone(), hits.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (flag, count) = (flag.clone(), count.clone());
            let service =
                hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                    count.fetch_add(1, Ordering::SeqCst);
                    let status = if flag.load(Ordering::SeqCst) {
                        503
                    } else {
                        200
                    };
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, down, hits)
}

#[tokio::test(start_paused = true)]
async fn a_dead_upstream_trips_the_breaker_and_nothing_the_caller_sent_is_lost() {
    let (url, down, hits) = switchable_upstream().await;
    let sink = MemorySink::new();
    let breaker = CircuitBreakerLayer::new()
        .minimum_calls(5)
        .open_duration(Duration::from_secs(5))
        .open_backoff(2.0, Duration::from_secs(10));
    let stack = Outbound::background()
        .retry(RetryLayer::new().max_attempts(3).rng_seed(9))
        .circuit_breaker(Some(breaker.clone()))
        .dead_letters(Some(DeadLetterLayer::new(sink.clone())));
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let svc = stack.service(client);

    // One call a second for two minutes; the upstream is down for the first minute.
    let mut delivered = 0;
    let mut failed = 0;
    let mut hits_while_down = 0;
    for second in 0..120u32 {
        if second == 60 {
            hits_while_down = hits.load(Ordering::SeqCst);
            down.store(false, Ordering::SeqCst);
        }
        let body = format!("{{\"n\":{second}}}");
        let request = Request::put(format!("{url}/items/{second}"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        match svc.clone().oneshot(request).await {
            Ok(response) if response.status() == StatusCode::OK => delivered += 1,
            Ok(_) | Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Without the breaker, 60 calls × 3 attempts would have hit the dead upstream.
    assert!(
        hits_while_down < 60,
        "the upstream saw {hits_while_down} requests while down"
    );
    assert!(breaker.stats().rejected() > 0);
    // Traffic resumed after the recovery.
    assert_eq!(breaker.state(), CircuitState::Closed);
    // Within one open time (at most 10 s) of the recovery.
    assert!(delivered >= 50, "delivered {delivered}");
    // Nothing lost: every call was delivered or is a dead letter.
    assert_eq!(delivered + failed, 120);
    assert_eq!(sink.letters().len(), failed);
}

/// The presets' breakers through `Outbound`'s own call: `background()` holds a call that meets
/// an open circuit until the probe passes; `user_facing()` fails it at once.
#[tokio::test(start_paused = true)]
async fn background_waits_for_the_circuit_where_user_facing_fails_fast() {
    let (url, down, _hits) = switchable_upstream().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    // One attempt per call, so ten calls are ten outcomes for the breaker.
    let trip = |stack: Outbound| stack.retry(RetryLayer::new().max_attempts(1));
    for (name, stack, waits) in [
        ("background", trip(Outbound::background()), true),
        ("user_facing", trip(Outbound::user_facing()), false),
    ] {
        down.store(true, Ordering::SeqCst);
        let breaker = stack.circuit_breaker_layer().unwrap().clone();
        let svc = stack.service(client.clone());
        // The presets' breakers open after 10 calls (all failed), for 1 s the first time.
        for _ in 0..10 {
            let response = svc.clone().oneshot(post(&format!("{url}/a"), "{}")).await;
            assert_eq!(response.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        assert_eq!(breaker.state(), CircuitState::Open, "{name}");
        // The upstream comes back 500 ms later; the circuit's next probe is in 1 s.
        let up = down.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            up.store(false, Ordering::SeqCst);
        });
        let start = Instant::now();
        let result = svc.clone().oneshot(post(&format!("{url}/b"), "{}")).await;
        if waits {
            assert_eq!(result.unwrap().status(), StatusCode::OK, "{name}");
            assert_eq!(
                Instant::now() - start,
                Duration::from_secs(1),
                "{name}: held until the probe"
            );
            // The held call was the first probe, and it passed (two more close the circuit).
            assert_eq!(breaker.state(), CircuitState::HalfOpen, "{name}");
        } else {
            let err = result.unwrap_err();
            assert!(err.is_circuit_open(), "{name}: {err:?}");
            assert_eq!(Instant::now(), start, "{name}: at once");
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

/// A service that insists on the readiness contract: `call` without a `poll_ready` that
/// returned ready first panics, as several real services do. A clone starts unready.
struct Strict {
    ready: bool,
    calls: Arc<AtomicU32>,
    attempts: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
}

impl Clone for Strict {
    fn clone(&self) -> Self {
        Strict {
            ready: false,
            calls: self.calls.clone(),
            attempts: self.attempts.clone(),
        }
    }
}

impl tower::Service<Request<ReplayBody>> for Strict {
    type Response = http::Response<()>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<http::Response<()>, std::convert::Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.ready = true;
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReplayBody>) -> Self::Future {
        assert!(self.ready, "called without poll_ready");
        self.ready = false;
        self.calls.fetch_add(1, Ordering::SeqCst);
        // Fails the first two attempts of every call, so retries happen.
        let mut attempts = self.attempts.lock().unwrap();
        let n = attempts.entry(request.uri().path().to_owned()).or_default();
        *n += 1;
        let status = if *n < 3 { 503 } else { 200 };
        std::future::ready(Ok(http::Response::builder()
            .status(status)
            .body(())
            .unwrap()))
    }
}

#[tokio::test(start_paused = true)]
async fn every_layer_calls_only_inner_services_it_made_ready() {
    let calls = Arc::new(AtomicU32::new(0));
    let strict = Strict {
        ready: false,
        calls: calls.clone(),
        attempts: Arc::default(),
    };
    let stack = Outbound::background()
        // Two failures in three attempts is the point here; keep the breaker closed.
        .circuit_breaker(Some(CircuitBreakerLayer::new().minimum_calls(1_000)))
        .throttle(Some(tower_outbound::ThrottleLayer::new(
            5,
            Duration::from_secs(1),
        )))
        .retry(RetryLayer::new().max_attempts(3).rng_seed(3));
    let svc = stack.service(strict);
    // Concurrent calls through clones: retries, throttle waits and gate waits all move the
    // ready service into their futures and leave an unready clone behind.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move {
                svc.oneshot(
                    Request::post(format!("http://api.example.com/{i}"))
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
            })
        })
        .collect();
    for task in tasks {
        let response = task
            .await
            .expect("no layer called an unready service")
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 30);
}
