//! Properties that hold for any input: backoff bounds, the retry wait budget, rate-limit
//! parsing (no panic, bounded, monotone) and dead letters that read back as they were written.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tower::ServiceExt;
use tower_outbound::body::ReplayBody;
use tower_outbound::rate_limit::{parse_delta_seconds, parse_retry_after, MAX_LINES, MAX_WAIT};
use tower_outbound::retry::{ExponentialBackoff, Jitter};
use tower_outbound::{DeadLetterLayer, JsonLinesSink, MemorySink, RateLimitInfo, RetryLayer, Sink};

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        Just(Jitter::Full),
        Just(Jitter::Equal),
        Just(Jitter::Decorrelated),
        Just(Jitter::None),
    ]
}

fn millis(max: u64) -> impl Strategy<Value = Duration> {
    (0..=max).prop_map(Duration::from_millis)
}

// ---------------------------------------------------------------------------------------------
// Backoff

proptest! {
    #[test]
    fn backoff_delays_stay_inside_their_jitter_bounds_and_under_the_cap(
        base in millis(10_000),
        max in millis(120_000),
        jitter in jitter(),
        retry in 0u32..80,
        previous in millis(200_000),
        seed in any::<u64>(),
    ) {
        let backoff = ExponentialBackoff::new(base, max, jitter);
        let ceiling = backoff.ceiling(retry);
        prop_assert!(ceiling <= max);
        // The ceiling doubles until the cap, and never shrinks with the retry number.
        prop_assert!(backoff.ceiling(retry + 1) >= ceiling);
        let mut rng = SmallRng::seed_from_u64(seed);
        let delay = backoff.delay(retry, previous, &mut rng);
        prop_assert!(delay <= max, "{delay:?} over the cap {max:?}");
        match jitter {
            Jitter::None => prop_assert_eq!(delay, ceiling),
            Jitter::Full => prop_assert!(delay <= ceiling),
            Jitter::Equal => prop_assert!(delay >= ceiling / 2 && delay <= ceiling),
            Jitter::Decorrelated => {
                let low = base.min(max);
                let high = previous.max(base).saturating_mul(3).min(max).max(low);
                prop_assert!(delay >= low && delay <= high, "{delay:?} not in [{low:?}, {high:?}]");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn retry_waits_add_up_to_no_more_than_the_total_budget(
        attempts in 1u32..8,
        base in millis(2_000),
        max in millis(10_000),
        budget in millis(15_000),
        jitter in jitter(),
        seed in any::<u64>(),
    ) {
        let layer = RetryLayer::new()
            .max_attempts(attempts)
            .base_delay(base)
            .max_delay(max)
            .max_total_delay(budget)
            .jitter(jitter)
            .rng_seed(seed);
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = calls.clone();
        let upstream = tower::service_fn(move |_req: Request<ReplayBody>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                Ok::<_, std::convert::Infallible>(
                    Response::builder().status(503).body(()).unwrap(),
                )
            }
        });
        let service = tower::Layer::layer(&layer, upstream);
        let (elapsed, made) = paused_runtime().block_on(async {
            let start = tokio::time::Instant::now();
            let _ = service.oneshot(Request::get("http://api.example.com/").body(String::new()).unwrap()).await;
            (start.elapsed(), calls.load(std::sync::atomic::Ordering::SeqCst))
        });
        prop_assert!(made >= 1 && made <= attempts, "{made} attempts, at most {attempts}");
        // The upstream answers at once, so all the time spent is waiting between attempts.
        prop_assert!(elapsed <= budget, "waited {elapsed:?}, budget {budget:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Rate-limit parsing

const NAMES: &[&str] = &[
    "retry-after",
    "date",
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-reset-requests",
    "x-ratelimit-remaining-tokens",
];

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn header_maps() -> impl Strategy<Value = HeaderMap> {
    // Values built from the characters the formats use, plus anything at all.
    let value = prop_oneof![
        "[0-9a-zA-Z\"=;,:*() \t.-]{0,40}",
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    prop::collection::vec((0..NAMES.len(), value), 0..12).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(&value) {
                map.append(HeaderName::from_static(NAMES[name]), value);
            }
        }
        map
    })
}

proptest! {
    #[test]
    fn rate_limit_parsing_never_panics_and_never_waits_longer_than_max_wait(
        map in header_maps(),
        clock in prop_oneof![Just(0u64), Just(1_700_000_000), Just(253_402_300_799), any::<u32>().prop_map(u64::from)],
    ) {
        let info = RateLimitInfo::from_headers_at(&map, UNIX_EPOCH + Duration::from_secs(clock));
        if let Some(info) = info {
            for wait in [info.retry_after, info.reset, info.window, info.wait()].into_iter().flatten() {
                prop_assert!(wait <= MAX_WAIT);
            }
            // The wait is never shorter than what Retry-After asked.
            prop_assert!(info.wait() >= info.retry_after);
        }
    }

    #[test]
    fn a_larger_delta_is_never_a_shorter_wait(a in any::<u64>(), b in any::<u64>()) {
        let (lo, hi) = (a.min(b), a.max(b));
        if let (Ok(x), Ok(y)) = (parse_delta_seconds(lo.to_string().as_bytes()), parse_delta_seconds(hi.to_string().as_bytes())) {
            prop_assert!(x <= y);
        }
        // Past the cap, a value stays refused.
        if parse_delta_seconds(lo.to_string().as_bytes()).is_err() {
            prop_assert!(parse_delta_seconds(hi.to_string().as_bytes()).is_err());
        }
    }

    #[test]
    fn a_later_retry_after_date_is_never_a_shorter_wait(a in 0u64..400 * 86_400, b in 0u64..400 * 86_400) {
        let date = |offset: u64| {
            let at = now() + Duration::from_secs(offset);
            HeaderValue::from_str(&httpdate_string(at)).unwrap()
        };
        let (lo, hi) = (a.min(b), a.max(b));
        let x = parse_retry_after(&date(lo), None, now());
        let y = parse_retry_after(&date(hi), None, now());
        if let (Ok(x), Ok(y)) = (x, y) {
            prop_assert!(x <= y);
            prop_assert_eq!(x, Duration::from_secs(lo));
        } else {
            prop_assert!(y.is_err(), "a later date was refused but not an earlier one");
        }
    }

    #[test]
    fn another_retry_after_line_never_shortens_the_wait(
        first in 0u64..100_000,
        more in prop::collection::vec(prop_oneof!["[0-9]{1,6}", "[ -~]{0,12}"], 0..8),
    ) {
        let mut map = HeaderMap::new();
        map.append("retry-after", HeaderValue::from_str(&first.to_string()).unwrap());
        let before = RateLimitInfo::from_headers_at(&map, now()).and_then(|i| i.retry_after);
        for value in &more {
            map.append("retry-after", HeaderValue::from_str(value).unwrap());
        }
        prop_assume!(map.get_all("retry-after").iter().count() <= MAX_LINES);
        let after = RateLimitInfo::from_headers_at(&map, now()).and_then(|i| i.retry_after);
        prop_assert!(after >= before);
    }

    #[test]
    fn another_quota_never_raises_the_remaining_count(
        remaining in prop::collection::vec(0u64..1000, 1..6),
        extra in 0u64..1000,
    ) {
        let mut map = HeaderMap::new();
        for r in &remaining {
            map.append("x-ratelimit-remaining", HeaderValue::from_str(&r.to_string()).unwrap());
        }
        let before = RateLimitInfo::from_headers_at(&map, now()).unwrap().remaining.unwrap();
        prop_assert_eq!(before, *remaining.iter().min().unwrap());
        map.append("ratelimit-remaining", HeaderValue::from_str(&extra.to_string()).unwrap());
        let after = RateLimitInfo::from_headers_at(&map, now()).unwrap().remaining.unwrap();
        prop_assert!(after <= before);
    }
}

fn httpdate_string(at: SystemTime) -> String {
    // IMF-fixdate, through the crate's own parser's counterpart.
    httpdate::fmt_http_date(at)
}

// ---------------------------------------------------------------------------------------------
// Dead letters

/// Header values of any bytes a header may hold: visible ASCII, tab, space and bytes 0x80-0xFF
/// (not UTF-8 on their own).
fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..24)
        .prop_map(|bytes| HeaderValue::from_bytes(&bytes).unwrap())
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..256),
        2 => "[ -~é\n]{0,200}".prop_map(String::into_bytes),
        1 => Just(Vec::new()),
        1 => (any::<u8>(), 100_000usize..300_000).prop_map(|(b, n)| vec![b; n]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_dead_letter_reads_back_from_a_json_lines_file_as_it_was_written(
        method in prop_oneof![Just("POST"), Just("PUT"), Just("PATCH"), Just("DELETE")],
        headers in prop::collection::vec(
            (prop_oneof![Just("x-a"), Just("x-b"), Just("content-type"), Just("accept")], header_value()),
            0..6,
        ),
        body in body(),
    ) {
        let memory = MemorySink::new();
        let layer = DeadLetterLayer::new(memory.clone()).max_body(1 << 20);
        let upstream = tower::service_fn(|_req: Request<ReplayBody>| async {
            Ok::<_, std::convert::Infallible>(
                Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).body(()).unwrap(),
            )
        });
        let service = tower::Layer::layer(&layer, upstream);
        let mut request = Request::builder()
            .method(method)
            .uri("https://api.example.com/v1/things?page=2")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        for (name, value) in &headers {
            request.headers_mut().append(*name, value.clone());
        }
        let dir = tempfile::tempdir().unwrap();
        let file = JsonLinesSink::new(dir.path().join("letters.jsonl"));
        let rt = paused_runtime();
        let (written, read) = rt.block_on(async {
            let _ = service.oneshot(request).await;
            layer.flush().await;
            let written = memory.letters();
            for letter in &written {
                file.write(letter.clone()).await.unwrap();
            }
            (written, file.read_all().await.unwrap())
        });
        prop_assert_eq!(written.len(), 1);
        prop_assert_eq!(&read, &written);
        prop_assert_eq!(file.skipped_lines(), 0);
        // And the letter is the request: same method, headers (bytes for bytes) and body.
        let replayed = read[0].to_request().expect("a kept body replays");
        prop_assert_eq!(replayed.method().as_str(), method);
        for (name, value) in &headers {
            let all: Vec<&HeaderValue> = replayed.headers().get_all(*name).iter().collect();
            prop_assert!(all.contains(&value), "{name}: {value:?} lost");
        }
        let got = rt.block_on(replayed.into_body().collect()).unwrap().to_bytes();
        prop_assert_eq!(got.as_ref(), body.as_slice());
    }
}
