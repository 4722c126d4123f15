//! Errors that say the proxy itself ran short (descriptors, socket
//! buffers, memory, local ports), not that a peer misbehaved.
//!
//! They are never held against an endpoint's health: an outlier detector
//! fed with them would eject healthy endpoints because this host is out of
//! descriptors. They are counted apart, per core
//! (`ringmesh_local_resource_errors_total{kind}`), and logged at most once a
//! second per worker.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::per_core::{Counter, PerCore, sum};

/// Which local resource ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    /// The process is out of file descriptors (`EMFILE`), or the data plane
    /// reached its share of them (see [`crate::fd_share`]).
    Emfile,
    /// The system is out of file descriptors (`ENFILE`).
    Enfile,
    /// No socket buffer space (`ENOBUFS`).
    Enobufs,
    /// Out of kernel memory (`ENOMEM`).
    Enomem,
    /// No local address or port left to connect from (`EADDRNOTAVAIL`).
    Eaddrnotavail,
}

impl ResourceKind {
    /// Every kind, in label order.
    pub const ALL: [ResourceKind; 5] = [
        ResourceKind::Emfile,
        ResourceKind::Enfile,
        ResourceKind::Enobufs,
        ResourceKind::Enomem,
        ResourceKind::Eaddrnotavail,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Emfile => "emfile",
            ResourceKind::Enfile => "enfile",
            ResourceKind::Enobufs => "enobufs",
            ResourceKind::Enomem => "enomem",
            ResourceKind::Eaddrnotavail => "eaddrnotavail",
        }
    }

    /// The kind of `e`, when it is a local resource error.
    pub fn of(e: &io::Error) -> Option<ResourceKind> {
        match e.raw_os_error()? {
            libc::EMFILE => Some(ResourceKind::Emfile),
            libc::ENFILE => Some(ResourceKind::Enfile),
            libc::ENOBUFS => Some(ResourceKind::Enobufs),
            libc::ENOMEM => Some(ResourceKind::Enomem),
            libc::EADDRNOTAVAIL => Some(ResourceKind::Eaddrnotavail),
            _ => None,
        }
    }

    /// The error a worker reports when it refuses a socket above its share
    /// of descriptors.
    pub(crate) fn share_exhausted() -> io::Error {
        io::Error::from_raw_os_error(libc::EMFILE)
    }
}

#[derive(Debug, Default)]
struct CoreSlot {
    by_kind: [Counter; 5],
    /// Milliseconds since [`epoch`] of the last log line (single writer).
    last_logged_ms: AtomicU64,
}

/// Local resource errors, per core, for the whole process.
#[derive(Debug)]
pub struct LocalResourceStats {
    cores: PerCore<CoreSlot>,
}

impl LocalResourceStats {
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            cores: PerCore::new(workers),
        }
    }

    /// Counts `error` (of `kind`) met while doing `during` on `core`, and
    /// logs it unless this core logged one less than a second ago.
    pub(crate) fn record(&self, core: usize, kind: ResourceKind, during: &str, error: &io::Error) {
        let slot = self.cores.get(core);
        slot.by_kind[kind as usize].inc();
        let now = epoch().elapsed().as_millis() as u64 + 1;
        let last = slot.last_logged_ms.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64 {
            slot.last_logged_ms.store(now, Ordering::Relaxed);
            tracing::warn!(core, kind = kind.as_str(), during, error = %error, "out of a local resource; the peer is not blamed (logged at most once a second per worker)");
        }
    }

    /// `(kind, count)` summed over cores.
    pub fn totals(&self) -> Vec<(ResourceKind, u64)> {
        ResourceKind::ALL
            .iter()
            .map(|k| (*k, sum(&self.cores, |c| c.by_kind[*k as usize].get())))
            .collect()
    }
}

const LOG_EVERY: Duration = Duration::from_secs(1);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_and_buffer_shortages_are_local_and_refusals_are_not() {
        for (errno, kind) in [
            (libc::EMFILE, Some(ResourceKind::Emfile)),
            (libc::ENFILE, Some(ResourceKind::Enfile)),
            (libc::ENOBUFS, Some(ResourceKind::Enobufs)),
            (libc::EADDRNOTAVAIL, Some(ResourceKind::Eaddrnotavail)),
            (libc::ECONNREFUSED, None),
            (libc::ETIMEDOUT, None),
            (libc::EHOSTUNREACH, None),
        ] {
            assert_eq!(ResourceKind::of(&io::Error::from_raw_os_error(errno)), kind);
        }
    }

    #[test]
    fn counts_are_kept_per_kind_and_summed() {
        let stats = LocalResourceStats::new(2);
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        stats.record(0, ResourceKind::Emfile, "connect", &e);
        stats.record(1, ResourceKind::Emfile, "accept", &e);
        stats.record(1, ResourceKind::Enobufs, "connect", &e);
        let t = stats.totals();
        assert_eq!(t[0], (ResourceKind::Emfile, 2));
        assert_eq!(t[2], (ResourceKind::Enobufs, 1));
    }
}
