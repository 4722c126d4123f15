//! Backends to measure against, so a benchmark needs nothing installed:
//! `echo` (tcp-rr), `sink` (tcp-stream upload), `source` (tcp-stream
//! download), and `http` (a keep-alive HTTP/1.1 responder with a fixed body
//! and an optional delay before each response). Each runs on its own
//! thread with a compio runtime.

use std::net::SocketAddr;
use std::time::Duration;

use compio::BufResult;
use compio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};

/// What a backend does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Sends back every byte.
    Echo,
    /// Reads and discards.
    Sink,
    /// Sends bytes until the client goes away.
    Source,
    /// Answers every HTTP/1.1 request with 200 and a fixed body.
    Http,
}

/// Backend settings.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    /// Behaviour.
    pub kind: BackendKind,
    /// Address to bind (port 0 for any).
    pub listen: SocketAddr,
    /// HTTP: wait this long before each response.
    pub delay: Duration,
    /// HTTP: response body size.
    pub body_size: usize,
    /// CPU to pin the backend thread to.
    pub cpu: Option<usize>,
}

/// A running backend; it stops when the process exits.
#[derive(Debug)]
pub struct Backend {
    /// The bound address.
    pub addr: SocketAddr,
}

/// Starts a backend on its own thread and returns once it listens.
pub fn start(spec: BackendSpec) -> std::io::Result<Backend> {
    let std_listener = std::net::TcpListener::bind(spec.listen)?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    std::thread::Builder::new()
        .name(format!("backend-{:?}", spec.kind))
        .spawn(move || {
            if let Some(cpu) = spec.cpu {
                // SAFETY: plain data, read by the kernel.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
            }
            let Ok(runtime) = compio::runtime::RuntimeBuilder::new().build() else {
                eprintln!("backend: cannot start a runtime");
                return;
            };
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(std_listener) else {
                    eprintln!("backend: cannot register the listener");
                    return;
                };
                accept_loop(listener, spec).await;
            });
        })?;
    Ok(Backend { addr })
}

async fn accept_loop(listener: TcpListener, spec: BackendSpec) {
    let body: std::rc::Rc<[u8]> = vec![b'x'; spec.body_size].into();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            compio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        let delay = spec.delay;
        let task = match spec.kind {
            BackendKind::Echo => compio::runtime::spawn(echo(stream)),
            BackendKind::Sink => compio::runtime::spawn(sink(stream)),
            BackendKind::Source => compio::runtime::spawn(source(stream)),
            BackendKind::Http => compio::runtime::spawn(http(stream, body, delay)),
        };
        task.detach();
    }
}

async fn echo(stream: TcpStream) {
    let mut s = &stream;
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        let BufResult(res, b) = s.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let BufResult(res, b) = s.write_all(buf).await;
                buf = b;
                if res.is_err() {
                    return;
                }
            }
        }
    }
}

async fn sink(stream: TcpStream) {
    let mut s = &stream;
    let mut buf = Vec::with_capacity(256 * 1024);
    loop {
        buf.clear();
        let BufResult(res, b) = s.read(buf).await;
        buf = b;
        if !matches!(res, Ok(n) if n > 0) {
            return;
        }
    }
}

async fn source(stream: TcpStream) {
    let mut s = &stream;
    let mut buf = vec![0xa5u8; 256 * 1024];
    loop {
        let BufResult(res, b) = s.write(buf).await;
        buf = b;
        if res.is_err() {
            return;
        }
    }
}

/// Minimal HTTP/1.1 server loop: parse each request head, skip its body,
/// answer 200 with `body`; close after `Connection: close`.
async fn http(stream: TcpStream, body: std::rc::Rc<[u8]>, delay: Duration) {
    let mut s = &stream;
    let mut acc: Vec<u8> = Vec::with_capacity(8192);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut out: Vec<u8> = Vec::with_capacity(256 + body.len());
    loop {
        // Parse as many complete requests as the buffer holds.
        let (consumed, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&acc) {
                Ok(httparse::Status::Complete(head)) => {
                    let mut len = 0usize;
                    let mut close = req.version == Some(0);
                    for h in req.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            len = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                        } else if h.name.eq_ignore_ascii_case("connection")
                            && h.value.eq_ignore_ascii_case(b"close")
                        {
                            close = true;
                        }
                    }
                    if acc.len() >= head + len {
                        break (head + len, close);
                    }
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return,
            }
            if acc.len() > 1 << 20 {
                return;
            }
            buf.clear();
            let BufResult(res, b) = s.read(buf).await;
            buf = b;
            match res {
                Ok(0) | Err(_) => return,
                Ok(n) => acc.extend_from_slice(&buf[..n]),
            }
        };
        acc.drain(..consumed);
        if !delay.is_zero() {
            compio::time::sleep(delay).await;
        }
        out.clear();
        out.extend_from_slice(
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n", body.len()).as_bytes(),
        );
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        let BufResult(res, o) = s.write_all(out).await;
        out = o;
        if res.is_err() || close {
            return;
        }
    }
}
