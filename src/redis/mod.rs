//! State shared by many processes through Redis (feature `redis`).
//!
//! A rate limit belongs to the upstream account, not to one process: eight workers with a
//! bucket each overrun the limit eightfold. The pieces here keep that state in Redis:
//!
//! - [`RedisBuckets`]: GCRA buckets, one atomic Lua script per acquire that reads the Redis
//!   server's `TIME`, so clock skew between machines cannot break the limit. Keys expire on
//!   their own once idle.

mod bucket;

pub use bucket::{RedisBuckets, RedisDecision};
