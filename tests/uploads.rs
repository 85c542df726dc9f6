//! Uploads from a body source: a body made again for each attempt, retried without being held
//! in memory, over a real hyper server on 127.0.0.1.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_outbound::body::{BodySource, Buffer, Buffered, ReplayBody};
use tower_outbound::dead_letter::MissingBody;
use tower_outbound::error::Kind;
use tower_outbound::{DeadLetterLayer, MemorySink, Outbound, RetryLayer};

const CHUNK: usize = 64 * 1024;
const HUNDRED_MB: u64 = 100 * 1024 * 1024;

/// How many bytes of generated chunks are alive at once, and the most there ever were.
#[derive(Debug, Default)]
struct Live {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// A chunk that counts itself alive until every copy of its bytes is dropped.
struct Tracked {
    data: Vec<u8>,
    live: Arc<Live>,
}

impl Tracked {
    fn new(data: Vec<u8>, live: Arc<Live>) -> Self {
        let now = live.now.fetch_add(data.len(), Ordering::SeqCst) + data.len();
        live.peak.fetch_max(now, Ordering::SeqCst);
        Tracked { data, live }
    }
}

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.now.fetch_sub(self.data.len(), Ordering::SeqCst);
    }
}

/// A generated body of `len` bytes: chunk `i` is `CHUNK` bytes of `i % 251`. Only the chunk
/// being handed over exists until the transport takes it.
struct Generated {
    left: u64,
    index: u64,
    live: Arc<Live>,
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let len = self.left.min(CHUNK as u64) as usize;
        let byte = (self.index % 251) as u8;
        self.left -= len as u64;
        self.index += 1;
        let chunk = Tracked::new(vec![byte; len], self.live.clone());
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_owner(chunk)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// The sum of the bytes a generated body of `len` bytes carries.
fn expected_sum(len: u64) -> u64 {
    let mut sum = 0;
    let mut left = len;
    let mut index = 0u64;
    while left > 0 {
        let n = left.min(CHUNK as u64);
        sum += n * (index % 251);
        left -= n;
        index += 1;
    }
    sum
}

/// What the server received in one request.
#[derive(Clone, Debug)]
struct Upload {
    len: u64,
    sum: u64,
    content_length: Option<String>,
    key: Option<String>,
}

/// A server on 127.0.0.1 that reads each body to its end, counting and summing its bytes
/// without keeping them, then answers 503 to the first `failures` requests and 200 after.
async fn upload_server(failures: u32) -> (String, Arc<Mutex<Vec<Upload>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/upload", listener.local_addr().unwrap());
    let uploads: Arc<Mutex<Vec<Upload>>> = Arc::default();
    let seen = uploads.clone();
    let count = Arc::new(AtomicU32::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, count) = (seen.clone(), count.clone());
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (seen, count) = (seen.clone(), count.clone());
                async move {
                    let header = |name: &str| {
                        req.headers()
                            .get(name)
                            .map(|v| v.to_str().unwrap().to_owned())
                    };
                    let mut upload = Upload {
                        len: 0,
                        sum: 0,
                        content_length: header("content-length"),
                        key: header("idempotency-key"),
                    };
                    let mut body = req.into_body();
                    while let Some(frame) = body.frame().await {
                        let Ok(frame) = frame else { break };
                        if let Ok(data) = frame.into_data() {
                            upload.len += data.len() as u64;
                            upload.sum += data.iter().map(|&b| u64::from(b)).sum::<u64>();
                        }
                    }
                    seen.lock().unwrap().push(upload);
                    let status = if count.fetch_add(1, Ordering::SeqCst) < failures {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    };
                    let mut response = Response::new(Empty::<Bytes>::new());
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
    (url, uploads)
}

/// A source of generated bodies of `len` bytes, counting how often it was asked for one.
fn generated_source(len: u64, live: Arc<Live>, opened: Arc<AtomicU32>) -> BodySource {
    BodySource::new(move || {
        opened.fetch_add(1, Ordering::SeqCst);
        let live = live.clone();
        async move {
            Ok::<_, Infallible>(Generated {
                left: len,
                index: 0,
                live,
            })
        }
    })
}

/// The stack the upload tests use: the general preset with no real waits worth the name and
/// room for a large body over a debug build's loopback.
fn stack() -> Outbound {
    Outbound::new()
        .retry(RetryLayer::new().base_delay(Duration::from_millis(1)))
        .attempt_timeout(Some(Duration::from_secs(300)))
        .deadline(None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_megabyte_upload_survives_a_503_without_being_held_in_memory() {
    let (url, uploads) = upload_server(1).await;
    let live = Arc::new(Live::default());
    let opened = Arc::new(AtomicU32::new(0));
    let source = generated_source(HUNDRED_MB, live.clone(), opened.clone())
        .content_length(HUNDRED_MB)
        .describe("generated: 100 MiB");
    let client = stack().service(Client::builder(TokioExecutor::new()).build_http());

    let request = Request::post(&url).body(ReplayBody::from(source)).unwrap();
    let response = client.oneshot(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(opened.load(Ordering::SeqCst), 2, "one body per attempt");
    let uploads = uploads.lock().unwrap().clone();
    assert_eq!(uploads.len(), 2, "the 503, then the retry");
    for upload in &uploads {
        assert_eq!(upload.len, HUNDRED_MB, "every attempt sends the whole body");
        assert_eq!(upload.sum, expected_sum(HUNDRED_MB), "and the same bytes");
        assert_eq!(
            upload.content_length.as_deref(),
            Some("104857600"),
            "a declared length goes out as Content-Length"
        );
    }
    assert!(
        uploads[0].key.is_some(),
        "a POST carries a key to be retried"
    );
    assert_eq!(uploads[0].key, uploads[1].key, "the same key on the retry");
    // What was held at once: the chunks in the transport's buffers, not the body.
    let peak = live.peak.load(Ordering::SeqCst);
    eprintln!("most of the body alive at once: {peak} bytes");
    assert!(
        peak <= 4 * 1024 * 1024,
        "at most 4 MiB of the body held at once, not {peak} bytes"
    );
    assert_eq!(
        live.now.load(Ordering::SeqCst),
        0,
        "every chunk was released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_without_a_length_is_sent_chunked_and_retried() {
    let (url, uploads) = upload_server(2).await;
    let live = Arc::new(Live::default());
    let opened = Arc::new(AtomicU32::new(0));
    let len = 3 * CHUNK as u64 + 17;
    let body = ReplayBody::from(generated_source(len, live, opened.clone()));
    let client = stack().service(Client::builder(TokioExecutor::new()).build_http());

    let response = client
        .oneshot(Request::put(&url).body(body).unwrap())
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(opened.load(Ordering::SeqCst), 3);
    let uploads = uploads.lock().unwrap().clone();
    assert_eq!(uploads.len(), 3);
    for upload in &uploads {
        assert_eq!((upload.len, upload.sum), (len, expected_sum(len)));
        assert_eq!(upload.content_length, None, "unknown length: chunked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_makes_more_than_it_declared_fails_the_attempt_instead_of_sending_it() {
    let (url, uploads) = upload_server(0).await;
    let live = Arc::new(Live::default());
    let opened = Arc::new(AtomicU32::new(0));
    // Declares 10 bytes short of what it makes.
    let source =
        generated_source(CHUNK as u64, live, opened.clone()).content_length(CHUNK as u64 - 10);
    let client = stack().service(Client::builder(TokioExecutor::new()).build_http());

    let result = client
        .oneshot(Request::put(&url).body(ReplayBody::from(source)).unwrap())
        .await;

    let err = result.unwrap_err();
    assert_eq!(err.kind(), Kind::Body, "{err:?}");
    assert_eq!(
        opened.load(Ordering::SeqCst),
        1,
        "a lying source is not retried"
    );
    let uploads = uploads.lock().unwrap().clone();
    assert!(
        uploads.iter().all(|u| u.len < CHUNK as u64 - 10),
        "the server never got a complete body: {uploads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_of_an_upload_says_how_its_body_is_made_again() {
    let (url, uploads) = upload_server(u32::MAX).await;
    let live = Arc::new(Live::default());
    let opened = Arc::new(AtomicU32::new(0));
    let source = generated_source(2 * CHUNK as u64, live, opened.clone())
        .content_length(2 * CHUNK as u64)
        .describe("s3://exports/2026-12-06/report.csv");
    let sink = MemorySink::new();
    let stack = stack()
        .retry(
            RetryLayer::new()
                .max_attempts(2)
                .base_delay(Duration::from_millis(1)),
        )
        .dead_letters(Some(DeadLetterLayer::new(sink.clone())));
    let client = stack.service(Client::builder(TokioExecutor::new()).build_http());

    let response = client
        .oneshot(Request::post(&url).body(ReplayBody::from(source)).unwrap())
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    assert_eq!(uploads.lock().unwrap().len(), 2);
    let letters = sink.letters();
    assert_eq!(letters.len(), 1, "one call, one letter");
    let letter = &letters[0];
    assert!(!letter.body_kept);
    assert_eq!(letter.body, None);
    assert_eq!(
        letter.body_missing,
        Some(MissingBody::Source {
            description: Some("s3://exports/2026-12-06/report.csv".to_owned()),
            len: Some(2 * CHUNK as u64),
        })
    );
    assert!(
        letter.to_request().is_none(),
        "it cannot be replayed as it is"
    );
    let json = serde_json::to_string(letter).unwrap();
    assert!(
        json.contains(r#""body_missing":{"reason":"source","description":"s3://exports/2026-12-06/report.csv""#),
        "{json}"
    );
}

#[tokio::test]
async fn a_dead_letter_of_a_stream_over_the_limit_says_it_was_not_kept() {
    let sink = MemorySink::new();
    let client = tower::ServiceBuilder::new()
        .layer(DeadLetterLayer::new(sink.clone()).max_body(4))
        .service(tower::service_fn(|req: Request<ReplayBody>| async move {
            let _ = req.into_body().collect().await;
            Ok::<_, Infallible>(
                Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .body(())
                    .unwrap(),
            )
        }));

    let body = Full::new(Bytes::from_static(b"longer than four bytes"));
    let _ = client
        .oneshot(Request::post("http://api.example.com/").body(body).unwrap())
        .await
        .unwrap();

    let letters = sink.letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].body_missing, Some(MissingBody::Streamed));
}

#[tokio::test]
async fn a_source_that_cannot_open_its_body_fails_the_call_as_a_body_error() {
    let opened = Arc::new(AtomicU32::new(0));
    let counted = opened.clone();
    let body = ReplayBody::from_fn(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            Err::<Full<Bytes>, _>(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "upload.bin: no such file",
            ))
        }
    });
    let client = Outbound::new().service(tower::service_fn(|req: Request<ReplayBody>| async {
        req.into_body().collect().await?;
        Ok::<_, tower_outbound::BoxError>(Response::new(()))
    }));

    let err = client
        .oneshot(Request::post("http://api.example.com/").body(body).unwrap())
        .await
        .unwrap_err();

    assert_eq!(
        opened.load(Ordering::SeqCst),
        1,
        "an unreadable source is not retried"
    );
    assert_eq!(err.kind(), Kind::Body);
    assert!(
        format!("{err:?}").contains("no such file"),
        "the source's error is kept: {err:?}"
    );
}

#[tokio::test]
async fn a_body_source_is_not_read_into_memory_by_the_buffer() {
    let opened = Arc::new(AtomicU32::new(0));
    let counted = opened.clone();
    let body = ReplayBody::from_fn(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Full::new(Bytes::from_static(b"abc"))) }
    });

    let mut buffered = Buffer::new(body, 1).await.unwrap();

    assert!(matches!(buffered, Buffered::Source(_)));
    assert!(buffered.is_replayable(), "a source makes the body again");
    assert_eq!(
        opened.load(Ordering::SeqCst),
        0,
        "the buffer did not open it"
    );
    for _ in 0..2 {
        let body = buffered.take_attempt().unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
    }
    assert_eq!(opened.load(Ordering::SeqCst), 2);
}
