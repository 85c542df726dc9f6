//! The retry budget: retries at most a share of calls, per upstream, so that an outage does not
//! multiply the load on an upstream that is already failing.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::partition::{PartitionKey, Registry, Scope};
use crate::sync::{lock, AtomicU64, Mutex, Ordering};

/// Caps retries at a share of calls over a sliding window, per upstream — the model of
/// Finagle, Linkerd and Envoy (and of tower's `TpsBudget`, whose check and withdrawal are two
/// steps that concurrent retries can interleave to overspend; here they are one).
///
/// Every call deposits into its upstream's budget; every retry withdraws. A retry the budget
/// cannot pay for is not made: the retry layer returns the last response or error at once, and
/// counts it in [`RetryStats::budget_exhausted`](super::RetryStats::budget_exhausted). With the
/// defaults, **over any 10 s, retries are at most 5 per second plus 20 % of the calls made in
/// those 10 s and the 10 s before them** (the floor lets a quiet client still retry its rare
/// failures; a retry may spend what calls deposited up to a window earlier, as in tower's
/// `TpsBudget`). In the long run retries are at most a fifth of calls plus 5 a second: during an
/// outage every call becomes at most 1.2 attempts on average instead of 4. A retry is counted
/// against the budget for the window plus one tenth of it (the slice it was made in), so a
/// spent retry comes back between 10 and 11 s after it was made.
///
/// Budgets are kept per upstream (scheme, host and port) by default, at most 1,024 of them;
/// beyond that, new upstreams share one budget. Clones share the budgets.
///
/// | setting | default | out-of-range values |
/// |---|---|---|
/// | [`ratio`](Self::ratio) | 0.2 | clamped to 0.0–1000.0; NaN keeps the current value |
/// | [`min_per_second`](Self::min_per_second) | 5 | clamped to 0–1,000,000 |
/// | [`window`](Self::window) | 10 s | clamped to 1–60 s |
/// | [`partition`](Self::partition) | [`Scope::Upstream`] | |
#[derive(Clone)]
pub struct RetryBudget {
    shared: Arc<Shared>,
    scope: Scope,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Settings {
    window: Duration,
    min_per_second: u32,
    ratio: f32,
    max_partitions: usize,
}

impl Settings {
    fn budget(&self) -> Allowance {
        Allowance::new(self, Instant::now())
    }
}

/// Slots the window is kept in.
const SLOTS: usize = 10;
/// Slices a retry stays counted in: the window's and one more. A slice is a tenth of the
/// window, and a retry made late in a slice would otherwise leave the count less than a window
/// after it was made, letting more than the floor through in some window of real time (the
/// property test's shrunk counterexample, `proptest-regressions/retry/budget.txt`). Counted one
/// slice longer, every retry of any window of real time is still counted when the last of them
/// is made, so `floor · window + ratio · calls` bounds them.
const SPENT_SLOTS: usize = SLOTS + 1;
/// What one retry costs, in the budget's units (a call deposits `ratio` of it).
const RETRY: i64 = 1000;

/// One upstream's budget: what calls deposited and retries withdrew over the last window,
/// in [`SLOTS`] slices, plus a floor that is always there.
///
/// A call deposits with one compare-and-swap on its slice's counter, in the counters of its
/// thread's shard (one cache line per core): no lock on the happy path, and calls on
/// different cores never write one line. A retry sums the shards, checks the balance and
/// withdraws in one critical section, so concurrent retries cannot spend the same balance
/// twice; a deposit racing it is counted either before or after, never lost.
#[derive(Debug)]
pub(crate) struct Allowance {
    deposit: i64,
    reserve: i64,
    slot: Duration,
    base: Instant,
    /// Calls per slice, per shard: the slice's number (low 32 bits of it) in the high half,
    /// its count in the low half. Slice `n` lives at `n % SLOTS` of each shard.
    calls: Box<[Calls]>,
    /// Retries per slice, `(slice number, retries)`; slice `n` lives at `n % SPENT_SLOTS`.
    /// A retry stays counted one slice longer than a call (see [`SPENT_SLOTS`]).
    spent: Mutex<[(u64, i64); SPENT_SLOTS]>,
}

impl Allowance {
    fn new(settings: &Settings, now: Instant) -> Self {
        let window_secs = i64::try_from(settings.window.as_secs()).unwrap_or(60);
        Allowance {
            // `ratio` is at most 1000 (clamped), so this fits.
            deposit: (f64::from(settings.ratio) * RETRY as f64).round() as i64,
            reserve: i64::from(settings.min_per_second)
                .saturating_mul(window_secs)
                .saturating_mul(RETRY),
            slot: (settings.window / SLOTS as u32).max(Duration::from_millis(1)),
            base: now,
            calls: (0..crate::sync::shards())
                .map(|_| Calls(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
            spent: Mutex::new([(0, 0); SPENT_SLOTS]),
        }
    }

    /// When this budget's clock starts: [`deposit_at`](Self::deposit_at) counts from it.
    pub(crate) fn base(&self) -> Instant {
        self.base
    }

    /// The number of the slice `now` falls in.
    fn slice(&self, now: Instant) -> u64 {
        self.slice_at(crate::throttle::nanos(
            now.saturating_duration_since(self.base),
        ))
    }

    /// The slice of the instant `since_base` nanoseconds after [`base`](Self::base).
    fn slice_at(&self, since_base: u64) -> u64 {
        // In 64 bits: a slot is at least a millisecond and at most 6 s.
        since_base / crate::throttle::nanos(self.slot).max(1)
    }

    /// Whether calls of slice `n` count in the window that ends with slice `now`.
    fn in_window(n: u32, now: u32) -> bool {
        now.wrapping_sub(n) < SLOTS as u32
    }

    /// Whether retries of slice `n` still count at slice `now`: the window's slices and one
    /// more, and any later slice (a retry whose clock was read after this one's).
    fn still_spent(n: u64, now: u64) -> bool {
        now.checked_sub(n)
            .is_none_or(|age| age < SPENT_SLOTS as u64)
    }

    /// One call: its share of a retry.
    pub(crate) fn deposit(&self, now: Instant) {
        self.deposit_slice(self.slice(now));
    }

    /// One call, `since_base` nanoseconds after [`base`](Self::base) (for a caller that keeps
    /// its own clock in nanoseconds).
    pub(crate) fn deposit_at(&self, since_base: u64) {
        self.deposit_slice(self.slice_at(since_base));
    }

    fn deposit_slice(&self, full: u64) {
        let shard = &self.calls[crate::sync::this_shard() % self.calls.len()];
        let counter = &shard.0[(full % SLOTS as u64) as usize];
        // The counter keeps the low 32 bits of the slice's number (decades of slices).
        let slice = full as u32;
        let mut current = counter.load(Ordering::Relaxed);
        loop {
            let (n, count) = ((current >> 32) as u32, current as u32);
            // A stored slice later than this one: this call's clock was read a moment before
            // another's that already moved the counter on.
            let later = count > 0 && (n.wrapping_sub(slice) as i32) > 0;
            let next = if n == slice || later {
                // One more call, in this slice (or the later one: never erase its calls).
                (current & !u64::from(u32::MAX)) | u64::from(count.saturating_add(1))
            } else {
                // A slice the window left: it starts again.
                (u64::from(slice) << 32) | 1
            };
            match counter.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// One retry, if the balance pays for it.
    pub(crate) fn withdraw(&self, now: Instant) -> bool {
        let full = self.slice(now);
        let slice = full as u32;
        let mut spent = lock(&self.spent);
        let deposited = self
            .calls
            .iter()
            .flat_map(|shard| &shard.0)
            .fold(0i64, |sum, counter| {
                let value = counter.load(Ordering::Acquire);
                let (n, count) = ((value >> 32) as u32, value as u32);
                if count > 0 && Self::in_window(n, slice) {
                    sum.saturating_add(i64::from(count).saturating_mul(self.deposit))
                } else {
                    sum
                }
            });
        let withdrawn = spent.iter().fold(0i64, |sum, &(n, retries)| {
            if retries > 0 && Self::still_spent(n, full) {
                sum.saturating_add(retries.saturating_mul(RETRY))
            } else {
                sum
            }
        });
        if self
            .reserve
            .saturating_add(deposited)
            .saturating_sub(withdrawn)
            < RETRY
        {
            return false;
        }
        let entry = &mut spent[(full % SPENT_SLOTS as u64) as usize];
        // A stored slice later than this one (another retry's clock was read after this
        // one's): count this retry there, never erase that slice's retries.
        *entry = if entry.0 == full || (entry.1 > 0 && entry.0 > full) {
            (entry.0, entry.1.saturating_add(1))
        } else {
            (full, 1)
        };
        true
    }
}

/// One shard's call counters, on cache lines of their own.
#[derive(Debug)]
#[repr(align(64))]
struct Calls([AtomicU64; SLOTS]);

struct Shared {
    settings: Settings,
    default: Arc<Allowance>,
    keyed: Registry<Allowance>,
    exhausted: AtomicU64,
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("settings", &self.shared.settings)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryBudget {
    /// A budget with the defaults in the table above.
    pub fn new() -> Self {
        Self::with(Settings {
            window: Duration::from_secs(10),
            min_per_second: 5,
            ratio: 0.2,
            max_partitions: 1024,
        })
    }

    fn with(settings: Settings) -> Self {
        RetryBudget {
            scope: Scope::Upstream,
            shared: Arc::new(Shared {
                default: Arc::new(settings.budget()),
                settings,
                keyed: Registry::default(),
                exhausted: AtomicU64::new(0),
            }),
        }
    }

    fn update(self, f: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.shared.settings;
        f(&mut settings);
        RetryBudget {
            scope: self.scope,
            ..Self::with(settings)
        }
    }

    /// Retries allowed per call, over the window (default 0.2: one retry per five calls).
    pub fn ratio(self, ratio: f32) -> Self {
        self.update(|s| {
            if !ratio.is_nan() {
                s.ratio = ratio.clamp(0.0, 1000.0);
            }
        })
    }

    /// Retries allowed per second whatever the number of calls (default 5).
    pub fn min_per_second(self, retries: u32) -> Self {
        self.update(|s| s.min_per_second = retries.min(1_000_000))
    }

    /// How long a call counts toward the budget (default 10 s).
    pub fn window(self, window: Duration) -> Self {
        self.update(|s| s.window = window.clamp(Duration::from_secs(1), Duration::from_secs(60)))
    }

    /// One budget per upstream ([`Scope::Upstream`], the default) or one for every call
    /// ([`Scope::Global`]). The budgets stay shared with clones.
    pub fn partition(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// The most per-upstream budgets kept (default 1,024); beyond it, new upstreams share one.
    pub fn max_partitions(self, max: usize) -> Self {
        self.update(|s| s.max_partitions = max)
    }

    /// Retries refused because the budget was spent, by every service using this budget.
    pub fn exhausted(&self) -> u64 {
        self.shared.exhausted.load(Ordering::Relaxed)
    }

    /// The budget of `key` (`None`: the shared default).
    pub(crate) fn allowance(&self, key: Option<&PartitionKey>) -> Arc<Allowance> {
        match key {
            None => self.shared.default.clone(),
            Some(key) => self.budget_of_key(key),
        }
    }

    /// The budget of this request's upstream, with the call deposited at `now`.
    pub(crate) fn deposit<B>(&self, request: &http::Request<B>, now: Instant) -> Arc<Allowance> {
        let budget = match crate::partition::key_of(&self.scope, request) {
            None => self.shared.default.clone(),
            Some(key) => self.budget_of_key(&key),
        };
        budget.deposit(now);
        budget
    }

    pub(crate) fn refused(&self) {
        self.shared.exhausted.fetch_add(1, Ordering::Relaxed);
    }

    fn budget_of_key(&self, key: &PartitionKey) -> Arc<Allowance> {
        let shared = &self.shared;
        shared
            .keyed
            .get_or_insert(
                key,
                shared.settings.max_partitions,
                |_| true,
                || shared.settings.budget(),
            )
            .unwrap_or_else(|| shared.default.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> http::Request<()> {
        http::Request::get(uri).body(()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn budgets_are_per_upstream() {
        let budget = RetryBudget::new().min_per_second(0).ratio(0.5);
        let now = Instant::now();
        let a_budget = budget.deposit(&request("https://a.example/"), now);
        budget.deposit(&request("https://A.example:443/x"), now);
        let b_budget = budget.budget_of_key(&PartitionKey::from("https://b.example:443"));
        assert!(
            a_budget.withdraw(now),
            "two calls pay for one retry at 50 %"
        );
        assert!(!a_budget.withdraw(now));
        assert!(!b_budget.withdraw(now), "b's budget is b's own");
    }

    #[tokio::test(start_paused = true)]
    async fn a_deposit_with_a_clock_read_a_window_late_keeps_the_later_slice() {
        let settings = Settings {
            window: Duration::from_secs(10),
            min_per_second: 0,
            ratio: 1.0,
            max_partitions: 1,
        };
        let start = Instant::now();
        let allowance = Allowance::new(&settings, start);
        let later = start + Duration::from_secs(10);
        allowance.deposit(later);
        allowance.deposit(later);
        // A call whose clock was read a whole window earlier lands on the same counter.
        allowance.deposit(start);
        assert!(
            allowance.withdraw(later),
            "the later slice's calls are kept"
        );
        assert!(allowance.withdraw(later));
        assert!(allowance.withdraw(later), "the late call is counted too");
        assert!(!allowance.withdraw(later));
    }

    #[tokio::test(start_paused = true)]
    async fn spent_retries_come_back_when_they_leave_the_window() {
        let budget = RetryBudget::new().min_per_second(1).ratio(0.0);
        let allowance = budget.budget_of_key(&PartitionKey::from("k"));
        let now = Instant::now();
        // The floor: 1 per second over 10 s.
        for _ in 0..10 {
            assert!(allowance.withdraw(now));
        }
        assert!(!allowance.withdraw(now));
        assert!(!allowance.withdraw(now + Duration::from_secs(9)));
        // Counted for the window and the slice they were made in.
        assert!(!allowance.withdraw(now + Duration::from_secs(10)));
        assert!(allowance.withdraw(now + Duration::from_secs(11)));
    }

    /// The shrunk counterexample of `proptest-regressions/retry/budget.txt`: with a floor of
    /// 1/s and no calls, a retry made late in its slice left the count 9.27 s later, and 11
    /// retries fitted in 9.27 s.
    #[tokio::test(start_paused = true)]
    async fn a_retry_made_late_in_its_slice_stays_counted_for_a_whole_window() {
        let settings = Settings {
            window: Duration::from_secs(10),
            min_per_second: 1,
            ratio: 0.0,
            max_partitions: 1,
        };
        let start = Instant::now();
        let allowance = Allowance::new(&settings, start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert!(allowance.withdraw(at(730)));
        let made = (0..9).filter(|_| allowance.withdraw(at(9_218))).count();
        assert_eq!(made, 9, "the floor's ten for the window");
        assert!(
            !allowance.withdraw(at(10_000)),
            "an 11th retry within 9.27 s of the first"
        );
        assert!(
            allowance.withdraw(at(11_000)),
            "the first retry left the count"
        );
    }

    #[test]
    fn out_of_range_settings_are_clamped_not_panics() {
        let budget = RetryBudget::new()
            .ratio(f32::INFINITY)
            .ratio(-1.0)
            .ratio(f32::NAN)
            .min_per_second(u32::MAX)
            .window(Duration::MAX)
            .window(Duration::ZERO);
        assert_eq!(budget.shared.settings.ratio, 0.0);
        assert_eq!(budget.shared.settings.window, Duration::from_secs(1));
    }
}

#[cfg(all(test, not(tower_outbound_loom)))]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// The bound the docs state: over any window, retries ≤ floor · window + ratio · the
        /// calls made in that window and the one before it; and in the long run, retries ≤
        /// ratio · calls + floor per second.
        #[test]
        fn retries_stay_within_the_share_of_calls_plus_the_floor(
            ratio in 0.0f32..1.0,
            floor in 0u32..5,
            steps in proptest::collection::vec((0u64..1500, 0u32..20, 0u32..20), 1..60),
        ) {
            let settings = Settings {
                window: Duration::from_secs(10),
                min_per_second: floor,
                ratio,
                max_partitions: 1,
            };
            let start = Instant::now();
            let allowance = Allowance::new(&settings, start);
            let window = settings.window;
            let mut now = Duration::ZERO;
            // (time, calls, retries made)
            let mut log = Vec::new();
            for (advance_ms, calls, retries) in steps {
                now += Duration::from_millis(advance_ms);
                for _ in 0..calls {
                    allowance.deposit(start + now);
                }
                let made = (0..retries).filter(|_| allowance.withdraw(start + now)).count() as f64;
                log.push((now, f64::from(calls), made));
                let sum = |within: Duration, pick: fn(&(Duration, f64, f64)) -> f64| -> f64 {
                    log.iter().filter(|e| now.saturating_sub(e.0) < within).map(pick).sum()
                };
                let units = |calls: f64| (calls * (f64::from(ratio) * 1000.0).round() / 1000.0).floor();
                // The long run: every retry paid by a call's share or by the floor.
                let all_made: f64 = log.iter().map(|e| e.2).sum();
                let all_calls: f64 = log.iter().map(|e| e.1).sum();
                let floor_so_far = f64::from(floor) * (now + window).as_secs_f64().ceil();
                prop_assert!(all_made <= units(all_calls) + floor_so_far,
                    "{} retries in all, {} calls", all_made, all_calls);
                let floor_per_window = f64::from(floor) * window.as_secs_f64();
                // Any window of real time, (now - window, now]: its retries were paid by the
                // floor and by calls of the window before its last retry, all within
                // (now - 2 · window, now].
                let made_in_window = sum(window, |e| e.2);
                let bound = floor_per_window + units(sum(2 * window, |e| e.1));
                prop_assert!(made_in_window <= bound,
                    "{} retries in the window ending at {:?}, bound {}", made_in_window, now, bound);
                // Sharper, when this step made a retry: the window ending with it was paid by
                // the floor and the calls of that window alone.
                if made > 0.0 {
                    let bound = floor_per_window + units(sum(window, |e| e.1));
                    prop_assert!(made_in_window <= bound,
                        "{} retries in the window ending with a retry at {:?}, bound {}",
                        made_in_window, now, bound);
                }
            }
        }
    }
}

/// Model checks (`--cfg tower_outbound_loom`, see `docs/reliability.md`).
#[cfg(all(test, tower_outbound_loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    #[test]
    fn loom_the_last_retry_in_the_budget_is_spent_once() {
        loom::model(|| {
            let settings = Settings {
                window: Duration::from_secs(1),
                min_per_second: 1,
                ratio: 0.0,
                max_partitions: 1,
            };
            let now = Instant::now();
            let allowance = Arc::new(Allowance::new(&settings, now));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let allowance = allowance.clone();
                    thread::spawn(move || allowance.withdraw(now))
                })
                .collect();
            let spent = threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .filter(|w| *w)
                .count();
            assert_eq!(spent, 1, "one retry in the budget, one retry made");
        });
    }

    #[test]
    fn loom_a_deposit_racing_a_withdrawal_is_not_lost() {
        loom::model(|| {
            let settings = Settings {
                window: Duration::from_secs(1),
                min_per_second: 0,
                ratio: 1.0,
                max_partitions: 1,
            };
            let now = Instant::now();
            let allowance = Arc::new(Allowance::new(&settings, now));
            let depositor = {
                let allowance = allowance.clone();
                thread::spawn(move || allowance.deposit(now))
            };
            let withdrawer = {
                let allowance = allowance.clone();
                thread::spawn(move || allowance.withdraw(now))
            };
            depositor.join().unwrap();
            let first = withdrawer.join().unwrap();
            // Whatever the order, the one deposit paid for exactly one retry.
            let second = allowance.withdraw(now);
            assert!(first ^ second, "first {first}, second {second}");
        });
    }

    /// A call whose clock was read a window before another's deposits after it, on the same
    /// counter: the later slice's calls are never erased (the late call joins them, or is
    /// dropped as a window old), whatever the interleaving of the compare-and-swap loops.
    #[test]
    fn loom_a_deposit_with_a_clock_read_a_window_late_never_erases_the_later_slice() {
        loom::model(|| {
            let settings = Settings {
                window: Duration::from_secs(10),
                min_per_second: 0,
                ratio: 1.0,
                max_partitions: 1,
            };
            let start = Instant::now();
            let later = start + Duration::from_secs(10);
            let allowance = Arc::new(Allowance::new(&settings, start));
            allowance.deposit(later);
            let on_time = {
                let allowance = allowance.clone();
                thread::spawn(move || allowance.deposit(later))
            };
            let late = {
                let allowance = allowance.clone();
                thread::spawn(move || allowance.deposit(start))
            };
            on_time.join().unwrap();
            late.join().unwrap();
            let paid = (0..4).filter(|_| allowance.withdraw(later)).count();
            assert!(
                paid == 2 || paid == 3,
                "{paid} retries paid by two calls of the later slice and one late call"
            );
        });
    }
}
