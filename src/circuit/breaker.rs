//! One breaker's state machine: closed → open → half-open → closed.

use crate::sync::{lock, AtomicBool, AtomicU64, AtomicU8, Mutex, Ordering};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::window::Ring;
use super::{CircuitState, Settings, StateChange};
use crate::line::Line;
use crate::partition::PartitionKey;

/// What a call was allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Closed: an ordinary call.
    Call,
    /// Half-open: one of the probes of half-open round `round`.
    Probe {
        /// Which half-open round the probe belongs to: an outcome (or a dropped caller) of an
        /// earlier round says nothing about this one.
        round: u64,
    },
    /// Open, or half-open with every probe taken: fail fast.
    Reject { retry_in: Duration },
}

/// What a held call may do now, as the breaker decides it under its lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Go: as an ordinary call (closed) or as a probe (half-open). The call left the line.
    Go(Admission),
    /// Fail with `CircuitOpen { retry_in }`: the next probe time is past the call's patience.
    /// The call left the line.
    Refuse { retry_in: std::time::Duration },
    /// Wait until this instant, or until woken, then ask again.
    Wait(Instant),
}

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    ring: Ring,
    opened_at: Instant,
    open_for: Duration,
    probes_in_flight: u32,
    probes_passed: u32,
    /// Half-open rounds so far; probes carry the round they were let through in.
    round: u64,
    /// When the circuit last closed after being open: a trip soon after that opens it for
    /// longer (see `next_open_for`).
    closed_at: Option<Instant>,
    /// The calls held while the circuit is open (with a patience, see `hold.rs`).
    line: Line,
}

/// One breaker. The state is mirrored in an atomic so a closed breaker admits a call without
/// taking the lock; while its window holds no failure, a success is counted without the lock
/// too (in `successes`, moved into the window by the next outcome that takes the lock), since
/// it cannot change the verdict.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: AtomicU8,
    /// Whether the window holds a failure (then every outcome takes the lock).
    failing: AtomicBool,
    /// Successes counted without the lock, not yet in the window.
    successes: Box<[Successes]>,
    inner: Mutex<Inner>,
    pub(crate) key: Option<PartitionKey>,
}

/// Successes counted without the lock, on one shard's cache line.
#[derive(Debug)]
#[repr(align(64))]
struct Successes(AtomicU64);

fn code(state: CircuitState) -> u8 {
    match state {
        CircuitState::Closed => 0,
        CircuitState::Open => 1,
        CircuitState::HalfOpen => 2,
    }
}

/// The mirrored state of a closed breaker still releasing the calls it held: closed for
/// everyone who asks, but calls and outcomes take the lock, to pace the release.
const RELEASING: u8 = 3;

impl Breaker {
    pub(crate) fn new(settings: &Settings, key: Option<PartitionKey>) -> Self {
        Breaker {
            state: AtomicU8::new(0),
            failing: AtomicBool::new(false),
            successes: (0..crate::sync::shards())
                .map(|_| Successes(AtomicU64::new(0)))
                .collect(),
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                ring: Ring::new(settings.window),
                opened_at: Instant::now(),
                open_for: settings.open_duration,
                probes_in_flight: 0,
                probes_passed: 0,
                round: 0,
                closed_at: None,
                line: Line::default(),
            }),
            key,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) == 0
    }

    /// The state now (an open breaker whose time is up reports half-open).
    pub(crate) fn state(&self) -> CircuitState {
        let inner = lock(&self.inner);
        match inner.state {
            CircuitState::Open if Instant::now() >= Self::reopens_at(&inner) => {
                CircuitState::HalfOpen
            }
            state => state,
        }
    }

    /// Whether a closed breaker has nothing worth keeping (for eviction).
    pub(crate) fn is_idle(&self) -> bool {
        let mut inner = lock(&self.inner);
        self.settle(&mut inner);
        inner.state == CircuitState::Closed
            && inner.ring.tally().failures == 0
            && inner.line.is_empty()
    }

    /// Moves the successes counted without the lock into the window (dropped if the breaker
    /// is no longer closed: they belong to a window that is over), and mirrors whether the
    /// window holds a failure.
    fn settle(&self, inner: &mut Inner) {
        let successes: u64 = self
            .successes
            .iter()
            .map(|shard| shard.0.swap(0, Ordering::AcqRel))
            .sum();
        if successes > 0 && inner.state == CircuitState::Closed {
            inner.ring.record_successes(successes);
        }
        self.failing
            .store(inner.ring.tally().failures > 0, Ordering::Release);
    }

    /// When an open breaker lets the next probe through.
    fn reopens_at(inner: &Inner) -> Instant {
        inner
            .opened_at
            .checked_add(inner.open_for)
            .unwrap_or_else(|| inner.opened_at + super::MAX_DURATION)
    }

    fn set(&self, inner: &mut Inner, to: CircuitState, changes: &mut Vec<StateChange>) {
        self.settle(inner);
        let from = inner.state;
        let tally = inner.ring.tally();
        inner.state = to;
        self.state.store(code(to), Ordering::Release);
        changes.push(StateChange {
            key: self.key.clone(),
            from,
            to,
            failure_rate: tally.failure_rate(),
            slow_call_rate: tally.slow_rate(),
            calls: tally.calls,
            open_for: (to == CircuitState::Open).then_some(inner.open_for),
        });
    }

    /// Opens the circuit for `open_for` from `now`; held calls look at the new probe time.
    fn open(
        &self,
        inner: &mut Inner,
        open_for: Duration,
        now: Instant,
        changes: &mut Vec<StateChange>,
        wake: &mut Vec<Waker>,
    ) {
        inner.open_for = open_for;
        inner.opened_at = now;
        inner.probes_in_flight = 0;
        inner.probes_passed = 0;
        inner.line.stop();
        inner.line.wake_all(wake);
        self.set(inner, CircuitState::Open, changes);
    }

    /// How long the circuit opens for at `now`. The first trip opens it for `open_duration`;
    /// with an `open_backoff`, a failed probe, or a trip while the circuit closed less than the
    /// backoff's maximum ago, opens it `factor` times longer than the last time, up to the
    /// maximum (never shorter than `open_duration`).
    fn next_open_for(inner: &Inner, settings: &Settings, now: Instant) -> Duration {
        let Some((factor, max)) = settings.open_backoff else {
            return settings.open_duration;
        };
        let again = match inner.state {
            CircuitState::HalfOpen | CircuitState::Open => true,
            CircuitState::Closed => inner
                .closed_at
                .is_some_and(|closed| now.saturating_duration_since(closed) < max),
        };
        if !again {
            return settings.open_duration;
        }
        Duration::try_from_secs_f64(inner.open_for.as_secs_f64() * f64::from(factor))
            .unwrap_or(max)
            .min(max)
            .max(settings.open_duration)
    }

    /// Half-open to closed: the window starts afresh; held calls start to leave, paced.
    fn close(
        &self,
        inner: &mut Inner,
        settings: &Settings,
        changes: &mut Vec<StateChange>,
        wake: &mut Vec<Waker>,
    ) {
        inner.ring.clear();
        for shard in self.successes.iter() {
            shard.0.store(0, Ordering::Release);
        }
        inner.closed_at = Some(Instant::now());
        self.set(inner, CircuitState::Closed, changes);
        if !inner.line.is_empty() {
            self.state.store(RELEASING, Ordering::Release);
            inner.line.release(settings.half_open_probes, wake);
        }
    }

    /// Open to half-open, once the open time is over.
    fn half_open(&self, inner: &mut Inner, changes: &mut Vec<StateChange>) {
        inner.probes_in_flight = 0;
        inner.probes_passed = 0;
        inner.round = inner.round.wrapping_add(1);
        self.set(inner, CircuitState::HalfOpen, changes);
    }

    /// Whether a half-open breaker has a probe slot free.
    fn probe_free(inner: &Inner, settings: &Settings) -> bool {
        inner.probes_in_flight + inner.probes_passed < settings.half_open_probes
    }

    /// A closed breaker whose line emptied goes back to the lock-free path.
    fn released(&self, inner: &Inner) {
        if inner.state == CircuitState::Closed && inner.line.is_empty() {
            let _ = self.state.compare_exchange(
                RELEASING,
                code(CircuitState::Closed),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// Decides whether a call may go. Transitions are appended to `changes`.
    ///
    /// With a patience (`settings.max_wait` above zero), `Reject` means "hold the call" (see
    /// [`Hold`](super::hold::Hold)), which may still fail it at once; a closed breaker that is
    /// still releasing the calls it held answers `Call` only while releases are left, so new
    /// calls line up behind the held ones.
    pub(crate) fn admit(&self, settings: &Settings, changes: &mut Vec<StateChange>) -> Admission {
        if self.is_closed() {
            return Admission::Call;
        }
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        if inner.state == CircuitState::Open {
            let until = Self::reopens_at(&inner);
            if now < until {
                return Admission::Reject {
                    retry_in: until - now,
                };
            }
            self.half_open(&mut inner, changes);
        }
        let state = inner.state;
        match state {
            CircuitState::Closed
                if settings.max_wait.is_zero() || inner.line.is_empty() || inner.line.take() =>
            {
                Admission::Call
            }
            // Releasing the held calls, none left to release: wait in line.
            CircuitState::Closed => Admission::Reject {
                retry_in: Duration::ZERO,
            },
            CircuitState::HalfOpen if Self::probe_free(&inner, settings) => {
                inner.probes_in_flight += 1;
                Admission::Probe { round: inner.round }
            }
            // Every probe is out: the verdict comes soon.
            CircuitState::HalfOpen | CircuitState::Open => Admission::Reject {
                retry_in: Duration::ZERO,
            },
        }
    }

    /// A place at the end of the line of held calls.
    pub(crate) fn join(&self) -> u64 {
        lock(&self.inner).line.join()
    }

    /// A held call gives up its place (dropped before it was answered).
    pub(crate) fn leave(&self, ticket: u64) {
        let mut wake = Vec::new();
        {
            let mut inner = lock(&self.inner);
            inner.line.leave(ticket, &mut wake);
            self.released(&inner);
        }
        wake.into_iter().for_each(Waker::wake);
    }

    /// What the held call of `ticket`, whose patience runs out at `deadline`, may do at `now`
    /// (see [`Hold`](super::hold::Hold) for the rules). Registers `waker` when it must wait;
    /// appends transitions to `changes` and the calls to wake (outside the lock) to `wake`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn hold_step(
        &self,
        ticket: u64,
        deadline: Instant,
        now: Instant,
        waker: &Waker,
        settings: &Settings,
        changes: &mut Vec<StateChange>,
        wake: &mut Vec<Waker>,
    ) -> Step {
        let mut inner = lock(&self.inner);
        inner.line.polled(ticket);
        if inner.state == CircuitState::Open {
            let until = Self::reopens_at(&inner);
            if now < until {
                if until > deadline {
                    inner.line.leave(ticket, wake);
                    return Step::Refuse {
                        retry_in: until - now,
                    };
                }
                inner.line.wait(ticket, waker);
                return Step::Wait(until);
            }
            self.half_open(&mut inner, changes);
        }
        let state = inner.state;
        let step = match state {
            CircuitState::HalfOpen if Self::probe_free(&inner, settings) => {
                inner.probes_in_flight += 1;
                Step::Go(Admission::Probe { round: inner.round })
            }
            CircuitState::HalfOpen | CircuitState::Open if now >= deadline => Step::Refuse {
                retry_in: Duration::ZERO,
            },
            CircuitState::Closed if inner.line.take() || now >= deadline => {
                Step::Go(Admission::Call)
            }
            CircuitState::Closed if self.state.load(Ordering::Acquire) != RELEASING => {
                Step::Go(Admission::Call)
            }
            _ => {
                inner.line.wait(ticket, waker);
                return Step::Wait(deadline);
            }
        };
        inner.line.leave(ticket, wake);
        self.released(&inner);
        step
    }

    /// Records the outcome of an admitted call. `None` as `failure` means the outcome does not
    /// count (the call was refused elsewhere); a probe then just gives its permit back.
    pub(crate) fn record(
        &self,
        admission: Admission,
        failure: Option<bool>,
        slow: bool,
        now: Option<Instant>,
        settings: &Settings,
        changes: &mut Vec<StateChange>,
    ) {
        if let (Admission::Call, Some(false), false) = (admission, failure, slow) {
            if self.is_closed()
                && !self.failing.load(Ordering::Acquire)
                && matches!(settings.window, super::Window::Count(_))
            {
                // No failure in the window: this success cannot open the breaker. Counted in
                // the thread's own shard, so calls on different cores never write one line.
                let shard = crate::sync::this_shard() % self.successes.len();
                self.successes[shard].0.fetch_add(1, Ordering::AcqRel);
                return;
            }
        }
        let mut wake = Vec::new();
        {
            let mut inner = lock(&self.inner);
            self.settle(&mut inner);
            self.record_locked(
                &mut inner, admission, failure, slow, now, settings, changes, &mut wake,
            );
            self.released(&inner);
        }
        wake.into_iter().for_each(Waker::wake);
    }

    #[allow(clippy::too_many_arguments)]
    fn record_locked(
        &self,
        inner: &mut Inner,
        admission: Admission,
        failure: Option<bool>,
        slow: bool,
        now: Option<Instant>,
        settings: &Settings,
        changes: &mut Vec<StateChange>,
        wake: &mut Vec<Waker>,
    ) {
        match admission {
            Admission::Call => {
                if inner.state != CircuitState::Closed {
                    // Opened by other calls meanwhile; this outcome belongs to the old window.
                    return;
                }
                if !inner.line.is_empty() {
                    // Releasing held calls: each success lets two more go, an outcome that
                    // does not count gives its place to one.
                    match (failure, slow) {
                        (Some(false), false) => inner.line.grow(2, wake),
                        (None, _) => inner.line.grow(1, wake),
                        _ => {}
                    }
                }
                let Some(failure) = failure else { return };
                let now = now.unwrap_or_else(Instant::now);
                let clock = inner.ring.needs_clock().then_some(now);
                inner.ring.record(failure, slow, clock);
                let tally = inner.ring.tally();
                self.failing.store(tally.failures > 0, Ordering::Release);
                let failing = tally.failure_rate() >= settings.failure_rate_threshold;
                let slow_calls = settings
                    .slow_call
                    .is_some_and(|(_, threshold)| tally.slow_rate() >= threshold);
                if tally.calls >= settings.minimum_calls && (failing || slow_calls) {
                    let open_for = Self::next_open_for(inner, settings, now);
                    self.open(inner, open_for, now, changes, wake);
                }
            }
            Admission::Probe { round } => {
                if inner.state != CircuitState::HalfOpen || round != inner.round {
                    // A probe of an earlier round: its slot and its verdict belonged to that
                    // round, which is over.
                    return;
                }
                inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
                match failure {
                    // Refused elsewhere: the slot is free for a held call.
                    None => inner.line.wake(1, wake),
                    Some(true) => {
                        let now = now.unwrap_or_else(Instant::now);
                        let open_for = Self::next_open_for(inner, settings, now);
                        self.open(inner, open_for, now, changes, wake);
                    }
                    Some(false) if slow => {
                        // A slow probe is no proof of health.
                        let now = now.unwrap_or_else(Instant::now);
                        let open_for = Self::next_open_for(inner, settings, now);
                        self.open(inner, open_for, now, changes, wake);
                    }
                    Some(false) => {
                        inner.probes_passed += 1;
                        if inner.probes_passed >= settings.half_open_probes {
                            self.close(inner, settings, changes, wake);
                        }
                    }
                }
            }
            Admission::Reject { .. } => {}
        }
    }

    /// A probe whose call was dropped before it finished gives its permit back, if its round
    /// is still the current one; a held call may take the slot.
    pub(crate) fn release_probe(&self, round: u64) {
        let mut wake = Vec::new();
        {
            let mut inner = lock(&self.inner);
            if inner.state == CircuitState::HalfOpen && round == inner.round {
                inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
                inner.line.wake(1, &mut wake);
            }
        }
        wake.into_iter().for_each(Waker::wake);
    }

    /// Calls in the line of held calls.
    pub(crate) fn held(&self) -> usize {
        lock(&self.inner).line.len()
    }

    /// How long until an open breaker lets a probe through (`None` unless open).
    pub(crate) fn open_for(&self) -> Option<Duration> {
        if self.is_closed() {
            return None;
        }
        let inner = lock(&self.inner);
        if inner.state != CircuitState::Open {
            return None;
        }
        let until = Self::reopens_at(&inner);
        let now = Instant::now();
        (until > now).then(|| until - now)
    }
}

#[cfg(all(test, not(tower_outbound_loom)))]
mod properties {
    /// A breaker judging 4 calls at 50 %, after these outcomes (`true`: a failure).
    fn after(outcomes: &[bool]) -> Breaker {
        let settings = Settings {
            window: crate::circuit::Window::Count(4),
            minimum_calls: 4,
            failure_rate_threshold: 0.5,
            ..Settings::default()
        };
        let breaker = Breaker::new(&settings, None);
        let mut changes = Vec::new();
        for failure in outcomes {
            let failure = Some(*failure);
            breaker.record(
                Admission::Call,
                failure,
                false,
                None,
                &settings,
                &mut changes,
            );
        }
        breaker
    }

    #[test]
    fn successes_counted_without_the_lock_are_in_the_window_when_a_failure_is_judged() {
        assert!(
            after(&[false, false, true]).is_closed(),
            "3 calls: under the minimum"
        );
        assert!(
            !after(&[false, false, true, true]).is_closed(),
            "2 failures in 4 calls: 50 %"
        );
    }

    #[test]
    fn a_success_that_reaches_the_minimum_with_failures_in_the_window_still_opens_it() {
        assert!(after(&[true, true, false]).is_closed());
        assert!(
            !after(&[true, true, false, false]).is_closed(),
            "the fourth call, a success, completes the minimum"
        );
    }

    use super::*;
    use crate::circuit::Window;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Admit,
        /// Finish the oldest outstanding call: failure, success, or refused elsewhere.
        Finish(Option<bool>),
        /// The oldest outstanding call's caller gives up.
        Drop,
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Admit),
            2 => proptest::option::of(any::<bool>()).prop_map(Op::Finish),
            1 => Just(Op::Drop),
            1 => (0u64..20_000).prop_map(Op::Advance),
        ]
    }

    fn legal(from: CircuitState, to: CircuitState) -> bool {
        matches!(
            (from, to),
            (CircuitState::Closed, CircuitState::Open)
                | (CircuitState::Open, CircuitState::HalfOpen)
                | (CircuitState::HalfOpen, CircuitState::Open)
                | (CircuitState::HalfOpen, CircuitState::Closed)
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever happens, in any order: only legal transitions; never more probes out than
        /// configured; an open breaker's refusal names a reopen time in the future.
        #[test]
        fn the_breaker_only_takes_legal_transitions_and_bounds_its_probes(
            probes in 1u32..4,
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async move {
                let settings = Settings {
                    window: Window::Count(4),
                    minimum_calls: 2,
                    open_duration: Duration::from_secs(5),
                    half_open_probes: probes,
                    ..Settings::default()
                };
                let breaker = Breaker::new(&settings, None);
                let mut outstanding = std::collections::VecDeque::new();
                for op in ops {
                    let mut changes = Vec::new();
                    match op {
                        Op::Admit => match breaker.admit(&settings, &mut changes) {
                            Admission::Reject { retry_in } => {
                                if lock(&breaker.inner).state == CircuitState::Open {
                                    prop_assert!(retry_in > Duration::ZERO);
                                }
                            }
                            admission => outstanding.push_back(admission),
                        },
                        Op::Finish(failure) => {
                            if let Some(admission) = outstanding.pop_front() {
                                breaker.record(admission, failure, false, None, &settings, &mut changes);
                            }
                        }
                        Op::Drop => {
                            if let Some(Admission::Probe { round }) = outstanding.pop_front() {
                                breaker.release_probe(round);
                            }
                        }
                        Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                    }
                    for change in &changes {
                        prop_assert!(legal(change.from, change.to), "{:?}", change);
                    }
                    let inner = lock(&breaker.inner);
                    prop_assert!(inner.probes_in_flight <= probes);
                    if inner.state == CircuitState::HalfOpen {
                        prop_assert!(inner.probes_in_flight + inner.probes_passed <= probes);
                    }
                }
                Ok(())
            })?;
        }
    }
}

/// Model checks (`--cfg tower_outbound_loom`, see `docs/reliability.md`).
#[cfg(all(test, tower_outbound_loom))]
mod loom_models {
    use super::*;
    use crate::circuit::Window;
    use loom::sync::Arc;
    use loom::thread;

    fn settings(probes: u32) -> Settings {
        Settings {
            window: Window::Count(1),
            minimum_calls: 1,
            open_duration: Duration::ZERO,
            half_open_probes: probes,
            ..Settings::default()
        }
    }

    /// A breaker that a failure opened, whose open time is already over.
    fn opened(settings: &Settings) -> Arc<Breaker> {
        let breaker = Arc::new(Breaker::new(settings, None));
        let mut changes = Vec::new();
        breaker.record(
            Admission::Call,
            Some(true),
            false,
            None,
            settings,
            &mut changes,
        );
        assert_eq!(lock(&breaker.inner).state, CircuitState::Open);
        breaker
    }

    #[test]
    fn loom_a_success_counted_without_the_lock_is_never_lost_to_a_racing_failure() {
        loom::model(|| {
            let settings = Arc::new(Settings {
                window: Window::Count(4),
                minimum_calls: 4,
                ..Settings::default()
            });
            let breaker = Arc::new(Breaker::new(&settings, None));
            let threads: Vec<_> = [false, true]
                .into_iter()
                .map(|failure| {
                    let (breaker, settings) = (breaker.clone(), settings.clone());
                    thread::spawn(move || {
                        let mut changes = Vec::new();
                        breaker.record(
                            Admission::Call,
                            Some(failure),
                            false,
                            None,
                            &settings,
                            &mut changes,
                        );
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert!(!breaker.is_idle(), "the failure is in the window");
            let inner = lock(&breaker.inner);
            assert_eq!(
                inner.ring.tally().calls,
                2,
                "both outcomes are in the window"
            );
        });
    }

    #[test]
    fn loom_half_open_never_lets_more_probes_through_than_configured() {
        loom::model(|| {
            let settings = Arc::new(settings(1));
            let breaker = opened(&settings);
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (breaker, settings) = (breaker.clone(), settings.clone());
                    thread::spawn(move || {
                        let admission = breaker.admit(&settings, &mut Vec::new());
                        let probe = matches!(admission, Admission::Probe { .. });
                        if probe {
                            let in_flight = lock(&breaker.inner).probes_in_flight;
                            assert!(in_flight <= 1, "{in_flight} probes in flight");
                        }
                        probe
                    })
                })
                .collect();
            let probes = threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .filter(|p| *p)
                .count();
            assert_eq!(probes, 1, "exactly one of two callers probes");
        });
    }

    #[test]
    fn loom_a_released_probe_slot_is_reused_once() {
        loom::model(|| {
            let settings = Arc::new(settings(1));
            let breaker = opened(&settings);
            // One probe is out; its caller drops it while another caller arrives.
            let Admission::Probe { round } = breaker.admit(&settings, &mut Vec::new()) else {
                panic!("the first caller probes");
            };
            let dropper = {
                let breaker = breaker.clone();
                thread::spawn(move || breaker.release_probe(round))
            };
            let arriving = {
                let (breaker, settings) = (breaker.clone(), settings.clone());
                thread::spawn(move || breaker.admit(&settings, &mut Vec::new()))
            };
            dropper.join().unwrap();
            let admission = arriving.join().unwrap();
            let inner = lock(&breaker.inner);
            let expected = u32::from(matches!(admission, Admission::Probe { .. }));
            assert_eq!(
                inner.probes_in_flight, expected,
                "no slot held twice or lost"
            );
        });
    }

    use crate::testing::Count;

    #[test]
    fn loom_a_freed_probe_slot_always_reaches_a_held_call() {
        loom::model(|| {
            let settings = Arc::new(Settings {
                max_wait: Duration::from_secs(60),
                ..settings(1)
            });
            let breaker = opened(&settings);
            let Admission::Probe { round } = breaker.admit(&settings, &mut Vec::new()) else {
                panic!("the first caller probes");
            };
            // Two held calls wait for the probe's verdict.
            let count = std::sync::Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
            let waker = Waker::from(count.clone());
            let now = Instant::now();
            let deadline = now + Duration::from_secs(60);
            let step = |ticket| {
                let mut wake = Vec::new();
                let step = breaker.hold_step(
                    ticket,
                    deadline,
                    now,
                    &waker,
                    &settings,
                    &mut Vec::new(),
                    &mut wake,
                );
                wake.into_iter().for_each(Waker::wake);
                step
            };
            let (first, second) = (breaker.join(), breaker.join());
            assert!(matches!(step(first), Step::Wait(_)));
            let second_waker_count =
                std::sync::Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
            {
                let mut wake = Vec::new();
                let waker = Waker::from(second_waker_count.clone());
                assert!(matches!(
                    breaker.hold_step(
                        second,
                        deadline,
                        now,
                        &waker,
                        &settings,
                        &mut Vec::new(),
                        &mut wake
                    ),
                    Step::Wait(_)
                ));
            }
            // The probe's caller and the first held call's caller give up at once.
            let releaser = {
                let breaker = breaker.clone();
                thread::spawn(move || breaker.release_probe(round))
            };
            let leaver = {
                let breaker = breaker.clone();
                thread::spawn(move || breaker.leave(first))
            };
            releaser.join().unwrap();
            leaver.join().unwrap();
            assert_eq!(
                second_waker_count
                    .0
                    .load(std::sync::atomic::Ordering::SeqCst),
                1,
                "the free slot woke the call left in line"
            );
            assert!(matches!(step(second), Step::Go(Admission::Probe { .. })));
            assert_eq!(breaker.held(), 0);
        });
    }

    #[test]
    fn loom_concurrent_probe_outcomes_take_legal_transitions() {
        loom::model(|| {
            let settings = Arc::new(settings(2));
            let breaker = opened(&settings);
            let a = breaker.admit(&settings, &mut Vec::new());
            let b = breaker.admit(&settings, &mut Vec::new());
            assert!(matches!(
                (a, b),
                (Admission::Probe { .. }, Admission::Probe { .. })
            ));
            let outcome = |failure: bool, admission: Admission| {
                let (breaker, settings) = (breaker.clone(), settings.clone());
                thread::spawn(move || {
                    let mut changes = Vec::new();
                    breaker.record(
                        admission,
                        Some(failure),
                        false,
                        None,
                        &settings,
                        &mut changes,
                    );
                    changes
                })
            };
            let ok = outcome(false, a);
            let failed = outcome(true, b);
            let changes: Vec<StateChange> = ok
                .join()
                .unwrap()
                .into_iter()
                .chain(failed.join().unwrap())
                .collect();
            for change in &changes {
                let legal = matches!(
                    (change.from, change.to),
                    (CircuitState::Closed, CircuitState::Open)
                        | (CircuitState::Open, CircuitState::HalfOpen)
                        | (CircuitState::HalfOpen, CircuitState::Open)
                        | (CircuitState::HalfOpen, CircuitState::Closed)
                );
                assert!(legal, "{:?} -> {:?}", change.from, change.to);
            }
            // One probe failed: whatever the order, the breaker is open again.
            assert_eq!(lock(&breaker.inner).state, CircuitState::Open);
            assert_eq!(
                breaker.state.load(Ordering::Acquire),
                code(CircuitState::Open)
            );
        });
    }
}
