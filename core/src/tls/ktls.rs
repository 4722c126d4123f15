//! Kernel TLS (kTLS): after the handshake, the session's record layer is
//! handed to the kernel, so data moves without userspace crypto.
//!
//! The kernel's support is probed once per process ([`available`]): one
//! `setsockopt(TCP_ULP, "tls")` on a connected loopback socket (the ULP
//! attaches only to established sockets). Where it is missing (ENOENT:
//! kernel without CONFIG_TLS) every session stays in userspace (rustls).
//!
//! Offloading one session ([`offload`]), in the order that keeps every
//! failure recoverable for as long as possible:
//! 1. the negotiated suite must be one the kernel implements (AES-GCM
//!    128/256, ChaCha20-Poly1305; TLS 1.2 or 1.3), nothing may wait to be
//!    sent and no plaintext may be buffered; otherwise the session stays
//!    in userspace;
//! 2. the TLS ULP is attached; if the kernel refuses, the session stays in
//!    userspace, untouched;
//! 3. only then are the secrets extracted (this consumes the rustls
//!    session) and given to the kernel for both directions; a failure from
//!    here on ends the connection.
//!
//! Handshakes that may be offloaded read the socket one TLS record at a
//! time (see `TlsStream`), so no record after the client's Finished is ever
//! taken out of the socket: the kernel decrypts it. On the kTLS socket,
//! reads return plaintext; a record that is not application data makes a
//! plain read fail with EIO, and is then taken with `recvmsg` and its type:
//! `close_notify` is the end of the stream, a TLS 1.3 KeyUpdate ends the
//! connection with a clear error (this kernel generation cannot rekey a
//! receiving socket), anything else is an error. Shutting down sends
//! `close_notify` as an alert record before the FIN.

use std::io;
use std::net::{TcpListener, TcpStream as StdTcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;

use rustls::{CipherSuite, ConnectionTrafficSecrets, ProtocolVersion};

use crate::forward::Duplex;
use crate::runtime::{BufResult, TcpStream};

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

/// Probes the kernel; cheap (one loopback connection). See [`available`]
/// for the cached answer.
pub fn probe() -> KtlsSupport {
    match try_attach() {
        Ok(()) => KtlsSupport::Available,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => KtlsSupport::Unavailable(format!(
            "TCP_ULP \"tls\": {e} (kernel built without CONFIG_TLS)"
        )),
        Err(e) => KtlsSupport::Unavailable(format!("TCP_ULP \"tls\": {e}")),
    }
}

/// The probe's answer, computed once per process.
pub fn support() -> &'static KtlsSupport {
    static SUPPORT: OnceLock<KtlsSupport> = OnceLock::new();
    SUPPORT.get_or_init(probe)
}

/// Whether sessions may be offloaded in this process.
pub fn available() -> bool {
    support().is_available()
}

fn try_attach() -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = StdTcpStream::connect(listener.local_addr()?)?;
    let (_server, _) = listener.accept()?;
    attach_ulp(client.as_raw_fd())
}

fn attach_ulp(fd: RawFd) -> io::Result<()> {
    let name = b"tls";
    // SAFETY: setsockopt reads `name.len()` bytes from a valid buffer on an
    // open socket.
    let rc = unsafe {
        libc::setsockopt(
            fd,
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

// From <linux/tls.h>.
const SOL_TLS: libc::c_int = 282;
const TLS_TX: libc::c_int = 1;
const TLS_RX: libc::c_int = 2;
const TLS_SET_RECORD_TYPE: libc::c_int = 1;
const TLS_GET_RECORD_TYPE: libc::c_int = 2;
const TLS_1_2_VERSION: u16 = 0x0303;
const TLS_1_3_VERSION: u16 = 0x0304;
const TLS_CIPHER_AES_GCM_128: u16 = 51;
const TLS_CIPHER_AES_GCM_256: u16 = 52;
const TLS_CIPHER_CHACHA20_POLY1305: u16 = 54;

const RECORD_ALERT: u8 = 21;
const RECORD_HANDSHAKE: u8 = 22;
const RECORD_APPLICATION_DATA: u8 = 23;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;

/// Whether the kernel implements the session's protocol and suite.
pub(crate) fn supports(version: Option<ProtocolVersion>, suite: Option<CipherSuite>) -> bool {
    use CipherSuite::*;
    let version_ok = matches!(
        version,
        Some(ProtocolVersion::TLSv1_2 | ProtocolVersion::TLSv1_3)
    );
    let suite_ok = matches!(
        suite,
        Some(
            TLS13_AES_128_GCM_SHA256
                | TLS13_AES_256_GCM_SHA384
                | TLS13_CHACHA20_POLY1305_SHA256
                | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                | TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
                | TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                | TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        )
    );
    version_ok && suite_ok
}

/// The kernel's `tls12_crypto_info_*` structure for one direction, as
/// bytes: `{u16 version, u16 cipher_type}` followed by the cipher's fields
/// (AES-GCM: iv[8] key[16|32] salt[4] rec_seq[8]; ChaCha20-Poly1305:
/// iv[12] key[32] rec_seq[8]).
pub(crate) fn crypto_info(
    version: ProtocolVersion,
    seq: u64,
    secrets: &ConnectionTrafficSecrets,
) -> io::Result<Vec<u8>> {
    let version = match version {
        ProtocolVersion::TLSv1_2 => TLS_1_2_VERSION,
        ProtocolVersion::TLSv1_3 => TLS_1_3_VERSION,
        _ => return Err(io::Error::other("kTLS: unsupported protocol version")),
    };
    let mut out = Vec::with_capacity(4 + 12 + 32 + 4 + 8);
    out.extend_from_slice(&version.to_ne_bytes());
    let (cipher, key, iv) = match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (TLS_CIPHER_AES_GCM_128, key, iv),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (TLS_CIPHER_AES_GCM_256, key, iv),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            (TLS_CIPHER_CHACHA20_POLY1305, key, iv)
        }
        _ => return Err(io::Error::other("kTLS: unsupported cipher")),
    };
    out.extend_from_slice(&cipher.to_ne_bytes());
    let iv = iv.as_ref();
    let key = key.as_ref();
    if iv.len() != 12 {
        return Err(io::Error::other("kTLS: unexpected IV length"));
    }
    if cipher == TLS_CIPHER_CHACHA20_POLY1305 {
        out.extend_from_slice(iv);
        out.extend_from_slice(key);
    } else {
        // AES-GCM: the 4-byte salt is the implicit part of the nonce.
        out.extend_from_slice(&iv[4..]);
        out.extend_from_slice(key);
        out.extend_from_slice(&iv[..4]);
    }
    out.extend_from_slice(&seq.to_be_bytes());
    Ok(out)
}

fn set_crypto(fd: RawFd, direction: libc::c_int, info: &[u8]) -> io::Result<()> {
    // SAFETY: setsockopt reads `info.len()` bytes from a valid buffer.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            SOL_TLS,
            direction,
            info.as_ptr().cast(),
            info.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Why a session was not offloaded.
pub(crate) enum OffloadError {
    /// The session is intact and stays in userspace; the reason says why.
    Declined(Box<super::stream::TlsStream>, String),
    /// The session was consumed and the connection cannot continue.
    Fatal(io::Error),
}

/// Hands `stream`'s record layer to the kernel (see the module docs).
pub(crate) fn offload(stream: super::stream::TlsStream) -> Result<KtlsStream, OffloadError> {
    if let Err(reason) = stream.offload_ready() {
        return Err(OffloadError::Declined(Box::new(stream), reason));
    }
    if let Err(e) = attach_ulp(stream.raw_fd()) {
        return Err(OffloadError::Declined(
            Box::new(stream),
            format!("TCP_ULP \"tls\": {e}"),
        ));
    }
    let (sock, conn) = stream.into_parts();
    let version = conn.protocol_version();
    let secrets = conn
        .dangerous_extract_secrets()
        .map_err(|e| OffloadError::Fatal(io::Error::other(format!("kTLS: {e}"))))?;
    let version =
        version.ok_or_else(|| OffloadError::Fatal(io::Error::other("kTLS: no version")))?;
    let fd = sock.as_raw_fd();
    let (tx_seq, tx) = &secrets.tx;
    let (rx_seq, rx) = &secrets.rx;
    let tx_info = crypto_info(version, *tx_seq, tx).map_err(OffloadError::Fatal)?;
    let rx_info = crypto_info(version, *rx_seq, rx).map_err(OffloadError::Fatal)?;
    set_crypto(fd, TLS_TX, &tx_info)
        .map_err(|e| OffloadError::Fatal(io::Error::new(e.kind(), format!("kTLS TLS_TX: {e}"))))?;
    set_crypto(fd, TLS_RX, &rx_info)
        .map_err(|e| OffloadError::Fatal(io::Error::new(e.kind(), format!("kTLS TLS_RX: {e}"))))?;
    Ok(KtlsStream { sock })
}

/// A TLS connection whose record layer the kernel runs: plain reads and
/// writes carry plaintext.
pub struct KtlsStream {
    sock: TcpStream,
}

impl std::fmt::Debug for KtlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KtlsStream")
    }
}

/// What a non-application-data record meant.
enum ControlRecord {
    /// The peer's close_notify: end of stream.
    CloseNotify,
    /// A record to skip (a NewSessionTicket, or an empty one).
    Skip,
}

/// Room for one control message carrying a record type (one byte), aligned
/// as the kernel expects cmsg headers to be.
#[repr(C, align(8))]
#[derive(Default)]
struct RecordTypeControl([u8; 32]);

impl RecordTypeControl {
    /// A msghdr over `iov` with this buffer as its control area.
    fn msghdr(&mut self, iov: &mut libc::iovec) -> libc::msghdr {
        // SAFETY: CMSG_SPACE is a pure computation; 24 bytes on 64-bit
        // Linux, which the 32-byte buffer holds.
        let space = (unsafe { libc::CMSG_SPACE(1) } as usize).min(self.0.len());
        // SAFETY: msghdr is plain data, valid when zeroed.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov;
        msg.msg_iovlen = 1;
        msg.msg_control = self.0.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        msg
    }
}

impl KtlsStream {
    /// The socket's descriptor.
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }

    /// Takes the pending non-data record with its type (after a read
    /// failed with EIO) and decides what it means.
    fn control_record(&self) -> io::Result<ControlRecord> {
        let fd = self.sock.as_raw_fd();
        let mut data = [0u8; 16 * 1024 + 256];
        let mut control = RecordTypeControl::default();
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        let mut msg = control.msghdr(&mut iov);
        // SAFETY: `msg` points at `iov` and `control`, valid for the lengths
        // given and alive across the call; MSG_DONTWAIT because the record
        // is already queued.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let mut record_type = None;
        // SAFETY: the CMSG_* walk stays within `control`, which the kernel
        // filled and described in `msg`.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == SOL_TLS && (*cmsg).cmsg_type == TLS_GET_RECORD_TYPE {
                    record_type = Some(*libc::CMSG_DATA(cmsg));
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        let body = &data[..n];
        match record_type {
            Some(RECORD_ALERT) => match body {
                [_, 0] => Ok(ControlRecord::CloseNotify),
                [level, desc] => Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("TLS alert from peer (level {level}, description {desc})"),
                )),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "malformed TLS alert",
                )),
            },
            Some(RECORD_HANDSHAKE) => match body.first() {
                Some(&HANDSHAKE_KEY_UPDATE) => Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "peer sent a TLS KeyUpdate; kernel TLS on this kernel cannot take new receive keys, so the connection is closed",
                )),
                Some(&HANDSHAKE_NEW_SESSION_TICKET) => Ok(ControlRecord::Skip),
                other => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected TLS handshake message {other:?} after the handshake"),
                )),
            },
            Some(RECORD_APPLICATION_DATA) if n == 0 => Ok(ControlRecord::Skip),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected TLS record type {other:?}"),
            )),
        }
    }

    /// Sends close_notify as an alert record.
    fn send_close_notify(&self) -> io::Result<()> {
        let fd = self.sock.as_raw_fd();
        let mut alert = [1u8, 0u8]; // warning, close_notify
        let mut control = RecordTypeControl::default();
        let mut iov = libc::iovec {
            iov_base: alert.as_mut_ptr().cast(),
            iov_len: alert.len(),
        };
        let msg = control.msghdr(&mut iov);
        // SAFETY: the control buffer has room for one cmsg with one byte of
        // data (CMSG_SPACE(1)), which is what is written.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = SOL_TLS;
            (*cmsg).cmsg_type = TLS_SET_RECORD_TYPE;
            (*cmsg).cmsg_len = libc::CMSG_LEN(1) as _;
            *libc::CMSG_DATA(cmsg) = RECORD_ALERT;
        }
        // SAFETY: as above.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl Duplex for KtlsStream {
    async fn read_into(&self, mut buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        buf.clear();
        self.read_append(buf).await
    }

    /// Reads records' plaintext after `buf`'s contents; control records
    /// (the kernel reports them as EIO) are handled here.
    async fn read_append(&self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        let mut buf = buf;
        let len = buf.len();
        loop {
            buf.truncate(len);
            let BufResult(res, b) = self.sock.read_append(buf).await;
            buf = b;
            match res {
                Err(e) if e.raw_os_error() == Some(libc::EIO) => match self.control_record() {
                    Ok(ControlRecord::CloseNotify) => return BufResult(Ok(0), buf),
                    Ok(ControlRecord::Skip) => continue,
                    Err(e) => return BufResult(Err(e), buf),
                },
                other => return BufResult(other, buf),
            }
        }
    }

    async fn write_all_from<B: crate::runtime::IoBuf>(&self, buf: B) -> BufResult<(), B> {
        self.sock.write_all_from(buf).await
    }

    async fn shutdown_write(&self) -> io::Result<()> {
        // A full send buffer only costs the peer its close_notify (it sees
        // the FIN); the FIN itself must still go.
        if let Err(e) = self.send_close_notify() {
            tracing::debug!(error = %e, "kTLS: close_notify not sent");
        }
        self.sock.shutdown_write().await
    }

    fn reset_on_close(&self) {
        self.sock.reset_on_close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    #[test]
    fn crypto_info_matches_the_kernel_layout() {
        let iv = Iv::new([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let key = AeadKey::from([7u8; 32]);
        let aes = crypto_info(
            ProtocolVersion::TLSv1_3,
            0x0102,
            &ConnectionTrafficSecrets::Aes256Gcm { key, iv },
        )
        .unwrap();
        // version, cipher, iv[8], key[32], salt[4], rec_seq[8]
        assert_eq!(aes.len(), 4 + 8 + 32 + 4 + 8);
        assert_eq!(&aes[..2], &0x0304u16.to_ne_bytes());
        assert_eq!(&aes[2..4], &52u16.to_ne_bytes());
        assert_eq!(&aes[4..12], &[5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(&aes[44..48], &[1, 2, 3, 4]);
        assert_eq!(&aes[48..], &[0, 0, 0, 0, 0, 0, 1, 2]);
        let iv = Iv::new([9; 12]);
        let key = AeadKey::from([3u8; 32]);
        let chacha = crypto_info(
            ProtocolVersion::TLSv1_2,
            5,
            &ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv },
        )
        .unwrap();
        assert_eq!(chacha.len(), 4 + 12 + 32 + 8);
        assert_eq!(&chacha[2..4], &54u16.to_ne_bytes());
    }

    #[test]
    fn only_suites_the_kernel_runs_are_offloaded() {
        assert!(supports(
            Some(ProtocolVersion::TLSv1_3),
            Some(CipherSuite::TLS13_AES_256_GCM_SHA384)
        ));
        assert!(!supports(
            Some(ProtocolVersion::TLSv1_3),
            Some(CipherSuite::TLS13_AES_128_CCM_SHA256)
        ));
        assert!(!supports(None, Some(CipherSuite::TLS13_AES_256_GCM_SHA384)));
    }
}
