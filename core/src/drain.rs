//! The worker's drain signal, for connections that outlive their listener.
//!
//! When the proxy drains, each worker closes its listening sockets and
//! raises this signal. A TCP connection carries on until it ends; an HTTP
//! connection (l7) answers its request in flight with `Connection: close`
//! and closes after a short grace if it is idle between requests. The signal is
//! worker-local: raising it touches no other core.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Wakers of pending waits; a wait frees its slot when dropped, so idle
/// waits abandoned for data (the common case) leave nothing behind.
#[derive(Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

thread_local! {
    static DRAINING: Cell<bool> = const { Cell::new(false) };
    static WAITERS: RefCell<Waiters> = RefCell::new(Waiters::default());
}

/// Whether this worker is draining.
#[inline]
pub fn is_draining() -> bool {
    DRAINING.with(Cell::get)
}

/// Completes when this worker starts draining (at once if it has).
pub fn wait() -> DrainWait {
    DrainWait { slot: None }
}

/// The future of [`wait`].
#[derive(Debug)]
pub struct DrainWait {
    slot: Option<usize>,
}

impl Future for DrainWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if is_draining() {
            return Poll::Ready(());
        }
        let waker = cx.waker().clone();
        let slot = self.slot;
        let slot = WAITERS.with(|w| {
            let mut w = w.borrow_mut();
            match slot {
                Some(i) => {
                    w.slots[i] = Some(waker);
                    i
                }
                None => match w.free.pop() {
                    Some(i) => {
                        w.slots[i] = Some(waker);
                        i
                    }
                    None => {
                        w.slots.push(Some(waker));
                        w.slots.len() - 1
                    }
                },
            }
        });
        self.slot = Some(slot);
        Poll::Pending
    }
}

impl Drop for DrainWait {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let _ = WAITERS.try_with(|w| {
                let mut w = w.borrow_mut();
                if let Some(s) = w.slots.get_mut(i) {
                    *s = None;
                    w.free.push(i);
                }
            });
        }
    }
}

/// Starts draining this worker and wakes every waiter.
pub(crate) fn start() {
    DRAINING.with(|d| d.set(true));
    let wakers: Vec<Waker> = WAITERS.with(|w| {
        // Slots stay allocated: their waits free them when dropped.
        w.borrow_mut()
            .slots
            .iter_mut()
            .filter_map(Option::take)
            .collect()
    });
    for w in wakers {
        w.wake();
    }
}
