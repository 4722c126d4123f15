//! One end of a proxied connection: plain TCP, or TLS over TCP. The copy
//! loop works on either through [`Duplex`](crate::forward::Duplex).

use std::io;

use crate::forward::Duplex;
use crate::runtime::{BufResult, IoBuf, TcpStream};
use crate::tls::ktls::KtlsStream;
use crate::tls::stream::TlsStream;

/// A connected socket, with or without TLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
    /// TLS whose record layer the kernel runs (kTLS).
    Ktls(KtlsStream),
}

impl Duplex for Stream {
    async fn read_into(&self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        match self {
            Stream::Plain(s) => s.read_into(buf).await,
            Stream::Tls(s) => s.read_into(buf).await,
            Stream::Ktls(s) => s.read_into(buf).await,
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
