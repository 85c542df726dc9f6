//! Faults end to end: the Lehnz client against the simulator through a loopback fault proxy
//! (resets, stalls, truncated replies, injected 429/503 with hostile headers), a dead-letter
//! file on a directory that cannot be written or a full disk, and a Redis that goes away and
//! comes back. Every event must end up stored by the simulator or in the dead letters, and the
//! summary must say which, exactly.
//!
//! These tests run on the real clock (the proxy and the simulator are real sockets). What
//! fails is decided by the proxy's seeded faults, not by timing: the attempt timeout (1 s) is
//! far above any loopback reply and is reached only by the proxy's stalls, which hold until
//! the client gives up. Each test takes a few seconds.
#![cfg(all(feature = "lehnz", feature = "sim"))]

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use support::proxy::{Fault, FaultProxy, Faults, Hostile};
use tower_outbound::dead_letter::{DeadLetter, StoredBody};
use tower_outbound::lehnz::sim::Simulator;
use tower_outbound::lehnz::{
    Client, Event, IngestOptions, LehnzError, Summary, EVENT_ID_NAMESPACE,
};
use tower_outbound::{JsonLinesSink, Sink};

/// The most any one run may take before the test fails instead of hanging.
const BOUND: Duration = Duration::from_secs(60);
/// The attempt timeout of the runs through the proxy: only a stall the proxy chose reaches it
/// (a loopback reply takes milliseconds), so which attempts fail is decided by the proxy's
/// seeded faults, not by the machine's speed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::new(
                format!("user-{}", i % 97),
                format!("item-{}", i % 1013),
                "view",
            )
        })
        .collect()
}

/// The ids `ingest_iter` gives these events (derived from content and offset).
fn derived_ids(events: &[Event], start: usize) -> Vec<String> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.derived_id(&EVENT_ID_NAMESPACE, start + i)
                .hyphenated()
                .to_string()
        })
        .collect()
}

async fn simulator() -> Simulator {
    Simulator::builder()
        .org("acme")
        .window(1_000_000, Duration::from_secs(900))
        .start()
        .await
        .unwrap()
}

/// The event ids in one letter's body (a JSON array of events).
fn letter_event_ids(letter: &DeadLetter) -> Vec<String> {
    let bytes = match letter.body.as_ref().expect("the batch body is kept") {
        StoredBody::Text(text) => text.clone().into_bytes(),
        StoredBody::Base64(data) => base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap(),
    };
    let batch: Vec<Event> = serde_json::from_slice(&bytes).expect("a letter's body is a batch");
    batch
        .iter()
        .map(|e| e.client_event_id().expect("stamped").to_owned())
        .collect()
}

/// Reads a dead-letter file line by line and insists every line is a whole record; returns
/// the letters.
fn whole_letters(path: &Path) -> Vec<DeadLetter> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("reading {}: {e}", path.display()),
    };
    assert!(
        text.is_empty() || text.ends_with(b"\n"),
        "the file ends inside a record"
    );
    // Lines are letters, or tombstones (`{"removed":[ids]}`) naming letters removed before.
    #[derive(serde::Deserialize)]
    struct Tombstone {
        removed: Vec<String>,
    }
    let mut letters: Vec<DeadLetter> = Vec::new();
    for (n, line) in text
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .enumerate()
    {
        if let Ok(tombstone) = serde_json::from_slice::<Tombstone>(line) {
            letters.retain(|l| !tombstone.removed.contains(&l.id));
            continue;
        }
        let letter = serde_json::from_slice::<DeadLetter>(line)
            .unwrap_or_else(|e| panic!("line {} is not a whole record: {e}", n + 1));
        letters.push(letter);
    }
    letters
}

/// Checks that every event is stored by the simulator or in a dead letter, and that the
/// summary's counts are the truth.
fn check_accounting(sim: &Simulator, ids: &[String], letters: &[DeadLetter], summary: &Summary) {
    let lettered: Vec<String> = letters.iter().flat_map(letter_event_ids).collect();
    let lettered_set: HashSet<&String> = lettered.iter().collect();
    assert_eq!(
        lettered.len(),
        lettered_set.len(),
        "an event is in two letters: a batch was recorded twice"
    );
    assert_eq!(
        summary.dead_lettered,
        lettered.len(),
        "the summary's dead_lettered is what the file holds"
    );
    assert_eq!(summary.dead_letter_failed, 0);

    let stored: HashSet<&String> = ids.iter().filter(|id| sim.has_event_id(id)).collect();
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| !stored.contains(id) && !lettered_set.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} events neither stored nor dead-lettered, first {:?}",
        missing.len(),
        missing.first()
    );
    assert!(lettered_set.iter().all(|id| ids.contains(id)));
    assert_eq!(
        sim.stats().distinct_event_ids,
        stored.len(),
        "the simulator holds no event that was not sent"
    );

    // Failed batches without a letter: their reply was a 2xx cut short (the simulator stored
    // them), never a failure that should have had a letter.
    let unlettered_failures: Vec<&String> = summary
        .rejected
        .iter()
        .filter_map(|r| r.id.as_ref())
        .filter(|id| !lettered_set.contains(id))
        .collect();
    assert_eq!(summary.rejected_unlisted, 0);
    for id in &unlettered_failures {
        assert!(
            stored.contains(id),
            "{id} failed without a letter and is not stored"
        );
    }
    assert_eq!(
        summary.accepted + summary.rejected.len(),
        ids.len(),
        "every event is accepted or listed as not"
    );
    let stored_not_lettered = stored
        .iter()
        .filter(|id| !lettered_set.contains(*id))
        .count();
    assert_eq!(
        summary.accepted + unlettered_failures.len(),
        stored_not_lettered,
        "accepted is exactly what the simulator stored of the batches that did not fail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_events_through_a_faulty_proxy_are_each_stored_or_dead_lettered() {
    let sim = simulator().await;
    let keys = sim.keys("acme").unwrap();
    let faults = Faults {
        reset_before: 0.04,
        reset_after: 0.04,
        stall_before: 0.02,
        stall_after: 0.02,
        truncate: 0.04,
        status_429: 0.05,
        status_503: 0.05,
        // Held until the client gives up: a stalled attempt always times out.
        stall_cap: Duration::from_secs(30),
        hostile: Hostile::Odd,
    };
    let proxy = FaultProxy::start(sim.addr(), faults, 11).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("letters.jsonl");
    let client = Client::builder(&keys.secret)
        .base_url(proxy.url())
        .event_batch(100, 1_000_000)
        .concurrency(8)
        .stack(|s| {
            s.retry_seed(7)
                .max_attempts(2)
                // Far above any reply of the loopback simulator, so only the proxy's stalls
                // time out, whatever the machine's load: the outcome is the proxy's, not the
                // clock's.
                .attempt_timeout(ATTEMPT_TIMEOUT)
                .max_retry_after(Duration::from_secs(2))
                .dead_letter_file(&path)
        })
        .build()
        .unwrap();
    let events = events(20_000);
    let ids = derived_ids(&events, 0);

    let options = IngestOptions::new().listed_rejections(usize::MAX);
    let summary = tokio::time::timeout(BOUND, client.ingest_iter(events, options))
        .await
        .expect("the run ends")
        .expect("no batch failed for a bad key");

    assert_eq!(summary.requests, 200);
    let letters = whole_letters(&path);
    check_accounting(&sim, &ids, &letters, &summary);
    let sink = JsonLinesSink::new(&path);
    assert_eq!(sink.read_all().await.unwrap(), letters);
    assert_eq!(sink.skipped_lines(), 0);
    // The key never reaches the file.
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(!text.contains(&keys.secret));

    // The proxy did what it was asked: every fault happened, and some batches failed for
    // good while most were delivered.
    let stats = proxy.stats();
    for fault in [
        Fault::ResetBeforeForward,
        Fault::ResetAfterForward,
        Fault::StallBeforeForward,
        Fault::StallAfterForward,
        Fault::Truncate,
        Fault::Inject(429),
        Fault::Inject(503),
    ] {
        assert!(stats.count(fault) > 0, "{fault:?} never happened");
    }
    assert!(
        !letters.is_empty(),
        "no batch failed for good: faults too rare to test"
    );
    // Each request the proxy passed was a batch of 100 delivered and acknowledged, and every
    // event accepted came from such a reply: no reply that passed was lost to the clock.
    assert_eq!(
        summary.accepted as u64,
        100 * stats.count(Fault::Pass),
        "{summary:?}"
    );
    assert!(summary.accepted > 15_000, "{summary:?}");
    eprintln!(
        "proxy: {} requests, {} faulted; summary: accepted {}, dead-lettered {}, unsettled {}; \
         simulator: {} stored, {} duplicate ids",
        stats.total(),
        stats.faulted(),
        summary.accepted,
        summary.dead_lettered,
        summary.rejected.len() - summary.dead_lettered,
        sim.stats().events,
        sim.stats().duplicate_event_ids,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn year_long_pauses_from_a_hostile_proxy_fail_fast_and_lose_no_event() {
    let sim = simulator().await;
    let keys = sim.keys("acme").unwrap();
    let faults = Faults {
        status_429: 0.1,
        status_503: 0.05,
        hostile: Hostile::Pausing,
        ..Faults::none()
    };
    let proxy = FaultProxy::start(sim.addr(), faults, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("letters.jsonl");
    let client = Client::builder(&keys.secret)
        .base_url(proxy.url())
        .event_batch(50, 1_000_000)
        .stack(|s| {
            s.retry_seed(3)
                .attempt_timeout(ATTEMPT_TIMEOUT)
                .max_retry_after(Duration::from_secs(2))
                .dead_letter_file(&path)
        })
        .build()
        .unwrap();
    let events = events(2_000);
    let ids = derived_ids(&events, 0);

    let options = IngestOptions::new().listed_rejections(usize::MAX);
    // A server that names a pause of a year (or the year 9999) must not hold the run: the
    // call fails fast with the server's time, and the batch is kept.
    let summary =
        tokio::time::timeout(Duration::from_secs(20), client.ingest_iter(events, options))
            .await
            .expect("a year-long pause does not hold the run")
            .unwrap();

    let injected =
        proxy.stats().count(Fault::Inject(429)) + proxy.stats().count(Fault::Inject(503));
    assert!(injected > 0, "no pause was injected");
    let letters = whole_letters(&path);
    check_accounting(&sim, &ids, &letters, &summary);
    assert!(summary.dead_lettered > 0);
    assert!(
        summary
            .errors
            .iter()
            .any(|e| matches!(e, LehnzError::RateLimited { .. })),
        "{:?}",
        summary.errors
    );
}

/// A proxy that answers every request with a plain 503.
fn always_503() -> Faults {
    Faults {
        status_503: 1.0,
        hostile: Hostile::None,
        ..Faults::none()
    }
}

/// A client that sends each batch once, one batch at a time, without breaker or throttle, to
/// `proxy`, with dead letters in `path`.
fn one_shot_client(key: &str, proxy: &FaultProxy, path: &Path) -> Client {
    let path = path.to_owned();
    Client::builder(key)
        .base_url(proxy.url())
        .event_batch(10, 1_000_000)
        .concurrency(1)
        .stack(|s| {
            s.max_attempts(1)
                .circuit_breaker(false)
                .throttle(None)
                .attempt_timeout(Duration::from_secs(5))
                .dead_letter_file(path)
        })
        .build()
        .unwrap()
}

async fn ingest(client: &Client, events: &[Event], start: usize) -> Summary {
    let options = IngestOptions::new()
        .start_offset(start)
        .listed_rejections(usize::MAX);
    tokio::time::timeout(BOUND, client.ingest_iter(events.to_vec(), options))
        .await
        .expect("the run ends")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_directory_that_is_a_file_is_reported_as_not_stored_and_recovers() {
    let sim = simulator().await;
    let keys = sim.keys("acme").unwrap();
    let proxy = FaultProxy::start(sim.addr(), always_503(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    // The sink's directory is a regular file: the directory cannot be made, nothing written.
    let blocker = dir.path().join("letters");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let path = blocker.join("dead.jsonl");
    let client = one_shot_client(&keys.secret, &proxy, &path);
    let events = events(100);

    let summary = ingest(&client, &events, 0).await;
    assert_eq!(summary.dead_lettered, 0);
    assert_eq!(summary.dead_letter_failed, 100, "{summary:?}");
    assert_eq!(
        summary.settled, 0,
        "nothing failed is settled unless stored"
    );
    assert!(!summary.is_complete());
    assert_eq!(summary.errors.len(), 10);
    assert!(summary
        .rejected
        .iter()
        .all(|r| r.reason.contains("dead-letter sink failed")));
    let stats = client.stats().unwrap().dead_letters().unwrap();
    assert_eq!((stats.written(), stats.write_failures()), (0, 10));
    assert!(JsonLinesSink::new(&path).read_all().await.is_err());

    // The fault clears: the same events, resumed from the checkpoint, are now kept.
    std::fs::remove_file(&blocker).unwrap();
    let summary = ingest(&client, &events[summary.settled..], summary.settled).await;
    assert_eq!(
        (summary.dead_lettered, summary.dead_letter_failed),
        (100, 0)
    );
    assert_eq!(summary.settled, 100);
    let letters = whole_letters(&path);
    assert_eq!(letters.len(), 10);

    // And once the upstream is back, replay delivers every one.
    proxy.set_faults(Faults::none());
    let report = client
        .replay_dead_letters(&JsonLinesSink::new(&path))
        .await
        .unwrap();
    assert_eq!((report.replayed, report.succeeded), (10, 10));
    for id in derived_ids(&events, 0) {
        assert!(sim.has_event_id(&id), "{id} not delivered by the replay");
    }
    assert!(whole_letters(&path).is_empty());
}

/// A tmpfs of 64 KiB mounted on a fresh directory, unmounted when dropped.
///
/// The tests that use it are ignored by a plain `cargo test`: mounting needs root, or a user
/// and mount namespace. `.ci/run` runs them as root, or under `unshare -Urm` otherwise:
/// `cargo test --all-features --test faults -- --ignored full_disk`.
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    /// Mounts the disk, or fails the test with the reason.
    fn mount() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        assert!(
            output.status.success(),
            "cannot mount a 64 KiB tmpfs to fill ({}: {}); run as root, or under \
             `unshare -Urm` (a user and mount namespace)",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        TinyDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a filler file until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = [b'x'; 1024];
        while file
            .write_all(&chunk)
            .and_then(|()| file.sync_data())
            .is_ok()
        {}
        filler
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "mounts a tmpfs: run as root or in a user and mount namespace, as .ci/run does"]
async fn dead_letters_on_a_full_disk_are_reported_as_not_stored_and_recover() {
    let disk = TinyDisk::mount();
    let sim = simulator().await;
    let keys = sim.keys("acme").unwrap();
    let proxy = FaultProxy::start(sim.addr(), always_503(), 2).await;
    let path = disk.path().join("dead.jsonl");
    let client = one_shot_client(&keys.secret, &proxy, &path);
    let events = events(50);

    // One batch is kept while there is room; then the disk fills up.
    let summary = ingest(&client, &events[..10], 0).await;
    assert_eq!(summary.dead_lettered, 10);
    let filler = disk.fill();
    let summary = ingest(&client, &events[10..], 10).await;
    // The file's last page may still take a letter or so; after that, writes fail (batches go
    // one at a time, so the kept ones come first).
    assert!(summary.dead_letter_failed > 0, "{summary:?}");
    assert_eq!(summary.dead_lettered + summary.dead_letter_failed, 40);
    assert_eq!(summary.settled, 10 + summary.dead_lettered);
    assert!(summary
        .rejected
        .iter()
        .filter(|r| r.index >= summary.settled)
        .all(|r| r.reason.contains("dead-letter sink failed")));

    // Reading a full disk works, and finds exactly the letters that were stored: a write that
    // failed midway left at most a torn line, which is skipped.
    let sink = JsonLinesSink::new(&path);
    assert_eq!(
        sink.read_all().await.unwrap().len(),
        1 + summary.dead_lettered / 10
    );

    // Room again: the rest is kept, each record whole.
    std::fs::remove_file(filler).unwrap();
    let settled = summary.settled;
    let summary = ingest(&client, &events[settled..], settled).await;
    assert_eq!(
        (summary.dead_lettered, summary.dead_letter_failed),
        (50 - settled, 0)
    );
    let letters = sink.read_all().await.unwrap();
    assert_eq!(letters.len(), 5);
    eprintln!("torn lines skipped: {}", sink.skipped_lines());
    let kept: HashSet<String> = letters.iter().flat_map(letter_event_ids).collect();
    assert_eq!(kept, derived_ids(&events, 0).into_iter().collect());
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stopped_and_restarted_mid_run_reports_what_was_kept_and_recovers() {
    use support::redis::RedisServer;
    use tower_outbound::redis::{Fallback, RedisStore, RedisStreamSink};

    let mut redis = RedisServer::start();
    let sim = simulator().await;
    let keys = sim.keys("acme").unwrap();
    let proxy = FaultProxy::start(sim.addr(), always_503(), 3).await;
    let store = RedisStore::open(&redis.url())
        .unwrap()
        .prefix("faults")
        .fallback(Fallback::Local { workers: 1 })
        .retry_after(Duration::from_millis(200));
    let store_stats = store.stats();
    let connection = {
        let client = redis::Client::open(redis.url()).unwrap();
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(250)))
            .set_response_timeout(Some(Duration::from_millis(250)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .unwrap()
    };
    let sink = RedisStreamSink::new(connection, "faults:letters", 100_000)
        .timeout(Duration::from_millis(300));
    let client = Client::builder(&keys.secret)
        .base_url(proxy.url())
        .event_batch(10, 1_000_000)
        .stack(|s| {
            s.max_attempts(1)
                .circuit_breaker(false)
                .throttle(Some((1_000, Duration::from_secs(1))))
                .throttle_store(store)
                .attempt_timeout(Duration::from_secs(5))
                .dead_letter_sink(sink.clone())
        })
        .build()
        .unwrap();
    let events = events(90);

    // Redis up: every failed batch is kept in the stream, the throttle decides in Redis.
    let summary = ingest(&client, &events[..30], 0).await;
    assert_eq!((summary.dead_lettered, summary.dead_letter_failed), (30, 0));
    assert_eq!(sink.count().await.unwrap(), 3);
    assert!(store_stats.redis_decisions() >= 3);

    // Redis stops: calls go on (the throttle falls back to its local share), and the summary
    // says the letters were not kept, with a typed error per batch.
    redis.kill();
    let summary = ingest(&client, &events[30..60], 30).await;
    assert_eq!(summary.dead_lettered, 0, "{summary:?}");
    assert_eq!(summary.dead_letter_failed, 30);
    assert_eq!(summary.errors.len(), 3);
    assert!(summary
        .errors
        .iter()
        .all(|e| matches!(e, LehnzError::Server { .. })));
    assert!(store_stats.fallback_decisions() >= 1);
    assert!(store_stats.errors() >= 1);
    assert!(sink.count().await.is_err(), "the sink says Redis is away");

    // Redis is back (empty, as after a crash without persistence): letters are kept again
    // once the connection is re-made, and the throttle shares through Redis again.
    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut start = 30;
    loop {
        let summary = ingest(&client, &events[start..start + 10], start).await;
        if summary.dead_lettered == 10 {
            break;
        }
        assert_eq!(summary.dead_letter_failed, 10);
        assert!(
            std::time::Instant::now() < deadline,
            "letters are still not kept 10 s after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        start = 30 + (start - 30 + 10) % 30;
    }
    assert_eq!(sink.count().await.unwrap(), 1);
    proxy.set_faults(Faults::none());
    let before = store_stats.redis_decisions();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let summary = ingest(&client, &events[60..], 60).await;
        assert_eq!(summary.accepted, 30);
        if store_stats.redis_decisions() > before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the throttle does not use Redis again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "mounts a tmpfs: run as root or in a user and mount namespace, as .ci/run does"]
async fn a_dead_letter_write_that_fails_on_a_full_disk_leaves_no_torn_line() {
    let disk = TinyDisk::mount();
    let sim = simulator().await;
    let keys = sim.keys("acme").unwrap();
    let proxy = FaultProxy::start(sim.addr(), always_503(), 4).await;
    let path = disk.path().join("dead.jsonl");
    let client = one_shot_client(&keys.secret, &proxy, &path);
    let events = events(50);
    ingest(&client, &events[..10], 0).await;
    disk.fill();
    let summary = ingest(&client, &events[10..], 10).await;
    assert!(summary.dead_letter_failed > 0);
    // Every line of the file is a whole record: a write that failed left nothing behind.
    let letters = whole_letters(&path);
    assert_eq!(letters.len(), 1 + summary.dead_lettered / 10);
}
