//! Faults the simulator injects on purpose: spurious 429s, 5xx, latency, dropped connections.

use std::io;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::RngExt;

/// The faults the simulator injects into `/api/v1/` requests, each with its own probability.
///
/// For every API request the simulator draws, in order of arrival and from an RNG seeded by
/// [`Builder::seed`](super::Builder::seed), a latency and at most one fault. The same seed and
/// the same order of requests give the same outcomes. The fault is one of, in this order of
/// the draw:
///
/// | fault | what the client sees | stored? |
/// |---|---|---|
/// | [`drop_before_processing`](Self::drop_before_processing) | the connection closes, no response | no |
/// | [`rate_limited`](Self::rate_limited) | `429` with `RateLimit-Remaining: 0` and a short `RateLimit-Reset` | no |
/// | [`server_errors`](Self::server_errors) | `500`, `502`, `503` (with `Retry-After: 1`) or `504`, equally likely | no |
/// | [`drop_after_processing`](Self::drop_after_processing) | the connection closes, no response | **yes**: a retry makes a duplicate |
///
/// Injected faults come before authentication and do not count against the organization's
/// window. The probabilities must each lie in `0.0..=1.0` and add up to at most 1;
/// [`Builder::start`](super::Builder::start) refuses them otherwise.
///
/// ```
/// use std::time::Duration;
/// use tower_outbound::lehnz::sim::Chaos;
///
/// let chaos = Chaos::none()
///     .server_errors(0.1)
///     .drop_after_processing(0.05)
///     .latency_range(Duration::from_millis(5), Duration::from_millis(50));
/// assert_ne!(chaos, Chaos::none());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Chaos {
    drop_before: f64,
    rate_limited: f64,
    server_errors: f64,
    drop_after: f64,
    rate_limit_reset: Duration,
    latency_min: Duration,
    latency_max: Duration,
    /// Periodic outages: every `.0`, for `.1`.
    outages: Option<(Duration, Duration)>,
}

impl Chaos {
    /// No faults and no added latency: the simulator behaves exactly as Lehnz documents. The
    /// default.
    pub fn none() -> Self {
        Chaos {
            drop_before: 0.0,
            rate_limited: 0.0,
            server_errors: 0.0,
            drop_after: 0.0,
            rate_limit_reset: Duration::from_secs(1),
            latency_min: Duration::ZERO,
            latency_max: Duration::ZERO,
            outages: None,
        }
    }

    /// An unreliable upstream: 5% spurious 429s, 5% 5xx, 2% connections dropped before and 2%
    /// after processing, and 1 to 20 ms of latency per request.
    pub fn flaky() -> Self {
        Chaos::none()
            .rate_limited(0.05)
            .server_errors(0.05)
            .drop_before_processing(0.02)
            .drop_after_processing(0.02)
            .latency_range(Duration::from_millis(1), Duration::from_millis(20))
    }

    /// Probability that a request is answered `429 Too Many Requests` although the window has
    /// room. Default 0.
    pub fn rate_limited(mut self, probability: f64) -> Self {
        self.rate_limited = probability;
        self
    }

    /// The `RateLimit-Reset` of an injected 429, rounded up to whole seconds (saturating).
    /// Default 1 s.
    pub fn rate_limit_reset(mut self, reset: Duration) -> Self {
        self.rate_limit_reset = reset;
        self
    }

    /// Probability that a request is answered with a 5xx (500, 502, 503 or 504, equally
    /// likely; a 503 carries `Retry-After: 1`). Default 0.
    pub fn server_errors(mut self, probability: f64) -> Self {
        self.server_errors = probability;
        self
    }

    /// Probability that the connection is closed before the request is processed: nothing is
    /// stored and no response is sent. Default 0.
    pub fn drop_before_processing(mut self, probability: f64) -> Self {
        self.drop_before = probability;
        self
    }

    /// Probability that the request is processed (and stored, when valid) and then the
    /// connection is closed without a response: the client cannot tell it apart from a request
    /// that never arrived, and a retry stores it twice. Default 0.
    pub fn drop_after_processing(mut self, probability: f64) -> Self {
        self.drop_after = probability;
        self
    }

    /// Adds the same `latency` before every API request is processed. Default none.
    pub fn latency(self, latency: Duration) -> Self {
        self.latency_range(latency, latency)
    }

    /// Adds a latency drawn uniformly from `min..=max` before every API request is processed.
    /// Default none. An inverted range (`min > max`) makes the simulator's `start` fail with
    /// `InvalidInput`.
    pub fn latency_range(mut self, min: Duration, max: Duration) -> Self {
        self.latency_min = min;
        self.latency_max = max;
        self
    }

    /// Periodic outages: `every` period after the simulator starts (at `every`, `2 × every`,
    /// …) it is down for `lasting`: new connections are closed at once and requests on open
    /// ones get no response, as [`Simulator::outage`](super::Simulator::outage) does. Counted
    /// in [`SimStats::outages`](super::SimStats::outages). Default none. `every` must be
    /// longer than `lasting` (and than zero), or the simulator's `start` fails with
    /// `InvalidInput`.
    pub fn outages(mut self, every: Duration, lasting: Duration) -> Self {
        self.outages = Some((every, lasting));
        self
    }

    /// Whether a periodic outage is on, `elapsed` after the start, and how many began so far.
    pub(crate) fn outage_at(&self, elapsed: Duration) -> (bool, u64) {
        let Some((every, lasting)) = self.outages else {
            return (false, 0);
        };
        let every_ns = every.as_nanos().max(1);
        let elapsed_ns = elapsed.as_nanos();
        let begun = u64::try_from(elapsed_ns / every_ns).unwrap_or(u64::MAX);
        let into = elapsed_ns % every_ns;
        (begun > 0 && into < lasting.as_nanos(), begun)
    }

    /// The `RateLimit-Reset` of an injected 429.
    pub(crate) fn reset(&self) -> Duration {
        self.rate_limit_reset
    }

    /// Rejects probabilities outside `0..=1`, a sum above 1 and an inverted latency range.
    pub(crate) fn validate(&self) -> io::Result<()> {
        let named = [
            ("drop_before_processing", self.drop_before),
            ("rate_limited", self.rate_limited),
            ("server_errors", self.server_errors),
            ("drop_after_processing", self.drop_after),
        ];
        for (name, p) in named {
            if !(0.0..=1.0).contains(&p) {
                return Err(invalid(format!(
                    "chaos probability {name} is {p}; it must lie in 0.0..=1.0"
                )));
            }
        }
        let sum: f64 = named.iter().map(|(_, p)| p).sum();
        if sum > 1.0 + 1e-9 {
            return Err(invalid(format!(
                "chaos probabilities add up to {sum}; they must add up to at most 1"
            )));
        }
        if let Some((every, lasting)) = self.outages {
            if every.is_zero() || lasting >= every {
                return Err(invalid(format!(
                    "chaos outages every {every:?} lasting {lasting:?}: the period must be longer than the outage"
                )));
            }
        }
        if self.latency_min > self.latency_max {
            return Err(invalid(format!(
                "chaos latency range {:?}..={:?} is inverted",
                self.latency_min, self.latency_max
            )));
        }
        Ok(())
    }

    /// Draws the latency and fault of the next request. Always takes the same three draws from
    /// `rng`, so one knob's value never shifts the draws of another.
    pub(crate) fn draw(&self, rng: &mut SmallRng) -> Plan {
        let roll: f64 = rng.random();
        let pick: u32 = rng.random_range(0..4);
        let latency_nanos = rng.random_range(
            nanos(self.latency_min)..=nanos(self.latency_max).max(nanos(self.latency_min)),
        );
        let odds = [
            self.drop_before,
            self.rate_limited,
            self.server_errors,
            self.drop_after,
        ];
        let mut edge = 0.0;
        let slot = odds.iter().position(|p| {
            edge += p;
            roll < edge
        });
        let fault = slot.map(|slot| match slot {
            0 => Fault::DropBefore,
            1 => Fault::RateLimited,
            2 => Fault::ServerError([500, 502, 503, 504][pick as usize]),
            _ => Fault::DropAfter,
        });
        Plan {
            latency: Duration::from_nanos(latency_nanos),
            fault,
        }
    }
}

impl Default for Chaos {
    /// [`Chaos::none`].
    fn default() -> Self {
        Chaos::none()
    }
}

/// What chaos decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) latency: Duration,
    pub(crate) fault: Option<Fault>,
}

/// One injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    DropBefore,
    RateLimited,
    ServerError(u16),
    DropAfter,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn outcomes(chaos: &Chaos, seed: u64, n: usize) -> Vec<Plan> {
        let mut rng = SmallRng::seed_from_u64(seed);
        (0..n).map(|_| chaos.draw(&mut rng)).collect()
    }

    #[test]
    fn none_never_injects() {
        let plans = outcomes(&Chaos::none(), 7, 1000);
        assert!(plans
            .iter()
            .all(|p| p.fault.is_none() && p.latency.is_zero()));
    }

    #[test]
    fn certain_faults_always_happen() {
        let plans = outcomes(&Chaos::none().drop_after_processing(1.0), 7, 100);
        assert!(plans.iter().all(|p| p.fault == Some(Fault::DropAfter)));
        let plans = outcomes(&Chaos::none().server_errors(1.0), 7, 200);
        for code in [500, 502, 503, 504] {
            assert!(plans.contains(&Plan {
                latency: Duration::ZERO,
                fault: Some(Fault::ServerError(code))
            }));
        }
    }

    #[test]
    fn same_seed_same_plans_and_frequencies_follow_the_knobs() {
        let chaos = Chaos::none()
            .rate_limited(0.25)
            .drop_before_processing(0.25)
            .latency_range(Duration::from_millis(1), Duration::from_millis(3));
        assert_eq!(outcomes(&chaos, 1, 500), outcomes(&chaos, 1, 500));
        assert_ne!(outcomes(&chaos, 1, 500), outcomes(&chaos, 2, 500));
        let plans = outcomes(&chaos, 1, 4000);
        let count = |f| plans.iter().filter(|p| p.fault == Some(f)).count();
        assert!((800..1200).contains(&count(Fault::RateLimited)));
        assert!((800..1200).contains(&count(Fault::DropBefore)));
        assert!(plans.iter().all(|p| {
            (Duration::from_millis(1)..=Duration::from_millis(3)).contains(&p.latency)
        }));
    }

    #[test]
    fn validate_rejects_bad_knobs() {
        assert!(Chaos::flaky().validate().is_ok());
        assert!(Chaos::none().server_errors(1.5).validate().is_err());
        assert!(Chaos::none().server_errors(f64::NAN).validate().is_err());
        let too_much = Chaos::none().server_errors(0.6).rate_limited(0.6);
        assert!(too_much.validate().is_err());
        let inverted = Chaos::none().latency_range(Duration::from_secs(2), Duration::from_secs(1));
        assert!(inverted.validate().is_err());
        let always_down = Chaos::none().outages(Duration::from_secs(5), Duration::from_secs(5));
        assert!(always_down.validate().is_err());
        assert!(Chaos::none()
            .outages(Duration::ZERO, Duration::ZERO)
            .validate()
            .is_err());
    }

    #[test]
    fn periodic_outages_start_after_each_period_and_last_their_length() {
        let chaos = Chaos::none().outages(Duration::from_secs(10), Duration::from_secs(3));
        let at = |ms: u64| chaos.outage_at(Duration::from_millis(ms));
        assert_eq!(at(0), (false, 0));
        assert_eq!(at(9_999), (false, 0));
        assert_eq!(at(10_000), (true, 1));
        assert_eq!(at(12_999), (true, 1));
        assert_eq!(at(13_000), (false, 1));
        assert_eq!(at(20_500), (true, 2));
        assert_eq!(Chaos::none().outage_at(Duration::from_secs(99)), (false, 0));
    }
}
