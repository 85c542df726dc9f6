//! The retry decision: after each attempt, wait and try again, or return. One implementation,
//! driven by the retry layer's future and by [`Outbound`](crate::Outbound)'s call alike.

use std::fmt;
use std::time::Duration;

use http::uri::Authority;
use http::Response;
use tokio::time::Instant;

use super::budget::Allowance;
use super::layer::Config;
use super::Attempts;
use crate::classify::Outcome;
use crate::error::Error;
use crate::rate_limit::RateLimitInfo;

/// Where one logical call stands: what the retry decision reads and updates.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Progress {
    /// Attempts made, the one just finished included.
    pub(crate) attempts: u32,
    /// Time slept between attempts so far.
    pub(crate) waited: Duration,
    /// The last delay slept (for decorrelated jitter).
    pub(crate) previous_delay: Duration,
    /// Whether the method and headers allow sending the request more than once.
    pub(crate) may_retry: bool,
    /// Whether the attempt just finished may be followed by another (the method allows it,
    /// attempts are left, and the body was kept).
    pub(crate) repeatable: bool,
    /// The instant the whole call must be over.
    pub(crate) deadline: Option<Instant>,
}

impl Progress {
    /// A call not started yet.
    pub(crate) fn new(may_retry: bool, deadline: Option<Instant>) -> Self {
        Progress {
            attempts: 0,
            waited: Duration::ZERO,
            previous_delay: Duration::ZERO,
            may_retry,
            repeatable: false,
            deadline,
        }
    }

    /// Counts the attempt about to be sent; `replayable`: the body can be sent again.
    pub(crate) fn start_attempt(&mut self, config: &Config, replayable: bool) {
        self.attempts = self.attempts.saturating_add(1);
        self.repeatable = self.may_retry && self.attempts < config.max_attempts && replayable;
    }
}

/// What a finished attempt leads to.
pub(crate) enum Next<R> {
    /// Sleep until `until`, then send the next attempt.
    Retry { until: Instant },
    /// The call is over.
    Return(Result<Response<R>, Error>),
}

/// Why no further attempt is made after a retryable outcome.
#[derive(Clone, Copy, Debug)]
enum GiveUp {
    /// The method is not safe to repeat, or the body could not be kept.
    NotRepeatable,
    /// The attempt cap was reached.
    Exhausted,
    /// The next wait would overrun the total wait budget or the call's deadline.
    Budget,
    /// The server asked for a longer wait than the layer sleeps.
    TooLong(Duration),
    /// The upstream's retry budget is spent.
    RetryBudget,
}

/// Decides what follows an attempt that ended with `result`, classified as `outcome`. `info`
/// gives the response's rate-limit headers, asked only for a retryable response.
#[inline]
pub(crate) fn next<R>(
    config: &Config,
    progress: &mut Progress,
    budget: Option<&Allowance>,
    upstream: Option<&Authority>,
    result: Result<Response<R>, Error>,
    outcome: Outcome,
    info: impl FnOnce(&mut Response<R>) -> Option<RateLimitInfo>,
) -> Next<R> {
    match result {
        Ok(mut response) => {
            if !outcome.is_retryable() {
                return Next::Return(Ok(finish(response, outcome, progress, None, config)));
            }
            let hint = info(&mut response).and_then(|info| server_wait(&info, outcome));
            match plan(config, progress, hint, budget) {
                Ok(delay) => {
                    log_retry(progress.attempts, delay, &response.status(), upstream);
                    Next::Retry {
                        until: schedule(config, progress, delay, hint.is_some()),
                    }
                }
                Err(give_up) => {
                    if progress.may_retry {
                        config.stats.record_give_up();
                    }
                    let retry_after = match give_up {
                        GiveUp::TooLong(wait) => Some(wait),
                        GiveUp::Budget => hint,
                        GiveUp::NotRepeatable | GiveUp::Exhausted | GiveUp::RetryBudget => None,
                    };
                    Next::Return(Ok(finish(response, outcome, progress, retry_after, config)))
                }
            }
        }
        Err(mut err) => {
            err.set_upstream(upstream);
            if outcome.is_retryable() {
                let hint = err.retry_after();
                match plan(config, progress, hint, budget) {
                    Ok(delay) => {
                        log_retry(progress.attempts, delay, &err, upstream);
                        return Next::Retry {
                            until: schedule(config, progress, delay, hint.is_some()),
                        };
                    }
                    Err(_) => {
                        if progress.may_retry {
                            config.stats.record_give_up();
                        }
                    }
                }
            }
            err.set_attempts(progress.attempts, progress.waited);
            Next::Return(Err(err))
        }
    }
}

/// The wait the server asked for on a retryable response: `Retry-After`, the reset of a
/// used-up quota, or for a 429 without either, the reset of its quota.
fn server_wait(info: &RateLimitInfo, outcome: Outcome) -> Option<Duration> {
    info.wait().or(match outcome {
        Outcome::RateLimited => info.reset,
        _ => None,
    })
}

/// The delay before the next attempt, or why there is none.
fn plan(
    config: &Config,
    progress: &Progress,
    hint: Option<Duration>,
    budget: Option<&Allowance>,
) -> Result<Duration, GiveUp> {
    if let Some(wait) = hint {
        if wait > config.max_retry_after {
            return Err(GiveUp::TooLong(wait));
        }
    }
    if progress.attempts >= config.max_attempts {
        return Err(GiveUp::Exhausted);
    }
    if !progress.repeatable {
        return Err(GiveUp::NotRepeatable);
    }
    let delay = match hint {
        Some(wait) => wait.saturating_add(
            config
                .rng
                .uniform(Duration::ZERO, config.retry_after_jitter),
        ),
        None => config.rng.backoff(
            &config.backoff,
            progress.attempts.saturating_sub(1),
            progress.previous_delay,
        ),
    };
    // The server's own wait must fit; our jitter on top of it may be trimmed.
    let mut left = config.max_total_delay.saturating_sub(progress.waited);
    if let Some(deadline) = progress.deadline {
        left = left.min(deadline.saturating_duration_since(Instant::now()));
    }
    let delay = match hint {
        Some(wait) if wait <= left => delay.min(left),
        None if delay <= left => delay,
        _ => return Err(GiveUp::Budget),
    };
    // Last, so that only a retry that would otherwise be made spends the budget.
    if budget.is_some_and(|b| !b.withdraw(Instant::now())) {
        config.stats.record_budget_exhausted();
        if let Some(b) = &config.budget {
            b.refused();
        }
        return Err(GiveUp::RetryBudget);
    }
    Ok(delay)
}

/// Counts the retry and returns when its wait ends.
fn schedule(
    config: &Config,
    progress: &mut Progress,
    delay: Duration,
    server_named: bool,
) -> Instant {
    config.stats.record_retry(delay, server_named);
    progress.previous_delay = delay;
    progress.waited = progress.waited.saturating_add(delay);
    crate::handoff::instant_after(Instant::now(), delay)
}

fn log_retry(
    attempt: u32,
    delay: Duration,
    reason: &dyn fmt::Display,
    upstream: Option<&Authority>,
) {
    let host = upstream.map(crate::redact::authority_without_userinfo);
    let host = host.as_ref().map(Authority::as_str).unwrap_or("");
    tracing::info!(
        attempt,
        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        reason = %reason,
        host,
        "retrying request"
    );
}

/// Marks the final response with [`Attempts`] when there was more than one attempt or a
/// server-requested wait was not slept on, and counts the outcome.
fn finish<R>(
    mut response: Response<R>,
    outcome: Outcome,
    progress: &Progress,
    retry_after: Option<Duration>,
    config: &Config,
) -> Response<R> {
    if progress.attempts > 1 && outcome.is_success() {
        config.stats.record_success_after_retry();
    }
    if progress.attempts > 1 || retry_after.is_some() {
        response.extensions_mut().insert(Attempts {
            count: progress.attempts,
            waited: progress.waited,
            retry_after: retry_after.map(|wait| (wait, crate::error::system_time_after(wait))),
        });
    }
    response
}

/// The error of a call whose deadline passed while it was pending.
pub(crate) fn deadline_passed(upstream: Option<&Authority>, progress: &Progress) -> Error {
    let mut err = Error::timed_out().for_upstream(upstream);
    err.set_attempts(progress.attempts, progress.waited);
    err
}
