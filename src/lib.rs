//! Composable [tower] layers for resilient outbound HTTP calls.
//!
//! Outbound calls fail: 429s, 5xx, connection resets, timeouts. Retrying naively makes it worse
//! (thundering herds, duplicate charges, workers stuck on a dead upstream). The layers here wrap
//! any `Service<http::Request<B>>` — a hyper-util client, a reqwest client behind an adapter, a
//! call made from an axum handler — and each does one job:
//!
//! | layer                    | job                                                                  |
//! |--------------------------|----------------------------------------------------------------------|
//! | [`IdempotencyKeyLayer`]  | one `Idempotency-Key` per logical write, the same on every retry     |
//! | [`DeadLetterLayer`]      | records every call that finally fails, to a [`Sink`]; [`dead_letter::replay`] sends them again |
//! | [`deadline::DeadlineLayer`] | bounds a whole call, attempts and waits together (also [`RetryLayer::deadline`]) |
//! | [`RetryLayer`]           | capped exponential backoff with jitter, attempt cap, wait budget; the server's `Retry-After` wins |
//! | [`CircuitBreakerLayer`]  | fails fast while the upstream is down, probes it, recovers           |
//! | [`RetryAfterLayer`]      | a gate shared by all clones: once the server asks for a pause, nobody calls it until then |
//! | [`ThrottleLayer`]        | token-bucket pacing below the limit, adaptive to the server's view, shareable through Redis |
//! | [`ConcurrencyLayer`]     | a limit on calls in flight per upstream, fixed or adaptive to the server's overload signals |
//! | [`timeout::TimeoutLayer`] | ends a hung attempt; its timer is armed only when the attempt is pending |
//!
//! [`Outbound`] puts them together in the right order with one call, with presets for
//! user-facing and background work. Every layer returns the one [`Error`] type; the server's
//! rate-limit headers are parsed once into a [`RateLimitInfo`] response extension that every
//! layer and the caller read. See `docs/design.md` for where each layer belongs and why.
//! [`config`] builds the stack from a configuration file (any serde format), with settings per
//! upstream.
//!
//! Features (none is on by default): `lehnz` adds [`lehnz::Client`], a typed client for the Lehnz
//! recommendation API built from these layers; `sim` adds its simulator,
//! [`lehnz::sim`]; `redis` adds the Redis-backed throttle store and dead-letter stream;
//! `metrics` exports the signals to alert on; `tower-http` adapts tower-http's classifiers and
//! request-id makers.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_outbound::body::ReplayBody;
//! use tower_outbound::{IdempotencyKeyLayer, RetryAfterLayer, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_outbound::Error> {
//! // Stands in for a hyper-util `Client<_, ReplayBody>`.
//! let upstream = tower::service_fn(|req: Request<ReplayBody>| async move {
//!     Ok::<_, std::convert::Infallible>(Response::new(req.headers().contains_key("idempotency-key")))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(IdempotencyKeyLayer::new())                      // once per logical call
//!     .layer(RetryLayer::new().max_attempts(4))               // sees every attempt
//!     .layer(RetryAfterLayer::new().max_wait(Duration::from_secs(30))) // shared gate
//!     .service(upstream);
//!
//! let request = Request::post("https://api.example.com/v1/charges").body(String::from("{}")).unwrap();
//! let response = client.oneshot(request).await?;
//! assert!(*response.body(), "the write carried an idempotency key");
//! # Ok(()) }
//! ```

// On docs.rs (`--cfg docsrs`, nightly), every item behind a feature is marked with the feature
// that enables it.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
pub mod circuit;
pub mod classify;
pub mod concurrency;
pub mod config;
pub mod dead_letter;
pub mod deadline;
pub mod error;
pub mod handoff;
mod head;
pub mod hedge;
pub mod idempotency;
#[cfg(any(feature = "lehnz", feature = "sim"))]
pub mod lehnz;
mod line;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod outbound;
pub mod partition;
pub mod rate_limit;
pub mod redact;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "reqwest")]
pub mod reqwest;
pub mod retry;
pub mod retry_after;
mod sync;
#[cfg(test)]
mod testing;
pub mod throttle;
pub mod timeout;

pub use circuit::{CircuitBreakerLayer, CircuitState};
pub use concurrency::ConcurrencyLayer;
pub use dead_letter::{DeadLetter, DeadLetterLayer, JsonLinesSink, MemorySink, Sink};
pub use error::{BoxError, Error};
pub use hedge::HedgeLayer;
pub use idempotency::IdempotencyKeyLayer;
pub use outbound::Outbound;
pub use rate_limit::RateLimitInfo;
pub use retry::{Jitter, RetryLayer};
pub use retry_after::RetryAfterLayer;
pub use throttle::ThrottleLayer;
