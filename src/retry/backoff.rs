//! The backoff math: capped exponential delays with jitter.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, RngExt, SeedableRng};

/// How a backoff delay is randomised, so that clients that failed together do not retry
/// together.
///
/// With `ceiling = min(max_delay, base_delay · 2^retry)` for the `retry`-th retry (0-based):
///
/// | variant                      | delay                                                        |
/// |------------------------------|--------------------------------------------------------------|
/// | [`Full`](Jitter::Full)       | uniform in `[0, ceiling]` (default)                          |
/// | [`Equal`](Jitter::Equal)     | `ceiling / 2` + uniform in `[0, ceiling / 2]`                |
/// | [`Decorrelated`](Jitter::Decorrelated) | uniform in `[base_delay, 3 · previous delay]`, capped at `max_delay` |
/// | [`None`](Jitter::None)       | exactly `ceiling`                                            |
///
/// Full jitter spreads retries the most and is what most clients should use; see "Exponential
/// Backoff And Jitter" on the AWS Architecture Blog for the comparison.
///
/// In configuration files ([`config`](crate::config)) it is written in lowercase: `"full"`,
/// `"equal"`, `"decorrelated"`, `"none"`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// Uniform in `[0, ceiling]`.
    #[default]
    Full,
    /// Half the ceiling, plus uniform in `[0, ceiling / 2]`.
    Equal,
    /// Uniform in `[base, 3 · previous]`, capped: grows from the previous delay rather than from
    /// the attempt number.
    Decorrelated,
    /// No randomness: exactly the ceiling.
    None,
}

/// Capped exponential backoff with [`Jitter`].
///
/// ```
/// use std::time::Duration;
/// use rand::{rngs::SmallRng, SeedableRng};
/// use tower_outbound::retry::{ExponentialBackoff, Jitter};
///
/// let backoff = ExponentialBackoff::new(Duration::from_millis(200), Duration::from_secs(30), Jitter::Full);
/// assert_eq!(backoff.ceiling(3), Duration::from_millis(1600));
/// let mut rng = SmallRng::seed_from_u64(7);
/// let delay = backoff.delay(3, Duration::ZERO, &mut rng);
/// assert!(delay <= Duration::from_millis(1600));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExponentialBackoff {
    base: Duration,
    max: Duration,
    jitter: Jitter,
}

impl ExponentialBackoff {
    /// Delays growing from `base` by doubling, never over `max`, randomised by `jitter`. Any
    /// values are accepted: a ceiling that would overflow is `max`.
    pub fn new(base: Duration, max: Duration, jitter: Jitter) -> Self {
        ExponentialBackoff { base, max, jitter }
    }

    /// The first delay's ceiling.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The cap on every delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The jitter.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// `min(max, base · 2^retry)`, without overflow for any `retry`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(0);
        if factor == 0 {
            return self.max;
        }
        self.base
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The delay before the `retry`-th retry (0-based). `previous` is the delay used before the
    /// previous retry (zero for the first); only [`Jitter::Decorrelated`] uses it.
    pub fn delay<R: Rng + ?Sized>(&self, retry: u32, previous: Duration, rng: &mut R) -> Duration {
        match self.jitter {
            Jitter::None => self.ceiling(retry),
            Jitter::Full => uniform(rng, Duration::ZERO, self.ceiling(retry)),
            Jitter::Equal => {
                let ceiling = self.ceiling(retry);
                let half = ceiling / 2;
                half + uniform(rng, Duration::ZERO, ceiling - half)
            }
            Jitter::Decorrelated => {
                let low = self.base.min(self.max);
                let high = previous.max(self.base).saturating_mul(3).min(self.max);
                uniform(rng, low, high.max(low))
            }
        }
    }
}

/// Uniform in `[low, high]`, with nanosecond resolution.
pub(crate) fn uniform<R: Rng + ?Sized>(rng: &mut R, low: Duration, high: Duration) -> Duration {
    if high <= low {
        return low;
    }
    let span = u64::try_from((high - low).as_nanos()).unwrap_or(u64::MAX);
    low + Duration::from_nanos(rng.random_range(0..=span))
}

/// Where the randomness for jitter comes from: the thread's RNG, or a seeded one shared by every
/// clone of a layer (for reproducible tests).
#[derive(Clone, Debug, Default)]
pub(crate) enum RngSource {
    #[default]
    Thread,
    Seeded(Arc<Mutex<SmallRng>>),
}

impl RngSource {
    pub(crate) fn seeded(seed: u64) -> Self {
        RngSource::Seeded(Arc::new(Mutex::new(SmallRng::seed_from_u64(seed))))
    }

    pub(crate) fn backoff(
        &self,
        backoff: &ExponentialBackoff,
        retry: u32,
        previous: Duration,
    ) -> Duration {
        match self {
            RngSource::Thread => backoff.delay(retry, previous, &mut rand::rng()),
            RngSource::Seeded(rng) => {
                let mut rng = rng.lock().unwrap_or_else(PoisonError::into_inner);
                backoff.delay(retry, previous, &mut *rng)
            }
        }
    }

    pub(crate) fn uniform(&self, low: Duration, high: Duration) -> Duration {
        match self {
            RngSource::Thread => uniform(&mut rand::rng(), low, high),
            RngSource::Seeded(rng) => {
                let mut rng = rng.lock().unwrap_or_else(PoisonError::into_inner);
                uniform(&mut *rng, low, high)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn backoff(jitter: Jitter) -> ExponentialBackoff {
        ExponentialBackoff::new(200 * MS, Duration::from_secs(30), jitter)
    }

    #[test]
    fn ceiling_doubles_and_caps_without_overflow() {
        let b = backoff(Jitter::None);
        assert_eq!(b.ceiling(0), 200 * MS);
        assert_eq!(b.ceiling(1), 400 * MS);
        assert_eq!(b.ceiling(7), 25_600 * MS);
        assert_eq!(b.ceiling(8), Duration::from_secs(30));
        assert_eq!(b.ceiling(31), Duration::from_secs(30));
        assert_eq!(b.ceiling(32), Duration::from_secs(30));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
        let huge = ExponentialBackoff::new(Duration::MAX, Duration::MAX, Jitter::None);
        assert_eq!(huge.ceiling(5), Duration::MAX);
    }

    #[test]
    fn no_jitter_is_the_ceiling() {
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(
            backoff(Jitter::None).delay(2, Duration::ZERO, &mut rng),
            800 * MS
        );
    }

    /// Full jitter must stay within `[0, ceiling]` and spread over it: with 10,000 samples, each
    /// tenth of the range gets close to a tenth of them, and the mean is close to the middle.
    #[test]
    fn full_jitter_spreads_uniformly_over_its_bounds() {
        let b = backoff(Jitter::Full);
        let mut rng = SmallRng::seed_from_u64(42);
        let ceiling = b.ceiling(3);
        let n = 10_000;
        let mut deciles = [0u32; 10];
        let mut sum = 0f64;
        for _ in 0..n {
            let d = b.delay(3, Duration::ZERO, &mut rng);
            assert!(d <= ceiling);
            let fraction = d.as_secs_f64() / ceiling.as_secs_f64();
            sum += fraction;
            deciles[((fraction * 10.0) as usize).min(9)] += 1;
        }
        for (i, count) in deciles.iter().enumerate() {
            assert!(
                (850..=1150).contains(count),
                "decile {i} got {count} of {n}: {deciles:?}"
            );
        }
        let mean = sum / f64::from(n);
        assert!((0.47..=0.53).contains(&mean), "mean {mean}");
    }

    #[test]
    fn equal_jitter_keeps_half_the_ceiling() {
        let b = backoff(Jitter::Equal);
        let mut rng = SmallRng::seed_from_u64(3);
        for retry in 0..10 {
            let ceiling = b.ceiling(retry);
            for _ in 0..100 {
                let d = b.delay(retry, Duration::ZERO, &mut rng);
                assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} vs {ceiling:?}");
            }
        }
    }

    #[test]
    fn seeded_jitter_is_reproducible() {
        let a = RngSource::seeded(9);
        let b = RngSource::seeded(9);
        let backoff = backoff(Jitter::Full);
        for retry in 0..5 {
            assert_eq!(
                a.backoff(&backoff, retry, Duration::ZERO),
                b.backoff(&backoff, retry, Duration::ZERO)
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn every_jitter_stays_within_bounds(
            base_ms in 0u64..10_000,
            max_ms in 0u64..120_000,
            retry in 0u32..64,
            previous_ms in 0u64..200_000,
            seed in any::<u64>(),
            jitter in prop_oneof![
                Just(Jitter::Full), Just(Jitter::Equal), Just(Jitter::Decorrelated), Just(Jitter::None)
            ],
        ) {
            let b = ExponentialBackoff::new(Duration::from_millis(base_ms), Duration::from_millis(max_ms), jitter);
            let mut rng = SmallRng::seed_from_u64(seed);
            let d = b.delay(retry, Duration::from_millis(previous_ms), &mut rng);
            prop_assert!(d <= b.max().max(b.base().min(b.max())));
            match jitter {
                Jitter::Full | Jitter::None => prop_assert!(d <= b.ceiling(retry)),
                Jitter::Equal => prop_assert!(d >= b.ceiling(retry) / 2 && d <= b.ceiling(retry)),
                Jitter::Decorrelated => prop_assert!(d >= b.base().min(b.max())),
            }
        }
    }
}
