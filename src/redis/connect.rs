//! Connecting to Redis as teams run it: a plain `redis://` server, TLS (`rediss://`, feature
//! `redis-tls`, with a private CA and client certificates), and ACL users
//! (`redis://user:password@host:6379/`), with the failures that can be known before the first
//! request made known then, typed, and without the credentials.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError};

/// The connection manager's settings: a lost connection is made again in the background, and
/// no call waits on a connection attempt longer than these.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(250)))
        .set_response_timeout(Some(Duration::from_millis(250)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

/// A connection to the Redis at `url` (`redis://`, `redis://user:password@…` for an ACL user,
/// `rediss://` with the `redis-tls` feature, verified against the system's roots), made
/// lazily and again when lost, so this succeeds while Redis is down. Use it for a
/// [`RedisStore`](super::RedisStore) or a [`RedisStreamSink`](super::RedisStreamSink).
///
/// # Errors
///
/// A [`RedisSetupError`] when the URL is not one Redis takes (or names TLS without the
/// feature); its text never holds the URL's password.
pub fn connect(url: &str) -> Result<ConnectionManager, RedisSetupError> {
    let client = redis::Client::open(url).map_err(|e| RedisSetupError::of(&e, url))?;
    ConnectionManager::new_lazy_with_config(client, manager_config())
        .map_err(|e| RedisSetupError::of(&e, url))
}

/// TLS settings for a Redis whose certificate is signed by a private CA, or that asks clients
/// for a certificate (feature `redis-tls`). rustls verifies the server's name against the URL's
/// host.
#[cfg(feature = "redis-tls")]
#[derive(Clone, Default)]
pub struct RedisTls {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

#[cfg(feature = "redis-tls")]
impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

#[cfg(feature = "redis-tls")]
impl RedisTls {
    /// The system's roots (as `connect` uses for `rediss://`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts only this CA (PEM) for the server's certificate, instead of the system's roots.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// Presents this certificate and key (PEM) to a server that asks for one (mutual TLS). The
    /// key is kept in memory only, and never shown by `Debug`.
    pub fn client_pem(mut self, certificate: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.client = Some((certificate.into(), key.into()));
        self
    }
}

/// A connection over TLS to the Redis at `url` (`rediss://…`), with `tls`'s CA and client
/// certificate; lazy, as [`connect`] (feature `redis-tls`).
///
/// # Errors
///
/// As [`connect`]; a certificate that does not parse is a [`SetupErrorKind::Tls`] error.
#[cfg(feature = "redis-tls")]
pub fn connect_tls(url: &str, tls: &RedisTls) -> Result<ConnectionManager, RedisSetupError> {
    let certificates = redis::TlsCertificates {
        client_tls: tls
            .client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
        root_cert: tls.ca.clone(),
    };
    let client = redis::Client::build_with_tls(url, certificates)
        .map_err(|e| RedisSetupError::of(&e, url))?;
    ConnectionManager::new_lazy_with_config(client, manager_config())
        .map_err(|e| RedisSetupError::of(&e, url))
}

/// A connection to the Redis Cluster that `nodes` belong to (any of its nodes: `redis://`,
/// `redis://user:password@…`, or `rediss://` with the `redis-tls` feature), checked by asking
/// the cluster for its map of slots (feature `redis-cluster`). It follows `MOVED` and `ASK`,
/// refreshes the map after a failover, and retries a command a node refused while the cluster
/// moved; calls on it have the same timeouts as [`connect`]'s.
///
/// # Errors
///
/// A [`RedisSetupError`] when no node answers or the URLs are refused; no password in its text.
#[cfg(feature = "redis-cluster")]
pub async fn connect_cluster(nodes: &[&str]) -> Result<super::RedisConnection, RedisSetupError> {
    let first = nodes.first().copied().unwrap_or("");
    let client = redis::cluster::ClusterClient::builder(nodes.iter().copied())
        .connection_timeout(Duration::from_millis(250))
        .response_timeout(Duration::from_millis(250))
        .retries(3)
        .build()
        .map_err(|e| RedisSetupError::of(&e, first))?;
    let connection = client
        .get_async_connection()
        .await
        .map_err(|e| RedisSetupError::of(&e, first))?;
    Ok(connection.into())
}

/// What went wrong when connecting to Redis or checking what the connection may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SetupErrorKind {
    /// The URL is not one Redis takes, or names TLS (`rediss://`) without the `redis-tls`
    /// feature.
    Url,
    /// Redis did not answer (refused, unreachable, or slower than the check's timeout).
    Unreachable,
    /// The TLS handshake failed: a certificate the CA does not vouch for, a name that does not
    /// match, a server that does not speak TLS.
    Tls,
    /// The user or password was refused.
    Auth,
    /// The user may not run a command the crate needs (`EVALSHA`, `SCRIPT LOAD`, `TIME`, …) or
    /// touch the crate's keys: grant it with `ACL SETUSER` (docs/distributed.md lists them).
    NoPermission,
    /// Anything else Redis answered.
    Other,
}

/// A failure to connect to Redis, or a permission the connection lacks, found before the first
/// request. Its text names what failed and the server, never the password.
#[derive(Clone, Debug)]
pub struct RedisSetupError {
    kind: SetupErrorKind,
    message: String,
}

impl RedisSetupError {
    /// What went wrong.
    pub fn kind(&self) -> SetupErrorKind {
        self.kind
    }

    pub(crate) fn of(error: &RedisError, url: &str) -> Self {
        let text = error.to_string();
        let lower = text.to_ascii_lowercase();
        let kind = match error.kind() {
            ErrorKind::InvalidClientConfig => SetupErrorKind::Url,
            ErrorKind::AuthenticationFailed => SetupErrorKind::Auth,
            // Refused inside a script, Redis 7.0 says so in words, without the NOPERM code.
            _ if error.code() == Some("NOPERM")
                || lower.contains("noperm")
                || lower.contains("can't run this command")
                || lower.contains("no permissions to access") =>
            {
                SetupErrorKind::NoPermission
            }
            _ if lower.contains("wrongpass") || lower.contains("noauth") => SetupErrorKind::Auth,
            _ if lower.contains("certificate")
                || lower.contains("tls")
                || lower.contains("handshake") =>
            {
                SetupErrorKind::Tls
            }
            _ if error.is_connection_refusal()
                || error.is_timeout()
                || error.is_connection_dropped()
                || error.is_io_error() =>
            {
                SetupErrorKind::Unreachable
            }
            _ => SetupErrorKind::Other,
        };
        RedisSetupError {
            kind,
            message: redact(&text, url),
        }
    }

    pub(crate) fn other(what: &str) -> Self {
        RedisSetupError {
            kind: SetupErrorKind::Other,
            message: what.to_owned(),
        }
    }

    pub(crate) fn unreachable(url: &str, what: &str) -> Self {
        RedisSetupError {
            kind: SetupErrorKind::Unreachable,
            message: redact(what, url),
        }
    }
}

impl fmt::Display for RedisSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            SetupErrorKind::Url => "the Redis URL was refused",
            SetupErrorKind::Unreachable => "Redis did not answer",
            SetupErrorKind::Tls => "the TLS handshake with Redis failed",
            SetupErrorKind::Auth => "Redis refused the user or password",
            SetupErrorKind::NoPermission => {
                "the Redis user lacks a permission the crate needs (grant it with ACL SETUSER)"
            }
            SetupErrorKind::Other => "Redis refused the connection",
        };
        write!(f, "{what}: {}", self.message)
    }
}

impl std::error::Error for RedisSetupError {}

/// The server of a Redis URL, as errors may show it: scheme, host and port, no user or
/// password.
pub(crate) fn server_of(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(uri) => {
            let host = uri.host().unwrap_or("?");
            match uri.port_u16() {
                Some(port) => format!("{}://{host}:{port}", uri.scheme_str().unwrap_or("redis")),
                None => format!("{}://{host}", uri.scheme_str().unwrap_or("redis")),
            }
        }
        Err(_) => "the configured Redis".to_owned(),
    }
}

/// `text` with the URL's password (and the URL itself) taken out, and the server named (when
/// the URL is known).
fn redact(text: &str, url: &str) -> String {
    if url.is_empty() {
        return text.to_owned();
    }
    let mut text = text.replace(url, &server_of(url));
    if let Some(password) = password_of(url).filter(|p| !p.is_empty()) {
        text = text.replace(&password, crate::dead_letter::REDACTED);
    }
    format!("{text} ({})", server_of(url))
}

/// The password of a `redis://user:password@host` URL, as written.
fn password_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let password = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
    Some(password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_reaches_the_text() {
        let url = "redis://worker:s3cr%21t-pw@10.0.0.5:6379/0";
        let error =
            RedisError::from((ErrorKind::AuthenticationFailed, "WRONGPASS", url.to_owned()));
        let setup = RedisSetupError::of(&error, url);
        let shown = format!("{setup} {setup:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("redis://10.0.0.5:6379"), "{shown}");
        assert_eq!(setup.kind(), SetupErrorKind::Auth);
    }

    #[test]
    fn a_url_without_userinfo_has_no_password() {
        assert_eq!(password_of("redis://127.0.0.1:6379/"), None);
        assert_eq!(password_of("redis://:pw@h:1/").as_deref(), Some("pw"));
        assert_eq!(password_of("rediss://u:p@h/").as_deref(), Some("p"));
        assert_eq!(
            server_of("rediss://u:p@cache.internal:6380/0"),
            "rediss://cache.internal:6380"
        );
    }
}
