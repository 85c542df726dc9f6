//! Callers that give up: futures dropped at seeded random points (before they are sent, while
//! they wait for the throttle, the gate or a retry, while they read the body, and right after
//! the final failure) must leave the shared state as the docs promise — no throttle slot kept
//! beyond what the throttle's docs allow, no half-open probe slot held, no retry beyond the
//! attempt cap or the budget, and no dead letter lost or half-written.
//!
//! Everything runs on the paused clock against a scripted `service_fn`, so each run is the same.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::Notify;
use tokio::time::{sleep, Instant, Sleep};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_outbound::body::ReplayBody;
use tower_outbound::circuit::Window;
use tower_outbound::classify::{classify_status, Outcome};
use tower_outbound::dead_letter::{DeadLetter, Recorded};
use tower_outbound::retry::RetryBudget;
use tower_outbound::{
    CircuitBreakerLayer, CircuitState, DeadLetterLayer, Error, JsonLinesSink, Outbound, RetryLayer,
    ThrottleLayer,
};

const MAX_ATTEMPTS: u32 = 3;
const RATE: u32 = 10;
const BURST: u32 = 3;
const CALLS: usize = 240;
const WAVE: usize = 6;

/// A response body that yields a few chunks, one every 50 ms.
struct SlowBody {
    left: u32,
    sleep: Pin<Box<Sleep>>,
}

impl SlowBody {
    fn new(chunks: u32) -> Self {
        SlowBody {
            left: chunks,
            sleep: Box::pin(sleep(Duration::from_millis(50))),
        }
    }
}

impl Body for SlowBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        std::task::ready!(self.sleep.as_mut().poll(cx));
        self.left -= 1;
        let next = Instant::now() + Duration::from_millis(50);
        self.sleep.as_mut().reset(next);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"chunk")))))
    }
}

/// The scripted upstream's record of what it saw.
#[derive(Default)]
struct Upstream {
    seed: u64,
    healthy: AtomicBool,
    /// When each attempt arrived.
    arrivals: Mutex<Vec<Instant>>,
    /// Attempts seen per idempotency key.
    attempts: Mutex<HashMap<String, u32>>,
    /// Keys whose final attempt the upstream answered with a failure: the retry layer cannot
    /// try again (the attempt cap, or a failure it does not retry), so a letter must exist.
    finals: Mutex<HashSet<String>>,
    /// Keys that always fail, and a signal when their final failure is answered.
    doomed: Mutex<HashMap<String, Arc<Notify>>>,
    in_flight: AtomicUsize,
}

/// What the upstream does with one attempt.
enum Answer {
    Status(StatusCode),
    Reset,
}

impl Upstream {
    fn answer(&self, key: &str, attempt: u32) -> (Answer, Duration) {
        if self.healthy.load(Ordering::SeqCst) {
            return (Answer::Status(StatusCode::OK), Duration::from_millis(10));
        }
        let mut rng =
            StdRng::seed_from_u64(self.seed ^ (u64::from(attempt) << 48) ^ fxhash(key.as_bytes()));
        let delay = Duration::from_millis(rng.random_range(0..400));
        if self.doomed.lock().unwrap().contains_key(key) {
            // A failure the retry layer does not retry: final at once, a letter is due.
            return (Answer::Status(StatusCode::NOT_IMPLEMENTED), delay);
        }
        let answer = match rng.random_range(0..100) {
            0..=64 => Answer::Status(StatusCode::OK),
            65..=76 => Answer::Status(StatusCode::SERVICE_UNAVAILABLE),
            77..=81 => Answer::Status(StatusCode::NOT_IMPLEMENTED),
            82..=87 => Answer::Status(StatusCode::TOO_MANY_REQUESTS),
            88..=93 => Answer::Status(StatusCode::BAD_REQUEST),
            _ => Answer::Reset,
        };
        (answer, delay)
    }

    /// Marks `key`'s final failure, when this attempt's answer is one; `true` then.
    fn settle(&self, key: &str, attempt: u32, answer: &Answer) -> bool {
        let outcome = match answer {
            Answer::Status(status) => classify_status(*status),
            Answer::Reset => Outcome::Transient,
        };
        let failed = matches!(
            outcome,
            Outcome::Transient | Outcome::RateLimited | Outcome::ServerError
        );
        let last = attempt >= MAX_ATTEMPTS || !outcome.is_retryable();
        if failed && last {
            self.finals.lock().unwrap().insert(key.to_owned());
        }
        failed && last
    }
}

fn fxhash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

type Client = tower::util::BoxCloneSyncService<Request<String>, Response<SlowBody>, Error>;

fn upstream_service(
    upstream: Arc<Upstream>,
) -> impl Service<
    Request<ReplayBody>,
    Response = Response<SlowBody>,
    Error = std::io::Error,
    Future = impl Future<Output = Result<Response<SlowBody>, std::io::Error>> + Send,
> + Clone
       + Send
       + Sync
       + 'static {
    tower::service_fn(move |req: Request<ReplayBody>| {
        let upstream = upstream.clone();
        async move {
            let key = req
                .headers()
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let attempt = {
                let mut attempts = upstream.attempts.lock().unwrap();
                let n = attempts.entry(key.clone()).or_default();
                *n += 1;
                *n
            };
            upstream.arrivals.lock().unwrap().push(Instant::now());
            upstream.in_flight.fetch_add(1, Ordering::SeqCst);
            let _ = req.into_body().collect().await;
            let (answer, delay) = upstream.answer(&key, attempt);
            sleep(delay).await;
            upstream.in_flight.fetch_sub(1, Ordering::SeqCst);
            let last = upstream.settle(&key, attempt, &answer);
            let doomed = upstream.doomed.lock().unwrap().get(&key).cloned();
            if let (Some(done), true) = (doomed, last) {
                done.notify_one();
            }
            match answer {
                Answer::Reset => Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset by the scripted upstream",
                )),
                Answer::Status(status) => {
                    let mut response = Response::new(SlowBody::new(4));
                    *response.status_mut() = status;
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        // Closes the gate: later callers wait there, and some give up.
                        response
                            .headers_mut()
                            .insert("retry-after", http::HeaderValue::from_static("1"));
                    }
                    Ok(response)
                }
            }
        }
    })
}

/// How a caller gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GiveUp {
    /// Makes the future and drops it unpolled.
    BeforeSend,
    /// Polls it once (the throttle and the breaker decide in `call`) and drops it.
    AfterOnePoll,
    /// Drops it after this long: while it waits for a slot, the gate, a retry, or an attempt.
    After(Duration),
    /// Gets the response, then drops it after reading part of the body.
    MidBody(Duration),
    /// Fails for good on its first attempt; dropped right after the upstream answered it.
    AfterFinalFailure,
    /// Waits for the result.
    Never,
}

/// What a caller ended with.
#[derive(Debug)]
enum Ended {
    Dropped,
    Succeeded,
    /// The call finally failed; its receipt.
    Failed(Option<Recorded>),
}

fn request(i: usize) -> Request<String> {
    Request::post("http://upstream.test/v1/things")
        .header("idempotency-key", format!("call-{i}"))
        .body(format!(r#"{{"thing":{i}}}"#))
        .unwrap()
}

async fn run_call(client: Client, upstream: Arc<Upstream>, i: usize, how: GiveUp) -> Ended {
    let mut future = Box::pin(client.oneshot(request(i)));
    let result = match how {
        GiveUp::BeforeSend => return Ended::Dropped,
        GiveUp::AfterOnePoll => {
            let _ = tokio::time::timeout(Duration::ZERO, &mut future).await;
            return Ended::Dropped;
        }
        GiveUp::After(wait) => match tokio::time::timeout(wait, &mut future).await {
            Ok(result) => result,
            Err(_) => return Ended::Dropped,
        },
        GiveUp::AfterFinalFailure => {
            let done = upstream.doomed.lock().unwrap()[&format!("call-{i}")].clone();
            tokio::select! {
                biased;
                result = &mut future => result,
                () = done.notified() => {
                    // The final answer is in: let the stack see it, then give up before the
                    // receipt of the letter comes back.
                    let _ = tokio::time::timeout(Duration::ZERO, &mut future).await;
                    return Ended::Dropped;
                }
            }
        }
        GiveUp::MidBody(_) | GiveUp::Never => future.await,
    };
    match result {
        Err(error) => Ended::Failed(error.dead_letter().cloned()),
        Ok(response) => {
            let failed = matches!(
                classify_status(response.status()),
                Outcome::Transient | Outcome::RateLimited | Outcome::ServerError
            );
            let receipt = response.extensions().get::<Recorded>().cloned();
            if let GiveUp::MidBody(wait) = how {
                let mut body = response.into_body();
                let _ = tokio::time::timeout(wait, async {
                    while let Some(frame) = body.frame().await {
                        let _ = frame;
                    }
                })
                .await;
                if !failed {
                    return Ended::Dropped;
                }
            }
            if failed {
                Ended::Failed(receipt)
            } else {
                Ended::Succeeded
            }
        }
    }
}

fn whole_letters(path: &Path) -> Vec<DeadLetter> {
    let text = std::fs::read(path).unwrap_or_default();
    assert!(text.is_empty() || text.ends_with(b"\n"), "torn last record");
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("every line is a whole record"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn callers_dropped_at_random_points_leave_no_slot_probe_budget_or_letter_behind() {
    for seed in [0x5eed, 1, 2, 3, 4, 5] {
        chaos_run(seed).await;
    }
}

/// One run of seeded callers and upstream; checks everything the docs promise.
async fn chaos_run(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("letters.jsonl");
    let letters = DeadLetterLayer::new(JsonLinesSink::new(&path));
    let letter_stats = letters.stats();
    let throttle = ThrottleLayer::new(RATE, Duration::from_secs(1))
        .burst(BURST)
        .max_wait(Duration::from_secs(2));
    let throttle_stats = throttle.stats();
    let breaker = CircuitBreakerLayer::new()
        .window(Window::Count(10))
        .minimum_calls(6)
        .failure_rate_threshold(0.7)
        .open_duration(Duration::from_secs(1))
        .half_open_probes(2);
    let retry = RetryLayer::new()
        .max_attempts(MAX_ATTEMPTS)
        .base_delay(Duration::from_millis(200))
        .rng_seed(seed);
    let retry_stats = retry.stats();
    let outbound = Outbound::background()
        .retry(retry)
        .retry_budget(Some(RetryBudget::new().ratio(0.5).min_per_second(2)))
        .throttle(Some(throttle))
        .circuit_breaker(Some(breaker))
        .dead_letters(Some(letters.clone()));
    let breaker = outbound.circuit_breaker_layer().unwrap().clone();
    let gate_stats = outbound.gate_stats();
    let upstream = Arc::new(Upstream {
        seed,
        ..Upstream::default()
    });
    let client: Client = Client::new(outbound.service(upstream_service(upstream.clone())));

    let mut rng = StdRng::seed_from_u64(seed);
    let mut plans = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let how = match rng.random_range(0..100) {
            0..=7 => GiveUp::BeforeSend,
            8..=15 => GiveUp::AfterOnePoll,
            16..=45 => GiveUp::After(Duration::from_millis(rng.random_range(0..2_500))),
            46..=55 => GiveUp::MidBody(Duration::from_millis(rng.random_range(0..150))),
            56..=65 => GiveUp::AfterFinalFailure,
            _ => GiveUp::Never,
        };
        if how == GiveUp::AfterFinalFailure {
            upstream
                .doomed
                .lock()
                .unwrap()
                .insert(format!("call-{i}"), Arc::new(Notify::new()));
        }
        plans.push(how);
    }

    let started = Instant::now();
    let mut ended = Vec::with_capacity(CALLS);
    for wave in plans.chunks(WAVE).enumerate() {
        let (w, hows) = wave;
        let mut tasks = tokio::task::JoinSet::new();
        for (j, how) in hows.iter().enumerate() {
            let i = w * WAVE + j;
            let (client, upstream, how) = (client.clone(), upstream.clone(), *how);
            tasks.spawn(async move { (i, how, run_call(client, upstream, i, how).await) });
        }
        while let Some(done) = tasks.join_next().await {
            ended.push(done.unwrap());
        }
        // Callers come at a steady pace, so an open breaker gets to probe again.
        sleep(Duration::from_millis(400)).await;
    }
    let elapsed = started.elapsed();
    letters.flush().await;

    // No letter lost or half-written: every one handed to the sink is in the file, whole.
    assert_eq!(letters.pending(), 0);
    let file = whole_letters(&path);
    assert_eq!(letter_stats.write_failures(), 0);
    assert_eq!(file.len() as u64, letter_stats.written());
    let mut by_key: HashMap<String, &DeadLetter> = HashMap::new();
    for letter in &file {
        let key = letter.idempotency_key.clone().expect("the key is kept");
        assert!(
            by_key.insert(key.clone(), letter).is_none(),
            "{key} recorded twice"
        );
    }
    let ids: HashSet<&str> = file.iter().map(|l| l.id.as_str()).collect();
    let mut dropped_after_final = 0;
    let finals = upstream.finals.lock().unwrap().clone();
    for (i, how, end) in &ended {
        let key = format!("call-{i}");
        match end {
            Ended::Failed(receipt) => {
                let receipt = receipt
                    .as_ref()
                    .unwrap_or_else(|| panic!("{key} ({how:?}) failed without a receipt"));
                assert!(receipt.stored, "{key}: {receipt:?}");
                assert!(
                    ids.contains(receipt.id.as_str()),
                    "{key}: receipt without a letter"
                );
                assert_eq!(by_key[&key].id, receipt.id);
            }
            Ended::Succeeded => assert!(
                !by_key.contains_key(&key),
                "{key} succeeded, yet has a letter"
            ),
            Ended::Dropped => {
                if finals.contains(&key) {
                    dropped_after_final += 1;
                }
            }
        }
        // Whatever the caller did, a call the upstream failed for the last time has its letter.
        if finals.contains(&key) {
            assert!(
                by_key.contains_key(&key),
                "{key} ({how:?}, {end:?}) finally failed and its letter is lost"
            );
        }
    }
    assert!(
        dropped_after_final >= 5,
        "too few callers dropped after the final failure to test it: {dropped_after_final}"
    );

    // No attempt beyond the cap, and every attempt after the first paid for by the budget
    // once: attempts that reached the upstream are at most one per call plus the retries the
    // retry layer made (each withdrawn from the budget when scheduled).
    let attempts = upstream.attempts.lock().unwrap().clone();
    assert!(
        attempts.values().all(|n| *n <= MAX_ATTEMPTS),
        "{attempts:?}"
    );
    let arrivals = upstream.arrivals.lock().unwrap().clone();
    let first_attempts = attempts.len() as u64;
    let retried_attempts = arrivals.len() as u64 - first_attempts;
    assert!(
        retried_attempts <= retry_stats.retries(),
        "{retried_attempts} retried attempts, {} retries paid for",
        retry_stats.retries()
    );
    // The budget: 50 % of calls plus 2 per second (over 10 s windows).
    let seconds = elapsed.as_secs() + 10;
    assert!(
        retry_stats.retries() <= retry_stats.calls() / 2 + 2 * seconds + 1,
        "retries {} over calls {} in {seconds} s",
        retry_stats.retries(),
        retry_stats.calls()
    );

    // The concurrency limit (on in the background preset) got every place back: from calls
    // that finished, and from callers dropped in flight or in its line.
    let key = tower_outbound::partition::PartitionKey::from("http://upstream.test:80");
    let limit = outbound
        .concurrency_layer()
        .unwrap()
        .limit_of(&key)
        .unwrap();
    assert_eq!((limit.in_flight, limit.queued), (0, 0), "{limit:?}");

    // The throttle was never looser than its rate: over any span, at most rate · span + burst
    // attempts went out, dropped waiters or not.
    let mut sorted = arrivals.clone();
    sorted.sort();
    for (a, start) in sorted.iter().enumerate() {
        for (b, end) in sorted.iter().enumerate().skip(a) {
            let span = end.duration_since(*start).as_secs_f64();
            let allowed = (span * f64::from(RATE)).floor() as usize + BURST as usize;
            assert!(
                b - a < allowed,
                "{} attempts in {span} s: more than the throttle allows (seed {seed}: {:?})",
                b - a + 1,
                sorted[a.saturating_sub(3)..(b + 3).min(sorted.len())]
                    .iter()
                    .map(|t| t.duration_since(sorted[0]))
                    .collect::<Vec<_>>()
            );
        }
    }
    assert!(
        throttle_stats.delayed() > 0,
        "no caller ever waited for a slot"
    );
    assert!(
        gate_stats.delayed() > 0,
        "no caller ever waited at the gate"
    );

    // The upstream recovers: after the open time, the breaker's probes pass and it closes (a
    // probe slot held by a dropped caller would keep it half-open and refusing).
    upstream.healthy.store(true, Ordering::SeqCst);
    sleep(Duration::from_secs(5)).await;
    for i in 0..20 {
        if breaker.state() == CircuitState::Closed {
            break;
        }
        // The open time grows with each trip (the breaker's open backoff): wait it out.
        if let Err(err) = client.clone().oneshot(request(CALLS + i)).await {
            if let (true, Some(wait)) = (err.is_circuit_open(), err.retry_after()) {
                sleep(wait).await;
            }
        }
    }
    assert_eq!(breaker.state(), CircuitState::Closed);

    // And the bucket is whole again: a burst goes at once.
    sleep(Duration::from_secs(5)).await;
    let (immediate, delayed) = (throttle_stats.immediate(), throttle_stats.delayed());
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..BURST as usize {
        let client = client.clone();
        burst.spawn(async move {
            client
                .oneshot(request(CALLS + 100 + i))
                .await
                .map(|r| r.status())
        });
    }
    while let Some(done) = burst.join_next().await {
        assert_eq!(done.unwrap().unwrap(), StatusCode::OK);
    }
    assert_eq!(throttle_stats.immediate() - immediate, u64::from(BURST));
    assert_eq!(throttle_stats.delayed(), delayed);
    eprintln!(
        "seed {seed}: {} calls: {} dropped ({dropped_after_final} after their final failure), {} letters, \
         {} attempts, {} retries, throttle waited {} times and refused {}",
        CALLS,
        ended
            .iter()
            .filter(|(_, _, e)| matches!(e, Ended::Dropped))
            .count(),
        file.len(),
        arrivals.len(),
        retry_stats.retries(),
        throttle_stats.delayed(),
        throttle_stats.rejected(),
    );
}

/// A service that answers `status` after `delay`, counting calls in flight.
fn scripted(
    script: Arc<Mutex<Vec<(u16, Duration)>>>,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
) -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<()>, Infallible>> + Send,
> + Clone {
    tower::service_fn(move |_req: Request<()>| {
        let (status, delay) = script.lock().unwrap().remove(0);
        let (in_flight, peak) = (in_flight.clone(), peak.clone());
        async move {
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            struct Leave(Arc<AtomicUsize>);
            impl Drop for Leave {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let _leave = Leave(in_flight);
            sleep(delay).await;
            Ok(Response::builder().status(status).body(()).unwrap())
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_throttle_waiter_dropped_last_gives_its_slot_back() {
    let upstream =
        tower::service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    // One per second, no burst beyond one; wait at most 1.5 s.
    let throttle =
        ThrottleLayer::new(1, Duration::from_secs(1)).max_wait(Duration::from_millis(1_500));
    let stats = throttle.stats();
    let client = ServiceBuilder::new().layer(throttle).service(upstream);

    client.clone().oneshot(Request::new(())).await.unwrap();
    for _ in 0..20 {
        // The next slot is 1 s away: reserve it, then give up before it comes.
        let mut waiter = Box::pin(client.clone().oneshot(Request::new(())));
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut waiter)
                .await
                .is_err()
        );
        drop(waiter);
        // Had the slot been kept, the next one would be 2 s away, past max_wait: refused.
        client.clone().oneshot(Request::new(())).await.unwrap();
    }
    assert_eq!(stats.rejected(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_probe_from_an_earlier_half_open_does_not_free_a_slot_of_the_next() {
    let script = Arc::new(Mutex::new(vec![
        // Two failures open the breaker.
        (500, Duration::ZERO),
        (500, Duration::ZERO),
        // Half-open, first round: probe A fails fast, probe B is slow.
        (500, Duration::from_millis(100)),
        (200, Duration::from_secs(60)),
        // Half-open, second round: two slow probes, then anything more.
        (200, Duration::from_secs(60)),
        (200, Duration::from_secs(60)),
        (200, Duration::from_secs(60)),
        (200, Duration::from_secs(60)),
    ]));
    let (in_flight, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let breaker = CircuitBreakerLayer::new()
        .window(Window::Count(2))
        .minimum_calls(2)
        .open_duration(Duration::from_secs(1))
        // One open time, so the rounds' times below are fixed.
        .open_backoff(1.0, Duration::from_secs(1))
        .half_open_probes(2);
    let client = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(scripted(script, in_flight.clone(), peak.clone()));
    let call = || client.clone().oneshot(Request::new(()));

    call().await.unwrap();
    call().await.unwrap();
    assert_eq!(breaker.state(), CircuitState::Open);
    sleep(Duration::from_secs(1)).await;

    let probe_a = tokio::spawn(call());
    let probe_b = tokio::spawn(call());
    tokio::task::yield_now().await;
    // A fails: open again, while B from the first round is still out.
    assert_eq!(probe_a.await.unwrap().unwrap().status(), 500);
    assert_eq!(breaker.state(), CircuitState::Open);
    sleep(Duration::from_secs(1)).await;

    // Second round: two probes go, the third is refused.
    let probe_c = tokio::spawn(call());
    let probe_d = tokio::spawn(call());
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    assert_eq!(in_flight.load(Ordering::SeqCst), 3, "B, C and D are out");
    let refused = call().await.unwrap_err();
    assert!(refused.is_circuit_open(), "{refused:?}");

    // B's caller gives up. B was a probe of the first round: it must not free a slot of this
    // one.
    probe_b.abort();
    let _ = probe_b.await;
    let third = tokio::time::timeout(Duration::from_millis(10), call()).await;
    let admitted = match third {
        Err(_) => true,
        Ok(Err(ref e)) => !e.is_circuit_open(),
        Ok(Ok(_)) => true,
    };
    assert!(
        !admitted,
        "a third probe went out while two were in flight: a dropped probe of an earlier \
         half-open round freed a slot of this one"
    );
    probe_c.abort();
    probe_d.abort();
}

#[tokio::test(start_paused = true)]
async fn a_late_probe_success_from_an_earlier_half_open_does_not_count_in_the_next() {
    let script = Arc::new(Mutex::new(vec![
        (500, Duration::ZERO),
        (500, Duration::ZERO),
        // First round: A fails fast, B succeeds late (after the second round began).
        (500, Duration::from_millis(100)),
        (200, Duration::from_millis(1_500)),
        // Second round: C succeeds, D hangs.
        (200, Duration::from_millis(10)),
        (200, Duration::from_secs(600)),
    ]));
    let (in_flight, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let breaker = CircuitBreakerLayer::new()
        .window(Window::Count(2))
        .minimum_calls(2)
        .open_duration(Duration::from_secs(1))
        // One open time, so the rounds' times below are fixed.
        .open_backoff(1.0, Duration::from_secs(1))
        .half_open_probes(2);
    let client = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(scripted(script, in_flight, peak));
    let call = || client.clone().oneshot(Request::new(()));

    call().await.unwrap();
    call().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    let probe_a = tokio::spawn(call());
    let probe_b = tokio::spawn(call());
    tokio::task::yield_now().await;
    assert_eq!(probe_a.await.unwrap().unwrap().status(), 500);
    // Open from t = 1.1 s to 2.1 s; the second round starts at 2.1 s.
    sleep(Duration::from_millis(1_000)).await;
    let probe_c = tokio::spawn(call());
    let probe_d = tokio::spawn(call());
    assert_eq!(probe_c.await.unwrap().unwrap().status(), 200);
    // B, sent in the first round, answers now (t = 2.5 s).
    assert_eq!(probe_b.await.unwrap().unwrap().status(), 200);
    // One probe of this round passed and one is still out: the breaker must still be
    // half-open, not closed on a success from the round before.
    assert_eq!(
        breaker.state(),
        CircuitState::HalfOpen,
        "a success from an earlier half-open round closed the breaker"
    );
    probe_d.abort();
}
