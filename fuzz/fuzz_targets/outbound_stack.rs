//! The whole `Outbound` stack over a scripted upstream that answers each attempt with an
//! arbitrary status, `Retry-After` / `RateLimit-*` headers, delay or transport error, on
//! tokio's paused clock. Checked on every run:
//!
//! - nothing panics, and the call always completes (under paused time, within the deadline);
//! - the upstream sees at most the preset's number of attempts;
//! - the call takes no longer than its deadline;
//! - a 2xx answer is returned as it is and never dead-lettered.
#![no_main]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbitrary::Arbitrary;
use http::{Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;
use tower_outbound::body::ReplayBody;
use tower_outbound::Outbound;

#[derive(Arbitrary, Debug)]
struct Script {
    preset: u8,
    post: bool,
    body: Vec<u8>,
    attempts: Vec<Attempt>,
}

#[derive(Arbitrary, Debug, Clone)]
struct Attempt {
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
    Date(u32),
}

impl Wait {
    fn value(&self) -> String {
        match self {
            Wait::Seconds(s) => s.to_string(),
            Wait::Text(t) => t.clone(),
            // Seconds after the epoch: anything from 1970 to 2106, past and future.
            Wait::Date(s) => httpdate_string(*s),
        }
    }
}

fn httpdate_string(secs: u32) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(u64::from(secs)))
}
fuzz_target!(|script: Script| {
    let (outbound, max_attempts, deadline) = match script.preset % 3 {
        0 => (Outbound::new(), 4, Duration::from_secs(30)),
        1 => (Outbound::user_facing(), 2, Duration::from_secs(5)),
        _ => (Outbound::background(), 5, Duration::from_secs(120)),
    };
    let attempts = Arc::new(Mutex::new(script.attempts.clone().into_iter()));
    let calls = Arc::new(AtomicU32::new(0));
    let upstream = {
        let calls = calls.clone();
        tower::service_fn(move |_req: Request<ReplayBody>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let step = attempts.lock().unwrap().next();
            async move {
                let Some(step) = step else {
                    return Ok(Response::builder().status(200).body(String::from("ok")).unwrap());
                };
                tokio::time::sleep(Duration::from_millis(u64::from(step.delay_ms))).await;
                if step.error {
                    return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
                }
                let status = StatusCode::from_u16(step.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                let mut response = Response::builder().status(status);
                if let Some(wait) = &step.retry_after {
                    response = response.header("retry-after", wait.value());
                }
                if let Some(remaining) = step.remaining {
                    response = response.header("ratelimit-remaining", remaining.to_string());
                }
                if let Some(reset) = &step.reset {
                    response = response.header("ratelimit-reset", reset.value());
                }
                Ok(response
                    .body(String::new())
                    .unwrap_or_else(|_| Response::builder().status(status).body(String::new()).unwrap()))
            }
        })
    };
    let service = outbound.service(upstream);
    let method = if script.post { "POST" } else { "GET" };
    let request = Request::builder()
        .method(method)
        .uri("http://api.example.invalid/v1/things")
        .body(String::from_utf8_lossy(&script.body).into_owned())
        .unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let start = tokio::time::Instant::now();
        let outcome = tokio::time::timeout(deadline + Duration::from_secs(1), service.oneshot(request))
            .await
            .expect("the call completes within its deadline");
        let elapsed = start.elapsed();
        let made = calls.load(Ordering::SeqCst);
        assert!(made <= max_attempts, "{made} attempts, at most {max_attempts}");
        assert!(elapsed <= deadline + Duration::from_millis(1), "took {elapsed:?}, deadline {deadline:?}");
        let succeeded = matches!(&outcome, Ok(r) if r.status().is_success());
        if let Some(layer) = outbound.dead_letter_layer() {
            layer.flush().await;
            let letters = layer.sink().read_all().await.unwrap();
            if succeeded {
                assert!(letters.is_empty(), "a 2xx was dead-lettered: {letters:?}");
            }
            assert!(letters.len() <= 1);
        }
    });
});
