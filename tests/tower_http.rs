//! tower-http's client middleware composed with `Outbound` around a hyper-util client, against
//! a real hyper server on 127.0.0.1 (see examples/tower_http.rs for the order and why).

use std::convert::Infallible;
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
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
use tower_outbound::dead_letter::DeadLetter;
use tower_outbound::retry::Attempts;
use tower_outbound::{DeadLetterLayer, MemorySink, Outbound, RetryLayer};

/// Long enough for the server's compression to apply (over 32 bytes).
const ITEMS: &str =
    r#"{"items":[{"id":1,"name":"first"},{"id":2,"name":"second"},{"id":3,"name":"third"}]}"#;
const SESSION: &str = "s3ss10n-v4lue-never-stored";
const TOKEN: &str = "Bearer t0ken-never-stored";

/// What the loopback server saw and sent.
#[derive(Default)]
struct Seen {
    requests: AtomicU32,
    gzip_responses: AtomicU32,
}

/// A hyper server on 127.0.0.1 behind tower-http's `CompressionLayer`: the first `failures`
/// requests get a 503, later ones the items (gzip when asked). Stops with the test's runtime.
async fn server(failures: u32) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    let seen = Arc::new(Seen::default());
    let counted = seen.clone();
    let app = ServiceBuilder::new()
        .layer(CompressionLayer::new())
        .service(tower::service_fn(move |_req: Request<Incoming>| {
            let n = counted.requests.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut response = Response::new(Full::new(Bytes::from_static(ITEMS.as_bytes())));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                if n < failures {
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                Ok::<_, Infallible>(response)
            }
        }));
    let sent = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (app, sent) = (app.clone(), sent.clone());
            let service = hyper::service::service_fn(move |req| {
                let (app, sent) = (app.clone(), sent.clone());
                async move {
                    let response = app.oneshot(req).await?;
                    if response
                        .headers()
                        .get(CONTENT_ENCODING)
                        .map(|v| v.as_bytes())
                        == Some(b"gzip")
                    {
                        sent.gzip_responses.fetch_add(1, Ordering::SeqCst);
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
    (url, seen)
}

fn x_session() -> HeaderName {
    HeaderName::from_static("x-session")
}

/// `Outbound` with short retry delays, two attempts, and dead letters to `sink`.
fn outbound(sink: &MemorySink) -> Outbound {
    Outbound::new()
        .retry(
            RetryLayer::new()
                .max_attempts(2)
                .base_delay(Duration::from_millis(1))
                .max_delay(Duration::from_millis(2)),
        )
        .dead_letters(Some(DeadLetterLayer::new(sink.clone())))
}

fn request(url: &str) -> Request<Full<Bytes>> {
    Request::get(format!("{url}/v1/items"))
        .header(AUTHORIZATION, TOKEN)
        .header(x_session(), SESSION)
        .body(Full::new(Bytes::new()))
        .expect("a valid request")
}

/// A log writer that keeps everything written, to search the logs for secrets.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

/// Everything, at TRACE, into `logs`, for this thread (the tests run on current-thread
/// runtimes, so the client's tasks log here too).
fn capture(logs: &Logs) -> tracing::subscriber::DefaultGuard {
    let logs = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || logs.clone())
        .finish();
    tracing::subscriber::set_default(subscriber)
}

fn stored<'a>(letter: &'a DeadLetter, name: &str) -> Option<&'a str> {
    letter
        .headers
        .iter()
        .find(|h| h.name == name)
        .and_then(|h| h.value.as_deref())
}

#[tokio::test]
async fn tower_http_stack_retries_and_decompresses() {
    let (url, seen) = server(1).await;
    let sink = MemorySink::new();
    let logs = Logs::default();
    let _logging = capture(&logs);
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    // The order of examples/tower_http.rs.
    let service = ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new([
            AUTHORIZATION,
            x_session(),
        ]))
        .layer(
            TraceLayer::new_for_http().make_span_with(DefaultMakeSpan::new().include_headers(true)),
        )
        .layer(DecompressionLayer::new())
        .layer(outbound(&sink))
        .service(client);

    let response = service
        .oneshot(request(&url))
        .await
        .expect("the call succeeds after a retry");

    assert_eq!(response.status(), StatusCode::OK);
    let attempts = response.extensions().get::<Attempts>().map(|a| a.count);
    assert_eq!(attempts, Some(2), "one 503, then the 200");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 2);
    assert!(
        response.headers().get(CONTENT_ENCODING).is_none(),
        "the decompressed response no longer says gzip"
    );
    let body = response
        .into_body()
        .collect()
        .await
        .expect("the body")
        .to_bytes();
    assert_eq!(body, ITEMS.as_bytes(), "the body arrives decompressed");
    assert!(
        seen.gzip_responses.load(Ordering::SeqCst) >= 1,
        "the server did send gzip"
    );
    assert!(
        sink.letters().is_empty(),
        "a call that succeeded leaves no letter"
    );

    let logs = logs.text();
    assert!(
        logs.contains("x-session"),
        "headers are in the trace span: {logs}"
    );
    assert!(
        !logs.contains(SESSION) && !logs.contains(TOKEN),
        "no secret in the logs: {logs}"
    );
}

#[tokio::test]
async fn header_marked_sensitive_by_tower_http_is_redacted_in_dead_letter() {
    let (url, seen) = server(u32::MAX).await;
    let sink = MemorySink::new();
    let logs = Logs::default();
    let _logging = capture(&logs);
    let stack = outbound(&sink);
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    // `authorization` is marked too, for tower-http's trace span (the dead letter redacts it
    // by its built-in list anyway); `x-session` is on no list of the crate's.
    let service = ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new([
            AUTHORIZATION,
            x_session(),
        ]))
        .layer(
            TraceLayer::new_for_http().make_span_with(DefaultMakeSpan::new().include_headers(true)),
        )
        .layer(DecompressionLayer::new())
        .layer(stack.clone())
        .service(client);

    let result = service.oneshot(request(&url)).await;
    if let Ok(response) = &result {
        assert!(
            response.status().is_server_error(),
            "the server always fails"
        );
    }
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        2,
        "both attempts were sent"
    );
    if let Some(layer) = stack.dead_letter_layer() {
        layer.flush().await;
    }

    let letters = sink.letters();
    assert_eq!(letters.len(), 1, "the failed call left one letter");
    let letter = &letters[0];
    assert_eq!(stored(letter, "x-session"), Some("[redacted]"));
    assert_eq!(
        stored(letter, "authorization"),
        Some("[redacted]"),
        "built-in list"
    );
    assert_eq!(
        stored(letter, "accept-encoding").map(|v| v.contains("gzip")),
        Some(true),
        "the letter keeps what the decompression layer asked for"
    );
    let json = serde_json::to_string(letter).expect("a letter serializes");
    assert!(
        !json.contains(SESSION) && !json.contains(TOKEN),
        "no secret stored: {json}"
    );
    let logs = logs.text();
    assert!(
        !logs.contains(SESSION) && !logs.contains(TOKEN),
        "no secret in the logs: {logs}"
    );
}

/// The control: without tower-http marking it, `x-session` is not on the built-in list and is
/// stored as it was — so the redaction above comes from `HeaderValue::is_sensitive`.
#[tokio::test]
async fn header_not_marked_sensitive_is_stored_in_dead_letter() {
    let (url, _seen) = server(u32::MAX).await;
    let sink = MemorySink::new();
    let stack = outbound(&sink);
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let service = ServiceBuilder::new()
        .layer(DecompressionLayer::new())
        .layer(stack.clone())
        .service(client);

    let _ = service.oneshot(request(&url)).await;
    if let Some(layer) = stack.dead_letter_layer() {
        layer.flush().await;
    }

    let letters = sink.letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(stored(&letters[0], "x-session"), Some(SESSION));
    assert_eq!(stored(&letters[0], "authorization"), Some("[redacted]"));
}

/// An application's tower-http classifier (every 4xx a failure) decides which calls get a dead
/// letter and count against the breaker, and its request-id maker makes the idempotency keys.
#[cfg(feature = "tower-http")]
#[tokio::test]
async fn tower_http_classifier_and_request_ids_are_accepted_by_the_layers() {
    use tower_http::classify::StatusInRangeAsFailures;
    use tower_http::request_id::{MakeRequestId, RequestId};
    use tower_outbound::classify::FromTowerHttp;
    use tower_outbound::idempotency::FromMakeRequestId;
    use tower_outbound::{CircuitBreakerLayer, IdempotencyKeyLayer};

    #[derive(Clone, Default)]
    struct Numbered(u32);
    impl MakeRequestId for Numbered {
        fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
            self.0 += 1;
            Some(RequestId::new(
                HeaderValue::from_str(&format!("order-{}", self.0)).unwrap(),
            ))
        }
    }

    // A loopback server that answers 404 and records the keys it sees.
    let keys = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/orders", listener.local_addr().unwrap());
    let server = tokio::spawn({
        let keys = keys.clone();
        async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let keys = keys.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let keys = keys.clone();
                        async move {
                            if let Some(key) = req.headers().get("idempotency-key") {
                                keys.lock().unwrap().push(key.to_str().unwrap().to_owned());
                            }
                            let mut response = Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = StatusCode::NOT_FOUND;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    });

    let classify = FromTowerHttp(StatusInRangeAsFailures::new(400..=599));
    let sink = MemorySink::new();
    let breaker = CircuitBreakerLayer::new().classify(classify.clone());
    let client = ServiceBuilder::new()
        .layer(IdempotencyKeyLayer::new().make_key(FromMakeRequestId::new(Numbered::default())))
        .layer(DeadLetterLayer::new(sink.clone()).classify(classify))
        .layer(RetryLayer::new())
        .layer(breaker.clone())
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody>());
    for _ in 0..2 {
        let request = Request::post(url.as_str())
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    // The default table would call a 404 a client error: no letter, no breaker failure.
    assert_eq!(
        sink.letters().len(),
        2,
        "the application's classifier made 404 a failure"
    );
    assert_eq!(breaker.stats().failures(), 2);
    assert_eq!(*keys.lock().unwrap(), ["order-1", "order-2"]);
    server.abort();
}
