//! Moving bytes both ways between the client and the upstream.
//!
//! Each direction picks its path as the traffic shows itself:
//!
//! - **ring** (plain TCP source): each read takes a buffer from the worker's
//!   pool only when data has arrived (io_uring's provided-buffer ring; on
//!   epoll, a readiness wait first), so a connection waiting for bytes holds
//!   no buffer at all, and small request/response traffic costs one receive
//!   and one send per message;
//! - **splice** (plain TCP on both sides, `zero_copy` not `never`): once a
//!   read fills a whole ring buffer the direction is bulk, and its bytes go
//!   socket -> pipe -> socket in the kernel ([`crate::splice`]); a direction
//!   whose reads turn small again goes back to the ring;
//! - **heap** (TLS in user space, or bulk towards a TLS upstream): the
//!   direction owns a buffer that grows 2 KiB -> 8 -> 32 -> 64 KiB while
//!   reads fill it, and to 256 KiB once it has moved 8 MiB, because large
//!   reads are what make bulk transfers cheap.
//!
//! Every path counts the same bytes, keeps the same idle clock and ends the
//! same way. Half-close: when one side sends FIN, the other side's write
//! half is shut down and the opposite direction keeps flowing until it
//! finishes too. Errors: when one side fails (reset, broken pipe, ...), the
//! other side is reset as well (SO_LINGER 0), so a reset travels through
//! the proxy.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use futures_util::future::{Either, select, try_join};
use futures_util::pin_mut;

use crate::metrics::CloseReason;
use crate::per_core::Counter;
use crate::runtime::{self, AsyncRead, BufResult, BufferRef, IoBuf, TcpStream};
use crate::snapshot::ZeroCopy;
use crate::splice::{self, Pipe};
use crate::stream::Stream;

/// First buffer size per direction on the heap path.
pub const INITIAL_BUFFER: usize = 2 * 1024;
/// Buffer size reached by any direction whose reads fill their buffer.
pub const BULK_BUFFER: usize = 64 * 1024;
/// Largest buffer size per direction, for sustained bulk transfers: 256 KiB
/// reads cost ~35% less proxy CPU per GiB than 64 KiB ones (bench/README.md).
pub const MAX_BUFFER: usize = 256 * 1024;
/// Bytes a direction must have moved before its buffer may exceed
/// [`BULK_BUFFER`], so that only long transfers hold the largest buffers.
pub const SUSTAINED_BULK_BYTES: u64 = 8 * 1024 * 1024;
/// Size of one pooled (ring) buffer. A read that fills one marks the
/// direction as bulk.
pub const RING_BUFFER: usize = 16 * 1024;
/// Buffers in each worker's provided-buffer ring. Only connections with
/// bytes in flight hold one; when all are taken a read uses its own.
pub const RING_BUFFERS: u16 = 256;
/// Consecutive small splices after which a direction returns to the ring:
/// small messages cost fewer system calls there (one batched receive and
/// send instead of two splices).
const SMALL_SPLICES_BEFORE_RING: u32 = 8;
/// Heap buffers each worker keeps for epoll's pooled reads.
const HEAP_POOL_MAX: usize = 256;

/// Which end of the proxied connection a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Downstream,
    Upstream,
}

#[derive(Debug)]
pub(crate) struct CopyError {
    /// The side whose socket failed.
    pub side: Side,
    pub error: io::Error,
}

/// Counters a direction adds its bytes to.
pub(crate) struct DirectionCounters<'a> {
    /// This connection's own count, for its access-log line.
    pub connection: &'a Cell<u64>,
    pub listener: &'a Counter,
    pub cluster: &'a Counter,
    /// Called once, when the first bytes arrive in this direction.
    pub on_first_data: Option<&'a dyn Fn()>,
}

/// The outcome of [`proxy_both_ways`].
pub(crate) struct ForwardOutcome {
    pub reason: CloseReason,
    pub error: Option<io::Error>,
    /// Whether either direction took the zero-copy (splice) path.
    pub spliced: bool,
}

/// One end of a proxied connection, plain TCP or TLS: what the copy loop
/// needs from it.
pub(crate) trait Duplex {
    /// Reads into `buf` (up to its capacity); `Ok(0)` at EOF.
    async fn read_into(&self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>>;
    /// Reads after `buf`'s contents, up to its capacity; `Ok(0)` at EOF.
    async fn read_append(&self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>>;
    /// Writes all of `buf`.
    async fn write_all_from<B: IoBuf>(&self, buf: B) -> BufResult<(), B>;
    /// Signals end of data (FIN, or close_notify then FIN).
    async fn shutdown_write(&self) -> io::Result<()>;
    /// Makes the coming close a reset.
    fn reset_on_close(&self);
    /// The TCP socket itself when this end has no TLS: the ring and splice
    /// paths work on it directly.
    fn as_plain(&self) -> Option<&TcpStream> {
        None
    }
}

impl Duplex for TcpStream {
    async fn read_into(&self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        let mut s = self;
        s.read(buf).await
    }

    async fn read_append(&self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        runtime::recv_append(self, buf).await
    }

    async fn write_all_from<B: IoBuf>(&self, buf: B) -> BufResult<(), B> {
        runtime::send_all(self, buf).await
    }

    async fn shutdown_write(&self) -> io::Result<()> {
        runtime::shutdown_write(self)
    }

    fn reset_on_close(&self) {
        let _ = self.set_zero_linger();
    }

    fn as_plain(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Duplex for crate::tls::stream::TlsStream {
    async fn read_into(&self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        self.read_plain(buf).await
    }

    async fn read_append(&self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        self.read_plain_append(buf).await
    }

    async fn write_all_from<B: IoBuf>(&self, buf: B) -> BufResult<(), B> {
        self.write_plain(buf).await
    }

    async fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown().await
    }

    fn reset_on_close(&self) {
        let _ = self.set_zero_linger();
    }
}

/// What one direction shares with the other and with the idle watch.
pub(crate) struct Activity {
    /// When bytes last moved either way.
    last: Cell<Instant>,
    /// Whether either direction has spliced.
    spliced: Cell<bool>,
    /// Whether one direction has finished (EOF read and propagated).
    one_done: Cell<bool>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            last: Cell::new(Instant::now()),
            spliced: Cell::new(false),
            one_done: Cell::new(false),
        }
    }

    fn touch(&self) {
        self.last.set(Instant::now());
    }
}

/// One direction: where it reads, where it writes, what it counts.
struct Direction<'a, F, T> {
    from: &'a F,
    to: &'a T,
    from_side: Side,
    to_side: Side,
    counters: DirectionCounters<'a>,
    activity: &'a Activity,
    zero_copy: ZeroCopy,
    moved: u64,
    /// The worker runs io_uring (provided-buffer ring) rather than epoll.
    uring: bool,
}

/// How a path stopped when the direction is not finished.
enum Next {
    /// EOF: the direction is done.
    Eof,
    /// Reads fill their buffers: take the bulk path.
    Bulk,
    /// Reads are small again: back to the ring.
    Small,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Ring,
    Splice,
    Heap,
}

impl<F: Duplex, T: Duplex> Direction<'_, F, T> {
    fn read_error(&self, error: io::Error) -> CopyError {
        CopyError {
            side: self.from_side,
            error,
        }
    }

    fn write_error(&self, error: io::Error) -> CopyError {
        CopyError {
            side: self.to_side,
            error,
        }
    }

    /// Counts `n` bytes just read.
    fn received(&mut self, n: usize) {
        self.activity.touch();
        if self.moved == 0
            && let Some(f) = self.counters.on_first_data
        {
            f();
        }
        self.moved += n as u64;
        let c = &self.counters;
        c.connection.set(c.connection.get() + n as u64);
        c.listener.add(n as u64);
        c.cluster.add(n as u64);
    }

    /// Both ends are plain TCP and zero copy is allowed.
    fn can_splice(&self) -> bool {
        self.zero_copy != ZeroCopy::Never
            && self.from.as_plain().is_some()
            && self.to.as_plain().is_some()
    }

    /// Copies until EOF, then shuts down `to`'s write half.
    async fn run(mut self) -> Result<(), CopyError> {
        let mut path = match self.from.as_plain() {
            Some(_) if self.zero_copy == ZeroCopy::Always && self.can_splice() => Path::Splice,
            Some(_) => Path::Ring,
            None => Path::Heap,
        };
        loop {
            let next = match path {
                Path::Ring => self.ring().await?,
                Path::Splice => match Pipe::take() {
                    Some(pipe) => self.splice(pipe).await?,
                    None => {
                        path = Path::Heap;
                        continue;
                    }
                },
                Path::Heap => self.heap().await?,
            };
            path = match (next, path) {
                (Next::Eof, _) => break,
                (Next::Bulk, _) if self.can_splice() => Path::Splice,
                (Next::Bulk, _) => Path::Heap,
                (Next::Small, _) => Path::Ring,
            };
        }
        if self.activity.one_done.replace(true) && self.to.as_plain().is_some() {
            // The other direction is over too: `to` has read EOF, so its
            // close, which follows at once, sends the FIN; a shutdown first
            // would be one more system call per connection. (TLS must
            // still send close_notify.)
            return Ok(());
        }
        // Propagate the FIN; the other direction keeps going.
        self.to
            .shutdown_write()
            .await
            .map_err(|error| self.write_error(error))
    }

    /// The ring path: a pooled buffer per read, taken only once data is
    /// there. Stops at EOF or at the first read that fills its buffer.
    async fn ring(&mut self) -> Result<Next, CopyError> {
        let Some(from) = self.from.as_plain() else {
            return Ok(Next::Bulk);
        };
        loop {
            let chunk = match read_pooled(from, self.uring).await {
                Ok(Some(c)) => c,
                Ok(None) => return Ok(Next::Eof),
                Err(e) => return Err(self.read_error(e)),
            };
            let n = chunk.as_init().len();
            self.received(n);
            let BufResult(res, chunk) = self.to.write_all_from(chunk).await;
            chunk.recycle();
            res.map_err(|e| self.write_error(e))?;
            if n >= RING_BUFFER {
                return Ok(Next::Bulk);
            }
        }
    }

    /// The splice path (both ends plain TCP). Stops at EOF, or after a run
    /// of small reads, handing the empty pipe back.
    async fn splice(&mut self, mut pipe: splice::PipeLease) -> Result<Next, CopyError> {
        let (Some(from), Some(to)) = (self.from.as_plain(), self.to.as_plain()) else {
            return Ok(Next::Bulk);
        };
        let (src, dst) = (from.as_raw_fd(), to.as_raw_fd());
        splice::set_nonblocking(src).map_err(|e| self.read_error(e))?;
        splice::set_nonblocking(dst).map_err(|e| self.write_error(e))?;
        self.activity.spliced.set(true);
        let mut small = 0;
        loop {
            let n = loop {
                match pipe.fill(src) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        runtime::wait_readable(src)
                            .await
                            .map_err(|e| self.read_error(e))?;
                    }
                    Err(e) => return Err(self.read_error(e)),
                }
            };
            if n == 0 {
                return Ok(Next::Eof);
            }
            self.received(n);
            while pipe.held() > 0 {
                match pipe.drain(dst) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        runtime::wait_writable(dst)
                            .await
                            .map_err(|e| self.write_error(e))?;
                    }
                    Err(e) => return Err(self.write_error(e)),
                }
            }
            small = if n < RING_BUFFER { small + 1 } else { 0 };
            if small >= SMALL_SPLICES_BEFORE_RING && self.zero_copy != ZeroCopy::Always {
                return Ok(Next::Small);
            }
        }
    }

    /// The heap path: one owned buffer, grown while reads fill it. A plain
    /// source whose reads turn small again goes back to the ring, giving
    /// the buffer up.
    async fn heap(&mut self) -> Result<Next, CopyError> {
        let plain = self.from.as_plain().is_some();
        let start = if plain { BULK_BUFFER } else { INITIAL_BUFFER };
        let mut buf: Vec<u8> = Vec::with_capacity(start);
        loop {
            // compio reads at offset 0 but only ever raises a Vec's length:
            // without this, a short read after a long one resends stale bytes.
            buf.clear();
            let BufResult(res, b) = self.from.read_into(buf).await;
            buf = b;
            let n = match res {
                Ok(0) => return Ok(Next::Eof),
                Ok(n) => n,
                Err(error) => return Err(self.read_error(error)),
            };
            self.received(n);
            let BufResult(res, b) = self.to.write_all_from(buf).await;
            buf = b;
            res.map_err(|e| self.write_error(e))?;
            if n == buf.capacity() {
                // A full read means more is waiting: take a bigger buffer.
                let limit = if self.moved >= SUSTAINED_BULK_BYTES {
                    MAX_BUFFER
                } else {
                    BULK_BUFFER
                };
                if buf.capacity() < limit {
                    buf = Vec::with_capacity((buf.capacity() * 4).min(limit));
                }
            } else if plain && n < RING_BUFFER {
                return Ok(Next::Small);
            }
        }
    }
}

/// Bytes read into a pooled buffer.
enum Chunk {
    /// A buffer of the worker's io_uring provided-buffer ring.
    Ring(BufferRef),
    /// A buffer of the worker's own pool (epoll, or the ring was empty).
    Heap(Vec<u8>),
}

impl IoBuf for Chunk {
    fn as_init(&self) -> &[u8] {
        match self {
            Chunk::Ring(b) => b,
            Chunk::Heap(v) => v,
        }
    }
}

thread_local! {
    static HEAP_POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

impl Chunk {
    /// Gives the buffer back to its pool.
    fn recycle(self) {
        match self {
            // Dropping a ring buffer re-provides it to the kernel.
            Chunk::Ring(b) => drop(b),
            Chunk::Heap(mut v) => HEAP_POOL.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < HEAP_POOL_MAX {
                    v.clear();
                    p.push(v);
                }
            }),
        }
    }
}

/// Reads what `from` has received into a pooled buffer, taking the buffer
/// only once the data is there. `Ok(None)` at EOF.
async fn read_pooled(from: &TcpStream, uring: bool) -> io::Result<Option<Chunk>> {
    if uring {
        match runtime::recv_ring(from, RING_BUFFER).await {
            Ok(b) => return Ok(b.map(Chunk::Ring)),
            // Every ring buffer is in flight: read into one of our own.
            // compio reports the kernel's ENOBUFS as `ResourceBusy`.
            Err(e) if ring_exhausted(&e) => {}
            Err(e) => return Err(e),
        }
    }
    runtime::wait_readable(from.as_raw_fd()).await?;
    let buf = HEAP_POOL
        .with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(RING_BUFFER));
    let mut s = from;
    let BufResult(res, buf) = s.read(buf).await;
    match res? {
        0 => {
            Chunk::Heap(buf).recycle();
            Ok(None)
        }
        _ => Ok(Some(Chunk::Heap(buf))),
    }
}

/// Whether a ring receive failed only because every ring buffer was in
/// use: nothing was read, and the read can be retried into a buffer of our
/// own (treating it as an I/O error would reset a healthy connection).
pub(crate) fn ring_exhausted(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOBUFS) || e.kind() == io::ErrorKind::ResourceBusy
}

/// Waits until nothing has moved for `idle_timeout`.
async fn idle_watch(idle_timeout: Duration, activity: &Activity) {
    loop {
        let deadline = activity.last.get() + idle_timeout;
        if Instant::now() >= deadline {
            return;
        }
        runtime::sleep_until(deadline).await;
    }
}

/// [`proxy_both_ways`] towards an upstream [`Stream`], with the stream's
/// concrete type: the plain TCP case then carries only plain TCP state
/// (the task of every connection is as large as its largest branch), and
/// the TLS cases, whose read and write state is larger, are boxed once per
/// connection.
pub(crate) async fn proxy_to_stream(
    downstream: &impl Duplex,
    upstream: &Stream,
    idle_timeout: Duration,
    zero_copy: ZeroCopy,
    to_upstream: DirectionCounters<'_>,
    to_downstream: DirectionCounters<'_>,
) -> ForwardOutcome {
    match upstream {
        Stream::Plain(s) => {
            proxy_both_ways(
                downstream,
                s,
                idle_timeout,
                zero_copy,
                to_upstream,
                to_downstream,
            )
            .await
        }
        Stream::Tls(s) => {
            Box::pin(proxy_both_ways(
                downstream,
                &**s,
                idle_timeout,
                zero_copy,
                to_upstream,
                to_downstream,
            ))
            .await
        }
        Stream::Ktls(s) => {
            Box::pin(proxy_both_ways(
                downstream,
                s,
                idle_timeout,
                zero_copy,
                to_upstream,
                to_downstream,
            ))
            .await
        }
    }
}

/// Proxies until both directions have finished, one side fails, or the
/// connection is idle for `idle_timeout`.
pub(crate) async fn proxy_both_ways(
    downstream: &impl Duplex,
    upstream: &impl Duplex,
    idle_timeout: Duration,
    zero_copy: ZeroCopy,
    to_upstream: DirectionCounters<'_>,
    to_downstream: DirectionCounters<'_>,
) -> ForwardOutcome {
    let activity = Activity::new();
    let uring = runtime::current_is_uring();
    let up = Direction {
        from: downstream,
        to: upstream,
        from_side: Side::Downstream,
        to_side: Side::Upstream,
        counters: to_upstream,
        activity: &activity,
        zero_copy,
        moved: 0,
        uring,
    }
    .run();
    let down = Direction {
        from: upstream,
        to: downstream,
        from_side: Side::Upstream,
        to_side: Side::Downstream,
        counters: to_downstream,
        activity: &activity,
        zero_copy,
        moved: 0,
        uring,
    }
    .run();
    let both = try_join(up, down);
    let idle = idle_watch(idle_timeout, &activity);
    pin_mut!(both, idle);
    let (reason, error) = match select(both, idle).await {
        Either::Left((Ok(_), _)) => (CloseReason::Completed, None),
        Either::Left((Err(CopyError { side, error }), _)) => {
            // Reset the healthy side so the failure is visible end to end.
            let reason = match side {
                Side::Downstream => {
                    upstream.reset_on_close();
                    CloseReason::DownstreamError
                }
                Side::Upstream => {
                    downstream.reset_on_close();
                    CloseReason::UpstreamError
                }
            };
            (reason, Some(error))
        }
        Either::Right(((), _)) => (CloseReason::IdleTimeout, None),
    };
    ForwardOutcome {
        reason,
        error,
        spliced: activity.spliced.get(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exhausted_ring_is_retried_not_treated_as_a_connection_error() {
        // What compio returns for the kernel's ENOBUFS, and the raw errno.
        let busy = io::Error::new(
            io::ErrorKind::ResourceBusy,
            "buffer ring has no available buffer",
        );
        assert!(ring_exhausted(&busy));
        assert!(ring_exhausted(&io::Error::from_raw_os_error(libc::ENOBUFS)));
        assert!(!ring_exhausted(&io::Error::from(
            io::ErrorKind::ConnectionReset
        )));
    }
}
