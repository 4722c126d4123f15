//! A TLS session over a compio TCP stream, usable from both copy
//! directions at once.
//!
//! compio's I/O takes owned buffers, and its stock TLS wrappers hide the
//! session (we need the peer certificate, SNI and ALPN), hence this small
//! adapter. The rustls session sits in a `RefCell` that is never borrowed
//! across an await. Socket writes go through one async lock that also
//! covers taking ciphertext out of the session, so records reach the wire
//! in the order rustls produced them even when both directions write
//! (data one way, an alert or key update the other).

use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, Write};
use std::time::Duration;

use futures_util::lock::Mutex;

use crate::runtime::{self, AsyncRead, AsyncWriteExt, BufResult, TcpStream};

/// First ciphertext read size: one maximum TLS record plus overhead.
const CIPHER_BUFFER: usize = 18 * 1024;
/// Ciphertext read size once reads fill the buffer (bulk transfers): fewer,
/// larger reads cost less CPU per byte.
const CIPHER_BUFFER_BULK: usize = 128 * 1024;

/// An established TLS session.
pub struct TlsStream {
    sock: TcpStream,
    conn: RefCell<rustls::Connection>,
    /// Reused ciphertext read buffer (None while a read owns it). Bytes
    /// `cipher_pos..len` were read but not yet accepted by rustls, which
    /// refuses more while 16 KiB of plaintext wait to be read.
    cipher_in: Cell<Option<Vec<u8>>>,
    cipher_pos: Cell<usize>,
    /// Serialises socket writes; holds the reused ciphertext write buffer.
    out: Mutex<Vec<u8>>,
    /// Read the handshake one record at a time, so nothing after it leaves
    /// the socket (the session may be handed to kernel TLS).
    exact_records: bool,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer sent something rustls rejected (bad certificate, denied, ...).
    #[error("{0}")]
    Tls(rustls::Error),
    /// The connection broke.
    #[error("{0}")]
    Io(io::Error),
    /// The handshake took longer than allowed.
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
}

impl TlsStream {
    /// Runs the handshake on `sock` within `timeout`. With `exact_records`
    /// the socket is read one record at a time, so the session can be
    /// handed to kernel TLS afterwards (see [`super::ktls`]).
    pub(crate) async fn handshake(
        sock: TcpStream,
        conn: rustls::Connection,
        timeout: Duration,
        exact_records: bool,
    ) -> Result<TlsStream, HandshakeError> {
        let stream = TlsStream {
            sock,
            conn: RefCell::new(conn),
            cipher_in: Cell::new(Some(Vec::with_capacity(CIPHER_BUFFER))),
            cipher_pos: Cell::new(0),
            out: Mutex::new(Vec::with_capacity(CIPHER_BUFFER)),
            exact_records,
        };
        match runtime::timeout(timeout, stream.drive_handshake()).await {
            Some(Ok(())) => Ok(stream),
            Some(Err(e)) => Err(e),
            None => Err(HandshakeError::Timeout(timeout)),
        }
    }

    async fn drive_handshake(&self) -> Result<(), HandshakeError> {
        loop {
            let (handshaking, wants_write) = {
                let c = self.conn.borrow();
                (c.is_handshaking(), c.wants_write())
            };
            if wants_write {
                self.flush().await.map_err(HandshakeError::Io)?;
            }
            if !handshaking {
                return Ok(());
            }
            let read = if self.exact_records {
                self.read_record().await
            } else {
                self.read_ciphertext().await
            };
            match read {
                Ok(0) => return Err(HandshakeError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(Ciphertext::Tls(e)) => {
                    // Send the alert rustls queued for the peer.
                    let _ = self.flush().await;
                    return Err(HandshakeError::Tls(e));
                }
                Err(Ciphertext::Io(e)) => return Err(HandshakeError::Io(e)),
            }
        }
    }

    /// Moves ciphertext into the session: bytes already read but not yet
    /// accepted first, else a new socket read. `Ok(0)` at EOF.
    async fn read_ciphertext(&self) -> Result<usize, Ciphertext> {
        let mut buf = self
            .cipher_in
            .take()
            .unwrap_or_else(|| Vec::with_capacity(CIPHER_BUFFER));
        if self.cipher_pos.get() >= buf.len() {
            // Nothing pending: read from the socket.
            if buf.len() == buf.capacity() && buf.capacity() < CIPHER_BUFFER_BULK {
                buf = Vec::with_capacity(CIPHER_BUFFER_BULK);
            }
            buf.clear();
            self.cipher_pos.set(0);
            let mut sock = &self.sock;
            let BufResult(res, b) = sock.read(buf).await;
            buf = b;
            match res {
                Ok(0) => {
                    self.cipher_in.set(Some(buf));
                    return Ok(0);
                }
                Ok(_) => {}
                Err(e) => {
                    self.cipher_in.set(Some(buf));
                    return Err(Ciphertext::Io(e));
                }
            }
        }
        let result = self.feed(&buf);
        self.cipher_in.set(Some(buf));
        result
    }

    /// Reads exactly one TLS record from the socket and hands it to rustls.
    /// `Ok(0)` at EOF.
    async fn read_record(&self) -> Result<usize, Ciphertext> {
        let header = match runtime::read_exact(&self.sock, 5).await {
            Ok(h) => h,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(Ciphertext::Io(e)),
        };
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        // RFC 8446 5.2: at most 2^14 + 256 bytes of ciphertext; bound it
        // before allocating (rustls rejects the record anyway).
        if len > 16 * 1024 + 2048 {
            return Err(Ciphertext::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS record too long",
            )));
        }
        let body = runtime::read_exact(&self.sock, len)
            .await
            .map_err(Ciphertext::Io)?;
        let mut c = self.conn.borrow_mut();
        for part in [&header[..], &body[..]] {
            let mut slice = part;
            while !slice.is_empty() {
                c.read_tls(&mut slice).map_err(Ciphertext::Io)?;
            }
        }
        c.process_new_packets().map_err(Ciphertext::Tls)?;
        Ok(5 + len)
    }

    /// Whether the session can be handed to kernel TLS now: a suite the
    /// kernel runs, nothing waiting to be sent, no plaintext or ciphertext
    /// buffered. `Err` says why not.
    pub(crate) fn offload_ready(&self) -> Result<(), String> {
        let pending_cipher = self
            .cipher_in
            .take()
            .map(|b| {
                let pending = self.cipher_pos.get() < b.len();
                self.cipher_in.set(Some(b));
                pending
            })
            .unwrap_or(true);
        let mut c = self.conn.borrow_mut();
        let suite = c.negotiated_cipher_suite().map(|s| s.suite());
        if !super::ktls::supports(c.protocol_version(), suite) {
            return Err(format!("the kernel does not run {suite:?}"));
        }
        if !self.exact_records || pending_cipher {
            return Err("ciphertext after the handshake was already read".into());
        }
        if c.wants_write() {
            return Err("records wait to be sent".into());
        }
        match c.reader().fill_buf() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            _ => Err("plaintext is buffered".into()),
        }
    }

    /// The socket's descriptor.
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.sock.as_raw_fd()
    }

    /// The socket and the session, taken apart (for kernel TLS).
    pub(crate) fn into_parts(self) -> (TcpStream, rustls::Connection) {
        (self.sock, self.conn.into_inner())
    }

    /// Hands `buf[cipher_pos..]` to rustls until it is all accepted or
    /// rustls pushes back (plaintext waiting); returns bytes accepted.
    fn feed(&self, buf: &[u8]) -> Result<usize, Ciphertext> {
        let mut c = self.conn.borrow_mut();
        let start = self.cipher_pos.get();
        let mut slice = &buf[start..];
        while !slice.is_empty() {
            match c.read_tls(&mut slice) {
                Ok(0) => break, // close_notify received: nothing more is read
                Ok(_) => {}
                // Backpressure: the plaintext must be read first.
                Err(e) if e.kind() == io::ErrorKind::Other && start != buf.len() - slice.len() => {
                    break;
                }
                Err(e) => return Err(Ciphertext::Io(e)),
            }
            if let Err(e) = c.process_new_packets() {
                return Err(Ciphertext::Tls(e));
            }
        }
        let consumed = buf.len() - slice.len();
        self.cipher_pos.set(consumed);
        Ok((consumed - start).max(1))
    }

    /// Writes every record the session has queued.
    async fn flush(&self) -> io::Result<()> {
        let mut out = self.out.lock().await;
        self.flush_locked(&mut out).await
    }

    async fn flush_locked(&self, out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            out.clear();
            {
                let mut c = self.conn.borrow_mut();
                while c.wants_write() {
                    c.write_tls(&mut *out)?;
                }
            }
            if out.is_empty() {
                return Ok(());
            }
            let mut sock = &self.sock;
            let BufResult(res, b) = sock.write_all(std::mem::take(out)).await;
            *out = b;
            res?;
        }
    }

    /// Reads plaintext into `buf` (up to its capacity); `Ok(0)` at EOF
    /// (close_notify, or the peer closed the TCP connection without one,
    /// which rustls reports as unexpected but peers commonly do).
    pub(crate) async fn read_plain(&self, mut buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        buf.clear();
        self.read_plain_append(buf).await
    }

    /// Reads plaintext after `buf`'s current contents, up to its capacity
    /// (at least one byte); `Ok(0)` at EOF.
    pub(crate) async fn read_plain_append(&self, mut buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        loop {
            let available = {
                let mut c = self.conn.borrow_mut();
                let mut reader = c.reader();
                match reader.fill_buf() {
                    Ok([]) => Some(Ok(0)),
                    Ok(chunk) => {
                        let room = buf.capacity() - buf.len();
                        let take = chunk.len().min(room.max(1));
                        buf.extend_from_slice(&chunk[..take]);
                        reader.consume(take);
                        Some(Ok(take))
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Some(Ok(0)),
                    Err(e) => Some(Err(e)),
                }
            };
            if let Some(result) = available {
                return BufResult(result, buf);
            }
            match self.read_ciphertext().await {
                Ok(0) => return BufResult(Ok(0), buf),
                Ok(_) => {
                    // Key updates and alerts may need an answer.
                    if self.conn.borrow().wants_write() {
                        if let Err(e) = self.flush().await {
                            return BufResult(Err(e), buf);
                        }
                    }
                }
                Err(Ciphertext::Tls(e)) => {
                    let _ = self.flush().await;
                    return BufResult(Err(io::Error::new(io::ErrorKind::InvalidData, e)), buf);
                }
                Err(Ciphertext::Io(e)) => return BufResult(Err(e), buf),
            }
        }
    }

    /// Encrypts and sends all of `buf`.
    pub(crate) async fn write_plain<B: crate::runtime::IoBuf>(&self, buf: B) -> BufResult<(), B> {
        let mut out = self.out.lock().await;
        let mut written = 0;
        while written < buf.as_init().len() {
            let n = match self
                .conn
                .borrow_mut()
                .writer()
                .write(&buf.as_init()[written..])
            {
                Ok(n) => n,
                Err(e) => return BufResult(Err(e), buf),
            };
            written += n;
            if let Err(e) = self.flush_locked(&mut out).await {
                return BufResult(Err(e), buf);
            }
            if n == 0 {
                return BufResult(Err(io::ErrorKind::WriteZero.into()), buf);
            }
        }
        BufResult(Ok(()), buf)
    }

    /// Sends close_notify, then shuts down the TCP write side.
    pub(crate) async fn shutdown(&self) -> io::Result<()> {
        self.conn.borrow_mut().send_close_notify();
        self.flush().await?;
        crate::runtime::shutdown_write(&self.sock)
    }

    /// Makes the next close a TCP reset.
    pub(crate) fn set_zero_linger(&self) -> io::Result<()> {
        self.sock.set_zero_linger()
    }

    /// The peer's SPIFFE ID, from its verified certificate.
    pub(crate) fn peer_identity(&self) -> Option<String> {
        let c = self.conn.borrow();
        let leaf = c.peer_certificates()?.first()?;
        super::identity::spiffe_id(leaf)
    }

    /// Server name the client asked for (server side).
    pub(crate) fn sni(&self) -> Option<String> {
        match &*self.conn.borrow() {
            rustls::Connection::Server(s) => s.server_name().map(str::to_owned),
            rustls::Connection::Client(_) => None,
        }
    }

    /// The application protocol agreed by ALPN.
    pub(crate) fn alpn(&self) -> Option<Vec<u8>> {
        self.conn.borrow().alpn_protocol().map(<[u8]>::to_vec)
    }

    /// Whether decrypted bytes wait to be read (a pooled connection with
    /// unread data is not idle).
    pub(crate) fn has_plaintext(&self) -> bool {
        let mut c = self.conn.borrow_mut();
        matches!(c.reader().fill_buf(), Ok(b) if !b.is_empty())
    }

    /// Negotiated protocol version, for logs.
    pub(crate) fn version(&self) -> &'static str {
        match self.conn.borrow().protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        }
    }
}

enum Ciphertext {
    Tls(rustls::Error),
    Io(io::Error),
}
