//! The request body that can be sent again.
//!
//! Retrying a request means sending its body again, and most bodies can be read only once.
//! Layers that may send a request more than once (retry, dead letters) first read the body into
//! memory, up to a limit, with [`Buffer`], then send a [`ReplayBody`] on each attempt:
//!
//! - a body that fits the limit (a `Full<Bytes>`, an `Empty`, or a stream that ends in time) is
//!   kept as [`Bytes`] and replayed at the cost of a reference count;
//! - a body over the limit is sent once, whole: the part already read goes first, then the rest
//!   of the stream. It is never truncated, and the layer knows it cannot replay it;
//! - a body made by a [`BodySource`] ([`ReplayBody::from_fn`]) is never read into memory: each
//!   attempt asks the source for a new body (opens the file again, restarts the generator),
//!   so an upload of any size can be retried while only the chunks in flight are held.
//!
//! The service a layer wraps therefore takes `http::Request<ReplayBody>`, whatever body type the
//! caller used; for a hyper-util client that means building it with [`ReplayBody`] as its body
//! type. Layers stack without nesting: reading a `ReplayBody` that is already in memory takes its
//! bytes over as they are.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::BodyExt;
//! use tower_outbound::body::ReplayBody;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let body = ReplayBody::from_bytes(Bytes::from_static(b"hello"));
//! let bytes = body.collect().await.unwrap().to_bytes();
//! assert_eq!(bytes, "hello");
//! # }
//! ```

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt};

pub use crate::error::BodySourceError;
use crate::error::BoxError;

/// The default limit on how much of a request body is held in memory for replay: 1 MiB.
pub const DEFAULT_MAX_BUFFERED: usize = 1024 * 1024;

/// A request body as sent by the layers: either bytes held in memory, which can be sent any
/// number of times, or a stream that is sent once. See the [module docs](self).
///
/// It is small (48 bytes) because every attempt moves it through the layers and the client:
/// the rare trailers are boxed.
pub struct ReplayBody(Replay);

enum Replay {
    /// Bytes held in memory (and the trailers, if the original body had any).
    Buffered {
        /// The data, sent as one frame (`None` once sent, or for an empty body).
        data: Option<Bytes>,
        /// The trailers, sent after the data.
        trailers: Option<Box<HeaderMap>>,
    },
    /// A body sent once: the chunks already read, then the rest of the original stream.
    Streaming {
        /// Chunks already read from the original body, sent first.
        prefix: VecDeque<Bytes>,
        /// The rest of the original body.
        rest: UnsyncBoxBody<Bytes, BoxError>,
    },
    /// A body made by a source, for one attempt.
    Made(Box<Made>),
}

/// One attempt's body from a [`BodySource`]: the source, and how far its body has come.
struct Made {
    source: BodySource,
    state: MadeState,
    /// Bytes sent so far, checked against the source's declared length.
    sent: u64,
}

enum MadeState {
    /// The source has not been asked yet.
    Idle,
    /// The source is making the body.
    Opening(Opening),
    /// The body is being sent.
    Sending(UnsyncBoxBody<Bytes, BoxError>),
    /// The body ended, or failed.
    Done,
}

type Opening =
    Pin<Box<dyn Future<Output = Result<UnsyncBoxBody<Bytes, BoxError>, BoxError>> + Send>>;
type MakeBody = dyn Fn() -> Opening + Send + Sync;

/// How a request body is made again for each attempt: a file opened again, a generated stream
/// started over. A body from a source is never read into memory by the layers, so an upload
/// of any size can be retried (and held calls wait) while only the chunks in flight are held.
///
/// Build one with [`BodySource::new`] (or [`ReplayBody::from_fn`]), declare its length with
/// [`content_length`](Self::content_length) when it is known (a file's size: the request then carries a
/// `Content-Length`, and a body that comes out longer or shorter fails the attempt instead of
/// being sent wrong), and say how it can be made again outside the process with
/// [`describe`](Self::describe): a dead letter of the call keeps that description, since it
/// cannot keep the body. Clones share the source.
///
/// Hand the layers the [`ReplayBody`] itself: they recognise a source by that type, and a
/// body wrapped in another (`boxed_unsync()`) is read like any stream, so one over the buffer
/// limit is sent once. A source makes a body *replayable*; whether the call is retried is still
/// the retry policy's: a `POST` or `PATCH` only with an idempotency key ([`Outbound`] stamps
/// one), and within the attempt timeout and deadline, which include sending the body (raise
/// them for large uploads).
///
/// [`Outbound`]: crate::Outbound
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use tower_outbound::body::{BodySource, ReplayBody};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Stands in for `tokio::fs::File::open(path)` wrapped in a streaming body.
/// let source = BodySource::new(|| async {
///     Ok::<_, std::io::Error>(Full::new(Bytes::from_static(b"report.csv contents")))
/// })
/// .content_length(19)
/// .describe("file /var/exports/report.csv");
/// for _ in 0..2 {
///     // Each attempt gets a new body from the source.
///     let body = ReplayBody::from(source.clone());
///     assert_eq!(body.collect().await.unwrap().to_bytes(), "report.csv contents");
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct BodySource(Arc<Source>);

struct Source {
    make: Box<MakeBody>,
    len: Option<u64>,
    description: Option<String>,
}

impl BodySource {
    /// A source that makes each attempt's body by calling `make` and awaiting its future. An
    /// error from `make` (the file is gone) fails the attempt as a body error; the call is not
    /// retried on it.
    pub fn new<F, Fut, B, E>(make: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<B, E>> + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        E: Into<BoxError>,
    {
        let make = move || -> Opening {
            let made = make();
            Box::pin(async move {
                let body = made.await.map_err(Into::into)?;
                Ok(boxed(body))
            })
        };
        BodySource(Arc::new(Source {
            make: Box::new(make),
            len: None,
            description: None,
        }))
    }

    /// The exact length of every body the source makes, sent as `Content-Length` (default:
    /// unknown, sent chunked). An attempt whose body comes out longer or shorter fails with a
    /// body error.
    pub fn content_length(self, len: u64) -> Self {
        self.with(|s| s.len = Some(len))
    }

    /// How the body can be made again outside this process (a path, an object-store key), kept
    /// by the call's dead letter in place of the body (default: none; the letter then says the
    /// body cannot be made again from it). It is stored as given: put no secret in it.
    pub fn describe(self, description: impl Into<String>) -> Self {
        let description = description.into();
        self.with(|s| s.description = Some(description))
    }

    /// The declared length, if any.
    pub fn declared_length(&self) -> Option<u64> {
        self.0.len
    }

    /// The description given to [`describe`](Self::describe), if any.
    pub fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }

    fn with(self, change: impl FnOnce(&mut Source)) -> Self {
        match Arc::try_unwrap(self.0) {
            Ok(mut source) => {
                change(&mut source);
                BodySource(Arc::new(source))
            }
            // Shared already: the clones keep what they had; this one gets its own copy of
            // the settings around the same maker.
            Err(shared) => {
                let mut source = Source {
                    make: Box::new({
                        let shared = shared.clone();
                        move || (shared.make)()
                    }),
                    len: shared.len,
                    description: shared.description.clone(),
                };
                change(&mut source);
                BodySource(Arc::new(source))
            }
        }
    }
}

impl fmt::Debug for BodySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodySource")
            .field("len", &self.0.len)
            .field("description", &self.0.description)
            .finish_non_exhaustive()
    }
}

impl From<BodySource> for ReplayBody {
    fn from(source: BodySource) -> Self {
        ReplayBody(Replay::Made(Box::new(Made {
            source,
            state: MadeState::Idle,
            sent: 0,
        })))
    }
}

fn boxed<B>(body: B) -> UnsyncBoxBody<Bytes, BoxError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    body.map_frame(|frame| frame.map_data(|mut d| d.copy_to_bytes(d.remaining())))
        .map_err(Into::into)
        .boxed_unsync()
}

impl Made {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            match &mut self.state {
                MadeState::Idle => self.state = MadeState::Opening((self.source.0.make)()),
                MadeState::Opening(opening) => match ready!(opening.as_mut().poll(cx)) {
                    Ok(body) => self.state = MadeState::Sending(body),
                    Err(err) => {
                        self.state = MadeState::Done;
                        return Poll::Ready(Some(Err(Box::new(BodySourceError(err)))));
                    }
                },
                MadeState::Sending(body) => {
                    let frame = ready!(Pin::new(body).poll_frame(cx));
                    let declared = self.source.0.len;
                    match &frame {
                        Some(Ok(frame)) => {
                            let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                            self.sent = self.sent.saturating_add(len);
                            if declared.is_some_and(|declared| self.sent > declared) {
                                self.state = MadeState::Done;
                                return Poll::Ready(Some(Err(self.mismatch())));
                            }
                        }
                        Some(Err(_)) => self.state = MadeState::Done,
                        None => {
                            self.state = MadeState::Done;
                            if declared.is_some_and(|declared| self.sent != declared) {
                                return Poll::Ready(Some(Err(self.mismatch())));
                            }
                        }
                    }
                    return Poll::Ready(frame);
                }
                MadeState::Done => return Poll::Ready(None),
            }
        }
    }

    fn mismatch(&self) -> BoxError {
        let declared = self.source.0.len.unwrap_or_default();
        let made = if self.sent > declared {
            format!("it made more than the {declared} bytes it declared")
        } else {
            format!(
                "it made {} bytes, not the {declared} it declared",
                self.sent
            )
        };
        Box::new(BodySourceError(made.into()))
    }

    fn size_hint(&self) -> SizeHint {
        match (self.source.0.len, &self.state) {
            (Some(len), _) => SizeHint::with_exact(len.saturating_sub(self.sent)),
            (None, MadeState::Sending(body)) => body.size_hint(),
            (None, MadeState::Done) => SizeHint::with_exact(0),
            (None, _) => SizeHint::new(),
        }
    }
}

impl ReplayBody {
    /// A body of these bytes.
    pub fn from_bytes(data: Bytes) -> Self {
        ReplayBody(Replay::Buffered {
            data: (!data.is_empty()).then_some(data),
            trailers: None,
        })
    }

    /// The original body, sent once without being read first.
    pub fn once<B>(body: B) -> Self
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        Self::streaming(VecDeque::new(), body)
    }

    fn streaming<B>(prefix: VecDeque<Bytes>, rest: B) -> Self
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        ReplayBody(Replay::Streaming {
            prefix,
            rest: boxed(rest),
        })
    }

    /// A body made again for each attempt by `make`: shorthand for
    /// `BodySource::new(make).into()`. See [`BodySource`] to declare its length and say how
    /// a dead letter can have it made again.
    pub fn from_fn<F, Fut, B, E>(make: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<B, E>> + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        E: Into<BoxError>,
    {
        BodySource::new(make).into()
    }

    /// The bytes of a buffered body; `None` for a body that is sent once or made by a source.
    pub fn bytes(&self) -> Option<Bytes> {
        match &self.0 {
            Replay::Buffered { data, .. } => Some(data.clone().unwrap_or_default()),
            Replay::Streaming { .. } | Replay::Made(_) => None,
        }
    }

    /// Another copy of this body, when one can be had without reading it: bytes held in memory
    /// (a reference count), or a body source not started yet (a new body from the source).
    /// `None` for a stream, or a source-made body already being sent.
    pub fn try_clone(&self) -> Option<ReplayBody> {
        match &self.0 {
            Replay::Buffered { data, trailers } => Some(ReplayBody(Replay::Buffered {
                data: data.clone(),
                trailers: trailers.clone(),
            })),
            Replay::Made(made) if matches!(made.state, MadeState::Idle) => {
                Some(made.source.clone().into())
            }
            Replay::Streaming { .. } | Replay::Made(_) => None,
        }
    }

    /// The source that makes this body, when it is made by one.
    pub fn source(&self) -> Option<&BodySource> {
        match &self.0 {
            Replay::Made(made) => Some(&made.source),
            _ => None,
        }
    }
}

impl fmt::Debug for ReplayBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Replay::Buffered { data, .. } => f
                .debug_struct("ReplayBody::Buffered")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Replay::Streaming { prefix, .. } => f
                .debug_struct("ReplayBody::Streaming")
                .field("prefix_chunks", &prefix.len())
                .finish_non_exhaustive(),
            Replay::Made(made) => f
                .debug_struct("ReplayBody::Made")
                .field("source", &made.source)
                .field("sent", &made.sent)
                .finish(),
        }
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Replay::Buffered { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(*t))))
            }
            Replay::Streaming { prefix, rest } => {
                if let Some(chunk) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Pin::new(rest).poll_frame(cx)
            }
            Replay::Made(made) => made.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Replay::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            Replay::Streaming { prefix, rest } => prefix.is_empty() && rest.is_end_stream(),
            Replay::Made(made) => matches!(made.state, MadeState::Done),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Replay::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Replay::Streaming { prefix, rest } => {
                let read: u64 = prefix.iter().map(|c| c.len() as u64).sum();
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(read));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(read));
                }
                hint
            }
            Replay::Made(made) => made.size_hint(),
        }
    }
}

/// A body read into memory, found to be too large for that, or made by a source.
#[derive(Debug)]
#[non_exhaustive]
pub enum Buffered {
    /// The whole body, within the limit: replayable.
    Complete {
        /// All data frames, joined.
        data: Bytes,
        /// The trailers, if the body had any (boxed: they are rare, and this is moved often).
        trailers: Option<Box<HeaderMap>>,
    },
    /// The body went over the limit; it can be sent once, as a stream.
    TooLarge(ReplayBody),
    /// A too-large body that was already handed over: nothing is left to send.
    Sent,
    /// A body made by a source for each attempt: replayable, never held in memory.
    Source(BodySource),
}

impl Buffered {
    /// The body to send for one attempt. For a complete body this is a cheap copy, available
    /// any number of times. A body that was too large is handed over on the first call;
    /// every later call returns `None`, since nothing is left to send.
    pub fn take_attempt(&mut self) -> Option<ReplayBody> {
        match self {
            Buffered::Complete { data, trailers } => Some(ReplayBody(Replay::Buffered {
                data: (!data.is_empty()).then(|| data.clone()),
                trailers: trailers.clone(),
            })),
            Buffered::TooLarge(_) => match std::mem::replace(self, Buffered::Sent) {
                Buffered::TooLarge(body) => Some(body),
                _ => None,
            },
            Buffered::Sent => None,
            Buffered::Source(source) => Some(source.clone().into()),
        }
    }

    /// Whether the body can be sent again (it was read whole into memory, or a source makes
    /// it again).
    pub fn is_replayable(&self) -> bool {
        matches!(self, Buffered::Complete { .. } | Buffered::Source(_))
    }

    /// The bytes of a complete body.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            Buffered::Complete { data, .. } => Some(data),
            _ => None,
        }
    }
}

/// Reads a body into memory up to a limit. Resolves to [`Buffered`].
///
/// A body that is already a [`ReplayBody`] held in memory (because an outer layer read it) costs
/// little more: its one chunk of bytes is taken over without copying. A [`ReplayBody`] made by a
/// [`BodySource`] is not read at all: it resolves to [`Buffered::Source`].
///
/// The body must be `Unpin`, as hyper's `Incoming`, `Full`, `Empty`, `BoxBody` and
/// [`ReplayBody`] are; box a body that is not (`BodyExt::boxed_unsync`).
pub struct Buffer<B> {
    body: Option<B>,
    // The first chunk on its own: a one-chunk body (the common case) allocates nothing here.
    first: Option<Bytes>,
    more: VecDeque<Bytes>,
    len: usize,
    limit: usize,
}

impl<B> fmt::Debug for Buffer<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("read", &self.len)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<B> Buffer<B> {
    /// Starts reading `body`, holding at most `limit` bytes. Any limit is accepted: memory is
    /// taken as the body arrives, never reserved from a length the body claims.
    pub fn new(body: B, limit: usize) -> Self {
        Buffer {
            body: Some(body),
            first: None,
            more: VecDeque::new(),
            len: 0,
            limit,
        }
    }

    fn complete(&mut self, trailers: Option<Box<HeaderMap>>) -> Buffered {
        self.body = None;
        let data = match (self.first.take(), self.more.is_empty()) {
            (None, _) => Bytes::new(),
            (Some(only), true) => only,
            (Some(first), false) => {
                let mut joined = BytesMut::with_capacity(self.len);
                joined.extend_from_slice(&first);
                for chunk in self.more.drain(..) {
                    joined.extend_from_slice(&chunk);
                }
                joined.freeze()
            }
        };
        Buffered::Complete { data, trailers }
    }
}

impl<B> Future for Buffer<B>
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = Result<Buffered, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(source) = this.body.as_ref().and_then(source_of) {
            this.body = None;
            return Poll::Ready(Ok(Buffered::Source(source)));
        }
        loop {
            let Some(body) = this.body.as_mut() else {
                return Poll::Ready(Err("request body polled after it was read".into()));
            };
            if body.is_end_stream() {
                return Poll::Ready(Ok(this.complete(None)));
            }
            match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                None => return Poll::Ready(Ok(this.complete(None))),
                Some(Err(err)) => {
                    this.body = None;
                    return Poll::Ready(Err(err.into()));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        let chunk = data.copy_to_bytes(data.remaining());
                        this.len += chunk.len();
                        if !chunk.is_empty() {
                            if this.first.is_none() {
                                this.first = Some(chunk);
                            } else {
                                this.more.push_back(chunk);
                            }
                        }
                        if this.len > this.limit {
                            // Over the limit: hand everything over, to be sent once.
                            let mut prefix = std::mem::take(&mut this.more);
                            if let Some(first) = this.first.take() {
                                prefix.push_front(first);
                            }
                            return Poll::Ready(match this.body.take() {
                                Some(rest) => {
                                    Ok(Buffered::TooLarge(ReplayBody::streaming(prefix, rest)))
                                }
                                None => Err("request body polled after it was read".into()),
                            });
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            return Poll::Ready(Ok(this.complete(Some(Box::new(trailers)))));
                        }
                    }
                },
            }
        }
    }
}

/// The source of a body that is a [`ReplayBody`] made by one, not yet started.
fn source_of<B: Any>(body: &B) -> Option<BodySource> {
    let body: &dyn Any = body;
    match &body.downcast_ref::<ReplayBody>()?.0 {
        Replay::Made(made) if matches!(made.state, MadeState::Idle) => Some(made.source.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    /// A streaming body that yields its chunks one poll at a time.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    fn stream(chunks: &[&'static [u8]]) -> Chunks {
        Chunks(chunks.iter().map(|c| Bytes::from_static(c)).collect())
    }

    #[tokio::test]
    async fn a_full_body_is_taken_over_without_copying() {
        let original = Bytes::from_static(b"payload");
        let buffered = Buffer::new(Full::new(original.clone()), 16).await.unwrap();
        match buffered {
            Buffered::Complete { data, trailers } => {
                assert_eq!(data, original);
                assert_eq!(data.as_ptr(), original.as_ptr());
                assert!(trailers.is_none());
            }
            other => panic!("fits the limit: {other:?}"),
        }
    }

    #[test]
    fn a_replay_body_stays_small_to_move() {
        // Every attempt moves its request through each layer and the client.
        assert!(
            std::mem::size_of::<ReplayBody>() <= 56,
            "{}",
            std::mem::size_of::<ReplayBody>()
        );
    }

    #[tokio::test]
    async fn a_stream_within_the_limit_is_joined_and_replayable() {
        let mut buffered = Buffer::new(stream(&[b"ab", b"cd", b"ef"]), 6)
            .await
            .unwrap();
        for _ in 0..3 {
            let body = buffered.take_attempt().unwrap();
            assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdef");
        }
    }

    #[tokio::test]
    async fn a_stream_over_the_limit_is_sent_once_and_whole() {
        let mut buffered = Buffer::new(stream(&[b"abcd", b"efgh", b"ij"]), 5)
            .await
            .unwrap();
        assert!(matches!(buffered, Buffered::TooLarge(_)));
        let body = buffered.take_attempt().unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdefghij");
        assert!(!buffered.is_replayable());
        assert!(
            buffered.take_attempt().is_none(),
            "a spent stream is never replaced by an empty body"
        );
    }
}
