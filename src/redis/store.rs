//! A [`BucketStore`] in Redis, with a bounded fallback when Redis is away.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::bucket::{RedisBuckets, RedisDecision};
use crate::error::{Error, Kind};
use crate::partition::PartitionKey;
use crate::throttle::{Acquire, BucketStore, Decision, LocalStore, Quota, Reservation};

/// What a [`RedisStore`] does while Redis cannot be reached or answers too slowly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Go on with a bucket in this process at `rate / workers` (and `burst / workers`, at least
    /// 1 each), where `workers` is how many processes share the budget: together they stay
    /// within the budget without Redis (the default, with 1 worker until told).
    Local {
        /// Processes expected to share the budget.
        workers: u32,
    },
    /// Refuse requests (as [`Kind::Throttled`]) until Redis answers again.
    FailClosed,
}

/// Counters of a [`RedisStore`]. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct RedisStoreStats {
    counters: Arc<[AtomicU64; 3]>,
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

    fn count(&self, index: usize) {
        self.counters[index].fetch_add(1, Ordering::Relaxed);
    }
}

/// Marks a reservation made by the local fallback, so its release goes there too.
const LOCAL: u64 = 1 << 63;

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

    /// A store over an existing connection manager.
    pub fn new(connection: ConnectionManager) -> Self {
        RedisStore {
            inner: Arc::new(Inner {
                buckets: RedisBuckets::new(connection),
                prefix: "tower-outbound:throttle".to_owned(),
                timeout: Duration::from_millis(100),
                retry_after: Duration::from_secs(1),
                fallback: Fallback::Local { workers: 1 },
                local: LocalStore::new(),
                away_until: Mutex::new(None),
                stats: RedisStoreStats::default(),
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

    /// The most a Redis call may take before the fallback decides (default 100 ms).
    pub fn timeout(self, timeout: Duration) -> Self {
        self.update(|i| i.timeout = timeout)
    }

    /// What to do while Redis is away (default [`Fallback::Local`] with 1 worker: set the
    /// number of processes that share the budget).
    pub fn fallback(self, fallback: Fallback) -> Self {
        self.update(|i| i.fallback = fallback)
    }

    /// How long after a failure the store uses the fallback before asking Redis again
    /// (default 1 s).
    pub fn retry_after(self, wait: Duration) -> Self {
        self.update(|i| i.retry_after = wait)
    }

    /// The store's counters.
    pub fn stats(&self) -> RedisStoreStats {
        self.inner.stats.clone()
    }
}

impl Inner {
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
        *away = Some(tokio::time::Instant::now() + self.retry_after);
    }

    fn fallback_quota(&self, quota: &Quota) -> Quota {
        let workers = match self.fallback {
            Fallback::Local { workers } => workers.max(1),
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
            Fallback::Local { .. } => {
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

impl BucketStore for RedisStore {
    fn acquire(&self, key: Option<&PartitionKey>, quota: &Quota, max_wait: Duration) -> Acquire {
        let inner = &self.inner;
        if inner.is_away() {
            return Acquire::Ready(inner.fallback(key, quota, max_wait));
        }
        let inner = self.inner.clone();
        let key = key.cloned();
        let quota = *quota;
        Acquire::Pending(Box::pin(async move {
            let redis_key = inner.key(key.as_ref());
            let call = inner
                .buckets
                .acquire(&redis_key, quota.interval(), quota.burst(), max_wait);
            match tokio::time::timeout(inner.timeout, call).await {
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

    fn release(&self, key: Option<&PartitionKey>, quota: &Quota, reservation: Reservation) {
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
fn spawn(future: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(future);
    }
}
