//! A typed client for the Lehnz recommendation API, built from the crate's layers.

#[cfg(feature = "lehnz")]
mod batch;
#[cfg(feature = "lehnz")]
mod error;
#[cfg(feature = "lehnz")]
mod key;
#[cfg(feature = "lehnz")]
mod model;
#[cfg(feature = "lehnz")]
mod response;

#[cfg(feature = "lehnz")]
pub use batch::Rejected;
#[cfg(feature = "lehnz")]
pub use error::{FieldError, LehnzError};
#[cfg(feature = "lehnz")]
pub use key::{ApiKey, KeyError, KeyKind};
#[cfg(feature = "lehnz")]
pub use model::{Event, Item, ItemStatus, User, CLIENT_EVENT_ID};
