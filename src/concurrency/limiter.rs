//! One upstream's limit on calls in flight: who holds a place, who waits in line, and how the
//! limit moves with what the upstream's answers say. Mechanism only: the layer's future and
//! the composed call drive it (`acquire`, `turn`, `release`), and it is tested and
//! model-checked alone.

use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use crate::line::Line;
use crate::partition::PartitionKey;
use crate::sync::{lock, Mutex};

/// How a limit moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Algorithm {
    /// It does not: a bulkhead.
    Fixed,
    /// Additive increase while calls succeed near the limit, multiplicative decrease on a loss
    /// or on latency above the tolerance.
    Aimd,
    /// TCP Vegas: grows while the estimated queue at the upstream is short, shrinks when it is
    /// long, and multiplies down on a loss.
    Vegas,
}

/// A limiter's settings, shared by every upstream's limiter of one layer.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) algorithm: Algorithm,
    /// The limit a new upstream starts at.
    pub(crate) initial: u32,
    pub(crate) min: u32,
    pub(crate) max: u32,
    /// The factor a loss multiplies the limit by, in (0, 1).
    pub(crate) backoff: f64,
    /// Recent latency above the baseline times this is a loss (AIMD); `None`: latency is not
    /// a signal.
    pub(crate) tolerance: Option<f64>,
    /// How long a call may wait in line for a place; zero fails at once.
    pub(crate) max_wait: Duration,
    /// The most per-upstream limiters kept.
    pub(crate) max_partitions: usize,
}

impl Settings {
    /// The adaptive defaults: AIMD from 20, between 1 and 1,000, ×0.9 on a loss, latency over
    /// 1.5 times the baseline a loss (×0.95), 30 s in line at most.
    pub(crate) fn adaptive() -> Self {
        Settings {
            algorithm: Algorithm::Aimd,
            initial: 20,
            min: 1,
            max: 1000,
            backoff: 0.9,
            tolerance: Some(1.5),
            max_wait: Duration::from_secs(30),
            max_partitions: 1024,
        }
    }

    /// A fixed limit of `limit` (at least 1).
    pub(crate) fn fixed(limit: u32) -> Self {
        let limit = limit.max(1);
        Settings {
            algorithm: Algorithm::Fixed,
            initial: limit,
            min: limit,
            max: limit,
            ..Settings::adaptive()
        }
    }
}

/// What one attempt said about its upstream's load.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    /// When the attempt was sent.
    pub(crate) started: Instant,
    /// How long the upstream took to answer.
    pub(crate) latency: Duration,
    /// Whether the answer was a sign of overload: 429, 503, 504, a server-named wait, a used-up
    /// quota, a timeout or a transport error.
    pub(crate) loss: bool,
}

/// What a call met when it asked for a place.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// It holds a place: it goes.
    Go,
    /// It waits in line, with this ticket.
    Wait(u64),
    /// The limit is reached and calls may not wait: it is refused.
    Full,
}

/// The figures of one limiter at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Figures {
    pub(crate) limit: u32,
    pub(crate) in_flight: u32,
    pub(crate) queued: u32,
}

/// One upstream's limit.
#[derive(Debug)]
pub(crate) struct Limiter {
    state: Mutex<State>,
    pub(crate) key: Option<PartitionKey>,
    /// The upstream's gauges (feature `metrics`), found on first use.
    #[cfg(feature = "metrics")]
    pub(crate) meters: arc_swap::ArcSwapOption<crate::metrics::upstream::Upstream>,
}

#[derive(Debug)]
struct State {
    /// The limit as the algorithm keeps it; calls see its whole part.
    limit: f64,
    in_flight: u32,
    line: Line,
    latency: Latency,
    /// When the limit last moved on a sample: an attempt sent before it says nothing new.
    changed: Option<Instant>,
    /// The limit a run of losses started from, times the backoff: after the run (an outage
    /// drives the limit to its minimum) successes grow the limit by one each, doubling it per
    /// round trip, back to this level; above it, by one per round trip.
    recovery: f64,
    /// Whether the last sample that moved the limit was a loss.
    losing: bool,
    /// Whether the limit has not met the upstream's limit yet (no loss, no queueing): it
    /// grows by one per answer, doubling per round trip, as TCP's slow start does.
    starting: bool,
}

/// Recent latency and its baseline, in seconds. The baseline falls quickly towards faster
/// answers and rises slowly, by samples rather than time, so it survives a quiet period.
#[derive(Debug, Default)]
struct Latency {
    recent: f64,
    baseline: f64,
    samples: u32,
}

/// Recent latency over the baseline by this factor means requests queue at the upstream: an
/// AIMD limit stops growing (and falls only at the tolerance, or on a loss), so it settles at
/// the knee instead of sawing through it.
const QUEUEING: f64 = 1.1;

/// Samples before latency is read as a signal.
const WARM_UP: u32 = 20;

impl Latency {
    fn observe(&mut self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        if self.samples == 0 {
            self.recent = seconds;
            self.baseline = seconds;
        } else {
            self.recent += 0.1 * (seconds - self.recent);
            let rate = if seconds < self.baseline { 0.1 } else { 0.0005 };
            self.baseline += rate * (seconds - self.baseline);
        }
        self.samples = self.samples.saturating_add(1);
    }

    /// Whether recent latency is above the baseline times `tolerance`.
    fn is_high(&self, tolerance: f64) -> bool {
        self.samples >= WARM_UP && self.recent > self.baseline * tolerance
    }

    /// Whether answers have started to queue at the upstream: recent latency more than
    /// [`QUEUEING`] over the baseline. The limit then holds instead of growing.
    fn is_queueing(&self) -> bool {
        self.is_high(QUEUEING)
    }
}

impl Limiter {
    pub(crate) fn new(settings: &Settings, key: Option<PartitionKey>) -> Self {
        let initial = settings.initial.clamp(settings.min, settings.max);
        Limiter {
            state: Mutex::new(State {
                limit: f64::from(initial),
                in_flight: 0,
                line: Line::default(),
                latency: Latency::default(),
                changed: None,
                recovery: 0.0,
                losing: false,
                starting: true,
            }),
            key,
            #[cfg(feature = "metrics")]
            meters: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// A place for a call that is not in line: at once when the line is empty and the limit
    /// allows, else a place in line (or a refusal, when calls may not wait).
    pub(crate) fn acquire(&self, settings: &Settings) -> Acquired {
        let mut state = lock(&self.state);
        if state.line.is_empty() && state.in_flight < state.cap() {
            state.in_flight += 1;
            return Acquired::Go;
        }
        if settings.max_wait.is_zero() {
            return Acquired::Full;
        }
        Acquired::Wait(state.line.join())
    }

    /// A place now, if one is free and no call is in line: for a request that goes only if it
    /// costs no wait (a hedge's copy). Never joins the line.
    pub(crate) fn try_acquire(&self) -> bool {
        let mut state = lock(&self.state);
        let free = state.line.is_empty() && state.in_flight < state.cap();
        if free {
            state.in_flight += 1;
        }
        free
    }

    /// Whether the call of `ticket` may go now: it takes a place when its turn has come (the
    /// calls ahead of it in line leave first), else waits to be woken with `waker`.
    pub(crate) fn turn(&self, ticket: u64, waker: &Waker) -> bool {
        let mut state = lock(&self.state);
        state.line.polled(ticket);
        let free = state.cap().saturating_sub(state.in_flight);
        if state.line.among_first(ticket, free as usize) {
            // Its wake was used by this poll: nothing passes on.
            state.line.leave(ticket, &mut Vec::new());
            state.in_flight += 1;
            return true;
        }
        state.line.wait(ticket, waker);
        false
    }

    /// The call of `ticket` leaves the line without a place (it gave up or was dropped); a
    /// wake it did not use goes to the next.
    pub(crate) fn leave(&self, ticket: u64) {
        let mut wake = Vec::new();
        lock(&self.state).line.leave(ticket, &mut wake);
        wake.into_iter().for_each(Waker::wake);
    }

    /// A call gives its place back, with what its attempt said (`None`: nothing, as when it
    /// was dropped or refused by another step), and the calls in line that now fit are woken.
    pub(crate) fn release(&self, settings: &Settings, sample: Option<Sample>, now: Instant) {
        let mut wake = Vec::new();
        {
            let mut state = lock(&self.state);
            let in_flight = state.in_flight;
            state.in_flight = in_flight.saturating_sub(1);
            if let Some(sample) = sample {
                state.learn(settings, sample, in_flight, now);
            }
            let free = state.cap().saturating_sub(state.in_flight);
            if free > 0 && !state.line.is_empty() {
                state.line.wake(free, &mut wake);
            }
        }
        wake.into_iter().for_each(Waker::wake);
    }

    pub(crate) fn figures(&self) -> Figures {
        let state = lock(&self.state);
        Figures {
            limit: state.cap(),
            in_flight: state.in_flight,
            queued: u32::try_from(state.line.len()).unwrap_or(u32::MAX),
        }
    }

    /// Whether nothing here is worth keeping: no call in flight or in line. (A limit learnt
    /// is given up with it: the next call starts from the initial limit.)
    pub(crate) fn is_idle(&self) -> bool {
        let state = lock(&self.state);
        state.in_flight == 0 && state.line.is_empty()
    }
}

impl State {
    /// The limit calls see: its whole part, at least 1.
    fn cap(&self) -> u32 {
        // `limit` is kept within [min, max] of u32 values, so the cast is exact.
        (self.limit.floor() as u32).max(1)
    }

    /// Moves the limit on one sample; `in_flight` counts the sample's own call.
    fn learn(&mut self, settings: &Settings, sample: Sample, in_flight: u32, now: Instant) {
        if settings.algorithm == Algorithm::Fixed {
            return;
        }
        if !sample.loss {
            self.latency.observe(sample.latency);
        }
        // One move per round trip: an attempt sent before the last move saw the old limit.
        let fresh = self.changed.is_none_or(|changed| sample.started >= changed);
        let (min, max) = (f64::from(settings.min), f64::from(settings.max));
        let limit = self.limit;
        let busy = f64::from(in_flight) * 2.0 >= limit;
        let next = match settings.algorithm {
            Algorithm::Fixed => return,
            Algorithm::Aimd => {
                let high = settings
                    .tolerance
                    .is_some_and(|tolerance| self.latency.is_high(tolerance));
                let queueing = settings
                    .tolerance
                    .is_some_and(|_| self.latency.is_queueing());
                if sample.loss || high || queueing {
                    self.starting = false;
                }
                if sample.loss || high {
                    if !fresh {
                        return;
                    }
                    self.changed = Some(now);
                    // Latency alone is a gentler signal than a refusal: the square root of
                    // the factor (0.95 for 0.9).
                    let factor = if sample.loss {
                        settings.backoff
                    } else {
                        settings.backoff.sqrt()
                    };
                    if !self.losing {
                        self.recovery = limit * factor;
                        self.losing = true;
                    }
                    limit * factor
                } else if limit + 1.0 <= self.recovery || (self.starting && busy) {
                    // Back from a run of losses to a level that worked, or not at the
                    // upstream's limit yet: one more per answer.
                    self.losing = false;
                    limit + 1.0
                } else if busy && !queueing {
                    // About one more per limit's worth of answers: one per round trip.
                    self.losing = false;
                    limit + 1.0 / limit
                } else {
                    self.losing = false;
                    return;
                }
            }
            Algorithm::Vegas => {
                if !fresh {
                    return;
                }
                if sample.loss {
                    self.changed = Some(now);
                    limit * settings.backoff
                } else if self.latency.samples < WARM_UP {
                    if !busy {
                        return;
                    }
                    self.changed = Some(now);
                    limit + 1.0
                } else {
                    let latency = &self.latency;
                    let step = limit.log10().max(1.0);
                    let queue = limit * (1.0 - latency.baseline / latency.recent.max(f64::EPSILON));
                    self.changed = Some(now);
                    if queue <= 3.0 * step && busy {
                        limit + step
                    } else if queue >= 6.0 * step {
                        limit - step
                    } else {
                        return;
                    }
                }
            }
        };
        self.limit = if next.is_finite() {
            next.clamp(min, max)
        } else {
            limit
        };
    }
}

#[cfg(all(test, not(tower_outbound_loom)))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    use crate::testing::Count;

    fn counter() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    fn sample(at: Instant, millis: u64, loss: bool) -> Sample {
        Sample {
            started: at,
            latency: Duration::from_millis(millis),
            loss,
        }
    }

    #[test]
    fn a_fixed_limit_lets_n_through_then_lines_up_the_rest_in_order() {
        let settings = Settings::fixed(2);
        let limiter = Limiter::new(&settings, None);
        assert_eq!(limiter.acquire(&settings), Acquired::Go);
        assert_eq!(limiter.acquire(&settings), Acquired::Go);
        let Acquired::Wait(first) = limiter.acquire(&settings) else {
            panic!("the third waits");
        };
        let Acquired::Wait(second) = limiter.acquire(&settings) else {
            panic!("the fourth waits");
        };
        let (count, waker) = counter();
        assert!(!limiter.turn(second, &waker));
        assert!(!limiter.turn(first, &waker));
        limiter.release(&settings, None, Instant::now());
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "one place, one wake");
        // The second in line is polled first: it is not its turn.
        assert!(!limiter.turn(second, &waker));
        assert!(limiter.turn(first, &waker));
        assert_eq!(
            limiter.figures(),
            Figures {
                limit: 2,
                in_flight: 2,
                queued: 1
            }
        );
    }

    #[test]
    fn with_no_wait_a_full_limit_refuses() {
        let settings = Settings {
            max_wait: Duration::ZERO,
            ..Settings::fixed(1)
        };
        let limiter = Limiter::new(&settings, None);
        assert_eq!(limiter.acquire(&settings), Acquired::Go);
        assert_eq!(limiter.acquire(&settings), Acquired::Full);
    }

    #[test]
    fn a_woken_call_that_leaves_passes_its_wake_to_the_next() {
        let settings = Settings::fixed(1);
        let limiter = Limiter::new(&settings, None);
        assert_eq!(limiter.acquire(&settings), Acquired::Go);
        let (Acquired::Wait(first), Acquired::Wait(second)) =
            (limiter.acquire(&settings), limiter.acquire(&settings))
        else {
            panic!("both wait");
        };
        let (first_count, first_waker) = counter();
        let (second_count, second_waker) = counter();
        assert!(!limiter.turn(first, &first_waker));
        assert!(!limiter.turn(second, &second_waker));
        limiter.release(&settings, None, Instant::now());
        assert_eq!(first_count.0.load(Ordering::SeqCst), 1);
        limiter.leave(first);
        assert_eq!(
            second_count.0.load(Ordering::SeqCst),
            1,
            "the wake was passed on"
        );
        assert!(limiter.turn(second, &second_waker));
    }

    #[test]
    fn a_loss_multiplies_the_limit_down_by_the_backoff_factor() {
        let settings = Settings {
            initial: 40,
            backoff: 0.5,
            ..Settings::adaptive()
        };
        let limiter = Limiter::new(&settings, None);
        let start = Instant::now();
        assert_eq!(limiter.acquire(&settings), Acquired::Go);
        limiter.release(&settings, Some(sample(start, 5, true)), start);
        assert_eq!(limiter.figures().limit, 20);
    }

    #[test]
    fn losses_of_one_round_trip_move_the_limit_once() {
        let settings = Settings {
            initial: 40,
            backoff: 0.5,
            ..Settings::adaptive()
        };
        let limiter = Limiter::new(&settings, None);
        let sent = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.acquire(&settings), Acquired::Go);
        }
        let answered = sent + Duration::from_millis(5);
        for _ in 0..3 {
            limiter.release(&settings, Some(sample(sent, 5, true)), answered);
        }
        assert_eq!(limiter.figures().limit, 20, "halved once, not three times");
        // A call sent after the move may move it again.
        assert_eq!(limiter.acquire(&settings), Acquired::Go);
        limiter.release(&settings, Some(sample(answered, 5, true)), answered);
        assert_eq!(limiter.figures().limit, 10);
    }

    #[test]
    fn successes_near_the_limit_grow_it_by_about_one_per_limit_of_answers() {
        let settings = Settings {
            initial: 8,
            ..Settings::adaptive()
        };
        let limiter = Limiter::new(&settings, None);
        let now = Instant::now();
        // A loss first: the limit has met the upstream's (8 × 0.9 = 7.2).
        assert_eq!(limiter.acquire(&settings), Acquired::Go);
        limiter.release(&settings, Some(sample(now, 5, true)), now);
        for _ in 0..7 {
            assert_eq!(limiter.acquire(&settings), Acquired::Go);
        }
        for _ in 0..6 {
            limiter.release(&settings, Some(sample(now, 5, false)), now);
            assert_eq!(limiter.acquire(&settings), Acquired::Go);
        }
        assert_eq!(limiter.figures().limit, 7, "7.997: not 8 yet");
        limiter.release(&settings, Some(sample(now, 5, false)), now);
        assert_eq!(limiter.figures().limit, 8);
    }

    #[test]
    fn a_new_limit_grows_by_one_per_answer_until_the_first_loss() {
        let settings = Settings {
            initial: 2,
            ..Settings::adaptive()
        };
        let limiter = Limiter::new(&settings, None);
        let now = Instant::now();
        let answer = |loss: bool| {
            limiter.release(&settings, Some(sample(now, 5, loss)), now);
        };
        // Takes every free place (one more call would wait in line: it gives up its ticket).
        let fill = || loop {
            match limiter.acquire(&settings) {
                Acquired::Go => {}
                Acquired::Wait(ticket) => break limiter.leave(ticket),
                Acquired::Full => unreachable!("calls may wait"),
            }
        };
        fill();
        // 30 answers with the limit in use: one more each (a doubling per round trip).
        for _ in 0..30 {
            answer(false);
            fill();
        }
        assert_eq!(limiter.figures().limit, 32);
        // The first loss ends it: ×0.9, then about one more per round trip.
        answer(true);
        assert_eq!(limiter.figures().limit, 28);
        for _ in 0..10 {
            fill();
            answer(false);
        }
        assert_eq!(limiter.figures().limit, 29, "{:?}", limiter.figures());
    }

    /// An outage drove the limit to its minimum, and it then grew back by one per round trip:
    /// a job throttled to 20 requests a second took 25 s to get 32 batches in flight again.
    #[test]
    fn after_a_run_of_losses_the_limit_doubles_per_round_trip_back_to_where_it_fell_from() {
        let settings = Settings {
            initial: 32,
            backoff: 0.5,
            ..Settings::adaptive()
        };
        let limiter = Limiter::new(&settings, None);
        let mut now = Instant::now();
        // Five round trips of failures: 32 → 16 → 8 → 4 → 2 → 1.
        for _ in 0..5 {
            assert_eq!(limiter.acquire(&settings), Acquired::Go);
            now += Duration::from_millis(5);
            limiter.release(&settings, Some(sample(now, 5, true)), now);
        }
        assert_eq!(limiter.figures().limit, 1);
        // Round trips with the limit in use: 1 → 2 → 4 → 8 → 16 (32 × 0.5), then slowly.
        let mut limits = Vec::new();
        for _ in 0..6 {
            let mut going = 0;
            loop {
                match limiter.acquire(&settings) {
                    Acquired::Go => going += 1,
                    Acquired::Wait(ticket) => break limiter.leave(ticket),
                    Acquired::Full => unreachable!("calls may wait"),
                }
            }
            now += Duration::from_millis(5);
            for _ in 0..going {
                limiter.release(&settings, Some(sample(now, 5, false)), now);
            }
            limits.push(limiter.figures().limit);
        }
        // (Here the round's answers come back together, so only the first half find the limit
        // in use: half a place per round trip past the recovery level.)
        assert_eq!(limits, vec![2, 4, 8, 16, 16, 16]);
        assert!(limiter.state.lock().unwrap().limit > 16.9);
    }

    #[test]
    fn successes_far_below_the_limit_do_not_grow_it() {
        let settings = Settings {
            initial: 10,
            ..Settings::adaptive()
        };
        let limiter = Limiter::new(&settings, None);
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(limiter.acquire(&settings), Acquired::Go);
            limiter.release(&settings, Some(sample(now, 5, false)), now);
        }
        assert_eq!(
            limiter.figures().limit,
            10,
            "one in flight says nothing of room"
        );
    }

    #[test]
    fn latency_over_the_tolerance_is_a_loss() {
        let settings = Settings {
            initial: 50,
            ..Settings::adaptive()
        };
        let limiter = Limiter::new(&settings, None);
        let mut now = Instant::now();
        for _ in 0..50 {
            assert_eq!(limiter.acquire(&settings), Acquired::Go);
        }
        for _ in 0..40 {
            limiter.release(&settings, Some(sample(now, 5, false)), now);
            assert_eq!(limiter.acquire(&settings), Acquired::Go);
        }
        let before = limiter.figures().limit;
        for _ in 0..40 {
            now += Duration::from_millis(1);
            limiter.release(&settings, Some(sample(now, 50, false)), now);
        }
        assert!(limiter.figures().limit < before, "{:?}", limiter.figures());
    }

    #[test]
    fn the_limit_holds_while_latency_shows_queueing_below_the_tolerance() {
        let settings = Settings {
            initial: 10,
            ..Settings::adaptive()
        };
        let limiter = Limiter::new(&settings, None);
        let now = Instant::now();
        let round = |millis: u64| {
            let mut going = 0;
            while going < 10 {
                assert_eq!(limiter.acquire(&settings), Acquired::Go);
                going += 1;
            }
            for _ in 0..going {
                limiter.release(&settings, Some(sample(now, millis, false)), now);
            }
        };
        for _ in 0..3 {
            round(10);
        }
        let grown = limiter.state.lock().unwrap().limit;
        assert!(grown > 10.0, "{grown}");
        // 12 ms against a baseline of 10: queueing, under the tolerance of 1.5. Once the
        // recent latency shows it (a round), the limit holds.
        round(12);
        let seen = limiter.state.lock().unwrap().limit;
        assert!(seen > grown);
        for _ in 0..10 {
            round(12);
        }
        let held = limiter.state.lock().unwrap().limit;
        assert_eq!(held, seen, "it neither grew nor fell");
    }

    /// Batches whose latency varied with their size read as queueing, and drove a job's
    /// limit to 1; without a tolerance latency is no signal at all.
    #[test]
    fn without_a_tolerance_latency_neither_holds_nor_lowers_the_limit() {
        let settings = Settings {
            initial: 10,
            tolerance: None,
            ..Settings::adaptive()
        };
        let limiter = Limiter::new(&settings, None);
        let now = Instant::now();
        for round in 0..20u64 {
            for _ in 0..10 {
                assert_eq!(limiter.acquire(&settings), Acquired::Go);
            }
            // Answers from 4 to 40 ms.
            for i in 0..10u64 {
                let millis = 4 + (round * 7 + i * 13) % 37;
                limiter.release(&settings, Some(sample(now, millis, false)), now);
            }
        }
        assert!(limiter.figures().limit > 10, "{:?}", limiter.figures());
    }

    #[test]
    fn the_baseline_survives_a_quiet_period() {
        let settings = Settings {
            initial: 8,
            ..Settings::adaptive()
        };
        let limiter = Limiter::new(&settings, None);
        let start = Instant::now();
        for _ in 0..30 {
            assert_eq!(limiter.acquire(&settings), Acquired::Go);
            limiter.release(&settings, Some(sample(start, 5, false)), start);
        }
        // An hour without a call, then slow answers: still slow against the old baseline.
        let later = start + Duration::from_secs(3600);
        for _ in 0..30 {
            assert_eq!(limiter.acquire(&settings), Acquired::Go);
            limiter.release(&settings, Some(sample(later, 50, false)), later);
        }
        assert!(limiter.figures().limit < 8);
    }

    #[test]
    fn vegas_grows_while_latency_stays_at_the_baseline_and_shrinks_when_it_queues() {
        let settings = Settings {
            algorithm: Algorithm::Vegas,
            initial: 10,
            ..Settings::adaptive()
        };
        let limiter = Limiter::new(&settings, None);
        let mut now = Instant::now();
        let mut held = 0;
        let round = |millis: u64, now: Instant, held: &mut u32| {
            loop {
                match limiter.acquire(&settings) {
                    Acquired::Go => *held += 1,
                    // The call that would wait gives up its place in line.
                    Acquired::Wait(ticket) => break limiter.leave(ticket),
                    Acquired::Full => break,
                }
            }
            for _ in 0..*held {
                limiter.release(&settings, Some(sample(now, millis, false)), now);
            }
            *held = 0;
        };
        for _ in 0..30 {
            now += Duration::from_millis(5);
            round(5, now, &mut held);
        }
        let grown = limiter.figures().limit;
        assert!(grown > 10, "{grown}");
        for _ in 0..30 {
            now += Duration::from_millis(5);
            round(50, now, &mut held);
        }
        assert!(limiter.figures().limit < grown, "{:?}", limiter.figures());
    }

    #[test]
    fn a_fixed_limit_never_moves() {
        let settings = Settings::fixed(3);
        let limiter = Limiter::new(&settings, None);
        let now = Instant::now();
        for loss in [true, false, true] {
            assert_eq!(limiter.acquire(&settings), Acquired::Go);
            limiter.release(&settings, Some(sample(now, 500, loss)), now);
        }
        assert_eq!(limiter.figures().limit, 3);
    }
}

#[cfg(all(test, not(tower_outbound_loom)))]
mod properties {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Event {
        Acquire,
        Release { millis: u16, loss: bool },
        Leave,
        Turn,
        Tick(u16),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Event::Acquire),
            (any::<u16>(), any::<bool>())
                .prop_map(|(millis, loss)| Event::Release { millis, loss }),
            Just(Event::Leave),
            Just(Event::Turn),
            any::<u16>().prop_map(Event::Tick),
        ]
    }

    proptest! {
        /// Whatever the answers and their order, the limit stays within its bounds, calls in
        /// flight never exceed it when they took their place, and every place is given back.
        #[test]
        fn the_limit_stays_within_its_bounds_and_in_flight_within_the_limit(
            algorithm in prop_oneof![Just(Algorithm::Aimd), Just(Algorithm::Vegas), Just(Algorithm::Fixed)],
            min in 1u32..8,
            span in 0u32..64,
            initial in 0u32..100,
            backoff in 0.05f64..0.99,
            events in proptest::collection::vec(event(), 0..400),
        ) {
            let settings = Settings {
                algorithm,
                initial,
                min,
                max: min + span,
                backoff,
                ..Settings::adaptive()
            };
            let limiter = Limiter::new(&settings, None);
            let waker = noop();
            let mut now = Instant::now();
            let mut going: Vec<Instant> = Vec::new();
            let mut waiting: Vec<u64> = Vec::new();
            for event in events {
                match event {
                    Event::Acquire => match limiter.acquire(&settings) {
                        Acquired::Go => going.push(now),
                        Acquired::Wait(ticket) => waiting.push(ticket),
                        Acquired::Full => {}
                    },
                    Event::Turn => {
                        if let Some(&ticket) = waiting.first() {
                            if limiter.turn(ticket, &waker) {
                                waiting.remove(0);
                                going.push(now);
                            }
                        }
                    }
                    Event::Leave => {
                        if let Some(ticket) = waiting.pop() {
                            limiter.leave(ticket);
                        }
                    }
                    Event::Release { millis, loss } => {
                        if let Some(started) = going.pop() {
                            let sample = Sample {
                                started,
                                latency: Duration::from_millis(u64::from(millis)),
                                loss,
                            };
                            limiter.release(&settings, Some(sample), now);
                        }
                    }
                    Event::Tick(millis) => now += Duration::from_millis(u64::from(millis)),
                }
                let figures = limiter.figures();
                prop_assert!(figures.limit >= settings.min && figures.limit <= settings.max, "{figures:?}");
                prop_assert_eq!(figures.in_flight as usize, going.len());
                prop_assert_eq!(figures.queued as usize, waiting.len());
            }
            // A place is only taken within the limit of its moment: with no release in
            // between, a full limiter lets nobody else in.
            let figures = limiter.figures();
            if figures.in_flight >= figures.limit {
                prop_assert_ne!(limiter.acquire(&settings), Acquired::Go);
            }
        }
    }

    fn noop() -> Waker {
        Waker::noop().clone()
    }
}

#[cfg(all(test, tower_outbound_loom))]
mod loom_models {
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    /// A call giving its place back with a loss (the limit of 3 halves) while another asks for
    /// one: the count of calls in flight stays exact, and the asker goes only on the limit
    /// of its moment.
    #[test]
    fn loom_acquire_release_and_resize_keep_the_count_exact() {
        loom::model(|| {
            let settings = Arc::new(Settings {
                initial: 3,
                backoff: 0.5,
                ..Settings::adaptive()
            });
            let limiter = Arc::new(Limiter::new(&settings, None));
            let now = Instant::now();
            assert_eq!(limiter.acquire(&settings), Acquired::Go);
            assert_eq!(limiter.acquire(&settings), Acquired::Go);
            let releaser = {
                let (limiter, settings) = (limiter.clone(), settings.clone());
                thread::spawn(move || {
                    let sample = Sample {
                        started: now,
                        latency: Duration::from_millis(5),
                        loss: true,
                    };
                    limiter.release(&settings, Some(sample), now);
                })
            };
            let took = limiter.acquire(&settings);
            releaser.join().unwrap();
            let figures = limiter.figures();
            assert_eq!(figures.limit, 1, "3 × 0.5, whole part");
            match took {
                // It took the third place before the limit shrank: two in flight, over the
                // new limit of one until one comes back (a limit never takes places back).
                Acquired::Go => assert_eq!(figures.in_flight, 2),
                Acquired::Wait(ticket) => {
                    assert_eq!(figures.in_flight, 1);
                    assert!(!limiter.turn(ticket, &Waker::noop().clone()));
                    limiter.leave(ticket);
                }
                Acquired::Full => unreachable!("calls may wait"),
            }
        });
    }

    /// A place given back while a call waits in line: the call is woken, or sees the place
    /// when it looks; it is never left waiting beside a free place.
    #[test]
    fn loom_a_freed_place_always_reaches_the_call_in_line() {
        loom::model(|| {
            let settings = Arc::new(Settings::fixed(1));
            let limiter = Arc::new(Limiter::new(&settings, None));
            assert_eq!(limiter.acquire(&settings), Acquired::Go);
            let Acquired::Wait(ticket) = limiter.acquire(&settings) else {
                panic!("the second waits");
            };
            let count = std::sync::Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
            let waker = Waker::from(count.clone());
            let releaser = {
                let (limiter, settings) = (limiter.clone(), settings.clone());
                thread::spawn(move || limiter.release(&settings, None, Instant::now()))
            };
            let went = limiter.turn(ticket, &waker);
            releaser.join().unwrap();
            if !went {
                assert_eq!(
                    count.0.load(std::sync::atomic::Ordering::SeqCst),
                    1,
                    "a call left waiting was woken"
                );
                assert!(limiter.turn(ticket, &waker));
            }
            assert_eq!(limiter.figures().in_flight, 1);
        });
    }

    use crate::testing::Count;
}
