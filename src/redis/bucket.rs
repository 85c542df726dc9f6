//! GCRA buckets in Redis: one atomic script per acquire, on the Redis server's clock.

use std::time::Duration;

use super::RedisConnection;
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

/// A Lua function reading one process's entry of the outstanding counts (KEYS[3] of the grant
/// scripts, KEYS[2] of [`ADOPT`]): `reported:at:granted:before:epoch`. `reported` is what the
/// process last wrote with a reply's report, at `at`; it counts while fresh (written within
/// `fresh` µs). `granted` and `before` are the slots Redis granted it since, in the epoch of
/// `fresh` µs that began at `epoch` and in the one before: a grant counts for at least `fresh`
/// after it was made and at most twice that, however long ago the process last reported, and a
/// process that is granted slots but never reports counts at most two epochs of grants.
/// Returns the entry as of `now` (a stale report as 0, epochs moved on); an entry it cannot
/// read counts nothing.
macro_rules! outstanding_of {
    () => {
        r"
local function outstanding_of(entry, now, fresh)
  local r, at, cur, prev, epoch =
    string.match(entry or '', '^(%d+):(%d+):(%d+):(%d+):(%d+)$')
  if not r then return 0, 0, 0, 0, now end
  r, at, cur, prev, epoch =
    tonumber(r), tonumber(at), tonumber(cur), tonumber(prev), tonumber(epoch)
  if at + fresh < now then r = 0 end
  if epoch + 2 * fresh <= now then
    cur, prev, epoch = 0, 0, now
  elseif epoch + fresh <= now then
    cur, prev, epoch = 0, cur, epoch + fresh
  end
  return r, at, cur, prev, epoch
end
"
    };
}

/// The end of a script that granted `granted` slots to `member`: they are added to the
/// member's grants of the current epoch (see [`outstanding_of!`]), which count among its
/// outstanding requests (see [`ADOPT`]). No member (`''`): nothing is counted.
macro_rules! count_grant {
    () => {
        r"
if member ~= '' then
  local r, at, cur, prev, epoch = outstanding_of(redis.call('HGET', KEYS[3], member), now, fresh)
  redis.call('HSET', KEYS[3], member,
    string.format('%d:%d:%d:%d:%d', r, at, cur + granted, prev, epoch))
  redis.call('PEXPIRE', KEYS[3], math.ceil(2 * fresh / 1000) + 1000)
end
"
    };
}

/// Acquire: reserve the next slot if it comes within `max_wait`, honoring the server's view.
///
/// KEYS[1] the bucket's TAT, KEYS[2] the adopted view (a hash: until, left, reported, pause),
/// KEYS[3] the processes' outstanding counts; ARGV interval µs, burst, max wait µs, this
/// process's member name (empty: none), how long its count stays fresh µs. Returns {1, wait µs,
/// new TAT} when reserved, {0, wait µs, 0} when rejected (nothing changed).
const ACQUIRE: &str = concat!(
    outstanding_of!(),
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local not_before = now
local viewing = false
local view = redis.call('HMGET', KEYS[2], 'until', 'left', 'pause')
local pause = tonumber(view[3] or 0)
if pause > not_before then not_before = pause end
local view_until = tonumber(view[1] or 0)
if now < view_until then
  if tonumber(view[2]) <= 0 then
    if view_until > not_before then not_before = view_until end
  else
    viewing = true
  end
end
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
-- Paced from the pause's end: requests that waited out a pause leave as one burst, then at
-- the rate.
if tat < not_before then tat = not_before end
local new_tat = tat + interval
local go_at = new_tat - burst * interval
if go_at < not_before then go_at = not_before end
local wait = go_at - now
if wait < 0 then wait = 0 end
if wait > max_wait then
  return {0, wait, 0}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
if viewing then redis.call('HINCRBY', KEYS[2], 'left', -1) end
local member, fresh, granted = ARGV[4], tonumber(ARGV[5]), 1
",
    count_grant!(),
    r"return {1, wait, new_tat}
"
);

/// Adopt the server's view, in one of two ways (ARGV[4]): `0` as [`BucketStore::adopt`]
/// (`remaining` more requests until `now + reset`; within one window, resets within the slack
/// of each other, the count only tightens), `1` as a reply's report
/// ([`BucketStore::adopt_report`]): `remaining` less the requests not yet counted is what is
/// left, and a reply that reports less than any earlier one of the same window replaces the
/// count, up or down; one that does not only tightens it. The earliest reset of a window wins.
/// `remaining: 0` is a pause until the reset (the longest named wins), kept apart from the
/// window's count as the in-process bucket keeps it. A word whose reset comes well before the
/// live count's (by more than the slack) is from a window that already ended, arriving late:
/// it leaves the count as it is (windows only move forward).
///
/// The requests not yet counted are those of the whole fleet: each reporting process writes
/// how many of its own are outstanding (requests sent and not answered, and slots leased and
/// not yet spent) into KEYS[2] under its member name, with the time, and the grant scripts add
/// the slots Redis grants it since (see [`outstanding_of!`]); the sum of what each entry counts
/// now, with ARGV[7] µs for `fresh`, is the fleet's (entries that count nothing are dropped).
///
/// [`BucketStore::adopt`]: crate::throttle::BucketStore::adopt
/// [`BucketStore::adopt_report`]: crate::throttle::BucketStore::adopt_report
///
/// KEYS[1] the view, KEYS[2] the outstanding counts; ARGV remaining, reset µs, slack µs, mode,
/// member, this member's outstanding, how long an entry counts µs. Returns the
/// fleet's outstanding requests taken from `remaining` (0 when adopting).
const ADOPT: &str = concat!(
    outstanding_of!(),
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local remaining = tonumber(ARGV[1])
local view_until = now + tonumber(ARGV[2])
local slack = tonumber(ARGV[3])
local report = ARGV[4] == '1'
local old = redis.call('HMGET', KEYS[1], 'until', 'left', 'reported', 'pause')
local pause = tonumber(old[4] or 0)
local uncounted = 0
if report then
  local stale = tonumber(ARGV[7])
  -- This process's report counts every grant made to it so far: they start over.
  redis.call('HSET', KEYS[2], ARGV[5], string.format('%d:%d:0:0:%d', tonumber(ARGV[6]), now, now))
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    local r, _, cur, prev = outstanding_of(all[i + 1], now, stale)
    if r + cur + prev == 0 then
      redis.call('HDEL', KEYS[2], all[i])
    else
      uncounted = uncounted + r + cur + prev
    end
  end
  redis.call('PEXPIRE', KEYS[2], math.ceil(2 * stale / 1000) + 1000)
end
-- The view lives as long as the later of its count's end and its pause.
local keep = tonumber(old[1] or 0)
if remaining <= 0 then
  if view_until > pause then pause = view_until end
  redis.call('HSET', KEYS[1], 'pause', string.format('%d', pause))
else
  local left = remaining - uncounted
  if left < 0 then left = 0 end
  local reported = remaining
  local old_until = tonumber(old[1] or 0)
  if now < old_until and view_until + slack < old_until then
    -- A reset well before the live view's: the word of a window that ended, arriving late.
    -- The live count stays as it is.
    left = tonumber(old[2] or 0)
    reported = tonumber(old[3] or old[2] or 0)
    view_until = old_until
  elseif now < old_until and math.abs(view_until - old_until) <= slack then
    if old_until < view_until then view_until = old_until end
    local old_left = tonumber(old[2] or 0)
    local old_reported = tonumber(old[3] or old[2] or 0)
    if not report or remaining >= old_reported then
      if old_left < left then left = old_left end
      if old_reported < reported then reported = old_reported end
    end
  end
  redis.call('HSET', KEYS[1], 'until', string.format('%d', view_until), 'left', left,
    'reported', reported)
  keep = view_until
end
if pause > keep then keep = pause end
local ttl = 1000
if keep > now then ttl = math.ceil((keep - now) / 1000) + 1000 end
redis.call('PEXPIRE', KEYS[1], ttl)
return uncounted
"
);

/// Lease: reserve up to `n` consecutive slots at once, those that come within `horizon`,
/// honoring the server's view as an acquire does (a paused bucket leases from the pause's end,
/// a view with `left` requests leases at most that many).
///
/// KEYS as ACQUIRE; ARGV interval µs, burst, n, horizon µs, m (the fewest slots worth a lease),
/// this process's member name, how long its count stays fresh µs.
/// Returns {slots, the TAT before the lease relative to now (µs, may be negative), the earliest
/// allowed time relative to now (µs, 0 without a pause), the new TAT}; slot j (from 0) may go
/// at max(tat + (j + 1 − burst) · interval, not_before). {0, µs until m slots would come within
/// the horizon, 0, 0} when fewer do now (a view with fewer left than m lowers m to it).
const LEASE: &str = concat!(
    outstanding_of!(),
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local horizon = tonumber(ARGV[4])
local m = tonumber(ARGV[5])
local not_before = now
local viewing = false
local left = n
local view = redis.call('HMGET', KEYS[2], 'until', 'left', 'pause')
local pause = tonumber(view[3] or 0)
if pause > not_before then not_before = pause end
local view_until = tonumber(view[1] or 0)
if now < view_until then
  left = tonumber(view[2])
  if left <= 0 then
    if view_until > not_before then not_before = view_until end
  else
    viewing = true
  end
end
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < not_before then tat = not_before end
if m > n then m = n end
if viewing and left < m then m = left end
if m < 1 then m = 1 end
-- When m slots come within the horizon: the m-th slot's time, less the horizon.
local ready = tat + (m - burst) * interval
if ready < not_before then ready = not_before end
ready = ready - horizon
if ready > now then
  return {0, ready - now, 0, 0}
end
local fit = math.floor((now + horizon + burst * interval - tat) / interval)
if fit < n then n = fit end
if viewing and left < n then n = left end
if n < m then n = m end
local new_tat = tat + n * interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
if viewing then redis.call('HINCRBY', KEYS[2], 'left', -n) end
local member, fresh, granted = ARGV[6], tonumber(ARGV[7]), n
",
    count_grant!(),
    r"return {n, tat - now, not_before - now, new_tat}
"
);

/// Give back the unused end of a lease, or the slot of one reservation (one slot unused), if
/// nobody reserved after it.
///
/// KEYS[1] the bucket's TAT; ARGV the TAT the lease or reservation set, the slots unused,
/// interval µs.
const GIVE_BACK: &str = r"
local tat = redis.call('GET', KEYS[1])
if tat and tonumber(tat) == tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], string.format('%d', tonumber(ARGV[1]) - tonumber(ARGV[2]) * tonumber(ARGV[3])), 'KEEPTTL')
  return 1
end
return 0
";

/// A lease of consecutive slots of a Redis bucket, as the [`LEASE`] script granted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Granted {
    /// Slots granted (0: none within the horizon).
    pub(crate) slots: u32,
    /// The bucket's TAT before the lease, relative to the Redis clock's now (µs).
    pub(crate) tat: i64,
    /// The earliest any slot may go, relative to now (µs).
    pub(crate) not_before: i64,
    /// The bucket's new TAT (µs of the Redis clock), to give the unused end back.
    pub(crate) new_tat: u64,
}

/// How long a process's count of outstanding requests in Redis is taken into the fleet's after
/// it was written by a reply's report, and the least a grant counts there after it was made
/// (at most twice this; see [`outstanding_of!`]): a process that stopped stops counting after
/// that.
pub(crate) const OUTSTANDING_FRESH: Duration = Duration::from_secs(2);

/// Durations passed to the scripts are kept below 2^50 µs (about 35 years): Lua numbers are
/// doubles, exact only up to 2^53, and the scripts add them to the Redis clock.
const MAX_MICROS: u64 = 1 << 50;

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .min(MAX_MICROS)
}

/// GCRA buckets kept in Redis and shared by every process that uses the same keys.
#[derive(Clone)]
pub struct RedisBuckets {
    connection: RedisConnection,
    acquire: Script,
    adopt: Script,
    lease: Script,
    give_back: Script,
}

impl std::fmt::Debug for RedisBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBuckets").finish_non_exhaustive()
    }
}

impl RedisBuckets {
    /// Buckets over this connection.
    pub fn new(connection: impl Into<RedisConnection>) -> Self {
        RedisBuckets {
            connection: connection.into(),
            acquire: Script::new(ACQUIRE),
            adopt: Script::new(ADOPT),
            lease: Script::new(LEASE),
            give_back: Script::new(GIVE_BACK),
        }
    }

    /// The connection the scripts run on (a multiplexed connection: clones share it).
    pub(crate) fn connection(&self) -> RedisConnection {
        self.connection.clone()
    }

    /// Loads every script into the server's cache (`SCRIPT LOAD`): what a user without the
    /// scripting permissions cannot do.
    pub(crate) async fn load(&self) -> redis::RedisResult<()> {
        let mut connection = self.connection.clone();
        for script in [&self.acquire, &self.adopt, &self.lease, &self.give_back] {
            script.load_async(&mut connection).await?;
        }
        Ok(())
    }

    /// Reserves the next slot of bucket `key` (one slot every `interval`, `burst` at most at
    /// once) if it comes within `max_wait`. The bucket lives under `{key}:tat` and its adopted
    /// view under `{key}:view`; both expire on their own once idle.
    pub async fn acquire(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
        max_wait: Duration,
    ) -> redis::RedisResult<RedisDecision> {
        self.acquire_as(key, (interval, burst), max_wait, "").await
    }

    /// [`acquire`](Self::acquire) for `member`, whose count of outstanding requests (see
    /// [`report`](Self::report)) a grant adds one to.
    pub(crate) async fn acquire_as(
        &self,
        key: &str,
        (interval, burst): (Duration, u32),
        max_wait: Duration,
        member: &str,
    ) -> redis::RedisResult<RedisDecision> {
        let mut connection = self.connection.clone();
        let (reserved, wait, tat): (i64, i64, i64) = self
            .acquire
            .key(format!("{key}:tat"))
            .key(format!("{key}:view"))
            .key(format!("{key}:outstanding"))
            .arg(micros(interval))
            .arg(burst)
            .arg(micros(max_wait))
            .arg(member)
            .arg(micros(OUTSTANDING_FRESH))
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

    /// Lets at most `remaining` more requests of bucket `key` pass before `reset` from now (as
    /// the upstream said), then holds the rest until the reset. Views whose resets are within
    /// `slack` of each other describe one window, and only tighten it.
    pub async fn adopt(
        &self,
        key: &str,
        remaining: u64,
        reset: Duration,
        slack: Duration,
    ) -> redis::RedisResult<()> {
        self.view(key, (remaining, reset), slack, None)
            .await
            .map(drop)
    }

    /// Adopts one reply's word on the window of bucket `key`: `remaining` until `reset`, less
    /// the fleet's requests the server may not have counted yet. `member` (this process) has
    /// `outstanding` of them; every process's count fresh (see [`OUTSTANDING_FRESH`]) is
    /// summed. A reply that reports less than any earlier one of the same window (resets within
    /// `slack`) replaces the count, up or down; one that does not only tightens it.
    /// `remaining: 0` is a pause until the reset. Returns the fleet's outstanding requests it
    /// took into account.
    pub(crate) async fn report(
        &self,
        key: &str,
        (remaining, reset): (u64, Duration),
        slack: Duration,
        (member, outstanding): (&str, u64),
    ) -> redis::RedisResult<u64> {
        self.view(key, (remaining, reset), slack, Some((member, outstanding)))
            .await
    }

    /// Runs [`ADOPT`]: as [`adopt`](Self::adopt) without a reporter, as
    /// [`report`](Self::report) with one.
    async fn view(
        &self,
        key: &str,
        (remaining, reset): (u64, Duration),
        slack: Duration,
        reporter: Option<(&str, u64)>,
    ) -> redis::RedisResult<u64> {
        let (mode, member, outstanding) = match reporter {
            Some((member, outstanding)) => (1, member, outstanding),
            None => (0, "", 0),
        };
        let mut connection = self.connection.clone();
        let uncounted: i64 = self
            .adopt
            .key(format!("{key}:view"))
            .key(format!("{key}:outstanding"))
            .arg(remaining)
            .arg(micros(reset))
            .arg(micros(slack))
            .arg(mode)
            .arg(member)
            .arg(outstanding.min(MAX_MICROS))
            .arg(micros(OUTSTANDING_FRESH))
            .invoke_async(&mut connection)
            .await?;
        Ok(u64::try_from(uncounted).unwrap_or(0))
    }

    /// Reserves up to `slots` consecutive slots of bucket `key` at once, those that come within
    /// `horizon`, and none unless `least` of them do.
    pub(crate) async fn lease(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
        (slots, least): (u32, u32),
        horizon: Duration,
        member: &str,
    ) -> redis::RedisResult<Granted> {
        let mut connection = self.connection.clone();
        let (slots, tat, not_before, new_tat): (i64, i64, i64, i64) = self
            .lease
            .key(format!("{key}:tat"))
            .key(format!("{key}:view"))
            .key(format!("{key}:outstanding"))
            .arg(micros(interval))
            .arg(burst)
            .arg(slots.max(1))
            .arg(micros(horizon))
            .arg(least.clamp(1, slots.max(1)))
            .arg(member)
            .arg(micros(OUTSTANDING_FRESH))
            .invoke_async(&mut connection)
            .await?;
        Ok(Granted {
            slots: u32::try_from(slots.max(0)).unwrap_or(u32::MAX),
            tat,
            not_before,
            new_tat: u64::try_from(new_tat).unwrap_or(0),
        })
    }

    /// Gives back the `unused` last slots of a lease that set the TAT to `new_tat`, if no later
    /// reservation was made since.
    pub(crate) async fn give_back(
        &self,
        key: &str,
        new_tat: u64,
        unused: u32,
        interval: Duration,
    ) -> redis::RedisResult<bool> {
        let mut connection = self.connection.clone();
        let given: i64 = self
            .give_back
            .key(format!("{key}:tat"))
            .arg(new_tat)
            .arg(unused)
            .arg(micros(interval))
            .invoke_async(&mut connection)
            .await?;
        Ok(given == 1)
    }

    /// Gives back the slot a reservation took, if no later reservation was made since.
    pub async fn release(
        &self,
        key: &str,
        tat_micros: u64,
        interval: Duration,
    ) -> redis::RedisResult<bool> {
        self.give_back(key, tat_micros, 1, interval).await
    }
}
