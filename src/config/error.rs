//! Why a configuration was refused.

use std::fmt;

/// A value of a configuration that was refused, with the full key path of the setting:
///
/// ```text
/// upstreams."api.stripe.com".attempts: 0 is out of range (1 to 100)
/// ```
///
/// Returned by [`OutboundConfig::build`](super::OutboundConfig::build) and
/// [`Settings::apply`](super::Settings::apply). Nothing is clamped: a value outside what a
/// setting accepts is refused here, before any part of the stack is made. (Unknown keys,
/// wrong types and durations without a unit are refused earlier, by the deserializer, with
/// its own error naming the key.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    path: String,
    kind: ConfigErrorKind,
    message: String,
}

/// What is wrong with a refused setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// A value outside the setting's range (zero attempts, a ratio over 1, a zero rate, …).
    OutOfRange,
    /// Settings that do not go together: one of a pair given without the other, a fixed
    /// limit's adaptive settings, two spellings of one upstream.
    Conflict,
    /// An `upstreams` key that is neither a host nor a host and port.
    NotAHost,
    /// More upstreams than [`MAX_UPSTREAM_STACKS`](crate::outbound::MAX_UPSTREAM_STACKS).
    TooManyUpstreams,
    /// Upstreams with settings of their own while the partition is global: every call shares
    /// one state then, so they could not apply.
    GlobalPartition,
}

impl ConfigError {
    pub(crate) fn new(
        path: impl Into<String>,
        kind: ConfigErrorKind,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            path: path.into(),
            kind,
            message: message.into(),
        }
    }

    /// `value` outside `range` (as it is said: "1 to 100").
    pub(crate) fn out_of_range(path: &str, value: impl fmt::Display, range: &str) -> Self {
        Self::new(
            path,
            ConfigErrorKind::OutOfRange,
            format!("{value} is out of range ({range})"),
        )
    }

    /// The same error, its path under `prefix` (`defaults`, `upstreams."api.example.com"`).
    pub(crate) fn within(mut self, prefix: &str) -> Self {
        self.path = match self.path.is_empty() {
            true => prefix.to_owned(),
            false => format!("{prefix}.{}", self.path),
        };
        self
    }

    /// The full key path of the refused setting, as `upstreams."api.stripe.com".attempts`
    /// (upstream names quoted).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong with it.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path.is_empty() {
            true => f.write_str(&self.message),
            false => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}
