//! The sliding windows a breaker judges the upstream by.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Which calls the failure rate is computed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The last `n` calls.
    Count(u32),
    /// The calls of the last `length`, kept in `buckets` slices of equal length.
    Time {
        /// How far back calls count.
        length: Duration,
        /// Slices the window is kept in (more: smoother; each costs a few bytes).
        buckets: u32,
    },
}

impl Window {
    /// The window with every figure inside what a breaker accepts.
    pub(crate) fn clamped(self) -> Window {
        match self {
            Window::Count(n) => Window::Count(n.clamp(1, 10_000)),
            Window::Time { length, buckets } => Window::Time {
                length: length.min(super::MAX_DURATION),
                buckets: buckets.clamp(1, 1000),
            },
        }
    }
}

/// Calls, failures and slow calls over the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

impl Tally {
    fn add(&mut self, failure: bool, slow: bool) {
        self.calls += 1;
        self.failures += u32::from(failure);
        self.slow += u32::from(slow);
    }

    fn sub(&mut self, other: Tally) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
    }

    pub(crate) fn failure_rate(&self) -> f32 {
        if self.calls == 0 {
            0.0
        } else {
            self.failures as f32 / self.calls as f32
        }
    }

    pub(crate) fn slow_rate(&self) -> f32 {
        if self.calls == 0 {
            0.0
        } else {
            self.slow as f32 / self.calls as f32
        }
    }
}

/// The window's contents.
#[derive(Debug)]
pub(crate) enum Ring {
    Count {
        size: usize,
        outcomes: VecDeque<(bool, bool)>,
        tally: Tally,
    },
    Time {
        slice: Duration,
        // (start of the slice, its tally), oldest first.
        slices: VecDeque<(Instant, Tally)>,
        len: usize,
        tally: Tally,
    },
}

impl Ring {
    pub(crate) fn new(window: Window) -> Self {
        match window {
            Window::Count(n) => {
                let size = n.clamp(1, 10_000) as usize;
                Ring::Count {
                    size,
                    // Grows as calls come: a breaker of an upstream called twice stays small.
                    outcomes: VecDeque::with_capacity(size.min(32)),
                    tally: Tally::default(),
                }
            }
            Window::Time { length, buckets } => {
                let len = buckets.clamp(1, 1000) as usize;
                Ring::Time {
                    slice: (length.min(super::MAX_DURATION) / len as u32)
                        .max(Duration::from_millis(1)),
                    slices: VecDeque::with_capacity(len.min(32)),
                    len,
                    tally: Tally::default(),
                }
            }
        }
    }

    /// Whether recording needs the time.
    pub(crate) fn needs_clock(&self) -> bool {
        matches!(self, Ring::Time { .. })
    }

    pub(crate) fn record(&mut self, failure: bool, slow: bool, now: Option<Instant>) {
        if let Some(now) = now {
            self.expire(now);
        }
        match self {
            Ring::Count {
                size,
                outcomes,
                tally,
            } => {
                if outcomes.len() == *size {
                    if let Some((f, s)) = outcomes.pop_front() {
                        tally.sub(Tally {
                            calls: 1,
                            failures: u32::from(f),
                            slow: u32::from(s),
                        });
                    }
                }
                outcomes.push_back((failure, slow));
                tally.add(failure, slow);
            }
            Ring::Time {
                slice,
                slices,
                tally,
                ..
            } => {
                let Some(now) = now else { return };
                match slices.back_mut() {
                    Some((start, t)) if now.saturating_duration_since(*start) < *slice => {
                        t.add(failure, slow)
                    }
                    _ => {
                        let mut t = Tally::default();
                        t.add(failure, slow);
                        slices.push_back((now, t));
                    }
                }
                tally.add(failure, slow);
            }
        }
    }

    /// Drops slices older than the window.
    pub(crate) fn expire(&mut self, now: Instant) {
        if let Ring::Time {
            slice,
            slices,
            len,
            tally,
        } = self
        {
            let length = *slice * *len as u32;
            while let Some((start, t)) = slices.front() {
                if now.saturating_duration_since(*start) >= length {
                    let t = *t;
                    slices.pop_front();
                    tally.sub(t);
                } else {
                    break;
                }
            }
        }
    }

    /// `count` successes at once (only the last window's worth are kept), on a count window;
    /// a time window records them as one each, now.
    pub(crate) fn record_successes(&mut self, count: u64) {
        let keep = match self {
            Ring::Count { size, .. } => u64::try_from(*size).unwrap_or(u64::MAX).min(count),
            // Successes on a time window always take the lock, one at a time: never here.
            Ring::Time { .. } => count.min(4096),
        };
        for _ in 0..keep {
            self.record(false, false, None);
        }
    }

    pub(crate) fn tally(&self) -> Tally {
        match self {
            Ring::Count { tally, .. } | Ring::Time { tally, .. } => *tally,
        }
    }

    pub(crate) fn clear(&mut self) {
        match self {
            Ring::Count {
                outcomes, tally, ..
            } => {
                outcomes.clear();
                *tally = Tally::default();
            }
            Ring::Time { slices, tally, .. } => {
                slices.clear();
                *tally = Tally::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The count window's failure rate equals a naive recomputation over the last n
        /// outcomes.
        #[test]
        fn count_window_matches_a_naive_recount(
            n in 1u32..40,
            outcomes in proptest::collection::vec(any::<(bool, bool)>(), 0..200),
        ) {
            let mut ring = Ring::new(Window::Count(n));
            for (i, (failure, slow)) in outcomes.iter().enumerate() {
                ring.record(*failure, *slow, None);
                let last = &outcomes[(i + 1).saturating_sub(n as usize)..=i];
                let failures = last.iter().filter(|(f, _)| *f).count() as u32;
                let slow_calls = last.iter().filter(|(_, s)| *s).count() as u32;
                prop_assert_eq!(ring.tally(), Tally { calls: last.len() as u32, failures, slow: slow_calls });
            }
        }
    }

    #[test]
    fn time_window_forgets_old_slices() {
        let start = Instant::now();
        let mut ring = Ring::new(Window::Time {
            length: Duration::from_secs(10),
            buckets: 10,
        });
        ring.record(true, false, Some(start));
        ring.record(true, false, Some(start + Duration::from_secs(5)));
        ring.record(false, false, Some(start + Duration::from_secs(9)));
        assert_eq!(ring.tally().calls, 3);
        ring.expire(start + Duration::from_secs(10));
        assert_eq!(
            ring.tally(),
            Tally {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
        ring.expire(start + Duration::from_secs(20));
        assert_eq!(ring.tally(), Tally::default());
    }
}
