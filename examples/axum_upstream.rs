//! An axum handler that calls an upstream API through the stack. Starts a flaky upstream and
//! the axum app on 127.0.0.1, sends the app a few requests, prints the answers and exits.
//!
//! ```text
//! cargo run --example axum_upstream
//! ```

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_outbound::body::ReplayBody;
use tower_outbound::outbound::OutboundService;
use tower_outbound::{BoxError, Outbound, RetryLayer};

type Upstream = OutboundService<Client<HttpConnector, ReplayBody>>;

#[derive(Clone)]
struct AppState {
    upstream: Upstream,
    upstream_url: String,
}

/// `GET /recommendations/{user}`: asks the upstream, answers 502 with the reason when the stack
/// gave up, and 503 with `Retry-After` when the upstream asked for a longer pause than a person
/// should wait.
async fn recommendations(
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> Result<String, (StatusCode, String)> {
    let request = Request::get(format!("{}/v1/recommend?user={user}", state.upstream_url))
        .body(Full::new(Bytes::new()))
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match state.upstream.oneshot(request).await {
        Ok(response) if response.status().is_success() => {
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
            Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
        }
        Ok(response) => Err((
            StatusCode::BAD_GATEWAY,
            format!("upstream answered {}", response.status()),
        )),
        Err(err) if err.is_rate_limited() || err.is_circuit_open() => {
            Err((StatusCode::SERVICE_UNAVAILABLE, err.to_string()))
        }
        Err(err) => Err((StatusCode::BAD_GATEWAY, err.to_string())),
    }
}

/// An upstream that fails every other request with 503.
async fn flaky_upstream() -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let calls = Arc::new(AtomicU32::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let calls = calls.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    let user = req.uri().query().unwrap_or_default().to_owned();
                    let mut response = Response::new(Full::new(Bytes::from(format!(
                        "[\"item-1\",\"item-2\"] for {user}"
                    ))));
                    if n.is_multiple_of(2) {
                        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
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
    let upstream_url = flaky_upstream().await?;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let stack = Outbound::user_facing().retry(
        RetryLayer::new()
            .max_attempts(3)
            .base_delay(Duration::from_millis(20))
            .max_total_delay(Duration::from_millis(500)),
    );
    let state = AppState {
        upstream: stack.service(client),
        upstream_url,
    };
    let app = Router::new()
        .route("/recommendations/{user}", get(recommendations))
        .with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let app_url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let caller = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for user in ["ada", "grace", "linus"] {
        let response = caller
            .get(format!("{app_url}/recommendations/{user}").parse()?)
            .await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "GET /recommendations/{user}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}
