//! The systemd readiness protocol (`sd_notify`), for `Type=notify` units.
//!
//! systemd passes a Unix datagram socket in `NOTIFY_SOCKET`; a service
//! writes `KEY=VALUE` lines to it. ringmesh sends `READY=1` once its
//! listeners and admin API serve, `STOPPING=1` when it drains, and, after a
//! binary upgrade, `MAINPID=<pid>` from the new process (with
//! `NotifyAccess=all`) so that systemd follows the new process instead of
//! taking the old one's exit for the service's. Without `NOTIFY_SOCKET`
//! (not under systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (newline-separated `KEY=VALUE` assignments) to systemd.
/// Returns whether it was sent; failures are logged, never fatal: the
/// proxy serves the same with or without its supervisor's attention.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.first() {
            // A leading `@` names a socket in the abstract namespace.
            Some(b'@') => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            _ => socket.send_to(state.as_bytes(), &path),
        }
    });
    match sent {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, socket = ?path, state, "cannot notify systemd");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_reach_the_socket_named_in_notify_socket() {
        let dir = std::env::temp_dir().join(format!("ringmesh-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).unwrap();
        // SAFETY (of the test): no other test in this crate reads or writes
        // NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        assert!(notify("READY=1\nMAINPID=42"));
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nMAINPID=42");
        assert!(!notify("READY=1"), "no NOTIFY_SOCKET: nothing is sent");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
