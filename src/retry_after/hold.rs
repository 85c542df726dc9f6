//! Requests held at a gate: the rules that let them go from the gate's
//! [`Line`](crate::line::Line) (mechanism only; the layer's
//! [`max_wait`](super::RetryAfterLayer::max_wait) says how long a request waits at all).
//!
//! A request that meets a closed gate, or an open one still releasing the requests it held,
//! is held in the gate's line ([`Gates::enter`]). A held request:
//!
//! 1. **waits for the gate's time** while it is closed, if that time comes within its
//!    patience; otherwise it fails at once with [`Kind::RateLimited`](crate::error::Kind),
//!    as a request that meets a gate closed too long does;
//! 2. when the gate opens, **leaves in turn, paced**: the first
//!    [`release`](super::RetryAfterLayer::release) held requests (1 by default) go at once;
//!    then each response through the gate that asks for no pause lets two more go, and each
//!    request that ended without a response to go by (an error, a refusal the throttle
//!    doubted, a released request its caller dropped in flight: [`Released`]) one more — a
//!    slow start that doubles per round trip while the upstream keeps answering. Requests
//!    that meet the gate during the release line up behind the held ones;
//! 3. when a response closes the gate again during the release, **stops**: the release is
//!    over, and every request still held waits for the new time if it fits its patience, or
//!    fails with `RateLimited` now;
//! 4. **goes** when its patience runs out while the open gate releases its line: the upstream
//!    asked for no pause, and the pace is the gate's own.
//!
//! Its patience ([`max_wait`](super::RetryAfterLayer::max_wait)) counts from its first meeting
//! with the gate. Dropping a [`Hold`] frees its place: it leaves the line, and a wake it was
//! given (a release) passes to the next request in line.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::time::Instant;

use super::{Gate, Gates};
use crate::error::Error;
use crate::line::HoldTimer;
use crate::sync::{lock, Ordering};

/// What a request finds at its gate ([`Gates::enter`]).
#[derive(Debug)]
pub(crate) enum Entry {
    /// The gate is open (and releases nobody, or its releases cover the line and this one).
    Open,
    /// Held in the gate's line: drive the hold until it lets the request go.
    Held(Hold),
    /// The gate stays closed past the request's patience, or past its cap.
    Refused(Error),
}

/// How a request sent through a gate ended, for the pace of a release ([`Gates::answered`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A response that asks for no pause: the upstream answers; two more held requests may go.
    Welcome,
    /// Nothing to go by (an error, or a refusal the gate does not act on): one more held
    /// request may go, in its place.
    Neutral,
}

/// What a held request may do now, as the gate decides it under its lock.
#[derive(Debug)]
enum Step {
    /// Go; it left the line.
    Go,
    /// Fail: the gate stays closed past its patience or its cap. It left the line.
    Refuse(Error),
    /// Wait until this instant, or until woken, then ask again.
    Wait(Instant),
}

impl Gates {
    /// What a request finds at `gate` now (`now` is asked for only when a gate is closed or
    /// releasing): open, held in the gate's line with a patience of `max_wait` from now, or
    /// refused. Counts a held request as delayed and a refused one as refused. While no gate
    /// is closed or releasing, one atomic load: no lock, no clock read.
    pub(crate) fn enter(
        self: &Arc<Self>,
        gate: &Arc<Gate>,
        now: impl FnOnce() -> Instant,
    ) -> Entry {
        if !self.any_busy() || !gate.busy.load(Ordering::Acquire) {
            return Entry::Open;
        }
        let now = now();
        let deadline = self.patience_from(now);
        let mut wake = Vec::new();
        let entry = {
            let mut line = lock(&gate.line);
            self.reopen_if_due(gate, &mut line, now, &mut wake);
            match gate.until.load(Ordering::Acquire) {
                0 if line.is_empty() || self.settings.max_wait.is_zero() || line.take_behind() => {
                    Ok(None)
                }
                0 => Ok(Some(self.join(&mut line))),
                until => match self.refusal(gate, until, now, deadline) {
                    Some(error) => Err(error),
                    None => Ok(Some(self.join(&mut line))),
                },
            }
        };
        wake.into_iter().for_each(Waker::wake);
        match entry {
            Ok(None) => Entry::Open,
            Ok(Some(ticket)) => {
                self.stats.delayed_one();
                Entry::Held(Hold {
                    gates: self.clone(),
                    gate: gate.clone(),
                    ticket,
                    deadline,
                    timer: HoldTimer::default(),
                    done: false,
                })
            }
            Err(error) => {
                self.stats.refused_one();
                Entry::Refused(error)
            }
        }
    }

    /// As [`enter`](Self::enter), for the gate of `key`: open without a look-up while no gate
    /// is closed or releasing, or when `key` has no gate.
    pub(crate) fn enter_by(
        self: &Arc<Self>,
        key: Option<&crate::partition::PartitionKey>,
    ) -> Entry {
        if !self.any_busy() {
            return Entry::Open;
        }
        match self.find(key) {
            Some(gate) => self.enter(&gate, Instant::now),
            None => Entry::Open,
        }
    }

    /// Under `gate`'s lock: a place at the end of its line.
    fn join(&self, line: &mut crate::line::Line) -> u64 {
        self.held.fetch_add(1, Ordering::AcqRel);
        line.join()
    }

    /// A request sent through `gate` ended as `answer`: while the gate releases its line, the
    /// next held requests may go (two for [`Answer::Welcome`], one for [`Answer::Neutral`]).
    /// A response that asks for a pause is not an answer: it closes the gate
    /// ([`close`](Self::close)). While no gate is closed or releasing, one atomic load.
    pub(crate) fn answered(&self, gate: &Gate, answer: Answer) {
        if !self.any_busy() || !gate.busy.load(Ordering::Acquire) {
            return;
        }
        let more = match answer {
            Answer::Welcome => 2,
            Answer::Neutral => 1,
        };
        let mut wake = Vec::new();
        {
            let mut line = lock(&gate.line);
            if gate.until.load(Ordering::Acquire) == 0 && !line.is_empty() {
                line.grow(more, &mut wake);
            }
        }
        wake.into_iter().for_each(Waker::wake);
    }

    /// What the held request of `ticket` at `gate`, whose patience runs out at `deadline`, may
    /// do at `now` (see the [module docs](self)). Registers `waker` when it must wait; appends
    /// the requests to wake (outside the lock) to `wake`.
    fn hold_step(
        &self,
        gate: &Gate,
        ticket: u64,
        deadline: Instant,
        now: Instant,
        waker: &Waker,
        wake: &mut Vec<Waker>,
    ) -> Step {
        let mut line = lock(&gate.line);
        line.polled(ticket);
        self.reopen_if_due(gate, &mut line, now, wake);
        let step = match gate.until.load(Ordering::Acquire) {
            0 if line.take_in_turn(ticket) || now >= deadline => Step::Go,
            0 => {
                line.wait(ticket, waker);
                return Step::Wait(deadline);
            }
            until => match self.refusal(gate, until, now, deadline) {
                Some(error) => Step::Refuse(error),
                None => {
                    line.wait(ticket, waker);
                    return Step::Wait(self.instant(until));
                }
            },
        };
        if line.leave(ticket, wake) {
            self.held.fetch_sub(1, Ordering::AcqRel);
        }
        self.settle(gate, &mut line);
        step
    }

    /// The held request of `ticket` gives up its place (dropped before it was answered).
    fn leave(&self, gate: &Gate, ticket: u64) {
        let mut wake = Vec::new();
        {
            let mut line = lock(&gate.line);
            if line.leave(ticket, &mut wake) {
                self.held.fetch_sub(1, Ordering::AcqRel);
            }
            self.settle(gate, &mut line);
        }
        wake.into_iter().for_each(Waker::wake);
    }
}

/// One request held in a gate's line ([`Entry::Held`]), driven by
/// [`poll_pass`](Self::poll_pass) from any future. Until it answers, the request has a place in
/// the line; dropping the hold frees it.
///
/// Invariants, whatever the order of polls, drops and answers:
/// - a hold answers `Ok` or `Err` once;
/// - while its gate is closed it never goes, and it fails as soon as it learns the gate stays
///   closed past its deadline (its first meeting with the gate plus `max_wait`);
/// - once the gate opens, the held requests go in line order, no more at once than the
///   releases allow (`release`, then two per welcome answer and one per neutral one), except
///   one whose deadline passed, which goes then;
/// - while a request is held, its gate is busy: requests meeting it line up behind.
pub(crate) struct Hold {
    gates: Arc<Gates>,
    gate: Arc<Gate>,
    ticket: u64,
    deadline: Instant,
    timer: HoldTimer,
    /// The hold answered and left the line.
    done: bool,
}

impl Hold {
    /// Whether the request may go now: `Ready(Ok(()))` when it may (counted as released),
    /// `Ready(Err(_))` with [`Kind::RateLimited`](crate::error::Kind) when the gate stays
    /// closed past its patience or its cap (counted as refused), `Pending` while it waits
    /// (woken by its timer or by the gate). `now` is the current time; the hold reads the clock
    /// again only after its own timer fired.
    ///
    /// # Panics
    ///
    /// When polled again after it answered.
    pub(crate) fn poll_pass(
        &mut self,
        cx: &mut Context<'_>,
        mut now: Instant,
    ) -> Poll<Result<(), Error>> {
        assert!(!self.done, "hold polled after it answered");
        loop {
            let mut wake = Vec::new();
            let step = self.gates.hold_step(
                &self.gate,
                self.ticket,
                self.deadline,
                now,
                cx.waker(),
                &mut wake,
            );
            wake.into_iter().for_each(Waker::wake);
            match step {
                Step::Go => {
                    self.done = true;
                    self.gates.stats.released_one();
                    return Poll::Ready(Ok(()));
                }
                Step::Refuse(error) => {
                    self.done = true;
                    self.gates.stats.refused_one();
                    return Poll::Ready(Err(error));
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

impl Hold {
    /// The request the hold let go (after [`poll_pass`](Self::poll_pass) answered `Ok`), on
    /// its way to the upstream: see [`Released`].
    pub(crate) fn released(&self) -> Released {
        debug_assert!(self.done, "released before the hold let it go");
        Released(Some((self.gates.clone(), self.gate.clone())))
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.done {
            self.gates.leave(&self.gate, self.ticket);
        }
    }
}

/// A held request let go, until its answer came back. Dropped unanswered (its caller gave up
/// while it was in flight), it lets one more held request go, as a neutral answer does: a
/// release never waits for answers that will not come. Once the request's answer is given to
/// the gate ([`Gates::observe`], [`Gates::answered`]), [`answered`](Self::answered) says so.
#[derive(Debug)]
pub(crate) struct Released(Option<(Arc<Gates>, Arc<Gate>)>);

impl Released {
    /// The request's answer was given to the gate.
    pub(crate) fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Released {
    fn drop(&mut self) {
        if let Some((gates, gate)) = self.0.take() {
            gates.answered(&gate, Answer::Neutral);
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

#[cfg(all(test, not(tower_outbound_loom)))]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use http::StatusCode;

    use super::*;
    use crate::retry_after::Settings;

    use crate::testing::Count;

    /// A held request, the waker its polls use and how often it was woken.
    struct Request {
        count: Arc<Count>,
        waker: Waker,
        hold: Hold,
    }

    impl Request {
        fn poll(&mut self) -> Poll<Result<(), Error>> {
            self.count.0.store(0, std::sync::atomic::Ordering::SeqCst);
            self.hold
                .poll_pass(&mut Context::from_waker(&self.waker), Instant::now())
        }

        fn woken(&self) -> bool {
            self.count.0.load(std::sync::atomic::Ordering::SeqCst) > 0
        }
    }

    const PAUSE: Duration = Duration::from_secs(10);

    /// Gates with `patience` and `release`, and one gate closed for 10 s.
    fn closed(patience: Duration, release: u32) -> (Arc<Gates>, Arc<Gate>) {
        let gates = Arc::new(Gates::new(Settings {
            max_wait: patience,
            release,
            ..Settings::default()
        }));
        let gate = gates.gate_of(None);
        pause(&gates, &gate, PAUSE);
        (gates, gate)
    }

    fn pause(gates: &Gates, gate: &Gate, wait: Duration) {
        gates.close(gate, None, wait, StatusCode::TOO_MANY_REQUESTS);
    }

    fn held(gates: &Arc<Gates>, gate: &Arc<Gate>) -> Request {
        match gates.enter(gate, Instant::now) {
            Entry::Held(hold) => {
                let count = Arc::new(Count(AtomicUsize::new(0)));
                Request {
                    waker: Waker::from(count.clone()),
                    count,
                    hold,
                }
            }
            other => panic!("not held: {other:?}"),
        }
    }

    /// Holds `n` requests, each polled once (pending).
    fn line(gates: &Arc<Gates>, gate: &Arc<Gate>, n: usize) -> Vec<Request> {
        let mut line: Vec<Request> = (0..n).map(|_| held(gates, gate)).collect();
        for request in &mut line {
            assert!(request.poll().is_pending());
        }
        line
    }

    /// Polls the requests (last first), and takes out those that went, by their place.
    fn gone(line: &mut Vec<(usize, Request)>, only_woken: bool) -> Vec<usize> {
        let mut gone = Vec::new();
        for i in (0..line.len()).rev() {
            if only_woken && !line[i].1.woken() {
                continue;
            }
            match line[i].1.poll() {
                Poll::Ready(Ok(())) => gone.push(line.remove(i).0),
                Poll::Ready(Err(error)) => panic!("refused: {error}"),
                Poll::Pending => {}
            }
        }
        gone.sort_unstable();
        gone
    }

    #[tokio::test(start_paused = true)]
    async fn held_requests_leave_in_turn_and_paced_once_the_gate_opens() {
        let (gates, gate) = closed(Duration::from_secs(60), 1);
        let mut line: Vec<(usize, Request)> =
            line(&gates, &gate, 10).into_iter().enumerate().collect();
        assert_eq!(gates.held(), 10);
        tokio::time::advance(PAUSE - Duration::from_millis(1)).await;
        assert!(line.iter().all(|(_, r)| !r.woken()), "not before its time");
        tokio::time::advance(Duration::from_millis(1)).await;

        // Every timer fired; polled last first, only the first in line goes.
        assert_eq!(gone(&mut line, false), vec![0]);
        let mut waves = vec![vec![0]];
        while !line.is_empty() {
            // A request that was never held lines up behind the held ones.
            let late = held(&gates, &gate);
            drop(late);
            let answers = waves.last().map_or(0, Vec::len);
            for _ in 0..answers {
                gates.answered(&gate, Answer::Welcome);
            }
            let wave = gone(&mut line, true);
            assert!(!wave.is_empty(), "an answer released nobody");
            waves.push(wave);
        }
        assert_eq!(
            waves,
            vec![vec![0], vec![1, 2], vec![3, 4, 5, 6], vec![7, 8, 9]]
        );
        assert_eq!(gates.held(), 0);
        assert_eq!((gates.stats.delayed(), gates.stats.released()), (13, 10));
        // The line is empty: the one-load path is back.
        assert_eq!(gates.busy.load(Ordering::Acquire), 0);
        assert!(matches!(gates.enter(&gate, || unreachable!()), Entry::Open));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_during_the_release_stops_it_and_the_rest_wait_within_their_patience() {
        // Held at 0 s (patience to 60 s) and at 25 s (to 85 s).
        let (gates, gate) = closed(Duration::from_secs(60), 2);
        let mut early = line(&gates, &gate, 3);
        tokio::time::advance(PAUSE).await;
        assert!(early[0].poll().is_ready());
        assert!(early[1].poll().is_ready());
        assert!(early[2].poll().is_pending(), "two releases, two gone");
        // The first answer asks for 40 s more: until 50 s.
        pause(&gates, &gate, Duration::from_secs(40));
        assert!(early[2].woken(), "the pause woke the line");
        gates.answered(&gate, Answer::Welcome);
        assert!(early[2].poll().is_pending(), "the release stopped");
        tokio::time::advance(Duration::from_secs(15)).await;
        let mut late = line(&gates, &gate, 1);
        // At 30 s the gate closes again until 90 s: past the patience of both.
        tokio::time::advance(Duration::from_secs(5)).await;
        pause(&gates, &gate, Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(20)).await;
        for request in [&mut early[2], &mut late[0]] {
            assert!(request.woken(), "woken at the old time");
            match request.poll() {
                Poll::Ready(Err(error)) => {
                    assert!(error.is_rate_limited());
                    assert_eq!(error.retry_after(), Some(Duration::from_secs(40)));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(gates.stats.refused(), 2);
        assert_eq!(gates.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_request_whose_patience_runs_out_during_the_release_goes() {
        let patience = Duration::from_secs(12);
        let (gates, gate) = closed(patience, 1);
        let mut line = line(&gates, &gate, 3);
        tokio::time::advance(PAUSE).await;
        assert!(line[1].poll().is_pending());
        assert!(line[0].poll().is_ready());
        assert!(line[2].poll().is_pending());
        // No answer comes back; at 12 s their patience is over and the gate is open.
        tokio::time::advance(patience - PAUSE).await;
        assert!(
            line[1].woken() && line[2].woken(),
            "woken by their patience"
        );
        assert!(line[2].poll().is_ready());
        assert!(line[1].poll().is_ready());
        assert_eq!((gates.stats.refused(), gates.stats.released()), (0, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_held_request_passes_its_release_to_the_next() {
        let (gates, gate) = closed(Duration::from_secs(60), 1);
        let mut line = line(&gates, &gate, 3);
        let second_count = line[1].count.clone();
        tokio::time::advance(PAUSE).await;
        // The last one's timer fires first: it opens the gate and waits for its turn; the
        // release woke the first, whose caller gives up before it is polled.
        assert!(line[2].poll().is_pending());
        second_count.0.store(0, std::sync::atomic::Ordering::SeqCst);
        let first = line.remove(0);
        drop(first);
        assert_eq!(gates.held(), 2, "the dropped request left the line");
        assert_eq!(
            second_count.0.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "its release went to the next in line"
        );
        assert!(line[0].poll().is_ready());
        assert!(line[1].poll().is_pending());
    }

    #[tokio::test(start_paused = true)]
    async fn a_gate_closed_past_the_patience_refuses_at_once_and_holds_nobody() {
        let (gates, gate) = closed(Duration::from_secs(5), 1);
        match gates.enter(&gate, Instant::now) {
            Entry::Refused(error) => assert_eq!(error.retry_after(), Some(PAUSE)),
            other => panic!("{other:?}"),
        }
        assert_eq!((gates.held(), gates.stats.refused()), (0, 1));
    }
}

/// Model checks (`--cfg tower_outbound_loom`, see `docs/reliability.md`).
#[cfg(all(test, tower_outbound_loom))]
mod loom_models {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use http::StatusCode;
    use loom::thread;

    use super::*;
    use crate::retry_after::Settings;

    use crate::testing::Count;

    fn counting() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    fn woken(count: &Count) -> usize {
        count.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn pause(gates: &Gates, gate: &Gate) {
        gates.close(
            gate,
            None,
            Duration::from_secs(100),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }

    /// Gates releasing one at a time, one gate closed with `n` requests held (each polled once,
    /// with its own waker), whose time is then over.
    fn due(n: usize) -> (Arc<Gates>, Arc<Gate>, Vec<(Hold, Arc<Count>, Waker)>) {
        let gates = Arc::new(Gates::new(Settings {
            max_wait: Duration::from_secs(1000),
            ..Settings::default()
        }));
        let gate = gates.gate_of(None);
        pause(&gates, &gate);
        let holds: Vec<_> = (0..n)
            .map(|_| {
                let Entry::Held(hold) = gates.enter(&gate, Instant::now) else {
                    panic!("held at the closed gate");
                };
                let (count, waker) = counting();
                assert!(matches!(step(&hold, &waker), Step::Wait(_)));
                (hold, count, waker)
            })
            .collect();
        gate.until.store(1, Ordering::Release);
        (gates, gate, holds)
    }

    fn step(hold: &Hold, waker: &Waker) -> Step {
        let mut wake = Vec::new();
        let step = hold.gates.hold_step(
            &hold.gate,
            hold.ticket,
            hold.deadline,
            Instant::now(),
            waker,
            &mut wake,
        );
        wake.into_iter().for_each(Waker::wake);
        step
    }

    /// Steps a hold that may go; marks it answered when it does.
    fn go(hold: &mut Hold, waker: &Waker) -> bool {
        let gone = matches!(step(hold, waker), Step::Go);
        hold.done |= gone;
        gone
    }

    #[test]
    fn loom_a_pause_during_the_release_lets_nobody_past_it() {
        loom::model(|| {
            let (gates, gate, mut holds) = due(2);
            let (mut second, _, second_waker) = holds.pop().unwrap();
            let (mut first, _, first_waker) = holds.pop().unwrap();
            let goer = thread::spawn(move || {
                let gone = go(&mut first, &first_waker);
                (first, gone)
            });
            let closer = {
                let (gates, gate) = (gates.clone(), gate.clone());
                thread::spawn(move || pause(&gates, &gate))
            };
            let (_first, gone) = goer.join().unwrap();
            closer.join().unwrap();
            // Whether the first went before the pause or not, nobody goes after it.
            assert!(!go(&mut second, &second_waker), "went past the new pause");
            assert_eq!(gates.held(), 2 - usize::from(gone));
            assert!(gate.busy.load(Ordering::Acquire));
            assert_eq!(gates.busy.load(Ordering::Acquire), 1, "counted once");
        });
    }

    #[test]
    fn loom_a_dropped_held_request_never_strands_the_next() {
        loom::model(|| {
            let (gates, gate, mut holds) = due(2);
            let (mut second, second_count, second_waker) = holds.pop().unwrap();
            let (first, first_count, first_waker) = holds.pop().unwrap();
            // The first's timer fired first: it opened the gate, and the release woke it
            // (for its next poll).
            let mut wake = Vec::new();
            let mut line = lock(&gate.line);
            gates.reopen_if_due(&gate, &mut line, Instant::now(), &mut wake);
            drop(line);
            wake.into_iter().for_each(Waker::wake);
            assert_eq!(woken(&first_count), 1);
            drop(first_waker);
            // Its caller gives up before that poll, while the second's timer fires.
            let dropper = thread::spawn(move || drop(first));
            let stepper = thread::spawn(move || {
                let gone = go(&mut second, &second_waker);
                (second, second_waker, gone)
            });
            dropper.join().unwrap();
            let (mut second, second_waker, gone) = stepper.join().unwrap();
            // The second went, or was woken after it found the first ahead of it.
            assert!(gone || woken(&second_count) > 0, "stranded");
            assert!(gone || go(&mut second, &second_waker));
            assert_eq!(gates.held(), 0);
            assert_eq!(
                gates.busy.load(Ordering::Acquire),
                0,
                "back to the open path"
            );
        });
    }

    #[test]
    fn loom_a_line_is_never_left_on_the_open_path() {
        loom::model(|| {
            // The last held request leaves while a new request meets the gate.
            let (gates, gate, mut holds) = due(1);
            let (mut last, _, waker) = holds.pop().unwrap();
            let leaver = thread::spawn(move || {
                assert!(go(&mut last, &waker));
            });
            let newcomer = {
                let (gates, gate) = (gates.clone(), gate.clone());
                thread::spawn(move || match gates.enter(&gate, Instant::now) {
                    Entry::Open => None,
                    Entry::Held(hold) => Some(hold),
                    Entry::Refused(error) => panic!("{error}"),
                })
            };
            leaver.join().unwrap();
            let held = newcomer.join().unwrap();
            // A request in line keeps the gate busy, so later ones line up behind it; an
            // empty line puts the gate back on the one-load path.
            let busy = gate.busy.load(Ordering::Acquire);
            assert_eq!(busy, held.is_some());
            assert_eq!(gates.held(), usize::from(held.is_some()));
            assert_eq!(gates.busy.load(Ordering::Acquire), usize::from(busy));
            if let Some(mut held) = held {
                // It waits for the first one's answer, and goes with it.
                let (_, waker) = counting();
                assert!(!go(&mut held, &waker));
                gates.answered(&gate, Answer::Welcome);
                assert!(go(&mut held, &waker));
                assert_eq!(gates.busy.load(Ordering::Acquire), 0);
            }
        });
    }
}
