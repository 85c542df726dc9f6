//! Token leasing against a real `redis-server`: several slots per round trip, spent locally,
//! the shared rate kept; the server's view adopted by one process reaching another at its next
//! lease; unused slots given back.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_server;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use redis_server::RedisServer;
use tower::{Service, ServiceExt};
use tower_outbound::redis::RedisStore;
use tower_outbound::throttle::BucketStore;
use tower_outbound::ThrottleLayer;

type Arrivals = Arc<Mutex<Vec<Instant>>>;

/// A throttled service over `store` at `rate` a second (burst `burst`), whose upstream notes
/// when each request arrives.
fn worker(
    store: RedisStore,
    rate: u32,
    burst: u32,
    arrivals: Arrivals,
) -> impl Service<
    Request<String>,
    Response = Response<()>,
    Error = tower_outbound::Error,
    Future = impl std::future::Future<Output = Result<Response<()>, tower_outbound::Error>> + Send,
> + Clone {
    tower::ServiceBuilder::new()
        .layer(
            ThrottleLayer::new(rate, Duration::from_secs(1))
                .burst(burst)
                .max_wait(Duration::from_secs(5))
                .store(store),
        )
        .service(tower::service_fn(move |_req: Request<String>| {
            let arrivals = arrivals.clone();
            async move {
                arrivals.lock().unwrap().push(Instant::now());
                Ok::<_, std::convert::Infallible>(Response::new(()))
            }
        }))
}

fn get() -> Request<String> {
    Request::get("http://api.example.com/")
        .body(String::new())
        .unwrap()
}

/// The most arrivals in any window of `span`.
fn most_in(arrivals: &[Instant], span: Duration) -> usize {
    let mut sorted = arrivals.to_vec();
    sorted.sort();
    let mut most = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end].duration_since(sorted[start]) >= span {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_leasing_stores_take_few_round_trips_and_keep_the_shared_rate() {
    let server = RedisServer::start();
    let arrivals: Arrivals = Arc::default();
    let (rate, burst) = (400, 20);
    let stores: Vec<RedisStore> = (0..4)
        .map(|_| {
            RedisStore::open(&server.url())
                .unwrap()
                .prefix("leased")
                .lease(64)
        })
        .collect();

    // Four stores (four connections, as four processes would have), four tasks each, calling
    // back to back: demand well above the rate.
    let tasks: Vec<_> = stores
        .iter()
        .flat_map(|store| {
            let service = worker(store.clone(), rate, burst, arrivals.clone());
            (0..4).map(move |_| {
                let mut service = service.clone();
                tokio::spawn(async move {
                    for _ in 0..60 {
                        service.ready().await.unwrap().call(get()).await.unwrap();
                    }
                })
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }

    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 960);
    let leases: u64 = stores.iter().map(|s| s.stats().leases()).sum();
    let leased: u64 = stores.iter().map(|s| s.stats().leased_decisions()).sum();
    let direct: u64 = stores.iter().map(|s| s.stats().redis_decisions()).sum();
    let most = most_in(&arrivals, Duration::from_millis(500));
    eprintln!("{leases} leases for 960 requests; at most {most} in any 500 ms");
    assert_eq!(leased, 960, "every decision came from a lease");
    assert_eq!(direct, 0);
    assert!(
        leases * 20 <= 960,
        "at least 95 % fewer round trips than one per request: {leases} leases for 960"
    );
    // Never faster than the shared bucket: rate · span + burst in any half second, with a
    // millisecond of slack for the clocks.
    assert!(
        most <= rate as usize / 2 + burst as usize + 1,
        "{most} in 500 ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_adopted_by_one_process_reaches_another_at_its_next_lease() {
    let server = RedisServer::start();
    let a = RedisStore::open(&server.url())
        .unwrap()
        .prefix("viewed")
        .lease(8);
    let b = RedisStore::open(&server.url())
        .unwrap()
        .prefix("viewed")
        .lease(8);
    let arrivals: Arrivals = Arc::default();
    let mut busy = worker(b.clone(), 1_000, 1_000, arrivals.clone());
    // B is busy: its leases grow to their bound.
    for _ in 0..200 {
        busy.ready().await.unwrap().call(get()).await.unwrap();
    }

    // A learns from the upstream: nothing more for 2 s.
    let quota = tower_outbound::throttle::Quota::new(1_000, Duration::from_secs(1)).unwrap();
    a.adopt(None, &quota, 0, Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(20)).await;

    // B spends at most what it held (a lease and a renewal), then its next lease meets the view.
    let quick = tower::ServiceBuilder::new()
        .layer(
            ThrottleLayer::new(1_000, Duration::from_secs(1))
                .burst(1_000)
                .max_wait(Duration::from_millis(100))
                .store(b.clone()),
        )
        .service(tower::service_fn(|_req: Request<String>| async {
            Ok::<_, std::convert::Infallible>(Response::new(()))
        }));
    let mut after = 0;
    loop {
        match quick.clone().oneshot(get()).await {
            Ok(_) => after += 1,
            Err(err) => {
                assert!(err.is_throttled(), "{err}");
                break;
            }
        }
        assert!(after <= 16, "B went on past its leases: {after}");
    }
    assert!(
        after <= 16,
        "at most a lease and a renewal (2 × 8) after the view: {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_slots_of_a_lease_are_given_back() {
    let server = RedisServer::start();
    let arrivals: Arrivals = Arc::default();
    // 10 a second, burst 1: a lease of 8 reaches 800 ms ahead.
    let store = RedisStore::open(&server.url())
        .unwrap()
        .prefix("returned")
        .lease(8)
        .lease_horizon(Duration::from_secs(1));
    let mut service = worker(store.clone(), 10, 1, arrivals.clone());
    for _ in 0..6 {
        service.ready().await.unwrap().call(get()).await.unwrap();
    }

    let given = store.return_leases().await;

    assert!(given > 0, "the unused end of the last lease went back");
    // Another process now gets the next slot sooner than the lease's end.
    let other = RedisStore::open(&server.url()).unwrap().prefix("returned");
    let start = Instant::now();
    worker(other, 10, 1, arrivals).oneshot(get()).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(100) * (given + 1),
        "{:?} for {given} slots given back",
        start.elapsed()
    );
}

/// The regression of a first version: under sustained overload, two processes that ran out of
/// slots never got back in (2 % of the sends each) and paid a round trip per refused request.
/// Each process must keep at least 5 % of the sends. The shares are not even: on a loaded
/// 2-core machine one process's share ranged from 7.6 % to 41 % from run to run (a fair share
/// is 25 %), so a bound nearer 25 % would fail on timing alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_sustained_overload_no_leasing_process_is_starved() {
    let server = RedisServer::start();
    let (rate, burst) = (200, 10);
    let stores: Vec<RedisStore> = (0..4)
        .map(|_| {
            RedisStore::open(&server.url())
                .unwrap()
                .prefix("overload")
                .lease(32)
        })
        .collect();
    let sent: Vec<Arc<Mutex<Vec<Instant>>>> = (0..4).map(|_| Arc::default()).collect();
    let offered_per_task = 300;
    // Open loop: each of two tasks per store offers 150 a second, whatever became of the
    // earlier ones (demand 1,200/s against 200/s).
    let tasks: Vec<_> = stores
        .iter()
        .zip(&sent)
        .flat_map(|(store, sent)| {
            let service = tower::ServiceBuilder::new()
                .layer(
                    ThrottleLayer::new(rate, Duration::from_secs(1))
                        .burst(burst)
                        .max_wait(Duration::from_millis(300))
                        .store(store.clone()),
                )
                .service(tower::service_fn({
                    let sent = sent.clone();
                    move |_req: Request<String>| {
                        let sent = sent.clone();
                        async move {
                            sent.lock().unwrap().push(Instant::now());
                            Ok::<_, std::convert::Infallible>(Response::new(()))
                        }
                    }
                }));
            (0..2).map(move |_| {
                let service = service.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_micros(6_667));
                    let mut calls = Vec::new();
                    for _ in 0..offered_per_task {
                        tick.tick().await;
                        calls.push(tokio::spawn(service.clone().oneshot(get())));
                    }
                    for call in calls {
                        let _ = call.await.unwrap();
                    }
                })
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }

    let per_store: Vec<usize> = sent.iter().map(|s| s.lock().unwrap().len()).collect();
    let total: usize = per_store.iter().sum();
    for (i, &n) in per_store.iter().enumerate() {
        assert!(
            n * 100 >= total * 5,
            "store {i} kept {n} of {total} sends: {per_store:?}"
        );
    }
    let trips: u64 = stores.iter().map(|s| s.stats().leases()).sum();
    eprintln!("{trips} lease round trips; sends per store {per_store:?}");
    let offered = 4 * 2 * offered_per_task;
    assert!(
        trips * 4 <= offered as u64,
        "{trips} lease round trips for {offered} requests offered"
    );
}

/// A regression test: an acquire cancelled while it asked Redis for a lease (a timeout, a
/// hedge's loser) left the bucket marked as asking for ever, so every later acquire that found
/// no lease held waited for one that never came and was decided by the fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_cancelled_while_it_asked_for_a_lease_does_not_stall_the_next() {
    let server = RedisServer::start();
    // Connected and checked first, so the lease below waits on Redis's answer, not on a
    // connection being made.
    let store = RedisStore::connect(&server.url())
        .await
        .unwrap()
        .prefix("cancelled")
        .timeout(Duration::from_secs(2))
        .lease(8);
    let quota = tower_outbound::throttle::Quota::new(100, Duration::from_secs(1)).unwrap();
    let acquire = |store: &RedisStore| match store.acquire(None, &quota, Duration::from_secs(1)) {
        tower_outbound::throttle::Acquire::Pending(future) => future,
        tower_outbound::throttle::Acquire::Ready(decision) => {
            panic!("no lease is held yet, so Redis must be asked: {decision:?}")
        }
    };
    // Redis holds every client's commands for 100 ms, so the lease asked for below cannot be
    // answered before the call is dropped (on a busy machine a loopback answer can otherwise
    // arrive within one poll). The store waits up to 2 s on Redis, and its connection 250 ms
    // for an answer, so the next acquire outlasts the pause.
    let admin = redis::Client::open(server.url()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(100)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    // Polled once (the lease is asked for), then dropped.
    let mut first = acquire(&store);
    let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(first.as_mut().poll(cx))).await;
    assert!(
        polled.is_pending(),
        "answered while Redis held its commands: {polled:?}, {:?}",
        store.stats()
    );
    drop(first);

    let decision = acquire(&store).await;
    assert!(
        matches!(decision, Ok(tower_outbound::throttle::Decision::Go)),
        "{decision:?}"
    );
    assert_eq!(store.stats().fallback_decisions(), 0, "{:?}", store.stats());
    assert!(store.stats().leases() >= 1, "{:?}", store.stats());
}

/// With leasing, a hedge's copy goes on a slot of the lease this process holds, decided at once
/// without a round trip; without leasing a shared store has no slot at once, and no copy goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_copy_goes_on_a_leased_slot_and_never_without_one() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use tower_outbound::body::ReplayBody;
    use tower_outbound::hedge::HedgeLayer;
    use tower_outbound::partition::ByUpstream;
    use tower_outbound::Outbound;

    const WARM_UP: u32 = 20;
    let server = RedisServer::start();
    for leasing in [true, false] {
        let store = RedisStore::connect(&server.url())
            .await
            .unwrap()
            .prefix(if leasing { "hedged-leasing" } else { "hedged" });
        let store = if leasing { store.lease(8) } else { store };
        let hedge = HedgeLayer::new()
            .fallback_delay(Duration::from_millis(1))
            .budget(1.0);
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let counts = {
            let hedge = hedge.clone();
            move || {
                hedge
                    .stats()
                    .of(&ByUpstream::of(&"http://api.example.com/".parse().unwrap()).unwrap())
                    .unwrap_or_default()
            }
        };
        let seen = counts.clone();
        let stack = Outbound::new()
            .hedge(Some(hedge.clone()))
            .throttle(Some(
                ThrottleLayer::new(1_000, Duration::from_secs(1))
                    .burst(100)
                    .store(store.clone()),
            ))
            .service(tower::service_fn(move |_req: Request<ReplayBody>| {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                async move {
                    // The call after the warm-up answers only when its copy won (it is dropped
                    // then) or when the hedge refused to send one; the copy answers at once.
                    if n == WARM_UP {
                        let deadline = Instant::now() + Duration::from_secs(5);
                        while seen().refused_state == 0 && Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    Ok::<_, std::convert::Infallible>(Response::new(()))
                }
            }));
        let get = || {
            Request::get("http://api.example.com/")
                .body(ReplayBody::from_bytes(bytes::Bytes::new()))
                .unwrap()
        };
        // Quick calls: the process's rate grows its leases, and the hedge learns the latency.
        for _ in 0..WARM_UP {
            stack.clone().oneshot(get()).await.unwrap();
        }
        // A renewal asked for during the warm-up lands.
        tokio::time::sleep(Duration::from_millis(5)).await;
        stack.clone().oneshot(get()).await.unwrap();

        let counts = counts();
        if leasing {
            assert_eq!(
                (counts.sent, counts.won),
                (1, 1),
                "{counts:?}, {:?}",
                store.stats()
            );
            assert_eq!(calls.load(Ordering::SeqCst), WARM_UP + 2);
        } else {
            assert_eq!(counts.sent, 0, "{counts:?}");
            assert_eq!(counts.refused_state, 1, "{counts:?}");
            assert_eq!(calls.load(Ordering::SeqCst), WARM_UP + 1);
        }
    }
}
