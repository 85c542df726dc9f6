//! The synchronisation types of the state shared between tasks, from `std` or, under
//! `--cfg tower_outbound_loom`, from [loom](https://docs.rs/loom), so the same code is
//! model-checked (see `docs/reliability.md`).

#[cfg(tower_outbound_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(tower_outbound_loom)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};

#[cfg(not(tower_outbound_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(not(tower_outbound_loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};

pub(crate) use std::sync::atomic::Ordering;

/// Locks `mutex`, going on with its data if a holder panicked: every critical section of
/// the crate leaves its data consistent at each step, so a poisoned lock holds nothing
/// half-done.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How many shards a per-core value is split into: the machine's parallelism, at most 16 (two
/// under the model checker, which then sees counts split over shards).
pub(crate) fn shards() -> usize {
    if cfg!(tower_outbound_loom) {
        return 2;
    }
    static SHARDS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SHARDS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .clamp(1, 16)
    })
}

/// The shard of the calling thread, below [`shards`]: threads are dealt shards in turn when
/// they first ask, so the threads of a runtime each write their own shard's cache lines.
pub(crate) fn this_shard() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD
        .try_with(|shard| {
            let mut index = shard.get();
            if index == usize::MAX {
                index = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % shards();
                shard.set(index);
            }
            index
        })
        .unwrap_or(0)
}

/// A count split over one cache line per shard, so that threads counting on different cores
/// never write to the same line. Adding is one relaxed atomic add on the thread's own shard;
/// reading sums every shard (for reports and rare decisions, not the hot path).
pub(crate) struct ShardedCount {
    shards: Box<[Line]>,
}

/// One shard's count on a cache line of its own.
#[repr(align(64))]
#[derive(Default)]
struct Line(std::sync::atomic::AtomicI64);

impl ShardedCount {
    pub(crate) fn new() -> Self {
        ShardedCount {
            shards: (0..shards()).map(|_| Line::default()).collect(),
        }
    }

    /// Adds `n` (negative to take away).
    pub(crate) fn add(&self, n: i64) {
        let shard = &self.shards[this_shard() % self.shards.len()];
        shard.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count: the sum of every shard, never below zero.
    pub(crate) fn sum(&self) -> u64 {
        let sum = self.shards.iter().fold(0i64, |sum, shard| {
            sum.wrapping_add(shard.0.load(Ordering::Relaxed))
        });
        u64::try_from(sum).unwrap_or(0)
    }
}

impl Default for ShardedCount {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ShardedCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ShardedCount").field(&self.sum()).finish()
    }
}

/// Waits on `condvar` while `condition` holds, for at most `timeout`, and returns the guard of
/// `mutex` (which `guard` locks) either way.
///
/// Under `--cfg tower_outbound_loom` the wait gives way once instead: the lock is released,
/// every other thread may run, and it is taken again. That is what a real wait does when its
/// time runs out (or a notification comes) before this thread runs again; loom's own condvar
/// never times out, so a timed wait that nobody notifies would be reported as a deadlock.
#[cfg(not(tower_outbound_loom))]
pub(crate) fn wait_timeout_while<'a, T>(
    condvar: &Condvar,
    _mutex: &'a Mutex<T>,
    guard: MutexGuard<'a, T>,
    timeout: std::time::Duration,
    condition: impl FnMut(&mut T) -> bool,
) -> MutexGuard<'a, T> {
    condvar
        .wait_timeout_while(guard, timeout, condition)
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .0
}

/// See the version built without loom.
#[cfg(tower_outbound_loom)]
pub(crate) fn wait_timeout_while<'a, T>(
    _condvar: &Condvar,
    mutex: &'a Mutex<T>,
    mut guard: MutexGuard<'a, T>,
    _timeout: std::time::Duration,
    mut condition: impl FnMut(&mut T) -> bool,
) -> MutexGuard<'a, T> {
    if !condition(&mut guard) {
        return guard;
    }
    drop(guard);
    loom::thread::yield_now();
    lock(mutex)
}
