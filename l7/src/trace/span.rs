//! Finished spans and the queue that takes them off the data plane: a
//! bounded channel (OpenTelemetry's batch processor queue, 2048) that a
//! worker never waits on. A full queue drops the span and counts it; the
//! exporter (control's OTLP exporter, on its own thread) drains it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

/// OpenTelemetry SDK's `maxQueueSize`.
pub const QUEUE: usize = 2048;

/// A span's kind (OTLP `SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The proxy serving a client's request.
    Server,
    /// One upstream attempt.
    Client,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// Its trace.
    pub trace_id: [u8; 16],
    /// Its id.
    pub span_id: [u8; 8],
    /// Its parent's id, if any.
    pub parent: Option<[u8; 8]>,
    /// Server or client.
    pub kind: SpanKind,
    /// `{method} {route}` (OpenTelemetry's HTTP convention).
    pub name: String,
    /// Start, nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// End, nanoseconds since the Unix epoch.
    pub end_unix_nanos: u64,
    /// Semantic-convention attributes.
    pub attributes: Vec<(&'static str, Value)>,
    /// Status `ERROR` (a server span: 5xx or no response; a client span:
    /// 4xx, 5xx or no response).
    pub error: bool,
}

/// Where workers put finished spans.
#[derive(Debug)]
pub struct SpanSink {
    tx: SyncSender<SpanRecord>,
    rx: Mutex<Option<Receiver<SpanRecord>>>,
    /// Spans dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Spans the exporter delivered.
    pub exported: AtomicU64,
    /// Spans the exporter could not deliver (collector down, refused).
    pub failed: AtomicU64,
}

impl Default for SpanSink {
    fn default() -> Self {
        SpanSink::new(QUEUE)
    }
}

impl SpanSink {
    /// A sink holding at most `capacity` spans not yet exported.
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = sync_channel(capacity);
        SpanSink {
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Queues a span, or drops it (counted) when the queue is full: a
    /// worker never waits for the exporter.
    pub fn send(&self, span: SpanRecord) {
        match self.tx.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The receiving end, for the one exporter (`None` once taken).
    pub fn take_receiver(&self) -> Option<Receiver<SpanRecord>> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span() -> SpanRecord {
        SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: None,
            kind: SpanKind::Server,
            name: "GET".into(),
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: Vec::new(),
            error: false,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let sink = SpanSink::new(2);
        for _ in 0..5 {
            sink.send(span());
        }
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 3);
        let rx = sink.take_receiver().expect("first take");
        assert_eq!(rx.try_iter().count(), 2);
        assert!(sink.take_receiver().is_none());
    }
}
