//! The runtime seam: everything `core` needs from the async runtime, in one file.
//!
//! compio changes a dozen APIs per 0.x release, so no other module names it.
//! This file owns building a per-core runtime (io_uring or epoll), spawning
//! tasks, timers, and the TCP types. An upgrade touches only this file.

use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use compio::driver::{DriverType, ProactorBuilder};

pub(crate) use compio::BufResult;
pub(crate) use compio::buf::IoBuf;
pub(crate) use compio::driver::BufferRef;
pub(crate) use compio::io::{AsyncRead, AsyncWriteExt};
pub(crate) use compio::net::TcpStream;

/// Which I/O driver the operator asked for (`--io-engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoEngineChoice {
    /// io_uring when the kernel lets us set it up, epoll otherwise.
    #[default]
    Auto,
    /// io_uring or fail at startup.
    Uring,
    /// epoll (readiness-based), never io_uring.
    Epoll,
}

impl fmt::Display for IoEngineChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Uring => "uring",
            Self::Epoll => "epoll",
        })
    }
}

impl std::str::FromStr for IoEngineChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" => Ok(Self::Uring),
            "epoll" => Ok(Self::Epoll),
            other => Err(format!(
                "unknown io engine `{other}` (expected auto, uring or epoll)"
            )),
        }
    }
}

/// The I/O driver a worker actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEngine {
    /// Completion-based io_uring.
    Uring,
    /// Readiness-based epoll.
    Epoll,
}

impl IoEngine {
    /// The label used in logs and in `ringmesh_info{io_engine}`.
    pub fn as_str(self) -> &'static str {
        match self {
            IoEngine::Uring => "io_uring",
            IoEngine::Epoll => "epoll",
        }
    }
}

impl fmt::Display for IoEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A single-threaded runtime owned by one worker thread.
pub(crate) struct Runtime {
    inner: compio::runtime::Runtime,
    engine: IoEngine,
}

/// What building a runtime decided, for the startup log.
pub(crate) struct RuntimeBuilt {
    pub runtime: Runtime,
    /// Why io_uring was not used when `auto` fell back to epoll.
    pub fallback_reason: Option<String>,
}

/// Submission queue entries per core: thousands of connections each keep a
/// read in flight, and a full queue forces extra submit syscalls.
const RING_ENTRIES: u32 = 4096;

fn proactor(driver: DriverType, deferred: bool) -> ProactorBuilder {
    let mut builder = ProactorBuilder::new();
    builder
        .capacity(RING_ENTRIES)
        .driver_type(driver)
        .buffer_pool_size(
            std::num::NonZero::new(crate::forward::RING_BUFFERS)
                .unwrap_or(std::num::NonZero::<u16>::MIN),
        )
        .buffer_pool_buffer_len(crate::forward::RING_BUFFER);
    if deferred {
        // Completions are processed when the worker asks for them instead of
        // interrupting it with task work. Safe with compio: other threads
        // wake a runtime through an eventfd, never by submitting.
        builder.single_issuer(true).defer_taskrun(true);
    }
    builder
}

fn build_with(driver: DriverType) -> io::Result<compio::runtime::Runtime> {
    let build = |deferred| {
        compio::runtime::RuntimeBuilder::new()
            .with_proactor(proactor(driver, deferred))
            .build()
    };
    match driver {
        // DEFER_TASKRUN needs Linux 6.1: retry without it before giving up.
        DriverType::IoUring => build(true).or_else(|_| build(false)),
        _ => build(false),
    }
}

impl Runtime {
    /// Builds the runtime for the current thread with the chosen engine.
    pub(crate) fn build(choice: IoEngineChoice) -> io::Result<RuntimeBuilt> {
        let (inner, fallback_reason) = match choice {
            IoEngineChoice::Uring => (build_with(DriverType::IoUring)?, None),
            IoEngineChoice::Epoll => (build_with(DriverType::Poll)?, None),
            IoEngineChoice::Auto => match build_with(DriverType::IoUring) {
                Ok(rt) => (rt, None),
                Err(e) => (
                    build_with(DriverType::Poll)?,
                    Some(describe_uring_error(&e)),
                ),
            },
        };
        let engine = if inner.driver_type().is_iouring() {
            IoEngine::Uring
        } else {
            IoEngine::Epoll
        };
        Ok(RuntimeBuilt {
            runtime: Runtime { inner, engine },
            fallback_reason,
        })
    }

    pub(crate) fn engine(&self) -> IoEngine {
        self.engine
    }

    pub(crate) fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.inner.block_on(future)
    }
}

fn describe_uring_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => {
            format!("io_uring_setup: {e} (blocked by seccomp or kernel.io_uring_disabled)")
        }
        Some(libc::ENOSYS) => format!("io_uring_setup: {e} (kernel without io_uring)"),
        _ => format!("io_uring_setup: {e}"),
    }
}

/// A handle to a spawned task. Dropping it cancels the task; call
/// [`Task::detach`] for work that must run to completion on its own.
pub(crate) struct Task<T>(compio::runtime::JoinHandle<T>);

impl<T> Task<T> {
    pub(crate) fn detach(self) {
        self.0.detach()
    }
}

/// Spawns a task on the current worker's runtime.
pub(crate) fn spawn<F: Future + 'static>(future: F) -> Task<F::Output> {
    Task(compio::runtime::spawn(future))
}

/// Sleeps until `deadline`.
pub(crate) fn sleep_until(deadline: Instant) -> impl Future<Output = ()> {
    compio::time::sleep_until(deadline)
}

/// Sleeps for `duration`.
pub(crate) fn sleep(duration: Duration) -> impl Future<Output = ()> {
    compio::time::sleep(duration)
}

/// Runs `future` for at most `duration`; `None` when the time ran out.
///
/// Only for operations that are safe to abandon (connect): a read abandoned
/// this way may already have consumed bytes in the kernel.
///
/// A plain combinator rather than an `async fn` around compio's own
/// timeout: each async layer stores its inner future again, and an HTTP
/// connection task carries the size of its largest timed read for its whole
/// life (3 KB for a 0.7 KB read before).
pub(crate) fn timeout<F: Future>(
    duration: Duration,
    future: F,
) -> Timeout<F, impl Future<Output = ()>> {
    Timeout {
        future,
        // An async fn does nothing until polled: no timer is registered
        // unless the future has to wait.
        timer: compio::time::sleep(duration),
    }
}

/// The future of [`timeout`].
pub(crate) struct Timeout<F, T> {
    future: F,
    timer: T,
}

impl<F: Future, T: Future<Output = ()>> Future for Timeout<F, T> {
    type Output = Option<F::Output>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        // SAFETY: both fields are structurally pinned: never moved out of
        // `self`, and `Timeout` has no Drop impl.
        let this = unsafe { self.get_unchecked_mut() };
        let future = unsafe { std::pin::Pin::new_unchecked(&mut this.future) };
        if let Poll::Ready(v) = future.poll(cx) {
            return Poll::Ready(Some(v));
        }
        let timer = unsafe { std::pin::Pin::new_unchecked(&mut this.timer) };
        match timer.poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A worker's listening socket, accepted from by readiness: wait until the
/// kernel queue holds a connection, then `accept4(2)` without blocking.
///
/// Not io_uring's accept operation, on purpose: a queued accept that is
/// cancelled (the listener removed by a reload, or handed to a new process
/// during a binary upgrade) can complete in the kernel anyway, and the
/// connection it took off the queue is then lost. A cancelled readiness
/// wait takes nothing off the queue: every connection stays there for
/// whichever process or socket accepts next.
pub(crate) struct Listener {
    socket: std::net::TcpListener,
}

impl Listener {
    /// The bound address.
    pub(crate) fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.socket.local_addr()
    }

    /// The next connection in the queue. Cancellation-safe.
    pub(crate) async fn accept(&self) -> io::Result<(TcpStream, std::net::SocketAddr)> {
        use std::os::fd::AsRawFd;
        loop {
            // std's accept is accept4(SOCK_CLOEXEC); the socket is
            // non-blocking, so an empty queue is `WouldBlock`.
            match self.socket.accept() {
                Ok((stream, peer)) => return Ok((TcpStream::from_std(stream)?, peer)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    poll_once(
                        self.socket.as_raw_fd(),
                        compio::driver::op::Interest::Readable,
                    )
                    .await?
                }
                // The client gave up while queued, or a signal: try the next.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Adopts a listening socket created by the control thread (or inherited
/// from the process this one upgraded) into this worker's runtime.
pub(crate) fn listener_from_std(listener: std::net::TcpListener) -> io::Result<Listener> {
    listener.set_nonblocking(true)?;
    Ok(Listener { socket: listener })
}

/// Opens a TCP connection.
pub(crate) async fn connect(addr: std::net::SocketAddr) -> io::Result<TcpStream> {
    TcpStream::connect(addr).await
}

/// Reads what `stream` has received without consuming it.
pub(crate) async fn peek(stream: &TcpStream, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
    stream.peek(buf).await
}

/// Reads exactly `len` bytes (`UnexpectedEof` if the peer closes first).
pub(crate) async fn read_exact(stream: &TcpStream, len: usize) -> io::Result<Vec<u8>> {
    use compio::buf::{IntoInner, IoBuf};
    use compio::io::AsyncReadExt;
    let mut s = stream;
    let BufResult(res, slice) = s.read_exact(Vec::with_capacity(len).slice(0..len)).await;
    res.map(|()| slice.into_inner())
}

/// Shuts down the write half (sends FIN). A direct `shutdown(2)`: it never
/// blocks for TCP, whereas io_uring runs IORING_OP_SHUTDOWN on an io-wq
/// thread, which cost a cross-thread hand-off per connection (a fifth of
/// the proxy's CPU under connection churn, bench/README.md).
pub(crate) fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: shutdown(2) on a descriptor the stream owns; no memory passed.
    if unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the current worker runs io_uring (else epoll).
pub(crate) fn current_is_uring() -> bool {
    compio::runtime::Runtime::with_current(|rt| rt.driver_type().is_iouring())
}

/// Waits until `fd` is readable (data, EOF or an error is pending), without
/// reading and without holding a buffer.
pub(crate) async fn wait_readable(fd: RawFd) -> io::Result<()> {
    poll_once(fd, compio::driver::op::Interest::Readable).await
}

/// Waits until `fd` has room to write (or an error is pending).
pub(crate) async fn wait_writable(fd: RawFd) -> io::Result<()> {
    poll_once(fd, compio::driver::op::Interest::Writable).await
}

async fn poll_once(fd: RawFd, interest: compio::driver::op::Interest) -> io::Result<()> {
    let op = compio::driver::op::PollOnce::new(RawFdRef(fd), interest);
    compio::runtime::submit(op).await.0.map(|_| ())
}

/// A descriptor the caller keeps open for as long as the operation runs
/// (the kernel holds its own reference to the file once it is submitted).
struct RawFdRef(RawFd);

impl std::os::fd::AsFd for RawFdRef {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the connection that owns the descriptor outlives every
        // operation it submits on it (they are awaited in its task).
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) }
    }
}

/// Receives into a buffer of the worker's provided-buffer ring (io_uring):
/// the kernel picks the buffer only when data arrives, so a connection
/// waiting for bytes holds none. `Ok(None)` at EOF. Fails with `ENOBUFS`
/// when every ring buffer is in use; the caller then reads into its own.
pub(crate) async fn recv_ring(stream: &TcpStream, len: usize) -> io::Result<Option<BufferRef>> {
    use compio::driver::op::{RecvFlags, RecvManaged, ResultTakeBuffer};
    use std::os::fd::AsRawFd;
    let pool = compio::runtime::Runtime::with_current(|rt| rt.buffer_pool())?;
    let op = RecvManaged::new(RawFdRef(stream.as_raw_fd()), &pool, len, RecvFlags::empty())?;
    let res = compio::runtime::submit(op).await;
    // SAFETY: the result is the byte count the kernel wrote into the buffer.
    match unsafe { res.take_buffer() }? {
        Some(b) if !b.is_empty() => Ok(Some(b)),
        _ => Ok(None),
    }
}

/// Writes all of `buf` to `stream`: one send per call unless the kernel
/// takes less. A plain loop over the driver's send operation; compio's own
/// `write_all` future is several times larger, and its size is carried by
/// every connection task for its whole life (the task is as large as its
/// largest state).
pub(crate) async fn send_all<B: IoBuf>(stream: &TcpStream, buf: B) -> BufResult<(), B> {
    use compio::buf::IntoInner;
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let len = buf.as_init().len();
    let mut buf = buf;
    let mut written = 0;
    while written < len {
        let op = compio::driver::op::Send::new(
            RawFdRef(fd),
            buf.slice(written..),
            compio::driver::op::SendFlags::empty(),
        );
        let BufResult(res, op) = compio::runtime::submit(op).await;
        buf = op.into_inner().into_inner();
        match res {
            Ok(0) => return BufResult(Err(io::ErrorKind::WriteZero.into()), buf),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return BufResult(Err(e), buf),
        }
    }
    BufResult(Ok(()), buf)
}

/// Receives after `buf`'s contents, up to its capacity; `Ok(0)` at EOF. A
/// plain receive operation: compio's `read` future is several times larger,
/// and every HTTP connection task carries the size of its largest read
/// while idle.
pub(crate) async fn recv_append(stream: &TcpStream, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
    use compio::buf::IntoInner;
    use std::os::fd::AsRawFd;
    let len = buf.len();
    let op = compio::driver::op::Recv::new(
        RawFdRef(stream.as_raw_fd()),
        buf.slice(len..),
        compio::driver::op::RecvFlags::empty(),
    );
    let BufResult(res, op) = compio::runtime::submit(op).await;
    let mut buf = op.into_inner().into_inner();
    if let Ok(n) = res {
        // SAFETY: the kernel wrote `n` bytes right after the first `len`,
        // within the capacity the slice exposed.
        unsafe { buf.set_len((len + n).min(buf.capacity())) };
    }
    BufResult(res, buf)
}
