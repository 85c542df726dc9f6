//! Dead letters: what is recorded, the JSON Lines file on real files, and replay.

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_outbound::body::ReplayBody;
use tower_outbound::dead_letter::{replay, DeadLetter, StoredBody};
use tower_outbound::error::Kind;
use tower_outbound::{DeadLetterLayer, Error, JsonLinesSink, MemorySink, Sink};

type Seen = Arc<Mutex<Vec<(String, Bytes, Option<String>)>>>;

/// An upstream that answers each path with a fixed status (`/ok` 200, `/bad` 400, `/down`
/// 503 until `recovered`, then 200, `/boom` a transport error) and records what it received.
fn upstream_that(
    recovered: bool,
) -> (
    impl tower::Service<
            Request<ReplayBody>,
            Response = Response<()>,
            Error = Error,
            Future = impl Send,
        > + Clone,
    Seen,
) {
    let seen: Seen = Arc::default();
    let recorded = seen.clone();
    let service = tower::service_fn(move |req: Request<ReplayBody>| {
        let recorded = recorded.clone();
        async move {
            let path = req.uri().path().to_owned();
            let key = req
                .headers()
                .get("idempotency-key")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            recorded.lock().unwrap().push((path.clone(), body, key));
            let status = match path.as_str() {
                "/bad" => StatusCode::BAD_REQUEST,
                "/down" if !recovered => StatusCode::SERVICE_UNAVAILABLE,
                "/boom" => return Err(Error::new(Kind::Transport)),
                _ => StatusCode::OK,
            };
            Ok(Response::builder().status(status).body(()).unwrap())
        }
    });
    (service, seen)
}

fn upstream() -> (
    impl tower::Service<
            Request<ReplayBody>,
            Response = Response<()>,
            Error = Error,
            Future = impl Send,
        > + Clone,
    Seen,
) {
    upstream_that(false)
}

/// The upstream once "/down" is back; "/boom" still fails.
fn recovered() -> (
    impl tower::Service<
            Request<ReplayBody>,
            Response = Response<()>,
            Error = Error,
            Future = impl Send,
        > + Clone,
    Seen,
) {
    upstream_that(true)
}

fn post(path: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::post(format!("https://api.example.com{path}"))
        .header("authorization", "Bearer sk_live_secret")
        .header("x-api-key", "key-123")
        .header("idempotency-key", "idem-1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

#[tokio::test]
async fn a_final_failure_is_recorded_with_secrets_redacted_and_the_exact_body() {
    let (upstream, _) = upstream();
    let sink = MemorySink::new();
    let layer = DeadLetterLayer::new(sink.clone());
    let stats = layer.stats();
    let svc = ServiceBuilder::new().layer(layer).service(upstream);

    let mut sensitive = post("/down", br#"{"amount":42}"#);
    let mut cookie = HeaderValue::from_static("session=abc");
    cookie.set_sensitive(true);
    sensitive.headers_mut().insert("x-session", cookie);
    let response = svc.clone().oneshot(sensitive).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    let letters = sink.letters();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.method, "POST");
    assert_eq!(letter.uri, "https://api.example.com/down");
    assert_eq!(
        letter.body,
        Some(StoredBody::Text(r#"{"amount":42}"#.to_owned()))
    );
    assert!(letter.body_kept);
    assert_eq!(letter.idempotency_key.as_deref(), Some("idem-1"));
    assert_eq!(letter.outcome.status, Some(503));
    assert_eq!(letter.attempts, 1);
    let value = |name: &str| {
        letter
            .headers
            .iter()
            .find(|h| h.name == name)
            .and_then(|h| h.value.clone())
    };
    assert_eq!(value("authorization").as_deref(), Some("[redacted]"));
    assert_eq!(value("x-api-key").as_deref(), Some("[redacted]"));
    assert_eq!(value("x-session").as_deref(), Some("[redacted]"));
    assert_eq!(value("content-type").as_deref(), Some("application/json"));
    let json = serde_json::to_string(letter).unwrap();
    assert!(!json.contains("sk_live_secret") && !json.contains("key-123") && !json.contains("abc"));
    assert_eq!(stats.written(), 1);
}

#[tokio::test]
async fn successes_and_client_errors_are_not_recorded_but_errors_are() {
    let (upstream, _) = upstream();
    let sink = MemorySink::new();
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(sink.clone()))
        .service(upstream);

    svc.clone().oneshot(post("/ok", b"{}")).await.unwrap();
    svc.clone().oneshot(post("/bad", b"{}")).await.unwrap();
    assert!(sink.letters().is_empty());

    let err = svc.clone().oneshot(post("/boom", b"{}")).await.unwrap_err();
    assert!(err.is_transport());
    let letters = sink.letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].outcome.error_kind.as_deref(), Some("transport"));
    assert_eq!(letters[0].outcome.status, None);
}

#[tokio::test]
async fn a_body_over_the_limit_is_sent_whole_and_its_letter_says_it_was_not_kept() {
    let (upstream, seen) = upstream();
    let sink = MemorySink::new();
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(sink.clone()).max_body(4))
        .service(upstream);

    svc.oneshot(post("/down", b"0123456789")).await.unwrap();

    assert_eq!(seen.lock().unwrap()[0].1, "0123456789");
    let letter = &sink.letters()[0];
    assert!(!letter.body_kept);
    assert_eq!(letter.body, None);
    assert!(letter.to_request().is_none(), "cannot be replayed as it is");
}

#[tokio::test]
async fn binary_bodies_and_header_values_round_trip() {
    let letter_json = {
        let (upstream, _) = upstream();
        let sink = MemorySink::new();
        let svc = ServiceBuilder::new()
            .layer(DeadLetterLayer::new(sink.clone()))
            .service(upstream);
        let mut request = post("/down", b"\xff\x00\xfe binary");
        request
            .headers_mut()
            .insert("x-raw", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        svc.oneshot(request).await.unwrap();
        serde_json::to_string(&sink.letters()[0]).unwrap()
    };
    let letter: DeadLetter = serde_json::from_str(&letter_json).unwrap();
    assert!(matches!(letter.body, Some(StoredBody::Base64(_))));
    let request = letter.to_request().unwrap();
    assert_eq!(request.headers()["x-raw"].as_bytes(), b"caf\xe9");
    assert!(
        request.headers().get("authorization").is_none(),
        "redacted headers are not resent"
    );
    assert_eq!(request.headers()["idempotency-key"], "idem-1");
    let body = request.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, &b"\xff\x00\xfe binary"[..]);
}

#[tokio::test]
async fn json_lines_records_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("letters").join("dead.jsonl");
    let (upstream, _) = upstream();
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(JsonLinesSink::new(&path)))
        .service(upstream);
    for _ in 0..3 {
        svc.clone().oneshot(post("/down", b"{}")).await.unwrap();
    }
    // Written and synced before each call returned: a fresh reader sees all three.
    let reopened = JsonLinesSink::new(&path);
    assert_eq!(reopened.read_all().await.unwrap().len(), 3);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 3);
    assert!(text.ends_with('\n'));
}

#[tokio::test]
async fn a_drained_dead_letter_file_is_compacted_whatever_the_count() {
    // 203 letters and their tombstones stayed on disk once replayed: under the compaction
    // threshold of 1,024 garbage lines, the drained file was never rewritten.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    let (upstream, _) = upstream();
    let sink = JsonLinesSink::new(&path);
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(sink.clone()))
        .service(upstream);
    for _ in 0..203 {
        svc.clone().oneshot(post("/down", b"{}")).await.unwrap();
    }
    let ids: Vec<String> = sink
        .read_all()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(ids.len(), 203);
    // Removed in groups, as a replay does: the file shrinks only once the last one is gone.
    for group in ids[..200].chunks(50) {
        assert_eq!(sink.remove(group).await.unwrap(), group.len());
    }
    assert!(std::fs::metadata(&path).unwrap().len() > 0);
    assert_eq!(sink.remove(&ids[200..]).await.unwrap(), 3);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "drained: empty");
    assert_eq!(sink.count().await.unwrap(), 0);
    // The emptied file takes new letters as before.
    svc.clone().oneshot(post("/down", b"{}")).await.unwrap();
    assert_eq!(JsonLinesSink::new(&path).read_all().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_torn_last_line_is_skipped_and_the_next_record_stays_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    let (upstream, _) = upstream();
    let sink = JsonLinesSink::new(&path);
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(sink.clone()))
        .service(upstream);
    for _ in 0..2 {
        svc.clone().oneshot(post("/down", b"{}")).await.unwrap();
    }
    // A crash in the middle of the next append.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(br#"{"version":1,"id":"torn","meth"#)
        .unwrap();
    drop(file);

    assert_eq!(sink.read_all().await.unwrap().len(), 2);
    assert_eq!(sink.skipped_lines(), 1);

    svc.clone().oneshot(post("/down", b"{}")).await.unwrap();
    assert_eq!(
        sink.read_all().await.unwrap().len(),
        3,
        "the new record is whole"
    );
}

#[tokio::test]
async fn a_damaged_middle_line_takes_no_other_record_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    let sink = JsonLinesSink::new(&path);
    let (upstream, _) = upstream();
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(sink.clone()))
        .service(upstream);
    svc.clone().oneshot(post("/down", b"1")).await.unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"not json at all\n")
        .unwrap();
    svc.clone().oneshot(post("/down", b"2")).await.unwrap();

    let letters = sink.read_all().await.unwrap();
    let bodies: Vec<_> = letters.iter().map(|l| l.body.clone()).collect();
    assert_eq!(
        bodies,
        vec![
            Some(StoredBody::Text("1".into())),
            Some(StoredBody::Text("2".into()))
        ]
    );
}

#[tokio::test]
async fn a_replay_stops_at_an_open_circuit_for_that_upstream_only() {
    let sink = MemorySink::new();
    let (down, _) = upstream();
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(sink.clone()))
        .service(down);
    let other = |body: &'static [u8]| {
        let mut request = post("/down", body);
        *request.uri_mut() = "https://other.example.com/down".parse().unwrap();
        request
    };
    for request in [
        post("/down", b"a"),
        other(b"x"),
        post("/down", b"b"),
        other(b"y"),
    ] {
        svc.clone().oneshot(request).await.unwrap();
    }
    // api.example.com's circuit is open: its calls are refused without being sent; the other
    // host answers.
    let sent = Arc::new(Mutex::new(Vec::new()));
    let seen = sent.clone();
    let open = tower::service_fn(move |req: Request<ReplayBody>| {
        let host = req.uri().host().unwrap().to_owned();
        seen.lock().unwrap().push(host.clone());
        async move {
            if host == "api.example.com" {
                Err(Error::new(Kind::CircuitOpen {
                    retry_in: std::time::Duration::from_secs(4),
                }))
            } else {
                Ok(Response::new(()))
            }
        }
    });
    let report = replay(&sink, open).await.unwrap();
    assert_eq!(
        *sent.lock().unwrap(),
        ["api.example.com", "other.example.com", "other.example.com"],
        "api.example.com's second letter was not sent"
    );
    assert_eq!(
        (
            report.replayed,
            report.succeeded,
            report.still_failing,
            report.deferred
        ),
        (3, 2, 1, 1)
    );
    assert_eq!(
        sink.count().await.unwrap(),
        2,
        "both api.example.com letters kept"
    );
}

#[tokio::test]
async fn replay_removes_exactly_the_letters_that_now_succeed_and_keeps_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let sink = JsonLinesSink::new(dir.path().join("dead.jsonl"));
    let (down, _) = upstream();
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(sink.clone()))
        .service(down);
    svc.clone().oneshot(post("/down", b"a")).await.unwrap();
    svc.clone().oneshot(post("/down", b"b")).await.unwrap();
    svc.clone().oneshot(post("/boom", b"c")).await.unwrap_err();
    assert_eq!(sink.count().await.unwrap(), 3);

    // Now "/down" works again and "/boom" still fails; replay through the same kind of stack.
    let (recovered, seen) = recovered();
    let replaying = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(sink.clone()))
        .service(recovered);

    let report = replay(&sink, replaying.clone()).await.unwrap();
    assert_eq!(
        (
            report.replayed,
            report.succeeded,
            report.still_failing,
            report.skipped
        ),
        (3, 2, 1, 0)
    );
    let left = sink.read_all().await.unwrap();
    assert_eq!(
        left.len(),
        1,
        "the failing one stays, and is not recorded twice"
    );
    assert_eq!(left[0].uri, "https://api.example.com/boom");
    let received = seen.lock().unwrap().clone();
    assert!(received
        .iter()
        .all(|(_, _, key)| key.as_deref() == Some("idem-1")));
    let bodies: Vec<&[u8]> = received.iter().map(|(_, b, _)| &b[..]).collect();
    assert_eq!(bodies, vec![&b"a"[..], b"b", b"c"]);

    // A second replay, through the layer, sends only what is left, and counts it.
    let layer = DeadLetterLayer::new(sink.clone());
    let again = layer.replay(replaying).await.unwrap();
    assert_eq!((again.replayed, again.succeeded), (1, 0));
    assert_eq!(
        (layer.stats().replayed(), layer.stats().replayed_ok()),
        (1, 0)
    );
    assert_eq!(layer.remaining().await.unwrap(), 1);
}

#[tokio::test]
async fn nothing_is_lost_across_a_crash_mid_write_and_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    let sink = JsonLinesSink::new(&path);
    let (down, _) = upstream();
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(sink.clone()))
        .service(down);
    let n = 10;
    for i in 0..n {
        let body: &'static [u8] = Box::leak(format!("event-{i}").into_bytes().into_boxed_slice());
        svc.clone()
            .oneshot(post(if i % 2 == 0 { "/down" } else { "/boom" }, body))
            .await
            .ok();
    }
    // The process dies while the last record is being written: its line is cut short.
    let full = std::fs::read(&path).unwrap();
    let cut = full.len() - 20;
    std::fs::write(&path, &full[..cut]).unwrap();

    let (up, _) = recovered();
    let report = replay(&sink, up).await.unwrap();
    let remaining = sink.read_all().await.unwrap().len();
    // Every intact record was either delivered or is still kept; the torn one is reported.
    assert_eq!(report.succeeded + remaining, n - 1);
    // The last record (a /boom one) was torn: the five /down letters are delivered, the four
    // intact /boom letters still fail and stay.
    assert_eq!(report.succeeded, 5);
    assert_eq!(remaining, 4);
    assert!(sink.skipped_lines() >= 1);
    // The torn fragment is kept in the file as it was, not silently dropped.
    let after = std::fs::read(&path).unwrap();
    let fragment = &full[cut - 30..cut];
    assert!(after.windows(fragment.len()).any(|w| w == fragment));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_produce_whole_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    let sink = JsonLinesSink::new(&path);
    let (down, _) = upstream();
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(sink.clone()))
        .service(down);
    let tasks: Vec<_> = (0..64)
        .map(|_| tokio::spawn(svc.clone().oneshot(post("/down", b"{\"x\":1}"))))
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(sink.read_all().await.unwrap().len(), 64);
    assert_eq!(sink.skipped_lines(), 0);
}

/// Through `Outbound` the dead-letter layer keeps no copy of the request head: the retry layer
/// inside hands it back with every failure. Each kind of failure must still give a letter
/// with the whole head (redacted), and a client error must not carry the head out.
#[tokio::test(start_paused = true)]
async fn outbound_letters_keep_the_whole_head_for_every_kind_of_failure() {
    let (upstream, _) = upstream();
    let sink = MemorySink::new();
    let svc = tower_outbound::Outbound::new()
        .retry(tower_outbound::RetryLayer::new().rng_seed(3))
        .retry_budget(None)
        .circuit_breaker(None)
        .dead_letters(Some(DeadLetterLayer::new(sink.clone())))
        .service(upstream);

    // Retried, then given up: a final 503 response.
    let response = svc
        .clone()
        .oneshot(post("/down", b"{\"a\":1}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    // A transport error, retried and given up.
    svc.clone().oneshot(post("/boom", b"{}")).await.unwrap_err();
    // Not repeatable (no key, and none added), failed at once.
    let (upstream, _) = self::upstream();
    let keyless = tower_outbound::Outbound::new()
        .idempotency(None)
        .circuit_breaker(None)
        .dead_letters(Some(DeadLetterLayer::new(sink.clone())))
        .service(upstream);
    let mut once = post("/down", b"{}");
    once.headers_mut().remove("idempotency-key");
    keyless.oneshot(once).await.unwrap();
    // A client error: no letter, and nothing of the head left in the response.
    let bad = svc.clone().oneshot(post("/bad", b"{}")).await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        bad.extensions().len(),
        0,
        "the response carries no request head"
    );

    let letters = sink.letters();
    assert_eq!(letters.len(), 3, "{letters:?}");
    for letter in &letters {
        let names: Vec<&str> = letter.headers.iter().map(|h| h.name.as_str()).collect();
        assert!(names.contains(&"content-type"), "{names:?}");
        let authorization = letter.headers.iter().find(|h| h.name == "authorization");
        assert_eq!(
            authorization.and_then(|h| h.value.as_deref()),
            Some("[redacted]")
        );
        assert_eq!(letter.method, "POST");
        assert!(letter.uri.starts_with("https://api.example.com/"));
    }
    assert_eq!(letters[0].attempts, 4, "the 503 was retried");
    assert_eq!(
        letters[0].body,
        Some(StoredBody::Text(r#"{"a":1}"#.to_owned())),
        "the body the retry layer kept is the letter's"
    );
    assert!(letters[0].body_kept);
    assert_eq!(letters[0].idempotency_key.as_deref(), Some("idem-1"));
    assert_eq!(letters[2].idempotency_key, None);
    assert_eq!(letters[2].attempts, 1);
}

/// A service that is not ready on every second `poll_ready` (it wakes the task at once), and
/// records the bodies it receives.
#[derive(Clone, Default)]
struct Hesitant {
    polls: Arc<std::sync::atomic::AtomicUsize>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

impl tower::Service<Request<ReplayBody>> for Hesitant {
    type Response = Response<()>;
    type Error = Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<()>, Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Error>> {
        let n = self.polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n % 2 == 1 {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody>) -> Self::Future {
        let bodies = self.bodies.clone();
        Box::pin(async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            bodies.lock().unwrap().push(body);
            Ok(Response::new(()))
        })
    }
}

#[tokio::test]
async fn a_body_read_while_the_inner_service_is_not_ready_is_still_sent() {
    let upstream = Hesitant::default();
    let sink = MemorySink::new();
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(sink.clone()))
        .service(upstream.clone());

    let response = svc.oneshot(post("/ok", b"hello")).await;

    assert!(response.is_ok(), "{response:?}");
    assert_eq!(
        *upstream.bodies.lock().unwrap(),
        vec![Bytes::from_static(b"hello")]
    );
    assert!(sink.letters().is_empty());
}

#[tokio::test(start_paused = true)]
async fn outbound_sends_a_body_too_large_to_keep_whole_and_its_letter_says_so() {
    let (upstream, seen) = upstream();
    let sink = MemorySink::new();
    let svc = tower_outbound::Outbound::new()
        .retry(tower_outbound::RetryLayer::new().max_buffered_body(4))
        .circuit_breaker(None)
        .dead_letters(Some(DeadLetterLayer::new(sink.clone())))
        .service(upstream);

    let response = svc.oneshot(post("/down", b"0123456789")).await.unwrap();

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().unwrap()[0].1, Bytes::from_static(b"0123456789"));
    let letters = sink.letters();
    assert_eq!(letters.len(), 1);
    assert!(!letters[0].body_kept);
    assert_eq!(letters[0].body, None);
    assert_eq!(letters[0].attempts, 1, "a body sent once is not retried");
}

/// A sink whose removals of letters fail, as a process that dies between a replay's write and
/// its removal would leave it.
struct RemovalsFail(MemorySink);

impl Sink for RemovalsFail {
    fn write(
        &self,
        letter: DeadLetter,
    ) -> tower_outbound::dead_letter::BoxFuture<
        '_,
        Result<(), tower_outbound::dead_letter::SinkError>,
    > {
        self.0.write(letter)
    }

    fn read_all(
        &self,
    ) -> tower_outbound::dead_letter::BoxFuture<
        '_,
        Result<Vec<DeadLetter>, tower_outbound::dead_letter::SinkError>,
    > {
        self.0.read_all()
    }

    fn remove<'a>(
        &'a self,
        ids: &'a [String],
    ) -> tower_outbound::dead_letter::BoxFuture<
        'a,
        Result<usize, tower_outbound::dead_letter::SinkError>,
    > {
        if ids.is_empty() {
            return self.0.remove(ids);
        }
        Box::pin(async {
            Err(tower_outbound::dead_letter::SinkError::msg(
                "the process died",
            ))
        })
    }
}

/// docs/design.md, "Nothing lost": a replay that still fails writes the new outcome before it
/// removes the old record, so a crash in between leaves the letter twice, never not at all.
#[tokio::test]
async fn a_replay_that_still_fails_writes_the_new_outcome_before_removing_the_old() {
    let memory = MemorySink::new();
    let (down, _) = upstream();
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(memory.clone()))
        .service(down);
    svc.oneshot(post("/down", b"event")).await.unwrap();
    assert_eq!(memory.count().await.unwrap(), 1);
    let old = memory.letters()[0].clone();

    let (still_down, _) = upstream();
    let sink = RemovalsFail(memory.clone());
    let _ = replay(&sink, still_down).await;
    let letters = memory.letters();
    assert!(
        letters.iter().any(|l| l.id == old.id),
        "the old record is kept when its removal fails"
    );
    assert_eq!(
        letters.len(),
        2,
        "and the new outcome was written first: {letters:?}"
    );
}
