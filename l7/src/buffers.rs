//! The worker's pool of I/O buffers. A connection takes a buffer when bytes
//! arrive and gives it back when it goes idle with nothing buffered, so an
//! idle keep-alive connection holds no buffer, and a busy worker allocates
//! none per request.

use std::cell::RefCell;

/// Size of a pooled buffer: a typical head plus a small body in one read.
pub const BUFFER: usize = 16 * 1024;
/// Buffer size for streaming large bodies (fewer, larger reads).
pub const BODY_BUFFER: usize = 64 * 1024;
/// Buffers kept per worker.
const KEEP: usize = 1024;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer of at least [`BUFFER`] bytes.
#[inline]
pub fn take() -> Vec<u8> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(BUFFER))
}

/// Gives a buffer back (emptied); buffers grown past [`BODY_BUFFER`] are
/// freed instead, so one huge head cannot pin memory.
#[inline]
pub fn give(mut buf: Vec<u8>) {
    if buf.capacity() < BUFFER || buf.capacity() > BODY_BUFFER {
        return;
    }
    buf.clear();
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < KEEP {
            p.push(buf);
        }
    });
}
