//! The Lehnz simulator as a process of its own, so a job can be killed and started again
//! against the same server (and the same stored events).
//!
//! ```text
//! cargo run --release --features lehnz,sim --example lehnz_sim [-- --serve 127.0.0.1:8787 --seed 7 --no-chaos]
//! ```
//!
//! It starts with the settings `lehnz_sync` uses for its own simulator: organization `acme`,
//! a rate-limit window of 100 requests per 5 s (Lehnz's 1,000 per 15 minutes, scaled down) and
//! the flaky chaos profile (429s, 5xx, dropped connections), then prints two lines a program can
//! read, and serves:
//!
//! ```text
//! url=http://127.0.0.1:8787
//! key=lehnz_sk_test_acme
//! ```
//!
//! Point a client at it with `--base-url` and `LEHNZ_API_KEY`. `GET /_sim/stats` returns what
//! it stored so far as JSON. It runs until SIGTERM or ctrl-c, or, when its standard input is a
//! pipe, until the pipe closes (so it ends with the parent that started it); then it prints its
//! stats as `name=value` lines and exits.
//!
//! Flags: `--serve ADDR` (a loopback address; default `127.0.0.1:0`, a free port), `--seed N`
//! (chaos seed, default 7), `--window LIMIT/SECONDS` (default `100/5`), `--no-chaos`,
//! `--org NAME` (default `acme`), `--keep-bodies` (keep every event as sent; by default only ids
//! and counts are kept, a million events in tens of MB), `--outages EVERY/LASTING` (periodic
//! outages, in seconds: `--outages 30/6` is down 6 s every 30 s).
//!
//! An outage on demand, without stopping the process (its counts are kept):
//!
//! ```text
//! curl -X POST 'http://127.0.0.1:8787/_sim/outage?secs=6'
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tower_outbound::lehnz::sim::{Chaos, SimStats, Simulator};

struct Args {
    serve: SocketAddr,
    seed: u64,
    window: (u32, Duration),
    chaos: bool,
    org: String,
    keep_bodies: bool,
    outages: Option<(Duration, Duration)>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        serve: SocketAddr::from(([127, 0, 0, 1], 0)),
        seed: 7,
        window: (100, Duration::from_secs(5)),
        chaos: true,
        org: "acme".to_owned(),
        keep_bodies: false,
        outages: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--serve" => {
                args.serve = value("--serve")?.parse().map_err(|e| {
                    format!("--serve: {e} (expected an address like 127.0.0.1:8787)")
                })?
            }
            "--seed" => {
                args.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--window" => args.window = window(&value("--window")?)?,
            "--org" => args.org = value("--org")?,
            "--no-chaos" => args.chaos = false,
            "--keep-bodies" => args.keep_bodies = true,
            "--outages" => args.outages = Some(outages(&value("--outages")?)?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// `LIMIT/SECONDS`, for example `100/5`.
fn window(text: &str) -> Result<(u32, Duration), String> {
    let wrong = || format!("--window {text:?}: expected LIMIT/SECONDS, for example 100/5");
    let (limit, secs) = text.split_once('/').ok_or_else(wrong)?;
    let limit: u32 = limit.trim().parse().map_err(|_| wrong())?;
    let secs: f64 = secs.trim().parse().map_err(|_| wrong())?;
    let period = Duration::try_from_secs_f64(secs).map_err(|_| wrong())?;
    Ok((limit, period))
}

/// `EVERY/LASTING` in seconds, for example `30/6`.
fn outages(text: &str) -> Result<(Duration, Duration), String> {
    let wrong =
        || format!("--outages {text:?}: expected EVERY/LASTING in seconds, for example 30/6");
    let (every, lasting) = text.split_once('/').ok_or_else(wrong)?;
    let secs = |v: &str| {
        v.trim()
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .ok_or_else(wrong)
    };
    Ok((secs(every)?, secs(lasting)?))
}

/// Resolves when the process is asked to stop: SIGTERM, ctrl-c, or the end of a piped stdin.
async fn stopped() -> &'static str {
    let stdin_closed = async {
        if stdin_is_pipe() {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 256];
            // Whatever is written is ignored; the end of the pipe is the signal.
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        } else {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term => "terminated",
        _ = stdin_closed => "stdin closed",
    }
}

#[cfg(unix)]
fn stdin_is_pipe() -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata("/dev/stdin").is_ok_and(|m| m.file_type().is_fifo())
}

#[cfg(not(unix))]
fn stdin_is_pipe() -> bool {
    false
}

fn print_stats(stats: &SimStats) {
    println!("events_stored={}", stats.events);
    println!("distinct_event_ids={}", stats.distinct_event_ids);
    println!("duplicate_event_ids={}", stats.duplicate_event_ids);
    println!("duplicate_events={}", stats.duplicate_events);
    println!("rate_limited={}", stats.rate_limited);
    println!("rate_limited_injected={}", stats.rate_limited_injected);
    println!("rate_limited_window={}", stats.rate_limited_window);
    println!("windows_opened={}", stats.windows_opened);
    println!("window_idle_ms={}", stats.window_idle_ms);
    println!("window_unused={}", stats.window_unused);
    println!("connections_dropped={}", stats.connections_dropped);
    println!("outages={}", stats.outages);
    println!("refused_in_outage={}", stats.refused_in_outage);
    let statuses: Vec<String> = stats
        .responses_by_status
        .iter()
        .map(|(status, n)| format!("{status}:{n}"))
        .collect();
    println!("responses={}", statuses.join(","));
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let mut chaos = if args.chaos {
        Chaos::flaky()
    } else {
        Chaos::none()
    };
    if let Some((every, lasting)) = args.outages {
        chaos = chaos.outages(every, lasting);
    }
    let sim = Simulator::builder()
        .org(&args.org)
        .window(args.window.0, args.window.1)
        .chaos(chaos)
        .seed(args.seed)
        .keep_bodies(args.keep_bodies)
        .addr(args.serve)
        .start()
        .await?;
    let key = sim.keys(&args.org).ok_or("simulator has no keys")?.secret;
    // Two lines for programs to read; stdout is line-buffered, so each leaves at once.
    println!("url={}", sim.base_url());
    println!("key={key}");

    let why = stopped().await;
    eprintln!("lehnz_sim: {why}; stopping");
    let stats = sim.stats();
    sim.shutdown().await;
    print_stats(&stats);
    Ok(())
}
