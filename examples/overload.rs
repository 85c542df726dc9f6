//! Concurrency limiters against an upstream with a knee: a loopback simulation that runs on
//! its own, prints a markdown table and exits (about four minutes).
//!
//! ```text
//! cargo run --release --example overload
//! OVERLOAD_SECS=2 cargo run --release --example overload     # a smoke run: 2 s windows
//! OVERLOAD_ROWS=outbound,none cargo run --release --example overload  # only those rows
//! ```
//!
//! The upstream is a hyper server on 127.0.0.1, in this process on a runtime of its own (one
//! worker thread). It counts the requests it holds; a request that arrives as the `n`th in
//! flight is answered 503 at once when `n > 96`, else after a service time of 5 ms up to the
//! knee at `n = 64` and 5 ms × (1 + (n − 64) / 4) past it (10 ms at 68, 45 ms at 96), with a
//! 200. Its best throughput is 64 in flight: 12,800 answers a second in theory, somewhat less
//! here, as tokio's timer rounds each sleep up to the next millisecond.
//!
//! The client is a hyper-util `Client` (HTTP/1, up to 300 idle connections kept) wrapped by
//! the limiter under test, called back to back by 256 tasks (each with a clone of one
//! service, so the limit is shared), each call with a 2 s timeout. Each run warms up for 1 s,
//! then measures for 10 s (`OVERLOAD_SECS`); a call counts when it ends in the window. Every
//! row runs twice. The limiters: none; tower's `ConcurrencyLimit` at 16, 64 and 256;
//! tower-resilience's bulkhead (25 in flight, calls wait without bound) and its adaptive
//! limiter (AIMD from 10, +1 per success, ×0.5 on an error or a latency over 100 ms, at most
//! 100) with their defaults; and this crate's [`ConcurrencyLayer`]: `adaptive()` (AIMD),
//! `adaptive().vegas()`, and `adaptive().initial(1)` to time how it settles. Two more rows
//! frame the overload target: 16 tasks with no limiter (the unloaded upstream) and 768 tasks
//! (three times the load) through `adaptive()`.
//!
//! Columns:
//!
//! - **goodput**: 200s a second in the window;
//! - **503**: the share of the upstream's answers that were 503;
//! - **shed**: calls the limiter refused, as a share of calls made; **t/o**: calls that timed
//!   out (2 s, including any wait for a place);
//! - **client p99**: the 99th percentile of the latency of the 200s as the caller saw it (with
//!   any wait for a place); **upstream p99**: the 99th percentile of the upstream's service
//!   time (arrival to answer) of the 200s it served in the window;
//! - **limit** and **settled**: for this crate's limiter, the limit at the end of the window,
//!   and the time from the run's start after which the limit stayed within ±15 % of 64
//!   (55 to 73), sampled every 10 ms;
//! - **cpu**: the process's CPU time over the run's wall time, in cores (Linux only), to see
//!   whether the machine, rather than the upstream, was the bottleneck.
//!
//! Below the table it checks the adaptive limiter's targets and prints the limit's trajectory,
//! second by second, in each run of this crate's limiter.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tower::limit::ConcurrencyLimit;
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};
use tower_outbound::partition::PartitionKey;
use tower_outbound::{BoxError, ConcurrencyLayer};
use tower_resilience::adaptive::{AdaptiveError, AdaptiveLimiterLayer, Aimd};
use tower_resilience::bulkhead::{BulkheadLayer, BulkheadServiceError};

/// In flight at the upstream up to which its service time is flat.
const KNEE: u32 = 64;
/// In flight at the upstream above which it answers 503 at once.
const REFUSE_ABOVE: u32 = 96;
/// The upstream's service time up to the knee.
const BASE: Duration = Duration::from_millis(5);
/// Each call's timeout, any wait for a place included.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const WARM_UP: Duration = Duration::from_secs(1);
/// Client tasks in the ordinary rows.
const TASKS: usize = 256;
/// Runs of each row.
const RUNS: usize = 2;
/// How often the crate's limit is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// The band the limit must settle in: ±15 % of the knee.
const BAND: (f64, f64) = (KNEE as f64 * 0.85, KNEE as f64 * 1.15);

/// The upstream's service time for the `n`th request in flight: flat to the knee, then 1.25 ms
/// more per request over it.
fn service_time(n: u32) -> Duration {
    BASE + BASE * n.saturating_sub(KNEE) / 4
}

/// What the upstream shares with the benchmark.
#[derive(Debug, Default)]
struct Upstream {
    in_flight: AtomicU32,
    /// Whether the measured window is on: service times are kept only then.
    recording: AtomicBool,
    /// Service times of the 200s served in the window, in microseconds.
    served: Mutex<Vec<u32>>,
}

/// A request held by the upstream; it leaves the count when answered or dropped.
struct Held(Arc<Upstream>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn answer(upstream: Arc<Upstream>) -> Result<Response<Full<Bytes>>, Infallible> {
    let arrived = Instant::now();
    let n = upstream.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let held = Held(upstream);
    let mut response = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
    if n > REFUSE_ABOVE {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return Ok(response);
    }
    tokio::time::sleep(service_time(n)).await;
    if held.0.recording.load(Ordering::Relaxed) {
        let micros = u32::try_from(arrived.elapsed().as_micros()).unwrap_or(u32::MAX);
        lock(&held.0.served).push(micros);
    }
    Ok(response)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The running upstream's server.
struct Server {
    addr: SocketAddr,
    upstream: Arc<Upstream>,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// Starts the upstream on its own thread and runtime; it stops when `stop` is sent or dropped.
fn start_upstream() -> std::io::Result<Server> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let upstream = Arc::new(Upstream::default());
    let shared = upstream.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        runtime.block_on(async move {
            let accept = async {
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    let upstream = shared.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                            answer(upstream.clone())
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            };
            tokio::select! {
                _ = accept => {}
                _ = stopped => {}
            }
        });
    });
    Ok(Server {
        addr,
        upstream,
        stop,
        thread,
    })
}

/// Why a call failed: the limiter refused it, or anything else did.
#[derive(Debug)]
enum Failure {
    Shed,
    Other(BoxError),
}

impl Failure {
    fn other(error: impl Into<BoxError>) -> Self {
        Failure::Other(error.into())
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;
type Call = BoxCloneService<Request<Empty<Bytes>>, Response<Incoming>, Failure>;

/// A limiter under test.
#[derive(Clone, Debug)]
enum Limiter {
    None,
    Tower(usize),
    Bulkhead,
    ResilienceAdaptive,
    Outbound(ConcurrencyLayer),
}

impl Limiter {
    /// The client wrapped by this limiter, as one service whose clones share the limit.
    fn around(&self, client: HttpClient) -> Call {
        match self {
            Limiter::None => BoxCloneService::new(client.map_err(Failure::other)),
            Limiter::Tower(limit) => {
                BoxCloneService::new(ConcurrencyLimit::new(client, *limit).map_err(Failure::other))
            }
            Limiter::Bulkhead => {
                let layer = BulkheadLayer::builder()
                    .build()
                    .expect("the bulkhead's defaults are valid");
                BoxCloneService::new(layer.layer(client).map_err(|error| match error {
                    BulkheadServiceError::Bulkhead(_) => Failure::Shed,
                    BulkheadServiceError::Inner(error) => Failure::other(error),
                }))
            }
            Limiter::ResilienceAdaptive => {
                let aimd = Aimd::builder()
                    .build()
                    .expect("the AIMD defaults are valid");
                let layer = AdaptiveLimiterLayer::new(aimd);
                BoxCloneService::new(layer.layer(client).map_err(|error| match error {
                    AdaptiveError::LimitReached => Failure::Shed,
                    AdaptiveError::Service(error) => Failure::other(error),
                }))
            }
            Limiter::Outbound(layer) => {
                BoxCloneService::new(layer.layer(client).map_err(|error| {
                    if error.is_overloaded() {
                        Failure::Shed
                    } else {
                        Failure::other(error)
                    }
                }))
            }
        }
    }
}

/// One line of the table: a limiter (made fresh for each run) and the number of tasks.
struct Row {
    name: &'static str,
    tasks: usize,
    make: fn() -> Limiter,
}

fn rows() -> Vec<Row> {
    let row = |name, tasks, make| Row { name, tasks, make };
    vec![
        row("none (unloaded)", 16, || Limiter::None),
        row("none", TASKS, || Limiter::None),
        row("tower ConcurrencyLimit 16", TASKS, || Limiter::Tower(16)),
        row("tower ConcurrencyLimit 64", TASKS, || Limiter::Tower(64)),
        row("tower ConcurrencyLimit 256", TASKS, || Limiter::Tower(256)),
        row("tower-resilience bulkhead", TASKS, || Limiter::Bulkhead),
        row("tower-resilience adaptive AIMD", TASKS, || {
            Limiter::ResilienceAdaptive
        }),
        row("outbound adaptive()", TASKS, || {
            Limiter::Outbound(ConcurrencyLayer::adaptive())
        }),
        row("outbound adaptive().vegas()", TASKS, || {
            Limiter::Outbound(ConcurrencyLayer::adaptive().vegas())
        }),
        row("outbound adaptive().initial(1)", TASKS, || {
            Limiter::Outbound(ConcurrencyLayer::adaptive().initial(1))
        }),
        row("outbound adaptive(), 3× load", 3 * TASKS, || {
            Limiter::Outbound(ConcurrencyLayer::adaptive())
        }),
    ]
}

/// What the calls of one task (or of all, merged) came to in the window.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    unavailable: u64,
    other_status: u64,
    shed: u64,
    timeouts: u64,
    errors: u64,
    /// The first error that was not the limiter's, to say what went wrong.
    first_error: Option<String>,
    /// Latencies of the 200s, in microseconds.
    latencies: Vec<u32>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.unavailable += other.unavailable;
        self.other_status += other.other_status;
        self.shed += other.shed;
        self.timeouts += other.timeouts;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.latencies.extend(other.latencies);
    }

    fn answers(&self) -> u64 {
        self.ok + self.unavailable + self.other_status
    }

    fn calls(&self) -> u64 {
        self.answers() + self.shed + self.timeouts + self.errors
    }
}

/// One task: calls back to back until the window ends, and tallies the calls that end in it.
async fn drive(mut service: Call, uri: Uri, warm: Instant, end: Instant) -> Tally {
    let mut tally = Tally::default();
    loop {
        let started = Instant::now();
        if started >= end {
            return tally;
        }
        let request = Request::get(uri.clone())
            .body(Empty::new())
            .expect("a GET with an absolute URI is valid");
        let call = async {
            let response = service.ready().await?.call(request).await?;
            let status = response.status();
            response
                .into_body()
                .collect()
                .await
                .map_err(Failure::other)?;
            Ok::<_, Failure>(status)
        };
        let outcome = tokio::time::timeout(CALL_TIMEOUT, call).await;
        let ended = Instant::now();
        if ended < warm || ended > end {
            continue;
        }
        match outcome {
            Ok(Ok(StatusCode::OK)) => {
                tally.ok += 1;
                let micros = u32::try_from((ended - started).as_micros()).unwrap_or(u32::MAX);
                tally.latencies.push(micros);
            }
            Ok(Ok(StatusCode::SERVICE_UNAVAILABLE)) => tally.unavailable += 1,
            Ok(Ok(_)) => tally.other_status += 1,
            Ok(Err(Failure::Shed)) => tally.shed += 1,
            Ok(Err(Failure::Other(error))) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| error.to_string());
            }
            Err(_) => tally.timeouts += 1,
        }
    }
}

/// The figures of one run.
#[derive(Debug)]
struct Run {
    tally: Tally,
    window: Duration,
    /// Service times of the 200s the upstream served in the window, in microseconds.
    served: Vec<u32>,
    /// The crate's limit at the end of the window.
    limit: Option<u32>,
    /// The crate's limit every `SAMPLE_EVERY` from the run's start.
    trajectory: Vec<(Duration, u32)>,
    /// Process CPU time over wall time, in cores.
    cpu: Option<f64>,
}

impl Run {
    fn goodput(&self) -> f64 {
        self.tally.ok as f64 / self.window.as_secs_f64()
    }

    fn unavailable_share(&self) -> f64 {
        share(self.tally.unavailable, self.tally.answers())
    }

    fn shed_share(&self) -> f64 {
        share(self.tally.shed, self.tally.calls())
    }

    fn client_p99(&self) -> Option<Duration> {
        p99(&self.tally.latencies)
    }

    fn upstream_p99(&self) -> Option<Duration> {
        p99(&self.served)
    }

    /// When the limit came into the band and stayed there to the end; `None` if it was out of
    /// the band at the end (or never sampled).
    fn settled(&self) -> Option<Duration> {
        let (_, last) = *self.trajectory.last()?;
        if !in_band(last) {
            return None;
        }
        let first_in = self
            .trajectory
            .iter()
            .rposition(|&(_, limit)| !in_band(limit))
            .map_or(0, |out| out + 1);
        Some(self.trajectory[first_in].0)
    }
}

/// Whether `limit` is within ±15 % of the knee.
fn in_band(limit: u32) -> bool {
    (BAND.0..=BAND.1).contains(&f64::from(limit))
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn p99(micros: &[u32]) -> Option<Duration> {
    if micros.is_empty() {
        return None;
    }
    let mut micros = micros.to_vec();
    micros.sort_unstable();
    let rank = (micros.len() * 99).div_ceil(100).max(1) - 1;
    Some(Duration::from_micros(u64::from(micros[rank])))
}

/// The process's CPU time (user and system) so far, from `/proc/self/stat`, at 100 ticks a
/// second; `None` off Linux.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which ends with the last ')'.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Runs `tasks` client tasks through `limiter` against the upstream for one warm-up and one
/// window.
async fn run(
    limiter: Limiter,
    tasks: usize,
    addr: SocketAddr,
    upstream: &Upstream,
    window: Duration,
) -> Run {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(300)
        .build(connector);
    let uri: Uri = format!("http://{addr}/")
        .parse()
        .expect("a loopback URI is valid");
    let service = limiter.around(client);
    lock(&upstream.served).clear();

    let cpu_before = cpu_time();
    let start = Instant::now();
    let warm = start + WARM_UP;
    let end = warm + window;
    let sampler = match &limiter {
        Limiter::Outbound(layer) => {
            let layer = layer.clone();
            let key = PartitionKey::from(format!("http://{addr}"));
            Some(tokio::spawn(async move {
                let mut trajectory = Vec::new();
                let mut every = tokio::time::interval(SAMPLE_EVERY);
                loop {
                    let now = every.tick().await;
                    if now > end {
                        break;
                    }
                    if let Some(state) = layer.limit_of(&key) {
                        trajectory.push((now - start, state.limit));
                    }
                }
                let limit = layer.limit_of(&key).map(|state| state.limit);
                (trajectory, limit)
            }))
        }
        _ => None,
    };
    let handles: Vec<_> = (0..tasks)
        .map(|_| tokio::spawn(drive(service.clone(), uri.clone(), warm, end)))
        .collect();
    drop(service);
    tokio::time::sleep_until(warm).await;
    upstream.recording.store(true, Ordering::Relaxed);
    let (trajectory, limit) = match sampler {
        Some(sampler) => sampler.await.expect("the sampler does not panic"),
        None => {
            tokio::time::sleep_until(end).await;
            (Vec::new(), None)
        }
    };
    upstream.recording.store(false, Ordering::Relaxed);
    let mut tally = Tally::default();
    for handle in handles {
        tally.merge(handle.await.expect("a client task does not panic"));
    }
    let cpu = match (cpu_before, cpu_time()) {
        (Some(before), Some(after)) => {
            Some((after.saturating_sub(before)).as_secs_f64() / start.elapsed().as_secs_f64())
        }
        _ => None,
    };
    // The calls still held by the upstream end before the next run starts.
    while upstream.in_flight.load(Ordering::SeqCst) > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let served = std::mem::take(&mut *lock(&upstream.served));
    Run {
        tally,
        window,
        served,
        limit,
        trajectory,
        cpu,
    }
}

fn millis(duration: Option<Duration>) -> String {
    duration.map_or("—".to_owned(), |d| {
        format!("{:.1}", d.as_secs_f64() * 1e3)
    })
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0u32), |(sum, n), v| (sum + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / f64::from(n)
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn main() -> std::io::Result<()> {
    let began = std::time::Instant::now();
    let server = start_upstream()?;
    // The client's runtime: one worker per core.
    let client = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    client.block_on(measure(server.addr, &server.upstream));
    drop(client);
    let _ = server.stop.send(());
    let _ = server.thread.join();
    println!("\nRan in {:.0} s.", began.elapsed().as_secs_f64());
    Ok(())
}

/// Runs every row and prints the table, the targets and the limit's trajectories.
async fn measure(addr: SocketAddr, upstream: &Upstream) {
    let secs = std::env::var("OVERLOAD_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(10.0);
    let window = Duration::try_from_secs_f64(secs)
        .unwrap_or(Duration::from_secs(10))
        .clamp(Duration::from_millis(500), Duration::from_secs(600));

    println!(
        "Upstream: 5 ms to {KNEE} in flight, 5 ms × (1 + (n − {KNEE}) / 4) past it, 503 above \
         {REFUSE_ABOVE}. {:.0} s warm-up, {:.1} s window, {RUNS} runs a row, 2 s call timeout.\n",
        WARM_UP.as_secs_f64(),
        window.as_secs_f64(),
    );
    println!(
        "| limiter | tasks | run | goodput (200/s) | 503 | shed | t/o | client p99 (ms) | \
         upstream p99 (ms) | limit | settled | cpu |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");

    // OVERLOAD_ROWS=a,b runs only the rows whose names contain one of them, and no targets.
    let only: Option<Vec<String>> = std::env::var("OVERLOAD_ROWS")
        .ok()
        .map(|s| s.split(',').map(str::to_owned).collect());
    let mut results: Vec<(&'static str, Vec<Run>)> = Vec::new();
    for row in rows() {
        if let Some(only) = &only {
            if !only.iter().any(|o| row.name.contains(o.as_str())) {
                continue;
            }
        }
        let mut runs = Vec::new();
        for n in 1..=RUNS {
            let result = run((row.make)(), row.tasks, addr, upstream, window).await;
            let settled = match (&result.limit, result.settled()) {
                (None, _) => "—".to_owned(),
                (Some(_), Some(at)) => format!("{:.2} s", at.as_secs_f64()),
                (Some(_), None) => "no".to_owned(),
            };
            println!(
                "| {} | {} | {n} | {:.0} | {:.1} % | {:.2} % | {} | {} | {} | {} | {} | {} |",
                row.name,
                row.tasks,
                result.goodput(),
                result.unavailable_share() * 100.0,
                result.shed_share() * 100.0,
                result.tally.timeouts,
                millis(result.client_p99()),
                millis(result.upstream_p99()),
                result.limit.map_or("—".to_owned(), |l| l.to_string()),
                settled,
                result.cpu.map_or("—".to_owned(), |c| format!("{c:.2}")),
            );
            if result.tally.errors > 0 || result.tally.other_status > 0 {
                println!(
                    "|   ↳ also {} errors, {} other statuses (first error: {}) | | | | | | | | | | | |",
                    result.tally.errors,
                    result.tally.other_status,
                    result.tally.first_error.as_deref().unwrap_or("none"),
                );
            }
            runs.push(result);
        }
        results.push((row.name, runs));
    }

    if only.is_some() {
        return;
    }
    let runs_of = |name: &str| {
        results
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, runs)| runs)
            .expect("every row ran")
    };
    let mean_goodput = |name: &str| mean(runs_of(name).iter().map(Run::goodput));
    let (best_static, best_static_goodput) = [
        "tower ConcurrencyLimit 16",
        "tower ConcurrencyLimit 64",
        "tower ConcurrencyLimit 256",
    ]
    .into_iter()
    .map(|name| (name, mean_goodput(name)))
    .fold(
        ("", 0.0),
        |best, (name, g)| {
            if g > best.1 {
                (name, g)
            } else {
                best
            }
        },
    );
    let resilience = mean_goodput("tower-resilience adaptive AIMD");
    let ours = mean_goodput("outbound adaptive()");
    let shed = runs_of("outbound adaptive()")
        .iter()
        .chain(runs_of("outbound adaptive(), 3× load"))
        .map(Run::shed_share)
        .fold(0.0, f64::max);
    let settling: Vec<Option<Duration>> = runs_of("outbound adaptive().initial(1)")
        .iter()
        .map(Run::settled)
        .collect();
    let p99_of = |name: &str| runs_of(name).iter().filter_map(Run::upstream_p99).max();
    let unloaded = p99_of("none (unloaded)");
    let loaded = p99_of("outbound adaptive()");
    let overloaded = p99_of("outbound adaptive(), 3× load");

    let mut report = String::new();
    let _ = writeln!(report, "\nTargets for `ConcurrencyLayer::adaptive()`:\n");
    let _ = writeln!(
        report,
        "- goodput ≥ the best static limit's ({best_static}, {best_static_goodput:.0}/s) and ≥ \
         tower-resilience adaptive's ({resilience:.0}/s): {ours:.0}/s, {} ({:+.1} % and {:+.1} %)",
        verdict(ours >= best_static_goodput && ours >= resilience),
        (ours / best_static_goodput - 1.0) * 100.0,
        (ours / resilience - 1.0) * 100.0,
    );
    let _ = writeln!(
        report,
        "- shed ≤ 1 % (worst of its 256- and 768-task runs): {:.2} %, {}",
        shed * 100.0,
        verdict(shed <= 0.01),
    );
    let settled_in_time = settling
        .iter()
        .all(|s| s.is_some_and(|at| at <= Duration::from_secs(10)));
    let _ = writeln!(
        report,
        "- from `.initial(1)`, within ±15 % of {KNEE} (55 to 73) to stay in ≤ 10 s: {}, {}",
        settling
            .iter()
            .map(|s| s.map_or("not settled".to_owned(), |at| format!(
                "{:.2} s",
                at.as_secs_f64()
            )))
            .collect::<Vec<_>>()
            .join(" and "),
        verdict(settled_in_time),
    );
    match (unloaded, loaded, overloaded) {
        (Some(unloaded), Some(loaded), Some(overloaded)) => {
            let ratio = overloaded.as_secs_f64() / unloaded.as_secs_f64();
            let _ = writeln!(
                report,
                "- under 3× overload, the upstream's p99 ≤ 1.5 × its unloaded p99 ({} ms, 16 \
                 tasks, worst run): {} ms at 768 tasks ({ratio:.2}×; {} ms at 256 tasks), {}",
                millis(Some(unloaded)),
                millis(Some(overloaded)),
                millis(Some(loaded)),
                verdict(ratio <= 1.5),
            );
        }
        _ => {
            let _ = writeln!(report, "- overload p99: no 200s served in some run");
        }
    }
    print!("{report}");

    println!("\nThe crate's limit at each second from the run's start (sampled every 10 ms):\n");
    for (name, runs) in &results {
        for (n, run) in runs.iter().enumerate() {
            if run.trajectory.is_empty() {
                continue;
            }
            let mut line = format!("- {name}, run {}:", n + 1);
            let mut next = Duration::ZERO;
            for &(at, limit) in &run.trajectory {
                if at >= next {
                    let _ = write!(line, " {limit}");
                    next += Duration::from_secs(1);
                }
            }
            let window: Vec<u32> = run
                .trajectory
                .iter()
                .filter(|(at, _)| *at >= WARM_UP)
                .map(|&(_, limit)| limit)
                .collect();
            let low = window.iter().copied().min().unwrap_or(0);
            let high = window.iter().copied().max().unwrap_or(0);
            let average = mean(window.iter().map(|&limit| f64::from(limit)));
            let out = share(
                window.iter().filter(|&&limit| !in_band(limit)).count() as u64,
                window.len() as u64,
            );
            let first_in = run
                .trajectory
                .iter()
                .find(|&&(_, limit)| in_band(limit))
                .map_or("never".to_owned(), |(at, _)| {
                    format!("{:.2} s", at.as_secs_f64())
                });
            let _ = write!(
                line,
                " (in the window: {low} to {high}, mean {average:.1}, out of the band {:.0} % \
                 of the time; first in the band at {first_in})",
                out * 100.0
            );
            println!("{line}");
        }
    }
}
