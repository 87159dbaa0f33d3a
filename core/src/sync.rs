//! Locking a mutex whose holder may have panicked.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, also when a thread panicked while holding it: the host's
/// shared state is changed in steps that leave it consistent, and a
/// long-running path must not panic because another one did. Public for
/// the crates built on this one (`sluice-runtime`, the host).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
