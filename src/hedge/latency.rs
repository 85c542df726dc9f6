//! An upstream's recent latencies, as the hedge reads them: a quantile, the median, and whether
//! the median has climbed above what the upstream usually answers in (a brownout).
//!
//! Samples go into log-linear buckets (8 per power of two of microseconds: at most 12.5 % off,
//! from 1 µs to 35 minutes) of two windows, the current one and the one before it. Recording a
//! sample is three atomic additions: its bucket, its window's count, and the brownout check's
//! word (of the last 16 answers, how many took over twice the usual median; every 16 answers
//! one recorder publishes whether most did). Every 64th sample one recorder (the one that wins
//! a flag) works the quantile and the medians out again, without allocating, and publishes them
//! in atomics, which a call reads with a load. A window ends after 1,000 samples, or after 2 s
//! with at least the minimum of samples in it; then the older one is emptied and becomes the
//! current one.

use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Sub-buckets per power of two.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// The longest latency told apart: 2³¹ − 1 µs (about 35 minutes); longer ones count as that.
const MAX_MICROS: u64 = (1 << 31) - 1;
/// Buckets: 8 linear ones below 8 µs, then 8 per power of two up to 2³¹.
const BUCKETS: usize = ((31 - SUB_BITS + 1) as usize + 1) * SUB as usize;
/// Samples between two workings-out of the quantile and the medians.
const UPDATE_EVERY: u64 = 64;
/// Samples that end a window.
const WINDOW_SAMPLES: u64 = 1_000;
/// Time that ends a window (once it holds the minimum of samples), in nanoseconds.
const WINDOW_NANOS: u64 = 2_000_000_000;
/// The brownout factor: the recent median over this many times the usual one.
const BROWNOUT: u64 = 2;

/// The bucket of a latency in microseconds.
fn bucket(micros: u64) -> usize {
    let v = micros.min(MAX_MICROS);
    if v < SUB {
        return v as usize;
    }
    let octave = 63 - v.leading_zeros();
    let sub = (v >> (octave - SUB_BITS)) & (SUB - 1);
    (u64::from(octave - SUB_BITS + 1) * SUB + sub) as usize
}

/// The upper edge of a bucket, in microseconds: what a quantile that falls in it is taken to be
/// (so a delay is never shorter than the samples it stands for).
fn upper(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index + 1;
    }
    let octave = index / SUB + u64::from(SUB_BITS) - 1;
    let sub = index % SUB;
    let width = 1u64 << (octave - u64::from(SUB_BITS));
    ((SUB + sub) << (octave - u64::from(SUB_BITS))) + width
}

/// One window of samples.
#[derive(Debug)]
struct Window {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// When the window started, in nanoseconds of the caller's clock.
    started: AtomicU64,
}

impl Window {
    fn new() -> Self {
        Window {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            started: AtomicU64::new(0),
        }
    }

    fn clear(&self, now: u64) {
        for bucket in &*self.buckets {
            bucket.store(0, Ordering::Relaxed);
        }
        self.count.store(0, Ordering::Relaxed);
        self.started.store(now, Ordering::Relaxed);
    }
}

/// The figures worked out from the windows, in microseconds (0: not enough samples yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Figures {
    /// The configured quantile of both windows.
    pub(crate) quantile: u64,
    /// The median of both windows.
    pub(crate) median: u64,
    /// The median the upstream usually answers in: it follows each full window's median
    /// slowly (a quarter of the way), so a brownout shows as answers far above it.
    pub(crate) usual: u64,
    /// Whether most of the last 16 answers took over twice the usual median.
    pub(crate) brownout: bool,
}

impl Figures {
    /// Whether the upstream answers much slower than usual: most of its last 16 answers over
    /// twice the usual median.
    pub(crate) fn is_brownout(&self) -> bool {
        self.brownout
    }
}

/// The last answers counted for the brownout check: how many (low 32 bits) and how many of
/// them over twice the usual median (high 32 bits), in one word.
const LATEST: u64 = 16;
const OVER: u64 = 1 << 32;

/// An upstream's recent latencies of successful attempts. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Latencies {
    windows: [Window; 2],
    current: AtomicUsize,
    /// The latest answers, and how many of them were slow (see [`LATEST`]).
    latest: AtomicU64,
    /// The quantile wanted, in millionths.
    quantile: u64,
    /// Samples both windows must hold together before there are figures.
    min_samples: u64,
    /// Quantile, median, usual median (µs) and the brownout flag.
    published: [AtomicU64; 4],
    updating: AtomicBool,
}

impl Latencies {
    /// Latencies whose figures give the `quantile` (0–1) once `min_samples` are in.
    pub(crate) fn new(quantile: f64, min_samples: u32) -> Self {
        let quantile = (quantile.clamp(0.0, 1.0) * 1e6).round() as u64;
        Latencies {
            windows: [Window::new(), Window::new()],
            current: AtomicUsize::new(0),
            latest: AtomicU64::new(0),
            quantile,
            min_samples: u64::from(min_samples.max(1)),
            published: std::array::from_fn(|_| AtomicU64::new(0)),
            updating: AtomicBool::new(false),
        }
    }

    /// One successful attempt that took `micros`, at `now` (nanoseconds of the caller's clock).
    pub(crate) fn record(&self, micros: u64, now: u64) {
        let window = &self.windows[self.current.load(Ordering::Acquire) & 1];
        window.buckets[bucket(micros)].fetch_add(1, Ordering::Relaxed);
        let count = window.count.fetch_add(1, Ordering::AcqRel) + 1;
        // The brownout check: of the latest answers, how many took over twice the usual.
        let usual = self.published[2].load(Ordering::Relaxed);
        let step = 1 + if usual > 0 && micros > usual.saturating_mul(BROWNOUT) {
            OVER
        } else {
            0
        };
        let latest = self
            .latest
            .fetch_add(step, Ordering::AcqRel)
            .wrapping_add(step);
        let (answers, slow) = (latest & (OVER - 1), latest >> 32);
        if answers >= LATEST
            && self
                .latest
                .compare_exchange(latest, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let brownout = slow.saturating_mul(2) > answers;
            self.published[3].store(u64::from(brownout), Ordering::Relaxed);
        }
        if count.is_multiple_of(UPDATE_EVERY)
            || count == self.min_samples
            || count >= WINDOW_SAMPLES
        {
            self.update(now);
        }
    }

    /// The figures as last worked out.
    pub(crate) fn figures(&self) -> Figures {
        let [quantile, median, usual, brownout] =
            std::array::from_fn(|i| self.published[i].load(Ordering::Relaxed));
        Figures {
            quantile,
            median,
            usual,
            brownout: brownout != 0,
        }
    }

    /// Works the quantile and the medians out again, and ends the current window when it is
    /// full or old; one recorder at a time (the others go on: the figures are a moment late at
    /// most). Allocates nothing.
    fn update(&self, now: u64) {
        if self.updating.swap(true, Ordering::Acquire) {
            return;
        }
        let index = self.current.load(Ordering::Acquire) & 1;
        let (current, previous) = (&self.windows[index], &self.windows[index ^ 1]);
        let mut in_current = [0u64; BUCKETS];
        let mut in_both = [0u64; BUCKETS];
        for (i, (c, p)) in current.buckets.iter().zip(&*previous.buckets).enumerate() {
            let c = c.load(Ordering::Relaxed);
            in_current[i] = c;
            in_both[i] = c + p.load(Ordering::Relaxed);
        }
        let current_total: u64 = in_current.iter().sum();
        let both_total: u64 = in_both.iter().sum();
        let mut figures = self.figures();
        if both_total >= self.min_samples {
            figures.quantile = rank(&in_both, both_total, self.quantile);
            figures.median = rank(&in_both, both_total, 500_000);
        }
        let started = current.started.load(Ordering::Relaxed);
        let full = current_total >= WINDOW_SAMPLES
            || (current_total >= self.min_samples && now.saturating_sub(started) >= WINDOW_NANOS);
        if full {
            let window = rank(&in_current, current_total, 500_000);
            figures.usual = if figures.usual == 0 {
                window
            } else {
                // A quarter of the way to the window's median.
                let (usual, window) = (figures.usual as i128, window as i128);
                (usual + (window - usual) / 4).max(1) as u64
            };
            previous.clear(now);
            self.current.store(index ^ 1, Ordering::Release);
        } else if figures.usual == 0 {
            figures.usual = figures.median;
        }
        for (slot, value) in
            self.published[..3]
                .iter()
                .zip([figures.quantile, figures.median, figures.usual])
        {
            slot.store(value, Ordering::Relaxed);
        }
        self.updating.store(false, Ordering::Release);
    }
}

/// The value at `quantile` (in millionths) of `total` samples counted per bucket.
fn rank(counts: &[u64], total: u64, quantile: u64) -> u64 {
    // The sample at `ceil(total × quantile)`, at least the first.
    let wanted = (u128::from(total) * u128::from(quantile)).div_ceil(1_000_000) as u64;
    let wanted = wanted.max(1);
    let mut seen = 0;
    for (index, &count) in counts.iter().enumerate() {
        seen += count;
        if seen >= wanted {
            return upper(index);
        }
    }
    upper(BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_cover_every_latency_in_order_within_an_eighth() {
        let mut last = 0;
        for micros in (0..100_000).chain([MAX_MICROS - 1, MAX_MICROS, u64::MAX]) {
            let index = bucket(micros);
            assert!(index < BUCKETS, "{micros} µs in bucket {index}");
            assert!(index >= last, "buckets in order at {micros} µs");
            last = index;
            let edge = upper(index);
            if micros < MAX_MICROS {
                assert!(edge > micros, "{micros} µs below its bucket's edge {edge}");
                assert!(
                    edge - micros <= micros / 8 + 1,
                    "{micros} µs within an eighth of its edge {edge}"
                );
            }
        }
    }

    #[test]
    fn no_figures_before_the_minimum_of_samples() {
        let latencies = Latencies::new(0.95, 20);
        for i in 0..19 {
            latencies.record(2_000, i);
        }
        let early = latencies.figures();
        assert_eq!((early.quantile, early.median, early.usual), (0, 0, 0));
        latencies.record(2_000, 20);
        let figures = latencies.figures();
        assert!(figures.quantile >= 2_000 && figures.quantile <= 2_250);
        assert_eq!(figures.median, figures.quantile);
    }

    #[test]
    fn the_quantile_has_sub_millisecond_resolution() {
        let latencies = Latencies::new(0.95, 20);
        // 95 answers at 300 µs, 5 at 900 µs: the 95th percentile is the 95th, at 300 µs.
        for i in 0..100u64 {
            latencies.record(if i % 20 == 19 { 900 } else { 300 }, i);
        }
        let figures = latencies.figures();
        assert!(
            (300..=340).contains(&figures.quantile),
            "{}",
            figures.quantile
        );
    }

    #[test]
    fn stragglers_beyond_the_quantile_do_not_move_it() {
        let latencies = Latencies::new(0.95, 20);
        for i in 0..1_000u64 {
            latencies.record(if i % 100 == 57 { 300_000 } else { 2_000 }, i);
        }
        let figures = latencies.figures();
        assert!(figures.quantile <= 2_250, "{}", figures.quantile);
        assert!(!figures.is_brownout());
    }

    #[test]
    fn a_climbing_median_shows_as_a_brownout_then_becomes_the_usual() {
        let latencies = Latencies::new(0.95, 20);
        let mut now = 0;
        let mut record = |micros: u64, n: u64| {
            for _ in 0..n {
                now += 1_000_000;
                latencies.record(micros, now);
            }
        };
        record(2_000, 2_000);
        let steady = latencies.figures();
        assert!(!steady.is_brownout());
        assert!(steady.usual <= 2_250);

        record(30_000, 100);
        assert!(
            latencies.figures().is_brownout(),
            "{:?}",
            latencies.figures()
        );

        // Long enough at the new level, it is the usual one.
        record(30_000, 20_000);
        let settled = latencies.figures();
        assert!(!settled.is_brownout(), "{settled:?}");
        assert!(settled.quantile >= 30_000);
    }

    #[test]
    fn a_quiet_window_ends_after_its_time() {
        let latencies = Latencies::new(0.5, 20);
        for i in 0..40 {
            latencies.record(1_000, i);
        }
        assert_eq!(
            latencies.current.load(Ordering::Relaxed),
            0,
            "40 samples in 40 ns"
        );
        // Three seconds later, with the minimum in it, the window ends at its next update (the
        // 64th sample).
        for i in 0..24 {
            latencies.record(5_000, 3_000_000_000 + i);
        }
        assert_eq!(latencies.current.load(Ordering::Relaxed), 1);
    }

    proptest! {
        /// The published quantile is within an eighth above the true one of the samples
        /// (every sample in one window), and never below it.
        #[test]
        fn the_quantile_is_never_below_the_samples_and_at_most_an_eighth_above(
            samples in proptest::collection::vec(1u64..10_000_000, 32..900),
            q in 0.5f64..0.999,
        ) {
            let latencies = Latencies::new(q, 1);
            for (i, &s) in samples.iter().enumerate() {
                latencies.record(s, i as u64);
            }
            // Work the figures out with every sample in.
            latencies.update(samples.len() as u64);
            let mut sorted = samples.clone();
            sorted.sort_unstable();
            let wanted = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
            let truth = sorted[wanted - 1];
            let got = latencies.figures().quantile;
            prop_assert!(got > truth || (truth >= MAX_MICROS && got == upper(BUCKETS - 1)),
                "quantile {} below the samples' {}", got, truth);
            prop_assert!(got <= truth + truth / 8 + 1, "quantile {} over {} by more than an eighth", got, truth);
        }
    }
}
