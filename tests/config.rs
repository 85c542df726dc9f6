//! Configuration from files: TOML and JSON files read with serde and built into an `Outbound`,
//! per-upstream settings observed in behaviour against real hyper servers on 127.0.0.1, and
//! the refusals (unknown keys, values out of range, durations without a unit, upstreams with
//! a global partition).

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{Reply, ScriptedServer};
use tower::ServiceExt;
use tower_outbound::body::ReplayBody;
use tower_outbound::config::{ConfigErrorKind, OutboundConfig};
use tower_outbound::partition::Scope;
use tower_outbound::{IdempotencyKeyLayer, Outbound, RetryLayer};

/// `text` in a real file, as an operator would leave it.
fn file(suffix: &str, text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(suffix).tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.flush().unwrap();
    file
}

fn read_toml(text: &str) -> Result<OutboundConfig, toml::de::Error> {
    let file = file(".toml", text);
    toml::from_str(&std::fs::read_to_string(file.path()).unwrap())
}

fn read_json(text: &str) -> serde_json::Result<OutboundConfig> {
    let file = file(".json", text);
    serde_json::from_reader(std::fs::File::open(file.path()).unwrap())
}

/// Calls `url` once through `outbound` around a hyper-util client; the final status.
async fn get(outbound: &Outbound, url: &str) -> StatusCode {
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    outbound
        .service(client)
        .oneshot(request)
        .await
        .unwrap()
        .status()
}

async fn failing_server() -> ScriptedServer {
    ScriptedServer::start(vec![Reply::status(503); 8]).await
}

#[tokio::test(start_paused = true)]
async fn a_toml_file_gives_one_upstream_one_attempt_and_the_others_four() {
    let (a, b) = (failing_server().await, failing_server().await);
    let config = read_toml(&format!(
        r#"
        preset = "new"

        [defaults]
        attempts = 4
        base_delay = "10ms"
        breaker = {{ failure_rate = 0.5, minimum_calls = 20 }}

        [upstreams."127.0.0.1:{port}"]
        attempts = 1
        "#,
        port = a.addr().port()
    ))
    .unwrap();
    let outbound = config.build().unwrap();

    assert_eq!(
        get(&outbound, &a.url("/")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get(&outbound, &b.url("/")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(a.received().len(), 1, "the upstream's own attempts");
    assert_eq!(b.received().len(), 4, "the defaults");
}

#[tokio::test(start_paused = true)]
async fn a_json_file_is_laid_over_its_preset_per_upstream() {
    let (a, b) = (failing_server().await, failing_server().await);
    let config = read_json(&format!(
        r#"{{
            "preset": "background",
            "defaults": {{ "attempts": 3, "base_delay": "5ms", "max_delay": "20ms" }},
            "upstreams": {{ "127.0.0.1:{port}": {{ "attempts": 2, "deadline": "off" }} }}
        }}"#,
        port = b.addr().port()
    ))
    .unwrap();
    let outbound = Outbound::try_from(config).unwrap();

    get(&outbound, &a.url("/")).await;
    get(&outbound, &b.url("/")).await;
    assert_eq!(a.received().len(), 3, "the defaults");
    assert_eq!(b.received().len(), 2, "the upstream's own attempts");
    // The background preset's dead letters hold both calls: the upstream's stack shares them.
    let letters = outbound.dead_letter_layer().unwrap();
    letters.flush().await;
    assert_eq!(letters.remaining().await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_upstreams_stack_keeps_its_own_counters() {
    let (a, b) = (failing_server().await, failing_server().await);
    let config = read_toml(&format!(
        r#"
        defaults = {{ base_delay = "1ms" }}
        upstreams."127.0.0.1:{port}" = {{ attempts = 2 }}
        "#,
        port = a.addr().port()
    ))
    .unwrap();
    let outbound = config.build().unwrap();
    get(&outbound, &a.url("/")).await;
    get(&outbound, &b.url("/")).await;
    get(&outbound, &b.url("/")).await;

    let (host, stack) = outbound.upstream_stacks().next().unwrap();
    assert_eq!(host, format!("127.0.0.1:{}", a.addr().port()));
    assert_eq!(stack.retry_stats().calls(), 1);
    assert_eq!(stack.retry_stats().retries(), 1);
    assert_eq!(
        outbound.retry_stats().calls(),
        2,
        "the other upstream's calls"
    );
}

/// An upstream in memory that answers 503 and counts requests per authority, noting which
/// carried an idempotency key.
#[derive(Clone, Default)]
struct Counting {
    seen: Arc<Mutex<HashMap<String, (usize, usize)>>>,
}

impl Counting {
    fn service(
        &self,
    ) -> impl tower::Service<
        Request<ReplayBody>,
        Response = Response<()>,
        Error = Infallible,
        Future = std::future::Ready<Result<Response<()>, Infallible>>,
    > + Clone {
        let seen = self.seen.clone();
        tower::service_fn(move |request: Request<ReplayBody>| {
            let authority = request.uri().authority().unwrap().to_string();
            let keyed = request.headers().contains_key("idempotency-key") as usize;
            let mut seen = seen.lock().unwrap();
            let entry = seen.entry(authority).or_default();
            entry.0 += 1;
            entry.1 += keyed;
            let mut response = Response::new(());
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            std::future::ready(Ok(response))
        })
    }

    fn requests(&self, authority: &str) -> usize {
        self.seen.lock().unwrap().get(authority).map_or(0, |s| s.0)
    }

    fn keyed(&self, authority: &str) -> usize {
        self.seen.lock().unwrap().get(authority).map_or(0, |s| s.1)
    }
}

async fn call(outbound: &Outbound, upstream: &Counting, method: &str, uri: &str) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(String::new())
        .unwrap();
    outbound
        .service(upstream.service())
        .oneshot(request)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_host_matches_each_of_its_ports_in_any_case_and_nothing_else() {
    let quick = RetryLayer::new().base_delay(std::time::Duration::from_millis(1));
    let outbound = Outbound::new().retry(quick.clone()).upstream(
        "API.Example.com",
        Outbound::new().retry(quick.max_attempts(1)),
    );
    let upstream = Counting::default();
    call(&outbound, &upstream, "GET", "http://api.example.com/a").await;
    call(
        &outbound,
        &upstream,
        "GET",
        "https://API.EXAMPLE.COM:8443/b",
    )
    .await;
    call(&outbound, &upstream, "GET", "http://other.example.com/").await;
    call(
        &outbound,
        &upstream,
        "GET",
        "http://api.example.com.other.test/",
    )
    .await;
    assert_eq!(upstream.requests("api.example.com"), 1);
    assert_eq!(upstream.requests("API.EXAMPLE.COM:8443"), 1);
    assert_eq!(upstream.requests("other.example.com"), 4);
    assert_eq!(upstream.requests("api.example.com.other.test"), 4);
}

#[tokio::test(start_paused = true)]
async fn an_upstreams_stack_stamps_its_own_idempotency_keys() {
    let quick = RetryLayer::new().base_delay(std::time::Duration::from_millis(1));
    let outbound = Outbound::new()
        .retry(quick.clone())
        .upstream(
            "keyless.example.com",
            Outbound::new().retry(quick.clone()).idempotency(None),
        )
        .upstream(
            "custom.example.com",
            Outbound::new()
                .retry(quick)
                .idempotency(Some(IdempotencyKeyLayer::new())),
        );
    let upstream = Counting::default();
    call(&outbound, &upstream, "POST", "http://keyless.example.com/").await;
    call(&outbound, &upstream, "POST", "http://keyed.example.com/").await;
    // Without a key a POST is sent once, not retried; with one, every attempt carries it.
    assert_eq!(upstream.requests("keyless.example.com"), 1);
    assert_eq!(upstream.keyed("keyless.example.com"), 0);
    assert_eq!(upstream.requests("keyed.example.com"), 4);
    assert_eq!(upstream.keyed("keyed.example.com"), 4);
}

#[tokio::test(start_paused = true)]
async fn a_global_stack_does_not_use_the_stacks_given_to_hosts() {
    let quick = RetryLayer::new().base_delay(std::time::Duration::from_millis(1));
    let outbound = Outbound::new()
        .partition(Scope::Global)
        .retry(quick.clone())
        .upstream(
            "api.example.com",
            Outbound::new().retry(quick.max_attempts(1)),
        );
    let upstream = Counting::default();
    call(&outbound, &upstream, "GET", "http://api.example.com/").await;
    assert_eq!(upstream.requests("api.example.com"), 4, "as documented");
}

#[test]
fn an_unknown_key_is_refused_naming_the_key() {
    let error = read_toml(
        r#"
        [upstreams."api.example.com"]
        atempts = 2
        "#,
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("unknown field `atempts`"), "{error}");
    let error = read_toml("[defaults]\nbreaker = { failure_ratio = 0.5 }\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown field `failure_ratio`"), "{error}");
    let error = read_json(r#"{ "default": {} }"#).unwrap_err().to_string();
    assert!(error.contains("unknown field `default`"), "{error}");
}

#[test]
fn an_out_of_range_value_is_refused_naming_its_full_path() {
    let config = read_toml(
        r#"
        [upstreams."api.stripe.com"]
        attempts = 0
        "#,
    )
    .unwrap();
    let error = config.build().unwrap_err();
    assert_eq!(error.kind(), ConfigErrorKind::OutOfRange);
    assert_eq!(
        error.to_string(),
        r#"upstreams."api.stripe.com".attempts: 0 is out of range (1 to 100)"#
    );
    let config = read_toml("[defaults]\nbreaker = { failure_rate = 1.5 }\n").unwrap();
    assert_eq!(
        config.build().unwrap_err().to_string(),
        "defaults.breaker.failure_rate: 1.5 is out of range (0 to 1)"
    );
    let config =
        read_json(r#"{ "defaults": { "throttle": { "rate": 0, "per": "1s" } } }"#).unwrap();
    assert_eq!(
        config.build().unwrap_err().to_string(),
        "defaults.throttle.rate: 0 is out of range (at least 1)"
    );
}

#[test]
fn a_plain_number_for_a_duration_is_refused_with_a_unit_to_add() {
    let error = read_toml("[defaults]\ndeadline = 30\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("30 has no unit"), "{error}");
    assert!(error.contains("\"30s\""), "{error}");
    let error = read_json(r#"{ "defaults": { "gate": { "max_wait": "90" } } }"#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("90 has no unit"), "{error}");
    // With a unit, the same values are read.
    read_toml("[defaults]\ndeadline = \"30s\"\ngate = { max_wait = \"1m30s\" }\n")
        .unwrap()
        .build()
        .unwrap();
}

#[test]
fn upstreams_with_a_global_partition_are_refused() {
    let config = read_toml(
        r#"
        partition = "global"

        [upstreams."api.example.com"]
        attempts = 1
        "#,
    )
    .unwrap();
    let error = config.build().unwrap_err();
    assert_eq!(error.kind(), ConfigErrorKind::GlobalPartition);
    assert!(error.to_string().starts_with("upstreams: "), "{error}");
}

#[test]
fn a_config_written_out_as_toml_reads_back_the_same() {
    let config = read_toml(
        r#"
        preset = "background"

        [defaults]
        attempts = 5
        max_total_delay = "1h30m"
        attempt_timeout = "off"
        concurrency = { limit = 16, max_wait = "250ms" }

        [upstreams."api.example.com"]
        throttle = { rate = 100, per = "1s", burst = 10 }
        breaker = "off"
        "#,
    )
    .unwrap();
    let text = toml::to_string(&config).unwrap();
    assert_eq!(
        toml::from_str::<OutboundConfig>(&text).unwrap(),
        config,
        "{text}"
    );
}

#[test]
fn a_file_turns_hedging_on_per_upstream_and_refuses_a_quantile_out_of_range() {
    let config = read_toml(
        r#"
        preset = "latency_sensitive"

        [defaults]
        hedge = "off"

        [upstreams."search.internal"]
        hedge = { quantile = 0.9, budget = 0.02, fallback_delay = "15ms" }
        "#,
    )
    .unwrap();
    let stack = config.build().unwrap();
    assert!(stack.hedge_layer().is_none(), "off by default");
    let search = stack
        .upstream_stacks()
        .find(|(host, _)| host.contains("search.internal"))
        .map(|(_, stack)| stack)
        .unwrap();
    let hedge = format!("{:?}", search.hedge_layer().unwrap());
    assert!(hedge.contains("quantile: 0.9"), "{hedge}");
    assert!(hedge.contains("fallback: 15ms"), "{hedge}");

    let config = read_toml("[defaults]\nhedge = { quantile = 2.0 }\n").unwrap();
    assert_eq!(
        config.build().unwrap_err().to_string(),
        "defaults.hedge.quantile: 2 is out of range (0.5 to 0.999)"
    );
}
