//! The synchronisation types of the state shared between tasks, from `std` or, under
//! `--cfg tower_outbound_loom`, from [loom](https://docs.rs/loom), so the same code is
//! model-checked (see `docs/reliability.md`).

#[cfg(tower_outbound_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(tower_outbound_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

#[cfg(not(tower_outbound_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(not(tower_outbound_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

pub(crate) use std::sync::atomic::Ordering;

/// Locks `mutex`, going on with its data if a holder panicked: every critical section of
/// the crate leaves its data consistent at each step, so a poisoned lock holds nothing
/// half-done.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
