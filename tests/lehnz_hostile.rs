//! The Lehnz client against servers and input it does not control: keys never go where they
//! should not, counts are never silently wrong, and nothing from outside panics.
#![cfg(all(feature = "lehnz", feature = "sim"))]

mod support;

use std::time::Duration;

use support::{Reply, ScriptedServer};
use tower_outbound::dead_letter::{BoxFuture, SinkError};
use tower_outbound::dead_letter::{DeadLetter, FinalOutcome, StoredBody, StoredHeader};
use tower_outbound::lehnz::sim::Simulator;
use tower_outbound::lehnz::{Client, Event, User};
use tower_outbound::{MemorySink, Sink};

fn letter(id: &str, uri: String, body: &str) -> DeadLetter {
    DeadLetter {
        version: 1,
        id: id.to_owned(),
        method: "POST".to_owned(),
        uri,
        uri_redacted: false,
        headers: vec![StoredHeader {
            name: "content-type".to_owned(),
            value: Some("application/json".to_owned()),
            value_base64: None,
        }],
        body: Some(StoredBody::Text(body.to_owned())),
        body_kept: true,
        body_missing: None,
        idempotency_key: None,
        outcome: FinalOutcome {
            status: Some(503),
            error_kind: None,
            error: None,
        },
        attempts: 4,
        waited_ms: 0,
        first_attempt_at_ms: 0,
        last_attempt_at_ms: 0,
    }
}

#[tokio::test(start_paused = true)]
async fn replay_does_not_send_the_key_to_a_host_the_client_does_not_use() {
    let sim = Simulator::builder().org("acme").start().await.unwrap();
    let key = sim.keys("acme").unwrap().secret;
    let elsewhere = ScriptedServer::start(vec![Reply::status(202).body("{}"); 4]).await;
    let sink = MemorySink::new();
    let events = r#"[{"user_id":"u","item_id":"i","event_type":"view"}]"#;
    let own = format!("{}/api/v1/events/ingest", sim.base_url());
    for (id, uri) in [
        ("own", own.clone()),
        ("other-port", elsewhere.url("/api/v1/events/ingest")),
        ("userinfo", own.replacen("http://", "http://mallory@", 1)),
        ("other-scheme", own.replacen("http://", "https://", 1)),
        ("unparsable", "http://[::1".to_owned()),
    ] {
        sink.write(letter(id, uri, events)).await.unwrap();
    }
    let client = Client::builder(&key)
        .base_url(sim.base_url())
        .build()
        .unwrap();

    let report = client.replay_dead_letters(&sink).await.unwrap();

    assert_eq!((report.replayed, report.succeeded), (1, 1), "{report:?}");
    assert_eq!(report.refused, 4, "refused letters are counted");
    assert!(elsewhere.received().is_empty(), "the key went elsewhere");
    let kept: Vec<String> = sink.letters().into_iter().map(|l| l.id).collect();
    assert_eq!(
        kept,
        ["other-port", "userinfo", "other-scheme", "unparsable"]
    );
    assert_eq!(sim.stats().events, 1);
}

#[tokio::test(start_paused = true)]
async fn a_2xx_accepting_fewer_records_than_sent_is_reported() {
    let server = ScriptedServer::start(vec![
        Reply::status(202).body(r#"{"accepted":3}"#),
        Reply::status(200).body(r#"{"upserted":2}"#),
    ])
    .await;
    let client = Client::builder("lehnz_sk_test")
        .base_url(server.url(""))
        .build()
        .unwrap();

    let mut events: Vec<Event> = (0..5)
        .map(|i| Event::new(format!("u{i}"), "i", "view"))
        .collect();
    let summary = client.ingest_events(&mut events).await.unwrap();
    assert_eq!((summary.accepted, summary.unaccounted), (3, 2));
    assert!(!summary.is_complete(), "{summary:?}");

    let users: Vec<User> = (0..2).map(|i| User::new(format!("u{i}"))).collect();
    let summary = client.upsert_users(&users).await.unwrap();
    assert_eq!((summary.accepted, summary.unaccounted), (2, 0));
    assert!(summary.is_complete());
}

#[tokio::test(start_paused = true)]
async fn huge_configured_durations_do_not_panic() {
    let sim = Simulator::builder().org("acme").start().await.unwrap();
    let key = sim.keys("acme").unwrap().secret;
    let client = Client::builder(&key)
        .base_url(sim.base_url())
        .stack(|s| {
            s.max_retry_after(Duration::MAX)
                .attempt_timeout(Duration::MAX)
                .throttle(Some((1, Duration::MAX)))
        })
        .build()
        .unwrap();
    let summary = client.upsert_users(&[User::new("u")]).await.unwrap();
    assert_eq!(summary.accepted, 1, "{summary:?}");
}

/// A sink whose disk is full.
struct FullDisk;

impl Sink for FullDisk {
    fn write(&self, _: DeadLetter) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Err(SinkError::msg("no space left on device")) })
    }
    fn read_all(&self) -> BoxFuture<'_, Result<Vec<DeadLetter>, SinkError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn remove<'a>(&'a self, _: &'a [String]) -> BoxFuture<'a, Result<usize, SinkError>> {
        Box::pin(async { Ok(0) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_the_sink_failed_to_store_is_not_counted_as_dead_lettered() {
    let server = ScriptedServer::start(vec![Reply::status(503).body("{}"); 2]).await;
    let client = Client::builder("lehnz_sk_test")
        .base_url(server.url(""))
        .stack(|s| s.max_attempts(1).dead_letter_sink(FullDisk))
        .build()
        .unwrap();
    let events = (0..3).map(|i| Event::new(format!("u{i}"), "i", "view"));

    let summary = client
        .ingest_iter(events, Default::default())
        .await
        .unwrap();

    assert_eq!(summary.dead_lettered, 0, "{summary:?}");
    assert_eq!(summary.dead_letter_failed, 3);
    assert_eq!(
        summary.settled, 0,
        "neither delivered nor stored: not settled"
    );
    assert_eq!(summary.errors.len(), 1);
    assert!(summary.rejected[0].reason.contains("failed to store"));
    assert!(!summary.is_complete());

    // With a sink that works, the same failure is settled as a dead letter.
    let sink = MemorySink::new();
    let client = Client::builder("lehnz_sk_test")
        .base_url(server.url(""))
        .stack(|s| s.max_attempts(1).dead_letter_sink(sink.clone()))
        .build()
        .unwrap();
    let events = (0..3).map(|i| Event::new(format!("u{i}"), "i", "view"));
    let summary = client
        .ingest_iter(events, Default::default())
        .await
        .unwrap();
    assert_eq!(
        (summary.dead_lettered, summary.settled),
        (3, 3),
        "{summary:?}"
    );
    assert_eq!(sink.letters().len(), 1);
}
