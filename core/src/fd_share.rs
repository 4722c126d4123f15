//! The data plane's share of the process's file descriptors.
//!
//! Every descriptor comes from one per-process limit (`RLIMIT_NOFILE`). A
//! flood of proxied connections must not take the last ones: the admin API
//! (which can drain or fix the proxy), reloads and certificate reads need
//! some. The control side calls [`reserve`] once at startup; from then on a
//! worker refuses any socket whose number is at or above the ceiling.
//!
//! Why the number works as the test: the kernel hands out the lowest free
//! descriptor, so a socket numbered `n` means descriptors `0..n` are all in
//! use. A worker that gets one at the ceiling closes it at once, so the data
//! plane never holds descriptors above it for longer than that, and the
//! reserve stays free for the control thread. The check is one relaxed load
//! of a value written once, and no syscall.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

static CEILING: AtomicI32 = AtomicI32::new(i32::MAX);

/// The descriptor limit and the data plane's ceiling after [`reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdShare {
    /// The process's soft `RLIMIT_NOFILE`.
    pub limit: u64,
    /// Descriptors numbered at or above this are refused by the data plane.
    pub ceiling: u64,
}

/// Keeps the top `reserved` descriptors of the current soft limit out of
/// the data plane's reach (at most an eighth of the limit, so that small
/// limits still leave the data plane most of them). Call after raising the
/// limit.
pub fn reserve(reserved: u64) -> FdShare {
    let limit = soft_limit();
    let reserved = reserved.min(limit / 8);
    let ceiling = limit.saturating_sub(reserved);
    CEILING.store(
        i32::try_from(ceiling).unwrap_or(i32::MAX),
        Ordering::Relaxed,
    );
    FdShare { limit, ceiling }
}

/// Whether the data plane may keep a socket numbered `fd`.
#[inline]
pub(crate) fn within(fd: RawFd) -> bool {
    fd < CEILING.load(Ordering::Relaxed)
}

fn soft_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return i32::MAX as u64;
    }
    lim.rlim_cur.min(i32::MAX as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_at_most_an_eighth_of_the_limit() {
        let share = reserve(1 << 40);
        assert_eq!(share.ceiling, share.limit - share.limit / 8);
        assert!(within(3));
        assert!(!within(share.ceiling as RawFd));
        reserve(0);
        assert!(within(share.ceiling as RawFd));
    }
}
