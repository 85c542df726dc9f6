//! The main job: ingest a large batch of events into Lehnz through the client, and show that
//! none is lost.
//!
//! By default it starts the Lehnz simulator on 127.0.0.1 with a chaos profile (429s, 5xx,
//! dropped connections, "processed then dropped") and a rate-limit window scaled down so the
//! run takes well under a minute, then ingests the events with a progress bar and prints a
//! report, including the simulator's own count of stored events and duplicate ids.
//!
//! ```text
//! cargo run --release --example lehnz_sync [-- --events 100000 --seed 7 --dead-letters PATH]
//!
//! Batches that still fail after the retries go to a JSON Lines dead-letter file (in the
//! system's temporary directory unless `--dead-letters` names one), and are replayed once at
//! the end; the report counts an event as lost only if it is neither stored nor in that file.
//! LEHNZ_API_KEY=... cargo run --release --example lehnz_sync -- --base-url https://api.lehnz.com
//! ```

use std::collections::HashSet;
use std::time::{Duration, Instant};

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use tower_outbound::dead_letter::StoredBody;
use tower_outbound::lehnz::sim::{Chaos, Simulator};
use tower_outbound::lehnz::{Client, Event, LehnzError};
use tower_outbound::{JsonLinesSink, Sink};

struct Args {
    events: usize,
    seed: u64,
    base_url: Option<String>,
    chunk: usize,
    dead_letters: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        events: 100_000,
        seed: 7,
        base_url: None,
        chunk: 20_000,
        dead_letters: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--events" => {
                args.events = value("--events")?
                    .parse()
                    .map_err(|e| format!("--events: {e}"))?
            }
            "--seed" => {
                args.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--base-url" => args.base_url = Some(value("--base-url")?),
            "--dead-letters" => args.dead_letters = Some(value("--dead-letters")?),
            "--chunk" => {
                args.chunk = value("--chunk")?
                    .parse::<usize>()
                    .map_err(|e| format!("--chunk: {e}"))?
                    .max(1)
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn generate(n: usize) -> Vec<Event> {
    let kinds = ["view", "view", "view", "click", "add_to_cart", "purchase"];
    (0..n)
        .map(|i| {
            Event::new(
                format!("user-{}", (i * 7919) % 5_000),
                format!("item-{}", (i * 104_729) % 20_000),
                kinds[i % kinds.len()],
            )
            .at(format!("2026-11-24T12:{:02}:{:02}Z", (i / 60) % 60, i % 60))
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let (sim, key, base_url) = match &args.base_url {
        Some(url) => {
            let key = std::env::var("LEHNZ_API_KEY")
                .map_err(|_| "set LEHNZ_API_KEY to talk to a real endpoint")?;
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
    let dead_letter_path = args
        .dead_letters
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("lehnz-sync-{}.jsonl", std::process::id()))
        });
    let client = Client::builder(&key)
        .base_url(&base_url)
        .concurrency(8)
        .stack(|s| {
            let s = s.retry_seed(args.seed).dead_letter_file(&dead_letter_path);
            if sim.is_some() {
                // The simulator's scaled-down window.
                s.throttle(Some((100, Duration::from_secs(5))))
            } else {
                s
            }
        })
        .build()?;

    let mut events = generate(args.events);
    println!(
        "ingesting {} events into {base_url}{}",
        events.len(),
        if sim.is_some() {
            " (simulator, chaos on)"
        } else {
            ""
        }
    );
    let bar = ProgressBar::new(events.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events  {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let (mut accepted, mut requests, mut failed_records) = (0usize, 0usize, 0usize);
    let mut dead_lettered = 0usize;
    let mut errors: Vec<LehnzError> = Vec::new();
    for chunk in events.chunks_mut(args.chunk) {
        let summary = client.ingest_events(chunk).await?;
        accepted += summary.accepted;
        requests += summary.requests;
        failed_records += summary.rejected.len();
        dead_lettered += summary.dead_lettered;
        errors.extend(summary.errors);
        bar.inc(chunk.len() as u64);
        bar.set_message(format!("{failed_records} not accepted"));
    }
    bar.finish();
    let elapsed = started.elapsed();

    // What still failed is in the dead-letter file: send it once more.
    let sink = JsonLinesSink::new(&dead_letter_path);
    let replay = client.replay_dead_letters(&sink).await?;
    let still_dead = sink.read_all().await?;

    println!();
    println!("report");
    println!("  events                 {}", events.len());
    println!("  accepted               {accepted}");
    println!("  not accepted           {failed_records}");
    println!(
        "  dead-lettered          {dead_lettered} (file {})",
        dead_letter_path.display()
    );
    println!(
        "  replayed at the end    {} batches, {} delivered, {} still dead",
        replay.replayed,
        replay.succeeded,
        still_dead.len()
    );
    println!("  batches (requests)     {requests}");
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
                "  throttle               {} at once, {} paced ({:.1?} waited), {} views adopted",
                throttle.immediate(),
                throttle.delayed(),
                throttle.waited(),
                throttle.adjustments()
            );
        }
        if let Some(breaker) = stats.circuit_breaker() {
            println!(
                "  circuit breaker        opened {} times, {} calls refused",
                breaker.times_opened(),
                breaker.rejected()
            );
        }
    }
    println!("  wall time              {elapsed:.1?}");
    let mut kinds: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    kinds.sort();
    kinds.dedup();
    for kind in kinds.iter().take(5) {
        println!("  batch error            {kind}");
    }
    if let Some(sim) = sim {
        let stats = sim.stats();
        let ids: HashSet<&str> = events.iter().filter_map(Event::client_event_id).collect();
        let stored: HashSet<String> = sim
            .events()
            .iter()
            .filter_map(|e| e["context"]["client_event_id"].as_str().map(str::to_owned))
            .collect();
        let dead: HashSet<String> = still_dead
            .iter()
            .filter_map(|letter| match &letter.body {
                Some(StoredBody::Text(body)) => serde_json::from_str::<Vec<Event>>(body).ok(),
                _ => None,
            })
            .flatten()
            .filter_map(|e| e.client_event_id().map(str::to_owned))
            .collect();
        let lost = ids
            .iter()
            .filter(|id| !stored.contains(**id) && !dead.contains(**id))
            .count();
        println!("simulator");
        println!("  events stored          {}", stats.events);
        println!("  distinct event ids     {}", stats.distinct_event_ids);
        println!("  duplicate ids          {}", stats.duplicate_event_ids);
        println!("  429s sent              {}", stats.rate_limited);
        println!("  connections dropped    {}", stats.connections_dropped);
        println!("  responses by status    {:?}", stats.responses_by_status);
        println!(
            "  lost                   {lost} (events neither stored nor in the dead-letter file)"
        );
        sim.shutdown().await;
        if lost > 0 {
            return Err(format!("{lost} events were lost").into());
        }
    }
    Ok(())
}
