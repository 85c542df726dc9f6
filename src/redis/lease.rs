//! Token leasing: a process takes several consecutive slots of a shared bucket in one round
//! trip and spends them locally, renewing before they run out.
//!
//! A lease is a reservation in the shared bucket like any acquire, for several slots at once:
//! slot `j` of a lease may go at `max(tat + (j + 1 − burst) · interval, pause end)`, on the
//! Redis clock, taken here from the moment the answer arrived (a little later than Redis's
//! now, never earlier). So leases never let the fleet exceed the bucket's rate: what a lease
//! holds is the bucket's own future, in order. What a held lease can outrun is the server's
//! word adopted after it was taken (a `RateLimit-Remaining: 0` another process saw): the slots
//! already leased are spent before the next lease sees that view. That excess is at most the
//! slots outstanding in leases (per process, at most `max_slots` and one renewal), the bound
//! docs/distributed.md states. Unused slots of a process that dies pass with their time; a
//! store gives its unused slots back with [`RedisStore::return_leases`](super::RedisStore).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::bucket::Granted;

/// The slots a lease holds, as this process spends them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lease {
    /// When the answer arrived: the Redis clock's now, as far as this process can tell.
    at: Instant,
    /// The grant, relative to `at`.
    granted: Granted,
    interval_us: u64,
    burst: u64,
    /// The next slot to spend.
    next: u32,
}

impl Lease {
    pub(crate) fn new(at: Instant, granted: Granted, interval: Duration, burst: u32) -> Self {
        Lease {
            at,
            granted,
            interval_us: u64::try_from(interval.as_micros()).unwrap_or(u64::MAX),
            burst: u64::from(burst),
            next: 0,
        }
    }

    /// Slots not spent yet.
    pub(crate) fn left(&self) -> u32 {
        self.granted.slots.saturating_sub(self.next)
    }

    /// When slot `j` may go.
    fn time_of(&self, j: u32) -> Instant {
        let interval = i128::from(self.interval_us);
        let offset =
            i128::from(self.granted.tat) + (i128::from(j) + 1 - i128::from(self.burst)) * interval;
        let offset = offset.max(i128::from(self.granted.not_before)).max(0);
        let micros = u64::try_from(offset).unwrap_or(u64::MAX);
        crate::handoff::instant_after(self.at, Duration::from_micros(micros))
    }

    /// The next slot's time, without spending it.
    pub(crate) fn peek(&self) -> Option<Instant> {
        (self.left() > 0).then(|| self.time_of(self.next))
    }

    /// Spends the next slot.
    pub(crate) fn take(&mut self) {
        self.next = self.next.saturating_add(1).min(self.granted.slots);
    }

    /// What giving the unused slots back needs: the TAT the lease set, and how many.
    pub(crate) fn unused(&self) -> (u64, u32) {
        (self.granted.new_tat, self.left())
    }

    /// The bucket's interval.
    pub(crate) fn interval(&self) -> Duration {
        Duration::from_micros(self.interval_us)
    }
}

/// One bucket's leases in this process, and what sizes the next.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// Leases in the order they were granted (a renewal's slots come after the current's).
    pub(crate) leases: VecDeque<Lease>,
    /// When a renewal that found nothing within reach may be asked for again.
    pub(crate) retry_at: Option<Instant>,
    /// Not before this may a lease be asked for again, as the last refused one said.
    ask_at: Option<Instant>,
    /// The slots asked for by the lease on its way (0 when none is; an ask is at least one
    /// slot): Redis may have granted them already, so this process counts them among its
    /// outstanding requests.
    asking: u32,
    /// Slots asked for in every lease so far (a running total).
    pub(crate) asked: u64,
    /// What wakes the calls waiting for the lease on its way.
    pub(crate) arrived: std::sync::Arc<tokio::sync::Notify>,
    /// Slots spent since the last lease was asked for, and when that was.
    spent: u64,
    since: Option<Instant>,
    /// The size of the last lease asked for, and the smoothed rate it came from (slots a
    /// second).
    size: u32,
    rate: f64,
}

impl Held {
    /// Slots left in every lease.
    pub(crate) fn left(&self) -> u32 {
        self.leases.iter().map(Lease::left).sum()
    }

    /// The next slot's time, if one is held; spent leases are dropped.
    pub(crate) fn peek(&mut self) -> Option<Instant> {
        while let Some(lease) = self.leases.front() {
            if let Some(at) = lease.peek() {
                return Some(at);
            }
            self.leases.pop_front();
        }
        None
    }

    /// Whether a lease is being asked for.
    pub(crate) fn renewing(&self) -> bool {
        self.asking > 0
    }

    /// A lease of `size` slots (at least one) is being asked for.
    pub(crate) fn ask(&mut self, size: u32) {
        let size = size.max(1);
        self.asking = size;
        self.asked = self.asked.saturating_add(u64::from(size));
    }

    /// The lease asked for was answered (or the ask given up): calls waiting for it wake.
    pub(crate) fn answered(&mut self) {
        self.asking = 0;
        self.arrived.notify_waiters();
    }

    /// Slots this process holds or may have been granted: those left in its leases and those
    /// of the lease on its way.
    pub(crate) fn held_or_asked(&self) -> u32 {
        self.left().saturating_add(self.asking)
    }

    /// A lease asked for was refused: none worth asking for before `ask_at`.
    pub(crate) fn refused(&mut self, ask_at: Instant) {
        self.ask_at = Some(ask_at);
    }

    /// When, if Redis said lately that no lease worth asking for is there before a time still
    /// to come, that time (the bucket's future only fills up: asking now would be refused too).
    pub(crate) fn asked_too_soon(&mut self, now: Instant) -> Option<Instant> {
        match self.ask_at {
            Some(at) if at > now => Some(at),
            Some(_) => {
                self.ask_at = None;
                None
            }
            None => None,
        }
    }

    /// A lease granted, after those held.
    pub(crate) fn push(&mut self, lease: Lease) {
        self.leases.push_back(lease);
    }

    /// Below how many slots left a renewal is asked for: half the last lease.
    pub(crate) fn renew_below(&self) -> u32 {
        self.size / 2
    }

    /// Spends the slot [`peek`](Self::peek) showed.
    pub(crate) fn take(&mut self) {
        if let Some(lease) = self.leases.front_mut() {
            lease.take();
            self.spent = self.spent.saturating_add(1);
        }
    }

    /// The size of the next lease: this process's own rate over the horizon, twice over (so a
    /// renewal asked at half the lease arrives before it runs out), within `[1, max]`. The rate
    /// is what was spent since the last lease was asked for, smoothed (half the last figure and
    /// half the new one); leases asked for within a millisecond of each other keep the last size.
    pub(crate) fn next_size(&mut self, now: Instant, horizon: Duration, max: u32) -> u32 {
        if let Some(since) = self.since {
            let elapsed = now.saturating_duration_since(since).as_secs_f64();
            if elapsed < 0.001 {
                return self.size.clamp(1, max.max(1));
            }
            let sample = self.spent as f64 / elapsed;
            self.rate = if self.rate > 0.0 {
                (self.rate + sample) / 2.0
            } else {
                sample
            };
        }
        self.spent = 0;
        self.since = Some(now);
        let wanted = (self.rate * horizon.as_secs_f64() * 2.0).ceil();
        self.size = if wanted.is_finite() && wanted >= 1.0 {
            (wanted.min(f64::from(max)) as u32).max(1)
        } else {
            1
        };
        self.size
    }
}

/// Every bucket's leases in this process, by Redis key.
pub(crate) type Leases = HashMap<String, Held>;

/// How many buckets' leasing state a process keeps before it forgets the idle ones (see
/// [`held_for`]).
pub(crate) const MOST_HELD: usize = 1024;

impl Held {
    /// Whether forgetting this bucket's state loses nothing but its smoothed rate: no slot
    /// held, no lease on its way, no refusal or empty renewal still to wait out.
    fn idle(&mut self, now: Instant) -> bool {
        self.peek().is_none()
            && self.asking == 0
            && self.asked_too_soon(now).is_none()
            && self.retry_at.is_none_or(|at| at <= now)
    }
}

/// The leasing state of bucket `key`, made when it is new. Before a new bucket is added to a
/// map that holds [`MOST_HELD`], the idle ones are forgotten: a process that meets many
/// partition keys over its life keeps only those it is leasing for.
pub(crate) fn held_for<'a>(leases: &'a mut Leases, key: &str, now: Instant) -> &'a mut Held {
    if leases.len() >= MOST_HELD && !leases.contains_key(key) {
        leases.retain(|_, held| !held.idle(now));
    }
    leases.entry(key.to_owned()).or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(slots: u32, tat: i64, not_before: i64) -> Granted {
        Granted {
            slots,
            tat,
            not_before,
            new_tat: 1_000,
        }
    }

    /// A regression test: the map of leasing state kept every bucket a process ever leased for,
    /// so a process partitioned by many keys (tenants, hosts) grew it for good. Now a full map
    /// forgets the idle buckets before it takes a new one, and keeps the busy ones.
    #[tokio::test(start_paused = true)]
    async fn a_full_map_of_leases_forgets_idle_buckets_and_keeps_busy_ones() {
        let now = Instant::now();
        let mut leases = Leases::new();
        for i in 0..MOST_HELD {
            held_for(&mut leases, &format!("idle-{i}"), now);
        }
        let interval = Duration::from_millis(10);
        held_for(&mut leases, "idle-0", now).push(Lease::new(now, granted(4, 0, 0), interval, 1));
        held_for(&mut leases, "idle-1", now).ask(2);
        held_for(&mut leases, "idle-2", now).refused(now + Duration::from_secs(1));
        assert_eq!(leases.len(), MOST_HELD, "a known key takes no room");
        held_for(&mut leases, "new", now);
        let mut kept: Vec<&str> = leases.keys().map(String::as_str).collect();
        kept.sort_unstable();
        assert_eq!(
            kept,
            ["idle-0", "idle-1", "idle-2", "new"],
            "slots held, a lease on its way and a refusal to wait out are kept"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slots_go_at_the_buckets_pace_from_the_grant() {
        let at = Instant::now();
        // An empty bucket (TAT = now), burst 2, 10 ms apart: two at once, then every 10 ms.
        let mut lease = Lease::new(at, granted(4, 0, 0), Duration::from_millis(10), 2);
        let mut times = Vec::new();
        while let Some(time) = lease.peek() {
            times.push(time - at);
            lease.take();
        }
        assert_eq!(times, [0, 0, 10, 20].map(Duration::from_millis).to_vec());
        assert_eq!(lease.left(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_taken_during_a_pause_starts_at_its_end() {
        let at = Instant::now();
        let lease = Lease::new(
            at,
            granted(3, 500_000, 500_000),
            Duration::from_millis(10),
            1,
        );
        assert_eq!(lease.peek().unwrap() - at, Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_lease_follows_the_processs_own_rate_within_its_bounds() {
        let mut held = Held::default();
        let start = Instant::now();
        assert_eq!(
            held.next_size(start, Duration::from_millis(100), 64),
            1,
            "quiet: one"
        );
        held.leases.push_back(Lease::new(
            start,
            granted(1_000, 0, 0),
            Duration::from_micros(1),
            1_000,
        ));
        for _ in 0..200 {
            held.peek();
            held.take();
        }
        // 200 slots in one second: 20 per 100 ms, twice over.
        let size = held.next_size(
            start + Duration::from_secs(1),
            Duration::from_millis(100),
            64,
        );
        assert_eq!(size, 40);
        // Asked again at once: the same size.
        assert_eq!(
            held.next_size(
                start + Duration::from_secs(1),
                Duration::from_millis(100),
                64
            ),
            40
        );
        for _ in 0..10_000 {
            held.peek();
            held.take();
        }
        let size = held.next_size(
            start + Duration::from_secs(2),
            Duration::from_millis(100),
            64,
        );
        assert_eq!(size, 64, "bounded");
    }
}
