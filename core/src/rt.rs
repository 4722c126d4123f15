//! The runtime calls protocol handlers (l7) may make: tasks and timers on
//! the current worker. Everything goes through [`crate::runtime`], the one
//! file that names compio.

use std::future::Future;
use std::time::{Duration, Instant};

/// A spawned task; dropping it cancels the task unless it was detached.
pub struct Task<T>(crate::runtime::Task<T>);

impl<T> Task<T> {
    /// Lets the task run to completion on its own.
    pub fn detach(self) {
        self.0.detach()
    }
}

/// Spawns a task on the current worker (it never moves to another core).
pub fn spawn<F: Future + 'static>(future: F) -> Task<F::Output> {
    Task(crate::runtime::spawn(future))
}

/// Sleeps for `duration`.
pub fn sleep(duration: Duration) -> impl Future<Output = ()> {
    crate::runtime::sleep(duration)
}

/// Sleeps until `deadline`.
pub fn sleep_until(deadline: Instant) -> impl Future<Output = ()> {
    crate::runtime::sleep_until(deadline)
}

/// Runs `future` for at most `duration`; `None` when time ran out (the
/// future is dropped: only for work that may be abandoned, e.g. a read
/// whose connection is then closed).
pub fn timeout<F: Future>(
    duration: Duration,
    future: F,
) -> impl Future<Output = Option<F::Output>> {
    crate::runtime::timeout(duration, future)
}
