//! Regression tests for hostile servers and bad input: secrets kept out of logs, errors and
//! dead letters; one upstream unable to stop the others; settings that cannot panic; letters
//! never lost when the caller goes away. Each test is named for what broke.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{Reply, ScriptedServer};
use tokio::sync::Semaphore;
use tower::{ServiceBuilder, ServiceExt};
use tower_outbound::body::ReplayBody;
use tower_outbound::circuit::Window;
use tower_outbound::dead_letter::{
    replay, replay_matching, BoxFuture, DeadLetter, Recorded, Sink, SinkError,
};
use tower_outbound::partition::Scope;
use tower_outbound::retry::RetryBudget;
use tower_outbound::{
    CircuitBreakerLayer, CircuitState, DeadLetterLayer, Error, MemorySink, Outbound,
    RetryAfterLayer, RetryLayer,
};

const YEAR: u64 = 365 * 24 * 3600;

fn reply(status: u16) -> Response<()> {
    Response::builder().status(status).body(()).unwrap()
}

fn reply_with(status: u16, name: &str, value: &str) -> Response<()> {
    Response::builder()
        .status(status)
        .header(name, value)
        .body(())
        .unwrap()
}

fn get(uri: &str) -> Request<String> {
    Request::get(uri).body(String::new()).unwrap()
}

/// Log lines written while `f` runs, as text.
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let buffer = buffer.clone();
            move || LogWriter(buffer.clone())
        };
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .finish();
        (Logs(buffer), tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ---- Secrets ----

#[tokio::test(start_paused = true)]
async fn uri_secrets_stay_out_of_dead_letters_logs_and_errors() {
    let (logs, _guard) = Logs::capture();
    let sink = MemorySink::new();
    let down = tower::service_fn(|_req: Request<ReplayBody>| async {
        Ok::<_, std::io::Error>(reply(503))
    });
    let client = Outbound::background()
        .dead_letters(Some(DeadLetterLayer::new(sink.clone())))
        .service(down);
    let uri =
        "https://bob:hunter2@api.example.com/v1/items?page=2&api_key=sk_live_SECRET&sig=SIGNED";
    let response = client.clone().oneshot(get(uri)).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    let letters = sink.letters();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        letter.uri,
        "https://api.example.com/v1/items?page=2&api_key=[redacted]&sig=[redacted]"
    );
    assert!(letter.uri_redacted);
    assert!(
        letter.to_request().is_none(),
        "a redacted URI is not replayed as is"
    );
    let stored = serde_json::to_string(letter).unwrap();
    let logged = logs.text();
    for secret in ["hunter2", "bob", "sk_live_SECRET", "SIGNED"] {
        assert!(!stored.contains(secret), "letter holds {secret}: {stored}");
        assert!(!logged.contains(secret), "logs hold {secret}: {logged}");
    }
    assert!(
        logged.contains("retrying request"),
        "the retry log line was checked"
    );

    // An error's text and debug form carry the upstream without userinfo.
    let refused = tower::service_fn(|_req: Request<ReplayBody>| async {
        Err::<Response<()>, _>(std::io::Error::other("connection refused"))
    });
    let err = Outbound::user_facing()
        .service(refused)
        .oneshot(get(uri))
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("hunter2") && !text.contains("bob@"),
        "{text}"
    );
    assert_eq!(err.upstream().unwrap().as_str(), "api.example.com");
}

#[tokio::test(start_paused = true)]
async fn secret_uris_are_kept_only_when_asked() {
    let sink = MemorySink::new();
    let down = tower::service_fn(|_req: Request<ReplayBody>| async {
        Ok::<_, std::io::Error>(reply(500))
    });
    let layer = DeadLetterLayer::new(sink.clone()).keep_secret_uris(true);
    let client = ServiceBuilder::new().layer(layer).service(down);
    client
        .oneshot(get("https://api.example.com/x?token=abc"))
        .await
        .unwrap();
    let letter = &sink.letters()[0];
    assert_eq!(letter.uri, "https://api.example.com/x?token=abc");
    assert!(!letter.uri_redacted);
    assert!(letter.to_request().is_some());
}

// ---- One upstream cannot stop the others ----

#[tokio::test]
async fn long_retry_after_from_one_upstream_does_not_block_another() {
    let hostile = ScriptedServer::start(vec![
        Reply::status(429).header("retry-after", YEAR.to_string())
    ])
    .await;
    let healthy = ScriptedServer::start(vec![]).await;
    let client = Outbound::new().service(Client::builder(TokioExecutor::new()).build_http());

    let first = client
        .clone()
        .oneshot(get(&hostile.url("/")))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);

    // The hostile host's own calls fail fast, with the server's real time...
    let err = client
        .clone()
        .oneshot(get(&hostile.url("/again")))
        .await
        .unwrap_err();
    assert!(err.is_rate_limited(), "{err}");
    assert!(err.retry_after().unwrap() > Duration::from_secs(YEAR - 60));
    assert_eq!(hostile.received().len(), 1);

    // ...and the other upstream is not touched by it.
    let other = client
        .clone()
        .oneshot(get(&healthy.url("/")))
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_servers_pause_never_closes_the_gate_past_its_cap() {
    let calls = Arc::new(AtomicU32::new(0));
    let upstream = tower::service_fn({
        let calls = calls.clone();
        move |_req: Request<String>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok::<_, std::io::Error>(if n == 0 {
                    reply_with(429, "retry-after", &YEAR.to_string())
                } else {
                    reply(200)
                })
            }
        }
    });
    let gate = RetryAfterLayer::new().max_pause(Duration::from_secs(15 * 60));
    let client = ServiceBuilder::new().layer(gate.clone()).service(upstream);
    let _ = client.clone().oneshot(get("http://a.example/")).await;
    assert_eq!(gate.closed_for(), Some(Duration::from_secs(15 * 60)));

    let err = client
        .clone()
        .oneshot(get("http://a.example/"))
        .await
        .unwrap_err();
    assert!(
        err.retry_after().unwrap() > Duration::from_secs(YEAR - 60),
        "the caller is told the server's own time"
    );

    tokio::time::advance(Duration::from_secs(15 * 60)).await;
    let response = client
        .clone()
        .oneshot(get("http://a.example/"))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the gate opened at its cap"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_call_refused_by_the_gate_neither_succeeds_nor_passes_a_probe() {
    // Two 503s asking for a 100 s pause open the breaker and close the gate.
    let upstream = tower::service_fn(|_req: Request<String>| async {
        Ok::<_, std::io::Error>(reply_with(503, "retry-after", "100"))
    });
    let breaker = CircuitBreakerLayer::new()
        .minimum_calls(2)
        .half_open_probes(1)
        .open_duration(Duration::from_secs(10));
    let client = ServiceBuilder::new()
        .layer(breaker.clone())
        .layer(RetryAfterLayer::new().max_wait(Duration::ZERO))
        .service(upstream);
    let uri = "http://a.example/";
    let _ = client.clone().oneshot(get(uri)).await.unwrap();
    // The second call meets the closed gate: refused, and not counted.
    let refused = client.clone().oneshot(get(uri)).await.unwrap_err();
    assert!(refused.is_refusal());
    assert_eq!(breaker.stats().successes(), 0, "a refusal is no success");
    assert_eq!(breaker.state(), CircuitState::Closed);

    // Open the breaker through another upstream's failures (the gate is per upstream).
    let other = "http://b.example/";
    let breaker_global = CircuitBreakerLayer::new()
        .minimum_calls(1)
        .half_open_probes(1)
        .open_duration(Duration::from_secs(10))
        .partition(Scope::Global);
    let failing_then_gated = tower::service_fn(|req: Request<String>| async move {
        Ok::<_, std::io::Error>(if req.uri().host() == Some("b.example") {
            reply(500)
        } else {
            reply_with(503, "retry-after", "100")
        })
    });
    let client = ServiceBuilder::new()
        .layer(breaker_global.clone())
        .layer(RetryAfterLayer::new().max_wait(Duration::ZERO))
        .service(failing_then_gated);
    let _ = client.clone().oneshot(get(uri)).await.unwrap(); // closes a's gate; 503 opens
    assert_eq!(breaker_global.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    // Half-open: the one probe goes to a, whose gate is still closed: refused, permit back.
    let refused = client.clone().oneshot(get(uri)).await.unwrap_err();
    assert!(refused.is_rate_limited(), "{refused}");
    assert_eq!(
        breaker_global.state(),
        CircuitState::HalfOpen,
        "a refused probe must not close the breaker"
    );
    // The permit came back: a real probe to b is let through (and fails).
    let response = client.clone().oneshot(get(other)).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(breaker_global.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn retries_during_an_outage_are_capped_by_the_retry_budget() {
    let attempts = Arc::new(AtomicU32::new(0));
    let down = tower::service_fn({
        let attempts = attempts.clone();
        move |_req: Request<ReplayBody>| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(reply(503)) }
        }
    });
    let outbound = Outbound::new()
        .circuit_breaker(None)
        .retry(RetryLayer::new().rng_seed(3))
        .retry_budget(Some(RetryBudget::new().min_per_second(0)));
    let stats = outbound.retry_stats();
    let client = outbound.service(down);
    for _ in 0..100 {
        let response = client
            .clone()
            .oneshot(get("http://down.example/"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let attempts = attempts.load(Ordering::SeqCst);
    // Without a budget: 400 attempts. With 20 %: at most 100 calls + 20 retries.
    assert!(attempts <= 120, "{attempts} attempts");
    assert!(attempts > 100, "some retries were still made");
    assert!(stats.budget_exhausted() > 0);
}

#[tokio::test(start_paused = true)]
async fn one_upstreams_outage_does_not_spend_anothers_retry_budget() {
    let attempts_b = Arc::new(AtomicU32::new(0));
    let upstream = tower::service_fn({
        let attempts_b = attempts_b.clone();
        move |req: Request<ReplayBody>| {
            let b = req.uri().host() == Some("b.example");
            if b {
                attempts_b.fetch_add(1, Ordering::SeqCst);
            }
            async move { Ok::<_, std::io::Error>(reply(503)) }
        }
    });
    let client = Outbound::new()
        .circuit_breaker(None)
        .retry_budget(Some(RetryBudget::new().min_per_second(0).ratio(0.5)))
        .service(upstream);
    for _ in 0..50 {
        let _ = client.clone().oneshot(get("http://a.example/")).await;
    }
    // b's first two calls deposit 2 × 0.5: one retry is affordable on b.
    let _ = client.clone().oneshot(get("http://b.example/")).await;
    let _ = client.clone().oneshot(get("http://b.example/")).await;
    assert!(
        attempts_b.load(Ordering::SeqCst) >= 3,
        "b kept its own budget"
    );
}

// ---- Settings that cannot panic ----

#[tokio::test(start_paused = true)]
async fn extreme_breaker_settings_do_not_panic() {
    let down = tower::service_fn(|_req: Request<()>| async { Ok::<_, std::io::Error>(reply(500)) });
    for window in [
        Window::Count(u32::MAX),
        Window::Time {
            length: Duration::MAX,
            buckets: u32::MAX,
        },
    ] {
        let breaker = CircuitBreakerLayer::new()
            .window(window)
            .minimum_calls(1)
            .open_duration(Duration::MAX)
            .open_backoff(f32::MAX, Duration::MAX)
            .slow_call(Duration::MAX, f32::NAN)
            .failure_rate_threshold(f32::INFINITY);
        let client = ServiceBuilder::new().layer(breaker.clone()).service(down);
        let _ = client.clone().oneshot(Request::new(())).await;
        assert_eq!(breaker.state(), CircuitState::Open);
        let err = client.clone().oneshot(Request::new(())).await.unwrap_err();
        assert!(err.is_circuit_open());
        assert!(err.to_string().contains("next probe in"));
    }
    // The probe path multiplies the open time: huge factors saturate at the cap.
    let breaker = CircuitBreakerLayer::new()
        .minimum_calls(1)
        .half_open_probes(1)
        .open_duration(Duration::from_secs(1))
        .open_backoff(f32::MAX, Duration::MAX);
    let client = ServiceBuilder::new().layer(breaker.clone()).service(down);
    for _ in 0..3 {
        let _ = client.clone().oneshot(Request::new(())).await;
        tokio::time::advance(Duration::from_secs(2)).await;
    }
    let _ = client.clone().oneshot(Request::new(())).await;
}

#[tokio::test(start_paused = true)]
async fn extreme_retry_and_gate_settings_do_not_panic() {
    let upstream = tower::service_fn(|_req: Request<ReplayBody>| async {
        Ok::<_, std::io::Error>(reply_with(429, "retry-after", &YEAR.to_string()))
    });
    let gate = RetryAfterLayer::new()
        .max_wait(Duration::MAX)
        .max_pause(Duration::MAX);
    let client = Outbound::new()
        .retry(
            RetryLayer::new()
                .base_delay(Duration::MAX)
                .max_delay(Duration::MAX)
                .max_total_delay(Duration::MAX)
                .max_retry_after(Duration::MAX)
                .retry_after_jitter(Duration::MAX)
                .max_attempts(u32::MAX),
        )
        .gate(gate.clone())
        .deadline(Some(Duration::MAX))
        .attempt_timeout(Some(Duration::MAX))
        .service(upstream);
    // The call sleeps on the server's year (paused clock) or gives up; it must not panic.
    let call = client.clone().oneshot(get("http://a.example/"));
    let _ = tokio::time::timeout(Duration::from_secs(10), call).await;
    assert!(gate.closed_for().unwrap() > Duration::from_secs(YEAR - 60));
    // The next call waits at the gate for up to its (clamped) year, without panicking.
    let call = client.clone().oneshot(get("http://a.example/"));
    assert!(tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .is_err());
}

// ---- Nothing lost ----

/// A sink that holds every write until a permit is added, and can be told to fail.
#[derive(Clone)]
struct GatedSink {
    letters: Arc<Mutex<Vec<DeadLetter>>>,
    permits: Arc<Semaphore>,
    fail: bool,
}

impl Default for GatedSink {
    fn default() -> Self {
        GatedSink {
            letters: Arc::default(),
            permits: Arc::new(Semaphore::new(0)),
            fail: false,
        }
    }
}

impl Sink for GatedSink {
    fn write(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            self.permits.acquire().await.unwrap().forget();
            if self.fail {
                return Err(SinkError::msg("disk full"));
            }
            self.letters.lock().unwrap().push(letter);
            Ok(())
        })
    }

    fn read_all(&self) -> BoxFuture<'_, Result<Vec<DeadLetter>, SinkError>> {
        Box::pin(async move { Ok(self.letters.lock().unwrap().clone()) })
    }

    fn remove<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<usize, SinkError>> {
        Box::pin(async move {
            let mut letters = self.letters.lock().unwrap();
            let before = letters.len();
            letters.retain(|l| !ids.contains(&l.id));
            Ok(before - letters.len())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_is_written_when_the_caller_drops_the_future() {
    let sink = GatedSink::default();
    let layer = DeadLetterLayer::new(sink.clone());
    let down = tower::service_fn(|_req: Request<ReplayBody>| async {
        Ok::<_, std::io::Error>(reply(503))
    });
    let client = ServiceBuilder::new().layer(layer.clone()).service(down);

    // The caller gives up while the letter is being written (a timeout, a select!).
    let call = client.clone().oneshot(
        Request::post("http://a.example/orders")
            .body(Full::new(Bytes::from("{}")))
            .unwrap(),
    );
    assert!(tokio::time::timeout(Duration::from_millis(5), call)
        .await
        .is_err());
    assert_eq!(layer.pending(), 1);

    sink.permits.add_permits(1);
    layer.flush().await;
    assert_eq!(layer.pending(), 0);
    let letters = sink.letters.lock().unwrap().clone();
    assert_eq!(letters.len(), 1, "the letter outlived its caller");
    assert_eq!(letters[0].body.as_ref().unwrap().to_bytes().unwrap(), "{}");
    assert_eq!(layer.stats().written(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_sink_failure_is_reported_on_the_calls_receipt() {
    let sink = GatedSink {
        fail: true,
        ..GatedSink::default()
    };
    sink.permits.add_permits(10);
    let layer = DeadLetterLayer::new(sink.clone());
    let down = tower::service_fn(|req: Request<ReplayBody>| async move {
        if req.uri().path() == "/error" {
            Err(std::io::Error::other("reset"))
        } else {
            Ok(reply(503))
        }
    });
    let client = ServiceBuilder::new().layer(layer.clone()).service(down);

    let response = client
        .clone()
        .oneshot(get("http://a.example/"))
        .await
        .unwrap();
    let recorded = response.extensions().get::<Recorded>().unwrap();
    assert!(!recorded.stored, "the sink failed: the letter is not kept");

    let err: Error = client
        .clone()
        .oneshot(get("http://a.example/error"))
        .await
        .unwrap_err();
    assert!(!err.dead_letter().unwrap().stored);
    assert_eq!(layer.stats().write_failures(), 2);

    // A working sink says stored.
    let sink = MemorySink::new();
    let client = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(sink.clone()))
        .service(down);
    let response = client.oneshot(get("http://a.example/")).await.unwrap();
    let recorded = response.extensions().get::<Recorded>().unwrap();
    assert!(recorded.stored);
    assert_eq!(sink.letters()[0].id, recorded.id);
}

async fn one_letter(uri: &str) -> MemorySink {
    let sink = MemorySink::new();
    let down = tower::service_fn(|_req: Request<ReplayBody>| async {
        Ok::<_, std::io::Error>(reply(503))
    });
    ServiceBuilder::new()
        .layer(DeadLetterLayer::new(sink.clone()))
        .service(down)
        .oneshot(get(uri))
        .await
        .unwrap();
    assert_eq!(sink.letters().len(), 1);
    sink
}

#[tokio::test(start_paused = true)]
async fn replay_keeps_a_letter_answered_with_a_redirect() {
    let sink = one_letter("http://a.example/orders").await;
    let old = sink.letters()[0].clone();
    let redirect = tower::service_fn(|_req: Request<ReplayBody>| async {
        Ok::<_, std::io::Error>(reply_with(302, "location", "/login"))
    });
    let report = replay(&sink, redirect).await.unwrap();
    assert_eq!(report.succeeded, 0);
    assert_eq!(report.still_failing, 1);
    let letters = sink.letters();
    assert_eq!(
        letters.len(),
        1,
        "a 302 is not delivery: the letter is kept"
    );
    assert_eq!(letters[0].outcome.status, Some(302), "with the new outcome");
    assert_eq!(letters[0].uri, old.uri);
    assert_eq!(letters[0].attempts, old.attempts + 1);

    let ok = tower::service_fn(|_req: Request<ReplayBody>| async {
        Ok::<_, std::io::Error>(reply(204))
    });
    let report = replay(&sink, ok).await.unwrap();
    assert_eq!(report.succeeded, 1);
    assert!(sink.letters().is_empty());
}

#[tokio::test(start_paused = true)]
async fn replay_matching_refuses_letters_for_other_hosts() {
    let sink = one_letter("http://attacker.example/steal").await;
    let sent = Arc::new(AtomicU32::new(0));
    let service = tower::service_fn({
        let sent = sent.clone();
        move |_req: Request<ReplayBody>| {
            sent.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(reply(200)) }
        }
    });
    let report = replay_matching(&sink, service, |letter: &DeadLetter| {
        letter.uri.starts_with("http://api.example.com/")
    })
    .await
    .unwrap();
    assert_eq!(report.refused, 1);
    assert_eq!(report.replayed, 0);
    assert_eq!(
        sent.load(Ordering::SeqCst),
        0,
        "nothing was sent to the other host"
    );
    assert_eq!(sink.letters().len(), 1, "the refused letter is kept");
}

#[tokio::test(start_paused = true)]
async fn refused_calls_get_no_letter_when_refusals_are_not_recorded() {
    let sink = MemorySink::new();
    let upstream = tower::service_fn(|_req: Request<ReplayBody>| async {
        Ok::<_, std::io::Error>(reply_with(429, "retry-after", "3600"))
    });
    let client = Outbound::background()
        .dead_letters(Some(
            DeadLetterLayer::new(sink.clone()).record_refusals(false),
        ))
        .service(upstream);
    // The 429 itself is a failure worth a letter...
    let _ = client
        .clone()
        .oneshot(get("http://a.example/"))
        .await
        .unwrap();
    // ...the calls the closed gate refuses afterwards are not.
    for _ in 0..5 {
        assert!(client
            .clone()
            .oneshot(get("http://a.example/"))
            .await
            .unwrap_err()
            .is_refusal());
    }
    assert_eq!(sink.letters().len(), 1);
}

#[tokio::test]
async fn the_background_preset_keeps_one_upstreams_trouble_to_itself() {
    let hostile = ScriptedServer::start(
        (0..3)
            .map(|_| Reply::status(503).header("retry-after", "600"))
            .collect(),
    )
    .await;
    let healthy = ScriptedServer::start(vec![]).await;
    let client = Outbound::background().service(Client::builder(TokioExecutor::new()).build_http());
    let response = client
        .clone()
        .oneshot(get(&hostile.url("/")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ok = client
        .clone()
        .oneshot(get(&healthy.url("/")))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}
