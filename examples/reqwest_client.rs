//! The layer stack around a reqwest client, through the crate's adapter
//! ([`ReqwestService`], feature `reqwest`). Runs against a loopback server that fails the
//! first attempts, then exits. A client built with reqwest-middleware takes the whole stack as
//! one middleware instead: `ClientBuilder::new(client).with(OutboundMiddleware::new(stack))`
//! (feature `reqwest-middleware`).
//!
//! ```text
//! cargo run --example reqwest_client --features reqwest
//! ```

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_outbound::reqwest::ReqwestService;
use tower_outbound::retry::Attempts;
use tower_outbound::{IdempotencyKeyLayer, RetryAfterLayer, RetryLayer};

/// A server that answers 503 to the first two attempts of every path, then 200.
async fn upstream() -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let calls = Arc::new(AtomicU32::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let calls = calls.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let status = if n % 3 < 2 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    };
                    let mut response = Response::new(Full::new(Bytes::from(format!(
                        "echo: {}",
                        String::from_utf8_lossy(&body)
                    ))));
                    *response.status_mut() = status;
                    Ok::<_, Infallible>(response)
                }
            });
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
    let url = upstream().await?;
    let retry = RetryLayer::new().base_delay(Duration::from_millis(20));
    let stats = retry.stats();
    let client = ServiceBuilder::new()
        .layer(IdempotencyKeyLayer::new())
        .layer(retry)
        .layer(RetryAfterLayer::new())
        .service(ReqwestService::new(
            // reqwest's own retries off: the stack counts every attempt.
            reqwest::Client::builder()
                .retry(reqwest::retry::never())
                .build()?,
        ));

    for i in 0..3 {
        let request = Request::post(format!("{url}/orders"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(r#"{{"order":{i}}}"#))))?;
        let response = client.clone().oneshot(request).await?;
        let attempts = response
            .extensions()
            .get::<Attempts>()
            .map_or(1, |a| a.count);
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "order {i}: {status} after {attempts} attempts: {}",
            String::from_utf8_lossy(&body)
        );
    }
    println!("retries: {}, calls: {}", stats.retries(), stats.calls());
    Ok(())
}
