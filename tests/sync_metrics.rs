//! The main job with `--metrics ADDR`: a chaos run of `lehnz_sync` (the example's own code)
//! against the simulator, its Prometheus endpoint scraped over real HTTP on 127.0.0.1, and the
//! five signals checked against the job's own counts.
#![cfg(all(feature = "lehnz", feature = "sim", feature = "metrics"))]

#[path = "../examples/lehnz_sync.rs"]
#[allow(dead_code, unreachable_pub)]
mod lehnz_sync;

#[path = "support/scrape.rs"]
mod scrape;

use scrape::{get, scrape, sum};
use tower_outbound::metrics::Signals;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_job_exports_the_five_signals_it_reports() {
    let dir = tempfile::tempdir().unwrap();
    let addr = {
        // A free loopback port for the endpoint.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let args = lehnz_sync::Args::parse(
        [
            "--events",
            "4000",
            "--batch",
            "100",
            "--concurrency",
            "8",
            "--seed",
            "5",
            "--quiet",
            "--metrics",
            &addr.to_string(),
            "--checkpoint",
            &dir.path().join("checkpoint").display().to_string(),
        ]
        .map(str::to_owned),
    )
    .unwrap();
    lehnz_sync::run(args).await.unwrap();

    let series = scrape(addr).await;
    let signals = Signals::snapshot();
    // The simulator's upstream: the one label with calls on it.
    let upstream = signals
        .upstreams
        .iter()
        .find(|u| u.upstream.starts_with("http://127.0.0.1:") && u.calls > 0)
        .expect("the job's calls are counted per upstream");
    let label = upstream.upstream.as_str();
    let up = [("upstream", label)];

    // 1. Retry rate: attempts and retries, as the job counted them.
    let calls = get(&series, "outbound_calls_total", &up);
    assert_eq!(calls, upstream.calls as f64);
    assert!(
        calls >= 40.0,
        "4,000 events in batches of 100: at least 40 calls, {calls}"
    );
    assert_eq!(
        get(&series, "outbound_attempts_total", &up),
        upstream.attempts as f64
    );
    assert_eq!(
        sum(&series, "outbound_retries_total", &up).unwrap_or(0.0),
        upstream.retries as f64
    );
    assert!(upstream.retries > 0, "chaos made the job retry");
    // 2. Success after retry, 3. permanent failures: the outcomes of the calls.
    for (outcome, expected) in [
        ("success", upstream.successes),
        ("success_after_retry", upstream.successes_after_retry),
        ("failed", upstream.failed),
        ("refused", upstream.refused),
    ] {
        let exported = sum(
            &series,
            "outbound_calls_total",
            &[("upstream", label), ("outcome", outcome)],
        )
        .unwrap_or(0.0);
        assert_eq!(exported, expected as f64, "outcome {outcome}");
    }
    assert!(upstream.successes_after_retry > 0);
    // 4. Breaker state: the Lehnz breaker is org-wide (one for both hosts).
    assert!(
        sum(&series, "outbound_circuit_state", &[]).is_some(),
        "the breaker's state is exported"
    );
    // 5. Dead letters: the job's file, its depth and what was written.
    assert!(sum(&series, "outbound_dead_letters_depth", &[]).is_some());
    let written = sum(&series, "outbound_dead_letters_written_total", &[]).unwrap_or(0.0);
    let letters = std::fs::read_to_string(dir.path().join("checkpoint.dead-letters.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with("{\"removed\""))
        .count();
    assert_eq!(
        written, letters as f64,
        "every letter in the file was counted"
    );
}
