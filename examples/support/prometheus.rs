//! Serves the process's `metrics` on a Prometheus endpoint: shared by the examples that show
//! the five signals (`metrics`, and `lehnz_sync --metrics ADDR`).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tower_outbound::metrics::DURATION_BUCKETS;
use tower_outbound::BoxError;

/// Installs the Prometheus recorder as the process's `metrics` recorder and serves its text
/// exposition at `http://ADDR/metrics` (any path answers) until the process ends. Returns the
/// bound address (`ADDR` may have port 0) and the handle, to render the text in process.
pub(crate) async fn serve_prometheus(
    addr: SocketAddr,
) -> Result<(SocketAddr, PrometheusHandle), BoxError> {
    let handle = PrometheusBuilder::new()
        .set_buckets(DURATION_BUCKETS)?
        .install_recorder()?;
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let render = handle.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let render = render.clone();
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let mut response = Response::new(Full::new(Bytes::from(render.render())));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((bound, handle))
}
