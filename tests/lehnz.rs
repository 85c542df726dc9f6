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

/// The client ids of the events in a dead letter's body.
fn ids_in(letter: &tower_outbound::DeadLetter) -> Vec<String> {
    let Some(tower_outbound::dead_letter::StoredBody::Text(body)) = &letter.body else {
        return Vec::new();
    };
    let events: Vec<Event> = serde_json::from_str(body).unwrap();
    events
        .iter()
        .filter_map(|e| e.client_event_id().map(str::to_owned))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn under_chaos_every_event_is_stored_once_after_dedup_or_is_a_dead_letter() {
    use std::collections::HashSet;
    use tower_outbound::lehnz::sim::Chaos;
    use tower_outbound::{JsonLinesSink, Sink};

    let sim = Simulator::builder()
        .org("acme")
        .window(100, Duration::from_secs(5))
        .chaos(
            Chaos::flaky()
                .server_errors(0.25)
                .drop_after_processing(0.05)
                .drop_before_processing(0.05),
        )
        .seed(11)
        .keep_bodies(true)
        .start()
        .await
        .unwrap();
    let keys = sim.keys("acme").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lehnz-dead.jsonl");
    let client = Client::builder(&keys.secret)
        .base_url(sim.base_url())
        .event_batch(50, 1_000_000)
        .stack(|s| {
            s.throttle(Some((100, Duration::from_secs(5))))
                .max_attempts(2)
                .circuit_breaker(false)
                .retry_seed(5)
                .dead_letter_file(&path)
        })
        .build()
        .unwrap();
    let mut events = events(5_000);

    let summary = client.ingest_events(&mut events).await.unwrap();

    let all: HashSet<String> = events
        .iter()
        .map(|e| e.client_event_id().unwrap().to_owned())
        .collect();
    assert_eq!(all.len(), 5_000);
    let stored: HashSet<String> = sim
        .events()
        .iter()
        .filter_map(|e| e["context"]["client_event_id"].as_str().map(str::to_owned))
        .collect();
    let letters = JsonLinesSink::new(&path).read_all().await.unwrap();
    let dead: HashSet<String> = letters.iter().flat_map(ids_in).collect();
    assert!(
        !letters.is_empty(),
        "the chaos was strong enough to dead-letter something"
    );
    assert_eq!(summary.dead_lettered, dead.len());
    let missing: Vec<&String> = all
        .iter()
        .filter(|id| !stored.contains(*id) && !dead.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} events neither stored nor dead-lettered",
        missing.len()
    );
    // Duplicates come only from "processed, then the connection dropped"; dedup by id
    // leaves each event once.
    assert_eq!(sim.stats().distinct_event_ids, stored.len());

    // Replaying the dead letters (through the same client stack) delivers them.
    let sink = JsonLinesSink::new(&path);
    let report = client.replay_dead_letters(&sink).await.unwrap();
    assert!(report.succeeded > 0);
    let stored_after: HashSet<String> = sim
        .events()
        .iter()
        .filter_map(|e| e["context"]["client_event_id"].as_str().map(str::to_owned))
        .collect();
    let still_dead: HashSet<String> = sink
        .read_all()
        .await
        .unwrap()
        .iter()
        .flat_map(ids_in)
        .collect();
    assert!(all
        .iter()
        .all(|id| stored_after.contains(id) || still_dead.contains(id)));
}

#[tokio::test(start_paused = true)]
async fn a_throttle_that_matches_the_limit_gets_no_429() {
    let sim = Simulator::builder()
        .org("acme")
        .window(20, Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    let keys = sim.keys("acme").unwrap();
    let client = Client::builder(&keys.secret)
        .base_url(sim.base_url())
        .event_batch(1, 1_000_000)
        .concurrency(4)
        .stack(|s| {
            s.throttle(Some((20, Duration::from_secs(10))))
                .retry_seed(6)
        })
        .build()
        .unwrap();

    let summary = client.ingest_events(&mut events(70)).await.unwrap();

    assert_eq!(summary.accepted, 70);
    assert_eq!(
        sim.stats().rate_limited,
        0,
        "{:?}",
        sim.stats().responses_by_status
    );
}

#[tokio::test(start_paused = true)]
async fn two_clients_on_one_org_key_stay_under_the_org_limit_together() {
    let sim = Simulator::builder()
        .org("acme")
        .window(30, Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    let keys = sim.keys("acme").unwrap();
    // Each believes it has the whole quota; only the server's headers tell them otherwise.
    let make = |seed| {
        Client::builder(&keys.secret)
            .base_url(sim.base_url())
            .event_batch(1, 1_000_000)
            .concurrency(1)
            .stack(|s| {
                s.throttle(Some((30, Duration::from_secs(10))))
                    .retry_seed(seed)
            })
            .build()
            .unwrap()
    };
    let (server, front_end) = (make(7), make(8));
    let start = tokio::time::Instant::now();

    let (mut mine, mut theirs) = (events(90), events(90));
    let (a, b) = tokio::join!(
        server.ingest_events(&mut mine),
        front_end.ingest_events(&mut theirs)
    );

    assert_eq!(a.unwrap().accepted + b.unwrap().accepted, 180);
    // 180 requests through a 30-per-10-s org window take at least five more windows.
    assert!(tokio::time::Instant::now() - start >= Duration::from_secs(50));
    // What each client learned from the headers kept the refusals to the odd request that
    // crossed another in flight, a few per window at most, where two blind clients would
    // collect hundreds.
    let refused = sim.stats().rate_limited;
    assert!(
        refused <= 12,
        "{refused} requests refused: {:?}",
        sim.stats().responses_by_status
    );
}

#[tokio::test(start_paused = true)]
async fn streamed_ingestion_reads_only_as_far_as_the_window_and_reports_settled_offsets() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tower_outbound::lehnz::IngestOptions;

    let sim = sim().await;
    let keys = sim.keys("acme").unwrap();
    let client = Client::builder(&keys.secret)
        .base_url(sim.base_url())
        .event_batch(10, 1_000_000)
        .concurrency(3)
        .build()
        .unwrap();
    let pulled = Arc::new(AtomicUsize::new(0));
    let source = {
        let pulled = pulled.clone();
        events(1_000).into_iter().inspect(move |_| {
            pulled.fetch_add(1, Ordering::SeqCst);
        })
    };
    let mut seen = Vec::new();
    let options = IngestOptions::new().start_offset(100).on_progress(|p| {
        let read = pulled.load(Ordering::SeqCst) + 100;
        // Outstanding: at most three batches of ten, plus the one being packed.
        assert!(read - p.settled <= 40, "read {read}, settled {}", p.settled);
        assert!(p.in_flight <= 3);
        seen.push(p.settled);
    });

    let summary = client.ingest_iter(source, options).await.unwrap();

    assert!(summary.is_complete(), "{summary:?}");
    assert_eq!((summary.accepted, summary.settled), (1_000, 1_100));
    assert_eq!(seen.len(), 100, "one report per batch");
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 10), "{seen:?}");
    assert_eq!(sim.stats().events, 1_000);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_job_sends_the_same_derived_ids_and_keeps_caller_ids() {
    let sim = sim().await;
    let keys = sim.keys("acme").unwrap();
    let source = || {
        let mut events = events(300);
        events[5].context.insert(
            "client_event_id".to_owned(),
            serde_json::Value::from("mine-5"),
        );
        events
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let feeder = tokio::spawn(async move {
        for event in source() {
            tx.send(event).await.unwrap();
        }
    });
    let first = client(&sim, &keys.secret)
        .ingest_channel(rx, Default::default())
        .await
        .unwrap();
    feeder.await.unwrap();
    // A new process: a new client, the same source from the start.
    let second = client(&sim, &keys.secret)
        .ingest_iter(source(), Default::default())
        .await
        .unwrap();

    assert_eq!((first.accepted, second.accepted), (300, 300));
    let stats = sim.stats();
    assert_eq!(stats.distinct_event_ids, 300);
    assert_eq!(
        stats.duplicate_event_ids, 300,
        "every resent event kept its id"
    );
    assert!(sim.has_event_id("mine-5"), "the caller's id is kept");
    // Equal events at different positions still get different ids (events(300) repeats).
    let expected = events(300)[0].derived_id(&tower_outbound::lehnz::EVENT_ID_NAMESPACE, 0);
    assert!(sim.has_event_id(&expected.to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_spurious_429_against_a_fresh_view_of_the_window_does_not_close_the_org_gate() {
    // The window has plenty of room; one request in five is refused with "nothing remaining,
    // reset in 1 s" all the same, before the server counts it.
    let sim = Simulator::builder()
        .org("acme")
        .window(100, Duration::from_secs(60))
        .chaos(tower_outbound::lehnz::sim::Chaos::none().rate_limited(0.2))
        .seed(5)
        .start()
        .await
        .unwrap();
    let keys = sim.keys("acme").unwrap();
    let client = Client::builder(&keys.secret)
        .base_url(sim.base_url())
        .event_batch(1, 1_000_000)
        .concurrency(1)
        .stack(|s| {
            s.throttle(Some((100, Duration::from_secs(60))))
                .retry_seed(3)
        })
        .build()
        .unwrap();

    let summary = client.ingest_events(&mut events(40)).await.unwrap();

    assert_eq!(summary.accepted, 40, "{summary:?}");
    let injected = sim.stats().rate_limited_injected;
    let stats = client.stats().unwrap();
    let doubted = stats.throttle().unwrap().doubted();
    assert!(injected >= 4, "{injected} injected 429s");
    // Every refusal that came while the latest reply said the window had room was doubted:
    // only those before the first reply, or the third in a row, may close the gate.
    assert!(doubted >= injected - 2, "{doubted} of {injected} doubted");
    assert!(
        stats.gate().times_closed() <= injected - doubted,
        "gate closed {} times for {injected} spurious 429s",
        stats.gate().times_closed()
    );
    // Each refused request still waited its own reset before it was sent again.
    assert!(stats.retry().server_waits() >= injected);
}

#[tokio::test(start_paused = true)]
async fn a_window_another_client_used_up_is_believed_after_two_doubted_refusals() {
    let sim = Simulator::builder()
        .org("acme")
        .window(10, Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let keys = sim.keys("acme").unwrap();
    let mine = Client::builder(&keys.secret)
        .base_url(sim.base_url())
        .event_batch(1, 1_000_000)
        .concurrency(4)
        .stack(|s| {
            s.throttle(Some((10, Duration::from_secs(60))))
                .retry_seed(4)
        })
        .build()
        .unwrap();
    // One reply gives this client a fresh view: 9 left.
    mine.ingest_events(&mut events(1)).await.unwrap();
    // Another client on the same key uses the other 9 without this one knowing.
    let other = client(&sim, &keys.secret);
    for i in 0..9 {
        other
            .upsert_users(&[User::new(format!("o{i}"))])
            .await
            .unwrap();
    }
    assert_eq!(sim.stats().rate_limited, 0);
    let start = tokio::time::Instant::now();

    let summary = mine.ingest_events(&mut events(4)).await.unwrap();

    assert_eq!(summary.accepted, 4, "{summary:?}");
    assert!(tokio::time::Instant::now() - start >= Duration::from_secs(50));
    let stats = mine.stats().unwrap();
    // The four went at once and were refused: the first two contradicted the view and were
    // doubted, the third and fourth were believed and closed the gate until the reset.
    assert_eq!(stats.throttle().unwrap().doubted(), 2);
    assert!(stats.gate().times_closed() >= 1);
    assert_eq!(sim.stats().rate_limited_window, 4);
}

#[tokio::test(start_paused = true)]
async fn a_few_early_failures_among_many_batches_in_flight_do_not_open_the_breaker() {
    // Ten batches go at once; the first five meet a 500, the next five are stored. Ten calls
    // with half failed is not an outage: the retries must get through, not meet an open
    // circuit and be given up.
    let mut script: Vec<Reply> = (0..5).map(|_| Reply::status(500)).collect();
    script.extend((0..15).map(|_| Reply::status(202).body("{\"accepted\":1}")));
    let server = ScriptedServer::start(script).await;
    let client = Client::builder("lehnz_sk_test")
        .base_url(server.url(""))
        .event_batch(1, 1_000_000)
        .concurrency(10)
        .stack(|s| s.retry_seed(9))
        .build()
        .unwrap();

    let summary = client.ingest_events(&mut events(10)).await.unwrap();

    assert_eq!(summary.accepted, 10, "{summary:?}");
    let breaker = client.stats().unwrap();
    assert_eq!(breaker.circuit_breaker().unwrap().times_opened(), 0);
}
