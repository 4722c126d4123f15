//! HTTP/1.1 on both sides of the proxy: a scripted upstream server
//! ([`Upstream`]) that counts its connections and records every request it
//! receives, and a raw client ([`send_raw`], [`read_response`]) that writes
//! exact bytes and reads one response at a time.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::tcp::Payload;

/// Chunk sizes a chunked body cycles through (both directions).
pub const CHUNK_SIZES: &[usize] = &[
    1, 2, 15, 16, 17, 255, 1000, 4096, 8191, 65_536, 100_000, 1_048_576,
];

/// A request as the upstream parsed it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response body.
#[derive(Debug, Clone)]
pub enum Body {
    /// No body and no framing header added (HEAD, 204, 304, 101, or
    /// framing given in the reply's own headers).
    None,
    /// These bytes.
    Bytes(Vec<u8>),
    /// `len` bytes of [`Payload`] from `seed`.
    Pattern { seed: u64, len: usize },
}

/// What the upstream answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// Send the body chunked (cycling through [`CHUNK_SIZES`]) instead of
    /// with Content-Length.
    pub chunked: bool,
    /// Sleep before answering.
    pub delay: Duration,
    /// Close the connection this long after the response (no
    /// `Connection: close` header is sent).
    pub close_after: Option<Duration>,
    /// After the response, echo raw bytes until the client closes
    /// (a 101 Switching Protocols).
    pub echo_after: bool,
    /// No framing header: the body ends with the connection.
    pub close_delimited: bool,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Bytes(Vec::new()),
            chunked: false,
            delay: Duration::ZERO,
            close_after: None,
            echo_after: false,
            close_delimited: false,
        }
    }

    /// 200 with `body` (Content-Length).
    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            body: Body::Bytes(body.into()),
            ..Reply::status(200)
        }
    }

    /// 200 with `len` deterministic bytes from `seed`.
    pub fn pattern(seed: u64, len: usize) -> Reply {
        Reply {
            body: Body::Pattern { seed, len },
            ..Reply::status(200)
        }
    }

    /// 101 with WebSocket upgrade headers, then an echo of raw bytes.
    pub fn websocket() -> Reply {
        Reply {
            body: Body::None,
            echo_after: true,
            ..Reply::status(101)
        }
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
    }

    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }

    pub fn no_body(mut self) -> Reply {
        self.body = Body::None;
        self
    }

    /// Send the body without Content-Length or chunking: it ends when the
    /// connection closes.
    pub fn no_body_framing(mut self) -> Reply {
        self.close_delimited = true;
        self
    }

    pub fn chunked(mut self) -> Reply {
        self.chunked = true;
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }

    pub fn close_after(mut self, d: Duration) -> Reply {
        self.close_after = Some(d);
        self
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// A scripted HTTP/1.1 server on 127.0.0.1 port 0; one thread per
/// connection, keep-alive until the client closes.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Connections accepted.
    pub accepted: Arc<AtomicUsize>,
    /// Every complete request received, raw (head and body as sent).
    pub requests: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Requests whose connection ended before the body was complete,
    /// raw (what had arrived).
    pub partial: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Upstream {
    /// Answers every request with `handler`'s reply.
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let partial = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (acc, reqs, part) = (accepted.clone(), requests.clone(), partial.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                acc.fetch_add(1, Ordering::SeqCst);
                let (h, r, p) = (handler.clone(), reqs.clone(), part.clone());
                thread::spawn(move || serve(stream, &*h, &r, &p));
            }
        });
        Upstream {
            addr,
            accepted,
            requests,
            partial,
        }
    }

    /// 200 echoing the request body (Content-Length).
    pub fn echo() -> Upstream {
        Upstream::start(|r| Reply::ok(r.body.clone()))
    }

    /// Always `status`, empty body.
    pub fn fixed(status: u16) -> Upstream {
        Upstream::start(move |_| Reply::status(status))
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Complete requests received so far.
    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The request lines (`GET /x HTTP/1.1`) of every complete and partial
    /// request received.
    pub fn request_lines(&self) -> Vec<String> {
        let all = self.requests.lock().unwrap();
        let part = self.partial.lock().unwrap();
        all.iter()
            .chain(part.iter())
            .map(|raw| {
                let end = raw.iter().position(|&b| b == b'\r').unwrap_or(raw.len());
                String::from_utf8_lossy(&raw[..end]).into_owned()
            })
            .collect()
    }
}

fn serve(
    stream: TcpStream,
    handler: &Handler,
    requests: &Mutex<Vec<Vec<u8>>>,
    partial: &Mutex<Vec<Vec<u8>>>,
) {
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    loop {
        let mut raw = Vec::new();
        let head = match read_head(&mut reader, &mut raw) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(_) => {
                if !raw.is_empty() {
                    partial.lock().unwrap().push(raw);
                }
                return;
            }
        };
        let (method, path, version, headers) = match parse_head(&head) {
            Some(p) => p,
            None => {
                partial.lock().unwrap().push(raw);
                return;
            }
        };
        let mut req = Request {
            method,
            path,
            version,
            headers,
            body: Vec::new(),
        };
        let chunked = req
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            read_chunked(&mut reader, &mut raw)
        } else {
            let n: usize = req
                .header("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut b = vec![0u8; n];
            reader.read_exact(&mut b).map(|()| {
                raw.extend_from_slice(&b);
                b
            })
        };
        match body {
            Ok(b) => req.body = b,
            Err(_) => {
                partial.lock().unwrap().push(raw);
                return;
            }
        }
        requests.lock().unwrap().push(raw);
        let reply = handler(&req);
        if !reply.delay.is_zero() {
            thread::sleep(reply.delay);
        }
        if write_reply(&mut writer, &req, &reply).is_err() {
            return;
        }
        if reply.close_delimited {
            let _ = writer.shutdown(Shutdown::Write);
            return;
        }
        if reply.echo_after {
            let leftover = reader.buffer().to_vec();
            if writer.write_all(&leftover).is_err() {
                return;
            }
            let mut inner = reader.into_inner();
            let _ = io::copy(&mut inner, &mut writer);
            let _ = writer.shutdown(Shutdown::Write);
            return;
        }
        if let Some(d) = reply.close_after {
            thread::sleep(d);
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || req.version == "HTTP/1.0";
        if close {
            let _ = writer.shutdown(Shutdown::Write);
            return;
        }
    }
}

/// Reads up to and including the empty line; `None` at a clean EOF before
/// any byte.
fn read_head(r: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<Option<String>> {
    let start = raw.len();
    loop {
        let before = raw.len();
        let n = r.read_until(b'\n', raw)?;
        if n == 0 {
            if raw.len() == start {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if &raw[before..] == b"\r\n" || &raw[before..] == b"\n" {
            return Ok(Some(String::from_utf8_lossy(&raw[start..]).into_owned()));
        }
    }
}

type Head = (String, String, String, Vec<(String, String)>);

fn parse_head(head: &str) -> Option<Head> {
    let mut lines = head.lines();
    let line = lines.next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let version = parts.next().unwrap_or("").to_owned();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    Some((method, path, version, headers))
}

/// Decodes a chunked body (trailers skipped), appending the raw bytes to
/// `raw`.
fn read_chunked(r: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let before = raw.len();
        if r.read_until(b'\n', raw)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let line = String::from_utf8_lossy(&raw[before..]).into_owned();
        let size = line.trim_end().split(';').next().unwrap_or("").trim();
        let n = usize::from_str_radix(size, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "chunk size"))?;
        if n == 0 {
            // Trailers up to the empty line.
            loop {
                let before = raw.len();
                if r.read_until(b'\n', raw)? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                if &raw[before..] == b"\r\n" {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + n + 2, 0);
        r.read_exact(&mut body[start..])?;
        raw.extend_from_slice(&body[start..]);
        if &body[start + n..] != b"\r\n" {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "chunk end"));
        }
        body.truncate(start + n);
    }
}

fn write_reply(w: &mut TcpStream, req: &Request, reply: &Reply) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let len = match &reply.body {
        Body::None => None,
        Body::Bytes(b) => Some(b.len()),
        Body::Pattern { len, .. } => Some(*len),
    };
    if let Some(len) = len.filter(|_| !reply.close_delimited) {
        if reply.chunked {
            head.push_str("Transfer-Encoding: chunked\r\n");
        } else {
            head.push_str(&format!("Content-Length: {len}\r\n"));
        }
    }
    head.push_str("\r\n");
    let mut out = io::BufWriter::with_capacity(256 * 1024, w);
    out.write_all(head.as_bytes())?;
    if req.method == "HEAD" {
        return out.flush();
    }
    let emit = |data: &[u8], out: &mut io::BufWriter<&mut TcpStream>| -> io::Result<()> {
        if reply.chunked {
            write_chunked(out, data)
        } else {
            out.write_all(data)
        }
    };
    match &reply.body {
        Body::None => {}
        Body::Bytes(b) => emit(b, &mut out)?,
        Body::Pattern { seed, len } => {
            let mut p = Payload::new(*seed, *len);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = p.next_chunk(&mut buf);
                if n == 0 {
                    break;
                }
                emit(&buf[..n], &mut out)?;
            }
        }
    }
    if reply.chunked && len.is_some() {
        out.write_all(b"0\r\n\r\n")?;
    }
    out.flush()
}

/// Writes `data` as chunks cycling through [`CHUNK_SIZES`] (no last
/// chunk).
pub fn write_chunked(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let mut pos = 0;
    let mut i = 0;
    while pos < data.len() {
        let n = CHUNK_SIZES[i % CHUNK_SIZES.len()].min(data.len() - pos);
        write!(out, "{n:x}\r\n")?;
        out.write_all(&data[pos..pos + n])?;
        out.write_all(b"\r\n")?;
        pos += n;
        i += 1;
    }
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// A response as the client read it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Head text (status line and fields).
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the response says `connection: close`.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn sha(&self) -> [u8; 32] {
        Sha256::digest(&self.body).into()
    }
}

/// Connects to `addr` with 30 s read/write timeouts.
pub fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    BufReader::with_capacity(256 * 1024, super::tcp::connect(addr))
}

/// Writes `bytes` on the connection.
pub fn send(c: &mut BufReader<TcpStream>, bytes: &[u8]) -> io::Result<()> {
    c.get_mut().write_all(bytes)
}

/// Reads one response; `head_request` when it answers a HEAD (no body).
/// A response without framing is read to EOF.
pub fn read_response(r: &mut impl BufRead, head_request: bool) -> io::Result<Response> {
    let mut raw = Vec::new();
    let head = read_head(r, &mut raw)?.ok_or(io::ErrorKind::UnexpectedEof)?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, status_line.to_owned()))?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    let mut resp = Response {
        status,
        head: head.clone(),
        headers,
        body: Vec::new(),
    };
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(resp);
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut scratch = Vec::new();
        resp.body = read_chunked(r, &mut scratch)?;
    } else if let Some(n) = resp.header("content-length") {
        let n: usize = n
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "content-length"))?;
        resp.body = vec![0u8; n];
        r.read_exact(&mut resp.body)?;
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// Connects, writes `bytes`, and reads one response (for refused requests:
/// the proxy's answer).
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> io::Result<Response> {
    let mut c = connect(addr);
    send(&mut c, bytes)?;
    read_response(&mut c, false)
}

/// Sends one `GET path` on the connection and reads the response.
pub fn get(c: &mut BufReader<TcpStream>, path: &str) -> io::Result<Response> {
    send(
        c,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )?;
    read_response(c, false)
}

/// Sends one `POST path` with `body` (Content-Length) and reads the response.
pub fn post(c: &mut BufReader<TcpStream>, path: &str, body: &[u8]) -> io::Result<Response> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    send(c, &req)?;
    read_response(c, false)
}

/// Whether the peer closes `c` within `limit` (any bytes before the close
/// are discarded).
pub fn closed_within(c: &mut BufReader<TcpStream>, limit: Duration) -> bool {
    let _ = c.get_ref().set_read_timeout(Some(limit));
    let mut sink = Vec::new();
    let r = c.read_to_end(&mut sink);
    let _ = c.get_ref().set_read_timeout(Some(Duration::from_secs(30)));
    match r {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
    }
}

/// A config with one `protocol: http` listener `name` forwarding to
/// cluster `name` with `endpoints`; extra YAML lines for each.
pub fn http_listener(
    name: &str,
    endpoints: &[SocketAddr],
    listener_extra: &str,
    cluster_extra: &str,
) -> String {
    let extra = format!("protocol: http\n{listener_extra}");
    super::proxy::one_listener(name, endpoints, &extra, cluster_extra)
}

/// Sends `method target HTTP/1.1` with exactly the fields `headers` (the
/// caller gives `Host`), `Content-Length` when `body` is not empty, and
/// `body`, in one write on the connection; reads the response (no body
/// after a `HEAD`).
pub fn request(
    c: &mut BufReader<TcpStream>,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    send(c, &bytes)?;
    read_response(c, method == "HEAD")
}

/// Like [`connect`], returning the error instead of panicking (for load
/// clients that count failures).
pub fn try_connect(addr: SocketAddr) -> io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    let _ = s.set_nodelay(true);
    Ok(BufReader::with_capacity(64 * 1024, s))
}

/// Every value of the fields named `name` (case-insensitive), in order.
pub fn values(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}
