//! The Lehnz recommendation API: a typed client for it (feature `lehnz`, on by default), built
//! from the crate's layers, and, behind the `sim` feature, a [simulator](sim) of it.
//!
//! The simulator is a real HTTP server on 127.0.0.1 that enforces what Lehnz documents (keys,
//! limits, validation) and can misbehave on purpose, so an integration can be tested on one
//! machine.

#[cfg(feature = "lehnz")]
mod batch;
#[cfg(feature = "lehnz")]
mod client;
#[cfg(feature = "lehnz")]
mod error;
#[cfg(feature = "lehnz")]
mod key;
#[cfg(feature = "lehnz")]
mod model;
#[cfg(feature = "lehnz")]
mod response;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "lehnz")]
mod stack;

/// Lehnz's API host.
pub const DEFAULT_BASE_URL: &str = "https://api.lehnz.com";
/// Lehnz's events ingestion host.
pub const DEFAULT_INGESTION_URL: &str = "https://ingestion.lehnz.com";

#[cfg(feature = "lehnz")]
pub use batch::Rejected;
#[cfg(feature = "lehnz")]
pub use client::{Client, ClientBuilder, LehnzService, Summary, MAX_BODY_BYTES};
#[cfg(feature = "lehnz")]
pub use error::{FieldError, LehnzError};
#[cfg(feature = "lehnz")]
pub use key::{ApiKey, KeyError, KeyKind};
#[cfg(feature = "lehnz")]
pub use model::{Event, Item, ItemStatus, User, CLIENT_EVENT_ID};
#[cfg(feature = "lehnz")]
pub use stack::{StackConfig, StackStats};
