//! How requests are split among independent rate-limit buckets and circuit breakers.
//!
//! A throttle, a gate or a breaker keeps one state per partition. [`ByUpstream`] keeps one per
//! upstream (scheme, host and port: one bad host never changes what happens to calls to
//! another); [`Global`] shares one for all requests through a layer; [`Scope`] chooses either
//! at run time (it is what [`Outbound`](crate::Outbound) takes); [`ByAuthority`] keys on host
//! and port alone; any closure `Fn(&RequestHead<'_>) -> Option<PartitionKey>` can choose its
//! own (say, per API key). Requests for which a partition returns `None` share the layer's
//! default state.
//!
//! Partition keys never hold the URI's userinfo: a password in
//! `https://user:password@host/` does not reach a map key, a log line or a metric label.
//!
//! # Example
//!
//! ```
//! use http::Request;
//! use tower_outbound::partition::{ByAuthority, ByUpstream, Partition, PartitionKey, RequestHead};
//!
//! let request = Request::get("https://api.example.com/v1/items").body(()).unwrap();
//! let head = RequestHead::of(&request);
//! assert_eq!(ByAuthority.key(&head), Some(PartitionKey::from("api.example.com")));
//! assert_eq!(ByUpstream.key(&head), Some(PartitionKey::from("https://api.example.com:443")));
//!
//! // One partition per tenant header.
//! let by_tenant = |head: &RequestHead<'_>| {
//!     head.headers.get("x-tenant").map(|v| PartitionKey::from(v.as_bytes()))
//! };
//! assert_eq!(by_tenant.key(&head), None);
//! ```

use std::fmt;

use bytes::Bytes;

mod registry;
use http::{HeaderMap, Method, Request, Uri};
#[cfg(feature = "metrics")]
pub(crate) use registry::KeyHash;
pub(crate) use registry::{upstream_of, Registry};

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

/// The name of one partition: cheap to clone (reference-counted bytes), hashed once when made,
/// so that finding a partition's state costs no hashing of its name.
#[derive(Clone)]
pub struct PartitionKey {
    bytes: Bytes,
    hash: u64,
}

/// The keyed hash of partition names: random per process, so no one can choose names that
/// collide in the per-partition maps.
static NAME_HASH: std::sync::LazyLock<std::collections::hash_map::RandomState> =
    std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);

impl PartitionKey {
    fn new(bytes: Bytes) -> Self {
        use std::hash::BuildHasher;
        let hash = NAME_HASH.hash_one(&*bytes);
        PartitionKey { bytes, hash }
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl PartialEq for PartitionKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.bytes == other.bytes
    }
}

impl Eq for PartitionKey {}

impl std::hash::Hash for PartitionKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialOrd for PartitionKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PartitionKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}

impl fmt::Debug for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PartitionKey({:?})",
            String::from_utf8_lossy(&self.bytes)
        )
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.bytes))
    }
}

impl From<Bytes> for PartitionKey {
    fn from(bytes: Bytes) -> Self {
        PartitionKey::new(bytes)
    }
}

impl From<&[u8]> for PartitionKey {
    fn from(bytes: &[u8]) -> Self {
        PartitionKey::new(Bytes::copy_from_slice(bytes))
    }
}

impl From<&str> for PartitionKey {
    fn from(s: &str) -> Self {
        PartitionKey::new(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for PartitionKey {
    fn from(s: String) -> Self {
        PartitionKey::new(Bytes::from(s))
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

/// One partition per URI authority (host and port, as written; never the userinfo). Requests
/// without an authority share the default partition. Prefer [`ByUpstream`], which also tells
/// `http://` from `https://` and `host` from `host:443`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByAuthority;

impl Partition for ByAuthority {
    fn key(&self, head: &RequestHead<'_>) -> Option<PartitionKey> {
        let authority = head.uri.authority()?;
        let text = authority.as_str();
        // `user:password@host:port`: keep what follows the last `@`.
        let host_port = text.rsplit_once('@').map_or(text, |(_, rest)| rest);
        Some(PartitionKey::from(host_port))
    }
}

/// One partition per upstream: `scheme://host:port`, with the host lowercased and the port
/// made explicit (80 for `http`, 443 for `https`), so `https://API.example.com/` and
/// `https://api.example.com:443/x` share one state and `http://` and `https://` to the same
/// host do not. The userinfo is never part of the key. Requests without an authority (a
/// relative URI) share the default partition.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByUpstream;

impl ByUpstream {
    /// The upstream of a URI, as [`ByUpstream`] names it; `None` without an authority.
    pub fn of(uri: &Uri) -> Option<PartitionKey> {
        upstream_key(uri).map(PartitionKey::from)
    }
}

/// The pieces of a URI's upstream key: scheme, host (an IPv6 literal without its closing
/// bracket) and port, found without allocating. Linear in the authority's length.
pub(crate) struct UpstreamParts<'a> {
    scheme: &'a str,
    host: &'a str,
    ipv6: bool,
    port: Option<u16>,
}

impl<'a> UpstreamParts<'a> {
    pub(crate) fn of(uri: &'a Uri) -> Option<Self> {
        let authority = uri.authority()?.as_str();
        // `user:password@host:port`: what follows the last `@`.
        let host_port = authority
            .rsplit_once('@')
            .map_or(authority, |(_, rest)| rest);
        let ipv6 = host_port.starts_with('[');
        let (host, port) = if ipv6 {
            // An IPv6 literal: `[::1]` or `[::1]:8080`.
            match host_port.split_once(']') {
                Some((inside, rest)) => (inside, rest.strip_prefix(':')),
                None => (host_port, None),
            }
        } else {
            match host_port.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            }
        };
        let scheme = uri.scheme_str().unwrap_or("http");
        let port = port.and_then(|p| p.parse::<u16>().ok()).or(match scheme {
            "https" | "wss" => Some(443),
            "http" | "ws" => Some(80),
            _ => None,
        });
        Some(UpstreamParts {
            scheme,
            host,
            ipv6,
            port,
        })
    }

    /// Writes `scheme://host:port`, lowercased, piece by piece.
    pub(crate) fn write<E>(&self, mut push: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let mut lower = [0u8; 64];
        for piece in [self.scheme, "://", self.host] {
            for chunk in piece.as_bytes().chunks(lower.len()) {
                let lower = &mut lower[..chunk.len()];
                lower.copy_from_slice(chunk);
                lower.make_ascii_lowercase();
                push(lower)?;
            }
        }
        if self.ipv6 {
            push(b"]")?;
        }
        if let Some(port) = self.port {
            let mut digits = [0u8; 6];
            let mut i = digits.len();
            let mut n = port;
            loop {
                i -= 1;
                digits[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            i -= 1;
            digits[i] = b':';
            push(&digits[i..])?;
        }
        Ok(())
    }
}

/// `scheme://host:port` of a URI, lowercased, with the default port made explicit. Linear in
/// the authority's length, one allocation (the key itself).
pub(crate) fn upstream_key(uri: &Uri) -> Option<String> {
    let parts = UpstreamParts::of(uri)?;
    let mut key = Vec::with_capacity(parts.scheme.len() + parts.host.len() + 10);
    let _ = parts.write(|piece| {
        key.extend_from_slice(piece);
        Ok::<(), ()>(())
    });
    // The pieces come from a valid URI's ASCII authority and scheme.
    String::from_utf8(key).ok()
}

/// Whether `partition` keys by upstream, so that the remembered key of the request's upstream
/// can be used.
fn keys_by_upstream<P: Partition>(partition: &P) -> bool {
    let any = partition as &dyn std::any::Any;
    any.downcast_ref::<Scope>() == Some(&Scope::Upstream) || any.is::<ByUpstream>()
}

/// The partition key of a request: `None` for a global partition, the upstream's remembered
/// key (no allocation) for a partition by upstream, else what the partition says.
pub(crate) fn key_of<P: Partition, B>(partition: &P, request: &Request<B>) -> Option<PartitionKey> {
    if partition.is_global() {
        return None;
    }
    if keys_by_upstream(partition) {
        return upstream_of(request.uri());
    }
    partition.key(&RequestHead::of(request))
}

impl Partition for ByUpstream {
    fn key(&self, head: &RequestHead<'_>) -> Option<PartitionKey> {
        ByUpstream::of(head.uri)
    }
}

/// Per upstream or global, chosen at run time: the partition [`Outbound`](crate::Outbound)
/// gives its gate, breaker and throttle. In configuration files ([`config`](crate::config))
/// it is written `"upstream"` or `"global"`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One state per upstream, as [`ByUpstream`] (the default).
    #[default]
    Upstream,
    /// One state for every request, as [`Global`]: for an API whose limits span several hosts.
    Global,
}

impl Partition for Scope {
    fn key(&self, head: &RequestHead<'_>) -> Option<PartitionKey> {
        match self {
            Scope::Upstream => ByUpstream.key(head),
            Scope::Global => None,
        }
    }

    fn is_global(&self) -> bool {
        *self == Scope::Global
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of<P: Partition>(partition: P, uri: &str) -> Option<String> {
        let request = Request::get(uri).body(()).unwrap();
        partition
            .key(&RequestHead::of(&request))
            .map(|k| k.to_string())
    }

    #[test]
    fn partition_keys_never_hold_userinfo() {
        let uri = "https://bob:hunter2@api.example.com:8443/x";
        assert_eq!(
            key_of(ByAuthority, uri).as_deref(),
            Some("api.example.com:8443")
        );
        assert_eq!(
            key_of(ByUpstream, uri).as_deref(),
            Some("https://api.example.com:8443")
        );
    }

    #[test]
    fn ipv6_and_explicit_ports_are_kept_apart() {
        assert_eq!(
            key_of(ByUpstream, "http://[::1]:8080/").as_deref(),
            Some("http://[::1]:8080")
        );
        assert_eq!(
            key_of(ByUpstream, "https://u:p@[::1]/").as_deref(),
            Some("https://[::1]:443")
        );
        assert_eq!(
            key_of(ByUpstream, "https://h:0443/").as_deref(),
            Some("https://h:443")
        );
    }

    #[test]
    fn upstreams_are_normalised() {
        assert_eq!(
            key_of(ByUpstream, "https://API.Example.com/a").as_deref(),
            Some("https://api.example.com:443")
        );
        assert_eq!(
            key_of(ByUpstream, "http://api.example.com/a").as_deref(),
            Some("http://api.example.com:80")
        );
        assert_eq!(key_of(ByUpstream, "/relative"), None);
        assert_eq!(key_of(Scope::Global, "https://h/"), None);
        assert_eq!(
            key_of(Scope::Upstream, "https://h/").as_deref(),
            Some("https://h:443")
        );
    }
}
