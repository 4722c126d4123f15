//! Real TCP servers for the tests, each bound to 127.0.0.1 port 0 (or
//! [::1]) and run on its own threads.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use rand::{RngCore, SeedableRng, rngs::SmallRng};
use sha2::{Digest, Sha256};

/// A server that echoes every byte back until the client closes, then closes.
pub struct EchoServer {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
}

impl EchoServer {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0")
    }

    pub fn start_on(bind: &str) -> Self {
        let listener = TcpListener::bind(bind).expect("bind echo server");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        let _ = stream.set_nodelay(true);
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            match stream.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if stream.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = stream.shutdown(Shutdown::Write);
                    })
                    .expect("spawn echo thread");
            }
        });
        EchoServer { addr, accepted }
    }
}

/// A server that runs `handler` on its own thread for every connection.
pub fn serve_each(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let handler = Arc::new(handler);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let h = handler.clone();
            thread::spawn(move || h(stream));
        }
    });
    addr
}

/// A port where nothing listens (bound on 127.0.0.9, then closed).
pub fn closed_port() -> SocketAddr {
    // On an address of its own: a port just freed on 127.0.0.1 can be
    // taken at once by a server of a test running in parallel, and the
    // "closed" endpoint would answer.
    closed_port_on("127.0.0.9")
}

/// A port on `ip` where nothing listens (bound, then closed).
pub fn closed_port_on(ip: &str) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

/// An address whose SYNs go unanswered: a listener with a full accept
/// queue that never accepts. Connects to it hang until they time out.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    pub fn start() -> Self {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("addr").into())
            .expect("bind");
        s.listen(0).expect("listen");
        let addr = s.local_addr().expect("addr").as_socket().expect("ip");
        let mut fillers = Vec::new();
        // Fill the accept queue; once full, the kernel drops further SYNs.
        for _ in 0..4 {
            if let Ok(c) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                fillers.push(c);
            }
        }
        Blackhole {
            addr,
            _listener: s,
            _fillers: fillers,
        }
    }
}

/// Deterministic pseudo-random bytes.
pub struct Payload {
    rng: SmallRng,
    remaining: usize,
}

impl Payload {
    pub fn new(seed: u64, len: usize) -> Self {
        Payload {
            rng: SmallRng::seed_from_u64(seed),
            remaining: len,
        }
    }

    /// Fills `buf` with the next chunk; returns its length (0 at the end).
    pub fn next_chunk(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.remaining);
        self.rng.fill_bytes(&mut buf[..n]);
        self.remaining -= n;
        n
    }
}

/// Writes `len` random bytes from `seed` to `w`, returning their SHA-256.
pub fn send_payload(w: &mut impl Write, seed: u64, len: usize) -> io::Result<[u8; 32]> {
    let mut p = Payload::new(seed, len);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = p.next_chunk(&mut buf);
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
        w.write_all(&buf[..n])?;
    }
}

/// Reads `r` to EOF, returning the byte count and SHA-256.
pub fn receive_all(r: &mut impl Read) -> io::Result<(usize, [u8; 32])> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        match r.read(&mut buf)? {
            0 => return Ok((total, h.finalize().into())),
            n => {
                total += n;
                h.update(&buf[..n]);
            }
        }
    }
}

/// What [`exchange_server`] reports per connection: bytes received, their
/// SHA-256, and the SHA-256 of what it sent.
pub type Exchange = (usize, [u8; 32], [u8; 32]);

/// A server that, per connection, sends `len` random bytes (seed `seed`)
/// while receiving to EOF, then reports (received bytes, received hash,
/// sent hash) on the returned channel.
pub fn exchange_server(seed: u64, len: usize) -> (SocketAddr, std::sync::mpsc::Receiver<Exchange>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = serve_each(move |stream| {
        let mut writer = stream.try_clone().expect("clone");
        let sender = thread::spawn(move || {
            let h = send_payload(&mut writer, seed, len).expect("server send");
            writer.shutdown(Shutdown::Write).expect("server shutdown");
            h
        });
        let mut reader = stream;
        let (n, got) = receive_all(&mut reader).expect("server receive");
        let sent = sender.join().expect("sender thread");
        let _ = tx.send((n, got, sent));
    });
    (addr, rx)
}

/// Connects with a timeout and sets read/write timeouts so a test that
/// goes wrong fails instead of hanging.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.set_write_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let _ = s.set_nodelay(true);
    s
}

/// Writes `msg` and reads the same number of bytes back.
pub fn echo_roundtrip(s: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
    s.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    Ok(back)
}

/// Waits until `s` is closed by the peer; returns the time it took, or
/// `None` if it was still open after `limit`.
pub fn wait_closed(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = std::time::Instant::now();
    s.set_read_timeout(Some(limit)).ok()?;
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}
