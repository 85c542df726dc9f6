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
