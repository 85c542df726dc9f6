//! The one error type of the Lehnz client.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

use super::key::KeyError;
use crate::error::{Error, Kind};

/// A problem Lehnz reported about one field of one record (from a 400 or 422 body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The record's position in the request, when Lehnz named it.
    pub index: Option<usize>,
    /// The field, when Lehnz named it.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// Everything that can go wrong calling Lehnz, with what to do about it.
///
/// | variant | status | what to do |
/// |---|---|---|
/// | [`InvalidKey`](LehnzError::InvalidKey) | none: refused before sending | fix the key (empty, `Bearer ` prefix, pasted twice) |
/// | [`Unauthorized`](LehnzError::Unauthorized) | 401 | the key is unknown or revoked: create a new one in the dashboard |
/// | [`Forbidden`](LehnzError::Forbidden) | 403 | wrong key type: a secret key from a browser, or a publishable key for upserts |
/// | [`PayloadTooLarge`](LehnzError::PayloadTooLarge) | 413 | lower the batch size or byte limit |
/// | [`Validation`](LehnzError::Validation) | 400, 422 | fix the records named in `details`; retrying will not help |
/// | [`RateLimited`](LehnzError::RateLimited) | 429 after retries | wait `retry_after`, or lower the throttle to share the org's 1,000 requests per 15 min |
/// | [`Server`](LehnzError::Server) | 5xx after retries | Lehnz is failing; the batch is in the dead-letter file when one is configured |
/// | [`CircuitOpen`](LehnzError::CircuitOpen) | none: not sent | Lehnz has been failing; calls resume after `retry_in` |
/// | [`Throttled`](LehnzError::Throttled) | none: not sent | the local throttle would have waited too long |
/// | [`Overloaded`](LehnzError::Overloaded) | none: not sent | the concurrency limit gave no place within its wait: Lehnz is saturated |
/// | [`Transport`](LehnzError::Transport) | none | network: connection refused or reset, timeout, TLS |
/// | [`UnexpectedResponse`](LehnzError::UnexpectedResponse) | any | the reply was not what Lehnz documents (an HTML error page, truncated JSON) |
/// | [`InvalidUrl`](LehnzError::InvalidUrl) | none | fix the base URL; plain `http://` is allowed for loopback only |
/// | [`InvalidConfig`](LehnzError::InvalidConfig) | none | fix the setting (a zero throttle rate, say) |
#[derive(Debug)]
#[non_exhaustive]
pub enum LehnzError {
    /// The API key was refused before any call.
    InvalidKey(KeyError),
    /// A base URL is not usable.
    InvalidUrl(String),
    /// A setting of the client is not usable.
    InvalidConfig(String),
    /// 401: the key is unknown or revoked.
    Unauthorized {
        /// Lehnz's message.
        message: String,
    },
    /// 403: the key is of the wrong kind for this call.
    Forbidden {
        /// Lehnz's message.
        message: String,
    },
    /// 413: the request body was over Lehnz's limit.
    PayloadTooLarge {
        /// Lehnz's message.
        message: String,
    },
    /// 400 or 422: records were malformed or invalid.
    Validation {
        /// 400 or 422.
        status: StatusCode,
        /// Lehnz's message.
        message: String,
        /// Per-record details, when Lehnz gave them.
        details: Vec<FieldError>,
    },
    /// 429, still, after the retries: the organization's quota is used up.
    RateLimited {
        /// How long Lehnz asked to wait, when it said.
        retry_after: Option<Duration>,
        /// Lehnz's message.
        message: String,
    },
    /// A 5xx, still, after the retries.
    Server {
        /// The status.
        status: StatusCode,
        /// Lehnz's message, or the start of the body.
        message: String,
    },
    /// Not sent: the circuit breaker is open because Lehnz has been failing.
    CircuitOpen {
        /// Time until the breaker lets a probe through.
        retry_in: Duration,
    },
    /// Not sent: the local throttle would have waited longer than allowed.
    Throttled {
        /// How long it would have waited.
        wait: Duration,
    },
    /// Not sent: the concurrency limit gave the call no place within its wait.
    Overloaded {
        /// The limit on calls in flight at the time.
        limit: u32,
    },
    /// The network failed (connection, TLS, timeout), after the retries.
    Transport(Error),
    /// The reply was not what Lehnz documents.
    UnexpectedResponse {
        /// The status.
        status: StatusCode,
        /// What was wrong with it.
        problem: String,
    },
}

impl LehnzError {
    /// The HTTP status behind the error, when there was a response.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            LehnzError::Unauthorized { .. } => Some(StatusCode::UNAUTHORIZED),
            LehnzError::Forbidden { .. } => Some(StatusCode::FORBIDDEN),
            LehnzError::PayloadTooLarge { .. } => Some(StatusCode::PAYLOAD_TOO_LARGE),
            LehnzError::RateLimited { .. } => Some(StatusCode::TOO_MANY_REQUESTS),
            LehnzError::Validation { status, .. }
            | LehnzError::Server { status, .. }
            | LehnzError::UnexpectedResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether sending the same records later may succeed (rate limits, server and network
    /// failures), as opposed to errors that need a fix first (keys, validation, sizes).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LehnzError::RateLimited { .. }
                | LehnzError::Server { .. }
                | LehnzError::CircuitOpen { .. }
                | LehnzError::Throttled { .. }
                | LehnzError::Overloaded { .. }
                | LehnzError::Transport(_)
        )
    }

    /// What to do about it, in one sentence.
    pub fn advice(&self) -> &'static str {
        match self {
            LehnzError::InvalidKey(_) => "fix the API key as the message says",
            LehnzError::InvalidUrl(_) => "use an https:// base URL (http:// is for loopback only)",
            LehnzError::InvalidConfig(_) => "fix the client setting the message names",
            LehnzError::Unauthorized { .. } => {
                "the key is unknown or revoked: create a new key in the Lehnz dashboard"
            }
            LehnzError::Forbidden { .. } => {
                "use a secret key on servers and a publishable key (lehnz_pk_) in browsers, for event ingestion only"
            }
            LehnzError::PayloadTooLarge { .. } => "send smaller batches (at most 1 MB per request)",
            LehnzError::Validation { .. } => "fix the records named in the details; retrying will not help",
            LehnzError::RateLimited { .. } => {
                "wait for the window to reset; the organization shares 1,000 requests per 15 minutes"
            }
            LehnzError::Server { .. } => "Lehnz is failing; send again later or replay the dead letters",
            LehnzError::CircuitOpen { .. } => "Lehnz has been failing; calls resume after the open period",
            LehnzError::Throttled { .. } => "send less at once, or allow the throttle a longer wait",
            LehnzError::Overloaded { .. } => {
                "send less at once, or allow the concurrency limit a longer wait"
            }
            LehnzError::Transport(_) => "check the network and the base URL; the call may be sent again",
            LehnzError::UnexpectedResponse { .. } => {
                "check the base URL points at Lehnz; a proxy or gateway may have answered"
            }
        }
    }

    /// Maps an error of the layers to the client's error.
    pub(crate) fn from_layers(error: Error) -> Self {
        match error.kind() {
            Kind::CircuitOpen { retry_in } => LehnzError::CircuitOpen { retry_in },
            Kind::Throttled { wait } => LehnzError::Throttled { wait },
            Kind::Overloaded { limit } => LehnzError::Overloaded { limit },
            Kind::RateLimited { wait, .. } => LehnzError::RateLimited {
                retry_after: Some(wait),
                message: error.to_string(),
            },
            _ => LehnzError::Transport(error),
        }
    }
}

impl fmt::Display for LehnzError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LehnzError::InvalidKey(err) => write!(f, "{err}"),
            LehnzError::InvalidUrl(problem) => write!(f, "invalid Lehnz base URL: {problem}"),
            LehnzError::InvalidConfig(problem) => {
                write!(f, "invalid Lehnz client setting: {problem}")
            }
            LehnzError::Unauthorized { message } => write!(f, "401 unauthorized: {message}"),
            LehnzError::Forbidden { message } => write!(f, "403 forbidden: {message}"),
            LehnzError::PayloadTooLarge { message } => {
                write!(f, "413 payload too large: {message}")
            }
            LehnzError::Validation {
                status,
                message,
                details,
            } => {
                write!(f, "{} validation failed: {message}", status.as_u16())?;
                for d in details.iter().take(5) {
                    f.write_str("; ")?;
                    if let Some(i) = d.index {
                        write!(f, "record {i}")?;
                    }
                    if let Some(field) = &d.field {
                        write!(f, " field {field}")?;
                    }
                    write!(f, ": {}", d.message)?;
                }
                if details.len() > 5 {
                    write!(f, "; and {} more", details.len() - 5)?;
                }
                Ok(())
            }
            LehnzError::RateLimited {
                retry_after,
                message,
            } => {
                f.write_str("429 rate limited")?;
                if let Some(wait) = retry_after {
                    write!(f, " (retry after {}s)", wait.as_secs_f64().ceil())?;
                }
                write!(f, ": {message}")
            }
            LehnzError::Server { status, message } => {
                write!(f, "{} server error: {message}", status.as_u16())
            }
            LehnzError::CircuitOpen { retry_in } => write!(
                f,
                "not sent: circuit open after repeated Lehnz failures; next probe in {}s",
                retry_in.as_secs_f64().ceil()
            ),
            LehnzError::Throttled { wait } => write!(
                f,
                "not sent: the throttle would have waited {}s",
                wait.as_secs_f64().ceil()
            ),
            LehnzError::Overloaded { limit } => write!(
                f,
                "not sent: {limit} calls were in flight, the concurrency limit, and none finished in time"
            ),
            LehnzError::Transport(err) => write!(f, "network error: {err}"),
            LehnzError::UnexpectedResponse { status, problem } => write!(
                f,
                "unexpected response from Lehnz ({}): {problem}",
                status.as_u16()
            ),
        }?;
        Ok(())
    }
}

impl std::error::Error for LehnzError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LehnzError::InvalidKey(err) => Some(err),
            LehnzError::Transport(err) => Some(err),
            _ => None,
        }
    }
}

impl From<KeyError> for LehnzError {
    fn from(err: KeyError) -> Self {
        LehnzError::InvalidKey(err)
    }
}
