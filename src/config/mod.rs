//! Settings from configuration files: timeouts, attempts, budgets, breaker thresholds, per
//! upstream, tuned by operators without a rebuild.
//!
//! [`OutboundConfig`] is a plain [`serde::Deserialize`] type: read it from TOML, YAML, JSON or
//! the environment with whichever serde format the application already uses (the crate
//! depends on none), then [`build`](OutboundConfig::build) the [`Outbound`] stack:
//!
//! 1. the `preset` (`"new"`, `"user_facing"`, `"background"`, `"latency_sensitive"`; default `"new"`: see the
//!    [presets](crate::outbound)) and the `partition` (`"upstream"`, the default, or
//!    `"global"`);
//! 2. the `defaults` laid over it ([`Settings::apply`]: each key given replaces that setting,
//!    each left out keeps the preset's);
//! 3. for each entry of `upstreams`, a stack of its own for that host
//!    ([`Outbound::upstream`]): the preset, the `defaults`, then the upstream's settings. It
//!    keeps its own breaker, gate, budget, limit and bucket for that host, and shares the
//!    dead letters of the main stack.
//!
//! ```toml
//! preset = "background"
//!
//! [defaults]
//! attempts = 4
//! deadline = "30s"
//! breaker = { failure_rate = 0.5, minimum_calls = 20 }
//!
//! [upstreams."api.stripe.com"]
//! attempts = 2
//! max_total_delay = "5s"
//! throttle = { rate = 100, per = "1s" }
//!
//! [upstreams."search.internal:8443"]
//! attempt_timeout = "500ms"
//! concurrency = { limit = 16, max_wait = "1s" }
//! ```
//!
//! Every key, its values and the setter it maps to are listed on [`Settings`]. Durations are
//! text with a unit (`"250ms"`, `"15m"`, `"1h30m"`, `"1.5s"`), read by
//! [`parse_duration`](crate::rate_limit::parse_duration); a plain number is refused with a
//! message saying to add a unit. Parts that can be left out take `"off"`.
//!
//! Nothing is clamped silently. Unknown keys are refused by the deserializer, naming the key
//! (every type here denies unknown fields); values out of a setting's range, keys that go in
//! pairs given alone, a name in `upstreams` that is not a host, more than
//! [`MAX_UPSTREAM_STACKS`] upstreams, and upstreams with
//! a global partition are refused by `build` with a [`ConfigError`] naming the full key path:
//!
//! ```text
//! upstreams."api.stripe.com".attempts: 0 is out of range (1 to 100)
//! ```
//!
//! A stack made in code takes one section the same way with [`Settings::apply`].
//!
//! # Example
//!
//! ```
//! use tower_outbound::config::{ConfigErrorKind, OutboundConfig};
//!
//! let config: OutboundConfig = serde_json::from_str(r#"{
//!     "preset": "user_facing",
//!     "defaults": { "attempt_timeout": "1.5s", "breaker": { "failure_rate": 0.25 } },
//!     "upstreams": { "api.stripe.com": { "attempts": 1, "deadline": "off" } }
//! }"#).unwrap();
//! let outbound = config.build().unwrap();
//! assert_eq!(outbound.upstream_stacks().count(), 1);
//!
//! // Out of range: refused, with the key's full path.
//! let bad: OutboundConfig =
//!     serde_json::from_str(r#"{ "upstreams": { "api.stripe.com": { "attempts": 0 } } }"#).unwrap();
//! let error = bad.build().unwrap_err();
//! assert_eq!(error.kind(), ConfigErrorKind::OutOfRange);
//! assert_eq!(error.to_string(), r#"upstreams."api.stripe.com".attempts: 0 is out of range (1 to 100)"#);
//!
//! // A duration without a unit, and an unknown key: refused by the deserializer.
//! let no_unit = serde_json::from_str::<OutboundConfig>(r#"{ "defaults": { "deadline": 30 } }"#);
//! assert!(no_unit.unwrap_err().to_string().contains("has no unit"));
//! let unknown = serde_json::from_str::<OutboundConfig>(r#"{ "defaults": { "atempts": 3 } }"#);
//! assert!(unknown.unwrap_err().to_string().contains("unknown field `atempts`"));
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::outbound::{Host, MAX_UPSTREAM_STACKS};
use crate::partition::Scope;
use crate::Outbound;

mod duration;
mod error;
mod settings;

pub use error::{ConfigError, ConfigErrorKind};
pub use settings::{
    BreakerSettings, BudgetSettings, ConcurrencySettings, GateSettings, HedgeSettings, LimitKind,
    Settings, ThrottleSettings,
};

/// A whole stack's configuration: a preset, settings for every upstream, and settings for
/// some. See the [module docs](self) for the format and [`build`](Self::build) for how it
/// becomes an [`Outbound`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct OutboundConfig {
    /// The stack the settings are laid over (default [`Preset::New`]).
    #[serde(default)]
    pub preset: Preset,
    /// Whether state is kept per upstream (the default) or shared by every call
    /// ([`Outbound::partition`]); settings per upstream need the default.
    #[serde(default)]
    pub partition: Scope,
    /// Settings for every upstream.
    #[serde(default)]
    pub defaults: Settings,
    /// Settings for some upstreams, by host (`"api.example.com"`: every scheme and port) or
    /// host and port (`"api.example.com:8443"`), laid over the `defaults`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstreams: BTreeMap<String, Settings>,
}

/// The stack a configuration starts from: one of [`Outbound`]'s presets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Preset {
    /// [`Outbound::new`], the general-purpose stack (`"new"`).
    #[default]
    New,
    /// [`Outbound::user_facing`] (`"user_facing"`).
    UserFacing,
    /// [`Outbound::background`] (`"background"`).
    Background,
    /// [`Outbound::latency_sensitive`] (`"latency_sensitive"`).
    LatencySensitive,
}

impl Preset {
    /// The preset's stack, with state of its own.
    pub fn outbound(self) -> Outbound {
        match self {
            Preset::New => Outbound::new(),
            Preset::UserFacing => Outbound::user_facing(),
            Preset::Background => Outbound::background(),
            Preset::LatencySensitive => Outbound::latency_sensitive(),
        }
    }
}

impl OutboundConfig {
    /// The stack: the preset with the partition, the `defaults` laid over it, and for each
    /// upstream a stack of its own ([`Outbound::upstream`]) made of the preset, the
    /// `defaults` and the upstream's settings, sharing the main stack's dead letters. Each
    /// call makes new state (breakers, gates, buckets, budgets, counters): build once, and
    /// share the stack or the services made from it.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] with the full key path (`defaults.breaker.failure_rate`,
    /// `upstreams."api.stripe.com".attempts`) for a value out of its range or settings that do
    /// not go together ([`ConfigErrorKind::OutOfRange`], [`ConfigErrorKind::Conflict`]); for
    /// an `upstreams` name that is not a host or host and port
    /// ([`ConfigErrorKind::NotAHost`]), or two names for one host
    /// ([`ConfigErrorKind::Conflict`]); for more than
    /// [`MAX_UPSTREAM_STACKS`] upstreams
    /// ([`ConfigErrorKind::TooManyUpstreams`]); for upstreams with `partition = "global"`
    /// ([`ConfigErrorKind::GlobalPartition`]).
    pub fn build(&self) -> Result<Outbound, ConfigError> {
        let base = || self.preset.outbound().partition(self.partition);
        let mut outbound = self
            .defaults
            .apply(base())
            .map_err(|e| e.within("defaults"))?;
        if self.upstreams.is_empty() {
            return Ok(outbound);
        }
        if self.partition == Scope::Global {
            return Err(ConfigError::new(
                "upstreams",
                ConfigErrorKind::GlobalPartition,
                "settings per upstream need partition = \"upstream\": with a global partition \
                 every call shares one state",
            ));
        }
        if self.upstreams.len() > MAX_UPSTREAM_STACKS {
            return Err(ConfigError::new(
                "upstreams",
                ConfigErrorKind::TooManyUpstreams,
                format!(
                    "{} upstreams; at most {MAX_UPSTREAM_STACKS}",
                    self.upstreams.len()
                ),
            ));
        }
        let mut hosts: Vec<(Host, &str)> = Vec::with_capacity(self.upstreams.len());
        for (name, settings) in &self.upstreams {
            let path = upstream_path(name);
            let Some(host) = Host::parse(name) else {
                return Err(ConfigError::new(
                    path,
                    ConfigErrorKind::NotAHost,
                    "not a host or host:port (such as \"api.example.com\" or \
                     \"api.example.com:8443\"; no scheme, path or userinfo)",
                ));
            };
            if let Some((_, other)) = hosts.iter().find(|(h, _)| *h == host) {
                return Err(ConfigError::new(
                    path,
                    ConfigErrorKind::Conflict,
                    format!("the same host as {}", quoted(other)),
                ));
            }
            hosts.push((host, name));
            let defaults = self
                .defaults
                .apply(base())
                .map_err(|e| e.within("defaults"))?;
            let stack = settings
                .apply(defaults)
                .map_err(|e| e.within(&path))?
                .dead_letters(outbound.dead_letter_layer().cloned());
            outbound = outbound.upstream(name.as_str(), stack);
        }
        Ok(outbound)
    }
}

impl TryFrom<OutboundConfig> for Outbound {
    type Error = ConfigError;

    /// [`OutboundConfig::build`].
    fn try_from(config: OutboundConfig) -> Result<Self, ConfigError> {
        config.build()
    }
}

impl TryFrom<&OutboundConfig> for Outbound {
    type Error = ConfigError;

    /// [`OutboundConfig::build`].
    fn try_from(config: &OutboundConfig) -> Result<Self, ConfigError> {
        config.build()
    }
}

/// `upstreams."name"`, the name quoted and escaped, at most 255 characters of it.
fn upstream_path(name: &str) -> String {
    format!("upstreams.{}", quoted(name))
}

fn quoted(name: &str) -> String {
    let shown: String = name.chars().take(255).collect();
    format!("{shown:?}")
}

#[cfg(test)]
mod tests;
