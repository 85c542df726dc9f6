//! The Retry-After gate releasing the requests it held, on tokio's paused clock: paced and in
//! order once it opens, stopped by a new pause, bounded by each request's patience.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_outbound::body::ReplayBody;
use tower_outbound::{Outbound, RetryAfterLayer, RetryLayer};

const MS: Duration = Duration::from_millis(1);

/// An upstream that answers in 100 ms: with the scripted pauses first (`Some(seconds)`: a 429
/// with that `Retry-After`; `None`: a 200), then 200s. It records when each request arrived
/// and which it was (its path).
#[derive(Clone, Default)]
struct Upstream {
    script: Arc<Mutex<VecDeque<Option<u64>>>>,
    seen: Arc<Mutex<Vec<(Instant, u32)>>>,
}

impl Upstream {
    fn new(script: Vec<Option<u64>>) -> Self {
        Upstream {
            script: Arc::new(Mutex::new(script.into())),
            seen: Arc::default(),
        }
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<()>,
        Response = Response<()>,
        Error = Infallible,
        Future = impl std::future::Future<Output = Result<Response<()>, Infallible>> + Send,
    > + Clone
           + Send {
        let this = self.clone();
        tower::service_fn(move |req: Request<()>| {
            let this = this.clone();
            async move {
                let id = req.uri().path()[1..].parse().unwrap();
                this.seen.lock().unwrap().push((Instant::now(), id));
                let pause = this.script.lock().unwrap().pop_front().flatten();
                tokio::time::sleep(100 * MS).await;
                let response = match pause {
                    Some(seconds) => Response::builder()
                        .status(StatusCode::TOO_MANY_REQUESTS)
                        .header("retry-after", seconds.to_string()),
                    None => Response::builder().status(StatusCode::OK),
                };
                Ok(response.body(()).unwrap())
            }
        })
    }

    /// The requests that arrived at each instant (from `start`), by id.
    fn waves(&self, start: Instant) -> Vec<(Duration, Vec<u32>)> {
        let mut waves: BTreeMap<Duration, Vec<u32>> = BTreeMap::new();
        for (at, id) in self.seen.lock().unwrap().iter() {
            waves.entry(*at - start).or_default().push(*id);
        }
        waves
            .into_iter()
            .map(|(at, mut ids)| {
                ids.sort_unstable();
                (at, ids)
            })
            .collect()
    }
}

fn get(id: u32) -> Request<()> {
    Request::get(format!("http://api.example.com/{id}"))
        .body(())
        .unwrap()
}

fn at(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[tokio::test(start_paused = true)]
async fn held_requests_leave_the_gate_paced_in_order_and_all_arrive() {
    // Request 0 gets a 429 asking for 30 s at 0.1 s: the gate is closed until 30.1 s.
    let upstream = Upstream::new(vec![Some(30)]);
    let gate = RetryAfterLayer::new();
    let svc = ServiceBuilder::new()
        .layer(gate.clone())
        .service(upstream.service());
    let start = Instant::now();
    let first = svc.clone().oneshot(get(0)).await.unwrap();
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);

    // 20 requests meet the closed gate; 5 more come during the release.
    let mut calls: Vec<_> = (1..=20)
        .map(|id| tokio::spawn(svc.clone().oneshot(get(id))))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(gate.held(), 20);
    tokio::time::sleep_until(start + at(30_150)).await;
    calls.extend((21..=25).map(|id| tokio::spawn(svc.clone().oneshot(get(id)))));
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    }

    // One at the gate's time, then twice as many per round trip of 100 ms, in the order
    // they arrived at the gate; the late ones behind the held ones. Without the pace, all
    // 20 would have arrived at 30.1 s.
    assert_eq!(
        upstream.waves(start),
        vec![
            (at(0), vec![0]),
            (at(30_100), vec![1]),
            (at(30_200), vec![2, 3]),
            (at(30_300), (4..=7).collect()),
            (at(30_400), (8..=15).collect()),
            (at(30_500), (16..=25).collect()),
        ]
    );
    let stats = gate.stats();
    assert_eq!(
        (stats.delayed(), stats.released(), stats.refused()),
        (25, 25, 0)
    );
    assert_eq!(gate.held(), 0);
    assert_eq!(gate.closed_for(), None);
}

/// `Outbound` runs the gate's step itself (one state machine over the upstream's record): the
/// requests its gate held leave the same way, paced and in order.
#[tokio::test(start_paused = true)]
async fn outbound_releases_the_requests_its_gate_held_paced_too() {
    let upstream = Upstream::new(vec![Some(30)]);
    let gate = RetryAfterLayer::new();
    let stack = Outbound::new()
        .retry(RetryLayer::new().max_attempts(1))
        .deadline(None)
        .gate(gate.clone());
    let client = ServiceBuilder::new()
        .map_request(|request: Request<ReplayBody>| request.map(|_| ()))
        .service(upstream.service());
    let svc = stack.service(client);
    let get = |id: u32| get(id).map(|()| String::new());
    let start = Instant::now();
    let first = svc.clone().oneshot(get(0)).await.unwrap();
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);

    let mut calls: Vec<_> = (1..=20)
        .map(|id| tokio::spawn(svc.clone().oneshot(get(id))))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(gate.held(), 20);
    tokio::time::sleep_until(start + at(30_150)).await;
    calls.extend((21..=25).map(|id| tokio::spawn(svc.clone().oneshot(get(id)))));
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        upstream.waves(start),
        vec![
            (at(0), vec![0]),
            (at(30_100), vec![1]),
            (at(30_200), vec![2, 3]),
            (at(30_300), (4..=7).collect()),
            (at(30_400), (8..=15).collect()),
            (at(30_500), (16..=25).collect()),
        ]
    );
    let stats = gate.stats();
    assert_eq!(
        (stats.delayed(), stats.released(), stats.refused()),
        (25, 25, 0)
    );
    assert_eq!(gate.held(), 0);
}

/// How many requests reach the upstream at each instant when 10 are held behind a
/// `Retry-After: 30` and the gate releases `release` at once.
async fn wave_sizes(release: u32) -> Vec<usize> {
    let upstream = Upstream::new(vec![Some(30)]);
    let gate = RetryAfterLayer::new().release(release);
    let svc = ServiceBuilder::new()
        .layer(gate.clone())
        .service(upstream.service());
    let start = Instant::now();
    svc.clone().oneshot(get(0)).await.unwrap();
    let calls: Vec<_> = (1..=10)
        .map(|id| tokio::spawn(svc.clone().oneshot(get(id))))
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    upstream
        .waves(start)
        .into_iter()
        .map(|(_, ids)| ids.len())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn release_sets_how_many_leave_at_once() {
    assert_eq!(wave_sizes(4).await, vec![1, 4, 6]);
    // Zero is raised to one; `u32::MAX` lets them all go at the gate's time.
    assert_eq!(wave_sizes(0).await, vec![1, 1, 2, 4, 3]);
    assert_eq!(wave_sizes(u32::MAX).await, vec![1, 10]);
}

#[tokio::test(start_paused = true)]
async fn a_new_pause_during_the_release_stops_it_until_the_new_time() {
    // The first request released (1) is refused again for 10 s at 30.2 s.
    let upstream = Upstream::new(vec![Some(30), Some(10)]);
    let gate = RetryAfterLayer::new();
    let svc = ServiceBuilder::new()
        .layer(gate.clone())
        .service(upstream.service());
    let start = Instant::now();
    svc.clone().oneshot(get(0)).await.unwrap();
    let calls: Vec<_> = (1..=10)
        .map(|id| tokio::spawn(svc.clone().oneshot(get(id))))
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap().unwrap().status());
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 9);
    assert_eq!(statuses[0], StatusCode::TOO_MANY_REQUESTS);
    // Nobody between 30.1 s and the new time, 40.2 s; then paced again from one.
    assert_eq!(
        upstream.waves(start),
        vec![
            (at(0), vec![0]),
            (at(30_100), vec![1]),
            (at(40_200), vec![2]),
            (at(40_300), vec![3, 4]),
            (at(40_400), (5..=8).collect()),
            (at(40_500), vec![9, 10]),
        ]
    );
    assert_eq!(gate.stats().times_closed(), 2);
}

#[tokio::test(start_paused = true)]
async fn patience_still_bounds_the_wait_and_ends_in_the_gates_error() {
    // Patience 35 s: the gate's time (30.1 s) fits; the new pause at 30.2 s (until 50.2 s)
    // does not.
    let upstream = Upstream::new(vec![Some(30), Some(20)]);
    let gate = RetryAfterLayer::new().max_wait(Duration::from_secs(35));
    let svc = ServiceBuilder::new()
        .layer(gate.clone())
        .service(upstream.service());
    let start = Instant::now();
    svc.clone().oneshot(get(0)).await.unwrap();
    let calls: Vec<_> = (1..=3)
        .map(|id| tokio::spawn(svc.clone().oneshot(get(id))))
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    assert_eq!(
        results[0].as_ref().unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    for result in &results[1..] {
        let err = result.as_ref().unwrap_err();
        assert!(err.is_rate_limited(), "{err}");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(20)));
        assert_eq!(err.upstream().map(|a| a.as_str()), Some("api.example.com"));
    }
    assert_eq!(start.elapsed(), at(30_200), "they failed when they learned");
    assert_eq!(upstream.seen.lock().unwrap().len(), 2);
    let stats = gate.stats();
    assert_eq!(
        (stats.delayed(), stats.released(), stats.refused()),
        (3, 1, 2)
    );
    assert_eq!(gate.held(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_held_request_dropped_by_its_caller_frees_its_place() {
    let upstream = Upstream::new(vec![Some(30)]);
    let gate = RetryAfterLayer::new();
    let svc = ServiceBuilder::new()
        .layer(gate.clone())
        .service(upstream.service());
    let start = Instant::now();
    svc.clone().oneshot(get(0)).await.unwrap();
    let gives_up = tokio::spawn(svc.clone().oneshot(get(1)));
    let waits = tokio::spawn(svc.clone().oneshot(get(2)));
    tokio::task::yield_now().await;
    assert_eq!(gate.held(), 2);
    gives_up.abort();
    assert!(gives_up.await.unwrap_err().is_cancelled());
    assert_eq!(gate.held(), 1, "the dropped request left the line");

    // The one left is first in line: it goes at the gate's time, with nobody to wait for.
    assert_eq!(waits.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(
        upstream.waves(start),
        vec![(at(0), vec![0]), (at(30_100), vec![2])]
    );
    assert_eq!(gate.stats().released(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_released_request_dropped_in_flight_passes_its_turn_on() {
    let upstream = Upstream::new(vec![Some(30)]);
    let gate = RetryAfterLayer::new();
    let svc = ServiceBuilder::new()
        .layer(gate.clone())
        .service(upstream.service());
    let start = Instant::now();
    svc.clone().oneshot(get(0)).await.unwrap();
    let first = tokio::spawn(svc.clone().oneshot(get(1)));
    let others: Vec<_> = (2..=3)
        .map(|id| tokio::spawn(svc.clone().oneshot(get(id))))
        .collect();
    // The first goes at 30.1 s; its caller gives up 50 ms later, before the answer.
    tokio::time::sleep_until(start + at(30_150)).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    for call in others {
        assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    // The next one goes in its place at once; the last when that one answers.
    assert_eq!(
        upstream.waves(start),
        vec![
            (at(0), vec![0]),
            (at(30_100), vec![1]),
            (at(30_150), vec![2]),
            (at(30_250), vec![3]),
        ]
    );
}
