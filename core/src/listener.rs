//! A worker's accept loop for one listening socket. Each accepted connection
//! becomes its own task on the same core, with the listener config that is
//! current at accept time.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use crate::conn::{self, ListenerCtx};
use crate::fd_share;
use crate::local_resource::ResourceKind;
use crate::runtime::{self, Listener};

/// The listener config new connections pick up; replaced in place on reload.
pub(crate) type CurrentCtx = Rc<RefCell<Rc<ListenerCtx>>>;

/// Accepts until the task is dropped (listener removed, or drain).
pub(crate) async fn accept_loop(listener: Listener, current: CurrentCtx) {
    // Read once per socket: a capturing listener tells a redirected
    // connection from a direct one by comparing with its own address.
    let bound = listener.local_addr().ok();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let ctx = current.borrow().clone();
                if !fd_share::within(stream.as_raw_fd()) {
                    // Past the data plane's share of descriptors: the rest
                    // is kept for the admin API. Close this one and leave
                    // the others queued in the kernel for a moment.
                    ctx.config.stats.cores.get(ctx.core).accepted.inc();
                    ctx.config
                        .stats
                        .cores
                        .get(ctx.core)
                        .rejected_local_resource
                        .inc();
                    drop(stream);
                    out_of_resources(&ctx, ResourceKind::Emfile, &ResourceKind::share_exhausted())
                        .await;
                    continue;
                }
                match conn::admit(&ctx, peer) {
                    Some(admitted) => runtime::spawn(conn::serve(
                        stream,
                        peer,
                        bound,
                        ctx,
                        admitted,
                        current.clone(),
                    ))
                    .detach(),
                    None => drop(stream),
                }
            }
            Err(e) => {
                let ctx = current.borrow().clone();
                match ResourceKind::of(&e) {
                    Some(kind) => out_of_resources(&ctx, kind, &e).await,
                    None => {
                        tracing::debug!(listener = %ctx.config.name, error = %e, "accept failed")
                    }
                }
            }
        }
    }
}

/// Counts a local resource error met while accepting, and backs off
/// instead of spinning: connections wait in the kernel's queue meanwhile.
async fn out_of_resources(ctx: &ListenerCtx, kind: ResourceKind, e: &io::Error) {
    ctx.config.stats.local.record(ctx.core, kind, "accept", e);
    runtime::sleep(ACCEPT_BACKOFF).await;
}

/// Pause after an accept that found the process out of resources.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
