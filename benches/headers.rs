//! Cost of reading rate-limit headers, per format, at three sizes: 1, 4 and 16 items (lines or
//! list members), the last one at the parser's item bound. Time per item should stay flat as
//! the size grows (linear work); past the bound, a longer header costs no more.
//!
//! `cargo bench --bench headers` (a quick check: `-- --warm-up-time 1 --measurement-time 2`).

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderName, HeaderValue};
use tower_outbound::RateLimitInfo;

const SIZES: [usize; 3] = [1, 4, 16];

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn map(pairs: Vec<(&'static str, String)>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_static(name),
            HeaderValue::from_str(&value).unwrap(),
        );
    }
    map
}

/// Each format with `n` items.
fn formats(n: usize) -> Vec<(&'static str, HeaderMap)> {
    let lines = |name: &'static str,
                 value: &dyn Fn(usize) -> String|
     -> Vec<(&'static str, String)> { (0..n).map(|i| (name, value(i))).collect() };
    let list = |value: &dyn Fn(usize) -> String| (0..n).map(value).collect::<Vec<_>>().join(", ");
    vec![
        (
            "retry_after_delta",
            map(lines("retry-after", &|i| (i + 1).to_string())),
        ),
        (
            "retry_after_date",
            map(lines("retry-after", &|i| {
                httpdate::fmt_http_date(now() + Duration::from_secs(i as u64 + 1))
            })),
        ),
        (
            "draft7",
            map([
                lines("ratelimit-remaining", &|i| (i + 1).to_string()),
                lines("ratelimit-reset", &|i| (i + 30).to_string()),
                vec![("ratelimit-limit", "100".to_owned())],
            ]
            .concat()),
        ),
        (
            "structured",
            map(vec![
                ("ratelimit", list(&|i| format!("\"p{i}\";r={};t=30", i + 1))),
                (
                    "ratelimit-policy",
                    list(&|i| format!("\"p{}\";q=100;w=60", n - 1 - i)),
                ),
            ]),
        ),
        (
            "x_ratelimit_epoch",
            map([
                lines("x-ratelimit-remaining", &|i| i.to_string()),
                lines("x-ratelimit-reset", &|i| (1_700_000_030 + i).to_string()),
            ]
            .concat()),
        ),
        (
            "openai_duration",
            map([
                lines("x-ratelimit-remaining-requests", &|i| i.to_string()),
                lines("x-ratelimit-reset-requests", &|i| {
                    format!("{}m{}.5s", i, i % 60)
                }),
            ]
            .concat()),
        ),
    ]
}

fn headers(c: &mut Criterion) {
    let mut group = c.benchmark_group("headers");
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        for (format, map) in formats(n) {
            group.bench_with_input(BenchmarkId::new(format, n), &map, |b, map| {
                b.iter(|| RateLimitInfo::from_headers_at(black_box(map), now()))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, headers);
criterion_main!(benches);
