use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use http::{request::Parts, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::budget::Allowance;
use super::layer::Config;
use super::Attempts;
use crate::body::{Buffer, Buffered, ReplayBody};
use crate::classify::{Attempt, Classify, Outcome};
use crate::deadline::Timer;
use crate::error::{BoxError, Error, Kind};
use crate::rate_limit::RateLimitInfo;

pin_project! {
    /// The response future of [`Retry`](super::Retry): reads the body once, then runs attempts
    /// and the waits between them until one is final.
    #[project = ResponseFutureProj]
    pub struct ResponseFuture<S, C, B>
    where
        S: Service<Request<ReplayBody>>,
    {
        #[pin]
        state: State<S::Future, B>,
        // One timer for the call: the deadline while an attempt runs, the wake-up while
        // waiting between attempts. Armed only when the call is pending.
        #[pin]
        timer: Timer,
        inner: S,
        config: Arc<Config>,
        classify: C,
        // The request head, kept for the next attempt while one may come.
        parts: Option<Parts>,
        body: Option<Buffered>,
        may_retry: bool,
        // Whether the attempt in flight may be followed by another.
        repeatable: bool,
        budget: Option<Arc<Allowance>>,
        upstream: Option<Authority>,
        deadline: Option<Instant>,
        attempts: u32,
        waited: Duration,
        previous_delay: Duration,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Buffering { #[pin] buffer: Buffer<B> },
        Ready,
        Calling { #[pin] future: F },
        Waiting { until: Instant },
    }
}

impl<S, C, B> ResponseFuture<S, C, B>
where
    S: Service<Request<ReplayBody>>,
{
    pub(crate) fn new(
        inner: S,
        config: Arc<Config>,
        classify: C,
        parts: Parts,
        buffer: Buffer<B>,
        budget: Option<Arc<Allowance>>,
        deadline: Option<Instant>,
    ) -> Self {
        let may_retry = config.max_attempts > 1 && config.may_retry(&parts.method, &parts.headers);
        // Kept as it is (a reference count); its userinfo is dropped where it is shown.
        let upstream = parts.uri.authority().cloned();
        ResponseFuture {
            state: State::Buffering { buffer },
            timer: Timer::Unarmed,
            upstream,
            deadline,
            inner,
            config,
            classify,
            parts: Some(parts),
            body: None,
            may_retry,
            repeatable: false,
            budget,
            attempts: 0,
            waited: Duration::ZERO,
            previous_delay: Duration::ZERO,
        }
    }
}

impl<S, C, B> fmt::Debug for ResponseFuture<S, C, B>
where
    S: Service<Request<ReplayBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.attempts)
            .field("waited", &self.waited)
            .finish_non_exhaustive()
    }
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

impl<S, C, B, ResB> Future for ResponseFuture<S, C, B>
where
    S: Service<Request<ReplayBody>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    C: Classify,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut poll = step(&mut this, cx);
        if this.config.hand_back_head {
            if let Poll::Ready(result) = &mut poll {
                hand_back(result, this.parts, this.body.as_ref(), this.classify);
            }
        }
        poll
    }
}

/// The head of a failed call goes out with it, for the dead-letter layer around this one
/// (`Config::hand_back_head`): that layer then keeps no copy of its own.
fn hand_back<ResB, C: Classify>(
    result: &mut Result<Response<ResB>, Error>,
    parts: &mut Option<Parts>,
    body: Option<&Buffered>,
    classify: &C,
) {
    let handed = |parts: Parts| Handed {
        parts,
        body: body.and_then(Buffered::bytes).cloned(),
    };
    match result {
        Err(err) => {
            if let Some(parts) = parts.take() {
                err.set_handed(handed(parts));
            }
        }
        Ok(response) => {
            let outcome = classify.classify(Attempt::Response {
                status: response.status(),
                headers: response.headers(),
            });
            if !outcome.is_success() {
                if let Some(parts) = parts.take() {
                    response.extensions_mut().insert(handed(parts));
                }
            }
        }
    }
}

/// A failed call's request head and body (when it was kept), handed by the retry layer to the
/// dead-letter layer around it: in the error, or in the response's extensions, from which
/// that layer takes it out.
#[derive(Clone)]
pub(crate) struct Handed {
    pub(crate) parts: Parts,
    pub(crate) body: Option<bytes::Bytes>,
}

/// Runs the call as far as it goes without waiting.
fn step<S, C, B, ResB>(
    this: &mut ResponseFutureProj<'_, S, C, B>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResB>, Error>>
where
    S: Service<Request<ReplayBody>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    C: Classify,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    loop {
        match this.state.as_mut().project() {
            StateProj::Buffering { buffer } => {
                let Poll::Ready(buffered) = buffer.poll(cx) else {
                    return until_deadline(
                        this.timer.as_mut(),
                        *this.deadline,
                        cx,
                        this.upstream.as_ref(),
                        *this.attempts,
                        *this.waited,
                    );
                };
                let buffered = match buffered {
                    Ok(buffered) => buffered,
                    Err(err) => return Poll::Ready(Err(Error::with_source(Kind::Body, err))),
                };
                if *this.may_retry && !buffered.is_replayable() {
                    tracing::warn!(
                            limit = this.config.max_buffered_body,
                            "request body is larger than max_buffered_body: it is sent once and not retried"
                        );
                }
                *this.body = Some(buffered);
                this.state.set(State::Ready);
            }
            StateProj::Ready => {
                let Poll::Ready(ready) = this.inner.poll_ready(cx) else {
                    return until_deadline(
                        this.timer.as_mut(),
                        *this.deadline,
                        cx,
                        this.upstream.as_ref(),
                        *this.attempts,
                        *this.waited,
                    );
                };
                if let Err(err) = ready {
                    let mut err = Error::from_box(err.into());
                    err.set_attempts(*this.attempts, *this.waited);
                    return Poll::Ready(Err(err));
                }
                let (Some(body), Some(parts)) = (
                    this.body.as_mut().and_then(Buffered::take_attempt),
                    this.parts.take(),
                ) else {
                    return Poll::Ready(Err(Error::with_source(
                        Kind::Body,
                        "request body is no longer available for another attempt",
                    )));
                };
                *this.attempts += 1;
                let repeatable = *this.may_retry
                    && *this.attempts < this.config.max_attempts
                    && this.body.as_ref().is_some_and(Buffered::is_replayable);
                *this.repeatable = repeatable;
                // The head is cloned only while another attempt (or the dead-letter layer
                // around this one) may need it.
                if repeatable || this.config.hand_back_head {
                    *this.parts = Some(parts.clone());
                }
                let future = this.inner.call(Request::from_parts(parts, body));
                this.state.set(State::Calling { future });
            }
            StateProj::Calling { future } => match future.poll(cx) {
                Poll::Pending => {
                    return until_deadline(
                        this.timer.as_mut(),
                        *this.deadline,
                        cx,
                        this.upstream.as_ref(),
                        *this.attempts,
                        *this.waited,
                    );
                }
                Poll::Ready(result) => match result {
                    Ok(mut response) => {
                        let outcome = this.classify.classify(Attempt::Response {
                            status: response.status(),
                            headers: response.headers(),
                        });
                        if !outcome.is_retryable() {
                            return Poll::Ready(Ok(finish(
                                response,
                                outcome,
                                *this.attempts,
                                *this.waited,
                                None,
                                &this.config.stats,
                            )));
                        }
                        let hint = server_wait(&mut response, outcome);
                        match plan(
                            this.config,
                            *this.repeatable,
                            *this.deadline,
                            Progress {
                                attempts: *this.attempts,
                                waited: *this.waited,
                                previous_delay: *this.previous_delay,
                            },
                            hint,
                            this.budget.as_deref(),
                        ) {
                            Ok(delay) => {
                                log_retry(
                                    *this.attempts,
                                    delay,
                                    &response.status(),
                                    this.upstream.as_ref(),
                                );
                                drop(response);
                                schedule(this.state.as_mut(), this.config, delay, hint.is_some());
                                *this.previous_delay = delay;
                                *this.waited = this.waited.saturating_add(delay);
                            }
                            Err(give_up) => {
                                if *this.may_retry {
                                    this.config.stats.record_give_up();
                                }
                                let retry_after = match give_up {
                                    GiveUp::TooLong(wait) => Some(wait),
                                    GiveUp::Budget => hint,
                                    GiveUp::NotRepeatable
                                    | GiveUp::Exhausted
                                    | GiveUp::RetryBudget => None,
                                };
                                return Poll::Ready(Ok(finish(
                                    response,
                                    outcome,
                                    *this.attempts,
                                    *this.waited,
                                    retry_after,
                                    &this.config.stats,
                                )));
                            }
                        }
                    }
                    Err(err) => {
                        let mut err = Error::from_box(err.into());
                        let outcome = this.classify.classify(Attempt::Error(&err));
                        err.set_upstream(this.upstream.as_ref());
                        if !outcome.is_retryable() {
                            err.set_attempts(*this.attempts, *this.waited);
                            return Poll::Ready(Err(err));
                        }
                        let hint = err.retry_after();
                        match plan(
                            this.config,
                            *this.repeatable,
                            *this.deadline,
                            Progress {
                                attempts: *this.attempts,
                                waited: *this.waited,
                                previous_delay: *this.previous_delay,
                            },
                            hint,
                            this.budget.as_deref(),
                        ) {
                            Ok(delay) => {
                                log_retry(*this.attempts, delay, &err, this.upstream.as_ref());
                                schedule(this.state.as_mut(), this.config, delay, hint.is_some());
                                *this.previous_delay = delay;
                                *this.waited = this.waited.saturating_add(delay);
                            }
                            Err(_) => {
                                if *this.may_retry {
                                    this.config.stats.record_give_up();
                                }
                                err.set_attempts(*this.attempts, *this.waited);
                                return Poll::Ready(Err(err));
                            }
                        }
                    }
                },
            },
            StateProj::Waiting { until } => {
                let until = *until;
                ready!(this.timer.as_mut().poll_at(until, cx));
                this.state.set(State::Ready);
            }
        }
    }
}

/// The wait the server asked for on a retryable response: `Retry-After`, the reset of a
/// used-up quota, or for a 429 without either, the reset of its quota.
fn server_wait<ResB>(response: &mut Response<ResB>, outcome: Outcome) -> Option<Duration> {
    let info = RateLimitInfo::of_response(response)?;
    info.wait().or(match outcome {
        Outcome::RateLimited => info.reset,
        _ => None,
    })
}

/// Where a call stands: attempts made, time waited, the last delay.
#[derive(Clone, Copy, Debug)]
struct Progress {
    attempts: u32,
    waited: Duration,
    previous_delay: Duration,
}

/// The delay before the next attempt, or why there is none.
fn plan(
    config: &Config,
    repeatable: bool,
    deadline: Option<Instant>,
    progress: Progress,
    hint: Option<Duration>,
    budget: Option<&Allowance>,
) -> Result<Duration, GiveUp> {
    let Progress {
        attempts,
        waited,
        previous_delay,
    } = progress;
    if let Some(wait) = hint {
        if wait > config.max_retry_after {
            return Err(GiveUp::TooLong(wait));
        }
    }
    if attempts >= config.max_attempts {
        return Err(GiveUp::Exhausted);
    }
    if !repeatable {
        return Err(GiveUp::NotRepeatable);
    }
    let delay = match hint {
        Some(wait) => wait.saturating_add(
            config
                .rng
                .uniform(Duration::ZERO, config.retry_after_jitter),
        ),
        None => config
            .rng
            .backoff(&config.backoff, attempts - 1, previous_delay),
    };
    // The server's own wait must fit; our jitter on top of it may be trimmed.
    let mut left = config.max_total_delay.saturating_sub(waited);
    if let Some(deadline) = deadline {
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

fn schedule<F, B>(
    mut state: Pin<&mut State<F, B>>,
    config: &Config,
    delay: Duration,
    server_named: bool,
) {
    config.stats.record_retry(delay, server_named);
    let now = Instant::now();
    let until = now
        .checked_add(delay)
        .unwrap_or_else(|| crate::deadline::far_future(now));
    state.set(State::Waiting { until });
}

/// The call is pending on an attempt, the body or the inner service's readiness: it stays
/// so until its deadline, if it has one, and then ends with a timeout error.
fn until_deadline<T>(
    timer: Pin<&mut Timer>,
    deadline: Option<Instant>,
    cx: &mut Context<'_>,
    upstream: Option<&Authority>,
    attempts: u32,
    waited: Duration,
) -> Poll<Result<T, Error>> {
    let Some(deadline) = deadline else {
        return Poll::Pending;
    };
    ready!(timer.poll_at(deadline, cx));
    let mut err = Error::timed_out().for_upstream(upstream);
    err.set_attempts(attempts, waited);
    Poll::Ready(Err(err))
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
fn finish<ResB>(
    mut response: Response<ResB>,
    outcome: Outcome,
    attempts: u32,
    waited: Duration,
    retry_after: Option<Duration>,
    stats: &super::RetryStats,
) -> Response<ResB> {
    if attempts > 1 && outcome.is_success() {
        stats.record_success_after_retry();
    }
    if attempts > 1 || retry_after.is_some() {
        response.extensions_mut().insert(Attempts {
            count: attempts,
            waited,
            retry_after: retry_after.map(|wait| (wait, crate::error::system_time_after(wait))),
        });
    }
    response
}
