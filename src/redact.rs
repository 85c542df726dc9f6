//! Secrets kept out of logs, errors and dead letters.
//!
//! A URI can carry credentials in two places: the userinfo (`https://user:password@host/`) and
//! the query (`?api_key=…`, `?token=…`, the signature of a pre-signed URL). Wherever this
//! crate logs, displays or stores a URI it goes through [`Redactor::uri`] first:
//!
//! - the userinfo is always removed;
//! - the value of every query parameter whose name looks secret is replaced by
//!   `[redacted]`. A name looks secret when, lowercased, it contains one of
//!   [`DEFAULT_SECRET_PARAMS`] (`key`, `token`, `secret`, `signature`, `password`, `auth`, …) or
//!   a fragment added with [`Redactor::param`].
//!
//! The check is by substring on purpose: `X-Amz-Signature`, `access_token`, `apiKey` and
//! `client_secret` are all caught without a list of every API's spelling. A harmless parameter
//! that happens to match (`author`) is redacted too: a log line missing a value is cheap, a
//! leaked key is not.
//!
//! Headers are redacted by name where they are stored (see
//! [`DeadLetterLayer::redact`](crate::DeadLetterLayer::redact)), and any header value marked
//! sensitive (`HeaderValue::set_sensitive`, as tower-http's `SetSensitiveRequestHeadersLayer`
//! does) is always redacted.
//!
//! # Example
//!
//! ```
//! use http::Uri;
//! use tower_outbound::redact;
//!
//! let uri: Uri = "https://bob:hunter2@api.example.com/v1/items?page=2&api_key=sk_live_1".parse().unwrap();
//! assert_eq!(
//!     redact::uri(&uri),
//!     "https://api.example.com/v1/items?page=2&api_key=[redacted]"
//! );
//! ```

use std::fmt::{self, Write as _};
use std::sync::Arc;

use http::Uri;

/// What replaces a secret value.
pub const REDACTED: &str = "[redacted]";

/// Fragments of query parameter names whose values are redacted by default (matched
/// case-insensitively as substrings of the name).
pub const DEFAULT_SECRET_PARAMS: &[&str] = &[
    "key",
    "token",
    "secret",
    "signature",
    "sig",
    "password",
    "passwd",
    "pwd",
    "auth",
    "credential",
    "session",
];

/// At most this many query parameters of one URI are looked at; the rest of the query is
/// dropped from the redacted form (a URI with more is not something to log whole anyway).
pub const MAX_QUERY_PARAMS: usize = 64;

/// Redacts URIs. Cheap to clone; [`Redactor::default`] uses [`DEFAULT_SECRET_PARAMS`].
#[derive(Clone, PartialEq, Eq)]
pub struct Redactor {
    params: Arc<[Box<str>]>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("params", &self.params)
            .finish()
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor {
            params: DEFAULT_SECRET_PARAMS
                .iter()
                .map(|p| Box::<str>::from(*p))
                .collect(),
        }
    }
}

impl Redactor {
    /// The default redactor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also redacts query parameters whose names contain `fragment` (case-insensitive). An
    /// empty fragment is ignored.
    pub fn param(mut self, fragment: &str) -> Self {
        let fragment = fragment.to_ascii_lowercase();
        if !fragment.is_empty() && !self.params.iter().any(|p| **p == *fragment) {
            let mut params: Vec<Box<str>> = self.params.iter().cloned().collect();
            params.push(fragment.into_boxed_str());
            self.params = params.into();
        }
        self
    }

    /// Whether a query parameter with this name has its value redacted.
    pub fn is_secret_param(&self, name: &str) -> bool {
        // Compare without allocating: an ASCII-case-insensitive substring search.
        let name = name.as_bytes();
        self.params.iter().any(|fragment| {
            let fragment = fragment.as_bytes();
            fragment.len() <= name.len()
                && name
                    .windows(fragment.len())
                    .any(|w| w.eq_ignore_ascii_case(fragment))
        })
    }

    /// The URI as it may be logged, displayed or stored: without userinfo, and with secret
    /// query values replaced by `[redacted]`.
    pub fn uri(&self, uri: &Uri) -> String {
        let mut out = String::with_capacity(uri.path().len() + 48);
        // Writing to a String cannot fail.
        let _ = self.write_uri(&mut out, uri);
        out
    }

    fn write_uri(&self, out: &mut String, uri: &Uri) -> fmt::Result {
        if let Some(scheme) = uri.scheme_str() {
            write!(out, "{scheme}://")?;
        }
        if let Some(authority) = uri.authority() {
            out.push_str(authority.host());
            if let Some(port) = authority.port_u16() {
                write!(out, ":{port}")?;
            }
        }
        out.push_str(uri.path());
        if let Some(query) = uri.query() {
            out.push('?');
            self.write_query(out, query);
        }
        Ok(())
    }

    /// Writes `query` with secret values redacted. Linear in the query's length.
    pub(crate) fn write_query(&self, out: &mut String, query: &str) {
        for (i, pair) in query.split('&').enumerate() {
            if i == MAX_QUERY_PARAMS {
                out.push_str("&[truncated]");
                break;
            }
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) if self.is_secret_param(&percent_decoded_lossy(name)) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                _ => out.push_str(pair),
            }
        }
    }

    /// Whether the URI holds anything [`uri`](Self::uri) would remove or hide.
    pub fn has_secrets(&self, uri: &Uri) -> bool {
        let userinfo = uri.authority().is_some_and(|a| a.as_str().contains('@'));
        userinfo
            || uri.query().is_some_and(|q| {
                q.split('&')
                    .take(MAX_QUERY_PARAMS + 1)
                    .enumerate()
                    .any(|(i, pair)| {
                        i == MAX_QUERY_PARAMS
                            || pair.split_once('=').is_some_and(|(name, _)| {
                                self.is_secret_param(&percent_decoded_lossy(name))
                            })
                    })
            })
    }
}

/// `uri` with the default [`Redactor`].
pub fn uri(uri: &Uri) -> String {
    Redactor::default().uri(uri)
}

/// Percent-decodes a parameter name well enough to match it (`api%5Fkey` is `api_key`);
/// invalid escapes are kept as they are.
fn percent_decoded_lossy(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.contains('%') && !name.contains('+') {
        return std::borrow::Cow::Borrowed(name);
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    std::str::from_utf8(h)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                });
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The upstream of a URI for logs and errors: `host` or `host:port`, never the userinfo.
pub(crate) fn authority_without_userinfo(authority: &http::uri::Authority) -> http::uri::Authority {
    if !authority.as_str().contains('@') {
        return authority.clone();
    }
    let text = match authority.port_u16() {
        Some(port) => format!("{}:{port}", authority.host()),
        None => authority.host().to_owned(),
    };
    // A host (and port) taken from a valid authority is a valid authority.
    text.parse().unwrap_or_else(|_| authority.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(uri: &str) -> String {
        uri_of(uri, &Redactor::default())
    }

    fn uri_of(uri: &str, redactor: &Redactor) -> String {
        redactor.uri(&uri.parse().unwrap())
    }

    #[test]
    fn userinfo_is_always_removed() {
        assert_eq!(
            r("http://user:pw@example.com:8080/a"),
            "http://example.com:8080/a"
        );
        assert_eq!(r("http://user@example.com/"), "http://example.com/");
    }

    #[test]
    fn secret_query_values_are_redacted() {
        assert_eq!(
            r("https://h/p?a=1&api_key=k&Token=t&X-Amz-Signature=s&b=2"),
            "https://h/p?a=1&api_key=[redacted]&Token=[redacted]&X-Amz-Signature=[redacted]&b=2"
        );
        assert_eq!(
            r("https://h/p?api%5Fkey=k"),
            "https://h/p?api%5Fkey=[redacted]"
        );
        assert_eq!(r("https://h/p?page=2&q=x"), "https://h/p?page=2&q=x");
    }

    #[test]
    fn configured_fragments_are_redacted() {
        let redactor = Redactor::new().param("Tenant");
        assert_eq!(
            uri_of("https://h/?tenant_id=9", &redactor),
            "https://h/?tenant_id=[redacted]"
        );
    }

    #[test]
    fn many_query_params_are_cut() {
        let query: Vec<String> = (0..200).map(|i| format!("p{i}=v")).collect();
        let out = r(&format!("https://h/?{}", query.join("&")));
        assert!(out.ends_with("&[truncated]"));
        assert_eq!(out.matches('&').count(), MAX_QUERY_PARAMS);
    }

    #[test]
    fn has_secrets_matches_what_uri_hides() {
        let redactor = Redactor::default();
        for (uri, secret) in [
            ("https://h/p?a=1", false),
            ("https://u:p@h/", true),
            ("https://h/?access_token=1", true),
            ("/relative?x=1", false),
        ] {
            assert_eq!(redactor.has_secrets(&uri.parse().unwrap()), secret, "{uri}");
        }
    }

    #[test]
    fn authority_loses_its_userinfo() {
        let a: http::uri::Authority = "u:p@example.com:81".parse().unwrap();
        assert_eq!(authority_without_userinfo(&a).as_str(), "example.com:81");
    }
}
