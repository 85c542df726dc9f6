//! A layer that may be left out of a stack, without boxing and with the crate's error type.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::error::{BoxError, Error};

/// Either a layer's service around the inner one, or the inner one alone.
///
/// Like `tower::util::Either`, but both sides answer with [`Error`], so a stack with optional
/// layers keeps its typed errors.
#[derive(Clone, Debug)]
pub enum Maybe<A, B> {
    /// The layer is in the stack.
    With(A),
    /// The layer was left out.
    Without(B),
}

impl<A, B, Request> Service<Request> for Maybe<A, B>
where
    A: Service<Request>,
    A::Error: Into<BoxError>,
    B: Service<Request, Response = A::Response>,
    B::Error: Into<BoxError>,
{
    type Response = A::Response;
    type Error = Error;
    type Future = MaybeFuture<A::Future, B::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match self {
            Maybe::With(a) => a.poll_ready(cx).map_err(|e| Error::from_box(e.into())),
            Maybe::Without(b) => b.poll_ready(cx).map_err(|e| Error::from_box(e.into())),
        }
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self {
            Maybe::With(a) => MaybeFuture::with(a.call(request)),
            Maybe::Without(b) => MaybeFuture::without(b.call(request)),
        }
    }
}

pin_project! {
    /// The response future of [`Maybe`].
    pub struct MaybeFuture<A, B> {
        #[pin]
        inner: Inner<A, B>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<A, B> {
        With { #[pin] future: A },
        Without { #[pin] future: B },
    }
}

impl<A, B> MaybeFuture<A, B> {
    fn with(future: A) -> Self {
        MaybeFuture {
            inner: Inner::With { future },
        }
    }

    fn without(future: B) -> Self {
        MaybeFuture {
            inner: Inner::Without { future },
        }
    }
}

impl<A, B> fmt::Debug for MaybeFuture<A, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.inner {
            Inner::With { .. } => "MaybeFuture::With",
            Inner::Without { .. } => "MaybeFuture::Without",
        })
    }
}

impl<A, B, T, EA, EB> Future for MaybeFuture<A, B>
where
    A: Future<Output = Result<T, EA>>,
    B: Future<Output = Result<T, EB>>,
    EA: Into<BoxError>,
    EB: Into<BoxError>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            InnerProj::With { future } => future
                .poll(cx)
                .map(|r| r.map_err(|e| Error::from_box(e.into()))),
            InnerProj::Without { future } => future
                .poll(cx)
                .map(|r| r.map_err(|e| Error::from_box(e.into()))),
        }
    }
}
