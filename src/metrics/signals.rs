//! The five signals, read in process: for a job's final report.

use std::fmt;
use std::sync::atomic::Ordering;

use crate::circuit::CircuitState;
use crate::concurrency::LimitState;

use super::{sink, upstream};

/// The five signals to alert on, per upstream, as counted by this process since it started:
/// what a job prints in its final report. Take one with [`Signals::snapshot`]; its `Display`
/// is a small table.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Signals {
    /// One row per upstream that had calls, sorted by label.
    pub upstreams: Vec<UpstreamSignals>,
    /// One row per [`MeteredSink`](super::MeteredSink) that has published its depth.
    pub dead_letters: Vec<SinkSignals>,
}

/// The signals of one upstream.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct UpstreamSignals {
    /// `scheme://host:port`, `other` past the cap, `none` for relative URIs.
    pub upstream: String,
    /// Logical calls ended.
    pub calls: u64,
    /// Attempts sent (refused ones included).
    pub attempts: u64,
    /// Attempts after the first, over all calls (signal 1: the retry rate).
    pub retries: u64,
    /// Calls that took more than one attempt, whatever their outcome.
    pub retried_calls: u64,
    /// Calls that succeeded on the first attempt.
    pub successes: u64,
    /// Calls that succeeded after at least one retry (signal 2).
    pub successes_after_retry: u64,
    /// Calls that failed for good: an error, or a final non-success response (signal 3).
    pub failed: u64,
    /// Calls refused before reaching the upstream (throttle, gate, open circuit).
    pub refused: u64,
    /// The breaker's state, when one reports it (signal 4).
    pub circuit: Option<CircuitState>,
    /// The concurrency limit's figures at their last change, when a
    /// [`ConcurrencyLayer`](crate::ConcurrencyLayer) reports them (signal 6).
    pub concurrency: Option<LimitState>,
}

impl UpstreamSignals {
    /// Retries per call (0 without calls).
    pub fn retry_rate(&self) -> f64 {
        ratio(self.retries, self.calls)
    }

    /// Of the calls that took more than one attempt, the share that succeeded; `None` when
    /// no call needed a retry. Above 0.9 is healthy; under 0.5 the retries are not helping.
    pub fn success_after_retry_rate(&self) -> Option<f64> {
        (self.retried_calls > 0).then(|| ratio(self.successes_after_retry, self.retried_calls))
    }
}

/// The dead-letter signals of one sink (signal 5).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct SinkSignals {
    /// The `sink` label.
    pub sink: String,
    /// Letters kept.
    pub depth: u64,
    /// Age of the oldest letter in seconds, `None` when empty.
    pub oldest_age_seconds: Option<f64>,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl Signals {
    /// The signals now.
    pub fn snapshot() -> Self {
        let upstreams = upstream::all()
            .into_iter()
            .map(|(label, counts)| {
                let calls = |i: usize| counts.calls[i].load(Ordering::Relaxed);
                UpstreamSignals {
                    calls: (0..4).map(calls).sum(),
                    attempts: counts.attempts.load(Ordering::Relaxed),
                    retries: counts.retries.load(Ordering::Relaxed),
                    retried_calls: counts.retried_calls.load(Ordering::Relaxed),
                    successes: calls(0),
                    successes_after_retry: calls(1),
                    failed: calls(2),
                    refused: calls(3),
                    circuit: (counts.circuit_known.load(Ordering::Relaxed) > 0).then(
                        || match counts.circuit.load(Ordering::Relaxed) {
                            0 => CircuitState::Closed,
                            1 => CircuitState::HalfOpen,
                            _ => CircuitState::Open,
                        },
                    ),
                    concurrency: (counts.concurrency_known.load(Ordering::Relaxed) > 0).then(
                        || {
                            let [limit, in_flight, queued] = counts
                                .concurrency
                                .each_ref()
                                .map(|c| c.load(Ordering::Relaxed));
                            LimitState {
                                limit,
                                in_flight,
                                queued,
                            }
                        },
                    ),
                    upstream: label,
                }
            })
            .collect();
        let dead_letters = sink::all()
            .into_iter()
            .map(|(sink, depth, oldest_age_seconds)| SinkSignals {
                sink,
                depth,
                oldest_age_seconds,
            })
            .collect();
        Signals {
            upstreams,
            dead_letters,
        }
    }

    /// The row of `upstream` (`scheme://host:port`), if it had calls.
    pub fn upstream(&self, upstream: &str) -> Option<&UpstreamSignals> {
        self.upstreams.iter().find(|u| u.upstream == upstream)
    }
}

impl fmt::Display for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<32} {:>7} {:>8} {:>10} {:>12} {:>7} {:>7}  circuit",
            "upstream", "calls", "retries", "retry/call", "ok-after-try", "failed", "refused"
        )?;
        for u in &self.upstreams {
            let after_retry = match u.success_after_retry_rate() {
                Some(rate) => format!("{:.0} %", rate * 100.0),
                None => "-".to_owned(),
            };
            let circuit = match u.circuit {
                Some(CircuitState::Closed) => "closed",
                Some(CircuitState::HalfOpen) => "half-open",
                Some(CircuitState::Open) => "open",
                None => "-",
            };
            writeln!(
                f,
                "{:<32} {:>7} {:>8} {:>10.2} {:>12} {:>7} {:>7}  {circuit}",
                u.upstream,
                u.calls,
                u.retries,
                u.retry_rate(),
                after_retry,
                u.failed,
                u.refused,
            )?;
        }
        for u in &self.upstreams {
            if let Some(c) = u.concurrency {
                writeln!(
                    f,
                    "concurrency limit ({}): {}, {} in flight, {} queued",
                    u.upstream, c.limit, c.in_flight, c.queued
                )?;
            }
        }
        for s in &self.dead_letters {
            match s.oldest_age_seconds {
                Some(age) => writeln!(
                    f,
                    "dead letters ({}): {} kept, oldest {age:.0} s old",
                    s.sink, s.depth
                )?,
                None => writeln!(f, "dead letters ({}): none kept", s.sink)?,
            }
        }
        Ok(())
    }
}
