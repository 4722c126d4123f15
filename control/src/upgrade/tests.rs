use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::net::UnixStream;

use super::conn::{Conn, Deadline};
use super::fds::send_with_fds;
use super::frame::{Manifest, ManifestAdmin, ManifestListener, Message, encode};
use super::socket::{connect, local_addr, peer_allowed, sockopt_int};
use super::*;

/// Generous: only a failing test waits this long.
const T: Duration = Duration::from_secs(5);

// -- Fixtures: real sockets, and what the kernel says about them. ------

/// A directory of our own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rm-upgrade-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `n` TCP sockets listening on one 127.0.0.1 port with SO_REUSEPORT,
/// as an old process's workers hold them.
fn reuseport_group(n: usize) -> (SocketAddr, Vec<OwnedFd>) {
    let mut port = 0u16;
    let mut sockets = Vec::new();
    for _ in 0..n {
        // SAFETY: plain socket(2); the result is checked and owned at once.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(raw >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        // SAFETY: sockaddr_in is plain data.
        let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = port.to_be();
        sin.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        // SAFETY: valid option and address buffers of the stated sizes.
        unsafe {
            assert_eq!(
                libc::setsockopt(
                    raw,
                    libc::SOL_SOCKET,
                    libc::SO_REUSEPORT,
                    (&one as *const libc::c_int).cast(),
                    mem::size_of::<libc::c_int>() as libc::socklen_t,
                ),
                0
            );
            assert_eq!(
                libc::bind(
                    raw,
                    (&sin as *const libc::sockaddr_in).cast(),
                    mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                ),
                0,
                "bind: {}",
                io::Error::last_os_error()
            );
            assert_eq!(libc::listen(raw, 64), 0);
        }
        port = local_addr(fd.as_fd()).expect("getsockname").port();
        sockets.push(fd);
    }
    (SocketAddr::from((Ipv4Addr::LOCALHOST, port)), sockets)
}

fn dup(fd: &OwnedFd) -> OwnedFd {
    fd.try_clone().expect("dup")
}

/// The socket's inode: the same for every descriptor of one socket, in
/// any process.
fn inode(fd: BorrowedFd<'_>) -> u64 {
    // SAFETY: stat is plain data, filled by fstat.
    let mut st: libc::stat = unsafe { mem::zeroed() };
    // SAFETY: valid descriptor and buffer.
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
    st.st_ino
}

/// The inodes of every socket this process holds a descriptor for.
fn open_socket_inodes() -> HashSet<u64> {
    fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// No descriptor of these sockets is left in this process. Tests run in
/// parallel threads of one process, so the number of entries in
/// /proc/self/fd moves under us; the inodes of our own sockets do not.
fn assert_none_open(inodes: &[u64]) {
    let open = open_socket_inodes();
    let leaked: Vec<&u64> = inodes.iter().filter(|i| open.contains(i)).collect();
    assert!(leaked.is_empty(), "sockets still open: {leaked:?}");
}

/// Connects to `addr` and accepts that connection through one socket of
/// `group`.
fn accept_through(group: &[OwnedFd], addr: SocketAddr) {
    let client = TcpStream::connect_timeout(&addr, T).expect("connect");
    let mut polls: Vec<libc::pollfd> = group
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: a valid array of pollfd of the stated length.
    let ready = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 5000) };
    assert!(ready > 0, "no socket of the group has the connection");
    let index = polls
        .iter()
        .position(|p| p.revents & libc::POLLIN != 0)
        .expect("a readable socket");
    // SAFETY: a listening socket; the result is checked and owned at once.
    let raw = unsafe {
        libc::accept4(
            group[index].as_raw_fd(),
            ptr::null_mut(),
            ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    assert!(raw >= 0, "accept: {}", io::Error::last_os_error());
    // SAFETY: a fresh descriptor.
    let accepted = TcpStream::from(unsafe { OwnedFd::from_raw_fd(raw) });
    assert_eq!(
        accepted.peer_addr().expect("peer"),
        client.local_addr().expect("local")
    );
}

/// Room for a few hundred descriptors more than a 1024 default allows,
/// with tests running side by side.
fn raise_fd_limit() {
    // SAFETY: rlimit is plain data, read then written back.
    unsafe {
        let mut lim: libc::rlimit = mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < 8192 {
            lim.rlim_cur = lim.rlim_max.min(8192);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn pair() -> (StdUnixStream, StdUnixStream) {
    StdUnixStream::pair().expect("socketpair")
}

fn tokio_stream(stream: StdUnixStream) -> UnixStream {
    stream.set_nonblocking(true).expect("nonblocking");
    UnixStream::from_std(stream).expect("tokio stream")
}

fn empty_offer() -> Offer {
    Offer {
        listeners: Vec::new(),
        admin: None,
        pid: 17,
        version: "old".to_owned(),
    }
}

fn hello() -> Message {
    Message::Hello {
        protocol: PROTOCOL,
        pid: 4242,
        version: "new".to_owned(),
    }
}

fn manifest(
    listeners: &[(&str, SocketAddr, usize)],
    admin: Option<SocketAddr>,
    fd_total: usize,
) -> Message {
    Message::Offer(Manifest {
        protocol: PROTOCOL,
        pid: 17,
        version: "old".to_owned(),
        listeners: listeners
            .iter()
            .map(|&(name, bound, count)| ManifestListener {
                name: name.to_owned(),
                configured: bound,
                bound,
                count,
            })
            .collect(),
        admin: admin.map(|bound| ManifestAdmin { bound }),
        fd_total,
    })
}

fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}

/// A scripted old process: reads the hello, then runs `script`.
fn fake_old<R: Send + 'static>(
    stream: StdUnixStream,
    script: impl FnOnce(&mut Conn) -> R + Send + 'static,
) -> thread::JoinHandle<R> {
    thread::spawn(move || {
        let mut conn = Conn::new(stream, MAX_MESSAGE_BYTES).expect("conn");
        let frame = conn.recv(Deadline::after(T), "test", 0).expect("hello");
        assert!(matches!(frame.msg, Message::Hello { .. }), "{frame:?}");
        script(&mut conn)
    })
}

/// The reason in the `failed` message the new side sends after refusing an offer.
fn failure_report(conn: &mut Conn) -> String {
    match conn
        .recv(Deadline::after(T), "test", 0)
        .expect("answer")
        .msg
    {
        Message::Failed { reason } => reason,
        other => panic!("expected failed, got {other:?}"),
    }
}

fn send(conn: &mut Conn, msg: &Message, fds: &[BorrowedFd<'_>]) {
    conn.send(msg, fds, MAX_OFFER_BYTES, Deadline::after(T), "test")
        .expect("send");
}

// -- The hand-over as it should go. -----------------------------------

#[tokio::test]
async fn hands_over_listener_groups_and_the_admin_socket() {
    let dir = TempDir::new();
    let path = dir.join("upgrade.sock");
    let groups: Vec<(String, SocketAddr, Vec<OwnedFd>)> = ["web", "api", "grpc"]
        .iter()
        .map(|name| {
            let (addr, sockets) = reuseport_group(2);
            (name.to_string(), addr, sockets)
        })
        .collect();
    let (admin_addr, admin) = reuseport_group(1);
    let group_inodes: Vec<Vec<u64>> = groups
        .iter()
        .map(|(_, _, fds)| fds.iter().map(|fd| inode(fd.as_fd())).collect())
        .collect();
    let admin_inode = inode(admin[0].as_fd());
    let configured = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let offer = Offer {
        listeners: groups
            .iter()
            .map(|(name, addr, fds)| ListenerSockets {
                name: name.clone(),
                configured,
                bound: *addr,
                sockets: fds.iter().map(dup).collect(),
            })
            .collect(),
        admin: Some((admin_addr, dup(&admin[0]))),
        pid: 17,
        version: "0.0.9".to_owned(),
    };

    let listener = listen(&path).expect("listen");
    let new_side = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            let mut inheritance = Inheritance::receive(&path, T).expect("receive");
            assert_eq!(inheritance.old_pid, 17);
            assert_eq!(inheritance.old_version, "0.0.9");
            let conn_inode = inode(inheritance.conn.stream.as_fd());
            let listeners = mem::take(&mut inheritance.listeners);
            let admin = inheritance.admin.take().expect("admin socket");
            inheritance.ready(T).expect("ready");
            (listeners, admin, conn_inode)
        })
    };
    let (stream, _) = listener.accept().await.expect("accept");
    let old_conn_inode = inode(stream.as_fd());
    let outcome = serve_one(
        stream,
        |hello| {
            assert_eq!(hello.pid, std::process::id());
            assert_eq!(hello.version, VERSION);
            offer
        },
        T,
    )
    .await
    .expect("serve_one");
    let Outcome::Ready { new_pid, ack } = outcome else {
        panic!("expected ready, got {outcome:?}");
    };
    assert_eq!(new_pid, std::process::id());
    ack.done();
    let (listeners, (admin_bound, admin_received), new_conn_inode) =
        new_side.await.expect("new side");

    assert_eq!(listeners.len(), 3);
    for ((got, (name, addr, _)), inodes) in listeners.iter().zip(&groups).zip(&group_inodes) {
        assert_eq!(&got.name, name);
        assert_eq!(got.configured, configured);
        assert_eq!(got.bound, *addr);
        let got_inodes: Vec<u64> = got.sockets.iter().map(|fd| inode(fd.as_fd())).collect();
        assert_eq!(&got_inodes, inodes, "the same sockets, in the same order");
        for socket in &got.sockets {
            assert_eq!(local_addr(socket.as_fd()).expect("getsockname"), *addr);
            assert_eq!(
                sockopt_int(socket.as_fd(), libc::SO_ACCEPTCONN).expect("SO_ACCEPTCONN"),
                1
            );
        }
        accept_through(&got.sockets, *addr);
    }
    assert_eq!(admin_bound, admin_addr);
    assert_eq!(inode(admin_received.as_fd()), admin_inode);
    accept_through(std::slice::from_ref(&admin_received), admin_addr);

    let mut every: Vec<u64> = group_inodes.concat();
    every.extend([admin_inode, old_conn_inode, new_conn_inode]);
    drop((groups, admin, listeners, admin_received, listener));
    assert_none_open(&every);
}

#[tokio::test]
async fn ready_returns_only_once_the_old_side_acknowledges() {
    let (old, new) = pair();
    let (returned, returns) = mpsc::channel();
    let new_side = tokio::task::spawn_blocking(move || {
        let inheritance = Inheritance::handshake(new, Deadline::after(T)).expect("receive");
        let result = inheritance.ready(T);
        let _ = returned.send(());
        result
    });
    let outcome = serve_one(tokio_stream(old), |_| empty_offer(), T)
        .await
        .expect("serve_one");
    let Outcome::Ready { ack, .. } = outcome else {
        panic!("expected ready, got {outcome:?}");
    };
    assert!(
        returns.recv_timeout(Duration::from_millis(200)).is_err(),
        "ready returned before the acknowledgement"
    );
    ack.done();
    new_side.await.expect("new side").expect("ready");
}

#[tokio::test]
async fn ready_fails_when_the_old_side_drops_its_acknowledger() {
    let (old, new) = pair();
    let new_side = tokio::task::spawn_blocking(move || {
        Inheritance::handshake(new, Deadline::after(T))
            .expect("receive")
            .ready(T)
    });
    let outcome = serve_one(tokio_stream(old), |_| empty_offer(), T)
        .await
        .expect("serve_one");
    assert!(matches!(outcome, Outcome::Ready { .. }), "{outcome:?}");
    drop(outcome);
    let err = new_side.await.expect("new side").unwrap_err();
    assert!(
        matches!(
            err,
            UpgradeError::Closed {
                during: "the acknowledgement"
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn more_than_253_descriptors_cross_in_several_messages() {
    raise_fd_limit();
    let groups: Vec<(SocketAddr, Vec<OwnedFd>)> = (0..3).map(|_| reuseport_group(100)).collect();
    let inodes: Vec<u64> = groups
        .iter()
        .flat_map(|(_, fds)| fds.iter().map(|fd| inode(fd.as_fd())))
        .collect();
    let offer = Offer {
        listeners: groups
            .into_iter()
            .enumerate()
            .map(|(i, (addr, sockets))| ListenerSockets {
                name: format!("l{i}"),
                configured: addr,
                bound: addr,
                sockets,
            })
            .collect(),
        admin: None,
        pid: 17,
        version: "old".to_owned(),
    };
    let (old, new) = pair();
    // A new side that records how the descriptors arrive.
    let new_side = tokio::task::spawn_blocking(move || {
        let mut conn = Conn::new(new, MAX_OFFER_BYTES).expect("conn");
        send(&mut conn, &hello(), &[]);
        let deadline = Deadline::after(T);
        let Message::Offer(manifest) = conn.recv(deadline, "test", 0).expect("offer").msg else {
            panic!("expected the offer");
        };
        let (mut chunks, mut fds) = (Vec::new(), Vec::new());
        while fds.len() < manifest.fd_total {
            let frame = conn
                .recv(deadline, "test", MAX_FDS_PER_MESSAGE)
                .expect("fds");
            let Message::Fds { count } = frame.msg else {
                panic!("expected descriptors, got {:?}", frame.msg);
            };
            assert_eq!(count, frame.fds.len());
            chunks.push(count);
            fds.extend(frame.fds);
        }
        send(
            &mut conn,
            &Message::Failed {
                reason: "only counting".to_owned(),
            },
            &[],
        );
        let received: Vec<u64> = fds.iter().map(|fd| inode(fd.as_fd())).collect();
        (chunks, received)
    });
    let outcome = serve_one(tokio_stream(old), |_| offer, T)
        .await
        .expect("serve_one");
    assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
    let (chunks, received) = new_side.await.expect("new side");
    assert_eq!(chunks, [253, 47]);
    assert_eq!(received, inodes, "every descriptor, in order");
    assert_none_open(&inodes);
}

#[tokio::test]
async fn an_inheritance_of_300_sockets_keeps_each_listeners_group() {
    raise_fd_limit();
    let groups: Vec<(SocketAddr, Vec<OwnedFd>)> = (0..3).map(|_| reuseport_group(100)).collect();
    let expected: Vec<(SocketAddr, Vec<u64>)> = groups
        .iter()
        .map(|(addr, fds)| (*addr, fds.iter().map(|fd| inode(fd.as_fd())).collect()))
        .collect();
    let offer = Offer {
        listeners: groups
            .into_iter()
            .enumerate()
            .map(|(i, (addr, sockets))| ListenerSockets {
                name: format!("l{i}"),
                configured: addr,
                bound: addr,
                sockets,
            })
            .collect(),
        admin: None,
        pid: 17,
        version: "old".to_owned(),
    };
    let (old, new) = pair();
    let new_side = tokio::task::spawn_blocking(move || {
        let mut inheritance = Inheritance::handshake(new, Deadline::after(T)).expect("receive");
        let listeners = mem::take(&mut inheritance.listeners);
        inheritance.failed("test over");
        listeners
            .iter()
            .map(|l| {
                (
                    l.bound,
                    l.sockets.iter().map(|fd| inode(fd.as_fd())).collect(),
                )
            })
            .collect::<Vec<(SocketAddr, Vec<u64>)>>()
    });
    let outcome = serve_one(tokio_stream(old), |_| offer, T)
        .await
        .expect("serve_one");
    assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
    assert_eq!(new_side.await.expect("new side"), expected);
    assert_none_open(
        &expected
            .into_iter()
            .flat_map(|(_, i)| i)
            .collect::<Vec<_>>(),
    );
}

#[test]
fn frames_split_into_single_bytes_are_reassembled() {
    let (addr, sockets) = reuseport_group(2);
    let (old, new) = pair();
    let old_side = fake_old(old, move |conn| {
        let fd = conn.stream.as_fd();
        let offer =
            encode(&manifest(&[("web", addr, 2)], None, 2), MAX_OFFER_BYTES).expect("encode");
        let fds = encode(&Message::Fds { count: 2 }, MAX_MESSAGE_BYTES).expect("encode");
        let dribble = |bytes: &[u8], attached: &[BorrowedFd<'_>]| {
            for (i, byte) in bytes.iter().enumerate() {
                let attached = if i == 0 { attached } else { &[] };
                assert_eq!(
                    send_with_fds(fd, std::slice::from_ref(byte), attached).expect("send"),
                    1
                );
                thread::sleep(Duration::from_micros(200));
            }
        };
        dribble(&offer, &[]);
        dribble(&fds, &borrow_all(&sockets));
        sockets
    });
    let inheritance = Inheritance::handshake(new, Deadline::after(T)).expect("receive");
    let originals = old_side.join().expect("old side");
    assert_eq!(inheritance.listeners[0].bound, addr);
    let got: Vec<u64> = inheritance.listeners[0]
        .sockets
        .iter()
        .map(|fd| inode(fd.as_fd()))
        .collect();
    let want: Vec<u64> = originals.iter().map(|fd| inode(fd.as_fd())).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_hello_split_into_single_bytes_is_reassembled() {
    let (old, new) = pair();
    let new_side = thread::spawn(move || {
        let frame = encode(&hello(), MAX_MESSAGE_BYTES).expect("encode");
        for byte in frame {
            (&new).write_all(&[byte]).expect("write");
            thread::sleep(Duration::from_micros(200));
        }
        let mut conn = Conn::new(new, MAX_OFFER_BYTES).expect("conn");
        let offer = conn.recv(Deadline::after(T), "test", 0).expect("offer");
        assert!(matches!(offer.msg, Message::Offer(_)), "{offer:?}");
        send(
            &mut conn,
            &Message::Failed {
                reason: "test over".to_owned(),
            },
            &[],
        );
    });
    let outcome = serve_one(
        tokio_stream(old),
        |hello| {
            assert_eq!(hello.pid, 4242);
            assert_eq!(hello.version, "new");
            empty_offer()
        },
        T,
    )
    .await
    .expect("serve_one");
    new_side.join().expect("new side");
    assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
}

/// The caller spawns hand-overs on a multi-threaded runtime.
#[test]
fn a_hand_over_can_run_on_any_runtime_thread() {
    fn assert_send<F: Send>(_: &F) {}
    let (old, _new) = pair();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let future = serve_one(tokio_stream(old), |_| empty_offer(), T);
    assert_send(&future);
}

// -- The new process gives up or goes away: the old one keeps serving. --

#[tokio::test]
async fn a_new_process_that_fails_reports_its_reason() {
    let (old, new) = pair();
    let new_side = tokio::task::spawn_blocking(move || {
        Inheritance::handshake(new, Deadline::after(T))
            .expect("receive")
            .failed("config: listeners[0].address: port 80 needs privileges");
    });
    let outcome = serve_one(tokio_stream(old), |_| empty_offer(), T)
        .await
        .expect("serve_one");
    new_side.await.expect("new side");
    let Outcome::Failed { reason } = outcome else {
        panic!("expected failed, got {outcome:?}");
    };
    assert_eq!(
        reason,
        "config: listeners[0].address: port 80 needs privileges"
    );
}

#[tokio::test]
async fn a_new_process_that_drops_without_answering_is_gone() {
    let (addr, sockets) = reuseport_group(2);
    let inodes: Vec<u64> = sockets.iter().map(|fd| inode(fd.as_fd())).collect();
    let offer = Offer {
        listeners: vec![ListenerSockets {
            name: "web".to_owned(),
            configured: addr,
            bound: addr,
            sockets,
        }],
        ..empty_offer()
    };
    let (old, new) = pair();
    let new_side = tokio::task::spawn_blocking(move || {
        drop(Inheritance::handshake(new, Deadline::after(T)).expect("receive"));
    });
    let outcome = serve_one(tokio_stream(old), |_| offer, T)
        .await
        .expect("serve_one");
    new_side.await.expect("new side");
    assert!(matches!(outcome, Outcome::Gone), "{outcome:?}");
    assert_none_open(&inodes);
}

#[tokio::test]
async fn a_peer_that_disconnects_before_its_hello_is_gone() {
    let (old, new) = pair();
    drop(new);
    let outcome = serve_one(tokio_stream(old), |_| panic!("no offer without a hello"), T)
        .await
        .expect("serve_one");
    assert!(matches!(outcome, Outcome::Gone), "{outcome:?}");
}

#[tokio::test]
async fn a_new_process_of_another_protocol_is_refused_with_a_reason() {
    let (old, new) = pair();
    let mut conn = Conn::new(new, MAX_OFFER_BYTES).expect("conn");
    let future_hello = Message::Hello {
        protocol: 2,
        pid: 4242,
        version: "9.0.0".to_owned(),
    };
    send(&mut conn, &future_hello, &[]);
    let err = serve_one(tokio_stream(old), |_| panic!("no offer"), T)
        .await
        .unwrap_err();
    assert!(
        matches!(err, UpgradeError::Incompatible { theirs: 2, ours: 1 }),
        "{err}"
    );
    match conn
        .recv(Deadline::after(T), "test", 0)
        .expect("refusal")
        .msg
    {
        Message::Refused { reason } => assert!(reason.contains("protocol 2"), "{reason}"),
        other => panic!("expected refused, got {other:?}"),
    }
}

#[tokio::test]
async fn refuse_tells_the_new_process_why() {
    let (old, new) = pair();
    let new_side =
        tokio::task::spawn_blocking(move || Inheritance::handshake(new, Deadline::after(T)));
    refuse(tokio_stream(old), "an upgrade is already under way", T)
        .await
        .expect("refuse");
    let err = new_side.await.expect("new side").unwrap_err();
    assert!(
        matches!(&err, UpgradeError::Refused { reason } if reason == "an upgrade is already under way"),
        "{err}"
    );
}

// -- The old process goes away, or sends what it should not. ----------

#[test]
fn an_old_process_vanishing_mid_offer_fails_the_new_one_without_leaks() {
    let (addr, sockets) = reuseport_group(2);
    let inodes: Vec<u64> = sockets.iter().map(|fd| inode(fd.as_fd())).collect();
    let (old, new) = pair();
    let old_side = fake_old(old, move |conn| {
        send(conn, &manifest(&[("web", addr, 4)], None, 4), &[]);
        send(conn, &Message::Fds { count: 2 }, &borrow_all(&sockets));
        // Gone, with 2 of the 4 descriptors sent.
    });
    let err = Inheritance::handshake(new, Deadline::after(T)).unwrap_err();
    old_side.join().expect("old side");
    assert!(
        matches!(
            err,
            UpgradeError::Closed {
                during: "the descriptors"
            }
        ),
        "{err}"
    );
    assert_none_open(&inodes);
}

#[test]
fn more_descriptors_than_announced_are_closed_and_refused() {
    let (addr, sockets) = reuseport_group(3);
    let inodes: Vec<u64> = sockets.iter().map(|fd| inode(fd.as_fd())).collect();
    let (old, new) = pair();
    let old_side = fake_old(old, move |conn| {
        send(conn, &manifest(&[("web", addr, 2)], None, 2), &[]);
        send(conn, &Message::Fds { count: 2 }, &borrow_all(&sockets));
        failure_report(conn)
    });
    let err = Inheritance::handshake(new, Deadline::after(T)).unwrap_err();
    assert!(
        matches!(
            err,
            UpgradeError::Protocol(ProtocolError::DescriptorCount {
                expected: 2,
                got: 3
            })
        ),
        "{err}"
    );
    let reported = old_side.join().expect("old side");
    assert!(
        reported.contains("announced 2 descriptors and carried 3"),
        "{reported}"
    );
    assert_none_open(&inodes);
}

#[test]
fn fewer_descriptors_than_announced_are_refused() {
    let (addr, sockets) = reuseport_group(1);
    let inodes: Vec<u64> = sockets.iter().map(|fd| inode(fd.as_fd())).collect();
    let (old, new) = pair();
    let old_side = fake_old(old, move |conn| {
        send(conn, &manifest(&[("web", addr, 2)], None, 2), &[]);
        send(conn, &Message::Fds { count: 2 }, &borrow_all(&sockets));
        failure_report(conn)
    });
    let err = Inheritance::handshake(new, Deadline::after(T)).unwrap_err();
    assert!(
        matches!(
            err,
            UpgradeError::Protocol(ProtocolError::DescriptorCount {
                expected: 2,
                got: 1
            })
        ),
        "{err}"
    );
    old_side.join().expect("old side");
    assert_none_open(&inodes);
}

#[test]
fn descriptors_attached_to_the_manifest_are_closed_and_refused() {
    let (addr, sockets) = reuseport_group(1);
    let inodes: Vec<u64> = sockets.iter().map(|fd| inode(fd.as_fd())).collect();
    let (old, new) = pair();
    let old_side = fake_old(old, move |conn| {
        send(
            conn,
            &manifest(&[("web", addr, 1)], None, 1),
            &borrow_all(&sockets),
        );
        failure_report(conn)
    });
    let err = Inheritance::handshake(new, Deadline::after(T)).unwrap_err();
    assert!(
        matches!(
            err,
            UpgradeError::Protocol(ProtocolError::UnexpectedDescriptors { got: 1, max: 0 })
        ),
        "{err}"
    );
    old_side.join().expect("old side");
    assert_none_open(&inodes);
}

#[test]
fn a_manifest_whose_counts_do_not_add_up_is_refused() {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 80));
    for (listeners, admin, fd_total) in [
        (vec![("web", addr, 2)], None, 3),
        (vec![("web", addr, 2)], Some(addr), 2),
        (vec![("web", addr, 0)], None, 0),
        (vec![("web", addr, usize::MAX), ("api", addr, 2)], None, 1),
        (
            vec![("web", addr, MAX_DESCRIPTORS + 1)],
            None,
            MAX_DESCRIPTORS + 1,
        ),
    ] {
        let (old, new) = pair();
        let old_side = fake_old(old, move |conn| {
            send(conn, &manifest(&listeners, admin, fd_total), &[]);
            failure_report(conn)
        });
        let err = Inheritance::handshake(new, Deadline::after(T)).unwrap_err();
        assert!(
            matches!(err, UpgradeError::Protocol(ProtocolError::BadManifest(_))),
            "{err}"
        );
        assert!(
            old_side
                .join()
                .expect("old side")
                .contains("bad offer manifest")
        );
    }
}

#[test]
fn a_descriptor_that_is_not_the_announced_listener_is_refused() {
    let (announced, _announced_sockets) = reuseport_group(1);
    let (_, elsewhere) = reuseport_group(1);
    let (not_listening, _peer) = pair();
    let cases: Vec<(OwnedFd, &str)> = vec![
        (elsewhere.into_iter().next().expect("socket"), "bound to"),
        (OwnedFd::from(not_listening), "not listening"),
    ];
    for (socket, complaint) in cases {
        let inodes = [inode(socket.as_fd())];
        let (old, new) = pair();
        let old_side = fake_old(old, move |conn| {
            send(conn, &manifest(&[("web", announced, 1)], None, 1), &[]);
            send(conn, &Message::Fds { count: 1 }, &[socket.as_fd()]);
        });
        let err = Inheritance::handshake(new, Deadline::after(T)).unwrap_err();
        match &err {
            UpgradeError::Protocol(ProtocolError::NotAListener { name, reason }) => {
                assert_eq!(name, "web");
                assert!(reason.contains(complaint), "{reason}");
            }
            other => panic!("expected not-a-listener, got {other}"),
        }
        old_side.join().expect("old side");
        assert_none_open(&inodes);
    }
}

#[test]
fn a_huge_length_prefix_is_refused_before_any_body_is_read() {
    let (old, new) = pair();
    let old_side = fake_old(old, |conn| {
        (&conn.stream)
            .write_all(&[0xff, 0xff, 0xff, 0xff])
            .expect("write");
    });
    let err = Inheritance::handshake(new, Deadline::after(T)).unwrap_err();
    assert!(
        matches!(
            err,
            UpgradeError::Protocol(ProtocolError::FrameTooLarge {
                len: 0xffff_ffff,
                max: MAX_OFFER_BYTES
            })
        ),
        "{err}"
    );
    old_side.join().expect("old side");
}

#[test]
fn garbage_instead_of_an_offer_is_a_protocol_error() {
    for body in [
        &b"not json at all"[..],
        b"{\"type\":\"launch\"}",
        b"{\"type\":\"offer\"}",
    ] {
        let (old, new) = pair();
        let old_side = fake_old(old, move |conn| {
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(body);
            (&conn.stream).write_all(&frame).expect("write");
            failure_report(conn)
        });
        let err = Inheritance::handshake(new, Deadline::after(T)).unwrap_err();
        assert!(
            matches!(err, UpgradeError::Protocol(ProtocolError::Malformed(_))),
            "{err}"
        );
        old_side.join().expect("old side");
    }
}

#[test]
fn an_old_process_of_another_protocol_is_incompatible() {
    let (old, new) = pair();
    let old_side = fake_old(old, |conn| {
        let Message::Offer(mut manifest) = manifest(&[], None, 0) else {
            unreachable!()
        };
        manifest.protocol = 7;
        send(conn, &Message::Offer(manifest), &[]);
        failure_report(conn)
    });
    let err = Inheritance::handshake(new, Deadline::after(T)).unwrap_err();
    assert!(
        matches!(err, UpgradeError::Incompatible { theirs: 7, ours: 1 }),
        "{err}"
    );
    assert!(old_side.join().expect("old side").contains("protocol 7"));
}

// -- Hostile input to the old process. --------------------------------

#[tokio::test]
async fn garbage_from_a_would_be_new_process_is_refused() {
    let (old, new) = pair();
    (&new)
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    let err = serve_one(tokio_stream(old), |_| panic!("no offer for garbage"), T)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpgradeError::Protocol(ProtocolError::FrameTooLarge {
                len: 0x4745_5420,
                max: MAX_MESSAGE_BYTES
            })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn descriptors_sent_to_the_old_process_are_closed_and_refused() {
    let (_, sockets) = reuseport_group(2);
    let inodes: Vec<u64> = sockets.iter().map(|fd| inode(fd.as_fd())).collect();
    let (old, new) = pair();
    let mut conn = Conn::new(new, MAX_OFFER_BYTES).expect("conn");
    send(&mut conn, &hello(), &borrow_all(&sockets));
    drop(sockets);
    let err = serve_one(tokio_stream(old), |_| panic!("no offer"), T)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpgradeError::Protocol(ProtocolError::UnexpectedDescriptors { got: 2, max: 0 })
        ),
        "{err}"
    );
    assert_none_open(&inodes);
}

#[tokio::test]
async fn an_unexpected_answer_is_a_protocol_error() {
    let (old, new) = pair();
    let mut conn = Conn::new(new, MAX_OFFER_BYTES).expect("conn");
    send(&mut conn, &hello(), &[]);
    send(&mut conn, &Message::Ack, &[]);
    let err = serve_one(tokio_stream(old), |_| empty_offer(), T)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpgradeError::Protocol(ProtocolError::Unexpected {
                expected: "ready or failed",
                got: "ack"
            })
        ),
        "{err}"
    );
}

// -- Every wait ends. --------------------------------------------------

#[tokio::test]
async fn serve_one_times_out_on_a_silent_peer() {
    let (old, _silent) = pair();
    let started = Instant::now();
    let err = serve_one(
        tokio_stream(old),
        |_| panic!("no offer"),
        Duration::from_millis(200),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            UpgradeError::Timeout {
                during: "the hello",
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < T);
}

#[tokio::test]
async fn serve_one_times_out_when_no_answer_comes() {
    let (old, new) = pair();
    let mut conn = Conn::new(new, MAX_OFFER_BYTES).expect("conn");
    send(&mut conn, &hello(), &[]);
    let err = serve_one(
        tokio_stream(old),
        |_| empty_offer(),
        Duration::from_millis(200),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            UpgradeError::Timeout {
                during: "the answer",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn receive_times_out_on_a_silent_old_process() {
    let dir = TempDir::new();
    let path = dir.join("upgrade.sock");
    // Accepted by the kernel (backlog), never answered.
    let _silent = StdUnixListener::bind(&path).expect("bind");
    let started = Instant::now();
    let err = Inheritance::receive(&path, Duration::from_millis(200)).unwrap_err();
    assert!(
        matches!(
            err,
            UpgradeError::Timeout {
                during: "the offer",
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(started.elapsed() < T);
}

#[test]
fn receive_without_an_old_process_says_so() {
    let dir = TempDir::new();
    let missing = dir.join("missing.sock");
    let err = Inheritance::receive(&missing, T).unwrap_err();
    assert!(matches!(err, UpgradeError::NotRunning { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("no running ringmesh accepts upgrades"),
        "{err}"
    );

    // A socket file left by a process that is gone.
    let stale = dir.join("stale.sock");
    drop(StdUnixListener::bind(&stale).expect("bind"));
    let err = Inheritance::receive(&stale, T).unwrap_err();
    assert!(matches!(err, UpgradeError::NotRunning { .. }), "{err}");
}

// -- The upgrade socket. ----------------------------------------------

#[tokio::test]
async fn listen_replaces_an_existing_socket_atomically_and_privately() {
    let dir = TempDir::new();
    let path = dir.join("upgrade.sock");
    let previous = StdUnixListener::bind(&path).expect("bind");
    previous.set_nonblocking(true).expect("nonblocking");

    // Clients connecting all the while never find the path missing.
    let (stop, stopped) = mpsc::channel::<()>();
    let prober = {
        let path = path.clone();
        thread::spawn(move || {
            let mut missing = 0;
            while stopped.try_recv().is_err() {
                match connect(&path, Deadline::after(Duration::from_millis(50))) {
                    Err(UpgradeError::NotRunning { source, .. })
                        if source.kind() == io::ErrorKind::NotFound =>
                    {
                        missing += 1;
                    }
                    _ => {}
                }
            }
            missing
        })
    };
    let mut replacements = Vec::new();
    for _ in 0..20 {
        replacements.push(listen(&path).expect("listen"));
    }
    stop.send(()).expect("stop");
    assert_eq!(prober.join().expect("prober"), 0, "the path was missing");

    let meta = fs::symlink_metadata(&path).expect("stat");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let names: Vec<_> = fs::read_dir(&dir.0).expect("read dir").collect();
    assert_eq!(names.len(), 1, "no temporary name left behind: {names:?}");

    // A client now reaches the newest listener: find its marker byte
    // among the prober's (closed, empty) connections.
    let latest = replacements.pop().expect("a listener");
    let mut client = StdUnixStream::connect(&path).expect("connect");
    client.write_all(b"!").expect("write");
    loop {
        let (stream, _) = tokio::time::timeout(T, latest.accept())
            .await
            .expect("the client's connection in the newest listener's queue")
            .expect("accept");
        tokio::time::timeout(T, stream.readable())
            .await
            .expect("readable")
            .expect("readable");
        let mut byte = [0u8; 1];
        if stream.try_read(&mut byte).expect("read") == 1 {
            assert_eq!(&byte, b"!");
            break;
        }
    }
    drop(previous);
}

#[tokio::test]
async fn listen_refuses_to_replace_a_file_that_is_not_a_socket() {
    let dir = TempDir::new();
    let path = dir.join("ringmesh.yaml");
    fs::write(&path, "listeners: []\n").expect("write");
    let err = listen(&path).unwrap_err();
    assert!(matches!(err, UpgradeError::NotASocket { .. }), "{err}");
    assert_eq!(fs::read_to_string(&path).expect("read"), "listeners: []\n");
}

#[test]
fn listen_outside_a_runtime_is_an_error() {
    let dir = TempDir::new();
    let err = listen(&dir.join("upgrade.sock")).unwrap_err();
    assert!(matches!(err, UpgradeError::Listen { .. }), "{err}");
}

// -- Small rules. ------------------------------------------------------

#[test]
fn only_our_user_or_root_may_take_part() {
    assert!(peer_allowed(1000, 1000));
    assert!(peer_allowed(0, 1000));
    assert!(!peer_allowed(1001, 1000));
    assert!(!peer_allowed(1000, 0));
}

#[test]
fn reasons_are_clipped_on_a_character_boundary() {
    assert_eq!(clip("ééé".to_owned(), 3), "é");
    assert_eq!(clip("short".to_owned(), 64), "short");
}

#[test]
fn the_wire_format_is_length_prefixed_json() {
    let frame = encode(&Message::Fds { count: 3 }, MAX_MESSAGE_BYTES).expect("encode");
    let body = br#"{"type":"fds","count":3}"#;
    assert_eq!(&frame[..4], &(body.len() as u32).to_be_bytes());
    assert_eq!(&frame[4..], body);
    let err = encode(
        &Message::Failed {
            reason: "x".repeat(100),
        },
        64,
    )
    .unwrap_err();
    assert!(
        matches!(err, UpgradeError::TooLarge { max: 64, .. }),
        "{err}"
    );
}
