//! The `lehnz_sync` job killed with SIGKILL three times, then run to the end: every event is
//! stored, the only duplicates are from batches in flight at each kill, and every duplicate
//! carries the id of its original.
//!
//! The simulator runs in this process; the job runs in a child process (this test binary
//! again, through the hidden `lehnz_sync_job_process` entry point), so a kill stops only the
//! job.
#![cfg(all(feature = "lehnz", feature = "sim", unix))]

#[path = "../examples/lehnz_sync.rs"]
#[allow(dead_code)]
mod lehnz_sync;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use tower_outbound::lehnz::sim::{Chaos, Simulator};
use tower_outbound::lehnz::{Event, EVENT_ID_NAMESPACE};

const ARGS_ENV: &str = "LEHNZ_SYNC_JOB_ARGS";
const EVENTS: usize = 3_000;
const BATCH: usize = 100;
const CONCURRENCY: usize = 4;

/// The job, as the child process runs it: the example's own code, with its arguments from
/// the environment (separated by newlines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by a_job_killed_three_times_resumes_and_loses_nothing"]
async fn lehnz_sync_job_process() {
    let args = std::env::var(ARGS_ENV).expect("run by the resume test");
    let args = lehnz_sync::Args::parse(args.lines().map(str::to_owned)).unwrap();
    let outcome = lehnz_sync::run(args).await.unwrap();
    assert_eq!(outcome.exit_status(), 0, "{}", outcome.last_line());
}

fn input_event(i: usize) -> Event {
    Event::new(
        format!("user-{}", i % 97),
        format!("item-{}", i % 13),
        ["view", "click"][i % 2],
    )
}

fn spawn_job(dir: &Path, base_url: &str, key: &str) -> Child {
    let args = [
        "--base-url",
        base_url,
        "--input",
        &dir.join("events.jsonl").display().to_string(),
        "--checkpoint",
        &dir.join("checkpoint").display().to_string(),
        "--dead-letters",
        &dir.join("dead-letters.jsonl").display().to_string(),
        "--window",
        "1000/60",
        "--batch",
        &BATCH.to_string(),
        "--concurrency",
        &CONCURRENCY.to_string(),
        "--quiet",
    ]
    .join("\n");
    Command::new(std::env::current_exe().unwrap())
        .args(["lehnz_sync_job_process", "--exact", "--ignored", "--quiet"])
        .env(ARGS_ENV, args)
        .env("LEHNZ_API_KEY", key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_three_times_resumes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut input =
        std::io::BufWriter::new(std::fs::File::create(dir.path().join("events.jsonl")).unwrap());
    for i in 0..EVENTS {
        serde_json::to_writer(&mut input, &input_event(i)).unwrap();
        input.write_all(b"\n").unwrap();
    }
    input.into_inner().unwrap().sync_all().unwrap();
    // Latency keeps batches in flight long enough for a kill to land among them.
    let sim = Simulator::builder()
        .org("acme")
        .chaos(Chaos::none().latency_range(Duration::from_millis(5), Duration::from_millis(40)))
        .seed(3)
        .keep_bodies(true)
        .start()
        .await
        .unwrap();
    let key = sim.keys("acme").unwrap().secret;
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);

    for kill in 0..3 {
        let mut job = spawn_job(dir.path(), &sim.base_url(), &key);
        let target = sim.stats().events + rng.random_range(300..700);
        let mut waited = 0;
        while sim.stats().events < target {
            assert!(
                job.try_wait().unwrap().is_none(),
                "the job ended before kill {kill}"
            );
            assert!(waited < 30_000, "no progress before kill {kill}");
            tokio::time::sleep(Duration::from_millis(2)).await;
            waited += 2;
        }
        job.kill().unwrap(); // SIGKILL
        job.wait().unwrap();
    }
    let job = spawn_job(dir.path(), &sim.base_url(), &key);
    let output = tokio::task::spawn_blocking(move || job.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "the last run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let checkpoint = std::fs::read_to_string(dir.path().join("checkpoint")).unwrap();
    assert_eq!(checkpoint.trim(), EVENTS.to_string());
    // Every stored event carries the id derived from its offset, and is that event.
    let expected: HashMap<String, usize> = (0..EVENTS)
        .map(|i| {
            (
                input_event(i)
                    .derived_id(&EVENT_ID_NAMESPACE, i)
                    .to_string(),
                i,
            )
        })
        .collect();
    let mut copies = vec![0usize; EVENTS];
    for stored in sim.events() {
        let id = stored["context"]["client_event_id"].as_str().unwrap();
        let &i = expected
            .get(id)
            .expect("a stored id that no input event has");
        let event = input_event(i);
        assert_eq!(stored["user_id"], event.user_id.as_str());
        assert_eq!(stored["item_id"], event.item_id.as_str());
        assert_eq!(stored["event_type"], event.event_type.as_str());
        copies[i] += 1;
    }
    assert!(copies.iter().all(|&c| c >= 1), "an event was never stored");
    let duplicates: usize = copies.iter().map(|c| c - 1).sum();
    eprintln!("{duplicates} duplicates after three kills");
    let stats = sim.stats();
    assert_eq!(stats.distinct_event_ids, EVENTS);
    // An event sent by two killed runs and the next is stored three times: one id with
    // duplicates, two extra copies.
    let ids_with_copies = copies.iter().filter(|&&c| c > 1).count();
    assert_eq!(stats.duplicate_event_ids, ids_with_copies);
    assert_eq!(stats.duplicate_events, duplicates);
    assert!(
        duplicates <= 3 * CONCURRENCY * BATCH,
        "{duplicates} duplicates from three kills"
    );
    sim.shutdown().await;
}

#[test]
fn dead_letters_default_beside_the_checkpoint_so_a_resumed_run_replays_them() {
    let parse =
        |args: &[&str]| lehnz_sync::Args::parse(args.iter().map(|a| (*a).to_owned())).unwrap();
    // Every run with this checkpoint, whatever its process, uses the same file.
    let resumable = parse(&["--checkpoint", "/var/jobs/sync.checkpoint"]);
    assert_eq!(
        lehnz_sync::dead_letter_path(&resumable),
        Path::new("/var/jobs/sync.checkpoint.dead-letters.jsonl")
    );
    let named = parse(&[
        "--checkpoint",
        "/var/jobs/sync.checkpoint",
        "--dead-letters",
        "/var/jobs/letters.jsonl",
    ]);
    assert_eq!(
        lehnz_sync::dead_letter_path(&named),
        Path::new("/var/jobs/letters.jsonl")
    );
}
