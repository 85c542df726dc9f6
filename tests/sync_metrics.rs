//! The main job with `--metrics ADDR`: a chaos run of `lehnz_sync` (the example's own code)
//! against the simulator, its Prometheus endpoint scraped over real HTTP on 127.0.0.1, and the
//! five signals checked against the job's own counts.
//!
//! Then the job runs through outages until every series is exported (a breaker that opens,
//! batches refused, dead letters kept, a dead-letter file that cannot be written),
//! and every metric name that the Grafana dashboard (docs/grafana/tower-outbound.json) and the
//! alerting rules (docs/alerts.yml) query is looked up among the names of the scrape.
#![cfg(all(feature = "lehnz", feature = "sim", feature = "metrics"))]

#[path = "../examples/lehnz_sync.rs"]
#[allow(dead_code, unreachable_pub)]
mod lehnz_sync;

#[path = "support/scrape.rs"]
mod scrape;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use scrape::{get, scrape, sum};
use tower_outbound::lehnz::sim::{Chaos, Simulator};
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
    // The replay at the end removes what it delivered: counted, and the depth falls with it
    // (both stayed put while the job replayed through a sink nobody metered; the later runs
    // below replay letters, and the dashboard's check needs their removals exported).
    let removals = std::fs::read_to_string(dir.path().join("checkpoint.dead-letters.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("{\"removed\""))
        .count();
    assert_eq!(
        sum(&series, "outbound_dead_letters_removed_total", &[]).unwrap_or(0.0),
        removals as f64,
        "the job's replay removals are counted"
    );
    assert_eq!(
        sum(&series, "outbound_dead_letters_depth", &[]).unwrap_or(-1.0),
        letters.saturating_sub(removals) as f64,
        "the depth fell with the replay"
    );

    // The recorder is the process's: the rest runs in this test, on the same endpoint.
    every_metric_the_dashboard_and_alerts_query_is_exported(addr, dir.path()).await;
}

/// The job's runs that reach the series a calm run does not, then the names of the dashboard's
/// and the alerting rules' queries looked up in the scrape.
async fn every_metric_the_dashboard_and_alerts_query_is_exported(addr: SocketAddr, dir: &Path) {
    let sim = Simulator::builder()
        .org("acme")
        .window(100, Duration::from_secs(5))
        .chaos(Chaos::none())
        .start()
        .await
        .unwrap();

    // Lehnz down, and a dead-letter file that cannot be written (its directory is a file):
    // the batches the open circuit refuses are failed calls kept nowhere.
    std::fs::write(dir.join("not-a-directory"), "").unwrap();
    let lost = dir.join("not-a-directory").join("letters.jsonl");
    sim.outage(Duration::from_secs(2));
    let outcome = sync(&sim, &lost, 3_000).await;
    assert!(
        outcome.as_ref().map_or(true, |o| o.failed > 0),
        "letters that cannot be stored fail the run: {outcome:?}"
    );

    // Lehnz down again: the circuit opens (and probes, and opens again), and the batches it
    // refuses go to the dead-letter file.
    sim.outage(Duration::from_secs(3));
    let outcome = sync(&sim, &dir.join("kept.dead-letters.jsonl"), 3_000)
        .await
        .unwrap();
    assert!(
        outcome.dead_lettered_while_streaming > 0,
        "the outage sent batches to the dead letters: {outcome:?}"
    );
    sim.shutdown().await;

    let exposition = Exposition::parse(&scrape_text(addr).await);
    let dashboard_text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/grafana/tower-outbound.json"
    ))
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard_text).unwrap();
    let alerts =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/alerts.yml")).unwrap();

    let queries = dashboard_queries(&dashboard);
    assert_eq!(
        queries.len(),
        dashboard_text.matches("\"expr\":").count() + 1,
        "every target of every panel, and the upstream variable: {queries:#?}"
    );
    let rules = AlertRules::parse(&alerts);
    assert_eq!(
        rules.exprs.len(),
        alerts.matches("expr:").count(),
        "every expr of docs/alerts.yml read: {:#?}",
        rules.exprs
    );
    for (source, exprs) in [
        ("docs/grafana/tower-outbound.json", &queries),
        ("docs/alerts.yml", &rules.exprs),
    ] {
        let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
        assert!(
            used.contains("outbound_calls_total"),
            "{source}: names found: {used:?}"
        );
        let missing = exposition.missing(&used, &rules.recorded);
        assert!(
            missing.is_empty(),
            "{source} queries metrics the job does not export: {missing:?}\nexported: {:?}",
            exposition.names
        );
    }
}

/// `lehnz_sync` against `sim`, `events` events in batches of 100, its dead letters in
/// `dead_letters`; a batch that meets the open circuit goes to the dead letters at once.
async fn sync(
    sim: &Simulator,
    dead_letters: &Path,
    events: usize,
) -> Result<lehnz_sync::Outcome, String> {
    let mut args = lehnz_sync::Args::parse(
        [
            "--base-url",
            &sim.base_url(),
            "--window",
            "100/5",
            "--events",
            &events.to_string(),
            "--batch",
            "100",
            "--concurrency",
            "8",
            "--seed",
            "11",
            "--patience",
            "0",
            "--quiet",
            "--dead-letters",
            &dead_letters.display().to_string(),
        ]
        .map(str::to_owned),
    )
    .unwrap();
    args.key = Some(sim.keys("acme").unwrap().secret);
    lehnz_sync::run(args).await.map_err(|e| e.to_string())
}

/// GET http://ADDR/metrics over a real connection: the whole text, `# HELP` and `# TYPE` lines
/// included.
async fn scrape_text(addr: SocketAddr) -> String {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client
        .get(format!("http://{addr}/metrics").parse().unwrap())
        .await
        .unwrap();
    assert!(response.status().is_success());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The metric names of a Prometheus text exposition.
#[derive(Debug, Default)]
struct Exposition {
    /// Every name of a sample line, a `# HELP` or a `# TYPE` line.
    names: BTreeSet<String>,
    /// The names a `# TYPE` line declares histograms: their series are `_bucket`, `_sum` and
    /// `_count`.
    histograms: BTreeSet<String>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut exposition = Exposition::default();
        for line in text.lines().map(str::trim) {
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                let (Some(kind @ ("HELP" | "TYPE")), Some(name)) = (words.next(), words.next())
                else {
                    continue;
                };
                if kind == "TYPE" && words.next() == Some("histogram") {
                    exposition.histograms.insert(name.to_owned());
                }
                exposition.names.insert(name.to_owned());
            } else if !line.is_empty() {
                let name = line.split(['{', ' ']).next().unwrap_or(line);
                exposition.names.insert(name.to_owned());
            }
        }
        exposition
    }

    /// The names of `used` that are not exported: a recording rule's name (`level:metric:ops`)
    /// must be one of `recorded`; `X_bucket`, `X_sum` and `X_count` are exported when `X` is
    /// a histogram.
    fn missing(&self, used: &BTreeSet<String>, recorded: &BTreeSet<String>) -> Vec<String> {
        used.iter()
            .filter(|name| {
                if name.contains(':') {
                    return !recorded.contains(*name);
                }
                let histogram_series = ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                    name.strip_suffix(suffix)
                        .is_some_and(|base| self.histograms.contains(base))
                });
                !self.names.contains(*name) && !histogram_series
            })
            .cloned()
            .collect()
    }
}

/// The metric names a query reads: its identifiers, outside quoted strings, that name a series
/// of the crate (`outbound_…`, `lehnz_…`) or a recording rule (`level:metric:operations`).
fn metric_names(query: &str) -> BTreeSet<String> {
    let mut unquoted = String::with_capacity(query.len());
    let mut quote = None;
    let mut escaped = false;
    for c in query.chars() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => {
                quote = None;
                unquoted.push(' ');
            }
            Some(_) => {}
            None if matches!(c, '"' | '\'' | '`') => quote = Some(c),
            None => unquoted.push(c),
        }
    }
    unquoted
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| {
            word.starts_with("outbound_")
                || word.starts_with("lehnz_")
                || (word.contains(':') && word.starts_with(|c: char| c.is_ascii_alphabetic()))
        })
        .map(str::to_owned)
        .collect()
}

/// Every query of a Grafana dashboard: each `expr` of its panels' targets (rows' panels
/// included) and the query of each variable of type `query`.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                        _ => exprs(value, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut queries = Vec::new();
    exprs(&dashboard["panels"], &mut queries);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten();
    for variable in variables.filter(|v| v["type"] == "query") {
        let query = &variable["query"];
        let query = query.as_str().or_else(|| query["query"].as_str());
        queries.push(query.expect("a query variable has a query").to_owned());
    }
    queries
}

/// The `expr` of every rule of a Prometheus rule file, and the names its recording rules
/// define, read line by line (`expr: …` on one line, or a `|`/`>` block under it).
#[derive(Debug, Default)]
struct AlertRules {
    exprs: Vec<String>,
    recorded: BTreeSet<String>,
}

impl AlertRules {
    fn parse(yaml: &str) -> AlertRules {
        let indent = |line: &str| line.len() - line.trim_start().len();
        let mut rules = AlertRules::default();
        let mut lines = yaml.lines().peekable();
        while let Some(line) = lines.next() {
            let field = line.trim_start().trim_start_matches("- ");
            if let Some(name) = field.strip_prefix("record:") {
                rules.recorded.insert(name.trim().to_owned());
            }
            let Some(expr) = field.strip_prefix("expr:").map(str::trim) else {
                continue;
            };
            if expr.starts_with(['|', '>']) {
                let mut block = Vec::new();
                while let Some(next) =
                    lines.next_if(|next| next.trim().is_empty() || indent(next) > indent(line))
                {
                    block.push(next.trim());
                }
                rules.exprs.push(block.join("\n").trim().to_owned());
            } else {
                rules.exprs.push(expr.trim_matches(['"', '\'']).to_owned());
            }
        }
        rules
    }
}

/// The extraction can fail: a misspelled name, a `_bucket` of a counter and a recording rule
/// nobody defines are missing; a histogram's series and a defined rule are found.
#[test]
fn a_misspelled_metric_name_is_reported_missing() {
    let exposition = Exposition::parse(
        "# TYPE outbound_calls_total counter\n\
         outbound_calls_total{upstream=\"http://a:80\",outcome=\"success\"} 3\n\
         \n\
         # TYPE outbound_call_duration_seconds histogram\n\
         outbound_call_duration_seconds_bucket{upstream=\"http://a:80\",le=\"+Inf\"} 3\n\
         outbound_call_duration_seconds_sum{upstream=\"http://a:80\"} 0.1\n\
         outbound_call_duration_seconds_count{upstream=\"http://a:80\"} 3\n",
    );
    let dashboard: serde_json::Value = serde_json::from_str(
        r#"{
          "panels": [
            {"type": "row", "panels": [{"targets": [
              {"expr": "sum by (upstream) (rate(outbound_callz_total{outcome=\"failed\"}[$__rate_interval]))"}
            ]}]},
            {"targets": [
              {"expr": "histogram_quantile(0.99, sum by (le) (rate(outbound_call_duration_seconds_bucket[5m])))"},
              {"expr": "rate(outbound_calls_total_bucket{upstream=~\"outbound_nothing_total\"}[5m])"}
            ]}
          ],
          "templating": {"list": [
            {"type": "query", "query": {"query": "label_values(outbound_calls_total, upstream)"}}
          ]}
        }"#,
    )
    .unwrap();
    let alerts = AlertRules::parse(
        "groups:\n\
         \x20 - name: g\n\
         \x20   rules:\n\
         \x20     - record: upstream:outbound_calls:rate5m\n\
         \x20       expr: sum by (upstream) (rate(outbound_calls_total[5m]))\n\
         \x20     - alert: A\n\
         \x20       expr: |\n\
         \x20         upstream:outbound_calls:rate5m > 1\n\
         \x20         and upstream:outbound_callz:rate5m > 0\n\
         \x20       for: 5m\n",
    );
    assert_eq!(alerts.exprs.len(), 2, "{alerts:?}");
    let queries = dashboard_queries(&dashboard);
    assert_eq!(queries.len(), 4, "{queries:?}");
    let used: BTreeSet<String> = queries
        .iter()
        .chain(&alerts.exprs)
        .flat_map(|q| metric_names(q))
        .collect();
    assert_eq!(
        exposition.missing(&used, &alerts.recorded),
        [
            "outbound_calls_total_bucket",
            "outbound_callz_total",
            "upstream:outbound_callz:rate5m",
        ],
        "used: {used:?}"
    );
}
