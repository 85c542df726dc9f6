//! The five signals on a real Prometheus endpoint: a chaos run through `Outbound` against two
//! loopback upstreams (examples/metrics.rs, the same code), scraped over HTTP, checked against
//! the run's own counts; and the alerting rules of docs/alerts.yml checked by promtool.

#[path = "../examples/metrics.rs"]
mod example;

use http::{Request, Response};
use tower::ServiceExt;
use tower_outbound::body::ReplayBody;
use tower_outbound::metrics::{self, Signals};
use tower_outbound::{CircuitState, Outbound};

#[path = "support/scrape.rs"]
mod scrape;

use scrape::{get, scrape, sum};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_run_exposes_the_five_signals_per_upstream() {
    let (addr, _handle) = example::serve_prometheus("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let run = example::workload(30).await.unwrap();
    let series = scrape(addr).await;
    let (flaky, down) = (run.flaky.as_str(), run.down.as_str());

    // Every call is counted once, under its upstream, by outcome.
    for (upstream, calls, ok) in [
        (flaky, run.flaky_calls, run.flaky_ok),
        (down, run.down_calls, run.down_ok),
    ] {
        let by = |outcome| {
            sum(
                &series,
                "outbound_calls_total",
                &[("upstream", upstream), ("outcome", outcome)],
            )
            .unwrap_or(0.0)
        };
        assert_eq!(
            get(&series, "outbound_calls_total", &[("upstream", upstream)]),
            calls as f64
        );
        assert_eq!(
            by("success") + by("success_after_retry"),
            ok as f64,
            "{upstream}"
        );
        assert_eq!(
            by("failed") + by("refused"),
            (calls - ok) as f64,
            "{upstream}"
        );
        get(
            &series,
            "outbound_call_duration_seconds_count",
            &[("upstream", upstream)],
        );
        get(
            &series,
            "outbound_attempts_total",
            &[("upstream", upstream)],
        );
        // 1. Retry rate.
        get(&series, "outbound_retries_total", &[("upstream", upstream)]);
        // 4. Breaker state.
        get(&series, "outbound_circuit_state", &[("upstream", upstream)]);
        // 6. The background preset's concurrency limit: a limit, and every place given back.
        let limit = get(
            &series,
            "outbound_concurrency_limit",
            &[("upstream", upstream)],
        );
        assert!((1.0..=1000.0).contains(&limit), "{upstream}: {limit}");
        assert_eq!(
            get(&series, "outbound_in_flight", &[("upstream", upstream)]),
            0.0
        );
        assert_eq!(
            get(
                &series,
                "outbound_concurrency_queued",
                &[("upstream", upstream)]
            ),
            0.0
        );
    }
    // 1. Retries, as the retry layer counted them.
    assert_eq!(
        get(&series, "outbound_retries_total", &[]),
        run.retry.retries() as f64
    );
    // 2. Success after retry, as the retry layer counted it.
    assert_eq!(
        get(
            &series,
            "outbound_calls_total",
            &[("outcome", "success_after_retry")]
        ),
        run.retry.successes_after_retry() as f64
    );
    assert!(
        run.retry.successes_after_retry() > 0,
        "the flaky upstream needs retries"
    );
    get(
        &series,
        "outbound_calls_retried_total",
        &[("upstream", flaky)],
    );
    // 3. Permanent failures: the upstream that is down fails every call; most are refused by
    // its open breaker.
    assert!(
        get(
            &series,
            "outbound_calls_total",
            &[("upstream", down), ("outcome", "failed")]
        ) > 0.0
    );
    assert!(
        get(
            &series,
            "outbound_refusals_total",
            &[("upstream", down), ("kind", "circuit")]
        ) > 0.0
    );
    // 4. The breaker of the upstream that is down opened once and stays open (30 s).
    assert_eq!(
        get(&series, "outbound_circuit_state", &[("upstream", down)]),
        2.0
    );
    assert_eq!(
        get(
            &series,
            "outbound_circuit_transitions_total",
            &[("to", "open")]
        ),
        run.circuit.times_opened() as f64
    );
    assert_eq!(
        get(
            &series,
            "outbound_circuit_transitions_total",
            &[("upstream", down), ("from", "closed"), ("to", "open")]
        ),
        1.0
    );
    // 5. Dead letters: the layer's writes and the replay's rewrites, the depth the sink holds,
    // and the age of the oldest.
    let sink = [("sink", "default")];
    assert_eq!(
        get(&series, "outbound_dead_letters_written_total", &sink),
        (run.dead_letters.written() + run.replay.still_failing as u64) as f64
    );
    assert_eq!(
        get(&series, "outbound_dead_letters_depth", &sink),
        run.dead_letters_kept as f64
    );
    assert!(run.dead_letters_kept > 0);
    assert!(
        get(
            &series,
            "outbound_dead_letters_oldest_timestamp_seconds",
            &sink
        ) > 1.0e9
    );
    get(&series, "outbound_dead_letters_oldest_age_seconds", &sink);
    assert_eq!(
        get(&series, "outbound_dead_letters_replayed_total", &[]),
        run.replay.replayed as f64
    );

    // The label is scheme://host:port and nothing else: no path, no query.
    for (name, labels, _) in &series {
        if let Some(upstream) = labels.get("upstream") {
            assert!(upstream == flaky || upstream == down, "{name}: {upstream}");
        }
    }

    // The in-process report agrees with the endpoint.
    let signals = Signals::snapshot();
    let row = signals.upstream(down).unwrap();
    assert_eq!(row.calls, run.down_calls);
    assert_eq!(row.circuit, Some(CircuitState::Open));
    let row = signals.upstream(flaky).unwrap();
    assert_eq!(row.calls, run.flaky_calls);
    // The limit as the gauges say it: every place given back.
    let limit = row
        .concurrency
        .expect("the background preset's limit reported");
    assert_eq!((limit.in_flight, limit.queued), (0, 0));
    assert_eq!(
        f64::from(limit.limit),
        get(
            &series,
            "outbound_concurrency_limit",
            &[("upstream", flaky)]
        )
    );
    assert!(signals
        .to_string()
        .contains(&format!("concurrency limit ({flaky}): {}", limit.limit)));
    assert_eq!(
        signals
            .dead_letters
            .iter()
            .find(|s| s.sink == "default")
            .map(|s| s.depth),
        Some(run.dead_letters_kept as u64)
    );

    // Past the cap on distinct upstreams, new ones share `other`.
    metrics::max_upstreams(3);
    let upstream = tower::service_fn(|_req: Request<ReplayBody>| async {
        Ok::<_, std::convert::Infallible>(Response::new(String::new()))
    });
    let service = Outbound::new().service(upstream);
    for host in ["third.test", "fourth.test", "fifth.test"] {
        let request = Request::get(format!("http://{host}/x?token=t"))
            .body(String::new())
            .unwrap();
        service.clone().oneshot(request).await.unwrap();
    }
    let series = scrape(addr).await;
    assert_eq!(
        get(
            &series,
            "outbound_calls_total",
            &[("upstream", "http://third.test:80")]
        ),
        1.0
    );
    assert_eq!(
        get(&series, "outbound_calls_total", &[("upstream", "other")]),
        2.0
    );
    assert!(sum(
        &series,
        "outbound_calls_total",
        &[("upstream", "http://fourth.test:80")]
    )
    .is_none());
}

/// docs/alerts.yml passes `promtool check rules` and its unit tests, docs/alerts.test.yml.
/// Without promtool (`apt-get install prometheus`), each alert is checked for the fields
/// Prometheus requires.
#[test]
fn alert_rules_are_valid() {
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/docs");
    let promtool = std::process::Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(docs)
        .output();
    match promtool {
        Ok(output) => {
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stdout)
            );
            let output = std::process::Command::new("promtool")
                .args(["test", "rules", "alerts.test.yml"])
                .current_dir(docs)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        Err(_) => {
            let rules = std::fs::read_to_string(format!("{docs}/alerts.yml")).unwrap();
            let alerts: Vec<&str> = rules.split("- alert: ").skip(1).collect();
            assert_eq!(alerts.len(), 7);
            for alert in alerts {
                for field in [
                    "expr:",
                    "severity:",
                    "summary:",
                    "description:",
                    "Runbook: docs/operability.md#",
                ] {
                    assert!(alert.contains(field), "{field} missing in {alert}");
                }
            }
        }
    }
}
