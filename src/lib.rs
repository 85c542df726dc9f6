//! Composable [tower] layers for resilient outbound HTTP calls.
//!
//! (crate docs: completed with the stack example once the layers land)

pub mod body;
pub mod classify;
pub mod error;
pub mod idempotency;
pub mod partition;
pub mod rate_limit;
pub mod retry;
pub mod retry_after;

pub use error::{BoxError, Error};
pub use idempotency::IdempotencyKeyLayer;
pub use rate_limit::RateLimitInfo;
pub use retry::{Jitter, RetryLayer};
pub use retry_after::RetryAfterLayer;
