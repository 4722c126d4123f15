//! Socket calls around the hand-over: connecting to the upgrade socket with
//! a deadline, the peer credential check (`SO_PEERCRED`), and checking that
//! a received descriptor is the listening TCP socket the manifest announced.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::time::Duration;

use super::UpgradeError;
use super::conn::Deadline;

/// Connects to the Unix socket at `path` before the deadline. Blocking
/// connect with `SO_SNDTIMEO`: a full backlog makes a Unix connect wait.
pub(super) fn connect(path: &Path, deadline: Deadline) -> Result<StdUnixStream, UpgradeError> {
    let fail = |source| UpgradeError::Connect {
        path: path.to_owned(),
        source,
    };
    let (addr, addr_len) = unix_addr(path).map_err(fail)?;
    // SAFETY: plain socket(2).
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    loop {
        let Some(left) = deadline.remaining() else {
            return Err(deadline.expired("connecting"));
        };
        set_timeout(socket.as_fd(), libc::SO_SNDTIMEO, left).map_err(fail)?;
        // SAFETY: addr is a valid sockaddr_un of addr_len bytes.
        let r = unsafe {
            libc::connect(
                socket.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                addr_len,
            )
        };
        if r == 0 {
            return Ok(StdUnixStream::from(socket));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => continue,
            Some(libc::ENOENT) | Some(libc::ECONNREFUSED) => {
                return Err(UpgradeError::NotRunning {
                    path: path.to_owned(),
                    source: e,
                });
            }
            _ => return Err(fail(e)),
        }
    }
}

/// `path` as a `sockaddr_un` and its length.
fn unix_addr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a socket path must be 1 to {} bytes without NUL",
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// Sets `SO_SNDTIMEO` or `SO_RCVTIMEO`; never to zero, which means forever.
fn set_timeout(fd: BorrowedFd<'_>, option: libc::c_int, timeout: Duration) -> io::Result<()> {
    let timeout = timeout.max(Duration::from_micros(1));
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: tv is a valid timeval of the stated size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&tv as *const libc::timeval).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Rejects a peer that runs as neither our effective uid nor root; returns
/// its pid for the log.
pub(super) fn check_peer(fd: BorrowedFd<'_>) -> Result<i32, UpgradeError> {
    // SAFETY: ucred is plain data.
    let mut cred: libc::ucred = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for the call and sized as stated.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(UpgradeError::Io {
            during: "checking the peer's credentials",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: geteuid cannot fail.
    let ours = unsafe { libc::geteuid() };
    if !peer_allowed(cred.uid, ours) {
        return Err(UpgradeError::PeerNotAllowed {
            uid: cred.uid,
            ours,
        });
    }
    Ok(cred.pid)
}

/// The peer must be us or root: root may start an upgrade of our process,
/// another user may not (nor may we receive sockets from one).
pub(super) fn peer_allowed(peer: libc::uid_t, ours: libc::uid_t) -> bool {
    peer == ours || peer == 0
}

/// A received descriptor must be a listening TCP socket bound to `bound`
/// (same IP and port); returns what is wrong otherwise.
pub(super) fn check_listening(fd: BorrowedFd<'_>, bound: SocketAddr) -> Result<(), String> {
    let kind = sockopt_int(fd, libc::SO_TYPE).map_err(|e| format!("not a socket ({e})"))?;
    if kind != libc::SOCK_STREAM {
        return Err("not a stream socket".to_owned());
    }
    if sockopt_int(fd, libc::SO_ACCEPTCONN).map_err(|e| e.to_string())? != 1 {
        return Err("not listening".to_owned());
    }
    let local = local_addr(fd).map_err(|e| e.to_string())?;
    if local.ip() != bound.ip() || local.port() != bound.port() {
        return Err(format!("bound to {local}, not {bound}"));
    }
    Ok(())
}

/// An integer `SOL_SOCKET` option.
pub(super) fn sockopt_int(fd: BorrowedFd<'_>, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are valid for the call and sized as stated.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// `getsockname` of an IP socket.
pub(super) fn local_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage is large enough for any address and len says so.
    let r = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is aligned for it.
            let sin = unsafe {
                &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        family => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an IP socket (address family {family})"),
        )),
    }
}
