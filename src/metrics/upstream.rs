//! The `upstream` label and the meters of each upstream, registered once and reused.
//!
//! One process has one recorder, so the table of upstreams is one for the process too: every
//! stack that records into it shares the cap on distinct upstreams. Handles are registered
//! with the recorder on first use and kept; when the recorder changes (an exporter installed
//! after the first calls), the table registers them again with the new one.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwapOption;

use http::{Method, Uri};
use metrics::{Counter, Gauge, Histogram, SharedString};

use super::names;
use crate::partition::{KeyHash, PartitionKey};

/// The label shared by the upstreams past the cap.
pub(crate) const OTHER: &str = "other";
/// The label of requests without an authority (a relative URI).
pub(crate) const NONE: &str = "none";

static MAX_UPSTREAMS: AtomicUsize = AtomicUsize::new(super::DEFAULT_MAX_UPSTREAMS);
/// Read on every call without a lock; replaced whole (under `WRITER`) when an upstream is
/// first seen or the recorder changes.
static TABLE: ArcSwapOption<Table> = ArcSwapOption::const_empty();
static WRITER: Mutex<()> = Mutex::new(());

pub(crate) fn set_max_upstreams(max: usize) {
    MAX_UPSTREAMS.store(max, Ordering::Relaxed);
}

/// The methods with a label of their own; any other is `other`.
pub(crate) const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "other",
];

pub(crate) fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::PATCH => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// How a logical call ended, as the `outcome` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    Success = 0,
    SuccessAfterRetry = 1,
    Failed = 2,
    Refused = 3,
}

pub(crate) const OUTCOMES: [&str; 4] = ["success", "success_after_retry", "failed", "refused"];

/// Why an attempt ended as it did, as the `reason` label says it.
pub(crate) const REASONS: [&str; 8] = [
    "ok",
    "429",
    "5xx",
    "4xx",
    "timeout",
    "transport",
    "refused",
    "body",
];

/// What refused a call before it reached the upstream, as the `kind` label says it.
pub(crate) const REFUSALS: [&str; 4] = ["throttle", "gate", "circuit", "concurrency"];

/// What became of a hedge, as the `result` label says it.
pub(crate) const HEDGES: [&str; 4] = ["sent", "won", "refused_budget", "refused_state"];

/// The counts kept for [`Signals`](super::Signals): they survive a change of recorder.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) calls: [AtomicU64; 4],
    pub(crate) attempts: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) retried_calls: AtomicU64,
    pub(crate) circuit: AtomicU8,
    pub(crate) circuit_known: AtomicU8,
    /// The concurrency limit's figures (limit, in flight, queued), once a limit reported.
    pub(crate) concurrency: [std::sync::atomic::AtomicU32; 3],
    pub(crate) concurrency_known: AtomicU8,
}

/// One upstream's label, counts and meter handles.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// The recorder its handles were registered with.
    recorder: usize,
    pub(crate) label: SharedString,
    pub(crate) counts: Arc<Counts>,
    calls: [[OnceLock<Counter>; 4]; 10],
    call_duration: OnceLock<Histogram>,
    retry_wait: OnceLock<Histogram>,
    retries: OnceLock<Counter>,
    retried_calls: OnceLock<Counter>,
    attempts: [OnceLock<Counter>; 8],
    attempt_duration: OnceLock<Histogram>,
    refusals: [OnceLock<Counter>; 4],
    circuit_state: OnceLock<Gauge>,
    replayed: [OnceLock<Counter>; 2],
    /// The concurrency limit's gauges: limit, in flight, queued.
    concurrency: [OnceLock<Gauge>; 3],
    hedges: [OnceLock<Counter>; 4],
}

impl Upstream {
    fn new(recorder: usize, label: SharedString, counts: Arc<Counts>) -> Self {
        Upstream {
            recorder,
            label,
            counts,
            calls: Default::default(),
            call_duration: OnceLock::new(),
            retry_wait: OnceLock::new(),
            retries: OnceLock::new(),
            retried_calls: OnceLock::new(),
            attempts: Default::default(),
            attempt_duration: OnceLock::new(),
            refusals: Default::default(),
            circuit_state: OnceLock::new(),
            replayed: Default::default(),
            concurrency: Default::default(),
            hedges: Default::default(),
        }
    }

    /// One hedge event (an index of [`HEDGES`]).
    pub(crate) fn hedge(&self, result: usize) {
        if let Some(label) = HEDGES.get(result) {
            self.hedges[result]
                .get_or_init(|| {
                    metrics::counter!(names::HEDGES, "upstream" => self.label(), "result" => *label)
                })
                .increment(1);
        }
    }

    fn label(&self) -> SharedString {
        self.label.clone()
    }

    pub(crate) fn call(&self, method: usize, outcome: CallOutcome, seconds: f64) {
        let outcome = outcome as usize;
        self.counts.calls[outcome].fetch_add(1, Ordering::Relaxed);
        self.calls[method][outcome]
            .get_or_init(|| {
                metrics::counter!(names::CALLS, "upstream" => self.label(), "method" => METHODS[method], "outcome" => OUTCOMES[outcome])
            })
            .increment(1);
        self.call_duration
            .get_or_init(|| metrics::histogram!(names::CALL_DURATION, "upstream" => self.label()))
            .record(seconds);
    }

    pub(crate) fn retries(&self, retries: u64) {
        self.counts.retries.fetch_add(retries, Ordering::Relaxed);
        self.retries
            .get_or_init(|| metrics::counter!(names::RETRIES, "upstream" => self.label()))
            .increment(retries);
        self.counts.retried_calls.fetch_add(1, Ordering::Relaxed);
        self.retried_calls
            .get_or_init(|| metrics::counter!(names::RETRIED_CALLS, "upstream" => self.label()))
            .increment(1);
    }

    pub(crate) fn retry_wait(&self, seconds: f64) {
        self.retry_wait
            .get_or_init(|| metrics::histogram!(names::RETRY_WAIT, "upstream" => self.label()))
            .record(seconds);
    }

    pub(crate) fn attempt(&self, reason: usize, seconds: f64) {
        self.counts.attempts.fetch_add(1, Ordering::Relaxed);
        self.attempts[reason]
            .get_or_init(|| {
                metrics::counter!(names::ATTEMPTS, "upstream" => self.label(), "reason" => REASONS[reason])
            })
            .increment(1);
        self.attempt_duration
            .get_or_init(
                || metrics::histogram!(names::ATTEMPT_DURATION, "upstream" => self.label()),
            )
            .record(seconds);
    }

    pub(crate) fn refusal(&self, kind: usize) {
        self.refusals[kind]
            .get_or_init(|| {
                metrics::counter!(names::REFUSALS, "upstream" => self.label(), "kind" => REFUSALS[kind])
            })
            .increment(1);
    }

    pub(crate) fn replayed(&self, delivered: bool) {
        let index = usize::from(!delivered);
        self.replayed[index]
            .get_or_init(|| {
                let outcome = if delivered { "delivered" } else { "failed" };
                metrics::counter!(names::DEAD_LETTERS_REPLAYED, "upstream" => self.label(), "outcome" => outcome)
            })
            .increment(1);
    }

    /// Whether its handles were registered with the recorder in use.
    pub(crate) fn is_current(&self) -> bool {
        self.recorder == recorder_id()
    }

    /// Sets the concurrency limit's gauges.
    pub(crate) fn concurrency(&self, limit: u32, in_flight: u32, queued: u32) {
        let names = [
            names::CONCURRENCY_LIMIT,
            names::IN_FLIGHT,
            names::CONCURRENCY_QUEUED,
        ];
        for (count, value) in self
            .counts
            .concurrency
            .iter()
            .zip([limit, in_flight, queued])
        {
            count.store(value, Ordering::Relaxed);
        }
        self.counts.concurrency_known.store(1, Ordering::Relaxed);
        for ((gauge, name), value) in self
            .concurrency
            .iter()
            .zip(names)
            .zip([limit, in_flight, queued])
        {
            gauge
                .get_or_init(|| metrics::gauge!(name, "upstream" => self.label()))
                .set(f64::from(value));
        }
    }

    /// Sets the breaker gauge (0 closed, 1 half-open, 2 open).
    pub(crate) fn circuit_state(&self, value: u8) {
        self.counts.circuit.store(value, Ordering::Relaxed);
        self.counts.circuit_known.store(1, Ordering::Relaxed);
        self.circuit_state
            .get_or_init(|| metrics::gauge!(names::CIRCUIT_STATE, "upstream" => self.label()))
            .set(f64::from(value));
    }
}

#[derive(Clone)]
struct Table {
    recorder: usize,
    /// Keyed by the partition key, whose hash is computed once when it is made.
    upstreams: HashMap<PartitionKey, Arc<Upstream>, BuildHasherDefault<KeyHash>>,
    other: Arc<Upstream>,
    none: Arc<Upstream>,
}

impl Table {
    fn new(recorder: usize, previous: Option<&Table>) -> Table {
        let renew = |u: &Arc<Upstream>| {
            Arc::new(Upstream::new(recorder, u.label.clone(), u.counts.clone()))
        };
        match previous {
            Some(old) => Table {
                recorder,
                upstreams: old
                    .upstreams
                    .iter()
                    .map(|(k, u)| (k.clone(), renew(u)))
                    .collect(),
                other: renew(&old.other),
                none: renew(&old.none),
            },
            None => Table {
                recorder,
                upstreams: HashMap::default(),
                other: Arc::new(Upstream::new(
                    recorder,
                    SharedString::const_str(OTHER),
                    Arc::default(),
                )),
                none: Arc::new(Upstream::new(
                    recorder,
                    SharedString::const_str(NONE),
                    Arc::default(),
                )),
            },
        }
    }

    fn get(&self, key: Option<&PartitionKey>) -> Option<&Arc<Upstream>> {
        match key {
            None => Some(&self.none),
            Some(key) => self.upstreams.get(key).or((self.upstreams.len()
                >= MAX_UPSTREAMS.load(Ordering::Relaxed))
            .then_some(&self.other)),
        }
    }
}

/// An identity for the recorder in use: handles registered with one are no use with another.
fn recorder_id() -> usize {
    metrics::with_recorder(|recorder| {
        (recorder as *const dyn metrics::Recorder)
            .cast::<()>()
            .addr()
    })
}

/// The meters of the upstream of `uri` (`scheme://host:port`, the key the partitions use,
/// found without allocating), or of `other` past the cap.
pub(crate) fn of(uri: &Uri) -> Arc<Upstream> {
    lookup(crate::partition::upstream_of(uri).as_ref())
}

/// The meters of the upstream of `key` (`None`: calls with no upstream).
pub(crate) fn of_partition(key: Option<&PartitionKey>) -> Arc<Upstream> {
    lookup(key)
}

fn lookup(key: Option<&PartitionKey>) -> Arc<Upstream> {
    let recorder = recorder_id();
    if let Some(table) = TABLE.load().as_ref().filter(|t| t.recorder == recorder) {
        if let Some(upstream) = table.get(key) {
            return upstream.clone();
        }
    }
    let _writer = WRITER.lock().unwrap_or_else(PoisonError::into_inner);
    let current = TABLE.load_full();
    let mut table = match current.as_deref() {
        Some(table) if table.recorder == recorder => table.clone(),
        previous => Table::new(recorder, previous),
    };
    let upstream = match table.get(key) {
        Some(upstream) => upstream.clone(),
        None => {
            // `get` answered `None`: a new key under the cap (a `None` key is never new).
            let key = key.cloned().unwrap_or_else(|| PartitionKey::from(NONE));
            let label = String::from_utf8_lossy(key.as_bytes());
            let upstream = Arc::new(Upstream::new(
                recorder,
                SharedString::from_shared(Arc::<str>::from(label.as_ref())),
                Arc::default(),
            ));
            table.upstreams.insert(key, upstream.clone());
            upstream
        }
    };
    TABLE.store(Some(Arc::new(table)));
    upstream
}

/// One upstream's meters as a per-upstream record keeps them: found once, when the record is
/// made. After a change of recorder (an exporter installed after the first calls) they are
/// looked up again on each use.
#[derive(Debug)]
pub(crate) struct Meters {
    key: Option<PartitionKey>,
    kept: Arc<Upstream>,
}

impl Meters {
    /// The meters of the upstream `key` (`None`: requests without an authority).
    pub(crate) fn new(key: Option<&PartitionKey>) -> Self {
        Meters {
            key: key.cloned(),
            kept: lookup(key),
        }
    }

    /// The meters, registered with the recorder in use.
    pub(crate) fn get(&self) -> MetersRef<'_> {
        if self.kept.recorder == recorder_id() {
            MetersRef::Kept(&self.kept)
        } else {
            MetersRef::Found(lookup(self.key.as_ref()))
        }
    }
}

/// The meters [`Meters::get`] found.
pub(crate) enum MetersRef<'a> {
    Kept(&'a Upstream),
    Found(Arc<Upstream>),
}

impl std::ops::Deref for MetersRef<'_> {
    type Target = Upstream;

    fn deref(&self) -> &Upstream {
        match self {
            MetersRef::Kept(upstream) => upstream,
            MetersRef::Found(upstream) => upstream,
        }
    }
}

/// The meters of an upstream named by its key (`scheme://host:port`), as a breaker's partition
/// key names it.
pub(crate) fn of_key(key: Option<&str>) -> Arc<Upstream> {
    match key.and_then(|k| k.parse::<Uri>().ok()) {
        Some(uri) => of(&uri),
        None => of(&Uri::from_static("/")),
    }
}

/// Every upstream seen, with its counts, for a [`Signals`](super::Signals) snapshot.
pub(crate) fn all() -> Vec<(String, Arc<Counts>)> {
    let table = TABLE.load();
    let Some(table) = table.as_ref() else {
        return Vec::new();
    };
    let mut all: Vec<_> = table
        .upstreams
        .values()
        .chain([&table.other, &table.none])
        .filter(|u| {
            u.counts.attempts.load(Ordering::Relaxed) > 0
                || u.counts.circuit_known.load(Ordering::Relaxed) > 0
                || u.counts.calls.iter().any(|c| c.load(Ordering::Relaxed) > 0)
        })
        .map(|u| (u.label.to_string(), u.counts.clone()))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_is_the_partition_key() {
        for uri in [
            "https://API.example.com/v1?x=1",
            "http://127.0.0.1:8080/",
            "http://bob:secret@h.example/",
            "ftp://files.example/",
            &format!("https://{}.example/", "a".repeat(200)),
        ] {
            let uri: Uri = uri.parse().unwrap();
            let key = crate::partition::upstream_of(&uri);
            assert_eq!(
                key.as_ref()
                    .map(|k| String::from_utf8_lossy(k.as_bytes()).into_owned()),
                crate::partition::upstream_key(&uri)
            );
        }
    }
}
