//! A [`BucketStore`] in Redis, with a bounded fallback when Redis is away.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::bucket::{RedisBuckets, RedisDecision};
use super::lease::{self, Lease, Leases};
use crate::error::{Error, Kind};
use crate::partition::PartitionKey;
use crate::throttle::{Acquire, BucketStore, Decision, LocalStore, Quota, Reservation};

/// What a [`RedisStore`] does while Redis cannot be reached or answers too slowly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Go on with a bucket in this process at `rate / workers` (and `burst / workers`, at least
    /// 1 each), where `workers` is how many processes share the budget (taken as at least 1):
    /// together they stay within the budget without Redis.
    Local {
        /// Processes expected to share the budget.
        workers: u32,
    },
    /// The default: as [`Local`](Fallback::Local), with `workers` learned from Redis. Each
    /// store registers itself under its prefix with a heartbeat (see
    /// [`RedisStore::heartbeat`]); the count of live registrations last seen is the number of
    /// processes that share the budget. Until a count has been seen (Redis unreachable since
    /// the store started), the store fails closed: there is no safe share to take.
    Learned,
    /// Refuse requests (as [`Kind::Throttled`]) until Redis answers again.
    FailClosed,
}

/// Registers one store and counts the live ones: members of a sorted set scored by when
/// they expire, on the Redis clock.
///
/// KEYS[1] the set; ARGV the member, its time to live in ms. Returns the live members.
const REGISTER: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
";

/// Bounds of a store's durations: a call's timeout and the pause after a failure.
const MIN_WAIT: Duration = Duration::from_millis(1);
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Bounds of the heartbeat interval.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);
const MAX_HEARTBEAT: Duration = Duration::from_secs(60);
/// A registration lives this many heartbeats, so one late beat does not drop a worker.
const HEARTBEATS_PER_TTL: u32 = 3;

/// Counters of a [`RedisStore`]. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct RedisStoreStats {
    counters: Arc<[AtomicU64; 6]>,
}

impl RedisStoreStats {
    /// Acquires decided by Redis.
    pub fn redis_decisions(&self) -> u64 {
        self.counters[0].load(Ordering::Relaxed)
    }

    /// Acquires decided by the fallback while Redis was away.
    pub fn fallback_decisions(&self) -> u64 {
        self.counters[1].load(Ordering::Relaxed)
    }

    /// Redis calls that failed or timed out.
    pub fn errors(&self) -> u64 {
        self.counters[2].load(Ordering::Relaxed)
    }

    /// Processes sharing the budget at the last heartbeat Redis answered (this one included;
    /// 0 until one was answered).
    pub fn workers_seen(&self) -> u64 {
        self.counters[3].load(Ordering::Relaxed)
    }

    /// Lease round trips to Redis, granted or not (see [`RedisStore::lease`]).
    pub fn leases(&self) -> u64 {
        self.counters[4].load(Ordering::Relaxed)
    }

    /// Acquires decided from a lease this process held, with no round trip.
    pub fn leased_decisions(&self) -> u64 {
        self.counters[5].load(Ordering::Relaxed)
    }

    fn count(&self, index: usize) {
        self.counters[index].fetch_add(1, Ordering::Relaxed);
    }
}

/// Marks a reservation made by the local fallback, so its release goes there too.
const LOCAL: u64 = 1 << 63;
/// Marks a slot spent from a lease: a dropped waiter's slot passes unused (never looser).
const LEASED: u64 = 1 << 62;

/// Leasing's settings: the most slots per lease, and how far ahead a lease reaches.
#[derive(Clone, Copy, Debug)]
struct Leasing {
    max_slots: u32,
    horizon: Duration,
}

impl Leasing {
    /// The most slots one lease may hold under `quota`: `max_slots`, and no more than the
    /// bucket lets through in two horizons (at least 1; the size follows twice the process's
    /// rate over one). A lease's slots then come within two horizons of each other, so slots a
    /// process holds never reach far past what the server's count knew when they were
    /// granted: a slow bucket (a window of 100 per 5 s paces one slot every 50 ms) is leased a
    /// few slots at a time, a fast one in blocks.
    fn most(&self, quota: &Quota) -> u32 {
        let interval = quota.interval().as_nanos().max(1);
        let per_horizons =
            u32::try_from(self.horizon.as_nanos().saturating_mul(2) / interval).unwrap_or(u32::MAX);
        self.max_slots.min(per_horizons.max(1))
    }
}

struct Inner {
    buckets: RedisBuckets,
    prefix: String,
    timeout: Duration,
    retry_after: Duration,
    fallback: Fallback,
    local: LocalStore,
    // While set, Redis is not asked before this instant (it just failed).
    away_until: Mutex<Option<tokio::time::Instant>>,
    stats: RedisStoreStats,
    // This store's registration among the processes sharing the budget.
    member: String,
    heartbeat: Duration,
    register: Script,
    heartbeat_started: AtomicBool,
    /// Leasing, when on, and the leases this process holds.
    leasing: Option<Leasing>,
    leases: Mutex<Leases>,
    /// Acquires sent to Redis and not answered yet (every bucket's), and sent in all.
    acquiring: AtomicU64,
    acquires: AtomicU64,
}

/// Throttle buckets in Redis, shared by every process that uses the same Redis and prefix.
///
/// - One round trip per acquire: an atomic Lua script that reserves a GCRA slot by the Redis
///   server's `TIME`, so clock skew between machines cannot break the limit.
/// - Keys are `{prefix:partition}:tat` and `{prefix:partition}:view` (one hash slot per
///   bucket), and expire on their own once idle.
/// - The server's view (`RateLimit-Remaining`/`-Reset`, a 429's wait) that any worker sees is
///   written to the shared bucket, so one worker's `remaining: 0` holds all of them.
/// - Every Redis call has a timeout (default 100 ms). When Redis fails or is slow, the store
///   logs a warning, counts it, and uses its [`Fallback`] for a short while (default 1 s)
///   before asking Redis again; once Redis answers, sharing resumes. No call path waits on
///   Redis longer than the timeout.
/// - The default fallback, [`Fallback::Learned`], takes this process's share of the budget:
///   every store registers itself in Redis with a heartbeat (default every 1 s, kept 3 s), and
///   while Redis is away each one uses `budget / processes last seen`. N processes without
///   Redis therefore stay within the budget together, not N times over it.
/// - The acquire script runs on a multiplexed connection: concurrent acquires from many tasks
///   are pipelined on it, none waits for another's answer.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("fallback", &self.inner.fallback)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store over `url` (`redis://host:port/db`). The connection is made lazily and
    /// re-made by the connection manager when lost, so this succeeds while Redis is down; the
    /// fallback covers until it is up.
    pub fn open(url: &str) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(250)))
            .set_response_timeout(Some(Duration::from_millis(250)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self::new(manager))
    }

    /// A store over a connection (one server's [`ConnectionManager`], or a cluster's:
    /// see [`RedisConnection`](super::RedisConnection)).
    pub fn new(connection: impl Into<super::RedisConnection>) -> Self {
        RedisStore {
            inner: Arc::new(Inner {
                buckets: RedisBuckets::new(connection),
                prefix: "tower-outbound:throttle".to_owned(),
                timeout: Duration::from_millis(100),
                retry_after: Duration::from_secs(1),
                fallback: Fallback::Learned,
                local: LocalStore::new(),
                away_until: Mutex::new(None),
                stats: RedisStoreStats::default(),
                member: uuid::Builder::from_random_bytes(rand::RngExt::random(&mut rand::rng()))
                    .into_uuid()
                    .to_string(),
                heartbeat: Duration::from_secs(1),
                register: Script::new(REGISTER),
                heartbeat_started: AtomicBool::new(false),
                leasing: None,
                leases: Mutex::new(Leases::new()),
                acquiring: AtomicU64::new(0),
                acquires: AtomicU64::new(0),
            }),
        }
    }

    fn update(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            // Already shared: the changed store gets its own fallback state.
            Err(shared) => Inner {
                buckets: shared.buckets.clone(),
                prefix: shared.prefix.clone(),
                timeout: shared.timeout,
                retry_after: shared.retry_after,
                fallback: shared.fallback,
                local: LocalStore::new(),
                away_until: Mutex::new(None),
                stats: shared.stats.clone(),
                member: shared.member.clone(),
                heartbeat: shared.heartbeat,
                register: shared.register.clone(),
                heartbeat_started: AtomicBool::new(false),
                leasing: shared.leasing,
                leases: Mutex::new(Leases::new()),
                acquiring: AtomicU64::new(0),
                acquires: AtomicU64::new(0),
            },
        };
        f(&mut inner);
        RedisStore {
            inner: Arc::new(inner),
        }
    }

    /// The prefix of every key (default `tower-outbound:throttle`). Processes share a budget
    /// when they use the same prefix and partition.
    pub fn prefix(self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.update(|i| i.prefix = prefix)
    }

    /// The most a Redis call may take before the fallback decides (default 100 ms). Values
    /// are kept within 1 ms and 1 hour.
    pub fn timeout(self, timeout: Duration) -> Self {
        let timeout = timeout.clamp(MIN_WAIT, MAX_WAIT);
        self.update(|i| i.timeout = timeout)
    }

    /// What to do while Redis is away (default [`Fallback::Learned`]: this process's share of
    /// the budget, the number of processes learned from Redis).
    pub fn fallback(self, fallback: Fallback) -> Self {
        self.update(|i| i.fallback = fallback)
    }

    /// How long after a failure the store uses the fallback before asking Redis again
    /// (default 1 s). Values are kept within 1 ms and 1 hour.
    pub fn retry_after(self, wait: Duration) -> Self {
        let wait = wait.clamp(MIN_WAIT, MAX_WAIT);
        self.update(|i| i.retry_after = wait)
    }

    /// How often the store registers itself in Redis as one of the processes sharing the
    /// budget (default 1 s; kept within 50 ms and 60 s). A registration lives three
    /// heartbeats, so a process that stopped is no longer counted after that. The heartbeat
    /// starts with the first acquire, runs on the tokio runtime, and stops when the store and
    /// its clones are dropped.
    pub fn heartbeat(self, every: Duration) -> Self {
        let every = every.clamp(MIN_HEARTBEAT, MAX_HEARTBEAT);
        self.update(|i| i.heartbeat = every)
    }

    /// Takes up to `max_slots` slots of a bucket per round trip and spends them in this process
    /// (default 0: off, one round trip per acquire). A lease is a reservation of consecutive
    /// slots in the shared bucket, so the fleet still never goes faster than the bucket; its
    /// size follows this process's own rate (twice what it spent over the
    /// [`lease_horizon`](Self::lease_horizon), one when quiet), and a new one is asked for in
    /// the background once half is spent, so an acquire with a lease held answers at once. The
    /// server's view another process adopted reaches this one at its next lease: until then
    /// it may spend what it holds (the bound in docs/distributed.md). Values are kept within
    /// 0 and 10,000.
    pub fn lease(self, max_slots: u32) -> Self {
        self.update(|i| {
            let horizon = i.leasing.map_or(Duration::from_millis(100), |l| l.horizon);
            i.leasing = (max_slots > 1).then_some(Leasing {
                max_slots: max_slots.min(10_000),
                horizon,
            });
        })
    }

    /// How far ahead a lease reaches (default 100 ms): its slots come within this time of the
    /// grant. Values are kept within 1 ms and 10 s.
    pub fn lease_horizon(self, horizon: Duration) -> Self {
        let horizon = horizon.clamp(Duration::from_millis(1), Duration::from_secs(10));
        self.update(|i| {
            if let Some(leasing) = &mut i.leasing {
                leasing.horizon = horizon;
            }
        })
    }

    /// Gives back the unused slots of the leases this process holds, where no later
    /// reservation was made after them (call it before shutting down; a process that dies
    /// leaves them to pass with their time). Returns how many were given back.
    pub async fn return_leases(&self) -> u32 {
        let held: Vec<(String, Lease)> = {
            let mut leases = lock(&self.inner.leases);
            leases
                .iter_mut()
                .filter_map(|(key, held)| held.leases.pop_back().map(|l| (key.clone(), l)))
                .collect()
        };
        let mut given = 0;
        for (key, lease) in held {
            let (new_tat, unused) = lease.unused();
            if unused == 0 {
                continue;
            }
            let call = self
                .inner
                .buckets
                .give_back(&key, new_tat, unused, lease.interval());
            if let Ok(Ok(true)) = tokio::time::timeout(self.inner.timeout, call).await {
                given += unused;
            }
        }
        given
    }

    /// The store's counters.
    pub fn stats(&self) -> RedisStoreStats {
        self.inner.stats.clone()
    }

    /// A store over the Redis at `url` ([`connect`](super::connect): `redis://`,
    /// `redis://user:password@…`, `rediss://` with the `redis-tls` feature), checked before it
    /// is returned ([`verify`](Self::verify)): a Redis that does not answer, a refused
    /// password, a failed TLS handshake or a user without the permissions the store needs is a
    /// typed error now, not a fallback at the first request. The check runs on the default
    /// prefix's keys: a store given another [`prefix`](Self::prefix) under an ACL that limits
    /// keys calls [`verify`](Self::verify) again after it.
    ///
    /// # Errors
    ///
    /// A [`RedisSetupError`](super::RedisSetupError) saying which, without the password.
    pub async fn connect(url: &str) -> Result<Self, super::RedisSetupError> {
        let store = Self::new(super::connect(url)?);
        store.verify_at(url).await?;
        Ok(store)
    }

    /// A store over the Redis Cluster `nodes` belong to ([`connect_cluster`](super::connect_cluster)),
    /// checked as [`connect`](Self::connect) does (feature `redis-cluster`). A bucket's keys
    /// share one hash slot (`{prefix:partition}`), so each acquire is one script on the node
    /// that holds it.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    #[cfg(feature = "redis-cluster")]
    pub async fn cluster(nodes: &[&str]) -> Result<Self, super::RedisSetupError> {
        let store = Self::new(super::connect_cluster(nodes).await?);
        store
            .verify_at(nodes.first().copied().unwrap_or(""))
            .await?;
        Ok(store)
    }

    /// [`connect`](Self::connect) over TLS with `tls`'s CA and client certificate (feature
    /// `redis-tls`).
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    #[cfg(feature = "redis-tls")]
    pub async fn connect_tls(
        url: &str,
        tls: &super::RedisTls,
    ) -> Result<Self, super::RedisSetupError> {
        let store = Self::new(super::connect_tls(url, tls)?);
        store.verify_at(url).await?;
        Ok(store)
    }

    /// Checks that Redis answers and lets this connection do what the store does: load its
    /// scripts (`SCRIPT LOAD`), run them on keys under its [`prefix`](Self::prefix) (one
    /// acquire and one reply's report on a probe bucket, `{prefix:probe}`, whose keys expire on
    /// their own) and register in the heartbeat's set. Each step has the store's timeout, at least 1 s.
    ///
    /// # Errors
    ///
    /// A [`RedisSetupError`](super::RedisSetupError): [`NoPermission`](super::SetupErrorKind::NoPermission)
    /// names the command or key the ACL refused.
    pub async fn verify(&self) -> Result<(), super::RedisSetupError> {
        self.verify_at("").await
    }

    /// [`verify`](Self::verify), its errors naming the server of `url` (`""`: none).
    async fn verify_at(&self, url: &str) -> Result<(), super::RedisSetupError> {
        let inner = &*self.inner;
        let limit = inner.timeout.max(Duration::from_secs(1));
        let within = |what: &'static str| move |_| super::RedisSetupError::unreachable(url, what);
        let setup = |e: redis::RedisError| super::RedisSetupError::of(&e, url);
        tokio::time::timeout(limit, inner.buckets.load())
            .await
            .map_err(within("loading the scripts timed out"))?
            .map_err(setup)?;
        let probe = format!("{{{}:probe}}", inner.prefix);
        tokio::time::timeout(
            limit,
            inner.buckets.acquire_as(
                &probe,
                (Duration::from_micros(1), 1),
                Duration::ZERO,
                &inner.member,
            ),
        )
        .await
        .map_err(within("a probe acquire timed out"))?
        .map_err(setup)?;
        tokio::time::timeout(
            limit,
            inner.buckets.report(
                &probe,
                (1, Duration::from_millis(1)),
                Duration::ZERO,
                (&inner.member, 0),
            ),
        )
        .await
        .map_err(within("a probe report timed out"))?
        .map_err(setup)?;
        let mut connection = inner.buckets.connection();
        let mut invocation = inner.register.key(format!("{{{}}}:workers", inner.prefix));
        invocation.arg(&inner.member).arg(
            u64::try_from(
                inner
                    .heartbeat
                    .saturating_mul(HEARTBEATS_PER_TTL)
                    .as_millis(),
            )
            .unwrap_or(u64::MAX),
        );
        tokio::time::timeout(limit, invocation.invoke_async::<u64>(&mut connection))
            .await
            .map_err(within("registering for the heartbeat timed out"))?
            .map_err(setup)?;
        Ok(())
    }
}

impl RedisStore {
    /// An acquire with leasing on: a slot from a lease held here when there is one (and a
    /// renewal in the background once half of it is spent), else a lease asked for now.
    fn acquire_leased(
        &self,
        key: Option<&PartitionKey>,
        quota: &Quota,
        max_wait: Duration,
        leasing: Leasing,
    ) -> Acquire {
        let inner = &self.inner;
        let redis_key = inner.key(key);
        let now = tokio::time::Instant::now();
        {
            let mut leases = lock(&inner.leases);
            let held = lease::held_for(&mut leases, &redis_key, now);
            if let Some(at) = held.peek() {
                let wait = at.saturating_duration_since(now);
                if wait > max_wait {
                    return Acquire::Ready(Ok(Decision::Reject { wait }));
                }
                held.take();
                inner.stats.count(5);
                let renew = !held.renewing()
                    && held.left() <= held.renew_below()
                    && held.retry_at.is_none_or(|at| now >= at);
                if renew {
                    let size = held.next_size(now, leasing.horizon, leasing.most(quota));
                    held.ask(size);
                    // A renewal reaches the horizon from now, not past the slots held: a
                    // process that holds slots does not take the bucket's farther future from
                    // one that holds none (which asks as far as its wait allows).
                    let horizon = leasing.horizon;
                    let store = self.inner.clone();
                    let quota = *quota;
                    let key = redis_key.clone();
                    spawn(async move {
                        let granted = store.take_lease(&key, &quota, size, horizon).await;
                        let mut leases = lock(&store.leases);
                        let held = leases.entry(key).or_default();
                        held.answered();
                        match granted {
                            Some(Ok(lease)) => {
                                held.retry_at = None;
                                held.push(lease);
                            }
                            // Not enough within reach: ask again when there is.
                            Some(Err(ask_in)) => {
                                held.retry_at = Some(crate::handoff::instant_after(
                                    tokio::time::Instant::now(),
                                    ask_in,
                                ));
                            }
                            None => {}
                        }
                    });
                }
                return Acquire::Ready(Ok(leased(wait)));
            }
            // Redis said lately that no lease worth asking for is there before a time: refused
            // here, without another round trip, until then.
            if let Some(ask_at) = held.asked_too_soon(now) {
                return Acquire::Ready(Ok(Decision::Reject {
                    wait: ask_at
                        .saturating_duration_since(now)
                        .saturating_add(leasing.horizon.max(max_wait)),
                }));
            }
        }
        let inner = self.inner.clone();
        let key = key.cloned();
        let quota = *quota;
        Acquire::Pending(Box::pin(async move {
            // One lease asked for at a time per bucket: a call that finds one on its way waits
            // for it (as long as a Redis call may take) instead of asking for another.
            let deadline =
                crate::handoff::instant_after(tokio::time::Instant::now(), inner.timeout);
            loop {
                let (notified, size) = {
                    let mut leases = lock(&inner.leases);
                    let held = leases.entry(redis_key.clone()).or_default();
                    if let Some(at) = held.peek() {
                        let now = tokio::time::Instant::now();
                        let wait = at.saturating_duration_since(now);
                        if wait > max_wait {
                            return Ok(Decision::Reject { wait });
                        }
                        held.take();
                        inner.stats.count(5);
                        return Ok(leased(wait));
                    }
                    if held.renewing() {
                        // Registered before the lock is let go, so the lease's arrival wakes it.
                        let mut waiting = Box::pin(held.arrived.clone().notified_owned());
                        waiting.as_mut().enable();
                        (Some(waiting), 0)
                    } else {
                        let size = held.next_size(
                            tokio::time::Instant::now(),
                            leasing.horizon,
                            leasing.most(&quota),
                        );
                        held.ask(size);
                        (None, size)
                    }
                };
                if let Some(waiting) = notified {
                    if tokio::time::timeout_at(deadline, waiting).await.is_err() {
                        break;
                    }
                    continue;
                }
                let horizon = leasing.horizon.max(max_wait);
                let asking = Asking {
                    inner: &inner,
                    key: &redis_key,
                };
                let granted = inner.take_lease(&redis_key, &quota, size, horizon).await;
                std::mem::forget(asking);
                let mut leases = lock(&inner.leases);
                let held = leases.entry(redis_key.clone()).or_default();
                held.answered();
                match granted {
                    Some(Ok(lease)) => held.push(lease),
                    Some(Err(ask_in)) => {
                        let now = tokio::time::Instant::now();
                        // The other processes wait for the same moment: each takes a random
                        // place among their turns, so they do not all ask, and all but one be
                        // refused, at once.
                        let others = inner.stats.workers_seen().saturating_sub(1).min(64);
                        let turns = quota
                            .interval()
                            .saturating_mul(u32::try_from(others).unwrap_or(64))
                            .saturating_mul((size / 2).max(1));
                        let spread = u64::try_from(turns.as_micros()).unwrap_or(0);
                        let jitter = if spread > 0 {
                            rand::RngExt::random_range(&mut rand::rng(), 0..spread)
                        } else {
                            0
                        };
                        held.refused(crate::handoff::instant_after(
                            now,
                            ask_in.saturating_add(Duration::from_micros(jitter)),
                        ));
                        return Ok(Decision::Reject {
                            wait: ask_in.saturating_add(horizon),
                        });
                    }
                    None => break,
                }
            }
            // Redis did not answer in time: the fallback decides.
            inner.fallback(key.as_ref(), &quota, max_wait)
        }))
    }
}

/// A lease asked for by a call's own future. Dropped before the answer (the call was
/// cancelled), it marks the ask answered, so the calls waiting for it wake and the next one
/// asks again instead of waiting for a lease that will never arrive.
struct Asking<'a> {
    inner: &'a Inner,
    key: &'a str,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if let Some(held) = lock(&self.inner.leases).get_mut(self.key) {
            held.answered();
        }
    }
}

/// An acquire on its way to Redis, counted among this process's outstanding requests until
/// its answer arrives (or the call is dropped): Redis may have granted it already.
struct Acquiring<'a>(&'a AtomicU64);

impl<'a> Acquiring<'a> {
    fn new(inner: &'a Inner) -> Self {
        inner.acquires.fetch_add(1, Ordering::Relaxed);
        inner.acquiring.fetch_add(1, Ordering::Relaxed);
        Acquiring(&inner.acquiring)
    }
}

impl Drop for Acquiring<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The decision for a leased slot that may go after `wait`.
fn leased(wait: Duration) -> Decision {
    if wait.is_zero() {
        Decision::Go
    } else {
        Decision::Wait {
            wait,
            reservation: Reservation(LEASED),
        }
    }
}

impl Inner {
    /// A lease of up to `size` slots of bucket `key`, within `horizon`: `Err` with the wait
    /// for the first slot when none comes within it, `None` when Redis did not answer (it is
    /// then counted away).
    async fn take_lease(
        &self,
        key: &str,
        quota: &Quota,
        size: u32,
        horizon: Duration,
    ) -> Option<Result<Lease, Duration>> {
        // A lease of fewer than half the size is not worth a round trip: while the bucket's
        // future is full, processes take it in blocks instead of a few slots each.
        let least = (size / 2).max(1);
        let call = self.buckets.lease(
            key,
            quota.interval(),
            quota.burst(),
            (size, least),
            horizon,
            &self.member,
        );
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(granted)) => {
                self.stats.count(4);
                Some(if granted.slots > 0 {
                    Ok(Lease::new(
                        tokio::time::Instant::now(),
                        granted,
                        quota.interval(),
                        quota.burst(),
                    ))
                } else {
                    Err(Duration::from_micros(
                        u64::try_from(granted.tat.max(0)).unwrap_or(0),
                    ))
                })
            }
            Ok(Err(error)) => {
                self.went_away(&error);
                None
            }
            Err(_) => {
                self.went_away(&"timed out");
                None
            }
        }
    }

    fn key(&self, key: Option<&PartitionKey>) -> String {
        match key {
            Some(key) => format!("{{{}:{}}}", self.prefix, key),
            None => format!("{{{}:default}}", self.prefix),
        }
    }

    fn is_away(&self) -> bool {
        let mut away = self
            .away_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *away {
            Some(until) if tokio::time::Instant::now() < until => true,
            Some(_) => {
                *away = None;
                false
            }
            None => false,
        }
    }

    fn went_away(&self, error: &dyn fmt::Display) {
        self.stats.count(2);
        let mut away = self
            .away_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if away.is_none() {
            tracing::warn!(
                error = %error,
                fallback = ?self.fallback,
                "Redis throttle store unreachable or slow; using the fallback"
            );
        }
        let now = tokio::time::Instant::now();
        *away = Some(now.checked_add(self.retry_after).unwrap_or(now));
    }

    fn workers_seen(&self) -> u32 {
        u32::try_from(self.stats.workers_seen()).unwrap_or(u32::MAX)
    }

    fn fallback_quota(&self, quota: &Quota) -> Quota {
        let workers = match self.fallback {
            Fallback::Local { workers } => workers.max(1),
            Fallback::Learned => self.workers_seen().max(1),
            Fallback::FailClosed => 1,
        };
        Quota::new((quota.rate() / workers).max(1), quota.per())
            .and_then(|q| q.with_burst((quota.burst() / workers).max(1)))
            .unwrap_or(*quota)
    }

    fn fallback(
        &self,
        key: Option<&PartitionKey>,
        quota: &Quota,
        max_wait: Duration,
    ) -> Result<Decision, Error> {
        self.stats.count(1);
        match self.fallback {
            Fallback::FailClosed => Err(Error::with_source(
                Kind::Throttled {
                    wait: self.retry_after,
                },
                "the shared throttle store (Redis) is unreachable and the store fails closed",
            )),
            Fallback::Learned if self.workers_seen() == 0 => Err(Error::with_source(
                Kind::Throttled {
                    wait: self.retry_after,
                },
                "the shared throttle store (Redis) is unreachable and has not yet said how many \
                 processes share the budget, so this one takes no share",
            )),
            Fallback::Local { .. } | Fallback::Learned => {
                let quota = self.fallback_quota(quota);
                match self.local.acquire(key, &quota, max_wait) {
                    Acquire::Ready(Ok(Decision::Wait { wait, reservation })) => {
                        Ok(Decision::Wait {
                            wait,
                            reservation: Reservation(reservation.0 | LOCAL),
                        })
                    }
                    Acquire::Ready(decision) => decision,
                    Acquire::Pending(_) => Err(Error::new(Kind::Throttled { wait: max_wait })),
                }
            }
        }
    }
}

impl Inner {
    /// Registers this store and learns how many share the budget; a failure keeps the last
    /// count.
    async fn beat(&self) {
        let ttl = self.heartbeat.saturating_mul(HEARTBEATS_PER_TTL);
        let mut connection = self.buckets.connection();
        let mut invocation = self.register.key(format!("{{{}}}:workers", self.prefix));
        invocation
            .arg(&self.member)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let call = invocation.invoke_async::<u64>(&mut connection);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(count)) => self.stats.counters[3].store(count.max(1), Ordering::Relaxed),
            Ok(Err(error)) => tracing::debug!(%error, "throttle store heartbeat failed"),
            Err(_) => tracing::debug!("throttle store heartbeat timed out"),
        }
    }
}

/// Beats while the store lives.
async fn heartbeat(inner: Weak<Inner>) {
    loop {
        let Some(store) = inner.upgrade() else { return };
        let every = store.heartbeat;
        store.beat().await;
        drop(store);
        tokio::time::sleep(every).await;
    }
}

impl RedisStore {
    fn start_heartbeat(&self) {
        let inner = &self.inner;
        if !inner.heartbeat_started.load(Ordering::Relaxed)
            && !inner.heartbeat_started.swap(true, Ordering::Relaxed)
        {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(heartbeat(Arc::downgrade(inner)));
            } else {
                inner.heartbeat_started.store(false, Ordering::Relaxed);
            }
        }
    }
}

impl BucketStore for RedisStore {
    fn acquire(&self, key: Option<&PartitionKey>, quota: &Quota, max_wait: Duration) -> Acquire {
        self.start_heartbeat();
        let inner = &self.inner;
        if inner.is_away() {
            return Acquire::Ready(inner.fallback(key, quota, max_wait));
        }
        if let Some(leasing) = inner.leasing {
            return self.acquire_leased(key, quota, max_wait, leasing);
        }
        let inner = self.inner.clone();
        let key = key.cloned();
        let quota = *quota;
        Acquire::Pending(Box::pin(async move {
            let redis_key = inner.key(key.as_ref());
            let call = inner.buckets.acquire_as(
                &redis_key,
                (quota.interval(), quota.burst()),
                max_wait,
                &inner.member,
            );
            let acquiring = Acquiring::new(&inner);
            let answer = tokio::time::timeout(inner.timeout, call).await;
            drop(acquiring);
            match answer {
                Ok(Ok(decision)) => {
                    inner.stats.count(0);
                    Ok(match decision {
                        RedisDecision::Reserved { wait, .. } if wait.is_zero() => Decision::Go,
                        RedisDecision::Reserved { wait, tat_micros } => Decision::Wait {
                            wait,
                            reservation: Reservation(tat_micros),
                        },
                        RedisDecision::Rejected { wait } => Decision::Reject { wait },
                    })
                }
                Ok(Err(error)) => {
                    inner.went_away(&error);
                    inner.fallback(key.as_ref(), &quota, max_wait)
                }
                Err(_elapsed) => {
                    inner.went_away(&"timed out");
                    inner.fallback(key.as_ref(), &quota, max_wait)
                }
            }
        }))
    }

    fn adopt(&self, key: Option<&PartitionKey>, quota: &Quota, remaining: u64, reset: Duration) {
        // The fallback bucket learns it too, in case Redis goes away.
        self.inner
            .local
            .adopt(key, &self.inner.fallback_quota(quota), remaining, reset);
        if self.inner.is_away() {
            return;
        }
        let inner = self.inner.clone();
        let redis_key = inner.key(key);
        spawn(async move {
            let call = inner
                .buckets
                .adopt(&redis_key, remaining, reset, Duration::from_secs(1));
            match tokio::time::timeout(inner.timeout, call).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => inner.went_away(&error),
                Err(_) => inner.went_away(&"timed out"),
            }
        });
    }

    /// Adopts one reply's word into the shared bucket, with the requests the server may not
    /// have counted yet taken from what it says is left: not only this process's (requests
    /// outstanding, slots leased and not yet spent) but the whole fleet's, as each process
    /// last wrote its own into Redis with a reply of its own, and as Redis counted the slots it
    /// granted each since (a count stays fresh for 2 s, so a process that died stops
    /// counting). A reply that reports less than any earlier one of the same window replaces
    /// the count, up or down; one that does not only tightens it; `remaining: 0` pauses every
    /// process until the reset, as the in-process store's
    /// [`adopt_report`](LocalStore#method.adopt_report) does.
    ///
    /// A refusal on the count alone (`429`, `remaining: 0`, no `Retry-After`) is judged by this
    /// process's own view of the window, as the in-process store judges it: while its last
    /// reply said the window had room, two in a row are doubted (`false`: that request's own
    /// refusal, which pauses no process and is not written to Redis), the third is believed.
    /// A window the fleet used up shows in a served reply with nothing left before any
    /// refusal, and that pauses every process at once.
    fn adopt_report(
        &self,
        key: Option<&PartitionKey>,
        quota: &Quota,
        report: crate::throttle::WindowReport,
    ) -> bool {
        let inner = &self.inner;
        // The fallback bucket learns it too, in case Redis goes away. It is this process's own
        // view of the window, and says whether a refusal on the count alone is doubted: a
        // refusal it doubts is that request's own, and pauses no process.
        if !inner
            .local
            .adopt_report(key, &inner.fallback_quota(quota), report)
        {
            return false;
        }
        if inner.is_away() {
            return true;
        }
        let redis_key = inner.key(key);
        // This process's part, as of the reply: requests outstanding, slots held or on their
        // way. What it asks for between now and the report's send (a background task, which
        // may run after the next lease was asked for) is added there, so a grant Redis made in
        // between is not written over.
        let asked = |inner: &Inner, key: &str| {
            let leases = lock(&inner.leases);
            let held = leases.get(key);
            (
                held.map_or(0, |held| held.held_or_asked()),
                held.map_or(0, |held| held.asked),
                inner.acquires.load(Ordering::Relaxed),
            )
        };
        let (leased, asked_then, acquires_then) = asked(inner, &redis_key);
        let outstanding = report
            .outstanding
            .saturating_add(u64::from(leased))
            .saturating_add(inner.acquiring.load(Ordering::Relaxed));
        let inner = self.inner.clone();
        spawn(async move {
            let (_, asked_now, acquires_now) = asked(&inner, &redis_key);
            let outstanding = outstanding
                .saturating_add(asked_now.saturating_sub(asked_then))
                .saturating_add(acquires_now.saturating_sub(acquires_then));
            let call = inner.buckets.report(
                &redis_key,
                (report.remaining, report.reset),
                Duration::from_secs(1),
                (&inner.member, outstanding),
            );
            match tokio::time::timeout(inner.timeout, call).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => inner.went_away(&error),
                Err(_) => inner.went_away(&"timed out"),
            }
        });
        true
    }

    /// With leasing on, a slot of a lease this process holds when one is due now (counted as
    /// a leased decision); while Redis is away, a slot of the fallback bucket's share, as an
    /// acquire would take. Without leasing every slot is a round trip: none.
    fn take_at_once(&self, key: Option<&PartitionKey>, quota: &Quota) -> bool {
        let inner = &self.inner;
        if inner.leasing.is_none() {
            return false;
        }
        if inner.is_away() {
            return inner.local.take_at_once(key, &inner.fallback_quota(quota));
        }
        let now = tokio::time::Instant::now();
        let mut leases = lock(&inner.leases);
        let Some(held) = leases.get_mut(&inner.key(key)) else {
            return false;
        };
        if held.peek().is_none_or(|at| at > now) {
            return false;
        }
        held.take();
        inner.stats.count(5);
        true
    }

    fn release(&self, key: Option<&PartitionKey>, quota: &Quota, reservation: Reservation) {
        if reservation.0 & LEASED != 0 && reservation.0 & LOCAL == 0 {
            // A leased slot a dropped waiter did not use passes with its time.
            return;
        }
        if reservation.0 & LOCAL != 0 {
            let local = Reservation(reservation.0 & !LOCAL);
            self.inner
                .local
                .release(key, &self.inner.fallback_quota(quota), local);
            return;
        }
        let inner = self.inner.clone();
        let redis_key = inner.key(key);
        let interval = quota.interval();
        spawn(async move {
            let call = inner.buckets.release(&redis_key, reservation.0, interval);
            // A lost release only leaves one slot used: never looser than configured.
            let _ = tokio::time::timeout(inner.timeout, call).await;
        });
    }
}

/// Runs a background update when a runtime is there (a drop outside one skips it: the slot
/// stays used, which is safe).
/// Locks `mutex`, going on with its data if a holder panicked (each critical section leaves it
/// consistent).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn spawn(future: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(future);
    }
}
