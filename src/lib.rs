//! Composable [tower] layers for resilient outbound HTTP calls.
//!
//! (crate docs: completed with the stack example once the layers land)

pub mod body;
pub mod classify;
pub mod error;
#[cfg(any(feature = "lehnz", feature = "sim"))]
pub mod lehnz;
pub mod partition;
pub mod rate_limit;
pub mod retry;

pub use error::{BoxError, Error};
pub use rate_limit::RateLimitInfo;
