//! The per-upstream record: everything an [`Outbound`](super::Outbound) stack keeps about one
//! upstream, found once per call.
//!
//! A record holds the upstream's retry budget, circuit breaker, Retry-After gate, concurrency
//! limit and throttle bucket, taken once from the registries of the layers they belong to (so the layers' own
//! read-outs — `state_of`, `closed_for_upstream`, the stats — see the same state), and the
//! stack's settings. A call finds its record with one look-up and then touches nothing else
//! per upstream. Hedging and adaptive concurrency keep their per-upstream figures here too.
//!
//! Records are kept per upstream (scheme, host and port) or, with [`Scope::Global`], one for
//! every call; at most [`MAX_RECORDS`] per-upstream records, idle ones evicted first, the rest
//! sharing the global record. A record is made from the stack of its upstream's host when
//! the host was given one ([`Outbound::upstream`](super::Outbound::upstream)), else from the
//! stack's own: the hosts are compared then, once per upstream, never per call. An upstream
//! with a stack of its own that finds no room shares that stack's global record. Each record exists in one copy per shard (see
//! [`sync::shards`](crate::sync::shards)): a call clones its own thread's copy, so the
//! reference counts of calls on different cores never share a cache line.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use http::Uri;
use tokio::time::Instant;

use super::stack::Stack;
use super::upstream::Host;
use crate::circuit::Breaker;
use crate::concurrency::Limiter;
use crate::partition::{PartitionKey, Registry, Scope};
use crate::retry::Allowance;
use crate::retry_after::Gate;
use crate::sync::{shards, this_shard};
use crate::throttle::{nanos, Bucket};

/// The most per-upstream records a stack keeps.
pub(crate) const MAX_RECORDS: usize = 1024;

/// One upstream's state, and the stack's settings. Aligned to a cache line so that the
/// reference counts of the shard copies of one record never share one.
#[derive(Clone, Debug)]
#[repr(align(64))]
pub(crate) struct Record {
    pub(crate) stack: Arc<Stack>,
    /// The upstream (`None`: the global record).
    pub(crate) key: Option<PartitionKey>,
    pub(crate) budget: Option<Arc<Allowance>>,
    pub(crate) breaker: Option<Arc<Breaker>>,
    pub(crate) gate: Arc<Gate>,
    /// The upstream's limit on calls in flight.
    pub(crate) limiter: Option<Arc<Limiter>>,
    /// The throttle's bucket, when the throttle keeps its buckets in this process (a remote
    /// store is asked by key).
    pub(crate) bucket: Option<Arc<Bucket>>,
    /// The upstream's latencies and hedge budget, when the stack hedges.
    pub(crate) hedger: Option<Arc<crate::hedge::Hedger>>,
    /// The record's clock: a call reads the time once as nanoseconds since `epoch`, and the
    /// budget and the bucket, whose clocks started earlier, add their lag to it.
    pub(crate) epoch: Instant,
    pub(crate) budget_lag: u64,
    pub(crate) bucket_lag: u64,
    /// The lags of the hedger's budget and latencies, whose clocks started earlier.
    pub(crate) hedge_budget_lag: u64,
    pub(crate) hedge_lag: u64,
    /// The upstream's meters (feature `metrics`), shared by the record's shard copies; `None`
    /// for the global record, whose calls are metered by their own upstream.
    #[cfg(feature = "metrics")]
    pub(crate) meters: Option<Arc<crate::metrics::Meters>>,
}

impl Record {
    fn new(stack: &Arc<Stack>, key: Option<PartitionKey>) -> Self {
        let k = key.as_ref();
        #[cfg(feature = "metrics")]
        let meters = k.map(|key| Arc::new(crate::metrics::Meters::new(Some(key))));
        let local = stack.throttle.as_ref().and_then(|t| t.local.as_ref());
        let budget = stack.budget.as_ref().map(|budget| budget.allowance(k));
        let hedger = stack.hedge.as_ref().map(|hedge| hedge.hedger(k));
        let epoch = Instant::now();
        let lag = |base: Instant| nanos(epoch.saturating_duration_since(base));
        Record {
            budget_lag: budget.as_ref().map_or(0, |b| lag(b.base())),
            // The store counts from a second before its base (see `LocalStore`).
            bucket_lag: local.map_or(0, |l| lag(l.base()).saturating_add(1_000_000_000)),
            budget,
            breaker: stack.breaker.as_ref().map(|registry| registry.breaker(k)),
            gate: stack.gates.gate_of(k),
            limiter: stack.concurrency.as_ref().map(|limits| limits.limiter(k)),
            bucket: local.map(|local| local.bucket(k)),
            hedge_budget_lag: hedger.as_ref().map_or(0, |h| lag(h.budget_base())),
            hedge_lag: hedger.as_ref().map_or(0, |h| lag(h.base())),
            hedger,
            epoch,
            stack: stack.clone(),
            #[cfg(feature = "metrics")]
            meters,
            key,
        }
    }

    /// The instant `nanos` after the record's epoch.
    pub(crate) fn at(&self, nanos: u64) -> Instant {
        crate::handoff::instant_after(self.epoch, std::time::Duration::from_nanos(nanos))
    }

    /// `now` as nanoseconds since the record's epoch.
    pub(crate) fn since_epoch(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.epoch))
    }

    /// Whether nothing here is worth keeping: the breaker closed with no failure in its
    /// window, the gate open, no call in flight or in line under the limit, the bucket full
    /// again.
    fn is_idle(&self) -> bool {
        let stack = &*self.stack;
        self.breaker.as_ref().is_none_or(|b| b.is_idle())
            && self.limiter.as_ref().is_none_or(|l| l.is_idle())
            && stack.gates.is_open(&self.gate)
            && match (
                &self.bucket,
                stack.throttle.as_ref().and_then(|t| t.local.as_ref()),
            ) {
                (Some(bucket), Some(local)) => local.is_idle(bucket),
                _ => true,
            }
    }
}

/// A record in one copy per shard.
type Shards = Box<[Arc<Record>]>;

fn shards_of(record: Record) -> Shards {
    (0..shards()).map(|_| Arc::new(record.clone())).collect()
}

/// A host given a stack of its own, and that stack's global record, made when an upstream of
/// the host first finds no room among the records.
#[derive(Debug)]
struct Upstream {
    host: Host,
    stack: Arc<Stack>,
    global: OnceLock<Shards>,
}

/// The records of one stack.
#[derive(Debug)]
pub(crate) struct Records {
    pub(crate) stack: Arc<Stack>,
    /// Tells this registry from every other in the threads' caches (never reused).
    id: u64,
    /// Bumped whenever a record is evicted, so the caches stop handing it out.
    generation: AtomicU64,
    global: Shards,
    keyed: Registry<Shards>,
    /// The hosts with stacks of their own: those naming a port first.
    upstreams: Box<[Upstream]>,
}

impl Records {
    pub(crate) fn new(stack: Stack, upstreams: Vec<(Host, Stack)>) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(1);
        let stack = Arc::new(stack);
        let mut upstreams: Vec<Upstream> = upstreams
            .into_iter()
            .map(|(host, stack)| Upstream {
                host,
                stack: Arc::new(stack),
                global: OnceLock::new(),
            })
            .collect();
        // A host and port is preferred to the host alone (a stable sort keeps the given order
        // otherwise).
        upstreams.sort_by_key(|u| !u.host.has_port());
        Records {
            global: shards_of(Record::new(&stack, None)),
            stack,
            id: IDS.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
            keyed: Registry::default(),
            upstreams: upstreams.into_boxed_slice(),
        }
    }

    /// The host given a stack of its own that `key`'s upstream belongs to, if any.
    fn host_of(&self, key: &PartitionKey) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.host.matches(key))
    }

    /// The stack a record for `key` is made from.
    fn stack_of(&self, key: &PartitionKey) -> &Arc<Stack> {
        self.host_of(key).map_or(&self.stack, |u| &u.stack)
    }

    /// The record of `uri`'s upstream, this thread's copy.
    pub(crate) fn find(&self, uri: &Uri) -> Arc<Record> {
        let shard = this_shard();
        if self.stack.scope == Scope::Global {
            return self.global[shard % self.global.len()].clone();
        }
        let Some(authority) = uri.authority() else {
            return self.global[shard % self.global.len()].clone();
        };
        let scheme = uri.scheme_str().unwrap_or("");
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(record) = cached(self.id, generation, scheme, authority.as_str()) {
            return record;
        }
        let spelled = Spelled::of(scheme, authority.as_str());
        let shards = self.shards_of(uri);
        let record = match &shards {
            Some(shards) => shards[shard % shards.len()].clone(),
            None => {
                let global = self.overflow_of(uri);
                global[shard % global.len()].clone()
            }
        };
        // An authority with userinfo is never remembered: the cache holds no credential.
        if let (Some(spelled), Some(_), false) =
            (spelled, &shards, authority.as_str().contains('@'))
        {
            remember(self.id, generation, spelled, record.clone());
        }
        record
    }

    /// The shard copies of the record of `uri`'s upstream, made when there is none (`None`:
    /// the map is full of records worth keeping, and the upstream shares the global record).
    fn shards_of(&self, uri: &Uri) -> Option<Arc<Shards>> {
        crate::partition::upstream_of(uri).and_then(|key| {
            self.keyed.get_or_insert(
                &key,
                MAX_RECORDS,
                |record| {
                    let keep = !record[0].is_idle();
                    if !keep {
                        self.generation.fetch_add(1, Ordering::AcqRel);
                    }
                    keep
                },
                || shards_of(Record::new(self.stack_of(&key), Some(key.clone()))),
            )
        })
    }

    /// The record an upstream shares when there is no room for its own: the global record of
    /// its host's stack when the host was given one, else this stack's.
    fn overflow_of(&self, uri: &Uri) -> &Shards {
        let upstream = match self.upstreams.is_empty() {
            true => None,
            false => crate::partition::upstream_of(uri).and_then(|key| self.host_of(&key)),
        };
        match upstream {
            Some(u) => u
                .global
                .get_or_init(|| shards_of(Record::new(&u.stack, None))),
            None => &self.global,
        }
    }

    /// Per-upstream records held now.
    pub(crate) fn len(&self) -> usize {
        self.keyed.len()
    }
}

/// The longest `scheme` `\0` `authority` the caches remember; longer ones are looked up.
const SPELLED: usize = 96;

/// What a URI says of its upstream before normalising, as the caches compare it.
#[derive(Clone, Copy)]
struct Spelled {
    bytes: [u8; SPELLED],
    len: usize,
}

impl Spelled {
    fn of(scheme: &str, authority: &str) -> Option<Self> {
        let len = scheme.len() + 1 + authority.len();
        let mut bytes = [0u8; SPELLED];
        bytes
            .get_mut(..scheme.len())?
            .copy_from_slice(scheme.as_bytes());
        *bytes.get_mut(scheme.len())? = 0;
        bytes
            .get_mut(scheme.len() + 1..len)?
            .copy_from_slice(authority.as_bytes());
        Some(Spelled { bytes, len })
    }

    /// Whether this is how `scheme` and `authority` are spelled.
    fn is(&self, scheme: &str, authority: &str) -> bool {
        let bytes = self.bytes.get(..self.len).unwrap_or_default();
        bytes.len() == scheme.len() + 1 + authority.len()
            && bytes.get(..scheme.len()) == Some(scheme.as_bytes())
            && bytes.get(scheme.len() + 1..) == Some(authority.as_bytes())
    }
}

/// One remembered record of a thread.
struct Cached {
    owner: u64,
    generation: u64,
    spelled: Spelled,
    record: Arc<Record>,
}

/// How many records each thread remembers (a thread that calls a few upstreams, or through a
/// few stacks, finds each in its cache).
const CACHED: usize = 4;

struct Cache {
    entries: [Option<Cached>; CACHED],
    next: usize,
}

thread_local! {
    static CACHE: RefCell<Cache> = const {
        RefCell::new(Cache { entries: [const { None }; CACHED], next: 0 })
    };
}

fn cached(owner: u64, generation: u64, scheme: &str, authority: &str) -> Option<Arc<Record>> {
    CACHE
        .try_with(|cache| {
            let cache = cache.try_borrow().ok()?;
            cache.entries.iter().flatten().find_map(|entry| {
                (entry.owner == owner
                    && entry.generation == generation
                    && entry.spelled.is(scheme, authority))
                .then(|| entry.record.clone())
            })
        })
        .ok()
        .flatten()
}

fn remember(owner: u64, generation: u64, spelled: Spelled, record: Arc<Record>) {
    let _ = CACHE.try_with(|cache| {
        if let Ok(mut cache) = cache.try_borrow_mut() {
            let slot = cache.next % CACHED;
            cache.next = cache.next.wrapping_add(1);
            cache.entries[slot] = Some(Cached {
                owner,
                generation,
                spelled,
                record,
            });
        }
    });
}

/// Model checks (`--cfg tower_outbound_loom`, see `docs/reliability.md`).
#[cfg(all(test, tower_outbound_loom))]
mod loom_models {
    use super::*;
    use crate::{Outbound, ThrottleLayer};
    use loom::thread;

    fn records() -> Arc<Records> {
        let outbound = Outbound::new().throttle(Some(ThrottleLayer::new(
            10,
            std::time::Duration::from_secs(1),
        )));
        outbound.records_for_model()
    }

    /// Two calls to an upstream nobody called yet, at once: both end up with the same retry
    /// budget, breaker, gate and bucket, whichever makes the record.
    #[test]
    fn loom_two_first_calls_to_an_upstream_share_one_state() {
        loom::model(|| {
            let records = records();
            let uri: Uri = "http://a.example/x".parse().unwrap();
            let other = {
                let records = records.clone();
                let uri = uri.clone();
                thread::spawn(move || records.shards_of(&uri).expect("room for a record"))
            };
            let mine = records.shards_of(&uri).expect("room for a record");
            let theirs = other.join().unwrap();
            let (a, b) = (&mine[0], &theirs[0]);
            fn same<T>(x: &Option<Arc<T>>, y: &Option<Arc<T>>) -> bool {
                matches!((x, y), (Some(x), Some(y)) if Arc::ptr_eq(x, y))
            }
            assert!(same(&a.budget, &b.budget), "one retry budget");
            assert!(same(&a.breaker, &b.breaker), "one breaker");
            assert!(Arc::ptr_eq(&a.gate, &b.gate), "one gate");
            assert!(same(&a.bucket, &b.bucket), "one bucket");
            assert_eq!(records.len(), 1);
        });
    }
}

#[cfg(all(test, not(tower_outbound_loom)))]
mod tests {
    use super::*;
    use crate::{Outbound, RetryLayer};

    fn records() -> Records {
        let one = Outbound::new().retry(RetryLayer::new().max_attempts(1));
        let two = Outbound::new().retry(RetryLayer::new().max_attempts(2));
        Outbound::new()
            .upstream("api.example.com", one)
            .upstream("api.example.com:8443", two)
            .records()
    }

    fn attempts(record: &Record) -> u32 {
        record.stack.retry.max_attempts
    }

    #[test]
    fn a_record_is_made_from_its_hosts_stack_the_host_and_port_first() {
        let records = records();
        let find = |uri: &str| attempts(&records.find(&uri.parse().unwrap()));
        assert_eq!(find("https://API.example.com/x"), 1);
        assert_eq!(find("http://api.example.com:8080/"), 1);
        assert_eq!(find("https://api.example.com:8443/"), 2);
        assert_eq!(find("https://other.example.com/"), 4);
        assert_eq!(find("/relative"), 4, "no upstream: the global record");
    }

    #[test]
    fn an_upstream_with_no_room_shares_its_hosts_global_record() {
        let records = records();
        let overflow = |uri: &str| {
            let shards = records.overflow_of(&uri.parse().unwrap());
            (attempts(&shards[0]), shards[0].key.is_none())
        };
        assert_eq!(overflow("https://api.example.com/"), (1, true));
        assert_eq!(overflow("https://api.example.com:8443/"), (2, true));
        assert_eq!(overflow("https://other.example.com/"), (4, true));
        // Made once, then shared.
        let uri: Uri = "https://api.example.com/".parse().unwrap();
        assert!(std::ptr::eq(
            records.overflow_of(&uri),
            records.overflow_of(&uri)
        ));
    }
}
