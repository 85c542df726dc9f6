//! What the order of `Outbound`'s layers promises (docs/design.md, "The layers, and the order
//! they go in"), checked through the public API on tokio's paused clock.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_outbound::body::ReplayBody;
use tower_outbound::{CircuitBreakerLayer, Outbound, RetryLayer, ThrottleLayer};

fn get() -> Request<String> {
    Request::get("http://api.example.com/v1/things")
        .body(String::new())
        .unwrap()
}

/// Tokens the throttle handed out or refused so far.
fn tokens(outbound: &Outbound) -> u64 {
    let stats = outbound.throttle_layer().unwrap().stats();
    stats.immediate() + stats.delayed() + stats.rejected()
}

/// The gate sits above the throttle: while the server's pause runs, a call held at the gate
/// takes no token (and reaches nobody); it takes one once the pause is over.
#[tokio::test(start_paused = true)]
async fn a_call_held_by_the_gate_takes_no_token_until_the_pause_ends() {
    let calls = Arc::new(AtomicU32::new(0));
    let upstream = {
        let calls = calls.clone();
        tower::service_fn(move |_req: Request<ReplayBody>| {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                let response = if first {
                    Response::builder()
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .header("retry-after", "5")
                        .body(String::new())
                } else {
                    Response::builder().body(String::from("ok"))
                };
                Ok::<_, Infallible>(response.unwrap())
            }
        })
    };
    let outbound = Outbound::new()
        .retry(RetryLayer::new().max_attempts(1))
        .throttle(Some(ThrottleLayer::new(100, Duration::from_secs(1))));
    let service = outbound.service(upstream);

    let first = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(tokens(&outbound), 1);

    let start = Instant::now();
    let second = tokio::spawn(service.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(4_900)).await;
    assert_eq!(tokens(&outbound), 1, "a token was taken during the pause");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_secs(5));
    assert_eq!(
        tokens(&outbound),
        2,
        "the held call took its token after the pause"
    );
}

/// The throttle sits outside the attempt timeout: a 20 s wait for a token does not time out an
/// attempt limited to 10 s.
#[tokio::test(start_paused = true)]
async fn the_wait_for_a_token_does_not_count_against_the_attempt_timeout() {
    let upstream = tower::service_fn(|_req: Request<ReplayBody>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    });
    let outbound = Outbound::new()
        .attempt_timeout(Some(Duration::from_secs(10)))
        .throttle(Some(
            ThrottleLayer::new(1, Duration::from_secs(20)).max_wait(Duration::from_secs(25)),
        ));
    let service = outbound.service(upstream);
    service.clone().oneshot(get()).await.unwrap();
    let start = Instant::now();
    let second = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(20),
        "it waited for its token"
    );
    let stats = outbound.retry_stats();
    assert_eq!(stats.retries(), 0, "no attempt timed out");
}

/// The attempt timeout sits inside the breaker: a hung attempt is a failure the breaker counts,
/// and enough of them open it.
#[tokio::test(start_paused = true)]
async fn timed_out_attempts_are_failures_the_breaker_counts() {
    let calls = Arc::new(AtomicU32::new(0));
    let upstream = {
        let calls = calls.clone();
        tower::service_fn(move |_req: Request<ReplayBody>| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Result<Response<String>, Infallible>>()
        })
    };
    let outbound = Outbound::new()
        .retry(RetryLayer::new().max_attempts(1))
        .attempt_timeout(Some(Duration::from_secs(1)))
        .circuit_breaker(Some(CircuitBreakerLayer::new().minimum_calls(4)));
    let service = outbound.service(upstream);
    for _ in 0..4 {
        let err = service.clone().oneshot(get()).await.unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
    }
    let err = service.clone().oneshot(get()).await.unwrap_err();
    assert!(
        err.is_circuit_open(),
        "four timeouts of four calls: {err:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "the open breaker called nobody"
    );
}
