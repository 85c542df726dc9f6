//! The bucket math: GCRA (the generic cell rate algorithm) on one atomic integer.
//!
//! A bucket is its theoretical arrival time (TAT): the instant at which it would be full
//! again. A request at `now` takes the slot at `max(TAT, now) + interval`, and may go once
//! `slot - burst · interval <= now`; the wait until then is its reservation. Since every
//! acquire moves the TAT forward by one interval, later arrivals always get later slots: the
//! bucket is FIFO by construction, and no waiter starves.

use crate::sync::{lock, AtomicBool, AtomicU64, Mutex, Ordering};
use std::time::Duration;

/// Rate and burst, in nanoseconds of the bucket's own clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cell {
    /// Time between two slots.
    pub(crate) interval: u64,
    /// `burst · interval`: how far ahead of now the TAT may be while a request still goes at
    /// once.
    pub(crate) tolerance: u64,
}

/// The longest interval and tolerance a bucket uses, 2^61 ns (about 73 years): far enough
/// below `u64::MAX` that a theoretical arrival time never saturates into a tolerance as large
/// as itself, which would let every request through at once.
const MAX_SPAN: u64 = 1 << 61;

impl Cell {
    /// The cell of one slot per `interval`, `burst` at once.
    pub(crate) fn of(interval: Duration, burst: u32) -> Cell {
        let interval = nanos(interval).clamp(1, MAX_SPAN);
        Cell {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)).min(MAX_SPAN),
        }
    }
}

/// What one acquire decided, in the bucket's nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go after `wait` nanoseconds (zero: at once); the TAT is now `tat`.
    Reserved { wait: u64, tat: u64 },
    /// The wait would have been longer than allowed; nothing was taken.
    Rejected { wait: u64 },
}

/// The pure step: the decision for a bucket whose TAT is `tat`, at `now`, for a request
/// that may not go before `not_before`.
///
/// A request held by a pause is paced from the pause's end, not from `now`: the bucket
/// refills no further than full while it is paused, so the requests that waited out the pause
/// leave as one burst and then at the rate (counting from `now`, every request reserved
/// during the pause went at its end at once).
pub(crate) fn step(tat: u64, now: u64, not_before: u64, cell: Cell, max_wait: u64) -> Verdict {
    let earliest = now.max(not_before);
    let slot = tat.max(earliest).saturating_add(cell.interval);
    let go_at = slot.saturating_sub(cell.tolerance).max(earliest);
    let wait = go_at.saturating_sub(now);
    if wait > max_wait {
        Verdict::Rejected { wait }
    } else {
        Verdict::Reserved { wait, tat: slot }
    }
}

/// The server's view of the quota: a pause, and the window's count.
///
/// The two are kept apart. A 429 (or any response saying nothing is left) names a pause: no
/// request goes before it ends. A response with requests left describes the window: `left`
/// more until `until`. A short pause in the middle of a window (a spurious 429, a burst
/// limiter) must not be read as "nothing left until the window ends", or the rest of the
/// window is lost; nor may it end the window's count, or the client overruns it after the
/// pause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct View {
    /// No request goes before this instant (0: no pause).
    pause_until: u64,
    /// The end of the server's window (0: none known).
    until: u64,
    /// Requests left in that window.
    left: u64,
    /// Refusals doubted in a row since the last reply with room (see [`Bucket::report`]).
    doubted: u32,
    /// The smallest `remaining` a reply with room reported for this window (see
    /// [`Bucket::report`]).
    reported: u64,
}

/// How many refusals in a row a fresh view of the window with room outweighs: the next one is
/// believed. Two, so that a window really used up by someone else costs at most two extra
/// refusals, while a lone spurious refusal never pauses the bucket.
pub(crate) const MAX_DOUBTED: u32 = 2;

/// What one reply said about the server's window, with what the bucket knew when it came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Report {
    /// `RateLimit-Remaining`.
    pub(crate) remaining: u64,
    /// `RateLimit-Reset`, in nanoseconds from now.
    pub(crate) reset: u64,
    /// The reply refused the request on the count alone (a 429 naming no `Retry-After`).
    pub(crate) refused: bool,
    /// Other requests taken from the bucket and not answered yet: the server's count may not
    /// include them.
    pub(crate) outstanding: u64,
}

/// A bucket's theoretical arrival time, alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Tat(AtomicU64);

/// One bucket: its TAT in an atomic, so acquiring is a compare-and-swap loop; and, while the
/// server's view of the quota is tighter than the local one, that view.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    /// On a cache line of its own: every acquire writes it, while `viewing` beside it is read
    /// by every acquire and written only when a view comes or goes.
    tat: Tat,
    viewing: AtomicBool,
    view: Mutex<View>,
}

impl Bucket {
    pub(crate) fn acquire(&self, now: u64, cell: Cell, max_wait: u64) -> Verdict {
        if !self.viewing.load(Ordering::Acquire) {
            return self.reserve(now, now, cell, max_wait);
        }
        let mut view = lock(&self.view);
        if now >= view.pause_until && now >= view.until {
            *view = View::default();
            self.viewing.store(false, Ordering::Release);
            return self.reserve(now, now, cell, max_wait);
        }
        let mut not_before = now.max(view.pause_until);
        let in_window = now < view.until;
        if in_window && view.left == 0 {
            // Nothing more until the reset: queue behind it.
            not_before = not_before.max(view.until);
        }
        let verdict = self.reserve(now, not_before, cell, max_wait);
        if let Verdict::Reserved { wait, .. } = verdict {
            if in_window && view.left > 0 && now.saturating_add(wait) < view.until {
                view.left -= 1;
            }
        }
        verdict
    }

    fn reserve(&self, now: u64, not_before: u64, cell: Cell, max_wait: u64) -> Verdict {
        let mut tat = self.tat.0.load(Ordering::Acquire);
        loop {
            let verdict = step(tat, now, not_before, cell, max_wait);
            let Verdict::Reserved { tat: new_tat, .. } = verdict else {
                return verdict;
            };
            match self.tat.0.compare_exchange_weak(
                tat,
                new_tat,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return verdict,
                Err(actual) => tat = actual,
            }
        }
    }

    /// Gives back the slot that set the TAT to `tat`, if no later acquire moved it since.
    pub(crate) fn release(&self, tat: u64, cell: Cell) -> bool {
        self.tat
            .0
            .compare_exchange(
                tat,
                tat.saturating_sub(cell.interval),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Adopts the server's view: `remaining` more requests until `now + reset`.
    ///
    /// With nothing remaining, it is a pause: no request goes before `now + reset` (the
    /// longest pause named wins), and the window's count is left as it was. With requests
    /// remaining, it is the window's count. Within one window (resets within `slack` of each
    /// other) the count only tightens: the smaller `remaining` wins, and the earlier reset,
    /// since a reset rounded up to whole seconds is never before the window's real end. A
    /// reset further away describes another window, and the newest word of the server
    /// replaces the old one.
    pub(crate) fn adopt(&self, now: u64, remaining: u64, reset: u64, slack: u64) {
        let until = now.saturating_add(reset);
        let mut view = lock(&self.view);
        if remaining == 0 {
            view.pause_until = view.pause_until.max(until);
        } else if now < view.until && until.abs_diff(view.until) <= slack {
            view.until = view.until.min(until);
            view.left = view.left.min(remaining);
            view.reported = view.reported.min(remaining);
        } else {
            view.until = until;
            view.left = remaining;
            view.reported = remaining;
        }
        self.viewing.store(true, Ordering::Release);
    }

    /// Adopts what one reply said, knowing the requests still outstanding; returns `false`
    /// when the reply is a refusal the bucket doubts, and took no pause from it.
    ///
    /// - A reply with room that reports less than any earlier reply of the same window is the
    ///   freshest word on it: `remaining` less the requests outstanding (which the server may
    ///   not have counted yet) is what is left. It replaces the count, up or down: requests
    ///   the server did not count (refused before counting, dropped) come back, and requests
    ///   another client sent are taken away. A reply that reports no less than an earlier one
    ///   (an older word arriving late, or a server that does not count down) only tightens
    ///   the count. Within one window the earliest reset wins, as in [`adopt`](Self::adopt).
    /// - A served reply with nothing remaining used the last slot: a pause until the reset.
    /// - A refusal on the count (`remaining: 0`, no `Retry-After`) while the bucket's view of
    ///   the same window still has room contradicts the server's own latest word: it is
    ///   doubted, and pauses nothing; the caller treats it as that request's own refusal. Up to
    ///   [`MAX_DOUBTED`] in a row are doubted; the next is believed, so a window someone else
    ///   used up costs a few refusals, not the window's worth. Without a view, or with the
    ///   view's count at zero, a refusal is believed at once.
    pub(crate) fn report(&self, now: u64, report: Report, slack: u64) -> bool {
        let until = now.saturating_add(report.reset);
        let mut view = lock(&self.view);
        let same_window = now < view.until && until.abs_diff(view.until) <= slack;
        if report.remaining == 0 {
            if report.refused && now < view.until && view.left > 0 && view.doubted < MAX_DOUBTED {
                view.doubted += 1;
                return false;
            }
            // Believed: later refusals are too, until a reply with room.
            view.pause_until = view.pause_until.max(until);
        } else {
            let left = report.remaining.saturating_sub(report.outstanding);
            if same_window && report.remaining >= view.reported {
                // Not below what the server already said in this window: an older word, or
                // a server that does not count down. The count only tightens.
                view.until = view.until.min(until);
                view.left = view.left.min(left);
            } else {
                // The server counted more since its last word (or a new window began): its
                // word replaces the count, up or down.
                view.until = if same_window {
                    view.until.min(until)
                } else {
                    until
                };
                view.left = left;
                view.reported = report.remaining;
            }
            view.doubted = 0;
        }
        self.viewing.store(true, Ordering::Release);
        true
    }

    /// Whether the bucket is full again at `now` with no view to remember.
    pub(crate) fn is_idle(&self, now: u64) -> bool {
        self.tat.0.load(Ordering::Acquire) <= now && !self.viewing.load(Ordering::Acquire)
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn cell(per_ms: u64, burst: u64) -> Cell {
        Cell {
            interval: per_ms * MS,
            tolerance: burst * per_ms * MS,
        }
    }

    #[test]
    fn burst_then_one_per_interval() {
        let b = Bucket::default();
        let c = cell(100, 3);
        let now = 1_000 * MS;
        let waits: Vec<u64> = (0..5)
            .map(|_| match b.acquire(now, c, u64::MAX) {
                Verdict::Reserved { wait, .. } => wait / MS,
                Verdict::Rejected { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(waits, vec![0, 0, 0, 100, 200]);
    }

    /// Requests reserved while the bucket was paused were paced from the time they asked, so
    /// every one of them left at the pause's end at once: more than the burst.
    #[test]
    fn requests_held_by_a_pause_leave_as_one_burst_then_at_the_rate() {
        let c = cell(100, 3);
        let (now, pause_end) = (1_000 * MS, 2_000 * MS);
        let mut tat = 0;
        let mut waits = Vec::new();
        for _ in 0..5 {
            let Verdict::Reserved { wait, tat: next } = step(tat, now, pause_end, c, u64::MAX)
            else {
                unreachable!("no max wait");
            };
            tat = next;
            waits.push(wait / MS);
        }
        assert_eq!(waits, vec![1_000, 1_000, 1_000, 1_100, 1_200]);
    }

    #[test]
    fn a_rejection_takes_nothing() {
        let b = Bucket::default();
        let c = cell(100, 1);
        let now = 1_000 * MS;
        assert!(matches!(
            b.acquire(now, c, 0),
            Verdict::Reserved { wait: 0, .. }
        ));
        assert_eq!(
            b.acquire(now, c, 50 * MS),
            Verdict::Rejected { wait: 100 * MS }
        );
        assert_eq!(
            b.acquire(now, c, 50 * MS),
            Verdict::Rejected { wait: 100 * MS }
        );
        assert!(matches!(
            b.acquire(now + 100 * MS, c, 0),
            Verdict::Reserved { wait: 0, .. }
        ));
    }

    #[test]
    fn release_gives_back_only_the_last_slot() {
        let b = Bucket::default();
        let c = cell(100, 1);
        let now = 1_000 * MS;
        b.acquire(now, c, u64::MAX);
        let Verdict::Reserved { tat: second, .. } = b.acquire(now, c, u64::MAX) else {
            unreachable!()
        };
        assert!(b.release(second, c), "the last reservation is given back");
        let Verdict::Reserved { wait, tat: again } = b.acquire(now, c, u64::MAX) else {
            unreachable!()
        };
        assert_eq!((wait, again), (100 * MS, second), "the slot is reused");
        let Verdict::Reserved { .. } = b.acquire(now, c, u64::MAX) else {
            unreachable!()
        };
        assert!(!b.release(again, c), "not after a later reservation");
    }

    #[test]
    fn the_servers_view_lets_what_is_left_go_at_once_then_holds_until_the_reset() {
        // 10 per second locally, burst 10; the server says 3 left, reset in 5 s.
        let c = cell(100, 10);
        let b = Bucket::default();
        let now = 1_000 * MS;
        b.adopt(now, 3, 5_000 * MS, 1_000 * MS);
        let waits: Vec<u64> = (0..5)
            .map(|_| match b.acquire(now, c, u64::MAX) {
                Verdict::Reserved { wait, .. } => wait / MS,
                Verdict::Rejected { .. } => unreachable!(),
            })
            .collect();
        // Three at once, then the rest queue behind the reset.
        assert_eq!(waits, vec![0, 0, 0, 5_000, 5_000]);
        // A later, looser view of the same window does not loosen it.
        b.adopt(now + 10 * MS, 50, 4_990 * MS, 1_000 * MS);
        assert_eq!(
            b.acquire(now + 10 * MS, c, 0),
            Verdict::Rejected { wait: 4_990 * MS }
        );
        // After the reset the view is gone.
        assert!(matches!(
            b.acquire(now + 6_000 * MS, c, 0),
            Verdict::Reserved { wait: 0, .. }
        ));
    }

    #[test]
    fn a_short_pause_in_a_window_does_not_hold_the_rest_of_the_window() {
        // 10 per second locally; the server's window has 62 left until it resets in 2 s,
        // then a spurious 429 says "nothing left, reset in 1 s".
        let c = cell(100, 100);
        let b = Bucket::default();
        let now = 1_000 * MS;
        b.adopt(now, 62, 2_000 * MS, 1_000 * MS);
        b.adopt(now, 0, 1_000 * MS, 1_000 * MS);
        // Held for the pause...
        assert_eq!(b.acquire(now, c, 0), Verdict::Rejected { wait: 1_000 * MS });
        // ...then the rest of the window goes at once, and no more than the rest.
        let later = now + 1_000 * MS;
        let waits: Vec<u64> = (0..63)
            .map(|_| match b.acquire(later, c, u64::MAX) {
                Verdict::Reserved { wait, .. } => wait / MS,
                Verdict::Rejected { .. } => unreachable!(),
            })
            .collect();
        assert!(waits[..62].iter().all(|&w| w == 0), "{waits:?}");
        assert_eq!(waits[62], 1_000, "the 63rd waits for the window's reset");
    }

    #[test]
    fn the_earliest_reset_of_one_window_is_kept() {
        // Resets are rounded up to whole seconds, so each is at or after the window's real
        // end: the earliest one is the closest to it, and still safe.
        let c = cell(100, 100);
        let b = Bucket::default();
        let now = 1_000 * MS;
        b.adopt(now, 2, 3_000 * MS, 1_000 * MS);
        b.adopt(now + 400 * MS, 1, 2_000 * MS, 1_000 * MS);
        b.acquire(now + 400 * MS, c, u64::MAX);
        // Nothing left until now + 2.4 s, not now + 3 s.
        assert_eq!(
            b.acquire(now + 400 * MS, c, 0),
            Verdict::Rejected { wait: 2_000 * MS }
        );
    }

    fn reply(remaining: u64, reset_ms: u64, outstanding: u64) -> Report {
        Report {
            remaining,
            reset: reset_ms * MS,
            refused: false,
            outstanding,
        }
    }

    fn refusal(reset_ms: u64) -> Report {
        Report {
            remaining: 0,
            reset: reset_ms * MS,
            refused: true,
            outstanding: 0,
        }
    }

    fn waits(b: &Bucket, now: u64, c: Cell, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| match b.acquire(now, c, u64::MAX) {
                Verdict::Reserved { wait, .. } => wait / MS,
                Verdict::Rejected { .. } => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn requests_the_server_did_not_count_come_back_to_the_window() {
        // The window has 10 left; 4 requests go, 3 of them are refused before the server
        // counts them. The reply of the fourth says 9 left, with nothing outstanding.
        let c = cell(10, 100);
        let b = Bucket::default();
        let now = 1_000 * MS;
        assert!(b.report(now, reply(10, 5_000, 0), 1_000 * MS));
        assert_eq!(waits(&b, now, c, 4), vec![0, 0, 0, 0]);
        assert!(b.report(now, reply(9, 5_000, 0), 1_000 * MS));
        let later = waits(&b, now, c, 10);
        assert!(later[..9].iter().all(|&w| w == 0), "{later:?}");
        assert_eq!(later[9], 5_000, "the tenth waits for the reset");
    }

    #[test]
    fn a_server_that_does_not_count_down_cannot_raise_the_count() {
        // Every reply says 12 left, reset in 40 s: the count only tightens.
        let c = cell(10, 100);
        let b = Bucket::default();
        let now = 1_000 * MS;
        let mut sent = 0;
        for _ in 0..30 {
            assert!(b.report(now, reply(12, 40_000, 0), 1_000 * MS));
            if matches!(b.acquire(now, c, 0), Verdict::Reserved { .. }) {
                sent += 1;
            }
        }
        assert_eq!(sent, 12);
    }

    #[test]
    fn requests_outstanding_are_taken_from_what_the_server_says_is_left() {
        let c = cell(10, 100);
        let b = Bucket::default();
        let now = 1_000 * MS;
        // 5 left, but 3 other requests are on their way and may not be counted yet.
        assert!(b.report(now, reply(5, 5_000, 3), 1_000 * MS));
        assert_eq!(waits(&b, now, c, 3), vec![0, 0, 5_000]);
    }

    #[test]
    fn a_refusal_contradicting_a_fresh_view_is_doubted_then_believed() {
        let c = cell(10, 100);
        let b = Bucket::default();
        let now = 1_000 * MS;
        assert!(b.report(now, reply(50, 4_000, 0), 1_000 * MS));
        // Two refusals in a row are doubted: nothing is paused.
        assert!(!b.report(now, refusal(1_000), 1_000 * MS));
        assert!(!b.report(now, refusal(1_000), 1_000 * MS));
        assert!(matches!(
            b.acquire(now, c, 0),
            Verdict::Reserved { wait: 0, .. }
        ));
        // The third is believed: the bucket pauses for its reset; so is the next.
        assert!(b.report(now, refusal(1_000), 1_000 * MS));
        assert_eq!(b.acquire(now, c, 0), Verdict::Rejected { wait: 1_000 * MS });
        assert!(b.report(now, refusal(1_000), 1_000 * MS));
    }

    #[test]
    fn a_reply_with_room_ends_a_run_of_doubted_refusals() {
        let c = cell(10, 100);
        let b = Bucket::default();
        let now = 1_000 * MS;
        assert!(b.report(now, reply(50, 4_000, 0), 1_000 * MS));
        for _ in 0..10 {
            assert!(!b.report(now, refusal(1_000), 1_000 * MS));
            assert!(!b.report(now, refusal(1_000), 1_000 * MS));
            assert!(b.report(now, reply(40, 4_000, 0), 1_000 * MS));
        }
        assert!(matches!(
            b.acquire(now, c, 0),
            Verdict::Reserved { wait: 0, .. }
        ));
    }

    #[test]
    fn a_refusal_is_believed_without_a_view_or_once_the_view_has_nothing_left() {
        let c = cell(10, 100);
        let now = 1_000 * MS;
        let blind = Bucket::default();
        assert!(blind.report(now, refusal(30_000), 1_000 * MS));
        assert_eq!(
            blind.acquire(now, c, 0),
            Verdict::Rejected { wait: 30_000 * MS }
        );
        let spent = Bucket::default();
        assert!(spent.report(now, reply(1, 4_000, 0), 1_000 * MS));
        assert_eq!(waits(&spent, now, c, 1), vec![0]);
        assert!(spent.report(now, refusal(4_000), 1_000 * MS));
        // A served reply with nothing left is a pause too.
        let last = Bucket::default();
        assert!(last.report(now, reply(0, 2_000, 0), 1_000 * MS));
        assert_eq!(
            last.acquire(now, c, 0),
            Verdict::Rejected { wait: 2_000 * MS }
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// In any interval of length t, no more than t / interval + burst requests are let
        /// through, whatever the arrival pattern.
        #[test]
        fn never_more_than_rate_times_t_plus_burst(
            interval_ms in 1u64..500,
            burst in 1u64..20,
            max_wait_ms in 0u64..2_000,
            gaps in proptest::collection::vec(0u64..300, 1..300),
        ) {
            let c = cell(interval_ms, burst);
            let b = Bucket::default();
            let mut now = 10_000 * MS;
            let mut sent = Vec::new();
            for gap in gaps {
                now += gap * MS;
                if let Verdict::Reserved { wait, .. } = b.acquire(now, c, max_wait_ms * MS) {
                    sent.push(now + wait);
                }
            }
            sent.sort_unstable();
            for i in 0..sent.len() {
                for j in i..sent.len() {
                    let span = sent[j] - sent[i];
                    let allowed = span / c.interval + burst;
                    prop_assert!((j - i + 1) as u64 <= allowed,
                        "{} requests in {} ns, allowed {}", j - i + 1, span, allowed);
                }
            }
        }

        /// Waiters are served in arrival order: a later acquire never goes before an earlier
        /// one.
        #[test]
        fn waiters_go_in_arrival_order(
            interval_ms in 1u64..500,
            burst in 1u64..20,
            gaps in proptest::collection::vec(0u64..300, 1..200),
        ) {
            let c = cell(interval_ms, burst);
            let b = Bucket::default();
            let mut now = 10_000 * MS;
            let mut last_go = 0;
            for gap in gaps {
                now += gap * MS;
                if let Verdict::Reserved { wait, .. } = b.acquire(now, c, u64::MAX) {
                    prop_assert!(now + wait >= last_go, "served out of order");
                    last_go = now + wait;
                }
            }
        }

        /// A cancelled waiter that was the last to reserve gives its slot back: the next
        /// arrival goes exactly when the cancelled one would have.
        #[test]
        fn a_cancelled_last_waiter_gives_its_slot_back(
            interval_ms in 1u64..500,
            burst in 1u64..5,
            waiting in 1usize..20,
        ) {
            let c = cell(interval_ms, burst);
            let b = Bucket::default();
            let now = 10_000 * MS;
            let mut reserved = Vec::new();
            for _ in 0..waiting {
                if let Verdict::Reserved { wait, tat } = b.acquire(now, c, u64::MAX) {
                    reserved.push((wait, tat));
                }
            }
            let (cancelled_wait, cancelled_tat) = *reserved.last().unwrap();
            prop_assert!(b.release(cancelled_tat, c));
            let Verdict::Reserved { wait, .. } = b.acquire(now, c, u64::MAX) else {
                panic!("no max wait");
            };
            prop_assert_eq!(wait, cancelled_wait);
        }
    }
}

/// Model checks (`--cfg tower_outbound_loom`, see `docs/reliability.md`).
#[cfg(all(test, tower_outbound_loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    const CELL: Cell = Cell {
        interval: 1_000,
        tolerance: 1_000,
    };

    #[test]
    fn loom_no_slot_is_handed_out_twice() {
        loom::model(|| {
            let bucket = Arc::new(Bucket::default());
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let bucket = bucket.clone();
                    thread::spawn(move || bucket.acquire(0, CELL, u64::MAX))
                })
                .collect();
            let mut slots: Vec<u64> = threads
                .into_iter()
                .map(|t| match t.join().unwrap() {
                    Verdict::Reserved { tat, .. } => tat,
                    Verdict::Rejected { .. } => panic!("nothing is rejected without a max wait"),
                })
                .collect();
            slots.sort_unstable();
            assert_eq!(
                slots,
                vec![1_000, 2_000],
                "two callers, two different slots"
            );
            assert_eq!(bucket.tat.0.load(Ordering::Acquire), 2_000);
        });
    }

    #[test]
    fn loom_a_given_back_slot_is_never_given_back_over_a_later_one() {
        loom::model(|| {
            let bucket = Arc::new(Bucket::default());
            let Verdict::Reserved { tat: first, .. } = bucket.acquire(0, CELL, u64::MAX) else {
                panic!("the first acquire goes");
            };
            let releaser = {
                let bucket = bucket.clone();
                thread::spawn(move || bucket.release(first, CELL))
            };
            let acquirer = {
                let bucket = bucket.clone();
                thread::spawn(move || bucket.acquire(0, CELL, u64::MAX))
            };
            let released = releaser.join().unwrap();
            let Verdict::Reserved { tat: second, .. } = acquirer.join().unwrap() else {
                panic!("no max wait");
            };
            let tat = bucket.tat.0.load(Ordering::Acquire);
            if released {
                // Given back before the second acquire: the second took the freed slot.
                assert_eq!((second, tat), (1_000, 1_000));
            } else {
                // The second acquire came first: the first slot stays taken (never looser).
                assert_eq!((second, tat), (2_000, 2_000));
            }
        });
    }
}

/// Model checks of the adopted-view path (`--cfg tower_outbound_loom`): the `viewing` flag
/// read without the lock, and the view under it.
#[cfg(all(test, tower_outbound_loom))]
mod loom_view_models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// Burst 10 locally: only the server's view can hold a request.
    const ROOMY: Cell = Cell {
        interval: 1_000,
        tolerance: 10_000,
    };

    fn wait_of(verdict: Verdict) -> u64 {
        match verdict {
            Verdict::Reserved { wait, .. } => wait,
            Verdict::Rejected { .. } => panic!("nothing is rejected without a max wait"),
        }
    }

    /// The server says one request is left until 1,000: two concurrent acquires, one goes at
    /// once, the other waits for the reset.
    #[test]
    fn loom_the_servers_count_is_never_overspent() {
        loom::model(|| {
            let bucket = Arc::new(Bucket::default());
            bucket.adopt(0, 1, 1_000, 0);
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let bucket = bucket.clone();
                    thread::spawn(move || wait_of(bucket.acquire(0, ROOMY, u64::MAX)))
                })
                .collect();
            let mut waits: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            waits.sort_unstable();
            assert_eq!(waits, [0, 1_000], "one left in the window, one sent in it");
        });
    }

    /// An acquire that finds the old pause over and clears the view, racing a reply that
    /// names a new pause: the new pause holds whatever the order.
    #[test]
    fn loom_the_end_of_an_old_view_never_erases_a_new_pause() {
        loom::model(|| {
            let bucket = Arc::new(Bucket::default());
            bucket.adopt(0, 0, 5, 0);
            let acquirer = {
                let bucket = bucket.clone();
                thread::spawn(move || wait_of(bucket.acquire(10, ROOMY, u64::MAX)))
            };
            let adopter = {
                let bucket = bucket.clone();
                thread::spawn(move || bucket.adopt(10, 0, 100, 0))
            };
            let waited = acquirer.join().unwrap();
            adopter.join().unwrap();
            assert!(waited == 0 || waited == 100, "{waited}");
            assert_eq!(
                bucket.acquire(10, ROOMY, 0),
                Verdict::Rejected { wait: 100 },
                "the new pause was lost"
            );
        });
    }

    /// With one refusal doubted already, two more race: exactly one is doubted (the last
    /// allowed), the other is believed and pauses the bucket.
    #[test]
    fn loom_refusals_are_doubted_at_most_max_doubted_times() {
        let refusal = Report {
            remaining: 0,
            reset: 1_000,
            refused: true,
            outstanding: 0,
        };
        loom::model(move || {
            let bucket = Arc::new(Bucket::default());
            let room = Report {
                remaining: 50,
                reset: 4_000,
                refused: false,
                outstanding: 0,
            };
            assert!(bucket.report(0, room, 1_000));
            assert!(!bucket.report(0, refusal, 1_000));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let bucket = bucket.clone();
                    thread::spawn(move || bucket.report(0, refusal, 1_000))
                })
                .collect();
            let believed = threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .filter(|b| *b)
                .count();
            assert_eq!(believed, 1, "MAX_DOUBTED is {MAX_DOUBTED}");
            assert_eq!(
                bucket.acquire(0, ROOMY, 0),
                Verdict::Rejected { wait: 1_000 }
            );
        });
    }
}
