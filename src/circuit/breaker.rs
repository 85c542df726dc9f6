//! One breaker's state machine: closed → open → half-open → closed.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::window::Ring;
use super::{CircuitState, Settings, StateChange};
use crate::partition::PartitionKey;

/// What a call was allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Closed: an ordinary call.
    Call,
    /// Half-open: one of the probes.
    Probe,
    /// Open, or half-open with every probe taken: fail fast.
    Reject { retry_in: Duration },
}

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    ring: Ring,
    opened_at: Instant,
    open_for: Duration,
    probes_in_flight: u32,
    probes_passed: u32,
}

/// One breaker. The state is mirrored in an atomic so a closed breaker admits a call without
/// taking the lock.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: AtomicU8,
    inner: Mutex<Inner>,
    pub(crate) key: Option<PartitionKey>,
}

fn code(state: CircuitState) -> u8 {
    match state {
        CircuitState::Closed => 0,
        CircuitState::Open => 1,
        CircuitState::HalfOpen => 2,
    }
}

impl Breaker {
    pub(crate) fn new(settings: &Settings, key: Option<PartitionKey>) -> Self {
        Breaker {
            state: AtomicU8::new(0),
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                ring: Ring::new(settings.window),
                opened_at: Instant::now(),
                open_for: settings.open_duration,
                probes_in_flight: 0,
                probes_passed: 0,
            }),
            key,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) == 0
    }

    /// The state now (an open breaker whose time is up reports half-open).
    pub(crate) fn state(&self) -> CircuitState {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match inner.state {
            CircuitState::Open if Instant::now() >= Self::reopens_at(&inner) => {
                CircuitState::HalfOpen
            }
            state => state,
        }
    }

    /// Whether a closed breaker has nothing worth keeping (for eviction).
    pub(crate) fn is_idle(&self) -> bool {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.state == CircuitState::Closed && inner.ring.tally().failures == 0
    }

    /// When an open breaker lets the next probe through.
    fn reopens_at(inner: &Inner) -> Instant {
        inner
            .opened_at
            .checked_add(inner.open_for)
            .unwrap_or_else(|| inner.opened_at + super::MAX_DURATION)
    }

    fn set(&self, inner: &mut Inner, to: CircuitState, changes: &mut Vec<StateChange>) {
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

    fn open(&self, inner: &mut Inner, now: Instant, changes: &mut Vec<StateChange>) {
        inner.opened_at = now;
        inner.probes_in_flight = 0;
        inner.probes_passed = 0;
        self.set(inner, CircuitState::Open, changes);
    }

    /// Decides whether a call may go. Transitions are appended to `changes`.
    pub(crate) fn admit(&self, settings: &Settings, changes: &mut Vec<StateChange>) -> Admission {
        if self.is_closed() {
            return Admission::Call;
        }
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.state == CircuitState::Open {
            let until = Self::reopens_at(&inner);
            if now < until {
                return Admission::Reject {
                    retry_in: until - now,
                };
            }
            inner.probes_in_flight = 0;
            inner.probes_passed = 0;
            self.set(&mut inner, CircuitState::HalfOpen, changes);
        }
        match inner.state {
            CircuitState::Closed => Admission::Call,
            CircuitState::HalfOpen
                if inner.probes_in_flight + inner.probes_passed < settings.half_open_probes =>
            {
                inner.probes_in_flight += 1;
                Admission::Probe
            }
            // Every probe is out: the verdict comes soon.
            CircuitState::HalfOpen | CircuitState::Open => Admission::Reject {
                retry_in: Duration::ZERO,
            },
        }
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
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match admission {
            Admission::Call => {
                let Some(failure) = failure else { return };
                if inner.state != CircuitState::Closed {
                    // Opened by other calls meanwhile; this outcome belongs to the old window.
                    return;
                }
                let now = now.unwrap_or_else(Instant::now);
                let clock = inner.ring.needs_clock().then_some(now);
                inner.ring.record(failure, slow, clock);
                let tally = inner.ring.tally();
                let failing = tally.failure_rate() >= settings.failure_rate_threshold;
                let slow_calls = settings
                    .slow_call
                    .is_some_and(|(_, threshold)| tally.slow_rate() >= threshold);
                if tally.calls >= settings.minimum_calls && (failing || slow_calls) {
                    inner.open_for = settings.open_duration;
                    self.open(&mut inner, now, changes);
                }
            }
            Admission::Probe => {
                inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
                if inner.state != CircuitState::HalfOpen {
                    return;
                }
                match failure {
                    None => {}
                    Some(true) => {
                        let next = match settings.open_backoff {
                            Some((factor, max)) => Duration::try_from_secs_f64(
                                inner.open_for.as_secs_f64() * f64::from(factor),
                            )
                            .unwrap_or(max)
                            .min(max),
                            None => settings.open_duration,
                        };
                        inner.open_for = next;
                        self.open(&mut inner, now.unwrap_or_else(Instant::now), changes);
                    }
                    Some(false) if slow => {
                        // A slow probe is no proof of health.
                        self.open(&mut inner, now.unwrap_or_else(Instant::now), changes);
                    }
                    Some(false) => {
                        inner.probes_passed += 1;
                        if inner.probes_passed >= settings.half_open_probes {
                            inner.ring.clear();
                            inner.open_for = settings.open_duration;
                            self.set(&mut inner, CircuitState::Closed, changes);
                        }
                    }
                }
            }
            Admission::Reject { .. } => {}
        }
    }

    /// A probe whose call was dropped before it finished gives its permit back.
    pub(crate) fn release_probe(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
    }
}
