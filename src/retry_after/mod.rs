//! Retry-After honoring as a gate shared by every clone of a service.
//!
//! Once the upstream says "come back in N seconds", a client that keeps sending collects one
//! 429 per request and may be blocked for longer. [`RetryAfterLayer`] closes a gate when a
//! response asks for a pause, and holds every later request until it opens:
//!
//! - a 429 or 503 that names a wait (`Retry-After`, or a rate-limit reset with nothing
//!   remaining) closes the gate for that wait;
//! - any response that says the quota is used up (`remaining: 0` with a reset) closes it until
//!   the reset, before a single 429 is seen;
//! - a request that meets a closed gate is held in the gate's line until it opens; if the gate
//!   stays closed longer than [`max_wait`](RetryAfterLayer::max_wait) (60 s by default) the
//!   request fails at once with [`Kind::RateLimited`], carrying the
//!   remaining wait and the wall-clock time the upstream accepts requests again. `max_wait` is
//!   the request's patience, counted from when it first met the closed gate: a gate closed
//!   again while it waited (a longer pause) holds it no longer than that in all, as the
//!   breaker's [`max_wait`](crate::CircuitBreakerLayer::max_wait) bounds a wait for an open
//!   circuit. [`Outbound::background`](crate::Outbound::background) gives both 60 s.
//! - when the gate opens, the held requests **leave paced, in the order they arrived**, not
//!   all at the same instant: the first [`release`](RetryAfterLayer::release) of them (1 by
//!   default) at once, then two more for each response through the gate that asks for no
//!   pause, one more for a request that ends without one (an error, or a released request its
//!   caller dropped) — a slow start that doubles per round trip while the upstream answers.
//!   After a `Retry-After: 30`, 500 held requests reach the upstream as 1, 2, 4, 8, … per
//!   round trip instead of 500 at once (and a second wave of 429s). Requests that meet the
//!   gate during the release line up behind the held ones; a response that closes the gate
//!   again stops the release, and the requests still held wait for the new time within their
//!   patience. A held request whose patience runs out during the release goes (the server
//!   asked for no pause); one dropped by its caller frees its place.
//! - there is one gate per upstream (scheme, host and port) by default: a pause one host asks
//!   for never holds calls to another ([`partition`](RetryAfterLayer::partition));
//! - no server closes a gate for longer than [`max_pause`](RetryAfterLayer::max_pause) (15
//!   minutes by default): a longer pause closes it for the cap, calls meanwhile fail fast
//!   with the server's own retry time, and the first such pause per upstream is logged at
//!   WARN. A hostile `Retry-After: 31536000` costs one upstream 15 minutes, not a year.
//!
//! The gate reads the response's [`RateLimitInfo`] (parsing the headers
//! and inserting the extension if no layer did yet), so the retry layer outside it reads the same
//! value without parsing again. While every gate is open (and releases nobody), the gate itself
//! costs one atomic load per request and per response: no clock read, no lock, no look-up of
//! the request's upstream.
//!
//! Place it inside [`RetryLayer`](crate::RetryLayer): the retry layer then sees every attempt's
//! wait, and retries pass the gate like any other request.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_outbound::RetryAfterLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let upstream = tower::service_fn(|_req: Request<()>| async {
//!     let response = Response::builder()
//!         .status(StatusCode::TOO_MANY_REQUESTS)
//!         .header("retry-after", "120")
//!         .body(())
//!         .unwrap();
//!     Ok::<_, std::convert::Infallible>(response)
//! });
//! let gate = RetryAfterLayer::new().max_wait(Duration::from_secs(30));
//! let mut client = ServiceBuilder::new().layer(gate.clone()).service(upstream);
//!
//! let first = client.ready().await.unwrap().call(Request::new(())).await.unwrap();
//! assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
//!
//! // The server asked for two minutes: the next request fails fast instead of collecting
//! // another 429.
//! let err = client.ready().await.unwrap().call(Request::new(())).await.unwrap_err();
//! assert!(err.is_rate_limited());
//! assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
//! assert!(gate.closed_for().is_some());
//! # }
//! ```

use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use http::{Response, StatusCode};
use tokio::time::Instant;

use crate::error::{Error, Human, Kind};
use crate::handoff::DoubtedRefusal;
use crate::line::Line;
use crate::partition::PartitionKey;
use crate::rate_limit::RateLimitInfo;
use crate::sync::{lock, AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering};

mod future;
mod hold;
mod layer;
mod service;

pub use future::ResponseFuture;
pub(crate) use hold::{Answer, Entry, Hold, Released};
pub use layer::RetryAfterLayer;
pub use service::RetryAfter;

/// The longest any setting of the gate can be: a year.
pub(crate) const MAX_SETTING: Duration = Duration::from_secs(365 * 24 * 3600);

/// The settings of every gate of one layer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub(crate) max_wait: Duration,
    pub(crate) max_pause: Duration,
    pub(crate) max_partitions: usize,
    /// Held requests let go at once when their gate reopens (at least 1).
    pub(crate) release: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_wait: Duration::from_secs(60),
            max_pause: Duration::from_secs(15 * 60),
            max_partitions: 1024,
            release: 1,
        }
    }
}

/// The gates of one layer: one per partition (per upstream by default), and a default one.
///
/// Times are nanoseconds since `base`, in atomics (0 = open). While no gate is closed or
/// releasing the requests it held, a request passes with one atomic load, without looking up
/// its partition.
#[derive(Debug)]
pub(crate) struct Gates {
    base: Instant,
    pub(crate) settings: Settings,
    default: Arc<Gate>,
    keyed: crate::partition::Registry<Gate>,
    /// Gates closed or releasing their line: each counted once, while its `busy` is set (a
    /// gate whose time passed counts until a request finds it open).
    busy: AtomicUsize,
    /// Requests held in the lines of every gate.
    held: AtomicUsize,
    stats: GateStats,
}

/// One upstream's gate.
///
/// Every change is made under the lock of its line; the atomics mirror it for the readers that
/// take no lock (the open path, `closed_for`).
#[derive(Debug)]
pub(crate) struct Gate {
    /// When the gate opens again (the server's pause, capped at `max_pause`; 0: open).
    until: AtomicU64,
    /// When the server said requests are welcome again (may be after `until`).
    server_until: AtomicU64,
    /// Whether the cap on pauses was already logged for this upstream.
    cap_logged: AtomicBool,
    /// Closed, or open and still releasing the requests it held: counted in `Gates::busy`,
    /// and every request takes the lock.
    busy: AtomicBool,
    /// The requests held here, in arrival order, and how many may leave before the next
    /// answer (see `hold.rs`).
    line: Mutex<Line>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            until: AtomicU64::new(0),
            server_until: AtomicU64::new(0),
            cap_logged: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            line: Mutex::new(Line::default()),
        }
    }
}

/// The pause a response asks of its upstream's gate: a 429's `Retry-After` or reset, a 503's
/// `Retry-After`, the reset of a used-up quota on any response.
pub(crate) fn pause_of(status: StatusCode, info: &RateLimitInfo) -> Option<Duration> {
    let wait = match status {
        StatusCode::TOO_MANY_REQUESTS => info.wait().or(info.reset),
        StatusCode::SERVICE_UNAVAILABLE => info.wait(),
        _ if info.is_exhausted() => info.reset,
        _ => None,
    };
    wait.filter(|w| !w.is_zero())
}

/// What a request finds at the gate when it does not line up (see [`Gates::pass_gate`]):
/// the gate's decision alone, for tests and models.
#[cfg(test)]
#[cfg_attr(tower_outbound_loom, allow(dead_code))] // the models only ask whether it is open
pub(crate) enum Pass {
    Open,
    Wait(Instant),
    Refuse(Error),
}

impl Gates {
    pub(crate) fn new(settings: Settings) -> Self {
        Gates {
            base: Instant::now(),
            settings,
            default: Arc::default(),
            keyed: crate::partition::Registry::default(),
            busy: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            stats: GateStats::default(),
        }
    }

    fn nanos_since_base(&self, instant: Instant) -> u64 {
        // At least 1, so that a gate closed until the base instant is still told from open.
        u64::try_from(instant.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn instant(&self, nanos: u64) -> Instant {
        // `base` is a recent instant and `nanos` at most a year past now: this cannot overflow
        // in practice, and saturates at a far-future instant if it ever would.
        self.base
            .checked_add(Duration::from_nanos(nanos))
            .unwrap_or_else(|| self.base + MAX_SETTING)
    }

    /// Whether any gate is closed or releasing: one atomic load, the whole cost of the gates
    /// while they are all open.
    fn any_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) != 0
    }

    /// The gate of `key`, made when `create` and there is none. At `max_partitions`, open
    /// gates are forgotten first; if none is open, the key shares the default gate.
    fn gate(&self, key: Option<&PartitionKey>, create: bool) -> Option<Arc<Gate>> {
        let Some(key) = key else {
            return Some(self.default.clone());
        };
        if !create {
            return self.keyed.get(key);
        }
        let now = Instant::now();
        let mut wake = Vec::new();
        let gate = self.keyed.get_or_insert(
            key,
            self.settings.max_partitions,
            |g| {
                // A gate whose time passed opens (and is no longer counted as closed).
                let mut line = lock(&g.line);
                self.reopen_if_due(g, &mut line, now, &mut wake);
                g.busy.load(Ordering::Acquire)
            },
            Gate::default,
        );
        wake.into_iter().for_each(Waker::wake);
        Some(gate.unwrap_or_else(|| self.default.clone()))
    }

    /// The gate of `key` (`None` when it has none: it is open).
    pub(crate) fn find(&self, key: Option<&PartitionKey>) -> Option<Arc<Gate>> {
        self.gate(key, false)
    }

    /// The gate of `key`, made when there is none (`None`: the map is full of closed gates and
    /// `key` shares the default one, which is returned).
    pub(crate) fn gate_of(&self, key: Option<&PartitionKey>) -> Arc<Gate> {
        self.gate(key, true).unwrap_or_else(|| self.default.clone())
    }

    /// Under `gate`'s lock: a closed gate whose time is over opens; the requests held in its
    /// line start to leave, `release` of them at once. An open gate with nobody in line goes
    /// back to the lock-free path.
    fn reopen_if_due(&self, gate: &Gate, line: &mut Line, now: Instant, wake: &mut Vec<Waker>) {
        let until = gate.until.load(Ordering::Acquire);
        if until == 0 || now < self.instant(until) {
            return;
        }
        gate.until.store(0, Ordering::Release);
        gate.server_until.store(0, Ordering::Release);
        if line.is_empty() {
            self.settle(gate, line);
        } else {
            line.release(self.settings.release, wake);
        }
    }

    /// Under `gate`'s lock: an open gate whose line emptied is no longer busy.
    fn settle(&self, gate: &Gate, line: &mut Line) {
        if line.is_empty()
            && gate.until.load(Ordering::Acquire) == 0
            && gate.busy.swap(false, Ordering::AcqRel)
        {
            line.stop();
            self.busy.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Under `gate`'s lock, for a closed gate (`until` ≠ 0, not over at `now`): the error of a
    /// request whose patience ends at `deadline` when the gate stays closed past it, or when
    /// the server asked for longer than the cap (the caller is told the server's own time,
    /// even when the gate opens earlier).
    fn refusal(&self, gate: &Gate, until: u64, now: Instant, deadline: Instant) -> Option<Error> {
        let until = self.instant(until);
        let server_until = self
            .instant(gate.server_until.load(Ordering::Acquire))
            .max(until);
        if server_until <= until && until <= deadline {
            return None;
        }
        let wait = server_until.saturating_duration_since(now);
        Some(Error::new(Kind::RateLimited {
            wait,
            retry_at: crate::error::system_time_after(wait),
        }))
    }

    /// What a request for `key` finds at its gate, without lining up (tests).
    #[cfg(test)]
    pub(crate) fn pass(&self, key: Option<&PartitionKey>) -> Pass {
        if !self.any_busy() {
            return Pass::Open;
        }
        match self.gate(key, false) {
            Some(gate) => self.pass_gate(&gate, None),
            None => Pass::Open,
        }
    }

    /// What a request finds at `gate` without lining up: `Open` once the gate's time is over
    /// (even while it releases the requests held in its line), else when to look again, or
    /// the refusal. `deadline`: the end of its patience when it is already held (a gate
    /// closed again while it waited holds it no longer than its patience in all); `None`:
    /// `max_wait` from now. While no gate is closed, one atomic load. Counts nothing.
    ///
    /// For tests and models of the decision; a request lines up with [`Gates::enter`].
    #[cfg(test)]
    pub(crate) fn pass_gate(&self, gate: &Gate, deadline: Option<Instant>) -> Pass {
        if !self.any_busy() || !gate.busy.load(Ordering::Acquire) {
            return Pass::Open;
        }
        let now = Instant::now();
        let mut wake = Vec::new();
        let pass = {
            let mut line = lock(&gate.line);
            self.reopen_if_due(gate, &mut line, now, &mut wake);
            match gate.until.load(Ordering::Acquire) {
                0 => Pass::Open,
                until => {
                    let deadline = deadline.unwrap_or_else(|| self.patience_from(now));
                    match self.refusal(gate, until, now, deadline) {
                        Some(error) => Pass::Refuse(error),
                        None => Pass::Wait(self.instant(until)),
                    }
                }
            }
        };
        wake.into_iter().for_each(Waker::wake);
        pass
    }

    /// Closes the gate of `key` when the response asks for a pause; a response that asks for
    /// none is an answer for the pace of a release (see [`Gates::answered`]).
    pub(crate) fn observe<B>(&self, key: Option<&PartitionKey>, response: &mut Response<B>) {
        // A refusal a throttle inside doubted (the server's own latest replies said its window
        // had room) is that request's own: the retry layer waits it out for that request,
        // and every other request goes on.
        if response.extensions().get::<DoubtedRefusal>().is_some() {
            return self.answered_by(key, Answer::Neutral);
        }
        let pause = RateLimitInfo::of_response(response)
            .and_then(|info| pause_of(response.status(), &info));
        let Some(wait) = pause else {
            return self.answered_by(key, Answer::Welcome);
        };
        let Some(gate) = self.gate(key, true) else {
            return;
        };
        self.close(&gate, key, wait, response.status());
    }

    /// As [`answered`](Self::answered), for the gate of `key`. While no gate is closed or
    /// releasing, one atomic load.
    pub(crate) fn answered_by(&self, key: Option<&PartitionKey>, answer: Answer) {
        if !self.any_busy() {
            return;
        }
        if let Some(gate) = self.gate(key, false) {
            self.answered(&gate, answer);
        }
    }

    /// Closes `gate` (the gate of `key`) for `wait`, capped at `max_pause`. A gate closed
    /// again while it released its line stops the release: the requests still held look at
    /// the new time, within their patience.
    pub(crate) fn close(
        &self,
        gate: &Gate,
        key: Option<&PartitionKey>,
        wait: Duration,
        status: StatusCode,
    ) {
        let now = Instant::now();
        let capped = wait.min(self.settings.max_pause);
        if capped < wait && !gate.cap_logged.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                upstream = %key.map(ToString::to_string).unwrap_or_default(),
                asked_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                cap_ms = u64::try_from(self.settings.max_pause.as_millis()).unwrap_or(u64::MAX),
                "upstream asked for a pause of {} (longer than the gate's cap of {}): the gate closes for the cap, and calls meanwhile fail with the upstream's own retry time",
                Human(wait),
                Human(self.settings.max_pause),
            );
        }
        let until = self.nanos_since_base(now.checked_add(capped).unwrap_or(now + MAX_SETTING));
        let server_until =
            self.nanos_since_base(now.checked_add(wait).unwrap_or(now + MAX_SETTING));
        let mut wake = Vec::new();
        let previous = {
            let mut line = lock(&gate.line);
            let previous = gate.until.load(Ordering::Acquire);
            gate.until.store(previous.max(until), Ordering::Release);
            let known = gate.server_until.load(Ordering::Acquire);
            gate.server_until
                .store(known.max(server_until), Ordering::Release);
            if !gate.busy.swap(true, Ordering::AcqRel) {
                self.busy.fetch_add(1, Ordering::AcqRel);
            }
            if previous == 0 && !line.is_empty() {
                // Closed again while its line was leaving: the release stops.
                line.stop();
                line.wake_all(&mut wake);
            }
            previous
        };
        wake.into_iter().for_each(Waker::wake);
        if previous < until {
            self.stats.closed();
            tracing::info!(
                upstream = %key.map(ToString::to_string).unwrap_or_default(),
                wait_ms = u64::try_from(capped.as_millis()).unwrap_or(u64::MAX),
                status = status.as_u16(),
                "upstream asked for a pause: gate closed"
            );
        }
    }

    /// How long the gate of `key` stays closed from now.
    pub(crate) fn closed_for(&self, key: Option<&PartitionKey>) -> Option<Duration> {
        let gate = self.gate(key, false)?;
        self.remaining(&gate)
    }

    /// The end of the patience of a request first held at a closed gate now.
    pub(crate) fn patience_from(&self, now: Instant) -> Instant {
        crate::handoff::instant_after(now, self.settings.max_wait)
    }

    /// Whether `gate` is open now and releases nobody (nothing to remember about it).
    pub(crate) fn is_open(&self, gate: &Gate) -> bool {
        let releasing =
            gate.busy.load(Ordering::Acquire) && gate.until.load(Ordering::Acquire) == 0;
        !releasing && self.remaining(gate).is_none()
    }

    fn remaining(&self, gate: &Gate) -> Option<Duration> {
        let until = gate.until.load(Ordering::Acquire);
        if until == 0 {
            return None;
        }
        let until = self.instant(until);
        let now = Instant::now();
        (until > now).then(|| until - now)
    }

    /// The longest any gate stays closed from now.
    pub(crate) fn longest_closed(&self) -> Option<Duration> {
        let map = self.keyed.snapshot();
        map.values()
            .chain(std::iter::once(&self.default))
            .filter_map(|g| self.remaining(g))
            .max()
    }

    /// Requests held now in the lines of every gate.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    pub(crate) fn stats(&self) -> GateStats {
        self.stats.clone()
    }
}

/// Counters of a [`RetryAfterLayer`]'s gate. Cheap to clone: clones read the same counters.
#[derive(Clone, Debug, Default)]
pub struct GateStats {
    counters: Arc<[AtomicU64; 4]>,
}

impl GateStats {
    /// Times a response closed the gate or pushed its opening later.
    pub fn times_closed(&self) -> u64 {
        self.counters[0].load(Ordering::Relaxed)
    }

    /// Requests held at a gate: closed, or open again and still releasing the requests it
    /// held before them.
    pub fn delayed(&self) -> u64 {
        self.counters[1].load(Ordering::Relaxed)
    }

    /// Requests refused because the gate stayed closed longer than their patience
    /// ([`max_wait`](RetryAfterLayer::max_wait)) or than its cap: at once, or after they were
    /// held.
    pub fn refused(&self) -> u64 {
        self.counters[2].load(Ordering::Relaxed)
    }

    /// Held requests let go once their gate opened: the first
    /// [`release`](RetryAfterLayer::release) of them at once, the others paced by the
    /// answers, or when their patience ran out during the release. Of the requests
    /// [`delayed`](Self::delayed), the others were refused, dropped by their caller, or are
    /// still held.
    pub fn released(&self) -> u64 {
        self.counters[3].load(Ordering::Relaxed)
    }

    fn closed(&self) {
        self.counters[0].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn delayed_one(&self) {
        self.counters[1].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused_one(&self) {
        self.counters[2].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn released_one(&self) {
        self.counters[3].fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(tower_outbound_loom)))]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn pause(seconds: u64) -> Response<()> {
        Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("retry-after", seconds.to_string())
            .body(())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_request_waits_no_longer_than_its_patience_when_the_gate_closes_again() {
        let gates = Gates::new(Settings {
            max_wait: Duration::from_secs(60),
            ..Settings::default()
        });
        let key = PartitionKey::from("https://a.example:443");
        let start = Instant::now();
        gates.observe(Some(&key), &mut pause(40));
        let deadline = start + Duration::from_secs(60);
        let gate = gates.gate_of(Some(&key));
        assert!(matches!(
            gates.pass_gate(&gate, Some(deadline)),
            Pass::Wait(until) if until == start + Duration::from_secs(40)
        ));
        // At 30 s the gate closes again until 80 s: 50 s from now is within a newcomer's
        // patience, not within the one of a request held since 0 s.
        tokio::time::advance(Duration::from_secs(30)).await;
        gates.observe(Some(&key), &mut pause(50));
        assert!(matches!(
            gates.pass(Some(&key)),
            Pass::Wait(until) if until == start + Duration::from_secs(80)
        ));
        match gates.pass_gate(&gate, Some(deadline)) {
            Pass::Refuse(error) => assert_eq!(error.retry_after(), Some(Duration::from_secs(50))),
            _ => panic!("held past its patience"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// The gate opens exactly when the longest capped pause named so far is over: never
        /// before the server's time, never after the cap.
        #[test]
        fn the_gate_opens_when_the_longest_capped_pause_is_over(
            cap in 1u64..200,
            steps in proptest::collection::vec((0u64..100, proptest::option::of(1u64..400)), 1..40),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async move {
                let settings = Settings {
                    max_wait: Duration::ZERO,
                    max_pause: Duration::from_secs(cap),
                    ..Settings::default()
                };
                let gates = Gates::new(settings);
                let key = PartitionKey::from("https://a.example:443");
                let start = Instant::now();
                // The time (seconds since start) before which the gate must stay closed.
                let mut closed_until = 0u64;
                let mut now = 0u64;
                for (advance, wait) in steps {
                    tokio::time::advance(Duration::from_secs(advance)).await;
                    now += advance;
                    if let Some(wait) = wait {
                        gates.observe(Some(&key), &mut pause(wait));
                        closed_until = closed_until.max(now + wait.min(cap));
                    }
                    let open = matches!(gates.pass(Some(&key)), Pass::Open);
                    prop_assert_eq!(open, now >= closed_until, "at {}s, closed until {}s", now, closed_until);
                    if let Some(left) = gates.closed_for(Some(&key)) {
                        prop_assert!(left <= Duration::from_secs(cap));
                        prop_assert_eq!(start + Duration::from_secs(now) + left, start + Duration::from_secs(closed_until));
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
    use loom::sync::Arc;
    use loom::thread;

    fn pause(seconds: u64) -> Response<()> {
        Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("retry-after", seconds.to_string())
            .body(())
            .unwrap()
    }

    fn key() -> PartitionKey {
        PartitionKey::from("https://a.example:443")
    }

    #[test]
    fn loom_a_stale_reopen_never_clears_a_new_pause() {
        loom::model(|| {
            let gates = Arc::new(Gates::new(Settings::default()));
            // A pause whose time is over: the next pass reopens the gate.
            gates.observe(Some(&key()), &mut pause(1));
            let gate = gates.gate(Some(&key()), false).unwrap();
            gate.until.store(1, Ordering::Release);
            let reopen = {
                let gates = gates.clone();
                thread::spawn(move || matches!(gates.pass(Some(&key())), Pass::Open))
            };
            let close = {
                let gates = gates.clone();
                thread::spawn(move || gates.observe(Some(&key()), &mut pause(100)))
            };
            reopen.join().unwrap();
            close.join().unwrap();
            let closed_for = gates.closed_for(Some(&key())).expect("the new pause holds");
            assert!(closed_for > Duration::from_secs(99), "{closed_for:?}");
            assert_eq!(
                gates.busy.load(Ordering::Acquire),
                1,
                "one closed gate, counted once"
            );
            assert!(
                gate.server_until.load(Ordering::Acquire) >= gate.until.load(Ordering::Acquire),
                "the server's own time survives the reopen"
            );
        });
    }

    #[test]
    fn loom_the_longest_pause_wins() {
        loom::model(|| {
            let gates = Arc::new(Gates::new(Settings::default()));
            let threads: Vec<_> = [10, 100]
                .into_iter()
                .map(|seconds| {
                    let gates = gates.clone();
                    thread::spawn(move || gates.observe(Some(&key()), &mut pause(seconds)))
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let closed_for = gates.closed_for(Some(&key())).unwrap();
            assert!(closed_for > Duration::from_secs(99), "{closed_for:?}");
            assert_eq!(gates.busy.load(Ordering::Acquire), 1);
        });
    }

    #[test]
    fn loom_one_upstreams_pause_never_closes_anothers_gate() {
        loom::model(|| {
            let gates = Arc::new(Gates::new(Settings::default()));
            let other = PartitionKey::from("https://b.example:443");
            let closer = {
                let gates = gates.clone();
                thread::spawn(move || gates.observe(Some(&key()), &mut pause(100)))
            };
            let passer = {
                let gates = gates.clone();
                thread::spawn(move || matches!(gates.pass(Some(&other)), Pass::Open))
            };
            closer.join().unwrap();
            assert!(passer.join().unwrap(), "b's gate stays open");
        });
    }
}
