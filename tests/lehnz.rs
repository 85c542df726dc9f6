//! The Lehnz client end to end against the simulator (and, for malformed replies, a scripted
//! server), on loopback.
#![cfg(all(feature = "lehnz", feature = "sim"))]

mod support;

use std::time::Duration;

use support::{Reply, ScriptedServer};
use tower_outbound::lehnz::sim::{KeyKind as SimKeyKind, Simulator};
use tower_outbound::lehnz::{Client, Event, Item, ItemStatus, LehnzError, User};

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::new(
                format!("user-{}", i % 50),
                format!("item-{}", i % 200),
                "view",
            )
        })
        .collect()
}

async fn sim() -> Simulator {
    Simulator::builder().org("acme").start().await.unwrap()
}

fn client(sim: &Simulator, key: &str) -> Client {
    Client::builder(key)
        .base_url(sim.base_url())
        .stack(|s| s.retry_seed(1))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn events_are_batched_stamped_and_stored_once() {
    let sim = sim().await;
    let keys = sim.keys("acme").unwrap();
    let client = client(&sim, &keys.secret);
    let mut batch = events(1_234);

    let summary = client.ingest_events(&mut batch).await.unwrap();

    assert!(summary.is_complete(), "{summary:?}");
    assert_eq!(summary.accepted, 1_234);
    assert_eq!(summary.requests, 3, "500 + 500 + 234");
    let stats = sim.stats();
    assert_eq!(stats.events, 1_234);
    assert_eq!(stats.distinct_event_ids, 1_234);
    assert_eq!(stats.duplicate_event_ids, 0);
    // The ids were written into the caller's events, so sending them again keeps them.
    let ids: Vec<String> = batch
        .iter()
        .map(|e| e.client_event_id().unwrap().to_owned())
        .collect();
    client.ingest_events(&mut batch[..10]).await.unwrap();
    assert_eq!(batch[0].client_event_id(), Some(ids[0].as_str()));
    assert_eq!(sim.stats().duplicate_event_ids, 10);
}

#[tokio::test(start_paused = true)]
async fn upserts_are_batched_by_a_thousand_and_keyed_on_their_ids() {
    let sim = sim().await;
    let keys = sim.keys("acme").unwrap();
    let client = client(&sim, &keys.secret);
    let mut items: Vec<Item> = (0..2_500)
        .map(|i| Item::new(format!("item-{i}")).attr("title", format!("Item {i}")))
        .collect();
    items[7].status = Some(ItemStatus::Inactive);

    let summary = client.upsert_items(&items).await.unwrap();
    assert_eq!((summary.accepted, summary.requests), (2_500, 3));
    // Upserting again replaces, it does not add.
    client.upsert_items(&items[..100]).await.unwrap();
    let users: Vec<User> = (0..10).map(|i| User::new(format!("user-{i}"))).collect();
    client.upsert_users(&users).await.unwrap();

    let stats = sim.stats();
    assert_eq!(stats.items, 2_500);
    assert_eq!(stats.inactive_items, 1);
    assert_eq!(stats.users, 10);
}

#[tokio::test(start_paused = true)]
async fn an_oversized_record_is_rejected_by_name_and_the_rest_are_sent() {
    let sim = sim().await;
    let keys = sim.keys("acme").unwrap();
    let client = client(&sim, &keys.secret);
    let items = vec![
        Item::new("ok-1"),
        Item::new("too-big").attr("blob", "x".repeat(1_100_000)),
        Item::new("ok-2"),
    ];

    let summary = client.upsert_items(&items).await.unwrap();

    assert_eq!(summary.accepted, 2);
    assert_eq!(summary.rejected.len(), 1);
    assert_eq!(summary.rejected[0].id.as_deref(), Some("too-big"));
    assert_eq!(sim.stats().items, 2);
    assert_eq!(
        sim.stats().responses(413),
        0,
        "the big record was never sent"
    );
}

#[tokio::test(start_paused = true)]
async fn bad_keys_give_typed_errors() {
    let sim = Simulator::builder()
        .org("acme")
        .key("acme", "lehnz_sk_revoked", SimKeyKind::Secret)
        .revoked_key("lehnz_sk_revoked")
        .start()
        .await
        .unwrap();
    let keys = sim.keys("acme").unwrap();

    // Refused before any call.
    for bad in ["", "  \n", "Bearer lehnz_sk_x", "lehnz_sk_a lehnz_sk_b"] {
        let err = Client::builder(bad)
            .base_url(sim.base_url())
            .build()
            .unwrap_err();
        assert!(matches!(err, LehnzError::InvalidKey(_)), "{bad:?}: {err:?}");
    }
    // A key with a trailing newline (pasted from a password manager) works.
    let padded = format!("{}\n", keys.secret);
    client(&sim, &padded)
        .upsert_users(&[User::new("u")])
        .await
        .unwrap();

    let revoked = client(&sim, "lehnz_sk_revoked");
    let err = revoked.upsert_users(&[User::new("u")]).await.unwrap_err();
    assert!(matches!(err, LehnzError::Unauthorized { .. }), "{err:?}");
    assert!(err.advice().contains("revoked"));

    let publishable = client(&sim, &keys.publishable);
    let err = publishable
        .upsert_items(&[Item::new("i")])
        .await
        .unwrap_err();
    assert!(matches!(err, LehnzError::Forbidden { .. }), "{err:?}");
    // ... but it may ingest events.
    let summary = publishable.ingest_events(&mut events(3)).await.unwrap();
    assert_eq!(summary.accepted, 3);
    // No request was retried on a 401 or 403.
    assert_eq!(sim.stats().responses(401), 1);
    assert_eq!(sim.stats().responses(403), 1);
}

#[tokio::test(start_paused = true)]
async fn a_used_up_window_is_waited_out_before_any_429_and_nothing_is_lost() {
    let sim = Simulator::builder()
        .org("acme")
        .window(5, Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let keys = sim.keys("acme").unwrap();
    let client = Client::builder(&keys.secret)
        .base_url(sim.base_url())
        .event_batch(10, 1_000_000)
        .concurrency(1)
        .stack(|s| s.retry_seed(2))
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();

    let summary = client.ingest_events(&mut events(80)).await.unwrap();

    assert!(summary.is_complete(), "{summary:?}");
    assert_eq!(sim.stats().events, 80);
    // 8 batches through a 5-per-minute window: the fifth reply said `remaining: 0`, so the
    // gate held the rest until the reset instead of collecting 429s.
    assert!(tokio::time::Instant::now() - start >= Duration::from_secs(60));
    assert_eq!(sim.stats().rate_limited, 0);
    let stats = client.stats().unwrap();
    assert!(stats.gate().delayed() >= 1);
}

#[tokio::test(start_paused = true)]
async fn a_429_is_waited_out_with_the_servers_reset() {
    // A second client on the same org key used up the window without this one knowing.
    let sim = Simulator::builder()
        .org("acme")
        .window(3, Duration::from_secs(30))
        .start()
        .await
        .unwrap();
    let keys = sim.keys("acme").unwrap();
    let other = client(&sim, &keys.secret);
    for i in 0..3 {
        other
            .upsert_users(&[User::new(format!("o{i}"))])
            .await
            .unwrap();
    }
    let client = client(&sim, &keys.secret);
    let start = tokio::time::Instant::now();

    let summary = client.upsert_users(&[User::new("mine")]).await.unwrap();

    assert_eq!(summary.accepted, 1, "{summary:?}");
    assert_eq!(sim.stats().rate_limited, 1);
    assert!(tokio::time::Instant::now() - start >= Duration::from_secs(30));
    assert_eq!(client.stats().unwrap().retry().server_waits(), 1);
}

#[tokio::test(start_paused = true)]
async fn malformed_replies_give_typed_errors_never_panics() {
    let server = ScriptedServer::start(vec![
        Reply::status(502).body("<html><body><h1>502 Bad Gateway</h1></body></html>"),
        Reply::status(502).body("<html><body><h1>502 Bad Gateway</h1></body></html>"),
        Reply::status(400).body("{\"error\":\"validation_fa"),
        Reply::status(429).body("slow down"),
        Reply::status(202).body("<html>ok</html>"),
    ])
    .await;
    let client = Client::builder("lehnz_sk_test")
        .base_url(server.url(""))
        .stack(|s| s.max_attempts(2).retry_seed(3))
        .build()
        .unwrap();

    let first = client.upsert_users(&[User::new("a")]).await.unwrap();
    assert_eq!(first.accepted, 0);
    assert!(
        matches!(&first.errors[..], [LehnzError::Server { message, .. }] if message.contains("502 Bad Gateway")),
        "{first:?}"
    );
    let second = client.upsert_users(&[User::new("b")]).await.unwrap();
    assert!(
        matches!(&second.errors[..], [LehnzError::UnexpectedResponse { .. }]),
        "{second:?}"
    );
    // A 429 without any rate-limit header: retried once with backoff, then the 202 is taken.
    let third = client.upsert_users(&[User::new("c")]).await.unwrap();
    assert_eq!(third.accepted, 1, "{third:?}");
    assert_eq!(server.received().len(), 5);
}
