//! Idempotency keys on writes, the same key on every retry of one logical call.
//!
//! Servers that support idempotency keys (Stripe, Adyen, PayPal, the IETF
//! `Idempotency-Key` draft) remember the outcome of a write under its key and answer a repeat
//! with the same outcome instead of doing it again. [`IdempotencyKeyLayer`] adds
//! `Idempotency-Key: <random UUID v4>` to every POST and PATCH that does not already carry one.
//!
//! Place it **outside** [`RetryLayer`](crate::RetryLayer): it then runs once per logical call,
//! every attempt of that call carries the same key, and the retry layer, seeing the key, knows
//! the write is safe to repeat. Inside the retry layer it would make a new key per attempt,
//! which defeats the purpose.
//!
//! The header name, the methods and the key generator are configurable (some APIs use
//! `Idempotency-Token` or `X-Idempotency-Key`). A key the caller set is never replaced.
//!
//! tower-http's `SetRequestId` is close, but it applies to every method and stores the value as
//! a request-id extension, which would mix the two up in a stack that also sets request ids.
//!
//! # Example
//!
//! ```
//! use http::{Method, Request, Response};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_outbound::IdempotencyKeyLayer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let upstream = tower::service_fn(|req: Request<()>| async move {
//!     let key = req.headers().get("idempotency-key").cloned();
//!     Ok::<_, std::convert::Infallible>(Response::new(key))
//! });
//! let mut client = ServiceBuilder::new()
//!     .layer(IdempotencyKeyLayer::new())
//!     .service(upstream);
//!
//! let post = Request::post("http://api.example.com/charges").body(()).unwrap();
//! let key = client.ready().await.unwrap().call(post).await.unwrap().into_body().unwrap();
//! assert_eq!(key.len(), 36); // a UUID v4, hyphenated
//!
//! let get = Request::get("http://api.example.com/charges").body(()).unwrap();
//! assert!(client.ready().await.unwrap().call(get).await.unwrap().into_body().is_none());
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Method, Request};
use rand::RngExt;
use tower_layer::Layer;
use tower_service::Service;

/// Makes idempotency keys. Implemented by [`UuidV4`] and by every
/// `Fn() -> HeaderValue + Send + Sync + 'static` closure.
pub trait MakeKey: Send + Sync + 'static {
    /// A new key, different from every other key made.
    fn make_key(&self) -> HeaderValue;
}

impl<F> MakeKey for F
where
    F: Fn() -> HeaderValue + Send + Sync + 'static,
{
    fn make_key(&self) -> HeaderValue {
        self()
    }
}

/// Random UUID v4 keys, such as `9b2e8f0c-3d4a-4f6e-8a1b-2c3d4e5f6a7b` (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct UuidV4;

impl MakeKey for UuidV4 {
    fn make_key(&self) -> HeaderValue {
        let bytes: [u8; 16] = rand::rng().random();
        let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid.hyphenated().encode_lower(&mut text);
        // One allocation, already shared: a copy of the request (the retry layer keeps one)
        // then costs a reference count, not a second allocation.
        HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
            .unwrap_or_else(|_| HeaderValue::from_static("invalid-uuid"))
    }
}

/// A tower-http [`MakeRequestId`](tower_http::request_id::MakeRequestId) as a [`MakeKey`]
/// (feature `tower-http`): an application's own id maker (say `MakeRequestUuid`, or one that
/// prefixes a service name) makes the idempotency keys. The maker is asked with an empty
/// request (a key is made once per logical call, before the layers see it); when it makes no
/// id, a [`UuidV4`] is used.
///
/// ```
/// use tower_http::request_id::MakeRequestUuid;
/// use tower_outbound::idempotency::{FromMakeRequestId, MakeKey};
/// use tower_outbound::IdempotencyKeyLayer;
///
/// let keys = FromMakeRequestId::new(MakeRequestUuid);
/// assert_eq!(keys.make_key().len(), 36);
/// let layer = IdempotencyKeyLayer::new().make_key(keys);
/// # let _ = layer;
/// ```
#[cfg(feature = "tower-http")]
#[derive(Debug)]
pub struct FromMakeRequestId<M>(std::sync::Mutex<M>);

#[cfg(feature = "tower-http")]
impl<M> FromMakeRequestId<M> {
    /// Keys made by `make`.
    pub fn new(make: M) -> Self {
        FromMakeRequestId(std::sync::Mutex::new(make))
    }
}

#[cfg(feature = "tower-http")]
impl<M> MakeKey for FromMakeRequestId<M>
where
    M: tower_http::request_id::MakeRequestId + Send + 'static,
{
    fn make_key(&self) -> HeaderValue {
        let made = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .make_request_id(&http::Request::new(()));
        made.map_or_else(
            || UuidV4.make_key(),
            tower_http::request_id::RequestId::into_header_value,
        )
    }
}

/// Adds an idempotency key to writes that have none. See the [module docs](self).
///
/// Defaults: header `Idempotency-Key`, methods POST and PATCH, keys from [`UuidV4`].
#[derive(Clone)]
pub struct IdempotencyKeyLayer {
    header: HeaderName,
    methods: Arc<[Method]>,
    make_key: Arc<dyn MakeKey>,
}

impl fmt::Debug for IdempotencyKeyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyKeyLayer")
            .field("header", &self.header)
            .field("methods", &self.methods)
            .finish_non_exhaustive()
    }
}

impl Default for IdempotencyKeyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl IdempotencyKeyLayer {
    /// `Idempotency-Key: <UUID v4>` on POST and PATCH.
    pub fn new() -> Self {
        IdempotencyKeyLayer {
            header: HeaderName::from_static("idempotency-key"),
            methods: Arc::from([Method::POST, Method::PATCH]),
            make_key: Arc::new(UuidV4),
        }
    }

    /// The header that carries the key (default `Idempotency-Key`). Give the retry layer the
    /// same name with [`RetryLayer::idempotency_header`](crate::RetryLayer::idempotency_header).
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }

    /// The methods that get a key (default POST and PATCH).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// The key generator (default [`UuidV4`]).
    pub fn make_key(mut self, make_key: impl MakeKey) -> Self {
        self.make_key = Arc::new(make_key);
        self
    }
}

impl IdempotencyKeyLayer {
    /// Puts a new key on `request` when its method gets one and it has none yet.
    pub(crate) fn stamp<B>(&self, request: &mut Request<B>) {
        if self.methods.contains(request.method()) && !request.headers().contains_key(&self.header)
        {
            let key = self.make_key.make_key();
            request.headers_mut().insert(self.header.clone(), key);
        }
    }
}

impl<S> Layer<S> for IdempotencyKeyLayer {
    type Service = IdempotencyKey<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyKey {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`IdempotencyKeyLayer`].
#[derive(Clone, Debug)]
pub struct IdempotencyKey<S> {
    inner: S,
    layer: IdempotencyKeyLayer,
}

impl<S> IdempotencyKey<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B> Service<Request<B>> for IdempotencyKey<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> S::Future {
        self.layer.stamp(&mut request);
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn uuid_v4_keys_are_well_formed_and_distinct() {
        let keys: HashSet<_> = (0..1000).map(|_| UuidV4.make_key()).collect();
        assert_eq!(keys.len(), 1000);
        for key in keys.iter().take(20) {
            let text = key.to_str().unwrap();
            let uuid = uuid::Uuid::parse_str(text).unwrap();
            assert_eq!(uuid.get_version_num(), 4);
            assert_eq!(text, text.to_lowercase());
        }
    }

    #[tokio::test]
    async fn a_key_the_caller_set_is_kept_and_other_methods_get_none() {
        use tower::{ServiceBuilder, ServiceExt};
        let svc = tower::service_fn(|req: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(req.headers().get("idempotency-token").cloned())
        });
        let mut svc = ServiceBuilder::new()
            .layer(
                IdempotencyKeyLayer::new()
                    .header(HeaderName::from_static("idempotency-token"))
                    .methods([Method::POST, Method::PUT])
                    .make_key(|| HeaderValue::from_static("fixed")),
            )
            .service(svc);
        let own = Request::post("/")
            .header("idempotency-token", "mine")
            .body(())
            .unwrap();
        assert_eq!(
            svc.ready().await.unwrap().call(own).await.unwrap().unwrap(),
            "mine"
        );
        let put = Request::put("/").body(()).unwrap();
        assert_eq!(
            svc.ready().await.unwrap().call(put).await.unwrap().unwrap(),
            "fixed"
        );
        let patch = Request::patch("/").body(()).unwrap();
        assert!(svc
            .ready()
            .await
            .unwrap()
            .call(patch)
            .await
            .unwrap()
            .is_none());
    }
}
