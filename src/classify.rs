//! What one finished attempt says: about the call, and about the upstream.
//!
//! The retry layer asks "is it worth trying again?", the circuit breaker asks "is the upstream
//! failing?". Both questions are answered from one classification, an [`Outcome`], made by a
//! [`Classify`] implementation. [`DefaultClassifier`] follows the table below; pass your own
//! (any `Fn(Attempt<'_>) -> Outcome` closure works) where an API has other rules.
//!
//! | attempt ended with                          | [`Outcome`]                 | retried | breaker failure |
//! |---------------------------------------------|-----------------------------|---------|-----------------|
//! | 1xx, 2xx, 3xx                               | [`Success`](Outcome::Success)         | no  | no  |
//! | 429 Too Many Requests                       | [`RateLimited`](Outcome::RateLimited) | yes | no  |
//! | 408, 500, 502, 503, 504                     | [`Transient`](Outcome::Transient)     | yes | yes |
//! | other 4xx (400, 401, 403, 404, 409, 422, …) | [`ClientError`](Outcome::ClientError) | no  | no  |
//! | other 5xx (501, 505, …)                     | [`ServerError`](Outcome::ServerError) | no  | yes |
//! | transport error, timeout                    | [`Transient`](Outcome::Transient)     | yes | yes |
//! | upstream asked for a too-long wait          | [`RateLimited`](Outcome::RateLimited) | yes, if the wait fits the retry budget | no |
//! | throttled locally, circuit open, body error | [`Rejected`](Outcome::Rejected)       | no  | no  |
//!
//! tower-http's `classify` module answers a narrower question (success or failure, for
//! logging), so the crate keeps its own, with the retry/failure split above. An application's
//! tower-http classifier can still be passed to the layers through [`FromTowerHttp`] (feature
//! `tower-http`).
//!
//! # Example
//!
//! ```
//! use http::StatusCode;
//! use tower_outbound::classify::{Attempt, Classify, DefaultClassifier, Outcome};
//!
//! // An API that answers 409 while a resource is still being created: retry it.
//! let classify = |attempt: Attempt<'_>| match attempt {
//!     Attempt::Response { status: StatusCode::CONFLICT, .. } => Outcome::Transient,
//!     other => DefaultClassifier.classify(other),
//! };
//! let headers = http::HeaderMap::new();
//! let outcome = classify.classify(Attempt::Response { status: StatusCode::CONFLICT, headers: &headers });
//! assert!(outcome.is_retryable());
//! ```

use http::{HeaderMap, StatusCode};

use crate::error::{Error, Kind};

/// How one attempt ended, as seen by a [`Classify`] implementation.
#[derive(Clone, Copy, Debug)]
pub enum Attempt<'a> {
    /// The upstream answered.
    Response {
        /// The response status.
        status: StatusCode,
        /// The response headers.
        headers: &'a HeaderMap,
    },
    /// No response: the attempt failed with this error.
    Error(&'a Error),
}

impl<'a> Attempt<'a> {
    /// The attempt that ended with `result`.
    pub fn of<B>(result: &'a Result<http::Response<B>, Error>) -> Self {
        match result {
            Ok(response) => Attempt::Response {
                status: response.status(),
                headers: response.headers(),
            },
            Err(error) => Attempt::Error(error),
        }
    }
}

/// The classification of one attempt. See the [module docs](self) for the default table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// The upstream is healthy but limiting this client: retry after the wait it names.
    RateLimited,
    /// A failure that may pass: retry, and count it against the upstream's health.
    Transient,
    /// The request itself is wrong: do not retry; the upstream is healthy.
    ClientError,
    /// The upstream failed in a way retrying will not fix: do not retry, count it as a failure.
    ServerError,
    /// The call was refused before reaching the upstream (throttle, open circuit, bad body):
    /// do not retry, and do not count it against the upstream.
    Rejected,
}

impl Outcome {
    /// Whether the retry layer should try again.
    pub fn is_retryable(self) -> bool {
        matches!(self, Outcome::RateLimited | Outcome::Transient)
    }

    /// Whether a circuit breaker should count this attempt as a failure of the upstream.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Transient | Outcome::ServerError)
    }

    /// Whether the call succeeded.
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Success)
    }
}

/// Classifies finished attempts. Implemented by [`DefaultClassifier`] and by every
/// `Fn(Attempt<'_>) -> Outcome` closure that is `Clone + Send + Sync + 'static`.
pub trait Classify: Clone + Send + Sync + 'static {
    /// Classifies one attempt.
    fn classify(&self, attempt: Attempt<'_>) -> Outcome;
}

impl<F> Classify for F
where
    F: Fn(Attempt<'_>) -> Outcome + Clone + Send + Sync + 'static,
{
    fn classify(&self, attempt: Attempt<'_>) -> Outcome {
        self(attempt)
    }
}

/// The classification in the [module docs](self) table.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultClassifier;

impl Classify for DefaultClassifier {
    fn classify(&self, attempt: Attempt<'_>) -> Outcome {
        match attempt {
            Attempt::Response { status, .. } => classify_status(status),
            Attempt::Error(error) => classify_error(error),
        }
    }
}

/// The default classification of a status code.
pub fn classify_status(status: StatusCode) -> Outcome {
    match status.as_u16() {
        429 => Outcome::RateLimited,
        408 | 500 | 502 | 503 | 504 => Outcome::Transient,
        400..=499 => Outcome::ClientError,
        500..=599 => Outcome::ServerError,
        _ => Outcome::Success,
    }
}

/// The default classification of an error.
pub fn classify_error(error: &Error) -> Outcome {
    match error.kind() {
        Kind::Transport | Kind::Timeout => Outcome::Transient,
        Kind::RateLimited { .. } => Outcome::RateLimited,
        Kind::Throttled { .. }
        | Kind::CircuitOpen { .. }
        | Kind::Overloaded { .. }
        | Kind::Body => Outcome::Rejected,
    }
}

/// A tower-http [`ClassifyResponse`](tower_http::classify::ClassifyResponse) as a [`Classify`]
/// (feature `tower-http`), so an application's own idea of failure reaches the breaker and the
/// dead letters.
///
/// tower-http answers success or failure; the crate also needs "retry or not". So the
/// application's classifier can only add failures: an attempt it calls a failure that the
/// [`DefaultClassifier`] calls a success or a client error becomes
/// [`Outcome::ServerError`] (a breaker failure, worth a dead letter, not retried); every other
/// attempt keeps the default classification, so what the crate retries it keeps retrying. A
/// classifier that can only decide at the end of the body (gRPC trailers) counts as success:
/// the layers do not read response bodies. Each classified response is copied (status and
/// headers) to hand tower-http a `Response`.
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use tower_http::classify::StatusInRangeAsFailures;
/// use tower_outbound::classify::{Attempt, Classify, FromTowerHttp, Outcome};
///
/// // An application that treats every 4xx as a failure too.
/// let classify = FromTowerHttp(StatusInRangeAsFailures::new(400..=599));
/// let headers = HeaderMap::new();
/// let outcome = classify.classify(Attempt::Response { status: StatusCode::NOT_FOUND, headers: &headers });
/// assert_eq!(outcome, Outcome::ServerError);
/// let outcome = classify.classify(Attempt::Response { status: StatusCode::SERVICE_UNAVAILABLE, headers: &headers });
/// assert_eq!(outcome, Outcome::Transient, "still retried");
/// ```
#[cfg(feature = "tower-http")]
#[derive(Clone, Copy, Debug, Default)]
pub struct FromTowerHttp<C>(pub C);

#[cfg(feature = "tower-http")]
impl<C> Classify for FromTowerHttp<C>
where
    C: tower_http::classify::ClassifyResponse + Clone + Send + Sync + 'static,
{
    fn classify(&self, attempt: Attempt<'_>) -> Outcome {
        use tower_http::classify::ClassifiedResponse;

        let ours = DefaultClassifier.classify(attempt);
        let failed = match attempt {
            Attempt::Response { status, headers } => {
                let mut response = http::Response::new(());
                *response.status_mut() = status;
                *response.headers_mut() = headers.clone();
                matches!(
                    self.0.clone().classify_response(&response),
                    ClassifiedResponse::Ready(Err(_))
                )
            }
            // Errors are failures for tower-http too.
            Attempt::Error(_) => true,
        };
        match ours {
            Outcome::Success | Outcome::ClientError if failed => Outcome::ServerError,
            ours => ours,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn default_table() {
        let cases = [
            (200, Outcome::Success),
            (204, Outcome::Success),
            (304, Outcome::Success),
            (400, Outcome::ClientError),
            (401, Outcome::ClientError),
            (404, Outcome::ClientError),
            (408, Outcome::Transient),
            (409, Outcome::ClientError),
            (422, Outcome::ClientError),
            (429, Outcome::RateLimited),
            (500, Outcome::Transient),
            (501, Outcome::ServerError),
            (502, Outcome::Transient),
            (503, Outcome::Transient),
            (504, Outcome::Transient),
            (505, Outcome::ServerError),
        ];
        for (code, expected) in cases {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(classify_status(status), expected, "status {code}");
        }
    }

    #[test]
    fn errors() {
        assert!(classify_error(&Error::new(Kind::Transport)).is_retryable());
        assert!(classify_error(&Error::new(Kind::Timeout)).is_failure());
        let open = Error::new(Kind::CircuitOpen {
            retry_in: Duration::from_secs(1),
        });
        assert_eq!(classify_error(&open), Outcome::Rejected);
        assert!(!Outcome::Rejected.is_failure());
        assert!(!Outcome::RateLimited.is_failure());
    }
}
