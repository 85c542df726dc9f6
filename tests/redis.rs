//! The Redis-backed pieces against a real `redis-server` on loopback. Throttle tests run on the
//! real clock (Redis keeps time with its own `TIME`), each for a second or three.
#![cfg(feature = "redis")]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::redis::RedisServer;
use tower::{ServiceBuilder, ServiceExt};
use tower_outbound::body::ReplayBody;
use tower_outbound::dead_letter::replay;
use tower_outbound::dead_letter::{DeadLetter, SinkErrorKind};
use tower_outbound::redis::{Fallback, RedisBuckets, RedisDecision, RedisStore, RedisStreamSink};
use tower_outbound::throttle::{Acquire, BucketStore, Decision, Quota, WindowReport};
use tower_outbound::{DeadLetterLayer, Sink, ThrottleLayer};

async fn manager(server: &RedisServer) -> redis::aio::ConnectionManager {
    let client = redis::Client::open(server.url()).unwrap();
    redis::aio::ConnectionManager::new(client).await.unwrap()
}

#[tokio::test]
async fn the_script_admits_the_burst_then_paces_on_the_redis_clock() {
    let server = RedisServer::start();
    let buckets = RedisBuckets::new(manager(&server).await);
    let interval = Duration::from_millis(100);
    let mut waits = Vec::new();
    for _ in 0..5 {
        match buckets
            .acquire("b", interval, 3, Duration::from_secs(1))
            .await
            .unwrap()
        {
            RedisDecision::Reserved { wait, .. } => waits.push(wait),
            RedisDecision::Rejected { wait } => panic!("rejected, wait {wait:?}"),
        }
    }
    // Three at once, then one every 100 ms (less the few µs the calls took).
    assert!(waits[..3].iter().all(|w| w.is_zero()), "{waits:?}");
    assert!(
        waits[3] > Duration::from_millis(90) && waits[3] <= interval,
        "{waits:?}"
    );
    assert!(
        waits[4] > Duration::from_millis(190) && waits[4] <= 2 * interval,
        "{waits:?}"
    );
    // Past the allowed wait: rejected, nothing reserved.
    let rejected = buckets
        .acquire("b", interval, 3, Duration::from_millis(150))
        .await
        .unwrap();
    assert!(
        matches!(rejected, RedisDecision::Rejected { wait } if wait > Duration::from_millis(250))
    );
    // Keys expire on their own once idle.
    let mut connection = manager(&server).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg("b:tat")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 2_000, "ttl {ttl} ms");
}

/// Waits until Redis holds a key matching `pattern` (a store writes the server's view in the
/// background, without the call waiting for it); fails after 5 s.
async fn wait_for_key(server: &RedisServer, pattern: &str) {
    let mut connection = manager(server).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut connection)
            .await
            .unwrap();
        if !keys.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no key {pattern} in Redis after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

type Log = Arc<Mutex<Vec<Instant>>>;

/// A loopback server that logs arrival times and answers 200, with the given headers on the
/// first request, and 429 whenever more than `limit` requests arrived within the last second.
async fn limited_server(
    first: Option<Vec<(&'static str, &'static str)>>,
    limit: usize,
) -> (SocketAddr, Log) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let seen = log.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, first) = (seen.clone(), first.clone());
            let service =
                hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let (n, in_last_second) = {
                        let mut seen = seen.lock().unwrap();
                        let now = Instant::now();
                        seen.push(now);
                        let recent = seen
                            .iter()
                            .rev()
                            .take_while(|t| now - **t < Duration::from_secs(1))
                            .count();
                        (seen.len(), recent)
                    };
                    let mut response = Response::new(Full::new(Bytes::new()));
                    if in_last_second > limit {
                        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                    }
                    if let (1, Some(headers)) = (n, &first) {
                        for (name, value) in headers {
                            response.headers_mut().insert(*name, value.parse().unwrap());
                        }
                    }
                    async move { Ok::<_, Infallible>(response) }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, log)
}

async fn counting_server(first: Option<Vec<(&'static str, &'static str)>>) -> (SocketAddr, Log) {
    limited_server(first, usize::MAX).await
}

fn worker(
    store: RedisStore,
    rate: u32,
    burst: u32,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<hyper::body::Incoming>,
    Error = tower_outbound::Error,
    Future = impl Send,
> + Clone {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    ServiceBuilder::new()
        .layer(
            ThrottleLayer::new(rate, Duration::from_secs(1))
                .burst(burst)
                .max_wait(Duration::from_secs(10))
                .store(store),
        )
        .service(client)
}

fn get(addr: SocketAddr) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}/"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_with_their_own_connections_share_one_budget() {
    let server = RedisServer::start();
    let (addr, log) = counting_server(None).await;
    let a = worker(
        RedisStore::open(&server.url()).unwrap().prefix("shared"),
        50,
        1,
    );
    let b = worker(
        RedisStore::open(&server.url()).unwrap().prefix("shared"),
        50,
        1,
    );

    let start = Instant::now();
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(svc.oneshot(get(addr)))
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    // 30 requests at 50/s between the two of them: at least 29 intervals of 20 ms.
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(560),
        "{elapsed:?}: the budget was not shared"
    );
    let times = log.lock().unwrap().clone();
    assert_eq!(times.len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_workers_remaining_zero_holds_every_worker() {
    let server = RedisServer::start();
    let (addr, log) = counting_server(Some(vec![
        ("ratelimit-remaining", "0"),
        ("ratelimit-reset", "1"),
    ]))
    .await;
    let a = worker(
        RedisStore::open(&server.url()).unwrap().prefix("view"),
        100,
        10,
    );
    let b = worker(
        RedisStore::open(&server.url()).unwrap().prefix("view"),
        100,
        10,
    );

    let start = Instant::now();
    a.oneshot(get(addr)).await.unwrap();
    // Worker A's response said nothing is left for a second; its store writes that view to
    // Redis in the background, and B hears it from there.
    wait_for_key(&server, "{view:*}:view").await;
    b.oneshot(get(addr)).await.unwrap();

    let times = log.lock().unwrap().clone();
    assert!(
        times[1] - start >= Duration::from_millis(900),
        "{:?}",
        times[1] - start
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_workers_fall_back_to_their_share_and_resume_sharing_when_it_returns() {
    let mut server = RedisServer::start();
    let (addr, log) = counting_server(None).await;
    let store = RedisStore::open(&server.url())
        .unwrap()
        .prefix("fallback")
        .fallback(Fallback::Local { workers: 2 })
        .retry_after(Duration::from_millis(200));
    let stats = store.stats();
    let svc = worker(store, 40, 1);

    svc.clone().oneshot(get(addr)).await.unwrap();
    assert_eq!(stats.redis_decisions(), 1);

    // Redis dies: requests go on, at this worker's share (20/s), never faster.
    server.kill();
    let start = Instant::now();
    for _ in 0..10 {
        svc.clone().oneshot(get(addr)).await.unwrap();
    }
    let elapsed = start.elapsed();
    assert!(stats.fallback_decisions() >= 9, "{stats:?}");
    assert!(stats.errors() >= 1);
    // Ten requests at 20/s with a burst of 1: at least 9 intervals of 50 ms.
    assert!(
        elapsed >= Duration::from_millis(430),
        "fallback too fast: {elapsed:?}"
    );

    // Redis is back: after the retry period the store asks it again (the connection manager
    // reconnects in the background; allow it a few seconds at most).
    server.restart();
    let before = stats.redis_decisions();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut sent = 11;
    while stats.redis_decisions() == before {
        assert!(
            Instant::now() < deadline,
            "sharing did not resume: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        svc.clone().oneshot(get(addr)).await.unwrap();
        sent += 1;
    }
    assert_eq!(log.lock().unwrap().len(), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_while_redis_is_away() {
    let mut server = RedisServer::start();
    let (addr, _log) = counting_server(None).await;
    let store = RedisStore::open(&server.url())
        .unwrap()
        .fallback(Fallback::FailClosed);
    let svc = worker(store, 40, 1);
    server.kill();
    let err = svc.oneshot(get(addr)).await.unwrap_err();
    assert!(err.is_throttled(), "{err:?}");
}

#[tokio::test]
async fn any_worker_replays_what_another_dead_lettered() {
    let server = RedisServer::start();
    let sink_a = RedisStreamSink::new(manager(&server).await, "dead-letters", 1_000);
    let sink_b = RedisStreamSink::new(manager(&server).await, "dead-letters", 1_000);

    let down = tower::service_fn(|_req: Request<ReplayBody>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .body(())
                .unwrap(),
        )
    });
    let worker_a = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(sink_a.clone()))
        .service(down);
    for i in 0..3 {
        let request = Request::post(format!("https://api.example.com/orders/{i}"))
            .header("idempotency-key", format!("key-{i}"))
            .body(Full::new(Bytes::from(format!("order {i}"))))
            .unwrap();
        worker_a.clone().oneshot(request).await.unwrap();
    }
    assert_eq!(sink_b.count().await.unwrap(), 3);

    // Worker B replays; the upstream is back for all but order 2.
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let recorded = seen.clone();
    let up = tower::service_fn(move |req: Request<ReplayBody>| {
        let recorded = recorded.clone();
        async move {
            let path = req.uri().path().to_owned();
            let key = req.headers()["idempotency-key"]
                .to_str()
                .unwrap()
                .to_owned();
            let _ = req.into_body().collect().await;
            recorded.lock().unwrap().push((path.clone(), key));
            let status = if path.ends_with('2') { 503 } else { 200 };
            Ok::<_, Infallible>(Response::builder().status(status).body(()).unwrap())
        }
    });
    let report = replay(&sink_b, up).await.unwrap();
    assert_eq!((report.succeeded, report.still_failing), (2, 1));
    let left = sink_a.read_all().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].uri, "https://api.example.com/orders/2");
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .all(|(path, key)| path.ends_with(&key[4..])));
}

// ---- many processes, one budget ----

const WORKER_ENV: &str = "TOWER_OUTBOUND_TEST_WORKER";

/// Not a test on its own: the body of each child process of
/// `four_processes_share_one_budget`, which runs this binary with the variables set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point for the child processes of four_processes_share_one_budget"]
async fn budget_worker_process() {
    let config = std::env::var(WORKER_ENV).expect("run by four_processes_share_one_budget");
    let parts: Vec<&str> = config.split(' ').collect();
    let (redis_url, addr, millis) = (
        parts[0],
        parts[1].parse().unwrap(),
        parts[2].parse().unwrap(),
    );
    let store = RedisStore::open(redis_url)
        .unwrap()
        .prefix("four-processes")
        .fallback(Fallback::Local { workers: 4 });
    let svc = worker(store, 200, 10);
    let until = Instant::now() + Duration::from_millis(millis);
    let loops: Vec<_> = (0..8)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                while Instant::now() < until {
                    let response = svc.clone().oneshot(get(addr)).await.unwrap();
                    assert_ne!(response.status(), StatusCode::TOO_MANY_REQUESTS);
                }
            })
        })
        .collect();
    for task in loops {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_one_budget() {
    let server = RedisServer::start();
    // The upstream's own limit: 200 per second, plus the burst the budget allows.
    let (addr, log) = limited_server(None, 210).await;
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(&exe)
                .args(["budget_worker_process", "--exact", "--ignored", "--quiet"])
                .env(WORKER_ENV, format!("{} {addr} 3000", server.url()))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "a worker failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let mut times = log.lock().unwrap().clone();
    times.sort();
    let (first, last) = (times[0], times[times.len() - 1]);
    let span = (last - first).as_secs_f64();
    // rate · t + burst over the whole run: the burst aside, within 2 % of 200/s.
    let rate = (times.len() as f64 - 10.0) / span;
    assert!(
        (196.0..=204.0).contains(&rate),
        "{rate:.1} requests/s over {span:.2} s"
    );
    // The workers checked every answer: the upstream never had to say 429.
}

// ---- nothing silently lost, no share taken twice, no panics from settings ----

fn letter(id: &str) -> DeadLetter {
    serde_json::from_value(serde_json::json!({
        "version": 1,
        "id": id,
        "method": "POST",
        "uri": "https://api.example.com/v1/orders",
        "headers": [],
        "body": {"encoding": "text", "data": "{}"},
        "body_kept": true,
        "outcome": {"status": 503},
        "attempts": 1,
        "waited_ms": 0,
        "first_attempt_at_ms": 0,
        "last_attempt_at_ms": 0,
    }))
    .unwrap()
}

/// Calls of one Redis command since the last `CONFIG RESETSTAT`.
async fn calls(connection: &mut redis::aio::ConnectionManager, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

async fn reset_stats(connection: &mut redis::aio::ConnectionManager) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(connection)
        .await
        .unwrap();
}

#[tokio::test]
async fn full_dead_letter_stream_refuses_letters_instead_of_evicting_old_ones() {
    let server = RedisServer::start();
    let sink = RedisStreamSink::new(manager(&server).await, "capped", 3);
    for id in ["a", "b", "c"] {
        sink.write(letter(id)).await.unwrap();
    }
    let err = sink.write(letter("d")).await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Full, "{err}");
    let kept: Vec<String> = sink
        .read_all()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(kept, ["a", "b", "c"], "the oldest letters are kept");
    // Replaying makes room.
    assert_eq!(sink.remove(&["a".to_owned()]).await.unwrap(), 1);
    sink.write(letter("d")).await.unwrap();
    assert_eq!(sink.count().await.unwrap(), 3);
}

#[tokio::test]
async fn many_letters_are_read_in_pages_and_never_trimmed_below_the_cap() {
    let server = RedisServer::start();
    let mut admin = manager(&server).await;
    // More than one page of letters, added in one pipeline (as earlier writes would have).
    let n = 1_001;
    let mut pipe = redis::pipe();
    for i in 0..n {
        let letter = letter(&format!("l{i}"));
        pipe.cmd("XADD")
            .arg("many")
            .arg("*")
            .arg("id")
            .arg(&letter.id)
            .arg("letter")
            .arg(serde_json::to_string(&letter).unwrap())
            .ignore();
    }
    let _: () = pipe.query_async(&mut admin).await.unwrap();

    let sink = RedisStreamSink::new(manager(&server).await, "many", n);
    let letters = sink.read_all().await.unwrap();
    assert_eq!(letters.len(), n);
    assert_eq!(letters[0].id, "l0");
    assert_eq!(letters[n - 1].id, "l1000");
    assert!(sink.write(letter("over")).await.unwrap_err().is_full());
    assert_eq!(sink.count().await.unwrap(), n);
}

#[tokio::test]
async fn removing_read_letters_does_not_scan_the_stream() {
    let server = RedisServer::start();
    let mut admin = manager(&server).await;
    let sink = RedisStreamSink::new(manager(&server).await, "replayed", 1_000);
    for i in 0..50 {
        sink.write(letter(&format!("l{i}"))).await.unwrap();
    }
    let letters = sink.read_all().await.unwrap();
    reset_stats(&mut admin).await;
    // A replay that removes each delivered letter as it goes: one XDEL each, no XRANGE.
    for letter in &letters[..40] {
        assert_eq!(
            sink.remove(std::slice::from_ref(&letter.id)).await.unwrap(),
            1
        );
    }
    assert_eq!(calls(&mut admin, "xrange").await, 0);
    assert_eq!(calls(&mut admin, "xdel").await, 40);
    // Removing again removes nothing.
    assert_eq!(sink.remove(&[letters[0].id.clone()]).await.unwrap(), 0);

    // Another worker that did not read them still removes exactly the ones asked for.
    let other = RedisStreamSink::new(manager(&server).await, "replayed", 1_000);
    let ids: Vec<String> = letters[40..45].iter().map(|l| l.id.clone()).collect();
    assert_eq!(other.remove(&ids).await.unwrap(), 5);
    assert_eq!(sink.count().await.unwrap(), 5);
}

fn quota() -> Quota {
    // Ten at once, then one every six minutes: within a test, only the burst counts.
    Quota::new(10, Duration::from_secs(3600))
        .unwrap()
        .with_burst(10)
        .unwrap()
}

/// How many of `n` acquires go at once (no wait allowed).
async fn admitted(store: &RedisStore, n: usize) -> usize {
    let mut admitted = 0;
    for _ in 0..n {
        let decision = match store.acquire(None, &quota(), Duration::ZERO) {
            Acquire::Ready(decision) => decision,
            Acquire::Pending(future) => future.await,
        };
        if matches!(decision, Ok(Decision::Go)) {
            admitted += 1;
        }
    }
    admitted
}

/// Runs `command` every millisecond until its answer passes `done` (a store writes to Redis in
/// the background) and returns that answer; fails after 5 s, showing the last one.
async fn wait_until<T>(server: &RedisServer, command: &redis::Cmd, done: impl Fn(&T) -> bool) -> T
where
    T: redis::FromRedisValue + std::fmt::Debug,
{
    let mut connection = manager(server).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen: T = command.query_async(&mut connection).await.unwrap();
        if done(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{:?} is {seen:?} after 5 s",
            String::from_utf8_lossy(&command.get_packed_command())
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until the view of bucket `prefix` in Redis holds `field` = `value`.
async fn wait_for_view(server: &RedisServer, prefix: &str, field: &str, value: i64) {
    let mut command = redis::cmd("HGET");
    command.arg(format!("{{{prefix}:default}}:view")).arg(field);
    wait_until(server, &command, |seen: &Option<i64>| *seen == Some(value)).await;
}

/// A regression test: a reply's `RateLimit-Remaining` does not count the requests still on
/// their way, and in a fleet most of them are other processes'. The store adopted the count
/// as it was, so the fleet sent a window's worth of extra requests (57 refusals for a
/// used-up window in a million-event run of four processes). Now a reply's count is taken
/// less every process's outstanding requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replys_count_is_taken_less_the_fleets_requests_in_flight() {
    let server = RedisServer::start();
    let a = RedisStore::open(&server.url()).unwrap().prefix("fleet");
    let b = RedisStore::open(&server.url()).unwrap().prefix("fleet");
    let window = Duration::from_secs(60);
    // Process A hears 8 left with 3 of its own requests still out; then B hears 7 left with 2
    // of its own out. The server counted neither process's outstanding requests: 7 − 5 = 2.
    assert!(a.adopt_report(
        None,
        &quota(),
        WindowReport::new(8, window).with_outstanding(3)
    ));
    wait_for_view(&server, "fleet", "reported", 8).await;
    assert!(b.adopt_report(
        None,
        &quota(),
        WindowReport::new(7, window).with_outstanding(2)
    ));
    wait_for_view(&server, "fleet", "reported", 7).await;
    assert_eq!(
        admitted(&b, 5).await,
        2,
        "7 left less the fleet's 5 in flight"
    );
    assert_eq!(
        admitted(&a, 5).await,
        0,
        "the same count holds every process"
    );
}

/// Slots Redis grants after a process's last reply count among its outstanding requests in
/// the next report of any process, before it replies again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_granted_since_a_processs_last_reply_count_as_its_outstanding() {
    let server = RedisServer::start();
    let a = RedisStore::open(&server.url()).unwrap().prefix("granted");
    let b = RedisStore::open(&server.url()).unwrap().prefix("granted");
    let window = Duration::from_secs(60);
    assert!(a.adopt_report(None, &quota(), WindowReport::new(9, window)));
    wait_for_view(&server, "granted", "reported", 9).await;
    // A sends three more: the view counts them down, and Redis counts them as A's.
    assert_eq!(admitted(&a, 3).await, 3);
    wait_for_view(&server, "granted", "left", 6).await;
    // B's reply is fresher (8 < 9): it replaces the count, less A's three in flight.
    assert!(b.adopt_report(None, &quota(), WindowReport::new(8, window)));
    wait_for_view(&server, "granted", "reported", 8).await;
    assert_eq!(admitted(&b, 10).await, 5, "8 left less A's 3 in flight");
}

/// A fresher reply replaces the count up as well as down: requests the server did not count
/// (refused before counting, dropped on the way) come back, once nothing is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresher_reply_gives_back_what_the_server_did_not_count() {
    let server = RedisServer::start();
    let a = RedisStore::open(&server.url()).unwrap().prefix("up");
    let window = Duration::from_secs(60);
    assert!(a.adopt_report(
        None,
        &quota(),
        WindowReport::new(6, window).with_outstanding(4)
    ));
    wait_for_view(&server, "up", "left", 2).await;
    // The four were answered; the server counted only one of them.
    assert!(a.adopt_report(None, &quota(), WindowReport::new(5, window)));
    wait_for_view(&server, "up", "left", 5).await;
    // An older word arriving late (more left than the server already said, 9 − 1 = 8) only
    // tightens: still 5. Its outstanding count shows when it was adopted.
    assert!(a.adopt_report(
        None,
        &quota(),
        WindowReport::new(9, window).with_outstanding(1)
    ));
    wait_for_outstanding(&server, "up", "1:").await;
    assert_eq!(admitted(&a, 8).await, 5);
}

/// A regression test: a reply from a window that already ended, adopted after the next
/// window's count (replies of many processes reach Redis in any order), replaced that count
/// with its own short-lived one; when it ran out, the current window had no count at all until
/// the next reply, and the requests sent meanwhile went past the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_from_the_last_window_leaves_the_current_count_alone() {
    let server = RedisServer::start();
    let a = RedisStore::open(&server.url()).unwrap().prefix("late");
    assert!(a.adopt_report(
        None,
        &quota(),
        WindowReport::new(5, Duration::from_secs(60))
    ));
    wait_for_view(&server, "late", "reported", 5).await;
    // The old window's last word: 9 left, ending in 2 s. Shown by its outstanding count.
    assert!(a.adopt_report(
        None,
        &quota(),
        WindowReport::new(9, Duration::from_secs(2)).with_outstanding(1)
    ));
    wait_for_outstanding(&server, "late", "1:").await;
    assert_eq!(
        admitted(&a, 10).await,
        5,
        "the current window's 5, not the old one's"
    );
}

/// A regression test: a grant added to a process's count kept the time of the process's last
/// report, so a count last reported just under 2 s before was dropped from the fleet's sum soon
/// after the grant, with the requests it had just been granted still on their way. A window
/// that pauses the fleet for about 2 s (as the simulator's 2 s window does) ends exactly there:
/// the next reply's count left out the burst that followed the pause, and one request went past
/// the window (a refusal now and then in the scaled-out test). Now a grant counts for 2 s from
/// when it was made, however old the process's last report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_counts_in_the_fleets_sum_after_its_processs_report_went_stale() {
    let server = RedisServer::start();
    let a = RedisStore::open(&server.url()).unwrap().prefix("stale");
    let b = RedisStore::open(&server.url()).unwrap().prefix("stale");
    let window = Duration::from_secs(60);
    assert!(a.adopt_report(
        None,
        &quota(),
        WindowReport::new(9, window).with_outstanding(3)
    ));
    wait_for_outstanding(&server, "stale", "3:").await;
    // A's report made 1.995 s ago by Redis's clock: it counts for 5 ms more.
    let mut connection = manager(&server).await;
    let key = "{stale:default}:outstanding";
    let entries: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap();
    let [(member, entry)] = &entries[..] else {
        panic!("one process's count: {entries:?}")
    };
    let mut fields: Vec<u64> = entry.split(':').map(|f| f.parse().unwrap()).collect();
    fields[1] -= 1_995_000;
    let backdated: Vec<String> = fields.iter().map(u64::to_string).collect();
    let () = redis::cmd("HSET")
        .arg(key)
        .arg(member)
        .arg(backdated.join(":"))
        .query_async(&mut connection)
        .await
        .unwrap();
    // A is granted one more slot, its request on its way; its report goes stale.
    assert_eq!(admitted(&a, 1).await, 1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    // B's fresher reply (8 < 9) replaces the count: less A's request granted 10 ms ago.
    assert!(b.adopt_report(None, &quota(), WindowReport::new(8, window)));
    wait_for_view(&server, "stale", "reported", 8).await;
    let left: i64 = redis::cmd("HGET")
        .arg("{stale:default}:view")
        .arg("left")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(
        left, 7,
        "8 left less A's granted request (A's three reported are stale, its grant is not)"
    );
}

/// A regression test: the Redis store believed every refusal on the count alone, so a server's
/// stray `429` (`remaining: 0`, a short reset, while the window had room) paused every process
/// until its reset: one process with Redis used 75.5 % of the simulator's window where the same
/// process without Redis, which doubts such refusals, used 92 %. Now the process that got the
/// refusal judges it by its own view, as the in-process store does: two in a row are doubted
/// and pause nobody, the third is believed and pauses the fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_the_processs_view_contradicts_is_doubted_and_pauses_no_process() {
    let server = RedisServer::start();
    let a = RedisStore::open(&server.url()).unwrap().prefix("doubt");
    let b = RedisStore::open(&server.url()).unwrap().prefix("doubt");
    let window = Duration::from_secs(60);
    assert!(a.adopt_report(None, &quota(), WindowReport::new(50, window)));
    wait_for_view(&server, "doubt", "reported", 50).await;
    let refusal = WindowReport::refusal(Duration::from_secs(30));
    assert!(
        !a.adopt_report(None, &quota(), refusal),
        "the first is doubted"
    );
    assert!(!a.adopt_report(None, &quota(), refusal), "the second too");
    assert_eq!(
        admitted(&b, 5).await,
        5,
        "nobody paused by a doubted refusal"
    );
    assert!(
        a.adopt_report(None, &quota(), refusal),
        "the third is believed"
    );
    let mut pause = redis::cmd("HGET");
    pause.arg("{doubt:default}:view").arg("pause");
    wait_until(&server, &pause, |pause: &Option<i64>| pause.is_some()).await;
    assert_eq!(
        admitted(&b, 5).await,
        0,
        "a believed refusal pauses the fleet"
    );
}

/// Waits until a process's count of outstanding requests in bucket `prefix` starts with
/// `prefix_of_count` (a store writes it with a report).
async fn wait_for_outstanding(server: &RedisServer, prefix: &str, prefix_of_count: &str) {
    let mut command = redis::cmd("HVALS");
    command.arg(format!("{{{prefix}:default}}:outstanding"));
    wait_until(server, &command, |counts: &Vec<String>| {
        counts.iter().any(|c| c.starts_with(prefix_of_count))
    })
    .await;
}

async fn wait_for_workers(store: &RedisStore, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.stats().workers_seen() != n {
        assert!(Instant::now() < deadline, "{:?}", store.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_learned_from_redis_split_the_budget_when_redis_goes_away() {
    let mut server = RedisServer::start();
    // Two processes (their own connections and registrations), the default fallback.
    let a = RedisStore::open(&server.url())
        .unwrap()
        .prefix("learned")
        .heartbeat(Duration::from_millis(50))
        .retry_after(Duration::from_secs(60));
    let b = RedisStore::open(&server.url())
        .unwrap()
        .prefix("learned")
        .heartbeat(Duration::from_millis(50));
    // A first acquire starts each heartbeat; the burst is shared through Redis.
    assert_eq!(admitted(&a, 1).await + admitted(&b, 1).await, 2);
    wait_for_workers(&a, 2).await;
    wait_for_workers(&b, 2).await;

    // Redis goes away: each takes half the burst, not the whole of it.
    server.kill();
    assert_eq!(admitted(&a, 20).await, 5);
    assert!(a.stats().fallback_decisions() >= 19, "{:?}", a.stats());
    assert_eq!(a.stats().workers_seen(), 2, "the last count seen is kept");
}

#[tokio::test]
async fn without_a_learned_worker_count_the_fallback_takes_no_share() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let store = RedisStore::open(&url).unwrap().prefix("never-seen");
    assert_eq!(admitted(&store, 3).await, 0);
    assert_eq!(store.stats().workers_seen(), 0);
    // Told the count, it takes its share.
    let told = RedisStore::open(&url)
        .unwrap()
        .fallback(Fallback::Local { workers: 5 });
    assert_eq!(admitted(&told, 5).await, 2);
}

#[tokio::test]
async fn redis_settings_of_duration_max_do_not_panic() {
    let mut server = RedisServer::start();
    let url = server.url();
    let store = RedisStore::open(&url)
        .unwrap()
        .timeout(Duration::MAX)
        .retry_after(Duration::MAX)
        .heartbeat(Duration::MAX)
        .fallback(Fallback::Local { workers: 0 });
    let sink = RedisStreamSink::new(manager(&server).await, "s", usize::MAX).timeout(Duration::MAX);
    sink.write(letter("a")).await.unwrap();
    let huge = Quota::new(1, Duration::MAX).unwrap();
    let decision = match store.acquire(None, &huge, Duration::MAX) {
        Acquire::Ready(decision) => decision,
        Acquire::Pending(future) => future.await,
    };
    assert!(decision.is_ok(), "{decision:?}");
    server.kill();
    // Redis gone: the failure pauses Redis use for the clamped period, and the fallback
    // (with 0 workers taken as 1) decides.
    assert_eq!(admitted(&store, 12).await, 10);
}

#[tokio::test]
async fn one_acquire_is_one_round_trip() {
    let server = RedisServer::start();
    let mut admin = manager(&server).await;
    let store = RedisStore::open(&server.url())
        .unwrap()
        .heartbeat(Duration::from_secs(60));
    admitted(&store, 1).await;
    wait_for_workers(&store, 1).await;
    reset_stats(&mut admin).await;
    admitted(&store, 30).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut admin)
        .await
        .unwrap();
    // Thirty scripts, and no command sent but them (the stats also count the commands the
    // script runs inside Redis, and this test's own INFO and CONFIG).
    assert_eq!(calls(&mut admin, "evalsha").await, 30, "{info}");
    let inside_the_script = [
        "time", "get", "hmget", "set", "del", "hincrby", "hget", "hset", "pexpire",
    ];
    let others: Vec<&str> = info
        .lines()
        .filter_map(|line| line.strip_prefix("cmdstat_")?.split_once(":calls="))
        .map(|(name, _)| name)
        .filter(|name| {
            *name != "evalsha"
                && !inside_the_script.contains(name)
                && !name.starts_with("info")
                && !name.starts_with("config")
        })
        .collect();
    assert!(others.is_empty(), "{info}");
}
