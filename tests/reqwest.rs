//! The stack with reqwest: as reqwest-middleware's middleware, and around a reqwest client as
//! its transport, against real hyper servers on 127.0.0.1.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_retry::RetryTransientMiddleware;
use support::{Reply, ScriptedServer};
use tower::{Service, ServiceExt};
use tower_outbound::body::{BodySource, ReplayBody};
use tower_outbound::error::Kind;
use tower_outbound::reqwest::{OutboundMiddleware, ReqwestService};
use tower_outbound::retry::Attempts;
use tower_outbound::{CircuitBreakerLayer, DeadLetterLayer, MemorySink, Outbound, RetryLayer};

/// A reqwest client with the stack as its one middleware, and reqwest's own retries off.
fn with_stack(stack: Outbound) -> ClientWithMiddleware {
    ClientBuilder::new(plain_reqwest())
        .with(OutboundMiddleware::new(stack))
        .build()
}

fn plain_reqwest() -> reqwest::Client {
    reqwest::Client::builder()
        .retry(reqwest::retry::never())
        .build()
        .unwrap()
}

/// The gap between the first two requests a server received.
fn gap(server: &ScriptedServer) -> Duration {
    let received = server.received();
    assert!(received.len() >= 2, "{} requests", received.len());
    received[1].at - received[0].at
}

#[tokio::test(start_paused = true)]
async fn the_middleware_honours_retry_after_where_reqwest_retry_does_not() {
    let script = || vec![Reply::status(429).header("retry-after", "30")];
    let ours = ScriptedServer::start(script()).await;
    let theirs = ScriptedServer::start(script()).await;
    let stack = with_stack(Outbound::new().deadline(Some(Duration::from_secs(120))));
    let retry = ClientBuilder::new(plain_reqwest())
        .with(RetryTransientMiddleware::new_with_policy(
            ExponentialBackoff::builder()
                .retry_bounds(Duration::from_millis(10), Duration::from_millis(100))
                .build_with_max_retries(3),
        ))
        .build();

    let response = stack.get(ours.url("/v1/items")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.extensions().get::<Attempts>().map(|a| a.count),
        Some(2),
        "the stack's record of the call reaches the reqwest response"
    );
    let response = retry.get(theirs.url("/v1/items")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    assert!(
        gap(&ours) >= Duration::from_secs(30),
        "the stack waits the 30 s the server asked for: {:?}",
        gap(&ours)
    );
    assert!(
        gap(&theirs) < Duration::from_secs(1),
        "reqwest-retry retries on its own schedule, ignoring Retry-After: {:?}",
        gap(&theirs)
    );
}

#[tokio::test(start_paused = true)]
async fn every_attempt_of_a_post_through_the_middleware_carries_one_key_and_the_body() {
    let server = ScriptedServer::start(vec![
        Reply::status(503),
        Reply::status(502),
        Reply::status(201).body("created"),
    ])
    .await;
    let client = with_stack(Outbound::new());

    let response = client
        .post(server.url("/v1/charges"))
        .header("content-type", "application/json")
        .body(r#"{"amount":42}"#)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.url().as_str(), server.url("/v1/charges"));
    assert_eq!(response.text().await.unwrap(), "created");
    let received = server.received();
    assert_eq!(received.len(), 3);
    let key = received[0].headers.get("idempotency-key").unwrap();
    for request in &received {
        assert_eq!(request.headers.get("idempotency-key"), Some(key));
        assert_eq!(request.body, r#"{"amount":42}"#);
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_that_finally_fails_through_the_middleware_gets_one_dead_letter() {
    let server = ScriptedServer::start(vec![Reply::status(503); 8]).await;
    let sink = MemorySink::new();
    let client = with_stack(
        Outbound::new()
            .retry(RetryLayer::new().max_attempts(3))
            .dead_letters(Some(DeadLetterLayer::new(sink.clone()))),
    );

    let response = client
        .put(server.url("/v1/items/7?api_key=sk_live_secret"))
        .body("item seven")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.received().len(), 3);
    let letters = sink.letters();
    assert_eq!(letters.len(), 1, "one call, one letter");
    assert_eq!(letters[0].attempts, 3);
    assert!(letters[0].body_kept);
    assert!(
        !letters[0].uri.contains("sk_live_secret"),
        "the letter's URI is redacted: {}",
        letters[0].uri
    );
}

#[tokio::test(start_paused = true)]
async fn a_transport_failure_through_the_middleware_is_the_stacks_typed_error_without_the_url() {
    // A free port, closed again: connecting is refused.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let client = with_stack(Outbound::new().retry(RetryLayer::new().max_attempts(2)));

    let err = client
        .get(format!("http://{addr}/v1/items?token=tok_secret"))
        .send()
        .await
        .unwrap_err();

    let reqwest_middleware::Error::Middleware(err) = err else {
        panic!("the stack's error, not reqwest's alone: {err:?}");
    };
    let stack_error = err.downcast_ref::<tower_outbound::Error>().unwrap();
    assert_eq!(stack_error.kind(), Kind::Transport);
    assert_eq!(stack_error.attempts(), 2, "retried once");
    let shown = format!("{err:?} {err:#}");
    assert!(!shown.contains("tok_secret"), "{shown}");
}

#[tokio::test(start_paused = true)]
async fn each_upstream_keeps_its_own_breaker_through_the_middleware() {
    let down = ScriptedServer::start(vec![Reply::status(503); 64]).await;
    let up = ScriptedServer::start(Vec::new()).await;
    let client = with_stack(
        Outbound::new()
            .retry(RetryLayer::new().max_attempts(1))
            .circuit_breaker(Some(CircuitBreakerLayer::new().minimum_calls(4))),
    );

    for _ in 0..4 {
        let response = client.get(down.url("/")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let refused = client.get(down.url("/")).send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(refused) = refused else {
        panic!("a refusal is the stack's error");
    };
    assert!(refused
        .downcast_ref::<tower_outbound::Error>()
        .unwrap()
        .is_circuit_open());
    assert_eq!(down.received().len(), 4, "the open circuit sent nothing");

    let response = client.get(up.url("/")).send().await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the other upstream is not touched"
    );
    assert_eq!(up.received().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn two_clients_built_with_one_middleware_share_the_upstreams_state() {
    let down = ScriptedServer::start(vec![Reply::status(503); 64]).await;
    let middleware = OutboundMiddleware::new(
        Outbound::new()
            .retry(RetryLayer::new().max_attempts(1))
            .circuit_breaker(Some(CircuitBreakerLayer::new().minimum_calls(4))),
    );
    let first = ClientBuilder::new(plain_reqwest())
        .with(middleware.clone())
        .build();
    let second = ClientBuilder::new(plain_reqwest()).with(middleware).build();

    for _ in 0..4 {
        let _ = first.get(down.url("/")).send().await.unwrap();
    }
    let err = second.get(down.url("/")).send().await.unwrap_err();

    assert!(
        matches!(&err, reqwest_middleware::Error::Middleware(e)
            if e.downcast_ref::<tower_outbound::Error>().is_some_and(|e| e.is_circuit_open())),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_source_is_made_again_for_each_attempt_through_a_reqwest_client() {
    let server = ScriptedServer::start(vec![Reply::status(503), Reply::status(503)]).await;
    let opened = Arc::new(AtomicU32::new(0));
    let counted = opened.clone();
    let body = ReplayBody::from_fn(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, std::io::Error>(Full::new(Bytes::from_static(b"part one, part two"))) }
    });
    let client = Outbound::new().service(ReqwestService::new(plain_reqwest()));

    let response = client
        .oneshot(
            http::Request::post(server.url("/upload"))
                .body(body)
                .unwrap(),
        )
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(opened.load(Ordering::SeqCst), 3);
    let received = server.received();
    assert_eq!(received.len(), 3);
    assert!(received.iter().all(|r| r.body == "part one, part two"));
}

/// An upload through the middleware that survives retries without being held: the request
/// has no body and a `BodySource` extension, made again for each attempt.
#[tokio::test(start_paused = true)]
async fn a_body_source_extension_is_made_again_for_each_attempt_through_the_middleware() {
    let server = ScriptedServer::start(vec![Reply::status(503), Reply::status(503)]).await;
    let opened = Arc::new(AtomicU32::new(0));
    let counted = opened.clone();
    let source = BodySource::new(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, std::io::Error>(Full::new(Bytes::from_static(b"part one, part two"))) }
    })
    .content_length(18);
    let client = with_stack(Outbound::new());

    let response = client
        .post(server.url("/upload"))
        .with_extension(source)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(opened.load(Ordering::SeqCst), 3, "made once per attempt");
    let received = server.received();
    assert_eq!(received.len(), 3);
    let key = received[0].headers.get("idempotency-key").unwrap();
    for request in &received {
        assert_eq!(request.body, "part one, part two");
        assert_eq!(request.headers.get("content-length").unwrap(), "18");
        assert_eq!(request.headers.get("idempotency-key"), Some(key));
    }
}

/// A request with a body of its own and a source is ambiguous: refused before anything is
/// sent, with the stack's typed error.
#[tokio::test(start_paused = true)]
async fn a_request_with_a_body_and_a_body_source_is_refused_unsent() {
    let server = ScriptedServer::start(vec![]).await;
    let source = BodySource::new(|| async {
        Ok::<_, std::io::Error>(Full::new(Bytes::from_static(b"from the source")))
    });
    let client = with_stack(Outbound::new());

    let err = client
        .post(server.url("/upload"))
        .body("inline")
        .with_extension(source)
        .send()
        .await
        .unwrap_err();

    let reqwest_middleware::Error::Middleware(err) = err else {
        panic!("{err:?}")
    };
    let err = err.downcast_ref::<tower_outbound::Error>().unwrap();
    assert_eq!(err.kind(), Kind::Body, "{err}");
    assert!(server.received().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_reqwest_service_error_does_not_print_the_url() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut client = ReqwestService::new(plain_reqwest());

    let err = client
        .call(
            http::Request::get(format!("http://{addr}/?access_token=tok_secret"))
                .body(ReplayBody::from_bytes(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap_err();

    assert!(err.url().is_none());
    assert!(!format!("{err:?} {err}").contains("tok_secret"));
}
