//! How requests are split among independent rate-limit buckets and circuit breakers.
//!
//! A throttle or a breaker keeps one state per partition. By default ([`Global`]) all requests
//! through a layer share one; [`ByAuthority`] keeps one per upstream host and port; any closure
//! `Fn(&RequestHead<'_>) -> Option<PartitionKey>` can choose its own (say, per API key).
//! Requests for which a partition returns `None` share the layer's default state.
//!
//! # Example
//!
//! ```
//! use http::Request;
//! use tower_outbound::partition::{ByAuthority, Partition, PartitionKey, RequestHead};
//!
//! let request = Request::get("https://api.example.com/v1/items").body(()).unwrap();
//! let head = RequestHead::of(&request);
//! assert_eq!(ByAuthority.key(&head), Some(PartitionKey::from("api.example.com")));
//!
//! // One partition per tenant header.
//! let by_tenant = |head: &RequestHead<'_>| {
//!     head.headers.get("x-tenant").map(|v| PartitionKey::from(v.as_bytes()))
//! };
//! assert_eq!(by_tenant.key(&head), None);
//! ```

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri};

/// The parts of a request a [`Partition`] may look at.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request URI.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

impl<'a> RequestHead<'a> {
    /// The head of `request`.
    pub fn of<B>(request: &'a Request<B>) -> Self {
        RequestHead {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
        }
    }
}

/// The name of one partition: cheap to clone (reference-counted bytes).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey(Bytes);

impl PartitionKey {
    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartitionKey({:?})", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl From<Bytes> for PartitionKey {
    fn from(bytes: Bytes) -> Self {
        PartitionKey(bytes)
    }
}

impl From<&[u8]> for PartitionKey {
    fn from(bytes: &[u8]) -> Self {
        PartitionKey(Bytes::copy_from_slice(bytes))
    }
}

impl From<&str> for PartitionKey {
    fn from(s: &str) -> Self {
        PartitionKey(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for PartitionKey {
    fn from(s: String) -> Self {
        PartitionKey(Bytes::from(s))
    }
}

/// Chooses the partition of a request. See the [module docs](self).
pub trait Partition: Clone + Send + Sync + 'static {
    /// The partition of this request; `None` for the layer's default partition.
    fn key(&self, head: &RequestHead<'_>) -> Option<PartitionKey>;

    /// Whether this partition always answers `None`, which lets a layer skip the lookup.
    fn is_global(&self) -> bool {
        false
    }
}

impl<F> Partition for F
where
    F: Fn(&RequestHead<'_>) -> Option<PartitionKey> + Clone + Send + Sync + 'static,
{
    fn key(&self, head: &RequestHead<'_>) -> Option<PartitionKey> {
        self(head)
    }
}

/// One partition for every request (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct Global;

impl Partition for Global {
    fn key(&self, _head: &RequestHead<'_>) -> Option<PartitionKey> {
        None
    }

    fn is_global(&self) -> bool {
        true
    }
}

/// One partition per URI authority (host and port). Requests without an authority share the
/// default partition.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByAuthority;

impl Partition for ByAuthority {
    fn key(&self, head: &RequestHead<'_>) -> Option<PartitionKey> {
        head.uri
            .authority()
            .map(|a| PartitionKey::from(Bytes::copy_from_slice(a.as_str().as_bytes())))
    }
}
