//! One end of a proxied connection: plain TCP, or TLS over TCP. The copy
//! loop works on either through [`Duplex`](crate::forward::Duplex); protocol
//! handlers (l7) use the public methods below, which take and give back
//! owned buffers (the kernel owns a buffer while an operation runs).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use crate::forward::Duplex;
use crate::runtime::{self, BufResult, IoBuf, TcpStream};
use crate::tls::ktls::KtlsStream;
use crate::tls::stream::TlsStream;

/// A connected socket, with or without TLS.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS whose records rustls processes in user space.
    Tls(Box<TlsStream>),
    /// TLS whose record layer the kernel runs (kTLS).
    Ktls(KtlsStream),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Plain(_) => "Stream::Plain",
            Stream::Tls(_) => "Stream::Tls",
            Stream::Ktls(_) => "Stream::Ktls",
        })
    }
}

impl Duplex for Stream {
    async fn read_into(&self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        match self {
            Stream::Plain(s) => s.read_into(buf).await,
            Stream::Tls(s) => s.read_into(buf).await,
            Stream::Ktls(s) => s.read_into(buf).await,
        }
    }

    async fn read_append(&self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        match self {
            Stream::Plain(s) => s.read_append(buf).await,
            Stream::Tls(s) => s.read_append(buf).await,
            Stream::Ktls(s) => s.read_append(buf).await,
        }
    }

    async fn write_all_from<B: IoBuf>(&self, buf: B) -> BufResult<(), B> {
        match self {
            Stream::Plain(s) => s.write_all_from(buf).await,
            Stream::Tls(s) => s.write_all_from(buf).await,
            Stream::Ktls(s) => s.write_all_from(buf).await,
        }
    }

    async fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.shutdown_write().await,
            Stream::Tls(s) => s.shutdown_write().await,
            Stream::Ktls(s) => s.shutdown_write().await,
        }
    }

    fn reset_on_close(&self) {
        match self {
            Stream::Plain(s) => s.reset_on_close(),
            Stream::Tls(s) => s.reset_on_close(),
            Stream::Ktls(s) => s.reset_on_close(),
        }
    }

    fn as_plain(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(_) | Stream::Ktls(_) => None,
        }
    }
}

impl Stream {
    /// The socket's descriptor (TLS or not).
    pub fn raw_fd(&self) -> RawFd {
        match self {
            Stream::Plain(s) => s.as_raw_fd(),
            Stream::Tls(s) => s.raw_fd(),
            Stream::Ktls(s) => s.raw_fd(),
        }
    }

    /// Reads after `buf`'s contents, up to its capacity (reserve room
    /// first). Returns the bytes read; `Ok(0)` at EOF. The buffer comes back
    /// whatever happened.
    pub async fn read_more(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let BufResult(res, buf) = self.read_append(buf).await;
        (res, buf)
    }

    /// Waits for the next bytes without holding a buffer while waiting
    /// (io_uring provided buffers; epoll waits for readiness first), then
    /// appends them to the buffer `get` returns (called once, when bytes
    /// are there). For idle keep-alive connections: thousands of them then
    /// hold no buffer each. `Ok(0)` at EOF.
    pub async fn read_when_ready(
        &self,
        get: impl FnOnce() -> Vec<u8>,
    ) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Stream::Plain(s) if runtime::current_is_uring() => {
                match runtime::recv_ring(s, crate::forward::RING_BUFFER).await {
                    Ok(Some(chunk)) => {
                        let mut buf = get();
                        buf.extend_from_slice(&chunk);
                        (Ok(chunk.len()), buf)
                    }
                    Ok(None) => (Ok(0), Vec::new()),
                    Err(e) if crate::forward::ring_exhausted(&e) => self.read_more(get()).await,
                    Err(e) => (Err(e), Vec::new()),
                }
            }
            Stream::Plain(_) | Stream::Ktls(_) => {
                if let Err(e) = runtime::wait_readable(self.raw_fd()).await {
                    return (Err(e), Vec::new());
                }
                self.read_more(get()).await
            }
            // rustls holds its own ciphertext buffer: nothing to save here.
            Stream::Tls(_) => self.read_more(get()).await,
        }
    }

    /// Writes all of `buf[range]`; gives the buffer back.
    pub async fn write_range(
        &self,
        buf: Vec<u8>,
        range: std::ops::Range<usize>,
    ) -> (io::Result<()>, Vec<u8>) {
        use compio::buf::IntoInner;
        if range.is_empty() {
            return (Ok(()), buf);
        }
        let BufResult(res, slice) = self.write_all_from(buf.slice(range)).await;
        (res, slice.into_inner())
    }

    /// Writes all of `buf`; gives it back.
    pub async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let BufResult(res, buf) = self.write_all_from(buf).await;
        (res, buf)
    }

    /// Signals the end of what this side sends (close_notify for TLS, FIN).
    pub async fn finish(&self) -> io::Result<()> {
        self.shutdown_write().await
    }

    /// Whether this is plain TCP (no TLS session to close).
    pub fn is_plain(&self) -> bool {
        matches!(self, Stream::Plain(_))
    }

    /// Makes the coming close a TCP reset (for a broken exchange).
    pub fn reset(&self) {
        self.reset_on_close()
    }

    /// Whether an idle connection is still usable: open, and with nothing
    /// unread (a pooled upstream connection that has data or EOF pending
    /// was closed or broken by its server). One non-blocking `recv(2)`.
    pub fn is_idle_and_open(&self) -> bool {
        if let Stream::Tls(s) = self
            && s.has_plaintext()
        {
            return false;
        }
        let mut byte = 0u8;
        // SAFETY: a one-byte peek into a local, on a descriptor we own.
        let n = unsafe {
            libc::recv(
                self.raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }

    /// Copies bytes both ways between `self` (the client) and `upstream`
    /// until both sides finish, one fails, or nothing moves for
    /// `idle_timeout` (an upgraded HTTP connection, e.g. WebSocket).
    /// Returns `(bytes from the client, bytes to the client, error)`.
    pub async fn tunnel(&self, upstream: &Stream, idle_timeout: Duration) -> TunnelEnd {
        let received = std::cell::Cell::new(0);
        let sent = std::cell::Cell::new(0);
        let discard = crate::per_core::Counter::default();
        let outcome = crate::forward::proxy_to_stream(
            self,
            upstream,
            idle_timeout,
            crate::snapshot::ZeroCopy::Never,
            crate::forward::DirectionCounters {
                connection: &received,
                listener: &discard,
                cluster: &discard,
                on_first_data: None,
            },
            crate::forward::DirectionCounters {
                connection: &sent,
                listener: &discard,
                cluster: &discard,
                on_first_data: None,
            },
        )
        .await;
        TunnelEnd {
            received: received.get(),
            sent: sent.get(),
            reason: outcome.reason,
            error: outcome.error,
        }
    }
}

/// How a [`Stream::tunnel`] ended.
#[derive(Debug)]
pub struct TunnelEnd {
    /// Bytes read from the client.
    pub received: u64,
    /// Bytes written to the client.
    pub sent: u64,
    /// Why it ended.
    pub reason: crate::metrics::CloseReason,
    /// The I/O error, if one ended it.
    pub error: Option<io::Error>,
}
