//! Hedging against an upstream with rare stragglers: a loopback benchmark that runs on its own,
//! prints markdown tables and exits (about three and a half minutes).
//!
//! ```text
//! cargo run --release --example hedge
//! HEDGE_CALLS=4000 HEDGE_FIRST_CALLS=1000 HEDGE_WARMUP_SECS=2.5 HEDGE_BROWNOUT_SCALE=0.5 \
//!     cargo run --release --example hedge                        # a smoke run, about a minute
//! HEDGE_ROWS=outbound HEDGE_RUNS=brownout cargo run --release --example hedge   # some only
//! HEDGE_OVER_MEDIAN=1 HEDGE_ROWS=outbound cargo run --release --example hedge  # another floor
//! ```
//!
//! The upstream is a hyper server on 127.0.0.1, in this process on a runtime of its own (one
//! worker thread). It numbers the requests as they arrive, from 0, and answers each with a 200
//! after 2 ms, except arrival `n` with `n % 100 == 57`, answered after 300 ms: 1 % of the
//! requests are stragglers, 150 times slower than the rest. While a brownout is on, it answers
//! every request after 30 ms. tokio's timer rounds each sleep up to the next millisecond, so
//! the usual answer takes 2 to 3 ms.
//!
//! The client is a hyper-util `Client` (HTTP/1, no delay on the socket) wrapped in the hedging
//! under test, called back to back by 8 tasks (each with a clone of one service, so the
//! hedging state is shared); a call ends when the response's body is read. The hedging:
//!
//! - **none**: the bare client;
//! - **tower `Hedge`**: tower 0.5's `hedge::Hedge` at the 95th percentile, with 20 data points
//!   and a 2 s period, behind a `tower::buffer::Buffer` (it is not `Clone`), with a `Policy`
//!   that clones GETs;
//! - **tower-resilience hedge, 10 ms**: tower-resilience 0.13's hedge with a fixed 10 ms delay,
//!   one hedge per call, GETs only: a delay picked by hand for this upstream;
//! - **outbound `HedgeLayer::new()`**: this crate's layer with its defaults, alone;
//! - **outbound `latency_sensitive()`**: the composed stack with hedging on.
//!
//! `HEDGE_ROWS=a,b` runs only the rows whose names contain one of them, `HEDGE_RUNS=a,b` only
//! those of the runs below (`steady`, `first`, `brownout`). `HEDGE_OVER_MEDIAN=n` gives both
//! of the crate's rows `HedgeLayer::new().over_median(n)` instead of the default floor of twice
//! the median, to see what that floor costs.
//!
//! Each row runs on a server and a client of its own, made for it. Three runs:
//!
//! - **steady**: 3 s of warm-up (`HEDGE_WARMUP_SECS`: longer than tower's 2 s period, so its
//!   histogram is full), then 40,000 calls measured (`HEDGE_CALLS`);
//! - **first**: the first 5,000 calls of a fresh layer (`HEDGE_FIRST_CALLS`), no warm-up;
//! - **brownout**: 5 s as usual, then 6 s in which every answer takes 30 ms, then 5 s as usual
//!   again (`HEDGE_BROWNOUT_SCALE` multiplies the three).
//!
//! Every request carries the phase it was issued in (warm-up, measured; or before, during,
//! after the brownout) in a header, which a hedged copy carries too, and the server counts its
//! arrivals per phase. **Extra** is the server's arrivals over the calls issued in the phase,
//! minus one: the share of requests the hedging (or a retry) added. Latencies are the caller's,
//! from `ready()` to the end of the body, of the calls issued in the measured phase (in the
//! brownout run, of those issued during the brownout).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderName, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tower::buffer::Buffer;
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};
use tower_outbound::body::ReplayBody;
use tower_outbound::hedge::{HedgeCounts, HedgeLayer, HedgeStats};
use tower_outbound::partition::PartitionKey;
use tower_outbound::{BoxError, Outbound};

/// The usual answer's time.
const FAST: Duration = Duration::from_millis(2);
/// A straggler's time.
const SLOW: Duration = Duration::from_millis(300);
/// Every answer's time during the brownout.
const BROWNOUT: Duration = Duration::from_millis(30);
/// Arrival `n` is a straggler when `n % STRAGGLER_EVERY == STRAGGLER_AT`.
const STRAGGLER_EVERY: u64 = 100;
const STRAGGLER_AT: u64 = 57;
/// Client tasks, calling back to back.
const TASKS: usize = 8;
/// The header that carries the phase a request was issued in.
const PHASE_HEADER: &str = "x-bench-phase";
/// Phases of a run: warm-up and measured, or before, during and after the brownout.
const PHASES: usize = 3;
const PHASE_VALUES: [&str; PHASES] = ["0", "1", "2"];
/// The phase value that tells the client tasks to stop.
const STOP: usize = usize::MAX;

/// What the upstream shares with the benchmark.
#[derive(Debug, Default)]
struct Upstream {
    /// Requests arrived so far: the next arrival's number.
    arrivals: AtomicU64,
    /// Requests arrived, per phase of issue.
    by_phase: [AtomicU64; PHASES],
    brownout: AtomicBool,
}

async fn answer(
    request: Request<Incoming>,
    upstream: Arc<Upstream>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = upstream.arrivals.fetch_add(1, Ordering::Relaxed);
    let phase = request
        .headers()
        .get(PHASE_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok())
        .unwrap_or(0)
        .min(PHASES - 1);
    upstream.by_phase[phase].fetch_add(1, Ordering::Relaxed);
    let wait = if upstream.brownout.load(Ordering::Relaxed) {
        BROWNOUT
    } else if n % STRAGGLER_EVERY == STRAGGLER_AT {
        SLOW
    } else {
        FAST
    };
    tokio::time::sleep(wait).await;
    Ok(Response::new(Full::new(Bytes::from_static(
        b"{\"ok\":true}",
    ))))
}

/// The running upstream's server.
struct Server {
    addr: SocketAddr,
    upstream: Arc<Upstream>,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// Starts an upstream on its own thread and runtime.
    fn start() -> std::io::Result<Server> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        // Bound here, made a tokio listener on the server's runtime: this is called from the
        // client's.
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let upstream = Arc::new(Upstream::default());
        let shared = upstream.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                let accept = async {
                    while let Ok((stream, _)) = listener.accept().await {
                        let _ = stream.set_nodelay(true);
                        let upstream = shared.clone();
                        tokio::spawn(async move {
                            let service =
                                hyper::service::service_fn(move |request: Request<Incoming>| {
                                    answer(request, upstream.clone())
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

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Every hedging under test, as one service of the same request and response types; the
/// body each client needs is made below the hedging.
type Call = BoxCloneService<Request<()>, Response<Incoming>, BoxError>;

fn http_client<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

fn empty(request: Request<()>) -> Request<Empty<Bytes>> {
    request.map(|()| Empty::new())
}

fn replayable(request: Request<()>) -> Request<ReplayBody> {
    request.map(|()| ReplayBody::from_bytes(Bytes::new()))
}

/// tower's hedge policy, as its docs write one: GETs are cloned, and may be hedged.
#[derive(Clone, Copy, Debug)]
struct CloneGets;

impl tower::hedge::Policy<Request<Empty<Bytes>>> for CloneGets {
    fn clone_request(&self, request: &Request<Empty<Bytes>>) -> Option<Request<Empty<Bytes>>> {
        (request.method() == Method::GET).then(|| request.clone())
    }

    fn can_retry(&self, _request: &Request<Empty<Bytes>>) -> bool {
        true
    }
}

/// A hedging under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hedging {
    None,
    Tower,
    Resilience,
    Layer,
    LatencySensitive,
}

impl Hedging {
    const ALL: [Hedging; 5] = [
        Hedging::None,
        Hedging::Tower,
        Hedging::Resilience,
        Hedging::Layer,
        Hedging::LatencySensitive,
    ];

    fn name(self, settings: &Settings) -> String {
        let name = match self {
            Hedging::None => "none",
            Hedging::Tower => "tower `Hedge` (p95, 20 points, 2 s)",
            Hedging::Resilience => "tower-resilience hedge, 10 ms",
            Hedging::Layer => "outbound `HedgeLayer::new()`",
            Hedging::LatencySensitive => "outbound `latency_sensitive()`",
        };
        match (self, settings.over_median) {
            (Hedging::Layer | Hedging::LatencySensitive, Some(n)) => {
                format!("{name}, `over_median({n})`")
            }
            _ => name.to_owned(),
        }
    }

    /// The crate's hedge layer for this run.
    fn layer(settings: &Settings) -> HedgeLayer {
        match settings.over_median {
            Some(n) => HedgeLayer::new().over_median(n),
            None => HedgeLayer::new(),
        }
    }

    /// A fresh client wrapped in this hedging (made on the client's runtime: tower's buffer
    /// spawns its worker), and the crate's hedge counters when it is the crate's.
    fn around_fresh_client(self, settings: &Settings) -> (Call, Option<HedgeStats>) {
        match self {
            Hedging::None => {
                let client = http_client::<Empty<Bytes>>();
                let call = client.map_request(empty).map_err(BoxError::from);
                (BoxCloneService::new(call), None)
            }
            Hedging::Tower => {
                let hedge = tower::hedge::Hedge::new::<Request<Empty<Bytes>>>(
                    http_client::<Empty<Bytes>>(),
                    CloneGets,
                    20,
                    0.95,
                    Duration::from_secs(2),
                );
                let call = Buffer::new(hedge, 64).map_request(empty);
                (BoxCloneService::new(call), None)
            }
            Hedging::Resilience => {
                let layer = tower_resilience::hedge::HedgeLayer::builder()
                    .delay(Duration::from_millis(10))
                    .max_hedged_attempts(2)
                    .eligible_if(|request: &Request<Empty<Bytes>>| request.method() == Method::GET)
                    .build();
                // Its attempts' error must be `Clone`.
                let client = http_client::<Empty<Bytes>>().map_err(Arc::new);
                let call = layer
                    .layer(client)
                    .map_request(empty)
                    .map_err(BoxError::from);
                (BoxCloneService::new(call), None)
            }
            Hedging::Layer => {
                let layer = Self::layer(settings);
                let stats = layer.stats();
                let call = layer
                    .layer(http_client::<ReplayBody>())
                    .map_request(replayable)
                    .map_err(BoxError::from);
                (BoxCloneService::new(call), Some(stats))
            }
            Hedging::LatencySensitive => {
                let stack = match settings.over_median {
                    Some(_) => Outbound::latency_sensitive().hedge(Some(Self::layer(settings))),
                    None => Outbound::latency_sensitive(),
                };
                let stats = stack.hedge_layer().map(HedgeLayer::stats);
                let call = stack
                    .service(http_client::<ReplayBody>())
                    .map_request(empty)
                    .map_err(BoxError::from);
                (BoxCloneService::new(call), stats)
            }
        }
    }
}

/// The three runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Steady,
    First,
    Brownout,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Steady => "steady",
            Kind::First => "first",
            Kind::Brownout => "brownout",
        }
    }
}

/// The settings of the whole benchmark, from the environment.
#[derive(Clone, Copy, Debug)]
struct Settings {
    steady_calls: u64,
    first_calls: u64,
    warm_up: Duration,
    /// Before, during and after the brownout.
    brownout: [Duration; PHASES],
    /// The crate's layer's floor, in medians, when not its default.
    over_median: Option<u32>,
}

impl Settings {
    fn from_env() -> Self {
        let number = |name: &str, default: f64| {
            std::env::var(name)
                .ok()
                .and_then(|s| s.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v > 0.0)
                .unwrap_or(default)
        };
        let secs = |s: f64| {
            Duration::try_from_secs_f64(s)
                .unwrap_or(Duration::from_secs(1))
                .clamp(Duration::from_millis(200), Duration::from_secs(600))
        };
        let scale = number("HEDGE_BROWNOUT_SCALE", 1.0);
        Settings {
            steady_calls: number("HEDGE_CALLS", 40_000.0).round().max(100.0) as u64,
            first_calls: number("HEDGE_FIRST_CALLS", 5_000.0).round().max(100.0) as u64,
            warm_up: secs(number("HEDGE_WARMUP_SECS", 3.0)),
            brownout: [secs(5.0 * scale), secs(6.0 * scale), secs(5.0 * scale)],
            over_median: std::env::var("HEDGE_OVER_MEDIAN")
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        }
    }
}

/// What the client tasks of one run share: the phase calls are issued in, and the tickets of
/// the measured phase when it is a number of calls.
#[derive(Debug)]
struct Control {
    phase: AtomicUsize,
    /// The phase whose calls are counted out with tickets, and how many.
    counted: Option<(usize, u64)>,
    tickets: AtomicU64,
}

/// The calls issued in one phase, from one task or all of them.
#[derive(Debug, Default)]
struct Tally {
    calls: u64,
    other_status: u64,
    errors: u64,
    first_error: Option<String>,
    /// Latencies of every call (whatever its outcome), in microseconds.
    latencies: Vec<u32>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.calls += other.calls;
        self.other_status += other.other_status;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.latencies.extend(other.latencies);
    }
}

/// One task: calls back to back until the run stops it.
async fn drive(mut service: Call, uri: Uri, control: Arc<Control>) -> [Tally; PHASES] {
    let mut tallies: [Tally; PHASES] = Default::default();
    let header = HeaderName::from_static(PHASE_HEADER);
    loop {
        let phase = control.phase.load(Ordering::Acquire);
        if phase >= PHASES {
            return tallies;
        }
        if let Some((counted, calls)) = control.counted {
            if phase == counted && control.tickets.fetch_add(1, Ordering::Relaxed) >= calls {
                return tallies;
            }
        }
        let request = Request::get(uri.clone())
            .header(
                header.clone(),
                HeaderValue::from_static(PHASE_VALUES[phase]),
            )
            .body(())
            .expect("a GET with an absolute URI is valid");
        let started = Instant::now();
        let outcome = async {
            let response = service.ready().await?.call(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, BoxError>(status)
        }
        .await;
        let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        let tally = &mut tallies[phase];
        tally.calls += 1;
        tally.latencies.push(micros);
        match outcome {
            Ok(StatusCode::OK) => {}
            Ok(_) => tally.other_status += 1,
            Err(error) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }
}

/// The figures of one phase of a run.
#[derive(Debug, Default)]
struct Phase {
    tally: Tally,
    /// Requests the server received that were issued in this phase.
    arrivals: u64,
}

impl Phase {
    /// Requests added over the calls made, as a share of the calls.
    fn extra(&self) -> f64 {
        if self.tally.calls == 0 {
            0.0
        } else {
            self.arrivals as f64 / self.tally.calls as f64 - 1.0
        }
    }

    /// The latency at `quantile` (0–1) of the calls, or the longest with 1.
    fn latency(&self, quantile: f64) -> Option<Duration> {
        let sorted = &self.tally.latencies;
        if sorted.is_empty() {
            return None;
        }
        let rank = ((sorted.len() as f64 * quantile).ceil() as usize).clamp(1, sorted.len()) - 1;
        Some(Duration::from_micros(u64::from(sorted[rank])))
    }
}

/// The figures of one run of one hedging.
#[derive(Debug)]
struct Run {
    hedging: Hedging,
    name: String,
    kind: Kind,
    phases: [Phase; PHASES],
    /// The crate's hedge counters at the end of the run, and its delay then.
    counts: Option<(HedgeCounts, Option<Duration>)>,
    took: Duration,
}

impl Run {
    /// The phase the latencies and the extra load are reported for.
    fn measured(&self) -> &Phase {
        &self.phases[1]
    }
}

/// Runs one hedging through one run, on a server and a client of its own.
async fn run(hedging: Hedging, kind: Kind, settings: &Settings) -> std::io::Result<Run> {
    let server = Server::start()?;
    let uri: Uri = format!("http://{}/items/42", server.addr)
        .parse()
        .expect("a loopback URI is valid");
    let (service, stats) = hedging.around_fresh_client(settings);
    let (first_phase, counted) = match kind {
        Kind::Steady => (0, Some((1, settings.steady_calls))),
        Kind::First => (1, Some((1, settings.first_calls))),
        Kind::Brownout => (0, None),
    };
    let control = Arc::new(Control {
        phase: AtomicUsize::new(first_phase),
        counted,
        tickets: AtomicU64::new(0),
    });
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| tokio::spawn(drive(service.clone(), uri.clone(), control.clone())))
        .collect();
    drop(service);
    match kind {
        Kind::Steady => {
            tokio::time::sleep(settings.warm_up).await;
            control.phase.store(1, Ordering::Release);
        }
        Kind::First => {}
        Kind::Brownout => {
            let [before, during, after] = settings.brownout;
            tokio::time::sleep(before).await;
            server.upstream.brownout.store(true, Ordering::Relaxed);
            control.phase.store(1, Ordering::Release);
            tokio::time::sleep(during).await;
            server.upstream.brownout.store(false, Ordering::Relaxed);
            control.phase.store(2, Ordering::Release);
            tokio::time::sleep(after).await;
            control.phase.store(STOP, Ordering::Release);
        }
    }
    let mut tallies: [Tally; PHASES] = Default::default();
    for task in tasks {
        let from_task = task.await.expect("a client task does not panic");
        for (tally, more) in tallies.iter_mut().zip(from_task) {
            tally.merge(more);
        }
    }
    let took = started.elapsed();
    // The losers of the last races may still be on their way to the server.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut phases = tallies.map(|mut tally| {
        tally.latencies.sort_unstable();
        Phase { tally, arrivals: 0 }
    });
    for (phase, arrived) in phases.iter_mut().zip(&server.upstream.by_phase) {
        phase.arrivals = arrived.load(Ordering::Relaxed);
    }
    let key = PartitionKey::from(format!("http://{}", server.addr));
    let counts = stats.map(|stats| (stats.counts(), stats.delay_of(&key)));
    server.stop();
    Ok(Run {
        hedging,
        name: hedging.name(settings),
        kind,
        phases,
        counts,
        took,
    })
}

fn millis(duration: Option<Duration>) -> String {
    duration.map_or("—".to_owned(), |d| {
        format!("{:.1}", d.as_secs_f64() * 1e3)
    })
}

fn percent(share: f64) -> String {
    format!("{:+.2} %", share * 100.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn counts(run: &Run) -> String {
    match run.counts {
        None => "—".to_owned(),
        Some((counts, delay)) => format!(
            "{} sent, {} won, {} refused by the budget, {} by state; delay at the end {} ms",
            counts.sent,
            counts.won,
            counts.refused_budget,
            counts.refused_state,
            millis(delay),
        ),
    }
}

fn main() -> std::io::Result<()> {
    let began = Instant::now();
    let settings = Settings::from_env();
    // The client's runtime: one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(measure(&settings))?;
    println!("\nRan in {:.0} s.", began.elapsed().as_secs_f64());
    Ok(())
}

/// Runs every hedging through every run and prints the tables and the targets.
async fn measure(settings: &Settings) -> std::io::Result<()> {
    let only = |name: &str| -> Option<Vec<String>> {
        std::env::var(name)
            .ok()
            .map(|s| s.split(',').map(|p| p.trim().to_owned()).collect())
    };
    let (rows, kinds) = (only("HEDGE_ROWS"), only("HEDGE_RUNS"));
    let [before, during, after] = settings.brownout;
    println!(
        "Upstream: {} ms, arrival n % {STRAGGLER_EVERY} == {STRAGGLER_AT} after {} ms; {TASKS} \
         tasks back to back. steady: {:.1} s warm-up, then {} calls; first: {} calls; brownout: \
         {:.1} s, then {:.1} s at {} ms, then {:.1} s.\n",
        FAST.as_millis(),
        SLOW.as_millis(),
        settings.warm_up.as_secs_f64(),
        settings.steady_calls,
        settings.first_calls,
        before.as_secs_f64(),
        during.as_secs_f64(),
        BROWNOUT.as_millis(),
        after.as_secs_f64(),
    );
    println!("| run | hedging | calls | p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | extra |");
    println!("|---|---|--:|--:|--:|--:|--:|--:|");
    let mut runs = Vec::new();
    for kind in [Kind::Steady, Kind::First, Kind::Brownout] {
        if kinds
            .as_ref()
            .is_some_and(|k| !k.iter().any(|k| k == kind.name()))
        {
            continue;
        }
        for hedging in Hedging::ALL {
            if rows.as_ref().is_some_and(|r| {
                !r.iter()
                    .any(|r| hedging.name(settings).contains(r.as_str()))
            }) {
                continue;
            }
            let run = run(hedging, kind, settings).await?;
            let measured = run.measured();
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                kind.name(),
                run.name,
                measured.tally.calls,
                millis(measured.latency(0.5)),
                millis(measured.latency(0.99)),
                millis(measured.latency(0.999)),
                millis(measured.latency(1.0)),
                percent(measured.extra()),
            );
            let failed: u64 = run
                .phases
                .iter()
                .map(|p| p.tally.errors + p.tally.other_status)
                .sum();
            if failed > 0 {
                let first = run
                    .phases
                    .iter()
                    .find_map(|p| p.tally.first_error.as_deref());
                println!(
                    "|   ↳ {failed} calls failed (first error: {}) | | | | | | | |",
                    first.unwrap_or("a status other than 200"),
                );
            }
            runs.push(run);
        }
    }

    let mut report = String::new();
    let brownouts: Vec<&Run> = runs.iter().filter(|r| r.kind == Kind::Brownout).collect();
    if !brownouts.is_empty() {
        let _ = writeln!(
            report,
            "\nThe brownout run, phase by phase (calls issued in the phase, and the extra requests \
             the server received for them):\n"
        );
        let _ = writeln!(
            report,
            "| hedging | calls before | extra before | calls during | extra during | p99 during \
             (ms) | calls after | extra after | p99.9 after (ms) |"
        );
        let _ = writeln!(report, "|---|--:|--:|--:|--:|--:|--:|--:|--:|");
        for run in &brownouts {
            let [before, during, after] = &run.phases;
            let _ = writeln!(
                report,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                run.name,
                before.tally.calls,
                percent(before.extra()),
                during.tally.calls,
                percent(during.extra()),
                millis(during.latency(0.99)),
                after.tally.calls,
                percent(after.extra()),
                millis(after.latency(0.999)),
            );
        }
    }

    let _ = writeln!(
        report,
        "\nThe crate's hedge counters at the end of each run:\n"
    );
    for run in runs.iter().filter(|r| r.counts.is_some()) {
        let _ = writeln!(
            report,
            "- {}, {} ({:.1} s): {}",
            run.kind.name(),
            run.name,
            run.took.as_secs_f64(),
            counts(run),
        );
    }

    let find = |kind: Kind, hedging: Hedging| {
        runs.iter()
            .find(|r| r.kind == kind && r.hedging == hedging)
            .map(Run::measured)
    };
    let ours = [Hedging::Layer, Hedging::LatencySensitive];
    let _ = writeln!(report, "\nTargets:\n");
    if let Some(tower) = find(Kind::Steady, Hedging::Tower) {
        for hedging in ours {
            let Some(mine) = find(Kind::Steady, hedging) else {
                continue;
            };
            let (p, theirs) = (mine.latency(0.999), tower.latency(0.999));
            let _ = writeln!(
                report,
                "- steady, {}: p99.9 {} ms against tower's {} ms, extra {} against tower's {}: {}",
                hedging.name(settings),
                millis(p),
                millis(theirs),
                percent(mine.extra()),
                percent(tower.extra()),
                verdict(p <= theirs && mine.extra() <= tower.extra()),
            );
        }
    }
    if let Some(resilience) = find(Kind::First, Hedging::Resilience) {
        for hedging in ours {
            let Some(mine) = find(Kind::First, hedging) else {
                continue;
            };
            let (p, theirs) = (mine.latency(0.999), resilience.latency(0.999));
            let _ = writeln!(
                report,
                "- first {} calls, {}: p99.9 {} ms against tower-resilience's hand-tuned {} ms, \
                 extra {} (at most +2 %): {}",
                settings.first_calls,
                hedging.name(settings),
                millis(p),
                millis(theirs),
                percent(mine.extra()),
                verdict(p <= theirs && mine.extra() <= 0.02),
            );
        }
    }
    let tower_brownout = find(Kind::Brownout, Hedging::Tower);
    for hedging in ours {
        let Some(mine) = find(Kind::Brownout, hedging) else {
            continue;
        };
        let _ = writeln!(
            report,
            "- brownout, {}: extra during it {} (budget +5 %; tower's {}): {}",
            hedging.name(settings),
            percent(mine.extra()),
            tower_brownout.map_or("—".to_owned(), |t| percent(t.extra())),
            verdict(mine.extra() <= 0.05),
        );
    }
    print!("{report}");
    Ok(())
}
