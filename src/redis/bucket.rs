//! GCRA buckets in Redis: one atomic script per acquire, on the Redis server's clock.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

/// The outcome of one acquire against a Redis bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisDecision {
    /// A slot was reserved: send after waiting this long (zero: at once).
    Reserved {
        /// How long to wait before sending.
        wait: Duration,
        /// The bucket's new theoretical arrival time, in microseconds of the Redis clock;
        /// needed to give the slot back.
        tat_micros: u64,
    },
    /// No slot within the allowed wait; nothing was reserved.
    Rejected {
        /// How long the request would have had to wait.
        wait: Duration,
    },
}

/// Acquire: reserve the next slot if it comes within `max_wait`.
///
/// KEYS[1] bucket; ARGV interval µs, burst, max wait µs.
/// Returns {1, wait µs, new TAT} when reserved, {0, wait µs, 0} when rejected.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - burst * interval - now
if wait < 0 then wait = 0 end
if wait > max_wait then
  return {0, wait, 0}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, wait, new_tat}
";

/// Adopt the server's view: at most `remaining` more before `now + reset`.
///
/// KEYS[1] bucket; ARGV interval µs, burst, remaining, reset µs. Only ever pushes the TAT later.
const ADOPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local remaining = tonumber(ARGV[3])
local reset = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
local target = now + reset + burst * interval - (remaining + 1) * interval
if target > tat then
  redis.call('SET', KEYS[1], string.format('%d', target), 'PX', math.ceil((target - now) / 1000) + 1000)
  return 1
end
return 0
";

/// Release: give back a reserved slot if nobody reserved after it.
///
/// KEYS[1] bucket; ARGV the TAT the reservation set, interval µs.
const RELEASE: &str = r"
local tat = redis.call('GET', KEYS[1])
if tat and tonumber(tat) == tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], string.format('%d', tonumber(ARGV[1]) - tonumber(ARGV[2])), 'KEEPTTL')
  return 1
end
return 0
";

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// GCRA buckets kept in Redis and shared by every process that uses the same keys.
#[derive(Clone)]
pub struct RedisBuckets {
    connection: ConnectionManager,
    acquire: Script,
    adopt: Script,
    release: Script,
}

impl std::fmt::Debug for RedisBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBuckets").finish_non_exhaustive()
    }
}

impl RedisBuckets {
    /// Buckets over this connection.
    pub fn new(connection: ConnectionManager) -> Self {
        RedisBuckets {
            connection,
            acquire: Script::new(ACQUIRE),
            adopt: Script::new(ADOPT),
            release: Script::new(RELEASE),
        }
    }

    /// Reserves the next slot of bucket `key` (one slot every `interval`, `burst` at most at
    /// once) if it comes within `max_wait`.
    pub async fn acquire(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
        max_wait: Duration,
    ) -> redis::RedisResult<RedisDecision> {
        let mut connection = self.connection.clone();
        let (reserved, wait, tat): (i64, i64, i64) = self
            .acquire
            .key(key)
            .arg(micros(interval))
            .arg(burst)
            .arg(micros(max_wait))
            .invoke_async(&mut connection)
            .await?;
        let wait = Duration::from_micros(u64::try_from(wait).unwrap_or(0));
        Ok(if reserved == 1 {
            RedisDecision::Reserved {
                wait,
                tat_micros: u64::try_from(tat).unwrap_or(0),
            }
        } else {
            RedisDecision::Rejected { wait }
        })
    }

    /// Pushes bucket `key` so at most `remaining` more requests pass before `reset` from now
    /// (as the upstream said). Never makes the bucket looser.
    pub async fn adopt(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
        remaining: u64,
        reset: Duration,
    ) -> redis::RedisResult<bool> {
        let mut connection = self.connection.clone();
        let changed: i64 = self
            .adopt
            .key(key)
            .arg(micros(interval))
            .arg(burst)
            .arg(remaining)
            .arg(micros(reset))
            .invoke_async(&mut connection)
            .await?;
        Ok(changed == 1)
    }

    /// Gives back the slot a reservation took, if no later reservation was made since.
    pub async fn release(
        &self,
        key: &str,
        tat_micros: u64,
        interval: Duration,
    ) -> redis::RedisResult<bool> {
        let mut connection = self.connection.clone();
        let released: i64 = self
            .release
            .key(key)
            .arg(tat_micros)
            .arg(micros(interval))
            .invoke_async(&mut connection)
            .await?;
        Ok(released == 1)
    }
}
