use std::time::Duration;

use super::*;
use crate::circuit::Window;

fn json(text: &str) -> OutboundConfig {
    serde_json::from_str(text).unwrap()
}

fn settings(text: &str) -> Settings {
    serde_json::from_str(text).unwrap()
}

fn refused(text: &str) -> ConfigError {
    json(text).build().unwrap_err()
}

fn breaker(outbound: &Outbound) -> crate::circuit::Settings {
    outbound
        .circuit_breaker_layer()
        .expect("a breaker")
        .registry()
        .settings
        .clone()
}

#[test]
fn defaults_are_laid_over_the_preset_keeping_what_they_leave_out() {
    let outbound = json(
        r#"{ "preset": "background",
             "defaults": { "attempts": 7, "breaker": { "failure_rate": 0.25 } } }"#,
    )
    .build()
    .unwrap();
    assert_eq!(outbound.retry_layer().config().max_attempts, 7);
    let breaker = breaker(&outbound);
    assert_eq!(breaker.failure_rate_threshold, 0.25);
    // The background preset's patience is kept: the table changed one setting.
    assert_eq!(breaker.max_wait, Duration::from_secs(60));
    assert!(
        outbound.dead_letter_layer().is_some(),
        "the preset's dead letters"
    );
    // The preset's base delay is kept too.
    assert_eq!(
        outbound.retry_layer().config().backoff.base(),
        Duration::from_millis(500)
    );
}

#[test]
fn every_retry_key_reaches_its_setter() {
    let s = settings(
        r#"{ "attempts": 3, "base_delay": "50ms", "max_delay": "2s", "max_total_delay": "10s",
             "max_retry_after": "1m", "retry_after_jitter": "0s", "jitter": "equal",
             "retry_non_idempotent": true, "deadline": "1h30m", "attempt_timeout": "1.5s" }"#,
    );
    let outbound = s.apply(Outbound::new()).unwrap();
    let retry = outbound.retry_layer().config();
    assert_eq!(retry.max_attempts, 3);
    assert_eq!(retry.backoff.base(), Duration::from_millis(50));
    assert_eq!(retry.backoff.max(), Duration::from_secs(2));
    assert_eq!(retry.backoff.jitter(), crate::Jitter::Equal);
    assert_eq!(retry.max_total_delay, Duration::from_secs(10));
    assert_eq!(retry.max_retry_after, Duration::from_secs(60));
    assert_eq!(retry.retry_after_jitter, Duration::ZERO);
    assert!(retry.retry_non_idempotent);
    let stack = outbound.stack();
    assert_eq!(stack.retry.deadline, Some(Duration::from_secs(5400)));
    assert_eq!(stack.attempt_timeout, Some(Duration::from_millis(1500)));
}

#[test]
fn off_turns_a_part_off() {
    let outbound = settings(
        r#"{ "deadline": "off", "attempt_timeout": "off", "retry_budget": "off",
             "breaker": "off", "throttle": "off", "concurrency": "off" }"#,
    )
    .apply(Outbound::background())
    .unwrap();
    let stack = outbound.stack();
    assert_eq!(stack.retry.deadline, None);
    assert_eq!(stack.attempt_timeout, None);
    assert!(stack.budget.is_none());
    assert!(outbound.circuit_breaker_layer().is_none());
    assert!(outbound.throttle_layer().is_none());
    assert!(outbound.concurrency_layer().is_none());
}

#[test]
fn breaker_gate_budget_and_throttle_tables_reach_their_setters() {
    let outbound = settings(
        r#"{ "breaker": { "minimum_calls": 5, "window_length": "30s", "window_buckets": 6,
                          "open_duration": "2s", "open_backoff_factor": 3, "max_open_duration": "1m",
                          "max_wait": "10s", "half_open_probes": 2,
                          "slow_call_duration": "3s", "slow_call_rate": 0.5 },
             "gate": { "max_wait": "5s", "max_pause": "10m", "release": 4 },
             "retry_budget": { "ratio": 0.5, "min_per_second": 2, "window": "20s" },
             "throttle": { "rate": 100, "per": "1s", "burst": 10, "max_wait": "2s", "adaptive": false } }"#,
    )
    .apply(Outbound::new().circuit_breaker(None))
    .unwrap();
    let b = breaker(&outbound);
    assert_eq!(b.minimum_calls, 5);
    assert_eq!(
        b.window,
        Window::Time {
            length: Duration::from_secs(30),
            buckets: 6
        }
    );
    assert_eq!(b.open_duration, Duration::from_secs(2));
    assert_eq!(b.open_backoff, Some((3.0, Duration::from_secs(60))));
    assert_eq!(b.max_wait, Duration::from_secs(10));
    assert_eq!(b.half_open_probes, 2);
    assert_eq!(b.slow_call, Some((Duration::from_secs(3), 0.5)));
    let gate = outbound.gate_layer().gates().settings;
    assert_eq!(gate.max_wait, Duration::from_secs(5));
    assert_eq!(gate.max_pause, Duration::from_secs(600));
    assert_eq!(gate.release, 4);
    let budget = format!("{:?}", outbound.budget().unwrap());
    assert!(budget.contains("ratio: 0.5"), "{budget}");
    assert!(budget.contains("min_per_second: 2"), "{budget}");
    assert!(budget.contains("window: 20s"), "{budget}");
    let throttle = outbound.throttle_layer().unwrap();
    assert_eq!(
        (throttle.quota().rate(), throttle.quota().burst()),
        (100, 10)
    );
    assert_eq!(throttle.shared().max_wait, Duration::from_secs(2));
    assert!(!throttle.shared().adaptive);
}

#[test]
fn concurrency_adaptive_keeps_the_presets_limit_and_fixed_makes_a_new_one() {
    let limits = |o: &Outbound| o.concurrency_layer().unwrap().registry().settings.clone();
    // "adaptive" over background keeps its 60 s in line.
    let adaptive = settings(r#"{ "concurrency": "adaptive" }"#)
        .apply(Outbound::background())
        .unwrap();
    assert_eq!(limits(&adaptive).max_wait, Duration::from_secs(60));
    // Over a stack without one: a new adaptive limit, 30 s in line.
    let fresh = settings(r#"{ "concurrency": { "initial": 5, "min": 2, "max": 50 } }"#)
        .apply(Outbound::new())
        .unwrap();
    let fresh = limits(&fresh);
    assert_eq!((fresh.initial, fresh.min, fresh.max), (5, 2, 50));
    assert_eq!(fresh.max_wait, Duration::from_secs(30));
    let fixed = settings(r#"{ "concurrency": { "limit": 8, "max_wait": "1s" } }"#)
        .apply(Outbound::background())
        .unwrap();
    assert!(fixed.concurrency_layer().unwrap().is_fixed());
    assert_eq!(limits(&fixed).max_wait, Duration::from_secs(1));
    let vegas = settings(r#"{ "concurrency": { "limit": "vegas" } }"#)
        .apply(Outbound::background())
        .unwrap();
    assert_eq!(
        limits(&vegas).algorithm,
        crate::concurrency::limiter::Algorithm::Vegas
    );
}

#[test]
fn adaptive_keys_are_refused_for_a_fixed_limit() {
    let error = settings(r#"{ "concurrency": { "limit": 8, "initial": 4 } }"#)
        .apply(Outbound::new())
        .unwrap_err();
    assert_eq!(error.kind(), ConfigErrorKind::Conflict);
    assert_eq!(error.path(), "concurrency.initial");
    let fixed_base = Outbound::new().concurrency(Some(crate::ConcurrencyLayer::fixed(4)));
    let error = settings(r#"{ "concurrency": { "backoff": 0.5 } }"#)
        .apply(fixed_base.clone())
        .unwrap_err();
    assert_eq!(error.path(), "concurrency.backoff");
    assert!(error.to_string().contains("fixed"), "{error}");
    // Its wait in line can be tuned.
    let tuned = settings(r#"{ "concurrency": { "max_wait": "2s" } }"#)
        .apply(fixed_base)
        .unwrap();
    assert!(tuned.concurrency_layer().unwrap().is_fixed());
}

#[test]
fn out_of_range_values_are_refused_with_their_path_never_clamped() {
    for (text, path, message) in [
        (
            r#"{ "defaults": { "attempts": 0 } }"#,
            "defaults.attempts",
            "0 is out of range (1 to 100)",
        ),
        (
            r#"{ "defaults": { "attempts": 101 } }"#,
            "defaults.attempts",
            "101 is out of range (1 to 100)",
        ),
        (
            r#"{ "defaults": { "breaker": { "failure_rate": 1.5 } } }"#,
            "defaults.breaker.failure_rate",
            "1.5 is out of range (0 to 1)",
        ),
        (
            r#"{ "defaults": { "throttle": { "rate": 0, "per": "1s" } } }"#,
            "defaults.throttle.rate",
            "0 is out of range (at least 1)",
        ),
        (
            r#"{ "defaults": { "throttle": { "rate": 5, "per": "0s" } } }"#,
            "defaults.throttle.per",
            "0s is out of range",
        ),
        (
            r#"{ "defaults": { "deadline": "0s" } }"#,
            "defaults.deadline",
            "0s is out of range",
        ),
        (
            r#"{ "defaults": { "retry_budget": { "window": "2m" } } }"#,
            "defaults.retry_budget.window",
            "2m is out of range (1s to 60s)",
        ),
        (
            r#"{ "defaults": { "concurrency": { "backoff": 1 } } }"#,
            "defaults.concurrency.backoff",
            "1 is out of range (0.01 to 0.99)",
        ),
        (
            r#"{ "defaults": { "concurrency": { "min": 10, "max": 5 } } }"#,
            "defaults.concurrency.max",
            "5 is out of range (min (10) to 100000)",
        ),
        (
            r#"{ "defaults": { "gate": { "release": 0 } } }"#,
            "defaults.gate.release",
            "0 is out of range (at least 1)",
        ),
        (
            r#"{ "upstreams": { "API.Stripe.com": { "breaker": { "minimum_calls": 0 } } } }"#,
            r#"upstreams."API.Stripe.com".breaker.minimum_calls"#,
            "0 is out of range (1 to 10000)",
        ),
    ] {
        let error = refused(text);
        assert_eq!(error.path(), path, "{text}");
        assert_eq!(error.kind(), ConfigErrorKind::OutOfRange, "{text}");
        assert!(
            error.to_string().starts_with(&format!("{path}: {message}")),
            "{error}"
        );
    }
}

#[test]
fn nan_is_out_of_range() {
    let s = Settings {
        breaker: Some(Some(BreakerSettings {
            failure_rate: Some(f64::NAN),
            ..BreakerSettings::default()
        })),
        ..Settings::default()
    };
    let error = s.apply(Outbound::new()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "breaker.failure_rate: NaN is out of range (0 to 1)"
    );
    // A duration set in code past what a layer takes is refused too.
    let s = Settings {
        max_delay: Some(Duration::MAX),
        ..Settings::default()
    };
    assert_eq!(s.apply(Outbound::new()).unwrap_err().path(), "max_delay");
}

#[test]
fn keys_that_go_in_pairs_are_refused_alone() {
    for (text, path) in [
        (
            r#"{ "breaker": { "max_open_duration": "1m" } }"#,
            "breaker.max_open_duration",
        ),
        (
            r#"{ "breaker": { "slow_call_rate": 0.5 } }"#,
            "breaker.slow_call_rate",
        ),
        (r#"{ "concurrency": { "min": 2 } }"#, "concurrency.min"),
        (
            r#"{ "breaker": { "window_buckets": 4 } }"#,
            "breaker.window_buckets",
        ),
        (
            r#"{ "breaker": { "window_calls": 4, "window_length": "1s" } }"#,
            "breaker.window_length",
        ),
    ] {
        let error = settings(text).apply(Outbound::new()).unwrap_err();
        assert_eq!(error.kind(), ConfigErrorKind::Conflict, "{text}");
        assert_eq!(error.path(), path, "{text}");
    }
}

#[test]
fn upstream_names_are_hosts_once_each() {
    let error = refused(r#"{ "upstreams": { "https://api.example.com/v1": {} } }"#);
    assert_eq!(error.kind(), ConfigErrorKind::NotAHost);
    assert_eq!(error.path(), r#"upstreams."https://api.example.com/v1""#);
    let error = refused(r#"{ "upstreams": { "api.example.com": {}, "API.example.com": {} } }"#);
    assert_eq!(error.kind(), ConfigErrorKind::Conflict);
    assert!(error.to_string().contains("the same host as"), "{error}");
    // A name with a quote is shown escaped.
    let error = refused(r#"{ "upstreams": { "a\"b": {} } }"#);
    assert_eq!(error.path(), r#"upstreams."a\"b""#);
}

#[test]
fn upstreams_need_a_partition_per_upstream_and_a_bound() {
    let error = refused(r#"{ "partition": "global", "upstreams": { "api.example.com": {} } }"#);
    assert_eq!(error.kind(), ConfigErrorKind::GlobalPartition);
    assert_eq!(error.path(), "upstreams");
    // Without upstreams, a global partition is fine.
    let global = json(r#"{ "partition": "global", "defaults": { "attempts": 2 } }"#)
        .build()
        .unwrap();
    assert_eq!(global.scope(), crate::partition::Scope::Global);

    let mut config = OutboundConfig::default();
    for i in 0..=MAX_UPSTREAM_STACKS {
        config
            .upstreams
            .insert(format!("host{i}.example.com"), Settings::default());
    }
    let error = config.build().unwrap_err();
    assert_eq!(error.kind(), ConfigErrorKind::TooManyUpstreams);
    config.upstreams.pop_first();
    let outbound = config.build().unwrap();
    assert_eq!(outbound.upstream_stacks().count(), MAX_UPSTREAM_STACKS);
}

#[test]
fn each_upstream_gets_a_stack_of_its_own_sharing_the_dead_letters() {
    let outbound = json(
        r#"{ "preset": "background", "defaults": { "attempts": 3 },
             "upstreams": { "Slow.example.com:8443": { "breaker": "off" } } }"#,
    )
    .build()
    .unwrap();
    let stacks: Vec<_> = outbound.upstream_stacks().collect();
    assert_eq!(stacks.len(), 1);
    let (host, stack) = &stacks[0];
    assert_eq!(host, "slow.example.com:8443");
    assert_eq!(stack.retry_layer().config().max_attempts, 3, "the defaults");
    assert!(stack.circuit_breaker_layer().is_none());
    assert!(outbound.circuit_breaker_layer().is_some());
    let shared = |o: &Outbound| o.dead_letter_layer().unwrap().config().clone();
    assert!(std::sync::Arc::ptr_eq(&shared(stack), &shared(&outbound)));
    // State of its own: a different gate.
    assert!(!std::sync::Arc::ptr_eq(
        stack.gate_layer().gates(),
        outbound.gate_layer().gates()
    ));
}

#[test]
fn settings_keep_the_stacks_partition() {
    let global = Outbound::new().partition(crate::partition::Scope::Global);
    let outbound = settings(
        r#"{ "breaker": { "failure_rate": 0.9 }, "throttle": { "rate": 5, "per": "1s" } }"#,
    )
    .apply(global)
    .unwrap();
    assert_eq!(outbound.scope(), crate::partition::Scope::Global);
    let throttle = format!("{:?}", outbound.throttle_layer().unwrap());
    assert!(throttle.contains("partition: Global"), "{throttle}");
}

#[test]
fn settings_round_trip_through_json() {
    let config = json(
        r#"{ "preset": "user_facing",
             "defaults": { "attempts": 2, "deadline": "off", "base_delay": "1.5s",
                           "breaker": { "failure_rate": 0.5, "window_calls": 40 },
                           "concurrency": "adaptive",
                           "throttle": { "rate": 10, "per": "1m" } },
             "upstreams": { "a.example.com": { "concurrency": { "limit": 4 },
                                               "retry_budget": "off",
                                               "gate": { "max_pause": "15m" } } } }"#,
    );
    let text = serde_json::to_string(&config).unwrap();
    let again: OutboundConfig = serde_json::from_str(&text).unwrap();
    assert_eq!(again, config, "{text}");
    assert!(text.contains(r#""deadline":"off""#), "{text}");
    assert!(text.contains(r#""base_delay":"1.5s""#), "{text}");
}

#[test]
fn wrong_values_are_refused_by_the_deserializer_naming_the_key() {
    let error = serde_json::from_str::<OutboundConfig>(
        r#"{ "defaults": { "breaker": { "failure_ratio": 0.5 } } }"#,
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("unknown field `failure_ratio`"), "{error}");
    let error = serde_json::from_str::<OutboundConfig>(r#"{ "preset": "fast" }"#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown variant `fast`"), "{error}");
    let error = serde_json::from_str::<OutboundConfig>(r#"{ "defaults": { "max_delay": "off" } }"#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("\"off\" is not a duration"), "{error}");
    let error =
        serde_json::from_str::<OutboundConfig>(r#"{ "defaults": { "throttle": { "rate": 5 } } }"#)
            .unwrap_err()
            .to_string();
    assert!(error.contains("missing field `per`"), "{error}");
    let error =
        serde_json::from_str::<OutboundConfig>(r#"{ "defaults": { "concurrency": "fast" } }"#)
            .unwrap_err()
            .to_string();
    assert!(
        error.contains("\"off\", \"adaptive\" or a table"),
        "{error}"
    );
    let error =
        serde_json::from_str::<OutboundConfig>(r#"{ "defaults": { "attempt_timeout": 2.5 } }"#)
            .unwrap_err()
            .to_string();
    assert!(error.contains("2.5 has no unit: write \"2.5s\""), "{error}");
}
