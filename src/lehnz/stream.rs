//! Streaming ingestion: records are packed into batches as they come from their source, at most
//! `concurrency` batches are outstanding, and progress is reported batch by batch.

use std::collections::VecDeque;
use std::fmt;
use std::task::{Context, Poll};

use http::Uri;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use super::batch::{Batch, Packer};
use super::error::LehnzError;
use super::model::Record;
use super::summary::{Outcome, Summary};

/// How many rejected records a streamed call lists in [`Summary::rejected`] by default; the
/// others are counted in [`Summary::rejected_unlisted`].
pub const DEFAULT_LISTED_REJECTIONS: usize = 10_000;

/// Where a streamed call stands, reported after each batch is settled.
///
/// Offsets are positions in the source, counted from the
/// [`start_offset`](IngestOptions::start_offset): the first record read has offset
/// `start_offset`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Every record below this offset is settled: accepted by Lehnz, held by the dead-letter
    /// sink, or rejected for good (too large, invalid: listed in [`Summary::rejected`]).
    /// Resuming from here sends nothing twice but the batches that were outstanding.
    pub settled: usize,
    /// Records read from the source so far (offset of the next one).
    pub read: usize,
    /// Records Lehnz accepted so far.
    pub accepted: usize,
    /// Records whose batch failed and that the dead-letter sink stored.
    pub dead_lettered: usize,
    /// Records not accepted so far (whatever the reason).
    pub rejected: usize,
    /// Requests sent so far (batches, not counting retries).
    pub requests: usize,
    /// Batches sent and not yet settled.
    pub in_flight: usize,
}

type ProgressFn<'a> = Box<dyn FnMut(&Progress) + Send + 'a>;

/// Options of a streamed call ([`Client::ingest_iter`](super::Client::ingest_iter),
/// [`Client::ingest_channel`](super::Client::ingest_channel)).
pub struct IngestOptions<'a> {
    pub(crate) start_offset: usize,
    pub(crate) listed_rejections: usize,
    pub(crate) on_progress: Option<ProgressFn<'a>>,
}

impl fmt::Debug for IngestOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngestOptions")
            .field("start_offset", &self.start_offset)
            .field("listed_rejections", &self.listed_rejections)
            .field("on_progress", &self.on_progress.is_some())
            .finish()
    }
}

impl Default for IngestOptions<'_> {
    fn default() -> Self {
        IngestOptions {
            start_offset: 0,
            listed_rejections: DEFAULT_LISTED_REJECTIONS,
            on_progress: None,
        }
    }
}

impl<'a> IngestOptions<'a> {
    /// The defaults: offsets from 0, up to [`DEFAULT_LISTED_REJECTIONS`] rejections listed,
    /// no progress callback.
    pub fn new() -> Self {
        Self::default()
    }

    /// The offset of the first record the source yields (default 0). A job that resumes
    /// after a checkpoint skips that many records of its source and passes the checkpoint
    /// here, so offsets, and the event ids derived from them, stay those of the first run.
    pub fn start_offset(mut self, offset: usize) -> Self {
        self.start_offset = offset;
        self
    }

    /// How many rejected records to list in [`Summary::rejected`] (default
    /// [`DEFAULT_LISTED_REJECTIONS`]); past that they are only counted, so a long outage
    /// does not grow memory.
    pub fn listed_rejections(mut self, max: usize) -> Self {
        self.listed_rejections = max;
        self
    }

    /// Called after each batch is settled, in source order. Write a checkpoint of
    /// [`Progress::settled`] here to resume later. The call is synchronous and holds up the
    /// next batch: keep it short.
    pub fn on_progress(mut self, callback: impl FnMut(&Progress) + Send + 'a) -> Self {
        self.on_progress = Some(Box::new(callback));
        self
    }
}

/// A source of records, polled as a stream.
pub(crate) trait Source {
    type Item;
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::Item>>;
}

/// An iterator as a source: always ready.
pub(crate) struct IterSource<I>(pub(crate) I);

impl<I: Iterator> Source for IterSource<I> {
    type Item = I::Item;
    fn poll_next(&mut self, _: &mut Context<'_>) -> Poll<Option<I::Item>> {
        Poll::Ready(self.0.next())
    }
}

/// A channel as a source: ends when every sender is dropped.
pub(crate) struct ChannelSource<T>(pub(crate) mpsc::Receiver<T>);

impl<T> Source for ChannelSource<T> {
    type Item = T;
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// A batch sent (or settled at once), in source order.
struct Slot {
    batch: Batch,
    outcome: Option<Outcome>,
}

/// What the streaming engine needs of a client: send one batch, say how many batches may be
/// outstanding, and say whether the circuit is open.
pub(crate) trait Sender: Clone + Send + Sync + 'static {
    /// Sends one batch of `sent` records and reads what became of it.
    fn send(&self, uri: Uri, body: Bytes, sent: usize) -> impl Future<Output = Outcome> + Send;
    /// Batches outstanding at most.
    fn concurrency(&self) -> usize;
    /// How long until the open circuit lets a probe through (`None`: it is not open).
    fn circuit_open_for(&self) -> Option<Duration>;
}

/// Packs records from `source` into batches and sends them through `client`, at most
/// `concurrency` batches outstanding (sent and not yet settled, in source order), pulling from
/// the source only when a batch may go. Memory holds the outstanding batches and the
/// summary's counters, nothing per record once its batch is settled.
pub(crate) async fn run_stream<C, S, T, F>(
    client: &C,
    mut source: S,
    uri: Uri,
    (max_records, max_bytes): (usize, usize),
    mut options: IngestOptions<'_>,
    mut prepare: F,
) -> Result<Summary, LehnzError>
where
    C: Sender,
    S: Source<Item = T>,
    T: Record,
    F: FnMut(usize, &mut T),
{
    let window = client.concurrency();
    let mut packer = Packer::new(options.start_offset, max_records, max_bytes);
    let mut ready: Vec<Batch> = Vec::new();
    let mut next_offset = options.start_offset;
    let mut exhausted = false;
    let mut slots: VecDeque<Slot> = VecDeque::with_capacity(window);
    // Sequence number of `slots[0]`; tasks report theirs.
    let mut front = 0usize;
    let mut tasks: JoinSet<(usize, Outcome)> = JoinSet::new();
    let mut summary = Summary {
        settled: options.start_offset,
        ..Summary::default()
    };
    let mut progress = Progress {
        settled: options.start_offset,
        read: options.start_offset,
        ..Progress::default()
    };

    // While the breaker is open: since when the source is paused, and until when.
    let mut paused_since: Option<Instant> = None;
    let mut paused_until: Option<Instant> = None;
    loop {
        // Fill the window, reading the source only as far as a batch needs, and not at all
        // while the circuit is open: the batches would only wait or fail (backpressure,
        // not dead letters).
        while slots.len() < window {
            let open_for = client.circuit_open_for();
            if let Some(wait) = open_for {
                let now = Instant::now();
                if paused_since.is_none() {
                    tracing::info!(
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        in_flight = tasks.len(),
                        "lehnz: circuit open, source paused until the next probe"
                    );
                    paused_since = Some(now);
                }
                paused_until = Some(now.checked_add(wait).unwrap_or(now));
                break;
            }
            if let Some(since) = paused_since.take() {
                summary.paused = summary.paused.saturating_add(since.elapsed());
            }
            paused_until = None;
            if ready.is_empty() {
                if exhausted {
                    break;
                }
                match std::future::poll_fn(|cx| source.poll_next(cx)).await {
                    Some(mut record) => {
                        prepare(next_offset, &mut record);
                        next_offset = next_offset.saturating_add(1);
                        packer.push(&record, &mut ready);
                    }
                    None => {
                        exhausted = true;
                        ready.extend(packer.finish());
                    }
                }
                continue;
            }
            let batch = ready.remove(0);
            let seq = front.wrapping_add(slots.len());
            let outcome = match batch.body.clone() {
                Some(body) => {
                    let (client, uri, sent) = (client.clone(), uri.clone(), batch.len());
                    tasks.spawn(async move { (seq, client.send(uri, body, sent).await) });
                    summary.requests += 1;
                    None
                }
                // Every record of the range was refused before sending.
                None => Some(Outcome {
                    result: Ok(0),
                    stored: None,
                }),
            };
            slots.push_back(Slot { batch, outcome });
        }
        progress.read = next_offset;
        progress.requests = summary.requests;

        // Settle, in source order, what is done.
        while slots.front().is_some_and(|slot| slot.outcome.is_some()) {
            let Some(Slot {
                batch,
                outcome: Some(outcome),
            }) = slots.pop_front()
            else {
                break;
            };
            front = front.wrapping_add(1);
            summary.record(batch, outcome, options.listed_rejections)?;
            progress.settled = summary.settled;
            progress.accepted = summary.accepted;
            progress.dead_lettered = summary.dead_lettered;
            progress.rejected = summary.rejected.len() + summary.rejected_unlisted;
            progress.in_flight = tasks.len();
            if let Some(callback) = options.on_progress.as_mut() {
                callback(&progress);
            }
        }
        if slots.is_empty() && exhausted && ready.is_empty() {
            break;
        }
        // Every slot not done has its task: with none running, the window has room (or
        // the source is paused, and the pause ends first).
        let joined = match paused_until {
            Some(until) if tasks.is_empty() => {
                tokio::time::sleep_until(until).await;
                continue;
            }
            Some(until) => tokio::select! {
                joined = tasks.join_next() => joined,
                () = tokio::time::sleep_until(until) => continue,
            },
            None => tasks.join_next().await,
        };
        match joined {
            Some(Ok((seq, outcome))) => {
                if let Some(slot) = slots.get_mut(seq.wrapping_sub(front)) {
                    slot.outcome = Some(outcome);
                }
            }
            Some(Err(err)) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            // The set is owned here and never aborted: cancellation cannot happen.
            Some(Err(_)) | None => {}
        }
    }
    if let Some(since) = paused_since {
        summary.paused = summary.paused.saturating_add(since.elapsed());
    }
    summary.rejected.sort_by_key(|r| r.index);
    Ok(summary)
}
