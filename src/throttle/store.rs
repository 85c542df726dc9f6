//! Where buckets live: in this process ([`LocalStore`], the default), or in a shared store
//! such as Redis (feature `redis`), behind the [`BucketStore`] trait.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::gcra::{nanos, Bucket, Cell, Report, Verdict};
use super::Quota;
use crate::error::Error;
use crate::partition::PartitionKey;

/// What a store decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send now.
    Go,
    /// A slot was reserved: send after `wait`. If the request is dropped before that, give the
    /// slot back with [`BucketStore::release`].
    Wait {
        /// How long to wait.
        wait: Duration,
        /// The reservation, for [`BucketStore::release`].
        reservation: Reservation,
    },
    /// No slot within the allowed wait. Nothing was taken.
    Reject {
        /// How long the request would have waited.
        wait: Duration,
    },
}

/// A reserved slot, opaque to everyone but the store that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation(pub u64);

/// What one reply said about the server's rate-limit window, for
/// [`BucketStore::adopt_report`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WindowReport {
    /// Requests left in the window (`RateLimit-Remaining`).
    pub remaining: u64,
    /// Time until the window resets (`RateLimit-Reset`).
    pub reset: Duration,
    /// The reply refused the request on the window's count alone: a `429` with
    /// `remaining: 0` and no `Retry-After`.
    pub refused: bool,
    /// Other requests this layer let through and that were not answered yet when the reply
    /// came: the server's count may not include them.
    pub outstanding: u64,
}

impl WindowReport {
    /// A reply that served the request: `remaining` requests left until `reset`, with
    /// nothing else outstanding.
    pub fn new(remaining: u64, reset: Duration) -> Self {
        WindowReport {
            remaining,
            reset,
            refused: false,
            outstanding: 0,
        }
    }

    /// A reply that refused the request on the window's count alone (a `429` with
    /// `remaining: 0` and no `Retry-After`), the window resetting in `reset`.
    pub fn refusal(reset: Duration) -> Self {
        WindowReport {
            refused: true,
            ..Self::new(0, reset)
        }
    }

    /// With `outstanding` other requests let through and not answered yet.
    pub fn with_outstanding(mut self, outstanding: u64) -> Self {
        self.outstanding = outstanding;
        self
    }
}

/// A decision, now or later.
pub enum Acquire {
    /// Decided at once (the in-process store always is).
    Ready(Result<Decision, Error>),
    /// Decided after a round trip to a shared store.
    Pending(Pin<Box<dyn Future<Output = Result<Decision, Error>> + Send>>),
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Acquire::Ready(decision) => f.debug_tuple("Ready").field(decision).finish(),
            Acquire::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// Where buckets live.
///
/// A store must make each `acquire` atomic for its bucket (no two requests may take the same
/// slot), reserve slots in arrival order, and take nothing when it rejects. A shared store
/// should keep time with one clock for all its clients (the Redis store uses the Redis server's
/// `TIME`), so clock skew between machines cannot loosen the limit. `adopt` and `release` are
/// hints: a store may apply them later (a remote store sends them in the background), and must
/// never let `adopt` make a bucket looser.
pub trait BucketStore: Send + Sync + 'static {
    /// Reserves the next slot of the bucket `key` (`None`: the default bucket) under `quota`,
    /// if it comes within `max_wait`.
    fn acquire(&self, key: Option<&PartitionKey>, quota: &Quota, max_wait: Duration) -> Acquire;

    /// The upstream said `remaining` requests are left until `reset`: let no more than that
    /// through before then.
    fn adopt(&self, key: Option<&PartitionKey>, quota: &Quota, remaining: u64, reset: Duration);

    /// Gives back a slot a dropped request did not use, if no later reservation was made.
    fn release(&self, key: Option<&PartitionKey>, quota: &Quota, reservation: Reservation);

    /// Adopts what one reply said about the window, knowing how many requests are still
    /// outstanding; returns `false` when the store doubts a refusal (and paused nothing for
    /// it), `true` when it adopted the reply.
    ///
    /// The default adopts `remaining` and `reset` with [`adopt`](Self::adopt) and believes
    /// every refusal. [`LocalStore`] does better: see its [`adopt_report`](LocalStore#method.adopt_report).
    fn adopt_report(
        &self,
        key: Option<&PartitionKey>,
        quota: &Quota,
        report: WindowReport,
    ) -> bool {
        self.adopt(key, quota, report.remaining, report.reset);
        true
    }

    /// Takes a slot of the bucket `key` if one is there now, deciding at once, without waiting
    /// or a round trip: for a request that goes only if it costs nothing (a hedge's copy).
    /// Returns whether it took one.
    ///
    /// The default takes none, so such requests never go. [`LocalStore`] takes a slot its
    /// bucket has now; a Redis store with leasing takes a leased slot that is due.
    fn take_at_once(&self, key: Option<&PartitionKey>, quota: &Quota) -> bool {
        let _ = (key, quota);
        false
    }
}

impl<T: BucketStore + ?Sized> BucketStore for Arc<T> {
    fn acquire(&self, key: Option<&PartitionKey>, quota: &Quota, max_wait: Duration) -> Acquire {
        (**self).acquire(key, quota, max_wait)
    }

    fn adopt(&self, key: Option<&PartitionKey>, quota: &Quota, remaining: u64, reset: Duration) {
        (**self).adopt(key, quota, remaining, reset);
    }

    fn release(&self, key: Option<&PartitionKey>, quota: &Quota, reservation: Reservation) {
        (**self).release(key, quota, reservation);
    }

    fn adopt_report(
        &self,
        key: Option<&PartitionKey>,
        quota: &Quota,
        report: WindowReport,
    ) -> bool {
        (**self).adopt_report(key, quota, report)
    }

    fn take_at_once(&self, key: Option<&PartitionKey>, quota: &Quota) -> bool {
        (**self).take_at_once(key, quota)
    }
}

/// Buckets in this process: GCRA on an atomic, no background task, no timer, no allocation per
/// request for the default bucket. Keyed buckets live in a map that evicts idle (full)
/// buckets; see [`max_partitions`](LocalStore::max_partitions).
pub struct LocalStore {
    base: Instant,
    default: Arc<Bucket>,
    keyed: crate::partition::Registry<Bucket>,
    max_partitions: usize,
}

impl fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore")
            .field("max_partitions", &self.max_partitions)
            .finish_non_exhaustive()
    }
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalStore {
    /// An empty store, holding at most 4,096 keyed buckets.
    pub fn new() -> Self {
        LocalStore {
            base: Instant::now(),
            default: Arc::default(),
            keyed: crate::partition::Registry::default(),
            max_partitions: 4096,
        }
    }

    /// The most keyed buckets kept (default 4,096). When a new key arrives at the cap, idle
    /// buckets (full again: nothing to remember) are dropped first; if none is idle, the new
    /// key shares the default bucket, which only makes it slower, never faster. Zero keeps no
    /// keyed bucket: every key shares the default bucket.
    pub fn max_partitions(mut self, max: usize) -> Self {
        self.max_partitions = max;
        self
    }

    /// Keyed buckets currently held.
    pub fn partitions(&self) -> usize {
        self.keyed.len()
    }

    /// When the store's clock starts: its nanoseconds count from a second before it.
    pub(crate) fn base(&self) -> Instant {
        self.base
    }

    /// `now` on the store's clock, in nanoseconds.
    fn nanos_at(&self, now: Instant) -> u64 {
        // Offset by one second so that "now" is never zero and a fresh TAT of zero is in the
        // past.
        nanos(now.saturating_duration_since(self.base)).saturating_add(1_000_000_000)
    }

    /// The bucket of `key` (`None`: the default bucket), made when there is none. At the cap
    /// on keyed buckets, idle ones are dropped first; if none is idle, the key shares the
    /// default bucket.
    pub(crate) fn bucket(&self, key: Option<&PartitionKey>) -> Arc<Bucket> {
        self.keyed.get_or_shared(
            key,
            &self.default,
            self.max_partitions,
            |bucket| !bucket.is_idle(self.nanos_at(Instant::now())),
            |_| Bucket::default(),
        )
    }

    /// Whether `bucket` is full again with no view to remember.
    pub(crate) fn is_idle(&self, bucket: &Bucket) -> bool {
        bucket.is_idle(self.nanos_at(Instant::now()))
    }

    /// Runs `f` on the bucket of `key`, without a reference count for the default one.
    fn with_bucket<T>(&self, key: Option<&PartitionKey>, f: impl FnOnce(&Bucket) -> T) -> T {
        match key {
            None => f(&self.default),
            Some(_) => f(&self.bucket(key)),
        }
    }

    /// Reserves the next slot of `bucket` at `now`, if it comes within `max_wait`.
    pub(crate) fn acquire_in(
        &self,
        bucket: &Bucket,
        now: Instant,
        quota: &Quota,
        max_wait: Duration,
    ) -> Decision {
        Self::acquire_at(bucket, self.nanos_at(now), quota, nanos(max_wait))
    }

    /// Reserves the next slot of `bucket` at `now`, in the store's nanoseconds (see
    /// [`base`](Self::base)), if it comes within `max_wait` nanoseconds.
    pub(crate) fn acquire_at(bucket: &Bucket, now: u64, quota: &Quota, max_wait: u64) -> Decision {
        match bucket.acquire(now, cell(quota), max_wait) {
            Verdict::Reserved { wait: 0, .. } => Decision::Go,
            Verdict::Reserved { wait, tat } => Decision::Wait {
                wait: Duration::from_nanos(wait),
                reservation: Reservation(tat),
            },
            Verdict::Rejected { wait } => Decision::Reject {
                wait: Duration::from_nanos(wait),
            },
        }
    }

    /// Gives back to `bucket` a slot a dropped request did not use.
    pub(crate) fn release_in(&self, bucket: &Bucket, quota: &Quota, reservation: Reservation) {
        bucket.release(reservation.0, cell(quota));
    }

    /// Adopts `remaining` and `reset` into `bucket`.
    pub(crate) fn adopt_in(&self, bucket: &Bucket, remaining: u64, reset: Duration) {
        // Views that end within a second of each other describe the same window.
        bucket.adopt(
            self.nanos_at(Instant::now()),
            remaining,
            nanos(reset),
            1_000_000_000,
        );
    }

    /// Adopts one reply's report into `bucket`; see [`adopt_report`](Self::adopt_report).
    pub(crate) fn report_in(&self, bucket: &Bucket, report: WindowReport) -> bool {
        let report = Report {
            remaining: report.remaining,
            reset: nanos(report.reset),
            refused: report.refused,
            outstanding: report.outstanding,
        };
        bucket.report(self.nanos_at(Instant::now()), report, 1_000_000_000)
    }
}

pub(crate) fn cell(quota: &Quota) -> Cell {
    quota.cell()
}

impl BucketStore for LocalStore {
    fn acquire(&self, key: Option<&PartitionKey>, quota: &Quota, max_wait: Duration) -> Acquire {
        let now = Instant::now();
        Acquire::Ready(Ok(
            self.with_bucket(key, |b| self.acquire_in(b, now, quota, max_wait))
        ))
    }

    fn adopt(&self, key: Option<&PartitionKey>, _quota: &Quota, remaining: u64, reset: Duration) {
        self.with_bucket(key, |b| self.adopt_in(b, remaining, reset));
    }

    fn release(&self, key: Option<&PartitionKey>, quota: &Quota, reservation: Reservation) {
        self.with_bucket(key, |b| self.release_in(b, quota, reservation));
    }

    /// Takes each reply as the freshest word on the window: what is left is `remaining` less
    /// the requests outstanding, up or down from what the bucket counted (requests the server
    /// did not count come back; requests other clients sent are taken away). A served reply
    /// with nothing left pauses the bucket until the reset.
    ///
    /// A refusal on the count alone (`429`, `remaining: 0`, no `Retry-After`) while the
    /// bucket's view of the same window still has room is doubted: it pauses nothing and
    /// `false` is returned, so the caller treats it as that request's own refusal. Two in a
    /// row are doubted; the third is believed (a window used up by another client costs a
    /// couple of refusals), as is any refusal when the bucket has no view or its view has
    /// nothing left. A reply with room ends the run.
    fn adopt_report(
        &self,
        key: Option<&PartitionKey>,
        _quota: &Quota,
        report: WindowReport,
    ) -> bool {
        self.with_bucket(key, |b| self.report_in(b, report))
    }

    fn take_at_once(&self, key: Option<&PartitionKey>, quota: &Quota) -> bool {
        let now = Instant::now();
        self.with_bucket(key, |b| {
            matches!(self.acquire_in(b, now, quota, Duration::ZERO), Decision::Go)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_slot_at_once_is_taken_only_while_the_bucket_has_one_now() {
        let store = LocalStore::new();
        let quota = Quota::new(1, Duration::from_secs(1))
            .unwrap()
            .with_burst(2)
            .unwrap();
        let taken: Vec<bool> = (0..3).map(|_| store.take_at_once(None, &quota)).collect();
        assert_eq!(
            taken,
            [true, true, false],
            "the burst, then none without a wait"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(store.take_at_once(None, &quota), "one more a second later");
        assert!(!store.take_at_once(None, &quota));
    }
}
