//! State shared by many processes through Redis (feature `redis`).
//!
//! A rate limit belongs to the upstream account, not to one process: eight workers with a
//! bucket each overrun the limit eightfold. The pieces here keep that state in Redis:
//!
//! - [`RedisStore`]: a [`BucketStore`](crate::throttle::BucketStore) for
//!   [`ThrottleLayer`](crate::ThrottleLayer). One atomic Lua script per acquire, on the Redis
//!   server's clock; adaptive updates shared by all workers; a timeout on every call and a
//!   bounded [`Fallback`] while Redis is away: by default each process's share of the
//!   budget, the number of processes learned from a heartbeat in Redis.
//! - [`RedisStreamSink`]: a dead-letter [`Sink`](crate::Sink) on a Redis Stream, so any
//!   worker can replay what another dead-lettered, with a hard cap that refuses letters
//!   rather than evicting them.
//! - [`RedisBuckets`]: the scripts themselves, for other uses.
//! - [`connect`] (and [`RedisStore::connect`], which also checks what the connection may do):
//!   `redis://`, ACL users (`redis://user:password@host:6379/`), and with the `redis-tls`
//!   feature `rediss://` (rustls, the system's roots) or a private CA and client certificate
//!   (`connect_tls` with a `RedisTls`). A failure that can be known before the first request —
//!   no answer, a refused password, a failed handshake, a user the ACL does not let run the
//!   scripts — is a typed [`RedisSetupError`] then, never a fallback at the first request; no
//!   password reaches its text, a log or a stat.
//!
//! See `docs/distributed.md` for running N workers against one budget.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_outbound::redis::{Fallback, RedisStore};
//! use tower_outbound::ThrottleLayer;
//!
//! // Workers share 1,000 requests per 15 minutes; without Redis each keeps to its share,
//! // the number of workers learned from Redis (the default, `Fallback::Learned`).
//! let store = RedisStore::open("redis://127.0.0.1:6379/")?
//!     .prefix("billing-api")
//!     .fallback(Fallback::Learned);
//! let throttle = ThrottleLayer::new(1000, Duration::from_secs(900)).store(store);
//! # Ok::<(), redis::RedisError>(())
//! ```

mod bucket;
mod connect;
mod connection;
mod lease;
mod store;
mod stream;

pub use bucket::{RedisBuckets, RedisDecision};
#[cfg(feature = "redis-cluster")]
pub use connect::connect_cluster;
pub use connect::{connect, RedisSetupError, SetupErrorKind};
#[cfg(feature = "redis-tls")]
pub use connect::{connect_tls, RedisTls};
pub use connection::RedisConnection;
pub use store::{Fallback, RedisStore, RedisStoreStats};
pub use stream::RedisStreamSink;
