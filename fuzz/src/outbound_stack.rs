//! The whole `Outbound` stack, driven as an application drives it: a sequence of calls through
//! ONE stack (so the breakers, gates and retry budgets carry their state from call to call),
//! to two upstreams, over a scripted upstream that answers each attempt with an arbitrary
//! status, `Retry-After` / `RateLimit-*` headers (with a `Date`), delay or transport error, on
//! tokio's paused clock, with idle gaps of up to 20 minutes between calls. Only the public API
//! is used: a preset, its setters, `service`, `dead_letter_layer` and the stats.
//!
//! Checked on every run:
//!
//! - nothing panics; every call completes within its deadline;
//! - attempts: the upstream sees at most the preset's number of attempts per call;
//! - gate: no attempt reaches an upstream before the end of a pause that upstream asked for
//!   (a 429 or 503 naming a wait, or `remaining: 0` with a reset), capped at 15 minutes; and
//!   after an idle gap longer than that cap (and the breaker's 30 s), the next call reaches the
//!   upstream: no server closes the gate for longer;
//! - retry budget, per upstream: over any 10 s, retries are at most `floor` per second plus
//!   `ratio` of the calls made in those 10 s and the 10 s before them (counting only retries
//!   whose whole span, from the previous attempt to their own, is inside the window);
//! - `background()`: every call that finally fails (an error, a 408, 429 or 5xx) leaves exactly
//!   one dead letter, and no other call leaves one; every letter's attempts are within the cap.

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Arbitrary;
use http::{HeaderMap, Request, Response, StatusCode};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_outbound::body::ReplayBody;
use tower_outbound::retry::RetryBudget;
use tower_outbound::{Outbound, RateLimitInfo};

/// The most calls and scripted answers one input drives.
const MAX_CALLS: usize = 24;
const MAX_ANSWERS: usize = 96;
/// The gate's cap on any pause (`RetryAfterLayer::max_pause`, the presets' default).
const MAX_PAUSE: Duration = Duration::from_secs(15 * 60);
/// The breaker's open time in the presets.
const OPEN_DURATION: Duration = Duration::from_secs(30);
/// The retry budget's window.
const WINDOW: Duration = Duration::from_secs(10);
const HOSTS: [&str; 2] = ["http://a.example.invalid", "http://b.example.invalid"];

#[derive(Arbitrary, Debug)]
struct Script {
    preset: u8,
    /// `(ratio, floor)` picks for a budget of its own; `None` keeps the preset's (20 %, 5/s).
    budget: Option<(u8, u8)>,
    calls: Vec<Call>,
    answers: Vec<Answer>,
}

#[derive(Arbitrary, Debug)]
struct Call {
    gap: Gap,
    post: bool,
    host: bool,
    body: Vec<u8>,
}

/// Idle time before a call.
#[derive(Arbitrary, Debug)]
enum Gap {
    None,
    Millis(u16),
    Minutes(u8),
}

#[derive(Arbitrary, Debug, Clone)]
struct Answer {
    status: u16,
    retry_after: Option<Wait>,
    remaining: Option<u8>,
    reset: Option<Wait>,
    /// The upstream's delay before it answers, in milliseconds (up to ~65 s, past every
    /// attempt timeout).
    delay_ms: u16,
    error: bool,
}

#[derive(Arbitrary, Debug, Clone)]
enum Wait {
    Seconds(u32),
    Text(String),
    /// An HTTP-date this many seconds from the response's `Date` (past or future).
    Date(i32),
}

/// What the scripted upstream saw and said, in order.
#[derive(Debug)]
enum Event {
    Arrival {
        host: usize,
        at: Instant,
        call: usize,
    },
    Response {
        host: usize,
        at: Instant,
        status: StatusCode,
        headers: HeaderMap,
    },
}

#[derive(Debug, Default)]
struct Upstream {
    answers: std::vec::IntoIter<Answer>,
    call: usize,
    events: Vec<Event>,
}

fn host_of(request: &Request<ReplayBody>) -> usize {
    usize::from(request.uri().host() == Some("b.example.invalid"))
}

fn date_at(start: Instant, at: Instant) -> std::time::SystemTime {
    // Whole seconds, as a Date header carries them.
    super::now() + Duration::from_secs(at.duration_since(start).as_secs())
}

fn answer(step: &Answer, date: std::time::SystemTime) -> Result<Response<String>, std::io::Error> {
    if step.error {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
    }
    let status = StatusCode::from_u16(step.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let wait = |w: &Wait| match w {
        Wait::Seconds(s) => s.to_string(),
        Wait::Text(t) => t.clone(),
        Wait::Date(offset) => {
            let at = if *offset >= 0 {
                date.checked_add(Duration::from_secs(offset.unsigned_abs().into()))
            } else {
                date.checked_sub(Duration::from_secs(offset.unsigned_abs().into()))
            };
            httpdate::fmt_http_date(at.unwrap_or(UNIX_EPOCH).max(UNIX_EPOCH))
        }
    };
    let mut response = Response::builder()
        .status(status)
        .header("date", httpdate::fmt_http_date(date));
    if let Some(w) = &step.retry_after {
        response = response.header("retry-after", wait(w));
    }
    if let Some(remaining) = step.remaining {
        response = response.header("ratelimit-remaining", remaining.to_string());
    }
    if let Some(w) = &step.reset {
        response = response.header("ratelimit-reset", wait(w));
    }
    Ok(response.body(String::new()).unwrap_or_else(|_| {
        Response::builder()
            .status(status)
            .header("date", httpdate::fmt_http_date(date))
            .body(String::new())
            .unwrap()
    }))
}

/// The shortest pause a response closes its upstream's gate for, by the rules the gate
/// documents; `None` when it closes nothing.
fn pause_of(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    let info = RateLimitInfo::from_headers(headers)?;
    let wait =
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            info.wait()
        } else if info.remaining == Some(0) {
            info.reset
        } else {
            None
        }?;
    Some(wait.min(MAX_PAUSE))
}

/// The call finally failed, by the dead-letter layer's rules: an error, or a 408, 429 or 5xx.
fn finally_failed(outcome: &Result<Response<String>, tower_outbound::Error>) -> bool {
    match outcome {
        Err(_) => true,
        Ok(response) => {
            let status = response.status();
            status == StatusCode::REQUEST_TIMEOUT
                || status == StatusCode::TOO_MANY_REQUESTS
                || status.is_server_error()
        }
    }
}

pub fn outbound_stack(data: &[u8]) -> bool {
    let Some(script) = super::structured::<Script>(data) else {
        return false;
    };
    let (outbound, max_attempts, deadline) = match script.preset % 3 {
        0 => (Outbound::new(), 4, Duration::from_secs(30)),
        1 => (Outbound::user_facing(), 2, Duration::from_secs(5)),
        _ => (Outbound::background(), 5, Duration::from_secs(120)),
    };
    let (ratio, floor) = match script.budget {
        None => (0.2f32, 5u32),
        Some((r, f)) => (
            [0.0, 0.1, 0.2, 0.5][usize::from(r % 4)],
            [0, 1, 5][usize::from(f % 3)],
        ),
    };
    let outbound = match script.budget {
        None => outbound,
        Some(_) => {
            outbound.retry_budget(Some(RetryBudget::new().ratio(ratio).min_per_second(floor)))
        }
    };
    let mut answers = script.answers;
    answers.truncate(MAX_ANSWERS);
    let calls: Vec<Call> = script.calls.into_iter().take(MAX_CALLS).collect();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let start = Instant::now();
        let upstream = Arc::new(Mutex::new(Upstream {
            answers: answers.into_iter(),
            ..Upstream::default()
        }));
        let service = {
            let upstream = upstream.clone();
            outbound.service(tower::service_fn(move |request: Request<ReplayBody>| {
                let host = host_of(&request);
                let step = {
                    let mut upstream = upstream.lock().unwrap();
                    let call = upstream.call;
                    upstream.events.push(Event::Arrival {
                        host,
                        at: Instant::now(),
                        call,
                    });
                    upstream.answers.next()
                };
                let upstream = upstream.clone();
                async move {
                    let Some(step) = step else {
                        return Ok(Response::builder()
                            .status(200)
                            .body(String::from("ok"))
                            .unwrap());
                    };
                    tokio::time::sleep(Duration::from_millis(u64::from(step.delay_ms))).await;
                    let at = Instant::now();
                    let result = answer(&step, date_at(start, at));
                    if let Ok(response) = &result {
                        upstream.lock().unwrap().events.push(Event::Response {
                            host,
                            at,
                            status: response.status(),
                            headers: response.headers().clone(),
                        });
                    }
                    result
                }
            }))
        };

        // Per upstream: call starts (each deposits into its budget).
        let mut call_starts: [Vec<Instant>; 2] = [Vec::new(), Vec::new()];
        let mut last_end = start;
        let mut letters = 0;
        for (index, call) in calls.iter().enumerate() {
            match call.gap {
                Gap::None => {}
                Gap::Millis(ms) => tokio::time::sleep(Duration::from_millis(ms.into())).await,
                Gap::Minutes(m) => {
                    tokio::time::sleep(Duration::from_secs(60 * u64::from(m % 21))).await
                }
            }
            upstream.lock().unwrap().call = index;
            let host = usize::from(call.host);
            let request = Request::builder()
                .method(if call.post { "POST" } else { "GET" })
                .uri(format!("{}/v1/things", HOSTS[host]))
                .body(String::from_utf8_lossy(&call.body[..call.body.len().min(64)]).into_owned())
                .unwrap();
            let begun = Instant::now();
            call_starts[host].push(begun);
            let outcome = tokio::time::timeout(
                deadline + Duration::from_secs(1),
                service.clone().oneshot(request),
            )
            .await
            .expect("the call completes within its deadline");
            let elapsed = begun.elapsed();
            assert!(
                elapsed <= deadline + Duration::from_millis(1),
                "took {elapsed:?}, deadline {deadline:?}"
            );

            let made = upstream
                .lock()
                .unwrap()
                .events
                .iter()
                .filter(|e| matches!(e, Event::Arrival { call, .. } if *call == index))
                .count();
            assert!(
                made <= max_attempts,
                "call {index}: {made} attempts, at most {max_attempts}"
            );
            if begun.duration_since(last_end)
                > MAX_PAUSE.max(OPEN_DURATION) + Duration::from_secs(1)
            {
                assert!(
                    made > 0,
                    "call {index} after {:?} idle never reached the upstream: {outcome:?}",
                    begun.duration_since(last_end)
                );
            }
            last_end = Instant::now();

            if let Some(layer) = outbound.dead_letter_layer() {
                layer.flush().await;
                let now_held = layer.sink().count().await.unwrap();
                let expected = letters + usize::from(finally_failed(&outcome));
                assert_eq!(now_held, expected, "call {index} ended with {outcome:?}");
                letters = now_held;
            }
        }

        {
            let upstream = upstream.lock().unwrap();
            check_gates(&upstream.events);
            for (host, starts) in call_starts.iter().enumerate() {
                check_budget(&upstream.events, host, starts, ratio, floor);
            }
        }
        if let Some(layer) = outbound.dead_letter_layer() {
            for letter in layer.sink().read_all().await.unwrap() {
                assert!(letter.attempts as usize <= max_attempts, "{letter:?}");
            }
        }
    });
    true
}

/// No attempt reaches an upstream while a pause it asked for (capped) is running.
fn check_gates(events: &[Event]) {
    let mut open_at: [Option<Instant>; 2] = [None, None];
    for event in events {
        match event {
            Event::Response {
                host,
                at,
                status,
                headers,
            } => {
                if let Some(pause) = pause_of(*status, headers) {
                    let until = *at + pause;
                    open_at[*host] = Some(open_at[*host].map_or(until, |t| t.max(until)));
                }
            }
            Event::Arrival { host, at, call } => {
                if let Some(open) = open_at[*host] {
                    assert!(
                        *at >= open,
                        "call {call} reached upstream {host} at {at:?}, its gate opens at {open:?}"
                    );
                }
            }
        }
    }
}

/// Over any window ending with an attempt: retries ≤ floor · window + ratio · the calls made
/// in the two windows up to its end.
fn check_budget(events: &[Event], host: usize, call_starts: &[Instant], ratio: f32, floor: u32) {
    // (earliest, latest) time each retry can have been paid for: from the previous attempt of
    // its call to its own arrival.
    let mut retries: Vec<(Instant, Instant)> = Vec::new();
    let mut previous: Option<(usize, Instant)> = None;
    for event in events {
        if let Event::Arrival { host: h, at, call } = event {
            if *h != host {
                continue;
            }
            if let Some((prev_call, prev_at)) = previous {
                if prev_call == *call {
                    retries.push((prev_at, *at));
                }
            }
            previous = Some((*call, *at));
        }
    }
    let share = (f64::from(ratio) * 1000.0).round() / 1000.0;
    for &(_, end) in &retries {
        let from = end.checked_sub(WINDOW);
        let within = |t: Instant| from.is_none_or(|f| t > f) && t <= end;
        let made = retries
            .iter()
            .filter(|(a, b)| within(*a) && within(*b))
            .count();
        let calls_from = end.checked_sub(2 * WINDOW);
        let calls = call_starts
            .iter()
            .filter(|t| calls_from.is_none_or(|f| **t > f) && **t <= end)
            .count();
        let bound = u64::from(floor) * WINDOW.as_secs() + (calls as f64 * share).floor() as u64;
        assert!(
            made as u64 <= bound,
            "upstream {host}: {made} retries in the 10 s up to {end:?}, bound {bound} ({calls} calls, ratio {ratio}, floor {floor})"
        );
    }
}
