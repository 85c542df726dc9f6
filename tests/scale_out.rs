//! The main job scaled out: three `lehnz_sync` processes, one `--shard I/3` each, over one
//! generated source, against one simulator and one real `redis-server`. With `--redis` they
//! take their requests from one shared bucket (the three together stay within the rate each
//! is given, where three processes with a bucket each send three times as much) and share one
//! dead-letter stream, from which each replays its own shard's letters only.
//!
//! The simulator runs in this process; each job runs in a child process (this test binary
//! again, through the hidden `scale_out_job_process` entry point), as a deployment runs them.
#![cfg(all(feature = "lehnz", feature = "sim", feature = "redis", unix))]

#[path = "../examples/lehnz_sync.rs"]
#[allow(dead_code)]
mod lehnz_sync;
#[path = "support/redis.rs"]
mod redis_server;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lehnz_sync::{Shard, ShardLetters, DEAD_LETTER_STREAM, SHARD_HEADER};
use redis_server::RedisServer;
use tower_outbound::dead_letter::DeadLetter;
use tower_outbound::lehnz::sim::{Chaos, SimStats, Simulator};
use tower_outbound::lehnz::EVENT_ID_NAMESPACE;
use tower_outbound::redis::RedisStreamSink;
use tower_outbound::Sink;

const ARGS_ENV: &str = "SCALE_OUT_JOB_ARGS";
const OUTCOME_ENV: &str = "SCALE_OUT_JOB_OUTCOME";
const EVENTS: usize = 3_000;
const SHARDS: usize = 3;
const BATCH: usize = 50;
/// The rate the jobs are given (`--window`): 20 requests per 2 s, 20 at once. A throttle lets
/// at most rate · t + burst through in any span t: 40 in any 2 s.
const RATE: (u32, u64) = (20, 2);
/// The simulator's window: 45 requests per 2 s, the most one bucket lets through in that time
/// and a margin for the requests' delays on the way, so a fleet that shares one bucket is never
/// refused for a used-up window; three buckets let up to 120 through.
const WINDOW: (u32, u64) = (45, 2);
/// The most a run of the three processes may take.
const TIME_LIMIT: Duration = Duration::from_secs(40);

/// The job, as a child process runs it: the example's own code, its arguments from the
/// environment (one per line); what it reports goes to the file `OUTCOME_ENV` names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the scale-out tests"]
async fn scale_out_job_process() {
    let args = std::env::var(ARGS_ENV).expect("run by a scale-out test");
    let args = lehnz_sync::Args::parse(args.lines().map(str::to_owned)).unwrap();
    let outcome = lehnz_sync::run(args).await.unwrap();
    let report = format!(
        "{} {} {} {}\n",
        outcome.exit_status(),
        outcome.delivered,
        outcome.dead_lettered,
        outcome.failed
    );
    std::fs::write(std::env::var(OUTCOME_ENV).unwrap(), report).unwrap();
}

/// What a process reported: its exit status and its counts.
#[derive(Debug)]
struct Reported {
    exit: u8,
    delivered: usize,
    dead_lettered: usize,
    failed: usize,
}

fn checkpoint(dir: &Path, shard: usize) -> PathBuf {
    dir.join(format!("shard-{shard}.checkpoint"))
}

fn spawn_shard(
    dir: &Path,
    sim: &Simulator,
    (shard, concurrency): (usize, usize),
    redis: Option<&str>,
) -> Child {
    let mut args = vec![
        "--shard".to_owned(),
        format!("{shard}/{SHARDS}"),
        "--base-url".to_owned(),
        sim.base_url(),
        "--events".to_owned(),
        EVENTS.to_string(),
        "--batch".to_owned(),
        BATCH.to_string(),
        "--concurrency".to_owned(),
        concurrency.to_string(),
        "--window".to_owned(),
        format!("{}/{}", RATE.0, RATE.1),
        "--seed".to_owned(),
        (11 + shard).to_string(),
        "--checkpoint".to_owned(),
        checkpoint(dir, shard).display().to_string(),
        "--quiet".to_owned(),
    ];
    if let Some(url) = redis {
        args.extend(["--redis".to_owned(), url.to_owned()]);
    }
    Command::new(std::env::current_exe().unwrap())
        .args(["scale_out_job_process", "--exact", "--ignored", "--quiet"])
        .env(ARGS_ENV, args.join("\n"))
        .env(OUTCOME_ENV, dir.join(format!("shard-{shard}.outcome")))
        .env("LEHNZ_API_KEY", sim.keys("acme").unwrap().secret)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs the three shards in parallel and waits for them (killed past the time limit): what each
/// reported, and how long the whole run took.
async fn run_shards(dir: &Path, sim: &Simulator, redis: Option<&str>) -> (Vec<Reported>, Duration) {
    run_shards_with(dir, sim, redis, 8).await
}

/// [`run_shards`] with `concurrency` batches outstanding per process.
async fn run_shards_with(
    dir: &Path,
    sim: &Simulator,
    redis: Option<&str>,
    concurrency: usize,
) -> (Vec<Reported>, Duration) {
    let started = Instant::now();
    let mut children: Vec<Child> = (0..SHARDS)
        .map(|shard| spawn_shard(dir, sim, (shard, concurrency), redis))
        .collect();
    while children
        .iter_mut()
        .any(|child| child.try_wait().unwrap().is_none())
    {
        if started.elapsed() > TIME_LIMIT {
            for child in &mut children {
                let _ = child.kill();
            }
            panic!("the shards did not finish within {TIME_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let reported = children
        .into_iter()
        .enumerate()
        .map(|(shard, child)| {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "shard {shard} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let text = std::fs::read_to_string(dir.join(format!("shard-{shard}.outcome"))).unwrap();
            let n: Vec<usize> = text
                .split_whitespace()
                .map(|n| n.parse().unwrap())
                .collect();
            Reported {
                exit: u8::try_from(n[0]).unwrap(),
                delivered: n[1],
                dead_lettered: n[2],
                failed: n[3],
            }
        })
        .collect();
    (reported, elapsed)
}

async fn simulator(chaos: Chaos) -> Simulator {
    simulator_with_window(WINDOW, chaos).await
}

async fn simulator_with_window(window: (u32, u64), chaos: Chaos) -> Simulator {
    Simulator::builder()
        .org("acme")
        .window(window.0, Duration::from_secs(window.1))
        .chaos(chaos)
        .seed(5)
        .start()
        .await
        .unwrap()
}

/// The least time one bucket takes to let the batches through: the first 20 at once, the
/// other 40 at 10 per second (retries take more).
fn least_time() -> Duration {
    let per_second = f64::from(RATE.0) / RATE.1 as f64;
    Duration::from_secs_f64(((EVENTS / BATCH) as f64 - f64::from(RATE.0)) / per_second)
}

/// Events the simulator does not hold, by their derived ids.
fn lost(sim: &Simulator) -> usize {
    (0..EVENTS)
        .map(|i| {
            lehnz_sync::generated(i)
                .derived_id(&EVENT_ID_NAMESPACE, i)
                .to_string()
        })
        .filter(|id| !sim.has_event_id(id))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_share_one_window_and_store_every_event_once() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    // Answers dropped after the events were stored, and 5xx: batches sent again, so duplicates
    // to remove downstream; no 429 but the window's own.
    let sim = simulator(
        Chaos::none()
            .drop_after_processing(0.03)
            .server_errors(0.03)
            .latency_range(Duration::from_millis(2), Duration::from_millis(20)),
    )
    .await;

    let (reported, elapsed) = run_shards(dir.path(), &sim, Some(&redis.url())).await;
    let stats: SimStats = sim.stats();
    eprintln!("{elapsed:.1?}, {reported:?}, {stats:?}");

    for (shard, r) in reported.iter().enumerate() {
        assert_eq!(
            (r.exit, r.dead_lettered, r.failed),
            (0, 0, 0),
            "shard {shard}: {r:?}"
        );
        // Each checkpoint counts its own shard's events, all of them.
        let written = std::fs::read_to_string(checkpoint(dir.path(), shard)).unwrap();
        let own = Shard {
            index: shard,
            count: SHARDS,
        }
        .len_of(EVENTS);
        assert_eq!(
            written.trim(),
            own.to_string(),
            "shard {shard}'s checkpoint"
        );
    }
    // Every event stored, once after removing duplicates by id, and nothing else.
    assert_eq!(lost(&sim), 0, "events neither stored nor dead-lettered");
    assert_eq!(stats.distinct_event_ids, EVENTS);
    assert_eq!(stats.events - stats.duplicate_events, EVENTS);
    // The summed reports are the simulator's count.
    let delivered: usize = reported.iter().map(|r| r.delivered).sum();
    assert_eq!(delivered, stats.distinct_event_ids);
    // One bucket for the three: never more than the window holds.
    assert_eq!(
        stats.rate_limited_window, 0,
        "429s for a used-up window: the bucket was not shared"
    );
    // And not faster than one bucket.
    let requests: u64 = stats.responses_by_status.values().sum();
    assert!(requests >= (EVENTS / BATCH) as u64, "{stats:?}");
    assert!(
        elapsed >= least_time(),
        "{elapsed:?}: faster than one bucket allows ({:?})",
        least_time()
    );
    sim.shutdown().await;
}

/// The job as deployed: `--window` is the simulator's window itself (20 per 2 s, 20 at once),
/// with no margin, so the shared bucket alone would let up to 40 into a window; what keeps the
/// fleet within it is the server's count, adopted from every reply into Redis. A window opens
/// with the burst in flight, and the replies' counts do not include the requests still on their
/// way: the store used to adopt them as they were and let extra requests through (57 refusals
/// for a used-up window in the million-event run). Now each reply's count is taken less the
/// fleet's outstanding requests, and none is refused.
///
/// Four batches outstanding per process, twelve in all, fewer than the burst: slots reserved
/// before a window's first reply has come are bounded by the bucket alone (no count is known
/// yet), so a fleet that starts with more requests waiting than the burst can send past the
/// first window (docs/distributed.md, "What the count cannot bound").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_paced_at_the_windows_own_rate_gets_no_429_for_a_used_up_window() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator_with_window(
        (RATE.0, RATE.1),
        Chaos::none().latency_range(Duration::from_millis(2), Duration::from_millis(20)),
    )
    .await;
    let (reported, elapsed) = run_shards_with(dir.path(), &sim, Some(&redis.url()), 4).await;
    let stats = sim.stats();
    eprintln!("{elapsed:.1?}, {reported:?}, {stats:?}");
    for (shard, r) in reported.iter().enumerate() {
        assert_eq!(r.exit, 0, "shard {shard}: {r:?}");
    }
    assert_eq!(lost(&sim), 0, "events neither stored nor dead-lettered");
    assert_eq!(
        stats.rate_limited_window, 0,
        "429s for a used-up window: a reply's count was taken without the requests in flight"
    );
    sim.shutdown().await;
}

/// The same three processes without `--redis`: each takes the whole rate for itself, three times
/// what the window holds, and the simulator refuses what goes over it. This is what the test
/// above would see if the bucket were not shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_three_shards_overrun_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let sim =
        simulator(Chaos::none().latency_range(Duration::from_millis(2), Duration::from_millis(20)))
            .await;
    let (reported, elapsed) = run_shards(dir.path(), &sim, None).await;
    let stats = sim.stats();
    eprintln!("{elapsed:.1?}, {reported:?}, {stats:?}");
    // Faster than one bucket allows, and over the window.
    assert!(
        elapsed < least_time(),
        "{elapsed:?}: three buckets went no faster than one"
    );
    assert!(
        stats.rate_limited_window > 0,
        "three buckets' worth sent into one window, and nothing refused: {stats:?}"
    );
    sim.shutdown().await;
}

fn letter(id: &str) -> DeadLetter {
    serde_json::from_value(serde_json::json!({
        "version": 1,
        "id": id,
        "method": "POST",
        "uri": "http://127.0.0.1:9/api/v1/events/ingest",
        "headers": [{"name": "content-type", "value": "application/json"}],
        "body": {"encoding": "text", "data": "[]"},
        "body_kept": true,
        "outcome": {"status": 503},
        "attempts": 4,
        "waited_ms": 0,
        "first_attempt_at_ms": 0,
        "last_attempt_at_ms": 0
    }))
    .unwrap()
}

/// Two shards write letters to the one stream; each reads and removes only its own, without
/// the mark, so no letter is replayed by two processes, and none is left without an owner.
#[tokio::test]
async fn each_shard_reads_and_removes_only_its_own_letters() {
    let redis = RedisServer::start();
    let connection = tower_outbound::redis::connect(&redis.url()).unwrap();
    let stream = RedisStreamSink::new(connection, DEAD_LETTER_STREAM, 100);
    let shard = |index| ShardLetters::new(stream.clone(), Shard { index, count: 2 });
    let (zero, one) = (shard(0), shard(1));
    for id in ["a", "b"] {
        zero.write(letter(id)).await.unwrap();
    }
    one.write(letter("c")).await.unwrap();
    // The stream holds all three, each marked with its shard.
    let all = stream.read_all().await.unwrap();
    assert_eq!(all.len(), 3);
    let marks: Vec<_> = all
        .iter()
        .map(|l| {
            l.headers
                .iter()
                .find(|h| h.name == SHARD_HEADER)
                .and_then(|h| h.value.clone())
        })
        .collect();
    assert_eq!(
        marks,
        [Some("0/2".into()), Some("0/2".into()), Some("1/2".into())]
    );

    let own = zero.read_all().await.unwrap();
    let ids: Vec<_> = own.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert!(
        own.iter()
            .all(|l| l.headers.iter().all(|h| h.name != SHARD_HEADER)),
        "the mark would be sent to Lehnz"
    );
    assert_eq!(one.count().await.unwrap(), 1);
    // Shard 0 removes its letters; shard 1's stays.
    assert_eq!(zero.remove(&["a".into(), "b".into()]).await.unwrap(), 2);
    assert_eq!(zero.count().await.unwrap(), 0);
    let left: Vec<_> = one.read_all().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, "c");
    // A letter read (without its mark) and written again, as a replay that fails again
    // does, keeps its shard.
    one.write(left[0].clone()).await.unwrap();
    assert_eq!(one.count().await.unwrap(), 2);
    assert_eq!(zero.count().await.unwrap(), 0);
}

#[test]
fn the_shard_flag_is_checked() {
    let parse = |args: &[&str]| lehnz_sync::Args::parse(args.iter().map(|a| (*a).to_owned()));
    let url = ["--base-url", "http://127.0.0.1:8787"];
    let with_url = |shard: &str| parse(&[url[0], url[1], "--shard", shard]);
    assert_eq!(with_url("2/4").unwrap().shard, Shard { index: 2, count: 4 });
    assert_eq!(parse(&[]).unwrap().shard, Shard::WHOLE);
    assert_eq!(parse(&["--shard", "0/1"]).unwrap().shard, Shard::WHOLE);
    for (shard, says) in [
        ("4/4", "I must be below N (0 to 3 for 4 shards)"),
        ("0/0", "must be at least 1"),
        ("3", "expected I/N"),
        ("-1/4", "I: invalid digit"),
        ("1/x", "N: invalid digit"),
    ] {
        let err = with_url(shard).unwrap_err();
        assert!(err.contains(says), "--shard {shard}: {err}");
    }
    let err = parse(&["--shard", "1/4"]).unwrap_err();
    assert!(err.contains("--base-url"), "{err}");
    // A shard's offsets, and how many of a source's events are its.
    let shard = Shard { index: 1, count: 4 };
    assert_eq!(
        (0..3).map(|k| shard.offset(k)).collect::<Vec<_>>(),
        [1, 5, 9]
    );
    assert_eq!(shard.len_of(9), 2);
    assert_eq!(shard.len_of(10), 3);
    assert_eq!(shard.len_of(1), 0);
    let sizes: usize = (0..4)
        .map(|index| Shard { index, count: 4 }.len_of(1_000_003))
        .sum();
    assert_eq!(sizes, 1_000_003);
}
