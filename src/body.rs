//! The request body that can be sent again.
//!
//! Retrying a request means sending its body again, and most bodies can be read only once.
//! Layers that may send a request more than once (retry, dead letters) first read the body into
//! memory, up to a limit, with [`Buffer`], then send a [`ReplayBody`] on each attempt:
//!
//! - a body that fits the limit (a `Full<Bytes>`, an `Empty`, or a stream that ends in time) is
//!   kept as [`Bytes`] and replayed at the cost of a reference count;
//! - a body over the limit is sent once, whole: the part already read goes first, then the rest
//!   of the stream. It is never truncated, and the layer knows it cannot replay it.
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

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt};

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
        let rest = rest
            .map_frame(|frame| frame.map_data(|mut d| d.copy_to_bytes(d.remaining())))
            .map_err(Into::into)
            .boxed_unsync();
        ReplayBody(Replay::Streaming { prefix, rest })
    }

    /// The bytes of a buffered body; `None` for a body that is sent once.
    pub fn bytes(&self) -> Option<Bytes> {
        match &self.0 {
            Replay::Buffered { data, .. } => Some(data.clone().unwrap_or_default()),
            Replay::Streaming { .. } => None,
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Replay::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            Replay::Streaming { prefix, rest } => prefix.is_empty() && rest.is_end_stream(),
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
        }
    }
}

/// A body read into memory, or found to be too large for that.
#[derive(Debug)]
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
        }
    }

    /// Whether the body can be sent again (it was read whole into memory).
    pub fn is_replayable(&self) -> bool {
        matches!(self, Buffered::Complete { .. })
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
/// little more: its one chunk of bytes is taken over without copying.
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
