//! Dead letters written, failed to store and removed, and the depth and age of every sink.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use metrics::SharedString;

use super::names;
use crate::dead_letter::{BoxFuture, DeadLetter, Sink, SinkError};

/// No letter: the oldest timestamp is unknown.
const EMPTY: u64 = u64::MAX;

/// A [`Sink`] that meters the sink it wraps, under a `sink` label:
///
/// - `outbound_dead_letters_written_total{sink}`, `outbound_dead_letters_write_failures_total{sink}`
///   and `outbound_dead_letters_removed_total{sink}` (removed: replayed and delivered, or
///   superseded by a newer record of the same call);
/// - `outbound_dead_letters_depth{sink}`, `outbound_dead_letters_oldest_timestamp_seconds{sink}`
///   (Unix time of the oldest letter's first attempt; 0 when empty) and
///   `outbound_dead_letters_oldest_age_seconds{sink}`.
///
/// The gauges are kept up to date incrementally on every write; a remove, a read, or the first
/// write reads the sink once ([`Sink::read_all`]) to learn the exact depth and oldest letter,
/// and so does a sink made on a tokio runtime, at once. Call
/// [`refresh`](Self::refresh) on a timer for a sink other processes also write to (a Redis
/// stream), or [`refresh_every`](Self::refresh_every) to have it done.
/// Prefer the timestamp gauge in alerts: `time() - outbound_dead_letters_oldest_timestamp_seconds`
/// is right at every scrape, while the age gauge is as old as the last refresh.
///
/// Clones share the gauges' state.
///
/// # Example
///
/// ```
/// use tower_outbound::metrics::MeteredSink;
/// use tower_outbound::{DeadLetterLayer, MemorySink};
///
/// let layer = DeadLetterLayer::new(MeteredSink::new(MemorySink::new()).name("orders"));
/// # let _ = layer;
/// ```
#[derive(Debug)]
pub struct MeteredSink<S> {
    inner: Arc<S>,
    state: Arc<State>,
}

impl<S> Clone for MeteredSink<S> {
    fn clone(&self) -> Self {
        MeteredSink {
            inner: self.inner.clone(),
            state: self.state.clone(),
        }
    }
}

#[derive(Debug)]
struct State {
    name: SharedString,
    known: AtomicBool,
    depth: AtomicU64,
    oldest_ms: AtomicU64,
}

/// The last metered sink made under each name, for [`Signals`](super::Signals): its series
/// outlive it in the recorder, so its figures stay in the report too.
static SINKS: Mutex<BTreeMap<String, Arc<State>>> = Mutex::new(BTreeMap::new());

impl<S: Sink> MeteredSink<S> {
    /// Meters `sink` under the label `sink="default"`.
    pub fn new(sink: S) -> Self {
        MeteredSink::named(sink, SharedString::const_str("default"))
    }

    fn named(inner: S, name: SharedString) -> Self {
        let inner = Arc::new(inner);
        let state = State::register(name);
        spawn_refresh(&inner, &state);
        MeteredSink { inner, state }
    }

    /// The value of the `sink` label (default `default`), to tell several sinks apart.
    pub fn name(self, name: impl Into<String>) -> Self {
        {
            // The state made under the old name goes from the report.
            let mut sinks = SINKS.lock().unwrap_or_else(PoisonError::into_inner);
            let old = self.state.name.to_string();
            if sinks.get(&old).is_some_and(|s| Arc::ptr_eq(s, &self.state)) {
                sinks.remove(&old);
            }
        }
        let state = State::register(SharedString::from_owned(name.into()));
        spawn_refresh(&self.inner, &state);
        MeteredSink {
            inner: self.inner,
            state,
        }
    }

    /// The sink it wraps.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Reads the sink once to learn its depth and oldest letter, and publishes the gauges.
    pub async fn refresh(&self) -> Result<(), SinkError> {
        refresh(&*self.inner, &self.state).await
    }

    /// Refreshes the gauges every `period` (at least a second) on the current tokio runtime,
    /// for a sink that other processes write to too (a Redis stream): each refresh is one read
    /// of the sink. The task stops when every clone of this sink is dropped.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn refresh_every(self, period: std::time::Duration) -> Self {
        let period = period.max(std::time::Duration::from_secs(1));
        let sink = Arc::downgrade(&self.inner);
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(sink) = sink.upgrade() else { return };
                if let Err(err) = refresh(&*sink, &state).await {
                    tracing::warn!(error = %err, "could not read the dead-letter sink to publish its depth");
                }
            }
        });
        self
    }

    /// Letters kept, as last counted (0 before the first write or refresh).
    pub fn depth(&self) -> u64 {
        self.state.depth.load(Ordering::Relaxed)
    }
}

async fn refresh<S: Sink>(sink: &S, state: &State) -> Result<(), SinkError> {
    let letters = sink.read_all().await?;
    state.learn(&letters);
    Ok(())
}

/// On a runtime, publishes the depth of what the sink already holds (a backlog from an earlier
/// run, or nothing) at once: an empty queue shows 0, not a missing series.
fn spawn_refresh<S: Sink>(sink: &Arc<S>, state: &Arc<State>) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        let (sink, state) = (sink.clone(), state.clone());
        handle.spawn(async move {
            if let Err(err) = refresh(&*sink, &state).await {
                tracing::warn!(error = %err, "could not read the dead-letter sink to publish its depth");
            }
        });
    }
}

impl State {
    fn register(name: SharedString) -> Arc<State> {
        let state = Arc::new(State {
            name,
            known: AtomicBool::new(false),
            depth: AtomicU64::new(0),
            oldest_ms: AtomicU64::new(EMPTY),
        });
        SINKS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(state.name.to_string(), state.clone());
        state
    }

    /// Depth and oldest letter from every letter the sink holds, published.
    fn learn(&self, letters: &[DeadLetter]) {
        let oldest = letters
            .iter()
            .map(|l| l.first_attempt_at_ms)
            .min()
            .unwrap_or(EMPTY);
        let depth = u64::try_from(letters.len()).unwrap_or(u64::MAX);
        self.depth.store(depth, Ordering::Relaxed);
        self.oldest_ms.store(oldest, Ordering::Relaxed);
        self.known.store(true, Ordering::Relaxed);
        self.publish();
    }

    fn label(&self) -> SharedString {
        self.name.clone()
    }

    fn publish(&self) {
        let depth = self.depth.load(Ordering::Relaxed);
        let oldest = self.oldest_ms.load(Ordering::Relaxed);
        metrics::gauge!(names::DEAD_LETTERS_DEPTH, "sink" => self.label()).set(depth as f64);
        let (timestamp, age) = match oldest {
            EMPTY => (0.0, 0.0),
            ms => (ms as f64 / 1000.0, age_seconds(ms)),
        };
        metrics::gauge!(names::DEAD_LETTERS_OLDEST_TIMESTAMP, "sink" => self.label())
            .set(timestamp);
        metrics::gauge!(names::DEAD_LETTERS_OLDEST_AGE, "sink" => self.label()).set(age);
    }

    pub(crate) fn snapshot(&self) -> (String, u64, Option<f64>) {
        let oldest = self.oldest_ms.load(Ordering::Relaxed);
        (
            self.name.to_string(),
            self.depth.load(Ordering::Relaxed),
            (oldest != EMPTY).then(|| age_seconds(oldest)),
        )
    }
}

/// Seconds from `ms` (Unix milliseconds) to now; 0 for a time in the future.
fn age_seconds(ms: u64) -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    now.saturating_sub(ms) as f64 / 1000.0
}

/// The depth and oldest age of every metered sink: `(name, depth, age in seconds)`.
pub(crate) fn all() -> Vec<(String, u64, Option<f64>)> {
    let sinks = SINKS.lock().unwrap_or_else(PoisonError::into_inner);
    sinks
        .values()
        .filter(|s| s.known.load(Ordering::Relaxed))
        .map(|s| s.snapshot())
        .collect()
}

impl<S: Sink> Sink for MeteredSink<S> {
    fn write(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let first_attempt_ms = letter.first_attempt_at_ms;
            let state = &*self.state;
            match self.inner.write(letter).await {
                Ok(()) => {
                    metrics::counter!(names::DEAD_LETTERS_WRITTEN, "sink" => state.label())
                        .increment(1);
                    if state.known.load(Ordering::Relaxed) {
                        state.depth.fetch_add(1, Ordering::Relaxed);
                        state
                            .oldest_ms
                            .fetch_min(first_attempt_ms, Ordering::Relaxed);
                        state.publish();
                    } else if let Err(err) = refresh(&*self.inner, state).await {
                        tracing::warn!(error = %err, "could not read the dead-letter sink to publish its depth");
                    }
                    Ok(())
                }
                Err(err) => {
                    metrics::counter!(names::DEAD_LETTERS_WRITE_FAILURES, "sink" => state.label())
                        .increment(1);
                    Err(err)
                }
            }
        })
    }

    fn read_all(&self) -> BoxFuture<'_, Result<Vec<DeadLetter>, SinkError>> {
        Box::pin(async move {
            let letters = self.inner.read_all().await?;
            // A read (a replay, a report) publishes the depth too, so an empty sink shows 0
            // rather than no series at all.
            self.state.learn(&letters);
            Ok(letters)
        })
    }

    fn remove<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<usize, SinkError>> {
        Box::pin(async move {
            let removed = self.inner.remove(ids).await?;
            if removed > 0 {
                metrics::counter!(names::DEAD_LETTERS_REMOVED, "sink" => self.state.label())
                    .increment(u64::try_from(removed).unwrap_or(u64::MAX));
                if let Err(err) = refresh(&*self.inner, &self.state).await {
                    tracing::warn!(error = %err, "could not read the dead-letter sink to publish its depth");
                }
            }
            Ok(removed)
        })
    }

    fn count(&self) -> BoxFuture<'_, Result<usize, SinkError>> {
        self.inner.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemorySink;

    fn letter(id: &str, first_attempt_at_ms: u64) -> DeadLetter {
        let json = format!(
            r#"{{"version":1,"id":"{id}","method":"GET","uri":"http://x/","headers":[],"body":null,"body_kept":false,"outcome":{{"kind":"transport"}},"attempts":1,"waited_ms":0,"first_attempt_at_ms":{first_attempt_at_ms},"last_attempt_at_ms":{first_attempt_at_ms}}}"#
        );
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_sink_written_by_others_is_read_again_on_a_timer() {
        let shared = MemorySink::new();
        let sink = MeteredSink::new(shared.clone())
            .name("unit-timer")
            .refresh_every(std::time::Duration::from_secs(5));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert_eq!(sink.depth(), 0);
        // Another process (here: another handle) writes behind the metered sink's back.
        shared.write(letter("x", 1_000)).await.unwrap();
        shared.write(letter("y", 2_000)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        assert_eq!(sink.depth(), 2);
    }

    #[tokio::test]
    async fn depth_and_oldest_follow_writes_and_removes() {
        let sink = MeteredSink::new(MemorySink::new()).name("unit-depth");
        sink.write(letter("b", 2_000)).await.unwrap();
        sink.write(letter("a", 1_000)).await.unwrap();
        sink.write(letter("c", 3_000)).await.unwrap();
        assert_eq!(sink.depth(), 3);
        assert_eq!(sink.state.oldest_ms.load(Ordering::Relaxed), 1_000);
        assert_eq!(sink.remove(&["a".to_owned()]).await.unwrap(), 1);
        assert_eq!(sink.depth(), 2);
        assert_eq!(sink.state.oldest_ms.load(Ordering::Relaxed), 2_000);
        sink.remove(&["b".to_owned(), "c".to_owned()])
            .await
            .unwrap();
        assert_eq!(sink.depth(), 0);
        let row = all().into_iter().find(|(name, ..)| name == "unit-depth");
        assert_eq!(row, Some(("unit-depth".to_owned(), 0, None)));
    }
}
