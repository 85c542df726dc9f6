//! tower-http's client middleware around the `Outbound` stack and a hyper-util client, against
//! a loopback server that fails once (503), then answers with a gzip body. Runs on its own and
//! exits.
//!
//! ```text
//! cargo run --example tower_http
//! ```
//!
//! # The order, outermost first
//!
//! ```text
//! SetSensitiveRequestHeadersLayer   marks `authorization` and `x-session` sensitive
//! TraceLayer::new_for_http()        one span per logical call: final status, whole latency
//! DecompressionLayer                asks for gzip once, decompresses the body the caller reads
//! Outbound                          idempotency, dead letters, deadline, retry, breaker, gate,
//!                                   throttle, attempt timeout
//! hyper-util Client<_, ReplayBody>
//! ```
//!
//! - **Sensitive headers first**, before anything reads the headers: tower-http's trace output
//!   shows them as `Sensitive`, and `Outbound` keeps one copy of the request for its retries
//!   and dead letters, in which the flag travels with each `HeaderValue`, so a dead letter
//!   stores them as `[redacted]` (like the built-in list: `authorization`, `cookie`, ...).
//! - **Trace around the whole call**: the span's latency is what the caller waited, retries and
//!   pauses included, and its status the final one; the crate's own per-attempt events are
//!   logged inside that span. For a span per attempt, put `TraceLayer` below `Outbound`
//!   instead (its `on_failure` then also sees the 503s that were retried).
//! - **Decompression outside `Outbound`**: `Accept-Encoding` is set once on the logical request,
//!   so every attempt and a replayed dead letter ask for the same encoding, and only the body
//!   the caller reads is decompressed — a retried attempt's body is dropped unread. `Outbound`
//!   decides on the status and headers (`Retry-After`, rate-limit headers), which decompression
//!   does not change.
//!
//! No adapter is needed: `Outbound` takes any `Request<B>` with `B: Body + Unpin + Send`
//! (tower-http passes the caller's body through unchanged) and sends `Request<ReplayBody>` to
//! the client, so the client is built as `Client<_, ReplayBody>`; its response body,
//! `Incoming`, is what `DecompressionLayer` wraps, and `Outbound`'s `Error` is `Display`, as
//! `TraceLayer` asks.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_http::decompression::DecompressionLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultMakeSpan, TraceLayer};
use tower_outbound::body::ReplayBody;
use tower_outbound::retry::Attempts;
use tower_outbound::{BoxError, Outbound, RetryLayer};

/// A JSON answer long enough for the server's compression to apply (over 32 bytes).
const ITEMS: &str =
    r#"{"items":[{"id":1,"name":"first"},{"id":2,"name":"second"},{"id":3,"name":"third"}]}"#;

/// A loopback server behind tower-http's `CompressionLayer`: the first request gets a 503,
/// every later one the items, gzip-compressed when the client asks for it.
async fn upstream() -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let calls = Arc::new(AtomicU32::new(0));
    let app = ServiceBuilder::new()
        .layer(CompressionLayer::new())
        .service(tower::service_fn(move |_req: Request<Incoming>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut response = Response::new(Full::new(Bytes::from_static(ITEMS.as_bytes())));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                if n == 0 {
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                Ok::<_, Infallible>(response)
            }
        }));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let app = app.clone();
            let service = hyper::service::service_fn(move |req| app.clone().oneshot(req));
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(url)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_target(false)
        .init();

    let url = upstream().await?;
    let session = HeaderName::from_static("x-session");
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let service = ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new([
            AUTHORIZATION,
            session.clone(),
        ]))
        .layer(
            TraceLayer::new_for_http().make_span_with(DefaultMakeSpan::new().include_headers(true)),
        )
        .layer(DecompressionLayer::new())
        .layer(Outbound::new().retry(RetryLayer::new().base_delay(Duration::from_millis(20))))
        .service(client);

    let request = Request::get(format!("{url}/v1/items"))
        .header(AUTHORIZATION, "Bearer example-token")
        .header(session, "example-session")
        .body(Full::new(Bytes::new()))?;
    let response = service.oneshot(request).await?;
    let attempts = response
        .extensions()
        .get::<Attempts>()
        .map_or(1, |a| a.count);
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!(
        "{status} after {attempts} attempt(s), body decompressed: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}
