//! The main job (`lehnz_sync`'s own code) against a simulator that goes down in the middle of
//! the run, on tokio's paused clock: the simulator's windows, the throttle, the breaker and
//! the outage all run on it, so the wall times below are exact and the test takes seconds.
#![cfg(all(feature = "lehnz", feature = "sim"))]

#[path = "../examples/lehnz_sync.rs"]
#[allow(dead_code)]
mod lehnz_sync;

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;
use tower_outbound::lehnz::sim::{Chaos, Simulator};
use tower_outbound::{JsonLinesSink, Sink};

const EVENTS: usize = 30_000;
/// 300 batches, 32 at a time, each answered in half a second: about 5 s of streaming. The
/// window is far above what the job sends, so the outage and the breaker alone decide the
/// wall time (see docs/lehnz.md for a run whose throttle is the bottleneck).
const BATCH: usize = 100;
const LATENCY: Duration = Duration::from_millis(500);
const WINDOW: (u32, Duration) = (1000, Duration::from_secs(60));
const OUTAGE_AT: Duration = Duration::from_secs(2);

async fn simulator() -> Simulator {
    Simulator::builder()
        .org("acme")
        .window(WINDOW.0, WINDOW.1)
        .chaos(Chaos::none().latency(LATENCY))
        .start()
        .await
        .unwrap()
}

fn args(sim: &Simulator, dir: &Path, patience: u64) -> lehnz_sync::Args {
    let mut args = lehnz_sync::Args::parse(
        [
            "--base-url",
            &sim.base_url(),
            "--events",
            &EVENTS.to_string(),
            "--batch",
            &BATCH.to_string(),
            "--window",
            &format!("{}/{}", WINDOW.0, WINDOW.1.as_secs()),
            "--checkpoint",
            &dir.join("sync.checkpoint").display().to_string(),
            "--patience",
            &patience.to_string(),
            "--quiet",
        ]
        .map(str::to_owned),
    )
    .unwrap();
    args.key = Some(sim.keys("acme").unwrap().secret);
    args
}

/// Runs the job; `outage` takes the simulator down that long, `OUTAGE_AT` into the run.
async fn run(
    sim: &Simulator,
    dir: &Path,
    patience: u64,
    outage: Option<Duration>,
) -> lehnz_sync::Outcome {
    let job = tokio::spawn(lehnz_sync::run(args(sim, dir, patience)));
    if let Some(lasting) = outage {
        tokio::time::sleep(OUTAGE_AT).await;
        assert!(!job.is_finished(), "the outage must come mid-run");
        sim.outage(lasting);
    }
    job.await.unwrap().unwrap()
}

fn letters_on_disk(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("sync.checkpoint.dead-letters.jsonl")).map_or(0, |m| m.len())
}

#[tokio::test(start_paused = true)]
async fn a_job_rides_out_an_outage_shorter_than_its_patience() {
    // The same job without an outage, for its wall time.
    let calm = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let baseline = run(&calm, dir.path(), 60, None).await;
    assert_eq!(baseline.exit_status(), 0, "{}", baseline.last_line());
    assert_eq!(calm.stats().distinct_event_ids, EVENTS);

    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let outage = Duration::from_secs(6);
    let start = Instant::now();
    let outcome = run(&sim, dir.path(), 60, Some(outage)).await;

    assert_eq!(outcome.exit_status(), 0, "{}", outcome.last_line());
    assert_eq!(outcome.delivered, EVENTS);
    assert_eq!(
        outcome.dead_lettered_while_streaming, 0,
        "nothing went to dead letters"
    );
    assert_eq!(outcome.dead_lettered, 0);
    assert_eq!(letters_on_disk(dir.path()), 0);
    let stats = sim.stats();
    assert_eq!(stats.distinct_event_ids, EVENTS, "every event stored");
    assert_eq!(stats.outages, 1);
    assert!(stats.refused_in_outage > 0, "the job met the outage");
    // The open time doubles from 1 s while the probes fail (1, 2, 4 s): the probe after a 6 s
    // outage is at most one 4 s interval late.
    let probe_interval = Duration::from_secs(4);
    assert!(
        outcome.wall_time <= baseline.wall_time + outage + probe_interval,
        "{:?} with the outage, {:?} without",
        outcome.wall_time,
        baseline.wall_time
    );
    assert_eq!(
        outcome.wall_time,
        start.elapsed(),
        "the wall time covers the whole run"
    );
    eprintln!(
        "without an outage {:?}; with a {outage:?} outage {:?}",
        baseline.wall_time, outcome.wall_time
    );
}

#[tokio::test(start_paused = true)]
async fn an_outage_longer_than_the_patience_leaves_dead_letters_that_the_next_run_delivers() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let outage = Duration::from_secs(3600);
    let start = Instant::now();
    let first = run(&sim, dir.path(), 5, Some(outage)).await;

    // Still down at the end of the run: what was not sent is in the dead-letter file.
    assert!(
        start.elapsed() < OUTAGE_AT + outage,
        "the run ended during the outage"
    );
    assert_eq!(first.exit_status(), 75, "{}", first.last_line());
    assert!(first.dead_lettered > 0);
    assert_eq!(first.failed, 0);
    let stored = sim.stats().distinct_event_ids;
    assert_eq!(stored + first.dead_lettered, EVENTS, "nothing lost");
    assert_eq!(first.delivered, stored);
    let sink = JsonLinesSink::new(dir.path().join("sync.checkpoint.dead-letters.jsonl"));
    assert_eq!(sink.count().await.unwrap() * BATCH, first.dead_lettered);

    // The next run, once Lehnz is back, has nothing new to stream and replays them all.
    tokio::time::sleep_until(start + OUTAGE_AT + outage).await;
    let second = run(&sim, dir.path(), 5, None).await;
    assert_eq!(second.exit_status(), 0, "{}", second.last_line());
    assert_eq!(second.delivered, first.dead_lettered);
    assert_eq!(second.dead_lettered, 0);
    assert_eq!(sim.stats().distinct_event_ids, EVENTS);
    assert_eq!(
        letters_on_disk(dir.path()),
        0,
        "the drained file is compacted"
    );
    assert!(
        second.wall_time > Duration::ZERO,
        "the replay's time is counted"
    );
}

/// A simulator that answers one request in five with a 500.
async fn failing_simulator() -> Simulator {
    Simulator::builder()
        .org("acme")
        .window(WINDOW.0, WINDOW.1)
        .chaos(
            Chaos::none()
                .server_errors(0.2)
                .latency(Duration::from_millis(5)),
        )
        .seed(3)
        .start()
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_config_file_sets_the_jobs_stack() {
    // The same failing upstream: the default stack retries its way through; one attempt per
    // batch (from the file) leaves dead letters.
    let sim = failing_simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let outcome = lehnz_sync::run(args(&sim, dir.path(), 60)).await.unwrap();
    assert_eq!(outcome.exit_status(), 0, "{}", outcome.last_line());

    let sim = failing_simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("stack.toml");
    std::fs::write(&config, "attempts = 1\nbreaker = \"off\"\n").unwrap();
    let mut job = args(&sim, dir.path(), 60);
    job.config = Some(config);
    let outcome = lehnz_sync::run(job).await.unwrap();
    assert!(
        outcome.dead_lettered_while_streaming > 0,
        "one attempt per batch: {}",
        outcome.last_line()
    );
}

#[tokio::test(start_paused = true)]
async fn a_config_file_with_an_unknown_key_or_a_bad_value_is_refused_naming_it() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("stack.toml");
    for (text, named) in [
        ("atempts = 3\n", "atempts"),
        ("attempts = 0\n", "attempts"),
        ("attempt_timeout = 30\n", "attempt_timeout"),
        ("throttle = { rate = 10, per = \"1s\" }\n", "throttle"),
    ] {
        std::fs::write(&config, text).unwrap();
        let mut job = args(&sim, dir.path(), 60);
        job.config = Some(config.clone());
        let err = lehnz_sync::run(job).await.unwrap_err().to_string();
        assert!(err.contains(named), "{text:?} gave {err:?}");
    }
}
