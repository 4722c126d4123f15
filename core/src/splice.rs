//! Zero-copy forwarding for plain TCP: socket -> pipe -> socket with
//! `splice(2)`, so the payload never enters user space.
//!
//! Readiness-driven and non-blocking, on the worker's own thread: a splice
//! that would block returns `EAGAIN` and the direction waits for the socket
//! with one poll on the worker's ring. io_uring's IORING_OP_SPLICE was the
//! alternative; the kernel always runs it on io-wq worker threads, which
//! would take the copy off the worker's core (REFERENCE.md section 3).
//!
//! Pipes are kept per worker and reused: a pipe goes back to the pool only
//! empty, so no byte of one connection can reach another.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Bytes a pipe holds: one splice moves at most this much. As large as the
/// buffered path's biggest buffer, which is what makes bulk reads cheap.
pub(crate) const PIPE_CAPACITY: usize = 256 * 1024;

/// Idle pipes kept per worker for reuse.
const POOL_MAX: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A pipe between the two sockets of one direction.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes in the pipe not yet spliced out.
    held: usize,
}

impl Pipe {
    /// A pipe from this worker's pool, or a new one; `None` when none can
    /// be made (out of descriptors or memory): the caller keeps the
    /// buffered path.
    pub(crate) fn take() -> Option<PipeLease> {
        let pipe = POOL.with(|p| p.borrow_mut().pop()).or_else(|| match Pipe::new() {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::debug!(error = %e, "no pipe for zero-copy forwarding; buffered path kept");
                None
            }
        })?;
        Some(PipeLease(Some(pipe)))
    }

    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned here.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A bigger pipe means fewer splices per GiB; if the kernel refuses
        // (pipe-max-size, pipe-user-pages-soft) the default 64 KiB works.
        // SAFETY: fcntl on a descriptor owned here.
        unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_CAPACITY as libc::c_int,
            )
        };
        Ok(Pipe {
            read,
            write,
            held: 0,
        })
    }

    /// Bytes waiting in the pipe.
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Moves what `from` has received into the pipe: `Ok(0)` at EOF,
    /// `WouldBlock` when nothing is there yet.
    pub(crate) fn fill(&mut self, from: RawFd) -> io::Result<usize> {
        let n = splice(from, self.write.as_raw_fd(), PIPE_CAPACITY - self.held)?;
        self.held += n;
        Ok(n)
    }

    /// Moves bytes from the pipe into `to`: `WouldBlock` when `to`'s send
    /// buffer is full.
    pub(crate) fn drain(&mut self, to: RawFd) -> io::Result<usize> {
        let n = splice(self.read.as_raw_fd(), to, self.held)?;
        self.held -= n;
        Ok(n)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: splice(2) between descriptors the caller keeps open; no
        // user memory is passed. No SPLICE_F_MORE: it corks small messages.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A pipe in use by one direction; back to the worker's pool on drop if it
/// is empty, closed otherwise (its bytes belong to a failed connection).
pub(crate) struct PipeLease(Option<Pipe>);

impl std::ops::Deref for PipeLease {
    type Target = Pipe;
    fn deref(&self) -> &Pipe {
        // Always Some until drop.
        self.0.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for PipeLease {
    fn deref_mut(&mut self) -> &mut Pipe {
        self.0.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for PipeLease {
    fn drop(&mut self) {
        if let Some(pipe) = self.0.take()
            && pipe.held == 0
        {
            POOL.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL_MAX {
                    p.push(pipe);
                }
            });
        }
    }
}

/// Puts `fd` in non-blocking mode, which splice needs on the socket side:
/// `SPLICE_F_NONBLOCK` covers only the pipe. io_uring operations on the
/// same socket are unaffected (the kernel still waits for readiness
/// itself), and the epoll driver's sockets are non-blocking already.
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn moves_bytes_between_sockets_without_user_copies() {
        let (mut client, src) = pair();
        let (dst, mut server) = pair();
        set_nonblocking(src.as_raw_fd()).unwrap();
        set_nonblocking(dst.as_raw_fd()).unwrap();
        let mut pipe = Pipe::take().unwrap();
        let err = pipe.fill(src.as_raw_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "nothing sent yet");
        client.write_all(b"hello, splice").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(pipe.fill(src.as_raw_fd()).unwrap(), 13);
        assert_eq!(pipe.held(), 13);
        assert_eq!(pipe.drain(dst.as_raw_fd()).unwrap(), 13);
        assert_eq!(pipe.held(), 0);
        let mut got = [0u8; 13];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello, splice");
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(pipe.fill(src.as_raw_fd()).unwrap(), 0, "EOF");
    }

    #[test]
    fn only_empty_pipes_go_back_to_the_pool() {
        let before = POOL.with(|p| p.borrow().len());
        drop(Pipe::take().unwrap());
        assert_eq!(POOL.with(|p| p.borrow().len()), before + 1);
        let (mut client, src) = pair();
        let mut pipe = Pipe::take().unwrap();
        client.write_all(b"left behind").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        set_nonblocking(src.as_raw_fd()).unwrap();
        assert!(pipe.fill(src.as_raw_fd()).unwrap() > 0);
        let pooled = POOL.with(|p| p.borrow().len());
        drop(pipe);
        assert_eq!(
            POOL.with(|p| p.borrow().len()),
            pooled,
            "a pipe with bytes is closed"
        );
    }
}
