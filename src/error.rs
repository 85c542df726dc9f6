//! The one error type of every layer in this crate.
//!
//! Every service in `tower-outbound` returns [`Error`]. It is flat on purpose: a layer that
//! receives an [`Error`] from the service it wraps does not nest it, it adds what it knows (the
//! retry layer adds the attempt count and the time waited), so one `match` on [`Error::kind`]
//! answers "what happened" however many layers the call went through.
//!
//! | [`Kind`]                  | produced by                          | what to do                                        |
//! |---------------------------|--------------------------------------|---------------------------------------------------|
//! | [`Kind::Transport`]       | the inner service (connect, I/O, protocol) | look at [`source`](std::error::Error::source) |
//! | [`Kind::Timeout`]         | a timeout around an attempt or the call | the upstream is slow; retry later               |
//! | [`Kind::Body`]            | reading the request body failed      | the caller's body stream is broken                |
//! | [`Kind::RateLimited`]     | the upstream asked for a wait longer than the layers will sleep | reschedule at [`Error::retry_at`] |
//! | [`Kind::Throttled`]       | the local throttle would wait too long | slow down, or raise the throttle's `max_wait`   |
//! | [`Kind::CircuitOpen`]     | the circuit breaker                   | the upstream is failing; wait for the next probe |
//! | [`Kind::Overloaded`]      | the concurrency limit: no place within its `max_wait` | the upstream is saturated; slow down or raise the limit's `max_wait` |
//!
//! Errors from services this crate does not know (say a [`tower::timeout::Timeout`]) are
//! converted with [`Error::from_box`], which recognises [`tower::timeout::error::Elapsed`] as
//! [`Kind::Timeout`] and treats anything else as [`Kind::Transport`].
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_outbound::{Error, error::Kind};
//!
//! let err = Error::new(Kind::Throttled { wait: Duration::from_secs(2) });
//! assert!(err.is_throttled());
//! assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
//! assert_eq!(err.to_string(), "throttled: a request would wait 2s for a token, more than the throttle's max_wait");
//! ```

use std::fmt;
use std::time::{Duration, SystemTime};

use http::uri::Authority;

use crate::handoff::Recorded;

/// A type-erased error, as tower uses them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, with the figures needed to act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// The inner service failed: connection refused or reset, an I/O or protocol error.
    Transport,
    /// An attempt, or the whole logical call, ran out of time.
    Timeout,
    /// Reading the request body failed before it could be sent.
    Body,
    /// The upstream asked for a wait that is longer than the layers are configured to sleep.
    RateLimited {
        /// How long the upstream asked to wait, counted from when the error was made.
        wait: Duration,
        /// The wall-clock time from which a new request is allowed.
        retry_at: SystemTime,
    },
    /// The local throttle would have had to hold the request longer than its `max_wait`.
    Throttled {
        /// How long the request would have waited for a token.
        wait: Duration,
    },
    /// The circuit breaker is open: the upstream has been failing and is not called.
    CircuitOpen {
        /// Time until the breaker lets the next probe through.
        retry_in: Duration,
    },
    /// The upstream's limit on calls in flight was reached, and no place came free within
    /// the limit's `max_wait` (see [`ConcurrencyLayer`](crate::ConcurrencyLayer)).
    Overloaded {
        /// The limit at the time.
        limit: u32,
    },
}

impl Kind {
    /// A short, stable name of the kind, as dead letters store it and traces report it
    /// (`error.type`): `transport`, `timeout`, `body`, `rate_limited`, `throttled`,
    /// `circuit_open`, `overloaded`.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Transport => "transport",
            Kind::Timeout => "timeout",
            Kind::Body => "body",
            Kind::RateLimited { .. } => "rate_limited",
            Kind::Throttled { .. } => "throttled",
            Kind::CircuitOpen { .. } => "circuit_open",
            Kind::Overloaded { .. } => "overloaded",
        }
    }
}

/// The error returned by every service in this crate.
///
/// See the [module docs](self) for the table of kinds. The inner service's own error, when
/// there is one, is reachable through [`source`](std::error::Error::source).
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: Kind,
    attempts: u32,
    waited: Duration,
    upstream: Option<Authority>,
    dead_letter: Option<Recorded>,
    source: Option<BoxError>,
}

impl Error {
    /// A new error of the given kind, with no cause, counted as one attempt.
    pub fn new(kind: Kind) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                attempts: 1,
                waited: Duration::ZERO,
                upstream: None,
                dead_letter: None,
                source: None,
            }),
        }
    }

    /// A new error of the given kind caused by `source`.
    pub fn with_source(kind: Kind, source: impl Into<BoxError>) -> Self {
        let mut err = Error::new(kind);
        err.inner.source = Some(source.into());
        err
    }

    /// Converts any error a service may return into an [`Error`].
    ///
    /// An [`Error`] comes back as it is; [`tower::timeout::error::Elapsed`] becomes
    /// [`Kind::Timeout`]; an error with a [`BodySourceError`]
    /// among its causes (the client could not send a body its source failed to make) becomes
    /// [`Kind::Body`]; anything else becomes [`Kind::Transport`] with the original as its
    /// source.
    pub fn from_box(error: BoxError) -> Self {
        let error = match error.downcast::<Error>() {
            Ok(err) => return *err,
            Err(other) => other,
        };
        if error.is::<tower::timeout::error::Elapsed>() {
            return Error::with_source(Kind::Timeout, error);
        }
        // A client wraps the body's error in its own; the chain is short, and bounded here.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
        for _ in 0..16 {
            match cause {
                Some(err) if err.is::<BodySourceError>() => {
                    return Error::with_source(Kind::Body, error);
                }
                Some(err) => cause = err.source(),
                None => break,
            }
        }
        Error::with_source(Kind::Transport, error)
    }

    /// What went wrong.
    pub fn kind(&self) -> Kind {
        self.inner.kind
    }

    /// How many attempts were made before this error was returned (at least 1).
    pub fn attempts(&self) -> u32 {
        self.inner.attempts
    }

    /// The total time spent waiting between attempts (backoff and Retry-After sleeps).
    pub fn waited(&self) -> Duration {
        self.inner.waited
    }

    /// The upstream (host and port) the failed call was for, when a layer knew it. Never holds
    /// the URI's userinfo.
    pub fn upstream(&self) -> Option<&Authority> {
        self.inner.upstream.as_ref()
    }

    /// The dead letter a [`DeadLetterLayer`](crate::DeadLetterLayer) recorded for this failed
    /// call, when there was one: its id, and whether the sink confirmed the write
    /// ([`Recorded::stored`]). `None` when no dead-letter layer recorded the call.
    pub fn dead_letter(&self) -> Option<&Recorded> {
        self.inner.dead_letter.as_ref()
    }

    pub(crate) fn set_dead_letter(&mut self, recorded: Recorded) {
        self.inner.dead_letter = Some(recorded);
    }

    /// A time limit (a deadline or an attempt timeout) passed: `Kind::Timeout`, with tower's
    /// `Elapsed` as its source, as a tower `Timeout` would give.
    pub(crate) fn timed_out() -> Self {
        Error::with_source(Kind::Timeout, tower::timeout::error::Elapsed::new())
    }

    /// Whether the call was refused by a layer of this crate before it reached the upstream:
    /// throttled, circuit open, held back by the Retry-After gate, or given no place by the
    /// concurrency limit. A refusal says nothing
    /// about the upstream's health, so a circuit breaker counts it neither as a success nor
    /// as a failure.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self.inner.kind,
            Kind::Throttled { .. }
                | Kind::CircuitOpen { .. }
                | Kind::RateLimited { .. }
                | Kind::Overloaded { .. }
        )
    }

    /// How long to wait before trying again, when the error says so: the upstream's wait for
    /// [`Kind::RateLimited`], the throttle's wait for [`Kind::Throttled`], the time to the next
    /// probe for [`Kind::CircuitOpen`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self.inner.kind {
            Kind::RateLimited { wait, .. } | Kind::Throttled { wait } => Some(wait),
            Kind::CircuitOpen { retry_in } => Some(retry_in),
            Kind::Transport | Kind::Timeout | Kind::Body | Kind::Overloaded { .. } => None,
        }
    }

    /// The wall-clock time from which the upstream allows a new request, for
    /// [`Kind::RateLimited`].
    pub fn retry_at(&self) -> Option<SystemTime> {
        match self.inner.kind {
            Kind::RateLimited { retry_at, .. } => Some(retry_at),
            _ => None,
        }
    }

    /// The inner service failed (connection, I/O, protocol).
    pub fn is_transport(&self) -> bool {
        matches!(self.inner.kind, Kind::Transport)
    }

    /// An attempt or the whole call timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self.inner.kind, Kind::Timeout)
    }

    /// The upstream asked for a longer wait than the layers will sleep.
    pub fn is_rate_limited(&self) -> bool {
        matches!(self.inner.kind, Kind::RateLimited { .. })
    }

    /// The local throttle refused to wait that long.
    pub fn is_throttled(&self) -> bool {
        matches!(self.inner.kind, Kind::Throttled { .. })
    }

    /// The circuit breaker is open.
    pub fn is_circuit_open(&self) -> bool {
        matches!(self.inner.kind, Kind::CircuitOpen { .. })
    }

    /// The concurrency limit gave the call no place in time.
    pub fn is_overloaded(&self) -> bool {
        matches!(self.inner.kind, Kind::Overloaded { .. })
    }

    /// Records how many attempts were made and how long was waited between them.
    pub fn set_attempts(&mut self, attempts: u32, waited: Duration) {
        self.inner.attempts = attempts.max(1);
        self.inner.waited = waited;
    }

    /// Records which upstream the call was for, unless a layer closer to it already did. The
    /// userinfo of `upstream` (`user:password@`) is dropped: errors are displayed and logged.
    pub fn set_upstream(&mut self, upstream: Option<&Authority>) {
        if self.inner.upstream.is_none() {
            self.inner.upstream = upstream.map(crate::redact::authority_without_userinfo);
        }
    }

    /// Builder form of [`set_upstream`](Self::set_upstream).
    pub fn for_upstream(mut self, upstream: Option<&Authority>) -> Self {
        self.set_upstream(upstream);
        self
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("attempts", &self.inner.attempts)
            .field("waited", &self.inner.waited);
        if let Some(upstream) = &self.inner.upstream {
            d.field("upstream", upstream);
        }
        if let Some(recorded) = &self.inner.dead_letter {
            d.field("dead_letter", recorded);
        }
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

/// Asks `inner` whether it is ready, with its error as an [`Error`]: every service of the
/// crate answers `poll_ready` so.
pub(crate) fn poll_ready<S, R>(
    inner: &mut S,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<Result<(), Error>>
where
    S: tower_service::Service<R>,
    S::Error: Into<BoxError>,
{
    inner.poll_ready(cx).map_err(|e| Error::from_box(e.into()))
}

/// The wall-clock time `wait` from now, saturating at a far-future time instead of panicking
/// when `wait` is beyond what `SystemTime` can hold.
pub(crate) fn system_time_after(wait: Duration) -> SystemTime {
    let now = SystemTime::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Writes a duration the way people read one: `250ms`, `2s`, `1.5s`, `12m5s`.
pub(crate) struct Human(pub(crate) Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let secs = d.as_secs();
        let millis = d.subsec_millis();
        if secs == 0 {
            // Round up so a wait is never shown shorter than it is.
            let ms = d.as_nanos().div_ceil(1_000_000);
            return write!(f, "{ms}ms");
        }
        if secs >= 60 {
            let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
            if h > 0 {
                write!(f, "{h}h")?;
            }
            if m > 0 {
                write!(f, "{m}m")?;
            }
            if s > 0 || millis > 0 {
                write!(f, "{s}s")?;
            }
            return Ok(());
        }
        if millis == 0 {
            write!(f, "{secs}s")
        } else {
            let tenths = millis.div_ceil(100);
            if tenths == 10 {
                write!(f, "{}s", secs + 1)
            } else {
                write!(f, "{secs}.{tenths}s")
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        let upstream = |f: &mut fmt::Formatter<'_>| match &inner.upstream {
            Some(a) => write!(f, " for upstream {a}"),
            None => Ok(()),
        };
        match inner.kind {
            Kind::Transport => {
                f.write_str("request failed")?;
                upstream(f)?;
            }
            Kind::Timeout => {
                f.write_str("request timed out")?;
                upstream(f)?;
            }
            Kind::Body => f.write_str("reading the request body failed")?,
            Kind::RateLimited { wait, .. } => {
                f.write_str("rate limited")?;
                upstream(f)?;
                write!(
                    f,
                    "; the server asked to wait {}, longer than allowed to sleep; reschedule after that",
                    Human(wait)
                )?;
            }
            Kind::Throttled { wait } => {
                write!(
                    f,
                    "throttled: a request would wait {} for a token, more than the throttle's max_wait",
                    Human(wait)
                )?;
            }
            Kind::CircuitOpen { retry_in } => {
                f.write_str("circuit open")?;
                upstream(f)?;
                write!(f, "; next probe in {}", Human(retry_in))?;
            }
            Kind::Overloaded { limit } => {
                f.write_str("overloaded")?;
                upstream(f)?;
                write!(
                    f,
                    "; {limit} calls were in flight, the concurrency limit, and none finished within its max_wait"
                )?;
            }
        }
        if inner.attempts > 1 {
            write!(
                f,
                " (after {} attempts, {} waited)",
                inner.attempts,
                Human(inner.waited)
            )?;
        }
        if let Some(source) = &inner.source {
            if !matches!(inner.kind, Kind::Timeout) {
                write!(f, ": {source}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A body source (`body::BodySource`) could not make an attempt's body: its maker failed (the
/// file is gone), or the body came out longer or shorter than the length it declared. The call
/// fails with [`Kind::Body`] and is not retried: the source would most likely fail again. An
/// error of the body it made, once sending started, is the body's own error.
#[derive(Debug)]
pub struct BodySourceError(pub(crate) BoxError);

impl fmt::Display for BodySourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the request body's source failed: {}", self.0)
    }
}

impl std::error::Error for BodySourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_box_keeps_an_error_as_it_is() {
        let mut original = Error::new(Kind::CircuitOpen {
            retry_in: Duration::from_secs(12),
        });
        original.set_attempts(3, Duration::from_secs(1));
        let back = Error::from_box(Box::new(original));
        assert_eq!(
            back.kind(),
            Kind::CircuitOpen {
                retry_in: Duration::from_secs(12)
            }
        );
        assert_eq!(back.attempts(), 3);
    }

    #[test]
    fn from_box_recognises_tower_timeouts() {
        let err = Error::from_box(Box::new(tower::timeout::error::Elapsed::new()));
        assert!(err.is_timeout());
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn from_box_treats_anything_else_as_transport() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::from_box(Box::new(io));
        assert!(err.is_transport());
        assert_eq!(err.to_string(), "request failed: refused");
    }

    #[test]
    fn display_names_the_upstream_and_the_wait() {
        let authority: Authority = "api.example.com".parse().unwrap();
        let err = Error::new(Kind::CircuitOpen {
            retry_in: Duration::from_secs(12),
        })
        .for_upstream(Some(&authority));
        assert_eq!(
            err.to_string(),
            "circuit open for upstream api.example.com; next probe in 12s"
        );
    }

    #[test]
    fn error_text_never_shows_userinfo() {
        let authority: Authority = "bob:hunter2@api.example.com:8443".parse().unwrap();
        let err = Error::new(Kind::Timeout).for_upstream(Some(&authority));
        assert_eq!(err.upstream().unwrap().as_str(), "api.example.com:8443");
        let text = format!("{err} {err:?}");
        assert!(!text.contains("hunter2") && !text.contains("bob"), "{text}");
    }

    #[test]
    fn display_reports_attempts() {
        let mut err = Error::with_source(Kind::Transport, "connection reset");
        err.set_attempts(4, Duration::from_millis(1500));
        assert_eq!(
            err.to_string(),
            "request failed (after 4 attempts, 1.5s waited): connection reset"
        );
    }

    #[test]
    fn human_durations_round_up() {
        assert_eq!(Human(Duration::from_micros(1)).to_string(), "1ms");
        assert_eq!(Human(Duration::from_millis(250)).to_string(), "250ms");
        assert_eq!(Human(Duration::from_millis(1999)).to_string(), "2s");
        assert_eq!(Human(Duration::from_secs(725)).to_string(), "12m5s");
        assert_eq!(Human(Duration::from_secs(3600)).to_string(), "1h");
    }
}
