//! The h2 crate drives a connection through tokio's `AsyncRead` and
//! `AsyncWrite`; core's [`Stream`] is completion-based (the kernel owns a
//! buffer while an operation runs). [`H2Io`] bridges the two: one owned
//! read buffer and one in-flight read, and writes gathered into one owned
//! buffer that is handed to the kernel whole when h2 flushes (h2 writes
//! frame by frame; one system call per flush, not per frame).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use ringmesh_core::Stream;
use ringmesh_core::protocol::ByteCounts;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::buffers;

type ReadOp = Pin<Box<dyn Future<Output = (io::Result<usize>, Vec<u8>)>>>;
type WriteOp = Pin<Box<dyn Future<Output = (io::Result<()>, Vec<u8>)>>>;
type ShutdownOp = Pin<Box<dyn Future<Output = io::Result<()>>>>;

/// Gathered output beyond this is written before more is accepted (h2's
/// own send buffer bounds what it queues; this bounds one write).
const WRITE_HIGH: usize = 256 * 1024;

/// A [`Stream`] as tokio's I/O traits, for the h2 crate.
pub(crate) struct H2Io {
    stream: Rc<Stream>,
    /// Downstream connections count their bytes (upstream ones do not).
    bytes: Option<Rc<ByteCounts>>,
    rbuf: Vec<u8>,
    rpos: usize,
    reading: Option<ReadOp>,
    wbuf: Vec<u8>,
    spare: Vec<u8>,
    writing: Option<WriteOp>,
    shutting: Option<ShutdownOp>,
}

impl H2Io {
    /// Wraps `stream`; `read` holds bytes already read from it (a
    /// connection preface sniffed before h2 took over).
    pub fn new(stream: Rc<Stream>, read: Vec<u8>, bytes: Option<Rc<ByteCounts>>) -> Self {
        H2Io {
            stream,
            bytes,
            rbuf: read,
            rpos: 0,
            reading: None,
            wbuf: Vec::new(),
            spare: Vec::new(),
            writing: None,
            shutting: None,
        }
    }

    /// Polls the write in flight, if any, to its end.
    fn poll_writing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(op) = &mut self.writing {
            let (res, mut buf) = ready!(op.as_mut().poll(cx));
            self.writing = None;
            buf.clear();
            self.spare = buf;
            res?;
        }
        Poll::Ready(Ok(()))
    }

    /// Starts writing the gathered bytes.
    fn start_write(&mut self) {
        let mut out = std::mem::take(&mut self.wbuf);
        self.wbuf = std::mem::take(&mut self.spare);
        if let Some(b) = &self.bytes {
            b.add_sent(out.len());
        }
        let stream = self.stream.clone();
        if out.capacity() == 0 {
            out = Vec::new();
        }
        self.writing = Some(Box::pin(async move { stream.write_all(out).await }));
    }
}

impl Drop for H2Io {
    fn drop(&mut self) {
        // An in-flight operation owns its buffer until it completes; the
        // rest go back to the worker's pool.
        buffers::give(std::mem::take(&mut self.rbuf));
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.rpos < this.rbuf.len() {
                let n = (this.rbuf.len() - this.rpos).min(out.remaining());
                out.put_slice(&this.rbuf[this.rpos..this.rpos + n]);
                this.rpos += n;
                if this.rpos == this.rbuf.len() {
                    this.rbuf.clear();
                    this.rpos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.reading.is_none() {
                let mut buf = std::mem::take(&mut this.rbuf);
                buf.clear();
                if buf.capacity() < buffers::BUFFER {
                    buf = buffers::take();
                }
                let stream = this.stream.clone();
                this.reading = Some(Box::pin(async move { stream.read_more(buf).await }));
            }
            let Some(op) = &mut this.reading else {
                continue;
            };
            let (res, buf) = ready!(op.as_mut().poll(cx));
            this.reading = None;
            this.rbuf = buf;
            this.rpos = 0;
            match res {
                // End of stream: nothing put in `out`.
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(n) => {
                    if let Some(b) = &this.bytes {
                        b.add_received(n);
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.wbuf.len() >= WRITE_HIGH {
            ready!(this.poll_writing(cx))?;
            this.start_write();
            // Poll once so the write is under way (and its waker set).
            if let Poll::Ready(Err(e)) = this.poll_writing(cx) {
                return Poll::Ready(Err(e));
            }
        } else if this.writing.is_some() {
            // Reap a finished write without waiting for it.
            if let Poll::Ready(Err(e)) = this.poll_writing(cx) {
                return Poll::Ready(Err(e));
            }
        }
        if this.wbuf.capacity() == 0 {
            this.wbuf = buffers::take();
        }
        this.wbuf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    /// Hands what was gathered to the kernel without waiting for the write
    /// to complete: while one write is in flight, the frames h2 produces
    /// meanwhile gather into the next one (one system call for many
    /// streams' frames under load). The write's completion wakes the
    /// connection's task, whose next flush starts the next write, so
    /// nothing gathered is left behind; `poll_shutdown` waits for all.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.writing.is_some() {
            if let Poll::Ready(Err(e)) = this.poll_writing(cx) {
                return Poll::Ready(Err(e));
            }
        }
        if this.writing.is_none() && !this.wbuf.is_empty() {
            this.start_write();
            if let Poll::Ready(Err(e)) = this.poll_writing(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.poll_writing(cx))?;
            if this.wbuf.is_empty() {
                break;
            }
            this.start_write();
        }
        if this.shutting.is_none() {
            let stream = this.stream.clone();
            this.shutting = Some(Box::pin(async move { stream.finish().await }));
        }
        match &mut this.shutting {
            Some(op) => op.as_mut().poll(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}
