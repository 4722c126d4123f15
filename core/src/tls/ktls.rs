//! Probing for kernel TLS (kTLS).
//!
//! With the kernel's TLS upper-layer protocol, a session's record layer can
//! be handed to the kernel after the handshake, so data moves without
//! userspace crypto (and can use splice). This module only asks whether the
//! kernel offers it: one `setsockopt(TCP_ULP, "tls")` on a connected
//! loopback socket at startup (the ULP attaches only to established
//! sockets). The offload itself is not implemented yet, so every session
//! runs in userspace (rustls) whatever the probe says; the probe's answer
//! and each listener's data path are reported so operators can see both.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

/// What the kernel offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KtlsSupport {
    /// The TLS ULP attached.
    Available,
    /// It did not; the reason says why (ENOENT: kernel without CONFIG_TLS).
    Unavailable(String),
}

impl KtlsSupport {
    /// Whether the kernel offers kTLS.
    pub fn is_available(&self) -> bool {
        matches!(self, KtlsSupport::Available)
    }
}

/// Probes once; cheap (one loopback connection).
pub fn probe() -> KtlsSupport {
    match try_attach() {
        Ok(()) => KtlsSupport::Available,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => KtlsSupport::Unavailable(format!(
            "TCP_ULP \"tls\": {e} (kernel built without CONFIG_TLS)"
        )),
        Err(e) => KtlsSupport::Unavailable(format!("TCP_ULP \"tls\": {e}")),
    }
}

fn try_attach() -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (_server, _) = listener.accept()?;
    let name = b"tls";
    // SAFETY: setsockopt reads `name.len()` bytes from a valid buffer on an
    // open socket we own.
    let rc = unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_ULP,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
