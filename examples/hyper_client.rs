//! The composed stack around a hyper-util client, against a loopback server that limits the
//! rate, fails and hangs now and then. Runs on its own and exits.
//!
//! ```text
//! cargo run --example hyper_client
//! ```

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_outbound::body::ReplayBody;
use tower_outbound::retry::Attempts;
use tower_outbound::{BoxError, Outbound, RetryLayer};

/// Answers, in turn: 429 with `Retry-After: 1`, a hang of 5 s, 503, then 200 twice.
async fn upstream() -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let calls = Arc::new(AtomicU32::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let calls = calls.clone();
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    let mut response =
                        Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
                    match n % 5 {
                        0 => {
                            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                            response.headers_mut().insert(
                                "retry-after",
                                "1".parse().unwrap_or_else(|_| unreachable!()),
                            );
                        }
                        1 => tokio::time::sleep(Duration::from_secs(5)).await,
                        2 => *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE,
                        _ => {}
                    }
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
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    // The general stack, with a shorter attempt timeout so the hang is cut quickly.
    let stack = Outbound::new()
        .retry(RetryLayer::new().base_delay(Duration::from_millis(50)))
        .attempt_timeout(Some(Duration::from_millis(500)));
    let stats = stack.retry_stats();
    let service = stack.service(client);

    for i in 0..3 {
        let request = Request::get(format!("{url}/items/{i}")).body(Full::new(Bytes::new()))?;
        match service.clone().oneshot(request).await {
            Ok(response) => {
                let attempts = response
                    .extensions()
                    .get::<Attempts>()
                    .map_or(1, |a| a.count);
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                println!(
                    "item {i}: {status} after {attempts} attempt(s): {}",
                    String::from_utf8_lossy(&body)
                );
            }
            Err(err) => println!("item {i}: {err}"),
        }
    }
    println!(
        "retries: {}, server waits honored: {}, time waited: {:.1?}",
        stats.retries(),
        stats.server_waits(),
        stats.waited()
    );
    Ok(())
}
