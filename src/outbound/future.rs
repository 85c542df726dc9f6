//! The composed call: one state machine that runs every step of an [`Outbound`](super::Outbound)
//! call over its upstream's record.
//!
//! ```text
//! new ─▶ Buffering ─▶ Admitting ─┬─▶ Sending ─▶ Calling ─┬─▶ (attempt done) ─┬─▶ Backoff ─▶ Admitting
//!                        ▲        ├─▶ AtBreaker ─▶ (gate)                    │
//!                        │        ├─▶ AtGate ──▶ (limit)                     └─▶ Recording ─▶ Done
//!                        │        ├─▶ ForPlace ─▶ (throttle)                 └─▶ Done
//!                        │        ├─▶ ForSlot ─▶ Sending
//!                        │        └─▶ Deciding ─▶ Sending / ForSlot
//! ```
//!
//! `new` reads the clock once, deposits the call into its upstream's retry budget and sets the
//! deadline. `Admitting` counts an attempt and asks the breaker, the gate, the concurrency
//! limit and the throttle, in that order, all through the record. `Calling` polls the client.
//! When an attempt is done, its outcome is classified once and its rate-limit headers parsed
//! once, and both are handed to the throttle, the gate, the concurrency limit, the breaker and
//! the retry policy, in the order the layers would see them. One timer serves every wait of the call: the deadline, the attempt
//! timeout (from the attempt's first pending poll), the gate, the limit's line, the throttle's
//! slot and the backoff; it is created only when the call is pending.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::SystemTime;

use http::request::Parts;
use http::uri::Authority;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::record::Record;
use crate::body::{Buffer, Buffered, ReplayBody};
use crate::circuit::{Admission, Hold};
use crate::classify::{Attempt, Classify, DefaultClassifier, Outcome};
use crate::concurrency::Acquired;
use crate::dead_letter::recording::{self, Write};
use crate::deadline::Timer;
use crate::error::{BoxError, Error, Kind};
use crate::handoff::{instant_after, Deadline, DoubtedRefusal, Replaying};
use crate::head::HeadCopy;
use crate::hedge::Refusal;
use crate::rate_limit::RateLimitInfo;
use crate::retry::policy::{self, Next, Progress};
use crate::retry_after::{pause_of, Answer, Entry, Hold as GateHold, Released};
use crate::throttle::{Acquire, Deciding, Decision, LocalStore, Reservation, Slot};

pin_project! {
    /// The response future of [`OutboundService`](super::OutboundService): the whole call
    /// (body, attempts, the waits before and between them, the dead letter) in one state
    /// machine. See the [module docs](self).
    ///
    /// Dropping it gives back what its attempt in flight holds: a half-open probe's permit, its
    /// place under the concurrency limit (or in its line), the throttle's reserved slot, its
    /// place among the requests outstanding.
    ///
    /// # Panics
    ///
    /// When polled again after it completed, as futures may.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<ReplayBody>>,
    {
        #[pin]
        state: State<S::Future, B, S::Response>,
        // The one timer of the call, armed when the call first waits.
        #[pin]
        timer: Timer,
        call: Call<S>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, R> {
        // Reading the request body into memory.
        Buffering { #[pin] buffer: Buffer<B> },
        // Held by the open breaker (it has a patience) until the next probe.
        AtBreaker { hold: Hold },
        // Held in the line of the closed (or releasing) gate.
        AtGate { hold: GateHold },
        // In the concurrency limit's line, until `until` at most.
        ForPlace { until: Instant },
        // Held by the throttle until its reserved slot at `until`.
        ForSlot { until: Instant },
        // Waiting for a shared bucket store's decision.
        Deciding { decision: Deciding },
        // Admitted; waiting for the client to be ready.
        Sending,
        // The attempt in flight, and its copy when one was sent (boxed: few attempts get one).
        Calling { #[pin] future: F, hedge: Option<Box<Copy<F>>> },
        // Between attempts.
        Backoff { until: Instant },
        // Writing the dead letter of the failed call.
        // (Boxed: it is rare, and the states stay small to move.)
        Recording { recording: Box<(Write, Option<Result<R, Error>>)> },
        Done,
    }
}

/// Everything a call keeps besides its state: the request, the record, where it stands.
struct Call<S> {
    inner: S,
    record: Arc<Record>,
    /// The request head: the caller's until the first attempt takes it, then a copy while
    /// another attempt or a dead letter may need it.
    head: Head,
    body: Option<Buffered>,
    progress: Progress,
    /// The upstream, for errors and logs, once the head is no longer kept (boxed: rare).
    upstream: Option<Box<Authority>>,
    replaying: bool,
    /// The clock, read once per poll at most (and as nanoseconds since the record's epoch):
    /// `None` once the call waited.
    now: Option<(Instant, u64)>,
    /// The breaker's word on the attempt in flight, and when it started (when the breaker
    /// judges slow calls or keeps its window by time).
    admission: Option<Admission>,
    /// (In nanoseconds after the record's epoch; 0: none.)
    breaker_started: u64,
    /// The attempt's place under the concurrency limit, or in its line.
    place: Place,
    /// Whether the attempt in flight holds a place among the throttle's outstanding requests,
    /// and the slot it reserved while it waits for it.
    outstanding: bool,
    reservation: Option<Reservation>,
    /// The last attempt's outcome.
    outcome: Outcome,
    /// Whether the attempt in flight passed the gate (its answer paces the gate's release),
    /// and, when the gate held and then released it, the release's token.
    through_gate: bool,
    released: Option<Released>,
    /// Whether the call started (at its first poll), and when.
    begun: bool,
    /// When it started, in nanoseconds after the record's epoch.
    begun_at: u64,
    /// Whether the deadline was worked out (see `deadline`).
    deadline_known: bool,
    /// When the attempt in flight times out, from its first pending poll, in nanoseconds after
    /// the record's epoch (0: not set yet).
    attempt_deadline: u64,
    /// Whether the attempt in flight gets a copy when it is due (the upstream's delay after
    /// `sent_at`): false when none is planned, or once it was sent or given up.
    hedge_planned: bool,
    /// When the attempt was sent, then when the copy that answered was (nanoseconds after the
    /// record's epoch): a successful answer's latency counts from its own send.
    sent_at: u64,
    #[cfg(feature = "metrics")]
    meter: crate::metrics::CallMeter,
    #[cfg(feature = "metrics")]
    attempt_meter: Option<crate::metrics::AttemptMeter>,
    /// The call's upstream's meters, when its record is not its upstream's own (one record
    /// for every call, [`Scope::Global`](crate::partition::Scope::Global)).
    #[cfg(feature = "metrics")]
    own_meters: Option<std::sync::Arc<crate::metrics::Upstream>>,
}

/// What admission decided for an attempt.
enum Admit {
    Send,
    AtBreaker(Hold),
    Held(Wait),
    Refused(Error),
}

/// What an admitted attempt waits for before it is sent.
enum Wait {
    /// The closed (or releasing) gate, in its line.
    Gate(GateHold),
    /// A place under the concurrency limit, in its line, until the instant at most.
    Place(Instant),
    /// The throttle's reserved slot.
    Slot(Instant),
    /// A shared bucket store's decision.
    Store(Deciding),
}

/// An attempt's copy in flight (boxed with its future: few attempts get one).
struct Copy<F> {
    future: Pin<Box<F>>,
    /// Its place among the throttle's outstanding requests (the server counts it too), given
    /// back when the copy answers or is dropped.
    _outstanding: Option<crate::throttle::OutstandingHold>,
    /// Its place under the concurrency limit, given back the same way.
    _place: Option<CopyPlace>,
    /// When it was sent, in nanoseconds after the record's epoch.
    sent_at: u64,
    /// Whether the attempt's first copy ended in a retryable failure: this one goes on alone.
    first_done: bool,
}

/// A copy's place under its upstream's concurrency limit, given back when dropped (with no
/// latency sample: the attempt's answer speaks for the upstream once).
struct CopyPlace(Arc<Record>);

impl Drop for CopyPlace {
    fn drop(&mut self) {
        if let (Some(limits), Some(limiter)) = (&self.0.stack.concurrency, &self.0.limiter) {
            limits.release(limiter, None, Instant::now());
        }
    }
}

/// What the timer of an attempt in flight fired for.
enum Fired {
    /// The attempt's time ran out.
    Timeout,
    /// Its copy is due.
    HedgeDue,
}

/// What a state produced: an attempt's result (for the retry policy) or the call's.
enum Step<R> {
    Attempt(Result<R, Error>),
    Final(Result<R, Error>),
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody>>,
{
    pub(crate) fn new(inner: S, record: Arc<Record>, request: Request<B>) -> Self {
        let stack = &*record.stack;
        let retry = &stack.retry;
        retry.stats.record_call();
        #[cfg(feature = "metrics")]
        let meter = crate::metrics::CallMeter::start(&request);
        #[cfg(feature = "metrics")]
        let own_meters = record
            .meters
            .is_none()
            .then(|| crate::metrics::upstream_of(request.uri()));
        let (parts, body) = request.into_parts();
        let replaying = parts.extensions.get::<Replaying>().is_some();
        let deadline = parts.extensions.get::<Deadline>().map(|d| d.0);
        let may_retry = retry.max_attempts > 1 && retry.may_retry(&parts.method, &parts.headers);
        let buffer = Buffer::new(body, retry.max_buffered_body);
        ResponseFuture {
            state: State::Buffering { buffer },
            timer: Timer::Unarmed,
            call: Call {
                inner,
                head: Head::Original(parts),
                body: None,
                progress: Progress::new(may_retry, deadline),
                upstream: None,
                replaying,
                now: None,
                admission: None,
                breaker_started: 0,
                place: Place::NONE,
                outstanding: false,
                reservation: None,
                outcome: Outcome::Success,
                through_gate: false,
                released: None,
                begun: false,
                begun_at: 0,
                deadline_known: false,
                attempt_deadline: 0,
                hedge_planned: false,
                sent_at: 0,
                record,
                #[cfg(feature = "metrics")]
                meter,
                #[cfg(feature = "metrics")]
                attempt_meter: None,
                #[cfg(feature = "metrics")]
                own_meters,
            },
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("upstream", &self.call.record.key)
            .field("attempts", &self.call.progress.attempts)
            .field("waited", &self.call.progress.waited)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let call = this.call;
        #[cfg(feature = "metrics")]
        let span = call.meter.span.clone();
        #[cfg(feature = "metrics")]
        let _entered = span.enter();
        if !call.begun {
            call.begun = true;
            call.start();
        }
        let poll = call.step(this.state, this.timer, cx);
        match &poll {
            Poll::Pending => {
                // Time passes while the call waits: the clock is read again after.
                call.now = None;
            }
            #[cfg(feature = "metrics")]
            Poll::Ready(result) => {
                let (now, _) = clock(&mut call.now, &call.record);
                call.meter
                    .end(&meters(&call.record, &call.own_meters), result, now);
            }
            #[cfg(not(feature = "metrics"))]
            Poll::Ready(_) => {}
        }
        poll
    }
}

impl<S> Call<S> {
    /// Runs the call as far as it goes without waiting.
    fn step<B, ResB>(
        &mut self,
        mut state: Pin<&mut State<S::Future, B, Response<ResB>>>,
        mut timer: Pin<&mut Timer>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<ResB>, Error>>
    where
        S: Service<Request<ReplayBody>, Response = Response<ResB>>,
        S::Error: Into<BoxError>,
        B: Body + Unpin + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        loop {
            let step = match state.as_mut().project() {
                StateProj::Buffering { buffer } => match buffer.poll(cx) {
                    Poll::Pending => {
                        Step::Final(Err(ready!(self.poll_deadline(timer.as_mut(), cx))))
                    }
                    Poll::Ready(Err(err)) => Step::Final(Err(Error::with_source(Kind::Body, err))),
                    Poll::Ready(Ok(buffered)) => {
                        if self.progress.may_retry && !buffered.is_replayable() {
                            tracing::warn!(
                                limit = self.record.stack.retry.max_buffered_body,
                                "request body is larger than max_buffered_body: it is sent once and not retried"
                            );
                        }
                        self.body = Some(buffered);
                        let admit = self.admit();
                        match self.go(state.as_mut(), admit, cx) {
                            Some(step) => step,
                            None => continue,
                        }
                    }
                },
                StateProj::AtBreaker { hold } => {
                    let (now, _) = clock(&mut self.now, &self.record);
                    match hold.poll_admit(cx, now) {
                        Poll::Ready(Ok(admission)) => {
                            let admit = self.admitted(admission);
                            match self.go(state.as_mut(), admit, cx) {
                                Some(step) => step,
                                None => continue,
                            }
                        }
                        Poll::Ready(Err(mut err)) => {
                            err.set_upstream(upstream(&self.head, &self.upstream));
                            Step::Attempt(Err(err))
                        }
                        Poll::Pending => {
                            Step::Final(Err(ready!(self.poll_deadline(timer.as_mut(), cx))))
                        }
                    }
                }
                StateProj::AtGate { hold } => {
                    let (now, _) = clock(&mut self.now, &self.record);
                    match hold.poll_pass(cx, now) {
                        Poll::Ready(Ok(())) => {
                            self.released = Some(hold.released());
                            self.through_gate = true;
                            let admit = self.take_place();
                            match self.go(state.as_mut(), admit, cx) {
                                Some(step) => step,
                                None => continue,
                            }
                        }
                        Poll::Ready(Err(mut err)) => {
                            err.set_upstream(upstream(&self.head, &self.upstream));
                            Step::Attempt(Err(err))
                        }
                        Poll::Pending => {
                            Step::Final(Err(ready!(self.poll_deadline(timer.as_mut(), cx))))
                        }
                    }
                }
                StateProj::ForPlace { until } => {
                    let until = *until;
                    match self.poll_place(timer.as_mut(), until, cx) {
                        Poll::Ready(Ok(())) => {
                            let admit = self.take_slot();
                            match self.go(state.as_mut(), admit, cx) {
                                Some(step) => step,
                                None => continue,
                            }
                        }
                        Poll::Ready(Err(err)) => Step::Attempt(Err(err)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                StateProj::ForSlot { until } => {
                    let until = *until;
                    match ready!(self.poll_wait(timer.as_mut(), until, cx)) {
                        Ok(()) => {
                            // The slot is used from here on.
                            self.reservation = None;
                            match self.go(state.as_mut(), Admit::Send, cx) {
                                Some(step) => step,
                                None => continue,
                            }
                        }
                        Err(err) => Step::Final(Err(err)),
                    }
                }
                StateProj::Deciding { decision } => match decision.as_mut().poll(cx) {
                    Poll::Pending => {
                        Step::Final(Err(ready!(self.poll_deadline(timer.as_mut(), cx))))
                    }
                    Poll::Ready(decision) => {
                        let admit = self.slot(decision);
                        match self.go(state.as_mut(), admit, cx) {
                            Some(step) => step,
                            None => continue,
                        }
                    }
                },
                StateProj::Sending => match self.inner.poll_ready(cx) {
                    Poll::Pending => {
                        Step::Final(Err(ready!(self.poll_deadline(timer.as_mut(), cx))))
                    }
                    Poll::Ready(Err(err)) => Step::Attempt(Err(Error::from_box(err.into()))),
                    Poll::Ready(Ok(())) => match self.launch(state.as_mut()) {
                        Some(step) => step,
                        None => continue,
                    },
                },
                StateProj::Calling { future, hedge } => match self.poll_copies(future, hedge, cx) {
                    Poll::Ready(result) => Step::Attempt(result),
                    Poll::Pending => match ready!(self.poll_attempt(timer.as_mut(), cx)) {
                        // The attempt timed out: it is dropped, and is an attempt that failed.
                        Ok(Fired::Timeout) => {
                            state.set(State::Done);
                            Step::Attempt(Err(Error::timed_out()))
                        }
                        Ok(Fired::HedgeDue) => {
                            if let StateProj::Calling { hedge, .. } = state.as_mut().project() {
                                self.send_hedge(hedge, cx);
                            }
                            continue;
                        }
                        Err(err) => Step::Final(Err(err)),
                    },
                },
                StateProj::Backoff { until } => {
                    let until = *until;
                    ready!(timer.as_mut().poll_at(until, cx));
                    let admit = self.admit();
                    match self.go(state.as_mut(), admit, cx) {
                        Some(step) => step,
                        None => continue,
                    }
                }
                StateProj::Recording { recording } => {
                    let (write, result) = &mut **recording;
                    let recorded = ready!(write.poll(cx));
                    let mut result = result.take().expect("future polled after completion");
                    recording::attach(recorded, &mut result);
                    state.set(State::Done);
                    break Poll::Ready(result);
                }
                StateProj::Done => panic!("future polled after completion"),
            };
            // The attempt in flight (if any) is over: its future goes before anything else.
            state.set(State::Done);
            let result = match step {
                Step::Attempt(result) => match self.attempt_done(result) {
                    Next::Retry { until } => {
                        state.set(State::Backoff { until });
                        continue;
                    }
                    Next::Return(result) => result,
                },
                Step::Final(result) => result,
            };
            match self.letter(&result) {
                Some(write) => state.set(State::Recording {
                    recording: Box::new((write, Some(result))),
                }),
                None => break Poll::Ready(result),
            }
        }
    }

    /// Goes on from an admission: an admitted attempt is sent at once when the client is
    /// ready; a held one waits in its state. `Some`: the attempt is over already (refused, or
    /// the client failed).
    #[inline(always)]
    fn go<B, ResB>(
        &mut self,
        mut state: Pin<&mut State<S::Future, B, Response<ResB>>>,
        admit: Admit,
        cx: &mut Context<'_>,
    ) -> Option<Step<Response<ResB>>>
    where
        S: Service<Request<ReplayBody>, Response = Response<ResB>>,
        S::Error: Into<BoxError>,
    {
        match admit {
            Admit::Send => match self.inner.poll_ready(cx) {
                Poll::Ready(Ok(())) => self.launch(state),
                Poll::Ready(Err(err)) => Some(Step::Attempt(Err(Error::from_box(err.into())))),
                Poll::Pending => {
                    state.set(State::Sending);
                    None
                }
            },
            Admit::AtBreaker(hold) => {
                state.set(State::AtBreaker { hold });
                None
            }
            Admit::Held(wait) => {
                state.set(match wait {
                    Wait::Gate(hold) => State::AtGate { hold },
                    Wait::Place(until) => State::ForPlace { until },
                    Wait::Slot(until) => State::ForSlot { until },
                    Wait::Store(decision) => State::Deciding { decision },
                });
                None
            }
            Admit::Refused(err) => Some(Step::Attempt(Err(err))),
        }
    }

    /// Sends the attempt on the ready client.
    fn launch<B, ResB>(
        &mut self,
        mut state: Pin<&mut State<S::Future, B, Response<ResB>>>,
    ) -> Option<Step<Response<ResB>>>
    where
        S: Service<Request<ReplayBody>, Response = Response<ResB>>,
    {
        self.plan_hedge();
        let Some(request) = self.request() else {
            return Some(Step::Attempt(Err(Error::with_source(
                Kind::Body,
                "request body is no longer available for another attempt",
            ))));
        };
        self.attempt_deadline = 0;
        if self.place.since().is_some() {
            // The attempt's latency counts from here.
            self.place = Place::held(clock(&mut self.now, &self.record).1);
        }
        let future = self.inner.call(request);
        state.set(State::Calling {
            future,
            hedge: None,
        });
        None
    }

    /// Plans the copy of the attempt about to be sent, when the stack hedges and the request
    /// may be sent twice (a safe method or an idempotency key, a body that can be sent again),
    /// and notes when the attempt goes.
    #[inline]
    fn plan_hedge(&mut self) {
        let record = &*self.record;
        let (Some(hedger), Some(hedge)) = (&record.hedger, &record.stack.hedge) else {
            return;
        };
        let (_, since) = clock(&mut self.now, record);
        self.sent_at = since;
        let settings = &hedge.settings;
        let twice = match &self.head {
            Head::Original(parts) => {
                settings.may_send_twice(&parts.method, |name| parts.headers.contains_key(name))
            }
            Head::Copy(copy) => {
                settings.may_send_twice(copy.method(), |name| copy.has_header(name))
            }
            Head::Gone => false,
        };
        let replayable = self.body.as_ref().is_some_and(Buffered::is_replayable);
        self.hedge_planned = replayable && twice;
        let _ = hedger;
    }

    /// When the planned copy of the attempt in flight is due: the upstream's delay (as it is
    /// now) after the attempt was sent.
    fn hedge_due(&self) -> Option<Instant> {
        if !self.hedge_planned {
            return None;
        }
        let record = &*self.record;
        let (Some(hedger), Some(hedge)) = (&record.hedger, &record.stack.hedge) else {
            return None;
        };
        let delay = crate::throttle::nanos(hedger.delay(&hedge.settings));
        Some(record.at(self.sent_at.saturating_add(delay)))
    }

    /// Sends the attempt's copy, now due, when the upstream is not in trouble (breaker closed,
    /// gate open, a throttle token at once), the call has the time and the budget pays.
    #[inline(never)]
    fn send_hedge(&mut self, hedge: &mut Option<Box<Copy<S::Future>>>, cx: &mut Context<'_>)
    where
        S: Service<Request<ReplayBody>>,
    {
        self.hedge_planned = false;
        let record = self.record.clone();
        let (Some(hedger), Some(shared)) = (&record.hedger, &record.stack.hedge) else {
            return;
        };
        let stack = &*record.stack;
        let troubled = record.breaker.as_ref().is_some_and(|b| !b.is_closed())
            || !stack.gates.is_open(&record.gate);
        if troubled {
            hedger.refused(shared, Refusal::State);
            return;
        }
        let (now, since) = clock(&mut self.now, &record);
        let remaining = self.deadline().map(|d| d.saturating_duration_since(now));
        if hedger.admit(shared, now, remaining).is_err() {
            return;
        }
        // A place under the concurrency limit free now, or no copy: a copy never waits.
        let place = match (&stack.concurrency, &record.limiter) {
            (Some(limits), Some(limiter)) => {
                if !limits.try_acquire(limiter) {
                    hedger.refused(shared, Refusal::State);
                    return;
                }
                Some(CopyPlace(record.clone()))
            }
            _ => None,
        };
        if let Some(throttle) = &stack.throttle {
            // A token at once (from this process's bucket, or one a shared store holds here),
            // or no copy.
            let token = match &record.bucket {
                Some(bucket) => matches!(
                    LocalStore::acquire_at(
                        bucket,
                        since.saturating_add(record.bucket_lag),
                        &throttle.quota,
                        0,
                    ),
                    Decision::Go
                ),
                None => throttle
                    .store
                    .take_at_once(record.key.as_ref(), &throttle.quota),
            };
            if !token {
                hedger.refused(shared, Refusal::State);
                return;
            }
        }
        if !matches!(self.inner.poll_ready(cx), Poll::Ready(Ok(()))) {
            hedger.refused(shared, Refusal::State);
            return;
        }
        let Some(request) = self.request() else {
            return;
        };
        *hedge = Some(Box::new(Copy {
            future: Box::pin(self.inner.call(request)),
            _outstanding: stack.throttle.as_ref().map(|t| t.hold_outstanding()),
            _place: place,
            sent_at: since,
            first_done: false,
        }));
        hedger.sent(shared);
        #[cfg(feature = "metrics")]
        tracing::Span::current().record("outbound.hedged", true);
    }

    /// Polls the attempt and its copy: the first answer that settles the call is the attempt's,
    /// and a retryable failure of one waits for the other.
    fn poll_copies<ResB>(
        &mut self,
        mut future: Pin<&mut S::Future>,
        hedge: &mut Option<Box<Copy<S::Future>>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<ResB>, Error>>
    where
        S: Service<Request<ReplayBody>, Response = Response<ResB>>,
        S::Error: Into<BoxError>,
    {
        if !hedge.as_ref().is_some_and(|copy| copy.first_done) {
            if let Poll::Ready(result) = future.as_mut().poll(cx) {
                let result = result.map_err(|e| Error::from_box(e.into()));
                let Some(copy) = hedge.as_mut() else {
                    return Poll::Ready(result);
                };
                if crate::hedge::settles(DefaultClassifier.classify(Attempt::of(&result))) {
                    *hedge = None;
                    return Poll::Ready(result);
                }
                // A retryable failure while the copy may still succeed.
                copy.first_done = true;
            }
        }
        let Some(copy) = hedge.as_mut() else {
            return Poll::Pending;
        };
        let result = ready!(copy.future.as_mut().poll(cx)).map_err(|e| Error::from_box(e.into()));
        let settles = crate::hedge::settles(DefaultClassifier.classify(Attempt::of(&result)));
        let (sent_at, first_done) = (copy.sent_at, copy.first_done);
        *hedge = None;
        if settles || first_done {
            self.sent_at = sent_at;
            if settles {
                if let (Some(hedger), Some(shared)) =
                    (&self.record.hedger, &self.record.stack.hedge)
                {
                    hedger.won(shared);
                }
            }
            return Poll::Ready(result);
        }
        // The copy failed first: the attempt goes on alone.
        Poll::Pending
    }

    /// The call starts, at its first poll: it is deposited into its upstream's retry budget
    /// and its deadline set, on the clock read that also serves its first attempt.
    fn start(&mut self) {
        let (now, since) = self.clock();
        let record = &*self.record;
        if let Some(budget) = &record.budget {
            budget.deposit_at(since.saturating_add(record.budget_lag));
        }
        if let Some(hedger) = &record.hedger {
            hedger.deposit_at(since.saturating_add(record.hedge_budget_lag));
        }
        self.begun_at = since;
        #[cfg(not(feature = "metrics"))]
        let _ = now;
        #[cfg(feature = "metrics")]
        {
            self.meter.starts_at(now);
            if record.stack.breaker.is_some() {
                // The upstream's breaker gauge exists from its first call.
                crate::metrics::first_call(&meters(record, &self.own_meters));
            }
        }
    }

    /// The call's deadline: the earlier of the request's and the stack's, which counts from
    /// the call's start. Worked out when first needed (a call that never waits or retries
    /// never needs it).
    fn deadline(&mut self) -> Option<Instant> {
        if !self.deadline_known {
            self.deadline_known = true;
            if let (Some(timeout), true) = (self.record.stack.retry.deadline, self.begun) {
                let ours = instant_after(self.record.at(self.begun_at), timeout);
                let deadline = &mut self.progress.deadline;
                *deadline = Some(deadline.map_or(ours, |theirs| theirs.min(ours)));
            }
        }
        self.progress.deadline
    }

    /// Now: read once per poll, and again after the call waited.
    fn clock(&mut self) -> (Instant, u64) {
        clock(&mut self.now, &self.record)
    }

    /// Counts an attempt, then asks the breaker, the gate and the throttle.
    fn admit(&mut self) -> Admit {
        self.through_gate = false;
        let replayable = self.body.as_ref().is_some_and(Buffered::is_replayable);
        let stack = &*self.record.stack;
        self.progress.start_attempt(&stack.retry, replayable);
        #[cfg(feature = "metrics")]
        {
            let (now, _) = clock(&mut self.now, &self.record);
            self.attempt_meter = Some(crate::metrics::AttemptMeter::start(
                self.progress.attempts - 1,
                now,
            ));
        }
        if let (Some(breakers), Some(breaker)) = (&stack.breaker, &self.record.breaker) {
            match breakers.admit(breaker) {
                // With a patience, the call waits in the breaker's line for the next probe.
                Admission::Reject { .. } if breakers.holds() => {
                    let (now, _) = clock(&mut self.now, &self.record);
                    return Admit::AtBreaker(Hold::new(breakers.clone(), breaker.clone(), now));
                }
                Admission::Reject { retry_in } => {
                    let upstream = upstream(&self.head, &self.upstream);
                    return Admit::Refused(crate::circuit::open_error(retry_in, upstream));
                }
                admission => return self.admitted(admission),
            }
        }
        self.pass_gate()
    }

    /// The breaker let the attempt through: the gate and the throttle are next.
    fn admitted(&mut self, admission: Admission) -> Admit {
        self.admission = Some(admission);
        if let Some(breakers) = &self.record.stack.breaker {
            if breakers.needs_clock() {
                self.breaker_started = self.record.since_epoch(Instant::now()).max(1);
            }
        }
        self.pass_gate()
    }

    /// Passes the gate (or lines up at it), then takes the throttle's slot.
    fn pass_gate(&mut self) -> Admit {
        let record = &*self.record;
        let now = &mut self.now;
        match record
            .stack
            .gates
            .enter(&record.gate, || clock(now, record).0)
        {
            Entry::Open => {
                self.through_gate = true;
                self.take_place()
            }
            Entry::Held(hold) => Admit::Held(Wait::Gate(hold)),
            Entry::Refused(mut err) => {
                err.set_upstream(upstream(&self.head, &self.upstream));
                Admit::Refused(err)
            }
        }
    }

    /// Takes a place under the concurrency limit (or lines up for one), then the throttle's
    /// slot.
    #[inline]
    fn take_place(&mut self) -> Admit {
        if self.record.limiter.is_none() {
            return self.take_slot();
        }
        self.place_then_slot()
    }

    /// [`take_place`](Self::take_place) under a limit (out of line: a stack without one does
    /// not pay for it).
    #[inline(never)]
    fn place_then_slot(&mut self) -> Admit {
        let record = &*self.record;
        let (Some(limits), Some(limiter)) = (&record.stack.concurrency, &record.limiter) else {
            return self.take_slot();
        };
        match limits.acquire(limiter) {
            Acquired::Go => {
                self.place = Place::held(clock(&mut self.now, record).1);
                self.take_slot()
            }
            Acquired::Wait(ticket) => {
                self.place = Place::in_line(ticket);
                let (now, _) = clock(&mut self.now, record);
                Admit::Held(Wait::Place(instant_after(now, limits.settings.max_wait)))
            }
            Acquired::Full => {
                Admit::Refused(limits.overloaded(limiter, upstream(&self.head, &self.upstream)))
            }
        }
    }

    /// Whether the attempt waiting in the limit's line got its place: `Err` when its wait (or
    /// the call's deadline) ran out first.
    fn poll_place(
        &mut self,
        timer: Pin<&mut Timer>,
        until: Instant,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        // (A clone of the record's handle: only while the call waits in line.)
        let record = self.record.clone();
        let (Some(limits), Some(limiter)) = (&record.stack.concurrency, &record.limiter) else {
            return Poll::Ready(Ok(()));
        };
        if let Some(ticket) = self.place.ticket() {
            if limits.turn(limiter, ticket, cx.waker()) {
                self.place = Place::held(clock(&mut self.now, &record).1);
                return Poll::Ready(Ok(()));
            }
        }
        match ready!(self.poll_wait(timer, until, cx)) {
            Ok(()) => {
                if let Some(ticket) = std::mem::replace(&mut self.place, Place::NONE).ticket() {
                    limits.leave(limiter, ticket);
                }
                Poll::Ready(Err(
                    limits.overloaded(limiter, upstream(&self.head, &self.upstream))
                ))
            }
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    /// Takes the throttle's slot: from the record's bucket in this process, or from the
    /// shared store.
    fn take_slot(&mut self) -> Admit {
        let record = &*self.record;
        let Some(throttle) = &record.stack.throttle else {
            return Admit::Send;
        };
        let decision = match &record.bucket {
            Some(bucket) => {
                let (_, since) = clock(&mut self.now, record);
                Ok(LocalStore::acquire_at(
                    bucket,
                    since.saturating_add(record.bucket_lag),
                    &throttle.quota,
                    throttle.max_wait_nanos,
                ))
            }
            _ => match throttle.store.acquire(
                record.key.as_ref(),
                &throttle.quota,
                throttle.max_wait,
            ) {
                Acquire::Ready(decision) => decision,
                Acquire::Pending(decision) => return Admit::Held(Wait::Store(decision)),
            },
        };
        self.slot(decision)
    }

    /// What the throttle's decision means for the attempt.
    fn slot(&mut self, decision: Result<Decision, Error>) -> Admit {
        let Some(throttle) = &self.record.stack.throttle else {
            return Admit::Send;
        };
        match throttle.take(decision, upstream(&self.head, &self.upstream)) {
            Slot::Go => {
                self.outstanding = true;
                Admit::Send
            }
            Slot::Wait { wait, reservation } => {
                self.outstanding = true;
                self.reservation = Some(reservation);
                let (now, _) = self.clock();
                Admit::Held(Wait::Slot(instant_after(now, wait)))
            }
            Slot::Refused(err) => Admit::Refused(err),
        }
    }

    /// The request of the next attempt: the caller's head for the first, one built from the
    /// copy for the others. A copy is kept only while another attempt or a dead letter may
    /// need it.
    fn request(&mut self) -> Option<Request<ReplayBody>> {
        let body = self.body.as_mut().and_then(Buffered::take_attempt)?;
        let keep = self.progress.repeatable
            || self.record.stack.dead_letters.is_some()
            || self.hedge_planned;
        let parts = match std::mem::replace(&mut self.head, Head::Gone) {
            Head::Original(parts) => {
                if keep {
                    self.head = Head::Copy(HeadCopy::of(&parts));
                }
                parts
            }
            Head::Copy(copy) => {
                let parts = copy.to_parts();
                if keep {
                    self.head = Head::Copy(copy);
                }
                parts
            }
            Head::Gone => return None,
        };
        if !keep {
            self.upstream = parts.uri.authority().cloned().map(Box::new);
        }
        Some(Request::from_parts(parts, body))
    }

    /// Hands an attempt's result to every step that reads it, in the order the layers would
    /// see it (throttle, gate, breaker, then the retry policy), classified once and with its
    /// rate-limit headers parsed once.
    fn attempt_done<R>(&mut self, mut result: Result<Response<R>, Error>) -> Next<R> {
        let outcome = DefaultClassifier.classify(Attempt::of(&result));
        self.outcome = outcome;
        self.hedge_planned = false;
        if let (Some(hedger), true) = (&self.record.hedger, outcome.is_success()) {
            // The answer's latency, from its own send: a sample of the upstream's.
            let (_, since) = clock(&mut self.now, &self.record);
            let latency = since.saturating_sub(self.sent_at);
            hedger.record_at(latency, since.saturating_add(self.record.hedge_lag));
        }
        if outcome.is_retryable() {
            // The retry policy plans its wait within the deadline.
            self.deadline();
        }
        let record = &*self.record;
        let stack = &*record.stack;
        let info = match &mut result {
            Ok(response) => RateLimitInfo::of_response(response),
            Err(_) => None,
        };
        if let Some(throttle) = &stack.throttle {
            if std::mem::take(&mut self.outstanding) {
                throttle.answered();
            }
        }
        let (mut paused, mut neutral) = (false, false);
        if let (Ok(response), Some(info)) = (&mut result, &info) {
            let status = response.status();
            let doubted = stack
                .throttle
                .as_ref()
                .filter(|throttle| throttle.adaptive)
                .is_some_and(|throttle| {
                    throttle.adopt(record.key.as_ref(), record.bucket.as_deref(), status, info)
                });
            if doubted {
                response.extensions_mut().insert(DoubtedRefusal);
            } else if let Some(wait) = pause_of(status, info) {
                stack
                    .gates
                    .close(&record.gate, record.key.as_ref(), wait, status);
                paused = true;
            }
            neutral = doubted;
        }
        // After the throttle: a refusal it doubted is no sign of load.
        if self.place.is_some() {
            place_answered(
                &mut self.place,
                &mut self.now,
                record,
                &result,
                info.as_ref(),
            );
        }
        // Any other answer paces the gate's release of the requests it held.
        if std::mem::take(&mut self.through_gate) && !paused {
            let answer = if neutral || result.is_err() {
                Answer::Neutral
            } else {
                Answer::Welcome
            };
            stack.gates.answered(&record.gate, answer);
        }
        if let Some(released) = self.released.take() {
            released.answered();
        }
        if let (Some(admission), Some(breakers), Some(breaker)) =
            (self.admission.take(), &stack.breaker, &record.breaker)
        {
            // A refusal by another step says nothing of the upstream's health.
            let health = match &result {
                Err(err) if err.is_refusal() => Outcome::Rejected,
                _ => outcome,
            };
            let started = std::mem::take(&mut self.breaker_started);
            let started = (started != 0).then(|| record.at(started));
            breakers.finish(breaker, admission, health, started);
        }
        #[cfg(feature = "metrics")]
        if let Some(meter) = self.attempt_meter.take() {
            let (now, _) = clock(&mut self.now, record);
            meter.end(&meters(record, &self.own_meters), &result, now);
        }
        policy::next(
            &stack.retry,
            &mut self.progress,
            record.budget.as_deref(),
            upstream(&self.head, &self.upstream),
            result,
            outcome,
            move |_| info,
        )
    }

    /// The dead letter of the call's result, when it failed and gets one.
    fn letter<R>(&mut self, result: &Result<Response<R>, Error>) -> Option<Write> {
        let config = self.record.stack.dead_letters.as_ref()?;
        if !recording::failed(result, self.outcome)
            || !recording::wanted(config, self.replaying, result)
        {
            return None;
        }
        let parts = match std::mem::replace(&mut self.head, Head::Gone) {
            Head::Original(parts) => parts,
            Head::Copy(copy) => copy.to_parts(),
            Head::Gone => {
                tracing::error!("the request head of a failed call was not kept: no dead letter");
                return None;
            }
        };
        let body = recording::Kept::of(self.body.as_ref());
        // The wall-clock time of the call's start, from how long ago it started.
        let started = self
            .begun
            .then(|| self.record.at(self.begun_at))
            .and_then(|begun| SystemTime::now().checked_sub(begun.elapsed()));
        let letter = recording::letter(config, parts, body, started, result);
        Some(Write::start(config, letter))
    }

    /// While the call waits on the body, the client's readiness or a store: pending until the
    /// deadline, then the deadline's error.
    fn poll_deadline(&mut self, timer: Pin<&mut Timer>, cx: &mut Context<'_>) -> Poll<Error> {
        let Some(deadline) = self.deadline() else {
            return Poll::Pending;
        };
        ready!(timer.poll_at(deadline, cx));
        Poll::Ready(self.deadline_passed())
    }

    /// Waits until `until`, or fails at the deadline when it comes first.
    fn poll_wait(
        &mut self,
        timer: Pin<&mut Timer>,
        until: Instant,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        let at = self.deadline().map_or(until, |d| d.min(until));
        ready!(timer.poll_at(at, cx));
        if until <= at {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(self.deadline_passed()))
        }
    }

    /// While an attempt is pending: `Ok` when its timeout passes first, the deadline's error
    /// when the deadline does. The attempt's time counts from its first pending poll.
    fn poll_attempt(
        &mut self,
        timer: Pin<&mut Timer>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Fired, Error>> {
        if self.attempt_deadline == 0 {
            if let Some(timeout) = self.record.stack.attempt_timeout {
                // In the poll that sent the attempt, the clock read then serves.
                let (_, since) = clock(&mut self.now, &self.record);
                self.attempt_deadline =
                    since.saturating_add(crate::throttle::nanos(timeout)).max(1);
            }
        }
        let deadline = self.deadline();
        let attempt = (self.attempt_deadline != 0).then(|| self.record.at(self.attempt_deadline));
        let ends = match (attempt, deadline) {
            (Some(attempt), Some(call)) => Some(attempt.min(call)),
            (attempt, call) => attempt.or(call),
        };
        let due = self.hedge_due();
        let at = match (ends, due) {
            (Some(ends), Some(due)) if due < ends => due,
            (Some(ends), _) => ends,
            (None, Some(due)) => due,
            (None, None) => return Poll::Pending,
        };
        ready!(timer.poll_at(at, cx));
        if due.is_some_and(|due| due <= at && ends.is_none_or(|e| due < e)) {
            Poll::Ready(Ok(Fired::HedgeDue))
        } else if deadline.is_some_and(|d| d <= at) {
            Poll::Ready(Err(self.deadline_passed()))
        } else {
            Poll::Ready(Ok(Fired::Timeout))
        }
    }

    /// The deadline passed: the attempt in flight is given up, and the call ends.
    fn deadline_passed(&mut self) -> Error {
        self.give_back();
        policy::deadline_passed(upstream(&self.head, &self.upstream), &self.progress)
    }

    /// Gives back what an attempt that will never finish holds: a probe's permit (its outcome
    /// says nothing), its place under the concurrency limit or in its line, its place among
    /// the outstanding requests, its reserved slot.
    fn give_back(&mut self) {
        let record = &*self.record;
        if let (Some(Admission::Probe { round }), Some(breaker)) =
            (self.admission.take(), &record.breaker)
        {
            breaker.release_probe(round);
        }
        self.breaker_started = 0;
        if self.place.is_some() {
            give_place_back(&mut self.place, &mut self.now, record);
        }
        if let Some(throttle) = &record.stack.throttle {
            if std::mem::take(&mut self.outstanding) {
                throttle.answered();
            }
            if let Some(reservation) = self.reservation.take() {
                throttle.release(record.key.as_ref(), record.bucket.as_deref(), reservation);
            }
        }
    }
}

impl<S> Drop for Call<S> {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// The attempt's answer, to the concurrency limit it holds a place under (out of line: a
/// stack without a limit does not pay for it).
#[inline(never)]
fn place_answered<R>(
    place: &mut Place,
    now: &mut Option<(Instant, u64)>,
    record: &Record,
    result: &Result<Response<R>, Error>,
    info: Option<&RateLimitInfo>,
) {
    let place = std::mem::replace(place, Place::NONE);
    if let (Some(since), Some(limits), Some(limiter)) =
        (place.since(), &record.stack.concurrency, &record.limiter)
    {
        let (now, _) = clock(now, record);
        let sample = crate::concurrency::sample_of(result, info, record.at(since), now);
        limits.release(limiter, sample, now);
    }
}

/// Gives back the attempt's place under the concurrency limit, or in its line, with nothing
/// learnt (out of line, as above).
#[inline(never)]
fn give_place_back(place: &mut Place, now: &mut Option<(Instant, u64)>, record: &Record) {
    let place = std::mem::replace(place, Place::NONE);
    if let (Some(limits), Some(limiter)) = (&record.stack.concurrency, &record.limiter) {
        if place.since().is_some() {
            let (now, _) = clock(now, record);
            limits.release(limiter, None, now);
        }
        if let Some(ticket) = place.ticket() {
            limits.leave(limiter, ticket);
        }
    }
}

/// Now, read once per poll (`now` caches it) and as nanoseconds since `record`'s epoch.
fn clock(now: &mut Option<(Instant, u64)>, record: &Record) -> (Instant, u64) {
    *now.get_or_insert_with(|| {
        let now = Instant::now();
        (now, record.since_epoch(now))
    })
}

/// An attempt's place under the concurrency limit, in one word (the call moves often): none,
/// a ticket in the limit's line, or a place held since (once sent: sent at) some nanoseconds
/// after the record's epoch.
#[derive(Clone, Copy)]
struct Place(u64);

impl Place {
    const NONE: Place = Place(0);
    const IN_LINE: u64 = 1 << 63;

    /// A ticket in the line (tickets count up from 0 by one per wait: never near 2⁶³).
    fn in_line(ticket: u64) -> Self {
        Place(Self::IN_LINE | (ticket & !Self::IN_LINE))
    }

    /// A place held since `since` (nanoseconds after the epoch: 2⁶³ of them is 292 years).
    fn held(since: u64) -> Self {
        Place(since.saturating_add(1).min(Self::IN_LINE - 1))
    }

    fn is_some(self) -> bool {
        self.0 != 0
    }

    fn ticket(self) -> Option<u64> {
        (self.0 & Self::IN_LINE != 0).then_some(self.0 & !Self::IN_LINE)
    }

    fn since(self) -> Option<u64> {
        (self.0 != 0 && self.0 & Self::IN_LINE == 0).then(|| self.0 - 1)
    }
}

/// The request head a call keeps.
enum Head {
    /// The caller's, not sent yet.
    Original(Parts),
    /// A copy, once the caller's went with the first attempt.
    Copy(HeadCopy),
    /// Sent, and needed by no further attempt or letter.
    Gone,
}

/// The meters of the call's upstream: its record's, or its own.
#[cfg(feature = "metrics")]
fn meters<'a>(
    record: &'a Record,
    own: &'a Option<std::sync::Arc<crate::metrics::Upstream>>,
) -> crate::metrics::MetersRef<'a> {
    match (&record.meters, own) {
        (_, Some(own)) => crate::metrics::MetersRef::Kept(own),
        (Some(meters), None) => meters.get(),
        (None, None) => crate::metrics::MetersRef::Found(crate::metrics::upstream_of(
            &http::Uri::from_static("/"),
        )),
    }
}

/// The upstream of the call: from the head while it is kept.
fn upstream<'a>(head: &'a Head, kept: &'a Option<Box<Authority>>) -> Option<&'a Authority> {
    match head {
        Head::Original(parts) => parts.uri.authority(),
        Head::Copy(copy) => copy.uri().authority(),
        Head::Gone => None,
    }
    .or(kept.as_deref())
}

#[cfg(all(test, not(feature = "metrics")))]
mod tests {
    use super::*;

    /// Every call moves its future a few times (into the caller's task, among others): it must
    /// stay small. Without the `metrics` feature (which adds the call's span and meters).
    #[test]
    fn a_call_stays_small_to_move() {
        type Client = tower::util::ServiceFn<
            fn(Request<ReplayBody>) -> std::future::Ready<Result<Response<()>, Error>>,
        >;
        let size =
            std::mem::size_of::<ResponseFuture<Client, http_body_util::Full<bytes::Bytes>>>();
        assert!(size <= 768, "{size} bytes");
    }
}

#[cfg(all(test, not(tower_outbound_loom)))]
mod place_tests {
    use super::Place;

    #[test]
    fn a_place_is_none_a_ticket_or_a_time_never_two() {
        assert_eq!((Place::NONE.ticket(), Place::NONE.since()), (None, None));
        for ticket in [0, 1, 7, u64::MAX >> 1] {
            let place = Place::in_line(ticket);
            assert_eq!((place.ticket(), place.since()), (Some(ticket), None));
        }
        for since in [0, 1, 5_000_000_000, (1 << 63) - 2] {
            let place = Place::held(since);
            assert_eq!((place.ticket(), place.since()), (None, Some(since)));
        }
        // Past 292 years from the epoch the time saturates, still a time.
        assert!(Place::held(u64::MAX).since().is_some());
    }
}
