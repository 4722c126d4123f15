//! Where finished spans wait for the exporter: each worker encodes its
//! spans (OTLP protobuf, `encode.rs`) into a buffer of its own, which only
//! it and the exporter (every 5 s, or when a batch of 512 is ready) ever
//! lock: no lock is shared between workers and a worker never waits on
//! the network. At most 2,048 spans wait in all (the OpenTelemetry SDK's
//! queue size); beyond that a span is dropped and counted.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ringmesh_core::per_core::PerCore;

/// OpenTelemetry SDK's `maxQueueSize`.
pub const QUEUE: usize = 2048;
/// OpenTelemetry SDK's `maxExportBatchSize`.
pub const BATCH: usize = 512;

/// A span's kind (OTLP `SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The proxy serving a client's request.
    Server = 2,
    /// One upstream attempt.
    Client = 3,
}

/// One worker's encoded spans.
#[derive(Debug, Default)]
pub struct Pending {
    /// `ScopeSpans.spans` fields, back to back.
    pub bytes: Vec<u8>,
    /// Where each span ends in `bytes`.
    pub ends: Vec<usize>,
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Where workers put finished spans.
#[derive(Debug)]
pub struct SpanSink {
    workers: PerCore<Mutex<Pending>>,
    per_worker: usize,
    wake: SyncSender<()>,
    woken: Mutex<Option<Receiver<()>>>,
    /// Spans dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Spans the exporter delivered.
    pub exported: AtomicU64,
    /// Spans the exporter could not deliver (collector down, refused).
    pub failed: AtomicU64,
}

fn lock(m: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SpanSink {
    /// A sink for `workers` workers holding at most `capacity` spans.
    pub fn new(workers: usize, capacity: usize) -> Self {
        let (wake, woken) = sync_channel(1);
        SpanSink {
            workers: PerCore::new(workers),
            per_worker: (capacity / workers.max(1)).max(1),
            wake,
            woken: Mutex::new(Some(woken)),
            dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Records a span on worker `core`: `body` writes its encoding (see
    /// `encode::span_body`) into a reused scratch buffer. Dropped and
    /// counted when the worker's share of the queue is full.
    pub fn record(&self, core: usize, body: impl FnOnce(&mut Vec<u8>)) {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            body(&mut scratch);
            let mut p = lock(self.workers.get(core));
            if p.ends.len() >= self.per_worker {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            super::encode::bytes_field(&mut p.bytes, 2, &scratch);
            let end = p.bytes.len();
            p.ends.push(end);
            if p.ends.len() == BATCH {
                // The exporter may already be awake: a full channel is fine.
                let _ = self.wake.try_send(());
            }
        });
    }

    /// Takes every worker's waiting spans (the exporter).
    pub fn drain(&self) -> Vec<Pending> {
        self.workers
            .iter()
            .filter_map(|m| {
                let mut p = lock(m);
                // The worker keeps buffers of the same size: it does not
                // grow them again span by span.
                if p.ends.is_empty() {
                    return None;
                }
                let (bytes, ends) = (p.bytes.capacity(), p.ends.capacity());
                Some(Pending {
                    bytes: std::mem::replace(&mut p.bytes, Vec::with_capacity(bytes)),
                    ends: std::mem::replace(&mut p.ends, Vec::with_capacity(ends)),
                })
            })
            .collect()
    }

    /// The exporter's wake-up: returns when a batch is ready or after
    /// `timeout`; `None` once taken by an earlier exporter.
    pub fn take_waiter(&self) -> Option<Receiver<()>> {
        self.woken.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Spans waiting now.
    pub fn waiting(&self) -> usize {
        self.workers.iter().map(|m| lock(m).ends.len()).sum()
    }
}

/// Waits on `waiter` for up to `timeout` (the exporter's loop).
pub fn wait(waiter: &Receiver<()>, timeout: Duration) -> bool {
    !matches!(
        waiter.recv_timeout(timeout),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let sink = SpanSink::new(2, 4);
        for i in 0..5 {
            sink.record(0, |out| out.push(i));
        }
        sink.record(1, |out| out.extend_from_slice(b"ab"));
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(sink.waiting(), 3);
        let drained = sink.drain();
        assert_eq!(drained.len(), 2);
        // Each span is a `spans` field (2 << 3 | 2), its length, its bytes.
        assert_eq!(drained[0].bytes, [0x12, 1, 0, 0x12, 1, 1]);
        assert_eq!(drained[0].ends, [3, 6]);
        assert_eq!(drained[1].bytes, [0x12, 2, b'a', b'b']);
        assert_eq!(sink.waiting(), 0);
    }
}
