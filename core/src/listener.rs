//! A worker's accept loop for one listening socket. Each accepted connection
//! becomes its own task on the same core, with the listener config that is
//! current at accept time.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::conn::{self, ListenerCtx};
use crate::runtime::{self, TcpListener};

/// The listener config new connections pick up; replaced in place on reload.
pub(crate) type CurrentCtx = Rc<RefCell<Rc<ListenerCtx>>>;

/// Accepts until the task is dropped (listener removed, or drain).
pub(crate) async fn accept_loop(listener: TcpListener, current: CurrentCtx) {
    let mut last_warning: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let ctx = current.borrow().clone();
                match conn::admit(&ctx) {
                    Some(admitted) => {
                        runtime::spawn(conn::serve(stream, peer, ctx, admitted)).detach()
                    }
                    None => drop(stream),
                }
            }
            Err(e) => {
                let ctx = current.borrow().clone();
                if is_resource_exhaustion(&e) {
                    // Out of file descriptors: back off instead of spinning,
                    // and say so at most once a second.
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(listener = %ctx.config.name, error = %e, "accept failed: out of resources; backing off");
                        last_warning = Some(Instant::now());
                    }
                    runtime::sleep(Duration::from_millis(50)).await;
                } else {
                    tracing::debug!(listener = %ctx.config.name, error = %e, "accept failed");
                }
            }
        }
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}
