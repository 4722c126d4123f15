//! One downstream HTTP/1.x connection, top to bottom:
//!
//! 1. [`Client::next_head`]: wait for a request (idle timeout; a drain
//!    closes an idle connection after [`DRAIN_IDLE_GRACE`]), read its head within
//!    `request_headers_timeout`, parse and check it (`codec::h1`); a bad
//!    head is answered 400/414/431/501 (408 on timeout) and the connection
//!    closed;
//! 2. load the listener's config *for this request* (a reload never
//!    changes a request in flight) and run the request's phases
//!    ([`crate::phases`]): route, breakers, upstream exchange, response;
//! 3. [`RequestRecord::finish`]: metrics and the access-log line, once;
//! 4. keep the connection for the next request (pipelined ones are
//!    already in the buffer) or close it: HTTP/1.0, `Connection: close`
//!    either way, an incomplete exchange, or a drain.

use std::io;
use std::rc::Rc;
use std::time::Instant;

use futures_util::future::{Either, select};
use futures_util::pin_mut;
use ringmesh_core::protocol::{
    ByteCounts, Connection, ConnectionEnd, ConnectionFacts, ListenerRef, ListenerWatch,
};
use ringmesh_core::{CloseReason, Stream, rt};

use crate::buffers;
use crate::codec::h1::{self, Field, RequestHead, Span};
use crate::config::HttpListener;
use crate::local_reply;
use crate::metrics::Rejection;
use crate::record::RequestRecord;

/// How long a connection idle between requests stays open once the proxy
/// drains (or hands over to a new binary). A request arriving meanwhile is
/// answered, with `Connection: close`, so a client that was just sending
/// one on a kept-alive connection does not see it closed under its feet.
pub const DRAIN_IDLE_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// The connection's state kept across requests.
pub(crate) struct Client {
    pub stream: Stream,
    pub facts: ConnectionFacts,
    watch: ListenerWatch,
    pub bytes: Rc<ByteCounts>,
    /// Bytes read from the client and not yet consumed (a pooled buffer
    /// while there are any; empty, with no capacity, while idle).
    pub buf: Vec<u8>,
    /// The current request's header fields and `Connection`-nominated names.
    pub fields: Vec<Field>,
    pub nominated: Vec<Span>,
    /// The client's address as text (x-forwarded-for, logs).
    pub peer_ip: String,
    /// Hash key of the client for consistent-hashing balancers.
    pub hash_key: u64,
    /// Requests served on this connection.
    pub requests: u64,
    /// The current response's fields (reused).
    pub resp_fields: Vec<Field>,
    pub resp_nominated: Vec<Span>,
    /// Access-log text of the current request (reused).
    pub log: crate::record::LogText,
    /// The client's identity as the mesh metrics know it (interned once
    /// per connection).
    mesh_source: std::cell::Cell<Option<u16>>,
    /// The last request's body was not read to its end (the connection
    /// closes with a lingering close).
    pub body_unread: bool,
}

/// What the connection does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Serve the next request.
    KeepAlive,
    /// Close (FIN after the response).
    Close,
    /// Close with a reset: the exchange broke mid-message.
    Abort,
}

/// How long a lingering close waits for a client's unread bytes.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(1);
/// How many unread bytes a lingering close discards at most.
const LINGER_BYTES: usize = 1024 * 1024;

/// How one wait for bytes between or within heads ended.
enum Waited {
    Read(io::Result<usize>, Vec<u8>),
    Drained,
    TimedOut,
}

/// How waiting for a request head ended.
enum NextHead {
    Head(RequestHead, Instant),
    /// The client closed (or drained) between requests: a clean end.
    Closed,
    /// Refused before routing: answered and counted.
    Rejected,
    /// The client's socket failed.
    Failed(io::Error),
    /// The connection opened with the HTTP/2 preface (prior knowledge).
    Http2,
}

/// Serves one HTTP connection to its end.
pub(crate) async fn serve(conn: Connection) -> ConnectionEnd {
    let Connection {
        stream,
        facts,
        listener,
        bytes,
    } = conn;
    // TLS clients choose HTTP/2 by ALPN.
    if facts.alpn.as_deref() == Some(b"h2") {
        return crate::h2::server::serve(stream, facts, listener, bytes, Vec::new()).await;
    }
    let peer_ip = facts.peer.ip().to_string();
    let hash_key = ringmesh_core::balance::client_key(facts.peer);
    let mut client = Client {
        stream,
        facts,
        watch: listener,
        bytes,
        buf: Vec::new(),
        fields: Vec::with_capacity(16),
        nominated: Vec::new(),
        peer_ip,
        hash_key,
        requests: 0,
        resp_fields: Vec::with_capacity(16),
        resp_nominated: Vec::new(),
        log: Default::default(),
        mesh_source: std::cell::Cell::new(None),
        body_unread: false,
    };
    let end = client.run().await;
    if end.is_none() {
        // The preface of HTTP/2 with prior knowledge: h2 takes over, with
        // the bytes read so far.
        let Client {
            stream,
            facts,
            watch,
            bytes,
            buf,
            ..
        } = client;
        return crate::h2::server::serve(stream, facts, watch, bytes, buf).await;
    }
    buffers::give(std::mem::take(&mut client.buf));
    end.unwrap_or_else(|| end_of(CloseReason::Completed, None))
}

impl Client {
    /// The client's interned identity in `mesh` (a lock the first time).
    pub fn mesh_source(&self, mesh: &crate::mesh::MeshStats) -> u16 {
        if let Some(i) = self.mesh_source.get() {
            return i;
        }
        let i = mesh.sources.intern(self.facts.identity.as_deref());
        self.mesh_source.set(Some(i));
        i
    }

    /// Serves requests to the connection's end; `None` when the client
    /// opened with the HTTP/2 preface instead.
    async fn run(&mut self) -> Option<ConnectionEnd> {
        loop {
            let listener = self.watch.current();
            let Some(http) = http_of(&listener) else {
                // The listener stopped being HTTP on reload: finish here.
                return Some(end(CloseReason::Completed, None));
            };
            let settings = http.settings.clone();
            let received_before = self.bytes.received.get();
            let (head, started) = match self.next_head(http, &settings).await {
                NextHead::Head(head, started) => (head, started),
                NextHead::Closed => {
                    let _ = self.stream.finish().await;
                    return Some(end(CloseReason::Completed, None));
                }
                NextHead::Rejected => {
                    return Some(end(CloseReason::Completed, Some("request refused")));
                }
                NextHead::Failed(e) => {
                    return Some(end(CloseReason::DownstreamError, Some(&e.to_string())));
                }
                NextHead::Http2 => return None,
            };
            self.requests += 1;
            self.body_unread = false;
            // The request runs on the config current now, start to end.
            let listener = self.watch.current();
            let Some(http) = http_of(&listener) else {
                return Some(end(CloseReason::Completed, None));
            };
            let mut record = RequestRecord::new(started, received_before, http, &head, self);
            let after = crate::phases::run(self, &listener, http, &head, &mut record).await;
            let flag = record.flag;
            record.finish(http, self);
            match after {
                After::KeepAlive => {}
                After::Close => {
                    // A client that asked to close sends nothing more: close(2)
                    // alone sends the FIN, one system call fewer per connection
                    // (a tenth of the proxy's CPU under churn). Otherwise
                    // shut down first, so that bytes the client may still
                    // send cannot turn the close into a reset that destroys
                    // the response in flight (and TLS sends close_notify).
                    if self.body_unread {
                        self.linger().await;
                    } else if head.keep_alive || !self.buf.is_empty() || !self.stream.is_plain() {
                        let _ = self.stream.finish().await;
                    }
                    return Some(end(CloseReason::Completed, None));
                }
                After::Abort => {
                    self.stream.reset();
                    return Some(end(CloseReason::UpstreamError, flag.map(|f| f.as_str())));
                }
            }
        }
    }

    /// Waits for and reads the next request head.
    async fn next_head(
        &mut self,
        http: &HttpListener,
        settings: &crate::config::HttpSettings,
    ) -> NextHead {
        let limits = settings.limits;
        let mut started = None;
        loop {
            if self.requests == 0 && http.settings.http2.enabled && is_preface(&self.buf) {
                if self.buf.len() >= crate::h2::server::PREFACE.len() {
                    return NextHead::Http2;
                }
                // Part of the preface: wait for the rest.
            } else if !self.buf.is_empty() {
                let first = *started.get_or_insert_with(Instant::now);
                match h1::parse_request(&self.buf, &limits, &mut self.fields, &mut self.nominated) {
                    Ok(Some(head)) => return NextHead::Head(head, first),
                    Ok(None) => {
                        if let Err(e) = h1::check_partial_request(&self.buf, &limits) {
                            return self.reject(http, Rejection::Head(e)).await;
                        }
                    }
                    Err(e) => return self.reject(http, Rejection::Head(e)).await,
                }
            }
            // Between requests: the idle timeout (the headers timeout for a
            // connection's first request), and a drain ends the wait.
            let idle = self.buf.is_empty();
            let deadline = match started {
                Some(t) => t + settings.request_headers_timeout,
                None if self.requests == 0 => Instant::now() + settings.request_headers_timeout,
                None => Instant::now() + settings.idle_timeout,
            };
            let waited = {
                let buf = std::mem::take(&mut self.buf);
                let stream = &self.stream;
                let read = async move {
                    if idle {
                        buffers::give(buf);
                        stream.read_when_ready(buffers::take).await
                    } else {
                        let mut buf = buf;
                        if buf.capacity() - buf.len() < 1024 {
                            buf.reserve(buffers::BUFFER);
                        }
                        stream.read_more(buf).await
                    }
                };
                let drained = async {
                    if idle {
                        ringmesh_core::drain::wait().await;
                        // A client may be sending its next request on this
                        // connection right now: for a moment it still gets
                        // an answer (with `Connection: close`) instead of
                        // the race of a close against its request.
                        rt::sleep(DRAIN_IDLE_GRACE).await
                    } else {
                        std::future::pending().await
                    }
                };
                let timer = rt::sleep_until(deadline);
                pin_mut!(read, drained, timer);
                match select(read, select(drained, timer)).await {
                    Either::Left(((res, buf), _)) => Waited::Read(res, buf),
                    Either::Right((Either::Left(_), _)) => Waited::Drained,
                    Either::Right((Either::Right(_), _)) => Waited::TimedOut,
                }
            };
            match waited {
                Waited::Read(res, buf) => {
                    self.buf = buf;
                    match res {
                        // Closed between requests, or halfway through a
                        // head: nothing to answer either way.
                        Ok(0) => return NextHead::Closed,
                        Ok(n) => self.bytes.add_received(n),
                        Err(e) => return NextHead::Failed(e),
                    }
                }
                Waited::Drained => return NextHead::Closed,
                // Idle too long between requests, or a first request that
                // never sent a byte: close without an answer.
                Waited::TimedOut if started.is_none() => return NextHead::Closed,
                Waited::TimedOut => return self.reject(http, Rejection::HeaderTimeout).await,
            }
        }
    }

    /// Answers a refused request, counts and logs it; the connection then
    /// closes (the rest of its bytes cannot be trusted).
    async fn reject(&mut self, http: &HttpListener, why: Rejection) -> NextHead {
        http.stats.reject(self.facts.core, why);
        let status = match why {
            Rejection::Head(e) => e.status(),
            Rejection::HeaderTimeout => 408,
            Rejection::ChunkedBody | Rejection::Http2Request => 400,
            Rejection::Connect => 405,
            // Not HTTP/1.1 rejections; a connection is closed for them.
            Rejection::RapidReset | Rejection::Http2Protocol => 400,
        };
        tracing::info!(
            target: "ringmesh::access",
            listener = %http.name,
            peer = %self.facts.peer,
            status,
            reason = why.as_str(),
            "request rejected"
        );
        let mut out = buffers::take();
        local_reply::write(&mut out, status, local_reply::reason(status), "DPE", true);
        let (res, out) = self.stream.write_all(out).await;
        if res.is_ok() {
            self.bytes.add_sent(out.len());
        }
        buffers::give(out);
        let _ = self.stream.finish().await;
        NextHead::Rejected
    }

    /// Closes after a response to a request whose body was not read: send
    /// the FIN, then read and discard what the client still sends (up to
    /// [`LINGER_TIME`] and [`LINGER_BYTES`]), so that closing with unread
    /// bytes does not reset the connection and destroy the response on its
    /// way (nginx's lingering close).
    async fn linger(&mut self) {
        if self.stream.finish().await.is_err() {
            return;
        }
        let deadline = Instant::now() + LINGER_TIME;
        let mut discarded = 0;
        let mut buf = std::mem::take(&mut self.buf);
        while discarded < LINGER_BYTES {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            buf.clear();
            if buf.capacity() < buffers::BUFFER {
                buf.reserve(buffers::BUFFER);
            }
            match rt::timeout(left, self.stream.read_more(buf)).await {
                Some((Ok(n), b)) if n > 0 => {
                    buf = b;
                    discarded += n;
                }
                Some((_, b)) => {
                    buf = b;
                    break;
                }
                // Timed out: the read was abandoned with its buffer.
                None => return,
            }
        }
        buffers::give(buf);
    }

    /// How an answer the proxy makes itself (an error, a redirect, a
    /// direct response) ends: `Some(len)` when the whole request (`len`
    /// bytes) is in the buffer, so it can be skipped and the connection
    /// kept; and whether the answer must say `connection: close`. `intact`:
    /// nothing of the request left the buffer yet (a streamed body did).
    pub fn own_answer_plan(&self, head: &RequestHead, intact: bool) -> (Option<usize>, bool) {
        let whole = match (intact, head.framing) {
            (_, h1::Framing::None) => Some(head.len),
            (true, _) => self.whole_request(head),
            (false, _) => None,
        };
        // The proxy's answers carry a body; to a HEAD request that body
        // would be read as the next response, so such a connection closes.
        let close = !head.keep_alive
            || whole.is_none()
            || head.method == h1::Method::Head
            || ringmesh_core::drain::is_draining();
        (whole, close)
    }

    /// Sends an answer built by the proxy (see [`Client::own_answer_plan`])
    /// and says how the connection goes on: the request skipped and kept,
    /// or closed (lingering, when a body was left unread).
    pub async fn send_own_answer(
        &mut self,
        out: Vec<u8>,
        whole: Option<usize>,
        close: bool,
    ) -> After {
        self.body_unread |= whole.is_none();
        let (res, out) = self.stream.write_all(out).await;
        if res.is_ok() {
            self.bytes.add_sent(out.len());
        }
        buffers::give(out);
        match whole {
            _ if res.is_err() => After::Abort,
            Some(len) if !close => {
                self.consume(len);
                After::KeepAlive
            }
            _ => After::Close,
        }
    }

    /// The length of the request (head and body) when all of it is in the
    /// buffer: a request the proxy answers itself can then be skipped and
    /// the connection kept.
    pub fn whole_request(&self, head: &RequestHead) -> Option<usize> {
        match head.framing {
            h1::Framing::None => Some(head.len),
            h1::Framing::Length(n) => {
                let end = head.len.checked_add(usize::try_from(n).ok()?)?;
                (self.buf.len() >= end).then_some(end)
            }
            h1::Framing::Chunked | h1::Framing::Close => None,
        }
    }

    /// Removes the bytes of a finished request (head and body) from the
    /// buffer; gives the buffer back when nothing is left.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        if n == self.buf.len() {
            buffers::give(std::mem::take(&mut self.buf));
        } else {
            self.buf.drain(..n);
        }
    }
}

/// Whether `buf` starts like the HTTP/2 connection preface (and is not
/// empty): no HTTP/1.1 request line begins with `PRI * HTTP/2.0`.
fn is_preface(buf: &[u8]) -> bool {
    let p = crate::h2::server::PREFACE;
    !buf.is_empty() && buf[..buf.len().min(p.len())] == p[..buf.len().min(p.len())]
}

/// The HTTP config a listener carries, if it is an HTTP listener.
pub(crate) fn http_of(listener: &ListenerRef) -> Option<&HttpListener> {
    listener
        .protocol
        .as_ref()
        .and_then(|p| p.as_any().downcast_ref::<crate::HttpHandler>())
        .map(|h| &h.config)
}

fn end_of(reason: CloseReason, error: Option<&str>) -> ConnectionEnd {
    end(reason, error)
}

fn end(reason: CloseReason, error: Option<&str>) -> ConnectionEnd {
    ConnectionEnd {
        reason,
        error: error.map(str::to_owned),
    }
}
