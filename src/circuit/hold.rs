//! Calls held while their circuit is open: the rules that let them go from the breaker's
//! [`Line`](crate::line::Line) (mechanism only; the breaker's
//! [`max_wait`](super::CircuitBreakerLayer::max_wait) says whether calls wait at all).
//!
//! A held call:
//!
//! 1. **waits for the probe time** while the circuit is open, if that time comes before its
//!    patience runs out; otherwise it fails at once with the breaker's
//!    [`Kind::CircuitOpen`](crate::error::Kind::CircuitOpen), as a fail-fast call does;
//! 2. **may become a probe** once the circuit is half-open: held calls take the free probe
//!    slots, never more than [`half_open_probes`](super::CircuitBreakerLayer::half_open_probes);
//!    the others wait for the verdict;
//! 3. when the probes close the circuit, **leaves paced**: as many held calls as there were
//!    probes go at once, then each success (of any call through the breaker) lets two more go,
//!    each outcome that does not count (a call refused elsewhere) one more — a slow start that
//!    doubles per round trip while the upstream keeps answering. New calls that meet a closed
//!    breaker still releasing its held calls line up behind them.
//! 4. when a probe fails and the circuit opens again, waits for the next probe time if it
//!    still fits its patience, else fails with the time to that probe;
//! 5. **fails** with `CircuitOpen` when its patience runs out while the circuit is open or
//!    half-open. A call whose patience runs out while the closed breaker releases its line
//!    goes: a closed circuit refuses nothing.
//!
//! Dropping a [`Hold`] frees its place: it leaves the line, and a wake it was given (a probe
//! slot or a release) passes to the next call in line.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::time::Instant;

use super::breaker::{Admission, Breaker, Step};
use super::Registry;
use crate::error::{Error, Kind};
use crate::line::HoldTimer;

/// One call held by a breaker whose circuit is open (or half-open with every probe out, or
/// closed and still releasing the calls it held).
///
/// Made with [`Hold::new`] when [`Breaker::admit`] refused a call and the breaker has a
/// patience ([`max_wait`](super::CircuitBreakerLayer::max_wait) above zero); driven by
/// [`poll_admit`](Self::poll_admit) from any future. Until it answers, the call has a place in
/// the breaker's line; dropping the hold frees it.
///
/// Invariants, whatever the order of polls, drops and outcomes:
/// - while half-open, the calls let through (held or not) never exceed the probe count;
/// - a hold answers `Ok` or `Err` once, and never waits past its deadline (its creation plus
///   the patience) while the circuit is open or half-open;
/// - a [`Admission::Probe`] it answers holds a probe slot: the caller must record the
///   outcome ([`Breaker::record`]) or give the slot back ([`Breaker::release_probe`]); a
///   [`Permit`](super::future::Permit) does either.
pub(crate) struct Hold {
    registry: Arc<Registry>,
    breaker: Arc<Breaker>,
    ticket: u64,
    deadline: Instant,
    timer: HoldTimer,
    /// The hold answered and left the line.
    done: bool,
}

impl Hold {
    /// Puts a call in `breaker`'s line at `now`, with the registry's patience
    /// ([`max_wait`](super::CircuitBreakerLayer::max_wait)) from now. Counts it as held.
    pub(crate) fn new(registry: Arc<Registry>, breaker: Arc<Breaker>, now: Instant) -> Self {
        let patience = registry.settings.max_wait;
        let deadline = now
            .checked_add(patience)
            .unwrap_or_else(|| now + super::MAX_DURATION);
        let ticket = breaker.join();
        registry.stats.count(5);
        Hold {
            registry,
            breaker,
            ticket,
            deadline,
            timer: HoldTimer::default(),
            done: false,
        }
    }

    /// Whether the call may go now: `Ready(Ok(admission))` when it may (it is counted as
    /// permitted), `Ready(Err(_))` with [`Kind::CircuitOpen`] when its patience cannot cover
    /// the wait (counted as rejected), `Pending` while it waits (woken by a timer or by the
    /// breaker). `now` is the current time; the hold reads the clock again only after its own
    /// timer fired. State changes it causes (open → half-open) are announced.
    ///
    /// # Panics
    ///
    /// When polled again after it answered.
    pub(crate) fn poll_admit(
        &mut self,
        cx: &mut Context<'_>,
        mut now: Instant,
    ) -> Poll<Result<Admission, Error>> {
        assert!(!self.done, "hold polled after it answered");
        loop {
            let mut changes = Vec::new();
            let mut wake = Vec::new();
            let step = self.breaker.hold_step(
                self.ticket,
                self.deadline,
                now,
                cx.waker(),
                &self.registry.settings,
                &mut changes,
                &mut wake,
            );
            self.registry.announce(&changes);
            wake.into_iter().for_each(Waker::wake);
            match step {
                Step::Go(admission) => {
                    self.done = true;
                    self.registry.stats.count(0);
                    return Poll::Ready(Ok(admission));
                }
                Step::Refuse { retry_in } => {
                    self.done = true;
                    self.registry.stats.count(1);
                    return Poll::Ready(Err(Error::new(Kind::CircuitOpen { retry_in })));
                }
                Step::Wait(until) => {
                    if self.timer.poll_until(until, cx).is_pending() {
                        return Poll::Pending;
                    }
                    now = Instant::now();
                }
            }
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.leave(self.ticket);
        }
    }
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold")
            .field("ticket", &self.ticket)
            .field("deadline", &self.deadline)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// A held call of a service: the hold, the ready inner service and the request, sent once the
/// hold lets it go. What a layer's response future keeps while its call waits.
pub(crate) struct HeldCall<S, R> {
    hold: Hold,
    /// What the hold answered, until the request is sent.
    admitted: Option<Admission>,
    inner: S,
    request: Option<R>,
}

impl<S, B> HeldCall<S, http::Request<B>>
where
    S: tower_service::Service<http::Request<B>>,
    S::Error: Into<crate::error::BoxError>,
{
    /// Holds `request` for `inner`, a service already made ready (it is polled ready again
    /// before the call, as a moved service may be).
    pub(crate) fn new(hold: Hold, inner: S, request: http::Request<B>) -> Self {
        HeldCall {
            hold,
            admitted: None,
            inner,
            request: Some(request),
        }
    }

    /// Waits for the hold, then sends the request: the admission and the inner future, or the
    /// hold's `CircuitOpen` (with the request's upstream) or the inner service's readiness
    /// error. Once it answers `Ok`, a probe slot is the caller's to record or release.
    pub(crate) fn poll_call(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(Admission, S::Future), Error>> {
        let admission = match self.admitted {
            Some(admission) => admission,
            None => match std::task::ready!(self.hold.poll_admit(cx, Instant::now())) {
                Ok(admission) => *self.admitted.insert(admission),
                Err(mut error) => {
                    error.set_upstream(self.request.as_ref().and_then(|r| r.uri().authority()));
                    return Poll::Ready(Err(error));
                }
            },
        };
        if let Err(e) = std::task::ready!(self.inner.poll_ready(cx)) {
            return Poll::Ready(Err(Error::from_box(e.into())));
        }
        let request = self.request.take().expect("a held request is sent once");
        self.admitted = None;
        Poll::Ready(Ok((admission, self.inner.call(request))))
    }
}

impl<S, R> HeldCall<S, R> {
    /// The breaker and registry of the hold, for the permit of the call sent.
    pub(crate) fn breaker(&self) -> (Arc<Breaker>, Arc<Registry>) {
        (self.hold.breaker.clone(), self.hold.registry.clone())
    }

    /// Whether the breaker times its calls (slow calls, a window by time).
    pub(crate) fn needs_clock(&self) -> bool {
        let settings = &self.hold.registry.settings;
        settings.slow_call.is_some() || matches!(settings.window, super::Window::Time { .. })
    }
}

impl<S, R> Drop for HeldCall<S, R> {
    fn drop(&mut self) {
        // Admitted as a probe and never sent: the slot goes back.
        if let Some(Admission::Probe { round }) = self.admitted {
            self.hold.breaker.release_probe(round);
        }
    }
}

impl<S, R> fmt::Debug for HeldCall<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldCall")
            .field("hold", &self.hold)
            .field("admitted", &self.admitted)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(tower_outbound_loom)))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::circuit::{CircuitState, Settings, Window};

    use crate::testing::Count;

    fn waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    fn woken(count: &Count) -> usize {
        count.0.load(Ordering::SeqCst)
    }

    const OPEN: Duration = Duration::from_secs(10);

    /// A breaker opened for 10 s by one failure, `probes` probes, `patience` to wait, and an
    /// open time that doubles after a failed probe.
    fn tripped(probes: u32, patience: Duration) -> (Arc<Registry>, Arc<Breaker>) {
        let registry = Arc::new(Registry::new(Settings {
            window: Window::Count(1),
            minimum_calls: 1,
            open_duration: OPEN,
            open_backoff: Some((2.0, Duration::from_secs(300))),
            half_open_probes: probes,
            max_wait: patience,
            ..Settings::default()
        }));
        let breaker = registry.breaker(None);
        let mut changes = Vec::new();
        let admission = breaker.admit(&registry.settings, &mut changes);
        breaker.record(
            admission,
            Some(true),
            false,
            None,
            &registry.settings,
            &mut changes,
        );
        assert_eq!(breaker.state(), CircuitState::Open);
        (registry, breaker)
    }

    fn hold(registry: &Arc<Registry>, breaker: &Arc<Breaker>) -> Hold {
        Hold::new(registry.clone(), breaker.clone(), Instant::now())
    }

    fn poll(hold: &mut Hold, waker: &Waker) -> Poll<Result<Admission, Error>> {
        hold.poll_admit(&mut Context::from_waker(waker), Instant::now())
    }

    fn record(registry: &Registry, breaker: &Breaker, admission: Admission, failure: bool) {
        breaker.record(
            admission,
            Some(failure),
            false,
            None,
            &registry.settings,
            &mut Vec::new(),
        );
    }

    fn is_probe(poll: &Poll<Result<Admission, Error>>) -> bool {
        matches!(poll, Poll::Ready(Ok(Admission::Probe { .. })))
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_call_waits_for_the_probe_time_then_probes() {
        let (registry, breaker) = tripped(1, Duration::from_secs(60));
        let (count, waker) = waker();
        let mut held = hold(&registry, &breaker);
        assert!(poll(&mut held, &waker).is_pending());
        tokio::time::advance(OPEN - Duration::from_millis(1)).await;
        assert_eq!(woken(&count), 0, "not before the probe time");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(woken(&count), 1, "woken by its timer at the probe time");
        assert!(is_probe(&poll(&mut held, &waker)));
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        assert_eq!((registry.stats.held(), registry.stats.permitted()), (1, 1));
        assert_eq!(breaker.held(), 0, "it left the line");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_time_past_the_patience_fails_at_once_with_the_time_to_it() {
        let (registry, breaker) = tripped(1, Duration::from_secs(5));
        let (_, waker) = waker();
        let mut held = hold(&registry, &breaker);
        match poll(&mut held, &waker) {
            Poll::Ready(Err(error)) => {
                assert!(error.is_circuit_open());
                assert_eq!(error.retry_after(), Some(OPEN));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(registry.stats.rejected(), 1);
        assert_eq!(breaker.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn held_calls_never_exceed_the_probe_count_while_half_open() {
        let (registry, breaker) = tripped(2, Duration::from_secs(60));
        let (_, waker) = waker();
        let mut holds: Vec<Hold> = (0..5).map(|_| hold(&registry, &breaker)).collect();
        for held in &mut holds {
            assert!(poll(held, &waker).is_pending());
        }
        tokio::time::advance(OPEN).await;
        let polls: Vec<_> = holds.iter_mut().map(|h| poll(h, &waker)).collect();
        assert_eq!(polls.iter().filter(|p| is_probe(p)).count(), 2);
        assert_eq!(polls.iter().filter(|p| p.is_pending()).count(), 3);
        // A call that was not held finds every probe slot taken too.
        let admission = breaker.admit(&registry.settings, &mut Vec::new());
        assert!(matches!(admission, Admission::Reject { .. }));
        // Polled again and again, the waiting ones still wait.
        for held in holds.iter_mut().skip(2) {
            assert!(poll(held, &waker).is_pending());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_held_call_passes_the_free_probe_slot_to_the_next() {
        let (registry, breaker) = tripped(1, Duration::from_secs(60));
        tokio::time::advance(OPEN).await;
        let probe = breaker.admit(&registry.settings, &mut Vec::new());
        let Admission::Probe { round } = probe else {
            panic!("{probe:?}")
        };
        let (first_count, first_waker) = waker();
        let (second_count, second_waker) = waker();
        let mut first = hold(&registry, &breaker);
        let mut second = hold(&registry, &breaker);
        assert!(poll(&mut first, &first_waker).is_pending());
        assert!(poll(&mut second, &second_waker).is_pending());

        // The probe's caller gives up: its slot goes to the first call in line.
        breaker.release_probe(round);
        assert_eq!((woken(&first_count), woken(&second_count)), (1, 0));
        // The first one's caller gives up before it was polled: the wake passes on.
        drop(first);
        assert_eq!(woken(&second_count), 1);
        assert!(is_probe(&poll(&mut second, &second_waker)));
        assert_eq!(breaker.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn patience_ends_a_wait_for_the_probes_verdict() {
        let patience = Duration::from_secs(15);
        let (registry, breaker) = tripped(1, patience);
        let (count, waker) = waker();
        let mut held = hold(&registry, &breaker);
        tokio::time::advance(OPEN).await;
        // Another call takes the only probe slot and hangs.
        let probe = breaker.admit(&registry.settings, &mut Vec::new());
        assert!(matches!(probe, Admission::Probe { .. }));
        assert!(poll(&mut held, &waker).is_pending());
        tokio::time::advance(patience - OPEN).await;
        assert_eq!(woken(&count), 1, "woken when its patience ran out");
        match poll(&mut held, &waker) {
            Poll::Ready(Err(error)) => assert_eq!(error.retry_after(), Some(Duration::ZERO)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_fails_the_held_calls_whose_patience_cannot_cover_the_next() {
        // The probe at 10 s fails and opens the circuit for 20 s more, until 30 s.
        let (registry, breaker) = tripped(1, Duration::from_secs(25));
        let (count, waker) = waker();
        let mut early = hold(&registry, &breaker); // patience until 25 s
        tokio::time::advance(Duration::from_secs(6)).await;
        let mut late = hold(&registry, &breaker); // patience until 31 s
        assert!(poll(&mut early, &waker).is_pending());
        assert!(poll(&mut late, &waker).is_pending());
        tokio::time::advance(Duration::from_secs(4)).await;
        let probe = breaker.admit(&registry.settings, &mut Vec::new());
        assert!(matches!(probe, Admission::Probe { .. }));
        let before = woken(&count);
        record(&registry, &breaker, probe, true);
        assert_eq!(breaker.state(), CircuitState::Open);
        assert!(woken(&count) >= before, "the reopen woke the line");
        match poll(&mut early, &waker) {
            Poll::Ready(Err(error)) => {
                assert_eq!(error.retry_after(), Some(Duration::from_secs(20)))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            poll(&mut late, &waker).is_pending(),
            "30 s fits its patience"
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(is_probe(&poll(&mut late, &waker)));
    }

    #[tokio::test(start_paused = true)]
    async fn held_calls_leave_paced_after_the_circuit_closes() {
        let (registry, breaker) = tripped(1, Duration::from_secs(60));
        let mut line: Vec<(Arc<Count>, Waker, Hold)> = (0..10)
            .map(|_| {
                let (count, waker) = waker();
                (count, waker, hold(&registry, &breaker))
            })
            .collect();
        for (_, waker, held) in &mut line {
            assert!(poll(held, waker).is_pending());
        }
        tokio::time::advance(OPEN).await;
        // The first in line probes; the rest wait for its verdict.
        let mut polls: Vec<_> = line.iter_mut().map(|(_, w, h)| poll(h, w)).collect();
        let probe = match polls.remove(0) {
            Poll::Ready(Ok(probe)) => probe,
            other => panic!("{other:?}"),
        };
        line.remove(0);
        assert!(polls.iter().all(Poll::is_pending));

        // The probe passes: the circuit closes and releases one held call (one probe proved
        // this much), then two more per success.
        record(&registry, &breaker, probe, false);
        assert_eq!(breaker.state(), CircuitState::Closed);
        let mut waves = Vec::new();
        while !line.is_empty() {
            let mut gone = Vec::new();
            let mut i = 0;
            while i < line.len() {
                let (count, waker, held) = &mut line[i];
                if woken(count) > 0 {
                    count.0.store(0, Ordering::SeqCst);
                    if let Poll::Ready(admission) = poll(held, waker) {
                        gone.push(admission.unwrap());
                        line.remove(i);
                        continue;
                    }
                }
                i += 1;
            }
            assert!(
                !gone.is_empty(),
                "a wave released nobody: {} held",
                line.len()
            );
            waves.push(gone.len());
            // Calls that were never held wait behind the line.
            if !line.is_empty() {
                let admission = breaker.admit(&registry.settings, &mut Vec::new());
                assert!(matches!(admission, Admission::Reject { .. }));
            }
            for admission in gone {
                assert_eq!(admission, Admission::Call);
                record(&registry, &breaker, admission, false);
            }
        }
        assert_eq!(waves, vec![1, 2, 4, 2]);
        // The line is empty: the lock-free path is back.
        assert!(breaker.is_closed());
        assert_eq!(
            breaker.admit(&registry.settings, &mut Vec::new()),
            Admission::Call
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_call_whose_patience_runs_out_while_the_line_is_released_goes() {
        let patience = Duration::from_secs(12);
        let (registry, breaker) = tripped(1, patience);
        let (_, waker) = waker();
        let mut holds: Vec<Hold> = (0..3).map(|_| hold(&registry, &breaker)).collect();
        for held in &mut holds {
            assert!(poll(held, &waker).is_pending());
        }
        tokio::time::advance(OPEN).await;
        let probe = match poll(&mut holds[0], &waker) {
            Poll::Ready(Ok(probe)) => probe,
            other => panic!("{other:?}"),
        };
        record(&registry, &breaker, probe, false);
        // One release: the second goes, the third waits for an outcome that never comes.
        assert_eq!(
            poll(&mut holds[1], &waker).map(Result::unwrap),
            Poll::Ready(Admission::Call)
        );
        assert!(poll(&mut holds[2], &waker).is_pending());
        tokio::time::advance(patience - OPEN).await;
        // Its patience is over and the circuit is closed: a closed circuit refuses nothing.
        assert_eq!(
            poll(&mut holds[2], &waker).map(Result::unwrap),
            Poll::Ready(Admission::Call)
        );
        assert_eq!(registry.stats.rejected(), 0);
    }
}
