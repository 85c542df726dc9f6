//! The foundation stack (idempotency → retry → Retry-After gate) around a hyper-util client,
//! against a real hyper server on 127.0.0.1 that scripts its replies and records every request.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{Reply, ScriptedServer};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_outbound::body::ReplayBody;
use tower_outbound::retry::Attempts;
use tower_outbound::{Error, IdempotencyKeyLayer, RetryAfterLayer, RetryLayer};

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

#[tokio::test(start_paused = true)]
async fn a_hung_upstream_trips_the_attempt_timeout_and_then_the_call_deadline() {
    let server = ScriptedServer::start(vec![
        Reply::hang(),
        Reply::hang(),
        Reply::hang(),
        Reply::hang(),
    ])
    .await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let svc = ServiceBuilder::new()
        .layer(tower_outbound::deadline::DeadlineLayer::new(
            Duration::from_secs(30),
        ))
        .layer(RetryLayer::new().rng_seed(4))
        .layer(RetryAfterLayer::new())
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(10)))
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
    assert_eq!(
        Instant::now() - start,
        Duration::from_secs(30),
        "the deadline ended the call"
    );
    // Two attempts timed out after 10 s each and were retried; the third was cut by the deadline.
    let received = server.received();
    assert_eq!(received.len(), 3);
    assert!(received[1].at - received[0].at >= Duration::from_secs(10));
    assert!(received[2].at - received[1].at >= Duration::from_secs(10));
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
