//! Token leasing, measured: 16 worker tasks in 4 processes offer 4,000 requests/s together
//! against a shared limit of 2,000/s kept in a 3-node Redis Cluster, once with one round trip
//! per acquire and once with `RedisStore::lease(64)`, side by side.
//!
//! ```text
//! cargo run --release --example redis_lease --features redis-cluster
//! REDIS_LEASE_SECS=5 cargo run --release --example redis_lease --features redis-cluster
//! ```
//!
//! The example starts everything it measures and stops it at the end: three `redis-server`s in
//! cluster mode on free loopback ports, each in a temporary directory, joined by
//! `redis-cli --cluster create` (both must be installed: `apt-get install redis-server`); a
//! hyper server on 127.0.0.1 that notes when each request arrives; and, for each mode, four
//! worker processes (this binary again, told its role by `REDIS_LEASE_ROLE`). Each worker has
//! its own cluster connection, its own `ThrottleLayer::new(2000, 1 s)` over the shared store,
//! and four tasks that each offer 250 requests a second on a fixed schedule whatever happened
//! to the earlier ones (open loop): demand is twice the limit, so about half the requests are
//! refused by the throttle (their slot would come later than `max_wait`).
//!
//! What is measured, per mode:
//!
//! - what the upstream received, and the most in any 10 s and any 1 s, against the limit;
//! - Redis round trips: `EVALSHA` and `EVAL` calls from `INFO commandstats`, summed over the
//!   three nodes after `CONFIG RESETSTAT` on each, beside the stores' own counters;
//! - acquire latency: the time from the throttle's call into the store to the store's decision
//!   (not the slot's wait), for every request, timed by a thin wrapper around the store;
//!   with leasing, decisions taken from a lease held in the process are shown apart;
//! - the slot wait: from the request's offer to the moment the throttle hands it to the
//!   upstream client.
//!
//! Settings (environment): `REDIS_LEASE_SECS` (default 20) how long each mode offers load;
//! `REDIS_LEASE_SLOTS` (default 64) the lease's bound; `REDIS_LEASE_HORIZON_MS` (default 100,
//! the store's default) its horizon; `REDIS_LEASE_BURST` (default 100) the throttle's burst;
//! `REDIS_LEASE_MAX_WAIT_MS` (default 1000) its `max_wait`.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_outbound::partition::PartitionKey;
use tower_outbound::redis::RedisStore;
use tower_outbound::throttle::{Acquire, BucketStore, Quota, Reservation, WindowReport};
use tower_outbound::{BoxError, ThrottleLayer};

/// The shared limit: requests a second, for the whole fleet.
const LIMIT: u32 = 2_000;
/// Worker processes, and tasks in each.
const PROCESSES: usize = 4;
const TASKS: usize = 4;
/// What each process offers a second (open loop): 4 × 1,000 = twice the limit.
const OFFERED_PER_PROCESS: u32 = 1_000;
/// Set to `worker` in the children; their settings come as JSON in `REDIS_LEASE_WORKER`.
const ROLE_ENV: &str = "REDIS_LEASE_ROLE";
const WORKER_ENV: &str = "REDIS_LEASE_WORKER";
/// A request sent later than `max_wait` after its offer by more than this counts as over-wait
/// (tokio's timer rounds each sleep up to the next millisecond).
const OVER_WAIT_SLACK: Duration = Duration::from_millis(10);

fn main() -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if std::env::var(ROLE_ENV).as_deref() == Ok("worker") {
        runtime.block_on(worker())
    } else {
        runtime.block_on(bench())
    }
}

// ---------------------------------------------------------------------------------------------
// Settings and what a worker reports.

/// What the benchmark was asked for.
#[derive(Clone, Copy, Debug)]
struct Settings {
    secs: f64,
    slots: u32,
    horizon: Duration,
    burst: u32,
    max_wait: Duration,
}

impl Settings {
    fn from_env() -> Result<Self, BoxError> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> Result<T, BoxError> {
            match std::env::var(name) {
                Ok(value) => value
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name}={value:?} is not a valid value").into()),
                Err(_) => Ok(default),
            }
        }
        let secs: f64 = var("REDIS_LEASE_SECS", 20.0)?;
        if !(secs.is_finite() && (0.5..=3_600.0).contains(&secs)) {
            return Err("REDIS_LEASE_SECS must be within 0.5 and 3600".into());
        }
        Ok(Settings {
            secs,
            slots: var("REDIS_LEASE_SLOTS", 64)?,
            horizon: Duration::from_millis(var("REDIS_LEASE_HORIZON_MS", 100)?),
            burst: var("REDIS_LEASE_BURST", 100)?,
            max_wait: Duration::from_millis(var("REDIS_LEASE_MAX_WAIT_MS", 1_000)?),
        })
    }
}

/// What one worker process is told.
#[derive(Debug, Serialize, Deserialize)]
struct WorkerSettings {
    index: usize,
    nodes: Vec<String>,
    upstream: SocketAddr,
    prefix: String,
    /// The lease's bound (0: no leasing) and horizon.
    lease: u32,
    horizon_ms: u64,
    burst: u32,
    max_wait_ms: u64,
    secs: f64,
}

/// What one worker process reports at the end.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerReport {
    index: usize,
    offered: u64,
    sent: u64,
    refused: u64,
    over_wait: u64,
    failed: u64,
    leases: u64,
    leased_decisions: u64,
    redis_decisions: u64,
    fallback_decisions: u64,
    store_errors: u64,
    workers_seen: u64,
    returned: u32,
    /// Acquire latency (ns) of decisions the store took at once, and of those that needed a
    /// round trip (or waited for a lease on its way).
    at_once_ns: Vec<u64>,
    round_trip_ns: Vec<u64>,
    /// From offer to the upstream client's call (µs), for every request sent.
    slot_wait_us: Vec<u64>,
    /// Requests handed to the upstream client in each second since the start.
    sent_per_second: Vec<u64>,
    /// The first unexpected error, if any.
    first_error: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The worker process.

/// Acquire latencies, as the throttle sees them.
#[derive(Debug, Default)]
struct Latencies {
    at_once: Vec<u64>,
    round_trip: Vec<u64>,
}

/// The Redis store, with the time from each acquire's call to its decision noted.
#[derive(Clone)]
struct TimedStore {
    store: RedisStore,
    latencies: Arc<Mutex<Latencies>>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl BucketStore for TimedStore {
    fn acquire(&self, key: Option<&PartitionKey>, quota: &Quota, max_wait: Duration) -> Acquire {
        let start = Instant::now();
        match self.store.acquire(key, quota, max_wait) {
            Acquire::Ready(decision) => {
                let took = nanos(start.elapsed());
                lock(&self.latencies).at_once.push(took);
                Acquire::Ready(decision)
            }
            Acquire::Pending(decision) => {
                let latencies = self.latencies.clone();
                Acquire::Pending(Box::pin(async move {
                    let decision = decision.await;
                    let took = nanos(start.elapsed());
                    lock(&latencies).round_trip.push(took);
                    decision
                }))
            }
        }
    }

    fn adopt(&self, key: Option<&PartitionKey>, quota: &Quota, remaining: u64, reset: Duration) {
        self.store.adopt(key, quota, remaining, reset);
    }

    fn release(&self, key: Option<&PartitionKey>, quota: &Quota, reservation: Reservation) {
        self.store.release(key, quota, reservation);
    }

    fn adopt_report(
        &self,
        key: Option<&PartitionKey>,
        quota: &Quota,
        report: WindowReport,
    ) -> bool {
        self.store.adopt_report(key, quota, report)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// When a request was offered: carried in its extensions to the upstream client.
#[derive(Clone, Copy, Debug)]
struct Offered(Instant);

#[derive(Debug, Default)]
struct Counts {
    /// When the worker started offering; set once, before the first offer.
    start: std::sync::OnceLock<Instant>,
    per_second: Mutex<Vec<u64>>,
    offered: AtomicU64,
    sent: AtomicU64,
    refused: AtomicU64,
    over_wait: AtomicU64,
    failed: AtomicU64,
}

async fn worker() -> Result<(), BoxError> {
    let settings: WorkerSettings = serde_json::from_str(&std::env::var(WORKER_ENV)?)?;
    let nodes: Vec<&str> = settings.nodes.iter().map(String::as_str).collect();
    let mut store = RedisStore::cluster(&nodes)
        .await?
        .prefix(settings.prefix.clone());
    if settings.lease > 0 {
        store = store
            .lease(settings.lease)
            .lease_horizon(Duration::from_millis(settings.horizon_ms));
    }
    let latencies = Arc::new(Mutex::new(Latencies::default()));
    let timed = TimedStore {
        store: store.clone(),
        latencies: latencies.clone(),
    };
    let max_wait = Duration::from_millis(settings.max_wait_ms);
    let slot_waits = Arc::new(Mutex::new(Vec::new()));
    let counts = Arc::new(Counts::default());
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();

    // The upstream client, noting how long each request waited since its offer.
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let upstream = {
        let (slot_waits, counts) = (slot_waits.clone(), counts.clone());
        tower::service_fn(move |request: Request<Empty<Bytes>>| {
            if let Some(Offered(at)) = request.extensions().get::<Offered>().copied() {
                let waited = at.elapsed();
                if waited > max_wait + OVER_WAIT_SLACK {
                    counts.over_wait.fetch_add(1, Ordering::Relaxed);
                }
                lock(&slot_waits).push(u64::try_from(waited.as_micros()).unwrap_or(u64::MAX));
            }
            if let Some(start) = counts.start.get() {
                let second = usize::try_from(start.elapsed().as_secs()).unwrap_or(usize::MAX);
                let mut per_second = lock(&counts.per_second);
                if second < 100_000 {
                    if per_second.len() <= second {
                        per_second.resize(second + 1, 0);
                    }
                    per_second[second] += 1;
                }
            }
            client.request(request)
        })
    };
    let service = ServiceBuilder::new()
        .layer(
            ThrottleLayer::new(LIMIT, Duration::from_secs(1))
                .burst(settings.burst)
                .max_wait(max_wait)
                .store(timed),
        )
        .service(upstream);

    // Connected: say so, and start when told (all four start together).
    println!("ready");
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    match stdin.next_line().await? {
        Some(line) if line.trim() == "go" => {}
        _ => return Err("the benchmark did not say go".into()),
    }

    let start = Instant::now();
    let _ = counts.start.set(start);
    let until = start + Duration::from_secs_f64(settings.secs);
    let period = Duration::from_secs(TASKS as u64) / OFFERED_PER_PROCESS;
    let uri: http::Uri = format!("http://{}/", settings.upstream).parse()?;
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (service, counts, first_error, uri) = (
                service.clone(),
                counts.clone(),
                first_error.clone(),
                uri.clone(),
            );
            // The four tasks' schedules are spread over the period.
            let first = start + period * u32::try_from(task).unwrap_or(0) / TASKS as u32;
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval_at(first.into(), period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut calls = tokio::task::JoinSet::new();
                loop {
                    ticks.tick().await;
                    if Instant::now() >= until {
                        break;
                    }
                    while calls.try_join_next().is_some() {}
                    counts.offered.fetch_add(1, Ordering::Relaxed);
                    let mut request = Request::get(uri.clone()).body(Empty::<Bytes>::new())?;
                    request.extensions_mut().insert(Offered(Instant::now()));
                    let (service, counts, first_error) =
                        (service.clone(), counts.clone(), first_error.clone());
                    calls.spawn(async move {
                        match service.oneshot(request).await {
                            Ok(response) => {
                                let _ = response.into_body().collect().await;
                                counts.sent.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(err) if err.is_throttled() => {
                                counts.refused.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(err) => {
                                counts.failed.fetch_add(1, Ordering::Relaxed);
                                lock(&first_error).get_or_insert_with(|| err.to_string());
                            }
                        }
                    });
                }
                while calls.join_next().await.is_some() {}
                Ok::<_, BoxError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let returned = store.return_leases().await;

    let stats = store.stats();
    let latencies = std::mem::take(&mut *lock(&latencies));
    let report = WorkerReport {
        index: settings.index,
        offered: counts.offered.load(Ordering::Relaxed),
        sent: counts.sent.load(Ordering::Relaxed),
        refused: counts.refused.load(Ordering::Relaxed),
        over_wait: counts.over_wait.load(Ordering::Relaxed),
        failed: counts.failed.load(Ordering::Relaxed),
        leases: stats.leases(),
        leased_decisions: stats.leased_decisions(),
        redis_decisions: stats.redis_decisions(),
        fallback_decisions: stats.fallback_decisions(),
        store_errors: stats.errors(),
        workers_seen: stats.workers_seen(),
        returned,
        at_once_ns: latencies.at_once,
        round_trip_ns: latencies.round_trip,
        slot_wait_us: std::mem::take(&mut *lock(&slot_waits)),
        sent_per_second: std::mem::take(&mut *lock(&counts.per_second)),
        first_error: lock(&first_error).take(),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The cluster.

/// Three primaries covering every slot, each in a temporary directory; stopped when dropped.
struct Cluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    fn start() -> Result<Self, BoxError> {
        let mut cluster = Cluster {
            nodes: Vec::new(),
            ports: Vec::new(),
            dir: tempfile::tempdir()?,
        };
        for node in 0..3 {
            let (port, bus) = (free_port()?, free_port()?);
            let node_dir = cluster.dir.path().join(format!("node-{node}"));
            std::fs::create_dir_all(&node_dir)?;
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                // The bus port is given: the default (port + 10,000) may not exist.
                .args(["--cluster-port", &bus.to_string()])
                .args(["--cluster-node-timeout", "1000"])
                .current_dir(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start redis-server ({e}); install it"))?;
            cluster.nodes.push(child);
            cluster.ports.push(port);
        }
        for node in 0..cluster.nodes.len() {
            cluster.wait_for(node, Duration::from_secs(10), |c| {
                redis::cmd("PING").query::<String>(c).is_ok()
            })?;
        }
        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run redis-cli ({e}); install it"))?;
        if !status.success() {
            return Err(format!("redis-cli --cluster create failed: {status}").into());
        }
        for node in 0..cluster.nodes.len() {
            cluster.wait_for(node, Duration::from_secs(20), |c| {
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(c)
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            })?;
        }
        Ok(cluster)
    }

    fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}/"))
            .collect()
    }

    fn connection(&self, node: usize) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.ports[node]))?
            .get_connection_with_timeout(Duration::from_secs(1))
    }

    fn wait_for(
        &self,
        node: usize,
        limit: Duration,
        ok: impl Fn(&mut redis::Connection) -> bool,
    ) -> Result<(), BoxError> {
        let deadline = Instant::now() + limit;
        loop {
            if self.connection(node).is_ok_and(|mut c| ok(&mut c)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("redis node {node} not ready within {limit:?}").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Zeroes every node's command counters.
    fn reset_stats(&self) -> Result<(), BoxError> {
        for node in 0..self.nodes.len() {
            redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query::<()>(&mut self.connection(node)?)?;
        }
        Ok(())
    }

    /// `EVALSHA` and `EVAL` calls on each node since the last reset.
    fn script_calls(&self) -> Result<Vec<u64>, BoxError> {
        (0..self.nodes.len())
            .map(|node| {
                let info: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query(&mut self.connection(node)?)?;
                Ok(info
                    .lines()
                    .filter_map(|line| {
                        let rest = line
                            .strip_prefix("cmdstat_evalsha:")
                            .or_else(|| line.strip_prefix("cmdstat_eval:"))?;
                        let calls = rest.split(',').next()?.strip_prefix("calls=")?;
                        calls.parse::<u64>().ok()
                    })
                    .sum())
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The upstream.

type Arrivals = Arc<Mutex<Vec<Instant>>>;

/// A loopback server that notes when each request arrives.
async fn upstream(arrivals: Arrivals) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let arrivals = arrivals.clone();
            let service =
                hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                    lock(&arrivals).push(Instant::now());
                    async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The most arrivals in any window of `span`.
fn most_in(sorted: &[Instant], span: Duration) -> usize {
    let mut most = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end].duration_since(sorted[start]) >= span {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

// ---------------------------------------------------------------------------------------------
// One mode: four worker processes, then the figures.

/// What one mode measured.
struct Outcome {
    name: String,
    reports: Vec<WorkerReport>,
    /// Arrivals at the upstream, sorted.
    arrivals: Vec<Instant>,
    /// Script calls per node.
    scripts: Vec<u64>,
}

impl Outcome {
    fn sum(&self, f: impl Fn(&WorkerReport) -> u64) -> u64 {
        self.reports.iter().map(f).sum()
    }

    fn latencies(&self, f: impl Fn(&WorkerReport) -> &[u64]) -> Vec<u64> {
        let mut all: Vec<u64> = self.reports.iter().flat_map(|r| f(r).to_vec()).collect();
        all.sort_unstable();
        all
    }
}

async fn run_mode(
    name: &str,
    lease: u32,
    settings: &Settings,
    cluster: &Cluster,
    addr: SocketAddr,
    arrivals: &Arrivals,
) -> Result<Outcome, BoxError> {
    lock(arrivals).clear();
    let prefix = format!("redis-lease-{}-{lease}", std::process::id());
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for index in 0..PROCESSES {
        let worker = WorkerSettings {
            index,
            nodes: cluster.urls(),
            upstream: addr,
            prefix: prefix.clone(),
            lease,
            horizon_ms: u64::try_from(settings.horizon.as_millis()).unwrap_or(u64::MAX),
            burst: settings.burst,
            max_wait_ms: u64::try_from(settings.max_wait.as_millis()).unwrap_or(u64::MAX),
            secs: settings.secs,
        };
        let mut child = tokio::process::Command::new(&exe)
            .env(ROLE_ENV, "worker")
            .env(WORKER_ENV, serde_json::to_string(&worker)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("a worker's stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("a worker's stdout")?).lines();
        children.push((child, stdin, stdout));
    }
    for (_, _, stdout) in &mut children {
        let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line()).await;
        match line {
            Ok(Ok(Some(line))) if line == "ready" => {}
            _ => return Err("a worker did not connect within 30 s".into()),
        }
    }
    cluster.reset_stats()?;
    for (_, stdin, _) in &mut children {
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
    }
    let limit =
        Duration::from_secs_f64(settings.secs) + settings.max_wait + Duration::from_secs(60);
    let mut reports = Vec::new();
    for (mut child, _, mut stdout) in children {
        let line = tokio::time::timeout(limit, stdout.next_line()).await;
        let Ok(Ok(Some(line))) = line else {
            return Err("a worker did not report".into());
        };
        reports.push(serde_json::from_str::<WorkerReport>(&line)?);
        child.wait().await?;
    }
    // Requests already handed to the client reach the upstream within a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let scripts = cluster.script_calls()?;
    let mut arrivals = std::mem::take(&mut *lock(arrivals));
    arrivals.sort_unstable();
    Ok(Outcome {
        name: name.to_owned(),
        reports,
        arrivals,
        scripts,
    })
}

// ---------------------------------------------------------------------------------------------
// Figures.

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    let last = sorted.len().checked_sub(1)?;
    let index = ((last as f64) * p).round() as usize;
    sorted.get(index).copied()
}

/// Nanoseconds as µs (or ms when large).
fn micros(ns: Option<u64>) -> String {
    match ns {
        None => "–".to_owned(),
        Some(ns) if ns >= 10_000_000 => format!("{:.1} ms", ns as f64 / 1e6),
        Some(ns) if ns >= 100_000 => format!("{:.0} µs", ns as f64 / 1e3),
        Some(ns) => format!("{:.1} µs", ns as f64 / 1e3),
    }
}

fn latency_row(sorted: &[u64]) -> String {
    format!(
        "{} / {} / {} ({} decisions)",
        micros(percentile(sorted, 0.50)),
        micros(percentile(sorted, 0.99)),
        micros(percentile(sorted, 0.999)),
        thousands(sorted.len() as u64)
    )
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn over(most: usize, allowed: f64) -> String {
    format!("{:+.2} %", (most as f64 / allowed - 1.0) * 100.0)
}

/// The main figures of one mode.
struct Figures {
    offered: u64,
    received: u64,
    most_10s: usize,
    scripts: u64,
    at_once_p99: Option<u64>,
}

fn figures(outcome: &Outcome) -> Figures {
    let at_once = outcome.latencies(|r| &r.at_once_ns);
    Figures {
        offered: outcome.sum(|r| r.offered),
        received: outcome.arrivals.len() as u64,
        most_10s: most_in(&outcome.arrivals, Duration::from_secs(10)),
        scripts: outcome.scripts.iter().sum(),
        at_once_p99: percentile(&at_once, 0.99),
    }
}

fn print_table(outcomes: &[Outcome], settings: &Settings) {
    let rows: Vec<(String, Vec<String>)> = {
        let mut rows: Vec<(String, Vec<String>)> = Vec::new();
        let mut row = |label: &str, f: &dyn Fn(&Outcome) -> String| {
            rows.push((label.to_owned(), outcomes.iter().map(f).collect()));
        };
        row("requests offered", &|o| thousands(o.sum(|r| r.offered)));
        row("sent / refused by the throttle / failed", &|o| {
            format!(
                "{} / {} / {}",
                thousands(o.sum(|r| r.sent)),
                thousands(o.sum(|r| r.refused)),
                thousands(o.sum(|r| r.failed))
            )
        });
        row("share of the requests sent, per process", &|o| {
            let sent = o.sum(|r| r.sent).max(1) as f64;
            let shares: Vec<String> = o
                .reports
                .iter()
                .map(|r| format!("{:.0} %", r.sent as f64 / sent * 100.0))
                .collect();
            shares.join(" / ")
        });
        row(
            &format!(
                "sent more than max_wait ({} ms) after the offer",
                settings.max_wait.as_millis()
            ),
            &|o| thousands(o.sum(|r| r.over_wait)),
        );
        row("requests the upstream received", &|o| {
            let span = match (o.arrivals.first(), o.arrivals.last()) {
                (Some(a), Some(b)) => b.duration_since(*a).as_secs_f64(),
                _ => 0.0,
            };
            format!(
                "{} in {span:.2} s ({:.1}/s)",
                thousands(o.arrivals.len() as u64),
                if span > 0.0 {
                    o.arrivals.len() as f64 / span
                } else {
                    0.0
                }
            )
        });
        row("most in any 10 s (limit 20,000)", &|o| {
            let most = most_in(&o.arrivals, Duration::from_secs(10));
            format!(
                "{} ({})",
                thousands(most as u64),
                over(most, 10.0 * f64::from(LIMIT))
            )
        });
        row("most in any 1 s (limit 2,000)", &|o| {
            let most = most_in(&o.arrivals, Duration::from_secs(1));
            format!(
                "{} ({})",
                thousands(most as u64),
                over(most, f64::from(LIMIT))
            )
        });
        row("… from 1 s after the first arrival on", &|o| {
            let steady: Vec<Instant> = match o.arrivals.first() {
                Some(first) => o
                    .arrivals
                    .iter()
                    .copied()
                    .filter(|at| at.duration_since(*first) >= Duration::from_secs(1))
                    .collect(),
                None => Vec::new(),
            };
            let most = most_in(&steady, Duration::from_secs(1));
            format!(
                "{} ({})",
                thousands(most as u64),
                over(most, f64::from(LIMIT))
            )
        });
        row("Redis scripts run (EVALSHA + EVAL), per node", &|o| {
            let per_node: Vec<String> = o.scripts.iter().map(|n| thousands(*n)).collect();
            format!(
                "{} ({})",
                thousands(o.scripts.iter().sum()),
                per_node.join(" + ")
            )
        });
        row("… per request offered / per request received", &|o| {
            let f = figures(o);
            format!(
                "{:.4} / {:.4}",
                f.scripts as f64 / f.offered.max(1) as f64,
                f.scripts as f64 / f.received.max(1) as f64
            )
        });
        row("stores: leases / decisions from a lease", &|o| {
            format!(
                "{} / {}",
                thousands(o.sum(|r| r.leases)),
                thousands(o.sum(|r| r.leased_decisions))
            )
        });
        row(
            "stores: one-slot acquires / fallback decisions / errors",
            &|o| {
                format!(
                    "{} / {} / {}",
                    thousands(o.sum(|r| r.redis_decisions)),
                    thousands(o.sum(|r| r.fallback_decisions)),
                    thousands(o.sum(|r| r.store_errors))
                )
            },
        );
        row("acquire latency p50 / p99 / p99.9, every decision", &|o| {
            let mut all = o.latencies(|r| &r.at_once_ns);
            all.extend(o.latencies(|r| &r.round_trip_ns));
            all.sort_unstable();
            latency_row(&all)
        });
        row("… decided at once (a lease held)", &|o| {
            latency_row(&o.latencies(|r| &r.at_once_ns))
        });
        row("… after a round trip (or a lease on its way)", &|o| {
            latency_row(&o.latencies(|r| &r.round_trip_ns))
        });
        row("slot wait p50 / p99 / max (offer to send)", &|o| {
            let waits = o.latencies(|r| &r.slot_wait_us);
            let ms = |us: Option<u64>| {
                us.map_or("–".to_owned(), |us| format!("{:.0} ms", us as f64 / 1e3))
            };
            format!(
                "{} / {} / {}",
                ms(percentile(&waits, 0.5)),
                ms(percentile(&waits, 0.99)),
                ms(waits.last().copied())
            )
        });
        row("unused leased slots given back at the end", &|o| {
            thousands(o.reports.iter().map(|r| u64::from(r.returned)).sum())
        });
        rows
    };
    let names: Vec<&str> = outcomes.iter().map(|o| o.name.as_str()).collect();
    println!("| measure | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(outcomes.len()));
    for (label, values) in rows {
        println!("| {label} | {} |", values.join(" | "));
    }
}

fn print_workers(outcome: &Outcome) {
    println!("\n{}, each worker process:\n", outcome.name);
    println!("| process | offered | sent | refused | over-wait | failed | leases | from a lease | one-slot | fallback | errors | workers seen | acquire p99 at once | acquire p99 round trip |");
    println!("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in &outcome.reports {
        let mut at_once = r.at_once_ns.clone();
        at_once.sort_unstable();
        let mut round_trip = r.round_trip_ns.clone();
        round_trip.sort_unstable();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.index,
            thousands(r.offered),
            thousands(r.sent),
            thousands(r.refused),
            thousands(r.over_wait),
            thousands(r.failed),
            thousands(r.leases),
            thousands(r.leased_decisions),
            thousands(r.redis_decisions),
            thousands(r.fallback_decisions),
            thousands(r.store_errors),
            r.workers_seen,
            micros(percentile(&at_once, 0.99)),
            micros(percentile(&round_trip, 0.99)),
        );
    }
    for r in &outcome.reports {
        let seconds: Vec<String> = r.sent_per_second.iter().map(|n| n.to_string()).collect();
        println!(
            "- process {}, sent in each second: {}",
            r.index,
            seconds.join(" ")
        );
        if let Some(error) = &r.first_error {
            println!("  process {}: first failure: {error}", r.index);
        }
    }
}

fn print_targets(plain: &Outcome, leased: &Outcome) {
    let (p, l) = (figures(plain), figures(leased));
    let per = |f: &Figures| f.scripts as f64 / f.offered.max(1) as f64;
    let fewer = (1.0 - per(&l) / per(&p)) * 100.0;
    let over_10s = (l.most_10s as f64 / (10.0 * f64::from(LIMIT)) - 1.0) * 100.0;
    let met = |ok: bool| if ok { "met" } else { "not met" };
    println!("\n| target | {} | |", leased.name);
    println!("|---|---|---|");
    println!(
        "| ≥ 95 % fewer Redis round trips per request than one per acquire | {fewer:.2} % fewer ({:.4} against {:.4} per request offered) | {} |",
        per(&l),
        per(&p),
        met(fewer >= 95.0)
    );
    println!(
        "| ≤ 2 % over the limit in any 10 s window | {} in the busiest 10 s ({over_10s:+.2} %; one round trip per acquire: {}) | {} |",
        thousands(l.most_10s as u64),
        over(p.most_10s, 10.0 * f64::from(LIMIT)),
        met(over_10s <= 2.0)
    );
    println!(
        "| acquire p99 with a lease held < 50 µs | {} | {} |",
        micros(l.at_once_p99),
        met(l.at_once_p99.is_some_and(|ns| ns < 50_000))
    );
}

async fn bench() -> Result<(), BoxError> {
    let settings = Settings::from_env()?;
    let cluster = Cluster::start()?;
    let arrivals: Arrivals = Arc::default();
    let addr = upstream(arrivals.clone()).await?;
    println!(
        "{PROCESSES} processes × {TASKS} tasks offer {} requests/s together (open loop) for {} s \
         against a shared limit of {LIMIT}/s (burst {}, max_wait {} ms), through a 3-node Redis \
         Cluster on 127.0.0.1 ports {:?}\n",
        thousands(u64::from(OFFERED_PER_PROCESS) * PROCESSES as u64),
        settings.secs,
        settings.burst,
        settings.max_wait.as_millis(),
        cluster.ports,
    );
    let plain = run_mode(
        "one round trip per acquire",
        0,
        &settings,
        &cluster,
        addr,
        &arrivals,
    )
    .await?;
    let leased = run_mode(
        &format!("lease({})", settings.slots),
        settings.slots,
        &settings,
        &cluster,
        addr,
        &arrivals,
    )
    .await?;
    let outcomes = [plain, leased];
    print_table(&outcomes, &settings);
    for outcome in &outcomes {
        print_workers(outcome);
    }
    print_targets(&outcomes[0], &outcomes[1]);
    if settings.secs < 10.0 {
        println!(
            "\n(The run is shorter than 10 s: the busiest 10 s is the whole run, below the limit \
             by construction.)"
        );
    }
    Ok(())
}
