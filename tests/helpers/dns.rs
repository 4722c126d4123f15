//! A tiny authoritative DNS server over UDP for discovery tests: it answers
//! A queries for any name with the addresses it currently holds, with a
//! fixed TTL, or with SERVFAIL when told to fail. AAAA and other types get
//! an empty answer.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

pub struct DnsServer {
    pub addr: SocketAddr,
    answers: Arc<Mutex<Vec<Ipv4Addr>>>,
    failing: Arc<AtomicBool>,
    pub queries: Arc<AtomicUsize>,
}

impl DnsServer {
    pub fn start(ttl: u32, answers: &[Ipv4Addr]) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind dns");
        let addr = socket.local_addr().expect("addr");
        let server = DnsServer {
            addr,
            answers: Arc::new(Mutex::new(answers.to_vec())),
            failing: Arc::new(AtomicBool::new(false)),
            queries: Arc::new(AtomicUsize::new(0)),
        };
        let (list, failing, queries) = (
            server.answers.clone(),
            server.failing.clone(),
            server.queries.clone(),
        );
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    return;
                };
                queries.fetch_add(1, Ordering::SeqCst);
                let answers = list.lock().unwrap().clone();
                if let Some(reply) =
                    answer(&buf[..n], ttl, &answers, failing.load(Ordering::SeqCst))
                {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        server
    }

    pub fn set(&self, answers: &[Ipv4Addr]) {
        *self.answers.lock().unwrap() = answers.to_vec();
    }

    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

/// Builds the reply to one query (None for garbage).
fn answer(query: &[u8], ttl: u32, answers: &[Ipv4Addr], fail: bool) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // Skip the question name to find its end.
    let mut i = 12;
    loop {
        let len = *query.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        i += len;
    }
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    let question_end = i + 4;
    let question = query.get(12..question_end)?;
    let records: &[Ipv4Addr] = if fail || qtype != 1 { &[] } else { answers };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[..2]); // id
    let rd = query[2] & 0x01;
    out.push(0x84 | rd); // QR, AA, RD echoed
    out.push(if fail { 0x82 } else { 0x80 }); // RA, rcode SERVFAIL or NOERROR
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for ip in records {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}
