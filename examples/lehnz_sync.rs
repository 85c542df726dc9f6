//! The main job: stream a large batch of events into Lehnz through the client, in bounded
//! memory, and resume where it stopped after a crash.
//!
//! By default it starts the Lehnz simulator on 127.0.0.1 with a chaos profile (429s, 5xx,
//! dropped connections, "processed then dropped") and a rate-limit window scaled down so the
//! run takes well under a minute, then streams generated events with a progress bar and prints
//! a report, including the simulator's own count of stored events and duplicate ids.
//!
//! ```text
//! cargo run --release --features lehnz,sim --example lehnz_sync [-- --events 100000 --seed 7]
//!
//! # Events from a JSON Lines file, resumable: kill it, run the same line again.
//! cargo run --release --features lehnz,sim --example lehnz_sync -- --input events.jsonl --checkpoint sync.checkpoint
//!
//! # Against a simulator (or Lehnz) running elsewhere:
//! LEHNZ_API_KEY=... cargo run --release --features lehnz,sim --example lehnz_sync -- --base-url http://127.0.0.1:8080 \
//!     --window 100/5 --input events.jsonl --checkpoint sync.checkpoint
//! ```
//!
//! Flags: `--events N` (generated source, default 100,000), `--input FILE` (one event per line),
//! `--checkpoint FILE`, `--dead-letters FILE` (default: beside the checkpoint,
//! `FILE.dead-letters.jsonl`, so a resumed run replays what the killed one left; without a
//! checkpoint, a file of the run's own in the temporary directory), `--base-url URL` (key in `LEHNZ_API_KEY`),
//! `--window LIMIT/SECONDS` (the organization's rate-limit window; default 100/5 for the
//! in-process simulator, 1000/900 otherwise), `--concurrency N` (default 32), `--batch N`
//! (default 500), `--seed N`, `--patience SECS` (how long a batch waits for an open circuit
//! before it goes to the dead letters; default 60), `--concurrency-limit adaptive|off` (an
//! adaptive limit on batches in flight, backing off on Lehnz's 429s, 503s and slow answers;
//! default adaptive), `--quiet` (only the last line),
//! `--config FILE` (the stack's settings from a TOML file: one table of
//! [`config::Settings`](tower_outbound::config::Settings) keys, e.g. `attempts = 6`,
//! `attempt_timeout = "10s"`, `breaker = { failure_rate = 0.5, minimum_calls = 40 }`, laid over
//! the flags' stack; unknown keys and out-of-range values are refused naming the key),
//! `--metrics ADDR` (feature `metrics`: serve the five
//! signals on a Prometheus endpoint while the job runs, and print them in the report:
//! `cargo run --release --features lehnz,sim,metrics --example lehnz_sync -- --metrics 127.0.0.1:9464`),
//! `--shard I/N` (this process sends the events whose offset modulo N is I; default `0/1`, all of
//! them; N over 1 needs `--base-url`), `--redis URL[,URL…]` (feature `redis`: the rate-limit
//! window and the dead letters shared through Redis; several URLs are the nodes of a Redis
//! Cluster, feature `redis-cluster`).
//!
//! # Scaled out
//!
//! N processes over one input, one `--shard I/N` each, against one Lehnz organization:
//!
//! ```text
//! LEHNZ_API_KEY=... lehnz_sync --base-url URL --window 100/5 --events 1000000 \
//!     --shard 2/4 --checkpoint shard-2.checkpoint --redis redis://10.0.0.5:6379/
//! ```
//!
//! - **The source.** Every process reads the same source (the same `--input` file, or the same
//!   `--events` generated from their offsets) and sends the events whose offset modulo N is I.
//!   An event's id is derived from its offset in the whole source, so a sharded run stores the
//!   same ids as a run of one process, and a resumed shard sends the same ids again.
//! - **The checkpoint** is the shard's own: it counts the shard's events (the I-th, (I + N)-th,
//!   … of the source), so each process needs its own `--checkpoint`, and a shard resumes with
//!   the same `--shard I/N`.
//! - **The window.** With `--redis`, the throttle's bucket is in Redis under the prefix `lehnz`
//!   (`RedisStore`, leasing up to 8 slots per round trip): every process takes its requests
//!   from the organization's one window, and a `RateLimit-Remaining: 0` seen by one holds them
//!   all. Without it, each process's throttle allows the whole window, N times what Lehnz
//!   allows together, and only Lehnz's counts and 429s hold them back. Use one Redis (or one
//!   database of it) per organization.
//! - **The dead letters** go to one Redis Stream, `lehnz:dead-letters` (at most 10,000 letters;
//!   past that a letter is refused, not stored, and the run fails), each marked with the shard
//!   that wrote it. At the end, a process replays its own shard's letters only; see
//!   `ShardLetters` for why. The report's exit status is the shard's.
//!
//! The checkpoint holds the offset below which every event is settled (accepted, in the
//! dead-letter file, or rejected for good); it is replaced atomically (temporary file, fsync,
//! rename) after each settled batch. On start the job skips that many events of its source
//! and sends the rest. Event ids are derived from each event and its offset, so the batches
//! that were in flight at a crash are sent again with the same ids and can be removed
//! downstream. Batches that still fail after the retries go to the dead-letter file and are
//! replayed at the end of each run.
//!
//! When Lehnz is down, the breaker opens after the first failures; batches then wait for it
//! (up to `--patience`) instead of failing, the source is not read meanwhile, and once a probe
//! finds Lehnz back the held batches go out, paced. An outage shorter than the patience
//! dead-letters nothing.
//!
//! The report ends with one line saying whether everything was delivered, and the exit status
//! says the same to cron or CI:
//!
//! | status | meaning |
//! |---|---|
//! | 0 | every event of this run was delivered (streamed or by the replay); the dead-letter file is empty |
//! | 75 | some events are in the dead-letter file (an outage longer than the patience); nothing is lost: run the job again, later, to replay them (`EX_TEMPFAIL`) |
//! | 1 | an error: the job stopped (bad flag or input, checkpoint, wrong key), or events were rejected, unaccounted for or lost |

#[cfg(feature = "metrics")]
#[path = "support/prometheus.rs"]
mod prometheus;

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tower_outbound::config::Settings;
use tower_outbound::dead_letter::StoredBody;
use tower_outbound::lehnz::sim::{Chaos, Simulator};
use tower_outbound::lehnz::{Client, Event, IngestOptions, CLIENT_EVENT_ID, EVENT_ID_NAMESPACE};
use tower_outbound::{ConcurrencyLayer, JsonLinesSink, Sink};
#[cfg(feature = "redis")]
use {
    tower_outbound::dead_letter::{BoxFuture, DeadLetter, SinkError, StoredHeader},
    tower_outbound::redis::{RedisConnection, RedisStore, RedisStreamSink},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The job's settings, from its command line.
#[derive(Clone, Debug)]
pub(crate) struct Args {
    pub(crate) events: usize,
    pub(crate) seed: u64,
    pub(crate) base_url: Option<String>,
    pub(crate) input: Option<PathBuf>,
    pub(crate) checkpoint: Option<PathBuf>,
    pub(crate) dead_letters: Option<PathBuf>,
    pub(crate) window: Option<(u32, Duration)>,
    pub(crate) concurrency: usize,
    pub(crate) batch: usize,
    pub(crate) quiet: bool,
    /// How long a batch waits for an open circuit before it goes to the dead letters.
    pub(crate) patience: Duration,
    /// `--concurrency-limit`: whether batches in flight are under an adaptive limit.
    pub(crate) adaptive: bool,
    /// The API key, when not from `LEHNZ_API_KEY` (tests set it here; a command line would
    /// show it to `ps`).
    pub(crate) key: Option<String>,
    /// Serve the five signals on a Prometheus endpoint at this address while the job runs
    /// (feature `metrics`).
    pub(crate) metrics: Option<std::net::SocketAddr>,
    /// `--config FILE`: the stack's settings, laid over what the flags chose.
    pub(crate) config: Option<PathBuf>,
    /// `--shard I/N`: the part of the source this process sends.
    pub(crate) shard: Shard,
    /// `--redis URL[,URL…]`: the Redis (one URL) or the Redis Cluster's nodes (several) that
    /// hold the shared window and dead letters.
    #[cfg(feature = "redis")]
    pub(crate) redis: Vec<String>,
}

/// `--shard I/N`: the process sends the events whose offset in the source, modulo `count`, is
/// `index`. Its checkpoint counts those events only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shard {
    pub(crate) index: usize,
    pub(crate) count: usize,
}

impl Shard {
    /// The whole source: `0/1`.
    pub(crate) const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Reads `I/N`: 0 ≤ I < N.
    pub(crate) fn parse(text: &str) -> Result<Shard, String> {
        let wrong = |why: &str| {
            format!(
                "--shard {text:?}: {why}; expected I/N, this process's shard and the number of \
                 shards, for example 0/4"
            )
        };
        let (index, count) = text.split_once('/').ok_or_else(|| wrong("no '/'"))?;
        let index: usize = index
            .trim()
            .parse()
            .map_err(|e| wrong(&format!("I: {e}")))?;
        let count: usize = count
            .trim()
            .parse()
            .map_err(|e| wrong(&format!("N: {e}")))?;
        if count == 0 {
            return Err(format!(
                "--shard {text}: N is the number of shards and must be at least 1"
            ));
        }
        if index >= count {
            return Err(format!(
                "--shard {text}: I must be below N (0 to {} for {count} shards)",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }

    /// The offset in the source of the shard's `k`-th event.
    pub(crate) fn offset(self, k: usize) -> usize {
        k.saturating_mul(self.count).saturating_add(self.index)
    }

    /// How many of a source's first `total` events are the shard's.
    pub(crate) fn len_of(self, total: usize) -> usize {
        total.saturating_sub(self.index).div_ceil(self.count)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Args {
    pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut parsed = Args {
            events: 100_000,
            seed: 7,
            base_url: None,
            input: None,
            checkpoint: None,
            dead_letters: None,
            window: None,
            // The job keeps batches outstanding in source order, so a batch waiting out a 429's
            // reset (1 s and more) holds the ones behind it: the window must cover the
            // rate times that wait (20 requests/s × 1.25 s at the scaled window), or the
            // window's requests are not used.
            concurrency: 32,
            batch: 500,
            quiet: false,
            patience: Duration::from_secs(60),
            adaptive: true,
            key: None,
            metrics: None,
            config: None,
            shard: Shard::WHOLE,
            #[cfg(feature = "redis")]
            redis: Vec::new(),
        };
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or(format!("{flag} needs a value"));
            let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
            match flag.as_str() {
                "--events" => parsed.events = number(value()?)? as usize,
                "--seed" => parsed.seed = number(value()?)?,
                "--concurrency" => parsed.concurrency = (number(value()?)? as usize).max(1),
                "--batch" => parsed.batch = (number(value()?)? as usize).max(1),
                "--base-url" => parsed.base_url = Some(value()?),
                "--input" => parsed.input = Some(value()?.into()),
                "--checkpoint" => parsed.checkpoint = Some(value()?.into()),
                "--dead-letters" => parsed.dead_letters = Some(value()?.into()),
                "--window" => {
                    let v = value()?;
                    let (limit, secs) = v
                        .split_once('/')
                        .ok_or(format!("--window: {v:?} is not LIMIT/SECONDS"))?;
                    let limit = limit.parse().map_err(|e| format!("--window: {e}"))?;
                    let secs: u64 = secs.parse().map_err(|e| format!("--window: {e}"))?;
                    if limit == 0 || secs == 0 {
                        return Err("--window: limit and seconds must be over 0".to_owned());
                    }
                    parsed.window = Some((limit, Duration::from_secs(secs)));
                }
                "--quiet" => parsed.quiet = true,
                "--concurrency-limit" => {
                    parsed.adaptive = match value()?.as_str() {
                        "adaptive" => true,
                        "off" => false,
                        other => {
                            return Err(format!(
                                "--concurrency-limit: {other:?} is neither adaptive nor off"
                            ))
                        }
                    }
                }
                "--patience" => parsed.patience = Duration::from_secs(number(value()?)?),
                "--config" => parsed.config = Some(value()?.into()),
                "--metrics" => {
                    let v = value()?;
                    parsed.metrics = Some(v.parse().map_err(|e| format!("--metrics {v:?}: {e}"))?);
                }
                "--shard" => parsed.shard = Shard::parse(&value()?)?,
                #[cfg(feature = "redis")]
                "--redis" => {
                    parsed.redis = value()?
                        .split(',')
                        .map(str::trim)
                        .filter(|url| !url.is_empty())
                        .map(str::to_owned)
                        .collect();
                    if parsed.redis.is_empty() {
                        return Err(
                            "--redis needs a URL (or the cluster's nodes, comma-separated)"
                                .to_owned(),
                        );
                    }
                }
                #[cfg(not(feature = "redis"))]
                "--redis" => {
                    return Err("--redis needs the `redis` feature: cargo run --release \
                                --features lehnz,sim,redis --example lehnz_sync -- --redis URL"
                        .to_owned())
                }
                other => return Err(format!("unknown flag {other}")),
            }
        }
        if parsed.shard.count > 1 && parsed.base_url.is_none() {
            return Err(format!(
                "--shard {}: the shards must send to one server; give it with --base-url \
                 (without it, each process would start a simulator of its own)",
                parsed.shard
            ));
        }
        Ok(parsed)
    }
}

/// The stack's settings from a TOML file (`--config`): one table of `config::Settings` keys.
pub(crate) fn read_settings(path: &Path) -> Result<Settings, BoxError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()).into())
}

/// The generated source: the same event at the same offset on every run, made as needed.
pub(crate) fn generated(i: usize) -> Event {
    let kinds = ["view", "view", "view", "click", "add_to_cart", "purchase"];
    Event::new(
        format!("user-{}", i.wrapping_mul(7919) % 5_000),
        format!("item-{}", i.wrapping_mul(104_729) % 20_000),
        kinds[i % kinds.len()],
    )
    .at(format!("2026-11-24T12:{:02}:{:02}Z", (i / 60) % 60, i % 60))
}

/// The event with the id derived from its offset in the whole source, unless it has one: a
/// shard's events carry the ids one process sending the whole source would give them (the
/// client would derive them from the shard's own count instead).
pub(crate) fn with_id(mut event: Event, offset: usize) -> Event {
    if event.client_event_id().is_none() {
        let id = event.derived_id(&EVENT_ID_NAMESPACE, offset);
        event.context.insert(
            CLIENT_EVENT_ID.to_owned(),
            id.hyphenated().to_string().into(),
        );
    }
    event
}

/// Where dead letters go: `--dead-letters`, or beside the checkpoint when there is one, so a
/// resumed run replays the letters of the run that was killed; otherwise a file of this run's
/// own.
pub(crate) fn dead_letter_path(args: &Args) -> PathBuf {
    match (&args.dead_letters, &args.checkpoint) {
        (Some(path), _) => path.clone(),
        (None, Some(checkpoint)) => {
            let mut path = checkpoint.as_os_str().to_owned();
            path.push(".dead-letters.jsonl");
            PathBuf::from(path)
        }
        (None, None) => {
            std::env::temp_dir().join(format!("lehnz-sync-{}.jsonl", std::process::id()))
        }
    }
}

/// The prefix of the throttle's keys in Redis (`--redis`): one window for every process.
#[cfg(feature = "redis")]
pub(crate) const REDIS_PREFIX: &str = "lehnz";
/// The stream every process's dead letters go to with `--redis`.
#[cfg(feature = "redis")]
pub(crate) const DEAD_LETTER_STREAM: &str = "lehnz:dead-letters";
/// The most letters the stream holds (a letter is a batch, up to 1 MB): past it a letter is
/// refused and reported as not stored, never evicted.
#[cfg(feature = "redis")]
const DEAD_LETTER_CAP: usize = 10_000;
/// The stored header that says which shard wrote a letter on the shared stream.
#[cfg(feature = "redis")]
pub(crate) const SHARD_HEADER: &str = "x-lehnz-sync-shard";

/// The window and the dead letters every process shares through Redis (`--redis`), on one
/// connection.
#[cfg(feature = "redis")]
#[derive(Clone, Debug)]
pub(crate) struct Shared {
    pub(crate) store: RedisStore,
    pub(crate) letters: ShardLetters,
}

#[cfg(feature = "redis")]
impl Shared {
    /// Connects to the Redis of `urls` (one URL: a server; several: a cluster's nodes) and
    /// checks, before the first request, that the store may run its scripts on its own keys
    /// and that the stream can be added to, read and removed from.
    pub(crate) async fn connect(urls: &[String], shard: Shard) -> Result<Shared, BoxError> {
        let connection = redis_connection(urls).await?;
        // Lehnz's window is the organization's: one bucket for every shard. Leases spare a
        // round trip per batch, and stay small: a server's word one process adopts reaches the
        // others at their next lease, so at most twice 8 requests each go past it.
        let store = RedisStore::new(connection.clone())
            .prefix(REDIS_PREFIX)
            .lease(8);
        // Checked on the prefix's keys, which an ACL may limit (`RedisStore::connect` checks
        // the default prefix's).
        store.verify().await.map_err(|e| format!("--redis: {e}"))?;
        let stream = RedisStreamSink::new(connection, DEAD_LETTER_STREAM, DEAD_LETTER_CAP);
        stream.verify().await.map_err(|e| format!("--redis: {e}"))?;
        Ok(Shared {
            store,
            letters: ShardLetters::new(stream, shard),
        })
    }
}

/// One server's connection, or with several URLs a cluster's (feature `redis-cluster`).
#[cfg(feature = "redis")]
async fn redis_connection(urls: &[String]) -> Result<RedisConnection, BoxError> {
    match urls {
        [url] => Ok(tower_outbound::redis::connect(url)
            .map_err(|e| format!("--redis: {e}"))?
            .into()),
        #[cfg(feature = "redis-cluster")]
        nodes => {
            let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
            Ok(tower_outbound::redis::connect_cluster(&nodes)
                .await
                .map_err(|e| format!("--redis: {e}"))?)
        }
        #[cfg(not(feature = "redis-cluster"))]
        _ => Err(
            "--redis: several URLs are the nodes of a Redis Cluster, which needs the \
                  `redis-cluster` feature (--features lehnz,sim,redis-cluster)"
                .into(),
        ),
    }
}

/// One shard's dead letters on the stream every process shares (`--redis`).
///
/// A letter is written with the shard that wrote it among its stored headers
/// (`x-lehnz-sync-shard: I/N`); a shard reads, replays and removes its own letters only, and
/// takes the mark off what it reads, so a replay never sends it to Lehnz.
///
/// Why its own letters and not the whole stream: each letter must be sent again by exactly one
/// process. Shards finish within moments of each other; two that replayed the whole stream
/// would both read a letter before either removed it, and both send it: its events stored
/// twice, and counted as delivered by both, so the summed reports would overcount. With one
/// owner per letter nothing is sent twice, and nothing is left out: a shard's letters are all
/// written while it streams, before its own replay reads them; a letter leaves the stream only
/// once a replay got a 2xx for it (one that fails again is written anew before the old entry
/// goes); and the letters of a shard that was killed stay on the stream until the same
/// `--shard I/N` runs again, resumes from its checkpoint and replays them, as the file beside
/// the checkpoint does for a single process. Letters of a run sharded otherwise (another N)
/// are left to that run.
#[cfg(feature = "redis")]
#[derive(Clone, Debug)]
pub(crate) struct ShardLetters {
    stream: RedisStreamSink,
    shard: String,
}

#[cfg(feature = "redis")]
impl ShardLetters {
    pub(crate) fn new(stream: RedisStreamSink, shard: Shard) -> Self {
        ShardLetters {
            stream,
            shard: shard.to_string(),
        }
    }

    fn is_own(&self, letter: &DeadLetter) -> bool {
        letter
            .headers
            .iter()
            .any(|h| h.name == SHARD_HEADER && h.value.as_deref() == Some(self.shard.as_str()))
    }

    /// Letters on the stream, every shard's.
    pub(crate) async fn on_stream(&self) -> Result<usize, SinkError> {
        self.stream.count().await
    }
}

#[cfg(feature = "redis")]
impl Sink for ShardLetters {
    fn write(&self, mut letter: DeadLetter) -> BoxFuture<'_, Result<(), SinkError>> {
        letter.headers.retain(|h| h.name != SHARD_HEADER);
        letter.headers.push(StoredHeader {
            name: SHARD_HEADER.to_owned(),
            value: Some(self.shard.clone()),
            value_base64: None,
        });
        self.stream.write(letter)
    }

    fn read_all(&self) -> BoxFuture<'_, Result<Vec<DeadLetter>, SinkError>> {
        Box::pin(async move {
            let mut own: Vec<DeadLetter> = self
                .stream
                .read_all()
                .await?
                .into_iter()
                .filter(|letter| self.is_own(letter))
                .collect();
            for letter in &mut own {
                letter.headers.retain(|h| h.name != SHARD_HEADER);
            }
            Ok(own)
        })
    }

    fn remove<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<usize, SinkError>> {
        self.stream.remove(ids)
    }
}

/// With `--metrics`, a metered sink of the same name as the stack's, so what the replay removes
/// is counted and the depth and age gauges fall with it.
#[cfg(feature = "metrics")]
fn metered<S: Sink>(sink: S) -> impl Sink {
    tower_outbound::metrics::MeteredSink::new(sink)
}

#[cfg(not(feature = "metrics"))]
fn metered<S: Sink>(sink: S) -> impl Sink {
    sink
}

/// Reads the checkpoint: 0 when the file does not exist.
pub(crate) fn read_checkpoint(path: &Path) -> Result<usize, BoxError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|e| format!("checkpoint {} is not an offset: {e}", path.display()).into()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(err) => Err(format!("reading checkpoint {}: {err}", path.display()).into()),
    }
}

/// Replaces the checkpoint atomically: a temporary file beside it, fsynced, renamed over it,
/// and the directory fsynced, so a crash leaves the old offset or the new one, never a mix.
pub(crate) fn write_checkpoint(path: &Path, offset: usize) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = File::create(&tmp)?;
    writeln!(file, "{offset}")?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// The job's peak resident memory (`VmHWM`), in bytes, where `/proc` has it.
fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// Lines of a file, counted without keeping them.
fn count_lines(path: &Path) -> Result<usize, BoxError> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut count = 0;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(count);
        }
        count += buf.iter().filter(|&&b| b == b'\n').count();
        let len = buf.len();
        reader.consume(len);
    }
}

/// The exit status when every event was delivered.
pub(crate) const EXIT_DELIVERED: u8 = 0;
/// The exit status when the job failed: an error stopped it, or events were rejected or lost.
pub(crate) const EXIT_ERROR: u8 = 1;
/// The exit status when some events are in the dead-letter file, nothing lost: run the job
/// again (later) to replay them. 75 is `EX_TEMPFAIL` of sysexits.h, "try again later".
pub(crate) const EXIT_DEAD_LETTERS: u8 = 75;

/// How a run ended, as its last line and its exit status say.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    /// Events this run delivered: accepted when streamed, or by the replay of dead letters.
    pub(crate) delivered: usize,
    /// Events left in the dead-letter file after the replay.
    pub(crate) dead_lettered: usize,
    /// Events this run's streaming wrote to the dead-letter file (before the replay).
    pub(crate) dead_lettered_while_streaming: usize,
    /// Events Lehnz rejected for good, or whose fate is unknown (a 2xx that counted fewer),
    /// or whose dead letter could not be stored, or (in-process simulator) lost.
    pub(crate) failed: usize,
    /// The whole run: streaming, the replay and the checks.
    pub(crate) wall_time: Duration,
    /// Where the dead letters are: the file, or the shard's letters on the shared stream.
    pub(crate) dead_letters_in: String,
}

impl Outcome {
    /// 0 all delivered, 75 some events in dead letters (run again), 1 failed.
    pub(crate) fn exit_status(&self) -> u8 {
        if self.failed > 0 {
            EXIT_ERROR
        } else if self.dead_lettered > 0 {
            EXIT_DEAD_LETTERS
        } else {
            EXIT_DELIVERED
        }
    }

    /// The report's last line.
    pub(crate) fn last_line(&self) -> String {
        match self.exit_status() {
            EXIT_DELIVERED => format!(
                "all delivered: {} events this run ({} of this run's went through the dead letters), none left in dead letters (exit {EXIT_DELIVERED})",
                self.delivered, self.dead_lettered_while_streaming
            ),
            EXIT_DEAD_LETTERS => format!(
                "not all delivered: {} events in {}, nothing lost; run again to replay them (exit {EXIT_DEAD_LETTERS})",
                self.dead_lettered,
                self.dead_letters_in
            ),
            _ => format!(
                "failed: {} events rejected, unaccounted for or lost, {} in dead letters (exit {EXIT_ERROR})",
                self.failed, self.dead_lettered
            ),
        }
    }
}

/// The events a dead letter holds (a JSON array of events), when it holds events.
fn events_in(letter: &tower_outbound::DeadLetter) -> Vec<Event> {
    match &letter.body {
        Some(StoredBody::Text(body)) => serde_json::from_str(body).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Runs the job to the end of its source, then replays the dead letters; the outcome says
/// whether everything was delivered.
pub(crate) async fn run(args: Args) -> Result<Outcome, BoxError> {
    let started = Instant::now();
    if let Some(addr) = args.metrics {
        serve_metrics(addr).await?;
    }
    let (sim, key, base_url) = match &args.base_url {
        Some(url) => {
            let key = match &args.key {
                Some(key) => key.clone(),
                None => std::env::var("LEHNZ_API_KEY")
                    .map_err(|_| "set LEHNZ_API_KEY to talk to a running server")?,
            };
            (None, key, url.clone())
        }
        None => {
            let sim = Simulator::builder()
                .org("acme")
                // Lehnz allows 1,000 requests per 15 minutes; scaled down here so the run
                // meets the window without taking 15 minutes.
                .window(100, Duration::from_secs(5))
                .chaos(Chaos::flaky())
                .seed(args.seed)
                .start()
                .await?;
            let key = sim.keys("acme").ok_or("simulator has no keys")?.secret;
            let url = sim.base_url();
            (Some(sim), key, url)
        }
    };
    let window = args.window.unwrap_or(if sim.is_some() {
        (100, Duration::from_secs(5))
    } else {
        (1000, Duration::from_secs(15 * 60))
    });
    let dead_letter_path = dead_letter_path(&args);
    let settings = match &args.config {
        Some(path) => Some(read_settings(path)?),
        None => None,
    };
    #[cfg(feature = "redis")]
    let shared = match args.redis.as_slice() {
        [] => None,
        urls => Some(Shared::connect(urls, args.shard).await?),
    };
    #[cfg(feature = "redis")]
    let dead_letters_in = match &shared {
        Some(_) => format!(
            "the dead-letter stream {DEAD_LETTER_STREAM} (shard {}'s letters)",
            args.shard
        ),
        None => format!("the dead-letter file {}", dead_letter_path.display()),
    };
    #[cfg(not(feature = "redis"))]
    let dead_letters_in = format!("the dead-letter file {}", dead_letter_path.display());
    #[cfg(feature = "redis")]
    let shared_window = shared.is_some();
    #[cfg(not(feature = "redis"))]
    let shared_window = false;
    let client = Client::builder(&key)
        .base_url(&base_url)
        .concurrency(args.concurrency)
        .event_batch(args.batch, tower_outbound::lehnz::MAX_BODY_BYTES)
        .stack(|s| {
            let s = s.retry_seed(args.seed);
            // With `--redis`, the organization's window and the dead letters are every
            // process's; otherwise this process's own.
            #[cfg(feature = "redis")]
            let s = match &shared {
                Some(shared) => s
                    .throttle_store(shared.store.clone())
                    .dead_letter_sink(shared.letters.clone()),
                None => s.dead_letter_file(&dead_letter_path),
            };
            #[cfg(not(feature = "redis"))]
            let s = s.dead_letter_file(&dead_letter_path);
            let s = s
                .throttle(Some(window))
                // Nobody waits on this job: a batch that meets an open circuit waits for it
                // (the source pauses meanwhile) instead of going to the dead letters.
                .circuit_max_wait(args.patience)
                // A batch's latency says more about its size than about Lehnz's load: the
                // limit listens to Lehnz's 429s, 503s, named waits and failures only.
                .concurrency_limit(
                    args.adaptive
                        .then(|| ConcurrencyLayer::adaptive().latency_tolerance(None)),
                );
            match settings {
                Some(settings) => s.settings(settings),
                None => s,
            }
        })
        .build()?;

    let start = match &args.checkpoint {
        Some(path) => read_checkpoint(path)?,
        None => 0,
    };
    // The source, read lazily from its start offset; a bad line stops it, and is reported.
    // Offsets (the checkpoint's, the progress's) count this shard's events; ids come from
    // each event's offset in the whole source.
    let shard = args.shard;
    let bad_line: Arc<Mutex<Option<String>>> = Arc::default();
    let (total, source): (usize, Box<dyn Iterator<Item = Event> + Send>) = match &args.input {
        Some(path) => {
            let total = shard.len_of(count_lines(path)?);
            let bad = bad_line.clone();
            let lines = BufReader::new(File::open(path)?)
                .lines()
                .enumerate()
                .skip(shard.index)
                .step_by(shard.count)
                .skip(start);
            let events = lines.map_while(move |(number, line)| {
                let parsed = line
                    .map_err(|e| e.to_string())
                    .and_then(|l| serde_json::from_str::<Event>(&l).map_err(|e| e.to_string()));
                match parsed {
                    Ok(event) => Some(with_id(event, number)),
                    Err(err) => {
                        *bad.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(format!("line {}: {err}", number + 1));
                        None
                    }
                }
            });
            (total, Box::new(events))
        }
        None => {
            let total = shard.len_of(args.events);
            let events =
                (start..total).map(move |k| with_id(generated(shard.offset(k)), shard.offset(k)));
            (total, Box::new(events))
        }
    };

    if !args.quiet {
        println!(
            "ingesting {} events into {base_url}{}{}{}",
            total.saturating_sub(start),
            if shard.count > 1 {
                format!(
                    " (shard {shard}: offsets {} + {}k)",
                    shard.index, shard.count
                )
            } else {
                String::new()
            },
            if sim.is_some() {
                " (simulator, chaos on)"
            } else {
                ""
            },
            if start > 0 {
                format!(", resuming after offset {start}")
            } else {
                String::new()
            }
        );
    }
    let bar = ProgressBar::new(total as u64);
    if args.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} events  {per_sec}  eta {eta}  {elapsed} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(start as u64);
    bar.reset_eta();
    let mut checkpoint_error = None;
    let mut last_written = start;
    let options = IngestOptions::new().start_offset(start).on_progress(|p| {
        bar.set_position(p.settled as u64);
        bar.set_message(format!(
            "{} dead-lettered, {} not accepted",
            p.dead_lettered, p.rejected
        ));
        if let (Some(path), true) = (&args.checkpoint, p.settled > last_written) {
            match write_checkpoint(path, p.settled) {
                Ok(()) => last_written = p.settled,
                Err(err) => {
                    checkpoint_error.get_or_insert(err);
                }
            }
        }
    });
    let summary = client.ingest_iter(source, options).await?;
    bar.finish();
    let ingest_time = started.elapsed();
    if let Some(err) = checkpoint_error {
        return Err(format!("writing the checkpoint failed: {err}").into());
    }
    if let Some(line) = bad_line.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(format!(
            "stopped at a bad input {line}; every event before it is settled (checkpoint {})",
            summary.settled
        )
        .into());
    }

    // What still failed is in the dead letters (this run's and earlier runs'): send it once
    // more. With `--redis`, only this shard's letters (see `ShardLetters`).
    #[cfg(feature = "redis")]
    let sink: Box<dyn Sink> = match &shared {
        Some(shared) => Box::new(metered(shared.letters.clone())),
        None => Box::new(metered(JsonLinesSink::new(&dead_letter_path))),
    };
    #[cfg(not(feature = "redis"))]
    let sink: Box<dyn Sink> = Box::new(metered(JsonLinesSink::new(&dead_letter_path)));
    let dead_before: usize = sink
        .read_all()
        .await?
        .iter()
        .map(|l| events_in(l).len())
        .sum();
    let replay = client.replay_dead_letters(&*sink).await?;
    let still_dead = sink.read_all().await?;
    let dead_after: usize = still_dead.iter().map(|l| events_in(l).len()).sum();
    let replay_time = started.elapsed().saturating_sub(ingest_time);
    let delivered = summary.accepted + dead_before.saturating_sub(dead_after);
    let mut outcome = Outcome {
        delivered,
        dead_lettered: dead_after,
        dead_lettered_while_streaming: summary.dead_lettered,
        // Rejected records include those of dead-lettered batches (kept: not failed) and of
        // batches whose letter the sink could not store (failed).
        failed: (summary.rejected.len() + summary.rejected_unlisted)
            .saturating_sub(summary.dead_lettered)
            + summary.unaccounted,
        wall_time: started.elapsed(),
        dead_letters_in,
    };
    // The unused end of this process's last lease, back to the others.
    #[cfg(feature = "redis")]
    if let Some(shared) = &shared {
        shared.store.return_leases().await;
    }

    if args.quiet {
        if let Some(sim) = sim {
            sim.shutdown().await;
        }
        outcome.wall_time = started.elapsed();
        println!("{}", outcome.last_line());
        return Ok(outcome);
    }
    let sent = summary.settled.saturating_sub(start);
    let elapsed = started.elapsed();
    // Delivered events only, over the whole run that delivered them.
    let rate = delivered as f64 / elapsed.as_secs_f64().max(1e-9);
    let window_rate = f64::from(window.0) / window.1.as_secs_f64() * args.batch as f64;
    println!();
    println!("report");
    if shard.count > 1 {
        println!(
            "  events                 {total} of shard {shard} ({sent} this run, from the shard's offset {start})"
        );
    } else {
        println!("  events                 {total} ({sent} this run, from offset {start})");
    }
    println!("  accepted               {}", summary.accepted);
    println!(
        "  not accepted           {}",
        summary.rejected.len() + summary.rejected_unlisted
    );
    println!("  unaccounted by a 2xx   {}", summary.unaccounted);
    println!(
        "  dead-lettered          {} (to {}; {} not stored)",
        summary.dead_lettered, outcome.dead_letters_in, summary.dead_letter_failed
    );
    println!(
        "  replayed at the end    {} batches, {} delivered, {} still dead, {} refused (other hosts), {} skipped, {} not sent (circuit open)",
        replay.replayed,
        replay.succeeded,
        still_dead.len(),
        replay.refused,
        replay.skipped,
        replay.deferred
    );
    println!("  settled offset         {}", summary.settled);
    println!("  batches (requests)     {}", summary.requests);
    if let Some(stats) = client.stats() {
        let retry = stats.retry();
        println!("  retries                {}", retry.retries());
        println!("  server waits honored   {}", retry.server_waits());
        println!("  time waited (summed)   {:.1?}", retry.waited());
        println!(
            "  gate                   closed {} times, held {} requests",
            stats.gate().times_closed(),
            stats.gate().delayed()
        );
        if let Some(throttle) = stats.throttle() {
            println!(
                "  throttle               {} at once, {} paced ({:.1?} waited), {} views adopted, {} refusals doubted",
                throttle.immediate(),
                throttle.delayed(),
                throttle.waited(),
                throttle.adjustments(),
                throttle.doubted()
            );
        }
        if let Some(breaker) = stats.circuit_breaker() {
            println!(
                "  circuit breaker        opened {} times, {} batches held ({} s patience), {} refused; source paused {:.1?}",
                breaker.times_opened(),
                breaker.held(),
                args.patience.as_secs(),
                breaker.rejected(),
                summary.paused
            );
        }
    }
    #[cfg(feature = "redis")]
    if let Some(shared) = &shared {
        let redis = shared.store.stats();
        println!(
            "  redis                  {} processes at the last heartbeat; {} leases ({} requests from them), {} acquires one by one, {} decided by the fallback, {} errors",
            redis.workers_seen(),
            redis.leases(),
            redis.leased_decisions(),
            redis.redis_decisions(),
            redis.fallback_decisions(),
            redis.errors()
        );
        match shared.letters.on_stream().await {
            Ok(letters) => println!(
                "  dead-letter stream     {DEAD_LETTER_STREAM}: {} of this shard's letters left, {} letters in all",
                still_dead.len(),
                letters
            ),
            Err(err) => println!("  dead-letter stream     {DEAD_LETTER_STREAM}: {err}"),
        }
    }
    println!(
        "  wall time              {elapsed:.1?} (streaming {ingest_time:.1?}, replay {replay_time:.1?})"
    );
    println!(
        "  delivered              {delivered} events ({} streamed, {} by the replay)",
        summary.accepted,
        delivered - summary.accepted
    );
    println!(
        "  rate                   {rate:.0} events/s delivered over the whole run, of \
         {window_rate:.0} the window allows ({} per {}s at {} per batch): {:.0} %",
        window.0,
        window.1.as_secs(),
        args.batch,
        rate / window_rate * 100.0
    );
    if shard.count > 1 {
        if shared_window {
            println!(
                "                         (the shards share the window through Redis: a shard's part of it is about 1/{})",
                shard.count
            );
        } else {
            println!(
                "                         (without --redis each shard's throttle allows the whole window: {} of them overrun it)",
                shard.count
            );
        }
    }
    match peak_memory() {
        Some(bytes) => println!(
            "  peak memory            {:.1} MB{}",
            bytes as f64 / 1e6,
            if sim.is_some() {
                " (job and in-process simulator)"
            } else {
                " (job)"
            }
        ),
        None => println!("  peak memory            unknown (no /proc/self/status)"),
    }
    let mut kinds: Vec<String> = summary.errors.iter().map(|e| e.to_string()).collect();
    kinds.sort();
    kinds.dedup();
    for kind in kinds.iter().take(5) {
        println!("  batch error            {kind}");
    }
    if let (Some(sim), None) = (sim, &args.input) {
        let stats = sim.stats();
        let dead: HashSet<String> = still_dead
            .iter()
            .flat_map(events_in)
            .filter_map(|e| e.client_event_id().map(str::to_owned))
            .collect();
        // The ids are derived, so they can be computed again instead of kept.
        let lost = (start..total)
            .map(|k| shard.offset(k))
            .map(|i| generated(i).derived_id(&EVENT_ID_NAMESPACE, i).to_string())
            .filter(|id| !sim.has_event_id(id) && !dead.contains(id))
            .count();
        println!("simulator");
        println!("  events stored          {}", stats.events);
        println!("  distinct event ids     {}", stats.distinct_event_ids);
        println!("  duplicate ids          {}", stats.duplicate_event_ids);
        println!(
            "  429s sent              {} ({} injected by chaos, {} for a used-up window)",
            stats.rate_limited, stats.rate_limited_injected, stats.rate_limited_window
        );
        println!(
            "  windows                {} opened, {:.1?} idle between them, {} requests unused",
            stats.windows_opened,
            Duration::from_millis(stats.window_idle_ms),
            stats.window_unused
        );
        println!("  connections dropped    {}", stats.connections_dropped);
        println!("  responses by status    {:?}", stats.responses_by_status);
        println!(
            "  lost                   {lost} (events neither stored nor in the dead-letter file)"
        );
        // Where the time went: at the window's rate each request the server counts costs
        // `per` seconds; what the server counted beyond one request per batch, what it would
        // have admitted and did not get, and the gaps between its windows are the losses.
        let per = window.1.as_secs_f64() / f64::from(window.0);
        let ideal = summary.requests as f64 * per;
        let resent = stats.duplicate_events.div_ceil(args.batch.max(1));
        let unused = stats.window_unused as f64 * per;
        let idle = stats.window_idle_ms as f64 / 1e3;
        let resent_s = resent as f64 * per;
        let window_refused_s = stats.rate_limited_window as f64 * per;
        let other = ingest_time.as_secs_f64() - ideal - resent_s - unused - idle - window_refused_s;
        println!(
            "where the streaming's {:.1}s went ({:.1}s at the window's rate for {} batches)",
            ingest_time.as_secs_f64(),
            ideal,
            summary.requests
        );
        println!(
            "  resent, reply dropped  {resent_s:.1}s ({resent} batches stored twice: the server \
             processed them and closed the connection)"
        );
        println!(
            "  window left unused     {unused:.1}s ({} requests the windows would have admitted: \
             batches waiting out 429 resets ({} injected) and retry backoff ({} retries, {} \
             connections dropped) while the window had room)",
            stats.window_unused,
            stats.rate_limited_injected,
            client.stats().map_or(0, |s| s.retry().retries()),
            stats.connections_dropped
        );
        println!("  idle between windows   {idle:.1}s (waiting for resets the server rounds up to whole seconds)");
        println!(
            "  refused by the window  {window_refused_s:.1}s ({} requests over the window's count)",
            stats.rate_limited_window
        );
        println!("  other                  {other:+.1}s (first and last window, end of the run)");
        sim.shutdown().await;
        outcome.failed += lost;
    }
    #[cfg(feature = "metrics")]
    if args.metrics.is_some() {
        println!("{}", tower_outbound::metrics::Signals::snapshot());
    }
    outcome.wall_time = started.elapsed();
    println!("{}", outcome.last_line());
    Ok(outcome)
}

/// Serves the job's metrics (the five signals, per upstream) on a Prometheus endpoint.
#[cfg(feature = "metrics")]
async fn serve_metrics(addr: std::net::SocketAddr) -> Result<(), BoxError> {
    let (bound, _handle) = prometheus::serve_prometheus(addr).await?;
    eprintln!("metrics at http://{bound}/metrics");
    Ok(())
}

#[cfg(not(feature = "metrics"))]
async fn serve_metrics(_addr: std::net::SocketAddr) -> Result<(), BoxError> {
    Err("--metrics needs the `metrics` feature: \
         cargo run --release --features lehnz,sim,metrics --example lehnz_sync -- --metrics ADDR"
        .into())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let outcome = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => run(args).await,
        Err(usage) => Err(usage.into()),
    };
    match outcome {
        Ok(outcome) => std::process::ExitCode::from(outcome.exit_status()),
        Err(err) => {
            eprintln!("lehnz_sync: {err}");
            println!("failed: {err} (exit {EXIT_ERROR})");
            std::process::ExitCode::from(EXIT_ERROR)
        }
    }
}
