//! The Lehnz recommendation API: a typed client for it (feature `lehnz`, off by default), built
//! from the crate's layers, and, behind the `sim` feature, a [simulator](sim) of it.
//!
//! The simulator is a real HTTP server on 127.0.0.1 that enforces what Lehnz documents (keys,
//! limits, validation) and can misbehave on purpose, so an integration can be tested on one
//! machine. `docs/lehnz.md` covers the integration and the error table.
//!
//! # Example
//!
//! ```
//! # #[cfg(all(feature = "lehnz", feature = "sim"))]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_outbound::lehnz::sim::Simulator;
//! use tower_outbound::lehnz::{Client, Event, Item, LehnzError};
//!
//! let sim = Simulator::builder().org("acme").start().await?;
//! let keys = sim.keys("acme").unwrap();
//! let client = Client::builder(&keys.secret).base_url(sim.base_url()).build()?;
//!
//! let mut events = vec![Event::new("user-1", "item-9", "view"), Event::new("user-1", "item-3", "click")];
//! let summary = client.ingest_events(&mut events).await?;
//! assert_eq!(summary.accepted, 2);
//! assert!(events[0].client_event_id().is_some(), "stamped once, kept for retries");
//!
//! client.upsert_items(&[Item::new("item-9").attr("title", "Blue mug")]).await?;
//! assert_eq!(sim.stats().items, 1);
//!
//! // A publishable key may not upsert: a typed error that says what to do.
//! let browser = Client::builder(&keys.publishable).base_url(sim.base_url()).build()?;
//! let err = browser.upsert_items(&[Item::new("item-1")]).await.unwrap_err();
//! assert!(matches!(err, LehnzError::Forbidden { .. }));
//! println!("{err}: {}", err.advice());
//! # Ok(())
//! # }
//! # #[cfg(not(all(feature = "lehnz", feature = "sim")))]
//! # fn main() {}
//! ```

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
#[cfg(feature = "lehnz")]
mod stream;

mod summary;

/// Lehnz's API host.
pub const DEFAULT_BASE_URL: &str = "https://api.lehnz.com";
/// Lehnz's events ingestion host.
pub const DEFAULT_INGESTION_URL: &str = "https://ingestion.lehnz.com";

#[cfg(feature = "lehnz")]
pub use batch::Rejected;
#[cfg(feature = "lehnz")]
pub use client::{Client, ClientBuilder, MAX_BODY_BYTES};
#[cfg(feature = "lehnz")]
pub use error::{FieldError, LehnzError};
#[cfg(feature = "lehnz")]
pub use key::{ApiKey, KeyError, KeyKind};
#[cfg(feature = "lehnz")]
pub use model::{Event, Item, ItemStatus, User, CLIENT_EVENT_ID, EVENT_ID_NAMESPACE};
#[cfg(feature = "lehnz")]
pub use stack::{LehnzService, StackConfig, StackStats};
#[cfg(feature = "lehnz")]
pub use stream::{IngestOptions, Progress, DEFAULT_LISTED_REJECTIONS};
pub use summary::Summary;
